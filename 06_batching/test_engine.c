/*
 * test_engine.c: chapter 06's Check suite -- the engine, against chapter 05 run alone.
 *
 * Every request served by the engine gets exactly the tokens chapter 05's paged_generate gives
 * it alone: under static and continuous batching, max-batch 1, 4 and 32, a token budget small
 * enough to chunk every prompt, a pool tight enough to force preemption, requests listed in a
 * shuffled order, blocks handed out in a shuffled order, greedy and sampled. Requests that can
 * never fit are rejected on their own and the rest served; every iteration makes progress (the
 * watchdog); every block is back in the pool at the end; the requests parser names the line of
 * every malformed entry. Then the program: serve, gen-requests, verify, bad input.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "06_batching/engine.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/hostile.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/testing_main.h"
#include "common/tokenizer.h"

static char tmp[4096];
static void tmp_setup(void) { temp_dir_create(tmp, sizeof tmp); }
static void tmp_teardown(void) { temp_dir_remove(tmp); }

static Model model;
static void model_setup(void)
{
    ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 113,
                     .seq_len = 192, .shared_classifier = 0};
    ck_assert_int_eq(model_init_random(&model, &c, 21), 0);
}
static void model_teardown(void) { model_free(&model); }

/* A workload of n skewed requests (seed), arriving at `rate` per second (0: all at once). */
static EngineRequest *workload(int n, double rate, uint64_t seed)
{
    WorkloadSpec w = {.n = n, .rate = rate, .kind = WORKLOAD_SKEWED, .prompt_median = 10, .out_median = 14,
                      .seq_len = model.c.seq_len, .vocab = model.c.vocab_size, .seed = seed};
    EngineRequest *r;
    ck_assert_int_eq(engine_make_workload(&w, &r), 0);
    return r;
}

/* want[i]: chapter 05 alone on request i (NULL when it cannot run). */
static int **alone(const EngineRequest *r, int n, float temperature, uint64_t seed)
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

/* The most blocks of bs tokens any of the n requests needs at its longest. */
static int longest_in_blocks(const EngineRequest *r, int n, int bs)
{
    int longest = 0;
    for (int i = 0; i < n; i++) {
        const int need = paged_blocks_for_request(r[i].n_prompt, r[i].max_new, 1, bs);
        longest = need > longest ? need : longest;
    }
    return longest;
}

static void free_want(int **want, int n)
{
    for (int i = 0; i < n; i++)
        free(want[i]);
    free(want);
}

/* Serves r with o; checks every served request against want, progress at every iteration and
 * an empty pool at the end (engine_serve fails otherwise); returns the metrics. */
static EngineMetrics serve_and_check(const EngineRequest *r, int n, EngineOptions o, int *const *want,
                                     const char *what)
{
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

START_TEST(test_policies_and_batch_sizes_match_chapter05)
{
    const int n = 20;
    for (int arrivals = 0; arrivals <= 1; arrivals++) {
        EngineRequest *r = workload(n, arrivals ? 30.0 : 0.0, 5 + (uint64_t)arrivals);
        int **want = alone(r, n, 0.0f, 0);
        const int batches[3] = {1, 4, 32};
        for (int p = 0; p <= 1; p++)
            for (int b = 0; b < 3; b++) {
                EngineOptions o = engine_default_options();
                o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS, o.max_batch = batches[b], o.block_size = 8;
                char what[96];
                snprintf(what, sizeof what, "%s max-batch %d, arrivals %d", engine_policy_name(o.policy), batches[b],
                         arrivals);
                EngineMetrics mt = serve_and_check(r, n, o, want, what);
                ck_assert_int_eq(mt.completed, n);
                engine_free_metrics(&mt);
            }
        free_want(want, n);
        engine_free_requests(r, n);
    }
}
END_TEST

START_TEST(test_chunked_prefill_and_preemption_match_chapter05)
{
    const int n = 24;
    EngineRequest *r = workload(n, 0.0, 11);
    int **want = alone(r, n, 0.0f, 0);
    const int longest = longest_in_blocks(r, n, 4);
    /* a budget of 3 tokens: every prompt in chunks */
    EngineOptions o = engine_default_options();
    o.max_tokens = 3, o.block_size = 4;
    EngineMetrics mt = serve_and_check(r, n, o, want, "budget 3");
    engine_free_metrics(&mt);
    /* a pool just big enough for the longest request: preemption, again and again */
    for (int p = 0; p <= 1; p++) {
        o = engine_default_options();
        o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS, o.block_size = 4, o.num_blocks = longest, o.max_tokens = 32;
        o.shuffle = 3;
        mt = serve_and_check(r, n, o, want, p ? "static, tight pool" : "continuous, tight pool");
        ck_assert_int_gt(mt.preemptions, 0);
        ck_assert_int_eq(mt.peak_blocks, longest);
        engine_free_metrics(&mt);
    }
    /* block size 1 with a tight pool and chunked prefill together */
    o = engine_default_options();
    o.block_size = 1, o.num_blocks = 4 * longest * 4, o.max_tokens = 5, o.max_batch = 6;
    mt = serve_and_check(r, n, o, want, "bs 1, budget 5, tight");
    engine_free_metrics(&mt);
    free_want(want, n);
    engine_free_requests(r, n);
}
END_TEST

/* Aborts (a client going away): an aborted request keeps a prefix of its tokens and gives its
 * blocks back at once (the pool's invariants hold after every iteration, the pool is full at
 * the end), and every other request still gets exactly its tokens alone -- for both policies,
 * with a pool tight enough to preempt. */
START_TEST(test_aborted_requests_leave_the_rest_unchanged)
{
    const int n = 16;
    EngineRequest *r = workload(n, 30.0, 23);
    int **want = alone(r, n, 0.0f, 0);
    const int longest = longest_in_blocks(r, n, 4);
    for (int i = 1; i < n; i += 4) /* mid-generation (or while waiting), at different times */
        r[i].abort_at = r[i].arrival + 0.02 * (1 + i / 4);
    r[0].abort_at = r[0].arrival + 0.055;                    /* the first: it runs at once, ~5 steps */
    r[2].abort_at = r[2].arrival > 0 ? r[2].arrival : 1e-9; /* at its arrival: nothing generated */
    r[3].abort_at = 1000.0;                                  /* after it finishes: no effect */
    for (int p = 0; p <= 1; p++) {
        EngineOptions o = engine_default_options();
        o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS, o.max_batch = 4, o.block_size = 4;
        o.num_blocks = 2 * longest, o.max_tokens = 8, o.fixed_step_s = 0.01, o.check_invariants = 1;
        EngineResult *res = xcalloc((size_t)n, sizeof(EngineResult), "results");
        EngineMetrics mt;
        ck_assert_msg(engine_serve(&model, r, n, &o, res, &mt) == 0, "%s", error_message());
        int aborted = 0, partial = 0;
        for (int i = 0; i < n; i++) {
            ck_assert_msg(res[i].status == ENGINE_DONE || (r[i].abort_at > 0 && res[i].status == ENGINE_ABORTED),
                          "request %d: status %d", i, res[i].status);
            ck_assert_int_le(res[i].n_tokens, r[i].max_new);
            ck_assert_msg(memcmp(res[i].tokens, want[i], (size_t)res[i].n_tokens * sizeof(int)) == 0,
                          "request %d's tokens are not (a prefix of) its tokens alone", i);
            if (res[i].status == ENGINE_DONE) {
                ck_assert_int_eq(res[i].n_tokens, r[i].max_new);
                continue;
            }
            ck_assert_msg(strstr(res[i].reason, "aborted at"), "%s", res[i].reason);
            ck_assert_double_ge(res[i].finish_s, r[i].abort_at);
            aborted++;
            partial += res[i].n_tokens > 0 && res[i].n_tokens < r[i].max_new;
        }
        ck_assert_int_eq(res[2].status, ENGINE_ABORTED);
        ck_assert_int_eq(res[2].n_tokens, 0);
        ck_assert_int_eq(res[3].status, ENGINE_DONE);
        ck_assert_msg(res[0].status == ENGINE_ABORTED && res[0].n_tokens > 0 && res[0].n_tokens < r[0].max_new,
                      "request 0: status %d, %d of %d tokens", res[0].status, res[0].n_tokens, r[0].max_new);
        ck_assert_int_ge(partial, 1);
        ck_assert_int_eq(mt.aborted, aborted);
        ck_assert_int_eq(mt.completed + mt.aborted + mt.rejected, n);
        engine_free_results(res, n);
        engine_free_metrics(&mt);
        free(res);
    }
    free_want(want, n);
    engine_free_requests(r, n);
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
    int **want = alone(r, n + 2, 0.8f, 100);
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
    EngineMetrics mt = serve_and_check(r, n + 2, o, want, "shuffled, sampled");
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
    EngineRequest *r = workload(n, 0.0, 23);
    int **want = alone(r, n, 0.0f, 0);
    EngineOptions o = engine_default_options();
    o.max_batch = 8;
    EngineMetrics c = serve_and_check(r, n, o, want, "continuous");
    o.policy = ENGINE_STATIC;
    EngineMetrics s = serve_and_check(r, n, o, want, "static");
    ck_assert_msg(c.mean_batch > s.mean_batch && c.iterations < s.iterations,
                  "continuous %.2f sequences per iteration in %d iterations, static %.2f in %d", c.mean_batch,
                  c.iterations, s.mean_batch, s.iterations);
    engine_free_metrics(&c), engine_free_metrics(&s);
    free_want(want, n);
    engine_free_requests(r, n);
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

/* ==== the requests file ========================================================================= */

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

START_TEST(test_requests_parser)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/r.txt", tmp);
    write_text(path, "# a comment\n\n0 4 1 2 3\n  0.5\t2 7\n# another\n1.25 0 9 9\n");
    EngineRequest *r;
    int n;
    ck_assert_msg(engine_read_requests(path, NULL, 0, &r, &n) == 0, "%s", error_message());
    ck_assert_int_eq(n, 3);
    ck_assert(r[0].arrival == 0.0 && r[0].max_new == 4 && r[0].n_prompt == 3 && r[0].prompt[2] == 3);
    ck_assert(r[1].arrival == 0.5 && r[1].max_new == 2 && r[1].n_prompt == 1 && r[1].prompt[0] == 7);
    ck_assert(r[2].arrival == 1.25 && r[2].max_new == 0 && r[2].n_prompt == 2);
    engine_free_requests(r, n);
    const struct {
        const char *text, *expect;
    } bad[] = {
        {.text = "0 4 1 2\n0 4\n", .expect = "r.txt:2: the prompt is empty"},
        {.text = "0 4 1\n\n-1 4 1\n", .expect = "r.txt:3: the arrival time"},
        {.text = "x 4 1\n", .expect = "r.txt:1: the arrival time"},
        {.text = "0 four 1\n", .expect = "r.txt:1: expected '<arrival_seconds> <max_new_tokens> <prompt ids...>'"},
        {.text = "0 -2 1\n", .expect = "r.txt:1: expected"},
        {.text = "0 3 1 2 x\n", .expect = "r.txt:1: prompt token 2 is not a non-negative integer"},
        {.text = "0 3 1 -5\n", .expect = "r.txt:1: prompt token 1"},
        {.text = "# only comments\n\n", .expect = "no requests"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(path, bad[i].text);
        ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
        ck_assert_msg(strstr(error_message(), bad[i].expect), "case %zu: '%s' not in '%s'", i, bad[i].expect,
                      error_message());
    }
    ck_assert_int_eq(engine_read_requests("/nonexistent/r.txt", NULL, 0, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "cannot open"), "%s", error_message());
    /* a generated workload survives the round trip through a file */
    EngineRequest *w = workload(9, 5.0, 2);
    ck_assert_int_eq(engine_write_requests(path, w, 9), 0);
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), 0);
    ck_assert_int_eq(n, 9);
    for (int i = 0; i < 9; i++) {
        ck_assert(fabs(r[i].arrival - w[i].arrival) < 1e-6 && r[i].max_new == w[i].max_new);
        ck_assert(r[i].n_prompt == w[i].n_prompt && memcmp(r[i].prompt, w[i].prompt, (size_t)w[i].n_prompt * 4) == 0);
    }
    engine_free_requests(r, n);
    engine_free_requests(w, 9);
}
END_TEST

