/*
 * bench.c: chapter 06's bench subcommand, and the serving runs the lesson shares with it.
 *
 *   06_batching bench   (1) the rate sweep: throughput and latency against the arrival rate,
 *                       static, static-padded and continuous batching; (2) batch scaling: decode iterations of
 *                       b = 1 .. 32 sequences (and on the GPU); (3) tokens/s of one sequence
 *                       through chapters 04, 05 and 06 and of 32 through the engine, on the
 *                       built-in model and on --checkpoint (default: $CHECKPOINT); (5) prefix
 *                       caching off and on: requests sharing a system prompt, and nothing shared.
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
#include "common/roofline.h"
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

int engine_bench_prefix_caching = 1;

EngineMetrics engine_serve_options(const Model *m, const EngineRequest *reqs, int n, const EngineOptions *o)
{
    EngineResult *res = mem_alloc_or_die((size_t)n * sizeof(EngineResult), "results"); /* (n) */
    EngineMetrics mt;
    if (engine_serve(m, reqs, n, o, res, &mt) != 0)
        die_with_error();
    engine_free_results(res, n);
    mem_free(res);
    return mt;
}

EngineMetrics engine_serve_once(const Model *m, const EngineRequest *reqs, int n, EnginePolicy policy, int max_batch,
                                int num_blocks, int keep_log, int cuda)
{
    EngineOptions o = engine_default_options();
    o.policy = policy, o.max_batch = max_batch, o.num_blocks = num_blocks, o.keep_log = keep_log, o.cuda = cuda;
    o.prefix_caching = engine_bench_prefix_caching;
    return engine_serve_options(m, reqs, n, &o);
}

/* The peak resident memory of one run, for the peak_rss_mib column: the high-water mark is reset
 * before the run (peak_start) and read after it (peak_mib), on Linux; elsewhere the reset does
 * nothing and the column holds the process's peak so far. */
static void peak_start(void) { mem_reset_peak_rss(); }
static double peak_mib(void) { return (double)mem_peak_rss_bytes() / 1048576.0; }

/* The pct_dram column: a decode iteration reads every matrix of the model once, for the whole
 * batch, so tokens/s / mean batch iterations a second move that many bytes; against the DRAM
 * bandwidth this is how close the run comes to the memory's limit (CPU runs; nan on the GPU). */
static double pct_dram(const Model *m, double tokens_per_s, double mean_batch, int on_gpu)
{
    if (on_gpu || !(mean_batch > 0))
        return NAN;
    const double bytes = (double)model_packed_floats(&m->c) * sizeof(float);
    return 100.0 * tokens_per_s / mean_batch * bytes / 1e9 / roofline_get()->dram_gbs;
}

/* One row of the bench's table from a run's metrics and its peak resident memory. */
static void metrics_row(Tsv *tsv, const Model *m, const char *policy, double rate, int n_req, int max_batch,
                        const EngineMetrics *r, const char *model, double peak, int on_gpu)
{
    tsv_row(tsv, "%s\t%.1f\t%d\t%d\t%.2f\t%.4f\t%.4f\t%.2f\t%.2f\t%.2f\t%d\t%s\t%.1f\t%.1f", policy, rate, n_req,
            max_batch, r->throughput, r->ttft_p50, r->ttft_p99, r->tpot_p50 * 1e3, r->tpot_p99 * 1e3, r->mean_batch,
            r->preemptions, model, peak, pct_dram(m, r->throughput, r->mean_batch, on_gpu));
}

void engine_rate_sweep(const Model *m, Tsv *tsv, const double *rates, int n_rates, int n_req, int max_batch,
                       const EnginePolicy *policies, int n_pol, EngineMetrics *res)
{
    double *peak = xmalloc((size_t)n_pol * (size_t)n_rates * sizeof(double), "peak memory of each run"); /* (n_pol, n_rates) */
    for (int ri = 0; ri < n_rates; ri++) {
        EngineRequest *reqs = engine_skewed_requests(m, n_req, rates[ri], 7);
        for (int p = 0; p < n_pol; p++) {
            bench_progress("rate %.0f/s, %s ...", rates[ri], engine_policy_name(policies[p]));
            peak_start();
            res[p * n_rates + ri] = engine_serve_once(m, reqs, n_req, policies[p], max_batch, 0, 0, 0);
            peak[p * n_rates + ri] = peak_mib();
        }
        engine_free_requests(reqs, n_req);
    }
    bench_progress_done();
    for (int p = 0; p < n_pol && tsv; p++)
        for (int ri = 0; ri < n_rates; ri++)
            metrics_row(tsv, m, engine_policy_name(policies[p]), rates[ri], n_req, max_batch, &res[p * n_rates + ri],
                        "builtin", peak[p * n_rates + ri], 0);
    free(peak);
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
        peak_start();
        EngineMetrics b = engine_serve_once(m, br, bsz[bi], ENGINE_CONTINUOUS, bsz[bi], 0, 0, on_gpu);
        metrics_row(tsv, m, on_gpu ? "batch_scaling_cuda" : "batch_scaling", 0, bsz[bi], bsz[bi], &b, "builtin",
                    peak_mib(), on_gpu);
        engine_free_metrics(&b);
        engine_free_requests(br, bsz[bi]);
    }
}

