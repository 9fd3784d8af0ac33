/*
 * serve.c: chapter 06's requests-file subcommands -- the engine as a program.
 *
 *   06_batching serve ...         a requests file in (engine_read_requests), every request's
 *                                 tokens (or text) out in input order, the metrics on stderr,
 *                                 and optionally as TSV files (--metrics, --iterations)
 *   06_batching gen-requests ...  a seeded workload file (common/workload.h: Poisson arrivals,
 *                                 skewed or uniform lengths) for serve
 *
 * Every output is checked before the work and written after it through a temporary file, so a
 * run that fails leaves no half-written file and never reports results that were lost.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "05_paged/paged.h"
#include "06_batching/commands.h"
#include "common/args.h"
#include "common/device.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/program.h"
#include "common/tensor.h"
#include "common/tokenizer.h"

/* ==== serve ======================================================================================= */

typedef struct {
    const char *checkpoint, *requests, *tokenizer, *policy, *metrics_path, *iter_path, *device, *prefix;
    EngineOptions o;
    Device dev;
} ServeArgs;

static void serve_parse(ServeArgs *a, int argc, char **argv)
{
    *a = (ServeArgs){.policy = "continuous", .device = "auto", .prefix = "on", .o = engine_default_options()};
    int seed = 42, shuffle = 0, top_k = 0;
    double temperature = 0.0, top_p = 0.9;
    EngineOptions *o = &a->o;
    ArgSpec specs[] = {
        {.name = "requests", .kind = ARG_STRING, .dest = &a->requests, .metavar = "R.txt", .required = 1,
         .help = "one request per line: <arrival_seconds> <max_new_tokens> [temperature=T top_p=P top_k=K seed=S] <prompt ids...> ('#' comments)"},
        {.name = "checkpoint", .kind = ARG_STRING, .dest = &a->checkpoint, .metavar = "M.bin",
         .help = "llama2.c version-0 checkpoint (default: the built-in random model)"},
        {.name = "tokenizer", .kind = ARG_STRING, .dest = &a->tokenizer, .metavar = "T.bin",
         .help = "text mode: prompts in the file are text, outputs are text, requests stop at BOS/EOS"},
        {.name = "policy", .kind = ARG_CHOICE, .dest = &a->policy, .choices = ENGINE_POLICY_CHOICES,
         .help = "continuous (default): decide at every iteration; static: run each batch to its end; "
                 "static-padded: also compute the padding and the finished members (the CPU only)"},
        ENGINE_OPTIONS_BATCH(o),
        OPTION_TEMPERATURE(&temperature, "0 = greedy (default); >= 1.2e-38 samples, request i with seed S + i"),
        OPTION_TOP_P(&top_p),
        OPTION_TOP_K(&top_k),
        OPTION_SEED(&seed),
        OPTION_SHUFFLE(&shuffle, "hand out blocks in an order shuffled with seed S (default 0: in order)"),
        ENGINE_OPTION_PREFIX_CACHING(&a->prefix),
        {.name = "kernel", .kind = ARG_INT, .dest = &o->kernel, .metavar = "N",
         .help = "chapter 05's CPU attention kernel: 1 = ref, 2 = fast (default)", .min = 1, .max = PAGED_CPU_KERNELS},
        {.name = "metrics", .kind = ARG_STRING, .dest = &a->metrics_path, .metavar = "FILE",
         .help = "the metrics as TSV rows (metric, value) into FILE"},
        {.name = "iterations", .kind = ARG_STRING, .dest = &a->iter_path, .metavar = "FILE",
         .help = "one TSV row per iteration (batch occupancy, blocks in use) into FILE"},
        OPTION_DEVICE(&a->device,
                      "where the forward runs (default auto: the GPU if there is one; the scheduler is on the CPU)"),
    };
    args_parse_or_exit(&(const ArgCommand){
        .summary =
            "Serves every request of the file with the engine and prints, in input order, one line per\n"
            "request: '<index>: <generated ids>', or '<index>: rejected: <reason>' for a request that can\n"
            "never run (longer than seq_len, or needing more blocks than the pool has). The metrics go to\n"
            "stderr. On the CPU each request's tokens are those of '05_paged generate' run on it alone\n"
            "(the forward is batch-invariant); on a GPU those it gets served alone on the GPU (the GPU\n"
            "forward is batch-invariant in its own arithmetic; against the CPU, greedy tokens may part at\n"
            "a near-tie).\n"
            "With --tokenizer: each line's prompt is text (the rest of the line; \\n, \\t, \\\\ escapes), each output\n"
            "'<index>: <generated text>' with newlines written as \\n, and a request ends at BOS or EOS; a\n"
            "text too long for seq_len by its length alone is rejected on its line, never encoded.\n"
            "A malformed line (or a NUL byte) rejects the whole file, naming the line, before serving.",
        .name = ENGINE_PROG " serve", .usage = "--requests R.txt [options]", .specs = specs, .n_specs = ARRAY_COUNT(specs)},
        argc, argv);
    if (device_resolve(a->device, &a->dev) != 0 || engine_policy_parse(a->policy, &o->policy) != 0 ||
        model_check_temperature(temperature) != 0 || model_check_sampling(top_p, top_k) != 0)
        die_with_error();
    o->prefix_caching = strcmp(a->prefix, "on") == 0;
    if (o->kernel != 0 && a->dev == DEVICE_CUDA) /* chapter 05's CPU kernels: the GPU forward has its own */
        die("--kernel %d picks chapter 05's CPU attention kernel, and this run is on the GPU (%s): add --device cpu, "
            "or leave --kernel out",
            o->kernel, strcmp(a->device, "cuda") == 0 ? "--device cuda" : "--device auto found one");
    o->cuda = a->dev == DEVICE_CUDA;
    o->temperature = (float)temperature, o->seed = (uint64_t)seed, o->shuffle = (uint64_t)shuffle;
    o->top_p = (float)top_p, o->top_k = top_k;
    o->keep_log = a->iter_path != NULL;
}

