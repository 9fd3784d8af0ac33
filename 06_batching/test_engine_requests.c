/*
 * test_engine_requests.c: chapter 06's requests file -- the parser names the line of every
 * malformed entry, a NUL byte is refused, a line too long to fit is refused unread, the file is
 * the unit of syntax and the request the unit of service, 200k requests are ordered by arrival
 * in n log n, a failed write keeps the previous file, 10^5 requests are read in bounded memory,
 * and 200 requests go through a pool of the longest one's blocks. The first part of the case
 * "requests and program" (test_engine.c holds main()).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "06_batching/engine.h"
#include "05_paged/paged.h"
#include "06_batching/test_engine.h"
#include "common/error.h"
#include "common/model.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/tokenizer.h"

/* ==== the requests file ========================================================================= */

START_TEST(test_requests_parser)
{
    char path[4200];
    testing_tmp_path(path, sizeof path, "r.txt");
    write_text(path, "# a comment\n\n0 4 1 2 3\n  0.5\t2 7\n# another\n1.25 0 9 9\n");
    EngineRequest *r;
    int n;
    ck_assert_msg(engine_read_requests(path, NULL, 0, &r, &n) == 0, "%s", error_message());
    ck_assert_int_eq(n, 3);
    ck_assert(r[0].arrival == 0.0 && r[0].max_new == 4 && r[0].n_prompt == 3 && r[0].prompt[2] == 3);
    ck_assert(r[1].arrival == 0.5 && r[1].max_new == 2 && r[1].n_prompt == 1 && r[1].prompt[0] == 7);
    ck_assert(r[2].arrival == 1.25 && r[2].max_new == 0 && r[2].n_prompt == 2);
    engine_free_requests(r, n);
    const struct {
        const char *text, *expect;
    } bad[] = {
        {.text = "0 4 1 2\n0 4\n", .expect = "r.txt:2: the prompt is empty"},
        {.text = "0 4 1\n\n-1 4 1\n", .expect = "r.txt:3: the arrival time"},
        {.text = "x 4 1\n", .expect = "r.txt:1: the arrival time"},
        {.text = "0 four 1\n", .expect = "r.txt:1: expected '<arrival_seconds> <max_new_tokens> <prompt ids...>'"},
        {.text = "0 -2 1\n", .expect = "r.txt:1: expected"},
        {.text = "0 3 1 2 x\n", .expect = "r.txt:1: prompt token 2 is not a non-negative integer"},
        {.text = "0 3 1 -5\n", .expect = "r.txt:1: prompt token 1"},
        {.text = "# only comments\n\n", .expect = "no requests"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(path, bad[i].text);
        ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
        ck_assert_msg(strstr(error_message(), bad[i].expect), "case %zu: '%s' not in '%s'", i, bad[i].expect,
                      error_message());
    }
    ck_assert_int_eq(engine_read_requests("/nonexistent/r.txt", NULL, 0, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "cannot open"), "%s", error_message());
    /* a generated workload survives the round trip through a file */
    EngineRequest *w = workload(9, 5.0, 2);
    ck_assert_int_eq(engine_write_requests(path, w, 9), 0);
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), 0);
    ck_assert_int_eq(n, 9);
    for (int i = 0; i < 9; i++) {
        ck_assert(fabs(r[i].arrival - w[i].arrival) < 1e-6 && r[i].max_new == w[i].max_new);
        ck_assert(r[i].n_prompt == w[i].n_prompt && memcmp(r[i].prompt, w[i].prompt, (size_t)w[i].n_prompt * 4) == 0);
    }
    engine_free_requests(r, n);
    engine_free_requests(w, 9);
}
END_TEST

/* In text mode, a line whose length alone proves that it cannot fit in seq_len is not encoded
 * (the tiny tokenizer's tokens cover at most 6 bytes): the request the line says is one the model
 * cannot serve, so it is rejected on its own output line and the others are served (the rule:
 * the file is the unit of syntax, the request the unit of service). */
