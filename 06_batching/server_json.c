/*
 * server_json.c: the OpenAI completions API's JSON, read and written with jansson.
 *
 * What it teaches: an API is a contract about bad input as much as good. A request is read field
 * by field, each with its type and range; the first problem is answered with 400 and a message
 * that names the field (OpenAI's error object), never with a guess. Fields this engine cannot
 * honour (n > 1, stop strings, logprobs, penalties) are refused by name rather than ignored, so a
 * client never gets output that silently differs from what it asked for; fields it does not know
 * are ignored, as OpenAI-compatible servers do. Streamed text is cut at token boundaries, which
 * are not character boundaries: a character's bytes wait until it is complete, so that every
 * chunk is valid UTF-8 and the chunks concatenate to the whole text.
 */
#include "06_batching/server.h"

#if HAVE_SERVER
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* ==== reading a request =========================================================================== */

#define FAIL(status, field, ...) (snprintf(msg, len, __VA_ARGS__), *param = (field), (status))

/* A number field: absent or null leaves *out; else a finite number within [lo, hi]. */
static int read_number(json_t *root, const char *key, double lo, double hi, double *out, char *msg, size_t len,
                       const char **param)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return FAIL(400, key, "'%s' must be a number", key);
    const double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return FAIL(400, key, "'%s' must be between %g and %g, got %g", key, lo, hi, x);
    *out = x;
    return 0;
}

/* An integer field: absent or null leaves *out; else an integer within [lo, hi]. */
static int read_int(json_t *root, const char *key, long long lo, long long hi, long long *out, char *msg, size_t len,
                    const char **param)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return FAIL(400, key, "'%s' must be an integer", key);
    const long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return FAIL(400, key, "'%s' must be between %lld and %lld, got %lld", key, lo, hi, x);
    *out = x;
    return 0;
}

/* A boolean field: absent or null leaves *out. */
static int read_bool(json_t *root, const char *key, int *out, char *msg, size_t len, const char **param)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return FAIL(400, key, "'%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

/* Fields of OpenAI's API this engine does not implement: refused unless they ask for the default. */
static int refuse_unsupported(json_t *root, char *msg, size_t len, const char **param)
{
    static const char *const must_be_one[] = {"n", "best_of"};
    for (size_t k = 0; k < 2; k++) {
        json_t *v = json_object_get(root, must_be_one[k]);
        if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 1))
            return FAIL(400, must_be_one[k], "'%s' must be 1: this server returns one completion per request",
                        must_be_one[k]);
    }
    static const char *const must_be_zero[] = {"presence_penalty", "frequency_penalty"};
    for (size_t k = 0; k < 2; k++) {
        json_t *v = json_object_get(root, must_be_zero[k]);
        if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
            return FAIL(400, must_be_zero[k], "'%s' is not supported by this server (only 0)", must_be_zero[k]);
    }
    static const char *const must_be_absent[] = {"stop", "logprobs", "suffix", "logit_bias"};
    for (size_t k = 0; k < 4; k++) {
        json_t *v = json_object_get(root, must_be_absent[k]);
        if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0) &&
            !(json_is_object(v) && json_object_size(v) == 0))
            return FAIL(400, must_be_absent[k], "'%s' is not supported by this server", must_be_absent[k]);
    }
    json_t *echo = json_object_get(root, "echo");
    if (echo && json_is_true(echo))
        return FAIL(400, "echo", "'echo' is not supported by this server");
    return 0;
}

/* The prompt: a string (encoded with BOS first, as llama2.c does; needs a tokenizer), a list of
 * token ids, or a list holding one string. */
