/*
 * gqa.c: chapter 02 on the CPU -- query heads that share key/value heads.
 *
 * What it teaches: sharing K/V between the G = H/Hkv query heads of a group changes one line of
 * attention (which kv head a query head reads) and divides the K/V projections and the KV cache
 * by G. The saving is real only if the code reads each K/V head once for the whole group.
 *
 *   v1 gqa_attention_ref: chapter 01's reference, per query head, reading kv head h / G. It
 *      reads each K/V head G times (once per query head of its group).
 *   v2 gqa_attention_grouped: the G heads of a group are adjacent in (B, H, T, D), so their
 *      queries are one (G*T, D) matrix; blocks of it go through chapter 01's block kernel against
 *      the group's single K/V head. A group of at most 32 rows (a decode step: T = 1) takes a
 *      path that reads every key row and value row once for all its rows: K/V bytes read per call
 *      = 2 * B * Hkv * S * D * 4, i.e. G times fewer than MHA. `02_mqa_gqa bench` measures it.
 *
 * The conversion MHA -> GQA (the GQA paper, Ainslie et al. 2023, section 2.1): mean-pool the K
 * and V projection heads of each group; Wq and Wo stay.
 */
#include "02_mqa_gqa/gqa.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/attn_cli.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/npy.h"
#include "common/paths.h"
#include "common/tensor.h"

int gqa_check_heads(int H, int Hkv)
{
    if (H < 1 || Hkv < 1)
        return error_set("head counts must be at least 1 (H = %d, Hkv = %d)", H, Hkv);
    if (Hkv > H)
        return error_set("Hkv = %d key/value heads is more than H = %d query heads", Hkv, H);
    if (H % Hkv != 0)
        return error_set("H = %d query heads is not a multiple of Hkv = %d key/value heads "
                         "(each kv head must serve a whole group of query heads)", H, Hkv);
    return 0;
}

size_t gqa_scores_bytes(const GqaShape *s)
{
    return (size_t)s->B * (size_t)s->H * (size_t)s->T * (size_t)s->S * sizeof(float);
}

size_t gqa_kv_bytes(const GqaShape *s)
{
    return 2 * (size_t)s->B * (size_t)s->Hkv * (size_t)s->S * (size_t)s->D * sizeof(float);
}

void gqa_repeat_kv(const float *k, float *out, int B, int H, int Hkv, int S, int D)
{
    const size_t G = (size_t)(H / Hkv), head = (size_t)S * (size_t)D;
    for (size_t b = 0; b < (size_t)B; b++)
        for (size_t h = 0; h < (size_t)H; h++)
            memcpy(out + (b * H + h) * head, k + (b * Hkv + h / G) * head, head * sizeof(float));
}

/* ==== v1: the reference ======================================================================= */

int gqa_attention_ref(const GqaShape *s, const float *q, const float *k, const float *v, float *out)
{
    if (gqa_check_heads(s->H, s->Hkv) != 0)
        return -1;
    const size_t T = (size_t)s->T, S = (size_t)s->S, D = (size_t)s->D, G = (size_t)(s->H / s->Hkv);
    float *scores = mem_alloc(gqa_scores_bytes(s), "the score matrix (B, H, T, S)"); /* (B, H, T, S) */
    if (!scores)
        return -1;
    for (size_t b = 0; b < (size_t)s->B; b++)
        for (size_t h = 0; h < (size_t)s->H; h++) {
            const size_t bh = b * s->H + h;
            const size_t bkv = b * s->Hkv + h / G; /* the only change from chapter 01 */
            mha_head_attention_ref(q + bh * T * D, k + bkv * S * D, v + bkv * S * D, scores + bh * T * S,
                                   out + bh * T * D, s->T, s->S, s->D, s->causal, s->scale);
        }
    mem_free(scores);
    return 0;
}

/* ==== v2: grouped ============================================================================= */

/* The rows of one group, R <= MHA_BR of them (row i is query position i % T), against its K/V
 * head: q (R, D), k and v (S, D) -> out (R, D), scores in sc (R, S) with leading dimension S.
 * Both products read K and V once, row by row, for all R rows (common/matmul's panels and
 * few-row paths), with no transposed copy of K: a decode step's K/V traffic is one pass. */
