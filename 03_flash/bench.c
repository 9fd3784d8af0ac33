/*
 * bench.c: chapter 03's attn, verify and bench subcommands, its versions as the harness sees them,
 * and the peak-RSS probe behind the lesson's RSS column.
 *
 *   03_flash attn        attention on .npy files (Q, K, V -> O)
 *   03_flash verify      every version against chapter 02's reference on the grid
 *   03_flash bench       chapter 02 and 03 on the same shapes: TSV rows +
 *                        build/bench/03_flash_bench.dat + build/plots/03_flash_bench.png, and a
 *                        summary on stderr (what was expected, what was measured)
 *   03_flash _peak-rss   (not listed) one call in a fresh process, its RSS growth on stdout
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "02_mqa_gqa/commands.h"
#include "03_flash/commands.h"
#include "03_flash/flash.h"
#include "common/error.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/tensor.h"
#include "common/testing.h" /* run_program: the lesson measures a child process's peak memory */

/* `03_flash bench`: its rows, its --help, and how far its sweep goes. */
static const BenchCommand BENCH = {
    .prog = FLASH_PROG,
    .columns = "chapter\tdevice\tkernel\tB\tH\tHkv\tT\tS\tD\tcausal\ttime_ms\tgflops\tpct_peak\talloc_bytes",
    .summary =
        "Times chapter 02's grouped version (up to T = 8192) and this chapter's versions (the tiled\n"
        "v1 up to T = 1024) for T = S = 256 .. max-t, B = 1, H = 8, D = 64, causal, fp32; then the fast\n"
        "CPU version without a mask (causal 0) at T = S = 2048 and 4096.\n"
        "Columns: chapter device kernel B H Hkv T S D causal time_ms gflops pct_peak alloc_bytes.\n"
        "GFLOP/s counts 4*D per visible (query, key) pair; pct_peak is against the FMA peak measured by\n"
        "the roofline probe (CPU rows); alloc_bytes is the most memory a call held (CPU rows). At the\n"
        "end, summary lines on stderr compare what was measured with what docs/03_flash.md expects.",
    .limit = {.name = "max-t", .value = 16384, .min = 256, .max = 1 << 20, .help =
                  "longest sequence (default 16384)"},
};

/* ==== this chapter's versions, as the harness sees them ========================================= */

static ATTN_ENTRY(run_cpu, GqaShape, gqa_shape, flash_attention_cpu(kernel, &s, q, k, v, out, NULL))
ATTN_CUDA_ENTRY(run_cuda, GqaShape, gqa_shape, flash_attention_cuda(kernel, &s, q, k, v, out, NULL))

const AttnImpls FLASH_IMPLS = {
    .prog = FLASH_PROG,
    .ref = gqa_run_cpu, /* chapter 02's reference checks every version of this chapter, v1 included */
    .cpu = run_cpu, .cpu_name = flash_cpu_kernel_name, .n_cpu = FLASH_CPU_KERNELS,
    /* tc computes in fp16: checked by FlashAttention's rule, not fp32 tolerance */
    ATTN_IF_CUDA(.cuda = run_cuda, .cuda_name = flash_cuda_kernel_name, .n_cuda = FLASH_CUDA_KERNELS,
                 .cuda_fp16 = flash_cuda_kernel_fp16),
    .attn_help = "FlashAttention on .npy tensors: the output of chapter 02, computed tile by tile without the\n"
                 "T x S score matrix. H must be a multiple of Hkv; D at most 256.\n"
                 "Kernels: CPU 1 = tiled, 2 = fast (default); CUDA 1 = fa1, 2 = fa2, 3 = tensor cores (default).",
};

/* ==== attn and verify =========================================================================== */

int flash_cmd_attn(int argc, char **argv) { return attn_command(&FLASH_IMPLS, argc, argv); }
int flash_cmd_verify(int argc, char **argv) { return attn_verify_command(&FLASH_IMPLS, argc, argv); }

/* ==== peak RSS of one call, in a fresh process ==================================================== */

/* Hidden subcommand: `_peak-rss CHAPTER KERNEL T` runs one call on the lesson's shape and prints
 * the growth of its resident set during the call (peak RSS after minus RSS before). A fresh
 * process per measurement, because the peak RSS of a process only ever grows. */
int flash_cmd_peak_rss(int argc, char **argv)
{
    if (argc != 4)
        die("usage: %s _peak-rss CHAPTER KERNEL T", FLASH_PROG);
    const int chapter = atoi(argv[1]), kernel = atoi(argv[2]), T = atoi(argv[3]);
    if ((chapter != 2 && chapter != 3) || kernel < 1 || T < 1)
        die("_peak-rss: bad arguments");
    AttnDims d = flash_lesson_dims(T);
    Tensor q, k, v;
    attn_random_inputs(&d, 5, &q, &k, &v);
    float *out = mem_alloc_or_die(tensor_bytes(&q), "output (B, H, T, D)");
    for (size_t i = 0; i < q.numel; i++)
        out[i] = 0.0f; /* touch the output so that it counts before the call */
    size_t before = mem_rss_bytes();
    const AttnFn run = chapter == 2 ? gqa_run_cpu : run_cpu;
    if (run(NULL, kernel, &d, q.data, k.data, v.data, out) != 0)
        die_with_error();
    size_t peak = mem_peak_rss_bytes();
    printf("%zu\n", peak > before ? peak - before : 0);
    mem_free(out);
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
    return 0;
}

