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
    /* tokenizer: the fixture with its vocabulary size in the first two bytes */
    const int V = testing_write_tiny_tokenizer("fuzz/corpus/tokenizer.tmp");
    const uint8_t vb[2] = {(uint8_t)((V - 3) & 0xff), (uint8_t)((V - 3) >> 8)};
    copy_prefixed("tokenizer/tiny.tok", "fuzz/corpus/tokenizer.tmp", vb, 2, 0);
    copy_prefixed("tokenizer/tiny-cut.tok", "fuzz/corpus/tokenizer.tmp", vb, 2, 100);
    remove("fuzz/corpus/tokenizer.tmp");
    /* requests: ids, text, comments, and broken lines */
    const char *r1 = "# a comment\n\n0 4 1 2 3\n0.5 2 7\n", *r2 = "0 8 Once upon a time\n0.1 3 the\\nend\n";
    const char *r3 = "0 4 1 2\n0 x 1\n-1 2 3\n";
    put("requests/ids.txt", r1, strlen(r1)), put("requests/text.txt", r2, strlen(r2));
    put("requests/bad.txt", r3, strlen(r3));
    /* engine: allocator operations (even first byte) and a scheduler run (odd) */
    const uint8_t ops[] = {0, 3, 20, 0, 0, 5, 0, 1, 9, 1, 0, 1, 0, 1, 3, 2, 1, 3, 0, 2, 4, 7, 0, 4, 8, 2, 2};
    const uint8_t sched[] = {1, 0, 4, 7, 2, 20, 0, 3, 5, 6, 0, 8, 1, 2, 3, 4, 5, 6, 9, 4, 5, 12, 10, 11, 12, 13, 7};
    /* the same with aborts: options, then (prompt length - 1, arrival, max_new, abort, ids...) */
    const uint8_t aborts[] = {1, 0, 3, 8, 2, 30, 0, 1, 0,  4, 0, 20, 5,   1, 2, 3, 4, 5,
                              2, 1, 10, 200, 6, 7, 8,     5, 2, 15, 2,   9, 10, 11, 12, 13, 14};
    put("engine/allocator.bin", ops, sizeof ops), put("engine/scheduler.bin", sched, sizeof sched);
    put("engine/scheduler-aborts.bin", aborts, sizeof aborts);
    printf("make_corpus: seed inputs written under fuzz/corpus/\n");
    return 0;
}
