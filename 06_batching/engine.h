/*
 * engine.h: chapter 06, continuous batching -- a scheduler over chapter 05's block pool, and one
 * batched model forward per iteration.
 *
 * Requests arrive over time, each with a prompt and a number of tokens to generate. Static
 * batching takes a batch of them and runs it until the last one finishes: short requests sit
 * idle while the longest runs, and new arrivals wait for the whole batch. Continuous batching
 * (Yu et al. 2022, "Orca: A Distributed Serving System for Transformer-Based Generative
 * Models"; vLLM) decides again at every iteration: running sequences decode a token each,
 * finished ones leave at once, and waiting requests join as soon as the batch size, the token
 * budget and the free blocks allow -- a long prompt in chunks of the budget (chunked prefill).
 * When a decode needs a block and none is free, the most recently admitted sequence is
 * preempted: its blocks go back to the pool and it waits at the front of the queue, keeping the
 * tokens it generated, to be recomputed when there is room (preemption by recompute).
 * With prefix caching (on by default, as in vLLM), a request whose tokens start with full blocks
 * some earlier sequence computed shares those blocks (chapter 05's prefix.c) and computes only the
 * rest: many requests after one system prompt, a conversation's next turn after its last prompt,
 * and a preempted sequence whose blocks were not reused yet.
 *
 * Every iteration is one model forward over all scheduled tokens of all sequences (prefill
 * chunks and decodes together): the matrix products see a [tokens, dim] batch, RoPE turns each
 * token by its own position, and attention reads each sequence's K/V through its block table
 * (chapter 05). Because every kernel on that path is batch-invariant (common/matmul_packed's
 * matmul_packed for the products, chapter 05's paged attention), a request gets bit for bit the tokens it
 * gets alone, whatever else runs with it, however its prompt is chunked, and after preemption.
 * The GPU forward (engine.cu, EngineOptions.cuda) is batch-invariant in its own arithmetic: a
 * request gets bit for bit the tokens it gets served alone on the GPU. The GPU does not add in
 * the CPU's order, so against chapter 05 on the CPU its greedy tokens are identical or part where
 * two logits are a near-tie (chapter 04's kvcache_greedy_divergence).
 *
 * Time: the engine runs on a clock that advances by each iteration's measured duration and
 * jumps over idle gaps to the next arrival (nothing sleeps), so a workload of a minute of
 * arrivals is served as fast as the machine computes it. TTFT = time of the first generated
 * token - arrival; TPOT = (finish - first token) / (generated - 1).
 *
 * Where each part lives:
 *   requests.c   the requests file, arrival order, synthetic workloads (common/workload.h)
 *   scheduler.c  who runs each iteration: admission, the token budget, preemption
 *   batch.c      one forward over every scheduled token (the CPU path; engine.cu the GPU's)
 *   engine.c     engine_serve: the loop of steps, results and metrics
 *   engine_internal.h  the state those files share
 */
#ifndef ENGINE_H
#define ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "05_paged/paged.h"
#include "common/model.h"
#include "common/tokenizer.h"
#include "common/workload.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double arrival; /* seconds after the start */
    int max_new;    /* tokens to generate */
    int n_prompt;
    int *prompt;    /* (n_prompt) token ids */
    double abort_at; /* > 0: the client goes away at this time (seconds after the start): the
                      * request stops where it is, keeps the tokens it has and gives its blocks
                      * back (ENGINE_ABORTED); 0: never. Not in the requests file: an API field
                      * for callers, the tests and the fuzzer. */
    char *rejected;  /* NULL, or why the reader already knows this request can never run (its
                      * prompt is then not encoded: n_prompt 0, prompt NULL); engine_serve
                      * rejects it with this reason. Freed by engine_free_requests. */
    /* Sampling of its own (a requests-file line that says so, every HTTP request): each field
     * whose has_ flag is set replaces the engine's option; the others are the engine's (seed:
     * o.seed + its index). */
    unsigned char has_temperature, has_top_p, has_top_k, has_seed;
    float temperature, top_p; /* top_p: (0, 1], 1 off */
    int top_k;                /* 0: off */
    uint64_t seed;
} EngineRequest;

