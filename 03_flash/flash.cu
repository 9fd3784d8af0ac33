/*
 * flash.cu: chapter 03 on the GPU -- FlashAttention, three ways.
 *
 * What it teaches: on a GPU the point of tiling is to keep a tile of K and V in shared memory
 * (on-chip, ~20x faster than HBM) while many query rows use it, and to keep the running m, l, o
 * of each row in registers, so that HBM is read about once per tile instead of once per score.
 *
 *   v1 fa1: a thread per query row (64 rows a block); the block loads 32-key tiles of K and V
 *           into shared memory; each thread scores its row against the tile, rescales its o
 *           once per tile and accumulates. The FlashAttention 1 loop, fp32.
 *   v2 fa2: 4 warps a block, each owning 8 query rows; the 32 lanes of a warp take one key
 *           each to score the warp's rows (K tile padded against bank conflicts), reduce max
 *           and sum with warp shuffles, then split D to accumulate P V. The division by l
 *           happens once at the end and tiles past the causal diagonal are never loaded. fp32.
 *   v3 tc:  tensor cores through WMMA: Q, K, V converted to fp16 (head dim padded to a multiple
 *           of 16; the conversion is timed with the kernel, its buffers are kept between calls
 *           and freed at exit),
 *           S = Q Kᵀ and O += P V as 16x16x16 fragment products with fp32 accumulation;
 *           the softmax runs on CUDA cores between them. Tiles on the causal diagonal do P V on
 *           CUDA cores, over exactly the keys each row sees.
 * Every version writes out (B, H, T, D) and, when asked, lse (B, H, T); query head h reads kv
 * head h / (H / Hkv); rows that see no key give zeros and lse = -inf.
 *
 * Run: build/bin/03_flash verify --device cuda; build/bin/03_flash bench --device cuda.
 */
#include "03_flash/flash.h"

#include <cuda_fp16.h>
#include <math.h>
#include <mma.h>

#include "common/attn_cli.h"
#include "common/cuda_utils.h"
#include "common/cuda_workspace.h"
#include "common/error.h"

/* Dynamic shared memory above 48 KiB must be asked for per kernel, within the device's limit. */
static int reserve_shared(const void *kernel, size_t bytes, const char *name, int D)
{
    size_t limit = cuda_shared_mem_per_block();
    if (bytes > limit)
        return error_set("%s needs %zu bytes of shared memory for D = %d but this GPU allows %zu", name, bytes, D,
                         limit);
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    return 0;
}

/* ==== v1: FlashAttention 1 style, a thread per query row ========================================== */

#define FA1_BR 64 /* query rows (threads) per block */
#define FA1_BC 32 /* keys per tile */

__global__ void flash_kernel1(const float *q, const float *k, const float *v, float *out, float *lse, int G, int T,
                              int S, int D, int causal, float scale)
{
    extern __shared__ float smem1[];
    float *Ks = smem1;               /* (Bc, D) */
    float *Vs = smem1 + FA1_BC * D;  /* (Bc, D) */
    const size_t bh = blockIdx.x;    /* b * H + h */
    const size_t bkv = bh / G;       /* b * Hkv + h / G */
    const int t0 = blockIdx.y * FA1_BR, t = t0 + threadIdx.x;
    const int last = min(T, t0 + FA1_BR) - 1;
    const int width = attn_visible_keys(last, T, S, causal); /* keys the block needs */
    const int n_row = t < T ? attn_visible_keys(t, T, S, causal) : 0;
    const float *qrow = q + (bh * T + (t < T ? t : 0)) * D;
    float o[FLASH_MAX_D]; /* this row's running output (local memory when D is large) */
    float m = -INFINITY, l = 0.0f;
    for (int d = 0; d < D; d++)
        o[d] = 0.0f;

    for (int j0 = 0; j0 < width; j0 += FA1_BC) {
        const int bc = min(FA1_BC, width - j0);
        for (int i = threadIdx.x; i < bc * D; i += blockDim.x) { /* the block loads the tile together */
            Ks[i] = k[(bkv * S + j0) * D + i];
            Vs[i] = v[(bkv * S + j0) * D + i];
        }
        __syncthreads();
        const int n = min(max(n_row - j0, 0), bc); /* keys of this tile the row sees */
        if (n > 0) {
            float sc[FA1_BC], m_tile = -INFINITY;
            for (int c = 0; c < n; c++) {
                float dot = 0.0f;
                for (int d = 0; d < D; d++)
                    dot += qrow[d] * Ks[c * D + d];
                sc[c] = dot * scale;
                m_tile = fmaxf(m_tile, sc[c]);
            }
            const float m_new = fmaxf(m, m_tile), alpha = __expf(m - m_new);
            l *= alpha;
            for (int d = 0; d < D; d++)
                o[d] *= alpha;
            for (int c = 0; c < n; c++) {
                const float p = __expf(sc[c] - m_new);
                l += p;
                for (int d = 0; d < D; d++)
                    o[d] += p * Vs[c * D + d];
            }
            m = m_new;
        }
        __syncthreads();
    }
    if (t < T) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int d = 0; d < D; d++)
            out[(bh * T + t) * D + d] = o[d] * inv;
        if (lse)
            lse[bh * T + t] = l > 0.0f ? m + logf(l) : -INFINITY;
    }
}