/* One line per request, in input order: its ids, its text (escaped onto one line), or why it was
 * rejected. */
static void print_results(const EngineRequest *reqs, const EngineResult *res, int n, const Tokenizer *tok)
{
    for (int i = 0; i < n; i++) {
        printf("%d:", i);
        if (res[i].status == ENGINE_REJECTED)
            printf(" rejected: %s", res[i].reason);
        if (tok && res[i].status == ENGINE_DONE) {
            char *s = tokenizer_decode_generation(tok, reqs[i].prompt, reqs[i].n_prompt, res[i].tokens,
                                                  res[i].n_tokens, 0);
            char *e = text_escape(s);
            printf(" %s", e);
            free(s), free(e);
        }
        for (int t = 0; t < res[i].n_tokens && !tok; t++)
            printf(" %d", res[i].tokens[t]);
        printf("\n");
    }
}

/* The metrics as (metric, value) rows into t (opened by the caller), and t closed. */
static void write_metrics(Tsv *tsv, EnginePolicy policy, int prefix_on, const EngineMetrics *mt)
{
    Tsv t = *tsv;
    tsv_header(&t, "metric\tvalue");
    tsv_row(&t, "policy\t%s", engine_policy_name(policy));
    tsv_row(&t, "requests_served\t%d", mt->completed);
    tsv_row(&t, "requests_rejected\t%d", mt->rejected);
    tsv_row(&t, "output_tokens\t%ld", mt->generated);
    tsv_row(&t, "makespan_s\t%.6f", mt->makespan_s);
    tsv_row(&t, "throughput_tokens_per_s\t%.3f", mt->throughput);
    tsv_row(&t, "ttft_p50_s\t%.6f", mt->ttft_p50);
    tsv_row(&t, "ttft_p99_s\t%.6f", mt->ttft_p99);
    tsv_row(&t, "tpot_p50_s\t%.6f", mt->tpot_p50);
    tsv_row(&t, "tpot_p99_s\t%.6f", mt->tpot_p99);
    tsv_row(&t, "iterations\t%d", mt->iterations);
    tsv_row(&t, "mean_sequences_per_iteration\t%.3f", mt->mean_batch);
    tsv_row(&t, "peak_blocks\t%d", mt->peak_blocks);
    tsv_row(&t, "num_blocks\t%d", mt->num_blocks);
    tsv_row(&t, "preemptions\t%d", mt->preemptions);
    tsv_row(&t, "prefix_caching\t%s", prefix_on ? "on" : "off");
    tsv_row(&t, "prefill_tokens_computed\t%ld", mt->prefill_computed);
    tsv_row(&t, "prefix_tokens_looked_up\t%ld", mt->prefix_looked_up);
    tsv_row(&t, "prefix_tokens_reused\t%ld", mt->prefix_reused);
    tsv_row(&t, "prefix_hit_rate\t%.6f", mt->prefix_hit_rate);
    tsv_row(&t, "cached_blocks_end\t%d", mt->cached_blocks);
    tsv_row(&t, "cached_blocks_peak\t%d", mt->peak_cached_blocks);
    tsv_row(&t, "evictions\t%ld", mt->evictions);
    tsv_close(&t);
}

