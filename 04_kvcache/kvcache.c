/*
 * kvcache.c: chapter 04 on the CPU -- the KV cache, its quantisation, decode attention, and the
 * Llama-style model running through it.
 *
 * What it teaches: with a cache, a generation step costs one token's matrix products plus one
 * query's attention over the cache, instead of a forward pass over the whole sequence; and that
 * attention is a pass over the cache's bytes, so it runs at memory speed when it reads every
 * K and V row once (per GQA group) and keeps all cores busy (splitting long sequences).
 *
 *   decode v1 kvcache_decode_ref: per query head, per cached position, in plain loops.
 *   decode v2 kvcache_decode_split: tasks of (sequence, kv head, part of the sequence); a task
 *      scores the group's G query rows against chunks of 256 keys through common/matmul (each K
 *      and V row read once), keeps an online softmax across chunks (chapter 03's m, l, o), and
 *      the parts are merged with their log-sum-exp (chapter 03's flash_merge).
 *      `build/bin/04_kvcache bench` measures it in GB/s against the DRAM bandwidth.
 *
 * Quantisation: fp16 rounds each value (relative error <= 2^-11); int8 stores round(x / s) with
 * one scale s = max|x| / 127 per token per kv head (absolute error <= s / 2).
 */
#include "04_kvcache/kvcache.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#include "01_mha/mha.h"
#include "03_flash/flash.h"
#include "common/attn_cli.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/tensor.h"
#include "common/timer.h"
#include "common/vmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* IEEE half precision as a storage type: C23's _Float16 (gcc, clang >= 15 on x86); clang 14
 * (the fuzzing build) has only its storage-only __fp16. Casts round to nearest even either way. */
#if defined(__clang__) && !defined(__FLT16_MAX__)
typedef __fp16 half_t;
#else
typedef _Float16 half_t;
#endif

/* ==== the cache ====================================================================================== */

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

size_t kvcache_bytes_per_token(int n_layers, int n_kv_heads, int head_dim, KvDtype dt)
{
    size_t b = 2 * (size_t)n_layers * n_kv_heads * head_dim * kv_dtype_bytes(dt);
    return dt == KV_INT8 ? b + 2 * (size_t)n_layers * n_kv_heads * sizeof(float) : b;
}

