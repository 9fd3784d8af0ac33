/*
 * scheduler.c: chapter 06's scheduler -- who runs in each iteration, and with how many tokens.
 *
 * What it teaches: continuous batching is a decision taken again at every iteration, over a
 * queue (waiting) and a batch (running):
 *   (1) arrived requests join the queue, or are rejected at once if they can never run (too
 *       long for seq_len, an id outside the vocabulary, more blocks than the whole pool);
 *   (2) each running sequence, oldest first, gets its next tokens -- one to decode, or the next
 *       chunk of its prompt -- while the iteration's token budget lasts (chunked prefill);
 *       when the pool has no block for it, the most recently admitted sequence is preempted:
 *       its blocks go back and it waits at the front of the queue, keeping its tokens, to be
 *       recomputed later (preemption by recompute);
 *   (3) waiting requests are admitted first come, first served while the batch size, the
 *       budget and the free blocks allow; nobody overtakes the head of the queue. With prefix
 *       caching, an admitted sequence first shares the cached blocks of its longest computed
 *       prefix (chapter 05's paged_prefix_match): only the rest is prefilled and counted against
 *       the budget, and a preempted sequence whose blocks are still cached resumes from them.
 * Static batching is the same loop with (3) only when nothing runs, the whole queue at once.
 * Static-padded batching is request-level batching: a batch is a rectangle that moves in lockstep
 * (schedule_padded), and the slots of padding and of finished members are computed all the same.
 * After the forward, finished sequences leave and give their blocks back.
 * This is vLLM's scheduler in miniature (vllm/v1/core/sched/scheduler.py).
 */
#include <stdio.h>
#include <string.h>

#include "06_batching/engine_internal.h"
#include "common/error.h"

/* ==== queues ====================================================================================== */

static void queue_remove(int *q, int *n, int idx)
{
    for (int k = 0; k < *n; k++)
        if (q[k] == idx) {
            memmove(q + k, q + k + 1, (size_t)(*n - k - 1) * sizeof(int));
            (*n)--;
            return;
        }
}

/* Prefix caching: request i, about to be admitted, shares the cached blocks of its longest
 * computed prefix (paged_prefix_match over its known tokens: the prompt, or after a preemption the
 * prompt and the tokens it generated); those tokens count as computed and only the rest is
 * prefilled. Nothing happens when caching is off. 0, or -1 with an error recorded. */
static int prefix_match(Engine *e, int i)
{
    Seq *s = &e->s[i];
    if (!e->pool.prefix)
        return 0;
    const int reused = paged_prefix_match(&e->pool, &s->seq, s->tokens, s->n_tokens);
    if (reused < 0)
        return -1;
    s->n_computed = reused;
    return 0;
}

/* The head of the queue matched, then found no blocks for its chunk: the shared blocks go back
 * (to the cache, when nobody else holds them) and it waits as before. */
static void prefix_unmatch(Engine *e, int i)
{
    paged_seq_free(&e->pool, &e->s[i].seq);
    e->s[i].n_computed = 0;
}

static void admit(Engine *e, int i)
{
    Seq *s = &e->s[i];
    s->phase = PH_RUNNING, s->admitted = e->admissions++;
    e->running[e->n_running++] = i;
    if (e->pool.prefix) { /* the lookup counted once per admission, re-admissions included */
        e->met->prefix_looked_up += s->n_tokens, e->met->prefix_reused += s->n_computed;
        e->it_reused += s->n_computed;
    }
}

static void preempt(Engine *e, int i)
{
    Seq *s = &e->s[i];
    paged_seq_free(&e->pool, &s->seq); /* recompute later: the K/V are given back */
    s->n_computed = 0, s->chunk = 0, s->admitted = -1, s->phase = PH_WAITING;
    s->preemptions++, s->preempted_at = e->met->iterations;
    e->met->preemptions++;
    queue_remove(e->running, &e->n_running, i);
    memmove(e->waiting + 1, e->waiting, (size_t)e->n_waiting * sizeof(int)); /* front of the queue */
    e->waiting[0] = i;
    e->n_waiting++;
}

