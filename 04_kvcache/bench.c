/*
 * bench.c: chapter 04's attn, verify and bench subcommands, and its attention through the cache
 * as the harness sees it.
 *
 *   04_kvcache attn     attention on .npy files through the cache
 *   04_kvcache verify   decode and cache attention against chapter 03 on the shape grid
 *   04_kvcache bench    decode attention in GB/s against the DRAM bandwidth, generation with and
 *                       without the cache: TSV rows + build/bench/04_kvcache_bench.dat + a plot
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "03_flash/flash.h"
#include "04_kvcache/commands.h"
#include "04_kvcache/kvcache.h"
#include "common/bench.h"
#include "common/error.h"
#include "common/program.h"
#include "common/rng.h"
#include "common/roofline.h"
#include "common/tensor.h"
#include "common/timer.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

/* `04_kvcache bench`: its rows, its --help, and how far its sweep goes. */
static const BenchCommand BENCH = {
    .prog = KVCACHE_PROG,
    .device_help = "auto: CPU, and the GPU when present",
    .repeats_help = "timed runs per decode point, median reported (default 5)",
    .columns = "mode\tdevice\tvariant\tdtype\tB\tH\tHkv\tL\tD\ttime_ms\tgbs\tpct_dram\ttokens_per_s\tpeak_rss_mib",
    .summary =
        "Decode attention: one query per sequence against caches of L = 1024 .. max-l positions, B = 16\n"
        "sequences, H = 8, Hkv in {8, 2}, D = 128, caches flushed before each run. GB/s counts the bytes\n"
        "of K and V read once: 2*B*Hkv*L*D*bytes (+ int8 scales). Generation: the built-in model,\n"
        "gen-tokens greedy tokens after a 16-token prompt, with and without the cache, run first; their\n"
        "gbs is the model's matrices read once per token (packed bytes x tokens/s: a decode step at\n"
        "batch 1 cannot go faster than DRAM delivers them), and pct_dram that against the bandwidth.\n"
        "peak_rss_mib (generation rows): the most memory the process held resident while the row ran,\n"
        "in MiB -- the model, loaded before, and the row's cache and buffers (host memory for a GPU\n"
        "row); the high-water mark is reset before each row on Linux, elsewhere it is the process's\n"
        "peak so far. A summary line compares the CPU cache row's with the model's checkpoint + its KV\n"
        "cache.\n"
        "Columns: mode device variant dtype B H Hkv L D time_ms gbs pct_dram tokens_per_s peak_rss_mib.",
    .limit = {.name = "max-l", .value = 16384, .min = 256, .max = 1 << 22, .help =
                  "longest cache of the decode sweep (default 16384)"},
};

/* ==== attention through the cache, as the harness sees it ========================================= */

int kvcache_attend_bhsd(int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    KvCache c;
    if (kvcache_create(&c, 1, d->B, d->Hkv, d->S > 0 ? d->S : 1, d->D, KV_F32) != 0)
        return -1;
    const size_t D = (size_t)d->D, S = (size_t)d->S;
    float *kr = mem_alloc((size_t)d->Hkv * D * sizeof(float), "one token's K (Hkv, D)");
    float *vr = mem_alloc((size_t)d->Hkv * D * sizeof(float), "one token's V (Hkv, D)");
    int *lens = mem_alloc((size_t)d->B * sizeof(int), "lengths (B)");
    int rc = !kr || !vr || !lens ? -1 : 0;
    for (int b = 0; b < d->B && rc == 0; b++) {
        for (size_t t = 0; t < S; t++) { /* (Hkv, S, D) head-major -> one token-major row at a time */
            for (int h = 0; h < d->Hkv; h++) {
                memcpy(kr + h * D, k + (((size_t)b * d->Hkv + h) * S + t) * D, D * sizeof(float));
                memcpy(vr + h * D, v + (((size_t)b * d->Hkv + h) * S + t) * D, D * sizeof(float));
            }
            kvcache_write(&c, 0, b, (int)t, 1, kr, vr);
        }
        lens[b] = d->S;
    }
    if (rc == 0)
        rc = kvcache_attention(&c, 0, d->H, d->T, d->scale, d->causal, d->B, NULL, lens, q, kernel, out);
    mem_free(kr), mem_free(vr), mem_free(lens);
    kvcache_free(&c);
    return rc;
}

