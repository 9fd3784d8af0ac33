/*
 * test_numeric.c: common/'s arithmetic and memory, tested where they live: the matrix products
 * every chapter multiplies with (matmul.c, against a triple loop; row by row: a row's bits do
 * not depend on the batch it is in; bit for bit against their documented order of operations), the vectorised exp of the softmaxes (vmath.h, against libm),
 * and the memory budget that refuses what would not fit (tensor.c).
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/compare.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/tensor.h"
#include "common/test_common.h"
#include "common/testing.h"
#include "common/vmath.h"

/* ==== matmul ====================================================================================== */

START_TEST(test_matmul_against_triple_loop)
{
    const size_t sizes[][3] = {{1, 1, 1}, {1, 37, 19}, {5, 16, 8}, {6, 16, 64}, {13, 33, 7}, {64, 64, 64}, {97, 50, 31}};
    for (int i = 0; i < 7; i++) {
        size_t M = sizes[i][0], N = sizes[i][1], K = sizes[i][2];
        float *a = xmalloc(M * K * 4, "a"), *b = xmalloc(N * K * 4, "b"), *bt = xmalloc(N * K * 4, "bt");
        float *out = xmalloc(M * N * 4, "out"), *ref = xmalloc(M * N * 4, "ref");
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
    float *a = xmalloc(37 * K * 4, "a"), *b = xmalloc(N * K * 4, "b"), *bt = xmalloc(N * K * 4, "bt");
    float *all = xmalloc(37 * N * 4, "all"), *one = xmalloc(N * 4, "one"), *ref = xmalloc(37 * N * 4, "ref");
    fill_normal(a, 37 * K, 5), fill_normal(b, N * K, 6);
    transpose(bt, b, N, K);
    const char *names[4] = {"matmul_nt_rows_ld", "matmul_nn", "matmul_nn_acc_ld", "matmul_packed"};
    float *packed = xmalloc(matmul_packed_floats(N, K) * 4, "packed");
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

/* The documented arithmetic of the products, written out in scalar C with fmaf: a dot product
 * (matmul_nt_rows_ld) is 16 partial sums, p[i] the chain of k = i mod 16 in order, folded as
 * h[i] = p[i] + p[i + 8] and ((h0+h1) + (h2+h3)) + ((h4+h5) + (h6+h7)), then the K % 16 tail in
 * order; an element of matmul_nn and matmul_packed is one chain over k in order. Bit for bit:
 * so a build for any vector width (AVX-512 here, AVX2 in the memcheck build, NEON in the arm64
 * check) that passes this test gives the same bits as every other. */
static float dot_in_documented_order(const float *a, const float *b, size_t K)
{
    const size_t K16 = K / 16 * 16;
    float p[16] = {0}, h[8];
    for (size_t k = 0; k < K16; k++)
        p[k % 16] = fmaf(a[k], b[k], p[k % 16]);
    for (int i = 0; i < 8; i++)
        h[i] = p[i] + p[i + 8];
    float sum = ((h[0] + h[1]) + (h[2] + h[3])) + ((h[4] + h[5]) + (h[6] + h[7]));
    for (size_t k = K16; k < K; k++)
        sum = fmaf(a[k], b[k], sum);
    return sum;
}

START_TEST(test_products_have_the_documented_bits)
{
    /* N = 200: every block width of the few-rows path (128 + 64 + 8 with AVX-512) */
    const size_t Ms[] = {1, 3, 4, 7, 13}, Ks[] = {16, 83, 128, 200}, Ns[] = {37, 200};
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0] * 2; ki++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
            const size_t M = Ms[mi], K = Ks[ki / 2], N = Ns[ki % 2];
            float *a = xmalloc(M * K * 4, "a"), *b = xmalloc(N * K * 4, "b"), *bt = xmalloc(N * K * 4, "bt");
            float *out = xmalloc(M * N * 4, "out"), *packed = xmalloc(matmul_packed_floats(N, K) * 4, "packed");
            fill_normal(a, M * K, 60 + ki), fill_normal(b, N * K, 70 + mi);
            transpose(bt, b, N, K);
            matmul_pack_weights(packed, b, N, K);
            for (int f = 0; f < 3; f++) {
                if (f == 0)
                    matmul_nt_rows_ld(out, N, a, K, b, K, M, N, K);
                else if (f == 1)
                    matmul_nn(out, a, bt, M, N, K);
                else
                    matmul_packed(out, N, a, K, packed, M, N, K);
                for (size_t i = 0; i < M; i++)
                    for (size_t j = 0; j < N; j++) {
                        float want = 0.0f;
                        if (f == 0)
                            want = dot_in_documented_order(a + i * K, b + j * K, K);
                        else
                            for (size_t k = 0; k < K; k++)
                                want = fmaf(a[i * K + k], b[j * K + k], want);
                        ck_assert_msg(memcmp(&want, &out[i * N + j], 4) == 0, "%s M %zu K %zu (%zu, %zu): %a, not %a",
                                      f == 0 ? "dot" : f == 1 ? "matmul_nn" : "matmul_packed", M, K, i, j,
                                      (double)out[i * N + j], (double)want);
                    }
            }
            free(a), free(b), free(bt), free(out), free(packed);
        }
}
END_TEST

/* ==== the vectorised exp ========================================================================== */

START_TEST(test_vexp_against_libm)
{
    /* relative error within 4e-7 (a few ulp) over the range a softmax uses and beyond; exactly 0
     * below -87.34 (no denormals); e^88 at the top, where larger inputs are clamped */
    double worst = 0.0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.3f + (float)i * (88.0f + 87.3f) / 200000.0f;
        fvec v = vexp(fvec_splat(x));
        double ref = exp((double)x), rel = fabs(v[VL - 1] - ref) / ref;
        worst = rel > worst ? rel : worst;
    }
    ck_assert_msg(worst < 4e-7, "worst relative error %g", worst);
    const float edge[8] = {-87.4f, -100.0f, -1e4f, -1e30f, -INFINITY, 0.0f, 88.0f, 1e4f};
    float low[8];
    for (int l = 0; l < 8; l++) { /* lane l % VL of the vector, whatever this build's width */
        fvec in = fvec_splat(1.0f);
        in[l % VL] = edge[l];
        low[l] = vexp(in)[l % VL];
    }
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

/* ==== the memory budget =========================================================================== */

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

TestingCase common_numeric_case(void)
{
    return (TestingCase){.name = "matmul, exp, memory",
                         .tests = {test_matmul_against_triple_loop, test_matmul_rows_do_not_depend_on_the_batch,
                                   test_products_have_the_documented_bits,
                                   test_vexp_against_libm, test_memory_budget}};
}