/* Insertion sort of the running list by admission (it is short and nearly sorted). */
static void sort_running(Engine *e)
{
    for (int k = 1; k < e->n_running; k++)
        for (int j = k; j > 0 && e->s[e->running[j - 1]].admitted > e->s[e->running[j]].admitted; j--) {
            const int t = e->running[j];
            e->running[j] = e->running[j - 1], e->running[j - 1] = t;
        }
}

/* ==== arrivals and aborts ========================================================================= */

int engine_request_fits(const Model *m, const EngineOptions *o, const EngineRequest *r, char *why, size_t len)
{
    const ModelConfig *c = &m->c;
    if ((long)r->n_prompt + r->max_new > c->seq_len) {
        snprintf(why, len, "prompt (%d tokens) + max_new (%d) exceeds the model's seq_len %d", r->n_prompt, r->max_new,
                 c->seq_len);
        return 0;
    }
    for (int t = 0; t < r->n_prompt; t++)
        if (r->prompt[t] < 0 || r->prompt[t] >= c->vocab_size) {
            snprintf(why, len, "prompt token %d is %d, outside the vocabulary (0..%d)", t, r->prompt[t],
                     c->vocab_size - 1);
            return 0;
        }
    const int need = paged_blocks_for_request(r->n_prompt, r->max_new, 1, o->block_size);
    if (need > o->num_blocks) {
        snprintf(why, len, "needs %d blocks of %d tokens at its longest, the pool has %d: it can never fit", need,
                 o->block_size, o->num_blocks);
        return 0;
    }
    return 1;
}

void engine_arrive(Engine *e, int i)
{
    const EngineRequest *r = &e->reqs[i];
    char why[192];
    if (r->rejected) /* the reader knew already (a text too long for seq_len) */
        snprintf(why, sizeof why, "%s", r->rejected);
    if (r->rejected || !engine_request_fits(e->m, &e->o, r, why, sizeof why)) {
        e->s[i].phase = PH_REJECTED, e->res[i].status = ENGINE_REJECTED;
        snprintf(e->res[i].reason, sizeof e->res[i].reason, "%s", why);
        e->met->rejected++, e->settled++;
    } else if (r->max_new == 0) { /* nothing to generate */
        e->s[i].phase = PH_DONE, e->settled++;
    } else {
        e->s[i].phase = PH_WAITING;
        e->waiting[e->n_waiting++] = i;
    }
}

void engine_take_arrivals(Engine *e)
{
    for (; e->next_arrival < e->n && e->reqs[e->order[e->next_arrival]].arrival <= e->clock; e->next_arrival++)
        engine_arrive(e, e->order[e->next_arrival]);
}

/* The client of request i went away: it leaves the queue or the batch where it is, and its
 * blocks go back to the pool at once (between iterations, so no chunk is in flight). */
static void abort_request(Engine *e, int i)
{
    Seq *s = &e->s[i];
    if (s->phase == PH_RUNNING)
        queue_remove(e->running, &e->n_running, i);
    else
        queue_remove(e->waiting, &e->n_waiting, i);
    paged_seq_free(&e->pool, &s->seq);
    s->n_computed = 0, s->chunk = 0, s->admitted = -1, s->phase = PH_ABORTED, s->finish_s = e->clock;
    e->met->aborted++;
    e->settled++;
}

void engine_take_aborts(Engine *e)
{
    for (int q = 0; q < 2; q++) { /* the running list, then the queue; backwards, as they shrink */
        const int *list = q ? e->waiting : e->running;
        for (int k = (q ? e->n_waiting : e->n_running) - 1; k >= 0; k--)
            if (e->reqs[list[k]].abort_at > 0 && e->reqs[list[k]].abort_at <= e->clock)
                abort_request(e, list[k]);
    }
}

