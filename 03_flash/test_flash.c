/*
 * test_flash.c: chapter 03's Check suite -- flash attention against chapter 02.
 *
 * Every CPU version, with its default tiles and with odd ones, must give chapter 02's output on
 * the grid of design.md §5 (all H:Hkv ratios, odd lengths, T = 1, causal T < S, T = S, T > S,
 * D in {32, 64, 80, 128}). Then what is new in this chapter: the log-sum-exp against a direct
 * float64 computation, merging partial results with it, rows that see no key, extreme logits,
 * NaN in K/V rows a query cannot see, memory that stays linear in T, bad shapes, and the
 * program. CUDA versions run when a GPU is present: fp32 ones within fp32 tolerance, the
 * tensor-core one by FlashAttention's rule (error at most 2x that of naive attention run in the
 * same fp16 precision) and NMSE <= 5e-4.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "02_mqa_gqa/gqa.h"
#include "03_flash/flash.h"
#include "common/attn_cli.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/verify.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

#define ATOL 1e-5 /* design.md §5: fp32 against an fp32 reference */
#define RTOL 1e-4

/* ==== helpers ==================================================================================== */

typedef struct {
    GqaShape s;
    float *q, *k, *v, *out, *lse; /* q, out (B, H, T, D); k, v (B, Hkv, S, D); lse (B, H, T) */
} Problem;

static size_t n_q(const GqaShape *s) { return (size_t)s->B * s->H * s->T * s->D; }
static size_t n_kv(const GqaShape *s) { return (size_t)s->B * s->Hkv * s->S * s->D; }
static size_t n_rows(const GqaShape *s) { return (size_t)s->B * s->H * s->T; }

static Problem problem_new(int B, int H, int Hkv, int T, int S, int D, int causal, uint64_t seed)
{
    Problem p = {{B, H, Hkv, T, S, D, causal, 1.0f / sqrtf((float)D)}, NULL, NULL, NULL, NULL, NULL};
    p.q = malloc(n_q(&p.s) * 4), p.out = malloc(n_q(&p.s) * 4), p.lse = malloc(n_rows(&p.s) * 4);
    p.k = malloc(n_kv(&p.s) * 4), p.v = malloc(n_kv(&p.s) * 4);
    fill_normal(p.q, n_q(&p.s), seed), fill_normal(p.k, n_kv(&p.s), seed + 1), fill_normal(p.v, n_kv(&p.s), seed + 2);
    return p;
}

static void problem_free(Problem *p) { free(p->q), free(p->k), free(p->v), free(p->out), free(p->lse); }

/* A CPU version with given tiles; tiles {0, 0} = its defaults. */
static int run(int kernel, FlashTiles tiles, Problem *p)
{
    if (tiles.Br == 0)
        return flash_attention_cpu(kernel, &p->s, p->q, p->k, p->v, p->out, p->lse);
    return kernel == 1 ? flash_attention_tiled(&p->s, tiles, p->q, p->k, p->v, p->out, p->lse)
                       : flash_attention_fast(&p->s, tiles, p->q, p->k, p->v, p->out, p->lse);
}

/* log sum_j exp(scale q.k_j) over the keys row (b, h, t) sees, in float64; -inf if none. */
static double direct_lse(const Problem *p, size_t b, size_t h, int t)
{
    const GqaShape *s = &p->s;
    const size_t bh = b * s->H + h, bkv = b * s->Hkv + h / (size_t)(s->H / s->Hkv);
    const int n = attn_visible_keys(t, s->T, s->S, s->causal);
    double m = -INFINITY, sum = 0.0;
    double *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int j = 0; j < n; j++) {
        double dot = 0.0;
        for (int d = 0; d < s->D; d++)
            dot += (double)p->q[(bh * s->T + t) * s->D + d] * p->k[(bkv * s->S + j) * s->D + d];
        x[j] = dot * s->scale;
        m = fmax(m, x[j]);
    }
    for (int j = 0; j < n; j++)
        sum += exp(x[j] - m);
    free(x);
    return n > 0 ? m + log(sum) : -INFINITY;
}

/* ==== against chapter 02 ========================================================================= */

