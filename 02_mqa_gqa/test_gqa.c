/*
 * test_gqa.c: chapter 02's Check suite -- grouped-query attention against chapter 01. This file:
 * the kernels on the CPU, and main(); test_gqa_program.c: the program, the GPU, hostile inputs.
 *
 * The chain: with Hkv = H every version must give chapter 01's output (bitwise where the
 * arithmetic is the same); with Hkv < H, chapter 01 run on K/V repeated per group
 * (repeat_interleave) is the reference. Then the conversion (group size 1 is the identity,
 * a group's K/V head is the mean of its heads, identical heads convert without error), the
 * parameter formulas, non-dividing head counts, and the grid of docs/contracts.md §4.2 with every H:Hkv
 * ratio.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "01_mha/mha.h"
#include "02_mqa_gqa/commands.h"
#include "02_mqa_gqa/gqa.h"
#include "02_mqa_gqa/test_gqa.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/testing_main.h"

const int GQA_TEST_SHAPES[N_SHAPES][7] = {
    {1, 8, 8, 1, 300, 64, 1},  {2, 4, 4, 17, 29, 20, 1}, {1, 6, 6, 65, 65, 32, 1},  {2, 3, 3, 100, 37, 16, 1},
    {1, 8, 1, 1, 257, 64, 1},  {2, 8, 2, 3, 40, 32, 1},  {1, 9, 3, 17, 63, 80, 1},  {1, 16, 4, 33, 129, 64, 1},
    {2, 4, 1, 70, 50, 24, 1},  {1, 8, 2, 64, 64, 64, 0}, {1, 4, 2, 129, 127, 128, 0}, {3, 2, 1, 5, 5, 8, 0},
};

static MhaShape as_mha(const GqaShape *s)
{
    return (MhaShape){.B = s->B, .H = s->H, .T = s->T, .S = s->S, .D = s->D, .causal = s->causal, .scale = s->scale};
}

/* ==== against chapter 01 ========================================================================= */

