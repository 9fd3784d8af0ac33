/*
 * test_kvcache_program.c: chapter 04's program end to end (generate with and without the cache,
 * a full disk, special files, logits that overflow, a checkpoint whose sizes wrap, attn through
 * the cache against float64, --help and verify), its CUDA versions (decode, generation, attn),
 * and hostile inputs: the cases "program", "hostile inputs" and "cuda" of chapter 04's suite
 * (test_kvcache.c holds the rest and main()). Bad input gets one error line and exit status 1.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "04_kvcache/kvcache.h"
#include "04_kvcache/test_kvcache.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/hostile.h"
#include "common/model.h"
#include "common/tensor.h"
#include "common/testing.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

/* ==== the program ================================================================================ */

/* A header whose declared size wraps past 2^64 to the file's own size (common/'s suite: the
 * loader refuses it): the program says so in one line (and, under SAN=1, without a sanitizer
 * report). */
START_TEST(test_generate_refuses_a_wrapping_checkpoint)
{
    char path[4200];
    testing_write_wrapping_checkpoint(testing_tmp_path(path, sizeof path, "wrap.bin"));
    char prog[4200];
    const char *argv[] = {program_path(prog, sizeof prog, "04_kvcache"), "generate", "--checkpoint", path,
                          "--max-new", "2", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_msg(r.status == 1 && count_lines(r.err) == 1, "status %d: %s", r.status, r.err);
    ck_assert_msg(strstr(r.err, "bad header: the model's size overflows"), "%s", r.err);
}
END_TEST

/* Generated ids that cannot be written are an error (`generate > /dev/full` once exited 0),
 * and the timing line that would say they were generated is not printed. */
START_TEST(test_generate_to_a_full_disk)
{
    char prog[4200], fifo[4200];
    const char *argv[] = {program_path(prog, sizeof prog, "04_kvcache"), "generate", "--max-new", "3", "--device",
                          "cpu", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program_limited(&r, argv, 120, "/dev/full"), 0);
    ck_assert_msg(r.status == 1 && count_lines(r.err) == 1 &&
                      strstr(r.err, "04_kvcache: error: writing standard output: No space left on device"),
                  "status %d: %s", r.status, r.err);
    /* a FIFO as the checkpoint or the tokenizer: refused at once, not a hang */
    ck_assert_int_eq(mkfifo(testing_tmp_path(fifo, sizeof fifo, "fifo"), 0600), 0);
    const char *ck[] = {prog, "generate", "--checkpoint", fifo, NULL};
    ck_assert_int_eq(run_program_limited(&r, ck, 30, NULL), 0);
    ck_assert_msg(r.status == 1 && strstr(r.err, "fifo: is a FIFO, not a regular file"), "status %d: %s", r.status,
                  r.err);
    const char *tk[] = {prog, "generate", "--tokenizer", testing_tmp, "--max-new", "1", NULL};
    ck_assert_int_eq(run_program_limited(&r, tk, 60, NULL), 0);
    ck_assert_msg(r.status == 1 && strstr(r.err, "is a folder, expected a file"), "status %d: %s", r.status, r.err);
}
END_TEST

START_TEST(test_generate_command)
{
    char prog[4200], ckpt[4200];
    program_path(prog, sizeof prog, "04_kvcache");
    ProcResult with, without;
    const char *a1[] = {prog, "generate", "--prompt", "1 2 3", "--max-new", "12", "--device", "cpu", NULL};
    const char *a2[] = {prog, "generate", "--prompt", "1 2 3", "--max-new", "12", "--device", "cpu", "--no-cache", NULL};
    ck_assert_int_eq(run_program(&with, a1), 0);
    ck_assert_int_eq(run_program(&without, a2), 0);
    ck_assert_msg(with.status == 0 && without.status == 0, "%s %s", with.err, without.err);
    ck_assert_str_eq(with.out, without.out);
    ck_assert_int_eq(count_lines(with.out), 1);
    int n = 0;
    for (char *p = strtok(with.out, " \n"); p; p = strtok(NULL, " \n"))
        n++;
    ck_assert_int_eq(n, 12);
    /* a checkpoint written by the model code runs through the same command */
    Model m;
    small_model(&m, 1, 4);
    ck_assert_int_eq(model_save(&m, testing_tmp_path(ckpt, sizeof ckpt, "small.bin")), 0);
    const char *a3[] = {prog, "generate", "--checkpoint", ckpt, "--prompt", "5", "--max-new", "7", "--kv-dtype", "int8",
                        "--device", "cpu", NULL};
    ProcResult r;
    ck_assert_int_eq(run_program(&r, a3), 0);
    ck_assert_msg(r.status == 0, "%s", r.err);
    /* and its ids are the int8 cache's greedy tokens, in process (the program's defaults: kernel
     * 0, seed 42), not just an exit status */
    int prompt5[1] = {5}, ids[7];
    GenOptions g = {.max_new = 7, .temperature = 0.0f, .seed = 42, .use_cache = 1, .dtype = KV_INT8, .kernel = 0};
    ck_assert_int_eq(kvcache_generate(&m, prompt5, 1, &g, ids, NULL), 0);
    char expect[128] = "";
    for (int i = 0; i < 7; i++)
        snprintf(expect + strlen(expect), sizeof expect - strlen(expect), "%s%d", i ? " " : "", ids[i]);
    r.out[strcspn(r.out, "\n")] = '\0';
    ck_assert_str_eq(r.out, expect);
    model_free(&m);
    testing_expect_error("04_kvcache", "not a list of token ids", "generate", "--prompt", "1 x 3");
    testing_expect_error("04_kvcache", "ids must be in 0..1023", "generate", "--prompt", "1 5000");
    testing_expect_error("04_kvcache", "exceeds the model's seq_len 2048", "generate", "--max-new", "2048");
    testing_expect_error("04_kvcache", "must be one of f32|f16|int8", "generate", "--kv-dtype", "int4");
    testing_expect_error("04_kvcache", "cannot open", "generate", "--checkpoint", "/nonexistent.bin");
    const ModelConfig small = small_config(1);
    testing_write_checkpoint(testing_tmp_path(ckpt, sizeof ckpt, "trunc.bin"), &small, 100);
    testing_expect_error("04_kvcache", "truncated", "generate", "--checkpoint", ckpt);
    testing_expect_error("04_kvcache", "unknown subcommand", "frobnicate");
    /* the temperature rule, the ranges, values that are options, options that exclude each other */
    testing_expect_error("04_kvcache", "--temperature 1e-40 is below the smallest normal float", "generate",
                         "--temperature", "1e-40");
    testing_expect_error("04_kvcache", "--temperature expects a number from 0 to 100, got '-1'", "generate",
                         "--temperature", "-1");
    testing_expect_error("04_kvcache", "--temperature expects a number", "generate", "--temperature", "nan");
    testing_expect_error("04_kvcache", "--temperature expects a number", "generate", "--temperature", "inf");
    testing_expect_error("04_kvcache", "--max-new expects an integer from 0 to 16777216, got '99999999999'", "generate",
                         "--max-new", "99999999999");
    testing_expect_error("04_kvcache", "--checkpoint needs a value, got the option '--prompt'", "generate",
                         "--checkpoint", "--prompt", "1");
    testing_expect_error("04_kvcache", "--prompt and --prompt-text cannot be given together", "generate", "--prompt",
                         "1", "--prompt-text", "hi");
    testing_expect_error("04_kvcache", "--no-cache and --kv-dtype cannot be given together", "generate", "--no-cache",
                         "--kv-dtype", "f16");
    testing_expect_error("04_kvcache", "--no-cache and --prefill-chunk cannot be given together", "generate",
                         "--no-cache", "--prefill-chunk", "4");
}
END_TEST

/* A checkpoint whose weights make the logits overflow float32 (finite weights, rms_final of
 * 3e38): generation stops with an error naming the logit, in-process and in the program, instead
 * of sampling the last id from NaN probabilities. */
START_TEST(test_generation_stops_at_overflowing_logits)
{
    Model m;
    small_model(&m, 0, 6);
    for (int i = 0; i < m.c.dim; i++)
        m.w.rms_final[i] = 3e38f;
    char ckpt[4200];
    ck_assert_int_eq(model_save(&m, testing_tmp_path(ckpt, sizeof ckpt, "huge.bin")), 0);
    model_free(&m);
    ck_assert_msg(model_load(ckpt, &m) == 0, "%s", error_message()); /* finite weights: it loads */
    int prompt[2] = {3, 4}, out[4];
    for (int t = 0; t < 2; t++) {
        GenOptions o = {.max_new = 4, .temperature = t ? 0.8f : 0.0f, .seed = 1, .use_cache = 1, .dtype = KV_F32,
                        .kernel = 2};
        ck_assert_int_eq(kvcache_generate(&m, prompt, 2, &o, out, NULL), -1);
        ck_assert_msg(strstr(error_message(), "overflowed float32"), "%s", error_message());
    }
    model_free(&m);
    testing_expect_error("04_kvcache", "overflowed float32", "generate", "--checkpoint", ckpt, "--prompt", "3 4",
                         "--max-new", "3", "--device", "cpu");
}
END_TEST

START_TEST(test_attn_through_the_cache_matches_float64)
{
    const int shapes[][7] = {{2, 6, 2, 1, 29, 20, 1}, {1, 8, 2, 5, 40, 64, 1}, {1, 4, 4, 17, 17, 16, 1},
                             {2, 9, 3, 3, 100, 7, 0}}; /* B H Hkv T S D causal */
    const TestingAttnRun run = {.name = "04_kvcache", .device = "cpu", .n_kernels = KVCACHE_CPU_KERNELS, .seed = 1};
    testing_assert_ok(testing_attn_program(&run, testing_tmp, shapes, sizeof shapes / sizeof shapes[0], ATOL, RTOL));
}
END_TEST

START_TEST(test_help_and_verify)
{
    const char *subs[] = {"generate", "attn", "verify", "bench", NULL};
    const char *verify[] = {"--quick", "--device", "cpu", NULL};
    testing_assert_ok(testing_help_and_verify("04_kvcache", subs, verify, 201));
}
END_TEST

/* The case "program": the tests above. */
TestingCase kvcache_program_case(void)
{
    return (TestingCase){.name = "program", .timeout_s = 300, .temp_dir = 1,
                         .tests = {test_generate_command, test_generate_refuses_a_wrapping_checkpoint,
                                   test_generate_to_a_full_disk, test_generation_stops_at_overflowing_logits,
                                   test_attn_through_the_cache_matches_float64, test_help_and_verify}};
}

/* ==== CUDA (only with a GPU) ====================================================================== */

#if HAVE_CUDA
/* The split decode kernel against the CPU's, lengths ragged within a batch: G = 4 at D = 128; G = 32
 * at D = 128, whose 49.5 KiB of shared memory need the opt-in above 48 KiB; D = 256, the largest
 * head the chapter takes; and lengths under one part. Unused cache slots hold NaN on the GPU. */
START_TEST(test_cuda_decode)
{
    const struct {
        int B, H, Hkv, D, max_seq, lens[3];
    } cases[] = {
        {3, 8, 2, 128, 1024, {1, 500, 1024}},
        {2, 32, 1, 128, 300, {300, 77, 0}},
        {2, 4, 4, 256, 200, {3, 200, 0}},
        {3, 6, 3, 64, 40, {2, 1, 39}},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int B = cases[ci].B, H = cases[ci].H, Hkv = cases[ci].Hkv, D = cases[ci].D, max_seq = cases[ci].max_seq;
        const int *lens = cases[ci].lens;
        int max_len = 1;
        for (int b = 0; b < B; b++)
            max_len = lens[b] > max_len ? lens[b] : max_len;
        KvCache kc;
        random_cache(&kc, B, Hkv, max_seq, D, KV_F32, lens, 31 + ci);
        const size_t nq = (size_t)B * H * D, nk = (size_t)B * Hkv * max_seq * D;
        float *q = xmalloc(nq * 4, "q");
        float *ref = xmalloc(nq * 4, "ref");
        float *got = xmalloc(nq * 4, "got");
        float *k = xmalloc(nk * 4, "k");
        float *v = xmalloc(nk * 4, "v");
        fill_normal(q, nq, 2 + ci);
        ck_assert_int_eq(kvcache_decode_split(&kc, 0, H, 1.0f / sqrtf((float)D), B, NULL, lens, q, ref, 0), 0);
        memcpy(k, kc.k, nk * 4), memcpy(v, kc.v, nk * 4);
        for (int b = 0; b < B; b++) /* (B, Hkv, max_seq, D): NaN past each sequence's length */
            for (int h = 0; h < Hkv; h++)
                for (size_t x = (size_t)lens[b] * D; x < (size_t)max_seq * D; x++)
                    k[((size_t)b * Hkv + h) * max_seq * D + x] = v[((size_t)b * Hkv + h) * max_seq * D + x] = NAN;
        float *d_k = cuda_alloc(nk * 4), *d_v = cuda_alloc(nk * 4), *d_q = cuda_alloc(nq * 4), *d_o = cuda_alloc(nq * 4);
        int *d_lens = cuda_alloc((size_t)B * sizeof(int));
        cuda_upload(d_k, k, nk * 4), cuda_upload(d_v, v, nk * 4), cuda_upload(d_q, q, nq * 4);
        cuda_upload(d_lens, lens, (size_t)B * sizeof(int));
        for (int rep = 0; rep < 2; rep++) { /* twice: the second call reuses the kept workspace */
            cuda_memset_nan(d_o, nq * 4);
            ck_assert_msg(kvcache_decode_cuda(1, d_k, d_v, B, H, Hkv, max_seq, D, d_q, d_lens, max_len, d_o) == 0,
                          "case %zu: %s", ci, error_message());
            cuda_download(got, d_o, nq * 4);
            ck_assert_msg(compare_f32("cuda decode", got, ref, nq, ATOL, RTOL, 5).n_bad == 0, "case %zu", ci);
        }
        cuda_free(d_k), cuda_free(d_v), cuda_free(d_q), cuda_free(d_o), cuda_free(d_lens);
        free(q), free(ref), free(got), free(k), free(v);
        kvcache_free(&kc);
    }
}
END_TEST

/* The whole model on the GPU against the CPU, greedy: with the cache, with the prompt prefilled
 * in chunks, and without the cache. Two fp32 computations that add in different orders: the
 * tokens must be identical, or part only where the CPU's two best logits are a near-tie. */
START_TEST(test_cuda_generate_matches_cpu)
{
    Model m;
    ModelConfig c = model_default_config();
    ck_assert_int_eq(model_init_random(&m, &c, MODEL_DEFAULT_SEED), 0);
    int prompt[5] = {1, 2, 3, 4, 5}, a[24], b[24];
    const struct {
        int use_cache, chunk;
        const char *what;
    } modes[] = {{1, 0, "cache"}, {1, 2, "cache, prefill in chunks of 2"}, {1, 1, "cache, prefill a token at a time"},
                 {0, 0, "no cache"}};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        GenOptions o = {.max_new = 24, .temperature = 0.0f, .use_cache = modes[i].use_cache, .dtype = KV_F32,
                        .kernel = 2, .prefill_chunk = modes[i].chunk};
        ck_assert_int_eq(kvcache_generate(&m, prompt, 5, &o, a, NULL), 0);
        ck_assert_msg(kvcache_generate_cuda(&m, prompt, 5, &o, b, NULL) == 0, "%s: %s", modes[i].what, error_message());
        double gap = 0.0;
        const int at = kvcache_greedy_divergence(&m, prompt, 5, a, b, 24, &gap);
        ck_assert_msg(at == -1 || (at >= 0 && gap <= KVCACHE_NEAR_TIE),
                      "%s: the GPU's token %d is %d, the CPU's %d, and their logits are %g apart (not a near-tie)",
                      modes[i].what, at, at >= 0 ? b[at] : -1, at >= 0 ? a[at] : -1, gap);
        if (at >= 0)
            printf("04_kvcache: %s: GPU and CPU part at token %d, a near-tie (%.1e)\n", modes[i].what, at, gap);
    }
    model_free(&m);
}
END_TEST
#endif

