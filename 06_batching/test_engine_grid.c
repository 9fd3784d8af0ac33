/*
 * test_engine_grid.c: chapter 06's iteration x sequence grid and the static-padded policy.
 *
 * The grid (EngineOptions.trace, grid.h) on three requests worked out by hand under each policy:
 * which iteration runs each prefill chunk, each decode, who waits and who is padding; the grid's
 * columns against the iteration log, its decode cells against the tokens generated, its
 * preemption cells against the preemption count. Static-padded batching computes more and
 * changes no token: every request gets chapter 05's tokens alone, bit for bit, and every
 * iteration of a padded batch is a full rectangle.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "06_batching/engine.h"
#include "06_batching/grid.h"
#include "06_batching/test_engine.h"
#include "common/error.h"
#include "common/testing.h"

/* ==== the three hand-counted requests ============================================================== */

/* A: arrives at 0, 5 prompt tokens, 3 new; B: at 0, 2 prompt, 2 new; C: at 1, 3 prompt, 2 new.
 * max-batch 2, 4 tokens per iteration, each iteration 1 s of the clock (so C joins the queue
 * before iteration 1), a pool with room for all. */
static EngineRequest hand_reqs[3];
static int hand_prompts[3][5];

static void hand_setup(void)
{
    const int n_prompt[3] = {5, 2, 3}, max_new[3] = {3, 2, 2};
    const double arrival[3] = {0, 0, 1};
    for (int i = 0; i < 3; i++) {
        for (int t = 0; t < n_prompt[i]; t++)
            hand_prompts[i][t] = (11 * i + 5 * t + 2) % model.c.vocab_size;
        hand_reqs[i] = (EngineRequest){.arrival = arrival[i], .max_new = max_new[i], .n_prompt = n_prompt[i],
                                       .prompt = hand_prompts[i]};
    }
}

/* Serves the three requests under policy p into a grid; checks their tokens against chapter 05
 * alone and the grid against the iteration log: column t holds exactly iteration t's tokens
 * (prefill + decode + padding). */
static EngineGrid serve_hand(EnginePolicy p, EngineMetrics *mt)
{
    EngineGrid g = engine_grid_empty(3);
    EngineOptions o = engine_default_options();
    o.policy = p, o.max_batch = 2, o.max_tokens = 4, o.block_size = 4, o.fixed_step_s = 1.0, o.keep_log = 1;
    o.check_invariants = 1, o.trace = engine_grid_record, o.trace_ctx = &g;
    EngineResult res[3];
    ck_assert_msg(engine_serve(&model, hand_reqs, 3, &o, res, mt) == 0, "%s", error_message());
    int **want = alone(hand_reqs, 3, 0.0f, o.seed);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(res[i].n_tokens, hand_reqs[i].max_new);
        ck_assert_msg(memcmp(res[i].tokens, want[i], (size_t)res[i].n_tokens * sizeof(int)) == 0,
                      "%s: request %d's tokens differ from chapter 05 alone", engine_policy_name(p), i);
    }
    free_want(want, 3);
    engine_free_results(res, 3);
    ck_assert_int_eq(g.iterations, mt->iterations);
    for (int t = 0; t < g.iterations; t++) {
        const EngineIteration *it = &mt->log[t];
        ck_assert_msg(engine_grid_column_slots(&g, t) == it->prefill_tokens + it->decode_tokens + it->padded_tokens,
                      "%s, iteration %d: the column holds %d slots, the log %d + %d + %d", engine_policy_name(p), t,
                      engine_grid_column_slots(&g, t), it->prefill_tokens, it->decode_tokens, it->padded_tokens);
    }
    return g;
}

/* Row i of the grid as its marks, e.g. "PPdd ". */
static void row_marks(const EngineGrid *g, int i, char *out)
{
    for (int t = 0; t < g->iterations; t++)
        out[t] = engine_grid_mark(engine_grid_at(g, t, i)->state);
    out[g->iterations] = '\0';
}

