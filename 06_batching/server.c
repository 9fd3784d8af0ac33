/*
 * server.c: `06_batching server` -- the engine behind an OpenAI-compatible HTTP API.
 *
 * What it teaches: what a serving engine adds around its loop, in three parts: HTTP is
 * libmicrohttpd's, a thread per connection (server_http.c); JSON is jansson's (server_json.c); the
 * engine runs in its own thread on the wall clock (server_engine.c). This file is the command:
 * its options, listening on --host and --port, and the end -- SIGINT or SIGTERM: stop accepting,
 * abort what is in flight (each client gets an error event or a 503), exit 0.
 *
 * Limits: --max-connections at once (more wait to be accepted), --idle-timeout seconds of silence close a
 * connection, --max-waiting queued requests, --max-body bytes of request body.
 */
#define _DEFAULT_SOURCE /* MSG_DONTWAIT, and the socket types microhttpd.h uses */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "06_batching/commands.h"
#include "06_batching/server.h"
#include "common/args.h"
#include "common/device.h"
#include "common/error.h"
#include "common/program.h"

#if HAVE_SERVER
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/timer.h"

/* ==== the command ================================================================================= */

typedef struct {
    const char *checkpoint, *tokenizer, *policy, *device, *prefix, *host, *name;
    int port, max_connections, idle_timeout, max_body;
    Device dev;
} ServerArgs;

static void server_parse(ServerArgs *a, Http *h, int argc, char **argv)
{
    Server *s = &h->s;
    *a = (ServerArgs){.policy = "continuous", .device = "auto", .prefix = "on", .host = "127.0.0.1", .port = 8000,
                      .max_connections = 256, .idle_timeout = 30, .max_body = 1 << 20};
    s->o = engine_default_options(), s->max_waiting = 256;
    int seed = 42;
    EngineOptions *o = &s->o;
    ArgSpec specs[] = {
        OPTION_CHECKPOINT(&a->checkpoint),
        {.name = "tokenizer", .kind = ARG_STRING, .dest = &a->tokenizer, .metavar = "T.bin",
         .help = "prompts may be text and responses are text; a completion stops at BOS or EOS (finish_reason stop)"},
        {.name = "host", .kind = ARG_STRING, .dest = &a->host, .metavar = "ADDR",
         .help = "address to listen on (default 127.0.0.1; 0.0.0.0: every interface, e.g. for a workshop)"},
        {.name = "port", .kind = ARG_INT, .dest = &a->port, .metavar = "N",
         .help = "port (default 8000; 0: any free port, printed at the start)", .min = 0, .max = 65535},
        {.name = "served-model-name", .kind = ARG_STRING, .dest = &a->name, .metavar = "NAME",
         .help = "the model's name in the API (default: the checkpoint's file name without .bin, or random-model)"},
        {.name = "policy", .kind = ARG_CHOICE, .dest = &a->policy, .choices = "continuous|static",
         .help = "continuous (default) or static batching"},
        ENGINE_OPTIONS_BATCH(o),
        {.name = "seed", .kind = ARG_INT, .dest = &seed, .metavar = "S", .min = 0, .max = 2147483647,
         .help = "a request without a seed samples with S + its number (default 42)"},
        ENGINE_OPTION_PREFIX_CACHING(&a->prefix),
        {.name = "max-waiting", .kind = ARG_INT, .dest = &s->max_waiting, .metavar = "N", .min = 1, .max = 1 << 20,
         .help = "requests that may wait for the batch; past it, 503 with Retry-After (default 256)"},
        {.name = "max-connections", .kind = ARG_INT, .dest = &a->max_connections, .metavar = "N", .min = 1,
         .max = 65536, .help = "connections at once, one thread each; more wait to be accepted until one closes (default 256)"},
        {.name = "idle-timeout", .kind = ARG_INT, .dest = &a->idle_timeout, .metavar = "S", .min = 1, .max = 86400,
         .help = "seconds a silent client may hold its connection (default 30)"},
        {.name = "max-body", .kind = ARG_INT, .dest = &a->max_body, .metavar = "BYTES", .min = 64, .max = 1 << 30,
         .help = "largest request body; past it, 413 (default 1048576)"},
        OPTION_DEVICE(&a->device, "where the forward runs (default auto: the GPU if there is one)"),
    };
    args_parse_or_exit(
        &(const ArgCommand){
            .summary =
                "Serves the model over HTTP with OpenAI's completions API until SIGINT or SIGTERM:\n"
                "POST /v1/completions (prompt as text with --tokenizer, or as a list of token ids; max_tokens,\n"
                "temperature, top_p, top_k, seed, stream), GET /v1/models, GET /health, GET /metrics (Prometheus\n"
                "text).\n"
                "The engine runs continuously on the wall clock: a request joins the batch at the next\n"
                "iteration, and each streamed token leaves as soon as its iteration ends. Greedy requests\n"
                "(temperature 0) get exactly the tokens 'serve' gives them. Prints 'listening on\n"
                "http://HOST:PORT' once it accepts connections. docs/06_batching.md, \"Serving it\".",
            .name = ENGINE_PROG " server", .usage = "[options]", .specs = specs, .n_specs = ARRAY_COUNT(specs)},
        argc, argv);
    if (device_resolve(a->device, &a->dev) != 0 || engine_policy_parse(a->policy, &o->policy) != 0)
        die_with_error();
    o->prefix_caching = strcmp(a->prefix, "on") == 0, o->seed = (uint64_t)seed, o->cuda = a->dev == DEVICE_CUDA;
    h->max_body = (size_t)a->max_body;
}