START_TEST(test_equal_heads_are_chapter01_bitwise)
{
    /* Hkv = H: the reference is chapter 01's per-head loop with the identity mapping, and the
     * grouped version runs chapter 01's block kernel on the same rows: the same arithmetic */
    for (int i = 0; i < N_SHAPES; i++) {
        if (GQA_TEST_SHAPES[i][1] != GQA_TEST_SHAPES[i][2])
            continue;
        Problem p = shape_problem(i);
        MhaShape m = as_mha(&p.s);
        float *ref01 = floats(n_q(&p.s)), *omp01 = floats(n_q(&p.s));
        ck_assert_int_eq(mha_attention_ref(&m, p.q, p.k, p.v, ref01), 0);
        ck_assert_int_eq(mha_attention_omp(&m, p.q, p.k, p.v, omp01), 0);
        ck_assert_int_eq(gqa_attention_ref(&p.s, p.q, p.k, p.v, p.out), 0);
        ck_assert_msg(memcmp(p.out, ref01, n_q(&p.s) * 4) == 0, "shape %d: ref differs from chapter 01's ref", i);
        ck_assert_int_eq(gqa_attention_grouped(&p.s, p.q, p.k, p.v, p.out), 0);
        if ((size_t)p.s.T > MHA_BR) /* the block path: chapter 01's kernel on chapter 01's blocks */
            ck_assert_msg(memcmp(p.out, omp01, n_q(&p.s) * 4) == 0, "shape %d: grouped differs from chapter 01's omp", i);
        else /* the decode path reads K/V differently: same maths, other rounding */
            ck_assert_msg(compare_f32("grouped vs 01 omp", p.out, omp01, n_q(&p.s), ATOL, RTOL, 5).n_bad == 0,
                          "shape %d", i);
        mem_free(ref01), mem_free(omp01);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_groups_equal_chapter01_on_repeated_kv)
{
    /* Hkv < H: chapter 01 on K/V with each kv head repeated G times is the definition of GQA */
    for (int i = 0; i < N_SHAPES; i++) {
        if (GQA_TEST_SHAPES[i][1] == GQA_TEST_SHAPES[i][2])
            continue;
        Problem p = shape_problem(i);
        MhaShape m = as_mha(&p.s);
        size_t n_rep = (size_t)p.s.B * p.s.H * p.s.S * p.s.D;
        float *krep = floats(n_rep), *vrep = floats(n_rep), *ref01 = floats(n_q(&p.s));
        gqa_repeat_kv(p.k, krep, p.s.B, p.s.H, p.s.Hkv, p.s.S, p.s.D);
        gqa_repeat_kv(p.v, vrep, p.s.B, p.s.H, p.s.Hkv, p.s.S, p.s.D);
        ck_assert_int_eq(mha_attention_ref(&m, p.q, krep, vrep, ref01), 0);
        ck_assert_int_eq(gqa_attention_ref(&p.s, p.q, p.k, p.v, p.out), 0);
        ck_assert_msg(memcmp(p.out, ref01, n_q(&p.s) * 4) == 0, "shape %d: ref differs from 01 on repeated K/V", i);
        for (int kern = 2; kern <= GQA_CPU_KERNELS; kern++) {
            memset(p.out, 0xff, n_q(&p.s) * 4);
            ck_assert_int_eq(gqa_attention_cpu(kern, &p.s, p.q, p.k, p.v, p.out), 0);
            CompareResult r = compare_f32("grouped vs 01 on repeated K/V", p.out, ref01, n_q(&p.s), ATOL, RTOL, 5);
            ck_assert_msg(r.n_bad == 0, "shape %d kernel %d: %zu elements off", i, kern, r.n_bad);
        }
        mem_free(krep), mem_free(vrep), mem_free(ref01);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_repeat_kv_layout)
{
    /* kv head j of batch b becomes heads j*G .. j*G+G-1 (repeat_interleave, not tile) */
    const int B = 2, H = 6, Hkv = 3, S = 2, D = 1;
    float k[2 * 3 * 2], out[2 * 6 * 2];
    for (int i = 0; i < B * Hkv * S * D; i++)
        k[i] = (float)i;
    gqa_repeat_kv(k, out, B, H, Hkv, S, D);
    const float expected[24] = {0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9, 8, 9, 10, 11, 10, 11};
    ck_assert_int_eq(memcmp(out, expected, sizeof expected), 0);
}
END_TEST

START_TEST(test_grouped_reads_kv_once_per_group)
{
    /* the decode path never repeats K/V: its only allocation is the score matrix */
    Problem p = problem_new(2, 16, 2, 1, 4096, 64, 1, 7);
    size_t before = mem_current_bytes();
    mem_reset_peak();
    ck_assert_int_eq(gqa_attention_grouped(&p.s, p.q, p.k, p.v, p.out), 0);
    size_t peak = mem_peak_bytes() - before;
    ck_assert_uint_lt(peak, gqa_scores_bytes(&p.s) + (size_t)64 * 4096 * 16 * 4); /* scores + matmul panels */
    ck_assert_uint_lt(peak, gqa_kv_bytes(&p.s));                                   /* no copy of K or V */
    ck_assert_uint_eq(gqa_kv_bytes(&p.s), (size_t)2 * 2 * 2 * 4096 * 64 * 4);     /* 2*B*Hkv*S*D*4 */
    problem_free(&p);
}
END_TEST

START_TEST(test_grid_against_reference)
{
    testing_assert_ok(testing_attn_grid(&GQA_IMPLS, 2, 500, ATOL, RTOL)); /* kernel 2 against 1, the reference */
}
END_TEST

START_TEST(test_versions_match_float64)
{
    testing_assert_ok(testing_attn_oracle(&GQA_IMPLS, GQA_TEST_SHAPES, N_SHAPES, 100, ATOL, RTOL));
}
END_TEST

/* ==== heads that do not divide =================================================================== */

START_TEST(test_non_dividing_heads_are_errors)
{
    ck_assert_int_eq(gqa_check_heads(8, 3), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "H = 8 query heads is not a multiple of Hkv = 3"));
    ck_assert_int_eq(gqa_check_heads(4, 8), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "more than H = 4"));
    ck_assert_int_eq(gqa_check_heads(4, 0), -1);
    ck_assert_int_eq(gqa_check_heads(9, 3), 0);
    GqaShape s = {.B = 1, .H = 8, .Hkv = 3, .T = 4, .S = 4, .D = 8, .causal = 0, .scale = 1.0f};
    float buf[1024] = {0};
    ck_assert_int_eq(gqa_attention_ref(&s, buf, buf, buf, buf), -1);
    ck_assert_int_eq(gqa_attention_grouped(&s, buf, buf, buf, buf), -1);
    Rng rng;
    rng_seed(&rng, 3);
    MhaWeights w;
    GqaWeights g;
    mha_weights_init(&w, 8, 8, 2, &rng);
    ck_assert_int_eq(gqa_weights_from_mha(&w, 3, &g), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "not a multiple"));
    mha_weights_free(&w);
}
END_TEST

