/*
 * main.c: the chapter 04 program, build/bin/04_kvcache: the lesson, and the table of subcommands.
 *
 *   04_kvcache [--device D]   the lesson: per-step latency with and without the cache, what the
 *                             cache costs for this model and for published ones, what fp16
 *                             and int8 caches change (error, agreement, memory), and how the next
 *                             token is chosen: temperature, top-k, top-p (lesson_sampling.c)
 *   04_kvcache generate ...   token ids in, token ids out (docs/contracts.md §1.6; generate_cmd.c)
 *   04_kvcache attn ...       attention through the cache: K, V written into it, the T queries
 *                             at its last T positions
 *   04_kvcache verify ...     decode and cache attention against chapter 03 on the grid (bench.c)
 *   04_kvcache bench ...      decode attention in GB/s against DRAM bandwidth; generation with
 *                             and without the cache (bench.c)
 *
 * Every subcommand takes --help.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "01_mha/mha.h"
#include "04_kvcache/commands.h"
#include "04_kvcache/kvcache.h"
#include "common/bench.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/model.h"
#include "common/plot.h"
#include "common/program.h"
#include "common/tensor.h"

#define PROG KVCACHE_PROG

/* ==== the lesson ================================================================================ */

/* (0) one token through the model, with this model's shapes (docs/model.md draws it in full) */
static void lesson_model(const ModelConfig *c)
{
    const int D = model_head_size(c), kvd = model_kv_dim(c);
    printf("0. One token through the model (docs/model.md), shapes for this model and n new tokens:\n\n"
           "   token ids (n) -> embedding rows x (n, %d)\n"
           "   %d x [ RMSNorm -> q (n, %d) = %d heads x %d, k and v (n, %d) = %d kv heads x %d\n"
           "          -> RoPE on q and k -> k, v written to the cache at their positions\n"
           "          -> attention of q against every cached k, v -> Wo (n, %d) -> x += it (the residual)\n"
           "          -> RMSNorm -> SwiGLU MLP %d -> %d -> %d -> x += it ]\n"
           "   -> RMSNorm -> classifier: logits (n, %d) -> the last row picks the next token (argmax, or a\n"
           "      sample at temperature T) -> fed back as the next step's one token.\n\n",
           c->dim, c->n_layers, c->n_heads * D, c->n_heads, D, kvd, c->n_kv_heads, D, c->dim, c->dim,
           c->hidden_dim, c->dim, c->vocab_size);
    /* what bounds a decode step: the weights, read once per step, against each sequence's cache */
    const double weights = (double)model_packed_floats(c) * sizeof(float);
    const double per_token = (double)kvcache_bytes_per_token(c->n_layers, c->n_kv_heads, D, KV_F32);
    char b1[32], b2[32];
    printf("   A decode step reads every weight once (%s, shared by the batch) and each sequence's cache\n"
           "   (%s per token, fp32): one sequence's cache outweighs the weights past %.0f tokens, a batch of\n"
           "   32 past %.0f tokens each. Short contexts at batch 1: the weights bound decode; long contexts or\n"
           "   large batches: the KV cache does (docs/model.md, 'What bounds a decode step').\n\n",
           format_bytes(weights, b1, sizeof b1), format_bytes(per_token, b2, sizeof b2), weights / per_token,
           weights / per_token / 32);
}

/* (a) the same greedy generation with and without the cache, step by step */
static void lesson_steps(const Model *m)
{
    char dat[4096];
    enum { N_PROMPT = 16, N_NEW = 128 };
    int prompt[N_PROMPT], a[N_NEW], b[N_NEW];
    double with[N_NEW], without[N_NEW];
    for (int i = 0; i < N_PROMPT; i++)
        prompt[i] = (i * 37 + 1) % m->c.vocab_size;
    /* an untimed warm-up of both, so that neither timed run pays for first touches (the OpenMP
     * threads' start, pages of buffers and weights) that the other then gets for free */
    GenOptions o = {.max_new = 4, .use_cache = 1, .dtype = KV_F32, .kernel = 2};
    for (int cache = 1; cache >= 0; cache--) {
        o.use_cache = cache;
        if (kvcache_generate(m, prompt, N_PROMPT, &o, a, NULL) != 0)
            die_with_error();
    }
    o.max_new = N_NEW, o.use_cache = 1;
    if (kvcache_generate(m, prompt, N_PROMPT, &o, a, with) != 0)
        die_with_error();
    o.use_cache = 0;
    if (kvcache_generate(m, prompt, N_PROMPT, &o, b, without) != 0)
        die_with_error();
    double sum_with = 0, sum_without = 0;
    for (int i = 0; i < N_NEW; i++)
        sum_with += with[i], sum_without += without[i];
    Tsv tsv;
    lesson_data_open(&tsv, dat, sizeof dat, PROG, "steps", "position\twith_cache_ms\twithout_cache_ms");
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
    plot_show(PROG, "steps", dat, 1, stdout, "   ", "\n\n");
}

