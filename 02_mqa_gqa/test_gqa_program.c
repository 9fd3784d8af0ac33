/*
 * test_gqa_program.c: chapter 02's program end to end (attn against float64, bad head counts,
 * convert, --help and verify), its CUDA versions, and hostile inputs: the cases "program",
 * "hostile inputs" and "cuda" of chapter 02's suite (test_gqa.c holds the rest and main()).
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "01_mha/mha.h"
#include "02_mqa_gqa/gqa.h"
#include "02_mqa_gqa/test_gqa.h"
#include "common/compare.h"
#include "common/hostile.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

/* ==== the program ================================================================================= */

static void write4(const char *name, const float *data, int a, int b, int c, int d)
{
    char path[4200];
    ck_assert_int_eq(npy_write(testing_tmp_path(path, sizeof path, name), NPY_F32, 4,
                               (size_t[]){(size_t)a, (size_t)b, (size_t)c, (size_t)d}, data),
                     0);
}

START_TEST(test_attn_command_matches_float64)
{
    /* GQA shapes with odd sizes and causal T != S, end to end through .npy files */
    const int shapes[][7] = {{2, 6, 2, 17, 29, 20, 1}, {1, 9, 3, 31, 13, 7, 1}, {1, 4, 1, 1, 77, 33, 1}, {2, 8, 4, 65, 63, 5, 0}};
    char prog[4200], err[4096];
    program_path(prog, sizeof prog, "02_mqa_gqa");
    for (int i = 0; i < 4; i++) {
        const int *x = shapes[i]; /* B H Hkv T S D causal */
        const size_t n = (size_t)x[0] * x[1] * x[3] * x[5];
        float *out = floats(n);
        double *expected = mem_alloc_or_die(n * sizeof(double), "float64 attention (B, H, T, D)");
        for (int kern = 1; kern <= GQA_CPU_KERNELS; kern++) {
            const int status = testing_attn_command(prog, testing_tmp, "cpu", kern, x[0], x[1], x[2], x[3], x[4], x[5],
                                                    x[6], 300 + (uint64_t)i, out, expected, err, sizeof err);
            ck_assert_msg(status == 0, "attn failed (%d): %s", status, err);
            CompareResult c = compare_f32_f64("attn command", out, expected, n, ATOL, RTOL, 5);
            ck_assert_msg(c.n_bad == 0, "shape %d kernel %d: %zu elements off", i, kern, c.n_bad);
        }
        mem_free(out), mem_free(expected);
    }
}
END_TEST

START_TEST(test_attn_command_bad_heads)
{
    float buf[8 * 6 * 8];
    fill_normal(buf, 8 * 6 * 8, 11);
    write4("q8.npy", buf, 1, 8, 2, 8);  /* H = 8 */
    write4("k3.npy", buf, 1, 3, 6, 8);  /* Hkv = 3 */
    write4("k16.npy", buf, 1, 16, 3, 8); /* Hkv = 16 > H */
    char q[4200], k3[4200], k16[4200], o[4200];
    testing_tmp_path(q, sizeof q, "q8.npy"), testing_tmp_path(k3, sizeof k3, "k3.npy");
    testing_tmp_path(k16, sizeof k16, "k16.npy"), testing_tmp_path(o, sizeof o, "o.npy");
    testing_expect_error("02_mqa_gqa", "H = 8 query heads is not a multiple of Hkv = 3", "attn", "--q", q, "--k", k3,
                         "--v", k3, "--out", o);
    testing_expect_error("02_mqa_gqa", "is not a multiple of Hkv = 16", "attn", "--q", q, "--k", k16, "--v", k16,
                         "--out", o);
    testing_expect_error("02_mqa_gqa", "kernels 1..2", "attn", "--q", q, "--k", k3, "--v", k3, "--out", o, "--kernel",
                         "3", "--device", "cpu");
    testing_expect_error("02_mqa_gqa", "unknown subcommand", "frobnicate");
}
END_TEST

