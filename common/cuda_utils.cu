/*
 * cuda_utils.cu: device detection, checked allocation and copies, and the cuBLAS handle.
 * Compiled by nvcc whenever it exists; at run time everything here is reached only after
 * cuda_device_count() said a GPU is present.
 */
#include "cuda_utils.h"

#include <stdio.h>
#include <stdlib.h>

#include "error.h"

extern "C" void cuda_fail(const char *what, const char *msg, const char *file, int line)
{
    fflush(stdout);
    fprintf(stderr, "%s: error: CUDA: %s failed at %s:%d: %s\n", error_program(), what, file, line, msg);
    exit(1);
}

extern "C" int cuda_device_count(char *why, size_t len)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky error so later queries start clean */
        snprintf(why, len, "%s", err == cudaErrorInsufficientDriver ? "no CUDA driver on this machine"
                                 : err == cudaErrorNoDevice         ? "no GPU on this machine"
                                                                    : cudaGetErrorString(err));
        return 0;
    }
    if (n == 0)
        snprintf(why, len, "no GPU on this machine");
    return n;
}

extern "C" const char *cuda_device_name(void)
{
    static char name[256];
    cudaDeviceProp prop;
    if (name[0] == '\0') {
        CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
        snprintf(name, sizeof name, "%s", prop.name);
    }
    return name;
}

extern "C" size_t cuda_shared_mem_per_block(void)
{
    int bytes = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    return (size_t)bytes;
}

extern "C" void *cuda_alloc(size_t bytes)
{
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

extern "C" void *cuda_try_alloc(size_t bytes, const char *what)
{
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        error_set("%s needs %.2f GiB of GPU memory but only %.2f GiB of %.2f GiB are free (%s)", what,
                  (double)bytes / (1 << 30), (double)free_b / (1 << 30), (double)total_b / (1 << 30),
                  cudaGetErrorString(err));
        return NULL;
    }
    return p;
}

extern "C" void cuda_free(void *d_ptr)
{
    if (d_ptr)
        CUDA_CHECK(cudaFree(d_ptr));
}

extern "C" void cuda_upload(void *d_dst, const void *h_src, size_t bytes)
{
    CUDA_CHECK(cudaMemcpy(d_dst, h_src, bytes, cudaMemcpyHostToDevice));
}

extern "C" void cuda_download(void *h_dst, const void *d_src, size_t bytes)
{
    CUDA_CHECK(cudaMemcpy(h_dst, d_src, bytes, cudaMemcpyDeviceToHost));
}

extern "C" void cuda_memset_nan(void *d_ptr, size_t bytes) { CUDA_CHECK(cudaMemset(d_ptr, 0xFF, bytes)); }

extern "C" void cuda_sync(void) { CUDA_CHECK(cudaDeviceSynchronize()); }

cublasHandle_t cuda_cublas(void)
{
    static cublasHandle_t handle;
    if (!handle)
        CUBLAS_CHECK(cublasCreate(&handle));
    return handle;
}