/* What bench_chapters measured on one model: tokens/s of chapter 05 and of the engine at batch
 * 32, and chapter 04's peak resident memory against the checkpoint + its KV cache. */
typedef struct {
    double ch5, batch32;
    double ch4_peak, checkpoint, kv; /* bytes */
} ChapterResult;

/* Tokens/s of one sequence of 16 + 128 tokens through chapters 04, 05 and 06, and of 32 of them
 * through the engine, on model mm (called `name`), each run's peak resident memory beside it:
 * rows into tsv, a summary on stderr, the numbers of the targets into *out. */
static void bench_chapters(const Model *mm, const char *name, Tsv *tsv, ChapterResult *out)
{
    const int single_tokens = 128;
    const int new_tokens = single_tokens < mm->c.seq_len - 16 ? single_tokens : mm->c.seq_len - 16;
    EngineRequest *reqs = fixed_requests(32, new_tokens, mm->c.vocab_size, 131, 17, 1);
    int *toks = mem_alloc_or_die((size_t)new_tokens * sizeof(int), "generated tokens"); /* (new_tokens) */
    double peak[4];                                                                      /* MiB, per run */
    bench_progress("%s: one sequence through chapter 04 ...", name);
    const GenOptions g4 = {.max_new = new_tokens, .temperature = 0.0f, .seed = 0, .use_cache = 1, .dtype = KV_F32,
                           .kernel = 2, .prefill_chunk = 0, .stop_at_bos_eos = 0};
    peak_start();
    double t0 = timer_now();
    if (kvcache_generate(mm, reqs[0].prompt, 16, &g4, toks, NULL) != 0)
        die_with_error();
    const double ch4 = new_tokens / (timer_now() - t0);
    peak[0] = peak_mib();
    bench_progress("%s: one sequence through chapter 05 ...", name);
    const PagedGenOptions g5 = {.max_new = new_tokens, .temperature = 0.0f, .seed = 0, .n_samples = 1,
                                .block_size = 16, .num_blocks = 0, .kernel = 2, .shuffle = 0, .stop_at_bos_eos = 0};
    peak_start();
    t0 = timer_now();
    if (paged_generate(mm, reqs[0].prompt, 16, &g5, toks, NULL) != 0)
        die_with_error();
    const double ch5 = new_tokens / (timer_now() - t0);
    peak[1] = peak_mib();
    bench_progress("%s: one and 32 sequences through the engine ...", name);
    peak_start();
    EngineMetrics one = engine_serve_once(mm, reqs, 1, ENGINE_CONTINUOUS, 1, 0, 0, 0);
    peak[2] = peak_mib();
    peak_start();
    EngineMetrics r = engine_serve_once(mm, reqs, 32, ENGINE_CONTINUOUS, 32, 0, 0, 0);
    peak[3] = peak_mib();
    tsv_row(tsv, "ch04_generate\t0\t1\t1\t%.2f\tnan\tnan\t%.2f\tnan\t1\t0\t%s\t%.1f\t%.1f", ch4, 1e3 / ch4, name,
            peak[0], pct_dram(mm, ch4, 1.0, 0));
    tsv_row(tsv, "ch05_generate\t0\t1\t1\t%.2f\tnan\tnan\t%.2f\tnan\t1\t0\t%s\t%.1f\t%.1f", ch5, 1e3 / ch5, name,
            peak[1], pct_dram(mm, ch5, 1.0, 0));
    metrics_row(tsv, mm, "ch06_engine", 0, 1, 1, &one, name, peak[2], 0);
    metrics_row(tsv, mm, "ch06_engine", 0, 32, 32, &r, name, peak[3], 0);
    fprintf(stderr, "%s: tokens/s, one sequence: chapter 04 %.1f, chapter 05 %.1f, chapter 06 %.1f; the engine at "
                    "batch 32: %.1f (x%.2f chapter 05)\n",
            name, ch4, ch5, one.throughput, r.throughput, r.throughput / ch5);
    *out = (ChapterResult){
        .ch5 = ch5, .batch32 = r.throughput, .ch4_peak = peak[0] * 1048576.0,
        .checkpoint = (double)model_checkpoint_bytes(&mm->c),
        .kv = (double)(16 + new_tokens) *
              (double)kvcache_bytes_per_token(mm->c.n_layers, mm->c.n_kv_heads, model_head_size(&mm->c), KV_F32)};
    engine_free_metrics(&one), engine_free_metrics(&r);
    mem_free(toks);
    engine_free_requests(reqs, 32);
}