START_TEST(test_grid_against_chapter02)
{
    int n_case = 0, failed = 0;
    for (int i = 0; i < VERIFY_N_LENGTHS; i++)
        for (int j = 0; j < VERIFY_N_LENGTHS; j++)
            for (int causal = 0; causal <= 1; causal++, n_case++) {
                int T = VERIFY_LENGTHS[i], S = VERIFY_LENGTHS[j];
                int D = VERIFY_HEAD_DIMS[n_case % VERIFY_N_HEAD_DIMS], B = 1 + n_case % 2;
                int H = VERIFY_HEAD_RATIOS[n_case % VERIFY_N_HEAD_RATIOS][0];
                int Hkv = VERIFY_HEAD_RATIOS[n_case % VERIFY_N_HEAD_RATIOS][1];
                if ((double)T * S * H * B > 3e5)
                    B = 1, H = 2, Hkv = 1;
                Problem p = problem_new(B, H, Hkv, T, S, D, causal, (uint64_t)n_case + 700);
                float *ref = malloc(n_q(&p.s) * 4);
                ck_assert_int_eq(gqa_attention_grouped(&p.s, p.q, p.k, p.v, ref), 0); /* chapter 02, fast */
                for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++) {
                    char label[160];
                    snprintf(label, sizeof label, "flash kernel %d B=%d H=%d Hkv=%d T=%d S=%d D=%d causal=%d", kern, B,
                             H, Hkv, T, S, D, causal);
                    memset(p.out, 0xff, n_q(&p.s) * 4);
                    ck_assert_int_eq(run(kern, (FlashTiles){0, 0}, &p), 0);
                    failed += compare_f32(label, p.out, ref, n_q(&p.s), ATOL, RTOL, 3).n_bad > 0;
                }
                free(ref);
                problem_free(&p);
            }
    ck_assert_msg(failed == 0, "%d grid cases failed (listed above)", failed);
}
END_TEST

START_TEST(test_any_tile_size)
{
    /* tails everywhere: tiles that do not divide T or S, one-row and one-key tiles */
    const int shapes[][7] = {{1, 6, 2, 37, 53, 20, 1}, {2, 4, 4, 64, 17, 33, 1}, {1, 8, 1, 5, 300, 64, 0}, {1, 3, 3, 70, 70, 7, 1}};
    const FlashTiles tiled[] = {{1, 1}, {7, 5}, {64, 64}, {200, 300}};
    const FlashTiles fast[] = {{1, 16}, {6, 16}, {13, 32}, {100, 48}, {24, 512}, {300, 1024}};
    for (int i = 0; i < 4; i++) {
        const int *x = shapes[i];
        Problem p = problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 800 + (uint64_t)i);
        float *ref = malloc(n_q(&p.s) * 4);
        ck_assert_int_eq(gqa_attention_ref(&p.s, p.q, p.k, p.v, ref), 0);
        for (int kern = 1; kern <= 2; kern++)
            for (int t = 0; t < (kern == 1 ? 4 : 6); t++) {
                FlashTiles tl = kern == 1 ? tiled[t] : fast[t];
                memset(p.out, 0xff, n_q(&p.s) * 4);
                ck_assert_int_eq(run(kern, tl, &p), 0);
                CompareResult r = compare_f32("tiles", p.out, ref, n_q(&p.s), ATOL, RTOL, 3);
                ck_assert_msg(r.n_bad == 0, "shape %d kernel %d tiles %dx%d: %zu off", i, kern, tl.Br, tl.Bc, r.n_bad);
            }
        free(ref);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_versions_match_float64)
{
    const int shapes[][7] = {{2, 6, 2, 17, 29, 20, 1}, {1, 9, 3, 31, 13, 7, 1}, {1, 4, 1, 1, 77, 256, 1}, {1, 2, 2, 65, 63, 1, 0}};
    for (int i = 0; i < 4; i++) {
        const int *x = shapes[i];
        Problem p = problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 900 + (uint64_t)i);
        double *expected = malloc(n_q(&p.s) * sizeof(double));
        attention_f64(x[0], x[1], x[2], x[3], x[4], x[5], x[6], p.s.scale, p.q, p.k, p.v, expected);
        for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++) {
            ck_assert_int_eq(run(kern, (FlashTiles){0, 0}, &p), 0);
            CompareResult r = compare_f32_f64("vs float64", p.out, expected, n_q(&p.s), ATOL, RTOL, 5);
            ck_assert_msg(r.n_bad == 0, "shape %d kernel %d: %zu elements off", i, kern, r.n_bad);
        }
        free(expected);
        problem_free(&p);
    }
}
END_TEST

