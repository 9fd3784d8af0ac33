/*
 * test_gqa.c: chapter 02's Check suite -- grouped-query attention against chapter 01.
 *
 * The chain: with Hkv = H every version must give chapter 01's output (bitwise where the
 * arithmetic is the same); with Hkv < H, chapter 01 run on K/V repeated per group
 * (repeat_interleave) is the reference. Then the conversion (group size 1 is the identity,
 * a group's K/V head is the mean of its heads, identical heads convert without error), the
 * parameter formulas, non-dividing head counts, the grid of design.md §5 with every H:Hkv
 * ratio, and the program (attn against float64, convert, bad input).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "01_mha/mha.h"
#include "02_mqa_gqa/gqa.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/hostile.h"
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
    float *q, *k, *v, *out; /* q, out (B, H, T, D); k, v (B, Hkv, S, D) */
} Problem;

static size_t n_q(const GqaShape *s) { return (size_t)s->B * s->H * s->T * s->D; }
static size_t n_kv(const GqaShape *s) { return (size_t)s->B * s->Hkv * s->S * s->D; }

static Problem problem_new(int B, int H, int Hkv, int T, int S, int D, int causal, uint64_t seed)
{
    Problem p = {{B, H, Hkv, T, S, D, causal, 1.0f / sqrtf((float)D)}, NULL, NULL, NULL, NULL};
    p.q = malloc(n_q(&p.s) * 4), p.out = malloc(n_q(&p.s) * 4);
    p.k = malloc(n_kv(&p.s) * 4), p.v = malloc(n_kv(&p.s) * 4);
    fill_normal(p.q, n_q(&p.s), seed), fill_normal(p.k, n_kv(&p.s), seed + 1), fill_normal(p.v, n_kv(&p.s), seed + 2);
    return p;
}

static void problem_free(Problem *p) { free(p->q), free(p->k), free(p->v), free(p->out); }

static MhaShape as_mha(const GqaShape *s) { return (MhaShape){s->B, s->H, s->T, s->S, s->D, s->causal, s->scale}; }

/* Shapes that exercise both paths of the grouped version: G*T <= 32 rows per group (decode) and
 * more (blocks), causal with T < S, T = S and T > S, odd sizes. {B, H, Hkv, T, S, D, causal} */
static const int SHAPES[][7] = {
    {1, 8, 8, 1, 300, 64, 1},  {2, 4, 4, 17, 29, 20, 1}, {1, 6, 6, 65, 65, 32, 1},  {2, 3, 3, 100, 37, 16, 1},
    {1, 8, 1, 1, 257, 64, 1},  {2, 8, 2, 3, 40, 32, 1},  {1, 9, 3, 17, 63, 80, 1},  {1, 16, 4, 33, 129, 64, 1},
    {2, 4, 1, 70, 50, 24, 1},  {1, 8, 2, 64, 64, 64, 0}, {1, 4, 2, 129, 127, 128, 0}, {3, 2, 1, 5, 5, 8, 0},
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

static Problem shape_problem(int i) {
    const int *x = SHAPES[i];
    return problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 100 + (uint64_t)i);
}

/* ==== against chapter 01 ========================================================================= */

START_TEST(test_equal_heads_are_chapter01_bitwise)
{
    /* Hkv = H: the reference is chapter 01's per-head loop with the identity mapping, and the
     * grouped version runs chapter 01's block kernel on the same rows: the same arithmetic */
    for (int i = 0; i < N_SHAPES; i++) {
        if (SHAPES[i][1] != SHAPES[i][2])
            continue;
        Problem p = shape_problem(i);
        MhaShape m = as_mha(&p.s);
        float *ref01 = malloc(n_q(&p.s) * 4), *omp01 = malloc(n_q(&p.s) * 4);
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
        free(ref01), free(omp01);
        problem_free(&p);
    }
}
END_TEST

