/* bench.c: median timing and TSV rows (see bench.h). */
#include "bench.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "timer.h"

#define BENCH_MAX_RUNS 1000

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

BenchTiming bench_time(BenchFn fn, void *ctx, int warmup, int repeats, double budget_s)
{
    return bench_time_setup(fn, NULL, ctx, warmup, repeats, budget_s);
}

BenchTiming bench_time_setup(BenchFn fn, BenchFn setup, void *ctx, int warmup, int repeats, double budget_s)
{
    double t[BENCH_MAX_RUNS];
    double spent = 0.0;
    int n = 0;
    if (repeats < 1)
        repeats = 1;
    if (repeats > BENCH_MAX_RUNS)
        repeats = BENCH_MAX_RUNS;
    for (int i = 0; i < warmup; i++) {
        if (setup)
            setup(ctx);
        fn(ctx);
    }
    while (n < repeats) {
        if (setup)
            setup(ctx);
        double t0 = timer_now();
        fn(ctx);
        t[n] = timer_now() - t0;
        spent += t[n++];
        if (spent > budget_s && (n >= 3 || t[0] > budget_s))
            break;
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_double);
    BenchTiming r = {.median_s = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]), .min_s = t[0], .max_s = t[n - 1],
                     .runs = n};
    return r;
}

volatile float cache_flush_sink; /* keeps the flush's reads from being optimised away */

void cache_flush(void *unused)
{
    static float *buf;
    static size_t n;
    (void)unused;
    if (!buf) {
        long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
        n = 2 * (l3 > 0 ? (size_t)l3 : (size_t)32 << 20) / sizeof(float);
        buf = calloc(n, sizeof(float)); /* not mem_alloc: it is not part of what benchmarks measure */
        if (!buf)
            return;
    }
    /* reading (not writing) leaves the caches full of clean lines, as other layers' reads would */
    float sum = 0.0f;
#pragma omp parallel for schedule(static) reduction(+ : sum)
    for (size_t i = 0; i < n; i += 16)
        sum += buf[i];
    cache_flush_sink = sum;
}

int tsv_open(Tsv *t, const char *out_path, const char *dat_path)
{
    memset(t, 0, sizeof *t);
    if (out_open(&t->out, out_path) != 0)
        return -1;
    if (dat_path) {
        if (out_open(&t->dat, dat_path) != 0) {
            out_abort(&t->out);
            return -1;
        }
        t->has_dat = 1;
    }
    return 0;
}

/* After a row: push it out (a reader of stdout or of the file sees rows as they come) and stop
 * at the first failed write. */
static void tsv_flush(OutFile *o)
{
    if (!o->path) { /* standard output */
        stdout_flush_or_die();
        return;
    }
    errno = 0;
    if (!o->err && fflush(o->f) != 0)
        o->err = errno ? errno : EIO;
    if (o->err)
        die("%s: write failed: %s", error_quote(o->path), strerror(o->err));
}

void tsv_header(Tsv *t, const char *columns)
{
    out_printf(&t->out, "%s\n", columns);
    tsv_flush(&t->out);
    if (t->has_dat) {
        out_printf(&t->dat, "# %s\n", columns); /* gnuplot skips the commented header */
        tsv_flush(&t->dat);
    }
}

void tsv_row(Tsv *t, const char *fmt, ...)
{
    OutFile *to[2] = {&t->out, t->has_dat ? &t->dat : NULL};
    for (int k = 0; k < 2 && to[k]; k++) {
        va_list ap;
        va_start(ap, fmt);
        errno = 0;
        if (!to[k]->err && (vfprintf(to[k]->f, fmt, ap) < 0 || fputc('\n', to[k]->f) == EOF))
            to[k]->err = errno ? errno : EIO;
        va_end(ap);
        tsv_flush(to[k]);
    }
}

void tsv_close(Tsv *t)
{
    /* the rows go to stdout or to a file renamed into place now, with the .dat beside it */
    if (out_commit(&t->out) != 0 || (t->has_dat && out_commit(&t->dat) != 0)) {
        out_abort(&t->dat);
        die_with_error();
    }
    t->has_dat = 0;
}

static int progress_shown;

void bench_progress(const char *fmt, ...)
{
    if (!isatty(STDERR_FILENO))
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("\r\033[K", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
    progress_shown = 1;
}

void bench_progress_done(void)
{
    if (progress_shown && isatty(STDERR_FILENO))
        fputs("\r\033[K", stderr);
    progress_shown = 0;
}

void bench_summary(int reached, const char *expected, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("summary: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (expected %s; %s)\n", expected, reached ? "reached" : "not reached");
}
