/*
 * main.c: the chapter 05 program, build/bin/05_paged.
 *
 *   05_paged [--device D]   the lesson: block tables drawn over the pool, the memory a contiguous
 *                           cache wastes against paging (measured with the allocator's own
 *                           counters), what fork/copy-on-write saves, paged vs contiguous decode
 *                           speed by block size, and the same tokens as chapter 04
 *   05_paged generate ...   token ids in, token ids out, through a paged cache (design.md §4),
 *                           with --n-samples K forked samples of one prompt
 *   05_paged attn ...       attention on .npy files: K, V scattered into a shuffled block table
 *   05_paged verify ...     every kernel against chapter 04, for block sizes 1, 8, 16, 32, and
 *                           batches of sequences of different lengths
 *   05_paged bench ...      decode GB/s, paged by block size against chapter 04's contiguous cache
 *
 * Every subcommand takes --help.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "common/args.h"
#include "common/attn_harness.h"
#include "common/bench.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/model.h"
#include "common/paths.h"
#include "common/plot.h"
#include "common/rng.h"
#include "common/roofline.h"
#include "common/tensor.h"
#include "common/timer.h"
#include "common/tokenizer.h"
#include "common/verify.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

#define PROG "05_paged"

/* ==== attention through a paged cache, as the harness sees it ===================================== */

static int g_block_size = 16;         /* attn --block-size, and each round of verify */
static uint64_t g_shuffle_seed = 1234; /* the order the pool hands out blocks */

/* B sequences of S tokens in a pool with blocks in shuffled order, every slot first set to NaN
 * (a slot the kernels must not read), then K/V (B, Hkv, S, D) written through the tables. */
static int paged_from_bhsd(const AttnDims *d, int bs, const float *k, const float *v, PagedPool *p, PagedSeq *seqs)
{
    /* a pool of exactly the blocks the B sequences take: ceil(S / bs) each, in size_t (B * that
     * can pass INT_MAX) */
    const size_t per_seq = ((size_t)d->S + (size_t)bs - 1) / (size_t)bs, blocks = (size_t)d->B * per_seq;
    if (blocks > (size_t)INT_MAX)
        return error_set("B = %d sequences of S = %d keys take %zu blocks of %d tokens, more than a pool can have "
                         "(%d): give a larger --block-size",
                         d->B, d->S, blocks, bs, INT_MAX);
    if (paged_pool_create(p, 1, d->Hkv, d->D, bs, blocks > 0 ? (int)blocks : 1) != 0) {
        if (bs > d->S) { /* the likely cause: every sequence's one block is mostly empty */
            char why[512], fit[32];
            snprintf(why, sizeof why, "%s", error_message());
            format_bytes(2.0 * d->B * d->Hkv * d->S * d->D * sizeof(float), fit, sizeof fit);
            error_set("%s; --block-size %d is larger than S = %d: each of the B = %d sequences holds one block with "
                      "%d empty slots (--block-size %d would need %s)",
                      why, bs, d->S, d->B, bs - d->S, d->S, fit);
        }
        return -1;
    }
    const size_t pool_floats = (size_t)p->num_blocks * p->n_kv_heads * bs * d->D;
    for (size_t i = 0; i < pool_floats; i++)
        p->k[i] = p->v[i] = NAN;
    paged_pool_shuffle(p, g_shuffle_seed);
    const size_t D = (size_t)d->D, S = (size_t)d->S;
    for (int b = 0; b < d->B; b++) {
        paged_seq_init(&seqs[b]);
        if (paged_seq_append(p, &seqs[b], d->S) != 0)
            return -1;
        for (int h = 0; h < d->Hkv; h++)
            for (size_t t = 0; t < S; t++) {
                const int id = seqs[b].blocks[t / (size_t)bs];
                memcpy(paged_k_block(p, id, 0, h) + (t % (size_t)bs) * D, k + (((size_t)b * d->Hkv + h) * S + t) * D,
                       D * sizeof(float));
                memcpy(paged_v_block(p, id, 0, h) + (t % (size_t)bs) * D, v + (((size_t)b * d->Hkv + h) * S + t) * D,
                       D * sizeof(float));
            }
    }
    return 0;
}

/* (B, H, T, D) <-> (B*T, H, D), the token-major rows the paged kernels take */
static void bhtd_to_rows(const float *x, float *rows, int B, int H, int T, int D, int back)
{
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                float *a = (float *)x + (((size_t)b * H + h) * T + t) * D;
                float *r = rows + (((size_t)b * T + t) * H + h) * D;
                if (back)
                    memcpy(a, r, (size_t)D * sizeof(float));
                else
                    memcpy(r, a, (size_t)D * sizeof(float));
            }
}

static int run_cpu(int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    PagedPool p;
    PagedSeq *seqs = mem_alloc((size_t)d->B * sizeof(PagedSeq), "sequences");
    PagedSeq **ptrs = mem_alloc((size_t)d->B * sizeof(PagedSeq *), "sequence list");
    int *q_start = mem_alloc((size_t)(d->B + 1) * sizeof(int), "query starts");
    const size_t n = attn_q_count(d);
    float *qr = mem_alloc(n * sizeof(float) + 1, "q rows"), *orow = mem_alloc(n * sizeof(float) + 1, "out rows");
    int rc = !seqs || !ptrs || !q_start || !qr || !orow ? -1 : 0;
    memset(&p, 0, sizeof p);
    if (rc == 0)
        rc = paged_from_bhsd(d, g_block_size, k, v, &p, seqs);
    for (int b = 0; b <= d->B && rc == 0; b++) {
        q_start[b] = b * d->T;
        if (b < d->B)
            ptrs[b] = &seqs[b];
    }
    if (rc == 0) {
        bhtd_to_rows(q, qr, d->B, d->H, d->T, d->D, 0);
        rc = paged_attention_cpu(kernel, &p, 0, d->H, d->scale, d->causal, d->B, ptrs, q_start, qr, orow);
    }
    if (rc == 0)
        bhtd_to_rows(out, orow, d->B, d->H, d->T, d->D, 1);
    for (int b = 0; b < d->B && seqs && p.num_blocks; b++)
        paged_seq_free(&p, &seqs[b]);
    paged_pool_free(&p);
    mem_free(seqs), mem_free(ptrs), mem_free(q_start), mem_free(qr), mem_free(orow);
    return rc;
}

/* The reference: chapter 04's contiguous cache, its reference decode kernel for T = 1 and chapter
 * 03's flash attention over the cache for T > 1. */
static int run_ref(int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    (void)kernel;
    KvCache c;
    if (kvcache_create(&c, 1, d->B, d->Hkv, d->S > 0 ? d->S : 1, d->D, KV_F32) != 0)
        return -1;
    const size_t D = (size_t)d->D, S = (size_t)d->S;
    float *kr = mem_alloc((size_t)d->Hkv * D * sizeof(float), "one token's K");
    float *vr = mem_alloc((size_t)d->Hkv * D * sizeof(float), "one token's V");
    int *lens = mem_alloc((size_t)d->B * sizeof(int), "lengths");
    int rc = !kr || !vr || !lens ? -1 : 0;
    for (int b = 0; b < d->B && rc == 0; b++) {
        for (size_t t = 0; t < S; t++) {
            for (int h = 0; h < d->Hkv; h++) {
                memcpy(kr + h * D, k + (((size_t)b * d->Hkv + h) * S + t) * D, D * sizeof(float));
                memcpy(vr + h * D, v + (((size_t)b * d->Hkv + h) * S + t) * D, D * sizeof(float));
            }
            kvcache_write(&c, 0, b, (int)t, 1, kr, vr);
        }
        lens[b] = d->S;
    }
    if (rc == 0)
        rc = kvcache_attention(&c, 0, d->H, d->T, d->scale, d->causal, d->B, NULL, lens, q, 1, out);
    mem_free(kr), mem_free(vr), mem_free(lens);
    kvcache_free(&c);
    return rc;
}

