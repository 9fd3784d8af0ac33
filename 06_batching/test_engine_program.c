/*
 * test_engine_program.c: chapter 06's program end to end (serve against chapter 05 alone, its
 * metrics and iterations files by value, bad input, special files and lost output, bench that
 * validates before it writes, gen-requests, verify and --help, serve's determinism), text and
 * BOS/EOS stops through chapters 04, 05 and 06, the engine on the GPU, and hostile inputs: the
 * second part of the case "requests and program", and the cases "hostile inputs" and "cuda"
 * (test_engine.c holds main()). Bad input gets one error line and exit status 1.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "06_batching/engine.h"
#include "06_batching/test_engine.h"
#include "common/compare.h"
#include "common/error.h"
#include "common/hostile.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/tokenizer.h"

/* ==== the program ================================================================================ */

/* `06_batching args...` into r (the test fails if it cannot be started). */
static void run(ProcResult *r, const char *const *args) { ck_assert_int_eq(testing_run(r, "06_batching", args), 0); }

/* The value of `key` in a metrics file's text ("key\tvalue" lines); fails the test when absent. */
static double tsv_value(const char *text, const char *key)
{
    const size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, key, n) == 0 && p[n] == '\t')
            return strtod(p + n + 1, NULL);
    ck_abort_msg("no %s in the metrics: %s", key, text);
    return NAN;
}

START_TEST(test_serve_command)
{
    char req[4200], met[4200], its[4200], p5[4200];
    testing_tmp_path(req, sizeof req, "r.txt");
    testing_tmp_path(met, sizeof met, "m.tsv");
    testing_tmp_path(its, sizeof its, "i.tsv");
    program_path(p5, sizeof p5, "05_paged");
    /* the third arrives first; the fourth can never fit (2000 + 100 > seq_len 2048) */
    write_text(req, "0.2 6 1 2 3\n0.1 5 7\n0 4 9 8 7 6\n0 100 5\n");
    FILE *f = fopen(req, "a");
    fprintf(f, "0.3 100");
    for (int i = 0; i < 2000; i++)
        fprintf(f, " %d", i % 1000);
    fprintf(f, "\n");
    fclose(f);
    ProcResult r;
    run(&r, (const char *[]){"serve", "--requests", req, "--max-batch", "2", "--metrics", met, "--iterations", its,
                             "--shuffle", "5", "--device", "cpu", NULL});
    ck_assert_msg(r.status == 0, "%s", r.err);
    ck_assert_int_eq(count_lines(r.out), 5);
    /* each line equals chapter 05 alone */
    const char *prompts[4] = {"1 2 3", "7", "9 8 7 6", "5"}, *news[4] = {"6", "5", "4", "100"};
    char *save = NULL, *line = strtok_r(r.out, "\n", &save);
    for (int i = 0; i < 4; i++, line = strtok_r(NULL, "\n", &save)) {
        const char *argv[] = {p5, "generate", "--prompt", prompts[i], "--max-new", news[i], NULL};
        ProcResult g;
        ck_assert_int_eq(run_program(&g, argv), 0);
        g.out[strcspn(g.out, "\n")] = 0;
        char *expect = xmalloc(strlen(g.out) + 16, "expected line");
        sprintf(expect, "%d: %s", i, g.out);
        ck_assert_msg(line && strcmp(line, expect) == 0, "request %d: '%s' against '%s'", i, line, expect);
        free(expect);
    }
    ck_assert_msg(line && strncmp(line, "4: rejected: prompt (2000 tokens) + max_new (100) exceeds", 57) == 0, "%s",
                  line);
    ck_assert_msg(strstr(r.err, "4 served, 1 rejected"), "%s", r.err);
    char buf[4096];
    FILE *m = fopen(met, "r");
    ck_assert_ptr_nonnull(m);
    size_t got = fread(buf, 1, sizeof buf - 1, m);
    buf[got] = 0;
    fclose(m);
    ck_assert_msg(strstr(buf, "throughput_tokens_per_s\t") && strstr(buf, "ttft_p99_s\t") &&
                      strstr(buf, "preemptions\t0\n") && strstr(buf, "requests_rejected\t1\n") &&
                      strstr(buf, "requests_served\t4\n") && strstr(buf, "output_tokens\t115\n"),
                  "%s", buf);
    /* the values, not only the names: the clock is the machine's, so the checks are the ones any
     * clock satisfies -- the iterations file has the metrics' iteration count, its last clock is
     * the makespan (the first request arrives at 0), the throughput is the tokens over it, every
     * prompt token is prefilled once (no preemption) and every token after a request's first is
     * one decode, and the percentiles are ordered */
    const double makespan = tsv_value(buf, "makespan_s"), throughput = tsv_value(buf, "throughput_tokens_per_s");
    const int iterations = (int)tsv_value(buf, "iterations");
    ck_assert_msg(makespan > 0 && fabs(throughput - 115 / makespan) <= 1e-3 * throughput + 1e-3, "%s", buf);
    ck_assert_msg(tsv_value(buf, "ttft_p50_s") <= tsv_value(buf, "ttft_p99_s") &&
                      tsv_value(buf, "tpot_p50_s") <= tsv_value(buf, "tpot_p99_s") && tsv_value(buf, "tpot_p50_s") > 0,
                  "%s", buf);
    FILE *it = fopen(its, "r");
    ck_assert_ptr_nonnull(it);
    ck_assert_ptr_nonnull(fgets(buf, sizeof buf, it));
    ck_assert_str_eq(buf, "# iteration\tclock_s\trunning\twaiting\tscheduled\tprefill_tokens\tdecode_tokens\tblocks_used\t"
                          "cached_blocks\treused_tokens\n");
    int rows = 0, prefill = 0, decode = 0;
    double clock = 0, last_clock = 0;
    for (int idx, running, waiting, sched, pf, dc, blocks, cached, reused;
         fscanf(it, "%d %lf %d %d %d %d %d %d %d %d", &idx, &clock, &running, &waiting, &sched, &pf, &dc, &blocks,
                &cached, &reused) == 10;
         rows++) {
        ck_assert_int_eq(idx, rows);
        ck_assert_msg(clock >= last_clock && sched <= 2 && pf + dc >= 1, "row %d", idx);
        last_clock = clock, prefill += pf, decode += dc;
    }
    fclose(it);
    ck_assert_int_eq(rows, iterations);
    ck_assert_msg(fabs(last_clock - makespan) <= 2e-6, "last clock %f, makespan %f", last_clock, makespan);
    ck_assert_int_eq(prefill, 3 + 1 + 4 + 1); /* the served prompts */
    ck_assert_int_eq(decode, 115 - 4);        /* each served request's first token comes from its prefill */
}
END_TEST

