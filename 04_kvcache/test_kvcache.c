/*
 * test_kvcache.c: chapter 04's Check suite -- the model and the KV cache, against chapter 03.
 *
 * The model (common/model): checkpoints written byte by byte by an independent helper load
 * into the right tensors, bad files are one clear error each, and the forward pieces and the
 * sampler do what llama2.c's run.c does. The cache: at every step, logits through the cache
 * equal a full recomputation with chapter 03's attention; prefill N + M steps = prefill N+M;
 * chunked prefill gives the same cache and logits; the decode kernels agree with chapter 03;
 * NaN in unused cache slots changes no output bit; fp16 and int8 stay within stated bounds.
 * Then the program: generate with and without the cache, attn through the cache, bad input.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "03_flash/flash.h"
#include "04_kvcache/kvcache.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/model.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/tokenizer.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

#define ATOL 1e-5 /* design.md §5: fp32 against an fp32 reference */
#define RTOL 1e-4

/* A small model for fast tests: GQA 2:1, hidden < dim on purpose, an odd vocabulary. */
static ModelConfig small_config(int shared)
{
    ModelConfig c = {.dim = 64, .hidden_dim = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 97,
                     .seq_len = 160, .shared_classifier = shared};
    return c;
}

static char tmp[4096];
static void tmp_setup(void) { temp_dir_create(tmp, sizeof tmp); }
static void tmp_teardown(void) { temp_dir_remove(tmp); }
static const char *tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmp, name);
    return buf;
}

/* ==== checkpoints ================================================================================ */

/* Writes a llama2.c checkpoint independently of model_save: header, then block after block in
 * run.c's order, element i of block k holding k + i * 1e-6. */
static void write_checkpoint(const char *path, const ModelConfig *c, size_t truncate_by)
{
    const size_t L = c->n_layers, dim = c->dim, hs = dim / c->n_heads, hid = c->hidden_dim, V = c->vocab_size;
    const size_t qd = c->n_heads * hs, kvd = c->n_kv_heads * hs;
    const size_t blocks[14] = {V * dim, L * dim, L * qd * dim, L * kvd * dim, L * kvd * dim, L * dim * qd, L * dim,
                               L * hid * dim, L * dim * hid, L * hid * dim, dim, c->seq_len * hs / 2,
                               c->seq_len * hs / 2, V * dim};
    const int n_blocks = c->shared_classifier ? 13 : 14;
    size_t total = 0;
    for (int k = 0; k < n_blocks; k++)
        total += blocks[k];
    float *data = malloc(total * sizeof(float));
    size_t at = 0;
    for (int k = 0; k < n_blocks; k++)
        for (size_t i = 0; i < blocks[k]; i++)
            data[at++] = (float)k + (float)i * 1e-6f;
    int32_t h[7] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                    c->shared_classifier ? c->vocab_size : -c->vocab_size, c->seq_len};
    FILE *f = fopen(path, "wb");
    fwrite(h, sizeof h, 1, f);
    fwrite(data, sizeof(float), total - truncate_by, f);
    fclose(f);
    free(data);
}

START_TEST(test_loader_reads_run_c_order)
{
    char path[4200];
    for (int shared = 0; shared <= 1; shared++) {
        ModelConfig c = small_config(shared);
        write_checkpoint(tmp_path(path, sizeof path, "m.bin"), &c, 0);
        Model m;
        ck_assert_msg(model_load(path, &m) == 0, "%s", error_message());
        ck_assert_int_eq(m.c.dim, 64);
        ck_assert_int_eq(m.c.vocab_size, 97);
        ck_assert_int_eq(m.c.shared_classifier, shared);
        const size_t dim = 64, hs = 16, kvd = 32, hid = 48;
        /* block k, element i holds k + i * 1e-6 */
        ck_assert_float_eq(m.w.token_embedding[5], 0.0f + 5e-6f);
        ck_assert_float_eq(m.w.rms_att[dim + 3], 1.0f + (float)(dim + 3) * 1e-6f);
        ck_assert_float_eq(m.w.wq[7], 2.0f + 7e-6f);
        ck_assert_float_eq(m.w.wk[kvd * dim + 1], 3.0f + (float)(kvd * dim + 1) * 1e-6f); /* layer 1 */
        ck_assert_float_eq(m.w.wv[0], 4.0f);
        ck_assert_float_eq(m.w.wo[9], 5.0f + 9e-6f);
        ck_assert_float_eq(m.w.rms_ffn[2], 6.0f + 2e-6f);
        ck_assert_float_eq(m.w.w1[hid * dim], 7.0f + (float)(hid * dim) * 1e-6f);
        ck_assert_float_eq(m.w.w2[1], 8.0f + 1e-6f);
        ck_assert_float_eq(m.w.w3[0], 9.0f);
        ck_assert_float_eq(m.w.rms_final[dim - 1], 10.0f + (float)(dim - 1) * 1e-6f);
        if (shared)
            ck_assert_ptr_eq(m.w.wcls, m.w.token_embedding);
        else
            ck_assert_float_eq(m.w.wcls[3], 13.0f + 3e-6f); /* after the two RoPE tables */
        ck_assert_uint_eq(model_checkpoint_floats(&c) - model_param_count(&c), (size_t)c.seq_len * hs);
        model_free(&m);
    }
}
END_TEST

