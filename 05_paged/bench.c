/*
 * bench.c: decode through the block tables against chapter 04's contiguous cache, timed -- the
 * `bench` subcommand, and the timing the lesson's part 4 prints.
 *
 *   05_paged bench   TSV rows + build/bench/05_paged_bench.dat + build/plots/05_paged_bench.png:
 *                    decode GB/s for block sizes 1 .. 128, blocks in order and shuffled, against
 *                    the contiguous cache and against this machine's bandwidth for scattered reads
 *
 * What it measures: a decode step reads every cached K and V row once, so its speed is a memory
 * speed. Paging adds a table lookup per block and, when blocks are scattered, costs the CPU its
 * prefetcher; the rows say how much at each block size.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "04_kvcache/commands.h"
#include "04_kvcache/kvcache.h"
#include "05_paged/commands.h"
#include "05_paged/paged.h"
#include "common/bench.h"
#include "common/device.h"
#include "common/error.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/tensor.h"

/* `05_paged bench`: its rows, its --help, and how far its sweep goes. */
static const BenchCommand BENCH = {
    .prog = PAGED_PROG,
    .device_help = "auto: CPU, and the GPU when present",
    .columns = "device\tvariant\tblock_size\tB\tH\tHkv\tL\tD\ttime_ms\tgbs\tpct_dram\tvs_contiguous",
    .summary =
        "Decode attention, one query per sequence, B = 16 sequences of L tokens, H = 8, Hkv in {8, 2},\n"
        "D = 128, caches flushed before each run: chapter 04's split kernel over its contiguous cache,\n"
        "then the paged fast kernel for block sizes 1, 4, 8, 16, 32, 64, 128, with each sequence's blocks\n"
        "in order (paged_in_order) and with every block anywhere (paged_shuffled: the free list shuffled,\n"
        "the sequences growing side by side). GB/s = 2*B*Hkv*L*D*4 bytes / time. memory_scattered rows:\n"
        "this machine's read bandwidth for pieces of one block of one kv head (bs*D*4 bytes) taken in\n"
        "random order, the limit for shuffled blocks. On a GPU (CUDA events, kernels alone): chapter 04's\n"
        "split kernel over a contiguous cache, and v1 and v2 for block sizes 8, 16, 32, in order and\n"
        "shuffled.\n"
        "Columns: device variant block_size B H Hkv L D time_ms gbs pct_dram vs_contiguous.",
    .limit = {.name = "l", .value = 16384, .min = 16, .max = 1 << 22, .help =
                  "tokens per sequence (default 16384: K and V of 2 GiB and 512 MiB, far beyond the L3 cache)"},
};

/* ==== one decode call, timed ======================================================================== */

typedef struct {
    const PagedPool *p;
    PagedSeq **seqs;    /* (n_seq) */
    const int *q_start; /* (n_seq + 1): sequence i's queries are rows q_start[i] .. q_start[i + 1] - 1 */
    int n_seq, H, rc;
    const float *q;     /* (n_seq, H, D) */
    float *out;         /* (n_seq, H, D) */
} PagedRun;

static void run_paged(void *ctx)
{
    PagedRun *r = ctx;
    r->rc = paged_attention_fast(r->p, 0, r->H, 1.0f / sqrtf((float)r->p->D), 1, r->n_seq, r->seqs, r->q_start, r->q,
                                 r->out);
}

/* The paged fast kernel over a pool of exactly the B sequences' blocks of bs tokens, holding
 * chapter 04's benchmark rows (kvcache_bench_rows). */
