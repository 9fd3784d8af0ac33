/*
 * test_engine_prefix.c: chapter 06's prefix caching -- the case "prefix caching".
 *
 * Prefix caching changes when tokens are computed and how many, never what they are: on
 * workloads whose requests share a system prompt, and on multi-turn conversations, every
 * request gets exactly chapter 05's tokens alone with caching on and with it off, under both
 * policies, max-batch 1, 4 and 32, a budget that chunks every prompt, a pool so tight that cached
 * blocks are evicted and sequences preempted, requests arriving together, over time and listed in
 * a shuffled order, greedy and sampled (the forward is batch-invariant). On a hand-counted workload
 * of three requests: the budget counts only the tokens computed, and the hit rate, the tokens
 * saved, the cached blocks and every block back at the end are the numbers worked out below.
 * Static-padded batching never caches. The program: serve's output is the same on and off, its
 * metrics say what was reused, gen-requests writes prompts that share what they should.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "05_paged/paged.h"
#include "06_batching/engine.h"
#include "06_batching/test_engine.h"
#include "common/error.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/testing.h"

/* ==== workloads that share prefixes ================================================================ */

/* n requests of kind k for the test model (seq_len 192): a 20-token system prompt + questions of
 * 2..9 tokens, or conversations of 3 turns; arriving at `rate` per second (0: all at once). */
static Requests prefix_requests(EnginePrefixKind k, int n, double rate, uint64_t seed, float temperature)
{
    const PrefixWorkloadSpec w = {.kind = k, .n = n, .rate = rate, .shared = k == ENGINE_MULTI_TURN ? 6 : 20,
                                  .question_min = 2, .question_max = 9, .out_min = 3, .out_max = 12, .turns = 3,
                                  .turn_gap = 0.05, .seq_len = model.c.seq_len, .vocab = model.c.vocab_size,
                                  .seed = seed};
    Requests q = {.n = n};
    ck_assert_msg(engine_make_prefix_workload(&w, &q.r) == 0, "%s", error_message());
    q.want = alone(q.r, n, temperature, 5);
    q.longest = longest_in_blocks(q.r, n, 4);
    return q;
}

/* Lists the requests in a shuffled order (their arrival times and wants travel with them). */
static void shuffle_requests(Requests *q, uint64_t seed)
{
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = q->n - 1; i > 0; i--) {
        const int j = (int)rng_below(&rng, (uint32_t)(i + 1));
        EngineRequest t = q->r[i];
        int *w = q->want[i];
        q->r[i] = q->r[j], q->r[j] = t;
        q->want[i] = q->want[j], q->want[j] = w;
    }
}

/* One setting of the grid below: o served with caching off and on, both against chapter 05
 * alone (serve_and_check); the run with caching on returned, the one off checked for no caching. */
static EngineMetrics serve_on_and_off(const Requests *q, EngineOptions o, const char *what)
{
    char label[160];
    o.prefix_caching = 0;
    snprintf(label, sizeof label, "%s, caching off", what);
    EngineMetrics off = serve_and_check(q, o, label);
    ck_assert_msg(off.prefix_looked_up == 0 && off.prefix_reused == 0 && off.cached_blocks == 0 && off.evictions == 0,
                  "%s: caching off looked up %ld tokens", what, off.prefix_looked_up);
    o.prefix_caching = 1;
    snprintf(label, sizeof label, "%s, caching on", what);
    EngineMetrics on = serve_and_check(q, o, label);
    /* the tokens saved are exactly the prefill not computed (a preempted sequence may recompute
     * more or less in either run, so only without preemption) */
    if (off.preemptions == 0 && on.preemptions == 0)
        ck_assert_msg(on.prefill_computed + on.prefix_reused == off.prefill_computed,
                      "%s: %ld computed + %ld reused, %ld computed without caching", what, on.prefill_computed,
                      on.prefix_reused, off.prefill_computed);
    ck_assert_int_le(on.cached_blocks, on.num_blocks);
    ck_assert_int_le(on.cached_blocks, on.peak_cached_blocks);
    engine_free_metrics(&off);
    return on;
}

/* ==== the tokens, on and off ======================================================================== */

/* Workload k (0: a shared system prompt, 1: multi-turn) arriving all at once, over time, and over
 * time listed in a shuffled order; both policies; max-batch 1, 4 and 32; budgets of 256 tokens
 * and of 3 and 7 (every prompt in chunks). */
