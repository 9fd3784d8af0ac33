/*
 * main.c: the chapter 02 program, build/bin/02_mqa_gqa: the lesson, and the table of subcommands.
 *
 *   02_mqa_gqa [--device D]   the lesson: MHA, GQA and MQA side by side, every word of the usual
 *                             comparison table replaced by a measurement (parameters, KV-cache
 *                             bytes, prefill and decode time, output error after conversion)
 *   02_mqa_gqa attn ...       attention on .npy files, now with H % Hkv = 0 (docs/contracts.md §1.3)
 *   02_mqa_gqa verify ...     every version against the reference on the grid, all H:Hkv ratios (bench.c)
 *   02_mqa_gqa bench ...      decode and prefill sweeps: TSV + build/plots/02_mqa_gqa_bench.png (bench.c)
 *   02_mqa_gqa convert ...    chapter 01 weights -> GQA weights by mean-pooling K/V heads
 *
 * Every subcommand takes --help.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "01_mha/mha.h"
#include "02_mqa_gqa/commands.h"
#include "02_mqa_gqa/gqa.h"
#include "common/args.h"
#include "common/attn_harness.h"
#include "common/bench.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/plot.h"
#include "common/program.h"
#include "common/rng.h"
#include "common/roofline.h"
#include "common/tensor.h"

#define PROG GQA_PROG

/* ==== weights with correlated heads ============================================================= */

/* An MHA layer whose K (and V) projection heads are a shared matrix plus independent noise:
 * wk_h = (base + sigma * noise_h) / sqrt(1 + sigma^2), every entry N(0, 1/C) overall, so two
 * heads correlate with rho = 1 / (1 + sigma^2). Wq and Wo are independent as usual. */
static void init_correlated(MhaWeights *w, int C, int H, int D, float sigma, Rng *rng)
{
    mha_weights_init(w, C, H, D, rng);
    const size_t head = (size_t)D * C;
    const float sc = 1.0f / sqrtf((float)C), norm = 1.0f / sqrtf(1.0f + sigma * sigma);
    float *base = mem_alloc_or_die(head * sizeof(float), "shared head (D, C)");
    float *mats[2] = {w->wk, w->wv};
    for (int m = 0; m < 2; m++) {
        for (size_t i = 0; i < head; i++)
            base[i] = sc * rng_normal(rng);
        for (size_t h = 0; h < (size_t)H; h++)
            for (size_t i = 0; i < head; i++)
                mats[m][h * head + i] = norm * (base[i] + sigma * sc * rng_normal(rng));
    }
    mem_free(base);
}

/* Relative L2 error of the mean-pooled GQA layer against the MHA layer it came from. */
static double pooled_error(const MhaWeights *mha, int Hkv, const float *x, int B, int T, const float *y_mha,
                           float *y, double *max_diff)
{
    GqaWeights g;
    if (gqa_weights_from_mha(mha, Hkv, &g) != 0 || gqa_layer_forward(&g, 2, x, B, T, 1, y) != 0)
        die_with_error();
    gqa_weights_free(&g);
    size_t n = (size_t)B * T * mha->C;
    if (max_diff)
        *max_diff = max_abs_diff(y, y_mha, n);
    return rel_l2_error(y, y_mha, n);
}

/* ==== the lesson ================================================================================ */

typedef struct {
    const GqaWeights *w;
    const float *x; /* (B, T, C) */
    float *y;       /* (B, T, C) */
    int B, T, rc;
} PrefillRun;

static void prefill_run(void *ctx)
{
    PrefillRun *r = ctx;
    r->rc = gqa_layer_forward(r->w, 2, r->x, r->B, r->T, 1, r->y);
}

static void lesson_intro(void)
{
    printf("In chapter 01 every query head had its own key and value head. Here H query heads share Hkv\n"
           "key/value heads: query head h reads kv head h / (H/Hkv). Hkv = H is MHA, Hkv = 1 is MQA, in\n"
           "between is GQA. One index changes in the attention loop; Wk, Wv and the KV cache a decoder\n"
           "reads at every step shrink by H/Hkv. The usual summary table says it in words:\n"
           "    MHA: most parameters, slow, strongest   MQA: fewest, fastest, weaker   GQA: in between\n"
           "This lesson replaces every word of it with a measurement.\n\n");
}

/* ==== by hand: 4 query heads sharing 2 K/V heads ============================================== */