/* In text mode, a line whose length alone proves that it cannot fit in seq_len is not encoded
 * (the tiny tokenizer's tokens cover at most 6 bytes): the request the line says is one the model
 * cannot serve, so it is rejected on its own output line and the others are served (the rule:
 * the file is the unit of syntax, the request the unit of service). */
START_TEST(test_requests_text_too_long_refused_unread)
{
    char path[4200], tok_path[4200];
    snprintf(path, sizeof path, "%s/r.txt", tmp), snprintf(tok_path, sizeof tok_path, "%s/tok.bin", tmp);
    const int V = testing_write_tiny_tokenizer(tok_path);
    Tokenizer tok;
    ck_assert_int_eq(tokenizer_load(tok_path, V, &tok), 0);
    char *line = xmalloc(1100, "a long line");
    memcpy(line, "0 4 ", 4), memset(line + 4, 'x', 1000), memcpy(line + 1004, "\n0 2 hi\n", 8);
    write_bytes(path, line, 1012); /* 1000 bytes: at least ceil(1002 / 6) = 167 tokens with BOS */
    EngineRequest *r;
    int n;
    ck_assert_msg(engine_read_requests(path, &tok, 170, &r, &n) == 0, "%s", error_message()); /* 167 + 4 > 170 */
    ck_assert_int_eq(n, 2);
    ck_assert_msg(r[0].rejected && strstr(r[0].rejected, "the prompt text is 1000 bytes: at least 167 tokens") &&
                      strstr(r[0].rejected, "seq_len 170"),
                  "%s", r[0].rejected ? r[0].rejected : "(not rejected)");
    ck_assert(r[0].n_prompt == 0 && r[0].prompt == NULL); /* never encoded */
    ck_assert(!r[1].rejected && r[1].n_prompt >= 2);
    /* served: the first is rejected with the reader's reason, the second gets its tokens */
    ModelConfig c = {.dim = 32, .hidden_dim = 48, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .vocab_size = V,
                     .seq_len = 170, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 5), 0);
    EngineOptions o = engine_default_options();
    o.fixed_step_s = 0.01;
    EngineResult res[2];
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&m, r, n, &o, res, &mt) == 0, "%s", error_message());
    ck_assert_int_eq(res[0].status, ENGINE_REJECTED);
    ck_assert_msg(strstr(res[0].reason, "at least 167 tokens"), "%s", res[0].reason);
    ck_assert_int_eq(res[1].status, ENGINE_DONE);
    ck_assert_int_eq(res[1].n_tokens, 2);
    ck_assert(mt.completed == 1 && mt.rejected == 1);
    engine_free_results(res, n);
    engine_free_metrics(&mt);
    model_free(&m);
    engine_free_requests(r, n);
    ck_assert_int_eq(engine_read_requests(path, &tok, 171, &r, &n), 0); /* the bound passes: encoded */
    ck_assert(!r[0].rejected && r[0].n_prompt == 1002);                  /* BOS, the prefix, 1000 x */
    engine_free_requests(r, n);
    ck_assert_int_eq(engine_read_requests(path, &tok, 0, &r, &n), 0); /* no limit */
    engine_free_requests(r, n);
    free(line);
    tokenizer_free(&tok);
}
END_TEST

