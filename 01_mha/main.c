/*
 * main.c: the chapter 01 program, build/bin/01_mha.
 *
 *   01_mha [--device D]   the lesson: what MHA computes, one layer timed, and the sweep over T
 *                         that shows time and the score matrix growing as T^2 (plotted)
 *   01_mha attn ...       attention on .npy files (design.md §4)
 *   01_mha verify ...     every version against the reference on the shape grid
 *   01_mha bench ...      TSV rows + build/bench/01_mha_bench.dat + build/plots/01_mha_bench.png
 *
 * Every subcommand takes --help.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "01_mha/mha.h"
#include "common/args.h"
#include "common/attn_cli.h"
#include "common/bench.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/paths.h"
#include "common/plot.h"
#include "common/rng.h"
#include "common/roofline.h"
#include "common/tensor.h"
#include "common/verify.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

#define PROG "01_mha"

/* ==== running one attention on either device ================================================== */

/* One attention problem with its buffers on the device that runs it. */
typedef struct {
    Device dev;
    int kernel;
    MhaShape s;
    const float *q, *k, *v; /* q (B, H, T, D), k and v (B, H, S, D): host or device pointers */
    float *out;             /* (B, H, T, D) */
    int rc;
} AttnRun;

static void attn_run(void *ctx)
{
    AttnRun *r = ctx;
#if HAVE_CUDA
    if (r->dev == DEVICE_CUDA) {
        r->rc = mha_attention_cuda(r->kernel, &r->s, r->q, r->k, r->v, r->out);
        cuda_sync();
        return;
    }
#endif
    r->rc = mha_attention_cpu(r->kernel, &r->s, r->q, r->k, r->v, r->out);
}

static int n_kernels(Device dev) { return dev == DEVICE_CUDA ? MHA_CUDA_KERNELS : MHA_CPU_KERNELS; }

static const char *kernel_name(Device dev, int kernel)
{
#if HAVE_CUDA
    if (dev == DEVICE_CUDA)
        return mha_cuda_kernel_name(kernel);
#endif
    (void)dev;
    return mha_cpu_kernel_name(kernel);
}

/* Host in, host out, on any device: copies to and from the GPU when dev is CUDA. */
static int attention_on(Device dev, int kernel, const MhaShape *s, const float *q, const float *k, const float *v,
                        float *out)
{
#if HAVE_CUDA
    if (dev == DEVICE_CUDA) {
        const size_t qb = (size_t)s->B * s->H * s->T * s->D * sizeof(float);
        const size_t kb = (size_t)s->B * s->H * s->S * s->D * sizeof(float);
        float *d_q = cuda_alloc(qb), *d_k = cuda_alloc(kb), *d_v = cuda_alloc(kb), *d_o = cuda_alloc(qb);
        cuda_upload(d_q, q, qb), cuda_upload(d_k, k, kb), cuda_upload(d_v, v, kb);
        int rc = mha_attention_cuda(kernel, s, d_q, d_k, d_v, d_o);
        if (rc == 0)
            cuda_download(out, d_o, qb);
        cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o);
        return rc;
    }
#endif
    (void)dev;
    return mha_attention_cpu(kernel, s, q, k, v, out);
}

/* Random q, k, v ~ N(0, 1) for shape s. */
static void random_qkv(const MhaShape *s, uint64_t seed, Tensor *q, Tensor *k, Tensor *v)
{
    Rng rng;
    rng_seed(&rng, seed);
    *q = tensor_zeros(4, (size_t[]){(size_t)s->B, (size_t)s->H, (size_t)s->T, (size_t)s->D}, "q");
    *k = tensor_zeros(4, (size_t[]){(size_t)s->B, (size_t)s->H, (size_t)s->S, (size_t)s->D}, "k");
    *v = tensor_zeros(4, (size_t[]){(size_t)s->B, (size_t)s->H, (size_t)s->S, (size_t)s->D}, "v");
    tensor_fill_normal(q, &rng, 0.0f, 1.0f);
    tensor_fill_normal(k, &rng, 0.0f, 1.0f);
    tensor_fill_normal(v, &rng, 0.0f, 1.0f);
}

/* Times attention of shape s on dev: one warm-up, then up to `repeats` runs within budget_s.
 * GPU buffers are uploaded before timing. *peak: the most memory the run held (CPU: measured
 * by the allocator; GPU: the score matrix, its largest buffer). *rc: 0, or -1 on failure. */