/* serve's (and the program's) bad input: one error line, exit 1. */
START_TEST(test_serve_command_errors)
{
    char req[4200];
    testing_tmp_path(req, sizeof req, "r.txt");
    testing_expect_error("06_batching", "--requests", "serve");
    testing_expect_error("06_batching", "cannot open", "serve", "--requests", "/nonexistent.txt");
    write_text(req, "0 4 1 2\n0 x 1\n");
    testing_expect_error("06_batching", "r.txt:2:", "serve", "--requests", req);
    write_text(req, "0 4 1 2\n");
    testing_expect_error("06_batching", "continuous|static", "serve", "--requests", req, "--policy", "fifo");
    testing_expect_error("06_batching", "--max-batch expects an integer from 1 to 1048576, got '0'", "serve",
                         "--requests", req, "--max-batch", "0");
    /* the default pool of 2^20 sequences of 2048 tokens in blocks of 1: 2^31 blocks, said as such */
    testing_expect_error("06_batching", "would need 2147483648 blocks", "serve", "--requests", req, "--max-batch",
                         "1048576", "--block-size", "1");
    testing_expect_error("06_batching", "--temperature 1e-40 is below the smallest normal float", "serve",
                         "--requests", req, "--temperature", "1e-40");
    testing_expect_error("06_batching", "--requests needs a value, got the option '--max-batch'", "serve",
                         "--requests", "--max-batch", "2");
    testing_expect_error("06_batching", "--checkpoint is timed on the CPU, and --device cuda runs the GPU rows only",
                         "bench", "--device", "cuda", "--checkpoint", req);
    /* bench's --checkpoint defaults to the environment's CHECKPOINT (how make bench passes it);
     * an empty one is no checkpoint */
    setenv("CHECKPOINT", "/nonexistent/model.bin", 1);
    testing_expect_error("06_batching", "/nonexistent/model.bin", "bench", "--requests", "4");
    testing_expect_error("06_batching", "the environment's CHECKPOINT", "bench", "--device", "cuda");
    setenv("CHECKPOINT", "", 1);
    testing_expect_error("06_batching", "--requests expects an integer from 4", "bench", "--requests", "3");
    unsetenv("CHECKPOINT");
    testing_expect_error("06_batching", "unknown subcommand", "frobnicate");
}
END_TEST

