/*
 * test_paged.c: chapter 05's Check suite -- the paged cache, against chapter 04's contiguous one.
 *
 * The model through a paged cache gives chapter 04's logits (within the fp32 tolerance) and
 * tokens (exactly) for block sizes 1, 8, 16, 32, with blocks handed out in a shuffled order and
 * lengths that end on, just after and just before a block boundary; the physical placement and
 * NaN in every slot no table points at change no output bit; fork then diverge gives each branch
 * bit for bit what an unforked run gives; the allocator keeps its invariants under 10^5 random
 * operations and returns the pool to full; misuse is detected. The attention kernels agree with
 * chapter 04 and a float64 oracle on batches of sequences of different lengths. The lesson's
 * measurements (waste.c) give what small workloads give counted by hand. This file holds those
 * and main(); test_paged_program.c the program, the CUDA kernels and hostile inputs; test_frag.c
 * the fragmentation measurement (frag.c); test_prefix.c prefix caching (prefix.c).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "05_paged/test_paged.h"
#include "05_paged/waste.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/testing_main.h"
#ifdef _OPENMP
#include <omp.h>
#endif

const int BLOCK_SIZES[N_BLOCK_SIZES] = {1, 8, 16, 32};

/* A small model for fast tests: GQA 2:1, an odd vocabulary; its weights random from seed. */
static void small_model(Model *m, uint64_t seed)
{
    const ModelConfig c = {.dim = 64, .hidden_dim = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                           .vocab_size = 97, .seq_len = 200, .shared_classifier = 0};
    ck_assert_int_eq(model_init_random(m, &c, seed), 0);
}

/* A pool for model m: every slot first set to `fill`, then the free list shuffled (seed 0: in order). */
static void model_pool(PagedPool *p, const Model *m, int bs, int num_blocks, float fill, uint64_t shuffle)
{
    ck_assert_int_eq(paged_pool_create(p, m->c.n_layers, m->c.n_kv_heads, model_head_size(&m->c), bs, num_blocks), 0);
    const size_t n = (size_t)m->c.n_layers * m->c.n_kv_heads * num_blocks * bs * model_head_size(&m->c);
    for (size_t i = 0; i < n; i++)
        p->k[i] = p->v[i] = fill;
    if (shuffle)
        paged_pool_shuffle(p, shuffle);
}

/* ==== the model: paged against contiguous (chapter 04) =========================================== */

/* Prefill n0 tokens, then greedy steps to n0 + steps, through chapter 04 and through pages of bs
 * tokens (shuffled, and, to show it changes nothing, 4 extra blocks never used): logits within
 * tolerance at every step, the same greedy tokens, the same cache contents. */
static void compare_with_chapter04(const Model *m, int bs, int n0, int steps, int kernel)
{
    const int V = m->c.vocab_size, total = n0 + steps;
    int *tok = xmalloc((size_t)(total + 1) * sizeof(int), "tok");
    testing_fill_tokens(tok, n0, 31, 7, V);
    KvCache kc;
    ck_assert_int_eq(kvcache_create(&kc, m->c.n_layers, 1, m->c.n_kv_heads, total, model_head_size(&m->c), KV_F32), 0);
    PagedPool p;
    model_pool(&p, m, bs, (total + bs - 1) / bs + 4, NAN, 17 + (uint64_t)bs);
    PagedSeq s;
    paged_seq_init(&s);
    float *l4 = xmalloc((size_t)V * 4, "l4"), *l5 = xmalloc((size_t)V * 4, "l5");
    for (int step = 0; step <= steps; step++) {
        const int at = step == 0 ? 0 : n0 + step - 1, n = step == 0 ? n0 : 1;
        ck_assert_int_eq(kvcache_forward(m, &kc, 0, tok + at, n, kernel, l4), 0);
        ck_assert_msg(paged_forward(m, &p, &s, tok + at, n, kernel, l5) == 0, "%s", error_message());
        CompareResult r = compare_f32("paged logits", l5, l4, (size_t)V, ATOL, RTOL, 3);
        ck_assert_msg(r.n_bad == 0, "bs %d, prompt %d, step %d, kernel %d: logits differ", bs, n0, step, kernel);
        const int next = model_argmax(l4, V);
        ck_assert_msg(model_argmax(l5, V) == next, "bs %d, step %d: a different token", bs, step);
        tok[n0 + step] = next;
    }
    ck_assert_int_eq(s.len, total);
    ck_assert_int_eq(s.n_blocks, (total + bs - 1) / bs);
    /* the cache holds chapter 04's K and V, found through the table: layer 0's bit for bit (the
     * same embedding and projections), later layers within tolerance (their inputs went through
     * attention kernels that sum in different orders) */
    const size_t per = (size_t)m->c.n_kv_heads * total * model_head_size(&m->c);
    float *k4 = xmalloc(per * 4, "k4"), *v4 = xmalloc(per * 4, "v4"); /* (n_kv_heads, total, D) */
    float *k5 = xmalloc(per * 4, "k5"), *v5 = xmalloc(per * 4, "v5");
    for (int l = 0; l < m->c.n_layers; l++) {
        kvcache_gather(&kc, l, 0, total, k4, v4);
        paged_gather(&p, &s, l, total, k5, v5);
        if (l == 0) {
            ck_assert_int_eq(memcmp(k4, k5, per * 4), 0);
            ck_assert_int_eq(memcmp(v4, v5, per * 4), 0);
        }
        ck_assert(compare_f32("paged K", k5, k4, per, ATOL, RTOL, 3).n_bad == 0);
        ck_assert(compare_f32("paged V", v5, v4, per, ATOL, RTOL, 3).n_bad == 0);
    }
    free(k4), free(v4), free(k5), free(v5);
    PagedSeq *all[1] = {&s};
    ck_assert_msg(paged_check(&p, all, 1) == 0, "%s", error_message());
    ck_assert_int_eq(paged_seq_free(&p, &s), 0);
    ck_assert_int_eq(p.n_free, p.num_blocks);
    paged_pool_free(&p);
    kvcache_free(&kc);
    free(tok), free(l4), free(l5);
}

