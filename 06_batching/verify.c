/*
 * verify.c: chapter 06's verify subcommand -- the engine against chapter 05 run alone.
 *
 *   06_batching verify   built-in workloads served under every policy, batch size, token budget
 *                        and pool size of a grid; every request's tokens must be those chapter
 *                        05's paged_generate gives it alone (on the GPU: those it gets served
 *                        alone on the GPU, and those, greedy, chapter 05's up to near-ties).
 *                        Ends with "N passed, N failed".
 *
 * It is the chapter's promise checked without Check: batching, chunking, preemption and the
 * order blocks are handed out change when a request's tokens are computed, never what they are.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "06_batching/commands.h"
#include "common/args.h"
#include "common/device.h"
#include "common/error.h"
#include "common/program.h"
#include "common/tensor.h"
#include "common/verify.h"

typedef struct {
    const char *name;
    EnginePolicy policy;
    int max_batch, max_tokens, block_size, num_blocks;
} VerifyConfig;

static const VerifyConfig CONFIGS[] = {
    {.name = "continuous", .policy = ENGINE_CONTINUOUS, .max_batch = 32, .max_tokens = 256, .block_size = 16},
    {.name = "continuous", .policy = ENGINE_CONTINUOUS, .max_batch = 4, .max_tokens = 256, .block_size = 16},
    {.name = "continuous", .policy = ENGINE_CONTINUOUS, .max_batch = 1, .max_tokens = 256, .block_size = 16},
    {.name = "static", .policy = ENGINE_STATIC, .max_batch = 32, .max_tokens = 256, .block_size = 16},
    {.name = "static", .policy = ENGINE_STATIC, .max_batch = 4, .max_tokens = 256, .block_size = 16},
    {.name = "padded", .policy = ENGINE_STATIC_PADDED, .max_batch = 8, .max_tokens = 40, .block_size = 16},
    {.name = "chunked", .policy = ENGINE_CONTINUOUS, .max_batch = 32, .max_tokens = 7, .block_size = 16},
    {.name = "tight pool", .policy = ENGINE_CONTINUOUS, .max_batch = 32, .max_tokens = 64, .block_size = 4,
     .num_blocks = 40},
    {.name = "tight pool", .policy = ENGINE_STATIC, .max_batch = 8, .max_tokens = 64, .block_size = 4,
     .num_blocks = 40},
    {.name = "tight, bs 1", .policy = ENGINE_CONTINUOUS, .max_batch = 16, .max_tokens = 32, .block_size = 1,
     .num_blocks = 150},
};
#define N_CONFIGS ((int)(sizeof CONFIGS / sizeof CONFIGS[0]))

/* One workload and temperature of the grid: the requests, and what each must get. */
typedef struct {
    const Model *m;
    const EngineRequest *reqs;
    int n;
    int wl;            /* 0: all at once, 1: arrivals over time, 2: shared prefixes (over time) */
    int prefix_caching;
    float temperature;
    int **want;        /* (n) chapter 05 alone on the CPU, max_new ids each */
    int **want_gpu;    /* (n) each request served alone on the GPU; NULL without one */
} VerifyCase;

static const char *workload_name(int wl)
{
    return wl == 2 ? "shared prefixes" : wl ? "arrivals over time" : "all at once";
}

/* Every request through chapter 05's paged_generate alone: want[i] (max_new ids). */
static int **single_runs(const Model *m, const EngineRequest *reqs, int n, float temperature, uint64_t seed)
{
    int **want = mem_alloc_or_die((size_t)n * sizeof(int *), "reference tokens");
    for (int i = 0; i < n; i++) {
        want[i] = mem_alloc_or_die((size_t)reqs[i].max_new * sizeof(int), "reference tokens");
        const PagedGenOptions g = {.max_new = reqs[i].max_new, .temperature = temperature, .seed = seed + (uint64_t)i,
                                   .n_samples = 1, .block_size = 16, .num_blocks = 0, .kernel = 2, .shuffle = 0,
                                   .stop_at_bos_eos = 0};
        if (reqs[i].max_new > 0 && (long)reqs[i].n_prompt + reqs[i].max_new <= m->c.seq_len &&
            paged_generate(m, reqs[i].prompt, reqs[i].n_prompt, &g, want[i], NULL) != 0)
            die_with_error();
    }
    return want;
}

/* One verify line: the greedy tokens of every request served alone on the GPU against chapter
 * 05 alone on the CPU -- identical, or parting where the CPU's two best logits are a near-tie. */
static void record_cpu_agreement(VerifyTally *tally, const VerifyCase *vc)
{
    int same = 0, ties = 0, apart = 0;
    double worst = 0.0;
    for (int i = 0; i < vc->n; i++) {
        const EngineRequest *r = &vc->reqs[i];
        if (!vc->want_gpu[i] || r->max_new == 0)
            continue;
        double gap = 0.0;
        const int at = kvcache_greedy_divergence(vc->m, r->prompt, r->n_prompt, vc->want[i], vc->want_gpu[i],
                                                 r->max_new, &gap);
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
                  workload_name(vc->wl), same, ties, apart, worst, KVCACHE_NEAR_TIE);
}

