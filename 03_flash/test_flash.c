/*
 * test_flash.c: chapter 03's Check suite -- flash attention against chapter 02. This file: the
 * CPU versions, and main(); test_flash_program.c: the program, the GPU, hostile inputs.
 *
 * Every CPU version, with its default tiles and with odd ones, must give chapter 02's output on
 * the grid of docs/contracts.md §4.2 (all H:Hkv ratios, odd lengths, T = 1, causal T < S, T = S, T > S,
 * D in {32, 64, 80, 128}). Then what is new in this chapter: the log-sum-exp against a direct
 * float64 computation, merging partial results with it, rows that see no key, extreme logits,
 * NaN in K/V rows a query cannot see, memory that stays linear in T, and bad shapes.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "02_mqa_gqa/commands.h"
#include "02_mqa_gqa/gqa.h"
#include "03_flash/commands.h"
#include "03_flash/flash.h"
#include "03_flash/test_flash.h"
#include "common/attn_harness.h"
#include "common/causal.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/testing_main.h"

/* ==== helpers ==================================================================================== */

/* The version's own tiles (flash_default_tiles), for run(). */
static const FlashTiles DEFAULT_TILES = {.Br = 0, .Bc = 0};

/* A CPU version with given tiles; DEFAULT_TILES = its defaults. */
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
    if (n == 0)
        return -INFINITY;
    double m = -INFINITY, sum = 0.0;
    double *x = mem_alloc_or_die((size_t)n * sizeof(double), "scores of one row (S)");
    for (int j = 0; j < n; j++) {
        double dot = 0.0;
        for (int d = 0; d < s->D; d++)
            dot += (double)p->q[(bh * s->T + t) * s->D + d] * p->k[(bkv * s->S + j) * s->D + d];
        x[j] = dot * s->scale;
        m = fmax(m, x[j]);
    }
    for (int j = 0; j < n; j++)
        sum += exp(x[j] - m);
    mem_free(x);
    return m + log(sum);
}

/* ==== against chapter 02 ========================================================================= */

/* The grid's reference: chapter 02's grouped version (its kernel 2: fast, and held to chapter
 * 02's reference by chapter 02's suite). */
static int chapter02_grouped(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v,
                             float *out)
{
    (void)kernel;
    return GQA_IMPLS.cpu(ctx, 2, d, q, k, v, out);
}

START_TEST(test_grid_against_chapter02)
{
    AttnImpls im = FLASH_IMPLS; /* every CPU version, its default tiles */
    im.ref = chapter02_grouped;
    testing_assert_ok(testing_attn_grid(&im, 1, 700, ATOL, RTOL));
}
END_TEST