START_TEST(test_logits_and_tokens_equal_chapter04)
{
    Model m;
    small_model(&m, 3);
    for (int i = 0; i < 4; i++) {
        const int bs = BLOCK_SIZES[i];
        /* prompts ending on a block boundary, one past it, one before it: decode then crosses them */
        const int prompts[3] = {2 * bs, 2 * bs + 1, 3 * bs - 1 > 1 ? 3 * bs - 1 : 3};
        for (int j = 0; j < 3; j++)
            for (int kernel = 1; kernel <= PAGED_CPU_KERNELS; kernel++)
                compare_with_chapter04(&m, bs, prompts[j], bs + 2, kernel);
    }
    model_free(&m);
}
END_TEST

/* Logits of the whole sequence tok, token by token after a prefill of n0, through a pool of
 * block size bs filled with `fill` and shuffled with `shuffle`. */
static void paged_logits(const Model *m, int bs, float fill, uint64_t shuffle, const int *tok, int n0, int total,
                         float *logits)
{
    PagedPool p;
    model_pool(&p, m, bs, (total + bs - 1) / bs + 3, fill, shuffle);
    PagedSeq s;
    paged_seq_init(&s);
    const int V = m->c.vocab_size;
    ck_assert_int_eq(paged_forward(m, &p, &s, tok, n0, 2, logits), 0);
    for (int t = n0; t < total; t++)
        ck_assert_int_eq(paged_forward(m, &p, &s, tok + t, 1, 2, logits + (size_t)(t - n0 + 1) * V), 0);
    paged_seq_free(&p, &s);
    paged_pool_free(&p);
}

START_TEST(test_placement_and_nan_change_no_bit)
{
    Model m;
    small_model(&m, 5);
    const int V = m.c.vocab_size, n0 = 21, total = 60;
    int tok[60];
    testing_fill_tokens(tok, total, 13, 2, V);
    const size_t n = (size_t)(total - n0 + 1) * V;
    float *clean = xmalloc(n * 4, "clean"), *dirty = xmalloc(n * 4, "dirty");
    for (int i = 0; i < 4; i++) {
        const int bs = BLOCK_SIZES[i];
        paged_logits(&m, bs, 0.0f, 0, tok, n0, total, clean);     /* blocks in order, zeros around */
        paged_logits(&m, bs, NAN, 99 + i, tok, n0, total, dirty); /* shuffled, NaN everywhere unused */
        ck_assert_msg(memcmp(clean, dirty, n * 4) == 0, "block size %d: placement or NaN changed an output bit", bs);
    }
    free(clean), free(dirty);
    model_free(&m);
}
END_TEST

START_TEST(test_fork_then_diverge_is_exact)
{
    Model m;
    small_model(&m, 7);
    const int V = m.c.vocab_size, n0 = 19;
    for (int i = 0; i < 4; i++) {
        const int bs = BLOCK_SIZES[i];
        int prompt[19], a_tok[12], b_tok[12];
        testing_fill_tokens(prompt, n0, 7, 1, V);
        for (int t = 0; t < 12; t++)
            a_tok[t] = (t * 5 + 3) % V, b_tok[t] = (t * 11 + 60) % V; /* two different continuations */
        PagedPool p;
        model_pool(&p, &m, bs, 64, NAN, 3 + (uint64_t)i);
        PagedSeq a, b;
        paged_seq_init(&a), paged_seq_init(&b);
        float *la = xmalloc((size_t)13 * V * 4, "la"), *lb = xmalloc((size_t)13 * V * 4, "lb");
        ck_assert_int_eq(paged_forward(&m, &p, &a, prompt, n0, 2, la), 0);
        const int used_before = paged_pool_used(&p);
        ck_assert_int_eq(paged_seq_fork(&p, &a, &b), 0);
        ck_assert_int_eq(paged_pool_used(&p), used_before); /* nothing copied by the fork */
        memcpy(lb, la, (size_t)V * 4);
        for (int t = 0; t < 12; t++) { /* interleaved, as a server would run them */
            ck_assert_int_eq(paged_forward(&m, &p, &b, &b_tok[t], 1, 2, lb + (size_t)(t + 1) * V), 0);
            ck_assert_int_eq(paged_forward(&m, &p, &a, &a_tok[t], 1, 2, la + (size_t)(t + 1) * V), 0);
        }
        PagedSeq *all[2] = {&a, &b};
        ck_assert_msg(paged_check(&p, all, 2) == 0, "%s", error_message());
        /* the prompt's full blocks stay shared; a partly filled one was copied once (COW) */
        ck_assert_int_eq(p.n_cow_copies, (size_t)(n0 % bs != 0));
        for (int lbk = 0; lbk < n0 / bs; lbk++)
            ck_assert_int_eq(a.blocks[lbk], b.blocks[lbk]);
        /* each branch against a run that never forked */
        for (int br = 0; br < 2; br++) {
            int seq[31];
            memcpy(seq, prompt, sizeof prompt);
            memcpy(seq + n0, br ? b_tok : a_tok, 12 * sizeof(int));
            float *want = xmalloc((size_t)13 * V * 4, "want");
            paged_logits(&m, bs, 0.0f, 0, seq, n0, n0 + 12, want);
            ck_assert_msg(memcmp(want, br ? lb : la, (size_t)13 * V * 4) == 0, "bs %d branch %d differs", bs, br);
            free(want);
        }
        paged_seq_free(&p, &a), paged_seq_free(&p, &b);
        ck_assert_int_eq(p.n_free, p.num_blocks);
        paged_pool_free(&p);
        free(la), free(lb);
    }
    model_free(&m);
}
END_TEST

