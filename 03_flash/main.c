/*
 * main.c: the chapter 03 program, build/bin/03_flash: the lesson, and the table of subcommands.
 *
 *   03_flash [--device D]   the lesson: chapter 02 (the score matrix in memory) against flash
 *                           attention for T = S up to 16384: time, GFLOP/s and % of the FMA
 *                           peak, memory by the allocator and by the process's peak RSS; then
 *                           the sweep of tile sizes (Br, Bc) behind the defaults; two plots
 *   03_flash attn ...       attention on .npy files (docs/contracts.md §1.3)
 *   03_flash verify ...     every version against chapter 02's reference on the grid (bench.c)
 *   03_flash bench ...      chapter 02 and 03 on the same shapes: TSV + plot, and a summary of what it measured (bench.c)
 *
 * Every subcommand takes --help.
 */
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "02_mqa_gqa/commands.h"
#include "02_mqa_gqa/gqa.h"
#include "03_flash/commands.h"
#include "03_flash/flash.h"
#include "common/attn_cli.h"
#include "common/attn_harness.h"
#include "common/bench.h"
#include "common/device.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/plot.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/tensor.h"

#define PROG FLASH_PROG

/* ==== the lesson ================================================================================ */

static void lesson_intro(const Roofline *roof)
{
    printf("Chapters 01 and 02 write every score to memory and read it back: for B=1, H=8, T=S=16384 that is\n"
           "8 GiB written, softmaxed and read again, and the machine moves bytes far more slowly than it\n"
           "multiplies (here: %.1f GB/s from DRAM against %.1f GFLOP/s). FlashAttention never builds the\n"
           "matrix. It takes a tile of Br query rows and walks over tiles of Bc keys, keeping per row a\n"
           "running max m, a running sum l and an unnormalised output o. A tile with a larger max m' first\n"
           "rescales the past by exp(m - m'):\n"
           "    m' = max(m, max_j s_j)    l' = l e^(m - m') + sum_j e^(s_j - m')    o' = o e^(m - m') + sum_j e^(s_j - m') v_j\n"
           "and after the last tile out = o / l: exactly softmax(s) V, with only Br x Bc scores alive at once.\n"
           "Each row also returns lse = m + log l, with which partial results over parts of the keys merge.\n\n",
           roof->dram_gbs, roof->fma_gflops);
}

/* The online softmax by hand: one query, four keys in two tiles of two, scalar values, every
 * step printed -- then the same through flash_attention_tiled, and softmax(s) v directly. */
static void lesson_trace(void)
{
    const float s[4] = {1.0f, 3.0f, 2.0f, 5.0f}, v[4] = {10.0f, 20.0f, 30.0f, 40.0f};
    printf("By hand: one query, scores s = (1, 3, 2, 5) against four keys, values v = (10, 20, 30, 40),\n"
           "tiles of 2 keys. The trick is the online normaliser of Milakov & Gimelshein (2018, 'Online\n"
           "normalizer calculation for softmax'), which FlashAttention (Dao et al. 2022) extends to o.\n\n");
    double m = -INFINITY, l = 0.0, o = 0.0;
    for (int t = 0; t < 2; t++) {
        const double s0 = s[2 * t], s1 = s[2 * t + 1], m_new = fmax(m, fmax(s0, s1)), alpha = exp(m - m_new);
        const double e0 = exp(s0 - m_new), e1 = exp(s1 - m_new);
        l = l * alpha + e0 + e1;
        o = o * alpha + e0 * v[2 * t] + e1 * v[2 * t + 1];
        if (t == 0)
            printf("   tile 1, s = (%g, %g): m = %g, nothing to rescale yet, l = %.4f, o = %.4f\n", s0, s1, m_new, l, o);
        else
            printf("   tile %d, s = (%g, %g): m = %g, the past rescaled by e^(%g - %g) = %.4f, l = %.4f, o = %.4f\n",
                   t + 1, s0, s1, m_new, m, m_new, alpha, l, o);
        m = m_new;
    }
    double direct = 0.0, z = 0.0;
    for (int j = 0; j < 4; j++)
        z += exp(s[j] - m);
    for (int j = 0; j < 4; j++)
        direct += exp(s[j] - m) / z * v[j];
    /* the kernel: D = 1, q = 1, k = s, scale 1, so its scores are s */
    const GqaShape shape = {.B = 1, .H = 1, .Hkv = 1, .T = 1, .S = 4, .D = 1, .causal = 0, .scale = 1.0f};
    const float q = 1.0f;
    float out = NAN;
    if (flash_attention_tiled(&shape, (FlashTiles){.Br = 1, .Bc = 2}, &q, s, v, &out, NULL) != 0)
        die_with_error();
    printf("   out = o / l = %.4f; softmax(s) v in one pass: %.4f; flash_attention_tiled (Bc = 2): %.4f\n\n",
           o / l, direct, out);
}