static void tokens_on_and_off(EnginePrefixKind k)
{
    const int n = 18;
    const struct {
        int max_batch, max_tokens;
    } cfg[4] = {{1, 256}, {4, 3}, {32, 256}, {32, 7}};
    for (int arrivals = 0; arrivals <= 2; arrivals++) {
        Requests q = prefix_requests(k, n, arrivals ? 40.0 : 0.0, 3 + (uint64_t)k, 0.0f);
        if (arrivals == 2)
            shuffle_requests(&q, 8);
        long reused = 0;
        for (int p = 0; p <= 1; p++)
            for (int c = 0; c < 4; c++) {
                EngineOptions o = engine_default_options();
                o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS, o.max_batch = cfg[c].max_batch;
                o.max_tokens = cfg[c].max_tokens, o.block_size = 4;
                char what[128];
                snprintf(what, sizeof what, "%s, %s, arrivals %d, max-batch %d, budget %d",
                         k ? "multi-turn" : "system prompt", engine_policy_name(o.policy), arrivals, o.max_batch,
                         o.max_tokens);
                EngineMetrics mt = serve_on_and_off(&q, o, what);
                reused += mt.prefix_reused;
                engine_free_metrics(&mt);
            }
        ck_assert_msg(reused > 0, "workload %d, arrivals %d: nothing was ever found cached", k, arrivals);
        requests_free(&q);
    }
}

START_TEST(test_shared_system_prompt_tokens_on_and_off) { tokens_on_and_off(ENGINE_SHARED_PREFIX); }
END_TEST

START_TEST(test_multi_turn_tokens_on_and_off) { tokens_on_and_off(ENGINE_MULTI_TURN); }
END_TEST

/* A pool of just the longest request's blocks: cached blocks are evicted to make room, sequences
 * are preempted and re-admitted over what is still cached; greedy and sampled, blocks shuffled. */
START_TEST(test_prefix_caching_with_eviction_and_preemption)
{
    const int n = 16;
    for (int t = 0; t <= 1; t++) {
        const float temperature = t ? 0.9f : 0.0f;
        Requests q = prefix_requests(ENGINE_SHARED_PREFIX, n, 0.0, 9, temperature);
        long evictions = 0, preemptions = 0;
        for (int p = 0; p <= 1; p++) {
            EngineOptions o = engine_default_options();
            o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS, o.block_size = 4, o.num_blocks = q.longest + 2;
            o.max_tokens = 16, o.shuffle = 5, o.temperature = temperature, o.seed = 5;
            EngineMetrics mt = serve_on_and_off(&q, o, p ? "static, tight pool" : "continuous, tight pool");
            evictions += mt.evictions, preemptions += mt.preemptions;
            engine_free_metrics(&mt);
        }
        ck_assert_msg(evictions > 0 && preemptions > 0, "%ld evictions, %ld preemptions: the pool was not tight",
                      evictions, preemptions);
        requests_free(&q);
    }
    /* block size 1: every token its own block, so every shared token is found */
    Requests q = prefix_requests(ENGINE_MULTI_TURN, 12, 30.0, 4, 0.0f);
    EngineOptions o = engine_default_options();
    o.block_size = 1, o.num_blocks = 2 * q.longest * 4, o.max_tokens = 5, o.max_batch = 6;
    EngineMetrics mt = serve_on_and_off(&q, o, "bs 1, budget 5, tight");
    ck_assert_int_gt(mt.prefix_reused, 0);
    engine_free_metrics(&mt);
    requests_free(&q);
}
END_TEST

/* Static-padded batching never caches, whatever the option says, and its tokens are unchanged. */
START_TEST(test_static_padded_never_caches)
{
    Requests q = prefix_requests(ENGINE_SHARED_PREFIX, 8, 0.0, 2, 0.0f);
    EngineOptions o = engine_default_options();
    o.policy = ENGINE_STATIC_PADDED, o.max_batch = 4, o.max_tokens = 40, o.block_size = 4, o.prefix_caching = 1;
    EngineMetrics mt = serve_and_check(&q, o, "static-padded, caching asked for");
    ck_assert_msg(mt.prefix_looked_up == 0 && mt.prefix_reused == 0 && mt.cached_blocks == 0 &&
                      mt.peak_cached_blocks == 0,
                  "static-padded looked up %ld tokens", mt.prefix_looked_up);
    engine_free_metrics(&mt);
    requests_free(&q);
}
END_TEST

/* ==== hand-counted ================================================================================ */