#if HAVE_CUDA
/* On the GPU: the same shuffled placement, scattered on the device (paged.cu). */
static int run_cuda(int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    const int bs = g_block_size;
    const size_t blocks = (size_t)d->B * (((size_t)d->S + (size_t)bs - 1) / (size_t)bs);
    if (blocks > (size_t)INT_MAX)
        return error_set("B = %d sequences of S = %d keys take %zu blocks of %d tokens, more than a pool can have "
                         "(%d): give a larger --block-size",
                         d->B, d->S, blocks, bs, INT_MAX);
    const int n_blocks = blocks > 0 ? (int)blocks : 1;
    int *perm = malloc((size_t)n_blocks * sizeof(int));
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    Rng rng;
    rng_seed(&rng, g_shuffle_seed);
    for (int i = n_blocks - 1; i > 0; i--) {
        const int j = (int)rng_below(&rng, (uint32_t)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    const int rc = paged_attention_cuda_bhsd(kernel, d->B, d->H, d->Hkv, d->T, d->S, d->D, bs, perm, d->scale,
                                             d->causal, q, k, v, out);
    free(perm);
    return rc;
}
#endif

static const AttnImpls IMPLS = {
    .prog = PROG,
    .ref = run_ref, /* chapter 04's contiguous cache */
    .ref_is_cpu1 = 0,
    .cpu = run_cpu,
    .cpu_name = paged_cpu_kernel_name,
    .n_cpu = PAGED_CPU_KERNELS,
#if HAVE_CUDA
    .cuda = run_cuda,
    .cuda_name = paged_cuda_kernel_name,
    .n_cuda = PAGED_CUDA_KERNELS,
#endif
    .heads = ATTN_HEADS_DIVIDE,
};

/* ==== the model ==================================================================================== */

static void load_model(const char *checkpoint, Model *m)
{
    if (model_load_or_builtin(checkpoint, m) != 0)
        die_with_error();
}


/* ==== generate ===================================================================================== */

static int cmd_generate(int argc, char **argv)
{
    const char *checkpoint = NULL, *prompt_text = "1", *device = "auto", *tokenizer = NULL, *prompt_words = NULL;
    int max_new = 64, seed = 42, kernel = 0, block_size = 16, num_blocks = 0, n_samples = 1, shuffle = 0;
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
        {.name = "block-size", .kind = ARG_INT, .dest = &block_size, .metavar = "B",
         .help = "tokens per KV block (default 16)", .min = 1, .max = 4096},
        {.name = "num-blocks", .kind = ARG_INT, .dest = &num_blocks, .metavar = "N",
         .help = "blocks in the pool (default: just enough for the request)", .min = 1, .max = 1 << 28},
        {.name = "n-samples", .kind = ARG_INT, .dest = &n_samples, .metavar = "K",
         .help = "K samples of the prompt, forked after one prefill; sample i uses seed + i (default 1)", .min = 1,
         .max = 4096},
        {.name = "temperature", .kind = ARG_DOUBLE, .dest = &temperature, .metavar = "T",
         .help = "0 = greedy (default); >= 1.2e-38 samples from softmax(logits / T)", .min = 0, .max = 100},
        {.name = "seed", .kind = ARG_INT, .dest = &seed, .metavar = "S", .help = "sampling seed (default 42)", .min = 0,
         .max = 2147483647},
        {.name = "shuffle", .kind = ARG_INT, .dest = &shuffle, .metavar = "S",
         .help = "hand out the pool's blocks in an order shuffled with seed S (default 0: in order)", .min = 0,
         .max = 2147483647},
        {.name = "kernel", .kind = ARG_INT, .dest = &kernel, .metavar = "N",
         .help = "CPU attention kernel: 1 = ref, 2 = fast (default)", .min = 1, .max = PAGED_CPU_KERNELS},
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "auto or cpu; generation runs on the CPU in this chapter (the GPU kernels: attn, verify, bench)"},
    };
    ArgCommand cmd = {PROG " generate", "[options]",
                      "Generates token ids with a Llama-style model (llama2.c's run.c semantics) through a paged KV\n"
                      "cache. Prints the generated ids (prompt excluded), one line per sample; the pool's use goes to\n"
                      "stderr. Sample i gives the tokens of '04_kvcache generate --seed S+i'. With --tokenizer: text\n"
                      "(the prompt, then each sample's continuation after a '--- sample i ---' line when K > 1),\n"
                      "each sample stopping at BOS or EOS.",
                      specs, (int)(sizeof specs / sizeof specs[0])};
    args_parse_or_exit(&cmd, argc, argv);
    if (strcmp(device, "cuda") == 0)
        die("--device cuda: chapter 05 generates on the CPU; its GPU kernels run in 'attn', 'verify' and 'bench' "
            "(chapter 04 generates on the GPU)");
    int *prompt = NULL, n_prompt = 0;
    if (model_check_temperature(temperature) != 0 || token_ids_parse(prompt_text, &prompt, &n_prompt) != 0)
        die_with_error();
    Model m;
    load_model(checkpoint, &m);
    Tokenizer tok;
    const int text = tokenizer_setup(tokenizer, prompt_words, m.c.vocab_size, m.c.seq_len, &tok, &prompt, &n_prompt);
    if (text < 0)
        die_with_error();
    PagedGenOptions o = {max_new, (float)temperature, (uint64_t)seed, n_samples, block_size, num_blocks, kernel,
                         (uint64_t)shuffle, text};
    /* up to 4096 samples x 2^24 tokens: counted against the memory budget like the pool */
    int *out = mem_alloc((size_t)n_samples * ((size_t)max_new + 1) * sizeof(int), "the generated tokens");
    if (!out)
        die_with_error();
    PagedGenStats st = {0};
    const double t0 = timer_now();
    if (paged_generate(&m, prompt, n_prompt, &o, out, &st) != 0)
        die_with_error();
    const double secs = timer_now() - t0;
    long n_gen = 0;
    for (int s = 0; s < n_samples; s++)
        for (int i = 0; i < max_new && out[(size_t)s * max_new + i] >= 0; i++)
            n_gen++;
    for (int s = 0; s < n_samples; s++) {
        if (text) {
            char *str = tokenizer_decode_generation(&tok, prompt, n_prompt, out + (size_t)s * max_new, max_new,
                                                    n_samples == 1);
            if (n_samples > 1 && s == 0) {
                char *p = tokenizer_decode_generation(&tok, prompt, n_prompt, NULL, 0, 1);
                printf("%s\n", p);
                free(p);
            }
            if (n_samples > 1)
                printf("--- sample %d ---\n", s);
            printf("%s\n", str);
            free(str);
            continue;
        }
        for (int i = 0; i < max_new; i++)
            printf(i ? " %d" : "%d", out[(size_t)s * max_new + i]);
        printf("\n");
    }
    stdout_flush_or_die(); /* the samples are out before the pool line on stderr, or exit 1 */
    char b1[32], b2[32];
    fprintf(stderr,
            "%s generate: %d prompt + %d new tokens x %d sample%s on cpu, %s: %.2f s, %.1f tokens/s; pool: %d blocks "
            "of %d tokens (%s each), peak %d in use (%s), %zu copy-on-write copies\n",
            PROG, n_prompt, max_new, n_samples, n_samples > 1 ? "s" : "", checkpoint ? checkpoint : "built-in random model",
            secs, (double)n_gen / (secs > 0 ? secs : 1e-9), st.num_blocks, block_size,
            format_bytes((double)st.block_bytes, b1, sizeof b1), st.peak_blocks,
            format_bytes((double)st.block_bytes * st.peak_blocks, b2, sizeof b2), st.cow_copies);
    tokenizer_free(&tok);
    mem_free(out), free(prompt);
    model_free(&m);
    return 0;
}

