/*
 * model.h: a Llama-style decoder, exactly llama2.c's run.c (Karpathy), so that its checkpoints
 * give its tokens. Infrastructure for chapters 04-06: the attention around it is theirs.
 *
 * Per layer, for a token x (dim):
 *     xb  = rmsnorm(x) * rms_att              rmsnorm: x / sqrt(mean(x^2) + 1e-5), then the weight
 *     q, k, v = Wq xb, Wk xb, Wv xb           q (H * D), k and v (Hkv * D): D = dim / H, the head dimension
 *     RoPE: in every head, the pair (2j, 2j+1) of q and k turns by pos * 10000^(-2j / D)
 *     x  += Wo attention(q, K, V)             GQA: query head h reads kv head h / (H / Hkv)
 *     xb  = rmsnorm(x) * rms_ffn
 *     x  += W2 (silu(W1 xb) * (W3 xb))        SwiGLU
 * then logits = Wcls (rmsnorm(x) * rms_final). Matrices are [out, in], row-major.
 *
 * Checkpoints: llama2.c's legacy version-0 .bin: 7 int32 (dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, seq_len; a negative vocab_size means a separate classifier), then fp32
 * token_embedding (vocab, dim), rms_att (L, dim), wq (L, H*D, dim), wk (L, Hkv*D, dim),
 * wv (L, Hkv*D, dim), wo (L, dim, H*D), rms_ffn (L, dim), w1 (L, hidden, dim), w2 (L, dim,
 * hidden), w3 (L, hidden, dim), rms_final (dim), two unused RoPE tables (seq_len * D / 2 each),
 * and wcls (vocab, dim) when not shared. The file size is checked against the header before any
 * weight is read.
 *
 * In memory a model holds each weight of its checkpoint once (common/model_weights.c): the
 * matrices packed for matmul_packed (ModelPacked), packed one at a time as they are read; the
 * vectors as they are (ModelWeights). The checkpoint's own layout (ModelTensors) comes back
 * through model_unpack, a matrix at a time, for whoever needs it: saving, the GPU, the tests.
 *
 * The same model on the GPU: common/model_cuda.h.
 */
#ifndef COMMON_MODEL_H
#define COMMON_MODEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int dim;        /* model width */
    int hidden_dim; /* SwiGLU width */
    int n_layers;
    int n_heads;    /* query heads */
    int n_kv_heads; /* key/value heads, dividing n_heads */
    int vocab_size;
    int seq_len;    /* longest sequence the model supports */
    int shared_classifier; /* wcls is the token embedding */
} ModelConfig;

/* Every weight as a checkpoint lays it out, matrices [out, in] row-major: the file, the GPU's
 * copy (common/model_cuda.h) and the tests' float64 model (testing_oracle.c). The host's Model
 * does not keep this layout; model_unpack gives it back. */
typedef struct {
    float *token_embedding; /* (vocab, dim) */
    float *rms_att;         /* (L, dim) */
    float *wq;              /* (L, H*D, dim) */
    float *wk;              /* (L, Hkv*D, dim) */
    float *wv;              /* (L, Hkv*D, dim) */
    float *wo;              /* (L, dim, H*D) */
    float *rms_ffn;         /* (L, dim) */
    float *w1;              /* (L, hidden, dim) */
    float *w2;              /* (L, dim, hidden) */
    float *w3;              /* (L, hidden, dim) */
    float *rms_final;       /* (dim) */
    float *wcls;            /* (vocab, dim); = token_embedding when shared */
} ModelTensors;

/* The weights the forward reads as vectors, unpacked: the norms, and the embedding it looks
 * token rows up in. */
typedef struct {
    float *token_embedding; /* (vocab, dim); NULL when the classifier is shared: its rows are then
                               read out of p.wcls (model_embed), the only copy */
    float *rms_att;         /* (L, dim) */
    float *rms_ffn;         /* (L, dim) */
    float *rms_final;       /* (dim) */
} ModelWeights;

/* The matrices, packed for common/matmul's matmul_packed (panels of MATMUL_NR output columns):
 * what model_forward multiplies by, and the only copy the host keeps -- a loaded checkpoint is
 * not held twice. Each is packed as it is read, one matrix at a time. */
typedef struct {
    float *wq, *wk, *wv, *wo, *w1, *w2, *w3; /* per layer, layer after layer */
    float *wcls;                             /* the classifier; with a shared one, the embedding too */
    size_t q, kv, o, up, down;               /* floats per layer of wq, wk/wv, wo, w1/w3, w2 */
} ModelPacked;

