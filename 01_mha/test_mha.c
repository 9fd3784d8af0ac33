/*
 * test_mha.c: chapter 01's Check suite. This file: the kernels and the layer on the CPU, and
 * main(); test_mha_program.c: the program, the CUDA versions, hostile inputs.
 *
 * Chapter 01 has no previous chapter, so its reference is checked against cases whose answer
 * can be worked out by hand (equal keys give the mean of V, a dominant score picks one value,
 * the first causal row is v0, ...), and against a float64 re-implementation
 * (common/testing_oracle.c). Then every faster version is checked against the reference on the
 * grid of docs/contracts.md §4.2, and the layer against explicit projections. What the chapter stands on
 * in common/ (matmul, .npy files, argument parsing, ...) is tested in common/'s own suite (make
 * test-common). CUDA cases run only when a GPU is present and say so when skipped.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "01_mha/commands.h"
#include "01_mha/mha.h"
#include "01_mha/test_mha.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/testing_main.h"

/* ==== helpers ==================================================================================== */

/* Every CPU kernel must give `expected` (float64) on problem p within atol/rtol. */
static void check_all_cpu_kernels(Problem *p, const double *expected, double atol, double rtol, const char *what)
{
    for (int kern = 1; kern <= MHA_CPU_KERNELS; kern++) {
        char label[128];
        snprintf(label, sizeof label, "%s, cpu kernel %d", what, kern);
        memset(p->out, 0xff, n_out(&p->s) * sizeof(float));
        ck_assert_int_eq(mha_attention_cpu(kern, &p->s, p->q, p->k, p->v, p->out), 0);
        CompareResult r = compare_f32_f64(label, p->out, expected, n_out(&p->s), atol, rtol, 5);
        ck_assert_msg(r.n_bad == 0, "%s: %zu elements off, worst [%zu] %g vs %g", label, r.n_bad, r.worst,
                      (double)r.worst_out, (double)r.worst_ref);
    }
}

/* Every CPU kernel against the float64 oracle (mha_f64) on p, within ATOL/RTOL. */
static void check_against_float64(Problem *p, const char *what)
{
    double *expected = xmalloc(n_out(&p->s) * sizeof(double), "expected (B, H, T, D)");
    mha_f64(&p->s, p->q, p->k, p->v, expected);
    check_all_cpu_kernels(p, expected, ATOL, RTOL, what);
    free(expected);
}

/* Every key row of p set to key_row (D floats): every score of a query row is then the same, P
 * is uniform over the keys the row sees, and the output row is the plain mean of their value
 * rows -- keys 0 .. seen - 1, seen = S without the mask and t + S - T + 1 under the bottom-right
 * mask (written here from the definition, not taken from common/causal.h); a row that sees no key
 * is 0. Every CPU kernel is held to that within 1e-6 / 1e-5. */
static void check_equal_keys(Problem *p, const float *key_row, const char *what)
{
    const MhaShape *s = &p->s;
    for (size_t row = 0; row < (size_t)s->B * s->H * s->S; row++)
        memcpy(p->k + row * s->D, key_row, (size_t)s->D * sizeof(float));
    double *expected = xcalloc(n_out(s), sizeof(double), "expected (B, H, T, D)");
    for (size_t bh = 0; bh < (size_t)s->B * s->H; bh++)
        for (int t = 0; t < s->T; t++) {
            const int seen = s->causal ? t + s->S - s->T + 1 : s->S;
            for (int d = 0; d < s->D && seen > 0; d++) {
                double sum = 0;
                for (int j = 0; j < seen; j++)
                    sum += p->v[(bh * s->S + j) * s->D + d];
                expected[(bh * s->T + t) * s->D + d] = sum / seen;
            }
        }
    check_all_cpu_kernels(p, expected, 1e-6, 1e-5, what);
    free(expected);
}

/* ==== hand-derivable cases for every version ===================================================== */

START_TEST(test_equal_keys_give_mean_of_values)
{
    /* every key is the same vector, so every score in a row is equal: P is uniform and each
     * output row is the plain mean of the value rows */
    Problem p = problem_new(2, 3, 4, 7, 5, 0, 11);
    check_equal_keys(&p, (const float[]){0.0f, 0.25f, 0.5f, 0.75f, 1.0f}, "equal keys");
    problem_free(&p);
}
END_TEST