static int run_cpu(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    (void)ctx;
    return kvcache_attend_bhsd(kernel, d, q, k, v, out);
}

static GqaShape gqa_shape(const AttnDims *d)
{
    return (GqaShape){.B = d->B, .H = d->H, .Hkv = d->Hkv, .T = d->T, .S = d->S, .D = d->D, .causal = d->causal,
                      .scale = d->scale};
}

static int run_ref(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    (void)ctx, (void)kernel;
    const GqaShape s = gqa_shape(d);
    return flash_attention_cpu(2, &s, q, k, v, out, NULL); /* chapter 03 */
}

#if HAVE_CUDA
/* On the GPU, (B, Hkv, S, D) is already a cache with max_seq = S. */
static int run_cuda(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    (void)ctx;
    if (d->T > 1) { /* prefill-shaped: chapter 03's fa2 kernel over the cache's contents */
        const GqaShape s = gqa_shape(d);
        return flash_attention_cuda(2, &s, q, k, v, out, NULL);
    }
    if (fabsf(d->scale - 1.0f / sqrtf((float)d->D)) > 1e-7f * (1.0f / sqrtf((float)d->D)))
        return error_set("the CUDA decode kernel uses scale 1/sqrt(D); --scale is CPU-only here");
    int *lens = mem_alloc((size_t)d->B * sizeof(int), "lengths (B)");
    if (!lens)
        return -1;
    for (int b = 0; b < d->B; b++)
        lens[b] = d->S;
    int *d_lens = cuda_alloc((size_t)d->B * sizeof(int));
    cuda_upload(d_lens, lens, (size_t)d->B * sizeof(int));
    int rc = kvcache_decode_cuda(kernel, k, v, d->B, d->H, d->Hkv, d->S, d->D, q, d_lens, d->S, out);
    cuda_free(d_lens);
    mem_free(lens);
    return rc;
}
#endif

const AttnImpls KVCACHE_IMPLS = {
    .prog = KVCACHE_PROG,
    .ref = run_ref, /* chapter 03's fast version, without any cache */
    .cpu = run_cpu, .cpu_name = kvcache_cpu_kernel_name, .n_cpu = KVCACHE_CPU_KERNELS,
    ATTN_IF_CUDA(.cuda = run_cuda, .cuda_name = kvcache_cuda_kernel_name, .n_cuda = KVCACHE_CUDA_KERNELS),
    .attn_help = "Attention through the KV cache: K and V are written into an fp32 cache [B, Hkv, S, D] and\n"
                 "the T queries sit at its last T positions (bottom-right causal with --causal). T = 1 runs\n"
                 "the decode kernel; T > 1 gathers the cache and runs chapter 03's flash kernel.\n"
                 "Kernels: CPU 1 = ref, 2 = split (default); CUDA 1 = split.",
};

/* ==== attn and verify =========================================================================== */

int kvcache_cmd_attn(int argc, char **argv) { return attn_command(&KVCACHE_IMPLS, argc, argv); }
int kvcache_cmd_verify(int argc, char **argv) { return attn_verify_command(&KVCACHE_IMPLS, argc, argv); }

/* ==== bench: decode attention ===================================================================== */

enum { BENCH_B = 16, BENCH_H = 8, BENCH_D = 128 }; /* the decode sweep's shape */

