/*
 * test_server.c: chapter 06's HTTP server -- its JSON rules here, and the whole server with real
 * clients (curl and the official openai Python client, scripts/server-test.sh) against `serve`.
 *
 * The program test writes a checkpoint, a tokenizer and two requests files (token ids, and text)
 * into its folder, runs `serve` on them for the reference tokens, and hands the folder to
 * scripts/server-test.sh, which starts the server and holds every response to those tokens. A
 * build without libmicrohttpd and jansson has no server: its tests say so and pass (the build
 * cannot serve HTTP at all, and `06_batching server` says what to install).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "06_batching/server.h"
#include "06_batching/test_engine.h"
#include "common/tokenizer.h"

#if HAVE_SERVER

/* ==== reading requests ============================================================================ */

/* completion_parse of body against `model` (no tokenizer) with the default pool of 64 blocks of 16. */
static int parse(const char *body, CompletionParams *p, char *msg, size_t len, const char **param)
{
    static EngineOptions o;
    o = engine_default_options();
    o.num_blocks = 64;
    const ServedModel sm = {.m = &model, .tok = NULL, .o = &o, .model_id = "tiny"};
    return completion_parse(&sm, body, strlen(body), p, msg, len, param);
}

START_TEST(test_a_good_request_and_its_defaults)
{
    CompletionParams p;
    char msg[512];
    const char *param;
    ck_assert_int_eq(parse("{\"model\":\"tiny\",\"prompt\":[1,5,112],\"seed\":7,\"stream\":true}", &p, msg, sizeof msg,
                           &param),
                     0);
    ck_assert_int_eq(p.n_prompt, 3);
    ck_assert_int_eq(p.prompt[2], 112);
    ck_assert_int_eq(p.max_tokens, 16);      /* OpenAI's default */
    ck_assert(p.temperature == 1.0f);        /* OpenAI's default */
    ck_assert(p.has_seed && p.seed == 7 && p.stream && !p.include_usage);
    ck_assert(p.top_p == 1.0f && p.top_k == 0); /* OpenAI's defaults: every token */
    completion_params_free(&p);
    ck_assert_int_eq(parse("{\"prompt\":[4],\"top_p\":0.9,\"top_k\":40}", &p, msg, sizeof msg, &param), 0);
    ck_assert(p.top_p == 0.9f && p.top_k == 40);
    completion_params_free(&p);
    ck_assert_int_eq(parse("{\"prompt\":[4],\"top_k\":-1}", &p, msg, sizeof msg, &param), 0);
    ck_assert_int_eq(p.top_k, 0); /* vLLM's "off" */
    completion_params_free(&p);
    ck_assert_int_eq(parse("{\"prompt\":[3],\"max_tokens\":0,\"temperature\":0,\"n\":1,\"stop\":null,"
                           "\"stream_options\":{\"include_usage\":true},\"user\":\"someone\"}",
                           &p, msg, sizeof msg, &param),
                     0); /* no model named, n = 1, a null stop and an unknown field are all fine */
    ck_assert(p.max_tokens == 0 && p.temperature == 0.0f && !p.has_seed && p.include_usage);
    completion_params_free(&p);
}
END_TEST