START_TEST(test_requests_text_too_long_refused_unread)
{
    char path[4200], tok_path[4200];
    testing_tmp_path(path, sizeof path, "r.txt");
    Tokenizer tok;
    const int V = testing_load_tiny_tokenizer(testing_tmp_path(tok_path, sizeof tok_path, "tok.bin"), &tok);
    char *line = xmalloc(1100, "a long line");
    memcpy(line, "0 4 ", 4), memset(line + 4, 'x', 1000), memcpy(line + 1004, "\n0 2 hi\n", 8);
    write_bytes(path, line, 1012); /* 1000 bytes: at least ceil(1002 / 6) = 167 tokens with BOS */
    EngineRequest *r;
    int n;
    ck_assert_msg(engine_read_requests(path, &tok, 170, &r, &n) == 0, "%s", error_message()); /* 167 + 4 > 170 */
    ck_assert_int_eq(n, 2);
    ck_assert_msg(r[0].rejected && strstr(r[0].rejected, "the prompt text is 1000 bytes: at least 167 tokens") &&
                      strstr(r[0].rejected, "seq_len 170"),
                  "%s", r[0].rejected ? r[0].rejected : "(not rejected)");
    ck_assert(r[0].n_prompt == 0 && r[0].prompt == NULL); /* never encoded */
    ck_assert(!r[1].rejected && r[1].n_prompt >= 2);
    /* served: the first is rejected with the reader's reason, the second gets its tokens */
    ModelConfig c = {.dim = 32, .hidden_dim = 48, .n_layers = 1, .n_heads = 2, .n_kv_heads = 2, .vocab_size = V,
                     .seq_len = 170, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 5), 0);
    EngineOptions o = engine_default_options();
    o.fixed_step_s = 0.01;
    EngineResult res[2];
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&m, r, n, &o, res, &mt) == 0, "%s", error_message());
    ck_assert_int_eq(res[0].status, ENGINE_REJECTED);
    ck_assert_msg(strstr(res[0].reason, "at least 167 tokens"), "%s", res[0].reason);
    ck_assert_int_eq(res[1].status, ENGINE_DONE);
    ck_assert_int_eq(res[1].n_tokens, 2);
    ck_assert(mt.completed == 1 && mt.rejected == 1);
    engine_free_results(res, n);
    engine_free_metrics(&mt);
    model_free(&m);
    engine_free_requests(r, n);
    ck_assert_int_eq(engine_read_requests(path, &tok, 171, &r, &n), 0); /* the bound passes: encoded */
    ck_assert(!r[0].rejected && r[0].n_prompt == 1002);                  /* BOS, the prefix, 1000 x */
    engine_free_requests(r, n);
    ck_assert_int_eq(engine_read_requests(path, &tok, 0, &r, &n), 0); /* no limit */
    engine_free_requests(r, n);
    free(line);
    tokenizer_free(&tok);
}
END_TEST

/* A NUL byte would end a line early for the parser (cutting a prompt, or hiding a request): the
 * file is refused with the line and column. */
START_TEST(test_requests_nul_byte)
{
    char path[4200];
    testing_tmp_path(path, sizeof path, "r.txt");
    EngineRequest *r;
    int n;
    const char nul_in_prompt[] = "0 4 1 2\n0 3 5\0 6\n";
    write_bytes(path, nul_in_prompt, sizeof nul_in_prompt - 1);
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "r.txt:2: NUL byte (column 6)"), "%s", error_message());
    const char nul_in_comment[] = "# a comment\0 0 1 7\n0 4 1 2\n"; /* even where it would be ignored */
    write_bytes(path, nul_in_comment, sizeof nul_in_comment - 1);
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "r.txt:1: NUL byte"), "%s", error_message());
}
END_TEST

/* The rule of a requests file: a line that does not say a request rejects the whole file, before
 * anything is served; a well-formed request the model cannot serve is rejected on its own and
 * the others are served. */
START_TEST(test_requests_file_is_the_unit_of_syntax)
{
    char path[4200];
    testing_tmp_path(path, sizeof path, "r.txt");
    EngineRequest *r;
    int n;
    write_bytes(path, "0 2 1 2\n0.1 2 3\n0.2 two 4\n", 26);
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
    ck_assert_msg(strstr(error_message(), "r.txt:3: expected"), "%s", error_message());
    /* well-formed: fits; too long for seq_len 192; an id outside the vocabulary of 113; fits */
    char *text = xmalloc(4096, "a requests file");
    int used = snprintf(text, 4096, "0 2 1 2\n0 100");
    for (int i = 0; i < 100; i++)
        used += snprintf(text + used, 4096 - (size_t)used, " %d", i);
    snprintf(text + used, 4096 - (size_t)used, "\n0 2 5 500 6\n0.05 3 7\n");
    write_bytes(path, text, strlen(text));
    free(text);
    ck_assert_msg(engine_read_requests(path, NULL, 0, &r, &n) == 0, "%s", error_message());
    ck_assert_int_eq(n, 4);
    EngineOptions o = engine_default_options();
    o.fixed_step_s = 0.01;
    EngineResult res[4];
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&model, r, n, &o, res, &mt) == 0, "%s", error_message());
    ck_assert(res[0].status == ENGINE_DONE && res[0].n_tokens == 2);
    ck_assert_int_eq(res[1].status, ENGINE_REJECTED);
    ck_assert_msg(strstr(res[1].reason, "exceeds the model's seq_len 192"), "%s", res[1].reason);
    ck_assert_int_eq(res[2].status, ENGINE_REJECTED);
    ck_assert_msg(strstr(res[2].reason, "prompt token 1 is 500, outside the vocabulary"), "%s", res[2].reason);
    ck_assert(res[3].status == ENGINE_DONE && res[3].n_tokens == 3);
    engine_free_results(res, n);
    engine_free_metrics(&mt);
    engine_free_requests(r, n);
}
END_TEST

