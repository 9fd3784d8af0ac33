/*
 * main.c: the chapter 01 program, build/bin/01_mha: the lesson, and the table of subcommands.
 *
 *   01_mha [--device D]   the lesson: what MHA computes, one layer timed, and the sweep over T
 *                         that shows time and the score matrix growing as T^2 (plotted)
 *   01_mha attn ...       attention on .npy files (docs/contracts.md §1)
 *   01_mha verify ...     every version against the reference on the shape grid (bench.c)
 *   01_mha bench ...      TSV rows, .dat and plot (bench.c)
 *   01_mha init-weights   random layer weights as .npy files (chapter 02 converts them to GQA)
 *
 * Every subcommand takes --help.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "01_mha/commands.h"
#include "01_mha/mha.h"
#include "common/args.h"
#include "common/attn_cli.h"
#include "common/attn_harness.h"
#include "common/bench.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/npy.h"
#include "common/plot.h"
#include "common/program.h"
#include "common/rng.h"
#include "common/roofline.h"
#include "common/tensor.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

#define PROG MHA_PROG

/* ==== the lesson ================================================================================ */

static void lesson_intro(void)
{
    printf("Attention lets every position of a sequence read from the others. Per batch b and head h:\n"
           "    scores = Q Kᵀ / sqrt(D)         (T, S)  one number per (query, key) pair\n"
           "    P      = softmax(scores + mask)  (T, S)  each row sums to 1; the causal mask hides the future\n"
           "    O      = P V                     (T, D)  each output row is a weighted mean of value rows\n"
           "Multi-head: one projection X Wqᵀ of width H*D is cut into H heads of D dims that attend\n"
           "independently; their outputs are concatenated and mixed by Wo. This chapter computes it the\n"
           "obvious way: the whole (B, H, T, S) score matrix is built in memory, so time and memory grow\n"
           "with T*S. We measure that growth.\n\n");
}

/* The worked example: one head, T = 2 queries, S = 3 keys, D = 4 (so the scale 1/sqrt(D) is 0.5),
 * causal. V's rows are unit vectors, so each output row shows its probabilities. */
enum { HAND_T = 2, HAND_S = 3, HAND_D = 4 };
static const float HAND_Q[HAND_T * HAND_D] = {1, 0, 1, 0, 0, 2, 0, 0};
static const float HAND_K[HAND_S * HAND_D] = {2, 0, 0, 0, 0, 0, 2, 0, 0, 1, 0, 1};
static const float HAND_V[HAND_S * HAND_D] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0};

static void print_rows(const char *name, const float *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        printf("   %-7s", r == 0 ? name : "");
        for (int c = 0; c < cols; c++)
            printf(" %7.4f", x[r * cols + c]);
        printf("\n");
    }
}

/* The 2 x 3 case worked in the open: each step by the formula, then the reference kernel on the
 * same input (the numbers a reader can check on paper; `example` writes them as .npy files). */
static void lesson_by_hand(void)
{
    float sc[HAND_T * HAND_S], p[HAND_T * HAND_S], o[HAND_T * HAND_D] = {0}, ref[HAND_T * HAND_D];
    for (int t = 0; t < HAND_T; t++) {
        const int last = t + HAND_S - HAND_T; /* the causal rule: query t sees keys 0 .. t + S - T */
        double m = -INFINITY, z = 0.0;
        for (int j = 0; j < HAND_S; j++) {
            float dot = 0.0f;
            for (int d = 0; d < HAND_D; d++)
                dot += HAND_Q[t * HAND_D + d] * HAND_K[j * HAND_D + d];
            sc[t * HAND_S + j] = j <= last ? 0.5f * dot : -INFINITY;
            m = fmax(m, sc[t * HAND_S + j]);
        }
        for (int j = 0; j < HAND_S; j++)
            z += exp(sc[t * HAND_S + j] - m);
        for (int j = 0; j < HAND_S; j++) {
            p[t * HAND_S + j] = (float)(exp(sc[t * HAND_S + j] - m) / z);
            for (int d = 0; d < HAND_D; d++)
                o[t * HAND_D + d] += p[t * HAND_S + j] * HAND_V[j * HAND_D + d];
        }
    }
    const MhaShape shape = {.B = 1, .H = 1, .T = HAND_T, .S = HAND_S, .D = HAND_D, .causal = 1, .scale = 0.5f};
    if (mha_attention_ref(&shape, HAND_Q, HAND_K, HAND_V, ref) != 0)
        die_with_error();
    printf("By hand: one head, T = 2 queries, S = 3 keys, D = 4 (scale 1/sqrt(4) = 0.5), causal: query 0\n"
           "sees keys 0 and 1, query 1 all three. V's rows are unit vectors, so O shows the probabilities.\n\n");
    print_rows("Q", HAND_Q, HAND_T, HAND_D), print_rows("K", HAND_K, HAND_S, HAND_D);
    print_rows("V", HAND_V, HAND_S, HAND_D), print_rows("scores", sc, HAND_T, HAND_S);
    print_rows("P", p, HAND_T, HAND_S), print_rows("O = P V", o, HAND_T, HAND_D);
    print_rows("ref", ref, HAND_T, HAND_D);
    printf("\n   scores = Q Kᵀ x 0.5 (-inf: masked); P = softmax of each row, e.g. row 1 = (e^0, e^0, e^1) /\n"
           "   (2 + e); 'ref' is mha_attention_ref on the same input. '%s example --out DIR' writes\n"
           "   these Q, K, V as .npy files for 'attn'.\n\n", PROG);
}

