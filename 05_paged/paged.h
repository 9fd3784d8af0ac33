/*
 * paged.h: chapter 05, PagedAttention -- the KV cache in fixed-size blocks found through a table.
 *
 * Chapter 04 reserved max_seq positions per sequence. A server does not know how long a request
 * will run, so that reservation is mostly empty memory, and variable-size reservations fragment
 * what is left. Paging (Kwon et al. 2023, "Efficient Memory Management for Large Language Model
 * Serving with PagedAttention") cuts the cache into blocks of block_size tokens, keeps them in
 * one pool, and gives each sequence a block table: logical block i (its tokens i*bs .. i*bs+bs-1)
 * lives in physical block table[i], anywhere in the pool. A sequence holds at most bs-1 empty
 * slots (in its last block); blocks are shared between sequences by reference counting (fork:
 * n samples of one prompt share the prompt's blocks) and copied on the first write to a shared,
 * partly filled block (copy-on-write).
 *
 *   pool.c     the allocator. num_blocks blocks: K and V (L, Hkv, num_blocks, bs, D) fp32. One
 *              block id serves every layer and kv head; one (layer, kv head, block) is a
 *              contiguous (bs, D) matrix, and blocks with consecutive ids are adjacent, so a
 *              sequence whose blocks came out in order is one stream of memory, as in chapter 04.
 *              A stack of free ids (O(1) alloc and release); a reference count per block; per
 *              sequence a table of ceil(len / bs) physical ids; paged_check, the invariants.
 *   paged.c    attention through the tables on the CPU, reading K and V in place -- never a
 *              contiguous copy:
 *        1 ref:  per query row and head, plain loops over positions, row = table[j / bs], j % bs
 *        2 fast: tasks of (sequence, kv head, query tile, partition of the blocks); the G query
 *                heads of a group (and a tile of query positions) score a chunk of blocks with
 *                common/matmul, online softmax, P V summed over the blocks, partitions merged
 *                with their log-sum-exp (chapter 03's flash_merge); OpenMP over the tasks
 *   paged.cu   the same on the GPU:
 *        1 v1:   a thread block per (query row, head) walks the table over the whole sequence
 *        2 v2:   a thread block per (query row, kv head, partition), then a reduce kernel
 *   forward.c  the model through a paged cache: one forward step, and generation of n forked
 *              samples of one prompt
 *   waste.c    the lesson's measurements (waste.h): the memory contiguous reservations waste
 *              against paging, and what fork saves
 *   prefix.c   prefix caching: full blocks named by a hash of their tokens chained with their
 *              parent's, found again by a later sequence whose tokens start the same way; freed
 *              named blocks stay cached (ref 0) until the pool needs them, least recently used
 *              first
 *   frag.c     the lesson's fragmentation measurement (frag.h): requests arriving and leaving a
 *              fixed arena held as contiguous ranges (first fit) or in the pool, every step's slots
 *              counted as used, reserved, internal and external fragmentation, and free
 */
#ifndef PAGED_H
#define PAGED_H

#include <stddef.h>
#include <stdint.h>

#include "common/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returned (with an error recorded) when the pool has too few free blocks; nothing changed. */
#define PAGED_EXHAUSTED (-2)

typedef struct PagedPrefix PagedPrefix; /* prefix caching's state (prefix.c); NULL = off */

typedef struct {
    int n_layers, n_kv_heads, D, block_size, num_blocks; /* D: the head dimension */
    unsigned serial;  /* tags the tables this pool serves */
    float *k, *v;     /* (L, Hkv, num_blocks, bs, D) */
    int *ref;         /* (num_blocks) how many tables hold each block; 0 = free (or cached) */
    int *free_ids;    /* (num_blocks) a stack: free_ids[0 .. n_free - n_cached) are the empty blocks */
    int n_free;       /* blocks with ref 0, the ones an allocation can take: the empty ones and,
                         with prefix caching, the cached ones (named, evicted when needed) */
    int peak_used;    /* most blocks in use at once */
    size_t n_allocs, n_releases, n_cow_copies; /* counters since creation */
    PagedPrefix *prefix; /* NULL: prefix caching off (the default) */
    int n_cached;        /* ref-0 blocks kept for their name (0 when off) */
    size_t n_prefix_hits, n_evictions; /* blocks shared by name; cached blocks given to another use */
} PagedPool;

