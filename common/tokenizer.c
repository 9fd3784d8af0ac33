/*
 * tokenizer.c: llama2.c's tokenizer.bin read, and text encoded with byte-pair merges (decoding: tokenizer_text.c).
 *
 * What it teaches: a BPE tokenizer is a table of strings with scores; encoding starts from one
 * token per character (or per byte, for characters the table lacks) and keeps merging the
 * best-scoring adjacent pair that the table knows. The table is sorted once so that every
 * "is this string a token?" is a binary search. Merging is written twice: the rule as it reads
 * (rescan all pairs after each merge, O(n^2)), the reference; and with a heap of the adjacent
 * pairs (O(n log n)), which must give the same ids -- a 1 MB prompt encodes in a fraction of a
 * second instead of hours.
 */
#include "tokenizer.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fileio.h"

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
    FILE *f = file_open_input(path); /* a regular file, or an error: never blocks on a FIFO */
    if (!f)
        return -1;
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
    /* vocab_size comes from a checkpoint's header: up to 2^31 pieces, 16 GiB of pointers */
    int rc = !t->pieces || !t->lens || !t->scores || !t->sorted
                 ? error_set("%s: cannot allocate the tables of a %d-token vocabulary", path, vocab_size)
                 : 0;
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
        if (!t->pieces[i] || fread(t->pieces[i], 1, (size_t)len, f) != (size_t)len) {
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
    OutFile o; /* a temporary file renamed over path at the end: a failed write keeps the old one */
    if (out_open(&o, path) != 0)
        return -1;
    int32_t max_len = 1;
    for (int i = 0; i < vocab_size; i++)
        max_len = (int32_t)strlen(pieces[i]) > max_len ? (int32_t)strlen(pieces[i]) : max_len;
    out_write(&o, &max_len, sizeof max_len);
    for (int i = 0; i < vocab_size; i++) {
        const int32_t len = (int32_t)strlen(pieces[i]);
        out_write(&o, &scores[i], sizeof(float));
        out_write(&o, &len, sizeof len);
        out_write(&o, pieces[i], (size_t)len);
    }
    return out_commit(&o);
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

/* ==== encoding ======================================================================================
 *
 * Both encoders below start from the same symbols (initial_tokens) and apply the same rule: merge
 * the adjacent pair whose concatenation is the best-scoring token, the leftmost such pair when
 * several score the same, until no pair is a token. tokenizer_encode_ref states the rule
 * directly: scan every pair, merge the best, scan again -- O(n) lookups per merge, O(n^2) for a
 * text (40 KB of English took 22 s here). tokenizer_encode keeps the pairs in a heap instead, so
 * that each merge costs O(log n), and is tested against the reference for identical ids. */

/* A pair merges only when its token scores above this: the reference's search starts here, so
 * a token scoring -1e30 or less (or NaN) never comes out of a merge. (llama2.c starts at -1e10.) */
#define MERGE_FLOOR -1e30f

/* The dummy prefix and one token per UTF-8 character, or one per byte where the vocabulary lacks
 * the character, after BOS when bos: the symbols merging starts from. ids holds n_text + 2. */
static int initial_tokens(const Tokenizer *t, const char *text, size_t n_text, int bos, int *ids)
{
    int n = 0;
    if (bos)
        ids[n++] = TOKEN_BOS; /* BOS takes part in the merges, as in llama2.c */
    if (n_text > 0) { /* the dummy prefix: a word boundary before the first word */
        const int space = tokenizer_lookup(t, " ", 1);
        if (space >= 0)
            ids[n++] = space;
    }
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
    return n;
}

/* The token that tokens a and b merge into: the id of their concatenated pieces when it is in
 * the vocabulary and scores above MERGE_FLOOR, else -1. buf holds 2 * max_token_length bytes. */
static int pair_token(const Tokenizer *t, int a, int b, char *buf)
{
    const int la = t->lens[a], lb = t->lens[b];
    if (la + lb > t->max_token_length)
        return -1; /* longer than any token */
    memcpy(buf, t->pieces[a], (size_t)la);
    memcpy(buf + la, t->pieces[b], (size_t)lb);
    const int id = tokenizer_lookup(t, buf, (size_t)(la + lb));
    return id >= 0 && t->scores[id] > MERGE_FLOOR ? id : -1;
}

/* What both encoders share before merging: the checks, the buffers, the initial symbols. */
static int encode_start(const Tokenizer *t, const char *text, int bos, int **ids, int *n, char **buf)
{
    const size_t n_text = strlen(text);
    *ids = NULL, *buf = NULL, *n = 0;
    if (n_text > (size_t)INT_MAX - 3) /* ids are counted in int: at most one per byte, plus 3 */
        return error_set("a text of %zu bytes is too long to encode (at most %d)", n_text, INT_MAX - 3);
    *ids = malloc((n_text + 3) * sizeof(int)); /* a token per byte at most, plus prefix, BOS, EOS */
    *buf = malloc((size_t)2 * (size_t)t->max_token_length + 1);
    if (!*ids || !*buf) {
        free(*ids), free(*buf);
        *ids = NULL, *buf = NULL;
        return error_set("out of memory encoding a text of %zu bytes", n_text);
    }
    *n = initial_tokens(t, text, n_text, bos, *ids);
    return 0;
}

int tokenizer_encode_ref(const Tokenizer *t, const char *text, int bos, int eos, int **ids_out, int *n_out)
{
    int *ids, n;
    char *buf;
    if (encode_start(t, text, bos, &ids, &n, &buf) != 0)
        return -1;
    for (;;) { /* scan every adjacent pair; merge the first of the best-scoring ones */
        int at = -1, best_id = -1;
        for (int i = 0; i + 1 < n; i++) {
            const int id = pair_token(t, ids[i], ids[i + 1], buf);
            if (id >= 0 && (at < 0 || t->scores[id] > t->scores[best_id]))
                at = i, best_id = id; /* strictly better: a tie keeps the leftmost */
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

/* The fast encoder. The symbols stay in their array, linked to their neighbours (prev, next);
 * a merge rewrites the left symbol's id and unlinks the right one, so a symbol keeps its first
 * index and the indices of the symbols still alive increase along the text. A heap holds the
 * mergeable adjacent pairs, best first: higher score, then smaller left index -- the leftmost
 * among equals, exactly the pair the reference's scan picks (its "leftmost" is the smallest
 * index, since order is kept).
 *
 * A merge changes the pairs on both sides of the merged symbol. Rather than find and remove
 * their old entries, it pushes the new pairs and leaves the old entries in the heap: an entry
 * records the ids of its two symbols, and is skipped when popped if the left symbol or its
 * current right neighbour no longer holds them (lazy deletion). An entry that passes the check
 * describes a pair present now, with the score that pair has now (an older copy of the same
 * pair, pushed before its symbols changed and changed back, is as good as the new one), so the
 * best entry that passes is the best pair. Every merge pushes at most two entries, so the heap
 * sees at most 3n, and encoding n symbols costs O(n log n). */
typedef struct {
    float score; /* the merged token's */
    int left;    /* index of the left symbol */
    int a, b;    /* the ids the two symbols held when the pair was pushed */
    int token;   /* what they merge into */
} Pair;

typedef struct {
    Pair *p;
    size_t n, cap;
} PairHeap;

static int pair_before(const Pair *x, const Pair *y) /* x comes out of the heap before y */
{
    if (x->score != y->score) /* never NaN: pair_token refuses those */
        return x->score > y->score;
    return x->left < y->left;
}

static int heap_push(PairHeap *h, Pair e)
{
    if (h->n == h->cap) {
        const size_t cap = h->cap ? 2 * h->cap : 64;
        Pair *p = realloc(h->p, cap * sizeof(Pair));
        if (!p)
            return -1;
        h->p = p, h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && pair_before(&e, &h->p[(i - 1) / 2])) { /* sift up */
        h->p[i] = h->p[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h->p[i] = e;
    return 0;
}

static Pair heap_pop(PairHeap *h)
{
    const Pair top = h->p[0], last = h->p[--h->n];
    size_t i = 0;
    for (;;) { /* sift the last entry down from the root */
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && pair_before(&h->p[c + 1], &h->p[c]))
            c++;
        if (!pair_before(&h->p[c], &last))
            break;
        h->p[i] = h->p[c];
        i = c;
    }
    if (h->n > 0)
        h->p[i] = last;
    return top;
}

/* Pushes the pair (i, j) when its two symbols merge into a token. */
static int push_pair(const Tokenizer *t, PairHeap *h, const int *ids, int i, int j, char *buf)
{
    const int token = pair_token(t, ids[i], ids[j], buf);
    if (token < 0)
        return 0;
    return heap_push(h, (Pair){.score = t->scores[token], .left = i, .a = ids[i], .b = ids[j], .token = token});
}

int tokenizer_encode(const Tokenizer *t, const char *text, int bos, int eos, int **ids_out, int *n_out)
{
    int *ids, n;
    char *buf;
    if (encode_start(t, text, bos, &ids, &n, &buf) != 0)
        return -1;
    int *prev = malloc(((size_t)n + 1) * sizeof(int)), *next = malloc(((size_t)n + 1) * sizeof(int));
    PairHeap h = {.p = NULL};
    int rc = prev && next ? 0 : -1;
    for (int i = 0; i < n && rc == 0; i++) {
        prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
        if (i + 1 < n)
            rc = push_pair(t, &h, ids, i, i + 1, buf);
    }
    while (rc == 0 && h.n > 0) {
        const Pair e = heap_pop(&h);
        const int i = e.left, j = next[i];
        if (ids[i] != e.a || j < 0 || ids[j] != e.b)
            continue; /* stale: one of its symbols merged since it was pushed */
        ids[i] = e.token, ids[j] = -1; /* j is gone: -1 fails the check of every entry naming it */
        next[i] = next[j];
        if (next[i] >= 0)
            prev[next[i]] = i;
        if (prev[i] >= 0)
            rc = push_pair(t, &h, ids, prev[i], i, buf);
        if (rc == 0 && next[i] >= 0)
            rc = push_pair(t, &h, ids, i, next[i], buf);
    }
    free(h.p), free(prev), free(buf);
    if (rc != 0) {
        free(next), free(ids);
        *ids_out = NULL, *n_out = 0;
        return error_set("out of memory encoding a text of %zu bytes", strlen(text));
    }
    int m = 0; /* the symbols left, in order, to the front of ids */
    for (int i = n > 0 ? 0 : -1; i >= 0; i = next[i])
        ids[m++] = ids[i];
    free(next);
    if (eos)
        ids[m++] = TOKEN_EOS;
    *ids_out = ids, *n_out = m;
    return 0;
}

size_t tokenizer_min_tokens(const Tokenizer *t, size_t n_bytes, int bos, int eos)
{
    /* Give each starting symbol a weight: a character's token the bytes of the character, a byte
     * token 1, the dummy prefix 1, BOS 1; a merged token the sum of its two. Each weight is at
     * most the length of the token's piece (a merged piece is the two pieces joined), and no
     * piece is longer than max_token_length, so the tokens number at least the total weight
     * divided by max_token_length. That needs every byte token (and <unk>, BOS) to have a
     * non-empty piece, which a real vocabulary has; when one does not, only "at least one"
     * holds. */
    const size_t prefix = n_bytes > 0 && tokenizer_lookup(t, " ", 1) >= 0;
    const size_t weight = n_bytes + prefix + (bos != 0), tail = eos != 0;
    for (int id = 0; id < t->vocab_size && id < 3 + 256; id++)
        if (id != TOKEN_EOS && t->lens[id] == 0)
            return (weight > 0) + tail;
    return (weight + (size_t)t->max_token_length - 1) / (size_t)t->max_token_length + tail;
}
