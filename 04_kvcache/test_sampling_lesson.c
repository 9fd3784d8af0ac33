/*
 * test_sampling_lesson.c: the lesson's sampling example (lesson_sampling.c) checked -- its numbers
 * against a float64 computation written here from the definitions, in the example's rank order
 * (the logits fall with the rank, so no sort is needed), and its kept sets against what
 * common/sampler.c's model_sample_with really draws: 2000 draws of top-k 5 and of top-p 0.9, every
 * one inside the set the lesson prints, each kept token drawn about as often as the lesson says.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "04_kvcache/commands.h"
#include "04_kvcache/test_kvcache.h"
#include "common/model.h"
#include "common/rng.h"
#include "common/testing.h"

enum { V = SAMPLING_EXAMPLE_V, DRAWS = 2000 };

/* The relative error allowed between the lesson's float32 numbers and float64: its softmax sums
 * 32000 floats (a random walk of 32000 roundings of 2^-24: ~1e-5 measured at T = 0.5); the
 * printed digits are 4, and a wrong temperature, cut or renormalisation is off by 1e-2 or more. */
#define TOL 1e-4

/* The example's logits in rank order: (V). */
static float *logits_by_rank(void)
{
    float *by_id = xmalloc(V * sizeof(float), "logits"), *by_rank = xmalloc(V * sizeof(float), "logits");
    sampling_example_logits(by_id);
    for (int r = 0; r < V; r++)
        by_rank[r] = by_id[sampling_example_id(r)];
    free(by_id);
    return by_rank;
}

/* The logits as the lesson states them: 6.0 5.2 4.6 4.1 3.5 3.2 2.8 2.5, then 2 - 0.9 ln(r - 8) at
 * rank r > 8 counted from 1 (here from 0: ln(r - 7) at r >= 8); rank r at id (7919 r + 29) mod
 * 32000, every id once. */
START_TEST(test_example_logits_as_stated)
{
    const double head[8] = {6.0, 5.2, 4.6, 4.1, 3.5, 3.2, 2.8, 2.5};
    float *lg = logits_by_rank();
    char *seen = xmalloc(V, "ids seen");
    memset(seen, 0, V);
    for (int r = 0; r < V; r++) {
        const int id = sampling_example_id(r);
        ck_assert_int_eq(id, (int)((7919LL * r + 29) % V));
        ck_assert_msg(!seen[id], "id %d given to two ranks", id);
        seen[id] = 1;
        const double want = r < 8 ? head[r] : 2.0 - 0.9 * log(r - 7.0);
        ck_assert_msg(fabs(lg[r] - want) < 1e-5, "rank %d: logit %g, stated %g", r, lg[r], want);
        if (r > 0)
            ck_assert_msg(lg[r] < lg[r - 1], "rank %d's logit is not below rank %d's", r, r - 1);
    }
    free(seen);
    free(lg);
}
END_TEST

/* A column by its definition, in float64: p (V, by rank) = softmax(logits / T); the first top_k
 * kept (0: all); then the first whose running sum passes top_p times their mass ends the nucleus;
 * the kept renormalised. The number kept; *kept_mass before renormalising. */
static int column_f64(const float *lg, const Sampling *s, double *p, double *kept_mass)
{
    double z = 0.0;
    for (int r = 0; r < V; r++)
        z += p[r] = exp(((double)lg[r] - lg[0]) / s->temperature);
    const int k = s->top_k > 0 ? s->top_k : V;
    double mass = 0.0, run = 0.0;
    for (int r = 0; r < k; r++)
        mass += p[r] /= z;
    int kept = k;
    for (int r = 0; r < k && s->top_p > 0 && s->top_p < 1; r++)
        if ((run += p[r]) > s->top_p * mass) {
            kept = r + 1;
            break;
        }
    *kept_mass = 0.0;
    for (int r = 0; r < kept; r++)
        *kept_mass += p[r];
    for (int r = 0; r < V; r++)
        p[r] = r < kept ? p[r] / *kept_mass : 0.0;
    return kept;
}