#define LESSON_NT 5
static const int LESSON_T[LESSON_NT] = {1024, 2048, 4096, 8192, 16384};

static void lesson_sweep(const Roofline *roof, char *dat, size_t dat_len)
{
    char b1[32], b2[32], b3[32], b4[32];
    Tsv tsv;
    lesson_data_open(&tsv, dat, dat_len, PROG, "lesson",
                     "T\tch02_ms\tch02_gflops\tch02_alloc_bytes\tch02_rss_bytes\tch03_ms\tch03_gflops"
                     "\tch03_alloc_bytes\tch03_rss_bytes\tpct_peak");
    printf("1. Chapter 02 (grouped, the score matrix in memory) against chapter 03 (fast): B=1, H=8, D=64, causal,\n"
           "   T = S. 'alloc' is the most memory the call held (the allocator's count); 'RSS' the growth of the\n"
           "   process's resident memory during the call, measured in a fresh process. GFLOP/s counts 4*D per\n"
           "   visible (query, key) pair (about 2*T*S*D*H for causal T = S).\n\n");
    printf("   %6s | %10s %8s %10s %10s | %10s %8s %7s %10s %10s | %7s %8s\n", "T", "ch02", "GFLOP/s", "alloc",
           "RSS", "ch03", "GFLOP/s", "% peak", "alloc", "RSS", "speedup", "memory");
    for (int i = 0; i < LESSON_NT; i++) {
        const int T = LESSON_T[i];
        AttnDims d = flash_lesson_dims(T);
        Tensor q, k, v;
        attn_random_inputs(&d, 100 + (uint64_t)T, &q, &k, &v);
        const double flops = attn_flops(d.B, d.H, d.T, d.S, d.D, d.causal);
        bench_progress("T=%d: chapter 03 ...", T);
        AttnTiming t3 = attn_time(&FLASH_IMPLS, DEVICE_CPU, 2, &d, &q, &k, &v, 3, 2.0, 0);
        if (t3.rc != 0)
            die_with_error();
        double rss3 = flash_peak_rss(3, 2, T);
        double ms2 = NAN, gf2 = NAN, alloc2 = NAN, rss2 = NAN;
        if (T <= FLASH_CH02_MAX_T) {
            bench_progress("T=%d: chapter 02 ...", T);
            AttnTiming t2 = attn_time(&GQA_IMPLS, DEVICE_CPU, 2, &d, &q, &k, &v, 2, 2.0, 0);
            if (t2.rc != 0)
                die_with_error();
            ms2 = t2.time.median_s * 1e3, gf2 = flops / t2.time.median_s / 1e9, alloc2 = (double)t2.peak_bytes;
            rss2 = flash_peak_rss(2, 2, T);
        }
        bench_progress_done();
        const double ms3 = t3.time.median_s * 1e3, gf3 = flops / t3.time.median_s / 1e9;
        char c2[4][32] = {"-", "-", "-", "-"}, ratio_t[16] = "-", ratio_m[16] = "-";
        if (!isnan(ms2)) {
            snprintf(c2[0], 32, "%.1f ms", ms2), snprintf(c2[1], 32, "%.1f", gf2);
            snprintf(c2[2], 32, "%s", format_bytes(alloc2, b1, sizeof b1));
            snprintf(c2[3], 32, "%s", rss2 >= 0 ? format_bytes(rss2, b2, sizeof b2) : "?");
            snprintf(ratio_t, sizeof ratio_t, "x%.1f", ms2 / ms3);
            snprintf(ratio_m, sizeof ratio_m, "/%.0f", alloc2 / (double)t3.peak_bytes);
        }
        printf("   %6d | %10s %8s %10s %10s | %7.1f ms %8.1f %6.1f%% %10s %10s | %7s %8s\n", T, c2[0], c2[1], c2[2],
               c2[3], ms3, gf3, 100.0 * gf3 / roof->fma_gflops, format_bytes((double)t3.peak_bytes, b3, sizeof b3),
               rss3 >= 0 ? format_bytes(rss3, b4, sizeof b4) : "?", ratio_t, ratio_m);
        tsv_row(&tsv, "%d\t%.3f\t%.2f\t%.0f\t%.0f\t%.3f\t%.2f\t%zu\t%.0f\t%.1f", T, ms2, gf2, alloc2, rss2, ms3, gf3,
                t3.peak_bytes, rss3, 100.0 * gf3 / roof->fma_gflops);
        tensor_free(&q), tensor_free(&k), tensor_free(&v);
    }
    tsv_close(&tsv);
    AttnDims big = flash_lesson_dims(16384);
    GqaShape gs = gqa_shape(&big);
    printf("\n   Chapter 02 stops at T=%d: at T=16384 its score matrix alone would be %s. Chapter 03's memory is\n"
           "   K and V packed once into panels (the size of K and V) plus a few tiles per thread: linear in T.\n\n",
           FLASH_CH02_MAX_T, format_bytes((double)gqa_scores_bytes(&gs), b1, sizeof b1));
}

