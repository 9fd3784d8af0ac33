/*
 * test_engine.c: chapter 06's Check suite -- the engine, against chapter 05 run alone. This file:
 * the model and workloads every in-process test shares (test_engine.h), the engine against
 * chapter 05, the metrics, and main(); test_engine_requests.c: the requests file;
 * test_engine_program.c: the program, the GPU engine, hostile inputs.
 *
 * Every request served by the engine gets exactly the tokens chapter 05's paged_generate gives
 * it alone: under static and continuous batching, max-batch 1, 4 and 32, a token budget small
 * enough to chunk every prompt, a pool tight enough to force preemption, requests listed in a
 * shuffled order, blocks handed out in a shuffled order, greedy and sampled. Requests that can
 * never fit are rejected on their own and the rest served; every iteration makes progress (the
 * watchdog); every block is back in the pool at the end.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "05_paged/paged.h"
#include "06_batching/engine.h"
#include "06_batching/test_engine.h"
#include "common/error.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/testing_main.h"
#include "common/workload.h"

/* ==== the model and the workloads the in-process tests share ===================================== */

Model model;

void model_setup(void)
{
    ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 113,
                     .seq_len = 192, .shared_classifier = 0};
    ck_assert_int_eq(model_init_random(&model, &c, 21), 0);
}

void model_teardown(void) { model_free(&model); }

EngineRequest *workload(int n, double rate, uint64_t seed)
{
    WorkloadSpec w = {.n = n, .rate = rate, .kind = WORKLOAD_SKEWED, .prompt_median = 10, .out_median = 14,
                      .seq_len = model.c.seq_len, .vocab = model.c.vocab_size, .seed = seed};
    EngineRequest *r;
    ck_assert_int_eq(engine_make_workload(&w, &r), 0);
    return r;
}

int **alone(const EngineRequest *r, int n, float temperature, uint64_t seed)
{
    int **want = xcalloc((size_t)n, sizeof(int *), "reference tokens");
    for (int i = 0; i < n; i++) {
        if ((long)r[i].n_prompt + r[i].max_new > model.c.seq_len)
            continue;
        want[i] = xmalloc((size_t)r[i].max_new * sizeof(int), "reference tokens");
        PagedGenOptions g = {.max_new = r[i].max_new, .temperature = temperature, .seed = seed + (uint64_t)i,
                             .n_samples = 1, .block_size = 8, .num_blocks = 0, .kernel = 2, .shuffle = 0,
                             .stop_at_bos_eos = 0};
        ck_assert_msg(paged_generate(&model, r[i].prompt, r[i].n_prompt, &g, want[i], NULL) == 0, "%s", error_message());
    }
    return want;
}

int longest_in_blocks(const EngineRequest *r, int n, int bs)
{
    int longest = 0;
    for (int i = 0; i < n; i++) {
        const int need = paged_blocks_for_request(r[i].n_prompt, r[i].max_new, 1, bs);
        longest = need > longest ? need : longest;
    }
    return longest;
}

Requests requests_alone(int n, double rate, uint64_t seed, float temperature, uint64_t sample_seed)
{
    Requests q = {.n = n, .r = workload(n, rate, seed)};
    q.want = alone(q.r, n, temperature, sample_seed);
    q.longest = longest_in_blocks(q.r, n, 4);
    return q;
}

void requests_free(Requests *q)
{
    free_want(q->want, q->n);
    engine_free_requests(q->r, q->n);
}

void free_want(int **want, int n)
{
    for (int i = 0; i < n; i++)
        free(want[i]);
    free(want);
}

