/* roofline.c: the FMA-peak and DRAM-bandwidth probe (see roofline.h). */
#include "roofline.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

#include "paths.h"
#include "tensor.h"
#include "vmath.h"
#include "rng.h"
#include "timer.h"

#ifdef _OPENMP
#include <omp.h>
#endif


static int omp_thread(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int n_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* The value of the first "key : value" line of /proc/cpuinfo whose key is `key`, printable
 * characters only (it goes into a TSV file); 0 if there is none. */
static int cpuinfo_value(const char *key, char *buf, size_t len)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return 0;
    char line[512];
    int found = 0;
    const size_t klen = strlen(key);
    while (!found && fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) != 0 || (line[klen] != ' ' && line[klen] != '\t' && line[klen] != ':'))
            continue;
        const char *v = strchr(line, ':');
        if (!v)
            continue;
        for (v++; *v == ' ' || *v == '\t'; v++)
            ;
        size_t n = 0;
        for (; *v && *v != '\n' && n + 1 < len; v++)
            if ((unsigned char)*v >= 0x20 && (unsigned char)*v < 0x7f)
                buf[n++] = *v;
        while (n > 0 && buf[n - 1] == ' ')
            n--;
        buf[n] = '\0';
        found = n > 0;
    }
    fclose(f);
    return found;
}

/* x86's /proc/cpuinfo names the model ("AMD EPYC"); aarch64's has no model name, only the
 * implementer and part numbers (0x41 0xd0c: Arm's Neoverse N1), so those identify the CPU there. */
static void cpu_model(char *buf, size_t len)
{
    char implementer[32], part[32];
    struct utsname u;
    const char *arch = uname(&u) == 0 ? u.machine : "unknown";
    if (cpuinfo_value("model name", buf, len))
        return;
    if (cpuinfo_value("CPU implementer", implementer, sizeof implementer) &&
        cpuinfo_value("CPU part", part, sizeof part))
        snprintf(buf, len, "%.20s CPU implementer %.10s part %.10s", arch, implementer, part);
    else
        snprintf(buf, len, "%.20s CPU", arch);
}

/*
 * The FMA peak is that of the widest vector FMA the build's target executes, because a peak
 * measured with narrower vectors would let a kernel look faster than the machine allows ("% of
 * peak" above 100). The build targets this machine (-march=native), so the compiler's macros
 * say what it has; GCC's vector extension then emits one FMA instruction per line below.
 *
 * Chains: an FMA's result is ready only after its latency (4 cycles on Zen 4, Skylake, Neoverse),
 * and each of the 2 to 4 FMA pipes starts one per cycle, so latency x pipes independent chains
 * keep every pipe busy. x86 has 16 (AVX2) or 32 (AVX-512) vector registers: 12 chains plus the
 * two constants fit either; aarch64 has 32 NEON registers and cores with 4 pipes, so 16.
 */
#define FMA_LANES VL /* vmath.h's vector: the width every kernel of this build computes with */
#if defined(__aarch64__)
#define FMA_CHAINS 16
#else
#define FMA_CHAINS 12
#endif
#if defined(__FMA__) || defined(__aarch64__)
#define FMA_WHAT VEC_WHAT " FMA"
#else /* no fused multiply-add targeted: whatever the compiler makes of a*b+c */
#define FMA_WHAT VEC_WHAT " multiply-add (no FMA targeted)"
#endif

typedef fvec fma_vec;

const char *roofline_fma_what(void) { return FMA_WHAT; }