static BenchTiming time_attention(Device dev, int kernel, const MhaShape *s, const Tensor *q, const Tensor *k,
                                  const Tensor *v, int repeats, double budget_s, size_t *peak, int *rc)
{
    AttnRun run = {dev, kernel, *s, q->data, k->data, v->data, NULL, 0};
    float *h_out = mem_alloc_or_die(tensor_bytes(q), "output");
    run.out = h_out;
#if HAVE_CUDA
    float *d_q = NULL, *d_k = NULL, *d_v = NULL, *d_o = NULL;
    if (dev == DEVICE_CUDA) {
        d_q = cuda_alloc(tensor_bytes(q)), d_k = cuda_alloc(tensor_bytes(k));
        d_v = cuda_alloc(tensor_bytes(v)), d_o = cuda_alloc(tensor_bytes(q));
        cuda_upload(d_q, q->data, tensor_bytes(q)), cuda_upload(d_k, k->data, tensor_bytes(k));
        cuda_upload(d_v, v->data, tensor_bytes(v));
        run.q = d_q, run.k = d_k, run.v = d_v, run.out = d_o;
    }
#endif
    size_t before = mem_current_bytes();
    mem_reset_peak();
    BenchTiming t = bench_time(attn_run, &run, 1, repeats, budget_s);
    *peak = dev == DEVICE_CPU ? mem_peak_bytes() - before : mha_scores_bytes(s);
    *rc = run.rc;
#if HAVE_CUDA
    if (dev == DEVICE_CUDA)
        cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o);
#endif
    mem_free(h_out);
    return t;
}

/* ==== attn ====================================================================================== */

static int cmd_attn(int argc, char **argv)
{
    AttnArgs a;
    AttnInputs in;
    Device dev;
    attn_args_parse(&a, PROG,
                    "Multi-head attention on .npy tensors: O = softmax(Q Kᵀ * scale + mask) V, per batch and head.\n"
                    "Chapter 01 needs as many key/value heads as query heads (Hkv = H).\n"
                    "Kernels: CPU 1 = reference, 2 = OpenMP (default); CUDA 1 = naive, 2 = cuBLAS (default).",
                    argc, argv);
    if (device_resolve(a.device, &dev) != 0)
        die_with_error();
    if (a.kernel > n_kernels(dev))
        die("--kernel %d: chapter 01 has %s kernels 1..%d", a.kernel, device_name(dev), n_kernels(dev));
    if (attn_inputs_load(&a, ATTN_HEADS_EQUAL, &in) != 0)
        die_with_error();
    MhaShape s = {in.B, in.H, in.T, in.S, in.D, a.causal, in.scale};
    float *out = mem_alloc(tensor_bytes(&in.q), "the output (B, H, T, D)");
    if (!out || attention_on(dev, a.kernel, &s, in.q.data, in.k.data, in.v.data, out) != 0 ||
        attn_output_save(&a, &in, out) != 0)
        die_with_error();
    fprintf(stderr, "%s attn: B=%d H=%d T=%d S=%d D=%d causal=%d scale=%g on %s (kernel %s) -> %s\n", PROG, in.B,
            in.H, in.T, in.S, in.D, a.causal, (double)in.scale, device_name(dev), kernel_name(dev, a.kernel),
            a.out_path);
    mem_free(out);
    attn_inputs_free(&in);
    return 0;
}

/* ==== verify ==================================================================================== */

typedef struct {
    const char *device;
    int kernel, quick, verbose;
} VerifyArgs;

/* Fills q, k with small integers (so that every logit is an exact integer, whatever the order of
 * the sum) scaled to make logits of about +-1e4, or all about -1e4 when all_negative. */
static void extreme_logits(Tensor *q, Tensor *k, int all_negative, Rng *rng)
{
    for (size_t i = 0; i < q->numel; i++)
        q->data[i] = all_negative ? 100.0f : (float)((int)rng_below(rng, 21) - 10) * 10.0f;
    for (size_t i = 0; i < k->numel; i++)
        k->data[i] = all_negative ? -(float)(1 + rng_below(rng, 3)) : (float)((int)rng_below(rng, 21) - 10) * 10.0f;
}

