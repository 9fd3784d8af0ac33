/*
 * test_flash_program.c: chapter 03's program end to end (attn against float64, D beyond the
 * limit, --help and verify), its CUDA versions (fp32 ones within fp32 tolerance, the tensor-core
 * one by FlashAttention's rule: error at most 2x that of naive attention run in the same fp16
 * precision, and NMSE <= 5e-4), and hostile inputs: the cases "program", "hostile inputs" and
 * "cuda" of chapter 03's suite (test_flash.c holds the rest and main()).
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "02_mqa_gqa/gqa.h"
#include "03_flash/commands.h"
#include "03_flash/flash.h"
#include "03_flash/test_flash.h"
#include "common/attn_harness.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/hostile.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

/* ==== the program ================================================================================= */

START_TEST(test_attn_command_matches_float64)
{
    const int shapes[][7] = {{2, 6, 2, 17, 29, 20, 1}, {1, 9, 3, 31, 13, 7, 1}, {1, 4, 1, 1, 77, 33, 1}, {1, 8, 4, 65, 63, 80, 0}};
    const TestingAttnRun run = {.name = "03_flash", .device = "cpu", .n_kernels = FLASH_CPU_KERNELS, .seed = 1700};
    testing_assert_ok(testing_attn_program(&run, testing_tmp, shapes, sizeof shapes / sizeof shapes[0], ATOL, RTOL));
    /* D above the chapter's limit is a one-line error */
    char qp[4200], op[4200];
    testing_tmp_path(qp, sizeof qp, "q.npy"), testing_tmp_path(op, sizeof op, "o.npy");
    float big[300];
    fill_normal(big, 300, 1);
    ck_assert_int_eq(npy_write(qp, NPY_F32, 4, (size_t[]){1, 1, 1, 300}, big), 0);
    testing_expect_error("03_flash", "D = 300 is not supported", "attn", "--q", qp, "--k", qp, "--v", qp, "--out", op,
                         "--device", "cpu");
}
END_TEST

START_TEST(test_help_and_verify)
{
    /* under emulation the --smoke grid (lengths up to 17): the grid test of test_flash.c runs the
     * kernels on lengths up to 257 there, this one checks the command */
    const int small = testing_small();
    const char *subs[] = {"attn", "verify", "bench", NULL};
    const char *verify[] = {small ? "--smoke" : "--quick", "--device", "cpu", NULL};
    testing_assert_ok(testing_help_and_verify("03_flash", subs, verify, small ? 41 : 201));
}
END_TEST

/* The case "program": the tests above. */
TestingCase flash_program_case(void)
{
    return (TestingCase){.name = "program", .timeout_s = 300, .temp_dir = 1,
                         .tests = {test_attn_command_matches_float64, test_help_and_verify}};
}

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
/* Naive attention in fp16, FlashAttention's yardstick for the tc version: the harness's, shared
 * with `03_flash verify` (common/attn_harness.h). */
static void naive_f16(const Problem *p, float *out)
{
    const GqaShape *s = &p->s;
    const AttnDims d = {.B = s->B, .H = s->H, .Hkv = s->Hkv, .T = s->T, .S = s->S, .D = s->D, .causal = s->causal,
                        .scale = s->scale};
    attn_naive_fp16(&d, p->q, p->k, p->v, out);
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
        float *ref = floats(n_q(&p.s)), *lse_ref = floats(n_rows(&p.s)), *lo = floats(n_q(&p.s));
        float *gpu_lse = floats(n_rows(&p.s));
        ck_assert_int_eq(flash_attention_fast(&p.s, flash_default_tiles(2), p.q, p.k, p.v, ref, lse_ref), 0);
        naive_f16(&p, lo);
        float *d_q = cuda_alloc(qb), *d_k = cuda_alloc(kb), *d_v = cuda_alloc(kb), *d_o = cuda_alloc(qb);
        float *d_l = cuda_alloc(lb);
        cuda_upload(d_q, p.q, qb), cuda_upload(d_k, p.k, kb), cuda_upload(d_v, p.v, kb);
        for (int kern = 1; kern <= FLASH_CUDA_KERNELS; kern++) {
            cuda_memset_nan(d_o, qb);
            ck_assert_msg(flash_attention_cuda(kern, &p.s, d_q, d_k, d_v, d_o, d_l) == 0, "%s", error_message());
            cuda_download(p.out, d_o, qb), cuda_download(gpu_lse, d_l, lb);
            if (!flash_cuda_kernel_fp16(kern)) { /* fp32: fp32 tolerance, lse too */
                ck_assert_msg(compare_f32("cuda fp32", p.out, ref, n_q(&p.s), ATOL, RTOL, 5).n_bad == 0, "kernel %d shape %d", kern, i);
                ck_assert_msg(compare_f32("cuda lse", gpu_lse, lse_ref, n_rows(&p.s), ATOL, RTOL, 5).n_bad == 0, "kernel %d shape %d", kern, i);
            } else { /* fp16: FlashAttention's rule, and NMSE (the rule verify applies) */
                AttnFp16Check c = attn_check_fp16(p.out, ref, lo, n_q(&p.s));
                ck_assert_msg(c.ok, "tc shape %d: error %g (2x naive fp16's: %g), NMSE %g (at most 5e-4)", i, c.err,
                              c.err_naive, c.nmse);
            }
        }
        cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o), cuda_free(d_l);
        mem_free(ref), mem_free(lse_ref), mem_free(lo), mem_free(gpu_lse);
        problem_free(&p);
    }
}
END_TEST
#endif