/* Reads a requests file: one request per line, "<arrival_seconds> <max_new_tokens> <prompt
 * ids...>"; blank lines and lines starting with '#' are ignored.
 *
 * The rule: the file is the unit of syntax, the request the unit of service. A line that does
 * not say a request (a missing field, a negative number, a non-integer id, a NUL byte) rejects
 * the whole file: -1 with an error naming the file and line, before anything is served. A line
 * that says a request the model cannot serve (too long for seq_len, an id outside the
 * vocabulary, more blocks than the pool has) is read; engine_serve rejects it on its own
 * (ENGINE_REJECTED with the reason: "<index>: rejected: <reason>" in serve's output) and serves
 * the others.
 *
 * With a tokenizer (text mode), the prompt is the rest of the line after one space, as text
 * ("\n", "\t" and "\\" stand for a newline, a tab, a backslash), encoded with BOS first; a text
 * so long that it and max_new cannot fit in seq_len tokens, whatever the encoding
 * (tokenizer_min_tokens), is not encoded at all: the request comes back with `rejected` set
 * (seq_len 0: no limit; in id mode seq_len is not used, engine_serve checks the length). */
int engine_read_requests(const char *path, const Tokenizer *tokenizer, int seq_len, EngineRequest **reqs, int *n);
void engine_free_requests(EngineRequest *reqs, int n);

/* The order requests join the queue: by arrival time, and in file order among equal arrival times
 * (a stable sort: qsort on (arrival, index), O(n log n) -- an insertion sort took minutes for
 * 200k requests in descending order). order receives the n indices. 0, or -1 out of memory. */
int engine_arrival_order(const EngineRequest *reqs, int n, int *order);

/* continuous: Orca's iteration-level scheduling. static: a batch admitted when nothing runs and
 * run until its last member finishes; members that finish drop out of the forward. static-padded:
 * request-level batching as FasterTransformer-era servers ran it -- a batch is a rectangle, every
 * member's prompt padded to the longest (left: all prompts end in the same iteration) and every
 * member computed in every iteration until the longest finishes; the slots of padding and of
 * finished members are computed and thrown away (engine_schedule in scheduler.c; the CPU only). */
typedef enum { ENGINE_CONTINUOUS = 0, ENGINE_STATIC = 1, ENGINE_STATIC_PADDED = 2 } EnginePolicy;
#define ENGINE_POLICY_CHOICES "continuous|static|static-padded"
int engine_policy_parse(const char *name, EnginePolicy *out);
const char *engine_policy_name(EnginePolicy p);

/* What one sequence did in one iteration: a cell of the iteration x sequence grid (Orca's
 * picture), recorded by the engine from its own decisions (EngineOptions.trace). */
typedef enum {
    ENGINE_CELL_NONE = 0,  /* not arrived yet, finished, rejected or aborted: not in the engine */
    ENGINE_CELL_WAITING,   /* arrived, in the queue */
    ENGINE_CELL_STALLED,   /* running (holds blocks), but the token budget gave it nothing this time */
    ENGINE_CELL_PREFILL,   /* a chunk of its prompt (the chunk that ends it gives the first token) */
    ENGINE_CELL_DECODE,    /* one token: the last one it generated, which gives the next */
    ENGINE_CELL_RECOMPUTE, /* a chunk of its prompt and generated tokens again, after a preemption */
    ENGINE_CELL_PREEMPTED, /* preempted in this iteration: blocks given back, front of the queue
                            * (when admitted again at once, tokens counts its recompute chunk) */
    ENGINE_CELL_PADDING,   /* static-padded: only slots computed and thrown away (padding, or finished) */
    ENGINE_CELL_STATES
} EngineCellState;

typedef struct {
    EngineCellState state;
    int tokens; /* its own tokens in the forward (a chunk, or 1 for a decode) */
    int padded; /* slots computed for it and thrown away (static-padded; else 0) */
} EngineCell;

/* Called after every iteration with one cell per request (cells[i] for reqs[i], n of them),
 * iteration counting from 0; a non-zero return stops engine_serve with that error (-1 and an
 * error recorded). engine_grid_record (grid.h) is one. */
typedef int (*EngineTraceFn)(void *ctx, int iteration, const EngineCell *cells, int n);

