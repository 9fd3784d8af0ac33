/*
 * npy.h: reading and writing NumPy .npy files, the exchange format of the `attn` contract.
 *
 * Supported: format version 1.0 (and 2.0/3.0, which differ only in the header-length field),
 * dtypes little-endian float32 '<f4' and int32 '<i4', C order, rank 0..8. Everything else, and
 * every malformed, truncated or over-long file, is an error whose message starts with the path.
 */
#ifndef COMMON_NPY_H
#define COMMON_NPY_H

#include <stddef.h>

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NPY_MAX_DIMS 8

typedef enum { NPY_F32, NPY_I32 } NpyDtype;

typedef struct {
    NpyDtype dtype;
    int ndim;
    size_t shape[NPY_MAX_DIMS];
    size_t numel;
    void *data; /* numel elements, C order, from mem_alloc; release with npy_free */
} NpyArray;

/* Reads any supported file. 0 on success; -1 with the reason recorded (error.h). */
int npy_read(const char *path, NpyArray *out);
void npy_free(NpyArray *a);

/* Reads a float32 array of exactly `ndim` dimensions into a Tensor (ndim <= 4). */
int npy_read_tensor(const char *path, int ndim, Tensor *out);

int npy_write(const char *path, NpyDtype dtype, int ndim, const size_t *shape, const void *data);
int npy_write_tensor(const char *path, const Tensor *t);

#ifdef __cplusplus
}
#endif
#endif
