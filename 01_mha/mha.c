/*
 * mha.c: chapter 01 on the CPU -- multi-head attention with the full score matrix.
 *
 * What it teaches: attention is three steps per head (scores, softmax, weighted sum of values)
 * and the obvious way to run them builds a T x S matrix per head, so time and memory grow as
 * T * S (T^2 for self-attention).
 *
 *   v1 mha_attention_ref: the definition as plain loops -- the reference everything is checked
 *      against. About 1.2 GFLOP/s: the dot products run one multiply-add at a time.
 *   v2 mha_attention_omp: the same arithmetic organised for the machine: blocks of 32 query rows
 *      are OpenMP tasks, QKᵀ and PV go through common/matmul's register-blocked kernel, exp runs
 *      eight lanes at a time (common/vmath.h), and a causal block stops at the last key its last
 *      row can see. 28-66x faster than v1 on the 2-core machine of docs/01_mha.md
 *      (`build/bin/01_mha bench` measures it); it still writes every score of the (B, H, T, S)
 *      matrix.
 *
 * Run: build/bin/01_mha (the lesson), build/bin/01_mha verify, build/bin/01_mha bench.
 */
#include "01_mha/mha.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/attn_cli.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/npy.h"
#include "common/paths.h"
#include "common/tensor.h"
#include "common/vmath.h"

size_t mha_scores_bytes(const MhaShape *s)
{
    return (size_t)s->B * (size_t)s->H * (size_t)s->T * (size_t)s->S * sizeof(float);
}

/* Softmax of x[0..n) in place; a row with no visible key (all -inf) becomes zeros. */
static void softmax_row_ref(float *x, size_t n)
{
    float m = -INFINITY;
    for (size_t j = 0; j < n; j++)
        if (x[j] > m)
            m = x[j];
    if (m == -INFINITY) {
        for (size_t j = 0; j < n; j++)
            x[j] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        x[j] = expf(x[j] - m); /* subtracting the max keeps exp() <= 1: no overflow */
        sum += x[j];
    }
    for (size_t j = 0; j < n; j++)
        x[j] /= sum;
}

/* ==== v1: the reference ======================================================================= */

void mha_head_attention_ref(const float *qh, const float *kh, const float *vh, float *sc, float *oh, int T_,
                            int S_, int D_, int causal, float scale)
{
    const size_t T = (size_t)T_, S = (size_t)S_, D = (size_t)D_;
    /* 1. scores = Q Kᵀ * scale; keys a query may not see get -inf */
    for (size_t t = 0; t < T; t++) {
        size_t visible = (size_t)attn_visible_keys((int)t, T_, S_, causal);
        for (size_t j = 0; j < S; j++) {
            float dot = 0.0f;
            for (size_t d = 0; d < D; d++)
                dot += qh[t * D + d] * kh[j * D + d];
            sc[t * S + j] = j < visible ? dot * scale : -INFINITY;
        }
    }
    /* 2. P = softmax(scores) along each row */
    for (size_t t = 0; t < T; t++)
        softmax_row_ref(sc + t * S, S);
    /* 3. O = P V */
    for (size_t t = 0; t < T; t++)
        for (size_t d = 0; d < D; d++) {
            float acc = 0.0f;
            for (size_t j = 0; j < S; j++)
                acc += sc[t * S + j] * vh[j * D + d];
            oh[t * D + d] = acc;
        }
}

int mha_attention_ref(const MhaShape *s, const float *q, const float *k, const float *v, float *out)
{
    const size_t T = (size_t)s->T, S = (size_t)s->S, D = (size_t)s->D;
    float *scores = mem_alloc(mha_scores_bytes(s), "the score matrix (B, H, T, S)"); /* (B, H, T, S) */
    if (!scores)
        return -1;
    for (size_t bh = 0; bh < (size_t)s->B * (size_t)s->H; bh++)
        mha_head_attention_ref(q + bh * T * D, k + bh * S * D, v + bh * S * D, scores + bh * T * S, out + bh * T * D,
                               s->T, s->S, s->D, s->causal, s->scale);
    mem_free(scores);
    return 0;
}

/* ==== v2: OpenMP + register-blocked matmul ===================================================== */

void mha_softmax_row(float *x, size_t n, size_t width, float scale)
{
    /* the row's maximum first: every exponent is then <= 0, so no exp can overflow */
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (size_t j = 0; j < n; j++)
        m = x[j] * scale > m ? x[j] * scale : m; /* not fmaxf: without -ffast-math it is a libm call */
    const float sum = vexp_scaled_sum(x, n, scale, m); /* eight exps at a time (common/vmath.h) */
    const float inv = n ? 1.0f / sum : 0.0f;
#pragma omp simd
    for (size_t j = 0; j < n; j++)
        x[j] *= inv;
    for (size_t j = n; j < width; j++)
        x[j] = 0.0f;
}