/* A NUL byte would end a line early for the parser (cutting a prompt, or hiding a request): the
 * file is refused with the line and column. */
START_TEST(test_requests_nul_byte)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/r.txt", tmp);
    EngineRequest *r;
    int n;
    const char nul_in_prompt[] = "0 4 1 2\n0 3 5\0 6\n";
    write_bytes(path, nul_in_prompt, sizeof nul_in_prompt - 1);
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "r.txt:2: NUL byte (column 6)"), "%s", error_message());
    const char nul_in_comment[] = "# a comment\0 0 1 7\n0 4 1 2\n"; /* even where it would be ignored */
    write_bytes(path, nul_in_comment, sizeof nul_in_comment - 1);
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "r.txt:1: NUL byte"), "%s", error_message());
}
END_TEST

/* The rule of a requests file: a line that does not say a request rejects the whole file, before
 * anything is served; a well-formed request the model cannot serve is rejected on its own and
 * the others are served. */
START_TEST(test_requests_file_is_the_unit_of_syntax)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/r.txt", tmp);
    EngineRequest *r;
    int n;
    write_bytes(path, "0 2 1 2\n0.1 2 3\n0.2 two 4\n", 26);
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "r.txt:3: expected"), "%s", error_message());
    /* well-formed: fits; too long for seq_len 192; an id outside the vocabulary of 113; fits */
    char *text = xmalloc(4096, "a requests file");
    int used = snprintf(text, 4096, "0 2 1 2\n0 100");
    for (int i = 0; i < 100; i++)
        used += snprintf(text + used, 4096 - (size_t)used, " %d", i);
    snprintf(text + used, 4096 - (size_t)used, "\n0 2 5 500 6\n0.05 3 7\n");
    write_bytes(path, text, strlen(text));
    free(text);
    ck_assert_msg(engine_read_requests(path, NULL, 0, &r, &n) == 0, "%s", error_message());
    ck_assert_int_eq(n, 4);
    EngineOptions o = engine_default_options();
    o.fixed_step_s = 0.01;
    EngineResult res[4];
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&model, r, n, &o, res, &mt) == 0, "%s", error_message());
    ck_assert(res[0].status == ENGINE_DONE && res[0].n_tokens == 2);
    ck_assert_int_eq(res[1].status, ENGINE_REJECTED);
    ck_assert_msg(strstr(res[1].reason, "exceeds the model's seq_len 192"), "%s", res[1].reason);
    ck_assert_int_eq(res[2].status, ENGINE_REJECTED);
    ck_assert_msg(strstr(res[2].reason, "prompt token 1 is 500, outside the vocabulary"), "%s", res[2].reason);
    ck_assert(res[3].status == ENGINE_DONE && res[3].n_tokens == 3);
    engine_free_results(res, n);
    engine_free_metrics(&mt);
    engine_free_requests(r, n);
}
END_TEST

/* 200k requests in descending arrival order (an insertion sort took minutes on these): the queue
 * order is by arrival, and by file order among equal arrival times. */
START_TEST(test_arrival_order_of_200k_requests)
{
    const int N = 200000;
    char path[4200];
    snprintf(path, sizeof path, "%s/desc.txt", tmp);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < N; i++) /* lines 2k and 2k + 1 arrive together */
        fprintf(f, "%.3f 1 %d\n", (N / 2 - i / 2) * 0.001, i % 100);
    ck_assert_int_eq(fclose(f), 0);
    EngineRequest *r;
    int n;
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), 0);
    ck_assert_int_eq(n, N);
    int *order = xmalloc((size_t)N * sizeof(int), "arrival order");
    ck_assert_int_eq(engine_arrival_order(r, n, order), 0);
    for (int j = 0; j < N; j++) { /* the last pair first, each pair in file order */
        const int want = N - 2 - 2 * (j / 2) + j % 2;
        ck_assert_msg(order[j] == want, "position %d: request %d, expected %d", j, order[j], want);
    }
    free(order);
    engine_free_requests(r, n);
}
END_TEST

/* ==== the program ================================================================================ */

static void run(ProcResult *r, const char *const *args)
{
    char prog[4200];
    program_path(prog, sizeof prog, "06_batching");
    const char *argv[24] = {prog};
    for (int i = 0; args[i]; i++)
        argv[i + 1] = args[i];
    ck_assert_int_eq(run_program(r, argv), 0);
}

static void expect_error(const char *const *args, const char *expect)
{
    ProcResult r;
    run(&r, args);
    ck_assert_msg(r.status == 1, "'%s': exit status %d, stderr: %s", expect, r.status, r.err);
    ck_assert_msg(count_lines(r.err) == 1, "'%s': expected one error line, got: %s", expect, r.err);
    ck_assert_msg(strstr(r.err, expect), "expected '%s' in: %s", expect, r.err);
}

/* The value of `key` in a metrics file's text ("key\tvalue" lines); fails the test when absent. */
static double tsv_value(const char *text, const char *key)
{
    const size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, key, n) == 0 && p[n] == '\t')
            return strtod(p + n + 1, NULL);
    ck_abort_msg("no %s in the metrics: %s", key, text);
    return NAN;
}

