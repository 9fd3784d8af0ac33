/*
 * server.h: chapter 06's HTTP server -- the engine behind an OpenAI-compatible API, in real time.
 *
 * Five files, one idea each:
 *   server_json.c    the API's JSON (jansson): a completion request read and checked, the
 *                    responses and Server-Sent Events chunks written, OpenAI-style error objects,
 *                    and token pieces turned into valid UTF-8 text as they stream
 *   server_engine.c  the engine thread: requests enter through a queue guarded by one mutex, the
 *                    live engine (live.c) runs one iteration at a time on the wall clock, and after
 *                    each one every request's new tokens are copied out and the connections woken;
 *                    the counters and latency histograms that /metrics prints
 *   server_http.c    HTTP (libmicrohttpd, a thread per connection): the routes, the body limit,
 *                    streaming, clients that go away
 *   server.c         the command: options, listening, connection limits, SIGINT/SIGTERM
 *   server_state.c   the engine's state as JSON for the live page at / (page.html, compiled in):
 *                    the block pool, the queues with block tables, the grid's last columns
 *
 * Only the engine thread touches the live engine; connections see a request only through its
 * ServerRequest, under the server's mutex.
 */
#ifndef ENGINE_SERVER_H
#define ENGINE_SERVER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "06_batching/engine.h"
#include "common/model.h"
#include "common/tokenizer.h"

/* ==== server_json.c ============================================================================= */

/* A completion request, read and checked. */
typedef struct {
    int *prompt;       /* (n_prompt) ids: the text encoded with BOS first, or the ids sent (malloc'd) */
    int n_prompt;
    int max_tokens;    /* default 16, as OpenAI's API */
    float temperature; /* default 1, as OpenAI's API; 0: greedy */
    float top_p;       /* default 1 (off), as OpenAI's API; (0, 1] */
    int top_k;         /* default 0 (off; -1 in the request, as vLLM's) */
    int has_seed;
    uint64_t seed;
    int stream, include_usage;
} CompletionParams;

/* What server_json needs to know of the server. */
typedef struct {
    const Model *m;
    const Tokenizer *tok;   /* NULL: prompts are token ids, texts are ids */
    const EngineOptions *o; /* the pool a request must fit */
    const char *model_id;
} ServedModel;

/* Reads body (n bytes) into *p. 0, or the HTTP status to answer (400, 404) with a message in msg
 * naming the problem and the offending field in *param (NULL for the body as a whole). */
int completion_parse(const ServedModel *sm, const char *body, size_t n, CompletionParams *p, char *msg, size_t len,
                     const char **param);
void completion_params_free(CompletionParams *p);

/* GET /v1/models: the one model, malloc'd. */
char *models_body(const char *model_id, long created, int max_model_len);
/* {"error": {"message", "type", "param", "code"}}, malloc'd. */
char *json_error_body(const char *message, const char *type, const char *param, const char *code);

/* Generated tokens as text that is always valid UTF-8, one token at a time: a piece that ends in
 * the middle of a character keeps its bytes until the next piece completes it (a byte-fallback
 * token is one byte of a character); a byte that can start no character becomes U+FFFD. Without
 * a tokenizer, each token is " <id>". */
typedef struct {
    const Tokenizer *tok;
    int prev;          /* the token before (a piece depends on it: llama2.c's space after BOS) */
    unsigned char pend[4];
    int n_pend;
} TextStream;
void text_stream_init(TextStream *ts, const Tokenizer *tok, int prev);
/* Appends the text of ids[0..n) to out (a malloc'd string, reallocated); flush: also the bytes
 * still held (an incomplete character at the end becomes U+FFFD). 0, or -1 out of memory. */
int text_stream_push(TextStream *ts, const int *ids, int n, int flush, char **out, size_t *len);

/* The fields every response of one completion repeats. */
typedef struct {
    long id;
    long created;
    const char *model_id;
} CompletionMeta;

/* The whole response (stream off), malloc'd: choices[0] with text, token_ids, finish_reason, and usage. */
char *completion_body(const CompletionMeta *cm, const char *text, const int *ids, int n, const char *finish,
                      int prompt_tokens);
/* One Server-Sent Event "data: {...}\n\n" with a chunk of text and its ids (finish NULL: not the
 * last), malloc'd; usage_prompt >= 0: the usage chunk instead (no choices). */
char *completion_chunk(const CompletionMeta *cm, const char *text, const int *ids, int n, const char *finish,
                       int usage_prompt, int usage_completion);

/* ==== server_engine.c =========================================================================== */

/* One completion between its connection and the engine thread. Fields below `lock` change under
 * the server's mutex only. */
