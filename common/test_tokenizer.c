/*
 * test_tokenizer.c: common/'s tokenizer (tokenizer.c), tested where it lives, on a tiny llama2.c
 * vocabulary made by testing_oracle.c: encodings worked out by hand from its merges, round trips
 * through decode, bad files refused with one clear error; then the fast (heap) encoder against
 * the quadratic reference on thousands of random texts and five vocabularies built for ties, the
 * merge order worked by hand, a 1 MiB text in O(n log n), and a text too long for the model
 * refused from its length alone.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"
#include "common/test_common.h"
#include "common/testing.h"
#include "common/tokenizer.h"

/* ==== the tiny fixture ============================================================================ */

static int tiny(const char *piece)
{
    const int id = testing_tiny_id(piece);
    ck_assert_msg(id >= 0, "'%s' is not in the fixture", piece);
    return id;
}

START_TEST(test_tokenizer_known_encodings)
{
    char path[4200];
    Tokenizer t;
    const int V = testing_load_tiny_tokenizer(testing_tmp_path(path, sizeof path, "tok.bin"), &t);
    /* worked by hand from the fixture's merges and scores (" t" > "he" > " the" > ... > " and"):
     * "the" = ' ' t h e -> ' t' h e -> ' t' 'he' -> ' the' */
    const struct {
        const char *text;
        int n;
        int ids[6];
    } cases[] = {
        {"the", 2, {TOKEN_BOS, tiny(" the")}},
        {"and", 2, {TOKEN_BOS, tiny(" and")}},          /* ' a' first, then 'nd', then ' and' */
        {"in", 3, {TOKEN_BOS, tiny(" "), tiny("in")}}, /* ' in' is not a token */
        {"\xc3\xa9", 4, {TOKEN_BOS, tiny(" "), 3 + 0xC3, 3 + 0xA9}}, /* 'é' is not a token: its bytes */
        {"", 1, {TOKEN_BOS}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int *ids, n;
        ck_assert_int_eq(tokenizer_encode(&t, cases[i].text, 1, 0, &ids, &n), 0);
        ck_assert_msg(n == cases[i].n && memcmp(ids, cases[i].ids, (size_t)n * sizeof(int)) == 0,
                      "'%s': %d ids, first %d", cases[i].text, n, n > 1 ? ids[1] : -1);
        free(ids);
    }
    int *ids, n;
    ck_assert_int_eq(tokenizer_encode(&t, "the", 0, 1, &ids, &n), 0); /* EOS, no BOS */
    ck_assert(n == 2 && ids[0] == tiny(" the") && ids[1] == TOKEN_EOS);
    free(ids);
    /* decoding: the space after BOS goes, <0xHH> is a byte, a lone unprintable byte is dropped */
    char one[2];
    ck_assert_str_eq(tokenizer_piece(&t, TOKEN_BOS, tiny(" the"), one), "the");
    ck_assert_str_eq(tokenizer_piece(&t, tiny("in"), tiny(" the"), one), " the");
    ck_assert_str_eq(tokenizer_piece(&t, 5, 3 + 'A', one), "A");
    ck_assert_str_eq(tokenizer_piece(&t, 5, 3 + 0x07, one), "");
    ck_assert_str_eq(tokenizer_piece(&t, 5, 3 + '\n', one), "\n");
    ck_assert_str_eq(tokenizer_piece(&t, 5, V + 7, one), "");
    tokenizer_free(&t);
}
END_TEST

START_TEST(test_tokenizer_round_trips)
{
    char path[4200];
    Tokenizer t;
    testing_load_tiny_tokenizer(testing_tmp_path(path, sizeof path, "tok.bin"), &t);
    const char *texts[] = {"Once upon a time, there was a little girl.", "the and in the\tend\n", "  two spaces",
                           "{curly} [brackets] ~tilde~ 100%", "x"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        int *ids, n;
        ck_assert_int_eq(tokenizer_encode(&t, texts[i], 1, 0, &ids, &n), 0);
        ck_assert_int_le(n, (int)strlen(texts[i]) + 2); /* BOS, the prefix, at most a token per byte */
        char *back = tokenizer_decode(&t, ids[0], ids + 1, n - 1);
        ck_assert_msg(strcmp(back, texts[i]) == 0, "'%s' came back as '%s'", texts[i], back);
        free(back), free(ids);
    }
    /* merges really happen: "Once upon a time" is 4 tokens after BOS */
    int *ids, n;
    ck_assert_int_eq(tokenizer_encode(&t, "Once upon a time", 1, 0, &ids, &n), 0);
    ck_assert_msg(n == 5 && ids[1] == tiny(" Once") && ids[2] == tiny(" upon") && ids[3] == tiny(" a") &&
                      ids[4] == tiny(" time"),
                  "%d ids", n);
    free(ids);
    char *esc = text_escape("a\nb\\c\td");
    ck_assert_str_eq(esc, "a\\nb\\\\c\\td");
    text_unescape(esc);
    ck_assert_str_eq(esc, "a\nb\\c\td");
    free(esc);
    int *parsed, np;
    ck_assert_int_eq(token_ids_parse(" 1, 2\t3 ", &parsed, &np), 0);
    ck_assert(np == 3 && parsed[2] == 3);
    free(parsed);
    ck_assert_int_eq(token_ids_parse("1 two", &parsed, &np), -1);
    tokenizer_free(&t);
}
END_TEST

START_TEST(test_tokenizer_rejects_bad_files)
{
    char path[4200], bad[4200];
    testing_tmp_path(path, sizeof path, "tok.bin");
    testing_tmp_path(bad, sizeof bad, "bad.bin");
    const int V = testing_write_tiny_tokenizer(path);
    Tokenizer t;
    ck_assert_int_eq(tokenizer_load(path, V + 1, &t), -1); /* the checkpoint wants one more token */
    ck_assert_msg(strstr(error_message(), "disagree"), "%s", error_message());
    ck_assert_int_eq(tokenizer_load(path, V - 1, &t), -1); /* one fewer */
    ck_assert_msg(strstr(error_message(), "more than vocab_size"), "%s", error_message());
    ck_assert_int_eq(tokenizer_load("/nonexistent/tok.bin", V, &t), -1);
    ck_assert_msg(strstr(error_message(), "cannot open"), "%s", error_message());
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    char buf[8192];
    const size_t got = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_bytes(bad, buf, got - 3); /* cut inside the last token */
    ck_assert_int_eq(tokenizer_load(bad, V, &t), -1);
    ck_assert_msg(strstr(error_message(), "truncated") || strstr(error_message(), "ends after"), "%s", error_message());
    const int32_t zero = 0;
    write_bytes(bad, &zero, sizeof zero); /* a header that is not a tokenizer's */
    ck_assert_int_eq(tokenizer_load(bad, V, &t), -1);
    ck_assert_msg(strstr(error_message(), "not a llama2.c tokenizer"), "%s", error_message());
    memcpy(buf + 4 + 4, &(int32_t){-5}, 4); /* token 0's length */
    write_bytes(bad, buf, got);
    ck_assert_int_eq(tokenizer_load(bad, V, &t), -1);
    ck_assert_msg(strstr(error_message(), "token 0 has length -5"), "%s", error_message());
}
END_TEST

/* ==== the fast encoder against the reference ===================================================== */

/* Writes a vocabulary of V tokens: the three specials, then pieces[3..V), scores in order. */
static void save_vocab(const char *path, int V, char **pieces, const float *scores)
{
    if (tokenizer_save(path, V, pieces, scores) != 0)
        ck_abort_msg("%s", error_message());
}

/* The tiny fixture with its scores replaced: all 0 (every pair ties; the leftmost always
 * merges first) or in reverse (the fixture's last merges first). */
static int write_tiny_rescored(const char *path, int reverse)
{
    char *pieces[512];
    float scores[512];
    int V = 0;
    while (testing_tiny_piece(V))
        pieces[V] = (char *)testing_tiny_piece(V), scores[V] = reverse ? (float)V : 0.0f, V++;
    save_vocab(path, V, pieces, scores);
    return V;
}

/* A vocabulary made for merges and ties: the specials (BOS's piece is "S", and "S " and "Sa" are
 * tokens, so that BOS merges too), the 256 bytes when with_bytes (else the pieces start at id 3,
 * and a byte's fallback id lands on whatever piece is there), and every string of 1 to 4
 * characters over "ab " with a score of 0, -1 or -2 drawn at random. */
static int write_tie_vocab(const char *path, int with_bytes, uint64_t seed)
{
    static char text[600][8];
    char *pieces[600];
    float scores[600];
    Rng rng;
    rng_seed(&rng, seed);
    int V = 0;
    const char *specials[] = {"<unk>", "S", "E"};
    for (int i = 0; i < 3; i++)
        snprintf(text[V], 8, "%s", specials[i]), V++;
    for (int b = 0; with_bytes && b < 256; b++)
        snprintf(text[V], 8, "<0x%02X>", b), V++;
    snprintf(text[V], 8, "S "), V++;
    snprintf(text[V], 8, "Sa"), V++;
    for (int len = 1; len <= 4; len++)
        for (int code = 0, n = len == 1 ? 3 : len == 2 ? 9 : len == 3 ? 27 : 81; code < n; code++) {
            for (int k = 0, c = code; k < len; k++, c /= 3)
                text[V][k] = "ab "[c % 3];
            text[V][len] = '\0';
            V++;
        }
    for (int i = 0; i < V; i++)
        pieces[i] = text[i], scores[i] = -(float)rng_below(&rng, 3);
    save_vocab(path, V, pieces, scores);
    return V;
}

/* A random text of one of five kinds, at most cap bytes (NUL-terminated in buf). */
static void random_text(Rng *rng, int kind, char *buf, size_t cap)
{
    static const char *const words[] = {"the", "and", "Once", "upon", "a", "time", "there", "was", "in",
                                        "sing", "little", "it", "on", "we", "an", "ab", "ba", "S"};
    static const char *const odd[] = {"\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x99\x82", "\x80", "\xbf\xbf",
                                      "\xe4\xb8", "\xff", "\xc3", "\xf0\x9f\x99\x82\x80\x80"};
    const size_t len = rng_below(rng, (uint32_t)cap);
    size_t n = 0;
    char pattern[8];
    const size_t plen = 1 + rng_below(rng, 5);
    for (size_t k = 0; k < plen; k++)
        pattern[k] = "ab the"[rng_below(rng, 6)];
    while (n < len) {
        const char *add;
        char one[2] = {0, 0};
        switch (kind) {
        case 0: /* any bytes but NUL */
            one[0] = (char)(1 + rng_below(rng, 255)), add = one;
            break;
        case 1: /* the tie vocabulary's alphabet */
            one[0] = "ab  aS"[rng_below(rng, 6)], add = one;
            break;
        case 2: /* UTF-8, valid and not: stray continuation bytes, cut characters, 0xFF */
            if (rng_below(rng, 3) == 0)
                add = odd[rng_below(rng, sizeof odd / sizeof odd[0])];
            else
                one[0] = "abe t."[rng_below(rng, 6)], add = one;
            break;
        case 3: /* English-like words */
            add = rng_below(rng, 2) ? " " : words[rng_below(rng, sizeof words / sizeof words[0])];
            break;
        default: /* one short pattern, repeated */
            one[0] = pattern[n % plen], add = one;
            break;
        }
        const size_t al = strlen(add);
        if (n + al > len)
            break;
        memcpy(buf + n, add, al);
        n += al;
    }
    buf[n] = '\0';
}

/* Both encoders on one text: the same ids, never fewer than tokenizer_min_tokens promises. */
static void check_same_encoding(const Tokenizer *t, const char *text, int bos, int eos, const char *what)
{
    int *fast, *ref, nf, nr;
    ck_assert_msg(tokenizer_encode(t, text, bos, eos, &fast, &nf) == 0, "%s", error_message());
    ck_assert_msg(tokenizer_encode_ref(t, text, bos, eos, &ref, &nr) == 0, "%s", error_message());
    int at = 0;
    while (at < nf && at < nr && fast[at] == ref[at])
        at++;
    ck_assert_msg(nf == nr && at == nf, "%s, text of %zu bytes: %d ids against the reference's %d, first apart at %d",
                  what, strlen(text), nf, nr, at);
    ck_assert_msg((size_t)nf >= tokenizer_min_tokens(t, strlen(text), bos, eos), "%s: %d ids, fewer than promised",
                  what, nf);
    free(fast), free(ref);
}

START_TEST(test_tokenizer_matches_reference)
{
    char path[4200];
    testing_tmp_path(path, sizeof path, "tok.bin");
    char *text = xmalloc(2049, "text");
    Rng rng;
    rng_seed(&rng, 7);
    int compared = 0;
    for (int vocab = 0; vocab < 5; vocab++) {
        const int V = vocab == 0   ? testing_write_tiny_tokenizer(path)
                      : vocab <= 2 ? write_tiny_rescored(path, vocab == 2)
                                   : write_tie_vocab(path, vocab == 3, 100 + (uint64_t)vocab);
        static const char *const names[] = {"tiny", "tiny, all scores tied", "tiny, reverse order",
                                            "ties over \"ab \"", "ties over \"ab \", no byte tokens"};
        Tokenizer t;
        ck_assert_msg(tokenizer_load(path, V, &t) == 0, "%s", error_message());
        for (int i = 0; i < 500; i++, compared++) { /* 100 texts of each kind, up to 300 bytes */
            random_text(&rng, i % 5, text, 301);
            check_same_encoding(&t, text, (int)rng_below(&rng, 2), (int)rng_below(&rng, 2), names[vocab]);
        }
        for (int kind = 0; kind < 5; kind++, compared++) { /* and one of 2 KiB each */
            random_text(&rng, kind, text, 2049);
            check_same_encoding(&t, text, 1, 0, names[vocab]);
        }
        const char *fixed[] = {"", "a", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ab ab ab ab ab",
                               "the the the thethethe", "Once upon a time, there was a little girl."};
        for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++, compared++)
            check_same_encoding(&t, fixed[i], 1, 1, names[vocab]);
        tokenizer_free(&t);
    }
    ck_assert_int_eq(compared, 5 * 511);
    free(text);
}
END_TEST

