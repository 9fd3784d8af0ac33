/*
 * kvcache.c: chapter 04 on the CPU -- the KV cache itself: its layout, its size, and storing
 * rows into it in fp32, fp16 or int8.
 *
 * What it teaches: a cache is one array per K and V, (L, B, Hkv, max_seq, D), reserved for
 * max_seq positions of every sequence; a token's rows are written once, after RoPE, and read at
 * every later step (decode.c). Its size, 2 * layers * kv_heads * D * bytes per token, is what
 * limits how many tokens a machine can serve, so it can be stored in fewer bytes:
 *
 *   fp16 rounds each value (relative error <= 2^-11);
 *   int8 stores round(x / s) with one scale s = max|x| / 127 per token per kv head (absolute
 *        error <= s / 2), and 4 bytes of scale per row.
 *
 * Readers dequantise rows back to floats (kvcache_load_rows, kvcache_gather).
 */
#include "04_kvcache/kvcache.h"

#include <math.h>
#include <string.h>

#include "04_kvcache/kvcache_layout.h"
#include "common/error.h"
#include "common/tensor.h"
#include "common/vmath.h"

/* ==== dtypes and sizes =============================================================================== */

int kv_dtype_parse(const char *name, KvDtype *out)
{
    if (strcmp(name, "f32") == 0)
        *out = KV_F32;
    else if (strcmp(name, "f16") == 0)
        *out = KV_F16;
    else if (strcmp(name, "int8") == 0)
        *out = KV_INT8;
    else
        return error_set("--kv-dtype must be one of " KV_DTYPE_CHOICES ", got '%s'", name);
    return 0;
}

const char *kv_dtype_name(KvDtype dt) { return dt == KV_F16 ? "f16" : dt == KV_INT8 ? "int8" : "f32"; }

size_t kv_dtype_bytes(KvDtype dt) { return dt == KV_F16 ? 2 : dt == KV_INT8 ? 1 : 4; }

size_t kvcache_bytes_per_token(int n_layers, int n_kv_heads, int D, KvDtype dt)
{
    size_t b = 2 * (size_t)n_layers * n_kv_heads * D * kv_dtype_bytes(dt);
    return dt == KV_INT8 ? b + 2 * (size_t)n_layers * n_kv_heads * sizeof(float) : b;
}

size_t kvcache_bytes(const KvCache *c)
{
    const size_t rows = (size_t)c->n_layers * c->batch * c->n_kv_heads * c->max_seq;
    return 2 * rows * c->D * kv_dtype_bytes(c->dtype) + (c->dtype == KV_INT8 ? 2 * rows * sizeof(float) : 0);
}

/* ==== creating and freeing =========================================================================== */

int kvcache_create(KvCache *c, int n_layers, int batch, int n_kv_heads, int max_seq, int D, KvDtype dt)
{
    memset(c, 0, sizeof *c);
    if (n_layers < 1 || batch < 1 || n_kv_heads < 1 || max_seq < 1 || D < 1)
        return error_set("KV cache sizes must be positive (layers %d, batch %d, kv heads %d, max_seq %d, head dim %d)",
                         n_layers, batch, n_kv_heads, max_seq, D);
    size_t rows = 1, elems;
    if (size_mul(&rows, (size_t)n_layers * batch * n_kv_heads, (size_t)max_seq) != 0 ||
        size_mul(&elems, rows, (size_t)D) != 0 || elems > SIZE_MAX / 8)
        return error_set("KV cache of %d layers x %d x %d x %d x %d is too large", n_layers, batch, n_kv_heads, max_seq,
                         D);
    *c = (KvCache){.dtype = dt, .n_layers = n_layers, .batch = batch, .n_kv_heads = n_kv_heads, .max_seq = max_seq,
                   .D = D};
    c->k = mem_alloc(elems * kv_dtype_bytes(dt), "the K cache (L, B, Hkv, max_seq, D)");
    c->v = c->k ? mem_alloc(elems * kv_dtype_bytes(dt), "the V cache (L, B, Hkv, max_seq, D)") : NULL;
    c->len = c->v ? mem_alloc((size_t)batch * sizeof(int), "cache lengths") : NULL;
    if (c->len && dt == KV_INT8) {
        c->k_scale = mem_alloc(rows * sizeof(float), "K scales (L, B, Hkv, max_seq)");
        c->v_scale = c->k_scale ? mem_alloc(rows * sizeof(float), "V scales (L, B, Hkv, max_seq)") : NULL;
    }
    if (!c->len || (dt == KV_INT8 && !c->v_scale)) {
        kvcache_free(c);
        return -1;
    }
    return 0;
}

