/*
 * frag.c: fragmentation, measured (frag.h) -- requests arriving and departing in a fixed KV arena,
 * held in contiguous ranges (first fit) or in chapter 05's block pool, and every step's slots
 * counted as used, reserved, internal fragmentation, external fragmentation and free.
 *
 * What it teaches: a contiguous range per request wastes memory two ways. Inside a range, the
 * slots for tokens not generated yet (reserved) and, when the range is max_seq long, the slots
 * past the request's final length (internal). Between ranges, holes: when requests of different
 * sizes come and go, the free slots end up scattered in holes too small for the next request,
 * which waits although enough memory is free (external). Ranges of one size (max_seq) never leave
 * such holes; ranges of each request's own length do. Paging takes memory a block at a time as a
 * request grows, so nothing is reserved ahead beyond its last block, and any free block serves any
 * request: no external fragmentation at all. The tests (test_frag.c) count small arenas by hand.
 */
#include "05_paged/frag.h"

#include <stdlib.h>

#include "05_paged/paged.h"
#include "05_paged/waste.h"
#include "common/error.h"
#include "common/tensor.h"

typedef struct {
    int id;       /* the request (an index into reqs) */
    int start;    /* contiguous: its range is [start, start + slots) of the arena */
    int slots;    /* contiguous: the range's size */
    int held;     /* tokens held */
    PagedSeq seq; /* paged: its block table */
} FragRunning;

typedef struct {
    const WorkloadItem *reqs; /* (n) */
    int n, scheme, arena, max_seq;
    FragRunning *run; /* (n) the running requests, in the order they were admitted */
    int n_run;
    int *queue; /* (n) the waiting requests, a ring: queue[(q_head + i) % n] for i < n_wait, head first */
    int q_head, n_wait;
    int *ranges;      /* (2 n) contiguous, scratch: (start, slots) of every range, sorted by start */
    PagedPool pool;   /* paged: arena / bs blocks */
    int frag_blocked; /* this step, the head waits for a hole although enough slots are free */
    long preemptions;
} FragSim;

int paged_frag_workload(WorkloadKind kind, int n, int max_seq, double rate, uint64_t seed, WorkloadItem **items)
{
    if (!(rate > 0))
        return error_set("fragmentation workload: the arrival rate (%g requests per step) must be positive", rate);
    if (paged_waste_workload(kind, n, max_seq, seed, items) != 0)
        return -1;
    for (int i = 0; i < n; i++)
        (*items)[i].arrival_s = i / rate; /* in steps */
    return 0;
}

static int final_len(const FragSim *s, int id) { return s->reqs[id].prompt_len + s->reqs[id].output_len; }
static int paged(const FragSim *s) { return s->scheme > 0; }

/* ---- the queue: first come, first served; a preempted request goes back to the front ---------- */

static void queue_push_back(FragSim *s, int id) { s->queue[(s->q_head + s->n_wait++) % s->n] = id; }
static void queue_push_front(FragSim *s, int id)
{
    s->q_head = (s->q_head + s->n - 1) % s->n;
    s->queue[s->q_head] = id;
    s->n_wait++;
}
static void queue_pop(FragSim *s) { s->q_head = (s->q_head + 1) % s->n, s->n_wait--; }

/* ---- contiguous ranges, first fit ---------------------------------------------------------------- */

