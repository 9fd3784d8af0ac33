/*
 * matmul.h: the CPU matrix products every chapter uses (fp32, row-major, OpenMP).
 *
 *   matmul_nn:  out (M, N) = a (M, K) · b (K, N)
 *   matmul_nt:  out (M, N) = a (M, K) · b (N, K)ᵀ   -- the linear layer y = x Wᵀ, with weights
 *                                                     stored [out, in] as llama2.c stores them
 *
 * Both overwrite `out`. They use OpenMP threads when the product is large and they are not
 * already inside a parallel region; inside one they run on the calling thread.
 * matmul_ref_nt is the triple loop they are tested against.
 */
#ifndef COMMON_MATMUL_H
#define COMMON_MATMUL_H

#include <stddef.h>

#include "vmath.h"

#ifdef __cplusplus
extern "C" {
#endif

void matmul_nn(float *out, const float *a, const float *b, size_t M, size_t N, size_t K);
void matmul_nt(float *out, const float *a, const float *b, size_t M, size_t N, size_t K);

/* matmul_nn on sub-matrices: row i of out starts at out + i * ldo, of a at a + i * lda, of b
 * at b + i * ldb (leading dimensions, in floats). */
void matmul_nn_ld(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                  size_t N, size_t K);
/* The same, adding to out: out (M, N) += a (M, K) · b (K, N) (a P V product summed over the
 * blocks of a paged cache, chapter 05). */
void matmul_nn_acc_ld(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                      size_t N, size_t K);
/* matmul_nt on sub-matrices, likewise: out (M, N) = a (M, K) · b (N, K)ᵀ. */
void matmul_nt_ld(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                  size_t N, size_t K);

/* Batch invariance: matmul_nn gives every output element as one multiply-add chain over K in
 * order, whatever M and whichever code path (so row i of out has the same bits whether a has 1
 * row or 100). matmul_nt does not: with M >= 6 it takes another path than with fewer rows.
 * matmul_nt_rows_ld is matmul_nt_ld through the dot-product path for any M: each row's result
 * is independent of the other rows (slower than matmul_nt_ld for large M). */
void matmul_nt_rows_ld(float *out, size_t ldo, const float *a, size_t lda, const float *b, size_t ldb, size_t M,
                       size_t N, size_t K);

/* A linear layer y = x Wᵀ on weights packed once (W [out, in] = (N, K), row-major, as llama2.c
 * stores them): the micro-kernel's speed for many rows, and batch-invariant -- every output
 * element is one multiply-add chain over K in order, for one row or many. packed holds
 * matmul_packed_floats(N, K) floats: panels of 16 output columns, (ceil(N/16), K, 16), the
 * columns past N zero. */
size_t matmul_packed_floats(size_t N, size_t K);
void matmul_pack_weights(float *packed, const float *w, size_t N, size_t K);
/* The exact inverse, for whoever needs W as the checkpoint stores it (saving a model, uploading
 * it to a GPU): w (N, K) from packed; matmul_unpack_row gives row j alone (K floats). A model
 * keeps its matrices only packed, and reads an embedding row shared with its classifier this way. */
void matmul_unpack_weights(float *w, const float *packed, size_t N, size_t K);
void matmul_unpack_row(float *row, const float *packed, size_t K, size_t j);
void matmul_packed(float *out, size_t ldo, const float *a, size_t lda, const float *packed, size_t M, size_t N,
                   size_t K);

/* The register-blocked micro-kernel itself, for kernels that keep their operands packed
 * (chapter 03): out (rows, 16) = a (rows, K) · panel (K, 16), or += with accumulate, where
 * rows <= MATMUL_MR and panel is K x 16 contiguous floats. MATMUL_MR is retuned for each vector
 * width (common/matmul_kernel.h): 12 rows with AVX-512's 32 registers, 6 with AVX2 and NEON,
 * 3 with SSE alone. */
#if VL == 16
#define MATMUL_MR 12
#elif VL == 8 || defined(__aarch64__)
#define MATMUL_MR 6
#else
#define MATMUL_MR 3
#endif
#define MATMUL_NR 16
void matmul_micro(float *out, size_t ldo, const float *a, size_t lda, const float *panel, size_t K, size_t rows,
                  int accumulate);

/* Whether a product of this size is worth OpenMP threads (about 2e5 multiply-adds or more, and not
 * already inside a parallel region): shared by matmul.c and matmul_packed.c. */
int matmul_use_threads(size_t M, size_t N, size_t K);

/* The obviously-correct triple loop (double accumulation), for tests. */
void matmul_ref_nt(float *out, const float *a, const float *b, size_t M, size_t N, size_t K);

/* out (N, M) = in (M, N)ᵀ */
void transpose(float *out, const float *in, size_t M, size_t N);

#ifdef __cplusplus
}
#endif
#endif
