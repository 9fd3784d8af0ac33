/*
 * test_kvcache.c: chapter 04's Check suite -- the model and the KV cache, against chapter 03. This
 * file: the model and the cache on the CPU, and main(); test_kvcache_program.c: the program, the
 * GPU, hostile inputs.
 *
 * The model's pieces (checkpoints, the forward pieces, the sampler, the tokenizer) are tested in
 * common/'s suite (make test-common). Here: the whole model's logits through the cache match, at
 * every step, a float64 model written independently from run.c (common/testing_oracle.c), and
 * sampling with a seed repeats itself. The cache: at every step, logits through the cache equal a
 * full recomputation with chapter 03's attention; prefill N + M steps = prefill N+M; chunked
 * prefill gives the same cache and logits; the decode kernels agree with chapter 03; NaN in unused
 * cache slots changes no output bit; fp16 and int8 stay within stated bounds; requests that
 * cannot run are refused.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "03_flash/flash.h"
#include "04_kvcache/kvcache.h"
#include "04_kvcache/test_kvcache.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/testing.h"
#include "common/testing_main.h"
#include "common/tokenizer.h"

/* ==== sampling =================================================================================== */

/* The same seed gives the same samples (common/'s suite checks the sampler itself against
 * llama2.c's; this, the generation loop around it). */
START_TEST(test_same_seed_same_samples)
{
    Model m;
    small_model(&m, 0, 5);
    int prompt[2] = {3, 4}, a[12], b[12];
    GenOptions o = {.max_new = 12, .temperature = 0.9f, .seed = 77, .use_cache = 1, .dtype = KV_F32, .kernel = 2};
    ck_assert_int_eq(kvcache_generate(&m, prompt, 2, &o, a, NULL), 0);
    ck_assert_int_eq(kvcache_generate(&m, prompt, 2, &o, b, NULL), 0);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    model_free(&m);
}
END_TEST


/* ==== the model against an independent float64 model ============================================ */

/* Two small GQA models for the float64 oracle: chapter 04's small model (GQA 2:1, a separate
 * classifier), and a narrower, deeper one (head size 8, GQA 3:1, 3 layers) whose classifier is
 * the token embedding. */
static ModelConfig oracle_config(int which)
{
    if (which == 0)
        return small_config(0);
    ModelConfig c = {.dim = 48, .hidden_dim = 80, .n_layers = 3, .n_heads = 6, .n_kv_heads = 2, .vocab_size = 61,
                     .seq_len = 96, .shared_classifier = 1};
    return c;
}

/* A random model whose norm weights are not all 1 (model_init_random's are), so that a norm
 * weight applied to the wrong thing shows. The norms are read from m->w by the forward (only the
 * matrices are packed), so changing them after model_init_random is enough. */
static void oracle_model(Model *m, const ModelConfig *c, uint64_t seed)
{
    ck_assert_int_eq(model_init_random(m, c, seed), 0);
    Rng rng;
    rng_seed(&rng, seed + 1);
    const size_t L = (size_t)c->n_layers, dim = (size_t)c->dim;
    for (size_t j = 0; j < L * dim; j++)
        m->w.rms_att[j] = 1.0f + 0.3f * rng_normal(&rng), m->w.rms_ffn[j] = 1.0f + 0.3f * rng_normal(&rng);
    for (size_t j = 0; j < dim; j++)
        m->w.rms_final[j] = 1.0f + 0.3f * rng_normal(&rng);
}

/* max |got - want| over a row of logits, relative to the row's scale max(1, max |want|) */
static double logit_error(const float *got, const double *want, int V)
{
    double err = 0.0, top = 1.0;
    for (int i = 0; i < V; i++)
        err = fmax(err, fabs((double)got[i] - want[i])), top = fmax(top, fabs(want[i]));
    return err / top;
}

/* Bounds on logit_error against the float64 model. fp32: every path computes in float32 (2^-24
 * relative per operation) through sums of at most 80 terms and 3 layers; the largest error is
 * RoPE's angle, pos * freq in float, about 80 * 2^-24 = 5e-6 radians at position 80. Measured on
 * an AMD EPYC (2 cores), the test's models (seeds 40, 41) and seven more pairs: at most 8.4e-7
 * (6.1e-7 on the test's); the bound leaves 12x for other machines' rounding (FMA contraction, NEON). fp16
 * and int8: the cache's rounding dominates; measured on the test's models 3.4e-4 (fp16) and
 * 8.8e-3 (int8), at most 4.4e-4 and 1.3e-2 over the eight pairs of seeds: the bounds are within
 * 2x of the test's own measurement and above every seed's. Make the test print its worst errors
 * with TEST_ORACLE_PRINT=1 in the environment. */
