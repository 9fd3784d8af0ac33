/*
 * test_mha.c: chapter 01's Check suite.
 *
 * Chapter 01 has no previous chapter, so its reference is checked against cases whose answer
 * can be worked out by hand (equal keys give the mean of V, a dominant score picks one value,
 * the first causal row is v0, ...), and against a float64 re-implementation written here.
 * Then every faster version is checked against the reference on the grid of design.md §5, the
 * layer against explicit projections, and the foundation (common/): matmul, .npy files,
 * argument parsing, and the program's behaviour on bad input (one error line, exit status 1).
 * CUDA cases run only when a GPU is present and say so when skipped.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "01_mha/mha.h"
#include "common/args.h"
#include "common/attn_cli.h"
#include "common/bench.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/fileio.h"
#include "common/hostile.h"
#include "common/matmul.h"
#include "common/npy.h"
#include "common/plot.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/verify.h"
#include "common/vmath.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

#define ATOL 1e-5 /* design.md §5: fp32 against an fp32 reference */
#define RTOL 1e-4

/* ==== helpers ==================================================================================== */

typedef struct {
    MhaShape s;
    float *q, *k, *v, *out; /* q, out (B, H, T, D); k, v (B, H, S, D) */
} Problem;

static Problem problem_new(int B, int H, int T, int S, int D, int causal, uint64_t seed)
{
    Problem p = {{B, H, T, S, D, causal, 1.0f / sqrtf((float)D)}, NULL, NULL, NULL, NULL};
    size_t nq = (size_t)B * H * T * D, nk = (size_t)B * H * S * D;
    p.q = malloc(nq * sizeof(float)), p.out = malloc(nq * sizeof(float));
    p.k = malloc(nk * sizeof(float)), p.v = malloc(nk * sizeof(float));
    fill_normal(p.q, nq, seed), fill_normal(p.k, nk, seed + 1), fill_normal(p.v, nk, seed + 2);
    return p;
}

static void problem_free(Problem *p) { free(p->q), free(p->k), free(p->v), free(p->out); }

static size_t n_out(const MhaShape *s) { return (size_t)s->B * s->H * s->T * s->D; }

/* The float64 oracle (common/testing.c) on an MHA problem. */
static void mha_f64(const MhaShape *s, const float *q, const float *k, const float *v, double *out)
{
    attention_f64(s->B, s->H, s->H, s->T, s->S, s->D, s->causal, s->scale, q, k, v, out);
}

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
    double *expected = calloc(n_out(&p.s), sizeof(double));
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
    double *expected = calloc(n_out(&p.s), sizeof(double));
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
        double *expected = malloc(n_out(&p.s) * sizeof(double));
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
    double *expected = calloc(n_out(&p.s), sizeof(double));
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
    double *expected = calloc(n_out(&p.s), sizeof(double));
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
        double *expected = malloc(n_out(&p.s) * sizeof(double));
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
                float *ref = malloc(n_out(&p.s) * sizeof(float));
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
        double *expected = malloc(n_out(&p.s) * sizeof(double));
        mha_f64(&p.s, p.q, p.k, p.v, expected);
        check_all_cpu_kernels(&p, expected, ATOL, RTOL, "odd shape vs float64");
        free(expected);
        problem_free(&p);
    }
}
END_TEST

static char tmp[4096]; /* a fresh folder per test (fixtures below) */

/* ==== the layer ================================================================================= */

START_TEST(test_split_merge_heads_round_trip)
{
    const int B = 2, T = 5, H = 3, D = 4;
    size_t n = (size_t)B * T * H * D;
    float *x = malloc(n * sizeof(float)), *heads = malloc(n * sizeof(float)), *back = malloc(n * sizeof(float));
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
    float *x = malloc((size_t)B * T * C * sizeof(float));
    fill_normal(x, (size_t)B * T * C, 22);
    size_t nh = (size_t)B * H * T * D;
    float *q = malloc(nh * 4), *k = malloc(nh * 4), *v = malloc(nh * 4), *o = malloc(nh * 4);
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
    MhaShape s = {B, H, T, T, D, 1, 1.0f / sqrtf((float)D)};
    ck_assert_int_eq(mha_attention_ref(&s, q, k, v, o), 0);
    float *expected = malloc((size_t)B * T * C * sizeof(float)), *y = malloc((size_t)B * T * C * sizeof(float));
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
    snprintf(dir, sizeof dir, "%s/w", tmp);
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

/* ==== common/: matmul ============================================================================ */

START_TEST(test_matmul_against_triple_loop)
{
    const size_t sizes[][3] = {{1, 1, 1}, {1, 37, 19}, {5, 16, 8}, {6, 16, 64}, {13, 33, 7}, {64, 64, 64}, {97, 50, 31}};
    for (int i = 0; i < 7; i++) {
        size_t M = sizes[i][0], N = sizes[i][1], K = sizes[i][2];
        float *a = malloc(M * K * 4), *b = malloc(N * K * 4), *bt = malloc(N * K * 4);
        float *out = malloc(M * N * 4), *ref = malloc(M * N * 4);
        fill_normal(a, M * K, 30 + i), fill_normal(b, N * K, 40 + i);
        matmul_ref_nt(ref, a, b, M, N, K);
        matmul_nt(out, a, b, M, N, K);
        ck_assert_msg(compare_f32("matmul_nt", out, ref, M * N, ATOL, RTOL, 3).n_bad == 0, "nt %zux%zux%zu", M, N, K);
        transpose(bt, b, N, K); /* (K, N) */
        matmul_nn(out, a, bt, M, N, K);
        ck_assert_msg(compare_f32("matmul_nn", out, ref, M * N, ATOL, RTOL, 3).n_bad == 0, "nn %zux%zux%zu", M, N, K);
        /* accumulate: out = a b, then out += a b again gives 2 a b (exact doubling of ref) */
        matmul_nn_acc_ld(out, N, a, K, bt, N, M, N, K);
        for (size_t j = 0; j < M * N; j++)
            ref[j] *= 2.0f;
        ck_assert_msg(compare_f32("matmul_nn_acc", out, ref, M * N, ATOL, RTOL, 3).n_bad == 0, "acc %zux%zux%zu", M, N,
                      K);
        free(a), free(b), free(bt), free(out), free(ref);
    }
}
END_TEST

/* Batch invariance: a row of matmul_nt_rows_ld and of matmul_nn has the same bits alone as in a
 * product of many rows, at any position in it (chapter 06's engine relies on it). */
START_TEST(test_matmul_rows_do_not_depend_on_the_batch)
{
    const size_t Ms[] = {1, 2, 3, 5, 6, 7, 37}, N = 77, K = 83; /* N: 4 full panels + 13 */
    float *a = malloc(37 * K * 4), *b = malloc(N * K * 4), *bt = malloc(N * K * 4);
    float *all = malloc(37 * N * 4), *one = malloc(N * 4), *ref = malloc(37 * N * 4);
    fill_normal(a, 37 * K, 5), fill_normal(b, N * K, 6);
    transpose(bt, b, N, K);
    const char *names[4] = {"matmul_nt_rows_ld", "matmul_nn", "matmul_nn_acc_ld", "matmul_packed"};
    float *packed = malloc(matmul_packed_floats(N, K) * 4);
    matmul_pack_weights(packed, b, N, K);
    for (int f = 0; f < 4; f++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
            const size_t M = Ms[mi];
            for (size_t j = 0; j < M * N; j++)
                all[j] = f == 2 ? 0.25f * (float)(j % 7) : 0.0f; /* what the accumulating call adds to */
            if (f == 0)
                matmul_nt_rows_ld(all, N, a, K, b, K, M, N, K);
            else if (f == 1)
                matmul_nn(all, a, bt, M, N, K);
            else if (f == 2)
                matmul_nn_acc_ld(all, N, a, K, bt, N, M, N, K);
            else
                matmul_packed(all, N, a, K, packed, M, N, K);
            matmul_ref_nt(ref, a, b, M, N, K);
            for (size_t j = 0; j < M * N && f == 2; j++)
                ref[j] += 0.25f * (float)(j % 7);
            ck_assert(compare_f32(names[f], all, ref, M * N, ATOL, RTOL, 3).n_bad == 0);
            for (size_t i = 0; i < M; i++) {
                for (size_t j = 0; j < N; j++)
                    one[j] = f == 2 ? 0.25f * (float)((i * N + j) % 7) : 0.0f;
                if (f == 0)
                    matmul_nt_rows_ld(one, N, a + i * K, K, b, K, 1, N, K);
                else if (f == 1)
                    matmul_nn(one, a + i * K, bt, 1, N, K);
                else if (f == 2)
                    matmul_nn_acc_ld(one, N, a + i * K, K, bt, N, 1, N, K);
                else
                    matmul_packed(one, N, a + i * K, K, packed, 1, N, K);
                ck_assert_msg(memcmp(one, all + i * N, N * 4) == 0, "%s: row %zu of %zu differs from the row alone",
                              names[f], i, M);
            }
        }
    free(a), free(b), free(bt), free(all), free(one), free(ref), free(packed);
}
END_TEST

/* ==== common/: the vectorised exp ================================================================ */

START_TEST(test_vexp_against_libm)
{
    /* relative error within 4e-7 (a few ulp) over the range a softmax uses and beyond; exactly 0
     * below -87.34 (no denormals); e^88 at the top, where larger inputs are clamped */
    double worst = 0.0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.3f + (float)i * (88.0f + 87.3f) / 200000.0f;
        f32x8 v = vexp_f32x8(F32X8(x));
        double ref = exp((double)x), rel = fabs(v[3] - ref) / ref;
        worst = rel > worst ? rel : worst;
    }
    ck_assert_msg(worst < 4e-7, "worst relative error %g", worst);
    f32x8 low = vexp_f32x8((f32x8){-87.4f, -100.0f, -1e4f, -1e30f, -INFINITY, 0.0f, 88.0f, 1e4f});
    for (int l = 0; l < 5; l++)
        ck_assert_float_eq(low[l], 0.0f);
    ck_assert_float_eq(low[5], 1.0f);
    ck_assert_double_eq_tol(low[6], exp(88.0), exp(88.0) * 4e-7);
    ck_assert_float_eq(low[7], low[6]);
    /* the scaled-sum helper, tail lanes included: every length 0..19 */
    for (size_t n = 0; n < 20; n++) {
        float x[20], y[20];
        double sum = 0.0;
        for (size_t j = 0; j < n; j++)
            x[j] = y[j] = (float)j * 0.7f - 3.0f;
        float got = vexp_scaled_sum(x, n, 0.5f, 1.25f);
        for (size_t j = 0; j < n; j++) {
            double e = exp(0.5 * y[j] - 1.25);
            ck_assert_double_eq_tol(x[j], e, e * 4e-7);
            sum += e;
        }
        ck_assert_double_eq_tol(got, sum, sum * 1e-6 + 1e-30);
    }
}
END_TEST

