/*
 * fuzz_requests.c: chapter 06's requests parser on any bytes, in id mode and in text mode (with a
 * tiny tokenizer written by the tests' fixture code): refuse with an error naming a line, or
 * return requests that the engine can take (an arrival >= 0, max_new >= 0, a non-empty prompt).
 */
#include <math.h>
#include <stdio.h>

#include "06_batching/engine.h"
#include "common/testing.h"
#include "common/tokenizer.h"
#include "fuzz/fuzz.h"

static Tokenizer tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!tok.vocab_size) { /* once: the fixture tokenizer */
        char path[256];
        snprintf(path, sizeof path, "%s", fuzz_to_file((const uint8_t *)"", 0, ".fixture"));
        const int V = testing_write_tiny_tokenizer(path);
        if (tokenizer_load(path, V, &tok) != 0)
            fuzz_fail("the fixture tokenizer does not load");
    }
    const char *path = fuzz_to_file(data, size, ".req");
    for (int text = 0; text <= 1; text++) {
        EngineRequest *r;
        int n;
        if (engine_read_requests(path, text ? &tok : NULL, &r, &n) != 0)
            continue;
        for (int i = 0; i < n; i++)
            if (!(r[i].arrival >= 0) || !isfinite(r[i].arrival) || r[i].max_new < 0 || r[i].n_prompt < 1)
                fuzz_fail("requests: accepted request %d with arrival %g, max_new %d, %d prompt tokens", i,
                          r[i].arrival, r[i].max_new, r[i].n_prompt);
        engine_free_requests(r, n);
    }
    return 0;
}
