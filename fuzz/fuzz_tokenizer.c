/*
 * fuzz_tokenizer.c: the tokenizer loader and encoder (common/tokenizer.c). The first two bytes
 * choose the vocabulary size the checkpoint would have, the rest is the tokenizer file; when it
 * loads, the input's bytes (as text) are encoded and decoded: every id must lie in the
 * vocabulary, and decoding must not fail.
 */
#include <stdlib.h>
#include <string.h>

#include "common/tokenizer.h"
#include "fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const int vocab = 3 + (data[0] | data[1] << 8) % 1024;
    const char *path = fuzz_to_file(data + 2, size - 2, ".tok");
    Tokenizer t;
    if (tokenizer_load(path, vocab, &t) != 0)
        return 0;
    char text[257];
    const size_t n_text = size - 2 < 256 ? size - 2 : 256;
    memcpy(text, data + 2, n_text);
    text[n_text] = '\0';
    int *ids, n;
    tokenizer_encode(&t, text, 1, 1, &ids, &n);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            fuzz_fail("tokenizer: encoded id %d outside the vocabulary of %d", ids[i], vocab);
    char *back = tokenizer_decode(&t, TOKEN_BOS, ids, n);
    if (!back)
        fuzz_fail("tokenizer: decode returned nothing");
    free(back), free(ids);
    int *parsed, np;
    if (token_ids_parse(text, &parsed, &np) == 0)
        free(parsed);
    tokenizer_free(&t);
    return 0;
}