START_TEST(test_groups_equal_chapter01_on_repeated_kv)
{
    /* Hkv < H: chapter 01 on K/V with each kv head repeated G times is the definition of GQA */
    for (int i = 0; i < N_SHAPES; i++) {
        if (SHAPES[i][1] == SHAPES[i][2])
            continue;
        Problem p = shape_problem(i);
        MhaShape m = as_mha(&p.s);
        size_t n_rep = (size_t)p.s.B * p.s.H * p.s.S * p.s.D;
        float *krep = malloc(n_rep * 4), *vrep = malloc(n_rep * 4), *ref01 = malloc(n_q(&p.s) * 4);
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
        free(krep), free(vrep), free(ref01);
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
    int n_case = 0, failed = 0;
    for (int i = 0; i < VERIFY_N_LENGTHS; i++)
        for (int j = 0; j < VERIFY_N_LENGTHS; j++)
            for (int causal = 0; causal <= 1; causal++, n_case++) {
                int T = VERIFY_LENGTHS[i], S = VERIFY_LENGTHS[j];
                if (testing_small() && (T > 257 || S > 257))
                    continue; /* under emulation: lengths up to 257, still several tiles (n_case goes on) */
                int D = VERIFY_HEAD_DIMS[n_case % VERIFY_N_HEAD_DIMS], B = 1 + n_case % 2;
                int H = VERIFY_HEAD_RATIOS[n_case % VERIFY_N_HEAD_RATIOS][0];
                int Hkv = VERIFY_HEAD_RATIOS[n_case % VERIFY_N_HEAD_RATIOS][1];
                if ((double)T * S * H * B > 3e5)
                    B = 1, H = 2, Hkv = 1;
                Problem p = problem_new(B, H, Hkv, T, S, D, causal, (uint64_t)n_case + 500);
                float *ref = malloc(n_q(&p.s) * 4);
                ck_assert_int_eq(gqa_attention_ref(&p.s, p.q, p.k, p.v, ref), 0);
                for (int kern = 2; kern <= GQA_CPU_KERNELS; kern++) {
                    char label[160];
                    snprintf(label, sizeof label, "kernel %d B=%d H=%d Hkv=%d T=%d S=%d D=%d causal=%d", kern, B, H, Hkv,
                             T, S, D, causal);
                    memset(p.out, 0xff, n_q(&p.s) * 4);
                    ck_assert_int_eq(gqa_attention_cpu(kern, &p.s, p.q, p.k, p.v, p.out), 0);
                    failed += compare_f32(label, p.out, ref, n_q(&p.s), ATOL, RTOL, 3).n_bad > 0;
                }
                free(ref);
                problem_free(&p);
            }
    ck_assert_msg(failed == 0, "%d grid cases failed (listed above)", failed);
}
END_TEST

START_TEST(test_versions_match_float64)
{
    for (int i = 0; i < N_SHAPES; i++) {
        Problem p = shape_problem(i);
        double *expected = malloc(n_q(&p.s) * sizeof(double));
        attention_f64(p.s.B, p.s.H, p.s.Hkv, p.s.T, p.s.S, p.s.D, p.s.causal, p.s.scale, p.q, p.k, p.v, expected);
        for (int kern = 1; kern <= GQA_CPU_KERNELS; kern++) {
            ck_assert_int_eq(gqa_attention_cpu(kern, &p.s, p.q, p.k, p.v, p.out), 0);
            CompareResult r = compare_f32_f64("vs float64", p.out, expected, n_q(&p.s), ATOL, RTOL, 5);
            ck_assert_msg(r.n_bad == 0, "shape %d kernel %d: %zu elements off", i, kern, r.n_bad);
        }
        free(expected);
        problem_free(&p);
    }
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
    GqaShape s = {1, 8, 3, 4, 4, 8, 0, 1.0f};
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
    float *x = malloc((size_t)B * T * 24 * 4), *y01 = malloc((size_t)B * T * 24 * 4), *y02 = malloc((size_t)B * T * 24 * 4);
    fill_normal(x, (size_t)B * T * 24, 5);
    ck_assert_int_eq(mha_layer_forward(&w, 2, x, B, T, 1, y01), 0);
    ck_assert_int_eq(gqa_layer_forward(&g, 2, x, B, T, 1, y02), 0);
    ck_assert_int_eq(memcmp(y01, y02, (size_t)B * T * 24 * 4), 0);
    free(x), free(y01), free(y02);
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
    float *x = malloc((size_t)B * T * C * 4), *y01 = malloc((size_t)B * T * C * 4), *y = malloc((size_t)B * T * C * 4);
    fill_normal(x, (size_t)B * T * C, 9);
    ck_assert_int_eq(mha_layer_forward(&w, 1, x, B, T, 1, y01), 0);
    for (int Hkv = 1; Hkv <= H; Hkv *= 2) {
        GqaWeights g;
        ck_assert_int_eq(gqa_weights_from_mha(&w, Hkv, &g), 0);
        ck_assert_int_eq(gqa_layer_forward(&g, 2, x, B, T, 1, y), 0);
        ck_assert_msg(compare_f32("identical heads", y, y01, (size_t)B * T * C, ATOL, RTOL, 3).n_bad == 0, "Hkv %d", Hkv);
        gqa_weights_free(&g);
    }
    free(x), free(y01), free(y);
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
    GqaShape s = {3, 8, 2, 1, 100, 16, 1, 0.25f};
    ck_assert_uint_eq(gqa_kv_bytes(&s), (size_t)2 * 3 * 2 * 100 * 16 * 4);
    ck_assert_uint_eq(gqa_scores_bytes(&s), (size_t)3 * 8 * 1 * 100 * 4);
}
END_TEST

/* ==== the program ================================================================================= */

static char tmp[4096];
static void tmp_setup(void) { temp_dir_create(tmp, sizeof tmp); }
static void tmp_teardown(void) { temp_dir_remove(tmp); }

static const char *tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmp, name);
    return buf;
}

