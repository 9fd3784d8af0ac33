/*
 * kvcache.cu: chapter 04 on the GPU -- decode attention split over the sequence, and the whole
 * Llama-style model generating on the GPU with an fp32 KV cache.
 *
 * What it teaches: one decode query per head is too little work for a GPU unless the sequence
 * is split: each thread block takes a (sequence, kv head, part) task, runs the online softmax
 * of chapter 03 over its part for the group's G query heads, and writes a partial output with
 * its log-sum-exp; a second kernel merges the parts (flash-decoding).
 *
 *   decode v1 split: a block of 4 warps per task; a warp scores one key at a time for all G
 *      query rows (lanes split the head dim, shuffles reduce), the softmax of a 128-key chunk
 *      runs a warp per row, and threads own (row, dim) pairs to accumulate P V. Then the reduce.
 * The model forward: cuBLAS for every matrix product (chapter 01's mha_linear_cuda), small
 * kernels for embedding, RMSNorm, RoPE, the cache write, SwiGLU and the residual adds; prefill
 * attention gathers the cache and runs chapter 03's fa2 kernel, decode runs the kernel above.
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
#include "common/tensor.h"
#include "common/timer.h"

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

/* ==== the model forward on the GPU ================================================================== */

__global__ void kv_embed(const float *emb, const int *tokens, float *x, int n, int dim)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)n * dim)
        x[i] = emb[(size_t)tokens[i / dim] * dim + i % dim];
}

/* a block per row: o = x / sqrt(mean(x^2) + 1e-5) * w */
__global__ void kv_rmsnorm(float *o, const float *x, const float *w, int dim)
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

/* RoPE on (n, heads * hs), row r at position pos0 + r: a thread per (row, head, pair) */
__global__ void kv_rope(float *x, int n, int heads, int hs, int pos0)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int pairs = hs / 2;
    if (i >= (size_t)n * heads * pairs)
        return;
    const int p = (int)(i % pairs), r = (int)(i / ((size_t)heads * pairs));
    float *v = x + (i / pairs) * hs + 2 * p;
    const float freq = 1.0f / powf(10000.0f, (float)(2 * p) / (float)hs);
    const float val = (float)(pos0 + r) * freq, fcr = cosf(val), fci = sinf(val);
    const float v0 = v[0], v1 = v[1];
    v[0] = v0 * fcr - v1 * fci;
    v[1] = v0 * fci + v1 * fcr;
}

/* rows (n, Hkv * hs) -> cache (Hkv, max_seq, hs) at positions pos0.. */
__global__ void kv_cache_write(const float *rows, float *cache, int n, int Hkv, int hs, int max_seq, int pos0)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * Hkv * hs)
        return;
    const int d = (int)(i % hs), h = (int)((i / hs) % Hkv), r = (int)(i / ((size_t)hs * Hkv));
    cache[((size_t)h * max_seq + pos0 + r) * hs + d] = rows[i];
}

/* cache (Hkv, max_seq, hs), first S positions -> (Hkv, S, hs) */
__global__ void kv_cache_gather(const float *cache, float *out, int Hkv, int S, int hs, int max_seq)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)Hkv * S * hs)
        return;
    const size_t h = i / ((size_t)S * hs), rest = i % ((size_t)S * hs);
    out[i] = cache[h * max_seq * hs + rest];
}

__global__ void kv_add(float *x, const float *y, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

__global__ void kv_swiglu(float *h, const float *g, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const float val = h[i] * (1.0f / (1.0f + expf(-h[i])));
        h[i] = val * g[i];
    }
}

