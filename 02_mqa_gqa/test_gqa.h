/*
 * test_gqa.h: what chapter 02's two test files share. test_gqa.c checks the kernels on the CPU
 * (against chapter 01, the grid, the conversion); test_gqa_program.c the program end to end, the
 * CUDA versions and hostile inputs, and gives those cases to main's table.
 */
#ifndef TEST_GQA_H
#define TEST_GQA_H

#include <check.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "02_mqa_gqa/gqa.h"
#include "common/tensor.h"
#include "common/testing.h"
#include "common/testing_main.h"

typedef struct {
    GqaShape s;
    float *q, *k, *v, *out; /* q, out (B, H, T, D); k, v (B, Hkv, S, D) */
} Problem;

static inline size_t n_q(const GqaShape *s) { return (size_t)s->B * s->H * s->T * s->D; }
static inline size_t n_kv(const GqaShape *s) { return (size_t)s->B * s->Hkv * s->S * s->D; }

/* n floats, or the test dies with the allocator's error */
static inline float *floats(size_t n) { return mem_alloc_or_die(n * sizeof(float), "test buffer"); }

/* q, k, v ~ N(0, 1) from seeds seed, seed + 1, seed + 2; scale 1/sqrt(D). */
static inline Problem problem_new(int B, int H, int Hkv, int T, int S, int D, int causal, uint64_t seed)
{
    const GqaShape s = {.B = B, .H = H, .Hkv = Hkv, .T = T, .S = S, .D = D, .causal = causal,
                        .scale = 1.0f / sqrtf((float)D)};
    Problem p = {.s = s, .q = floats(n_q(&s)), .k = floats(n_kv(&s)), .v = floats(n_kv(&s)), .out = floats(n_q(&s))};
    fill_normal(p.q, n_q(&p.s), seed), fill_normal(p.k, n_kv(&p.s), seed + 1), fill_normal(p.v, n_kv(&p.s), seed + 2);
    return p;
}

static inline void problem_free(Problem *p) { mem_free(p->q), mem_free(p->k), mem_free(p->v), mem_free(p->out); }

/* Shapes that exercise both paths of the grouped version: G*T <= 32 rows per group (decode) and
 * more (blocks), causal with T < S, T = S and T > S, odd sizes. Shape i: {B, H, Hkv, T, S, D,
 * causal}, its data from seed 100 + i (test_gqa.c). */
#define N_SHAPES 12
extern const int GQA_TEST_SHAPES[N_SHAPES][7];

static inline Problem shape_problem(int i)
{
    const int *x = GQA_TEST_SHAPES[i];
    return problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 100 + (uint64_t)i);
}

/* test_gqa_program.c's cases: "program", "hostile inputs" and "cuda". */
TestingCase gqa_program_case(void);
TestingCase gqa_hostile_case(void);
TestingCase gqa_cuda_case(void);

#endif
