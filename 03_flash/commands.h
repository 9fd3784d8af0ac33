/*
 * commands.h: chapter 03's subcommands that live outside main.c, the table of its attention
 * versions that the common harness runs, and the measurements the lesson takes from bench.c.
 */
#ifndef FLASH_COMMANDS_H
#define FLASH_COMMANDS_H

#include "02_mqa_gqa/commands.h" /* GQA_IMPLS: chapter 02, the reference and the baseline */
#include "03_flash/flash.h"
#include "common/attn_harness.h"

#define FLASH_PROG "03_flash"

extern const AttnImpls FLASH_IMPLS;

/* The lesson's and bench's shape: B = 1, H = Hkv = 8, T = S, D = 64, causal. */
static inline AttnDims flash_lesson_dims(int T)
{
    return (AttnDims){.B = 1, .H = 8, .Hkv = 8, .T = T, .S = T, .D = 64, .causal = 1, .scale = 0.125f};
}

#define FLASH_CH02_MAX_T 8192 /* chapter 02 on that shape: 2 GiB of scores; 16384 would need 8 GiB */

/* The growth of the resident set during one call of chapter `chapter`'s (2 or 3) CPU kernel
 * `kernel` on flash_lesson_dims(T), measured in a fresh process (`03_flash _peak-rss`, because
 * a process's peak RSS only ever grows); -1 if it could not be measured. */
double flash_peak_rss(int chapter, int kernel, int T);

int flash_cmd_attn(int argc, char **argv);     /* attn: attention on .npy files */
int flash_cmd_verify(int argc, char **argv);   /* verify: every version against chapter 02's reference */
int flash_cmd_bench(int argc, char **argv);    /* bench: chapter 02 and 03 side by side, and a summary */
int flash_cmd_peak_rss(int argc, char **argv); /* _peak-rss CHAPTER KERNEL T: the child of flash_peak_rss */

#endif