START_TEST(test_convert_command)
{
    char in[4200], out[4200], path[4300];
    testing_tmp_path(in, sizeof in, "mha"), testing_tmp_path(out, sizeof out, "gqa");
    ProcResult r;
    const char *init[] = {"init-weights", "--out", in, "--dim", "32", "--heads", "8", "--head-dim", "4", NULL};
    ck_assert_int_eq(testing_run(&r, "01_mha", init), 0);
    ck_assert_msg(r.status == 0, "%s", r.err);
    const char *conv[] = {"convert", "--in", in, "--heads", "8", "--kv-heads", "2", "--out", out, NULL};
    ck_assert_int_eq(testing_run(&r, "02_mqa_gqa", conv), 0);
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
    testing_expect_error("02_mqa_gqa", "not a multiple", "convert", "--in", in, "--heads", "8", "--kv-heads", "3",
                         "--out", out);
    testing_expect_error("02_mqa_gqa", "not H = 5 heads", "convert", "--in", in, "--heads", "5", "--kv-heads", "1",
                         "--out", out);
    testing_expect_error("02_mqa_gqa", "cannot open", "convert", "--in", "/nonexistent", "--heads", "8", "--kv-heads",
                         "1", "--out", out);
    testing_expect_error("02_mqa_gqa", "missing --kv-heads", "convert", "--in", in, "--heads", "8", "--out", out);
}
END_TEST

START_TEST(test_help_and_verify)
{
    char line[256];
    const char *subs[] = {"--help", "attn", "verify", "bench", "convert"};
    for (int i = 0; i < 5; i++) {
        ProcResult r;
        ck_assert_int_eq(testing_run(&r, "02_mqa_gqa", (const char *[]){subs[i], i ? "--help" : NULL, NULL}), 0);
        ck_assert_msg(r.status == 0 && strstr(r.out, "usage: 02_mqa_gqa"), "%s --help: %s", subs[i], r.out);
    }
    /* under emulation the --smoke grid (lengths up to 17): the grid test of test_gqa.c runs the kernels
     * on lengths up to 257 there, this one checks the command */
    const int small = testing_small();
    ProcResult r;
    ck_assert_int_eq(testing_run(&r, "02_mqa_gqa", (const char *[]){"verify", small ? "--smoke" : "--quick", "--device",
                                                                   "cpu", NULL}),
                     0);
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
        float *ref = floats(n_q(&p.s));
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
        mem_free(ref);
        problem_free(&p);
    }
}
END_TEST
/* `attn --device cuda`, end to end: .npy files in, the program on the GPU, .npy out, against the
 * float64 oracle, every CUDA version. */
START_TEST(test_attn_command_on_the_gpu)
{
    const int shapes[][7] = {{2, 8, 2, 33, 65, 80, 1}, {1, 9, 3, 17, 4, 32, 0}}; /* B H Hkv T S D causal */
    const char *why = testing_attn_on_gpu("02_mqa_gqa", testing_tmp, shapes, 2, GQA_CUDA_KERNELS, ATOL, RTOL, NULL);
    ck_assert_msg(why == NULL, "%s", why);
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
    hostile_fixtures(testing_tmp);
    /* chapter 01's weights, for convert */
    char w[4200];
    testing_tmp_path(w, sizeof w, "w");
    const char *init[] = {"init-weights", "--out", w, "--dim", "64", "--heads", "16", "--head-dim", "4", NULL};
    ProcResult r;
    ck_assert_int_eq(testing_run(&r, "01_mha", init), 0);
    ck_assert_msg(r.status == 0, "init-weights: %s", r.err);
    const int n = (int)(sizeof hostile_cases / sizeof hostile_cases[0]);
    int failed = hostile_run(testing_tmp, hostile_cases, n);
    ck_assert_msg(failed == 0, "%d hostile cases failed (listed above)", failed);
}
END_TEST

/* ==== the cases ================================================================================= */

void gqa_program_cases(Suite *s)
{
    TCase *tc = tcase_create("program");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, testing_tmp_setup, testing_tmp_teardown);
    tcase_add_test(tc, test_attn_command_matches_float64);
    tcase_add_test(tc, test_attn_command_bad_heads);
    tcase_add_test(tc, test_convert_command);
    tcase_add_test(tc, test_help_and_verify);
    suite_add_tcase(s, tc);

    tc = tcase_create("hostile inputs");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, testing_tmp_setup, testing_tmp_teardown);
    tcase_add_test(tc, test_hostile_inputs);
    suite_add_tcase(s, tc);

    if (testing_cuda_cases("02_mqa_gqa")) { /* asked in a child process: this one must not start CUDA */
#if HAVE_CUDA
        tc = tcase_create("cuda");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_cuda_kernels_against_reference);
        tcase_add_checked_fixture(tc, testing_tmp_setup, testing_tmp_teardown);
        tcase_add_test(tc, test_attn_command_on_the_gpu);
        suite_add_tcase(s, tc);
#endif
    }
}
