/*
 * paged.c: chapter 05 on the CPU -- the block pool, block tables, attention through the tables,
 * and the model generating through a paged cache.
 *
 * What it teaches: a block table is one indirection per block of tokens. The allocator is a
 * stack of free ids (alloc and release are O(1)) and a reference count per block (fork shares,
 * copy-on-write unshares). The attention kernels read each (block, layer, kv head) as a
 * contiguous (bs, D) matrix in place: the fast kernel scores a chunk of blocks against the
 * group's query rows with common/matmul, keeps chapter 03's online softmax across chunks, adds
 * P V block by block (matmul_nn_acc_ld), and merges partitions of the sequence with their
 * log-sum-exp. `build/bin/05_paged bench` measures it against chapter 04's contiguous cache.
 */
#include "05_paged/paged.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "03_flash/flash.h"
#include "04_kvcache/kvcache.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/vmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ==== the pool ==================================================================================== */

static unsigned next_serial = 1; /* pools get distinct serials, so a table names its pool */

int paged_pool_create(PagedPool *p, int n_layers, int n_kv_heads, int head_dim, int block_size, int num_blocks)
{
    memset(p, 0, sizeof *p);
    if (n_layers < 1 || n_kv_heads < 1 || head_dim < 1 || block_size < 1 || num_blocks < 1)
        return error_set("block pool sizes must be positive (layers %d, kv heads %d, head dim %d, block size %d, "
                         "blocks %d)",
                         n_layers, n_kv_heads, head_dim, block_size, num_blocks);
    size_t per_block = 1, elems;
    if (size_mul(&per_block, (size_t)n_layers * n_kv_heads, (size_t)block_size * head_dim) != 0 ||
        size_mul(&elems, per_block, (size_t)num_blocks) != 0 || elems > SIZE_MAX / 16) /* 16: K, V and 2 ints a block */
        return error_set("a pool of %d blocks x %d layers x %d kv heads x %d tokens x %d is too large", num_blocks,
                         n_layers, n_kv_heads, block_size, head_dim);
    /* the whole pool against the memory budget before any of it is allocated: K and V pass
     * mem_alloc's check one at a time, but the pool is their sum */
    char what[256];
    snprintf(what, sizeof what, "the block pool (K and V of %d blocks of %d tokens, %d layers x %d kv heads x head dim %d)",
             num_blocks, block_size, n_layers, n_kv_heads, head_dim);
    if (mem_check(2 * elems * sizeof(float) + 2 * (size_t)num_blocks * sizeof(int), what) != 0)
        return -1;
    p->n_layers = n_layers, p->n_kv_heads = n_kv_heads, p->head_dim = head_dim;
    p->block_size = block_size, p->num_blocks = num_blocks;
    p->serial = next_serial++;
    p->k = mem_alloc(elems * sizeof(float), "the K pool (L, Hkv, num_blocks, bs, D)");
    p->v = p->k ? mem_alloc(elems * sizeof(float), "the V pool (L, Hkv, num_blocks, bs, D)") : NULL;
    p->ref = p->v ? mem_alloc((size_t)num_blocks * sizeof(int), "block reference counts") : NULL;
    p->free_ids = p->ref ? mem_alloc((size_t)num_blocks * sizeof(int), "the free list") : NULL;
    if (!p->free_ids) {
        paged_pool_free(p);
        return -1;
    }
    memset(p->ref, 0, (size_t)num_blocks * sizeof(int));
    /* the stack pops from the top: push the ids in reverse so that block 0 comes out first */
    for (int i = 0; i < num_blocks; i++)
        p->free_ids[i] = num_blocks - 1 - i;
    p->n_free = num_blocks;
    return 0;
}

void paged_pool_free(PagedPool *p)
{
    mem_free(p->k), mem_free(p->v), mem_free(p->ref), mem_free(p->free_ids);
    memset(p, 0, sizeof *p);
}

void paged_pool_shuffle(PagedPool *p, uint64_t seed)
{
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = p->n_free - 1; i > 0; i--) { /* Fisher-Yates */
        const int j = (int)rng_below(&rng, (uint32_t)(i + 1)), t = p->free_ids[i];
        p->free_ids[i] = p->free_ids[j], p->free_ids[j] = t;
    }
}

size_t paged_block_bytes(const PagedPool *p)
{
    return 2 * (size_t)p->n_layers * p->n_kv_heads * p->block_size * p->head_dim * sizeof(float);
}

