/*
 * pool.c: chapter 05's block allocator -- the pool of KV blocks, the block tables that draw from
 * it, and the invariant check that proves the two agree.
 *
 * What it teaches: a block table is one indirection per block of tokens. The pool hands out
 * block ids from a stack of free ids (alloc and release are O(1)) and keeps a reference count
 * per block: fork shares a table's blocks (+1 each, nothing copied), and the first write into a
 * shared, partly filled last block copies it (copy-on-write). With prefix caching (prefix.c) a
 * released block that holds a name goes to a list of cached blocks instead of the stack, and an
 * allocation that finds the stack empty evicts the least recently used of them. paged_check
 * recounts everything from the tables and names the first invariant that does not hold; the tests
 * run it after each of 10^5 random operations.
 */
#include "05_paged/paged.h"

#include <stdio.h>
#include <string.h>

#include "05_paged/prefix_internal.h"
#include "common/error.h"
#include "common/rng.h"
#include "common/tensor.h"

/* ==== the pool ==================================================================================== */

static unsigned next_serial = 1; /* pools get distinct serials, so a table names its pool */

int paged_pool_create(PagedPool *p, int n_layers, int n_kv_heads, int D, int block_size, int num_blocks)
{
    memset(p, 0, sizeof *p);
    if (n_layers < 1 || n_kv_heads < 1 || D < 1 || block_size < 1 || num_blocks < 1)
        return error_set("block pool sizes must be positive (layers %d, kv heads %d, head dim %d, block size %d, "
                         "blocks %d)",
                         n_layers, n_kv_heads, D, block_size, num_blocks);
    size_t per_block = 1, elems;
    if (size_mul(&per_block, (size_t)n_layers * n_kv_heads, (size_t)block_size * D) != 0 ||
        size_mul(&elems, per_block, (size_t)num_blocks) != 0 || elems > SIZE_MAX / 16) /* 16: K, V and 2 ints a block */
        return error_set("a pool of %d blocks x %d layers x %d kv heads x %d tokens x %d is too large", num_blocks,
                         n_layers, n_kv_heads, block_size, D);
    /* the whole pool against the memory budget before any of it is allocated: K and V pass
     * mem_alloc's check one at a time, but the pool is their sum */
    char what[256];
    snprintf(what, sizeof what, "the block pool (K and V of %d blocks of %d tokens, %d layers x %d kv heads x head dim %d)",
             num_blocks, block_size, n_layers, n_kv_heads, D);
    if (mem_check(2 * elems * sizeof(float) + 2 * (size_t)num_blocks * sizeof(int), what) != 0)
        return -1;
    p->n_layers = n_layers, p->n_kv_heads = n_kv_heads, p->D = D;
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
    paged_prefix_free(p);
    mem_free(p->k), mem_free(p->v), mem_free(p->ref), mem_free(p->free_ids);
    memset(p, 0, sizeof *p);
}

void paged_pool_shuffle(PagedPool *p, uint64_t seed)
{
    Rng rng;
    rng_seed(&rng, seed);
    for (int i = p->n_free - p->n_cached - 1; i > 0; i--) { /* Fisher-Yates, over the empty blocks */
        const int j = (int)rng_below(&rng, (uint32_t)(i + 1)), t = p->free_ids[i];
        p->free_ids[i] = p->free_ids[j], p->free_ids[j] = t;
    }
}

size_t paged_block_bytes(const PagedPool *p)
{
    return 2 * (size_t)p->n_layers * p->n_kv_heads * p->block_size * p->D * sizeof(float);
}

int paged_block_alloc(PagedPool *p)
{
    if (p->n_free == 0) {
        error_set("the block pool is exhausted: all %d blocks of %d tokens are in use", p->num_blocks, p->block_size);
        return PAGED_EXHAUSTED;
    }
    /* an empty block first; with prefix caching, else the least recently used cached one */
    const int n_empty = p->n_free - p->n_cached, id = n_empty > 0 ? p->free_ids[n_empty - 1] : paged_prefix_evict(p);
    p->n_free--;
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
    if (--p->ref[id] == 0) {
        if (!paged_prefix_cache(p, id)) /* a named block stays cached; others go back on the stack */
            p->free_ids[p->n_free - p->n_cached] = id;
        p->n_free++;
    }
    p->n_releases++;
    return 0;
}

/* ==== sequences ==================================================================================== */

void paged_seq_init(PagedSeq *s) { memset(s, 0, sizeof *s); }

int paged_seq_check_pool(const PagedPool *p, const PagedSeq *s)
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
    const size_t n = (size_t)rows * p->D * sizeof(float);
    for (int l = 0; l < p->n_layers; l++)
        for (int h = 0; h < p->n_kv_heads; h++) {
            memcpy(paged_k_block(p, to, l, h), paged_k_block(p, from, l, h), n);
            memcpy(paged_v_block(p, to, l, h), paged_v_block(p, from, l, h), n);
        }
}

