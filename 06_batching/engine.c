/*
 * engine.c: chapter 06 on the CPU -- requests, the scheduler, the batched forward, metrics.
 *
 * What it teaches: continuous batching is a loop that, at every iteration, (1) lets arrived
 * requests queue, (2) gives each running sequence its next tokens (one to decode, or the next
 * chunk of its prompt) while the token budget lasts, preempting the newest sequence when the
 * pool has no block for an older one, (3) admits queued requests first come, first served while
 * the batch, the budget and the pool allow, and (4) runs all the scheduled tokens through the
 * model in one forward. Static batching is the same loop with (3) allowed only when nothing runs.
 */
#include "06_batching/engine.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "05_paged/paged.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/timer.h"

/* ==== requests files ================================================================================ */

void engine_free_requests(EngineRequest *reqs, int n)
{
    for (int i = 0; i < n && reqs; i++)
        free(reqs[i].prompt), free(reqs[i].rejected);
    free(reqs);
}

/* One line "<arrival> <max_new> <ids...>" (or "<arrival> <max_new> <text>" with a tokenizer)
 * into r; -1 with the reason in why. */
static int parse_line(char *line, const Tokenizer *tok, int seq_len, EngineRequest *r, char *why, size_t why_len)
{
    char *p = line, *end;
    errno = 0;
    const double arrival = strtod(p, &end);
    if (end == p || errno || !isfinite(arrival) || arrival < 0 || (*end && !isspace((unsigned char)*end))) {
        snprintf(why, why_len, "the arrival time must be a number of seconds >= 0");
        return -1;
    }
    p = end;
    const long max_new = strtol(p, &end, 10);
    if (end == p || (*end && !isspace((unsigned char)*end)) || max_new < 0 || max_new > (1L << 24)) {
        snprintf(why, why_len, "expected '<arrival_seconds> <max_new_tokens> <prompt ids...>': max_new must be an "
                               "integer >= 0");
        return -1;
    }
    p = end;
    if (tok) { /* text mode: the rest of the line, after one separator, is the prompt */
        if (*p)
            p++;
        p[strcspn(p, "\r\n")] = '\0';
        text_unescape(p);
        if (!*p) {
            snprintf(why, why_len, "the prompt text is empty");
            return -1;
        }
        /* a text whose length alone proves it cannot fit is not encoded: a request the model
         * cannot serve, rejected on its own output line (the file's syntax is fine) */
        const size_t n_bytes = strlen(p), at_least = tokenizer_min_tokens(tok, n_bytes, 1, 0);
        if (seq_len > 0 && at_least + (size_t)max_new > (size_t)seq_len) {
            char reason[256];
            snprintf(reason, sizeof reason, "the prompt text is %zu bytes: at least %zu tokens with BOS (a token covers "
                     "at most %d bytes), which with max_new %ld exceeds the model's seq_len %d", n_bytes, at_least,
                     tok->max_token_length, max_new, seq_len);
            *r = (EngineRequest){arrival, (int)max_new, 0, NULL, 0.0, strdup(reason)};
            if (!r->rejected) {
                snprintf(why, why_len, "out of memory");
                return -1;
            }
            return 0;
        }
        int *ids, n;
        if (tokenizer_encode(tok, p, 1, 0, &ids, &n) != 0) {
            snprintf(why, why_len, "%s", error_message());
            return -1;
        }
        *r = (EngineRequest){arrival, (int)max_new, n, ids, 0.0, NULL};
        return 0;
    }
    int cap = 16, n = 0;
    int *ids = malloc((size_t)cap * sizeof(int));
    for (;;) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        const long id = strtol(p, &end, 10);
        if (end == p || (*end && !isspace((unsigned char)*end)) || id < 0 || id > 2147483647L) {
            snprintf(why, why_len, "prompt token %d is not a non-negative integer", n);
            free(ids);
            return -1;
        }
        if (n == cap)
            ids = realloc(ids, (size_t)(cap *= 2) * sizeof(int));
        ids[n++] = (int)id;
        p = end;
    }
    if (n == 0) {
        snprintf(why, why_len, "the prompt is empty: give at least one token id after max_new");
        free(ids);
        return -1;
    }
    *r = (EngineRequest){arrival, (int)max_new, n, ids, 0.0, NULL};
    return 0;
}

