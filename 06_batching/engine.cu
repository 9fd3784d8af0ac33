/*
 * engine.cu: chapter 06 on the GPU -- the batched forward of one engine iteration.
 *
 * What it teaches: the scheduler and the block allocator stay on the host (they are a few
 * hundred integer operations per iteration); only the forward moves. Per iteration the host
 * uploads the scheduled tokens, their positions, each sequence's block table and lengths, and
 * downloads one row of logits per sequence that needs a token. The K/V pool lives on the GPU
 * with the host pool's layout and block ids, (L, Hkv, num_blocks, bs, D): the host allocator's
 * decisions are valid on both sides.
 *
 *   products: a tiled matrix product of its own over the whole [rows, dim] batch (below)
 *   the rest of each layer, the embedding and the final norm: the model's own pieces
 *   (common/model_cuda.h: model_cuda_layer_qkv and model_cuda_layer_out, run with that product;
 *   RoPE with each row at its own position, model_cuda_rope_at); K/V rows written through the
 *   tables (below)
 *   attention: chapter 05's paged kernel v2 over the mixed batch of prefill chunks and decodes
 *
 * Batch invariance on the GPU: a row's bits must not depend on the other rows of the batch, or a
 * request's tokens would depend on what else is running (and on how its prompt was chunked).
 * cuBLAS chooses its algorithm (tiles, split-K) by the shape, so the same row can come out with
 * different last bits at 3 rows and at 40: chapters 01-04 use it, this forward does not. Its own
 * product sums every output over k = 0, 1, ..., K-1 in one thread, in that order, whatever M
 * is; RMSNorm reduces one row per block; the paged kernel splits a row's keys at fixed
 * 512-key boundaries of its own sequence. So on the GPU too a request gets bit for bit the tokens
 * it gets served alone on the GPU (the tests and 'verify --device cuda' check exactly that). It
 * is not the CPU's arithmetic: against chapter 05 on the CPU, logits agree within fp32 rounding
 * (the tests allow 1e-4) and greedy tokens are identical or part at a near-tie (chapter 04's
 * kvcache_greedy_divergence).
 * The price: a simple product, slower than cuBLAS's on large models (bench-6 times the engine).
 */
#include "06_batching/engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "05_paged/paged.h"
#include "common/cuda_utils.h"
#include "common/error.h"
#include "common/model_cuda.h"
#include "common/tensor.h"

struct EngineGpu {
    ModelCuda mc;           /* the weights and the activations of up to max_rows rows (common/model_cuda.h) */
    float *pool_k, *pool_v; /* (L, Hkv, num_blocks, bs, D) */
    int num_blocks, bs, max_rows, max_seqs, max_blocks;
    float *logits;          /* (max_seqs, vocab) */
    int *pos, *row_seq, *q_start, *lens, *tables, *out_rows;
};

/* rows (n, Hkv * D) of one layer into the pool through the tables: row r belongs to sequence
 * row_seq[r] at position pos[r]; pool (Hkv, num_blocks, bs, D) is that layer's slice. */
__global__ void eng_write_kv(const float *rows, float *pool, const int *row_seq, const int *pos, const int *tables,
                             int max_blocks, int n, int Hkv, int D, int bs, int num_blocks)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * Hkv * D)
        return;
    const int d = (int)(i % D), h = (int)((i / D) % Hkv), r = (int)(i / ((size_t)D * Hkv));
    const int p = pos[r], id = tables[(size_t)row_seq[r] * max_blocks + p / bs];
    pool[(((size_t)h * num_blocks + id) * bs + p % bs) * D + d] = rows[i];
}

/* ==== the batch-invariant matrix product ============================================================ */

#define EMM_TILE 32 /* a block computes a 32 x 32 tile of y */
#define EMM_ROWS 4  /* rows of the tile per thread: blockDim (32, EMM_TILE / EMM_ROWS) */

/* y (M, N) = x (M, K) · w (N, K)ᵀ, row-major. Thread (tx, ty) owns column n0 + tx of the rows
 * m0 + ty + 8 i (i < 4) and sums each over k = 0, 1, ..., K-1 in that order, one fused
 * multiply-add per step: y[m][n] depends on row m of x and on w alone, not on M. */
