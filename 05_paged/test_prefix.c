/*
 * test_prefix.c: chapter 05's prefix caching (prefix.c), counted by hand on pools of a few blocks:
 * two sequences that share a prompt's first blocks point at the same physical blocks; the last
 * prompt token is always computed; a partly filled block is never named; freed named blocks stay
 * cached and are found again; eviction takes the least recently used cached block and never a
 * block in use. Names cut to 1 or 2 bits (forced collisions) never share blocks whose tokens or
 * prefix differ. 10^5 random operations keep every invariant (paged_check) and every sequence's
 * K/V equal to what its own tokens give. Through the model: a sequence that shares cached blocks
 * gets the logits and K/V of a fresh prefill, bit for bit. Its case, "prefix caching", runs in
 * test_paged.c's main().
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "05_paged/test_paged.h"
#include "common/error.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/tensor.h"

/* A pool of num_blocks blocks of bs tokens, one layer, one kv head, D = 2, prefix caching on. */
static void prefix_pool(PagedPool *p, int bs, int num_blocks, int hash_bits)
{
    ck_assert_int_eq(paged_pool_create(p, 1, 1, 2, bs, num_blocks), 0);
    ck_assert_msg(paged_prefix_enable(p) == 0, "%s", error_message());
    paged_prefix_set_hash_bits(p, hash_bits);
}

static void check_pool(const PagedPool *p, PagedSeq *const *seqs, int n)
{
    ck_assert_msg(paged_check(p, seqs, n) == 0, "%s", error_message());
}

/* A new sequence holding tokens[0 .. n): match, then append the rest; its blocks named at once. */
static int start_seq(PagedPool *p, PagedSeq *s, const int *tokens, int n)
{
    paged_seq_init(s);
    const int shared = paged_prefix_match(p, s, tokens, n);
    ck_assert_int_ge(shared, 0);
    ck_assert_msg(paged_seq_append(p, s, n - shared) == 0, "%s", error_message());
    ck_assert_int_eq(paged_prefix_publish(p, s, tokens, n), 0);
    return shared;
}

/* ==== counted by hand ============================================================================= */

/* Block size 4, 10 blocks, in order. A = 10 tokens: blocks 0, 1 full (named), 2 partly filled.
 * B starts with A's first 8 tokens then 3 others: it shares blocks 0 and 1 (ref 2) and takes 3.
 * C is exactly A's first 8 tokens: its last token is computed, so it shares only block 0. */
START_TEST(test_prefix_shared_blocks_counted_by_hand)
{
    PagedPool p;
    prefix_pool(&p, 4, 10, 64);
    const int a_tok[10] = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
    const int b_tok[11] = {5, 6, 7, 8, 9, 10, 11, 12, 40, 41, 42};
    PagedSeq a, b, c;
    ck_assert_int_eq(start_seq(&p, &a, a_tok, 10), 0);
    ck_assert(paged_prefix_named(&p, 0) && paged_prefix_named(&p, 1));
    ck_assert(!paged_prefix_named(&p, 2)); /* 2 of 4 slots: never named */
    ck_assert_int_eq(start_seq(&p, &b, b_tok, 11), 8);
    ck_assert_int_eq(b.blocks[0], 0);
    ck_assert_int_eq(b.blocks[1], 1);
    ck_assert_int_eq(b.blocks[2], 3);
    ck_assert_int_eq(p.ref[0], 2);
    ck_assert_int_eq(p.ref[1], 2);
    ck_assert_uint_eq(p.n_prefix_hits, 2);
    ck_assert_int_eq(start_seq(&p, &c, a_tok, 8), 4);
    ck_assert_int_eq(c.blocks[0], 0);
    ck_assert_int_eq(c.blocks[1], 4); /* its own block for tokens 4..7, computed again */
    ck_assert_int_eq(p.ref[0], 3);
    ck_assert_uint_eq(p.n_prefix_hits, 3);
    ck_assert(!paged_prefix_named(&p, 4)); /* the name of tokens 0..7 is block 1's: the first stays */
    PagedSeq *all[3] = {&a, &b, &c};
    check_pool(&p, all, 3);
    /* a prompt of 1 token, or of exactly one block, shares nothing */
    PagedSeq d;
    paged_seq_init(&d);
    ck_assert_int_eq(paged_prefix_match(&p, &d, a_tok, 4), 0);
    ck_assert_int_eq(paged_prefix_match(&p, &d, a_tok, 1), 0);
    ck_assert_int_eq(d.len, 0);
    ck_assert_int_eq(paged_prefix_match(&p, &a, a_tok, 10), -1); /* a holds tokens already */
    /* all freed: the named blocks 0 and 1 stay cached, the 4 others are empty again */
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(paged_seq_free(&p, all[i]), 0);
    ck_assert_int_eq(p.n_free, 10);
    ck_assert_int_eq(p.n_cached, 2);
    check_pool(&p, NULL, 0);
    /* and found again by a later sequence: revived from the cache (ref 1, no longer cached) */
    ck_assert_int_eq(start_seq(&p, &d, b_tok, 9), 8);
    ck_assert_int_eq(d.blocks[0], 0);
    ck_assert_int_eq(d.blocks[1], 1);
    ck_assert_int_eq(p.n_cached, 0);
    ck_assert_int_eq(p.n_free, 7);
    check_pool(&p, (PagedSeq *[]){&d}, 1);
    ck_assert_int_eq(paged_seq_free(&p, &d), 0);
    ck_assert_uint_eq(p.n_evictions, 0);
    paged_pool_free(&p);
}
END_TEST

