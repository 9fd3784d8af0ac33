/*
 * test_sampling.c: temperature, top-p and top-k (common/sampler.c) against llama2.c's run.c,
 * whose sampler is written out again here on its own terms -- its xorshift generator, its
 * softmax, its ProbIndex array, its cutoff (1 - topp) / (n - 1), its qsort and its scaled coin --
 * and against a top-k written from vLLM's definition (the k most probable tokens only), on many
 * steps of random logits: the same ids, step after step, for every setting of the grid.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/model.h"
#include "common/rng.h"
#include "common/test_common.h"

/* ==== run.c, again ================================================================================ */

static uint32_t runc_random_u32(uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float runc_random_f32(uint64_t *state) { return (float)(runc_random_u32(state) >> 8) / 16777216.0f; }

static void runc_softmax(float *x, int size)
{
    float max_val = x[0];
    for (int i = 1; i < size; i++)
        if (x[i] > max_val)
            max_val = x[i];
    float sum = 0.0f;
    for (int i = 0; i < size; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    for (int i = 0; i < size; i++)
        x[i] /= sum;
}

typedef struct {
    float prob;
    int index;
} RuncProbIndex;

static int runc_compare(const void *a, const void *b)
{
    const RuncProbIndex *a_ = a, *b_ = b;
    if (a_->prob > b_->prob)
        return -1;
    if (a_->prob < b_->prob)
        return 1;
    return 0;
}

static int runc_sample_mult(const float *probabilities, int n, float coin)
{
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += probabilities[i];
        if (coin < cdf)
            return i;
    }
    return n - 1;
}

static int runc_sample_topp(const float *probabilities, int n, float topp, RuncProbIndex *probindex, float coin)
{
    int n0 = 0;
    const float cutoff = (1.0f - topp) / (n - 1);
    for (int i = 0; i < n; i++)
        if (probabilities[i] >= cutoff) {
            probindex[n0].index = i;
            probindex[n0].prob = probabilities[i];
            n0++;
        }
    qsort(probindex, (size_t)n0, sizeof(RuncProbIndex), runc_compare);
    float cumulative_prob = 0.0f;
    int last_idx = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cumulative_prob += probindex[i].prob;
        if (cumulative_prob > topp) {
            last_idx = i;
            break;
        }
    }
    const float r = coin * cumulative_prob;
    float cdf = 0.0f;
    for (int i = 0; i <= last_idx; i++) {
        cdf += probindex[i].prob;
        if (r < cdf)
            return probindex[i].index;
    }
    return probindex[last_idx].index;
}

/* run.c's sample(): greedy at temperature 0, else logits / T, softmax, one coin, top-p or not. */
static int runc_sample(float *logits, int n, float temperature, float topp, uint64_t *state, RuncProbIndex *pi)
{
    if (temperature == 0.0f) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (logits[i] > logits[best])
                best = i;
        return best;
    }
    for (int q = 0; q < n; q++)
        logits[q] /= temperature;
    runc_softmax(logits, n);
    const float coin = runc_random_f32(state);
    if (topp <= 0 || topp >= 1)
        return runc_sample_mult(logits, n, coin);
    return runc_sample_topp(logits, n, topp, pi, coin);
}

/* top-k as vLLM defines it, on run.c's terms: the k most probable tokens (run.c's order), then the
 * nucleus among them at topp times their mass, the coin scaled by the running sum where it stops. */