/* ==== the lesson =================================================================================== */

/* (a) block tables over the pool, drawn */
static void draw_pool(const PagedPool *p, PagedSeq *const *seqs, const char *names, int n_seqs)
{
    const int bs = p->block_size;
    for (int id = 0; id < p->num_blocks; id++) {
        printf("     #%02d |", id);
        for (int slot = 0; slot < bs; slot++) {
            char cell[32] = "";
            for (int s = 0; s < n_seqs; s++)
                for (int b = 0; b < seqs[s]->n_blocks; b++)
                    if (seqs[s]->blocks[b] == id && b * bs + slot < seqs[s]->len) {
                        char one[24];
                        snprintf(one, sizeof one, "%s%c%d", cell[0] ? "/" : "", names[s], b * bs + slot);
                        strncat(cell, one, sizeof cell - strlen(cell) - 1);
                    }
            printf(" %-7s", cell[0] ? cell : ".");
        }
        printf("| %s\n", p->ref[id] == 0 ? "free" : p->ref[id] == 1 ? "ref 1" : "ref 2, shared");
    }
    for (int s = 0; s < n_seqs; s++) {
        printf("     table %c (%2d tokens):", names[s], seqs[s]->len);
        for (int b = 0; b < seqs[s]->n_blocks; b++)
            printf(" %d->#%02d", b, seqs[s]->blocks[b]);
        printf("\n");
    }
}

static void lesson_picture(void)
{
    PagedPool p;
    if (paged_pool_create(&p, 1, 1, 1, 4, 10) != 0)
        die_with_error();
    paged_pool_shuffle(&p, 7);
    PagedSeq a, b, c;
    paged_seq_init(&a), paged_seq_init(&b), paged_seq_init(&c);
    PagedSeq *all[3] = {&a, &b, &c};
    /* two requests arrive and grow a token at a time, interleaved, as a server runs them */
    for (int step = 0; step < 9; step++) {
        if (step < 6 && paged_seq_append(&p, &a, 1) != 0)
            die_with_error();
        if (paged_seq_append(&p, &b, 1) != 0)
            die_with_error();
    }
    printf("1. A pool of 10 blocks of 4 token slots, handed out in shuffled order. Request A holds 6 tokens,\n"
           "   request B 9; they grew one token at a time, side by side. Each cell is a slot: the owner and the\n"
           "   token's position, '.' for an empty slot.\n\n");
    draw_pool(&p, all, "AB", 2);
    if (paged_seq_fork(&p, &a, &c) != 0)
        die_with_error();
    printf("\n   Fork: C = A (a second sample of A's prompt). C's table points at A's blocks; nothing is copied:\n\n");
    draw_pool(&p, all, "ABC", 3);
    if (paged_seq_append(&p, &c, 1) != 0 || paged_seq_append(&p, &a, 1) != 0)
        die_with_error();
    printf("\n   C and then A add a token. C's first write goes to the shared, partly filled block: C gets a copy\n"
           "   of its two filled slots (copy-on-write) and writes there; A's block is its own again.\n\n");
    draw_pool(&p, all, "ABC", 3);
    if (paged_check(&p, all, 3) != 0)
        die_with_error();
    for (int s = 0; s < 3; s++)
        paged_seq_free(&p, all[s]);
    printf("\n   Allocator counters: %zu allocations, %zu releases, %zu copy-on-write; after freeing all: %d of %d "
           "free.\n\n",
           p.n_allocs, p.n_releases, p.n_cow_copies, p.n_free, p.num_blocks);
    paged_pool_free(&p);
}

/* (b) memory waste: contiguous reservations against paging */
typedef struct {
    const char *name;
    int *prompt, *output;
    int n;
} Workload;

static int clampi(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }

/* skewed: lognormal lengths with the means of ShareGPT in the vLLM paper (161 prompt, 338 output
 * tokens: medians 98 and 205 with sigma 1); uniform: both uniform in 1..1024. */
static Workload make_workload(int skewed, int n, int max_seq, uint64_t seed)
{
    Workload w = {skewed ? "skewed" : "uniform", malloc((size_t)n * sizeof(int)), malloc((size_t)n * sizeof(int)), n};
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = 0; i < n; i++) {
        int pr, out;
        if (skewed) {
            pr = (int)lrint(98.0 * exp(rng_normal(&rng)));
            out = (int)lrint(205.0 * exp(rng_normal(&rng)));
        } else {
            pr = 1 + (int)rng_below(&rng, 1024);
            out = 1 + (int)rng_below(&rng, 1024);
        }
        pr = clampi(pr, 1, max_seq - 1);
        out = clampi(out, 1, max_seq - pr);
        w.prompt[i] = pr, w.output[i] = out;
    }
    return w;
}

/* The share of allocated KV memory that holds tokens, averaged over every decode step of every
 * request (a server's snapshot at a random moment), and how many requests fit in `budget`
 * tokens of memory held at their final lengths. Contiguous schemes allocate a chapter 04 cache
 * per request (max_seq = the reservation) and read kvcache_bytes; paging drives a pool and
 * reads its count of blocks in use. Scheme: -1 = reserve max_seq, 0 = reserve the request's own
 * final length, bs > 0 = paging with that block size. */
typedef struct {
    double used_frac;
    int fit;
} WasteResult;

static WasteResult measure_waste(const Workload *w, int scheme, int max_seq, int budget_tokens)
{
    const size_t tok_bytes = kvcache_bytes_per_token(1, 1, 1, KV_F32); /* a 1-layer, 1-head, D = 1 cache */
    double held = 0.0, alloc = 0.0;
    WasteResult r = {0, 0};
    if (scheme <= 0) {
        for (int i = 0; i < w->n; i++) {
            KvCache c;
            const int reserve = scheme < 0 ? max_seq : w->prompt[i] + w->output[i];
            if (kvcache_create(&c, 1, 1, 1, reserve, 1, KV_F32) != 0)
                die_with_error();
            for (int s = 1; s <= w->output[i]; s++)
                held += (double)(w->prompt[i] + s) * tok_bytes, alloc += (double)kvcache_bytes(&c);
            kvcache_free(&c);
        }
        long sum = 0;
        for (int i = 0; i < w->n; i++) {
            sum += scheme < 0 ? max_seq : w->prompt[i] + w->output[i];
            if (sum > budget_tokens)
                break;
            r.fit++;
        }
    } else {
        const int bs = scheme;
        PagedPool p;
        if (paged_pool_create(&p, 1, 1, 1, bs, (max_seq + bs - 1) / bs) != 0)
            die_with_error();
        const double block_bytes = (double)paged_block_bytes(&p);
        PagedSeq s;
        paged_seq_init(&s);
        for (int i = 0; i < w->n; i++) {
            if (paged_seq_append(&p, &s, w->prompt[i]) != 0)
                die_with_error();
            for (int t = 1; t <= w->output[i]; t++) {
                if (paged_seq_append(&p, &s, 1) != 0)
                    die_with_error();
                held += (double)s.len * tok_bytes, alloc += paged_pool_used(&p) * block_bytes;
            }
            paged_seq_free(&p, &s);
        }
        paged_pool_free(&p);
        /* fit: a pool of the budget's blocks, each request appended at its final length */
        if (paged_pool_create(&p, 1, 1, 1, bs, budget_tokens / bs) != 0)
            die_with_error();
        PagedSeq *seqs = calloc(w->n > 0 ? (size_t)w->n : 1, sizeof(PagedSeq));
        for (int i = 0; i < w->n; i++) {
            const int rc = paged_seq_append(&p, &seqs[i], w->prompt[i] + w->output[i]);
            if (rc == PAGED_EXHAUSTED)
                break;
            if (rc != 0)
                die_with_error();
            r.fit++;
        }
        for (int i = 0; i < w->n; i++)
            paged_seq_free(&p, &seqs[i]);
        if (p.n_free != p.num_blocks)
            die("the pool did not return to full after the waste measurement");
        free(seqs);
        paged_pool_free(&p);
    }
    r.used_frac = held / alloc;
    return r;
}