int engine_read_requests(const char *path, const Tokenizer *tokenizer, int seq_len, EngineRequest **reqs, int *n)
{
    FILE *f = file_open_input(path); /* a regular file, or an error: never blocks on a FIFO */
    if (!f)
        return -1;
    int cap = 64, count = 0, lineno = 0;
    EngineRequest *out = malloc((size_t)cap * sizeof(EngineRequest));
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    while ((len = getline(&line, &line_cap, f)) >= 0) {
        lineno++;
        /* a NUL would end the line early for the parser: the rest of a prompt, or a whole
         * request after it, would vanish without a word */
        const char *nul = memchr(line, '\0', (size_t)len);
        if (nul) {
            const size_t column = (size_t)(nul - line) + 1;
            free(line);
            fclose(f);
            engine_free_requests(out, count);
            return error_set("%s:%d: NUL byte (column %zu): a requests file is text", error_quote(path), lineno, column);
        }
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#')
            continue;
        char why[256];
        if (count == cap)
            out = realloc(out, (size_t)(cap *= 2) * sizeof(EngineRequest));
        if (parse_line(p, tokenizer, seq_len, &out[count], why, sizeof why) != 0) {
            free(line);
            fclose(f);
            engine_free_requests(out, count);
            return error_set("%s:%d: %s", error_quote(path), lineno, why);
        }
        count++;
    }
    free(line);
    fclose(f);
    if (count == 0) {
        free(out);
        return error_set("%s: no requests (every line is blank or a comment)", error_quote(path));
    }
    *reqs = out, *n = count;
    return 0;
}

int engine_write_requests(const char *path, const EngineRequest *reqs, int n)
{
    OutFile o; /* a temporary file renamed over path at the end: a failed write keeps the old one */
    if (out_open(&o, path) != 0)
        return -1;
    out_printf(&o, "# <arrival_seconds> <max_new_tokens> <prompt ids...>\n");
    for (int i = 0; i < n; i++) {
        out_printf(&o, "%.6f %d", reqs[i].arrival, reqs[i].max_new);
        for (int t = 0; t < reqs[i].n_prompt; t++)
            out_printf(&o, " %d", reqs[i].prompt[t]);
        out_printf(&o, "\n");
    }
    return out_commit(&o);
}

int engine_policy_parse(const char *name, EnginePolicy *out)
{
    if (strcmp(name, "continuous") == 0)
        *out = ENGINE_CONTINUOUS;
    else if (strcmp(name, "static") == 0)
        *out = ENGINE_STATIC;
    else
        return error_set("--policy must be one of " ENGINE_POLICY_CHOICES ", got '%s'", name);
    return 0;
}

const char *engine_policy_name(EnginePolicy p) { return p == ENGINE_STATIC ? "static" : "continuous"; }

EngineOptions engine_default_options(void)
{
    EngineOptions o = {ENGINE_CONTINUOUS, 32, 256, 16, 0, 0.0f, 42, 0, 0.0, 0, 0, 0, 0, 0};
    return o;
}

/* ==== workloads ======================================================================================= */

static int clampi(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }

int engine_make_workload(const WorkloadSpec *w, EngineRequest **reqs)
{
    if (w->n < 1 || w->prompt_median < 1 || w->out_median < 1 || w->seq_len < 2 || w->vocab < 1)
        return error_set("workload: n, the medians, seq_len and vocab must be positive");
    EngineRequest *out = calloc((size_t)w->n, sizeof(EngineRequest));
    Rng rng;
    rng_seed(&rng, w->seed);
    double t = 0.0;
    for (int i = 0; i < w->n; i++) {
        if (w->rate > 0) /* exponential gaps: a Poisson process of `rate` arrivals per second */
            t += -log(1.0 - (double)rng_uniform(&rng)) / w->rate;
        int pr, nw;
        if (w->kind == WORKLOAD_SKEWED) {
            pr = (int)lrint(w->prompt_median * exp(rng_normal(&rng)));
            nw = (int)lrint(w->out_median * exp(rng_normal(&rng)));
        } else {
            pr = 1 + (int)rng_below(&rng, (uint32_t)(2 * w->prompt_median));
            nw = 1 + (int)rng_below(&rng, (uint32_t)(2 * w->out_median));
        }
        pr = clampi(pr, 1, w->seq_len - 1);
        nw = clampi(nw, 1, w->seq_len - pr);
        out[i] = (EngineRequest){t, nw, pr, malloc((size_t)pr * sizeof(int)), 0.0, NULL};
        for (int k = 0; k < pr; k++)
            out[i].prompt[k] = (int)rng_below(&rng, (uint32_t)w->vocab);
    }
    *reqs = out;
    return 0;
}

/* ==== the engine ====================================================================================== */

typedef enum { PH_PENDING, PH_WAITING, PH_RUNNING, PH_DONE, PH_REJECTED, PH_ABORTED } Phase;