/* ==== the log-sum-exp and merging ================================================================ */

START_TEST(test_lse_against_direct_computation)
{
    const int shapes[][7] = {{2, 4, 2, 33, 50, 16, 1}, {1, 3, 1, 20, 8, 32, 1}, {1, 2, 2, 9, 130, 64, 0}};
    for (int i = 0; i < 3; i++) {
        const int *x = shapes[i];
        Problem p = problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 1000 + (uint64_t)i);
        for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++) {
            ck_assert_int_eq(run(kern, (FlashTiles){0, 0}, &p), 0);
            for (size_t b = 0; b < (size_t)x[0]; b++)
                for (size_t h = 0; h < (size_t)x[1]; h++)
                    for (int t = 0; t < x[3]; t++) {
                        double want = direct_lse(&p, b, h, t);
                        float got = p.lse[(b * x[1] + h) * x[3] + t];
                        if (isinf(want))
                            ck_assert_msg(isinf(got) && got < 0, "kernel %d row %d: lse %g, expected -inf", kern, t, got);
                        else
                            ck_assert_msg(fabs(got - want) <= 1e-5 + 1e-5 * fabs(want), "kernel %d shape %d row %d: lse %.7g vs %.7g",
                                          kern, i, t, got, want);
                    }
        }
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_merge_of_two_key_ranges)
{
    /* attention over keys [0, S1) and [S1, S) separately, merged with their lse, is attention over all */
    const int B = 1, H = 4, Hkv = 2, T = 21, S = 100, S1 = 37, D = 24;
    Problem full = problem_new(B, H, Hkv, T, S, D, 0, 1100);
    Problem a = problem_new(B, H, Hkv, T, S1, D, 0, 1), c = problem_new(B, H, Hkv, T, S - S1, D, 0, 2);
    memcpy(a.q, full.q, n_q(&full.s) * 4), memcpy(c.q, full.q, n_q(&full.s) * 4);
    for (size_t g = 0; g < (size_t)B * Hkv; g++) { /* split every kv head's rows */
        memcpy(a.k + g * S1 * D, full.k + g * S * D, (size_t)S1 * D * 4);
        memcpy(a.v + g * S1 * D, full.v + g * S * D, (size_t)S1 * D * 4);
        memcpy(c.k + g * (S - S1) * D, full.k + (g * S + S1) * D, (size_t)(S - S1) * D * 4);
        memcpy(c.v + g * (S - S1) * D, full.v + (g * S + S1) * D, (size_t)(S - S1) * D * 4);
    }
    ck_assert_int_eq(run(2, (FlashTiles){0, 0}, &full), 0);
    ck_assert_int_eq(run(2, (FlashTiles){0, 0}, &a), 0);
    ck_assert_int_eq(run(1, (FlashTiles){0, 0}, &c), 0);
    flash_merge(a.out, a.lse, c.out, c.lse, n_rows(&full.s), D);
    ck_assert(compare_f32("merged out", a.out, full.out, n_q(&full.s), ATOL, RTOL, 5).n_bad == 0);
    ck_assert(compare_f32("merged lse", a.lse, full.lse, n_rows(&full.s), ATOL, RTOL, 5).n_bad == 0);
    /* a part with no keys (lse = -inf) changes nothing, from either side */
    float *o = malloc(n_q(&full.s) * 4), *l = malloc(n_rows(&full.s) * 4), *empty_l = malloc(n_rows(&full.s) * 4);
    for (size_t r = 0; r < n_rows(&full.s); r++)
        empty_l[r] = -INFINITY;
    memcpy(o, full.out, n_q(&full.s) * 4), memcpy(l, full.lse, n_rows(&full.s) * 4);
    flash_merge(o, l, c.q /* anything */, empty_l, n_rows(&full.s), D);
    ck_assert_int_eq(memcmp(o, full.out, n_q(&full.s) * 4), 0);
    for (size_t r = 0; r < n_rows(&full.s); r++)
        l[r] = -INFINITY;
    flash_merge(o, l, full.out, full.lse, n_rows(&full.s), D);
    ck_assert_int_eq(memcmp(o, full.out, n_q(&full.s) * 4), 0);
    ck_assert_int_eq(memcmp(l, full.lse, n_rows(&full.s) * 4), 0);
    free(o), free(l), free(empty_l);
    problem_free(&full), problem_free(&a), problem_free(&c);
}
END_TEST

