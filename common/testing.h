/*
 * testing.h: what the Check suites of common/ and of the six chapters share. Two files hold it:
 *
 *   testing.c         running our programs (exit status, stdout, stderr, a time limit), the
 *                     temporary folder of each test, the one-error-line rule for bad input, a
 *                     failing disk made to order, and CUDA inside Check's forked tests
 *   testing_oracle.c  the tests' independent references: deterministic N(0, 1) data, attention
 *                     and the model in float64, a tiny tokenizer, and the `attn` program end to
 *                     end against the float64 attention
 *
 * Neither file uses Check (the fuzz targets link them too); the one assertion macro below,
 * testing_expect_error, expands to Check's ck_assert_msg in the test that uses it.
 */
#ifndef COMMON_TESTING_H
#define COMMON_TESTING_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ==== running programs (testing.c) ============================================================= */

typedef struct {
    int status;       /* exit status, or 128 + signal number when killed by a signal */
    long max_rss_kib; /* the child's peak resident memory (getrusage's ru_maxrss) */
    char out[65536];  /* stdout, truncated to fit, NUL-terminated */
    char err[65536];  /* stderr, likewise */
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

/* The most arguments testing_run passes after the program's path. */
#define TESTING_MAX_ARGS 32

/* Runs the program `name` (01_mha .. 06_batching, from program_path) with args (NULL-terminated,
 * without argv[0]; at most TESTING_MAX_ARGS) and fills r, like run_program. -1 if it could not be
 * started or args is too long. */
int testing_run(ProcResult *r, const char *name, const char *const args[]);

/* The rule for bad input, checked: `<name> args` exits with status 1 and writes exactly one line
 * to stderr, "<name>: error: ...", which contains fragment. NULL when it does; otherwise what
 * it did instead (static text, valid until the next call). */
const char *testing_error_check(const char *name, const char *const args[], const char *fragment);

/* testing_error_check as a Check assertion, the arguments listed after the fragment:
 *   testing_expect_error("04_kvcache", "--max-new", "generate", "--max-new", "x");
 * (a macro, so that testing.c needs no Check; the test file includes <check.h>). */
#define testing_expect_error(name, fragment, ...)                                                      \
    do {                                                                                               \
        const char *testing_why_ =                                                                     \
            testing_error_check((name), (const char *const[]){__VA_ARGS__, NULL}, (fragment));         \
        ck_assert_msg(testing_why_ == NULL, "%s", testing_why_);                                       \
    } while (0)

/* ==== folders and files (testing.c) ============================================================= */

/* A new empty folder under $TMPDIR or /tmp (dies on failure), and its recursive removal. */
void temp_dir_create(char *buf, size_t len);
void temp_dir_remove(const char *path);

/* The running test's own folder. testing_tmp_setup and testing_tmp_teardown are a Check checked
 * fixture, the same in every suite:
 *   tcase_add_checked_fixture(tc, testing_tmp_setup, testing_tmp_teardown);
 * makes testing_tmp a new empty folder before each test of tc and removes it, with everything in
 * it, after the test. */
extern char testing_tmp[4096];
void testing_tmp_setup(void);
void testing_tmp_teardown(void);

/* "<testing_tmp>/<name>" into buf; returns buf. */
const char *testing_tmp_path(char *buf, size_t len, const char *name);

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

/* ==== CUDA in Check suites (testing.c) ==========================================================
 * Check runs every test in a child process forked from the suite's process, and CUDA cannot be
 * used in the child of a process that has initialised it (every call fails with "initialization
 * error"). So the suite's process must never touch CUDA: it asks whether a GPU answers through
 * testing_cuda_available, which runs the query in a child process of its own and reads the
 * answer back; each CUDA test then initialises CUDA in its own forked child. */

/* 1 if a GPU answers, else 0 and the reason in why (never initialises CUDA in the calling
 * process). */
int testing_cuda_available(char *why, size_t len);

/* Whether a suite adds its CUDA cases: prints "<suite>: CUDA tests skipped: <why>" when not, and
 * with REQUIRE_CUDA=1 in the environment (scripts/gpu-check.sh sets it) treats that as an error:
 * exit 1. */
int testing_cuda_cases(const char *suite);

/* Around srunner_run_all (testing_main.h calls them): with CK_FORK=no every test runs in the
 * suite's process, where a CUDA error or die() ends the process at once; a process that exits
 * between the two calls says so and exits 1 (an exit(0) inside a test must not read as a passing
 * suite). */
void testing_suite_start(const char *suite);
void testing_suite_end(void);

/* ==== references and fixtures (testing_oracle.c) ================================================ */

/* x[0..n) drawn from N(0, 1) by common/rng.h's generator seeded with seed: the same data on every
 * machine. */
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

/* A llama2.c checkpoint for config c, written byte by byte independently of model_save: the
 * header, then block after block in run.c's order (the RoPE tables included), element i of
 * block k holding k + i * 1e-6 -- so a loader that reads a block from the wrong place shows it.
 * The last truncate_by floats are left out (a truncated file). Dies if it cannot be written. */
void testing_write_checkpoint(const char *path, const ModelConfig *c, size_t truncate_by);

/* A 156-byte llama2.c checkpoint whose header's sizes wrap past 2^64 to exactly the file's size:
 * dim 2^30, hidden 1, 1 layer, 2^29 heads, 1 kv head, vocab 2^31 - 10 (shared), seq_len 16 make
 * 2^62 + 32 floats, and 28 + 4 (2^62 + 32) bytes = 2^64 + 156 (fuzz/make_corpus.c writes the same
 * file). A loader that sizes without overflow checks reads 2^64 bytes into it. Dies if it
 * cannot be written. */
void testing_write_wrapping_checkpoint(const char *path);

/* A tiny llama2.c-format tokenizer, made here (never downloaded): <unk>, BOS, EOS, the 256 byte
 * tokens <0x00> .. <0xFF> (ids 3 .. 258), the printable ASCII characters, then a few merges
 * (" t", "he", " the", ...) with decreasing scores. Writes it to path and returns its vocabulary
 * size; dies if it cannot be written. */
int testing_write_tiny_tokenizer(const char *path);

/* The piece of id in the tiny tokenizer (NULL past its end), and the id of a piece (-1 if
 * absent): to find ids in tests. */
const char *testing_tiny_piece(int id);
int testing_tiny_id(const char *piece);

/* The `attn` program end to end (design.md §4) on a device: writes q (B, H, T, D), k and v
 * (B, Hkv, S, D) of N(0, 1) data (seeds seed, seed + 1, seed + 2) into dir, runs `<program> attn
 * --device <device> --kernel <kernel> [--causal]` (program: a path), reads its output into out
 * (B*H*T*D floats, the caller's) and the float64 oracle's into want (likewise). Returns the
 * program's exit status; its stderr is copied into err. Dies when a file cannot be written or the
 * output cannot be read. */
int testing_attn_command(const char *program, const char *dir, const char *device, int kernel, int B, int H, int Hkv,
                         int T, int S, int D, int causal, uint64_t seed, float *out, double *want, char *err,
                         size_t err_len);

/* The `attn --device cuda` test of chapters 01 to 05: for every shape (B, H, Hkv, T, S, D,
 * causal) of shapes[0..n_shapes) and every CUDA version 1..n_kernels of the program `name`,
 * testing_attn_command in dir with seed 700 + the shape's index, the output held to atol and rtol
 * against the float64 oracle (compare_f32_f64, which prints the first mismatches). A version for
 * which fp16(kernel) is 1 (fp16 may be NULL: none) is held to FlashAttention's fp16 rule instead
 * (attn_check_fp16, against the harness's naive fp16 run). NULL when every run passed; otherwise
 * what failed first (static text, valid until the next call). */
const char *testing_attn_on_gpu(const char *name, const char *dir, const int shapes[][7], size_t n_shapes,
                                int n_kernels, double atol, double rtol, int (*fp16)(int kernel));

#ifdef __cplusplus
}
#endif
#endif
