/*
 * batch.c: chapter 06's forward -- every scheduled token of every sequence in one model call.
 *
 * What it teaches: an iteration's batch is ragged. Scheduled sequence j contributes the rows
 * q_start[j] .. q_start[j+1]-1: a chunk of its prompt (or of a recompute after preemption), or
 * the one token it decodes, each row at its own position. The matrix products see all rows as
 * one (rows, dim) matrix; RoPE turns each row by its own position; attention writes each
 * sequence's new K/V through its block table and reads its keys through it (chapter 05's paged
 * attention, which takes exactly this ragged batch). Logits are computed only for the rows that
 * end a sequence's known tokens: only those sequences sample a next token.
 *
 * This is Orca's selective batching (Yu et al. 2022): the token-wise operations -- every matrix
 * product, RMSNorm, SwiGLU -- run once over all rows of all sequences as one [tokens, dim]
 * matrix, while attention runs per sequence (batch_attention), because each sequence has its own
 * length and its own cache. Under static-padded batching the padding and the finished members'
 * slots are rows too (after every sequence's rows): they go through every product, as a padded
 * [batch, width] tensor would, then are thrown away (their attention output is zero, their K/V
 * written nowhere, their logits never asked for).
 *
 * Every kernel on the CPU path is batch-invariant (common/matmul's row products, chapter 05's
 * paged attention), so a row's bits do not depend on the other rows: a request gets the tokens it
 * gets alone. The GPU path (engine.cu) is batch-invariant in its own arithmetic.
 */
#include <math.h>
#include <string.h>

#include "06_batching/engine_internal.h"
#include "common/error.h"
#include "common/tensor.h"

void engine_batch_free(Batch *b)
{
    mem_free(b->sched), mem_free(b->q_start), mem_free(b->tokens), mem_free(b->pos);
    mem_free(b->out_rows), mem_free(b->out_seq), mem_free(b->seqs), mem_free(b->logits);
    memset(b, 0, sizeof *b);
}

/* Counts the scheduled sequences and rows and allocates *b for them. 0, or -1 (error recorded). */
static int batch_alloc(const Engine *e, Batch *b)
{
    memset(b, 0, sizeof *b);
    for (int k = 0; k < e->n_running; k++)
        if (e->s[e->running[k]].chunk > 0)
            b->n_sched++, b->rows += e->s[e->running[k]].chunk;
    b->padded_tokens = e->pad_rows; /* 0 but under static-padded */
    b->rows += b->padded_tokens;
    const size_t n = (size_t)b->n_sched, rows = (size_t)b->rows, V = (size_t)e->m->c.vocab_size;
    b->sched = mem_alloc(n * sizeof(int), "scheduled sequences");
    b->q_start = mem_alloc((n + 1) * sizeof(int), "query rows");
    b->tokens = mem_alloc(rows * sizeof(int), "batch tokens");
    b->pos = mem_alloc(rows * sizeof(int), "batch positions");
    b->out_rows = mem_alloc(n * sizeof(int), "rows with logits");
    b->out_seq = mem_alloc(n * sizeof(int), "sequences with logits");
    b->seqs = mem_alloc(n * sizeof(PagedSeq *), "tables");
    b->logits = mem_alloc(n * V * sizeof(float), "logits");
    return !b->sched || !b->q_start || !b->tokens || !b->pos || !b->out_rows || !b->out_seq || !b->seqs || !b->logits
               ? -1
               : 0;
}

/* The rows of every scheduled sequence, in the running list's order; which rows want logits;
 * how many tokens are prefill and how many decode. */
