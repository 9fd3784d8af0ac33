/*
 * gqa.h: chapter 02, multi-query (MQA) and grouped-query attention (GQA).
 *
 * Chapter 01 gave every query head its own key and value head. Here H query heads share
 * Hkv key/value heads, Hkv dividing H: query head h reads kv head h / G, with G = H / Hkv the
 * group size (PyTorch's `enable_gqa`, `repeat_interleave`). Hkv = H is MHA, Hkv = 1 is MQA,
 * anything between is GQA. The score matrix is still materialised, as in chapter 01; what
 * shrinks is K and V: the projections Wk, Wv and, above all, the KV cache a decoder reads at
 * every step.
 *
 * In the (B, H, T, D) layout the G query heads of a group are adjacent, so a group's queries
 * form one (G*T, D) matrix: that is how the fast versions read each K/V head once per group
 * without ever repeating K/V in memory.
 *
 * Versions (--kernel N; 1 = the simplest, the default is the fastest):
 *   CPU  1  reference: chapter 01's loops with kv head h / G
 *   CPU  2  grouped: per (batch, kv head) the group's G*T query rows against one K/V head,
 *           OpenMP over blocks of 32 stacked rows; a group with at most 32 rows (decoding)
 *           reads every key and value row once for all of them
 *   CUDA 1  naive kernels of chapter 01 with the group mapping
 *   CUDA 2  cuBLAS: one strided-batched GEMM per (batch, kv head) for the whole group
 */
#ifndef GQA_H
#define GQA_H

#include <stddef.h>

#include "01_mha/mha.h"
#include "common/rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int B;       /* batch */
    int H;       /* query heads */
    int Hkv;     /* key/value heads; H % Hkv == 0 */
    int T;       /* queries per head */
    int S;       /* keys per head */
    int D;       /* head dim */
    int causal;  /* bottom-right: query t sees key s iff s <= t + S - T */
    float scale; /* usually 1/sqrt(D) */
} GqaShape;

#define GQA_CPU_KERNELS 2
#define GQA_CUDA_KERNELS 2

/* 0 if H, Hkv are positive and Hkv divides H; else -1 with a message naming both. */
int gqa_check_heads(int H, int Hkv);

/* ---- the attention core: q (B, H, T, D), k and v (B, Hkv, S, D) -> out (B, H, T, D) ---------- */
int gqa_attention_ref(const GqaShape *s, const float *q, const float *k, const float *v, float *out);
int gqa_attention_grouped(const GqaShape *s, const float *q, const float *k, const float *v, float *out);
int gqa_attention_cpu(int kernel, const GqaShape *s, const float *q, const float *k, const float *v, float *out);
const char *gqa_cpu_kernel_name(int kernel); /* "ref", "grouped"; NULL if unknown */

size_t gqa_scores_bytes(const GqaShape *s); /* B*H*T*S*4: still materialised */
size_t gqa_kv_bytes(const GqaShape *s);     /* K and V: 2*B*Hkv*S*D*4 */

/* k (B, Hkv, S, D) -> out (B, H, S, D), each kv head repeated G times (repeat_interleave):
 * what MHA would need to hold. Used by tests to compare with chapter 01. */
void gqa_repeat_kv(const float *k, float *out, int B, int H, int Hkv, int S, int D);

/* ---- the layer ---------------------------------------------------------------------------- */

typedef struct {
    int C, H, Hkv, D;
    float *wq; /* (H*D, C) */
    float *wk; /* (Hkv*D, C) */
    float *wv; /* (Hkv*D, C) */
    float *wo; /* (C, H*D) */
} GqaWeights;

/* Attention parameters: C*H*D (Wq) + 2*C*Hkv*D (Wk, Wv) + H*D*C (Wo). */
size_t gqa_weights_count(int C, int H, int Hkv, int D);

/* The GQA paper's conversion of a trained MHA layer: each group's K and V projection heads are
 * replaced by their mean; Wq and Wo are kept. Hkv must divide the MHA layer's H. Group size 1
 * (Hkv = H) copies the weights exactly. */
int gqa_weights_from_mha(const MhaWeights *mha, int Hkv, GqaWeights *out);
void gqa_weights_free(GqaWeights *w);
int gqa_weights_save(const GqaWeights *w, const char *dir); /* wq.npy wk.npy wv.npy wo.npy */

/* Self-attention layer: x (B, T, C) -> y (B, T, C), attention core by CPU `kernel`. */
int gqa_layer_forward(const GqaWeights *w, int kernel, const float *x, int B, int T, int causal, float *y);

/* ---- CUDA (device pointers, same layouts) -------------------------------------------------- */
#if HAVE_CUDA
int gqa_attention_cuda(int kernel, const GqaShape *s, const float *d_q, const float *d_k, const float *d_v,
                       float *d_out);
const char *gqa_cuda_kernel_name(int kernel); /* "naive", "cublas"; NULL if unknown */
#endif

#ifdef __cplusplus
}
#endif
#endif
