/*
 * commands.h: chapter 05's subcommands that live outside main.c, and the decode timing that the
 * lesson shares with `bench`.
 *
 *   generate.c   generate: token ids in, token ids out, through a paged cache
 *   harness.c    attn and verify: the chapter's versions as the common harness sees them
 *   bench.c      bench: decode GB/s by block size against chapter 04's contiguous cache
 *   lesson_prefix.c  the lesson's prefix-caching section (its pictures print the pool's state)
 */
#ifndef PAGED_COMMANDS_H
#define PAGED_COMMANDS_H

#define PAGED_PROG "05_paged"

int paged_cmd_generate(int argc, char **argv); /* generate: ids in, ids out, --n-samples forked */
int paged_cmd_attn(int argc, char **argv);     /* attn: .npy files through a shuffled block table */
int paged_cmd_verify(int argc, char **argv);   /* verify: every kernel against chapter 04 */
int paged_cmd_bench(int argc, char **argv);    /* bench: TSV rows, .dat and plot */

/* The lesson's section 5: requests sharing a system prompt's blocks, then the cache under pressure. */
void paged_lesson_prefix(void);

typedef struct {
    double contig_s, paged_s; /* median seconds of one decode call; NAN when not timed */
    double bytes;             /* K and V read by one call: 2 * B * Hkv * L * D * 4 */
} PagedDecodeTiming;

/* Decode of B sequences of L tokens (one query each, H heads, Hkv kv heads of D): chapter 04's
 * split kernel over a contiguous cache when contig, and the paged fast kernel with block size bs
 * when bs > 0; median of `repeats` cold-cache runs. Placement: in order (each sequence's blocks
 * consecutive, as after prefills into an empty pool) or shuffled (the free list shuffled and the
 * sequences growing side by side: every block anywhere, as in a pool after hours of churn). */
PagedDecodeTiming paged_time_decode(int B, int H, int Hkv, int L, int D, int bs, int repeats, int contig,
                                    int shuffled);

#endif