/* ==== prefix caching ============================================================================== */

/* What bench_prefix measured: res[0] off, res[1] on. */
typedef struct {
    EngineMetrics system[2]; /* the shared-system-prompt workload */
    double none_off, none_on; /* tokens/s on the skewed workload (nothing shared), the best of the repeats */
    int none_iterations[2];   /* its iterations off and on (the same schedule when nothing is found) */
    long none_prefill[2];     /* its prefill tokens computed off and on */
} PrefixResult;

#define PREFIX_REQUESTS 64
#define PREFIX_SHARED 512
#define PREFIX_REPEATS 3

/* (5) prefix caching off and on: PREFIX_REQUESTS requests at once, each a PREFIX_SHARED-token
 * system prompt + a question of 16..64 tokens; and PREFIX_REQUESTS of the skewed workload (nothing
 * shared, all at once), off and on in turn PREFIX_REPEATS times, for the cost of the bookkeeping alone (the
 * fastest of each: the least disturbed by the machine's other work). */
static void bench_prefix(const Model *m, Tsv *tsv, PrefixResult *out)
{
    bench_progress("prefix caching: a %d-token system prompt, off and on ...", PREFIX_SHARED);
    EngineRequest *reqs = engine_prefix_requests(m, ENGINE_SHARED_PREFIX, PREFIX_REQUESTS, PREFIX_SHARED, 0.0, 11);
    peak_start();
    engine_prefix_compare(m, reqs, PREFIX_REQUESTS, 32, out->system);
    for (int on = 0; on <= 1; on++)
        metrics_row(tsv, m, on ? "prefix_system_prompt_on" : "prefix_system_prompt_off", 0, PREFIX_REQUESTS, 32,
                    &out->system[on], "builtin", peak_mib(), 0);
    engine_free_requests(reqs, PREFIX_REQUESTS);
    const int n_req = PREFIX_REQUESTS;
    reqs = engine_skewed_requests(m, n_req, 0.0, 7);
    EngineMetrics best[2] = {{.throughput = 0.0}, {.throughput = 0.0}}; /* no logs kept: plain copies */
    for (int rep = 0; rep < PREFIX_REPEATS; rep++) {
        bench_progress("prefix caching: nothing shared, off and on (%d of %d) ...", rep + 1, PREFIX_REPEATS);
        EngineMetrics r[2];
        engine_prefix_compare(m, reqs, n_req, 32, r);
        for (int on = 0; on <= 1; on++)
            if (r[on].throughput > best[on].throughput)
                best[on] = r[on];
    }
    for (int on = 0; on <= 1; on++)
        metrics_row(tsv, m, on ? "prefix_none_on" : "prefix_none_off", 0, n_req, 32, &best[on], "builtin", peak_mib(),
                    0);
    out->none_off = best[0].throughput, out->none_on = best[1].throughput;
    for (int on = 0; on <= 1; on++)
        out->none_iterations[on] = best[on].iterations, out->none_prefill[on] = best[on].prefill_computed;
    engine_free_requests(reqs, n_req);
}

static const char *reached(int yes) { return yes ? "reached" : "not reached"; }

