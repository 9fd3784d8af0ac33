/*
 * main.c: the chapter 06 program, build/bin/06_batching.
 *
 *   06_batching [--device D]     the lesson: static against continuous batching on one workload,
 *                                side by side; throughput and p99 TTFT against the arrival rate;
 *                                batch occupancy over time; preemption under a small pool
 *   06_batching serve ...        a requests file in, every request's tokens out (design.md §4)
 *   06_batching gen-requests ... a seeded workload file (Poisson arrivals, skewed or uniform)
 *   06_batching verify ...       the engine against chapter 05 run alone, request by request, under
 *                                every policy, batch size, budget and pool size of a built-in grid
 *   06_batching bench ...        throughput and latency against the arrival rate for both policies;
 *                                the engine at batch 32 against one sequence at a time
 *
 * Every subcommand takes --help.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "06_batching/engine.h"
#include "common/args.h"
#include "common/bench.h"
#include "common/device.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/model.h"
#include "common/paths.h"
#include "common/plot.h"
#include "common/roofline.h"
#include "common/tensor.h"
#include "common/timer.h"
#include "common/tokenizer.h"
#include "common/verify.h"

#define PROG "06_batching"

static void load_model(const char *checkpoint, Model *m)
{
    if (model_load_or_builtin(checkpoint, m) != 0)
        die_with_error();
}

static void print_metrics(FILE *f, const char *label, const EngineMetrics *mt)
{
    fprintf(f,
            "%s: %d served, %d rejected, %ld tokens in %.2f s: %.1f tokens/s; TTFT p50 %.3f s p99 %.3f s; "
            "TPOT p50 %.1f ms p99 %.1f ms; %d iterations, %.1f sequences per iteration; peak %d of %d blocks; %d "
            "preemptions\n",
            label, mt->completed, mt->rejected, mt->generated, mt->makespan_s, mt->throughput, mt->ttft_p50,
            mt->ttft_p99, mt->tpot_p50 * 1e3, mt->tpot_p99 * 1e3, mt->iterations, mt->mean_batch, mt->peak_blocks,
            mt->num_blocks, mt->preemptions);
}

/* The iteration log as TSV rows into t (opened by the caller), and t closed. */
static void write_iterations(Tsv *tsv, const EngineMetrics *mt)
{
    Tsv t = *tsv;
    tsv_header(&t, "iteration\tclock_s\trunning\twaiting\tscheduled\tprefill_tokens\tdecode_tokens\tblocks_used");
    for (int i = 0; i < mt->iterations && mt->log; i++) {
        const EngineIteration *it = &mt->log[i];
        tsv_row(&t, "%d\t%.6f\t%d\t%d\t%d\t%d\t%d\t%d", i, it->clock_s, it->running, it->waiting, it->scheduled,
                it->prefill_tokens, it->decode_tokens, it->blocks_used);
    }
    tsv_close(&t);
}

/* ==== serve ======================================================================================= */

