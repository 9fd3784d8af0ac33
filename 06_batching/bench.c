/*
 * bench.c: chapter 06's bench subcommand, and the serving runs the lesson shares with it.
 *
 *   06_batching bench   (1) the rate sweep: throughput and latency against the arrival rate,
 *                       static and continuous batching; (2) batch scaling: decode iterations of
 *                       b = 1 .. 32 sequences (and on the GPU); (3) tokens/s of one sequence
 *                       through chapters 04, 05 and 06 and of 32 through the engine, on the
 *                       built-in model and on --checkpoint (default: $CHECKPOINT).
 *                       TSV rows + build/bench/06_batching_bench.dat + build/plots/06_batching_bench.png
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "06_batching/commands.h"
#include "common/args.h"
#include "common/error.h"
#include "common/program.h"
#include "common/tensor.h"
#include "common/timer.h"

/* ==== serving runs ================================================================================ */

EngineRequest *engine_skewed_requests(const Model *m, int n, double rate, uint64_t seed)
{
    const WorkloadSpec w = {.n = n, .rate = rate, .kind = WORKLOAD_SKEWED, .prompt_median = ENGINE_PROMPT_MEDIAN,
                            .out_median = ENGINE_OUT_MEDIAN, .seq_len = m->c.seq_len, .vocab = m->c.vocab_size,
                            .seed = seed};
    EngineRequest *reqs;
    if (engine_make_workload(&w, &reqs) != 0)
        die_with_error();
    return reqs;
}

EngineMetrics engine_serve_once(const Model *m, const EngineRequest *reqs, int n, EnginePolicy policy, int max_batch,
                                int num_blocks, int keep_log, int cuda)
{
    EngineOptions o = engine_default_options();
    o.policy = policy, o.max_batch = max_batch, o.num_blocks = num_blocks, o.keep_log = keep_log, o.cuda = cuda;
    EngineResult *res = mem_alloc_or_die((size_t)n * sizeof(EngineResult), "results"); /* (n) */
    EngineMetrics mt;
    if (engine_serve(m, reqs, n, &o, res, &mt) != 0)
        die_with_error();
    engine_free_results(res, n);
    mem_free(res);
    return mt;
}

/* One row of the bench's table from a run's metrics. */
static void metrics_row(Tsv *tsv, const char *policy, double rate, int n_req, int max_batch, const EngineMetrics *r,
                        const char *model)
{
    tsv_row(tsv, "%s\t%.1f\t%d\t%d\t%.2f\t%.4f\t%.4f\t%.2f\t%.2f\t%.2f\t%d\t%s", policy, rate, n_req, max_batch,
            r->throughput, r->ttft_p50, r->ttft_p99, r->tpot_p50 * 1e3, r->tpot_p99 * 1e3, r->mean_batch,
            r->preemptions, model);
}

void engine_rate_sweep(const Model *m, Tsv *tsv, const double *rates, int n_rates, int n_req, int max_batch,
                       EngineMetrics *res)
{
    for (int ri = 0; ri < n_rates; ri++) {
        EngineRequest *reqs = engine_skewed_requests(m, n_req, rates[ri], 7);
        for (int p = 0; p < 2; p++) {
            bench_progress("rate %.0f/s, %s ...", rates[ri], p ? "continuous" : "static");
            res[p * n_rates + ri] =
                engine_serve_once(m, reqs, n_req, p ? ENGINE_CONTINUOUS : ENGINE_STATIC, max_batch, 0, 0, 0);
        }
        engine_free_requests(reqs, n_req);
    }
    bench_progress_done();
    for (int p = 0; p < 2 && tsv; p++)
        for (int ri = 0; ri < n_rates; ri++)
            metrics_row(tsv, p ? "continuous" : "static", rates[ri], n_req, max_batch, &res[p * n_rates + ri],
                        "builtin");
}

/* ==== bench ======================================================================================= */

/* n requests arriving at time 0, each of 16 prompt tokens, token t of request i being
 * (i * mult_i + t * mult_t + add) % vocab, and max_new new tokens. */
static EngineRequest *fixed_requests(int n, int max_new, int vocab, int mult_i, int mult_t, int add)
{
    EngineRequest *reqs = xcalloc((size_t)n, sizeof(EngineRequest), "requests");
    for (int i = 0; i < n; i++) {
        int *prompt = xmalloc(16 * sizeof(int), "a prompt");
        for (int t = 0; t < 16; t++)
            prompt[t] = (i * mult_i + t * mult_t + add) % vocab;
        reqs[i] = (EngineRequest){.arrival = 0.0, .max_new = max_new, .n_prompt = 16, .prompt = prompt,
                                  .abort_at = 0.0, .rejected = NULL};
    }
    return reqs;
}

