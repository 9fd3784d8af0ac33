/*
 * testing_main.h: every Check suite's table of cases and its main() (test sources only: it needs
 * Check's header). A suite is a list of cases, each a name, a time limit, its fixtures and its
 * tests:
 *
 *   int main(void)
 *   {
 *       const TestingCase cases[] = {
 *           {.name = "hand-derivable", .tests = {test_equal_keys_give_mean_of_values, ...}},
 *           {.name = "layer", .temp_dir = 1, .tests = {test_weights_save_load, ...}},
 *           mha_program_case(), ...                   (a case of the chapter's other test file)
 *       };
 *       return testing_main_cases("01_mha", cases, sizeof cases / sizeof cases[0]);
 *   }
 *
 * The names are the ones a reader types: CK_RUN_CASE="<name>" runs one case alone
 * (scripts/gpu-check.sh runs every suite's "cuda" case so), and scripts/mutants.txt names the
 * cases that must catch a bug as "N:<name>". testing_main_cases runs every case (each test in a
 * forked child unless CK_FORK=no) between testing_suite_start and testing_suite_end (testing.h:
 * an exit() inside a test must not read as a passing suite) and returns EXIT_FAILURE when any
 * test failed.
 */
#ifndef COMMON_TESTING_MAIN_H
#define COMMON_TESTING_MAIN_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "testing.h"

#define TESTING_MAX_TESTS 24

/* A chapter's `attn` program end to end (testing_attn_program in the test's folder, ATOL and RTOL)
 * as a test of a case, given as data. */
typedef struct {
    const char *test;    /* the test's name */
    TestingAttnRun run;  /* the program, the device, its versions, the seed */
    int shapes[8][7];    /* {B, H, Hkv, T, S, D, causal} */
    size_t n_shapes;
} TestingAttnCheck;

typedef struct {
    const char *name;      /* the case's name (CK_RUN_CASE, scripts/mutants.txt) */
    int timeout_s;         /* each test's time limit (0: Check's default, 4 s), times CK_TIMEOUT_MULTIPLIER */
    int temp_dir;          /* 1: testing_tmp is a new empty folder around each test (testing_tmp_setup) */
    void (*setup)(void);   /* NULL, or a fixture of the suite's own around each test, inside the folder's */
    void (*teardown)(void);
    int cuda;              /* 1: the case is added only when testing_cuda_cases says a GPU answers */
    const TTest *tests[TESTING_MAX_TESTS]; /* in order; the first NULL ends the list */
    const TTest *exit_1_tests[4];          /* tests that pass by exiting with status 1 (a die()) */
    TestingAttnCheck attn;                 /* one more test after the others, when attn.test is set */
} TestingCase;

/* What a "cuda" case holds only in a CUDA build (its tests, its number of versions): the names
 * and values, or 0 (no test, no version) in a build without CUDA, where the tests themselves are
 * not compiled and some chapters do not define their number of CUDA versions. */
#if HAVE_CUDA
#define TESTING_CUDA_ONLY(...) __VA_ARGS__
#else
#define TESTING_CUDA_ONLY(...) 0
#endif

/* The hostile-input case of every chapter (common/hostile.h): one test, ten minutes, its folder. */
static inline TestingCase testing_hostile_case(const TTest *test)
{
    return (TestingCase){.name = "hostile inputs", .timeout_s = 600, .temp_dir = 1, .tests = {test}};
}

/* One case whose tests two files hold: a, with b's tests after its own (a's name, time limit and
 * fixtures; b must have the same name). Exits if they do not fit in one case. */
static inline TestingCase testing_case_join(TestingCase a, const TestingCase b)
{
    size_t n = 0;
    while (n < TESTING_MAX_TESTS && a.tests[n])
        n++;
    for (size_t i = 0; i < TESTING_MAX_TESTS && b.tests[i]; i++, n++) {
        if (n == TESTING_MAX_TESTS || strcmp(a.name, b.name) != 0) {
            fprintf(stderr, "testing_case_join: '%s' and '%s' do not make one case of at most %d tests\n", a.name,
                    b.name, TESTING_MAX_TESTS);
            exit(1);
        }
        a.tests[n] = b.tests[i];
    }
    return a;
}