static int cmd_serve(int argc, char **argv)
{
    const char *checkpoint = NULL, *requests = NULL, *policy = "continuous", *metrics_path = NULL, *iter_path = NULL;
    const char *tokenizer = NULL;
    const char *device = "auto";
    EngineOptions o = engine_default_options();
    int seed = 42, shuffle = 0;
    double temperature = 0.0;
    ArgSpec specs[] = {
        {.name = "requests", .kind = ARG_STRING, .dest = &requests, .metavar = "R.txt", .required = 1,
         .help = "one request per line: <arrival_seconds> <max_new_tokens> <prompt ids...> ('#' comments)"},
        {.name = "checkpoint", .kind = ARG_STRING, .dest = &checkpoint, .metavar = "M.bin",
         .help = "llama2.c version-0 checkpoint (default: the built-in random model)"},
        {.name = "tokenizer", .kind = ARG_STRING, .dest = &tokenizer, .metavar = "T.bin",
         .help = "text mode: prompts in the file are text, outputs are text, requests stop at BOS/EOS"},
        {.name = "policy", .kind = ARG_CHOICE, .dest = &policy, .choices = ENGINE_POLICY_CHOICES,
         .help = "continuous (default): decide at every iteration; static: run each batch to its end"},
        {.name = "max-batch", .kind = ARG_INT, .dest = &o.max_batch, .metavar = "N",
         .help = "sequences running at once (default 32)", .min = 1, .max = 1 << 20},
        {.name = "max-tokens-per-step", .kind = ARG_INT, .dest = &o.max_tokens, .metavar = "N",
         .help = "tokens per iteration, decodes and prefill chunks (default 256)", .min = 1, .max = 1 << 24},
        {.name = "block-size", .kind = ARG_INT, .dest = &o.block_size, .metavar = "B",
         .help = "tokens per KV block (default 16)", .min = 1, .max = 4096},
        {.name = "num-blocks", .kind = ARG_INT, .dest = &o.num_blocks, .metavar = "N",
         .help = "blocks in the pool (default: max-batch sequences of seq_len tokens)", .min = 1, .max = 1 << 28},
        {.name = "temperature", .kind = ARG_DOUBLE, .dest = &temperature, .metavar = "T",
         .help = "0 = greedy (default); >= 1.2e-38 samples, request i with seed S + i", .min = 0, .max = 100},
        {.name = "seed", .kind = ARG_INT, .dest = &seed, .metavar = "S", .help = "sampling seed (default 42)", .min = 0,
         .max = 2147483647},
        {.name = "shuffle", .kind = ARG_INT, .dest = &shuffle, .metavar = "S",
         .help = "hand out blocks in an order shuffled with seed S (default 0: in order)", .min = 0,
         .max = 2147483647},
        {.name = "kernel", .kind = ARG_INT, .dest = &o.kernel, .metavar = "N",
         .help = "chapter 05's CPU attention kernel: 1 = ref, 2 = fast (default)", .min = 1, .max = PAGED_CPU_KERNELS},
        {.name = "metrics", .kind = ARG_STRING, .dest = &metrics_path, .metavar = "FILE",
         .help = "the metrics as TSV rows (metric, value) into FILE"},
        {.name = "iterations", .kind = ARG_STRING, .dest = &iter_path, .metavar = "FILE",
         .help = "one TSV row per iteration (batch occupancy, blocks in use) into FILE"},
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "where the forward runs (default auto: the GPU if there is one; the scheduler is on the CPU)"},
    };
    ArgCommand cmd = {PROG " serve", "--requests R.txt [options]",
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
                      specs, (int)(sizeof specs / sizeof specs[0])};
    args_parse_or_exit(&cmd, argc, argv);
    Device dev;
    if (device_resolve(device, &dev) != 0 || engine_policy_parse(policy, &o.policy) != 0 ||
        model_check_temperature(temperature) != 0)
        die_with_error();
    if (o.kernel != 0 && dev == DEVICE_CUDA) /* chapter 05's CPU kernels: the GPU forward has its own */
        die("--kernel %d picks chapter 05's CPU attention kernel, and this run is on the GPU (%s): add --device cpu, "
            "or leave --kernel out",
            o.kernel, strcmp(device, "cuda") == 0 ? "--device cuda" : "--device auto found one");
    o.cuda = dev == DEVICE_CUDA;
    o.temperature = (float)temperature, o.seed = (uint64_t)seed, o.shuffle = (uint64_t)shuffle;
    o.keep_log = iter_path != NULL;
    /* every output is checked before the work, so a bad --metrics fails now, not after loading a
     * checkpoint and serving */
    if ((metrics_path && file_check_output(metrics_path) != 0) || (iter_path && file_check_output(iter_path) != 0))
        die_with_error();
    Model m;
    load_model(checkpoint, &m);
    Tokenizer tok;
    const int text = tokenizer_setup(tokenizer, NULL, m.c.vocab_size, 0, &tok, NULL, NULL);
    EngineRequest *reqs;
    int n;
    if (text < 0 || engine_read_requests(requests, text ? &tok : NULL, m.c.seq_len, &reqs, &n) != 0)
        die_with_error();
    o.stop_at_bos_eos = text;
    /* the outputs are opened before serving (a FIFO nobody reads fails now) and written after:
     * temporary files renamed into place, removed if the run fails */
    Tsv met_tsv, iter_tsv;
    if ((metrics_path && tsv_open(&met_tsv, "/dev/null", metrics_path) != 0) ||
        (iter_path && tsv_open(&iter_tsv, "/dev/null", iter_path) != 0))
        die_with_error();
    EngineResult *res = calloc((size_t)n, sizeof(EngineResult));
    EngineMetrics mt;
    if (engine_serve(&m, reqs, n, &o, res, &mt) != 0)
        die_with_error();
    for (int i = 0; i < n; i++) {
        printf("%d:", i);
        if (res[i].status == ENGINE_REJECTED)
            printf(" rejected: %s", res[i].reason);
        if (text && res[i].status == ENGINE_DONE) { /* the generated text, escaped onto one line */
            char *s = tokenizer_decode_generation(&tok, reqs[i].prompt, reqs[i].n_prompt, res[i].tokens,
                                                  res[i].n_tokens, 0);
            char *e = text_escape(s);
            printf(" %s", e);
            free(s), free(e);
        }
        for (int t = 0; t < res[i].n_tokens && !text; t++)
            printf(" %d", res[i].tokens[t]);
        printf("\n");
    }
    stdout_flush_or_die(); /* the results are out, or the run fails here: never "N served" for lost lines */
    if (metrics_path) {
        Tsv t = met_tsv;
        tsv_header(&t, "metric\tvalue");
        tsv_row(&t, "policy\t%s", engine_policy_name(o.policy));
        tsv_row(&t, "requests_served\t%d", mt.completed);
        tsv_row(&t, "requests_rejected\t%d", mt.rejected);
        tsv_row(&t, "output_tokens\t%ld", mt.generated);
        tsv_row(&t, "makespan_s\t%.6f", mt.makespan_s);
        tsv_row(&t, "throughput_tokens_per_s\t%.3f", mt.throughput);
        tsv_row(&t, "ttft_p50_s\t%.6f", mt.ttft_p50);
        tsv_row(&t, "ttft_p99_s\t%.6f", mt.ttft_p99);
        tsv_row(&t, "tpot_p50_s\t%.6f", mt.tpot_p50);
        tsv_row(&t, "tpot_p99_s\t%.6f", mt.tpot_p99);
        tsv_row(&t, "iterations\t%d", mt.iterations);
        tsv_row(&t, "mean_sequences_per_iteration\t%.3f", mt.mean_batch);
        tsv_row(&t, "peak_blocks\t%d", mt.peak_blocks);
        tsv_row(&t, "num_blocks\t%d", mt.num_blocks);
        tsv_row(&t, "preemptions\t%d", mt.preemptions);
        tsv_close(&t);
    }
    if (iter_path)
        write_iterations(&iter_tsv, &mt);
    /* the summary last: it is printed only when every output was written */
    char label[128];
    snprintf(label, sizeof label, "%s serve (%s, max-batch %d, %d tokens per step, %s)", PROG,
             engine_policy_name(o.policy), o.max_batch, o.max_tokens, device_name(dev));
    print_metrics(stderr, label, &mt);
    engine_free_results(res, n);
    engine_free_metrics(&mt);
    free(res);
    engine_free_requests(reqs, n);
    tokenizer_free(&tok);
    model_free(&m);
    return 0;
}

/* ==== gen-requests ================================================================================ */