/* What a fuller batch buys on this machine: decode iterations of b sequences together. */
static void bench_batch_scaling(const Model *m, Tsv *tsv, int on_gpu)
{
    const int bsz[6] = {1, 2, 4, 8, 16, 32};
    for (int bi = 0; bi < 6; bi++) {
        EngineRequest *br = fixed_requests(bsz[bi], 64, m->c.vocab_size, 37, 11, 2);
        bench_progress("decode iterations of %d sequences on the %s ...", bsz[bi], on_gpu ? "GPU" : "CPU");
        EngineMetrics b = engine_serve_once(m, br, bsz[bi], ENGINE_CONTINUOUS, bsz[bi], 0, 0, on_gpu);
        metrics_row(tsv, on_gpu ? "batch_scaling_cuda" : "batch_scaling", 0, bsz[bi], bsz[bi], &b, "builtin");
        engine_free_metrics(&b);
        engine_free_requests(br, bsz[bi]);
    }
}

/* Tokens/s of one sequence of 16 + 128 tokens through chapters 04, 05 and 06, and of 32 of them
 * through the engine, on model mm (called `name`): rows into tsv, a summary on stderr. *ch5 and
 * *batch32: chapter 05's and the engine's at batch 32. */
static void bench_chapters(const Model *mm, const char *name, Tsv *tsv, double *ch5_out, double *batch32_out)
{
    const int single_tokens = 128;
    const int new_tokens = single_tokens < mm->c.seq_len - 16 ? single_tokens : mm->c.seq_len - 16;
    EngineRequest *reqs = fixed_requests(32, new_tokens, mm->c.vocab_size, 131, 17, 1);
    int *toks = mem_alloc_or_die((size_t)new_tokens * sizeof(int), "generated tokens"); /* (new_tokens) */
    bench_progress("%s: one sequence through chapter 04 ...", name);
    const GenOptions g4 = {.max_new = new_tokens, .temperature = 0.0f, .seed = 0, .use_cache = 1, .dtype = KV_F32,
                           .kernel = 2, .prefill_chunk = 0, .stop_at_bos_eos = 0};
    double t0 = timer_now();
    if (kvcache_generate(mm, reqs[0].prompt, 16, &g4, toks, NULL) != 0)
        die_with_error();
    const double ch4 = new_tokens / (timer_now() - t0);
    bench_progress("%s: one sequence through chapter 05 ...", name);
    const PagedGenOptions g5 = {.max_new = new_tokens, .temperature = 0.0f, .seed = 0, .n_samples = 1,
                                .block_size = 16, .num_blocks = 0, .kernel = 2, .shuffle = 0, .stop_at_bos_eos = 0};
    t0 = timer_now();
    if (paged_generate(mm, reqs[0].prompt, 16, &g5, toks, NULL) != 0)
        die_with_error();
    const double ch5 = new_tokens / (timer_now() - t0);
    bench_progress("%s: one and 32 sequences through the engine ...", name);
    EngineMetrics one = engine_serve_once(mm, reqs, 1, ENGINE_CONTINUOUS, 1, 0, 0, 0);
    EngineMetrics r = engine_serve_once(mm, reqs, 32, ENGINE_CONTINUOUS, 32, 0, 0, 0);
    tsv_row(tsv, "ch04_generate\t0\t1\t1\t%.2f\tnan\tnan\t%.2f\tnan\t1\t0\t%s", ch4, 1e3 / ch4, name);
    tsv_row(tsv, "ch05_generate\t0\t1\t1\t%.2f\tnan\tnan\t%.2f\tnan\t1\t0\t%s", ch5, 1e3 / ch5, name);
    metrics_row(tsv, "ch06_engine", 0, 1, 1, &one, name);
    metrics_row(tsv, "ch06_engine", 0, 32, 32, &r, name);
    fprintf(stderr, "%s: tokens/s, one sequence: chapter 04 %.1f, chapter 05 %.1f, chapter 06 %.1f; the engine at "
                    "batch 32: %.1f (x%.2f chapter 05)\n",
            name, ch4, ch5, one.throughput, r.throughput, r.throughput / ch5);
    *ch5_out = ch5, *batch32_out = r.throughput;
    engine_free_metrics(&one), engine_free_metrics(&r);
    mem_free(toks);
    engine_free_requests(reqs, 32);
}

typedef struct {
    const char *out, *device, *checkpoint;
    int n_req;
    int checkpoint_given; /* --checkpoint on the command line, not from $CHECKPOINT */
} BenchArgs;