int paged_block_alloc(PagedPool *p)
{
    if (p->n_free == 0) {
        error_set("the block pool is exhausted: all %d blocks of %d tokens are in use", p->num_blocks, p->block_size);
        return PAGED_EXHAUSTED;
    }
    const int id = p->free_ids[--p->n_free];
    p->ref[id] = 1;
    p->n_allocs++;
    const int used = paged_pool_used(p);
    p->peak_used = used > p->peak_used ? used : p->peak_used;
    return id;
}

int paged_block_release(PagedPool *p, int id)
{
    if (id < 0 || id >= p->num_blocks)
        return error_set("release of block %d: the pool's ids are 0..%d", id, p->num_blocks - 1);
    if (p->ref[id] <= 0)
        return error_set("release of block %d, which is already free (double free)", id);
    if (--p->ref[id] == 0)
        p->free_ids[p->n_free++] = id;
    p->n_releases++;
    return 0;
}

/* ==== sequences ==================================================================================== */

void paged_seq_init(PagedSeq *s) { memset(s, 0, sizeof *s); }

static int check_owner(const PagedPool *p, const PagedSeq *s)
{
    if (s->pool != 0 && s->pool != p->serial)
        return error_set("a block table of pool #%u used with pool #%u (foreign block ids)", s->pool, p->serial);
    return 0;
}

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

int paged_seq_blocks_needed(const PagedPool *p, const PagedSeq *s, int n)
{
    const int bs = p->block_size, fresh = ceil_div(s->len + n, bs) - s->n_blocks;
    /* the first write into a partly filled last block that another table shares copies it */
    const int cow = n > 0 && s->len % bs != 0 && p->ref[s->blocks[s->n_blocks - 1]] > 1;
    return fresh + cow;
}

/* Copies the filled rows of block `from` into block `to`, every layer and kv head. */
static void copy_block_rows(PagedPool *p, int from, int to, int rows)
{
    const size_t n = (size_t)rows * p->head_dim * sizeof(float);
    for (int l = 0; l < p->n_layers; l++)
        for (int h = 0; h < p->n_kv_heads; h++) {
            memcpy(paged_k_block(p, to, l, h), paged_k_block(p, from, l, h), n);
            memcpy(paged_v_block(p, to, l, h), paged_v_block(p, from, l, h), n);
        }
}

int paged_seq_append(PagedPool *p, PagedSeq *s, int n)
{
    if (check_owner(p, s) != 0)
        return -1;
    if (n < 0)
        return error_set("append of %d tokens", n);
    const int bs = p->block_size, need = paged_seq_blocks_needed(p, s, n);
    if (need > p->n_free) { /* check first, so that a failure changes nothing */
        error_set("the block pool is exhausted: %d more blocks of %d tokens needed, %d of %d free", need, bs, p->n_free,
                  p->num_blocks);
        return PAGED_EXHAUSTED;
    }
    const int n_total = ceil_div(s->len + n, bs);
    if (n_total > s->cap) {
        int cap = s->cap ? s->cap : 4;
        while (cap < n_total)
            cap *= 2;
        int *grown = mem_alloc((size_t)cap * sizeof(int), "block table");
        if (!grown)
            return -1;
        if (s->n_blocks)
            memcpy(grown, s->blocks, (size_t)s->n_blocks * sizeof(int));
        mem_free(s->blocks);
        s->blocks = grown, s->cap = cap;
    }
    s->pool = p->serial;
    if (n > 0 && s->len % bs != 0 && p->ref[s->blocks[s->n_blocks - 1]] > 1) { /* copy-on-write */
        const int old = s->blocks[s->n_blocks - 1], fresh = paged_block_alloc(p);
        copy_block_rows(p, old, fresh, s->len % bs);
        paged_block_release(p, old); /* others still hold it: only the count drops */
        s->blocks[s->n_blocks - 1] = fresh;
        p->n_cow_copies++;
    }
    while (s->n_blocks < n_total)
        s->blocks[s->n_blocks++] = paged_block_alloc(p);
    s->len += n;
    return 0;
}

int paged_seq_truncate(PagedPool *p, PagedSeq *s, int len)
{
    if (check_owner(p, s) != 0)
        return -1;
    if (len < 0 || len > s->len)
        return error_set("truncate to %d tokens: the sequence holds %d", len, s->len);
    const int keep = ceil_div(len, p->block_size);
    while (s->n_blocks > keep)
        if (paged_block_release(p, s->blocks[--s->n_blocks]) != 0)
            return -1;
    s->len = len;
    return 0;
}

