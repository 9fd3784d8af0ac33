/*
 * server_engine.c: the server's engine thread -- continuous batching on the wall clock.
 *
 * What it teaches: the scheduler of chapter 06 does not care where requests come from. Here they
 * come from HTTP connections, each in its own thread, which never touch the engine: a connection
 * puts its request on a queue and waits; one engine thread loops
 *
 *   take the queue     new requests enter the live engine (live.c); requests whose client went
 *                      away are aborted (their blocks go back to the pool at once)
 *   one iteration      engine_live_step: schedule, one batched forward, sample -- without the
 *                      lock, so connections can queue requests meanwhile
 *   hand out tokens    every request's new tokens are copied to its ServerRequest, settled
 *                      requests leave the engine, and every waiting connection is woken
 *
 * so a token reaches its client as soon as the iteration that made it ends, and a request that
 * arrives during an iteration joins the batch at the next one -- continuous batching, for real.
 * The same loop keeps what /metrics prints: the engine's counters after each iteration, and the
 * time to first token and inter-token latency of every request in histograms.
 */
#include "06_batching/server.h"

#if HAVE_SERVER
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "common/timer.h"

/* Prometheus histogram bounds, in seconds (the last one +Inf). */
static const double TTFT_LE[SERVER_TTFT_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                    0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 1e300};
static const double ITL_LE[SERVER_ITL_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                  0.1,    0.25,  0.5,    1.0,   2.5,  1e300};

double server_now(const Server *s)
{
    return timer_now() - s->t0;
}

static void observe(Histogram *h, double x)
{
    int k = 0;
    while (k < h->n - 1 && x > h->le[k])
        k++;
    h->count[k]++, h->sum += x, h->total++;
}

void server_request_put(Server *s, ServerRequest *req)
{
    (void)s;
    if (--req->refs > 0)
        return;
    free(req->r.prompt);
    free(req->tokens);
    free(req);
}