double flash_peak_rss(int chapter, int kernel, int T)
{
    char self[PATH_MAX], c[8], kn[8], tn[16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = '\0';
    snprintf(c, sizeof c, "%d", chapter), snprintf(kn, sizeof kn, "%d", kernel), snprintf(tn, sizeof tn, "%d", T);
    const char *argv[] = {self, "_peak-rss", c, kn, tn, NULL};
    ProcResult *r = malloc(sizeof *r); /* 128 KiB of captured output: not for the stack */
    double bytes = -1;
    if (r && run_program(r, argv) == 0 && r->status == 0)
        bytes = atof(r->out);
    free(r);
    return bytes;
}

/* ==== bench ===================================================================================== */

/* What the summary printed at the end reads from the CPU rows. */
typedef struct {
    double pct[16];                     /* % of the FMA peak of the fast version, entry i: T = 256 << i */
    double ms02_4096, ms03_4096;        /* chapter 02's and chapter 03's fast versions at T = 4096 */
    double alloc02_8192, alloc03_16384; /* memory held at each chapter's largest T */
    double nomask_pct[2];               /* the fast version without a mask, T = 2048 and 4096 */
} Summary;

/* variant 0: chapter 02's grouped version (CPU only); 1 .. n: this chapter's kernel 1 .. n. */
static void summary_note(Summary *tg, int variant, int i, int T, double pct, const AttnTiming *t)
{
    if (variant == 2 && i < 16)
        tg->pct[i] = pct;
    if (T == 4096 && variant == 0)
        tg->ms02_4096 = t->time.median_s * 1e3;
    if (T == 4096 && variant == 2)
        tg->ms03_4096 = t->time.median_s * 1e3;
    if (T == FLASH_CH02_MAX_T && variant == 0)
        tg->alloc02_8192 = (double)t->peak_bytes;
    if (T == 16384 && variant == 2)
        tg->alloc03_16384 = (double)t->peak_bytes;
}

/* The summary, from the rows (T = 1024, 2048, 4096 are entries 2, 3, 4): what docs/03_flash.md
 * expects of a tiled kernel whose scores stay in cache, against what this run measured. */
static void summary_print(const Summary *tg)
{
    const double low = fmin(tg->pct[2], fmin(tg->pct[3], tg->pct[4]));
    bench_summary(low >= 50.0, ">= 50% each", "fast CPU version at T = 1024, 2048, 4096: %.1f%%, %.1f%%, %.1f%% of the "
                  "FMA peak", tg->pct[2], tg->pct[3], tg->pct[4]);
    if (!isnan(tg->ms02_4096) && !isnan(tg->ms03_4096))
        bench_summary(tg->ms02_4096 / tg->ms03_4096 >= 5.0, ">= x5",
                      "at T = 4096 chapter 03 is x%.2f faster than chapter 02's fast version (x5 would be %.0f%% of the "
                      "FMA peak)", tg->ms02_4096 / tg->ms03_4096, 5.0 * tg->pct[4] * tg->ms03_4096 / tg->ms02_4096);
    if (!isnan(tg->nomask_pct[0]))
        bench_summary(fmin(tg->nomask_pct[0], tg->nomask_pct[1]) >= 50.0, ">= 50% each",
                      "fast CPU version without a mask at T = 2048, 4096: %.1f%%, %.1f%% of the FMA peak",
                      tg->nomask_pct[0], tg->nomask_pct[1]);
    if (!isnan(tg->alloc02_8192) && !isnan(tg->alloc03_16384))
        bench_summary(tg->alloc03_16384 < 0.05 * 4 * tg->alloc02_8192, "< 5%",
                      "extra memory at T = 16384: chapter 03 %.1f MiB = %.2f%% of chapter 02's %.0f MiB (4x its "
                      "measured T = 8192)", tg->alloc03_16384 / 1048576, 100.0 * tg->alloc03_16384 / (4 * tg->alloc02_8192),
                      4 * tg->alloc02_8192 / 1048576);
}

/* One version for T = S = 256 .. max_t on the lesson's shape, a row per T. */
static void bench_variant(Tsv *tsv, Device dev, int variant, int max_t, int repeats, Summary *tg)
{
    const AttnImpls *im = variant == 0 ? &GQA_IMPLS : &FLASH_IMPLS;
    const int kern = variant == 0 ? 2 : variant;
    for (int T = 256, i = 0; T <= max_t; T *= 2, i++) {
        if (variant == 0 && T > FLASH_CH02_MAX_T)
            break;
        if (dev == DEVICE_CPU && variant == 1 && T > 1024)
            break;
        AttnDims d = flash_lesson_dims(T);
        bench_progress("%s %s T=%d ...", im->prog, attn_impl_name(im, dev, kern), T);
        Tensor q, k, v;
        attn_random_inputs(&d, 3, &q, &k, &v);
        AttnTiming t = attn_time(im, dev, kern, &d, &q, &k, &v, repeats, 2.0, 0);
        tensor_free(&q), tensor_free(&k), tensor_free(&v);
        if (t.rc != 0) {
            fprintf(stderr, "%s bench: %s\n", FLASH_PROG, error_message());
            break;
        }
        const double gf = attn_flops(d.B, d.H, d.T, d.S, d.D, d.causal) / t.time.median_s / 1e9;
        const double p = dev == DEVICE_CPU ? 100.0 * gf / roofline_get()->fma_gflops : NAN;
        tsv_row(tsv, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\t%zu", variant ? "03" : "02",
                device_name(dev), attn_impl_name(im, dev, kern), d.B, d.H, d.Hkv, d.T, d.S, d.D, d.causal,
                t.time.median_s * 1e3, gf, p, t.peak_bytes);
        if (dev == DEVICE_CPU)
            summary_note(tg, variant, i, T, p, &t);
    }
}

/* Prefill without a mask (T = S = 2048, 4096: the shape llama.cpp's CPU flash attention is
 * measured on in docs/contracts.md §6), the fast CPU version: every tile is full, no diagonal. */
static void bench_no_mask(Tsv *tsv, int max_t, int repeats, Summary *tg)
{
    for (int T = 2048, i = 0; T <= 4096 && T <= max_t; T *= 2, i++) {
        AttnDims d = flash_lesson_dims(T);
        d.causal = 0;
        bench_progress("%s fast T=%d, no mask ...", FLASH_PROG, T);
        Tensor q, k, v;
        attn_random_inputs(&d, 6, &q, &k, &v);
        AttnTiming t = attn_time(&FLASH_IMPLS, DEVICE_CPU, 2, &d, &q, &k, &v, repeats, 2.0, 0);
        tensor_free(&q), tensor_free(&k), tensor_free(&v);
        if (t.rc != 0) {
            fprintf(stderr, "%s bench: %s\n", FLASH_PROG, error_message());
            return;
        }
        const double gf = attn_flops(d.B, d.H, d.T, d.S, d.D, d.causal) / t.time.median_s / 1e9;
        tg->nomask_pct[i] = 100.0 * gf / roofline_get()->fma_gflops;
        tsv_row(tsv, "03\tcpu\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t0\t%.4f\t%.2f\t%.1f\t%zu",
                attn_impl_name(&FLASH_IMPLS, DEVICE_CPU, 2), d.B, d.H, d.Hkv, d.T, d.S, d.D, t.time.median_s * 1e3, gf,
                tg->nomask_pct[i], t.peak_bytes);
    }
}

/* The shape of the PyTorch comparison (scripts/sdpa_bench.py): D = 128, T = S = 4096, on the GPU. */
static void bench_sdpa_shape(Tsv *tsv, int repeats)
{
    for (int kern = 1; kern <= attn_impl_count(&FLASH_IMPLS, DEVICE_CUDA); kern++) {
        AttnDims d = {.B = 1, .H = 8, .Hkv = 8, .T = 4096, .S = 4096, .D = 128, .causal = 1,
                      .scale = 1.0f / sqrtf(128.0f)};
        Tensor q, k, v;
        attn_random_inputs(&d, 4, &q, &k, &v);
        AttnTiming t = attn_time(&FLASH_IMPLS, DEVICE_CUDA, kern, &d, &q, &k, &v, repeats, 2.0, 0);
        tensor_free(&q), tensor_free(&k), tensor_free(&v);
        if (t.rc == 0)
            tsv_row(tsv, "03\tcuda\t%s\t1\t8\t8\t4096\t4096\t128\t1\t%.4f\t%.2f\tnan\t0",
                    attn_impl_name(&FLASH_IMPLS, DEVICE_CUDA, kern), t.time.median_s * 1e3,
                    attn_flops(1, 8, 4096, 4096, 128, 1) / t.time.median_s / 1e9);
    }
}

int flash_cmd_bench(int argc, char **argv)
{
    BenchSession b;
    bench_command_begin(&b, &BENCH, NULL, 0, argc, argv);
    Summary tg = {.ms02_4096 = NAN, .ms03_4096 = NAN, .alloc02_8192 = NAN, .alloc03_16384 = NAN,
                  .nomask_pct = {NAN, NAN}};
    Device devs[2];
    for (int i = 0, n = bench_devices(&b, devs); i < n; i++) {
        const Device dev = devs[i];
        /* chapter 02's fast version first (CPU only), then this chapter's versions */
        for (int variant = dev == DEVICE_CPU ? 0 : 1; variant <= attn_impl_count(&FLASH_IMPLS, dev); variant++)
            bench_variant(&b.tsv, dev, variant, b.limit, b.repeats, &tg);
    }
    if (b.use_cpu)
        bench_no_mask(&b.tsv, b.limit, b.repeats, &tg);
    if (b.use_gpu)
        bench_sdpa_shape(&b.tsv, b.repeats);
    bench_progress_done();
    if (b.use_cpu)
        summary_print(&tg);
    bench_end(&b);
    return 0;
}