int paged_seq_free(PagedPool *p, PagedSeq *s)
{
    if (paged_seq_truncate(p, s, 0) != 0)
        return -1;
    mem_free(s->blocks);
    paged_seq_init(s);
    return 0;
}

int paged_seq_fork(PagedPool *p, const PagedSeq *src, PagedSeq *dst)
{
    if (check_owner(p, src) != 0)
        return -1;
    if (dst->n_blocks != 0 || dst->len != 0)
        return error_set("fork into a sequence that already holds %d tokens", dst->len);
    for (int i = 0; i < src->n_blocks; i++) {
        const int id = src->blocks[i];
        if (id < 0 || id >= p->num_blocks || p->ref[id] <= 0)
            return error_set("fork: block %d of the source table is not an allocated block", id);
    }
    mem_free(dst->blocks);
    paged_seq_init(dst);
    if (src->n_blocks > 0) {
        dst->blocks = mem_alloc((size_t)src->n_blocks * sizeof(int), "block table");
        if (!dst->blocks)
            return -1;
        memcpy(dst->blocks, src->blocks, (size_t)src->n_blocks * sizeof(int));
        for (int i = 0; i < src->n_blocks; i++)
            p->ref[src->blocks[i]]++; /* shared now: nothing is copied until someone writes */
    }
    dst->pool = p->serial, dst->len = src->len, dst->n_blocks = dst->cap = src->n_blocks;
    return 0;
}

void paged_write(PagedPool *p, const PagedSeq *s, int layer, int pos, int n, const float *k, const float *v)
{
    const int Hkv = p->n_kv_heads, D = p->head_dim, bs = p->block_size;
    for (int t = 0; t < n; t++) {
        const int j = pos + t, id = s->blocks[j / bs];
        for (int h = 0; h < Hkv; h++) {
            memcpy(paged_k_block(p, id, layer, h) + (size_t)(j % bs) * D, k + ((size_t)t * Hkv + h) * D,
                   (size_t)D * sizeof(float));
            memcpy(paged_v_block(p, id, layer, h) + (size_t)(j % bs) * D, v + ((size_t)t * Hkv + h) * D,
                   (size_t)D * sizeof(float));
        }
    }
}

void paged_gather(const PagedPool *p, const PagedSeq *s, int layer, int len, float *k_out, float *v_out)
{
    const int D = p->head_dim, bs = p->block_size;
    for (int h = 0; h < p->n_kv_heads; h++)
        for (int j = 0; j < len; j++) {
            const int id = s->blocks[j / bs];
            memcpy(k_out + ((size_t)h * len + j) * D, paged_k_block(p, id, layer, h) + (size_t)(j % bs) * D,
                   (size_t)D * sizeof(float));
            memcpy(v_out + ((size_t)h * len + j) * D, paged_v_block(p, id, layer, h) + (size_t)(j % bs) * D,
                   (size_t)D * sizeof(float));
        }
}

int paged_check(const PagedPool *p, PagedSeq *const *seqs, int n_seqs)
{
    const int N = p->num_blocks;
    if (p->n_free < 0 || p->n_free > N)
        return error_set("free count %d outside 0..%d", p->n_free, N);
    int *holders = mem_alloc((size_t)N * sizeof(int) + 1, "holders"), *on_stack = mem_alloc((size_t)N * sizeof(int) + 1, "on stack");
    int rc = !holders || !on_stack ? -1 : 0;
    if (rc == 0)
        memset(holders, 0, (size_t)N * sizeof(int)), memset(on_stack, 0, (size_t)N * sizeof(int));
    for (int i = 0; i < n_seqs && rc == 0; i++) {
        const PagedSeq *s = seqs[i];
        if (s->n_blocks != ceil_div(s->len, p->block_size))
            rc = error_set("table %d: %d blocks for %d tokens of block size %d", i, s->n_blocks, s->len, p->block_size);
        else if (s->n_blocks > 0 && s->pool != p->serial)
            rc = error_set("table %d belongs to pool #%u, not #%u", i, s->pool, p->serial);
        for (int b = 0; b < s->n_blocks && rc == 0; b++) {
            const int id = s->blocks[b];
            if (id < 0 || id >= N)
                rc = error_set("table %d, logical block %d: id %d outside 0..%d", i, b, id, N - 1);
            else
                holders[id]++;
        }
    }
    for (int f = 0; f < p->n_free && rc == 0; f++) {
        const int id = p->free_ids[f];
        if (id < 0 || id >= N || on_stack[id]++)
            rc = error_set("free list entry %d: id %d is invalid or listed twice", f, id);
    }
    int used = 0;
    for (int id = 0; id < N && rc == 0; id++) {
        if (p->ref[id] < 0)
            rc = error_set("block %d has a negative reference count %d", id, p->ref[id]);
        else if (p->ref[id] != holders[id])
            rc = error_set("block %d: reference count %d but %d tables hold it", id, p->ref[id], holders[id]);
        else if ((p->ref[id] == 0) != (on_stack[id] == 1))
            rc = error_set("block %d: reference count %d but %s the free list", id, p->ref[id],
                           on_stack[id] ? "on" : "not on");
        used += p->ref[id] > 0;
    }
    if (rc == 0 && used + p->n_free != N)
        rc = error_set("%d used + %d free != %d blocks", used, p->n_free, N);
    mem_free(holders), mem_free(on_stack);
    return rc;
}

