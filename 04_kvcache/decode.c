/*
 * decode.c: chapter 04 on the CPU -- decode attention: one new query per sequence against
 * everything its cache holds (kvcache.c), and prefill-shaped attention through the cache.
 *
 * What it teaches: a decode step's attention is a pass over the cache's bytes, so it runs at
 * memory speed when it reads every K and V row once (per GQA group) and keeps all cores busy
 * (splitting long sequences).
 *
 *   decode v1 kvcache_decode_ref: per query head, per cached position, in plain loops.
 *   decode v2 kvcache_decode_split: tasks of (sequence, kv head, part of the sequence); a task
 *      scores the group's G query rows against chunks of 512 keys through common/matmul (each K
 *      and V row read once), keeps an online softmax across chunks (chapter 03's m, l, o), and
 *      the parts are merged with their log-sum-exp (chapter 03's flash_merge). An fp16 or int8
 *      cache goes through decode_quant.c's products, which widen the values in registers.
 *      `build/bin/04_kvcache bench` measures it in GB/s against the DRAM bandwidth.
 *
 * Shape key: q and out (n_seq, H, D) for decode, (n_seq, H, T, D) through kvcache_attention;
 * G = H / Hkv query heads share a kv head.
 */
#include "04_kvcache/kvcache.h"

#include <math.h>
#include <string.h>

#include "03_flash/flash.h"
#include "04_kvcache/kvcache_layout.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/tensor.h"
#include "common/vmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

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

/* ==== v1: the reference ============================================================================== */

int kvcache_decode_ref(const KvCache *c, int layer, int H, float scale, int n_seq, const int *seqs, const int *lens,
                       const float *q, float *out)
{
    if (check_decode(c, H, n_seq, seqs, lens) != 0)
        return -1;
    const int D = c->D, G = H / c->n_kv_heads;
    float *kr = mem_alloc((size_t)D * sizeof(float), "one K row (D)");
    float *sc = mem_alloc((size_t)c->max_seq * sizeof(float), "scores of one head (max_seq)");
    if (!kr || !sc) {
        mem_free(kr), mem_free(sc);
        return -1;
    }
    for (int i = 0; i < n_seq; i++) {
        const int b = seqs ? seqs[i] : i, n = lens[i];
        for (int h = 0; h < H; h++) {
            const float *qh = q + ((size_t)i * H + h) * D;
            float *oh = out + ((size_t)i * H + h) * D;
            const size_t row0 = row_of(c, layer, b, h / G, 0);
            /* scores of the one query against every cached key, and their softmax */
            float m = -INFINITY, sum = 0.0f;
            for (int j = 0; j < n; j++) {
                kvcache_load_rows(c, c->k, c->k_scale, row0 + j, 1, kr);
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
                kvcache_load_rows(c, c->v, c->v_scale, row0 + j, 1, kr);
                for (int d = 0; d < D; d++)
                    oh[d] += sc[j] / sum * kr[d];
            }
        }
    }
    mem_free(kr), mem_free(sc);
    return 0;
}

/* ==== v2: split over the sequence ==================================================================== */

#define DECODE_CHUNK 512 /* keys per step of a task's online softmax */

/* One thread's scratch for its tasks. */
typedef struct {
    float *sc;    /* (G, CHUNK) scores, then probabilities */
    float *pv;    /* (G, D) one chunk's P V */
    float *m, *l; /* (G) */
} DecodeScratch;

/* 0 when every buffer was allocated; free it either way. */
static int scratch_alloc(DecodeScratch *w, const KvCache *c, int G)
{
    const size_t D = (size_t)c->D;
    *w = (DecodeScratch){
        .sc = mem_alloc((size_t)G * DECODE_CHUNK * sizeof(float), "decode scores"),
        .pv = mem_alloc((size_t)G * D * sizeof(float), "decode P V"),
        .m = mem_alloc((size_t)G * sizeof(float), "m"),
        .l = mem_alloc((size_t)G * sizeof(float), "l"),
    };
    return w->sc && w->pv && w->m && w->l ? 0 : -1;
}

static void scratch_free(DecodeScratch *w)
{
    mem_free(w->sc), mem_free(w->pv), mem_free(w->m), mem_free(w->l);
}

/* One task: query rows q (G, D) against positions [s0, s1) of kv head `h` of slot b. Leaves the
 * normalised partial output in o (G, D) and its log-sum-exp in lse (G); -inf for no keys. */