static int topk_sample(float *logits, int n, float temperature, float topp, int k, uint64_t *state,
                       RuncProbIndex *pi)
{
    for (int q = 0; q < n; q++)
        logits[q] /= temperature;
    runc_softmax(logits, n);
    const float coin = runc_random_f32(state);
    for (int i = 0; i < n; i++)
        pi[i] = (RuncProbIndex){.prob = logits[i], .index = i};
    qsort(pi, (size_t)n, sizeof(RuncProbIndex), runc_compare);
    float mass = 0.0f;
    for (int i = 0; i < k; i++)
        mass += pi[i].prob;
    float cumulative = 0.0f;
    int last = k - 1;
    for (int i = 0; i < k; i++) {
        cumulative += pi[i].prob;
        if (topp > 0.0f && topp < 1.0f && cumulative > topp * mass) {
            last = i;
            break;
        }
    }
    float cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += pi[i].prob;
        if (coin * cumulative < cdf)
            return pi[i].index;
    }
    return pi[last].index;
}

/* ==== the grid ==================================================================================== */

#define VOCAB 512
#define STEPS 60

/* Logits of step `step`: normal, scaled so that a few tokens dominate (a nucleus of a handful at
 * T = 0.5, of hundreds at T = 1), with every 7th step holding ties (rounded to a coarse grid). */
static void step_logits(float *l, uint64_t seed, int step)
{
    Rng r;
    rng_seed(&r, seed * 1000 + (uint64_t)step);
    for (int i = 0; i < VOCAB; i++) {
        l[i] = 3.0f * rng_normal(&r);
        if (step % 7 == 3)
            l[i] = roundf(l[i]);
    }
}

START_TEST(test_top_p_and_top_k_match_run_c)
{
    static const float top_ps[] = {0.5f, 0.9f, 0.99f, 1.0f};
    static const int top_ks[] = {0, 1, 5, 40};
    static const float temps[] = {0.5f, 1.0f};
    static const uint64_t seeds[] = {1, 7, 42, 1234567};
    RuncProbIndex *pi = malloc(VOCAB * sizeof *pi);
    ck_assert_ptr_nonnull(pi);
    int cases = 0, differs_from_plain = 0;
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 4; b++)
            for (size_t t = 0; t < 2; t++)
                for (size_t s = 0; s < 4; s++) {
                    const Sampling sp = {.temperature = temps[t], .top_p = top_ps[a], .top_k = top_ks[b]};
                    uint64_t state = seeds[s];
                    Rng rng;
                    model_rng_seed(&rng, seeds[s]);
                    for (int step = 0; step < STEPS; step++) {
                        float ours[VOCAB], theirs[VOCAB];
                        step_logits(ours, seeds[s], step);
                        memcpy(theirs, ours, sizeof ours);
                        const int want = top_ks[b] ? topk_sample(theirs, VOCAB, temps[t], top_ps[a], top_ks[b], &state, pi)
                                                   : runc_sample(theirs, VOCAB, temps[t], top_ps[a], &state, pi);
                        const int got = model_sample_with(ours, VOCAB, &sp, &rng);
                        ck_assert_msg(got == want, "T %g, top-p %g, top-k %d, seed %llu, step %d: id %d, run.c's %d",
                                      temps[t], top_ps[a], top_ks[b], (unsigned long long)seeds[s], step, got, want);
                        /* the filter matters: the same coin over every token picks another id somewhere */
                        if (top_ps[a] < 1.0f || top_ks[b] > 0) {
                            uint64_t plain_state = seeds[s];
                            for (int k = 0; k < step; k++)
                                runc_random_u32(&plain_state);
                            float plain[VOCAB];
                            step_logits(plain, seeds[s], step);
                            differs_from_plain += runc_sample(plain, VOCAB, temps[t], 1.0f, &plain_state, pi) != got;
                        }
                    }
                    cases++;
                }
    ck_assert_int_eq(cases, 128);
    ck_assert_int_gt(differs_from_plain, 100); /* the grid's power: the filters change tokens */
    free(pi);
}
END_TEST

/* top-k 1 is greedy; top-p 1 (and 0: off, as run.c) is plain sampling; a top-k of the whole
 * vocabulary is plain sampling too. */
