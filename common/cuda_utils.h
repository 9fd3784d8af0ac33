/*
 * cuda_utils.h: the CUDA helpers every chapter's .cu file and GPU-aware C code uses.
 *
 * C code (compiled by gcc with HAVE_CUDA=1) may call the functions; the macros are for .cu
 * files. Every CUDA call and every kernel launch is checked:
 *
 *   CUDA_CHECK(cudaMalloc(&d_q, bytes));
 *   my_kernel<<<grid, block>>>(...);
 *   CUDA_CHECK(cudaGetLastError());
 *
 * A failure prints file, line, the call and CUDA's error string, and exits with status 1.
 */
#ifndef COMMON_CUDA_UTILS_H
#define COMMON_CUDA_UTILS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable GPUs; 0 with the reason in why (no driver, no device, ...). Never exits. */
int cuda_device_count(char *why, size_t len);
const char *cuda_device_name(void);
size_t cuda_shared_mem_per_block(void); /* opt-in maximum of device 0 */

void *cuda_alloc(size_t bytes);                               /* dies on failure */
/* NULL with an error naming `what` and the GPU's free memory when the allocation fails. */
void *cuda_try_alloc(size_t bytes, const char *what);
void cuda_free(void *d_ptr);
void cuda_upload(void *d_dst, const void *h_src, size_t bytes);
void cuda_download(void *h_dst, const void *d_src, size_t bytes);
void cuda_memset_nan(void *d_ptr, size_t bytes); /* poison: fills with 0xFF bytes (NaN floats) */
void cuda_sync(void);

/* Called by the macros below. */
void cuda_fail(const char *what, const char *msg, const char *file, int line) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cublas_v2.h>
#include <cuda_runtime.h>

#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t err_ = (call);                                                                 \
        if (err_ != cudaSuccess)                                                                   \
            cuda_fail(#call, cudaGetErrorString(err_), __FILE__, __LINE__);                        \
    } while (0)

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t st_ = (call);                                                               \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                          \
            cuda_fail(#call, cuda_cublas()->GetStatusString(st_), __FILE__, __LINE__);             \
    } while (0)

/* cuBLAS is opened with dlopen on its first use, not linked: its libraries are ~600 MB, and a
 * program that runs on the CPU must not map them (`--help` stayed at 200 MiB of resident memory
 * when they were linked). The functions this repository calls, with cuBLAS's own signatures,
 * and the process's handle (created on first use, destroyed at exit):
 *
 *   const CublasApi *cublas = cuda_cublas();
 *   CUBLAS_CHECK(cublas->Sgemm(cublas->handle, CUBLAS_OP_T, CUBLAS_OP_N, ...));
 */
typedef struct {
    cublasHandle_t handle;
    decltype(&cublasSgemm_v2) Sgemm;
    decltype(&cublasSgemmStridedBatched) SgemmStridedBatched;
    decltype(&cublasGetStatusString) GetStatusString;
} CublasApi;
const CublasApi *cuda_cublas(void); /* dies with the reason when cuBLAS cannot be loaded */

static inline unsigned int cuda_blocks(size_t n, unsigned int per_block)
{
    return (unsigned int)((n + per_block - 1) / per_block);
}
#endif

#endif