/* Prefix caching: a full block's name, and the serial of the naming under which the pool holds a
 * block with exactly this prefix (the table's own block or another with the same tokens; 0: none,
 * and then no later block of the table can be shared by name). */
typedef struct {
    uint64_t name, serial;
} PagedName;

typedef struct {
    unsigned pool; /* serial of the pool it draws from; 0 = holds nothing yet */
    int len;       /* tokens stored */
    int n_blocks;  /* ceil(len / bs) */
    int cap;       /* entries allocated in blocks */
    int *blocks;   /* (cap) logical block -> physical block */
    int n_named;      /* prefix caching: logical blocks [0, n_named) have their names in names */
    PagedName *names; /* (cap) with prefix caching on; NULL when off */
} PagedSeq;

/* ---- the pool (pool.c) ---------------------------------------------------------------------- */

/* num_blocks blocks of block_size tokens for a model of n_layers, n_kv_heads, head dimension D. */
int paged_pool_create(PagedPool *p, int n_layers, int n_kv_heads, int D, int block_size, int num_blocks);
void paged_pool_free(PagedPool *p);

/* Reorders the free stack at random (seeded): blocks then come out in a shuffled order, which
 * tests use to show that physical placement changes nothing. */
void paged_pool_shuffle(PagedPool *p, uint64_t seed);

/* Bytes of K and V one block holds: 2 * L * Hkv * bs * D * 4. */
size_t paged_block_bytes(const PagedPool *p);
static inline int paged_pool_used(const PagedPool *p) { return p->num_blocks - p->n_free; }

/* One block with ref count 1: off the stack of empty blocks, or, when none is empty, the least
 * recently used cached block (prefix caching: its name forgotten); PAGED_EXHAUSTED when n_free is 0. */
int paged_block_alloc(PagedPool *p);
/* Ref count -1; at 0 back on the free stack, or, holding a name, onto the cached list. Errors: id
 * out of range, or a block already free (double free). */
int paged_block_release(PagedPool *p, int id);

/* (bs, D) rows of K / V of block `id`, layer `layer`, kv head h. */
static inline size_t paged_block_offset(const PagedPool *p, int id, int layer, int h)
{
    return (((size_t)layer * p->n_kv_heads + h) * p->num_blocks + id) * p->block_size * p->D;
}
static inline float *paged_k_block(const PagedPool *p, int id, int layer, int h)
{
    return p->k + paged_block_offset(p, id, layer, h);
}
static inline float *paged_v_block(const PagedPool *p, int id, int layer, int h)
{
    return p->v + paged_block_offset(p, id, layer, h);
}

/* ---- sequences: block tables (pool.c) ------------------------------------------------------- */

void paged_seq_init(PagedSeq *s);

/* -1 (error recorded: "foreign block ids") when s holds blocks of another pool than p. */
int paged_seq_check_pool(const PagedPool *p, const PagedSeq *s);

/* Room for n more tokens: allocates blocks as the last one fills, first copying a shared, partly
 * filled last block (copy-on-write), then len += n. The caller writes the K/V of positions
 * [len - n, len) in every layer. PAGED_EXHAUSTED, with nothing changed, when the pool is short;
 * -1 for a table of another pool. */
int paged_seq_append(PagedPool *p, PagedSeq *s, int n);

/* Blocks paged_seq_append(s, n) would take from the pool now (copy-on-write included). */
int paged_seq_blocks_needed(const PagedPool *p, const PagedSeq *s, int n);

/* Keeps the first len tokens of s, releasing the blocks past them; -1 for len > s->len. */
int paged_seq_truncate(PagedPool *p, PagedSeq *s, int len);

/* Releases every block of s and empties it; -1 for a table of another pool or a bad id. */
int paged_seq_free(PagedPool *p, PagedSeq *s);

/* dst (empty) shares every block of src: ref counts +1, nothing copied. */
int paged_seq_fork(PagedPool *p, const PagedSeq *src, PagedSeq *dst);

/* Stores positions [pos, pos + n) of s in layer `layer` from token-major rows k, v
 * (n, Hkv * D); the positions must be < s->len (appended first). */
void paged_write(PagedPool *p, const PagedSeq *s, int layer, int pos, int n, const float *k, const float *v);

/* Copy of positions [0, len) of s through its table: k_out, v_out (Hkv, len, D). Tests and the
 * pictures use it; the attention kernels never do. */
