/* fileio.c: inputs that cannot block, outputs that cannot be half-written (see fileio.h). */
#define _DEFAULT_SOURCE /* realpath, fchmod */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

/* What a path is, for messages: "a folder", "a FIFO", ... */
static const char *kind_of(mode_t m)
{
    return S_ISDIR(m)    ? "a folder"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISSOCK(m) ? "a socket"
                         : "not a regular file";
}

/* Refusal of a non-regular input, in words. */
static FILE *refuse_input(const char *path, mode_t m)
{
    if (S_ISDIR(m))
        error_set("%s: is a folder, expected a file", error_quote(path));
    else
        error_set("%s: is %s, not a regular file", error_quote(path), kind_of(m));
    return NULL;
}

/* ==== inputs ======================================================================================= */

FILE *file_open_input(const char *path)
{
    size_t size;
    return file_open_input_size(path, &size);
}

FILE *file_open_input_size(const char *path, size_t *size)
{
    struct stat st;
    /* look before opening: opening a FIFO blocks, and opening some devices does things */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return refuse_input(path, st.st_mode);
    /* O_NONBLOCK in case the path became a FIFO since stat(); fstat() tells what was opened */
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        error_set("%s: cannot open: %s", error_quote(path), strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0) {
        error_set("%s: cannot open: %s", error_quote(path), strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return refuse_input(path, st.st_mode);
    }
    *size = (size_t)st.st_size;
    const int flags = fcntl(fd, F_GETFL);
    FILE *f = flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0 ? NULL : fdopen(fd, "rb");
    if (!f) {
        error_set("%s: cannot open: %s", error_quote(path), strerror(errno));
        close(fd);
    }
    return f;
}

/* ==== temporary files removed on exit and on fatal signals ========================================== */

#define MAX_ACTIVE 16
static char *volatile active[MAX_ACTIVE]; /* the temporary files of the OutFiles still open */

static void remove_active(void)
{
    for (int i = 0; i < MAX_ACTIVE; i++)
        if (active[i])
            unlink(active[i]); /* async-signal-safe */
}

static void remove_active_and_raise(int sig)
{
    remove_active();
    signal(sig, SIG_DFL);
    raise(sig); /* die of the signal as we would have: the status the caller expects */
}

static void track(char *tmp)
{
    static int installed;
    if (!installed) {
        installed = 1;
        atexit(remove_active); /* die() and every exit() */
        const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGXFSZ, SIGALRM};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
            struct sigaction old, sa;
            /* a signal the caller ignores (nohup, a Python parent's SIGPIPE) stays ignored */
            if (sigaction(sigs[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL)
                continue;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = remove_active_and_raise;
            sigemptyset(&sa.sa_mask);
            sigaction(sigs[i], &sa, NULL);
        }
    }
    for (int i = 0; i < MAX_ACTIVE; i++)
        if (!active[i]) {
            active[i] = tmp;
            return;
        }
    /* more than MAX_ACTIVE at once: this one is still removed by out_commit/out_abort */
}

static void untrack(const char *tmp)
{
    for (int i = 0; i < MAX_ACTIVE; i++)
        if (active[i] == tmp)
            active[i] = NULL;
}

/* ==== outputs ====================================================================================== */

/* 1 when st is the file that descriptor fd already writes (our stdout or stderr). */
static int same_file_as_fd(const struct stat *st, int fd)
{
    struct stat f;
    return fstat(fd, &f) == 0 && f.st_dev == st->st_dev && f.st_ino == st->st_ino;
}

/* The folder part of path ("." when none), into buf. */
static void folder_of(const char *path, char *buf, size_t len)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(buf, len, ".");
    else if (slash == path)
        snprintf(buf, len, "/");
    else
        snprintf(buf, len, "%.*s", (int)(slash - path), path);
}

/* The checks shared by file_check_output and out_open. *in_place is set to 1 for an output that
 * is written where it is (a character device, a FIFO, our stdout or stderr). */