static void prefix_summaries(const PrefixResult *p)
{
    const EngineMetrics *off = &p->system[0], *on = &p->system[1];
    const double x_ttft = off->ttft_p50 / on->ttft_p50, x_tput = on->throughput / off->throughput;
    fprintf(stderr, "prefix caching, %d requests sharing a %d-token system prompt: %ld prefill tokens computed with "
                    "it, %ld without (hit rate %.1f%%); %d blocks cached at the end, %ld evictions\n",
            PREFIX_REQUESTS, PREFIX_SHARED, on->prefill_computed, off->prefill_computed, 100.0 * on->prefix_hit_rate,
            on->cached_blocks, on->evictions);
    bench_summary(x_ttft >= 3.0, ">= x3",
                  "prefix caching, %d requests sharing a %d-token system prompt: p50 TTFT %.3f s with it, %.3f s "
                  "without: x%.2f lower",
                  PREFIX_REQUESTS, PREFIX_SHARED, on->ttft_p50, off->ttft_p50, x_ttft);
    bench_summary(x_tput >= 1.5, ">= x1.5",
                  "prefix caching, %d requests sharing a %d-token system prompt: %.1f tokens/s with it, %.1f without: "
                  "x%.2f the throughput",
                  PREFIX_REQUESTS, PREFIX_SHARED, on->throughput, off->throughput, x_tput);
    const double change = 100.0 * (p->none_on / p->none_off - 1.0);
    fprintf(stderr, "prefix caching on the skewed workload: %d iterations and %ld prefill tokens with it, %d and %ld "
                    "without\n",
            p->none_iterations[1], p->none_prefill[1], p->none_iterations[0], p->none_prefill[0]);
    bench_summary(fabs(change) <= 3.0, "within 3%",
                  "prefix caching on the skewed workload (%d requests at once, nothing shared): %.1f tokens/s with "
                  "it, %.1f without: %+.1f%%",
                  PREFIX_REQUESTS, p->none_on, p->none_off, change);
}

typedef struct {
    const char *out, *device, *checkpoint, *prefix;
    int n_req;
    int checkpoint_given; /* --checkpoint on the command line, not from $CHECKPOINT */
} BenchArgs;

static void bench_parse(BenchArgs *a, int argc, char **argv)
{
    const char *env = getenv("CHECKPOINT"); /* make bench CHECKPOINT=M.bin passes it this way */
    *a = (BenchArgs){.out = NULL, .device = "auto", .checkpoint = env && *env ? env : NULL, .n_req = 96,
                     .prefix = "on"};
    ArgSpec specs[] = {
        OPTION_OUT(&a->out),
        {.name = "checkpoint", .kind = ARG_STRING, .dest = &a->checkpoint, .metavar = "M.bin",
         .help = "also time chapters 04, 05 and 06 on this llama2.c checkpoint (e.g. stories15M.bin; default: "
                 "$CHECKPOINT)",
         .given = &a->checkpoint_given},
        {.name = "requests", .kind = ARG_INT, .dest = &a->n_req, .metavar = "N",
         .help = "requests per point of the rate sweep (default 96)", .min = 4, .max = 1 << 20},
        OPTION_DEVICE(&a->device, "auto: the CPU, and batch scaling on the GPU too when there is one"),
        ENGINE_OPTION_PREFIX_CACHING(&a->prefix),
    };
    args_parse_or_exit(&(const ArgCommand){
        .summary =
            "(1) The rate sweep: skewed workloads (lognormal lengths, medians 24 prompt and 48 output\n"
            "tokens) at 4, 16, 64 and 256 requests per second, static, static-padded and continuous\n"
            "batching, max-batch 32.\n"
            "(2) Batch 32 against one sequence: 32 requests of 16 prompt tokens and 128 new tokens, all at\n"
            "once, through the engine, against chapter 05's generate on one of them. (3) Batch scaling\n"
            "(policy 'batch_scaling', and 'batch_scaling_cuda' with the forward on a GPU when there is one):\n"
            "b = 1 .. 32 sequences decoding together; tpot_p50_ms is then the time of one iteration.\n"
            "(4) Tokens/s of one sequence through chapters 04, 05 and 06, and of 32 through the engine\n"
            "(ch04_generate, ch05_generate, ch06_engine), on the built-in model and on --checkpoint\n"
            "(default: the file named by the environment variable CHECKPOINT, when it is set and not empty).\n"
            "peak_rss_mib: the most memory the process held resident during the row's run, in MiB (the\n"
            "high-water mark is reset before each run on Linux; elsewhere it is the process's peak so far):\n"
            "the models loaded then, what earlier runs left in the heap, and the run's cache and buffers.\n"
            "--checkpoint's model is loaded first, so that a bad file fails before anything is timed, and\n"
            "the built-in model is freed before the --checkpoint rows: those hold that model alone, and a\n"
            "summary line compares their ch04_generate row's with the checkpoint + its KV cache.\n"
            "pct_dram: each decode iteration reads the model's matrices once for the whole batch, so\n"
            "tokens_per_s / mean_batch iterations a second move that many bytes: that traffic against the\n"
            "DRAM bandwidth measured when the bench starts (CPU rows; nan on the GPU).\n"
            "--prefix-caching sets it for (1)-(4). (5) Prefix caching off and on, whatever that says\n"
            "(continuous, max-batch 32): 64 requests at once sharing a 512-token system prompt, each with its\n"
            "own question of 16..64 tokens and 8..24 output tokens (prefix_system_prompt_off, _on); the\n"
            "skewed workload (64 requests at once), where nothing is shared (prefix_none_off, _on: the\n"
            "fastest of 3 runs each, the runs alternating).\n"
            "Columns: policy rate requests max_batch tokens_per_s ttft_p50_s ttft_p99_s tpot_p50_ms\n"
            "tpot_p99_ms mean_batch preemptions model peak_rss_mib pct_dram.",
        .name = ENGINE_PROG " bench", .usage = "[options]", .specs = specs, .n_specs = ARRAY_COUNT(specs)},
        argc, argv);
    engine_bench_prefix_caching = strcmp(a->prefix, "on") == 0;
    if (strcmp(a->device, "cuda") == 0 && a->checkpoint) { /* --device cuda times the GPU rows only */
        if (a->checkpoint_given)
            die("--checkpoint is timed on the CPU, and --device cuda runs the GPU rows only: give --device auto to "
                "time both");
        die("--checkpoint (here the environment's CHECKPOINT=%s) is timed on the CPU, and --device cuda runs the GPU "
            "rows only: give --device auto to time both, or unset CHECKPOINT",
            error_quote(a->checkpoint));
    }
}

