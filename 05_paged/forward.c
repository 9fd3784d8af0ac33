/*
 * forward.c: chapter 05's model through a paged cache -- one forward step, and generation with
 * n samples of one prompt that share its blocks.
 *
 * What it teaches: the model does not change; only where its keys and values live. Each layer's
 * attention writes the new tokens' K and V through the sequence's table (paged.c's kernels read
 * them back in place), and a sequence takes a block only when its last one is full. Generating
 * n samples prefills the prompt once and forks the table n - 1 times: the samples share the
 * prompt's blocks, and a partly filled last block is copied on its first write (pool.c). Sample i
 * gives the tokens of chapter 04's generation with seed + i, bit for bit.
 */
#include "05_paged/paged.h"

#include <math.h>
#include <string.h>

#include "04_kvcache/kvcache.h"
#include "common/error.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/tokenizer.h"

typedef struct {
    PagedPool *p;
    PagedSeq *s;
    int pos0, H, kernel;
} PagedLayerCtx;

static int paged_layer_attention(void *ctx, int layer, int n, const float *q, const float *k, const float *v,
                                 float *att)
{
    PagedLayerCtx *a = ctx;
    paged_write(a->p, a->s, layer, a->pos0, n, k, v); /* positions pos0 .. pos0+n-1, already appended */
    PagedSeq *seqs[1] = {a->s};
    const int q_start[2] = {0, n};
    return paged_attention_cpu(a->kernel, a->p, layer, a->H, 1.0f / sqrtf((float)a->p->D), 1, 1, seqs, q_start,
                               q, att);
}

int paged_forward(const Model *m, PagedPool *p, PagedSeq *s, const int *tokens, int n, int kernel, float *logits)
{
    const ModelConfig *mc = &m->c;
    if (p->n_layers != mc->n_layers || p->n_kv_heads != mc->n_kv_heads || p->D != model_head_size(mc))
        return error_set("the block pool's shape does not match the model");
    const int pos0 = s->len;
    if (n < 1 || pos0 + n > mc->seq_len)
        return error_set("positions %d..%d do not fit the model's seq_len %d", pos0, pos0 + n - 1, mc->seq_len);
    int rc = paged_seq_append(p, s, n);
    if (rc != 0)
        return rc; /* PAGED_EXHAUSTED: the caller decides (chapter 06 preempts) */
    int *pos = mem_alloc((size_t)n * sizeof(int), "positions");
    rc = pos ? 0 : -1;
    for (int i = 0; i < n && rc == 0; i++)
        pos[i] = pos0 + i;
    PagedLayerCtx a = {.p = p, .s = s, .pos0 = pos0, .H = mc->n_heads, .kernel = kernel};
    const int last = n - 1;
    if (rc == 0)
        rc = model_forward(m, n, tokens, pos, paged_layer_attention, &a, 1, &last, logits);
    mem_free(pos);
    if (rc != 0)
        paged_seq_truncate(p, s, pos0); /* give the new slots back */
    return rc;
}

int paged_blocks_for_request(int n_prompt, int max_new, int n_samples, int block_size)
{
    /* the cache holds the prompt and every generated token but the last (never fed back) */
    const long longest = (long)n_prompt + (max_new > 0 ? max_new - 1 : 0);
    const long shared = n_prompt / block_size, per_sample = (longest + block_size - 1) / block_size - shared;
    if (longest == n_prompt) /* nothing is written after the fork: the prompt's blocks suffice */
        return (int)(((long)n_prompt + block_size - 1) / block_size);
    const long total = shared + (long)n_samples * per_sample;
    return total > 0x7fffffffL ? 0x7fffffff : (int)total;
}

int paged_generate(const Model *m, const int *prompt, int n_prompt, const PagedGenOptions *o, int *out,
                   PagedGenStats *stats)
{
    if (kvcache_check_request(&m->c, prompt, n_prompt, o->max_new) != 0)
        return -1;
    if (o->n_samples < 1 || o->block_size < 1)
        return error_set("--n-samples (%d) and --block-size (%d) must be at least 1", o->n_samples, o->block_size);
    const int need = paged_blocks_for_request(n_prompt, o->max_new, o->n_samples, o->block_size);
    const int num_blocks = o->num_blocks > 0 ? o->num_blocks : need;
    if (need > num_blocks)
        return error_set("the request needs %d blocks of %d tokens (%d prompt + %d new tokens, %d samples) but the "
                         "pool has %d: it can never fit",
                         need, o->block_size, n_prompt, o->max_new, o->n_samples, num_blocks);
    const int K = o->n_samples, V = m->c.vocab_size;
    PagedPool p;
    if (paged_pool_create(&p, m->c.n_layers, m->c.n_kv_heads, model_head_size(&m->c), o->block_size, num_blocks) != 0)
        return -1;
    if (o->shuffle)
        paged_pool_shuffle(&p, o->shuffle);
    PagedSeq *seqs = mem_alloc((size_t)K * sizeof(PagedSeq), "sequences");
    float *first = mem_alloc((size_t)V * sizeof(float), "prefill logits"), *logits = mem_alloc((size_t)V * sizeof(float), "logits");
    Rng *rngs = mem_alloc((size_t)K * sizeof(Rng), "generators");
    int rc = !seqs || !first || !logits || !rngs ? -1 : 0;
    for (int i = 0; i < K && rc == 0; i++) {
        paged_seq_init(&seqs[i]);
        model_rng_seed(&rngs[i], o->seed + (uint64_t)i);
    }
    /* the prompt once; every other sample forks it and shares its blocks */
    if (rc == 0 && o->max_new > 0)
        rc = paged_forward(m, &p, &seqs[0], prompt, n_prompt, o->kernel, first);
    for (int i = 1; i < K && rc == 0 && o->max_new > 0; i++)
        rc = paged_seq_fork(&p, &seqs[0], &seqs[i]);
    for (int step = 0; step < o->max_new && rc == 0; step++)
        for (int i = 0; i < K && rc == 0; i++) {
            int *toks = out + (size_t)i * o->max_new;
            if (step > 0 && toks[step - 1] < 0) { /* this sample stopped */
                toks[step] = -1;
                continue;
            }
            if (step == 0)
                memcpy(logits, first, (size_t)V * sizeof(float));
            else
                rc = paged_forward(m, &p, &seqs[i], &toks[step - 1], 1, o->kernel, logits);
            const Sampling sp = {.temperature = o->temperature, .top_p = o->top_p, .top_k = o->top_k};
            if (rc == 0 && (toks[step] = model_sample_with(logits, V, &sp, &rngs[i])) < 0)
                rc = -1; /* the logits overflowed (error recorded) */
            if (rc == 0 && o->stop_at_bos_eos && (toks[step] == TOKEN_BOS || toks[step] == TOKEN_EOS)) {
                toks[step] = -1; /* BOS or EOS: the text is over; its blocks go back */
                paged_seq_free(&p, &seqs[i]);
            }
        }
    if (stats)
        *stats = (PagedGenStats){.peak_blocks = p.peak_used,
                                 .num_blocks = p.num_blocks,
                                 .cow_copies = p.n_cow_copies,
                                 .block_bytes = paged_block_bytes(&p)};
    for (int i = 0; i < K && seqs; i++)
        paged_seq_free(&p, &seqs[i]);
    mem_free(seqs), mem_free(first), mem_free(logits), mem_free(rngs);
    paged_pool_free(&p);
    return rc;
}
