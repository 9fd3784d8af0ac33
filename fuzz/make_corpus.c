/*
 * make_corpus.c: writes the seed corpus of every fuzz target into fuzz/corpus/ with the
 * repository's own writers (make fuzz-corpus): small valid inputs and a few broken ones, from
 * which libFuzzer mutates. Files named found-* are not written here: they are inputs make fuzz
 * found (each fixed), kept so that every replay checks them again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/model.h"
#include "common/npy.h"
#include "common/testing.h"
#include "common/tokenizer.h"

static void put(const char *name, const void *data, size_t n)
{
    char path[512];
    snprintf(path, sizeof path, "fuzz/corpus/%s", name);
    write_bytes(path, data, n);
}

static void copy_prefixed(const char *name, const char *src, const uint8_t *prefix, size_t n_prefix, size_t cut)
{
    FILE *f = fopen(src, "rb");
    if (!f)
        die("cannot read %s", src);
    static uint8_t buf[1 << 20];
    memcpy(buf, prefix, n_prefix);
    size_t n = fread(buf + n_prefix, 1, sizeof buf - n_prefix, f);
    fclose(f);
    put(name, buf, n_prefix + n - (cut < n ? cut : 0));
}

/* A tokenizer target's input: the vocabulary size (2 bytes), the file's length (4), the tokenizer
 * file at src less its last cut bytes (the length still says all of it), then a text. */
static void put_tokenizer_input(const char *name, const char *src, int vocab, size_t cut, const char *text)
{
    FILE *f = fopen(src, "rb");
    if (!f)
        die("cannot read %s", src);
    static uint8_t file[1 << 16];
    const size_t n = fread(file, 1, sizeof file, f);
    fclose(f);
    const size_t n_text = strlen(text), total = 6 + n - (cut < n ? cut : 0) + n_text;
    uint8_t *buf = malloc(total);
    buf[0] = (uint8_t)((vocab - 3) & 0xff), buf[1] = (uint8_t)((vocab - 3) >> 8);
    for (int k = 0; k < 4; k++)
        buf[2 + k] = (uint8_t)(n >> (8 * k));
    memcpy(buf + 6, file, n - (cut < n ? cut : 0));
    memcpy(buf + total - n_text, text, n_text);
    put(name, buf, total);
    free(buf);
}

/* A checkpoint whose declared size wraps past 2^64 to exactly its own length. With dim 2^30 and
 * n_heads 2^29 (head size 2), one layer, hidden 1, n_kv_heads 1, seq_len 16 and a shared vocab
 * of V = 2^31 - 10, the floats after the header are
 *     V dim + 2 L dim + 2 L qd dim + 2 L kvd dim + 3 L hid dim + dim + seq_len D
 *   = 2^30 (V + 2 + 1 + 3) + 2^61 + 2^32 + 32          (qd = dim = 2^30, kvd = 2, hid = 1)
 *   = 2^30 (2^31 - 4) + 2^61 + 2^32 + 32 = 2^62 + 32,
 * and 28 + 4 (2^62 + 32) = 2^64 + 156: modulo 2^64, the 156 bytes of this file. The loader once
 * took that for a match and read 16 EiB of weights into a 156-byte buffer; it must refuse it
 * ("bad header: the model's size overflows"). The sum is recomputed below in uint64_t, wrapping
 * as size_t did, so that the file and the arithmetic cannot drift apart. */