/* ==== continuous and static ====================================================================== */

/* Step (2): running sequences, oldest first, get their next chunk while *budget lasts; blocks
 * are appended here, so each decision sees the pool as the earlier ones left it. The tokens
 * scheduled, or -1 with an error recorded. */
static int schedule_running(Engine *e, int *budget)
{
    int total = 0;
    sort_running(e);
    for (int k = 0; k < e->n_running && *budget > 0; k++) {
        const int i = e->running[k];
        Seq *s = &e->s[i];
        const int want = s->n_tokens - s->n_computed, chunk = want < *budget ? want : *budget;
        while (paged_seq_blocks_needed(&e->pool, &s->seq, chunk) > e->pool.n_free) {
            /* the most recently admitted sequence that is not scheduled yet: the last of the
             * sorted list (possibly s itself, which then waits) */
            const int victim = e->running[e->n_running - 1];
            preempt(e, victim);
            if (victim == i)
                break;
        }
        if (s->phase != PH_RUNNING)
            break; /* s was the newest: everything after it is gone too */
        if (paged_seq_append(&e->pool, &s->seq, chunk) != 0)
            return -1;
        s->chunk = chunk, *budget -= chunk, total += chunk;
    }
    return total;
}

/* ==== static-padded: request-level batching ====================================================== */

/* A new padded batch, when the last one is over: requests from the queue's head while the batch
 * has room (max_batch, and a decode slot per member within the budget) and the pool can hold every
 * member at its longest -- reserved now, as request-level servers did, so such a batch never
 * preempts. The width of the padded prompts is the longest prompt. */
static void padded_admit(Engine *e)
{
    for (int k = 0; k < e->n_members; k++)
        e->s[e->members[k]].pad = 0;
    e->n_members = 0, e->pad_col = 0, e->pad_width = 0;
    const int room = e->o.max_batch < e->o.max_tokens ? e->o.max_batch : e->o.max_tokens;
    int blocks = 0;
    while (e->n_waiting > 0 && e->n_members < room) {
        const int i = e->waiting[0];
        const EngineRequest *r = &e->reqs[i];
        const int need = paged_blocks_for_request(r->n_prompt, r->max_new, 1, e->o.block_size);
        if (e->n_members > 0 && blocks + need > e->pool.n_free)
            break; /* the first always fits: one that cannot fit alone was rejected on arrival */
        blocks += need;
        queue_remove(e->waiting, &e->n_waiting, i);
        admit(e, i);
        e->members[e->n_members++] = i;
        e->pad_width = r->n_prompt > e->pad_width ? r->n_prompt : e->pad_width;
    }
}

/* Step (2) for static-padded: the batch moves in lockstep. While the padded prompts are computed,
 * every member gets the same window of columns [c0, c0 + W), the budget shared out (W = budget /
 * members, at least 1); a prompt is right-aligned in the rectangle (left padding), so a member's
 * columns before its first prompt token are padding and every member gets its first token in the
 * same iteration. Then every member decodes one token per iteration, and a member that has
 * finished (or left) fills its slot with padding until the last one is done. Sets each member's
 * chunk (its own tokens) and pad (slots thrown away); the slots scheduled in all, or -1. */
static int schedule_padded(Engine *e)
{
    if (e->n_running == 0)
        padded_admit(e);
    const int c0 = e->pad_col, prefill = c0 < e->pad_width;
    int W = 1, total = 0;
    if (prefill) {
        W = e->o.max_tokens / e->n_members;
        W = W < 1 ? 1 : W > e->pad_width - c0 ? e->pad_width - c0 : W;
        e->pad_col += W;
    }
    e->pad_rows = 0;
    for (int k = 0; k < e->n_members; k++) {
        const int i = e->members[k];
        Seq *s = &e->s[i];
        int chunk = 0;
        if (s->phase == PH_RUNNING && prefill) { /* its prompt's columns inside the window */
            const int first = e->pad_width - e->reqs[i].n_prompt, from = c0 > first ? c0 : first;
            chunk = c0 + W > from ? c0 + W - from : 0;
        } else if (s->phase == PH_RUNNING) {
            chunk = s->n_tokens - s->n_computed; /* 1: its decode */
        }
        if (chunk > 0 && paged_seq_append(&e->pool, &s->seq, chunk) != 0)
            return -1;
        s->chunk = chunk, s->pad = W - chunk;
        e->pad_rows += s->pad, total += W;
    }
    return total;
}

