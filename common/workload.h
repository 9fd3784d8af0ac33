/*
 * workload.h: synthetic request streams, the one generator chapters 05 and 06 both use.
 *
 * A serving system's memory and throughput depend on the lengths of the requests it gets, so
 * every measurement of chapters 05 (how much KV memory is wasted) and 06 (how many tokens per
 * second) starts from a stream of requests: when each arrives, how long its prompt is, how many
 * tokens it asks for. Two shapes of stream:
 *
 *   skewed   lognormal lengths (sigma 1) around the medians, as in real chat traffic: the vLLM
 *            paper's ShareGPT trace has mean prompt 161 and mean output 338 tokens, which
 *            medians of 98 and 205 give
 *   uniform  prompt in 1..2*prompt_median and output in 1..2*out_median
 *
 * Arrivals form a Poisson process of `rate` requests per second (exponential gaps); rate <= 0
 * puts every request at time 0. Lengths are clipped so that prompt + output <= seq_len.
 */
#ifndef COMMON_WORKLOAD_H
#define COMMON_WORKLOAD_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { WORKLOAD_SKEWED = 0, WORKLOAD_UNIFORM = 1 } WorkloadKind;
#define WORKLOAD_CHOICES "skewed|uniform"

typedef struct {
    int n;                          /* requests */
    double rate;                    /* arrivals per second; <= 0: all at time 0 */
    WorkloadKind kind;
    int prompt_median, out_median;  /* tokens */
    int seq_len;                    /* the longest sequence (prompt + output) */
    int vocab;                      /* prompt ids uniform in 0..vocab-1; 0: lengths only */
    uint64_t seed;
} WorkloadSpec;

typedef struct {
    double arrival_s;
    int prompt_len, output_len;
    int *prompt; /* (prompt_len) token ids; NULL when the spec's vocab is 0 */
} WorkloadItem;

/* spec->n requests into *items (freed with workload_free). The random draws come in a fixed
 * order per request (gap, prompt length, output length, prompt ids), so a seed names a stream.
 * 0, or -1 with the error recorded (a non-positive size, or out of memory). */
int workload_make(const WorkloadSpec *spec, WorkloadItem **items);
void workload_free(WorkloadItem *items, int n);

#ifdef __cplusplus
}
#endif
#endif