#define N_BR 4
#define N_BC 6
static const int SWEEP_BR[N_BR] = {12, 24, 48, 96};
static const int SWEEP_BC[N_BC] = {32, 64, 128, 256, 512, 1024};

typedef struct {
    const GqaShape *s;
    FlashTiles tiles;
    const float *q, *k, *v; /* q (B, H, T, D); k, v (B, Hkv, S, D) */
    float *out;             /* (B, H, T, D) */
    int rc;
} TileRun;

static void tile_run(void *ctx)
{
    TileRun *r = ctx;
    r->rc = flash_attention_fast(r->s, r->tiles, r->q, r->k, r->v, r->out, NULL);
}

/* The bytes one thread's block holds while it walks the keys: Br x D queries, Br x Bc scores and
 * Br x D outputs, fp32. */
static double tile_kib(int Br, int Bc, int D)
{
    return (2.0 * Br * D + (double)Br * Bc) * sizeof(float) / 1024.0;
}

/* The size in KiB of a core's level-1 data cache or level-2 cache, as the C library reads it from
 * the system (0 where it does not say: other C libraries, some virtual machines). */
static long cache_kib(int level)
{
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
    const long bytes = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : _SC_LEVEL2_CACHE_SIZE);
    return bytes > 0 ? bytes / 1024 : 0;
#else
    (void)level;
    return 0;
#endif
}

/* What the sweep's grid (GFLOP/s, [N_BR][N_BC]) says, worded from its numbers: how much short key
 * tiles cost, from which Bc on every row stays within 10% of its best, and how much Br matters. */