/* Merge order decides the result; each expectation worked by hand. Vocabulary (no " ", so no
 * dummy prefix): a b c d x, then ab -3, bc -1, cd -2, abc -4, bcd -0.5, xa -4, bca -4, ax -4. */
START_TEST(test_tokenizer_merge_order)
{
    char path[4200];
    testing_tmp_path(path, sizeof path, "order.bin");
    char *pieces[] = {"<unk>", "<s>", "</s>", "a",   "b",   "c",  "d",   "x",
                      "ab",    "bc",  "cd",   "abc", "bcd", "xa", "bca", "ax"};
    const float scores[] = {0, 0, 0, 0, 0, 0, 0, 0, -3, -1, -2, -4, -0.5f, -4, -4, -4};
    enum { A = 3, B, C, D, X, AB, BC, CD, ABC, BCD, XA, BCA, AX, V };
    save_vocab(path, V, pieces, scores);
    Tokenizer t;
    ck_assert_msg(tokenizer_load(path, V, &t) == 0, "%s", error_message());
    const struct {
        const char *text;
        int n, ids[4];
    } cases[] = {
        /* a b c d: of ab, bc, cd the best is bc -> a bc d; then bcd (-0.5) beats abc (-4) -> a bcd.
         * Leftmost-first would give ab c d -> abc d; not rescoring the new pairs, a bc d. */
        {"abcd", 2, {A, BCD}},
        /* a b c: bc (-1) before ab (-3) -> a bc; then the new pair on its left, abc -> abc */
        {"abc", 1, {ABC}},
        /* x a b c: bc -> x a bc; now xa and abc tie at -4: the leftmost, xa, an older pair than
         * abc -> xa bc. (Newest pair first would give x abc.) */
        {"xabc", 2, {XA, BC}},
        /* b c a x: bc -> bc a x; now bca (new) and ax (old) tie at -4: the leftmost, bca -> bca x.
         * (Oldest pair first would give bc ax.) */
        {"bcax", 2, {BCA, X}},
        /* a b a: ab (-3); no "ba" -> ab a */
        {"aba", 2, {AB, A}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int ref = 0; ref <= 1; ref++) {
            int *ids, n;
            ck_assert_int_eq((ref ? tokenizer_encode_ref : tokenizer_encode)(&t, cases[i].text, 0, 0, &ids, &n), 0);
            ck_assert_msg(n == cases[i].n && memcmp(ids, cases[i].ids, (size_t)n * sizeof(int)) == 0,
                          "'%s' (%s): %d ids, %d %d", cases[i].text, ref ? "reference" : "heap", n, ids[0],
                          n > 1 ? ids[1] : -1);
            free(ids);
        }
    }
    tokenizer_free(&t);
}
END_TEST