#define ORACLE_F32_BOUND 1e-5
#define ORACLE_F16_BOUND 6e-4
#define ORACLE_INT8_BOUND 1.6e-2

/* Chapter 04's logits at every step of a prompt and greedy steps -- prefill through chapter 03's
 * flash kernel, decode through each decode kernel, the cache in f32, f16 and int8, and no cache
 * -- against the float64 model, on both oracle models. A model bug (SwiGLU's w1 and w3 swapped,
 * RoPE missing on the keys, attention scaled by 1/D) moves the logits by a large fraction of
 * their scale, far past these bounds; comparing the cache with recomputation cannot see it, both
 * running the same model_forward. */
START_TEST(test_model_matches_float64_reference)
{
    const int prompts[3] = {1, 9, 70}, steps = 8;
    double worst[3] = {0, 0, 0}; /* f32, f16, int8 */
    for (int which = 0; which < 2; which++) {
        const ModelConfig c = oracle_config(which);
        const int V = c.vocab_size;
        Model m;
        oracle_model(&m, &c, 40 + (uint64_t)which);
        for (int pi = 0; pi < 3; pi++) {
            const int n0 = prompts[pi], n = n0 + steps; /* logits of positions n0-1 .. n-1 are checked */
            if (n + 1 > c.seq_len)
                continue;
            int tok[96];
            Rng rng;
            rng_seed(&rng, 90 + (uint64_t)pi);
            for (int i = 0; i < n0; i++)
                tok[i] = (int)rng_below(&rng, (uint64_t)V);
            /* the greedy continuation by chapter 04 (cache f32, split kernel): tok[n0 .. n] */
            float *lc = xmalloc((size_t)(steps + 1) * V * sizeof(float), "lc"); /* (steps+1, V) */
            KvCache kc;
            ck_assert_int_eq(kvcache_create(&kc, c.n_layers, 1, c.n_kv_heads, n, model_head_size(&c), KV_F32), 0);
            ck_assert_int_eq(kvcache_forward(&m, &kc, 0, tok, n0, 2, lc), 0);
            for (int s = 0; s <= steps; s++) {
                tok[n0 + s] = model_argmax(lc + (size_t)s * V, V);
                if (s < steps)
                    ck_assert_int_eq(kvcache_forward(&m, &kc, 0, tok + n0 + s, 1, 2, lc + (size_t)(s + 1) * V), 0);
            }
            kvcache_free(&kc);
            int gen[9];
            GenOptions o = {.max_new = steps + 1, .temperature = 0.0f, .use_cache = 1, .dtype = KV_F32, .kernel = 2};
            ck_assert_int_eq(kvcache_generate(&m, tok, n0, &o, gen, NULL), 0);
            ck_assert_int_eq(memcmp(gen, tok + n0, sizeof gen), 0);
            double *want = xmalloc((size_t)n * V * sizeof(double), "want"); /* (n, V) */
            model_forward_f64(&m, tok, n, want);
            /* every path, teacher-forced on the same tokens */
            const struct {
                KvDtype dt;
                int kernel, cached;
                double bound;
            } paths[] = {{KV_F32, 1, 1, ORACLE_F32_BOUND}, {KV_F32, 2, 1, ORACLE_F32_BOUND},
                         {KV_F32, 2, 0, ORACLE_F32_BOUND}, {KV_F16, 1, 1, ORACLE_F16_BOUND},
                         {KV_F16, 2, 1, ORACLE_F16_BOUND}, {KV_INT8, 1, 1, ORACLE_INT8_BOUND},
                         {KV_INT8, 2, 1, ORACLE_INT8_BOUND}};
            for (size_t p = 0; p < sizeof paths / sizeof paths[0]; p++) {
                ck_assert_int_eq(kvcache_create(&kc, c.n_layers, 1, c.n_kv_heads, n, model_head_size(&c), paths[p].dt),
                                 0);
                for (int s = 0; s <= steps; s++) {
                    float *l = lc + (size_t)s * V;
                    if (!paths[p].cached)
                        ck_assert_int_eq(kvcache_forward_nocache(&m, tok, n0 + s, l), 0);
                    else if (s == 0)
                        ck_assert_int_eq(kvcache_forward(&m, &kc, 0, tok, n0, paths[p].kernel, l), 0);
                    else
                        ck_assert_int_eq(kvcache_forward(&m, &kc, 0, tok + n0 + s - 1, 1, paths[p].kernel, l), 0);
                    const double err = logit_error(l, want + (size_t)(n0 - 1 + s) * V, V);
                    worst[paths[p].dt] = fmax(worst[paths[p].dt], err);
                    ck_assert_msg(err <= paths[p].bound,
                                  "model %d prompt %d %s cache %s kernel %d step %d: logits off the float64 model by "
                                  "%.3g of their scale (bound %.3g)",
                                  which, n0, kv_dtype_name(paths[p].dt), paths[p].cached ? "on" : "off",
                                  paths[p].kernel, s, err, paths[p].bound);
                }
                kvcache_free(&kc);
            }
            free(lc), free(want);
        }
        model_free(&m);
    }
    if (getenv("TEST_ORACLE_PRINT")) /* to measure the bounds again */
        printf("float64 oracle, worst logit error: f32 %.3g f16 %.3g int8 %.3g\n", worst[0], worst[1], worst[2]);
}
END_TEST