static void put_wrapping_checkpoint(const char *name)
{
    const int32_t h[7] = {1 << 30, 1, 1, 1 << 29, 1, 2147483647 - 9, 16};
    const uint64_t dim = (uint64_t)h[0], hid = (uint64_t)h[1], L = (uint64_t)h[2], D = dim / (uint64_t)h[3];
    const uint64_t qd = (uint64_t)h[3] * D, kvd = (uint64_t)h[4] * D, V = (uint64_t)h[5], seq = (uint64_t)h[6];
    const uint64_t floats = V * dim + 2 * L * dim + 2 * L * qd * dim + 2 * L * kvd * dim + 3 * L * hid * dim + dim +
                            seq * D;
    const uint64_t bytes = 28 + floats * 4; /* wraps, as the unchecked size_t sum did */
    if (bytes != 156)
        die("%s: the declared size wraps to %llu bytes, not 156", name, (unsigned long long)bytes);
    uint8_t buf[156] = {0};
    memcpy(buf, h, sizeof h);
    put(name, buf, sizeof buf);
}

int main(void)
{
    error_set_program("make_corpus");
    /* npy: a 2 x 3 float32 array, the same cut short, and a header that lies */
    const float x[6] = {1, 2, 3, 4, 5, 6};
    if (npy_write("fuzz/corpus/npy/ok-2x3.npy", NPY_F32, 2, (size_t[]){2, 3}, x) != 0)
        die_with_error();
    copy_prefixed("npy/cut.npy", "fuzz/corpus/npy/ok-2x3.npy", NULL, 0, 7);
    /* checkpoint: the smallest sensible model, shared and separate classifiers, and one cut */
    for (int shared = 0; shared <= 1; shared++) {
        ModelConfig c = {.dim = 4, .hidden_dim = 6, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1,
                         .vocab_size = 5, .seq_len = 4, .shared_classifier = shared};
        Model m;
        char name[64];
        snprintf(name, sizeof name, "fuzz/corpus/checkpoint/tiny-%s.bin", shared ? "shared" : "separate");
        if (model_init_random(&m, &c, 1) != 0 || model_save(&m, name) != 0)
            die_with_error();
        model_free(&m);
    }
    copy_prefixed("checkpoint/cut.bin", "fuzz/corpus/checkpoint/tiny-shared.bin", NULL, 0, 9);
    put_wrapping_checkpoint("checkpoint/wrap-size.bin");
    /* tokenizer: the fixture and a text; the fixture cut short; the fixture and 64 KiB of text
     * (English, UTF-8 and stray bytes: the heap encoder's size; too long for the reference); the
     * fixture's pieces with every score tied (the leftmost pair merges first) */
    const int V = testing_write_tiny_tokenizer("fuzz/corpus/tokenizer.tmp");
    put_tokenizer_input("tokenizer/tiny.tok", "fuzz/corpus/tokenizer.tmp", V, 0,
                        "Once upon a time, there was a little girl \xc3\xa9\xff!");
    put_tokenizer_input("tokenizer/tiny-cut.tok", "fuzz/corpus/tokenizer.tmp", V, 100, "");
    const char *para = "Once upon a time, there was a little girl. She was singing in the rain \xc3\xa9\xe4\xb8\xad "
                       "\xf0\x9f\x99\x82 \x80\xff and the wind.\n";
    char *long_text = malloc((1 << 16) + 1);
    for (size_t i = 0; i < (1 << 16); i++)
        long_text[i] = para[i % strlen(para)];
    long_text[1 << 16] = '\0';
    put_tokenizer_input("tokenizer/long-text.tok", "fuzz/corpus/tokenizer.tmp", V, 0, long_text);
    free(long_text);
    char *pieces[512];
    float tied[512] = {0};
    for (int i = 0; i < V; i++)
        pieces[i] = (char *)testing_tiny_piece(i);
    if (tokenizer_save("fuzz/corpus/tokenizer.tmp", V, pieces, tied) != 0)
        die_with_error();
    put_tokenizer_input("tokenizer/tied.tok", "fuzz/corpus/tokenizer.tmp", V, 0,
                        "the thethe and in ing ininin aaaa abab the end");
    /* and the fixture without its byte tokens (a byte falls back onto whatever piece has its id):
     * 1.2 KB, the one seed under make fuzz's -max_len of 4096 that loads */
    float scores[512];
    int n_small = 0;
    for (int i = 0; i < V; i++)
        if (i < 3 || i >= 3 + 256) {
            pieces[n_small] = (char *)testing_tiny_piece(i);
            scores[n_small++] = i < 3 + 256 + 95 ? 0.0f : -(float)i;
        }
    if (tokenizer_save("fuzz/corpus/tokenizer.tmp", n_small, pieces, scores) != 0)
        die_with_error();
    put_tokenizer_input("tokenizer/small.tok", "fuzz/corpus/tokenizer.tmp", n_small, 0,
                        "Once upon a time, there was \x01\x7f\xc3\xa9 singing");
    remove("fuzz/corpus/tokenizer.tmp");
    /* requests: ids, text, comments, and broken lines */
    const char *r1 = "# a comment\n\n0 4 1 2 3\n0.5 2 7\n", *r2 = "0 8 Once upon a time\n0.1 3 the\\nend\n";
    const char *r3 = "0 4 1 2\n0 x 1\n-1 2 3\n";
    put("requests/ids.txt", r1, strlen(r1)), put("requests/text.txt", r2, strlen(r2));
    put("requests/bad.txt", r3, strlen(r3));
    const char r4[] = "0 4 1 2\n0 3 5\0 6\n0.2 2 7\n"; /* a NUL byte: the file is refused at line 2 */
    put("requests/nul-byte.txt", r4, sizeof r4 - 1);
    char *long_line = malloc((1 << 16) + 16); /* a text request of 64 KiB: refused unread under a seq_len */
    const int head = snprintf(long_line, 16, "0 4 ");
    for (size_t i = 0; i < (1 << 16); i++)
        long_line[head + i] = "the rain and the wind "[i % 22];
    long_line[head + (1 << 16)] = '\n';
    put("requests/long-text.txt", long_line, (size_t)head + (1 << 16) + 1);
    free(long_line);
    /* engine: allocator operations (even first byte) and a scheduler run (odd) */
    const uint8_t ops[] = {0, 3, 20, 0, 0, 5, 0, 1, 9, 1, 0, 1, 0, 1, 3, 2, 1, 3, 0, 2, 4, 7, 0, 4, 8, 2, 2};
    const uint8_t sched[] = {1, 0, 4, 7, 2, 20, 0, 3, 5, 6, 0, 8, 1, 2, 3, 4, 5, 6, 9, 4, 5, 12, 10, 11, 12, 13, 7};
    /* the same with aborts: options, then (prompt length - 1, arrival, max_new, abort, ids...) */
    const uint8_t aborts[] = {1, 0, 3, 8, 2, 30, 0, 1, 0,  4, 0, 20, 5,   1, 2, 3, 4, 5,
                              2, 1, 10, 200, 6, 7, 8,     5, 2, 15, 2,   9, 10, 11, 12, 13, 14};
    put("engine/allocator.bin", ops, sizeof ops), put("engine/scheduler.bin", sched, sizeof sched);
    put("engine/scheduler-aborts.bin", aborts, sizeof aborts);
    /* completion: request bodies of the HTTP server, good and bad */
    const char *c1 = "{\"model\":\"m\",\"prompt\":[1,5,9],\"max_tokens\":4,\"temperature\":0,\"stream\":true}";
    const char *c2 = "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"seed\":3,\"temperature\":0.8}";
    const char *c3 = "{\"prompt\":[1,2],\"max_tokens\":\"x\",\"n\":2,\"stop\":[\"a\"]}";
    const char *c4 = "{\"prompt\":[\"caf\\u00e9 \\ud83d\\ude00\"],\"stream_options\":{\"include_usage\":true}}";
    put("completion/ids.json", c1, strlen(c1)), put("completion/text.json", c2, strlen(c2));
    put("completion/bad.json", c3, strlen(c3)), put("completion/unicode.json", c4, strlen(c4));
    printf("make_corpus: seed inputs written under fuzz/corpus/\n");
    return 0;
}
