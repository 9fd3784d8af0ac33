/*
 * model_cuda.h: the model of common/model.h on the GPU -- the same forward, on device buffers.
 *
 * The Llama-style forward (RMSNorm, the q/k/v products, RoPE, attention, the output product, a
 * residual add, RMSNorm, SwiGLU, the down product, a residual add; then the final norm and the
 * classifier) does not depend on where a chapter keeps its keys and values. So, as
 * model_forward does on the CPU, model_cuda_forward calls back for each layer's attention
 * (a ModelAttention whose pointers are device pointers): chapter 04 writes the rows into its
 * fp32 cache and runs its decode kernel or chapter 03's flash kernel there. The matrix products
 * go through cuBLAS; chapter 06's engine runs the same layer pieces (model_cuda_layer_qkv,
 * model_cuda_layer_out) with a batch-invariant product of its own.
 *
 * Shape key: n rows (tokens) per forward, at most cap; dim the model width; H query heads and Hkv
 * kv heads of D = dim / H dimensions; hidden the SwiGLU width. d_* pointers are device memory;
 * the functions are host calls, each launch checked (CUDA_CHECK).
 */
#ifndef COMMON_MODEL_CUDA_H
#define COMMON_MODEL_CUDA_H

#include <stddef.h>

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The weights on the device and the activations of one forward of up to cap rows. */
typedef struct {
    const Model *m;
    float *data;    /* every weight, unpacked, in checkpoint order (the host keeps its matrices packed) */
    ModelTensors w; /* device pointers into data, laid out as a checkpoint: w.wq + l * H*D * dim, ... */
    int cap;        /* the most rows one forward takes */
    float *x;       /* (cap, dim) the residual stream */
    float *xb;      /* (cap, dim) normalised, then each block's output */
    float *q, *att; /* (cap, H*D) queries; the attention's output, token-major */
    float *k, *v;   /* (cap, Hkv*D) */
    float *h1, *h3; /* (cap, hidden) */
    float *logits;  /* (vocab) the last row's */
    int *tokens;    /* (cap) */
} ModelCuda;

/* Uploads m's weights, unpacked one matrix at a time on the host (model_unpack), and allocates
 * the buffers: 0, or -1 with an error naming what did not fit (nothing left allocated). */
int model_cuda_create(ModelCuda *g, const Model *m, int cap);
void model_cuda_free(ModelCuda *g);

/* A matrix product as the forward takes it: y (M, N) = x (M, K) Wᵀ with W (N, K) row-major.
 * model_cuda_linear (cuBLAS), or chapter 06's batch-invariant product. */
typedef void (*ModelCudaLinear)(float *d_y, const float *d_x, const float *d_w, int M, int N, int K);

/* Layer l of the forward around its attention, on g's buffers, n rows, products by `linear`:
 *   model_cuda_layer_qkv   xb = rmsnorm(x) * rms_att; q, k, v = xb Wqᵀ, xb Wkᵀ, xb Wvᵀ (no RoPE)
 *   model_cuda_layer_out   x += att Woᵀ; xb = rmsnorm(x) * rms_ffn; h1 = silu(xb W1ᵀ) * xb W3ᵀ;
 *                          x += h1 W2ᵀ
 * model_cuda_forward runs them with model_cuda_linear, chapter 06's engine with its own product. */
void model_cuda_layer_qkv(ModelCuda *g, int l, int n, ModelCudaLinear linear);
void model_cuda_layer_out(ModelCuda *g, int l, int n, ModelCudaLinear linear);

/* Runs tokens[0..n) (host ids) at positions pos0 .. pos0+n-1 of one sequence: per layer,
 * attention(ctx, layer, n, q, k, v, att) with device pointers, RoPE applied; writes the logits
 * (vocab) of the last row into the host buffer logits. 0, or -1 with an error recorded: n not in
 * 1..cap, an id outside the vocabulary, a position past seq_len, or the attention's error. */
int model_cuda_forward(ModelCuda *g, const int *tokens, int n, int pos0, ModelAttention attention, void *ctx,
                       float *logits);

/* The pieces of the forward:
 * x (n, dim) = emb[tokens]; o (rows, dim) = rmsnorm(x) * w, a block per row; RoPE in place on
 * x (rows, heads * D), row r at position pos0 + r (model_cuda_rope_at: at position d_pos[r], for
 * a batch of rows of different sequences); x += y; h = silu(h) * g;
 * y (M, N) = x (M, K) Wᵀ with W (N, K) row-major (cuBLAS). */
void model_cuda_embed(const float *d_emb, const int *d_tokens, float *d_x, int n, int dim);
void model_cuda_rmsnorm(float *d_o, const float *d_x, const float *d_w, int rows, int dim);
void model_cuda_rope(float *d_x, int rows, int heads, int D, int pos0);
void model_cuda_rope_at(float *d_x, const int *d_pos, int rows, int heads, int D);
void model_cuda_add(float *d_x, const float *d_y, size_t n);
void model_cuda_swiglu(float *d_h, const float *d_g, size_t n);
void model_cuda_linear(float *d_y, const float *d_x, const float *d_w, int M, int N, int K);

#ifdef __cplusplus
}
#endif
#endif
