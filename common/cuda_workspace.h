/*
 * cuda_workspace.h: device scratch buffers kept between calls -- grow-only, freed at exit.
 *
 * Some kernels need scratch memory on every call: chapter 04's split decode and chapter 05's
 * partitioned kernel keep partial outputs (once per layer per generated token), chapter 03's
 * tensor-core kernel its fp16 copies of Q, K and V. A cudaMalloc and cudaFree per call would
 * cost more than the kernel (cudaFree also waits for the whole device). A CudaWorkspace keeps
 * its buffer and allocates again only to grow; every workspace is freed at exit, so that
 * compute-sanitizer --leak-check finds nothing left behind.
 *
 *   static CudaWorkspace ws = CUDA_WORKSPACE("decode partial outputs");
 *   float *part = (float *)cuda_workspace(&ws, bytes); // NULL with an error recorded
 *
 * Reusing a buffer on the next call is safe because every launch of this repository goes to
 * the default stream: the next call's kernels start after the previous call's are done with it.
 */
#ifndef COMMON_CUDA_WORKSPACE_H
#define COMMON_CUDA_WORKSPACE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CudaWorkspace {
    const char *what;           /* names the buffer in an out-of-memory error */
    void *ptr;                  /* device memory, NULL until first used */
    size_t bytes;               /* its size */
    struct CudaWorkspace *next; /* every workspace in use, freed together at exit */
    int listed;
} CudaWorkspace;

#define CUDA_WORKSPACE(what) {(what), NULL, 0, NULL, 0}

/* At least `bytes` of device memory, the same buffer as the last call when it is big enough.
 * NULL (error recorded, naming w->what and the GPU's free memory) when it cannot grow. */
void *cuda_workspace(CudaWorkspace *w, size_t bytes);

/* Frees every workspace now (they grow again on their next use); also runs at exit. */
void cuda_workspace_free_all(void);

#ifdef __cplusplus
}
#endif
#endif
