/*
 * generate.c: chapter 04 on the CPU -- the model running through the cache, and generation.
 *
 * What it teaches: with a cache, a generation step costs one token's matrix products plus one
 * query's attention over the cache (decode.c), instead of a forward pass over the whole
 * sequence. common/model.c's model_forward runs the model and calls back for each layer's
 * attention: here that callback writes the new rows into the cache (kvcache.c) and attends
 * everything the sequence holds. The generation loop (prefill, then a token per step, sampled
 * as llama2.c's run.c does) is shared with the GPU (kvcache.cu): only the forward differs.
 *
 * Shape key: n tokens per forward; H query heads of D dimensions; vocab logits.
 */
#include "04_kvcache/kvcache.h"

#include <math.h>
#include <string.h>

#include "01_mha/mha.h"
#include "common/error.h"
#include "common/tensor.h"
#include "common/timer.h"
#include "common/tokenizer.h"

int kvcache_check_request(const ModelConfig *c, const int *prompt, int n_prompt, int max_new)
{
    if (n_prompt < 1)
        return error_set("the prompt is empty: give at least one token id");
    if (max_new < 0)
        return error_set("--max-new %d must not be negative", max_new);
    if ((long)n_prompt + max_new > c->seq_len)
        return error_set("prompt (%d tokens) + max-new (%d) = %ld exceeds the model's seq_len %d", n_prompt, max_new,
                         (long)n_prompt + max_new, c->seq_len);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size)
            return error_set("prompt token %d is %d: ids must be in 0..%d (vocab_size %d)", i, prompt[i],
                             c->vocab_size - 1, c->vocab_size);
    return 0;
}

/* ==== the model through the cache ===================================================================== */

/* The attention of one layer for kvcache_forward: the new rows' K/V go to positions
 * pos0 .. pos0+n-1 of cache slot b, then their n queries attend everything the slot holds. */
typedef struct {
    KvCache *c;
    int b, pos0, H, kernel;
    float *qh, *oh; /* (H, n, D) queries and outputs, by head */
} CacheAttention;

static int cache_attention(void *ctx, int layer, int n, const float *q, const float *k, const float *v, float *att)
{
    CacheAttention *a = ctx;
    const int D = a->c->D, lens[1] = {a->pos0 + n}, seqs[1] = {a->b};
    kvcache_write(a->c, layer, a->b, a->pos0, n, k, v); /* the cache now holds positions 0 .. pos0+n-1 */
    mha_split_heads(q, a->qh, 1, n, a->H, D);
    if (kvcache_attention(a->c, layer, a->H, n, 1.0f / sqrtf((float)D), 1, 1, seqs, lens, a->qh, a->kernel, a->oh) !=
        0)
        return -1;
    mha_merge_heads(a->oh, att, 1, n, a->H, D);
    return 0;
}

int kvcache_forward(const Model *m, KvCache *c, int b, const int *tokens, int n, int kernel, float *logits)
{
    const ModelConfig *mc = &m->c;
    const int H = m->s.n_h, D = model_head_size(mc), pos0 = c->len[b]; /* a shard's heads, or all */
    if (n < 1 || pos0 + n > c->max_seq || pos0 + n > mc->seq_len)
        return error_set("positions %d..%d do not fit the cache (%d) and seq_len (%d)", pos0, pos0 + n - 1, c->max_seq,
                         mc->seq_len);
    if (c->n_kv_heads != m->s.n_kv || c->D != D || c->n_layers != mc->n_layers)
        return error_set("the cache's shape does not match the model");
    const size_t qn = (size_t)n * H * D;
    float *qh = mem_alloc(2 * qn * sizeof(float), "queries and outputs by head (2, H, n, D)");
    int *pos = mem_alloc((size_t)n * sizeof(int), "positions");
    int rc = !qh || !pos ? -1 : 0;
    if (rc == 0) {
        for (int i = 0; i < n; i++)
            pos[i] = pos0 + i;
        CacheAttention a = {.c = c, .b = b, .pos0 = pos0, .H = H, .kernel = kernel, .qh = qh, .oh = qh + qn};
        const int last = n - 1;
        rc = model_forward(m, n, tokens, pos, cache_attention, &a, 1, &last, logits);
    }
    if (rc == 0)
        c->len[b] = pos0 + n;
    mem_free(qh), mem_free(pos);
    return rc;
}

int kvcache_forward_nocache(const Model *m, const int *tokens, int n, float *logits)
{
    KvCache c;
    if (kvcache_create(&c, m->c.n_layers, 1, m->s.n_kv, n, model_head_size(&m->c), KV_F32) != 0)
        return -1;
    int rc = kvcache_forward(m, &c, 0, tokens, n, 2, logits); /* a throwaway cache: recompute everything */
    kvcache_free(&c);
    return rc;
}

/* ==== generation ====================================================================================== */