static void bench_parse(BenchArgs *a, int argc, char **argv)
{
    const char *env = getenv("CHECKPOINT"); /* make bench CHECKPOINT=M.bin passes it this way */
    *a = (BenchArgs){.out = NULL, .device = "auto", .checkpoint = env && *env ? env : NULL, .n_req = 96};
    ArgSpec specs[] = {
        OPTION_OUT(&a->out),
        {.name = "checkpoint", .kind = ARG_STRING, .dest = &a->checkpoint, .metavar = "M.bin",
         .help = "also time chapters 04, 05 and 06 on this llama2.c checkpoint (e.g. stories15M.bin; default: "
                 "$CHECKPOINT)",
         .given = &a->checkpoint_given},
        {.name = "requests", .kind = ARG_INT, .dest = &a->n_req, .metavar = "N",
         .help = "requests per point of the rate sweep (default 96)", .min = 4, .max = 1 << 20},
        OPTION_DEVICE(&a->device, "auto: the CPU, and batch scaling on the GPU too when there is one"),
    };
    args_parse_or_exit(&(const ArgCommand){
        .summary =
            "(1) The rate sweep: skewed workloads (lognormal lengths, medians 24 prompt and 48 output\n"
            "tokens) at 4, 16, 64 and 256 requests per second, static and continuous batching, max-batch 32.\n"
            "(2) Batch 32 against one sequence: 32 requests of 16 prompt tokens and 128 new tokens, all at\n"
            "once, through the engine, against chapter 05's generate on one of them. (3) Batch scaling\n"
            "(policy 'batch_scaling', and 'batch_scaling_cuda' with the forward on a GPU when there is one):\n"
            "b = 1 .. 32 sequences decoding together; tpot_p50_ms is then the time of one iteration.\n"
            "(4) Tokens/s of one sequence through chapters 04, 05 and 06, and of 32 through the engine\n"
            "(ch04_generate, ch05_generate, ch06_engine), on the built-in model and on --checkpoint\n"
            "(default: the file named by the environment variable CHECKPOINT, when it is set and not empty).\n"
            "Columns: policy rate requests max_batch tokens_per_s ttft_p50_s ttft_p99_s tpot_p50_ms\n"
            "tpot_p99_ms mean_batch preemptions model.",
        .name = ENGINE_PROG " bench", .usage = "[options]", .specs = specs, .n_specs = ARRAY_COUNT(specs)},
        argc, argv);
    if (strcmp(a->device, "cuda") == 0 && a->checkpoint) { /* --device cuda times the GPU rows only */
        if (a->checkpoint_given)
            die("--checkpoint is timed on the CPU, and --device cuda runs the GPU rows only: give --device auto to "
                "time both");
        die("--checkpoint (here the environment's CHECKPOINT=%s) is timed on the CPU, and --device cuda runs the GPU "
            "rows only: give --device auto to time both, or unset CHECKPOINT",
            error_quote(a->checkpoint));
    }
}

int engine_cmd_bench(int argc, char **argv)
{
    BenchArgs a;
    bench_parse(&a, argc, argv);
    /* everything that can fail is checked before any output is opened or anything is timed: the
     * device, the checkpoint (loaded now, not after the sweep), then the outputs themselves */
    char why[256];
    const int have_gpu = HAVE_CUDA && device_cuda_available(why, sizeof why);
    if (strcmp(a.device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", HAVE_CUDA ? why : "a build without CUDA");
    Model m, cm;
    if (a.checkpoint)
        program_load_model(a.checkpoint, &cm);
    program_load_model(NULL, &m);
    BenchSession b; /* rows go to temporary files renamed into place at the end: --out and the .dat */
    bench_begin(&b, ENGINE_PROG, a.device, a.out, ENGINE_BENCH_COLUMNS);
    const double rates[] = {4, 16, 64, 256};
    EngineMetrics sweep[8];
    if (b.use_cpu)
        engine_rate_sweep(&m, &b.tsv, rates, 4, a.n_req, 32, sweep);
    for (int on_gpu = b.use_cpu ? 0 : 1; on_gpu <= b.use_gpu; on_gpu++)
        bench_batch_scaling(&m, &b.tsv, on_gpu);
    if (!b.use_cpu) { /* --device cuda: the GPU rows only */
        bench_progress_done();
        tsv_close(&b.tsv);
        model_free(&m);
        return 0;
    }
    double single = NAN, batch32 = NAN, ch5, b32;
    bench_chapters(&m, "builtin", &b.tsv, &single, &batch32);
    if (a.checkpoint) {
        bench_chapters(&cm, a.checkpoint, &b.tsv, &ch5, &b32);
        model_free(&cm);
    }
    bench_progress_done();
    fprintf(stderr,
            "targets: skewed workload at %.0f requests/s, max-batch 32: continuous batching x%.2f the throughput of "
            "static (target >= x2)\n",
            rates[3], sweep[7].throughput / sweep[3].throughput);
    fprintf(stderr, "targets: the engine at batch 32: %.1f tokens/s, one sequence (chapter 05): %.1f tokens/s: x%.2f "
                    "(target >= x5)\n",
            batch32, single, batch32 / single);
    bench_end(&b);
    model_free(&m);
    return 0;
}
