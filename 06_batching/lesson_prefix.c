/*
 * lesson_prefix.c: chapter 06's prefix caching, measured -- the lesson's part 4, and the runs the
 * bench shares with it.
 *
 * What it teaches: many requests to one server start the same way -- one system prompt before
 * every question, each turn of a conversation after the whole previous turn. Their K/V for that
 * prefix are the same numbers (a token's K/V depend only on the tokens up to it), so computing
 * them again is waste. With prefix caching (vLLM's automatic prefix caching; SGLang's RadixAttention
 * is the same idea over a tree) the pool names every full block by its tokens and its prefix
 * (chapter 05's prefix.c); an admitted request shares the named blocks its prompt starts with and
 * prefills only the rest, so its first token comes sooner and the iterations it would have spent
 * on the prefix serve other requests. Each workload is served twice, caching off and on, with
 * continuous batching and every other option at its default; the batch-invariant forward makes the
 * tokens the same both ways (the tests check it), so only the time and the work differ.
 *
 *   engine_prefix_requests   the two workloads (engine_make_prefix_workload) sized for a model
 *   engine_prefix_compare    one workload served with caching off and on
 *   engine_lesson_prefix     part 4: both workloads, printed, worded from the numbers, plotted
 */
#include <math.h>
#include <stdio.h>

#include "06_batching/commands.h"
#include "common/error.h"
#include "common/plot.h"
#include "common/program.h"
#include "common/tensor.h"

EngineRequest *engine_prefix_requests(const Model *m, EnginePrefixKind kind, int n, int shared, double rate,
                                      uint64_t seed)
{
    const PrefixWorkloadSpec w = {.kind = kind, .n = n, .rate = rate, .shared = shared, .question_min = 16,
                                  .question_max = 64, .out_min = 8, .out_max = 24, .turns = 4, .turn_gap = 0.5,
                                  .seq_len = m->c.seq_len, .vocab = m->c.vocab_size, .seed = seed};
    EngineRequest *reqs;
    if (engine_make_prefix_workload(&w, &reqs) != 0)
        die_with_error();
    return reqs;
}

void engine_prefix_compare(const Model *m, const EngineRequest *reqs, int n, int max_batch, EngineMetrics res[2])
{
    for (int on = 0; on <= 1; on++) {
        EngineOptions o = engine_default_options();
        o.max_batch = max_batch, o.prefix_caching = on;
        res[on] = engine_serve_options(m, reqs, n, &o);
    }
}

/* ==== part 4 ====================================================================================== */

#define N_WORKLOADS 2
static const char *const WORKLOAD_NAMES[N_WORKLOADS] = {"shared system prompt", "multi-turn"};
static const char *const WORKLOAD_KEYS[N_WORKLOADS] = {"system_prompt", "multi_turn"};

/* The table: one column per (workload, caching off / on). res (N_WORKLOADS, 2). */
static void print_prefix_table(const EngineMetrics res[N_WORKLOADS][2])
{
    printf("   %-32s %22s %22s\n   %-32s %11s %10s %11s %10s\n", "", WORKLOAD_NAMES[0], WORKLOAD_NAMES[1],
           "prefix caching", "off", "on", "off", "on");
    const struct {
        const char *name, *fmt;
        double scale;
        int which; /* 0 prefill computed, 1 hit rate, 2 TTFT p50, 3 TTFT p99, 4 throughput, 5 peak cached */
    } rows[] = {
        {"prefill tokens computed", "%11.0f", 1, 0}, {"prefix hit rate (%)", "%11.1f", 100, 1},
        {"TTFT p50 (s)", "%11.3f", 1, 2},            {"TTFT p99 (s)", "%11.3f", 1, 3},
        {"output tokens/s", "%11.1f", 1, 4},         {"cached blocks (peak)", "%11.0f", 1, 5},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        printf("   %-32s", rows[r].name);
        for (int w = 0; w < N_WORKLOADS; w++)
            for (int on = 0; on <= 1; on++) {
                const EngineMetrics *mt = &res[w][on];
                const double v[6] = {(double)mt->prefill_computed, mt->prefix_hit_rate, mt->ttft_p50, mt->ttft_p99,
                                     mt->throughput, mt->peak_cached_blocks};
                printf(rows[r].fmt, v[rows[r].which] * rows[r].scale);
                printf(on ? "" : " ");
            }
        printf("\n");
    }
}

/* "x2.5 lower" / "x1.3 higher" / "unchanged": how b compares with a. */
static const char *ratio_words(double a, double b, char *out, size_t len)
{
    if (!(a > 0) || !(b > 0) || fabs(b / a - 1.0) < 0.005)
        snprintf(out, len, "unchanged");
    else if (b < a)
        snprintf(out, len, "x%.2f lower", a / b);
    else
        snprintf(out, len, "x%.2f higher", b / a);
    return out;
}

