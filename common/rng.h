/*
 * rng.h: a small deterministic random number generator (xorshift64*, seeded by splitmix64).
 * Same seed, same numbers, on every machine: tests and lessons use fixed seeds.
 */
#ifndef COMMON_RNG_H
#define COMMON_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint64_t state;
} Rng;

void rng_seed(Rng *rng, uint64_t seed);
uint32_t rng_u32(Rng *rng);
float rng_uniform(Rng *rng);            /* [0, 1) */
float rng_normal(Rng *rng);             /* N(0, 1), Box-Muller */
uint32_t rng_below(Rng *rng, uint32_t n); /* uniform in [0, n), n >= 1 */

#ifdef __cplusplus
}
#endif
#endif