START_TEST(test_dominant_score_selects_one_value)
{
    /* keys are one-hot e_j and query t is 60 e_(t mod S): with scale 1 its score for key t mod S
     * is 60 and 0 for the others, so P puts 1 - (S-1) e^-60 ~ 1 on that key: out = v[t mod S] */
    const int T = 5, S = 6, D = 8;
    Problem p = problem_new(1, 1, T, S, D, 0, 12);
    p.s.scale = 1.0f;
    memset(p.k, 0, (size_t)S * D * sizeof(float));
    memset(p.q, 0, (size_t)T * D * sizeof(float));
    for (int j = 0; j < S; j++)
        p.k[j * D + j] = 1.0f;
    double *expected = xcalloc(n_out(&p.s), sizeof(double), "expected");
    for (int t = 0; t < T; t++) {
        p.q[t * D + t % S] = 60.0f;
        for (int d = 0; d < D; d++)
            expected[t * D + d] = p.v[(t % S) * D + d];
    }
    check_all_cpu_kernels(&p, expected, 1e-6, 1e-6, "one-hot score");
    free(expected);
    problem_free(&p);
}
END_TEST

START_TEST(test_first_causal_row_is_v0)
{
    /* T = S, causal: query 0 sees only key 0, so P[0] = (1, 0, ...) and out[0] = v[0] exactly */
    Problem p = problem_new(2, 2, 9, 9, 16, 1, 13);
    for (int kern = 1; kern <= MHA_CPU_KERNELS; kern++) {
        ck_assert_int_eq(mha_attention_cpu(kern, &p.s, p.q, p.k, p.v, p.out), 0);
        for (int bh = 0; bh < 4; bh++)
            for (int d = 0; d < 16; d++)
                ck_assert_msg(p.out[(bh * 9) * 16 + d] == p.v[(bh * 9) * 16 + d],
                              "kernel %d, head %d, d %d: %g != v0 %g", kern, bh, d, (double)p.out[(bh * 9) * 16 + d],
                              (double)p.v[(bh * 9) * 16 + d]);
    }
    problem_free(&p);
}
END_TEST

