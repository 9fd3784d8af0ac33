/*
 * test_gqa_program.c: chapter 02's program end to end (attn against float64, bad head counts,
 * convert, --help and verify), its CUDA versions, and hostile inputs: the cases "program",
 * "hostile inputs" and "cuda" of chapter 02's suite (test_gqa.c holds the rest and main()).
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "01_mha/mha.h"
#include "02_mqa_gqa/commands.h"
#include "02_mqa_gqa/gqa.h"
#include "02_mqa_gqa/test_gqa.h"
#include "common/compare.h"
#include "common/hostile.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"

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
    const TestingAttnRun run = {.name = "02_mqa_gqa", .device = "cpu", .n_kernels = GQA_CPU_KERNELS, .seed = 300};
    testing_assert_ok(testing_attn_program(&run, testing_tmp, shapes, sizeof shapes / sizeof shapes[0], ATOL, RTOL));
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
    /* under emulation the --smoke grid (lengths up to 17): the grid test of test_gqa.c runs the
     * kernels on lengths up to 257 there, this one checks the command */
    const int small = testing_small();
    const char *subs[] = {"attn", "verify", "bench", "convert", NULL};
    const char *verify[] = {small ? "--smoke" : "--quick", "--device", "cpu", NULL};
    testing_assert_ok(testing_help_and_verify("02_mqa_gqa", subs, verify, small ? 21 : 101));
}
END_TEST

/* The case "program": the tests above. */
TestingCase gqa_program_case(void)
{
    return (TestingCase){.name = "program", .timeout_s = 300, .temp_dir = 1,
                         .tests = {test_attn_command_matches_float64, test_attn_command_bad_heads, test_convert_command,
                                   test_help_and_verify}};
}

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
START_TEST(test_cuda_kernels_against_reference)
{
    /* shape i's data from seed 100 + i, as shape_problem's */
    testing_assert_ok(testing_attn_shapes(&GQA_IMPLS, DEVICE_CUDA, GQA_TEST_SHAPES, N_SHAPES, 100, ATOL, RTOL));
}
END_TEST
#endif

/* The case "cuda": the tests above, then `attn --device cuda` end to end on these shapes. */
TestingCase gqa_cuda_case(void)
{
    const int shapes[][7] = {{2, 8, 2, 33, 65, 80, 1}, {1, 9, 3, 17, 4, 32, 0}}; /* B H Hkv T S D causal */
    const TTest *const tests[] = {TESTING_CUDA_ONLY(test_cuda_kernels_against_reference), NULL};
    const TestingAttnRun run = {.name = "02_mqa_gqa", .n_kernels = TESTING_CUDA_ONLY(GQA_CUDA_KERNELS)};
    return testing_cuda_case(120, tests, run, shapes, sizeof shapes / sizeof shapes[0]);
}

/* ==== hostile inputs (common/hostile.h): one error line, exit 1, nothing written ================= */

#define ATTN02 "02_mqa_gqa", "attn"
#define CONVERT02_W "02_mqa_gqa", "convert", "--in", "@/w"
static const HostileCase hostile_cases[] = {
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", HOSTILE_BAD_NPY, "--v", "@/v.npy", "--out", "@/out.npy"}},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/k1.npy", "--out", "@/out.npy"},
     .expect = "k1.npy"},
    {.argv = {ATTN02, "--q", "@/k1.npy", "--k", "@/k.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "not a multiple"},
    {.argv = {ATTN02, "--q", "@/qbig.npy", "--k", "@/kbig.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "overflow"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k1.npy", "--v", "@/k1.npy", "--out", "@/out.npy", "--scale", "1e38"},
     .expect = "overflow"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/v.npy", "--out", HOSTILE_BAD_OUT}},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "--v", "@/v.npy", "--out", "@/out.npy"}, .expect = "--k"},
    {.argv = {ATTN02, "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/v.npy", "--out", "@/out.npy", "--kernel", "0"},
     .expect = "--kernel"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/missing", "--heads", "16", "--kv-heads", "4", "--out", "@/out"},
     .expect = "missing"},
    {.argv = {"02_mqa_gqa", "convert", "--in", "@/fifo", "--heads", "16", "--kv-heads", "4", "--out", "@/out"},
     .expect = "fifo"},
    {.argv = {CONVERT02_W, "--heads", "16", "--kv-heads", "3", "--out", "@/out"}, .expect = "not a multiple"},
    {.argv = {CONVERT02_W, "--heads", "16", "--kv-heads", "0", "--out", "@/out"}, .expect = "--kv-heads"},
    {.argv = {CONVERT02_W, "--heads", "5", "--kv-heads", "1", "--out", "@/out"}, .expect = "H = 5"},
    {.argv = {CONVERT02_W, "--heads", "16", "--kv-heads", "4", "--out", "@/fifo"}, .expect = "fifo"},
    {.argv = {CONVERT02_W, "--heads", "16", "--kv-heads", "4"}, .expect = "--out"},
    {.argv = {"02_mqa_gqa", "bench", "--out", "@/fifo", "--max-s", "1024", "--repeats", "1"}, .expect = "FIFO"},
    {.argv = {"02_mqa_gqa", "bench", "--max-s", "99999999999"}, .expect = "--max-s"},
};

START_TEST(test_hostile_inputs)
{
    /* chapter 01's weights, for convert */
    char w[4200];
    testing_tmp_path(w, sizeof w, "w");
    const char *init[] = {"init-weights", "--out", w, "--dim", "64", "--heads", "16", "--head-dim", "4", NULL};
    ProcResult r;
    ck_assert_int_eq(testing_run(&r, "01_mha", init), 0);
    ck_assert_msg(r.status == 0, "init-weights: %s", r.err);
    testing_assert_ok(hostile_check(testing_tmp, hostile_cases, sizeof hostile_cases / sizeof hostile_cases[0]));
}
END_TEST

/* The case "hostile inputs". */
TestingCase gqa_hostile_case(void) { return testing_hostile_case(test_hostile_inputs); }