/* 200k requests in descending arrival order (an insertion sort took minutes on these): the queue
 * order is by arrival, and by file order among equal arrival times. */
START_TEST(test_arrival_order_of_200k_requests)
{
    const int N = 200000;
    char path[4200];
    testing_tmp_path(path, sizeof path, "desc.txt");
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < N; i++) /* lines 2k and 2k + 1 arrive together */
        fprintf(f, "%.3f 1 %d\n", (N / 2 - i / 2) * 0.001, i % 100);
    ck_assert_int_eq(fclose(f), 0);
    EngineRequest *r;
    int n;
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), 0);
    ck_assert_int_eq(n, N);
    int *order = xmalloc((size_t)N * sizeof(int), "arrival order");
    ck_assert_int_eq(engine_arrival_order(r, n, order), 0);
    for (int j = 0; j < N; j++) { /* the last pair first, each pair in file order */
        const int want = N - 2 - 2 * (j / 2) + j % 2;
        ck_assert_msg(order[j] == want, "position %d: request %d, expected %d", j, order[j], want);
    }
    free(order);
    engine_free_requests(r, n);
}
END_TEST

static int write_workload(const char *path, void *ctx)
{
    (void)ctx;
    EngineRequest *w = workload(400, 5.0, 3); /* ~25 KiB of text */
    const int rc = engine_write_requests(path, w, 400);
    engine_free_requests(w, 400);
    return rc;
}

/* gen-requests' writer on a disk that fills up: the previous requests file stays whole. */
START_TEST(test_failed_requests_write_keeps_the_previous_file)
{
    char path[4200], before[4096], after[4096], err[512];
    testing_tmp_path(path, sizeof path, "r.txt");
    write_text(path, "0 4 1 2 3\n");
    testing_folder_names(testing_tmp, before, sizeof before);
    const int status = testing_write_limited(write_workload, path, NULL, 4096, err, sizeof err);
    ck_assert_msg(status == 1 && strstr(err, "r.txt: write failed: File too large"), "status %d: %s", status, err);
    testing_folder_names(testing_tmp, after, sizeof after);
    ck_assert_str_eq(before, after);
    EngineRequest *r;
    int n;
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), 0);
    ck_assert(n == 1 && r[0].n_prompt == 3);
    engine_free_requests(r, n);
}
END_TEST

/* ==== bounded resources ============================================================================ */

START_TEST(test_many_requests_through_a_small_pool)
{
    const int n = 200;
    Requests q = requests_alone(n, 50.0, 41, 0.0f, 0);
    EngineOptions o = engine_default_options();
    o.block_size = 4, o.num_blocks = q.longest, o.max_batch = 16, o.max_tokens = 24;
    EngineMetrics mt = serve_and_check(&q, o, "200 requests, a pool of the longest one's blocks");
    ck_assert_int_eq(mt.completed, n);
    ck_assert_int_gt(mt.preemptions, 0);
    engine_free_metrics(&mt);
    requests_free(&q);
}
END_TEST

START_TEST(test_a_long_requests_file_in_bounded_memory)
{
    char path[4200];
    testing_tmp_path(path, sizeof path, "long.txt");
    FILE *f = fopen(path, "w");
    for (int i = 0; i < 100000; i++)
        fprintf(f, "%d.%03d %d %d %d %d\n", i / 1000, i % 1000, 1 + i % 7, i % 97, (i * 7) % 97, (i * 13) % 97);
    fclose(f);
    const size_t before = mem_rss_bytes();
    EngineRequest *r;
    int n;
    ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), 0);
    const size_t after = mem_rss_bytes();
    ck_assert_int_eq(n, 100000);
    ck_assert(r[99999].n_prompt == 3 && r[99999].max_new == 1 + 99999 % 7);
    /* about 40 bytes a request here; allow 64 MiB for 10^5 of them and the allocator's slack */
    ck_assert_msg(after < before || after - before < (size_t)64 << 20, "reading 10^5 requests took %zu MiB",
                  (after - before) >> 20);
    engine_free_requests(r, n);
}
END_TEST

/* ==== per-request sampling ======================================================================== */