/* ==== common/: .npy files ========================================================================= */

static void tmp_setup(void) { temp_dir_create(tmp, sizeof tmp); }
static void tmp_teardown(void) { temp_dir_remove(tmp); }

static const char *tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmp, name);
    return buf;
}

START_TEST(test_npy_round_trip)
{
    char path[4200];
    const size_t shapes[5][4] = {{0}, {7}, {3, 5}, {2, 1, 4}, {2, 3, 1, 5}};
    for (int ndim = 0; ndim <= 4; ndim++) {
        size_t numel = 1;
        for (int i = 0; i < ndim; i++)
            numel *= shapes[ndim][i];
        float *data = malloc(numel * 4);
        fill_normal(data, numel, 50 + ndim);
        tmp_path(path, sizeof path, "a.npy");
        ck_assert_int_eq(npy_write(path, NPY_F32, ndim, shapes[ndim], data), 0);
        NpyArray a;
        ck_assert_msg(npy_read(path, &a) == 0, "%s", error_message());
        ck_assert_int_eq(a.dtype, NPY_F32);
        ck_assert_int_eq(a.ndim, ndim);
        for (int i = 0; i < ndim; i++)
            ck_assert_uint_eq(a.shape[i], shapes[ndim][i]);
        ck_assert_uint_eq(a.numel, numel);
        ck_assert_int_eq(memcmp(a.data, data, numel * 4), 0);
        npy_free(&a);
        free(data);
    }
    int32_t ints[6] = {-3, 0, 1, 2147483647, -2147483647, 42};
    size_t shape[2] = {2, 3};
    ck_assert_int_eq(npy_write(path, NPY_I32, 2, shape, ints), 0);
    NpyArray a;
    ck_assert_int_eq(npy_read(path, &a), 0);
    ck_assert_int_eq(a.dtype, NPY_I32);
    ck_assert_int_eq(memcmp(a.data, ints, sizeof ints), 0);
    npy_free(&a);
    /* the header is padded so that the data starts on a 64-byte boundary */
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    ck_assert_int_eq((ftell(f) - (long)sizeof ints) % 64, 0);
    fclose(f);
}
END_TEST

/* Writes magic + version + header (+ padding to the declared length) + data. */
static void write_raw_npy(const char *path, int major, const char *header, long declared_len, size_t data_bytes)
{
    size_t hlen = strlen(header);
    size_t len = declared_len >= 0 ? (size_t)declared_len : hlen;
    unsigned char *buf = calloc(1, 12 + hlen + data_bytes + 1);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    buf[8] = (unsigned char)(len & 0xff);
    buf[9] = (unsigned char)(len >> 8);
    memcpy(buf + 10, header, hlen);
    write_bytes(path, buf, 10 + hlen + data_bytes);
    free(buf);
}

