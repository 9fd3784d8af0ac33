/*
 * commands.h: chapter 02's subcommands that live outside main.c, the table of its attention
 * versions that the common harness runs, and the decode measurement the lesson and bench share.
 * Chapter 03 uses the table too: its reference and the chapter 02 rows of its lesson and bench.
 */
#ifndef GQA_COMMANDS_H
#define GQA_COMMANDS_H

#include "02_mqa_gqa/gqa.h"
#include "common/attn_harness.h"

#define GQA_PROG "02_mqa_gqa"

extern const AttnImpls GQA_IMPLS;

/* The harness's dimensions as chapter 02's shape. */
static inline GqaShape gqa_shape(const AttnDims *d)
{
    return (GqaShape){.B = d->B, .H = d->H, .Hkv = d->Hkv, .T = d->T, .S = d->S, .D = d->D, .causal = d->causal,
                      .scale = d->scale};
}

/* GQA_IMPLS's CPU entry point (kernel 1 = the reference): chapter 03 checks its versions with it. */
int gqa_run_cpu(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out);

/* The key/value head counts the lesson and bench compare, H = 16: MHA, GQA-8, -4, -2, MQA. */
#define GQA_N_HKV 5
extern const int GQA_HKV[GQA_N_HKV];

/* The decode problem: one new query per sequence (T = 1) against a cache of S keys, causal. */
AttnDims gqa_decode_dims(int B, int H, int Hkv, int S, int D);
/* Bytes of K and V a version reads per decode call: 2*B*Hkv*S*D*4 for the grouped and GEMM
 * versions (each kv head once), 2*B*H*S*D*4 for the reference and the naive kernel
 * (reads_per_query_head = 1: once per query head). */
double gqa_decode_bytes_read(const AttnDims *d, int reads_per_query_head);
/* One decode point timed with cold caches (inputs drawn here); dies if the version fails. */
AttnTiming gqa_time_decode(Device dev, int kernel, const AttnDims *d, int repeats);

int gqa_cmd_attn(int argc, char **argv);   /* attn: attention on .npy files */
int gqa_cmd_verify(int argc, char **argv); /* verify: every version against the reference */
int gqa_cmd_bench(int argc, char **argv);  /* bench: decode and prefill sweeps over Hkv */

#endif