float *kvcache_bench_rows(int Hkv, int D)
{
    const size_t n = (size_t)KVCACHE_BENCH_ROWS * Hkv * D;
    float *rows = mem_alloc_or_die(n * sizeof(float), "random rows (1024, Hkv, D)");
    Rng rng;
    rng_seed(&rng, 11);
    for (size_t i = 0; i < n; i++)
        rows[i] = rng_normal(&rng);
    return rows;
}

const float *kvcache_bench_row(const float *rows, int t, int b, int Hkv, int D)
{
    return rows + (size_t)((t * 7 + b * 13) % KVCACHE_BENCH_ROWS) * Hkv * D;
}

void kvcache_bench_queries(float *q, size_t n)
{
    for (size_t i = 0; i < n; i++)
        q[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
}

typedef struct {
    const KvCache *c;
    const int *lens; /* (n_seq) */
    const float *q;  /* (n_seq, H, D) */
    float *out;      /* (n_seq, H, D) */
    int H, n_seq, kernel, rc;
} DecodeRun;

static void decode_run(void *ctx)
{
    DecodeRun *r = ctx;
    r->rc = kvcache_decode_cpu(r->kernel, r->c, 0, r->H, 1.0f / sqrtf((float)r->c->D), r->n_seq, NULL, r->lens,
                               r->q, r->out);
}

double kvcache_time_decode(int kernel, int B, int H, int Hkv, int L, int D, KvDtype dt, int repeats, double *bytes)
{
    KvCache c;
    if (kvcache_create(&c, 1, B, Hkv, L, D, dt) != 0)
        die_with_error();
    float *rows = kvcache_bench_rows(Hkv, D);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < L; t++)
            kvcache_write(&c, 0, b, t, 1, kvcache_bench_row(rows, t, b, Hkv, D), kvcache_bench_row(rows, t, b, Hkv, D));
    mem_free(rows);
    float *q = mem_alloc_or_die((size_t)B * H * D * sizeof(float), "q (B, H, D)");
    float *o = mem_alloc_or_die((size_t)B * H * D * sizeof(float), "out (B, H, D)");
    int *lens = mem_alloc_or_die((size_t)B * sizeof(int), "lens (B)");
    for (int b = 0; b < B; b++)
        lens[b] = L;
    kvcache_bench_queries(q, (size_t)B * H * D);
    DecodeRun run = {.c = &c, .lens = lens, .q = q, .out = o, .H = H, .n_seq = B, .kernel = kernel};
    BenchTiming t = bench_time_setup(decode_run, cache_flush, &run, 1, repeats, 2.0);
    if (run.rc != 0)
        die_with_error();
    if (bytes)
        *bytes = (double)kvcache_bytes(&c);
    mem_free(q), mem_free(o), mem_free(lens);
    kvcache_free(&c);
    return t.median_s;
}

/* Times CPU decode kernel `kern` over a full cache of L positions; prints its row and returns its
 * percentage of the DRAM read bandwidth. */
static double bench_decode_cpu(Tsv *tsv, int Hkv, KvDtype dt, int kern, int L, int repeats)
{
    const int B = BENCH_B, H = BENCH_H, D = BENCH_D;
    bench_progress("decode Hkv=%d L=%d %s %s ...", Hkv, L, kv_dtype_name(dt), kvcache_cpu_kernel_name(kern));
    double bytes; /* the cache's: every position is read once */
    const double secs = kvcache_time_decode(kern, B, H, Hkv, L, D, dt, repeats, &bytes);
    const double gbs = bytes / secs / 1e9, pct = 100.0 * gbs / roofline_get()->dram_gbs;
    tsv_row(tsv, "decode\tcpu\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\tnan\tnan", kvcache_cpu_kernel_name(kern),
            kv_dtype_name(dt), B, H, Hkv, L, D, secs * 1e3, gbs, pct);
    return pct;
}

