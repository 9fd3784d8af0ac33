/*
 * test_tp_ranks.c: the case "tensor parallel ranks" of chapter 04's suite (test_tp.c says what
 * it checks): 04_kvcache_tp under `mpirun -np N`, against the single-process model of this suite.
 * Built into the suite when Open MPI was there at build time (HAVE_MPI); the ranks share the
 * machine's cores (--oversubscribe, one OpenMP thread each).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "04_kvcache/kvcache.h"
#include "04_kvcache/test_kvcache.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"

#if HAVE_MPI

#define TP_LOGITS_RTOL 1e-4 /* as test_tp.c */

/* mpirun's path from PATH into buf; dies (fails the test) without one. */
static const char *mpirun_path(char *buf, size_t len)
{
    const char *path = getenv("PATH");
    char dirs[8192];
    snprintf(dirs, sizeof dirs, "%s", path ? path : "/usr/bin");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(buf, len, "%s/mpirun", d);
        if (access(buf, X_OK) == 0)
            return buf;
    }
    ck_abort_msg("mpirun is not on PATH: install Open MPI (openmpi-bin), as make test does");
    return NULL;
}

/* `mpirun -np N 04_kvcache_tp <args>` into r (args NULL-terminated, at most 16). */
static void run_ranks(ProcResult *r, int N, const char *const *args)
{
    char mpirun[4200], prog[4200], np[16];
    snprintf(np, sizeof np, "%d", N);
    if (geteuid() == 0) /* Open MPI refuses root without these (CI's containers run as root) */
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1), setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    const char *argv[32] = {mpirun_path(mpirun, sizeof mpirun), "--oversubscribe", "--bind-to", "none", "-np", np,
                            "-x", "OMP_NUM_THREADS=1", program_path(prog, sizeof prog, "04_kvcache_tp")};
    int n = 9;
    for (int i = 0; args[i] && n < 31; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    ck_assert_int_eq(run_program_limited(r, argv, 240, NULL), 0);
}

/* ==== the same tokens and logits as one process ========================================================= */

/* The single-process model's greedy tokens (max_new) and every step's logits (max_new, vocab). */
static void single_process(const Model *m, const int *prompt, int n_prompt, int max_new, int *tokens, float *logits)
{
    const GenOptions o = {.max_new = max_new, .use_cache = 1, .dtype = KV_F32, .kernel = 0};
    ck_assert_int_eq(kvcache_generate(m, prompt, n_prompt, &o, tokens, NULL), 0);
    KvCache c;
    ck_assert_int_eq(kvcache_create(&c, m->c.n_layers, 1, m->c.n_kv_heads, n_prompt + max_new, model_head_size(&m->c),
                                    KV_F32), 0);
    const size_t V = (size_t)m->c.vocab_size;
    ck_assert_int_eq(kvcache_forward(m, &c, 0, prompt, n_prompt, 0, logits), 0);
    for (int i = 1; i < max_new; i++)
        ck_assert_int_eq(kvcache_forward(m, &c, 0, tokens + i - 1, 1, 0, logits + (size_t)i * V), 0);
    kvcache_free(&c);
}

