/* model.c: the Llama-style model of llama2.c's run.c -- its config and a checkpoint's header, the
 * forward pieces and the forward (see model.h). How a model holds its weights: model_weights.c. */
#include "model.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "matmul.h"
#include "tensor.h"

ModelConfig model_default_config(void)
{
    ModelConfig c = {.dim = 512, .hidden_dim = 1376, .n_layers = 8, .n_heads = 8, .n_kv_heads = 2,
                     .vocab_size = 1024, .seq_len = 2048, .shared_classifier = 0};
    /* Under emulation (make test-arm64) a token of the full model takes a third of a second and
     * its random weights seven seconds: the suites' program runs would take most of an hour.
     * Half the width and 2 layers keep the shape the tests rely on (8 query heads over 2 kv
     * heads, vocab 1024, seq_len 2048; a batch of 4 still splits its products between threads). */
    const char *small = getenv("TEST_SMALL");
    if (small && strcmp(small, "1") == 0)
        c.dim = 256, c.hidden_dim = 688, c.n_layers = 2;
    return c;
}

int model_check_config(const ModelConfig *c)
{
    if (c->dim <= 0 || c->hidden_dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->vocab_size <= 0 || c->seq_len <= 0)
        return error_set("model config has a size that is not positive (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                         "n_kv_heads %d, vocab_size %d, seq_len %d)",
                         c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->seq_len);
    if (c->dim % c->n_heads != 0)
        return error_set("model config: n_heads = %d does not divide dim = %d", c->n_heads, c->dim);
    if (c->n_heads % c->n_kv_heads != 0)
        return error_set("model config: n_kv_heads = %d does not divide n_heads = %d", c->n_kv_heads, c->n_heads);
    if ((c->dim / c->n_heads) % 2 != 0)
        return error_set("model config: head size %d is odd (RoPE turns pairs of dimensions)", c->dim / c->n_heads);
    /* every size derived from these (the file's bytes, the packed matrices') must fit in size_t:
     * checked before model_weights.c computes them without checks */
    const size_t limit = (SIZE_MAX - 64) / sizeof(float);
    if (model_checkpoint_floats(c) >= limit || model_packed_floats(c) >= limit)
        return error_set("the model's size overflows (dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, "
                         "vocab_size %d, seq_len %d)",
                         c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->seq_len);
    return 0;
}

/* ==== tensor parallelism: which part a rank holds ========================================================= */

/* Part `rank` of `n` items split as evenly as they go: [n * rank / world, n * (rank + 1) / world). */
static void split_range(int n, int rank, int world, int *first, int *count)
{
    *first = (int)((long)n * rank / world);
    *count = (int)((long)n * (rank + 1) / world) - *first;
}

int model_shard_plan(const ModelConfig *c, int rank, int world, ModelShard *s)
{
    const int H = c->n_heads, Hkv = c->n_kv_heads, G = H / Hkv; /* G query heads per kv head */
    if (world < 1 || rank < 0 || rank >= world)
        return error_set("rank %d of %d ranks does not exist", rank, world);
    if (world > H)
        return error_set("%d ranks but the model has %d query heads: each rank needs at least one", world, H);
    if (world <= Hkv && Hkv % world != 0)
        return error_set("%d ranks do not divide the model's %d kv heads: each rank holds the same number of whole kv "
                         "heads and their GQA groups",
                         world, Hkv);
    if (world > Hkv && (world % Hkv != 0 || H % world != 0))
        return error_set("%d ranks for %d query heads over %d kv heads: with more ranks than kv heads each kv head is "
                         "replicated on world / n_kv_heads ranks, so the ranks must be a multiple of %d dividing %d",
                         world, H, Hkv, Hkv, H);
    if (world > c->hidden_dim || world > c->vocab_size)
        return error_set("%d ranks for hidden_dim %d and vocab_size %d: each rank needs at least one of each", world,
                         c->hidden_dim, c->vocab_size);
    *s = (ModelShard){.rank = rank, .world = world};
    if (world <= Hkv) { /* whole kv heads, each with its G query heads */
        split_range(Hkv, rank, world, &s->kv0, &s->n_kv);
        s->h0 = s->kv0 * G, s->n_h = s->n_kv * G;
    } else { /* vLLM's answer: H / world query heads, and the one kv head they read, replicated */
        split_range(H, rank, world, &s->h0, &s->n_h);
        s->kv0 = s->h0 / G, s->n_kv = 1;
    }
    split_range(c->hidden_dim, rank, world, &s->f0, &s->n_f);
    split_range(c->vocab_size, rank, world, &s->v0, &s->n_v);
    return 0;
}