enum { HAND_H = 4, HAND_HKV = 2, HAND_S = 2, HAND_D = 2 };
static const float HAND_Q[HAND_H * HAND_D] = {0, 0, 1, 0, 0, 0, 1, 0};        /* (H, T = 1, D) */
static const float HAND_K[HAND_HKV * HAND_S * HAND_D] = {1, 0, 0, 1, 2, 0, 0, 0}; /* (Hkv, S, D) */
static const float HAND_V[HAND_HKV * HAND_S * HAND_D] = {1, 0, 0, 1, 1, 0, 0, 1}; /* (Hkv, S, D) */

/* One query per head, worked by the formula with query head h reading kv head h / G; then the
 * grouped reference, and chapter 01's MHA on K and V with each kv head repeated G times: all three
 * agree, which is all GQA is. */
static void lesson_by_hand(void)
{
    const int G = HAND_H / HAND_HKV;
    float o[HAND_H * HAND_D], ref[HAND_H * HAND_D], mha[HAND_H * HAND_D];
    float k_rep[HAND_H * HAND_S * HAND_D], v_rep[HAND_H * HAND_S * HAND_D]; /* (H, S, D) */
    printf("By hand: H = 4 query heads share Hkv = 2 K/V heads (G = 2), one query each, S = 2 keys, D = 2,\n"
           "scale 1. Query head h reads kv head h / G. V's rows are unit vectors, so O shows the probabilities.\n\n");
    printf("   kv head 0: K = (1 0; 0 1), V = (1 0; 0 1)    kv head 1: K = (2 0; 0 0), V = (1 0; 0 1)\n\n");
    printf("   head  kv = h/G      q       scores q Kᵀ       P = softmax        O = P V\n");
    for (int h = 0; h < HAND_H; h++) {
        const int g = h / G;
        const float *q = HAND_Q + h * HAND_D, *k = HAND_K + g * HAND_S * HAND_D, *v = HAND_V + g * HAND_S * HAND_D;
        double sc[HAND_S], z = 0.0, m = -INFINITY;
        for (int j = 0; j < HAND_S; j++) {
            sc[j] = (double)q[0] * k[j * HAND_D] + (double)q[1] * k[j * HAND_D + 1];
            m = fmax(m, sc[j]);
        }
        for (int j = 0; j < HAND_S; j++)
            z += exp(sc[j] - m);
        double p[HAND_S];
        for (int d = 0; d < HAND_D; d++)
            o[h * HAND_D + d] = 0.0f;
        for (int j = 0; j < HAND_S; j++) {
            p[j] = exp(sc[j] - m) / z;
            for (int d = 0; d < HAND_D; d++)
                o[h * HAND_D + d] += (float)p[j] * v[j * HAND_D + d];
        }
        printf("   %4d  %8d   (%g %g)   (%6.4f %6.4f)   (%6.4f %6.4f)   (%6.4f %6.4f)\n", h, g, q[0], q[1], sc[0],
               sc[1], p[0], p[1], o[h * HAND_D], o[h * HAND_D + 1]);
        memcpy(k_rep + h * HAND_S * HAND_D, k, sizeof(float) * HAND_S * HAND_D); /* repeat kv head g for h */
        memcpy(v_rep + h * HAND_S * HAND_D, v, sizeof(float) * HAND_S * HAND_D);
    }
    const GqaShape gs = {.B = 1, .H = HAND_H, .Hkv = HAND_HKV, .T = 1, .S = HAND_S, .D = HAND_D, .causal = 0,
                         .scale = 1.0f};
    const MhaShape ms = {.B = 1, .H = HAND_H, .T = 1, .S = HAND_S, .D = HAND_D, .causal = 0, .scale = 1.0f};
    if (gqa_attention_ref(&gs, HAND_Q, HAND_K, HAND_V, ref) != 0 || mha_attention_ref(&ms, HAND_Q, k_rep, v_rep, mha) != 0)
        die_with_error();
    const double d_ref = max_abs_diff(ref, o, HAND_H * HAND_D), d_mha = max_abs_diff(mha, ref, HAND_H * HAND_D);
    printf("\n   e.g. head 3: scores (2, 0), P = (e^2, 1) / (e^2 + 1). gqa_attention_ref on the same input: max\n"
           "   |O - by hand| = %.1e; chapter 01's mha_attention_ref with each kv head repeated for its G query\n"
           "   heads: max |difference| = %g. Heads 1 and 3 have the same query but read different K/V heads,\n"
           "   so their outputs differ.\n\n",
           d_ref, d_mha);
}