static int by_start(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* The first hole of at least `need` slots, scanning the arena from slot 0; its start, or -1 with
 * *largest the largest hole. */
static int first_fit(FragSim *s, int need, int *largest)
{
    for (int i = 0; i < s->n_run; i++)
        s->ranges[2 * i] = s->run[i].start, s->ranges[2 * i + 1] = s->run[i].slots;
    qsort(s->ranges, (size_t)s->n_run, 2 * sizeof(int), by_start);
    *largest = 0;
    int at = 0; /* the end of the ranges scanned so far */
    for (int i = 0; i <= s->n_run; i++) {
        const int next = i < s->n_run ? s->ranges[2 * i] : s->arena; /* the hole is [at, next) */
        if (next - at >= need)
            return at;
        *largest = next - at > *largest ? next - at : *largest;
        if (i < s->n_run)
            at = s->ranges[2 * i] + s->ranges[2 * i + 1];
    }
    return -1;
}

/* Slots a request holds right now: its range, or its blocks. */
static int held_slots(const FragSim *s, const FragRunning *r)
{
    return paged(s) ? r->seq.n_blocks * s->scheme : r->slots;
}

static int free_slots(const FragSim *s)
{
    int taken = 0;
    for (int i = 0; i < s->n_run; i++)
        taken += held_slots(s, &s->run[i]);
    return s->arena - taken;
}

/* ---- the step's phases ---------------------------------------------------------------------------- */

/* (3) The head of the queue, while it fits: prefilled, and its first token generated. */
static int admit(FragSim *s)
{
    s->frag_blocked = 0;
    while (s->n_wait > 0) {
        const int id = s->queue[s->q_head], first = s->reqs[id].prompt_len + 1;
        FragRunning r = {.id = id, .start = 0, .slots = 0, .held = first};
        paged_seq_init(&r.seq);
        if (paged(s)) {
            if (s->pool.n_free < (first + s->scheme - 1) / s->scheme)
                return 0; /* short of blocks, and any free block would do: never external */
            if (paged_seq_append(&s->pool, &r.seq, first) != 0)
                return -1;
        } else {
            r.slots = s->scheme == PAGED_RESERVE_MAX_SEQ ? s->max_seq : final_len(s, id);
            int largest;
            if ((r.start = first_fit(s, r.slots, &largest)) < 0) {
                s->frag_blocked = free_slots(s) >= r.slots; /* enough is free, but in pieces */
                return 0;
            }
        }
        queue_pop(s);
        s->run[s->n_run++] = r;
    }
    return 0;
}

/* Paged: the most recently admitted request gives its blocks back and waits at the front. */
static int preempt_newest(FragSim *s)
{
    FragRunning *r = &s->run[--s->n_run];
    if (paged_seq_free(&s->pool, &r->seq) != 0)
        return -1;
    queue_push_front(s, r->id);
    s->preemptions++;
    return 0;
}

/* (2) Every running request generates a token, the earliest admitted first. */
static int decode(FragSim *s)
{
    for (int i = 0; i < s->n_run; i++) {
        int rc;
        while (paged(s) && (rc = paged_seq_append(&s->pool, &s->run[i].seq, 1)) != 0) {
            if (rc != PAGED_EXHAUSTED)
                return -1;
            const int newest = s->n_run - 1;
            if (preempt_newest(s) != 0)
                return -1;
            if (newest == i)
                return 0; /* it was the newest itself: nothing after it runs */
        }
        s->run[i].held++;
    }
    return 0;
}

/* (4) The arena, slot by slot category. */
static int count(const FragSim *s, PagedFragStep *st)
{
    *st = (PagedFragStep){.used = 0, .reserved = 0, .internal = 0, .external = 0, .free = 0, .running = s->n_run,
                          .waiting = s->n_wait};
    int taken = 0;
    for (int i = 0; i < s->n_run; i++) {
        const FragRunning *r = &s->run[i];
        const int slots = held_slots(s, r), fin = final_len(s, r->id), upto = slots < fin ? slots : fin;
        st->used += r->held;
        st->reserved += upto - r->held;
        st->internal += slots - upto;
        taken += slots;
    }
    if (paged(s) && taken != paged_pool_used(&s->pool) * s->scheme)
        return error_set("fragmentation: the tables hold %d slots but the pool has %d blocks of %d in use", taken,
                         paged_pool_used(&s->pool), s->scheme);
    if (s->frag_blocked)
        st->external = s->arena - taken;
    else
        st->free = s->arena - taken;
    return 0;
}

/* (5) Requests that hold their final length leave; returns how many. */
static int leave(FragSim *s)
{
    int kept = 0, gone = 0;
    for (int i = 0; i < s->n_run; i++) {
        if (s->run[i].held < final_len(s, s->run[i].id)) {
            s->run[kept++] = s->run[i];
            continue;
        }
        if (paged(s) && paged_seq_free(&s->pool, &s->run[i].seq) != 0)
            return -1;
        gone++;
    }
    s->n_run = kept;
    return gone;
}

/* ---- the run ------------------------------------------------------------------------------------ */

static int check_args(const WorkloadItem *reqs, int n, int scheme, int arena, int max_seq)
{
    if (n < 1 || max_seq < 1 || arena < max_seq || scheme < PAGED_RESERVE_MAX_SEQ || (scheme > 0 && arena % scheme))
        return error_set("fragmentation: n (%d) and max_seq (%d) must be positive, the arena (%d slots) at least "
                         "max_seq and, paged, a multiple of the block size; the scheme (%d) -1, 0 or a block size",
                         n, max_seq, arena, scheme);
    for (int i = 0; i < n; i++)
        if (reqs[i].prompt_len < 1 || reqs[i].output_len < 1 || reqs[i].prompt_len + reqs[i].output_len > max_seq ||
            reqs[i].arrival_s < 0 || (i > 0 && reqs[i].arrival_s < reqs[i - 1].arrival_s))
            return error_set("fragmentation: request %d (prompt %d, output %d, arriving at step %g) needs lengths "
                             ">= 1 with a sum <= max_seq %d, arrivals in order",
                             i, reqs[i].prompt_len, reqs[i].output_len, reqs[i].arrival_s, max_seq);
    return 0;
}

/* Steps and sums into out; the sums of the categories are in slot-steps. */
static int run_steps(FragSim *s, PagedFragStep *trace, long trace_len, PagedFrag *out, double sum[5])
{
    long limit = (long)s->reqs[s->n - 1].arrival_s + s->n + 1; /* the oldest request always runs: a bound */
    for (int i = 0; i < s->n; i++)
        limit += s->reqs[i].output_len;
    double running = 0, waiting_steps = 0;
    int next = 0;
    long t = 0;
    for (; out->completed < s->n; t++) {
        if (t > limit)
            return error_set("fragmentation: %d of %d requests still unfinished after %ld steps", s->n - out->completed,
                             s->n, t);
        while (next < s->n && (long)s->reqs[next].arrival_s <= t)
            queue_push_back(s, next++);
        PagedFragStep st;
        if (decode(s) != 0 || admit(s) != 0 || count(s, &st) != 0)
            return -1;
        if (trace && t < trace_len)
            trace[t] = st;
        const int counts[5] = {st.used, st.reserved, st.internal, st.external, st.free};
        for (int k = 0; k < 5; k++)
            sum[k] += counts[k];
        running += st.running, waiting_steps += st.waiting > 0;
        const int gone = leave(s);
        if (gone < 0)
            return -1;
        out->completed += gone;
    }
    out->steps = t, out->mean_running = running / t, out->waiting_pct = 100.0 * waiting_steps / t;
    return 0;
}

int paged_frag_simulate(const WorkloadItem *reqs, int n, int scheme, int arena, int max_seq, PagedFragStep *trace,
                        long trace_len, PagedFrag *out)
{
    *out = (PagedFrag){.used_pct = 0, .reserved_pct = 0, .internal_pct = 0, .external_pct = 0, .free_pct = 0,
                       .steps = 0, .completed = 0, .preemptions = 0, .mean_running = 0, .waiting_pct = 0};
    if (check_args(reqs, n, scheme, arena, max_seq) != 0)
        return -1;
    FragSim s = {.reqs = reqs, .n = n, .scheme = scheme, .arena = arena, .max_seq = max_seq};
    s.run = mem_alloc((size_t)n * sizeof(FragRunning), "running requests (n)");
    s.queue = mem_alloc((size_t)n * sizeof(int), "queue (n)");
    s.ranges = mem_alloc((size_t)2 * n * sizeof(int), "ranges (n, 2)");
    int rc = s.run && s.queue && s.ranges ? 0 : -1;
    if (rc == 0 && scheme > 0)
        rc = paged_pool_create(&s.pool, 1, 1, 1, scheme, arena / scheme);
    double sum[5] = {0, 0, 0, 0, 0};
    if (rc == 0)
        rc = run_steps(&s, trace, trace_len, out, sum);
    if (rc == 0) {
        const double d = (double)out->steps * arena / 100.0;
        out->used_pct = sum[0] / d, out->reserved_pct = sum[1] / d, out->internal_pct = sum[2] / d;
        out->external_pct = sum[3] / d, out->free_pct = sum[4] / d, out->preemptions = s.preemptions;
    }
    if (scheme > 0 && s.pool.num_blocks > 0) {
        for (int i = 0; i < s.n_run; i++)
            paged_seq_free(&s.pool, &s.run[i].seq);
        if (rc == 0 && s.pool.n_free != s.pool.num_blocks)
            rc = error_set("fragmentation: the pool did not return to full");
        paged_pool_free(&s.pool);
    }
    mem_free(s.run), mem_free(s.queue), mem_free(s.ranges);
    return rc;
}
