/*
 * gqa.cu: chapter 02 on the GPU -- grouped-query attention.
 *
 * What it teaches: on the GPU as on the CPU, grouping is a change of index (kv head h / G), and
 * in the (B, H, T, D) layout a group's G query heads are one (G*T, D) matrix, so one GEMM per
 * (batch, kv head) serves the whole group.
 *
 *   v1 naive:  chapter 01's three kernels with the group mapping (the softmax kernel is chapter
 *              01's own). Each query head's threads read their kv head: K/V are read G times.
 *   v2 cublas: QKᵀ and PV as strided-batched SGEMMs over B*Hkv groups, each multiplying the
 *              group's (G*T, D) queries by its one K/V head; chapter 01's block-per-row softmax.
 * Both still materialise the (B, H, T, S) score matrix (chapter 03 removes it).
 *
 * Run: build/bin/02_mqa_gqa verify --device cuda; build/bin/02_mqa_gqa bench --device cuda.
 */
#include "02_mqa_gqa/gqa.h"

#include "common/attn_cli.h"
#include "common/cuda_utils.h"
#include "common/error.h"

/* ==== v1: naive kernels with the group mapping ================================================== */

/* scores (B, H, T, S) = q (B, H, T, D) · k (B, Hkv, S, D)ᵀ * scale, -inf where masked. */
__global__ void gqa_scores_kernel1(const float *q, const float *k, float *scores, size_t n_scores, int G,
                                   int T, int S, int D, int causal, float scale)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_scores)
        return;
    const int j = (int)(i % S);
    const size_t row = i / S; /* (b * H + h) * T + t */
    const int t = (int)(row % T);
    const size_t bh = row / T;
    const size_t bkv = bh / G; /* = b * Hkv + h / G, since H = Hkv * G */
    if (j >= attn_visible_keys(t, T, S, causal)) {
        scores[i] = -INFINITY;
        return;
    }
    const float *qr = q + row * D;
    const float *kr = k + (bkv * S + (size_t)j) * D;
    float dot = 0.0f;
    for (int d = 0; d < D; d++)
        dot += qr[d] * kr[d];
    scores[i] = dot * scale;
}

/* out (B, H, T, D) = p (B, H, T, S) · v (B, Hkv, S, D). */
__global__ void gqa_pv_kernel1(const float *p, const float *v, float *out, size_t n_out, int G, int T, int S, int D)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_out)
        return;
    const int d = (int)(i % D);
    const size_t row = i / D;
    const size_t bkv = row / T / G;
    const float *pr = p + row * S;
    const float *vh = v + bkv * S * D;
    float acc = 0.0f;
    for (int j = 0; j < S; j++)
        acc += pr[j] * vh[(size_t)j * D + d];
    out[i] = acc;
}

/* ==== v2: one GEMM per group ==================================================================== */

/* Row-major through column-major cuBLAS, as in chapter 01. Group g = b * Hkv + kvh owns
 * G*T consecutive rows of q, scores and out; its K and V head is the g-th (S, D) block. */
static void scores_gemm(const GqaShape *s, const float *d_q, const float *d_k, float *d_scores)
{
    const float zero = 0.0f;
    const int R = (s->H / s->Hkv) * s->T; /* stacked query rows per group */
    const CublasApi *cublas = cuda_cublas();
    CUBLAS_CHECK(cublas->SgemmStridedBatched(cublas->handle, CUBLAS_OP_T, CUBLAS_OP_N, s->S, R, s->D, &s->scale, d_k,
                                           s->D, (long long)s->S * s->D, d_q, s->D, (long long)R * s->D, &zero,
                                           d_scores, s->S, (long long)R * s->S, s->B * s->Hkv));
}

static void pv_gemm(const GqaShape *s, const float *d_p, const float *d_v, float *d_out)
{
    const float one = 1.0f, zero = 0.0f;
    const int R = (s->H / s->Hkv) * s->T;
    const CublasApi *cublas = cuda_cublas();
    CUBLAS_CHECK(cublas->SgemmStridedBatched(cublas->handle, CUBLAS_OP_N, CUBLAS_OP_N, s->D, R, s->S, &one, d_v, s->D,
                                           (long long)s->S * s->D, d_p, s->S, (long long)R * s->S, &zero, d_out, s->D,
                                           (long long)R * s->D, s->B * s->Hkv));
}

/* ==== dispatcher ================================================================================ */

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CUDA_NAMES[GQA_CUDA_KERNELS + 1] = {"cublas", "naive", "cublas"};

extern "C" const char *gqa_cuda_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= GQA_CUDA_KERNELS ? CUDA_NAMES[kernel] : NULL;
}

extern "C" int gqa_attention_cuda(int kernel, const GqaShape *s, const float *d_q, const float *d_k,
                                  const float *d_v, float *d_out)
{
    if (gqa_check_heads(s->H, s->Hkv) != 0)
        return -1;
    if (!gqa_cuda_kernel_name(kernel))
        return error_set("--kernel %d: chapter 02 has CUDA kernels 1..%d", kernel, GQA_CUDA_KERNELS);
    const int G = s->H / s->Hkv;
    const size_t rows = (size_t)s->B * s->H * s->T;
    float *d_scores = (float *)cuda_try_alloc(gqa_scores_bytes(s), "the score matrix (B, H, T, S)");
    if (!d_scores)
        return -1;
    if (kernel == 1) {
        const size_t n_scores = rows * s->S, n_out = rows * s->D;
        gqa_scores_kernel1<<<cuda_blocks(n_scores, 256), 256>>>(d_q, d_k, d_scores, n_scores, G, s->T, s->S,
                                                                 s->D, s->causal, s->scale);
        CUDA_CHECK(cudaGetLastError());
        mha_softmax_cuda1(d_scores, rows, s->S);
        gqa_pv_kernel1<<<cuda_blocks(n_out, 256), 256>>>(d_scores, d_v, d_out, n_out, G, s->T, s->S, s->D);
        CUDA_CHECK(cudaGetLastError());
    } else {
        scores_gemm(s, d_q, d_k, d_scores);
        mha_softmax_cuda2(d_scores, rows, s->T, s->S, s->causal);
        pv_gemm(s, d_scores, d_v, d_out);
    }
    cuda_free(d_scores);
    return 0;
}