START_TEST(test_serve_command)
{
    char req[4200], met[4200], its[4200], p5[4200];
    snprintf(req, sizeof req, "%s/r.txt", tmp);
    snprintf(met, sizeof met, "%s/m.tsv", tmp);
    snprintf(its, sizeof its, "%s/i.tsv", tmp);
    program_path(p5, sizeof p5, "05_paged");
    /* the third arrives first; the fourth can never fit (2000 + 100 > seq_len 2048) */
    write_text(req, "0.2 6 1 2 3\n0.1 5 7\n0 4 9 8 7 6\n0 100 5\n");
    FILE *f = fopen(req, "a");
    fprintf(f, "0.3 100");
    for (int i = 0; i < 2000; i++)
        fprintf(f, " %d", i % 1000);
    fprintf(f, "\n");
    fclose(f);
    ProcResult r;
    run(&r, (const char *[]){"serve", "--requests", req, "--max-batch", "2", "--metrics", met, "--iterations", its,
                             "--shuffle", "5", "--device", "cpu", NULL});
    ck_assert_msg(r.status == 0, "%s", r.err);
    ck_assert_int_eq(count_lines(r.out), 5);
    /* each line equals chapter 05 alone */
    const char *prompts[4] = {"1 2 3", "7", "9 8 7 6", "5"}, *news[4] = {"6", "5", "4", "100"};
    char *save = NULL, *line = strtok_r(r.out, "\n", &save);
    for (int i = 0; i < 4; i++, line = strtok_r(NULL, "\n", &save)) {
        const char *argv[] = {p5, "generate", "--prompt", prompts[i], "--max-new", news[i], NULL};
        ProcResult g;
        ck_assert_int_eq(run_program(&g, argv), 0);
        g.out[strcspn(g.out, "\n")] = 0;
        char *expect = xmalloc(strlen(g.out) + 16, "expected line");
        sprintf(expect, "%d: %s", i, g.out);
        ck_assert_msg(line && strcmp(line, expect) == 0, "request %d: '%s' against '%s'", i, line, expect);
        free(expect);
    }
    ck_assert_msg(line && strncmp(line, "4: rejected: prompt (2000 tokens) + max_new (100) exceeds", 57) == 0, "%s",
                  line);
    ck_assert_msg(strstr(r.err, "4 served, 1 rejected"), "%s", r.err);
    char buf[4096];
    FILE *m = fopen(met, "r");
    ck_assert_ptr_nonnull(m);
    size_t got = fread(buf, 1, sizeof buf - 1, m);
    buf[got] = 0;
    fclose(m);
    ck_assert_msg(strstr(buf, "throughput_tokens_per_s\t") && strstr(buf, "ttft_p99_s\t") &&
                      strstr(buf, "preemptions\t0\n") && strstr(buf, "requests_rejected\t1\n") &&
                      strstr(buf, "requests_served\t4\n") && strstr(buf, "output_tokens\t115\n"),
                  "%s", buf);
    /* the values, not only the names: the clock is the machine's, so the checks are the ones any
     * clock satisfies -- the iterations file has the metrics' iteration count, its last clock is
     * the makespan (the first request arrives at 0), the throughput is the tokens over it, every
     * prompt token is prefilled once (no preemption) and every token after a request's first is
     * one decode, and the percentiles are ordered */
    const double makespan = tsv_value(buf, "makespan_s"), throughput = tsv_value(buf, "throughput_tokens_per_s");
    const int iterations = (int)tsv_value(buf, "iterations");
    ck_assert_msg(makespan > 0 && fabs(throughput - 115 / makespan) <= 1e-3 * throughput + 1e-3, "%s", buf);
    ck_assert_msg(tsv_value(buf, "ttft_p50_s") <= tsv_value(buf, "ttft_p99_s") &&
                      tsv_value(buf, "tpot_p50_s") <= tsv_value(buf, "tpot_p99_s") && tsv_value(buf, "tpot_p50_s") > 0,
                  "%s", buf);
    FILE *it = fopen(its, "r");
    ck_assert_ptr_nonnull(it);
    ck_assert_ptr_nonnull(fgets(buf, sizeof buf, it));
    ck_assert_str_eq(buf, "# iteration\tclock_s\trunning\twaiting\tscheduled\tprefill_tokens\tdecode_tokens\tblocks_used\n");
    int rows = 0, prefill = 0, decode = 0;
    double clock = 0, last_clock = 0;
    for (int idx, running, waiting, sched, pf, dc, blocks;
         fscanf(it, "%d %lf %d %d %d %d %d %d", &idx, &clock, &running, &waiting, &sched, &pf, &dc, &blocks) == 8; rows++) {
        ck_assert_int_eq(idx, rows);
        ck_assert_msg(clock >= last_clock && sched <= 2 && pf + dc >= 1, "row %d", idx);
        last_clock = clock, prefill += pf, decode += dc;
    }
    fclose(it);
    ck_assert_int_eq(rows, iterations);
    ck_assert_msg(fabs(last_clock - makespan) <= 2e-6, "last clock %f, makespan %f", last_clock, makespan);
    ck_assert_int_eq(prefill, 3 + 1 + 4 + 1); /* the served prompts */
    ck_assert_int_eq(decode, 115 - 4);        /* each served request's first token comes from its prefill */
}
END_TEST

/* serve's (and the program's) bad input: one error line, exit 1. */
START_TEST(test_serve_command_errors)
{
    char req[4200];
    snprintf(req, sizeof req, "%s/r.txt", tmp);
    expect_error((const char *[]){"serve", NULL}, "--requests");
    expect_error((const char *[]){"serve", "--requests", "/nonexistent.txt", NULL}, "cannot open");
    write_text(req, "0 4 1 2\n0 x 1\n");
    expect_error((const char *[]){"serve", "--requests", req, NULL}, "r.txt:2:");
    write_text(req, "0 4 1 2\n");
    expect_error((const char *[]){"serve", "--requests", req, "--policy", "fifo", NULL}, "continuous|static");
    expect_error((const char *[]){"serve", "--requests", req, "--max-batch", "0", NULL},
                 "--max-batch expects an integer from 1 to 1048576, got '0'");
    /* the default pool of 2^20 sequences of 2048 tokens in blocks of 1: 2^31 blocks, said as such */
    expect_error((const char *[]){"serve", "--requests", req, "--max-batch", "1048576", "--block-size", "1", NULL},
                 "would need 2147483648 blocks");
    expect_error((const char *[]){"serve", "--requests", req, "--temperature", "1e-40", NULL},
                 "--temperature 1e-40 is below the smallest normal float");
    expect_error((const char *[]){"serve", "--requests", "--max-batch", "2", NULL},
                 "--requests needs a value, got the option '--max-batch'");
    expect_error((const char *[]){"bench", "--device", "cuda", "--checkpoint", req, NULL},
                 "--checkpoint is timed on the CPU, and --device cuda runs the GPU rows only");
    /* bench's --checkpoint defaults to the environment's CHECKPOINT (how make bench passes it);
     * an empty one is no checkpoint */
    setenv("CHECKPOINT", "/nonexistent/model.bin", 1);
    expect_error((const char *[]){"bench", "--requests", "4", NULL}, "/nonexistent/model.bin");
    expect_error((const char *[]){"bench", "--device", "cuda", NULL}, "the environment's CHECKPOINT");
    setenv("CHECKPOINT", "", 1);
    expect_error((const char *[]){"bench", "--requests", "3", NULL}, "--requests expects an integer from 4");
    unsetenv("CHECKPOINT");
    expect_error((const char *[]){"frobnicate", NULL}, "unknown subcommand");
}
END_TEST

/* Hostile files around serve: special files as inputs are refused at once; an output that cannot
 * be written is refused before serving, or (a full disk) makes the run fail -- never exit 0 with
 * results or metrics lost, never "N served" for lines that were not written. */
START_TEST(test_serve_special_files_and_lost_output)
{
    char req[4200], fifo[4200], met[4200];
    snprintf(req, sizeof req, "%s/r.txt", tmp), snprintf(fifo, sizeof fifo, "%s/fifo", tmp);
    snprintf(met, sizeof met, "%s/m.tsv", tmp);
    write_text(req, "0 2 1 2 3\n0 1 4\n");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    char prog[4200];
    program_path(prog, sizeof prog, "06_batching");
    const struct {
        const char *argv[12];
        const char *stdout_to, *expect;
    } cases[] = {
        {.argv = {"serve", "--requests", fifo}, .expect = "fifo: is a FIFO, not a regular file"},
        {.argv = {"serve", "--requests", tmp}, .expect = "is a folder, expected a file"},
        {.argv = {"serve", "--requests", req, "--tokenizer", tmp}, .expect = "is a folder, expected a file"},
        {.argv = {"serve", "--requests", req, "--tokenizer", fifo}, .expect = "is a FIFO"},
        {.argv = {"serve", "--requests", req, "--checkpoint", fifo}, .expect = "is a FIFO"},
        {.argv = {"serve", "--requests", req, "--metrics", tmp}, .expect = "is a folder, expected a file"},
        {.argv = {"serve", "--requests", req, "--iterations", fifo, "--device", "cpu"},
         .expect = "no process is reading"},
        {.argv = {"serve", "--requests", req, "--metrics", "/dev/full", "--device", "cpu"},
         .expect = "/dev/full: write failed: No space left on device"},
        {.argv = {"serve", "--requests", req, "--device", "cpu"}, .stdout_to = "/dev/full",
         .expect = "writing standard output: No space left"},
        {.argv = {"gen-requests", "--out", fifo}, .expect = "no process is reading"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *argv[16] = {prog};
        for (int i = 0; cases[c].argv[i]; i++)
            argv[i + 1] = cases[c].argv[i];
        ProcResult r;
        ck_assert_int_eq(run_program_limited(&r, argv, 60, cases[c].stdout_to), 0);
        ck_assert_msg(r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, cases[c].expect),
                      "case %zu: status %d, stderr: %s", c, r.status, r.err);
        ck_assert_msg(!strstr(r.err, "served"), "case %zu reported its results: %s", c, r.err);
        if (c != 7 && c != 8) /* refused before serving: nothing printed */
            ck_assert_msg(r.out[0] == '\0', "case %zu printed: %s", c, r.out);
    }
}
END_TEST

