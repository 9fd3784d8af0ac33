/*
 * kvcache.h: chapter 04, the KV cache -- prefill once, then one token per step.
 *
 * A decoder predicts token t+1 from tokens 0..t. Without a cache, every step recomputes every
 * earlier token's keys and values, whose results never change: the work per step grows with the
 * position. With a cache, each token's K and V (after RoPE) are computed once and stored, per
 * layer, as [batch, n_kv_heads, max_seq, D]; a step computes one new row and attends one
 * query against the stored ones. The cache costs 2 * layers * kv_heads * D * bytes per
 * token of memory, which is why it is also stored in fp16 or int8 (one scale per token per kv
 * head) here.
 *
 * Prefill: the prompt in one forward pass; its K/V go into the cache and its queries attend
 * through chapter 03's flash kernel over what the cache holds. Decode: one query per sequence
 * against the cache:
 *   CPU  1  ref:   per query head, plain loops over the cache (dequantised element by element)
 *   CPU  2  split: per (sequence, kv head, part of the sequence) task, the G query heads of the
 *                  group read each key and value row once (an MR x 16 micro-kernel or dot/axpy paths
 *                  of common/matmul), an online softmax over chunks of 512 keys, and the parts
 *                  merged with their log-sum-exp (chapter 03's flash_merge); OpenMP over tasks
 *   CUDA 1  split: the same split over the sequence, a block per task, then a reduce kernel
 *
 * The files: kvcache.c the cache and its quantisation; decode.c decode attention through it;
 * generate.c the model (common/model.c) through the cache and the generation loop; kvcache.cu
 * the same on the GPU (the model there is common/model_cuda.cu); main.c the lesson, bench.c and
 * generate_cmd.c the subcommands.
 */
#ifndef KVCACHE_H
#define KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "common/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the cache (kvcache.c) ------------------------------------------------------------------- */

typedef enum { KV_F32 = 0, KV_F16 = 1, KV_INT8 = 2 } KvDtype;

#define KV_DTYPE_CHOICES "f32|f16|int8"
int kv_dtype_parse(const char *name, KvDtype *out);
const char *kv_dtype_name(KvDtype dt);
size_t kv_dtype_bytes(KvDtype dt); /* 4, 2, 1 */

typedef struct {
    KvDtype dtype;
    int n_layers, batch, n_kv_heads, max_seq;
    int D;                    /* the head dimension */
    void *k, *v;              /* (L, B, Hkv, max_seq, D) elements of dtype */
    float *k_scale, *v_scale; /* int8: (L, B, Hkv, max_seq), one scale per token per kv head */
    int *len;                 /* (B) tokens each sequence holds */
} KvCache;

/* Bytes per token of cache: 2 * layers * kv_heads * D * bytes (+ 2 * layers * kv_heads scales
 * of 4 bytes for int8). */
size_t kvcache_bytes_per_token(int n_layers, int n_kv_heads, int D, KvDtype dt);

int kvcache_create(KvCache *c, int n_layers, int batch, int n_kv_heads, int max_seq, int D, KvDtype dt);
void kvcache_free(KvCache *c);
size_t kvcache_bytes(const KvCache *c); /* everything allocated */
void kvcache_reset(KvCache *c);         /* every sequence back to length 0 */

/* Stores positions [pos, pos + n) of sequence b in layer `layer`, from token-major rows
 * k and v (n, Hkv * D), quantising to the cache's dtype. */
void kvcache_write(KvCache *c, int layer, int b, int pos, int n, const float *k, const float *v);

/* Dequantised copy of positions [0, len) of sequence b: k_out, v_out (Hkv, len, D). */
void kvcache_gather(const KvCache *c, int layer, int b, int len, float *k_out, float *v_out);

/* ---- decode attention (decode.c): one query for each of n_seq sequences. seqs[i] is the cache
 * slot (batch index) of sequence i (NULL: slot i); lens[i] its length; its query, at position
 * lens[i] - 1, attends its first lens[i] cached positions: q (n_seq, H, D) -> out (n_seq, H, D).
 * H is a multiple of the cache's Hkv; scores are scaled by `scale` (1/sqrt(D) in the model). */
#define KVCACHE_CPU_KERNELS 2
int kvcache_decode_ref(const KvCache *c, int layer, int H, float scale, int n_seq, const int *seqs, const int *lens,
                       const float *q, float *out);
/* n_splits: parts per sequence (0 = enough parts for every thread to have several tasks) */
int kvcache_decode_split(const KvCache *c, int layer, int H, float scale, int n_seq, const int *seqs, const int *lens,
                         const float *q, float *out, int n_splits);
int kvcache_decode_cpu(int kernel, const KvCache *c, int layer, int H, float scale, int n_seq, const int *seqs,
                       const int *lens, const float *q, float *out);
const char *kvcache_cpu_kernel_name(int kernel); /* "ref", "split" */

/* T queries per sequence at its last T positions (bottom-right when causal): q (n_seq, H, T, D)
 * -> out (n_seq, H, T, D). T = 1 uses decode kernel `kernel`; T > 1 gathers each sequence's
 * cache and runs chapter 03's fast flash attention over it. */
int kvcache_attention(const KvCache *c, int layer, int H, int T, float scale, int causal, int n_seq, const int *seqs,
                      const int *lens, const float *q, int kernel, float *out);

/* ---- the model through the cache (generate.c; sequence b of the cache; CPU) ------------------ */