/* A long text encodes in O(n log n): 1 MiB (256 KiB under the sanitizers), which the quadratic
 * reference would take hours over. No time is asserted -- a quadratic encoder would simply not
 * finish within the test's timeout. The ids decode back to the text. */
START_TEST(test_tokenizer_long_text)
{
#if defined(__SANITIZE_ADDRESS__)
    const size_t n_text = (size_t)1 << 18;
#else
    const size_t n_text = (size_t)1 << 20;
#endif
    char path[4200];
    Tokenizer t;
    const int V = testing_load_tiny_tokenizer(testing_tmp_path(path, sizeof path, "tok.bin"), &t);
    char *text = xmalloc(n_text + 1, "text");
    Rng rng;
    rng_seed(&rng, 3);
    const char *para = "Once upon a time, there was a little girl. She was singing in the rain and the wind.\n";
    for (size_t i = 0; i < n_text; i++) /* English, and every 7th KiB random printable bytes */
        text[i] = (i >> 10) % 7 == 6 ? (char)(32 + rng_below(&rng, 95)) : para[i % strlen(para)];
    text[n_text] = '\0';
    int *ids, n;
    ck_assert_int_eq(tokenizer_encode(&t, text, 1, 0, &ids, &n), 0);
    ck_assert_msg(n > (int)(n_text / 6) && n < (int)n_text, "%d ids for %zu bytes", n, n_text);
    for (int i = 0; i < n; i++)
        ck_assert_msg(ids[i] >= 0 && ids[i] < V, "id %d is %d", i, ids[i]);
    char *back = tokenizer_decode(&t, ids[0], ids + 1, n - 1);
    ck_assert_msg(strcmp(back, text) == 0, "the text did not come back");
    free(back), free(ids), free(text);
    tokenizer_free(&t);
}
END_TEST

