/*
 * test_engine_live.c: the live engine (live.c) -- requests that enter while it runs, as the
 * server's engine thread drives it -- held to chapter 05 run alone on each request, whatever
 * entered when, and to an empty pool when everything has settled.
 */
#include <stdlib.h>

#include "06_batching/test_engine.h"

/* Drives l until every slot in slots[0..n) has settled. Returns the steps taken. */
static int run_until_settled(EngineLive *l, const int *slots, int n)
{
    int steps = 0;
    for (;;) {
        int open = 0;
        for (int i = 0; i < n; i++) {
            const int *t;
            const char *why;
            int k;
            const EngineLiveState st = engine_live_state(l, slots[i], &t, &k, &why);
            open += st == LIVE_WAITING || st == LIVE_RUNNING;
        }
        if (!open)
            return steps;
        ck_assert_int_eq(engine_live_step(l), 1);
        ck_assert_int_lt(++steps, 100000);
    }
}

/* The tokens slot holds against want (max_new + 1 entries, -1 past the end). */
static void expect_tokens(EngineLive *l, int slot, const int *want, int max_new, const char *what)
{
    const int *t;
    const char *why;
    int n;
    ck_assert_int_eq(engine_live_state(l, slot, &t, &n, &why), LIVE_DONE);
    ck_assert_int_eq(n, max_new);
    for (int j = 0; j < n; j++)
        ck_assert_msg(t[j] == want[j], "%s: token %d is %d, want %d", what, j, t[j], want[j]);
}

/* A live engine of n slots for q's requests, its pool tight enough for preemptions: a batch of
 * 4, 16 tokens an iteration, blocks of 4 tokens, 6 blocks more than the longest request needs. */
static EngineLive *tight_engine(const Requests *q, int n)
{
    EngineOptions o = engine_default_options();
    o.max_batch = 4, o.max_tokens = 16, o.block_size = 4, o.num_blocks = q->longest + 6;
    EngineLive *l = engine_live_open(&model, &o, n);
    ck_assert_ptr_nonnull(l);
    return l;
}

/* Requests entering a few at a time while others run (a new one after every third step) get
 * chapter 05's tokens, and the pool is empty at the end. */
START_TEST(test_live_requests_entering_while_it_runs_match_chapter05)
{
    const int n = 12;
    Requests q = requests_alone(n, 0.0, 31, 0.0f, 0);
    EngineLive *l = tight_engine(&q, n);
    int slots[12];
    for (int i = 0; i < n; i++) {
        slots[i] = engine_live_submit(l, &q.r[i]);
        ck_assert_int_ge(slots[i], 0);
        for (int s = 0; s < 3; s++)
            ck_assert_int_ge(engine_live_step(l), 0);
    }
    run_until_settled(l, slots, n);
    EngineLiveStats st;
    engine_live_stats(l, &st);
    for (int i = 0; i < n; i++)
        if (q.want[i])
            expect_tokens(l, slots[i], q.want[i], q.r[i].max_new, "entering while it runs");
    ck_assert_int_eq(st.blocks_used, 0);
    ck_assert_int_eq(st.running + st.waiting, 0);
    ck_assert_int_gt(st.iterations, 0);
    for (int i = 0; i < n; i++)
        engine_live_release(l, slots[i]);
    engine_live_stats(l, &st);
    ck_assert_int_eq(st.slots_used, 0);
    engine_live_close(l);
    requests_free(&q);
}
END_TEST

/* An aborted request leaves at the next step with the tokens it had, its blocks back in the pool;
 * the others' tokens are unchanged. */