/* One configuration of the grid on one device: every request's tokens against the reference; the
 * last request (which can never fit) and it alone rejected. */
static void verify_config(VerifyTally *tally, const VerifyCase *vc, int ci, int on_gpu)
{
    const VerifyConfig *cfg = &CONFIGS[ci];
    const int n = vc->n;
    EngineOptions o = engine_default_options();
    o.cuda = on_gpu;
    o.policy = cfg->policy, o.max_batch = cfg->max_batch, o.max_tokens = cfg->max_tokens;
    o.block_size = cfg->block_size, o.num_blocks = cfg->num_blocks;
    o.temperature = vc->temperature, o.seed = 7, o.fixed_step_s = 0.01, o.shuffle = (uint64_t)ci;
    o.prefix_caching = vc->prefix_caching;
    EngineResult *res = mem_alloc_or_die((size_t)n * sizeof(EngineResult), "results"); /* (n) */
    EngineMetrics mt;
    const int rc = engine_serve(vc->m, vc->reqs, n, &o, res, &mt);
    int same = rc == 0, rejected = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (res[i].status == ENGINE_REJECTED) {
            rejected++;
            same &= i == n - 1; /* only the one that cannot fit */
            continue;
        }
        same &= i != n - 1;
        same &= res[i].n_tokens == vc->reqs[i].max_new &&
                memcmp(res[i].tokens, on_gpu ? vc->want_gpu[i] : vc->want[i],
                       (size_t)vc->reqs[i].max_new * sizeof(int)) == 0;
    }
    char blocks[16] = "all";
    if (o.num_blocks)
        snprintf(blocks, sizeof blocks, "%d", o.num_blocks);
    verify_record(tally, same, "%s %-12s %-10s max-batch %2d, %3d tokens/step, bs %2d, %4s blocks, %s, %s: "
                  "%d requests, %d rejected, %d preemptions, %ld prompt tokens found cached%s%s",
                  on_gpu ? "cuda" : "cpu ", cfg->name, engine_policy_name(o.policy), o.max_batch, o.max_tokens,
                  o.block_size, blocks, workload_name(vc->wl), vc->temperature > 0 ? "T=0.9" : "greedy", n, rejected,
                  rc == 0 ? mt.preemptions : -1, rc == 0 ? mt.prefix_reused : -1L, rc ? ": " : "",
                  rc ? error_message() : "");
    engine_free_results(res, n);
    if (rc == 0)
        engine_free_metrics(&mt);
    mem_free(res);
}

/* The built-in workload wl (0, 1: skewed lengths, all at once or arriving at 40 per second; 2: a
 * 40-token system prompt + questions of 3..20 tokens, arriving at 40 per second) and one more
 * request that can never run: its prompt and output exceed seq_len. */
static EngineRequest *verify_workload(const Model *m, int wl, int smoke, int *n)
{
    const WorkloadSpec w = {.n = smoke ? 10 : 24, .rate = wl ? 40.0 : 0.0, .kind = WORKLOAD_SKEWED,
                            .prompt_median = 12, .out_median = 16, .seq_len = m->c.seq_len,
                            .vocab = m->c.vocab_size, .seed = 100 + (uint64_t)wl};
    const PrefixWorkloadSpec pw = {.kind = ENGINE_SHARED_PREFIX, .n = w.n, .rate = 40.0, .shared = 40,
                                   .question_min = 3, .question_max = 20, .out_min = 4, .out_max = 16,
                                   .seq_len = m->c.seq_len, .vocab = m->c.vocab_size, .seed = 102};
    EngineRequest *reqs;
    if ((wl == 2 ? engine_make_prefix_workload(&pw, &reqs) : engine_make_workload(&w, &reqs)) != 0)
        die_with_error();
    reqs = xrealloc(reqs, (size_t)(w.n + 1) * sizeof(EngineRequest), "the verify workload");
    reqs[w.n] = (EngineRequest){.arrival = 0.05, .max_new = 100, .n_prompt = 200,
                                .prompt = xcalloc(200, sizeof(int), "a prompt"), .abort_at = 0.0, .rejected = NULL};
    *n = w.n + 1;
    return reqs;
}

typedef struct {
    int dev_first, dev_last; /* on_gpu from dev_first to dev_last: 0 = the CPU, 1 = the GPU */
    int quick, smoke, verbose;
    int prefix_caching;
} VerifyArgs;