static int read_prompt(const ServedModel *sm, json_t *root, CompletionParams *p, char *msg, size_t len,
                       const char **param)
{
    json_t *v = json_object_get(root, "prompt");
    if (!v || json_is_null(v))
        return FAIL(400, "prompt", "'prompt' is required");
    if (json_is_array(v) && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0)))
        v = json_array_get(v, 0);
    if (json_is_string(v)) {
        if (!sm->tok)
            return FAIL(400, "prompt", "this server has no tokenizer (start it with --tokenizer): send 'prompt' "
                                       "as a list of token ids");
        const size_t n = json_string_length(v);
        const size_t least = tokenizer_min_tokens(sm->tok, n, 1, 0);
        if (least > (size_t)sm->m->c.seq_len) /* longer than the model by its length alone: not encoded */
            return FAIL(400, "prompt", "the prompt (%zu bytes) is at least %zu tokens, more than the model's seq_len %d",
                        n, least, sm->m->c.seq_len);
        char *text = malloc(n + 1);
        if (!text)
            return FAIL(500, NULL, "out of memory for a prompt of %zu bytes", n);
        memcpy(text, json_string_value(v), n + 1);
        for (size_t k = 0; k < n; k++) /* the encoder reads a C string: a NUL would cut it silently */
            if (text[k] == '\0') {
                free(text);
                return FAIL(400, "prompt", "the prompt holds a NUL character at byte %zu", k);
            }
        const int rc = tokenizer_encode(sm->tok, text, 1, 0, &p->prompt, &p->n_prompt);
        free(text);
        return rc == 0 ? 0 : FAIL(400, "prompt", "the prompt could not be encoded: %s", error_message());
    }
    if (!json_is_array(v))
        return FAIL(400, "prompt", "'prompt' must be a string or a list of token ids");
    const size_t n = json_array_size(v);
    if (n == 0)
        return FAIL(400, "prompt", "'prompt' is an empty list");
    if (n > (size_t)sm->m->c.seq_len)
        return FAIL(400, "prompt", "the prompt has %zu tokens, more than the model's seq_len %d", n, sm->m->c.seq_len);
    p->prompt = malloc(n * sizeof(int));
    if (!p->prompt)
        return FAIL(500, NULL, "out of memory for a prompt of %zu tokens", n);
    p->n_prompt = (int)n;
    for (size_t k = 0; k < n; k++) {
        json_t *id = json_array_get(v, k);
        if (json_is_string(id) || json_is_array(id))
            return FAIL(400, "prompt", "one prompt per request: 'prompt' is a list of strings or of lists");
        if (!json_is_integer(id))
            return FAIL(400, "prompt", "prompt[%zu] is not an integer token id", k);
        const long long t = json_integer_value(id);
        if (t < 0 || t >= sm->m->c.vocab_size)
            return FAIL(400, "prompt", "prompt[%zu] is %lld, outside the vocabulary (0..%d)", k, t,
                        sm->m->c.vocab_size - 1);
        p->prompt[k] = (int)t;
    }
    return 0;
}

/* The model named must be the one served (when named at all). */
static int check_model(const ServedModel *sm, json_t *root, char *msg, size_t len, const char **param)
{
    json_t *v = json_object_get(root, "model");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return FAIL(400, "model", "'model' must be a string");
    if (strcmp(json_string_value(v), sm->model_id) != 0)
        return FAIL(404, "model", "the model '%s' does not exist: this server serves '%s'", json_string_value(v),
                    sm->model_id);
    return 0;
}