START_TEST(test_loader_rejects_bad_files)
{
    char path[4200];
    tmp_path(path, sizeof path, "bad.bin");
    const struct {
        ModelConfig c;
        size_t truncate;
        const char *expect;
    } cases[] = {
        {{64, 48, 2, 4, 2, 97, 160, 0}, 10, "truncated"},
        {{0, 48, 2, 4, 2, 97, 160, 0}, 0, "not positive"},
        {{64, 48, -2, 4, 2, 97, 160, 0}, 0, "not positive"},
        {{64, 48, 2, 5, 5, 97, 160, 0}, 0, "n_heads = 5 does not divide dim = 64"},
        {{64, 48, 2, 4, 3, 97, 160, 0}, 0, "n_kv_heads = 3 does not divide n_heads = 4"},
        {{64, 48, 2, 64, 64, 97, 160, 0}, 0, "head size 1 is odd"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ModelConfig c = cases[i].c;
        if (model_check_config(&c) == 0) {
            write_checkpoint(path, &c, cases[i].truncate);
        } else { /* a header no writer would produce: just the 7 ints and a few floats */
            int32_t h[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, -c.vocab_size, c.seq_len};
            float junk[16] = {0};
            FILE *f = fopen(path, "wb");
            fwrite(h, sizeof h, 1, f), fwrite(junk, sizeof junk, 1, f);
            fclose(f);
        }
        Model m;
        ck_assert_msg(model_load(path, &m) == -1, "case %zu loaded", i);
        ck_assert_msg(strstr(error_message(), cases[i].expect), "case %zu: '%s'", i, error_message());
        ck_assert_ptr_nonnull(strstr(error_message(), path));
    }
    ModelConfig c = small_config(0);
    write_checkpoint(path, &c, 0);
    FILE *f = fopen(path, "ab"); /* one float too many */
    float extra = 0;
    fwrite(&extra, 4, 1, f);
    fclose(f);
    Model m;
    ck_assert_int_eq(model_load(path, &m), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "too long"));
    write_bytes(path, "\x01\x02", 2);
    ck_assert_int_eq(model_load(path, &m), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "28-byte header"));
    /* vocab_size INT32_MIN: negating it overflowed (found by make fuzz; refused now) */
    const int32_t h[7] = {64, 48, 2, 4, 2, INT32_MIN, 160};
    write_bytes(path, h, sizeof h);
    ck_assert_int_eq(model_load(path, &m), -1);
    ck_assert_msg(strstr(error_message(), "vocab_size is -2147483648"), "%s", error_message());
    ck_assert_int_eq(model_load("/nonexistent/m.bin", &m), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "cannot open"));
}
END_TEST