static double time_paged(int B, int H, int Hkv, int L, int D, int bs, int shuffled, int repeats)
{
    PagedPool p;
    if (paged_pool_create(&p, 1, Hkv, D, bs, B * ((L + bs - 1) / bs)) != 0)
        die_with_error();
    if (shuffled)
        paged_pool_shuffle(&p, 99);
    float *rows = kvcache_bench_rows(Hkv, D);
    float *q = mem_alloc_or_die((size_t)B * H * D * sizeof(float), "q (B, H, D)");
    float *o = mem_alloc_or_die((size_t)B * H * D * sizeof(float), "out (B, H, D)");
    kvcache_bench_queries(q, (size_t)B * H * D);
    PagedSeq *seqs = mem_alloc_or_die((size_t)B * sizeof(PagedSeq), "block tables (B)");
    PagedSeq **ptrs = mem_alloc_or_die((size_t)B * sizeof(PagedSeq *), "sequence list (B)");
    int *q_start = mem_alloc_or_die((size_t)(B + 1) * sizeof(int), "query starts (B + 1)");
    for (int b = 0; b <= B; b++)
        q_start[b] = b;
    for (int b = 0; b < B; b++)
        paged_seq_init(&seqs[b]), ptrs[b] = &seqs[b];
    const int step = shuffled ? bs : L; /* shuffled: a block at a time, the sequences side by side */
    for (int t = 0; t < L; t += step)
        for (int b = 0; b < B; b++) {
            const int n = L - t < step ? L - t : step;
            if (paged_seq_append(&p, &seqs[b], n) != 0)
                die_with_error();
            for (int i = 0; i < n; i++) {
                const float *row = kvcache_bench_row(rows, t + i, b, Hkv, D);
                paged_write(&p, &seqs[b], 0, t + i, 1, row, row);
            }
        }
    PagedRun run = {.p = &p, .seqs = ptrs, .q_start = q_start, .n_seq = B, .H = H, .q = q, .out = o};
    BenchTiming t = bench_time_setup(run_paged, cache_flush, &run, 1, repeats, 2.0);
    if (run.rc != 0)
        die_with_error();
    for (int b = 0; b < B; b++)
        paged_seq_free(&p, &seqs[b]);
    mem_free(seqs), mem_free(ptrs), mem_free(q_start), mem_free(rows), mem_free(q), mem_free(o);
    paged_pool_free(&p);
    return t.median_s;
}

PagedDecodeTiming paged_time_decode(int B, int H, int Hkv, int L, int D, int bs, int repeats, int contig, int shuffled)
{
    PagedDecodeTiming out = {.contig_s = NAN, .paged_s = NAN, .bytes = 2.0 * B * Hkv * (double)L * D * sizeof(float)};
    if (contig) /* chapter 04's split kernel over its contiguous cache */
        out.contig_s = kvcache_time_decode(2, B, H, Hkv, L, D, KV_F32, repeats, NULL);
    if (bs > 0)
        out.paged_s = time_paged(B, H, Hkv, L, D, bs, shuffled, repeats);
    return out;
}

/* ==== bench ========================================================================================= */

enum { BENCH_B = 16, BENCH_H = 8, BENCH_D = 128, BENCH_N_SIZES = 7 };
static const int BENCH_HKV[2] = {8, 2}, BENCH_SIZES[BENCH_N_SIZES] = {1, 4, 8, 16, 32, 64, 128};

/* What the CPU rows say against what paging is expected to reach (docs/05_paged.md, "What was
 * expected"): per Hkv and placement (in order, shuffled). */
#define EXPECT_SPEED_PCT 90.0 /* paged at block size >= 16: % of the contiguous cache's speed */
#define EXPECT_DRAM_PCT 80.0  /* paged at block size 16: % of the DRAM read bandwidth */
typedef struct {
    double worst16[2][2]; /* the slowest paged/contiguous ratio at block size >= 16 */
    double pct16[2][2];   /* % of the DRAM bandwidth at block size 16 */
} BenchExpect;

/* The machine's own limit for scattered blocks: reading pieces of one block of one kv head. */
static void bench_scattered(Tsv *tsv, const Roofline *roof)
{
    for (int i = 0; i < BENCH_N_SIZES; i++) {
        bench_progress("scattered reads of %d-token blocks ...", BENCH_SIZES[i]);
        const double gbs = roofline_scattered_read_gbs((size_t)BENCH_SIZES[i] * BENCH_D * sizeof(float));
        tsv_row(tsv, "cpu\tmemory_scattered\t%d\tnan\tnan\tnan\tnan\t%d\tnan\t%.2f\t%.1f\tnan", BENCH_SIZES[i], BENCH_D,
                gbs, 100.0 * gbs / roof->dram_gbs);
    }
}