/* Hostile files around serve: special files as inputs are refused at once; an output that cannot
 * be written is refused before serving, or (a full disk) makes the run fail -- never exit 0 with
 * results or metrics lost, never "N served" for lines that were not written. */
START_TEST(test_serve_special_files_and_lost_output)
{
    char req[4200], fifo[4200], met[4200];
    testing_tmp_path(req, sizeof req, "r.txt"), testing_tmp_path(fifo, sizeof fifo, "fifo");
    testing_tmp_path(met, sizeof met, "m.tsv");
    write_text(req, "0 2 1 2 3\n0 1 4\n");
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    char prog[4200];
    program_path(prog, sizeof prog, "06_batching");
    const struct {
        const char *argv[12];
        const char *stdout_to, *expect;
    } cases[] = {
        {.argv = {"serve", "--requests", fifo}, .expect = "fifo: is a FIFO, not a regular file"},
        {.argv = {"serve", "--requests", testing_tmp}, .expect = "is a folder, expected a file"},
        {.argv = {"serve", "--requests", req, "--tokenizer", testing_tmp}, .expect = "is a folder, expected a file"},
        {.argv = {"serve", "--requests", req, "--tokenizer", fifo}, .expect = "is a FIFO"},
        {.argv = {"serve", "--requests", req, "--checkpoint", fifo}, .expect = "is a FIFO"},
        {.argv = {"serve", "--requests", req, "--metrics", testing_tmp}, .expect = "is a folder, expected a file"},
        {.argv = {"serve", "--requests", req, "--iterations", fifo, "--device", "cpu"},
         .expect = "no process is reading"},
        {.argv = {"serve", "--requests", req, "--metrics", "/dev/full", "--device", "cpu"},
         .expect = "/dev/full: write failed: No space left on device"},
        {.argv = {"serve", "--requests", req, "--device", "cpu"}, .stdout_to = "/dev/full",
         .expect = "writing standard output: No space left"},
        {.argv = {"gen-requests", "--out", fifo}, .expect = "no process is reading"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *argv[16] = {prog};
        for (int i = 0; cases[c].argv[i]; i++)
            argv[i + 1] = cases[c].argv[i];
        ProcResult r;
        ck_assert_int_eq(run_program_limited(&r, argv, 60, cases[c].stdout_to), 0);
        ck_assert_msg(r.status == 1 && count_lines(r.err) == 1 && strstr(r.err, cases[c].expect),
                      "case %zu: status %d, stderr: %s", c, r.status, r.err);
        ck_assert_msg(!strstr(r.err, "served"), "case %zu reported its results: %s", c, r.err);
        if (c != 7 && c != 8) /* refused before serving: nothing printed */
            ck_assert_msg(r.out[0] == '\0', "case %zu printed: %s", c, r.out);
    }
}
END_TEST

/* bench validates the device and the checkpoint before it opens an output or times anything:
 * the previous --out file (and the README's data) are left as they were, and it fails fast. */
START_TEST(test_bench_validates_before_it_writes)
{
    char out[4200], before[4096], after[4096];
    testing_tmp_path(out, sizeof out, "rows.tsv");
    write_text(out, "previous rows\n");
    testing_folder_names(testing_tmp, before, sizeof before);
    char why[256];
    const int gpu = testing_cuda_available(why, sizeof why);
    const char *cases[][8] = {
        {"bench", "--checkpoint", "/nonexistent/model.bin", "--out", out, NULL},
        {"bench", "--device", "cuda", "--out", out, NULL}, /* only without a GPU */
    };
    for (int c = 0; c < (gpu ? 1 : 2); c++) {
        char prog[4200];
        const char *argv[10] = {program_path(prog, sizeof prog, "06_batching")};
        for (int i = 0; cases[c][i]; i++)
            argv[i + 1] = cases[c][i];
        ProcResult r;
        ck_assert_int_eq(run_program_limited(&r, argv, 30, NULL), 0);
        ck_assert_msg(r.status == 1 && count_lines(r.err) == 1, "case %d: status %d: %s", c, r.status, r.err);
        ck_assert_msg(strstr(r.err, c ? "no usable GPU" : "cannot open"), "case %d: %s", c, r.err);
        testing_folder_names(testing_tmp, after, sizeof after);
        ck_assert_str_eq(before, after);
        char got[64] = "";
        FILE *f = fopen(out, "r");
        ck_assert_ptr_nonnull(f);
        ck_assert_ptr_nonnull(fgets(got, sizeof got, f));
        fclose(f);
        ck_assert_str_eq(got, "previous rows\n");
    }
}
END_TEST

START_TEST(test_gen_requests_and_verify)
{
    char a[4200], b[4200];
    testing_tmp_path(a, sizeof a, "a.txt"), testing_tmp_path(b, sizeof b, "b.txt");
    ProcResult r;
    run(&r, (const char *[]){"gen-requests", "--out", a, "--n", "30", "--rate", "4", "--seed", "3", NULL});
    ck_assert_msg(r.status == 0, "%s", r.err);
    run(&r, (const char *[]){"gen-requests", "--out", b, "--n", "30", "--rate", "4", "--seed", "3", NULL});
    EngineRequest *x, *y;
    int nx, ny;
    ck_assert_int_eq(engine_read_requests(a, NULL, 0, &x, &nx), 0);
    ck_assert_int_eq(engine_read_requests(b, NULL, 0, &y, &ny), 0);
    ck_assert_int_eq(nx, 30);
    for (int i = 0; i < 30; i++) /* the same seed gives the same workload, arrivals in order */
        ck_assert(x[i].arrival == y[i].arrival && x[i].n_prompt == y[i].n_prompt &&
                  (i == 0 || x[i].arrival >= x[i - 1].arrival) && x[i].n_prompt + x[i].max_new <= 2048);
    engine_free_requests(x, nx), engine_free_requests(y, ny);
    /* under emulation the quick verify (one workload, greedy: 9 cases, not 54); the in-process
     * tests above cover arrivals over time and sampling there */
    const int small = testing_small();
    const char *subs[] = {"serve", "gen-requests", "verify", "bench", NULL};
    const char *verify[] = {"--device", "cpu", small ? "--quick" : NULL, NULL};
    testing_assert_ok(testing_help_and_verify("06_batching", subs, verify, small ? 9 : 54));
}
END_TEST

START_TEST(test_serve_is_deterministic)
{
    char req[4200];
    testing_tmp_path(req, sizeof req, "r.txt");
    ProcResult a;
    run(&a, (const char *[]){"gen-requests", "--out", req, "--n", "12", "--rate", "30", "--prompt-median", "6",
                             "--output-median", "8", "--seed", "9", NULL});
    ck_assert_msg(a.status == 0, "%s", a.err);
    const char *threads[3] = {"1", "2", "2"};
    char first[65536] = "";
    for (int i = 0; i < 3; i++) { /* the same output with 1 thread, 2 threads, and 2 threads again */
        setenv("OMP_NUM_THREADS", threads[i], 1);
        ProcResult r;
        run(&r, (const char *[]){"serve", "--requests", req, "--max-batch", "4", "--device", "cpu", NULL});
        unsetenv("OMP_NUM_THREADS");
        ck_assert_msg(r.status == 0, "%s", r.err);
        if (i == 0)
            snprintf(first, sizeof first, "%s", r.out);
        else
            ck_assert_msg(strcmp(first, r.out) == 0, "run %d (%s threads) differs", i, threads[i]);
    }
}
END_TEST

/* ==== text: a tokenizer and a checkpoint made here, through chapters 04, 05 and 06 =============== */

START_TEST(test_text_through_chapters_04_05_06)
{
    char tok[4200], ck[4200], req[4200], p4[4200], p5[4200];
    testing_tmp_path(tok, sizeof tok, "tok.bin"), testing_tmp_path(ck, sizeof ck, "tiny.bin");
    testing_tmp_path(req, sizeof req, "r.txt");
    program_path(p4, sizeof p4, "04_kvcache"), program_path(p5, sizeof p5, "05_paged");
    const int V = testing_write_tiny_tokenizer(tok);
    ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = V,
                     .seq_len = 128, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 8), 0);
    ck_assert_int_eq(model_save(&m, ck), 0);
    model_free(&m);
    const char *prompts[2] = {"Once upon a time", "the and\\nin"}; /* the second with an escaped newline */
    FILE *f = fopen(req, "w");
    fprintf(f, "# text mode: the prompt is the rest of the line\n0 30 %s\n0.01 25 %s\n", prompts[0], prompts[1]);
    fclose(f);
    ProcResult r6;
    run(&r6, (const char *[]){"serve", "--checkpoint", ck, "--tokenizer", tok, "--requests", req, "--device", "cpu",
                              "--max-batch", "2", NULL});
    ck_assert_msg(r6.status == 0, "%s", r6.err);
    char *save = NULL, *line = strtok_r(r6.out, "\n", &save);
    for (int i = 0; i < 2; i++, line = strtok_r(NULL, "\n", &save)) {
        char prompt[64], news[8];
        snprintf(prompt, sizeof prompt, "%s", prompts[i]);
        text_unescape(prompt);
        snprintf(news, sizeof news, "%d", i ? 25 : 30);
        ProcResult r4, r5;
        const char *a4[] = {p4, "generate", "--checkpoint", ck, "--tokenizer", tok, "--prompt-text", prompt, "--max-new",
                            news, "--device", "cpu", NULL};
        const char *a5[] = {p5, "generate", "--checkpoint", ck, "--tokenizer", tok, "--prompt-text", prompt, "--max-new",
                            news, "--block-size", "4", NULL};
        ck_assert_int_eq(run_program(&r4, a4), 0);
        ck_assert_int_eq(run_program(&r5, a5), 0);
        ck_assert_msg(r4.status == 0 && r5.status == 0, "%s %s", r4.err, r5.err);
        ck_assert_str_eq(r4.out, r5.out); /* chapter 05's text is chapter 04's */
        /* chapter 06 prints the continuation alone, escaped onto one line */
        char prefix[16];
        snprintf(prefix, sizeof prefix, "%d: ", i);
        ck_assert_msg(line && strncmp(line, prefix, strlen(prefix)) == 0, "%s", line);
        const char *escaped = line + strlen(prefix);
        char *cont = xmalloc(strlen(escaped) + 1, "the continuation"); /* with its NUL */
        memcpy(cont, escaped, strlen(escaped) + 1);
        text_unescape(cont);
        char *whole = xmalloc(strlen(prompt) + strlen(cont) + 2, "whole text");
        sprintf(whole, "%s%s\n", prompt, cont);
        ck_assert_msg(strcmp(whole, r4.out) == 0, "request %d: chapter 06 '%s' against chapter 04 '%s'", i, whole,
                      r4.out);
        ck_assert_int_gt((int)strlen(cont), 10);
        free(cont), free(whole);
    }
}
END_TEST