int kvcache_create(KvCache *c, int n_layers, int batch, int n_kv_heads, int max_seq, int head_dim, KvDtype dt)
{
    memset(c, 0, sizeof *c);
    if (n_layers < 1 || batch < 1 || n_kv_heads < 1 || max_seq < 1 || head_dim < 1)
        return error_set("KV cache sizes must be positive (layers %d, batch %d, kv heads %d, max_seq %d, head dim %d)",
                         n_layers, batch, n_kv_heads, max_seq, head_dim);
    size_t rows = 1, elems;
    if (size_mul(&rows, (size_t)n_layers * batch * n_kv_heads, (size_t)max_seq) != 0 ||
        size_mul(&elems, rows, (size_t)head_dim) != 0 || elems > SIZE_MAX / 8)
        return error_set("KV cache of %d layers x %d x %d x %d x %d is too large", n_layers, batch, n_kv_heads, max_seq,
                         head_dim);
    *c = (KvCache){dt, n_layers, batch, n_kv_heads, max_seq, head_dim, NULL, NULL, NULL, NULL, NULL};
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

size_t kvcache_bytes(const KvCache *c)
{
    const size_t rows = (size_t)c->n_layers * c->batch * c->n_kv_heads * c->max_seq;
    return 2 * rows * c->head_dim * kv_dtype_bytes(c->dtype) + (c->dtype == KV_INT8 ? 2 * rows * sizeof(float) : 0);
}

void kvcache_reset(KvCache *c) { memset(c->len, 0, (size_t)c->batch * sizeof(int)); }

/* index of the row (layer, b, h, pos) in (L, B, Hkv, max_seq) */
static size_t row_of(const KvCache *c, int layer, int b, int h, int pos)
{
    return (((size_t)layer * c->batch + b) * c->n_kv_heads + h) * c->max_seq + pos;
}

static void store_row(const KvCache *c, void *base, float *scales, size_t row, const float *x)
{
    const int D = c->head_dim;
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

/* n consecutive rows from `row` on, dequantised into dst (n, D) */
static void load_rows(const KvCache *c, const void *base, const float *scales, size_t row, size_t n, float *dst)
{
    const size_t D = (size_t)c->head_dim;
    if (c->dtype == KV_F32) {
        memcpy(dst, (const float *)base + row * D, n * D * sizeof(float));
    } else if (c->dtype == KV_F16) {
        const half_t *src = (const half_t *)base + row * D;
        size_t i = 0;
#ifdef __F16C__ /* eight at a time with vcvtph2ps; gcc converts half_t one by one */
        for (; i + 8 <= n * D; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
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
    const int Hkv = c->n_kv_heads, D = c->head_dim;
    for (int t = 0; t < n; t++)
        for (int h = 0; h < Hkv; h++) {
            const size_t row = row_of(c, layer, b, h, pos + t);
            store_row(c, c->k, c->k_scale, row, k + ((size_t)t * Hkv + h) * D);
            store_row(c, c->v, c->v_scale, row, v + ((size_t)t * Hkv + h) * D);
        }
}

void kvcache_gather(const KvCache *c, int layer, int b, int len, float *k_out, float *v_out)
{
    const size_t D = (size_t)c->head_dim;
    for (int h = 0; h < c->n_kv_heads; h++) {
        load_rows(c, c->k, c->k_scale, row_of(c, layer, b, h, 0), (size_t)len, k_out + (size_t)h * len * D);
        load_rows(c, c->v, c->v_scale, row_of(c, layer, b, h, 0), (size_t)len, v_out + (size_t)h * len * D);
    }
}

/* ==== decode attention =============================================================================== */

static int check_decode(const KvCache *c, int H, int n_seq, const int *seqs, const int *lens)
{
    if (H < 1 || H % c->n_kv_heads != 0)
        return error_set("H = %d query heads is not a multiple of the cache's %d kv heads", H, c->n_kv_heads);
    for (int i = 0; i < n_seq; i++) {
        const int b = seqs ? seqs[i] : i;
        if (b < 0 || b >= c->batch || lens[i] < 0 || lens[i] > c->max_seq)
            return error_set("sequence %d: cache slot %d / length %d outside the cache (batch %d, max_seq %d)", i, b,
                             lens[i], c->batch, c->max_seq);
    }
    return 0;
}

int kvcache_decode_ref(const KvCache *c, int layer, int H, float scale, int n_seq, const int *seqs, const int *lens,
                       const float *q, float *out)
{
    if (check_decode(c, H, n_seq, seqs, lens) != 0)
        return -1;
    const int D = c->head_dim, G = H / c->n_kv_heads;
    float *kr = mem_alloc((size_t)D * sizeof(float), "one K row");
    float *sc = mem_alloc((size_t)c->max_seq * sizeof(float) + 1, "scores of one head");
    if (!kr || !sc) {
        mem_free(kr), mem_free(sc);
        return -1;
    }
    for (int i = 0; i < n_seq; i++) {
        const int b = seqs ? seqs[i] : i, n = lens[i];
        for (int h = 0; h < H; h++) {
            const float *qh = q + ((size_t)i * H + h) * D;
            float *oh = out + ((size_t)i * H + h) * D;
            /* EXERCISE 04 BEGIN: where the cached keys of query head h start: the row (layer, b, kv head h / G, position 0) of the cache */
            const size_t row0 = row_of(c, layer, b, h / G, 0);
            /* EXERCISE 04 STUB:
            exercise_todo("exercise 04, the cache row of kvcache_decode_ref in 04_kvcache/kvcache.c");
            const size_t row0 = row_of(c, layer, 0 * b, h / G, 0);
               EXERCISE 04 END */
            /* scores of the one query against every cached key, and their softmax */
            float m = -INFINITY, sum = 0.0f;
            for (int j = 0; j < n; j++) {
                load_rows(c, c->k, c->k_scale, row0 + j, 1, kr);
                float dot = 0.0f;
                for (int d = 0; d < D; d++)
                    dot += qh[d] * kr[d];
                sc[j] = dot * scale;
                m = sc[j] > m ? sc[j] : m;
            }
            for (int j = 0; j < n; j++) {
                sc[j] = expf(sc[j] - m);
                sum += sc[j];
            }
            /* out = sum_j p_j v_j */
            for (int d = 0; d < D; d++)
                oh[d] = 0.0f;
            for (int j = 0; j < n; j++) {
                load_rows(c, c->v, c->v_scale, row0 + j, 1, kr);
                for (int d = 0; d < D; d++)
                    oh[d] += sc[j] / sum * kr[d];
            }
        }
    }
    mem_free(kr), mem_free(sc);
    return 0;
}

#define DECODE_CHUNK 512 /* keys per step of a task's online softmax */

typedef struct {
    float *sc;     /* (G, CHUNK) scores, then probabilities */
    float *pv;     /* (G, D) one chunk's P V */
    float *kd, *vd; /* (CHUNK, D) dequantised rows (fp16 / int8 caches) */
    float *m, *l;  /* (G) */
} DecodeScratch;

/* One task: query rows q (G, D) against positions [s0, s1) of kv head `h` of slot b. Leaves the
 * normalised partial output in o (G, D) and its log-sum-exp in lse (G); -inf for no keys. */
static void decode_task(const KvCache *c, const DecodeScratch *w, int layer, int b, int h, int G, float scale,
                        const float *q, int s0, int s1, float *o, float *lse)
{
    const size_t D = (size_t)c->head_dim, row0 = row_of(c, layer, b, h, 0);
    for (int r = 0; r < G; r++)
        w->m[r] = -INFINITY, w->l[r] = 0.0f;
    memset(o, 0, (size_t)G * D * sizeof(float));
    for (int j0 = s0; j0 < s1; j0 += DECODE_CHUNK) {
        const size_t ch = (size_t)(s1 - j0 < DECODE_CHUNK ? s1 - j0 : DECODE_CHUNK);
        const float *kr = (const float *)c->k + (row0 + (size_t)j0) * D;
        const float *vr = (const float *)c->v + (row0 + (size_t)j0) * D;
        if (c->dtype != KV_F32) { /* fp16 / int8: dequantise the chunk; the bytes read stay small */
            load_rows(c, c->k, c->k_scale, row0 + (size_t)j0, ch, w->kd);
            load_rows(c, c->v, c->v_scale, row0 + (size_t)j0, ch, w->vd);
            kr = w->kd, vr = w->vd;
        }
        matmul_nt_ld(w->sc, DECODE_CHUNK, q, D, kr, D, (size_t)G, ch, D); /* scores (G, ch) */
        for (int r = 0; r < G; r++) { /* the online softmax of chapter 03, per query row */
            float *sr = w->sc + (size_t)r * DECODE_CHUNK, mt = -INFINITY;
#pragma omp simd reduction(max : mt)
            for (size_t j = 0; j < ch; j++)
                mt = sr[j] * scale > mt ? sr[j] * scale : mt;
            const float m_new = w->m[r] > mt ? w->m[r] : mt, alpha = expf(w->m[r] - m_new);
            w->l[r] = w->l[r] * alpha + vexp_scaled_sum(sr, ch, scale, m_new);
            w->m[r] = m_new;
            float *orow = o + (size_t)r * D;
#pragma omp simd
            for (size_t d = 0; d < D; d++)
                orow[d] *= alpha;
        }
        matmul_nn_ld(w->pv, D, w->sc, DECODE_CHUNK, vr, D, (size_t)G, D, ch); /* P V (G, D) */
        for (size_t i = 0; i < (size_t)G * D; i++)
            o[i] += w->pv[i];
    }
    for (int r = 0; r < G; r++) {
        const float inv = w->l[r] > 0.0f ? 1.0f / w->l[r] : 0.0f;
        for (size_t d = 0; d < D; d++)
            o[(size_t)r * D + d] *= inv;
        lse[r] = w->l[r] > 0.0f ? w->m[r] + logf(w->l[r]) : -INFINITY;
    }
}

int kvcache_decode_split(const KvCache *c, int layer, int H, float scale, int n_seq, const int *seqs, const int *lens,
                         const float *q, float *out, int n_splits)
{
    if (check_decode(c, H, n_seq, seqs, lens) != 0)
        return -1;
    const int Hkv = c->n_kv_heads, G = H / Hkv;
    const size_t D = (size_t)c->head_dim, groups = (size_t)n_seq * Hkv;
    int max_len = 1, threads = 1;
    for (int i = 0; i < n_seq; i++)
        max_len = lens[i] > max_len ? lens[i] : max_len;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    if (n_splits <= 0) { /* enough tasks to keep every thread busy, parts of at least 512 keys */
        n_splits = (int)((4 * (size_t)threads + groups - 1) / groups);
        const int most = (max_len + 511) / 512;
        n_splits = n_splits > most ? most : n_splits;
        n_splits = n_splits < 1 ? 1 : n_splits;
    }
    const size_t tasks = groups * (size_t)n_splits;
    float *part_o = mem_alloc(tasks * G * D * sizeof(float), "partial outputs (tasks, G, D)");
    float *part_lse = mem_alloc(tasks * G * sizeof(float), "partial lse (tasks, G)");
    if (!part_o || !part_lse) {
        mem_free(part_o), mem_free(part_lse);
        return -1;
    }
    int failed = 0;
#pragma omp parallel
    {
        DecodeScratch w = {
            mem_alloc((size_t)G * DECODE_CHUNK * sizeof(float), "decode scores"),
            mem_alloc((size_t)G * D * sizeof(float), "decode P V"),
            c->dtype == KV_F32 ? NULL : mem_alloc(DECODE_CHUNK * D * sizeof(float), "dequantised K chunk"),
            c->dtype == KV_F32 ? NULL : mem_alloc(DECODE_CHUNK * D * sizeof(float), "dequantised V chunk"),
            mem_alloc((size_t)G * sizeof(float), "m"),
            mem_alloc((size_t)G * sizeof(float), "l"),
        };
        const int ok = w.sc && w.pv && w.m && w.l && (c->dtype == KV_F32 || (w.kd && w.vd));
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (size_t t = 0; t < tasks; t++) {
            const size_t g = t / (size_t)n_splits;
            const int part = (int)(t % (size_t)n_splits), i = (int)(g / (size_t)Hkv), h = (int)(g % (size_t)Hkv);
            const int n = lens[i], s0 = (int)((long)n * part / n_splits), s1 = (int)((long)n * (part + 1) / n_splits);
            if (ok)
                decode_task(c, &w, layer, seqs ? seqs[i] : i, h, G, scale, q + ((size_t)i * H + (size_t)h * G) * D, s0,
                            s1, part_o + t * G * D, part_lse + t * G);
        }
        mem_free(w.sc), mem_free(w.pv), mem_free(w.kd), mem_free(w.vd), mem_free(w.m), mem_free(w.l);
    }
    /* fold the parts of each group into the first with their log-sum-exp, then copy out */
    for (size_t g = 0; g < groups && !failed; g++) {
        float *o0 = part_o + g * n_splits * G * D, *l0 = part_lse + g * n_splits * G;
        for (int part = 1; part < n_splits; part++)
            flash_merge(o0, l0, o0 + (size_t)part * G * D, l0 + (size_t)part * G, (size_t)G, (int)D);
        const size_t i = g / (size_t)Hkv, h = g % (size_t)Hkv;
        memcpy(out + (i * H + h * G) * D, o0, (size_t)G * D * sizeof(float));
    }
    mem_free(part_o), mem_free(part_lse);
    return failed ? error_set("out of memory for the decode scratch") : 0;
}

int kvcache_decode_cpu(int kernel, const KvCache *c, int layer, int H, float scale, int n_seq, const int *seqs,
                       const int *lens, const float *q, float *out)
{
    switch (kernel) {
    case 1:
        return kvcache_decode_ref(c, layer, H, scale, n_seq, seqs, lens, q, out);
    case 0:
    case 2:
        return kvcache_decode_split(c, layer, H, scale, n_seq, seqs, lens, q, out, 0);
    default:
        return error_set("--kernel %d: chapter 04 has CPU decode kernels 1..%d", kernel, KVCACHE_CPU_KERNELS);
    }
}

const char *kvcache_cpu_kernel_name(int kernel)
{
    switch (kernel) {
    case 1:
        return "ref";
    case 0:
    case 2:
        return "split";
    default:
        return NULL;
    }
}

int kvcache_attention(const KvCache *c, int layer, int H, int T, float scale, int causal, int n_seq, const int *seqs,
                      const int *lens, const float *q, int kernel, float *out)
{
    if (T == 1)
        return kvcache_decode_cpu(kernel, c, layer, H, scale, n_seq, seqs, lens, q, out);
    if (check_decode(c, H, n_seq, seqs, lens) != 0)
        return -1;
    const size_t D = (size_t)c->head_dim;
    for (int i = 0; i < n_seq; i++) {
        const int S = lens[i];
        float *k = mem_alloc((size_t)c->n_kv_heads * S * D * sizeof(float) + 1, "gathered K (Hkv, S, D)");
        float *v = k ? mem_alloc((size_t)c->n_kv_heads * S * D * sizeof(float) + 1, "gathered V (Hkv, S, D)") : NULL;
        if (!v) {
            mem_free(k);
            return -1;
        }
        kvcache_gather(c, layer, seqs ? seqs[i] : i, S, k, v);
        GqaShape s = {1, H, c->n_kv_heads, T, S, (int)D, causal, scale};
        int rc = S > 0 ? flash_attention_fast(&s, flash_default_tiles(2), q + (size_t)i * H * T * D, k, v,
                                              out + (size_t)i * H * T * D, NULL)
                       : (memset(out + (size_t)i * H * T * D, 0, (size_t)H * T * D * sizeof(float)), 0);
        mem_free(k), mem_free(v);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* ==== the model through the cache ===================================================================== */

int kvcache_check_request(const ModelConfig *c, const int *prompt, int n_prompt, int max_new)
{
    if (n_prompt < 1)
        return error_set("the prompt is empty: give at least one token id");
    if (max_new < 0)
        return error_set("--max-new %d must not be negative", max_new);
    if ((long)n_prompt + max_new > c->seq_len)
        return error_set("prompt (%d tokens) + max-new (%d) = %ld exceeds the model's seq_len %d", n_prompt, max_new,
                         (long)n_prompt + max_new, c->seq_len);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size)
            return error_set("prompt token %d is %d: ids must be in 0..%d (vocab_size %d)", i, prompt[i],
                             c->vocab_size - 1, c->vocab_size);
    return 0;
}

/* The attention of one layer for kvcache_forward: the new rows' K/V go to positions
 * pos0 .. pos0+n-1 of cache slot b, then their n queries attend everything the slot holds. */
typedef struct {
    KvCache *c;
    int b, pos0, H, kernel;
    float *qh, *oh; /* (H, n, hs) queries and outputs, by head */
} CacheAttention;

static int cache_attention(void *ctx, int layer, int n, const float *q, const float *k, const float *v, float *att)
{
    CacheAttention *a = ctx;
    const int hs = a->c->head_dim, lens[1] = {a->pos0 + n}, seqs[1] = {a->b};
    kvcache_write(a->c, layer, a->b, a->pos0, n, k, v); /* the cache now holds positions 0 .. pos0+n-1 */
    mha_split_heads(q, a->qh, 1, n, a->H, hs);
    if (kvcache_attention(a->c, layer, a->H, n, 1.0f / sqrtf((float)hs), 1, 1, seqs, lens, a->qh, a->kernel, a->oh) !=
        0)
        return -1;
    mha_merge_heads(a->oh, att, 1, n, a->H, hs);
    return 0;
}

int kvcache_forward(const Model *m, KvCache *c, int b, const int *tokens, int n, int kernel, float *logits)
{
    const ModelConfig *mc = &m->c;
    const int H = mc->n_heads, hs = model_head_size(mc), pos0 = c->len[b];
    if (n < 1 || pos0 + n > c->max_seq || pos0 + n > mc->seq_len)
        return error_set("positions %d..%d do not fit the cache (%d) and seq_len (%d)", pos0, pos0 + n - 1, c->max_seq,
                         mc->seq_len);
    if (c->n_kv_heads != mc->n_kv_heads || c->head_dim != hs || c->n_layers != mc->n_layers)
        return error_set("the cache's shape does not match the model");
    const size_t qn = (size_t)n * H * hs;
    float *qh = mem_alloc(2 * qn * sizeof(float), "queries and outputs by head (2, H, n, hs)");
    int *pos = mem_alloc((size_t)n * sizeof(int), "positions");
    int rc = !qh || !pos ? -1 : 0;
    if (rc == 0) {
        for (int i = 0; i < n; i++)
            pos[i] = pos0 + i;
        CacheAttention a = {c, b, pos0, H, kernel, qh, qh + qn};
        const int last = n - 1;
        rc = model_forward(m, n, tokens, pos, cache_attention, &a, 1, &last, logits);
    }
    if (rc == 0)
        c->len[b] = pos0 + n;
    mem_free(qh), mem_free(pos);
    return rc;
}

int kvcache_forward_nocache(const Model *m, const int *tokens, int n, float *logits)
{
    KvCache c;
    if (kvcache_create(&c, m->c.n_layers, 1, m->c.n_kv_heads, n, model_head_size(&m->c), KV_F32) != 0)
        return -1;
    int rc = kvcache_forward(m, &c, 0, tokens, n, 2, logits); /* a throwaway cache: recompute everything */
    kvcache_free(&c);
    return rc;
}

int kvcache_greedy_divergence(const Model *m, const int *prompt, int n_prompt, const int *a, const int *b, int n,
                              double *gap)
{
    *gap = 0.0;
    int i = 0;
    while (i < n && a[i] == b[i])
        i++;
    if (i == n)
        return -1;
    const int V = m->c.vocab_size;
    if (a[i] < 0 || a[i] >= V || b[i] < 0 || b[i] >= V) { /* a stop (-1) against a token: no tie to weigh */
        *gap = INFINITY;
        return i;
    }
    int *tokens = mem_alloc((size_t)(n_prompt + i) * sizeof(int) + 1, "prompt and common prefix");
    float *logits = mem_alloc((size_t)V * sizeof(float), "logits (vocab)");
    int rc = !tokens || !logits ? -1 : 0;
    if (rc == 0) {
        memcpy(tokens, prompt, (size_t)n_prompt * sizeof(int));
        memcpy(tokens + n_prompt, a, (size_t)i * sizeof(int));
        rc = kvcache_forward_nocache(m, tokens, n_prompt + i, logits);
    }
    if (rc == 0) {
        double top = 1.0;
        for (int v = 0; v < V; v++)
            top = fmax(top, fabs((double)logits[v]));
        *gap = fabs((double)logits[a[i]] - (double)logits[b[i]]) / top;
    }
    mem_free(tokens), mem_free(logits);
    return rc == 0 ? i : -2;
}

int kvcache_generate(const Model *m, const int *prompt, int n_prompt, const GenOptions *o, int *out, double *step_s)
{
    if (kvcache_check_request(&m->c, prompt, n_prompt, o->max_new) != 0)
        return -1;
    const int total = n_prompt + o->max_new;
    int *tokens = mem_alloc((size_t)total * sizeof(int) + 1, "tokens");
    float *logits = mem_alloc((size_t)m->c.vocab_size * sizeof(float), "logits");
    KvCache c = {0};
    int rc = !tokens || !logits ? -1 : 0;
    if (rc == 0 && o->use_cache)
        rc = kvcache_create(&c, m->c.n_layers, 1, m->c.n_kv_heads, total, model_head_size(&m->c), o->dtype);
    if (rc == 0)
        memcpy(tokens, prompt, (size_t)n_prompt * sizeof(int));
    Rng rng;
    model_rng_seed(&rng, o->seed);
    for (int step = 0; step < o->max_new && rc == 0; step++) {
        const double t0 = timer_now();
        const int n = n_prompt + step; /* tokens known so far */
        if (!o->use_cache) {
            rc = kvcache_forward_nocache(m, tokens, n, logits);
        } else if (step > 0) {
            rc = kvcache_forward(m, &c, 0, tokens + n - 1, 1, o->kernel, logits);
        } else { /* prefill the prompt, whole or in chunks */
            const int chunk = o->prefill_chunk > 0 ? o->prefill_chunk : n_prompt;
            for (int p = 0; p < n_prompt && rc == 0; p += chunk)
                rc = kvcache_forward(m, &c, 0, tokens + p, p + chunk < n_prompt ? chunk : n_prompt - p, o->kernel,
                                     logits);
        }
        if (rc != 0)
            break;
        const int next = model_sample(logits, m->c.vocab_size, o->temperature, &rng);
        if (next < 0) { /* the logits overflowed (error recorded) */
            rc = -1;
            break;
        }
        out[step] = tokens[n] = next;
        if (step_s)
            step_s[step] = timer_now() - t0;
        if (o->stop_at_bos_eos && (next == 1 || next == 2)) { /* BOS or EOS: the text is over */
            for (int i = step; i < o->max_new; i++)
                out[i] = -1;
            break;
        }
    }
    if (o->use_cache)
        kvcache_free(&c);
    mem_free(tokens), mem_free(logits);
    return rc;
}
