/*
 * generate.c: chapter 05's `generate` subcommand -- token ids in, token ids out, through a paged
 * cache (docs/contracts.md §4), with --n-samples K forked samples of one prompt.
 *
 *   05_paged generate --prompt "1 2 3" --max-new 20 --n-samples 3 --temperature 0.8
 *
 * Sample i gives the tokens of '04_kvcache generate --seed S+i'; the pool's use (peak blocks,
 * copy-on-write copies) goes to stderr after the samples.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "05_paged/commands.h"
#include "05_paged/paged.h"
#include "common/args.h"
#include "common/device.h"
#include "common/error.h"
#include "common/model.h"
#include "common/program.h"
#include "common/tensor.h"
#include "common/timer.h"
#include "common/tokenizer.h"

/* The samples on stdout: ids, one line per sample, or with a tokenizer the text (the prompt, then
 * each sample's continuation after a '--- sample i ---' line when there are several). out
 * (n_samples, max_new), -1 after a sample's end. */
static void print_samples(const Tokenizer *tok, int text, const int *prompt, int n_prompt, const int *out,
                          int n_samples, int max_new)
{
    for (int s = 0; s < n_samples; s++) {
        if (text) {
            char *str = tokenizer_decode_generation(tok, prompt, n_prompt, out + (size_t)s * max_new, max_new,
                                                    n_samples == 1);
            if (n_samples > 1 && s == 0) {
                char *p = tokenizer_decode_generation(tok, prompt, n_prompt, NULL, 0, 1);
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
}

/* The run on stderr: lengths, speed, and the pool's use. */
static void print_pool_use(const char *checkpoint, int n_prompt, const PagedGenOptions *o, const int *out,
                           double secs, const PagedGenStats *st)
{
    long n_gen = 0;
    for (int s = 0; s < o->n_samples; s++)
        for (int i = 0; i < o->max_new && out[(size_t)s * o->max_new + i] >= 0; i++)
            n_gen++;
    char b1[32], b2[32];
    fprintf(stderr,
            "%s generate: %d prompt + %d new tokens x %d sample%s on cpu, %s: %.2f s, %.1f tokens/s; pool: %d blocks "
            "of %d tokens (%s each), peak %d in use (%s), %zu copy-on-write copies\n",
            PAGED_PROG, n_prompt, o->max_new, o->n_samples, o->n_samples > 1 ? "s" : "",
            checkpoint ? checkpoint : "built-in random model", secs, (double)n_gen / (secs > 0 ? secs : 1e-9),
            st->num_blocks, o->block_size, format_bytes((double)st->block_bytes, b1, sizeof b1), st->peak_blocks,
            format_bytes((double)st->block_bytes * st->peak_blocks, b2, sizeof b2), st->cow_copies);
}

/* Generates with options o and prints the samples, then the pool's use. */
static void generate_and_print(const Model *m, const char *checkpoint, const Tokenizer *tok, int text,
                               const int *prompt, int n_prompt, const PagedGenOptions *o)
{
    /* up to 4096 samples x 2^24 tokens: counted against the memory budget like the pool */
    int *out = mem_alloc((size_t)o->n_samples * (size_t)o->max_new * sizeof(int),
                         "the generated tokens (n_samples, max_new)");
    if (!out)
        die_with_error();
    PagedGenStats st = {.peak_blocks = 0, .num_blocks = 0, .cow_copies = 0, .block_bytes = 0};
    const double t0 = timer_now();
    if (paged_generate(m, prompt, n_prompt, o, out, &st) != 0)
        die_with_error();
    const double secs = timer_now() - t0;
    print_samples(tok, text, prompt, n_prompt, out, o->n_samples, o->max_new);
    stdout_flush_or_die(); /* the samples are out before the pool line on stderr, or exit 1 */
    print_pool_use(checkpoint, n_prompt, o, out, secs, &st);
    mem_free(out);
}

int paged_cmd_generate(int argc, char **argv)
{
    const char *checkpoint = NULL, *prompt_text = "1", *device = "auto", *tokenizer = NULL, *prompt_words = NULL;
    int max_new = 64, seed = 42, kernel = 0, block_size = 16, num_blocks = 0, n_samples = 1, shuffle = 0, top_k = 0;
    double temperature = 0.0, top_p = 0.9;
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
        OPTION_TEMPERATURE(&temperature, "0 = greedy (default); >= 1.2e-38 samples from softmax(logits / T)"),
        OPTION_TOP_P(&top_p),
        OPTION_TOP_K(&top_k),
        OPTION_SEED(&seed),
        OPTION_SHUFFLE(&shuffle, "hand out the pool's blocks in an order shuffled with seed S (default 0: in order)"),
        {.name = "kernel", .kind = ARG_INT, .dest = &kernel, .metavar = "N",
         .help = "CPU attention kernel: 1 = ref, 2 = fast (default)", .min = 1, .max = PAGED_CPU_KERNELS},
        OPTION_DEVICE(&device, "auto or cpu; generation runs on the CPU in this chapter (the GPU kernels: attn, "
                               "verify, bench)"),
    };
    ArgCommand cmd = {
        .name = PAGED_PROG " generate",
        .usage = "[options]",
        .summary = "Generates token ids with a Llama-style model (llama2.c's run.c semantics) through a paged KV\n"
                   "cache. Prints the generated ids (prompt excluded), one line per sample; the pool's use goes to\n"
                   "stderr. Sample i gives the tokens of '04_kvcache generate --seed S+i'. With --tokenizer: text\n"
                   "(the prompt, then each sample's continuation after a '--- sample i ---' line when K > 1),\n"
                   "each sample stopping at BOS or EOS.",
        .specs = specs,
        .n_specs = (int)(sizeof specs / sizeof specs[0]),
    };
    args_parse_or_exit(&cmd, argc, argv);
    if (strcmp(device, "cuda") == 0)
        die("--device cuda: chapter 05 generates on the CPU; its GPU kernels run in 'attn', 'verify' and 'bench' "
            "(chapter 04 generates on the GPU)");
    int *prompt = NULL, n_prompt = 0;
    if (model_check_temperature(temperature) != 0 || model_check_sampling(top_p, top_k) != 0 ||
        token_ids_parse(prompt_text, &prompt, &n_prompt) != 0)
        die_with_error();
    Model m;
    program_load_model(checkpoint, &m);
    Tokenizer tok;
    const int text = tokenizer_setup(tokenizer, prompt_words, m.c.vocab_size, m.c.seq_len, &tok, &prompt, &n_prompt);
    if (text < 0)
        die_with_error();
    const PagedGenOptions o = {.max_new = max_new,
                               .temperature = (float)temperature,
                               .top_p = (float)top_p,
                               .top_k = top_k,
                               .seed = (uint64_t)seed,
                               .n_samples = n_samples,
                               .block_size = block_size,
                               .num_blocks = num_blocks,
                               .kernel = kernel,
                               .shuffle = (uint64_t)shuffle,
                               .stop_at_bos_eos = text};
    generate_and_print(&m, checkpoint, &tok, text, prompt, n_prompt, &o);
    tokenizer_free(&tok);
    free(prompt);
    model_free(&m);
    return 0;
}
