/*
 * test_frag.c: chapter 05's fragmentation measurement (frag.c), counted by hand on arenas of a few
 * slots, and its invariants on a workload: every step's categories and free slots add up to the
 * arena, ranges of one size never fragment, paging never fragments externally and leaves fewer
 * than block_size empty slots per sequence. Its case, "fragmentation", runs in test_paged.c's
 * main().
 */
#include <math.h>

#include "05_paged/frag.h"
#include "05_paged/test_paged.h"
#include "05_paged/waste.h"
#include "common/error.h"
#include "common/tensor.h"

/* One step as the test expects it: used, reserved, internal, external, free, running, waiting. */
static void expect_step(const PagedFragStep *got, long t, const int want[7], const char *scheme)
{
    const int have[7] = {got->used, got->reserved, got->internal, got->external, got->free, got->running,
                         got->waiting};
    static const char *const NAMES[7] = {"used", "reserved", "internal", "external", "free", "running", "waiting"};
    for (int k = 0; k < 7; k++)
        ck_assert_msg(have[k] == want[k], "%s, step %ld: %s %d, expected %d", scheme, t, NAMES[k], have[k], want[k]);
}

/* Four requests, all arriving at step 0, in an arena of 10 slots (max_seq 4):
 *   A: prompt 1, output 2 (final length 3)   B: prompt 2, output 1 (3)
 *   C: prompt 1, output 2 (3)                D: prompt 3, output 1 (4)
 * A request admitted at step a holds prompt + 1 tokens at the end of step a and leaves after
 * step a + output - 1.
 *
 * Own final length (first fit): step 0, A takes [0,3) holding 2, B [3,6) holding 3, C [6,9)
 * holding 2; D needs 4 and only [9,10) is free: 1 slot, so it waits for lack of space (external
 * 0). used 7, reserved 1 + 0 + 1 = 2, free 1. B leaves. Step 1: A and C hold 3; the holes are
 * [3,6) (3 slots) and [9,10) (1): 4 free, enough for D, but no hole of 4: external 4, used 6.
 * A and C leave. Step 2: D takes [0,4) holding 4; used 4, free 6.
 *
 * Max_seq (ranges of 4): step 0, A [0,4) holding 2, B [4,8) holding 3; C waits (2 free).
 * used 5, reserved 1 (A's third token), internal 1 + 1 (4 - 3 each), free 2. B leaves. Step 1:
 * A holds 3; C takes [4,8) holding 2; D waits (2 free): used 5, reserved 1, internal 2, free 2.
 * A leaves. Step 2: C holds 3, D takes [0,4) holding 4: used 7, internal 1 (C's), free 2.
 *
 * Paged, blocks of 2 (5 blocks): step 0, A 1 block (2 tokens), B 2 blocks (3 tokens: its last
 * block's empty slot is past its final length: internal 1), C 1 block; D needs 2 blocks, 1 is
 * free: used 7, internal 1, free 2. Step 1: A and C grow to 3 tokens, a second block each (1 left
 * free), each with an empty slot past its final length: used 6, internal 2, free 2. Step 2: D,
 * 2 blocks: used 4, free 6. */