static double probe_fma(void)
{
    const long iters = 8000000 / FMA_CHAINS * 12; /* ~1e8 FMA instructions a thread, ~30 ms */
    double best = 0.0;
    for (int attempt = 0; attempt < 3; attempt++) {
        double sink = 0.0;
        double t0 = timer_now();
#pragma omp parallel reduction(+ : sink)
        {
            const fma_vec zero = {0.0f};
            const fma_vec m = zero - 1e-7f;
            fma_vec x[FMA_CHAINS];
            for (int c = 0; c < FMA_CHAINS; c++)
                x[c] = zero + 0.1f * (float)(c + 1);
            for (long i = 0; i < iters; i++) {
                /* one FMA per chain (-ffp-contract=fast fuses x + x * m): the chain's own value
                 * is the addend, as NEON's fmla (which adds into its destination) wants, and
                 * is multiplied, so no product can be hoisted out of the loop. x shrinks by at
                 * most e^-1 over the loop: no subnormals. Fully unrolled, x stays in registers. */
#pragma GCC unroll 16
                for (int c = 0; c < FMA_CHAINS; c++)
                    x[c] += x[c] * m;
            }
            fma_vec s = zero;
            for (int c = 0; c < FMA_CHAINS; c++)
                s += x[c];
            for (int e = 0; e < FMA_LANES; e++)
                sink += s[e];
        }
        double dt = timer_now() - t0;
        double flops = 2.0 * FMA_LANES * FMA_CHAINS * (double)iters * n_threads();
        if (sink == 12345.678) /* keeps the chains alive */
            printf(" ");
        if (flops / dt > best)
            best = flops / dt;
    }
    return best / 1e9;
}

static double probe_dram(void)
{
    const size_t bytes = (size_t)256 << 20;
    const size_t n = bytes / sizeof(float);
    float *buf = mem_alloc(bytes, "roofline bandwidth buffer");
    if (!buf)
        return 0.0;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) /* first touch by the threads that will read it */
        buf[i] = (float)(i & 7);
    const size_t per = n / (size_t)n_threads() / 64 * 64; /* floats per thread */
    const double read = (double)(per * (size_t)n_threads() * sizeof(float));
    double best = 0.0;
    for (int pass = 0; pass < 5; pass++) {
        double sum = 0.0;
        double t0 = timer_now();
        /* each thread reads the two halves of its share side by side, two streams, as a decode
         * task reads K and V (one stream per thread measured about 10% less on the 2-core EPYC) */
#pragma omp parallel reduction(+ : sum)
        {
            const size_t half = per / 2;
            const float *x0 = buf + (size_t)omp_thread() * per, *x1 = x0 + half;
            fvec s = fvec_splat(0.0f);
            for (size_t i = 0; i < half; i += 32) /* two cache lines of each a step */
#pragma GCC unroll 8
                for (int u = 0; u < VEC_PER(32); u++)
                    s += fvec_load(x0 + i + u * VL) + fvec_load(x1 + i + u * VL);
            sum += s[0];
        }
        double dt = timer_now() - t0;
        if (sum == -1.0)
            printf(" ");
        if (read / dt > best)
            best = read / dt;
    }
    mem_free(buf);
    return best / 1e9;
}

double roofline_scattered_read_gbs(size_t chunk_bytes)
{
    const size_t bytes = (size_t)256 << 20;
    chunk_bytes = chunk_bytes < 128 ? 128 : chunk_bytes / 128 * 128; /* whole 32-float steps */
    const size_t n_chunks = bytes / chunk_bytes, per = chunk_bytes / sizeof(float);
    float *buf = mem_alloc(n_chunks * chunk_bytes, "scattered-read buffer");
    size_t *order = mem_alloc(n_chunks * sizeof(size_t), "chunk order");
    if (!buf || !order) {
        mem_free(buf), mem_free(order);
        return 0.0;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n_chunks * per; i++)
        buf[i] = (float)(i & 7);
    Rng rng;
    rng_seed(&rng, 5);
    for (size_t i = 0; i < n_chunks; i++)
        order[i] = i;
    for (size_t i = n_chunks - 1; i > 0; i--) { /* Fisher-Yates */
        const size_t j = (size_t)rng_below(&rng, (uint32_t)(i + 1)), t = order[i];
        order[i] = order[j], order[j] = t;
    }
    double best = 0.0;
    for (int pass = 0; pass < 5; pass++) {
        double sum = 0.0;
        double t0 = timer_now();
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t c = 0; c < n_chunks; c++) {
            const float *x = buf + order[c] * per;
            fvec acc = fvec_splat(0.0f);
            for (size_t i = 0; i < per; i += 32) {
#pragma GCC unroll 8
                for (int u = 0; u < VEC_PER(32); u++)
                    acc += fvec_load(x + i + u * VL);
            }
            sum += acc[0];
        }
        double dt = timer_now() - t0;
        if (sum == -1.0)
            printf(" ");
        if ((double)(n_chunks * chunk_bytes) / dt > best)
            best = (double)(n_chunks * chunk_bytes) / dt;
    }
    mem_free(buf), mem_free(order);
    return best / 1e9;
}

