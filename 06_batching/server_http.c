/*
 * server_http.c: the server's HTTP side -- what one connection does, on libmicrohttpd.
 *
 * What it teaches: a connection's life in an inference server.
 *
 *   body          read up to --max-body bytes (413 past it)
 *   route         POST /v1/completions, GET /v1/models, /health, /metrics, the live page at / and
 *                 its /state; 404 elsewhere, 405 for a known path with the wrong method
 *   completion    checked (400 naming the field), queued (503 with Retry-After when --max-waiting
 *                 requests wait already), then either one JSON body when it is done, or Server-Sent
 *                 Events: one `data: {...}` chunk per iteration that made a token, `data: [DONE]`
 *   goes away     a client that closes its connection is noticed while its connection waits (a
 *                 look at the socket every 50 ms) or when a write fails: its request is aborted and
 *                 its blocks return to the pool; the others go on unchanged
 *
 * libmicrohttpd runs a thread per connection, so a connection may simply wait for its tokens on a
 * condition variable; the engine thread (server_engine.c) wakes every waiting connection after
 * each iteration.
 */
#define _DEFAULT_SOURCE /* MSG_DONTWAIT, and the socket types microhttpd.h uses */
#include "06_batching/server.h"

#if HAVE_SERVER
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>


/* One connection's request. */
typedef struct {
    Http *h;
    struct MHD_Connection *conn;
    char *body; /* (n_body) the request body so far */
    size_t n_body;
    int too_large;
    ServerRequest *req; /* the completion, shared with the engine thread */
    CompletionMeta cm;
    int include_usage;
    int sent;           /* tokens already written */
    TextStream ts;
    char *out;          /* (n_out) events still to write, from off */
    size_t n_out, off;
    int over;           /* the last event is in out */
    const char *allow;  /* a 405's Allow header */
} Conn;

/* ==== responses =================================================================================== */

static enum MHD_Result respond(Conn *c, unsigned status, const char *type, char *body)
{
    if (!body) { /* out of memory building it */
        static char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\"}}";
        body = strdup(oom);
        status = 500;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(body ? strlen(body) : 0, body, MHD_RESPMEM_MUST_FREE);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 503)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 405)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, c->allow);
    const enum MHD_Result ret = MHD_queue_response(c->conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* An OpenAI-style error object with its status. */
static enum MHD_Result respond_error(Conn *c, unsigned status, const char *message, const char *param)
{
    const char *type = status == 404   ? "not_found_error"
                       : status == 503 ? "service_unavailable"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    if (status >= 400 && status < 500) {
        pthread_mutex_lock(&c->h->s.mu);
        c->h->s.bad_requests++;
        pthread_mutex_unlock(&c->h->s.mu);
    }
    return respond(c, status, "application/json", json_error_body(message, type, param, NULL));
}

/* ==== waiting for tokens ========================================================================== */

/* 1 when the peer closed its end (a look at the socket: EOF or an error, not merely no data). */
static int client_gone(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return 0;
    char b;
    const ssize_t r = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Waits until the request has more than c->sent tokens or is done; *n = its tokens now (entries
 * below n never change again, so they are read without the lock). 0, or -1 when the client left
 * (the request is then cancelled). */
static int wait_progress(Conn *c, int *n, int *done)
{
    Server *s = &c->h->s;
    ServerRequest *req = c->req;
    pthread_mutex_lock(&s->mu);
    while (!req->done && req->n_tokens == c->sent) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 50 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L)
            until.tv_sec++, until.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->progress, &s->mu, &until);
        if (!req->done && client_gone(c->conn)) {
            req->cancel = 1;
            pthread_cond_signal(&s->work);
            pthread_mutex_unlock(&s->mu);
            return -1;
        }
    }
    *n = req->n_tokens, *done = req->done;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static const char *finish_reason(const ServerRequest *req)
{
    return req->stopped ? "stop" : "length";
}

/* The next events of a stream into c->out: a chunk with the new tokens' text (the last one with
 * its finish_reason, then usage when asked, then [DONE]), or an error event when the request was
 * aborted by the server. 0, or -1 (the client left, or out of memory). */
