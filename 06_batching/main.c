/*
 * main.c: the chapter 06 program, build/bin/06_batching: the lesson, and the table of subcommands.
 *
 *   06_batching [--device D]     the lesson: static against continuous batching on one workload,
 *                                side by side; throughput and p99 TTFT against the arrival rate;
 *                                batch occupancy over time; preemption under a small pool
 *   06_batching serve ...        a requests file in, every request's tokens out (docs/contracts.md §1.7) (serve.c)
 *   06_batching gen-requests ... a seeded workload file (Poisson arrivals, skewed or uniform) (serve.c)
 *   06_batching verify ...       the engine against chapter 05 run alone, request by request, under
 *                                every policy, batch size, budget and pool size of a built-in grid
 *                                (verify.c)
 *   06_batching bench ...        throughput and latency against the arrival rate for both policies;
 *                                the engine at batch 32 against one sequence at a time (bench.c)
 *
 * Every subcommand takes --help.
 */
#include <stdio.h>
#include <string.h>

#include "05_paged/paged.h"
#include "06_batching/commands.h"
#include "common/bench.h"
#include "common/error.h"
#include "common/plot.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/tensor.h"

#define PROG ENGINE_PROG

/* ==== the lesson ================================================================================== */

/* The occupancy of both runs over time, plotted: (policy, clock, sequences, blocks) rows. */
static void write_occupancy(const EngineMetrics *st, const EngineMetrics *ct)
{
    char dat[4096];
    Tsv t;
    lesson_data_open(&t, dat, sizeof dat, PROG, "occupancy", "policy\tclock_s\tscheduled\tblocks_used");
    for (int p = 0; p < 2; p++) {
        const EngineMetrics *mt = p ? ct : st;
        for (int i = 0; i < mt->iterations; i++)
            tsv_row(&t, "%s\t%.5f\t%d\t%d", p ? "continuous" : "static", mt->log[i].clock_s, mt->log[i].scheduled,
                    mt->log[i].blocks_used);
        tsv_row(&t, " ");
    }
    tsv_close(&t);
    plot_show(PROG, "occupancy", dat, 1, stdout, "   ", "\n\n");
}

/* Part 1: one workload served under both policies, side by side. */
static void lesson_compare(const Model *m)
{
    const int n = 48;
    const double rate = 20.0;
    EngineRequest *reqs = engine_skewed_requests(m, n, rate, 1);
    long out = 0;
    for (int i = 0; i < n; i++)
        out += reqs[i].max_new;
    EngineMetrics st = engine_serve_once(m, reqs, n, ENGINE_STATIC, 16, 0, 1, 0);
    EngineMetrics ct = engine_serve_once(m, reqs, n, ENGINE_CONTINUOUS, 16, 0, 1, 0);
    printf("1. One workload, both policies. %d requests arriving at %.0f per second (Poisson) over %.1f s, skewed\n"
           "   lengths (lognormal, medians %d prompt and %d output tokens: %ld output tokens in all), max-batch 16,\n"
           "   256 tokens per step, the built-in model on the CPU.\n\n"
           "   %-34s %14s %14s\n",
           n, rate, reqs[n - 1].arrival, ENGINE_PROMPT_MEDIAN, ENGINE_OUT_MEDIAN, out, "", "static", "continuous");
    const struct {
        const char *name, *fmt;
        double a, b;
    } rows[] = {
        {.name = "output tokens/s", .fmt = "%14.1f", .a = st.throughput, .b = ct.throughput},
        {.name = "time to serve everything (s)", .fmt = "%14.2f", .a = st.makespan_s, .b = ct.makespan_s},
        {.name = "TTFT p50 (s)", .fmt = "%14.3f", .a = st.ttft_p50, .b = ct.ttft_p50},
        {.name = "TTFT p99 (s)", .fmt = "%14.3f", .a = st.ttft_p99, .b = ct.ttft_p99},
        {.name = "time per output token p50 (ms)", .fmt = "%14.1f", .a = st.tpot_p50 * 1e3, .b = ct.tpot_p50 * 1e3},
        {.name = "time per output token p99 (ms)", .fmt = "%14.1f", .a = st.tpot_p99 * 1e3, .b = ct.tpot_p99 * 1e3},
        {.name = "iterations", .fmt = "%14.0f", .a = st.iterations, .b = ct.iterations},
        {.name = "sequences per iteration (mean)", .fmt = "%14.1f", .a = st.mean_batch, .b = ct.mean_batch},
        {.name = "peak blocks in use", .fmt = "%14.0f", .a = st.peak_blocks, .b = ct.peak_blocks},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        printf("   %-34s", rows[i].name);
        printf(rows[i].fmt, rows[i].a);
        printf(rows[i].fmt, rows[i].b);
        printf("\n");
    }
    printf("\n   Continuous batching: x%.2f the throughput, p99 TTFT x%.2f of static's.\n\n",
           ct.throughput / st.throughput, ct.ttft_p99 / st.ttft_p99);
    write_occupancy(&st, &ct);
    engine_free_metrics(&st), engine_free_metrics(&ct);
    engine_free_requests(reqs, n);
}