/* The ranks' run of one config: tokens equal, logits within TP_LOGITS_RTOL (N = 1: identical). */
static void expect_same_generation(const ModelConfig *cfg, const char *label)
{
    enum { N_PROMPT = 5, MAX_NEW = 24 };
    Model m;
    ck_assert_int_eq(model_init_random(&m, cfg, 1234), 0);
    char ckpt[4200], npy[4200];
    ck_assert_int_eq(model_save(&m, testing_tmp_path(ckpt, sizeof ckpt, "tp.bin")), 0);
    const int prompt[N_PROMPT] = {1, 17, 42, 5, 99};
    int want[MAX_NEW];
    const size_t V = (size_t)cfg->vocab_size;
    float *want_logits = xmalloc(MAX_NEW * V * sizeof(float), "single-process logits");
    single_process(&m, prompt, N_PROMPT, MAX_NEW, want, want_logits);
    for (int N = 1; N <= 4; N *= 2) {
        const char *args[] = {"generate", "--checkpoint", ckpt, "--prompt", "1 17 42 5 99", "--max-new", "24",
                              "--logits", testing_tmp_path(npy, sizeof npy, "logits.npy"), NULL};
        ProcResult r;
        run_ranks(&r, N, args);
        ck_assert_msg(r.status == 0, "%s, %d ranks: status %d: %s", label, N, r.status, r.err);
        int *got = NULL, n_got = 0;
        r.out[strcspn(r.out, "\n")] = '\0'; /* the one line of ids */
        ck_assert_msg(token_ids_parse(r.out, &got, &n_got) == 0, "%s: %s", error_message(), r.out);
        ck_assert_int_eq(n_got, MAX_NEW);
        double gap = 0;
        const int at = kvcache_greedy_divergence(&m, prompt, N_PROMPT, want, got, MAX_NEW, &gap);
        ck_assert_msg(at == -1 || (N > 1 && gap <= KVCACHE_NEAR_TIE), "%s, %d ranks: tokens part at %d (gap %.2e): %s",
                      label, N, at, gap, r.out);
        NpyArray a;
        ck_assert_int_eq(npy_read(npy, &a), 0);
        ck_assert(a.ndim == 2 && a.shape[0] == MAX_NEW && a.shape[1] == V);
        const float *lg = a.data;
        double worst = 0;
        for (int s = 0; s < (at < 0 ? MAX_NEW : at + 1); s++) { /* up to the first difference: the same inputs */
            double top = 1, err = 0;
            for (size_t v = 0; v < V; v++) {
                top = fmax(top, fabs(want_logits[s * V + v]));
                err = fmax(err, fabs((double)lg[s * V + v] - want_logits[s * V + v]));
            }
            worst = fmax(worst, err / top);
        }
        ck_assert_msg(N == 1 ? worst == 0 : worst <= TP_LOGITS_RTOL, "%s, %d ranks: logits %.2e apart (relative)",
                      label, N, worst);
        printf("  tensor parallel, %s, %d rank%s: %d tokens %s, logits within %.1e of one process's\n", label, N,
               N > 1 ? "s" : "", MAX_NEW, at < 0 ? "identical" : "identical up to a near-tie", worst);
        npy_free(&a), free(got);
    }
    free(want_logits);
    model_free(&m);
}

START_TEST(test_ranks_generate_the_single_process_tokens)
{
    /* GQA 4:1, an unshared classifier, a vocabulary of 301 (the ranks' slices uneven); 4 ranks
     * replicate the 2 kv heads */
    const ModelConfig a = {.dim = 128, .hidden_dim = 200, .n_layers = 2, .n_heads = 8, .n_kv_heads = 2,
                           .vocab_size = 301, .seq_len = 64, .shared_classifier = 0};
    expect_same_generation(&a, "GQA 4:1, unshared");
    /* GQA 2:1 and a shared classifier (the embedding split by vocabulary with it) */
    const ModelConfig b = {.dim = 128, .hidden_dim = 256, .n_layers = 3, .n_heads = 8, .n_kv_heads = 4,
                           .vocab_size = 256, .seq_len = 64, .shared_classifier = 1};
    expect_same_generation(&b, "GQA 2:1, shared");
}
END_TEST

/* ==== memory: each rank holds about 1/N ================================================================= */

/* Each rank's growth of resident memory from before loading to after generating, from --memory's
 * rows (rank, ranks, weights, cache, rss before, after loading, after generating), into grow. */
static void read_growth(const char *path, int N, double *grow, double *weights)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    for (int r = 0; r < N; r++) {
        int rank, world;
        double w, c, rss0, rss1, rss2;
        ck_assert_int_eq(fscanf(f, "%d %d %lf %lf %lf %lf %lf", &rank, &world, &w, &c, &rss0, &rss1, &rss2), 7);
        ck_assert(rank == r && world == N);
        grow[r] = rss2 - rss0, weights[r] = w;
    }
    fclose(f);
}