/* Tensor parallelism (Megatron-LM: Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion
 * Parameter Language Models Using Model Parallelism"): the part of every layer one rank of `world`
 * holds. Rank r keeps query heads h0 .. h0+n_h-1 (Wq's rows and Wo's columns of those heads) with
 * the kv heads they read (Wk's and Wv's rows; its KV cache holds only these), the SwiGLU columns
 * f0 .. f0+n_f-1 (W1's and W3's rows, W2's columns), and the vocabulary rows v0 .. v0+n_v-1 of the
 * embedding and the classifier. The norms are small and every rank keeps them whole, as it keeps
 * the residual stream x (n, dim). World 1 is the whole model: every range is everything. */
typedef struct {
    int rank, world;
    int h0, n_h;   /* query heads */
    int kv0, n_kv; /* key/value heads: those the query heads read (a GQA group never straddles ranks) */
    int f0, n_f;   /* SwiGLU (hidden) columns */
    int v0, n_v;   /* vocabulary rows */
} ModelShard;

/* What a rank of a sharded forward asks of the others (04_kvcache/tp_comm.c implements it with
 * MPI; model_forward calls it only when world > 1):
 *   all_reduce  x (n) = the sum of every rank's x, on every rank (in place);
 *   all_gather  all = every rank's part, rank after rank; rank r gives counts[r] floats. */
typedef struct {
    int (*all_reduce)(void *ctx, float *x, size_t n);
    int (*all_gather)(void *ctx, const float *part, float *all, const int *counts);
    void *ctx;
} ModelComm;

typedef struct {
    ModelConfig c;      /* the whole model's config, on every rank */
    ModelShard s;       /* what this process holds of it (world 1: all of it) */
    const ModelComm *comm; /* the other ranks; NULL for world 1 */
    ModelWeights w;
    ModelPacked p;
    float *data;   /* the vectors of w, one allocation */
    float *p_data; /* the packed matrices, one allocation */
} Model;

/* Rank `rank` of `world` ranks' part of a model of config c: the heads, kv heads, SwiGLU columns and
 * vocabulary rows in contiguous ranges, the last two as even as they divide. The heads: with
 * world <= n_kv_heads, world must divide n_kv_heads and each rank holds whole kv heads with their
 * GQA groups (its KV cache is 1/world of the whole); with more ranks than kv heads, vLLM's answer:
 * world must be a multiple of n_kv_heads and divide n_heads, each rank holds n_heads / world query
 * heads and the one kv head they read, replicated on world / n_kv_heads ranks (its cache is
 * 1/n_kv_heads of the whole). -1 with one error naming the rule otherwise, and for more ranks
 * than query heads, SwiGLU columns or vocabulary rows. */
int model_shard_plan(const ModelConfig *c, int rank, int world, ModelShard *s);

/* Floats a shard of c holds: its packed matrices (each padded to whole panels, as model_packed_floats)
 * and its vectors; for the whole model (world 1), model_packed_floats plus the norms and the
 * unshared embedding. Saturates at SIZE_MAX. */
size_t model_shard_floats(const ModelConfig *c, const ModelShard *s);

/* The built-in random model: dim 512, hidden 1376, 8 layers, 8 heads, 2 kv heads (GQA 4:1,
 * head size 64), vocab 1024, seq_len 2048, a separate classifier (with the embedding as classifier
 * a random model just repeats its input token); seed MODEL_DEFAULT_SEED. With TEST_SMALL=1 in
 * the environment (the test suites under emulation, make test-arm64): dim 256, hidden 688,
 * 2 layers, the rest the same. */
#define MODEL_DEFAULT_SEED 20241127u
ModelConfig model_default_config(void);

static inline int model_head_size(const ModelConfig *c) { return c->dim / c->n_heads; }
static inline int model_kv_dim(const ModelConfig *c) { return c->n_kv_heads * (c->dim / c->n_heads); }

/* -1 (error recorded) for a config no model can have: sizes <= 0, heads not dividing dim,
 * kv heads not dividing heads, an odd head size (RoPE turns pairs). */
int model_check_config(const ModelConfig *c);

/* Floats in a checkpoint after its header (RoPE tables included). */
size_t model_checkpoint_floats(const ModelConfig *c);
size_t model_param_count(const ModelConfig *c); /* weights used by the forward */
/* Floats of the packed matrices a Model of c holds (each padded to whole panels). Both counts
 * saturate at SIZE_MAX for sizes no model can have. */