START_TEST(test_bad_requests_name_the_field)
{
    static const struct {
        const char *body;
        int status;
        const char *param; /* NULL: the body as a whole */
        const char *fragment;
    } cases[] = {
        {"{\"prompt\":[1,2", 400, NULL, "not valid JSON"},
        {"[1,2]", 400, NULL, "must be a JSON object"},
        {"{\"prompt\":[1],\"prompt\":[2]}", 400, NULL, "duplicate"},
        {"{}", 400, "prompt", "is required"},
        {"{\"prompt\":\"hello\"}", 400, "prompt", "no tokenizer"},
        {"{\"prompt\":[]}", 400, "prompt", "empty"},
        {"{\"prompt\":[1,113]}", 400, "prompt", "prompt[1] is 113, outside the vocabulary (0..112)"},
        {"{\"prompt\":[1,-1]}", 400, "prompt", "outside the vocabulary"},
        {"{\"prompt\":[1,2.5]}", 400, "prompt", "prompt[1] is not an integer"},
        {"{\"prompt\":[[1],[2]]}", 400, "prompt", "one prompt per request"},
        {"{\"prompt\":[1],\"max_tokens\":\"ten\"}", 400, "max_tokens", "must be an integer"},
        {"{\"prompt\":[1],\"max_tokens\":-1}", 400, "max_tokens", "between 0 and"},
        {"{\"prompt\":[1],\"max_tokens\":192}", 400, "max_tokens", "exceeds the model's seq_len 192"},
        {"{\"prompt\":[1],\"temperature\":\"hot\"}", 400, "temperature", "must be a number"},
        {"{\"prompt\":[1],\"temperature\":2.5}", 400, "temperature", "between 0 and 2"},
        {"{\"prompt\":[1],\"temperature\":1e-40}", 400, "temperature", "at least 1.2e-38"},
        {"{\"prompt\":[1],\"seed\":-3}", 400, "seed", "between 0 and"},
        {"{\"prompt\":[1],\"stream\":1}", 400, "stream", "true or false"},
        {"{\"prompt\":[1],\"stream_options\":{\"include_usage\":\"yes\"}}", 400, "stream_options", "true or false"},
        {"{\"prompt\":[1],\"n\":2}", 400, "n", "must be 1"},
        {"{\"prompt\":[1],\"stop\":[\"\\n\"]}", 400, "stop", "not supported"},
        {"{\"prompt\":[1],\"logprobs\":3}", 400, "logprobs", "not supported"},
        {"{\"prompt\":[1],\"top_p\":0}", 400, "top_p", "more than 0"},
        {"{\"prompt\":[1],\"top_p\":1.5}", 400, "top_p", "between 0 and 1"},
        {"{\"prompt\":[1],\"top_k\":-2}", 400, "top_k", "between -1 and"},
        {"{\"prompt\":[1],\"top_k\":2.5}", 400, "top_k", "must be an integer"},
        {"{\"prompt\":[1],\"model\":\"gpt-4\"}", 404, "model", "'gpt-4' does not exist: this server serves 'tiny'"},
        {"{\"prompt\":[1],\"model\":7}", 400, "model", "must be a string"},
        /* 64 blocks of 16 = 1024 tokens, seq_len 192: a request that fits the model fits the pool */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        CompletionParams p;
        char msg[512];
        const char *param = "unset";
        const int status = parse(cases[k].body, &p, msg, sizeof msg, &param);
        ck_assert_msg(status == cases[k].status, "%s: status %d, want %d (%s)", cases[k].body, status,
                      cases[k].status, msg);
        ck_assert_msg(strstr(msg, cases[k].fragment), "%s: '%s' lacks '%s'", cases[k].body, msg, cases[k].fragment);
        ck_assert_msg((param == NULL) == (cases[k].param == NULL) && (!param || strcmp(param, cases[k].param) == 0),
                      "%s: param %s, want %s", cases[k].body, param ? param : "null",
                      cases[k].param ? cases[k].param : "null");
        ck_assert_ptr_null(p.prompt); /* nothing left to free after a refusal */
    }
}
END_TEST

START_TEST(test_a_request_larger_than_the_pool)
{
    EngineOptions o = engine_default_options();
    o.num_blocks = 2, o.block_size = 4; /* 8 tokens at most */
    const ServedModel sm = {.m = &model, .tok = NULL, .o = &o, .model_id = "tiny"};
    CompletionParams p;
    char msg[512];
    const char *param;
    const char *body = "{\"prompt\":[1,2,3,4,5],\"max_tokens\":5}"; /* 9 tokens: 3 blocks of 4 */
    ck_assert_int_eq(completion_parse(&sm, body, strlen(body), &p, msg, sizeof msg, &param), 400);
    ck_assert_msg(strstr(msg, "needs 3 blocks of 4 tokens at its longest, the pool has 2"), "%s", msg);
}
END_TEST

/* ==== text that streams ========================================================================== */

/* Pieces that end inside a character (a tokenizer made here: "a\xC3" then "\xA9b" is "aéb") come
 * out whole characters at a time; a byte that starts no character, and a character the text never
 * completes, become U+FFFD; the chunks of a stream concatenate to the whole text. */