/* A model whose logits are all zero (final norm weight 0): sampling is uniform, so where the
 * first BOS or EOS falls is known from the generator alone, without running the model. */
START_TEST(test_stop_at_bos_eos_in_every_chapter)
{
    char ck[4200];
    testing_tmp_path(ck, sizeof ck, "flat.bin");
    ModelConfig c = {.dim = 32, .hidden_dim = 48, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1, .vocab_size = 40,
                     .seq_len = 200, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 2), 0);
    memset(m.w.rms_final, 0, (size_t)c.dim * sizeof(float));
    ck_assert_int_eq(model_save(&m, ck), 0);
    model_free(&m);
    ck_assert_int_eq(model_load(ck, &m), 0);
    const int prompt[3] = {TOKEN_BOS, 5, 6}, N = 150;
    for (uint64_t seed = 1; seed <= 3; seed++) {
        /* the generator's own sequence: where does it first draw 1 or 2? */
        Rng rng;
        model_rng_seed(&rng, seed);
        float *flat = xcalloc((size_t)c.vocab_size, sizeof(float), "logits");
        int stop = -1, want[150];
        for (int t = 0; t < N && stop < 0; t++) {
            memset(flat, 0, (size_t)c.vocab_size * sizeof(float));
            want[t] = model_sample(flat, c.vocab_size, 1.0f, &rng);
            if (want[t] == TOKEN_BOS || want[t] == TOKEN_EOS)
                stop = t;
        }
        free(flat);
        ck_assert_int_ge(stop, 0); /* 2 of 40 tokens stop: within 150 draws for these seeds */
        int out4[150], out5[150];
        GenOptions o4 = {.max_new = N, .temperature = 1.0f, .seed = seed, .use_cache = 1, .dtype = KV_F32, .kernel = 2,
                         .prefill_chunk = 0, .stop_at_bos_eos = 1};
        ck_assert_int_eq(kvcache_generate(&m, prompt, 3, &o4, out4, NULL), 0);
        PagedGenOptions o5 = {.max_new = N, .temperature = 1.0f, .seed = seed, .n_samples = 1, .block_size = 8,
                              .num_blocks = 0, .kernel = 2, .shuffle = 0, .stop_at_bos_eos = 1};
        ck_assert_int_eq(paged_generate(&m, prompt, 3, &o5, out5, NULL), 0);
        for (int t = 0; t < N; t++) {
            ck_assert_int_eq(out4[t], t < stop ? want[t] : -1);
            ck_assert_int_eq(out5[t], out4[t]);
        }
        EngineRequest req = {.arrival = 0.0, .max_new = N, .n_prompt = 3, .prompt = (int *)prompt};
        EngineOptions o = engine_default_options();
        o.temperature = 1.0f, o.seed = seed, o.stop_at_bos_eos = 1, o.fixed_step_s = 0.01;
        EngineResult res;
        EngineMetrics mt;
        ck_assert_int_eq(engine_serve(&m, &req, 1, &o, &res, &mt), 0);
        ck_assert_int_eq(res.n_tokens, stop);
        ck_assert(stop == 0 || memcmp(res.tokens, want, (size_t)stop * sizeof(int)) == 0);
        engine_free_results(&res, 1);
        engine_free_metrics(&mt);
    }
    model_free(&m);
}
END_TEST

