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

/* n consecutive rows from `row` on of base (c->k or c->v, with its scales), dequantised into
 * dst (n, D) */
void kvcache_load_rows(const KvCache *c, const void *base, const float *scales, size_t row, size_t n, float *dst);

#endif