void paged_gather(const PagedPool *p, const PagedSeq *s, int layer, int len, float *k_out, float *v_out);

/* The allocator's invariants over a pool and every table drawn from it: free + used = total,
 * ref counts >= 0, each block's ref count = the number of tables holding it (a block is in two
 * tables only when shared), the free stack holds exactly the unnamed blocks with ref 0, once each,
 * and every table has ceil(len / bs) valid ids; with prefix caching also the cached list (exactly
 * the named blocks of ref 0), the name table and each table's names (prefix.c). 0, or -1 naming
 * the first broken one. */
int paged_check(const PagedPool *p, PagedSeq *const *seqs, int n_seqs);

/* ---- prefix caching (prefix.c) --------------------------------------------------------------
 * A full block of sequence s (its positions [j*bs, (j+1)*bs), K/V written) can be named:
 *   name(j) = hash(name(j - 1), the bs tokens of block j)      (name(-1) = a fixed seed)
 * so a name means "these tokens after exactly that prefix". The pool keeps a table name -> block;
 * a lookup compares the block's stored tokens too (and its parent's name), so a hash collision
 * can never share wrong K/V. A named block whose ref count drops to 0 is not emptied: it stays
 * cached (counted in n_free and n_cached) until an allocation finds no empty block, which evicts
 * the least recently used cached block (its name forgotten). Partly filled blocks are never
 * named (copy-on-write covers forks). With prefix caching off every function below does nothing
 * and returns 0, and the pool behaves exactly as before. */

/* Turns prefix caching on for a pool that holds no blocks yet. 0, or -1 (out of memory; a pool in
 * use). */
int paged_prefix_enable(PagedPool *p);

/* For an empty s about to hold tokens[0 .. n): shares the longest run of cached blocks that hold
 * tokens[0 .. k*bs) with k*bs <= n - 1 (the last token is always computed, so that it has logits):
 * ref counts +1 (a cached block leaves the cache), s->len = k*bs, n_prefix_hits += k. Returns
 * k*bs, the tokens whose K/V need no computing; 0 when off or nothing matches; -1 on a bad s. */
int paged_prefix_match(PagedPool *p, PagedSeq *s, const int *tokens, int n);

/* Names the full blocks of s that lie inside [0, n_written) and have no name yet -- their K/V are
 * written -- and enters them in the table; tokens are s's tokens (at least n_written of them).
 * A block whose name the table already holds for another block keeps no name (the first stays
 * the one found). Call after each forward that wrote K/V. 0, or -1 on a bad s. */
int paged_prefix_publish(PagedPool *p, PagedSeq *s, const int *tokens, int n_written);

/* Test hook: keeps only the low `bits` bits of every name (1..64; 64 = the full hash), so that
 * tests can force collisions. Call it right after paged_prefix_enable, before any name exists. */
void paged_prefix_set_hash_bits(PagedPool *p, int bits);

/* Read-only views for pictures and tests: 1 when block id holds a name; the cached blocks (ref 0,
 * named) from the least to the most recently used into ids (at most max), their count returned. */
int paged_prefix_named(const PagedPool *p, int id);
int paged_prefix_lru(const PagedPool *p, int *ids, int max);

/* ---- attention through the tables (paged.c) -------------------------------------------------
 * A batch of n_seq sequences: sequence i owns query rows q_start[i] .. q_start[i+1]-1 of
 * q (rows, H, D) -- token-major, as the model produces them -- and those T_i queries are its last
 * T_i positions (its K/V already written, len counting them). causal: query t sees positions
 * <= len - T_i + t (bottom-right); otherwise all len. out (rows, H, D); a row that sees no key
 * gets zeros. H must be a multiple of the pool's Hkv. */
#define PAGED_CPU_KERNELS 2
int paged_attention_ref(const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                        PagedSeq *const *seqs, const int *q_start, const float *q, float *out);
int paged_attention_fast(const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                         PagedSeq *const *seqs, const int *q_start, const float *q, float *out);
int paged_attention_cpu(int kernel, const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                        PagedSeq *const *seqs, const int *q_start, const float *q, float *out);
const char *paged_cpu_kernel_name(int kernel); /* "ref", "fast" */

/* Keys per partition of the fast kernel, rounded up to whole blocks: a sequence of len tokens
 * is split in ceil(len / this) partitions, whatever else is in the batch, so that a sequence's
 * output does not depend on its batch. */
#define PAGED_PARTITION_KEYS 2048