/* ==== the engine on the GPU (only with a GPU) ====================================================== */

#if HAVE_CUDA
/* On the GPU the engine keeps the chapter's promise in its own arithmetic (engine.cu): every
 * request gets bit for bit the tokens it gets served alone on the GPU, under both policies,
 * chunked prefill, a pool tight enough to preempt and shuffled blocks, greedy and sampled. */
START_TEST(test_gpu_engine_is_batch_invariant)
{
    const int n = 24;
    EngineRequest *r = workload(n, 0.0, 11); /* the workload of the CPU's preemption test */
    const int longest = longest_in_blocks(r, n, 4);
    for (int t = 0; t < 2; t++) {
        EngineOptions base = engine_default_options();
        base.cuda = 1, base.temperature = t ? 0.9f : 0.0f, base.seed = 3, base.fixed_step_s = 0.01;
        int **want; /* each request served alone on the GPU */
        ck_assert_msg(engine_serve_alone(&model, r, n, &base, &want) == 0, "%s", error_message());
        const struct {
            EnginePolicy policy;
            int max_batch, max_tokens, block_size, num_blocks, shuffle;
            const char *what;
        } cfgs[] = {
            {.policy = ENGINE_CONTINUOUS, .max_batch = 8, .max_tokens = 9, .block_size = 4, .num_blocks = 60,
             .what = "cuda continuous, chunked prefill"},
            {.policy = ENGINE_STATIC, .max_batch = 8, .max_tokens = 9, .block_size = 4, .num_blocks = 60,
             .what = "cuda static, chunked prefill"},
            {.policy = ENGINE_CONTINUOUS, .max_batch = 32, .max_tokens = 256, .block_size = 16, .num_blocks = 0,
             .shuffle = 5, .what = "cuda continuous, shuffled blocks"},
            {.policy = ENGINE_CONTINUOUS, .max_batch = 32, .max_tokens = 32, .block_size = 4, .num_blocks = longest,
             .shuffle = 3, .what = "cuda continuous, a pool of the longest one's blocks"},
        };
        for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
            EngineOptions o = base;
            o.policy = cfgs[ci].policy, o.max_batch = cfgs[ci].max_batch, o.max_tokens = cfgs[ci].max_tokens;
            o.block_size = cfgs[ci].block_size, o.num_blocks = cfgs[ci].num_blocks, o.shuffle = (uint64_t)cfgs[ci].shuffle;
            EngineMetrics mt = serve_and_check(&(Requests){.n = n, .r = r, .want = want}, o, cfgs[ci].what);
            if (cfgs[ci].num_blocks == longest) /* as on the CPU: the schedule is the host's */
                ck_assert_int_gt(mt.preemptions, 0);
            engine_free_metrics(&mt);
        }
        engine_free_tokens(want, n);
    }
    engine_free_requests(r, n);
}
END_TEST