/* ==== conversion and parameters ================================================================== */

START_TEST(test_pooling_group_size_one_is_identity)
{
    Rng rng;
    rng_seed(&rng, 4);
    MhaWeights w;
    GqaWeights g;
    mha_weights_init(&w, 24, 6, 4, &rng);
    ck_assert_int_eq(gqa_weights_from_mha(&w, 6, &g), 0);
    size_t n = (size_t)24 * 6 * 4;
    ck_assert_int_eq(memcmp(g.wq, w.wq, n * 4), 0);
    ck_assert_int_eq(memcmp(g.wk, w.wk, n * 4), 0);
    ck_assert_int_eq(memcmp(g.wv, w.wv, n * 4), 0);
    ck_assert_int_eq(memcmp(g.wo, w.wo, n * 4), 0);
    /* and the converted layer is chapter 01's layer, bit for bit (T > 32: the same blocks) */
    const int B = 1, T = 40;
    float *x = floats((size_t)B * T * 24), *y01 = floats((size_t)B * T * 24), *y02 = floats((size_t)B * T * 24);
    fill_normal(x, (size_t)B * T * 24, 5);
    ck_assert_int_eq(mha_layer_forward(&w, 2, x, B, T, 1, y01), 0);
    ck_assert_int_eq(gqa_layer_forward(&g, 2, x, B, T, 1, y02), 0);
    ck_assert_int_eq(memcmp(y01, y02, (size_t)B * T * 24 * 4), 0);
    mem_free(x), mem_free(y01), mem_free(y02);
    gqa_weights_free(&g);
    mha_weights_free(&w);
}
END_TEST

START_TEST(test_pooling_is_the_group_mean)
{
    const int C = 5, H = 6, D = 3;
    Rng rng;
    rng_seed(&rng, 6);
    MhaWeights w;
    mha_weights_init(&w, C, H, D, &rng);
    for (int Hkv = 1; Hkv <= H; Hkv++) {
        if (H % Hkv)
            continue;
        GqaWeights g;
        ck_assert_int_eq(gqa_weights_from_mha(&w, Hkv, &g), 0);
        int G = H / Hkv;
        for (int j = 0; j < Hkv; j++)
            for (int r = 0; r < D; r++)
                for (int c = 0; c < C; c++) {
                    double mk = 0, mv = 0;
                    for (int h = j * G; h < (j + 1) * G; h++)
                        mk += w.wk[(h * D + r) * C + c], mv += w.wv[(h * D + r) * C + c];
                    ck_assert_double_eq_tol(g.wk[(j * D + r) * C + c], mk / G, 1e-6);
                    ck_assert_double_eq_tol(g.wv[(j * D + r) * C + c], mv / G, 1e-6);
                }
        gqa_weights_free(&g);
    }
    mha_weights_free(&w);
}
END_TEST

START_TEST(test_identical_heads_convert_without_error)
{
    /* if every K head and every V head of the MHA layer is the same, pooling changes nothing */
    const int C = 32, H = 8, D = 4, B = 1, T = 20;
    Rng rng;
    rng_seed(&rng, 8);
    MhaWeights w;
    mha_weights_init(&w, C, H, D, &rng);
    for (int h = 1; h < H; h++) {
        memcpy(w.wk + (size_t)h * D * C, w.wk, (size_t)D * C * 4);
        memcpy(w.wv + (size_t)h * D * C, w.wv, (size_t)D * C * 4);
    }
    float *x = floats((size_t)B * T * C), *y01 = floats((size_t)B * T * C), *y = floats((size_t)B * T * C);
    fill_normal(x, (size_t)B * T * C, 9);
    ck_assert_int_eq(mha_layer_forward(&w, 1, x, B, T, 1, y01), 0);
    for (int Hkv = 1; Hkv <= H; Hkv *= 2) {
        GqaWeights g;
        ck_assert_int_eq(gqa_weights_from_mha(&w, Hkv, &g), 0);
        ck_assert_int_eq(gqa_layer_forward(&g, 2, x, B, T, 1, y), 0);
        ck_assert_msg(compare_f32("identical heads", y, y01, (size_t)B * T * C, ATOL, RTOL, 3).n_bad == 0, "Hkv %d", Hkv);
        gqa_weights_free(&g);
    }
    mem_free(x), mem_free(y01), mem_free(y);
    mha_weights_free(&w);
}
END_TEST