int kvcache_generate_loop(const ModelConfig *c, KvGenForward forward, void *ctx, const int *prompt, int n_prompt,
                          const GenOptions *o, int *out, double *step_s)
{
    const int total = n_prompt + o->max_new;
    int *tokens = mem_alloc((size_t)total * sizeof(int), "tokens (prompt + max_new)");
    float *logits = mem_alloc((size_t)c->vocab_size * sizeof(float), "logits (vocab)");
    int rc = !tokens || !logits ? -1 : 0;
    if (rc == 0)
        memcpy(tokens, prompt, (size_t)n_prompt * sizeof(int));
    Rng rng;
    model_rng_seed(&rng, o->seed);
    for (int step = 0; step < o->max_new && rc == 0; step++) {
        const double t0 = timer_now();
        const int n = n_prompt + step; /* tokens known so far */
        if (!o->use_cache) {
            rc = forward(ctx, tokens, n, 0, logits);
        } else if (step > 0) {
            rc = forward(ctx, tokens + n - 1, 1, n - 1, logits);
        } else { /* prefill the prompt, whole or in chunks */
            const int chunk = o->prefill_chunk > 0 ? o->prefill_chunk : n_prompt;
            for (int p = 0; p < n_prompt && rc == 0; p += chunk)
                rc = forward(ctx, tokens + p, p + chunk < n_prompt ? chunk : n_prompt - p, p, logits);
        }
        if (rc != 0)
            break;
        const Sampling sp = {.temperature = o->temperature, .top_p = o->top_p, .top_k = o->top_k};
        const int next = model_sample_with(logits, c->vocab_size, &sp, &rng);
        if (next < 0) { /* the logits overflowed (error recorded) */
            rc = -1;
            break;
        }
        out[step] = tokens[n] = next;
        if (step_s)
            step_s[step] = timer_now() - t0;
        if (o->stop_at_bos_eos && (next == TOKEN_BOS || next == TOKEN_EOS)) { /* the text is over */
            for (int i = step; i < o->max_new; i++)
                out[i] = -1;
            break;
        }
    }
    mem_free(tokens), mem_free(logits);
    return rc;
}

/* The CPU's forward for the loop: through the cache (whose length is pos0), or none at all. */
typedef struct {
    const Model *m;
    KvCache *c; /* NULL: no cache */
    int kernel;
} CpuForward;

static int cpu_forward(void *ctx, const int *tokens, int n, int pos0, float *logits)
{
    const CpuForward *f = ctx;
    (void)pos0; /* = f->c->len[0]: the cache knows where the rows go */
    return f->c ? kvcache_forward(f->m, f->c, 0, tokens, n, f->kernel, logits)
                : kvcache_forward_nocache(f->m, tokens, n, logits);
}

int kvcache_generate(const Model *m, const int *prompt, int n_prompt, const GenOptions *o, int *out, double *step_s)
{
    if (kvcache_check_request(&m->c, prompt, n_prompt, o->max_new) != 0)
        return -1;
    KvCache c = {0};
    if (o->use_cache && kvcache_create(&c, m->c.n_layers, 1, m->s.n_kv, n_prompt + o->max_new, /* a shard's */
                                       model_head_size(&m->c), o->dtype) != 0)
        return -1;
    CpuForward f = {.m = m, .c = o->use_cache ? &c : NULL, .kernel = o->kernel};
    const int rc = kvcache_generate_loop(&m->c, cpu_forward, &f, prompt, n_prompt, o, out, step_s);
    if (o->use_cache)
        kvcache_free(&c);
    return rc;
}

/* ==== CPU and GPU tokens, compared ==================================================================== */

int kvcache_greedy_divergence(const Model *m, const int *prompt, int n_prompt, const int *a, const int *b, int n,
                              double *gap)
{
    *gap = 0.0;
    int i = 0;
    while (i < n && a[i] == b[i])
        i++;
    if (i == n)
        return -1;
    const int V = m->c.vocab_size;
    if (a[i] < 0 || a[i] >= V || b[i] < 0 || b[i] >= V) { /* a stop (-1) against a token: no tie to weigh */
        *gap = INFINITY;
        return i;
    }
    int *tokens = mem_alloc((size_t)(n_prompt + i) * sizeof(int), "prompt and common prefix");
    float *logits = mem_alloc((size_t)V * sizeof(float), "logits (vocab)");
    int rc = !tokens || !logits ? -1 : 0;
    if (rc == 0) {
        memcpy(tokens, prompt, (size_t)n_prompt * sizeof(int));
        memcpy(tokens + n_prompt, a, (size_t)i * sizeof(int));
        rc = kvcache_forward_nocache(m, tokens, n_prompt + i, logits);
    }
    if (rc == 0) {
        double top = 1.0;
        for (int v = 0; v < V; v++)
            top = fmax(top, fabs((double)logits[v]));
        *gap = fabs((double)logits[a[i]] - (double)logits[b[i]]) / top;
    }
    mem_free(tokens), mem_free(logits);
    return rc == 0 ? i : -2;
}