void mha_block_attention(const float *q, size_t i0, size_t rows, const float *kt, const float *v, float *sc,
                         float *out, int T, int S, int D, int causal, float scale)
{
    /* keys beyond what the block's furthest-seeing row sees are masked for every row of it */
    size_t width = 0;
    for (size_t r = 0; r < rows; r++) {
        size_t n = (size_t)attn_visible_keys((int)((i0 + r) % (size_t)T), T, S, causal);
        width = n > width ? n : width;
    }
    if (width == 0) {
        memset(out, 0, rows * (size_t)D * sizeof(float));
        return;
    }
    matmul_nn_ld(sc, (size_t)S, q, (size_t)D, kt, (size_t)S, rows, width, (size_t)D);
    for (size_t r = 0; r < rows; r++) {
        size_t n = (size_t)attn_visible_keys((int)((i0 + r) % (size_t)T), T, S, causal);
        mha_softmax_row(sc + r * (size_t)S, n, width, scale);
    }
    matmul_nn_ld(out, (size_t)D, sc, (size_t)S, v, (size_t)D, rows, (size_t)D, width);
}

float *mha_keys_transposed(const float *k, size_t heads, size_t S, size_t D, const char *what)
{
    float *kt = mem_alloc(heads * D * S * sizeof(float), what); /* (heads, D, S) */
    if (!kt)
        return NULL;
#pragma omp parallel for schedule(static)
    for (size_t h = 0; h < heads; h++)
        transpose(kt + h * D * S, k + h * S * D, S, D);
    return kt;
}

int mha_attention_omp(const MhaShape *s, const float *q, const float *k, const float *v, float *out)
{
    const size_t T = (size_t)s->T, S = (size_t)s->S, D = (size_t)s->D, BH = (size_t)s->B * (size_t)s->H;
    float *scores = mem_alloc(mha_scores_bytes(s), "the score matrix (B, H, T, S)"); /* (B, H, T, S) */
    if (!scores)
        return -1;
    /* Kᵀ per head, so that Q Kᵀ is a plain (T, D) x (D, S) product */
    float *kt = mha_keys_transposed(k, BH, S, D, "Kᵀ (B, H, D, S)"); /* (B, H, D, S) */
    if (!kt) {
        mem_free(scores);
        return -1;
    }
    const size_t n_blocks = (T + MHA_BR - 1) / MHA_BR;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (size_t bh = 0; bh < BH; bh++)
        for (size_t blk = 0; blk < n_blocks; blk++) {
            const size_t t0 = blk * MHA_BR;
            const size_t rows = T - t0 < MHA_BR ? T - t0 : MHA_BR;
            mha_block_attention(q + (bh * T + t0) * D, t0, rows, kt + bh * D * S, v + bh * S * D,
                                scores + (bh * T + t0) * S, out + (bh * T + t0) * D, s->T, s->S, s->D, s->causal,
                                s->scale);
        }
    mem_free(kt);
    mem_free(scores);
    return 0;
}

/* ==== dispatcher ================================================================================ */

int mha_attention_cpu(int kernel, const MhaShape *s, const float *q, const float *k, const float *v, float *out)
{
    switch (kernel) {
    case 1:
        return mha_attention_ref(s, q, k, v, out);
    case 0: /* the fastest */
    case 2:
        return mha_attention_omp(s, q, k, v, out);
    default:
        return error_set("--kernel %d: chapter 01 has CPU kernels 1..%d", kernel, MHA_CPU_KERNELS);
    }
}

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CPU_NAMES[MHA_CPU_KERNELS + 1] = {"omp", "ref", "omp"};

const char *mha_cpu_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= MHA_CPU_KERNELS ? CPU_NAMES[kernel] : NULL;
}

/* ==== the layer ================================================================================ */

void mha_weights_init(MhaWeights *w, int C, int H, int D, Rng *rng)
{
    const size_t HD = (size_t)H * (size_t)D;
    w->C = C, w->H = H, w->D = D;
    w->wq = mem_alloc_or_die(HD * C * sizeof(float), "wq (H*D, C)");
    w->wk = mem_alloc_or_die(HD * C * sizeof(float), "wk (H*D, C)");
    w->wv = mem_alloc_or_die(HD * C * sizeof(float), "wv (H*D, C)");
    w->wo = mem_alloc_or_die(HD * C * sizeof(float), "wo (C, H*D)");
    const float sc = 1.0f / sqrtf((float)C), so = 1.0f / sqrtf((float)HD);
    for (size_t i = 0; i < HD * C; i++)
        w->wq[i] = sc * rng_normal(rng);
    for (size_t i = 0; i < HD * C; i++)
        w->wk[i] = sc * rng_normal(rng);
    for (size_t i = 0; i < HD * C; i++)
        w->wv[i] = sc * rng_normal(rng);
    for (size_t i = 0; i < HD * C; i++)
        w->wo[i] = so * rng_normal(rng);
}

void mha_weights_free(MhaWeights *w)
{
    mem_free(w->wq), mem_free(w->wk), mem_free(w->wv), mem_free(w->wo);
    w->wq = w->wk = w->wv = w->wo = NULL;
}

size_t mha_weights_count(const MhaWeights *w) { return 4 * (size_t)w->C * (size_t)w->H * (size_t)w->D; }