static void tiles_reading(const double gf[N_BR][N_BC])
{
    double row_best[N_BR], worst_short = 1e30, best_short = 0, br_spread = 1.0;
    for (int i = 0; i < N_BR; i++) {
        row_best[i] = 0;
        for (int j = 0; j < N_BC; j++)
            row_best[i] = gf[i][j] > row_best[i] ? gf[i][j] : row_best[i];
        const double f = gf[i][0] / row_best[i];
        worst_short = f < worst_short ? f : worst_short, best_short = f > best_short ? f : best_short;
    }
    int flat_from = -1; /* the first column from which every cell is >= 90% of its row's best */
    for (int j0 = N_BC - 1; j0 >= 0; j0--) {
        int ok = 1;
        for (int i = 0; i < N_BR; i++)
            ok &= gf[i][j0] >= 0.9 * row_best[i];
        if (!ok)
            break;
        flat_from = j0;
    }
    for (int j = 0; j < N_BC; j++) { /* Br's effect: each column's fastest over its slowest */
        double lo = 1e30, hi = 0;
        for (int i = 0; i < N_BR; i++)
            lo = gf[i][j] < lo ? gf[i][j] : lo, hi = gf[i][j] > hi ? gf[i][j] : hi;
        br_spread = hi / lo > br_spread ? hi / lo : br_spread;
    }
    printf("   Short key tiles cost most: at Bc = %d the rows run at %.0f-%.0f%% of their best. Every tile, each\n"
           "   MR x 16 block of the output is loaded and stored once by the micro-kernel and every row redoes its\n"
           "   max, rescale and sums, so short tiles spend a large share on that bookkeeping.\n",
           SWEEP_BC[0], 100.0 * worst_short, 100.0 * best_short);
    if (flat_from == N_BC - 1)
        printf("   Only the largest tiles (Bc = %d) keep every row within 10%% of its best in this run.\n",
               SWEEP_BC[flat_from]);
    else if (flat_from >= 0)
        printf("   From Bc = %d on, every row stays within 10%% of its best: past that the size barely matters.\n",
               SWEEP_BC[flat_from]);
    else
        printf("   No Bc keeps every row within 10%% of its best in this run: the largest tiles lose again.\n");
    printf("   Across Br, a column's fastest cell is at most x%.2f its slowest: Br matters %s Bc here (the\n"
           "   micro-kernel of this build takes %d rows at a time).\n\n",
           br_spread, br_spread < 1.0 / worst_short ? "less than" : "as much as", MATMUL_MR);
}

