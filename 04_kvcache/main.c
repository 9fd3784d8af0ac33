/*
 * main.c: the chapter 04 program, build/bin/04_kvcache.
 *
 *   04_kvcache [--device D]   the lesson: per-step latency with and without the cache, what the
 *                             cache costs for this model and for published ones, and what fp16
 *                             and int8 caches change (error, agreement, memory)
 *   04_kvcache generate ...   token ids in, token ids out (design.md §4)
 *   04_kvcache attn ...       attention through the cache: K, V written into it, the T queries
 *                             at its last T positions
 *   04_kvcache verify ...     decode and cache attention against chapter 03 on the grid
 *   04_kvcache bench ...      decode attention in GB/s against DRAM bandwidth; generation with
 *                             and without the cache
 *
 * Every subcommand takes --help.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "03_flash/flash.h"
#include "04_kvcache/kvcache.h"
#include "common/args.h"
#include "common/attn_harness.h"
#include "common/bench.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/model.h"
#include "common/paths.h"
#include "common/plot.h"
#include "common/roofline.h"
#include "common/tensor.h"
#include "common/timer.h"
#include "common/tokenizer.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

#define PROG "04_kvcache"

/* ==== attention through the cache, as the harness sees it ========================================= */

/* Writes k, v (B, Hkv, S, D) into an fp32 cache of max_seq S, then attends the T queries at the
 * last T positions of each sequence through it. */
