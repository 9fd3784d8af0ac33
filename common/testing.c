/* testing.c: see testing.h. */
#define _XOPEN_SOURCE 700 /* nftw */
#define _DEFAULT_SOURCE   /* wait4 */
#include "testing.h"
#include "tokenizer.h"
#include "error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "device.h"
#include "npy.h"
#include "paths.h"
#include "rng.h"
#include "tensor.h"

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

void temp_dir_create(char *buf, size_t len)
{
    const char *base = getenv("TMPDIR");
    snprintf(buf, len, "%s/attn-test-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(buf))
        die("cannot create a temporary folder under %s", base && *base ? base : "/tmp");
}

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

void fill_normal(float *x, size_t n, uint64_t seed)
{
    Rng rng;
    rng_seed(&rng, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_normal(&rng);
}

void attention_f64(int B, int H, int Hkv, int T, int S, int D, int causal, double scale, const float *q,
                   const float *k, const float *v, double *out)
{
    double *w = malloc((size_t)(S > 0 ? S : 1) * sizeof(double));
    for (size_t b = 0; b < (size_t)B; b++)
        for (size_t h = 0; h < (size_t)H; h++) {
            const size_t bh = b * H + h, bkv = b * Hkv + h / (size_t)(H / Hkv);
            for (int t = 0; t < T; t++) {
                double m = -INFINITY, sum = 0.0;
                int any = 0;
                for (int j = 0; j < S; j++) {
                    w[j] = -INFINITY;
                    if (causal && j > t + (S - T))
                        continue;
                    double dot = 0.0;
                    for (int d = 0; d < D; d++)
                        dot += (double)q[(bh * T + t) * D + d] * (double)k[(bkv * S + j) * D + d];
                    w[j] = dot * scale;
                    m = fmax(m, w[j]);
                    any = 1;
                }
                for (int j = 0; j < S; j++) {
                    w[j] = any && w[j] != -INFINITY ? exp(w[j] - m) : 0.0;
                    sum += w[j];
                }
                for (int d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (int j = 0; j < S; j++)
                        acc += w[j] * (double)v[(bkv * S + j) * D + d];
                    out[(bh * T + t) * D + d] = any ? acc / sum : 0.0;
                }
            }
        }
    free(w);
}

/* ==== the model in float64 ========================================================================= */

/* o (n) = x / sqrt(mean(x^2) + 1e-5) * w, in float64 (run.c's rmsnorm) */
static void rmsnorm_f64(double *o, const double *x, const float *w, int n)
{
    double ss = 0.0;
    for (int j = 0; j < n; j++)
        ss += x[j] * x[j];
    const double inv = 1.0 / sqrt(ss / n + 1e-5);
    for (int j = 0; j < n; j++)
        o[j] = (double)w[j] * (inv * x[j]);
}

/* y (rows) = W x for W (rows, cols) row-major, the checkpoint's layout */
static void matvec_f64(double *y, const float *W, const double *x, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double acc = 0.0;
        for (int c = 0; c < cols; c++)
            acc += (double)W[(size_t)r * cols + c] * x[c];
        y[r] = acc;
    }
}

/* run.c's RoPE on one vector of n_heads heads of hs: element i of the vector (i even) pairs with
 * i + 1, and turns by pos * 10000^(-(i % hs) / hs) -- the index within its head */
static void rope_f64(double *x, int n_heads, int hs, int pos)
{
    for (int i = 0; i < n_heads * hs; i += 2) {
        const double angle = pos * pow(10000.0, -(double)(i % hs) / hs);
        const double c = cos(angle), s = sin(angle), x0 = x[i], x1 = x[i + 1];
        x[i] = x0 * c - x1 * s;
        x[i + 1] = x0 * s + x1 * c;
    }
}

void model_forward_f64(const Model *m, const int *tokens, int n, double *logits)
{
    const ModelConfig *c = &m->c;
    const ModelWeights *w = &m->w;
    const int dim = c->dim, H = c->n_heads, Hkv = c->n_kv_heads, hs = dim / H, hid = c->hidden_dim;
    const int qd = H * hs, kvd = Hkv * hs, L = c->n_layers, V = c->vocab_size, group = H / Hkv;
    double *x = malloc((size_t)dim * sizeof(double));       /* (dim) the residual stream */
    double *xb = malloc((size_t)dim * sizeof(double));      /* (dim) normalised input of a block */
    double *q = malloc((size_t)qd * sizeof(double));        /* (H*hs) */
    double *att = malloc((size_t)qd * sizeof(double));      /* (H*hs) attention output */
    double *proj = malloc((size_t)dim * sizeof(double));    /* (dim) a block's output */
    double *h1 = malloc((size_t)hid * sizeof(double));      /* (hidden) w1 xb */
    double *h3 = malloc((size_t)hid * sizeof(double));      /* (hidden) w3 xb */
    double *score = malloc((size_t)n * sizeof(double));     /* (n) one head's scores */
    double *kc = malloc((size_t)L * n * kvd * sizeof(double)); /* (L, n, Hkv*hs) keys after RoPE */
    double *vc = malloc((size_t)L * n * kvd * sizeof(double)); /* (L, n, Hkv*hs) values */
    if (!x || !xb || !q || !att || !proj || !h1 || !h3 || !score || !kc || !vc)
        die("out of memory for the float64 model");
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < dim; j++)
            x[j] = w->token_embedding[(size_t)tokens[t] * dim + j];
        for (int l = 0; l < L; l++) {
            double *k = kc + ((size_t)l * n + t) * kvd, *v = vc + ((size_t)l * n + t) * kvd;
            rmsnorm_f64(xb, x, w->rms_att + (size_t)l * dim, dim);
            matvec_f64(q, w->wq + (size_t)l * qd * dim, xb, qd, dim);
            matvec_f64(k, w->wk + (size_t)l * kvd * dim, xb, kvd, dim);
            matvec_f64(v, w->wv + (size_t)l * kvd * dim, xb, kvd, dim);
            rope_f64(q, H, hs, t);
            rope_f64(k, Hkv, hs, t);
            for (int h = 0; h < H; h++) { /* query head h reads kv head h / group; keys 0..t */
                const int g = h / group;
                double mx = -INFINITY, sum = 0.0;
                for (int s = 0; s <= t; s++) {
                    const double *ks = kc + ((size_t)l * n + s) * kvd + (size_t)g * hs;
                    double dot = 0.0;
                    for (int d = 0; d < hs; d++)
                        dot += q[h * hs + d] * ks[d];
                    score[s] = dot / sqrt((double)hs);
                    mx = fmax(mx, score[s]);
                }
                for (int s = 0; s <= t; s++)
                    sum += score[s] = exp(score[s] - mx);
                for (int d = 0; d < hs; d++) {
                    double acc = 0.0;
                    for (int s = 0; s <= t; s++)
                        acc += score[s] * vc[((size_t)l * n + s) * kvd + (size_t)g * hs + d];
                    att[h * hs + d] = acc / sum;
                }
            }
            matvec_f64(proj, w->wo + (size_t)l * dim * qd, att, dim, qd);
            for (int j = 0; j < dim; j++)
                x[j] += proj[j];
            rmsnorm_f64(xb, x, w->rms_ffn + (size_t)l * dim, dim);
            matvec_f64(h1, w->w1 + (size_t)l * hid * dim, xb, hid, dim);
            matvec_f64(h3, w->w3 + (size_t)l * hid * dim, xb, hid, dim);
            for (int j = 0; j < hid; j++) /* SwiGLU: silu(w1 x) * (w3 x) */
                h1[j] = h1[j] / (1.0 + exp(-h1[j])) * h3[j];
            matvec_f64(proj, w->w2 + (size_t)l * dim * hid, h1, dim, hid);
            for (int j = 0; j < dim; j++)
                x[j] += proj[j];
        }
        rmsnorm_f64(xb, x, w->rms_final, dim);
        /* the classifier: wcls, which is the token embedding when shared (model_load points it there) */
        matvec_f64(logits + (size_t)t * V, c->shared_classifier ? w->token_embedding : w->wcls, xb, V, dim);
    }
    free(x), free(xb), free(q), free(att), free(proj), free(h1), free(h3), free(score), free(kc), free(vc);
}