/* The GPU against the CPU: two fp32 computations that add in different orders. One mixed forward
 * (prefills, then decodes beside a prefill chunk) gives each sequence the CPU's logits within
 * 1e-4; and greedy tokens of the engine on the GPU are chapter 05's alone on the CPU, or part
 * only where the CPU's two best logits are a near-tie. */
START_TEST(test_gpu_engine_agrees_with_cpu)
{
    const ModelConfig *c = &model.c;
    const int bs = 4, mb = (c->seq_len + bs - 1) / bs, V = c->vocab_size;
    EngineGpu *g = engine_gpu_create(&model, 3 * mb, bs, 32, 4);
    ck_assert_msg(g != NULL, "%s", error_message());
    int seq[3][16], len[3] = {0, 0, 0}, tables[3 * 64];
    ck_assert_int_le(mb, 64);
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 16; j++)
            seq[i][j] = 3 + (i * 37 + j * 11) % (V - 3);
        for (int b = 0; b < mb; b++)
            tables[i * mb + b] = (2 - i) * mb + b; /* sequence i in the pool's blocks, last sequence first */
    }
    const int steps[2][3] = {{9, 5, 1}, {1, 3, 1}}; /* new tokens per sequence: prefills, then decode, chunk, decode */
    float *logits = xmalloc((size_t)3 * V * sizeof(float), "logits"), *want = xmalloc((size_t)V * sizeof(float), "logits");
    for (int st = 0; st < 2; st++) {
        int tokens[32], pos[32], q_start[4] = {0}, lens[3], out_rows[3], n = 0;
        for (int i = 0; i < 3; i++) {
            for (int j = 0; j < steps[st][i]; j++, n++)
                tokens[n] = seq[i][len[i] + j], pos[n] = len[i] + j;
            len[i] += steps[st][i], lens[i] = len[i], q_start[i + 1] = n, out_rows[i] = n - 1;
        }
        ck_assert_msg(engine_gpu_forward(g, n, tokens, pos, 3, q_start, lens, tables, 3, out_rows, logits) == 0, "%s",
                      error_message());
        for (int i = 0; i < 3; i++) {
            ck_assert_int_eq(kvcache_forward_nocache(&model, seq[i], len[i], want), 0);
            ck_assert_msg(compare_f32("gpu logits", logits + (size_t)i * V, want, (size_t)V, 1e-4, 1e-4, 5).n_bad == 0,
                          "step %d, sequence %d", st, i);
        }
    }
    free(logits), free(want);
    engine_gpu_free(g);

    const int n = 16;
    EngineRequest *r = workload(n, 0.0, 33);
    int **cpu = alone(r, n, 0.0f, 0);
    EngineOptions o = engine_default_options();
    o.cuda = 1, o.max_batch = 8, o.max_tokens = 9, o.block_size = 4, o.num_blocks = 60, o.fixed_step_s = 0.01;
    EngineResult *res = xcalloc((size_t)n, sizeof(EngineResult), "results");
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&model, r, n, &o, res, &mt) == 0, "%s", error_message());
    for (int i = 0; i < n; i++) {
        if (!cpu[i]) {
            ck_assert_int_eq(res[i].status, ENGINE_REJECTED);
            continue;
        }
        ck_assert_int_eq(res[i].n_tokens, r[i].max_new);
        double gap = 0.0;
        const int at = kvcache_greedy_divergence(&model, r[i].prompt, r[i].n_prompt, cpu[i], res[i].tokens,
                                                 r[i].max_new, &gap);
        ck_assert_msg(at >= -1, "%s", error_message());
        ck_assert_msg(at == -1 || gap <= KVCACHE_NEAR_TIE,
                      "request %d: the GPU's token %d is %d, the CPU's %d, logits %g apart (not a near-tie)", i, at,
                      res[i].tokens[at], cpu[i][at], gap);
        if (at >= 0)
            printf("06_batching: request %d: GPU and CPU part at token %d, a near-tie (%.1e)\n", i, at, gap);
    }
    engine_free_results(res, n);
    engine_free_metrics(&mt);
    free(res);
    free_want(cpu, n);
    engine_free_requests(r, n);
}
END_TEST

