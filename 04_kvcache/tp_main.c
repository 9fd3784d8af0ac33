/*
 * tp_main.c: 04_kvcache_tp, chapter 04's model split across MPI ranks (tp.h): its subcommands.
 *
 *   mpirun -np N 04_kvcache_tp generate [--checkpoint M.bin] [--prompt IDS] [--max-new N] ...
 *       every rank loads its shard and keeps its share of the KV cache; rank 0 prints the token ids,
 *       which are those of `04_kvcache generate` (greedy; the logits agree to rounding)
 *   mpirun -np N 04_kvcache_tp time [--prompt-len P] [--tokens T]
 *       one row (TSV): decode time per token, and the all-reduces' part of it
 *   04_kvcache_tp                      the lesson (tp_lesson.c)
 *
 * What it teaches: the generation loop of chapter 04 does not change at all. Each rank runs the
 * same loop on the same tokens; model_forward sums the ranks' parts where Megatron-LM does and
 * gathers the logits, so every rank samples the same token from the same logits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "04_kvcache/kvcache.h"
#include "04_kvcache/tp.h"
#include "common/args.h"
#include "common/error.h"
#include "common/npy.h"
#include "common/program.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/timer.h"
#include "common/tokenizer.h"

/* ==== the forward of the generation loop: chapter 04's, through this rank's cache ======================== */

typedef struct {
    const Model *m;
    KvCache *c;
    int kernel;
    float *logits_out; /* (max_new, vocab): each step's logits (the loop calls forward once a step), or NULL */
    int calls;
} TpForward;

static int tp_forward(void *ctx, const int *tokens, int n, int pos0, float *logits)
{
    TpForward *f = ctx;
    (void)pos0; /* the cache knows where the rows go */
    const int rc = kvcache_forward(f->m, f->c, 0, tokens, n, f->kernel, logits);
    if (rc == 0 && f->logits_out) {
        const size_t V = (size_t)f->m->c.vocab_size;
        memcpy(f->logits_out + (size_t)f->calls * V, logits, V * sizeof(float));
    }
    f->calls++;
    return rc;
}

/* ==== generate =============================================================================================== */

typedef struct {
    const char *checkpoint, *prompt_ids, *logits, *memory;
    int max_new, seed, kernel, top_k;
    double temperature, top_p;
} TpGenerateArgs;

static void generate_parse(TpGenerateArgs *a, int argc, char **argv)
{
    *a = (TpGenerateArgs){.prompt_ids = "1", .max_new = 64, .seed = 42, .top_p = 0.9};
    ArgSpec specs[] = {
        OPTION_CHECKPOINT(&a->checkpoint),
        KVCACHE_OPTION_PROMPT(&a->prompt_ids),
        KVCACHE_OPTION_MAX_NEW(&a->max_new),
        OPTION_TEMPERATURE(&a->temperature, "0 = greedy (default); >= 1.2e-38 samples from softmax(logits / T)"),
        OPTION_TOP_P(&a->top_p),
        OPTION_TOP_K(&a->top_k),
        OPTION_SEED(&a->seed),
        KVCACHE_OPTION_KERNEL(&a->kernel),
        {.name = "logits", .kind = ARG_STRING, .dest = &a->logits, .metavar = "FILE.npy",
         .help = "rank 0 writes every step's logits, (max-new, vocab) float32"},
        {.name = "memory", .kind = ARG_STRING, .dest = &a->memory, .metavar = "FILE",
         .help = "rank 0 writes each rank's memory as TSV rows (rank, ranks, weight and cache bytes, resident bytes "
                 "before loading, after loading, after generating)"},
    };
    const ArgCommand cmd = {
        .name = TP_PROG " generate",
        .usage = "[options]   (under mpirun -np N)",
        .summary = "Generates token ids as `04_kvcache generate` does, with the model split across the MPI ranks:\n"
                   "each holds its share of every layer and of the KV cache. Rank 0 prints the ids on one line;\n"
                   "each rank's memory and the time go to stderr.",
        .specs = specs,
        .n_specs = ARRAY_COUNT(specs),
    };
    args_parse_or_exit(&cmd, argc, argv);
}

/* Each rank's memory, printed by rank 0 (and written as rows to `path` when given). rss: this
 * rank's resident bytes before loading, after loading, after generating. */
static void report_memory(const TpRanks *t, const Model *m, const KvCache *c, const double rss[3], const char *path)
{
    const double mine[6] = {(double)model_shard_floats(&m->c, &m->s) * sizeof(float), (double)kvcache_bytes(c),
                            rss[0], rss[1], rss[2], (double)m->s.n_kv};
    double *all = tp_gather(t, mine, 6);
    if (t->rank != 0)
        return;
    FILE *f = path ? fopen(path, "w") : NULL;
    if (path && !f)
        die("%s: cannot write the memory rows", path);
    for (int r = 0; r < t->world; r++) {
        const double *v = all + (size_t)r * 6;
        fprintf(stderr,
                "%s generate: rank %d of %d holds %.1f MiB of weights and %.2f MiB of KV cache (%g kv heads); resident "
                "+%.1f MiB after loading, +%.1f MiB after generating\n",
                TP_PROG, r, t->world, v[0] / 1048576.0, v[1] / 1048576.0, v[5], (v[3] - v[2]) / 1048576.0,
                (v[4] - v[2]) / 1048576.0);
        if (f)
            fprintf(f, "%d\t%d\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\n", r, t->world, v[0], v[1], v[2], v[3], v[4]);
    }
    if (f && fclose(f) != 0)
        die("%s: write error", path);
    mem_free(all);
}