START_TEST(test_parameter_counts)
{
    /* C*H*D (Wq) + 2*C*Hkv*D (Wk, Wv) + H*D*C (Wo), worked out by hand for C = 1024, H = 16, D = 64 */
    ck_assert_uint_eq(gqa_weights_count(1024, 16, 16, 64), 4194304);  /* MHA: 4 * 1024 * 1024 */
    ck_assert_uint_eq(gqa_weights_count(1024, 16, 4, 64), 2621440);   /* GQA-4: 2M + 2 * 256K */
    ck_assert_uint_eq(gqa_weights_count(1024, 16, 1, 64), 2228224);   /* MQA: 2M + 2 * 64K */
    Rng rng;
    rng_seed(&rng, 10);
    MhaWeights w;
    mha_weights_init(&w, 48, 4, 12, &rng);
    ck_assert_uint_eq(gqa_weights_count(48, 4, 4, 12), mha_weights_count(&w)); /* Hkv = H is chapter 01 */
    mha_weights_free(&w);
    GqaShape s = {.B = 3, .H = 8, .Hkv = 2, .T = 1, .S = 100, .D = 16, .causal = 1, .scale = 0.25f};
    ck_assert_uint_eq(gqa_kv_bytes(&s), (size_t)2 * 3 * 2 * 100 * 16 * 4);
    ck_assert_uint_eq(gqa_scores_bytes(&s), (size_t)3 * 8 * 1 * 100 * 4);
}
END_TEST

/* The lesson's worked example (main.c, lesson_by_hand): 4 query heads, 2 kv heads, one query each,
 * keys kv0 = (1 0; 0 1), kv1 = (2 0; 0 0), unit-vector values, scale 1. By hand: head h reads kv
 * head h / 2; q = (0 0) scores (0, 0) -> P = (1/2, 1/2); q = (1 0) scores (1, 0) against kv0 ->
 * P = (e, 1) / (e + 1), and (2, 0) against kv1 -> P = (e^2, 1) / (e^2 + 1); O = P (V = I). */
START_TEST(test_hand_example_of_the_lesson)
{
    const float q[8] = {0, 0, 1, 0, 0, 0, 1, 0}, k[8] = {1, 0, 0, 1, 2, 0, 0, 0}, v[8] = {1, 0, 0, 1, 1, 0, 0, 1};
    const double e = exp(1.0), e2 = exp(2.0);
    const double want[8] = {0.5, 0.5, e / (e + 1), 1 / (e + 1), 0.5, 0.5, e2 / (e2 + 1), 1 / (e2 + 1)};
    const GqaShape s = {.B = 1, .H = 4, .Hkv = 2, .T = 1, .S = 2, .D = 2, .causal = 0, .scale = 1.0f};
    for (int kernel = 1; kernel <= GQA_CPU_KERNELS; kernel++) {
        float out[8];
        ck_assert_int_eq(gqa_attention_cpu(kernel, &s, q, k, v, out), 0);
        for (int i = 0; i < 8; i++)
            ck_assert_msg(fabs(out[i] - want[i]) < 1e-6, "kernel %d: O[%d] = %g, by hand %g", kernel, i, out[i],
                          want[i]);
    }
}
END_TEST

/* ==== the suite ================================================================================= */

int main(void)
{
    const TestingCase cases[] = {
        {.name = "against chapter 01", .timeout_s = 120,
         .tests = {test_equal_heads_are_chapter01_bitwise, test_groups_equal_chapter01_on_repeated_kv,
                   test_repeat_kv_layout, test_grouped_reads_kv_once_per_group, test_hand_example_of_the_lesson}},
        {.name = "grid", .timeout_s = 300, .tests = {test_grid_against_reference, test_versions_match_float64}},
        {.name = "conversion", .timeout_s = 60,
         .tests = {test_non_dividing_heads_are_errors, test_pooling_group_size_one_is_identity,
                   test_pooling_is_the_group_mean, test_identical_heads_convert_without_error, test_parameter_counts}},
        gqa_program_case(), gqa_hostile_case(), gqa_cuda_case(), /* test_gqa_program.c */
    };
    return testing_main_cases("02_mqa_gqa", cases, sizeof cases / sizeof cases[0]);
}