typedef struct {
    EnginePolicy policy;
    int max_batch;       /* sequences running at once */
    int max_tokens;      /* tokens per iteration: decodes plus prefill chunks */
    int block_size;
    int num_blocks;
    float temperature;   /* 0: greedy */
    float top_p;         /* nucleus sampling (common/model.h's Sampling): 0 or 1: off */
    int top_k;           /* 0: off */
    uint64_t seed;       /* request i samples with seed + i (chapter 05's generate --seed S+i) */
    int kernel;          /* chapter 05's CPU attention kernel (0 = fast) */
    double fixed_step_s; /* > 0: each iteration advances the clock by this, not by its duration */
    uint64_t shuffle;    /* 0: the pool hands out blocks in order; else shuffled with this seed */
    int keep_log;        /* record one EngineIteration per iteration */
    int cuda;            /* 1: the forward on the GPU (the scheduler stays on the host) */
    int stop_at_bos_eos; /* 1: a request ends at a sampled BOS or EOS, which is not part of its output */
    int check_invariants; /* 1: after every iteration, the pool's invariants (paged_check) or an error */
    EngineTraceFn trace;  /* NULL (the default: nothing recorded), or called after every iteration */
    void *trace_ctx;      /* trace's first argument */
    int prefix_caching;   /* 1 (the default): on admission a sequence shares the cached blocks of its
                           * longest computed prefix (paged_prefix_match) and computes the rest; the
                           * pool keeps freed full blocks by name. Off under static-padded (request-level
                           * servers had none), whatever this says */
} EngineOptions;

/* Defaults: continuous, max_batch 32, max_tokens 256, block size 16, num_blocks 0 (enough for
 * max_batch sequences of seq_len tokens), greedy, seed 42, prefix caching on. */
EngineOptions engine_default_options(void);

typedef enum { ENGINE_DONE = 0, ENGINE_REJECTED = 1, ENGINE_ABORTED = 2 } EngineStatus;

typedef struct {
    EngineStatus status;
    char reason[192];    /* why it was rejected or aborted */
    int *tokens;         /* (n_tokens) generated ids (aborted: those generated before the abort) */
    int n_tokens;
    double ttft_s, tpot_s, finish_s; /* NAN when undefined */
    int preemptions;
} EngineResult;

typedef struct {
    double clock_s;     /* at the end of the iteration */
    int running;        /* sequences holding blocks or scheduled */
    int waiting;        /* arrived, not running */
    int scheduled;      /* sequences in this iteration's forward */
    int prefill_tokens; /* tokens of prompt (or recompute) chunks */
    int decode_tokens;
    int padded_tokens;  /* static-padded: slots computed and thrown away (padding, finished members) */
    int blocks_used;
    int cached_blocks;  /* prefix caching: ref-0 blocks kept for their name, after the iteration */
    int reused_tokens;  /* prefix caching: tokens admissions found cached in this iteration */
} EngineIteration;

typedef struct {
    int completed, rejected, aborted, preemptions, iterations, peak_blocks, num_blocks;
    long generated;           /* output tokens of completed requests */
    long computed, padded;    /* token slots of every forward: computed in all, and of them thrown away
                               * (static-padded's padding and finished members) */
    double makespan_s;        /* first arrival to last finish */
    double throughput;        /* generated / makespan_s */
    double ttft_p50, ttft_p99, tpot_p50, tpot_p99;
    double mean_batch;        /* sequences per iteration, averaged */
    long prefill_computed;    /* tokens of prompt (and recompute) chunks computed: computed - decodes - padded */
    /* prefix caching (all 0 when off). At every admission (a re-admission after preemption too) the
     * sequence's known tokens are looked up: prefix_looked_up counts them, prefix_reused the tokens
     * found cached, which are not computed again (the prefill tokens saved) */
    long prefix_looked_up, prefix_reused;
    double prefix_hit_rate;   /* prefix_reused / prefix_looked_up (0 when nothing was looked up) */
    int cached_blocks, peak_cached_blocks; /* cached blocks at the end, and the most after any iteration */
    long evictions;           /* cached blocks given to another use (the pool's n_evictions) */
    EngineIteration *log;     /* (iterations) when keep_log */
} EngineMetrics;

/* Serves every request; results[i] for reqs[i]. Returns 0, or -1 with an error recorded (bad
 * options, out of memory, a stalled scheduler -- which the design rules out and the tests
 * watch for). Frees nothing of reqs; engine_free_results and engine_free_metrics free the rest. */
int engine_serve(const Model *m, const EngineRequest *reqs, int n, const EngineOptions *o, EngineResult *results,
                 EngineMetrics *metrics);
void engine_free_results(EngineResult *results, int n);
void engine_free_metrics(EngineMetrics *metrics);

/* Every request served alone by the engine with options o (request i samples with o->seed + i,
 * as it does in a batch): the reference that batch invariance is checked against when the
 * forward's arithmetic is not chapter 05's (the GPU's). tokens[i] (max_new + 1 ids, -1 past the
 * end) for a request that was served, NULL for one that was rejected. -1 with an error
 * recorded. engine_free_tokens frees them. */