START_TEST(test_forked_samples_equal_chapter04_seeds)
{
    Model m;
    small_model(&m, 9);
    const int prompt[10] = {1, 5, 9, 13, 17, 21, 25, 29, 33, 37}, K = 3, N = 20;
    int got[60], want[20];
    for (int i = 0; i < 2; i++) {
        const int bs = i ? 16 : 4;
        const PagedGenOptions o = {.max_new = N, .temperature = 0.9f, .seed = 42, .n_samples = K, .block_size = bs,
                                   .num_blocks = 0, .kernel = 2, .shuffle = 5, .stop_at_bos_eos = 0};
        PagedGenStats st;
        ck_assert_msg(paged_generate(&m, prompt, 10, &o, got, &st) == 0, "%s", error_message());
        ck_assert_int_eq(st.peak_blocks, paged_blocks_for_request(10, N, K, bs)); /* the estimate is exact */
        for (int k = 0; k < K; k++) {
            const GenOptions o4 = {.max_new = N, .temperature = 0.9f, .seed = 42 + (uint64_t)k, .use_cache = 1,
                                   .dtype = KV_F32, .kernel = 2, .prefill_chunk = 0, .stop_at_bos_eos = 0};
            ck_assert_int_eq(kvcache_generate(&m, prompt, 10, &o4, want, NULL), 0);
            ck_assert_msg(memcmp(want, got + k * N, sizeof want) == 0, "bs %d sample %d differs from chapter 04", bs, k);
        }
        /* the samples really differ (a fork that shared writes would make them collapse) */
        ck_assert(memcmp(got, got + N, N * sizeof(int)) != 0 || memcmp(got + N, got + 2 * N, N * sizeof(int)) != 0);
    }
    /* a pool too small for the request is refused up front, naming the need */
    const PagedGenOptions o = {.max_new = N, .temperature = 0.0f, .seed = 0, .n_samples = K, .block_size = 4,
                               .num_blocks = 5, .kernel = 2, .shuffle = 0, .stop_at_bos_eos = 0};
    ck_assert_int_eq(paged_generate(&m, prompt, 10, &o, got, NULL), -1);
    ck_assert_msg(strstr(error_message(), "can never fit"), "%s", error_message());
    model_free(&m);
}
END_TEST

/* ==== the allocator ============================================================================== */

START_TEST(test_allocator_random_operations)
{
    enum { N_SEQ = 12, OPS = 100000 };
    PagedPool p;
    ck_assert_int_eq(paged_pool_create(&p, 1, 1, 2, 4, 64), 0);
    paged_pool_shuffle(&p, 1);
    PagedSeq seqs[N_SEQ], *ptrs[N_SEQ];
    for (int i = 0; i < N_SEQ; i++)
        paged_seq_init(&seqs[i]), ptrs[i] = &seqs[i];
    Rng rng;
    rng_seed(&rng, 2024);
    int exhausted = 0, forks = 0, cows_seen = 0;
    for (int op = 0; op < OPS; op++) {
        PagedSeq *s = &seqs[rng_below(&rng, N_SEQ)];
        const int kind = (int)rng_below(&rng, 10);
        if (kind < 6) { /* append 1..9 tokens */
            const int n = 1 + (int)rng_below(&rng, 9), len = s->len, nb = s->n_blocks, free0 = p.n_free;
            const int need = paged_seq_blocks_needed(&p, s, n);
            const int rc = paged_seq_append(&p, s, n);
            if (rc == PAGED_EXHAUSTED) { /* refused: nothing changed */
                exhausted++;
                ck_assert_int_gt(need, free0);
                ck_assert_int_eq(s->len, len);
                ck_assert_int_eq(s->n_blocks, nb);
                ck_assert_int_eq(p.n_free, free0);
            } else {
                ck_assert_int_eq(rc, 0);
                ck_assert_int_eq(s->len, len + n);
                ck_assert_int_eq(free0 - p.n_free, need);
            }
        } else if (kind < 7) { /* fork into an empty sequence */
            PagedSeq *d = &seqs[rng_below(&rng, N_SEQ)];
            if (d != s && d->len == 0) {
                const int free0 = p.n_free;
                ck_assert_int_eq(paged_seq_fork(&p, s, d), 0);
                ck_assert_int_eq(p.n_free, free0);
                forks++;
            }
        } else if (kind < 8) { /* truncate */
            ck_assert_int_eq(paged_seq_truncate(&p, s, s->len ? (int)rng_below(&rng, (uint32_t)s->len + 1) : 0), 0);
        } else { /* free */
            ck_assert_int_eq(paged_seq_free(&p, s), 0);
        }
        ck_assert_msg(paged_check(&p, ptrs, N_SEQ) == 0, "op %d: %s", op, error_message());
        cows_seen = (int)p.n_cow_copies;
    }
    ck_assert_int_gt(exhausted, 100); /* the pool really ran out, often */
    ck_assert_int_gt(forks, 100);
    ck_assert_int_gt(cows_seen, 100);
    for (int i = 0; i < N_SEQ; i++)
        ck_assert_int_eq(paged_seq_free(&p, &seqs[i]), 0);
    ck_assert_int_eq(p.n_free, p.num_blocks);
    ck_assert_msg(paged_check(&p, ptrs, N_SEQ) == 0, "%s", error_message());
    paged_pool_free(&p);
}
END_TEST

