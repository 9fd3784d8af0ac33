/*
 * requests.c: chapter 06's requests -- what a server is asked to do, before any scheduling.
 *
 * What it teaches: a request is an arrival time, a prompt and a number of tokens to generate;
 * a serving engine's input is a stream of them. They come from a file (one per line, parsed
 * here with the rule "the file is the unit of syntax, the request the unit of service": a line
 * that does not say a request rejects the file, a request the model cannot serve is rejected on
 * its own later), or from common/workload.h's synthetic streams. The engine takes them in
 * arrival order (engine_arrival_order), and the file format is written back by
 * engine_write_requests, so a generated workload can be served again and again. The workloads
 * of prefix caching (engine_make_prefix_workload) share prefixes on purpose: one system prompt
 * before every question, or each turn of a conversation after the previous turn.
 *
 * Ownership: an EngineRequest array and its prompts and reasons come from malloc (callers build
 * and grow them too) and go back through engine_free_requests.
 */
#include "06_batching/engine.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/fileio.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/tensor.h"

void engine_free_requests(EngineRequest *reqs, int n)
{
    for (int i = 0; i < n && reqs; i++)
        free(reqs[i].prompt), free(reqs[i].rejected);
    free(reqs);
}

/* The array p of *cap elements of `elem` bytes, grown to twice as many (*cap updated); NULL when
 * out of memory (p is then unchanged and still the caller's). */
static void *grow(void *p, int *cap, size_t elem)
{
    void *bigger = realloc(p, (size_t)*cap * 2 * elem);
    if (bigger)
        *cap *= 2;
    return bigger;
}

/* ==== one line ==================================================================================== */

/* "<arrival> <max_new>" at the start of p into *arrival and *max_new; *rest after them. -1 with
 * the reason in why. */
static int parse_head(char *p, double *arrival, long *max_new, char **rest, char *why, size_t why_len)
{
    char *end;
    errno = 0;
    *arrival = strtod(p, &end);
    if (end == p || errno || !isfinite(*arrival) || *arrival < 0 || (*end && !isspace((unsigned char)*end))) {
        snprintf(why, why_len, "the arrival time must be a number of seconds >= 0");
        return -1;
    }
    p = end;
    *max_new = strtol(p, &end, 10);
    if (end == p || (*end && !isspace((unsigned char)*end)) || *max_new < 0 || *max_new > (1L << 24)) {
        snprintf(why, why_len, "expected '<arrival_seconds> <max_new_tokens> <prompt ids...>': max_new must be an "
                               "integer >= 0");
        return -1;
    }
    *rest = end;
    return 0;
}

/* Sampling options after max_new: words "temperature=T", "top_p=P", "top_k=K", "seed=S", each at
 * most once, in any order; *p moves past them (to the separator before the prompt). Each sets its
 * field of r and its has_ flag. 0, or -1 with the reason in why (an unknown name, a bad value). */
static int parse_sampling(char **p, EngineRequest *r, char *why, size_t why_len)
{
    static const char *const names[4] = {"temperature=", "top_p=", "top_k=", "seed="};
    for (;;) {
        char *w = *p;
        while (*w == ' ' || *w == '	')
            w++;
        int k = 0;
        while (k < 4 && strncmp(w, names[k], strlen(names[k])) != 0)
            k++;
        if (k == 4)
            return 0; /* not an option: the prompt starts here */
        unsigned char *has[4] = {&r->has_temperature, &r->has_top_p, &r->has_top_k, &r->has_seed};
        const char *v = w + strlen(names[k]);
        char *end;
        errno = 0;
        const double x = k < 2 ? strtod(v, &end) : (double)strtoll(v, &end, 10);
        if (end == v || errno || (*end && !isspace((unsigned char)*end)) || *has[k]) {
            snprintf(why, why_len, "%.*s must be given once, as %s<%s>", (int)strlen(names[k]) - 1, names[k], names[k],
                     k < 2 ? "number" : "integer");
            return -1;
        }
        const int bad = k == 0   ? model_check_temperature(x) != 0
                        : k == 1 ? model_check_sampling(x, 0) != 0
                        : k == 2 ? x < 0 || x > 1e9
                                 : x < 0 || x > 9.2e18;
        if (bad) {
            snprintf(why, why_len, "%.*s=%.*s: %s", (int)strlen(names[k]) - 1, names[k], (int)(end - v), v,
                     k == 0 ? "expected 0 (greedy) or at least 1.2e-38"
                     : k == 1 ? "expected a number in (0, 1]"
                              : "expected an integer >= 0");
            return -1;
        }
        *has[k] = 1;
        if (k == 0)
            r->temperature = (float)x;
        else if (k == 1)
            r->top_p = (float)x;
        else if (k == 2)
            r->top_k = (int)x;
        else
            r->seed = (uint64_t)strtoull(v, NULL, 10);
        *p = end;
    }
}