/* ==== v2: FlashAttention 2 style, warps own query rows ============================================ */

#define FA2_WARPS 4
#define FA2_RW 8                      /* query rows per warp */
#define FA2_BR (FA2_WARPS * FA2_RW)   /* 32 query rows per block */
#define FA2_BC 32                     /* keys per tile: one per lane */
#define FA2_SLOTS (FLASH_MAX_D / 32)  /* head dims per lane, at most */

__global__ void flash_kernel2(const float *q, const float *k, const float *v, float *out, float *lse, int G, int T,
                              int S, int D, int causal, float scale)
{
    extern __shared__ float smem2[];
    const int Dk = D + 1;                   /* K rows padded: lanes reading 32 different rows hit 32 banks */
    float *Qs = smem2;                      /* (Br, D) */
    float *Ks = Qs + FA2_BR * D;            /* (Bc, D + 1) */
    float *Vs = Ks + FA2_BC * Dk;           /* (Bc, D) */
    float *Ps = Vs + FA2_BC * D;            /* (warps, RW, Bc) */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const size_t bh = blockIdx.x, bkv = bh / G;
    const int t0 = blockIdx.y * FA2_BR;
    const int width = attn_visible_keys(min(T, t0 + FA2_BR) - 1, T, S, causal);

    for (int i = threadIdx.x; i < FA2_BR * D; i += blockDim.x) {
        const int t = t0 + i / D;
        Qs[i] = t < T ? q[(bh * T + t0) * D + i] : 0.0f;
    }
    float m[FA2_RW], l[FA2_RW], o[FA2_RW][FA2_SLOTS];
    int n_row[FA2_RW];
#pragma unroll
    for (int r = 0; r < FA2_RW; r++) {
        const int t = t0 + warp * FA2_RW + r;
        m[r] = -INFINITY, l[r] = 0.0f;
        n_row[r] = t < T ? attn_visible_keys(t, T, S, causal) : 0;
#pragma unroll
        for (int s = 0; s < FA2_SLOTS; s++)
            o[r][s] = 0.0f;
    }
    float *P = Ps + warp * FA2_RW * FA2_BC;

    for (int j0 = 0; j0 < width; j0 += FA2_BC) { /* tiles past the diagonal are never loaded */
        const int bc = min(FA2_BC, width - j0);
        __syncthreads(); /* the previous tile is no longer in use */
        for (int i = threadIdx.x; i < FA2_BC * D; i += blockDim.x) {
            const int c = i / D, d = i % D;
            const bool in = c < bc;
            Ks[c * Dk + d] = in ? k[(bkv * S + j0 + c) * D + d] : 0.0f;
            Vs[i] = in ? v[(bkv * S + j0 + c) * D + d] : 0.0f;
        }
        __syncthreads();
        /* lane c scores key j0 + c against the warp's rows */
#pragma unroll
        for (int r = 0; r < FA2_RW; r++) {
            const float *qr = Qs + (warp * FA2_RW + r) * D;
            const int n = min(max(n_row[r] - j0, 0), bc);
            float sc = -INFINITY;
            if (lane < n) {
                float dot = 0.0f;
                for (int d = 0; d < D; d++)
                    dot += qr[d] * Ks[lane * Dk + d];
                sc = dot * scale;
            }
            float m_tile = sc;
            for (int off = 16; off > 0; off /= 2)
                m_tile = fmaxf(m_tile, __shfl_xor_sync(0xffffffffu, m_tile, off));
            if (n == 0) { /* nothing for this row here: P row of zeros, m, l, o unchanged */
                P[r * FA2_BC + lane] = 0.0f;
                continue;
            }
            const float m_new = fmaxf(m[r], m_tile), alpha = __expf(m[r] - m_new);
            const float p = lane < n ? __expf(sc - m_new) : 0.0f;
            float sum = p;
            for (int off = 16; off > 0; off /= 2)
                sum += __shfl_xor_sync(0xffffffffu, sum, off);
            P[r * FA2_BC + lane] = p;
            l[r] = l[r] * alpha + sum;
            m[r] = m_new;
#pragma unroll
            for (int s = 0; s < FA2_SLOTS; s++)
                o[r][s] *= alpha;
        }
        __syncwarp();
        /* lanes split the head dims: o[r][d] += sum_c P[r][c] V[c][d], over the keys row r sees */
#pragma unroll
        for (int r = 0; r < FA2_RW; r++) {
            const int n = min(max(n_row[r] - j0, 0), bc);
            for (int c = 0; c < n; c++) {
                const float pc = P[r * FA2_BC + c];
#pragma unroll
                for (int s = 0; s < FA2_SLOTS; s++) {
                    const int d = lane + 32 * s;
                    if (d < D)
                        o[r][s] += pc * Vs[c * D + d];
                }
            }
        }
        __syncwarp();
    }
#pragma unroll
    for (int r = 0; r < FA2_RW; r++) {
        const int t = t0 + warp * FA2_RW + r;
        if (t >= T)
            continue;
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f; /* the one division, at the end */
#pragma unroll
        for (int s = 0; s < FA2_SLOTS; s++) {
            const int d = lane + 32 * s;
            if (d < D)
                out[(bh * T + t) * D + d] = o[r][s] * inv;
        }
        if (lse && lane == 0)
            lse[bh * T + t] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
    }
}