/* One workload's sentence, every number and direction from its two runs. */
static void print_prefix_words(int w, const EngineMetrics *off, const EngineMetrics *on)
{
    char p50[48], tput[48];
    const double fewer = off->prefill_computed > 0
                             ? 100.0 * (1.0 - (double)on->prefill_computed / (double)off->prefill_computed)
                             : 0.0;
    printf("   %s, with prefix caching: %.0f%% of the tokens looked up at admission were found\n"
           "   cached, so the engine prefilled %ld tokens instead of %ld (%.0f%% %s); p50 TTFT %.3f s\n"
           "   against %.3f s (%s), throughput %.1f against %.1f output tokens/s (%s).\n",
           WORKLOAD_NAMES[w], 100.0 * on->prefix_hit_rate, on->prefill_computed, off->prefill_computed, fabs(fewer),
           fewer >= 0 ? "fewer" : "more", on->ttft_p50, off->ttft_p50,
           ratio_words(off->ttft_p50, on->ttft_p50, p50, sizeof p50), on->throughput, off->throughput,
           ratio_words(off->throughput, on->throughput, tput, sizeof tput));
}

/* The plot's data: one row per (workload, caching). */
static void write_prefix_data(const EngineMetrics res[N_WORKLOADS][2], char *dat, size_t len)
{
    Tsv t;
    lesson_data_open(&t, dat, len, ENGINE_PROG, "prefix",
                     "workload\tcaching\tprefill_tokens\tttft_p50_s\tttft_p99_s\ttokens_per_s\thit_rate");
    for (int w = 0; w < N_WORKLOADS; w++)
        for (int on = 0; on <= 1; on++)
            tsv_row(&t, "%s\t%s\t%ld\t%.5f\t%.5f\t%.2f\t%.4f", WORKLOAD_KEYS[w], on ? "on" : "off",
                    res[w][on].prefill_computed, res[w][on].ttft_p50, res[w][on].ttft_p99, res[w][on].throughput,
                    res[w][on].prefix_hit_rate);
    tsv_close(&t);
}

void engine_lesson_prefix(const Model *m)
{
    const int n[N_WORKLOADS] = {24, 24}, shared[N_WORKLOADS] = {256, 64};
    EngineMetrics res[N_WORKLOADS][2];
    long prompt_tokens[N_WORKLOADS] = {0, 0};
    for (int w = 0; w < N_WORKLOADS; w++) {
        EngineRequest *reqs = engine_prefix_requests(m, (EnginePrefixKind)w, n[w], shared[w], w ? 4.0 : 0.0, 5);
        for (int i = 0; i < n[w]; i++)
            prompt_tokens[w] += reqs[i].n_prompt;
        engine_prefix_compare(m, reqs, n[w], 16, res[w]);
        engine_free_requests(reqs, n[w]);
    }
    printf("4. Prefix caching: requests that start the same way share the K/V blocks of that start. Two\n"
           "   workloads, served with it off and on (continuous, max-batch 16, 256 tokens per step):\n"
           "   - shared system prompt: %d requests at once, each a %d-token system prompt + its own question\n"
           "     of 16..64 tokens (%ld prompt tokens in all);\n"
           "   - multi-turn: %d requests, conversations of 4 turns starting 4 per second, each turn 0.5 s after\n"
           "     the last, its prompt the previous prompt + that turn's answer + a new message (%ld prompt\n"
           "     tokens). The answers are placeholders drawn with the workload, not the model's answers, so a\n"
           "     turn can share the previous turn's prompt, not its answer.\n\n",
           n[0], shared[0], prompt_tokens[0], n[1], prompt_tokens[1]);
    print_prefix_table(res);
    printf("\n");
    for (int w = 0; w < N_WORKLOADS; w++)
        print_prefix_words(w, &res[w][0], &res[w][1]);
    const int sooner = res[0][1].ttft_p50 < res[0][0].ttft_p50 && res[1][1].ttft_p50 < res[1][0].ttft_p50;
    printf("   A request whose prefix is cached computes only the rest of its prompt, so the iterations the\n"
           "   prefix would have taken serve other requests: %s\n"
           "   A block is shared only when full, and only for the same tokens after the same prefix (its\n"
           "   name chains its parent's).\n\n",
           sooner ? "here the median first token came sooner on both workloads."
                  : "here the median first token did not come sooner on both workloads\n"
                    "   (the table above).");
    char dat[4096];
    write_prefix_data(res, dat, sizeof dat);
    plot_show(ENGINE_PROG, "prefix", dat, 0, stdout, "   ", "\n\n");
    for (int w = 0; w < N_WORKLOADS; w++)
        engine_free_metrics(&res[w][0]), engine_free_metrics(&res[w][1]);
}