/* ==== attention through the tables ================================================================== */

static int check_batch(const PagedPool *p, int H, int n_seq, PagedSeq *const *seqs, const int *q_start)
{
    if (H < 1 || H % p->n_kv_heads != 0)
        return error_set("H = %d query heads is not a multiple of the pool's %d kv heads", H, p->n_kv_heads);
    if (n_seq < 0 || (n_seq > 0 && q_start[0] != 0))
        return error_set("the batch's query rows must start at row 0");
    for (int i = 0; i < n_seq; i++) {
        if (check_owner(p, seqs[i]) != 0)
            return -1;
        if (q_start[i + 1] < q_start[i])
            return error_set("sequence %d: query rows %d..%d run backwards", i, q_start[i], q_start[i + 1]);
        if (seqs[i]->n_blocks != ceil_div(seqs[i]->len, p->block_size))
            return error_set("sequence %d: its table has %d blocks for %d tokens", i, seqs[i]->n_blocks, seqs[i]->len);
    }
    return 0;
}

/* The last key position (exclusive) query t of T sees in a sequence of len tokens. */
static int visible_end(int len, int T, int t, int causal)
{
    if (!causal)
        return len;
    const int end = len - T + t + 1;
    return end < 0 ? 0 : end;
}

int paged_attention_ref(const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                        PagedSeq *const *seqs, const int *q_start, const float *q, float *out)
{
    if (check_batch(p, H, n_seq, seqs, q_start) != 0)
        return -1;
    const int D = p->head_dim, G = H / p->n_kv_heads, bs = p->block_size;
    int max_len = 1;
    for (int i = 0; i < n_seq; i++)
        max_len = seqs[i]->len > max_len ? seqs[i]->len : max_len;
    float *sc = mem_alloc((size_t)max_len * sizeof(float), "scores of one row");
    if (!sc)
        return -1;
    for (int i = 0; i < n_seq; i++) {
        const PagedSeq *s = seqs[i];
        const int T = q_start[i + 1] - q_start[i];
        for (int t = 0; t < T; t++)
            for (int hq = 0; hq < H; hq++) {
                const size_t row = ((size_t)(q_start[i] + t) * H + hq) * D;
                const float *qr = q + row;
                float *o = out + row;
                const int n = visible_end(s->len, T, t, causal);
                /* scores against every visible key, found through the table */
                float m = -INFINITY, sum = 0.0f;
                for (int j = 0; j < n; j++) {
                    /* EXERCISE 05 BEGIN: key j through the block table: logical block j / bs is physical block s->blocks[j / bs], and the key is row j % bs of it (paged_k_block gives the block's (bs, D) rows) */
                    const float *kr = paged_k_block(p, s->blocks[j / bs], layer, hq / G) + (size_t)(j % bs) * D;
                    /* EXERCISE 05 STUB:
                    exercise_todo("exercise 05, the block-table lookup of paged_attention_ref in 05_paged/paged.c");
                    const float *kr = paged_k_block(p, j / bs, layer, hq / G) + (size_t)(j % bs) * D;
                       EXERCISE 05 END */
                    float dot = 0.0f;
                    for (int d = 0; d < D; d++)
                        dot += qr[d] * kr[d];
                    sc[j] = dot * scale;
                    m = sc[j] > m ? sc[j] : m;
                }
                for (int j = 0; j < n; j++) {
                    sc[j] = expf(sc[j] - m);
                    sum += sc[j];
                }
                for (int d = 0; d < D; d++)
                    o[d] = 0.0f;
                for (int j = 0; j < n; j++) { /* out = sum_j p_j v_j */
                    const float *vr = paged_v_block(p, s->blocks[j / bs], layer, hq / G) + (size_t)(j % bs) * D;
                    for (int d = 0; d < D; d++)
                        o[d] += sc[j] / sum * vr[d];
                }
            }
    }
    mem_free(sc);
    return 0;
}

