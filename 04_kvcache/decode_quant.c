/*
 * decode_quant.c: chapter 04 -- decode attention over an fp16 or int8 cache at the cache's own
 * size.
 *
 * What it teaches: a quantised cache pays only if the kernel reads the small values and widens
 * them in registers, right where the multiply-adds use them. Dequantising a chunk into a float
 * buffer first writes and re-reads four bytes per value, more traffic than the fp32 cache it
 * was meant to beat. Here every load of K or V is one instruction that converts VL values
 * (common/vmath.h: vcvtph2ps for fp16, vpmovsxbd + vcvtdq2ps for int8, NEON fcvtl / sxtl + scvtf),
 * and int8's per-row scale is applied once per row: to the finished score (q · k) s, and to the
 * probability before it multiplies v (p s) v.
 *
 * The two products of one chunk of keys, like decode.c's fp32 path:
 *   scores (G, n) = q (G, D) · Kᵀ   each score 16 partial sums folded by fsum16_x4, four rows of q
 *                                   at a time, as common/matmul's dot products
 *   pv (G, D)     = P (G, n) · V    V streamed row by row, two rows of P at a time, each output
 *                                   one multiply-add chain over the keys in order
 */
#include <stdint.h>
#include <string.h>

#include "04_kvcache/kvcache_layout.h"
#include "common/vmath.h"

/* VL values of element `at` on of base (c->k or c->v) as floats, without int8's scale */
static inline __attribute__((always_inline)) fvec load_q(const KvDtype dt, const void *base, size_t at)
{
    return dt == KV_F16 ? fvec_from_f16((const uint16_t *)base + at) : fvec_from_i8((const int8_t *)base + at);
}

/* one element, the same conversion one lane wide (the D % 16 tail) */
static inline __attribute__((always_inline)) float load_q1(const KvDtype dt, const void *base, size_t at)
{
    if (dt == KV_INT8)
        return (float)((const int8_t *)base)[at];
    return (float)((const half_t *)base)[at];
}

/* Rows q[r0 .. r0+rows) (rows <= 4) against key row `row`: their scores into sc[r * ldsc]. */
static inline __attribute__((always_inline)) void score_rows(const KvDtype dt, const KvCache *c, size_t row,
                                                              const float *q, int r0, int rows, float *sc,
                                                              size_t ldsc)
{
    const size_t D = (size_t)c->D, D16 = D / 16 * 16;
    const float *qr[4];
    for (int i = 0; i < 4; i++) /* missing rows repeat the first and are not stored */
        qr[i] = q + (size_t)(r0 + (i < rows ? i : 0)) * D;
    fvec s[4][ACC16];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
        for (int u = 0; u < ACC16; u++)
            s[i][u] = fvec_splat(0.0f);
    for (size_t d = 0; d < D16; d += 16)
#pragma GCC unroll 4
        for (int u = 0; u < ACC16; u++) {
            const fvec kv = load_q(dt, c->k, row * D + d + (size_t)u * VL);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                s[i][u] += fvec_load(qr[i] + d + (size_t)u * VL) * kv;
        }
    const f32x4 sum = fsum16_x4(s[0], s[1], s[2], s[3]);
    const float scale = dt == KV_INT8 ? c->k_scale[row] : 1.0f;
    for (int i = 0; i < rows; i++) {
        float v = sum[i];
        for (size_t d = D16; d < D; d++)
            v += qr[i][d] * load_q1(dt, c->k, row * D + d);
        sc[(size_t)(r0 + i) * ldsc] = dt == KV_INT8 ? v * scale : v;
    }
}

static inline __attribute__((always_inline)) void scores_q(const KvDtype dt, const KvCache *c, size_t row0, size_t n,
                                                            const float *q, int G, float *sc, size_t ldsc)
{
    for (size_t j = 0; j < n; j++)
        for (int r0 = 0; r0 < G; r0 += 4)
            score_rows(dt, c, row0 + j, q, r0, G - r0 < 4 ? G - r0 : 4, sc + j, ldsc);
}

#if VL == 16 || defined(__aarch64__)
#define PV_VECS 8 /* columns per block: 2 rows x 8 vectors = 16 accumulators of 32 registers */
#else
#define PV_VECS 4 /* 2 x 4 = 8 of AVX2's 16 */
#endif