static int cmd_gen_requests(int argc, char **argv)
{
    const char *out = NULL, *kind = "skewed";
    WorkloadSpec w = {200, 8.0, WORKLOAD_SKEWED, 32, 64, 0, 0, 1};
    int seed = 1;
    ModelConfig c = model_default_config();
    ArgSpec specs[] = {
        {.name = "out", .kind = ARG_STRING, .dest = &out, .metavar = "R.txt", .required = 1, .help = "the file to write"},
        {.name = "n", .kind = ARG_INT, .dest = &w.n, .metavar = "N", .help = "requests (default 200)", .min = 1,
         .max = 1 << 24},
        {.name = "rate", .kind = ARG_DOUBLE, .dest = &w.rate, .metavar = "R",
         .help = "Poisson arrivals per second (default 8; 0: all at time 0)", .min = 0, .max = 1e9},
        {.name = "workload", .kind = ARG_CHOICE, .dest = &kind, .choices = WORKLOAD_CHOICES,
         .help = "skewed (default): lognormal lengths, sigma 1; uniform: 1 .. 2 x the median"},
        {.name = "prompt-median", .kind = ARG_INT, .dest = &w.prompt_median, .metavar = "N",
         .help = "median prompt length (default 32)", .min = 1, .max = 1 << 20},
        {.name = "output-median", .kind = ARG_INT, .dest = &w.out_median, .metavar = "N",
         .help = "median output length (default 64)", .min = 1, .max = 1 << 20},
        {.name = "seed", .kind = ARG_INT, .dest = &seed, .metavar = "S", .help = "(default 1)", .min = 0,
         .max = 2147483647},
    };
    ArgCommand cmd = {PROG " gen-requests", "--out R.txt [options]",
                      "Writes a seeded workload for 'serve': Poisson arrivals, prompt and output lengths from the\n"
                      "chosen distribution (clipped so that prompt + output fits the built-in model's seq_len 2048),\n"
                      "prompt ids uniform over its vocabulary of 1024.",
                      specs, (int)(sizeof specs / sizeof specs[0])};
    args_parse_or_exit(&cmd, argc, argv);
    w.kind = strcmp(kind, "uniform") == 0 ? WORKLOAD_UNIFORM : WORKLOAD_SKEWED;
    w.seq_len = c.seq_len, w.vocab = c.vocab_size, w.seed = (uint64_t)seed;
    EngineRequest *reqs;
    if (file_check_output(out) != 0 || engine_make_workload(&w, &reqs) != 0 || engine_write_requests(out, reqs, w.n) != 0)
        die_with_error();
    long prompt = 0, output = 0;
    for (int i = 0; i < w.n; i++)
        prompt += reqs[i].n_prompt, output += reqs[i].max_new;
    fprintf(stderr, "%s gen-requests: %d %s requests over %.1f s into %s: mean prompt %.1f, mean output %.1f tokens\n",
            PROG, w.n, kind, reqs[w.n - 1].arrival, out, (double)prompt / w.n, (double)output / w.n);
    engine_free_requests(reqs, w.n);
    return 0;
}

/* ==== verify: the engine against chapter 05 alone ================================================= */

/* Every request of reqs through chapter 05's paged_generate alone: want[i] (max_new ids). */
static int **single_runs(const Model *m, const EngineRequest *reqs, int n, float temperature, uint64_t seed)
{
    int **want = calloc((size_t)n, sizeof(int *));
    for (int i = 0; i < n; i++) {
        want[i] = malloc(((size_t)reqs[i].max_new + 1) * sizeof(int));
        PagedGenOptions g = {reqs[i].max_new, temperature, seed + (uint64_t)i, 1, 16, 0, 2, 0, 0};
        if (reqs[i].max_new > 0 && (long)reqs[i].n_prompt + reqs[i].max_new <= m->c.seq_len &&
            paged_generate(m, reqs[i].prompt, reqs[i].n_prompt, &g, want[i], NULL) != 0)
            die_with_error();
    }
    return want;
}

/* One verify line: the greedy tokens of every request served alone on the GPU against chapter
 * 05 alone on the CPU -- identical, or parting where the CPU's two best logits are a near-tie. */
static void record_cpu_agreement(VerifyTally *tally, const Model *m, const EngineRequest *reqs, int n, int *const *cpu,
                                 int *const *gpu, int wl)
{
    int same = 0, ties = 0, apart = 0;
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        if (!gpu[i] || reqs[i].max_new == 0)
            continue;
        double gap = 0.0;
        const int at = kvcache_greedy_divergence(m, reqs[i].prompt, reqs[i].n_prompt, cpu[i], gpu[i], reqs[i].max_new,
                                                 &gap);
        if (at == -2)
            die_with_error();
        if (at == -1) {
            same++;
            continue;
        }
        worst = fmax(worst, gap);
        if (gap <= KVCACHE_NEAR_TIE)
            ties++;
        else
            apart++;
    }
    verify_record(tally, apart == 0,
                  "cuda alone against chapter 05 alone on the CPU, greedy, %s: %d requests identical, %d part at a "
                  "near-tie, %d part where the logits are clearly apart (largest gap %.1e; a near-tie is within %.0e)",
                  wl ? "arrivals over time" : "all at once", same, ties, apart, worst,
                  KVCACHE_NEAR_TIE);
}

typedef struct {
    const char *name;
    EnginePolicy policy;
    int max_batch, max_tokens, block_size, num_blocks;
} VerifyConfig;

