/* model.c: the Llama-style model of llama2.c's run.c -- config, checkpoints, forward pieces (see model.h). */
#include "model.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fileio.h"
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

static size_t packed_floats(const ModelConfig *c);

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
    /* every size derived from these (the file's bytes, the packed copy's) must fit in size_t:
     * checked before blocks_of and build_packed compute them without checks */
    const size_t limit = (SIZE_MAX - 64) / sizeof(float);
    if (model_checkpoint_floats(c) >= limit || packed_floats(c) >= limit)
        return error_set("the model's size overflows (dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, "
                         "vocab_size %d, seq_len %d)",
                         c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->seq_len);
    return 0;
}

/* Sizes from a file's header are hostile: every product and sum below saturates at SIZE_MAX
 * instead of wrapping (a header of dim 2^30, heads 2^29, vocab 2^31-10 once declared 2^64 + 156
 * bytes, which wrapped to the 156 bytes of its file and passed the size check). No real size comes
 * near SIZE_MAX, so SIZE_MAX means "too large" and model_check_config refuses it. */
static size_t sat_mul(size_t a, size_t b)
{
    size_t r;
    return size_mul(&r, a, b) == 0 ? r : SIZE_MAX;
}

static size_t sat_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

static size_t sat_mul3(size_t a, size_t b, size_t c) { return sat_mul(sat_mul(a, b), c); }

/* The checkpoint's float blocks in order, for counting, loading and saving alike. */
typedef struct {
    float **slot;
    size_t n;
} Block;

static int blocks_of(const ModelConfig *c, ModelWeights *w, Block b[14])
{
    const size_t L = (size_t)c->n_layers, dim = (size_t)c->dim, D = (size_t)(c->dim / c->n_heads);
    const size_t qd = (size_t)c->n_heads * D, kvd = (size_t)c->n_kv_heads * D, hid = (size_t)c->hidden_dim;
    int i = 0;
    b[i++] = (Block){.slot = &w->token_embedding, .n = sat_mul((size_t)c->vocab_size, dim)};
    b[i++] = (Block){.slot = &w->rms_att, .n = sat_mul(L, dim)};
    b[i++] = (Block){.slot = &w->wq, .n = sat_mul3(L, qd, dim)};
    b[i++] = (Block){.slot = &w->wk, .n = sat_mul3(L, kvd, dim)};
    b[i++] = (Block){.slot = &w->wv, .n = sat_mul3(L, kvd, dim)};
    b[i++] = (Block){.slot = &w->wo, .n = sat_mul3(L, dim, qd)};
    b[i++] = (Block){.slot = &w->rms_ffn, .n = sat_mul(L, dim)};
    b[i++] = (Block){.slot = &w->w1, .n = sat_mul3(L, hid, dim)};
    b[i++] = (Block){.slot = &w->w2, .n = sat_mul3(L, dim, hid)};
    b[i++] = (Block){.slot = &w->w3, .n = sat_mul3(L, hid, dim)};
    b[i++] = (Block){.slot = &w->rms_final, .n = dim};
    b[i++] = (Block){.slot = NULL, .n = sat_mul((size_t)c->seq_len, D) / 2}; /* freq_cis_real, unused */
    b[i++] = (Block){.slot = NULL, .n = sat_mul((size_t)c->seq_len, D) / 2}; /* freq_cis_imag, unused */
    if (!c->shared_classifier)
        b[i++] = (Block){.slot = &w->wcls, .n = sat_mul((size_t)c->vocab_size, dim)};
    return i;
}

size_t model_checkpoint_floats(const ModelConfig *c)
{
    ModelWeights w;
    Block b[14];
    size_t total = 0;
    int n = blocks_of(c, &w, b);
    for (int i = 0; i < n; i++)
        total = sat_add(total, b[i].n);
    return total;
}