/* A text that cannot fit is refused from its length alone, before it is encoded. */
START_TEST(test_tokenizer_refuses_long_text_unread)
{
    char path[4200];
    Tokenizer t;
    const int V = testing_load_tiny_tokenizer(testing_tmp_path(path, sizeof path, "tok.bin"), &t);
    /* the fixture's longest piece is 6 bytes ("<0x00>"): BOS, the prefix and n bytes weigh n + 2 */
    ck_assert_int_eq(t.max_token_length, 6);
    ck_assert_uint_eq(tokenizer_min_tokens(&t, 0, 0, 0), 0);
    ck_assert_uint_eq(tokenizer_min_tokens(&t, 0, 1, 1), 2);
    ck_assert_uint_eq(tokenizer_min_tokens(&t, 600, 1, 0), 101); /* ceil(602 / 6) */
    ck_assert_uint_eq(tokenizer_min_tokens(&t, 600, 1, 1), 102);
    tokenizer_free(&t);
    char *text = xmalloc(200001, "text");
    memset(text, 'x', 200000), text[200000] = '\0';
    int *prompt = NULL, n_prompt = 0;
    ck_assert_int_eq(tokenizer_setup(path, text, V, 256, &t, &prompt, &n_prompt), -1);
    ck_assert_msg(strstr(error_message(), "--prompt-text is 200000 bytes: at least 33334 tokens") &&
                      strstr(error_message(), "seq_len 256"),
                  "%s", error_message());
    text[384] = '\0'; /* 386 / 6 -> 65 tokens at least: one too many for 64 */
    ck_assert_int_eq(tokenizer_setup(path, text, V, 64, &t, &prompt, &n_prompt), -1);
    text[300] = '\0'; /* passes the bound (51); its 302 ids are the caller's to refuse */
    ck_assert_int_eq(tokenizer_setup(path, text, V, 64, &t, &prompt, &n_prompt), 1);
    ck_assert_int_eq(n_prompt, 302);
    tokenizer_free(&t), free(prompt), free(text);
    /* a vocabulary whose byte token for 'q' has an empty piece: BOS and a 'q' join to "<s>", BOS
     * again, so 100 q's vanish into BOS, and the bound can promise only one token */
    char *pieces[3 + 256];
    float scores[3 + 256];
    static char bytes[256][8];
    for (int i = 0; i < 3 + 256; i++) {
        if (i - 3 == 'q')
            bytes[i - 3][0] = '\0'; /* the empty piece */
        else if (i >= 3)
            snprintf(bytes[i - 3], 8, "<0x%02X>", i - 3);
        pieces[i] = i == 0 ? "<unk>" : i == TOKEN_BOS ? "<s>" : i == TOKEN_EOS ? "</s>" : bytes[i - 3];
        scores[i] = 0.0f;
    }
    save_vocab(path, 3 + 256, pieces, scores);
    ck_assert_int_eq(tokenizer_load(path, 3 + 256, &t), 0);
    char qs[101];
    memset(qs, 'q', 100), qs[100] = '\0';
    ck_assert_uint_eq(tokenizer_min_tokens(&t, 100, 1, 0), 1);
    check_same_encoding(&t, qs, 1, 0, "empty byte piece");
    int *ids, n;
    ck_assert_int_eq(tokenizer_encode(&t, qs, 1, 0, &ids, &n), 0);
    ck_assert_msg(n == 1 && ids[0] == TOKEN_BOS, "%d ids", n);
    free(ids);
    tokenizer_free(&t);
}
END_TEST

TestingCase common_tokenizer_case(void)
{
    return (TestingCase){.name = "tokenizer", .timeout_s = 60, .temp_dir = 1,
                         .tests = {test_tokenizer_known_encodings, test_tokenizer_round_trips,
                                   test_tokenizer_rejects_bad_files}};
}

TestingCase common_tokenizer_heap_case(void)
{
    return (TestingCase){.name = "tokenizer: the heap encoder against the reference", .timeout_s = 120, .temp_dir = 1,
                         .tests = {test_tokenizer_matches_reference, test_tokenizer_merge_order,
                                   test_tokenizer_long_text, test_tokenizer_refuses_long_text_unread}};
}
