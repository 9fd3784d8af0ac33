/*
 * testing_oracle.c: the tests' independent references (see testing.h). Nothing here calls the
 * code it checks: attention and the llama2.c model are written again in float64 from their
 * definitions, the checkpoints are written byte by byte, and the tiny tokenizer is made from a
 * list of merges (testing_attn.c runs the `attn` programs against the float64 attention). The
 * float64 model reads the weights as a checkpoint lays them out, taken back out of the packed
 * model by model_unpack (the exact inverse of the packing: common/test_model.c checks it).
 *
 * Shapes: q (B, H, T, D), k and v (B, Hkv, S, D); the model's vectors as in common/model.h.
 */
#include "testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_harness.h"
#include "compare.h"
#include "error.h"
#include "npy.h"
#include "rng.h"
#include "tensor.h"
#include "tokenizer.h"

/* ==== data and attention in float64 =============================================================== */

void fill_normal(float *x, size_t n, uint64_t seed)
{
    Rng rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_normal(&rng);
}

void attention_f64(int B, int H, int Hkv, int T, int S, int D, int causal, double scale, const float *q,
                   const float *k, const float *v, double *out)
{
    double *w = xmalloc((size_t)S * sizeof(double), "the float64 attention's scores"); /* (S) */
    for (size_t b = 0; b < (size_t)B; b++)
        for (size_t h = 0; h < (size_t)H; h++) {
            const size_t bh = b * H + h, bkv = b * Hkv + h / (size_t)(H / Hkv);
            for (int t = 0; t < T; t++) {
                double m = -INFINITY, sum = 0.0;
                int any = 0;
                for (int j = 0; j < S; j++) {
                    w[j] = -INFINITY;
                    if (causal && j > t + (S - T))
                        continue;
                    double dot = 0.0;
                    for (int d = 0; d < D; d++)
                        dot += (double)q[(bh * T + t) * D + d] * (double)k[(bkv * S + j) * D + d];
                    w[j] = dot * scale;
                    m = fmax(m, w[j]);
                    any = 1;
                }
                for (int j = 0; j < S; j++) {
                    w[j] = any && w[j] != -INFINITY ? exp(w[j] - m) : 0.0;
                    sum += w[j];
                }
                for (int d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (int j = 0; j < S; j++)
                        acc += w[j] * (double)v[(bkv * S + j) * D + d];
                    out[(bh * T + t) * D + d] = any ? acc / sum : 0.0;
                }
            }
        }
    free(w);
}

/* ==== the model in float64 ========================================================================= */

/* o (n) = x / sqrt(mean(x^2) + 1e-5) * w, in float64 (run.c's rmsnorm) */
static void rmsnorm_f64(double *o, const double *x, const float *w, int n)
{
    double ss = 0.0;
    for (int j = 0; j < n; j++)
        ss += x[j] * x[j];
    const double inv = 1.0 / sqrt(ss / n + 1e-5);
    for (int j = 0; j < n; j++)
        o[j] = (double)w[j] * (inv * x[j]);
}

/* y (rows) = W x for W (rows, cols) row-major, the checkpoint's layout */
static void matvec_f64(double *y, const float *W, const double *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double acc = 0.0;
        for (int c = 0; c < cols; c++)
            acc += (double)W[(size_t)r * cols + c] * x[c];
        y[r] = acc;
    }
}

/* run.c's RoPE on one vector of n_heads heads of D: element i of the vector (i even) pairs with
 * i + 1, and turns by pos * 10000^(-(i % D) / D) -- the index within its head */
static void rope_f64(double *x, int n_heads, int D, int pos)
{
    for (int i = 0; i < n_heads * D; i += 2) {
        const double angle = pos * pow(10000.0, -(double)(i % D) / D);
        const double c = cos(angle), s = sin(angle), x0 = x[i], x1 = x[i + 1];
        x[i] = x0 * c - x1 * s;
        x[i + 1] = x0 * s + x1 * c;
    }
}

/* One position's causal attention over the cache, GQA: att (H*D) for q (H*D) at position t, query
 * head h reading kv head h / (H / Hkv) of kc and vc (n, Hkv*D), keys 0..t; score (t+1) is scratch */
