/*
 * tokenizer.c: llama2.c's tokenizer.bin read, text encoded with byte-pair merges, ids decoded.
 *
 * What it teaches: a BPE tokenizer is a table of strings with scores; encoding starts from one
 * token per character (or per byte, for characters the table lacks) and keeps merging the
 * best-scoring adjacent pair that the table knows. The table is sorted once so that every
 * "is this string a token?" is a binary search.
 */
#include "tokenizer.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

static const Tokenizer *sort_ctx; /* qsort has no context argument in C11 */

static int cmp_piece_ids(const void *a, const void *b)
{
    const int x = *(const int *)a, y = *(const int *)b;
    const int lx = sort_ctx->lens[x], ly = sort_ctx->lens[y];
    const int c = memcmp(sort_ctx->pieces[x], sort_ctx->pieces[y], (size_t)(lx < ly ? lx : ly));
    return c ? c : (lx > ly) - (lx < ly);
}

void tokenizer_free(Tokenizer *t)
{
    for (int i = 0; t->pieces && i < t->vocab_size; i++)
        free(t->pieces[i]);
    free(t->pieces), free(t->lens), free(t->scores), free(t->sorted);
    memset(t, 0, sizeof *t);
}

int tokenizer_load(const char *path, int vocab_size, Tokenizer *t)
{
    memset(t, 0, sizeof *t);
    if (vocab_size < 3)
        return error_set("%s: a vocabulary of %d tokens cannot hold <unk>, BOS and EOS", path, vocab_size);
    FILE *f = fopen(path, "rb");
    if (!f)
        return error_set("%s: cannot open: %s", path, strerror(errno));
    int32_t max_len;
    if (fread(&max_len, sizeof max_len, 1, f) != 1 || max_len < 1 || max_len > 65536) {
        fclose(f);
        return error_set("%s: not a llama2.c tokenizer (bad max token length in the header)", path);
    }
    t->vocab_size = vocab_size, t->max_token_length = max_len;
    t->pieces = calloc((size_t)vocab_size, sizeof(char *));
    t->lens = malloc((size_t)vocab_size * sizeof(int));
    t->scores = malloc((size_t)vocab_size * sizeof(float));
    t->sorted = malloc((size_t)vocab_size * sizeof(int));
    int rc = 0;
    for (int i = 0; i < vocab_size && rc == 0; i++) {
        float score;
        int32_t len;
        if (fread(&score, sizeof score, 1, f) != 1 || fread(&len, sizeof len, 1, f) != 1) {
            rc = error_set("%s: ends after %d tokens, but the checkpoint's vocab_size is %d (tokenizer and "
                           "checkpoint disagree, or the file is truncated)",
                           path, i, vocab_size);
            break;
        }
        if (len < 0 || len > max_len) {
            rc = error_set("%s: token %d has length %d, outside 0..%d", path, i, (int)len, (int)max_len);
            break;
        }
        t->pieces[i] = malloc((size_t)len + 1);
        if (fread(t->pieces[i], 1, (size_t)len, f) != (size_t)len) {
            rc = error_set("%s: truncated inside token %d", path, i);
            break;
        }
        t->pieces[i][len] = '\0';
        t->lens[i] = len, t->scores[i] = score;
        t->sorted[i] = i;
    }
    if (rc == 0 && fgetc(f) != EOF)
        rc = error_set("%s: has more than vocab_size = %d tokens (tokenizer and checkpoint disagree)", path,
                       vocab_size);
    fclose(f);
    if (rc != 0) {
        tokenizer_free(t);
        return -1;
    }
    sort_ctx = t;
    qsort(t->sorted, (size_t)vocab_size, sizeof(int), cmp_piece_ids);
    sort_ctx = NULL;
    return 0;
}

int tokenizer_save(const char *path, int vocab_size, char *const *pieces, const float *scores)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return error_set("%s: cannot create: %s", path, strerror(errno));
    int32_t max_len = 1;
    for (int i = 0; i < vocab_size; i++)
        max_len = (int32_t)strlen(pieces[i]) > max_len ? (int32_t)strlen(pieces[i]) : max_len;
    int ok = fwrite(&max_len, sizeof max_len, 1, f) == 1;
    for (int i = 0; i < vocab_size && ok; i++) {
        const int32_t len = (int32_t)strlen(pieces[i]);
        ok = fwrite(&scores[i], sizeof(float), 1, f) == 1 && fwrite(&len, sizeof len, 1, f) == 1 &&
             fwrite(pieces[i], 1, (size_t)len, f) == (size_t)len;
    }
    if (fclose(f) != 0 || !ok)
        return error_set("%s: write failed", path);
    return 0;
}