/* The case "cuda": the tests above, then `attn --device cuda` end to end on these shapes. */
TestingCase kvcache_cuda_case(void)
{
    const int shapes[][7] = {{3, 8, 2, 1, 300, 128, 1}, {2, 4, 4, 1, 17, 256, 0}, {1, 8, 2, 12, 40, 64, 1}}; /* B H Hkv T S D causal */
    const TTest *const tests[] = {TESTING_CUDA_ONLY(test_cuda_decode, test_cuda_generate_matches_cpu), NULL};
    const TestingAttnRun run = {.name = "04_kvcache", .n_kernels = TESTING_CUDA_ONLY(KVCACHE_CUDA_KERNELS)};
    return testing_cuda_case(300, tests, run, shapes, sizeof shapes / sizeof shapes[0]);
}

/* ==== hostile inputs (common/hostile.h): one error line, exit 1, nothing written ================= */

#define GEN04 "04_kvcache", "generate", "--device", "cpu"
#define GEN04_MODEL GEN04, "--checkpoint", "@/model.bin"
static const HostileCase hostile_cases[] = {
    {.argv = {GEN04, "--checkpoint", HOSTILE_BAD_FILE}},
    {.argv = {GEN04, "--checkpoint", "@/trunc.bin"}, .expect = "trunc.bin"},
    {.argv = {GEN04, "--checkpoint", "@/wrap.bin"}, .expect = "overflows"},
    {.argv = {GEN04, "--checkpoint", "@/q.npy"}, .expect = "q.npy"},
    {.argv = {GEN04_MODEL, "--tokenizer", HOSTILE_BAD_FILE, "--prompt-text", "hi"}},
    {.argv = {GEN04_MODEL, "--tokenizer", "@/trunc.bin", "--prompt-text", "hi"},
     .expect = "trunc.bin"},
    {.argv = {GEN04_MODEL, "--prompt-text", "hi"}, .expect = "--tokenizer"},
    {.argv = {GEN04_MODEL, "--tokenizer", "@/tok.bin", "--prompt", "1 2", "--prompt-text", "hi"},
     .expect = "--prompt-text"},
    {.argv = {GEN04_MODEL, "--no-cache", "--kv-dtype", "int8"}, .expect = "--kv-dtype"},
    {.argv = {GEN04_MODEL, "--temperature", "1e-40"}, .expect = "--temperature"},
    {.argv = {GEN04_MODEL, "--temperature", "-1"}, .expect = "--temperature"},
    {.argv = {GEN04_MODEL, "--temperature", "nan"}, .expect = "--temperature"},
    {.argv = {GEN04_MODEL, "--temperature", "1", "--top-p", "0"}, .expect = "--top-p 0: expected a number in (0, 1]"},
    {.argv = {GEN04_MODEL, "--top-p", "nan"}, .expect = "--top-p"},
    {.argv = {GEN04_MODEL, "--top-k", "-1"}, .expect = "--top-k"},
    {.argv = {GEN04_MODEL, "--prompt", "1 2 x"}, .expect = "--prompt"},
    {.argv = {GEN04_MODEL, "--prompt", "1 99999"}, .expect = "99999"},
    {.argv = {GEN04_MODEL, "--prompt", ""}, .expect = "--prompt"},
    {.argv = {GEN04_MODEL, "--max-new", "-1"}, .expect = "--max-new"},
    {.argv = {GEN04_MODEL, "--max-new", "99999999999"}, .expect = "--max-new"},
    {.argv = {GEN04_MODEL, "--max-new", "300"}, .expect = "seq_len"},
    {.argv = {GEN04_MODEL, "--prefill-chunk", "0"}, .expect = "--prefill-chunk"},
    {.argv = {GEN04_MODEL, "--kv-dtype", "f8"}, .expect = "--kv-dtype"},
    {.argv = {GEN04_MODEL, "--kernel", "3"}, .expect = "--kernel"},
    {.argv = {GEN04_MODEL, "--seed"}, .expect = "--seed"},
    {.argv = {GEN04_MODEL, "--tokenizer", "@/tok.bin", "--prompt-text", "<@/long.txt"},
     .expect = "seq_len"},
    {.argv = {GEN04_MODEL, "--max-new", "4"},
     .expect = "standard output", .stdout_to = "/dev/full"},
    {.argv = {"04_kvcache", "attn", "--q", "@/qbig.npy", "--k", "@/kbig.npy", "--v", "@/v.npy", "--out", "@/out.npy"},
     .expect = "overflow"},
    {.argv = {"04_kvcache", "attn", "--q", "@/q.npy", "--k", "@/k.npy", "--v", "@/v.npy", "--out", HOSTILE_BAD_OUT}},
    {.argv = {"04_kvcache", "bench", "--out", "@/out", "--max-l", "1024", "--gen-tokens", "0", "--repeats", "1"},
     .expect = "is a folder"},
    {.argv = {"04_kvcache", "bench", "--gen-tokens", "-4"}, .expect = "--gen-tokens"},
};

START_TEST(test_hostile_inputs)
{
    testing_assert_ok(hostile_check(testing_tmp, hostile_cases, sizeof hostile_cases / sizeof hostile_cases[0]));
}
END_TEST

/* The case "hostile inputs". */
TestingCase kvcache_hostile_case(void) { return testing_hostile_case(test_hostile_inputs); }