/* The cached blocks, least recently used first, are want[0..n). */
static void expect_lru(const PagedPool *p, const int *want, int n)
{
    int lru[8];
    ck_assert_int_eq(paged_prefix_lru(p, lru, 8), n);
    for (int k = 0; k < n; k++)
        ck_assert_msg(lru[k] == want[k], "LRU position %d is block %d, expected %d", k, lru[k], want[k]);
}

/* Block size 2, 6 blocks, in order (the empty stack hands out 0, 1, 2, ...).
 *   A = 1 2 | 3 4 | 5       takes 0 1 2, names 0 1; freed: 2 empty, cached (LRU first) 1 0
 *   B = 6 7 | 8 9 | 5       takes 2 3 4, names 3 (blocks 2, 3); freed: 4 empty, cached 1 0 3 2
 *   C = 1 2 | 3 4 | 9       shares 0 1 (revived; cached 3 2), takes 4; freed: cached 3 2 1 0
 *   D = 9 tokens, 5 blocks  takes the empty 4, 5, then evicts 3, 2, 1 in that order; cached 0
 *   E = 1 2 | 7             shares block 0, still cached; A's second block is gone. */
START_TEST(test_prefix_eviction_is_lru_counted_by_hand)
{
    PagedPool p;
    prefix_pool(&p, 2, 6, 64);
    const int a_tok[5] = {1, 2, 3, 4, 5}, b_tok[5] = {6, 7, 8, 9, 5}, c_tok[5] = {1, 2, 3, 4, 9};
    const int d_tok[9] = {20, 21, 22, 23, 24, 25, 26, 27, 28}, e_tok[3] = {1, 2, 7};
    PagedSeq s;
    ck_assert_int_eq(start_seq(&p, &s, a_tok, 5), 0);
    ck_assert_int_eq(paged_seq_free(&p, &s), 0);
    expect_lru(&p, (const int[]){1, 0}, 2);
    ck_assert_int_eq(start_seq(&p, &s, b_tok, 5), 0);
    ck_assert(s.blocks[0] == 2 && s.blocks[1] == 3 && s.blocks[2] == 4);
    ck_assert_int_eq(paged_seq_free(&p, &s), 0);
    expect_lru(&p, (const int[]){1, 0, 3, 2}, 4);
    ck_assert_int_eq(start_seq(&p, &s, c_tok, 5), 4);
    ck_assert(s.blocks[0] == 0 && s.blocks[1] == 1 && s.blocks[2] == 4);
    expect_lru(&p, (const int[]){3, 2}, 2);
    ck_assert_int_eq(paged_seq_free(&p, &s), 0);
    expect_lru(&p, (const int[]){3, 2, 1, 0}, 4);
    ck_assert_uint_eq(p.n_evictions, 0);
    ck_assert_int_eq(start_seq(&p, &s, d_tok, 9), 0);
    const int d_want[5] = {4, 5, 3, 2, 1};
    for (int j = 0; j < 5; j++)
        ck_assert_msg(s.blocks[j] == d_want[j], "D's block %d is %d, expected %d", j, s.blocks[j], d_want[j]);
    ck_assert_uint_eq(p.n_evictions, 3);
    expect_lru(&p, (const int[]){0}, 1);
    check_pool(&p, (PagedSeq *[]){&s}, 1);
    /* the pool is full: block 0 (cached) is the only one left; D's 4 full blocks were named */
    PagedSeq e;
    ck_assert_int_eq(paged_seq_free(&p, &s), 0);
    ck_assert_int_eq(start_seq(&p, &e, e_tok, 3), 2);
    ck_assert_int_eq(e.blocks[0], 0);
    ck_assert_int_eq(paged_seq_free(&p, &e), 0);
    ck_assert_int_eq(p.n_free, 6);
    paged_pool_free(&p);
}
END_TEST

