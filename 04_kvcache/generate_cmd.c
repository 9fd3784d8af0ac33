/*
 * generate_cmd.c: chapter 04's generate subcommand (token ids in, token ids out, docs/contracts.md §1.6),
 * and the hidden _agree that scripts/gpu-check.sh uses to compare CPU and GPU tokens.
 *
 *   04_kvcache generate [--prompt IDS | --tokenizer T.bin --prompt-text TEXT] [--no-cache]
 *                       [--kv-dtype f32|f16|int8] [--device cpu|cuda] ...
 *   04_kvcache _agree "PROMPT IDS" "IDS A" "IDS B"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "04_kvcache/commands.h"
#include "04_kvcache/kvcache.h"
#include "common/args.h"
#include "common/device.h"
#include "common/error.h"
#include "common/program.h"
#include "common/tensor.h"
#include "common/timer.h"
#include "common/tokenizer.h"

/* ==== generate =================================================================================== */

typedef struct {
    const char *checkpoint, *prompt_ids, *device, *dtype, *tokenizer, *prompt_text;
    int max_new, no_cache, seed, kernel, chunk, top_k;
    double temperature, top_p;
} GenerateArgs;

static void generate_parse(GenerateArgs *a, int argc, char **argv)
{
    *a = (GenerateArgs){.prompt_ids = "1", .device = "auto", .dtype = "f32", .max_new = 64, .seed = 42, .top_p = 0.9};
    ArgSpec specs[] = {
        {.name = "checkpoint", .kind = ARG_STRING, .dest = &a->checkpoint, .metavar = "M.bin",
         .help = "llama2.c version-0 checkpoint (default: the built-in random model)"},
        KVCACHE_OPTION_PROMPT(&a->prompt_ids),
        {.name = "tokenizer", .kind = ARG_STRING, .dest = &a->tokenizer, .metavar = "T.bin",
         .help = "llama2.c tokenizer.bin: print text, stop at BOS/EOS as run.c does"},
        {.name = "prompt-text", .kind = ARG_STRING, .dest = &a->prompt_text, .metavar = "TEXT",
         .help = "the prompt as text (needs --tokenizer; encoded with BOS first)", .conflicts = "prompt"},
        KVCACHE_OPTION_MAX_NEW(&a->max_new),
        {.name = "no-cache", .kind = ARG_FLAG, .dest = &a->no_cache, .help = "recompute the whole sequence at every step"},
        {.name = "kv-dtype", .kind = ARG_CHOICE, .dest = &a->dtype, .choices = KV_DTYPE_CHOICES,
         .help = "how the cache stores K and V (default f32)", .conflicts = "no-cache"},
        OPTION_TEMPERATURE(&a->temperature, "0 = greedy (default); >= 1.2e-38 samples from softmax(logits / T)"),
        OPTION_TOP_P(&a->top_p),
        OPTION_TOP_K(&a->top_k),
        OPTION_SEED(&a->seed),
        KVCACHE_OPTION_KERNEL(&a->kernel),
        {.name = "prefill-chunk", .kind = ARG_INT, .dest = &a->chunk, .metavar = "N",
         .help = "prefill the prompt N tokens at a time (default: all at once)", .min = 1, .max = 1 << 24,
         .conflicts = "no-cache"},
        OPTION_DEVICE(&a->device, "where to run (default auto: the GPU if there is one)"),
    };
    const ArgCommand cmd = {
        .name = KVCACHE_PROG " generate",
        .usage = "[options]",
        .summary = "Generates token ids with a Llama-style model (llama2.c's run.c semantics) through the KV cache.\n"
                   "Prints the generated ids (prompt excluded) on one line; timings go to stderr, and on the CPU\n"
                   "the peak resident memory against the checkpoint + the KV cache. With --tokenizer: prints the\n"
                   "prompt and the generated text as run.c does, and stops at BOS or EOS.",
        .specs = specs,
        .n_specs = (int)(sizeof specs / sizeof specs[0]),
    };
    args_parse_or_exit(&cmd, argc, argv);
}

/* The generated ids on one line, or (text) the prompt and the generated text as run.c prints them. */
static void print_generation(const Tokenizer *tok, int text, const int *prompt, int n_prompt, const int *out,
                             int max_new)
{
    if (text) {
        char *s = tokenizer_decode_generation(tok, prompt, n_prompt, out, max_new, 1);
        printf("%s\n", s);
        free(s);
    } else {
        for (int i = 0; i < max_new; i++)
            printf(i ? " %d" : "%d", out[i]);
        printf("\n");
    }
    stdout_flush_or_die(); /* the ids before the timing line (also when both go to one file), or exit 1 */
}

/* The memory line (docs/contracts.md §6.2): the process's peak resident memory, loading
 * included, against the checkpoint's bytes and the KV cache the generation went through (none
 * with --no-cache). For CPU runs: a GPU run's host memory holds the CUDA runtime, not the cache. */