#define LESSON_SIGMA 0.25f /* correlated heads: rho = 1 / (1 + sigma^2) = 0.94 */

typedef struct {
    int hkv;
    size_t params, kv_token; /* the layer's attention parameters; K/V bytes per token (fp32) */
    double prefill_ms, decode_ms, decode_ref_ms, decode_gbs; /* decode: grouped and reference, CPU */
    double err_random, err_corr;                              /* pooled layer vs MHA: relative L2 error */
    double gpu_decode_ms;                                     /* NAN without a GPU */
} LessonRow;

static void lesson_measure(Device dev, LessonRow rows[GQA_N_HKV], double *diff_vs_ch01)
{
    const int C = 1024, H = 16, D = 64;
    const int Tp = 512, Te = 128, Bd = 4, Sd = 8192; /* prefill length, error-check length, decode batch/cache */
    Rng rng;
    rng_seed(&rng, 2);
    MhaWeights mha, corr;
    mha_weights_init(&mha, C, H, D, &rng);
    init_correlated(&corr, C, H, D, LESSON_SIGMA, &rng);
    Tensor x = tensor_zeros(3, (size_t[]){1, (size_t)Tp, (size_t)C}, "x (B, T, C)");
    tensor_fill_normal(&x, &rng, 0.0f, 1.0f);
    Tensor y = tensor_zeros(3, (size_t[]){1, (size_t)Tp, (size_t)C}, "y (B, T, C)");
    Tensor y_mha = tensor_zeros(3, (size_t[]){1, (size_t)Te, (size_t)C}, "MHA y");
    Tensor y_corr = tensor_zeros(3, (size_t[]){1, (size_t)Te, (size_t)C}, "MHA y (correlated)");
    /* the references: chapter 01's layer on the same input */
    if (mha_layer_forward(&mha, 2, x.data, 1, Te, 1, y_mha.data) != 0 ||
        mha_layer_forward(&corr, 2, x.data, 1, Te, 1, y_corr.data) != 0)
        die_with_error();

    for (int i = 0; i < GQA_N_HKV; i++) {
        LessonRow *r = &rows[i];
        const int hkv = GQA_HKV[i];
        *r = (LessonRow){.hkv = hkv, .params = gqa_weights_count(C, H, hkv, D),
                         .kv_token = 2 * (size_t)hkv * D * sizeof(float)};
        bench_progress("Hkv=%d: conversion error ...", hkv);
        r->err_random = pooled_error(&mha, hkv, x.data, 1, Te, y_mha.data, y.data, hkv == H ? diff_vs_ch01 : NULL);
        r->err_corr = pooled_error(&corr, hkv, x.data, 1, Te, y_corr.data, y.data, NULL);

        bench_progress("Hkv=%d: prefill ...", hkv);
        GqaWeights g;
        if (gqa_weights_from_mha(&mha, hkv, &g) != 0)
            die_with_error();
        PrefillRun pr = {.w = &g, .x = x.data, .y = y.data, .B = 1, .T = Tp};
        r->prefill_ms = bench_time(prefill_run, &pr, 1, 3, 1.0).median_s * 1e3;
        if (pr.rc != 0)
            die_with_error();
        gqa_weights_free(&g);

        bench_progress("Hkv=%d: decode ...", hkv);
        AttnDims d = gqa_decode_dims(Bd, H, hkv, Sd, D);
        AttnTiming t = gqa_time_decode(DEVICE_CPU, 2, &d, 10);
        r->decode_ms = t.time.median_s * 1e3;
        r->decode_gbs = gqa_decode_bytes_read(&d, 0) / t.time.median_s / 1e9;
        r->decode_ref_ms = gqa_time_decode(DEVICE_CPU, 1, &d, 3).time.median_s * 1e3;
        r->gpu_decode_ms = dev == DEVICE_CUDA ? gqa_time_decode(DEVICE_CUDA, 2, &d, 20).time.median_s * 1e3 : NAN;
    }
    bench_progress_done();
    mha_weights_free(&mha), mha_weights_free(&corr);
    tensor_free(&x), tensor_free(&y), tensor_free(&y_mha), tensor_free(&y_corr);
}

