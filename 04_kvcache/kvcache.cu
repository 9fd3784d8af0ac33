/*
 * kvcache.cu: chapter 04 on the GPU -- decode attention split over the sequence, an fp32 KV
 * cache in device memory, and generation through it with the whole model on the GPU.
 *
 * What it teaches: one decode query per head is too little work for a GPU unless the sequence
 * is split: each thread block takes a (sequence, kv head, part) task, runs the online softmax
 * of chapter 03 over its part for the group's G query heads, and writes a partial output with
 * its log-sum-exp; a second kernel merges the parts (flash-decoding).
 *
 *   decode v1 split: a block of 4 warps per task; a warp scores one key at a time for all G
 *      query rows (lanes split the head dim, shuffles reduce), the softmax of a 128-key chunk
 *      runs a warp per row, and threads own (row, dim) pairs to accumulate P V. Then the reduce.
 *
 * Generation: the model's forward is common/model_cuda.cu (cuBLAS products, small kernels for
 * embedding, RMSNorm, RoPE, SwiGLU, residual adds); its attention step is this file's: the new
 * K/V rows written into the cache, then the decode kernel above (one token) or, for a prefill,
 * the cache's first positions gathered and run through chapter 03's fa2 kernel. The loop around
 * it is the CPU's (generate.c).
 *
 * Run: build/bin/04_kvcache generate --device cuda; build/bin/04_kvcache bench --device cuda.
 */
#include "04_kvcache/kvcache.h"

#include <math.h>
#include <string.h>

#include "01_mha/mha.h"
#include "03_flash/flash.h"
#include "common/cuda_utils.h"
#include "common/cuda_workspace.h"
#include "common/error.h"
#include "common/model_cuda.h"

/* ==== decode attention, split over the sequence ===================================================== */

#define DEC_WARPS 4
#define DEC_CHUNK 128 /* keys per chunk of a task's online softmax */

/* grid: B * Hkv * n_splits blocks. Partial outputs part_o (B*Hkv*n_splits, G, D), already divided
 * by l, and part_lse (B*Hkv*n_splits, G). */
__global__ void kv_decode_kernel1(const float *k, const float *v, const float *q, const int *lens, int H, int Hkv,
                                  int max_seq, int D, int n_splits, float scale, float *part_o, float *part_lse)
{
    extern __shared__ float sm[];
    const int G = H / Hkv;
    float *qs = sm;                     /* (G, D) */
    float *sc = qs + G * D;             /* (G, CHUNK) scores, then probabilities */
    float *os = sc + G * DEC_CHUNK;     /* (G, D) running output */
    float *ms = os + G * D;             /* (G) running max */
    float *ls = ms + G;                 /* (G) running sum */
    float *al = ls + G;                 /* (G) this chunk's rescale factor */
    const int task = blockIdx.x, part = task % n_splits, g = task / n_splits, b = g / Hkv, h = g % Hkv;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int n = lens[b], s0 = (int)((long long)n * part / n_splits), s1 = (int)((long long)n * (part + 1) / n_splits);
    const float *kh = k + ((size_t)b * Hkv + h) * max_seq * D; /* (max_seq, D) */
    const float *vh = v + ((size_t)b * Hkv + h) * max_seq * D;
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        qs[i] = q[((size_t)b * H + (size_t)h * G) * D + i]; /* the group's G query rows are adjacent */
        os[i] = 0.0f;
    }
    for (int r = threadIdx.x; r < G; r += blockDim.x)
        ms[r] = -INFINITY, ls[r] = 0.0f;
    __syncthreads();

    for (int j0 = s0; j0 < s1; j0 += DEC_CHUNK) {
        const int ch = min(DEC_CHUNK, s1 - j0);
        /* scores: a warp per key, lanes split D, one shuffle reduction per query row */
        for (int c = warp; c < ch; c += DEC_WARPS) {
            const float *kr = kh + (size_t)(j0 + c) * D;
            for (int r = 0; r < G; r++) {
                float part_dot = 0.0f;
                for (int d = lane; d < D; d += 32)
                    part_dot += qs[r * D + d] * kr[d];
                for (int off = 16; off > 0; off /= 2)
                    part_dot += __shfl_xor_sync(0xffffffffu, part_dot, off);
                if (lane == 0)
                    sc[r * DEC_CHUNK + c] = part_dot * scale;
            }
        }
        __syncthreads();
        /* the online softmax: a warp per query row */
        for (int r = warp; r < G; r += DEC_WARPS) {
            float mt = -INFINITY;
            for (int c = lane; c < ch; c += 32)
                mt = fmaxf(mt, sc[r * DEC_CHUNK + c]);
            for (int off = 16; off > 0; off /= 2)
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
            const float m_new = fmaxf(ms[r], mt);
            float sum = 0.0f;
            for (int c = lane; c < ch; c += 32) {
                const float p = __expf(sc[r * DEC_CHUNK + c] - m_new);
                sc[r * DEC_CHUNK + c] = p;
                sum += p;
            }
            for (int off = 16; off > 0; off /= 2)
                sum += __shfl_xor_sync(0xffffffffu, sum, off);
            /* every lane read ms[r] above; a shuffle orders no shared-memory access, so without
             * this barrier lane 0's write below may race with those reads */
            __syncwarp();
            if (lane == 0) {
                const float alpha = __expf(ms[r] - m_new);
                al[r] = alpha;
                ls[r] = ls[r] * alpha + sum;
                ms[r] = m_new;
            }
        }
        __syncthreads();
        /* o = o * alpha + P V: threads own (row, dim) pairs, reading V rows coalesced */
        for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
            const int r = i / D, d = i % D;
            float acc = os[i] * al[r];
            for (int c = 0; c < ch; c++)
                acc += sc[r * DEC_CHUNK + c] * vh[(size_t)(j0 + c) * D + d];
            os[i] = acc;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int r = i / D;
        part_o[(size_t)task * G * D + i] = ls[r] > 0.0f ? os[i] / ls[r] : 0.0f;
    }
    for (int r = threadIdx.x; r < G; r += blockDim.x)
        part_lse[(size_t)task * G + r] = ls[r] > 0.0f ? ms[r] + logf(ls[r]) : -INFINITY;
}