static int check_output(const char *path, struct stat *st, int *exists, int *in_place)
{
    *exists = stat(path, st) == 0, *in_place = 0;
    const size_t len = strlen(path);
    if (len == 0)
        return error_set("an output path is empty");
    if (*exists) {
        if (S_ISDIR(st->st_mode))
            return error_set("%s: is a folder, expected a file", error_quote(path));
        if (S_ISSOCK(st->st_mode) || S_ISBLK(st->st_mode))
            return error_set("%s: is %s, expected a file", error_quote(path), kind_of(st->st_mode));
        if (S_ISCHR(st->st_mode) || S_ISFIFO(st->st_mode) || same_file_as_fd(st, STDOUT_FILENO) ||
            same_file_as_fd(st, STDERR_FILENO)) {
            *in_place = 1;
            return 0;
        }
    } else if (errno != ENOENT) {
        return error_set("%s: cannot create: %s", error_quote(path), strerror(errno));
    }
    if (path[len - 1] == '/')
        return error_set("%s: cannot create: %s", error_quote(path), strerror(EISDIR));
    char dir[PATH_MAX];
    folder_of(path, dir, sizeof dir);
    struct stat ds;
    if (stat(dir, &ds) != 0)
        return error_set("%s: cannot create: %s", error_quote(path), strerror(errno));
    if (!S_ISDIR(ds.st_mode))
        return error_set("%s: cannot create: %s", error_quote(path), strerror(ENOTDIR));
    if (access(dir, W_OK | X_OK) != 0) /* the new file is made in the folder, then renamed there */
        return error_set("%s: cannot create: %s", error_quote(path), strerror(errno));
    return 0;
}

int file_check_output(const char *path)
{
    struct stat st;
    int exists, in_place;
    return check_output(path, &st, &exists, &in_place);
}

static int open_in_place(OutFile *o, const struct stat *st)
{
    if (same_file_as_fd(st, STDOUT_FILENO) || same_file_as_fd(st, STDERR_FILENO)) {
        /* share the descriptor's offset, as "cmd --metrics /dev/stderr 2>>log" expects */
        fflush(stdout);
        const int fd = dup(same_file_as_fd(st, STDOUT_FILENO) ? STDOUT_FILENO : STDERR_FILENO);
        if (fd < 0 || !(o->f = fdopen(fd, "wb"))) {
            if (fd >= 0)
                close(fd);
            return error_set("%s: cannot open: %s", error_quote(o->path), strerror(errno));
        }
        return 0;
    }
    /* O_NONBLOCK: a FIFO nobody reads fails with ENXIO at once instead of blocking in open() */
    const int fd = open(o->path, O_WRONLY | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENXIO && S_ISFIFO(st->st_mode))
            return error_set("%s: is a FIFO that no process is reading", error_quote(o->path));
        return error_set("%s: cannot open: %s", error_quote(o->path), strerror(errno));
    }
    const int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0 || !(o->f = fdopen(fd, "wb"))) {
        close(fd);
        return error_set("%s: cannot open: %s", error_quote(o->path), strerror(errno));
    }
    return 0;
}

/* The temporary file ".<name>.tmp-XXXXXX" beside the target, with the mode the target has (or the
 * 0666 & ~umask that fopen would give a new file; mkstemp makes 0600). */
static int open_temporary(OutFile *o, const struct stat *st, int exists)
{
    const char *base = strrchr(o->target, '/');
    char dir[PATH_MAX];
    folder_of(o->target, dir, sizeof dir);
    base = base ? base + 1 : o->target;
    const size_t n = strlen(dir) + strlen(base) + 32;
    o->tmp = malloc(n);
    if (!o->tmp)
        return error_set("%s: out of memory", error_quote(o->path));
    /* at most 200 bytes of the name: ".<name>.tmp-XXXXXX" must fit in a file name (255) */
    snprintf(o->tmp, n, "%s/.%.200s.tmp-XXXXXX", dir, base);
    const int fd = mkstemp(o->tmp);
    if (fd < 0) {
        const int e = errno;
        free(o->tmp), o->tmp = NULL;
        return error_set("%s: cannot create: %s", error_quote(o->path), strerror(e));
    }
    track(o->tmp);
    mode_t mode;
    if (exists) {
        mode = st->st_mode & 07777;
    } else {
        const mode_t mask = umask(0);
        umask(mask);
        mode = 0666 & ~mask;
    }
    if (fchmod(fd, mode) != 0 || !(o->f = fdopen(fd, "wb"))) {
        const int e = errno;
        close(fd);
        unlink(o->tmp), untrack(o->tmp), free(o->tmp), o->tmp = NULL;
        return error_set("%s: cannot create: %s", error_quote(o->path), strerror(e));
    }
    return 0;
}

