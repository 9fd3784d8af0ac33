/*
 * test_model.c: common/'s model (model.c, model_weights.c), tested where it lives: llama2.c
 * checkpoints written byte by byte by an independent writer (testing_oracle.c) load into the
 * right tensors, and the model keeps each matrix exactly as packing the file's matrix gives it;
 * unpacking is the exact inverse of packing; every bad file is one clear error naming it (bad
 * headers, sizes that wrap past 2^64, a file too short or too long); a save gives the file back
 * and onto a full disk leaves the previous checkpoint or tokenizer whole; and the forward pieces
 * (rmsnorm, RoPE, SwiGLU, argmax) and the sampler do what llama2.c's run.c does.
 * The whole model against a float64 model is chapter 04's test (it runs through the cache).
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/matmul.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/test_common.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/tokenizer.h"

/* A small model (chapter 04's test model): GQA 2:1, hidden < dim on purpose, an odd vocabulary. */
static ModelConfig small_config(int shared)
{
    return (ModelConfig){.dim = 64, .hidden_dim = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                         .vocab_size = 97, .seq_len = 160, .shared_classifier = shared};
}

/* small_config's vocabulary and length with other sizes, valid or not (for headers to refuse). */
static ModelConfig config_of(int dim, int hidden_dim, int n_layers, int n_heads, int n_kv_heads)
{
    return (ModelConfig){.dim = dim, .hidden_dim = hidden_dim, .n_layers = n_layers, .n_heads = n_heads,
                         .n_kv_heads = n_kv_heads, .vocab_size = 97, .seq_len = 160, .shared_classifier = 0};
}

/* ==== checkpoints ================================================================================= */

START_TEST(test_loader_reads_run_c_order)
{
    char path[4200];
    for (int shared = 0; shared <= 1; shared++) {
        ModelConfig c = small_config(shared);
        testing_write_checkpoint(testing_tmp_path(path, sizeof path, "m.bin"), &c, 0);
        Model m;
        ck_assert_msg(model_load(path, &m) == 0, "%s", error_message());
        ck_assert_int_eq(m.c.dim, 64);
        ck_assert_int_eq(m.c.vocab_size, 97);
        ck_assert_int_eq(m.c.shared_classifier, shared);
        const size_t dim = 64, D = 16, kvd = 32, hid = 48;
        ModelTensors t; /* the matrices come back out of their panels */
        float *all = model_unpack_all(&m, &t);
        ck_assert_ptr_nonnull(all);
        /* block k, element i holds k + i * 1e-6 */
        ck_assert_float_eq(t.token_embedding[5], 0.0f + 5e-6f);
        ck_assert_float_eq(m.w.rms_att[dim + 3], 1.0f + (float)(dim + 3) * 1e-6f);
        ck_assert_float_eq(t.wq[7], 2.0f + 7e-6f);
        ck_assert_float_eq(t.wk[kvd * dim + 1], 3.0f + (float)(kvd * dim + 1) * 1e-6f); /* layer 1 */
        ck_assert_float_eq(t.wv[0], 4.0f);
        ck_assert_float_eq(t.wo[9], 5.0f + 9e-6f);
        ck_assert_float_eq(m.w.rms_ffn[2], 6.0f + 2e-6f);
        ck_assert_float_eq(t.w1[hid * dim], 7.0f + (float)(hid * dim) * 1e-6f);
        ck_assert_float_eq(t.w2[1], 8.0f + 1e-6f);
        ck_assert_float_eq(t.w3[0], 9.0f);
        ck_assert_float_eq(m.w.rms_final[dim - 1], 10.0f + (float)(dim - 1) * 1e-6f);
        if (shared) { /* the embedding is kept once, packed as the classifier */
            ck_assert_ptr_eq(t.wcls, t.token_embedding);
            ck_assert_ptr_null(m.w.token_embedding);
        } else {
            ck_assert_float_eq(t.wcls[3], 13.0f + 3e-6f); /* after the two RoPE tables */
            ck_assert_float_eq(m.w.token_embedding[5], 0.0f + 5e-6f);
        }
        ck_assert_uint_eq(model_checkpoint_floats(&c) - model_param_count(&c), (size_t)c.seq_len * D);
        mem_free(all);
        model_free(&m);
    }
}
END_TEST