/* ==== v3: tensor cores (WMMA, fp16 in, fp32 accumulate) ========================================== */

using namespace nvcuda;

#define TC_WARPS 4
#define TC_BR (TC_WARPS * 16) /* 64 query rows per block, 16 per warp */
#define TC_BC 64              /* keys per tile */

/* fp32 (rows, D) -> fp16 (rows, Dp), zero-padded columns */
__global__ void flash_to_half(const float *in, half *out, size_t rows, int D, int Dp)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * Dp)
        return;
    const int d = (int)(i % Dp);
    out[i] = __float2half(d < D ? in[(i / Dp) * D + d] : 0.0f);
}

__global__ void flash_kernel3(const half *q, const half *k, const half *v, float *out, float *lse, int G, int T,
                              int S, int D, int Dp, int causal, float scale)
{
    extern __shared__ __align__(32) unsigned char smem3[];
    half *Qs = (half *)smem3;                    /* (Br, Dp) */
    half *Ks = Qs + TC_BR * Dp;                  /* (Bc, Dp) */
    half *Vs = Ks + TC_BC * Dp;                  /* (Bc, Dp) */
    half *Ps = Vs + TC_BC * Dp;                  /* (Br, Bc) */
    float *Ss = (float *)(Ps + TC_BR * TC_BC);   /* (Br, Bc) */
    float *Os = Ss + TC_BR * TC_BC;              /* (Br, Dp) */
    float *Ms = Os + TC_BR * Dp;                 /* (Br) running max */
    float *Ls = Ms + TC_BR;                      /* (Br) running sum */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const size_t bh = blockIdx.x, bkv = bh / G;
    const int t0 = blockIdx.y * TC_BR;
    const int width = attn_visible_keys(min(T, t0 + TC_BR) - 1, T, S, causal);

    for (int i = threadIdx.x; i < TC_BR * Dp; i += blockDim.x) {
        const int t = t0 + i / Dp;
        Qs[i] = t < T ? q[(bh * T + t0) * Dp + i] : __float2half(0.0f);
        Os[i] = 0.0f;
    }
    for (int i = threadIdx.x; i < TC_BR; i += blockDim.x)
        Ms[i] = -INFINITY, Ls[i] = 0.0f;
    /* a lane pair per row of the warp: row rw = warp*16 + lane/2, half the columns each */
    const int rw = warp * 16 + lane / 2, t = t0 + rw, part = lane % 2;
    const int n_row = t < T ? attn_visible_keys(t, T, S, causal) : 0;
    const int n_first = t0 + warp * 16 < T ? attn_visible_keys(t0 + warp * 16, T, S, causal) : 0;
    __syncthreads();

    for (int j0 = 0; j0 < width; j0 += TC_BC) {
        const int bc = min(TC_BC, width - j0);
        for (int i = threadIdx.x; i < TC_BC * Dp; i += blockDim.x) {
            const bool in = i / Dp < bc;
            Ks[i] = in ? k[(bkv * S + j0) * Dp + i] : __float2half(0.0f);
            Vs[i] = in ? v[(bkv * S + j0) * Dp + i] : __float2half(0.0f);
        }
        __syncthreads();
        /* S (16 x 64) of this warp = Q_w (16 x Dp) Kᵀ (Dp x 64), four 16x16 fragments */
        for (int f = 0; f < TC_BC / 16; f++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kk = 0; kk < Dp; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> b; /* Kᵀ: K rows are its columns */
                wmma::load_matrix_sync(a, Qs + warp * 16 * Dp + kk, Dp);
                wmma::load_matrix_sync(b, Ks + f * 16 * Dp + kk, Dp);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(Ss + warp * 16 * TC_BC + f * 16, acc, TC_BC, wmma::mem_row_major);
        }
        __syncwarp();
        /* the online softmax on CUDA cores: lanes 2r and 2r+1 share row r of the warp */
        const int n = min(max(n_row - j0, 0), bc);
        float *Sr = Ss + rw * TC_BC;
        half *Pr = Ps + rw * TC_BC;
        float m_tile = -INFINITY;
        for (int c = part; c < n; c += 2)
            m_tile = fmaxf(m_tile, Sr[c] * scale);
        m_tile = fmaxf(m_tile, __shfl_xor_sync(0xffffffffu, m_tile, 1));
        const float m_old = Ms[rw];
        const float m_new = n > 0 ? fmaxf(m_old, m_tile) : m_old;
        const float alpha = n > 0 ? __expf(m_old - m_new) : 1.0f;
        float sum = 0.0f;
        for (int c = part; c < TC_BC; c += 2) {
            const float p = c < n ? __expf(Sr[c] * scale - m_new) : 0.0f;
            Pr[c] = __float2half(p);
            sum += __half2float(Pr[c]); /* l sums what P V will use: the rounded p */
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        for (int d = part; d < Dp; d += 2)
            Os[rw * Dp + d] *= alpha;
        __syncwarp();
        if (part == 0 && n > 0)
            Ms[rw] = m_new, Ls[rw] = Ls[rw] * alpha + sum;
        __syncwarp();
        if (j0 + bc <= n_first) {
            /* every row of the warp sees the whole tile: O_w (16 x Dp) += P_w (16 x 64) V (64 x Dp) */
            for (int f = 0; f < Dp / 16; f++) {
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
                wmma::load_matrix_sync(acc, Os + warp * 16 * Dp + f * 16, Dp, wmma::mem_row_major);
                for (int kk = 0; kk < TC_BC; kk += 16) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> b;
                    wmma::load_matrix_sync(a, Ps + warp * 16 * TC_BC + kk, TC_BC);
                    wmma::load_matrix_sync(b, Vs + kk * Dp + f * 16, Dp);
                    wmma::mma_sync(acc, a, b, acc);
                }
                wmma::store_matrix_sync(Os + warp * 16 * Dp + f * 16, acc, Dp, wmma::mem_row_major);
            }
        } else {
            /* the causal diagonal: each row over exactly the keys it sees, on CUDA cores */
            for (int d = part; d < Dp; d += 2) {
                float acc = Os[rw * Dp + d];
                for (int c = 0; c < n; c++)
                    acc += __half2float(Pr[c]) * __half2float(Vs[c * Dp + d]);
                Os[rw * Dp + d] = acc;
            }
        }
        __syncthreads(); /* K, V, P of this tile are no longer needed */
    }
    if (t < T) {
        const float l = Ls[rw], inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (int d = part; d < D; d += 2)
            out[(bh * T + t) * D + d] = Os[rw * Dp + d] * inv;
        if (lse && part == 0)
            lse[bh * T + t] = l > 0.0f ? Ms[rw] + logf(l) : -INFINITY;
    }
}