static void write4(const char *name, const float *data, int a, int b, int c, int d)
{
    char path[4200];
    ck_assert_int_eq(npy_write(tmp_path(path, sizeof path, name), NPY_F32, 4,
                               (size_t[]){(size_t)a, (size_t)b, (size_t)c, (size_t)d}, data),
                     0);
}

START_TEST(test_attn_command_matches_float64)
{
    /* GQA shapes with odd sizes and causal T != S, end to end through .npy files */
    const int shapes[][7] = {{2, 6, 2, 17, 29, 20, 1}, {1, 9, 3, 31, 13, 7, 1}, {1, 4, 1, 1, 77, 33, 1}, {2, 8, 4, 65, 63, 5, 0}};
    char prog[4200], qp[4200], kp[4200], vp[4200], op[4200];
    program_path(prog, sizeof prog, "02_mqa_gqa");
    tmp_path(qp, sizeof qp, "q.npy"), tmp_path(kp, sizeof kp, "k.npy"), tmp_path(vp, sizeof vp, "v.npy");
    tmp_path(op, sizeof op, "o.npy");
    for (int i = 0; i < 4; i++) {
        const int *x = shapes[i];
        for (int kern = 1; kern <= GQA_CPU_KERNELS; kern++) {
            Problem p = problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 300 + (uint64_t)i);
            write4("q.npy", p.q, x[0], x[1], x[3], x[5]);
            write4("k.npy", p.k, x[0], x[2], x[4], x[5]);
            write4("v.npy", p.v, x[0], x[2], x[4], x[5]);
            char kernel[8];
            snprintf(kernel, sizeof kernel, "%d", kern);
            const char *argv[] = {prog, "attn", "--q", qp, "--k", kp, "--v", vp, "--out", op, "--device", "cpu",
                                  "--kernel", kernel, x[6] ? "--causal" : NULL, NULL};
            ProcResult r;
            ck_assert_int_eq(run_program(&r, argv), 0);
            ck_assert_msg(r.status == 0, "attn failed (%d): %s", r.status, r.err);
            Tensor o;
            ck_assert_msg(npy_read_tensor(op, 4, &o) == 0, "%s", error_message());
            ck_assert_uint_eq(o.numel, n_q(&p.s));
            double *expected = malloc(o.numel * sizeof(double));
            attention_f64(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 1.0 / sqrt((double)x[5]), p.q, p.k, p.v, expected);
            CompareResult c = compare_f32_f64("attn command", o.data, expected, o.numel, ATOL, RTOL, 5);
            ck_assert_msg(c.n_bad == 0, "shape %d kernel %d: %zu elements off", i, kern, c.n_bad);
            free(expected);
            tensor_free(&o);
            problem_free(&p);
        }
    }
}
END_TEST

static void expect_error(const char *const *args, const char *expect)
{
    char prog[4200];
    const char *argv[24] = {program_path(prog, sizeof prog, "02_mqa_gqa")};
    for (int j = 0; args[j] && j < 22; j++)
        argv[j + 1] = args[j];
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_msg(r.status == 1, "'%s': exit status %d, stderr: %s", expect, r.status, r.err);
    ck_assert_msg(count_lines(r.err) == 1, "'%s': expected one error line, got: %s", expect, r.err);
    ck_assert_msg(strstr(r.err, expect), "expected '%s' in: %s", expect, r.err);
}