/* A block in use is never evicted: with every block held, an allocation fails and the held named
 * blocks keep their names; once released they are cached, and an allocation evicts them. */
START_TEST(test_prefix_never_evicts_a_block_in_use)
{
    PagedPool p;
    prefix_pool(&p, 2, 4, 64);
    const int tok[5] = {1, 2, 3, 4, 5};
    PagedSeq a, b;
    start_seq(&p, &a, tok, 5); /* blocks 0 1 2, 0 and 1 named */
    start_seq(&p, &b, tok, 2); /* shares nothing (the last token is computed): block 3 */
    ck_assert_int_eq(p.n_free, 0);
    ck_assert_int_eq(paged_block_alloc(&p), PAGED_EXHAUSTED);
    ck_assert_int_eq(paged_seq_append(&p, &b, 1), PAGED_EXHAUSTED);
    ck_assert(paged_prefix_named(&p, 0) && paged_prefix_named(&p, 1));
    ck_assert_uint_eq(p.n_evictions, 0);
    ck_assert_int_eq(paged_seq_truncate(&p, &a, 4), 0); /* block 2 (unnamed) back on the stack */
    ck_assert_int_eq(paged_block_alloc(&p), 2);
    ck_assert_int_eq(paged_block_alloc(&p), PAGED_EXHAUSTED);
    ck_assert_int_eq(paged_block_release(&p, 2), 0);
    ck_assert_int_eq(paged_seq_free(&p, &a), 0); /* 1, then 0 cached */
    ck_assert_int_eq(p.n_cached, 2);
    ck_assert_int_eq(paged_block_alloc(&p), 2); /* an empty block first */
    ck_assert_int_eq(paged_block_alloc(&p), 1); /* then the least recently used cached one */
    ck_assert(!paged_prefix_named(&p, 1) && paged_prefix_named(&p, 0));
    ck_assert_uint_eq(p.n_evictions, 1);
    ck_assert_int_eq(paged_block_release(&p, 1), 0);
    ck_assert_int_eq(paged_block_release(&p, 2), 0);
    ck_assert_int_eq(paged_seq_free(&p, &b), 0);
    ck_assert_int_eq(p.n_free, 4);
    check_pool(&p, NULL, 0);
    paged_pool_free(&p);
}
END_TEST

/* Truncating into a named block and writing there: alone, the block forgets its name (the cache
 * never holds overwritten K/V); shared, the write copies it and the name stays. A fork shares the
 * names too. */
