/*
 * tokenizer.h: text to token ids and back, with llama2.c's tokenizer.bin (a sentencepiece BPE
 * vocabulary exported by Karpathy's llama2.c), so that its checkpoints write text.
 *
 * File: int32 max_token_length, then for each of the checkpoint's vocab_size tokens: float32
 * score, int32 length, that many bytes (no terminator). The vocabulary size is not in the file:
 * it comes from the checkpoint, and a file with fewer or more tokens is an error.
 *
 * Conventions of that vocabulary: id 0 <unk>, 1 BOS, 2 EOS; ids 3 .. 258 are the 256 bytes,
 * written "<0x00>" .. "<0xFF>" (byte fallback); the rest are merged pieces, a leading space
 * standing for a word boundary.
 *
 * Encoding (sentencepiece BPE as llama2.c does it): a space is put before the text (the dummy
 * prefix); each UTF-8 character becomes its token, or its bytes' tokens when it has none; then,
 * repeatedly, the adjacent pair whose concatenation is a token with the highest score is merged
 * (the leftmost of equals), until no pair is a token. Decoding: a token's piece, without its
 * leading space right after BOS, "<0xHH>" as the byte HH, and a lone byte that is neither
 * printable nor whitespace dropped.
 */
#ifndef COMMON_TOKENIZER_H
#define COMMON_TOKENIZER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOKEN_BOS 1
#define TOKEN_EOS 2

typedef struct {
    int vocab_size;
    int max_token_length;
    char **pieces;  /* (vocab_size) NUL-terminated */
    int *lens;      /* (vocab_size) bytes of each piece */
    float *scores;  /* (vocab_size) merge priority */
    int *sorted;    /* (vocab_size) ids ordered by piece, for lookups */
} Tokenizer;

/* Reads path for a model of vocab_size tokens; -1 with one error naming the file otherwise. */
int tokenizer_load(const char *path, int vocab_size, Tokenizer *t);
void tokenizer_free(Tokenizer *t);

/* Writes a vocabulary in the same format (test fixtures). */
int tokenizer_save(const char *path, int vocab_size, char *const *pieces, const float *scores);

/* The id of the piece s (len bytes), or -1. */
int tokenizer_lookup(const Tokenizer *t, const char *s, size_t len);

/* text -> ids (malloc'd, *n of them), with BOS first when bos, EOS last when eos. The merges use
 * a heap of adjacent pairs: O(n log n) for n bytes. -1 with an error only when memory runs out
 * (or the text is over 2 GiB). */
int tokenizer_encode(const Tokenizer *t, const char *text, int bos, int eos, int **ids, int *n);

/* The same ids by the rule as it reads -- rescan every adjacent pair, merge the first of the
 * best, repeat -- O(n^2): the reference tokenizer_encode is tested against. */
int tokenizer_encode_ref(const Tokenizer *t, const char *text, int bos, int eos, int **ids, int *n);

/* The fewest ids tokenizer_encode(t, text, bos, eos) can return for a text of n_bytes bytes,
 * known without encoding it: a token covers at most max_token_length bytes, so about
 * n_bytes / max_token_length (byte fallback only adds tokens). Callers with a token limit refuse
 * a text with this before spending time on it. */
size_t tokenizer_min_tokens(const Tokenizer *t, size_t n_bytes, int bos, int eos);

/* The text of token `token` following token `prev` (see above): a pointer to the piece or to
 * buf (holding one byte); "" for a dropped byte. -1-safe: an id outside the vocabulary gives "". */
const char *tokenizer_piece(const Tokenizer *t, int prev, int token, char buf[2]);

/* The text of ids[0..n) following token prev, malloc'd and NUL-terminated. */
char *tokenizer_decode(const Tokenizer *t, int prev, const int *ids, int n);

/* What llama2.c's run.c prints for a generation: the prompt after its first token, then the
 * generated ids up to the first negative one (a stop), each piece read after its predecessor.
 * with_prompt = 0 leaves the prompt out (the generated text alone). malloc'd. */
char *tokenizer_decode_generation(const Tokenizer *t, const int *prompt, int n_prompt, const int *gen, int n_gen,
                                  int with_prompt);

/* "1 2 3" (spaces, tabs or commas between) -> ids, malloc'd; -1 with an error for anything else. */
int token_ids_parse(const char *text, int **ids, int *n);

/* The programs' --tokenizer / --prompt-text: loads tokenizer_path (when not NULL) for vocab_size
 * tokens and, when prompt_text is given, replaces *prompt with its encoding (BOS first, as
 * llama2.c does). A text whose length alone proves it longer than seq_len tokens is refused
 * before it is encoded (seq_len 0: no limit). Returns 1 in text mode, 0 without a tokenizer, -1
 * with an error (a bad file, --prompt-text without --tokenizer, a text that cannot fit). */
int tokenizer_setup(const char *tokenizer_path, const char *prompt_text, int vocab_size, int seq_len, Tokenizer *t,
                    int **prompt, int *n_prompt);

/* One-line text: newline -> "\n", tab -> "\t", backslash -> "\\" (malloc'd); and back, in place. */
char *text_escape(const char *s);
void text_unescape(char *s);

#ifdef __cplusplus
}
#endif
#endif