static int run_cpu(int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    KvCache c;
    if (kvcache_create(&c, 1, d->B, d->Hkv, d->S, d->D, KV_F32) != 0)
        return -1;
    const size_t D = (size_t)d->D, S = (size_t)d->S;
    float *kr = mem_alloc((size_t)d->Hkv * D * sizeof(float), "one token's K"), *vr = mem_alloc((size_t)d->Hkv * D * sizeof(float), "one token's V");
    int *lens = mem_alloc((size_t)d->B * sizeof(int), "lengths");
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

static int run_ref(int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    GqaShape s = {d->B, d->H, d->Hkv, d->T, d->S, d->D, d->causal, d->scale};
    (void)kernel;
    return flash_attention_cpu(2, &s, q, k, v, out, NULL); /* chapter 03 */
}

#if HAVE_CUDA
/* On the GPU, (B, Hkv, S, D) is already a cache with max_seq = S. */
static int run_cuda(int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    if (d->T > 1) { /* prefill-shaped: chapter 03's fa2 kernel over the cache's contents */
        GqaShape s = {d->B, d->H, d->Hkv, d->T, d->S, d->D, d->causal, d->scale};
        return flash_attention_cuda(2, &s, q, k, v, out, NULL);
    }
    if (fabsf(d->scale - 1.0f / sqrtf((float)d->D)) > 1e-7f * (1.0f / sqrtf((float)d->D)))
        return error_set("the CUDA decode kernel uses scale 1/sqrt(D); --scale is CPU-only here");
    int *lens = malloc((size_t)d->B * sizeof(int));
    for (int b = 0; b < d->B; b++)
        lens[b] = d->S;
    int *d_lens = cuda_alloc((size_t)d->B * sizeof(int));
    cuda_upload(d_lens, lens, (size_t)d->B * sizeof(int));
    int rc = kvcache_decode_cuda(kernel, k, v, d->B, d->H, d->Hkv, d->S, d->D, q, d_lens, d->S, out);
    cuda_free(d_lens);
    free(lens);
    return rc;
}
#endif

static const AttnImpls IMPLS = {
    .prog = PROG,
    .ref = run_ref, /* chapter 03's fast version, without any cache */
    .ref_is_cpu1 = 0,
    .cpu = run_cpu,
    .cpu_name = kvcache_cpu_kernel_name,
    .n_cpu = KVCACHE_CPU_KERNELS,
#if HAVE_CUDA
    .cuda = run_cuda,
    .cuda_name = kvcache_cuda_kernel_name,
    .n_cuda = KVCACHE_CUDA_KERNELS,
#endif
    .heads = ATTN_HEADS_DIVIDE,
};

/* ==== the model: --checkpoint or the built-in random one ========================================== */

static void load_model(const char *checkpoint, Model *m)
{
    if (model_load_or_builtin(checkpoint, m) != 0)
        die_with_error();
}


/* ==== generate =================================================================================== */

static int cmd_generate(int argc, char **argv)
{
    const char *checkpoint = NULL, *prompt_text = "1", *device = "auto", *dtype = "f32", *tokenizer = NULL;
    const char *prompt_words = NULL;
    int max_new = 64, no_cache = 0, seed = 42, kernel = 0, chunk = 0;
    double temperature = 0.0;
    ArgSpec specs[] = {
        {.name = "checkpoint", .kind = ARG_STRING, .dest = &checkpoint, .metavar = "M.bin",
         .help = "llama2.c version-0 checkpoint (default: the built-in random model)"},
        {.name = "prompt", .kind = ARG_STRING, .dest = &prompt_text, .metavar = "IDS",
         .help = "prompt token ids, e.g. \"1 2 3\" (default \"1\", llama2.c's BOS)"},
        {.name = "tokenizer", .kind = ARG_STRING, .dest = &tokenizer, .metavar = "T.bin",
         .help = "llama2.c tokenizer.bin: print text, stop at BOS/EOS as run.c does"},
        {.name = "prompt-text", .kind = ARG_STRING, .dest = &prompt_words, .metavar = "TEXT",
         .help = "the prompt as text (needs --tokenizer; encoded with BOS first)", .conflicts = "prompt"},
        {.name = "max-new", .kind = ARG_INT, .dest = &max_new, .metavar = "N", .help = "tokens to generate (default 64)",
         .min = 0, .max = 1 << 24},
        {.name = "no-cache", .kind = ARG_FLAG, .dest = &no_cache, .help = "recompute the whole sequence at every step"},
        {.name = "kv-dtype", .kind = ARG_CHOICE, .dest = &dtype, .choices = KV_DTYPE_CHOICES,
         .help = "how the cache stores K and V (default f32)", .conflicts = "no-cache"},
        {.name = "temperature", .kind = ARG_DOUBLE, .dest = &temperature, .metavar = "T",
         .help = "0 = greedy (default); >= 1.2e-38 samples from softmax(logits / T)", .min = 0, .max = 100},
        {.name = "seed", .kind = ARG_INT, .dest = &seed, .metavar = "S", .help = "sampling seed (default 42)", .min = 0,
         .max = 2147483647},
        {.name = "kernel", .kind = ARG_INT, .dest = &kernel, .metavar = "N",
         .help = "CPU decode kernel: 1 = ref, 2 = split (default)", .min = 1, .max = KVCACHE_CPU_KERNELS},
        {.name = "prefill-chunk", .kind = ARG_INT, .dest = &chunk, .metavar = "N",
         .help = "prefill the prompt N tokens at a time (default: all at once)", .min = 1, .max = 1 << 24,
         .conflicts = "no-cache"},
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "where to run (default auto: the GPU if there is one)"},
    };
    ArgCommand cmd = {PROG " generate", "[options]",
                      "Generates token ids with a Llama-style model (llama2.c's run.c semantics) through the KV cache.\n"
                      "Prints the generated ids (prompt excluded) on one line; timings go to stderr. With --tokenizer:\n"
                      "prints the prompt and the generated text as run.c does, and stops at BOS or EOS.",
                      specs, (int)(sizeof specs / sizeof specs[0])};
    args_parse_or_exit(&cmd, argc, argv);
    Device dev;
    GenOptions o = {max_new, (float)temperature, (uint64_t)seed, !no_cache, KV_F32, kernel, chunk, 0};
    int *prompt = NULL, n_prompt = 0;
    if (device_resolve(device, &dev) != 0 || kv_dtype_parse(dtype, &o.dtype) != 0 ||
        model_check_temperature(temperature) != 0 || token_ids_parse(prompt_text, &prompt, &n_prompt) != 0)
        die_with_error();
    if (kernel != 0 && dev == DEVICE_CUDA) /* the GPU path has one decode kernel: --kernel would do nothing */
        die("--kernel %d picks a CPU decode kernel, and this run is on the GPU (%s): add --device cpu, or leave "
            "--kernel out",
            kernel, strcmp(device, "cuda") == 0 ? "--device cuda" : "--device auto found one");
    Model m;
    load_model(checkpoint, &m);
    Tokenizer tok;
    const int text = tokenizer_setup(tokenizer, prompt_words, m.c.vocab_size, m.c.seq_len, &tok, &prompt, &n_prompt);
    if (text < 0 || kvcache_check_request(&m.c, prompt, n_prompt, max_new) != 0)
        die_with_error();
    o.stop_at_bos_eos = text;
    int *out = malloc((size_t)(max_new + 1) * sizeof(int));
    const double t0 = timer_now();
    int rc;
#if HAVE_CUDA
    if (dev == DEVICE_CUDA)
        rc = kvcache_generate_cuda(&m, prompt, n_prompt, &o, out, NULL);
    else
#endif
        rc = kvcache_generate(&m, prompt, n_prompt, &o, out, NULL);
    if (rc != 0)
        die_with_error();
    const double secs = timer_now() - t0;
    int n_gen = 0;
    while (n_gen < max_new && out[n_gen] >= 0)
        n_gen++;
    if (text) {
        char *s = tokenizer_decode_generation(&tok, prompt, n_prompt, out, max_new, 1);
        printf("%s\n", s);
        free(s);
    } else {
        for (int i = 0; i < max_new; i++)
            printf(i ? " %d" : "%d", out[i]);
        printf("\n");
    }
    stdout_flush_or_die(); /* the ids before the timing line (also when both go to one file), or exit 1 */
    fprintf(stderr, "%s generate: %d prompt + %d new tokens on %s, %s, %s cache: %.2f s, %.1f tokens/s\n", PROG,
            n_prompt, n_gen, device_name(dev), checkpoint ? checkpoint : "built-in random model",
            no_cache ? "no" : kv_dtype_name(o.dtype), secs, n_gen / (secs > 0 ? secs : 1e-9));
    tokenizer_free(&tok);
    free(out), free(prompt);
    model_free(&m);
    return 0;
}