START_TEST(test_frag_counted_by_hand)
{
    const WorkloadItem reqs[4] = {{.prompt_len = 1, .output_len = 2}, {.prompt_len = 2, .output_len = 1},
                                  {.prompt_len = 1, .output_len = 2}, {.prompt_len = 3, .output_len = 1}};
    const struct {
        int scheme;
        int steps[3][7]; /* used, reserved, internal, external, free, running, waiting */
        double pct[5];   /* the means over the 3 steps, % of the 10 slots */
    } want[] = {
        {.scheme = PAGED_RESERVE_OWN,
         .steps = {{7, 2, 0, 0, 1, 3, 1}, {6, 0, 0, 4, 0, 2, 1}, {4, 0, 0, 0, 6, 1, 0}},
         .pct = {100.0 * 17 / 30, 100.0 * 2 / 30, 0, 100.0 * 4 / 30, 100.0 * 7 / 30}},
        {.scheme = PAGED_RESERVE_MAX_SEQ,
         .steps = {{5, 1, 2, 0, 2, 2, 2}, {5, 1, 2, 0, 2, 2, 1}, {7, 0, 1, 0, 2, 2, 0}},
         .pct = {100.0 * 17 / 30, 100.0 * 2 / 30, 100.0 * 5 / 30, 0, 100.0 * 6 / 30}},
        {.scheme = 2,
         .steps = {{7, 0, 1, 0, 2, 3, 1}, {6, 0, 2, 0, 2, 2, 1}, {4, 0, 0, 0, 6, 1, 0}},
         .pct = {100.0 * 17 / 30, 0, 100.0 * 3 / 30, 0, 100.0 * 10 / 30}},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        PagedFragStep trace[4];
        PagedFrag f;
        ck_assert_msg(paged_frag_simulate(reqs, 4, want[i].scheme, 10, 4, trace, 4, &f) == 0, "%s", error_message());
        char name[32];
        snprintf(name, sizeof name, "scheme %d", want[i].scheme);
        ck_assert_msg(f.steps == 3 && f.completed == 4 && f.preemptions == 0, "%s: %ld steps, %d completed", name,
                      f.steps, f.completed);
        for (long t = 0; t < 3; t++)
            expect_step(&trace[t], t, want[i].steps[t], name);
        const double got[5] = {f.used_pct, f.reserved_pct, f.internal_pct, f.external_pct, f.free_pct};
        for (int k = 0; k < 5; k++)
            ck_assert_msg(fabs(got[k] - want[i].pct[k]) < 1e-9, "%s: category %d at %.4f%%, expected %.4f%%", name, k,
                          got[k], want[i].pct[k]);
    }
}
END_TEST

/* Paged, blocks of 1, an arena of 4: A (prompt 1, output 3) and B (prompt 1, output 2) both
 * arrive at step 0 and take 2 blocks each. Step 1: A needs a block and none is free, so B, the
 * newest, is preempted (its 2 blocks freed, back to the queue's front) and A grows to 3; B needs
 * 2 blocks, 1 is free: it waits. Step 2: A holds 4 and leaves. Step 3: B starts over, holding 2.
 * Step 4: B holds 3 and leaves. 5 steps, 1 preemption. */
START_TEST(test_frag_paged_preempts_the_newest)
{
    const WorkloadItem reqs[2] = {{.prompt_len = 1, .output_len = 3}, {.prompt_len = 1, .output_len = 2}};
    const int want[5][7] = {{4, 0, 0, 0, 0, 2, 0}, {3, 0, 0, 0, 1, 1, 1}, {4, 0, 0, 0, 0, 1, 1},
                            {2, 0, 0, 0, 2, 1, 0}, {3, 0, 0, 0, 1, 1, 0}};
    PagedFragStep trace[5];
    PagedFrag f;
    ck_assert_msg(paged_frag_simulate(reqs, 2, 1, 4, 4, trace, 5, &f) == 0, "%s", error_message());
    ck_assert_int_eq(f.steps, 5);
    ck_assert_int_eq(f.preemptions, 1);
    ck_assert_int_eq(f.completed, 2);
    for (long t = 0; t < 5; t++)
        expect_step(&trace[t], t, want[t], "paged, block size 1");
}
END_TEST

/* Arrivals at a step clock: a request arriving at step 5 in an empty arena is admitted at step
 * 5; the steps before it count as free. */
START_TEST(test_frag_arrivals_wait_for_their_step)
{
    const WorkloadItem reqs[1] = {{.arrival_s = 5.5, .prompt_len = 2, .output_len = 2}};
    PagedFragStep trace[7];
    PagedFrag f;
    ck_assert_msg(paged_frag_simulate(reqs, 1, PAGED_RESERVE_OWN, 8, 8, trace, 7, &f) == 0, "%s", error_message());
    ck_assert_int_eq(f.steps, 7);
    for (long t = 0; t < 5; t++)
        expect_step(&trace[t], t, (const int[7]){0, 0, 0, 0, 8, 0, 0}, "own, idle");
    expect_step(&trace[5], 5, (const int[7]){3, 1, 0, 0, 4, 1, 0}, "own");
    expect_step(&trace[6], 6, (const int[7]){4, 0, 0, 0, 4, 1, 0}, "own");
}
END_TEST

/* A workload of the lesson's shape, small: every step adds up to the arena, the max_seq ranges
 * (one size) never fragment externally, own-length ranges have no internal fragmentation, and a
 * paged request's empty slots (reserved + internal) stay below one block; every request ends. */