static void batch_fill(const Engine *e, Batch *b)
{
    int *tokens = b->tokens, *pos = b->pos, *q_start = b->q_start, *out_rows = b->out_rows, *out_seq = b->out_seq;
    int j = 0, r = 0, n_out = 0;
    q_start[0] = 0;
    for (int k = 0; k < e->n_running; k++) {
        const int i = e->running[k];
        Seq *s = &e->s[i];
        if (s->chunk == 0)
            continue;
        b->sched[j] = i, b->seqs[j] = &s->seq;
        for (int t = 0; t < s->chunk; t++, r++)
            tokens[r] = s->tokens[s->n_computed + t], pos[r] = s->n_computed + t;
        q_start[j + 1] = r;
        if (s->n_computed + s->chunk == s->n_tokens) /* its last known token: logits wanted */
            out_rows[n_out] = r - 1, out_seq[n_out++] = i;
        /* a chunk of one token after the prompt is a decode; anything else is (re)prefill */
        if (s->chunk == 1 && s->n_computed >= e->reqs[i].n_prompt)
            b->decode_tokens++;
        else
            b->prefill_tokens += s->chunk;
        j++;
    }
    for (; r < b->rows; r++) /* static-padded's thrown-away slots: a pad id at position 0 */
        tokens[r] = 0, pos[r] = 0;
    b->n_out = n_out;
}

/* ==== the forward on the CPU ====================================================================== */

typedef struct {
    Engine *e;
    const Batch *b;
} BatchCtx;

/* The model's attention for one layer: each sequence's new K/V into the pool through its table,
 * then chapter 05's paged attention over the whole ragged batch, one sequence's rows against its
 * own keys. q, att (rows, H, D); k, v (rows, Hkv, D); rows past the sequences' (padding) get 0. */
static int batch_attention(void *ctx, int layer, int n, const float *q, const float *k, const float *v, float *att)
{
    const BatchCtx *c = ctx;
    Engine *e = c->e;
    const Batch *b = c->b;
    const int D = model_head_size(&e->m->c), kvd = model_kv_dim(&e->m->c);
    const size_t real = (size_t)b->q_start[b->n_sched], H = (size_t)e->m->c.n_heads;
    memset(att + real * H * (size_t)D, 0, ((size_t)n - real) * H * (size_t)D * sizeof(float)); /* padding rows */
    for (int j = 0; j < b->n_sched; j++) {
        const Seq *s = &e->s[b->sched[j]];
        const size_t r0 = (size_t)b->q_start[j];
        paged_write(&e->pool, &s->seq, layer, s->n_computed, s->chunk, k + r0 * kvd, v + r0 * kvd);
    }
    return paged_attention_cpu(e->o.kernel, &e->pool, layer, e->m->c.n_heads, 1.0f / sqrtf((float)D), 1, b->n_sched,
                               b->seqs, b->q_start, q, att);
}

/* ==== the forward on the GPU ====================================================================== */

#if HAVE_CUDA
/* The tables and lengths go to the GPU with the tokens; the logits come back. */
static int batch_forward_gpu(Engine *e, Batch *b)
{
    const int mb = (int)(((size_t)e->m->c.seq_len + (size_t)e->o.block_size - 1) / (size_t)e->o.block_size);
    int *tables = mem_alloc((size_t)b->n_sched * mb * sizeof(int), "block tables for the GPU"); /* (n_sched, mb) */
    int *lens = mem_alloc((size_t)b->n_sched * sizeof(int), "lengths for the GPU");               /* (n_sched) */
    int rc = !tables || !lens ? -1 : 0;
    for (int k = 0; k < b->n_sched && rc == 0; k++) {
        const PagedSeq *ps = b->seqs[k];
        lens[k] = ps->len;
        for (int j = 0; j < mb; j++)
            tables[(size_t)k * mb + j] = j < ps->n_blocks ? ps->blocks[j] : 0;
    }
    if (rc == 0)
        rc = engine_gpu_forward(e->gpu, b->rows, b->tokens, b->pos, b->n_sched, b->q_start, lens, tables, b->n_out,
                                b->out_rows, b->logits);
    mem_free(tables), mem_free(lens);
    return rc;
}
#endif

int engine_run_batch(Engine *e, Batch *b)
{
    if (batch_alloc(e, b) != 0)
        return -1;
    batch_fill(e, b);
#if HAVE_CUDA
    if (e->gpu)
        return batch_forward_gpu(e, b);
#endif
    BatchCtx ctx = {.e = e, .b = b};
    return model_forward(e->m, b->rows, b->tokens, b->pos, batch_attention, &ctx, b->n_out, b->out_rows, b->logits);
}
