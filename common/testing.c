/* testing.c: see testing.h. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "testing.h"
#include "tokenizer.h"
#include "error.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "paths.h"
#include "rng.h"

static void slurp(FILE *f, char *buf, size_t len)
{
    rewind(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

int run_program(ProcResult *r, const char *const argv[])
{
    FILE *out = tmpfile(), *err = tmpfile();
    if (!out || !err)
        return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(fileno(out), STDOUT_FILENO);
        dup2(fileno(err), STDERR_FILENO);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) < 0)
        return -1;
    r->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    slurp(out, r->out, sizeof r->out);
    slurp(err, r->err, sizeof r->err);
    return 0;
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