static void decode_task(const KvCache *c, const DecodeScratch *w, int layer, int b, int h, int G, float scale,
                        const float *q, int s0, int s1, float *o, float *lse)
{
    const size_t D = (size_t)c->D, row0 = row_of(c, layer, b, h, 0);
    for (int r = 0; r < G; r++)
        w->m[r] = -INFINITY, w->l[r] = 0.0f;
    memset(o, 0, (size_t)G * D * sizeof(float));
    for (int j0 = s0; j0 < s1; j0 += DECODE_CHUNK) {
        const size_t ch = (size_t)(s1 - j0 < DECODE_CHUNK ? s1 - j0 : DECODE_CHUNK);
        const float *kr = (const float *)c->k + (row0 + (size_t)j0) * D;
        const float *vr = (const float *)c->v + (row0 + (size_t)j0) * D;
        if (c->dtype == KV_F32) /* scores (G, ch) */
            matmul_nt_ld(w->sc, DECODE_CHUNK, q, D, kr, D, (size_t)G, ch, D);
        else /* fp16 / int8: widened in registers (decode_quant.c) */
            kvcache_scores_quant(c, row0 + (size_t)j0, ch, q, G, w->sc, DECODE_CHUNK);
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
        if (c->dtype == KV_F32) /* P V (G, D) */
            matmul_nn_ld(w->pv, D, w->sc, DECODE_CHUNK, vr, D, (size_t)G, D, ch);
        else
            kvcache_pv_quant(c, row0 + (size_t)j0, ch, w->sc, DECODE_CHUNK, G, w->pv);
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

/* Enough tasks to keep every thread busy, parts of at least 512 keys. */
static int split_count(int n_seq, const int *lens, size_t groups)
{
    int max_len = 1, threads = 1;
    for (int i = 0; i < n_seq; i++)
        max_len = lens[i] > max_len ? lens[i] : max_len;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    int n_splits = (int)((4 * (size_t)threads + groups - 1) / groups);
    const int most = (max_len + 511) / 512;
    n_splits = n_splits > most ? most : n_splits;
    return n_splits < 1 ? 1 : n_splits;
}

int kvcache_decode_split(const KvCache *c, int layer, int H, float scale, int n_seq, const int *seqs, const int *lens,
                         const float *q, float *out, int n_splits)
{
    if (check_decode(c, H, n_seq, seqs, lens) != 0)
        return -1;
    const int Hkv = c->n_kv_heads, G = H / Hkv;
    const size_t D = (size_t)c->D, groups = (size_t)n_seq * Hkv;
    if (n_splits <= 0)
        n_splits = split_count(n_seq, lens, groups);
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
        DecodeScratch w;
        const int ok = scratch_alloc(&w, c, G) == 0;
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
        scratch_free(&w);
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

/* ==== the versions by number, and attention through the cache ======================================= */

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

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CPU_NAMES[KVCACHE_CPU_KERNELS + 1] = {"split", "ref", "split"};

const char *kvcache_cpu_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= KVCACHE_CPU_KERNELS ? CPU_NAMES[kernel] : NULL;
}

/* T > 1 queries of sequence i: its S cached positions gathered (Hkv, S, D), then chapter 03. */
static int prefill_attention(const KvCache *c, int layer, int b, int S, int H, int T, float scale, int causal,
                             const float *q, float *out)
{
    const size_t D = (size_t)c->D;
    if (S == 0) { /* nothing visible: zeros */
        memset(out, 0, (size_t)H * T * D * sizeof(float));
        return 0;
    }
    float *k = mem_alloc((size_t)c->n_kv_heads * S * D * sizeof(float), "gathered K (Hkv, S, D)");
    float *v = k ? mem_alloc((size_t)c->n_kv_heads * S * D * sizeof(float), "gathered V (Hkv, S, D)") : NULL;
    if (!v) {
        mem_free(k);
        return -1;
    }
    kvcache_gather(c, layer, b, S, k, v);
    const GqaShape s = {.B = 1, .H = H, .Hkv = c->n_kv_heads, .T = T, .S = S, .D = (int)D, .causal = causal,
                        .scale = scale};
    const int rc = flash_attention_fast(&s, flash_default_tiles(2), q, k, v, out, NULL);
    mem_free(k), mem_free(v);
    return rc;
}

int kvcache_attention(const KvCache *c, int layer, int H, int T, float scale, int causal, int n_seq, const int *seqs,
                      const int *lens, const float *q, int kernel, float *out)
{
    if (T == 1)
        return kvcache_decode_cpu(kernel, c, layer, H, scale, n_seq, seqs, lens, q, out);
    if (check_decode(c, H, n_seq, seqs, lens) != 0)
        return -1;
    const size_t per_seq = (size_t)H * T * c->D; /* q and out of one sequence: (H, T, D) */
    for (int i = 0; i < n_seq; i++)
        if (prefill_attention(c, layer, seqs ? seqs[i] : i, lens[i], H, T, scale, causal, q + i * per_seq,
                              out + i * per_seq) != 0)
            return -1;
    return 0;
}