/* The summary lines on stderr: what was measured against what was expected, reached or not.
 * sweep (3 policies, 4 rates): static, static-padded, continuous; rate: the last rate. */
static void bench_summaries(const BenchArgs *a, double rate, const EngineMetrics *sweep, const ChapterResult *builtin,
                            const ChapterResult *ck)
{
    const EngineMetrics *st = &sweep[3], *sp = &sweep[7], *ct = &sweep[11];
    const double x_static = ct->throughput / st->throughput;
    fprintf(stderr,
            "summary: skewed workload at %.0f requests/s, max-batch 32: continuous batching x%.2f the throughput of "
            "static batching, x%.2f of static-padded (expected >= x2 against static; %s)\n",
            rate, x_static, ct->throughput / sp->throughput, reached(x_static >= 2.0));
    fprintf(stderr, "static-padded at %.0f requests/s: %ld of its %ld token slots (%.0f%%) were padding or finished "
                    "members, computed and thrown away\n",
            rate, sp->padded, sp->computed, sp->computed ? 100.0 * (double)sp->padded / (double)sp->computed : 0.0);
    const double x_batch = builtin->batch32 / builtin->ch5;
    fprintf(stderr, "summary: the engine at batch 32: %.1f tokens/s, one sequence (chapter 05): %.1f tokens/s: x%.2f "
                    "(expected >= x5; %s)\n",
            builtin->batch32, builtin->ch5, x_batch, reached(x_batch >= 5.0));
    if (a->checkpoint) {
        const double x_mem = ck->ch4_peak / (ck->checkpoint + ck->kv);
        fprintf(stderr, "summary: %s, one sequence through chapter 04: peak resident memory %.1f MiB = x%.2f the "
                        "checkpoint (%.1f MiB) + the KV cache (%.1f MiB) (expected <= x%.2f; %s)\n",
                a->checkpoint, ck->ch4_peak / 1048576.0, x_mem, ck->checkpoint / 1048576.0, ck->kv / 1048576.0,
                MODEL_MEMORY_TARGET, reached(x_mem <= MODEL_MEMORY_TARGET));
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
    const EnginePolicy policies[3] = {ENGINE_STATIC, ENGINE_STATIC_PADDED, ENGINE_CONTINUOUS};
    EngineMetrics sweep[12]; /* (3 policies, 4 rates) */
    if (b.use_cpu)
        engine_rate_sweep(&m, &b.tsv, rates, 4, a.n_req, 32, policies, 3, sweep);
    for (int on_gpu = b.use_cpu ? 0 : 1; on_gpu <= b.use_gpu; on_gpu++)
        bench_batch_scaling(&m, &b.tsv, on_gpu);
    if (!b.use_cpu) { /* --device cuda: the GPU rows only */
        bench_progress_done();
        tsv_close(&b.tsv);
        model_free(&m);
        return 0;
    }
    PrefixResult pr;
    bench_prefix(&m, &b.tsv, &pr);
    ChapterResult builtin, ck;
    bench_chapters(&m, "builtin", &b.tsv, &builtin);
    model_free(&m); /* the --checkpoint rows hold that model alone */
    if (a.checkpoint) {
        bench_chapters(&cm, a.checkpoint, &b.tsv, &ck);
        model_free(&cm);
    }
    bench_progress_done();
    bench_summaries(&a, rates[3], sweep, &builtin, &ck);
    prefix_summaries(&pr);
    engine_free_metrics(&pr.system[0]), engine_free_metrics(&pr.system[1]);
    bench_end(&b);
    return 0;
}