/* ==== the lesson ================================================================================ */

/* (a) the same greedy generation with and without the cache, step by step */
static void lesson_steps(const Model *m, char *dat, size_t dat_len)
{
    enum { N_PROMPT = 16, N_NEW = 128 };
    int prompt[N_PROMPT], a[N_NEW], b[N_NEW];
    double with[N_NEW], without[N_NEW];
    for (int i = 0; i < N_PROMPT; i++)
        prompt[i] = (i * 37 + 1) % m->c.vocab_size;
    GenOptions o = {N_NEW, 0.0f, 0, 1, KV_F32, 2, 0, 0};
    if (kvcache_generate(m, prompt, N_PROMPT, &o, a, with) != 0)
        die_with_error();
    o.use_cache = 0;
    if (kvcache_generate(m, prompt, N_PROMPT, &o, b, without) != 0)
        die_with_error();
    double sum_with = 0, sum_without = 0;
    for (int i = 0; i < N_NEW; i++)
        sum_with += with[i], sum_without += without[i];
    paths_in_build(dat, dat_len, "bench", PROG "_steps.dat");
    Tsv tsv;
    if (tsv_open(&tsv, "/dev/null", dat) != 0)
        die_with_error();
    tsv_header(&tsv, "position\twith_cache_ms\twithout_cache_ms");
    for (int i = 1; i < N_NEW; i++) /* step 0 is the prefill */
        tsv_row(&tsv, "%d\t%.4f\t%.4f", N_PROMPT + i, with[i] * 1e3, without[i] * 1e3);
    tsv_close(&tsv);
    printf("1. Greedy generation of %d tokens after a %d-token prompt, with and without the cache.\n"
           "   Without it, step t runs the model over all t tokens again; with it, over one token.\n\n"
           "   %10s %16s %18s\n", N_NEW, N_PROMPT, "position", "with cache", "without cache");
    const int show[] = {1, 16, 48, 80, 112, N_NEW - 1};
    for (size_t s = 0; s < sizeof show / sizeof show[0]; s++)
        printf("   %10d %13.2f ms %15.2f ms\n", N_PROMPT + show[s], with[show[s]] * 1e3, without[show[s]] * 1e3);
    const int same = memcmp(a, b, sizeof a) == 0;
    printf("\n   first step (prefill of the prompt): %.2f ms with the cache, %.2f ms without\n"
           "   total: %.2f s with the cache (%.1f tokens/s), %.2f s without (%.1f tokens/s): x%.1f\n"
           "   the two runs generated %s tokens\n\n",
           with[0] * 1e3, without[0] * 1e3, sum_with, N_NEW / sum_with, sum_without, N_NEW / sum_without,
           sum_without / sum_with, same ? "the same" : "DIFFERENT");
}

/* (b) the memory formula for this model and published ones */
typedef struct {
    const char *name;
    int layers, kv_heads, head_dim;
} PublishedConfig;

