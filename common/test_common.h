/*
 * test_common.h: the parts of common/'s Check suite, one file each (test sources only: it needs
 * Check's header). test_common.c's main() adds them all to one suite, test/common.
 *
 *   test_numeric.c    matmul, the vectorised exp, the memory budget
 *   test_files.c      .npy files, special and failing files (fileio), plots
 *   test_args.c       argument parsing and the quoting of names in messages
 *   test_model.c      llama2.c checkpoints, the forward pieces and the sampler
 *   test_tokenizer.c  the tokenizer: known encodings, bad files, the fast encoder against the
 *                     reference
 */
#ifndef COMMON_TEST_COMMON_H
#define COMMON_TEST_COMMON_H

#include <check.h>

#define ATOL 1e-5 /* design.md §5: fp32 against an fp32 reference */
#define RTOL 1e-4

/* Each adds its file's test cases (TCases, with their time limits and fixtures) to s. */
void common_numeric_cases(Suite *s);
void common_files_cases(Suite *s);
void common_args_cases(Suite *s);
void common_model_cases(Suite *s);
void common_tokenizer_cases(Suite *s);

#endif