/* ==== the cache against chapter 03 ================================================================ */

START_TEST(test_cached_logits_equal_recomputation)
{
    /* prompts of 1, 7 and 64 tokens, then single steps: at every step the logits through the cache
     * equal a full recomputation whose attention is chapter 03's */
    Model m;
    small_model(&m, 0, 7);
    const int prompts[3] = {1, 7, 64}, steps = 6;
    float *lc = xmalloc(97 * 4, "lc"), *ln = xmalloc(97 * 4, "ln");
    for (int pi = 0; pi < 3; pi++)
        for (int kern = 1; kern <= KVCACHE_CPU_KERNELS; kern++) {
            const int n0 = prompts[pi];
            int tok[80];
            testing_fill_tokens(tok, n0 + steps, 31, 5, 97);
            KvCache kc;
            ck_assert_int_eq(kvcache_create(&kc, m.c.n_layers, 1, m.c.n_kv_heads, 80, 16, KV_F32), 0);
            ck_assert_int_eq(kvcache_forward(&m, &kc, 0, tok, n0, kern, lc), 0);
            for (int s = 0; s <= steps; s++) {
                if (s > 0)
                    ck_assert_int_eq(kvcache_forward(&m, &kc, 0, tok + n0 + s - 1, 1, kern, lc), 0);
                ck_assert_int_eq(kvcache_forward_nocache(&m, tok, n0 + s, ln), 0);
                CompareResult r = compare_f32("cached vs recomputed logits", lc, ln, 97, ATOL, RTOL, 3);
                ck_assert_msg(r.n_bad == 0, "prompt %d kernel %d step %d: %zu logits off", n0, kern, s, r.n_bad);
            }
            ck_assert_int_eq(kc.len[0], n0 + steps);
            kvcache_free(&kc);
        }
    free(lc), free(ln);
    model_free(&m);
}
END_TEST

START_TEST(test_prefill_then_steps_equals_longer_prefill)
{
    Model m;
    small_model(&m, 0, 8);
    int tok[40];
    testing_fill_tokens(tok, 40, 13, 2, 97);
    const int N = 30, M = 10;
    float la[97], lb[97];
    KvCache a, b;
    ck_assert_int_eq(kvcache_create(&a, 2, 1, 2, 40, 16, KV_F32), 0);
    ck_assert_int_eq(kvcache_create(&b, 2, 1, 2, 40, 16, KV_F32), 0);
    ck_assert_int_eq(kvcache_forward(&m, &a, 0, tok, N, 2, la), 0);
    for (int i = 0; i < M; i++)
        ck_assert_int_eq(kvcache_forward(&m, &a, 0, tok + N + i, 1, 2, la), 0);
    ck_assert_int_eq(kvcache_forward(&m, &b, 0, tok, N + M, 2, lb), 0);
    ck_assert(compare_f32("logits", la, lb, 97, ATOL, RTOL, 3).n_bad == 0);
    const size_t n = (size_t)2 * 2 * 40 * 16; /* the whole cache: positions 0..39 written by both */
    ck_assert(compare_f32("K cache", a.k, b.k, n, ATOL, RTOL, 3).n_bad == 0);
    ck_assert(compare_f32("V cache", a.v, b.v, n, ATOL, RTOL, 3).n_bad == 0);
    kvcache_free(&a), kvcache_free(&b);
    model_free(&m);
}
END_TEST

