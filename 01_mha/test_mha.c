/*
 * test_mha.c: chapter 01's Check suite. This file: the kernels and the layer (on the GPU too,
 * when there is one), and main(); test_mha_program.c: the program, hostile inputs.
 *
 * Chapter 01 has no previous chapter, so its reference is checked against cases whose answer
 * can be worked out by hand (equal keys give the mean of V, a dominant score picks one value,
 * the first causal row is v0, ...), and against a float64 re-implementation
 * (common/testing_oracle.c). Then every faster version is checked against the reference on the
 * grid of design.md §5, and the layer against explicit projections. What the chapter stands on
 * in common/ (matmul, .npy files, argument parsing, ...) is tested in common/'s own suite (make
 * test-common). CUDA cases run only when a GPU is present and say so when skipped.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "01_mha/mha.h"
#include "01_mha/test_mha.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/testing_main.h"
#include "common/verify.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

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

/* ==== hand-derivable cases for every version ===================================================== */

START_TEST(test_equal_keys_give_mean_of_values)
{
    /* every key is the same vector, so every score in a row is equal: P is uniform and each
     * output row is the plain mean of the value rows */
    Problem p = problem_new(2, 3, 4, 7, 5, 0, 11);
    for (size_t i = 0; i < (size_t)2 * 3 * 7 * 5; i++)
        p.k[i] = 0.25f * (float)(i % 5);
    double *expected = xcalloc(n_out(&p.s), sizeof(double), "expected");
    for (int bh = 0; bh < 6; bh++)
        for (int t = 0; t < 4; t++)
            for (int d = 0; d < 5; d++) {
                double sum = 0;
                for (int j = 0; j < 7; j++)
                    sum += p.v[(bh * 7 + j) * 5 + d];
                expected[(bh * 4 + t) * 5 + d] = sum / 7;
            }
    check_all_cpu_kernels(&p, expected, 1e-6, 1e-5, "equal keys");
    free(expected);
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
        double *expected = xmalloc(n_out(&p.s) * sizeof(double), "expected");
        mha_f64(&p.s, p.q, p.k, p.v, expected);
        check_all_cpu_kernels(&p, expected, ATOL, RTOL, "T = 1");
        free(expected);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_causal_fewer_queries_than_keys)
{
    /* T = 3 < S = 8, bottom-right: query t sees keys 0 .. t + 5. With equal keys the output is
     * the mean of those value rows. */
    const int T = 3, S = 8, D = 4;
    Problem p = problem_new(1, 1, T, S, D, 1, 15);
    for (int i = 0; i < S * D; i++)
        p.k[i] = 1.0f;
    double *expected = xcalloc(n_out(&p.s), sizeof(double), "expected");
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) {
            double sum = 0;
            for (int j = 0; j <= t + S - T; j++)
                sum += p.v[j * D + d];
            expected[t * D + d] = sum / (t + S - T + 1);
        }
    check_all_cpu_kernels(&p, expected, 1e-6, 1e-5, "causal T < S");
    free(expected);
    problem_free(&p);
}
END_TEST