static void attend_f64(double *att, const double *q, const double *kc, const double *vc, int t, int H, int Hkv, int D,
                       double *score)
{
    const int kvd = Hkv * D, group = H / Hkv;
    for (int h = 0; h < H; h++) {
        const int g = h / group;
        double mx = -INFINITY, sum = 0.0;
        for (int s = 0; s <= t; s++) {
            const double *ks = kc + (size_t)s * kvd + (size_t)g * D;
            double dot = 0.0;
            for (int d = 0; d < D; d++)
                dot += q[h * D + d] * ks[d];
            score[s] = dot / sqrt((double)D);
            mx = fmax(mx, score[s]);
        }
        for (int s = 0; s <= t; s++)
            sum += score[s] = exp(score[s] - mx);
        for (int d = 0; d < D; d++) {
            double acc = 0.0;
            for (int s = 0; s <= t; s++)
                acc += score[s] * vc[(size_t)s * kvd + (size_t)g * D + d];
            att[h * D + d] = acc / sum;
        }
    }
}

void model_forward_f64(const Model *m, const int *tokens, int n, double *logits)
{
    const ModelConfig *c = &m->c;
    ModelTensors tensors;
    float *unpacked = model_unpack_all(m, &tensors); /* every weight in checkpoint order */
    if (!unpacked)
        die_with_error();
    const ModelTensors *w = &tensors;
    const int dim = c->dim, H = c->n_heads, Hkv = c->n_kv_heads, D = dim / H, hid = c->hidden_dim;
    const int qd = H * D, kvd = Hkv * D, L = c->n_layers, V = c->vocab_size;
    const char *what = "the float64 model";
    double *x = xmalloc((size_t)dim * sizeof(double), what);             /* (dim) the residual stream */
    double *xb = xmalloc((size_t)dim * sizeof(double), what);            /* (dim) normalised input of a block */
    double *q = xmalloc((size_t)qd * sizeof(double), what);              /* (H*D) */
    double *att = xmalloc((size_t)qd * sizeof(double), what);            /* (H*D) attention output */
    double *proj = xmalloc((size_t)dim * sizeof(double), what);          /* (dim) a block's output */
    double *h1 = xmalloc((size_t)hid * sizeof(double), what);            /* (hidden) w1 xb */
    double *h3 = xmalloc((size_t)hid * sizeof(double), what);            /* (hidden) w3 xb */
    double *score = xmalloc((size_t)n * sizeof(double), what);           /* (n) one head's scores */
    double *kc = xmalloc((size_t)L * n * kvd * sizeof(double), what);    /* (L, n, Hkv*D) keys after RoPE */
    double *vc = xmalloc((size_t)L * n * kvd * sizeof(double), what);    /* (L, n, Hkv*D) values */
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < dim; j++)
            x[j] = w->token_embedding[(size_t)tokens[t] * dim + j];
        for (int l = 0; l < L; l++) {
            double *k = kc + ((size_t)l * n + t) * kvd, *v = vc + ((size_t)l * n + t) * kvd;
            rmsnorm_f64(xb, x, w->rms_att + (size_t)l * dim, dim);
            matvec_f64(q, w->wq + (size_t)l * qd * dim, xb, qd, dim);
            matvec_f64(k, w->wk + (size_t)l * kvd * dim, xb, kvd, dim);
            matvec_f64(v, w->wv + (size_t)l * kvd * dim, xb, kvd, dim);
            rope_f64(q, H, D, t);
            rope_f64(k, Hkv, D, t);
            attend_f64(att, q, kc + (size_t)l * n * kvd, vc + (size_t)l * n * kvd, t, H, Hkv, D, score);
            matvec_f64(proj, w->wo + (size_t)l * dim * qd, att, dim, qd);
            for (int j = 0; j < dim; j++)
                x[j] += proj[j];
            rmsnorm_f64(xb, x, w->rms_ffn + (size_t)l * dim, dim);
            matvec_f64(h1, w->w1 + (size_t)l * hid * dim, xb, hid, dim);
            matvec_f64(h3, w->w3 + (size_t)l * hid * dim, xb, hid, dim);
            for (int j = 0; j < hid; j++) /* SwiGLU: silu(w1 x) * (w3 x) */
                h1[j] = h1[j] / (1.0 + exp(-h1[j])) * h3[j];
            matvec_f64(proj, w->w2 + (size_t)l * dim * hid, h1, dim, hid);
            for (int j = 0; j < dim; j++)
                x[j] += proj[j];
        }
        rmsnorm_f64(xb, x, w->rms_final, dim);
        /* the classifier: wcls, which is the token embedding when shared */
        matvec_f64(logits + (size_t)t * V, c->shared_classifier ? w->token_embedding : w->wcls, xb, V, dim);
    }
    free(x), free(xb), free(q), free(att), free(proj), free(h1), free(h3), free(score), free(kc), free(vc);
    mem_free(unpacked);
}

/* ==== a llama2.c checkpoint, written by hand ========================================================= */