static void lesson_memory(const ModelConfig *mc, char *dat, size_t dat_len)
{
    /* Llama 2 (Touvron et al. 2023, "Llama 2: Open Foundation and Fine-Tuned Chat Models"; the
     * released config.json files): 7B has 32 layers, 32 heads, no GQA; 70B has 80 layers, 64
     * heads, 8 KV heads. Llama 3 8B (Meta, 2024, config.json): 32 layers, 32 heads, 8 KV heads.
     * Head dim 128 in all three. */
    const PublishedConfig models[] = {
        {"this model", mc->n_layers, mc->n_kv_heads, model_head_size(mc)},
        {"Llama-2-7B (MHA)", 32, 32, 128},
        {"Llama-3-8B (GQA 4:1)", 32, 8, 128},
        {"Llama-2-70B (GQA 8:1)", 80, 8, 128},
    };
    const int ctx[] = {2048, 8192, 32768, 131072};
    const KvDtype dts[] = {KV_F32, KV_F16, KV_INT8};
    char b[32];
    paths_in_build(dat, dat_len, "bench", PROG "_memory.dat");
    Tsv tsv;
    if (tsv_open(&tsv, "/dev/null", dat) != 0)
        die_with_error();
    tsv_header(&tsv, "context\tthis_f16\tllama2_7b_f16\tllama3_8b_f16\tllama2_70b_f16");
    printf("2. What the cache costs: 2 * layers * kv_heads * head_dim * bytes per token (int8 adds a 4-byte scale\n"
           "   per token per kv head per K and V), for one sequence:\n\n   %-22s %6s %12s", "model", "dtype", "per token");
    for (size_t i = 0; i < sizeof ctx / sizeof ctx[0]; i++)
        printf(" %11dk", ctx[i] / 1024);
    printf("\n");
    for (size_t mi = 0; mi < sizeof models / sizeof models[0]; mi++)
        for (size_t di = 0; di < 3; di++) {
            const size_t per = kvcache_bytes_per_token(models[mi].layers, models[mi].kv_heads, models[mi].head_dim, dts[di]);
            printf("   %-22s %6s %12s", di == 0 ? models[mi].name : "", kv_dtype_name(dts[di]),
                   format_bytes((double)per, b, sizeof b));
            for (size_t i = 0; i < sizeof ctx / sizeof ctx[0]; i++)
                printf(" %12s", format_bytes((double)per * ctx[i], b, sizeof b));
            printf("\n");
        }
    for (int t = 1024; t <= 131072; t *= 2) {
        double v[4];
        for (int mi = 0; mi < 4; mi++)
            v[mi] = (double)kvcache_bytes_per_token(models[mi].layers, models[mi].kv_heads, models[mi].head_dim, KV_F16) *
                    t / 1073741824.0;
        tsv_row(&tsv, "%d\t%.6f\t%.6f\t%.6f\t%.6f", t, v[0], v[1], v[2], v[3]);
    }
    tsv_close(&tsv);
    printf("\n   (Llama configs from the Llama 2 paper and the released config.json files; head dim 128.)\n"
           "   A 7B MHA model's fp16 cache for one 32k-token sequence is 16 GiB, more than its fp16 weights\n"
           "   (6.7 billion parameters, 13.5 GB); GQA 4:1 (Llama-3-8B) cuts it to 4 GiB.\n\n");
}