/* Floats of the packed matrices (build_packed), saturating like the rest. */
static size_t packed_floats(const ModelConfig *c)
{
    const size_t L = (size_t)c->n_layers, dim = (size_t)c->dim, D = (size_t)(c->dim / c->n_heads);
    const size_t qd = (size_t)c->n_heads * D, kvd = (size_t)c->n_kv_heads * D, hid = (size_t)c->hidden_dim;
    /* matmul_packed_floats(N, K) rounds N up to a multiple of 16 rows: at most (N + 16) * K */
    const size_t per_layer = sat_add(sat_add(sat_mul(qd + 16, dim), sat_mul(2, sat_mul(kvd + 16, dim))),
                                     sat_add(sat_add(sat_mul(dim + 16, qd), sat_mul(2, sat_mul(hid + 16, dim))),
                                             sat_mul(dim + 16, hid)));
    return sat_add(sat_mul(L, per_layer), sat_mul((size_t)c->vocab_size + 16, dim));
}

size_t model_param_count(const ModelConfig *c)
{
    const size_t D = (size_t)(c->dim / c->n_heads);
    return model_checkpoint_floats(c) - (size_t)c->seq_len * D;
}

/* Points every weight into m->data, in checkpoint order. */
static void assign(Model *m)
{
    Block b[14];
    int n = blocks_of(&m->c, &m->w, b);
    float *p = m->data;
    for (int i = 0; i < n; i++) {
        if (b[i].slot)
            *b[i].slot = p;
        p += b[i].n;
    }
    if (m->c.shared_classifier)
        m->w.wcls = m->w.token_embedding;
}

static int alloc_model(Model *m, const ModelConfig *c, const char *what)
{
    memset(m, 0, sizeof *m);
    if (model_check_config(c) != 0)
        return -1;
    m->c = *c;
    m->n_floats = model_checkpoint_floats(c);
    m->data = mem_alloc(m->n_floats * sizeof(float), what);
    if (!m->data)
        return -1;
    assign(m);
    return 0;
}

/* m->p from m->w: every matrix packed into panels for matmul_packed. */
static int build_packed(Model *m)
{
    const ModelConfig *c = &m->c;
    const size_t L = (size_t)c->n_layers, dim = (size_t)c->dim, D = (size_t)(c->dim / c->n_heads);
    const size_t qd = (size_t)c->n_heads * D, kvd = (size_t)c->n_kv_heads * D, hid = (size_t)c->hidden_dim;
    ModelPacked *p = &m->p;
    p->q = matmul_packed_floats(qd, dim), p->kv = matmul_packed_floats(kvd, dim);
    p->o = matmul_packed_floats(dim, qd), p->up = matmul_packed_floats(hid, dim), p->down = matmul_packed_floats(dim, hid);
    const size_t cls = matmul_packed_floats((size_t)c->vocab_size, dim);
    m->p_data = mem_alloc((L * (p->q + 2 * p->kv + p->o + 2 * p->up + p->down) + cls) * sizeof(float),
                          "packed model weights");
    if (!m->p_data)
        return -1;
    float *x = m->p_data;
    p->wq = x, x += L * p->q;
    p->wk = x, x += L * p->kv;
    p->wv = x, x += L * p->kv;
    p->wo = x, x += L * p->o;
    p->w1 = x, x += L * p->up;
    p->w2 = x, x += L * p->down;
    p->w3 = x, x += L * p->up;
    p->wcls = x;
    for (size_t l = 0; l < L; l++) {
        matmul_pack_weights(p->wq + l * p->q, m->w.wq + l * qd * dim, qd, dim);
        matmul_pack_weights(p->wk + l * p->kv, m->w.wk + l * kvd * dim, kvd, dim);
        matmul_pack_weights(p->wv + l * p->kv, m->w.wv + l * kvd * dim, kvd, dim);
        matmul_pack_weights(p->wo + l * p->o, m->w.wo + l * dim * qd, dim, qd);
        matmul_pack_weights(p->w1 + l * p->up, m->w.w1 + l * hid * dim, hid, dim);
        matmul_pack_weights(p->w2 + l * p->down, m->w.w2 + l * dim * hid, dim, hid);
        matmul_pack_weights(p->w3 + l * p->up, m->w.w3 + l * hid * dim, hid, dim);
    }
    matmul_pack_weights(p->wcls, m->w.wcls, (size_t)c->vocab_size, dim);
    return 0;
}