void testing_write_checkpoint(const char *path, const ModelConfig *c, size_t truncate_by)
{
    const size_t L = c->n_layers, dim = c->dim, D = dim / c->n_heads, hid = c->hidden_dim, V = c->vocab_size;
    const size_t qd = c->n_heads * D, kvd = c->n_kv_heads * D;
    const size_t blocks[14] = {V * dim, L * dim, L * qd * dim, L * kvd * dim, L * kvd * dim, L * dim * qd, L * dim,
                               L * hid * dim, L * dim * hid, L * hid * dim, dim, c->seq_len * D / 2,
                               c->seq_len * D / 2, V * dim}; /* run.c's order; 11, 12: the RoPE tables */
    const int n_blocks = c->shared_classifier ? 13 : 14;
    size_t total = 0;
    for (int k = 0; k < n_blocks; k++)
        total += blocks[k];
    float *data = xmalloc(total * sizeof(float), "the checkpoint's weights"); /* (total) */
    size_t at = 0;
    for (int k = 0; k < n_blocks; k++)
        for (size_t i = 0; i < blocks[k]; i++)
            data[at++] = (float)k + (float)i * 1e-6f;
    const int32_t h[7] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                          c->shared_classifier ? c->vocab_size : -c->vocab_size, c->seq_len};
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(h, sizeof h, 1, f) != 1 ||
        fwrite(data, sizeof(float), total - truncate_by, f) != total - truncate_by || fclose(f) != 0)
        die("%s: cannot write the test checkpoint", path);
    free(data);
}

void testing_write_wrapping_checkpoint(const char *path)
{
    const int32_t wrap[7] = {1 << 30, 1, 1, 1 << 29, 1, 2147483647 - 9, 16};
    unsigned char file[156] = {0}; /* the header, then zeros */
    memcpy(file, wrap, sizeof wrap);
    write_bytes(path, file, sizeof file);
}

void testing_fill_tokens(int *tok, int n, int mul, int add, int vocab)
{
    for (int i = 0; i < n; i++)
        tok[i] = (int)(((long long)i * mul + add) % vocab);
}

/* ==== a tiny tokenizer fixture ====================================================================== */

static const char *const TINY_MERGES[] = { /* in merge order: each is two earlier tokens */
    " t", "he", " the", "in", "ing", " a", "an", "nd", " and", "er", " w", "as", " was", "on",
    "ce", " O", " On", " Once", " u", "pon", " upon", "im", "ime", " time", "re", " there", " l", "it",
};
#define TINY_N_MERGES ((int)(sizeof TINY_MERGES / sizeof TINY_MERGES[0]))
#define TINY_VOCAB (3 + 256 + 95 + TINY_N_MERGES)

static char tiny_pieces[TINY_VOCAB][16];

static void tiny_build(void)
{
    if (tiny_pieces[0][0])
        return;
    snprintf(tiny_pieces[0], 16, "<unk>");
    snprintf(tiny_pieces[TOKEN_BOS], 16, "\n<s>\n");
    snprintf(tiny_pieces[TOKEN_EOS], 16, "\n</s>\n");
    for (int b = 0; b < 256; b++)
        snprintf(tiny_pieces[3 + b], 16, "<0x%02X>", b);
    for (int c = 32; c < 127; c++) /* ' ' .. '~' */
        tiny_pieces[259 + c - 32][0] = (char)c, tiny_pieces[259 + c - 32][1] = '\0';
    for (int i = 0; i < TINY_N_MERGES; i++)
        snprintf(tiny_pieces[354 + i], 16, "%s", TINY_MERGES[i]);
}

const char *testing_tiny_piece(int id)
{
    tiny_build();
    return id >= 0 && id < TINY_VOCAB ? tiny_pieces[id] : NULL;
}

int testing_tiny_id(const char *piece)
{
    tiny_build();
    for (int i = 0; i < TINY_VOCAB; i++)
        if (strcmp(tiny_pieces[i], piece) == 0)
            return i;
    return -1;
}

int testing_load_tiny_tokenizer(const char *path, Tokenizer *t)
{
    const int vocab = testing_write_tiny_tokenizer(path);
    if (tokenizer_load(path, vocab, t) != 0)
        die_with_error();
    return vocab;
}

int testing_write_tiny_tokenizer(const char *path)
{
    tiny_build();
    char *pieces[TINY_VOCAB];
    float scores[TINY_VOCAB];
    for (int i = 0; i < TINY_VOCAB; i++) {
        pieces[i] = tiny_pieces[i];
        scores[i] = i < 354 ? 0.0f : -(float)(i - 354); /* earlier merges first: " t" before "he" */
    }
    if (tokenizer_save(path, TINY_VOCAB, pieces, scores) != 0)
        die_with_error();
    return TINY_VOCAB;
}