size_t model_packed_floats(const ModelConfig *c);

/* Random weights from `seed`: matrices N(0, 1/in), embedding N(0, 1), norm weights 1; drawn and
 * packed one matrix at a time, in checkpoint order. */
int model_init_random(Model *m, const ModelConfig *c, uint64_t seed);
/* The same model's part for shard s (model_shard_plan): every matrix is drawn whole, in the same
 * order, and only the shard's part kept -- the same weights as model_init_random's, sliced. */
int model_init_random_shard(Model *m, const ModelConfig *c, uint64_t seed, const ModelShard *s);

/* Reads a checkpoint's 28-byte header from f into c and checks it, and the file's size
 * (file_bytes) against it: -1 with one error naming path otherwise. */
int model_read_header(FILE *f, const char *path, size_t file_bytes, ModelConfig *c);

/* Reads a llama2.c version-0 checkpoint one matrix at a time, packing each as it is read: the
 * model holds each weight of the file once (the matrices packed, the vectors as they are), and
 * loading needs one matrix more, never the file twice. Every problem is one error naming the
 * file. */
int model_load(const char *path, Model *m);
/* Rank `rank` of `world`'s part of a checkpoint (model_shard_plan's rules, checked after the
 * header): only the shard's rows and columns are read from the file (seeking past the rest), so
 * a rank never holds more of the model than its part and one matrix of it being packed. */
int model_load_shard(const char *path, int rank, int world, Model *m);

/* model_load(checkpoint), or the built-in random model when checkpoint is NULL. */
int model_load_or_builtin(const char *checkpoint, Model *m);
/* The same for rank `rank` of `world` (model_load_shard, model_init_random_shard). */
int model_load_or_builtin_shard(const char *checkpoint, int rank, int world, Model *m);

/* Writes m in the same format (RoPE tables as zeros): test fixtures and converters. A shard
 * (world > 1) cannot be written: one error. */
int model_save(const Model *m, const char *path);

void model_free(Model *m);

/* ---- the checkpoint's layout, given back ---------------------------------------------------- */

/* A checkpoint file's bytes for config c: the 28-byte header and every float. */
size_t model_checkpoint_bytes(const ModelConfig *c);

/* The memory bound a generation is expected to keep (docs/contracts.md §6.2): a generation's peak resident memory is at most
 * this many times its checkpoint's bytes and its KV cache's together -- the model held once. */
#define MODEL_MEMORY_TARGET 1.15

/* Points t at the weights of `base`, model_checkpoint_floats(c) floats in checkpoint order (host
 * or device memory: only addresses are computed). */
void model_tensors_at(const ModelConfig *c, float *base, ModelTensors *t);

/* The checkpoint's floats after its header, in file order, handed to put(ctx, x, n) piece by
 * piece: the vectors as m keeps them, every packed matrix unpacked (matmul_unpack_weights) into
 * a scratch buffer of one matrix, the RoPE tables as zeros. model_save writes the pieces,
 * model_cuda_create uploads them: neither holds a second copy of the model. 0, or -1 when the
 * scratch buffer cannot be had or put returns -1 (with an error recorded), or m is a shard. */
typedef int (*ModelPut)(void *ctx, const float *x, size_t n);
int model_unpack(const Model *m, ModelPut put, void *ctx);

/* The same into one new buffer of model_checkpoint_floats floats (mem_free it), t pointing into
 * it: the whole checkpoint in memory again, for tests on small models. NULL with an error. */
float *model_unpack_all(const Model *m, ModelTensors *t);

/* ---- the forward pieces (host) ------------------------------------------------------------ */

/* o (n) = rmsnorm(x) * weight; o may be x. */
void model_rmsnorm(float *o, const float *x, const float *weight, int n);

/* RoPE in place on `rows` token rows of n_heads heads of size D, row r at position pos0 + r;
 * x is (rows, n_heads * D). */
void model_rope(float *x, int rows, int n_heads, int D, int pos0);
/* The same with any position per row: row r at pos[r] (rows of different sequences in one batch). */
void model_rope_at(float *x, int rows, int n_heads, int D, const int *pos);

/* x (dim) = the embedding of token: its row of w.token_embedding, or with a shared classifier
 * its row read back out of the packed p.wcls (dim floats MATMUL_NR apart). In a shard whose
 * vocabulary rows do not hold the token: zeros (model_forward sums the ranks' rows). */
