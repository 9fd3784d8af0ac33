/*
 * attn_harness.h: running, timing and verifying a chapter's attention versions, whatever the
 * chapter. A chapter describes its versions once, as an AttnImpls table (a CPU entry point, a
 * CUDA entry point, their names), and gets from here:
 *
 *   attn_command      the `attn` subcommand of docs/contracts.md §1.3, end to end
 *   attn_verify_command  the `verify` subcommand: every version against the chapter's reference
 *                     on the grid of docs/contracts.md §4.2, ending with "N passed, N failed"
 *                     (attn_verify_parse and attn_verify_grid: its pieces, for a chapter that
 *                     adds cases of its own, as chapter 05 does)
 *   ATTN_ENTRY        a chapter's entry point with the harness's arguments, in one line
 *   attn_run_host     one call with host buffers on either device (copies to and from the GPU)
 *   attn_time         a timed call with the inputs already on the device
 *
 * Shape key: q and out (B, H, T, D); k and v (B, Hkv, S, D); query head h reads kv head
 * h / (H / Hkv) (chapter 01: Hkv = H).
 */
#ifndef COMMON_ATTN_HARNESS_H
#define COMMON_ATTN_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "attn_cli.h"
#include "bench.h"
#include "device.h"
#include "tensor.h"
#include "verify.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int B, H, Hkv, T, S, D;
    int causal; /* bottom-right */
    float scale;
} AttnDims;

/* One attention call: kernel 1..n (0 = the fastest). CPU entry points take host pointers,
 * CUDA entry points device pointers. 0, or -1 with an error recorded. */
typedef int (*AttnFn)(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out);
typedef const char *(*AttnNameFn)(int kernel);
/* 1 if version `kernel` computes in fp16 (tensor cores), which verify checks by FlashAttention's
 * rule (attn_check_fp16) instead of fp32 tolerance. */
typedef int (*AttnFp16Fn)(int kernel);

typedef struct {
    const char *prog;      /* "01_mha": names in messages */
    AttnFn ref;            /* the reference every version is checked against (called with kernel 1) */
    int ref_is_cpu1;       /* 1: ref is this chapter's own CPU kernel 1, which verify then skips */
    AttnFn cpu;            /* CPU versions */
    AttnNameFn cpu_name;
    int n_cpu;
    AttnFn cuda;           /* CUDA versions; NULL in a build without CUDA (ATTN_IF_CUDA) */
    AttnNameFn cuda_name;
    int n_cuda;
    AttnFp16Fn cuda_fp16;  /* NULL: every CUDA version computes in fp32 */
    AttnHeadRule heads;    /* which H:Hkv the chapter accepts; the default: H a multiple of Hkv */
    const char *attn_help; /* the `attn` subcommand's --help paragraph */
    const char *label;     /* NULL, or words added to every verify line (chapter 05: "bs=16") */
    void *ctx;             /* passed to ref, cpu and cuda as they run: the chapter's options (chapter
                              05: the block size and the order of the pool), NULL for most */
} AttnImpls;

/* The CUDA fields of a table, which a build without CUDA leaves out (its entry points and names
 * do not exist there): ATTN_IF_CUDA(.cuda = run_cuda, .cuda_name = ..., .n_cuda = ...). */
#if HAVE_CUDA
#define ATTN_IF_CUDA(...) __VA_ARGS__
#else
#define ATTN_IF_CUDA(...) .cuda = NULL
#endif

/* The AttnFn of a chapter whose versions take its own shape struct (chapters 01-03):
 *     static ATTN_ENTRY(run_cpu, MhaShape, mha_shape, mha_attention_cpu(kernel, &s, q, k, v, out))
 * defines run_cpu(void *ctx, int kernel, const AttnDims *d, q, k, v, out), which sets
 * `const MhaShape s = mha_shape(d);` and returns the call; ctx is not used. ATTN_CUDA_ENTRY
 * defines a static one in a build with CUDA, nothing without. */
#define ATTN_ENTRY(name, Shape, to_shape, call)                                                                  \
    int name(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out) \
    {                                                                                                            \
        const Shape s = to_shape(d);                                                                             \
        (void)ctx;                                                                                               \
        return call;                                                                                             \
    }
#if HAVE_CUDA
#define ATTN_CUDA_ENTRY(name, Shape, to_shape, call) static ATTN_ENTRY(name, Shape, to_shape, call)
#else
#define ATTN_CUDA_ENTRY(name, Shape, to_shape, call)
#endif

size_t attn_q_count(const AttnDims *d);  /* B*H*T*D */
size_t attn_kv_count(const AttnDims *d); /* B*Hkv*S*D */

/* q, k, v ~ N(0, 1) from `seed`, allocated here (tensor_free them). */
void attn_random_inputs(const AttnDims *d, uint64_t seed, Tensor *q, Tensor *k, Tensor *v);

