/*
 * prefix.c: chapter 05's prefix caching -- requests whose prompts start with the same tokens share
 * the K/V blocks of that start, and a finished request's blocks stay cached for the next one.
 *
 * What it teaches: a full block's K/V depend only on the tokens up to its end, so a block can be
 * named by them: name(j) = FNV-1a(name(j - 1), the bs tokens of block j), name(-1) = 0. The pool
 * keeps a table name -> block (open addressing, linear probing, at most half full); a later
 * sequence hashes its prompt block by block and shares every block it finds (vLLM's automatic
 * prefix caching; SGLang's RadixAttention keeps the same map as a radix tree over the tokens).
 * A name is only a hash: a lookup also compares the block's stored tokens, and the serial of the
 * block it follows, so that a collision never shares wrong K/V. A named block whose last holder
 * lets it go is not emptied: it joins a list of cached blocks, least recently used first, and an
 * allocation that finds no empty block evicts the head of that list.
 *
 * Serials: each naming gets the next number (1, 2, ...; 0 = unnamed). A named block stores its
 * parent's serial, and a match follows only a child whose parent serial is the block matched just
 * before it -- a name alone could be reached from another prefix with a colliding name, and an
 * evicted parent's children become unreachable, however its block is reused.
 */
#include "05_paged/paged.h"

#include <string.h>

#include "05_paged/prefix_internal.h"
#include "common/error.h"
#include "common/tensor.h"

struct PagedPrefix {
    int bs, num_blocks;
    uint64_t mask;           /* names keep these bits (paged_prefix_set_hash_bits) */
    uint64_t last_serial;    /* the last naming's serial */
    uint64_t *name;          /* (num_blocks) each block's name, where serial != 0 */
    uint64_t *parent_name;   /* (num_blocks) the name of the block it follows (0 for a first block) */
    uint64_t *serial;        /* (num_blocks) the serial of its naming; 0 = unnamed */
    uint64_t *parent_serial; /* (num_blocks) the serial of the block it follows; 0 = a first block */
    int *tokens;             /* (num_blocks, bs) the tokens a named block holds */
    int *lru_prev, *lru_next; /* (num_blocks) the cached blocks, least recently used first; -1 ends */
    int lru_head, lru_tail;
    int *table;     /* (table_cap) block ids by name, -1 = an empty slot */
    int table_cap;  /* a power of two >= 2 * num_blocks */
    int n_named;    /* blocks holding a name = entries in the table */
};

/* ==== names ====================================================================================== */

enum { FNV_BYTES_NAME = 8, FNV_BYTES_TOKEN = 4 };
static const uint64_t FNV_OFFSET = 14695981039346656037ULL, FNV_PRIME = 1099511628211ULL;

static uint64_t fnv1a(uint64_t h, uint64_t x, int bytes)
{
    for (int i = 0; i < bytes; i++)
        h = (h ^ ((x >> (8 * i)) & 0xff)) * FNV_PRIME;
    return h;
}

/* name(j) from name(j - 1) and block j's bs tokens, cut to the pool's bits */
static uint64_t block_name(const PagedPrefix *x, uint64_t parent, const int *tokens)
{
    uint64_t h = fnv1a(FNV_OFFSET, parent, FNV_BYTES_NAME);
    for (int t = 0; t < x->bs; t++)
        h = fnv1a(h, (uint32_t)tokens[t], FNV_BYTES_TOKEN);
    return h & x->mask;
}

/* the home slot of a name: its bits mixed (splitmix64's finalizer), so cut names still spread */
static size_t home_slot(const PagedPrefix *x, uint64_t name)
{
    name ^= name >> 30, name *= 0xbf58476d1ce4e5b9ULL;
    name ^= name >> 27, name *= 0x94d049bb133111ebULL;
    name ^= name >> 31;
    return (size_t)(name & (uint64_t)(x->table_cap - 1));
}