/* The iteration log as TSV rows into t (opened by the caller), and t closed. */
static void write_iterations(Tsv *tsv, const EngineMetrics *mt)
{
    Tsv t = *tsv;
    tsv_header(&t, "iteration\tclock_s\trunning\twaiting\tscheduled\tprefill_tokens\tdecode_tokens\tblocks_used\t"
                   "cached_blocks\treused_tokens");
    for (int i = 0; i < mt->iterations && mt->log; i++) {
        const EngineIteration *it = &mt->log[i];
        tsv_row(&t, "%d\t%.6f\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d", i, it->clock_s, it->running, it->waiting,
                it->scheduled, it->prefill_tokens, it->decode_tokens, it->blocks_used, it->cached_blocks,
                it->reused_tokens);
    }
    tsv_close(&t);
}

static void print_summary(FILE *f, const char *label, int prefix_on, const EngineMetrics *mt)
{
    fprintf(f,
            "%s: %d served, %d rejected, %ld tokens in %.2f s: %.1f tokens/s; TTFT p50 %.3f s p99 %.3f s; "
            "TPOT p50 %.1f ms p99 %.1f ms; %d iterations, %.1f sequences per iteration; peak %d of %d blocks; %d "
            "preemptions; %ld prefill tokens computed",
            label, mt->completed, mt->rejected, mt->generated, mt->makespan_s, mt->throughput, mt->ttft_p50,
            mt->ttft_p99, mt->tpot_p50 * 1e3, mt->tpot_p99 * 1e3, mt->iterations, mt->mean_batch, mt->peak_blocks,
            mt->num_blocks, mt->preemptions, mt->prefill_computed);
    if (prefix_on)
        fprintf(f, "; prefix cache: %ld of %ld tokens looked up reused (hit rate %.1f%%, prefill tokens saved), %d "
                   "blocks cached at the end (peak %d), %ld evictions",
                mt->prefix_reused, mt->prefix_looked_up, 100.0 * mt->prefix_hit_rate, mt->cached_blocks,
                mt->peak_cached_blocks, mt->evictions);
    fprintf(f, "\n");
}

