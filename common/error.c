/* error.c: the recorded error message, the one-line fatal error, and the check that standard
 * output was really written (see error.h). */
#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local char last_message[512];
static const char *program_name = "program";
static int dying; /* set by die(): its exit status is already 1 and its one line is printed */

int error_set(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return -1;
}

const char *error_message(void) { return last_message; }

/* ==== escaping for messages ========================================================================= */

/* Appends the escape of byte c to out (which has room for 4 more bytes); returns the new length. */
static size_t escape_byte(char *out, size_t n, unsigned char c)
{
    static const char hex[] = "0123456789abcdef";
    const char *named = c == '\r' ? "\\r" : c == '\n' ? "\\n" : c == '\t' ? "\\t" : NULL;
    if (named) {
        memcpy(out + n, named, 2);
        return n + 2;
    }
    out[n++] = '\\', out[n++] = 'x', out[n++] = hex[c >> 4], out[n++] = hex[c & 15];
    return n;
}

static int is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

const char *error_quote(const char *s)
{
    static _Thread_local char slots[ERROR_QUOTE_SLOTS][1024];
    static _Thread_local unsigned next;
    char *out = slots[next++ % ERROR_QUOTE_SLOTS];
    const size_t cap = sizeof slots[0];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)(s ? s : "(null)"); *p; p++) {
        if (n + 4 + 4 > cap) { /* room for one more escape, "..." and the NUL */
            memcpy(out + n, "...", 4);
            return out;
        }
        if (*p == '\\')
            out[n++] = '\\', out[n++] = '\\';
        else if (is_control(*p))
            n = escape_byte(out, n, *p);
        else
            out[n++] = (char)*p;
    }
    out[n] = '\0';
    return out;
}

/* ==== standard output, checked at exit ============================================================== */

/* Run by exit(): flush and close stdout, and turn a lost write into exit status 1. A descriptor
 * that is closed (EBADF) is only an error when something was written to it (as in gnulib's
 * close_stdout); error_set_program made a closed stdout a read-only /dev/null, so a write to it
 * fails and sets the stream's error flag. */
static void check_stdout_at_exit(void)
{
    if (dying)
        return; /* die() flushed it and has printed the one line this run gets */
    int err = 0;
    if (fflush(stdout) != 0)
        err = errno ? errno : EIO;
    const int lost_before = ferror(stdout) != 0; /* an earlier flush failed; its errno is gone */
    errno = 0;
    if (fclose(stdout) != 0 && !err && (lost_before || errno != EBADF))
        err = errno ? errno : EIO;
    if (!err && !lost_before)
        return;
    char line[640];
    const int n = snprintf(line, sizeof line, "%s: error: writing standard output: %s\n", program_name,
                           err ? strerror(err) : "an earlier write failed, the output is incomplete");
    if (write(STDERR_FILENO, line, n > 0 && (size_t)n < sizeof line ? (size_t)n : sizeof line - 1) < 0) {
        /* nowhere left to say it: the exit status says it */
    }
    _exit(1); /* exit() may not be called again from an atexit handler */
}

/* Descriptors 0, 1 and 2 that are closed are opened on /dev/null the wrong way round (stdin for
 * writing, stdout and stderr for reading): the program's next open() would otherwise become its
 * "standard output" and printf would write into, say, the temporary file of an output. */
static void reserve_standard_descriptors(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        const int got = open("/dev/null", fd == 0 ? O_WRONLY : O_RDONLY);
        if (got >= 0 && got != fd) { /* a lower one was closed too and is now taken; move this one */
            dup2(got, fd);
            close(got);
        }
    }
}

void error_set_program(const char *name)
{
    static int installed;
    program_name = name;
    if (installed)
        return;
    installed = 1;
    reserve_standard_descriptors();
    atexit(check_stdout_at_exit);
}

const char *error_program(void) { return program_name; }

void stdout_flush_or_die(void)
{
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout))
        die("writing standard output: %s", errno ? strerror(errno) : "an earlier write failed, the output is incomplete");
}

void die(const char *fmt, ...)
{
    char line[640], shown[2600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fflush(stdout);
    dying = 1;
    /* the line stays one visible line whatever the message holds (a name with '\r' or '\n') */
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)line; *p; p++)
        if (is_control(*p))
            n = escape_byte(shown, n, *p);
        else
            shown[n++] = (char)*p;
    shown[n] = '\0';
    fprintf(stderr, "%s: error: %s\n", program_name, shown);
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

void *xmalloc(size_t bytes, const char *what)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        die("out of memory: %s needs %zu bytes", what, bytes);
    return p;
}

void *xcalloc(size_t n, size_t size, const char *what)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        die("out of memory: %s needs %zu x %zu bytes", what, n, size);
    return p;
}

void *xrealloc(void *p, size_t bytes, const char *what)
{
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q)
        die("out of memory: %s needs %zu bytes", what, bytes);
    return q;
}