START_TEST(test_live_abort_frees_its_blocks_and_leaves_the_rest)
{
    const int n = 5;
    Requests q = requests_alone(n, 0.0, 37, 0.0f, 0);
    EngineOptions o = engine_default_options();
    o.max_batch = 8, o.block_size = 4;
    EngineLive *l = engine_live_open(&model, &o, n);
    int slots[5];
    for (int i = 0; i < n; i++)
        slots[i] = engine_live_submit(l, &q.r[i]);
    for (int s = 0; s < 3; s++)
        ck_assert_int_eq(engine_live_step(l), 1);
    engine_live_abort(l, slots[2]);
    ck_assert_int_eq(engine_live_step(l), 1);
    const int *t;
    const char *why;
    int had;
    ck_assert_int_eq(engine_live_state(l, slots[2], &t, &had, &why), LIVE_ABORTED);
    ck_assert_str_eq(why, "the client went away");
    for (int j = 0; j < had; j++) /* what it had is chapter 05's beginning */
        ck_assert_int_eq(t[j], q.want[2][j]);
    run_until_settled(l, slots, n);
    for (int i = 0; i < n; i++)
        if (i != 2)
            expect_tokens(l, slots[i], q.want[i], q.r[i].max_new, "beside an abort");
    EngineLiveStats st;
    engine_live_stats(l, &st);
    ck_assert_int_eq(st.blocks_used, 0);
    ck_assert_int_eq(st.aborted, 1);
    engine_live_close(l);
    requests_free(&q);
}
END_TEST

/* Slots: a full engine refuses a submission until one is released; a request that can never run
 * settles at once as rejected, with the reason; one with nothing to generate is done at once. */
START_TEST(test_live_slots_rejections_and_empty_requests)
{
    EngineOptions o = engine_default_options();
    o.block_size = 4, o.num_blocks = 8;
    EngineLive *l = engine_live_open(&model, &o, 2);
    int prompt[40];
    for (int t = 0; t < 40; t++)
        prompt[t] = t;
    const EngineRequest too_big = {.max_new = 4, .n_prompt = 40, .prompt = prompt};  /* 11 blocks > 8 */
    const EngineRequest nothing = {.max_new = 0, .n_prompt = 3, .prompt = prompt};
    const EngineRequest small = {.max_new = 2, .n_prompt = 3, .prompt = prompt};
    const int a = engine_live_submit(l, &too_big), b = engine_live_submit(l, &nothing);
    ck_assert(a >= 0 && b >= 0 && a != b);
    ck_assert_int_eq(engine_live_submit(l, &small), -1);
    ck_assert_msg(strstr(error_message(), "all 2 request slots are taken"), "%s", error_message());
    const int *t;
    const char *why;
    int n;
    ck_assert_int_eq(engine_live_state(l, a, &t, &n, &why), LIVE_REJECTED);
    ck_assert_msg(strstr(why, "needs 11 blocks of 4 tokens at its longest, the pool has 8"), "%s", why);
    ck_assert_int_eq(engine_live_state(l, b, &t, &n, &why), LIVE_DONE);
    ck_assert_int_eq(n, 0);
    ck_assert_int_eq(engine_live_step(l), 0); /* nothing to run */
    engine_live_release(l, a);
    const int c = engine_live_submit(l, &small);
    ck_assert_int_eq(c, a); /* the freed slot */
    run_until_settled(l, &c, 1);
    ck_assert_int_eq(engine_live_state(l, c, &t, &n, &why), LIVE_DONE);
    ck_assert_int_eq(n, 2);
    ck_assert_ptr_null(engine_live_open(&model, &o, 0));
    engine_live_close(l);
}
END_TEST

/* A request's own temperature and seed (has_temperature, has_seed: the server's requests) sample as chapter 05
 * does with that temperature and seed, whatever the engine's options say. */
START_TEST(test_live_own_sampling_matches_chapter05)
{
    const int n = 4;
    Requests q = requests_alone(n, 0.0, 41, 0.8f, 1000); /* request i with seed 1000 + i */
    EngineOptions o = engine_default_options();
    o.temperature = 0.0f, o.seed = 5; /* not what the requests use */
    EngineLive *l = engine_live_open(&model, &o, n);
    int slots[4];
    for (int i = n - 1; i >= 0; i--) { /* in reverse: the slot order does not matter */
        EngineRequest r = q.r[i];
        r.has_temperature = r.has_seed = 1, r.temperature = 0.8f, r.seed = 1000 + (uint64_t)i;
        slots[i] = engine_live_submit(l, &r);
    }
    run_until_settled(l, slots, n);
    for (int i = 0; i < n; i++)
        if (q.want[i])
            expect_tokens(l, slots[i], q.want[i], q.r[i].max_new, "own sampling");
    engine_live_close(l);
    requests_free(&q);
}
END_TEST

/* What the server's page draws (live_view.c) against the engine's own invariants, after every step
 * of a tight pool: each block's reference count is the number of running tables holding it, the
 * blocks in use are the tables' distinct blocks, free + used + cached = the pool, a waiting
 * sequence holds no block; the queues listed are the engine's; the grid's last column is the last
 * iteration. Returns 1 when a preempted sequence was listed. */
