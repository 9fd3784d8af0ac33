/*
 * test_paged.h: what chapter 05's three test files share. test_paged.c checks the paged cache
 * against chapter 04, the allocator and the lesson's measurements, and holds main();
 * test_paged_program.c the program end to end, the CUDA kernels and hostile inputs;
 * test_frag.c the fragmentation measurement; test_prefix.c prefix caching. The last three give
 * their cases to main's table.
 */
#ifndef TEST_PAGED_H
#define TEST_PAGED_H

#include <check.h>

#include "05_paged/paged.h"
#include "common/testing.h"
#include "common/testing_main.h"

/* The block sizes every test of pages runs: one token, and the usual 8, 16 and 32. */
#define N_BLOCK_SIZES 4
extern const int BLOCK_SIZES[N_BLOCK_SIZES];

/* test_paged_program.c's cases: "program", "hostile inputs" and "cuda". */
TestingCase paged_program_case(void);
TestingCase paged_hostile_case(void);
TestingCase paged_cuda_case(void);
/* test_frag.c's case: "fragmentation". */
TestingCase paged_frag_case(void);
/* test_prefix.c's case: "prefix caching". */
TestingCase paged_prefix_case(void);

#endif