/* Sampling and output fields, with OpenAI's defaults. */
static int read_options(json_t *root, CompletionParams *p, char *msg, size_t len, const char **param)
{
    long long max_tokens = 16, seed = -1, top_k = -1;
    double temperature = 1.0, top_p = 1.0;
    if (read_int(root, "max_tokens", 0, 1LL << 30, &max_tokens, msg, len, param) != 0 ||
        read_number(root, "temperature", 0.0, 2.0, &temperature, msg, len, param) != 0 ||
        read_number(root, "top_p", 0.0, 1.0, &top_p, msg, len, param) != 0 ||
        read_int(root, "top_k", -1, 1LL << 30, &top_k, msg, len, param) != 0 ||
        read_int(root, "seed", 0, INT64_MAX, &seed, msg, len, param) != 0 ||
        read_bool(root, "stream", &p->stream, msg, len, param) != 0)
        return 400;
    if (model_check_temperature(temperature) != 0)
        return FAIL(400, "temperature", "'temperature' must be 0 (greedy) or at least 1.2e-38, got %g", temperature);
    if (top_p <= 0.0) /* OpenAI's range is [0, 1]; a nucleus of no token cannot sample */
        return FAIL(400, "top_p", "'top_p' must be more than 0 (1: every token), got %g", top_p);
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return FAIL(400, "stream_options", "'stream_options' must be an object");
        if (read_bool(so, "include_usage", &p->include_usage, msg, len, param) != 0)
            return FAIL(400, "stream_options", "'stream_options.include_usage' must be true or false");
    }
    p->max_tokens = (int)max_tokens, p->temperature = (float)temperature;
    p->top_p = (float)top_p, p->top_k = top_k > 0 ? (int)top_k : 0; /* -1 (vLLM's off) and 0: off */
    p->has_seed = seed >= 0, p->seed = seed >= 0 ? (uint64_t)seed : 0;
    return 0;
}

int completion_parse(const ServedModel *sm, const char *body, size_t n, CompletionParams *p, char *msg, size_t len,
                     const char **param)
{
    memset(p, 0, sizeof *p);
    *param = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(body, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return FAIL(400, NULL, "the body is not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line, jerr.column);
    int rc = json_is_object(root) ? 0 : FAIL(400, NULL, "the body must be a JSON object");
    if (rc == 0)
        rc = check_model(sm, root, msg, len, param);
    if (rc == 0)
        rc = refuse_unsupported(root, msg, len, param);
    if (rc == 0)
        rc = read_options(root, p, msg, len, param);
    if (rc == 0)
        rc = read_prompt(sm, root, p, msg, len, param);
    json_decref(root);
    if (rc == 0) { /* what the engine would reject: too long, or more blocks than the pool has */
        const EngineRequest r = {.max_new = p->max_tokens, .n_prompt = p->n_prompt, .prompt = p->prompt};
        char why[192];
        if (!engine_request_fits(sm->m, sm->o, &r, why, sizeof why))
            rc = FAIL(400, "max_tokens", "this request can never run: %s", why);
    }
    if (rc != 0)
        completion_params_free(p);
    return rc;
}

void completion_params_free(CompletionParams *p)
{
    free(p->prompt);
    p->prompt = NULL, p->n_prompt = 0;
}

#undef FAIL

/* ==== writing responses =========================================================================== */

/* json_dumps of root, which is freed; NULL out of memory. */
static char *dump(json_t *root)
{
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

char *json_error_body(const char *message, const char *type, const char *param, const char *code)
{
    return dump(json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message, "type", type, "param", param,
                          "code", code));
}

char *models_body(const char *model_id, long created, int max_model_len)
{
    return dump(json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:i}]}", "object", "list", "data", "id", model_id, "object",
                          "model", "created", (json_int_t)created, "owned_by", "06_batching", "max_model_len",
                          max_model_len));
}

static json_t *id_list(const int *ids, int n)
{
    json_t *a = json_array();
    for (int k = 0; k < n && a; k++)
        json_array_append_new(a, json_integer(ids[k]));
    return a;
}

/* {"id", "object", "created", "model"}: what every response of the completion repeats. */
static json_t *head(const CompletionMeta *cm)
{
    char id[32];
    snprintf(id, sizeof id, "cmpl-%ld", cm->id);
    return json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "text_completion", "created", (json_int_t)cm->created,
                     "model", cm->model_id);
}

static json_t *choice(const char *text, const int *ids, int n, const char *finish)
{
    /* extension: token_ids (as vLLM's return_token_ids), so clients can compare tokens exactly */
    return json_pack("{s:i, s:s%, s:o, s:n, s:s?}", "index", 0, "text", text, strlen(text), "token_ids", id_list(ids, n),
                     "logprobs", "finish_reason", finish);
}

static json_t *usage(int prompt, int completion)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", prompt, "completion_tokens", completion, "total_tokens",
                     prompt + completion);
}

