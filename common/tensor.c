/* tensor.c: accounted allocation and the Tensor helpers (see tensor.h). */
#include "tensor.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
/* The most the process may hold through mem_alloc (0: not known yet) and where that number came
 * from, for the message that refuses an allocation. */
static _Atomic size_t mem_budget;
static const char *_Atomic mem_budget_source = "";

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

/* The number of the line "<key>: <n> kB" of a /proc file (meminfo, self/status), in bytes; 0 if absent. */
static size_t proc_kib_bytes(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    char line[256];
    unsigned long long kib = 0;
    const size_t n = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':' && sscanf(line + n + 1, "%llu", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib > SIZE_MAX / 1024 ? SIZE_MAX : (size_t)kib * 1024;
}

size_t mem_peak_rss_bytes(void)
{
    /* VmHWM is this process's own high-water mark, and follows mem_reset_peak_rss; getrusage also
     * counts the process it was exec'ed from (a fork of a large parent) */
    const size_t hwm = proc_kib_bytes("/proc/self/status", "VmHWM");
    if (hwm)
        return hwm;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (size_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}

int mem_reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w"); /* "5": the peak RSS := the RSS now (Linux >= 4.0) */
    if (!f)
        return -1;
    const int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
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

/* A number in a cgroup file ("max" and the huge "no limit" of cgroup v1 read as none): 0 if none. */
static size_t cgroup_limit_file(const char *path)
{
    FILE *f = fopen(path, "r");
    unsigned long long v = 0;
    const int ok = f && fscanf(f, "%llu", &v) == 1;
    if (f)
        fclose(f);
    return ok && v < (1ull << 62) && v <= SIZE_MAX ? (size_t)v : 0;
}

/* The memory limit of this process's cgroup (v2 memory.max, v1 memory.limit_in_bytes), at the
 * path /proc/self/cgroup names or at the mount's root (a container's own namespace); 0 if none.
 * A container's /proc/meminfo shows the host's memory, so without this a container of 4 GiB
 * would accept a 16 GiB allocation and be killed filling it. */
static size_t cgroup_limit(void)
{
    char line[1024], path[1200], rel[1024] = "", rel1[1024] = "";
    FILE *f = fopen("/proc/self/cgroup", "r");
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "0::", 3) == 0)
            snprintf(rel, sizeof rel, "%s", line + 3);
        const char *m = strstr(line, ":memory:");
        if (m)
            snprintf(rel1, sizeof rel1, "%s", m + 8);
    }
    if (f)
        fclose(f);
    size_t best = 0;
    const struct {
        const char *dir, *rel, *file;
    } tries[] = {
        {"/sys/fs/cgroup", rel, "memory.max"},
        {"/sys/fs/cgroup", "", "memory.max"},
        {"/sys/fs/cgroup/memory", rel1, "memory.limit_in_bytes"},
        {"/sys/fs/cgroup/memory", "", "memory.limit_in_bytes"},
    };
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        snprintf(path, sizeof path, "%s%s/%s", tries[i].dir, strcmp(tries[i].rel, "/") == 0 ? "" : tries[i].rel,
                 tries[i].file);
        const size_t v = cgroup_limit_file(path);
        if (v && (!best || v < best))
            best = v;
    }
    return best;
}

size_t mem_budget_bytes(void)
{
    size_t b = atomic_load(&mem_budget);
    if (b)
        return b;
    /* Read once, at the first allocation: MemAvailable (free memory plus what the kernel can
     * reclaim, e.g. the page cache), capped by the cgroup's limit; physical memory when neither
     * is known. With overcommit, calloc of more than that succeeds and the process is killed
     * later, while filling it: this number is the only warning there is. */
    const char *source = "MemAvailable";
    b = proc_kib_bytes("/proc/meminfo", "MemAvailable");
    const size_t cg = cgroup_limit();
    if (cg && (!b || cg < b))
        b = cg, source = "the cgroup's memory limit";
    if (!b)
        b = mem_physical_bytes(), source = "physical memory";
    atomic_store(&mem_budget_source, source);
    atomic_store(&mem_budget, b);
    return b;
}

void mem_set_budget(size_t bytes)
{
    atomic_store(&mem_budget_source, bytes ? "the budget set by mem_set_budget" : "");
    atomic_store(&mem_budget, bytes);
}

/* The refusal: what, how much, what is held already, the total and the budget. */
static int refuse(size_t bytes, size_t held, const char *what)
{
    char need[32], have[32], total[32], budget[32];
    const size_t b = mem_budget_bytes();
    format_bytes((double)bytes, need, sizeof need);
    format_bytes((double)b, budget, sizeof budget);
    if (held == 0)
        return error_set("%s needs %s, more than the %s of memory available (%s)", what, need, budget,
                         atomic_load(&mem_budget_source));
    return error_set("%s needs %s; with the %s this program already holds that is %s, more than the %s of memory "
                     "available (%s)",
                     what, need, format_bytes((double)held, have, sizeof have),
                     format_bytes((double)held + (double)bytes, total, sizeof total), budget,
                     atomic_load(&mem_budget_source));
}

int mem_check(size_t bytes, const char *what)
{
    const size_t b = mem_budget_bytes(), held = atomic_load(&mem_current);
    return held > b || bytes > b - held ? refuse(bytes, held, what) : 0;
}

void *mem_alloc(size_t bytes, const char *what)
{
    char need[32];
    const size_t b = mem_budget_bytes();
    if (bytes > b || bytes > SIZE_MAX - 2 * MEM_ALIGN)
        return refuse(bytes, atomic_load(&mem_current), what), NULL;
    /* Reserve first, then allocate: two threads cannot both pass the check with the last bytes.
     * bytes <= b, so the sum cannot wrap. */
    const size_t now = atomic_fetch_add(&mem_current, bytes) + bytes;
    if (now > b) {
        atomic_fetch_sub(&mem_current, bytes);
        refuse(bytes, now - bytes, what);
        return NULL;
    }
    unsigned char *base = calloc(1, bytes + 2 * MEM_ALIGN);
    if (!base) {
        atomic_fetch_sub(&mem_current, bytes);
        error_set("cannot allocate %s for %s", format_bytes((double)bytes, need, sizeof need), what);
        return NULL;
    }
    uintptr_t data = ((uintptr_t)base + sizeof(MemHeader) + MEM_ALIGN - 1) & ~(uintptr_t)(MEM_ALIGN - 1);
    MemHeader *h = (MemHeader *)(data - sizeof(MemHeader));
    h->base = base;
    h->bytes = bytes;

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
