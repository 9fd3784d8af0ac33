/*
 * fuzz_npy.c: the .npy reader (common/npy.c) on any bytes: it must accept a file or refuse it
 * with an error, and an accepted tensor must have exactly the elements its shape says.
 */
#include "common/npy.h"
#include "common/tensor.h"
#include "fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_to_file(data, size, ".npy");
    for (int ndim = 1; ndim <= 4; ndim++) {
        Tensor t;
        if (npy_read_tensor(path, ndim, &t) != 0)
            continue;
        size_t numel = 1;
        for (int d = 0; d < t.ndim; d++)
            numel *= t.shape[d];
        if (t.ndim != ndim || numel != t.numel || tensor_bytes(&t) != numel * sizeof(float))
            fuzz_fail("npy: accepted a tensor whose shape and size disagree");
        volatile float sum = 0.0f;
        for (size_t i = 0; i < t.numel; i++) /* every element is readable */
            sum += t.data[i];
        (void)sum;
        tensor_free(&t);
    }
    return 0;
}