char *completion_body(const CompletionMeta *cm, const char *text, const int *ids, int n, const char *finish,
                      int prompt_tokens)
{
    json_t *root = head(cm);
    if (root) {
        json_object_set_new(root, "choices", json_pack("[o]", choice(text, ids, n, finish)));
        json_object_set_new(root, "usage", usage(prompt_tokens, n));
    }
    return dump(root);
}

char *completion_chunk(const CompletionMeta *cm, const char *text, const int *ids, int n, const char *finish,
                       int usage_prompt, int usage_completion)
{
    json_t *root = head(cm);
    if (root && usage_prompt >= 0) {
        json_object_set_new(root, "choices", json_array());
        json_object_set_new(root, "usage", usage(usage_prompt, usage_completion));
    } else if (root) {
        json_object_set_new(root, "choices", json_pack("[o]", choice(text, ids, n, finish)));
    }
    char *js = dump(root);
    if (!js)
        return NULL;
    const size_t need = strlen(js) + 9;
    char *ev = malloc(need);
    if (ev)
        snprintf(ev, need, "data: %s\n\n", js);
    free(js);
    return ev;
}

/* ==== text that is always valid UTF-8 ============================================================= */

void text_stream_init(TextStream *ts, const Tokenizer *tok, int prev)
{
    *ts = (TextStream){.tok = tok, .prev = prev, .n_pend = 0};
}

static int append(char **out, size_t *len, const void *bytes, size_t n)
{
    char *p = realloc(*out, *len + n + 1);
    if (!p)
        return -1;
    memcpy(p + *len, bytes, n);
    *len += n;
    p[*len] = '\0';
    *out = p;
    return 0;
}

/* The length of the UTF-8 character starting at b[0] (RFC 3629: no overlong forms, no surrogates,
 * nothing past U+10FFFF); 0 when b[0] can start none or a later byte breaks it; -1 when the n bytes
 * are a valid start but the character needs more. */
static int utf8_char(const unsigned char *b, int n)
{
    const unsigned c = b[0];
    int need;
    unsigned lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c < 0x80)
        return 1;
    else if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 0;
    for (int k = 1; k < need; k++) {
        if (k >= n)
            return -1;
        const unsigned lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xBF;
        if (b[k] < lo_k || b[k] > hi_k)
            return 0;
    }
    return need;
}

/* Moves the complete characters of ts->pend + bytes into out; an incomplete tail stays pending. */
static int feed(TextStream *ts, const char *bytes, size_t n, char **out, size_t *len)
{
    static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */
    for (size_t k = 0; k < n; k++) {
        ts->pend[ts->n_pend++] = (unsigned char)bytes[k];
        while (ts->n_pend > 0) {
            const int c = utf8_char(ts->pend, ts->n_pend);
            if (c < 0)
                break; /* wait for the next byte */
            const int used = c == 0 ? 1 : c;
            if (append(out, len, c == 0 ? replacement : (const char *)ts->pend, c == 0 ? 3 : (size_t)c) != 0)
                return -1;
            memmove(ts->pend, ts->pend + used, (size_t)(ts->n_pend - used));
            ts->n_pend -= used;
        }
    }
    return 0;
}

int text_stream_push(TextStream *ts, const int *ids, int n, int flush, char **out, size_t *len)
{
    if (!*out && append(out, len, "", 0) != 0)
        return -1;
    for (int k = 0; k < n; k++) {
        char buf[2], num[16];
        const char *piece = buf;
        if (ts->tok)
            piece = tokenizer_piece(ts->tok, ts->prev, ids[k], buf);
        else
            snprintf(num, sizeof num, " %d", ids[k]), piece = num;
        if (feed(ts, piece, strlen(piece), out, len) != 0)
            return -1;
        ts->prev = ids[k];
    }
    if (flush && ts->n_pend > 0) { /* a character the text never completed */
        ts->n_pend = 0;
        return append(out, len, "\xEF\xBF\xBD", 3);
    }
    return 0;
}

#endif
