/*
 * fileio.h: files a hostile user can hand us -- opened without blocking, written without loss.
 *
 * What it teaches: fopen() is not enough for a program that must never hang or lie.
 *
 *   Inputs.  A FIFO opened for reading blocks in open() until a writer comes (forever, if none
 *            does); a folder opens fine and fails later with a confusing read error; a device
 *            can be endless. file_open_input looks at what the path is before reading a byte
 *            and refuses everything but a regular file with one line saying what it is.
 *   Outputs. fopen(path, "w") truncates the user's previous file at once, so a write that fails
 *            later (a full disk, a file-size limit, an error of the program itself) leaves a
 *            truncated file where a good one was. An OutFile writes into a temporary file in
 *            the same folder (".<name>.tmp-XXXXXX") and rename()s it over the target only when
 *            every byte is written and the file is closed without error; rename() within a
 *            folder is atomic, so readers see the old file or the new one, never half of one.
 *            On failure the temporary file is removed and the target is untouched; on exit, on
 *            die() and on SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGXFSZ and SIGALRM the temporary
 *            files still open are removed too. The data is not fsync()ed: the promise covers
 *            failing writes and dying programs, not a power cut.
 *            Some outputs cannot be renamed over and are written in place, every write checked:
 *            a character device (/dev/null, /dev/full, a terminal), a FIFO or pipe that a
 *            process is reading (opened without blocking: one that nobody reads is an error,
 *            not a hang), and the file that is already our standard output or error
 *            (--metrics /dev/stderr). A folder, a socket and a block device are refused.
 *   Several files (init-weights, convert): each file is atomic on its own, not the set.
 *
 * Messages name the path (escaped with error_quote) and what is wrong: "x: is a folder, expected
 * a file", "x: is a FIFO, not a regular file", "x: cannot create: ...", "x: write failed: No
 * space left on device".
 */
#ifndef COMMON_FILEIO_H
#define COMMON_FILEIO_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Opens a regular file for reading ("rb"). NULL with an error recorded for anything else (a
 * missing file, a folder, a FIFO, a device, a socket), before any byte is read and without
 * blocking. */
FILE *file_open_input(const char *path);
/* file_open_input, and the file's size in bytes into *size. */
FILE *file_open_input_size(const char *path, size_t *size);

/* Whether path can be an output, without creating or changing anything: not a folder, socket or
 * block device, and (for a new or regular file) in a folder that exists and that we may write
 * into. 0, or -1 with the error recorded. Programs call it for every output before the work
 * whose result it will hold, so that a bad output path fails in a moment, not after the work. */
int file_check_output(const char *path);

/* An output being written; see the header comment. */
typedef struct {
    FILE *f;      /* write here (out_write, out_printf, or stdio on f) */
    char *path;   /* the output as given, for messages; NULL for standard output */
    char *target; /* what the temporary file is renamed to: path, or the file a symlink names */
    char *tmp;    /* the temporary file; NULL when written in place */
    int err;      /* the first write error seen (an errno value), 0 if none */
} OutFile;

/* Opens an output: path NULL is standard output (written in place, not closed). 0, or -1 with
 * the error recorded (the checks of file_check_output, or the temporary file cannot be made). */
int out_open(OutFile *o, const char *path);

/* fwrite / vfprintf that remember the first error (its errno) for out_commit's message and skip
 * the work once a write has failed. 0 or -1 (nothing recorded: out_commit reports it). */
int out_write(OutFile *o, const void *data, size_t n);
int out_printf(OutFile *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Finishes an output: flush, check the error flag, close, and rename the temporary file over the
 * target. 0, or -1 with "<path>: write failed: <reason>" recorded, the temporary file removed and
 * the target as it was. Either way the OutFile is closed. */
int out_commit(OutFile *o);

/* Gives an output up: closes it and removes its temporary file (the target is untouched). For
 * error paths; a no-op on an OutFile already committed or aborted. */
void out_abort(OutFile *o);

#ifdef __cplusplus
}
#endif
#endif