static void print_memory(const ModelConfig *c, int with_checkpoint, size_t kv_bytes)
{
    const double peak = (double)mem_peak_rss_bytes(), ckpt = (double)model_checkpoint_bytes(c);
    fprintf(stderr,
            "%s generate: peak resident memory %.1f MiB = x%.2f the checkpoint (%.1f MiB%s) + the KV cache (%.1f MiB) "
            "(expected <= x%.2f)\n",
            KVCACHE_PROG, peak / 1048576.0, peak / (ckpt + (double)kv_bytes), ckpt / 1048576.0,
            with_checkpoint ? "" : " as a file", (double)kv_bytes / 1048576.0, MODEL_MEMORY_TARGET);
}

int kvcache_cmd_generate(int argc, char **argv)
{
    GenerateArgs a;
    generate_parse(&a, argc, argv);
    Device dev;
    GenOptions o = {.max_new = a.max_new, .temperature = (float)a.temperature, .top_p = (float)a.top_p,
                    .top_k = a.top_k, .seed = (uint64_t)a.seed,
                    .use_cache = !a.no_cache, .dtype = KV_F32, .kernel = a.kernel, .prefill_chunk = a.chunk};
    int *prompt = NULL, n_prompt = 0;
    if (device_resolve(a.device, &dev) != 0 || kv_dtype_parse(a.dtype, &o.dtype) != 0 ||
        model_check_temperature(a.temperature) != 0 || model_check_sampling(a.top_p, a.top_k) != 0 ||
        token_ids_parse(a.prompt_ids, &prompt, &n_prompt) != 0)
        die_with_error();
    if (a.kernel != 0 && dev == DEVICE_CUDA) /* the GPU path has one decode kernel: --kernel would do nothing */
        die("--kernel %d picks a CPU decode kernel, and this run is on the GPU (%s): add --device cpu, or leave "
            "--kernel out",
            a.kernel, strcmp(a.device, "cuda") == 0 ? "--device cuda" : "--device auto found one");
    Model m;
    program_load_model(a.checkpoint, &m);
    Tokenizer tok;
    const int text =
        tokenizer_setup(a.tokenizer, a.prompt_text, m.c.vocab_size, m.c.seq_len, &tok, &prompt, &n_prompt);
    if (text < 0 || kvcache_check_request(&m.c, prompt, n_prompt, a.max_new) != 0)
        die_with_error();
    o.stop_at_bos_eos = text;
    int *out = mem_alloc_or_die((size_t)a.max_new * sizeof(int), "generated tokens (max_new)");
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
    while (n_gen < a.max_new && out[n_gen] >= 0)
        n_gen++;
    print_generation(&tok, text, prompt, n_prompt, out, a.max_new);
    fprintf(stderr, "%s generate: %d prompt + %d new tokens on %s, %s, %s cache: %.2f s, %.1f tokens/s\n",
            KVCACHE_PROG, n_prompt, n_gen, device_name(dev), a.checkpoint ? a.checkpoint : "built-in random model",
            a.no_cache ? "no" : kv_dtype_name(o.dtype), secs, n_gen / (secs > 0 ? secs : 1e-9));
    if (dev == DEVICE_CPU)
        print_memory(&m.c, a.checkpoint != NULL,
                     a.no_cache ? 0
                                : kvcache_bytes_per_token(m.c.n_layers, m.c.n_kv_heads, model_head_size(&m.c), o.dtype) *
                                      (size_t)(n_prompt + a.max_new));
    tokenizer_free(&tok);
    mem_free(out), free(prompt);
    model_free(&m);
    return 0;
}

/* ==== CPU and GPU tokens, compared ================================================================= */

/* Hidden subcommand for scripts/gpu-check.sh: `_agree PROMPT A B` (three lists of ids, the
 * built-in model) says whether greedy continuations A and B of PROMPT agree up to a near-tie
 * (kvcache_greedy_divergence): exit 0 when identical or when they part at a near-tie, 1 when
 * they part where the CPU's logits are clearly apart. */
int kvcache_cmd_agree(int argc, char **argv)
{
    if (argc != 4)
        die("usage: %s _agree \"PROMPT IDS\" \"IDS A\" \"IDS B\"", KVCACHE_PROG);
    int *prompt = NULL, *a = NULL, *b = NULL, n_prompt = 0, n_a = 0, n_b = 0;
    if (token_ids_parse(argv[1], &prompt, &n_prompt) != 0 || token_ids_parse(argv[2], &a, &n_a) != 0 ||
        token_ids_parse(argv[3], &b, &n_b) != 0)
        die_with_error();
    if (n_a != n_b)
        die("_agree: %d tokens against %d", n_a, n_b);
    Model m;
    program_load_model(NULL, &m);
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
