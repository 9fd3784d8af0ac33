/*
 * engine.c: chapter 06's engine loop -- engine_serve, one iteration after another.
 *
 * What it teaches: a serving engine is a loop over named steps, as nano-vllm's LLMEngine.step()
 * (schedule, run the model, postprocess). One iteration, engine_step:
 *
 *   arrivals, aborts   requests that arrived join the queue; clients that left leave  scheduler.c
 *   schedule           who runs now and with how many tokens (budget, preemption)   scheduler.c
 *   run the batch      one forward over every scheduled token of every sequence     batch.c
 *   postprocess        name the blocks just filled (prefix caching); sample each    below
 *                      next token; stamp first tokens; finished sequences leave and
 *                      free their blocks; record the iteration
 *
 * Around the loop: the options and the block pool at the start; each request's result (its
 * tokens, TTFT, TPOT) and the run's metrics (throughput, percentiles) at the end. The clock is
 * the engine's own (engine.h): it advances by each iteration's measured time, or by
 * fixed_step_s, and jumps over idle gaps to the next arrival. With o.trace, every iteration's
 * decisions also go out as one column of the iteration x sequence grid (grid.h), recorded right
 * after the schedule (engine_record_cells); without it nothing is recorded.
 */
#include "06_batching/engine.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "06_batching/engine_internal.h"
#include "common/error.h"
#include "common/tensor.h"
#include "common/timer.h"

/* ==== options ===================================================================================== */

int engine_policy_parse(const char *name, EnginePolicy *out)
{
    if (strcmp(name, "continuous") == 0)
        *out = ENGINE_CONTINUOUS;
    else if (strcmp(name, "static") == 0)
        *out = ENGINE_STATIC;
    else if (strcmp(name, "static-padded") == 0)
        *out = ENGINE_STATIC_PADDED;
    else
        return error_set("--policy must be one of " ENGINE_POLICY_CHOICES ", got '%s'", name);
    return 0;
}

const char *engine_policy_name(EnginePolicy p)
{
    return p == ENGINE_STATIC_PADDED ? "static-padded" : p == ENGINE_STATIC ? "static" : "continuous";
}

EngineOptions engine_default_options(void)
{
    return (EngineOptions){.policy = ENGINE_CONTINUOUS, .max_batch = 32, .max_tokens = 256, .block_size = 16,
                           .num_blocks = 0, .temperature = 0.0f, .top_p = 0.0f, .top_k = 0, .seed = 42, .kernel = 0,
                           .fixed_step_s = 0.0,
                           .shuffle = 0, .keep_log = 0, .cuda = 0, .stop_at_bos_eos = 0, .check_invariants = 0,
                           .trace = NULL, .trace_ctx = NULL, .prefix_caching = 1};
}