/* Text mode: the rest of the line, after one separator, is the prompt, encoded with BOS first --
 * unless its length alone proves it cannot fit, which makes a request the model cannot serve
 * (rejected on its own output line: the file's syntax is fine), never encoded. */
static int parse_text_prompt(char *p, const Tokenizer *tok, int seq_len, EngineRequest *r, char *why, size_t why_len)
{
    if (*p)
        p++;
    p[strcspn(p, "\r\n")] = '\0';
    text_unescape(p);
    if (!*p) {
        snprintf(why, why_len, "the prompt text is empty");
        return -1;
    }
    const size_t n_bytes = strlen(p), at_least = tokenizer_min_tokens(tok, n_bytes, 1, 0);
    if (seq_len > 0 && at_least + (size_t)r->max_new > (size_t)seq_len) {
        char reason[256];
        snprintf(reason, sizeof reason, "the prompt text is %zu bytes: at least %zu tokens with BOS (a token covers "
                 "at most %d bytes), which with max_new %d exceeds the model's seq_len %d", n_bytes, at_least,
                 tok->max_token_length, r->max_new, seq_len);
        r->rejected = strdup(reason);
        if (!r->rejected) {
            snprintf(why, why_len, "out of memory");
            return -1;
        }
        return 0;
    }
    if (tokenizer_encode(tok, p, 1, 0, &r->prompt, &r->n_prompt) != 0) {
        snprintf(why, why_len, "%s", error_message());
        return -1;
    }
    return 0;
}

/* Id mode: the rest of the line is the prompt's token ids, at least one. */
static int parse_id_prompt(char *p, EngineRequest *r, char *why, size_t why_len)
{
    int cap = 16, n = 0;
    int *ids = malloc((size_t)cap * sizeof(int));
    if (!ids) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    for (;;) {
        char *end;
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
        int *more = n == cap ? grow(ids, &cap, sizeof(int)) : ids;
        if (!more) {
            snprintf(why, why_len, "out of memory");
            free(ids);
            return -1;
        }
        ids = more;
        ids[n++] = (int)id;
        p = end;
    }
    if (n == 0) {
        snprintf(why, why_len, "the prompt is empty: give at least one token id after max_new");
        free(ids);
        return -1;
    }
    r->prompt = ids, r->n_prompt = n;
    return 0;
}

/* One line "<arrival> <max_new> [sampling options] <ids...>" (or "... <text>" with a tokenizer)
 * into r; -1 with the reason in why. */
static int parse_line(char *line, const Tokenizer *tok, int seq_len, EngineRequest *r, char *why, size_t why_len)
{
    double arrival;
    long max_new;
    char *rest;
    if (parse_head(line, &arrival, &max_new, &rest, why, why_len) != 0)
        return -1;
    *r = (EngineRequest){.arrival = arrival, .max_new = (int)max_new, .n_prompt = 0, .prompt = NULL,
                         .abort_at = 0.0, .rejected = NULL};
    if (parse_sampling(&rest, r, why, why_len) != 0)
        return -1;
    return tok ? parse_text_prompt(rest, tok, seq_len, r, why, why_len) : parse_id_prompt(rest, r, why, why_len);
}

/* ==== the file ==================================================================================== */