static int cmd_verify(int argc, char **argv)
{
    const char *device = "auto";
    int verbose = 0, quick = 0, smoke = 0;
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "auto: the CPU engine, and the GPU forward when a GPU is present"},
        {.name = "quick", .kind = ARG_FLAG, .dest = &quick,
         .help = "one workload, greedy only (for sanitizers)"},
        {.name = "smoke", .kind = ARG_FLAG, .dest = &smoke, .help = "--quick with 10 requests, not 24 (for valgrind)"},
        {.name = "verbose", .kind = ARG_FLAG, .dest = &verbose, .help = "print passing cases too"},
    };
    ArgCommand cmd = {PROG " verify", "[options]",
                      "Serves built-in workloads (a small random model; skewed lengths; requests arriving together\n"
                      "and over time; one that can never fit) under continuous and static batching, max-batch 1, 4\n"
                      "and 32, a small token budget (chunked prefill), a tight pool (preemption), shuffled blocks\n"
                      "and temperature sampling, and checks every request's tokens against chapter 05's\n"
                      "paged_generate run on it alone. On the GPU (its own batch-invariant arithmetic): against the\n"
                      "request served alone on the GPU, and that, greedy, against chapter 05 on the CPU up to\n"
                      "near-ties. Ends with 'N passed, N failed'.",
                      specs, 4};
    args_parse_or_exit(&cmd, argc, argv);
    quick |= smoke;
    char why[256];
    const int have_gpu = HAVE_CUDA && device_cuda_available(why, sizeof why);
    if (strcmp(device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    if (!have_gpu && strcmp(device, "cpu") != 0)
        printf("the GPU forward skipped: %s\n", HAVE_CUDA ? why : "a build without CUDA");
    const int dev_first = strcmp(device, "cuda") == 0, dev_last = have_gpu && strcmp(device, "cpu") != 0;
    ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 101,
                     .seq_len = 256, .shared_classifier = 0};
    Model m;
    if (model_init_random(&m, &c, 11) != 0)
        die_with_error();
    const VerifyConfig cfgs[] = {
        {"continuous", ENGINE_CONTINUOUS, 32, 256, 16, 0},  {"continuous", ENGINE_CONTINUOUS, 4, 256, 16, 0},
        {"continuous", ENGINE_CONTINUOUS, 1, 256, 16, 0},   {"static", ENGINE_STATIC, 32, 256, 16, 0},
        {"static", ENGINE_STATIC, 4, 256, 16, 0},           {"chunked", ENGINE_CONTINUOUS, 32, 7, 16, 0},
        {"tight pool", ENGINE_CONTINUOUS, 32, 64, 4, 40},   {"tight pool", ENGINE_STATIC, 8, 64, 4, 40},
        {"tight, bs 1", ENGINE_CONTINUOUS, 16, 32, 1, 150},
    };
    VerifyTally tally = {0, 0, verbose};
    for (int wl = 0; wl < (quick ? 1 : 2); wl++) {
        WorkloadSpec w = {smoke ? 10 : 24, wl ? 40.0 : 0.0, WORKLOAD_SKEWED, 12, 16, c.seq_len, c.vocab_size, 100 + (uint64_t)wl};
        EngineRequest *reqs;
        if (engine_make_workload(&w, &reqs) != 0)
            die_with_error();
        /* one more request that can never run: its prompt and output exceed seq_len */
        reqs = realloc(reqs, (size_t)(w.n + 1) * sizeof(EngineRequest));
        reqs[w.n] = (EngineRequest){0.05, 100, 200, calloc(200, sizeof(int)), 0.0, NULL};
        w.n++;
        for (int t = 0; t < (quick ? 1 : 2); t++) {
            const float temperature = t ? 0.9f : 0.0f;
            int **want = single_runs(&m, reqs, w.n, temperature, 7);
            /* On the GPU the reference is each request served alone on the GPU (its forward is
             * batch-invariant in its own arithmetic, not the CPU's: engine.cu); that reference
             * must in turn agree with chapter 05 on the CPU up to near-ties (greedy). */
            int **want_gpu = NULL;
            if (dev_last) {
                EngineOptions og = engine_default_options();
                og.cuda = 1, og.temperature = temperature, og.seed = 7, og.fixed_step_s = 0.01;
                const int rc = engine_serve_alone(&m, reqs, w.n, &og, &want_gpu);
                if (rc == 0 && t == 0)
                    record_cpu_agreement(&tally, &m, reqs, w.n, want, want_gpu, wl);
                else if (rc != 0)
                    verify_record(&tally, 0, "cuda every request served alone, %s: %s",
                                  wl ? "arrivals over time" : "all at once", error_message());
            }
            for (int on_gpu = dev_first; on_gpu <= (want_gpu ? dev_last : 0); on_gpu++)
            for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
                EngineOptions o = engine_default_options();
                o.cuda = on_gpu;
                o.policy = cfgs[ci].policy, o.max_batch = cfgs[ci].max_batch, o.max_tokens = cfgs[ci].max_tokens;
                o.block_size = cfgs[ci].block_size, o.num_blocks = cfgs[ci].num_blocks;
                o.temperature = temperature, o.seed = 7, o.fixed_step_s = 0.01, o.shuffle = ci;
                EngineResult *res = calloc((size_t)w.n, sizeof(EngineResult));
                EngineMetrics mt;
                const int rc = engine_serve(&m, reqs, w.n, &o, res, &mt);
                int same = rc == 0, rejected = 0;
                for (int i = 0; i < w.n && rc == 0; i++) {
                    if (res[i].status == ENGINE_REJECTED) {
                        rejected++;
                        same &= i == w.n - 1; /* only the one that cannot fit */
                        continue;
                    }
                    same &= i != w.n - 1;
                    same &= res[i].n_tokens == reqs[i].max_new &&
                            memcmp(res[i].tokens, on_gpu ? want_gpu[i] : want[i], (size_t)reqs[i].max_new * sizeof(int)) == 0;
                }
                char blocks[16] = "all";
                if (o.num_blocks)
                    snprintf(blocks, sizeof blocks, "%d", o.num_blocks);
                verify_record(&tally, same, "%s %-12s %-10s max-batch %2d, %3d tokens/step, bs %2d, %4s blocks, %s, %s: "
                              "%d requests, %d rejected, %d preemptions%s%s",
                              on_gpu ? "cuda" : "cpu ", cfgs[ci].name, engine_policy_name(o.policy), o.max_batch,
                              o.max_tokens, o.block_size, blocks, wl ? "arrivals over time" : "all at once",
                              t ? "T=0.9" : "greedy", w.n, rejected, rc == 0 ? mt.preemptions : -1,
                              rc ? ": " : "", rc ? error_message() : "");
                engine_free_results(res, w.n);
                if (rc == 0)
                    engine_free_metrics(&mt);
                free(res);
            }
            for (int i = 0; i < w.n; i++)
                free(want[i]);
            free(want);
            engine_free_tokens(want_gpu, w.n);
        }
        engine_free_requests(reqs, w.n);
    }
    model_free(&m);
    return verify_finish(&tally);
}

/* ==== the lesson and bench: serving a workload under both policies ================================= */

typedef struct {
    EngineMetrics mt;
    double wall_s;
} ServeRun;

static int g_cuda; /* serve_once runs the forward on the GPU */