/* The daemon on host:port (a name or an address, IPv4 or IPv6); NULL with an error recorded. */
static struct MHD_Daemon *listen_on(const ServerArgs *a, Http *h, int *port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    char service[8];
    snprintf(service, sizeof service, "%d", a->port);
    const int g = getaddrinfo(a->host, service, &hints, &ai);
    if (g != 0) {
        error_set("--host %s: %s", a->host, gai_strerror(g));
        return NULL;
    }
    const unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC |
                           MHD_USE_ERROR_LOG | (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)a->port, NULL, NULL, server_on_request, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)a->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)a->idle_timeout, MHD_OPTION_NOTIFY_COMPLETED, server_on_completed, h, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) {
        error_set("could not listen on %s port %d (in use, or not an address of this machine?)", a->host, a->port);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *port = di ? di->port : a->port;
    return d;
}

/* The API's name of the model: --served-model-name, or the checkpoint's file name without .bin. */
static void model_name(const ServerArgs *a, char *buf, size_t len)
{
    const char *base = a->checkpoint ? strrchr(a->checkpoint, '/') : NULL;
    base = a->name ? a->name : !a->checkpoint ? "random-model" : base ? base + 1 : a->checkpoint;
    snprintf(buf, len, "%s", base);
    const size_t n = strlen(buf);
    if (!a->name && n > 4 && strcmp(buf + n - 4, ".bin") == 0)
        buf[n - 4] = '\0';
}

int engine_cmd_server(int argc, char **argv)
{
    ServerArgs a;
    Http h = {0};
    server_parse(&a, &h, argc, argv);
    /* SIGINT and SIGTERM are taken by sigwait below, SIGPIPE never kills a writer: blocked in every
     * thread, which inherits this mask */
    sigset_t sigs;
    sigemptyset(&sigs), sigaddset(&sigs, SIGINT), sigaddset(&sigs, SIGTERM), sigaddset(&sigs, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    Model m;
    program_load_model(a.checkpoint, &m);
    Tokenizer tok;
    const int text = tokenizer_setup(a.tokenizer, NULL, m.c.vocab_size, 0, &tok, NULL, NULL);
    if (text < 0)
        die_with_error();
    char name[256];
    model_name(&a, name, sizeof name);
    Server *s = &h.s;
    s->m = &m, s->o.stop_at_bos_eos = text, s->t0 = timer_now();
    s->sm = (ServedModel){.m = &m, .tok = text ? &tok : NULL, .o = &s->o, .model_id = name};
    if (server_engine_start(s) != 0) /* the pool: a --num-blocks too large fails here, before listening */
        die_with_error();
    s->o.num_blocks = s->stats.num_blocks; /* the default pool's size, for the checks of server_json.c */
    int port;
    struct MHD_Daemon *d = listen_on(&a, &h, &port);
    if (!d) {
        server_engine_stop(s), server_engine_free(s);
        die_with_error();
    }
    printf("%s server: listening on http://%s:%d (model %s, %s batching, max batch %d, %d blocks of %d tokens, "
           "prefix caching %s)\n",
           ENGINE_PROG, a.host, port, name, engine_policy_name(s->o.policy), s->o.max_batch, s->stats.num_blocks,
           s->o.block_size, a.prefix);
    fflush(stdout);
    int sig = 0;
    while (sig != SIGINT && sig != SIGTERM)
        sigwait(&sigs, &sig);
    fprintf(stderr, "%s server: %s: no new connections; aborting what is in flight\n", ENGINE_PROG,
            sig == SIGINT ? "SIGINT" : "SIGTERM");
    const int listen_fd = MHD_quiesce_daemon(d);
    server_engine_stop(s); /* every request in flight settles (aborted): its connection answers and ends */
    const int cut = server_drain(s, 0.5); /* the answers written before the sockets close */
    if (cut > 0)
        fprintf(stderr, "%s server: %d connections did not finish their answer in 0.5 s: closed\n", ENGINE_PROG, cut);
    MHD_stop_daemon(d);
    if (listen_fd >= 0)
        close(listen_fd);
    server_engine_free(s);
    if (text)
        tokenizer_free(&tok);
    model_free(&m);
    fprintf(stderr, "%s server: stopped\n", ENGINE_PROG);
    return 0;
}

#else /* built without libmicrohttpd and jansson */

int engine_cmd_server(int argc, char **argv)
{
    (void)argc, (void)argv;
    die("this build has no HTTP server: it needs libmicrohttpd and jansson (sudo apt-get install libmicrohttpd-dev "
        "libjansson-dev, then make)");
}

#endif
