/*
 * bench.c: chapter 02's attn, verify and bench subcommands, its versions as the harness sees them,
 * and the decode measurement that the lesson and bench share.
 *
 *   02_mqa_gqa attn     attention on .npy files, H a multiple of Hkv
 *   02_mqa_gqa verify   every version against the reference on the grid, all H:Hkv ratios
 *   02_mqa_gqa bench    decode and prefill sweeps over Hkv: TSV rows +
 *                       build/bench/02_mqa_gqa_bench.dat + build/plots/02_mqa_gqa_bench.png
 */
#include <math.h>
#include <stdio.h>

#include "02_mqa_gqa/commands.h"
#include "02_mqa_gqa/gqa.h"
#include "common/error.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/tensor.h"

/* `02_mqa_gqa bench`: its rows, its --help, and how far its sweep goes. */
static const BenchCommand BENCH = {
    .prog = GQA_PROG,
    .columns = "mode\tdevice\tkernel\tB\tH\tHkv\tT\tS\tD\tcausal\ttime_ms\tgflops\tgbs\tkv_read_bytes\tpct_peak"
               "\tpct_dram",
    .summary =
        "Decode: one query per sequence (B=4, H=16, D=64) against caches of S = 1024 .. max-s keys, for\n"
        "Hkv in {16, 8, 4, 2, 1}, caches flushed before each run. Prefill: T = S = 256 .. 2048, causal,\n"
        "B=1, H=16. Columns: mode device kernel B H Hkv T S D causal time_ms gflops gbs kv_read_bytes\n"
        "pct_peak pct_dram. kv_read_bytes is what the version reads of K and V: 2*B*Hkv*S*D*4 for\n"
        "'grouped' and 'cublas', 2*B*H*S*D*4 for 'ref' and 'naive'; gbs = kv_read_bytes / time.\n"
        "The reference runs up to S = 8192 (decode) and T = 1024 (prefill).",
    .limit = {.name = "max-s", .value = 32768, .min = 1024, .max = 1 << 22, .help =
                  "longest cache of the decode sweep (default 32768)"},
};

/* ==== this chapter's versions, as the harness sees them ========================================= */

ATTN_ENTRY(gqa_run_cpu, GqaShape, gqa_shape, gqa_attention_cpu(kernel, &s, q, k, v, out))
ATTN_CUDA_ENTRY(run_cuda, GqaShape, gqa_shape, gqa_attention_cuda(kernel, &s, q, k, v, out))

const AttnImpls GQA_IMPLS = {
    .prog = GQA_PROG,
    .ref = gqa_run_cpu, .ref_is_cpu1 = 1, /* the reference: CPU kernel 1 */
    .cpu = gqa_run_cpu, .cpu_name = gqa_cpu_kernel_name, .n_cpu = GQA_CPU_KERNELS,
    ATTN_IF_CUDA(.cuda = run_cuda, .cuda_name = gqa_cuda_kernel_name, .n_cuda = GQA_CUDA_KERNELS),
    .attn_help = "Grouped-query attention on .npy tensors: query head h reads key/value head h / (H/Hkv).\n"
                 "H must be a multiple of Hkv (Hkv = H: MHA; Hkv = 1: MQA).\n"
                 "Kernels: CPU 1 = reference, 2 = grouped (default); CUDA 1 = naive, 2 = cuBLAS (default).",
};

/* ==== decode and prefill measurements (shared by the lesson and bench) =========================== */

const int GQA_HKV[GQA_N_HKV] = {16, 8, 4, 2, 1};

AttnDims gqa_decode_dims(int B, int H, int Hkv, int S, int D)
{
    return (AttnDims){.B = B, .H = H, .Hkv = Hkv, .T = 1, .S = S, .D = D, .causal = 1, .scale = 1.0f / sqrtf((float)D)};
}

double gqa_decode_bytes_read(const AttnDims *d, int reads_per_query_head)
{
    return 2.0 * d->B * (reads_per_query_head ? d->H : d->Hkv) * (double)d->S * d->D * sizeof(float);
}

