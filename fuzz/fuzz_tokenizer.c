/*
 * fuzz_tokenizer.c: the tokenizer loader and encoder (common/tokenizer.c). The input: two bytes
 * choose the vocabulary size the checkpoint would have, four (little-endian) the length of the
 * tokenizer file that follows, and the rest, up to its first NUL byte, is a text. When the file
 * loads, the text is encoded and decoded: every id must lie in the vocabulary, no encoding may
 * have fewer ids than tokenizer_min_tokens promises (callers refuse texts with it), the heap
 * encoder must give the reference's ids (texts up to REF_MAX bytes: the reference is
 * quadratic), and decoding must not fail. Texts of any length are encoded: a quadratic encoder
 * shows up as a timeout.
 */
#include <stdlib.h>
#include <string.h>

#include "common/tokenizer.h"
#include "fuzz/fuzz.h"

#define REF_MAX 1024

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6)
        return 0;
    const int vocab = 3 + (data[0] | data[1] << 8) % 1024;
    size_t file_len = (size_t)data[2] | (size_t)data[3] << 8 | (size_t)data[4] << 16 | (size_t)data[5] << 24;
    if (file_len > size - 6)
        file_len = size - 6; /* all the rest is the file, and the text is empty */
    const char *path = fuzz_to_file(data + 6, file_len, ".tok");
    Tokenizer t;
    if (tokenizer_load(path, vocab, &t) != 0)
        return 0;
    const size_t n_rest = size - 6 - file_len;
    char *text = malloc(n_rest + 1);
    memcpy(text, data + 6 + file_len, n_rest);
    text[n_rest] = '\0';
    const size_t n_text = strlen(text);
    int *ids, n;
    if (tokenizer_encode(&t, text, 1, 1, &ids, &n) != 0)
        fuzz_fail("tokenizer: encoding a text of %zu bytes failed", n_text);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            fuzz_fail("tokenizer: encoded id %d outside the vocabulary of %d", ids[i], vocab);
    if ((size_t)n < tokenizer_min_tokens(&t, n_text, 1, 1))
        fuzz_fail("tokenizer: %d ids for %zu bytes, fewer than the %zu tokenizer_min_tokens promises", n, n_text,
                  tokenizer_min_tokens(&t, n_text, 1, 1));
    if (n_text <= REF_MAX) {
        int *ref, n_ref;
        if (tokenizer_encode_ref(&t, text, 1, 1, &ref, &n_ref) != 0)
            fuzz_fail("tokenizer: the reference failed on a text of %zu bytes", n_text);
        if (n_ref != n || memcmp(ref, ids, (size_t)n * sizeof(int)) != 0)
            fuzz_fail("tokenizer: the heap encoder gave %d ids, the reference %d (or others)", n, n_ref);
        free(ref);
    }
    char *back = tokenizer_decode(&t, TOKEN_BOS, ids, n);
    if (!back)
        fuzz_fail("tokenizer: decode returned nothing");
    free(back), free(ids);
    int *parsed, np;
    if (token_ids_parse(text, &parsed, &np) == 0)
        free(parsed);
    free(text);
    tokenizer_free(&t);
    return 0;
}
