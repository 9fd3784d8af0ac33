/*
 * waste.h: the measurements chapter 05's lesson rests on (waste.c), made by the allocators
 * themselves: how much of the KV memory a server allocates holds tokens, under contiguous
 * reservations (chapter 04's caches) and under paging; and how many blocks n samples of one
 * prompt take with and without fork.
 */
#ifndef PAGED_WASTE_H
#define PAGED_WASTE_H

#include <stddef.h>
#include <stdint.h>

#include "common/workload.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The lesson's request streams (common/workload.h, lengths only, all at time 0): skewed, lognormal
 * around ShareGPT's medians (98 prompt and 205 output tokens, sigma 1), or uniform, prompt and
 * output in 1..1024; each clipped so that prompt + output <= max_seq. */
#define PAGED_WASTE_PROMPT_MEDIAN 98
#define PAGED_WASTE_OUT_MEDIAN 205
#define PAGED_WASTE_UNIFORM_MEDIAN 512
int paged_waste_workload(WorkloadKind kind, int n, int max_seq, uint64_t seed, WorkloadItem **items);

/* How a request's KV memory is held. */
#define PAGED_RESERVE_MAX_SEQ (-1) /* chapter 04: a cache of max_seq positions per request */
#define PAGED_RESERVE_OWN 0        /* a cache of exactly the request's final length (an oracle) */
/* any block size > 0: paging, a pool of blocks of that many tokens */

typedef struct {
    double used_frac; /* KV memory holding tokens / KV memory allocated, summed over every decode
                         step of every request (a server's snapshot at a random moment) */
    int fit;          /* requests held at once, at their final lengths, in budget_tokens of memory,
                         taken in order until the next one does not fit */
} PagedWaste;

/* Runs the n requests one after the other under `scheme` (PAGED_RESERVE_MAX_SEQ,
 * PAGED_RESERVE_OWN, or a block size): after the prompt, each decode step adds a token. Memory
 * allocated is read from the allocator: kvcache_bytes of a 1-layer, 1-head, D = 1 chapter 04
 * cache, or the pool's blocks in use. 0, or -1 with the error recorded. */
int paged_waste_measure(const WorkloadItem *reqs, int n, int scheme, int max_seq, int budget_tokens,
                        PagedWaste *out);

typedef struct {
    int peak_unshared; /* the pool's peak blocks, every sample with its own copy of the prompt */
    int peak_forked;   /* the same when samples 1..n-1 fork sample 0 after its prompt */
    size_t cow_copies; /* blocks copied on a first write (the forked run) */
    int shared_blocks; /* blocks held by more than one sample at the end of the forked run */
} PagedForkCost;

/* n_samples samples of one n_prompt-token prompt, each then growing by new_tokens, side by side,
 * in a pool of blocks of bs tokens: the blocks they take with and without fork. 0, or -1 with the
 * error recorded. */
int paged_fork_measure(int n_prompt, int new_tokens, int n_samples, int bs, PagedForkCost *out);

#ifdef __cplusplus
}
#endif
#endif
