/*
 * hostile.h: the hostile-input suite's runner, shared by every chapter's Check suite.
 *
 * A hostile user gives a program broken files, special files, absurd numbers and contradictory
 * options. Whatever they give, the program must answer like this -- and hostile_run checks all
 * of it for every case in a chapter's table:
 *
 *   - exit status 1 (not a signal, not 0, not a crash of the sanitizers),
 *   - exactly one line on stderr, containing the case's `expect` text (which names the file,
 *     line or option at fault),
 *   - within HOSTILE_SECONDS (a hang is killed and reported),
 *   - every output file that existed before is unchanged, and nothing new is left in the folder
 *     (no truncated output, no stray temporary file).
 *
 * The cases run in a folder the caller prepared with its fixtures; hostile_run adds the
 * pre-existing outputs out.npy, out.txt, out.tsv, out.bin and the folder out/ (holding a file)
 * before each case. In a case's arguments "@" at the start of a word stands for the folder
 * ("@/q.npy"), and argv[0] is a program's name (01_mha .. 06_batching).
 *
 * A case may name a whole family of bad input files by one word in its arguments; it then runs
 * once for each file of the family in that place, and the error line must say what the family
 * says of each file (the case's own `expect` is not used):
 *   HOSTILE_BAD_FILE  @/missing (no such file: "missing"), @/fifo ("not a regular file"),
 *                     @/adir ("is a folder")
 *   HOSTILE_BAD_NPY   the three above, then @/trunc.npy (cut short), @/empty.npy (0 bytes) and
 *                     @/2d.npy (2 dimensions), each error naming its file
 *   HOSTILE_BAD_OUT   outputs that cannot be written: @/fifo ("FIFO"), @/out (a folder: "is a
 *                     folder"), @/nodir/o.npy (no such folder: "nodir"), /dev/full ("/dev/full")
 */
#ifndef COMMON_HOSTILE_H
#define COMMON_HOSTILE_H

#include <stddef.h>

#define HOSTILE_SECONDS 5
#define HOSTILE_MAX_ARGS 24
#define HOSTILE_BAD_FILE "@bad-file"
#define HOSTILE_BAD_NPY "@bad-npy"
#define HOSTILE_BAD_OUT "@bad-out"

typedef struct {
    const char *argv[HOSTILE_MAX_ARGS]; /* NULL-terminated */
    const char *expect;                 /* a substring of the one line on stderr (NULL with a family) */
    const char *stdout_to;              /* NULL, or where stdout goes (/dev/full: a failing write) */
    int without_gpu;                    /* 1: run only when no GPU answers (asking for one must fail) */
} HostileCase;

/* The inputs the cases name, written into dir:
 *   q.npy (1, 2, 5, 8), k.npy, v.npy (1, 2, 6, 8), k1.npy (1, 1, 6, 8): a good attn problem
 *   qbig.npy, kbig.npy: the same shapes, every element 1e37 (finite, but q·k overflows float32)
 *   nan.npy: k.npy with one NaN; trunc.npy: q.npy cut short; empty.npy: 0 bytes; 2d.npy (4, 8)
 *   model.bin: a tiny llama2.c checkpoint (dim 16, 2 heads, 1 kv head, seq_len 256), its
 *     tokenizer tok.bin, trunc.bin (model.bin cut short), wrap.bin (a header whose sizes wrap)
 *   r.txt: a good requests file; r_nul.txt: a NUL byte on line 2; r_bad.txt: line 3 malformed
 *   fifo: a FIFO (opening it blocks); adir/: a folder; long.txt: 64 KiB of text
 * Returns the checkpoint's vocabulary size. */
int hostile_fixtures(const char *dir);

/* Runs every case, prints each failure (case number, command, what went wrong) on stderr and
 * returns the number of cases that failed. */
int hostile_run(const char *dir, const HostileCase *cases, int n);

/* A chapter's hostile-input test: hostile_fixtures(dir), then hostile_run on cases[0..n). NULL
 * when every case passed, else "N hostile cases failed (listed above)" (static text). */
const char *hostile_check(const char *dir, const HostileCase *cases, size_t n);

#endif
