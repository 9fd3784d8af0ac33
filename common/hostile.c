/* hostile.c: the hostile-input suite's runner (see hostile.h). */
#include "hostile.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "model.h"
#include "npy.h"
#include "testing.h"

/* ==== what the folder holds: names, kinds and contents ========================================== */

#define MAX_ENTRIES 128

typedef struct {
    char name[256];
    int kind;      /* 'f' regular file, 'd' folder, 'p' FIFO, 'o' anything else */
    uint64_t hash; /* FNV-1a of a regular file's bytes */
    long long size;
} Entry;

typedef struct {
    Entry e[MAX_ENTRIES];
    int n;
} Snapshot;

static uint64_t file_hash(const char *path, long long *size)
{
    uint64_t h = 1469598103934665603ull;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    int c;
    while ((c = getc(f)) != EOF) {
        h = (h ^ (uint64_t)(unsigned char)c) * 1099511628211ull;
        (*size)++;
    }
    fclose(f);
    return h;
}

/* Every entry of dir and of its sub-folders one level down (out/ holds a file). */
static void snapshot_add(Snapshot *s, const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) && s->n < MAX_ENTRIES) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        if (lstat(path, &st) != 0)
            continue;
        Entry *e = &s->e[s->n++];
        snprintf(e->name, sizeof e->name, "%s%s", prefix, de->d_name);
        e->kind = S_ISREG(st.st_mode) ? 'f' : S_ISDIR(st.st_mode) ? 'd' : S_ISFIFO(st.st_mode) ? 'p' : 'o';
        e->hash = e->kind == 'f' ? file_hash(path, &e->size) : 0;
        if (e->kind == 'd' && prefix[0] == '\0') {
            char sub[300];
            snprintf(sub, sizeof sub, "%s/", e->name);
            snapshot_add(s, path, sub);
        }
    }
    closedir(d);
}

static const Entry *snapshot_find(const Snapshot *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->e[i].name, name) == 0)
            return &s->e[i];
    return NULL;
}

/* The first difference between two snapshots, described in buf; 0 when they are the same. */
static int snapshot_diff(const Snapshot *before, const Snapshot *after, char *buf, size_t len)
{
    for (int i = 0; i < before->n; i++) {
        const Entry *b = &before->e[i], *a = snapshot_find(after, b->name);
        if (!a)
            return snprintf(buf, len, "%s was removed", b->name), 1;
        if (a->kind != b->kind || a->hash != b->hash || a->size != b->size)
            return snprintf(buf, len, "%s changed (%lld bytes before, %lld after)", b->name, b->size, a->size), 1;
    }
    for (int i = 0; i < after->n; i++)
        if (!snapshot_find(before, after->e[i].name))
            return snprintf(buf, len, "%s was left behind", after->e[i].name), 1;
    return 0;
}

/* ==== the outputs a failing command must not touch =============================================== */

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void sentinels_create(const char *dir)
{
    static const char *names[] = {"out.npy", "out.txt", "out.tsv", "out.bin"};
    char path[8192];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        write_text(path, "a previous good output, which a failed command must leave as it is\n");
    }
    snprintf(path, sizeof path, "%s/out", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/out/keep.txt", dir);
    write_text(path, "a previous good output in a folder\n");
}

/* ==== the inputs ================================================================================= */

static void fixture_path(char *buf, size_t len, const char *dir, const char *name)
{
    snprintf(buf, len, "%s/%s", dir, name);
}

static void fixture_npy(const char *dir, const char *name, int ndim, const size_t *shape, float fill_value,
                        uint64_t seed)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    float *x = xmalloc(n * sizeof(float), "a fixture's data");
    if (fill_value != 0.0f)
        for (size_t i = 0; i < n; i++)
            x[i] = fill_value;
    else
        fill_normal(x, n, seed);
    char path[8192];
    fixture_path(path, sizeof path, dir, name);
    if (npy_write(path, NPY_F32, ndim, shape, x) != 0)
        fprintf(stderr, "hostile_fixtures: cannot write %s\n", path);
    free(x);
}

/* The first `keep` bytes of src as dst. */
static void fixture_cut(const char *dir, const char *src, const char *dst, long keep)
{
    char a[8192], b[8192];
    fixture_path(a, sizeof a, dir, src), fixture_path(b, sizeof b, dir, dst);
    FILE *in = fopen(a, "rb"), *out = fopen(b, "wb");
    for (long i = 0; in && out && i < keep; i++) {
        int c = getc(in);
        if (c == EOF)
            break;
        putc(c, out);
    }
    if (in)
        fclose(in);
    if (out)
        fclose(out);
}