static void group_attention_decode(const float *q, size_t R, const float *k, const float *v, float *sc, float *out,
                                   int T, int S, int D, int causal, float scale)
{
    size_t n[MHA_BR], width = 0;
    for (size_t r = 0; r < R; r++) {
        n[r] = (size_t)attn_visible_keys((int)(r % (size_t)T), T, S, causal);
        width = n[r] > width ? n[r] : width;
    }
    if (width == 0) {
        memset(out, 0, R * (size_t)D * sizeof(float));
        return;
    }
    matmul_nt_ld(sc, (size_t)S, q, (size_t)D, k, (size_t)D, R, width, (size_t)D); /* scores = q Kᵀ */
    for (size_t r = 0; r < R; r++)
        mha_softmax_row(sc + r * (size_t)S, n[r], width, scale);
    matmul_nn_ld(out, (size_t)D, sc, (size_t)S, v, (size_t)D, R, (size_t)D, width); /* out = P V */
}

int gqa_attention_grouped(const GqaShape *s, const float *q, const float *k, const float *v, float *out)
{
    if (gqa_check_heads(s->H, s->Hkv) != 0)
        return -1;
    const size_t T = (size_t)s->T, S = (size_t)s->S, D = (size_t)s->D;
    const size_t G = (size_t)(s->H / s->Hkv), BHkv = (size_t)s->B * (size_t)s->Hkv;
    const size_t R = G * T; /* stacked query rows per group */
    const int decode = R <= MHA_BR;
    float *scores = mem_alloc(gqa_scores_bytes(s), "the score matrix (B, H, T, S)"); /* (B, H, T, S) */
    if (!scores)
        return -1;
    float *kt = NULL; /* (B, Hkv, D, S): each K/V head transposed once, for the block path */
    if (!decode && !(kt = mha_keys_transposed(k, BHkv, S, D, "Kᵀ (B, Hkv, D, S)"))) {
        mem_free(scores);
        return -1;
    }
    /* group g = b * Hkv + kvh owns query heads kvh*G .. kvh*G + G-1 of batch b: rows g*R .. g*R + R-1
     * of the (B*H*T, D) queries, of the scores and of the output */
    const size_t n_blocks = (R + MHA_BR - 1) / MHA_BR;
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (size_t g = 0; g < BHkv; g++)
        for (size_t blk = 0; blk < n_blocks; blk++) {
            const size_t i0 = blk * MHA_BR, rows = R - i0 < MHA_BR ? R - i0 : MHA_BR;
            const size_t row = g * R + i0;
            if (decode)
                group_attention_decode(q + row * D, rows, k + g * S * D, v + g * S * D, scores + row * S,
                                       out + row * D, s->T, s->S, s->D, s->causal, s->scale);
            else
                mha_block_attention(q + row * D, i0, rows, kt + g * D * S, v + g * S * D, scores + row * S,
                                    out + row * D, s->T, s->S, s->D, s->causal, s->scale);
        }
    mem_free(kt);
    mem_free(scores);
    return 0;
}

/* ==== dispatcher ================================================================================ */

int gqa_attention_cpu(int kernel, const GqaShape *s, const float *q, const float *k, const float *v, float *out)
{
    switch (kernel) {
    case 1:
        return gqa_attention_ref(s, q, k, v, out);
    case 0:
    case 2:
        return gqa_attention_grouped(s, q, k, v, out);
    default:
        return error_set("--kernel %d: chapter 02 has CPU kernels 1..%d", kernel, GQA_CPU_KERNELS);
    }
}

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CPU_NAMES[GQA_CPU_KERNELS + 1] = {"grouped", "ref", "grouped"};

const char *gqa_cpu_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= GQA_CPU_KERNELS ? CPU_NAMES[kernel] : NULL;
}

/* ==== the layer and the conversion =============================================================== */

size_t gqa_weights_count(int C, int H, int Hkv, int D)
{
    return (size_t)C * (size_t)D * (2 * (size_t)H + 2 * (size_t)Hkv);
}

