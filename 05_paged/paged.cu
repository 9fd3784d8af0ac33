/*
 * paged.cu: chapter 05 on the GPU -- attention that reads K and V through block tables.
 *
 * What it teaches: on a GPU the table costs one extra load per block of keys (the physical id),
 * shared by every thread that reads that block; the rows of a block stay contiguous, so the
 * loads of K and V stay coalesced. Two kernels, for decode and prefill rows alike:
 *
 *   v1: a thread block per (query row, query head). Threads take a key each and compute its dot
 *       product, the block keeps the online softmax of chapter 03 over chunks of keys, threads
 *       own output dims for P V. Simple, but a long sequence is one block's serial work, and a
 *       GQA group reads the same K/V once per query head.
 *   v2: a thread block per (query row, kv head, partition of the sequence): the G query heads of
 *       the group share each K/V row (a warp per key, lanes split D), each partition leaves its
 *       partial output and log-sum-exp, and a reduce kernel merges the partitions (as chapter
 *       04's split decode, now through the table).
 *
 * Run: build/bin/05_paged verify --device cuda; build/bin/05_paged bench --device cuda.
 */
#include "05_paged/paged.h"

#include <math.h>
#include <stdlib.h>

#include "04_kvcache/kvcache.h"
#include "common/causal.h"
#include "common/cuda_utils.h"
#include "common/cuda_workspace.h"
#include "common/error.h"
#include "common/rng.h"
#include "common/tensor.h"

#define PG_THREADS 128
#define PG_WARPS (PG_THREADS / 32)
#define PG_CHUNK 128      /* keys per step of the online softmax */
#define PG_PART_KEYS 512  /* keys per partition in v2: shorter than the CPU's, a GPU wants many blocks */

/* The key range query row `row` sees: [0, *end) of sequence *seq (common/causal.h's rule). */
__device__ static void pg_row_range(const PagedCudaBatch b, int row, int causal, int *seq, int *end)
{
    const int i = b.row_seq[row], T = b.q_start[i + 1] - b.q_start[i], t = row - b.q_start[i];
    *seq = i;
    *end = attn_visible_keys(t, T, b.lens[i], causal);
}

/* address of key/value row j of sequence i, kv head h, through the block table */
__device__ static size_t pg_row_offset(const PagedCudaBatch b, int i, int h, int j)
{
    const int id = b.tables[(size_t)i * b.max_blocks + j / b.bs];
    return (((size_t)h * b.num_blocks + id) * b.bs + j % b.bs) * b.D;
}

/* ==== v1: a block per (row, head) ===================================================================== */