START_TEST(test_allocator_detects_misuse)
{
    PagedPool p, other;
    ck_assert_int_eq(paged_pool_create(&p, 1, 1, 1, 2, 3), 0);
    ck_assert_int_eq(paged_pool_create(&other, 1, 1, 1, 2, 3), 0);
    const int id = paged_block_alloc(&p);
    ck_assert_int_eq(id, 0); /* in order: block 0 first */
    ck_assert_int_eq(paged_block_release(&p, id), 0);
    ck_assert_int_eq(paged_block_release(&p, id), -1);
    ck_assert_msg(strstr(error_message(), "double free"), "%s", error_message());
    ck_assert_int_eq(paged_block_release(&p, 3), -1);
    ck_assert_msg(strstr(error_message(), "0..2"), "%s", error_message());
    ck_assert_int_eq(paged_block_release(&p, -1), -1);
    PagedSeq s, t;
    paged_seq_init(&s), paged_seq_init(&t);
    ck_assert_int_eq(paged_seq_append(&p, &s, 6), 0); /* all 3 blocks */
    ck_assert_int_eq(paged_seq_append(&p, &s, 1), PAGED_EXHAUSTED);
    ck_assert_msg(strstr(error_message(), "exhausted"), "%s", error_message());
    ck_assert_int_eq(paged_block_alloc(&p), PAGED_EXHAUSTED);
    ck_assert_int_eq(paged_seq_append(&other, &s, 1), -1); /* a table of another pool */
    ck_assert_msg(strstr(error_message(), "foreign"), "%s", error_message());
    ck_assert_int_eq(paged_seq_free(&other, &s), -1);
    ck_assert_int_eq(paged_seq_truncate(&p, &s, 7), -1);
    ck_assert_int_eq(paged_seq_fork(&p, &s, &t), 0);
    ck_assert_int_eq(paged_seq_fork(&p, &s, &t), -1); /* t is not empty */
    /* a corrupted table is caught by the invariant check */
    PagedSeq *all[2] = {&s, &t};
    ck_assert_int_eq(paged_check(&p, all, 2), 0);
    const int saved = t.blocks[1];
    t.blocks[1] = t.blocks[0];
    ck_assert_int_eq(paged_check(&p, all, 2), -1);
    t.blocks[1] = saved;
    p.ref[2]++;
    ck_assert_int_eq(paged_check(&p, all, 2), -1);
    p.ref[2]--;
    ck_assert_int_eq(paged_seq_free(&p, &s), 0);
    ck_assert_int_eq(paged_seq_free(&p, &t), 0);
    ck_assert_int_eq(p.n_free, 3);
    paged_pool_free(&p);
    paged_pool_free(&other);
    ck_assert_int_eq(paged_pool_create(&other, 1, 1, 1, 0, 3), -1); /* block size 0 */
    ck_assert_msg(strstr(error_message(), "must be positive"), "%s", error_message());
}
END_TEST

/* ==== attention: mixed batches against chapter 04 and float64 ===================================== */