/* Runs every selected kernel on one shape against the reference. */
static void verify_shape(VerifyTally *tally, const VerifyArgs *va, int have_gpu, const MhaShape *s, uint64_t seed,
                         int extreme)
{
    Tensor q, k, v;
    random_qkv(s, seed, &q, &k, &v);
    if (extreme) {
        Rng rng;
        rng_seed(&rng, seed + 1);
        extreme_logits(&q, &k, extreme == 2, &rng);
    }
    float *ref = mem_alloc_or_die(tensor_bytes(&q), "reference output");
    float *out = mem_alloc_or_die(tensor_bytes(&q), "output");
    if (mha_attention_ref(s, q.data, k.data, v.data, ref) != 0)
        die_with_error();
    const char *what = extreme == 1 ? " logits~+-1e4" : extreme == 2 ? " logits~-1e4" : "";
    for (int d = 0; d < 2; d++) {
        Device dev = d ? DEVICE_CUDA : DEVICE_CPU;
        if ((dev == DEVICE_CUDA && !have_gpu) || (strcmp(va->device, "cpu") == 0 && dev == DEVICE_CUDA) ||
            (strcmp(va->device, "cuda") == 0 && dev == DEVICE_CPU))
            continue;
        for (int kern = 1; kern <= n_kernels(dev); kern++) {
            if ((va->kernel && kern != va->kernel) || (dev == DEVICE_CPU && kern == 1))
                continue; /* CPU kernel 1 is the reference itself */
            char label[160];
            snprintf(label, sizeof label, "%s %-6s B=%d H=%d T=%d S=%d D=%d causal=%d%s", device_name(dev),
                     kernel_name(dev, kern), s->B, s->H, s->T, s->S, s->D, s->causal, what);
            memset(out, 0xff, tensor_bytes(&q)); /* NaN: every output element must be written */
            int rc = attention_on(dev, kern, s, q.data, k.data, v.data, out);
            CompareResult r = compare_f32(label, out, ref, q.numel, 1e-5, 1e-4, rc == 0 ? 3 : 0);
            verify_record(tally, rc == 0 && r.n_bad == 0, "%s  max_abs_err=%.2e", label, r.max_abs_err);
        }
    }
    mem_free(ref), mem_free(out);
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
}