#if HAVE_CUDA
static void bench_decode_cuda(Tsv *tsv, int Hkv, int L, int repeats)
{
    const int B = BENCH_B, H = BENCH_H, D = BENCH_D;
    const AttnDims d = {.B = B, .H = H, .Hkv = Hkv, .T = 1, .S = L, .D = D, .causal = 1,
                        .scale = 1.0f / sqrtf((float)D)};
    Tensor q, k, v;
    attn_random_inputs(&d, 5, &q, &k, &v);
    AttnTiming t = attn_time(&KVCACHE_IMPLS, DEVICE_CUDA, 1, &d, &q, &k, &v, repeats, 2.0, 0);
    if (t.rc == 0)
        tsv_row(tsv, "decode\tcuda\tsplit\tf32\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\tnan\tnan\tnan", B, H, Hkv, L, D,
                t.time.median_s * 1e3, 2.0 * B * Hkv * L * D * 4 / t.time.median_s / 1e9);
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
}
#endif

/* ==== bench: generation =========================================================================== */

/* What bench_generate measured on the CPU: seconds with and without the cache, and for the cache
 * row its peak resident memory against the model's checkpoint + KV cache (docs/contracts.md §6.2). */
typedef struct {
    double with_s, without_s;
    double peak, checkpoint, kv; /* bytes */
} GenerateResult;

/* gen_tokens greedy tokens of the built-in model after a 16-token prompt, with and without the
 * cache, on each device of the session; the CPU's measurements into r. */
static void bench_generate(BenchSession *b, int gen_tokens, GenerateResult *r)
{
    Model m;
    program_load_model(NULL, &m);
    int prompt[16];
    for (int i = 0; i < 16; i++)
        prompt[i] = (i * 37 + 1) % m.c.vocab_size;
    int *toks = mem_alloc_or_die((size_t)gen_tokens * sizeof(int), "generated tokens");
    Device devs[2];
    for (int i = 0, n = bench_devices(b, devs); i < n; i++) {
        const Device dev = devs[i];
        for (int cache = 1; cache >= 0; cache--) {
            const GenOptions o = {.max_new = gen_tokens, .use_cache = cache, .dtype = KV_F32, .kernel = 2};
            bench_progress("generate %d tokens on %s %s the cache ...", gen_tokens, device_name(dev),
                           cache ? "with" : "without");
            mem_reset_peak_rss(); /* this row's peak: the model, resident already, and what the row adds */
            const double t0 = timer_now();
            int rc;
#if HAVE_CUDA
            if (dev == DEVICE_CUDA)
                rc = kvcache_generate_cuda(&m, prompt, 16, &o, toks, NULL);
            else
#endif
                rc = kvcache_generate(&m, prompt, 16, &o, toks, NULL);
            if (rc != 0)
                die_with_error();
            const double secs = timer_now() - t0, peak = (double)mem_peak_rss_bytes();
            if (dev == DEVICE_CPU)
                *(cache ? &r->with_s : &r->without_s) = secs;
            if (dev == DEVICE_CPU && cache) {
                r->peak = peak;
                r->checkpoint = (double)model_checkpoint_bytes(&m.c);
                r->kv = (double)(16 + gen_tokens) *
                        (double)kvcache_bytes_per_token(m.c.n_layers, m.c.n_kv_heads, model_head_size(&m.c), KV_F32);
            }
            /* a decode step reads every matrix once: at batch 1 that is DRAM's limit on tokens/s */
            const double gbs = (double)model_packed_floats(&m.c) * sizeof(float) * gen_tokens / secs / 1e9;
            tsv_row(&b->tsv, "generate\t%s\t%s\tf32\t1\t%d\t%d\t%d\t%d\t%.2f\t%.2f\t%.1f\t%.2f\t%.1f",
                    device_name(dev), cache ? "cache" : "nocache", m.c.n_heads, m.c.n_kv_heads, 16 + gen_tokens,
                    model_head_size(&m.c), secs * 1e3, gbs, dev == DEVICE_CPU ? 100.0 * gbs / roofline_get()->dram_gbs : NAN,
                    gen_tokens / secs, peak / 1048576.0);
        }
    }
    mem_free(toks);
    model_free(&m);
}

