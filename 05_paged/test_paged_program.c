/*
 * test_paged_program.c: chapter 05's program end to end (generate against chapter 04's, attn
 * through pages against float64, a pool beyond memory refused before anything is allocated,
 * --help and verify), its CUDA kernels (through shuffled tables, every block size; attn on the
 * GPU), and hostile inputs: the cases "program", "hostile inputs" and "cuda" of chapter 05's
 * suite (test_paged.c holds the rest and main()). Bad input gets one error line and exit status 1.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "05_paged/paged.h"
#include "05_paged/test_paged.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/hostile.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

/* ==== the program ================================================================================ */

START_TEST(test_generate_command_matches_chapter04)
{
    char p4[4200], p5[4200];
    program_path(p4, sizeof p4, "04_kvcache");
    program_path(p5, sizeof p5, "05_paged");
    ProcResult want, got;
    const char *a4[] = {p4, "generate", "--prompt", "3 1 4 1 5 9 2 6", "--max-new", "20", "--device", "cpu", NULL};
    ck_assert_int_eq(run_program(&want, a4), 0);
    ck_assert_msg(want.status == 0, "%s", want.err);
    const char *sizes[] = {"1", "16", "32"};
    for (int i = 0; i < 3; i++) {
        const char *a5[] = {p5, "generate", "--prompt", "3 1 4 1 5 9 2 6", "--max-new", "20", "--block-size", sizes[i],
                            "--shuffle", "7", NULL};
        ck_assert_int_eq(run_program(&got, a5), 0);
        ck_assert_msg(got.status == 0, "%s", got.err);
        ck_assert_str_eq(got.out, want.out);
    }
    /* forked sampling: sample i is chapter 04's run with seed 5 + i -- with the default top-p (0.9)
     * and with top-p 0.5 and top-k 5: each sample draws from its own generator */
    static const char *const filters[2][4] = {{"--top-p", "0.9", "--top-k", "0"}, {"--top-p", "0.5", "--top-k", "5"}};
    for (int f = 0; f < 2; f++) {
        const char *a5[] = {p5, "generate", "--prompt", "1 2 3", "--max-new", "10", "--temperature", "0.8", "--seed", "5",
                            "--n-samples", "3", filters[f][0], filters[f][1], filters[f][2], filters[f][3], NULL};
        ck_assert_int_eq(run_program(&got, a5), 0);
        ck_assert_msg(got.status == 0 && count_lines(got.out) == 3, "%s %s", got.out, got.err);
        char *save = NULL, *line = strtok_r(got.out, "\n", &save);
        for (int i = 0; i < 3; i++, line = strtok_r(NULL, "\n", &save)) {
            char seed[8];
            snprintf(seed, sizeof seed, "%d", 5 + i);
            const char *b4[] = {p4, "generate", "--prompt", "1 2 3", "--max-new", "10", "--temperature", "0.8", "--seed",
                                seed, "--device", "cpu", filters[f][0], filters[f][1], filters[f][2], filters[f][3], NULL};
            ck_assert_int_eq(run_program(&want, b4), 0);
            want.out[strcspn(want.out, "\n")] = 0;
            ck_assert_msg(line && strcmp(line, want.out) == 0, "%s %s, sample %d: %s vs %s", filters[f][1],
                          filters[f][3], i, line, want.out);
        }
    }
    testing_expect_error("05_paged", "can never fit", "generate", "--max-new", "40", "--num-blocks", "2");
    testing_expect_error("05_paged", "--block-size", "generate", "--block-size", "0");
    testing_expect_error("05_paged", "ids must be in 0..1023", "generate", "--prompt", "1 5000");
    testing_expect_error("05_paged", "exceeds the model's seq_len 2048", "generate", "--max-new", "2048");
    testing_expect_error("05_paged", "generates on the CPU", "generate", "--device", "cuda");
    testing_expect_error("05_paged", "--block-size expects an integer from 1 to 4096", "attn", "--block-size", "x");
    testing_expect_error("05_paged", "--block-size needs a value, got the option", "attn", "--block-size", "--q");
    testing_expect_error("05_paged", "--prompt and --prompt-text cannot be given together", "generate", "--prompt",
                         "1", "--prompt-text", "x");
    testing_expect_error("05_paged", "below the smallest normal float", "generate", "--temperature", "1e-40");
    testing_expect_error("05_paged", "--quick and --smoke cannot be given together", "verify", "--quick", "--smoke");
    testing_expect_error("05_paged", "unknown subcommand", "frobnicate");
}
END_TEST