/* grid: B * H blocks; merges the n_splits parts of one query row with their log-sum-exp. */
__global__ void kv_decode_reduce(const float *part_o, const float *part_lse, int H, int Hkv, int D, int n_splits,
                                 float *out)
{
    const int G = H / Hkv, bh = blockIdx.x, b = bh / H, hq = bh % H, h = hq / G, r = hq % G;
    const size_t g = (size_t)b * Hkv + h;
    float m = -INFINITY;
    for (int p = 0; p < n_splits; p++)
        m = fmaxf(m, part_lse[(g * n_splits + p) * G + r]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f, wsum = 0.0f;
        for (int p = 0; p < n_splits && m != -INFINITY; p++) {
            const float w = __expf(part_lse[(g * n_splits + p) * G + r] - m);
            acc += w * part_o[((g * n_splits + p) * G + r) * D + d];
            wsum += w;
        }
        out[(size_t)bh * D + d] = wsum > 0.0f ? acc / wsum : 0.0f;
    }
}

extern "C" const char *kvcache_cuda_kernel_name(int kernel) { return kernel == 0 || kernel == 1 ? "split" : NULL; }

extern "C" int kvcache_decode_cuda(int kernel, const float *d_k, const float *d_v, int B, int H, int Hkv, int max_seq,
                                   int D, const float *d_q, const int *d_lens, int max_len, float *d_out)
{
    if (!kvcache_cuda_kernel_name(kernel))
        return error_set("--kernel %d: chapter 04 has CUDA decode kernel 1", kernel);
    if (H % Hkv != 0)
        return error_set("H = %d is not a multiple of Hkv = %d", H, Hkv);
    const int G = H / Hkv;
    int sms = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    /* enough blocks to fill every SM a few times, parts of at least 256 keys */
    int n_splits = (4 * sms + B * Hkv - 1) / (B * Hkv);
    n_splits = n_splits > (max_len + 255) / 256 ? (max_len + 255) / 256 : n_splits;
    n_splits = n_splits < 1 ? 1 : n_splits;
    const size_t smem = ((size_t)2 * G * D + (size_t)G * DEC_CHUNK + 3 * (size_t)G) * sizeof(float);
    if (smem > cuda_shared_mem_per_block())
        return error_set("decode kernel: G = %d, D = %d need %zu bytes of shared memory, more than the GPU has", G, D,
                         smem);
    CUDA_CHECK(cudaFuncSetAttribute((const void *)kv_decode_kernel1, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem));
    const size_t tasks = (size_t)B * Hkv * n_splits;
    /* called once per layer per generated token: the partials live in workspaces kept between
     * calls (grow-only, freed at exit), not in a cudaMalloc and cudaFree per call */
    static CudaWorkspace ws_o = CUDA_WORKSPACE("decode partial outputs"), ws_lse = CUDA_WORKSPACE("decode partial lse");
    float *part_o = (float *)cuda_workspace(&ws_o, tasks * G * D * sizeof(float));            /* (tasks, G, D) */
    float *part_lse = part_o ? (float *)cuda_workspace(&ws_lse, tasks * G * sizeof(float)) : NULL; /* (tasks, G) */
    if (!part_lse)
        return -1;
    kv_decode_kernel1<<<(unsigned)tasks, DEC_WARPS * 32, smem>>>(d_k, d_v, d_q, d_lens, H, Hkv, max_seq, D, n_splits,
                                                                 1.0f / sqrtf((float)D), part_o, part_lse);
    CUDA_CHECK(cudaGetLastError());
    kv_decode_reduce<<<(unsigned)(B * H), 128>>>(part_o, part_lse, H, Hkv, D, n_splits, d_out);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

/* ==== the cache on the GPU ============================================================================= */

/* rows (n, Hkv * D) -> cache (Hkv, max_seq, D) at positions pos0.. */
__global__ void kv_cache_write(const float *rows, float *cache, int n, int Hkv, int D, int max_seq, int pos0)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * Hkv * D)
        return;
    const int d = (int)(i % D), h = (int)((i / D) % Hkv), r = (int)(i / ((size_t)D * Hkv));
    cache[((size_t)h * max_seq + pos0 + r) * D + d] = rows[i];
}