static void verify_parse(VerifyArgs *a, int argc, char **argv)
{
    const char *device = "auto", *prefix = "on";
    *a = (VerifyArgs){.dev_first = 0};
    ArgSpec specs[] = {
        OPTION_DEVICE(&device, "auto: the CPU engine, and the GPU forward when a GPU is present"),
        {.name = "quick", .kind = ARG_FLAG, .dest = &a->quick, .help = "one workload, greedy only (for sanitizers)"},
        {.name = "smoke", .kind = ARG_FLAG, .dest = &a->smoke,
         .help = "--quick with 10 requests, not 24 (for valgrind)"},
        {.name = "verbose", .kind = ARG_FLAG, .dest = &a->verbose, .help = "print passing cases too"},
        ENGINE_OPTION_PREFIX_CACHING(&prefix),
    };
    args_parse_or_exit(&(const ArgCommand){
        .summary = "Serves built-in workloads (a small random model; skewed lengths; requests arriving together\n"
                   "and over time; requests sharing a system prompt; one that can never fit) with prefix caching\n"
                   "as --prefix-caching says, under continuous, static and (on the CPU)\n"
                   "static-padded batching, max-batch 1, 4, 8 and 32, a small token budget (chunked prefill), a tight pool (preemption), shuffled blocks\n"
                   "and temperature sampling, and checks every request's tokens against chapter 05's\n"
                   "paged_generate run on it alone. On the GPU (its own batch-invariant arithmetic): against the\n"
                   "request served alone on the GPU, and that, greedy, against chapter 05 on the CPU up to\n"
                   "near-ties. Ends with 'N passed, N failed'.",
        .name = ENGINE_PROG " verify", .usage = "[options]", .specs = specs, .n_specs = ARRAY_COUNT(specs)},
        argc, argv);
    a->quick |= a->smoke;
    a->prefix_caching = strcmp(prefix, "on") == 0;
    char why[256];
    const int have_gpu = HAVE_CUDA && device_cuda_available(why, sizeof why);
    if (strcmp(device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    if (!have_gpu && strcmp(device, "cpu") != 0)
        printf("the GPU forward skipped: %s\n", HAVE_CUDA ? why : "a build without CUDA");
    a->dev_first = strcmp(device, "cuda") == 0, a->dev_last = have_gpu && strcmp(device, "cpu") != 0;
}

/* The grid at one temperature: the references, then every configuration on each device. */
static void verify_temperature(VerifyTally *tally, VerifyCase *vc, const VerifyArgs *a, int t)
{
    vc->temperature = t ? 0.9f : 0.0f;
    vc->want = single_runs(vc->m, vc->reqs, vc->n, vc->temperature, 7);
    /* On the GPU the reference is each request served alone on the GPU (its forward is
     * batch-invariant in its own arithmetic, not the CPU's: engine.cu); that reference must in
     * turn agree with chapter 05 on the CPU up to near-ties (greedy). */
    vc->want_gpu = NULL;
    if (a->dev_last) {
        EngineOptions og = engine_default_options();
        og.cuda = 1, og.temperature = vc->temperature, og.seed = 7, og.fixed_step_s = 0.01;
        og.prefix_caching = vc->prefix_caching;
        const int rc = engine_serve_alone(vc->m, vc->reqs, vc->n, &og, &vc->want_gpu);
        if (rc == 0 && t == 0)
            record_cpu_agreement(tally, vc);
        else if (rc != 0)
            verify_record(tally, 0, "cuda every request served alone, %s: %s", workload_name(vc->wl), error_message());
    }
    for (int on_gpu = a->dev_first; on_gpu <= (vc->want_gpu ? a->dev_last : 0); on_gpu++)
        for (int ci = 0; ci < N_CONFIGS; ci++)
            if (!on_gpu || CONFIGS[ci].policy != ENGINE_STATIC_PADDED) /* its padding runs on the CPU only */
                verify_config(tally, vc, ci, on_gpu);
    for (int i = 0; i < vc->n; i++)
        mem_free(vc->want[i]);
    mem_free(vc->want);
    engine_free_tokens(vc->want_gpu, vc->n);
}

int engine_cmd_verify(int argc, char **argv)
{
    VerifyArgs a;
    verify_parse(&a, argc, argv);
    const ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                           .vocab_size = 101, .seq_len = 256, .shared_classifier = 0};
    Model m;
    if (model_init_random(&m, &c, 11) != 0)
        die_with_error();
    VerifyTally tally = {.passed = 0, .failed = 0, .verbose = a.verbose};
    for (int wl = 0; wl < (a.quick ? 1 : 3); wl++) {
        int n;
        EngineRequest *reqs = verify_workload(&m, wl, a.smoke, &n);
        VerifyCase vc = {.m = &m, .reqs = reqs, .n = n, .wl = wl, .prefix_caching = a.prefix_caching};
        for (int t = 0; t < (a.quick ? 1 : 2); t++)
            verify_temperature(&tally, &vc, &a, t);
        engine_free_requests(reqs, n);
    }
    model_free(&m);
    return verify_finish(&tally);
}