START_TEST(test_each_rank_holds_its_share)
{
    /* 97 MB of weights and, after a 1000-token prompt, 32 MB of cache: far above the noise */
    const ModelConfig c = {.dim = 512, .hidden_dim = 1376, .n_layers = 8, .n_heads = 8, .n_kv_heads = 4,
                           .vocab_size = 1024, .seq_len = 1100, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 5), 0);
    char ckpt[4200], mem[4200], prompt[8000];
    ck_assert_int_eq(model_save(&m, testing_tmp_path(ckpt, sizeof ckpt, "big.bin")), 0);
    model_free(&m);
    size_t at = 0;
    for (int i = 0; i < 1000; i++)
        at += (size_t)snprintf(prompt + at, sizeof prompt - at, i ? " %d" : "%d", (i * 37 + 11) % 1024);
    const double whole = (double)model_checkpoint_bytes(&c) +
                         (double)kvcache_bytes_per_token(c.n_layers, c.n_kv_heads, 64, KV_F32) * 1004;
    double one = 0;
    for (int N = 1; N <= 4; N *= 2) {
        const char *args[] = {"generate", "--checkpoint", ckpt, "--prompt", prompt, "--max-new", "4",
                              "--memory", testing_tmp_path(mem, sizeof mem, "memory.tsv"), NULL};
        ProcResult r;
        run_ranks(&r, N, args);
        ck_assert_msg(r.status == 0, "%d ranks: status %d: %s", N, r.status, r.err);
        double grow[4], w[4];
        read_growth(mem, N, grow, w);
        one = N == 1 ? grow[0] : one;
        for (int k = 0; k < N; k++) {
            printf("  tensor parallel memory: rank %d of %d grew by %.1f MiB (1 rank: %.1f MiB; 1/%d of it: %.1f)\n", k,
                   N, grow[k] / 1048576.0, one / 1048576.0, N, one / N / 1048576.0);
            /* it really holds its share of the weights and the cache ... */
            ck_assert_msg(grow[k] >= 0.85 * whole / N, "rank %d of %d grew by %.1f MiB, less than its share %.1f MiB",
                          k, N, grow[k] / 1048576.0, whole / N / 1048576.0);
#if !defined(__SANITIZE_ADDRESS__)
            /* ... and not much more (AddressSanitizer keeps freed memory in quarantine: not checked there) */
            ck_assert_msg(grow[k] <= 1.15 * one / N + 8.0 * 1048576.0,
                          "rank %d of %d grew by %.1f MiB, more than 1/%d of one process's %.1f MiB", k, N,
                          grow[k] / 1048576.0, N, one / 1048576.0);
#endif
        }
    }
}
END_TEST

/* ==== bad numbers of ranks ============================================================================== */

/* `mpirun -np N ... generate --checkpoint ckpt` fails with one line of ours naming fragment. */
static void expect_refused(int N, const char *ckpt, const char *fragment)
{
    const char *args[] = {"generate", "--checkpoint", ckpt, "--max-new", "2", NULL};
    ProcResult r;
    run_ranks(&r, N, args);
    int ours = 0;
    for (const char *p = r.err; (p = strstr(p, "04_kvcache_tp: error:")); p++)
        ours++;
    ck_assert_msg(r.status != 0 && ours == 1 && strstr(r.err, fragment) && !strstr(r.err, "MPI_ABORT") &&
                      !strstr(r.err, "signal"),
                  "%d ranks: status %d, %d error lines of ours: %s", N, r.status, ours, r.err);
    ck_assert_msg(r.out[0] == '\0', "%d ranks printed tokens: %s", N, r.out);
}

START_TEST(test_bad_ranks_are_one_error_and_every_rank_exits)
{
    const ModelConfig c = {.dim = 64, .hidden_dim = 96, .n_layers = 1, .n_heads = 4, .n_kv_heads = 4,
                           .vocab_size = 64, .seq_len = 32, .shared_classifier = 0};
    Model m;
    ck_assert_int_eq(model_init_random(&m, &c, 3), 0);
    char ckpt[4200], missing[4200];
    ck_assert_int_eq(model_save(&m, testing_tmp_path(ckpt, sizeof ckpt, "mha.bin")), 0);
    model_free(&m);
    expect_refused(3, ckpt, "3 ranks do not divide the model's 4 kv heads");
    expect_refused(8, ckpt, "8 ranks but the model has 4 query heads");
    expect_refused(2, testing_tmp_path(missing, sizeof missing, "missing.bin"), "missing.bin");
}
END_TEST

TestingCase kvcache_tp_ranks_case(void)
{
    return (TestingCase){.name = "tensor parallel ranks", .timeout_s = 600, .temp_dir = 1,
                         .tests = {test_ranks_generate_the_single_process_tokens, test_each_rank_holds_its_share,
                                   test_bad_ranks_are_one_error_and_every_rank_exits}};
}

#else /* no Open MPI at build time: the case says so and checks nothing */

TestingCase kvcache_tp_ranks_case(void) { return (TestingCase){.name = "tensor parallel ranks"}; }

#endif