EngineMetrics serve_and_check(const Requests *q, EngineOptions o, const char *what)
{
    const EngineRequest *r = q->r;
    const int n = q->n;
    int *const *want = q->want;
    o.fixed_step_s = 0.01, o.keep_log = 1, o.check_invariants = 1;
    EngineResult *res = xcalloc((size_t)n, sizeof(EngineResult), "results");
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&model, r, n, &o, res, &mt) == 0, "%s: %s", what, error_message());
    for (int i = 0; i < n; i++) {
        if (!want[i]) {
            ck_assert_msg(res[i].status == ENGINE_REJECTED, "%s: request %d should have been rejected", what, i);
            continue;
        }
        ck_assert_msg(res[i].status == ENGINE_DONE && res[i].n_tokens == r[i].max_new, "%s: request %d not served",
                      what, i);
        ck_assert_msg(memcmp(res[i].tokens, want[i], (size_t)r[i].max_new * sizeof(int)) == 0,
                      "%s: request %d's tokens differ from chapter 05 alone", what, i);
    }
    for (int it = 0; it < mt.iterations; it++) { /* the watchdog's rule, checked from the log */
        ck_assert_msg(mt.log[it].prefill_tokens + mt.log[it].decode_tokens >= 1, "%s: iteration %d did nothing", what,
                      it);
        ck_assert_int_le(mt.log[it].scheduled, o.max_batch);
        ck_assert_int_le(mt.log[it].prefill_tokens + mt.log[it].decode_tokens, o.max_tokens);
    }
    ck_assert_int_le(mt.peak_blocks, mt.num_blocks);
    engine_free_results(res, n);
    free(res);
    return mt;
}

/* ==== the engine against chapter 05 alone ========================================================= */

/* engine_default_options() under policy p: 0 continuous batching, 1 static. */
static EngineOptions policy_options(int p)
{
    EngineOptions o = engine_default_options();
    o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS;
    return o;
}

/* Policy p with a pool of just the longest request's blocks of 4 and 32 tokens a step: preemption,
 * again and again. */
static EngineOptions tight_pool(int p, const Requests *q)
{
    EngineOptions o = policy_options(p);
    o.block_size = 4, o.num_blocks = q->longest, o.max_tokens = 32;
    return o;
}

START_TEST(test_policies_and_batch_sizes_match_chapter05)
{
    const int n = 20;
    for (int arrivals = 0; arrivals <= 1; arrivals++) {
        Requests q = requests_alone(n, arrivals ? 30.0 : 0.0, 5 + (uint64_t)arrivals, 0.0f, 0);
        const int batches[3] = {1, 4, 32};
        for (int p = 0; p <= 1; p++)
            for (int b = 0; b < 3; b++) {
                EngineOptions o = policy_options(p);
                o.max_batch = batches[b], o.block_size = 8;
                char what[96];
                snprintf(what, sizeof what, "%s max-batch %d, arrivals %d", engine_policy_name(o.policy), batches[b],
                         arrivals);
                EngineMetrics mt = serve_and_check(&q, o, what);
                ck_assert_int_eq(mt.completed, n);
                engine_free_metrics(&mt);
            }
        requests_free(&q);
    }
}
END_TEST

START_TEST(test_chunked_prefill_and_preemption_match_chapter05)
{
    const int n = 24;
    Requests q = requests_alone(n, 0.0, 11, 0.0f, 0);
    /* a budget of 3 tokens: every prompt in chunks */
    EngineOptions o = engine_default_options();
    o.max_tokens = 3, o.block_size = 4;
    EngineMetrics mt = serve_and_check(&q, o, "budget 3");
    engine_free_metrics(&mt);
    /* a pool just big enough for the longest request: preemption, again and again */
    for (int p = 0; p <= 1; p++) {
        o = tight_pool(p, &q);
        o.shuffle = 3;
        mt = serve_and_check(&q, o, p ? "static, tight pool" : "continuous, tight pool");
        ck_assert_int_gt(mt.preemptions, 0);
        ck_assert_int_eq(mt.peak_blocks, q.longest);
        engine_free_metrics(&mt);
    }
    /* block size 1 with a tight pool and chunked prefill together */
    o = engine_default_options();
    o.block_size = 1, o.num_blocks = 4 * q.longest * 4, o.max_tokens = 5, o.max_batch = 6;
    mt = serve_and_check(&q, o, "bs 1, budget 5, tight");
    engine_free_metrics(&mt);
    requests_free(&q);
}
END_TEST

/* Aborts (a client going away): an aborted request keeps a prefix of its tokens and gives its
 * blocks back at once (the pool's invariants hold after every iteration, the pool is full at
 * the end), and every other request still gets exactly its tokens alone -- for both policies,
 * with a pool tight enough to preempt. */
