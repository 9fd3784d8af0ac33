/* roofline.c: the FMA-peak and DRAM-bandwidth probe (see roofline.h). */
#include "roofline.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "paths.h"
#include "tensor.h"
#include "vmath.h"
#include "rng.h"
#include "timer.h"

#ifdef _OPENMP
#include <omp.h>
#endif


static int n_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static void cpu_model(char *buf, size_t len)
{
    snprintf(buf, len, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *colon = strchr(line, ':');
            if (colon) {
                colon++;
                while (*colon == ' ')
                    colon++;
                colon[strcspn(colon, "\n")] = '\0';
                snprintf(buf, len, "%s", colon);
            }
            break;
        }
    }
    fclose(f);
}

/* 12 independent chains per thread: enough to cover FMA latency (4-5 cycles) x 2 units. */
static double probe_fma(void)
{
    const long iters = 4000000;
    double best = 0.0;
    for (int attempt = 0; attempt < 3; attempt++) {
        double sink = 0.0;
        double t0 = timer_now();
#pragma omp parallel reduction(+ : sink)
        {
            const f32x8 m = {0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f};
            const f32x8 a = {1e-6f, 1e-6f, 1e-6f, 1e-6f, 1e-6f, 1e-6f, 1e-6f, 1e-6f};
            f32x8 x0 = m * 0.1f, x1 = m * 0.2f, x2 = m * 0.3f, x3 = m * 0.4f, x4 = m * 0.5f, x5 = m * 0.6f;
            f32x8 x6 = m * 0.7f, x7 = m * 0.8f, x8 = m * 0.9f, x9 = m * 1.1f, x10 = m * 1.2f, x11 = m * 1.3f;
            for (long i = 0; i < iters; i++) { /* each line one FMA: -ffp-contract=fast fuses them */
                x0 = x0 * m + a, x1 = x1 * m + a, x2 = x2 * m + a, x3 = x3 * m + a;
                x4 = x4 * m + a, x5 = x5 * m + a, x6 = x6 * m + a, x7 = x7 * m + a;
                x8 = x8 * m + a, x9 = x9 * m + a, x10 = x10 * m + a, x11 = x11 * m + a;
            }
            f32x8 s = ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) + ((x8 + x9) + (x10 + x11));
            for (int e = 0; e < 8; e++)
                sink += s[e];
        }
        double dt = timer_now() - t0;
        double flops = 2.0 * 8 * 12 * (double)iters * n_threads();
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
    double best = 0.0;
    for (int pass = 0; pass < 5; pass++) {
        double sum = 0.0;
        double t0 = timer_now();
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < n; i += 32) {
            f32x8 s0 = *(const f32x8 *)(buf + i), s1 = *(const f32x8 *)(buf + i + 8);
            f32x8 s2 = *(const f32x8 *)(buf + i + 16), s3 = *(const f32x8 *)(buf + i + 24);
            f32x8 s = (s0 + s1) + (s2 + s3);
            sum += s[0] + s[7];
        }
        double dt = timer_now() - t0;
        if (sum == -1.0)
            printf(" ");
        if (bytes / dt > best)
            best = bytes / dt;
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
            f32x8 acc = F32X8(0.0f);
            for (size_t i = 0; i < per; i += 32) {
                f32x8 s0 = *(const f32x8 *)(x + i), s1 = *(const f32x8 *)(x + i + 8);
                f32x8 s2 = *(const f32x8 *)(x + i + 16), s3 = *(const f32x8 *)(x + i + 24);
                acc += (s0 + s1) + (s2 + s3);
            }
            sum += acc[0] + acc[7];
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
    r.fma_gflops = probe_fma();
    r.dram_gbs = probe_dram();
    return r;
}

static int load_cache(const char *path, Roofline *r)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char line[512];
    int ok = 0;
    if (fgets(line, sizeof line, f) && fgets(line, sizeof line, f)) {
        char *cpu = strtok(line, "\t");
        char *threads = strtok(NULL, "\t");
        char *fma = strtok(NULL, "\t");
        char *dram = strtok(NULL, "\t\n");
        if (cpu && threads && fma && dram) {
            snprintf(r->cpu, sizeof r->cpu, "%s", cpu);
            ok = sscanf(threads, "%d", &r->threads) == 1 && sscanf(fma, "%lf", &r->fma_gflops) == 1 &&
                 sscanf(dram, "%lf", &r->dram_gbs) == 1;
        }
    }
    fclose(f);
    return ok ? 0 : -1;
}

const Roofline *roofline_get(void)
{
    static Roofline cached;
    static int have;
    if (have)
        return &cached;
    char path[PATH_MAX], cpu[128];
    snprintf(path, sizeof path, "%s/roofline.tsv", paths_build_dir());
    cpu_model(cpu, sizeof cpu);
    if (load_cache(path, &cached) == 0 && cached.threads == n_threads() && strcmp(cached.cpu, cpu) == 0 &&
        cached.fma_gflops > 0 && cached.dram_gbs > 0) {
        have = 1;
        return &cached;
    }
    fprintf(stderr, "measuring this machine's roofline once (FMA peak, DRAM bandwidth) ...\n");
    cached = roofline_probe();
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "cpu\tthreads\tfma_gflops\tdram_gbs\n%s\t%d\t%.2f\t%.2f\n", cached.cpu, cached.threads,
                cached.fma_gflops, cached.dram_gbs);
        fclose(f);
    }
    fprintf(stderr, "roofline: %.1f GFLOP/s fp32 FMA peak, %.1f GB/s DRAM read (%s, %d threads) -> %s\n",
            cached.fma_gflops, cached.dram_gbs, cached.cpu, cached.threads, path);
    have = 1;
    return &cached;
}

const char *roofline_machine(void)
{
    static char buf[192];
    char cpu[128];
    cpu_model(cpu, sizeof cpu);
    snprintf(buf, sizeof buf, "%s (%d threads)", cpu, n_threads());
    return buf;
}
