/*
 * mha.h: chapter 01, multi-head attention (MHA), the API later chapters and the tests use.
 *
 * The attention core, for every batch b and head h:
 *     scores = Q Kᵀ · scale                 (T, S)   -- materialised: T*S floats per head
 *     scores[t, s] = -inf where s > t + S - T   (causal, bottom-right aligned)
 *     P = softmax(scores) along s           (T, S)
 *     O = P V                               (T, D)
 * A query row that sees no key (causal with T > S) outputs zeros.
 *
 * The layer around it (self-attention, S = T):
 *     Q = X Wqᵀ, K = X Wkᵀ, V = X Wvᵀ       (B, T, H*D), split into heads -> (B, H, T, D)
 *     Y = concat_heads(attention(Q, K, V)) Woᵀ            (B, T, C)
 *
 * Versions (--kernel N on the chosen device; 1 is the simplest, the default is the fastest):
 *   CPU  1  reference: plain loops, one (b, h) at a time             -- obviously right
 *   CPU  2  OpenMP: blocks of query rows in parallel, QKᵀ and PV through the register-blocked
 *           matmul, masked columns of causal rows skipped
 *   CUDA 1  naive: one thread per score, per softmax row, per output element
 *   CUDA 2  cuBLAS: QKᵀ and PV as strided-batched GEMMs, a softmax kernel (a block per row)
 * Every version materialises the whole (B, H, T, S) score matrix, on purpose: that is the cost
 * chapter 03 removes.
 *
 * Shapes: B batch, H heads, T queries, S keys, D head dim, C model dim; all tensors C order.
 */
#ifndef MHA_H
#define MHA_H

#include <stddef.h>

#include "common/rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int B;       /* batch */
    int H;       /* heads: queries, keys and values alike in MHA */
    int T;       /* queries per head */
    int S;       /* keys (and values) per head */
    int D;       /* head dim */
    int causal;  /* bottom-right mask: query t sees key s iff s <= t + S - T */
    float scale; /* usually 1/sqrt(D) */
} MhaShape;

#define MHA_CPU_KERNELS 2
#define MHA_CUDA_KERNELS 2

/* ---- the attention core: q (B, H, T, D), k (B, H, S, D), v (B, H, S, D) -> out (B, H, T, D).
 * Each returns 0, or -1 with an error recorded when the score matrix does not fit in memory. */
int mha_attention_ref(const MhaShape *s, const float *q, const float *k, const float *v, float *out);
int mha_attention_omp(const MhaShape *s, const float *q, const float *k, const float *v, float *out);

/* Dispatcher: kernel 1..MHA_CPU_KERNELS, 0 = the fastest. -1 for an unknown number. */
int mha_attention_cpu(int kernel, const MhaShape *s, const float *q, const float *k, const float *v, float *out);
const char *mha_cpu_kernel_name(int kernel); /* "ref", "omp"; NULL if unknown */

/* The pieces chapter 02 reuses.
 * One head of the reference: qh (T, D), kh and vh (S, D) -> oh (T, D), through sc (T, S). */
void mha_head_attention_ref(const float *qh, const float *kh, const float *vh, float *sc, float *oh, int T, int S,
                            int D, int causal, float scale);

/* Rows [i0, i0 + rows) of a stack of query rows in which row i is query position i % T (one
 * head: i = t; a group of heads stacked head after head, chapter 02), against one K/V head:
 * q (rows, D) -> out (rows, D), scores written to sc (rows, S) with leading dimension S.
 * kt is the K/V head's Kᵀ (D, S), v its values (S, D). The OpenMP version's unit of work. */
#define MHA_BR 32 /* stacked rows per block: enough to reuse each Kᵀ panel, few enough to balance */
void mha_block_attention(const float *q, size_t i0, size_t rows, const float *kt, const float *v, float *sc,
                         float *out, int T, int S, int D, int causal, float scale);

/* Kᵀ of each of `heads` heads: k (heads, S, D) -> a new (heads, D, S) array (mem_free it), so that
 * Q Kᵀ is a plain (T, D) x (D, S) product; `what` names it in an out-of-memory error. NULL with
 * the error recorded. Chapter 02 transposes its K/V heads with it. */
