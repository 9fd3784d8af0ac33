/*
 * roofline.h: this machine's two ceilings, measured, so every benchmark can say "% of peak".
 *
 *   fma_gflops: fp32 multiply-add throughput of all OpenMP threads, from independent chains of
 *               the widest vector FMA the build targets (2 FLOPs per lane per FMA): 16 lanes
 *               with AVX-512, 8 with AVX2, 4 with NEON on aarch64. fma_what names it.
 *   dram_gbs:   read bandwidth from a 256 MiB buffer (8x a typical L3), best of 5 passes, each
 *               thread reading two streams (the halves of its share), as a decode task reads
 *               K and V.
 *
 * A kernel whose FLOPs per byte read is below fma_gflops / dram_gbs is bound by memory.
 * The probe takes about a second; its result is cached in <build>/roofline.tsv together with
 * the CPU model, thread count and FMA width, and measured again when any of them changes (a
 * cache written before the width was recorded is measured again too).
 */
#ifndef COMMON_ROOFLINE_H
#define COMMON_ROOFLINE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double fma_gflops;
    double dram_gbs;
    int threads;
    char cpu[128];
    char fma_what[48]; /* the FMA the peak was measured with: "16-lane AVX-512 FMA" */
} Roofline;

/* The cached result, measuring first if needed. Prints one line to stderr when it measures. */
const Roofline *roofline_get(void);

/* Measures now and replaces the cache: a benchmark calls it once before its rows, so that its
 * ratios are against the machine as it is now (a cloud VM's bandwidth varies with its
 * neighbours: a cache measured on a busy day would put later rows above 100%). */
const Roofline *roofline_refresh(void);

/* Measures now (no cache). */
Roofline roofline_probe(void);

/* Read bandwidth, GB/s, of the same kind of 256 MiB buffer read in chunks of chunk_bytes taken
 * in a shuffled order (best of 5 passes, all threads): what a kernel that reads scattered
 * blocks -- a paged KV cache -- can hope for. Small chunks defeat the hardware prefetcher,
 * which follows one stream within a page. Measured at each call (about a second). */
double roofline_scattered_read_gbs(size_t chunk_bytes);

/* "AMD EPYC 7B13 (2 threads)": the machine as benchmarks name it. On aarch64, whose
 * /proc/cpuinfo has no model name, "aarch64 CPU implementer 0x41 part 0xd0c" or "aarch64". */
const char *roofline_machine(void);

/* The FMA this build's probe uses ("16-lane AVX-512 FMA", "8-lane AVX2 FMA", "4-lane NEON FMA": vmath.h's VL). */
const char *roofline_fma_what(void);

#ifdef __cplusplus
}
#endif
#endif