/* (c) fp16 and int8 caches against fp32 */
static void lesson_quant(const Model *m)
{
    enum { N_PROMPT = 16, N_NEW = 256 };
    const int V = m->c.vocab_size, total = N_PROMPT + N_NEW;
    int prompt[N_PROMPT], ref_tokens[N_NEW], tokens[N_NEW];
    for (int i = 0; i < N_PROMPT; i++)
        prompt[i] = (i * 53 + 7) % V;
    GenOptions o = {N_NEW, 0.0f, 0, 1, KV_F32, 2, 0, 0};
    if (kvcache_generate(m, prompt, N_PROMPT, &o, ref_tokens, NULL) != 0)
        die_with_error();
    /* teacher forcing: every cache sees the fp32 run's tokens; compare logits step by step */
    int *seq = malloc((size_t)total * sizeof(int));
    memcpy(seq, prompt, sizeof prompt), memcpy(seq + N_PROMPT, ref_tokens, sizeof ref_tokens);
    float *ref = malloc((size_t)(N_NEW + 1) * V * sizeof(float)), *lg = malloc((size_t)V * sizeof(float));
    char b1[32];
    double spread = 0.0; /* the largest |logit| of the fp32 run, to read the errors against */
    printf("3. The cache in fp16 and int8 (one scale per token per kv head), against fp32. Teacher-forced: each\n"
           "   cache is fed the fp32 run's %d tokens and its logits are compared at every step; free-running:\n"
           "   each generates greedily on its own.\n\n   %5s %12s %8s %16s %14s %16s %14s\n",
           N_NEW, "dtype", "cache", "saved", "max |dlogit|", "argmax agrees", "same tokens", "first differs");
    for (int di = 0; di < 3; di++) {
        const KvDtype dt = (KvDtype)di;
        KvCache c;
        if (kvcache_create(&c, m->c.n_layers, 1, m->c.n_kv_heads, total, model_head_size(&m->c), dt) != 0)
            die_with_error();
        double max_err = 0.0;
        int agree = 0;
        for (int step = 0; step <= N_NEW - 1; step++) {
            int rc = step == 0 ? kvcache_forward(m, &c, 0, seq, N_PROMPT, 2, lg)
                               : kvcache_forward(m, &c, 0, seq + N_PROMPT + step - 1, 1, 2, lg);
            if (rc != 0)
                die_with_error();
            if (dt == KV_F32) {
                memcpy(ref + (size_t)step * V, lg, (size_t)V * sizeof(float));
                for (int i = 0; i < V; i++)
                    spread = fabs(lg[i]) > spread ? fabs(lg[i]) : spread;
            }
            double e = max_abs_diff(lg, ref + (size_t)step * V, (size_t)V);
            max_err = e > max_err ? e : max_err;
            agree += model_argmax(lg, V) == model_argmax(ref + (size_t)step * V, V);
        }
        const size_t bytes = kvcache_bytes(&c);
        kvcache_free(&c);
        o.dtype = dt;
        if (kvcache_generate(m, prompt, N_PROMPT, &o, tokens, NULL) != 0)
            die_with_error();
        int same = 0, first = -1;
        for (int i = 0; i < N_NEW; i++) {
            same += tokens[i] == ref_tokens[i];
            if (first < 0 && tokens[i] != ref_tokens[i])
                first = i;
        }
        static size_t f32_bytes;
        if (dt == KV_F32)
            f32_bytes = bytes;
        char firsts[32] = "never";
        if (first >= 0)
            snprintf(firsts, sizeof firsts, "token %d", first);
        printf("   %5s %12s %7.0f%% %16.3g %13.1f%% %13.1f%% %16s\n", kv_dtype_name(dt), format_bytes((double)bytes, b1, sizeof b1),
               100.0 * (1.0 - (double)bytes / f32_bytes), max_err, 100.0 * agree / N_NEW, 100.0 * same / N_NEW, firsts);
    }
    printf("\n   'max |dlogit|': the largest logit difference at any step; the fp32 logits reach |%.1f|.\n"
           "   Greedy decoding changes where two logits are nearly tied; once one token differs, the rest\n"
           "   of a free-running generation follows a different path.\n\n",
           spread);
    free(seq), free(ref), free(lg);
}

static int cmd_lesson(int argc, char **argv)
{
    const char *device = "auto";
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "where to run (the lesson measures the CPU; generate --device cuda runs on a GPU)"},
    };
    ArgCommand cmd = {PROG, "[generate|attn|verify|bench] [options]",
                      "Chapter 04: the KV cache. Without a subcommand: the lesson.\n"
                      "Subcommands (each takes --help):\n"
                      "  generate  token ids in, token ids out, with or without the cache\n"
                      "  attn      attention on .npy files through the cache\n"
                      "  verify    decode and cache attention against chapter 03 on a grid of shapes\n"
                      "  bench     decode attention GB/s and generation speed, TSV rows and a plot",
                      specs, 1};
    args_parse_or_exit(&cmd, argc, argv);
    Device dev;
    if (device_resolve(device, &dev) != 0)
        die_with_error();
    const Roofline *roof = roofline_get();
    Model m;
    load_model(NULL, &m);
    char b1[32];
    printf("Chapter 04: the KV cache\n========================\n\n"
           "A decoder predicts each token from all the tokens before it. The keys and values of those\n"
           "tokens never change once computed, so a decoder keeps them: per layer, a cache laid out\n"
           "[batch, kv_heads, max_seq, head_dim] for K and for V. The prompt goes through the model once\n"
           "(prefill); then each step runs one token and attends one query against the cache (decode).\n\n"
           "Machine: %s; measured fp32 FMA peak %.1f GFLOP/s (%s), DRAM read %.1f GB/s.\n"
           "Model: the built-in random one, llama2.c semantics: dim %d, hidden %d, %d layers, %d heads, %d kv heads\n"
           "(head size %d), vocab %d, seq_len %d: %zu parameters (%s).\n\n",
           roofline_machine(), roof->fma_gflops, roof->fma_what, roof->dram_gbs, m.c.dim, m.c.hidden_dim, m.c.n_layers, m.c.n_heads,
           m.c.n_kv_heads, model_head_size(&m.c), m.c.vocab_size, m.c.seq_len, model_param_count(&m.c),
           format_bytes(4.0 * model_param_count(&m.c), b1, sizeof b1));
    char dat1[4096], dat2[4096];
    lesson_steps(&m, dat1, sizeof dat1);
    plot_show(PROG, "steps", dat1, 1, stdout, "   ", "\n\n");
    lesson_memory(&m.c, dat2, sizeof dat2);
    plot_show(PROG, "memory", dat2, 0, stdout, "   ", "\n\n");
    lesson_quant(&m);
    printf("Take-away: the cache turns each step's work from the whole sequence into one token, at the price\n"
           "of memory that grows with every token; GQA and fp16/int8 storage buy that memory back. Chapter 05\n"
           "stops reserving max_seq positions per sequence and allocates the cache in blocks instead.\n");
    (void)dev;
    model_free(&m);
    return 0;
}