START_TEST(test_streamed_text_is_valid_utf8_and_concatenates)
{
    char *pieces[9] = {"<unk>", "<s>", "</s>", "a\xC3", "\xA9" "b", "c\xE2\x82", "\xAC" "d", "\x80" "z", "q\xE2"};
    const float scores[9] = {0};
    char path[4200];
    Tokenizer tok;
    ck_assert_int_eq(tokenizer_save(testing_tmp_path(path, sizeof path, "split.bin"), 9, pieces, scores), 0);
    ck_assert_int_eq(tokenizer_load(path, 9, &tok), 0);
    const int ids[6] = {3, 4, 5, 6, 7, 8};
    /* a é b c € d U+FFFD z q U+FFFD */
    const char *want = "a\xC3\xA9" "bc\xE2\x82\xAC" "d\xEF\xBF\xBD" "zq\xEF\xBF\xBD";
    char *whole = NULL, *joined = NULL;
    size_t n_whole = 0, n_joined = 0, after[6];
    TextStream a, b;
    text_stream_init(&a, &tok, 5), text_stream_init(&b, &tok, 5);
    ck_assert_int_eq(text_stream_push(&a, ids, 6, 1, &whole, &n_whole), 0);
    ck_assert_str_eq(whole, want);
    for (int k = 0; k < 6; k++) { /* one token at a time, as a stream sends them */
        ck_assert_int_eq(text_stream_push(&b, ids + k, 1, k == 5, &joined, &n_joined), 0);
        after[k] = n_joined;
    }
    ck_assert_str_eq(joined, want);
    const size_t lengths[6] = {1, 4, 5, 9, 13, 17}; /* "a" | "éb" | "c" | "€d" | FFFD "z" | "q" FFFD */
    for (int k = 0; k < 6; k++)
        ck_assert_msg(after[k] == lengths[k], "after token %d: %zu bytes, want %zu", k, after[k], lengths[k]);
    free(whole), free(joined);
    /* without a tokenizer, the ids themselves */
    char *ids_text = NULL;
    size_t n_ids = 0;
    TextStream c;
    text_stream_init(&c, NULL, 0);
    ck_assert_int_eq(text_stream_push(&c, (const int[]){17, 4}, 2, 1, &ids_text, &n_ids), 0);
    ck_assert_str_eq(ids_text, " 17 4");
    free(ids_text);
    tokenizer_free(&tok);
}
END_TEST

/* ==== the server with real clients =============================================================== */

/* The folder scripts/server-test.sh reads: model.bin and tok.bin; ids.txt, text.txt and
 * sampled.txt (requests files; sampled.txt's lines each with their own temperature, top_p, top_k
 * and seed) with ids.expected, text.expected and sampled.expected, what `serve` printed for them. */
static void write_fixture(const char *prog)
{
    char tok[4200], ck[4200];
    testing_tmp_path(tok, sizeof tok, "tok.bin"), testing_tmp_path(ck, sizeof ck, "model.bin");
    const int V = testing_write_tiny_tokenizer(tok);
    ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = V,
                     .seq_len = 128, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 5), 0);
    ck_assert_int_eq(model_save(&m, ck), 0);
    model_free(&m);
    char ids[4200], text[4200];
    FILE *f = fopen(testing_tmp_path(ids, sizeof ids, "ids.txt"), "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 8; i++) { /* prompts of 1..36 tokens, 3..38 new tokens */
        fprintf(f, "0 %d", 3 + 5 * i);
        for (int t = 0; t < 1 + 5 * ((i * 3) % 8); t++)
            fprintf(f, " %d", (7 * t + 13 * i + 1) % V);
        fprintf(f, "\n");
    }
    fclose(f);
    write_text(testing_tmp_path(text, sizeof text, "text.txt"),
               "0 40 Once upon a time\n0 30 the and\\nin\n0 50 He said: \"yes\" \\\\ then\n");
    char sampled[4200];
    f = fopen(testing_tmp_path(sampled, sizeof sampled, "sampled.txt"), "w"); /* docs/contracts.md §2.6 */
    ck_assert_ptr_nonnull(f);
    static const char *const settings[6] = {
        "temperature=0.8 top_p=0.9 top_k=0 seed=11", "temperature=1 top_p=0.5 top_k=0 seed=12",
        "temperature=0.7 top_p=1 top_k=5 seed=13",   "temperature=1.2 top_p=0.95 top_k=40 seed=14",
        "temperature=0 top_p=1 top_k=0 seed=15",     "temperature=1 top_p=1 top_k=1 seed=16"};
    for (int i = 0; i < 12; i++) {
        fprintf(f, "0 %d %s", 10 + 3 * i, settings[i % 6]);
        for (int t = 0; t < 2 + i; t++)
            fprintf(f, " %d", (5 * t + 11 * i + 2) % V);
        fprintf(f, "\n");
    }
    fclose(f);
    const char *which[3][2] = {{ids, "ids.expected"}, {text, "text.expected"}, {sampled, "sampled.expected"}};
    for (int k = 0; k < 3; k++) {
        char out[4200];
        write_text(testing_tmp_path(out, sizeof out, which[k][1]), ""); /* run_program_limited opens, not creates */
        ProcResult r;
        const char *argv[] = {prog, "serve", "--checkpoint", ck, "--requests", which[k][0], "--device", "cpu",
                              k == 1 ? "--tokenizer" : NULL, tok, NULL};
        ck_assert_int_eq(run_program_limited(&r, argv, 120, testing_tmp_path(out, sizeof out, which[k][1])), 0);
        ck_assert_msg(r.status == 0, "serve: %s", r.err);
    }
}