/* Part 2: throughput and p99 TTFT against the arrival rate (engine_rate_sweep), both policies. */
static void lesson_sweep(const Model *m)
{
    char dat[4096];
    const double rates[] = {2, 8, 32, 128};
    EngineMetrics res[8];
    Tsv t;
    lesson_data_open(&t, dat, sizeof dat, PROG, "lesson", ENGINE_BENCH_COLUMNS);
    engine_rate_sweep(m, &t, rates, 4, 24, 16, res);
    tsv_close(&t);
    printf("2. The arrival rate swept (24 requests each, skewed lengths, max-batch 16):\n\n"
           "   %8s %12s %14s %14s %12s\n", "rate/s", "policy", "tokens/s", "TTFT p99 (s)", "batch");
    for (int ri = 0; ri < 4; ri++)
        for (int p = 0; p < 2; p++) {
            const EngineMetrics *r = &res[p * 4 + ri];
            printf("   %8.0f %12s %14.1f %14.3f %12.1f\n", rates[ri], p ? "continuous" : "static", r->throughput,
                   r->ttft_p99, r->mean_batch);
        }
    printf("\n   At low rates both policies have little to batch and wait for arrivals; as the rate grows the\n"
           "   static batches fill, but each one runs until its longest request ends while its finished\n"
           "   slots stay empty and new arrivals queue; continuous batching refills the slots at once.\n\n");
    plot_show(PROG, "lesson", dat, 0, stdout, "   ", "\n\n");
}

/* Part 3: the same requests with smaller and smaller pools: preemption, and the same tokens. */
static void lesson_preemption(const Model *m)
{
    const int n = 16;
    EngineRequest *reqs = engine_skewed_requests(m, n, 0.0, 3);
    int longest = 0;
    for (int i = 0; i < n; i++) {
        const int need = paged_blocks_for_request(reqs[i].n_prompt, reqs[i].max_new, 1, 16);
        longest = need > longest ? need : longest;
    }
    const int pools[3] = {0, 4 * longest, longest};
    printf("3. Preemption: the same %d requests (all at once, max-batch 16) with smaller and smaller pools. The\n"
           "   longest request needs %d blocks of 16 tokens; a pool of that size still serves everyone, one\n"
           "   preemption (by recompute) at a time.\n\n   %12s %12s %14s %14s %12s\n",
           n, longest, "blocks", "peak used", "preemptions", "tokens/s", "same tokens");
    EngineResult *ref = mem_alloc_or_die((size_t)n * sizeof(EngineResult), "results"); /* (n) the default pool's */
    EngineResult *res = mem_alloc_or_die((size_t)n * sizeof(EngineResult), "results"); /* (n) */
    for (int p = 0; p < 3; p++) {
        EngineOptions o = engine_default_options();
        o.max_batch = 16, o.num_blocks = pools[p];
        EngineMetrics mt;
        if (engine_serve(m, reqs, n, &o, p == 0 ? ref : res, &mt) != 0)
            die_with_error();
        int same = 1;
        for (int i = 0; i < n && p > 0; i++)
            same &= memcmp(ref[i].tokens, res[i].tokens, (size_t)res[i].n_tokens * sizeof(int)) == 0;
        printf("   %12d %12d %14d %14.1f %12s\n", mt.num_blocks, mt.peak_blocks, mt.preemptions, mt.throughput,
               p == 0 ? "(reference)" : same ? "yes" : "NO");
        if (p > 0)
            engine_free_results(res, n);
        engine_free_metrics(&mt);
    }
    engine_free_results(ref, n);
    mem_free(ref), mem_free(res);
    printf("\n   Every request gets the same tokens whatever the pool: the forward is batch-invariant, so a\n"
           "   recomputed prefix gives bit for bit the K/V it had.\n\n");
    engine_free_requests(reqs, n);
}

static const Program PROGRAM;

static int cmd_lesson(int argc, char **argv)
{
    lesson_begin(&PROGRAM, "where to run (the engine runs on the CPU)", NULL, 0, argc, argv);
    Model m;
    program_load_model(NULL, &m);
    printf("A server gets requests at random times, with prompts and outputs of every length. Static batching\n"
           "takes a batch and runs it to the end of its longest request. Continuous batching decides again at\n"
           "every iteration: finished sequences leave, waiting ones join while the batch size, the token\n"
           "budget and the free blocks allow, long prompts go in chunks, and when blocks run out the newest\n"
           "sequence is preempted and recomputed later. Each iteration is one forward over every scheduled\n"
           "token of every sequence, with attention through chapter 05's block tables.\n\n"
           "Machine: %s. Model: the built-in one (chapter 04). The clock advances by each iteration's measured\n"
           "time and skips idle gaps.\n\n",
           roofline_machine());
    lesson_compare(&m);
    lesson_sweep(&m);
    lesson_preemption(&m);
    model_free(&m);
    return lesson_end(
        "the engine's work per iteration is one batched forward; continuous batching keeps that\n"
        "batch full, chunked prefill bounds each iteration's work, and paging plus preemption lets the pool\n"
        "run full without ever failing a request that fits.\n");
}

/* ==== main ======================================================================================== */

static const Subcommand COMMANDS[] = {
    {.name = "serve", .run = engine_cmd_serve,
     .summary = "a requests file in, every request's tokens out, metrics on stderr"},
    {.name = "gen-requests", .run = engine_cmd_gen_requests,
     .summary = "write a seeded workload (Poisson arrivals, skewed or uniform lengths)"},
    {.name = "verify", .run = engine_cmd_verify,
     .summary = "the engine against chapter 05 alone, request by request, on a grid of settings"},
    {.name = "bench", .run = engine_cmd_bench,
     .summary = "throughput and latency against the arrival rate; batch 32 against one sequence"},
    {.name = NULL},
};

static const Program PROGRAM = {
    .name = PROG, .title = "Chapter 06: continuous batching", .lesson = cmd_lesson, .subcommands = COMMANDS};

int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
