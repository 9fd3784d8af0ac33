/*
 * device.h: where a program runs, chosen with --device auto|cpu|cuda.
 *
 * auto picks the GPU when this build has CUDA and a GPU answers, else the CPU. cuda without a
 * usable GPU is an error that says why ("built without CUDA", "no CUDA driver", "no GPU").
 * On a machine with the CUDA toolkit but no driver, detection returns "no GPU" cleanly.
 */
#ifndef COMMON_DEVICE_H
#define COMMON_DEVICE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { DEVICE_CPU = 0, DEVICE_CUDA = 1 } Device;

#define DEVICE_CHOICES "auto|cpu|cuda"

/* 1 if a CUDA GPU can be used; else 0 and the reason in why. */
int device_cuda_available(char *why, size_t len);

/* Resolves "auto", "cpu" or "cuda". -1 (error recorded) for cuda without a GPU. */
int device_resolve(const char *name, Device *out);

const char *device_name(Device d);

/* "NVIDIA H100 80GB HBM3" or "CPU: <model>": names the device in benchmark rows. */
const char *device_description(Device d);

#ifdef __cplusplus
}
#endif
#endif
