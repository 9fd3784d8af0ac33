/*
 * commands.h: chapter 01's subcommands that live outside main.c, and the table of its attention
 * versions that the common harness (attn, verify, bench, the lesson's timings) runs.
 */
#ifndef MHA_COMMANDS_H
#define MHA_COMMANDS_H

#include "01_mha/mha.h"
#include "common/attn_harness.h"

#define MHA_PROG "01_mha"

extern const AttnImpls MHA_IMPLS;

/* The harness's dimensions as chapter 01's shape (Hkv = H). */
static inline MhaShape mha_shape(const AttnDims *d)
{
    return (MhaShape){.B = d->B, .H = d->H, .T = d->T, .S = d->S, .D = d->D, .causal = d->causal, .scale = d->scale};
}

int mha_cmd_attn(int argc, char **argv);   /* attn: attention on .npy files */
int mha_cmd_verify(int argc, char **argv); /* verify: every version against the reference */
int mha_cmd_bench(int argc, char **argv);  /* bench: TSV rows, .dat and plot, T = 128 .. 8192 */

#endif