/* Block size 4, a budget of 8 tokens, each iteration 1 s of the clock. P is 16 tokens.
 *   A: P, 4 new, arrives at 0.    Iterations 0 and 1 prefill it in two chunks of 8; after each,
 *      its full blocks are named (2, then 4 of them).
 *   B: P + 3 tokens, 2 new, and C: P, 1 new, arrive at 2 (before iteration 2).
 *   Iteration 2: A decodes (1 token, 7 left in the budget). B finds P's 4 blocks (16 tokens; at
 *      most n - 1 = 18, in whole blocks) and computes 3; C finds 3 blocks (at most 15 tokens: its
 *      last token is always computed, for its logits) and computes 4: 1 + 3 + 4 = 8 -- both fit
 *      only because the budget counts what is computed, not the 19 + 16 tokens they hold.
 *   Looked up 16 + 19 + 16 = 51 tokens, reused 16 + 12 = 28; prefilled 16 + 3 + 4 = 23 (51 off).
 *   C's own block 3 (P's tokens 12..15 again) is not named: A's block holds that name. At the
 *   end: A's 4 blocks of P and B's block 4 (its positions 16..19, full and computed) are cached --
 *   A's block 4 and C's are partly computed or unnamed and went back empty. */
START_TEST(test_budget_and_hit_rate_by_hand)
{
    int P[19], tok_c[16];
    for (int t = 0; t < 19; t++)
        P[t] = (7 * t + 3) % model.c.vocab_size;
    memcpy(tok_c, P, sizeof tok_c);
    EngineRequest r[3] = {{.arrival = 0, .max_new = 4, .n_prompt = 16, .prompt = P},
                          {.arrival = 2, .max_new = 2, .n_prompt = 19, .prompt = P},
                          {.arrival = 2, .max_new = 1, .n_prompt = 16, .prompt = tok_c}};
    int **want = alone(r, 3, 0.0f, 42);
    for (int on = 0; on <= 1; on++) {
        EngineOptions o = engine_default_options();
        o.block_size = 4, o.max_tokens = 8, o.fixed_step_s = 1.0, o.keep_log = 1, o.check_invariants = 1;
        o.prefix_caching = on;
        EngineResult res[3];
        EngineMetrics mt;
        ck_assert_msg(engine_serve(&model, r, 3, &o, res, &mt) == 0, "%s", error_message());
        for (int i = 0; i < 3; i++)
            ck_assert_msg(res[i].n_tokens == r[i].max_new &&
                              memcmp(res[i].tokens, want[i], (size_t)r[i].max_new * sizeof(int)) == 0,
                          "caching %d: request %d's tokens differ from chapter 05 alone", on, i);
        const EngineIteration *it2 = &mt.log[2];
        if (on) {
            ck_assert_msg(it2->scheduled == 3 && it2->prefill_tokens == 7 && it2->decode_tokens == 1 &&
                              it2->reused_tokens == 28,
                          "iteration 2: %d sequences, %d prefill + %d decode tokens, %d reused", it2->scheduled,
                          it2->prefill_tokens, it2->decode_tokens, it2->reused_tokens);
            ck_assert_int_eq(mt.prefix_looked_up, 51);
            ck_assert_int_eq(mt.prefix_reused, 28);
            ck_assert_double_eq(mt.prefix_hit_rate, 28.0 / 51.0);
            ck_assert_int_eq(mt.prefill_computed, 23);
            ck_assert_int_eq(mt.cached_blocks, 5);
            ck_assert_int_eq(mt.peak_cached_blocks, 5);
            ck_assert_int_eq(mt.evictions, 0);
            ck_assert_msg(res[2].ttft_s == 1.0, "C's TTFT %g, expected 1 (its first iteration)", res[2].ttft_s);
        } else { /* B takes the 7 tokens left; C waits for the next iteration */
            ck_assert_msg(it2->scheduled == 2 && it2->prefill_tokens == 7 && it2->reused_tokens == 0,
                          "caching off, iteration 2: %d sequences, %d prefill tokens", it2->scheduled,
                          it2->prefill_tokens);
            ck_assert_int_eq(mt.prefill_computed, 51);
            ck_assert_int_eq(mt.cached_blocks, 0);
        }
        engine_free_results(res, 3);
        engine_free_metrics(&mt);
    }
    free_want(want, 3);
}
END_TEST

/* ==== the workloads and the program ================================================================= */