/* ==== bench ===================================================================================== */

typedef struct {
    const KvCache *c;
    int H, n_seq, kernel;
    const int *lens;
    const float *q;
    float *out;
    int rc;
} DecodeRun;

static void decode_run(void *ctx)
{
    DecodeRun *r = ctx;
    r->rc = kvcache_decode_cpu(r->kernel, r->c, 0, r->H, 1.0f / sqrtf((float)r->c->head_dim), r->n_seq, NULL, r->lens,
                               r->q, r->out);
}

/* Fills every position of an n_layers = 1 cache from a pool of random rows (the values do not
 * change the speed; generating 2 GiB of normal numbers would take longer than the benchmark). */
static void fill_cache(KvCache *c)
{
    const int Hkv = c->n_kv_heads, D = c->head_dim, POOL = 1024;
    float *pool = malloc((size_t)POOL * Hkv * D * sizeof(float));
    Rng rng;
    rng_seed(&rng, 11);
    for (size_t i = 0; i < (size_t)POOL * Hkv * D; i++)
        pool[i] = rng_normal(&rng);
    for (int b = 0; b < c->batch; b++)
        for (int t = 0; t < c->max_seq; t++) {
            const float *row = pool + (size_t)((t * 7 + b * 13) % POOL) * Hkv * D;
            kvcache_write(c, 0, b, t, 1, row, row);
        }
    free(pool);
}

