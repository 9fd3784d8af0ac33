/*
 * matmul.c: register-blocked fp32 matrix products (see matmul.h).
 *
 * The core is a 6x16 micro-kernel: six rows of `a` times a 16-column panel of `b`, with the
 * 6x16 block of `out` held in twelve 8-float vector registers while it walks down K.
 * Each step loads 16 floats of b and 6 of a for 96 multiply-adds, so it is limited by the FMA
 * units rather than by memory. The panel of b (K x 16 floats) is first copied to a contiguous
 * buffer: it then stays in L1/L2 while all rows of a pass over it, and rows of b that are a
 * power of two apart no longer collide in the same cache sets. Leftover rows (fewer than 6) run
 * the same kernel with rows repeated; a partial last panel takes a plain loop. The chapter 01 lesson prints the
 * speed of a product of the layer's shape against the machine's measured FMA peak.
 * matmul_nt uses the same kernel; its panels are 16 rows of b copied transposed, so b is read
 * once, row by row, with no separate transpose pass. With fewer than 6 rows of a (a decode
 * step), matmul_nt takes dot products instead, four rows at a time, reading b once in order;
 * matmul_nn with a single row adds rows of b into the output (axpy).
 */
#include "matmul.h"

#include <stdlib.h>
#include <string.h>

#include "tensor.h"
#include "vmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define MR MATMUL_MR /* rows of out per micro-kernel call */
#define NR MATMUL_NR /* columns of out per micro-kernel call */


/* out[0..rows) x [0..NR) = a[0..rows) x [0..K) · b[0..K) x [0..NR), rows <= MR, the 6 x 16 block
 * of out in twelve named accumulators so that they stay in registers (12 of AVX2's 16).
 * With fewer than 6 rows the missing ones recompute row 0 and are not stored: wasted
 * multiply-adds at full speed beat a narrower kernel that waits on FMA latency. */