START_TEST(test_attn_command_bad_heads)
{
    float buf[8 * 6 * 8];
    fill_normal(buf, 8 * 6 * 8, 11);
    write4("q8.npy", buf, 1, 8, 2, 8);  /* H = 8 */
    write4("k3.npy", buf, 1, 3, 6, 8);  /* Hkv = 3 */
    write4("k16.npy", buf, 1, 16, 3, 8); /* Hkv = 16 > H */
    char q[4200], k3[4200], k16[4200], o[4200];
    tmp_path(q, sizeof q, "q8.npy"), tmp_path(k3, sizeof k3, "k3.npy"), tmp_path(k16, sizeof k16, "k16.npy");
    tmp_path(o, sizeof o, "o.npy");
    expect_error((const char *[]){"attn", "--q", q, "--k", k3, "--v", k3, "--out", o, NULL},
                 "H = 8 query heads is not a multiple of Hkv = 3");
    expect_error((const char *[]){"attn", "--q", q, "--k", k16, "--v", k16, "--out", o, NULL},
                 "is not a multiple of Hkv = 16");
    expect_error((const char *[]){"attn", "--q", q, "--k", k3, "--v", k3, "--out", o, "--kernel", "3", "--device",
                                  "cpu", NULL},
                 "kernels 1..2");
    expect_error((const char *[]){"frobnicate", NULL}, "unknown subcommand");
}
END_TEST

START_TEST(test_convert_command)
{
    char p01[4200], p02[4200], in[4200], out[4200], path[4300];
    program_path(p01, sizeof p01, "01_mha");
    program_path(p02, sizeof p02, "02_mqa_gqa");
    tmp_path(in, sizeof in, "mha"), tmp_path(out, sizeof out, "gqa");
    ProcResult r;
    const char *init[] = {p01, "init-weights", "--out", in, "--dim", "32", "--heads", "8", "--head-dim", "4", NULL};
    ck_assert_int_eq(run_program(&r, init), 0);
    ck_assert_msg(r.status == 0, "%s", r.err);
    const char *conv[] = {p02, "convert", "--in", in, "--heads", "8", "--kv-heads", "2", "--out", out, NULL};
    ck_assert_int_eq(run_program(&r, conv), 0);
    ck_assert_msg(r.status == 0, "%s", r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "attention parameters 4096 -> 2560")); /* 32*4*(16+4) */
    /* the written wk is the group mean of the MHA heads */
    MhaWeights w;
    ck_assert_int_eq(mha_weights_load(in, 8, &w), 0);
    Tensor wk;
    snprintf(path, sizeof path, "%s/wk.npy", out);
    ck_assert_int_eq(npy_read_tensor(path, 2, &wk), 0);
    ck_assert_uint_eq(wk.shape[0], 2 * 4);
    ck_assert_uint_eq(wk.shape[1], 32);
    for (int c = 0; c < 32; c++) { /* kv head 1, row 0 = mean of MHA heads 4..7, row 0 */
        double m = 0;
        for (int h = 4; h < 8; h++)
            m += w.wk[(h * 4) * 32 + c];
        ck_assert_double_eq_tol(wk.data[(1 * 4) * 32 + c], m / 4, 1e-6);
    }
    tensor_free(&wk);
    mha_weights_free(&w);
    expect_error((const char *[]){"convert", "--in", in, "--heads", "8", "--kv-heads", "3", "--out", out, NULL},
                 "not a multiple");
    expect_error((const char *[]){"convert", "--in", in, "--heads", "5", "--kv-heads", "1", "--out", out, NULL},
                 "not H = 5 heads");
    expect_error((const char *[]){"convert", "--in", "/nonexistent", "--heads", "8", "--kv-heads", "1", "--out", out,
                                  NULL},
                 "cannot open");
    expect_error((const char *[]){"convert", "--in", in, "--heads", "8", "--out", out, NULL}, "missing --kv-heads");
}
END_TEST