/* The file's floats after the header (the fixture is small), read here without the loader. */
static float *read_checkpoint_floats(const char *path, size_t n)
{
    float *x = xmalloc(n * sizeof(float), "the checkpoint's floats"); /* (n) */
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 28, SEEK_SET), 0);
    ck_assert_uint_eq(fread(x, sizeof(float), n, f), n);
    fclose(f);
    return x;
}

/* What a loaded model holds is what packing the file's own matrices gives, bit for bit (the
 * forward multiplies by exactly the checkpoint), and a token's embedding row is the file's --
 * also when the classifier is shared and the embedding is kept only as its packed panels. */
START_TEST(test_loader_packs_the_files_matrices)
{
    char path[4200];
    for (int shared = 0; shared <= 1; shared++) {
        ModelConfig c = small_config(shared);
        testing_write_checkpoint(testing_tmp_path(path, sizeof path, "m.bin"), &c, 0);
        Model m;
        ck_assert_msg(model_load(path, &m) == 0, "%s", error_message());
        const size_t L = 2, dim = 64, D = 16, qd = 64, kvd = 32, hid = 48, V = 97, rope = 160 * D / 2;
        const size_t n = model_checkpoint_floats(&c);
        float *file = read_checkpoint_floats(path, n);
        /* run.c's order; 11, 12: the RoPE tables; 13: wcls when not shared */
        const size_t sizes[14] = {V * dim, L * dim, L * qd * dim, L * kvd * dim, L * kvd * dim, L * dim * qd, L * dim,
                                  L * hid * dim, L * dim * hid, L * hid * dim, dim, rope, rope, V * dim};
        size_t start[14] = {0};
        for (int k = 1; k < 14; k++)
            start[k] = start[k - 1] + sizes[k - 1];
        const struct {
            int block;
            const float *packed;
            size_t count, rows, cols, stride;
        } mats[] = {
            {2, m.p.wq, L, qd, dim, m.p.q},    {3, m.p.wk, L, kvd, dim, m.p.kv}, {4, m.p.wv, L, kvd, dim, m.p.kv},
            {5, m.p.wo, L, dim, qd, m.p.o},    {7, m.p.w1, L, hid, dim, m.p.up}, {8, m.p.w2, L, dim, hid, m.p.down},
            {9, m.p.w3, L, hid, dim, m.p.up},  {shared ? 0 : 13, m.p.wcls, 1, V, dim, 0},
        };
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
            const size_t floats = matmul_packed_floats(mats[i].rows, mats[i].cols);
            ck_assert(mats[i].count == 1 || mats[i].stride == floats);
            float *want = xmalloc(floats * sizeof(float), "a matrix, packed"); /* (floats) */
            for (size_t l = 0; l < mats[i].count; l++) {
                matmul_pack_weights(want, file + start[mats[i].block] + l * mats[i].rows * mats[i].cols, mats[i].rows,
                                    mats[i].cols);
                ck_assert_msg(memcmp(mats[i].packed + l * floats, want, floats * sizeof(float)) == 0,
                              "block %d, layer %zu: not the file's matrix, packed", mats[i].block, l);
            }
            free(want);
        }
        const int tokens[3] = {0, 29, 96}; /* 29: column 13 of panel 1; 96: the one row of the last, partial panel */
        for (int i = 0; i < 3; i++) {
            float row[64];
            model_embed(&m, tokens[i], row);
            ck_assert_int_eq(memcmp(row, file + (size_t)tokens[i] * dim, sizeof row), 0);
        }
        free(file);
        model_free(&m);
    }
}
END_TEST

/* matmul_unpack_weights undoes matmul_pack_weights exactly, row by row too, for widths that are
 * not a whole number of panels. */
START_TEST(test_unpack_inverts_pack)
{
    const size_t shapes[][2] = {{1, 3}, {16, 5}, {37, 7}, {97, 64}}; /* (N, K) */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const size_t N = shapes[s][0], K = shapes[s][1];
        float *w = xmalloc(N * K * sizeof(float), "w (N, K)");
        float *back = xmalloc(N * K * sizeof(float), "w again (N, K)");
        float *packed = xmalloc(matmul_packed_floats(N, K) * sizeof(float), "w packed");
        fill_normal(w, N * K, 7 + s);
        matmul_pack_weights(packed, w, N, K);
        memset(back, 0xff, N * K * sizeof(float)); /* NaN: an element not written shows */
        matmul_unpack_weights(back, packed, N, K);
        ck_assert_msg(memcmp(back, w, N * K * sizeof(float)) == 0, "(%zu, %zu): unpack(pack(w)) != w", N, K);
        for (size_t j = 0; j < N; j++) {
            float row[64];
            matmul_unpack_row(row, packed, K, j);
            ck_assert_msg(memcmp(row, w + j * K, K * sizeof(float)) == 0, "(%zu, %zu): row %zu", N, K, j);
        }
        free(w), free(back), free(packed);
    }
}
END_TEST