int engine_serve_alone(const Model *m, const EngineRequest *reqs, int n, const EngineOptions *o, int ***tokens);
void engine_free_tokens(int **tokens, int n);

/* ---- the live engine (live.c): requests enter while it runs -------------------------------------
 * engine_serve knows every request before it starts. A server does not: clients come and go. The
 * live engine is the same scheduler and forward over a fixed number of request slots, driven one
 * iteration at a time by its caller (the server's engine thread), on the wall clock. Not thread-safe:
 * one thread calls everything below. */
typedef struct EngineLive EngineLive;

typedef enum { LIVE_FREE, LIVE_WAITING, LIVE_RUNNING, LIVE_DONE, LIVE_REJECTED, LIVE_ABORTED } EngineLiveState;

typedef struct {
    int running, waiting, slots_used;
    int blocks_used, blocks_cached, num_blocks;
    long iterations, preemptions, prefix_looked_up, prefix_reused, generated;
    long completed, rejected, aborted;
} EngineLiveStats;

/* capacity: requests held at once (running, waiting, or settled and not yet released). NULL with an
 * error recorded (bad options, out of memory). */
EngineLive *engine_live_open(const Model *m, const EngineOptions *o, int capacity);
void engine_live_close(EngineLive *l);
/* A copy of r enters now (its arrival, abort_at are ignored; its sampling fields are kept); the slot it holds, or -1 with an
 * error recorded when every slot is taken. A request that can never run settles at once
 * (LIVE_REJECTED, with the reason), one with max_new 0 too (LIVE_DONE). */
int engine_live_submit(EngineLive *l, const EngineRequest *r);
/* The client went away: the request leaves at the next step and gives its blocks back. */
void engine_live_abort(EngineLive *l, int slot);
/* One iteration when anything is waiting or running: 1 if it ran, 0 if there was nothing to do, -1
 * with an error recorded. */
int engine_live_step(EngineLive *l);
/* A slot's state, the tokens it generated so far (*tokens, valid until the next step), and for a
 * rejected or aborted one the reason (else ""). */
EngineLiveState engine_live_state(const EngineLive *l, int slot, const int **tokens, int *n_tokens,
                                  const char **reason);
/* 1 when a done request ended at a sampled BOS or EOS (stop_at_bos_eos), 0 when it reached max_new. */
int engine_live_stopped(const EngineLive *l, int slot);
/* A settled slot becomes free again. */
void engine_live_release(EngineLive *l, int slot);
void engine_live_stats(const EngineLive *l, EngineLiveStats *st);
/* ---- the live engine seen from outside (live_view.c): what the server's page draws ------------- */

/* Where a sequence stands after the last iteration. */
typedef enum {
    LIVE_SEQ_WAITING,   /* in the queue, never run */
    LIVE_SEQ_PREEMPTED, /* in the queue again after a preemption (its blocks given back) */
    LIVE_SEQ_PREFILL,   /* running: the last iteration computed a chunk of its prompt (or a recompute) */
    LIVE_SEQ_DECODE,    /* running: the last iteration computed its newest token */
    LIVE_SEQ_STALLED,   /* running (holds blocks), the token budget gave it nothing last time */
} EngineLiveSeqPhase;

typedef struct {
    long tag;                 /* the request's number: 1 for the first ever submitted, 2 ... */
    EngineLiveSeqPhase phase;
    int n_prompt, n_generated, max_new;
    int n_computed;           /* tokens whose K/V are in the pool */
    int preemptions;
    const int *blocks;        /* (n_blocks) its block table, logical -> physical: valid until the next step */
    int n_blocks;
} EngineLiveSeq;

/* The sequences running (admission order) and then waiting (queue order, front first) into out
 * (room for max): how many there are (the first max written). */
int engine_live_seqs(const EngineLive *l, EngineLiveSeq *out, int max);
/* The request number of a slot's request (engine_live_submit's count), 0 for a free slot. */
long engine_live_tag(const EngineLive *l, int slot);

/* The block pool: its size and, per block, its reference count (how many tables hold it) and
 * whether it is cached (reference count 0, kept for its name by prefix caching). cached (num_blocks)
 * is written when not NULL. The pool, valid until the next step. */
const PagedPool *engine_live_pool(const EngineLive *l, unsigned char *cached);

