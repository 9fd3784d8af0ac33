/*
 * sampler.c: choosing the next token from the logits (model.h): greedy (the largest logit) or
 * sampled at a temperature T from softmax(logits / T), llama2.c's way: one uniform coin against
 * the running sum of the probabilities -- over every token, or over the few most probable ones:
 * the nucleus of top-p (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"),
 * exactly as llama2.c's run.c cuts it, and the top-k (Fan et al. 2018). Logits that overflowed
 * are an error, not a token.
 */
#include "model.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

#include "error.h"
#include "tensor.h"

int model_argmax(const float *logits, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

void model_rng_seed(Rng *rng, uint64_t seed) { rng->state = seed ? seed : 0x9E3779B97F4A7C15ull; }

int model_check_temperature(double temperature)
{
    if (!(temperature >= 0.0) || !isfinite(temperature))
        return error_set("--temperature %g: expected 0 (greedy) or a positive number", temperature);
    /* below FLT_MIN the float is subnormal (1e-40 keeps 3 digits) and logits / T overflows for
     * any logit above ~1e-2: refused rather than silently greedy */
    if (temperature > 0.0 && temperature < FLT_MIN)
        return error_set("--temperature %g is below the smallest normal float, %g: give 0 for greedy decoding or a "
                         "temperature of at least %g",
                         temperature, (double)FLT_MIN, (double)FLT_MIN);
    return 0;
}

int model_check_sampling(double top_p, int top_k)
{
    if (!(top_p > 0.0 && top_p <= 1.0))
        return error_set("--top-p %g: expected a number in (0, 1] (1: every token; run.c's default is 0.9)", top_p);
    if (top_k < 0)
        return error_set("--top-k %d: expected 0 (every token) or a positive number of tokens", top_k);
    return 0;
}

/* One candidate of the nucleus: a token and its probability (run.c's ProbIndex). */
typedef struct {
    float prob;
    int index;
} ProbIndex;

/* run.c's order: the more probable first; qsort decides between equals. */
static int by_prob_descending(const void *a, const void *b)
{
    const ProbIndex *x = a, *y = b;
    return x->prob > y->prob ? -1 : x->prob < y->prob ? 1 : 0;
}

/* The candidates, most probable first: run.c's (those at or above the cutoff (1 - top_p) / (n - 1),
 * when top_p is on and top_k off), or the top_k most probable of all. Their number. */
static int candidates(const float *probs, int n, float top_p, int top_k, ProbIndex *c)
{
    const float cutoff = top_k == 0 ? (1.0f - top_p) / (float)(n - 1) : 0.0f;
    int n0 = 0;
    for (int i = 0; i < n; i++)
        if (top_k > 0 || probs[i] >= cutoff)
            c[n0++] = (ProbIndex){.prob = probs[i], .index = i};
    qsort(c, (size_t)n0, sizeof *c, by_prob_descending);
    return top_k > 0 && top_k < n0 ? top_k : n0;
}

/* run.c's sample_topp, and its top-k form: the candidates cut after the first whose running sum
 * passes top_p (times the candidates' mass, with top-k), the coin scaled by the running sum there. */
static int sample_candidates(const float *probs, int n, float top_p, int top_k, float coin, ProbIndex *c)
{
    const int n0 = candidates(probs, n, top_p, top_k, c);
    const int nucleus = top_p > 0.0f && top_p < 1.0f;
    float mass = 1.0f; /* run.c compares the running sum with top_p itself */
    if (top_k > 0) {
        mass = 0.0f;
        for (int i = 0; i < n0; i++)
            mass += c[i].prob;
    }
    float cumulative = 0.0f;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cumulative += c[i].prob;
        if (nucleus && cumulative > top_p * mass) {
            last = i;
            break;
        }
    }
    const float r = coin * cumulative;
    float cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += c[i].prob;
        if (r < cdf)
            return c[i].index;
    }
    return c[last].index; /* rounding */
}

int model_sample(float *logits, int n, float temperature, Rng *rng)
{
    const Sampling s = {.temperature = temperature};
    return model_sample_with(logits, n, &s, rng);
}

int model_sample_with(float *logits, int n, const Sampling *sp, Rng *rng)
{
    const float temperature = sp->temperature;
    /* Logits that overflowed (a checkpoint with huge weights) would sample garbage -- inf - inf is
     * NaN, no cdf passes the coin, and the last id comes out every time -- so they are an error. */
    int best = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(logits[i]))
            return error_set("logit %d of %d is %s: the model's arithmetic overflowed float32 (are its weights "
                             "sensible?)",
                             i, n, isnan(logits[i]) ? "NaN" : "infinite");
        best = logits[i] > logits[best] ? i : best;
    }
    if (temperature <= 0.0f)
        return best;
    for (int i = 0; i < n; i++)
        logits[i] /= temperature;
    float max_val = logits[0], sum = 0.0f;
    for (int i = 1; i < n; i++)
        max_val = logits[i] > max_val ? logits[i] : max_val;
    /* a temperature so small that the largest logit / T overflows leaves all the probability on
     * the largest logit (the limit T -> 0): greedy, rather than exp(inf - inf) */
    if (!isfinite(max_val))
        return best;
    for (int i = 0; i < n; i++) {
        logits[i] = expf(logits[i] - max_val);
        sum += logits[i];
    }
    for (int i = 0; i < n; i++)
        logits[i] /= sum;
    const float coin = rng_uniform(rng);
    const int nucleus = sp->top_p > 0.0f && sp->top_p < 1.0f, top_k = sp->top_k > 0 && sp->top_k < n ? sp->top_k : 0;
    if (nucleus || top_k) {
        ProbIndex *c = mem_alloc((size_t)n * sizeof(ProbIndex), "sampling candidates"); /* (n) */
        if (!c)
            return -1;
        const int id = sample_candidates(logits, n, nucleus ? sp->top_p : 1.0f, top_k, coin, c);
        mem_free(c);
        return id;
    }
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += logits[i];
        if (coin < cdf)
            return i;
    }
    return n - 1;
}