static int same_tokens(const PagedPrefix *x, int id, const int *tokens)
{
    return memcmp(x->tokens + (size_t)id * x->bs, tokens, (size_t)x->bs * sizeof(int)) == 0;
}

/* ==== the table name -> block ======================================================================= */

static int table_find(const PagedPrefix *x, uint64_t name)
{
    const size_t m = (size_t)x->table_cap - 1;
    for (size_t i = home_slot(x, name);; i = (i + 1) & m) {
        const int id = x->table[i];
        if (id < 0 || x->name[id] == name)
            return id;
    }
}

static void table_insert(PagedPrefix *x, int id)
{
    const size_t m = (size_t)x->table_cap - 1;
    size_t i = home_slot(x, x->name[id]);
    while (x->table[i] >= 0)
        i = (i + 1) & m;
    x->table[i] = id;
}

/* Removes block id's entry; the entries after it in its run move back into the hole when their
 * home slot allows (backward-shift deletion: no tombstones, every lookup stays a plain probe). */
static void table_remove(PagedPrefix *x, int id)
{
    const size_t m = (size_t)x->table_cap - 1;
    size_t hole = home_slot(x, x->name[id]);
    while (x->table[hole] != id)
        hole = (hole + 1) & m;
    x->table[hole] = -1;
    for (size_t j = (hole + 1) & m; x->table[j] >= 0; j = (j + 1) & m) {
        const size_t home = home_slot(x, x->name[x->table[j]]);
        /* the entry stays when its home lies cyclically in (hole, j] */
        const int stays = hole < j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays)
            x->table[hole] = x->table[j], x->table[j] = -1, hole = j;
    }
}

/* Names block id (its K/V hold tokens after the prefix `parent`) and enters it in the table. */
static uint64_t name_block(PagedPrefix *x, int id, PagedName parent, uint64_t name, const int *tokens)
{
    x->name[id] = name, x->parent_name[id] = parent.name, x->parent_serial[id] = parent.serial;
    x->serial[id] = ++x->last_serial;
    memcpy(x->tokens + (size_t)id * x->bs, tokens, (size_t)x->bs * sizeof(int));
    table_insert(x, id);
    x->n_named++;
    return x->serial[id];
}

static void forget_name(PagedPrefix *x, int id)
{
    table_remove(x, id);
    x->serial[id] = 0;
    x->n_named--;
}

/* ==== the list of cached blocks, least recently used first ======================================== */

static void lru_unlink(PagedPrefix *x, int id)
{
    const int a = x->lru_prev[id], b = x->lru_next[id];
    if (a >= 0)
        x->lru_next[a] = b;
    else
        x->lru_head = b;
    if (b >= 0)
        x->lru_prev[b] = a;
    else
        x->lru_tail = a;
    x->lru_prev[id] = x->lru_next[id] = -1;
}

int paged_prefix_cache(PagedPool *p, int id)
{
    PagedPrefix *x = p->prefix;
    if (!x || x->serial[id] == 0)
        return 0;
    x->lru_prev[id] = x->lru_tail, x->lru_next[id] = -1; /* the most recently used */
    if (x->lru_tail >= 0)
        x->lru_next[x->lru_tail] = id;
    else
        x->lru_head = id;
    x->lru_tail = id;
    p->n_cached++;
    return 1;
}

int paged_prefix_evict(PagedPool *p)
{
    PagedPrefix *x = p->prefix;
    const int id = x->lru_head;
    lru_unlink(x, id);
    forget_name(x, id);
    p->n_cached--;
    p->n_evictions++;
    return id;
}

void paged_prefix_before_write(PagedPool *p, int id)
{
    if (p->prefix && p->prefix->serial[id] != 0 && p->ref[id] == 1)
        forget_name(p->prefix, id);
}

/* ==== turning it on and off ========================================================================= */