/* ==== a checkpoint's header ============================================================================ */

int model_read_header(FILE *f, const char *path, size_t file_bytes, ModelConfig *c)
{
    int32_t h[7];
    if (fread(h, sizeof(int32_t), 7, f) != 7)
        return error_set("%s: truncated: a llama2.c checkpoint starts with a 28-byte header", path);
    /* a negative vocab_size means "unshared classifier"; 0 and INT32_MIN (no positive twin) are bad */
    const int vocab_bad = h[5] == 0 || h[5] == INT32_MIN;
    *c = (ModelConfig){.dim = h[0], .hidden_dim = h[1], .n_layers = h[2], .n_heads = h[3], .n_kv_heads = h[4],
                       .vocab_size = vocab_bad ? 0 : h[5] < 0 ? -h[5] : h[5], .seq_len = h[6],
                       .shared_classifier = h[5] > 0};
    if (vocab_bad || model_check_config(c) != 0) {
        char why[512];
        if (vocab_bad)
            snprintf(why, sizeof why, "vocab_size is %d", (int)h[5]);
        else
            snprintf(why, sizeof why, "%s", error_message());
        return error_set("%s: bad header: %s", path, why);
    }
    const size_t want = model_checkpoint_bytes(c);
    if (file_bytes != want)
        return error_set("%s: %s: the header (dim %d, hidden %d, layers %d, heads %d, kv heads %d, vocab %d%s, seq_len %d) "
                         "needs %zu bytes, the file has %zu",
                         path, file_bytes < want ? "truncated" : "too long", c->dim, c->hidden_dim, c->n_layers, c->n_heads,
                         c->n_kv_heads, c->vocab_size, c->shared_classifier ? "" : " unshared", c->seq_len, want, file_bytes);
    return 0;
}

/* ==== forward pieces ================================================================================= */

void model_rmsnorm(float *o, const float *x, const float *weight, int n)
{
    float ss = 0.0f;
    for (int j = 0; j < n; j++)
        ss += x[j] * x[j];
    ss = 1.0f / sqrtf(ss / (float)n + 1e-5f);
    for (int j = 0; j < n; j++)
        o[j] = weight[j] * (ss * x[j]);
}

void model_rope_at(float *x, int rows, int n_heads, int D, const int *pos)
{
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < D; i += 2) {
            /* the angle run.c uses: pos / 10000^(i / D) for the pair (i, i+1) of every head */
            const float freq = 1.0f / powf(10000.0f, (float)i / (float)D);
            const float val = (float)pos[r] * freq, fcr = cosf(val), fci = sinf(val);
            for (int h = 0; h < n_heads; h++) {
                float *v = x + ((size_t)r * n_heads + h) * D + i;
                const float v0 = v[0], v1 = v[1];
                v[0] = v0 * fcr - v1 * fci;
                v[1] = v0 * fci + v1 * fcr;
            }
        }
    }
}

void model_rope(float *x, int rows, int n_heads, int D, int pos0)
{
    for (int r = 0; r < rows; r++) {
        const int pos = pos0 + r;
        model_rope_at(x + (size_t)r * n_heads * D, 1, n_heads, D, &pos);
    }
}

void model_embed(const Model *m, int token, float *x)
{
    const size_t dim = (size_t)m->c.dim;
    const int row = token - m->s.v0; /* its row among the shard's vocabulary rows */
    if (row < 0 || row >= m->s.n_v)  /* another rank's row: that rank adds it in */
        memset(x, 0, dim * sizeof(float));
    else if (m->w.token_embedding)
        memcpy(x, m->w.token_embedding + (size_t)row * dim, dim * sizeof(float));
    else /* a shared classifier: the packed classifier is the embedding's only copy */
        matmul_unpack_row(x, m->p.wcls, dim, (size_t)row);
}