static void kernel_6x16(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t K,
                        size_t rows, int accumulate)
{
    f32x8 c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
    f32x8 c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
    const float *a0 = a, *a1 = rows > 1 ? a + lda : a, *a2 = rows > 2 ? a + 2 * lda : a;
    const float *a3 = rows > 3 ? a + 3 * lda : a, *a4 = rows > 4 ? a + 4 * lda : a, *a5 = rows > 5 ? a + 5 * lda : a;
    for (size_t k = 0; k < K; k++) {
        const f32x8 b0 = *(const f32x8 *)(b + k * ldb);
        const f32x8 b1 = *(const f32x8 *)(b + k * ldb + 8);
        c00 += a0[k] * b0, c01 += a0[k] * b1;
        c10 += a1[k] * b0, c11 += a1[k] * b1;
        c20 += a2[k] * b0, c21 += a2[k] * b1;
        c30 += a3[k] * b0, c31 += a3[k] * b1;
        c40 += a4[k] * b0, c41 += a4[k] * b1;
        c50 += a5[k] * b0, c51 += a5[k] * b1;
    }
    const f32x8 c[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    for (size_t r = 0; r < rows; r++) {
        f32x8 *o = (f32x8 *)(out + r * ldo);
        if (accumulate)
            o[0] += c[r][0], o[1] += c[r][1];
        else
            o[0] = c[r][0], o[1] = c[r][1];
    }
}

void matmul_micro_6x16(float *out, size_t ldo, const float *a, size_t lda, const float *panel, size_t K, size_t rows,
                       int accumulate)
{
    kernel_6x16(out, ldo, a, lda, panel, MATMUL_NR, K, rows, accumulate);
}

/* Any rows x cols block, one output row at a time (the last, partial panel); += with accumulate.
 * Like the micro-kernel, each element is summed from zero over K and only then added to out,
 * so that accumulating gives the same bits on every path. */
static void kernel_edge(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb,
                        size_t rows, size_t cols, size_t K, int accumulate)
{
    float sum[NR];
    for (size_t r = 0; r < rows; r++) {
        float *o = out + r * ldo;
        for (size_t j = 0; j < cols; j++)
            sum[j] = 0.0f;
        for (size_t k = 0; k < K; k++) {
            const float ar = a[r * lda + k];
            const float *bk = b + k * ldb;
#pragma omp simd
            for (size_t j = 0; j < cols; j++)
                sum[j] += ar * bk[j];
        }
        for (size_t j = 0; j < cols; j++)
            o[j] = accumulate ? o[j] + sum[j] : sum[j];
    }
}

int matmul_use_threads(size_t M, size_t N, size_t K)
{
#ifdef _OPENMP
    return !omp_in_parallel() && (double)M * (double)N * (double)K > 2e5;
#else
    (void)M, (void)N, (void)K;
    return 0;
#endif
}

/* One row: out += a[k] * (row k of b), k outer, so b is streamed once (a decode step's P V for
 * one query head). Threads split the columns. With 2-5 rows the panels and the micro-kernel
 * below are faster: the axpy would load and store every output row once per row of b. */
static void nn_axpy_cols(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                         size_t j0, size_t cols, size_t K, int accumulate)
{
    float sum[256]; /* cols <= 256: summed from zero, then stored or added, as the micro-kernel does */
    for (size_t i = 0; i < M; i++) {
        float *o = out + i * ldo + j0;
        memset(sum, 0, cols * sizeof(float));
        for (size_t k = 0; k < K; k++) {
            const float aik = a[i * lda + k];
            const float *bk = b + k * ldb + j0;
#pragma omp simd
            for (size_t j = 0; j < cols; j++)
                sum[j] += aik * bk[j];
        }
        if (accumulate)
            for (size_t j = 0; j < cols; j++)
                o[j] += sum[j];
        else
            memcpy(o, sum, cols * sizeof(float));
    }
}

static void matmul_nn_axpy(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                           size_t N, size_t K, int accumulate)
{
    const size_t CB = 256; /* columns per thread chunk */
    if (!matmul_use_threads(M, N, K)) { /* no parallel region at all: a small call stays cheap */
        for (size_t j0 = 0; j0 < N; j0 += CB)
            nn_axpy_cols(out, ldo, a, lda, b, ldb, M, j0, N - j0 < CB ? N - j0 : CB, K, accumulate);
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t j0 = 0; j0 < N; j0 += CB)
        nn_axpy_cols(out, ldo, a, lda, b, ldb, M, j0, N - j0 < CB ? N - j0 : CB, K, accumulate);
}

/* Columns j0 .. j0+15 of out (or fewer, the last panel): every block of MR rows against one
 * panel of b, copied to `packed` (K x NR) first when pack is set. */
static void nn_panel(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                     size_t N, size_t K, size_t j0, float *packed, int accumulate)
{
    const size_t cols = N - j0 < NR ? N - j0 : NR;
    if (cols < NR) {
        kernel_edge(out + j0, ldo, a, lda, b + j0, ldb, M, cols, K, accumulate);
        return;
    }
    const float *panel = b + j0;
    size_t ldp = ldb;
    if (packed) {
        for (size_t k = 0; k < K; k++)
            memcpy(packed + k * NR, b + k * ldb + j0, NR * sizeof(float));
        panel = packed, ldp = NR;
    }
    for (size_t i = 0; i < M; i += MR)
        kernel_6x16(out + i * ldo + j0, ldo, a + i * lda, lda, panel, ldp, K, M - i < MR ? M - i : MR, accumulate);
}

#define STACK_PANEL_K 256 /* panels of up to 256 x 16 floats live on the stack (16 KiB) */

static void matmul_nn_any(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                          size_t N, size_t K, int accumulate)
{
    if (M == 1) {
        matmul_nn_axpy(out, ldo, a, lda, b, ldb, M, N, K, accumulate);
        return;
    }
    const size_t n_panels = (N + NR - 1) / NR;
    /* copying a panel pays only when several blocks of 6 rows reuse it; with at most 6 rows the
     * micro-kernel reads b in place, once. The copy is K x NR contiguous floats: rows of b that
     * are a power of two apart (ldb = 4096, say) would otherwise all fall into the same few L1
     * cache sets. */
    const int pack = M > MR;
    if (!matmul_use_threads(M, N, K)) { /* no parallel region and no allocation for a small product */
        float stack_panel[STACK_PANEL_K * NR];
        float *packed = !pack ? NULL : K <= STACK_PANEL_K ? stack_panel : mem_alloc_or_die(K * NR * sizeof(float), "matmul panel (K, 16)");
        for (size_t p = 0; p < n_panels; p++)
            nn_panel(out, ldo, a, lda, b, ldb, M, N, K, p * NR, packed, accumulate);
        if (packed != stack_panel)
            mem_free(packed);
        return;
    }
#pragma omp parallel
    {
        float *packed = pack ? mem_alloc_or_die(K * NR * sizeof(float), "matmul panel (K, 16)") : NULL;
#pragma omp for schedule(static)
        for (size_t p = 0; p < n_panels; p++)
            nn_panel(out, ldo, a, lda, b, ldb, M, N, K, p * NR, packed, accumulate);
        mem_free(packed);
    }
}

void matmul_nn_ld(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                  size_t N, size_t K)
{
    matmul_nn_any(out, ldo, a, lda, b, ldb, M, N, K, 0);
}

void matmul_nn_acc_ld(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                      size_t N, size_t K)
{
    matmul_nn_any(out, ldo, a, lda, b, ldb, M, N, K, 1);
}

void matmul_nn(float *out, const float *a, const float *b, size_t M, size_t N, size_t K)
{
    matmul_nn_ld(out, N, a, K, b, N, M, N, K);
}

void transpose(float *out, const float *in, size_t M, size_t N)
{
    const size_t TB = 32; /* tile, so that both sides are read and written a cache line at a time */
    for (size_t i0 = 0; i0 < M; i0 += TB)
        for (size_t j0 = 0; j0 < N; j0 += TB)
            for (size_t i = i0; i < i0 + TB && i < M; i++)
                for (size_t j = j0; j < j0 + TB && j < N; j++)
                    out[j * M + i] = in[i * N + j];
}

/* Fewer rows than the micro-kernel has: each output is a dot product along K, reading every
 * row of b once, in order (a decode step's few query rows against the keys or a weight matrix).
 * Up to four rows of a at once, two 8-float accumulators each: eight independent FMA chains,
 * so the loop is not stalled by FMA latency. Every row gets the same arithmetic whichever rows
 * share its group (and a lone row too): the result of a row does not depend on M. */
/* The end of one output element: the two 8-lane partial sums of the K16 part, added lane by
 * lane, then across the lanes in a fixed tree, then the K % 16 tail in order. Every path below
 * ends each element through this function, so that all give it the same bits. */
static inline float dot_finish(f32x8 s0, f32x8 s1, const float *ar, const float *bj, size_t K16, size_t K)
{
    const f32x8 v = s0 + s1;
    float sum = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
    for (size_t k = K16; k < K; k++)
        sum += ar[k] * bj[k];
    return sum;
}

/* Rows [i_begin, i_end) of column j, up to four rows at a time. */
static void dots_rows(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t i_begin,
                      size_t i_end, size_t K, size_t j)
{
    const size_t K16 = K / 16 * 16;
    const float *bj = b + j * ldb;
    if (i_end - i_begin == 1) { /* one row: the arithmetic of one row of the loop below, exactly */
        const float *ar = a + i_begin * lda;
        f32x8 s0 = {0}, s1 = {0};
        for (size_t k = 0; k < K16; k += 16) {
            s0 += *(const f32x8 *)(ar + k) * *(const f32x8 *)(bj + k);
            s1 += *(const f32x8 *)(ar + k + 8) * *(const f32x8 *)(bj + k + 8);
        }
        out[i_begin * ldo + j] = dot_finish(s0, s1, ar, bj, K16, K);
        return;
    }
    for (size_t i0 = i_begin; i0 < i_end; i0 += 4) {
        const size_t rows = i_end - i0 < 4 ? i_end - i0 : 4;
        /* missing rows repeat row i0 (not stored), as in the micro-kernel */
        const float *a0 = a + i0 * lda, *a1 = rows > 1 ? a0 + lda : a0;
        const float *a2 = rows > 2 ? a0 + 2 * lda : a0, *a3 = rows > 3 ? a0 + 3 * lda : a0;
        f32x8 s00 = {0}, s01 = {0}, s10 = {0}, s11 = {0}, s20 = {0}, s21 = {0}, s30 = {0}, s31 = {0};
        for (size_t k = 0; k < K16; k += 16) {
            const f32x8 b0 = *(const f32x8 *)(bj + k), b1 = *(const f32x8 *)(bj + k + 8);
            s00 += *(const f32x8 *)(a0 + k) * b0, s01 += *(const f32x8 *)(a0 + k + 8) * b1;
            s10 += *(const f32x8 *)(a1 + k) * b0, s11 += *(const f32x8 *)(a1 + k + 8) * b1;
            s20 += *(const f32x8 *)(a2 + k) * b0, s21 += *(const f32x8 *)(a2 + k + 8) * b1;
            s30 += *(const f32x8 *)(a3 + k) * b0, s31 += *(const f32x8 *)(a3 + k + 8) * b1;
        }
        const f32x8 t0[4] = {s00, s10, s20, s30}, t1[4] = {s01, s11, s21, s31};
        for (size_t r = 0; r < rows; r++)
            out[(i0 + r) * ldo + j] = dot_finish(t0[r], t1[r], a + (i0 + r) * lda, bj, K16, K);
    }
}

/* Rows i0 .. i0+2 of columns j and j+1: twelve accumulators, each row of a loaded once for two
 * columns (fewer loads per multiply-add than dots_rows when there are many rows). */
static void dots_3x2(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t i0,
                     size_t K, size_t j)
{
    const size_t K16 = K / 16 * 16;
    const float *a0 = a + i0 * lda, *a1 = a0 + lda, *a2 = a1 + lda, *b0 = b + j * ldb, *b1 = b0 + ldb;
    f32x8 p00 = {0}, p01 = {0}, p10 = {0}, p11 = {0}, p20 = {0}, p21 = {0}; /* column j */
    f32x8 q00 = {0}, q01 = {0}, q10 = {0}, q11 = {0}, q20 = {0}, q21 = {0}; /* column j + 1 */
    for (size_t k = 0; k < K16; k += 16) {
        const f32x8 x0 = *(const f32x8 *)(b0 + k), x1 = *(const f32x8 *)(b0 + k + 8);
        const f32x8 y0 = *(const f32x8 *)(b1 + k), y1 = *(const f32x8 *)(b1 + k + 8);
        f32x8 r = *(const f32x8 *)(a0 + k);
        p00 += r * x0, q00 += r * y0;
        r = *(const f32x8 *)(a0 + k + 8);
        p01 += r * x1, q01 += r * y1;
        r = *(const f32x8 *)(a1 + k);
        p10 += r * x0, q10 += r * y0;
        r = *(const f32x8 *)(a1 + k + 8);
        p11 += r * x1, q11 += r * y1;
        r = *(const f32x8 *)(a2 + k);
        p20 += r * x0, q20 += r * y0;
        r = *(const f32x8 *)(a2 + k + 8);
        p21 += r * x1, q21 += r * y1;
    }
    out[i0 * ldo + j] = dot_finish(p00, p01, a0, b0, K16, K);
    out[(i0 + 1) * ldo + j] = dot_finish(p10, p11, a1, b0, K16, K);
    out[(i0 + 2) * ldo + j] = dot_finish(p20, p21, a2, b0, K16, K);
    out[i0 * ldo + j + 1] = dot_finish(q00, q01, a0, b1, K16, K);
    out[(i0 + 1) * ldo + j + 1] = dot_finish(q10, q11, a1, b1, K16, K);
    out[(i0 + 2) * ldo + j + 1] = dot_finish(q20, q21, a2, b1, K16, K);
}

#define DOT_COLS 16 /* columns of out per block: 16 rows of b (32 KiB at K = 512) stay in L1/L2 */

/* Columns [j0, j0 + DOT_COLS) (fewer at the end) for every row: three rows of a at a time
 * against each pair of columns, so that both the three rows and the block of b are reused from
 * the cache; leftover rows and an odd last column one column at a time. */
static void dots_column_block(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                              size_t N, size_t K, size_t j0)
{
    const size_t j1 = j0 + DOT_COLS < N ? j0 + DOT_COLS : N, pairs_end = j0 + (j1 - j0) / 2 * 2;
    const size_t M3 = M >= 6 ? M / 3 * 3 : 0; /* up to 5 rows: dots_rows takes four at a time */
    for (size_t i0 = 0; i0 < M3; i0 += 3)
        for (size_t j = j0; j < pairs_end; j += 2)
            dots_3x2(out, ldo, a, lda, b, ldb, i0, K, j);
    for (size_t j = j0; j < j1; j++)
        dots_rows(out, ldo, a, lda, b, ldb, j < pairs_end ? M3 : 0, M, K, j);
}

/* Every output is a dot product along K, reading every row of b once, in order (a decode
 * step's few query rows against the keys or a weight matrix; a batch's rows against a weight
 * matrix). Each element is two 8-lane multiply-add chains over K, then dot_finish: the same
 * arithmetic whichever rows and columns are computed together, so a row's result does not
 * depend on M. Threads split the columns. */
static void matmul_nt_dots(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                           size_t N, size_t K)
{
    const size_t blocks = (N + DOT_COLS - 1) / DOT_COLS;
    if (!matmul_use_threads(M, N, K)) {
        for (size_t jb = 0; jb < blocks; jb++)
            dots_column_block(out, ldo, a, lda, b, ldb, M, N, K, jb * DOT_COLS);
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t jb = 0; jb < blocks; jb++)
        dots_column_block(out, ldo, a, lda, b, ldb, M, N, K, jb * DOT_COLS);
}

/* Columns j0 .. j0+15 of out: 16 rows of b, transposed into a K x 16 panel (each row of b read
 * once, in order), against every block of MR rows of a. */
static void nt_panel(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                     size_t N, size_t K, size_t j0, float *packed)
{
    const size_t cols = N - j0 < NR ? N - j0 : NR;
    for (size_t c = 0; c < NR; c++)
        for (size_t k = 0; k < K; k++)
            packed[k * NR + c] = c < cols ? b[(j0 + c) * ldb + k] : 0.0f;
    if (cols == NR) {
        for (size_t i = 0; i < M; i += MR)
            kernel_6x16(out + i * ldo + j0, ldo, a + i * lda, lda, packed, NR, K, M - i < MR ? M - i : MR, 0);
    } else {
        kernel_edge(out + j0, ldo, a, lda, packed, NR, M, cols, K, 0);
    }
}

void matmul_nt_ld(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                  size_t N, size_t K)
{
    if (M < MR) {
        matmul_nt_dots(out, ldo, a, lda, b, ldb, M, N, K);
        return;
    }
    const size_t n_panels = (N + NR - 1) / NR;
    if (!matmul_use_threads(M, N, K)) { /* no parallel region and no allocation for a small product */
        float stack_panel[STACK_PANEL_K * NR];
        float *packed = K <= STACK_PANEL_K ? stack_panel : mem_alloc_or_die(K * NR * sizeof(float), "matmul panel (K, 16)");
        for (size_t p = 0; p < n_panels; p++)
            nt_panel(out, ldo, a, lda, b, ldb, M, N, K, p * NR, packed);
        if (packed != stack_panel)
            mem_free(packed);
        return;
    }
#pragma omp parallel
    {
        float *packed = mem_alloc_or_die(K * NR * sizeof(float), "matmul panel (K, 16)");
#pragma omp for schedule(static)
        for (size_t p = 0; p < n_panels; p++)
            nt_panel(out, ldo, a, lda, b, ldb, M, N, K, p * NR, packed);
        mem_free(packed);
    }
}

void matmul_nt_rows_ld(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                       size_t N, size_t K)
{
    matmul_nt_dots(out, ldo, a, lda, b, ldb, M, N, K);
}

void matmul_nt(float *out, const float *a, const float *b, size_t M, size_t N, size_t K)
{
    matmul_nt_ld(out, N, a, K, b, K, M, N, K);
}

void matmul_ref_nt(float *out, const float *a, const float *b, size_t M, size_t N, size_t K)
{
    for (size_t i = 0; i < M; i++)
        for (size_t j = 0; j < N; j++) {
            double sum = 0.0;
            for (size_t k = 0; k < K; k++)
                sum += (double)a[i * K + k] * (double)b[j * K + k];
            out[i * N + j] = (float)sum;
        }
}