int paged_prefix_enable(PagedPool *p)
{
    if (p->prefix)
        return 0;
    if (p->n_free != p->num_blocks)
        return error_set("prefix caching is turned on before the pool hands out blocks (%d in use)",
                         paged_pool_used(p));
    if (p->num_blocks > (1 << 29))
        return error_set("prefix caching: %d blocks are too many for the name table (at most 2^29)", p->num_blocks);
    PagedPrefix *x = mem_alloc(sizeof *x, "prefix caching's state");
    if (!x)
        return -1;
    const size_t n = (size_t)p->num_blocks;
    int cap = 2;
    while (cap < 2 * p->num_blocks)
        cap *= 2;
    *x = (PagedPrefix){.bs = p->block_size, .num_blocks = p->num_blocks, .mask = ~0ULL, .lru_head = -1,
                       .lru_tail = -1, .table_cap = cap};
    p->prefix = x; /* from here paged_prefix_free releases whatever was allocated */
    x->name = mem_alloc(n * sizeof(uint64_t), "block names (num_blocks)");
    x->parent_name = x->name ? mem_alloc(n * sizeof(uint64_t), "parent names (num_blocks)") : NULL;
    x->serial = x->parent_name ? mem_alloc(n * sizeof(uint64_t), "naming serials (num_blocks)") : NULL;
    x->parent_serial = x->serial ? mem_alloc(n * sizeof(uint64_t), "parent serials (num_blocks)") : NULL;
    x->tokens = x->parent_serial ? mem_alloc(n * x->bs * sizeof(int), "named blocks' tokens (num_blocks, bs)") : NULL;
    x->lru_prev = x->tokens ? mem_alloc(n * sizeof(int), "cached list, previous (num_blocks)") : NULL;
    x->lru_next = x->lru_prev ? mem_alloc(n * sizeof(int), "cached list, next (num_blocks)") : NULL;
    x->table = x->lru_next ? mem_alloc((size_t)cap * sizeof(int), "the name table (2 * num_blocks)") : NULL;
    if (!x->table) {
        paged_prefix_free(p);
        return -1;
    }
    memset(x->serial, 0, n * sizeof(uint64_t));
    for (size_t i = 0; i < n; i++)
        x->lru_prev[i] = x->lru_next[i] = -1;
    for (int i = 0; i < cap; i++)
        x->table[i] = -1;
    return 0;
}

void paged_prefix_free(PagedPool *p)
{
    PagedPrefix *x = p->prefix;
    if (!x)
        return;
    mem_free(x->name), mem_free(x->parent_name), mem_free(x->serial), mem_free(x->parent_serial);
    mem_free(x->tokens), mem_free(x->lru_prev), mem_free(x->lru_next), mem_free(x->table);
    mem_free(x);
    p->prefix = NULL;
}

void paged_prefix_set_hash_bits(PagedPool *p, int bits)
{
    if (p->prefix)
        p->prefix->mask = bits >= 64 || bits < 1 ? ~0ULL : (1ULL << bits) - 1;
}

int paged_prefix_named(const PagedPool *p, int id)
{
    return p->prefix && id >= 0 && id < p->num_blocks && p->prefix->serial[id] != 0;
}

int paged_prefix_lru(const PagedPool *p, int *ids, int max)
{
    int n = 0;
    for (int id = p->prefix ? p->prefix->lru_head : -1; id >= 0 && n < max; id = p->prefix->lru_next[id])
        ids[n++] = id;
    return n;
}

/* ==== match and publish ============================================================================= */

/* The block the pool holds for block `tokens` after the prefix `parent`, its name in *name; -1. */
static int find_block(const PagedPrefix *x, PagedName parent, const int *tokens, uint64_t *name)
{
    *name = block_name(x, parent.name, tokens);
    const int id = table_find(x, *name);
    return id >= 0 && x->parent_serial[id] == parent.serial && same_tokens(x, id, tokens) ? id : -1;
}

