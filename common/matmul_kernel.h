/*
 * matmul_kernel.h: the register-blocked micro-kernel of common/matmul.c and matmul_packed.c, in
 * one place for every vector width (internal to those two files).
 *
 * R rows of a times a 16-column panel of b: the R x 16 block of out lives in R * VEC_PER(16)
 * vector registers while the loop walks down K; each step loads the 16 floats of b's row k once
 * and multiplies them by each row's a[r][k] (a broadcast, which x86 folds into the FMA). R is a
 * compile-time constant at every call (the function is always inlined), so the loops over rows
 * and vectors unroll completely and the accumulators never leave the registers:
 *
 *   AVX-512: R = 12 rows x 1 zmm = 12 accumulators of 32 registers (MATMUL_MR = 12)
 *   AVX2:    R =  6 rows x 2 ymm = 12 of 16                          (MATMUL_MR = 6)
 *   NEON:    R =  6 rows x 4 q   = 24 of 32                          (MATMUL_MR = 6)
 *
 * Every element of out is one multiply-add chain over k = 0 .. K-1 in order, whatever R and the
 * width: the same bits from every kernel and every machine that has an FMA.
 */
#ifndef COMMON_MATMUL_KERNEL_H
#define COMMON_MATMUL_KERNEL_H

#include <stddef.h>

#include "matmul.h"
#include "vmath.h"

#define PANEL_VECS VEC_PER(MATMUL_NR) /* vectors in one row of a 16-column panel */

/* out[0..rows) x [0..16) = (or += with accumulate) a[0..rows) x [0..K) · b[0..K) x [0..16),
 * rows <= R <= MATMUL_MR, b's row k at b + k * ldb. Rows past `rows` recompute row 0 and are
 * not stored: wasted multiply-adds at full speed beat a narrower kernel that waits on FMA
 * latency. */
static inline __attribute__((always_inline)) void micro_kernel(const int R, float *out, size_t ldo, const float *a,
                                                                size_t lda, const float *b, size_t ldb, size_t K,
                                                                size_t rows, int accumulate)
{
    fvec c[MATMUL_MR][PANEL_VECS]; /* the R x 16 block of out */
    const float *ar[MATMUL_MR];    /* row r of a */
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
        ar[r] = (size_t)r < rows ? a + (size_t)r * lda : a;
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++)
            c[r][v] = fvec_splat(0.0f);
    }
    for (size_t k = 0; k < K; k++) {
        fvec bk[PANEL_VECS]; /* row k of the panel */
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++)
            bk[v] = fvec_load(b + k * ldb + (size_t)v * VL);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const float ark = ar[r][k];
#pragma GCC unroll 4
            for (int v = 0; v < PANEL_VECS; v++)
                c[r][v] += ark * bk[v];
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
        if ((size_t)r >= rows)
            break;
#pragma GCC unroll 4
        for (int v = 0; v < PANEL_VECS; v++) {
            float *o = out + (size_t)r * ldo + (size_t)v * VL;
            fvec_store(o, accumulate ? fvec_load(o) + c[r][v] : c[r][v]);
        }
    }
}

#endif
