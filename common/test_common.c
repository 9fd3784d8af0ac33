/*
 * test_common.c: common/'s own Check suite. The pieces every chapter stands on are tested here,
 * where they live, before any chapter uses them. This file holds the program skeleton
 * (program.c: the subcommand table), the request streams of chapters 05 and 06 (workload.c) and
 * main(); the other parts are listed in test_common.h.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "common/program.h"
#include "common/test_common.h"
#include "common/testing.h"
#include "common/testing_main.h"
#include "common/workload.h"

/* ---- program.c: the subcommand table ---------------------------------------------------------- */

static int fake_run(int argc, char **argv) { return argc + (argv != NULL); }
static int fake_lesson(int argc, char **argv) { return 100 + argc + (argv != NULL) * 0; }

static const Subcommand FAKE_COMMANDS[] = {
    {.name = "attn", .run = fake_run, .summary = "attention"},
    {.name = "_hidden", .run = fake_run},
    {.name = "init-weights", .run = fake_run, .summary = "weights"},
    {.name = NULL},
};
static const Program FAKE = {.name = "99_fake", .title = "Chapter 99: a fake", .lesson = fake_lesson,
                             .subcommands = FAKE_COMMANDS};

START_TEST(test_program_usage_and_about_list_the_table)
{
    ck_assert_str_eq(program_usage(&FAKE), "[attn|init-weights] [options]");
    ck_assert_str_eq(program_about(&FAKE), "Chapter 99: a fake. Without a subcommand: the lesson.\n"
                                           "Subcommands (each takes --help):\n"
                                           "  attn          attention\n"
                                           "  init-weights  weights");
}
END_TEST

START_TEST(test_program_main_dispatches)
{
    char a0[] = "99_fake", a1[] = "init-weights", a2[] = "--x", h[] = "_hidden", o[] = "--device";
    char *sub[] = {a0, a1, a2, NULL};
    ck_assert_int_eq(program_main(&FAKE, 3, sub), 3); /* the subcommand gets argc - 1 */
    char *hidden[] = {a0, h, NULL};
    ck_assert_int_eq(program_main(&FAKE, 2, hidden), 2); /* hidden ones run, unlisted */
    char *lesson[] = {a0, o, NULL};
    ck_assert_int_eq(program_main(&FAKE, 2, lesson), 102); /* an option: the lesson */
    char *none[] = {a0, NULL};
    ck_assert_int_eq(program_main(&FAKE, 1, none), 101);
}
END_TEST

START_TEST(test_program_main_unknown_word_exits_1)
{
    char a0[] = "99_fake", a1[] = "transmogrify";
    char *argv[] = {a0, a1, NULL};
    program_main(&FAKE, 2, argv); /* dies: the test expects exit status 1 */
}
END_TEST

/* ---- workload.c: the request streams of chapters 05 and 06 ------------------------------------ */

START_TEST(test_workload_lengths_fit_and_repeat)
{
    for (int kind = 0; kind < 2; kind++) {
        WorkloadSpec spec = {.n = 500, .rate = 4.0, .kind = (WorkloadKind)kind, .prompt_median = 98,
                             .out_median = 205, .seq_len = 256, .vocab = 50, .seed = 7};
        WorkloadItem *a, *b;
        ck_assert_int_eq(workload_make(&spec, &a), 0);
        ck_assert_int_eq(workload_make(&spec, &b), 0);
        double prev = 0.0;
        for (int i = 0; i < spec.n; i++) {
            ck_assert_int_ge(a[i].prompt_len, 1);
            ck_assert_int_ge(a[i].output_len, 1);
            ck_assert_int_le(a[i].prompt_len + a[i].output_len, spec.seq_len);
            ck_assert(a[i].arrival_s >= prev); /* arrivals in order */
            prev = a[i].arrival_s;
            ck_assert_int_eq(a[i].prompt_len, b[i].prompt_len); /* a seed names a stream */
            ck_assert_int_eq(a[i].output_len, b[i].output_len);
            for (int k = 0; k < a[i].prompt_len; k++) {
                ck_assert_int_eq(a[i].prompt[k], b[i].prompt[k]);
                ck_assert(a[i].prompt[k] >= 0 && a[i].prompt[k] < spec.vocab);
            }
        }
        /* 500 arrivals at 4 per second: the last near 125 s (a Poisson count's sd is ~sqrt(500)/4) */
        ck_assert(prev > 125.0 - 6 * 5.6 && prev < 125.0 + 6 * 5.6);
        workload_free(a, spec.n), workload_free(b, spec.n);
    }
}
END_TEST

START_TEST(test_workload_without_rate_or_vocab)
{
    WorkloadSpec spec = {.n = 3, .rate = 0, .kind = WORKLOAD_UNIFORM, .prompt_median = 2, .out_median = 2,
                         .seq_len = 8, .vocab = 0, .seed = 1};
    WorkloadItem *w;
    ck_assert_int_eq(workload_make(&spec, &w), 0);
    for (int i = 0; i < spec.n; i++) {
        ck_assert(w[i].arrival_s == 0.0);
        ck_assert_ptr_null(w[i].prompt);
        ck_assert(w[i].prompt_len >= 1 && w[i].prompt_len <= 4);
    }
    workload_free(w, spec.n);
    spec.n = 0;
    ck_assert_int_eq(workload_make(&spec, &w), -1);
}
END_TEST

int main(void)
{
    const TestingCase cases[] = {
        {.name = "program", .tests = {test_program_usage_and_about_list_the_table, test_program_main_dispatches},
         .exit_1_tests = {test_program_main_unknown_word_exits_1}},
        {.name = "workload", .tests = {test_workload_lengths_fit_and_repeat, test_workload_without_rate_or_vocab}},
        common_numeric_case(),
        common_files_case(),
        common_args_case(),
        common_model_case(),
        common_sampling_case(),
        common_tokenizer_case(),
        common_tokenizer_heap_case(),
    };
    return testing_main_cases("common", cases, sizeof cases / sizeof cases[0]);
}