START_TEST(test_aborted_requests_leave_the_rest_unchanged)
{
    const int n = 16;
    Requests q = requests_alone(n, 30.0, 23, 0.0f, 0);
    for (int i = 1; i < n; i += 4) /* mid-generation (or while waiting), at different times */
        q.r[i].abort_at = q.r[i].arrival + 0.02 * (1 + i / 4);
    q.r[0].abort_at = q.r[0].arrival + 0.055;                    /* the first: it runs at once, ~5 steps */
    q.r[2].abort_at = q.r[2].arrival > 0 ? q.r[2].arrival : 1e-9; /* at its arrival: nothing generated */
    q.r[3].abort_at = 1000.0;                                  /* after it finishes: no effect */
    for (int p = 0; p <= 1; p++) {
        EngineOptions o = policy_options(p);
        o.max_batch = 4, o.block_size = 4;
        o.num_blocks = 2 * q.longest, o.max_tokens = 8, o.fixed_step_s = 0.01, o.check_invariants = 1;
        EngineResult *res = xcalloc((size_t)n, sizeof(EngineResult), "results");
        EngineMetrics mt;
        ck_assert_msg(engine_serve(&model, q.r, n, &o, res, &mt) == 0, "%s", error_message());
        int aborted = 0, partial = 0;
        for (int i = 0; i < n; i++) {
            ck_assert_msg(res[i].status == ENGINE_DONE || (q.r[i].abort_at > 0 && res[i].status == ENGINE_ABORTED),
                          "request %d: status %d", i, res[i].status);
            ck_assert_int_le(res[i].n_tokens, q.r[i].max_new);
            ck_assert_msg(memcmp(res[i].tokens, q.want[i], (size_t)res[i].n_tokens * sizeof(int)) == 0,
                          "request %d's tokens are not (a prefix of) its tokens alone", i);
            if (res[i].status == ENGINE_DONE) {
                ck_assert_int_eq(res[i].n_tokens, q.r[i].max_new);
                continue;
            }
            ck_assert_msg(strstr(res[i].reason, "aborted at"), "%s", res[i].reason);
            ck_assert_double_ge(res[i].finish_s, q.r[i].abort_at);
            aborted++;
            partial += res[i].n_tokens > 0 && res[i].n_tokens < q.r[i].max_new;
        }
        ck_assert_int_eq(res[2].status, ENGINE_ABORTED);
        ck_assert_int_eq(res[2].n_tokens, 0);
        ck_assert_int_eq(res[3].status, ENGINE_DONE);
        ck_assert_msg(res[0].status == ENGINE_ABORTED && res[0].n_tokens > 0 && res[0].n_tokens < q.r[0].max_new,
                      "request 0: status %d, %d of %d tokens", res[0].status, res[0].n_tokens, q.r[0].max_new);
        ck_assert_int_ge(partial, 1);
        ck_assert_int_eq(mt.aborted, aborted);
        ck_assert_int_eq(mt.completed + mt.aborted + mt.rejected, n);
        engine_free_results(res, n);
        engine_free_metrics(&mt);
        free(res);
    }
    requests_free(&q);
}
END_TEST

START_TEST(test_shuffled_order_sampling_and_rejections)
{
    const int n = 16;
    EngineRequest *r = workload(n, 20.0, 17);
    /* list the requests in a shuffled order (their arrival times travel with them) */
    Rng rng;
    rng_seed(&rng, 4);
    for (int i = n - 1; i > 0; i--) {
        const int j = (int)rng_below(&rng, (uint32_t)(i + 1));
        EngineRequest t = r[i];
        r[i] = r[j], r[j] = t;
    }
    /* two requests that can never run: too long for seq_len, and too many blocks for the pool */
    r = xrealloc(r, (size_t)(n + 2) * sizeof(EngineRequest), "requests");
    r[n] = (EngineRequest){.arrival = 0.1, .max_new = 150, .n_prompt = 50, .prompt = xcalloc(50, sizeof(int), "prompt")};
    /* 159 tokens: 40 blocks of 4 */
    r[n + 1] = (EngineRequest){.arrival = 0.2, .max_new = 100, .n_prompt = 60,
                               .prompt = xcalloc(60, sizeof(int), "prompt")};
    const Requests q = {.n = n + 2, .r = r, .want = alone(r, n + 2, 0.8f, 100)};
    int **want = q.want;
    int expect_rejected = 0;
    for (int i = 0; i < n + 2; i++) /* rejected for the pool below, though seq_len allows them */
        if (want[i] && paged_blocks_for_request(r[i].n_prompt, r[i].max_new, 1, 4) > 39) {
            free(want[i]);
            want[i] = NULL;
        }
    for (int i = 0; i < n + 2; i++)
        expect_rejected += !want[i];
    ck_assert_int_ge(expect_rejected, 2);
    EngineOptions o = engine_default_options();
    o.temperature = 0.8f, o.seed = 100, o.block_size = 4, o.num_blocks = 39, o.max_tokens = 16, o.shuffle = 9;
    EngineResult *res = xcalloc((size_t)n + 2, sizeof(EngineResult), "results");
    EngineMetrics mt = serve_and_check(&q, o, "shuffled, sampled");
    ck_assert_int_eq(mt.rejected, expect_rejected);
    ck_assert_int_eq(mt.completed, n + 2 - expect_rejected);
    engine_free_metrics(&mt);
    o.fixed_step_s = 0.01;
    ck_assert_int_eq(engine_serve(&model, r, n + 2, &o, res, &mt), 0);
    ck_assert_msg(strstr(res[n].reason, "exceeds the model's seq_len 192"), "%s", res[n].reason);
    ck_assert_msg(strstr(res[n + 1].reason, "needs 40 blocks of 4 tokens") && strstr(res[n + 1].reason, "has 39"), "%s",
                  res[n + 1].reason);
    engine_free_results(res, n + 2);
    engine_free_metrics(&mt);
    free(res);
    free_want(want, n + 2);
    engine_free_requests(r, n + 2);
}
END_TEST