int hostile_fixtures(const char *dir)
{
    char path[8192];
    const size_t qs[] = {1, 2, 5, 8}, ks[] = {1, 2, 6, 8}, k1s[] = {1, 1, 6, 8}, s2[] = {4, 8};
    fixture_npy(dir, "q.npy", 4, qs, 0.0f, 1);
    fixture_npy(dir, "k.npy", 4, ks, 0.0f, 2);
    fixture_npy(dir, "v.npy", 4, ks, 0.0f, 3);
    fixture_npy(dir, "k1.npy", 4, k1s, 0.0f, 4);
    fixture_npy(dir, "qbig.npy", 4, qs, 1e37f, 0);
    fixture_npy(dir, "kbig.npy", 4, ks, 1e37f, 0);
    fixture_npy(dir, "2d.npy", 2, s2, 0.0f, 5);
    {
        float k[96];
        fill_normal(k, 96, 2);
        k[17] = NAN;
        fixture_path(path, sizeof path, dir, "nan.npy");
        npy_write(path, NPY_F32, 4, ks, k);
    }
    fixture_cut(dir, "q.npy", "trunc.npy", 200);
    fixture_cut(dir, "q.npy", "empty.npy", 0);

    fixture_path(path, sizeof path, dir, "tok.bin");
    const int vocab = testing_write_tiny_tokenizer(path);
    ModelConfig c = {.dim = 16, .hidden_dim = 32, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1,
                     .vocab_size = vocab, .seq_len = 256, .shared_classifier = 1};
    Model m;
    if (model_init_random(&m, &c, 7) == 0) {
        fixture_path(path, sizeof path, dir, "model.bin");
        model_save(&m, path);
        model_free(&m);
    }
    fixture_cut(dir, "model.bin", "trunc.bin", 100);
    {
        /* dim 2^30, hidden 1, 1 layer, 2^29 heads, 1 kv head, vocab 2^31 - 10 (shared), seq_len 16:
         * 2^62 + 32 floats, so 28 + 4 (2^62 + 32) bytes wrap past 2^64 to exactly this file's 156
         * (fuzz/corpus/checkpoint/wrap-size.bin is the same file; fuzz/make_corpus.c) */
        const int32_t h[7] = {1 << 30, 1, 1, 1 << 29, 1, 2147483638, 16};
        fixture_path(path, sizeof path, dir, "wrap.bin");
        FILE *f = fopen(path, "wb");
        if (f) {
            fwrite(h, sizeof h, 1, f);
            for (int i = 0; i < 128; i++)
                putc(0, f);
            fclose(f);
        }
    }

    fixture_path(path, sizeof path, dir, "r.txt");
    write_text(path, "# arrival max_new prompt\n0 4 1 5 6\n0.01 3 1 7\n");
    fixture_path(path, sizeof path, dir, "r_nul.txt");
    static const char nul[] = "0 4 1 5 6\n0.01 3 1\0 7\n0.02 2 1 8\n";
    write_bytes(path, nul, sizeof nul - 1);
    fixture_path(path, sizeof path, dir, "r_bad.txt");
    write_text(path, "0 4 1 5 6\n0.01 3 1 7\n0.02 two 1 8\n");
    fixture_path(path, sizeof path, dir, "fifo");
    mkfifo(path, 0644);
    fixture_path(path, sizeof path, dir, "adir");
    mkdir(path, 0755);
    fixture_path(path, sizeof path, dir, "long.txt");
    FILE *f = fopen(path, "wb");
    for (int i = 0; f && i < 65536 / 16; i++)
        fputs("once upon a tim", f), putc(i % 7 ? ' ' : '\n', f);
    if (f)
        fclose(f);
    return vocab;
}

/* A fixture's bytes as a string ("<@/long.txt" in a case: the text itself is the argument). */
static char *fixture_contents(const char *dir, const char *name)
{
    char path[8192];
    snprintf(path, sizeof path, "%s%s", dir, name);
    FILE *f = fopen(path, "rb");
    size_t cap = 1 << 17, n = 0;
    char *text = xcalloc(cap, 1, "a fixture's text");
    if (f) {
        n = fread(text, 1, cap - 1, f);
        fclose(f);
    }
    text[n] = '\0';
    return text;
}

/* ==== the runner ================================================================================== */

static void describe(char *buf, size_t len, const char *const argv[])
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; argv[i] && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? " " : "", argv[i]);
}

/* The bad input files of each family (hostile.h), and what the error line must say of each. */
typedef struct {
    const char *file, *expect;
} BadFile;

static const BadFile BAD_FILES[] = {
    {"@/missing", "missing"}, {"@/fifo", "not a regular file"}, {"@/adir", "is a folder"}, {NULL, NULL}};