/* bench validates the device and the checkpoint before it opens an output or times anything:
 * the previous --out file (and the README's data) are left as they were, and it fails fast. */
START_TEST(test_bench_validates_before_it_writes)
{
    char out[4200], before[4096], after[4096];
    snprintf(out, sizeof out, "%s/rows.tsv", tmp);
    write_text(out, "previous rows\n");
    testing_folder_names(tmp, before, sizeof before);
    char why[256];
    const int gpu = testing_cuda_available(why, sizeof why);
    const char *cases[][8] = {
        {"bench", "--checkpoint", "/nonexistent/model.bin", "--out", out, NULL},
        {"bench", "--device", "cuda", "--out", out, NULL}, /* only without a GPU */
    };
    for (int c = 0; c < (gpu ? 1 : 2); c++) {
        char prog[4200];
        const char *argv[10] = {program_path(prog, sizeof prog, "06_batching")};
        for (int i = 0; cases[c][i]; i++)
            argv[i + 1] = cases[c][i];
        ProcResult r;
        ck_assert_int_eq(run_program_limited(&r, argv, 30, NULL), 0);
        ck_assert_msg(r.status == 1 && count_lines(r.err) == 1, "case %d: status %d: %s", c, r.status, r.err);
        ck_assert_msg(strstr(r.err, c ? "no usable GPU" : "cannot open"), "case %d: %s", c, r.err);
        testing_folder_names(tmp, after, sizeof after);
        ck_assert_str_eq(before, after);
        char got[64] = "";
        FILE *f = fopen(out, "r");
        ck_assert_ptr_nonnull(f);
        ck_assert_ptr_nonnull(fgets(got, sizeof got, f));
        fclose(f);
        ck_assert_str_eq(got, "previous rows\n");
    }
}
END_TEST

static int write_workload(const char *path, void *ctx)
{
    (void)ctx;
    EngineRequest *w = workload(400, 5.0, 3); /* ~25 KiB of text */
    const int rc = engine_write_requests(path, w, 400);
    engine_free_requests(w, 400);
    return rc;
}

/* gen-requests' writer on a disk that fills up: the previous requests file stays whole. */
START_TEST(test_failed_requests_write_keeps_the_previous_file)
{
    char path[4200], before[4096], after[4096], err[512];
    snprintf(path, sizeof path, "%s/r.txt", tmp);
    write_text(path, "0 4 1 2 3\n");
    testing_folder_names(tmp, before, sizeof before);
    const int status = testing_write_limited(write_workload, path, NULL, 4096, err, sizeof err);
    ck_assert_msg(status == 1 && strstr(err, "r.txt: write failed: File too large"), "status %d: %s", status, err);
    testing_folder_names(tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
    EngineRequest *r;
    int n;
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), 0);
    ck_assert(n == 1 && r[0].n_prompt == 3);
    engine_free_requests(r, n);
}
END_TEST

START_TEST(test_gen_requests_and_verify)
{
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/a.txt", tmp), snprintf(b, sizeof b, "%s/b.txt", tmp);
    ProcResult r;
    run(&r, (const char *[]){"gen-requests", "--out", a, "--n", "30", "--rate", "4", "--seed", "3", NULL});
    ck_assert_msg(r.status == 0, "%s", r.err);
    run(&r, (const char *[]){"gen-requests", "--out", b, "--n", "30", "--rate", "4", "--seed", "3", NULL});
    EngineRequest *x, *y;
    int nx, ny;
    ck_assert_int_eq(engine_read_requests(a, NULL, 0, &x, &nx), 0);
    ck_assert_int_eq(engine_read_requests(b, NULL, 0, &y, &ny), 0);
    ck_assert_int_eq(nx, 30);
    for (int i = 0; i < 30; i++) /* the same seed gives the same workload, arrivals in order */
        ck_assert(x[i].arrival == y[i].arrival && x[i].n_prompt == y[i].n_prompt &&
                  (i == 0 || x[i].arrival >= x[i - 1].arrival) && x[i].n_prompt + x[i].max_new <= 2048);
    engine_free_requests(x, nx), engine_free_requests(y, ny);
    /* under emulation the quick verify (one workload, greedy: 9 cases, not 36); the in-process
     * tests above cover arrivals over time and sampling there */
    const int small = testing_small();
    run(&r, (const char *[]){"verify", "--device", "cpu", small ? "--quick" : NULL, NULL});
    char line[256];
    int passed = -1, failed = -1;
    ck_assert_msg(r.status == 0, "%s", r.out);
    ck_assert_int_eq(sscanf(last_line(r.out, line, sizeof line), "%d passed, %d failed", &passed, &failed), 2);
    ck_assert_int_ge(passed, small ? 9 : 36);
    ck_assert_int_eq(failed, 0);
    const char *subs[] = {"--help", "serve", "gen-requests", "verify", "bench"};
    for (int i = 0; i < 5; i++) {
        run(&r, (const char *[]){subs[i], i ? "--help" : NULL, NULL});
        ck_assert_msg(r.status == 0 && strstr(r.out, "usage: 06_batching"), "%s --help: %s", subs[i], r.out);
    }
}
END_TEST


/* ==== text: a tokenizer and a checkpoint made here, through chapters 04, 05 and 06 =============== */

START_TEST(test_text_through_chapters_04_05_06)
{
    char tok[4200], ck[4200], req[4200], p4[4200], p5[4200];
    snprintf(tok, sizeof tok, "%s/tok.bin", tmp), snprintf(ck, sizeof ck, "%s/tiny.bin", tmp);
    snprintf(req, sizeof req, "%s/r.txt", tmp);
    program_path(p4, sizeof p4, "04_kvcache"), program_path(p5, sizeof p5, "05_paged");
    const int V = testing_write_tiny_tokenizer(tok);
    ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = V,
                     .seq_len = 128, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 8), 0);
    ck_assert_int_eq(model_save(&m, ck), 0);
    model_free(&m);
    const char *prompts[2] = {"Once upon a time", "the and\\nin"}; /* the second with an escaped newline */
    FILE *f = fopen(req, "w");
    fprintf(f, "# text mode: the prompt is the rest of the line\n0 30 %s\n0.01 25 %s\n", prompts[0], prompts[1]);
    fclose(f);
    ProcResult r6;
    run(&r6, (const char *[]){"serve", "--checkpoint", ck, "--tokenizer", tok, "--requests", req, "--device", "cpu",
                              "--max-batch", "2", NULL});
    ck_assert_msg(r6.status == 0, "%s", r6.err);
    char *save = NULL, *line = strtok_r(r6.out, "\n", &save);
    for (int i = 0; i < 2; i++, line = strtok_r(NULL, "\n", &save)) {
        char prompt[64], news[8];
        snprintf(prompt, sizeof prompt, "%s", prompts[i]);
        text_unescape(prompt);
        snprintf(news, sizeof news, "%d", i ? 25 : 30);
        ProcResult r4, r5;
        const char *a4[] = {p4, "generate", "--checkpoint", ck, "--tokenizer", tok, "--prompt-text", prompt, "--max-new",
                            news, "--device", "cpu", NULL};
        const char *a5[] = {p5, "generate", "--checkpoint", ck, "--tokenizer", tok, "--prompt-text", prompt, "--max-new",
                            news, "--block-size", "4", NULL};
        ck_assert_int_eq(run_program(&r4, a4), 0);
        ck_assert_int_eq(run_program(&r5, a5), 0);
        ck_assert_msg(r4.status == 0 && r5.status == 0, "%s %s", r4.err, r5.err);
        ck_assert_str_eq(r4.out, r5.out); /* chapter 05's text is chapter 04's */
        /* chapter 06 prints the continuation alone, escaped onto one line */
        char prefix[16];
        snprintf(prefix, sizeof prefix, "%d: ", i);
        ck_assert_msg(line && strncmp(line, prefix, strlen(prefix)) == 0, "%s", line);
        char *cont = strdup(line + strlen(prefix));
        text_unescape(cont);
        char *whole = xmalloc(strlen(prompt) + strlen(cont) + 2, "whole text");
        sprintf(whole, "%s%s\n", prompt, cont);
        ck_assert_msg(strcmp(whole, r4.out) == 0, "request %d: chapter 06 '%s' against chapter 04 '%s'", i, whole,
                      r4.out);
        ck_assert_int_gt((int)strlen(cont), 10);
        free(cont), free(whole);
    }
}
END_TEST

