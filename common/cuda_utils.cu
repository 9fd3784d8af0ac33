/*
 * cuda_utils.cu: device detection, checked allocation and copies, and cuBLAS loaded on demand.
 * Compiled by nvcc whenever it exists; at run time everything here is reached only after
 * cuda_device_count() said a GPU is present.
 *
 * What a CPU run pays for the GPU code: the CUDA runtime is linked statically (libcudart_static,
 * which opens the driver only at the first CUDA call) and cuBLAS is opened with dlopen by
 * cuda_cublas(), so `--device cpu` maps neither the driver nor cuBLAS.
 */
#include "cuda_utils.h"

#include <dlfcn.h>
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

/* ==== cuBLAS through dlopen ====================================================================== */

/* The Makefile names the library the build compiled against (CUBLAS_SONAME, e.g.
 * libcublas.so.13) and the toolkit's folder; the folder is tried first, then the loader's path. */
#ifndef CUBLAS_SONAME
#define CUBLAS_SONAME "libcublas.so"
#endif
#ifndef CUDA_LIBDIR
#define CUDA_LIBDIR "/usr/local/cuda/lib64"
#endif

static CublasApi cublas_api;
static void *cublas_lib;

static void *cublas_symbol(const char *name)
{
    void *fn = dlsym(cublas_lib, name);
    if (!fn) {
        fflush(stdout);
        fprintf(stderr, "%s: error: cuBLAS: %s has no symbol %s\n", error_program(), CUBLAS_SONAME, name);
        exit(1);
    }
    return fn;
}

static void cublas_unload(void)
{
    /* The handle is destroyed before the runtime's own teardown (atexit runs in reverse order of
     * registration, and this was registered after the runtime started), so leak checkers see
     * nothing of cuBLAS left. */
    if (cublas_api.handle) {
        auto destroy = (decltype(&cublasDestroy_v2))cublas_symbol("cublasDestroy_v2");
        destroy(cublas_api.handle);
        cublas_api.handle = NULL;
    }
}

const CublasApi *cuda_cublas(void)
{
    if (cublas_api.handle)
        return &cublas_api;
    cublas_lib = dlopen(CUDA_LIBDIR "/" CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!cublas_lib)
        cublas_lib = dlopen(CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!cublas_lib) {
        fflush(stdout);
        fprintf(stderr, "%s: error: cuBLAS: cannot load %s: %s\n", error_program(), CUBLAS_SONAME, dlerror());
        exit(1);
    }
    cublas_api.Sgemm = (decltype(cublas_api.Sgemm))cublas_symbol("cublasSgemm_v2");
    cublas_api.SgemmStridedBatched =
        (decltype(cublas_api.SgemmStridedBatched))cublas_symbol("cublasSgemmStridedBatched");
    cublas_api.GetStatusString = (decltype(cublas_api.GetStatusString))cublas_symbol("cublasGetStatusString");
    auto create = (decltype(&cublasCreate_v2))cublas_symbol("cublasCreate_v2");
    cublasHandle_t handle = NULL;
    cublasStatus_t st = create(&handle); /* not CUBLAS_CHECK: that would call back in here */
    if (st != CUBLAS_STATUS_SUCCESS)
        cuda_fail("cublasCreate(&handle)", cublas_api.GetStatusString(st), __FILE__, __LINE__);
    cublas_api.handle = handle;
    atexit(cublas_unload);
    return &cublas_api;
}
