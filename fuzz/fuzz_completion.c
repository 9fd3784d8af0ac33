/*
 * fuzz_completion.c: the HTTP server's completion request reader (06_batching/server_json.c) on
 * any bytes, against a small random model (vocabulary of the tiny tokenizer, seq_len 32, a pool
 * of 6 blocks of 4 tokens) with and without a tokenizer: it refuses with 400, 404 or 500 and a
 * message (nothing left allocated), or returns a request the engine can take -- a prompt of 1 to
 * seq_len ids inside the vocabulary, prompt + max_tokens within seq_len and within the pool, a
 * temperature in [0, 2]. The text of the prompt's ids, streamed one token at a time, is valid
 * UTF-8 (checked here by a separate decoder) and equal to the text decoded all at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "06_batching/server.h"
#include "common/testing.h"
#include "fuzz/fuzz.h"

#if HAVE_SERVER
static Tokenizer tok;
static Model model;
static EngineOptions opts;

/* 1 if s[0..n) is UTF-8 (RFC 3629), by a plain decoder: the code point's value and range. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        const unsigned c = s[i];
        const int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || i + (size_t)len > n)
            return 0;
        unsigned long cp = len == 1 ? c : c & (0x7Fu >> len);
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3Fu);
        }
        static const unsigned long least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += (size_t)len;
    }
    return 1;
}

static void once(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s", fuzz_to_file((const uint8_t *)"", 0, ".fixture"));
    const int V = testing_write_tiny_tokenizer(path);
    if (tokenizer_load(path, V, &tok) != 0)
        fuzz_fail("the fixture tokenizer does not load");
    const ModelConfig c = {.dim = 16, .hidden_dim = 24, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1,
                           .vocab_size = V, .seq_len = 32, .shared_classifier = 1};
    if (model_init_random(&model, &c, 3) != 0)
        fuzz_fail("the fixture model");
    opts = engine_default_options();
    opts.block_size = 4, opts.num_blocks = 6;
}

/* The text of ids streamed one at a time equals the text at once, and is valid UTF-8. */
static void check_text(const int *ids, int n)
{
    TextStream a, b;
    char *whole = NULL, *parts = NULL;
    size_t nw = 0, np = 0;
    text_stream_init(&a, &tok, 1), text_stream_init(&b, &tok, 1);
    if (text_stream_push(&a, ids, n, 1, &whole, &nw) != 0)
        fuzz_fail("text: out of memory");
    for (int k = 0; k < n; k++)
        if (text_stream_push(&b, ids + k, 1, k == n - 1, &parts, &np) != 0)
            fuzz_fail("text: out of memory");
    if (nw != np || memcmp(whole, parts, nw) != 0)
        fuzz_fail("text: the streamed text (%zu bytes) differs from the whole (%zu bytes)", np, nw);
    if (!valid_utf8((const unsigned char *)whole, nw))
        fuzz_fail("text: not valid UTF-8: %s", whole);
    free(whole), free(parts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok.vocab_size)
        once();
    for (int mode = 0; mode < 2; mode++) { /* ids only; with the tokenizer */
        const ServedModel sm = {.m = &model, .tok = mode ? &tok : NULL, .o = &opts, .model_id = "m"};
        CompletionParams p;
        char msg[512];
        const char *param;
        const int status = completion_parse(&sm, (const char *)data, size, &p, msg, sizeof msg, &param);
        if (status != 0) {
            if ((status != 400 && status != 404 && status != 500) || !msg[0] || p.prompt)
                fuzz_fail("completion: status %d, message '%s', prompt %p", status, msg, (void *)p.prompt);
            continue;
        }
        if (p.n_prompt < 1 || p.n_prompt + p.max_tokens > model.c.seq_len || !(p.temperature >= 0.0f) ||
            p.temperature > 2.0f || (p.n_prompt + p.max_tokens + 2) / 4 > opts.num_blocks) /* P + max - 1 tokens hold K/V */
            fuzz_fail("completion: accepted %d prompt tokens, max_tokens %d, temperature %g", p.n_prompt,
                      p.max_tokens, p.temperature);
        for (int k = 0; k < p.n_prompt; k++)
            if (p.prompt[k] < 0 || p.prompt[k] >= model.c.vocab_size)
                fuzz_fail("completion: accepted prompt[%d] = %d", k, p.prompt[k]);
        check_text(p.prompt, p.n_prompt);
        completion_params_free(&p);
    }
    return 0;
}
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)data, (void)size; /* a build without the server: nothing to fuzz */
    return 0;
}
#endif
