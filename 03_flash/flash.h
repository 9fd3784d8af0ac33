/*
 * flash.h: chapter 03, FlashAttention -- attention tile by tile, without the T x S matrix.
 *
 * Chapters 01 and 02 wrote all B*H*T*S scores to memory, then read them back twice. Here the
 * queries are cut into Tr tiles of Br rows and the keys into Tc tiles of Bc keys. For a query
 * tile, the key tiles are visited in order while every row keeps three running values:
 *     m  the largest scaled score seen so far
 *     l  the sum of exp(score - m) so far
 *     o  the sum of exp(score - m) * v so far (D floats)
 * A new tile with a larger maximum m' rescales l and o by exp(m - m') (the online softmax), so
 * at the end out = o / l exactly as softmax(scores) V, and only Br*Bc scores ever exist at once.
 * Each row also returns its log-sum-exp, lse = m + log(l) = log sum_j exp(scale * q.k_j), which
 * lets later chapters compute attention over parts of the keys and merge the parts exactly.
 *
 * Semantics are chapter 02's: GQA (query head h reads kv head h / (H/Hkv)), bottom-right causal
 * mask, T != S, any D <= 256, rows that see no key give zeros (and lse = -inf).
 *
 * Versions (--kernel N; 1 = the simplest, the default is the fastest):
 *   CPU  1  tiled: the algorithm in plain loops, a row at a time, written to be read
 *   CPU  2  fast: K and V packed once into 16-wide panels, QKᵀ and PV through the MR x 16
 *           register-blocked micro-kernel, vectorised exp, the query heads of a GQA group
 *           processed together, OpenMP over (batch, kv head, query block) heaviest first
 *   CUDA 1  fa1: one thread per query row, K/V tiles in shared memory (FlashAttention 1 style)
 *   CUDA 2  fa2: warps own query rows, lanes split keys and dims, one division at the end,
 *           tiles above the causal diagonal never visited (FlashAttention 2 style)
 *   CUDA 3  tc: tensor cores through WMMA, fp16 inputs and fp32 accumulation
 */
#ifndef FLASH_H
#define FLASH_H

#include <stddef.h>

#include "02_mqa_gqa/gqa.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FLASH_CPU_KERNELS 2
#define FLASH_CUDA_KERNELS 3
#define FLASH_MAX_D 256

/* Tile sizes: Br query rows by Bc keys. */
typedef struct {
    int Br, Bc;
} FlashTiles;

/* The tile sizes each CPU version uses unless told otherwise (the lesson's sweep chose them). */
FlashTiles flash_default_tiles(int kernel);

/* -1 (error recorded) for shapes the chapter does not support: H % Hkv, D > FLASH_MAX_D. */
int flash_check_shape(const GqaShape *s);

/* ---- CPU: q (B, H, T, D), k and v (B, Hkv, S, D) -> out (B, H, T, D), lse (B, H, T) or NULL */
int flash_attention_tiled(const GqaShape *s, FlashTiles tiles, const float *q, const float *k, const float *v,
                          float *out, float *lse);
int flash_attention_fast(const GqaShape *s, FlashTiles tiles, const float *q, const float *k, const float *v,
                         float *out, float *lse);
int flash_attention_cpu(int kernel, const GqaShape *s, const float *q, const float *k, const float *v, float *out,
                        float *lse);
const char *flash_cpu_kernel_name(int kernel); /* "tiled", "fast"; NULL if unknown */

/* Merges a second partial result into the first: rows of (o, lse) computed over one part of the
 * keys and (o2, lse2) over a disjoint part become the result over both:
 *     lse = log(e^lse + e^lse2),  o = e^(lse - lse_new) o + e^(lse2 - lse_new) o2.
 * o, o2 (rows, D); lse, lse2 (rows). A part with lse = -inf (no keys) contributes nothing. */
void flash_merge(float *o, float *lse, const float *o2, const float *lse2, size_t rows, int D);

/* ---- CUDA (device pointers, same layouts; d_lse may be NULL) ------------------------------- */
#if HAVE_CUDA
int flash_attention_cuda(int kernel, const GqaShape *s, const float *d_q, const float *d_k, const float *d_v,
                         float *d_out, float *d_lse);
const char *flash_cuda_kernel_name(int kernel); /* "fa1", "fa2", "tc"; NULL if unknown */
/* 1 for the versions that compute in fp16 (tc): they are checked by FlashAttention's rule, an
 * error at most 2x that of naive attention in fp16, not at fp32 tolerance. */
int flash_cuda_kernel_fp16(int kernel);
#endif

#ifdef __cplusplus
}
#endif
#endif