static int check_view(const EngineLive *l, int n)
{
    EngineLiveStats st;
    engine_live_stats(l, &st);
    EngineLiveSeq seqs[16];
    const int k = engine_live_seqs(l, seqs, 16);
    ck_assert_int_le(k, 16);
    ck_assert_int_eq(k, st.running + st.waiting);
    unsigned char cached[512];
    const PagedPool *p = engine_live_pool(l, cached);
    ck_assert_int_le(p->num_blocks, 512);
    int count[512] = {0}, preempted = 0;
    for (int i = 0; i < k; i++) {
        const int waiting = seqs[i].phase == LIVE_SEQ_WAITING || seqs[i].phase == LIVE_SEQ_PREEMPTED;
        ck_assert_int_eq(waiting, i >= st.running); /* the running first, then the queue */
        ck_assert_msg(!waiting || seqs[i].n_blocks == 0, "waiting #%ld holds %d blocks", seqs[i].tag,
                      seqs[i].n_blocks);
        ck_assert(seqs[i].tag >= 1 && seqs[i].tag <= n);
        preempted += seqs[i].phase == LIVE_SEQ_PREEMPTED;
        for (int j = 0; j < seqs[i].n_blocks; j++)
            count[seqs[i].blocks[j]]++;
    }
    int used = 0, n_cached = 0, free_ = 0;
    for (int b = 0; b < p->num_blocks; b++) {
        ck_assert_msg(p->ref[b] == count[b], "block %d: reference count %d, in %d tables", b, p->ref[b], count[b]);
        ck_assert(!cached[b] || p->ref[b] == 0);
        used += count[b] > 0, n_cached += cached[b], free_ += p->ref[b] == 0 && !cached[b];
    }
    ck_assert_int_eq(used, st.blocks_used);
    ck_assert_int_eq(n_cached, st.blocks_cached);
    ck_assert_int_eq(free_ + used + n_cached, p->num_blocks);
    long it;
    const EngineLiveCell *col;
    const int nc = engine_live_history(l, 0, &it, &col);
    ck_assert(nc >= 0 && it == st.iterations - 1);
    for (int c = 0; c < nc; c++)
        ck_assert(col[c].state != ENGINE_CELL_NONE && col[c].tag >= 1 && col[c].tag <= n);
    return preempted > 0;
}

START_TEST(test_live_view_keeps_the_engines_invariants)
{
    const int n = 12;
    Requests q = requests_alone(n, 0.0, 31, 0.0f, 0);
    EngineLive *l = tight_engine(&q, n);
    int slots[12], preempted = 0, steps = 0;
    for (int i = 0; i < n; i++) {
        slots[i] = engine_live_submit(l, &q.r[i]);
        ck_assert_int_eq(engine_live_tag(l, slots[i]), i + 1); /* request numbers in submission order */
    }
    while (engine_live_step(l) == 1) {
        preempted += check_view(l, n);
        ck_assert_int_lt(++steps, 100000);
    }
    EngineLiveStats st;
    engine_live_stats(l, &st);
    ck_assert_msg(st.preemptions > 0 && preempted > 0, "%ld preemptions, %d steps listing a preempted sequence",
                  st.preemptions, preempted);
    long it;
    const EngineLiveCell *col;
    ck_assert_int_eq(engine_live_history(l, ENGINE_LIVE_HISTORY, &it, &col), -1); /* older than the ring */
    ck_assert_int_ge(engine_live_history(l, ENGINE_LIVE_HISTORY - 1, &it, &col), 0);
    ck_assert_int_eq(it, st.iterations - ENGINE_LIVE_HISTORY);
    engine_live_close(l);
    requests_free(&q);
}
END_TEST

TestingCase engine_live_case(void)
{
    return (TestingCase){.name = "live engine", .timeout_s = 300, .setup = model_setup, .teardown = model_teardown,
                         .tests = {test_live_requests_entering_while_it_runs_match_chapter05,
                                   test_live_abort_frees_its_blocks_and_leaves_the_rest,
                                   test_live_slots_rejections_and_empty_requests,
                                   test_live_own_sampling_matches_chapter05,
                                   test_live_view_keeps_the_engines_invariants}};
}