START_TEST(test_npy_malformed_files)
{
    const struct {
        const char *header; /* NULL: raw bytes below */
        int major;
        long declared;
        size_t data;
        const char *expect;
    } cases[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", 9, -1, 24, "version 9.0 is not supported"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", 1, 4000, 0, "truncated .npy header"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 1, -1, 24, "end with a newline"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }\n", 1, -1, 48, "dtype '<f8' is not supported"},
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }\n", 1, -1, 24, "big-endian"},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }\n", 1, -1, 24, "Fortran-order"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }\n", 1, -1, 24, "bad shape tuple"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }\n", 1, -1, 24, "negative dimension"},
        {"{'descr': '<f4', 'fortran_order': False, }\n", 1, -1, 4, "missing 'shape'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}\n", 1, -1, 8, "unknown key 'x'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", 1, -1, 20, "truncated: the header promises 6"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n", 1, -1, 28, "4 unexpected bytes"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }\n", 1, -1, 8, "overflows"},
        {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }\n", 1, -1, 8, "True or False"},
        {"['descr', '<f4']\n", 1, -1, 8, "expected '{'"},
    };
    char path[4200];
    NpyArray a;
    tmp_path(path, sizeof path, "bad.npy");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw_npy(path, cases[i].major, cases[i].header, cases[i].declared, cases[i].data);
        ck_assert_msg(npy_read(path, &a) == -1, "case %zu (%s) was accepted", i, cases[i].expect);
        ck_assert_msg(strstr(error_message(), cases[i].expect), "case %zu: got '%s', expected '%s'", i,
                      error_message(), cases[i].expect);
        ck_assert_ptr_nonnull(strstr(error_message(), path)); /* every message names the file */
    }
    write_bytes(path, "", 0);
    ck_assert_int_eq(npy_read(path, &a), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "not a .npy file"));
    write_bytes(path, "PK\x03\x04 this is a zip file", 24);
    ck_assert_int_eq(npy_read(path, &a), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "not a .npy file"));
    ck_assert_int_eq(npy_read("/nonexistent/q.npy", &a), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "cannot open"));
    ck_assert_int_eq(npy_read(tmp, &a), -1); /* a folder */
    ck_assert_ptr_nonnull(strstr(error_message(), "is a folder, expected a file"));
}
END_TEST

START_TEST(test_npy_tensor_rank_and_dtype)
{
    char path[4200];
    Tensor t;
    float data[6] = {1, 2, 3, 4, 5, 6};
    tmp_path(path, sizeof path, "t.npy");
    ck_assert_int_eq(npy_write(path, NPY_F32, 3, (size_t[]){1, 2, 3}, data), 0);
    ck_assert_int_eq(npy_read_tensor(path, 4, &t), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "has 3 dimensions, expected 4"));
    ck_assert_int_eq(npy_read_tensor(path, 3, &t), 0);
    ck_assert_uint_eq(t.shape[2], 3);
    ck_assert_float_eq(t.data[5], 6.0f);
    tensor_free(&t);
    ck_assert_int_eq(npy_write(path, NPY_I32, 1, (size_t[]){6}, data), 0);
    ck_assert_int_eq(npy_read_tensor(path, 1, &t), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "expected float32"));
    ck_assert_int_eq(npy_write("/nonexistent/dir/x.npy", NPY_F32, 1, (size_t[]){6}, data), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "cannot create"));
}
END_TEST

/* ==== common/: files a hostile user hands us (fileio) ============================================ */

/* Special files as inputs are refused at once, with what they are: a FIFO would block a plain
 * fopen() forever (nobody writes it), a folder or a device is not a file to read. */
START_TEST(test_special_files_as_inputs)
{
    char fifo[4200], path[4200];
    NpyArray a;
    tmp_path(fifo, sizeof fifo, "fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ck_assert_int_eq(npy_read(fifo, &a), -1); /* returns: the Check timeout would catch a hang */
    ck_assert_msg(strstr(error_message(), "fifo: is a FIFO, not a regular file"), "%s", error_message());
    ck_assert_int_eq(npy_read(tmp, &a), -1);
    ck_assert_msg(strstr(error_message(), "is a folder, expected a file"), "%s", error_message());
    ck_assert_int_eq(npy_read("/dev/zero", &a), -1);
    ck_assert_msg(strstr(error_message(), "/dev/zero: is a character device"), "%s", error_message());
    FILE *f = file_open_input(tmp_path(path, sizeof path, "missing.npy"));
    ck_assert_ptr_null(f);
    ck_assert_msg(strstr(error_message(), "missing.npy: cannot open: No such file"), "%s", error_message());
    /* the program: one line, exit status 1, well within the limit */
    char prog[4200];
    const char *argv[] = {program_path(prog, sizeof prog, "01_mha"), "attn", "--q", fifo, "--k", fifo, "--v", fifo,
                          "--out", tmp_path(path, sizeof path, "o.npy"), NULL};
    ProcResult r;
    ck_assert_int_eq(run_program_limited(&r, argv, 10, NULL), 0);
    ck_assert_msg(r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, "is a FIFO"), "status %d: %s", r.status,
                  r.err);
}
END_TEST

/* Outputs that cannot be renamed over: a folder and a socket-like thing are refused before any
 * work, a FIFO nobody reads is an error (not a hang), a character device is written in place
 * with every write checked; none of it leaves a file behind. */