START_TEST(test_continuous_keeps_the_batch_fuller)
{
    /* all at once, skewed lengths, max-batch 8: static batches drain while their longest request
     * runs; continuous batching refills them (counts of sequences, not timings) */
    const int n = 32;
    Requests q = requests_alone(n, 0.0, 23, 0.0f, 0);
    EngineOptions o = engine_default_options();
    o.max_batch = 8;
    EngineMetrics c = serve_and_check(&q, o, "continuous");
    o.policy = ENGINE_STATIC;
    EngineMetrics s = serve_and_check(&q, o, "static");
    ck_assert_msg(c.mean_batch > s.mean_batch && c.iterations < s.iterations,
                  "continuous %.2f sequences per iteration in %d iterations, static %.2f in %d", c.mean_batch,
                  c.iterations, s.mean_batch, s.iterations);
    engine_free_metrics(&c), engine_free_metrics(&s);
    requests_free(&q);
}
END_TEST

START_TEST(test_bad_options)
{
    EngineRequest *r = workload(2, 0.0, 1);
    EngineResult res[2];
    EngineMetrics mt;
    EngineOptions o = engine_default_options();
    o.max_batch = 0;
    ck_assert_int_eq(engine_serve(&model, r, 2, &o, res, &mt), -1);
    ck_assert_msg(strstr(error_message(), "--max-batch"), "%s", error_message());
    o = engine_default_options();
    o.max_tokens = 0;
    ck_assert_int_eq(engine_serve(&model, r, 2, &o, res, &mt), -1);
    o = engine_default_options();
    o.temperature = 1e-40f; /* subnormal: logits / T overflow */
    ck_assert_int_eq(engine_serve(&model, r, 2, &o, res, &mt), -1);
    ck_assert_msg(strstr(error_message(), "below the smallest normal float"), "%s", error_message());
    engine_free_requests(r, 2);
}
END_TEST

/* The default pool (max_batch sequences of seq_len tokens) is sized in size_t: a count past
 * INT_MAX is refused saying what it would need (it wrapped to -2147483648 blocks in int), and one
 * beyond the memory budget is refused before allocating, naming the default as the cause. */
START_TEST(test_default_pool_sizes)
{
    EngineRequest *r = workload(2, 0.0, 1);
    EngineResult res[2];
    EngineMetrics mt;
    EngineOptions o = engine_default_options();
    o.max_batch = 1 << 30, o.block_size = 1; /* 2^30 x 192 blocks */
    ck_assert_int_eq(engine_serve(&model, r, 2, &o, res, &mt), -1);
    ck_assert_msg(strstr(error_message(), "the default pool, --max-batch 1073741824 sequences of seq_len 192 tokens in "
                                          "blocks of 1, would need 206158430208 blocks"),
                  "%s", error_message());
    const size_t held = mem_current_bytes();
    mem_set_budget(held + (1u << 20));
    o.max_batch = 1 << 20; /* 2^20 x 192 blocks fit an int, not 1 MiB */
    ck_assert_int_eq(engine_serve(&model, r, 2, &o, res, &mt), -1);
    ck_assert_msg(strstr(error_message(), "the block pool (K and V of 201326592 blocks") &&
                      strstr(error_message(), "(the default pool: --max-batch 1048576 sequences of seq_len 192 tokens"),
                  "%s", error_message());
    ck_assert_uint_eq(mem_current_bytes(), held);
    mem_set_budget(0);
    engine_free_requests(r, 2);
}
END_TEST