static ServeRun serve_once(const Model *m, const EngineRequest *reqs, int n, EnginePolicy policy, int max_batch,
                           int num_blocks, int keep_log)
{
    EngineOptions o = engine_default_options();
    o.policy = policy, o.max_batch = max_batch, o.num_blocks = num_blocks, o.keep_log = keep_log, o.cuda = g_cuda;
    EngineResult *res = calloc((size_t)n, sizeof(EngineResult));
    ServeRun r;
    const double t0 = timer_now();
    if (engine_serve(m, reqs, n, &o, res, &r.mt) != 0)
        die_with_error();
    r.wall_s = timer_now() - t0;
    engine_free_results(res, n);
    free(res);
    return r;
}

static void lesson_compare(const Model *m, char *dat, size_t dat_len)
{
    WorkloadSpec w = {48, 20.0, WORKLOAD_SKEWED, 24, 48, m->c.seq_len, m->c.vocab_size, 1};
    EngineRequest *reqs;
    if (engine_make_workload(&w, &reqs) != 0)
        die_with_error();
    long out = 0;
    for (int i = 0; i < w.n; i++)
        out += reqs[i].max_new;
    ServeRun st = serve_once(m, reqs, w.n, ENGINE_STATIC, 16, 0, 1);
    ServeRun ct = serve_once(m, reqs, w.n, ENGINE_CONTINUOUS, 16, 0, 1);
    printf("1. One workload, both policies. %d requests arriving at %.0f per second (Poisson) over %.1f s, skewed\n"
           "   lengths (lognormal, medians %d prompt and %d output tokens: %ld output tokens in all), max-batch 16,\n"
           "   256 tokens per step, the built-in model on the CPU.\n\n"
           "   %-34s %14s %14s\n",
           w.n, w.rate, reqs[w.n - 1].arrival, w.prompt_median, w.out_median, out, "", "static", "continuous");
    const struct {
        const char *name, *fmt;
        double a, b;
    } rows[] = {
        {"output tokens/s", "%14.1f", st.mt.throughput, ct.mt.throughput},
        {"time to serve everything (s)", "%14.2f", st.mt.makespan_s, ct.mt.makespan_s},
        {"TTFT p50 (s)", "%14.3f", st.mt.ttft_p50, ct.mt.ttft_p50},
        {"TTFT p99 (s)", "%14.3f", st.mt.ttft_p99, ct.mt.ttft_p99},
        {"time per output token p50 (ms)", "%14.1f", st.mt.tpot_p50 * 1e3, ct.mt.tpot_p50 * 1e3},
        {"time per output token p99 (ms)", "%14.1f", st.mt.tpot_p99 * 1e3, ct.mt.tpot_p99 * 1e3},
        {"iterations", "%14.0f", st.mt.iterations, ct.mt.iterations},
        {"sequences per iteration (mean)", "%14.1f", st.mt.mean_batch, ct.mt.mean_batch},
        {"peak blocks in use", "%14.0f", st.mt.peak_blocks, ct.mt.peak_blocks},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        printf("   %-34s", rows[i].name);
        printf(rows[i].fmt, rows[i].a);
        printf(rows[i].fmt, rows[i].b);
        printf("\n");
    }
    printf("\n   Continuous batching: x%.2f the throughput, p99 TTFT x%.2f of static's.\n\n",
           ct.mt.throughput / st.mt.throughput, ct.mt.ttft_p99 / st.mt.ttft_p99);
    /* occupancy over time, both policies, for the plot */
    paths_in_build(dat, dat_len, "bench", PROG "_occupancy.dat");
    Tsv t;
    if (tsv_open(&t, "/dev/null", dat) != 0)
        die_with_error();
    tsv_header(&t, "policy\tclock_s\tscheduled\tblocks_used");
    for (int p = 0; p < 2; p++) {
        const EngineMetrics *mt = p ? &ct.mt : &st.mt;
        for (int i = 0; i < mt->iterations; i++)
            tsv_row(&t, "%s\t%.5f\t%d\t%d", p ? "continuous" : "static", mt->log[i].clock_s, mt->log[i].scheduled,
                    mt->log[i].blocks_used);
        tsv_row(&t, " ");
    }
    tsv_close(&t);
    engine_free_metrics(&st.mt), engine_free_metrics(&ct.mt);
    engine_free_requests(reqs, w.n);
}

/* Throughput and p99 TTFT against the arrival rate, both policies: rows into tsv, all static
 * rows first, then all continuous ones (so that a plot joins each policy's points). */
static void rate_sweep(const Model *m, Tsv *tsv, const double *rates, int n_rates, int n_req, int max_batch,
                       double *ratio_at_top)
{
    EngineMetrics *res = calloc((size_t)(2 * n_rates), sizeof(EngineMetrics));
    for (int ri = 0; ri < n_rates; ri++) {
        WorkloadSpec w = {n_req, rates[ri], WORKLOAD_SKEWED, 24, 48, m->c.seq_len, m->c.vocab_size, 7};
        EngineRequest *reqs;
        if (engine_make_workload(&w, &reqs) != 0)
            die_with_error();
        for (int p = 0; p < 2; p++) {
            bench_progress("rate %.0f/s, %s ...", rates[ri], p ? "continuous" : "static");
            res[p * n_rates + ri] = serve_once(m, reqs, n_req, p ? ENGINE_CONTINUOUS : ENGINE_STATIC, max_batch, 0, 0).mt;
        }
        engine_free_requests(reqs, n_req);
    }
    bench_progress_done();
    for (int p = 0; p < 2; p++)
        for (int ri = 0; ri < n_rates; ri++) {
            EngineMetrics *r = &res[p * n_rates + ri];
            tsv_row(tsv, "%s\t%.1f\t%d\t%d\t%.2f\t%.4f\t%.4f\t%.2f\t%.2f\t%.2f\t%d\tbuiltin", p ? "continuous" : "static",
                    rates[ri], n_req, max_batch, r->throughput, r->ttft_p50, r->ttft_p99, r->tpot_p50 * 1e3,
                    r->tpot_p99 * 1e3, r->mean_batch, r->preemptions);
            engine_free_metrics(r);
        }
    if (ratio_at_top)
        *ratio_at_top = res[2 * n_rates - 1].throughput / res[n_rates - 1].throughput;
    free(res);
}

