/* tensor.c: accounted allocation and the Tensor helpers (see tensor.h). */
#include "tensor.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "error.h"

/* ---- accounted allocation --------------------------------------------------------------- */

/* Each block is calloc'ed with room for a 64-byte header in front of the aligned data; the
 * header remembers the pointer calloc returned and the size we count. calloc (rather than
 * malloc + memset) lets large blocks arrive as lazily zeroed pages. */
#define MEM_ALIGN 64

typedef struct {
    void *base;
    size_t bytes;
} MemHeader;

static _Atomic size_t mem_current;
static _Atomic size_t mem_peak;

int size_mul(size_t *out, size_t a, size_t b)
{
    if (a != 0 && b > SIZE_MAX / a)
        return -1;
    *out = a * b;
    return 0;
}

size_t mem_physical_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0)
        return SIZE_MAX;
    return (size_t)pages * (size_t)page;
}

size_t mem_peak_rss_bytes(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (size_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}

size_t mem_rss_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    int ok = fscanf(f, "%lu %lu", &size, &resident) == 2;
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    return ok && page > 0 ? (size_t)resident * (size_t)page : 0;
}

void *mem_alloc(size_t bytes, const char *what)
{
    char need[32], have[32];
    size_t phys = mem_physical_bytes();
    if (bytes > phys || bytes > SIZE_MAX - 2 * MEM_ALIGN) {
        error_set("%s needs %s but this machine has %s of memory", what,
                  format_bytes((double)bytes, need, sizeof need),
                  format_bytes((double)phys, have, sizeof have));
        return NULL;
    }
    unsigned char *base = calloc(1, bytes + 2 * MEM_ALIGN);
    if (!base) {
        error_set("cannot allocate %s for %s", format_bytes((double)bytes, need, sizeof need), what);
        return NULL;
    }
    uintptr_t data = ((uintptr_t)base + sizeof(MemHeader) + MEM_ALIGN - 1) & ~(uintptr_t)(MEM_ALIGN - 1);
    MemHeader *h = (MemHeader *)(data - sizeof(MemHeader));
    h->base = base;
    h->bytes = bytes;

    size_t now = atomic_fetch_add(&mem_current, bytes) + bytes;
    size_t peak = atomic_load(&mem_peak);
    while (now > peak && !atomic_compare_exchange_weak(&mem_peak, &peak, now)) {
    }
    return (void *)data;
}

void *mem_alloc_or_die(size_t bytes, const char *what)
{
    void *p = mem_alloc(bytes, what);
    if (!p)
        die_with_error();
    return p;
}

void mem_free(void *p)
{
    if (!p)
        return;
    MemHeader *h = (MemHeader *)((uintptr_t)p - sizeof(MemHeader));
    atomic_fetch_sub(&mem_current, h->bytes);
    free(h->base);
}

size_t mem_current_bytes(void) { return atomic_load(&mem_current); }
size_t mem_peak_bytes(void) { return atomic_load(&mem_peak); }
void mem_reset_peak(void) { atomic_store(&mem_peak, atomic_load(&mem_current)); }

/* ---- tensors ---------------------------------------------------------------------------- */

int tensor_init(Tensor *t, int ndim, const size_t *shape, const char *what)
{
    size_t numel = 1, bytes;
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS)
        return error_set("%s: rank %d is not supported (at most %d)", what, ndim, TENSOR_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (size_mul(&numel, numel, shape[i]) != 0)
            return error_set("%s: the element count overflows", what);
    if (size_mul(&bytes, numel, sizeof(float)) != 0)
        return error_set("%s: the byte count overflows", what);
    float *data = mem_alloc(bytes, what);
    if (!data)
        return -1;
    t->data = data;
    t->ndim = ndim;
    t->numel = numel;
    for (int i = 0; i < TENSOR_MAX_DIMS; i++)
        t->shape[i] = i < ndim ? shape[i] : 1;
    return 0;
}

Tensor tensor_zeros(int ndim, const size_t *shape, const char *what)
{
    Tensor t;
    if (tensor_init(&t, ndim, shape, what) != 0)
        die_with_error();
    return t;
}

void tensor_free(Tensor *t)
{
    mem_free(t->data);
    t->data = NULL;
    t->numel = 0;
}

size_t tensor_bytes(const Tensor *t) { return t->numel * sizeof(float); }

void tensor_fill_normal(Tensor *t, Rng *rng, float mean, float stddev)
{
    for (size_t i = 0; i < t->numel; i++)
        t->data[i] = mean + stddev * rng_normal(rng);
}

void tensor_fill_uniform(Tensor *t, Rng *rng, float lo, float hi)
{
    for (size_t i = 0; i < t->numel; i++)
        t->data[i] = lo + (hi - lo) * rng_uniform(rng);
}

const char *tensor_shape_str(const Tensor *t, char *buf, size_t len)
{
    size_t used = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < t->ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%zu", i ? ", " : "", t->shape[i]);
    if (used < len)
        snprintf(buf + used, len - used, t->ndim == 1 ? ",)" : ")");
    return buf;
}

const char *format_bytes(double bytes, char *buf, size_t len)
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 5) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, len, u == 0 ? "%.0f %s" : "%.2f %s", bytes, unit[u]);
    return buf;
}