static void out_clear(OutFile *o)
{
    free(o->path), free(o->target), free(o->tmp);
    memset(o, 0, sizeof *o);
}

int out_open(OutFile *o, const char *path)
{
    memset(o, 0, sizeof *o);
    if (!path) {
        o->f = stdout;
        return 0;
    }
    struct stat st;
    int exists, in_place;
    if (check_output(path, &st, &exists, &in_place) != 0)
        return -1;
    o->path = strdup(path);
    if (!o->path)
        return error_set("%s: out of memory", error_quote(path));
    if (in_place) {
        if (open_in_place(o, &st) != 0) {
            out_clear(o);
            return -1;
        }
        return 0;
    }
    /* a symbolic link stays a link: the file it names is the one replaced */
    struct stat ls;
    char *resolved = exists && lstat(path, &ls) == 0 && S_ISLNK(ls.st_mode) ? realpath(path, NULL) : NULL;
    o->target = resolved ? resolved : strdup(path);
    if (!o->target || open_temporary(o, &st, exists) != 0) {
        if (!o->target)
            error_set("%s: out of memory", error_quote(path));
        out_clear(o);
        return -1;
    }
    return 0;
}

int out_write(OutFile *o, const void *data, size_t n)
{
    if (o->err)
        return -1;
    if (n > 0 && fwrite(data, 1, n, o->f) != n) {
        o->err = errno ? errno : EIO;
        return -1;
    }
    return 0;
}

int out_printf(OutFile *o, const char *fmt, ...)
{
    if (o->err)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    errno = 0;
    const int n = vfprintf(o->f, fmt, ap);
    va_end(ap);
    if (n < 0) {
        o->err = errno ? errno : EIO;
        return -1;
    }
    return 0;
}

int out_commit(OutFile *o)
{
    if (!o->f)
        return error_set("internal error: out_commit on an output that is not open");
    const char *name = o->path ? error_quote(o->path) : "standard output";
    errno = 0;
    int err = o->err;
    if (fflush(o->f) != 0 && !err)
        err = errno ? errno : EIO;
    if (ferror(o->f) && !err)
        err = EIO; /* a failure the caller wrote past without out_write/out_printf */
    if (!o->path) { /* standard output stays open; the check at exit closes it */
        o->f = NULL;
        return err ? error_set("writing standard output: %s", strerror(err)) : 0;
    }
    errno = 0;
    if (fclose(o->f) != 0 && !err)
        err = errno ? errno : EIO; /* NFS and some file systems report write errors only here */
    o->f = NULL;
    if (!err && o->tmp && rename(o->tmp, o->target) != 0) {
        const int e = errno;
        unlink(o->tmp), untrack(o->tmp);
        error_set("%s: cannot replace it with the new output: %s", name, strerror(e));
        out_clear(o);
        return -1;
    }
    if (o->tmp) {
        if (err)
            unlink(o->tmp);
        untrack(o->tmp);
    }
    if (err)
        error_set("%s: write failed: %s", name, strerror(err));
    out_clear(o);
    return err ? -1 : 0;
}

void out_abort(OutFile *o)
{
    if (o->f && o->path)
        fclose(o->f);
    if (o->tmp) {
        unlink(o->tmp);
        untrack(o->tmp);
    }
    if (o->path || o->f)
        out_clear(o);
}