int model_init_random(Model *m, const ModelConfig *c, uint64_t seed)
{
    if (alloc_model(m, c, "model weights") != 0)
        return -1;
    Rng rng;
    rng_seed(&rng, seed);
    const size_t L = (size_t)c->n_layers, dim = (size_t)c->dim, D = (size_t)(c->dim / c->n_heads);
    const size_t qd = (size_t)c->n_heads * D, kvd = (size_t)c->n_kv_heads * D, hid = (size_t)c->hidden_dim;
    const struct {
        float *p;
        size_t n;
        float std;
    } fill[] = {
        {m->w.token_embedding, (size_t)c->vocab_size * dim, 1.0f},
        {m->w.wq, L * qd * dim, 1.0f / sqrtf((float)dim)},
        {m->w.wk, L * kvd * dim, 1.0f / sqrtf((float)dim)},
        {m->w.wv, L * kvd * dim, 1.0f / sqrtf((float)dim)},
        {m->w.wo, L * dim * qd, 1.0f / sqrtf((float)qd)},
        {m->w.w1, L * hid * dim, 1.0f / sqrtf((float)dim)},
        {m->w.w2, L * dim * hid, 1.0f / sqrtf((float)hid)},
        {m->w.w3, L * hid * dim, 1.0f / sqrtf((float)dim)},
        {c->shared_classifier ? NULL : m->w.wcls, (size_t)c->vocab_size * dim, 1.0f / sqrtf((float)dim)},
    };
    for (size_t i = 0; i < sizeof fill / sizeof fill[0]; i++)
        for (size_t j = 0; fill[i].p && j < fill[i].n; j++)
            fill[i].p[j] = fill[i].std * rng_normal(&rng);
    for (size_t j = 0; j < L * dim; j++)
        m->w.rms_att[j] = m->w.rms_ffn[j] = 1.0f;
    for (size_t j = 0; j < dim; j++)
        m->w.rms_final[j] = 1.0f;
    if (build_packed(m) != 0) {
        model_free(m);
        return -1;
    }
    return 0;
}

int model_load(const char *path, Model *m)
{
    memset(m, 0, sizeof *m);
    int32_t h[7];
    size_t have; /* the file's bytes */
    FILE *f = file_open_input_size(path, &have); /* a regular file, or an error: never blocks on a FIFO */
    if (!f)
        return -1;
    if (fread(h, sizeof(int32_t), 7, f) != 7) {
        fclose(f);
        return error_set("%s: truncated: a llama2.c checkpoint starts with a 28-byte header", path);
    }
    /* a negative vocab_size means "unshared classifier"; 0 and INT32_MIN (no positive twin) are bad */
    const int vocab_bad = h[5] == 0 || h[5] == INT32_MIN;
    ModelConfig c = {.dim = h[0], .hidden_dim = h[1], .n_layers = h[2], .n_heads = h[3], .n_kv_heads = h[4],
                     .vocab_size = vocab_bad ? 0 : h[5] < 0 ? -h[5] : h[5], .seq_len = h[6],
                     .shared_classifier = h[5] > 0};
    if (vocab_bad || model_check_config(&c) != 0) {
        char why[512];
        if (vocab_bad)
            snprintf(why, sizeof why, "vocab_size is %d", (int)h[5]);
        else
            snprintf(why, sizeof why, "%s", error_message());
        fclose(f);
        return error_set("%s: bad header: %s", path, why);
    }
    const size_t want = 28 + model_checkpoint_floats(&c) * sizeof(float);
    if (have != want) {
        fclose(f);
        return error_set("%s: %s: the header (dim %d, hidden %d, layers %d, heads %d, kv heads %d, vocab %d%s, seq_len %d) "
                         "needs %zu bytes, the file has %zu",
                         path, have < want ? "truncated" : "too long", c.dim, c.hidden_dim, c.n_layers, c.n_heads,
                         c.n_kv_heads, c.vocab_size, c.shared_classifier ? "" : " unshared", c.seq_len, want, have);
    }
    if (alloc_model(m, &c, path) != 0) {
        fclose(f);
        return -1;
    }
    if (fread(m->data, sizeof(float), m->n_floats, f) != m->n_floats) {
        fclose(f);
        model_free(m);
        return error_set("%s: read error", path);
    }
    fclose(f);
    for (size_t i = 0; i < m->n_floats; i++)
        if (!isfinite(m->data[i])) {
            model_free(m);
            return error_set("%s: weight %zu is not finite", path, i);
        }
    if (build_packed(m) != 0) {
        model_free(m);
        return -1;
    }
    return 0;
}