START_TEST(test_attention_mixed_batch)
{
    const int H = 6, Hkv = 2, D = 40, n_seq = 4, lens[4] = {1, 17, 64, 300}, Ts[4] = {1, 3, 1, 20};
    for (int bi = 0; bi < 4; bi++) {
        const int bs = BLOCK_SIZES[bi];
        int blocks = 0;
        for (int i = 0; i < n_seq; i++)
            blocks += (lens[i] + bs - 1) / bs;
        PagedPool p;
        ck_assert_int_eq(paged_pool_create(&p, 1, Hkv, D, bs, blocks), 0);
        for (size_t i = 0; i < (size_t)Hkv * blocks * bs * D; i++)
            p.k[i] = p.v[i] = NAN;
        paged_pool_shuffle(&p, 8 + (uint64_t)bs);
        KvCache kc;
        ck_assert_int_eq(kvcache_create(&kc, 1, n_seq, Hkv, 300, D, KV_F32), 0);
        PagedSeq seqs[4], *ptrs[4];
        int q_start[5] = {0};
        float *row = xmalloc((size_t)Hkv * D * 4 * 2, "row");
        for (int i = 0; i < n_seq; i++)
            paged_seq_init(&seqs[i]), ptrs[i] = &seqs[i], q_start[i + 1] = q_start[i] + Ts[i];
        for (int t = 0; t < 300; t++)
            for (int i = 0; i < n_seq; i++)
                if (t < lens[i]) {
                    fill_normal(row, (size_t)Hkv * D * 2, 1000 + (uint64_t)t * 4 + i);
                    ck_assert_int_eq(paged_seq_append(&p, &seqs[i], 1), 0);
                    paged_write(&p, &seqs[i], 0, t, 1, row, row + Hkv * D);
                    kvcache_write(&kc, 0, i, t, 1, row, row + Hkv * D);
                }
        const size_t nq = (size_t)q_start[n_seq] * H * D;
        float *q = xmalloc(nq * 4, "q"), *out = xmalloc(nq * 4, "out");
        fill_normal(q, nq, 77);
        const float scale = 1.0f / sqrtf((float)D);
        for (int causal = 0; causal <= 1; causal++)
            for (int kern = 1; kern <= PAGED_CPU_KERNELS; kern++) {
                memset(out, 0xff, nq * 4);
                ck_assert_int_eq(paged_attention_cpu(kern, &p, 0, H, scale, causal, n_seq, ptrs, q_start, q, out), 0);
                for (int i = 0; i < n_seq; i++) { /* each sequence against chapter 04 and float64 */
                    const int T = Ts[i], S = lens[i];
                    float *qh = xmalloc((size_t)H * T * D * 4, "qh"), *want = xmalloc((size_t)H * T * D * 4, "want");
                    float *kh = xmalloc((size_t)Hkv * S * D * 4, "kh"), *vh = xmalloc((size_t)Hkv * S * D * 4, "vh");
                    double *want64 = xmalloc((size_t)H * T * D * sizeof(double), "want64");
                    for (int t = 0; t < T; t++) /* rows (T, H, D) -> (H, T, D) */
                        for (int h = 0; h < H; h++)
                            memcpy(qh + ((size_t)h * T + t) * D, q + ((size_t)(q_start[i] + t) * H + h) * D, (size_t)D * 4);
                    const int seqs4[1] = {i}, lens4[1] = {S};
                    ck_assert_int_eq(kvcache_attention(&kc, 0, H, T, scale, causal, 1, seqs4, lens4, qh, 1, want), 0);
                    kvcache_gather(&kc, 0, i, S, kh, vh);
                    attention_f64(1, H, Hkv, T, S, D, causal, scale, qh, kh, vh, want64);
                    float *got = xmalloc((size_t)H * T * D * 4, "got");
                    for (int t = 0; t < T; t++)
                        for (int h = 0; h < H; h++)
                            memcpy(got + ((size_t)h * T + t) * D, out + ((size_t)(q_start[i] + t) * H + h) * D, (size_t)D * 4);
                    CompareResult r4 = compare_f32("paged vs ch04", got, want, (size_t)H * T * D, ATOL, RTOL, 3);
                    CompareResult r64 = compare_f32_f64("paged vs f64", got, want64, (size_t)H * T * D, ATOL, RTOL, 3);
                    ck_assert_msg(r4.n_bad == 0 && r64.n_bad == 0, "bs %d kernel %d causal %d sequence %d", bs, kern,
                                  causal, i);
                    free(qh), free(want), free(kh), free(vh), free(want64), free(got);
                }
            }
        /* a batch of no sequences, and queries that see no key (T > len, causal): zeros, not NaN */
        ck_assert_int_eq(paged_attention_fast(&p, 0, H, scale, 1, 0, ptrs, q_start, q, out), 0);
        int qs2[2] = {0, 3};
        PagedSeq *first[1] = {&seqs[0]}; /* length 1, three queries: two see nothing */
        for (int kern = 1; kern <= PAGED_CPU_KERNELS; kern++) {
            memset(out, 0xff, (size_t)3 * H * D * 4);
            ck_assert_int_eq(paged_attention_cpu(kern, &p, 0, H, scale, 1, 1, first, qs2, q, out), 0);
            for (size_t j = 0; j < (size_t)2 * H * D; j++)
                ck_assert_msg(out[j] == 0.0f, "kernel %d: a row with no visible key is not zero", kern);
            for (size_t j = (size_t)2 * H * D; j < (size_t)3 * H * D; j++)
                ck_assert(isfinite(out[j]));
        }
        ck_assert_int_eq(paged_attention_fast(&p, 0, 5, scale, 1, n_seq, ptrs, q_start, q, out), -1); /* 5 % 2 */
        for (int i = 0; i < n_seq; i++)
            paged_seq_free(&p, &seqs[i]);
        paged_pool_free(&p);
        kvcache_free(&kc);
        free(row), free(q), free(out);
    }
}
END_TEST

/* Sequences longer than a partition (PAGED_PARTITION_KEYS = 2048 keys): the fast kernel splits
 * them into partitions at fixed positions and merges the partial results with their
 * log-sum-exp. Lengths 2049 (a second partition of one key), 5000 (three) and 40 (one) in one
 * batch, decode and a causal tile of 5 queries, against the reference kernel and float64. The
 * mixed-batch test above stays under 2048 keys, where no merge happens. */