static int cmd_bench(int argc, char **argv)
{
    const char *device = "auto", *out = NULL;
    int repeats = 5, max_l = 16384, gen_tokens = 512;
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "auto: CPU, and the GPU when present"},
        {.name = "out", .kind = ARG_STRING, .dest = &out, .metavar = "FILE", .help = "rows to FILE instead of stdout"},
        {.name = "max-l", .kind = ARG_INT, .dest = &max_l, .metavar = "N",
         .help = "longest cache of the decode sweep (default 16384)", .min = 256, .max = 1 << 22},
        {.name = "gen-tokens", .kind = ARG_INT, .dest = &gen_tokens, .metavar = "N",
         .help = "tokens generated with and without the cache (default 512; 0 skips)", .min = 0, .max = 2048},
        {.name = "repeats", .kind = ARG_INT, .dest = &repeats, .metavar = "N",
         .help = "timed runs per decode point, median reported (default 5)", .min = 1, .max = 1000},
    };
    ArgCommand cmd = {PROG " bench", "[options]",
                      "Decode attention: one query per sequence against caches of L = 1024 .. max-l positions, B = 16\n"
                      "sequences, H = 8, Hkv in {8, 2}, D = 128, caches flushed before each run. GB/s counts the bytes\n"
                      "of K and V read once: 2*B*Hkv*L*D*bytes (+ int8 scales). Generation: the built-in model,\n"
                      "gen-tokens greedy tokens after a 16-token prompt, with and without the cache.\n"
                      "Columns: mode device variant dtype B H Hkv L D time_ms gbs pct_dram tokens_per_s.",
                      specs, 5};
    args_parse_or_exit(&cmd, argc, argv);
    char why[256], dat[4096];
    int have_gpu = device_cuda_available(why, sizeof why);
    if (strcmp(device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    const int use_cpu = strcmp(device, "cuda") != 0, use_gpu = have_gpu && strcmp(device, "cpu") != 0;
    Tsv tsv;
    paths_in_build(dat, sizeof dat, "bench", PROG "_bench.dat");
    if (tsv_open(&tsv, out, dat) != 0)
        die_with_error();
    const Roofline *roof = roofline_get();
    fprintf(stderr, "%s bench on %s: FMA peak %.1f GFLOP/s (%s), DRAM %.1f GB/s%s%s\n", PROG, roofline_machine(),
            roof->fma_gflops, roof->fma_what, roof->dram_gbs, use_gpu ? "; GPU: " : "", use_gpu ? device_description(DEVICE_CUDA) : "");
    tsv_header(&tsv, "mode\tdevice\tvariant\tdtype\tB\tH\tHkv\tL\tD\ttime_ms\tgbs\tpct_dram\ttokens_per_s");
    const int B = 16, H = 8, D = 128, hkvs[2] = {8, 2};
    int target_l = 1024; /* the target's shape: L = 16384, or the longest L of a shorter sweep */
    while (target_l * 4 <= (max_l < 16384 ? max_l : 16384))
        target_l *= 4;
    double best_pct[2] = {0, 0};
    /* one series after another (Hkv, dtype, kernel), so that the plot can join each one's points */
    for (int hi = 0; hi < 2; hi++) {
        for (int di = 0; di < 3 && use_cpu; di++)
            for (int kern = di == 0 ? 1 : 2; kern <= KVCACHE_CPU_KERNELS; kern++)
                for (int L = 1024; L <= max_l; L *= 4) {
                    if (kern == 1 && L > 4096)
                        continue; /* the reference is far from the bandwidth; keep the run short */
                    KvCache c;
                    if (kvcache_create(&c, 1, B, hkvs[hi], L, D, (KvDtype)di) != 0)
                        die_with_error();
                    fill_cache(&c);
                    float *q = mem_alloc_or_die((size_t)B * H * D * sizeof(float), "q");
                    float *o = mem_alloc_or_die((size_t)B * H * D * sizeof(float), "out");
                    int *lens = mem_alloc_or_die((size_t)B * sizeof(int), "lens");
                    for (int b = 0; b < B; b++)
                        lens[b] = L;
                    for (size_t i = 0; i < (size_t)B * H * D; i++)
                        q[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
                    bench_progress("decode Hkv=%d L=%d %s %s ...", hkvs[hi], L, kv_dtype_name((KvDtype)di),
                                   kvcache_cpu_kernel_name(kern));
                    DecodeRun run = {&c, H, B, kern, lens, q, o, 0};
                    BenchTiming t = bench_time_setup(decode_run, cache_flush, &run, 1, repeats, 2.0);
                    if (run.rc != 0)
                        die_with_error();
                    const double bytes = (double)kvcache_bytes(&c); /* every position is read once */
                    const double gbs = bytes / t.median_s / 1e9, pct = 100.0 * gbs / roof->dram_gbs;
                    if (kern == 2 && di == 0 && L == target_l)
                        best_pct[hi] = pct;
                    tsv_row(&tsv, "decode\tcpu\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\tnan",
                            kvcache_cpu_kernel_name(kern), kv_dtype_name((KvDtype)di), B, H, hkvs[hi], L, D,
                            t.median_s * 1e3, gbs, pct);
                    mem_free(q), mem_free(o), mem_free(lens);
                    kvcache_free(&c);
                }
#if HAVE_CUDA
        for (int L = 1024; L <= max_l && use_gpu; L *= 4) {
            AttnDims d = {B, H, hkvs[hi], 1, L, D, 1, 1.0f / sqrtf((float)D)};
            Tensor q, k, v;
            attn_random_inputs(&d, 5, &q, &k, &v);
            AttnTiming t = attn_time(&IMPLS, DEVICE_CUDA, 1, &d, &q, &k, &v, repeats, 2.0, 0);
            if (t.rc == 0)
                tsv_row(&tsv, "decode\tcuda\tsplit\tf32\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\tnan\tnan", B, H, hkvs[hi], L, D,
                        t.time.median_s * 1e3, 2.0 * B * hkvs[hi] * L * D * 4 / t.time.median_s / 1e9);
            tensor_free(&q), tensor_free(&k), tensor_free(&v);
        }
#endif
    }
    double with_s = NAN, without_s = NAN;
    if (gen_tokens > 0) {
        Model m;
        load_model(NULL, &m);
        int prompt[16];
        for (int i = 0; i < 16; i++)
            prompt[i] = (i * 37 + 1) % m.c.vocab_size;
        int *toks = malloc((size_t)gen_tokens * sizeof(int));
        for (int di = 0; di < 2; di++) {
            Device dev = di ? DEVICE_CUDA : DEVICE_CPU;
            if ((dev == DEVICE_CPU && !use_cpu) || (dev == DEVICE_CUDA && !use_gpu))
                continue;
            for (int cache = 1; cache >= 0; cache--) {
                GenOptions o = {gen_tokens, 0.0f, 0, cache, KV_F32, 2, 0, 0};
                bench_progress("generate %d tokens on %s %s the cache ...", gen_tokens, device_name(dev),
                               cache ? "with" : "without");
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
                const double secs = timer_now() - t0;
                if (dev == DEVICE_CPU)
                    *(cache ? &with_s : &without_s) = secs;
                tsv_row(&tsv, "generate\t%s\t%s\tf32\t1\t%d\t%d\t%d\t%d\t%.2f\tnan\tnan\t%.2f", device_name(dev),
                        cache ? "cache" : "nocache", m.c.n_heads, m.c.n_kv_heads, 16 + gen_tokens, model_head_size(&m.c),
                        secs * 1e3, gen_tokens / secs);
            }
        }
        free(toks);
        model_free(&m);
    }
    bench_progress_done();
    tsv_close(&tsv);
    if (use_cpu) {
        fprintf(stderr, "targets: decode attention, fp32, B=16, H=8, D=128, L=%d: %.1f%% (Hkv=8) and %.1f%% (Hkv=2) "
                        "of the DRAM read bandwidth (target >= 80%%)\n",
                target_l, best_pct[0], best_pct[1]);
        if (!isnan(with_s) && !isnan(without_s))
            fprintf(stderr, "targets: %d tokens: with the cache %.1f s, without %.1f s: x%.1f (target >= x10)\n",
                    gen_tokens, with_s, without_s, without_s / with_s);
    }
    plot_show(PROG, "bench", dat, 0, stderr, PROG " bench: ", "\n");
    return 0;
}

/* ==== CPU and GPU tokens, compared ================================================================= */

/* Hidden subcommand for scripts/gpu-check.sh: `_agree PROMPT A B` (three lists of ids, the
 * built-in model) says whether greedy continuations A and B of PROMPT agree up to a near-tie
 * (kvcache_greedy_divergence): exit 0 when identical or when they part at a near-tie, 1 when
 * they part where the CPU's logits are clearly apart. */
static int cmd_agree(int argc, char **argv)
{
    if (argc != 4)
        die("usage: %s _agree \"PROMPT IDS\" \"IDS A\" \"IDS B\"", PROG);
    int *prompt = NULL, *a = NULL, *b = NULL, n_prompt = 0, n_a = 0, n_b = 0;
    if (token_ids_parse(argv[1], &prompt, &n_prompt) != 0 || token_ids_parse(argv[2], &a, &n_a) != 0 ||
        token_ids_parse(argv[3], &b, &n_b) != 0)
        die_with_error();
    if (n_a != n_b)
        die("_agree: %d tokens against %d", n_a, n_b);
    Model m;
    load_model(NULL, &m);
    double gap = 0.0;
    const int at = kvcache_greedy_divergence(&m, prompt, n_prompt, a, b, n_a, &gap);
    if (at == -2)
        die_with_error();
    if (at == -1)
        printf("%d tokens: identical\n", n_a);
    else
        printf("%d tokens: identical up to token %d, where %d and %d are %s (logits %.2e apart, relative; a "
               "near-tie is within %.0e)\n",
               n_a, at, a[at], b[at], gap <= KVCACHE_NEAR_TIE ? "a near-tie" : "NOT a near-tie", gap, KVCACHE_NEAR_TIE);
    model_free(&m);
    free(prompt), free(a), free(b);
    return at >= 0 && gap > KVCACHE_NEAR_TIE;
}

/* ==== main ====================================================================================== */

int main(int argc, char **argv)
{
    error_set_program(PROG);
    if (argc > 1 && strcmp(argv[1], "attn") == 0)
        return attn_command(&IMPLS,
                            "Attention through the KV cache: K and V are written into an fp32 cache [B, Hkv, S, D] and\n"
                            "the T queries sit at its last T positions (bottom-right causal with --causal). T = 1 runs\n"
                            "the decode kernel; T > 1 gathers the cache and runs chapter 03's flash kernel.\n"
                            "Kernels: CPU 1 = ref, 2 = split (default); CUDA 1 = split.",
                            argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "verify") == 0)
        return attn_verify_command(&IMPLS, argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "generate") == 0)
        return cmd_generate(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "bench") == 0)
        return cmd_bench(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "_agree") == 0)
        return cmd_agree(argc - 1, argv + 1);
    if (argc > 1 && argv[1][0] != '-')
        die("unknown subcommand '%s' (expected generate, attn, verify or bench; see '%s --help')", argv[1], PROG);
    return cmd_lesson(argc, argv);
}