int tp_cmd_generate(int argc, char **argv)
{
    TpRanks t;
    tp_init(&t, &argc, &argv);
    TpGenerateArgs a;
    generate_parse(&a, argc, argv);
    int *prompt = NULL, n_prompt = 0;
    if (model_check_temperature(a.temperature) != 0 || model_check_sampling(a.top_p, a.top_k) != 0 ||
        token_ids_parse(a.prompt_ids, &prompt, &n_prompt) != 0)
        die_with_error(); /* every rank alike; rank 0 says it */
    tp_quiet_end(&t);
    double rss[3] = {tp_rss(), 0, 0};
    Model m;
    tp_load_model(&t, a.checkpoint, &m);
    rss[1] = tp_rss();
    tp_agree(&t, kvcache_check_request(&m.c, prompt, n_prompt, a.max_new));
    KvCache c = {0};
    tp_agree(&t, kvcache_create(&c, m.c.n_layers, 1, m.s.n_kv, n_prompt + a.max_new, model_head_size(&m.c), KV_F32));
    const size_t V = (size_t)m.c.vocab_size;
    TpForward f = {.m = &m, .c = &c, .kernel = a.kernel,
                   .logits_out = a.logits ? mem_alloc_or_die((size_t)(a.max_new ? a.max_new : 1) * V * sizeof(float),
                                                             "every step's logits (max_new, vocab)")
                                          : NULL};
    const GenOptions o = {.max_new = a.max_new, .temperature = (float)a.temperature, .top_p = (float)a.top_p,
                          .top_k = a.top_k, .seed = (uint64_t)a.seed, .use_cache = 1, .dtype = KV_F32,
                          .kernel = a.kernel};
    int *out = mem_alloc_or_die((size_t)(a.max_new ? a.max_new : 1) * sizeof(int), "generated tokens (max_new)");
    const double t0 = timer_now();
    tp_agree(&t, kvcache_generate_loop(&m.c, tp_forward, &f, prompt, n_prompt, &o, out, NULL));
    const double secs = timer_now() - t0;
    rss[2] = tp_rss();
    if (t.rank == 0) {
        for (int i = 0; i < a.max_new; i++)
            printf(i ? " %d" : "%d", out[i]);
        printf("\n");
        stdout_flush_or_die();
        const size_t shape[2] = {(size_t)a.max_new, V};
        if (a.logits && npy_write(a.logits, NPY_F32, 2, shape, f.logits_out) != 0)
            die_with_error();
        fprintf(stderr, "%s generate: %d prompt + %d new tokens on %d ranks, %s: %.2f s, %.1f tokens/s\n", TP_PROG,
                n_prompt, a.max_new, t.world, a.checkpoint ? a.checkpoint : "built-in random model", secs,
                a.max_new / (secs > 0 ? secs : 1e-9));
    }
    report_memory(&t, &m, &c, rss, a.memory);
    kvcache_free(&c);
    mem_free(out), mem_free(f.logits_out), free(prompt);
    model_free(&m);
    return 0;
}

/* ==== time: decode time per token, and the all-reduces' part ================================================ */