START_TEST(test_chunked_prefill)
{
    Model m;
    small_model(&m, 0, 9);
    int tok[100];
    testing_fill_tokens(tok, 100, 7, 1, 97);
    const int n = 100, chunks[4] = {1, 7, 16, 64};
    float whole[97], part[97];
    KvCache ref;
    ck_assert_int_eq(kvcache_create(&ref, 2, 1, 2, n, 16, KV_F32), 0);
    ck_assert_int_eq(kvcache_forward(&m, &ref, 0, tok, n, 2, whole), 0);
    for (int ci = 0; ci < 4; ci++) {
        KvCache kc;
        ck_assert_int_eq(kvcache_create(&kc, 2, 1, 2, n, 16, KV_F32), 0);
        for (int p = 0; p < n; p += chunks[ci])
            ck_assert_int_eq(kvcache_forward(&m, &kc, 0, tok + p, p + chunks[ci] < n ? chunks[ci] : n - p, 2, part), 0);
        ck_assert_msg(compare_f32("chunked logits", part, whole, 97, ATOL, RTOL, 3).n_bad == 0, "chunk %d", chunks[ci]);
        const size_t cn = (size_t)2 * 2 * n * 16;
        ck_assert_msg(compare_f32("chunked K", kc.k, ref.k, cn, ATOL, RTOL, 3).n_bad == 0, "chunk %d", chunks[ci]);
        ck_assert_msg(compare_f32("chunked V", kc.v, ref.v, cn, ATOL, RTOL, 3).n_bad == 0, "chunk %d", chunks[ci]);
        kvcache_free(&kc);
    }
    kvcache_free(&ref);
    model_free(&m);
}
END_TEST


START_TEST(test_decode_kernels_against_chapter03)
{
    const int shapes[][4] = {{8, 8, 64, 3}, {8, 2, 64, 2}, {9, 3, 80, 2}, {4, 1, 32, 4}, {16, 16, 128, 1}}; /* H Hkv D n_seq */
    for (int si = 0; si < 5; si++) {
        const int H = shapes[si][0], Hkv = shapes[si][1], D = shapes[si][2], n_seq = shapes[si][3];
        int lens[4] = {1, 257, 1000, 33};
        KvCache kc;
        random_cache(&kc, n_seq, Hkv, 1024, D, KV_F32, lens, 100 + (uint64_t)si);
        float *q = xmalloc((size_t)n_seq * H * D * 4, "q"), *out = xmalloc((size_t)n_seq * H * D * 4, "out");
        float *ref = xmalloc((size_t)H * D * 4, "ref");
        float *k = xmalloc((size_t)Hkv * 1024 * D * 4, "k");
        float *v = xmalloc((size_t)Hkv * 1024 * D * 4, "v");
        fill_normal(q, (size_t)n_seq * H * D, 7);
        for (int variant = 0; variant < 5; variant++) { /* ref, then split with 1, 2, 5 parts and auto */
            const int splits[5] = {0, 1, 2, 5, 0};
            int rc = variant == 0 ? kvcache_decode_ref(&kc, 0, H, 1.0f / sqrtf((float)D), n_seq, NULL, lens, q, out)
                                  : kvcache_decode_split(&kc, 0, H, 1.0f / sqrtf((float)D), n_seq, NULL, lens, q, out,
                                                         splits[variant]);
            ck_assert_int_eq(rc, 0);
            for (int b = 0; b < n_seq; b++) { /* chapter 03 on the gathered cache: T = 1, S = len */
                kvcache_gather(&kc, 0, b, lens[b], k, v);
                GqaShape s = {.B = 1, .H = H, .Hkv = Hkv, .T = 1, .S = lens[b], .D = D, .causal = 1,
                              .scale = 1.0f / sqrtf((float)D)};
                ck_assert_int_eq(flash_attention_tiled(&s, flash_default_tiles(1), q + (size_t)b * H * D, k, v, ref, NULL),
                                 0);
                CompareResult r = compare_f32("decode vs chapter 03", out + (size_t)b * H * D, ref, (size_t)H * D, ATOL,
                                              RTOL, 3);
                ck_assert_msg(r.n_bad == 0, "shape %d variant %d seq %d: %zu off", si, variant, b, r.n_bad);
            }
        }
        free(q), free(out), free(ref), free(k), free(v);
        kvcache_free(&kc);
    }
}
END_TEST