START_TEST(test_save_load_round_trip)
{
    char path[4200];
    ModelConfig c = small_config(1);
    Model a, b;
    ck_assert_int_eq(model_init_random(&a, &c, 3), 0);
    ck_assert_int_eq(model_save(&a, tmp_path(path, sizeof path, "rt.bin")), 0);
    ck_assert_msg(model_load(path, &b) == 0, "%s", error_message());
    ck_assert_uint_eq(a.n_floats, b.n_floats);
    ck_assert_int_eq(memcmp(a.data, b.data, a.n_floats * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(&a.c, &b.c, sizeof a.c), 0);
    model_free(&a), model_free(&b);
}
END_TEST

/* ==== forward pieces and sampling ================================================================ */

START_TEST(test_forward_pieces)
{
    /* rmsnorm: x / sqrt(mean(x^2) + 1e-5) * w */
    float x[4] = {1, -2, 3, -4}, w[4] = {1, 1, 2, 0.5f}, o[4];
    model_rmsnorm(o, x, w, 4);
    const double inv = 1.0 / sqrt(30.0 / 4 + 1e-5);
    for (int i = 0; i < 4; i++)
        ck_assert_double_eq_tol(o[i], x[i] * inv * w[i], 1e-6);
    /* RoPE: position 0 changes nothing; position 1 turns pair 0 of a head by 1 radian and pair 1
     * (i = 2 of hs = 4) by 1 / 10000^(2/4) = 0.01 radian */
    float v[8] = {1, 0, 1, 0, 0.5f, 2, 3, -1}, v0[8];
    memcpy(v0, v, sizeof v);
    model_rope(v, 1, 2, 4, 0);
    ck_assert_int_eq(memcmp(v, v0, sizeof v), 0);
    model_rope(v, 1, 2, 4, 1);
    ck_assert_double_eq_tol(v[0], cos(1.0), 1e-6);
    ck_assert_double_eq_tol(v[1], sin(1.0), 1e-6);
    ck_assert_double_eq_tol(v[2], cos(0.01), 1e-6);
    ck_assert_double_eq_tol(v[3], sin(0.01), 1e-6);
    ck_assert_double_eq_tol(v[4], 0.5 * cos(1.0) - 2 * sin(1.0), 1e-6); /* the second head turns alike */
    /* SwiGLU: silu(h) * g */
    float h[2] = {0.0f, 2.0f}, g[2] = {3.0f, 0.5f};
    model_swiglu(h, g, 2);
    ck_assert_double_eq_tol(h[0], 0.0, 1e-7);
    ck_assert_double_eq_tol(h[1], 2.0 / (1.0 + exp(-2.0)) * 0.5, 1e-6);
    /* argmax: ties go to the lowest id */
    float l[5] = {1, 3, 0, 3, 2};
    ck_assert_int_eq(model_argmax(l, 5), 1);
}
END_TEST

START_TEST(test_sampler_is_llama2c)
{
    /* llama2.c: state = seed; x ^= x >> 12; x ^= x << 25; x ^= x >> 27; u32 = (x * 0x2545F4914F6CDD1D) >> 32;
     * coin = (u32 >> 8) / 2^24; the first id whose cdf exceeds the coin. Recomputed here. */
    uint64_t state = 1234;
    state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
    const float coin = (float)((uint32_t)((state * 0x2545F4914F6CDD1Dull) >> 32) >> 8) / 16777216.0f;
    float probs_logits[4] = {0.0f, 0.0f, 0.0f, 0.0f}; /* uniform at any temperature */
    Rng rng;
    model_rng_seed(&rng, 1234);
    const int id = model_sample(probs_logits, 4, 1.0f, &rng);
    ck_assert_int_eq(id, (int)(coin / 0.25f));
    float greedy[3] = {0.5f, 2.0f, 1.0f};
    ck_assert_int_eq(model_sample(greedy, 3, 0.0f, &rng), 1);
    /* the same seed, the same samples */
    ModelConfig c = small_config(0);
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 5), 0);
    int prompt[2] = {3, 4}, a[12], b[12];
    GenOptions o = {12, 0.9f, 77, 1, KV_F32, 2, 0, 0};
    ck_assert_int_eq(kvcache_generate(&m, prompt, 2, &o, a, NULL), 0);
    ck_assert_int_eq(kvcache_generate(&m, prompt, 2, &o, b, NULL), 0);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    model_free(&m);
}
END_TEST

/* ==== the cache against chapter 03 ================================================================ */

START_TEST(test_cached_logits_equal_recomputation)
{
    /* prompts of 1, 7 and 64 tokens, then single steps: at every step the logits through the cache
     * equal a full recomputation whose attention is chapter 03's */
    ModelConfig c = small_config(0);
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 7), 0);
    const int prompts[3] = {1, 7, 64}, steps = 6;
    float *lc = malloc(97 * 4), *ln = malloc(97 * 4);
    for (int pi = 0; pi < 3; pi++)
        for (int kern = 1; kern <= KVCACHE_CPU_KERNELS; kern++) {
            const int n0 = prompts[pi];
            int tok[80];
            for (int i = 0; i < n0 + steps; i++)
                tok[i] = (i * 31 + 5) % 97;
            KvCache kc;
            ck_assert_int_eq(kvcache_create(&kc, c.n_layers, 1, c.n_kv_heads, 80, 16, KV_F32), 0);
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
    ModelConfig c = small_config(0);
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 8), 0);
    int tok[40];
    for (int i = 0; i < 40; i++)
        tok[i] = (i * 13 + 2) % 97;
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
    ModelConfig c = small_config(0);
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 9), 0);
    int tok[100];
    for (int i = 0; i < 100; i++)
        tok[i] = (i * 7 + 1) % 97;
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

/* A cache of one layer filled with random rows for n_seq sequences of the given lengths. */
static void random_cache(KvCache *c, int n_seq, int Hkv, int max_seq, int D, KvDtype dt, const int *lens, uint64_t seed)
{
    ck_assert_int_eq(kvcache_create(c, 1, n_seq, Hkv, max_seq, D, dt), 0);
    float *row = malloc((size_t)2 * Hkv * D * sizeof(float));
    for (int b = 0; b < n_seq; b++)
        for (int t = 0; t < lens[b]; t++) {
            fill_normal(row, (size_t)2 * Hkv * D, seed + (uint64_t)b * 1000 + (uint64_t)t);
            kvcache_write(c, 0, b, t, 1, row, row + Hkv * D);
        }
    free(row);
}

