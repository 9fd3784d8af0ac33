/* error.c: the recorded error message and the one-line fatal error (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static _Thread_local char last_message[512];
static const char *program_name = "program";

int error_set(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return -1;
}

const char *error_message(void) { return last_message; }

void error_set_program(const char *name) { program_name = name; }

const char *error_program(void) { return program_name; }

void die(const char *fmt, ...)
{
    char line[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fflush(stdout);
    fprintf(stderr, "%s: error: %s\n", program_name, line);
    exit(1);
}

void die_with_error(void) { die("%s", last_message[0] ? last_message : "unknown error"); }

void exercise_todo(const char *what)
{
    static int said;
    if (!said)
        fprintf(stderr, "TODO: %s is an unfinished exercise (see 'make exercise-N')\n", what);
    said = 1;
}