static void lesson_print(Device dev, const LessonRow rows[GQA_N_HKV], double diff_vs_ch01)
{
    const Roofline *roof = roofline_get();
    const double balance = roof->fma_gflops / roof->dram_gbs; /* FLOP per byte where the roofs meet */
    const double rho = 1.0 / (1.0 + (double)LESSON_SIGMA * LESSON_SIGMA);
    char b1[32], b2[32];
    printf("One layer: C=1024, H=16 query heads, D=64. Prefill: the whole layer on a 512-token prompt\n"
           "(causal). Decode: attention of one new token per sequence against a cache of S=8192 keys, batch\n"
           "of 4, caches flushed before each run (a real decoder's other layers evict them). Error: the\n"
           "layer converted from MHA by mean-pooling K/V heads, against the MHA layer, on 128 tokens:\n"
           "||y_gqa - y_mha|| / ||y_mha||, for random weights and for K/V heads correlated %.2f.\n\n", rho);
    printf("%4s %11s %9s %11s %9s %10s %10s %9s %7s %9s %9s%s\n", "Hkv", "attn params", "KV/token", "KV for 32k",
           "prefill", "decode", "dec. ref", "FLOP/B", "GB/s", "err rand", "err corr", dev == DEVICE_CUDA ? "  GPU decode" : "");
    for (int i = 0; i < GQA_N_HKV; i++) {
        const LessonRow *r = &rows[i];
        char gpu[24] = "";
        if (dev == DEVICE_CUDA)
            snprintf(gpu, sizeof gpu, "  %8.3f ms", r->gpu_decode_ms);
        printf("%4d %11zu %9s %11s %6.1f ms %7.3f ms %7.1f ms %9.1f %7.1f %9.4f %9.4f%s\n", r->hkv, r->params,
               format_bytes((double)r->kv_token, b1, sizeof b1), format_bytes((double)r->kv_token * 32768, b2, sizeof b2),
               r->prefill_ms, r->decode_ms, r->decode_ref_ms, 16.0 / (2.0 * r->hkv), r->decode_gbs, r->err_random,
               r->err_corr, gpu);
    }
    printf("\nA decode call reads K and V once per group in the grouped version: 2*B*Hkv*S*D*4 bytes (the\n"
           "reference reads them once per query head, 2*B*H*S*D*4, the re-reads partly from cache). It does\n"
           "4*B*H*S*D FLOPs whatever Hkv is, so FLOP/B = H / (2*Hkv). GB/s = 2*B*Hkv*S*D*4 / time. This machine\n"
           "reads DRAM at %.1f GB/s and multiplies at %.1f GFLOP/s: its balance is %.1f FLOP/B. Below it a\n"
           "decode step waits on memory and sharing K/V speeds it up; above it, arithmetic is the limit.\n",
           roof->dram_gbs, roof->fma_gflops, balance);
    printf("KV/token is per layer in fp32; 'KV for 32k' is one layer's cache for a 32768-token context.\n");
    printf("Hkv = H reproduces chapter 01: max |y_gqa - y_mha| = %g over the whole layer output.\n\n", diff_vs_ch01);

    const LessonRow *mha = &rows[0], *gqa = &rows[2], *mqa = &rows[GQA_N_HKV - 1];
    printf("The summary table, measured (GQA here: Hkv = %d):\n\n", gqa->hkv);
    printf("  %-4s %-34s %-36s %s\n", "", "query / key-value sharing", "parameters, speed vs MHA",
           "conversion error before uptraining");
    const LessonRow *pick[3] = {mha, mqa, gqa};
    const char *label[3] = {"MHA", "MQA", "GQA"};
    for (int i = 0; i < 3; i++) {
        char share[64], speed[64], expr[64];
        if (pick[i]->hkv == 16)
            snprintf(share, sizeof share, "16 query heads, 16 K/V heads");
        else
            snprintf(share, sizeof share, "16 query heads share %d K/V head%s", pick[i]->hkv, pick[i]->hkv > 1 ? "s" : "");
        snprintf(speed, sizeof speed, "%.2fM; decode x%.1f, prefill x%.2f", pick[i]->params / 1e6,
                 mha->decode_ms / pick[i]->decode_ms, mha->prefill_ms / pick[i]->prefill_ms);
        snprintf(expr, sizeof expr, "%.3f random, %.3f correlated", pick[i]->err_random, pick[i]->err_corr);
        printf("  %-4s %-34s %-36s %s\n", label[i], share, speed, expr);
    }
    printf("  (speed: MHA's time / this row's time on this machine. Error: the layer's output after mean-pooling\n"
           "  its K/V heads, relative to MHA's, 0 = identical; it is where uptraining would start, not how well a\n"
           "  trained model works after it: a random layer's heads are unrelated, a trained model's lie between.)\n\n");
}