int engine_cmd_serve(int argc, char **argv)
{
    ServeArgs a;
    serve_parse(&a, argc, argv);
    /* every output is checked before the work, so a bad --metrics fails now, not after loading a
     * checkpoint and serving */
    if ((a.metrics_path && file_check_output(a.metrics_path) != 0) ||
        (a.iter_path && file_check_output(a.iter_path) != 0))
        die_with_error();
    Model m;
    program_load_model(a.checkpoint, &m);
    Tokenizer tok;
    const int text = tokenizer_setup(a.tokenizer, NULL, m.c.vocab_size, 0, &tok, NULL, NULL);
    EngineRequest *reqs;
    int n;
    if (text < 0 || engine_read_requests(a.requests, text ? &tok : NULL, m.c.seq_len, &reqs, &n) != 0)
        die_with_error();
    a.o.stop_at_bos_eos = text;
    /* the outputs are opened before serving (a FIFO nobody reads fails now) and written after:
     * temporary files renamed into place, removed if the run fails */
    Tsv met_tsv, iter_tsv;
    if ((a.metrics_path && tsv_open(&met_tsv, "/dev/null", a.metrics_path) != 0) ||
        (a.iter_path && tsv_open(&iter_tsv, "/dev/null", a.iter_path) != 0))
        die_with_error();
    EngineResult *res = mem_alloc_or_die((size_t)n * sizeof(EngineResult), "results"); /* (n) */
    EngineMetrics mt;
    if (engine_serve(&m, reqs, n, &a.o, res, &mt) != 0)
        die_with_error();
    const int prefix_on = a.o.prefix_caching && a.o.policy != ENGINE_STATIC_PADDED; /* off under static-padded */
    print_results(reqs, res, n, text ? &tok : NULL);
    stdout_flush_or_die(); /* the results are out, or the run fails here: never "N served" for lost lines */
    if (a.metrics_path)
        write_metrics(&met_tsv, a.o.policy, prefix_on, &mt);
    if (a.iter_path)
        write_iterations(&iter_tsv, &mt);
    /* the summary last: it is printed only when every output was written */
    char label[128];
    snprintf(label, sizeof label, "%s serve (%s, max-batch %d, %d tokens per step, prefix caching %s, %s)",
             ENGINE_PROG, engine_policy_name(a.o.policy), a.o.max_batch, a.o.max_tokens, prefix_on ? "on" : "off",
             device_name(a.dev));
    print_summary(stderr, label, prefix_on, &mt);
    engine_free_results(res, n);
    engine_free_metrics(&mt);
    mem_free(res);
    engine_free_requests(reqs, n);
    tokenizer_free(&tok);
    model_free(&m);
    return 0;
}

/* ==== gen-requests ================================================================================ */

#define GEN_WORKLOADS "skewed|uniform|shared-prefix|multi-turn"

typedef struct {
    const char *out, *kind;
    WorkloadSpec w;         /* skewed and uniform */
    PrefixWorkloadSpec pw;  /* shared-prefix and multi-turn */
    int prefix_kind;        /* 1: --workload shared-prefix or multi-turn */
    int shared_given;
} GenArgs;