START_TEST(test_server_with_real_clients)
{
    char prog[4200], dir[4200];
    program_path(prog, sizeof prog, "06_batching");
    write_fixture(prog);
    testing_tmp_path(dir, sizeof dir, "");
    ProcResult r;
    const char *argv[] = {"/bin/bash", "scripts/server-test.sh", prog, dir, NULL};
    ck_assert_int_eq(run_program_limited(&r, argv, 900, NULL), 0);
    ck_assert_msg(r.status == 0, "scripts/server-test.sh failed (status %d):\n%s\n%s", r.status, r.out, r.err);
    printf("%s", r.out); /* its summary lines */
}
END_TEST

/* The live page at / in headless chromium (scripts/page-test.sh, scripts/page_test.py): the pool,
 * the queues and the preemptions it draws against /metrics, every /state against the engine's
 * invariants, and 4096 blocks with 256 sequences; screenshots in build/artifacts/. */
START_TEST(test_the_live_page_in_a_browser)
{
    char prog[4200], ck[4200];
    program_path(prog, sizeof prog, "06_batching");
    ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 1024,
                     .seq_len = 128, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 5), 0);
    ck_assert_int_eq(model_save(&m, testing_tmp_path(ck, sizeof ck, "model.bin")), 0);
    model_free(&m);
    ProcResult r;
    const char *argv[] = {"/bin/bash", "scripts/page-test.sh", prog, ck, NULL};
    ck_assert_int_eq(run_program_limited(&r, argv, 600, NULL), 0);
    ck_assert_msg(r.status == 0, "scripts/page-test.sh failed (status %d):\n%s\n%s", r.status, r.out, r.err);
    printf("%s", r.out); /* its lines: ok, or skipped without chromium */
}
END_TEST

#else

START_TEST(test_built_without_the_server)
{
    char prog[4200];
    program_path(prog, sizeof prog, "06_batching");
    ProcResult r;
    const char *argv[] = {prog, "server", NULL};
    ck_assert_int_eq(run_program(&r, argv), 0);
    ck_assert_int_eq(r.status, 1);
    ck_assert_msg(strstr(r.err, "libmicrohttpd-dev libjansson-dev"), "%s", r.err);
    printf("06_batching server: this build has no HTTP server (no libmicrohttpd and jansson): its tests are left out\n");
}
END_TEST

#endif

TestingCase engine_server_case(void)
{
#if HAVE_SERVER
    return (TestingCase){.name = "server", .timeout_s = 900, .temp_dir = 1, .setup = model_setup,
                         .teardown = model_teardown,
                         .tests = {test_a_good_request_and_its_defaults, test_bad_requests_name_the_field,
                                   test_a_request_larger_than_the_pool, test_streamed_text_is_valid_utf8_and_concatenates,
                                   test_server_with_real_clients}};
#else
    return (TestingCase){.name = "server", .timeout_s = 60, .temp_dir = 1, .tests = {test_built_without_the_server}};
#endif
}

TestingCase engine_page_case(void)
{
#if HAVE_SERVER
    return (TestingCase){.name = "page", .timeout_s = 600, .temp_dir = 1, .tests = {test_the_live_page_in_a_browser}};
#else
    return (TestingCase){.name = "page"}; /* no server, no page */
#endif
}
