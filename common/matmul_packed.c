/*
 * matmul_packed.c: the model's linear layers, y = x W^T with W packed once at load time (see
 * matmul.h): the weights cut into 16-column panels laid out contiguously, so the
 * micro-kernel of matmul.c reads them in order, and every row of x summed in the same order
 * whatever the batch it comes in -- the batch invariance chapter 06's engine relies on (a
 * request's tokens do not depend on who else is in the batch).
 */
#include "matmul.h"

#include <string.h>

#include "matmul_kernel.h"
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

/* Row j of W back out of its panels: column j % NR of panel j / NR, K floats NR apart. */
void matmul_unpack_row(float *row, const float *packed, size_t K, size_t j)
{
    const float *panel = packed + j / NR * K * NR;
    for (size_t k = 0; k < K; k++)
        row[k] = panel[k * NR + j % NR];
}

void matmul_unpack_weights(float *w, const float *packed, size_t N, size_t K)
{
    for (size_t j = 0; j < N; j++)
        matmul_unpack_row(w + j * K, packed, K, j);
}

/* One row against ROW_PANELS panels at once: eight accumulators (AVX2: 4 panels x 2 ymm; AVX-512:
 * 8 panels x 1 zmm), eight independent FMA chains. Each element is one chain over K in order, as
 * in the micro-kernel -- so a row alone gets the bits it gets in a block of MR rows. */
#define ROW_PANELS (8 / PANEL_VECS < 1 ? 1 : 8 / PANEL_VECS)

static void packed_row_panels(float *out, const float *a, const float *p0, size_t K)
{
    fvec c[ROW_PANELS][PANEL_VECS];
#pragma GCC unroll 8
    for (int p = 0; p < ROW_PANELS; p++)
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++)
            c[p][v] = fvec_splat(0.0f);
    for (size_t k = 0; k < K; k++) {
        const float ak = a[k];
#pragma GCC unroll 8
        for (int p = 0; p < ROW_PANELS; p++)
#pragma GCC unroll 4
            for (int v = 0; v < PANEL_VECS; v++)
                c[p][v] += ak * fvec_load(p0 + ((size_t)p * K + k) * NR + (size_t)v * VL);
    }
#pragma GCC unroll 8
    for (int p = 0; p < ROW_PANELS; p++)
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++)
            fvec_store(out + (size_t)p * NR + (size_t)v * VL, c[p][v]);
}

/* rows <= MR rows of a against a packed panel: the smallest kernel that covers them, so that the
 * last rows of a batch do not pay for MR (32 rows = 2 x 12 + 8 with AVX-512, 5 x 6 + 2 with AVX2) */
static void panel_rows(float *out, size_t ldo, const float *a, size_t lda, const float *panel, size_t K, size_t rows)
{
    if (rows <= 2)
        micro_kernel(2, out, ldo, a, lda, panel, NR, K, rows, 0);
    else if (rows <= 4)
        micro_kernel(4, out, ldo, a, lda, panel, NR, K, rows, 0);
    else if (MR > 8 && rows <= 8)
        micro_kernel(8, out, ldo, a, lda, panel, NR, K, rows, 0);
    else
        micro_kernel(MR, out, ldo, a, lda, panel, NR, K, rows, 0);
}

/* Panel p (columns p*16 .. p*16+15) for rows [0, M): blocks of six rows through the micro-kernel,
 * reading the packed panel in place; the last, partial panel through an MR x 16 scratch. */
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

/* M = 1: ROW_PANELS panels at a time; the last, partial group panel by panel through packed_panel. */
static void packed_one_row_group(float *out, const float *a, const float *packed, size_t N, size_t K, size_t g)
{
    const size_t n_panels = (N + NR - 1) / NR, p0 = g * ROW_PANELS;
    if (p0 + ROW_PANELS <= n_panels && (p0 + ROW_PANELS) * NR <= N) {
        packed_row_panels(out + p0 * NR, a, packed + p0 * K * NR, K);
        return;
    }
    for (size_t p = p0; p < n_panels && p < p0 + ROW_PANELS; p++)
        packed_panel(out, N, a, K, packed, 1, N, K, p);
}

void matmul_packed(float *out, size_t ldo, const float *a, size_t lda, const float *packed, size_t M, size_t N,
                   size_t K)
{
    const size_t n_panels = (N + NR - 1) / NR;
    if (M == 1 && ldo >= N) {
        const size_t groups = (n_panels + ROW_PANELS - 1) / ROW_PANELS;
#pragma omp parallel for schedule(static) if (matmul_use_threads(M, N, K))
        for (size_t g = 0; g < groups; g++)
            packed_one_row_group(out, a, packed, N, K, g);
        return;
    }
#pragma omp parallel for schedule(static) if (matmul_use_threads(M, N, K))
    for (size_t p = 0; p < n_panels; p++)
        packed_panel(out, ldo, a, lda, packed, M, N, K, p);
}

