/*
 * matmul_packed.c: the model's linear layers, y = x W^T with W packed once at load time (see
 * matmul.h): the weights cut into 16-column panels laid out contiguously, so the 6x16
 * micro-kernel of matmul.c reads them in order, and every row of x summed in the same order
 * whatever the batch it comes in -- the batch invariance chapter 06's engine relies on (a
 * request's tokens do not depend on who else is in the batch).
 */
#include "matmul.h"

#include <string.h>

#include "vmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define MR MATMUL_MR /* rows of out per micro-kernel call */
#define NR MATMUL_NR /* columns of out per micro-kernel call */

/* ==== packed weights: a batch-invariant linear layer at the micro-kernel's speed ==================== */

size_t matmul_packed_floats(size_t N, size_t K) { return (N + NR - 1) / NR * K * NR; }

void matmul_pack_weights(float *packed, const float *w, size_t N, size_t K)
{
    const size_t n_panels = (N + NR - 1) / NR;
    for (size_t p = 0; p < n_panels; p++)
        for (size_t k = 0; k < K; k++)
            for (size_t c = 0; c < NR; c++) {
                const size_t j = p * NR + c;
                packed[(p * K + k) * NR + c] = j < N ? w[j * K + k] : 0.0f;
            }
}

/* One row against four panels at once: eight accumulators, each element one chain over K in
 * order, as in matmul.c's kernel_6x16 -- so a row alone gets the bits it gets in a block of six. */
static void packed_row_4panels(float *out, const float *a, const float *p0, size_t K)
{
    const float *p1 = p0 + K * NR, *p2 = p1 + K * NR, *p3 = p2 + K * NR;
    f32x8 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
    for (size_t k = 0; k < K; k++) {
        const float ak = a[k];
        c00 += ak * *(const f32x8 *)(p0 + k * NR), c01 += ak * *(const f32x8 *)(p0 + k * NR + 8);
        c10 += ak * *(const f32x8 *)(p1 + k * NR), c11 += ak * *(const f32x8 *)(p1 + k * NR + 8);
        c20 += ak * *(const f32x8 *)(p2 + k * NR), c21 += ak * *(const f32x8 *)(p2 + k * NR + 8);
        c30 += ak * *(const f32x8 *)(p3 + k * NR), c31 += ak * *(const f32x8 *)(p3 + k * NR + 8);
    }
    f32x8 *o = (f32x8 *)out;
    o[0] = c00, o[1] = c01, o[2] = c10, o[3] = c11, o[4] = c20, o[5] = c21, o[6] = c30, o[7] = c31;
}

/* Two and four rows against one 16-column panel: the micro-kernel's arithmetic for fewer rows, so
 * that the last rows of a batch do not pay for six (32 rows = 5 x 6 + 2). */
static void kernel_2x16(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t K, size_t rows)
{
    f32x8 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0};
    const float *a0 = a, *a1 = rows > 1 ? a + lda : a;
    for (size_t k = 0; k < K; k++) {
        const f32x8 b0 = *(const f32x8 *)(b + k * NR), b1 = *(const f32x8 *)(b + k * NR + 8);
        c00 += a0[k] * b0, c01 += a0[k] * b1;
        c10 += a1[k] * b0, c11 += a1[k] * b1;
    }
    f32x8 *o = (f32x8 *)out;
    o[0] = c00, o[1] = c01;
    if (rows > 1)
        o = (f32x8 *)(out + ldo), o[0] = c10, o[1] = c11;
}

static void kernel_4x16(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t K, size_t rows)
{
    f32x8 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = rows > 3 ? a + 3 * lda : a;
    for (size_t k = 0; k < K; k++) {
        const f32x8 b0 = *(const f32x8 *)(b + k * NR), b1 = *(const f32x8 *)(b + k * NR + 8);
        c00 += a0[k] * b0, c01 += a0[k] * b1;
        c10 += a1[k] * b0, c11 += a1[k] * b1;
        c20 += a2[k] * b0, c21 += a2[k] * b1;
        c30 += a3[k] * b0, c31 += a3[k] * b1;
    }
    const f32x8 c[4][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
    for (size_t r = 0; r < rows; r++) {
        f32x8 *o = (f32x8 *)(out + r * ldo);
        o[0] = c[r][0], o[1] = c[r][1];
    }
}

/* rows <= 6 rows of a against a packed panel: the smallest kernel that covers them */
static void panel_rows(float *out, size_t ldo, const float *a, size_t lda, const float *panel, size_t K, size_t rows)
{
    if (rows <= 2)
        kernel_2x16(out, ldo, a, lda, panel, K, rows);
    else if (rows <= 4)
        kernel_4x16(out, ldo, a, lda, panel, K, rows);
    else
        matmul_micro_6x16(out, ldo, a, lda, panel, K, rows, 0);
}

/* Panel p (columns p*16 .. p*16+15) for rows [0, M): blocks of six rows through the micro-kernel,
 * reading the packed panel in place; the last, partial panel through a 6 x 16 scratch. */
static void packed_panel(float *out, size_t ldo, const float *a, size_t lda, const float *packed, size_t M, size_t N,
                         size_t K, size_t p)
{
    const size_t j0 = p * NR, cols = N - j0 < NR ? N - j0 : NR;
    const float *panel = packed + p * K * NR;
    for (size_t i = 0; i < M; i += MR) {
        const size_t rows = M - i < MR ? M - i : MR;
        if (cols == NR) {
            panel_rows(out + i * ldo + j0, ldo, a + i * lda, lda, panel, K, rows);
        } else {
            float tmp[MR * NR];
            panel_rows(tmp, NR, a + i * lda, lda, panel, K, rows);
            for (size_t r = 0; r < rows; r++)
                memcpy(out + (i + r) * ldo + j0, tmp + r * NR, cols * sizeof(float));
        }
    }
}

/* M = 1: four panels at a time; a lone or last panel through packed_panel. */
static void packed_one_row_group(float *out, const float *a, const float *packed, size_t N, size_t K, size_t g)
{
    const size_t n_panels = (N + NR - 1) / NR, p0 = g * 4;
    if (p0 + 4 <= n_panels && (p0 + 4) * NR <= N) {
        packed_row_4panels(out + p0 * NR, a, packed + p0 * K * NR, K);
        return;
    }
    for (size_t p = p0; p < n_panels && p < p0 + 4; p++)
        packed_panel(out, N, a, K, packed, 1, N, K, p);
}

void matmul_packed(float *out, size_t ldo, const float *a, size_t lda, const float *packed, size_t M, size_t N,
                   size_t K)
{
    const size_t n_panels = (N + NR - 1) / NR;
    if (M == 1 && ldo >= N) {
        const size_t groups = (n_panels + 3) / 4;
#pragma omp parallel for schedule(static) if (matmul_use_threads(M, N, K))
        for (size_t g = 0; g < groups; g++)
            packed_one_row_group(out, a, packed, N, K, g);
        return;
    }
#pragma omp parallel for schedule(static) if (matmul_use_threads(M, N, K))
    for (size_t p = 0; p < n_panels; p++)
        packed_panel(out, ldo, a, lda, packed, M, N, K, p);
}

