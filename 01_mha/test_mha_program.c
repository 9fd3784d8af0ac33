/*
 * test_mha_program.c: chapter 01's program end to end (attn against float64, bad input, scores
 * that overflow, lost standard output, --help, the memory a CPU run maps, verify), its CUDA
 * versions (the kernels, the layer, attn on the GPU), and hostile inputs: the cases "program",
 * "hostile inputs" and "cuda" of chapter 01's suite (test_mha.c holds the rest and main()). Bad
 * input gets one error line and exit status 1.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "01_mha/commands.h"
#include "01_mha/mha.h"
#include "01_mha/test_mha.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/hostile.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

/* ==== the program: attn, --help, verify =========================================================== */

static void write_tensor(const char *dir, const char *name, const float *data, size_t b, size_t h, size_t n, size_t d)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ck_assert_int_eq(npy_write(path, NPY_F32, 4, (size_t[]){b, h, n, d}, data), 0);
}

START_TEST(test_attn_command_matches_float64)
{
    /* the contract (docs/contracts.md §1.3) end to end: .npy in, program, .npy out, against float64; shape 2 with
     * --scale 0.3 */
    const int shapes[][7] = {{2, 3, 3, 17, 29, 20, 1}, {1, 2, 2, 31, 13, 7, 1}, {1, 1, 1, 5, 5, 3, 0},
                             {2, 2, 2, 63, 65, 33, 0}}; /* B H Hkv T S D causal */
    for (int i = 0; i < 4; i++) {
        const TestingAttnRun run = {.name = "01_mha", .device = "cpu", .n_kernels = MHA_CPU_KERNELS,
                                    .seed = 300 + (uint64_t)i, .scale = i == 2 ? 0.3f : 0.0f};
        const char *why = testing_attn_program(&run, testing_tmp, &shapes[i], 1, ATOL, RTOL);
        ck_assert_msg(why == NULL, "shape %d: %s", i, why);
    }
}
END_TEST

START_TEST(test_attn_command_bad_input)
{
    char d[4200];
    float buf[2 * 3 * 5 * 8];
    fill_normal(buf, 2 * 3 * 5 * 8, 60);
    write_tensor(testing_tmp, "q.npy", buf, 1, 2, 5, 8);     /* B=1 H=2 T=5 D=8 */
    write_tensor(testing_tmp, "k.npy", buf, 1, 2, 6, 8);     /* Hkv=2 S=6 */
    write_tensor(testing_tmp, "k1.npy", buf, 1, 1, 6, 8);    /* Hkv=1: GQA, chapter 02 */
    write_tensor(testing_tmp, "k_d4.npy", buf, 1, 2, 6, 4);  /* D mismatch */
    write_tensor(testing_tmp, "k_b2.npy", buf, 2, 2, 6, 8);  /* B mismatch */
    write_tensor(testing_tmp, "v_s7.npy", buf, 1, 2, 7, 8);  /* V unlike K */
    write_tensor(testing_tmp, "q_t0.npy", buf, 1, 2, 0, 8);  /* T = 0 */
    buf[3] = NAN;
    write_tensor(testing_tmp, "k_nan.npy", buf, 1, 2, 6, 8);
    ck_assert_int_eq(npy_write(testing_tmp_path(d, sizeof d, "q3.npy"), NPY_F32, 3, (size_t[]){2, 5, 8}, buf), 0);
    char q[4200], k[4200], k1[4200], kd[4200], kb[4200], v7[4200], q0[4200], kn[4200], q3[4200], o[4200], tr[4200];
    testing_tmp_path(q, sizeof q, "q.npy"), testing_tmp_path(k, sizeof k, "k.npy");
    testing_tmp_path(k1, sizeof k1, "k1.npy");
    testing_tmp_path(kd, sizeof kd, "k_d4.npy"), testing_tmp_path(kb, sizeof kb, "k_b2.npy");
    testing_tmp_path(v7, sizeof v7, "v_s7.npy");
    testing_tmp_path(q0, sizeof q0, "q_t0.npy"), testing_tmp_path(kn, sizeof kn, "k_nan.npy");
    testing_tmp_path(q3, sizeof q3, "q3.npy");
    testing_tmp_path(o, sizeof o, "o.npy"), testing_tmp_path(tr, sizeof tr, "trunc.npy");
    /* a truncated copy of k.npy */
    FILE *f = fopen(k, "rb");
    ck_assert_ptr_nonnull(f);
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
        const char *why = testing_error_check("01_mha", cases[i].argv, cases[i].expect);
        ck_assert_msg(why == NULL, "case %zu: %s", i, why);
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
    write_tensor(testing_tmp, "q.npy", buf, 1, 1, T, D);
    write_tensor(testing_tmp, "k.npy", buf, 1, 1, S, D);
    write_tensor(testing_tmp, "v.npy", buf, 1, 1, S, D);
    write_tensor(testing_tmp, "big.npy", huge, 1, 1, T, D);
    write_tensor(testing_tmp, "bigk.npy", huge, 1, 1, S, D);
    char bigk[4200];
    testing_tmp_path(q, sizeof q, "q.npy"), testing_tmp_path(k, sizeof k, "k.npy");
    testing_tmp_path(v, sizeof v, "v.npy");
    testing_tmp_path(big, sizeof big, "big.npy"), testing_tmp_path(bigk, sizeof bigk, "bigk.npy");
    testing_tmp_path(o, sizeof o, "o.npy");
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
    testing_tmp_path(dir, sizeof dir, "w");
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
    snprintf(bad, sizeof bad, "%s/q\r.npy", testing_tmp);
    const char *attn[] = {prog, "attn", "--q", bad, "--k", bad, "--v", bad, "--out", "/dev/null", NULL};
    ck_assert_int_eq(run_program_limited(&r, attn, 60, NULL), 0);
    ck_assert_msg(r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, "q\\r.npy: cannot open"), "status %d: %s",
                  r.status, r.err);
}
END_TEST