/* ==== a tiny tokenizer fixture ====================================================================== */

static const char *const TINY_MERGES[] = { /* in merge order: each is two earlier tokens */
    " t", "he", " the", "in", "ing", " a", "an", "nd", " and", "er", " w", "as", " was", "on",
    "ce", " O", " On", " Once", " u", "pon", " upon", "im", "ime", " time", "re", " there", " l", "it",
};
#define TINY_N_MERGES ((int)(sizeof TINY_MERGES / sizeof TINY_MERGES[0]))
#define TINY_VOCAB (3 + 256 + 95 + TINY_N_MERGES)

static char tiny_pieces[TINY_VOCAB][16];

static void tiny_build(void)
{
    if (tiny_pieces[0][0])
        return;
    snprintf(tiny_pieces[0], 16, "<unk>");
    snprintf(tiny_pieces[1], 16, "\n<s>\n");
    snprintf(tiny_pieces[2], 16, "\n</s>\n");
    for (int b = 0; b < 256; b++)
        snprintf(tiny_pieces[3 + b], 16, "<0x%02X>", b);
    for (int c = 32; c < 127; c++) /* ' ' .. '~' */
        tiny_pieces[259 + c - 32][0] = (char)c, tiny_pieces[259 + c - 32][1] = '\0';
    for (int i = 0; i < TINY_N_MERGES; i++)
        snprintf(tiny_pieces[354 + i], 16, "%s", TINY_MERGES[i]);
}