int server_submit(Server *s, ServerRequest *req, char *msg, size_t len)
{
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->failed || s->stopping) {
        snprintf(msg, len, "%s", s->failed ? s->error : "the server is shutting down");
        rc = s->failed ? 500 : 503;
    } else if (s->n_queued + s->stats.waiting >= s->max_waiting) {
        snprintf(msg, len, "%d requests are waiting already (--max-waiting %d): try again shortly",
                 s->n_queued + s->stats.waiting, s->max_waiting);
        s->rejected_503++;
        rc = 503;
    } else {
        req->refs = 2, req->slot = -1, req->next = NULL;
        if (s->queue_tail)
            s->queue_tail->next = req;
        else
            s->queue_head = req;
        s->queue_tail = req;
        s->n_queued++, s->requests_total++, s->in_flight++;
        pthread_cond_signal(&s->work);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ==== the engine thread's steps (all but step() under the mutex) ================================== */

/* Queued requests enter the engine while it has free slots; aborts are passed on. */
static void take_queue(Server *s)
{
    while (s->queue_head && s->n_active < s->capacity) {
        ServerRequest *req = s->queue_head;
        const int slot = engine_live_submit(s->live, &req->r);
        if (slot < 0)
            break; /* no free slot after all: it stays first in the queue */
        s->queue_head = req->next;
        if (!s->queue_head)
            s->queue_tail = NULL;
        s->n_queued--;
        req->slot = slot;
        s->active[s->n_active++] = req;
    }
    for (int k = 0; k < s->n_active; k++)
        if (s->active[k]->cancel)
            engine_live_abort(s->live, s->active[k]->slot);
    engine_live_stats(s->live, &s->stats);
}

/* Settles req: its state and reason, its slot released, the engine's reference dropped. */
static void settle(Server *s, ServerRequest *req, EngineLiveState st, const char *reason)
{
    req->done = 1, req->state = st;
    req->stopped = req->slot >= 0 && engine_live_stopped(s->live, req->slot);
    snprintf(req->reason, sizeof req->reason, "%s", reason);
    if (req->slot >= 0)
        engine_live_release(s->live, req->slot);
    req->slot = -1;
    server_request_put(s, req);
}

/* After an iteration: new tokens copied out (timed: TTFT, inter-token latency), settled requests out. */
static void hand_out_tokens(Server *s)
{
    const double now = server_now(s);
    for (int k = 0; k < s->n_active;) {
        ServerRequest *req = s->active[k];
        const int *tokens;
        const char *reason;
        int n;
        const EngineLiveState st = engine_live_state(s->live, req->slot, &tokens, &n, &reason);
        for (int t = req->n_tokens; t < n && t < req->r.max_new; t++) {
            req->tokens[t] = tokens[t];
            s->tokens_out++;
            observe(t == 0 ? &s->ttft : &s->itl, t == 0 ? now - req->t_arrival : now - req->t_last);
            req->t_last = now;
        }
        req->n_tokens = n < req->r.max_new ? n : req->r.max_new;
        if (st == LIVE_DONE || st == LIVE_REJECTED || st == LIVE_ABORTED) {
            settle(s, req, st, reason);
            s->active[k] = s->active[--s->n_active];
        } else {
            k++;
        }
    }
    engine_live_stats(s->live, &s->stats);
}

/* Stopping or failed: every request still queued or in the engine is aborted with why. */
static void abort_everything(Server *s, const char *why)
{
    while (s->queue_head) {
        ServerRequest *req = s->queue_head;
        s->queue_head = req->next;
        settle(s, req, LIVE_ABORTED, why);
    }
    s->queue_tail = NULL, s->n_queued = 0;
    for (int k = 0; k < s->n_active; k++)
        settle(s, s->active[k], LIVE_ABORTED, why);
    s->n_active = 0;
}

static void *engine_thread(void *arg)
{
    Server *s = arg;
    pthread_mutex_lock(&s->mu);
    int dirty = 1; /* the page's state is older than the engine's */
    while (!s->stopping) {
        if (!s->queue_head && s->n_active == 0) {
            if (dirty) /* idle: the state the page shows until the next request */
                server_state_refresh(s, 1), dirty = 0;
            pthread_cond_wait(&s->work, &s->mu);
            continue;
        }
        take_queue(s);
        pthread_mutex_unlock(&s->mu);
        const int rc = engine_live_step(s->live); /* the forward runs without the lock */
        pthread_mutex_lock(&s->mu);
        if (rc < 0) {
            s->failed = 1;
            snprintf(s->error, sizeof s->error, "the engine failed: %s", error_message());
            fprintf(stderr, "%s: %s\n", "06_batching server", s->error);
            abort_everything(s, s->error);
        } else {
            hand_out_tokens(s);
            server_state_refresh(s, 0), dirty = 1; /* rebuilt only while a page is watching */
        }
        pthread_cond_broadcast(&s->progress);
        if (s->failed)
            break;
    }
    abort_everything(s, s->failed ? s->error : "the server is shutting down");
    pthread_cond_broadcast(&s->progress);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ==== start and stop ============================================================================== */

int server_engine_start(Server *s)
{
    s->capacity = s->o.max_batch + s->max_waiting;
    s->ttft = (Histogram){.le = TTFT_LE, .n = SERVER_TTFT_BUCKETS};
    s->itl = (Histogram){.le = ITL_LE, .n = SERVER_ITL_BUCKETS};
    s->active = calloc((size_t)s->capacity, sizeof *s->active);
    if (!s->active)
        return error_set("out of memory for %d request slots", s->capacity);
    s->live = engine_live_open(s->m, &s->o, s->capacity);
    if (!s->live) {
        free(s->active);
        return -1;
    }
    engine_live_stats(s->live, &s->stats);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->progress, NULL);
    if (pthread_create(&s->thread, NULL, engine_thread, s) != 0) {
        engine_live_close(s->live), free(s->active);
        return error_set("could not start the engine thread");
    }
    return 0;
}

void server_engine_stop(Server *s)
{
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
}

int server_drain(Server *s, double seconds)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)seconds;
    until.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (until.tv_nsec >= 1000000000L)
        until.tv_sec++, until.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&s->mu);
    while (s->in_flight > 0 && pthread_cond_timedwait(&s->progress, &s->mu, &until) == 0) {
    }
    const int left = s->in_flight;
    pthread_mutex_unlock(&s->mu);
    return left;
}