/* pv rows r0, r0+1 (or r0 alone, R = 1), columns [c0, c0 + NV VL), += the keys [0, n) of rows
 * row0 .. of V weighted by p (G, ldp) -- and by int8's scale. */
static inline __attribute__((always_inline)) void pv_block(const KvDtype dt, const int R, const int NV,
                                                            const KvCache *c, size_t row0, size_t n, const float *p,
                                                            size_t ldp, int r0, size_t c0, float *pv)
{
    const size_t D = (size_t)c->D;
    fvec acc[2][PV_VECS];
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            acc[i][v] = fvec_load(pv + (size_t)(r0 + i) * D + c0 + (size_t)v * VL);
    for (size_t j = 0; j < n; j++) {
        const size_t row = row0 + j;
        const float scale = dt == KV_INT8 ? c->v_scale[row] : 1.0f;
        float w[2];
#pragma GCC unroll 2
        for (int i = 0; i < R; i++)
            w[i] = dt == KV_INT8 ? p[(size_t)(r0 + i) * ldp + j] * scale : p[(size_t)(r0 + i) * ldp + j];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            const fvec vv = load_q(dt, c->v, row * D + c0 + (size_t)v * VL);
#pragma GCC unroll 2
            for (int i = 0; i < R; i++)
                acc[i][v] += w[i] * vv;
        }
    }
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++)
            fvec_store(pv + (size_t)(r0 + i) * D + c0 + (size_t)v * VL, acc[i][v]);
}

/* every row of pv, two at a time, for the NV VL columns at c0 */
static inline __attribute__((always_inline)) void pv_rows(const KvDtype dt, const int NV, const KvCache *c, size_t row0,
                                                           size_t n, const float *p, size_t ldp, int G, size_t c0,
                                                           float *pv)
{
    for (int r0 = 0; r0 < G; r0 += 2) {
        if (G - r0 >= 2)
            pv_block(dt, 2, NV, c, row0, n, p, ldp, r0, c0, pv);
        else
            pv_block(dt, 1, NV, c, row0, n, p, ldp, r0, c0, pv);
    }
}

/* pv (G, D) = p (G, n) · V rows row0 .. row0+n-1, in steps of 32 keys (their rows stay in L1
 * while every pair of rows of p and every block of columns passes over them): blocks of
 * PV_VECS vectors, then single vectors, then the last D % VL columns one at a time. */
static inline __attribute__((always_inline)) void pv_q(const KvDtype dt, const KvCache *c, size_t row0, size_t n,
                                                        const float *p, size_t ldp, int G, float *pv)
{
    const size_t D = (size_t)c->D, block = (size_t)PV_VECS * VL;
    memset(pv, 0, (size_t)G * D * sizeof(float));
    for (size_t j0 = 0; j0 < n; j0 += 32) {
        const size_t nj = n - j0 < 32 ? n - j0 : 32;
        size_t c0 = 0;
        for (; c0 + block <= D; c0 += block)
            pv_rows(dt, PV_VECS, c, row0 + j0, nj, p + j0, ldp, G, c0, pv);
        for (; c0 + VL <= D; c0 += VL)
            pv_rows(dt, 1, c, row0 + j0, nj, p + j0, ldp, G, c0, pv);
        for (int r = 0; r < G; r++)
            for (size_t d = c0; d < D; d++) {
                float s = pv[(size_t)r * D + d];
                for (size_t j = j0; j < j0 + nj; j++) {
                    const float w = p[(size_t)r * ldp + j] * (dt == KV_INT8 ? c->v_scale[row0 + j] : 1.0f);
                    s += w * load_q1(dt, c->v, (row0 + j) * D + d);
                }
                pv[(size_t)r * D + d] = s;
            }
    }
}

void kvcache_scores_quant(const KvCache *c, size_t row0, size_t n, const float *q, int G, float *sc, size_t ldsc)
{
    if (c->dtype == KV_F16)
        scores_q(KV_F16, c, row0, n, q, G, sc, ldsc);
    else
        scores_q(KV_INT8, c, row0, n, q, G, sc, ldsc);
}

void kvcache_pv_quant(const KvCache *c, size_t row0, size_t n, const float *p, size_t ldp, int G, float *pv)
{
    if (c->dtype == KV_F16)
        pv_q(KV_F16, c, row0, n, p, ldp, G, pv);
    else
        pv_q(KV_INT8, c, row0, n, p, ldp, G, pv);
}