/* A model whose logits are all zero (final norm weight 0): sampling is uniform, so where the
 * first BOS or EOS falls is known from the generator alone, without running the model. */
START_TEST(test_stop_at_bos_eos_in_every_chapter)
{
    char ck[4200];
    snprintf(ck, sizeof ck, "%s/flat.bin", tmp);
    ModelConfig c = {.dim = 32, .hidden_dim = 48, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .vocab_size = 40,
                     .seq_len = 200, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 2), 0);
    memset(m.w.rms_final, 0, (size_t)c.dim * sizeof(float));
    ck_assert_int_eq(model_save(&m, ck), 0);
    model_free(&m);
    ck_assert_int_eq(model_load(ck, &m), 0);
    const int prompt[3] = {TOKEN_BOS, 5, 6}, N = 150;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        /* the generator's own sequence: where does it first draw 1 or 2? */
        Rng rng;
        model_rng_seed(&rng, seed);
        float *flat = xcalloc((size_t)c.vocab_size, sizeof(float), "logits");
        int stop = -1, want[150];
        for (int t = 0; t < N && stop < 0; t++) {
            memset(flat, 0, (size_t)c.vocab_size * sizeof(float));
            want[t] = model_sample(flat, c.vocab_size, 1.0f, &rng);
            if (want[t] == TOKEN_BOS || want[t] == TOKEN_EOS)
                stop = t;
        }
        free(flat);
        ck_assert_int_ge(stop, 0); /* 2 of 40 tokens stop: within 150 draws for these seeds */
        int out4[150], out5[150];
        GenOptions o4 = {.max_new = N, .temperature = 1.0f, .seed = seed, .use_cache = 1, .dtype = KV_F32, .kernel = 2,
                         .prefill_chunk = 0, .stop_at_bos_eos = 1};
        ck_assert_int_eq(kvcache_generate(&m, prompt, 3, &o4, out4, NULL), 0);
        PagedGenOptions o5 = {.max_new = N, .temperature = 1.0f, .seed = seed, .n_samples = 1, .block_size = 8,
                              .num_blocks = 0, .kernel = 2, .shuffle = 0, .stop_at_bos_eos = 1};
        ck_assert_int_eq(paged_generate(&m, prompt, 3, &o5, out5, NULL), 0);
        for (int t = 0; t < N; t++) {
            ck_assert_int_eq(out4[t], t < stop ? want[t] : -1);
            ck_assert_int_eq(out5[t], out4[t]);
        }
        EngineRequest req = {.arrival = 0.0, .max_new = N, .n_prompt = 3, .prompt = (int *)prompt};
        EngineOptions o = engine_default_options();
        o.temperature = 1.0f, o.seed = seed, o.stop_at_bos_eos = 1, o.fixed_step_s = 0.01;
        EngineResult res;
        EngineMetrics mt;
        ck_assert_int_eq(engine_serve(&m, &req, 1, &o, &res, &mt), 0);
        ck_assert_int_eq(res.n_tokens, stop);
        ck_assert(stop == 0 || memcmp(res.tokens, want, (size_t)stop * sizeof(int)) == 0);
        engine_free_results(&res, 1);
        engine_free_metrics(&mt);
    }
    model_free(&m);
}
END_TEST


/* ==== metrics on a fixed clock ====================================================================== */

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
    EngineRequest *r = workload(n, 0.0, 11);
    int **want = alone(r, n, 0.9f, 3);
    const int longest = longest_in_blocks(r, n, 4);
    const int expect_preemptions[2] = {59, 47}; /* continuous, static: counted once, pinned */
    for (int p = 0; p <= 1; p++) {
        EngineOptions o = engine_default_options();
        o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS, o.block_size = 4, o.num_blocks = longest, o.max_tokens = 32;
        o.temperature = 0.9f, o.seed = 3;
        EngineMetrics mt = serve_and_check(r, n, o, want, p ? "static, sampled, tight pool" : "continuous, sampled, tight pool");
        ck_assert_int_eq(mt.completed, n);
        ck_assert_msg(mt.preemptions == expect_preemptions[p], "%s: %d preemptions, expected %d",
                      engine_policy_name(o.policy), mt.preemptions, expect_preemptions[p]);
        engine_free_metrics(&mt);
    }
    free_want(want, n);
    engine_free_requests(r, n);
}
END_TEST

/* ==== bounded resources and determinism ============================================================ */

START_TEST(test_many_requests_through_a_small_pool)
{
    const int n = 200;
    EngineRequest *r = workload(n, 50.0, 41);
    const int longest = longest_in_blocks(r, n, 4);
    int **want = alone(r, n, 0.0f, 0);
    EngineOptions o = engine_default_options();
    o.block_size = 4, o.num_blocks = longest, o.max_batch = 16, o.max_tokens = 24;
    EngineMetrics mt = serve_and_check(r, n, o, want, "200 requests, a pool of the longest one's blocks");
    ck_assert_int_eq(mt.completed, n);
    ck_assert_int_gt(mt.preemptions, 0);
    engine_free_metrics(&mt);
    free_want(want, n);
    engine_free_requests(r, n);
}
END_TEST

START_TEST(test_a_long_requests_file_in_bounded_memory)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/long.txt", tmp);
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 100000; i++)
        fprintf(f, "%d.%03d %d %d %d %d\n", i / 1000, i % 1000, 1 + i % 7, i % 97, (i * 7) % 97, (i * 13) % 97);
    fclose(f);
    const size_t before = mem_rss_bytes();
    EngineRequest *r;
    int n;
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), 0);
    const size_t after = mem_rss_bytes();
    ck_assert_int_eq(n, 100000);
    ck_assert(r[99999].n_prompt == 3 && r[99999].max_new == 1 + 99999 % 7);
    /* about 40 bytes a request here; allow 64 MiB for 10^5 of them and the allocator's slack */
    ck_assert_msg(after < before || after - before < (size_t)64 << 20, "reading 10^5 requests took %zu MiB",
                  (after - before) >> 20);
    engine_free_requests(r, n);
}
END_TEST