int gqa_weights_from_mha(const MhaWeights *mha, int Hkv, GqaWeights *out)
{
    if (gqa_check_heads(mha->H, Hkv) != 0)
        return -1;
    const size_t C = (size_t)mha->C, D = (size_t)mha->D, HD = (size_t)mha->H * D, G = (size_t)(mha->H / Hkv);
    const size_t head = D * C; /* one head's rows of wk: (D, C) */
    *out = (GqaWeights){
        .C = mha->C,
        .H = mha->H,
        .Hkv = Hkv,
        .D = mha->D,
        .wq = mem_alloc_or_die(HD * C * sizeof(float), "wq (H*D, C)"),
        .wk = mem_alloc_or_die((size_t)Hkv * head * sizeof(float), "wk (Hkv*D, C)"),
        .wv = mem_alloc_or_die((size_t)Hkv * head * sizeof(float), "wv (Hkv*D, C)"),
        .wo = mem_alloc_or_die(HD * C * sizeof(float), "wo (C, H*D)"),
    };
    memcpy(out->wq, mha->wq, HD * C * sizeof(float));
    memcpy(out->wo, mha->wo, HD * C * sizeof(float));
    /* kv head j = mean of MHA heads j*G .. j*G + G-1 */
    for (size_t j = 0; j < (size_t)Hkv; j++)
        for (size_t i = 0; i < head; i++) {
            float sk = 0.0f, sv = 0.0f;
            for (size_t g = 0; g < G; g++) {
                sk += mha->wk[(j * G + g) * head + i];
                sv += mha->wv[(j * G + g) * head + i];
            }
            out->wk[j * head + i] = sk / (float)G;
            out->wv[j * head + i] = sv / (float)G;
        }
    return 0;
}

void gqa_weights_free(GqaWeights *w)
{
    mem_free(w->wq), mem_free(w->wk), mem_free(w->wv), mem_free(w->wo);
    w->wq = w->wk = w->wv = w->wo = NULL;
}

int gqa_weights_save(const GqaWeights *w, const char *dir)
{
    char path[4096];
    const size_t C = (size_t)w->C, HD = (size_t)w->H * (size_t)w->D, KD = (size_t)w->Hkv * (size_t)w->D;
    const char *names[4] = {"wq.npy", "wk.npy", "wv.npy", "wo.npy"};
    const float *m[4] = {w->wq, w->wk, w->wv, w->wo};
    const size_t rows[4] = {HD, KD, KD, C}, cols[4] = {C, C, C, HD};
    if (paths_make_dirs(dir) != 0)
        return -1;
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (npy_write(path, NPY_F32, 2, (size_t[]){rows[i], cols[i]}, m[i]) != 0)
            return -1;
    }
    return 0;
}

int gqa_layer_forward(const GqaWeights *w, int kernel, const float *x, int B, int T, int causal, float *y)
{
    const size_t M = (size_t)B * (size_t)T, C = (size_t)w->C;
    const size_t HD = (size_t)w->H * (size_t)w->D, KD = (size_t)w->Hkv * (size_t)w->D;
    float *flat = mem_alloc(M * HD * sizeof(float), "projection (B, T, H*D)"); /* (B, T, H*D) */
    float *q = mem_alloc(M * HD * sizeof(float), "q (B, H, T, D)");             /* (B, H, T, D) */
    float *k = mem_alloc(M * KD * sizeof(float), "k (B, Hkv, T, D)");           /* (B, Hkv, T, D) */
    float *v = mem_alloc(M * KD * sizeof(float), "v (B, Hkv, T, D)");           /* (B, Hkv, T, D) */
    float *o = mem_alloc(M * HD * sizeof(float), "attention output (B, H, T, D)"); /* (B, H, T, D) */
    int rc = -1;
    if (flat && q && k && v && o) {
        mha_project_heads(q, flat, x, w->wq, B, T, w->H, w->D, w->C);
        mha_project_heads(k, flat, x, w->wk, B, T, w->Hkv, w->D, w->C);
        mha_project_heads(v, flat, x, w->wv, B, T, w->Hkv, w->D, w->C);
        GqaShape s = {.B = B, .H = w->H, .Hkv = w->Hkv, .T = T, .S = T, .D = w->D, .causal = causal,
                      .scale = 1.0f / sqrtf((float)w->D)};
        rc = gqa_attention_cpu(kernel, &s, q, k, v, o);
        if (rc == 0) {
            mha_merge_heads(o, flat, B, T, w->H, w->D);
            matmul_nt(y, flat, w->wo, M, C, HD);
        }
    }
    mem_free(flat), mem_free(q), mem_free(k), mem_free(v), mem_free(o);
    return rc;
}