#define TILE_ROWS 48    /* query rows (positions x the group's G heads) per task, at most */
#define CHUNK_KEYS 1024 /* keys per step of the online softmax, rounded to whole blocks: long
                         * enough that K and V are read in long runs, one after the other */

/* One (sequence, kv head, query tile) and its partitions: the tasks of the fast kernel. */
typedef struct {
    int seq, h, t0, tq;  /* query positions t0 .. t0+tq-1 of the sequence's T */
    int n_parts;
    size_t o_off, l_off; /* its partial outputs (n_parts, tq*G, D) and lse (n_parts, tq*G) */
} PagedGroup;

typedef struct {
    size_t group;
    int part; /* partition pi covers blocks pi * part_blocks .. (pi + 1) * part_blocks - 1 */
} PagedTask;

typedef struct {
    float *qt;    /* (R, D) the tile's query rows, pre-scaled */
    float *sc;    /* (R, chunk) scores, then probabilities */
    float *m, *l; /* (R) */
} PagedScratch;

/* Query rows of a group (tq positions x G heads) against the blocks [b0, b1) of its sequence:
 * the normalised partial output o (R, D) and its log-sum-exp lse (R). */
static void paged_task(const PagedPool *p, const PagedScratch *w, int layer, const PagedSeq *s, int T, int causal,
                       const PagedGroup *g, int G, int b0, int b1, int chunk_blocks, float *o, float *lse)
{
    const int bs = p->block_size, R = g->tq * G;
    const size_t D = (size_t)p->head_dim, CH = (size_t)chunk_blocks * bs;
    for (int r = 0; r < R; r++)
        w->m[r] = -INFINITY, w->l[r] = 0.0f;
    memset(o, 0, (size_t)R * D * sizeof(float));
    /* keys beyond what the tile's last query sees are skipped */
    int k_end = visible_end(s->len, T, g->t0 + g->tq - 1, causal);
    k_end = k_end < b1 * bs ? k_end : b1 * bs;
    for (int c0 = b0 * bs; c0 < k_end; c0 += (int)CH) {
        const int ch = k_end - c0 < (int)CH ? k_end - c0 : (int)CH;
        for (int j = 0; j < ch; j += bs) { /* scores (R, ch), one block at a time, K read in place */
            const int nk = ch - j < bs ? ch - j : bs, lb = (c0 + j) / bs;
            const float *kb = paged_k_block(p, s->blocks[lb], layer, g->h);
            matmul_nt_rows_ld(w->sc + j, CH, w->qt, D, kb, D, (size_t)R, (size_t)nk, D); /* batch-invariant */
        }
        for (int r = 0; r < R; r++) { /* chapter 03's online softmax, row by row */
            float *sr = w->sc + (size_t)r * CH;
            int live = visible_end(s->len, T, g->t0 + r / G, causal) - c0; /* a prefix of the chunk */
            live = live < 0 ? 0 : live > ch ? ch : live;
            if (live == 0) { /* this row sees none of these keys */
                memset(sr, 0, (size_t)ch * sizeof(float));
                continue;
            }
            float mt = -INFINITY;
#pragma omp simd reduction(max : mt)
            for (int j = 0; j < live; j++)
                mt = sr[j] > mt ? sr[j] : mt;
            const float m_new = w->m[r] > mt ? w->m[r] : mt, alpha = expf(w->m[r] - m_new);
            w->l[r] = w->l[r] * alpha + vexp_scaled_sum(sr, (size_t)live, 1.0f, m_new);
            w->m[r] = m_new;
            if (live < ch)
                memset(sr + live, 0, (size_t)(ch - live) * sizeof(float));
            float *orow = o + (size_t)r * D;
#pragma omp simd
            for (size_t d = 0; d < D; d++)
                orow[d] *= alpha;
        }
        for (int j = 0; j < ch; j += bs) { /* o += P V, one block at a time, V read in place */
            const int nk = ch - j < bs ? ch - j : bs;
            const float *vb = paged_v_block(p, s->blocks[(c0 + j) / bs], layer, g->h);
            matmul_nn_acc_ld(o, D, w->sc + j, CH, vb, D, (size_t)R, D, (size_t)nk);
        }
    }
    for (int r = 0; r < R; r++) {
        const float inv = w->l[r] > 0.0f ? 1.0f / w->l[r] : 0.0f;
        for (size_t d = 0; d < D; d++)
            o[(size_t)r * D + d] *= inv;
        lse[r] = w->l[r] > 0.0f ? w->m[r] + logf(w->l[r]) : -INFINITY;
    }
}