/* The case "cuda": the tests above, then `attn --device cuda` end to end on these shapes. */
TestingCase flash_cuda_case(void)
{
    const int shapes[][7] = {{2, 8, 2, 37, 70, 128, 1}, {1, 4, 1, 20, 50, 256, 1}, {1, 2, 2, 65, 3, 64, 0}}; /* B H Hkv T S D causal */
    const TTest *const tests[] = {TESTING_CUDA_ONLY(test_cuda_kernels), NULL};
    /* tc by FlashAttention's rule, against the harness's naive fp16 run */
    const TestingAttnRun run = {.name = "03_flash", .n_kernels = TESTING_CUDA_ONLY(FLASH_CUDA_KERNELS),
                                .fp16 = TESTING_CUDA_ONLY(flash_cuda_kernel_fp16)};
    return testing_cuda_case(300, tests, run, shapes, sizeof shapes / sizeof shapes[0]);
}

/* ==== hostile inputs (common/hostile.h): one error line, exit 1, nothing written ================= */

#define ATTN03 "03_flash", "attn"
#define GOOD_QKV "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/v.npy"
static const HostileCase hostile_cases[] = {
    {.argv = {ATTN03, "--q", "@/q.npy", "--k", "@/k.npy", "--v", HOSTILE_BAD_NPY, "--out", "@/out.npy"}},
    {.argv = {ATTN03, "--q", "@/qbig.npy", "--k", "@/kbig.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "overflow"},
    {.argv = {ATTN03, GOOD_QKV, "--out", "@/out.npy", "--scale", "1e38", "--causal"}, .expect = "overflow"},
    {.argv = {ATTN03, GOOD_QKV, "--out", "@/out.npy", "--scale", "inf"}, .expect = "--scale"},
    {.argv = {ATTN03, GOOD_QKV, "--out", HOSTILE_BAD_OUT}},
    {.argv = {ATTN03, GOOD_QKV, "--out", "@/out.npy", "--kernel", "x"}, .expect = "--kernel"},
    {.argv = {ATTN03, GOOD_QKV, "--out"}, .expect = "--out"},
    {.argv = {ATTN03, GOOD_QKV, "--out", "@/out.npy", "--causal=yes"}, .expect = "--causal"},
    {.argv = {"03_flash", "bench", "--out", "@/fifo", "--max-t", "256", "--repeats", "1"}, .expect = "FIFO"},
    {.argv = {"03_flash", "bench", "--out", "@/out", "--max-t", "256", "--repeats", "1"}, .expect = "is a folder"},
    {.argv = {"03_flash", "bench", "--max-t", "0"}, .expect = "--max-t"},
    {.argv = {"03_flash", "verify", "--kernel", "12"}, .expect = "--kernel"},
};

START_TEST(test_hostile_inputs)
{
    testing_assert_ok(hostile_check(testing_tmp, hostile_cases, sizeof hostile_cases / sizeof hostile_cases[0]));
}
END_TEST

/* The case "hostile inputs". */
TestingCase flash_hostile_case(void) { return testing_hostile_case(test_hostile_inputs); }