static void lesson_waste(int max_seq, char *dat, size_t dat_len)
{
    enum { N_REQ = 2000 };
    const int budget = 64 * max_seq; /* the memory of 64 max_seq reservations */
    const int sizes[] = {1, 8, 16, 32, 64, 128};
    paths_in_build(dat, dat_len, "bench", PROG "_waste.dat");
    Tsv tsv;
    if (tsv_open(&tsv, "/dev/null", dat) != 0)
        die_with_error();
    tsv_header(&tsv, "workload\tscheme\tblock_size\tused_pct\twaste_pct\trequests_fit\tlabel");
    printf("2. Memory waste. %d requests per workload, max_seq %d. 'skewed': lognormal prompt and output lengths\n"
           "   with ShareGPT's means (161 and 338 tokens, medians 98 and 205, sigma 1); 'uniform': both uniform in\n"
           "   1..1024. 'used' = KV memory holding tokens / KV memory allocated, averaged over every decode step\n"
           "   of every request (the allocator's counters: chapter 04 caches' bytes, the pool's blocks in use).\n"
           "   'fit' = requests held at once at their final lengths in the memory of 64 max_seq reservations.\n\n"
           "   %-40s %14s %14s %14s %14s\n",
           N_REQ, max_seq, "scheme", "skewed used", "skewed fit", "uniform used", "uniform fit");
    Workload wl[2] = {make_workload(1, N_REQ, max_seq, 2023), make_workload(0, N_REQ, max_seq, 2024)};
    double mean_pr = 0, mean_out = 0;
    for (int i = 0; i < N_REQ; i++)
        mean_pr += wl[0].prompt[i], mean_out += wl[0].output[i];
    for (int s = -1; s <= (int)(sizeof sizes / sizeof sizes[0]); s++) {
        const int scheme = s < 0 ? -1 : s == 0 ? 0 : sizes[s - 1];
        char name[64];
        if (scheme < 0)
            snprintf(name, sizeof name, "(a) contiguous, reserve max_seq");
        else if (scheme == 0)
            snprintf(name, sizeof name, "(b) contiguous, reserve own final length");
        else
            snprintf(name, sizeof name, "(c) paged, block size %d", scheme);
        WasteResult r[2];
        for (int k = 0; k < 2; k++) {
            r[k] = measure_waste(&wl[k], scheme, max_seq, budget);
            char label[16];
            snprintf(label, sizeof label, scheme < 0 ? "max_seq" : scheme == 0 ? "own" : "bs%d", scheme);
            tsv_row(&tsv, "%s\t%s\t%d\t%.2f\t%.2f\t%d\t%s", wl[k].name,
                    scheme < 0 ? "max_seq" : scheme == 0 ? "own_length" : "paged", scheme, 100.0 * r[k].used_frac,
                    100.0 * (1.0 - r[k].used_frac), r[k].fit, label);
        }
        printf("   %-40s %13.1f%% %14d %13.1f%% %14d\n", name, 100.0 * r[0].used_frac, r[0].fit, 100.0 * r[1].used_frac,
               r[1].fit);
    }
    tsv_close(&tsv);
    printf("\n   (skewed sample: mean prompt %.0f, mean output %.0f tokens after clipping to max_seq.)\n"
           "   The vLLM paper measured 20.4%% - 38.2%% of KV memory holding tokens in earlier systems, and under\n"
           "   4%% waste with paging. Reserving max_seq is (a); even knowing each request's final length (b)\n"
           "   wastes the slots reserved for tokens not generated yet; paging wastes only the empty slots of each\n"
           "   sequence's last block, at most block_size - 1.\n\n",
           mean_pr / N_REQ, mean_out / N_REQ);
    for (int k = 0; k < 2; k++)
        free(wl[k].prompt), free(wl[k].output);
}

/* (c) what fork and copy-on-write save for n samples of one prompt */
static void lesson_fork(const Model *m)
{
    const int bs = 16, prompts[2] = {512, 100}, new_tokens = 128, ns[] = {1, 2, 4, 8, 16};
    PagedPool real;
    if (paged_pool_create(&real, m->c.n_layers, m->c.n_kv_heads, model_head_size(&m->c), bs, 1) != 0)
        die_with_error();
    const size_t block_bytes = paged_block_bytes(&real);
    paged_pool_free(&real);
    char b1[32], b2[32];
    printf("3. n samples of one prompt (parallel sampling), %d new tokens each, block size %d. Without sharing,\n"
           "   every sample holds its own copy of the prompt's K/V; forked, they share its blocks and copy only a\n"
           "   partly filled last block on its first write. Blocks counted by the pool at its peak; bytes for\n"
           "   this chapter's model (%s per block).\n\n   %7s %4s %16s %16s %8s %6s %12s\n",
           new_tokens, bs, format_bytes((double)block_bytes, b1, sizeof b1), "prompt", "n", "blocks, no share",
           "blocks, forked", "saved", "COW", "forked KV");
    for (int pi = 0; pi < 2; pi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            const int n = ns[ni], P = prompts[pi];
            int peak[2];
            size_t cow = 0;
            for (int share = 0; share <= 1; share++) {
                PagedPool p;
                if (paged_pool_create(&p, 1, 1, 1, bs, n * ((P + new_tokens + bs - 1) / bs + 1)) != 0)
                    die_with_error();
                PagedSeq *s = calloc((size_t)n, sizeof(PagedSeq));
                for (int i = 0; i < n; i++) {
                    int rc = share && i > 0 ? paged_seq_fork(&p, &s[0], &s[i]) : paged_seq_append(&p, &s[i], P);
                    if (rc != 0)
                        die_with_error();
                }
                for (int t = 0; t < new_tokens; t++)
                    for (int i = 0; i < n; i++)
                        if (paged_seq_append(&p, &s[i], 1) != 0)
                            die_with_error();
                peak[share] = p.peak_used;
                if (share)
                    cow = p.n_cow_copies;
                for (int i = 0; i < n; i++)
                    paged_seq_free(&p, &s[i]);
                free(s);
                paged_pool_free(&p);
            }
            printf("   %7d %4d %16d %16d %7.1f%% %6zu %12s\n", P, n, peak[0], peak[1], 100.0 * (peak[0] - peak[1]) / peak[0],
                   cow, format_bytes((double)peak[1] * block_bytes, b2, sizeof b2));
        }
    printf("\n   A 100-token prompt ends inside a block (100 = 6 x 16 + 4): each of the other n - 1 samples copies\n"
           "   that block once (COW). 'generate --n-samples K' runs exactly this through the model.\n\n");
}