/* Runs tokens[0..n) at positions len[b] .. len[b]+n-1 of sequence b, storing their K/V, and
 * writes the logits (vocab) of the last one. Prefill when n > 1, a decode step when n = 1
 * (with decode kernel `kernel`). Errors: positions beyond the cache or seq_len, bad ids. */
int kvcache_forward(const Model *m, KvCache *c, int b, const int *tokens, int n, int kernel, float *logits);

/* The same logits with no cache at all: the whole sequence tokens[0..n) through the model. */
int kvcache_forward_nocache(const Model *m, const int *tokens, int n, float *logits);

/* The options `04_kvcache generate` and `04_kvcache_tp generate` share (ArgSpec entries). */
#define KVCACHE_OPTION_PROMPT(var)                                                                              \
    {.name = "prompt", .kind = ARG_STRING, .dest = (var), .metavar = "IDS",                                   \
     .help = "prompt token ids, e.g. \"1 2 3\" (default \"1\", llama2.c's BOS)"}
#define KVCACHE_OPTION_MAX_NEW(var)                                                                             \
    {.name = "max-new", .kind = ARG_INT, .dest = (var), .metavar = "N", .help = "tokens to generate (default 64)", \
     .min = 0, .max = 1 << 24}
#define KVCACHE_OPTION_KERNEL(var)                                                                              \
    {.name = "kernel", .kind = ARG_INT, .dest = (var), .metavar = "N",                                        \
     .help = "CPU decode kernel: 1 = ref, 2 = split (default)", .min = 1, .max = KVCACHE_CPU_KERNELS}

typedef struct {
    int max_new;         /* tokens to generate */
    float temperature;   /* 0: greedy */
    float top_p;         /* nucleus sampling as run.c (common/model.h's Sampling); 0 or 1: off */
    int top_k;           /* 0: off */
    uint64_t seed;       /* for temperature > 0 (llama2.c's generator, model_rng_seed) */
    int use_cache;       /* 0: recompute everything at every step */
    KvDtype dtype;
    int kernel;          /* decode kernel */
    int prefill_chunk;   /* 0: the whole prompt in one forward; else chunks of this many tokens */
    int stop_at_bos_eos; /* 1: stop at a sampled BOS or EOS, as llama2.c's run.c does (text mode) */
} GenOptions;

/* Generates o->max_new tokens after the prompt into out; step_s (max_new) gets each step's
 * seconds when not NULL (step 0 includes the prefill). Checks the prompt and lengths first.
 * With stop_at_bos_eos, a sampled BOS or EOS ends the generation: it and the rest of out are -1. */
int kvcache_generate(const Model *m, const int *prompt, int n_prompt, const GenOptions *o, int *out, double *step_s);

/* One forward of a generation, on either device: tokens[0..n) at positions pos0 .. pos0+n-1 of
 * the one sequence (without a cache: the whole sequence again, pos0 = 0); writes the logits
 * (vocab) of the last token. 0, or -1 with an error recorded. */
typedef int (*KvGenForward)(void *ctx, const int *tokens, int n, int pos0, float *logits);

/* The generation loop of kvcache_generate and kvcache_generate_cuda: the prompt (whole or in
 * chunks of o->prefill_chunk; with no cache, the whole sequence at every step), then a token
 * per step sampled from the logits. The request must have passed kvcache_check_request. */
int kvcache_generate_loop(const ModelConfig *c, KvGenForward forward, void *ctx, const int *prompt, int n_prompt,
                          const GenOptions *o, int *out, double *step_s);

/* prompt + max_new must fit seq_len; ids must be < vocab. -1 with the reason otherwise. */
int kvcache_check_request(const ModelConfig *c, const int *prompt, int n_prompt, int max_new);

/* Do two greedy continuations a and b (n tokens each) of the same prompt agree, up to near-ties?
 * Two fp32 computations of one model that add in different orders (the CPU and the GPU, cuBLAS
 * at two batch sizes) give logits that differ in the last bits, so they pick different tokens
 * where the two best logits are that close; after such a step the sequences part for good.
 * Returns the first position where a and b differ (-1: identical), and in *gap the distance
 * of the two tokens' logits there, by the CPU (kvcache_forward_nocache on the prompt and the
 * common prefix), relative to max(1, the largest |logit|). A near-tie is a gap within
 * KVCACHE_NEAR_TIE. -2 with an error recorded when the forward fails. */
#define KVCACHE_NEAR_TIE 1e-4
int kvcache_greedy_divergence(const Model *m, const int *prompt, int n_prompt, const int *a, const int *b, int n,
                              double *gap);

/* ---- CUDA (kvcache.cu) ------------------------------------------------------------------------ */
#if HAVE_CUDA
#define KVCACHE_CUDA_KERNELS 1
/* Decode attention on the GPU: d_k, d_v (B, Hkv, max_seq, D) fp32, d_q (B, H, D), d_lens (B)
 * on the device, max_len the longest of them -> d_out (B, H, D). */
int kvcache_decode_cuda(int kernel, const float *d_k, const float *d_v, int B, int H, int Hkv, int max_seq, int D,
                        const float *d_q, const int *d_lens, int max_len, float *d_out);
const char *kvcache_cuda_kernel_name(int kernel); /* "split" */

/* Greedy or sampled generation with the whole model on the GPU (common/model_cuda.h) through an
 * fp32 cache on the GPU: the same contract as kvcache_generate. */
int kvcache_generate_cuda(const Model *m, const int *prompt, int n_prompt, const GenOptions *o, int *out,
                          double *step_s);
#endif

#ifdef __cplusplus
}
#endif

#endif