static void lesson_sweep(const Model *m, char *dat, size_t dat_len)
{
    const double rates[] = {2, 8, 32, 128};
    paths_in_build(dat, dat_len, "bench", PROG "_lesson.dat");
    Tsv t;
    if (tsv_open(&t, "/dev/null", dat) != 0)
        die_with_error();
    tsv_header(&t, "policy\trate\trequests\tmax_batch\ttokens_per_s\tttft_p50_s\tttft_p99_s\ttpot_p50_ms\ttpot_p99_ms\t"
                   "mean_batch\tpreemptions\tmodel");
    rate_sweep(m, &t, rates, 4, 24, 16, NULL);
    tsv_close(&t);
    printf("2. The arrival rate swept (24 requests each, skewed lengths, max-batch 16):\n\n"
           "   %8s %12s %14s %14s %12s\n", "rate/s", "policy", "tokens/s", "TTFT p99 (s)", "batch");
    FILE *f = fopen(dat, "r");
    char line[512], pol[4][32];
    double v[2][4][3];
    int k = 0;
    while (f && fgets(line, sizeof line, f) && k < 8) {
        double rate, thr, p50, p99, tp50, tp99, mb;
        int nr, mbt, pre;
        if (line[0] == '#' || sscanf(line, "%31s %lf %d %d %lf %lf %lf %lf %lf %lf %d", pol[k % 4], &rate, &nr, &mbt,
                                     &thr, &p50, &p99, &tp50, &tp99, &mb, &pre) != 11)
            continue;
        v[k / 4][k % 4][0] = thr, v[k / 4][k % 4][1] = p99, v[k / 4][k % 4][2] = mb;
        k++;
    }
    if (f)
        fclose(f);
    for (int ri = 0; ri < 4 && k == 8; ri++)
        for (int p = 0; p < 2; p++)
            printf("   %8.0f %12s %14.1f %14.3f %12.1f\n", rates[ri], p ? "continuous" : "static", v[p][ri][0],
                   v[p][ri][1], v[p][ri][2]);
    printf("\n   At low rates both policies have little to batch and wait for arrivals; as the rate grows the\n"
           "   static batches fill, but each one runs until its longest request ends while its finished\n"
           "   slots stay empty and new arrivals queue; continuous batching refills the slots at once.\n\n");
}

static void lesson_preemption(const Model *m)
{
    WorkloadSpec w = {16, 0.0, WORKLOAD_SKEWED, 24, 48, m->c.seq_len, m->c.vocab_size, 3};
    EngineRequest *reqs;
    if (engine_make_workload(&w, &reqs) != 0)
        die_with_error();
    int longest = 0;
    for (int i = 0; i < w.n; i++) {
        const int need = paged_blocks_for_request(reqs[i].n_prompt, reqs[i].max_new, 1, 16);
        longest = need > longest ? need : longest;
    }
    const int pools[3] = {0, 4 * longest, longest};
    printf("3. Preemption: the same %d requests (all at once, max-batch 16) with smaller and smaller pools. The\n"
           "   longest request needs %d blocks of 16 tokens; a pool of that size still serves everyone, one\n"
           "   preemption (by recompute) at a time.\n\n   %12s %12s %14s %14s %12s\n",
           w.n, longest, "blocks", "peak used", "preemptions", "tokens/s", "same tokens");
    int **ref_tokens = calloc((size_t)w.n, sizeof(int *));
    for (int p = 0; p < 3; p++) {
        EngineOptions o = engine_default_options();
        o.max_batch = 16, o.num_blocks = pools[p];
        EngineResult *res = calloc((size_t)w.n, sizeof(EngineResult));
        EngineMetrics mt;
        if (engine_serve(m, reqs, w.n, &o, res, &mt) != 0)
            die_with_error();
        int same = 1;
        if (p == 0) {
            for (int i = 0; i < w.n; i++) {
                ref_tokens[i] = malloc(((size_t)res[i].n_tokens + 1) * sizeof(int));
                memcpy(ref_tokens[i], res[i].tokens, (size_t)res[i].n_tokens * sizeof(int));
            }
        } else {
            for (int i = 0; i < w.n; i++)
                same &= memcmp(ref_tokens[i], res[i].tokens, (size_t)res[i].n_tokens * sizeof(int)) == 0;
        }
        printf("   %12d %12d %14d %14.1f %12s\n", mt.num_blocks, mt.peak_blocks, mt.preemptions, mt.throughput,
               p == 0 ? "(reference)" : same ? "yes" : "NO");
        engine_free_results(res, w.n);
        engine_free_metrics(&mt);
        free(res);
    }
    for (int i = 0; i < w.n; i++)
        free(ref_tokens[i]);
    free(ref_tokens);
    printf("\n   Every request gets the same tokens whatever the pool: the forward is batch-invariant, so a\n"
           "   recomputed prefix gives bit for bit the K/V it had.\n\n");
    engine_free_requests(reqs, w.n);
}