START_TEST(test_single_query)
{
    /* T = 1: one softmax over S scores, worked out in float64 */
    for (int causal = 0; causal <= 1; causal++) {
        Problem p = problem_new(1, 2, 1, 23, 12, causal, 14);
        check_against_float64(&p, "T = 1");
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_causal_fewer_queries_than_keys)
{
    /* T = 3 < S = 8, bottom-right: query t sees keys 0 .. t + 5. With equal keys the output is
     * the mean of those value rows. */
    Problem p = problem_new(1, 1, 3, 8, 4, 1, 15);
    check_equal_keys(&p, (const float[]){1.0f, 1.0f, 1.0f, 1.0f}, "causal T < S");
    problem_free(&p);
}
END_TEST

START_TEST(test_causal_more_queries_than_keys)
{
    /* T = 6 > S = 3, bottom-right: queries 0..2 see no key and output zeros (never NaN);
     * query 3 sees key 0 (out = v0), query 4 keys 0..1, query 5 keys 0..2. Equal keys. */
    const int S = 3, D = 4;
    Problem p = problem_new(1, 1, 6, S, D, 1, 16);
    check_equal_keys(&p, (const float[]){-2.0f, -2.0f, -2.0f, -2.0f}, "causal T > S");
    for (int kern = 1; kern <= MHA_CPU_KERNELS; kern++) {
        mha_attention_cpu(kern, &p.s, p.q, p.k, p.v, p.out);
        for (int i = 0; i < S * D; i++)
            ck_assert_msg(p.out[i] == 0.0f, "kernel %d: row without keys has %g at %d", kern, (double)p.out[i], i);
    }
    problem_free(&p);
}
END_TEST

START_TEST(test_extreme_logits_stay_finite)
{
    /* integer q and k make every logit an exact number in the thousands (the scale 1/4 keeps
     * them exact); and a second case where every logit of every row is about -1e3 or below.
     * Outputs must be finite and correct. The scale is not 1, where the maximum of the unscaled
     * and of the scaled scores coincide (make mutants: mha-softmax-max-unscaled). */
    const int T = 7, S = 11, D = 16;
    for (int all_negative = 0; all_negative <= 1; all_negative++) {
        Problem p = problem_new(1, 2, T, S, D, 0, 17);
        p.s.scale = 0.25f;
        for (int i = 0; i < 2 * T * D; i++)
            p.q[i] = all_negative ? 25.0f : (float)((i * 7) % 21 - 10) * 10.0f;
        for (int i = 0; i < 2 * S * D; i++)
            p.k[i] = all_negative ? -(float)(1 + i % 3) * 10.0f : (float)((i * 5) % 21 - 10) * 10.0f;
        check_against_float64(&p, all_negative ? "logits ~ -1e4" : "logits ~ +-1e4");
        for (size_t i = 0; i < n_out(&p.s); i++)
            ck_assert(isfinite(p.out[i]));
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_score_matrix_is_materialised)
{
    /* the lesson's claim: every version holds the whole (B, H, T, S) matrix at once */
    Problem p = problem_new(2, 4, 96, 80, 32, 1, 18);
    for (int kern = 1; kern <= MHA_CPU_KERNELS; kern++) {
        size_t before = mem_current_bytes();
        mem_reset_peak();
        ck_assert_int_eq(mha_attention_cpu(kern, &p.s, p.q, p.k, p.v, p.out), 0);
        ck_assert_uint_ge(mem_peak_bytes() - before, mha_scores_bytes(&p.s));
        ck_assert_uint_eq(mem_current_bytes(), before);
    }
    problem_free(&p);
}
END_TEST

START_TEST(test_unknown_kernel_is_an_error)
{
    Problem p = problem_new(1, 1, 2, 2, 4, 0, 19);
    ck_assert_int_eq(mha_attention_cpu(3, &p.s, p.q, p.k, p.v, p.out), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "kernels 1..2"));
    ck_assert_ptr_null(mha_cpu_kernel_name(7));
    problem_free(&p);
}
END_TEST

/* ==== every faster version against the reference, on the grid of docs/contracts.md §4.2 ========= */

START_TEST(test_grid_against_reference)
{
    testing_assert_ok(testing_attn_grid(&MHA_IMPLS, 2, 100, ATOL, RTOL)); /* kernel 2 against 1, the reference */
}
END_TEST

START_TEST(test_reference_matches_float64)
{
    /* the reference itself against the float64 implementation, on odd shapes */
    const int shapes[][6] = {{2, 3, 17, 29, 20, 1}, {1, 2, 31, 13, 7, 1}, {1, 1, 5, 5, 3, 0}, {3, 2, 64, 65, 80, 1}};
    for (int i = 0; i < 4; i++) {
        const int *sh = shapes[i];
        Problem p = problem_new(sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], 200 + (uint64_t)i);
        check_against_float64(&p, "odd shape vs float64");
        problem_free(&p);
    }
}
END_TEST

/* ==== the layer ================================================================================= */

START_TEST(test_split_merge_heads_round_trip)
{
    const int B = 2, T = 5, H = 3, D = 4;
    size_t n = (size_t)B * T * H * D;
    float *x = xmalloc(n * sizeof(float), "x");
    float *heads = xmalloc(n * sizeof(float), "heads");
    float *back = xmalloc(n * sizeof(float), "back");
    for (size_t i = 0; i < n; i++)
        x[i] = (float)i;
    mha_split_heads(x, heads, B, T, H, D);
    /* element (b, t, h, d) of x lands at (b, h, t, d) */
    ck_assert_float_eq(heads[((1 * H + 2) * T + 3) * D + 1], x[((1 * T + 3) * H + 2) * D + 1]);
    mha_merge_heads(heads, back, B, T, H, D);
    ck_assert_int_eq(memcmp(x, back, n * sizeof(float)), 0);
    free(x), free(heads), free(back);
}
END_TEST