/* The pieces of the forward, as host calls, for chapter 06's batched forward on the GPU. */
extern "C" void kvcache_cuda_embed(const float *d_emb, const int *d_tokens, float *d_x, int n, int dim)
{
    kv_embed<<<cuda_blocks((size_t)n * dim, 256), 256>>>(d_emb, d_tokens, d_x, n, dim);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void kvcache_cuda_rmsnorm(float *d_o, const float *d_x, const float *d_w, int rows, int dim)
{
    kv_rmsnorm<<<rows, 256>>>(d_o, d_x, d_w, dim);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void kvcache_cuda_add(float *d_x, const float *d_y, size_t n)
{
    kv_add<<<cuda_blocks(n, 256), 256>>>(d_x, d_y, n);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void kvcache_cuda_swiglu(float *d_h, const float *d_g, size_t n)
{
    kv_swiglu<<<cuda_blocks(n, 256), 256>>>(d_h, d_g, n);
    CUDA_CHECK(cudaGetLastError());
}

/* Device copies of the weights and the buffers of one forward of up to `cap` tokens. */
typedef struct {
    const Model *m;
    float *data;                 /* the weights, same offsets as m->data */
    float *kc, *vc;              /* (L, Hkv, max_seq, hs) */
    int max_seq, cap;
    float *x, *xb, *q, *k, *v, *qh, *oh, *att, *h1, *h3, *logits, *gk, *gv;
    int *tokens, *lens;
} GpuModel;

static float *dev_ptr(const GpuModel *g, const float *host) { return g->data + (host - g->m->data); }

#define LAUNCH1D(kernel, n, ...)                                                                                      \
    do {                                                                                                               \
        kernel<<<cuda_blocks((size_t)(n), 256), 256>>>(__VA_ARGS__);                                                   \
        CUDA_CHECK(cudaGetLastError());                                                                                \
    } while (0)

static int gpu_forward(GpuModel *g, const int *tokens, int n, int pos0, float *h_logits)
{
    const ModelConfig *c = &g->m->c;
    const int dim = c->dim, H = c->n_heads, Hkv = c->n_kv_heads, hs = model_head_size(c), hid = c->hidden_dim;
    const int qd = H * hs, kvd = Hkv * hs, S = pos0 + n;
    const ModelWeights *w = &g->m->w;
    cuda_upload(g->tokens, tokens, (size_t)n * sizeof(int));
    LAUNCH1D(kv_embed, (size_t)n * dim, dev_ptr(g, w->token_embedding), g->tokens, g->x, n, dim);
    for (int l = 0; l < c->n_layers; l++) {
        float *kc = g->kc + (size_t)l * Hkv * g->max_seq * hs, *vc = g->vc + (size_t)l * Hkv * g->max_seq * hs;
        kv_rmsnorm<<<n, 256>>>(g->xb, g->x, dev_ptr(g, w->rms_att + (size_t)l * dim), dim);
        CUDA_CHECK(cudaGetLastError());
        mha_linear_cuda(g->q, g->xb, dev_ptr(g, w->wq + (size_t)l * qd * dim), n, qd, dim);
        mha_linear_cuda(g->k, g->xb, dev_ptr(g, w->wk + (size_t)l * kvd * dim), n, kvd, dim);
        mha_linear_cuda(g->v, g->xb, dev_ptr(g, w->wv + (size_t)l * kvd * dim), n, kvd, dim);
        LAUNCH1D(kv_rope, (size_t)n * H * (hs / 2), g->q, n, H, hs, pos0);
        LAUNCH1D(kv_rope, (size_t)n * Hkv * (hs / 2), g->k, n, Hkv, hs, pos0);
        LAUNCH1D(kv_cache_write, (size_t)n * kvd, g->k, kc, n, Hkv, hs, g->max_seq, pos0);
        LAUNCH1D(kv_cache_write, (size_t)n * kvd, g->v, vc, n, Hkv, hs, g->max_seq, pos0);
        if (n == 1) { /* decode: (1, H, hs) is already the token-major row */
            const int len = S;
            cuda_upload(g->lens, &len, sizeof(int));
            if (kvcache_decode_cuda(1, kc, vc, 1, H, Hkv, g->max_seq, hs, g->q, g->lens, S, g->att) != 0)
                return -1;
        } else { /* prefill: the cache's first S positions, contiguous, through chapter 03 */
            LAUNCH1D(kv_cache_gather, (size_t)Hkv * S * hs, kc, g->gk, Hkv, S, hs, g->max_seq);
            LAUNCH1D(kv_cache_gather, (size_t)Hkv * S * hs, vc, g->gv, Hkv, S, hs, g->max_seq);
            mha_heads_cuda(g->q, g->qh, 1, n, H, hs, 1);
            GqaShape s = {1, H, Hkv, n, S, hs, 1, 1.0f / sqrtf((float)hs)};
            if (flash_attention_cuda(2, &s, g->qh, g->gk, g->gv, g->oh, NULL) != 0)
                return -1;
            mha_heads_cuda(g->oh, g->att, 1, n, H, hs, 0);
        }
        mha_linear_cuda(g->xb, g->att, dev_ptr(g, w->wo + (size_t)l * dim * qd), n, dim, qd);
        LAUNCH1D(kv_add, (size_t)n * dim, g->x, g->xb, (size_t)n * dim);
        kv_rmsnorm<<<n, 256>>>(g->xb, g->x, dev_ptr(g, w->rms_ffn + (size_t)l * dim), dim);
        CUDA_CHECK(cudaGetLastError());
        mha_linear_cuda(g->h1, g->xb, dev_ptr(g, w->w1 + (size_t)l * hid * dim), n, hid, dim);
        mha_linear_cuda(g->h3, g->xb, dev_ptr(g, w->w3 + (size_t)l * hid * dim), n, hid, dim);
        LAUNCH1D(kv_swiglu, (size_t)n * hid, g->h1, g->h3, (size_t)n * hid);
        mha_linear_cuda(g->xb, g->h1, dev_ptr(g, w->w2 + (size_t)l * dim * hid), n, dim, hid);
        LAUNCH1D(kv_add, (size_t)n * dim, g->x, g->xb, (size_t)n * dim);
    }
    float *last = g->x + (size_t)(n - 1) * dim;
    kv_rmsnorm<<<1, 256>>>(g->xb, last, dev_ptr(g, w->rms_final), dim);
    CUDA_CHECK(cudaGetLastError());
    mha_linear_cuda(g->logits, g->xb, dev_ptr(g, w->wcls), 1, c->vocab_size, dim);
    cuda_download(h_logits, g->logits, (size_t)c->vocab_size * sizeof(float));
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
    const ModelConfig *c = &m->c;
    const int hs = model_head_size(c), total = n_prompt + o->max_new;
    const int cap = o->use_cache && o->prefill_chunk > 0 ? (o->prefill_chunk < total ? o->prefill_chunk : total) : total;
    const size_t kv = (size_t)c->n_layers * c->n_kv_heads * total * hs;
    GpuModel g;
    memset(&g, 0, sizeof g);
    g.m = m, g.max_seq = total, g.cap = cap;
    g.data = (float *)cuda_try_alloc(m->n_floats * sizeof(float), "model weights");
    if (!g.data)
        return -1;
    cuda_upload(g.data, m->data, m->n_floats * sizeof(float));
    const size_t nd = (size_t)cap * c->dim, nkv = (size_t)cap * c->n_kv_heads * hs, nh = (size_t)cap * c->hidden_dim;
    const size_t gathered = (size_t)c->n_kv_heads * total * hs;
    float **bufs[] = {&g.kc, &g.vc, &g.x, &g.xb, &g.q, &g.k, &g.v, &g.qh, &g.oh, &g.att, &g.h1, &g.h3, &g.logits,
                      &g.gk, &g.gv};
    const size_t sizes[] = {kv, kv, nd, nd, nd, nkv, nkv, nd, nd, nd, nh, nh, (size_t)c->vocab_size, gathered,
                            gathered};
    int rc = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0] && rc == 0; i++)
        if (!(*bufs[i] = (float *)cuda_try_alloc(sizes[i] * sizeof(float), "forward buffers")))
            rc = -1;
    g.tokens = rc == 0 ? (int *)cuda_try_alloc((size_t)total * sizeof(int), "tokens") : NULL;
    g.lens = g.tokens ? (int *)cuda_try_alloc(sizeof(int), "lens") : NULL;
    if (!g.lens)
        rc = -1;
    int *tokens = (int *)mem_alloc((size_t)total * sizeof(int), "tokens");
    float *logits = (float *)mem_alloc((size_t)c->vocab_size * sizeof(float), "logits");
    if (!tokens || !logits)
        rc = -1;
    Rng rng;
    model_rng_seed(&rng, o->seed);
    if (rc == 0)
        memcpy(tokens, prompt, (size_t)n_prompt * sizeof(int));
    for (int step = 0; step < o->max_new && rc == 0; step++) {
        const double t0 = timer_now();
        const int n = n_prompt + step;
        if (!o->use_cache) { /* recompute the whole sequence: the cache buffers serve one forward */
            for (int p = 0; p < n && rc == 0; p += cap)
                rc = gpu_forward(&g, tokens + p, p + cap < n ? cap : n - p, p, logits);
        } else if (step > 0) {
            rc = gpu_forward(&g, tokens + n - 1, 1, n - 1, logits);
        } else {
            for (int p = 0; p < n_prompt && rc == 0; p += cap)
                rc = gpu_forward(&g, tokens + p, p + cap < n_prompt ? cap : n_prompt - p, p, logits);
        }
        if (rc != 0)
            break;
        cuda_sync();
        const int next = model_sample(logits, c->vocab_size, o->temperature, &rng);
        if (next < 0) { /* the logits overflowed (error recorded) */
            rc = -1;
            break;
        }
        out[step] = tokens[n] = next;
        if (step_s)
            step_s[step] = timer_now() - t0;
        if (o->stop_at_bos_eos && (out[step] == 1 || out[step] == 2)) { /* BOS or EOS: the text is over */
            for (int i = step; i < o->max_new; i++)
                out[i] = -1;
            break;
        }
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        cuda_free(*bufs[i]);
    cuda_free(g.tokens), cuda_free(g.lens), cuda_free(g.data);
    mem_free(tokens), mem_free(logits);
    return rc;
}