typedef struct {
    int *tokens;    /* prompt, then generated ids */
    int n_tokens;
    int n_generated;
    int n_computed; /* tokens whose K/V are in the pool */
    PagedSeq seq;
    Rng rng;
    long admitted;  /* admission number while running (preemption picks the largest) */
    Phase phase;
    double first_s, finish_s;
    int preemptions;
    int chunk;      /* tokens scheduled in the current iteration */
    int stopped;    /* sampled BOS or EOS (with stop_at_bos_eos) */
} Seq;

typedef struct {
    const Model *m;
    const EngineRequest *reqs;
    int n;
    EngineOptions o;
    PagedPool pool;
    Seq *s;
    int *waiting, n_waiting; /* a queue of request indices, front first */
    int *running, n_running;
    long admissions;
    EngineMetrics *met;
#if HAVE_CUDA
    EngineGpu *gpu; /* the forward on the GPU, when o.cuda */
#endif
} Engine;

static int seq_fits_at_all(const Engine *e, int i, char *why, size_t len)
{
    const EngineRequest *r = &e->reqs[i];
    const ModelConfig *c = &e->m->c;
    if ((long)r->n_prompt + r->max_new > c->seq_len) {
        snprintf(why, len, "prompt (%d tokens) + max_new (%d) exceeds the model's seq_len %d", r->n_prompt, r->max_new,
                 c->seq_len);
        return 0;
    }
    for (int t = 0; t < r->n_prompt; t++)
        if (r->prompt[t] >= c->vocab_size) {
            snprintf(why, len, "prompt token %d is %d, outside the vocabulary (0..%d)", t, r->prompt[t],
                     c->vocab_size - 1);
            return 0;
        }
    const int need = paged_blocks_for_request(r->n_prompt, r->max_new, 1, e->o.block_size);
    if (need > e->o.num_blocks) {
        snprintf(why, len, "needs %d blocks of %d tokens at its longest, the pool has %d: it can never fit", need,
                 e->o.block_size, e->o.num_blocks);
        return 0;
    }
    return 1;
}

static void queue_remove(int *q, int *n, int idx)
{
    for (int k = 0; k < *n; k++)
        if (q[k] == idx) {
            memmove(q + k, q + k + 1, (size_t)(*n - k - 1) * sizeof(int));
            (*n)--;
            return;
        }
}

static void preempt(Engine *e, int i)
{
    Seq *s = &e->s[i];
    paged_seq_free(&e->pool, &s->seq); /* recompute later: the K/V are given back */
    s->n_computed = 0, s->chunk = 0, s->admitted = -1, s->phase = PH_WAITING;
    s->preemptions++;
    e->met->preemptions++;
    queue_remove(e->running, &e->n_running, i);
    memmove(e->waiting + 1, e->waiting, (size_t)e->n_waiting * sizeof(int)); /* front of the queue */
    e->waiting[0] = i;
    e->n_waiting++;
}

static void admit(Engine *e, int i)
{
    Seq *s = &e->s[i];
    s->phase = PH_RUNNING, s->admitted = e->admissions++;
    e->running[e->n_running++] = i;
}

/* The client of request i went away: it leaves the queue or the batch where it is, and its
 * blocks go back to the pool at once (between iterations, so no chunk is in flight). */
