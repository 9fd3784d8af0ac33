/*
 * error.h: one way to fail, used everywhere.
 *
 * A function that can fail on user input (a file, a shape, an option) returns 0 on success and
 * -1 on failure, after recording one line that names the problem: error_set("...") does both.
 * The program prints that line with die_with_error() and exits with status 1. Internal errors
 * that no input can cause (out of memory for a small buffer) call die() directly.
 */
#ifndef COMMON_ERROR_H
#define COMMON_ERROR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Records a printf-style message for the calling thread and returns -1. */
int error_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The last message recorded by this thread ("" if none). */
const char *error_message(void);

/* The program name used as the prefix of every error line ("01_mha"). The first call (at the
 * start of every program's main) also makes a lost standard output an error: a standard output
 * that was closed is reopened as /dev/null for reading only, so every write to it fails, and at
 * exit stdout is flushed and closed with every error checked; when something written to it was
 * lost (a full disk, a file-size limit, a closed descriptor) the program prints
 * "<program>: error: writing standard output: <reason>" and exits with status 1. A program
 * piped into `head` still ends quietly by SIGPIPE, as every Unix program does. */
void error_set_program(const char *name);
const char *error_program(void);

/* Flushes stdout now, and on failure die()s with the reason. A program calls it where its results
 * are complete and before it reports them on stderr, so that "N served" is never printed for
 * results that were lost. */
void stdout_flush_or_die(void);

/* s made visible for a message: a control byte (carriage return, newline, tab, escape, any
 * other byte below 0x20, DEL) is written as a C escape (\r, \n, \t, \x1b) and a
 * backslash as \\, so a file name or a value with an invisible character shows it. No quotes
 * are added: write '%s' where the value should stand out. The result lives in one of
 * ERROR_QUOTE_SLOTS per-thread buffers used in turn (so that several can appear in one message),
 * and a very long string is cut, ending in "...". */
#define ERROR_QUOTE_SLOTS 4
const char *error_quote(const char *s);

/* Prints "<program>: error: <message>" on one line to stderr and exits with status 1. Any control
 * byte in the line is escaped as error_quote does, so the message stays one visible line. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* die() with the message recorded by the last failing call. */
void die_with_error(void) __attribute__((noreturn));

/* malloc, calloc and realloc for small bookkeeping (names, lists, text; never a tensor, which
 * goes through mem_alloc and the memory budget): the memory, or die("out of memory: <what>
 * needs N bytes"). 0 bytes gives a valid pointer. */
void *xmalloc(size_t bytes, const char *what);
void *xcalloc(size_t n, size_t size, const char *what);
void *xrealloc(void *p, size_t bytes, const char *what);

/* Workshop mode (scripts/exercise.sh): the stub of an unfinished exercise calls this; it says
 * once, on stderr, which part is still a TODO. */
void exercise_todo(const char *what);

#ifdef __cplusplus
}
#endif
#endif
