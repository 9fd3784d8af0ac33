/*
 * mha.cu: chapter 01 on the GPU -- multi-head attention with the full score matrix.
 *
 * What it teaches: the three steps of attention map onto the GPU as three launches, and the
 * (B, H, T, S) score matrix makes a round trip through GPU memory between them.
 *
 *   v1 naive:  one thread per score (a D-long dot product), one thread per softmax row, one
 *              thread per output element (an S-long sum). Simple, and slow: every thread reads
 *              its operands from global memory and nothing is reused.
 *   v2 cublas: QKᵀ and PV as strided-batched SGEMMs (one GEMM per (b, h)), and a softmax kernel
 *              with one thread block per row, reducing max and sum across the block.
 * Both write and read the whole score matrix: B*H*T*S*4 bytes of GPU memory and traffic.
 *
 * Run: build/bin/01_mha verify --device cuda; build/bin/01_mha bench --device cuda.
 */
#include "01_mha/mha.h"

#include <math.h>

#include "common/attn_cli.h"
#include "common/cuda_utils.h"
#include "common/error.h"

/* ==== v1: naive kernels ========================================================================= */

/* scores (BH, T, S) = q (BH, T, D) · k (BH, S, D)ᵀ * scale, -inf where masked; a thread a score. */
__global__ void mha_scores_kernel1(const float *q, const float *k, float *scores, size_t n_scores, int T, int S,
                                   int D, int causal, float scale)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_scores)
        return;
    const int j = (int)(i % S);
    const size_t row = i / S; /* bh * T + t */
    const int t = (int)(row % T);
    const size_t bh = row / T;
    if (j >= attn_visible_keys(t, T, S, causal)) {
        scores[i] = -INFINITY;
        return;
    }
    const float *qr = q + row * D;                   /* (D,) */
    const float *kr = k + (bh * S + (size_t)j) * D;  /* (D,) */
    float dot = 0.0f;
    for (int d = 0; d < D; d++)
        dot += qr[d] * kr[d];
    scores[i] = dot * scale;
}

/* Softmax of each row of scores (rows, S) in place; a thread a row. All -inf -> zeros. */
__global__ void mha_softmax_kernel1(float *scores, size_t rows, int S)
{
    size_t r = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows)
        return;
    float *x = scores + r * S;
    float m = -INFINITY;
    for (int j = 0; j < S; j++)
        m = fmaxf(m, x[j]);
    if (m == -INFINITY) {
        for (int j = 0; j < S; j++)
            x[j] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int j = 0; j < S; j++) {
        x[j] = expf(x[j] - m);
        sum += x[j];
    }
    for (int j = 0; j < S; j++)
        x[j] /= sum;
}

/* out (BH, T, D) = p (BH, T, S) · v (BH, S, D); a thread an output element. */
__global__ void mha_pv_kernel1(const float *p, const float *v, float *out, size_t n_out, int T, int S, int D)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_out)
        return;
    const int d = (int)(i % D);
    const size_t row = i / D; /* bh * T + t */
    const size_t bh = row / T;
    const float *pr = p + row * S;
    const float *vh = v + bh * S * D;
    float acc = 0.0f;
    for (int j = 0; j < S; j++)
        acc += pr[j] * vh[(size_t)j * D + d];
    out[i] = acc;
}

/* ==== v2: cuBLAS GEMMs + a block-per-row softmax ================================================ */

#define SOFTMAX_THREADS 256

/* max (is_max) or sum over the block; every thread gets the result. */
__device__ float block_reduce(float x, bool is_max)
{
    __shared__ float partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    for (int o = 16; o > 0; o /= 2) {
        float y = __shfl_xor_sync(0xffffffffu, x, o);
        x = is_max ? fmaxf(x, y) : x + y;
    }
    __syncthreads(); /* `partial` may still be read from the previous call */
    if (lane == 0)
        partial[warp] = x;
    __syncthreads();
    x = lane < n_warps ? partial[lane] : (is_max ? -INFINITY : 0.0f);
    for (int o = 16; o > 0; o /= 2) {
        float y = __shfl_xor_sync(0xffffffffu, x, o);
        x = is_max ? fmaxf(x, y) : x + y;
    }
    return x;
}

/* One block per row of scores (BH * T rows, S columns, already scaled by the GEMM): masked
 * entries become 0, visible ones softmax. A row with no visible key becomes zeros. */