int paged_attention_fast(const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                         PagedSeq *const *seqs, const int *q_start, const float *q, float *out)
{
    if (check_batch(p, H, n_seq, seqs, q_start) != 0)
        return -1;
    const int Hkv = p->n_kv_heads, G = H / Hkv, bs = p->block_size;
    const size_t D = (size_t)p->head_dim;
    const int tq_max = TILE_ROWS / G > 1 ? TILE_ROWS / G : 1;
    const int part_blocks = ceil_div(PAGED_PARTITION_KEYS, bs), chunk_blocks = CHUNK_KEYS / bs > 1 ? CHUNK_KEYS / bs : 1;
    /* the groups, and where their partial results go */
    size_t n_groups = 0, n_tasks = 0, o_total = 0, l_total = 0;
    for (int i = 0; i < n_seq; i++)
        n_groups += (size_t)Hkv * ceil_div(q_start[i + 1] - q_start[i], tq_max);
    PagedGroup *groups = mem_alloc(n_groups * sizeof(PagedGroup) + 1, "attention groups");
    if (!groups)
        return -1;
    size_t gi = 0;
    for (int i = 0; i < n_seq; i++) {
        const int T = q_start[i + 1] - q_start[i], n_parts = seqs[i]->n_blocks > 0 ? ceil_div(seqs[i]->n_blocks, part_blocks) : 1;
        for (int h = 0; h < Hkv; h++)
            for (int t0 = 0; t0 < T; t0 += tq_max) {
                const int tq = T - t0 < tq_max ? T - t0 : tq_max;
                groups[gi++] = (PagedGroup){i, h, t0, tq, n_parts, o_total, l_total};
                o_total += (size_t)n_parts * tq * G * D, l_total += (size_t)n_parts * tq * G;
                n_tasks += (size_t)n_parts;
            }
    }
    /* task t -> (group, partition) */
    PagedTask *tasks = mem_alloc(n_tasks * sizeof(PagedTask) + 1, "task list");
    float *part_o = tasks ? mem_alloc(o_total * sizeof(float) + 1, "partial outputs") : NULL;
    float *part_l = part_o ? mem_alloc(l_total * sizeof(float) + 1, "partial lse") : NULL;
    if (!part_l) {
        mem_free(groups), mem_free(tasks), mem_free(part_o);
        return -1;
    }
    for (size_t g = 0, t = 0; g < n_groups; g++)
        for (int part = 0; part < groups[g].n_parts; part++)
            tasks[t++] = (PagedTask){g, part};
    int failed = 0;
#pragma omp parallel
    {
        const size_t R = (size_t)tq_max * G, CH = (size_t)chunk_blocks * bs;
        PagedScratch w = {mem_alloc(R * D * sizeof(float), "query tile"), mem_alloc(R * CH * sizeof(float), "scores"),
                          mem_alloc(R * sizeof(float), "m"), mem_alloc(R * sizeof(float), "l")};
        const int ok = w.qt && w.sc && w.m && w.l;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (size_t t = 0; t < n_tasks; t++) {
            const PagedGroup *g = &groups[tasks[t].group];
            const int pi = tasks[t].part, rows = g->tq * G;
            if (!ok)
                continue;
            const PagedSeq *s = seqs[g->seq];
            const int T = q_start[g->seq + 1] - q_start[g->seq];
            for (int tt = 0; tt < g->tq; tt++) /* gather the tile: (position, head of the group) rows */
                for (int gg = 0; gg < G; gg++) {
                    const float *src = q + ((size_t)(q_start[g->seq] + g->t0 + tt) * H + (size_t)g->h * G + gg) * D;
                    float *dst = w.qt + ((size_t)tt * G + gg) * D;
                    for (size_t d = 0; d < D; d++)
                        dst[d] = src[d] * scale;
                }
            const int b0 = pi * part_blocks, b1 = b0 + part_blocks < s->n_blocks ? b0 + part_blocks : s->n_blocks;
            paged_task(p, &w, layer, s, T, causal, g, G, b0, b1, chunk_blocks,
                       part_o + g->o_off + (size_t)pi * rows * D, part_l + g->l_off + (size_t)pi * rows);
        }
        mem_free(w.qt), mem_free(w.sc), mem_free(w.m), mem_free(w.l);
    }
    /* fold each group's partitions into the first with their log-sum-exp, then scatter the rows */
    for (size_t g = 0; g < n_groups && !failed; g++) {
        const PagedGroup *gr = &groups[g];
        const size_t rows = (size_t)gr->tq * G;
        float *o0 = part_o + gr->o_off, *l0 = part_l + gr->l_off;
        for (int part = 1; part < gr->n_parts; part++)
            flash_merge(o0, l0, o0 + part * rows * D, l0 + part * rows, rows, (int)D);
        for (int tt = 0; tt < gr->tq; tt++)
            memcpy(out + ((size_t)(q_start[gr->seq] + gr->t0 + tt) * H + (size_t)gr->h * G) * D, o0 + (size_t)tt * G * D,
                   (size_t)G * D * sizeof(float));
    }
    mem_free(groups), mem_free(tasks), mem_free(part_o), mem_free(part_l);
    return failed ? error_set("out of memory for the attention scratch") : 0;
}

