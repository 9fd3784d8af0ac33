/*
 * testing.c: running our programs from a test, their --help and verify, the one-error-line rule
 * for bad input, each test's temporary folder, a failing disk made to order, and CUDA inside Check's forked tests (see
 * testing.h; the float64 references are in testing_oracle.c).
 */
#define _XOPEN_SOURCE 700 /* nftw */
#define _DEFAULT_SOURCE   /* wait4 */
#include "testing.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device.h"
#include "error.h"
#include "paths.h"

/* ==== running programs ============================================================================= */

/* The whole of temporary file f into buf (NUL-terminated, truncated to fit), then closes f. */
static void slurp(FILE *f, char *buf, size_t len)
{
    rewind(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Under user-mode emulation (make test-arm64 sets TEST_RUNNER="qemu-aarch64 -L
 * /usr/aarch64-linux-gnu") the kernel cannot run the programs, which are for another
 * architecture, by itself: the emulator runs them. Its words are split at spaces (no quoting).
 * No malloc: this runs between fork and exec. */
void testing_exec(const char *const argv[])
{
    const char *runner = getenv("TEST_RUNNER");
    if (!runner || !*runner) {
        execv(argv[0], (char *const *)argv);
        return;
    }
    static char words[1024];
    const char *all[128];
    size_t n = 0;
    snprintf(words, sizeof words, "%s", runner);
    for (char *w = strtok(words, " "); w && n < 16; w = strtok(NULL, " "))
        all[n++] = w;
    for (size_t i = 0; argv[i]; i++) {
        if (n == sizeof all / sizeof all[0] - 1) {
            fprintf(stderr, "run_program: more than %zu arguments with TEST_RUNNER\n", n);
            return;
        }
        all[n++] = argv[i];
    }
    all[n] = NULL;
    execvp(all[0], (char *const *)all);
}

int run_program(ProcResult *r, const char *const argv[]) { return run_program_limited(r, argv, 0, NULL); }

int run_program_limited(ProcResult *r, const char *const argv[], unsigned seconds, const char *stdout_path)
{
    FILE *out = tmpfile(), *err = tmpfile();
    if (!out || !err) {
        if (out)
            fclose(out);
        if (err)
            fclose(err);
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fclose(out), fclose(err);
        return -1;
    }
    if (pid == 0) {
        int fd = stdout_path ? open(stdout_path, O_WRONLY) : fileno(out);
        if (fd < 0)
            _exit(126);
        dup2(fd, STDOUT_FILENO);
        dup2(fileno(err), STDERR_FILENO);
        alarm(seconds); /* survives exec: SIGALRM ends a program that runs past the limit */
        testing_exec(argv);
        _exit(127);
    }
    int status = 0;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) < 0) {
        fclose(out), fclose(err);
        return -1;
    }
    r->max_rss_kib = usage.ru_maxrss;
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    slurp(out, r->out, sizeof r->out);
    slurp(err, r->err, sizeof r->err);
    return 0;
}

int testing_small(void)
{
    const char *v = getenv("TEST_SMALL");
    return v && strcmp(v, "1") == 0;
}

const char *program_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/bin/%s", paths_build_dir(), name);
    return buf;
}

int count_lines(const char *s)
{
    int n = 0;
    for (const char *p = s; *p; p++)
        if (*p == '\n')
            n++;
    size_t len = strlen(s);
    if (len > 0 && s[len - 1] != '\n')
        n++;
    return n;
}

const char *last_line(const char *s, char *buf, size_t len)
{
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '\n')
        n--;
    size_t start = n;
    while (start > 0 && s[start - 1] != '\n')
        start--;
    size_t m = n - start < len - 1 ? n - start : len - 1;
    memcpy(buf, s + start, m);
    buf[m] = '\0';
    return buf;
}

int testing_run(ProcResult *r, const char *name, const char *const args[])
{
    char prog[4200];
    const char *argv[TESTING_MAX_ARGS + 2] = {program_path(prog, sizeof prog, name)};
    size_t n = 0;
    for (; args[n]; n++) {
        if (n == TESTING_MAX_ARGS)
            return -1;
        argv[n + 1] = args[n];
    }
    argv[n + 1] = NULL;
    return run_program(r, argv);
}