START_TEST(test_prefix_truncate_and_write_into_a_named_block)
{
    PagedPool p;
    prefix_pool(&p, 4, 8, 64);
    const int tok[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    PagedSeq a, b;
    start_seq(&p, &a, tok, 9); /* 0 1 named, 2 partial */
    paged_seq_init(&b);
    ck_assert_int_eq(a.n_named, 2);
    ck_assert_int_eq(paged_seq_truncate(&p, &a, 6), 0);
    ck_assert_int_eq(a.n_named, 1); /* block 1 is no longer full in a */
    check_pool(&p, (PagedSeq *[]){&a}, 1);
    ck_assert_int_eq(paged_seq_fork(&p, &a, &b), 0);
    ck_assert_int_eq(b.n_named, 1);
    ck_assert_int_eq(paged_seq_append(&p, &b, 1), 0); /* shared: copy-on-write, block 1 keeps its name */
    ck_assert_uint_eq(p.n_cow_copies, 1);
    ck_assert(paged_prefix_named(&p, 1));
    ck_assert_int_eq(paged_seq_free(&p, &b), 0);
    ck_assert_int_eq(paged_seq_append(&p, &a, 1), 0); /* alone: written in place, the name goes */
    ck_assert(!paged_prefix_named(&p, 1) && paged_prefix_named(&p, 0));
    check_pool(&p, (PagedSeq *[]){&a}, 1);
    ck_assert_int_eq(paged_seq_free(&p, &a), 0);
    ck_assert_int_eq(p.n_cached, 1);
    ck_assert_int_eq(p.n_free, 8);
    paged_pool_free(&p);
}
END_TEST

/* Caching off (the default): every prefix call does nothing and returns 0; turning it on needs an
 * empty pool. */
START_TEST(test_prefix_off_and_misuse)
{
    PagedPool p;
    ck_assert_int_eq(paged_pool_create(&p, 1, 1, 2, 2, 4), 0);
    const int tok[5] = {1, 2, 3, 4, 5};
    PagedSeq s;
    paged_seq_init(&s);
    ck_assert_int_eq(paged_seq_append(&p, &s, 5), 0);
    ck_assert_int_eq(paged_prefix_publish(&p, &s, tok, 5), 0);
    ck_assert_int_eq(s.n_named, 0);
    ck_assert_ptr_null(s.names);
    ck_assert_int_eq(paged_prefix_enable(&p), -1); /* blocks in use */
    ck_assert_msg(strstr(error_message(), "3 in use"), "%s", error_message());
    ck_assert_int_eq(paged_seq_free(&p, &s), 0);
    ck_assert_int_eq(paged_prefix_match(&p, &s, tok, 5), 0);
    ck_assert_int_eq(p.n_free, 4);
    ck_assert_int_eq(p.n_cached, 0);
    ck_assert_int_eq(paged_prefix_enable(&p), 0);
    ck_assert_int_eq(paged_prefix_enable(&p), 0); /* twice: still on, nothing lost */
    ck_assert_int_eq(paged_prefix_publish(&p, &s, tok, -1), -1);
    paged_pool_free(&p);
}
END_TEST

/* ==== forced collisions and random operations ======================================================= */

/* Position t's K and V in a test: two exact floats from a hash of tokens[0 .. t] -- what a model's
 * K/V depend on -- independent of prefix.c's names. */
static void kv_of_prefix(const int *tokens, int t, float kv[4])
{
    uint64_t h = 7;
    for (int i = 0; i <= t; i++)
        h = h * 1000003u + (uint64_t)tokens[i] + 1;
    h ^= h >> 29;
    for (int c = 0; c < 4; c++)
        kv[c] = (float)((h >> (16 * c)) & 0xffff);
}

static void write_positions(PagedPool *p, const PagedSeq *s, const int *tokens, int from, int to)
{
    for (int t = from; t < to; t++) {
        float kv[4];
        kv_of_prefix(tokens, t, kv);
        paged_write(p, s, 0, t, 1, kv, kv + 2);
    }
}

/* Every position of s holds the K/V of its own tokens' prefix (a shared block with other tokens
 * behind it, or one overwritten while cached, would not). */
static void expect_own_kv(const PagedPool *p, const PagedSeq *s, const int *tokens, const char *when)
{
    float k[2 * 64], v[2 * 64];
    ck_assert_int_le(s->len, 64);
    paged_gather(p, s, 0, s->len, k, v);
    for (int t = 0; t < s->len; t++) {
        float kv[4];
        kv_of_prefix(tokens, t, kv);
        ck_assert_msg(k[2 * t] == kv[0] && k[2 * t + 1] == kv[1] && v[2 * t] == kv[2] && v[2 * t + 1] == kv[3],
                      "%s: position %d of %d holds another prefix's K/V", when, t, s->len);
    }
}

enum { RND_SEQS = 8, RND_MAX = 40 };

typedef struct {
    PagedPool p;
    PagedSeq seq[RND_SEQS];
    PagedSeq *ptrs[RND_SEQS];
    int tok[RND_SEQS][RND_MAX]; /* each sequence's tokens */
    Rng rng;
    long matched_blocks, exhausted;
} RandomPool;

/* A prompt for sequence i: a prefix of another sequence's tokens (often), then random tokens from a
 * small alphabet, so that prefixes repeat; matched, the rest appended (as much as fits). */
static void random_start(RandomPool *r, int i)
{
    int *tok = r->tok[i];
    const int n = 1 + (int)rng_below(&r->rng, RND_MAX), donor = (int)rng_below(&r->rng, RND_SEQS);
    int keep = (int)rng_below(&r->rng, (uint32_t)r->seq[donor].len + 1);
    keep = keep < n ? keep : n;
    memcpy(tok, r->tok[donor], (size_t)keep * sizeof(int));
    for (int t = keep; t < n; t++)
        tok[t] = (int)rng_below(&r->rng, 3);
    PagedSeq *s = &r->seq[i];
    const int shared = paged_prefix_match(&r->p, s, tok, n);
    ck_assert_int_ge(shared, 0);
    ck_assert_int_eq(shared % r->p.block_size, 0);
    ck_assert_int_le(shared, n - 1);
    r->matched_blocks += shared / r->p.block_size;
    expect_own_kv(&r->p, s, tok, "after a match");
    const int rc = paged_seq_append(&r->p, s, n - shared);
    if (rc == PAGED_EXHAUSTED)
        r->exhausted++;
    else
        write_positions(&r->p, s, tok, shared, n);
}

static void random_op(RandomPool *r)
{
    const int i = (int)rng_below(&r->rng, RND_SEQS), kind = (int)rng_below(&r->rng, 10);
    PagedSeq *s = &r->seq[i];
    if (kind < 3 && s->len == 0) {
        random_start(r, i);
    } else if (kind < 5) { /* append 1..5 tokens */
        const int n = 1 + (int)rng_below(&r->rng, 5);
        if (s->len + n <= RND_MAX) {
            for (int t = s->len; t < s->len + n; t++)
                r->tok[i][t] = (int)rng_below(&r->rng, 3);
            const int rc = paged_seq_append(&r->p, s, n);
            if (rc == PAGED_EXHAUSTED) {
                r->exhausted++;
            } else {
                ck_assert_int_eq(rc, 0);
                write_positions(&r->p, s, r->tok[i], s->len - n, s->len);
            }
        }
    } else if (kind < 7) { /* publish what is written */
        ck_assert_int_eq(paged_prefix_publish(&r->p, s, r->tok[i], s->len), 0);
    } else if (kind < 8) { /* fork into an empty sequence */
        const int d = (int)rng_below(&r->rng, RND_SEQS);
        if (d != i && r->seq[d].len == 0) {
            ck_assert_int_eq(paged_seq_fork(&r->p, s, &r->seq[d]), 0);
            memcpy(r->tok[d], r->tok[i], sizeof r->tok[i]);
        }
    } else if (kind < 9) {
        ck_assert_int_eq(paged_seq_truncate(&r->p, s, s->len ? (int)rng_below(&r->rng, (uint32_t)s->len + 1) : 0), 0);
    } else {
        ck_assert_int_eq(paged_seq_free(&r->p, s), 0);
    }
}

/* ops random operations on a pool of num_blocks blocks of bs tokens, names cut to hash_bits;
 * after each, the invariants and every sequence's K/V. Returns the pool's counters in r. */
static void random_run(RandomPool *r, int bs, int num_blocks, int hash_bits, int ops, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    prefix_pool(&r->p, bs, num_blocks, hash_bits);
    paged_pool_shuffle(&r->p, seed);
    for (int i = 0; i < RND_SEQS; i++)
        paged_seq_init(&r->seq[i]), r->ptrs[i] = &r->seq[i];
    rng_seed(&r->rng, seed);
    for (int op = 0; op < ops; op++) {
        random_op(r);
        ck_assert_msg(paged_check(&r->p, r->ptrs, RND_SEQS) == 0, "op %d: %s", op, error_message());
        for (int i = 0; i < RND_SEQS; i++)
            expect_own_kv(&r->p, &r->seq[i], r->tok[i], "after an operation");
    }
    for (int i = 0; i < RND_SEQS; i++)
        ck_assert_int_eq(paged_seq_free(&r->p, &r->seq[i]), 0);
    ck_assert_int_eq(r->p.n_free, r->p.num_blocks); /* every block back, empty or cached */
    check_pool(&r->p, NULL, 0);
}

/* Names of 1 and 2 bits: nearly every name collides, and no block is shared whose tokens, or the
 * tokens before them, differ (every sequence's K/V checked after each operation). */
START_TEST(test_prefix_forced_collisions_share_nothing_wrong)
{
    for (int bits = 1; bits <= 2; bits++)
        for (int bs = 1; bs <= 2; bs++) {
            RandomPool r;
            random_run(&r, bs, 40, bits, 4000, 11 + (uint64_t)bits * 2 + (uint64_t)bs);
            ck_assert_int_gt(r.matched_blocks, 10); /* sharing happens, even with 2 or 4 names */
            paged_pool_free(&r.p);
        }
}
END_TEST

/* 10^5 operations, full names, a pool small enough that allocations evict and appends fail. */
START_TEST(test_prefix_random_operations)
{
    RandomPool r;
    random_run(&r, 2, 48, 64, 100000, 2025);
    ck_assert_int_gt(r.matched_blocks, 1000);
    ck_assert_int_gt((long)r.p.n_evictions, 1000);
    ck_assert_int_gt(r.exhausted, 100);
    ck_assert_int_gt((long)r.p.n_cow_copies, 100);
    paged_pool_free(&r.p);
}
END_TEST

/* ==== through the model: cached K/V are a fresh prefill's bits ====================================== */

/* Positions [0, n) of every layer's K and V of s: (L, 2, Hkv, n, D). */
static float *gather_all(const PagedPool *p, const PagedSeq *s, int n)
{
    const size_t per = (size_t)p->n_kv_heads * n * p->D;
    float *kv = xmalloc((size_t)p->n_layers * 2 * per * sizeof(float), "K/V (L, 2, Hkv, n, D)");
    for (int l = 0; l < p->n_layers; l++)
        paged_gather(p, s, l, n, kv + (size_t)l * 2 * per, kv + ((size_t)l * 2 + 1) * per);
    return kv;
}

/* tokens[0 .. n) through a fresh pool without caching: the logits of the last token and the K/V. */
static float *fresh_prefill(const Model *m, int bs, const int *tokens, int n, float *logits)
{
    PagedPool q;
    ck_assert_int_eq(paged_pool_create(&q, m->c.n_layers, m->c.n_kv_heads, model_head_size(&m->c), bs, 64), 0);
    PagedSeq c;
    paged_seq_init(&c);
    ck_assert_msg(paged_forward(m, &q, &c, tokens, n, 2, logits) == 0, "%s", error_message());
    float *kv = gather_all(&q, &c, n);
    paged_seq_free(&q, &c);
    paged_pool_free(&q);
    return kv;
}

/* A computes its prompt of 21 tokens and names its blocks; B's prompt starts with A's first 16
 * tokens: it shares their blocks and computes only its last 7. B's logits and every K/V bit equal
 * a fresh prefill of B's prompt. Then, with A and B finished, D = A's prompt finds A's cached
 * blocks and gets A's logits. Block sizes 1, 4 and 8 (16 tokens are whole blocks in each); every
 * slot starts as NaN, so a read of a slot nobody wrote would show. */
START_TEST(test_prefix_cached_kv_equal_a_fresh_prefill)
{
    Model m;
    const ModelConfig mc = {.dim = 64, .hidden_dim = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                            .vocab_size = 97, .seq_len = 64, .shared_classifier = 0};
    ck_assert_int_eq(model_init_random(&m, &mc, 21), 0);
    const int V = mc.vocab_size, bss[3] = {1, 4, 8};
    int a_tok[21], b_tok[23];
    testing_fill_tokens(a_tok, 21, 7, 3, V);
    memcpy(b_tok, a_tok, 16 * sizeof(int));
    for (int t = 16; t < 23; t++)
        b_tok[t] = (t * 13 + 5) % V;
    float *la = xmalloc((size_t)V * 4, "la"), *lb = xmalloc((size_t)V * 4, "lb"), *lf = xmalloc((size_t)V * 4, "lf");
    for (int i = 0; i < 3; i++) {
        const int bs = bss[i];
        PagedPool p;
        ck_assert_int_eq(paged_pool_create(&p, mc.n_layers, mc.n_kv_heads, model_head_size(&mc), bs, 64), 0);
        for (size_t e = 0; e < (size_t)mc.n_layers * mc.n_kv_heads * 64 * bs * model_head_size(&mc); e++)
            p.k[e] = p.v[e] = NAN;
        ck_assert_int_eq(paged_prefix_enable(&p), 0);
        PagedSeq a, b, d;
        paged_seq_init(&a), paged_seq_init(&b), paged_seq_init(&d);
        ck_assert_int_eq(paged_prefix_match(&p, &a, a_tok, 21), 0);
        ck_assert_msg(paged_forward(&m, &p, &a, a_tok, 21, 2, la) == 0, "%s", error_message());
        ck_assert_int_eq(paged_prefix_publish(&p, &a, a_tok, 21), 0);
        ck_assert_int_eq(paged_prefix_match(&p, &b, b_tok, 23), 16);
        ck_assert_msg(paged_forward(&m, &p, &b, b_tok + 16, 7, 2, lb) == 0, "%s", error_message());
        float *want = fresh_prefill(&m, bs, b_tok, 23, lf), *got = gather_all(&p, &b, 23);
        ck_assert_msg(memcmp(lb, lf, (size_t)V * 4) == 0, "bs %d: logits after shared blocks differ", bs);
        ck_assert_msg(memcmp(got, want, (size_t)mc.n_layers * 2 * mc.n_kv_heads * 23 * model_head_size(&mc) * 4) == 0,
                      "bs %d: K/V after shared blocks differ from a fresh prefill", bs);
        free(want), free(got);
        paged_seq_free(&p, &a), paged_seq_free(&p, &b);
        /* A named its 21 / bs full blocks (B named none), all cached now; D shares those before its
         * last token, 20 / bs of them */
        ck_assert_int_eq(p.n_cached, 21 / bs);
        const int cached = 20 / bs;
        ck_assert_int_eq(paged_prefix_match(&p, &d, a_tok, 21), cached * bs);
        ck_assert_int_eq(p.n_cached, 21 / bs - cached);
        ck_assert_msg(paged_forward(&m, &p, &d, a_tok + cached * bs, 21 - cached * bs, 2, lf) == 0, "%s",
                      error_message());
        ck_assert_msg(memcmp(la, lf, (size_t)V * 4) == 0, "bs %d: logits from cached blocks differ", bs);
        PagedSeq *all[1] = {&d};
        ck_assert_msg(paged_check(&p, all, 1) == 0, "%s", error_message());
        paged_seq_free(&p, &d);
        paged_pool_free(&p);
    }
    free(la), free(lb), free(lf);
    model_free(&m);
}
END_TEST

TestingCase paged_prefix_case(void)
{
    return (TestingCase){.name = "prefix caching", .timeout_s = 300,
                         .tests = {test_prefix_shared_blocks_counted_by_hand,
                                   test_prefix_eviction_is_lru_counted_by_hand,
                                   test_prefix_never_evicts_a_block_in_use,
                                   test_prefix_truncate_and_write_into_a_named_block, test_prefix_off_and_misuse,
                                   test_prefix_forced_collisions_share_nothing_wrong, test_prefix_random_operations,
                                   test_prefix_cached_kv_equal_a_fresh_prefill}};
}
