/*
 * server_state.c: the engine as the live page sees it -- GET /state's JSON, and the page itself.
 *
 * What it teaches: a picture of continuous batching needs nothing the engine does not keep
 * already (live_view.c reads it): which request owns each physical block and how many tables
 * share it, which blocks are cached for their prefix, who runs and who waits with which block
 * table, and what each of the last iterations did. The engine thread writes it down after an
 * iteration (under the mutex, at most ten times a second, and only while a page has asked in the
 * last 5 s), so that watching costs the engine almost nothing; every poll gets the latest copy.
 *
 * The JSON (docs/contracts.md §1.10):
 *   t, iteration, running, waiting, blocks_used, blocks_cached, num_blocks, block_size,
 *   tokens_out, completed, preemptions, ttft_sum, ttft_count, itl_sum, itl_count,
 *   pool: {ref: [per block: tables holding it, -1 cached], owner: [per block: the request number
 *          of the first running table holding it, 0 none]},
 *   seqs: [{tag, queue ("running"|"waiting"), phase, prompt, generated, max_new, computed,
 *           preemptions, blocks: [physical ids]}],
 *   iterations: [{i, cells: [[tag, state letter, tokens], ...]}, ...] oldest first,
 *   with the state letters W waiting, S stalled, P prefill, D decode, R recompute, X preempted,
 *   _ padding.
 */
#include "06_batching/server.h"

#if HAVE_SERVER
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#define STATE_MIN_INTERVAL_S 0.1 /* at most ten builds a second */
#define STATE_WATCHED_S 5.0      /* a page that polled within this is watching */

static const char *const PHASES[] = {"waiting", "preempted", "prefill", "decode", "stalled"};
static const char CELL_LETTERS[ENGINE_CELL_STATES + 1] = "-WSPDRX_";

/* pool: {ref, owner}: per block its reference count (-1: cached) and the first running owner. */
static json_t *pool_json(const Server *s, const EngineLiveSeq *seqs, int n_running)
{
    const PagedPool *p = engine_live_pool(s->live, NULL);
    const int N = p->num_blocks;
    unsigned char *cached = malloc((size_t)N + 1);
    long *owner = calloc((size_t)N + 1, sizeof(long));
    json_t *ref = json_array(), *own = json_array();
    if (cached && owner && ref && own) {
        engine_live_pool(s->live, cached);
        for (int k = n_running - 1; k >= 0; k--) /* the first running table wins: written last */
            for (int j = 0; j < seqs[k].n_blocks; j++)
                owner[seqs[k].blocks[j]] = seqs[k].tag;
        for (int b = 0; b < N; b++) {
            json_array_append_new(ref, json_integer(cached[b] ? -1 : p->ref[b]));
            json_array_append_new(own, json_integer(owner[b]));
        }
    }
    free(cached), free(owner);
    return json_pack("{s:o*, s:o*}", "ref", ref, "owner", own);
}

static json_t *seq_json(const EngineLiveSeq *q, int running)
{
    json_t *blocks = json_array();
    for (int j = 0; j < q->n_blocks && blocks; j++)
        json_array_append_new(blocks, json_integer(q->blocks[j]));
    return json_pack("{s:I, s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:o*}", "tag", (json_int_t)q->tag, "queue",
                     running ? "running" : "waiting", "phase", PHASES[q->phase], "prompt", q->n_prompt, "generated",
                     q->n_generated, "max_new", q->max_new, "computed", q->n_computed, "preemptions", q->preemptions,
                     "blocks", blocks);
}

/* iterations: the grid's last columns, oldest first. */
static json_t *history_json(const Server *s)
{
    json_t *cols = json_array();
    for (int back = ENGINE_LIVE_HISTORY - 1; back >= 0 && cols; back--) {
        long it;
        const EngineLiveCell *c;
        const int n = engine_live_history(s->live, back, &it, &c);
        if (n < 0)
            continue;
        json_t *cells = json_array();
        for (int k = 0; k < n && cells; k++) {
            const char letter[2] = {CELL_LETTERS[c[k].state], '\0'};
            json_array_append_new(cells, json_pack("[I, s, i]", (json_int_t)c[k].tag, letter, c[k].tokens));
        }
        json_array_append_new(cols, json_pack("{s:I, s:o*}", "i", (json_int_t)it, "cells", cells));
    }
    return cols;
}

/* The whole state, or NULL out of memory. */
static char *build(Server *s)
{
    const EngineLiveStats *st = &s->stats;
    const int cap = s->capacity;
    EngineLiveSeq *seqs = malloc((size_t)cap * sizeof *seqs);
    if (!seqs)
        return NULL;
    const int n = engine_live_seqs(s->live, seqs, cap), shown = n < cap ? n : cap;
    json_t *list = json_array();
    for (int k = 0; k < shown && list; k++)
        json_array_append_new(list, seq_json(&seqs[k], k < st->running));
    json_t *root = json_pack(
        "{s:f, s:I, s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I, s:I, s:f, s:I, s:f, s:I, s:o*, s:o*, s:o*}", "t",
        server_now(s), "iteration", (json_int_t)st->iterations, "running", st->running, "waiting", st->waiting,
        "blocks_used", st->blocks_used, "blocks_cached", st->blocks_cached, "num_blocks", st->num_blocks, "block_size",
        s->o.block_size, "tokens_out", (json_int_t)s->tokens_out, "completed", (json_int_t)st->completed,
        "preemptions", (json_int_t)st->preemptions, "ttft_sum", s->ttft.sum, "ttft_count", (json_int_t)s->ttft.total,
        "itl_sum", s->itl.sum, "itl_count", (json_int_t)s->itl.total, "pool", pool_json(s, seqs, st->running), "seqs",
        list, "iterations", history_json(s));
    free(seqs);
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return text;
}

void server_state_refresh(Server *s, int force)
{
    const double now = server_now(s);
    const int watched = now - s->state_wanted_at < STATE_WATCHED_S && s->state_wanted_at > 0;
    if (!force && (!watched || now - s->state_at < STATE_MIN_INTERVAL_S))
        return;
    char *text = build(s);
    if (!text) /* out of memory: the last state stays */
        return;
    free(s->state_json);
    s->state_json = text, s->state_at = now;
}

char *server_state_get(Server *s)
{
    pthread_mutex_lock(&s->mu);
    s->state_wanted_at = server_now(s);
    char *copy = s->state_json ? strdup(s->state_json) : NULL;
    pthread_mutex_unlock(&s->mu);
    return copy;
}

/* ==== the page, compiled in ===================================================================== */

/* page.html's bytes and a NUL, placed in the program by the assembler (the Makefile rebuilds this
 * file when page.html changes). */
__asm__(".section .rodata\n"
        ".balign 16\n"
        ".global server_page_start, server_page_end\n"
        ".hidden server_page_start, server_page_end\n"
        "server_page_start:\n"
        ".incbin \"06_batching/page.html\"\n"
        "server_page_end:\n"
        ".byte 0\n"
        ".previous\n");
extern const char server_page_start[] __attribute__((visibility("hidden")));
extern const char server_page_end[] __attribute__((visibility("hidden")));

const char *server_page_html(size_t *n)
{
    *n = (size_t)(server_page_end - server_page_start);
    return server_page_start;
}

#endif