const char *testing_error_check(const char *name, const char *const args[], const char *fragment)
{
    static char why[8192]; /* stderr shown up to 4000 bytes */
    static ProcResult r;   /* 128 KiB: not on the stack */
    char prefix[256];
    snprintf(prefix, sizeof prefix, "%s: error: ", name);
    if (testing_run(&r, name, args) != 0)
        snprintf(why, sizeof why, "'%s': %s could not be started", fragment, name);
    else if (r.status != 1)
        snprintf(why, sizeof why, "'%s': exit status %d, stderr: %.4000s", fragment, r.status, r.err);
    else if (count_lines(r.err) != 1)
        snprintf(why, sizeof why, "'%s': expected one error line, got: %.4000s", fragment, r.err);
    else if (!strstr(r.err, fragment))
        snprintf(why, sizeof why, "expected '%s' in: %.4000s", fragment, r.err);
    else if (strncmp(r.err, prefix, strlen(prefix)) != 0)
        snprintf(why, sizeof why, "'%s': the line does not start with '%s': %.4000s", fragment, prefix, r.err);
    else
        return NULL;
    return why;
}

/* `<name> <sub> --help` (sub NULL: `<name> --help`): NULL when it exits 0 printing the usage. */
static const char *help_check(const char *name, const char *sub, char *why, size_t len)
{
    static ProcResult r; /* 128 KiB: not on the stack */
    char usage[128];
    snprintf(usage, sizeof usage, "usage: %s", name);
    const char *args[] = {sub ? sub : "--help", sub ? "--help" : NULL, NULL};
    if (testing_run(&r, name, args) != 0)
        snprintf(why, len, "%s could not be started", name);
    else if (r.status != 0 || !strstr(r.out, usage))
        snprintf(why, len, "%s %s --help: status %d, stdout: %.4000s", name, sub ? sub : "", r.status, r.out);
    else
        return NULL;
    return why;
}

/* `<name> verify <args...>`: NULL when it exits 0 and its last line is "P passed, 0 failed"
 * with P >= min_passed. */
static const char *verify_check(const char *name, const char *const args[], int min_passed, char *why, size_t len)
{
    static ProcResult r;
    const char *argv[TESTING_MAX_ARGS + 1] = {"verify"};
    for (size_t i = 0; args[i] && i < TESTING_MAX_ARGS - 1; i++)
        argv[i + 1] = args[i];
    char line[256];
    int passed = -1, failed = -1;
    if (testing_run(&r, name, argv) != 0)
        snprintf(why, len, "%s could not be started", name);
    else if (r.status != 0)
        snprintf(why, len, "%s verify failed (status %d): %.4000s", name, r.status, r.out);
    else if (sscanf(last_line(r.out, line, sizeof line), "%d passed, %d failed", &passed, &failed) != 2)
        snprintf(why, len, "%s verify: the last line is not 'N passed, N failed': %s", name, line);
    else if (passed < min_passed || failed != 0)
        snprintf(why, len, "%s verify: %d passed (at least %d expected), %d failed", name, passed, min_passed, failed);
    else
        return NULL;
    return why;
}

const char *testing_help_and_verify(const char *name, const char *const subs[], const char *const verify[],
                                    int min_passed)
{
    static char why[8192];
    const char *failed = subs ? help_check(name, NULL, why, sizeof why) : NULL;
    for (size_t i = 0; subs && !failed && subs[i]; i++)
        failed = help_check(name, subs[i], why, sizeof why);
    if (!failed && verify)
        failed = verify_check(name, verify, min_passed, why, sizeof why);
    return failed;
}

/* ==== folders and files ============================================================================ */

void temp_dir_create(char *buf, size_t len)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, len, "%s/attn-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(buf))
        die("cannot create a temporary folder under %s", base && *base ? base : "/tmp");
}

/* nftw's callback for temp_dir_remove: files first, then their folder (FTW_DEPTH). */
static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void temp_dir_remove(const char *path) { nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0)
        die("%s: cannot write test file", path);
}

char testing_tmp[4096];

void testing_tmp_setup(void) { temp_dir_create(testing_tmp, sizeof testing_tmp); }

void testing_tmp_teardown(void) { temp_dir_remove(testing_tmp); }

const char *testing_tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", testing_tmp, name);
    return buf;
}

/* ==== failing writes and what a folder holds ====================================================== */

