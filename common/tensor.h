/*
 * tensor.h: float buffers with a shape, and byte accounting for every buffer we allocate.
 *
 * The chapters argue about memory ("the score matrix grows as T^2", "the KV cache costs ...").
 * To print those claims as measurements, every large buffer goes through mem_alloc(), which
 * counts the bytes currently held and the peak since the last mem_reset_peak(). Tensor is a
 * thin wrapper: a data pointer, up to four dimensions, C (row-major) order.
 *
 * Shape key used in comments across the repository:
 *   B batch, H query heads, Hkv key/value heads, T queries, S keys, D head dim, C model dim.
 */
#ifndef COMMON_TENSOR_H
#define COMMON_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- accounted allocation --------------------------------------------------------------- */

/* 64-byte aligned, zero-filled, counted. Returns NULL and records an error naming `what` when
 * the bytes held through mem_alloc would exceed the memory budget (mem_budget_bytes) or the
 * allocation fails. The budget bounds the total, not each request: no sequence of allocations,
 * each small enough alone, can take the process past it (and get it killed by the OOM killer
 * once it touches the pages that overcommit granted). 0 bytes is a valid request: a pointer
 * that must not be read, never NULL (so an empty buffer needs no special case). */
void *mem_alloc(size_t bytes, const char *what);
/* Like mem_alloc, but dies with that error instead of returning NULL. */
void *mem_alloc_or_die(size_t bytes, const char *what);
void mem_free(void *p);

size_t mem_current_bytes(void);  /* bytes held now through mem_alloc */
size_t mem_peak_bytes(void);     /* the most held at once since the last reset */
void mem_reset_peak(void);       /* peak := current */

/* 0 if `bytes` more would fit in the budget with what is held now; else -1 and the message
 * mem_alloc would give ("<what> needs X; with Y already held that is Z, more than the W of memory
 * available (MemAvailable)"). For a command that knows its total before allocating any of it. */
int mem_check(size_t bytes, const char *what);

/* The budget: MemAvailable from /proc/meminfo, read at the first allocation, capped by the
 * cgroup's memory limit (a container's); physical memory when neither can be read. */
size_t mem_budget_bytes(void);
/* Tests: a budget of `bytes` from now on (0: read it again at the next allocation). */
void mem_set_budget(size_t bytes);

size_t mem_physical_bytes(void); /* this machine's RAM, from sysconf */
/* The process's peak resident set: since it started, or since the last mem_reset_peak_rss
 * (Linux's VmHWM; getrusage elsewhere). */
size_t mem_peak_rss_bytes(void);
/* Starts a new peak: the peak resident set becomes the resident set now (Linux's
 * /proc/self/clear_refs), so that the next mem_peak_rss_bytes is the peak of what ran in between.
 * 0, or -1 where that is not possible (the peak stays the process's). */
int mem_reset_peak_rss(void);
size_t mem_rss_bytes(void);      /* the process's resident set now (/proc/self/statm); 0 if unknown */

/* n1 * n2 * ... with overflow detection: returns 0 and sets *out, or -1 on overflow. */
int size_mul(size_t *out, size_t a, size_t b);

/* ---- tensors ---------------------------------------------------------------------------- */

#define TENSOR_MAX_DIMS 4

typedef struct {
    float *data;                      /* numel floats, C order */
    int ndim;                         /* 0 .. TENSOR_MAX_DIMS */
    size_t shape[TENSOR_MAX_DIMS];
    size_t numel;
} Tensor;

/* Allocates a zero tensor of the given shape through mem_alloc. -1 (error recorded) if the
 * element count overflows or memory is short. */
int tensor_init(Tensor *t, int ndim, const size_t *shape, const char *what);
/* tensor_init or die. Usage: Tensor q = tensor_zeros(4, (size_t[]){B, H, T, D}, "q"); */
Tensor tensor_zeros(int ndim, const size_t *shape, const char *what);
void tensor_free(Tensor *t);

size_t tensor_bytes(const Tensor *t);
void tensor_fill_normal(Tensor *t, Rng *rng, float mean, float stddev);
void tensor_fill_uniform(Tensor *t, Rng *rng, float lo, float hi);

/* Writes "(2, 8, 17, 64)" into buf and returns buf. */
const char *tensor_shape_str(const Tensor *t, char *buf, size_t len);

/* Human-readable bytes: "1.50 GiB". Returns buf. */
const char *format_bytes(double bytes, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