int paged_attention_cpu(int kernel, const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                        PagedSeq *const *seqs, const int *q_start, const float *q, float *out)
{
    switch (kernel) {
    case 1:
        return paged_attention_ref(p, layer, H, scale, causal, n_seq, seqs, q_start, q, out);
    case 0:
    case 2:
        return paged_attention_fast(p, layer, H, scale, causal, n_seq, seqs, q_start, q, out);
    default:
        return error_set("--kernel %d: chapter 05 has CPU kernels 1..%d", kernel, PAGED_CPU_KERNELS);
    }
}

const char *paged_cpu_kernel_name(int kernel)
{
    switch (kernel) {
    case 1:
        return "ref";
    case 0:
    case 2:
        return "fast";
    default:
        return NULL;
    }
}

/* ==== the model through a paged cache ================================================================ */

typedef struct {
    PagedPool *p;
    PagedSeq *s;
    int pos0, H, kernel;
} PagedLayerCtx;

static int paged_layer_attention(void *ctx, int layer, int n, const float *q, const float *k, const float *v,
                                 float *att)
{
    PagedLayerCtx *a = ctx;
    paged_write(a->p, a->s, layer, a->pos0, n, k, v); /* positions pos0 .. pos0+n-1, already appended */
    PagedSeq *seqs[1] = {a->s};
    const int q_start[2] = {0, n};
    return paged_attention_cpu(a->kernel, a->p, layer, a->H, 1.0f / sqrtf((float)a->p->head_dim), 1, 1, seqs, q_start,
                               q, att);
}

int paged_forward(const Model *m, PagedPool *p, PagedSeq *s, const int *tokens, int n, int kernel, float *logits)
{
    const ModelConfig *mc = &m->c;
    if (p->n_layers != mc->n_layers || p->n_kv_heads != mc->n_kv_heads || p->head_dim != model_head_size(mc))
        return error_set("the block pool's shape does not match the model");
    const int pos0 = s->len;
    if (n < 1 || pos0 + n > mc->seq_len)
        return error_set("positions %d..%d do not fit the model's seq_len %d", pos0, pos0 + n - 1, mc->seq_len);
    int rc = paged_seq_append(p, s, n);
    if (rc != 0)
        return rc; /* PAGED_EXHAUSTED: the caller decides (chapter 06 preempts) */
    int *pos = mem_alloc((size_t)n * sizeof(int), "positions");
    rc = pos ? 0 : -1;
    for (int i = 0; i < n && rc == 0; i++)
        pos[i] = pos0 + i;
    PagedLayerCtx a = {p, s, pos0, mc->n_heads, kernel};
    const int last = n - 1;
    if (rc == 0)
        rc = model_forward(m, n, tokens, pos, paged_layer_attention, &a, 1, &last, logits);
    mem_free(pos);
    if (rc != 0)
        paged_seq_truncate(p, s, pos0); /* give the new slots back */
    return rc;
}