static int cmd_lesson(int argc, char **argv)
{
    const char *device = "auto";
    ArgSpec specs[] = {
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "where to run (the engine runs on the CPU)"},
    };
    ArgCommand cmd = {PROG, "[serve|gen-requests|verify|bench] [options]",
                      "Chapter 06: continuous batching. Without a subcommand: the lesson.\n"
                      "Subcommands (each takes --help):\n"
                      "  serve         a requests file in, every request's tokens out, metrics on stderr\n"
                      "  gen-requests  write a seeded workload (Poisson arrivals, skewed or uniform lengths)\n"
                      "  verify        the engine against chapter 05 alone, request by request, on a grid of settings\n"
                      "  bench         throughput and latency against the arrival rate; batch 32 against one sequence",
                      specs, 1};
    args_parse_or_exit(&cmd, argc, argv);
    Device dev;
    if (device_resolve(device, &dev) != 0)
        die_with_error();
    Model m;
    load_model(NULL, &m);
    printf("Chapter 06: continuous batching\n===============================\n\n"
           "A server gets requests at random times, with prompts and outputs of every length. Static batching\n"
           "takes a batch and runs it to the end of its longest request. Continuous batching decides again at\n"
           "every iteration: finished sequences leave, waiting ones join while the batch size, the token\n"
           "budget and the free blocks allow, long prompts go in chunks, and when blocks run out the newest\n"
           "sequence is preempted and recomputed later. Each iteration is one forward over every scheduled\n"
           "token of every sequence, with attention through chapter 05's block tables.\n\n"
           "Machine: %s. Model: the built-in one (chapter 04). The clock advances by each iteration's measured\n"
           "time and skips idle gaps.\n\n",
           roofline_machine());
    char dat[4096];
    lesson_compare(&m, dat, sizeof dat);
    plot_show(PROG, "occupancy", dat, 1, stdout, "   ", "\n\n");
    lesson_sweep(&m, dat, sizeof dat);
    plot_show(PROG, "lesson", dat, 0, stdout, "   ", "\n\n");
    lesson_preemption(&m);
    printf("Take-away: the engine's work per iteration is one batched forward; continuous batching keeps that\n"
           "batch full, chunked prefill bounds each iteration's work, and paging plus preemption lets the pool\n"
           "run full without ever failing a request that fits.\n");
    (void)dev;
    model_free(&m);
    return 0;
}