#endif

/* ==== hostile inputs (common/hostile.h): one error line, exit 1, nothing written ================= */

#define SERVE06 "06_batching", "serve", "--device", "cpu", "--checkpoint", "@/model.bin"
#define SERVE06_R SERVE06, "--requests", "@/r.txt"
static const HostileCase hostile_cases[] = {
    {.argv = {SERVE06, "--requests", HOSTILE_BAD_FILE}},
    {.argv = {SERVE06, "--requests", "@/r_nul.txt"}, .expect = "r_nul.txt:2: NUL byte"},
    {.argv = {SERVE06, "--requests", "@/r_bad.txt"}, .expect = "r_bad.txt:3"},
    {.argv = {SERVE06_R, "--tokenizer", HOSTILE_BAD_FILE}},
    {.argv = {"06_batching", "serve", "--device", "cpu", "--requests", "@/r.txt", "--max-batch", "1048576", "--block-size", "1"},
     .expect = "--max-batch 1048576"},
    {.argv = {SERVE06_R, "--num-blocks", "268435456", "--block-size", "4096"},
     .expect = "memory available"},
    {.argv = {SERVE06_R, "--max-batch", "0"}, .expect = "--max-batch"},
    {.argv = {SERVE06_R, "--max-tokens-per-step", "0"}, .expect = "--max-tokens-per-step"},
    {.argv = {SERVE06_R, "--block-size", "0"}, .expect = "--block-size"},
    {.argv = {SERVE06_R, "--num-blocks", "-5"}, .expect = "--num-blocks"},
    {.argv = {SERVE06_R, "--policy", "fastest"}, .expect = "--policy"},
    {.argv = {SERVE06_R, "--temperature", "1e-40"}, .expect = "--temperature"},
    {.argv = {SERVE06_R, "--top-p", "-0.5"}, .expect = "--top-p -0.5"},
    {.argv = {SERVE06_R, "--top-k", "-2"}, .expect = "--top-k"},
    {.argv = {SERVE06_R, "--metrics", HOSTILE_BAD_OUT}},
    {.argv = {SERVE06_R, "--iterations", "/dev/full"}, .expect = "/dev/full"},
    {.argv = {SERVE06_R}, .expect = "standard output", .stdout_to = "/dev/full"},
    {.argv = {SERVE06, "--requests", "--metrics", "@/out.tsv"}, .expect = "--requests"},
    {.argv = {"06_batching", "serve", "--requests", "@/r.txt", "--checkpoint", "@/wrap.bin"}, .expect = "overflows"},
    {.argv = {"06_batching", "gen-requests", "--out", HOSTILE_BAD_OUT}},
    {.argv = {"06_batching", "gen-requests", "--out", "@/out.txt", "--n", "-1"}, .expect = "--n"},
    {.argv = {"06_batching", "gen-requests", "--out", "@/out.txt", "--rate", "-2"}, .expect = "--rate"},
    {.argv = {"06_batching", "gen-requests", "--out", "@/out.txt", "--workload", "bimodal"}, .expect = "--workload"},
    {.argv = {"06_batching", "bench", "--out", "@/out.tsv", "--checkpoint", "@/missing.bin"},
     .expect = "missing.bin"},
    {.argv = {"06_batching", "bench", "--out", "@/out.tsv", "--requests", "0"}, .expect = "--requests"},
    {.argv = {"06_batching", "verify", "--frobnicate"}, .expect = "--frobnicate"},
    /* without a GPU, asking for one fails before anything is opened or timed */
    {.argv = {"06_batching", "bench", "--device", "cuda", "--out", "@/out.tsv"}, .expect = "no usable GPU",
     .without_gpu = 1},
    {.argv = {"06_batching", "serve", "--checkpoint", "@/model.bin", "--requests", "@/r.txt", "--device", "cuda"},
     .expect = "no usable GPU", .without_gpu = 1},
};

START_TEST(test_hostile_inputs)
{
    testing_assert_ok(hostile_check(testing_tmp, hostile_cases, sizeof hostile_cases / sizeof hostile_cases[0]));
}
END_TEST

/* ==== the cases ================================================================================== */

TestingCase engine_program_case(void)
{
    return (TestingCase){.name = "requests and program", .tests = {test_serve_command, test_serve_command_errors,
                                                                   test_serve_special_files_and_lost_output,
                                                                   test_bench_validates_before_it_writes,
                                                                   test_gen_requests_and_verify,
                                                                   test_serve_is_deterministic,
                                                                   test_text_through_chapters_04_05_06,
                                                                   test_stop_at_bos_eos_in_every_chapter}};
}

TestingCase engine_hostile_case(void) { return testing_hostile_case(test_hostile_inputs); }

TestingCase engine_cuda_case(void)
{
    return (TestingCase){.name = "cuda", .cuda = 1, .timeout_s = 300, .setup = model_setup, .teardown = model_teardown,
                         .tests = {TESTING_CUDA_ONLY(test_gpu_engine_is_batch_invariant, test_gpu_engine_agrees_with_cpu)}};
}