/* ==== edge cases ================================================================================== */

START_TEST(test_rows_without_keys_are_zero)
{
    /* causal with T > S: the first T - S queries see nothing: zeros (never NaN) and lse = -inf */
    Problem p = problem_new(1, 4, 2, 40, 12, 16, 1, 1200);
    for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++) {
        memset(p.out, 0xff, n_q(&p.s) * 4);
        ck_assert_int_eq(run(kern, (FlashTiles){0, 0}, &p), 0);
        for (size_t h = 0; h < 4; h++)
            for (int t = 0; t < 40 - 12; t++) {
                for (int d = 0; d < 16; d++)
                    ck_assert_msg(p.out[(h * 40 + t) * 16 + d] == 0.0f, "kernel %d: row %d not zero", kern, t);
                ck_assert(isinf(p.lse[h * 40 + t]) && p.lse[h * 40 + t] < 0);
            }
    }
    problem_free(&p);
}
END_TEST

START_TEST(test_extreme_logits)
{
    /* integer q, k: every logit an exact integer of size up to ~1e4, or all about -1e4 */
    for (int all_negative = 0; all_negative <= 1; all_negative++) {
        Problem p = problem_new(1, 4, 2, 33, 65, 64, 1, 1300);
        p.s.scale = 1.0f;
        for (size_t i = 0; i < n_q(&p.s); i++)
            p.q[i] = all_negative ? 100.0f : (float)((int)(i * 7 % 21) - 10) * 10.0f;
        for (size_t i = 0; i < n_kv(&p.s); i++)
            p.k[i] = all_negative ? -(float)(1 + i % 3) : (float)((int)(i * 5 % 21) - 10) * 10.0f;
        float *ref = malloc(n_q(&p.s) * 4);
        ck_assert_int_eq(gqa_attention_ref(&p.s, p.q, p.k, p.v, ref), 0);
        for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++) {
            ck_assert_int_eq(run(kern, (FlashTiles){0, 0}, &p), 0);
            for (size_t i = 0; i < n_q(&p.s); i++)
                ck_assert(isfinite(p.out[i]));
            for (size_t i = 0; i < n_rows(&p.s); i++)
                ck_assert(isfinite(p.lse[i]));
            CompareResult r = compare_f32("extreme logits", p.out, ref, n_q(&p.s), ATOL, RTOL, 3);
            ck_assert_msg(r.n_bad == 0, "kernel %d all_negative %d: %zu off", kern, all_negative, r.n_bad);
        }
        free(ref);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_nan_in_hidden_rows_changes_nothing)
{
    /* causal T = S = 70: query t sees keys 0..t. NaN in K and V rows 40.. must leave the outputs of
     * queries 0..39 bit for bit as they were, whatever the tiles */
    const int T = 70, cut = 40, D = 16;
    const FlashTiles tiles[2][3] = {{{0, 0}, {16, 16}, {7, 9}}, {{0, 0}, {6, 16}, {48, 64}}};
    for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++)
        for (int ti = 0; ti < 3; ti++) {
            Problem p = problem_new(1, 4, 2, T, T, D, 1, 1400);
            ck_assert_int_eq(run(kern, tiles[kern - 1][ti], &p), 0);
            float *clean = malloc(n_q(&p.s) * 4);
            memcpy(clean, p.out, n_q(&p.s) * 4);
            for (size_t g = 0; g < 2; g++)
                for (int j = cut; j < T; j++)
                    for (int d = 0; d < D; d++)
                        p.k[(g * T + j) * D + d] = NAN, p.v[(g * T + j) * D + d] = NAN;
            ck_assert_int_eq(run(kern, tiles[kern - 1][ti], &p), 0);
            for (size_t h = 0; h < 4; h++)
                for (int t = 0; t < cut; t++)
                    ck_assert_msg(memcmp(p.out + (h * T + t) * D, clean + (h * T + t) * D, D * 4) == 0,
                                  "kernel %d tiles %d: head %zu row %d changed", kern, ti, h, t);
            free(clean);
            problem_free(&p);
        }
}
END_TEST