/* ==== the decision ================================================================================ */

int engine_schedule(Engine *e)
{
    if (e->o.policy == ENGINE_STATIC_PADDED)
        return schedule_padded(e);
    int budget = e->o.max_tokens, total = 0;
    e->it_reused = 0;
    if (e->o.policy == ENGINE_STATIC && e->n_running == 0) /* a new static batch */
        while (e->n_waiting > 0 && e->n_running < e->o.max_batch) {
            const int i = e->waiting[0];
            if (prefix_match(e, i) != 0)
                return -1;
            queue_remove(e->waiting, &e->n_waiting, i);
            admit(e, i);
        }
    const int running = schedule_running(e, &budget);
    if (running < 0)
        return -1;
    total += running;
    /* (3) admissions, first come first served */
    while (e->o.policy == ENGINE_CONTINUOUS && e->n_waiting > 0 && e->n_running < e->o.max_batch && budget > 0) {
        const int i = e->waiting[0];
        Seq *s = &e->s[i];
        if (prefix_match(e, i) != 0) /* s->n_computed: its tokens found cached (0 without caching) */
            return -1;
        /* the budget counts only the tokens computed: those past the cached prefix */
        const int rest = s->n_tokens - s->n_computed, chunk = rest < budget ? rest : budget;
        if (paged_seq_blocks_needed(&e->pool, &s->seq, chunk) > e->pool.n_free) {
            prefix_unmatch(e, i);
            break; /* the queue's head waits for blocks; nobody overtakes it */
        }
        queue_remove(e->waiting, &e->n_waiting, i);
        admit(e, i);
        if (paged_seq_append(&e->pool, &s->seq, chunk) != 0)
            return -1;
        s->chunk = chunk, budget -= chunk, total += chunk;
    }
    return total;
}

void engine_retire_finished(Engine *e)
{
    const EngineRequest *reqs = e->reqs;
    for (int k = 0; k < e->n_running;) {
        const int i = e->running[k];
        Seq *s = &e->s[i];
        if (s->n_generated < reqs[i].max_new && !s->stopped) {
            k++;
            continue;
        }
        paged_seq_free(&e->pool, &s->seq);
        s->phase = PH_DONE, s->finish_s = e->clock, e->settled++;
        e->last_finish = e->clock > e->last_finish ? e->clock : e->last_finish;
        queue_remove(e->running, &e->n_running, i);
    }
}

void engine_record_cells(Engine *e)
{
    for (int i = 0; i < e->n; i++) {
        const Seq *s = &e->s[i];
        EngineCellState st = ENGINE_CELL_NONE;
        if (s->preempted_at == e->met->iterations) /* even when it was admitted again at once */
            st = ENGINE_CELL_PREEMPTED;
        else if (s->chunk > 0)
            st = engine_chunk_is_decode(e, i) ? ENGINE_CELL_DECODE
                 : s->preemptions > 0         ? ENGINE_CELL_RECOMPUTE
                                              : ENGINE_CELL_PREFILL;
        else if (s->pad > 0)
            st = ENGINE_CELL_PADDING;
        else if (s->phase == PH_WAITING)
            st = ENGINE_CELL_WAITING;
        else if (s->phase == PH_RUNNING)
            st = ENGINE_CELL_STALLED;
        e->cells[i] = (EngineCell){.state = st, .tokens = s->chunk, .padded = s->pad};
    }
}
