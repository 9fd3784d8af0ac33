/*
 * bench.h: timing (warm-up, repeats, median) and machine-readable rows (TSV).
 *
 * Every benchmark in the repository prints tab-separated rows with one header line, to stdout
 * or a file, and writes the same rows to a .dat file that the chapter's plot.gp draws. Numbers
 * are never parsed back out of prose.
 */
#ifndef COMMON_BENCH_H
#define COMMON_BENCH_H

#include <stdio.h>

#include "fileio.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*BenchFn)(void *ctx);

typedef struct {
    double median_s, min_s, max_s;
    int runs;
} BenchTiming;

/* Runs fn `warmup` times untimed, then up to `repeats` timed runs, stopping early once at
 * least 3 runs (or 1, if a single run takes longer) have used up `budget_s` seconds.
 * Reports the median. fn must finish its work before returning (a GPU fn synchronises). */
BenchTiming bench_time(BenchFn fn, void *ctx, int warmup, int repeats, double budget_s);

/* bench_time with `setup(ctx)` run, untimed, before every run (warm-ups included). */
BenchTiming bench_time_setup(BenchFn fn, BenchFn setup, void *ctx, int warmup, int repeats, double budget_s);

/* Pushes everything out of the CPU caches by reading a buffer of twice the last-level cache
 * (from sysconf; 64 MiB if unknown) on all threads. As a setup function, it makes a benchmark
 * read its data from DRAM, as a decode step does when the other layers evicted its KV cache. */
void cache_flush(void *unused);

/* Rows to `out` (stdout when out_path is NULL) and to `dat_path` (skipped when NULL). Both files
 * are OutFiles (fileio.h): written beside the target and renamed over it by tsv_close, so an
 * interrupted or failed benchmark keeps the previous rows and the README's data. tsv_open
 * refuses a bad path (a folder, a FIFO nobody reads) before any timing starts; a write that
 * fails in tsv_header, tsv_row or tsv_close is fatal at once: die() with the path and the
 * reason, the temporary files removed (a benchmark is not worth finishing into a full disk). */
typedef struct {
    OutFile out, dat;
    int has_dat;
} Tsv;

int tsv_open(Tsv *t, const char *out_path, const char *dat_path);
void tsv_header(Tsv *t, const char *columns); /* tab-separated column names */
void tsv_row(Tsv *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tsv_close(Tsv *t);

/* A progress line on stderr, redrawn in place; printed only when stderr is a terminal. */
void bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void bench_progress_done(void);

/* One line of a benchmark's summary on stderr, after its rows: what the run measured, what the
 * chapter's reasoning expects, and whether this run got there:
 *   summary: <what, formatted> (expected <expected>; reached | not reached)
 * The chapter's doc says where each expectation comes from and why a CPU may fall short of it. */
void bench_summary(int reached, const char *expected, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif
#endif