/* A FIFO as an input: one error line, exit status 1, well within the limit (a plain fopen() would
 * block forever; common/'s suite checks the refusal itself, this the program's answer). */
START_TEST(test_attn_refuses_a_fifo)
{
    char fifo[4200], path[4200];
    testing_tmp_path(fifo, sizeof fifo, "fifo");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    char prog[4200];
    const char *argv[] = {program_path(prog, sizeof prog, "01_mha"), "attn", "--q", fifo, "--k", fifo, "--v", fifo,
                          "--out", testing_tmp_path(path, sizeof path, "o.npy"), NULL};
    ProcResult r;
    ck_assert_int_eq(run_program_limited(&r, argv, 10, NULL), 0);
    ck_assert_msg(r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, "is a FIFO"), "status %d: %s", r.status,
                  r.err);
}
END_TEST

START_TEST(test_help_everywhere)
{
    const char *subs[] = {"attn", "verify", "bench", "init-weights", NULL};
    testing_assert_ok(testing_help_and_verify("01_mha", subs, NULL, 0));
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
    float *out = xmalloc(n_out(&p.s) * sizeof(float), "out");
    ck_assert_int_eq(mha_attention_cpu(0, &p.s, p.q, p.k, p.v, out), 0);
    ck_assert_msg(!maps_mention("libcublas"), "cuBLAS is mapped after a CPU run");
    ck_assert_msg(!maps_mention("libcudart"), "the shared CUDA runtime is mapped after a CPU run");
    ck_assert_msg(!maps_mention("libcuda.so"), "the CUDA driver is mapped after a CPU run");
    free(out);
    problem_free(&p);

#if !defined(__SANITIZE_ADDRESS__) /* ASan's shadow memory alone is larger than the bound */
    /* every program `make test` built; `make exercise-1` builds only 01_mha, which is always checked */
    const char *programs[] = {"01_mha", "02_mqa_gqa", "03_flash", "04_kvcache", "05_paged", "06_batching"};
    for (int i = 0; i < 6; i++) {
        char prog[4200];
        program_path(prog, sizeof prog, programs[i]);
        if (i > 0 && access(prog, X_OK) != 0)
            continue;
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
    /* under emulation the --smoke grid (lengths up to 17): the grid test of test_mha.c runs the
     * kernels on lengths up to 257 there, this one checks the command */
    const int small = testing_small();
    const char *verify[] = {small ? "--smoke" : "--quick", "--device", "cpu", NULL};
    testing_assert_ok(testing_help_and_verify("01_mha", NULL, verify, small ? 21 : 101));
}
END_TEST

/* `example` writes the lesson's worked example, and attn on it gives what one works out on paper:
 * query 0 sees keys 0 and 1 with equal scores (P = 1/2, 1/2), query 1 sees all three with scores
 * (0, 0, 1) (P = (1, 1, e) / (2 + e)); V's rows are unit vectors, so O's rows are P. */
START_TEST(test_example_then_attn_gives_the_hand_result)
{
    char prog[4200], q[4200], k[4200], v[4200], o[4200];
    program_path(prog, sizeof prog, "01_mha");
    testing_tmp_path(q, sizeof q, "q.npy"), testing_tmp_path(k, sizeof k, "k.npy");
    testing_tmp_path(v, sizeof v, "v.npy"), testing_tmp_path(o, sizeof o, "o_hand.npy");
    const char *ex[] = {prog, "example", "--out", testing_tmp, NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, ex), 0);
    ck_assert_msg(r.status == 0, "example: %s", r.err);
    const char *at[] = {prog, "attn", "--q", q, "--k", k, "--v", v, "--out", o, "--causal", NULL};
    ck_assert_int_eq(run_program(&r, at), 0);
    ck_assert_msg(r.status == 0, "attn: %s", r.err);
    Tensor out;
    ck_assert_msg(npy_read_tensor(o, 4, &out) == 0, "%s", error_message());
    ck_assert_uint_eq(out.numel, 8);
    const double e = exp(1.0);
    const double want[8] = {0.5, 0.5, 0, 0, 1 / (2 + e), 1 / (2 + e), e / (2 + e), 0};
    for (int i = 0; i < 8; i++)
        ck_assert_msg(fabs(out.data[i] - want[i]) < 1e-6, "O[%d] = %g, by hand %g", i, out.data[i], want[i]);
    tensor_free(&out);
}
END_TEST