int paged_blocks_for_request(int n_prompt, int max_new, int n_samples, int block_size)
{
    /* the cache holds the prompt and every generated token but the last (never fed back) */
    const long longest = (long)n_prompt + (max_new > 0 ? max_new - 1 : 0);
    const long shared = n_prompt / block_size, per_sample = (longest + block_size - 1) / block_size - shared;
    if (longest == n_prompt) /* nothing is written after the fork: the prompt's blocks suffice */
        return (int)(((long)n_prompt + block_size - 1) / block_size);
    const long total = shared + (long)n_samples * per_sample;
    return total > 0x7fffffffL ? 0x7fffffff : (int)total;
}

int paged_generate(const Model *m, const int *prompt, int n_prompt, const PagedGenOptions *o, int *out,
                   PagedGenStats *stats)
{
    if (kvcache_check_request(&m->c, prompt, n_prompt, o->max_new) != 0)
        return -1;
    if (o->n_samples < 1 || o->block_size < 1)
        return error_set("--n-samples (%d) and --block-size (%d) must be at least 1", o->n_samples, o->block_size);
    const int need = paged_blocks_for_request(n_prompt, o->max_new, o->n_samples, o->block_size);
    const int num_blocks = o->num_blocks > 0 ? o->num_blocks : need;
    if (need > num_blocks)
        return error_set("the request needs %d blocks of %d tokens (%d prompt + %d new tokens, %d samples) but the "
                         "pool has %d: it can never fit",
                         need, o->block_size, n_prompt, o->max_new, o->n_samples, num_blocks);
    const int K = o->n_samples, V = m->c.vocab_size;
    PagedPool p;
    if (paged_pool_create(&p, m->c.n_layers, m->c.n_kv_heads, model_head_size(&m->c), o->block_size, num_blocks) != 0)
        return -1;
    if (o->shuffle)
        paged_pool_shuffle(&p, o->shuffle);
    PagedSeq *seqs = mem_alloc((size_t)K * sizeof(PagedSeq), "sequences");
    float *first = mem_alloc((size_t)V * sizeof(float), "prefill logits"), *logits = mem_alloc((size_t)V * sizeof(float), "logits");
    Rng *rngs = mem_alloc((size_t)K * sizeof(Rng), "generators");
    int rc = !seqs || !first || !logits || !rngs ? -1 : 0;
    for (int i = 0; i < K && rc == 0; i++) {
        paged_seq_init(&seqs[i]);
        model_rng_seed(&rngs[i], o->seed + (uint64_t)i);
    }
    /* the prompt once; every other sample forks it and shares its blocks */
    if (rc == 0 && o->max_new > 0)
        rc = paged_forward(m, &p, &seqs[0], prompt, n_prompt, o->kernel, first);
    for (int i = 1; i < K && rc == 0 && o->max_new > 0; i++)
        rc = paged_seq_fork(&p, &seqs[0], &seqs[i]);
    for (int step = 0; step < o->max_new && rc == 0; step++)
        for (int i = 0; i < K && rc == 0; i++) {
            int *toks = out + (size_t)i * o->max_new;
            if (step > 0 && toks[step - 1] < 0) { /* this sample stopped */
                toks[step] = -1;
                continue;
            }
            if (step == 0)
                memcpy(logits, first, (size_t)V * sizeof(float));
            else
                rc = paged_forward(m, &p, &seqs[i], &toks[step - 1], 1, o->kernel, logits);
            if (rc == 0 && (toks[step] = model_sample(logits, V, o->temperature, &rngs[i])) < 0)
                rc = -1; /* the logits overflowed (error recorded) */
            if (rc == 0 && o->stop_at_bos_eos && (toks[step] == 1 || toks[step] == 2)) {
                toks[step] = -1; /* BOS or EOS: the text is over; its blocks go back */
                paged_seq_free(&p, &seqs[i]);
            }
        }
    if (stats)
        *stats = (PagedGenStats){p.peak_used, p.num_blocks, p.n_cow_copies, paged_block_bytes(&p)};
    for (int i = 0; i < K && seqs; i++)
        paged_seq_free(&p, &seqs[i]);
    mem_free(seqs), mem_free(first), mem_free(logits), mem_free(rngs);
    paged_pool_free(&p);
    return rc;
}
