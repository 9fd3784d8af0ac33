/*
 * workload.c: synthetic request streams (workload.h).
 */
#include "workload.h"

#include <math.h>
#include <stdlib.h>

#include "error.h"
#include "rng.h"
#include "tensor.h"

static int clamp_int(int x, int lo, int hi) { return x < lo ? lo : x > hi ? hi : x; }

int workload_make(const WorkloadSpec *w, WorkloadItem **items)
{
    *items = NULL;
    if (w->n < 1 || w->prompt_median < 1 || w->out_median < 1 || w->seq_len < 2 || w->vocab < 0)
        return error_set("workload: n, the medians and seq_len must be positive (n=%d, medians %d and %d, seq_len %d)",
                         w->n, w->prompt_median, w->out_median, w->seq_len);
    WorkloadItem *out = mem_alloc((size_t)w->n * sizeof(WorkloadItem), "workload");
    if (!out)
        return -1;
    Rng rng;
    rng_seed(&rng, w->seed);
    double t = 0.0;
    for (int i = 0; i < w->n; i++) {
        if (w->rate > 0) /* exponential gaps: a Poisson process of `rate` arrivals per second */
            t += -log(1.0 - (double)rng_uniform(&rng)) / w->rate;
        int prompt_len, output_len;
        if (w->kind == WORKLOAD_SKEWED) {
            prompt_len = (int)lrint(w->prompt_median * exp(rng_normal(&rng)));
            output_len = (int)lrint(w->out_median * exp(rng_normal(&rng)));
        } else {
            prompt_len = 1 + (int)rng_below(&rng, (uint32_t)(2 * w->prompt_median));
            output_len = 1 + (int)rng_below(&rng, (uint32_t)(2 * w->out_median));
        }
        prompt_len = clamp_int(prompt_len, 1, w->seq_len - 1);
        output_len = clamp_int(output_len, 1, w->seq_len - prompt_len);
        out[i] = (WorkloadItem){.arrival_s = t, .prompt_len = prompt_len, .output_len = output_len, .prompt = NULL};
        if (w->vocab == 0)
            continue;
        out[i].prompt = mem_alloc((size_t)prompt_len * sizeof(int), "workload prompt");
        if (!out[i].prompt) {
            workload_free(out, i);
            return -1;
        }
        for (int k = 0; k < prompt_len; k++)
            out[i].prompt[k] = (int)rng_below(&rng, (uint32_t)w->vocab);
    }
    *items = out;
    return 0;
}

void workload_free(WorkloadItem *items, int n)
{
    if (!items)
        return;
    for (int i = 0; i < n; i++)
        mem_free(items[i].prompt);
    mem_free(items);
}