START_TEST(test_memory_stays_linear)
{
    /* the fast version's extra memory: K and V panels plus tiles, linear in T; the score matrix of
     * chapter 02 is quadratic */
    size_t alloc[2];
    for (int i = 0; i < 2; i++) {
        const int T = 1024 << i;
        Problem p = problem_new(1, 8, 8, T, T, 64, 1, 1500);
        size_t before = mem_current_bytes();
        mem_reset_peak();
        ck_assert_int_eq(run(2, (FlashTiles){0, 0}, &p), 0);
        alloc[i] = mem_peak_bytes() - before;
        ck_assert_uint_eq(mem_current_bytes(), before);
        /* K and V packed once (their own size) plus at most 1 MiB of tiles for the threads */
        ck_assert_uint_lt(alloc[i], 2 * n_kv(&p.s) * sizeof(float) + ((size_t)1 << 20));
        if (i == 1)
            ck_assert_uint_lt(alloc[i], gqa_scores_bytes(&p.s) / 10);
        problem_free(&p);
    }
    ck_assert_msg(alloc[1] < 2.2 * alloc[0], "T x2 gave memory x%.2f", (double)alloc[1] / alloc[0]);
}
END_TEST

START_TEST(test_bad_shapes_and_tiles)
{
    Problem p = problem_new(1, 2, 1, 4, 4, 257, 0, 1600);
    ck_assert_int_eq(run(1, (FlashTiles){0, 0}, &p), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "D = 257 is not supported"));
    ck_assert_int_eq(run(2, (FlashTiles){0, 0}, &p), -1);
    problem_free(&p);
    Problem g = problem_new(1, 8, 3, 4, 4, 8, 0, 1601);
    ck_assert_int_eq(run(2, (FlashTiles){0, 0}, &g), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "not a multiple"));
    problem_free(&g);
    Problem t = problem_new(1, 2, 2, 4, 4, 8, 0, 1602);
    ck_assert_int_eq(run(2, (FlashTiles){8, 20}, &t), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "multiple of 16"));
    ck_assert_int_eq(run(1, (FlashTiles){5, 0}, &t), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "out of range"));
    ck_assert_int_eq(flash_attention_cpu(3, &t.s, t.q, t.k, t.v, t.out, NULL), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "kernels 1..2"));
    problem_free(&t);
}
END_TEST

/* ==== the program ================================================================================= */

static char tmp[4096];
static void tmp_setup(void) { temp_dir_create(tmp, sizeof tmp); }
static void tmp_teardown(void) { temp_dir_remove(tmp); }

START_TEST(test_attn_command_matches_float64)
{
    const int shapes[][7] = {{2, 6, 2, 17, 29, 20, 1}, {1, 9, 3, 31, 13, 7, 1}, {1, 4, 1, 1, 77, 33, 1}, {1, 8, 4, 65, 63, 80, 0}};
    char prog[4200], qp[4200], kp[4200], vp[4200], op[4200];
    program_path(prog, sizeof prog, "03_flash");
    snprintf(qp, sizeof qp, "%s/q.npy", tmp), snprintf(kp, sizeof kp, "%s/k.npy", tmp);
    snprintf(vp, sizeof vp, "%s/v.npy", tmp), snprintf(op, sizeof op, "%s/o.npy", tmp);
    for (int i = 0; i < 4; i++) {
        const int *x = shapes[i];
        for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++) {
            Problem p = problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 1700 + (uint64_t)i);
            ck_assert_int_eq(npy_write(qp, NPY_F32, 4, (size_t[]){x[0], x[1], x[3], x[5]}, p.q), 0);
            ck_assert_int_eq(npy_write(kp, NPY_F32, 4, (size_t[]){x[0], x[2], x[4], x[5]}, p.k), 0);
            ck_assert_int_eq(npy_write(vp, NPY_F32, 4, (size_t[]){x[0], x[2], x[4], x[5]}, p.v), 0);
            char kernel[8];
            snprintf(kernel, sizeof kernel, "%d", kern);
            const char *argv[] = {prog, "attn", "--q", qp, "--k", kp, "--v", vp, "--out", op, "--device", "cpu",
                                  "--kernel", kernel, x[6] ? "--causal" : NULL, NULL};
            ProcResult r;
            ck_assert_int_eq(run_program(&r, argv), 0);
            ck_assert_msg(r.status == 0, "attn failed (%d): %s", r.status, r.err);
            Tensor o;
            ck_assert_msg(npy_read_tensor(op, 4, &o) == 0, "%s", error_message());
            double *expected = malloc(o.numel * sizeof(double));
            attention_f64(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 1.0 / sqrt((double)x[5]), p.q, p.k, p.v, expected);
            CompareResult c = compare_f32_f64("attn command", o.data, expected, o.numel, ATOL, RTOL, 5);
            ck_assert_msg(c.n_bad == 0, "shape %d kernel %d: %zu elements off", i, kern, c.n_bad);
            free(expected);
            tensor_free(&o);
            problem_free(&p);
        }
    }
    /* D above the chapter's limit is a one-line error */
    float big[300];
    fill_normal(big, 300, 1);
    ck_assert_int_eq(npy_write(qp, NPY_F32, 4, (size_t[]){1, 1, 1, 300}, big), 0);
    const char *argv[] = {prog, "attn", "--q", qp, "--k", qp, "--v", qp, "--out", op, "--device", "cpu", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_int_eq(r.status, 1);
    ck_assert_int_eq(count_lines(r.err), 1);
    ck_assert_ptr_nonnull(strstr(r.err, "D = 300 is not supported"));
}
END_TEST