/* Every number the lesson's table and sentences print, against column_f64. */
START_TEST(test_example_numbers_against_float64)
{
    SamplingColumn c[SAMPLING_COLUMNS];
    ck_assert_int_eq(sampling_example(c), 0);
    float *lg = logits_by_rank();
    double *p = xmalloc(V * sizeof(double), "p");
    for (int j = 0; j < SAMPLING_COLUMNS; j++) {
        double kept_mass, rest = 0.0, tail_max = 0.0, dropped_max = 0.0;
        const int kept = column_f64(lg, &c[j].s, p, &kept_mass);
        ck_assert_msg(c[j].kept == kept, "%s: %d kept, float64 %d", c[j].label, c[j].kept, kept);
        ck_assert_int_eq(c[j].tail_kept, kept > 8 ? kept - 8 : 0);
        for (int r = 0; r < 8; r++)
            ck_assert_msg(fabs(c[j].p[r] - p[r]) <= TOL * p[r] + 1e-12, "%s, rank %d: %.9g, float64 %.9g",
                          c[j].label, r, c[j].p[r], p[r]);
        for (int r = 8; r < V; r++)
            rest += p[r], tail_max = fmax(tail_max, p[r]);
        ck_assert_msg(fabs(c[j].rest - rest) <= TOL * rest + 1e-12, "%s: rest %.9g, float64 %.9g", c[j].label,
                      c[j].rest, rest);
        ck_assert_msg(fabs(c[j].tail_max - tail_max) <= TOL * tail_max, "%s: tail max", c[j].label);
        ck_assert_msg(fabs(c[j].kept_mass - kept_mass) <= TOL * kept_mass, "%s: kept mass %.9g, float64 %.9g",
                      c[j].label, c[j].kept_mass, kept_mass);
        if (kept < V) { /* the largest cut one: rank kept, before the cut */
            column_f64(lg, &(Sampling){.temperature = c[j].s.temperature}, p, &kept_mass);
            dropped_max = p[kept];
        }
        ck_assert_msg(fabs(c[j].dropped_max - dropped_max) <= TOL * dropped_max, "%s: dropped max %.9g, float64 %.9g",
                      c[j].label, c[j].dropped_max, dropped_max);
    }
    free(p);
    free(lg);
}
END_TEST

/* DRAWS tokens from model_sample_with as s says: each must be one the lesson keeps (its filter's
 * probability > 0), and each kept token of probability q must come about DRAWS q times (within
 * 5 standard deviations and 3 draws: the seed is fixed, so this cannot flicker). */
static void draws_stay_in(const Sampling *s, uint64_t seed)
{
    float *lg = xmalloc(V * sizeof(float), "logits"), *work = xmalloc(V * sizeof(float), "logits (copy)");
    float *probs = xmalloc(V * sizeof(float), "the lesson's probabilities");
    int *count = xmalloc(V * sizeof(int), "draws per id");
    memset(count, 0, V * sizeof(int));
    sampling_example_logits(lg);
    double kept_mass;
    const int kept = sampling_filter(lg, V, s, probs, &kept_mass);
    ck_assert_int_gt(kept, 0);
    Rng rng;
    model_rng_seed(&rng, seed);
    for (int i = 0; i < DRAWS; i++) {
        memcpy(work, lg, V * sizeof(float)); /* model_sample_with overwrites its logits */
        const int id = model_sample_with(work, V, s, &rng);
        ck_assert_msg(id >= 0 && id < V && probs[id] > 0.0f, "draw %d: id %d, outside the %d the lesson keeps", i,
                      id, kept);
        count[id]++;
    }
    for (int id = 0; id < V; id++) {
        const double want = DRAWS * (double)probs[id], sd = sqrt(want * (1.0 - probs[id]));
        ck_assert_msg(fabs(count[id] - want) <= 5 * sd + 3, "id %d: drawn %d times of %d, the lesson's p %.4f",
                      id, count[id], DRAWS, probs[id]);
    }
    free(count), free(probs), free(work), free(lg);
}

START_TEST(test_draws_stay_in_the_kept_sets)
{
    draws_stay_in(&SAMPLING_SETTINGS[3].s, 1); /* top-k 5 */
    draws_stay_in(&SAMPLING_SETTINGS[4].s, 2); /* top-p 0.9 */
    ck_assert_int_eq(SAMPLING_SETTINGS[3].s.top_k, 5);
    ck_assert(SAMPLING_SETTINGS[4].s.top_p == 0.9f && SAMPLING_SETTINGS[4].s.temperature == 1.0f);
}
END_TEST

TestingCase kvcache_sampling_lesson_case(void)
{
    return (TestingCase){.name = "sampling lesson", .timeout_s = 120,
                         .tests = {test_example_logits_as_stated, test_example_numbers_against_float64,
                                   test_draws_stay_in_the_kept_sets}};
}