/* cache (Hkv, max_seq, D), first S positions -> (Hkv, S, D) */
__global__ void kv_cache_gather(const float *cache, float *out, int Hkv, int S, int D, int max_seq)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)Hkv * S * D)
        return;
    const size_t h = i / ((size_t)S * D), rest = i % ((size_t)S * D);
    out[i] = cache[h * max_seq * D + rest];
}

#define LAUNCH1D(kernel, n, ...)                                                                                      \
    do {                                                                                                               \
        kernel<<<cuda_blocks((size_t)(n), 256), 256>>>(__VA_ARGS__);                                                   \
        CUDA_CHECK(cudaGetLastError());                                                                                \
    } while (0)

/* One sequence's fp32 cache on the GPU, and the scratch of its attention step. */
typedef struct {
    int H, Hkv, D, max_seq;
    int pos0;       /* where the rows of the forward under way go */
    float *k, *v;   /* (L, Hkv, max_seq, D) */
    float *gk, *gv; /* (Hkv, max_seq, D) a layer's first positions, contiguous, for chapter 03 */
    float *qh, *oh; /* (H, cap, D) a prefill's queries and outputs, by head */
    int *lens;      /* (1) the decode length, on the device */
} GpuCache;

static void gpu_cache_free(GpuCache *c)
{
    float *bufs[] = {c->k, c->v, c->gk, c->gv, c->qh, c->oh};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        cuda_free(bufs[i]);
    cuda_free(c->lens);
    memset(c, 0, sizeof *c);
}

/* 0, or -1 with an error naming what did not fit (nothing left allocated) */
static int gpu_cache_create(GpuCache *c, const ModelConfig *mc, int max_seq, int cap)
{
    memset(c, 0, sizeof *c);
    c->H = mc->n_heads, c->Hkv = mc->n_kv_heads, c->D = model_head_size(mc), c->max_seq = max_seq;
    const size_t layer = (size_t)c->Hkv * max_seq * c->D, heads = (size_t)c->H * cap * c->D;
    float **bufs[] = {&c->k, &c->v, &c->gk, &c->gv, &c->qh, &c->oh};
    const size_t floats[] = {(size_t)mc->n_layers * layer, (size_t)mc->n_layers * layer, layer, layer, heads, heads};
    int rc = 0;
    for (size_t i = 0; i < sizeof floats / sizeof floats[0] && rc == 0; i++)
        if (!(*bufs[i] = (float *)cuda_try_alloc(floats[i] * sizeof(float), "the KV cache and its scratch")))
            rc = -1;
    if (rc == 0 && !(c->lens = (int *)cuda_try_alloc(sizeof(int), "lens")))
        rc = -1;
    if (rc != 0)
        gpu_cache_free(c);
    return rc;
}