typedef struct {
    const MhaWeights *w; /* host weights, or device weights for layer_run_cuda */
    int kernel, B, T, rc;
    const float *x; /* (B, T, C) */
    float *y;       /* (B, T, C) */
} LayerRun;

static void layer_run(void *ctx)
{
    LayerRun *r = ctx;
    r->rc = mha_layer_forward(r->w, r->kernel, r->x, r->B, r->T, 1, r->y);
}

#if HAVE_CUDA
static void layer_run_cuda(void *ctx)
{
    LayerRun *r = ctx;
    r->rc = mha_layer_forward_cuda(r->w, r->kernel, r->x, r->B, r->T, 1, r->y);
    cuda_sync();
}
#endif

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
    printf("   %-4s %-7s %9.2f ms %9.2f %8s %14s %20s\n", device_name(dev), attn_impl_name(&MHA_IMPLS, dev, kernel), seconds * 1e3,
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
    MhaShape s = {.B = B, .H = H, .T = T, .S = T, .D = D, .causal = 1, .scale = 0.125f};
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
        LayerRun run = {.w = &w, .kernel = kern, .B = B, .T = T, .x = x.data, .y = kern == 1 ? y_ref.data : y.data};
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
    MatmulRun mm = {.a = x.data, .b = w.wq, .out = y.data, .M = (size_t)B * T, .N = (size_t)H * D, .K = (size_t)C};
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
            LayerRun run = {.w = &d_w, .kernel = kern, .B = B, .T = T, .x = d_x, .y = d_y};
            BenchTiming t = bench_time(layer_run_cuda, &run, 2, 20, 1.0);
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
    Tsv tsv;
    lesson_data_open(&tsv, dat, sizeof dat, PROG, "lesson",
                     "T\ttime_ms\tscores_mib\tpeak_mib\tref_time_ms\tgflops\tgpu_time_ms");
    printf("2. The quadratic wall: the attention core alone, B=1, H=%d, D=%d, causal, T = S\n", H, D);
    printf("   time: CPU kernel 'omp' (median of 3); memory: the most bytes held during the call, measured by\n"
           "   the allocator; ref: the reference kernel, timed once up to T=%d.\n\n", ref_max);
    printf("   %6s %13s %14s %11s %7s %7s %9s %7s %11s%s\n", "T", "score matrix", "measured peak", "time", "x time",
           "x mem", "GFLOP/s", "% peak", "ref time", dev == DEVICE_CUDA ? "    GPU cublas" : "");
    double prev_t = 0, prev_m = 0;
    /* the growth per doubling over the sweep: first and last time and memory, the reference's */
    double first_t = 0, first_m = 0, step_lo = 1e30, step_hi = 0, ref_first = NAN, ref_last = NAN;
    int n_points = 0, ref_points = 0;
    int T;
    for (T = 256; T <= max_t; T *= 2) {
        AttnDims d = {.B = 1, .H = H, .Hkv = H, .T = T, .S = T, .D = D, .causal = 1, .scale = 0.125f};
        MhaShape s = mha_shape(&d);
        Tensor q, k, v;
        attn_random_inputs(&d, 100 + (uint64_t)T, &q, &k, &v);
        AttnTiming fast = attn_time(&MHA_IMPLS, DEVICE_CPU, 2, &d, &q, &k, &v, 3, 1.5, 0);
        if (fast.rc != 0)
            die_with_error();
        BenchTiming t = fast.time;
        size_t peak = fast.peak_bytes;
        double ref_ms = NAN, gpu_ms = NAN;
        if (T <= ref_max)
            ref_ms = attn_time(&MHA_IMPLS, DEVICE_CPU, 1, &d, &q, &k, &v, 1, 1.0, 0).time.median_s * 1e3;
        if (dev == DEVICE_CUDA) {
            AttnTiming tg = attn_time(&MHA_IMPLS, DEVICE_CUDA, 2, &d, &q, &k, &v, 10, 1.0, 0);
            gpu_ms = tg.rc == 0 ? tg.time.median_s * 1e3 : NAN;
        }
        double gf = attn_flops(1, H, T, T, D, 1) / t.median_s / 1e9;
        char xt[16] = "", xm[16] = "", refs[24] = "-", gpus[24] = "";
        if (prev_t > 0) {
            snprintf(xt, sizeof xt, "x%.1f", t.median_s / prev_t);
            snprintf(xm, sizeof xm, "x%.1f", (double)peak / prev_m);
            step_lo = fmin(step_lo, t.median_s / prev_t), step_hi = fmax(step_hi, t.median_s / prev_t);
        } else {
            first_t = t.median_s, first_m = (double)peak;
        }
        n_points++;
        if (!isnan(ref_ms)) {
            ref_first = ref_points ? ref_first : ref_ms, ref_last = ref_ms;
            ref_points++;
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
    if (n_points > 1)
        printf("\n   Per doubling of T in this run (geometric mean over the sweep): the omp kernel's time x%.1f (single\n"
               "   steps between x%.1f and x%.1f), its memory x%.1f%s",
               pow(prev_t / first_t, 1.0 / (n_points - 1)), step_lo, step_hi, pow(prev_m / first_m, 1.0 / (n_points - 1)),
               ref_points > 1 ? "" : ".\n");
    if (n_points > 1 && ref_points > 1)
        printf(", the reference's time x%.1f.\n", pow(ref_last / ref_first, 1.0 / (ref_points - 1)));
    MhaShape next = {.B = 1, .H = H, .T = T, .S = T, .D = D, .causal = 1, .scale = 0.125f};
    printf("   The sweep stops at T=%d (--max-t): T=%d would need %s for the score matrix alone. Peak resident\n"
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
    plot_show(PROG, "lesson", dat, 1, stdout, "   ", "\n\n");
}

static const Program PROGRAM;

static int cmd_lesson(int argc, char **argv)
{
    int max_t = 4096;
    const ArgSpec max_t_option = {.name = "max-t", .kind = ARG_INT, .dest = &max_t, .metavar = "N",
                                  .help = "longest sequence of the sweep (default 4096)", .min = 256, .max = 65536};
    const Device dev = lesson_begin(&PROGRAM, "where to run the lesson (default auto: the GPU if there is one)",
                                    &max_t_option, 1, argc, argv);
    const Roofline *roof = roofline_get();
    lesson_intro();
    lesson_by_hand();
    lesson_machine(dev, 1);
    lesson_layer(dev, roof);
    lesson_sweep(dev, max_t, roof);
    return lesson_end(
        "doubling T doubles the work of every query row and doubles the rows, so time and\n"
        "the score matrix both grow about x4 per doubling, and the memory runs out while the time is\n"
        "still affordable.\n"
        "Next: chapter 02 shrinks K and V (fewer key/value heads); chapter 03 removes the score matrix.\n");
}

/* ==== init-weights ============================================================================== */

static int cmd_init_weights(int argc, char **argv)
{
    const char *out = NULL;
    int C = 1024, H = 16, D = 64, seed = 1;
    ArgSpec specs[] = {
        {.name = "out", .kind = ARG_STRING, .dest = &out, .metavar = "DIR", .help = "folder to write into",
         .required = 1},
        {.name = "dim", .kind = ARG_INT, .dest = &C, .metavar = "C", .help = "model dim (default 1024)", .min = 1,
         .max = 65536},
        {.name = "heads", .kind = ARG_INT, .dest = &H, .metavar = "H", .help = "heads (default 16)", .min = 1,
         .max = 4096},
        {.name = "head-dim", .kind = ARG_INT, .dest = &D, .metavar = "D", .help = "head dim (default 64)", .min = 1,
         .max = 4096},
        {.name = "seed", .kind = ARG_INT, .dest = &seed, .metavar = "N", .help = "random seed (default 1)", .min = 0,
         .max = 2147483647},
    };
    const ArgCommand cmd = {
        .name = PROG " init-weights",
        .usage = "--out DIR [options]",
        .summary = "Writes the weights of a random multi-head attention layer as wq.npy (H*D, C), wk.npy (H*D, C),\n"
                   "wv.npy (H*D, C) and wo.npy (C, H*D), entries N(0, 1/fan_in). `02_mqa_gqa convert` turns them\n"
                   "into grouped-query weights.",
        .specs = specs,
        .n_specs = ARRAY_COUNT(specs),
    };
    args_parse_or_exit(&cmd, argc, argv);
    if ((double)C * H * D * 16.0 > (double)mem_budget_bytes()) { /* four float matrices of C x H*D */
        char need[32], have[32];
        die("--dim %d --heads %d --head-dim %d: the weights need %s, more than the %s of memory available", C, H, D,
            format_bytes((double)C * H * D * 16.0, need, sizeof need),
            format_bytes((double)mem_budget_bytes(), have, sizeof have));
    }
    Rng rng;
    rng_seed(&rng, (uint64_t)seed);
    MhaWeights w;
    mha_weights_init(&w, C, H, D, &rng);
    if (mha_weights_save(&w, out) != 0)
        die_with_error();
    printf("%s: wrote an MHA layer, C=%d H=%d D=%d (%zu parameters), to %s/{wq,wk,wv,wo}.npy\n", PROG, C, H, D,
           mha_weights_count(&w), out);
    mha_weights_free(&w);
    return 0;
}

/* ==== example: small inputs for attn =============================================================== */

static int cmd_example(int argc, char **argv)
{
    const char *out = NULL;
    ArgSpec specs[] = {
        {.name = "out", .kind = ARG_STRING, .dest = &out, .metavar = "DIR", .help = "folder to write into",
         .required = 1},
    };
    const ArgCommand cmd = {
        .name = PROG " example",
        .usage = "--out DIR",
        .summary = "Writes the lesson's worked example as q.npy (1, 1, 2, 4), k.npy and v.npy (1, 1, 3, 4) into DIR, so\n"
                   "that 'attn' runs without Python: attn --q DIR/q.npy --k DIR/k.npy --v DIR/v.npy --out DIR/o.npy\n"
                   "--causal writes the O the lesson shows.",
        .specs = specs,
        .n_specs = ARRAY_COUNT(specs),
    };
    args_parse_or_exit(&cmd, argc, argv);
    const size_t qs[4] = {1, 1, HAND_T, HAND_D}, ks[4] = {1, 1, HAND_S, HAND_D};
    const struct {
        const char *name;
        const size_t *shape;
        const float *data;
    } files[3] = {{"q.npy", qs, HAND_Q}, {"k.npy", ks, HAND_K}, {"v.npy", ks, HAND_V}};
    for (int i = 0; i < 3; i++) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", out, files[i].name) >= (int)sizeof path)
            die("--out %s: the path is too long", out);
        if (npy_write(path, NPY_F32, 4, files[i].shape, files[i].data) != 0)
            die_with_error();
    }
    printf("%s: wrote the worked example (T=2, S=3, D=4) to %s/{q,k,v}.npy\n", PROG, out);
    return 0;
}

/* ==== main ====================================================================================== */

static const Subcommand COMMANDS[] = {
    {.name = "attn", .run = mha_cmd_attn, .summary = "attention on .npy files (Q, K, V -> O)"},
    {.name = "verify", .run = mha_cmd_verify, .summary = "every version against the reference on a grid of shapes"},
    {.name = "bench", .run = mha_cmd_bench, .summary = "timing rows (TSV) and a plot, T = 128 .. 8192"},
    {.name = "init-weights", .run = cmd_init_weights,
     .summary = "random layer weights as .npy files (for chapter 02's convert)"},
    {.name = "example", .run = cmd_example, .summary = "the lesson's worked example as q, k, v .npy files for attn"},
    {.name = NULL},
};

static const Program PROGRAM = {.name = PROG, .title = "Chapter 01: multi-head attention (MHA)", .lesson = cmd_lesson,
                                .subcommands = COMMANDS};

int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