int attn_impl_count(const AttnImpls *im, Device dev);
const char *attn_impl_name(const AttnImpls *im, Device dev, int kernel);

/* Host buffers in and out, on either device. */
int attn_run_host(const AttnImpls *im, Device dev, int kernel, const AttnDims *d, const float *q, const float *k,
                  const float *v, float *out);

typedef struct {
    BenchTiming time;
    size_t peak_bytes; /* CPU: the most memory the call held (allocator); GPU: 0 */
    int rc;
} AttnTiming;

/* One warm-up, then up to `repeats` runs within budget_s, inputs uploaded first when dev is the
 * GPU. cold_cache: the CPU caches are flushed before every run (decode: the KV cache comes
 * from DRAM, as in a model whose other layers evicted it). */
AttnTiming attn_time(const AttnImpls *im, Device dev, int kernel, const AttnDims *d, const Tensor *q,
                     const Tensor *k, const Tensor *v, int repeats, double budget_s, int cold_cache);

/* ---- fp16 versions: FlashAttention's rule ----------------------------------------------------
 * A kernel that rounds its inputs to fp16 cannot meet fp32 tolerance, and a fixed looser one
 * would be a guess. FlashAttention's tests compare the kernel's error against the fp32 reference
 * with the error of naive attention run in fp16 against the same reference: at most twice as
 * large. attn_naive_fp16 is that naive run: q, k, v rounded to fp16, each score rounded to fp16's
 * 11 significant bits (but keeping fp32's range: a logit of 1e5 is not inf, as in a kernel whose
 * tensor cores accumulate in fp32), softmax in fp32 with each probability rounded to fp16, P V
 * summed in fp32 and each output rounded to fp16. q (B, H, T, D), k and v (B, Hkv, S, D) -> out
 * (B, H, T, D). */
void attn_naive_fp16(const AttnDims *d, const float *q, const float *k, const float *v, float *out);

/* x rounded to the nearest fp16 value (ties to even), as a float; +-inf beyond fp16's range. */
float attn_round_fp16(float x);

typedef struct {
    double err;       /* max |out - ref| */
    double err_naive; /* max |naive - ref| */
    double nmse;      /* ||out - ref||^2 / ||ref||^2 */
    int ok;           /* err <= max(2 err_naive, 1e-5) and nmse <= 5e-4 (a NaN fails) */
} AttnFp16Check;

AttnFp16Check attn_check_fp16(const float *out, const float *ref, const float *naive, size_t n);

/* `attn`: parse, load and check, run, save (--help: im->attn_help). Returns the exit status. */
int attn_command(const AttnImpls *im, int argc, char **argv);

/* `verify`: the grid of docs/contracts.md §4.2 with the H:Hkv ratios the chapter accepts, plus logits of
 * +-1e4 and rows of very negative logits. Returns the exit status. */
int attn_verify_command(const AttnImpls *im, int argc, char **argv);

/* verify's options: --device, --kernel N (0: all), --quick, --smoke, --verbose. */
typedef struct {
    const char *device;
    int kernel;
    int quick;    /* 0, 1 (--quick: lengths <= 129) or 2 (--smoke: lengths <= 17) */
    int verbose;
    int have_gpu; /* the CUDA versions run: a GPU answers and the chapter has them */
} AttnVerifyArgs;

/* Parses verify's options with `summary` as the --help paragraph (exits after --help or on a bad
 * option); --kernel beyond the chapter's versions, or --device cuda without a usable GPU: one
 * error line, exit 1; --device auto without one prints "CUDA versions skipped: <why>". */
void attn_verify_parse(AttnVerifyArgs *a, const AttnImpls *im, const char *summary, int argc, char **argv);

/* The devices verify checks, the CPU first (--device auto: the GPU too when have_gpu): their
 * number, the devices into devs. */
int attn_verify_devices(const char *device, int have_gpu, Device devs[2]);

/* The grid of attn_verify_command (T x S x causal, the D and H:Hkv that go with each case, and
 * the extreme-logit cases) into a tally; quick = 1 keeps lengths <= 129, 2 lengths <= 17. */
void attn_verify_grid(VerifyTally *tally, const AttnImpls *im, const char *device, int only_kernel, int have_gpu,
                      int quick, uint64_t *seed);

/* Checks every selected version on one problem against im->ref; records each in the tally.
 * extreme: 0 random, 1 logits ~ +-1e4, 2 every logit ~ -1e4 (integers: exact in any order). */
void attn_verify_case(VerifyTally *tally, const AttnImpls *im, const char *device, int only_kernel, int have_gpu,
                      const AttnDims *d, uint64_t seed, int extreme);

#ifdef __cplusplus
}
#endif
#endif
