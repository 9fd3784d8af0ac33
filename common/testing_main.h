/*
 * testing_main.h: the main() of every Check suite (test sources only: it needs Check's header).
 *
 *   int main(void) { return testing_main("test_01_mha", mha_suite()); }
 *
 * Runs every case of the suite (each in a forked child unless CK_FORK=no), between
 * testing_suite_start and testing_suite_end (testing.h: an exit() inside a test must not read as
 * a passing suite), and returns EXIT_FAILURE when any test failed.
 */
#ifndef COMMON_TESTING_MAIN_H
#define COMMON_TESTING_MAIN_H

#include <check.h>
#include <stdlib.h>

#include "error.h"
#include "testing.h"

static inline int testing_main(const char *name, Suite *suite)
{
    error_set_program(name);
    SRunner *sr = srunner_create(suite);
    testing_suite_start(name);
    srunner_run_all(sr, CK_NORMAL);
    testing_suite_end();
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
