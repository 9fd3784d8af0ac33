/*
 * commands.h: chapter 04's subcommands that live outside main.c (bench.c, generate_cmd.c), and
 * the table of its attention versions that the common harness (attn, verify, bench) runs.
 */
#ifndef KVCACHE_COMMANDS_H
#define KVCACHE_COMMANDS_H

#include "common/attn_harness.h"

#define KVCACHE_PROG "04_kvcache"

extern const AttnImpls KVCACHE_IMPLS;

int kvcache_cmd_verify(int argc, char **argv);   /* verify: decode and cache attention against chapter 03 */
int kvcache_cmd_bench(int argc, char **argv);    /* bench: decode GB/s, generation speed, TSV rows and a plot */
int kvcache_cmd_generate(int argc, char **argv); /* generate: token ids in, token ids out */
int kvcache_cmd_agree(int argc, char **argv);    /* _agree: CPU and GPU tokens, up to near-ties (gpu-check.sh) */

#endif
