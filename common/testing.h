/*
 * testing.h: what the chapters' Check suites share (Check itself is not needed here).
 *
 *   run_program   runs one of our programs, capturing its exit status, stdout and stderr, so a
 *                 test can assert "one error line, exit status 1" for bad input
 *   temp folders  a fresh folder per test, removed with everything in it
 *   fill_normal   deterministic N(0, 1) data
 */
#ifndef COMMON_TESTING_H
#define COMMON_TESTING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int status;      /* exit status, or 128 + signal number when killed by a signal */
    char out[65536]; /* stdout, truncated to fit, NUL-terminated */
    char err[65536]; /* stderr, likewise */
} ProcResult;

/* Runs argv[0] (a path) with argv, waits, and fills r. -1 if it could not be started. */
int run_program(ProcResult *r, const char *const argv[]);

/* <build>/bin/<name>: the programs built beside this test binary. */
const char *program_path(char *buf, size_t len, const char *name);

/* Number of lines in s (a final line without '\n' counts). */
int count_lines(const char *s);

/* The last non-empty line of s, copied into buf. */
const char *last_line(const char *s, char *buf, size_t len);

/* A new empty folder under $TMPDIR or /tmp (dies on failure), and its recursive removal. */
void temp_dir_create(char *buf, size_t len);
void temp_dir_remove(const char *path);

/* Writes n raw bytes; dies on failure. */
void write_bytes(const char *path, const void *data, size_t n);

void fill_normal(float *x, size_t n, uint64_t seed);

/* The attention contract of design.md §4 in float64, written independently of every chapter:
 * q (B, H, T, D), k and v (B, Hkv, S, D) -> out (B, H, T, D); query head h reads kv head
 * h / (H / Hkv); bottom-right causal; a row that sees no key is 0. The tests' oracle. */
void attention_f64(int B, int H, int Hkv, int T, int S, int D, int causal, double scale, const float *q,
                   const float *k, const float *v, double *out);

/* A tiny llama2.c-format tokenizer, made here (never downloaded): <unk>, BOS, EOS, the 256 byte
 * tokens <0x00> .. <0xFF> (ids 3 .. 258), the printable ASCII characters, then a few merges
 * (" t", "he", " the", ...) with decreasing scores. Writes it to path and returns its vocabulary
 * size; testing_tiny_piece(id) is the piece of an id (to find ids in tests). */
int testing_write_tiny_tokenizer(const char *path);
const char *testing_tiny_piece(int id);
int testing_tiny_id(const char *piece); /* -1 if absent */

#ifdef __cplusplus
}
#endif
#endif