void model_swiglu(float *h, const float *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const float val = h[i] * (1.0f / (1.0f + expf(-h[i])));
        h[i] = val * g[i];
    }
}

/* ==== the whole forward, attention supplied by the caller ============================================== */

/* y (n, out) = x (n, in) W^T for W (out, in), packed: each row gets the same bits whatever the
 * other rows -- a token's result does not depend on the batch it runs in (batch invariance;
 * chapter 06 relies on it). */
static void linear(float *y, const float *x, const float *W_packed, size_t n, size_t out, size_t in)
{
    matmul_packed(y, out, x, in, W_packed, n, out, in);
}

/* x (n) summed over the ranks (model_forward's all-reduces); nothing to do for the whole model. */
static int sum_ranks(const Model *m, float *x, size_t n)
{
    return m->s.world > 1 ? m->comm->all_reduce(m->comm->ctx, x, n) : 0;
}

/* The classifier: logits (n_out, vocab) of the normalised rows xb (n_out, dim). A shard computes
 * its vocabulary columns (n_out, n_v) and gathers every rank's into place. */
static int classify(const Model *m, const float *xb, int n_out, float *logits)
{
    const ModelConfig *mc = &m->c;
    const size_t rows = (size_t)n_out, dim = (size_t)mc->dim, V = (size_t)mc->vocab_size;
    if (m->s.world == 1) {
        linear(logits, xb, m->p.wcls, rows, V, dim);
        return 0;
    }
    const int world = m->s.world;
    float *part = mem_alloc(rows * (size_t)m->s.n_v * sizeof(float), "this rank's logits (n_out, n_v)");
    float *all = mem_alloc(rows * V * sizeof(float), "the ranks' logits, rank after rank");
    int *counts = mem_alloc((size_t)world * sizeof(int), "the ranks' logits counts");
    int rc = part && counts && all ? 0 : -1;
    if (rc == 0)
        linear(part, xb, m->p.wcls, rows, (size_t)m->s.n_v, dim);
    for (int r = 0; r < world && rc == 0; r++) { /* rank r's slice: (n_out, its n_v) */
        ModelShard sr;
        rc = model_shard_plan(mc, r, world, &sr);
        counts[r] = n_out * sr.n_v;
    }
    if (rc == 0)
        rc = m->comm->all_gather(m->comm->ctx, part, all, counts);
    const float *from = all;
    for (int r = 0; r < world && rc == 0; r++) { /* rank r's (n_out, n_v) block into its columns */
        ModelShard sr;
        model_shard_plan(mc, r, world, &sr);
        for (size_t i = 0; i < rows; i++, from += sr.n_v)
            memcpy(logits + i * V + (size_t)sr.v0, from, (size_t)sr.n_v * sizeof(float));
    }
    mem_free(part), mem_free(counts), mem_free(all);
    return rc;
}

static int check_forward(const Model *m, int n, const int *tokens, const int *pos, int n_out, const int *out_rows)
{
    const ModelConfig *mc = &m->c;
    if (n < 1)
        return error_set("model_forward: no tokens to run");
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= mc->vocab_size)
            return error_set("token id %d is outside the vocabulary (0..%d)", tokens[i], mc->vocab_size - 1);
        if (pos[i] < 0 || pos[i] >= mc->seq_len)
            return error_set("position %d is outside the model's seq_len %d", pos[i], mc->seq_len);
    }
    if (n_out < 0 || n_out > n)
        return error_set("model_forward: %d rows of logits asked of %d rows", n_out, n);
    for (int i = 0; i < n_out; i++)
        if (out_rows[i] < 0 || out_rows[i] >= n)
            return error_set("model_forward: logits asked for row %d of %d", out_rows[i], n);
    if (m->s.world > 1 && !m->comm)
        return error_set("model_forward: rank %d of %d has no way to reach the other ranks", m->s.rank, m->s.world);
    return 0;
}

