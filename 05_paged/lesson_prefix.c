/*
 * lesson_prefix.c: the lesson's prefix-caching section -- requests that start with the same
 * system prompt share its blocks, finished requests leave their named blocks cached for the next
 * one, and memory pressure evicts cached blocks least recently used first. Every block id, ref
 * count and list printed is read from the pool (prefix.c); the requests' token ids are the
 * lesson's own.
 */
#include <stdio.h>
#include <string.h>

#include "05_paged/commands.h"
#include "05_paged/paged.h"
#include "common/error.h"

enum { LP_BS = 4, LP_BLOCKS = 12, LP_MAX_TOK = 48 };

typedef struct {
    char name;
    int tok[LP_MAX_TOK]; /* the request's token ids */
    int n;
    PagedSeq s;
} LessonReq;

/* the last tokens seen in each block (kept after the block is let go, so a cached block shows what
 * it still holds) */
static int shown[LP_BLOCKS][LP_BS], shown_n[LP_BLOCKS];

static void remember_tokens(const LessonReq *r)
{
    for (int b = 0; b < r->s.n_blocks; b++) {
        const int id = r->s.blocks[b], n = r->s.len - b * LP_BS < LP_BS ? r->s.len - b * LP_BS : LP_BS;
        memcpy(shown[id], r->tok + b * LP_BS, (size_t)n * sizeof(int));
        shown_n[id] = n;
    }
}

/* One line per block that is in use or cached; the empty ones counted on one line. */
static void draw_blocks(const PagedPool *p, LessonReq *const *reqs, int n_reqs)
{
    int empty = 0;
    for (int id = 0; id < p->num_blocks; id++) {
        const int named = paged_prefix_named(p, id);
        if (p->ref[id] == 0 && !named) {
            empty++;
            continue;
        }
        printf("     #%02d  ref %d  %-7s |", id, p->ref[id], p->ref[id] == 0 ? "cached" : named ? "named" : "");
        for (int t = 0; t < LP_BS; t++)
            if (t < shown_n[id])
                printf(" %2d", shown[id][t]);
            else
                printf("  .");
        printf(" |");
        for (int r = 0; r < n_reqs; r++)
            for (int b = 0; b < reqs[r]->s.n_blocks; b++)
                if (reqs[r]->s.blocks[b] == id)
                    printf(" %c:%d", reqs[r]->name, b);
        printf("\n");
    }
    printf("     and %d empty blocks\n", empty);
    for (int r = 0; r < n_reqs; r++) {
        printf("     table %c (%2d tokens):", reqs[r]->name, reqs[r]->s.len);
        for (int b = 0; b < reqs[r]->s.n_blocks; b++)
            printf(" %d->#%02d", b, reqs[r]->s.blocks[b]);
        printf("\n");
    }
}

static void print_lru(const PagedPool *p, const char *before)
{
    int ids[LP_BLOCKS];
    const int n = paged_prefix_lru(p, ids, LP_BLOCKS);
    printf("%scached blocks, least recently used first:", before);
    for (int i = 0; i < n; i++)
        printf(" #%02d", ids[i]);
    printf("%s\n", n ? "" : " none");
}

/* A request arrives: the blocks of its prompt's cached prefix are shared, the rest computed (here:
 * appended), and its full blocks named. Returns the tokens found cached. */
static int lesson_admit(PagedPool *p, LessonReq *r)
{
    const int shared = paged_prefix_match(p, &r->s, r->tok, r->n);
    if (shared < 0 || paged_seq_append(p, &r->s, r->n - shared) != 0 ||
        paged_prefix_publish(p, &r->s, r->tok, r->n) != 0)
        die_with_error();
    remember_tokens(r);
    return shared;
}

static void lesson_request(LessonReq *r, char name, const int *system, int n_system, int first, int n_own)
{
    memset(r, 0, sizeof *r);
    r->name = name;
    memcpy(r->tok, system, (size_t)n_system * sizeof(int));
    for (int t = 0; t < n_own; t++)
        r->tok[n_system + t] = first + t;
    r->n = n_system + n_own;
    paged_seq_init(&r->s);
}

static void check_or_die(const PagedPool *p, LessonReq *const *reqs, int n)
{
    PagedSeq *seqs[4];
    for (int i = 0; i < n; i++)
        seqs[i] = &reqs[i]->s;
    if (paged_check(p, seqs, n) != 0)
        die_with_error();
}