START_TEST(test_special_files_as_outputs)
{
    char fifo[4200], before[4096], after[4096];
    const float data[4] = {1, 2, 3, 4};
    tmp_path(fifo, sizeof fifo, "fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    testing_folder_names(tmp, before, sizeof before);
    ck_assert_int_eq(npy_write(tmp, NPY_F32, 1, (size_t[]){4}, data), -1);
    ck_assert_msg(strstr(error_message(), "is a folder, expected a file"), "%s", error_message());
    ck_assert_int_eq(file_check_output(tmp), -1);
    ck_assert_int_eq(npy_write(fifo, NPY_F32, 1, (size_t[]){4}, data), -1);
    ck_assert_msg(strstr(error_message(), "fifo: is a FIFO that no process is reading"), "%s", error_message());
    ck_assert_int_eq(npy_write("/dev/full", NPY_F32, 1, (size_t[]){4}, data), -1);
    ck_assert_msg(strstr(error_message(), "/dev/full: write failed: No space left on device"), "%s", error_message());
    ck_assert_int_eq(npy_write("/dev/null", NPY_F32, 1, (size_t[]){4}, data), 0);
    char path[4200];
    ck_assert_int_eq(npy_write(tmp_path(path, sizeof path, "no/such/folder.npy"), NPY_F32, 1, (size_t[]){4}, data),
                     -1);
    ck_assert_msg(strstr(error_message(), "cannot create: No such file or directory"), "%s", error_message());
    ck_assert_int_eq(file_check_output(path), -1);
    testing_folder_names(tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
}
END_TEST

typedef struct {
    size_t n;
    const float *data;
} NpyJob;

static int write_npy_job(const char *path, void *ctx)
{
    const NpyJob *j = ctx;
    return npy_write(path, NPY_F32, 1, (size_t[]){j->n}, j->data);
}

/* A full disk or a file-size limit while writing: the previous file is left exactly as it was,
 * and no temporary file is left beside it. */
START_TEST(test_failed_write_keeps_the_previous_file)
{
    char path[4200], before[4096], after[4096], err[512];
    const char *previous = "a previous good output\n";
    tmp_path(path, sizeof path, "out.npy");
    write_bytes(path, previous, strlen(previous));
    ck_assert_int_eq(chmod(path, 0640), 0);
    testing_folder_names(tmp, before, sizeof before);
    float *data = calloc(1 << 16, sizeof(float));
    NpyJob job = {1 << 16, data}; /* 256 KiB against a limit of 16 KiB */
    const int status = testing_write_limited(write_npy_job, path, &job, 16 << 10, err, sizeof err);
    ck_assert_msg(status == 1 && strstr(err, "out.npy: write failed: File too large"), "status %d: %s", status, err);
    FILE *f = fopen(path, "rb");
    char got[256] = "";
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(fgets(got, sizeof got, f));
    fclose(f);
    ck_assert_str_eq(got, previous);
    testing_folder_names(tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
    /* a write that succeeds replaces it and keeps its permissions; a new file gets 0666 & ~umask */
    ck_assert_int_eq(write_npy_job(path, &job), 0);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0640);
    ck_assert_int_eq((long)st.st_size, 128 + (1 << 16) * 4);
    const mode_t old = umask(027);
    ck_assert_int_eq(write_npy_job(tmp_path(path, sizeof path, "new.npy"), &job), 0);
    umask(old);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0640);
    /* a symbolic link stays a link to the file it names, which gets the new data */
    char link[4200];
    ck_assert_int_eq(symlink("new.npy", tmp_path(link, sizeof link, "link.npy")), 0);
    job.n = 3;
    ck_assert_int_eq(write_npy_job(link, &job), 0);
    ck_assert_int_eq(lstat(link, &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq((long)st.st_size, 128 + 3 * 4);
    free(data);
}
END_TEST

static int write_tsv_rows(const char *path, void *ctx)
{
    (void)ctx;
    Tsv t;
    if (tsv_open(&t, path, NULL) != 0)
        return -1;
    tsv_header(&t, "a\tb");
    for (int i = 0; i < 20000; i++) /* ~300 KiB: the limit stops it, and tsv_row die()s */
        tsv_row(&t, "%d\t%d.5", i, i);
    tsv_close(&t);
    return 0;
}

/* A benchmark's rows whose write fails: die() (exit status 1), and its exit handler removes the
 * temporary file; an output still being written when a signal ends the program is removed too. */
START_TEST(test_dying_writer_leaves_nothing)
{
    char path[4200], before[4096], after[4096], err[512];
    const char *previous = "kind\tvalue\nold\t1\n";
    tmp_path(path, sizeof path, "rows.tsv");
    write_bytes(path, previous, strlen(previous));
    testing_folder_names(tmp, before, sizeof before);
    ck_assert_int_eq(testing_write_limited(write_tsv_rows, path, NULL, 32 << 10, err, sizeof err), 1);
    ck_assert_msg(strstr(err, "rows.tsv: write failed: File too large"), "%s", err);
    testing_folder_names(tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) { /* an output half written when SIGTERM comes */
        signal(SIGTERM, SIG_DFL); /* Check's own handler would end the whole test's process group */
        OutFile o;
        if (out_open(&o, path) != 0 || out_printf(&o, "half\n") != 0 || fflush(o.f) != 0)
            _exit(2);
        raise(SIGTERM);
        _exit(3);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM, "status %d", status);
    testing_folder_names(tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
    char got[256] = "";
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fread(got, 1, sizeof got - 1, f), strlen(previous));
    fclose(f);
    ck_assert_str_eq(got, previous);
}
END_TEST

/* Invisible characters in a name or a value are shown escaped in messages. */
START_TEST(test_error_quote)
{
    ck_assert_str_eq(error_quote("plain name.npy"), "plain name.npy");
    ck_assert_str_eq(error_quote("q\r.npy"), "q\\r.npy");
    ck_assert_str_eq(error_quote("a\tb\nc\x01\x7f\\"), "a\\tb\\nc\\x01\\x7f\\\\");
    const char *a = error_quote("one"), *b = error_quote("two"); /* several in one message */
    ck_assert_str_eq(a, "one");
    ck_assert_str_eq(b, "two");
    char *long_name = malloc(5000);
    memset(long_name, 'x', 4999), long_name[4999] = '\0';
    const char *cut = error_quote(long_name);
    ck_assert_uint_lt(strlen(cut), 1024);
    ck_assert_str_eq(cut + strlen(cut) - 3, "...");
    free(long_name);
}
END_TEST

/* Runs argv with descriptor 1 closed; stderr into err. Returns the exit status. */
static int run_with_stdout_closed(const char *const argv[], char *err, size_t len)
{
    FILE *e = tmpfile();
    ck_assert_ptr_nonnull(e);
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        dup2(fileno(e), STDERR_FILENO);
        close(STDOUT_FILENO);
        alarm(60);
        testing_exec(argv); /* through TEST_RUNNER under emulation */
        _exit(127);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    rewind(e);
    const size_t n = fread(err, 1, len - 1, e);
    err[n] = '\0';
    fclose(e);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Output that is lost is an error: stdout on a full disk or closed gives exit status 1 and one
 * line saying so; a name with a carriage return is shown escaped, on one line. */
START_TEST(test_lost_standard_output_is_an_error)
{
    char prog[4200], dir[4200], err[4096];
    program_path(prog, sizeof prog, "01_mha");
    tmp_path(dir, sizeof dir, "w");
    const char *init[] = {prog, "init-weights", "--out", dir, "--dim", "8", "--heads", "2", "--head-dim", "4", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program_limited(&r, init, 60, "/dev/full"), 0);
    ck_assert_msg(r.status == 1 && count_lines(r.err) == 1 &&
                      strstr(r.err, "01_mha: error: writing standard output: No space left on device"),
                  "status %d: %s", r.status, r.err);
    const char *help[] = {prog, "--help", NULL};
    ck_assert_int_eq(run_program_limited(&r, help, 60, "/dev/full"), 0);
    ck_assert_msg(r.status == 1 && strstr(r.err, "writing standard output"), "status %d: %s", r.status, r.err);
    const int status = run_with_stdout_closed(init, err, sizeof err);
    ck_assert_msg(status == 1 && count_lines(err) == 1 && strstr(err, "writing standard output: Bad file descriptor"),
                  "status %d: %s", status, err);
    ck_assert_int_eq(run_program_limited(&r, init, 60, NULL), 0); /* the same, with a working stdout */
    ck_assert_msg(r.status == 0, "%s", r.err);
    char bad[4200];
    snprintf(bad, sizeof bad, "%s/q\r.npy", tmp);
    const char *attn[] = {prog, "attn", "--q", bad, "--k", bad, "--v", bad, "--out", "/dev/null", NULL};
    ck_assert_int_eq(run_program_limited(&r, attn, 60, NULL), 0);
    ck_assert_msg(r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, "q\\r.npy: cannot open"), "status %d: %s",
                  r.status, r.err);
}
END_TEST

/* ==== common/: plots ============================================================================= */

/* plot_show names what went wrong in one line after the caller's lead (a chapter without a plot
 * script here); without gnuplot it writes nothing to f (plot_draw says so on stdout). */
START_TEST(test_plot_show_reports_a_failure)
{
    char dat[4200], line[8192] = "";
    const char *rows = "x\ty\n1\t2\n";
    write_bytes(tmp_path(dat, sizeof dat, "p.dat"), rows, strlen(rows));
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    const int rc = plot_show("no_such_chapter", "bench", dat, 0, f, "lead: ", "\n");
    rewind(f);
    const int got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    if (!plot_available()) {
        ck_assert_int_eq(rc, 1);
        ck_assert_int_eq(got, 0);
        return;
    }
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strncmp(line, "lead: (plot failed: ", 20) == 0, "%s", line);
    ck_assert_msg(strstr(line, "no_such_chapter.gp: plot script missing"), "%s", line);
}
END_TEST

/* ==== common/: arguments ========================================================================= */

START_TEST(test_args_errors)
{
    int n = 0, flag = 0;
    double x = 0;
    const char *s = NULL, *dev = "auto";
    ArgSpec specs[] = {
        {.name = "n", .kind = ARG_INT, .dest = &n, .metavar = "N", .help = "a count", .min = 1, .max = 10},
        {.name = "x", .kind = ARG_DOUBLE, .dest = &x, .metavar = "X", .help = "a number"},
        {.name = "flag", .kind = ARG_FLAG, .dest = &flag, .help = "a flag"},
        {.name = "s", .kind = ARG_STRING, .dest = &s, .metavar = "S", .help = "a name", .required = 1},
        {.name = "device", .kind = ARG_CHOICE, .dest = &dev, .choices = DEVICE_CHOICES, .help = "device"},
    };
    ArgCommand cmd = {"prog sub", "[options]", "A test command.", specs, 5};
    const struct {
        const char *argv[6];
        int argc;
        const char *expect;
    } bad[] = {
        {{"sub", "--s", "a", "--n", "11"}, 5, "--n expects an integer from 1 to 10, got '11'"},
        {{"sub", "--s", "a", "--n", "1x"}, 5, "--n expects an integer from 1 to 10, got '1x'"},
        {{"sub", "--s", "a", "--n", "99999999999"}, 5, "--n expects an integer from 1 to 10, got '99999999999'"},
        {{"sub", "--s", "a", "--x", "1e999"}, 5, "--x expects a finite number, got '1e999'"},
        {{"sub", "--s", "--n", "3"}, 4, "--s needs a value, got the option '--n'"},
        {{"sub", "--s", "-h"}, 3, "--s needs a value, got the option '-h'"},
        {{"sub", "--s", "a", "--x", "--flag"}, 5, "--x needs a value, got the option '--flag'"},
        {{"sub", "--s", "a", "--x", "-inf"}, 5, "--x expects a finite number, got '-inf'"},
        {{"sub", "--s", "a", "--device", "--flag"}, 5, "--device needs a value, got the option '--flag'"},
        {{"sub", "--s", "a", "--x", "nan"}, 5, "--x expects a finite number"},
        {{"sub", "--s", "a", "--x", ""}, 5, "--x expects a finite number"},
        {{"sub", "--s", "a", "--bogus"}, 4, "unknown option '--bogus'"},
        {{"sub", "--s"}, 2, "option '--s' needs a value"},
        {{"sub", "--n", "2"}, 3, "missing --s"},
        {{"sub", "--s", "a", "stray"}, 4, "unexpected argument 'stray'"},
        {{"sub", "--s", "a", "--device", "tpu"}, 5, "--device must be one of auto|cpu|cuda, got 'tpu'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(args_parse(&cmd, bad[i].argc, (char **)bad[i].argv) == -1, "case %zu accepted", i);
        ck_assert_msg(strstr(error_message(), bad[i].expect), "case %zu: got '%s'", i, error_message());
    }
    const char *good[] = {"sub", "--s", "name", "--n", "10", "--x=-2.5", "--flag", "--device", "cpu", NULL};
    ck_assert_int_eq(args_parse(&cmd, 9, (char **)good), 0);
    ck_assert_int_eq(n, 10);
    ck_assert_double_eq(x, -2.5);
    ck_assert_int_eq(flag, 1);
    ck_assert_str_eq(s, "name");
    ck_assert_str_eq(dev, "cpu");
    /* values that start with '-' on purpose: a negative number as its own word, "-" alone, and any
     * text after '=' */
    const char *dashes[] = {"sub", "--x", "-1e-3", "--s=--odd", NULL};
    ck_assert_msg(args_parse(&cmd, 4, (char **)dashes) == 0, "%s", error_message());
    ck_assert_double_eq(x, -1e-3);
    ck_assert_str_eq(s, "--odd");
    const char *dash[] = {"sub", "--s", "-", NULL};
    ck_assert_msg(args_parse(&cmd, 3, (char **)dash) == 0, "%s", error_message());
    ck_assert_str_eq(s, "-");
}
END_TEST

/* Two options that cannot go together are an error naming both (and --help says so), whatever
 * their order; either alone is fine. */
START_TEST(test_args_conflicts)
{
    const char *ids = NULL, *text = NULL;
    ArgSpec specs[] = {
        {.name = "prompt", .kind = ARG_STRING, .dest = &ids, .metavar = "IDS", .help = "ids"},
        {.name = "prompt-text", .kind = ARG_STRING, .dest = &text, .metavar = "TEXT", .help = "text",
         .conflicts = "prompt"},
    };
    ArgCommand cmd = {"prog gen", "[options]", "A test command.", specs, 2};
    const char *both[] = {"gen", "--prompt-text", "hi", "--prompt", "1 2", NULL};
    ck_assert_int_eq(args_parse(&cmd, 5, (char **)both), -1);
    ck_assert_msg(strstr(error_message(), "--prompt and --prompt-text cannot be given together"), "%s",
                  error_message());
    const char *reversed[] = {"gen", "--prompt", "1 2", "--prompt-text", "hi", NULL};
    ck_assert_int_eq(args_parse(&cmd, 5, (char **)reversed), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "cannot be given together"));
    const char *one[] = {"gen", "--prompt-text", "hi", NULL};
    ck_assert_int_eq(args_parse(&cmd, 3, (char **)one), 0);
    ck_assert_str_eq(text, "hi");
}
END_TEST

/* ==== common/: the memory budget ================================================================= */

/* The budget bounds what is held in total, not each request: allocations that fit alone are
 * refused once their sum passes it, with a message naming what, how much, what is held and the
 * budget; nothing large is allocated here. */
START_TEST(test_memory_budget)
{
    const size_t avail = mem_budget_bytes();
    ck_assert_uint_gt(avail, 0);
    /* one request beyond the memory available: refused before calloc sees it */
    ck_assert_ptr_null(mem_alloc(avail + 1, "the huge buffer"));
    ck_assert_msg(strstr(error_message(), "the huge buffer needs"), "%s", error_message());
    ck_assert_msg(strstr(error_message(), "of memory available ("), "%s", error_message());
    ck_assert_ptr_null(mem_alloc(SIZE_MAX, "the largest buffer")); /* no wrap in the header arithmetic */

    const size_t held = mem_current_bytes();
    mem_set_budget(held + (1u << 20));
    void *a = mem_alloc(600 << 10, "the first half");
    ck_assert_msg(a != NULL, "%s", error_message());
    ck_assert_int_eq(mem_check(600 << 10, "the second half"), -1);
    ck_assert_ptr_null(mem_alloc(600 << 10, "the second half"));
    ck_assert_msg(strstr(error_message(), "the second half needs 600.00 KiB; with the"), "%s", error_message());
    ck_assert_msg(strstr(error_message(), "of memory available (the budget set by mem_set_budget)"), "%s",
                  error_message());
    ck_assert_uint_eq(mem_current_bytes(), held + (600 << 10)); /* a refusal holds nothing */
    ck_assert_int_eq(mem_check(300 << 10, "a quarter"), 0);
    mem_free(a);
    void *b = mem_alloc(600 << 10, "the second half"); /* fits again once the first is freed */
    ck_assert_msg(b != NULL, "%s", error_message());
    mem_free(b);
    mem_set_budget(0);
    ck_assert_uint_eq(mem_budget_bytes() > 0, 1);
}
END_TEST

/* ==== the program: attn, --help, verify =========================================================== */

static void write_tensor(const char *dir, const char *name, const float *data, size_t b, size_t h, size_t n, size_t d)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ck_assert_int_eq(npy_write(path, NPY_F32, 4, (size_t[]){b, h, n, d}, data), 0);
}

START_TEST(test_attn_command_matches_float64)
{
    /* the design.md contract end to end: .npy in, program, .npy out, against float64 */
    const int shapes[][6] = {{2, 3, 17, 29, 20, 1}, {1, 2, 31, 13, 7, 1}, {1, 1, 5, 5, 3, 0}, {2, 2, 63, 65, 33, 0}};
    char prog[4200], qp[4200], kp[4200], vp[4200], op[4200];
    program_path(prog, sizeof prog, "01_mha");
    tmp_path(qp, sizeof qp, "q.npy"), tmp_path(kp, sizeof kp, "k.npy"), tmp_path(vp, sizeof vp, "v.npy");
    tmp_path(op, sizeof op, "o.npy");
    for (int i = 0; i < 4; i++) {
        const int *sh = shapes[i];
        for (int kern = 1; kern <= MHA_CPU_KERNELS; kern++) {
            Problem p = problem_new(sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], 300 + (uint64_t)i);
            if (i == 2)
                p.s.scale = 0.3f;
            write_tensor(tmp, "q.npy", p.q, sh[0], sh[1], sh[2], sh[4]);
            write_tensor(tmp, "k.npy", p.k, sh[0], sh[1], sh[3], sh[4]);
            write_tensor(tmp, "v.npy", p.v, sh[0], sh[1], sh[3], sh[4]);
            char kernel[8];
            snprintf(kernel, sizeof kernel, "%d", kern);
            const char *argv[20] = {prog, "attn", "--q", qp, "--k", kp, "--v", vp, "--out", op,
                                    "--device", "cpu", "--kernel", kernel};
            int argc = 14;
            if (sh[5])
                argv[argc++] = "--causal";
            if (i == 2)
                argv[argc++] = "--scale", argv[argc++] = "0.3";
            argv[argc] = NULL;
            ProcResult r;
            ck_assert_int_eq(run_program(&r, argv), 0);
            ck_assert_msg(r.status == 0, "attn failed (%d): %s", r.status, r.err);
            Tensor o;
            ck_assert_msg(npy_read_tensor(op, 4, &o) == 0, "%s", error_message());
            ck_assert_uint_eq(o.numel, n_out(&p.s));
            double *expected = malloc(o.numel * sizeof(double));
            mha_f64(&p.s, p.q, p.k, p.v, expected);
            CompareResult c = compare_f32_f64("attn command", o.data, expected, o.numel, ATOL, RTOL, 5);
            ck_assert_msg(c.n_bad == 0, "shape %d kernel %d: %zu elements off", i, kern, c.n_bad);
            free(expected);
            tensor_free(&o);
            problem_free(&p);
        }
    }
}
END_TEST