static const BadFile BAD_NPYS[] = {{"@/missing", "missing"},     {"@/fifo", "not a regular file"},
                                   {"@/adir", "is a folder"},    {"@/trunc.npy", "trunc.npy"},
                                   {"@/empty.npy", "empty.npy"}, {"@/2d.npy", "2d.npy"},
                                   {NULL, NULL}};
static const BadFile BAD_OUTS[] = {{"@/fifo", "FIFO"},
                                   {"@/out", "is a folder"},
                                   {"@/nodir/o.npy", "nodir"},
                                   {"/dev/full", "/dev/full"},
                                   {NULL, NULL}};

/* The family a word of a case names (NULL: none). */
static const BadFile *bad_family(const char *word)
{
    if (strcmp(word, HOSTILE_BAD_FILE) == 0)
        return BAD_FILES;
    if (strcmp(word, HOSTILE_BAD_NPY) == 0)
        return BAD_NPYS;
    return strcmp(word, HOSTILE_BAD_OUT) == 0 ? BAD_OUTS : NULL;
}

/* Case number `number` with the family's word replaced by `bad` (NULL: no family): 0 if the
 * program answered as hostile.h says, else 1 with the failure on stderr. */
static int run_case(const char *dir, const HostileCase *c, int number, const BadFile *bad)
{
    static ProcResult r;
    static char words[HOSTILE_MAX_ARGS][8192];
    char prog[4200], cmd[4096], why[8192], *contents[HOSTILE_MAX_ARGS] = {0};
    const char *argv[HOSTILE_MAX_ARGS + 1], *named[HOSTILE_MAX_ARGS + 1];
    int argc = 0;
    for (; c->argv[argc] && argc < HOSTILE_MAX_ARGS; argc++) {
        const char *a = c->argv[argc];
        if (bad && bad_family(a))
            a = bad->file;
        named[argc] = a;
        if (argc == 0)
            argv[0] = program_path(prog, sizeof prog, a);
        else if (a[0] == '@')
            snprintf(words[argc], sizeof words[argc], "%s%s", dir, a + 1), argv[argc] = words[argc];
        else if (a[0] == '<' && a[1] == '@')
            argv[argc] = contents[argc] = fixture_contents(dir, a + 2);
        else
            argv[argc] = a;
    }
    argv[argc] = named[argc] = NULL;
    describe(cmd, sizeof cmd, named);
    const char *expect = bad ? bad->expect : c->expect;

    sentinels_create(dir);
    static Snapshot before, after;
    before.n = after.n = 0;
    snapshot_add(&before, dir, "");
    why[0] = '\0';
    if (run_program_limited(&r, argv, HOSTILE_SECONDS, c->stdout_to) != 0)
        snprintf(why, sizeof why, "could not be started");
    else if (r.status == 128 + 14)
        snprintf(why, sizeof why, "ran past %d s and was killed", HOSTILE_SECONDS);
    else if (r.status != 1)
        snprintf(why, sizeof why, "exit status %d, expected 1", r.status);
    else if (count_lines(r.err) != 1)
        snprintf(why, sizeof why, "%d lines on stderr, expected one", count_lines(r.err));
    else if (!strstr(r.err, expect))
        snprintf(why, sizeof why, "the error does not say \"%s\"", expect);
    else {
        snapshot_add(&after, dir, "");
        char diff[1024];
        if (snapshot_diff(&before, &after, diff, sizeof diff))
            snprintf(why, sizeof why, "the folder changed: %s", diff);
    }
    if (why[0])
        fprintf(stderr, "hostile case %d: %s\n    %s\n    stderr: %.600s\n", number, cmd, why, r.err);
    for (int i = 0; i < HOSTILE_MAX_ARGS; i++)
        free(contents[i]);
    return why[0] != '\0';
}

int hostile_run(const char *dir, const HostileCase *cases, int n)
{
    int failed = 0, gpu = -1; /* not asked yet */
    for (int c = 0; c < n; c++) {
        char why[256];
        if (cases[c].without_gpu && gpu < 0)
            gpu = testing_cuda_available(why, sizeof why);
        if (cases[c].without_gpu && gpu)
            continue;
        const BadFile *family = NULL;
        for (int i = 0; i < HOSTILE_MAX_ARGS && cases[c].argv[i] && !family; i++)
            family = bad_family(cases[c].argv[i]);
        if (!family)
            failed += run_case(dir, &cases[c], c, NULL);
        for (const BadFile *bad = family; bad && bad->file; bad++)
            failed += run_case(dir, &cases[c], c, bad);
    }
    return failed;
}

const char *hostile_check(const char *dir, const HostileCase *cases, size_t n)
{
    static char why[128];
    hostile_fixtures(dir);
    const int failed = hostile_run(dir, cases, (int)n);
    if (failed == 0)
        return NULL;
    snprintf(why, sizeof why, "%d hostile cases failed (listed above)", failed);
    return why;
}
