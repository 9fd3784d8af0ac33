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

#ifdef __cplusplus
extern "C" {
#endif

/* Records a printf-style message for the calling thread and returns -1. */
int error_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The last message recorded by this thread ("" if none). */
const char *error_message(void);

/* The program name used as the prefix of every error line ("01_mha"). */
void error_set_program(const char *name);
const char *error_program(void);

/* Prints "<program>: error: <message>" on one line to stderr and exits with status 1. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* die() with the message recorded by the last failing call. */
void die_with_error(void) __attribute__((noreturn));

/* Workshop mode (scripts/exercise.sh): the stub of an unfinished exercise calls this; it says
 * once, on stderr, which part is still a TODO. */
void exercise_todo(const char *what);

#ifdef __cplusplus
}
#endif
#endif