/* (b) the memory formula for this model and published ones */
typedef struct {
    const char *name;
    int layers, kv_heads, D;
} PublishedConfig;

static void lesson_memory(const ModelConfig *mc)
{
    char dat[4096];
    /* Llama 2 (Touvron et al. 2023, "Llama 2: Open Foundation and Fine-Tuned Chat Models"; the
     * released config.json files): 7B has 32 layers, 32 heads, no GQA; 70B has 80 layers, 64
     * heads, 8 KV heads. Llama 3 8B (Meta, 2024, config.json): 32 layers, 32 heads, 8 KV heads.
     * Head dim 128 in all three. */
    const PublishedConfig models[] = {
        {.name = "this model", .layers = mc->n_layers, .kv_heads = mc->n_kv_heads, .D = model_head_size(mc)},
        {.name = "Llama-2-7B (MHA)", .layers = 32, .kv_heads = 32, .D = 128},
        {.name = "Llama-3-8B (GQA 4:1)", .layers = 32, .kv_heads = 8, .D = 128},
        {.name = "Llama-2-70B (GQA 8:1)", .layers = 80, .kv_heads = 8, .D = 128},
    };
    const int ctx[] = {2048, 8192, 32768, 131072};
    const KvDtype dts[] = {KV_F32, KV_F16, KV_INT8};
    char b[32];
    Tsv tsv;
    lesson_data_open(&tsv, dat, sizeof dat, PROG, "memory",
                     "context\tthis_f16\tllama2_7b_f16\tllama3_8b_f16\tllama2_70b_f16");
    printf("2. What the cache costs: 2 * layers * kv_heads * head_dim * bytes per token (int8 adds a 4-byte scale\n"
           "   per token per kv head per K and V), for one sequence:\n\n   %-22s %6s %12s", "model", "dtype", "per token");
    for (size_t i = 0; i < sizeof ctx / sizeof ctx[0]; i++)
        printf(" %11dk", ctx[i] / 1024);
    printf("\n");
    for (size_t mi = 0; mi < sizeof models / sizeof models[0]; mi++)
        for (size_t di = 0; di < 3; di++) {
            const size_t per = kvcache_bytes_per_token(models[mi].layers, models[mi].kv_heads, models[mi].D, dts[di]);
            printf("   %-22s %6s %12s", di == 0 ? models[mi].name : "", kv_dtype_name(dts[di]),
                   format_bytes((double)per, b, sizeof b));
            for (size_t i = 0; i < sizeof ctx / sizeof ctx[0]; i++)
                printf(" %12s", format_bytes((double)per * ctx[i], b, sizeof b));
            printf("\n");
        }
    for (int t = 1024; t <= 131072; t *= 2) {
        double v[4];
        for (int mi = 0; mi < 4; mi++)
            v[mi] = (double)kvcache_bytes_per_token(models[mi].layers, models[mi].kv_heads, models[mi].D, KV_F16) * t /
                    1073741824.0;
        tsv_row(&tsv, "%d\t%.6f\t%.6f\t%.6f\t%.6f", t, v[0], v[1], v[2], v[3]);
    }
    tsv_close(&tsv);
    printf("\n   (Llama configs from the Llama 2 paper and the released config.json files; head dim 128.)\n"
           "   A 7B MHA model's fp16 cache for one 32k-token sequence is 16 GiB, more than its fp16 weights\n"
           "   (6.7 billion parameters, 13.5 GB); GQA 4:1 (Llama-3-8B) cuts it to 4 GiB.\n\n");
    plot_show(PROG, "memory", dat, 0, stdout, "   ", "\n\n");
}

/* (c) fp16 and int8 caches against fp32 */
enum { QUANT_PROMPT = 16, QUANT_NEW = 256 };
/* the decode timed per dtype: 128 MiB of fp32 K and V, far beyond the caches */
enum { QUANT_SPEED_B = 16, QUANT_SPEED_H = 8, QUANT_SPEED_HKV = 2, QUANT_SPEED_L = 4096, QUANT_SPEED_D = 128 };