AttnTiming gqa_time_decode(Device dev, int kernel, const AttnDims *d, int repeats)
{
    Tensor q, k, v;
    attn_random_inputs(d, 7, &q, &k, &v);
    AttnTiming t = attn_time(&GQA_IMPLS, dev, kernel, d, &q, &k, &v, repeats, 1.0, 1);
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
    if (t.rc != 0)
        die_with_error();
    return t;
}

/* ==== attn and verify =========================================================================== */

int gqa_cmd_attn(int argc, char **argv) { return attn_command(&GQA_IMPLS, argc, argv); }
int gqa_cmd_verify(int argc, char **argv) { return attn_verify_command(&GQA_IMPLS, argc, argv); }

/* ==== bench ===================================================================================== */

/* Times one point (decode: caches flushed before each run) and writes its row; -1, the error
 * printed, when the version fails. */
static int bench_point(Tsv *tsv, int prefill, Device dev, int kernel, const AttnDims *d, int repeats)
{
    Tensor q, k, v;
    attn_random_inputs(d, 3, &q, &k, &v);
    AttnTiming t = attn_time(&GQA_IMPLS, dev, kernel, d, &q, &k, &v, repeats, 1.5, !prefill);
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
    if (t.rc != 0) {
        fprintf(stderr, "%s bench: %s\n", GQA_PROG, error_message());
        return -1;
    }
    const Roofline *roof = roofline_get();
    const double secs = t.time.median_s;
    const double flops = attn_flops(d->B, d->H, d->T, d->S, d->D, d->causal);
    const double bytes = gqa_decode_bytes_read(d, kernel == 1);
    const double gf = flops / secs / 1e9, gbs = bytes / secs / 1e9;
    tsv_row(tsv, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.3f\t%.2f\t%.0f\t%.2f\t%.1f",
            prefill ? "prefill" : "decode", device_name(dev), attn_impl_name(&GQA_IMPLS, dev, kernel), d->B, d->H,
            d->Hkv, d->T, d->S, d->D, d->causal, secs * 1e3, gf, gbs, bytes,
            dev == DEVICE_CPU ? 100.0 * gf / roof->fma_gflops : NAN,
            dev == DEVICE_CPU ? 100.0 * gbs / roof->dram_gbs : NAN);
    return 0;
}

/* One version and one Hkv: decode for S = 1024 .. max_s, or prefill for T = S = 256 .. 2048. */
static void bench_sweep(Tsv *tsv, int prefill, Device dev, int kernel, int hkv, int max_s, int repeats)
{
    for (int n = prefill ? 256 : 1024; n <= (prefill ? 2048 : max_s); n *= 2) {
        if (dev == DEVICE_CPU && kernel == 1 && n > (prefill ? 1024 : 8192))
            break;
        AttnDims d = prefill ? (AttnDims){.B = 1, .H = 16, .Hkv = hkv, .T = n, .S = n, .D = 64, .causal = 1,
                                          .scale = 0.125f}
                             : gqa_decode_dims(4, 16, hkv, n, 64);
        bench_progress("%s %s %s Hkv=%d n=%d ...", prefill ? "prefill" : "decode", device_name(dev),
                       attn_impl_name(&GQA_IMPLS, dev, kernel), hkv, n);
        if (bench_point(tsv, prefill, dev, kernel, &d, repeats) != 0)
            break;
    }
}

int gqa_cmd_bench(int argc, char **argv)
{
    BenchSession b;
    bench_command_begin(&b, &BENCH, NULL, 0, argc, argv);
    Device devs[2];
    for (int i = 0, n = bench_devices(&b, devs); i < n; i++)
        for (int prefill = 0; prefill <= 1; prefill++) /* prefill: MHA, GQA-4 and MQA only */
            for (int kern = 1; kern <= attn_impl_count(&GQA_IMPLS, devs[i]); kern++)
                for (int h = 0; h < GQA_N_HKV; h++)
                    if (!prefill || GQA_HKV[h] == 16 || GQA_HKV[h] == 4 || GQA_HKV[h] == 1)
                        bench_sweep(&b.tsv, prefill, devs[i], kern, GQA_HKV[h], b.limit, b.repeats);
    bench_end(&b);
    return 0;
}