Roofline roofline_probe(void)
{
    Roofline r;
    memset(&r, 0, sizeof r);
    r.threads = n_threads();
    cpu_model(r.cpu, sizeof r.cpu);
    snprintf(r.fma_what, sizeof r.fma_what, "%s", FMA_WHAT);
    r.fma_gflops = probe_fma();
    r.dram_gbs = probe_dram();
    return r;
}

/* The cache's columns. A file with any other header (one written before fma_what was recorded,
 * whose peak may have been measured with narrower vectors) is not read: it is measured again. */
static const char CACHE_HEADER[] = "cpu\tthreads\tfma_gflops\tdram_gbs\tfma_what\n";

static int load_cache(const char *path, Roofline *r)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[512];
    int ok = 0;
    if (fgets(line, sizeof line, f) && strcmp(line, CACHE_HEADER) == 0 && fgets(line, sizeof line, f)) {
        char *cpu = strtok(line, "\t");
        char *threads = strtok(NULL, "\t");
        char *fma = strtok(NULL, "\t");
        char *dram = strtok(NULL, "\t");
        char *what = strtok(NULL, "\t\n");
        if (cpu && threads && fma && dram && what) {
            snprintf(r->cpu, sizeof r->cpu, "%s", cpu);
            snprintf(r->fma_what, sizeof r->fma_what, "%s", what);
            ok = sscanf(threads, "%d", &r->threads) == 1 && sscanf(fma, "%lf", &r->fma_gflops) == 1 &&
                 sscanf(dram, "%lf", &r->dram_gbs) == 1;
        }
    }
    fclose(f);
    return ok ? 0 : -1;
}

static Roofline g_roof; /* this process's roofline, once known */
static int g_have_roof;

/* Measures now, keeps the result for roofline_get and writes it to the cache file. */
static void measure_and_store(const char *path)
{
    fprintf(stderr, "measuring this machine's roofline (FMA peak, DRAM bandwidth) ...\n");
    g_roof = roofline_probe();
    g_have_roof = 1;
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%s%s\t%d\t%.2f\t%.2f\t%s\n", CACHE_HEADER, g_roof.cpu, g_roof.threads, g_roof.fma_gflops,
                g_roof.dram_gbs, g_roof.fma_what);
        fclose(f);
    }
    fprintf(stderr, "roofline: %.1f GFLOP/s fp32 FMA peak (%s), %.1f GB/s DRAM read (%s, %d threads) -> %s\n",
            g_roof.fma_gflops, g_roof.fma_what, g_roof.dram_gbs, g_roof.cpu, g_roof.threads, path);
}

static void cache_path(char *path, size_t len) { snprintf(path, len, "%s/roofline.tsv", paths_build_dir()); }

const Roofline *roofline_get(void)
{
    if (g_have_roof)
        return &g_roof;
    char path[PATH_MAX], cpu[128];
    cache_path(path, sizeof path);
    cpu_model(cpu, sizeof cpu);
    if (load_cache(path, &g_roof) == 0 && g_roof.threads == n_threads() && strcmp(g_roof.cpu, cpu) == 0 &&
        strcmp(g_roof.fma_what, FMA_WHAT) == 0 && g_roof.fma_gflops > 0 && g_roof.dram_gbs > 0) {
        g_have_roof = 1;
        return &g_roof;
    }
    measure_and_store(path);
    return &g_roof;
}

const Roofline *roofline_refresh(void)
{
    char path[PATH_MAX];
    cache_path(path, sizeof path);
    measure_and_store(path);
    return &g_roof;
}

const char *roofline_machine(void)
{
    static char buf[192];
    char cpu[128];
    cpu_model(cpu, sizeof cpu);
    snprintf(buf, sizeof buf, "%s (%d threads)", cpu, n_threads());
    return buf;
}