START_TEST(test_frag_invariants_on_a_workload)
{
    enum { N = 300, MAX_SEQ = 256, ARENA = 8 * MAX_SEQ, TRACE = 1 << 16 };
    const int schemes[] = {PAGED_RESERVE_MAX_SEQ, PAGED_RESERVE_OWN, 1, 4, 16, 64};
    PagedFragStep *trace = mem_alloc((size_t)TRACE * sizeof(PagedFragStep), "trace");
    ck_assert_ptr_nonnull(trace);
    for (int kind = 0; kind < 2; kind++) {
        WorkloadItem *w;
        ck_assert_msg(paged_frag_workload((WorkloadKind)kind, N, MAX_SEQ, 0.5, 7, &w) == 0, "%s", error_message());
        for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
            const int sc = schemes[i];
            PagedFrag f;
            ck_assert_msg(paged_frag_simulate(w, N, sc, ARENA, MAX_SEQ, trace, TRACE, &f) == 0, "%s", error_message());
            ck_assert_int_eq(f.completed, N);
            ck_assert_int_le(f.steps, TRACE);
            long ext = 0;
            for (long t = 0; t < f.steps; t++) {
                const PagedFragStep *s = &trace[t];
                ck_assert_int_eq(s->used + s->reserved + s->internal + s->external + s->free, ARENA);
                ck_assert(s->used >= 0 && s->reserved >= 0 && s->internal >= 0 && s->external >= 0 && s->free >= 0);
                ext += s->external;
                if (sc == PAGED_RESERVE_MAX_SEQ) {
                    ck_assert_int_eq(s->external, 0);
                    ck_assert_int_eq(s->used + s->reserved + s->internal, s->running * MAX_SEQ);
                }
                if (sc == PAGED_RESERVE_OWN)
                    ck_assert_int_eq(s->internal, 0);
                if (sc > 0) {
                    ck_assert_int_eq(s->external, 0);
                    ck_assert_int_le(s->reserved + s->internal, (sc - 1) * s->running);
                }
            }
            const double sum = f.used_pct + f.reserved_pct + f.internal_pct + f.external_pct + f.free_pct;
            ck_assert_msg(fabs(sum - 100.0) < 1e-9, "scheme %d: the categories add up to %.12f%%", sc, sum);
            if (sc == PAGED_RESERVE_OWN && kind == WORKLOAD_UNIFORM)
                ck_assert_msg(ext > 0, "ranges of every size never fragmented: the workload no longer shows it");
        }
        workload_free(w, N);
    }
    mem_free(trace);
}
END_TEST

START_TEST(test_frag_rejects_bad_input)
{
    const WorkloadItem ok[1] = {{.prompt_len = 2, .output_len = 2}};
    const WorkloadItem too_long[1] = {{.prompt_len = 3, .output_len = 2}};
    const WorkloadItem unordered[2] = {{.arrival_s = 2, .prompt_len = 1, .output_len = 1},
                                       {.arrival_s = 1, .prompt_len = 1, .output_len = 1}};
    PagedFrag f;
    ck_assert_int_eq(paged_frag_simulate(ok, 1, PAGED_RESERVE_OWN, 3, 4, NULL, 0, &f), -1); /* arena < max_seq */
    ck_assert_int_eq(paged_frag_simulate(ok, 1, 3, 8, 4, NULL, 0, &f), -1);                 /* 8 % 3 != 0 */
    ck_assert_int_eq(paged_frag_simulate(ok, 1, -2, 8, 4, NULL, 0, &f), -1);                /* no such scheme */
    ck_assert_int_eq(paged_frag_simulate(too_long, 1, PAGED_RESERVE_OWN, 8, 4, NULL, 0, &f), -1);
    ck_assert_int_eq(paged_frag_simulate(unordered, 2, PAGED_RESERVE_OWN, 8, 4, NULL, 0, &f), -1);
    WorkloadItem *w;
    ck_assert_int_eq(paged_frag_workload(WORKLOAD_SKEWED, 4, 64, 0.0, 1, &w), -1); /* no arrival rate */
    ck_assert_int_eq(paged_frag_simulate(ok, 1, 4, 8, 4, NULL, 0, &f), 0);
    ck_assert_int_eq(f.completed, 1);
}
END_TEST

TestingCase paged_frag_case(void)
{
    return (TestingCase){.name = "fragmentation", .timeout_s = 60,
                         .tests = {test_frag_counted_by_hand, test_frag_paged_preempts_the_newest,
                                   test_frag_arrivals_wait_for_their_step, test_frag_invariants_on_a_workload,
                                   test_frag_rejects_bad_input}};
}