/* Lines with their own temperature, top_p, top_k and seed, served together in small batches: each
 * request gets chapter 05's tokens for its settings alone, whatever the others in its batch use. */
START_TEST(test_mixed_sampling_per_request_matches_chapter05_alone)
{
    char path[4200];
    testing_tmp_path(path, sizeof path, "r.txt");
    write_text(path, "# per-request sampling (docs/contracts.md §2.6)\n"
                     "0 12 temperature=0.8 top_p=0.9 seed=5 1 2 3\n"
                     "0 12 1 2 3\n"
                     "0 12 top_k=5 temperature=1 seed=5 1 2 3\n"
                     "0.001 12 temperature=1.5 top_p=0.5 top_k=40 seed=9 7 8\n"
                     "0.002 12 temperature=1 top_k=1 seed=3 7 8\n"
                     "0.003 12 temperature=0.9 seed=77 4\n");
    EngineRequest *r;
    int n;
    ck_assert_msg(engine_read_requests(path, NULL, 0, &r, &n) == 0, "%s", error_message());
    ck_assert_int_eq(n, 6);
    ck_assert(r[0].has_temperature && r[0].has_top_p && !r[0].has_top_k && r[0].has_seed && r[0].top_p == 0.9f);
    ck_assert(!r[1].has_temperature && !r[1].has_top_p && !r[1].has_top_k && !r[1].has_seed);
    ck_assert(r[2].has_top_k && r[2].top_k == 5 && r[2].n_prompt == 3);
    EngineOptions o = engine_default_options(); /* the engine's own: greedy for request 1 */
    o.max_batch = 3, o.block_size = 4, o.seed = 100;
    EngineResult res[6];
    EngineMetrics mt;
    ck_assert_msg(engine_serve(&model, r, n, &o, res, &mt) == 0, "%s", error_message());
    int differ = 0;
    for (int i = 0; i < n; i++) {
        const PagedGenOptions g = {.max_new = r[i].max_new, .temperature = r[i].has_temperature ? r[i].temperature : 0.0f,
                                   .top_p = r[i].has_top_p ? r[i].top_p : 0.0f, .top_k = r[i].has_top_k ? r[i].top_k : 0,
                                   .seed = r[i].has_seed ? r[i].seed : o.seed + (uint64_t)i, .n_samples = 1,
                                   .block_size = 8, .kernel = 2};
        int want[12];
        ck_assert_msg(paged_generate(&model, r[i].prompt, r[i].n_prompt, &g, want, NULL) == 0, "%s", error_message());
        ck_assert_int_eq(res[i].n_tokens, 12);
        for (int t = 0; t < 12; t++)
            ck_assert_msg(res[i].tokens[t] == want[t], "request %d token %d: %d, alone %d", i, t, res[i].tokens[t],
                          want[t]);
        differ += i > 0 && memcmp(res[i].tokens, res[0].tokens, sizeof want) != 0;
    }
    ck_assert_int_ge(differ, 2); /* the settings changed the tokens of the same prompt */
    engine_free_results(res, n), engine_free_metrics(&mt), engine_free_requests(r, n);
    /* bad values name the option and the line */
    static const char *const bad[][2] = {{"0 4 top_p=0 1\n", "r.txt:1: top_p=0: expected a number in (0, 1]"},
                                         {"0 4 top_p=1.5 1\n", "top_p=1.5"},
                                         {"0 4 top_k=-1 1\n", "top_k=-1: expected an integer >= 0"},
                                         {"0 4 temperature=nan 1\n", "temperature=nan"},
                                         {"0 4 seed=x 1\n", "seed must be given once, as seed=<integer>"},
                                         {"0 4 top_k=2 top_k=3 1\n", "top_k must be given once"}};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        write_text(path, bad[k][0]);
        ck_assert_int_eq(engine_read_requests(path, NULL, 0, &r, &n), -1);
        ck_assert_msg(strstr(error_message(), bad[k][1]), "%s: %s", bad[k][0], error_message());
    }
}
END_TEST

/* ==== the case =================================================================================== */

TestingCase engine_requests_case(void)
{
    return (TestingCase){.name = "requests and program", .timeout_s = 300, .temp_dir = 1, .setup = model_setup,
                         .teardown = model_teardown,
                         .tests = {test_requests_parser, test_requests_text_too_long_refused_unread,
                                   test_requests_nul_byte, test_requests_file_is_the_unit_of_syntax,
                                   test_arrival_order_of_200k_requests,
                                   test_failed_requests_write_keeps_the_previous_file,
                                   test_many_requests_through_a_small_pool,
                                   test_a_long_requests_file_in_bounded_memory,
                                   test_mixed_sampling_per_request_matches_chapter05_alone}};
}
