/*
 * live.c: chapter 06's engine with requests that enter while it runs -- what a server drives.
 *
 * What it teaches: engine_serve is handed every request at the start and replays their arrival
 * times on its own clock. A server cannot know its requests in advance: they enter whenever a
 * client sends one, and leave when they finish or when the client goes away. Nothing in the
 * scheduler (scheduler.c) or the forward (batch.c) has to change for that, which is the point of
 * iteration-level scheduling: every iteration looks at the queue afresh. What changes is the
 * bookkeeping around them:
 *
 *   slots      a fixed number of request slots (capacity): a request takes a free slot on
 *              submission and gives it back when its caller has read the result (release)
 *   arrivals   a submitted request arrives at once (engine_arrive: it waits, or is rejected)
 *   aborts     a client that went away marks its slot; the next step takes it out (the same
 *              engine_take_aborts as engine_serve's abort_at)
 *   the clock  the wall clock (seconds since engine_live_open), read before every iteration
 *
 * One thread drives it (06_batching/server.c's engine thread): submit, abort, step, read,
 * release -- never two at once.
 */
#include "06_batching/engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "06_batching/engine_internal.h"
#include "common/error.h"
#include "common/tensor.h"
#include "common/timer.h"

EngineLive *engine_live_open(const Model *m, const EngineOptions *o, int capacity)
{
    if (capacity < 1) {
        error_set("the live engine needs at least one request slot, got %d", capacity);
        return NULL;
    }
    if (engine_check_options(o) != 0)
        return NULL;
    EngineLive *l = mem_alloc(sizeof *l, "live engine");
    if (!l)
        return NULL;
    memset(l, 0, sizeof *l);
    l->reqs = mem_alloc((size_t)capacity * sizeof(EngineRequest), "request slots");
    l->res = mem_alloc((size_t)capacity * sizeof(EngineResult), "request results");
    l->used = mem_alloc((size_t)capacity, "slot flags");
    if (!l->reqs || !l->res || !l->used) {
        mem_free(l->reqs), mem_free(l->res), mem_free(l->used), mem_free(l);
        return NULL;
    }
    memset(l->reqs, 0, (size_t)capacity * sizeof(EngineRequest));
    memset(l->res, 0, (size_t)capacity * sizeof(EngineResult));
    memset(l->used, 0, (size_t)capacity);
    l->e = (Engine){.m = m, .reqs = l->reqs, .n = capacity, .o = *o, .res = l->res, .met = &l->met};
    l->e.o.keep_log = 0, l->e.o.fixed_step_s = 0.0;
    l->e.o.trace = engine_live_trace, l->e.o.trace_ctx = l; /* the grid's last columns (live_view.c) */
    if (engine_live_open_view(l) != 0 || engine_open_pool(&l->e) != 0 || engine_open_arrays(&l->e) != 0) {
        engine_live_close(l);
        return NULL;
    }
    memset(l->e.s, 0, (size_t)capacity * sizeof(Seq)); /* no tokens yet: engine_close frees NULLs */
    for (int i = 0; i < capacity; i++)
        paged_seq_init(&l->e.s[i].seq);
    l->e.next_arrival = capacity; /* arrivals come through engine_live_submit, not by time */
    l->t0 = timer_now();
    return l;
}

void engine_live_close(EngineLive *l)
{
    if (!l)
        return;
    for (int i = 0; i < l->e.n && l->reqs; i++)
        mem_free(l->reqs[i].prompt);
    engine_close(&l->e);
    engine_live_close_view(l);
    mem_free(l->reqs), mem_free(l->res), mem_free(l->used), mem_free(l);
}