/* The grid of p against rows worked out by hand; a prefill chunk holds tokens[i][t] tokens. */
static void expect_rows(EnginePolicy p, const char *const rows[3], int iterations, long padded)
{
    EngineMetrics mt;
    EngineGrid g = serve_hand(p, &mt);
    ck_assert_msg(g.iterations == iterations, "%s: %d iterations, expected %d", engine_policy_name(p), g.iterations,
                  iterations);
    for (int i = 0; i < 3; i++) {
        char got[64];
        row_marks(&g, i, got);
        ck_assert_msg(strcmp(got, rows[i]) == 0, "%s, request %d: '%s', expected '%s'", engine_policy_name(p), i, got,
                      rows[i]);
        /* the iteration of a request's last prompt chunk gives its first token; each decode one more */
        ck_assert_int_eq(engine_grid_count(&g, i, ENGINE_CELL_DECODE), hand_reqs[i].max_new - 1);
    }
    ck_assert_int_eq(mt.padded, padded);
    engine_grid_free(&g);
    engine_free_metrics(&mt);
}

/* Continuous. Iteration 0: A's first chunk (4 of its 5, the whole budget); B arrived but the
 * budget is spent, so B waits; C has not arrived. 1: A's last prompt token (a chunk of 1, its
 * first token), B admitted with its 2 (its first token); C waits (the batch is full). 2: A and B
 * decode; B is done (2 tokens). 3: A decodes its third token and is done; C admitted (3 tokens).
 * 4: C decodes, done. 5 iterations, nothing thrown away. */
START_TEST(test_grid_continuous_by_hand)
{
    const char *const rows[3] = {"PPdd ", "-Pd  ", " --Pd"};
    expect_rows(ENGINE_CONTINUOUS, rows, 5, 0);
}
END_TEST

/* Static. Iteration 0: A and B admitted together; A takes the whole budget (4), so B is in the
 * batch with no token ('.'). 1: A's last prompt token, B's 2; C arrives and waits. 2: both
 * decode; B done. 3: A decodes alone (its third token); C still waits: nobody joins a running
 * static batch. 4: the batch is over, C admitted: its prompt. 5: C decodes. 6 iterations. */
START_TEST(test_grid_static_by_hand)
{
    const char *const rows[3] = {"PPdd  ", ".Pd   ", " ---Pd"};
    expect_rows(ENGINE_STATIC, rows, 6, 0);
}
END_TEST

/* Static-padded. A and B admitted; the padded prompt is 5 wide (A's), B's 2 tokens right-aligned
 * in columns 3 and 4; the budget of 4 shared by 2 members: 2 columns per iteration. Iteration
 * 0: columns 0-1, A computes 2, B 2 slots of padding ('p'). 1: columns 2-3, A 2, B 1 (column 3)
 * and 1 padding. 2: column 4, A 1 and B 1: both first tokens. 3: both decode; B done. 4: A
 * decodes its third token, B's slot is computed and thrown away ('p'). 5: C alone, its 3 prompt
 * tokens. 6: C decodes. 7 iterations, 2 + 1 + 1 = 4 slots thrown away. */
START_TEST(test_grid_static_padded_by_hand)
{
    const char *const rows[3] = {"PPPdd  ", "pPPdp  ", " ----Pd"};
    expect_rows(ENGINE_STATIC_PADDED, rows, 7, 4);
}
END_TEST

/* ==== static-padded on workloads, preemption cells ================================================= */

/* Per iteration, every member of a padded batch computes the same number of slots: the cells
 * that compute anything in one column all hold tokens + padded = the same width. */
static void check_rectangles(const EngineGrid *g, const char *what)
{
    for (int t = 0; t < g->iterations; t++) {
        int width = -1;
        for (int i = 0; i < g->n; i++) {
            const EngineCell *c = engine_grid_at(g, t, i);
            const int w = c->tokens + c->padded;
            if (w == 0)
                continue;
            ck_assert_msg(width < 0 || w == width, "%s, iteration %d: request %d computes %d slots, another %d", what,
                          t, i, w, width);
            width = w;
        }
    }
}

/* Every request under static-padded gets exactly its tokens alone (serve_and_check, bit for
 * bit), arrivals together and over time, batch sizes 1 to 32, budgets that chunk the padded
 * prompts; padding is computed (more slots than continuous batching computes), no preemption. */