START_TEST(test_nan_in_unused_slots_changes_nothing)
{
    /* positions at and beyond each sequence's length hold NaN: no output bit may change */
    const int H = 8, Hkv = 2, D = 64, n_seq = 3, max_seq = 600;
    int lens[3] = {5, 300, 511};
    for (int kern = 1; kern <= KVCACHE_CPU_KERNELS; kern++)
        for (int T = 1; T <= 3; T += 2) {
            KvCache kc;
            random_cache(&kc, n_seq, Hkv, max_seq, D, KV_F32, lens, 9);
            const size_t nq = (size_t)n_seq * H * T * D;
            float *q = xmalloc(nq * 4, "q"), *clean = xmalloc(nq * 4, "clean"), *dirty = xmalloc(nq * 4, "dirty");
            fill_normal(q, nq, 3);
            ck_assert_int_eq(kvcache_attention(&kc, 0, H, T, 0.125f, 1, n_seq, NULL, lens, q, kern, clean), 0);
            float *nan_row = xmalloc((size_t)Hkv * D * 4, "nan_row");
            for (int i = 0; i < Hkv * D; i++)
                nan_row[i] = NAN;
            for (int b = 0; b < n_seq; b++)
                for (int t = lens[b]; t < max_seq; t++)
                    kvcache_write(&kc, 0, b, t, 1, nan_row, nan_row);
            ck_assert_int_eq(kvcache_attention(&kc, 0, H, T, 0.125f, 1, n_seq, NULL, lens, q, kern, dirty), 0);
            ck_assert_msg(memcmp(clean, dirty, nq * 4) == 0, "kernel %d T %d: output changed", kern, T);
            free(q), free(clean), free(dirty), free(nan_row);
            kvcache_free(&kc);
        }
}
END_TEST

/* ==== quantised caches ============================================================================ */

START_TEST(test_quantisation_error_bounds)
{
    /* per element: fp16 within 2^-11 relative (normal range), int8 within scale / 2 = max|row| / 254 */
    const int Hkv = 2, D = 64, n = 50;
    int len[1] = {n};
    KvCache f16, i8;
    random_cache(&f16, 1, Hkv, n, D, KV_F16, len, 21);
    random_cache(&i8, 1, Hkv, n, D, KV_INT8, len, 21);
    float *row = xmalloc((size_t)2 * Hkv * D * 4, "row");
    float *k16 = xmalloc((size_t)Hkv * n * D * 4, "k16");
    float *v16 = xmalloc((size_t)Hkv * n * D * 4, "v16");
    float *k8 = xmalloc((size_t)Hkv * n * D * 4, "k8"), *v8 = xmalloc((size_t)Hkv * n * D * 4, "v8");
    kvcache_gather(&f16, 0, 0, n, k16, v16);
    kvcache_gather(&i8, 0, 0, n, k8, v8);
    for (int t = 0; t < n; t++) {
        fill_normal(row, (size_t)2 * Hkv * D, 21 + (uint64_t)t); /* what random_cache wrote at position t */
        for (int h = 0; h < Hkv; h++) {
            float amax = 0;
            for (int d = 0; d < D; d++)
                amax = fmaxf(amax, fabsf(row[h * D + d]));
            for (int d = 0; d < D; d++) {
                const float x = row[h * D + d];
                ck_assert(fabsf(k16[((size_t)h * n + t) * D + d] - x) <= fabsf(x) * 0x1p-11f + 1e-7f);
                ck_assert(fabsf(k8[((size_t)h * n + t) * D + d] - x) <= amax / 254.0f * 1.0001f);
            }
        }
    }
    /* and decode attention over them: output error against the fp32 cache, bounds stated in the
     * docs. Measured on an AMD EPYC (2 cores): 3.3e-4 (fp16) and 5.6e-3 (int8) here, at most
     * 3.6e-4 and 7.6e-3 over cache seeds 21..28 and query seeds 4, 5; the bounds are within 2x. */
    const int H = 8;
    int lens[1] = {n};
    KvCache f32;
    random_cache(&f32, 1, Hkv, n, D, KV_F32, len, 21);
    float *q = xmalloc((size_t)H * D * 4, "q");
    float *o32 = xmalloc((size_t)H * D * 4, "o32");
    float *o = xmalloc((size_t)H * D * 4, "o");
    fill_normal(q, (size_t)H * D, 4);
    ck_assert_int_eq(kvcache_decode_split(&f32, 0, H, 0.125f, 1, NULL, lens, q, o32, 0), 0);
    ck_assert_int_eq(kvcache_decode_split(&f16, 0, H, 0.125f, 1, NULL, lens, q, o, 0), 0);
    ck_assert_msg(max_abs_diff(o, o32, (size_t)H * D) < 6e-4, "f16: %g", max_abs_diff(o, o32, (size_t)H * D));
    ck_assert_int_eq(kvcache_decode_split(&i8, 0, H, 0.125f, 1, NULL, lens, q, o, 0), 0);
    ck_assert_msg(max_abs_diff(o, o32, (size_t)H * D) < 1e-2, "int8: %g", max_abs_diff(o, o32, (size_t)H * D));
    ck_assert_uint_eq(kvcache_bytes_per_token(8, 2, 64, KV_F32), 2 * 8 * 2 * 64 * 4);
    ck_assert_uint_eq(kvcache_bytes_per_token(8, 2, 64, KV_F16), 2 * 8 * 2 * 64 * 2);
    ck_assert_uint_eq(kvcache_bytes_per_token(8, 2, 64, KV_INT8), 2 * 8 * 2 * 64 + 2 * 8 * 2 * 4);
    free(row), free(k16), free(v16), free(k8), free(v8), free(q), free(o32), free(o);
    kvcache_free(&f16), kvcache_free(&i8), kvcache_free(&f32);
}
END_TEST