int paged_prefix_match(PagedPool *p, PagedSeq *s, const int *tokens, int n)
{
    const PagedPrefix *x = p->prefix;
    if (!x)
        return 0;
    if (paged_seq_check_pool(p, s) != 0)
        return -1;
    if (s->len != 0 || s->n_blocks != 0)
        return error_set("prefix match into a sequence that already holds %d tokens", s->len);
    const int bs = p->block_size, most = n > 0 ? (n - 1) / bs : 0; /* the last token is always computed */
    PagedName at = {.name = 0, .serial = 0};
    int k = 0; /* first the length of the match, nothing changed */
    for (uint64_t name; k < most; k++) {
        const int id = find_block(x, at, tokens + (size_t)k * bs, &name);
        if (id < 0)
            break;
        at = (PagedName){.name = name, .serial = x->serial[id]};
    }
    if (k == 0)
        return 0;
    if (paged_seq_reserve(p, s, k) != 0)
        return -1;
    at = (PagedName){.name = 0, .serial = 0};
    for (int j = 0; j < k; j++) {
        uint64_t name;
        const int id = find_block(x, at, tokens + (size_t)j * bs, &name);
        if (p->ref[id]++ == 0) { /* a cached block is in use again */
            lru_unlink(p->prefix, id);
            p->n_cached--, p->n_free--;
        }
        at = (PagedName){.name = name, .serial = x->serial[id]};
        s->blocks[j] = id, s->names[j] = at;
    }
    const int used = paged_pool_used(p);
    p->peak_used = used > p->peak_used ? used : p->peak_used;
    s->pool = p->serial, s->len = k * bs, s->n_blocks = s->n_named = k;
    p->n_prefix_hits += (size_t)k;
    return k * bs;
}

/* The serial under which the pool holds s's block `id` (tokens after `parent`, name `name`):
 * its own naming (new or earlier), another block's with the same tokens, or 0 when the name is
 * taken by different tokens (a collision: the block stays unnamed, and so do the ones after). */
static uint64_t publish_block(PagedPrefix *x, int id, PagedName parent, uint64_t name, const int *tokens)
{
    if (x->serial[id] != 0) /* named already: another table holding it published it */
        return x->name[id] == name && x->parent_serial[id] == parent.serial && same_tokens(x, id, tokens)
                   ? x->serial[id]
                   : 0;
    const int other = table_find(x, name);
    if (other >= 0) /* the first block named so stays the one found */
        return x->parent_serial[other] == parent.serial && same_tokens(x, other, tokens) ? x->serial[other] : 0;
    return name_block(x, id, parent, name, tokens);
}

int paged_prefix_publish(PagedPool *p, PagedSeq *s, const int *tokens, int n_written)
{
    PagedPrefix *x = p->prefix;
    if (!x)
        return 0;
    if (paged_seq_check_pool(p, s) != 0)
        return -1;
    if (n_written < 0)
        return error_set("prefix publish of %d written tokens", n_written);
    const int bs = p->block_size, full = (n_written < s->len ? n_written : s->len) / bs;
    if (full > s->n_named && !s->names)
        return error_set("prefix publish: the table has no names (its blocks came before prefix caching)");
    for (int j = s->n_named; j < full; j++) {
        const PagedName parent = j ? s->names[j - 1] : (PagedName){.name = 0, .serial = 0};
        const int *tok = tokens + (size_t)j * bs;
        const uint64_t name = block_name(x, parent.name, tok);
        /* after a block with no shareable prefix (serial 0) nothing can be shared */
        const uint64_t serial = j == 0 || parent.serial != 0 ? publish_block(x, s->blocks[j], parent, name, tok) : 0;
        s->names[j] = (PagedName){.name = name, .serial = serial};
    }
    if (full > s->n_named)
        s->n_named = full;
    return 0;
}

/* ==== invariants ==================================================================================== */

/* The list of cached blocks: linked both ways, named blocks of ref 0 only, once each, n_cached of
 * them; then every named block of ref 0 is on it. */