START_TEST(test_help_and_verify)
{
    char prog[4200], line[256];
    program_path(prog, sizeof prog, "02_mqa_gqa");
    const char *subs[] = {"--help", "attn", "verify", "bench", "convert"};
    for (int i = 0; i < 5; i++) {
        const char *argv[] = {prog, subs[i], i ? "--help" : NULL, NULL};
        ProcResult r;
        ck_assert_int_eq(run_program(&r, argv), 0);
        ck_assert_msg(r.status == 0 && strstr(r.out, "usage: 02_mqa_gqa"), "%s --help: %s", subs[i], r.out);
    }
    /* under emulation the --smoke grid (lengths up to 17): the grid test above runs the kernels
     * on lengths up to 257 there, this one checks the command */
    const int small = testing_small();
    const char *argv[] = {prog, "verify", small ? "--smoke" : "--quick", "--device", "cpu", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_msg(r.status == 0, "verify failed: %s", r.out);
    int passed = -1, failed = -1;
    ck_assert_int_eq(sscanf(last_line(r.out, line, sizeof line), "%d passed, %d failed", &passed, &failed), 2);
    ck_assert_int_gt(passed, small ? 20 : 100);
    ck_assert_int_eq(failed, 0);
}
END_TEST

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
START_TEST(test_cuda_kernels_against_reference)
{
    for (int i = 0; i < N_SHAPES; i++) {
        Problem p = shape_problem(i);
        size_t qb = n_q(&p.s) * 4, kb = n_kv(&p.s) * 4;
        float *ref = malloc(qb);
        ck_assert_int_eq(gqa_attention_ref(&p.s, p.q, p.k, p.v, ref), 0);
        float *d_q = cuda_alloc(qb), *d_k = cuda_alloc(kb), *d_v = cuda_alloc(kb), *d_o = cuda_alloc(qb);
        cuda_upload(d_q, p.q, qb), cuda_upload(d_k, p.k, kb), cuda_upload(d_v, p.v, kb);
        for (int kern = 1; kern <= GQA_CUDA_KERNELS; kern++) {
            cuda_memset_nan(d_o, qb);
            ck_assert_int_eq(gqa_attention_cuda(kern, &p.s, d_q, d_k, d_v, d_o), 0);
            cuda_download(p.out, d_o, qb);
            CompareResult r = compare_f32("cuda", p.out, ref, n_q(&p.s), ATOL, RTOL, 5);
            ck_assert_msg(r.n_bad == 0, "cuda kernel %d, shape %d: %zu elements off", kern, i, r.n_bad);
        }
        cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o);
        free(ref);
        problem_free(&p);
    }
}
END_TEST
/* `attn --device cuda`, end to end: .npy files in, the program on the GPU, .npy out, against the
 * float64 oracle, every CUDA version. */
START_TEST(test_attn_command_on_the_gpu)
{
    char prog[4200], err[4096];
    program_path(prog, sizeof prog, "02_mqa_gqa");
    const int shapes[][7] = {{2, 8, 2, 33, 65, 80, 1}, {1, 9, 3, 17, 4, 32, 0}}; /* B H Hkv T S D causal */
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int *x = shapes[si];
        const size_t n = (size_t)x[0] * x[1] * x[3] * x[5];
        float *out = malloc(n * sizeof(float));
        double *want = malloc(n * sizeof(double));
        for (int kern = 1; kern <= GQA_CUDA_KERNELS; kern++) {
            const int status = testing_attn_command(prog, tmp, "cuda", kern, x[0], x[1], x[2], x[3], x[4], x[5], x[6],
                                                    700 + si, out, want, err, sizeof err);
            ck_assert_msg(status == 0, "shape %zu: attn --device cuda --kernel %d: status %d: %s", si, kern, status, err);
            ck_assert_msg(compare_f32_f64("attn --device cuda", out, want, n, ATOL, RTOL, 5).n_bad == 0,
                          "shape %zu kernel %d", si, kern);
        }
        free(out), free(want);
    }
}
END_TEST

#endif

/* ==== hostile inputs (common/hostile.h): one error line, exit 1, nothing written ================= */

