/*
 * frag.h: fragmentation, measured (frag.c). Requests arrive and depart over time in a fixed KV
 * arena of token slots, and every step the arena's slots are sorted into the categories of the
 * vLLM paper's Fig. 2 (Kwon et al. 2023, "Efficient Memory Management for Large Language Model
 * Serving with PagedAttention", §3): tokens held, slots reserved for tokens still to come,
 * internal fragmentation, external fragmentation, and free. Three ways to hold a request's K/V:
 *
 *   contiguous, max_seq   one range of max_seq slots per request (chapter 04), first fit
 *   contiguous, own       one range of exactly the request's final length (an oracle), first fit
 *   paged, block size bs  chapter 05's PagedPool: blocks taken as the request grows
 *
 * The clock: one step = every running request generates one token.
 */
#ifndef PAGED_FRAG_H
#define PAGED_FRAG_H

#include <stdint.h>

#include "common/workload.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One step's arena, in token slots (they add up to the arena):
 *   used      tokens the running requests hold
 *   reserved  slots a request holds for tokens it will still generate (up to its final length)
 *   internal  slots a request holds beyond its final length (max_seq - final length for a max_seq
 *             range; the empty slots of a paged request's last block past its final length)
 *   external  the free slots, at a step when the request at the head of the queue needs fewer
 *             slots than are free but no single hole is big enough; 0 otherwise
 *   free      every other free slot */
typedef struct {
    int used, reserved, internal, external, free;
    int running, waiting; /* requests generating a token / queued at the end of the step */
} PagedFragStep;

typedef struct {
    double used_pct, reserved_pct, internal_pct, external_pct, free_pct; /* % of the arena, mean over steps */
    long steps;          /* steps until the last request finished */
    int completed;       /* requests finished (all of them, or the simulation failed) */
    long preemptions;    /* paged: requests sent back to the queue when the pool ran dry */
    double mean_running; /* requests generating a token per step, the mean */
    double waiting_pct;  /* % of steps that ended with a request waiting */
} PagedFrag;

/* paged_waste_workload's requests (waste.h: the same lengths as the waste table) arriving at a
 * steady clock: request i at step i / rate (arrival_s holds the step). 0, or -1 with the error
 * recorded. */
int paged_frag_workload(WorkloadKind kind, int n, int max_seq, double rate, uint64_t seed, WorkloadItem **items);

/* Runs the n requests (arriving at step floor(arrival_s), in order) through an arena of `arena`
 * token slots held as `scheme` (PAGED_RESERVE_MAX_SEQ, PAGED_RESERVE_OWN or a block size, waste.h).
 * Each step: (1) arrivals join the queue; (2) every running request generates a token (paged: a
 * request that needs a block when none is free preempts the most recently admitted one, which
 * frees its blocks and waits again at the head of the queue, to start over: vLLM's recomputation);
 * (3) first come, first served, the head of the queue is admitted while it fits (contiguous: the
 * first hole big enough for its range; paged: blocks for its prompt and first token), its prompt
 * prefilled and its first token generated; (4) the arena is counted; (5) requests that hold their
 * final length leave. When trace is not NULL, step t's counts go to trace[t] for t < trace_len.
 * Needs arena >= max_seq and, paged, arena a multiple of the block size. 0, or -1 with the error
 * recorded. */
int paged_frag_simulate(const WorkloadItem *reqs, int n, int scheme, int arena, int max_seq, PagedFragStep *trace,
                        long trace_len, PagedFrag *out);

#ifdef __cplusplus
}
#endif
#endif