/* The split kernel reads an fp16 or int8 cache through decode_quant.c's products, which widen the
 * values in registers; the reference dequantises element by element. Both see the same values,
 * so they agree to float rounding, on shapes that take every path of those products: D with a
 * tail past whole vectors (24, 40, 136) and past whole 16s (8, 24), groups of 1 to 5 query heads
 * (rows of q four at a time, rows of P two at a time), lengths across 512-key chunks and parts. */
START_TEST(test_quantised_decode_against_reference)
{
    const int shapes[][3] = {{4, 4, 128}, {8, 2, 64}, {6, 2, 24}, {5, 1, 136}, {3, 3, 8}, {10, 2, 40}};
    int lens[3] = {1, 37, 700};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int dt = KV_F16; dt <= KV_INT8; dt++) {
            const int H = shapes[si][0], Hkv = shapes[si][1], D = shapes[si][2];
            KvCache kc;
            random_cache(&kc, 3, Hkv, 700, D, (KvDtype)dt, lens, 40 + (uint64_t)si);
            const size_t nq = (size_t)3 * H * D;
            float *q = xmalloc(nq * 4, "q"), *ref = xmalloc(nq * 4, "ref"), *out = xmalloc(nq * 4, "out");
            fill_normal(q, nq, 8);
            const float scale = 1.0f / sqrtf((float)D);
            ck_assert_int_eq(kvcache_decode_ref(&kc, 0, H, scale, 3, NULL, lens, q, ref), 0);
            ck_assert_int_eq(kvcache_decode_split(&kc, 0, H, scale, 3, NULL, lens, q, out, 0), 0);
            CompareResult r = compare_f32("quantised split vs ref", out, ref, nq, ATOL, RTOL, 3);
            ck_assert_msg(r.n_bad == 0, "H %d Hkv %d D %d %s: %zu of %zu off", H, Hkv, D, kv_dtype_name((KvDtype)dt),
                          r.n_bad, nq);
            free(q), free(ref), free(out);
            kvcache_free(&kc);
        }
}
END_TEST

START_TEST(test_requests_that_cannot_run)
{
    ModelConfig c = small_config(0);
    int p[3] = {1, 2, 96};
    ck_assert_int_eq(kvcache_check_request(&c, p, 3, 157), 0);
    ck_assert_int_eq(kvcache_check_request(&c, p, 3, 158), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "exceeds the model's seq_len 160"));
    p[2] = 97;
    ck_assert_int_eq(kvcache_check_request(&c, p, 3, 1), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "ids must be in 0..96"));
    p[2] = -1;
    ck_assert_int_eq(kvcache_check_request(&c, p, 3, 1), -1);
    ck_assert_int_eq(kvcache_check_request(&c, p, 0, 1), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "empty"));
}
END_TEST