START_TEST(test_attn_command_bad_input)
{
    char prog[4200], d[4200];
    program_path(prog, sizeof prog, "01_mha");
    float buf[2 * 3 * 5 * 8];
    fill_normal(buf, 2 * 3 * 5 * 8, 60);
    write_tensor(tmp, "q.npy", buf, 1, 2, 5, 8);     /* B=1 H=2 T=5 D=8 */
    write_tensor(tmp, "k.npy", buf, 1, 2, 6, 8);     /* Hkv=2 S=6 */
    write_tensor(tmp, "k1.npy", buf, 1, 1, 6, 8);    /* Hkv=1: GQA, chapter 02 */
    write_tensor(tmp, "k_d4.npy", buf, 1, 2, 6, 4);  /* D mismatch */
    write_tensor(tmp, "k_b2.npy", buf, 2, 2, 6, 8);  /* B mismatch */
    write_tensor(tmp, "v_s7.npy", buf, 1, 2, 7, 8);  /* V unlike K */
    write_tensor(tmp, "q_t0.npy", buf, 1, 2, 0, 8);  /* T = 0 */
    buf[3] = NAN;
    write_tensor(tmp, "k_nan.npy", buf, 1, 2, 6, 8);
    ck_assert_int_eq(npy_write(tmp_path(d, sizeof d, "q3.npy"), NPY_F32, 3, (size_t[]){2, 5, 8}, buf), 0);
    char q[4200], k[4200], k1[4200], kd[4200], kb[4200], v7[4200], q0[4200], kn[4200], q3[4200], o[4200], tr[4200];
    tmp_path(q, sizeof q, "q.npy"), tmp_path(k, sizeof k, "k.npy"), tmp_path(k1, sizeof k1, "k1.npy");
    tmp_path(kd, sizeof kd, "k_d4.npy"), tmp_path(kb, sizeof kb, "k_b2.npy"), tmp_path(v7, sizeof v7, "v_s7.npy");
    tmp_path(q0, sizeof q0, "q_t0.npy"), tmp_path(kn, sizeof kn, "k_nan.npy"), tmp_path(q3, sizeof q3, "q3.npy");
    tmp_path(o, sizeof o, "o.npy"), tmp_path(tr, sizeof tr, "trunc.npy");
    /* a truncated copy of k.npy */
    FILE *f = fopen(k, "rb");
    char raw[4096];
    size_t n = fread(raw, 1, sizeof raw, f);
    fclose(f);
    write_bytes(tr, raw, n - 10);

    char why[256];
    int gpu = testing_cuda_available(why, sizeof why);
    const struct {
        const char *argv[16];
        const char *expect;
    } cases[] = {
        {{"attn", "--k", k, "--v", k, "--out", o}, "missing --q"},
        {{"attn", "--q", "/nonexistent.npy", "--k", k, "--v", k, "--out", o}, "cannot open"},
        {{"attn", "--q", q, "--k", k1, "--v", k1, "--out", o}, "chapter 02"},
        {{"attn", "--q", q, "--k", kd, "--v", kd, "--out", o}, "head dim differs"},
        {{"attn", "--q", q, "--k", kb, "--v", kb, "--out", o}, "batch differs"},
        {{"attn", "--q", q, "--k", k, "--v", v7, "--out", o}, "must have the same shape"},
        {{"attn", "--q", q0, "--k", k, "--v", k, "--out", o}, "at least 1"},
        {{"attn", "--q", q3, "--k", k, "--v", k, "--out", o}, "has 3 dimensions, expected 4"},
        {{"attn", "--q", q, "--k", tr, "--v", k, "--out", o}, "truncated"},
        {{"attn", "--q", q, "--k", kn, "--v", k, "--out", o}, "is NaN"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--scale", "abc"}, "expects a finite number"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--kernel", "3", "--device", "cpu"}, "kernels 1..2"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--kernel", "0"}, "--kernel expects an integer from 1 to 99, got '0'"},
        {{"attn", "--q", "--k", k, "--v", k, "--out", o}, "--q needs a value, got the option '--k'"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--scale", "nan"}, "--scale expects a finite number"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--scale", "1e39"}, "does not fit in a float"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--scale", "1e38"}, "scores can overflow float32"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--frobnicate"}, "unknown option '--frobnicate'"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "extra"}, "unexpected argument 'extra'"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", "/nonexistent/dir/o.npy"}, "cannot create"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--device", "tpu"}, "must be one of"},
        {{"transmogrify"}, "unknown subcommand 'transmogrify'"},
        {{"verify", "--kernel", "5"}, "has kernels 1..2"},
        {{"bench", "--max-t", "7"}, "--max-t expects an integer from"},
        {{"attn", "--q", q, "--k", k, "--v", k, "--out", o, "--device", gpu ? "cpu" : "cuda"},
         gpu ? NULL : "no usable GPU"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!cases[i].expect)
            continue;
        const char *argv[18] = {prog};
        for (int j = 0; j < 16 && cases[i].argv[j]; j++)
            argv[j + 1] = cases[i].argv[j];
        ProcResult r;
        ck_assert_int_eq(run_program(&r, argv), 0);
        ck_assert_msg(r.status == 1, "case %zu (%s): exit status %d, stderr: %s", i, cases[i].expect, r.status, r.err);
        ck_assert_msg(count_lines(r.err) == 1, "case %zu: expected one error line, got: %s", i, r.err);
        ck_assert_msg(strstr(r.err, cases[i].expect), "case %zu: expected '%s' in: %s", i, cases[i].expect, r.err);
        ck_assert_msg(strncmp(r.err, "01_mha: error: ", 15) == 0, "case %zu: %s", i, r.err);
    }
}
END_TEST