__global__ void paged_kernel_v1(PagedCudaBatch b, int H, float scale, int causal, const float *q, float *out)
{
    extern __shared__ float sm[];
    const int D = b.D, row = blockIdx.x, hq = blockIdx.y, h = hq / (H / b.Hkv);
    float *qs = sm;               /* (D) */
    float *os = qs + D;           /* (D) running output */
    float *sc = os + D;           /* (CHUNK) */
    __shared__ float red[PG_WARPS], m_run, l_run, alpha;
    int i, end;
    pg_row_range(b, row, causal, &i, &end);
    const float *qr = q + ((size_t)row * H + hq) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        qs[d] = qr[d] * scale, os[d] = 0.0f;
    if (threadIdx.x == 0)
        m_run = -INFINITY, l_run = 0.0f;
    __syncthreads();
    for (int c0 = 0; c0 < end; c0 += PG_CHUNK) {
        const int ch = min(PG_CHUNK, end - c0);
        for (int c = threadIdx.x; c < ch; c += blockDim.x) { /* a thread per key: its whole dot */
            const float *kr = b.k + pg_row_offset(b, i, h, c0 + c);
            float dot = 0.0f;
            for (int d = 0; d < D; d++)
                dot += qs[d] * kr[d];
            sc[c] = dot;
        }
        __syncthreads();
        float mt = -INFINITY; /* the chunk's max, reduced over the block */
        for (int c = threadIdx.x; c < ch; c += blockDim.x)
            mt = fmaxf(mt, sc[c]);
        for (int off = 16; off > 0; off /= 2)
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
        if (threadIdx.x % 32 == 0)
            red[threadIdx.x / 32] = mt;
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < PG_WARPS; w++)
                red[0] = fmaxf(red[0], red[w]);
            const float m_new = fmaxf(m_run, red[0]);
            alpha = __expf(m_run - m_new);
            m_run = m_new;
        }
        __syncthreads();
        float sum = 0.0f;
        for (int c = threadIdx.x; c < ch; c += blockDim.x) {
            sc[c] = __expf(sc[c] - m_run);
            sum += sc[c];
        }
        for (int off = 16; off > 0; off /= 2)
            sum += __shfl_xor_sync(0xffffffffu, sum, off);
        __syncthreads(); /* everyone has read red[0] and m_run */
        if (threadIdx.x % 32 == 0)
            red[threadIdx.x / 32] = sum;
        __syncthreads();
        if (threadIdx.x == 0) {
            float s = 0.0f;
            for (int w = 0; w < PG_WARPS; w++)
                s += red[w];
            l_run = l_run * alpha + s;
        }
        for (int d = threadIdx.x; d < D; d += blockDim.x) { /* o = o * alpha + P V */
            float acc = os[d] * alpha;
            for (int c = 0; c < ch; c++)
                acc += sc[c] * b.v[pg_row_offset(b, i, h, c0 + c) + d];
            os[d] = acc;
        }
        __syncthreads();
    }
    float *o = out + ((size_t)row * H + hq) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
        o[d] = l_run > 0.0f ? os[d] / l_run : 0.0f;
}

/* ==== v2: a block per (row, kv head, partition), then a reduce ========================================= */

/* part_o (rows, Hkv, n_parts, G, D) normalised partial outputs, part_lse (rows, Hkv, n_parts, G) */
__global__ void paged_kernel_v2(PagedCudaBatch b, int H, float scale, int causal, int part_keys, const float *q,
                                float *part_o, float *part_lse)
{
    extern __shared__ float sm[];
    const int D = b.D, G = H / b.Hkv, row = blockIdx.x, h = blockIdx.y, part = blockIdx.z, n_parts = gridDim.z;
    float *qs = sm;                /* (G, D) */
    float *sc = qs + G * D;        /* (G, CHUNK) */
    float *os = sc + G * PG_CHUNK; /* (G, D) */
    float *ms = os + G * D, *ls = ms + G, *al = ls + G; /* (G) each */
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int i, end;
    pg_row_range(b, row, causal, &i, &end);
    const int s0 = part * part_keys, s1 = min(end, s0 + part_keys);
    for (int x = threadIdx.x; x < G * D; x += blockDim.x) {
        qs[x] = q[((size_t)row * H + (size_t)h * G) * D + x] * scale; /* the group's G heads are adjacent */
        os[x] = 0.0f;
    }
    for (int r = threadIdx.x; r < G; r += blockDim.x)
        ms[r] = -INFINITY, ls[r] = 0.0f;
    __syncthreads();
    for (int j0 = s0; j0 < s1; j0 += PG_CHUNK) {
        const int ch = min(PG_CHUNK, s1 - j0);
        for (int c = warp; c < ch; c += PG_WARPS) { /* a warp per key, lanes split D */
            const float *kr = b.k + pg_row_offset(b, i, h, j0 + c);
            for (int r = 0; r < G; r++) {
                float dot = 0.0f;
                for (int d = lane; d < D; d += 32)
                    dot += qs[r * D + d] * kr[d];
                for (int off = 16; off > 0; off /= 2)
                    dot += __shfl_xor_sync(0xffffffffu, dot, off);
                if (lane == 0)
                    sc[r * PG_CHUNK + c] = dot;
            }
        }
        __syncthreads();
        for (int r = warp; r < G; r += PG_WARPS) { /* online softmax, a warp per query head */
            float mt = -INFINITY;
            for (int c = lane; c < ch; c += 32)
                mt = fmaxf(mt, sc[r * PG_CHUNK + c]);
            for (int off = 16; off > 0; off /= 2)
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, off));
            const float m_new = fmaxf(ms[r], mt);
            float sum = 0.0f;
            for (int c = lane; c < ch; c += 32) {
                const float pr = __expf(sc[r * PG_CHUNK + c] - m_new);
                sc[r * PG_CHUNK + c] = pr;
                sum += pr;
            }
            for (int off = 16; off > 0; off /= 2)
                sum += __shfl_xor_sync(0xffffffffu, sum, off);
            /* every lane read ms[r] above; a shuffle orders no shared-memory access, so without
             * this barrier lane 0's write below may race with those reads */
            __syncwarp();
            if (lane == 0) {
                al[r] = __expf(ms[r] - m_new);
                ls[r] = ls[r] * al[r] + sum;
                ms[r] = m_new;
            }
        }
        __syncthreads();
        for (int x = threadIdx.x; x < G * D; x += blockDim.x) { /* o = o * alpha + P V */
            const int r = x / D, d = x % D;
            float acc = os[x] * al[r];
            for (int c = 0; c < ch; c++)
                acc += sc[r * PG_CHUNK + c] * b.v[pg_row_offset(b, i, h, j0 + c) + d];
            os[x] = acc;
        }
        __syncthreads();
    }
    const size_t task = ((size_t)row * b.Hkv + h) * n_parts + part;
    for (int x = threadIdx.x; x < G * D; x += blockDim.x) {
        const int r = x / D;
        part_o[task * G * D + x] = ls[r] > 0.0f ? os[x] / ls[r] : 0.0f;
    }
    for (int r = threadIdx.x; r < G; r += blockDim.x)
        part_lse[task * G + r] = ls[r] > 0.0f ? ms[r] + logf(ls[r]) : -INFINITY;
}