/* attn --block-size 4096 on inputs of one key per sequence: each of the B sequences holds a
 * block of 4096 slots, so the pool is 4096x the inputs. B is chosen so that the pool is about
 * twice the memory available: it must be refused before anything is allocated (it was: two
 * pools, K and V, each passing a check against physical memory alone, then the OOM killer), with
 * a message naming the pool, its size, and the block size as the cause; no output is written. */
START_TEST(test_attn_pool_beyond_memory_is_refused)
{
    const size_t avail = mem_budget_bytes(), per_seq = 2 * 4096 * 64 * sizeof(float); /* K and V, Hkv 1, D 64 */
    if (avail > ((size_t)64 << 30)) { /* the inputs would be avail / 2730: keep the test small */
        fprintf(stderr, "test_attn_pool_beyond_memory_is_refused: skipped, %zu GiB available\n", avail >> 30);
        return;
    }
    const size_t B = 2 * avail / per_seq + 1;
    float *x = xmalloc(B * 64 * sizeof(float), "q (B, 1, 1, 64)");
    fill_normal(x, B * 64, 5);
    char q[4200], o[4200], prog[4200];
    snprintf(q, sizeof q, "%s/q.npy", testing_tmp), snprintf(o, sizeof o, "%s/o.npy", testing_tmp);
    ck_assert_int_eq(npy_write(q, NPY_F32, 4, (size_t[]){B, 1, 1, 64}, x), 0);
    free(x);
    const char *argv[] = {program_path(prog, sizeof prog, "05_paged"), "attn", "--q", q, "--k", q, "--v", q, "--out",
                          o, "--block-size", "4096", "--device", "cpu", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_msg(r.status == 1 && count_lines(r.err) == 1, "status %d: %s", r.status, r.err);
    ck_assert_msg(strstr(r.err, "the block pool (K and V of"), "%s", r.err);
    ck_assert_msg(strstr(r.err, "of memory available"), "%s", r.err);
    ck_assert_msg(strstr(r.err, "--block-size 4096 is larger than S = 1"), "%s", r.err);
    ck_assert_msg(access(o, F_OK) != 0, "%s was written", o);
#if !defined(__SANITIZE_ADDRESS__) /* the shadow memory alone is larger */
    ck_assert_msg(r.max_rss_kib < 512 * 1024, "peaked at %ld KiB", r.max_rss_kib);
#endif
}
END_TEST

START_TEST(test_attn_command_matches_float64)
{
    /* through pages of one token (shape 0) and of 8 */
    const int shapes[][7] = {{2, 6, 2, 1, 29, 20, 1}, {1, 8, 2, 5, 40, 64, 1}, {2, 9, 3, 3, 100, 7, 0}};
    for (int i = 0; i < 3; i++) {
        const TestingAttnRun run = {.name = "05_paged", .device = "cpu", .n_kernels = PAGED_CPU_KERNELS,
                                    .seed = 1 + (uint64_t)i, .extra = {"--block-size", i == 0 ? "1" : "8"}};
        const char *why = testing_attn_program(&run, testing_tmp, &shapes[i], 1, ATOL, RTOL);
        ck_assert_msg(why == NULL, "shape %d: %s", i, why);
    }
}
END_TEST

START_TEST(test_help_and_verify)
{
    /* under emulation the --smoke grid (lengths up to 17, every block size): the kernels on long
     * sequences and every block size are tested by test_attention_mixed_batch, this checks the
     * command */
    const int small = testing_small();
    const char *subs[] = {"generate", "attn", "verify", "bench", NULL};
    const char *verify[] = {small ? "--smoke" : "--quick", "--device", "cpu", NULL};
    testing_assert_ok(testing_help_and_verify("05_paged", subs, verify, small ? 151 : 4 * 200 + 1));
}
END_TEST

/* The case "program": the tests above. */
TestingCase paged_program_case(void)
{
    return (TestingCase){.name = "program", .timeout_s = 300, .temp_dir = 1,
                         .tests = {test_generate_command_matches_chapter04, test_attn_command_matches_float64,
                                   test_attn_pool_beyond_memory_is_refused, test_help_and_verify}};
}

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
/* Both CUDA kernels against the float64 oracle through shuffled tables, every block size: a
 * GQA batch of prefill rows; G = 32 at D = 128 over two partitions of v2 (49.5 KiB of shared
 * memory: the opt-in above 48 KiB); D = 256, the largest head. */
START_TEST(test_cuda_kernels_against_cpu)
{
    const int shapes[][6] = {{8, 2, 64, 3, 300, 2}, {32, 1, 128, 2, 600, 1}, {4, 2, 256, 2, 130, 3}}; /* H Hkv D B S T */
    for (int si = 0; si < 3; si++) {
        const int H = shapes[si][0], Hkv = shapes[si][1], D = shapes[si][2], B = shapes[si][3], S = shapes[si][4];
        const int T = shapes[si][5];
        const size_t nq = (size_t)B * H * T * D, nk = (size_t)B * Hkv * S * D;
        /* q, want, got (B, H, T, D); k, v (B, Hkv, S, D) */
        float *q = xmalloc(nq * 4, "q"), *want = xmalloc(nq * 4, "want"), *got = xmalloc(nq * 4, "got");
        float *k = xmalloc(nk * 4, "k"), *v = xmalloc(nk * 4, "v");
        fill_normal(q, nq, 1 + 10 * (uint64_t)si), fill_normal(k, nk, 2 + 10 * (uint64_t)si);
        fill_normal(v, nk, 3 + 10 * (uint64_t)si);
        double *want64 = xmalloc(nq * sizeof(double), "want64");
        attention_f64(B, H, Hkv, T, S, D, 1, 1.0 / sqrt((double)D), q, k, v, want64);
        for (size_t i = 0; i < nq; i++)
            want[i] = (float)want64[i];
        float *dq = cuda_alloc(nq * 4), *dk = cuda_alloc(nk * 4), *dv = cuda_alloc(nk * 4), *dout = cuda_alloc(nq * 4);
        cuda_upload(dq, q, nq * 4), cuda_upload(dk, k, nk * 4), cuda_upload(dv, v, nk * 4);
        for (int bi = 0; bi < 4; bi++) {
            const int bs = BLOCK_SIZES[bi], per = (S + bs - 1) / bs;
            int *perm = xmalloc((size_t)B * per * sizeof(int), "perm");
            for (int i = 0; i < B * per; i++)
                perm[i] = B * per - 1 - i; /* the blocks in reverse order */
            for (int kern = 1; kern <= PAGED_CUDA_KERNELS; kern++) {
                cuda_memset_nan(dout, nq * 4);
                ck_assert_msg(paged_attention_cuda_bhsd(kern, B, H, Hkv, T, S, D, bs, perm, 1.0f / sqrtf((float)D), 1,
                                                        dq, dk, dv, dout) == 0,
                              "%s", error_message());
                cuda_download(got, dout, nq * 4);
                ck_assert_msg(compare_f32("cuda paged", got, want, nq, ATOL, RTOL, 5).n_bad == 0,
                              "H %d Hkv %d D %d: bs %d kernel %d", H, Hkv, D, bs, kern);
            }
            free(perm);
        }
        cuda_free(dq), cuda_free(dk), cuda_free(dv), cuda_free(dout);
        free(q), free(k), free(v), free(want), free(got), free(want64);
    }
}
END_TEST
#endif

/* The case "cuda": the tests above, then `attn --device cuda` end to end on these shapes. */
TestingCase paged_cuda_case(void)
{
    const int shapes[][7] = {{3, 8, 2, 1, 300, 128, 1}, {2, 32, 1, 3, 600, 128, 1}, {1, 4, 2, 9, 40, 256, 0}}; /* B H Hkv T S D causal */
    const TTest *const tests[] = {TESTING_CUDA_ONLY(test_cuda_kernels_against_cpu), NULL};
    const TestingAttnRun run = {.name = "05_paged", .n_kernels = TESTING_CUDA_ONLY(PAGED_CUDA_KERNELS)};
    return testing_cuda_case(300, tests, run, shapes, sizeof shapes / sizeof shapes[0]);
}

/* ==== hostile inputs (common/hostile.h): one error line, exit 1, nothing written ================= */

#define GEN05 "05_paged", "generate", "--device", "cpu", "--checkpoint", "@/model.bin"
#define ATTN05 "05_paged", "attn", "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/v.npy"
static const HostileCase hostile_cases[] = {
    {.argv = {"05_paged", "generate", "--checkpoint", "@/wrap.bin"}, .expect = "overflows"},
    {.argv = {"05_paged", "generate", "--checkpoint", HOSTILE_BAD_FILE}},
    {.argv = {GEN05, "--block-size", "0"}, .expect = "--block-size"},
    {.argv = {GEN05, "--block-size", "-16"}, .expect = "--block-size"},
    {.argv = {GEN05, "--num-blocks", "1", "--max-new", "40"}, .expect = "can never fit"},
    {.argv = {GEN05, "--num-blocks", "268435456", "--block-size", "4096"}, .expect = "memory available"},
    {.argv = {GEN05, "--n-samples", "0"}, .expect = "--n-samples"},
    {.argv = {GEN05, "--n-samples", "2147483647"}, .expect = "--n-samples"},
    {.argv = {GEN05, "--temperature", "1e-40"}, .expect = "--temperature"},
    {.argv = {GEN05, "--temperature", "inf"}, .expect = "--temperature"},
    {.argv = {GEN05, "--top-p", "1.5"}, .expect = "--top-p 1.5: expected a number in (0, 1]"},
    {.argv = {GEN05, "--top-k", "x"}, .expect = "--top-k"},
    {.argv = {GEN05, "--shuffle", "-1"}, .expect = "--shuffle"},
    {.argv = {GEN05, "--kernel", "9"}, .expect = "--kernel"},
    {.argv = {GEN05, "--prompt", "1 2x"}, .expect = "--prompt"},
    {.argv = {GEN05, "--prompt", "1 2", "--tokenizer", "@/tok.bin", "--prompt-text", "hi"},
     .expect = "--prompt-text"},
    {.argv = {GEN05, "--tokenizer", "@/tok.bin", "--prompt-text", "<@/long.txt"}, .expect = "seq_len"},
    {.argv = {GEN05, "--max-new", "4"}, .expect = "standard output", .stdout_to = "/dev/full"},
    {.argv = {ATTN05, "--out", "@/out.npy", "--block-size", "4097"}, .expect = "--block-size"},
    {.argv = {ATTN05, "--out", "@/out.npy", "--block-size", "0"}, .expect = "--block-size"},
    {.argv = {ATTN05, "--out", HOSTILE_BAD_OUT}},
    {.argv = {"05_paged", "attn", "--q", "@/qbig.npy", "--k", "@/kbig.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "overflow"},
    {.argv = {ATTN05, "--out", "@/out.npy", "--scale", "1e38"}, .expect = "overflow"},
    {.argv = {"05_paged", "bench", "--out", "@/fifo", "--l", "256", "--repeats", "1"}, .expect = "FIFO"},
    {.argv = {"05_paged", "bench", "--l", "-1"}, .expect = "--l"},
};

START_TEST(test_hostile_inputs)
{
    testing_assert_ok(hostile_check(testing_tmp, hostile_cases, sizeof hostile_cases / sizeof hostile_cases[0]));
}
END_TEST

/* The case "hostile inputs". */
TestingCase paged_hostile_case(void) { return testing_hostile_case(test_hostile_inputs); }
