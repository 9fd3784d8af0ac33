/*
 * bench.c: chapter 01's attn, verify and bench subcommands, and its versions as the harness sees them.
 *
 *   01_mha attn     attention on .npy files (common/attn_harness.c)
 *   01_mha verify   every version against the reference on the shape grid (common/attn_harness.c)
 *   01_mha bench    TSV rows + build/bench/01_mha_bench.dat + build/plots/01_mha_bench.png
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "01_mha/commands.h"
#include "01_mha/mha.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/error.h"
#include "common/tensor.h"

/* `01_mha bench`: its rows, its --help, and how far its sweep goes. */
static const BenchCommand BENCH = {
    .prog = MHA_PROG,
    .columns = "device\tkernel\tB\tH\tT\tS\tD\tcausal\ttime_ms\tgflops\tpct_peak\tscores_bytes\tpeak_bytes",
    .summary =
        "Times each attention version for T = S = 128 .. max-t (B = 1, H = 8, D = 64, causal).\n"
        "Columns: device kernel B H T S D causal time_ms gflops pct_peak scores_bytes peak_bytes.\n"
        "GFLOP/s counts 4*D FLOPs per visible (query, key) pair; pct_peak is against this machine's\n"
        "measured FMA peak (CPU only); peak_bytes is the most memory held during a run (CPU: measured;\n"
        "GPU: the score matrix). The reference (kernel 1) stops at T = 2048.",
    .limit = {.name = "max-t", .value = 0, .min = 128, .max = 1 << 20, .help =
                  "longest sequence (default 8192 on the CPU, 16384 on a GPU)"},
};

/* ==== this chapter's versions, as the harness sees them ========================================= */

static ATTN_ENTRY(run_cpu, MhaShape, mha_shape, mha_attention_cpu(kernel, &s, q, k, v, out))
ATTN_CUDA_ENTRY(run_cuda, MhaShape, mha_shape, mha_attention_cuda(kernel, &s, q, k, v, out))

const AttnImpls MHA_IMPLS = {
    .prog = MHA_PROG,
    .ref = run_cpu, .ref_is_cpu1 = 1, /* the reference: CPU kernel 1 */
    .heads = ATTN_HEADS_EQUAL,
    .cpu = run_cpu, .cpu_name = mha_cpu_kernel_name, .n_cpu = MHA_CPU_KERNELS,
    ATTN_IF_CUDA(.cuda = run_cuda, .cuda_name = mha_cuda_kernel_name, .n_cuda = MHA_CUDA_KERNELS),
    .attn_help = "Multi-head attention on .npy tensors: O = softmax(Q Kᵀ * scale + mask) V, per batch and head.\n"
                 "Chapter 01 needs as many key/value heads as query heads (Hkv = H).\n"
                 "Kernels: CPU 1 = reference, 2 = OpenMP (default); CUDA 1 = naive, 2 = cuBLAS (default).",
};

/* ==== attn and verify =========================================================================== */

int mha_cmd_attn(int argc, char **argv) { return attn_command(&MHA_IMPLS, argc, argv); }
int mha_cmd_verify(int argc, char **argv) { return attn_verify_command(&MHA_IMPLS, argc, argv); }

/* ==== bench ===================================================================================== */

/* Times one (device, kernel, T) point and prints its row. */
static void bench_point(Tsv *tsv, Device dev, int kernel, const AttnDims *d, int repeats)
{
    Tensor q, k, v;
    attn_random_inputs(d, 42, &q, &k, &v);
    AttnTiming t = attn_time(&MHA_IMPLS, dev, kernel, d, &q, &k, &v, repeats, 2.0, 0);
    MhaShape s = mha_shape(d);
    const char *name = attn_impl_name(&MHA_IMPLS, dev, kernel);
    double gflops = attn_flops(d->B, d->H, d->T, d->S, d->D, d->causal) / t.time.median_s / 1e9;
    if (t.rc != 0)
        fprintf(stderr, "%s bench: %s %s T=%d: %s\n", MHA_PROG, device_name(dev), name, d->T, error_message());
    else
        tsv_row(tsv, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\t%zu\t%zu", device_name(dev), name, d->B,
                d->H, d->T, d->S, d->D, d->causal, t.time.median_s * 1e3, gflops,
                dev == DEVICE_CPU ? 100.0 * gflops / roofline_get()->fma_gflops : NAN, mha_scores_bytes(&s),
                dev == DEVICE_CPU ? t.peak_bytes : mha_scores_bytes(&s));
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
}

int mha_cmd_bench(int argc, char **argv)
{
    BenchSession b;
    bench_command_begin(&b, &BENCH, NULL, 0, argc, argv);
    Device devs[2];
    for (int i = 0, n = bench_devices(&b, devs); i < n; i++) {
        const Device dev = devs[i];
        const int longest = b.limit ? b.limit : dev == DEVICE_CUDA ? 16384 : 8192;
        for (int kern = 1; kern <= attn_impl_count(&MHA_IMPLS, dev); kern++)
            for (int T = 128; T <= longest; T *= 2) {
                if (dev == DEVICE_CPU && kern == 1 && T > 2048)
                    break;
                AttnDims d = {.B = 1, .H = 8, .Hkv = 8, .T = T, .S = T, .D = 64, .causal = 1, .scale = 0.125f};
                MhaShape s = mha_shape(&d);
                if (mha_scores_bytes(&s) > mem_physical_bytes() / 2) {
                    fprintf(stderr, "%s bench: stopping at T=%d: the score matrix would need more than half of RAM\n",
                            MHA_PROG, T);
                    break;
                }
                bench_progress("%s %s T=%d ...", device_name(dev), attn_impl_name(&MHA_IMPLS, dev, kern), T);
                bench_point(&b.tsv, dev, kern, &d, b.repeats);
            }
    }
    bench_end(&b);
    return 0;
}