void server_engine_free(Server *s)
{
    engine_live_close(s->live);
    free(s->active);
    free(s->state_json);
    pthread_cond_destroy(&s->work), pthread_cond_destroy(&s->progress), pthread_mutex_destroy(&s->mu);
}

/* ==== /metrics ==================================================================================== */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} Text;

static void put(Text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(Text *t, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2 && !t->oom; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        const int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0 || (t->buf && (size_t)n < t->cap - t->len)) {
            t->len += n > 0 ? (size_t)n : 0;
            return;
        }
        const size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *b = realloc(t->buf, cap);
        if (!b)
            t->oom = 1;
        else
            t->buf = b, t->cap = cap;
    }
}

static void metric(Text *t, const char *name, const char *type, const char *help, double value)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
}

static void histogram(Text *t, const char *name, const char *help, const Histogram *h)
{
    put(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    long cum = 0;
    for (int k = 0; k < h->n; k++) {
        cum += h->count[k];
        if (k == h->n - 1)
            put(t, "%s_bucket{le=\"+Inf\"} %ld\n", name, cum);
        else
            put(t, "%s_bucket{le=\"%g\"} %ld\n", name, h->le[k], cum);
    }
    put(t, "%s_sum %.9g\n%s_count %ld\n", name, h->sum, name, h->total);
}

char *server_metrics_text(Server *s)
{
    Text t = {0};
    pthread_mutex_lock(&s->mu);
    const EngineLiveStats st = s->stats;
    const Histogram ttft = s->ttft, itl = s->itl;
    const long total = s->requests_total, r503 = s->rejected_503, bad = s->bad_requests;
    const int queued = s->n_queued;
    pthread_mutex_unlock(&s->mu);
    metric(&t, "engine_requests_running", "gauge", "Sequences in the batch (holding KV blocks).", st.running);
    metric(&t, "engine_requests_waiting", "gauge", "Requests waiting for the batch (queued or preempted).",
           st.waiting + queued);
    metric(&t, "engine_kv_blocks_used", "gauge", "KV blocks held by sequences.", st.blocks_used);
    metric(&t, "engine_kv_blocks_cached", "gauge", "Free KV blocks kept for their prefix (reference count 0).",
           st.blocks_cached);
    metric(&t, "engine_kv_blocks_total", "gauge", "KV blocks in the pool.", st.num_blocks);
    metric(&t, "engine_preemptions_total", "counter", "Sequences preempted (blocks given back, recomputed later).",
           (double)st.preemptions);
    metric(&t, "engine_iterations_total", "counter", "Batched forwards run.", (double)st.iterations);
    metric(&t, "engine_prefix_cache_queried_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
           (double)st.prefix_looked_up);
    metric(&t, "engine_prefix_cache_hit_tokens_total", "counter", "Prompt tokens found cached (not computed).",
           (double)st.prefix_reused);
    metric(&t, "engine_prefix_cache_hit_rate", "gauge", "Hit tokens / queried tokens since the start.",
           st.prefix_looked_up ? (double)st.prefix_reused / (double)st.prefix_looked_up : 0.0);
    metric(&t, "engine_generation_tokens_total", "counter", "Tokens generated by finished requests.",
           (double)st.generated);
    put(&t, "# HELP engine_requests_total Completion requests by outcome.\n# TYPE engine_requests_total counter\n");
    put(&t, "engine_requests_total{outcome=\"accepted\"} %ld\n", total);
    put(&t, "engine_requests_total{outcome=\"finished\"} %ld\n", st.completed);
    put(&t, "engine_requests_total{outcome=\"aborted\"} %ld\n", st.aborted);
    put(&t, "engine_requests_total{outcome=\"rejected_busy\"} %ld\n", r503);
    put(&t, "engine_requests_total{outcome=\"bad_request\"} %ld\n", bad);
    histogram(&t, "engine_time_to_first_token_seconds", "From the request's arrival to its first token.", &ttft);
    histogram(&t, "engine_inter_token_latency_seconds", "Between consecutive tokens of one request.", &itl);
    if (t.oom) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}

#endif