START_TEST(test_loader_rejects_bad_files)
{
    char path[4200];
    testing_tmp_path(path, sizeof path, "bad.bin");
    const struct {
        ModelConfig c;
        size_t truncate;
        const char *expect;
    } cases[] = {
        {.c = config_of(64, 48, 2, 4, 2), .truncate = 10, .expect = "truncated"},
        {.c = config_of(0, 48, 2, 4, 2), .expect = "not positive"},
        {.c = config_of(64, 48, -2, 4, 2), .expect = "not positive"},
        {.c = config_of(64, 48, 2, 5, 5), .expect = "n_heads = 5 does not divide dim = 64"},
        {.c = config_of(64, 48, 2, 4, 3), .expect = "n_kv_heads = 3 does not divide n_heads = 4"},
        {.c = config_of(64, 48, 2, 64, 64), .expect = "head size 1 is odd"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ModelConfig c = cases[i].c;
        if (model_check_config(&c) == 0) {
            testing_write_checkpoint(path, &c, cases[i].truncate);
        } else { /* a header no writer would produce: just the 7 ints and a few floats */
            const int32_t h[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, -c.vocab_size, c.seq_len};
            unsigned char file[sizeof h + 16 * sizeof(float)] = {0}; /* the header, then 16 floats of 0 */
            memcpy(file, h, sizeof h);
            write_bytes(path, file, sizeof file);
        }
        Model m;
        ck_assert_msg(model_load(path, &m) == -1, "case %zu loaded", i);
        ck_assert_msg(strstr(error_message(), cases[i].expect), "case %zu: '%s'", i, error_message());
        ck_assert_ptr_nonnull(strstr(error_message(), path));
    }
    ModelConfig c = small_config(0);
    testing_write_checkpoint(path, &c, 0);
    FILE *f = fopen(path, "ab"); /* one float too many */
    const float extra = 0;
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(&extra, 4, 1, f), 1);
    ck_assert_int_eq(fclose(f), 0);
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

/* A header whose declared size wraps past 2^64 to the file's own size (fuzz/make_corpus.c works
 * the numbers out: 28 + 4 (2^62 + 32) = 2^64 + 156) passed the size check and read 2^64 bytes
 * into a 156-byte model: refused now, in the header, by overflow-checked sizes -- and sizes too
 * large without wrapping likewise. */
START_TEST(test_loader_refuses_wrapping_sizes)
{
    char path[4200];
    testing_write_wrapping_checkpoint(testing_tmp_path(path, sizeof path, "wrap.bin"));
    Model m;
    ck_assert_int_eq(model_load(path, &m), -1);
    ck_assert_msg(strstr(error_message(), "bad header: the model's size overflows"), "%s", error_message());
    ck_assert_ptr_nonnull(strstr(error_message(), path));
    /* the same config from code: model_check_config refuses it before anything is sized */
    ModelConfig c = {.dim = 1 << 30, .hidden_dim = 1, .n_layers = 1, .n_heads = 1 << 29, .n_kv_heads = 1,
                     .vocab_size = 2147483647 - 9, .seq_len = 16, .shared_classifier = 1};
    ck_assert_int_eq(model_check_config(&c), -1);
    ck_assert_int_eq(model_init_random(&m, &c, 1), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "the model's size overflows"));
    /* every field at its largest: products far past 2^64, refused the same way */
    const int32_t big[7] = {2147483644, 2147483647, 2147483647, 2, 2, -2147483647, 2147483647};
    write_bytes(path, big, sizeof big);
    ck_assert_int_eq(model_load(path, &m), -1);
    ck_assert_msg(strstr(error_message(), "the model's size overflows"), "%s", error_message());
}
END_TEST