__global__ void mha_softmax_kernel2(float *scores, int T, int S, int causal)
{
    const size_t row = blockIdx.x;
    const int t = (int)(row % T);
    const int n = attn_visible_keys(t, T, S, causal);
    float *x = scores + row * S;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x)
        m = fmaxf(m, x[j]);
    m = block_reduce(m, true);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float e = expf(x[j] - m);
        x[j] = e;
        sum += e;
    }
    sum = block_reduce(sum, false);
    const float inv = n > 0 ? 1.0f / sum : 0.0f;
    for (int j = threadIdx.x; j < S; j += blockDim.x)
        x[j] = j < n ? x[j] * inv : 0.0f;
}

/* Row-major products through column-major cuBLAS: a row-major (r, c) matrix is a column-major
 * (c, r) one, so C = A Bᵀ (row-major) is computed as Cᵀ = B Aᵀ (column-major). */
static void scores_gemm(const MhaShape *s, const float *d_q, const float *d_k, float *d_scores)
{
    const float zero = 0.0f;
    const CublasApi *cublas = cuda_cublas();
    /* per (b, h): scores (T, S) = q (T, D) · k (S, D)ᵀ * scale */
    CUBLAS_CHECK(cublas->SgemmStridedBatched(cublas->handle, CUBLAS_OP_T, CUBLAS_OP_N, s->S, s->T, s->D, &s->scale,
                                           d_k, s->D, (long long)s->S * s->D, d_q, s->D, (long long)s->T * s->D,
                                           &zero, d_scores, s->S, (long long)s->T * s->S, s->B * s->H));
}

static void pv_gemm(const MhaShape *s, const float *d_p, const float *d_v, float *d_out)
{
    const float one = 1.0f, zero = 0.0f;
    const CublasApi *cublas = cuda_cublas();
    /* per (b, h): out (T, D) = p (T, S) · v (S, D) */
    CUBLAS_CHECK(cublas->SgemmStridedBatched(cublas->handle, CUBLAS_OP_N, CUBLAS_OP_N, s->D, s->T, s->S, &one, d_v,
                                           s->D, (long long)s->S * s->D, d_p, s->S, (long long)s->T * s->S, &zero,
                                           d_out, s->D, (long long)s->T * s->D, s->B * s->H));
}

extern "C" void mha_softmax_cuda1(float *d_scores, size_t rows, int S)
{
    mha_softmax_kernel1<<<cuda_blocks(rows, 128), 128>>>(d_scores, rows, S);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void mha_softmax_cuda2(float *d_scores, size_t rows, int T, int S, int causal)
{
    mha_softmax_kernel2<<<(unsigned int)rows, SOFTMAX_THREADS>>>(d_scores, T, S, causal);
    CUDA_CHECK(cudaGetLastError());
}

/* ==== dispatcher ================================================================================ */

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CUDA_NAMES[MHA_CUDA_KERNELS + 1] = {"cublas", "naive", "cublas"};

extern "C" const char *mha_cuda_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= MHA_CUDA_KERNELS ? CUDA_NAMES[kernel] : NULL;
}

extern "C" int mha_attention_cuda(int kernel, const MhaShape *s, const float *d_q, const float *d_k,
                                  const float *d_v, float *d_out)
{
    if (!mha_cuda_kernel_name(kernel))
        return error_set("--kernel %d: chapter 01 has CUDA kernels 1..%d", kernel, MHA_CUDA_KERNELS);
    const size_t rows = (size_t)s->B * s->H * s->T;
    const size_t n_scores = rows * s->S;
    float *d_scores = (float *)cuda_try_alloc(mha_scores_bytes(s), "the score matrix (B, H, T, S)");
    if (!d_scores)
        return -1;
    if (kernel == 1) {
        mha_scores_kernel1<<<cuda_blocks(n_scores, 256), 256>>>(d_q, d_k, d_scores, n_scores, s->T, s->S, s->D,
                                                                 s->causal, s->scale);
        CUDA_CHECK(cudaGetLastError());
        mha_softmax_cuda1(d_scores, rows, s->S);
        const size_t n_out = rows * s->D;
        mha_pv_kernel1<<<cuda_blocks(n_out, 256), 256>>>(d_scores, d_v, d_out, n_out, s->T, s->S, s->D);
        CUDA_CHECK(cudaGetLastError());
    } else {
        scores_gemm(s, d_q, d_k, d_scores);
        mha_softmax_cuda2(d_scores, rows, s->T, s->S, s->causal);
        pv_gemm(s, d_scores, d_v, d_out);
    }
    cuda_free(d_scores);
    return 0;
}