/* A model whose logits overflow float32 (finite weights, rms_final of 3e38) stops the engine with
 * an error, greedy or sampled, instead of sampling the last id from NaN probabilities. */
START_TEST(test_overflowing_logits_stop_the_engine)
{
    Model m;
    ck_assert_int_eq(model_init_random(&m, &model.c, 21), 0);
    for (int i = 0; i < m.c.dim; i++)
        m.w.rms_final[i] = 3e38f;
    EngineRequest *r = workload(3, 0.0, 2);
    EngineResult res[3];
    EngineMetrics mt;
    for (int t = 0; t < 2; t++) {
        EngineOptions o = engine_default_options();
        o.temperature = t ? 0.8f : 0.0f;
        ck_assert_int_eq(engine_serve(&m, r, 3, &o, res, &mt), -1);
        ck_assert_msg(strstr(error_message(), "overflowed float32"), "%s", error_message());
    }
    engine_free_requests(r, 3);
    model_free(&m);
}
END_TEST

/* ==== metrics on a fixed clock, and preemption under sampling ====================================== */

/* TTFT, TPOT, their percentiles and the throughput of a run worked out by hand: each iteration
 * advances the clock by exactly 0.5 s (fixed_step_s: binary fractions, so the expected values are
 * exact in double), every prompt prefills in one iteration and the engine is never idle, so a
 * request arriving at a is admitted by the first iteration starting at or after a, gets its first
 * token at that iteration's end, and one more token per iteration after. */
START_TEST(test_metrics_on_a_fixed_clock)
{
    const int n = 6;
    /* arrival, max_new; admitted at (iteration start), first token, finish */
    const double arrival[6] = {0.0, 0.25, 0.875, 1.125, 1.4375, 2.8125};
    const int max_new[6] = {8, 3, 5, 2, 6, 1};
    const double ttft[6] = {0.5,    /* admitted 0.0, first 0.5, finish 4.0 */
                            0.75,   /* admitted 0.5, first 1.0, finish 2.0 */
                            0.625,  /* admitted 1.0, first 1.5, finish 3.5 */
                            0.875,  /* admitted 1.5, first 2.0, finish 2.5 */
                            0.5625, /* admitted 1.5, first 2.0, finish 4.5 */
                            0.6875}; /* admitted 3.0, first 3.5, finish 3.5 */
    const double finish[6] = {4.0, 2.0, 3.5, 2.5, 4.5, 3.5};
    EngineRequest r[6];
    int prompts[6][3];
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 3; j++)
            prompts[i][j] = (i * 17 + j * 5 + 1) % model.c.vocab_size;
        r[i] = (EngineRequest){.arrival = arrival[i], .max_new = max_new[i], .n_prompt = 2 + i % 2, .prompt = prompts[i]};
    }
    EngineOptions o = engine_default_options();
    o.fixed_step_s = 0.5, o.keep_log = 1;
    EngineResult res[6];
    memset(res, 0, sizeof res);
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&model, r, n, &o, res, &mt) == 0, "%s", error_message());
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(res[i].status, ENGINE_DONE);
        ck_assert_int_eq(res[i].n_tokens, max_new[i]);
        ck_assert_msg(res[i].ttft_s == ttft[i], "request %d: TTFT %.17g, expected %g", i, res[i].ttft_s, ttft[i]);
        ck_assert_msg(res[i].finish_s == finish[i], "request %d: finish %.17g, expected %g", i, res[i].finish_s,
                      finish[i]);
        /* (finish - first token) / (generated - 1): one token every 0.5 s after the first */
        if (max_new[i] > 1)
            ck_assert_msg(res[i].tpot_s == 0.5, "request %d: TPOT %.17g, expected 0.5", i, res[i].tpot_s);
        else
            ck_assert_msg(isnan(res[i].tpot_s), "request %d: TPOT of one token %g, expected NaN", i, res[i].tpot_s);
    }
    /* nearest rank: the ceil(p/100 * n)-th smallest. TTFT sorted: 0.5 0.5625 0.625 0.6875 0.75 0.875:
     * p50 the 3rd, p99 the 6th. TPOT: five values of 0.5 (the one-token request has none). */
    ck_assert_double_eq(mt.ttft_p50, 0.625);
    ck_assert_double_eq(mt.ttft_p99, 0.875);
    ck_assert_double_eq(mt.tpot_p50, 0.5);
    ck_assert_double_eq(mt.tpot_p99, 0.5);
    ck_assert_int_eq(mt.completed, n);
    ck_assert_int_eq(mt.generated, 25);
    ck_assert_int_eq(mt.iterations, 9); /* never idle from 0 to the last finish, 4.5 */
    ck_assert_double_eq(mt.makespan_s, 4.5);
    ck_assert_double_eq(mt.throughput, 25 / 4.5);
    /* a sequence is in the forward of every iteration that gives it a token (its prefill's gives
     * the first): 25 sequence-iterations over 9 iterations */
    ck_assert_double_eq(mt.mean_batch, 25.0 / 9.0);
    for (int it = 0; it < mt.iterations; it++)
        ck_assert_double_eq(mt.log[it].clock_s, 0.5 * (it + 1));
    engine_free_results(res, n);
    engine_free_metrics(&mt);
}
END_TEST