/* Scores beyond float32 from finite inputs (--scale 1e38; q and k of 1e20) are refused before
 * any work, naming the overflow, and the out file is not written; --scale 0 and a negative scale
 * are scales like any other (0: every key weighs the same, the output is the mean of V). */
START_TEST(test_attn_refuses_overflowing_scores)
{
    char prog[4200], q[4200], k[4200], v[4200], big[4200], o[4200];
    program_path(prog, sizeof prog, "01_mha");
    enum { T = 3, S = 4, D = 8 };
    float buf[S * D], huge[S * D];
    fill_normal(buf, S * D, 61);
    for (int i = 0; i < S * D; i++)
        huge[i] = 1e20f * buf[i];
    write_tensor(tmp, "q.npy", buf, 1, 1, T, D);
    write_tensor(tmp, "k.npy", buf, 1, 1, S, D);
    write_tensor(tmp, "v.npy", buf, 1, 1, S, D);
    write_tensor(tmp, "big.npy", huge, 1, 1, T, D);
    write_tensor(tmp, "bigk.npy", huge, 1, 1, S, D);
    char bigk[4200];
    tmp_path(q, sizeof q, "q.npy"), tmp_path(k, sizeof k, "k.npy"), tmp_path(v, sizeof v, "v.npy");
    tmp_path(big, sizeof big, "big.npy"), tmp_path(bigk, sizeof bigk, "bigk.npy"), tmp_path(o, sizeof o, "o.npy");
    const char *refused[][12] = {
        {prog, "attn", "--q", q, "--k", k, "--v", v, "--out", o, "--scale", "1e38"},
        {prog, "attn", "--q", big, "--k", bigk, "--v", v, "--out", o, "--scale", "1"},
    };
    for (int i = 0; i < 2; i++) {
        const char *argv[13] = {0};
        memcpy(argv, refused[i], sizeof refused[i]);
        ProcResult r;
        ck_assert_int_eq(run_program(&r, argv), 0);
        ck_assert_msg(r.status == 1, "case %d: status %d: %s", i, r.status, r.err);
        ck_assert_msg(count_lines(r.err) == 1 && strstr(r.err, "the attention scores can overflow float32"), "case %d: %s",
                      i, r.err);
        ck_assert_msg(access(o, F_OK) != 0, "case %d: %s was written", i, o);
    }
    const char *scales[] = {"0", "-1"};
    for (int i = 0; i < 2; i++) {
        const char *argv[] = {prog, "attn", "--q", q, "--k", k, "--v", v, "--out", o, "--scale", scales[i], NULL};
        ProcResult r;
        ck_assert_int_eq(run_program(&r, argv), 0);
        ck_assert_msg(r.status == 0, "--scale %s: status %d: %s", scales[i], r.status, r.err);
        Tensor out;
        ck_assert_msg(npy_read_tensor(o, 4, &out) == 0, "%s", error_message());
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++) {
                double mean = 0.0;
                for (int s = 0; s < S; s++)
                    mean += buf[s * D + d] / (double)S;
                ck_assert(isfinite(out.data[t * D + d]));
                if (i == 0)
                    ck_assert_double_eq_tol(out.data[t * D + d], mean, 1e-5);
            }
        tensor_free(&out);
    }
}
END_TEST