/* ==== the layer ================================================================================ */

/* y (M, N) = x (M, K) · w (N, K)ᵀ, all row-major on the device. */
extern "C" void mha_linear_cuda(float *d_y, const float *d_x, const float *d_w, int M, int N, int K)
{
    const float one = 1.0f, zero = 0.0f;
    const CublasApi *cublas = cuda_cublas();
    CUBLAS_CHECK(cublas->Sgemm(cublas->handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, d_w, K, d_x, K, &zero, d_y, N));
}

/* (B, T, H, D) <-> (B, H, T, D); a thread an element. to_heads selects the direction. */
__global__ void mha_transpose_heads_kernel(const float *in, float *out, int B, int T, int H, int D, bool to_heads)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)B * T * H * D)
        return;
    const int d = (int)(i % D);
    const int h = (int)((i / D) % H);
    const int t = (int)((i / ((size_t)D * H)) % T);
    const size_t b = i / ((size_t)D * H * T);
    const size_t heads = ((b * H + h) * T + t) * D + d; /* index in (B, H, T, D) */
    if (to_heads)
        out[heads] = in[i];
    else
        out[i] = in[heads];
}

extern "C" void mha_heads_cuda(const float *d_in, float *d_out, int B, int T, int H, int D, int to_heads)
{
    const size_t n = (size_t)B * T * H * D;
    mha_transpose_heads_kernel<<<cuda_blocks(n, 256), 256>>>(d_in, d_out, B, T, H, D, to_heads != 0);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void mha_weights_to_device(const MhaWeights *w, MhaWeights *d_w)
{
    const size_t bytes = (size_t)w->H * w->D * w->C * sizeof(float);
    *d_w = *w;
    float **dst[4] = {&d_w->wq, &d_w->wk, &d_w->wv, &d_w->wo};
    const float *src[4] = {w->wq, w->wk, w->wv, w->wo};
    for (int i = 0; i < 4; i++) {
        *dst[i] = (float *)cuda_alloc(bytes);
        cuda_upload(*dst[i], src[i], bytes);
    }
}

extern "C" void mha_weights_free_device(MhaWeights *d_w)
{
    cuda_free(d_w->wq), cuda_free(d_w->wk), cuda_free(d_w->wv), cuda_free(d_w->wo);
    d_w->wq = d_w->wk = d_w->wv = d_w->wo = NULL;
}

extern "C" int mha_layer_forward_cuda(const MhaWeights *d_w, int kernel, const float *d_x, int B, int T, int causal,
                                      float *d_y)
{
    const int M = B * T, HD = d_w->H * d_w->D;
    const size_t bytes = (size_t)M * HD * sizeof(float);
    float *d_flat = (float *)cuda_alloc(bytes); /* (B, T, H*D) */
    float *d_q = (float *)cuda_alloc(bytes);    /* (B, H, T, D) */
    float *d_k = (float *)cuda_alloc(bytes);    /* (B, H, T, D) */
    float *d_v = (float *)cuda_alloc(bytes);    /* (B, H, T, D) */
    float *d_o = (float *)cuda_alloc(bytes);    /* (B, H, T, D) */
    mha_linear_cuda(d_flat, d_x, d_w->wq, M, HD, d_w->C);
    mha_heads_cuda(d_flat, d_q, B, T, d_w->H, d_w->D, true);
    mha_linear_cuda(d_flat, d_x, d_w->wk, M, HD, d_w->C);
    mha_heads_cuda(d_flat, d_k, B, T, d_w->H, d_w->D, true);
    mha_linear_cuda(d_flat, d_x, d_w->wv, M, HD, d_w->C);
    mha_heads_cuda(d_flat, d_v, B, T, d_w->H, d_w->D, true);
    MhaShape s = {B, d_w->H, T, T, d_w->D, causal, 1.0f / sqrtf((float)d_w->D)};
    int rc = mha_attention_cuda(kernel, &s, d_q, d_k, d_v, d_o);
    if (rc == 0) {
        mha_heads_cuda(d_o, d_flat, B, T, d_w->H, d_w->D, false);
        mha_linear_cuda(d_y, d_flat, d_w->wo, M, d_w->C, HD);
    }
    cuda_free(d_flat), cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o);
    return rc;
}