/* ---- the model through a paged cache, on the CPU (forward.c) -------------------------------- */

/* Runs tokens[0..n) of sequence s at positions s->len .. s->len+n-1: appends n slots (the pool
 * may run out: PAGED_EXHAUSTED, s unchanged), writes their K/V, attends with CPU kernel `kernel`,
 * writes the logits (vocab) of the last token. */
int paged_forward(const Model *m, PagedPool *p, PagedSeq *s, const int *tokens, int n, int kernel, float *logits);

typedef struct {
    int max_new;       /* tokens to generate per sample */
    float temperature; /* 0: greedy */
    float top_p;       /* nucleus sampling as run.c (common/model.h's Sampling); 0 or 1: off */
    int top_k;         /* 0: off */
    uint64_t seed;     /* sample i uses seed + i: its own generator, whatever the other samples draw */
    int n_samples;     /* the prompt is prefilled once and forked n_samples - 1 times */
    int block_size;
    int num_blocks;    /* 0: just enough for the request (paged_blocks_for_request) */
    int kernel;        /* CPU attention kernel, 0 = fast */
    uint64_t shuffle;  /* 0: blocks in pool order; else shuffle the free list with this seed */
    int stop_at_bos_eos; /* 1: a sample ends at a sampled BOS or EOS (its out row is -1 from there) */
} PagedGenOptions;

/* Blocks a request needs at its longest: the prompt's full blocks once (shared by every sample)
 * plus, per sample, the rest of its n_prompt + max_new tokens. */
int paged_blocks_for_request(int n_prompt, int max_new, int n_samples, int block_size);

/* Generates o->max_new tokens for each of o->n_samples samples: out (n_samples, max_new). Checks
 * the request first (prompt, lengths, and that it fits num_blocks: an error saying how many
 * blocks it needs). stats, when not NULL, gets the pool's peak blocks and copy-on-write count. */
typedef struct {
    int peak_blocks, num_blocks;
    size_t cow_copies;
    size_t block_bytes;
} PagedGenStats;
int paged_generate(const Model *m, const int *prompt, int n_prompt, const PagedGenOptions *o, int *out,
                   PagedGenStats *stats);

/* ---- CUDA (paged.cu) ------------------------------------------------------------------------- */
#if HAVE_CUDA
#define PAGED_CUDA_KERNELS 2
/* The same batch contract on the GPU, decode and prefill rows alike, for one layer's blocks:
 * d_k, d_v (Hkv, num_blocks, bs, D) -- one layer of a pool --, d_tables (n_seq, max_blocks)
 * physical ids, d_lens (n_seq), d_q_start (n_seq + 1), d_row_seq (rows) the sequence of each
 * query row, q / out (rows, H, D). */
typedef struct {
    const float *k, *v;
    int num_blocks;
    int Hkv, bs, D;
    const int *tables, *lens, *q_start, *row_seq;
    int n_seq, max_blocks, rows, max_len;
} PagedCudaBatch;
int paged_attention_cuda(int kernel, const PagedCudaBatch *b, int H, float scale, int causal, const float *d_q,
                         float *d_out);
const char *paged_cuda_kernel_name(int kernel); /* "v1", "v2" */

/* Milliseconds (median of `repeats` after a warm-up, CUDA events) of one decode call on the GPU:
 * B sequences of L tokens, one query each, device-generated data; kernel 1/2 = v1/v2 through
 * block tables of block size bs (blocks in order, or shuffled), kernel 0 = chapter 04's split
 * kernel over a contiguous cache. -1 when the GPU memory is short. */
double paged_time_cuda(int kernel, int B, int H, int Hkv, int L, int D, int bs, int shuffled, int repeats);

/* The attn contract's layouts on the device: k, v (B, Hkv, S, D) are scattered into a pool of
 * B * ceil(S / bs) blocks (every slot first NaN) following h_perm (host: logical block lb of
 * sequence b goes to physical block h_perm[b * ceil(S / bs) + lb]), q (B, H, T, D) is turned into
 * token-major rows, the kernel runs, and out comes back as (B, H, T, D). */
int paged_attention_cuda_bhsd(int kernel, int B, int H, int Hkv, int T, int S, int D, int bs, const int *h_perm,
                              float scale, int causal, const float *d_q, const float *d_k, const float *d_v,
                              float *d_out);
#endif

#ifdef __cplusplus
}
#endif
#endif