static int cmd_bench(int argc, char **argv)
{
    const char *out = NULL, *device = "auto", *checkpoint = NULL;
    int n_req = 96, single_tokens = 128;
    ArgSpec specs[] = {
        {.name = "out", .kind = ARG_STRING, .dest = &out, .metavar = "FILE", .help = "rows to FILE instead of stdout"},
        {.name = "checkpoint", .kind = ARG_STRING, .dest = &checkpoint, .metavar = "M.bin",
         .help = "also time chapters 04, 05 and 06 on this llama2.c checkpoint (e.g. stories15M.bin)"},
        {.name = "requests", .kind = ARG_INT, .dest = &n_req, .metavar = "N",
         .help = "requests per point of the rate sweep (default 96)", .min = 4, .max = 1 << 20},
        {.name = "device", .kind = ARG_CHOICE, .dest = &device, .choices = DEVICE_CHOICES,
         .help = "auto: the CPU, and batch scaling on the GPU too when there is one"},
    };
    ArgCommand cmd = {PROG " bench", "[options]",
                      "(1) The rate sweep: skewed workloads (lognormal lengths, medians 24 prompt and 48 output\n"
                      "tokens) at 4, 16, 64 and 256 requests per second, static and continuous batching, max-batch 32.\n"
                      "(2) Batch 32 against one sequence: 32 requests of 16 prompt tokens and 128 new tokens, all at\n"
                      "once, through the engine, against chapter 05's generate on one of them. (3) Batch scaling\n"
                      "(policy 'batch_scaling', and 'batch_scaling_cuda' with the forward on a GPU when there is one):\n"
                      "b = 1 .. 32 sequences decoding together; tpot_p50_ms is then the time of one iteration.\n"
                      "(4) Tokens/s of one sequence through chapters 04, 05 and 06, and of 32 through the engine\n"
                      "(ch04_generate, ch05_generate, ch06_engine), on the built-in model and on --checkpoint.\n"
                      "Columns: policy rate requests max_batch tokens_per_s ttft_p50_s ttft_p99_s tpot_p50_ms\n"
                      "tpot_p99_ms mean_batch preemptions model.",
                      specs, 4};
    args_parse_or_exit(&cmd, argc, argv);
    if (strcmp(device, "cuda") == 0 && checkpoint) /* --device cuda times the GPU rows only */
        die("--checkpoint is timed on the CPU, and --device cuda runs the GPU rows only: give --device auto to time "
            "both");
    /* everything that can fail is checked before any output is opened or anything is timed: the
     * device, the checkpoint (loaded now, not after the sweep), then the outputs themselves */
    char why[256];
    const int have_gpu = HAVE_CUDA && device_cuda_available(why, sizeof why) && strcmp(device, "cpu") != 0;
    if (strcmp(device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", HAVE_CUDA ? why : "a build without CUDA");
    Model m, cm;
    if (checkpoint)
        load_model(checkpoint, &cm);
    load_model(NULL, &m);
    char dat[4096];
    paths_in_build(dat, sizeof dat, "bench", PROG "_bench.dat");
    Tsv tsv; /* rows go to temporary files renamed into place at the end: --out and the .dat */
    if (tsv_open(&tsv, out, dat) != 0)
        die_with_error();
    fprintf(stderr, "%s bench on %s\n", PROG, roofline_machine());
    tsv_header(&tsv, "policy\trate\trequests\tmax_batch\ttokens_per_s\tttft_p50_s\tttft_p99_s\ttpot_p50_ms\t"
                     "tpot_p99_ms\tmean_batch\tpreemptions\tmodel");
    const int use_cpu = strcmp(device, "cuda") != 0;
    const double rates[] = {4, 16, 64, 256};
    double ratio = NAN;
    if (use_cpu)
        rate_sweep(&m, &tsv, rates, 4, n_req, 32, &ratio);
    /* what a fuller batch buys on this machine: decode iterations of b sequences (and on the GPU) */
    const int bsz[6] = {1, 2, 4, 8, 16, 32};
    for (int on_gpu = use_cpu ? 0 : 1; on_gpu <= have_gpu; on_gpu++)
        for (int bi = 0; bi < 6; bi++) {
            EngineRequest *br = calloc((size_t)bsz[bi], sizeof(EngineRequest));
            for (int i = 0; i < bsz[bi]; i++) {
                br[i] = (EngineRequest){0.0, 64, 16, malloc(16 * sizeof(int)), 0.0, NULL};
                for (int t = 0; t < 16; t++)
                    br[i].prompt[t] = (i * 37 + t * 11 + 2) % m.c.vocab_size;
            }
            bench_progress("decode iterations of %d sequences on the %s ...", bsz[bi], on_gpu ? "GPU" : "CPU");
            g_cuda = on_gpu;
            ServeRun b = serve_once(&m, br, bsz[bi], ENGINE_CONTINUOUS, bsz[bi], 0, 0);
            g_cuda = 0;
            tsv_row(&tsv, "batch_scaling%s\t0\t%d\t%d\t%.2f\t%.4f\t%.4f\t%.2f\t%.2f\t%.2f\t%d\tbuiltin", on_gpu ? "_cuda" : "",
                    bsz[bi], bsz[bi], b.mt.throughput, b.mt.ttft_p50, b.mt.ttft_p99, b.mt.tpot_p50 * 1e3,
                    b.mt.tpot_p99 * 1e3, b.mt.mean_batch, b.mt.preemptions);
            engine_free_metrics(&b.mt);
            engine_free_requests(br, bsz[bi]);
        }
    if (!use_cpu) { /* --device cuda: the GPU rows only */
        bench_progress_done();
        tsv_close(&tsv);
        model_free(&m);
        return 0;
    }
    /* tokens/s of chapters 04, 05 and 06 on the built-in model (and on --checkpoint): one
     * sequence of 16 + 128 tokens through each, and 32 of them through the engine */
    double single = NAN, batch32 = NAN;
    for (int mi = 0; mi < (checkpoint ? 2 : 1); mi++) {
        const Model *mm = mi ? &cm : &m;
        const char *name = mi ? checkpoint : "builtin";
        const int new_tokens = single_tokens < mm->c.seq_len - 16 ? single_tokens : mm->c.seq_len - 16;
        EngineRequest *reqs = calloc(32, sizeof(EngineRequest));
        for (int i = 0; i < 32; i++) {
            reqs[i] = (EngineRequest){0.0, new_tokens, 16, malloc(16 * sizeof(int)), 0.0, NULL};
            for (int t = 0; t < 16; t++)
                reqs[i].prompt[t] = (i * 131 + t * 17 + 1) % mm->c.vocab_size;
        }
        int *toks = malloc((size_t)new_tokens * sizeof(int));
        bench_progress("%s: one sequence through chapter 04 ...", name);
        GenOptions g4 = {new_tokens, 0.0f, 0, 1, KV_F32, 2, 0, 0};
        double t0 = timer_now();
        if (kvcache_generate(mm, reqs[0].prompt, 16, &g4, toks, NULL) != 0)
            die_with_error();
        const double ch4 = new_tokens / (timer_now() - t0);
        bench_progress("%s: one sequence through chapter 05 ...", name);
        PagedGenOptions g5 = {new_tokens, 0.0f, 0, 1, 16, 0, 2, 0, 0};
        t0 = timer_now();
        if (paged_generate(mm, reqs[0].prompt, 16, &g5, toks, NULL) != 0)
            die_with_error();
        const double ch5 = new_tokens / (timer_now() - t0);
        bench_progress("%s: one and 32 sequences through the engine ...", name);
        ServeRun one = serve_once(mm, reqs, 1, ENGINE_CONTINUOUS, 1, 0, 0);
        ServeRun r = serve_once(mm, reqs, 32, ENGINE_CONTINUOUS, 32, 0, 0);
        tsv_row(&tsv, "ch04_generate\t0\t1\t1\t%.2f\tnan\tnan\t%.2f\tnan\t1\t0\t%s", ch4, 1e3 / ch4, name);
        tsv_row(&tsv, "ch05_generate\t0\t1\t1\t%.2f\tnan\tnan\t%.2f\tnan\t1\t0\t%s", ch5, 1e3 / ch5, name);
        const ServeRun *runs[2] = {&one, &r};
        for (int k = 0; k < 2; k++)
            tsv_row(&tsv, "ch06_engine\t0\t%d\t%d\t%.2f\t%.4f\t%.4f\t%.2f\t%.2f\t%.2f\t%d\t%s", k ? 32 : 1, k ? 32 : 1,
                    runs[k]->mt.throughput, runs[k]->mt.ttft_p50, runs[k]->mt.ttft_p99, runs[k]->mt.tpot_p50 * 1e3,
                    runs[k]->mt.tpot_p99 * 1e3, runs[k]->mt.mean_batch, runs[k]->mt.preemptions, name);
        fprintf(stderr, "%s: tokens/s, one sequence: chapter 04 %.1f, chapter 05 %.1f, chapter 06 %.1f; the engine at "
                        "batch 32: %.1f (x%.2f chapter 05)\n",
                name, ch4, ch5, one.mt.throughput, r.mt.throughput, r.mt.throughput / ch5);
        if (mi == 0)
            single = ch5, batch32 = r.mt.throughput;
        engine_free_metrics(&one.mt), engine_free_metrics(&r.mt);
        free(toks);
        engine_free_requests(reqs, 32);
        if (mi == 1)
            model_free(&cm);
    }
    bench_progress_done();
    tsv_close(&tsv);
    fprintf(stderr,
            "targets: skewed workload at %.0f requests/s, max-batch 32: continuous batching x%.2f the throughput of "
            "static (target >= x2)\n",
            rates[3], ratio);
    fprintf(stderr, "targets: the engine at batch 32: %.1f tokens/s, one sequence (chapter 05): %.1f tokens/s: x%.2f "
                    "(target >= x5)\n",
            batch32, single, batch32 / single);
    plot_show(PROG, "bench", dat, 0, stderr, PROG " bench: ", "\n");
    model_free(&m);
    return 0;
}

/* ==== main ========================================================================================= */

int main(int argc, char **argv)
{
    error_set_program(PROG);
    if (argc > 1 && strcmp(argv[1], "serve") == 0)
        return cmd_serve(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "gen-requests") == 0)
        return cmd_gen_requests(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "verify") == 0)
        return cmd_verify(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "bench") == 0)
        return cmd_bench(argc - 1, argv + 1);
    if (argc > 1 && argv[1][0] != '-')
        die("unknown subcommand '%s' (expected serve, gen-requests, verify or bench; see '%s --help')", argv[1], PROG);
    return cmd_lesson(argc, argv);
}