/* The case "program": the tests above. */
TestingCase mha_program_case(void)
{
    return (TestingCase){.name = "program", .timeout_s = 300, .temp_dir = 1,
                         .tests = {/* attn */ test_attn_command_matches_float64, test_attn_command_bad_input,
                                   test_attn_refuses_overflowing_scores, test_attn_refuses_a_fifo,
                                   test_example_then_attn_gives_the_hand_result,
                                   /* any subcommand */ test_help_everywhere, test_lost_standard_output_is_an_error,
                                   test_cpu_run_maps_no_gpu_library, test_verify_command_quick}};
}

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
START_TEST(test_cuda_kernels_against_reference)
{
    const int shapes[][7] = {{1, 1, 1, 1, 1, 32, 0},     {2, 3, 3, 17, 29, 64, 1}, {1, 4, 4, 65, 63, 80, 1},
                             {1, 2, 2, 129, 128, 128, 0}, {1, 1, 1, 6, 3, 32, 1},   {2, 8, 8, 257, 257, 64, 1}};
    const size_t n = sizeof shapes / sizeof shapes[0];
    testing_assert_ok(testing_attn_shapes(&MHA_IMPLS, DEVICE_CUDA, shapes, n, 400, ATOL, RTOL));
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

/* The case "cuda": the tests above, then `attn --device cuda` end to end on these shapes. */
TestingCase mha_cuda_case(void)
{
    const int shapes[][7] = {{2, 3, 3, 37, 70, 64, 1}, {1, 2, 2, 5, 5, 128, 0}}; /* B H Hkv T S D causal */
    const TTest *const tests[] = {
        TESTING_CUDA_ONLY(test_cuda_kernels_against_reference, test_cuda_layer_against_cpu), NULL};
    const TestingAttnRun run = {.name = "01_mha", .n_kernels = TESTING_CUDA_ONLY(MHA_CUDA_KERNELS)};
    return testing_cuda_case(120, tests, run, shapes, sizeof shapes / sizeof shapes[0]);
}

/* ==== hostile inputs (common/hostile.h): one error line, exit 1, nothing written ================= */

#define ATTN01 "01_mha", "attn"
#define GOOD_KV "--k", "@/k.npy", "--v", "@/v.npy"
#define ATTN01_Q ATTN01, "--q", "@/q.npy"
static const HostileCase hostile_cases[] = {
    {.argv = {ATTN01, "--q", HOSTILE_BAD_NPY, GOOD_KV, "--out", "@/out.npy"}},
    {.argv = {ATTN01_Q, "--k", "@/nan.npy", "--v", "@/v.npy", "--out", "@/out.npy"}, .expect = "nan.npy"},
    {.argv = {ATTN01_Q, "--k", "@/k1.npy", "--v", "@/k1.npy", "--out", "@/out.npy"}, .expect = "Hkv = 1"},
    {.argv = {ATTN01, "--q", "@/qbig.npy", "--k", "@/kbig.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "overflow"},
    {.argv = {ATTN01_Q, GOOD_KV, "--out", "@/out.npy", "--scale", "1e38"}, .expect = "overflow"},
    {.argv = {ATTN01_Q, GOOD_KV, "--out", "@/out.npy", "--scale", "nan"}, .expect = "--scale"},
    {.argv = {ATTN01, "--q", "--k", "@/k.npy", "--v", "@/v.npy", "--out", "@/out.npy"}, .expect = "--q"},
    {.argv = {ATTN01_Q, GOOD_KV, "--out", HOSTILE_BAD_OUT}},
    {.argv = {ATTN01_Q, GOOD_KV, "--out", "@/out.npy", "--kernel", "99"}, .expect = "--kernel"},
    {.argv = {ATTN01_Q, GOOD_KV, "--out", "@/out.npy", "--kernel", "99999999999"}, .expect = "--kernel"},
    {.argv = {ATTN01_Q, GOOD_KV, "--out", "@/out.npy", "--device", "gpu"}, .expect = "--device"},
    {.argv = {ATTN01_Q, GOOD_KV, "--out", "@/out.npy", "--frobnicate"}, .expect = "--frobnicate"},
    {.argv = {ATTN01, "--q", "@/q\r.npy", GOOD_KV, "--out", "@/out.npy"}, .expect = "\\r"},
    {.argv = {ATTN01_Q, GOOD_KV}, .expect = "--out"},
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
    testing_assert_ok(hostile_check(testing_tmp, hostile_cases, sizeof hostile_cases / sizeof hostile_cases[0]));
}
END_TEST

/* The case "hostile inputs". */
TestingCase mha_hostile_case(void) { return testing_hostile_case(test_hostile_inputs); }
