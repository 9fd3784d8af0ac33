/*
 * tp_nccl.cu: NCCL's all-reduce between GPUs, for 04_kvcache_tp's `nccl` subcommand (tp.h).
 *
 * What it teaches: on GPUs the all-reduce that joins a tensor-parallel layer is NCCL's (vLLM and
 * SGLang use it): every rank drives its own GPU, rank 0 makes a unique id, MPI carries it to the
 * others, and ncclCommInitRank joins them. Timed here on the payload a layer sums per token (dim
 * values), whose latency, not its bytes, is what a decode step pays (the lesson's section 3).
 *
 * NCCL is opened with dlopen on first use, like cuBLAS (common/cuda_utils.cu): a CPU run of the
 * program never maps its 200 MB. Compiled whenever nvcc and nccl.h are there; run where GPUs are.
 */
#include <dlfcn.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>

#include "04_kvcache/tp.h"
#include "common/cuda_utils.h"
#include "common/error.h"
#include "common/tensor.h"

#ifndef NCCL_SONAME
#define NCCL_SONAME "libnccl.so.2"
#endif
#ifndef CUDA_LIBDIR
#define CUDA_LIBDIR "/usr/local/cuda/lib64"
#endif

typedef struct {
    decltype(&ncclGetUniqueId) GetUniqueId;
    decltype(&ncclCommInitRank) CommInitRank;
    decltype(&ncclAllReduce) AllReduce;
    decltype(&ncclCommDestroy) CommDestroy;
    decltype(&ncclGetErrorString) GetErrorString;
} NcclApi;

/* The functions of NCCL, or -1 with an error naming what is missing. */
static int nccl_open(NcclApi *api)
{
    void *lib = dlopen(CUDA_LIBDIR "/" NCCL_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        lib = dlopen(NCCL_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return error_set("NCCL: cannot open %s: %s", NCCL_SONAME, dlerror());
    api->GetUniqueId = (decltype(api->GetUniqueId))dlsym(lib, "ncclGetUniqueId");
    api->CommInitRank = (decltype(api->CommInitRank))dlsym(lib, "ncclCommInitRank");
    api->AllReduce = (decltype(api->AllReduce))dlsym(lib, "ncclAllReduce");
    api->CommDestroy = (decltype(api->CommDestroy))dlsym(lib, "ncclCommDestroy");
    api->GetErrorString = (decltype(api->GetErrorString))dlsym(lib, "ncclGetErrorString");
    if (!api->GetUniqueId || !api->CommInitRank || !api->AllReduce || !api->CommDestroy || !api->GetErrorString)
        return error_set("NCCL: %s lacks one of ncclGetUniqueId, ncclCommInitRank, ncclAllReduce", NCCL_SONAME);
    return 0;
}

#define NCCL_TRY(api, call)                                                                        \
    do {                                                                                           \
        ncclResult_t r_ = (call);                                                                  \
        if (r_ != ncclSuccess)                                                                     \
            return error_set("%s: %s", #call, (api).GetErrorString(r_));                           \
    } while (0)

/* The timed loop once NCCL is joined: d_x (n) summed in place `iters` times, each timed by events. */
static int time_loop(const NcclApi &api, ncclComm_t comm, float *d_x, size_t n, int iters, double *secs)
{
    cudaStream_t stream;
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaStreamCreate(&stream));
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    double *each = (double *)mem_alloc_or_die((size_t)iters * sizeof(double), "the all-reduces' times");
    for (int i = 0; i < 5; i++) /* warm-up: NCCL sets up its channels on the first calls */
        NCCL_TRY(api, api.AllReduce(d_x, d_x, n, ncclFloat, ncclSum, comm, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    for (int i = 0; i < iters; i++) {
        MPI_Barrier(MPI_COMM_WORLD); /* every rank starts together: the time is the collective's */
        CUDA_CHECK(cudaEventRecord(e0, stream));
        NCCL_TRY(api, api.AllReduce(d_x, d_x, n, ncclFloat, ncclSum, comm, stream));
        CUDA_CHECK(cudaEventRecord(e1, stream));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        each[i] = ms * 1e-3;
    }
    std::sort(each, each + iters);
    *secs = each[iters / 2];
    mem_free(each);
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    CUDA_CHECK(cudaStreamDestroy(stream));
    return 0;
}

int tp_nccl_allreduce_time(const TpRanks *t, size_t n, int iters, double *secs)
{
    char why[256];
    const int gpus = cuda_device_count(why, sizeof why);
    if (gpus == 0)
        return error_set("no usable GPU for NCCL: %s", why);
    NcclApi api = {};
    if (nccl_open(&api) != 0)
        return -1;
    CUDA_CHECK(cudaSetDevice(t->rank % gpus));
    ncclUniqueId id;
    if (t->rank == 0)
        NCCL_TRY(api, api.GetUniqueId(&id));
    MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclComm_t comm;
    NCCL_TRY(api, api.CommInitRank(&comm, t->world, id, t->rank));
    float *d_x = (float *)cuda_alloc(n * sizeof(float));
    CUDA_CHECK(cudaMemset(d_x, 0, n * sizeof(float)));
    const int rc = time_loop(api, comm, d_x, n, iters, secs);
    cuda_free(d_x);
    api.CommDestroy(comm);
    return rc;
}
