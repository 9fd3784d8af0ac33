/*
 * model_cuda.cu: the model of common/model.c on the GPU (model_cuda.h): its small kernels, a
 * cuBLAS product, and the forward that calls back for each layer's attention.
 *
 * Each kernel is the CPU function of common/model.c with a thread per output element (a block
 * per row for RMSNorm, whose sum of squares is a reduction): the arithmetic is the same, the
 * order of additions is not, so logits agree with the CPU's within fp32 rounding, not bit for bit.
 * The weights go up unpacked, in checkpoint order (cuBLAS and chapter 06's product read [out, in]
 * rows), one matrix at a time out of the host's packed model (model_unpack).
 */
#include "model_cuda.h"

#include <math.h>
#include <string.h>

#include "cuda_utils.h"
#include "error.h"

/* ==== the kernels ======================================================================================= */

/* x (n, dim) = emb[tokens], a thread per element */
__global__ void model_embed_kernel(const float *emb, const int *tokens, float *x, int n, int dim)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * dim)
        x[i] = emb[(size_t)tokens[i / dim] * dim + i % dim];
}

/* a block per row: o = x / sqrt(mean(x^2) + 1e-5) * w */
__global__ void model_rmsnorm_kernel(float *o, const float *x, const float *w, int dim)
{
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += xr[i] * xr[i];
    for (int off = 16; off > 0; off /= 2)
        ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (threadIdx.x % 32 == 0)
        red[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        ss = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.0f;
        for (int off = 16; off > 0; off /= 2)
            ss += __shfl_xor_sync(0xffffffffu, ss, off);
        if (threadIdx.x == 0)
            red[0] = 1.0f / sqrtf(ss / dim + 1e-5f);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        o[(size_t)blockIdx.x * dim + i] = w[i] * (red[0] * xr[i]);
}

/* RoPE on x (n, heads * D), row r at position pos[r] (pos NULL: pos0 + r): a thread per (row, head, pair) */
__global__ void model_rope_kernel(float *x, const int *pos, int n, int heads, int D, int pos0)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int pairs = D / 2;
    if (i >= (size_t)n * heads * pairs)
        return;
    const int p = (int)(i % pairs), r = (int)(i / ((size_t)heads * pairs));
    float *v = x + (i / pairs) * D + 2 * p;
    const float freq = 1.0f / powf(10000.0f, (float)(2 * p) / (float)D);
    const float val = (float)(pos ? pos[r] : pos0 + r) * freq, fcr = cosf(val), fci = sinf(val);
    const float v0 = v[0], v1 = v[1];
    v[0] = v0 * fcr - v1 * fci;
    v[1] = v0 * fci + v1 * fcr;
}

/* x (n) += y (n) */
__global__ void model_add_kernel(float *x, const float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

/* h (n) = silu(h) * g */
__global__ void model_swiglu_kernel(float *h, const float *g, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float val = h[i] * (1.0f / (1.0f + expf(-h[i])));
        h[i] = val * g[i];
    }
}

/* ==== the pieces, as host calls ========================================================================= */