int paged_seq_reserve(PagedPool *p, PagedSeq *s, int n_total)
{
    const int names = p->prefix != NULL;
    if (n_total <= s->cap && (!names || s->names || s->cap == 0))
        return 0;
    int cap = s->cap ? s->cap : 4;
    while (cap < n_total)
        cap *= 2;
    int *grown = mem_alloc((size_t)cap * sizeof(int), "block table");
    PagedName *grown_names = grown && names ? mem_alloc((size_t)cap * sizeof(PagedName), "block names") : NULL;
    if (!grown || (names && !grown_names)) {
        mem_free(grown);
        return -1;
    }
    if (s->n_blocks)
        memcpy(grown, s->blocks, (size_t)s->n_blocks * sizeof(int));
    if (s->n_named && s->names && grown_names)
        memcpy(grown_names, s->names, (size_t)s->n_named * sizeof(PagedName));
    mem_free(s->blocks), mem_free(s->names);
    s->blocks = grown, s->names = grown_names, s->cap = cap;
    if (!grown_names)
        s->n_named = 0;
    return 0;
}

int paged_seq_append(PagedPool *p, PagedSeq *s, int n)
{
    if (paged_seq_check_pool(p, s) != 0)
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
    if (paged_seq_reserve(p, s, n_total) != 0)
        return -1;
    s->pool = p->serial;
    if (n > 0 && s->len % bs != 0) /* a cached name must not outlive a write into its block */
        paged_prefix_before_write(p, s->blocks[s->n_blocks - 1]);
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
    if (paged_seq_check_pool(p, s) != 0)
        return -1;
    if (len < 0 || len > s->len)
        return error_set("truncate to %d tokens: the sequence holds %d", len, s->len);
    const int keep = ceil_div(len, p->block_size);
    while (s->n_blocks > keep)
        if (paged_block_release(p, s->blocks[--s->n_blocks]) != 0)
            return -1;
    s->len = len;
    if (s->n_named > len / p->block_size) /* names only for the blocks still full */
        s->n_named = len / p->block_size;
    return 0;
}

int paged_seq_free(PagedPool *p, PagedSeq *s)
{
    if (paged_seq_truncate(p, s, 0) != 0)
        return -1;
    mem_free(s->blocks), mem_free(s->names);
    paged_seq_init(s);
    return 0;
}

int paged_seq_fork(PagedPool *p, const PagedSeq *src, PagedSeq *dst)
{
    if (paged_seq_check_pool(p, src) != 0)
        return -1;
    if (dst->n_blocks != 0 || dst->len != 0)
        return error_set("fork into a sequence that already holds %d tokens", dst->len);
    for (int i = 0; i < src->n_blocks; i++) {
        const int id = src->blocks[i];
        if (id < 0 || id >= p->num_blocks || p->ref[id] <= 0)
            return error_set("fork: block %d of the source table is not an allocated block", id);
    }
    mem_free(dst->blocks), mem_free(dst->names);
    paged_seq_init(dst);
    if (src->n_blocks > 0) {
        dst->blocks = mem_alloc((size_t)src->n_blocks * sizeof(int), "block table");
        if (!dst->blocks)
            return -1;
        if (p->prefix && !(dst->names = mem_alloc((size_t)src->n_blocks * sizeof(PagedName), "block names"))) {
            mem_free(dst->blocks), dst->blocks = NULL;
            return -1;
        }
        memcpy(dst->blocks, src->blocks, (size_t)src->n_blocks * sizeof(int));
        if (dst->names && src->names) /* the same blocks, the same names */
            memcpy(dst->names, src->names, (size_t)src->n_named * sizeof(PagedName)), dst->n_named = src->n_named;
        for (int i = 0; i < src->n_blocks; i++)
            p->ref[src->blocks[i]]++; /* shared now: nothing is copied until someone writes */
    }
    dst->pool = p->serial, dst->len = src->len, dst->n_blocks = dst->cap = src->n_blocks;
    return 0;
}

void paged_write(PagedPool *p, const PagedSeq *s, int layer, int pos, int n, const float *k, const float *v)
{
    const int Hkv = p->n_kv_heads, D = p->D, bs = p->block_size;
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
    const int D = p->D, bs = p->block_size;
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
    int *holders = mem_alloc((size_t)N * sizeof(int), "tables holding each block (num_blocks)");
    int *on_stack = mem_alloc((size_t)N * sizeof(int), "times each block is on the free list (num_blocks)");
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
    if (rc == 0 && (p->n_cached < 0 || p->n_cached > p->n_free))
        rc = error_set("cached count %d outside 0..%d (the free count)", p->n_cached, p->n_free);
    for (int f = 0; f < p->n_free - p->n_cached && rc == 0; f++) { /* the empty blocks */
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
        else if (p->ref[id] > 0 ? on_stack[id] != 0 : on_stack[id] + paged_prefix_named(p, id) != 1)
            /* a ref-0 block is on the free list (empty) or named (cached), never both */
            rc = error_set("block %d: reference count %d but %s the free list%s", id, p->ref[id],
                           on_stack[id] ? "on" : "not on", paged_prefix_named(p, id) ? " and named" : "");
        used += p->ref[id] > 0;
    }
    if (rc == 0 && used + p->n_free != N)
        rc = error_set("%d used + %d free != %d blocks", used, p->n_free, N);
    if (rc == 0)
        rc = paged_prefix_check(p, seqs, n_seqs);
    mem_free(holders), mem_free(on_stack);
    return rc;
}

