/*
 * matmul.c: register-blocked fp32 matrix products (see matmul.h).
 *
 * The core is a micro-kernel (matmul_kernel.h): MATMUL_MR rows of `a` times a 16-column panel of
 * `b`, the MR x 16 block of `out` held in twelve vector registers (12 x 1 with AVX-512's 16
 * lanes, 6 x 2 with AVX2's 8) while it walks down K.
 * Each step loads 16 floats of b and MR of a for 16 MR multiply-adds, so it is limited by the FMA
 * units rather than by memory. The panel of b (K x 16 floats) is first copied to a contiguous
 * buffer: it then stays in L1/L2 while all rows of a pass over it, and rows of b that are a
 * power of two apart no longer collide in the same cache sets. Leftover rows (fewer than MR) run
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

#include "matmul_kernel.h"
#include "tensor.h"
#include "vmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define MR MATMUL_MR /* rows of out per micro-kernel call */
#define NR MATMUL_NR /* columns of out per micro-kernel call */


void matmul_micro(float *out, size_t ldo, const float *a, size_t lda, const float *panel, size_t K, size_t rows,
                  int accumulate)
{
    micro_kernel(MR, out, ldo, a, lda, panel, NR, K, rows, accumulate);
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

/* ==== a few rows: b streamed row by row ============================================================== */

/* With up to STREAM_ROWS rows of a (a decode step's P V: the G query heads of a group against V),
 * out is a few rows of sums over b's rows, and the product is a pass over b: it goes at memory
 * speed only if b is read in order, row after row. The panels of the micro-kernel would instead
 * walk b in strips of 16 columns, K rows apart, from DRAM.
 * So: b is taken STREAM_K rows at a time (16 KiB at N = 128: they stay in L1 while they are
 * used), and within that step one or two rows of out at a time, STREAM_VECS vectors of columns
 * (a whole row of 128 floats with AVX-512, 32 with AVX2), are held in registers
 * across the STREAM_K rows of b: the first pair of rows reads b from memory in order, the next
 * pairs from L1. Each output element is still one multiply-add chain over K in order (stored and
 * reloaded between steps): the same bits as the micro-kernel. */
#define STREAM_ROWS 8
#define STREAM_K 32
#if VL == 16 || defined(__aarch64__)
#define STREAM_VECS 8 /* vectors of columns per block: 2 rows x 8 = 16 accumulators of 32 registers */
#else
#define STREAM_VECS 4 /* 2 x 4 = 8 of AVX2's 16 */
#endif
#define STREAM_RANGE 512 /* columns whose sums (STREAM_ROWS x 512 floats, 16 KiB) sit on the stack */

/* sum (R, NV VL columns at c0) += a (R, [k0, k1)) · b ([k0, k1), those columns), R <= 2, sum's
 * rows lds apart: the block's sums held in R x NV registers across the step's rows of b. */
static inline __attribute__((always_inline)) void stream_block(const int R, const int NV, float *sum, size_t lds,
                                                                const float *a, size_t lda, const float *b, size_t ldb,
                                                                size_t k0, size_t k1, size_t c0)
{
    fvec acc[2][STREAM_VECS];
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            acc[r][v] = fvec_load(sum + (size_t)r * lds + c0 + (size_t)v * VL);
    for (size_t k = k0; k < k1; k++) {
        const float *bk = b + k * ldb + c0;
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            const float ark = a[(size_t)r * lda + k];
#pragma GCC unroll 16
            for (int v = 0; v < NV; v++)
                acc[r][v] += ark * fvec_load(bk + (size_t)v * VL);
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int v = 0; v < NV; v++)
            fvec_store(sum + (size_t)r * lds + c0 + (size_t)v * VL, acc[r][v]);
}

/* sum (R, cols) += a (R, [k0, k1)) · b ([k0, k1), cols), R <= 2: blocks of STREAM_VECS vectors of
 * columns (then of 4 with AVX-512), then single vectors, then the last cols % VL columns one
 * element at a time. */
static inline __attribute__((always_inline)) void stream_step(const int R, float *sum, size_t lds, const float *a,
                                                               size_t lda, const float *b, size_t ldb, size_t k0,
                                                               size_t k1, size_t cols)
{
    const size_t block = (size_t)STREAM_VECS * VL;
    size_t c0 = 0;
    for (; c0 + block <= cols; c0 += block)
        stream_block(R, STREAM_VECS, sum, lds, a, lda, b, ldb, k0, k1, c0);
    for (; STREAM_VECS > 4 && c0 + 4 * VL <= cols; c0 += 4 * VL) /* a head of 64 floats: one block */
        stream_block(R, 4, sum, lds, a, lda, b, ldb, k0, k1, c0);
    for (; c0 + VL <= cols; c0 += VL)
        stream_block(R, 1, sum, lds, a, lda, b, ldb, k0, k1, c0);
    for (; c0 < cols; c0++) /* the same chain, one element at a time */
        for (int r = 0; r < R; r++) {
            float s = sum[(size_t)r * lds + c0];
            for (size_t k = k0; k < k1; k++)
                s += a[(size_t)r * lda + k] * b[k * ldb + c0];
            sum[(size_t)r * lds + c0] = s;
        }
}

/* Columns [j0, j0 + cols) of out, cols <= STREAM_RANGE, for M <= STREAM_ROWS rows: summed from
 * zero over all of K, step by step, two rows at a time, then stored or added to out. */
static void stream_range(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                         size_t j0, size_t cols, size_t K, int accumulate)
{
    float sum[STREAM_ROWS * STREAM_RANGE]; /* (M, cols), rows STREAM_RANGE apart */
    for (size_t r = 0; r < M; r++)
        memset(sum + r * STREAM_RANGE, 0, cols * sizeof(float));
    for (size_t k0 = 0; k0 < K; k0 += STREAM_K) {
        const size_t k1 = K - k0 < STREAM_K ? K : k0 + STREAM_K;
        for (size_t r = 0; r < M; r += 2) {
            float *sr = sum + r * STREAM_RANGE;
            if (M - r >= 2)
                stream_step(2, sr, STREAM_RANGE, a + r * lda, lda, b + j0, ldb, k0, k1, cols);
            else
                stream_step(1, sr, STREAM_RANGE, a + r * lda, lda, b + j0, ldb, k0, k1, cols);
        }
    }
    for (size_t r = 0; r < M; r++) {
        float *o = out + r * ldo + j0;
        const float *sr = sum + r * STREAM_RANGE;
        if (accumulate)
            for (size_t j = 0; j < cols; j++)
                o[j] += sr[j];
        else
            memcpy(o, sr, cols * sizeof(float));
    }
}

/* One row (M = 1): out += a[k] * (row k of b), k outer, b read once from start to end, the
 * row's sums in L1 (a load and a store per FMA: nothing next to DRAM's speed). Measured faster
 * for a lone row than stream_range's register blocks, whose 32-row steps read b in shorter
 * runs. Each element is still one chain over k in order. */
static void row_axpy(float *out, const float *a, const float *b, size_t ldb, size_t j0, size_t cols, size_t K,
                     int accumulate)
{
    float sum[STREAM_RANGE]; /* (cols) */
    memset(sum, 0, cols * sizeof(float));
    for (size_t k = 0; k < K; k++) {
        const float ak = a[k];
        const float *bk = b + k * ldb + j0;
#pragma omp simd
        for (size_t j = 0; j < cols; j++)
            sum[j] += ak * bk[j];
    }
    for (size_t j = 0; j < cols; j++)
        out[j0 + j] = accumulate ? out[j0 + j] + sum[j] : sum[j];
}

/* Columns [j0, j0 + cols) of out for M <= STREAM_ROWS rows. */
static void stream_cols(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                        size_t j0, size_t cols, size_t K, int accumulate)
{
    if (M == 1)
        row_axpy(out, a, b, ldb, j0, cols, K, accumulate);
    else
        stream_range(out, ldo, a, lda, b, ldb, M, j0, cols, K, accumulate);
}

/* matmul_nn for M <= STREAM_ROWS: threads (when worth it) split the column ranges. A small call
 * opens no parallel region at all: even a region of one thread costs about a microsecond, and
 * chapter 05 calls this once per block of 16 keys. */
static void matmul_nn_stream(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb,
                             size_t M, size_t N, size_t K, int accumulate)
{
    const size_t ranges = (N + STREAM_RANGE - 1) / STREAM_RANGE;
    if (!matmul_use_threads(M, N, K)) {
        for (size_t q = 0; q < ranges; q++) {
            const size_t j0 = q * STREAM_RANGE;
            stream_cols(out, ldo, a, lda, b, ldb, M, j0, N - j0 < STREAM_RANGE ? N - j0 : STREAM_RANGE, K, accumulate);
        }
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t q = 0; q < ranges; q++) {
        const size_t j0 = q * STREAM_RANGE;
        stream_cols(out, ldo, a, lda, b, ldb, M, j0, N - j0 < STREAM_RANGE ? N - j0 : STREAM_RANGE, K, accumulate);
    }
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
        micro_kernel(MR, out + i * ldo + j0, ldo, a + i * lda, lda, panel, ldp, K, M - i < MR ? M - i : MR, accumulate);
}

#define STACK_PANEL_K 256 /* panels of up to 256 x 16 floats live on the stack (16 KiB) */

static void matmul_nn_any(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                          size_t N, size_t K, int accumulate)
{
    if (M <= STREAM_ROWS) {
        matmul_nn_stream(out, ldo, a, lda, b, ldb, M, N, K, accumulate);
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

/* ==== dot products: each output element one dot product along K ===================================== */

/* A block of DOT_R rows of a by DOT_C rows of b (output columns): DOT_R x DOT_C dot products at
 * once, each row of a and of b loaded once per step for all of them, and as many independent
 * FMA chains (DOT_R * DOT_C * ACC16), so that neither loads nor FMA latency limit the loop. Each
 * element: its 16 partial sums over the K16 part, folded in vmath.h's fixed order (fsum16_x4
 * does four at once), then the K % 16 tail in order -- the same bits on every vector width and
 * whichever rows and columns share its block.
 * AVX-512 4 x 4 x 1 zmm = 16 accumulators, AVX2 1 x 4 x 2 ymm = 8, NEON 1 x 4 x 4 q = 16. */
#define DOT_C 4 /* vmath.h's fsum16_x4 finishes four at once */
#if VL == 16
#define DOT_R 4
#else
#define DOT_R 1
#endif

/* out[i0 .. i0+rows) x [j0 .. j0+cols) for rows <= R <= DOT_R, cols <= DOT_C; missing rows and
 * columns repeat the first one and are not stored, as in the micro-kernel. R is a compile-time
 * constant in each copy (always inlined), so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void dots_block(const int R, float *out, size_t ldo, const float *a,
                                                              size_t lda, const float *b, size_t ldb, size_t i0,
                                                              size_t rows, size_t j0, size_t cols, size_t K)
{
    const size_t K16 = K / 16 * 16;
    const float *ar[DOT_R], *bc[DOT_C];
    for (size_t r = 0; r < (size_t)R; r++)
        ar[r] = a + (i0 + (r < rows ? r : 0)) * lda;
    for (size_t c = 0; c < DOT_C; c++)
        bc[c] = b + (j0 + (c < cols ? c : 0)) * ldb;
    fvec s[DOT_R][DOT_C][ACC16];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < DOT_C; c++)
#pragma GCC unroll 4
            for (int u = 0; u < ACC16; u++)
                s[r][c][u] = fvec_splat(0.0f);
    /* each row of b read start to end in turn (the four rows interleaved, 64 bytes of each at a
     * time, read from DRAM at half the speed); the chains of the four still overlap in the core */
#pragma GCC unroll 4
    for (int c = 0; c < DOT_C; c++)
        for (size_t k = 0; k < K16; k += 16)
#pragma GCC unroll 4
            for (int u = 0; u < ACC16; u++) {
                fvec bk = fvec_load(bc[c] + k + (size_t)u * VL);
                fvec_in_register(&bk);
#pragma GCC unroll 4
                for (int r = 0; r < R; r++)
                    s[r][c][u] += fvec_load(ar[r] + k + (size_t)u * VL) * bk;
            }
    for (size_t r = 0; r < rows; r++) {
        const f32x4 sum = fsum16_x4(s[r][0], s[r][1], s[r][2], s[r][3]); /* vmath.h's fixed order */
        for (size_t c = 0; c < cols; c++) {
            float v = sum[c];
            for (size_t k = K16; k < K; k++) /* then the K % 16 tail, in order */
                v += ar[r][k] * bc[c][k];
            out[(i0 + r) * ldo + j0 + c] = v;
        }
    }
}

/* the block of DOT_R rows, and a lone row (fewer rows left than DOT_R) */
static void dots_block_rows(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t i0,
                            size_t j0, size_t cols, size_t K)
{
    dots_block(DOT_R, out, ldo, a, lda, b, ldb, i0, DOT_R, j0, cols, K);
}

static void dots_block_row(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t i0,
                           size_t j0, size_t cols, size_t K)
{
    dots_block(1, out, ldo, a, lda, b, ldb, i0, 1, j0, cols, K);
}

#define DOT_COLS 16 /* columns of out per block: 16 rows of b (32 KiB at K = 512) stay in L1/L2 */

/* Columns [j0, j0 + DOT_COLS) (fewer at the end) for every row, in blocks of DOT_R x DOT_C: the
 * rows of a and the block of b are reused from the cache. */
static void dots_column_block(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                              size_t N, size_t K, size_t j0)
{
    const size_t j1 = j0 + DOT_COLS < N ? j0 + DOT_COLS : N;
    const size_t full = M / DOT_R * DOT_R;
    for (size_t j = j0; j < j1; j += DOT_C) {
        const size_t cols = j1 - j < DOT_C ? j1 - j : DOT_C;
        for (size_t i0 = 0; i0 < full; i0 += DOT_R)
            dots_block_rows(out, ldo, a, lda, b, ldb, i0, j, cols, K);
        for (size_t i = full; i < M; i++)
            dots_block_row(out, ldo, a, lda, b, ldb, i, j, cols, K);
    }
}

/* Every output is a dot product along K, reading every row of b once, in order (a decode
 * step's few query rows against the keys or a weight matrix; a batch's rows against a weight
 * matrix). Each element is 16 partial sums over K (vmath.h's ACC16) folded by fsum16_x4, then the
 * K % 16 tail: the same
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
            micro_kernel(MR, out + i * ldo + j0, ldo, a + i * lda, lda, packed, NR, K, M - i < MR ? M - i : MR, 0);
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