typedef struct {
    double max_err; /* the largest |logit - fp32 logit| at any step */
    int agree;      /* steps whose argmax is the fp32 run's */
    size_t bytes;   /* the cache's size */
} QuantForced;

/* Teacher forcing: a cache of dtype dt is fed seq (QUANT_PROMPT + QUANT_NEW tokens) and its logits
 * compared at every step with ref (QUANT_NEW, V), which the fp32 run (dt = KV_F32, first) writes;
 * it also raises *spread to its largest |logit|. */
static QuantForced quant_forced(const Model *m, KvDtype dt, const int *seq, float *ref, double *spread)
{
    const int V = m->c.vocab_size;
    float *lg = mem_alloc_or_die((size_t)V * sizeof(float), "logits (vocab)");
    KvCache c;
    if (kvcache_create(&c, m->c.n_layers, 1, m->c.n_kv_heads, QUANT_PROMPT + QUANT_NEW, model_head_size(&m->c), dt) !=
        0)
        die_with_error();
    QuantForced r = {.max_err = 0.0};
    for (int step = 0; step <= QUANT_NEW - 1; step++) {
        int rc = step == 0 ? kvcache_forward(m, &c, 0, seq, QUANT_PROMPT, 2, lg)
                           : kvcache_forward(m, &c, 0, seq + QUANT_PROMPT + step - 1, 1, 2, lg);
        if (rc != 0)
            die_with_error();
        if (dt == KV_F32) {
            memcpy(ref + (size_t)step * V, lg, (size_t)V * sizeof(float));
            for (int i = 0; i < V; i++)
                *spread = fabs(lg[i]) > *spread ? fabs(lg[i]) : *spread;
        }
        double e = max_abs_diff(lg, ref + (size_t)step * V, (size_t)V);
        r.max_err = e > r.max_err ? e : r.max_err;
        r.agree += model_argmax(lg, V) == model_argmax(ref + (size_t)step * V, V);
    }
    r.bytes = kvcache_bytes(&c);
    kvcache_free(&c);
    mem_free(lg);
    return r;
}

static void lesson_quant(const Model *m)
{
    const int V = m->c.vocab_size;
    int prompt[QUANT_PROMPT], ref_tokens[QUANT_NEW], tokens[QUANT_NEW], seq[QUANT_PROMPT + QUANT_NEW];
    for (int i = 0; i < QUANT_PROMPT; i++)
        prompt[i] = (i * 53 + 7) % V;
    GenOptions o = {.max_new = QUANT_NEW, .use_cache = 1, .dtype = KV_F32, .kernel = 2};
    if (kvcache_generate(m, prompt, QUANT_PROMPT, &o, ref_tokens, NULL) != 0)
        die_with_error();
    /* teacher forcing: every cache sees the fp32 run's tokens; compare logits step by step */
    memcpy(seq, prompt, sizeof prompt), memcpy(seq + QUANT_PROMPT, ref_tokens, sizeof ref_tokens);
    float *ref = mem_alloc_or_die((size_t)QUANT_NEW * V * sizeof(float), "fp32 logits (steps, vocab)");
    char b1[32];
    double spread = 0.0; /* the largest |logit| of the fp32 run, to read the errors against */
    size_t f32_bytes = 0;
    printf("3. The cache in fp16 and int8 (one scale per token per kv head), against fp32. Teacher-forced: each\n"
           "   cache is fed the fp32 run's %d tokens and its logits are compared at every step; free-running:\n"
           "   each generates greedily on its own. Speed: decode attention over a cache of %d sequences x %d\n"
           "   tokens (H = %d, Hkv = %d, D = %d, caches flushed), the values widened in registers.\n\n"
           "   %5s %12s %8s %16s %14s %16s %14s %11s %8s\n",
           QUANT_NEW, QUANT_SPEED_B, QUANT_SPEED_L, QUANT_SPEED_H, QUANT_SPEED_HKV, QUANT_SPEED_D, "dtype", "cache",
           "saved", "max |dlogit|", "argmax agrees", "same tokens", "first differs", "decode", "speed");
    double f32_s = 0.0;
    for (int di = 0; di < 3; di++) {
        const KvDtype dt = (KvDtype)di;
        const QuantForced f = quant_forced(m, dt, seq, ref, &spread);
        f32_bytes = dt == KV_F32 ? f.bytes : f32_bytes;
        o.dtype = dt;
        if (kvcache_generate(m, prompt, QUANT_PROMPT, &o, tokens, NULL) != 0)
            die_with_error();
        int same = 0, first = -1;
        for (int i = 0; i < QUANT_NEW; i++) {
            same += tokens[i] == ref_tokens[i];
            if (first < 0 && tokens[i] != ref_tokens[i])
                first = i;
        }
        char firsts[32] = "never";
        if (first >= 0)
            snprintf(firsts, sizeof firsts, "token %d", first);
        const double secs = kvcache_time_decode(2, QUANT_SPEED_B, QUANT_SPEED_H, QUANT_SPEED_HKV, QUANT_SPEED_L,
                                                QUANT_SPEED_D, dt, 5, NULL);
        f32_s = dt == KV_F32 ? secs : f32_s;
        printf("   %5s %12s %7.0f%% %16.3g %13.1f%% %13.1f%% %16s %8.2f ms %7.2fx\n", kv_dtype_name(dt),
               format_bytes((double)f.bytes, b1, sizeof b1), 100.0 * (1.0 - (double)f.bytes / f32_bytes), f.max_err,
               100.0 * f.agree / QUANT_NEW, 100.0 * same / QUANT_NEW, firsts, secs * 1e3, f32_s / secs);
    }
    printf("\n   'max |dlogit|': the largest logit difference at any step; the fp32 logits reach |%.1f|.\n"
           "   Greedy decoding changes where two logits are nearly tied; once one token differs, the rest\n"
           "   of a free-running generation follows a different path. 'speed' is against fp32: decode reads\n"
           "   the cache once, so a cache half or a quarter the size pays only if the kernel reads those\n"
           "   bytes and widens them in registers (decode_quant.c), never through a float copy in memory.\n\n",
           spread);
    mem_free(ref);
}