START_TEST(test_any_tile_size)
{
    /* tails everywhere: tiles that do not divide T or S, one-row and one-key tiles */
    const int shapes[][7] = {{1, 6, 2, 37, 53, 20, 1}, {2, 4, 4, 64, 17, 33, 1}, {1, 8, 1, 5, 300, 64, 0}, {1, 3, 3, 70, 70, 7, 1}};
    const FlashTiles tiled[] = {{.Br = 1, .Bc = 1}, {.Br = 7, .Bc = 5}, {.Br = 64, .Bc = 64}, {.Br = 200, .Bc = 300}};
    const FlashTiles fast[] = {{.Br = 1, .Bc = 16},  {.Br = 6, .Bc = 16},   {.Br = 13, .Bc = 32},
                               {.Br = 100, .Bc = 48}, {.Br = 24, .Bc = 512}, {.Br = 300, .Bc = 1024}};
    for (int i = 0; i < 4; i++) {
        const int *x = shapes[i];
        Problem p = problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 800 + (uint64_t)i);
        float *ref = floats(n_q(&p.s));
        ck_assert_int_eq(gqa_attention_ref(&p.s, p.q, p.k, p.v, ref), 0);
        for (int kern = 1; kern <= 2; kern++)
            for (int t = 0; t < (kern == 1 ? 4 : 6); t++) {
                FlashTiles tl = kern == 1 ? tiled[t] : fast[t];
                memset(p.out, 0xff, n_q(&p.s) * 4);
                ck_assert_int_eq(run(kern, tl, &p), 0);
                CompareResult r = compare_f32("tiles", p.out, ref, n_q(&p.s), ATOL, RTOL, 3);
                ck_assert_msg(r.n_bad == 0, "shape %d kernel %d tiles %dx%d: %zu off", i, kern, tl.Br, tl.Bc, r.n_bad);
            }
        mem_free(ref);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_versions_match_float64)
{
    const int shapes[][7] = {{2, 6, 2, 17, 29, 20, 1}, {1, 9, 3, 31, 13, 7, 1}, {1, 4, 1, 1, 77, 256, 1}, {1, 2, 2, 65, 63, 1, 0}};
    testing_assert_ok(testing_attn_oracle(&FLASH_IMPLS, shapes, sizeof shapes / sizeof shapes[0], 900, ATOL, RTOL));
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
            ck_assert_int_eq(run(kern, DEFAULT_TILES, &p), 0);
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
    ck_assert_int_eq(run(2, DEFAULT_TILES, &full), 0);
    ck_assert_int_eq(run(2, DEFAULT_TILES, &a), 0);
    ck_assert_int_eq(run(1, DEFAULT_TILES, &c), 0);
    flash_merge(a.out, a.lse, c.out, c.lse, n_rows(&full.s), D);
    ck_assert(compare_f32("merged out", a.out, full.out, n_q(&full.s), ATOL, RTOL, 5).n_bad == 0);
    ck_assert(compare_f32("merged lse", a.lse, full.lse, n_rows(&full.s), ATOL, RTOL, 5).n_bad == 0);
    /* a part with no keys (lse = -inf) changes nothing, from either side */
    float *o = floats(n_q(&full.s)), *l = floats(n_rows(&full.s)), *empty_l = floats(n_rows(&full.s));
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
    mem_free(o), mem_free(l), mem_free(empty_l);
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
        ck_assert_int_eq(run(kern, DEFAULT_TILES, &p), 0);
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
        float *ref = floats(n_q(&p.s));
        ck_assert_int_eq(gqa_attention_ref(&p.s, p.q, p.k, p.v, ref), 0);
        for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++) {
            ck_assert_int_eq(run(kern, DEFAULT_TILES, &p), 0);
            for (size_t i = 0; i < n_q(&p.s); i++)
                ck_assert(isfinite(p.out[i]));
            for (size_t i = 0; i < n_rows(&p.s); i++)
                ck_assert(isfinite(p.lse[i]));
            CompareResult r = compare_f32("extreme logits", p.out, ref, n_q(&p.s), ATOL, RTOL, 3);
            ck_assert_msg(r.n_bad == 0, "kernel %d all_negative %d: %zu off", kern, all_negative, r.n_bad);
        }
        mem_free(ref);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_nan_in_hidden_rows_changes_nothing)
{
    /* causal T = S = 70: query t sees keys 0..t. NaN in K and V rows 40.. must leave the outputs of
     * queries 0..39 bit for bit as they were, whatever the tiles */
    const int T = 70, cut = 40, D = 16;
    const FlashTiles tiles[2][3] = {{DEFAULT_TILES, {.Br = 16, .Bc = 16}, {.Br = 7, .Bc = 9}},
                                    {DEFAULT_TILES, {.Br = 6, .Bc = 16}, {.Br = 48, .Bc = 64}}};
    for (int kern = 1; kern <= FLASH_CPU_KERNELS; kern++)
        for (int ti = 0; ti < 3; ti++) {
            Problem p = problem_new(1, 4, 2, T, T, D, 1, 1400);
            ck_assert_int_eq(run(kern, tiles[kern - 1][ti], &p), 0);
            float *clean = floats(n_q(&p.s));
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
            mem_free(clean);
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
        ck_assert_int_eq(run(2, DEFAULT_TILES, &p), 0);
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

/* The tc version on the GPU is checked against naive attention in fp16 (common/attn_harness.c),
 * which rounds with attn_round_fp16: that must be the compiler's own fp16 conversion --
 * subnormals, ties to even and overflow included -- and the naive run must sit within fp16's
 * error of the truth, so that "2x its error" is a meaningful bound. */
START_TEST(test_fp16_yardstick)
{
#if defined(__FLT16_MAX__)
    const float edge[] = {0.0f, -0.0f, 1.0f, -1.0f, 3.14159265f, 65504.0f, 65519.0f, 65520.0f, -65520.0f, 1e6f,
                          1e-8f, 2.98e-8f, 2.99e-8f, 5.96e-8f, 6.0e-5f, 6.1035156e-5f, 1.00048828125f, 1.00146484375f,
                          2049.0f, 2051.0f, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++) {
        const float got = attn_round_fp16(edge[i]), want = (float)(_Float16)edge[i];
        ck_assert_msg(memcmp(&got, &want, sizeof got) == 0, "%.9g: %.9g, _Float16 gives %.9g", (double)edge[i],
                      (double)got, (double)want);
    }
    float x[4096];
    fill_normal(x, 4096, 77);
    for (int i = 0; i < 4096; i++) {
        const float y = ldexpf(x[i], i % 64 - 32), got = attn_round_fp16(y), want = (float)(_Float16)y;
        ck_assert_msg(memcmp(&got, &want, sizeof got) == 0, "%.9g: %.9g, _Float16 gives %.9g", (double)y, (double)got,
                      (double)want);
    }
#endif
    Problem p = problem_new(1, 4, 2, 37, 70, 64, 1, 91);
    const size_t n = n_q(&p.s);
    const AttnDims d = {.B = 1, .H = 4, .Hkv = 2, .T = 37, .S = 70, .D = 64, .causal = 1, .scale = p.s.scale};
    double *truth = mem_alloc_or_die(n * sizeof(double), "float64 attention (B, H, T, D)");
    float *ref = floats(n), *naive = floats(n);
    attention_f64(1, 4, 2, 37, 70, 64, 1, p.s.scale, p.q, p.k, p.v, truth);
    for (size_t i = 0; i < n; i++)
        ref[i] = (float)truth[i];
    attn_naive_fp16(&d, p.q, p.k, p.v, naive);
    AttnFp16Check c = attn_check_fp16(naive, ref, naive, n);
    ck_assert_msg(c.err > 1e-5 && c.err < 1e-2, "naive fp16's error %g is not fp16-sized", c.err);
    ck_assert_msg(c.ok && c.nmse < 1e-5, "the naive run against itself: NMSE %g", c.nmse);
    /* an output with one element off by 3x naive's error fails the rule */
    memcpy(p.out, ref, n * sizeof(float));
    p.out[n / 2] += (float)(3 * c.err_naive);
    ck_assert(!attn_check_fp16(p.out, ref, naive, n).ok);
    mem_free(truth), mem_free(ref), mem_free(naive);
    problem_free(&p);
}
END_TEST

START_TEST(test_bad_shapes_and_tiles)
{
    Problem p = problem_new(1, 2, 1, 4, 4, 257, 0, 1600);
    ck_assert_int_eq(run(1, DEFAULT_TILES, &p), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "D = 257 is not supported"));
    ck_assert_int_eq(run(2, DEFAULT_TILES, &p), -1);
    problem_free(&p);
    Problem g = problem_new(1, 8, 3, 4, 4, 8, 0, 1601);
    ck_assert_int_eq(run(2, DEFAULT_TILES, &g), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "not a multiple"));
    problem_free(&g);
    Problem t = problem_new(1, 2, 2, 4, 4, 8, 0, 1602);
    ck_assert_int_eq(run(2, (FlashTiles){.Br = 8, .Bc = 20}, &t), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "multiple of 16"));
    ck_assert_int_eq(run(1, (FlashTiles){.Br = 5, .Bc = 0}, &t), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "out of range"));
    ck_assert_int_eq(flash_attention_cpu(3, &t.s, t.q, t.k, t.v, t.out, NULL), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "kernels 1..2"));
    problem_free(&t);
}
END_TEST

/* ==== the suite ================================================================================= */

int main(void)
{
    const TestingCase cases[] = {
        {.name = "against chapter 02", .timeout_s = 300,
         .tests = {test_grid_against_chapter02, test_any_tile_size, test_versions_match_float64}},
        {.name = "lse and edges", .timeout_s = 120,
         .tests = {test_lse_against_direct_computation, test_merge_of_two_key_ranges, test_rows_without_keys_are_zero,
                   test_extreme_logits, test_nan_in_hidden_rows_changes_nothing, test_memory_stays_linear,
                   test_bad_shapes_and_tiles, test_fp16_yardstick}},
        flash_program_case(), flash_hostile_case(), flash_cuda_case(), /* test_flash_program.c */
    };
    return testing_main_cases("03_flash", cases, sizeof cases / sizeof cases[0]);
}