int tp_cmd_time(int argc, char **argv)
{
    TpRanks t;
    tp_init(&t, &argc, &argv);
    const char *checkpoint = NULL;
    int prompt_len = 64, tokens = 32, header = 0;
    ArgSpec specs[] = {
        OPTION_CHECKPOINT(&checkpoint),
        {.name = "prompt-len", .kind = ARG_INT, .dest = &prompt_len, .metavar = "P",
         .help = "tokens prefilled before the timed steps (default 64)", .min = 1, .max = 1 << 20},
        {.name = "tokens", .kind = ARG_INT, .dest = &tokens, .metavar = "T",
         .help = "decode steps timed (default 32)", .min = 1, .max = 1 << 20},
        {.name = "header", .kind = ARG_FLAG, .dest = &header, .help = "print the column names first"},
    };
    const ArgCommand cmd = {
        .name = TP_PROG " time",
        .usage = "[options]   (under mpirun -np N)",
        .summary = "Times greedy decode steps of the model split across the MPI ranks: rank 0 prints one TSV row,\n"
                   "columns " TP_TIME_COLUMNS ".\n"
                   "The all-reduce time includes waiting for the slowest rank.",
        .specs = specs,
        .n_specs = ARRAY_COUNT(specs),
    };
    args_parse_or_exit(&cmd, argc, argv);
    tp_quiet_end(&t);
    Model m;
    tp_load_model(&t, checkpoint, &m);
    tp_agree(&t, prompt_len + tokens > m.c.seq_len
                     ? error_set("--prompt-len %d + --tokens %d exceeds the model's seq_len %d", prompt_len, tokens,
                                 m.c.seq_len)
                     : 0);
    KvCache c = {0};
    tp_agree(&t, kvcache_create(&c, m.c.n_layers, 1, m.s.n_kv, prompt_len + tokens, model_head_size(&m.c), KV_F32));
    int *ids = mem_alloc_or_die((size_t)(prompt_len + tokens) * sizeof(int), "token ids");
    float *logits = mem_alloc_or_die((size_t)m.c.vocab_size * sizeof(float), "logits (vocab)");
    Rng rng;
    rng_seed(&rng, 7); /* the same prompt on every rank */
    for (int i = 0; i < prompt_len; i++)
        ids[i] = (int)rng_below(&rng, (uint32_t)m.c.vocab_size);
    tp_agree(&t, kvcache_forward(&m, &c, 0, ids, prompt_len, 0, logits));
    t.reduce_s = 0, t.reduce_bytes = 0, t.reduces = 0; /* the prefill is not timed */
    const double t0 = timer_now();
    int rc = 0;
    for (int i = 0; i < tokens && rc == 0; i++) {
        ids[prompt_len + i] = model_argmax(logits, m.c.vocab_size);
        rc = kvcache_forward(&m, &c, 0, ids + prompt_len + i, 1, 0, logits);
    }
    const double secs = timer_now() - t0;
    tp_agree(&t, rc);
    if (t.rank == 0) {
        if (header)
            printf("%s\n", TP_TIME_COLUMNS);
        printf("%d\t%.4f\t%.4f\t%.0f\t%.1f\n", t.world, secs * 1e3 / tokens, t.reduce_s * 1e3 / tokens,
               t.reduce_bytes / tokens, (double)t.reduces / tokens);
        stdout_flush_or_die();
    }
    kvcache_free(&c);
    mem_free(ids), mem_free(logits);
    model_free(&m);
    return 0;
}

/* ==== nccl: the GPUs' all-reduce ============================================================================= */

#if HAVE_NCCL
int tp_cmd_nccl(int argc, char **argv)
{
    TpRanks t;
    tp_init(&t, &argc, &argv);
    int floats = 8192, iters = 200;
    ArgSpec specs[] = {
        {.name = "floats", .kind = ARG_INT, .dest = &floats, .metavar = "N",
         .help = "floats summed by each all-reduce (default 8192: one token of Llama-2-70B, dim 8192)", .min = 1,
         .max = 1 << 28},
        {.name = "iters", .kind = ARG_INT, .dest = &iters, .metavar = "N",
         .help = "all-reduces timed, the median reported (default 200)", .min = 1, .max = 1 << 20},
    };
    const ArgCommand cmd = {
        .name = TP_PROG " nccl",
        .usage = "[options]   (under mpirun -np N, one rank per GPU)",
        .summary = "Times NCCL's all-reduce of N floats across the ranks' GPUs (rank r on GPU r mod the GPUs):\n"
                   "rank 0 prints one TSV row, columns ranks, floats, us (the median), bus_gbs (the ring's\n"
                   "2 (N-1)/N of the bytes per rank over that time).",
        .specs = specs,
        .n_specs = ARRAY_COUNT(specs),
    };
    args_parse_or_exit(&cmd, argc, argv);
    tp_quiet_end(&t);
    double secs = 0;
    tp_agree(&t, tp_nccl_allreduce_time(&t, (size_t)floats, iters, &secs));
    if (t.rank == 0) {
        const double ring = 2.0 * (t.world - 1) / t.world * (double)floats * sizeof(float);
        printf("ranks\tfloats\tus\tbus_gbs\n%d\t%d\t%.2f\t%.2f\n", t.world, floats, secs * 1e6,
               secs > 0 ? ring / secs / 1e9 : 0.0);
        stdout_flush_or_die();
    }
    return 0;
}
#endif

/* ==== the program ============================================================================================ */

static const Subcommand COMMANDS[] = {
    {.name = "generate", .run = tp_cmd_generate, .summary = "token ids, the model split across the MPI ranks"},
    {.name = "time", .run = tp_cmd_time, .summary = "one row: decode time per token and its all-reduce part"},
#if HAVE_NCCL
    {.name = "nccl", .run = tp_cmd_nccl, .summary = "NCCL's all-reduce of a token's activations across the GPUs"},
#endif
    {.name = NULL},
};

const Program TP_PROGRAM = {.name = TP_PROG,
                            .title = "Chapter 04, part 2: tensor parallelism -- the model and its KV cache split "
                                         "across ranks",
                            .lesson = tp_lesson,
                            .subcommands = COMMANDS};

/* Under AddressSanitizer (make test SAN=1): Open MPI leaves allocations of its plugins behind at
 * MPI_Finalize, after unloading the plugins, so LeakSanitizer can neither name nor suppress them.
 * This program alone runs without leak detection; the memory errors ASan and UBSan catch are still
 * caught, and the model's code is leak-checked through the single-process programs and suites. */
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) { return "detect_leaks=0"; }

int main(int argc, char **argv) { return program_main(&TP_PROGRAM, argc, argv); }
