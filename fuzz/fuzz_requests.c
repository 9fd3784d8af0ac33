/*
 * fuzz_requests.c: chapter 06's requests parser on any bytes, in id mode and in text mode (with a
 * tiny tokenizer written by the tests' fixture code; without a limit and with seq_len 32):
 * refuse with an error naming a line, or return requests that the engine can take (an arrival
 * >= 0, max_new >= 0, a non-empty prompt -- or, only under a seq_len in text mode, a request
 * already rejected as too long, with no prompt).
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
    for (int mode = 0; mode < 3; mode++) { /* ids; text; text with a seq_len that refuses long lines */
        const int text = mode > 0, seq_len = mode == 2 ? 32 : 0;
        EngineRequest *r;
        int n;
        if (engine_read_requests(path, text ? &tok : NULL, seq_len, &r, &n) != 0)
            continue;
        for (int i = 0; i < n; i++) { /* a request the reader already rejects (too long) has no prompt */
            if (!(r[i].arrival >= 0) || !isfinite(r[i].arrival) || r[i].max_new < 0 ||
                (r[i].rejected ? r[i].n_prompt != 0 || r[i].prompt != NULL : r[i].n_prompt < 1))
                fuzz_fail("requests: accepted request %d with arrival %g, max_new %d, %d prompt tokens%s", i,
                          r[i].arrival, r[i].max_new, r[i].n_prompt, r[i].rejected ? " (rejected)" : "");
            if (r[i].rejected && !(mode == 2 && text))
                fuzz_fail("requests: request %d rejected by the reader without a seq_len: %s", i, r[i].rejected);
        }
        engine_free_requests(r, n);
    }
    return 0;
}