static void lesson_tiles(const Roofline *roof, char *dat, size_t dat_len)
{
    const int T = 2048;
    AttnDims d = flash_lesson_dims(T);
    GqaShape s = gqa_shape(&d);
    Tensor q, k, v;
    attn_random_inputs(&d, 9, &q, &k, &v);
    float *out = mem_alloc_or_die(tensor_bytes(&q), "output (B, H, T, D)");
    const double flops = attn_flops(d.B, d.H, d.T, d.S, d.D, d.causal);
    Tsv tsv;
    lesson_data_open(&tsv, dat, dat_len, PROG, "tiles", "Br\tBc\ttime_ms\tgflops\tpct_peak\ttile_kib");
    FlashTiles def = flash_default_tiles(2);
    printf("2. Tile sizes: GFLOP/s of the fast version at T=S=%d (B=1, H=8, D=%d, causal) for Br query rows by\n"
           "   Bc keys. Per thread a block holds Br x D queries, Br x Bc scores and Br x D outputs: (2*Br*D +\n"
           "   Br*Bc)*4 bytes, %.0f KiB for the default Br=%d, Bc=%d",
           T, d.D, tile_kib(def.Br, def.Bc, d.D), def.Br, def.Bc);
    if (cache_kib(1) > 0 && cache_kib(2) > 0)
        printf(";\n   a core of this machine has %ld KiB of level-1 data cache and %ld KiB of level-2 cache", cache_kib(1),
               cache_kib(2));
    printf(".\n\n   %8s", "Br \\ Bc");
    for (int j = 0; j < N_BC; j++)
        printf(" %8d", SWEEP_BC[j]);
    printf("\n");
    double best = 0, gf[N_BR][N_BC];
    int best_br = 0, best_bc = 0;
    for (int i = 0; i < N_BR; i++) {
        printf("   %8d", SWEEP_BR[i]);
        for (int j = 0; j < N_BC; j++) {
            TileRun run = {.s = &s, .tiles = {.Br = SWEEP_BR[i], .Bc = SWEEP_BC[j]}, .q = q.data, .k = k.data,
                           .v = v.data, .out = out};
            BenchTiming t = bench_time(tile_run, &run, 1, 3, 0.5);
            if (run.rc != 0)
                die_with_error();
            gf[i][j] = flops / t.median_s / 1e9;
            int is_def = SWEEP_BR[i] == def.Br && SWEEP_BC[j] == def.Bc;
            printf(" %7.1f%s", gf[i][j], is_def ? "*" : " ");
            fflush(stdout);
            tsv_row(&tsv, "%d\t%d\t%.3f\t%.2f\t%.1f\t%.1f", SWEEP_BR[i], SWEEP_BC[j], t.median_s * 1e3, gf[i][j],
                    100.0 * gf[i][j] / roof->fma_gflops, tile_kib(SWEEP_BR[i], SWEEP_BC[j], d.D));
            if (gf[i][j] > best)
                best = gf[i][j], best_br = SWEEP_BR[i], best_bc = SWEEP_BC[j];
        }
        printf("\n");
    }
    tsv_close(&tsv);
    printf("\n   * the default (Br=%d, Bc=%d). Fastest in this run: Br=%d, Bc=%d at %.1f GFLOP/s (%.0f%% of peak).\n",
           def.Br, def.Bc, best_br, best_bc, best, 100.0 * best / roof->fma_gflops);
    tiles_reading((const double(*)[N_BC])gf);
    mem_free(out);
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
}

static const Program PROGRAM;

static int cmd_lesson(int argc, char **argv)
{
    const Device dev = lesson_begin(
        &PROGRAM, "where to run (the lesson measures the CPU versions; a GPU adds nothing yet)", NULL, 0, argc, argv);
    const Roofline *roof = roofline_get();
    lesson_intro(roof);
    lesson_trace();
    lesson_machine(dev, 0);
    printf("Device for this lesson: cpu%s.\n\n",
           dev == DEVICE_CUDA ? " (the GPU versions: 03_flash bench --device cuda)" : "");
    char dat1[4096], dat2[4096];
    lesson_sweep(roof, dat1, sizeof dat1);
    lesson_tiles(roof, dat2, sizeof dat2);
    plot_show(PROG, "lesson", dat1, 1, stdout, "", "\n");
    plot_show(PROG, "tiles", dat2, 0, stdout, "", "\n\n");
    return lesson_end(
        "the scores never leave the core's caches, so memory stays linear in T and the time is\n"
        "spent on multiply-adds instead of on writing and re-reading a T x S matrix. Chapter 04 uses the\n"
        "same kernel to decode against a KV cache, one query at a time.\n");
}

/* ==== main ====================================================================================== */

static const Subcommand COMMANDS[] = {
    {.name = "attn", .run = flash_cmd_attn, .summary = "attention on .npy files (Q, K, V -> O)"},
    {.name = "verify", .run = flash_cmd_verify,
     .summary = "every version against chapter 02's reference on a grid of shapes"},
    {.name = "bench", .run = flash_cmd_bench,
     .summary = "chapter 02 and 03 side by side, T = 256 .. 16384: TSV rows and a plot"},
    {.name = "_peak-rss", .run = flash_cmd_peak_rss, .summary = NULL}, /* for the lesson's RSS column */
    {.name = NULL},
};

static const Program PROGRAM = {.name = PROG, .lesson = cmd_lesson, .subcommands = COMMANDS,
                                .title = "Chapter 03: FlashAttention -- tiles, online softmax, no T x S matrix"};

int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