/* What this run's rows say, worded from them: how much each halving of Hkv sped the decode step
 * up, where its FLOPs per byte pass the machine's balance, what prefill gained, and whether the
 * correlated heads lost less than the random ones. */
static void lesson_reading(const LessonRow rows[GQA_N_HKV])
{
    const Roofline *roof = roofline_get();
    const double balance = roof->fma_gflops / roof->dram_gbs;
    printf("In this run, each halving of Hkv changed the decode step's speed by (the old time / the new):\n  ");
    int shrinking = 1;
    double prev = 0;
    for (int i = 1; i < GQA_N_HKV; i++) {
        const double gain = rows[i - 1].decode_ms / rows[i].decode_ms;
        printf("%s x%.2f (%d -> %d)", i == 1 ? "" : ",", gain, rows[i - 1].hkv, rows[i].hkv);
        shrinking &= i == 1 || gain <= prev * 1.05; /* 5%: the noise of one timing */
        prev = gain;
    }
    printf(";\nx2 each if the step only waited on bytes, below x1 a slowdown; %s.\n",
           shrinking ? "the gain shrinks as Hkv falls" : "the gains do not shrink steadily here (a noisy run?)");
    int first_above = -1; /* the first Hkv whose FLOP/B passes the balance */
    for (int i = 0; i < GQA_N_HKV && first_above < 0; i++)
        if (16.0 / (2.0 * rows[i].hkv) >= balance)
            first_above = i;
    const LessonRow *mha = &rows[0], *mqa = &rows[GQA_N_HKV - 1];
    if (first_above >= 0)
        printf("%s Hkv = %d (%.1f FLOP/B) a decode step does more arithmetic per byte than this machine's\n"
               "balance (%.1f FLOP/B): arithmetic, not memory, limits it there.",
               first_above == GQA_N_HKV - 1 ? "At" : "From", rows[first_above].hkv, 16.0 / (2.0 * rows[first_above].hkv),
               balance);
    else
        printf("Every Hkv stays below this machine's balance (%.1f FLOP/B): memory limits every row.", balance);
    printf(" MQA is x%.1f faster than\nMHA; the bytes alone would allow x16. Prefill gains x%.2f: only the K/V projections shrink.\n",
           mha->decode_ms / mqa->decode_ms, mha->prefill_ms / mqa->prefill_ms);
    int corr_less = 1;
    for (int i = 1; i < GQA_N_HKV; i++)
        corr_less &= rows[i].err_corr < rows[i].err_random;
    printf("%s\n\n", corr_less ? "At every Hkv the correlated heads lose less than the random ones when pooled."
                               : "The correlated heads do not lose less than the random ones at every Hkv in this run.");
}

static void lesson_plot(const LessonRow rows[GQA_N_HKV])
{
    char dat[4096];
    Tsv tsv;
    lesson_data_open(&tsv, dat, sizeof dat, PROG, "lesson",
                     "Hkv\tparams\tkv_bytes_token\tprefill_ms\tdecode_ms\tdecode_ref_ms\tdecode_gbs\terr_random"
                     "\terr_corr\tgpu_decode_ms");
    for (int i = 0; i < GQA_N_HKV; i++) {
        const LessonRow *r = &rows[i];
        tsv_row(&tsv, "%d\t%zu\t%zu\t%.3f\t%.4f\t%.3f\t%.2f\t%.5f\t%.5f\t%.4f", r->hkv, r->params, r->kv_token,
                r->prefill_ms, r->decode_ms, r->decode_ref_ms, r->decode_gbs, r->err_random, r->err_corr,
                r->gpu_decode_ms);
    }
    tsv_close(&tsv);
    plot_show(PROG, "lesson", dat, 1, stdout, "", "\n\n");
}

static const Program PROGRAM;