static int next_events(Conn *c)
{
    int n, done;
    if (wait_progress(c, &n, &done) != 0)
        return -1;
    free(c->out);
    c->out = NULL, c->n_out = 0, c->off = 0;
    char *text = NULL, *ev = NULL;
    size_t len = 0;
    const ServerRequest *req = c->req;
    int rc = text_stream_push(&c->ts, req->tokens + c->sent, n - c->sent, done, &text, &len);
    if (rc == 0 && done && req->state != LIVE_DONE) {
        char *err = json_error_body(req->reason, "server_error", NULL, NULL);
        const size_t need = err ? strlen(err) + 24 : 0;
        ev = err ? malloc(need) : NULL;
        if (ev)
            snprintf(ev, need, "data: %s\n\ndata: [DONE]\n\n", err);
        free(err);
    } else if (rc == 0) {
        char *chunk = completion_chunk(&c->cm, text, req->tokens + c->sent, n - c->sent,
                                       done ? finish_reason(req) : NULL, -1, 0);
        char *use = done && c->include_usage ? completion_chunk(&c->cm, "", NULL, 0, NULL, req->r.n_prompt, n) : NULL;
        const size_t need = (chunk ? strlen(chunk) : 0) + (use ? strlen(use) : 0) + 16;
        ev = chunk && (use || !(done && c->include_usage)) ? malloc(need) : NULL;
        if (ev)
            snprintf(ev, need, "%s%s%s", chunk, use ? use : "", done ? "data: [DONE]\n\n" : "");
        free(chunk), free(use);
    }
    free(text);
    if (!ev)
        return -1;
    c->out = ev, c->n_out = strlen(ev), c->sent = n, c->over = done;
    return 0;
}

/* libmicrohttpd's content reader for a stream: pending bytes first, then the next events. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    Conn *c = cls;
    (void)pos;
    while (c->off == c->n_out) {
        if (c->over)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (next_events(c) != 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    const size_t k = c->n_out - c->off < max ? c->n_out - c->off : max;
    memcpy(buf, c->out + c->off, k);
    c->off += k;
    return (ssize_t)k;
}

/* ==== POST /v1/completions ======================================================================== */

/* The whole response once the request is done (stream off). */
static enum MHD_Result respond_when_done(Conn *c)
{
    int n = 0, done = 0;
    while (!done)
        if (wait_progress(c, &n, &done) != 0)
            return MHD_NO; /* nobody to answer: close */
    const ServerRequest *req = c->req;
    if (req->state == LIVE_REJECTED)
        return respond_error(c, 400, req->reason, NULL);
    if (req->state != LIVE_DONE)
        return respond_error(c, c->h->s.failed ? 500 : 503, req->reason, NULL);
    char *text = NULL;
    size_t len = 0;
    if (text_stream_push(&c->ts, req->tokens, n, 1, &text, &len) != 0)
        return respond(c, 500, "application/json", NULL);
    char *body = completion_body(&c->cm, text, req->tokens, n, finish_reason(req), req->r.n_prompt);
    free(text);
    return respond(c, 200, "application/json", body);
}