/* The attn checks of the suite, in the order the cases give them: the test of check i reads
 * entry i (Check's loop index). */
static inline TestingAttnCheck *testing_attn_checks(void)
{
    static TestingAttnCheck checks[16];
    return checks;
}

/* The test of an attn check. */
static inline void testing_attn_check_test(int i)
{
    const TestingAttnCheck *c = &testing_attn_checks()[i];
    tcase_fn_start(c->test, __FILE__, __LINE__);
    testing_assert_ok(testing_attn_program(&c->run, testing_tmp, c->shapes, c->n_shapes, ATOL, RTOL));
}

/* Adds case c's attn check to tc, as a loop test of one iteration: its index in the registry. */
static inline void testing_add_attn_check(TCase *tc, const TestingAttnCheck *c)
{
    static const TTest test = {"testing_attn_check", testing_attn_check_test, __FILE__, __LINE__};
    static int n;
    if (n == 16) {
        fprintf(stderr, "testing_add_attn_check: more than 16 attn checks in one suite\n");
        exit(1);
    }
    testing_attn_checks()[n] = *c;
    tcase_add_loop_test(tc, &test, n, n + 1);
    n++;
}

/* The "cuda" case of chapters 01 to 05: tests (from TESTING_CUDA_ONLY: none in a build without
 * CUDA), each with the given time limit and its own folder, then the attn check of `run` (device
 * "cuda", seed 700: `attn --device cuda` end to end against float64, every CUDA version) on
 * shapes[0..n_shapes). */
static inline TestingCase testing_cuda_case(int timeout_s, const TTest *const tests[], TestingAttnRun run,
                                            const int shapes[][7], size_t n_shapes)
{
    TestingCase c = {.name = "cuda", .cuda = 1, .timeout_s = timeout_s, .temp_dir = 1};
    for (size_t i = 0; i < TESTING_MAX_TESTS && tests[i]; i++)
        c.tests[i] = tests[i];
    run.device = "cuda", run.seed = 700;
    c.attn = (TestingAttnCheck){.test = HAVE_CUDA ? "test_attn_command_on_the_gpu" : NULL, .run = run,
                                .n_shapes = n_shapes < 8 ? n_shapes : 8};
    memcpy(c.attn.shapes, shapes, c.attn.n_shapes * sizeof shapes[0]);
    return c;
}

/* The suite `name` of cases[0..n). The GPU is asked about (in a child process: this one must
 * not start CUDA) once, at the first "cuda" case. */
static inline Suite *testing_suite(const char *name, const TestingCase *cases, size_t n)
{
    Suite *s = suite_create(name);
    int gpu = -1; /* not asked yet */
    for (size_t i = 0; i < n; i++) {
        const TestingCase *c = &cases[i];
        if (c->cuda && gpu < 0)
            gpu = testing_cuda_cases(name);
        if (c->cuda && !gpu)
            continue;
        TCase *tc = tcase_create(c->name);
        if (c->timeout_s > 0)
            tcase_set_timeout(tc, c->timeout_s);
        if (c->temp_dir)
            tcase_add_checked_fixture(tc, testing_tmp_setup, testing_tmp_teardown);
        if (c->setup || c->teardown)
            tcase_add_checked_fixture(tc, c->setup, c->teardown);
        for (size_t t = 0; t < TESTING_MAX_TESTS && c->tests[t]; t++)
            tcase_add_test(tc, c->tests[t]);
        for (size_t t = 0; t < sizeof c->exit_1_tests / sizeof c->exit_1_tests[0] && c->exit_1_tests[t]; t++)
            tcase_add_exit_test(tc, c->exit_1_tests[t], 1);
        if (c->attn.test)
            testing_add_attn_check(tc, &c->attn);
        suite_add_tcase(s, tc);
    }
    return s;
}

/* main() of the suite `name` ("01_mha"; its messages say "test_01_mha"): runs every case of
 * cases[0..n) and returns the exit status. */
static inline int testing_main_cases(const char *name, const TestingCase *cases, size_t n)
{
    static char program[128];
    snprintf(program, sizeof program, "test_%s", name);
    error_set_program(program);
    SRunner *sr = srunner_create(testing_suite(name, cases, n));
    testing_suite_start(program);
    srunner_run_all(sr, CK_NORMAL);
    testing_suite_end();
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
