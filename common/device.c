/* device.c: --device resolution (see device.h); the GPU query itself is in cuda_utils.cu. */
#include "device.h"

#include <stdio.h>
#include <string.h>

#include "error.h"
#include "roofline.h"

#if HAVE_CUDA
#include "cuda_utils.h"
#endif

int device_cuda_available(char *why, size_t len)
{
#if HAVE_CUDA
    return cuda_device_count(why, len) > 0;
#else
    snprintf(why, len, "this build has no CUDA (nvcc was not found, or CUDA=0)");
    return 0;
#endif
}

int device_resolve(const char *name, Device *out)
{
    char why[256];
    if (!name || strcmp(name, "auto") == 0) {
        *out = device_cuda_available(why, sizeof why) ? DEVICE_CUDA : DEVICE_CPU;
        return 0;
    }
    if (strcmp(name, "cpu") == 0) {
        *out = DEVICE_CPU;
        return 0;
    }
    if (strcmp(name, "cuda") == 0) {
        if (!device_cuda_available(why, sizeof why))
            return error_set("--device cuda: no usable GPU: %s", why);
        *out = DEVICE_CUDA;
        return 0;
    }
    return error_set("--device must be one of " DEVICE_CHOICES ", got '%s'", name);
}

const char *device_name(Device d) { return d == DEVICE_CUDA ? "cuda" : "cpu"; }

const char *device_description(Device d)
{
#if HAVE_CUDA
    if (d == DEVICE_CUDA)
        return cuda_device_name();
#endif
    (void)d;
    return roofline_machine();
}