START_TEST(test_help_everywhere)
{
    char prog[4200];
    program_path(prog, sizeof prog, "01_mha");
    const char *subs[] = {NULL, "attn", "verify", "bench", "init-weights"};
    for (int i = 0; i < 5; i++) {
        const char *argv[] = {prog, subs[i] ? subs[i] : "--help", subs[i] ? "--help" : NULL, NULL};
        ProcResult r;
        ck_assert_int_eq(run_program(&r, argv), 0);
        ck_assert_msg(r.status == 0, "%s --help: status %d", subs[i] ? subs[i] : "", r.status);
        ck_assert_msg(strstr(r.out, "usage: 01_mha"), "%s --help printed: %s", subs[i] ? subs[i] : "", r.out);
    }
}
END_TEST

/* A CPU run must not pay for the GPU code (cuBLAS alone is ~600 MB of libraries; linked, it held
 * `--help` at 200 MiB of resident memory): the test binary, linked like the programs, maps no CUDA
 * library after running attention on the CPU, and every program's --help stays under 20 MiB. */
static int maps_mention(const char *what)
{
    FILE *f = fopen("/proc/self/maps", "r");
    ck_assert_msg(f != NULL, "cannot read /proc/self/maps");
    char line[4096];
    int found = 0;
    while (fgets(line, sizeof line, f))
        found |= strstr(line, what) != NULL;
    fclose(f);
    return found;
}

START_TEST(test_cpu_run_maps_no_gpu_library)
{
    Device dev;
    ck_assert_int_eq(device_resolve("cpu", &dev), 0);
    Problem p = problem_new(1, 2, 9, 9, 8, 1, 77);
    float *out = malloc(n_out(&p.s) * sizeof(float));
    ck_assert_int_eq(mha_attention_cpu(0, &p.s, p.q, p.k, p.v, out), 0);
    ck_assert_msg(!maps_mention("libcublas"), "cuBLAS is mapped after a CPU run");
    ck_assert_msg(!maps_mention("libcudart"), "the shared CUDA runtime is mapped after a CPU run");
    ck_assert_msg(!maps_mention("libcuda.so"), "the CUDA driver is mapped after a CPU run");
    free(out);
    problem_free(&p);

#if !defined(__SANITIZE_ADDRESS__) /* ASan's shadow memory alone is larger than the bound */
    const char *programs[] = {"01_mha", "02_mqa_gqa", "03_flash", "04_kvcache", "05_paged", "06_batching"};
    for (int i = 0; i < 6; i++) {
        char prog[4200];
        program_path(prog, sizeof prog, programs[i]);
        const char *argv[] = {prog, "--help", NULL};
        ProcResult r;
        ck_assert_int_eq(run_program(&r, argv), 0);
        ck_assert_msg(r.status == 0, "%s --help: status %d", programs[i], r.status);
        ck_assert_msg(r.max_rss_kib < 20 * 1024, "%s --help peaked at %ld KiB of resident memory", programs[i],
                      r.max_rss_kib);
    }
#endif
}
END_TEST