/* ==== bench ===================================================================================== */

int kvcache_cmd_bench(int argc, char **argv)
{
    int gen_tokens = 512;
    const ArgSpec more[] = {
        {.name = "gen-tokens", .kind = ARG_INT, .dest = &gen_tokens, .metavar = "N",
         .help = "tokens generated with and without the cache (default 512; 0 skips)", .min = 0, .max = 2048},
    };
    BenchSession b;
    bench_command_begin(&b, &BENCH, more, ARRAY_COUNT(more), argc, argv);
    /* generation first: its peak_rss_mib then holds the model and the generation, not what the
     * decode sweep's buffers leave behind in the heap */
    GenerateResult gen = {.with_s = NAN, .without_s = NAN, .peak = NAN};
    if (gen_tokens > 0)
        bench_generate(&b, gen_tokens, &gen);
    const int hkvs[2] = {8, 2};
    int summary_l = 1024; /* the summary's shape: L = 16384, or the longest L of a shorter sweep */
    while (summary_l * 4 <= (b.limit < 16384 ? b.limit : 16384))
        summary_l *= 4;
    double best_pct[2][3] = {{0}}; /* (Hkv 8 and 2, dtype) at L = summary_l */
    /* one series after another (Hkv, dtype, kernel), so that the plot can join each one's points */
    for (int hi = 0; hi < 2; hi++) {
        for (int di = 0; di < 3 && b.use_cpu; di++)
            for (int kern = di == 0 ? 1 : 2; kern <= KVCACHE_CPU_KERNELS; kern++)
                for (int L = 1024; L <= b.limit; L *= 4) {
                    if (kern == 1 && L > 4096)
                        continue; /* the reference is far from the bandwidth; keep the run short */
                    const double pct = bench_decode_cpu(&b.tsv, hkvs[hi], (KvDtype)di, kern, L, b.repeats);
                    if (kern == 2 && L == summary_l)
                        best_pct[hi][di] = pct;
                }
#if HAVE_CUDA
        for (int L = 1024; L <= b.limit && b.use_gpu; L *= 4)
            bench_decode_cuda(&b.tsv, hkvs[hi], L, b.repeats);
#endif
    }
    bench_progress_done();
    if (b.use_cpu) {
        for (int di = 0; di < 3; di++)
            bench_summary(fmin(best_pct[0][di], best_pct[1][di]) >= 80.0, ">= 80% each",
                          "decode attention, %s, B=16, H=8, D=128, L=%d: %.1f%% (Hkv=8) and %.1f%% (Hkv=2) of the DRAM "
                          "read bandwidth, for the cache's own bytes", kv_dtype_name((KvDtype)di), summary_l,
                          best_pct[0][di], best_pct[1][di]);
        if (!isnan(gen.with_s) && !isnan(gen.without_s))
            bench_summary(gen.without_s / gen.with_s >= 10.0, ">= x10",
                          "%d tokens: with the cache %.1f s, without %.1f s: x%.1f", gen_tokens, gen.with_s,
                          gen.without_s, gen.without_s / gen.with_s);
        char bound[32];
        snprintf(bound, sizeof bound, "<= x%.2f", MODEL_MEMORY_TARGET);
        if (!isnan(gen.peak))
            bench_summary(gen.peak <= MODEL_MEMORY_TARGET * (gen.checkpoint + gen.kv), bound,
                          "%d tokens with the cache: peak resident memory %.1f MiB = x%.2f the checkpoint (%.1f MiB) + "
                          "the KV cache (%.1f MiB)", gen_tokens, gen.peak / 1048576.0,
                          gen.peak / (gen.checkpoint + gen.kv), gen.checkpoint / 1048576.0, gen.kv / 1048576.0);
    }
    bench_end(&b);
    return 0;
}
