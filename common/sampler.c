/*
 * sampler.c: choosing the next token from the logits (model.h): greedy (the largest logit) or
 * sampled at a temperature T from softmax(logits / T), llama2.c's way: one uniform coin against
 * the running sum of the probabilities. Logits that overflowed are an error, not a token.
 */
#include "model.h"

#include <float.h>
#include <math.h>

#include "error.h"

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

int model_sample(float *logits, int n, float temperature, Rng *rng)
{
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
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += logits[i];
        if (coin < cdf)
            return i;
    }
    return n - 1;
}
