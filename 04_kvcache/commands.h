/*
 * commands.h: chapter 04's subcommands that live outside main.c (bench.c, generate_cmd.c), the
 * table of its attention versions that the common harness (attn, verify, bench) runs, and what
 * chapter 05 takes from bench.c: attention through a contiguous cache (its reference) and the
 * decode benchmark (its baseline). And the lesson's section on sampling (lesson_sampling.c), with
 * the example its test checks.
 */
#ifndef KVCACHE_COMMANDS_H
#define KVCACHE_COMMANDS_H

#include "04_kvcache/kvcache.h"
#include "common/attn_harness.h"
#include "common/model.h"

#define KVCACHE_PROG "04_kvcache"

extern const AttnImpls KVCACHE_IMPLS;

/* K and V (B, Hkv, S, D) written into an fp32 cache of max_seq S, then the T queries q (B, H, T, D)
 * at the last T positions of each sequence attended through it by CPU kernel `kernel` -> out
 * (B, H, T, D). This chapter's attn and verify; chapter 05's reference. 0, or -1 with the error. */
int kvcache_attend_bhsd(int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out);

/* The decode benchmark, which chapter 05's bench measures paging against. Its rows:
 * KVCACHE_BENCH_ROWS random rows of (Hkv, D) (seed 11: the values do not change the speed, and
 * 2 GiB of normal numbers would take longer than the benchmark), token t of sequence b getting row
 * (7 t + 13 b) mod KVCACHE_BENCH_ROWS; its queries: a fixed pattern in [-0.5, 0.5). */
#define KVCACHE_BENCH_ROWS 1024
float *kvcache_bench_rows(int Hkv, int D); /* (KVCACHE_BENCH_ROWS, Hkv, D), mem_free it */
const float *kvcache_bench_row(const float *rows, int t, int b, int Hkv, int D);
void kvcache_bench_queries(float *q, size_t n);
/* Median seconds of CPU decode kernel `kernel` over a full cache (one layer, B sequences of L
 * positions, Hkv kv heads of D, dtype dt) of those rows, H query heads, the CPU caches flushed
 * before each run; the cache's bytes into *bytes (NULL: not wanted). Dies on an error. */
double kvcache_time_decode(int kernel, int B, int H, int Hkv, int L, int D, KvDtype dt, int repeats, double *bytes);

/* ---- the lesson's sampling example (lesson_sampling.c) ---------------------------------------- */

/* A hand-chosen logit vector over SAMPLING_EXAMPLE_V ids: its SAMPLING_SHOWN most probable tokens
 * are the table's rows; the table's columns are SAMPLING_SETTINGS[0 .. SAMPLING_PRINTED), the
 * other settings feed its sentences. */
enum { SAMPLING_EXAMPLE_V = 32000, SAMPLING_SHOWN = 8, SAMPLING_PRINTED = 5, SAMPLING_COLUMNS = 7 };

typedef struct {
    const char *label;
    Sampling s;
    double p[SAMPLING_SHOWN]; /* the probability of the example's rank-r token after s (0: cut) */
    double rest;              /* the mass of every other token after s */
    double tail_max;          /* the largest probability among those others */
    double kept_mass;         /* the mass of the kept tokens before renormalising (1: none cut) */
    double dropped_max;       /* the largest probability of a cut token before the cut (0: none cut) */
    int kept;                 /* tokens of nonzero probability */
    int tail_kept;            /* of them, tokens not among the SAMPLING_SHOWN */
} SamplingColumn;

extern const SamplingColumn SAMPLING_SETTINGS[SAMPLING_COLUMNS]; /* label and s of each column */

int sampling_example_id(int rank);           /* the id of the example's rank-th most probable token */
void sampling_example_logits(float *logits); /* (SAMPLING_EXAMPLE_V) */

/* probs (n) = softmax(logits / s->temperature) (T > 0), then the s->top_k most probable kept (0:
 * all) and cut after the first whose running sum passes s->top_p times their mass (run.c's
 * nucleus; 0 or >= 1: no cut), the kept renormalised and the rest 0: the distribution
 * model_sample_with draws from. *kept_mass: the kept tokens' mass before renormalising. The
 * number kept, or -1 (no memory, error recorded). */
int sampling_filter(const float *logits, int n, const Sampling *s, float *probs, double *kept_mass);

/* The lesson's table: cols (SAMPLING_COLUMNS) for the example. 0, or -1 (no memory). */
int sampling_example(SamplingColumn *cols);

/* The lesson's section: the table, what each knob does, and why run.c cuts at top-p 0.9. */
void lesson_sampling(const Model *m);

int kvcache_cmd_attn(int argc, char **argv);     /* attn: attention on .npy files through the cache */
int kvcache_cmd_verify(int argc, char **argv);   /* verify: decode and cache attention against chapter 03 */
int kvcache_cmd_bench(int argc, char **argv);    /* bench: decode GB/s, generation speed, TSV rows and a plot */
int kvcache_cmd_generate(int argc, char **argv); /* generate: token ids in, token ids out */
int kvcache_cmd_agree(int argc, char **argv);    /* _agree: CPU and GPU tokens, up to near-ties (gpu-check.sh) */

#endif
