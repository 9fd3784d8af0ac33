/*
 * main.c: the chapter 06 program, build/bin/06_batching: the lesson, and the table of subcommands.
 *
 *   06_batching [--device D]     the lesson: what each request does in each iteration (Orca's
 *                                grid) under continuous, static and static-padded batching; static
 *                                against continuous batching on one workload, side by side;
 *                                throughput and p99 TTFT against the arrival rate; batch occupancy
 *                                over time; preemption under a small pool; prefix caching on two
 *                                workloads that share prefixes (lesson_prefix.c)
 *   06_batching serve ...        a requests file in, every request's tokens out (docs/contracts.md §1.7) (serve.c)
 *   06_batching gen-requests ... a seeded workload file (Poisson arrivals, skewed or uniform) (serve.c)
 *   06_batching verify ...       the engine against chapter 05 run alone, request by request, under
 *                                every policy, batch size, budget and pool size of a built-in grid
 *                                (verify.c)
 *   06_batching bench ...        throughput and latency against the arrival rate for the three policies;
 *                                the engine at batch 32 against one sequence at a time (bench.c)
 *   06_batching server ...       the engine behind an OpenAI-compatible HTTP API, in real time (server.c)
 *
 * Every subcommand takes --help.
 */
#include <stdio.h>
#include <string.h>

#include "05_paged/paged.h"
#include "06_batching/commands.h"
#include "06_batching/grid.h"
#include "common/bench.h"
#include "common/error.h"
#include "common/plot.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/tensor.h"

#define PROG ENGINE_PROG

/* ==== the lesson ================================================================================== */

/* Part 0's workload: arrival (in iterations), prompt and output lengths, chosen by hand so that a
 * small batch shows every state: chunks of long prompts, waiting, and (continuous) a preemption. */
static const struct {
    double arrival;
    int n_prompt, max_new;
} GRID_REQS[] = {{0, 11, 6}, {0, 3, 9}, {1, 5, 2}, {2, 9, 7}, {3, 2, 4}, {5, 10, 3}, {6, 4, 6}};
#define GRID_N ((int)(sizeof GRID_REQS / sizeof GRID_REQS[0]))
#define GRID_MAX_BATCH 3
#define GRID_MAX_TOKENS 8
#define GRID_BLOCKS 7

/* GRID_REQS served under policy p, each iteration one unit of the clock (so arrivals count
 * iterations and the grid is the same on every machine); the grid of what each request did. */
static EngineGrid serve_grid(const Model *m, const EngineRequest *reqs, EnginePolicy p, EngineMetrics *mt)
{
    EngineGrid g = engine_grid_empty(GRID_N);
    EngineOptions o = engine_default_options();
    o.policy = p, o.max_batch = GRID_MAX_BATCH, o.max_tokens = GRID_MAX_TOKENS, o.block_size = 4;
    o.num_blocks = GRID_BLOCKS, o.fixed_step_s = 1.0, o.trace = engine_grid_record, o.trace_ctx = &g;
    EngineResult res[GRID_N];
    if (engine_serve(m, reqs, GRID_N, &o, res, mt) != 0)
        die_with_error();
    engine_free_results(res, GRID_N);
    return g;
}

/* Part 0's words, chosen from the three runs: mt[0] continuous, mt[1] static, mt[2] static-padded. */
static void lesson_grid_words(const EngineMetrics *mt)
{
    const char *than_static = mt[0].iterations < mt[1].iterations    ? "fewer than"
                              : mt[0].iterations == mt[1].iterations ? "as many as"
                                                                     : "more than";
    printf("\n   Orca (Yu et al. 2022) schedules each iteration, not each request: after every iteration a\n"
           "   finished sequence leaves and a waiting one takes its place, so continuous batching served\n"
           "   these requests in %d iterations, %s static batching's %d.\n"
           "   Each column is one forward, made one by Orca's selective batching: the token-wise operations\n"
           "   (every matrix product) run once over one [tokens, dim] matrix of all scheduled tokens, prefill\n"
           "   chunks and decodes mixed, and attention runs per sequence, each over its own length and cache\n"
           "   (batch.c: model_forward over every row, batch_attention sequence by sequence). Static batching\n"
           "   drops a finished sequence from the forward but admits nobody until the whole batch is done;\n"
           "   static-padded batching also computes the padding and the finished members:\n"
           "   %ld of its %ld token slots (%.0f%%) were thrown away.\n\n",
           mt[0].iterations, than_static, mt[1].iterations, mt[2].padded, mt[2].computed,
           mt[2].computed ? 100.0 * (double)mt[2].padded / (double)mt[2].computed : 0.0);
}

