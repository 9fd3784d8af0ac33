/*
 * test_gqa.h: what chapter 02's two test files share. test_gqa.c checks the kernels on the CPU
 * (against chapter 01, the grid, the conversion); test_gqa_program.c the program end to end, the
 * CUDA versions and hostile inputs, and adds those cases to the suite.
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

#define ATOL 1e-5 /* design.md §5: fp32 against an fp32 reference */
#define RTOL 1e-4

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
 * more (blocks), causal with T < S, T = S and T > S, odd sizes. Shape i: {B, H, Hkv, T, S, D, causal}. */
#define N_SHAPES 12
static inline const int *shape_of(int i)
{
    static const int SHAPES[N_SHAPES][7] = {
        {1, 8, 8, 1, 300, 64, 1},  {2, 4, 4, 17, 29, 20, 1}, {1, 6, 6, 65, 65, 32, 1},  {2, 3, 3, 100, 37, 16, 1},
        {1, 8, 1, 1, 257, 64, 1},  {2, 8, 2, 3, 40, 32, 1},  {1, 9, 3, 17, 63, 80, 1},  {1, 16, 4, 33, 129, 64, 1},
        {2, 4, 1, 70, 50, 24, 1},  {1, 8, 2, 64, 64, 64, 0}, {1, 4, 2, 129, 127, 128, 0}, {3, 2, 1, 5, 5, 8, 0},
    };
    return SHAPES[i];
}

static inline Problem shape_problem(int i)
{
    const int *x = shape_of(i);
    return problem_new(x[0], x[1], x[2], x[3], x[4], x[5], x[6], 100 + (uint64_t)i);
}

/* test_gqa_program.c: adds the cases "program", "hostile inputs" and, with a GPU, "cuda". */
void gqa_program_cases(Suite *s);

#endif