/* (d) decode speed: paged by block size against chapter 04's contiguous cache */
typedef struct {
    const PagedPool *p;
    PagedSeq **seqs;
    const int *q_start;
    const KvCache *c;
    const int *lens;
    int H;
    const float *q;
    float *out;
    int rc;
} DecodeRun;

static int n_decode_seqs; /* the batch of the decode being timed */

static void run_paged(void *ctx)
{
    DecodeRun *r = ctx;
    r->rc = paged_attention_fast(r->p, 0, r->H, 1.0f / sqrtf((float)r->p->head_dim), 1, n_decode_seqs, r->seqs,
                                 r->q_start, r->q, r->out);
}

static void run_contig(void *ctx)
{
    DecodeRun *r = ctx;
    r->rc = kvcache_decode_split(r->c, 0, r->H, 1.0f / sqrtf((float)r->c->head_dim), n_decode_seqs, NULL, r->lens,
                                 r->q, r->out, 0);
}

/* Rows for the caches from a pool of random rows (the values do not change the speed). */
static const float *row_pool(int Hkv, int D)
{
    static float *pool;
    static size_t have;
    const size_t need = (size_t)1024 * Hkv * D;
    if (have < need) {
        free(pool);
        pool = malloc(need * sizeof(float));
        Rng rng;
        rng_seed(&rng, 11);
        for (size_t i = 0; i < need; i++)
            pool[i] = rng_normal(&rng);
        have = need;
    }
    return pool;
}

typedef struct {
    double contig_s, paged_s;
    double bytes;
} DecodeTiming;

/* Decode of B sequences of L tokens: chapter 04's split kernel over a contiguous cache, and the
 * paged fast kernel with block size bs; median of `repeats` cold-cache runs. bs = 0 times only
 * the contiguous cache. Placement: in order (each sequence's blocks consecutive, as after
 * prefills into an empty pool) or shuffled (the free list shuffled and the sequences growing
 * side by side: every block anywhere, as in a pool after hours of churn). */
static DecodeTiming time_decode(int B, int H, int Hkv, int L, int D, int bs, int repeats, int contig, int shuffled)
{
    DecodeTiming out = {NAN, NAN, 2.0 * B * Hkv * (double)L * D * sizeof(float)};
    const float *rows = row_pool(Hkv, D);
    float *q = mem_alloc_or_die((size_t)B * H * D * sizeof(float), "q");
    float *o = mem_alloc_or_die((size_t)B * H * D * sizeof(float), "out");
    for (size_t i = 0; i < (size_t)B * H * D; i++)
        q[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
    n_decode_seqs = B;
    if (contig) {
        KvCache c;
        if (kvcache_create(&c, 1, B, Hkv, L, D, KV_F32) != 0)
            die_with_error();
        int *lens = mem_alloc_or_die((size_t)B * sizeof(int), "lens");
        for (int b = 0; b < B; b++) {
            lens[b] = L;
            for (int t = 0; t < L; t++) {
                const float *r = rows + (size_t)((t * 7 + b * 13) % 1024) * Hkv * D;
                kvcache_write(&c, 0, b, t, 1, r, r);
            }
        }
        DecodeRun run = {.c = &c, .lens = lens, .H = H, .q = q, .out = o};
        BenchTiming t = bench_time_setup(run_contig, cache_flush, &run, 1, repeats, 2.0);
        if (run.rc != 0)
            die_with_error();
        out.contig_s = t.median_s;
        mem_free(lens);
        kvcache_free(&c);
    }
    if (bs > 0) {
        PagedPool p;
        if (paged_pool_create(&p, 1, Hkv, D, bs, B * ((L + bs - 1) / bs)) != 0)
            die_with_error();
        if (shuffled)
            paged_pool_shuffle(&p, 99);
        PagedSeq *seqs = mem_alloc_or_die((size_t)B * sizeof(PagedSeq), "sequences");
        PagedSeq **ptrs = mem_alloc_or_die((size_t)B * sizeof(PagedSeq *), "sequence list");
        int *q_start = mem_alloc_or_die((size_t)(B + 1) * sizeof(int), "query starts");
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
                    const float *r = rows + (size_t)(((t + i) * 7 + b * 13) % 1024) * Hkv * D;
                    paged_write(&p, &seqs[b], 0, t + i, 1, r, r);
                }
            }
        DecodeRun run = {.p = &p, .seqs = ptrs, .q_start = q_start, .H = H, .q = q, .out = o};
        BenchTiming t = bench_time_setup(run_paged, cache_flush, &run, 1, repeats, 2.0);
        if (run.rc != 0)
            die_with_error();
        out.paged_s = t.median_s;
        for (int b = 0; b < B; b++)
            paged_seq_free(&p, &seqs[b]);
        mem_free(seqs), mem_free(ptrs), mem_free(q_start);
        paged_pool_free(&p);
    }
    mem_free(q), mem_free(o);
    return out;
}

static void lesson_speed(void)
{
    const int B = 8, H = 8, Hkv = 2, L = 8192, D = 128, sizes[] = {1, 16, 128};
    const Roofline *roof = roofline_get();
    char b1[32];
    DecodeTiming c = time_decode(B, H, Hkv, L, D, 0, 5, 1, 0);
    printf("4. Decode attention through the tables against chapter 04's contiguous cache: B = %d sequences of\n"
           "   L = %d tokens, H = %d, Hkv = %d, D = %d (%s of K and V, caches flushed before each run).\n"
           "   'in order': each sequence's blocks consecutive in the pool; 'shuffled': every block anywhere.\n\n"
           "   %-26s %10s %8s %12s\n   %-26s %7.2f ms %8.1f %11s\n",
           B, L, H, Hkv, D, format_bytes(c.bytes, b1, sizeof b1), "cache", "time", "GB/s", "vs contig.",
           "contiguous (ch04 split)", c.contig_s * 1e3, c.bytes / c.contig_s / 1e9, "1.00");
    for (int shuffled = 0; shuffled <= 1; shuffled++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            DecodeTiming t = time_decode(B, H, Hkv, L, D, sizes[i], 5, 0, shuffled);
            char name[40];
            snprintf(name, sizeof name, "paged, bs %d, %s", sizes[i], shuffled ? "shuffled" : "in order");
            printf("   %-26s %7.2f ms %8.1f %11.2f\n", name, t.paged_s * 1e3, t.bytes / t.paged_s / 1e9,
                   c.contig_s / t.paged_s);
        }
    const double scattered = roofline_scattered_read_gbs((size_t)16 * D * sizeof(float));
    printf("\n   'vs contig.' > 1 is faster. This machine reads DRAM at %.1f GB/s as one stream, and at %.1f GB/s in\n"
           "   8 KiB pieces taken in random order (one block of 16 tokens of one kv head): scattered blocks\n"
           "   cost a CPU its prefetcher; a GPU hides the latency with thousands of loads in flight. Tiny\n"
           "   blocks also cost a table lookup and a small matrix product every few keys. 'bench' sweeps more.\n\n",
           roof->dram_gbs, scattered);
}