int engine_check_options(const EngineOptions *o)
{
    if (o->max_batch < 1 || o->max_tokens < 1 || o->block_size < 1 || o->num_blocks < 0)
        return error_set("--max-batch (%d), --max-tokens-per-step (%d) and --block-size (%d) must be at least 1, "
                         "--num-blocks (%d) not negative",
                         o->max_batch, o->max_tokens, o->block_size, o->num_blocks);
    if (o->policy == ENGINE_STATIC_PADDED && o->cuda) /* its padding rows have no place in engine.cu's batch */
        return error_set("--policy static-padded runs on the CPU only: give --device cpu");
    if (o->top_k < 0 || !(o->top_p >= 0.0f && o->top_p <= 1.0f))
        return model_check_sampling(o->top_p, o->top_k); /* 0 is off here, as in run.c: only a bad value fails */
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

/* ==== start and end =============================================================================== */

/* The block pool (num_blocks 0: the default), and the forward's copy of the model and the pool on
 * the GPU when o.cuda. 0, or -1 with an error recorded. */
int engine_open_pool(Engine *e)
{
    const Model *m = e->m;
    const int default_pool = e->o.num_blocks == 0; /* enough for max_batch sequences of seq_len tokens */
    if (default_pool && default_pool_blocks(m, &e->o, &e->o.num_blocks) != 0)
        return -1;
    if (paged_pool_create(&e->pool, m->c.n_layers, m->c.n_kv_heads, model_head_size(&m->c), e->o.block_size,
                          e->o.num_blocks) != 0) {
        if (default_pool) { /* say where the size came from: the user never gave it */
            char why[512];
            snprintf(why, sizeof why, "%s", error_message());
            error_set("%s (the default pool: --max-batch %d sequences of seq_len %d tokens; give --num-blocks N or a "
                      "smaller --max-batch)",
                      why, e->o.max_batch, m->c.seq_len);
        }
        return -1;
    }
    if (e->o.shuffle)
        paged_pool_shuffle(&e->pool, e->o.shuffle);
    /* prefix caching: never under static-padded (request-level servers had none) */
    if (e->o.prefix_caching && e->o.policy != ENGINE_STATIC_PADDED && paged_prefix_enable(&e->pool) != 0)
        return -1;
    if (!e->o.cuda)
        return 0;
#if HAVE_CUDA
    e->gpu = engine_gpu_create(m, e->o.num_blocks, e->o.block_size, e->o.max_tokens, e->o.max_batch);
    return e->gpu ? 0 : -1;
#else
    return error_set("this build has no CUDA (build with nvcc, CUDA=1)");
#endif
}

/* The per-request arrays: sequences (zeroed), queues, arrival order, the padded batch, the grid column. */
int engine_open_arrays(Engine *e)
{
    const size_t n = (size_t)e->n;
    e->s = mem_alloc(n * sizeof(Seq), "sequences");
    e->waiting = mem_alloc(n * sizeof(int), "waiting queue");
    e->running = mem_alloc(n * sizeof(int), "running list");
    e->order = mem_alloc(n * sizeof(int), "arrival order");
    e->members = mem_alloc(n * sizeof(int), "padded batch");
    e->cells = e->o.trace ? mem_alloc(n * sizeof(EngineCell), "grid column") : NULL;
    if (!e->s || !e->waiting || !e->running || !e->order || !e->members || (e->o.trace && !e->cells))
        return -1;
    return 0;
}

/* Seq i: room for its prompt and its max_new tokens, its sampling (the request's own fields, else
 * the engine's), and a generator seeded with seed + i (chapter 05's generate --seed S+i) or with
 * the request's own seed. */
int engine_open_seq(Engine *e, int i)
{
    const EngineRequest *r = &e->reqs[i];
    Seq *s = &e->s[i];
    /* a request that will be rejected on arrival (by the reader, or too long for seq_len) never
     * holds tokens: no room is taken for its max_new */
    const int never = r->rejected || r->n_prompt < 0 || r->max_new < 0 || (long)r->n_prompt + r->max_new > e->m->c.seq_len;
    const size_t room = never ? 0 : (size_t)r->n_prompt + (size_t)r->max_new;
    *s = (Seq){.tokens = mem_alloc(room * sizeof(int), "request tokens"), .n_tokens = never ? 0 : r->n_prompt,
               .admitted = -1, .phase = PH_PENDING, .first_s = NAN, .finish_s = NAN, .pad = 0, .preempted_at = -1,
               .sampling = {.temperature = r->has_temperature ? r->temperature : e->o.temperature,
                            .top_p = r->has_top_p ? r->top_p : e->o.top_p,
                            .top_k = r->has_top_k ? r->top_k : e->o.top_k}};
    if (!s->tokens)
        return -1;
    if (!never)
        memcpy(s->tokens, r->prompt, (size_t)r->n_prompt * sizeof(int));
    paged_seq_init(&s->seq);
    model_rng_seed(&s->rng, r->has_seed ? r->seed : e->o.seed + (uint64_t)i);
    return 0;
}

/* Every Seq, and the arrival order. */
static int engine_open_seqs(Engine *e)
{
    if (engine_open_arrays(e) != 0)
        return -1;
    for (int i = 0; i < e->n; i++)
        if (engine_open_seq(e, i) != 0)
            return -1;
    return engine_arrival_order(e->reqs, e->n, e->order);
}

void engine_close(Engine *e)
{
    for (int i = 0; i < e->n && e->s; i++) {
        if (e->pool.num_blocks)
            paged_seq_free(&e->pool, &e->s[i].seq);
        mem_free(e->s[i].tokens);
    }
    paged_pool_free(&e->pool);
#if HAVE_CUDA
    engine_gpu_free(e->gpu);
#endif
    mem_free(e->s), mem_free(e->waiting), mem_free(e->running), mem_free(e->order);
    mem_free(e->members), mem_free(e->cells);
}

/* ==== postprocess ================================================================================= */

/* The scheduled chunks are computed now (and, with prefix caching, the blocks they filled named);
 * each sequence with logits samples its next token (with stop_at_bos_eos a sampled BOS or EOS
 * ends the text and is not part of it). */
static int sample_next_tokens(Engine *e, const Batch *b)
{
    const int V = e->m->c.vocab_size;
    for (int k = 0; k < b->n_sched; k++) {
        Seq *s = &e->s[b->sched[k]];
        s->n_computed += s->chunk;
        s->chunk = 0;
        /* prefix caching: the full blocks whose K/V are now written get their names, so that later
         * sequences find them (nothing when caching is off) */
        if (paged_prefix_publish(&e->pool, &s->seq, s->tokens, s->n_computed) != 0)
            return -1;
    }
    for (int k = 0; k < b->n_out; k++) {
        Seq *s = &e->s[b->out_seq[k]];
        const int next = model_sample_with(b->logits + (size_t)k * V, V, &s->sampling, &s->rng);
        if (next < 0) /* the logits overflowed (error recorded) */
            return -1;
        if (e->o.stop_at_bos_eos && (next == TOKEN_BOS || next == TOKEN_EOS)) {
            s->stopped = 1; /* the text is over; the stop token is not part of it */
            continue;
        }
        s->tokens[s->n_tokens++] = next;
        s->n_generated++;
    }
    return 0;
}

/* Every block table against the pool (fuzzing, tests: o.check_invariants). */
static int check_pool(Engine *e)
{
    PagedSeq **all = mem_alloc((size_t)e->n * sizeof(PagedSeq *), "tables"); /* (n) */
    for (int k = 0; k < e->n && all; k++)
        all[k] = &e->s[k].seq;
    const int rc = !all || paged_check(&e->pool, all, e->n) != 0
                       ? error_set("iteration %d broke the pool's invariants: %s", e->met->iterations, error_message())
                       : 0;
    mem_free(all);
    return rc;
}

/* One EngineIteration for the log (o.keep_log), the log grown by doubling. */
static int log_iteration(Engine *e, const Batch *b)
{
    EngineMetrics *mt = e->met;
    if (mt->iterations > e->cap_log) {
        const int cap = e->cap_log ? 2 * e->cap_log : 256;
        EngineIteration *log = realloc(mt->log, (size_t)cap * sizeof(EngineIteration));
        if (!log)
            return error_set("out of memory for the log of %d iterations", cap);
        mt->log = log, e->cap_log = cap;
    }
    mt->log[mt->iterations - 1] = (EngineIteration){.clock_s = e->clock, .running = e->n_running,
                                                     .waiting = e->n_waiting, .scheduled = b->n_sched,
                                                     .prefill_tokens = b->prefill_tokens,
                                                     .decode_tokens = b->decode_tokens,
                                                     .padded_tokens = b->padded_tokens,
                                                     .blocks_used = paged_pool_used(&e->pool),
                                                     .cached_blocks = e->pool.n_cached,
                                                     .reused_tokens = e->it_reused};
    return 0;
}

/* After the clock has moved: first tokens get their time, finished sequences leave and free their
 * blocks, the iteration is counted (and logged, and its grid column handed to o.trace). */
static int finish_iteration(Engine *e, const Batch *b)
{
    for (int k = 0; k < e->n_running; k++) { /* a first token is stamped with the end of its iteration */
        Seq *s = &e->s[e->running[k]];
        if ((s->n_generated >= 1 || s->stopped) && isnan(s->first_s))
            s->first_s = e->clock;
    }
    engine_retire_finished(e);
    if (e->o.check_invariants && check_pool(e) != 0)
        return -1;
    e->met->iterations++;
    e->met->mean_batch += b->n_sched;
    e->met->computed += b->rows, e->met->padded += b->padded_tokens;
    e->met->prefill_computed += b->prefill_tokens;
    if (e->pool.n_cached > e->met->peak_cached_blocks)
        e->met->peak_cached_blocks = e->pool.n_cached;
    if (e->o.keep_log && log_iteration(e, b) != 0)
        return -1;
    return e->o.trace ? e->o.trace(e->o.trace_ctx, e->met->iterations - 1, e->cells, e->n) : 0;
}

/* ==== one iteration =============================================================================== */

/* schedule, run the batch, postprocess. 0, or -1 with an error recorded. */
static int engine_step(Engine *e)
{
    const EngineRequest *next = e->next_arrival < e->n ? &e->reqs[e->order[e->next_arrival]] : NULL;
    if (e->n_running == 0 && e->n_waiting == 0 && next && next->arrival > e->clock)
        e->clock = next->arrival; /* idle: jump to the next arrival */
    engine_take_arrivals(e);
    engine_take_aborts(e);
    if (e->n_running == 0 && e->n_waiting == 0)
        return 0;
    return engine_iterate(e);
}

int engine_iterate(Engine *e)
{
    const double t0 = timer_now();
    const int scheduled = engine_schedule(e);
    if (scheduled < 0)
        return -1;
    if (scheduled == 0) /* the watchdog: the design guarantees progress; say so loudly if not */
        return error_set("the scheduler stalled at iteration %d: %d running, %d waiting, %d of %d blocks free",
                         e->met->iterations, e->n_running, e->n_waiting, e->pool.n_free, e->pool.num_blocks);
    if (e->o.trace) /* the decisions just taken, as a column of the grid */
        engine_record_cells(e);
    Batch b;
    int rc = engine_run_batch(e, &b);
    if (rc == 0)
        rc = sample_next_tokens(e, &b);
    e->clock += e->o.fixed_step_s > 0 ? e->o.fixed_step_s : timer_now() - t0;
    if (rc == 0)
        rc = finish_iteration(e, &b);
    engine_batch_free(&b);
    return rc;
}

/* ==== results and metrics ========================================================================= */

/* The results of the requests served or aborted (rejected ones got theirs on arrival). */
static int collect_results(Engine *e)
{
    const EngineRequest *reqs = e->reqs;
    for (int i = 0; i < e->n; i++) {
        const Seq *s = &e->s[i];
        if (s->phase != PH_DONE && s->phase != PH_ABORTED)
            continue;
        EngineResult *r = &e->res[i];
        r->status = s->phase == PH_DONE ? ENGINE_DONE : ENGINE_ABORTED;
        if (s->phase == PH_ABORTED)
            snprintf(r->reason, sizeof r->reason, "aborted at %.3f s after %d of %d tokens", s->finish_s,
                     s->n_generated, reqs[i].max_new);
        r->n_tokens = s->n_generated;
        r->tokens = mem_alloc((size_t)s->n_generated * sizeof(int), "generated tokens");
        if (!r->tokens)
            return -1;
        memcpy(r->tokens, s->tokens + reqs[i].n_prompt, (size_t)s->n_generated * sizeof(int));
        r->ttft_s = !isnan(s->first_s) ? s->first_s - reqs[i].arrival : NAN;
        r->tpot_s = s->n_generated > 1 ? (s->finish_s - s->first_s) / (s->n_generated - 1) : NAN;
        r->finish_s = !isnan(s->finish_s) ? s->finish_s : NAN;
        r->preemptions = s->preemptions;
        e->met->completed += s->phase == PH_DONE;
    }
    return 0;
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

/* Throughput over the makespan (first arrival to last finish), TTFT and TPOT percentiles over
 * the completed requests, the pool's peak, prefix caching's hit rate, cached blocks and evictions. */
static int finish_metrics(Engine *e)
{
    EngineMetrics *m = e->met;
    const EngineResult *res = e->res;
    double *ttft = mem_alloc((size_t)e->n * sizeof(double), "TTFTs"); /* (n) */
    double *tpot = mem_alloc((size_t)e->n * sizeof(double), "TPOTs"); /* (n) */
    if (!ttft || !tpot) {
        mem_free(ttft), mem_free(tpot);
        return -1;
    }
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
    const double first_arrival = e->n > 0 ? e->reqs[e->order[0]].arrival : 0.0;
    m->makespan_s = e->last_finish > first_arrival ? e->last_finish - first_arrival : 0.0;
    m->throughput = m->makespan_s > 0 ? (double)m->generated / m->makespan_s : NAN;
    m->ttft_p50 = percentile(ttft, n_ttft, 50), m->ttft_p99 = percentile(ttft, n_ttft, 99);
    m->tpot_p50 = percentile(tpot, n_tpot, 50), m->tpot_p99 = percentile(tpot, n_tpot, 99);
    m->peak_blocks = e->pool.peak_used, m->num_blocks = e->pool.num_blocks;
    m->prefix_hit_rate = m->prefix_looked_up > 0 ? (double)m->prefix_reused / (double)m->prefix_looked_up : 0.0;
    m->cached_blocks = e->pool.n_cached, m->evictions = (long)e->pool.n_evictions;
    mem_free(ttft), mem_free(tpot);
    return 0;
}

/* ==== engine_serve ================================================================================ */

int engine_serve(const Model *m, const EngineRequest *reqs, int n, const EngineOptions *opt, EngineResult *results,
                 EngineMetrics *metrics)
{
    if (engine_check_options(opt) != 0)
        return -1;
    memset(metrics, 0, sizeof *metrics);
    memset(results, 0, (size_t)n * sizeof(EngineResult));
    Engine e = {.m = m, .reqs = reqs, .n = n, .o = *opt, .res = results, .met = metrics};
    int rc = engine_open_pool(&e) != 0 || engine_open_seqs(&e) != 0 ? -1 : 0;
    while (rc == 0 && e.settled < n)
        rc = engine_step(&e);
    if (metrics->iterations > 0)
        metrics->mean_batch /= metrics->iterations;
    if (rc == 0)
        rc = collect_results(&e) != 0 || finish_metrics(&e) != 0 ? -1 : 0;
    if (rc == 0 && e.pool.n_free != e.pool.num_blocks)
        rc = error_set("internal error: %d blocks still in use after every request finished",
                       e.pool.num_blocks - e.pool.n_free);
    engine_close(&e);
    if (rc != 0)
        engine_free_results(results, n), engine_free_metrics(metrics);
    return rc;
}

int engine_serve_alone(const Model *m, const EngineRequest *reqs, int n, const EngineOptions *o, int ***tokens)
{
    int **t = mem_alloc((size_t)n * sizeof(int *), "token lists"); /* (n), zeroed: NULL where rejected */
    if (!t)
        return -1;
    for (int i = 0; i < n; i++) {
        EngineOptions oi = *o;
        oi.seed = o->seed + (uint64_t)i, oi.keep_log = 0, oi.trace = NULL;
        EngineResult res;
        EngineMetrics mt;
        if (engine_serve(m, &reqs[i], 1, &oi, &res, &mt) != 0) {
            engine_free_tokens(t, n);
            return -1;
        }
        if (res.status != ENGINE_REJECTED) {
            t[i] = mem_alloc(((size_t)reqs[i].max_new + 1) * sizeof(int), "the tokens of a request");
            if (!t[i]) {
                engine_free_results(&res, 1), engine_free_metrics(&mt), engine_free_tokens(t, n);
                return -1;
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
        mem_free(tokens[i]);
    mem_free(tokens);
}

void engine_free_results(EngineResult *results, int n)
{
    for (int i = 0; i < n && results; i++) {
        mem_free(results[i].tokens);
        results[i].tokens = NULL;
    }
}

void engine_free_metrics(EngineMetrics *metrics)
{
    free(metrics->log);
    metrics->log = NULL;
}