float *mha_keys_transposed(const float *k, size_t heads, size_t S, size_t D, const char *what);

/* One row of P in place: scale the first n scores, softmax them (max subtracted), and zero
 * entries [n, width). n = 0 (no visible key) gives zeros. Chapter 02 reuses it. */
void mha_softmax_row(float *x, size_t n, size_t width, float scale);

/* Bytes of the (B, H, T, S) fp32 score matrix every version materialises. */
size_t mha_scores_bytes(const MhaShape *s);

/* ---- the layer ---------------------------------------------------------------------------- */

typedef struct {
    int C;     /* model dim */
    int H;     /* heads */
    int D;     /* head dim (H * D is usually C, but need not be) */
    float *wq; /* (H*D, C)  [out, in], as llama2.c stores weights */
    float *wk; /* (H*D, C) */
    float *wv; /* (H*D, C) */
    float *wo; /* (C, H*D) */
} MhaWeights;

/* Random weights, N(0, 1/fan_in): wq, wk, wv with std 1/sqrt(C), wo with 1/sqrt(H*D). */
void mha_weights_init(MhaWeights *w, int C, int H, int D, Rng *rng);
void mha_weights_free(MhaWeights *w);
size_t mha_weights_count(const MhaWeights *w); /* parameters: 4 * C * H * D */

/* The weights as four .npy files in a folder: wq.npy (H*D, C), wk.npy, wv.npy, wo.npy (C, H*D).
 * Loading needs H (the files do not say how H*D splits); 0 or -1 with the problem recorded. */
int mha_weights_save(const MhaWeights *w, const char *dir);
int mha_weights_load(const char *dir, int H, MhaWeights *w);

/* x (B, T, H*D) -> out (B, H, T, D), and back. */
void mha_split_heads(const float *x, float *out, int B, int T, int H, int D);
void mha_merge_heads(const float *x, float *out, int B, int T, int H, int D);

/* One projection into heads: out (B, heads, T, D) = the heads of x (B, T, C) times wᵀ (heads*D, C),
 * through flat (B, T, heads*D), scratch. Chapter 02 projects its fewer K/V heads with it. */
void mha_project_heads(float *out, float *flat, const float *x, const float *w, int B, int T, int heads, int D, int C);

/* Self-attention layer: x (B, T, C) -> y (B, T, C), attention core by CPU `kernel`. */
int mha_layer_forward(const MhaWeights *w, int kernel, const float *x, int B, int T, int causal, float *y);

/* ---- CUDA (device pointers, same layouts); available when built with HAVE_CUDA ----------- */
#if HAVE_CUDA
int mha_attention_cuda(int kernel, const MhaShape *s, const float *d_q, const float *d_k, const float *d_v,
                       float *d_out);
const char *mha_cuda_kernel_name(int kernel); /* "naive", "cublas"; NULL if unknown */

/* The pieces later chapters reuse. Softmax over rows of d_scores (rows, S) in place:
 * v1 expects masked scores already -inf (a thread a row); v2 applies the causal mask itself
 * (a block a row; row r is query r % T). */
void mha_softmax_cuda1(float *d_scores, size_t rows, int S);
void mha_softmax_cuda2(float *d_scores, size_t rows, int T, int S, int causal);
/* d_y (M, N) = d_x (M, K) · d_w (N, K)ᵀ through cuBLAS. */
void mha_linear_cuda(float *d_y, const float *d_x, const float *d_w, int M, int N, int K);
/* (B, T, H, D) -> (B, H, T, D) when to_heads, else back. */
void mha_heads_cuda(const float *d_in, float *d_out, int B, int T, int H, int D, int to_heads);

/* The layer on the GPU: d_w holds device copies of the weights (mha_weights_to_device). */
int mha_layer_forward_cuda(const MhaWeights *d_w, int kernel, const float *d_x, int B, int T, int causal,
                           float *d_y);
void mha_weights_to_device(const MhaWeights *w, MhaWeights *d_w);
void mha_weights_free_device(MhaWeights *d_w);
#endif

#ifdef __cplusplus
}
#endif
#endif