/* (e) the same tokens as chapter 04 */
static void lesson_tokens(const Model *m)
{
    enum { N_PROMPT = 24, N_NEW = 48 };
    int prompt[N_PROMPT], ref[N_NEW], got[N_NEW];
    for (int i = 0; i < N_PROMPT; i++)
        prompt[i] = (i * 29 + 3) % m->c.vocab_size;
    GenOptions o4 = {N_NEW, 0.0f, 0, 1, KV_F32, 2, 0, 0};
    if (kvcache_generate(m, prompt, N_PROMPT, &o4, ref, NULL) != 0)
        die_with_error();
    printf("5. Greedy generation, %d tokens after a %d-token prompt, against chapter 04 (contiguous cache):\n\n",
           N_NEW, N_PROMPT);
    const int sizes[] = {1, 8, 16, 32};
    for (int i = 0; i < 4; i++) {
        PagedGenOptions o = {N_NEW, 0.0f, 0, 1, sizes[i], 0, 2, 77, 0};
        PagedGenStats st;
        if (paged_generate(m, prompt, N_PROMPT, &o, got, &st) != 0)
            die_with_error();
        printf("   block size %2d, shuffled blocks: %s tokens (%d blocks)\n", sizes[i],
               memcmp(ref, got, sizeof ref) == 0 ? "the same" : "DIFFERENT", st.peak_blocks);
    }
    printf("\n");
}

static int cmd_lesson(int argc, char **argv)
{
    const char *device = "auto";
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "where to run (the lesson measures the CPU; bench --device cuda times the GPU kernels)"},
    };
    ArgCommand cmd = {PROG, "[generate|attn|verify|bench] [options]",
                      "Chapter 05: PagedAttention. Without a subcommand: the lesson.\n"
                      "Subcommands (each takes --help):\n"
                      "  generate  token ids in, token ids out, through a paged cache (--n-samples: forked samples)\n"
                      "  attn      attention on .npy files, K/V scattered into a shuffled block table\n"
                      "  verify    every kernel against chapter 04 for block sizes 1, 8, 16, 32 and mixed batches\n"
                      "  bench     decode GB/s by block size against chapter 04's contiguous cache",
                      specs, 1};
    args_parse_or_exit(&cmd, argc, argv);
    Device dev;
    if (device_resolve(device, &dev) != 0)
        die_with_error();
    const Roofline *roof = roofline_get();
    Model m;
    load_model(NULL, &m);
    printf("Chapter 05: PagedAttention\n==========================\n\n"
           "Chapter 04 gave every sequence max_seq positions of cache up front. A server does not know how long\n"
           "a request will run, so most of that reservation stays empty, and reservations of different sizes\n"
           "fragment what is left. Paging cuts the cache into blocks of a few tokens kept in one pool; each\n"
           "sequence has a block table (logical block -> physical block), takes a block when its last one is\n"
           "full, and the attention kernel reads K and V through the table, in place.\n\n"
           "Machine: %s; measured fp32 FMA peak %.1f GFLOP/s (%s), DRAM read %.1f GB/s.\n\n",
           roofline_machine(), roof->fma_gflops, roof->fma_what, roof->dram_gbs);
    lesson_picture();
    char dat[4096];
    lesson_waste(m.c.seq_len, dat, sizeof dat);
    plot_show(PROG, "waste", dat, 1, stdout, "   ", "\n\n");
    lesson_fork(&m);
    lesson_speed();
    lesson_tokens(&m);
    printf("Take-away: paging turns the cache into a pool of small blocks: a sequence wastes at most one block's\n"
           "empty slots, requests of any length share one pool, and samples of one prompt share its blocks.\n"
           "The attention kernel pays one table lookup per block. Chapter 06 schedules many requests over this\n"
           "pool at every step (continuous batching).\n");
    (void)dev;
    model_free(&m);
    return 0;
}

/* ==== verify ======================================================================================= */

/* A batch of sequences of different lengths and query counts in one call (decode rows and prefill
 * chunks mixed), each kernel against the paged reference, which the grid checks against ch04. */
static void verify_mixed(VerifyTally *tally, const char *device, int only_kernel, int have_gpu, int bs, uint64_t seed)
{
    const int H = 8, Hkv = 2, D = 64, n_seq = 5;
    const int lens[5] = {1, bs, bs + 1, 3 * bs - 1 > 0 ? 3 * bs - 1 : 1, 700};
    const int Ts[5] = {1, 1, 2, 1, 17};
    PagedPool p;
    int total_blocks = 0;
    for (int i = 0; i < n_seq; i++)
        total_blocks += (lens[i] + bs - 1) / bs;
    if (paged_pool_create(&p, 1, Hkv, D, bs, total_blocks) != 0)
        die_with_error();
    const size_t pool_floats = (size_t)p.num_blocks * Hkv * bs * D;
    for (size_t i = 0; i < pool_floats; i++)
        p.k[i] = p.v[i] = NAN; /* any slot read that should not be turns the output NaN */
    paged_pool_shuffle(&p, seed);
    PagedSeq seqs[5], *ptrs[5];
    int q_start[6] = {0};
    Rng rng;
    rng_seed(&rng, seed);
    float *kv = malloc((size_t)Hkv * D * sizeof(float));
    /* grow them side by side so that their blocks interleave */
    for (int i = 0; i < n_seq; i++)
        paged_seq_init(&seqs[i]), ptrs[i] = &seqs[i], q_start[i + 1] = q_start[i] + Ts[i];
    for (int t = 0; t < 700; t++)
        for (int i = 0; i < n_seq; i++)
            if (t < lens[i]) {
                if (paged_seq_append(&p, &seqs[i], 1) != 0)
                    die_with_error();
                for (int j = 0; j < Hkv * D; j++)
                    kv[j] = rng_normal(&rng);
                paged_write(&p, &seqs[i], 0, t, 1, kv, kv);
            }
    const size_t n = (size_t)q_start[n_seq] * H * D;
    float *q = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float)), *out = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        q[i] = rng_normal(&rng);
    const float scale = 1.0f / sqrtf((float)D);
    for (int causal = 0; causal <= 1; causal++) {
        if (paged_attention_ref(&p, 0, H, scale, causal, n_seq, ptrs, q_start, q, ref) != 0)
            die_with_error();
        for (int di = 0; di < 2; di++) {
            const Device dev = di ? DEVICE_CUDA : DEVICE_CPU;
            if ((dev == DEVICE_CUDA && (!have_gpu || strcmp(device, "cpu") == 0)) ||
                (dev == DEVICE_CPU && strcmp(device, "cuda") == 0))
                continue;
            const int n_k = dev == DEVICE_CPU ? PAGED_CPU_KERNELS : attn_impl_count(&IMPLS, DEVICE_CUDA);
            for (int kern = dev == DEVICE_CPU ? 2 : 1; kern <= n_k; kern++) {
                if (only_kernel && kern != only_kernel)
                    continue;
                memset(out, 0xff, n * sizeof(float));
                int rc = -1;
                if (dev == DEVICE_CPU) {
                    rc = paged_attention_cpu(kern, &p, 0, H, scale, causal, n_seq, ptrs, q_start, q, out);
                }
#if HAVE_CUDA
                else {
                    int max_blocks = 1, row_seq[64], tables[5 * 700];
                    for (int i = 0; i < n_seq; i++)
                        max_blocks = seqs[i].n_blocks > max_blocks ? seqs[i].n_blocks : max_blocks;
                    for (int i = 0; i < n_seq; i++) {
                        for (int b = 0; b < max_blocks; b++)
                            tables[i * max_blocks + b] = b < seqs[i].n_blocks ? seqs[i].blocks[b] : 0;
                        for (int r = q_start[i]; r < q_start[i + 1]; r++)
                            row_seq[r] = i;
                    }
                    const size_t pool_bytes = pool_floats * sizeof(float);
                    float *dk = cuda_alloc(pool_bytes), *dv = cuda_alloc(pool_bytes);
                    float *dq = cuda_alloc(n * sizeof(float)), *dout = cuda_alloc(n * sizeof(float));
                    int *dt = cuda_alloc((size_t)n_seq * max_blocks * sizeof(int)), *dl = cuda_alloc(sizeof lens);
                    int *dqs = cuda_alloc(sizeof q_start), *drs = cuda_alloc((size_t)q_start[n_seq] * sizeof(int));
                    cuda_upload(dk, p.k, pool_bytes), cuda_upload(dv, p.v, pool_bytes), cuda_upload(dq, q, n * sizeof(float));
                    cuda_upload(dt, tables, (size_t)n_seq * max_blocks * sizeof(int)), cuda_upload(dl, lens, sizeof lens);
                    cuda_upload(dqs, q_start, sizeof q_start), cuda_upload(drs, row_seq, (size_t)q_start[n_seq] * sizeof(int));
                    PagedCudaBatch b = {dk, dv, p.num_blocks, Hkv, bs, D, dt, dl, dqs, drs, n_seq, max_blocks,
                                        q_start[n_seq], 700};
                    cuda_memset_nan(dout, n * sizeof(float)); /* an element never written must fail */
                    rc = paged_attention_cuda(kern, &b, H, scale, causal, dq, dout);
                    if (rc == 0)
                        cuda_download(out, dout, n * sizeof(float));
                    cuda_free(dk), cuda_free(dv), cuda_free(dq), cuda_free(dout);
                    cuda_free(dt), cuda_free(dl), cuda_free(dqs), cuda_free(drs);
                }
#endif
                char label[160];
                snprintf(label, sizeof label, "%s %-8s bs=%d mixed batch: lengths 1,%d,%d,%d,700 queries 1,1,2,1,17 causal=%d",
                         device_name(dev), attn_impl_name(&IMPLS, dev, kern), bs, lens[1], lens[2], lens[3], causal);
                if (rc != 0)
                    fprintf(stderr, "%s: %s\n", label, error_message());
                CompareResult r = compare_f32(label, out, ref, n, 1e-5, 1e-4, rc == 0 ? 3 : 0);
                verify_record(tally, rc == 0 && r.n_bad == 0, "%s  max_abs_err=%.2e", label, r.max_abs_err);
            }
        }
    }
    for (int i = 0; i < n_seq; i++)
        paged_seq_free(&p, &seqs[i]);
    paged_pool_free(&p);
    free(kv), free(q), free(ref), free(out);
}