/* C arrives after A and B finished, then D, a long request, when empty blocks run short. */
static void lesson_prefix_pressure(PagedPool *p, LessonReq *c, LessonReq *d)
{
    const int c_shared = lesson_admit(p, c);
    printf("\n   C arrives after both finished, with the same system prompt: %d tokens found cached (%d blocks\n"
           "   revived from the cache, ref 0 -> 1), %d computed.\n\n",
           c_shared, c_shared / LP_BS, c->n - c_shared);
    LessonReq *only_c[1] = {c};
    draw_blocks(p, only_c, 1);
    int before[LP_BLOCKS];
    const int n_before = paged_prefix_lru(p, before, LP_BLOCKS), empty = p->n_free - p->n_cached;
    const size_t ev0 = p->n_evictions;
    print_lru(p, "   ");
    const int need = paged_seq_blocks_needed(p, &d->s, d->n);
    lesson_admit(p, d);
    const int evicted = (int)(p->n_evictions - ev0);
    printf("\n   D (%d tokens of its own) needs %d blocks: %d empty ones, then %d evicted from the cache.\n", d->n,
           need, empty, evicted);
    int in_order = evicted <= n_before;
    for (int i = 0; i < evicted && in_order; i++) /* D's last blocks are the evicted ones, in order */
        in_order = d->s.blocks[need - evicted + i] == before[i];
    printf("   D's blocks %d..%d are", need - evicted, need - 1);
    for (int i = 0; i < evicted; i++)
        printf(" #%02d", d->s.blocks[need - evicted + i]);
    printf(": %s.\n\n", in_order ? "the cached blocks in least-recently-used order, their old names forgotten"
                                 : "not the head of the cached list");
    LessonReq *both[2] = {c, d};
    draw_blocks(p, both, 2);
    print_lru(p, "     ");
    check_or_die(p, both, 2);
}

void paged_lesson_prefix(void)
{
    PagedPool p;
    if (paged_pool_create(&p, 1, 1, 1, LP_BS, LP_BLOCKS) != 0 || paged_prefix_enable(&p) != 0)
        die_with_error();
    const int system[8] = {11, 12, 13, 14, 15, 16, 17, 18}; /* a system prompt of 2 blocks */
    LessonReq a, b, c, d;
    lesson_request(&a, 'A', system, 8, 21, 9);
    lesson_request(&b, 'B', system, 8, 31, 6);
    lesson_request(&c, 'C', system, 8, 41, 4);
    lesson_request(&d, 'D', system, 0, 51, 30);
    printf("5. Prefix caching. A pool of %d blocks of %d slots. Requests A (%d tokens) and B (%d) start with\n"
           "   the same system prompt of 8 tokens (ids 11..18). A full block is named by its tokens and the\n"
           "   name of the block before it; a request that arrives finds the named blocks of its prompt and\n"
           "   shares them (the last token is always computed, for its logits). Each line below: a block, its\n"
           "   reference count, whether it is named, the token ids its K/V belong to, and the tables holding it\n"
           "   (table:logical block).\n\n",
           LP_BLOCKS, LP_BS, a.n, b.n);
    const int a_shared = lesson_admit(&p, &a), b_shared = lesson_admit(&p, &b);
    printf("   A found %d tokens cached, B %d: B's table points at A's first %d blocks (ref %d).\n\n", a_shared,
           b_shared, b_shared / LP_BS, p.ref[b.s.blocks[0]]);
    LessonReq *ab[2] = {&a, &b};
    draw_blocks(&p, ab, 2);
    check_or_die(&p, ab, 2);
    paged_seq_free(&p, &a.s), paged_seq_free(&p, &b.s);
    printf("\n   A, then B finish. Their named blocks are not emptied: they stay cached (ref 0, %d of the %d\n"
           "   free blocks); the partly filled ones are empty again.\n",
           p.n_cached, p.n_free);
    print_lru(&p, "   ");
    lesson_prefix_pressure(&p, &c, &d);
    paged_seq_free(&p, &c.s), paged_seq_free(&p, &d.s);
    printf("\n   Counters: %zu blocks shared by name, %zu evicted; after freeing all: %d of %d free (%d cached).\n\n",
           p.n_prefix_hits, p.n_evictions, p.n_free, p.num_blocks, p.n_cached);
    paged_pool_free(&p);
}
