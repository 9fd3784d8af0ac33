/*
 * commands.h: chapter 04's subcommands that live outside main.c (bench.c, generate_cmd.c), the
 * table of its attention versions that the common harness (attn, verify, bench) runs, and what
 * chapter 05 takes from bench.c: attention through a contiguous cache (its reference) and the
 * decode benchmark (its baseline).
 */
#ifndef KVCACHE_COMMANDS_H
#define KVCACHE_COMMANDS_H

#include "04_kvcache/kvcache.h"
#include "common/attn_harness.h"

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

int kvcache_cmd_attn(int argc, char **argv);     /* attn: attention on .npy files through the cache */
int kvcache_cmd_verify(int argc, char **argv);   /* verify: decode and cache attention against chapter 03 */
int kvcache_cmd_bench(int argc, char **argv);    /* bench: decode GB/s, generation speed, TSV rows and a plot */
int kvcache_cmd_generate(int argc, char **argv); /* generate: token ids in, token ids out */
int kvcache_cmd_agree(int argc, char **argv);    /* _agree: CPU and GPU tokens, up to near-ties (gpu-check.sh) */

#endif