static int cmd_verify(int argc, char **argv)
{
    const char *device = "auto";
    int kernel = 0, quick = 0, smoke = 0, verbose = 0;
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "auto: CPU versions, and CUDA versions when a GPU is present"},
        {.name = "kernel", .kind = ARG_INT, .dest = &kernel, .metavar = "N", .help = "check only version N", .min = 1,
         .max = 9},
        {.name = "quick", .kind = ARG_FLAG, .dest = &quick, .help = "lengths up to 129 only (for sanitizers)"},
        {.name = "smoke", .kind = ARG_FLAG, .dest = &smoke, .help = "lengths up to 17 only (for valgrind)",
         .conflicts = "quick"},
        {.name = "verbose", .kind = ARG_FLAG, .dest = &verbose, .help = "print passing cases too"},
    };
    ArgCommand cmd = {PROG " verify", "[options]",
                      "Checks every paged attention version against chapter 04 (its contiguous cache: the reference\n"
                      "decode kernel for T = 1, chapter 03's flash kernel over the cache for T > 1) on the shape grid\n"
                      "of design.md §5 -- T, S in {1, 2, 17, 63, 64, 65, 127, 128, 129, 257, 1023}, D in {32, 64, 80,\n"
                      "128}, H:Hkv in {1:1, 4:1, 8:1, 9:3, 8:2}, causal and not, logits of +-1e4 -- once per block size\n"
                      "in {1, 8, 16, 32}, blocks shuffled and every unused slot NaN; then batches of five sequences of\n"
                      "different lengths (decode and prefill rows mixed) against the paged reference.\n"
                      "Tolerance: atol 1e-5, rtol 1e-4. Ends with 'N passed, N failed'.",
                      specs, 5};
    args_parse_or_exit(&cmd, argc, argv);
    if (kernel > PAGED_CPU_KERNELS)
        die("--kernel %d: %s has kernels 1..%d", kernel, PROG, PAGED_CPU_KERNELS);
    char why[256];
    const int have_gpu = device_cuda_available(why, sizeof why) && IMPLS.cuda;
    if (strcmp(device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    if (!have_gpu && strcmp(device, "cpu") != 0)
        printf("CUDA versions skipped: %s\n", why);
    VerifyTally tally = {0, 0, verbose};
    uint64_t seed = 1;
    for (int i = 0; i < VERIFY_N_BLOCK_SIZES; i++) {
        char label[16];
        snprintf(label, sizeof label, "bs=%d", VERIFY_BLOCK_SIZES[i]);
        AttnImpls im = IMPLS;
        im.label = label;
        g_block_size = VERIFY_BLOCK_SIZES[i];
        g_shuffle_seed = 1000 + (uint64_t)i;
        attn_verify_grid(&tally, &im, device, kernel, have_gpu, smoke ? 2 : quick, &seed);
        verify_mixed(&tally, device, kernel, have_gpu, VERIFY_BLOCK_SIZES[i], seed++);
    }
    return verify_finish(&tally);
}

/* ==== bench ======================================================================================== */

static int cmd_bench(int argc, char **argv)
{
    const char *device = "auto", *out = NULL;
    int repeats = 5, L = 16384;
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "auto: CPU, and the GPU when present"},
        {.name = "out", .kind = ARG_STRING, .dest = &out, .metavar = "FILE", .help = "rows to FILE instead of stdout"},
        {.name = "l", .kind = ARG_INT, .dest = &L, .metavar = "N",
         .help = "tokens per sequence (default 16384: K and V of 2 GiB and 512 MiB, far beyond the L3 cache)",
         .min = 16, .max = 1 << 22},
        {.name = "repeats", .kind = ARG_INT, .dest = &repeats, .metavar = "N",
         .help = "timed runs per point, median reported (default 5)", .min = 1, .max = 1000},
    };
    ArgCommand cmd = {PROG " bench", "[options]",
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
                      specs, 4};
    args_parse_or_exit(&cmd, argc, argv);
    char why[256], dat[4096];
    const int have_gpu = device_cuda_available(why, sizeof why);
    if (strcmp(device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    const int use_cpu = strcmp(device, "cuda") != 0, use_gpu = have_gpu && strcmp(device, "cpu") != 0;
    Tsv tsv;
    paths_in_build(dat, sizeof dat, "bench", PROG "_bench.dat");
    if (tsv_open(&tsv, out, dat) != 0)
        die_with_error();
    const Roofline *roof = roofline_get();
    fprintf(stderr, "%s bench on %s: DRAM %.1f GB/s%s%s\n", PROG, roofline_machine(), roof->dram_gbs,
            use_gpu ? "; GPU: " : "", use_gpu ? device_description(DEVICE_CUDA) : "");
    tsv_header(&tsv, "device\tvariant\tblock_size\tB\tH\tHkv\tL\tD\ttime_ms\tgbs\tpct_dram\tvs_contiguous");
    const int B = 16, H = 8, D = 128, hkvs[2] = {8, 2}, sizes[] = {1, 4, 8, 16, 32, 64, 128};
    const int n_sizes = (int)(sizeof sizes / sizeof sizes[0]);
    double worst16[2][2] = {{1e9, 1e9}, {1e9, 1e9}}, pct16[2][2] = {{0, 0}, {0, 0}};
    /* the machine's own limit for scattered blocks: reading pieces of one block of one kv head */
    for (int i = 0; i < n_sizes && use_cpu; i++) {
        bench_progress("scattered reads of %d-token blocks ...", sizes[i]);
        const double gbs = roofline_scattered_read_gbs((size_t)sizes[i] * D * sizeof(float));
        tsv_row(&tsv, "cpu\tmemory_scattered\t%d\tnan\tnan\tnan\tnan\t%d\tnan\t%.2f\t%.1f\tnan", sizes[i], D, gbs,
                100.0 * gbs / roof->dram_gbs);
    }
    for (int hi = 0; hi < 2 && use_cpu; hi++) {
        const int Hkv = hkvs[hi];
        bench_progress("decode Hkv=%d contiguous ...", Hkv);
        DecodeTiming c = time_decode(B, H, Hkv, L, D, 0, repeats, 1, 0);
        tsv_row(&tsv, "cpu\tcontiguous\t0\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\t1.000", B, H, Hkv, L, D,
                c.contig_s * 1e3, c.bytes / c.contig_s / 1e9, 100.0 * c.bytes / c.contig_s / 1e9 / roof->dram_gbs);
        for (int shuffled = 0; shuffled <= 1; shuffled++)
            for (int i = 0; i < n_sizes; i++) {
                bench_progress("decode Hkv=%d paged bs=%d %s ...", Hkv, sizes[i], shuffled ? "shuffled" : "in order");
                DecodeTiming t = time_decode(B, H, Hkv, L, D, sizes[i], repeats, 0, shuffled);
                const double gbs = t.bytes / t.paged_s / 1e9, ratio = c.contig_s / t.paged_s;
                tsv_row(&tsv, "cpu\tpaged_%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\t%.1f\t%.3f",
                        shuffled ? "shuffled" : "in_order", sizes[i], B, H, Hkv, L, D, t.paged_s * 1e3, gbs,
                        100.0 * gbs / roof->dram_gbs, ratio);
                if (sizes[i] >= 16)
                    worst16[hi][shuffled] = ratio < worst16[hi][shuffled] ? ratio : worst16[hi][shuffled];
                if (sizes[i] == 16)
                    pct16[hi][shuffled] = 100.0 * gbs / roof->dram_gbs;
            }
    }
#if HAVE_CUDA
    for (int hi = 0; hi < 2 && use_gpu; hi++) {
        const double bytes = 2.0 * B * hkvs[hi] * (double)L * D * sizeof(float);
        bench_progress("GPU decode Hkv=%d ...", hkvs[hi]);
        const double c_ms = paged_time_cuda(0, B, H, hkvs[hi], L, D, 16, 0, repeats);
        if (c_ms > 0)
            tsv_row(&tsv, "cuda\tcontiguous\t0\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\tnan\t1.000", B, H, hkvs[hi], L, D, c_ms,
                    bytes / c_ms / 1e6);
        const int gpu_sizes[3] = {8, 16, 32};
        for (int kern = 1; kern <= PAGED_CUDA_KERNELS; kern++)
            for (int shuffled = 0; shuffled <= 1; shuffled++)
                for (int i = 0; i < 3; i++) {
                    const double ms = paged_time_cuda(kern, B, H, hkvs[hi], L, D, gpu_sizes[i], shuffled, repeats);
                    if (ms > 0)
                        tsv_row(&tsv, "cuda\t%s_%s\t%d\t%d\t%d\t%d\t%d\t%d\t%.4f\t%.2f\tnan\t%.3f",
                                paged_cuda_kernel_name(kern), shuffled ? "shuffled" : "in_order", gpu_sizes[i], B, H,
                                hkvs[hi], L, D, ms, bytes / ms / 1e6, c_ms > 0 ? c_ms / ms : NAN);
                }
    }
#endif
    bench_progress_done();
    tsv_close(&tsv);
    if (use_cpu)
        for (int hi = 0; hi < 2; hi++)
            for (int sh = 0; sh <= 1; sh++)
                fprintf(stderr,
                        "targets: Hkv=%d, L=%d, blocks %s: paged at block size >= 16 runs at >= %.1f%% of the "
                        "contiguous cache's speed (target >= 90%%); block size 16 reads at %.1f%% of the DRAM "
                        "bandwidth (target >= 80%%)\n",
                        hkvs[hi], L, sh ? "shuffled" : "in order", 100.0 * worst16[hi][sh], pct16[hi][sh]);
    plot_show(PROG, "bench", dat, 0, stderr, PROG " bench: ", "\n");
    return 0;
}

/* ==== main ========================================================================================= */

int main(int argc, char **argv)
{
    error_set_program(PROG);
    if (argc > 1 && strcmp(argv[1], "attn") == 0) {
        /* --block-size is this chapter's own option: take it out before the shared parser */
        for (int i = 2; i < argc; i++)
            if (strncmp(argv[i], "--block-size", 12) == 0 && (argv[i][12] == '\0' || argv[i][12] == '=')) {
                const char *val = argv[i][12] == '=' ? argv[i] + 13 : i + 1 < argc ? argv[i + 1] : NULL;
                char *end;
                if (val && argv[i][12] == '\0' && val[0] == '-' && val[1] != '\0' && !(val[1] >= '0' && val[1] <= '9'))
                    die("05_paged attn: --block-size needs a value, got the option '%s'", val);
                errno = 0;
                const long bs = val ? strtol(val, &end, 10) : 0;
                if (!val || !*val || *end || errno || bs < 1 || bs > 4096)
                    die("05_paged attn: --block-size expects an integer from 1 to 4096, got '%s'", val ? val : "");
                g_block_size = (int)bs;
                const int drop = argv[i][12] == '=' ? 1 : 2;
                for (int j = i; j + drop <= argc; j++)
                    argv[j] = argv[j + drop];
                argc -= drop;
                i--;
            }
        return attn_command(&IMPLS,
                            "Attention through a paged cache: K and V are written into blocks of --block-size tokens\n"
                            "(default 16; an option of this chapter, before or after the others) handed out in a\n"
                            "shuffled order, every unused slot NaN, and the T queries sit at the last T positions\n"
                            "(bottom-right causal with --causal). Kernels: CPU 1 = ref, 2 = fast (default); CUDA 1 =\n"
                            "v1, 2 = v2 (default).",
                            argc - 1, argv + 1);
    }
    if (argc > 1 && strcmp(argv[1], "verify") == 0)
        return cmd_verify(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "generate") == 0)
        return cmd_generate(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "bench") == 0)
        return cmd_bench(argc - 1, argv + 1);
    if (argc > 1 && argv[1][0] != '-')
        die("unknown subcommand '%s' (expected generate, attn, verify or bench; see '%s --help')", argv[1], PROG);
    return cmd_lesson(argc, argv);
}