static void bench_cpu(Tsv *tsv, const Roofline *roof, int L, int repeats, BenchExpect *tg)
{
    const int B = BENCH_B, H = BENCH_H, D = BENCH_D;
    for (int hi = 0; hi < 2; hi++) {
        const int Hkv = BENCH_HKV[hi];
        bench_progress("decode Hkv=%d contiguous ...", Hkv);
        PagedDecodeTiming c = paged_time_decode(B, H, Hkv, L, D, 0, repeats, 1, 0);
        tsv_row(tsv, "cpu\tcontiguous\t0\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\t1.000", B, H, Hkv, L, D,
                c.contig_s * 1e3, c.bytes / c.contig_s / 1e9, 100.0 * c.bytes / c.contig_s / 1e9 / roof->dram_gbs);
        for (int shuffled = 0; shuffled <= 1; shuffled++)
            for (int i = 0; i < BENCH_N_SIZES; i++) {
                const int bs = BENCH_SIZES[i];
                bench_progress("decode Hkv=%d paged bs=%d %s ...", Hkv, bs, shuffled ? "shuffled" : "in order");
                PagedDecodeTiming t = paged_time_decode(B, H, Hkv, L, D, bs, repeats, 0, shuffled);
                const double gbs = t.bytes / t.paged_s / 1e9, ratio = c.contig_s / t.paged_s;
                tsv_row(tsv, "cpu\tpaged_%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\t%.3f",
                        shuffled ? "shuffled" : "in_order", bs, B, H, Hkv, L, D, t.paged_s * 1e3, gbs,
                        100.0 * gbs / roof->dram_gbs, ratio);
                if (bs >= 16)
                    tg->worst16[hi][shuffled] = ratio < tg->worst16[hi][shuffled] ? ratio : tg->worst16[hi][shuffled];
                if (bs == 16)
                    tg->pct16[hi][shuffled] = 100.0 * gbs / roof->dram_gbs;
            }
    }
}

#if HAVE_CUDA
/* CUDA events, kernels alone: chapter 04's split kernel over a contiguous cache, then v1 and v2
 * for block sizes 8, 16, 32, in order and shuffled. */
static void bench_gpu(Tsv *tsv, int L, int repeats)
{
    const int B = BENCH_B, H = BENCH_H, D = BENCH_D, gpu_sizes[3] = {8, 16, 32};
    for (int hi = 0; hi < 2; hi++) {
        const int Hkv = BENCH_HKV[hi];
        const double bytes = 2.0 * B * Hkv * (double)L * D * sizeof(float);
        bench_progress("GPU decode Hkv=%d ...", Hkv);
        const double c_ms = paged_time_cuda(0, B, H, Hkv, L, D, 16, 0, repeats);
        if (c_ms > 0)
            tsv_row(tsv, "cuda\tcontiguous\t0\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\tnan\t1.000", B, H, Hkv, L, D, c_ms,
                    bytes / c_ms / 1e6);
        for (int kern = 1; kern <= PAGED_CUDA_KERNELS; kern++)
            for (int shuffled = 0; shuffled <= 1; shuffled++)
                for (int i = 0; i < 3; i++) {
                    const double ms = paged_time_cuda(kern, B, H, Hkv, L, D, gpu_sizes[i], shuffled, repeats);
                    if (ms > 0)
                        tsv_row(tsv, "cuda\t%s_%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\tnan\t%.3f",
                                paged_cuda_kernel_name(kern), shuffled ? "shuffled" : "in_order", gpu_sizes[i], B, H,
                                Hkv, L, D, ms, bytes / ms / 1e6, c_ms > 0 ? c_ms / ms : NAN);
                }
    }
}
#endif

int paged_cmd_bench(int argc, char **argv)
{
    BenchSession b;
    bench_command_begin(&b, &BENCH, NULL, 0, argc, argv);
    const Roofline *roof = roofline_get();
    BenchExpect tg = {.worst16 = {{1e9, 1e9}, {1e9, 1e9}}, .pct16 = {{0, 0}, {0, 0}}};
    if (b.use_cpu) {
        bench_scattered(&b.tsv, roof);
        bench_cpu(&b.tsv, roof, b.limit, b.repeats, &tg);
    }
#if HAVE_CUDA
    if (b.use_gpu)
        bench_gpu(&b.tsv, b.limit, b.repeats);
#endif
    bench_progress_done();
    for (int hi = 0; hi < 2 && b.use_cpu; hi++)
        for (int sh = 0; sh <= 1; sh++) {
            const double speed = 100.0 * tg.worst16[hi][sh], dram = tg.pct16[hi][sh];
            const char *blocks = sh ? "shuffled" : "in order";
            char speed_bound[32], dram_bound[32];
            snprintf(speed_bound, sizeof speed_bound, ">= %.0f%%", EXPECT_SPEED_PCT);
            snprintf(dram_bound, sizeof dram_bound, ">= %.0f%%", EXPECT_DRAM_PCT);
            bench_summary(speed >= EXPECT_SPEED_PCT, speed_bound,
                          "Hkv=%d, L=%d, blocks %s: the slowest paged run at block size >= 16 at %.1f%% of the "
                          "contiguous cache's speed", BENCH_HKV[hi], b.limit, blocks, speed);
            bench_summary(dram >= EXPECT_DRAM_PCT, dram_bound,
                          "Hkv=%d, L=%d, blocks %s: block size 16 reads at %.1f%% of the DRAM bandwidth", BENCH_HKV[hi],
                          b.limit, blocks, dram);
        }
    bench_end(&b);
    return 0;
}