__global__ void eng_matmul(const float *x, const float *w, float *y, int M, int N, int K)
{
    __shared__ float xs[EMM_TILE][EMM_TILE + 1]; /* x (m0 .., k0 ..); +1: column reads hit 32 banks */
    __shared__ float ws[EMM_TILE][EMM_TILE + 1]; /* w (n0 .., k0 ..) */
    const int tx = threadIdx.x, ty = threadIdx.y, step = EMM_TILE / EMM_ROWS;
    const int m0 = blockIdx.y * EMM_TILE, n0 = blockIdx.x * EMM_TILE;
    float acc[EMM_ROWS];
#pragma unroll
    for (int i = 0; i < EMM_ROWS; i++)
        acc[i] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += EMM_TILE) {
        const int k = k0 + tx;
        for (int r = ty; r < EMM_TILE; r += step) { /* coalesced: a warp reads 32 consecutive k */
            xs[r][tx] = m0 + r < M && k < K ? x[(size_t)(m0 + r) * K + k] : 0.0f;
            ws[r][tx] = n0 + r < N && k < K ? w[(size_t)(n0 + r) * K + k] : 0.0f;
        }
        __syncthreads();
        const int kn = min(EMM_TILE, K - k0); /* the padding past K is never added, not even as 0 */
        for (int kk = 0; kk < kn; kk++) {
            const float wv = ws[tx][kk];
#pragma unroll
            for (int i = 0; i < EMM_ROWS; i++)
                acc[i] = fmaf(xs[ty + i * step][kk], wv, acc[i]);
        }
        __syncthreads(); /* the tiles are read; the next ones may be loaded */
    }
#pragma unroll
    for (int i = 0; i < EMM_ROWS; i++) {
        const int m = m0 + ty + i * step, n = n0 + tx;
        if (m < M && n < N)
            y[(size_t)m * N + n] = acc[i];
    }
}

/* y (M, N) = x (M, K) · w (N, K)ᵀ on the device, batch-invariant (eng_matmul). */
static void eng_linear(float *d_y, const float *d_x, const float *d_w, int M, int N, int K)
{
    const dim3 grid((unsigned)((N + EMM_TILE - 1) / EMM_TILE), (unsigned)((M + EMM_TILE - 1) / EMM_TILE));
    eng_matmul<<<grid, dim3(EMM_TILE, EMM_TILE / EMM_ROWS)>>>(d_x, d_w, d_y, M, N, K);
    CUDA_CHECK(cudaGetLastError());
}

/* dst (n_out, dim) = src rows out_rows[...] */
__global__ void eng_gather_rows(const float *src, float *dst, const int *rows, int n_out, int dim)
{
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n_out * dim)
        dst[i] = src[(size_t)rows[i / dim] * dim + i % dim];
}

extern "C" void engine_gpu_free(EngineGpu *g)
{
    if (!g)
        return;
    if (g->mc.m)
        model_cuda_free(&g->mc);
    cuda_free(g->pool_k), cuda_free(g->pool_v), cuda_free(g->logits);
    int *ints[] = {g->pos, g->row_seq, g->q_start, g->lens, g->tables, g->out_rows};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        cuda_free(ints[i]);
    free(g);
}

extern "C" EngineGpu *engine_gpu_create(const Model *m, int num_blocks, int block_size, int max_rows, int max_seqs)
{
    const ModelConfig *c = &m->c;
    EngineGpu *g = (EngineGpu *)calloc(1, sizeof(EngineGpu));
    if (!g) {
        error_set("out of memory for the GPU forward's state");
        return NULL;
    }
    g->num_blocks = num_blocks, g->bs = block_size, g->max_rows = max_rows, g->max_seqs = max_seqs;
    g->max_blocks = (c->seq_len + block_size - 1) / block_size;
    const size_t pool = (size_t)c->n_layers * c->n_kv_heads * num_blocks * block_size * model_head_size(c);
    if (model_cuda_create(&g->mc, m, max_rows) != 0) { /* the weights, uploaded, and the activations */
        free(g);
        return NULL;
    }
    g->pool_k = (float *)cuda_try_alloc(pool * sizeof(float), "the K pool");
    g->pool_v = g->pool_k ? (float *)cuda_try_alloc(pool * sizeof(float), "the V pool") : NULL;
    if (!g->pool_v) {
        engine_gpu_free(g);
        return NULL;
    }
    const size_t R = (size_t)max_rows;
    g->logits = (float *)cuda_alloc((size_t)max_seqs * c->vocab_size * sizeof(float));
    g->pos = (int *)cuda_alloc(R * sizeof(int));
    g->row_seq = (int *)cuda_alloc(R * sizeof(int)), g->out_rows = (int *)cuda_alloc((size_t)max_seqs * sizeof(int));
    g->q_start = (int *)cuda_alloc(((size_t)max_seqs + 1) * sizeof(int));
    g->lens = (int *)cuda_alloc((size_t)max_seqs * sizeof(int));
    g->tables = (int *)cuda_alloc((size_t)max_seqs * g->max_blocks * sizeof(int));
    return g;
}