START_TEST(test_causal_more_queries_than_keys)
{
    /* T = 6 > S = 3, bottom-right: queries 0..2 see no key and output zeros (never NaN);
     * query 3 sees key 0 (out = v0), query 4 keys 0..1, query 5 keys 0..2. Equal keys. */
    const int T = 6, S = 3, D = 4;
    Problem p = problem_new(1, 1, T, S, D, 1, 16);
    for (int i = 0; i < S * D; i++)
        p.k[i] = -2.0f;
    double *expected = xcalloc(n_out(&p.s), sizeof(double), "expected");
    for (int t = S; t < T; t++)
        for (int d = 0; d < D; d++) {
            double sum = 0;
            for (int j = 0; j <= t - S; j++)
                sum += p.v[j * D + d];
            expected[t * D + d] = sum / (t - S + 1);
        }
    check_all_cpu_kernels(&p, expected, 1e-6, 1e-5, "causal T > S");
    for (int kern = 1; kern <= MHA_CPU_KERNELS; kern++) {
        mha_attention_cpu(kern, &p.s, p.q, p.k, p.v, p.out);
        for (int i = 0; i < S * D; i++)
            ck_assert_msg(p.out[i] == 0.0f, "kernel %d: row without keys has %g at %d", kern, (double)p.out[i], i);
    }
    free(expected);
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
        double *expected = xmalloc(n_out(&p.s) * sizeof(double), "expected");
        mha_f64(&p.s, p.q, p.k, p.v, expected);
        check_all_cpu_kernels(&p, expected, ATOL, RTOL, all_negative ? "logits ~ -1e4" : "logits ~ +-1e4");
        for (size_t i = 0; i < n_out(&p.s); i++)
            ck_assert(isfinite(p.out[i]));
        free(expected);
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

/* ==== every faster version against the reference, on the grid of design.md §5 ==================== */

START_TEST(test_grid_against_reference)
{
    int n_case = 0, failed = 0;
    for (int i = 0; i < VERIFY_N_LENGTHS; i++)
        for (int j = 0; j < VERIFY_N_LENGTHS; j++)
            for (int causal = 0; causal <= 1; causal++, n_case++) {
                int T = VERIFY_LENGTHS[i], S = VERIFY_LENGTHS[j];
                if (testing_small() && (T > 257 || S > 257))
                    continue; /* under emulation: lengths up to 257, still several tiles (n_case goes on) */
                int D = VERIFY_HEAD_DIMS[n_case % VERIFY_N_HEAD_DIMS];
                int H = (int[]){1, 4, 8}[n_case % 3], B = 1 + n_case % 2;
                if ((double)T * S * H * B > 3e5)
                    H = 1, B = 1;
                Problem p = problem_new(B, H, T, S, D, causal, (uint64_t)n_case + 100);
                float *ref = xmalloc(n_out(&p.s) * sizeof(float), "ref");
                ck_assert_int_eq(mha_attention_ref(&p.s, p.q, p.k, p.v, ref), 0);
                for (int kern = 2; kern <= MHA_CPU_KERNELS; kern++) {
                    char label[128];
                    snprintf(label, sizeof label, "kernel %d B=%d H=%d T=%d S=%d D=%d causal=%d", kern, B, H, T, S, D,
                             causal);
                    memset(p.out, 0xff, n_out(&p.s) * sizeof(float));
                    ck_assert_int_eq(mha_attention_cpu(kern, &p.s, p.q, p.k, p.v, p.out), 0);
                    failed += compare_f32(label, p.out, ref, n_out(&p.s), ATOL, RTOL, 3).n_bad > 0;
                }
                free(ref);
                problem_free(&p);
            }
    ck_assert_msg(failed == 0, "%d grid cases failed (listed above)", failed);
}
END_TEST

START_TEST(test_reference_matches_float64)
{
    /* the reference itself against the float64 implementation, on odd shapes */
    const int shapes[][6] = {{2, 3, 17, 29, 20, 1}, {1, 2, 31, 13, 7, 1}, {1, 1, 5, 5, 3, 0}, {3, 2, 64, 65, 80, 1}};
    for (int i = 0; i < 4; i++) {
        const int *sh = shapes[i];
        Problem p = problem_new(sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], 200 + (uint64_t)i);
        double *expected = xmalloc(n_out(&p.s) * sizeof(double), "expected");
        mha_f64(&p.s, p.q, p.k, p.v, expected);
        check_all_cpu_kernels(&p, expected, ATOL, RTOL, "odd shape vs float64");
        free(expected);
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

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
START_TEST(test_cuda_kernels_against_reference)
{
    const int shapes[][6] = {{1, 1, 1, 1, 32, 0},   {2, 3, 17, 29, 64, 1},   {1, 4, 65, 63, 80, 1},
                             {1, 2, 129, 128, 128, 0}, {1, 1, 6, 3, 32, 1}, {2, 8, 257, 257, 64, 1}};
    for (int i = 0; i < 6; i++) {
        const int *sh = shapes[i];
        Problem p = problem_new(sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], 400 + (uint64_t)i);
        size_t qb = n_out(&p.s) * 4, kb = (size_t)sh[0] * sh[1] * sh[3] * sh[4] * 4;
        float *ref = xmalloc(qb, "ref");
        ck_assert_int_eq(mha_attention_ref(&p.s, p.q, p.k, p.v, ref), 0);
        float *d_q = cuda_alloc(qb), *d_k = cuda_alloc(kb), *d_v = cuda_alloc(kb), *d_o = cuda_alloc(qb);
        cuda_upload(d_q, p.q, qb), cuda_upload(d_k, p.k, kb), cuda_upload(d_v, p.v, kb);
        for (int kern = 1; kern <= MHA_CUDA_KERNELS; kern++) {
            cuda_memset_nan(d_o, qb);
            ck_assert_int_eq(mha_attention_cuda(kern, &p.s, d_q, d_k, d_v, d_o), 0);
            cuda_download(p.out, d_o, qb);
            CompareResult r = compare_f32("cuda", p.out, ref, n_out(&p.s), ATOL, RTOL, 5);
            ck_assert_msg(r.n_bad == 0, "cuda kernel %d, shape %d: %zu elements off", kern, i, r.n_bad);
        }
        cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o);
        free(ref);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_cuda_layer_against_cpu)
{
    const int B = 2, T = 33, C = 64, H = 4, D = 16;
    Rng rng;
    rng_seed(&rng, 23);
    MhaWeights w, d_w;
    mha_weights_init(&w, C, H, D, &rng);
    mha_weights_to_device(&w, &d_w);
    size_t n = (size_t)B * T * C;
    float *x = xmalloc(n * 4, "x"), *y = xmalloc(n * 4, "y"), *ref = xmalloc(n * 4, "ref");
    fill_normal(x, n, 24);
    ck_assert_int_eq(mha_layer_forward(&w, 1, x, B, T, 1, ref), 0);
    float *d_x = cuda_alloc(n * 4), *d_y = cuda_alloc(n * 4);
    cuda_upload(d_x, x, n * 4);
    for (int kern = 1; kern <= MHA_CUDA_KERNELS; kern++) {
        ck_assert_int_eq(mha_layer_forward_cuda(&d_w, kern, d_x, B, T, 1, d_y), 0);
        cuda_download(y, d_y, n * 4);
        ck_assert_msg(compare_f32("cuda layer", y, ref, n, ATOL, RTOL, 5).n_bad == 0, "kernel %d", kern);
    }
    cuda_free(d_x), cuda_free(d_y);
    mha_weights_free_device(&d_w);
    mha_weights_free(&w);
    free(x), free(y), free(ref);
}
END_TEST
#endif

/* ==== the suite ================================================================================= */

static Suite *mha_suite(void)
{
    Suite *s = suite_create("01_mha");
    TCase *tc;

    tc = tcase_create("hand-derivable");
    tcase_add_test(tc, test_equal_keys_give_mean_of_values);
    tcase_add_test(tc, test_dominant_score_selects_one_value);
    tcase_add_test(tc, test_first_causal_row_is_v0);
    tcase_add_test(tc, test_single_query);
    tcase_add_test(tc, test_causal_fewer_queries_than_keys);
    tcase_add_test(tc, test_causal_more_queries_than_keys);
    tcase_add_test(tc, test_extreme_logits_stay_finite);
    tcase_add_test(tc, test_score_matrix_is_materialised);
    tcase_add_test(tc, test_unknown_kernel_is_an_error);
    suite_add_tcase(s, tc);

    tc = tcase_create("against the reference");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_grid_against_reference);
    tcase_add_test(tc, test_reference_matches_float64);
    suite_add_tcase(s, tc);

    tc = tcase_create("layer");
    tcase_add_checked_fixture(tc, testing_tmp_setup, testing_tmp_teardown);
    tcase_add_test(tc, test_weights_save_load);
    tcase_add_test(tc, test_split_merge_heads_round_trip);
    tcase_add_test(tc, test_layer_matches_explicit_projections);
    suite_add_tcase(s, tc);

    mha_program_cases(s); /* test_mha_program.c: program, hostile inputs */

    if (testing_cuda_cases("01_mha")) { /* asked in a child process: this one must not start CUDA */
#if HAVE_CUDA
        tc = tcase_create("cuda");
        tcase_set_timeout(tc, 120);
        tcase_add_checked_fixture(tc, testing_tmp_setup, testing_tmp_teardown);
        tcase_add_test(tc, test_cuda_kernels_against_reference);
        tcase_add_test(tc, test_cuda_layer_against_cpu);
        mha_program_cuda_tests(tc); /* test_mha_program.c: attn --device cuda */
        suite_add_tcase(s, tc);
#endif
    }
    return s;
}

int main(void) { return testing_main("test_01_mha", mha_suite()); }