int model_load_or_builtin(const char *checkpoint, Model *m)
{
    if (checkpoint)
        return model_load(checkpoint, m);
    ModelConfig c = model_default_config();
    return model_init_random(m, &c, MODEL_DEFAULT_SEED);
}

int model_save(const Model *m, const char *path)
{
    OutFile o; /* a temporary file renamed over path at the end: a failed write keeps the old one */
    if (out_open(&o, path) != 0)
        return -1;
    const ModelConfig *c = &m->c;
    int32_t h[7] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                    c->shared_classifier ? c->vocab_size : -c->vocab_size, c->seq_len};
    out_write(&o, h, sizeof h);
    out_write(&o, m->data, m->n_floats * sizeof(float));
    return out_commit(&o);
}

void model_free(Model *m)
{
    mem_free(m->data);
    mem_free(m->p_data);
    memset(m, 0, sizeof *m);
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

int model_forward(const Model *m, int n, const int *tokens, const int *pos, ModelAttention attention, void *ctx,
                  int n_out, const int *out_rows, float *logits)
{
    const ModelConfig *mc = &m->c;
    const int dim = mc->dim, H = mc->n_heads, Hkv = mc->n_kv_heads, D = model_head_size(mc);
    const int qd = H * D, kvd = Hkv * D, hid = mc->hidden_dim;
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
    const size_t N = (size_t)n, per_row = (size_t)2 * dim + 2 * (size_t)qd + 2 * (size_t)kvd + 2 * (size_t)hid;
    if (sat_mul3(N, per_row, sizeof(float)) == SIZE_MAX)
        return error_set("model_forward: the activations of %d rows overflow size_t", n);
    float *buf = mem_alloc(N * per_row * sizeof(float), "forward activations");
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
        memcpy(x + i * dim, m->w.token_embedding + (size_t)tokens[i] * dim, (size_t)dim * sizeof(float));
    int rc = 0;
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
        for (size_t i = 0; i < N * dim; i++)
            x[i] += xb[i];
        for (size_t i = 0; i < N; i++)
            model_rmsnorm(xb + i * dim, x + i * dim, m->w.rms_ffn + (size_t)l * dim, dim);
        linear(h1, xb, m->p.w1 + (size_t)l * m->p.up, N, (size_t)hid, (size_t)dim);
        linear(h3, xb, m->p.w3 + (size_t)l * m->p.up, N, (size_t)hid, (size_t)dim);
        model_swiglu(h1, h3, N * hid);
        linear(xb, h1, m->p.w2 + (size_t)l * m->p.down, N, (size_t)dim, (size_t)hid);
        for (size_t i = 0; i < N * dim; i++)
            x[i] += xb[i];
    }
    /* the final norm and the classifier, only for the rows whose logits are wanted */
    if (rc == 0 && n_out > 0) {
        for (int i = 0; i < n_out; i++) /* xb is free now: (n_out <= n, dim) */
            model_rmsnorm(xb + (size_t)i * dim, x + (size_t)out_rows[i] * dim, m->w.rms_final, dim);
        linear(logits, xb, m->p.wcls, (size_t)n_out, (size_t)mc->vocab_size, (size_t)dim);
    }
    mem_free(buf);
    return rc;
}