/* a block per (row, query head): merges its n_parts partial outputs with their log-sum-exp */
__global__ void paged_reduce(const float *part_o, const float *part_lse, int H, int Hkv, int D, int n_parts, float *out)
{
    const int G = H / Hkv, row = blockIdx.x, hq = blockIdx.y, h = hq / G, r = hq % G;
    const size_t base = ((size_t)row * Hkv + h) * n_parts;
    float m = -INFINITY;
    for (int p = 0; p < n_parts; p++)
        m = fmaxf(m, part_lse[(base + p) * G + r]);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f, wsum = 0.0f;
        for (int p = 0; p < n_parts && m != -INFINITY; p++) {
            const float w = __expf(part_lse[(base + p) * G + r] - m);
            acc += w * part_o[((base + p) * G + r) * D + d];
            wsum += w;
        }
        out[((size_t)row * H + hq) * D + d] = wsum > 0.0f ? acc / wsum : 0.0f;
    }
}

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CUDA_NAMES[PAGED_CUDA_KERNELS + 1] = {"v2", "v1", "v2"};

extern "C" const char *paged_cuda_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= PAGED_CUDA_KERNELS ? CUDA_NAMES[kernel] : NULL;
}

extern "C" int paged_attention_cuda(int kernel, const PagedCudaBatch *b, int H, float scale, int causal,
                                    const float *d_q, float *d_out)
{
    if (!paged_cuda_kernel_name(kernel))
        return error_set("--kernel %d: chapter 05 has CUDA kernels 1..%d", kernel, PAGED_CUDA_KERNELS);
    if (H < 1 || H % b->Hkv != 0)
        return error_set("H = %d is not a multiple of Hkv = %d", H, b->Hkv);
    if (b->rows == 0)
        return 0;
    const int G = H / b->Hkv, D = b->D;
    if (kernel == 1) {
        const size_t smem = ((size_t)2 * D + PG_CHUNK) * sizeof(float);
        if (smem > cuda_shared_mem_per_block())
            return error_set("paged v1: D = %d needs %zu bytes of shared memory", D, smem);
        CUDA_CHECK(cudaFuncSetAttribute((const void *)paged_kernel_v1, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        paged_kernel_v1<<<dim3((unsigned)b->rows, (unsigned)H), PG_THREADS, smem>>>(*b, H, scale, causal, d_q, d_out);
        CUDA_CHECK(cudaGetLastError());
        return 0;
    }
    const int part_keys = PG_PART_KEYS;
    const int n_parts = b->max_len > 0 ? (b->max_len + part_keys - 1) / part_keys : 1;
    const size_t smem = ((size_t)2 * G * D + (size_t)G * PG_CHUNK + 3 * (size_t)G) * sizeof(float);
    if (smem > cuda_shared_mem_per_block())
        return error_set("paged v2: G = %d, D = %d need %zu bytes of shared memory", G, D, smem);
    CUDA_CHECK(cudaFuncSetAttribute((const void *)paged_kernel_v2, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)smem));
    const size_t tasks = (size_t)b->rows * b->Hkv * n_parts;
    /* called once per layer per engine iteration: workspaces kept between calls (grow-only,
     * freed at exit), not a cudaMalloc and cudaFree per call */
    static CudaWorkspace ws_o = CUDA_WORKSPACE("paged partial outputs"), ws_lse = CUDA_WORKSPACE("paged partial lse");
    float *part_o = (float *)cuda_workspace(&ws_o, tasks * G * D * sizeof(float));            /* (tasks, G, D) */
    float *part_lse = part_o ? (float *)cuda_workspace(&ws_lse, tasks * G * sizeof(float)) : NULL; /* (tasks, G) */
    if (!part_lse)
        return -1;
    paged_kernel_v2<<<dim3((unsigned)b->rows, (unsigned)b->Hkv, (unsigned)n_parts), PG_THREADS, smem>>>(
        *b, H, scale, causal, part_keys, d_q, part_o, part_lse);
    CUDA_CHECK(cudaGetLastError());
    paged_reduce<<<dim3((unsigned)b->rows, (unsigned)H), 128>>>(part_o, part_lse, H, b->Hkv, D, n_parts, d_out);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

extern "C" int paged_attention_cuda_bhsd(int kernel, int B, int H, int Hkv, int T, int S, int D, int bs,
                                         const int *h_perm, float scale, int causal, const float *d_q,
                                         const float *d_k, const float *d_v, float *d_out)
{
    const int per_seq = (S + bs - 1) / bs, n_blocks = B * per_seq > 0 ? B * per_seq : 1;
    const size_t Dz = (size_t)D, pool_floats = (size_t)Hkv * n_blocks * bs * Dz, rows = (size_t)B * T;
    int *lens = (int *)mem_alloc((size_t)B * sizeof(int), "lengths (B)");
    int *q_start = (int *)mem_alloc((size_t)(B + 1) * sizeof(int), "query starts (B + 1)");
    int *row_seq = (int *)mem_alloc(rows * sizeof(int), "sequence of each query row (B*T)");
    if (!lens || !q_start || !row_seq) {
        mem_free(lens), mem_free(q_start), mem_free(row_seq);
        return -1;
    }
    float *pk = (float *)cuda_alloc(pool_floats * sizeof(float)); /* (Hkv, n_blocks, bs, D) */
    float *pv = (float *)cuda_alloc(pool_floats * sizeof(float));
    float *qr = (float *)cuda_alloc(rows * H * Dz * sizeof(float));   /* (B*T, H, D) */
    float *orow = (float *)cuda_alloc(rows * H * Dz * sizeof(float)); /* (B*T, H, D) */
    cuda_memset_nan(pk, pool_floats * sizeof(float));
    cuda_memset_nan(pv, pool_floats * sizeof(float));
    for (int b = 0; b < B; b++) {
        lens[b] = S, q_start[b] = b * T;
        for (int t = 0; t < T; t++)
            row_seq[(size_t)b * T + t] = b;
        for (int lb = 0; lb < per_seq; lb++) {
            const int id = h_perm[b * per_seq + lb], n_tok = S - lb * bs < bs ? S - lb * bs : bs;
            for (int h = 0; h < Hkv; h++) { /* n_tok rows of (b, h) into block id, kv head h */
                const size_t src = (((size_t)b * Hkv + h) * S + (size_t)lb * bs) * Dz;
                const size_t dst = ((size_t)h * n_blocks + id) * bs * Dz;
                CUDA_CHECK(cudaMemcpy(pk + dst, d_k + src, (size_t)n_tok * Dz * sizeof(float), cudaMemcpyDeviceToDevice));
                CUDA_CHECK(cudaMemcpy(pv + dst, d_v + src, (size_t)n_tok * Dz * sizeof(float), cudaMemcpyDeviceToDevice));
            }
        }
    }
    q_start[B] = B * T;
    for (int b = 0; b < B && T > 0; b++) /* q (B, H, T, D) -> rows (B*T, H, D): a strided copy per (b, h) */
        for (int h = 0; h < H; h++)
            CUDA_CHECK(cudaMemcpy2D(qr + ((size_t)b * T * H + h) * Dz, (size_t)H * Dz * sizeof(float),
                                    d_q + ((size_t)b * H + h) * T * Dz, Dz * sizeof(float), Dz * sizeof(float), (size_t)T,
                                    cudaMemcpyDeviceToDevice));
    int *d_tables = (int *)cuda_alloc((size_t)n_blocks * sizeof(int)), *d_lens = (int *)cuda_alloc((size_t)B * sizeof(int));
    int *d_qs = (int *)cuda_alloc((size_t)(B + 1) * sizeof(int)), *d_rs = (int *)cuda_alloc(rows * sizeof(int));
    cuda_upload(d_tables, h_perm, (size_t)n_blocks * sizeof(int));
    cuda_upload(d_lens, lens, (size_t)B * sizeof(int));
    cuda_upload(d_qs, q_start, (size_t)(B + 1) * sizeof(int));
    cuda_upload(d_rs, row_seq, rows * sizeof(int));
    PagedCudaBatch batch = {.k = pk, .v = pv, .num_blocks = n_blocks, .Hkv = Hkv, .bs = bs, .D = D,
                            .tables = d_tables, .lens = d_lens, .q_start = d_qs, .row_seq = d_rs, .n_seq = B,
                            .max_blocks = per_seq > 0 ? per_seq : 1, .rows = (int)rows, .max_len = S};
    int rc = paged_attention_cuda(kernel, &batch, H, scale, causal, qr, orow);
    for (int b = 0; b < B && rc == 0 && T > 0; b++)
        for (int h = 0; h < H; h++)
            CUDA_CHECK(cudaMemcpy2D(d_out + ((size_t)b * H + h) * T * Dz, Dz * sizeof(float),
                                    orow + ((size_t)b * T * H + h) * Dz, (size_t)H * Dz * sizeof(float), Dz * sizeof(float),
                                    (size_t)T, cudaMemcpyDeviceToDevice));
    cuda_sync();
    cuda_free(pk), cuda_free(pv), cuda_free(qr), cuda_free(orow);
    cuda_free(d_tables), cuda_free(d_lens), cuda_free(d_qs), cuda_free(d_rs);
    mem_free(lens), mem_free(q_start), mem_free(row_seq);
    return rc;
}

/* ==== timing on the device ========================================================================== */

/* x[i] = a value in [-1, 1) from i: benchmark data without a host-side copy */
__global__ void pg_fill(float *x, size_t n, unsigned salt)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ salt;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        x[i] = (float)(h & 0xffff) / 32768.0f - 1.0f;
    }
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

extern "C" double paged_time_cuda(int kernel, int B, int H, int Hkv, int L, int D, int bs, int shuffled, int repeats)
{
    const int per = (L + bs - 1) / bs, n_blocks = B * per;
    const size_t kv = kernel == 0 ? (size_t)B * Hkv * L * D : (size_t)Hkv * n_blocks * bs * D;
    float *k = (float *)cuda_try_alloc(kv * sizeof(float), "K for the benchmark");
    float *v = k ? (float *)cuda_try_alloc(kv * sizeof(float), "V for the benchmark") : NULL;
    float *q = (float *)cuda_alloc((size_t)B * H * D * sizeof(float)), *o = (float *)cuda_alloc((size_t)B * H * D * sizeof(float));
    if (!v) {
        cuda_free(k), cuda_free(q), cuda_free(o);
        return -1.0;
    }
    pg_fill<<<1024, 256>>>(k, kv, 1u), pg_fill<<<1024, 256>>>(v, kv, 2u), pg_fill<<<64, 256>>>(q, (size_t)B * H * D, 3u);
    CUDA_CHECK(cudaGetLastError());
    int *tables = (int *)mem_alloc((size_t)n_blocks * sizeof(int), "block tables (B, L / bs)");
    int *lens = (int *)mem_alloc((size_t)B * sizeof(int), "lengths (B)");
    int *qs = (int *)mem_alloc((size_t)(B + 1) * sizeof(int), "query starts (B + 1)");
    int *rs = (int *)mem_alloc((size_t)B * sizeof(int), "sequence of each query row (B)");
    float *ms = (float *)mem_alloc((size_t)(repeats + 1) * sizeof(float), "times (repeats + 1)");
    if (!tables || !lens || !qs || !rs || !ms) {
        mem_free(tables), mem_free(lens), mem_free(qs), mem_free(rs), mem_free(ms);
        cuda_free(k), cuda_free(v), cuda_free(q), cuda_free(o);
        return -1.0;
    }
    for (int i = 0; i < n_blocks; i++)
        tables[i] = i; /* in order: sequence b holds blocks b*per .. b*per+per-1 */
    if (shuffled) {
        Rng rng;
        rng_seed(&rng, 99);
        for (int i = n_blocks - 1; i > 0; i--) {
            const int j = (int)rng_below(&rng, (uint32_t)(i + 1)), t = tables[i];
            tables[i] = tables[j], tables[j] = t;
        }
    }
    for (int b = 0; b <= B; b++) {
        qs[b] = b;
        if (b < B)
            lens[b] = L, rs[b] = b;
    }
    int *d_t = (int *)cuda_alloc((size_t)n_blocks * sizeof(int)), *d_l = (int *)cuda_alloc((size_t)B * sizeof(int));
    int *d_qs = (int *)cuda_alloc((size_t)(B + 1) * sizeof(int)), *d_rs = (int *)cuda_alloc((size_t)B * sizeof(int));
    cuda_upload(d_t, tables, (size_t)n_blocks * sizeof(int)), cuda_upload(d_l, lens, (size_t)B * sizeof(int));
    cuda_upload(d_qs, qs, (size_t)(B + 1) * sizeof(int)), cuda_upload(d_rs, rs, (size_t)B * sizeof(int));
    PagedCudaBatch batch = {.k = k, .v = v, .num_blocks = n_blocks, .Hkv = Hkv, .bs = bs, .D = D, .tables = d_t,
                            .lens = d_l, .q_start = d_qs, .row_seq = d_rs, .n_seq = B, .max_blocks = per, .rows = B,
                            .max_len = L};
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    int rc = 0;
    for (int r = 0; r <= repeats && rc == 0; r++) { /* run 0 is the warm-up */
        CUDA_CHECK(cudaEventRecord(e0));
        rc = kernel == 0 ? kvcache_decode_cuda(1, k, v, B, H, Hkv, L, D, q, d_l, L, o)
                         : paged_attention_cuda(kernel, &batch, H, 1.0f / sqrtf((float)D), 1, q, o);
        CUDA_CHECK(cudaEventRecord(e1));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms[r], e0, e1));
    }
    qsort(ms + 1, (size_t)repeats, sizeof(float), cmp_float);
    const double median = rc == 0 ? ms[1 + repeats / 2] : -1.0;
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    cuda_free(k), cuda_free(v), cuda_free(q), cuda_free(o);
    cuda_free(d_t), cuda_free(d_l), cuda_free(d_qs), cuda_free(d_rs);
    mem_free(tables), mem_free(lens), mem_free(qs), mem_free(rs), mem_free(ms);
    return median;
}