/* Part 0: the same seven requests under the three policies, as Orca draws them. */
static void lesson_grid(const Model *m)
{
    EngineRequest reqs[GRID_N];
    int prompts[GRID_N][16]; /* (GRID_N, longest prompt) */
    for (int i = 0; i < GRID_N; i++) {
        for (int t = 0; t < GRID_REQS[i].n_prompt; t++)
            prompts[i][t] = (7 * i + 3 * t + 1) % m->c.vocab_size;
        reqs[i] = (EngineRequest){.arrival = GRID_REQS[i].arrival, .max_new = GRID_REQS[i].max_new,
                                  .n_prompt = GRID_REQS[i].n_prompt, .prompt = prompts[i]};
    }
    printf("0. What each request does in each iteration: %d requests, max-batch %d, %d tokens per iteration, a\n"
           "   pool of %d blocks of 4 tokens. Each iteration is one unit of the clock here; the requests arrive\n"
           "   before iterations",
           GRID_N, GRID_MAX_BATCH, GRID_MAX_TOKENS, GRID_BLOCKS);
    for (int i = 0; i < GRID_N; i++)
        printf("%s %.0f", i == 0 ? "" : i == GRID_N - 1 ? " and" : ",", GRID_REQS[i].arrival);
    printf(" (prompt + output tokens in brackets).\n\n");
    const EnginePolicy pol[3] = {ENGINE_CONTINUOUS, ENGINE_STATIC, ENGINE_STATIC_PADDED};
    EngineMetrics mt[3];
    EngineGrid g[3];
    char dat[4096];
    Tsv t;
    lesson_data_open(&t, dat, sizeof dat, PROG, "grid", ENGINE_GRID_COLUMNS);
    for (int p = 0; p < 3; p++) {
        g[p] = serve_grid(m, reqs, pol[p], &mt[p]);
        printf("   %s: %d iterations, %ld token slots computed, %ld of them thrown away, %d preemption%s\n\n",
               engine_policy_name(pol[p]), mt[p].iterations, mt[p].computed, mt[p].padded, mt[p].preemptions,
               mt[p].preemptions == 1 ? "" : "s");
        engine_grid_print(stdout, &g[p], reqs, "   ");
        printf("\n");
        engine_grid_rows(&t, engine_policy_name(pol[p]), &g[p]);
    }
    tsv_close(&t);
    engine_grid_legend(stdout, "   ");
    lesson_grid_words(mt);
    plot_show(PROG, "grid", dat, 0, stdout, "   ", "\n\n");
    for (int p = 0; p < 3; p++)
        engine_grid_free(&g[p]), engine_free_metrics(&mt[p]);
}

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
    const EnginePolicy policies[2] = {ENGINE_STATIC, ENGINE_CONTINUOUS};
    engine_rate_sweep(m, &t, rates, 4, 24, 16, policies, 2, res);
    tsv_close(&t);
    printf("2. The arrival rate swept (24 requests each, skewed lengths, max-batch 16):\n\n"
           "   %8s %12s %14s %14s %12s\n", "rate/s", "policy", "tokens/s", "TTFT p99 (s)", "batch");
    for (int ri = 0; ri < 4; ri++)
        for (int p = 0; p < 2; p++) {
            const EngineMetrics *r = &res[p * 4 + ri];
            printf("   %8.0f %12s %14.1f %14.3f %12.1f\n", rates[ri], p ? "continuous" : "static", r->throughput,
                   r->ttft_p99, r->mean_batch);
        }
    int faster = 0, sooner = 0, fuller = 0; /* rates where continuous beats static */
    for (int ri = 0; ri < 4; ri++) {
        faster += res[4 + ri].throughput > res[ri].throughput, sooner += res[4 + ri].ttft_p99 < res[ri].ttft_p99;
        fuller += res[4 + ri].mean_batch > res[ri].mean_batch;
    }
    printf("\n   Continuous batching had the higher throughput at %d of the 4 rates, the lower p99 TTFT at %d and\n"
           "   the fuller batches at %d. From %.0f to %.0f requests/s its batches went from %.1f to %.1f sequences\n"
           "   per iteration (static: %.1f to %.1f): a static batch runs until its longest request ends, its\n"
           "   finished slots empty and new arrivals queued; continuous batching refills a slot at the next\n"
           "   iteration.\n\n",
           faster, sooner, fuller, rates[0], rates[3], res[4].mean_batch, res[7].mean_batch, res[0].mean_batch,
           res[3].mean_batch);
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
    int all_same = 1;
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
        all_same &= same;
        if (p > 0)
            engine_free_results(res, n);
        engine_free_metrics(&mt);
    }
    engine_free_results(ref, n);
    mem_free(ref), mem_free(res);
    printf(all_same ? "\n   Every request got the same tokens whatever the pool: the forward is batch-invariant, so a\n"
                      "   recomputed prefix gives bit for bit the K/V it had.\n\n"
                    : "\n   Some request got other tokens with a smaller pool: the forward is not batch-invariant here\n"
                      "   (a bug: make test-6 should fail).\n\n");
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
           "token of every sequence, with attention through chapter 05's block tables. Prompts that start the\n"
           "same way share the K/V blocks of that start (prefix caching, on by default; part 4 turns it off\n"
           "to compare).\n\n"
           "Machine: %s.\n"
           "Model: the built-in one (chapter 04). The engine's clock advances by each iteration's measured\n"
           "time and skips idle gaps (except in part 0, where each iteration is one unit of it).\n\n",
           roofline_machine());
    lesson_grid(&m);
    lesson_compare(&m);
    lesson_sweep(&m);
    lesson_preemption(&m);
    engine_lesson_prefix(&m); /* lesson_prefix.c */
    model_free(&m);
    return lesson_end(
        "the engine's work per iteration is one batched forward; continuous batching keeps that\n"
        "batch full, chunked prefill bounds each iteration's work, and paging plus preemption lets the pool\n"
        "run full without ever failing a request that fits; prefix caching computes a shared prompt prefix once.\n");
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
    {.name = "server", .run = engine_cmd_server,
     .summary = "the engine behind an OpenAI-compatible HTTP API (completions, streaming, metrics)"},
    {.name = NULL},
};

static const Program PROGRAM = {
    .name = PROG, .title = "Chapter 06: continuous batching", .lesson = cmd_lesson, .subcommands = COMMANDS};

int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