START_TEST(test_decode_kernels_against_chapter03)
{
    const int shapes[][4] = {{8, 8, 64, 3}, {8, 2, 64, 2}, {9, 3, 80, 2}, {4, 1, 32, 4}, {16, 16, 128, 1}}; /* H Hkv D n_seq */
    for (int si = 0; si < 5; si++) {
        const int H = shapes[si][0], Hkv = shapes[si][1], D = shapes[si][2], n_seq = shapes[si][3];
        int lens[4] = {1, 257, 1000, 33};
        KvCache kc;
        random_cache(&kc, n_seq, Hkv, 1024, D, KV_F32, lens, 100 + (uint64_t)si);
        float *q = malloc((size_t)n_seq * H * D * 4), *out = malloc((size_t)n_seq * H * D * 4);
        float *ref = malloc((size_t)H * D * 4), *k = malloc((size_t)Hkv * 1024 * D * 4), *v = malloc((size_t)Hkv * 1024 * D * 4);
        fill_normal(q, (size_t)n_seq * H * D, 7);
        for (int variant = 0; variant < 5; variant++) { /* ref, then split with 1, 2, 5 parts and auto */
            const int splits[5] = {0, 1, 2, 5, 0};
            int rc = variant == 0 ? kvcache_decode_ref(&kc, 0, H, 1.0f / sqrtf((float)D), n_seq, NULL, lens, q, out)
                                  : kvcache_decode_split(&kc, 0, H, 1.0f / sqrtf((float)D), n_seq, NULL, lens, q, out,
                                                         splits[variant]);
            ck_assert_int_eq(rc, 0);
            for (int b = 0; b < n_seq; b++) { /* chapter 03 on the gathered cache: T = 1, S = len */
                kvcache_gather(&kc, 0, b, lens[b], k, v);
                GqaShape s = {1, H, Hkv, 1, lens[b], D, 1, 1.0f / sqrtf((float)D)};
                ck_assert_int_eq(flash_attention_tiled(&s, flash_default_tiles(1), q + (size_t)b * H * D, k, v, ref, NULL), 0);
                CompareResult r = compare_f32("decode vs chapter 03", out + (size_t)b * H * D, ref, (size_t)H * D, ATOL, RTOL, 3);
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
            float *q = malloc(nq * 4), *clean = malloc(nq * 4), *dirty = malloc(nq * 4);
            fill_normal(q, nq, 3);
            ck_assert_int_eq(kvcache_attention(&kc, 0, H, T, 0.125f, 1, n_seq, NULL, lens, q, kern, clean), 0);
            float *nan_row = malloc((size_t)Hkv * D * 4);
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
    float *row = malloc((size_t)2 * Hkv * D * 4), *k16 = malloc((size_t)Hkv * n * D * 4), *v16 = malloc((size_t)Hkv * n * D * 4);
    float *k8 = malloc((size_t)Hkv * n * D * 4), *v8 = malloc((size_t)Hkv * n * D * 4);
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
    /* and decode attention over them: output error against the fp32 cache, bounds stated in the docs */
    const int H = 8;
    int lens[1] = {n};
    KvCache f32;
    random_cache(&f32, 1, Hkv, n, D, KV_F32, len, 21);
    float *q = malloc((size_t)H * D * 4), *o32 = malloc((size_t)H * D * 4), *o = malloc((size_t)H * D * 4);
    fill_normal(q, (size_t)H * D, 4);
    ck_assert_int_eq(kvcache_decode_split(&f32, 0, H, 0.125f, 1, NULL, lens, q, o32, 0), 0);
    ck_assert_int_eq(kvcache_decode_split(&f16, 0, H, 0.125f, 1, NULL, lens, q, o, 0), 0);
    ck_assert_msg(max_abs_diff(o, o32, (size_t)H * D) < 2e-3, "f16: %g", max_abs_diff(o, o32, (size_t)H * D));
    ck_assert_int_eq(kvcache_decode_split(&i8, 0, H, 0.125f, 1, NULL, lens, q, o, 0), 0);
    ck_assert_msg(max_abs_diff(o, o32, (size_t)H * D) < 2e-2, "int8: %g", max_abs_diff(o, o32, (size_t)H * D));
    ck_assert_uint_eq(kvcache_bytes_per_token(8, 2, 64, KV_F32), 2 * 8 * 2 * 64 * 4);
    ck_assert_uint_eq(kvcache_bytes_per_token(8, 2, 64, KV_F16), 2 * 8 * 2 * 64 * 2);
    ck_assert_uint_eq(kvcache_bytes_per_token(8, 2, 64, KV_INT8), 2 * 8 * 2 * 64 + 2 * 8 * 2 * 4);
    free(row), free(k16), free(v16), free(k8), free(v8), free(q), free(o32), free(o);
    kvcache_free(&f16), kvcache_free(&i8), kvcache_free(&f32);
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
    int prompt[3] = {1, 500, 7}, a[24], b[24], d[24];
    GenOptions o = {24, 0.0f, 0, 1, KV_F32, 2, 0, 0};
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

/* ==== the program ================================================================================ */

static void expect_error(const char *const *args, const char *expect)
{
    char prog[4200];
    const char *argv[24] = {program_path(prog, sizeof prog, "04_kvcache")};
    for (int j = 0; args[j] && j < 22; j++)
        argv[j + 1] = args[j];
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_msg(r.status == 1, "'%s': exit status %d, stderr: %s", expect, r.status, r.err);
    ck_assert_msg(count_lines(r.err) == 1, "'%s': expected one error line, got: %s", expect, r.err);
    ck_assert_msg(strstr(r.err, expect), "expected '%s' in: %s", expect, r.err);
}

START_TEST(test_generate_command)
{
    char prog[4200], ckpt[4200];
    program_path(prog, sizeof prog, "04_kvcache");
    ProcResult with, without;
    const char *a1[] = {prog, "generate", "--prompt", "1 2 3", "--max-new", "12", "--device", "cpu", NULL};
    const char *a2[] = {prog, "generate", "--prompt", "1 2 3", "--max-new", "12", "--device", "cpu", "--no-cache", NULL};
    ck_assert_int_eq(run_program(&with, a1), 0);
    ck_assert_int_eq(run_program(&without, a2), 0);
    ck_assert_msg(with.status == 0 && without.status == 0, "%s %s", with.err, without.err);
    ck_assert_str_eq(with.out, without.out);
    ck_assert_int_eq(count_lines(with.out), 1);
    int n = 0;
    for (char *p = strtok(with.out, " \n"); p; p = strtok(NULL, " \n"))
        n++;
    ck_assert_int_eq(n, 12);
    /* a checkpoint written by the model code runs through the same command */
    ModelConfig c = small_config(1);
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 4), 0);
    ck_assert_int_eq(model_save(&m, tmp_path(ckpt, sizeof ckpt, "small.bin")), 0);
    const char *a3[] = {prog, "generate", "--checkpoint", ckpt, "--prompt", "5", "--max-new", "7", "--kv-dtype", "int8", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, a3), 0);
    ck_assert_msg(r.status == 0, "%s", r.err);
    model_free(&m);
    expect_error((const char *[]){"generate", "--prompt", "1 x 3", NULL}, "not a list of token ids");
    expect_error((const char *[]){"generate", "--prompt", "1 5000", NULL}, "ids must be in 0..1023");
    expect_error((const char *[]){"generate", "--max-new", "2048", NULL}, "exceeds the model's seq_len 2048");
    expect_error((const char *[]){"generate", "--kv-dtype", "int4", NULL}, "must be one of f32|f16|int8");
    expect_error((const char *[]){"generate", "--checkpoint", "/nonexistent.bin", NULL}, "cannot open");
    write_checkpoint(tmp_path(ckpt, sizeof ckpt, "trunc.bin"), &c, 100);
    expect_error((const char *[]){"generate", "--checkpoint", ckpt, NULL}, "truncated");
    expect_error((const char *[]){"frobnicate", NULL}, "unknown subcommand");
}
END_TEST

START_TEST(test_attn_through_the_cache_matches_float64)
{
    const int shapes[][7] = {{2, 6, 2, 1, 29, 20, 1}, {1, 8, 2, 5, 40, 64, 1}, {1, 4, 4, 17, 17, 16, 1}, {2, 9, 3, 3, 100, 7, 0}};
    char prog[4200], qp[4200], kp[4200], vp[4200], op[4200];
    program_path(prog, sizeof prog, "04_kvcache");
    tmp_path(qp, sizeof qp, "q.npy"), tmp_path(kp, sizeof kp, "k.npy");
    tmp_path(vp, sizeof vp, "v.npy"), tmp_path(op, sizeof op, "o.npy");
    for (int i = 0; i < 4; i++) {
        const int *x = shapes[i];
        const size_t nq = (size_t)x[0] * x[1] * x[3] * x[5], nk = (size_t)x[0] * x[2] * x[4] * x[5];
        float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4);
        fill_normal(q, nq, 1 + i), fill_normal(k, nk, 2 + i), fill_normal(v, nk, 3 + i);
        ck_assert_int_eq(npy_write(qp, NPY_F32, 4, (size_t[]){x[0], x[1], x[3], x[5]}, q), 0);
        ck_assert_int_eq(npy_write(kp, NPY_F32, 4, (size_t[]){x[0], x[2], x[4], x[5]}, k), 0);
        ck_assert_int_eq(npy_write(vp, NPY_F32, 4, (size_t[]){x[0], x[2], x[4], x[5]}, v), 0);
        for (int kern = 1; kern <= KVCACHE_CPU_KERNELS; kern++) {
            char kn[8];
            snprintf(kn, sizeof kn, "%d", kern);
            const char *argv[] = {prog, "attn", "--q", qp, "--k", kp, "--v", vp, "--out", op, "--device", "cpu",
                                  "--kernel", kn, x[6] ? "--causal" : NULL, NULL};
            ProcResult r;
            ck_assert_int_eq(run_program(&r, argv), 0);
            ck_assert_msg(r.status == 0, "%s", r.err);
            Tensor o;
            ck_assert_int_eq(npy_read_tensor(op, 4, &o), 0);
            double *want = malloc(nq * sizeof(double));
            attention_f64(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 1.0 / sqrt((double)x[5]), q, k, v, want);
            CompareResult cr = compare_f32_f64("attn through the cache", o.data, want, nq, ATOL, RTOL, 5);
            ck_assert_msg(cr.n_bad == 0, "shape %d kernel %d: %zu off", i, kern, cr.n_bad);
            free(want);
            tensor_free(&o);
        }
        free(q), free(k), free(v);
    }
}
END_TEST