START_TEST(test_attention_across_partitions)
{
    const int H = 4, Hkv = 2, D = 32, bs = 16, n_seq = 3, lens[3] = {2049, 5000, 40}, Ts[3] = {1, 5, 1};
    ck_assert_int_gt(lens[1], 2 * PAGED_PARTITION_KEYS);
    int blocks = 0, q_start[4] = {0};
    for (int i = 0; i < n_seq; i++)
        blocks += (lens[i] + bs - 1) / bs, q_start[i + 1] = q_start[i] + Ts[i];
    PagedPool p;
    ck_assert_int_eq(paged_pool_create(&p, 1, Hkv, D, bs, blocks), 0);
    paged_pool_shuffle(&p, 5);
    PagedSeq seqs[3], *ptrs[3];
    float *kv[3]; /* sequence i's rows: keys (len, Hkv*D) then values (len, Hkv*D) */
    for (int i = 0; i < n_seq; i++) {
        paged_seq_init(&seqs[i]), ptrs[i] = &seqs[i];
        kv[i] = xmalloc((size_t)2 * lens[i] * Hkv * D * sizeof(float), "kv (2, len, Hkv * D)");
        fill_normal(kv[i], (size_t)2 * lens[i] * Hkv * D, 300 + (uint64_t)i);
        ck_assert_int_eq(paged_seq_append(&p, &seqs[i], lens[i]), 0);
        paged_write(&p, &seqs[i], 0, 0, lens[i], kv[i], kv[i] + (size_t)lens[i] * Hkv * D);
    }
    const size_t nq = (size_t)q_start[n_seq] * H * D;
    float *q = xmalloc(nq * sizeof(float), "q"); /* (rows, H, D), as fast and ref */
    float *fast = xmalloc(nq * sizeof(float), "fast"), *ref = xmalloc(nq * sizeof(float), "ref");
    fill_normal(q, nq, 31);
    const float scale = 1.0f / sqrtf((float)D);
    ck_assert_int_eq(paged_attention_cpu(1, &p, 0, H, scale, 1, n_seq, ptrs, q_start, q, ref), 0);
    ck_assert_int_eq(paged_attention_cpu(2, &p, 0, H, scale, 1, n_seq, ptrs, q_start, q, fast), 0);
    for (int i = 0; i < n_seq; i++) {
        const int T = Ts[i], S = lens[i];
        float *qh = xmalloc((size_t)H * T * D * sizeof(float), "qh");                 /* (H, T, D) */
        float *kh = xmalloc((size_t)Hkv * S * D * sizeof(float), "kh"); /* (Hkv, S, D) */
        float *vh = xmalloc((size_t)Hkv * S * D * sizeof(float), "vh"); /* (Hkv, S, D) */
        double *want = xmalloc((size_t)H * T * D * sizeof(double), "want");             /* (H, T, D) */
        float *got = xmalloc((size_t)H * T * D * sizeof(float), "got");         /* (H, T, D) */
        float *got_ref = xmalloc((size_t)H * T * D * sizeof(float), "got_ref"); /* (H, T, D) */
        for (int t = 0; t < T; t++) /* rows (T, H, D) -> (H, T, D) */
            for (int h = 0; h < H; h++) {
                const size_t from = ((size_t)(q_start[i] + t) * H + h) * D, to = ((size_t)h * T + t) * D;
                memcpy(qh + to, q + from, (size_t)D * sizeof(float));
                memcpy(got + to, fast + from, (size_t)D * sizeof(float));
                memcpy(got_ref + to, ref + from, (size_t)D * sizeof(float));
            }
        for (int s = 0; s < S; s++) /* rows (S, Hkv, D) -> (Hkv, S, D) */
            for (int h = 0; h < Hkv; h++) {
                memcpy(kh + ((size_t)h * S + s) * D, kv[i] + ((size_t)s * Hkv + h) * D, (size_t)D * sizeof(float));
                memcpy(vh + ((size_t)h * S + s) * D, kv[i] + ((size_t)(S + s) * Hkv + h) * D, (size_t)D * sizeof(float));
            }
        attention_f64(1, H, Hkv, T, S, D, 1, scale, qh, kh, vh, want);
        CompareResult r1 = compare_f32("fast vs reference kernel", got, got_ref, (size_t)H * T * D, ATOL, RTOL, 3);
        CompareResult r64 = compare_f32_f64("fast vs float64", got, want, (size_t)H * T * D, ATOL, RTOL, 3);
        CompareResult rr = compare_f32_f64("reference kernel vs float64", got_ref, want, (size_t)H * T * D, ATOL, RTOL, 3);
        ck_assert_msg(r1.n_bad == 0 && r64.n_bad == 0 && rr.n_bad == 0, "sequence %d (%d keys): %zu, %zu, %zu off", i,
                      S, r1.n_bad, r64.n_bad, rr.n_bad);
        free(qh), free(kh), free(vh), free(want), free(got), free(got_ref);
    }
    for (int i = 0; i < n_seq; i++)
        paged_seq_free(&p, &seqs[i]), free(kv[i]);
    paged_pool_free(&p);
    free(q), free(fast), free(ref);
}
END_TEST

/* ==== determinism and sizes ======================================================================= */

/* The same logits, bit for bit, with one thread and with two: the fast kernel's partitions are
 * fixed by the sequence's length, and every product splits its work by columns, never inside a
 * sum. (Chapter 04's split decode is the exception: its number of parts follows the thread
 * count, so its logits can differ in the last bits between thread counts.) */