typedef struct ServerRequest {
    EngineRequest r;       /* the prompt (owned), max_new, temperature and seed */
    double t_arrival;      /* server clock when it was queued */
    /* lock */
    int *tokens;           /* (r.max_new) generated so far */
    int n_tokens;
    int done;              /* settled: finished, rejected or aborted */
    EngineLiveState state; /* when done */
    int stopped;           /* done at a sampled BOS or EOS */
    char reason[192];
    int cancel;            /* the client went away: abort it */
    int refs;              /* the connection and the engine thread: freed at 0 */
    int slot;              /* in the live engine; -1 before it is submitted */
    double t_last;         /* when its last token arrived */
    struct ServerRequest *next; /* the queue of requests not yet submitted */
} ServerRequest;

#define SERVER_TTFT_BUCKETS 14
#define SERVER_ITL_BUCKETS 13

typedef struct {
    const double *le;    /* (n) upper bounds, the last +Inf */
    int n;
    long count[SERVER_TTFT_BUCKETS]; /* per bucket (not cumulative) */
    double sum;
    long total;
} Histogram;

typedef struct {
    const Model *m;
    EngineOptions o;
    ServedModel sm;
    int max_waiting;         /* queued requests beyond which new ones get 503 */
    pthread_mutex_t mu;
    pthread_cond_t work;     /* the engine thread waits for requests */
    pthread_cond_t progress; /* connections wait for tokens */
    ServerRequest *queue_head, *queue_tail; /* not yet submitted */
    int n_queued;
    ServerRequest **active;  /* (capacity) submitted, not yet settled */
    int n_active, capacity;
    EngineLiveStats stats;   /* after the last iteration */
    Histogram ttft, itl;
    long requests_total, rejected_503, bad_requests;
    int in_flight;           /* completions queued and not yet answered to the end (server_http.c) */
    int stopping;            /* SIGINT or SIGTERM: abort what is left, the thread ends */
    int failed;              /* the engine hit an error: every request gets it */
    char error[256];
    double t0;               /* timer_now() at the start: the server clock's zero */
    pthread_t thread;
    EngineLive *live;
    long tokens_out;         /* tokens handed to requests so far (the page's throughput) */
    char *state_json;        /* GET /state's body, built by the engine thread (server_state.c) */
    double state_at;         /* server clock when it was built */
    double state_wanted_at;  /* server clock of the last GET /state: kept fresh while someone looks */
} Server;

/* The live engine with room for max_batch running and max_waiting waiting requests, and its
 * thread started. 0, or -1 with an error recorded. */
int server_engine_start(Server *s);
/* Stops the thread: every request still in flight is aborted and its connection woken. */
void server_engine_stop(Server *s);
/* After server_engine_stop: waits up to `seconds` for every connection with a completion to
 * have written its answer to the end (a stream its error event and [DONE]); the number still
 * unanswered when it gives up. */
int server_drain(Server *s, double seconds);
/* Frees the engine, after the last connection has ended. */
void server_engine_free(Server *s);
/* The server clock: seconds since the start. */
double server_now(const Server *s);
/* Queues req (refs 2: the caller's and the engine's). 0, or 503 when the queue is full, or 500
 * when the engine failed (msg says why). Takes the mutex. */
int server_submit(Server *s, ServerRequest *req, char *msg, size_t len);
/* Drops one reference (under the mutex); the last one frees req. */
void server_request_put(Server *s, ServerRequest *req);
/* Prometheus text exposition of the counters, gauges and histograms, malloc'd. Takes the mutex. */
char *server_metrics_text(Server *s);

/* ==== server_state.c: what the live page (page.html) draws ======================================== */

/* The engine's state as JSON (docs/contracts.md §1.10, GET /state): the pool block by block, the
 * running and waiting sequences with their block tables, the last iterations' grid columns and
 * the totals the page's charts difference. Engine thread, under the mutex: rebuilds s->state_json
 * when forced, or when a page asked within the last 5 s and the last build is 0.1 s old. */
void server_state_refresh(Server *s, int force);
/* A copy of the latest state (malloc'd; NULL out of memory); marks it wanted. Takes the mutex. */
char *server_state_get(Server *s);
/* The page itself (06_batching/page.html, compiled into the program): n bytes. */
const char *server_page_html(size_t *n);

/* ==== server_http.c ============================================================================== */

#if HAVE_SERVER
#include <microhttpd.h>

/* What every connection shares: the server, and the HTTP limits. */
typedef struct {
    Server s;
    size_t max_body;
    long next_id;       /* completion ids (under s.mu) */
} Http;

/* libmicrohttpd's request handler (cls: the Http): called for the headers, for each piece of the
 * body, and once after the body, when the request is routed and answered. */
enum MHD_Result server_on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls);
/* Called when a connection's request is over (answered, or the client left): a completion still
 * running is cancelled. */
void server_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe);
#endif

#endif
