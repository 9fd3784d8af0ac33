/*
 * live_view.c: the live engine (live.c) seen from outside, for the server's page (page.html):
 * the sequences with their phase and block table, the pool's blocks, and the last iterations'
 * columns of the iteration x sequence grid.
 *
 * What it teaches: everything the page draws is state the engine keeps anyway -- block tables and
 * reference counts (chapter 05's pool), the queues and each sequence's progress (the scheduler),
 * each iteration's decisions (the grid column engine_record_cells writes for the lesson's grid).
 * Reading it costs nothing while nobody looks; the one thing added is a ring of the last
 * ENGINE_LIVE_HISTORY columns, labelled by request number rather than slot, since slots are
 * reused by later requests.
 */
#include "06_batching/engine.h"

#include <string.h>

#include "06_batching/engine_internal.h"
#include "common/error.h"
#include "common/tensor.h"

int engine_live_open_view(EngineLive *l)
{
    const size_t n = (size_t)l->e.n, H = ENGINE_LIVE_HISTORY;
    l->tag = mem_alloc(n * sizeof(long), "request numbers (capacity)");
    l->hist = mem_alloc(H * n * sizeof(EngineLiveCell), "the grid's last columns (history, capacity)");
    l->hist_n = mem_alloc(H * sizeof(int), "cells per column");
    l->hist_it = mem_alloc(H * sizeof(long), "iteration per column");
    if (!l->tag || !l->hist || !l->hist_n || !l->hist_it)
        return -1;
    memset(l->tag, 0, n * sizeof(long));
    l->submitted = 0, l->n_hist = 0;
    return 0;
}

void engine_live_close_view(EngineLive *l)
{
    mem_free(l->tag), mem_free(l->hist), mem_free(l->hist_n), mem_free(l->hist_it);
    l->tag = NULL, l->hist = NULL, l->hist_n = NULL, l->hist_it = NULL;
}

int engine_live_trace(void *ctx, int iteration, const EngineCell *cells, int n)
{
    EngineLive *l = ctx;
    const long slot = l->n_hist % ENGINE_LIVE_HISTORY;
    EngineLiveCell *col = l->hist + slot * l->e.n;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (cells[i].state != ENGINE_CELL_NONE && l->used[i])
            col[k++] = (EngineLiveCell){.tag = l->tag[i], .state = cells[i].state, .tokens = cells[i].tokens};
    l->hist_n[slot] = k, l->hist_it[slot] = iteration;
    l->n_hist++;
    return 0;
}

int engine_live_history(const EngineLive *l, int back, long *iteration, const EngineLiveCell **cells)
{
    if (back < 0 || back >= ENGINE_LIVE_HISTORY || back >= l->n_hist)
        return -1;
    const long slot = (l->n_hist - 1 - back) % ENGINE_LIVE_HISTORY;
    *iteration = l->hist_it[slot];
    *cells = l->hist + slot * l->e.n;
    return l->hist_n[slot];
}

long engine_live_tag(const EngineLive *l, int slot)
{
    return slot >= 0 && slot < l->e.n && l->used[slot] ? l->tag[slot] : 0;
}

/* What the last iteration did with request `tag` (ENGINE_CELL_NONE: nothing recorded). A sequence's
 * chunk is reset once its tokens are computed, so the grid's last column is where this is kept. */
static EngineCellState last_cell(const EngineLive *l, long tag)
{
    long it;
    const EngineLiveCell *col;
    const int n = engine_live_history(l, 0, &it, &col);
    for (int k = 0; k < n; k++)
        if (col[k].tag == tag)
            return col[k].state;
    return ENGINE_CELL_NONE;
}

/* Sequence i of the engine as the page shows it. */
static EngineLiveSeq view_of(const EngineLive *l, int i)
{
    const Engine *e = &l->e;
    const Seq *s = &e->s[i];
    EngineLiveSeqPhase ph = LIVE_SEQ_STALLED;
    if (s->phase == PH_WAITING) {
        ph = s->preemptions > 0 ? LIVE_SEQ_PREEMPTED : LIVE_SEQ_WAITING;
    } else {
        const EngineCellState c = last_cell(l, l->tag[i]);
        ph = c == ENGINE_CELL_DECODE                                   ? LIVE_SEQ_DECODE
             : c == ENGINE_CELL_PREFILL || c == ENGINE_CELL_RECOMPUTE ? LIVE_SEQ_PREFILL
                                                                       : LIVE_SEQ_STALLED;
    }
    return (EngineLiveSeq){.tag = l->tag[i], .phase = ph, .n_prompt = e->reqs[i].n_prompt,
                           .n_generated = s->n_generated, .max_new = e->reqs[i].max_new,
                           .n_computed = s->n_computed, .preemptions = s->preemptions, .blocks = s->seq.blocks,
                           .n_blocks = s->seq.n_blocks};
}

int engine_live_seqs(const EngineLive *l, EngineLiveSeq *out, int max)
{
    const Engine *e = &l->e;
    int k = 0;
    for (int j = 0; j < e->n_running; j++, k++)
        if (k < max)
            out[k] = view_of(l, e->running[j]);
    for (int j = 0; j < e->n_waiting; j++, k++)
        if (k < max)
            out[k] = view_of(l, e->waiting[j]);
    return k;
}

const PagedPool *engine_live_pool(const EngineLive *l, unsigned char *cached)
{
    const PagedPool *p = &l->e.pool;
    if (cached) { /* ref 0 and not among the empty blocks (free_ids[0 .. n_free - n_cached)): cached */
        for (int b = 0; b < p->num_blocks; b++)
            cached[b] = p->ref[b] == 0;
        for (int f = 0; f < p->n_free - p->n_cached; f++)
            cached[p->free_ids[f]] = 0;
    }
    return p;
}