void model_embed(const Model *m, int token, float *x);

/* h (n) = silu(h) * g, in place. */
void model_swiglu(float *h, const float *g, size_t n);

/* The id of the largest logit (ties: the lowest id). */
int model_argmax(const float *logits, int n);

/* A token from softmax(logits / temperature) using llama2.c's generator (xorshift64*, its state
 * seeded directly): rng->state = seed; coin = (u32 >> 8) / 2^24; first id whose cdf exceeds it.
 * Overwrites logits with the probabilities. temperature <= 0: greedy (model_argmax); a positive
 * temperature so small that the largest logit / T overflows float is greedy too (its limit).
 * -1 (error recorded) when a logit is NaN or infinite: the model's arithmetic overflowed, and
 * sampling from that would pick the last id without a word. */
int model_sample(float *logits, int n, float temperature, Rng *rng);

/* How the next token is chosen. Zero-initialised: greedy. */
typedef struct {
    float temperature; /* 0: greedy (the largest logit); > 0: sample from softmax(logits / T) */
    float top_p;       /* nucleus sampling as llama2.c's run.c: only the most probable tokens whose
                        * probabilities add up to more than top_p; 0 or >= 1: off */
    int top_k;         /* only the top_k most probable tokens (vLLM's top_k); 0: off */
} Sampling;

/* A token chosen as s says, with llama2.c's generator and coin. Without top-k, exactly run.c's
 * `sample`: temperature, softmax, then one coin; with 0 < top_p < 1 run.c's sample_topp --
 * tokens below the cutoff (1 - top_p) / (n - 1) dropped first, the rest sorted by probability
 * (qsort, most probable first), cut after the first whose running sum passes top_p, and the coin
 * scaled by that sum. With top_k: every token sorted the same way, the first top_k kept, then the
 * same cut at top_p times their sum (when top_p is on) and the same scaled coin. Overwrites logits
 * with the probabilities. -1 (error recorded) for a logit that is NaN or infinite, or no memory. */
int model_sample_with(float *logits, int n, const Sampling *s, Rng *rng);

/* The rules --top-p and --top-k follow: top_p in (0, 1] (1: off), top_k >= 0 (0: off). -1 with
 * the message naming the option otherwise. */
int model_check_sampling(double top_p, int top_k);

/* The rule every --temperature follows: 0 (greedy) or a positive number of at least FLT_MIN,
 * the smallest normal float (a subnormal T turns every logit / T into inf). Finite. -1 with the
 * message naming --temperature otherwise. */
int model_check_temperature(double temperature);

/* llama2.c seeds its state with the seed itself (not splitmix): use this to match its samples. */
void model_rng_seed(Rng *rng, uint64_t seed);

/* ---- the whole forward --------------------------------------------------------------------- */

/* One layer's attention, which each chapter supplies with its own cache: the n token rows'
 * q (n, H*D), k and v (n, Hkv*D) of layer `layer`, RoPE applied; it stores k and v where its
 * cache keeps them and writes att (n, H*D), token-major. 0 or -1 with an error recorded. */
typedef int (*ModelAttention)(void *ctx, int layer, int n, const float *q, const float *k, const float *v,
                              float *att);

/* Runs n token rows through the model: row i is token tokens[i] at position pos[i] (rows may
 * belong to different sequences: `attention` knows which). Writes the logits of the rows
 * out_rows[0..n_out) into logits (n_out, vocab). The matrix products see all n rows at once and
 * give each row the bits it would get alone (common/matmul's matmul_packed); with a
 * batch-invariant attention the whole forward is batch-invariant.
 *
 * In a shard (m->s.world > 1) the same forward runs on the shard's heads: q (n, n_h*D), k and v
 * (n, n_kv*D) go to `attention`, and m->comm sums the ranks' parts where Megatron-LM does --
 * the embedding rows, attention's Wo output and the MLP's W2 output (two all-reduces per layer)
 * -- and gathers the classifier's vocabulary slices into the whole logits on every rank. The
 * sums add the ranks' parts in another order than one process adds them, so the logits agree
 * with the whole model's to rounding, not bit for bit. */
int model_forward(const Model *m, int n, const int *tokens, const int *pos, ModelAttention attention, void *ctx,
                  int n_out, const int *out_rows, float *logits);

#ifdef __cplusplus
}
#endif
#endif
