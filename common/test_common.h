/*
 * test_common.h: the parts of common/'s Check suite, one file each (test sources only: it needs
 * Check's header). test_common.c's main() runs them all as one suite, test/common.
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

#include "common/testing_main.h"

/* Each file's cases (their names, time limits, fixtures and tests), for test_common.c's table. */
TestingCase common_numeric_case(void);          /* "matmul, exp, memory" */
TestingCase common_files_case(void);            /* "files" */
TestingCase common_args_case(void);             /* "arguments and messages" */
TestingCase common_model_case(void);            /* "model" */
TestingCase common_sampling_case(void);         /* "sampling" (test_sampling.c) */
TestingCase common_tokenizer_case(void);        /* "tokenizer" */
TestingCase common_tokenizer_heap_case(void);   /* "tokenizer: the heap encoder against the reference" */

#endif