void kvcache_free(KvCache *c)
{
    mem_free(c->k), mem_free(c->v), mem_free(c->k_scale), mem_free(c->v_scale), mem_free(c->len);
    memset(c, 0, sizeof *c);
}

void kvcache_reset(KvCache *c) { memset(c->len, 0, (size_t)c->batch * sizeof(int)); }

/* ==== rows in, rows out: quantisation ================================================================ */

/* x (D) into row `row` of base, in the cache's dtype (int8: its scale into scales[row]) */
static void store_row(const KvCache *c, void *base, float *scales, size_t row, const float *x)
{
    const int D = c->D;
    if (c->dtype == KV_F32) {
        memcpy((float *)base + row * D, x, (size_t)D * sizeof(float));
    } else if (c->dtype == KV_F16) {
        half_t *dst = (half_t *)base + row * D;
        for (int d = 0; d < D; d++)
            dst[d] = (half_t)x[d];
    } else { /* int8: symmetric, one scale per row */
        float amax = 0.0f;
        for (int d = 0; d < D; d++)
            amax = fabsf(x[d]) > amax ? fabsf(x[d]) : amax;
        const float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int8_t *dst = (int8_t *)base + row * D;
        for (int d = 0; d < D; d++) {
            long qv = lrintf(x[d] * inv);
            dst[d] = (int8_t)(qv > 127 ? 127 : qv < -127 ? -127 : qv);
        }
        scales[row] = scale;
    }
}

void kvcache_load_rows(const KvCache *c, const void *base, const float *scales, size_t row, size_t n, float *dst)
{
    const size_t D = (size_t)c->D;
    if (c->dtype == KV_F32) {
        memcpy(dst, (const float *)base + row * D, n * D * sizeof(float));
    } else if (c->dtype == KV_F16) {
        const half_t *src = (const half_t *)base + row * D;
        size_t i = 0;
        for (; i + VL <= n * D; i += VL) /* a vector at a time (vmath.h: vcvtph2ps, fcvtl) */
            fvec_store(dst + i, fvec_from_f16((const uint16_t *)(src + i)));
        for (; i < n * D; i++)
            dst[i] = (float)src[i];
    } else {
        const int8_t *src = (const int8_t *)base + row * D;
        for (size_t r = 0; r < n; r++) {
            const float s = scales[row + r];
#pragma omp simd
            for (size_t d = 0; d < D; d++)
                dst[r * D + d] = (float)src[r * D + d] * s;
        }
    }
}

void kvcache_write(KvCache *c, int layer, int b, int pos, int n, const float *k, const float *v)
{
    const int Hkv = c->n_kv_heads, D = c->D;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < Hkv; h++) {
            const size_t row = row_of(c, layer, b, h, pos + t);
            store_row(c, c->k, c->k_scale, row, k + ((size_t)t * Hkv + h) * D);
            store_row(c, c->v, c->v_scale, row, v + ((size_t)t * Hkv + h) * D);
        }
}

void kvcache_gather(const KvCache *c, int layer, int b, int len, float *k_out, float *v_out)
{
    const size_t D = (size_t)c->D;
    for (int h = 0; h < c->n_kv_heads; h++) {
        kvcache_load_rows(c, c->k, c->k_scale, row_of(c, layer, b, h, 0), (size_t)len, k_out + (size_t)h * len * D);
        kvcache_load_rows(c, c->v, c->v_scale, row_of(c, layer, b, h, 0), (size_t)len, v_out + (size_t)h * len * D);
    }
}