int tokenizer_lookup(const Tokenizer *t, const char *s, size_t len)
{
    int lo = 0, hi = t->vocab_size - 1;
    while (lo <= hi) { /* binary search over the pieces in sorted order */
        const int mid = (lo + hi) / 2, id = t->sorted[mid], lm = t->lens[id];
        int c = memcmp(t->pieces[id], s, len < (size_t)lm ? len : (size_t)lm);
        if (c == 0)
            c = (lm > (int)len) - (lm < (int)len);
        if (c == 0)
            return id;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

int tokenizer_encode(const Tokenizer *t, const char *text, int bos, int eos, int **ids_out, int *n_out)
{
    const size_t n_text = strlen(text);
    int *ids = malloc((n_text + 3) * sizeof(int)); /* at most one token per byte, plus prefix, BOS, EOS */
    char *buf = malloc((size_t)2 * t->max_token_length + 8);
    int n = 0;
    if (bos)
        ids[n++] = TOKEN_BOS;
    if (n_text > 0) { /* the dummy prefix: a word boundary before the first word */
        const int space = tokenizer_lookup(t, " ", 1);
        if (space >= 0)
            ids[n++] = space;
    }
    /* one token per UTF-8 character, or one per byte where the vocabulary lacks the character */
    for (size_t i = 0; i < n_text;) {
        size_t len = 1;
        while (len < 4 && i + len < n_text && ((unsigned char)text[i + len] & 0xC0) == 0x80)
            len++; /* continuation bytes belong to the same character */
        const int id = tokenizer_lookup(t, text + i, len);
        if (id >= 0)
            ids[n++] = id;
        else
            for (size_t b = 0; b < len; b++) { /* <0x00> is id 3; a vocabulary without bytes gives <unk> */
                const int byte_id = (unsigned char)text[i + b] + 3;
                ids[n++] = byte_id < t->vocab_size ? byte_id : 0;
            }
        i += len;
    }
    /* merge the best-scoring adjacent pair the vocabulary knows, until none is left */
    for (;;) {
        float best = -1e30f;
        int best_id = -1, at = -1;
        for (int i = 0; i + 1 < n; i++) {
            if (ids[i] < 0 || ids[i] >= t->vocab_size || ids[i + 1] < 0 || ids[i + 1] >= t->vocab_size)
                continue;
            const int la = t->lens[ids[i]], lb = t->lens[ids[i + 1]];
            if (la + lb > t->max_token_length)
                continue;
            memcpy(buf, t->pieces[ids[i]], (size_t)la);
            memcpy(buf + la, t->pieces[ids[i + 1]], (size_t)lb);
            const int id = tokenizer_lookup(t, buf, (size_t)(la + lb));
            if (id >= 0 && t->scores[id] > best)
                best = t->scores[id], best_id = id, at = i;
        }
        if (at < 0)
            break;
        ids[at] = best_id;
        memmove(ids + at + 1, ids + at + 2, (size_t)(n - at - 2) * sizeof(int));
        n--;
    }
    if (eos)
        ids[n++] = TOKEN_EOS;
    free(buf);
    *ids_out = ids, *n_out = n;
    return 0;
}

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
    char *out = malloc(cap), one[2];
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        const char *p = tokenizer_piece(t, prev, ids[i], one);
        const size_t pl = strlen(p);
        while (len + pl + 1 > cap)
            out = realloc(out, cap *= 2);
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
    int *all = malloc(((size_t)n_p + n_ok + 1) * sizeof(int));
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
    char *out = malloc(2 * strlen(s) + 1), *o = out;
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
    int *out = malloc((size_t)cap * sizeof(int));
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
        if (count == cap)
            out = realloc(out, (size_t)(cap *= 2) * sizeof(int));
        out[count++] = (int)v;
        p = end;
    }
    *ids = out, *n = count;
    return 0;
}

int tokenizer_setup(const char *tokenizer_path, const char *prompt_text, int vocab_size, Tokenizer *t, int **prompt,
                    int *n_prompt)
{
    memset(t, 0, sizeof *t);
    if (prompt_text && !tokenizer_path)
        return error_set("--prompt-text needs --tokenizer T.bin (llama2.c's tokenizer.bin for the checkpoint)");
    if (!tokenizer_path)
        return 0;
    if (tokenizer_load(tokenizer_path, vocab_size, t) != 0)
        return -1;
    if (prompt_text) {
        free(*prompt);
        tokenizer_encode(t, prompt_text, 1, 0, prompt, n_prompt);
    }
    return 1;
}