int engine_read_requests(const char *path, const Tokenizer *tokenizer, int seq_len, EngineRequest **reqs, int *n)
{
    FILE *f = file_open_input(path); /* a regular file, or an error: never blocks on a FIFO */
    if (!f)
        return -1;
    int cap = 64, count = 0, lineno = 0, rc = 0;
    EngineRequest *out = malloc((size_t)cap * sizeof(EngineRequest));
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t len;
    if (!out)
        rc = error_set("%s: out of memory for the requests", error_quote(path));
    while (rc == 0 && (len = getline(&line, &line_cap, f)) >= 0) {
        lineno++;
        /* a NUL would end the line early for the parser: the rest of a prompt, or a whole
         * request after it, would vanish without a word */
        const char *nul = memchr(line, '\0', (size_t)len);
        if (nul) {
            rc = error_set("%s:%d: NUL byte (column %zu): a requests file is text", error_quote(path), lineno,
                           (size_t)(nul - line) + 1);
            break;
        }
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#')
            continue;
        char why[256];
        EngineRequest *more = count == cap ? grow(out, &cap, sizeof(EngineRequest)) : out;
        if (!more) {
            rc = error_set("%s:%d: out of memory for %d requests", error_quote(path), lineno, 2 * cap);
            break;
        }
        out = more;
        if (parse_line(p, tokenizer, seq_len, &out[count], why, sizeof why) != 0)
            rc = error_set("%s:%d: %s", error_quote(path), lineno, why);
        else
            count++;
    }
    free(line);
    fclose(f);
    if (rc == 0 && count == 0)
        rc = error_set("%s: no requests (every line is blank or a comment)", error_quote(path));
    if (rc != 0) {
        engine_free_requests(out, count);
        return -1;
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

/* ==== arrival order =============================================================================== */

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
    Arrival *a = mem_alloc((size_t)n * sizeof(Arrival), "arrival times");
    if (!a)
        return error_set("out of memory sorting %d arrival times", n);
    for (int i = 0; i < n; i++)
        a[i] = (Arrival){.arrival = reqs[i].arrival, .index = i};
    qsort(a, (size_t)n, sizeof(Arrival), cmp_arrival);
    for (int i = 0; i < n; i++)
        order[i] = a[i].index;
    mem_free(a);
    return 0;
}

/* ==== synthetic workloads ========================================================================= */

int engine_make_workload(const WorkloadSpec *w, EngineRequest **reqs)
{
    if (w->vocab < 1)
        return error_set("workload: n, the medians, seq_len and vocab must be positive");
    WorkloadItem *items;
    if (workload_make(w, &items) != 0)
        return -1;
    EngineRequest *out = calloc((size_t)w->n, sizeof(EngineRequest));
    int rc = out ? 0 : error_set("out of memory for %d requests", w->n);
    for (int i = 0; i < w->n && rc == 0; i++) {
        const WorkloadItem *it = &items[i];
        int *prompt = malloc((size_t)it->prompt_len * sizeof(int));
        if (!prompt) {
            rc = error_set("out of memory for the prompt of request %d (%d tokens)", i, it->prompt_len);
            break;
        }
        memcpy(prompt, it->prompt, (size_t)it->prompt_len * sizeof(int));
        out[i] = (EngineRequest){.arrival = it->arrival_s, .max_new = it->output_len, .n_prompt = it->prompt_len,
                                 .prompt = prompt, .abort_at = 0.0, .rejected = NULL};
    }
    workload_free(items, w->n);
    if (rc != 0) {
        engine_free_requests(out, out ? w->n : 0); /* calloc'd: the prompts not made yet are NULL */
        return -1;
    }
    *reqs = out;
    return 0;
}

/* ==== workloads that share prefixes =============================================================== */

static int uniform_in(Rng *rng, int lo, int hi) { return lo + (int)rng_below(rng, (uint32_t)(hi - lo + 1)); }

static void random_ids(Rng *rng, int *ids, int n, int vocab)
{
    for (int t = 0; t < n; t++)
        ids[t] = (int)rng_below(rng, (uint32_t)vocab);
}

static int check_prefix_spec(const PrefixWorkloadSpec *w)
{
    if (w->n < 1 || w->vocab < 1 || w->shared < 0 || w->question_min < 1 || w->question_max < w->question_min ||
        w->out_min < 1 || w->out_max < w->out_min || (w->kind == ENGINE_MULTI_TURN && w->turns < 1) ||
        !(w->turn_gap >= 0) || !(w->rate >= 0))
        return error_set("workload: n, vocab, the question and output lengths (min <= max) and the turns must be "
                         "positive, the shared prefix, the rate and the gap between turns not negative");
    if ((long)w->shared + w->question_max + w->out_max > w->seq_len)
        return error_set("workload: the shared prefix (%d tokens) + the longest question (%d) + the longest output "
                         "(%d) exceed seq_len %d",
                         w->shared, w->question_max, w->out_max, w->seq_len);
    return 0;
}

/* Request i of a prefix workload: the conversation so far (conv, *len tokens; for shared-prefix
 * every request is a conversation of one turn) grows by the previous turn's placeholder answer
 * and a new message, or starts again from the system prompt; *start is the conversation's
 * arrival, *turn its turn. The draws, in order: message length, output length, the gap to a new
 * conversation's start, the answer's ids, the message's ids. */
static EngineRequest next_prefix_request(const PrefixWorkloadSpec *w, Rng *rng, const int *system, int *conv,
                                         int *len, int *turn, int *prev_out, double *start)
{
    const int q = uniform_in(rng, w->question_min, w->question_max), o = uniform_in(rng, w->out_min, w->out_max);
    const int fresh = w->kind == ENGINE_SHARED_PREFIX || *turn >= w->turns || *len + *prev_out + q + o > w->seq_len;
    if (fresh) {
        if (w->rate > 0) /* exponential gaps: a Poisson process of `rate` starts per second */
            *start += -log(1.0 - (double)rng_uniform(rng)) / w->rate;
        memcpy(conv, system, (size_t)w->shared * sizeof(int));
        *len = w->shared, *turn = 0;
    } else { /* the previous turn's answer (a placeholder), then the new message */
        random_ids(rng, conv + *len, *prev_out, w->vocab);
        *len += *prev_out;
    }
    random_ids(rng, conv + *len, q, w->vocab);
    *len += q;
    *prev_out = o;
    return (EngineRequest){.arrival = *start + (*turn)++ * w->turn_gap, .max_new = o, .n_prompt = *len,
                           .prompt = NULL, .abort_at = 0.0, .rejected = NULL};
}

int engine_make_prefix_workload(const PrefixWorkloadSpec *w, EngineRequest **reqs)
{
    *reqs = NULL;
    if (check_prefix_spec(w) != 0)
        return -1;
    int *system = malloc(((size_t)w->shared + 1) * sizeof(int)); /* (shared) the system prompt */
    int *conv = malloc((size_t)w->seq_len * sizeof(int));        /* (seq_len) the conversation so far */
    EngineRequest *out = calloc((size_t)w->n, sizeof(EngineRequest));
    int rc = system && conv && out ? 0 : error_set("out of memory for a workload of %d requests", w->n);
    Rng rng;
    rng_seed(&rng, w->seed);
    if (rc == 0)
        random_ids(&rng, system, w->shared, w->vocab);
    int len = 0, turn = w->turns, prev_out = 0;
    double start = 0.0;
    for (int i = 0; i < w->n && rc == 0; i++) {
        out[i] = next_prefix_request(w, &rng, system, conv, &len, &turn, &prev_out, &start);
        out[i].prompt = malloc((size_t)len * sizeof(int));
        if (!out[i].prompt)
            rc = error_set("out of memory for the prompt of request %d (%d tokens)", i, len);
        else
            memcpy(out[i].prompt, conv, (size_t)len * sizeof(int));
    }
    free(system), free(conv);
    if (rc != 0) {
        engine_free_requests(out, out ? w->n : 0); /* calloc'd: the prompts not made yet are NULL */
        return -1;
    }
    *reqs = out;
    return 0;
}