START_TEST(test_serve_is_deterministic)
{
    char req[4200];
    snprintf(req, sizeof req, "%s/r.txt", tmp);
    ProcResult a;
    run(&a, (const char *[]){"gen-requests", "--out", req, "--n", "12", "--rate", "30", "--prompt-median", "6",
                             "--output-median", "8", "--seed", "9", NULL});
    ck_assert_msg(a.status == 0, "%s", a.err);
    const char *threads[3] = {"1", "2", "2"};
    char first[65536] = "";
    for (int i = 0; i < 3; i++) { /* the same output with 1 thread, 2 threads, and 2 threads again */
        setenv("OMP_NUM_THREADS", threads[i], 1);
        ProcResult r;
        run(&r, (const char *[]){"serve", "--requests", req, "--max-batch", "4", "--device", "cpu", NULL});
        unsetenv("OMP_NUM_THREADS");
        ck_assert_msg(r.status == 0, "%s", r.err);
        if (i == 0)
            snprintf(first, sizeof first, "%s", r.out);
        else
            ck_assert_msg(strcmp(first, r.out) == 0, "run %d (%s threads) differs", i, threads[i]);
    }
}
END_TEST

#if HAVE_CUDA
/* On the GPU the engine keeps the chapter's promise in its own arithmetic (engine.cu): every
 * request gets bit for bit the tokens it gets served alone on the GPU, under both policies,
 * chunked prefill, a pool tight enough to preempt and shuffled blocks, greedy and sampled. */
START_TEST(test_gpu_engine_is_batch_invariant)
{
    const int n = 24;
    EngineRequest *r = workload(n, 0.0, 11); /* the workload of the CPU's preemption test */
    const int longest = longest_in_blocks(r, n, 4);
    for (int t = 0; t < 2; t++) {
        EngineOptions base = engine_default_options();
        base.cuda = 1, base.temperature = t ? 0.9f : 0.0f, base.seed = 3, base.fixed_step_s = 0.01;
        int **want; /* each request served alone on the GPU */
        ck_assert_msg(engine_serve_alone(&model, r, n, &base, &want) == 0, "%s", error_message());
        const struct {
            EnginePolicy policy;
            int max_batch, max_tokens, block_size, num_blocks, shuffle;
            const char *what;
        } cfgs[] = {
            {.policy = ENGINE_CONTINUOUS, .max_batch = 8, .max_tokens = 9, .block_size = 4, .num_blocks = 60,
             .what = "cuda continuous, chunked prefill"},
            {.policy = ENGINE_STATIC, .max_batch = 8, .max_tokens = 9, .block_size = 4, .num_blocks = 60,
             .what = "cuda static, chunked prefill"},
            {.policy = ENGINE_CONTINUOUS, .max_batch = 32, .max_tokens = 256, .block_size = 16, .num_blocks = 0,
             .shuffle = 5, .what = "cuda continuous, shuffled blocks"},
            {.policy = ENGINE_CONTINUOUS, .max_batch = 32, .max_tokens = 32, .block_size = 4, .num_blocks = longest,
             .shuffle = 3, .what = "cuda continuous, a pool of the longest one's blocks"},
        };
        for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
            EngineOptions o = base;
            o.policy = cfgs[ci].policy, o.max_batch = cfgs[ci].max_batch, o.max_tokens = cfgs[ci].max_tokens;
            o.block_size = cfgs[ci].block_size, o.num_blocks = cfgs[ci].num_blocks, o.shuffle = (uint64_t)cfgs[ci].shuffle;
            EngineMetrics mt = serve_and_check(r, n, o, want, cfgs[ci].what);
            if (cfgs[ci].num_blocks == longest) /* as on the CPU: the schedule is the host's */
                ck_assert_int_gt(mt.preemptions, 0);
            engine_free_metrics(&mt);
        }
        engine_free_tokens(want, n);
    }
    engine_free_requests(r, n);
}
END_TEST

/* The GPU against the CPU: two fp32 computations that add in different orders. One mixed forward
 * (prefills, then decodes beside a prefill chunk) gives each sequence the CPU's logits within
 * 1e-4; and greedy tokens of the engine on the GPU are chapter 05's alone on the CPU, or part
 * only where the CPU's two best logits are a near-tie. */
START_TEST(test_gpu_engine_agrees_with_cpu)
{
    const ModelConfig *c = &model.c;
    const int bs = 4, mb = (c->seq_len + bs - 1) / bs, V = c->vocab_size;
    EngineGpu *g = engine_gpu_create(&model, 3 * mb, bs, 32, 4);
    ck_assert_msg(g != NULL, "%s", error_message());
    int seq[3][16], len[3] = {0, 0, 0}, tables[3 * 64];
    ck_assert_int_le(mb, 64);
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 16; j++)
            seq[i][j] = 3 + (i * 37 + j * 11) % (V - 3);
        for (int b = 0; b < mb; b++)
            tables[i * mb + b] = (2 - i) * mb + b; /* sequence i in the pool's blocks, last sequence first */
    }
    const int steps[2][3] = {{9, 5, 1}, {1, 3, 1}}; /* new tokens per sequence: prefills, then decode, chunk, decode */
    float *logits = xmalloc((size_t)3 * V * sizeof(float), "logits"), *want = xmalloc((size_t)V * sizeof(float), "logits");
    for (int st = 0; st < 2; st++) {
        int tokens[32], pos[32], q_start[4] = {0}, lens[3], out_rows[3], n = 0;
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < steps[st][i]; j++, n++)
                tokens[n] = seq[i][len[i] + j], pos[n] = len[i] + j;
            len[i] += steps[st][i], lens[i] = len[i], q_start[i + 1] = n, out_rows[i] = n - 1;
        }
        ck_assert_msg(engine_gpu_forward(g, n, tokens, pos, 3, q_start, lens, tables, 3, out_rows, logits) == 0, "%s",
                      error_message());
        for (int i = 0; i < 3; i++) {
            ck_assert_int_eq(kvcache_forward_nocache(&model, seq[i], len[i], want), 0);
            ck_assert_msg(compare_f32("gpu logits", logits + (size_t)i * V, want, (size_t)V, 1e-4, 1e-4, 5).n_bad == 0,
                          "step %d, sequence %d", st, i);
        }
    }
    free(logits), free(want);
    engine_gpu_free(g);

    const int n = 16;
    EngineRequest *r = workload(n, 0.0, 33);
    int **cpu = alone(r, n, 0.0f, 0);
    EngineOptions o = engine_default_options();
    o.cuda = 1, o.max_batch = 8, o.max_tokens = 9, o.block_size = 4, o.num_blocks = 60, o.fixed_step_s = 0.01;
    EngineResult *res = xcalloc((size_t)n, sizeof(EngineResult), "results");
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&model, r, n, &o, res, &mt) == 0, "%s", error_message());
    for (int i = 0; i < n; i++) {
        if (!cpu[i]) {
            ck_assert_int_eq(res[i].status, ENGINE_REJECTED);
            continue;
        }
        ck_assert_int_eq(res[i].n_tokens, r[i].max_new);
        double gap = 0.0;
        const int at = kvcache_greedy_divergence(&model, r[i].prompt, r[i].n_prompt, cpu[i], res[i].tokens,
                                                 r[i].max_new, &gap);
        ck_assert_msg(at >= -1, "%s", error_message());
        ck_assert_msg(at == -1 || gap <= KVCACHE_NEAR_TIE,
                      "request %d: the GPU's token %d is %d, the CPU's %d, logits %g apart (not a near-tie)", i, at,
                      res[i].tokens[at], cpu[i][at], gap);
        if (at >= 0)
            printf("06_batching: request %d: GPU and CPU part at token %d, a near-tie (%.1e)\n", i, at, gap);
    }
    engine_free_results(res, n);
    engine_free_metrics(&mt);
    free(res);
    free_want(cpu, n);
    engine_free_requests(r, n);
}
END_TEST
#endif

