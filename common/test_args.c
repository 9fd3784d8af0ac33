/*
 * test_args.c: common/'s command lines and messages, tested where they live: args.c's parser
 * (ranges, values that look like options, missing and unknown options, choices, options that
 * exclude each other) with the exact message of each error, and error.c's quoting of the names
 * and values a message shows (invisible characters escaped, long ones cut).
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"
#include "common/device.h"
#include "common/error.h"
#include "common/test_common.h"

/* ==== messages: names quoted ====================================================================== */

/* Invisible characters in a name or a value are shown escaped in messages. */
START_TEST(test_error_quote)
{
    ck_assert_str_eq(error_quote("plain name.npy"), "plain name.npy");
    ck_assert_str_eq(error_quote("q\r.npy"), "q\\r.npy");
    ck_assert_str_eq(error_quote("a\tb\nc\x01\x7f\\"), "a\\tb\\nc\\x01\\x7f\\\\");
    const char *a = error_quote("one"), *b = error_quote("two"); /* several in one message */
    ck_assert_str_eq(a, "one");
    ck_assert_str_eq(b, "two");
    char *long_name = xmalloc(5000, "long_name");
    memset(long_name, 'x', 4999), long_name[4999] = '\0';
    const char *cut = error_quote(long_name);
    ck_assert_uint_lt(strlen(cut), 1024);
    ck_assert_str_eq(cut + strlen(cut) - 3, "...");
    free(long_name);
}
END_TEST

/* ==== arguments =================================================================================== */

START_TEST(test_args_errors)
{
    int n = 0, flag = 0;
    double x = 0;
    const char *s = NULL, *dev = "auto";
    ArgSpec specs[] = {
        {.name = "n", .kind = ARG_INT, .dest = &n, .metavar = "N", .help = "a count", .min = 1, .max = 10},
        {.name = "x", .kind = ARG_DOUBLE, .dest = &x, .metavar = "X", .help = "a number"},
        {.name = "flag", .kind = ARG_FLAG, .dest = &flag, .help = "a flag"},
        {.name = "s", .kind = ARG_STRING, .dest = &s, .metavar = "S", .help = "a name", .required = 1},
        {.name = "device", .kind = ARG_CHOICE, .dest = &dev, .choices = DEVICE_CHOICES, .help = "device"},
    };
    ArgCommand cmd = {.name = "prog sub", .usage = "[options]", .summary = "A test command.", .specs = specs,
                      .n_specs = 5};
    const struct {
        const char *argv[6];
        int argc;
        const char *expect;
    } bad[] = {
        {{"sub", "--s", "a", "--n", "11"}, 5, "--n expects an integer from 1 to 10, got '11'"},
        {{"sub", "--s", "a", "--n", "1x"}, 5, "--n expects an integer from 1 to 10, got '1x'"},
        {{"sub", "--s", "a", "--n", "99999999999"}, 5, "--n expects an integer from 1 to 10, got '99999999999'"},
        {{"sub", "--s", "a", "--x", "1e999"}, 5, "--x expects a finite number, got '1e999'"},
        {{"sub", "--s", "--n", "3"}, 4, "--s needs a value, got the option '--n'"},
        {{"sub", "--s", "-h"}, 3, "--s needs a value, got the option '-h'"},
        {{"sub", "--s", "a", "--x", "--flag"}, 5, "--x needs a value, got the option '--flag'"},
        {{"sub", "--s", "a", "--x", "-inf"}, 5, "--x expects a finite number, got '-inf'"},
        {{"sub", "--s", "a", "--device", "--flag"}, 5, "--device needs a value, got the option '--flag'"},
        {{"sub", "--s", "a", "--x", "nan"}, 5, "--x expects a finite number"},
        {{"sub", "--s", "a", "--x", ""}, 5, "--x expects a finite number"},
        {{"sub", "--s", "a", "--bogus"}, 4, "unknown option '--bogus'"},
        {{"sub", "--s"}, 2, "option '--s' needs a value"},
        {{"sub", "--n", "2"}, 3, "missing --s"},
        {{"sub", "--s", "a", "stray"}, 4, "unexpected argument 'stray'"},
        {{"sub", "--s", "a", "--device", "tpu"}, 5, "--device must be one of auto|cpu|cuda, got 'tpu'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(args_parse(&cmd, bad[i].argc, (char **)bad[i].argv) == -1, "case %zu accepted", i);
        ck_assert_msg(strstr(error_message(), bad[i].expect), "case %zu: got '%s'", i, error_message());
    }
    const char *good[] = {"sub", "--s", "name", "--n", "10", "--x=-2.5", "--flag", "--device", "cpu", NULL};
    ck_assert_int_eq(args_parse(&cmd, 9, (char **)good), 0);
    ck_assert_int_eq(n, 10);
    ck_assert_double_eq(x, -2.5);
    ck_assert_int_eq(flag, 1);
    ck_assert_str_eq(s, "name");
    ck_assert_str_eq(dev, "cpu");
    /* values that start with '-' on purpose: a negative number as its own word, "-" alone, and any
     * text after '=' */
    const char *dashes[] = {"sub", "--x", "-1e-3", "--s=--odd", NULL};
    ck_assert_msg(args_parse(&cmd, 4, (char **)dashes) == 0, "%s", error_message());
    ck_assert_double_eq(x, -1e-3);
    ck_assert_str_eq(s, "--odd");
    const char *dash[] = {"sub", "--s", "-", NULL};
    ck_assert_msg(args_parse(&cmd, 3, (char **)dash) == 0, "%s", error_message());
    ck_assert_str_eq(s, "-");
}
END_TEST

/* Two options that cannot go together are an error naming both (and --help says so), whatever
 * their order; either alone is fine. */
START_TEST(test_args_conflicts)
{
    const char *ids = NULL, *text = NULL;
    ArgSpec specs[] = {
        {.name = "prompt", .kind = ARG_STRING, .dest = &ids, .metavar = "IDS", .help = "ids"},
        {.name = "prompt-text", .kind = ARG_STRING, .dest = &text, .metavar = "TEXT", .help = "text",
         .conflicts = "prompt"},
    };
    ArgCommand cmd = {.name = "prog gen", .usage = "[options]", .summary = "A test command.", .specs = specs,
                      .n_specs = 2};
    const char *both[] = {"gen", "--prompt-text", "hi", "--prompt", "1 2", NULL};
    ck_assert_int_eq(args_parse(&cmd, 5, (char **)both), -1);
    ck_assert_msg(strstr(error_message(), "--prompt and --prompt-text cannot be given together"), "%s",
                  error_message());
    const char *reversed[] = {"gen", "--prompt", "1 2", "--prompt-text", "hi", NULL};
    ck_assert_int_eq(args_parse(&cmd, 5, (char **)reversed), -1);
    ck_assert_ptr_nonnull(strstr(error_message(), "cannot be given together"));
    const char *one[] = {"gen", "--prompt-text", "hi", NULL};
    ck_assert_int_eq(args_parse(&cmd, 3, (char **)one), 0);
    ck_assert_str_eq(text, "hi");
}
END_TEST

TestingCase common_args_case(void)
{
    return (TestingCase){.name = "arguments and messages",
                         .tests = {test_error_quote, test_args_errors, test_args_conflicts}};
}