START_TEST(test_logits_do_not_depend_on_the_thread_count)
{
#ifdef _OPENMP
    Model m;
    small_model(&m, 13);
    const int V = m.c.vocab_size, n0 = 40, total = 70;
    int tok[70];
    testing_fill_tokens(tok, total, 17, 5, V);
    const size_t n = (size_t)(total - n0 + 1) * V;
    float *one = xmalloc(n * 4, "one"), *two = xmalloc(n * 4, "two"), *again = xmalloc(n * 4, "again");
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    paged_logits(&m, 8, 0.0f, 0, tok, n0, total, one);
    omp_set_num_threads(2);
    paged_logits(&m, 8, 0.0f, 0, tok, n0, total, two);
    paged_logits(&m, 8, 0.0f, 0, tok, n0, total, again);
    omp_set_num_threads(saved);
    ck_assert_msg(memcmp(one, two, n * 4) == 0, "1 and 2 threads give different logits");
    ck_assert_msg(memcmp(two, again, n * 4) == 0, "two runs give different logits");
    free(one), free(two), free(again);
    model_free(&m);
#endif
}
END_TEST

/* Offsets into a pool whose element count passes 2^31 are computed in size_t: checked on the
 * arithmetic of paged_block_offset, without allocating 200 GB. */
START_TEST(test_pool_offsets_beyond_32_bits)
{
    PagedPool p;
    memset(&p, 0, sizeof p);
    p.n_layers = 32, p.n_kv_heads = 8, p.D = 128, p.block_size = 16, p.num_blocks = 100000;
    const uint64_t want = ((uint64_t)(31 * 8 + 7) * 100000 + 99999) * 16 * 128;
    ck_assert(want > ((uint64_t)1 << 31));
    ck_assert_uint_eq(paged_block_offset(&p, 99999, 31, 7), want);
    ck_assert_uint_eq(paged_block_offset(&p, 0, 16, 0), (uint64_t)16 * 8 * 100000 * 16 * 128);
    /* and a pool that would not fit size_t is refused, not wrapped around */
    PagedPool q;
    ck_assert_int_eq(paged_pool_create(&q, 1 << 20, 1 << 10, 1 << 10, 1 << 10, 1 << 20), -1);
    ck_assert_msg(strstr(error_message(), "too large"), "%s", error_message());
}
END_TEST

/* The pool is checked whole against the memory budget before any of it is allocated: K and V
 * would each pass alone (the bug: two 16 GiB pools on a 23 GiB machine, killed while filling the
 * second). Here with a budget of 1 MiB, so nothing large is ever asked for. */
START_TEST(test_pool_checked_whole_against_the_budget)
{
    const size_t held = mem_current_bytes();
    mem_set_budget(held + (1u << 20));
    PagedPool p;
    /* K and V of 64 blocks x 16 tokens x 4 heads x 64 floats: 1 MiB each, 2 MiB together */
    ck_assert_int_eq(paged_pool_create(&p, 1, 4, 64, 16, 64), -1);
    ck_assert_msg(strstr(error_message(), "the block pool (K and V of 64 blocks of 16 tokens, 1 layers x 4 kv heads x "
                                          "head dim 64) needs 2.00 MiB"),
                  "%s", error_message());
    ck_assert_uint_eq(mem_current_bytes(), held); /* not even K was allocated */
    ck_assert_int_eq(paged_pool_create(&p, 1, 4, 64, 16, 16), 0); /* a quarter of it fits */
    paged_pool_free(&p);
    mem_set_budget(0);
}
END_TEST

/* ==== the lesson's measurements (waste.c), counted by hand ======================================== */

/* Three requests (prompt, output): (3, 2), (1, 1), (5, 3); max_seq 8; a budget of 16 tokens. After
 * its prompt, each decode step adds a token, so the tokens held at the six steps are the same under
 * every scheme: request 0 holds 4 then 5, request 1 holds 2, request 2 holds 6, 7, 8: 32 in all.
 *   reserve max_seq: 6 steps x 8 slots = 48, used 32/48; fit 8 + 8 = 16, a third would need 24: 2
 *   reserve own final length (5, 2, 8): 2 x 5 + 1 x 2 + 3 x 8 = 36, used 32/36; fit 5 + 2 + 8 = 15: 3
 *   paged, bs 4: blocks at each step 1, 2 | 1 | 2, 2, 2 = 10 x 4 = 40, used 32/40; fit in 16 / 4 = 4
 *                blocks: 2 + 1, and the third's 2 more do not fit: 2
 *   paged, bs 1: 32/32; fit 5 + 2 + 8 = 15 of 16 blocks: 3
 *   paged, bs 8: one block at every step, 6 x 8 = 48, used 32/48; fit in 2 blocks: 1 + 1, then none: 2 */
START_TEST(test_waste_of_a_workload_counted_by_hand)
{
    const WorkloadItem reqs[3] = {{.prompt_len = 3, .output_len = 2}, {.prompt_len = 1, .output_len = 1},
                                  {.prompt_len = 5, .output_len = 3}};
    const struct {
        int scheme;
        double used;
        int fit;
    } want[] = {
        {.scheme = PAGED_RESERVE_MAX_SEQ, .used = 32.0 / 48.0, .fit = 2},
        {.scheme = PAGED_RESERVE_OWN, .used = 32.0 / 36.0, .fit = 3},
        {.scheme = 4, .used = 32.0 / 40.0, .fit = 2},
        {.scheme = 1, .used = 32.0 / 32.0, .fit = 3},
        {.scheme = 8, .used = 32.0 / 48.0, .fit = 2},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        PagedWaste w;
        ck_assert_msg(paged_waste_measure(reqs, 3, want[i].scheme, 8, 16, &w) == 0, "%s", error_message());
        ck_assert_msg(fabs(w.used_frac - want[i].used) < 1e-12, "scheme %d: used %.6f, expected %.6f", want[i].scheme,
                      w.used_frac, want[i].used);
        ck_assert_msg(w.fit == want[i].fit, "scheme %d: %d requests fit, expected %d", want[i].scheme, w.fit,
                      want[i].fit);
    }
    PagedWaste w;
    ck_assert_int_eq(paged_waste_measure(reqs, 3, -2, 8, 16, &w), -1); /* no such scheme */
}
END_TEST

