/*
 * kvcache_layout.h: where a row lives in the cache, and reading rows back as floats -- shared by
 * kvcache.c, which writes the cache, and decode.c, which reads it. Not the chapter's API.
 *
 * A row is one token's D values of one kv head: row (layer, b, h, pos) of (L, B, Hkv, max_seq)
 * starts at element row * D of c->k and c->v, and int8 keeps its scale at c->k_scale[row].
 */
#ifndef KVCACHE_LAYOUT_H
#define KVCACHE_LAYOUT_H

#include <stddef.h>

#include "04_kvcache/kvcache.h"

/* index of the row (layer, b, h, pos) in (L, B, Hkv, max_seq) */
static inline size_t row_of(const KvCache *c, int layer, int b, int h, int pos)
{
    return (((size_t)layer * c->batch + b) * c->n_kv_heads + h) * c->max_seq + pos;
}

/* IEEE half precision as a storage type: C23's _Float16 (gcc, clang >= 15 on x86); clang 14
 * (the fuzzing build) has only its storage-only __fp16. Casts round to nearest even either way. */
#if defined(__clang__) && !defined(__FLT16_MAX__)
typedef __fp16 half_t;
#else
typedef _Float16 half_t;
/* decode_quant.c, for an fp16 or int8 cache, the values widened in registers (never written out
 * as floats): scores sc (G, n), rows ldsc apart, = q (G, D) · (rows row0 .. row0+n-1 of c->k)ᵀ,
 * and pv (G, D) = p (G, n), rows ldp apart, · (the same rows of c->v). */
void kvcache_scores_quant(const KvCache *c, size_t row0, size_t n, const float *q, int G, float *sc, size_t ldsc);
void kvcache_pv_quant(const KvCache *c, size_t row0, size_t n, const float *p, size_t ldp, int G, float *pv);

#endif

/* n consecutive rows from `row` on of base (c->k or c->v, with its scales), dequantised into
 * dst (n, D) */
void kvcache_load_rows(const KvCache *c, const void *base, const float *scales, size_t row, size_t n, float *dst);

/* decode_quant.c, for an fp16 or int8 cache, the values widened in registers (never written out
 * as floats): scores sc (G, n), rows ldsc apart, = q (G, D) · (rows row0 .. row0+n-1 of c->k)ᵀ,
 * and pv (G, D) = p (G, n), rows ldp apart, · (the same rows of c->v). */
void kvcache_scores_quant(const KvCache *c, size_t row0, size_t n, const float *q, int G, float *sc, size_t ldsc);
void kvcache_pv_quant(const KvCache *c, size_t row0, size_t n, const float *p, size_t ldp, int G, float *pv);

#endif