/* Two models hold the same weights: their checkpoints, unpacked, are equal bit for bit. */
static void assert_same_weights(const Model *a, const Model *b)
{
    ck_assert_int_eq(memcmp(&a->c, &b->c, sizeof a->c), 0);
    ModelTensors ta, tb;
    float *wa = model_unpack_all(a, &ta), *wb = model_unpack_all(b, &tb);
    ck_assert(wa && wb);
    ck_assert_int_eq(memcmp(wa, wb, model_checkpoint_floats(&a->c) * sizeof(float)), 0);
    mem_free(wa), mem_free(wb);
}

START_TEST(test_save_load_round_trip)
{
    char path[4200], src[4200];
    ModelConfig c = small_config(1);
    Model a, b;
    ck_assert_int_eq(model_init_random(&a, &c, 3), 0);
    ck_assert_int_eq(model_save(&a, testing_tmp_path(path, sizeof path, "rt.bin")), 0);
    ck_assert_msg(model_load(path, &b) == 0, "%s", error_message());
    assert_same_weights(&a, &b);
    model_free(&a), model_free(&b);
    /* a file saved again is the same file, but for the unused RoPE tables, saved as zeros */
    for (int shared = 0; shared <= 1; shared++) {
        c = small_config(shared);
        testing_write_checkpoint(testing_tmp_path(src, sizeof src, "src.bin"), &c, 0);
        ck_assert_int_eq(model_load(src, &a), 0);
        ck_assert_int_eq(model_save(&a, path), 0);
        const size_t n = model_checkpoint_floats(&c), rope = (size_t)c.seq_len * 16; /* both tables */
        const size_t rope_at = n - rope - (shared ? 0 : (size_t)c.vocab_size * c.dim);
        float *want = read_checkpoint_floats(src, n), *got = read_checkpoint_floats(path, n);
        for (size_t i = rope_at; i < rope_at + rope; i++)
            ck_assert_msg(got[i] == 0.0f, "RoPE table float %zu saved as %g", i - rope_at, got[i]);
        memset(want + rope_at, 0, rope * sizeof(float));
        ck_assert_int_eq(memcmp(got, want, n * sizeof(float)), 0);
        free(want), free(got);
        model_free(&a);
    }
}
END_TEST

static int save_model_job(const char *path, void *ctx) { return model_save(ctx, path); }

static int save_tokenizer_job(const char *path, void *ctx)
{
    (void)ctx; /* the tiny tokenizer of testing_oracle.c, re-saved through tokenizer_save */
    char src[4200];
    snprintf(src, sizeof src, "%s.src", path);
    const int V = testing_write_tiny_tokenizer(src);
    Tokenizer t;
    if (tokenizer_load(src, V, &t) != 0)
        return -1;
    unlink(src);
    const int rc = tokenizer_save(path, V, t.pieces, t.scores);
    tokenizer_free(&t);
    return rc;
}

/* A checkpoint or a tokenizer saved onto a disk that fills up: the previous file is left whole and
 * nothing else is left in the folder. */