/* n samples of one prompt, block size 4, 3 new tokens each, with and without fork:
 *   prompt 5 (a full block and one token), 3 samples: unshared, each ends with 8 tokens in 2 blocks:
 *   6. Forked: the 2 prompt blocks, then sample 0 and sample 1 each copy the shared partial block on
 *   their first write (2 copies) while sample 2 keeps it: 4 blocks, 1 still shared (the full one).
 *   prompt 8 (two full blocks), 3 samples: unshared 3 x 3 = 9; forked 2 shared + 3 new blocks = 5,
 *   nothing copied, the 2 prompt blocks shared to the end. */
START_TEST(test_fork_savings_counted_by_hand)
{
    PagedForkCost f;
    ck_assert_msg(paged_fork_measure(5, 3, 3, 4, &f) == 0, "%s", error_message());
    ck_assert_int_eq(f.peak_unshared, 6);
    ck_assert_int_eq(f.peak_forked, 4);
    ck_assert_uint_eq(f.cow_copies, 2);
    ck_assert_int_eq(f.shared_blocks, 1);
    ck_assert_msg(paged_fork_measure(8, 3, 3, 4, &f) == 0, "%s", error_message());
    ck_assert_int_eq(f.peak_unshared, 9);
    ck_assert_int_eq(f.peak_forked, 5);
    ck_assert_uint_eq(f.cow_copies, 0);
    ck_assert_int_eq(f.shared_blocks, 2);
    /* one sample: forking changes nothing */
    ck_assert_msg(paged_fork_measure(100, 128, 1, 16, &f) == 0, "%s", error_message());
    ck_assert_int_eq(f.peak_unshared, 15);
    ck_assert_int_eq(f.peak_forked, 15);
    ck_assert_uint_eq(f.cow_copies, 0);
    ck_assert_int_eq(paged_fork_measure(0, 3, 3, 4, &f), -1);
}
END_TEST

/* The lesson's workloads are common/workload.h's streams with chapter 05's old draws: the skewed
 * one of seed 2023 has the means the lesson prints (164 and 321 tokens), and two of the lesson's
 * figures stay pinned (reserve max_seq: 25.2% used, 64 fit; block size 16: 98.6%, 261). */
START_TEST(test_lesson_workload_is_pinned)
{
    enum { N = 2000, MAX_SEQ = 2048 };
    WorkloadItem *w;
    ck_assert_msg(paged_waste_workload(WORKLOAD_SKEWED, N, MAX_SEQ, 2023, &w) == 0, "%s", error_message());
    double pr = 0, out = 0;
    for (int i = 0; i < N; i++) {
        ck_assert(w[i].prompt_len >= 1 && w[i].output_len >= 1 && w[i].prompt_len + w[i].output_len <= MAX_SEQ);
        ck_assert_ptr_null(w[i].prompt);
        pr += w[i].prompt_len, out += w[i].output_len;
    }
    ck_assert_int_eq((int)lrint(pr / N), 164);
    ck_assert_int_eq((int)lrint(out / N), 321);
    PagedWaste r;
    ck_assert_int_eq(paged_waste_measure(w, N, PAGED_RESERVE_MAX_SEQ, MAX_SEQ, 64 * MAX_SEQ, &r), 0);
    ck_assert_int_eq((int)lrint(1000.0 * r.used_frac), 252);
    ck_assert_int_eq(r.fit, 64);
    ck_assert_int_eq(paged_waste_measure(w, N, 16, MAX_SEQ, 64 * MAX_SEQ, &r), 0);
    ck_assert_int_eq((int)lrint(1000.0 * r.used_frac), 986);
    ck_assert_int_eq(r.fit, 261);
    workload_free(w, N);
}
END_TEST

/* ==== the suite ================================================================================= */

int main(void)
{
    const TestingCase cases[] = {
        {.name = "against chapter 04", .timeout_s = 300,
         .tests = {test_logits_and_tokens_equal_chapter04, test_placement_and_nan_change_no_bit,
                   test_fork_then_diverge_is_exact, test_forked_samples_equal_chapter04_seeds,
                   test_attention_mixed_batch, test_attention_across_partitions}},
        {.name = "allocator", .timeout_s = 300,
         .tests = {test_allocator_random_operations, test_allocator_detects_misuse,
                   test_logits_do_not_depend_on_the_thread_count, test_pool_offsets_beyond_32_bits,
                   test_pool_checked_whole_against_the_budget}},
        {.name = "measurements",
         .tests = {test_waste_of_a_workload_counted_by_hand, test_fork_savings_counted_by_hand,
                   test_lesson_workload_is_pinned}},
        paged_frag_case(),                                             /* test_frag.c */
        paged_prefix_case(),                                           /* test_prefix.c */
        paged_program_case(), paged_hostile_case(), paged_cuda_case(), /* test_paged_program.c */
    };
    return testing_main_cases("05_paged", cases, sizeof cases / sizeof cases[0]);
}