START_TEST(test_limits_of_the_filters)
{
    for (uint64_t seed = 1; seed <= 20; seed++) {
        float l[VOCAB], copy[VOCAB], plain[VOCAB];
        step_logits(l, seed, 3 + (int)seed); /* ties on some of them */
        memcpy(copy, l, sizeof l), memcpy(plain, l, sizeof l);
        const int greedy = model_argmax(l, VOCAB);
        Rng a, b;
        model_rng_seed(&a, seed), model_rng_seed(&b, seed);
        const Sampling k1 = {.temperature = 1.0f, .top_k = 1};
        ck_assert_int_eq(model_sample_with(copy, VOCAB, &k1, &a), greedy);
        const Sampling settings[3] = {{.temperature = 0.8f, .top_p = 1.0f},
                                      {.temperature = 0.8f, .top_p = 0.0f},
                                      {.temperature = 0.8f, .top_k = VOCAB}};
        for (int k = 0; k < 3; k++) {
            memcpy(copy, l, sizeof l), memcpy(plain, l, sizeof l);
            model_rng_seed(&a, seed), model_rng_seed(&b, seed);
            ck_assert_int_eq(model_sample_with(copy, VOCAB, &settings[k], &a), model_sample(plain, VOCAB, 0.8f, &b));
        }
    }
}
END_TEST

/* A worked example: logits (3, 2, 1, 0) at T = 1 are probabilities 0.644, 0.237, 0.087, 0.032.
 * top-p 0.8 keeps the first two (0.644 < 0.8 < 0.881) and scales the coin by 0.881; top-k 3
 * keeps three. 4000 draws of one generator, counted against those probabilities. */
START_TEST(test_a_nucleus_by_hand)
{
    int counts[2][4] = {{0}};
    for (int f = 0; f < 2; f++) {
        Rng r;
        model_rng_seed(&r, 7);
        for (int draw = 0; draw < 4000; draw++) {
            float l[4] = {3.0f, 2.0f, 1.0f, 0.0f};
            const Sampling s = f ? (Sampling){.temperature = 1.0f, .top_k = 3}
                                 : (Sampling){.temperature = 1.0f, .top_p = 0.8f};
            const int id = model_sample_with(l, 4, &s, &r);
            ck_assert(id >= 0 && id < 4);
            counts[f][id]++;
        }
    }
    /* top-p 0.8: ids 0 and 1 only, in the ratio 0.644 : 0.237 (73% : 27%) */
    ck_assert_int_eq(counts[0][2] + counts[0][3], 0);
    ck_assert_msg(counts[0][0] > 2700 && counts[0][0] < 3150, "id 0: %d of 4000", counts[0][0]);
    /* top-k 3: never id 3; id 2 about 0.087 / 0.968 = 9% */
    ck_assert_int_eq(counts[1][3], 0);
    ck_assert_msg(counts[1][2] > 240 && counts[1][2] < 480, "id 2: %d of 4000", counts[1][2]);
}
END_TEST

START_TEST(test_bad_sampling_values)
{
    ck_assert_int_eq(model_check_sampling(0.9, 40), 0);
    ck_assert_int_eq(model_check_sampling(1.0, 0), 0);
    const double bad_p[] = {0.0, -0.5, 1.01, NAN, INFINITY};
    for (int k = 0; k < 5; k++) {
        ck_assert_int_eq(model_check_sampling(bad_p[k], 0), -1);
        ck_assert_msg(strstr(error_message(), "--top-p") && strstr(error_message(), "(0, 1]"), "%s", error_message());
    }
    ck_assert_int_eq(model_check_sampling(0.9, -1), -1);
    ck_assert_msg(strstr(error_message(), "--top-k -1"), "%s", error_message());
}
END_TEST

TestingCase common_sampling_case(void)
{
    return (TestingCase){.name = "sampling", .timeout_s = 60,
                         .tests = {test_top_p_and_top_k_match_run_c, test_limits_of_the_filters, test_a_nucleus_by_hand,
                                   test_bad_sampling_values}};
}