/* The model's attention step (a ModelAttention on device pointers): q (n, H*D), k and v
 * (n, Hkv*D) of the rows at positions pos0 .. pos0+n-1 -> att (n, H*D). */
static int gpu_cache_attention(void *ctx, int layer, int n, const float *q, const float *k, const float *v,
                               float *att)
{
    GpuCache *c = (GpuCache *)ctx;
    const int H = c->H, Hkv = c->Hkv, D = c->D, S = c->pos0 + n;
    float *kc = c->k + (size_t)layer * Hkv * c->max_seq * D, *vc = c->v + (size_t)layer * Hkv * c->max_seq * D;
    LAUNCH1D(kv_cache_write, (size_t)n * Hkv * D, k, kc, n, Hkv, D, c->max_seq, c->pos0);
    LAUNCH1D(kv_cache_write, (size_t)n * Hkv * D, v, vc, n, Hkv, D, c->max_seq, c->pos0);
    if (n == 1) { /* decode: (1, H, D) is already the token-major row */
        cuda_upload(c->lens, &S, sizeof(int));
        return kvcache_decode_cuda(1, kc, vc, 1, H, Hkv, c->max_seq, D, q, c->lens, S, att);
    }
    /* prefill: the cache's first S positions, contiguous, through chapter 03 */
    LAUNCH1D(kv_cache_gather, (size_t)Hkv * S * D, kc, c->gk, Hkv, S, D, c->max_seq);
    LAUNCH1D(kv_cache_gather, (size_t)Hkv * S * D, vc, c->gv, Hkv, S, D, c->max_seq);
    mha_heads_cuda(q, c->qh, 1, n, H, D, 1);
    const GqaShape s = {.B = 1, .H = H, .Hkv = Hkv, .T = n, .S = S, .D = D, .causal = 1,
                        .scale = 1.0f / sqrtf((float)D)};
    if (flash_attention_cuda(2, &s, c->qh, c->gk, c->gv, c->oh, NULL) != 0)
        return -1;
    mha_heads_cuda(c->oh, att, 1, n, H, D, 0);
    return 0;
}

/* ==== generation on the GPU ============================================================================ */

typedef struct {
    ModelCuda *g;
    GpuCache *c;
} GpuForward;

/* The GPU's forward for the generation loop; without a cache, the whole sequence runs again from
 * position 0 through the same buffers. */
static int gpu_forward(void *ctx, const int *tokens, int n, int pos0, float *logits)
{
    GpuForward *f = (GpuForward *)ctx;
    f->c->pos0 = pos0;
    if (model_cuda_forward(f->g, tokens, n, pos0, gpu_cache_attention, f->c, logits) != 0)
        return -1;
    cuda_sync();
    return 0;
}

extern "C" int kvcache_generate_cuda(const Model *m, const int *prompt, int n_prompt, const GenOptions *o, int *out,
                                     double *step_s)
{
    if (kvcache_check_request(&m->c, prompt, n_prompt, o->max_new) != 0)
        return -1;
    if (o->use_cache && o->dtype != KV_F32)
        return error_set("--kv-dtype %s: the GPU path keeps an fp32 cache only (use --device cpu)",
                         kv_dtype_name(o->dtype));
    const int total = n_prompt + o->max_new;
    /* rows per forward: a prefill chunk, or the whole sequence */
    const int cap = o->use_cache && o->prefill_chunk > 0 ? (o->prefill_chunk < total ? o->prefill_chunk : total) : total;
    ModelCuda g;
    GpuCache c;
    if (model_cuda_create(&g, m, cap) != 0)
        return -1;
    if (gpu_cache_create(&c, &m->c, total, cap) != 0) {
        model_cuda_free(&g);
        return -1;
    }
    GpuForward f = {.g = &g, .c = &c};
    const int rc = kvcache_generate_loop(&m->c, gpu_forward, &f, prompt, n_prompt, o, out, step_s);
    gpu_cache_free(&c);
    model_cuda_free(&g);
    return rc;
}