int testing_write_limited(int (*writer)(const char *path, void *ctx), const char *path, void *ctx, size_t limit_bytes,
                          char *err, size_t err_len)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]), close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO); /* a die() in the writer: its line goes to err too */
        signal(SIGXFSZ, SIG_IGN); /* a write past the limit fails with EFBIG instead */
        struct rlimit rl = {.rlim_cur = (rlim_t)limit_bytes, .rlim_max = (rlim_t)limit_bytes};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(126);
        const int rc = writer(path, ctx);
        const char *msg = error_message();
        for (size_t done = 0, left = rc != 0 ? strlen(msg) : 0; done < left;) {
            const ssize_t w = write(fds[1], msg + done, left - done);
            if (w <= 0)
                _exit(125);
            done += (size_t)w;
        }
        _exit(rc == 0 ? 0 : 1); /* _exit: the parent's atexit handlers and stdio are not ours */
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t n;
    while (err_len > 0 && got < err_len - 1 && (n = read(fds[0], err + got, err_len - 1 - got)) > 0)
        got += (size_t)n;
    if (err_len > 0)
        err[got] = '\0';
    close(fds[0]);
    int status;
    if (waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* qsort's order for testing_folder_names. */
static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int testing_folder_names(const char *dir, char *buf, size_t len)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    char *names[256];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (!(names[n++] = strdup(de->d_name)))
            die("out of memory for the names in %s", dir);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_names);
    size_t used = 0;
    if (len > 0)
        buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (used < len)
            used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? " " : "", names[i]);
        free(names[i]);
    }
    return n;
}

/* ==== CUDA in Check suites ========================================================================= */

int testing_cuda_available(char *why, size_t len)
{
    int fd[2];
    if (pipe(fd) != 0) {
        snprintf(why, len, "cannot create a pipe for the GPU probe: %s", strerror(errno));
        return 0;
    }
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid < 0) {
        close(fd[0]), close(fd[1]);
        snprintf(why, len, "cannot fork the GPU probe: %s", strerror(errno));
        return 0;
    }
    if (pid == 0) { /* the probe: CUDA is initialised here, in a process that ends at once */
        close(fd[0]);
        char reason[256] = "";
        const int ok = device_cuda_available(reason, sizeof reason);
        if (write(fd[1], reason, strlen(reason)) < 0)
            _exit(2);
        _exit(ok ? 0 : 1);
    }
    close(fd[1]);
    char reason[256];
    size_t got = 0;
    for (;;) {
        const ssize_t n = read(fd[0], reason + got, sizeof reason - 1 - got);
        if (n > 0 && (got += (size_t)n) < sizeof reason - 1)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        break;
    }
    reason[got] = '\0';
    close(fd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            snprintf(why, len, "cannot wait for the GPU probe: %s", strerror(errno));
            return 0;
        }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 1)
        snprintf(why, len, "%s", reason);
    else if (WIFSIGNALED(status))
        snprintf(why, len, "the GPU probe (a child process asking CUDA) was killed by signal %d", WTERMSIG(status));
    else
        snprintf(why, len, "the GPU probe (a child process asking CUDA) exited with status %d", WEXITSTATUS(status));
    return 0;
}

int testing_cuda_cases(const char *suite)
{
    char why[256];
    if (testing_cuda_available(why, sizeof why))
        return 1;
    const char *require = getenv("REQUIRE_CUDA");
    if (require && strcmp(require, "1") == 0) {
        fflush(stdout);
        fprintf(stderr, "%s: error: REQUIRE_CUDA=1 but the CUDA tests cannot run: %s\n", suite, why);
        exit(1);
    }
    printf("%s: CUDA tests skipped: %s\n", suite, why);
    return 0;
}

static const char *guard_suite;
static pid_t guard_pid;
static int guard_armed, guard_registered;

/* The atexit handler of testing_suite_start: a suite's process that exits between start and end
 * says so and exits 1. */
static void guard_at_exit(void)
{
    if (!guard_armed || getpid() != guard_pid)
        return; /* a test's own process (Check's fork mode) ends here after every test */
    fflush(stdout);
    fprintf(stderr,
            "%s: error: the suite's process exited inside a test, before Check's summary (with CK_FORK=no the "
            "tests run in this process, and a CUDA error or a die() in one ends them all); the tests after it "
            "did not run\n",
            guard_suite);
    _exit(1);
}

void testing_suite_start(const char *suite)
{
    guard_suite = suite, guard_pid = getpid(), guard_armed = 1;
    if (!guard_registered && atexit(guard_at_exit) == 0)
        guard_registered = 1;
}

void testing_suite_end(void) { guard_armed = 0; }
