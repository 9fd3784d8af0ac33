/*
 * test_mha.h: what chapter 01's two test files share. test_mha.c checks the kernels and the layer
 * on the CPU and holds main(); test_mha_program.c the program end to end, the CUDA versions and
 * hostile inputs, and gives those cases to main's table.
 */
#ifndef TEST_MHA_H
#define TEST_MHA_H

#include <check.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "01_mha/mha.h"
#include "common/error.h"
#include "common/testing.h"
#include "common/testing_main.h"

/* test_mha_program.c's cases: "program", "hostile inputs" and "cuda". */
TestingCase mha_program_case(void);
TestingCase mha_hostile_case(void);
TestingCase mha_cuda_case(void);

typedef struct {
    MhaShape s;
    float *q, *k, *v, *out; /* q, out (B, H, T, D); k, v (B, H, S, D) */
} Problem;

static inline size_t n_out(const MhaShape *s) { return (size_t)s->B * s->H * s->T * s->D; }

/* q, k, v ~ N(0, 1) from seeds seed, seed + 1, seed + 2; scale 1/sqrt(D). */
static inline Problem problem_new(int B, int H, int T, int S, int D, int causal, uint64_t seed)
{
    Problem p = {.s = {.B = B, .H = H, .T = T, .S = S, .D = D, .causal = causal, .scale = 1.0f / sqrtf((float)D)}};
    size_t nq = (size_t)B * H * T * D, nk = (size_t)B * H * S * D;
    p.q = xmalloc(nq * sizeof(float), "q"), p.out = xmalloc(nq * sizeof(float), "out");
    p.k = xmalloc(nk * sizeof(float), "k"), p.v = xmalloc(nk * sizeof(float), "v");
    fill_normal(p.q, nq, seed), fill_normal(p.k, nk, seed + 1), fill_normal(p.v, nk, seed + 2);
    return p;
}

static inline void problem_free(Problem *p) { free(p->q), free(p->k), free(p->v), free(p->out); }

/* The float64 oracle (common/testing_oracle.c) on an MHA problem. */
static inline void mha_f64(const MhaShape *s, const float *q, const float *k, const float *v, double *out)
{
    attention_f64(s->B, s->H, s->H, s->T, s->S, s->D, s->causal, s->scale, q, k, v, out);
}

#endif
