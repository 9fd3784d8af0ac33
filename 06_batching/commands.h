/*
 * commands.h: chapter 06's subcommands that live outside main.c, and the serving runs that the
 * lesson and the bench share.
 */
#ifndef ENGINE_COMMANDS_H
#define ENGINE_COMMANDS_H

#include "06_batching/engine.h"
#include "common/bench.h"
#include "common/model.h"

#define ENGINE_PROG "06_batching"

int engine_cmd_serve(int argc, char **argv);        /* serve: a requests file in, tokens out (serve.c) */
int engine_cmd_gen_requests(int argc, char **argv); /* gen-requests: a seeded workload file (serve.c) */
int engine_cmd_verify(int argc, char **argv);       /* verify: the engine against chapter 05 alone (verify.c) */
int engine_cmd_bench(int argc, char **argv);        /* bench: the rate sweep, batch scaling, chapters (bench.c) */
int engine_cmd_server(int argc, char **argv);       /* server: the engine behind an OpenAI-compatible HTTP API (server.c) */

/* --prefix-caching on|off for serve, verify and bench: var a const char ** ("on" or "off"). */
#define ENGINE_OPTION_PREFIX_CACHING(var)                                                                              \
    {.name = "prefix-caching", .kind = ARG_CHOICE, .dest = (var), .choices = "on|off",                                  \
     .help = "on (default, as in vLLM): a request shares the cached KV blocks of the longest prompt prefix an "         \
             "earlier sequence computed, and prefills only the rest; off: every prompt computed in full. Always "       \
             "off under --policy static-padded (request-level batching had none)"}

/* --max-batch, --max-tokens-per-step, --block-size and --num-blocks for serve and server: o an
 * EngineOptions *. */
#define ENGINE_OPTIONS_BATCH(o)                                                                                        \
    {.name = "max-batch", .kind = ARG_INT, .dest = &(o)->max_batch, .metavar = "N",                                    \
     .help = "sequences running at once (default 32)", .min = 1, .max = 1 << 20},                                      \
        {.name = "max-tokens-per-step", .kind = ARG_INT, .dest = &(o)->max_tokens, .metavar = "N",                     \
         .help = "tokens per iteration, decodes and prefill chunks (default 256)", .min = 1, .max = 1 << 24},          \
        {.name = "block-size", .kind = ARG_INT, .dest = &(o)->block_size, .metavar = "B",                              \
         .help = "tokens per KV block (default 16)", .min = 1, .max = 4096},                                           \
        {.name = "num-blocks", .kind = ARG_INT, .dest = &(o)->num_blocks, .metavar = "N",                              \
         .help = "blocks in the pool (default: max-batch sequences of seq_len tokens)", .min = 1, .max = 1 << 28}

/* The columns of the bench's rows, and of the lesson's rate sweep (engine_rate_sweep's rows). */
#define ENGINE_BENCH_COLUMNS                                                                                           \
    "policy\trate\trequests\tmax_batch\ttokens_per_s\tttft_p50_s\tttft_p99_s\ttpot_p50_ms\ttpot_p99_ms\tmean_batch\t"  \
    "preemptions\tmodel\tpeak_rss_mib\tpct_dram"

/* The workload of the lesson and of the bench's rate sweep: n requests with skewed lengths
 * (lognormal, medians ENGINE_PROMPT_MEDIAN prompt and ENGINE_OUT_MEDIAN output tokens, clipped to
 * m's seq_len, prompt ids over its vocabulary) arriving at `rate` per second (0: all at once),
 * drawn with `seed`. Dies on an error; engine_free_requests(reqs, n) frees them. */
#define ENGINE_PROMPT_MEDIAN 24
#define ENGINE_OUT_MEDIAN 48
EngineRequest *engine_skewed_requests(const Model *m, int n, double rate, uint64_t seed);

/* The metrics of reqs served with the default options but these (cuda: the forward on the GPU;
 * prefix caching as engine_bench_prefix_caching says, on unless bench --prefix-caching off set
 * it); dies on an error. keep_log: the metrics keep the iteration log (engine_free_metrics). */
extern int engine_bench_prefix_caching;
EngineMetrics engine_serve_once(const Model *m, const EngineRequest *reqs, int n, EnginePolicy policy, int max_batch,
                                int num_blocks, int keep_log, int cuda);

/* The metrics of reqs served with options o; dies on an error. */
EngineMetrics engine_serve_options(const Model *m, const EngineRequest *reqs, int n, const EngineOptions *o);

/* Prefix caching's runs (lesson_prefix.c): a workload of n requests sharing prefixes for model m
 * (engine.h's PrefixWorkloadSpec with `shared` tokens of system prompt, questions of 16..64
 * tokens, 8..24 output tokens, conversations of 4 turns 0.5 s apart; `rate` requests or
 * conversations per second, 0: all at once), dying on an error; reqs served with prefix caching
 * off (res[0]) and on (res[1]), continuous, max_batch, the other options at their defaults; the
 * lesson's part 4. */
EngineRequest *engine_prefix_requests(const Model *m, EnginePrefixKind kind, int n, int shared, double rate,
                                      uint64_t seed);
void engine_prefix_compare(const Model *m, const EngineRequest *reqs, int n, int max_batch, EngineMetrics res[2]);
void engine_lesson_prefix(const Model *m);

/* Throughput and latency against the arrival rate under n_pol policies: engine_skewed_requests of
 * n_req requests (seed 7) at each of the n_rates rates.
 * res (n_pol * n_rates): policy p at rate ri in res[p * n_rates + ri]. With a tsv, one row per
 * point, policy by policy (so that a plot joins each policy's points). */
void engine_rate_sweep(const Model *m, Tsv *tsv, const double *rates, int n_rates, int n_req, int max_batch,
                       const EnginePolicy *policies, int n_pol, EngineMetrics *res);

#endif
