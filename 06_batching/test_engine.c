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

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "06_batching/engine.h"
#include "common/device.h"
#include "common/error.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/testing.h"
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
    WorkloadSpec w = {n, rate, WORKLOAD_SKEWED, 10, 14, model.c.seq_len, model.c.vocab_size, seed};
    EngineRequest *r;
    ck_assert_int_eq(engine_make_workload(&w, &r), 0);
    return r;
}

/* want[i]: chapter 05 alone on request i (NULL when it cannot run). */
static int **alone(const EngineRequest *r, int n, float temperature, uint64_t seed)
{
    int **want = calloc((size_t)n, sizeof(int *));
    for (int i = 0; i < n; i++) {
        if ((long)r[i].n_prompt + r[i].max_new > model.c.seq_len)
            continue;
        want[i] = malloc(((size_t)r[i].max_new + 1) * sizeof(int));
        PagedGenOptions g = {r[i].max_new, temperature, seed + (uint64_t)i, 1, 8, 0, 2, 0, 0};
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
    EngineResult *res = calloc((size_t)n, sizeof(EngineResult));
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
        EngineResult *res = calloc((size_t)n, sizeof(EngineResult));
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
    r = realloc(r, (size_t)(n + 2) * sizeof(EngineRequest));
    r[n] = (EngineRequest){0.1, 150, 50, calloc(50, sizeof(int)), 0.0};
    r[n + 1] = (EngineRequest){0.2, 100, 60, calloc(60, sizeof(int)), 0.0}; /* 159 tokens: 40 blocks of 4 */
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
    EngineResult *res = calloc((size_t)n + 2, sizeof(EngineResult));
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
    engine_free_requests(r, 2);
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
    ck_assert_msg(engine_read_requests(path, NULL, &r, &n) == 0, "%s", error_message());
    ck_assert_int_eq(n, 3);
    ck_assert(r[0].arrival == 0.0 && r[0].max_new == 4 && r[0].n_prompt == 3 && r[0].prompt[2] == 3);
    ck_assert(r[1].arrival == 0.5 && r[1].max_new == 2 && r[1].n_prompt == 1 && r[1].prompt[0] == 7);
    ck_assert(r[2].arrival == 1.25 && r[2].max_new == 0 && r[2].n_prompt == 2);
    engine_free_requests(r, n);
    const struct {
        const char *text, *expect;
    } bad[] = {
        {"0 4 1 2\n0 4\n", "r.txt:2: the prompt is empty"},
        {"0 4 1\n\n-1 4 1\n", "r.txt:3: the arrival time"},
        {"x 4 1\n", "r.txt:1: the arrival time"},
        {"0 four 1\n", "r.txt:1: expected '<arrival_seconds> <max_new_tokens> <prompt ids...>'"},
        {"0 -2 1\n", "r.txt:1: expected"},
        {"0 3 1 2 x\n", "r.txt:1: prompt token 2 is not a non-negative integer"},
        {"0 3 1 -5\n", "r.txt:1: prompt token 1"},
        {"# only comments\n\n", "no requests"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(path, bad[i].text);
        ck_assert_int_eq(engine_read_requests(path, NULL, &r, &n), -1);
        ck_assert_msg(strstr(error_message(), bad[i].expect), "case %zu: '%s' not in '%s'", i, bad[i].expect,
                      error_message());
    }
    ck_assert_int_eq(engine_read_requests("/nonexistent/r.txt", NULL, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "cannot open"), "%s", error_message());
    /* a generated workload survives the round trip through a file */
    EngineRequest *w = workload(9, 5.0, 2);
    ck_assert_int_eq(engine_write_requests(path, w, 9), 0);
    ck_assert_int_eq(engine_read_requests(path, NULL, &r, &n), 0);
    ck_assert_int_eq(n, 9);
    for (int i = 0; i < 9; i++) {
        ck_assert(fabs(r[i].arrival - w[i].arrival) < 1e-6 && r[i].max_new == w[i].max_new);
        ck_assert(r[i].n_prompt == w[i].n_prompt && memcmp(r[i].prompt, w[i].prompt, (size_t)w[i].n_prompt * 4) == 0);
    }
    engine_free_requests(r, n);
    engine_free_requests(w, 9);
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
        char *expect = malloc(strlen(g.out) + 16);
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
                      strstr(buf, "preemptions\t0") && strstr(buf, "requests_rejected\t1"),
                  "%s", buf);
    FILE *it = fopen(its, "r");
    ck_assert_ptr_nonnull(it);
    ck_assert_ptr_nonnull(fgets(buf, sizeof buf, it));
    ck_assert_msg(strstr(buf, "scheduled"), "%s", buf);
    fclose(it);
    expect_error((const char *[]){"serve", NULL}, "--requests");
    expect_error((const char *[]){"serve", "--requests", "/nonexistent.txt", NULL}, "cannot open");
    write_text(req, "0 4 1 2\n0 x 1\n");
    expect_error((const char *[]){"serve", "--requests", req, NULL}, "r.txt:2:");
    write_text(req, "0 4 1 2\n");
    expect_error((const char *[]){"serve", "--requests", req, "--policy", "fifo", NULL}, "continuous|static");
    expect_error((const char *[]){"serve", "--requests", req, "--max-batch", "0", NULL}, "--max-batch");
    expect_error((const char *[]){"frobnicate", NULL}, "unknown subcommand");
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
    ck_assert_int_eq(engine_read_requests(a, NULL, &x, &nx), 0);
    ck_assert_int_eq(engine_read_requests(b, NULL, &y, &ny), 0);
    ck_assert_int_eq(nx, 30);
    for (int i = 0; i < 30; i++) /* the same seed gives the same workload, arrivals in order */
        ck_assert(x[i].arrival == y[i].arrival && x[i].n_prompt == y[i].n_prompt &&
                  (i == 0 || x[i].arrival >= x[i - 1].arrival) && x[i].n_prompt + x[i].max_new <= 2048);
    engine_free_requests(x, nx), engine_free_requests(y, ny);
    run(&r, (const char *[]){"verify", "--device", "cpu", NULL});
    char line[256];
    int passed = -1, failed = -1;
    ck_assert_msg(r.status == 0, "%s", r.out);
    ck_assert_int_eq(sscanf(last_line(r.out, line, sizeof line), "%d passed, %d failed", &passed, &failed), 2);
    ck_assert_int_ge(passed, 36);
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
        char *whole = malloc(strlen(prompt) + strlen(cont) + 2);
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
    const int prompt[3] = {1, 5, 6}, N = 150;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        /* the generator's own sequence: where does it first draw 1 or 2? */
        Rng rng;
        model_rng_seed(&rng, seed);
        float *flat = calloc((size_t)c.vocab_size, sizeof(float));
        int stop = -1, want[150];
        for (int t = 0; t < N && stop < 0; t++) {
            memset(flat, 0, (size_t)c.vocab_size * sizeof(float));
            want[t] = model_sample(flat, c.vocab_size, 1.0f, &rng);
            if (want[t] == 1 || want[t] == 2)
                stop = t;
        }
        free(flat);
        ck_assert_int_ge(stop, 0); /* 2 of 40 tokens stop: within 150 draws for these seeds */
        int out4[150], out5[150];
        GenOptions o4 = {N, 1.0f, seed, 1, KV_F32, 2, 0, 1};
        ck_assert_int_eq(kvcache_generate(&m, prompt, 3, &o4, out4, NULL), 0);
        PagedGenOptions o5 = {N, 1.0f, seed, 1, 8, 0, 2, 0, 1};
        ck_assert_int_eq(paged_generate(&m, prompt, 3, &o5, out5, NULL), 0);
        for (int t = 0; t < N; t++) {
            ck_assert_int_eq(out4[t], t < stop ? want[t] : -1);
            ck_assert_int_eq(out5[t], out4[t]);
        }
        EngineRequest req = {0.0, N, 3, (int *)prompt, 0.0};
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
    ck_assert_int_eq(engine_read_requests(path, NULL, &r, &n), 0);
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
/* The GPU forward against chapter 05 on the CPU: cuBLAS sums in its own orders, so this is
 * agreement of greedy tokens between two fp32 computations, which near-ties could break; it
 * has held for chapter 04's GPU generation. */
START_TEST(test_gpu_forward_matches_chapter05)
{
    const int n = 16;
    EngineRequest *r = workload(n, 0.0, 31);
    int **want = alone(r, n, 0.0f, 0);
    for (int p = 0; p <= 1; p++) {
        EngineOptions o = engine_default_options();
        o.cuda = 1, o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS, o.max_batch = 8, o.max_tokens = 9;
        o.block_size = 4, o.num_blocks = 60;
        EngineMetrics mt = serve_and_check(r, n, o, want, p ? "cuda static" : "cuda continuous");
        engine_free_metrics(&mt);
    }
    free_want(want, n);
    engine_free_requests(r, n);
}
END_TEST
#endif

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
    suite_add_tcase(s, tc);

    tc = tcase_create("requests and program");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_checked_fixture(tc, model_setup, model_teardown);
    tcase_add_test(tc, test_requests_parser);
    tcase_add_test(tc, test_serve_command);
    tcase_add_test(tc, test_gen_requests_and_verify);
    tcase_add_test(tc, test_text_through_chapters_04_05_06);
    tcase_add_test(tc, test_stop_at_bos_eos_in_every_chapter);
    tcase_add_test(tc, test_many_requests_through_a_small_pool);
    tcase_add_test(tc, test_a_long_requests_file_in_bounded_memory);
    tcase_add_test(tc, test_serve_is_deterministic);
    suite_add_tcase(s, tc);

    char why[256];
    if (device_cuda_available(why, sizeof why)) {
#if HAVE_CUDA
        tc = tcase_create("cuda");
        tcase_set_timeout(tc, 300);
        tcase_add_checked_fixture(tc, model_setup, model_teardown);
        tcase_add_test(tc, test_gpu_forward_matches_chapter05);
        suite_add_tcase(s, tc);
#endif
    } else {
        printf("06_batching: CUDA tests skipped: %s\n", why);
    }
    return s;
}

int main(void)
{
    error_set_program("test_06_batching");
    SRunner *sr = srunner_create(engine_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
