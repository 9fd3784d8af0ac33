/*
 * engine_internal.h: the engine's state and the steps of one iteration, shared by the files that
 * implement engine_serve (callers use engine.h).
 *
 *   scheduler.c  who runs this iteration: arrivals join the queue (or are rejected), aborted
 *                requests leave, running sequences get their next tokens under the token
 *                budget (chunked prefill), the newest is preempted when blocks run out, waiting
 *                requests are admitted; finished sequences leave and give their blocks back
 *   batch.c      the forward over every scheduled token of every sequence (CPU or GPU): the
 *                logits of the sequences whose chunk reached their last known token
 *   engine.c     the loop: options, one step() = schedule, run the batch, postprocess (sample,
 *                finish, free), and the results and metrics at the end
 *
 * A request's life: PENDING (not arrived yet) -> WAITING (in the queue) -> RUNNING (holds blocks,
 * is given tokens) -> DONE. With prefix caching, admission may find the first n_computed tokens
 * already in the pool (shared blocks), and after every forward the blocks a sequence filled are
 * named (published) so that later sequences can find them. A preempted sequence goes back to
 * WAITING, at the front of the queue;
 * a request that can never run is REJECTED on arrival; one whose client went away is ABORTED.
 */
#ifndef ENGINE_INTERNAL_H
#define ENGINE_INTERNAL_H

#include "05_paged/paged.h"
#include "06_batching/engine.h"
#include "common/rng.h"

typedef enum { PH_PENDING, PH_WAITING, PH_RUNNING, PH_DONE, PH_REJECTED, PH_ABORTED } Phase;

typedef struct {
    int *tokens;    /* (n_prompt + max_new) the prompt, then the generated ids */
    int n_tokens;
    int n_generated;
    int n_computed; /* tokens whose K/V are in the pool */
    PagedSeq seq;   /* its block table */
    Rng rng;
    long admitted;  /* admission number while running (preemption picks the largest) */
    Phase phase;
    double first_s, finish_s;
    int preemptions;
    int chunk;      /* tokens scheduled in the current iteration */
    int pad;        /* static-padded: slots computed for it and thrown away in the current iteration */
    int preempted_at; /* the iteration that last preempted it (-1: never) */
    int stopped;    /* sampled BOS or EOS (with stop_at_bos_eos) */
    Sampling sampling; /* its own (EngineRequest's has_ fields) or the engine's */
} Seq;

typedef struct {
    const Model *m;
    const EngineRequest *reqs;
    int n;
    EngineOptions o;
    PagedPool pool;
    Seq *s;                  /* (n) one per request */
    int *waiting, n_waiting; /* (n) a queue of request indices, front first */
    int *running, n_running; /* (n) request indices holding blocks */
    long admissions;
    int *order;              /* (n) request indices by arrival (engine_arrival_order) */
    int next_arrival;        /* order[next_arrival] is the next request to arrive */
    int settled;             /* requests done, rejected or aborted: the loop ends at n */
    double clock;            /* seconds since the start (engine.h: the engine's clock) */
    double last_finish;
    int *members, n_members; /* (n) static-padded: the current batch, finished members included */
    int pad_col, pad_width;  /* static-padded: the next column of the padded prompts, and their width */
    int pad_rows;            /* static-padded: slots of padding in the current iteration */
    int it_reused;           /* prefix caching: tokens the current iteration's admissions found cached */
    EngineCell *cells;       /* (n) the current iteration's grid column, when o.trace */
    int cap_log;             /* entries allocated in met->log */
    EngineResult *res;       /* (n) */
    EngineMetrics *met;
#if HAVE_CUDA
    EngineGpu *gpu;          /* the forward on the GPU, when o.cuda */
#endif
} Engine;

/* ---- engine.c: the pieces live.c shares ------------------------------------------------------- */

int engine_check_options(const EngineOptions *o);
/* The block pool (num_blocks 0: the default) and, with o.cuda, the forward's copy on the GPU. */
int engine_open_pool(Engine *e);
/* The per-request arrays, for e->n requests (no Seq opened yet). */
int engine_open_arrays(Engine *e);
/* Seq i for reqs[i]: room for its prompt and max_new tokens, its generator seeded. 0, or -1. */
int engine_open_seq(Engine *e, int i);
void engine_close(Engine *e);
/* One iteration over what is running and waiting: schedule, the forward, sample, finish. The
 * clock advances by its duration (or fixed_step_s). 0, or -1 with an error recorded. */
int engine_iterate(Engine *e);

/* ---- scheduler.c ---------------------------------------------------------------------------- */

/* Requests that have arrived by e->clock join the queue, or are settled at once: rejected (they
 * can never run: res[i] says why) or done (nothing to generate). */
void engine_take_arrivals(Engine *e);
/* Request i arrives now: it waits, or settles at once (rejected, or nothing to generate). */
void engine_arrive(Engine *e, int i);
/* Running or waiting requests whose client went away by e->clock leave; their blocks go back. */
void engine_take_aborts(Engine *e);
/* Decides this iteration: sets each running sequence's chunk (tokens to compute now) and appends
 * the blocks they need. The number of tokens scheduled, or -1 with an error recorded. */
int engine_schedule(Engine *e);
/* Sequences that generated all their tokens (or stopped) leave and give their blocks back. */
void engine_retire_finished(Engine *e);
/* This iteration's decisions as one grid column: e->cells[i], what request i does now. */
void engine_record_cells(Engine *e);

/* A scheduled chunk of one token after the prompt is a decode; any other chunk is (re)prefill. */
static inline int engine_chunk_is_decode(const Engine *e, int i)
{
    return e->s[i].chunk == 1 && e->s[i].n_computed >= e->reqs[i].n_prompt;
}

/* ---- batch.c -------------------------------------------------------------------------------- */

/* One iteration's batch: the scheduled sequences' rows, and the logits the forward produced. */
typedef struct {
    int n_sched, rows, n_out;
    int *sched;         /* (n_sched) request index of each scheduled sequence */
    int *q_start;       /* (n_sched + 1) sequence j owns rows q_start[j] .. q_start[j+1]-1 */
    int *tokens, *pos;  /* (rows) token id and position of each row */
    int *out_rows;      /* (n_sched) the rows whose logits are wanted (a sequence's last known token) */
    int *out_seq;       /* (n_sched) their request indices */
    PagedSeq **seqs;    /* (n_sched) block tables */
    float *logits;      /* (n_sched, vocab) the first n_out rows filled */
    int prefill_tokens; /* tokens of prompt (or recompute) chunks */
    int decode_tokens;
    int padded_tokens;  /* static-padded: rows computed and thrown away, after every sequence's rows */
} Batch;

/* Gathers the scheduled tokens into *b and runs the model over them once (on the GPU when e has
 * one). 0, or -1 with an error recorded; engine_batch_free either way. */
int engine_run_batch(Engine *e, Batch *b);
void engine_batch_free(Batch *b);

#endif