static const char *const WEIGHT_FILES[4] = {"wq.npy", "wk.npy", "wv.npy", "wo.npy"};

int mha_weights_save(const MhaWeights *w, const char *dir)
{
    char path[4096];
    const size_t HD = (size_t)w->H * (size_t)w->D, C = (size_t)w->C;
    const float *m[4] = {w->wq, w->wk, w->wv, w->wo};
    if (paths_make_dirs(dir) != 0)
        return -1;
    for (int i = 0; i < 4; i++) {
        size_t shape[2] = {i == 3 ? C : HD, i == 3 ? HD : C};
        snprintf(path, sizeof path, "%s/%s", dir, WEIGHT_FILES[i]);
        if (npy_write(path, NPY_F32, 2, shape, m[i]) != 0)
            return -1;
    }
    return 0;
}

int mha_weights_load(const char *dir, int H, MhaWeights *w)
{
    char path[4096];
    Tensor t[4] = {{0}};
    memset(w, 0, sizeof *w);
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, WEIGHT_FILES[i]);
        if (npy_read_tensor(path, 2, &t[i]) != 0)
            goto fail;
    }
    const size_t HD = t[0].shape[0], C = t[0].shape[1];
    if (H < 1 || HD % (size_t)H != 0 || HD / (size_t)H == 0) {
        error_set("%s/wq.npy: %zu rows are not H = %d heads of a whole head dim", dir, HD, H);
        goto fail;
    }
    for (int i = 1; i < 4; i++) {
        size_t r = i == 3 ? C : HD, c = i == 3 ? HD : C;
        if (t[i].shape[0] != r || t[i].shape[1] != c) {
            error_set("%s/%s: shape (%zu, %zu), expected (%zu, %zu) to match wq.npy (%zu, %zu)", dir, WEIGHT_FILES[i],
                      t[i].shape[0], t[i].shape[1], r, c, HD, C);
            goto fail;
        }
    }
    w->C = (int)C, w->H = H, w->D = (int)(HD / (size_t)H);
    w->wq = t[0].data, w->wk = t[1].data, w->wv = t[2].data, w->wo = t[3].data;
    return 0;
fail:
    for (int i = 0; i < 4; i++)
        tensor_free(&t[i]);
    return -1;
}

void mha_split_heads(const float *x, float *out, int B, int T, int H, int D)
{
    for (size_t b = 0; b < (size_t)B; b++)
        for (size_t t = 0; t < (size_t)T; t++)
            for (size_t h = 0; h < (size_t)H; h++)
                memcpy(out + ((b * H + h) * T + t) * D, x + ((b * T + t) * H + h) * D, (size_t)D * sizeof(float));
}

void mha_merge_heads(const float *x, float *out, int B, int T, int H, int D)
{
    for (size_t b = 0; b < (size_t)B; b++)
        for (size_t t = 0; t < (size_t)T; t++)
            for (size_t h = 0; h < (size_t)H; h++)
                memcpy(out + ((b * T + t) * H + h) * D, x + ((b * H + h) * T + t) * D, (size_t)D * sizeof(float));
}

void mha_project_heads(float *out, float *flat, const float *x, const float *w, int B, int T, int heads, int D, int C)
{
    matmul_nt(flat, x, w, (size_t)B * (size_t)T, (size_t)heads * (size_t)D, (size_t)C);
    mha_split_heads(flat, out, B, T, heads, D);
}

int mha_layer_forward(const MhaWeights *w, int kernel, const float *x, int B, int T, int causal, float *y)
{
    const size_t M = (size_t)B * (size_t)T, HD = (size_t)w->H * (size_t)w->D, C = (size_t)w->C;
    const size_t bytes = M * HD * sizeof(float);
    float *flat = mem_alloc(bytes, "projection (B, T, H*D)"); /* (B, T, H*D) */
    float *q = mem_alloc(bytes, "q (B, H, T, D)");            /* (B, H, T, D) */
    float *k = mem_alloc(bytes, "k (B, H, T, D)");            /* (B, H, T, D) */
    float *v = mem_alloc(bytes, "v (B, H, T, D)");            /* (B, H, T, D) */
    float *o = mem_alloc(bytes, "attention output (B, H, T, D)");
    int rc = -1;
    if (flat && q && k && v && o) {
        mha_project_heads(q, flat, x, w->wq, B, T, w->H, w->D, w->C);
        mha_project_heads(k, flat, x, w->wk, B, T, w->H, w->D, w->C);
        mha_project_heads(v, flat, x, w->wv, B, T, w->H, w->D, w->C);
        MhaShape s = {.B = B, .H = w->H, .T = T, .S = T, .D = w->D, .causal = causal, .scale = 1.0f / sqrtf((float)w->D)};
        rc = mha_attention_cpu(kernel, &s, q, k, v, o);
        if (rc == 0) {
            mha_merge_heads(o, flat, B, T, w->H, w->D);
            matmul_nt(y, flat, w->wo, M, C, HD);
        }
    }
    mem_free(flat), mem_free(q), mem_free(k), mem_free(v), mem_free(o);
    return rc;
}