/* ==== hostile inputs (common/hostile.h): one error line, exit 1, nothing written ================= */

#define SERVE06 "06_batching", "serve", "--device", "cpu", "--checkpoint", "@/model.bin"
static const HostileCase hostile_cases[] = {
    {.argv = {SERVE06, "--requests", "@/missing.txt"}, .expect = "missing.txt"},
    {.argv = {SERVE06, "--requests", "@/fifo"}, .expect = "not a regular file"},
    {.argv = {SERVE06, "--requests", "@/adir"}, .expect = "is a folder"},
    {.argv = {SERVE06, "--requests", "@/r_nul.txt"}, .expect = "r_nul.txt:2: NUL byte"},
    {.argv = {SERVE06, "--requests", "@/r_bad.txt"}, .expect = "r_bad.txt:3"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--tokenizer", "@/fifo"}, .expect = "not a regular file"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--tokenizer", "@/adir"}, .expect = "is a folder"},
    {.argv = {"06_batching", "serve", "--device", "cpu", "--requests", "@/r.txt", "--max-batch", "1048576", "--block-size", "1"},
     .expect = "--max-batch 1048576"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--num-blocks", "268435456", "--block-size", "4096"},
     .expect = "memory available"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--max-batch", "0"}, .expect = "--max-batch"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--max-tokens-per-step", "0"}, .expect = "--max-tokens-per-step"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--block-size", "0"}, .expect = "--block-size"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--num-blocks", "-5"}, .expect = "--num-blocks"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--policy", "fastest"}, .expect = "--policy"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--temperature", "1e-40"}, .expect = "--temperature"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--metrics", "@/fifo"}, .expect = "FIFO"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--metrics", "@/out"}, .expect = "is a folder"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--metrics", "/dev/full"}, .expect = "/dev/full"},
    {.argv = {SERVE06, "--requests", "@/r.txt", "--iterations", "/dev/full"}, .expect = "/dev/full"},
    {.argv = {SERVE06, "--requests", "@/r.txt"}, .expect = "standard output", .stdout_to = "/dev/full"},
    {.argv = {SERVE06, "--requests", "--metrics", "@/out.tsv"}, .expect = "--requests"},
    {.argv = {"06_batching", "serve", "--requests", "@/r.txt", "--checkpoint", "@/wrap.bin"}, .expect = "overflows"},
    {.argv = {"06_batching", "gen-requests", "--out", "@/fifo"}, .expect = "FIFO"},
    {.argv = {"06_batching", "gen-requests", "--out", "@/out"}, .expect = "is a folder"},
    {.argv = {"06_batching", "gen-requests", "--out", "/dev/full"}, .expect = "/dev/full"},
    {.argv = {"06_batching", "gen-requests", "--out", "@/out.txt", "--n", "-1"}, .expect = "--n"},
    {.argv = {"06_batching", "gen-requests", "--out", "@/out.txt", "--rate", "-2"}, .expect = "--rate"},
    {.argv = {"06_batching", "gen-requests", "--out", "@/out.txt", "--workload", "bimodal"}, .expect = "--workload"},
    {.argv = {"06_batching", "bench", "--out", "@/out.tsv", "--checkpoint", "@/missing.bin"},
     .expect = "missing.bin"},
    {.argv = {"06_batching", "bench", "--out", "@/out.tsv", "--requests", "0"}, .expect = "--requests"},
    {.argv = {"06_batching", "verify", "--frobnicate"}, .expect = "--frobnicate"},
};

/* Without a GPU, asking for one must fail before anything is opened or timed. */
static const HostileCase hostile_cases_no_gpu[] = {
    {.argv = {"06_batching", "bench", "--device", "cuda", "--out", "@/out.tsv"}, .expect = "no usable GPU"},
    {.argv = {"06_batching", "serve", "--checkpoint", "@/model.bin", "--requests", "@/r.txt", "--device", "cuda"},
     .expect = "no usable GPU"},
};

START_TEST(test_hostile_inputs)
{
    hostile_fixtures(tmp);
    const int n = (int)(sizeof hostile_cases / sizeof hostile_cases[0]);
    int failed = hostile_run(tmp, hostile_cases, n);
    char why[256];
    if (!testing_cuda_available(why, sizeof why))
        failed += hostile_run(tmp, hostile_cases_no_gpu, (int)(sizeof hostile_cases_no_gpu / sizeof hostile_cases_no_gpu[0]));
    ck_assert_msg(failed == 0, "%d hostile cases failed (listed above)", failed);
}
END_TEST

static Suite *engine_suite(void)
{
    Suite *s = suite_create("06_batching");
    TCase *tc = tcase_create("against chapter 05");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, model_setup, model_teardown);
    tcase_add_test(tc, test_policies_and_batch_sizes_match_chapter05);
    tcase_add_test(tc, test_chunked_prefill_and_preemption_match_chapter05);
    tcase_add_test(tc, test_aborted_requests_leave_the_rest_unchanged);
    tcase_add_test(tc, test_shuffled_order_sampling_and_rejections);
    tcase_add_test(tc, test_continuous_keeps_the_batch_fuller);
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_default_pool_sizes);
    tcase_add_test(tc, test_overflowing_logits_stop_the_engine);
    suite_add_tcase(s, tc);

    tc = tcase_create("metrics and sampled preemption");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, model_setup, model_teardown);
    tcase_add_test(tc, test_metrics_on_a_fixed_clock);
    tcase_add_test(tc, test_sampled_preemption_matches_chapter05);
    suite_add_tcase(s, tc);

    tc = tcase_create("requests and program");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_checked_fixture(tc, model_setup, model_teardown);
    tcase_add_test(tc, test_requests_parser);
    tcase_add_test(tc, test_requests_text_too_long_refused_unread);
    tcase_add_test(tc, test_requests_nul_byte);
    tcase_add_test(tc, test_requests_file_is_the_unit_of_syntax);
    tcase_add_test(tc, test_arrival_order_of_200k_requests);
    tcase_add_test(tc, test_serve_command);
    tcase_add_test(tc, test_serve_command_errors);
    tcase_add_test(tc, test_serve_special_files_and_lost_output);
    tcase_add_test(tc, test_bench_validates_before_it_writes);
    tcase_add_test(tc, test_failed_requests_write_keeps_the_previous_file);
    tcase_add_test(tc, test_gen_requests_and_verify);
    tcase_add_test(tc, test_text_through_chapters_04_05_06);
    tcase_add_test(tc, test_stop_at_bos_eos_in_every_chapter);
    tcase_add_test(tc, test_many_requests_through_a_small_pool);
    tcase_add_test(tc, test_a_long_requests_file_in_bounded_memory);
    tcase_add_test(tc, test_serve_is_deterministic);
    suite_add_tcase(s, tc);

    tc = tcase_create("hostile inputs");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_hostile_inputs);
    suite_add_tcase(s, tc);

    if (testing_cuda_cases("06_batching")) { /* asked in a child process: this one must not start CUDA */
#if HAVE_CUDA
        tc = tcase_create("cuda");
        tcase_set_timeout(tc, 300);
        tcase_add_checked_fixture(tc, model_setup, model_teardown);
        tcase_add_test(tc, test_gpu_engine_is_batch_invariant);
        tcase_add_test(tc, test_gpu_engine_agrees_with_cpu);
        suite_add_tcase(s, tc);
#endif
    }
    return s;
}

int main(void) { return testing_main("test_06_batching", engine_suite()); }