/* ==== launchers ==================================================================================== */

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CUDA_NAMES[FLASH_CUDA_KERNELS + 1] = {"tc", "fa1", "fa2", "tc"};

extern "C" const char *flash_cuda_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= FLASH_CUDA_KERNELS ? CUDA_NAMES[kernel] : NULL;
}

extern "C" int flash_cuda_kernel_fp16(int kernel) { return kernel == 0 || kernel == 3; }

static int launch_tc(const GqaShape *s, const float *d_q, const float *d_k, const float *d_v, float *d_out,
                     float *d_lse)
{
    const int Dp = (s->D + 15) / 16 * 16, G = s->H / s->Hkv;
    const size_t q_rows = (size_t)s->B * s->H * s->T, kv_rows = (size_t)s->B * s->Hkv * s->S;
    const size_t smem = (size_t)(TC_BR + 2 * TC_BC) * Dp * sizeof(half) + (size_t)TC_BR * TC_BC * sizeof(half) +
                        (size_t)TC_BR * TC_BC * sizeof(float) + (size_t)TC_BR * Dp * sizeof(float) +
                        2 * TC_BR * sizeof(float);
    if (reserve_shared((const void *)flash_kernel3, smem, "flash kernel 3 (tc)", s->D) != 0)
        return -1;
    /* the fp16 copies are kept between calls (a benchmark should not time cudaMalloc), grow
     * only, and are freed at exit (common/cuda_workspace.h) */
    static CudaWorkspace ws_q = CUDA_WORKSPACE("fp16 copy of Q"), ws_k = CUDA_WORKSPACE("fp16 copy of K"),
                         ws_v = CUDA_WORKSPACE("fp16 copy of V");
    half *h_q = (half *)cuda_workspace(&ws_q, q_rows * Dp * sizeof(half));   /* (B*H*T, Dp) */
    half *h_k = h_q ? (half *)cuda_workspace(&ws_k, kv_rows * Dp * sizeof(half)) : NULL; /* (B*Hkv*S, Dp) */
    half *h_v = h_k ? (half *)cuda_workspace(&ws_v, kv_rows * Dp * sizeof(half)) : NULL; /* (B*Hkv*S, Dp) */
    if (!h_v)
        return -1;
    flash_to_half<<<cuda_blocks(q_rows * Dp, 256), 256>>>(d_q, h_q, q_rows, s->D, Dp);
    CUDA_CHECK(cudaGetLastError());
    flash_to_half<<<cuda_blocks(kv_rows * Dp, 256), 256>>>(d_k, h_k, kv_rows, s->D, Dp);
    CUDA_CHECK(cudaGetLastError());
    flash_to_half<<<cuda_blocks(kv_rows * Dp, 256), 256>>>(d_v, h_v, kv_rows, s->D, Dp);
    CUDA_CHECK(cudaGetLastError());
    dim3 grid((unsigned)(s->B * s->H), (unsigned)((s->T + TC_BR - 1) / TC_BR));
    flash_kernel3<<<grid, TC_WARPS * 32, smem>>>(h_q, h_k, h_v, d_out, d_lse, G, s->T, s->S, s->D, Dp, s->causal,
                                                 s->scale);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

extern "C" int flash_attention_cuda(int kernel, const GqaShape *s, const float *d_q, const float *d_k,
                                    const float *d_v, float *d_out, float *d_lse)
{
    if (flash_check_shape(s) != 0)
        return -1;
    if (!flash_cuda_kernel_name(kernel))
        return error_set("--kernel %d: chapter 03 has CUDA kernels 1..%d", kernel, FLASH_CUDA_KERNELS);
    if ((long long)s->B * s->H > 2147483647LL || (s->T + 31) / 32 > 65535)
        return error_set("B*H = %lld or T = %d is too large for this chapter's launch grid", (long long)s->B * s->H,
                         s->T);
    const int G = s->H / s->Hkv;
    if (kernel == 1) {
        const size_t smem = 2 * (size_t)FA1_BC * s->D * sizeof(float);
        if (reserve_shared((const void *)flash_kernel1, smem, "flash kernel 1 (fa1)", s->D) != 0)
            return -1;
        dim3 grid((unsigned)(s->B * s->H), (unsigned)((s->T + FA1_BR - 1) / FA1_BR));
        flash_kernel1<<<grid, FA1_BR, smem>>>(d_q, d_k, d_v, d_out, d_lse, G, s->T, s->S, s->D, s->causal,
                                              s->scale);
        CUDA_CHECK(cudaGetLastError());
        return 0;
    }
    if (kernel == 2) {
        const size_t smem = ((size_t)FA2_BR * s->D + (size_t)FA2_BC * (s->D + 1) + (size_t)FA2_BC * s->D +
                             (size_t)FA2_WARPS * FA2_RW * FA2_BC) * sizeof(float);
        if (reserve_shared((const void *)flash_kernel2, smem, "flash kernel 2 (fa2)", s->D) != 0)
            return -1;
        dim3 grid((unsigned)(s->B * s->H), (unsigned)((s->T + FA2_BR - 1) / FA2_BR));
        flash_kernel2<<<grid, FA2_WARPS * 32, smem>>>(d_q, d_k, d_v, d_out, d_lse, G, s->T, s->S, s->D, s->causal,
                                                      s->scale);
        CUDA_CHECK(cudaGetLastError());
        return 0;
    }
    return launch_tc(s, d_q, d_k, d_v, d_out, d_lse);
}
