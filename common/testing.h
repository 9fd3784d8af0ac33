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

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int status;      /* exit status, or 128 + signal number when killed by a signal */
    long max_rss_kib; /* the child's peak resident memory (getrusage's ru_maxrss) */
    char out[65536]; /* stdout, truncated to fit, NUL-terminated */
    char err[65536]; /* stderr, likewise */
} ProcResult;

/* Runs argv[0] (a path) with argv, waits, and fills r. -1 if it could not be started.
 * With TEST_RUNNER set (an emulator and its options), runs $TEST_RUNNER argv instead. */
int run_program(ProcResult *r, const char *const argv[]);
/* The same with a time limit (0: none; a program past it is killed by SIGALRM, status 142) and,
 * when stdout_path is not NULL, stdout going to that file (e.g. /dev/full) instead of r->out. */
int run_program_limited(ProcResult *r, const char *const argv[], unsigned seconds, const char *stdout_path);

/* execv(argv[0], argv), or $TEST_RUNNER argv when that is set (an emulator and its options, for
 * programs of another architecture): for a test that forks a program itself. Returns only when
 * the exec failed. */
void testing_exec(const char *const argv[]);

/* 1 when TEST_SMALL=1 is in the environment (make test-arm64 sets it: under emulation the
 * arithmetic runs ~10-50x slower): the few tests that would take minutes there use smaller
 * sizes that exercise the same code paths (each says which); 0 otherwise. */
int testing_small(void);

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

/* A failing disk, made to order: runs writer(path, ctx) in a child process whose files cannot grow
 * past limit_bytes (RLIMIT_FSIZE, with SIGXFSZ ignored so that the write fails with EFBIG rather
 * than killing the child). Returns the child's exit status: 0 when writer returned 0, 1 when it
 * returned -1 (its error_message() copied into err) or die()d (its stderr copied into err), 128 +
 * a signal when killed; -1 if the child could not be started. */
int testing_write_limited(int (*writer)(const char *path, void *ctx), const char *path, void *ctx, size_t limit_bytes,
                          char *err, size_t err_len);

/* The names in folder dir (without "." and ".."), sorted and separated by spaces, into buf;
 * returns how many there are (-1 if dir cannot be read). A test that a failed write left nothing
 * behind (no temporary file) compares it before and after. */
int testing_folder_names(const char *dir, char *buf, size_t len);

void fill_normal(float *x, size_t n, uint64_t seed);

/* The attention contract of design.md §4 in float64, written independently of every chapter:
 * q (B, H, T, D), k and v (B, Hkv, S, D) -> out (B, H, T, D); query head h reads kv head
 * h / (H / Hkv); bottom-right causal; a row that sees no key is 0. The tests' oracle. */
void attention_f64(int B, int H, int Hkv, int T, int S, int D, int causal, double scale, const float *q,
                   const float *k, const float *v, double *out);

/* The model of common/model.h in float64, written from llama2.c's run.c without calling
 * anything of common/model.c: tokens[0..n) at positions 0..n-1, token by token with its own
 * float64 K/V cache, the logits of every position into logits (n, vocab). Reads m->c and the
 * checkpoint weights m->w only (not the packed copies model_forward multiplies by). The oracle
 * that chapter 04's model stands on; chapters 05 and 06 compare with chapter 04. */
void model_forward_f64(const Model *m, const int *tokens, int n, double *logits);

/* A tiny llama2.c-format tokenizer, made here (never downloaded): <unk>, BOS, EOS, the 256 byte
 * tokens <0x00> .. <0xFF> (ids 3 .. 258), the printable ASCII characters, then a few merges
 * (" t", "he", " the", ...) with decreasing scores. Writes it to path and returns its vocabulary
 * size; testing_tiny_piece(id) is the piece of an id (to find ids in tests). */
int testing_write_tiny_tokenizer(const char *path);
const char *testing_tiny_piece(int id);
int testing_tiny_id(const char *piece); /* -1 if absent */

/* ---- CUDA in Check suites --------------------------------------------------------------------
 * Check runs every test in a child process forked from the suite's process, and CUDA cannot be
 * used in the child of a process that has initialised it (every call fails with "initialization
 * error"). So the suite's process must never touch CUDA: it asks whether a GPU answers through
 * testing_cuda_available, which runs the query in a child process of its own and reads the
 * answer back; each CUDA test then initialises CUDA in its own forked child.
 *
 *   testing_cuda_available  1 if a GPU answers, else 0 and the reason in why (never initialises
 *                           CUDA in the calling process)
 *   testing_cuda_cases      whether a suite adds its CUDA cases: prints "<suite>: CUDA tests
 *                           skipped: <why>" when not, and with REQUIRE_CUDA=1 in the environment
 *                           (scripts/gpu-check.sh sets it) treats that as an error: exit 1
 *   testing_suite_start/end around srunner_run_all: with CK_FORK=no every test runs in the
 *                           suite's process, where a CUDA error or die() ends the process at once;
 *                           a process that exits between the two calls says so and exits 1 (an
 *                           exit(0) inside a test must not read as a passing suite)
 */
int testing_cuda_available(char *why, size_t len);
int testing_cuda_cases(const char *suite);
void testing_suite_start(const char *suite);
void testing_suite_end(void);

/* The `attn` program end to end (design.md §4) on a device: writes q (B, H, T, D), k and v
 * (B, Hkv, S, D) of N(0, 1) data (seed) into dir, runs `<program> attn --device <device>
 * --kernel <kernel> [--causal]`, reads its output into out (B*H*T*D floats, the caller's) and
 * the float64 oracle's into want (likewise). Returns the program's exit status; its stderr is
 * copied into err. Dies when a file cannot be written or the output cannot be read. */
int testing_attn_command(const char *program, const char *dir, const char *device, int kernel, int B, int H, int Hkv,
                         int T, int S, int D, int causal, uint64_t seed, float *out, double *want, char *err,
                         size_t err_len);

#ifdef __cplusplus
}
#endif
#endif