static void abort_request(Engine *e, int i, double clock)
{
    Seq *s = &e->s[i];
    if (s->phase == PH_RUNNING)
        queue_remove(e->running, &e->n_running, i);
    else
        queue_remove(e->waiting, &e->n_waiting, i);
    paged_seq_free(&e->pool, &s->seq);
    s->n_computed = 0, s->chunk = 0, s->admitted = -1, s->phase = PH_ABORTED, s->finish_s = clock;
    e->met->aborted++;
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

/* Gives running sequences their tokens, oldest first, then (continuous) admits waiting ones.
 * Blocks are appended here, so each decision sees the pool as the earlier ones left it.
 * Returns the number of tokens scheduled. */
static int schedule(Engine *e)
{
    int budget = e->o.max_tokens, total = 0;
    if (e->o.policy == ENGINE_STATIC && e->n_running == 0) /* a new static batch */
        while (e->n_waiting > 0 && e->n_running < e->o.max_batch) {
            const int i = e->waiting[0];
            queue_remove(e->waiting, &e->n_waiting, i);
            admit(e, i);
        }
    sort_running(e);
    /* (1) running sequences, oldest first */
    for (int k = 0; k < e->n_running && budget > 0; k++) {
        const int i = e->running[k];
        Seq *s = &e->s[i];
        const int want = s->n_tokens - s->n_computed, chunk = want < budget ? want : budget;
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
        s->chunk = chunk, budget -= chunk, total += chunk;
    }
    /* (2) admissions, first come first served */
    /* EXERCISE 06 BEGIN: continuous batching's admission step: while the policy is continuous, someone waits, the batch has room (max_batch) and the budget tokens remain, admit the head of the queue with its first chunk of min(its tokens, budget) -- if the pool has the blocks for that chunk; otherwise stop (nobody overtakes the head) */
    while (e->o.policy == ENGINE_CONTINUOUS && e->n_waiting > 0 && e->n_running < e->o.max_batch && budget > 0) {
        const int i = e->waiting[0];
        Seq *s = &e->s[i];
        const int chunk = s->n_tokens < budget ? s->n_tokens : budget;
        if (paged_seq_blocks_needed(&e->pool, &s->seq, chunk) > e->pool.n_free)
            break; /* the queue's head waits for blocks; nobody overtakes it */
        queue_remove(e->waiting, &e->n_waiting, i);
        admit(e, i);
        if (paged_seq_append(&e->pool, &s->seq, chunk) != 0)
            return -1;
        s->chunk = chunk, budget -= chunk, total += chunk;
    }
    /* EXERCISE 06 STUB:
    if (e->o.policy == ENGINE_CONTINUOUS && e->n_running == 0 && e->n_waiting > 0) {
        exercise_todo("exercise 06, the admission step of schedule() in 06_batching/engine.c");
        const int i = e->waiting[0];
        queue_remove(e->waiting, &e->n_waiting, i);
        admit(e, i);
        if (paged_seq_append(&e->pool, &e->s[i].seq, 1) != 0)
            return -1;
        e->s[i].chunk = 1, total += 1;
    }
       EXERCISE 06 END */
    return total;
}

/* ---- the batched forward ---- */

typedef struct {
    Engine *e;
    int n_sched;
    const int *sched;   /* request index of each scheduled sequence */
    const int *q_start; /* (n_sched + 1) its rows */
    PagedSeq **seqs;
} BatchCtx;

static int batch_attention(void *ctx, int layer, int n, const float *q, const float *k, const float *v, float *att)
{
    BatchCtx *b = ctx;
    Engine *e = b->e;
    const int kvd = e->m->c.n_kv_heads * model_head_size(&e->m->c);
    (void)n;
    for (int j = 0; j < b->n_sched; j++) { /* each sequence's new K/V, through its table */
        const Seq *s = &e->s[b->sched[j]];
        const size_t r0 = (size_t)b->q_start[j];
        paged_write(&e->pool, &s->seq, layer, s->n_computed, s->chunk, k + r0 * kvd, v + r0 * kvd);
    }
    return paged_attention_cpu(e->o.kernel, &e->pool, layer, e->m->c.n_heads,
                               1.0f / sqrtf((float)model_head_size(&e->m->c)), 1, b->n_sched, b->seqs, b->q_start, q,
                               att);
}

/* One forward over every scheduled token; then each sequence whose chunk reached its last token
 * samples the next one. */
static int run_iteration(Engine *e, int *prefill_tokens, int *decode_tokens, int *n_sched_out)
{
    const int V = e->m->c.vocab_size;
    int n_sched = 0, rows = 0;
    for (int k = 0; k < e->n_running; k++)
        if (e->s[e->running[k]].chunk > 0)
            n_sched++, rows += e->s[e->running[k]].chunk;
    int *sched = mem_alloc((size_t)n_sched * sizeof(int) + 1, "scheduled sequences");
    int *q_start = mem_alloc((size_t)(n_sched + 1) * sizeof(int), "query rows");
    int *tokens = mem_alloc((size_t)rows * sizeof(int) + 1, "batch tokens");
    int *pos = mem_alloc((size_t)rows * sizeof(int) + 1, "batch positions");
    int *out_rows = mem_alloc((size_t)n_sched * sizeof(int) + 1, "rows with logits");
    int *out_seq = mem_alloc((size_t)n_sched * sizeof(int) + 1, "sequences with logits");
    PagedSeq **seqs = mem_alloc((size_t)n_sched * sizeof(PagedSeq *) + 1, "tables");
    float *logits = mem_alloc((size_t)n_sched * V * sizeof(float) + 1, "logits");
    int rc = !sched || !q_start || !tokens || !pos || !out_rows || !out_seq || !seqs || !logits ? -1 : 0;
    int n_out = 0;
    *prefill_tokens = *decode_tokens = 0;
    if (rc == 0) {
        int j = 0, r = 0;
        q_start[0] = 0;
        for (int k = 0; k < e->n_running; k++) {
            const int i = e->running[k];
            Seq *s = &e->s[i];
            if (s->chunk == 0)
                continue;
            sched[j] = i, seqs[j] = &s->seq;
            for (int t = 0; t < s->chunk; t++, r++)
                tokens[r] = s->tokens[s->n_computed + t], pos[r] = s->n_computed + t;
            q_start[j + 1] = r;
            if (s->n_computed + s->chunk == s->n_tokens) /* its last known token: logits wanted */
                out_rows[n_out] = r - 1, out_seq[n_out++] = i;
            /* a chunk of one token after the prompt is a decode; anything else is (re)prefill */
            if (s->chunk == 1 && s->n_computed >= e->reqs[i].n_prompt)
                (*decode_tokens)++;
            else
                *prefill_tokens += s->chunk;
            j++;
        }
#if HAVE_CUDA
        if (e->gpu) { /* the tables and lengths go to the GPU with the tokens */
            const int mb = (int)(((size_t)e->m->c.seq_len + (size_t)e->o.block_size - 1) / (size_t)e->o.block_size);
            int *tables = mem_alloc((size_t)n_sched * mb * sizeof(int) + 1, "block tables for the GPU");
            int *lens = mem_alloc((size_t)n_sched * sizeof(int) + 1, "lengths for the GPU");
            rc = !tables || !lens ? -1 : 0;
            for (int k = 0; k < n_sched && rc == 0; k++) {
                const PagedSeq *ps = seqs[k];
                lens[k] = ps->len;
                for (int b = 0; b < mb; b++)
                    tables[(size_t)k * mb + b] = b < ps->n_blocks ? ps->blocks[b] : 0;
            }
            if (rc == 0)
                rc = engine_gpu_forward(e->gpu, rows, tokens, pos, n_sched, q_start, lens, tables, n_out, out_rows,
                                        logits);
            mem_free(tables), mem_free(lens);
        } else
#endif
        {
            BatchCtx b = {e, n_sched, sched, q_start, seqs};
            rc = model_forward(e->m, rows, tokens, pos, batch_attention, &b, n_out, out_rows, logits);
        }
    }
    for (int k = 0; k < n_sched && rc == 0; k++) {
        Seq *s = &e->s[sched[k]];
        s->n_computed += s->chunk;
        s->chunk = 0;
    }
    for (int k = 0; k < n_out && rc == 0; k++) {
        const int i = out_seq[k];
        Seq *s = &e->s[i];
        const int next = model_sample(logits + (size_t)k * V, V, e->o.temperature, &s->rng);
        if (next < 0) { /* the logits overflowed (error recorded) */
            rc = -1;
            break;
        }
        if (e->o.stop_at_bos_eos && (next == 1 || next == 2)) {
            s->stopped = 1; /* the text is over; the stop token is not part of it */
            continue;
        }
        s->tokens[s->n_tokens++] = next;
        s->n_generated++;
    }
    *n_sched_out = n_sched;
    mem_free(sched), mem_free(q_start), mem_free(tokens), mem_free(pos);
    mem_free(out_rows), mem_free(out_seq), mem_free(seqs), mem_free(logits);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile of v (n values, sorted here); NAN for none */
static double percentile(double *v, int n, double p)
{
    if (n == 0)
        return NAN;
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    int k = (int)ceil(p / 100.0 * n) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

static void finish_metrics(Engine *e, EngineResult *res, double first_arrival, double last_finish)
{
    EngineMetrics *m = e->met;
    double *ttft = malloc((size_t)e->n * sizeof(double) + 1), *tpot = malloc((size_t)e->n * sizeof(double) + 1);
    int n_ttft = 0, n_tpot = 0;
    for (int i = 0; i < e->n; i++) {
        if (res[i].status != ENGINE_DONE)
            continue;
        m->generated += res[i].n_tokens;
        if (!isnan(res[i].ttft_s))
            ttft[n_ttft++] = res[i].ttft_s;
        if (!isnan(res[i].tpot_s))
            tpot[n_tpot++] = res[i].tpot_s;
    }
    m->makespan_s = last_finish > first_arrival ? last_finish - first_arrival : 0.0;
    m->throughput = m->makespan_s > 0 ? (double)m->generated / m->makespan_s : NAN;
    m->ttft_p50 = percentile(ttft, n_ttft, 50), m->ttft_p99 = percentile(ttft, n_ttft, 99);
    m->tpot_p50 = percentile(tpot, n_tpot, 50), m->tpot_p99 = percentile(tpot, n_tpot, 99);
    m->peak_blocks = e->pool.peak_used, m->num_blocks = e->pool.num_blocks;
    free(ttft), free(tpot);
}

static int check_options(const EngineOptions *o)
{
    if (o->max_batch < 1 || o->max_tokens < 1 || o->block_size < 1 || o->num_blocks < 0)
        return error_set("--max-batch (%d), --max-tokens-per-step (%d) and --block-size (%d) must be at least 1, "
                         "--num-blocks (%d) not negative",
                         o->max_batch, o->max_tokens, o->block_size, o->num_blocks);
    return model_check_temperature(o->temperature);
}

/* The default pool: max_batch sequences of seq_len tokens, counted in size_t (--max-batch 2^20
 * with --block-size 1 is 2^31 blocks: in int that wrapped to a negative count). -1 with a message
 * saying what it would need when no pool can have that many blocks. */
static int default_pool_blocks(const Model *m, const EngineOptions *o, int *num_blocks)
{
    const size_t per_seq = ((size_t)m->c.seq_len + (size_t)o->block_size - 1) / (size_t)o->block_size;
    const size_t blocks = (size_t)o->max_batch * per_seq; /* < 2^31 * 2^31: no wrap in 64 bits */
    if (blocks > (size_t)INT_MAX) {
        char b[32];
        const double bytes = (double)blocks * 2.0 * m->c.n_layers * model_kv_dim(&m->c) * o->block_size * sizeof(float);
        return error_set("the default pool, --max-batch %d sequences of seq_len %d tokens in blocks of %d, would need "
                         "%zu blocks (%s of K and V), more than a pool can have (%d blocks): give --num-blocks N or a "
                         "smaller --max-batch",
                         o->max_batch, m->c.seq_len, o->block_size, blocks, format_bytes(bytes, b, sizeof b), INT_MAX);
    }
    *num_blocks = (int)blocks;
    return 0;
}

typedef struct {
    double arrival;
    int index;
} Arrival;

static int cmp_arrival(const void *a, const void *b)
{
    const Arrival *x = a, *y = b;
    if (x->arrival != y->arrival)
        return x->arrival < y->arrival ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index); /* equal times: file order */
}

int engine_arrival_order(const EngineRequest *reqs, int n, int *order)
{
    /* qsort is not stable; sorting on (arrival, index) makes the order unique, hence stable */
    Arrival *a = malloc((size_t)n * sizeof(Arrival) + 1);
    if (!a)
        return error_set("out of memory sorting %d arrival times", n);
    for (int i = 0; i < n; i++)
        a[i] = (Arrival){reqs[i].arrival, i};
    qsort(a, (size_t)n, sizeof(Arrival), cmp_arrival);
    for (int i = 0; i < n; i++)
        order[i] = a[i].index;
    free(a);
    return 0;
}

int engine_serve(const Model *m, const EngineRequest *reqs, int n, const EngineOptions *opt, EngineResult *results,
                 EngineMetrics *metrics)
{
    if (check_options(opt) != 0)
        return -1;
    Engine e;
    memset(&e, 0, sizeof e);
    e.m = m, e.reqs = reqs, e.n = n, e.o = *opt, e.met = metrics;
    memset(metrics, 0, sizeof *metrics);
    memset(results, 0, (size_t)n * sizeof(EngineResult));
    const int default_pool = e.o.num_blocks == 0; /* enough for max_batch sequences of seq_len tokens */
    if (default_pool && default_pool_blocks(m, &e.o, &e.o.num_blocks) != 0)
        return -1;
    if (paged_pool_create(&e.pool, m->c.n_layers, m->c.n_kv_heads, model_head_size(&m->c), e.o.block_size,
                          e.o.num_blocks) != 0) {
        if (default_pool) { /* say where the size came from: the user never gave it */
            char why[512];
            snprintf(why, sizeof why, "%s", error_message());
            error_set("%s (the default pool: --max-batch %d sequences of seq_len %d tokens; give --num-blocks N or a "
                      "smaller --max-batch)",
                      why, e.o.max_batch, m->c.seq_len);
        }
        return -1;
    }
    if (e.o.shuffle)
        paged_pool_shuffle(&e.pool, e.o.shuffle);
    if (e.o.cuda) {
#if HAVE_CUDA
        e.gpu = engine_gpu_create(m, e.o.num_blocks, e.o.block_size, e.o.max_tokens, e.o.max_batch);
        if (!e.gpu) {
            paged_pool_free(&e.pool);
            return -1;
        }
#else
        paged_pool_free(&e.pool);
        return error_set("this build has no CUDA (build with nvcc, CUDA=1)");
#endif
    }
    e.s = mem_alloc((size_t)n * sizeof(Seq) + 1, "sequences");
    e.waiting = mem_alloc((size_t)n * sizeof(int) + 1, "waiting queue");
    e.running = mem_alloc((size_t)n * sizeof(int) + 1, "running list");
    int *order = mem_alloc((size_t)n * sizeof(int) + 1, "arrival order");
    int cap_log = 0, rc = !e.s || !e.waiting || !e.running || !order ? -1 : 0;
    for (int i = 0; i < n && rc == 0; i++) {
        Seq *s = &e.s[i];
        memset(s, 0, sizeof *s);
        /* a request that will be rejected on arrival (by the reader, or too long for seq_len)
         * never holds tokens: no room is taken for its max_new */
        const int never = reqs[i].rejected || (long)reqs[i].n_prompt + reqs[i].max_new > m->c.seq_len;
        const size_t room = never ? 0 : (size_t)reqs[i].n_prompt + (size_t)reqs[i].max_new;
        s->tokens = mem_alloc(room * sizeof(int) + 1, "request tokens");
        if (!s->tokens) {
            rc = -1;
            break;
        }
        if (!never)
            memcpy(s->tokens, reqs[i].prompt, (size_t)reqs[i].n_prompt * sizeof(int));
        s->n_tokens = never ? 0 : reqs[i].n_prompt;
        paged_seq_init(&s->seq);
        model_rng_seed(&s->rng, e.o.seed + (uint64_t)i);
        s->admitted = -1, s->phase = PH_PENDING, s->first_s = s->finish_s = NAN;
    }
    if (rc == 0 && engine_arrival_order(reqs, n, order) != 0)
        rc = -1;
    double clock = 0.0, first_arrival = n > 0 && rc == 0 ? reqs[order[0]].arrival : 0.0, last_finish = 0.0;
    int next = 0, settled = 0;
    while (rc == 0 && settled < n) {
        /* arrivals up to now join the queue, or are turned away if they can never run */
        if (e.n_running == 0 && e.n_waiting == 0 && next < n && reqs[order[next]].arrival > clock)
            clock = reqs[order[next]].arrival; /* idle: jump to the next arrival */
        for (; next < n && reqs[order[next]].arrival <= clock; next++) {
            const int i = order[next];
            char why[192];
            if (reqs[i].rejected) /* the reader knew already (a text too long for seq_len) */
                snprintf(why, sizeof why, "%s", reqs[i].rejected);
            if (reqs[i].rejected || !seq_fits_at_all(&e, i, why, sizeof why)) {
                e.s[i].phase = PH_REJECTED, results[i].status = ENGINE_REJECTED;
                snprintf(results[i].reason, sizeof results[i].reason, "%s", why);
                metrics->rejected++, settled++;
            } else if (reqs[i].max_new == 0) { /* nothing to generate */
                e.s[i].phase = PH_DONE, settled++;
            } else {
                e.s[i].phase = PH_WAITING;
                e.waiting[e.n_waiting++] = i;
            }
        }
        /* aborts due by now: running or waiting requests whose client went away */
        for (int q = 0; q < 2; q++) { /* the running list, then the queue; backwards, as they shrink */
            const int *list = q ? e.waiting : e.running;
            for (int k = (q ? e.n_waiting : e.n_running) - 1; k >= 0; k--)
                if (reqs[list[k]].abort_at > 0 && reqs[list[k]].abort_at <= clock) {
                    abort_request(&e, list[k], clock);
                    settled++;
                }
        }
        if (e.n_running == 0 && e.n_waiting == 0)
            continue;
        const double t0 = timer_now();
        const int scheduled = schedule(&e);
        if (scheduled < 0) {
            rc = -1;
            break;
        }
        if (scheduled == 0) { /* the watchdog: the design guarantees progress; say so loudly if not */
            rc = error_set("the scheduler stalled at iteration %d: %d running, %d waiting, %d of %d blocks free",
                           metrics->iterations, e.n_running, e.n_waiting, e.pool.n_free, e.pool.num_blocks);
            break;
        }
        int prefill = 0, decode = 0, n_sched = 0;
        rc = run_iteration(&e, &prefill, &decode, &n_sched);
        clock += e.o.fixed_step_s > 0 ? e.o.fixed_step_s : timer_now() - t0;
        if (rc != 0)
            break;
        for (int k = 0; k < e.n_running; k++) { /* a first token is stamped with the end of its iteration */
            Seq *s = &e.s[e.running[k]];
            if ((s->n_generated >= 1 || s->stopped) && isnan(s->first_s))
                s->first_s = clock;
        }
        /* finished sequences leave and give their blocks back */
        for (int k = 0; k < e.n_running;) {
            const int i = e.running[k];
            Seq *s = &e.s[i];
            if (s->n_generated < reqs[i].max_new && !s->stopped) {
                k++;
                continue;
            }
            paged_seq_free(&e.pool, &s->seq);
            s->phase = PH_DONE, s->finish_s = clock, settled++;
            last_finish = clock > last_finish ? clock : last_finish;
            queue_remove(e.running, &e.n_running, i);
        }
        if (e.o.check_invariants) { /* every table against the pool (fuzzing, tests) */
            PagedSeq **all = mem_alloc((size_t)n * sizeof(PagedSeq *) + 1, "tables");
            for (int k = 0; k < n && all; k++)
                all[k] = &e.s[k].seq;
            if (!all || paged_check(&e.pool, all, n) != 0)
                rc = error_set("iteration %d broke the pool's invariants: %s", metrics->iterations, error_message());
            mem_free(all);
            if (rc != 0)
                break;
        }
        metrics->iterations++;
        metrics->mean_batch += n_sched;
        if (e.o.keep_log) {
            if (metrics->iterations > cap_log) {
                cap_log = cap_log ? 2 * cap_log : 256;
                metrics->log = realloc(metrics->log, (size_t)cap_log * sizeof(EngineIteration));
            }
            metrics->log[metrics->iterations - 1] = (EngineIteration){clock, e.n_running, e.n_waiting, n_sched, prefill,
                                                                      decode, paged_pool_used(&e.pool)};
        }
    }
    if (metrics->iterations > 0)
        metrics->mean_batch /= metrics->iterations;
    for (int i = 0; i < n && rc == 0; i++) {
        Seq *s = &e.s[i];
        if (s->phase != PH_DONE && s->phase != PH_ABORTED)
            continue;
        EngineResult *r = &results[i];
        r->status = s->phase == PH_DONE ? ENGINE_DONE : ENGINE_ABORTED;
        if (s->phase == PH_ABORTED)
            snprintf(r->reason, sizeof r->reason, "aborted at %.3f s after %d of %d tokens", s->finish_s,
                     s->n_generated, reqs[i].max_new);
        r->n_tokens = s->n_generated;
        r->tokens = malloc((size_t)s->n_generated * sizeof(int) + 1);
        memcpy(r->tokens, s->tokens + reqs[i].n_prompt, (size_t)s->n_generated * sizeof(int));
        r->ttft_s = !isnan(s->first_s) ? s->first_s - reqs[i].arrival : NAN;
        r->tpot_s = s->n_generated > 1 ? (s->finish_s - s->first_s) / (s->n_generated - 1) : NAN;
        r->finish_s = !isnan(s->finish_s) ? s->finish_s : NAN;
        r->preemptions = s->preemptions;
        metrics->completed += s->phase == PH_DONE;
    }
    if (rc == 0)
        finish_metrics(&e, results, first_arrival, last_finish);
    if (rc == 0 && e.pool.n_free != e.pool.num_blocks)
        rc = error_set("internal error: %d blocks still in use after every request finished",
                       e.pool.num_blocks - e.pool.n_free);
    for (int i = 0; i < n && e.s; i++) {
        if (e.pool.num_blocks)
            paged_seq_free(&e.pool, &e.s[i].seq);
        mem_free(e.s[i].tokens);
    }
    if (rc != 0)
        engine_free_results(results, n);
    paged_pool_free(&e.pool);
#if HAVE_CUDA
    engine_gpu_free(e.gpu);
#endif
    mem_free(e.s), mem_free(e.waiting), mem_free(e.running), mem_free(order);
    return rc;
}

int engine_serve_alone(const Model *m, const EngineRequest *reqs, int n, const EngineOptions *o, int ***tokens)
{
    int **t = calloc((size_t)n + 1, sizeof(int *));
    if (!t)
        return error_set("out of memory for %d token lists", n);
    for (int i = 0; i < n; i++) {
        EngineOptions oi = *o;
        oi.seed = o->seed + (uint64_t)i, oi.keep_log = 0;
        EngineResult res;
        EngineMetrics mt;
        if (engine_serve(m, &reqs[i], 1, &oi, &res, &mt) != 0) {
            engine_free_tokens(t, n);
            return -1;
        }
        if (res.status != ENGINE_REJECTED) {
            t[i] = malloc(((size_t)reqs[i].max_new + 1) * sizeof(int));
            if (!t[i]) {
                engine_free_results(&res, 1), engine_free_metrics(&mt), engine_free_tokens(t, n);
                return error_set("out of memory for the tokens of request %d", i);
            }
            for (int j = 0; j <= reqs[i].max_new; j++)
                t[i][j] = j < res.n_tokens ? res.tokens[j] : -1;
        }
        engine_free_results(&res, 1);
        engine_free_metrics(&mt);
    }
    *tokens = t;
    return 0;
}

void engine_free_tokens(int **tokens, int n)
{
    for (int i = 0; i < n && tokens; i++)
        free(tokens[i]);
    free(tokens);
}

void engine_free_results(EngineResult *results, int n)
{
    for (int i = 0; i < n && results; i++) {
        free(results[i].tokens);
        results[i].tokens = NULL;
    }
}

void engine_free_metrics(EngineMetrics *metrics)
{
    free(metrics->log);
    metrics->log = NULL;
}
