/*
 * testing.h: what the Check suites of common/ and of the six chapters share. Three files hold it:
 *
 *   testing.c         running our programs (exit status, stdout, stderr, a time limit), --help and
 *                     verify, the temporary folder of each test, the one-error-line rule for bad
 *                     input, a failing disk made to order, and CUDA inside Check's forked tests
 *   testing_oracle.c  the tests' independent references: deterministic N(0, 1) data, attention
 *                     and the model in float64, llama2.c checkpoints and a tiny tokenizer
 *   testing_attn.c    the checks of every attention chapter: its versions on the shape grid and
 *                     on a device, and its `attn` program end to end against the float64 oracle
 *
 * None of them uses Check (the fuzz targets link them too): a check returns NULL or what failed,
 * and the two assertion macros below, testing_expect_error and testing_assert_ok, expand to
 * Check's ck_assert_msg in the test that uses them.
 */
#ifndef COMMON_TESTING_H
#define COMMON_TESTING_H

#include <stddef.h>
#include <stdint.h>

#include "attn_harness.h"
#include "model.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The tolerance of docs/contracts.md §4.1 for fp32 against an fp32 reference: every suite's ATOL and RTOL. */
#define ATOL 1e-5
#define RTOL 1e-4

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
    testing_assert_ok(testing_error_check((name), (const char *const[]){__VA_ARGS__, NULL}, (fragment)))

/* A check of this file that returns NULL or what failed, as a Check assertion:
 *   testing_assert_ok(testing_help_and_verify("02_mqa_gqa", subs, verify, 101));
 * (a macro, like testing_expect_error: the test file includes <check.h>). */
#define testing_assert_ok(why_or_null)                                                                 \
    do {                                                                                               \
        const char *testing_why_ = (why_or_null);                                                      \
        ck_assert_msg(testing_why_ == NULL, "%s", testing_why_);                                       \
    } while (0)

/* A chapter's --help and verify, checked: with subs (NULL-terminated; NULL: no --help check),
 * `<name> --help` and `<name> <sub> --help` for every sub exit 0 and print "usage: <name>"; with
 * verify (verify's arguments, NULL-terminated; NULL: no verify), `<name> verify <verify...>`
 * exits 0 and its last line says "P passed, 0 failed" with P >= min_passed. NULL when all of that
 * holds; otherwise what did not (static text, valid until the next call). */
const char *testing_help_and_verify(const char *name, const char *const subs[], const char *const verify[],
                                    int min_passed);

/* ==== folders and files (testing.c) ============================================================= */

/* A new empty folder under $TMPDIR or /tmp (dies on failure), and its recursive removal. */
void temp_dir_create(char *buf, size_t len);
void temp_dir_remove(const char *path);

/* The running test's own folder. testing_tmp_setup and testing_tmp_teardown are a Check checked
 * fixture, the same in every suite: a case with .temp_dir = 1 (testing_main.h) has them make
 * testing_tmp a new empty folder before each of its tests and remove it, with everything in it,
 * after the test. */
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

/* The attention contract of docs/contracts.md §3.2 in float64, written independently of every chapter:
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

/* tok[i] = (i * mul + add) % vocab for i < n: a deterministic sequence of tokens that is not one
 * token again and again. */
void testing_fill_tokens(int *tok, int n, int mul, int add, int vocab);

/* The tiny tokenizer written to path and loaded into t (tokenizer_free it); returns its
 * vocabulary size. Dies if it cannot be written or loaded. */
int testing_load_tiny_tokenizer(const char *path, Tokenizer *t);

/* The piece of id in the tiny tokenizer (NULL past its end), and the id of a piece (-1 if
 * absent): to find ids in tests. */
const char *testing_tiny_piece(int id);
int testing_tiny_id(const char *piece);

/* ==== attention versions (testing_attn.c) ======================================================== */

/* A chapter's CPU versions first..im->n_cpu against im->ref (called with kernel 1) on the grid of
 * docs/contracts.md §4.2: (T, S) over VERIFY_LENGTHS x VERIFY_LENGTHS, causal 0 and 1, the cases numbered
 * n = 0, 1, ... in that order. Case n has D = VERIFY_HEAD_DIMS[n % 4], B = 1 + n % 2, and heads
 * H = Hkv = {1, 4, 8}[n % 3] when im->heads is ATTN_HEADS_EQUAL (chapter 01), else (H, Hkv) =
 * VERIFY_HEAD_RATIOS[n % 5]; a case with T*S*H*B > 3e5 runs with B = 1 and H = Hkv = 1 (or H = 2,
 * Hkv = 1). Its q, k, v ~ N(0, 1) from seeds seed + n, + 1, + 2; every version writes over an
 * output of NaN. Under TEST_SMALL=1 the cases with T or S above 257 are skipped (n counts them
 * still). Each (case, version) pair that is off or fails is said on stderr; NULL when there is
 * none, else how many (static text). */
const char *testing_attn_grid(const AttnImpls *im, int first, uint64_t seed, double atol, double rtol);

/* Every version of im on device dev (1..n_cpu or 1..n_cuda) against im->ref on the CPU, on
 * each shape {B, H, Hkv, T, S, D, causal} of shapes (scale 1/sqrt(D); shape i's data from seeds
 * seed + i, + 1, + 2), through attn_run_host (on the GPU: inputs uploaded, an output of NaN,
 * downloaded). Every version must compute in fp32. NULL when every run is within atol and rtol,
 * else how many were not (each said on stderr). */
const char *testing_attn_shapes(const AttnImpls *im, Device dev, const int shapes[][7], size_t n_shapes,
                                uint64_t seed, double atol, double rtol);

/* The same on the CPU against the float64 oracle (attention_f64) instead of im->ref. */
const char *testing_attn_oracle(const AttnImpls *im, const int shapes[][7], size_t n_shapes, uint64_t seed,
                                double atol, double rtol);

/* How testing_attn_program runs a chapter's `attn` command. */
typedef struct {
    const char *name;        /* the program: 01_mha .. 05_paged */
    const char *device;      /* --device: "cpu" or "cuda" */
    int n_kernels;           /* --kernel 1..n_kernels, each */
    uint64_t seed;           /* shape i's q, k, v ~ N(0, 1) from seeds seed + i, + 1, + 2 */
    float scale;             /* 0: the program's default, 1/sqrt(D); else given as --scale */
    const char *extra[4];    /* more arguments, NULL-terminated (chapter 05: --block-size N) */
    int (*fp16)(int kernel); /* NULL, or 1 for a version that computes in fp16 */
} TestingAttnRun;

/* The `attn` program end to end (docs/contracts.md §1.3): for every shape {B, H, Hkv, T, S, D, causal} of
 * shapes, q (B, H, T, D), k and v (B, Hkv, S, D) written into dir as .npy files, then `<name> attn
 * --device <device> --kernel k [--causal] [--scale s] [extra...]` for every version k, its output
 * read back and held to atol and rtol against the float64 oracle (compare_f32_f64 prints the first
 * mismatches); a version for which run->fp16 says 1 is held to FlashAttention's rule instead
 * (attn_check_fp16, against the harness's naive fp16 run). NULL when every run passed; otherwise
 * what failed first (static text, valid until the next call). Dies when a file cannot be written
 * or the output cannot be read. */
const char *testing_attn_program(const TestingAttnRun *run, const char *dir, const int shapes[][7], size_t n_shapes,
                                 double atol, double rtol);

#ifdef __cplusplus
}
#endif
#endif