static int cmd_verify(int argc, char **argv)
{
    VerifyArgs va = {"auto", 0, 0, 0};
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &va.device, .choices = DEVICE_CHOICES,
         .help = "auto: CPU versions, and CUDA versions when a GPU is present"},
        {.name = "kernel", .kind = ARG_INT, .dest = &va.kernel, .metavar = "N",
         .help = "check only version N", .min = 1, .max = 2},
        {.name = "quick", .kind = ARG_FLAG, .dest = &va.quick,
         .help = "lengths up to 129 only (for sanitizers)"},
        {.name = "verbose", .kind = ARG_FLAG, .dest = &va.verbose, .help = "print passing cases too"},
    };
    ArgCommand cmd = {PROG " verify", "[options]",
                      "Checks every attention version against the CPU reference (kernel 1) on the shape grid of\n"
                      "design.md §5: T, S in {1, 2, 17, 63, 64, 65, 127, 128, 129, 257, 1023}, D in {32, 64, 80, 128},\n"
                      "causal and not, plus logits of +-1e4 and rows of very negative logits. Tolerance: atol 1e-5,\n"
                      "rtol 1e-4. Ends with 'N passed, N failed'.",
                      specs, 4};
    args_parse_or_exit(&cmd, argc, argv);

    char why[256];
    int have_gpu = device_cuda_available(why, sizeof why);
    if (strcmp(va.device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    if (!have_gpu && strcmp(va.device, "cpu") != 0)
        printf("CUDA versions skipped: %s\n", why);

    VerifyTally tally = {0, 0, va.verbose};
    uint64_t seed = 1;
    int n_case = 0;
    for (int i = 0; i < VERIFY_N_LENGTHS; i++)
        for (int j = 0; j < VERIFY_N_LENGTHS; j++)
            for (int causal = 0; causal <= 1; causal++, n_case++) {
                int T = VERIFY_LENGTHS[i], S = VERIFY_LENGTHS[j];
                if (va.quick && (T > 129 || S > 129))
                    continue;
                int D = VERIFY_HEAD_DIMS[n_case % VERIFY_N_HEAD_DIMS];
                int H = (int[]){1, 4, 8}[n_case % 3], B = 1 + n_case % 2;
                if ((double)T * S * H * B > 3e5) /* keep the reference quick on big shapes */
                    H = 1, B = 1;
                MhaShape s = {B, H, T, S, D, causal, 1.0f / sqrtf((float)D)};
                verify_shape(&tally, &va, have_gpu, &s, seed++, 0);
            }
    for (int extreme = 1; extreme <= 2; extreme++)
        for (int causal = 0; causal <= 1; causal++) {
            MhaShape s = {2, 3, 33, 65, 64, causal, 1.0f};
            verify_shape(&tally, &va, have_gpu, &s, seed++, extreme);
        }
    return verify_finish(&tally);
}

/* ==== bench ===================================================================================== */

typedef struct {
    const char *device, *out;
    int max_t, repeats;
} BenchArgs;

/* Times one (device, kernel, T) point and prints its row. */
static void bench_point(Tsv *tsv, Device dev, int kernel, const MhaShape *s, int repeats)
{
    Tensor q, k, v;
    random_qkv(s, 42, &q, &k, &v);
    size_t peak;
    int rc;
    BenchTiming t = time_attention(dev, kernel, s, &q, &k, &v, repeats, 2.0, &peak, &rc);
    double gflops = attn_flops(s->B, s->H, s->T, s->S, s->D, s->causal) / t.median_s / 1e9;
    if (rc != 0)
        fprintf(stderr, "%s bench: %s %s T=%d: %s\n", PROG, device_name(dev), kernel_name(dev, kernel), s->T,
                error_message());
    else
        tsv_row(tsv, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\t%zu\t%zu", device_name(dev),
                kernel_name(dev, kernel), s->B, s->H, s->T, s->S, s->D, s->causal, t.median_s * 1e3, gflops,
                dev == DEVICE_CPU ? 100.0 * gflops / roofline_get()->fma_gflops : NAN, mha_scores_bytes(s), peak);
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
}

static int cmd_bench(int argc, char **argv)
{
    BenchArgs ba = {"auto", NULL, 0, 5};
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &ba.device, .choices = DEVICE_CHOICES,
         .help = "auto: CPU versions, and CUDA versions when a GPU is present"},
        {.name = "out", .kind = ARG_STRING, .dest = &ba.out, .metavar = "FILE", .help = "rows to FILE instead of stdout"},
        {.name = "max-t", .kind = ARG_INT, .dest = &ba.max_t, .metavar = "N",
         .help = "longest sequence (default 8192 on the CPU, 16384 on a GPU)", .min = 128, .max = 1 << 20},
        {.name = "repeats", .kind = ARG_INT, .dest = &ba.repeats, .metavar = "N",
         .help = "timed runs per point, median reported (default 5)", .min = 1, .max = 1000},
    };
    ArgCommand cmd = {PROG " bench", "[options]",
                      "Times each attention version for T = S = 128 .. max-t (B = 1, H = 8, D = 64, causal).\n"
                      "Columns: device kernel B H T S D causal time_ms gflops pct_peak scores_bytes peak_bytes.\n"
                      "GFLOP/s counts 4*D FLOPs per visible (query, key) pair; pct_peak is against this machine's\n"
                      "measured FMA peak (CPU only); peak_bytes is the most memory held during a run (CPU: measured;\n"
                      "GPU: the score matrix). The reference (kernel 1) stops at T = 2048.",
                      specs, 4};
    args_parse_or_exit(&cmd, argc, argv);

    char why[256], dat[4096];
    int have_gpu = device_cuda_available(why, sizeof why);
    if (strcmp(ba.device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    Tsv tsv;
    paths_in_build(dat, sizeof dat, "bench", PROG "_bench.dat");
    if (tsv_open(&tsv, ba.out, dat) != 0)
        die_with_error();
    const Roofline *roof = roofline_get();
    fprintf(stderr, "%s bench on %s: FMA peak %.1f GFLOP/s, DRAM %.1f GB/s%s%s\n", PROG, roofline_machine(),
            roof->fma_gflops, roof->dram_gbs, have_gpu ? "; GPU: " : "", have_gpu ? device_description(DEVICE_CUDA) : "");
    tsv_header(&tsv, "device\tkernel\tB\tH\tT\tS\tD\tcausal\ttime_ms\tgflops\tpct_peak\tscores_bytes\tpeak_bytes");
    for (int d = 0; d < 2; d++) {
        Device dev = d ? DEVICE_CUDA : DEVICE_CPU;
        if ((dev == DEVICE_CUDA && !have_gpu) || (dev == DEVICE_CUDA && strcmp(ba.device, "cpu") == 0) ||
            (dev == DEVICE_CPU && strcmp(ba.device, "cuda") == 0))
            continue;
        int max_t = ba.max_t ? ba.max_t : dev == DEVICE_CUDA ? 16384 : 8192;
        for (int kern = 1; kern <= n_kernels(dev); kern++)
            for (int T = 128; T <= max_t; T *= 2) {
                if (dev == DEVICE_CPU && kern == 1 && T > 2048)
                    break;
                MhaShape s = {1, 8, T, T, 64, 1, 0.125f};
                if (mha_scores_bytes(&s) > mem_physical_bytes() / 2) {
                    fprintf(stderr, "%s bench: stopping at T=%d: the score matrix would need more than half of RAM\n",
                            PROG, T);
                    break;
                }
                bench_progress("%s %s T=%d ...", device_name(dev), kernel_name(dev, kern), T);
                bench_point(&tsv, dev, kern, &s, ba.repeats);
            }
    }
    bench_progress_done();
    tsv_close(&tsv);
    char png[4096];
    if (plot_draw(PROG, "bench", dat, 0, png, sizeof png) == 0)
        fprintf(stderr, "%s bench: data %s, plot %s\n", PROG, dat, png);
    else if (plot_available())
        fprintf(stderr, "%s bench: plot failed: %s\n", PROG, error_message());
    return 0;
}

/* ==== the lesson ================================================================================ */

static void lesson_intro(void)
{
    printf("Chapter 01: multi-head attention (MHA)\n"
           "======================================\n\n"
           "Attention lets every position of a sequence read from the others. Per batch b and head h:\n"
           "    scores = Q Kᵀ / sqrt(D)         (T, S)  one number per (query, key) pair\n"
           "    P      = softmax(scores + mask)  (T, S)  each row sums to 1; the causal mask hides the future\n"
           "    O      = P V                     (T, D)  each output row is a weighted mean of value rows\n"
           "Multi-head: one projection X Wqᵀ of width H*D is cut into H heads of D dims that attend\n"
           "independently; their outputs are concatenated and mixed by Wo. This chapter computes it the\n"
           "obvious way: the whole (B, H, T, S) score matrix is built in memory, so time and memory grow\n"
           "with T*S. We measure that growth.\n\n");
}

typedef struct {
    const MhaWeights *w; /* host weights, or device weights when dev is CUDA */
    Device dev;
    int kernel, B, T;
    const float *x; /* (B, T, C) */
    float *y;       /* (B, T, C) */
    int rc;
} LayerRun;

static void layer_run(void *ctx)
{
    LayerRun *r = ctx;
#if HAVE_CUDA
    if (r->dev == DEVICE_CUDA) {
        r->rc = mha_layer_forward_cuda(r->w, r->kernel, r->x, r->B, r->T, 1, r->y);
        cuda_sync();
        return;
    }
#endif
    r->rc = mha_layer_forward(r->w, r->kernel, r->x, r->B, r->T, 1, r->y);
}

typedef struct {
    const float *a, *b; /* a (M, K), b (N, K) */
    float *out;         /* (M, N) */
    size_t M, N, K;
} MatmulRun;

static void matmul_run(void *ctx)
{
    MatmulRun *r = ctx;
    matmul_nt(r->out, r->a, r->b, r->M, r->N, r->K);
}

static void print_layer_row(Device dev, int kernel, double seconds, double flops, const Roofline *roof,
                            const char *memory, const char *diff)
{
    double gf = flops / seconds / 1e9;
    char pct[16] = "-";
    if (dev == DEVICE_CPU)
        snprintf(pct, sizeof pct, "%.1f%%", 100.0 * gf / roof->fma_gflops);
    printf("   %-4s %-7s %9.2f ms %9.2f %8s %14s %20s\n", device_name(dev), kernel_name(dev, kernel), seconds * 1e3,
           gf, pct, memory, diff);
}

/* Part 1: one layer of a small model, every version against the CPU reference. */
static void lesson_layer(Device dev, const Roofline *roof)
{
    const int B = 1, T = 1024, C = 512, H = 8, D = 64;
    char b1[32], b2[32], diff[32];
    Rng rng;
    rng_seed(&rng, 7);
    MhaWeights w;
    mha_weights_init(&w, C, H, D, &rng);
    Tensor x = tensor_zeros(3, (size_t[]){B, T, C}, "x (B, T, C)");
    tensor_fill_normal(&x, &rng, 0.0f, 1.0f);
    Tensor y_ref = tensor_zeros(3, (size_t[]){B, T, C}, "y (B, T, C)");
    Tensor y = tensor_zeros(3, (size_t[]){B, T, C}, "y (B, T, C)");
    MhaShape s = {B, H, T, T, D, 1, 0.125f};
    const double flops = 8.0 * B * T * C * H * D + attn_flops(B, H, T, T, D, 1);

    printf("1. One attention layer: B=%d, T=%d, C=%d, H=%d, D=%d, causal\n", B, T, C, H, D);
    printf("   parameters     4*C*H*D = %zu (%s)\n", mha_weights_count(&w),
           format_bytes(4.0 * mha_weights_count(&w), b1, sizeof b1));
    printf("   FLOPs          projections 8*B*T*C*H*D = %.2f GFLOP; attention 4*D*(visible pairs) = %.2f GFLOP\n",
           8.0 * B * T * C * H * D / 1e9, attn_flops(B, H, T, T, D, 1) / 1e9);
    printf("   score matrix   B*H*T*S*4 bytes = %s (the layer's input X is %s)\n\n",
           format_bytes((double)mha_scores_bytes(&s), b1, sizeof b1),
           format_bytes((double)tensor_bytes(&x), b2, sizeof b2));
    printf("   %-12s %12s %9s %8s %14s %20s\n", "version", "time", "GFLOP/s", "% peak", "peak memory",
           "max |y - y_ref|");
    for (int kern = 1; kern <= MHA_CPU_KERNELS; kern++) {
        LayerRun run = {&w, DEVICE_CPU, kern, B, T, x.data, kern == 1 ? y_ref.data : y.data, 0};
        size_t before = mem_current_bytes();
        mem_reset_peak();
        BenchTiming t = bench_time(layer_run, &run, kern == 1 ? 0 : 1, kern == 1 ? 1 : 3, 2.0);
        if (run.rc != 0)
            die_with_error();
        snprintf(diff, sizeof diff, kern == 1 ? "(reference)" : "%.2e", max_abs_diff(y.data, y_ref.data, y.numel));
        print_layer_row(DEVICE_CPU, kern, t.median_s, flops, roof,
                        format_bytes((double)(mem_peak_bytes() - before), b1, sizeof b1), diff);
    }
    /* where the layer's time goes: the projections are plain matrix products */
    MatmulRun mm = {x.data, w.wq, y.data, (size_t)B * T, (size_t)H * D, (size_t)C};
    BenchTiming tm = bench_time(matmul_run, &mm, 1, 5, 1.0);
    double mm_gf = 2.0 * mm.M * mm.N * mm.K / tm.median_s / 1e9;
    printf("   (one projection, x (%d, %d) times Wqᵀ (%d, %d) by common/matmul: %.2f ms, %.1f GFLOP/s = %.0f%% of peak;\n"
           "    the projections run near the FMA peak, the attention core does not)\n",
           B * T, C, C, H * D, tm.median_s * 1e3, mm_gf, 100.0 * mm_gf / roof->fma_gflops);
#if HAVE_CUDA
    if (dev == DEVICE_CUDA) {
        MhaWeights d_w;
        mha_weights_to_device(&w, &d_w);
        float *d_x = cuda_alloc(tensor_bytes(&x)), *d_y = cuda_alloc(tensor_bytes(&y));
        cuda_upload(d_x, x.data, tensor_bytes(&x));
        for (int kern = 1; kern <= MHA_CUDA_KERNELS; kern++) {
            LayerRun run = {&d_w, DEVICE_CUDA, kern, B, T, d_x, d_y, 0};
            BenchTiming t = bench_time(layer_run, &run, 2, 20, 1.0);
            if (run.rc != 0)
                die_with_error();
            cuda_download(y.data, d_y, tensor_bytes(&y));
            snprintf(diff, sizeof diff, "%.2e", max_abs_diff(y.data, y_ref.data, y.numel));
            print_layer_row(DEVICE_CUDA, kern, t.median_s, flops, roof,
                            format_bytes((double)mha_scores_bytes(&s), b1, sizeof b1), diff);
        }
        cuda_free(d_x), cuda_free(d_y);
        mha_weights_free_device(&d_w);
    }
#else
    (void)dev;
#endif
    printf("\n");
    mha_weights_free(&w);
    tensor_free(&x), tensor_free(&y), tensor_free(&y_ref);
}

/* Part 2: the attention core alone as T doubles: time and memory x4 per doubling. */
static void lesson_sweep(Device dev, int max_t, const Roofline *roof)
{
    const int H = 8, D = 64, ref_max = 1024;
    char dat[4096], b1[32], b2[32];
    paths_in_build(dat, sizeof dat, "bench", PROG "_lesson.dat");
    Tsv tsv;
    if (tsv_open(&tsv, "/dev/null", dat) != 0)
        die_with_error();
    tsv_header(&tsv, "T\ttime_ms\tscores_mib\tpeak_mib\tref_time_ms\tgflops\tgpu_time_ms");
    printf("2. The quadratic wall: the attention core alone, B=1, H=%d, D=%d, causal, T = S\n", H, D);
    printf("   time: CPU kernel 'omp' (median of 3); memory: the most bytes held during the call, measured by\n"
           "   the allocator; ref: the reference kernel, timed once up to T=%d.\n\n", ref_max);
    printf("   %6s %13s %14s %11s %7s %7s %9s %7s %11s%s\n", "T", "score matrix", "measured peak", "time", "x time",
           "x mem", "GFLOP/s", "% peak", "ref time", dev == DEVICE_CUDA ? "    GPU cublas" : "");
    double prev_t = 0, prev_m = 0;
    int T;
    for (T = 256; T <= max_t; T *= 2) {
        MhaShape s = {1, H, T, T, D, 1, 0.125f};
        Tensor q, k, v;
        random_qkv(&s, 100 + (uint64_t)T, &q, &k, &v);
        size_t peak, unused;
        int rc;
        BenchTiming t = time_attention(DEVICE_CPU, 2, &s, &q, &k, &v, 3, 1.5, &peak, &rc);
        if (rc != 0)
            die_with_error();
        double ref_ms = NAN, gpu_ms = NAN;
        if (T <= ref_max) {
            BenchTiming tr = time_attention(DEVICE_CPU, 1, &s, &q, &k, &v, 1, 1.0, &unused, &rc);
            ref_ms = tr.median_s * 1e3;
        }
        if (dev == DEVICE_CUDA) {
            BenchTiming tg = time_attention(DEVICE_CUDA, 2, &s, &q, &k, &v, 10, 1.0, &unused, &rc);
            gpu_ms = rc == 0 ? tg.median_s * 1e3 : NAN;
        }
        double gf = attn_flops(1, H, T, T, D, 1) / t.median_s / 1e9;
        char xt[16] = "", xm[16] = "", refs[24] = "-", gpus[24] = "";
        if (prev_t > 0) {
            snprintf(xt, sizeof xt, "x%.1f", t.median_s / prev_t);
            snprintf(xm, sizeof xm, "x%.1f", (double)peak / prev_m);
        }
        if (!isnan(ref_ms))
            snprintf(refs, sizeof refs, "%.1f ms", ref_ms);
        if (dev == DEVICE_CUDA)
            snprintf(gpus, sizeof gpus, "  %9.3f ms", gpu_ms);
        printf("   %6d %13s %14s %8.1f ms %7s %7s %9.2f %6.1f%% %11s%s\n", T,
               format_bytes((double)mha_scores_bytes(&s), b1, sizeof b1), format_bytes((double)peak, b2, sizeof b2),
               t.median_s * 1e3, xt, xm, gf, 100.0 * gf / roof->fma_gflops, refs, gpus);
        tsv_row(&tsv, "%d\t%.3f\t%.3f\t%.3f\t%.3f\t%.2f\t%.4f", T, t.median_s * 1e3,
                (double)mha_scores_bytes(&s) / 1048576.0, (double)peak / 1048576.0, ref_ms, gf, gpu_ms);
        prev_t = t.median_s, prev_m = (double)peak;
        tensor_free(&q), tensor_free(&k), tensor_free(&v);
    }
    tsv_close(&tsv);
    MhaShape next = {1, H, T, T, D, 1, 0.125f};
    printf("\n   The sweep stops at T=%d (--max-t): T=%d would need %s for the score matrix alone. Peak resident\n"
           "   memory of this process so far: %s. `01_mha bench` goes to T=8192; chapter 03 never builds it.\n",
           T / 2, T, format_bytes((double)mha_scores_bytes(&next), b1, sizeof b1),
           format_bytes((double)mem_peak_rss_bytes(), b2, sizeof b2));
    /* which wall comes first on this machine: memory or time? */
    double t_ms = prev_t * 1e3;
    int t_wall = T / 2;
    MhaShape wall = next;
    while (mha_scores_bytes(&wall) <= mem_physical_bytes()) {
        t_wall *= 2, t_ms *= 4.0;
        wall.T = wall.S = t_wall;
    }
    printf("   This machine has %s of RAM: the score matrix alone outgrows it at T=%d, where one call would\n"
           "   still take only about %.0f s (the measured time at T=%d, x4 per doubling). Memory is the wall.\n\n",
           format_bytes((double)mem_physical_bytes(), b1, sizeof b1), t_wall, t_ms / 1e3, T / 2);
    char png[4096];
    int rc = plot_draw(PROG, "lesson", dat, 1, png, sizeof png);
    if (rc == 0)
        printf("   Plot: %s (data: %s)\n\n", png, dat);
    else if (rc < 0)
        printf("   (plot failed: %s)\n\n", error_message());
}

static int cmd_lesson(int argc, char **argv)
{
    const char *device = "auto";
    int max_t = 4096;
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "where to run the lesson (default auto: the GPU if there is one)"},
        {.name = "max-t", .kind = ARG_INT, .dest = &max_t, .metavar = "N",
         .help = "longest sequence of the sweep (default 4096)", .min = 256, .max = 65536},
    };
    ArgCommand cmd = {PROG, "[attn|verify|bench] [options]",
                      "Chapter 01: multi-head attention. Without a subcommand: the lesson.\n"
                      "Subcommands (each takes --help):\n"
                      "  attn     attention on .npy files (Q, K, V -> O)\n"
                      "  verify   every version against the reference on a grid of shapes\n"
                      "  bench    timing rows (TSV) and a plot, T = 128 .. 8192",
                      specs, 2};
    args_parse_or_exit(&cmd, argc, argv);
    Device dev;
    if (device_resolve(device, &dev) != 0)
        die_with_error();
    const Roofline *roof = roofline_get();
    lesson_intro();
    printf("Machine: %s; measured fp32 FMA peak %.1f GFLOP/s, DRAM read %.1f GB/s.\n", roofline_machine(),
           roof->fma_gflops, roof->dram_gbs);
    printf("Device: %s%s%s.\n\n", device_name(dev), dev == DEVICE_CUDA ? ", " : "",
           dev == DEVICE_CUDA ? device_description(dev) : " (run with a GPU and nvcc for the CUDA versions)");
    lesson_layer(dev, roof);
    lesson_sweep(dev, max_t, roof);
    printf("Take-away: doubling T doubles the work of every query row and doubles the rows, so time and\n"
           "the score matrix both grow x4, and the memory runs out while the time is still affordable.\n"
           "Next: chapter 02 shrinks K and V (fewer key/value heads); chapter 03 removes the score matrix.\n");
    return 0;
}

/* ==== main ====================================================================================== */

int main(int argc, char **argv)
{
    error_set_program(PROG);
    if (argc > 1 && strcmp(argv[1], "attn") == 0)
        return cmd_attn(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "verify") == 0)
        return cmd_verify(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "bench") == 0)
        return cmd_bench(argc - 1, argv + 1);
    if (argc > 1 && argv[1][0] != '-')
        die("unknown subcommand '%s' (expected attn, verify or bench; see '%s --help')", argv[1], PROG);
    return cmd_lesson(argc, argv);
}