/* Preemption under sampling. A sequence preempted and recomputed must continue exactly where it
 * was -- its tokens and its generator's state kept. Greedy runs cannot tell: a preempted sequence
 * that dropped its last token recomputes the same argmax, so only a sampled run (whose coin has
 * moved on) sees the bug. A pool of the longest request's blocks forces preemption; the count is
 * deterministic (a fixed clock, a fixed workload) and asserted exactly. */
START_TEST(test_sampled_preemption_matches_chapter05)
{
    const int n = 16;
    Requests q = requests_alone(n, 0.0, 11, 0.9f, 3);
    /* [prefix caching off, on][continuous, static]: counted once, pinned. With caching a preempted
     * sequence resumes from those of its blocks still cached instead of recomputing them all, so
     * the schedule, and the count, differ */
    const int expect_preemptions[2][2] = {{59, 47}, {17, 44}};
    for (int c = 0; c <= 1; c++)
        for (int p = 0; p <= 1; p++) {
            EngineOptions o = tight_pool(p, &q);
            o.temperature = 0.9f, o.seed = 3, o.prefix_caching = c;
            EngineMetrics mt =
                serve_and_check(&q, o, p ? "static, sampled, tight pool" : "continuous, sampled, tight pool");
            ck_assert_int_eq(mt.completed, n);
            ck_assert_msg(mt.preemptions == expect_preemptions[c][p], "%s, caching %d: %d preemptions, expected %d",
                          engine_policy_name(o.policy), c, mt.preemptions, expect_preemptions[c][p]);
            engine_free_metrics(&mt);
        }
    requests_free(&q);
}
END_TEST

/* ==== the suite ================================================================================= */

int main(void)
{
    const TestingCase cases[] = {
        {.name = "against chapter 05", .timeout_s = 300, .setup = model_setup, .teardown = model_teardown,
         .tests = {test_policies_and_batch_sizes_match_chapter05, test_chunked_prefill_and_preemption_match_chapter05,
                   test_aborted_requests_leave_the_rest_unchanged, test_shuffled_order_sampling_and_rejections,
                   test_continuous_keeps_the_batch_fuller, test_bad_options, test_default_pool_sizes,
                   test_overflowing_logits_stop_the_engine}},
        {.name = "metrics and sampled preemption", .timeout_s = 120, .setup = model_setup, .teardown = model_teardown,
         .tests = {test_metrics_on_a_fixed_clock, test_sampled_preemption_matches_chapter05}},
        engine_grid_case(),   /* test_engine_grid.c */
        engine_prefix_case(), /* test_engine_prefix.c */
        engine_live_case(),   /* test_engine_live.c */
        engine_server_case(), engine_page_case(), /* test_server.c */
        testing_case_join(engine_requests_case(), engine_program_case()), /* "requests and program" */
        engine_hostile_case(), engine_cuda_case(), /* test_engine_program.c */
    };
    return testing_main_cases("06_batching", cases, sizeof cases / sizeof cases[0]);
}