int engine_live_submit(EngineLive *l, const EngineRequest *r)
{
    Engine *e = &l->e;
    int i = 0;
    while (i < e->n && l->used[i])
        i++;
    if (i == e->n)
        return error_set("all %d request slots are taken", e->n);
    if (r->n_prompt < 0 || r->max_new < 0)
        return error_set("a request needs a prompt length and max_new of at least 0 (got %d and %d)", r->n_prompt,
                         r->max_new);
    int *prompt = mem_alloc((size_t)r->n_prompt * sizeof(int), "prompt"); /* (n_prompt) */
    if (!prompt)
        return -1;
    if (r->n_prompt > 0)
        memcpy(prompt, r->prompt, (size_t)r->n_prompt * sizeof(int));
    l->reqs[i] = *r; /* its sampling fields */
    l->reqs[i].arrival = 0.0, l->reqs[i].abort_at = 0.0, l->reqs[i].rejected = NULL, l->reqs[i].prompt = prompt;
    l->res[i] = (EngineResult){.status = ENGINE_DONE};
    mem_free(e->s[i].tokens);
    if (engine_open_seq(e, i) != 0) {
        mem_free(prompt);
        l->reqs[i].prompt = NULL;
        return -1;
    }
    l->used[i] = 1;
    l->tag[i] = ++l->submitted;
    e->clock = timer_now() - l->t0;
    engine_arrive(e, i);
    return i;
}

void engine_live_abort(EngineLive *l, int slot)
{
    if (slot >= 0 && slot < l->e.n && l->used[slot])
        l->reqs[slot].abort_at = 1e-300; /* any time at all: engine_take_aborts takes it at the next step */
}

int engine_live_step(EngineLive *l)
{
    Engine *e = &l->e;
    e->clock = timer_now() - l->t0;
    engine_take_aborts(e);
    if (e->n_running == 0 && e->n_waiting == 0)
        return 0;
    return engine_iterate(e) != 0 ? -1 : 1;
}

EngineLiveState engine_live_state(const EngineLive *l, int slot, const int **tokens, int *n_tokens, const char **reason)
{
    static const int none[1] = {0};
    *tokens = none, *n_tokens = 0, *reason = "";
    if (slot < 0 || slot >= l->e.n || !l->used[slot])
        return LIVE_FREE;
    const Seq *s = &l->e.s[slot];
    *tokens = s->tokens ? s->tokens + l->reqs[slot].n_prompt : none;
    *n_tokens = s->n_generated;
    switch (s->phase) {
    case PH_REJECTED:
        *reason = l->res[slot].reason;
        return LIVE_REJECTED;
    case PH_ABORTED:
        *reason = "the client went away";
        return LIVE_ABORTED;
    case PH_DONE:
        return LIVE_DONE;
    case PH_RUNNING:
        return LIVE_RUNNING;
    default:
        return LIVE_WAITING;
    }
}

int engine_live_stopped(const EngineLive *l, int slot)
{
    return slot >= 0 && slot < l->e.n && l->used[slot] && l->e.s[slot].stopped;
}

void engine_live_release(EngineLive *l, int slot)
{
    Engine *e = &l->e;
    if (slot < 0 || slot >= e->n || !l->used[slot])
        return;
    Seq *s = &e->s[slot];
    if (s->phase == PH_DONE)
        l->generated += s->n_generated, l->completed++;
    paged_seq_free(&e->pool, &s->seq); /* settled sequences hold none; a safety net */
    mem_free(s->tokens);
    memset(s, 0, sizeof *s);
    paged_seq_init(&s->seq);
    mem_free(l->reqs[slot].prompt);
    memset(&l->reqs[slot], 0, sizeof l->reqs[slot]);
    l->used[slot] = 0, l->tag[slot] = 0;
}

void engine_live_stats(const EngineLive *l, EngineLiveStats *st)
{
    const Engine *e = &l->e;
    int used = 0;
    for (int i = 0; i < e->n; i++)
        used += l->used[i];
    *st = (EngineLiveStats){.running = e->n_running, .waiting = e->n_waiting, .slots_used = used,
                            .blocks_used = paged_pool_used(&e->pool), .blocks_cached = e->pool.n_cached,
                            .num_blocks = e->pool.num_blocks, .iterations = l->met.iterations,
                            .preemptions = l->met.preemptions, .prefix_looked_up = l->met.prefix_looked_up,
                            .prefix_reused = l->met.prefix_reused, .generated = l->generated, .completed = l->completed,
                            .rejected = l->met.rejected, .aborted = l->met.aborted};
}