/* One sequence's cell of an iteration, as the grid of the lesson draws it. */
typedef struct {
    long tag;
    EngineCellState state; /* never ENGINE_CELL_NONE */
    int tokens;            /* its tokens in that iteration's forward */
} EngineLiveCell;

#define ENGINE_LIVE_HISTORY 64 /* iterations whose grid columns the live engine keeps */
/* The grid column of the iteration `back` iterations before the last (0: the last): its number
 * into *iteration, its cells into *cells (valid until the next step), their count; -1 when there
 * was no such iteration or it is older than ENGINE_LIVE_HISTORY. */
int engine_live_history(const EngineLive *l, int back, long *iteration, const EngineLiveCell **cells);

/* Why request r can never run on model m with options o (too long, an id outside the vocabulary,
 * more blocks than the pool): 0 with the reason in why; 1 if it can. What the server answers 400 with. */
int engine_request_fits(const Model *m, const EngineOptions *o, const EngineRequest *r, char *why, size_t len);

#if HAVE_CUDA
/* The batched forward on the GPU (engine.cu): weights, the K/V pool (L, Hkv, num_blocks, bs, D)
 * and buffers for up to max_rows rows of max_seqs sequences. engine_gpu_forward runs n rows
 * (tokens, positions; sequence i owns rows q_start[i] .. q_start[i+1]-1, holds lens[i] tokens
 * with those rows' K/V written by this call, and tables[i * ceil(seq_len / bs) + j] is its
 * logical block j) and returns the logits of out_rows (n_out, vocab) on the host. */
typedef struct EngineGpu EngineGpu;
EngineGpu *engine_gpu_create(const Model *m, int num_blocks, int block_size, int max_rows, int max_seqs);
int engine_gpu_forward(EngineGpu *g, int n, const int *tokens, const int *pos, int n_seq, const int *q_start,
                       const int *lens, const int *tables, int n_out, const int *out_rows, float *logits);
void engine_gpu_free(EngineGpu *g);
#endif

/* Workloads (requests.c) ---------------------------------------------------------------------- */

/* common/workload.h's stream (its draws, in its order) as requests: spec->n of them, prompt ids
 * uniform in 0..vocab-1 (vocab must be at least 1). 0, or -1 with the error recorded. */
int engine_make_workload(const WorkloadSpec *w, EngineRequest **reqs);
/* Workloads where requests share prefixes (prefix caching's lesson and bench; gen-requests):
 *   shared-prefix  n requests, each one system prompt of `shared` tokens (the same ids in every
 *                  request) + its own question of question_min..question_max tokens, arriving
 *                  at `rate` per second (Poisson; 0: all at once)
 *   multi-turn     conversations of `turns` turns, starting at `rate` per second, turn t arriving
 *                  turn_gap seconds after turn t-1; turn 0's prompt is the system prompt (`shared`
 *                  tokens, 0 for none) + a message, turn t's is turn t-1's prompt + turn t-1's
 *                  answer + a new message. The answer is a placeholder: max_new ids drawn from
 *                  the seed, not what the engine will generate (unknown when the file is written,
 *                  and different for every model and temperature), so a turn shares with the
 *                  previous one exactly the previous prompt's full blocks. A conversation ends
 *                  early when its next turn would not fit seq_len. n requests in all.
 * Output lengths are uniform in out_min..out_max, message ids uniform over the vocabulary; the
 * draws come in a fixed order, so a seed names a workload. 0, or -1 with the error recorded. */
typedef enum { ENGINE_SHARED_PREFIX = 0, ENGINE_MULTI_TURN = 1 } EnginePrefixKind;
typedef struct {
    EnginePrefixKind kind;
    int n;                          /* requests */
    double rate;                    /* arrivals (shared-prefix) or conversations (multi-turn) per second */
    int shared;                     /* tokens of the system prompt every request starts with */
    int question_min, question_max; /* tokens of each question or new message */
    int out_min, out_max;           /* tokens to generate */
    int turns;                      /* multi-turn: turns per conversation */
    double turn_gap;                /* multi-turn: seconds from one turn's arrival to the next's */
    int seq_len, vocab;
    uint64_t seed;
} PrefixWorkloadSpec;
int engine_make_prefix_workload(const PrefixWorkloadSpec *w, EngineRequest **reqs);

/* A requests file that engine_read_requests reads back: a temporary file renamed over path. */
int engine_write_requests(const char *path, const EngineRequest *reqs, int n);

#ifdef __cplusplus
}
#endif
#endif