/* ==== by hand: a prefill and one decode step through a tiny cache ================================ */

enum { HAND_N = 3, HAND_D = 2, HAND_MAX = 4 };
static const float HAND_QS[HAND_N * HAND_D] = {0, 0, 0, 1, 1, 0}; /* (tokens, D): q of tokens 0, 1, 2 */
static const float HAND_KS[HAND_N * HAND_D] = {1, 0, 0, 1, 1, 1}; /* (tokens, D) */
static const float HAND_VS[HAND_N * HAND_D] = {1, 0, 0, 1, 1, 1}; /* (tokens, D) */

/* One layer, one head, D = 2, scale 1: the prompt's two tokens go into the cache at positions 0
 * and 1; the decode step writes token 2 at position 2 and its query reads positions 0..2. The same
 * numbers by the formula, through kvcache_decode_ref, and through chapter 01's attention over all
 * three tokens (its last row): the cache changes where K and V come from, not the answer. */
static void lesson_by_hand(void)
{
    KvCache c;
    if (kvcache_create(&c, 1, 1, 1, HAND_MAX, HAND_D, KV_F32) != 0)
        die_with_error();
    kvcache_write(&c, 0, 0, 0, 2, HAND_KS, HAND_VS);                               /* prefill: positions 0, 1 */
    kvcache_write(&c, 0, 0, 2, 1, HAND_KS + 2 * HAND_D, HAND_VS + 2 * HAND_D); /* decode: position 2 */
    const float *q = HAND_QS + 2 * HAND_D;
    double sc[HAND_N], z = 0.0, by_hand[HAND_D] = {0, 0};
    for (int j = 0; j < HAND_N; j++)
        sc[j] = (double)q[0] * HAND_KS[j * HAND_D] + (double)q[1] * HAND_KS[j * HAND_D + 1], z += exp(sc[j]);
    for (int j = 0; j < HAND_N; j++)
        for (int d = 0; d < HAND_D; d++)
            by_hand[d] += exp(sc[j]) / z * HAND_VS[j * HAND_D + d];
    float dec[HAND_D], full[HAND_N * HAND_D];
    const int len = HAND_N;
    const MhaShape all = {.B = 1, .H = 1, .T = HAND_N, .S = HAND_N, .D = HAND_D, .causal = 1, .scale = 1.0f};
    if (kvcache_decode_ref(&c, 0, 1, 1.0f, 1, NULL, &len, q, dec) != 0 ||
        mha_attention_ref(&all, HAND_QS, HAND_KS, HAND_VS, full) != 0)
        die_with_error();
    kvcache_free(&c);
    printf("By hand: one layer, one head, D = 2, scale 1, a cache of max_seq 4 positions. Prefill writes the\n"
           "prompt's tokens 0 and 1; the decode step writes token 2 and attends its query to positions 0..2:\n\n"
           "   position   ");
    for (int p = 0; p < HAND_MAX; p++)
        printf(" %8d", p);
    for (int row = 0; row < 2; row++) {
        const float *x = row == 0 ? HAND_KS : HAND_VS;
        printf("\n   %-10s", row == 0 ? "k" : "v");
        for (int p = 0; p < HAND_MAX; p++)
            if (p < HAND_N)
                printf("    (%g %g)", x[p * HAND_D], x[p * HAND_D + 1]);
            else
                printf(" %8s", ".");
    }
    printf("     (position 3: reserved, not filled; length 3)\n\n"
           "   q of token 2 = (%g %g): scores (%g, %g, %g), P = (e, 1, e) / (2e + 1), out = P V = (%.4f %.4f)\n"
           "   kvcache_decode_ref: (%.4f %.4f); chapter 01's attention over all 3 tokens, its last row:\n"
           "   (%.4f %.4f). Only token 2's k and v were computed in this step; 0 and 1 came from the cache.\n\n",
           q[0], q[1], sc[0], sc[1], sc[2], by_hand[0], by_hand[1], dec[0], dec[1], full[2 * HAND_D],
           full[2 * HAND_D + 1]);
}