START_TEST(test_help_and_verify)
{
    char prog[4200], line[256];
    program_path(prog, sizeof prog, "04_kvcache");
    const char *subs[] = {"--help", "generate", "attn", "verify", "bench"};
    for (int i = 0; i < 5; i++) {
        const char *argv[] = {prog, subs[i], i ? "--help" : NULL, NULL};
        ProcResult r;
        ck_assert_int_eq(run_program(&r, argv), 0);
        ck_assert_msg(r.status == 0 && strstr(r.out, "usage: 04_kvcache"), "%s --help: %s", subs[i], r.out);
    }
    const char *argv[] = {prog, "verify", "--quick", "--device", "cpu", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_msg(r.status == 0, "verify failed: %s", r.out);
    int passed = -1, failed = -1;
    ck_assert_int_eq(sscanf(last_line(r.out, line, sizeof line), "%d passed, %d failed", &passed, &failed), 2);
    ck_assert_int_gt(passed, 200);
    ck_assert_int_eq(failed, 0);
}
END_TEST

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
START_TEST(test_cuda_decode_and_generate)
{
    const int H = 8, Hkv = 2, D = 128, B = 3, max_seq = 1024;
    int lens[3] = {1, 500, 1024};
    KvCache kc;
    random_cache(&kc, B, Hkv, max_seq, D, KV_F32, lens, 31);
    const size_t nq = (size_t)B * H * D, nk = (size_t)B * Hkv * max_seq * D;
    float *q = malloc(nq * 4), *ref = malloc(nq * 4), *got = malloc(nq * 4);
    fill_normal(q, nq, 2);
    ck_assert_int_eq(kvcache_decode_split(&kc, 0, H, 1.0f / sqrtf((float)D), B, NULL, lens, q, ref, 0), 0);
    float *d_k = cuda_alloc(nk * 4), *d_v = cuda_alloc(nk * 4), *d_q = cuda_alloc(nq * 4), *d_o = cuda_alloc(nq * 4);
    int *d_lens = cuda_alloc(sizeof lens);
    cuda_upload(d_k, kc.k, nk * 4), cuda_upload(d_v, kc.v, nk * 4), cuda_upload(d_q, q, nq * 4);
    cuda_upload(d_lens, lens, sizeof lens);
    ck_assert_int_eq(kvcache_decode_cuda(1, d_k, d_v, B, H, Hkv, max_seq, D, d_q, d_lens, 1024, d_o), 0);
    cuda_download(got, d_o, nq * 4);
    ck_assert(compare_f32("cuda decode", got, ref, nq, ATOL, RTOL, 5).n_bad == 0);
    cuda_free(d_k), cuda_free(d_v), cuda_free(d_q), cuda_free(d_o), cuda_free(d_lens);
    free(q), free(ref), free(got);
    kvcache_free(&kc);
    /* the whole model on the GPU generates the CPU's greedy tokens */
    Model m;
    ModelConfig c = model_default_config();
    ck_assert_int_eq(model_init_random(&m, &c, MODEL_DEFAULT_SEED), 0);
    int prompt[5] = {1, 2, 3, 4, 5}, a[16], b[16];
    GenOptions o = {16, 0.0f, 0, 1, KV_F32, 2, 0, 0};
    ck_assert_int_eq(kvcache_generate(&m, prompt, 5, &o, a, NULL), 0);
    ck_assert_msg(kvcache_generate_cuda(&m, prompt, 5, &o, b, NULL) == 0, "%s", error_message());
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    model_free(&m);
}
END_TEST
#endif


/* ==== the tokenizer (common/tokenizer) on the tiny fixture ====================================== */

static int tiny(const char *piece)
{
    const int id = testing_tiny_id(piece);
    ck_assert_msg(id >= 0, "'%s' is not in the fixture", piece);
    return id;
}

START_TEST(test_tokenizer_known_encodings)
{
    char path[4200];
    tmp_path(path, sizeof path, "tok.bin");
    const int V = testing_write_tiny_tokenizer(path);
    Tokenizer t;
    ck_assert_msg(tokenizer_load(path, V, &t) == 0, "%s", error_message());
    /* worked by hand from the fixture's merges and scores (" t" > "he" > " the" > ... > " and"):
     * "the" = ' ' t h e -> ' t' h e -> ' t' 'he' -> ' the' */
    const struct {
        const char *text;
        int n;
        int ids[6];
    } cases[] = {
        {"the", 2, {TOKEN_BOS, tiny(" the")}},
        {"and", 2, {TOKEN_BOS, tiny(" and")}},          /* ' a' first, then 'nd', then ' and' */
        {"in", 3, {TOKEN_BOS, tiny(" "), tiny("in")}}, /* ' in' is not a token */
        {"\xc3\xa9", 4, {TOKEN_BOS, tiny(" "), 3 + 0xC3, 3 + 0xA9}}, /* 'é' is not a token: its bytes */
        {"", 1, {TOKEN_BOS}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int *ids, n;
        ck_assert_int_eq(tokenizer_encode(&t, cases[i].text, 1, 0, &ids, &n), 0);
        ck_assert_msg(n == cases[i].n && memcmp(ids, cases[i].ids, (size_t)n * sizeof(int)) == 0,
                      "'%s': %d ids, first %d", cases[i].text, n, n > 1 ? ids[1] : -1);
        free(ids);
    }
    int *ids, n;
    ck_assert_int_eq(tokenizer_encode(&t, "the", 0, 1, &ids, &n), 0); /* EOS, no BOS */
    ck_assert(n == 2 && ids[0] == tiny(" the") && ids[1] == TOKEN_EOS);
    free(ids);
    /* decoding: the space after BOS goes, <0xHH> is a byte, a lone unprintable byte is dropped */
    char one[2];
    ck_assert_str_eq(tokenizer_piece(&t, TOKEN_BOS, tiny(" the"), one), "the");
    ck_assert_str_eq(tokenizer_piece(&t, tiny("in"), tiny(" the"), one), " the");
    ck_assert_str_eq(tokenizer_piece(&t, 5, 3 + 'A', one), "A");
    ck_assert_str_eq(tokenizer_piece(&t, 5, 3 + 0x07, one), "");
    ck_assert_str_eq(tokenizer_piece(&t, 5, 3 + '\n', one), "\n");
    ck_assert_str_eq(tokenizer_piece(&t, 5, V + 7, one), "");
    tokenizer_free(&t);
}
END_TEST

START_TEST(test_tokenizer_round_trips)
{
    char path[4200];
    tmp_path(path, sizeof path, "tok.bin");
    const int V = testing_write_tiny_tokenizer(path);
    Tokenizer t;
    ck_assert_int_eq(tokenizer_load(path, V, &t), 0);
    const char *texts[] = {"Once upon a time, there was a little girl.", "the and in the\tend\n", "  two spaces",
                           "{curly} [brackets] ~tilde~ 100%", "x"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int *ids, n;
        ck_assert_int_eq(tokenizer_encode(&t, texts[i], 1, 0, &ids, &n), 0);
        ck_assert_int_le(n, (int)strlen(texts[i]) + 2); /* BOS, the prefix, at most a token per byte */
        char *back = tokenizer_decode(&t, ids[0], ids + 1, n - 1);
        ck_assert_msg(strcmp(back, texts[i]) == 0, "'%s' came back as '%s'", texts[i], back);
        free(back), free(ids);
    }
    /* merges really happen: "Once upon a time" is 4 tokens after BOS */
    int *ids, n;
    ck_assert_int_eq(tokenizer_encode(&t, "Once upon a time", 1, 0, &ids, &n), 0);
    ck_assert_msg(n == 5 && ids[1] == tiny(" Once") && ids[2] == tiny(" upon") && ids[3] == tiny(" a") &&
                      ids[4] == tiny(" time"),
                  "%d ids", n);
    free(ids);
    char *esc = text_escape("a\nb\\c\td");
    ck_assert_str_eq(esc, "a\\nb\\\\c\\td");
    text_unescape(esc);
    ck_assert_str_eq(esc, "a\nb\\c\td");
    free(esc);
    int *parsed, np;
    ck_assert_int_eq(token_ids_parse(" 1, 2\t3 ", &parsed, &np), 0);
    ck_assert(np == 3 && parsed[2] == 3);
    free(parsed);
    ck_assert_int_eq(token_ids_parse("1 two", &parsed, &np), -1);
    tokenizer_free(&t);
}
END_TEST

START_TEST(test_tokenizer_rejects_bad_files)
{
    char path[4200], bad[4200];
    tmp_path(path, sizeof path, "tok.bin");
    tmp_path(bad, sizeof bad, "bad.bin");
    const int V = testing_write_tiny_tokenizer(path);
    Tokenizer t;
    ck_assert_int_eq(tokenizer_load(path, V + 1, &t), -1); /* the checkpoint wants one more token */
    ck_assert_msg(strstr(error_message(), "disagree"), "%s", error_message());
    ck_assert_int_eq(tokenizer_load(path, V - 1, &t), -1); /* one fewer */
    ck_assert_msg(strstr(error_message(), "more than vocab_size"), "%s", error_message());
    ck_assert_int_eq(tokenizer_load("/nonexistent/tok.bin", V, &t), -1);
    ck_assert_msg(strstr(error_message(), "cannot open"), "%s", error_message());
    FILE *f = fopen(path, "rb");
    char buf[8192];
    const size_t got = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_bytes(bad, buf, got - 3); /* cut inside the last token */
    ck_assert_int_eq(tokenizer_load(bad, V, &t), -1);
    ck_assert_msg(strstr(error_message(), "truncated") || strstr(error_message(), "ends after"), "%s", error_message());
    const int32_t zero = 0;
    write_bytes(bad, &zero, sizeof zero); /* a header that is not a tokenizer's */
    ck_assert_int_eq(tokenizer_load(bad, V, &t), -1);
    ck_assert_msg(strstr(error_message(), "not a llama2.c tokenizer"), "%s", error_message());
    memcpy(buf + 4 + 4, &(int32_t){-5}, 4); /* token 0's length */
    write_bytes(bad, buf, got);
    ck_assert_int_eq(tokenizer_load(bad, V, &t), -1);
    ck_assert_msg(strstr(error_message(), "token 0 has length -5"), "%s", error_message());
}
END_TEST

/* ==== the suite ================================================================================= */

static Suite *kvcache_suite(void)
{
    Suite *s = suite_create("04_kvcache");
    TCase *tc = tcase_create("model");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_loader_reads_run_c_order);
    tcase_add_test(tc, test_loader_rejects_bad_files);
    tcase_add_test(tc, test_save_load_round_trip);
    tcase_add_test(tc, test_forward_pieces);
    tcase_add_test(tc, test_sampler_is_llama2c);
    tcase_add_test(tc, test_tokenizer_known_encodings);
    tcase_add_test(tc, test_tokenizer_round_trips);
    tcase_add_test(tc, test_tokenizer_rejects_bad_files);
    suite_add_tcase(s, tc);

    tc = tcase_create("cache against chapter 03");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_cached_logits_equal_recomputation);
    tcase_add_test(tc, test_prefill_then_steps_equals_longer_prefill);
    tcase_add_test(tc, test_chunked_prefill);
    tcase_add_test(tc, test_decode_kernels_against_chapter03);
    tcase_add_test(tc, test_nan_in_unused_slots_changes_nothing);
    tcase_add_test(tc, test_quantisation_error_bounds);
    tcase_add_test(tc, test_requests_that_cannot_run);
    tcase_add_test(tc, test_generation_with_and_without_cache);
    suite_add_tcase(s, tc);

    tc = tcase_create("program");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_generate_command);
    tcase_add_test(tc, test_attn_through_the_cache_matches_float64);
    tcase_add_test(tc, test_help_and_verify);
    suite_add_tcase(s, tc);

    char why[256];
    if (device_cuda_available(why, sizeof why)) {
#if HAVE_CUDA
        tc = tcase_create("cuda");
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, test_cuda_decode_and_generate);
        suite_add_tcase(s, tc);
#endif
    } else {
        printf("04_kvcache: CUDA tests skipped: %s\n", why);
    }
    return s;
}

int main(void)
{
    error_set_program("test_04_kvcache");
    SRunner *sr = srunner_create(kvcache_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