START_TEST(test_layer_matches_explicit_projections)
{
    /* y = concat_h(attention(x Wq_hᵀ, x Wk_hᵀ, x Wv_hᵀ)) Woᵀ, written out with index arithmetic */
    const int B = 2, T = 9, C = 24, H = 3, D = 5, HD = H * D;
    Rng rng;
    rng_seed(&rng, 21);
    MhaWeights w;
    mha_weights_init(&w, C, H, D, &rng);
    float *x = xmalloc((size_t)B * T * C * sizeof(float), "x");
    fill_normal(x, (size_t)B * T * C, 22);
    size_t nh = (size_t)B * H * T * D;
    float *q = xmalloc(nh * 4, "q"), *k = xmalloc(nh * 4, "k"), *v = xmalloc(nh * 4, "v"), *o = xmalloc(nh * 4, "o");
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int d = 0; d < D; d++) {
                    double sq = 0, sk = 0, sv = 0;
                    for (int c = 0; c < C; c++) {
                        double xv = x[(b * T + t) * C + c];
                        sq += xv * w.wq[(h * D + d) * C + c];
                        sk += xv * w.wk[(h * D + d) * C + c];
                        sv += xv * w.wv[(h * D + d) * C + c];
                    }
                    size_t at = ((size_t)(b * H + h) * T + t) * D + d;
                    q[at] = (float)sq, k[at] = (float)sk, v[at] = (float)sv;
                }
    MhaShape s = {.B = B, .H = H, .T = T, .S = T, .D = D, .causal = 1, .scale = 1.0f / sqrtf((float)D)};
    ck_assert_int_eq(mha_attention_ref(&s, q, k, v, o), 0);
    float *expected = xmalloc((size_t)B * T * C * sizeof(float), "expected");
    float *y = xmalloc((size_t)B * T * C * sizeof(float), "y");
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++) {
                double acc = 0;
                for (int h = 0; h < H; h++)
                    for (int d = 0; d < D; d++)
                        acc += (double)o[((size_t)(b * H + h) * T + t) * D + d] * w.wo[c * HD + h * D + d];
                expected[(b * T + t) * C + c] = (float)acc;
            }
    for (int kern = 1; kern <= MHA_CPU_KERNELS; kern++) {
        ck_assert_int_eq(mha_layer_forward(&w, kern, x, B, T, 1, y), 0);
        CompareResult r = compare_f32("layer", y, expected, (size_t)B * T * C, ATOL, RTOL, 5);
        ck_assert_msg(r.n_bad == 0, "layer with kernel %d: %zu elements off", kern, r.n_bad);
    }
    ck_assert_uint_eq(mha_weights_count(&w), (size_t)4 * C * H * D);
    mha_weights_free(&w);
    free(x), free(q), free(k), free(v), free(o), free(expected), free(y);
}
END_TEST

START_TEST(test_weights_save_load)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/w", testing_tmp);
    Rng rng;
    rng_seed(&rng, 25);
    MhaWeights w, back;
    mha_weights_init(&w, 12, 3, 4, &rng);
    ck_assert_int_eq(mha_weights_save(&w, dir), 0);
    ck_assert_msg(mha_weights_load(dir, 3, &back) == 0, "%s", error_message());
    ck_assert_int_eq(back.C, 12);
    ck_assert_int_eq(back.H, 3);
    ck_assert_int_eq(back.D, 4);
    ck_assert_int_eq(memcmp(w.wk, back.wk, 12 * 12 * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(w.wo, back.wo, 12 * 12 * sizeof(float)), 0);
    mha_weights_free(&back);
    /* H must split the rows into whole heads */
    ck_assert_int_eq(mha_weights_load(dir, 5, &back), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "not H = 5 heads"));
    /* a wo of the wrong shape is named */
    char path[4300];
    snprintf(path, sizeof path, "%s/wo.npy", dir);
    ck_assert_int_eq(npy_write(path, NPY_F32, 2, (size_t[]){12, 6}, w.wo), 0);
    ck_assert_int_eq(mha_weights_load(dir, 3, &back), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "wo.npy: shape (12, 6), expected (12, 12)"));
    mha_weights_free(&w);
}
END_TEST

/* ==== the suite ================================================================================= */

int main(void)
{
    const TestingCase cases[] = {
        {.name = "hand-derivable",
         .tests = {test_equal_keys_give_mean_of_values, test_dominant_score_selects_one_value,
                   test_first_causal_row_is_v0, test_single_query, test_causal_fewer_queries_than_keys,
                   test_causal_more_queries_than_keys, test_extreme_logits_stay_finite,
                   test_score_matrix_is_materialised, test_unknown_kernel_is_an_error}},
        {.name = "against the reference", .timeout_s = 300,
         .tests = {test_grid_against_reference, test_reference_matches_float64}},
        {.name = "layer", .temp_dir = 1,
         .tests = {test_weights_save_load, test_split_merge_heads_round_trip, test_layer_matches_explicit_projections}},
        mha_program_case(), mha_hostile_case(), mha_cuda_case(), /* test_mha_program.c */
    };
    return testing_main_cases("01_mha", cases, sizeof cases / sizeof cases[0]);
}