extern "C" void model_cuda_embed(const float *d_emb, const int *d_tokens, float *d_x, int n, int dim)
{
    model_embed_kernel<<<cuda_blocks((size_t)n * dim, 256), 256>>>(d_emb, d_tokens, d_x, n, dim);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void model_cuda_rmsnorm(float *d_o, const float *d_x, const float *d_w, int rows, int dim)
{
    model_rmsnorm_kernel<<<rows, 256>>>(d_o, d_x, d_w, dim);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void model_cuda_rope(float *d_x, int rows, int heads, int D, int pos0)
{
    model_rope_kernel<<<cuda_blocks((size_t)rows * heads * (D / 2), 256), 256>>>(d_x, NULL, rows, heads, D, pos0);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void model_cuda_rope_at(float *d_x, const int *d_pos, int rows, int heads, int D)
{
    model_rope_kernel<<<cuda_blocks((size_t)rows * heads * (D / 2), 256), 256>>>(d_x, d_pos, rows, heads, D, 0);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void model_cuda_add(float *d_x, const float *d_y, size_t n)
{
    model_add_kernel<<<cuda_blocks(n, 256), 256>>>(d_x, d_y, n);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void model_cuda_swiglu(float *d_h, const float *d_g, size_t n)
{
    model_swiglu_kernel<<<cuda_blocks(n, 256), 256>>>(d_h, d_g, n);
    CUDA_CHECK(cudaGetLastError());
}

/* Row-major y (M, N) = x (M, K) Wᵀ is column-major yᵀ (N, M) = W xᵀ: cuBLAS reads the row-major
 * W (N, K) as a column-major (K, N) matrix and transposes it. */
extern "C" void model_cuda_linear(float *d_y, const float *d_x, const float *d_w, int M, int N, int K)
{
    const float one = 1.0f, zero = 0.0f;
    const CublasApi *cublas = cuda_cublas();
    CUBLAS_CHECK(cublas->Sgemm(cublas->handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, d_w, K, d_x, K, &zero, d_y, N));
}

/* ==== the weights and buffers ============================================================================ */

/* model_unpack's pieces, uploaded one after another: ctx is the device address of the next. */
static int upload_piece(void *ctx, const float *x, size_t n)
{
    float **at = (float **)ctx;
    cuda_upload(*at, x, n * sizeof(float));
    *at += n;
    return 0;
}

extern "C" int model_cuda_create(ModelCuda *g, const Model *m, int cap)
{
    const ModelConfig *c = &m->c;
    memset(g, 0, sizeof *g);
    g->m = m, g->cap = cap;
    if (cap < 1)
        return error_set("GPU forward: %d rows per forward, expected at least 1", cap);
    const size_t R = (size_t)cap, qd = (size_t)c->n_heads * model_head_size(c), kvd = (size_t)model_kv_dim(c);
    float **bufs[] = {&g->x, &g->xb, &g->q, &g->att, &g->k, &g->v, &g->h1, &g->h3, &g->logits};
    const size_t floats[] = {R * c->dim, R * c->dim, R * qd, R * qd, R * kvd, R * kvd, R * c->hidden_dim,
                             R * c->hidden_dim, (size_t)c->vocab_size};
    int rc = (g->data = (float *)cuda_try_alloc(model_checkpoint_floats(c) * sizeof(float), "model weights")) ? 0 : -1;
    for (size_t i = 0; i < sizeof floats / sizeof floats[0] && rc == 0; i++)
        if (!(*bufs[i] = (float *)cuda_try_alloc(floats[i] * sizeof(float), "forward buffers")))
            rc = -1;
    if (rc == 0 && !(g->tokens = (int *)cuda_try_alloc(R * sizeof(int), "tokens")))
        rc = -1;
    float *at = g->data; /* where the next piece of the checkpoint goes */
    if (rc == 0 && model_unpack(m, upload_piece, &at) != 0)
        rc = -1;
    if (rc != 0) {
        model_cuda_free(g);
        return -1;
    }
    model_tensors_at(c, g->data, &g->w);
    return 0;
}

extern "C" void model_cuda_free(ModelCuda *g)
{
    float *bufs[] = {g->data, g->x, g->xb, g->q, g->att, g->k, g->v, g->h1, g->h3, g->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        cuda_free(bufs[i]);
    cuda_free(g->tokens);
    memset(g, 0, sizeof *g);
}

/* ==== the forward ======================================================================================= */

static int check_rows(const ModelCuda *g, const int *tokens, int n, int pos0)
{
    const ModelConfig *c = &g->m->c;
    if (n < 1 || n > g->cap)
        return error_set("GPU forward: %d rows, expected 1..%d", n, g->cap);
    if (pos0 < 0 || pos0 + n > c->seq_len)
        return error_set("positions %d..%d are outside the model's seq_len %d", pos0, pos0 + n - 1, c->seq_len);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return error_set("token id %d is outside the vocabulary (0..%d)", tokens[i], c->vocab_size - 1);
    return 0;
}

extern "C" void model_cuda_layer_qkv(ModelCuda *g, int l, int n, ModelCudaLinear linear)
{
    const ModelConfig *c = &g->m->c;
    const ModelTensors *w = &g->w;
    const int dim = c->dim, qd = c->n_heads * model_head_size(c), kvd = c->n_kv_heads * model_head_size(c);
    model_cuda_rmsnorm(g->xb, g->x, w->rms_att + (size_t)l * dim, n, dim);
    linear(g->q, g->xb, w->wq + (size_t)l * qd * dim, n, qd, dim);
    linear(g->k, g->xb, w->wk + (size_t)l * kvd * dim, n, kvd, dim);
    linear(g->v, g->xb, w->wv + (size_t)l * kvd * dim, n, kvd, dim);
}

extern "C" void model_cuda_layer_out(ModelCuda *g, int l, int n, ModelCudaLinear linear)
{
    const ModelConfig *c = &g->m->c;
    const ModelTensors *w = &g->w;
    const int dim = c->dim, qd = c->n_heads * model_head_size(c), hid = c->hidden_dim;
    linear(g->xb, g->att, w->wo + (size_t)l * dim * qd, n, dim, qd);
    model_cuda_add(g->x, g->xb, (size_t)n * dim);
    model_cuda_rmsnorm(g->xb, g->x, w->rms_ffn + (size_t)l * dim, n, dim);
    linear(g->h1, g->xb, w->w1 + (size_t)l * hid * dim, n, hid, dim);
    linear(g->h3, g->xb, w->w3 + (size_t)l * hid * dim, n, hid, dim);
    model_cuda_swiglu(g->h1, g->h3, (size_t)n * hid);
    linear(g->xb, g->h1, w->w2 + (size_t)l * dim * hid, n, dim, hid);
    model_cuda_add(g->x, g->xb, (size_t)n * dim);
}

extern "C" int model_cuda_forward(ModelCuda *g, const int *tokens, int n, int pos0, ModelAttention attention,
                                  void *ctx, float *logits)
{
    if (check_rows(g, tokens, n, pos0) != 0)
        return -1;
    const ModelConfig *c = &g->m->c;
    const ModelTensors *w = &g->w;
    const int dim = c->dim;
    cuda_upload(g->tokens, tokens, (size_t)n * sizeof(int));
    model_cuda_embed(w->token_embedding, g->tokens, g->x, n, dim);
    for (int l = 0; l < c->n_layers; l++) {
        model_cuda_layer_qkv(g, l, n, model_cuda_linear);
        model_cuda_rope(g->q, n, c->n_heads, model_head_size(c), pos0);
        model_cuda_rope(g->k, n, c->n_kv_heads, model_head_size(c), pos0);
        if (attention(ctx, l, n, g->q, g->k, g->v, g->att) != 0) /* the chapter's cache and kernel */
            return -1;
        model_cuda_layer_out(g, l, n, model_cuda_linear);
    }
    /* the final norm and the classifier, for the last row only */
    model_cuda_rmsnorm(g->xb, g->x + (size_t)(n - 1) * dim, w->rms_final, 1, dim);
    model_cuda_linear(g->logits, g->xb, w->wcls, 1, c->vocab_size, dim);
    cuda_download(logits, g->logits, (size_t)c->vocab_size * sizeof(float));
    return 0;
}