static int cmd_lesson(int argc, char **argv)
{
    const Device dev =
        lesson_begin(&PROGRAM, "where to run (default auto: the GPU too if there is one)", NULL, 0, argc, argv);
    lesson_intro();
    lesson_by_hand();
    lesson_machine(dev, 1);
    LessonRow rows[GQA_N_HKV];
    double diff = NAN;
    lesson_measure(dev, rows, &diff);
    lesson_print(dev, rows, diff);
    lesson_reading(rows);
    lesson_plot(rows);
    return lesson_end(
        "K/V sharing divides the KV cache and the bytes a decode step reads by H/Hkv; a decode step that\n"
        "waits on memory speeds up with it, one whose FLOPs per byte pass the machine's balance does not.\n"
        "Prefill gains only the K/V projections it no longer computes: the attention arithmetic of all H\n"
        "query heads stays. Mean-pooling a trained MHA layer is only a starting point; the GQA paper\n"
        "recovers most of the quality with a short uptraining. Next: chapter 03 removes the (B, H, T, S)\n"
        "score matrix.\n");
}

/* ==== convert =================================================================================== */

static int cmd_convert(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    int H = 0, Hkv = 0;
    ArgSpec specs[] = {
        {.name = "in", .kind = ARG_STRING, .dest = &in, .metavar = "DIR",
         .help = "chapter 01 weights: wq.npy, wk.npy, wv.npy, wo.npy (01_mha init-weights)", .required = 1},
        {.name = "heads", .kind = ARG_INT, .dest = &H, .metavar = "H", .help = "query heads of the MHA layer",
         .required = 1, .min = 1, .max = 1 << 20},
        {.name = "kv-heads", .kind = ARG_INT, .dest = &Hkv, .metavar = "N",
         .help = "key/value heads to keep (N divides H; 1 = MQA)", .required = 1, .min = 1, .max = 1 << 20},
        {.name = "out", .kind = ARG_STRING, .dest = &out, .metavar = "DIR", .help = "folder for the GQA weights",
         .required = 1},
    };
    ArgCommand cmd = {
        .name = PROG " convert",
        .usage = "--in DIR --heads H --kv-heads N --out DIR",
        .summary = "Converts a multi-head attention layer into a grouped-query one as the GQA paper does before\n"
                   "uptraining: the K and V projection heads of each group of H/N heads are replaced by their\n"
                   "mean, Wq and Wo are kept. Writes wq.npy (H*D, C), wk.npy and wv.npy (N*D, C), wo.npy (C, H*D).",
        .specs = specs,
        .n_specs = 4,
    };
    args_parse_or_exit(&cmd, argc, argv);
    if (gqa_check_heads(H, Hkv) != 0)
        die_with_error();
    MhaWeights mha;
    GqaWeights g;
    if (mha_weights_load(in, H, &mha) != 0 || gqa_weights_from_mha(&mha, Hkv, &g) != 0 || gqa_weights_save(&g, out) != 0)
        die_with_error();
    printf("%s convert: C=%d H=%d D=%d, %d -> %d key/value heads (groups of %d): attention parameters %zu -> %zu; "
           "wrote %s/{wq,wk,wv,wo}.npy\n",
           PROG, mha.C, H, mha.D, H, Hkv, H / Hkv, gqa_weights_count(mha.C, H, H, mha.D),
           gqa_weights_count(mha.C, H, Hkv, mha.D), out);
    gqa_weights_free(&g);
    mha_weights_free(&mha);
    return 0;
}

/* ==== main ====================================================================================== */

static const Subcommand COMMANDS[] = {
    {.name = "attn", .run = gqa_cmd_attn, .summary = "attention on .npy files, H a multiple of Hkv"},
    {.name = "verify", .run = gqa_cmd_verify,
     .summary = "every version against the reference on a grid of shapes and H:Hkv ratios"},
    {.name = "bench", .run = gqa_cmd_bench, .summary = "decode and prefill sweeps over Hkv: TSV rows and a plot"},
    {.name = "convert", .run = cmd_convert,
     .summary = "chapter 01 weights (01_mha init-weights) -> GQA weights by mean-pooling"},
    {.name = NULL},
};

static const Program PROGRAM = {.name = PROG,
                                .title = "Chapter 02: multi-query and grouped-query attention (MQA, GQA)",
                                .lesson = cmd_lesson,
                                .subcommands = COMMANDS};

int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
