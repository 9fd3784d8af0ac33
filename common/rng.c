/* rng.c: xorshift64* with a splitmix64 seed, uniform and normal floats (see rng.h). */
#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

void rng_seed(Rng *rng, uint64_t seed)
{
    rng->state = splitmix64(seed);
    if (rng->state == 0) /* xorshift must never hold zero */
        rng->state = 0x9E3779B97F4A7C15ull;
}

uint32_t rng_u32(Rng *rng)
{
    uint64_t x = rng->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng->state = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

float rng_uniform(Rng *rng) { return (float)(rng_u32(rng) >> 8) / 16777216.0f; }

float rng_normal(Rng *rng)
{
    /* u1 in (0, 1] so that log(u1) is finite */
    float u1 = ((float)(rng_u32(rng) >> 8) + 1.0f) / 16777216.0f;
    float u2 = rng_uniform(rng);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

uint32_t rng_below(Rng *rng, uint32_t n) { return (uint32_t)(((uint64_t)rng_u32(rng) * n) >> 32); }