START_TEST(test_static_padded_matches_chapter05)
{
    const int n = 20;
    for (int arrivals = 0; arrivals <= 1; arrivals++) {
        Requests q = requests_alone(n, arrivals ? 30.0 : 0.0, 5 + (uint64_t)arrivals, 0.0f, 0);
        const int batches[3] = {1, 4, 32}, budgets[3] = {256, 7, 32};
        for (int b = 0; b < 3; b++) {
            EngineOptions o = engine_default_options();
            o.policy = ENGINE_STATIC_PADDED, o.max_batch = batches[b], o.max_tokens = budgets[b], o.block_size = 8;
            EngineGrid g = engine_grid_empty(n);
            o.trace = engine_grid_record, o.trace_ctx = &g;
            char what[96];
            snprintf(what, sizeof what, "static-padded max-batch %d, budget %d, arrivals %d", batches[b], budgets[b],
                     arrivals);
            EngineMetrics mt = serve_and_check(&q, o, what);
            ck_assert_int_eq(mt.completed, n);
            ck_assert_int_eq(mt.preemptions, 0);
            check_rectangles(&g, what);
            o.policy = ENGINE_CONTINUOUS, o.trace = NULL;
            EngineMetrics c = serve_and_check(&q, o, what);
            ck_assert_msg((batches[b] == 1 ? mt.padded == 0 : mt.padded > 0) && mt.computed == c.computed + mt.padded,
                          "%s: %ld slots, %ld thrown away; continuous %ld", what, mt.computed, mt.padded, c.computed);
            for (int t = 0; t < mt.iterations; t++) /* the padding is inside the budget */
                ck_assert_int_le(mt.log[t].prefill_tokens + mt.log[t].decode_tokens + mt.log[t].padded_tokens,
                                 budgets[b]);
            engine_grid_free(&g);
            engine_free_metrics(&mt), engine_free_metrics(&c);
        }
        requests_free(&q);
    }
}
END_TEST

/* A pool just big enough for the longest request: each preemption is one 'X' cell (a sequence
 * is preempted at most once per iteration), and sampled tokens still match chapter 05. */
START_TEST(test_grid_counts_preemptions)
{
    const int n = 16;
    Requests q = requests_alone(n, 0.0, 11, 0.9f, 3);
    for (int p = 0; p <= 1; p++) {
        EngineOptions o = engine_default_options();
        o.policy = p ? ENGINE_STATIC : ENGINE_CONTINUOUS, o.temperature = 0.9f, o.seed = 3;
        o.block_size = 4, o.num_blocks = q.longest, o.max_tokens = 32;
        EngineGrid g = engine_grid_empty(n);
        o.trace = engine_grid_record, o.trace_ctx = &g;
        EngineMetrics mt = serve_and_check(&q, o, p ? "static, tight pool" : "continuous, tight pool");
        int x = 0, r = 0;
        for (int i = 0; i < n; i++)
            x += engine_grid_count(&g, i, ENGINE_CELL_PREEMPTED), r += engine_grid_count(&g, i, ENGINE_CELL_RECOMPUTE);
        ck_assert_int_gt(mt.preemptions, 0);
        ck_assert_int_eq(x, mt.preemptions);
        ck_assert_int_gt(r, 0);
        for (int t = 0; t < g.iterations; t++)
            ck_assert_int_eq(engine_grid_column_slots(&g, t), mt.log[t].prefill_tokens + mt.log[t].decode_tokens);
        engine_grid_free(&g);
        engine_free_metrics(&mt);
    }
    requests_free(&q);
}
END_TEST

/* The padding rows have no place in the GPU's batch: static-padded on the GPU is refused. */
START_TEST(test_static_padded_refuses_the_gpu)
{
    EngineOptions o = engine_default_options();
    o.policy = ENGINE_STATIC_PADDED, o.cuda = 1;
    EngineResult res[3];
    EngineMetrics mt;
    ck_assert_int_eq(engine_serve(&model, hand_reqs, 3, &o, res, &mt), -1);
    ck_assert_msg(strstr(error_message(), "static-padded runs on the CPU only"), "%s", error_message());
    EnginePolicy p;
    ck_assert_int_eq(engine_policy_parse("static-padded", &p), 0);
    ck_assert_int_eq(p, ENGINE_STATIC_PADDED);
    ck_assert_str_eq(engine_policy_name(p), "static-padded");
}
END_TEST

/* ==== the case =================================================================================== */

static void grid_setup(void)
{
    model_setup();
    hand_setup();
}

TestingCase engine_grid_case(void)
{
    return (TestingCase){.name = "grid and static-padded", .timeout_s = 300, .setup = grid_setup,
                         .teardown = model_teardown,
                         .tests = {test_grid_continuous_by_hand, test_grid_static_by_hand,
                                   test_grid_static_padded_by_hand, test_static_padded_matches_chapter05,
                                   test_grid_counts_preemptions, test_static_padded_refuses_the_gpu}};
}