START_TEST(test_failed_saves_keep_the_previous_files)
{
    char path[4200], before[4096], after[4096], err[512];
    ModelConfig c = small_config(1);
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 3), 0);
    const char *previous = "a previous good file\n";
    const struct {
        const char *name;
        int (*job)(const char *, void *);
    } jobs[] = {{"model.bin", save_model_job}, {"tok.bin", save_tokenizer_job}};
    for (int j = 0; j < 2; j++) {
        write_bytes(testing_tmp_path(path, sizeof path, jobs[j].name), previous, strlen(previous));
        testing_folder_names(testing_tmp, before, sizeof before);
        const int status = testing_write_limited(jobs[j].job, path, &m, 1024, err, sizeof err);
        ck_assert_msg(status == 1 && strstr(err, "write failed: File too large"), "%s: status %d: %s", jobs[j].name,
                      status, err);
        testing_folder_names(testing_tmp, after, sizeof after);
        ck_assert_str_eq(before, after);
        FILE *f = fopen(path, "rb");
        char got[64] = "";
        ck_assert_ptr_nonnull(f);
        ck_assert_uint_eq(fread(got, 1, sizeof got - 1, f), strlen(previous));
        fclose(f);
        ck_assert_str_eq(got, previous);
        ck_assert_int_eq(jobs[j].job(path, &m), 0); /* and without the limit it is replaced */
    }
    Model b;
    ck_assert_int_eq(model_load(testing_tmp_path(path, sizeof path, "model.bin"), &b), 0);
    assert_same_weights(&m, &b);
    model_free(&m), model_free(&b);
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
     * (i = 2 of D = 4) by 1 / 10000^(2/4) = 0.01 radian */
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
    /* a temperature on logits that are not uniform: softmax(logits / T) and its cdf, in double
     * here, against the same coin (0.736 for seed 1234). The fixture gives a different id at
     * T = 0.5, at T = 1 and at T = 2 (what logits * 0.5 would sample), so a sampler that ignores
     * T, or multiplies by it, picks another id. */
    const float shaped[4] = {2.0f, 1.0f, 0.0f, -1.0f};
    const float temps[3] = {0.5f, 1.0f, 2.0f};
    int expect[3];
    for (int ti = 0; ti < 3; ti++) {
        double sum = 0.0, cdf = 0.0;
        for (int i = 0; i < 4; i++)
            sum += exp((double)shaped[i] / temps[ti]);
        expect[ti] = 3;
        for (int i = 0; i < 4; i++) {
            cdf += exp((double)shaped[i] / temps[ti]) / sum;
            if ((double)coin < cdf) {
                expect[ti] = i;
                break;
            }
        }
    }
    ck_assert(expect[0] != expect[1] && expect[0] != expect[2] && expect[1] != expect[2]); /* the fixture's power */
    for (int ti = 0; ti < 3; ti++) {
        float l[4];
        memcpy(l, shaped, sizeof l);
        model_rng_seed(&rng, 1234);
        ck_assert_msg(model_sample(l, 4, temps[ti], &rng) == expect[ti], "T = %g: expected id %d", temps[ti],
                      expect[ti]);
    }
    float greedy[3] = {0.5f, 2.0f, 1.0f};
    ck_assert_int_eq(model_sample(greedy, 3, 0.0f, &rng), 1);
    /* a temperature so small that logit / T overflows: the limit, greedy -- not exp(inf - inf),
     * which picked the last id every time */
    float high[3] = {1.0f, 100.0f, 50.0f}, low[3] = {-100.0f, -50.0f, -200.0f};
    ck_assert_int_eq(model_sample(high, 3, FLT_MIN, &rng), 1);
    ck_assert_int_eq(model_sample(low, 3, FLT_MIN, &rng), 1);
    /* logits that overflowed (a checkpoint with huge weights) are an error, never a token */
    float bad[3] = {1.0f, INFINITY, 0.0f}, nan_logit[3] = {NAN, 1.0f, 0.0f};
    ck_assert_int_eq(model_sample(bad, 3, 0.0f, &rng), -1);
    ck_assert_msg(strstr(error_message(), "logit 1 of 3 is infinite"), "%s", error_message());
    ck_assert_int_eq(model_sample(nan_logit, 3, 0.8f, &rng), -1);
    ck_assert_msg(strstr(error_message(), "logit 0 of 3 is NaN"), "%s", error_message());
    /* the --temperature rule: 0, or a normal positive float */
    ck_assert_int_eq(model_check_temperature(0.0), 0);
    ck_assert_int_eq(model_check_temperature(FLT_MIN), 0);
    ck_assert_int_eq(model_check_temperature(100.0), 0);
    ck_assert_int_eq(model_check_temperature(1e-40), -1);
    ck_assert_msg(strstr(error_message(), "--temperature 1e-40 is below the smallest normal float"), "%s",
                  error_message());
    ck_assert_int_eq(model_check_temperature(-1.0), -1);
    ck_assert_int_eq(model_check_temperature(NAN), -1);
    ck_assert_int_eq(model_check_temperature(INFINITY), -1);
}
END_TEST

TestingCase common_model_case(void)
{
    return (TestingCase){.name = "model", .timeout_s = 60, .temp_dir = 1,
                         .tests = {test_loader_reads_run_c_order, test_loader_packs_the_files_matrices,
                                   test_unpack_inverts_pack, test_loader_rejects_bad_files,
                                   test_loader_refuses_wrapping_sizes, test_save_load_round_trip,
                                   test_failed_saves_keep_the_previous_files, test_forward_pieces,
                                   test_sampler_is_llama2c}};
}