int model_forward(const Model *m, int n, const int *tokens, const int *pos, ModelAttention attention, void *ctx,
                  int n_out, const int *out_rows, float *logits)
{
    const ModelConfig *mc = &m->c;
    /* this process's heads and SwiGLU columns: all of them, or a shard's */
    const int dim = mc->dim, H = m->s.n_h, Hkv = m->s.n_kv, D = model_head_size(mc);
    const int qd = H * D, kvd = Hkv * D, hid = m->s.n_f;
    if (check_forward(m, n, tokens, pos, n_out, out_rows) != 0)
        return -1;
    const size_t N = (size_t)n, per_row = (size_t)2 * dim + 2 * (size_t)qd + 2 * (size_t)kvd + 2 * (size_t)hid;
    size_t floats;
    if (size_mul(&floats, N, per_row) != 0 || floats > SIZE_MAX / sizeof(float))
        return error_set("model_forward: the activations of %d rows overflow size_t", n);
    float *buf = mem_alloc(floats * sizeof(float), "forward activations");
    if (!buf)
        return -1;
    float *x = buf;           /* (n, dim) the residual stream */
    float *xb = x + N * dim;  /* (n, dim) normalised, then each block's output */
    float *q = xb + N * dim;  /* (n, H*D) */
    float *att = q + N * qd;  /* (n, H*D) attention output, token-major */
    float *k = att + N * qd;  /* (n, Hkv*D) */
    float *v = k + N * kvd;   /* (n, Hkv*D) */
    float *h1 = v + N * kvd;  /* (n, hidden) */
    float *h3 = h1 + N * hid; /* (n, hidden) */
    for (size_t i = 0; i < N; i++)
        model_embed(m, tokens[i], x + i * dim);
    int rc = sum_ranks(m, x, N * dim); /* a shard has its own vocabulary rows: the others are zeros */
    for (int l = 0; l < mc->n_layers && rc == 0; l++) {
        for (size_t i = 0; i < N; i++)
            model_rmsnorm(xb + i * dim, x + i * dim, m->w.rms_att + (size_t)l * dim, dim);
        linear(q, xb, m->p.wq + (size_t)l * m->p.q, N, (size_t)qd, (size_t)dim);
        linear(k, xb, m->p.wk + (size_t)l * m->p.kv, N, (size_t)kvd, (size_t)dim);
        linear(v, xb, m->p.wv + (size_t)l * m->p.kv, N, (size_t)kvd, (size_t)dim);
        model_rope_at(q, n, H, D, pos);
        model_rope_at(k, n, Hkv, D, pos);
        rc = attention(ctx, l, n, q, k, v, att); /* the chapter's cache and kernel */
        if (rc != 0)
            break;
        linear(xb, att, m->p.wo + (size_t)l * m->p.o, N, (size_t)dim, (size_t)qd);
        rc = sum_ranks(m, xb, N * dim); /* all-reduce 1: every rank's heads' share of Wo att */
        for (size_t i = 0; i < N * dim && rc == 0; i++)
            x[i] += xb[i];
        for (size_t i = 0; i < N && rc == 0; i++)
            model_rmsnorm(xb + i * dim, x + i * dim, m->w.rms_ffn + (size_t)l * dim, dim);
        linear(h1, xb, m->p.w1 + (size_t)l * m->p.up, N, (size_t)hid, (size_t)dim);
        linear(h3, xb, m->p.w3 + (size_t)l * m->p.up, N, (size_t)hid, (size_t)dim);
        model_swiglu(h1, h3, N * hid);
        linear(xb, h1, m->p.w2 + (size_t)l * m->p.down, N, (size_t)dim, (size_t)hid);
        if (rc == 0)
            rc = sum_ranks(m, xb, N * dim); /* all-reduce 2: every rank's SwiGLU columns' share of W2 h */
        for (size_t i = 0; i < N * dim && rc == 0; i++)
            x[i] += xb[i];
    }
    /* the final norm and the classifier, only for the rows whose logits are wanted */
    if (rc == 0 && n_out > 0) {
        for (int i = 0; i < n_out; i++) /* xb is free now: (n_out <= n, dim) */
            model_rmsnorm(xb + (size_t)i * dim, x + (size_t)out_rows[i] * dim, m->w.rms_final, dim);
        rc = classify(m, xb, n_out, logits);
    }
    mem_free(buf);
    return rc;
}
