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

/* The metrics of reqs served with the default options but these (cuda: the forward on the GPU);
 * dies on an error. keep_log: the metrics keep the iteration log (engine_free_metrics). */
EngineMetrics engine_serve_once(const Model *m, const EngineRequest *reqs, int n, EnginePolicy policy, int max_batch,
                                int num_blocks, int keep_log, int cuda);

/* Throughput and latency against the arrival rate, both policies: skewed workloads of n_req
 * requests (medians 24 prompt and 48 output tokens, seed 7) at each of the n_rates rates.
 * res (2 * n_rates): static at res[ri], continuous at res[n_rates + ri]. With a tsv, one row per
 * point, all static rows first (so that a plot joins each policy's points). */
void engine_rate_sweep(const Model *m, Tsv *tsv, const double *rates, int n_rates, int n_req, int max_batch,
                       EngineMetrics *res);

#endif