static enum MHD_Result completions(Conn *c)
{
    Http *h = c->h;
    Server *s = &h->s;
    char msg[512];
    const char *param = NULL;
    if (c->too_large) {
        snprintf(msg, sizeof msg, "the body is larger than --max-body %zu bytes", h->max_body);
        return respond_error(c, 413, msg, NULL);
    }
    CompletionParams p;
    const int status = completion_parse(&s->sm, c->body ? c->body : "", c->n_body, &p, msg, sizeof msg, &param);
    if (status != 0)
        return respond_error(c, (unsigned)status, msg, param);
    ServerRequest *req = calloc(1, sizeof *req);
    int *tokens = malloc(((size_t)p.max_tokens + 1) * sizeof(int)); /* (max_tokens) */
    if (!req || !tokens) {
        free(req), free(tokens), completion_params_free(&p);
        return respond_error(c, 500, "out of memory for a request", NULL);
    }
    pthread_mutex_lock(&s->mu);
    const long id = h->next_id++;
    pthread_mutex_unlock(&s->mu);
    req->r = (EngineRequest){.max_new = p.max_tokens, .n_prompt = p.n_prompt, .prompt = p.prompt,
                             .has_temperature = 1, .has_top_p = 1, .has_top_k = 1, .has_seed = 1,
                             .temperature = p.temperature, .top_p = p.top_p, .top_k = p.top_k,
                             .seed = p.has_seed ? p.seed : s->o.seed + (uint64_t)id};
    req->tokens = tokens, req->t_arrival = server_now(s);
    const int rc = server_submit(s, req, msg, sizeof msg);
    if (rc != 0) {
        free(req->r.prompt), free(req->tokens), free(req);
        return respond_error(c, (unsigned)rc, msg, NULL);
    }
    c->req = req, c->include_usage = p.include_usage;
    c->cm = (CompletionMeta){.id = id, .created = (long)time(NULL), .model_id = s->sm.model_id};
    text_stream_init(&c->ts, s->sm.tok, p.n_prompt > 0 ? p.prompt[p.n_prompt - 1] : 1);
    if (!p.stream)
        return respond_when_done(c);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, c, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    const enum MHD_Result ret = MHD_queue_response(c->conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}

/* ==== GET routes ================================================================================== */

static enum MHD_Result models(Conn *c)
{
    const Server *s = &c->h->s;
    return respond(c, 200, "application/json", models_body(s->sm.model_id, (long)time(NULL), s->m->c.seq_len));
}

/* The live page: static bytes in the program, never freed. */
static enum MHD_Result page(Conn *c)
{
    size_t n;
    const char *html = server_page_html(&n);
    struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)html, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
    const enum MHD_Result ret = MHD_queue_response(c->conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result wrong_method(Conn *c, const char *allow)
{
    char msg[64];
    snprintf(msg, sizeof msg, "use %s", allow);
    c->allow = allow;
    return respond_error(c, 405, msg, NULL);
}

static enum MHD_Result route(Conn *c, const char *url, const char *method)
{
    const int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0, post = strcmp(method, "POST") == 0;
    if (strcmp(url, "/v1/completions") == 0)
        return post ? completions(c) : wrong_method(c, "POST");
    const int known = strcmp(url, "/health") == 0 || strcmp(url, "/v1/models") == 0 || strcmp(url, "/metrics") == 0 ||
                      strcmp(url, "/") == 0 || strcmp(url, "/state") == 0;
    if (known && !get)
        return wrong_method(c, "GET");
    if (strcmp(url, "/health") == 0)
        return c->h->s.failed ? respond_error(c, 500, c->h->s.error, NULL)
                              : respond(c, 200, "application/json", strdup("{\"status\":\"ok\"}"));
    if (strcmp(url, "/v1/models") == 0)
        return models(c);
    if (strcmp(url, "/metrics") == 0)
        return respond(c, 200, "text/plain; version=0.0.4", server_metrics_text(&c->h->s));
    if (strcmp(url, "/state") == 0) {
        char *state = server_state_get(&c->h->s);
        return state ? respond(c, 200, "application/json", state)
                     : respond_error(c, 503, "the engine's state is not written yet: ask again", NULL);
    }
    if (strcmp(url, "/") == 0)
        return page(c);
    char msg[256];
    snprintf(msg, sizeof msg,
             "no route %s %.128s (there are POST /v1/completions, GET /v1/models, /health, /metrics, /state, /)", method,
             url);
    return respond_error(c, 404, msg, NULL);
}

/* ==== libmicrohttpd's callbacks =================================================================== */

/* Called for the headers, for each piece of the body, and once after the body: route then. */
enum MHD_Result server_on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    Conn *c = *con_cls;
    if (!c) { /* the headers: a Conn for what follows */
        c = calloc(1, sizeof *c);
        if (!c)
            return MHD_NO;
        c->h = cls, c->conn = conn;
        *con_cls = c;
        return MHD_YES;
    }
    if (*upload_size > 0) { /* a piece of the body: kept up to --max-body, the rest read and dropped */
        if (c->too_large || c->n_body + *upload_size > c->h->max_body) {
            c->too_large = 1;
        } else {
            char *b = realloc(c->body, c->n_body + *upload_size + 1);
            if (!b)
                return MHD_NO;
            memcpy(b + c->n_body, upload, *upload_size);
            c->body = b, c->n_body += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    return route(c, url, method);
}

/* The connection's request is over (answered, or the client left): a completion still running is
 * cancelled, and the Conn freed. */
void server_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)conn, (void)toe;
    Http *h = cls;
    Conn *c = *con_cls;
    if (!c)
        return;
    if (c->req) {
        pthread_mutex_lock(&h->s.mu);
        if (!c->req->done) {
            c->req->cancel = 1;
            pthread_cond_signal(&h->s.work);
        }
        server_request_put(&h->s, c->req);
        h->s.in_flight--;
        pthread_cond_broadcast(&h->s.progress); /* server_drain waits for in_flight to reach 0 */
        pthread_mutex_unlock(&h->s.mu);
    }
    free(c->body), free(c->out), free(c);
    *con_cls = NULL;
}


#endif