static void gen_parse(GenArgs *a, int argc, char **argv)
{
    const ModelConfig c = model_default_config();
    *a = (GenArgs){.kind = "skewed",
                   .w = {.n = 200, .rate = 8.0, .kind = WORKLOAD_SKEWED, .prompt_median = 32, .out_median = 64,
                         .seq_len = c.seq_len, .vocab = c.vocab_size, .seed = 1},
                   .pw = {.shared = 512, .question_min = 16, .question_max = 64, .turns = 4, .turn_gap = 2.0,
                          .seq_len = c.seq_len, .vocab = c.vocab_size}};
    int seed = 1;
    ArgSpec specs[] = {
        {.name = "out", .kind = ARG_STRING, .dest = &a->out, .metavar = "R.txt", .required = 1,
         .help = "the file to write"},
        {.name = "n", .kind = ARG_INT, .dest = &a->w.n, .metavar = "N", .help = "requests (default 200)", .min = 1,
         .max = 1 << 24},
        {.name = "rate", .kind = ARG_DOUBLE, .dest = &a->w.rate, .metavar = "R",
         .help = "Poisson arrivals per second, of requests or (multi-turn) of conversations (default 8; 0: all at "
                 "time 0)",
         .min = 0, .max = 1e9},
        {.name = "workload", .kind = ARG_CHOICE, .dest = &a->kind, .choices = GEN_WORKLOADS,
         .help = "skewed (default): lognormal lengths, sigma 1; uniform: 1 .. 2 x the median; shared-prefix: one "
                 "system prompt + a question per request; multi-turn: conversations, each turn after the last"},
        {.name = "prompt-median", .kind = ARG_INT, .dest = &a->w.prompt_median, .metavar = "N",
         .help = "median prompt length (default 32; skewed and uniform)", .min = 1, .max = 1 << 20},
        {.name = "output-median", .kind = ARG_INT, .dest = &a->w.out_median, .metavar = "N",
         .help = "median output length (default 64; shared-prefix and multi-turn: uniform in 1 .. 2 x this)",
         .min = 1, .max = 1 << 20},
        {.name = "shared-prefix", .kind = ARG_INT, .dest = &a->pw.shared, .metavar = "N",
         .help = "tokens of the system prompt every request (conversation) starts with (default 512 for "
                 "shared-prefix, 0 for multi-turn)",
         .min = 0, .max = 1 << 20, .given = &a->shared_given},
        {.name = "question-min", .kind = ARG_INT, .dest = &a->pw.question_min, .metavar = "N",
         .help = "shortest question or new message (default 16)", .min = 1, .max = 1 << 20},
        {.name = "question-max", .kind = ARG_INT, .dest = &a->pw.question_max, .metavar = "N",
         .help = "longest question or new message (default 64)", .min = 1, .max = 1 << 20},
        {.name = "turns", .kind = ARG_INT, .dest = &a->pw.turns, .metavar = "T",
         .help = "multi-turn: turns per conversation (default 4)", .min = 1, .max = 1 << 20},
        {.name = "turn-gap", .kind = ARG_DOUBLE, .dest = &a->pw.turn_gap, .metavar = "S",
         .help = "multi-turn: seconds from one turn's arrival to the next's (default 2)", .min = 0, .max = 1e9},
        {.name = "seed", .kind = ARG_INT, .dest = &seed, .metavar = "S", .help = "(default 1)", .min = 0,
         .max = 2147483647},
    };
    args_parse_or_exit(&(const ArgCommand){
        .summary = "Writes a seeded workload for 'serve': Poisson arrivals, prompt ids uniform over the built-in\n"
                   "model's vocabulary of 1024, lengths clipped so that prompt + output fits its seq_len 2048.\n"
                   "skewed, uniform: prompt and output lengths from the distribution. shared-prefix: every prompt is\n"
                   "one system prompt (--shared-prefix tokens) + its own question (--question-min .. --question-max\n"
                   "tokens). multi-turn: conversations of --turns turns; each turn's prompt is the previous turn's\n"
                   "prompt + a placeholder answer (as many ids as that turn's max_new, drawn from the seed: the\n"
                   "engine's real answer is not known when the file is written) + a new message, so a turn shares\n"
                   "exactly the previous prompt with the one before; a conversation ends early when its next turn\n"
                   "would not fit seq_len.",
        .name = ENGINE_PROG " gen-requests", .usage = "--out R.txt [options]", .specs = specs,
        .n_specs = ARRAY_COUNT(specs)},
        argc, argv);
    a->w.kind = strcmp(a->kind, "uniform") == 0 ? WORKLOAD_UNIFORM : WORKLOAD_SKEWED;
    a->w.seed = (uint64_t)seed;
    a->prefix_kind = strcmp(a->kind, "shared-prefix") == 0 || strcmp(a->kind, "multi-turn") == 0;
    PrefixWorkloadSpec *pw = &a->pw;
    pw->kind = strcmp(a->kind, "multi-turn") == 0 ? ENGINE_MULTI_TURN : ENGINE_SHARED_PREFIX;
    pw->n = a->w.n, pw->rate = a->w.rate, pw->seed = a->w.seed, pw->out_min = 1, pw->out_max = 2 * a->w.out_median;
    if (pw->kind == ENGINE_MULTI_TURN && !a->shared_given)
        pw->shared = 0;
}

int engine_cmd_gen_requests(int argc, char **argv)
{
    GenArgs a;
    gen_parse(&a, argc, argv);
    EngineRequest *reqs;
    const int n = a.w.n;
    if (file_check_output(a.out) != 0 ||
        (a.prefix_kind ? engine_make_prefix_workload(&a.pw, &reqs) : engine_make_workload(&a.w, &reqs)) != 0 ||
        engine_write_requests(a.out, reqs, n) != 0)
        die_with_error();
    long prompt = 0, output = 0;
    double last = 0.0;
    for (int i = 0; i < n; i++)
        prompt += reqs[i].n_prompt, output += reqs[i].max_new, last = reqs[i].arrival > last ? reqs[i].arrival : last;
    fprintf(stderr, "%s gen-requests: %d %s requests over %.1f s into %s: mean prompt %.1f, mean output %.1f tokens\n",
            ENGINE_PROG, n, a.kind, last, a.out, (double)prompt / n, (double)output / n);
    engine_free_requests(reqs, n);
    return 0;
}