START_TEST(test_prefix_workloads_share_what_they_should)
{
    const PrefixWorkloadSpec s = {.kind = ENGINE_SHARED_PREFIX, .n = 20, .rate = 5.0, .shared = 30,
                                  .question_min = 4, .question_max = 9, .out_min = 2, .out_max = 5,
                                  .seq_len = 192, .vocab = 113, .seed = 1};
    EngineRequest *r;
    ck_assert_int_eq(engine_make_prefix_workload(&s, &r), 0);
    for (int i = 0; i < s.n; i++) {
        ck_assert(r[i].n_prompt >= 34 && r[i].n_prompt <= 39 && r[i].max_new >= 2 && r[i].max_new <= 5);
        ck_assert(memcmp(r[i].prompt, r[0].prompt, 30 * sizeof(int)) == 0);
        ck_assert(i == 0 || r[i].arrival >= r[i - 1].arrival);
    }
    engine_free_requests(r, s.n);
    PrefixWorkloadSpec m = s;
    m.kind = ENGINE_MULTI_TURN, m.shared = 0, m.turns = 3, m.turn_gap = 1.5, m.n = 9;
    ck_assert_int_eq(engine_make_prefix_workload(&m, &r), 0);
    for (int i = 0; i < m.n; i++) /* turn t: the previous prompt + its max_new answer ids + 4..9 new */
        if (i % 3) {
            const int grown = r[i].n_prompt - r[i - 1].n_prompt - r[i - 1].max_new;
            ck_assert_msg(grown >= 4 && grown <= 9, "request %d grew by %d", i, grown);
            ck_assert(memcmp(r[i].prompt, r[i - 1].prompt, (size_t)r[i - 1].n_prompt * sizeof(int)) == 0);
            ck_assert(r[i].arrival == r[i - 1].arrival + 1.5);
        }
    engine_free_requests(r, m.n);
    m.shared = 190; /* 190 + 9 + 5 > 192 */
    ck_assert_int_eq(engine_make_prefix_workload(&m, &r), -1);
    ck_assert_msg(strstr(error_message(), "exceed seq_len 192"), "%s", error_message());
}
END_TEST

/* `06_batching args...` into r. */
static void run(ProcResult *r, const char *const *args) { ck_assert_int_eq(testing_run(r, "06_batching", args), 0); }

START_TEST(test_serve_with_and_without_prefix_caching)
{
    char req[4200], met[4200];
    testing_tmp_path(req, sizeof req, "shared.txt"), testing_tmp_path(met, sizeof met, "m.tsv");
    ProcResult r, off;
    run(&r, (const char *[]){"gen-requests", "--out", req, "--workload", "shared-prefix", "--n", "6", "--rate", "0",
                             "--shared-prefix", "40", "--output-median", "2", NULL});
    ck_assert_msg(r.status == 0 && strstr(r.err, "6 shared-prefix requests"), "%s", r.err);
    /* one at a time: the first request computes the 40 shared tokens (2 full blocks of 16 named),
     * each of the 5 others finds them: 5 x 32 tokens reused */
    run(&r, (const char *[]){"serve", "--requests", req, "--device", "cpu", "--max-batch", "1", "--metrics", met,
                             NULL});
    ck_assert_msg(r.status == 0 && strstr(r.err, "prefix caching on") && strstr(r.err, "hit rate"), "%s", r.err);
    char text[4096];
    FILE *f = fopen(met, "r");
    ck_assert_ptr_nonnull(f);
    text[fread(text, 1, sizeof text - 1, f)] = 0;
    fclose(f);
    ck_assert_msg(strstr(text, "prefix_caching\ton\n") && strstr(text, "prefix_tokens_reused\t160\n"), "%s", text);
    run(&off, (const char *[]){"serve", "--requests", req, "--device", "cpu", "--max-batch", "1", "--prefix-caching",
                               "off", NULL});
    ck_assert_msg(off.status == 0 && strstr(off.err, "prefix caching off") && !strstr(off.err, "hit rate"), "%s",
                  off.err);
    ck_assert_str_eq(off.out, r.out); /* the same tokens */
    run(&r, (const char *[]){"serve", "--requests", req, "--prefix-caching", "maybe", NULL});
    ck_assert_msg(r.status == 1 && strstr(r.err, "on|off"), "%s", r.err);
}
END_TEST

TestingCase engine_prefix_case(void)
{
    return (TestingCase){.name = "prefix caching", .timeout_s = 300, .temp_dir = 1, .setup = model_setup,
                         .teardown = model_teardown,
                         .tests = {test_shared_system_prompt_tokens_on_and_off, test_multi_turn_tokens_on_and_off,
                                   test_prefix_caching_with_eviction_and_preemption,
                                   test_static_padded_never_caches, test_budget_and_hit_rate_by_hand,
                                   test_prefix_workloads_share_what_they_should,
                                   test_serve_with_and_without_prefix_caching}};
}