START_TEST(test_help_and_verify)
{
    char prog[4200], line[256];
    program_path(prog, sizeof prog, "03_flash");
    const char *subs[] = {"--help", "attn", "verify", "bench"};
    for (int i = 0; i < 4; i++) {
        const char *argv[] = {prog, subs[i], i ? "--help" : NULL, NULL};
        ProcResult r;
        ck_assert_int_eq(run_program(&r, argv), 0);
        ck_assert_msg(r.status == 0 && strstr(r.out, "usage: 03_flash"), "%s --help: %s", subs[i], r.out);
    }
    const char *argv[] = {prog, "verify", "--quick", "--device", "cpu", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_msg(r.status == 0, "verify failed: %s", r.out);
    int passed = -1, failed = -1;
    ck_assert_int_eq(sscanf(last_line(r.out, line, sizeof line), "%d passed, %d failed", &passed, &failed), 2);
    ck_assert_int_gt(passed, 200);
    ck_assert_int_eq(failed, 0);
}
END_TEST

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
static float to_f16(float x) { return (float)(_Float16)x; }

/* Naive attention as it runs in fp16 (PyTorch's math path): inputs rounded to fp16, scores
 * rounded to fp16, softmax in fp32 and rounded, P V accumulated in fp32 and rounded. */
static void naive_f16(const Problem *p, float *out)
{
    const GqaShape *s = &p->s;
    const int G = s->H / s->Hkv;
    float *w = malloc((size_t)s->S * sizeof(float));
    for (size_t bh = 0; bh < (size_t)s->B * s->H; bh++) {
        const size_t bkv = (bh / s->H) * s->Hkv + (bh % s->H) / G;
        for (int t = 0; t < s->T; t++) {
            const int n = attn_visible_keys(t, s->T, s->S, s->causal);
            float m = -INFINITY, sum = 0.0f;
            for (int j = 0; j < n; j++) {
                float dot = 0.0f;
                for (int d = 0; d < s->D; d++)
                    dot += to_f16(p->q[(bh * s->T + t) * s->D + d]) * to_f16(p->k[(bkv * s->S + j) * s->D + d]);
                w[j] = to_f16(dot * s->scale);
                m = fmaxf(m, w[j]);
            }
            for (int j = 0; j < n; j++)
                sum += w[j] = expf(w[j] - m);
            for (int d = 0; d < s->D; d++) {
                float acc = 0.0f;
                for (int j = 0; j < n; j++)
                    acc += to_f16(w[j] / sum) * to_f16(p->v[(bkv * s->S + j) * s->D + d]);
                out[(bh * s->T + t) * s->D + d] = n ? to_f16(acc) : 0.0f;
            }
        }
    }
    free(w);
}

static const int CUDA_SHAPES[][7] = {{1, 2, 2, 1, 1, 32, 0},    {2, 6, 2, 17, 29, 64, 1},  {1, 4, 4, 65, 63, 80, 1},
                                      {1, 8, 2, 129, 128, 128, 0}, {1, 2, 1, 6, 3, 32, 1},  {1, 8, 8, 257, 257, 64, 1},
                                      {1, 4, 1, 100, 300, 256, 1}, {1, 3, 3, 40, 40, 20, 1}};

START_TEST(test_cuda_kernels)
{
    for (int i = 0; i < (int)(sizeof CUDA_SHAPES / sizeof CUDA_SHAPES[0]); i++) {
        const int *x = CUDA_SHAPES[i];
        Problem p = problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 1800 + (uint64_t)i);
        size_t qb = n_q(&p.s) * 4, kb = n_kv(&p.s) * 4, lb = n_rows(&p.s) * 4;
        float *ref = malloc(qb), *lse_ref = malloc(lb), *lo = malloc(qb), *gpu_lse = malloc(lb);
        ck_assert_int_eq(flash_attention_fast(&p.s, flash_default_tiles(2), p.q, p.k, p.v, ref, lse_ref), 0);
        naive_f16(&p, lo);
        float *d_q = cuda_alloc(qb), *d_k = cuda_alloc(kb), *d_v = cuda_alloc(kb), *d_o = cuda_alloc(qb);
        float *d_l = cuda_alloc(lb);
        cuda_upload(d_q, p.q, qb), cuda_upload(d_k, p.k, kb), cuda_upload(d_v, p.v, kb);
        for (int kern = 1; kern <= FLASH_CUDA_KERNELS; kern++) {
            cuda_memset_nan(d_o, qb);
            ck_assert_msg(flash_attention_cuda(kern, &p.s, d_q, d_k, d_v, d_o, d_l) == 0, "%s", error_message());
            cuda_download(p.out, d_o, qb), cuda_download(gpu_lse, d_l, lb);
            if (kern < 3) { /* fp32: fp32 tolerance, lse too */
                ck_assert_msg(compare_f32("cuda fp32", p.out, ref, n_q(&p.s), ATOL, RTOL, 5).n_bad == 0, "kernel %d shape %d", kern, i);
                ck_assert_msg(compare_f32("cuda lse", gpu_lse, lse_ref, n_rows(&p.s), ATOL, RTOL, 5).n_bad == 0, "kernel %d shape %d", kern, i);
            } else { /* fp16: FlashAttention's rule, and NMSE */
                double err = max_abs_diff(p.out, ref, n_q(&p.s)), err_naive = max_abs_diff(lo, ref, n_q(&p.s));
                double nmse = rel_l2_error(p.out, ref, n_q(&p.s));
                nmse *= nmse;
                ck_assert_msg(err <= 2 * err_naive, "tc shape %d: error %g above 2x naive fp16's %g", i, err, err_naive);
                ck_assert_msg(nmse <= 5e-4, "tc shape %d: NMSE %g", i, nmse);
            }
        }
        cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o), cuda_free(d_l);
        free(ref), free(lse_ref), free(lo), free(gpu_lse);
        problem_free(&p);
    }
}
END_TEST
#endif