static int check_lru(const PagedPool *p, char *on_list)
{
    const PagedPrefix *x = p->prefix;
    int n = 0, prev = -1;
    for (int id = x->lru_head; id >= 0; prev = id, id = x->lru_next[id], n++) {
        if (id >= p->num_blocks || n >= p->num_blocks || on_list[id]++)
            return error_set("cached list entry %d: block %d is invalid or listed twice", n, id);
        if (x->lru_prev[id] != prev)
            return error_set("cached list entry %d: block %d's back link is %d, not %d", n, id, x->lru_prev[id], prev);
        if (p->ref[id] != 0 || x->serial[id] == 0)
            return error_set("cached block %d has reference count %d and %s name", id, p->ref[id],
                             x->serial[id] ? "a" : "no");
    }
    if (x->lru_tail != prev)
        return error_set("the cached list ends at block %d but its tail is %d", prev, x->lru_tail);
    if (n != p->n_cached)
        return error_set("%d cached blocks listed, n_cached %d", n, p->n_cached);
    for (int id = 0; id < p->num_blocks; id++)
        if (p->ref[id] == 0 && x->serial[id] != 0 && !on_list[id])
            return error_set("block %d is named with reference count 0 but not on the cached list", id);
    return 0;
}

/* The table: each entry a named block, found under its name, whose tokens and parent name hash to
 * it; as many entries as names; no empty block (on the stack) holds a name. */
static int check_table(const PagedPool *p)
{
    const PagedPrefix *x = p->prefix;
    int entries = 0, named = 0;
    for (int i = 0; i < x->table_cap; i++) {
        const int id = x->table[i];
        if (id < 0)
            continue;
        entries++;
        if (id >= p->num_blocks || x->serial[id] == 0)
            return error_set("name table slot %d: block %d is invalid or unnamed", i, id);
        if (table_find(x, x->name[id]) != id)
            return error_set("block %d is not found under its own name", id);
        if (block_name(x, x->parent_name[id], x->tokens + (size_t)id * x->bs) != x->name[id])
            return error_set("block %d: its tokens and parent name do not hash to its name", id);
    }
    for (int id = 0; id < p->num_blocks; id++)
        named += x->serial[id] != 0;
    if (entries != named || named != x->n_named)
        return error_set("%d table entries, %d named blocks, %d counted", entries, named, x->n_named);
    for (int f = 0; f < p->n_free - p->n_cached; f++)
        if (x->serial[p->free_ids[f]] != 0)
            return error_set("empty block %d (on the free stack) holds a name", p->free_ids[f]);
    return 0;
}

/* Each table's names: only full blocks, and a named block it holds carries the name it computed. */
static int check_seq_names(const PagedPool *p, PagedSeq *const *seqs, int n_seqs)
{
    const PagedPrefix *x = p->prefix;
    for (int i = 0; i < n_seqs; i++) {
        const PagedSeq *s = seqs[i];
        if (s->n_named < 0 || s->n_named > s->len / p->block_size || (s->n_named > 0 && !s->names))
            return error_set("table %d: %d named blocks for %d tokens", i, s->n_named, s->len);
        for (int j = 0; j < s->n_named; j++) {
            const int id = s->blocks[j];
            if (x->serial[id] != 0 && x->name[id] != s->names[j].name)
                return error_set("table %d, logical block %d: block %d's name is not the table's", i, j, id);
        }
    }
    return 0;
}

int paged_prefix_check(const PagedPool *p, PagedSeq *const *seqs, int n_seqs)
{
    if (!p->prefix)
        return p->n_cached == 0 ? 0 : error_set("%d cached blocks with prefix caching off", p->n_cached);
    if (p->n_cached < 0 || p->n_cached > p->n_free)
        return error_set("cached count %d outside 0..%d (the free count)", p->n_cached, p->n_free);
    char *on_list = mem_alloc((size_t)p->num_blocks, "blocks on the cached list (num_blocks)");
    if (!on_list)
        return -1;
    memset(on_list, 0, (size_t)p->num_blocks);
    int rc = check_lru(p, on_list);
    mem_free(on_list);
    if (rc == 0)
        rc = check_table(p);
    return rc == 0 ? check_seq_names(p, seqs, n_seqs) : rc;
}
