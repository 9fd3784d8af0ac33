/*
 * tokenizer_text.c: the other direction and the glue around the tokenizer (tokenizer.h): ids
 * decoded into text the way llama2.c prints them, text escaped for one-line outputs, lists of
 * ids parsed from the command line, and the --tokenizer/--prompt-text setup every generating
 * program shares.
 */
#include "tokenizer.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* ==== decoding and text helpers =================================================================== */

const char *tokenizer_piece(const Tokenizer *t, int prev, int token, char buf[2])
{
    if (token < 0 || token >= t->vocab_size)
        return "";
    const char *piece = t->pieces[token];
    if (prev == TOKEN_BOS && piece[0] == ' ')
        piece++; /* sentencepiece drops the dummy prefix's space at the start of a text */
    unsigned int byte;
    char close;
    if (strlen(piece) == 6 && sscanf(piece, "<0x%02X%c", &byte, &close) == 2 && close == '>') {
        buf[0] = (char)byte, buf[1] = '\0';
        piece = buf;
    }
    if (piece[0] && !piece[1] && !isprint((unsigned char)piece[0]) && !isspace((unsigned char)piece[0]))
        return ""; /* a lone control or partial-UTF-8 byte: not printed */
    return piece;
}

char *tokenizer_decode(const Tokenizer *t, int prev, const int *ids, int n)
{
    size_t cap = 64, len = 0;
    char *out = xmalloc(cap, "decoded text"), one[2];
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        const char *p = tokenizer_piece(t, prev, ids[i], one);
        const size_t pl = strlen(p);
        while (len + pl + 1 > cap)
            out = xrealloc(out, cap *= 2, "decoded text");
        memcpy(out + len, p, pl + 1);
        len += pl;
        prev = ids[i];
    }
    return out;
}

char *tokenizer_decode_generation(const Tokenizer *t, const int *prompt, int n_prompt, const int *gen, int n_gen,
                                  int with_prompt)
{
    int n_ok = 0;
    while (n_ok < n_gen && gen[n_ok] >= 0)
        n_ok++;
    const int skip = with_prompt ? 1 : n_prompt; /* the prompt's first token (BOS) is never printed */
    const int n_p = n_prompt > skip ? n_prompt - skip : 0;
    int *all = xmalloc(((size_t)n_p + n_ok) * sizeof(int), "the ids to decode");
    if (n_p > 0)
        memcpy(all, prompt + (n_prompt - n_p), (size_t)n_p * sizeof(int));
    if (n_ok > 0)
        memcpy(all + n_p, gen, (size_t)n_ok * sizeof(int));
    const int prev = n_prompt > n_p ? prompt[n_prompt - n_p - 1] : TOKEN_BOS;
    char *text = tokenizer_decode(t, prev, all, n_p + n_ok);
    free(all);
    return text;
}

char *text_escape(const char *s)
{
    char *out = xmalloc(2 * strlen(s) + 1, "escaped text"), *o = out; /* each byte doubled, and the NUL */
    for (; *s; s++) {
        if (*s == '\\' || *s == '\n' || *s == '\t') {
            *o++ = '\\';
            *o++ = *s == '\n' ? 'n' : *s == '\t' ? 't' : '\\';
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
    return out;
}

void text_unescape(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '\\' && (s[1] == 'n' || s[1] == 't' || s[1] == '\\')) {
            s++;
            *o++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : '\\';
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

int token_ids_parse(const char *text, int **ids, int *n)
{
    int cap = 16, count = 0;
    int *out = xmalloc((size_t)cap * sizeof(int), "token ids");
    const char *p = text;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p)
            break;
        char *end;
        const long v = strtol(p, &end, 10);
        if (end == p || (*end && *end != ' ' && *end != '\t' && *end != ',') || v < -2147483647L || v > 2147483647L) {
            free(out);
            return error_set("--prompt: '%s' is not a list of token ids (integers separated by spaces)", text);
        }
        if (count == cap) { /* doubling in size_t: an int cap would wrap past 2^30 ids */
            int *more = cap <= INT_MAX / 2 ? realloc(out, (size_t)cap * 2 * sizeof(int)) : NULL;
            if (!more) {
                free(out);
                return error_set("--prompt: too many token ids (more than %d)", cap);
            }
            out = more, cap *= 2;
        }
        out[count++] = (int)v;
        p = end;
    }
    *ids = out, *n = count;
    return 0;
}

int tokenizer_setup(const char *tokenizer_path, const char *prompt_text, int vocab_size, int seq_len, Tokenizer *t,
                    int **prompt, int *n_prompt)
{
    memset(t, 0, sizeof *t);
    if (prompt_text && !tokenizer_path)
        return error_set("--prompt-text needs --tokenizer T.bin (llama2.c's tokenizer.bin for the checkpoint)");
    if (!tokenizer_path)
        return 0;
    if (tokenizer_load(tokenizer_path, vocab_size, t) != 0)
        return -1;
    if (prompt_text) {
        /* refused before encoding when its length alone proves it too long: a hostile text costs
         * nothing to turn away */
        const size_t n_bytes = strlen(prompt_text), at_least = tokenizer_min_tokens(t, n_bytes, 1, 0);
        int *ids, n;
        if (seq_len > 0 && at_least > (size_t)seq_len) {
            error_set("--prompt-text is %zu bytes: at least %zu tokens with BOS (a token covers at most %d bytes), "
                      "more than the model's seq_len %d",
                      n_bytes, at_least, t->max_token_length, seq_len);
            tokenizer_free(t);
            return -1;
        }
        if (tokenizer_encode(t, prompt_text, 1, 0, &ids, &n) != 0) {
            tokenizer_free(t);
            return -1;
        }
        free(*prompt);
        *prompt = ids, *n_prompt = n;
    }
    return 1;
}