#define LAUNCH(kernel, n, ...)                                                                                         \
    do {                                                                                                               \
        kernel<<<cuda_blocks((size_t)(n), 256), 256>>>(__VA_ARGS__);                                                   \
        CUDA_CHECK(cudaGetLastError());                                                                                \
    } while (0)

extern "C" int engine_gpu_forward(EngineGpu *g, int n, const int *tokens, const int *pos, int n_seq,
                                  const int *q_start, const int *lens, const int *tables, int n_out,
                                  const int *out_rows, float *logits)
{
    ModelCuda *mc = &g->mc;
    const ModelConfig *c = &mc->m->c;
    const int dim = c->dim, H = c->n_heads, Hkv = c->n_kv_heads, D = model_head_size(c), kvd = Hkv * D;
    if (n > g->max_rows || n_seq > g->max_seqs || n_out > g->max_seqs)
        return error_set("GPU forward: %d rows of %d sequences exceed the buffers (%d rows, %d sequences)", n, n_seq,
                         g->max_rows, g->max_seqs);
    int *row_seq = (int *)mem_alloc((size_t)n * sizeof(int), "the sequence of each row"), max_len = 1; /* (n) */
    if (!row_seq)
        return -1;
    for (int i = 0; i < n_seq; i++) {
        for (int r = q_start[i]; r < q_start[i + 1]; r++)
            row_seq[r] = i;
        max_len = lens[i] > max_len ? lens[i] : max_len;
    }
    cuda_upload(mc->tokens, tokens, (size_t)n * sizeof(int)), cuda_upload(g->pos, pos, (size_t)n * sizeof(int));
    cuda_upload(g->row_seq, row_seq, (size_t)n * sizeof(int));
    cuda_upload(g->q_start, q_start, ((size_t)n_seq + 1) * sizeof(int));
    cuda_upload(g->lens, lens, (size_t)n_seq * sizeof(int));
    cuda_upload(g->tables, tables, (size_t)n_seq * g->max_blocks * sizeof(int));
    cuda_upload(g->out_rows, out_rows, (size_t)n_out * sizeof(int));
    mem_free(row_seq);
    const size_t layer_pool = (size_t)Hkv * g->num_blocks * g->bs * D;
    model_cuda_embed(mc->w.token_embedding, mc->tokens, mc->x, n, dim);
    int rc = 0;
    for (int l = 0; l < c->n_layers && rc == 0; l++) {
        model_cuda_layer_qkv(mc, l, n, eng_linear); /* the model's layer, with this forward's product */
        model_cuda_rope_at(mc->q, g->pos, n, H, D); /* each row at its own position */
        model_cuda_rope_at(mc->k, g->pos, n, Hkv, D);
        float *pk = g->pool_k + l * layer_pool, *pv = g->pool_v + l * layer_pool;
        LAUNCH(eng_write_kv, (size_t)n * kvd, mc->k, pk, g->row_seq, g->pos, g->tables, g->max_blocks, n, Hkv, D,
               g->bs, g->num_blocks);
        LAUNCH(eng_write_kv, (size_t)n * kvd, mc->v, pv, g->row_seq, g->pos, g->tables, g->max_blocks, n, Hkv, D,
               g->bs, g->num_blocks);
        PagedCudaBatch b = {.k = pk, .v = pv, .num_blocks = g->num_blocks, .Hkv = Hkv, .bs = g->bs, .D = D,
                            .tables = g->tables, .lens = g->lens, .q_start = g->q_start, .row_seq = g->row_seq,
                            .n_seq = n_seq, .max_blocks = g->max_blocks, .rows = n, .max_len = max_len};
        rc = paged_attention_cuda(2, &b, H, 1.0f / sqrtf((float)D), 1, mc->q, mc->att);
        model_cuda_layer_out(mc, l, n, eng_linear);
    }
    if (rc != 0 || n_out == 0)
        return rc;
    LAUNCH(eng_gather_rows, (size_t)n_out * dim, mc->x, mc->att, g->out_rows, n_out, dim); /* att (rows, dim) is free */
    model_cuda_rmsnorm(mc->xb, mc->att, mc->w.rms_final, n_out, dim);
    eng_linear(g->logits, mc->xb, mc->w.wcls, n_out, c->vocab_size, dim);
    cuda_download(logits, g->logits, (size_t)n_out * c->vocab_size * sizeof(float));
    return 0;
}