START_TEST(test_verify_command_quick)
{
    char prog[4200], line[256];
    program_path(prog, sizeof prog, "01_mha");
    /* under emulation the --smoke grid (lengths up to 17): the grid test above runs the kernels
     * on lengths up to 257 there, this one checks the command */
    const int small = testing_small();
    const char *argv[] = {prog, "verify", small ? "--smoke" : "--quick", "--device", "cpu", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_msg(r.status == 0, "verify failed: %s", r.out);
    last_line(r.out, line, sizeof line);
    int passed = -1, failed = -1;
    ck_assert_int_eq(sscanf(line, "%d passed, %d failed", &passed, &failed), 2);
    ck_assert_int_gt(passed, small ? 20 : 100);
    ck_assert_int_eq(failed, 0);
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
        float *ref = malloc(qb);
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
    float *x = malloc(n * 4), *y = malloc(n * 4), *ref = malloc(n * 4);
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
/* `attn --device cuda`, end to end: .npy files in, the program on the GPU, .npy out, against the
 * float64 oracle, every CUDA version. */
START_TEST(test_attn_command_on_the_gpu)
{
    char prog[4200], err[4096];
    program_path(prog, sizeof prog, "01_mha");
    const int shapes[][7] = {{2, 3, 3, 37, 70, 64, 1}, {1, 2, 2, 5, 5, 128, 0}}; /* B H Hkv T S D causal */
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int *x = shapes[si];
        const size_t n = (size_t)x[0] * x[1] * x[3] * x[5];
        float *out = malloc(n * sizeof(float));
        double *want = malloc(n * sizeof(double));
        for (int kern = 1; kern <= MHA_CUDA_KERNELS; kern++) {
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

#define ATTN01 "01_mha", "attn"
#define GOOD_KV "--k", "@/k.npy", "--v", "@/v.npy"
static const HostileCase hostile_cases[] = {
    {.argv = {ATTN01, "--q", "@/missing.npy", GOOD_KV, "--out", "@/out.npy"}, .expect = "missing.npy"},
    {.argv = {ATTN01, "--q", "@/fifo", GOOD_KV, "--out", "@/out.npy"}, .expect = "not a regular file"},
    {.argv = {ATTN01, "--q", "@/adir", GOOD_KV, "--out", "@/out.npy"}, .expect = "is a folder"},
    {.argv = {ATTN01, "--q", "@/trunc.npy", GOOD_KV, "--out", "@/out.npy"}, .expect = "trunc.npy"},
    {.argv = {ATTN01, "--q", "@/empty.npy", GOOD_KV, "--out", "@/out.npy"}, .expect = "empty.npy"},
    {.argv = {ATTN01, "--q", "@/2d.npy", GOOD_KV, "--out", "@/out.npy"}, .expect = "2d.npy"},
    {.argv = {ATTN01, "--q", "@/q.npy", "--k", "@/nan.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "nan.npy"},
    {.argv = {ATTN01, "--q", "@/q.npy", "--k", "@/k1.npy", "--v", "@/k1.npy", "--out", "@/out.npy"},
     .expect = "Hkv = 1"},
    {.argv = {ATTN01, "--q", "@/qbig.npy", "--k", "@/kbig.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "overflow"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/out.npy", "--scale", "1e38"}, .expect = "overflow"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/out.npy", "--scale", "nan"}, .expect = "--scale"},
    {.argv = {ATTN01, "--q", "--k", "@/k.npy", "--v", "@/v.npy", "--out", "@/out.npy"}, .expect = "--q"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/fifo"}, .expect = "FIFO"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/out"}, .expect = "is a folder"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/nodir/o.npy"}, .expect = "nodir"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "/dev/full"}, .expect = "/dev/full"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/out.npy", "--kernel", "99"}, .expect = "--kernel"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/out.npy", "--kernel", "99999999999"},
     .expect = "--kernel"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/out.npy", "--device", "gpu"}, .expect = "--device"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV, "--out", "@/out.npy", "--frobnicate"}, .expect = "--frobnicate"},
    {.argv = {ATTN01, "--q", "@/q\r.npy", GOOD_KV, "--out", "@/out.npy"}, .expect = "\\r"},
    {.argv = {ATTN01, "--q", "@/q.npy", GOOD_KV}, .expect = "--out"},
    {.argv = {"01_mha", "init-weights", "--out", "@/fifo"}, .expect = "fifo"},
    {.argv = {"01_mha", "init-weights", "--out", "@/out", "--dim", "0"}, .expect = "--dim"},
    {.argv = {"01_mha", "init-weights", "--out", "@/out", "--heads", "-3"}, .expect = "--heads"},
    {.argv = {"01_mha", "bench", "--out", "@/fifo", "--max-t", "128", "--repeats", "1"}, .expect = "FIFO"},
    {.argv = {"01_mha", "bench", "--max-t", "-5"}, .expect = "--max-t"},
    {.argv = {"01_mha", "bench", "--repeats", "0"}, .expect = "--repeats"},
    {.argv = {"01_mha", "nonsense"}, .expect = "nonsense"},
};

START_TEST(test_hostile_inputs)
{
    hostile_fixtures(tmp);
    const int n = (int)(sizeof hostile_cases / sizeof hostile_cases[0]);
    int failed = hostile_run(tmp, hostile_cases, n);
    ck_assert_msg(failed == 0, "%d hostile cases failed (listed above)", failed);
}
END_TEST

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
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_weights_save_load);
    tcase_add_test(tc, test_split_merge_heads_round_trip);
    tcase_add_test(tc, test_layer_matches_explicit_projections);
    suite_add_tcase(s, tc);

    tc = tcase_create("common");
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_plot_show_reports_a_failure);
    tcase_add_test(tc, test_matmul_against_triple_loop);
    tcase_add_test(tc, test_matmul_rows_do_not_depend_on_the_batch);
    tcase_add_test(tc, test_vexp_against_libm);
    tcase_add_test(tc, test_npy_round_trip);
    tcase_add_test(tc, test_npy_malformed_files);
    tcase_add_test(tc, test_npy_tensor_rank_and_dtype);
    tcase_add_test(tc, test_special_files_as_inputs);
    tcase_add_test(tc, test_special_files_as_outputs);
    tcase_add_test(tc, test_failed_write_keeps_the_previous_file);
    tcase_add_test(tc, test_dying_writer_leaves_nothing);
    tcase_add_test(tc, test_error_quote);
    tcase_add_test(tc, test_args_errors);
    tcase_add_test(tc, test_args_conflicts);
    tcase_add_test(tc, test_memory_budget);
    suite_add_tcase(s, tc);

    tc = tcase_create("program");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_attn_command_matches_float64);
    tcase_add_test(tc, test_attn_command_bad_input);
    tcase_add_test(tc, test_attn_refuses_overflowing_scores);
    tcase_add_test(tc, test_help_everywhere);
    tcase_add_test(tc, test_lost_standard_output_is_an_error);
    tcase_add_test(tc, test_cpu_run_maps_no_gpu_library);
    tcase_add_test(tc, test_verify_command_quick);
    suite_add_tcase(s, tc);

    tc = tcase_create("hostile inputs");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
    tcase_add_test(tc, test_hostile_inputs);
    suite_add_tcase(s, tc);

    if (testing_cuda_cases("01_mha")) { /* asked in a child process: this one must not start CUDA */
#if HAVE_CUDA
        tc = tcase_create("cuda");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_cuda_kernels_against_reference);
        tcase_add_test(tc, test_cuda_layer_against_cpu);
        tcase_add_checked_fixture(tc, tmp_setup, tmp_teardown);
        tcase_add_test(tc, test_attn_command_on_the_gpu);
        suite_add_tcase(s, tc);
#endif
    }
    return s;
}

int main(void)
{
    error_set_program("test_01_mha");
    SRunner *sr = srunner_create(mha_suite());
    testing_suite_start("test_01_mha");
    srunner_run_all(sr, CK_NORMAL);
    testing_suite_end();
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