/* ==== the suite ================================================================================= */

static Suite *flash_suite(void)
{
    Suite *s = suite_create("03_flash");
    TCase *tc = tcase_create("against chapter 02");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_grid_against_chapter02);
    tcase_add_test(tc, test_any_tile_size);
    tcase_add_test(tc, test_versions_match_float64);
    suite_add_tcase(s, tc);

    tc = tcase_create("lse and edges");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_lse_against_direct_computation);
    tcase_add_test(tc, test_merge_of_two_key_ranges);
    tcase_add_test(tc, test_rows_without_keys_are_zero);
    tcase_add_test(tc, test_extreme_logits);
    tcase_add_test(tc, test_nan_in_hidden_rows_changes_nothing);
    tcase_add_test(tc, test_memory_stays_linear);
    tcase_add_test(tc, test_bad_shapes_and_tiles);
    suite_add_tcase(s, tc);

    tc = tcase_create("program");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_attn_command_matches_float64);
    tcase_add_test(tc, test_help_and_verify);
    suite_add_tcase(s, tc);

    char why[256];
    if (device_cuda_available(why, sizeof why)) {
#if HAVE_CUDA
        tc = tcase_create("cuda");
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, test_cuda_kernels);
        suite_add_tcase(s, tc);
#endif
    } else {
        printf("03_flash: CUDA tests skipped: %s\n", why);
    }
    return s;
}

int main(void)
{
    error_set_program("test_03_flash");
    SRunner *sr = srunner_create(flash_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