#define ATTN02 "02_mqa_gqa", "attn"
static const HostileCase hostile_cases[] = {
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/missing.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "missing.npy"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/fifo", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "not a regular file"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/adir", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "is a folder"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/trunc.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "trunc.npy"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/k1.npy", "--out", "@/out.npy"},
     .expect = "k1.npy"},
    {.argv = {ATTN02, "--q", "@/k1.npy", "--k", "@/k.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "not a multiple"},
    {.argv = {ATTN02, "--q", "@/qbig.npy", "--k", "@/kbig.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "overflow"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k1.npy", "--v", "@/k1.npy", "--out", "@/out.npy", "--scale", "1e38"},
     .expect = "overflow"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/v.npy", "--out", "@/fifo"}, .expect = "FIFO"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/v.npy", "--out", "/dev/full"},
     .expect = "/dev/full"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "--v", "@/v.npy", "--out", "@/out.npy"}, .expect = "--k"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/v.npy", "--out", "@/out.npy", "--kernel", "0"},
     .expect = "--kernel"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/missing", "--heads", "16", "--kv-heads", "4", "--out", "@/out"},
     .expect = "missing"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/fifo", "--heads", "16", "--kv-heads", "4", "--out", "@/out"},
     .expect = "fifo"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/w", "--heads", "16", "--kv-heads", "3", "--out", "@/out"},
     .expect = "not a multiple"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/w", "--heads", "16", "--kv-heads", "0", "--out", "@/out"},
     .expect = "--kv-heads"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/w", "--heads", "5", "--kv-heads", "1", "--out", "@/out"},
     .expect = "H = 5"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/w", "--heads", "16", "--kv-heads", "4", "--out", "@/fifo"},
     .expect = "fifo"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/w", "--heads", "16", "--kv-heads", "4"}, .expect = "--out"},
    {.argv = {"02_mqa_gqa", "bench", "--out", "@/fifo", "--max-s", "1024", "--repeats", "1"}, .expect = "FIFO"},
    {.argv = {"02_mqa_gqa", "bench", "--max-s", "99999999999"}, .expect = "--max-s"},
};

START_TEST(test_hostile_inputs)
{
    hostile_fixtures(tmp);
    /* chapter 01's weights, for convert */
    char prog[4200], w[4200];
    snprintf(w, sizeof w, "%s/w", tmp);
    const char *init[] = {program_path(prog, sizeof prog, "01_mha"), "init-weights", "--out", w, "--dim", "64",
                          "--heads", "16", "--head-dim", "4", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, init), 0);
    ck_assert_msg(r.status == 0, "init-weights: %s", r.err);
    const int n = (int)(sizeof hostile_cases / sizeof hostile_cases[0]);
    int failed = hostile_run(tmp, hostile_cases, n);
    ck_assert_msg(failed == 0, "%d hostile cases failed (listed above)", failed);
}
END_TEST

/* ==== the suite ================================================================================= */

static Suite *gqa_suite(void)
{
    Suite *s = suite_create("02_mqa_gqa");
    TCase *tc = tcase_create("against chapter 01");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_equal_heads_are_chapter01_bitwise);
    tcase_add_test(tc, test_groups_equal_chapter01_on_repeated_kv);
    tcase_add_test(tc, test_repeat_kv_layout);
    tcase_add_test(tc, test_grouped_reads_kv_once_per_group);
    suite_add_tcase(s, tc);

    tc = tcase_create("grid");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_grid_against_reference);
    tcase_add_test(tc, test_versions_match_float64);
    suite_add_tcase(s, tc);

    tc = tcase_create("conversion");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_non_dividing_heads_are_errors);
    tcase_add_test(tc, test_pooling_group_size_one_is_identity);
    tcase_add_test(tc, test_pooling_is_the_group_mean);
    tcase_add_test(tc, test_identical_heads_convert_without_error);
    tcase_add_test(tc, test_parameter_counts);
    suite_add_tcase(s, tc);

    tc = tcase_create("program");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_attn_command_matches_float64);
    tcase_add_test(tc, test_attn_command_bad_heads);
    tcase_add_test(tc, test_convert_command);
    tcase_add_test(tc, test_help_and_verify);
    suite_add_tcase(s, tc);

    tc = tcase_create("hostile inputs");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_hostile_inputs);
    suite_add_tcase(s, tc);

    if (testing_cuda_cases("02_mqa_gqa")) { /* asked in a child process: this one must not start CUDA */
#if HAVE_CUDA
        tc = tcase_create("cuda");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_cuda_kernels_against_reference);
        tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
        tcase_add_test(tc, test_attn_command_on_the_gpu);
        suite_add_tcase(s, tc);
#endif
    }
    return s;
}

int main(void)
{
    error_set_program("test_02_mqa_gqa");
    SRunner *sr = srunner_create(gqa_suite());
    testing_suite_start("test_02_mqa_gqa");
    srunner_run_all(sr, CK_NORMAL);
    testing_suite_end();
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