START_TEST(test_generation_with_and_without_cache)
{
    Model m;
    ModelConfig c = model_default_config();
    ck_assert_int_eq(model_init_random(&m, &c, MODEL_DEFAULT_SEED), 0);
    int prompt[3] = {TOKEN_BOS, 500, 7}, a[24], b[24], d[24];
    GenOptions o = {.max_new = 24, .temperature = 0.0f, .use_cache = 1, .dtype = KV_F32, .kernel = 2};
    ck_assert_int_eq(kvcache_generate(&m, prompt, 3, &o, a, NULL), 0);
    o.use_cache = 0;
    ck_assert_int_eq(kvcache_generate(&m, prompt, 3, &o, b, NULL), 0);
    o.use_cache = 1, o.kernel = 1, o.prefill_chunk = 2;
    ck_assert_int_eq(kvcache_generate(&m, prompt, 3, &o, d, NULL), 0);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    ck_assert_int_eq(memcmp(a, d, sizeof a), 0);
    model_free(&m);
}
END_TEST

/* The lesson's worked example (main.c, lesson_by_hand): keys and values (1 0), (0 1), (1 1) at
 * positions 0..2 of a 4-position cache (prefill of 2, then one decode write), query (1 0), scale 1.
 * By hand: scores (1, 0, 1), P = (e, 1, e) / (2e + 1), out = P V = (2e, 1 + e) / (2e + 1). Every
 * CPU decode kernel, with the unused position 3 full of NaN. */
START_TEST(test_hand_example_of_the_lesson)
{
    const float k[6] = {1, 0, 0, 1, 1, 1}, q[2] = {1, 0}, nan_row[2] = {NAN, NAN};
    const double e = exp(1.0), want[2] = {2 * e / (2 * e + 1), (1 + e) / (2 * e + 1)};
    KvCache c;
    ck_assert_int_eq(kvcache_create(&c, 1, 1, 1, 4, 2, KV_F32), 0);
    kvcache_write(&c, 0, 0, 3, 1, nan_row, nan_row); /* the unused slot: never read */
    kvcache_write(&c, 0, 0, 0, 2, k, k);             /* prefill: positions 0, 1 (v = k here) */
    kvcache_write(&c, 0, 0, 2, 1, k + 4, k + 4);     /* decode: position 2 */
    const int len = 3;
    for (int kernel = 1; kernel <= KVCACHE_CPU_KERNELS; kernel++) {
        float out[2];
        ck_assert_int_eq(kvcache_decode_cpu(kernel, &c, 0, 1, 1.0f, 1, NULL, &len, q, out), 0);
        for (int d = 0; d < 2; d++)
            ck_assert_msg(fabs(out[d] - want[d]) < 1e-6, "kernel %d: out[%d] = %g, by hand %g", kernel, d, out[d],
                          want[d]);
    }
    kvcache_free(&c);
}
END_TEST

/* ==== the suite ================================================================================= */

int main(void)
{
    const TestingCase cases[] = {
        {.name = "sampling", .timeout_s = 60, .tests = {test_same_seed_same_samples}},
        {.name = "model against float64", .timeout_s = 120, .tests = {test_model_matches_float64_reference}},
        {.name = "cache against chapter 03", .timeout_s = 300,
         .tests = {test_hand_example_of_the_lesson, test_cached_logits_equal_recomputation, test_prefill_then_steps_equals_longer_prefill,
                   test_chunked_prefill, test_decode_kernels_against_chapter03,
                   test_nan_in_unused_slots_changes_nothing, test_quantisation_error_bounds,
                   test_quantised_decode_against_reference,
                   test_requests_that_cannot_run, test_generation_with_and_without_cache}},
        kvcache_program_case(), kvcache_hostile_case(), kvcache_cuda_case(), /* test_kvcache_program.c */
        kvcache_sampling_lesson_case(),                                      /* test_sampling_lesson.c */
        kvcache_tp_shards_case(), kvcache_tp_ranks_case(),                   /* test_tp.c, test_tp_ranks.c */
    };
    return testing_main_cases("04_kvcache", cases, sizeof cases / sizeof cases[0]);
}