static const Program PROGRAM;

static int cmd_lesson(int argc, char **argv)
{
    const Device dev = lesson_begin(
        &PROGRAM, "where to run (the lesson measures the CPU; generate --device cuda runs on a GPU)", NULL, 0, argc, argv);
    Model m;
    program_load_model(NULL, &m);
    char b1[32];
    printf("A decoder predicts each token from all the tokens before it. The keys and values of those\n"
           "tokens never change once computed, so a decoder keeps them: per layer, a cache laid out\n"
           "[batch, kv_heads, max_seq, head_dim] for K and for V. The prompt goes through the model once\n"
           "(prefill); then each step runs one token and attends one query against the cache (decode).\n\n");
    lesson_by_hand();
    lesson_machine(dev, 0); /* the lesson measures the CPU */
    printf("Model: the built-in random one, llama2.c semantics: dim %d, hidden %d, %d layers, %d heads, %d kv heads\n"
           "(head size %d), vocab %d, seq_len %d: %zu parameters (%s).\n\n",
           m.c.dim, m.c.hidden_dim, m.c.n_layers, m.c.n_heads, m.c.n_kv_heads, model_head_size(&m.c), m.c.vocab_size,
           m.c.seq_len, model_param_count(&m.c), format_bytes(4.0 * model_param_count(&m.c), b1, sizeof b1));
    lesson_model(&m.c);
    lesson_steps(&m);
    lesson_memory(&m.c);
    lesson_quant(&m);
    lesson_sampling(&m); /* lesson_sampling.c */
    model_free(&m);
    return lesson_end(
        "the cache turns each step's work from the whole sequence into one token, at the price\n"
        "of memory that grows with every token; GQA and fp16/int8 storage buy that memory back. Chapter 05\n"
        "stops reserving max_seq positions per sequence and allocates the cache in blocks instead.\n");
}

/* ==== main ====================================================================================== */

static const Subcommand COMMANDS[] = {
    {.name = "generate", .run = kvcache_cmd_generate, .summary = "token ids in, token ids out, with or without the cache"},
    {.name = "attn", .run = kvcache_cmd_attn, .summary = "attention on .npy files through the cache"},
    {.name = "verify", .run = kvcache_cmd_verify,
     .summary = "decode and cache attention against chapter 03 on a grid of shapes"},
    {.name = "bench", .run = kvcache_cmd_bench,
     .summary = "decode attention GB/s and generation speed, TSV rows and a plot"},
    {.name = "_agree", .run = kvcache_cmd_agree, .summary = NULL}, /* for scripts/gpu-check.sh: not listed */
    {.name = NULL},
};

static const Program PROGRAM = {.name = PROG, .title = "Chapter 04: the KV cache", .lesson = cmd_lesson,
                                .subcommands = COMMANDS};

int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