const char *testing_tiny_piece(int id)
{
    tiny_build();
    return id >= 0 && id < TINY_VOCAB ? tiny_pieces[id] : NULL;
}

int testing_tiny_id(const char *piece)
{
    tiny_build();
    for (int i = 0; i < TINY_VOCAB; i++)
        if (strcmp(tiny_pieces[i], piece) == 0)
            return i;
    return -1;
}

int testing_write_tiny_tokenizer(const char *path)
{
    tiny_build();
    char *pieces[TINY_VOCAB];
    float scores[TINY_VOCAB];
    for (int i = 0; i < TINY_VOCAB; i++) {
        pieces[i] = tiny_pieces[i];
        scores[i] = i < 354 ? 0.0f : -(float)(i - 354); /* earlier merges first: " t" before "he" */
    }
    if (tokenizer_save(path, TINY_VOCAB, pieces, scores) != 0)
        die_with_error();
    return TINY_VOCAB;
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

int testing_attn_command(const char *program, const char *dir, const char *device, int kernel, int B, int H, int Hkv,
                         int T, int S, int D, int causal, uint64_t seed, float *out, double *want, char *err,
                         size_t err_len)
{
    const size_t nq = (size_t)B * H * T * D, nk = (size_t)B * Hkv * S * D;
    float *q = malloc(nq * sizeof(float) + 1), *k = malloc(nk * sizeof(float) + 1), *v = malloc(nk * sizeof(float) + 1);
    if (!q || !k || !v)
        die("out of memory for attention inputs");
    fill_normal(q, nq, seed), fill_normal(k, nk, seed + 1), fill_normal(v, nk, seed + 2);
    char qp[4200], kp[4200], vp[4200], op[4200], kern[16];
    snprintf(qp, sizeof qp, "%s/q.npy", dir), snprintf(kp, sizeof kp, "%s/k.npy", dir);
    snprintf(vp, sizeof vp, "%s/v.npy", dir), snprintf(op, sizeof op, "%s/o.npy", dir);
    snprintf(kern, sizeof kern, "%d", kernel);
    if (npy_write(qp, NPY_F32, 4, (size_t[]){(size_t)B, (size_t)H, (size_t)T, (size_t)D}, q) != 0 ||
        npy_write(kp, NPY_F32, 4, (size_t[]){(size_t)B, (size_t)Hkv, (size_t)S, (size_t)D}, k) != 0 ||
        npy_write(vp, NPY_F32, 4, (size_t[]){(size_t)B, (size_t)Hkv, (size_t)S, (size_t)D}, v) != 0)
        die_with_error();
    remove(op);
    const char *argv[] = {program, "attn", "--q", qp, "--k", kp, "--v", vp, "--out", op, "--device", device,
                          "--kernel", kern, causal ? "--causal" : NULL, NULL};
    ProcResult *r = malloc(sizeof *r);
    if (!r || run_program(r, argv) != 0)
        die("cannot run %s", program);
    const int status = r->status;
    snprintf(err, err_len, "%s", r->err);
    free(r);
    attention_f64(B, H, Hkv, T, S, D, causal, 1.0 / sqrt((double)D), q, k, v, want);
    if (status == 0) {
        Tensor o;
        if (npy_read_tensor(op, 4, &o) != 0)
            die_with_error();
        if (o.numel != nq)
            die("%s attn wrote %zu elements, expected %zu", program, o.numel, nq);
        memcpy(out, o.data, nq * sizeof(float));
        tensor_free(&o);
    }
    free(q), free(k), free(v);
    return status;
}

static const char *guard_suite;
static pid_t guard_pid;
static int guard_armed, guard_registered;

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
        struct rlimit rl = {(rlim_t)limit_bytes, (rlim_t)limit_bytes};
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

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int testing_folder_names(const char *dir, char *buf, size_t len)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    char *names[256];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            names[n++] = strdup(de->d_name);
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
