/*
 * harness.c: chapter 05's versions as the common harness sees them (common/attn_harness.h), and
 * the two subcommands built on them.
 *
 *   05_paged attn ...     attention on .npy files: K and V (B, Hkv, S, D) written into a pool of
 *                         blocks of --block-size tokens handed out in a shuffled order, every
 *                         unused slot NaN, then read through the tables by the chosen kernel
 *   05_paged verify ...   every version against chapter 04 (its contiguous cache) on the shape
 *                         grid, once per block size in {1, 8, 16, 32}; then batches of five
 *                         sequences of different lengths against the paged reference
 *
 * The harness calls a version with the shapes alone; how K and V are laid into the pool (block
 * size, the order of the free list) travels in the table's ctx, a PagedAttnOptions.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "04_kvcache/commands.h"
#include "04_kvcache/kvcache.h"
#include "05_paged/commands.h"
#include "05_paged/paged.h"
#include "common/attn_harness.h"
#include "common/compare.h"
#include "common/device.h"
#include "common/error.h"
#include "common/rng.h"
#include "common/tensor.h"
#include "common/verify.h"
#if HAVE_CUDA
#include "common/cuda_utils.h"
#endif

/* How the harness's K and V go into the pool. */
typedef struct {
    int block_size;        /* tokens per block: attn --block-size, or the round of verify */
    uint64_t shuffle_seed; /* the order the pool hands out blocks */
} PagedAttnOptions;

#define PAGED_ATTN_BLOCK_SIZE 16      /* attn's default --block-size */
#define PAGED_ATTN_SHUFFLE_SEED 1234  /* attn's order of the free list */

/* ==== this chapter's versions, as the harness sees them ============================================ */

/* Blocks B sequences of S tokens take: ceil(S / bs) each, in size_t (B * that can pass INT_MAX). */
static int pool_blocks(const AttnDims *d, int bs, int *n_blocks)
{
    const size_t blocks = (size_t)d->B * (((size_t)d->S + (size_t)bs - 1) / (size_t)bs);
    if (blocks > (size_t)INT_MAX)
        return error_set("B = %d sequences of S = %d keys take %zu blocks of %d tokens, more than a pool can have "
                         "(%d): give a larger --block-size",
                         d->B, d->S, blocks, bs, INT_MAX);
    *n_blocks = blocks > 0 ? (int)blocks : 1;
    return 0;
}

/* B sequences of S tokens in a pool of exactly their blocks, handed out in shuffled order, every
 * slot first set to NaN (a slot the kernels must not read), then K/V (B, Hkv, S, D) written
 * through the tables. */
static int paged_from_bhsd(const AttnDims *d, const PagedAttnOptions *o, const float *k, const float *v, PagedPool *p,
                           PagedSeq *seqs)
{
    const int bs = o->block_size;
    int n_blocks = 0;
    if (pool_blocks(d, bs, &n_blocks) != 0)
        return -1;
    if (paged_pool_create(p, 1, d->Hkv, d->D, bs, n_blocks) != 0) {
        if (bs > d->S) { /* the likely cause: every sequence's one block is mostly empty */
            char why[512], fit[32];
            snprintf(why, sizeof why, "%s", error_message());
            format_bytes(2.0 * d->B * d->Hkv * d->S * d->D * sizeof(float), fit, sizeof fit);
            error_set("%s; --block-size %d is larger than S = %d: each of the B = %d sequences holds one block with "
                      "%d empty slots (--block-size %d would need %s)",
                      why, bs, d->S, d->B, bs - d->S, d->S, fit);
        }
        return -1;
    }
    const size_t pool_floats = (size_t)p->num_blocks * p->n_kv_heads * bs * d->D;
    for (size_t i = 0; i < pool_floats; i++)
        p->k[i] = p->v[i] = NAN;
    paged_pool_shuffle(p, o->shuffle_seed);
    const size_t D = (size_t)d->D, S = (size_t)d->S;
    for (int b = 0; b < d->B; b++) {
        paged_seq_init(&seqs[b]);
        if (paged_seq_append(p, &seqs[b], d->S) != 0)
            return -1;
        for (int h = 0; h < d->Hkv; h++)
            for (size_t t = 0; t < S; t++) {
                const int id = seqs[b].blocks[t / (size_t)bs];
                memcpy(paged_k_block(p, id, 0, h) + (t % (size_t)bs) * D, k + (((size_t)b * d->Hkv + h) * S + t) * D,
                       D * sizeof(float));
                memcpy(paged_v_block(p, id, 0, h) + (t % (size_t)bs) * D, v + (((size_t)b * d->Hkv + h) * S + t) * D,
                       D * sizeof(float));
            }
    }
    return 0;
}

/* (B, H, T, D) <-> (B*T, H, D), the token-major rows the paged kernels take */
static void bhtd_to_rows(const float *x, float *rows, int B, int H, int T, int D, int back)
{
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                float *a = (float *)x + (((size_t)b * H + h) * T + t) * D;
                float *r = rows + (((size_t)b * T + t) * H + h) * D;
                if (back)
                    memcpy(a, r, (size_t)D * sizeof(float));
                else
                    memcpy(r, a, (size_t)D * sizeof(float));
            }
}

static int run_cpu(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    const PagedAttnOptions *o = ctx;
    PagedPool p;
    PagedSeq *seqs = mem_alloc((size_t)d->B * sizeof(PagedSeq), "block tables (B)");
    PagedSeq **ptrs = mem_alloc((size_t)d->B * sizeof(PagedSeq *), "sequence list (B)");
    int *q_start = mem_alloc((size_t)(d->B + 1) * sizeof(int), "query starts (B + 1)");
    const size_t n = attn_q_count(d);
    float *qr = mem_alloc(n * sizeof(float), "q rows (B*T, H, D)");
    float *orow = mem_alloc(n * sizeof(float), "out rows (B*T, H, D)");
    int rc = !seqs || !ptrs || !q_start || !qr || !orow ? -1 : 0;
    memset(&p, 0, sizeof p);
    if (rc == 0)
        rc = paged_from_bhsd(d, o, k, v, &p, seqs);
    for (int b = 0; b <= d->B && rc == 0; b++) {
        q_start[b] = b * d->T;
        if (b < d->B)
            ptrs[b] = &seqs[b];
    }
    if (rc == 0) {
        bhtd_to_rows(q, qr, d->B, d->H, d->T, d->D, 0);
        rc = paged_attention_cpu(kernel, &p, 0, d->H, d->scale, d->causal, d->B, ptrs, q_start, qr, orow);
    }
    if (rc == 0)
        bhtd_to_rows(out, orow, d->B, d->H, d->T, d->D, 1);
    for (int b = 0; b < d->B && seqs && p.num_blocks; b++)
        paged_seq_free(&p, &seqs[b]);
    paged_pool_free(&p);
    mem_free(seqs), mem_free(ptrs), mem_free(q_start), mem_free(qr), mem_free(orow);
    return rc;
}

/* The reference: chapter 04's contiguous cache, its reference decode kernel for T = 1 and chapter
 * 03's flash attention over the cache for T > 1. */
static int run_ref(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    (void)ctx, (void)kernel;
    return kvcache_attend_bhsd(1, d, q, k, v, out);
}

#if HAVE_CUDA
/* On the GPU: the same shuffled placement, scattered on the device (paged.cu). */
static int run_cuda(void *ctx, int kernel, const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    const PagedAttnOptions *o = ctx;
    int n_blocks = 0;
    if (pool_blocks(d, o->block_size, &n_blocks) != 0)
        return -1;
    int *perm = mem_alloc((size_t)n_blocks * sizeof(int), "block placement (B * ceil(S / bs))");
    if (!perm)
        return -1;
    for (int i = 0; i < n_blocks; i++)
        perm[i] = i;
    Rng rng;
    rng_seed(&rng, o->shuffle_seed);
    for (int i = n_blocks - 1; i > 0; i--) {
        const int j = (int)rng_below(&rng, (uint32_t)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    const int rc = paged_attention_cuda_bhsd(kernel, d->B, d->H, d->Hkv, d->T, d->S, d->D, o->block_size, perm,
                                             d->scale, d->causal, q, k, v, out);
    mem_free(perm);
    return rc;
}
#endif

/* The table of versions, K and V laid out as *o says. */
static AttnImpls paged_impls(PagedAttnOptions *o)
{
    return (AttnImpls){
        .prog = PAGED_PROG,
        .ref = run_ref, /* chapter 04's contiguous cache */
        .cpu = run_cpu, .cpu_name = paged_cpu_kernel_name, .n_cpu = PAGED_CPU_KERNELS,
        ATTN_IF_CUDA(.cuda = run_cuda, .cuda_name = paged_cuda_kernel_name, .n_cuda = PAGED_CUDA_KERNELS),
        .attn_help = "Attention through a paged cache: K and V are written into blocks of --block-size tokens\n"
                     "(default 16; an option of this chapter, before or after the others) handed out in a\n"
                     "shuffled order, every unused slot NaN, and the T queries sit at the last T positions\n"
                     "(bottom-right causal with --causal). Kernels: CPU 1 = ref, 2 = fast (default); CUDA 1 =\n"
                     "v1, 2 = v2 (default).",
        .ctx = o,
    };
}

/* ==== attn ========================================================================================= */

/* --block-size is this chapter's own option: taken out of argv (argv[0] = "attn") before the
 * shared parser sees the rest. */
static int take_block_size(int *argc, char **argv)
{
    int block_size = PAGED_ATTN_BLOCK_SIZE;
    for (int i = 1; i < *argc; i++)
        if (strncmp(argv[i], "--block-size", 12) == 0 && (argv[i][12] == '\0' || argv[i][12] == '=')) {
            const char *val = argv[i][12] == '=' ? argv[i] + 13 : i + 1 < *argc ? argv[i + 1] : NULL;
            char *end;
            if (val && argv[i][12] == '\0' && val[0] == '-' && val[1] != '\0' && !(val[1] >= '0' && val[1] <= '9'))
                die(PAGED_PROG " attn: --block-size needs a value, got the option '%s'", val);
            errno = 0;
            const long bs = val ? strtol(val, &end, 10) : 0;
            if (!val || !*val || *end || errno || bs < 1 || bs > 4096)
                die(PAGED_PROG " attn: --block-size expects an integer from 1 to 4096, got '%s'", val ? val : "");
            block_size = (int)bs;
            const int drop = argv[i][12] == '=' ? 1 : 2;
            for (int j = i; j + drop <= *argc; j++)
                argv[j] = argv[j + drop];
            *argc -= drop;
            i--;
        }
    return block_size;
}

int paged_cmd_attn(int argc, char **argv)
{
    PagedAttnOptions o = {.block_size = take_block_size(&argc, argv), .shuffle_seed = PAGED_ATTN_SHUFFLE_SEED};
    const AttnImpls im = paged_impls(&o);
    return attn_command(&im, argc, argv);
}

/* ==== verify: batches of sequences of different lengths ============================================ */

enum { MIXED_SEQS = 5, MIXED_LONGEST = 700 };

/* Five sequences grown side by side (so that their blocks interleave) in a shuffled pool whose
 * every unused slot is NaN, with the query rows of each: decode rows and prefill chunks mixed. */
typedef struct {
    PagedPool p;
    PagedSeq seqs[MIXED_SEQS], *ptrs[MIXED_SEQS];
    int lens[MIXED_SEQS], q_start[MIXED_SEQS + 1];
    int H;
    size_t n;               /* q_start[MIXED_SEQS] * H * D */
    float *q, *ref, *out;   /* (rows, H, D) each */
} MixedBatch;

static void mixed_create(MixedBatch *mb, int bs, uint64_t seed)
{
    const int Hkv = 2, D = 64, Ts[MIXED_SEQS] = {1, 1, 2, 1, 17};
    const int lens[MIXED_SEQS] = {1, bs, bs + 1, 3 * bs - 1 > 0 ? 3 * bs - 1 : 1, MIXED_LONGEST};
    int total_blocks = 0;
    mb->H = 8, mb->q_start[0] = 0;
    for (int i = 0; i < MIXED_SEQS; i++) {
        mb->lens[i] = lens[i], total_blocks += (lens[i] + bs - 1) / bs;
        paged_seq_init(&mb->seqs[i]), mb->ptrs[i] = &mb->seqs[i], mb->q_start[i + 1] = mb->q_start[i] + Ts[i];
    }
    if (paged_pool_create(&mb->p, 1, Hkv, D, bs, total_blocks) != 0)
        die_with_error();
    const size_t pool_floats = (size_t)mb->p.num_blocks * Hkv * bs * D;
    for (size_t i = 0; i < pool_floats; i++)
        mb->p.k[i] = mb->p.v[i] = NAN; /* any slot read that should not be turns the output NaN */
    paged_pool_shuffle(&mb->p, seed);
    Rng rng;
    rng_seed(&rng, seed);
    float *kv = mem_alloc_or_die((size_t)Hkv * D * sizeof(float), "one token's K and V (Hkv, D)");
    for (int t = 0; t < MIXED_LONGEST; t++)
        for (int i = 0; i < MIXED_SEQS; i++)
            if (t < lens[i]) {
                if (paged_seq_append(&mb->p, &mb->seqs[i], 1) != 0)
                    die_with_error();
                for (int j = 0; j < Hkv * D; j++)
                    kv[j] = rng_normal(&rng);
                paged_write(&mb->p, &mb->seqs[i], 0, t, 1, kv, kv);
            }
    mem_free(kv);
    mb->n = (size_t)mb->q_start[MIXED_SEQS] * mb->H * D;
    mb->q = mem_alloc_or_die(mb->n * sizeof(float), "q rows (rows, H, D)");
    mb->ref = mem_alloc_or_die(mb->n * sizeof(float), "reference rows (rows, H, D)");
    mb->out = mem_alloc_or_die(mb->n * sizeof(float), "out rows (rows, H, D)");
    for (size_t i = 0; i < mb->n; i++)
        mb->q[i] = rng_normal(&rng);
}

static void mixed_free(MixedBatch *mb)
{
    for (int i = 0; i < MIXED_SEQS; i++)
        paged_seq_free(&mb->p, &mb->seqs[i]);
    paged_pool_free(&mb->p);
    mem_free(mb->q), mem_free(mb->ref), mem_free(mb->out);
}

#if HAVE_CUDA
/* The batch on the GPU: the pool, the tables and the rows uploaded, CUDA version `kern` run. */
static int mixed_run_cuda(const MixedBatch *mb, int kern, float scale, int causal)
{
    const PagedPool *p = &mb->p;
    const int n_seq = MIXED_SEQS, rows = mb->q_start[n_seq];
    int max_blocks = 1, row_seq[64], tables[MIXED_SEQS * MIXED_LONGEST];
    for (int i = 0; i < n_seq; i++)
        max_blocks = mb->seqs[i].n_blocks > max_blocks ? mb->seqs[i].n_blocks : max_blocks;
    for (int i = 0; i < n_seq; i++) {
        for (int b = 0; b < max_blocks; b++)
            tables[i * max_blocks + b] = b < mb->seqs[i].n_blocks ? mb->seqs[i].blocks[b] : 0;
        for (int r = mb->q_start[i]; r < mb->q_start[i + 1]; r++)
            row_seq[r] = i;
    }
    const size_t pool_bytes = (size_t)p->num_blocks * p->n_kv_heads * p->block_size * p->D * sizeof(float);
    const size_t n_bytes = mb->n * sizeof(float), t_bytes = (size_t)n_seq * max_blocks * sizeof(int);
    float *dk = cuda_alloc(pool_bytes), *dv = cuda_alloc(pool_bytes);
    float *dq = cuda_alloc(n_bytes), *dout = cuda_alloc(n_bytes);
    int *dt = cuda_alloc(t_bytes), *dl = cuda_alloc(sizeof mb->lens);
    int *dqs = cuda_alloc(sizeof mb->q_start), *drs = cuda_alloc((size_t)rows * sizeof(int));
    cuda_upload(dk, p->k, pool_bytes), cuda_upload(dv, p->v, pool_bytes), cuda_upload(dq, mb->q, n_bytes);
    cuda_upload(dt, tables, t_bytes), cuda_upload(dl, mb->lens, sizeof mb->lens);
    cuda_upload(dqs, mb->q_start, sizeof mb->q_start), cuda_upload(drs, row_seq, (size_t)rows * sizeof(int));
    PagedCudaBatch b = {.k = dk, .v = dv, .num_blocks = p->num_blocks, .Hkv = p->n_kv_heads, .bs = p->block_size,
                        .D = p->D, .tables = dt, .lens = dl, .q_start = dqs, .row_seq = drs, .n_seq = n_seq,
                        .max_blocks = max_blocks, .rows = rows, .max_len = MIXED_LONGEST};
    cuda_memset_nan(dout, n_bytes); /* an element never written must fail */
    const int rc = paged_attention_cuda(kern, &b, mb->H, scale, causal, dq, dout);
    if (rc == 0)
        cuda_download(mb->out, dout, n_bytes);
    cuda_free(dk), cuda_free(dv), cuda_free(dq), cuda_free(dout);
    cuda_free(dt), cuda_free(dl), cuda_free(dqs), cuda_free(drs);
    return rc;
}
#endif

/* A batch of sequences of different lengths and query counts in one call, each kernel against
 * the paged reference, which the grid checks against chapter 04. */
static void verify_mixed(VerifyTally *tally, const AttnImpls *im, const char *device, int only_kernel, int have_gpu,
                         int bs, uint64_t seed)
{
    MixedBatch mb;
    mixed_create(&mb, bs, seed);
    const float scale = 1.0f / sqrtf((float)mb.p.D);
    for (int causal = 0; causal <= 1; causal++) {
        if (paged_attention_ref(&mb.p, 0, mb.H, scale, causal, MIXED_SEQS, mb.ptrs, mb.q_start, mb.q, mb.ref) != 0)
            die_with_error();
        Device devs[2];
        for (int di = 0, n_devs = attn_verify_devices(device, have_gpu, devs); di < n_devs; di++) {
            const Device dev = devs[di];
            const int n_k = dev == DEVICE_CPU ? PAGED_CPU_KERNELS : attn_impl_count(im, DEVICE_CUDA);
            for (int kern = dev == DEVICE_CPU ? 2 : 1; kern <= n_k; kern++) {
                if (only_kernel && kern != only_kernel)
                    continue;
                memset(mb.out, 0xff, mb.n * sizeof(float));
                int rc = -1;
                if (dev == DEVICE_CPU)
                    rc = paged_attention_cpu(kern, &mb.p, 0, mb.H, scale, causal, MIXED_SEQS, mb.ptrs, mb.q_start, mb.q,
                                             mb.out);
#if HAVE_CUDA
                else
                    rc = mixed_run_cuda(&mb, kern, scale, causal);
#endif
                char label[160];
                snprintf(label, sizeof label,
                         "%s %-8s bs=%d mixed batch: lengths 1,%d,%d,%d,700 queries 1,1,2,1,17 causal=%d",
                         device_name(dev), attn_impl_name(im, dev, kern), bs, mb.lens[1], mb.lens[2], mb.lens[3],
                         causal);
                if (rc != 0)
                    fprintf(stderr, "%s: %s\n", label, error_message());
                CompareResult r = compare_f32(label, mb.out, mb.ref, mb.n, 1e-5, 1e-4, rc == 0 ? 3 : 0);
                verify_record(tally, rc == 0 && r.n_bad == 0, "%s  max_abs_err=%.2e", label, r.max_abs_err);
            }
        }
    }
    mixed_free(&mb);
}

/* ==== verify ======================================================================================= */

int paged_cmd_verify(int argc, char **argv)
{
    PagedAttnOptions o = {.block_size = PAGED_ATTN_BLOCK_SIZE, .shuffle_seed = PAGED_ATTN_SHUFFLE_SEED};
    AttnImpls im = paged_impls(&o);
    AttnVerifyArgs a;
    attn_verify_parse(&a, &im,
                      "Checks every paged attention version against chapter 04 (its contiguous cache: the reference\n"
                      "decode kernel for T = 1, chapter 03's flash kernel over the cache for T > 1) on the shape grid\n"
                      "of docs/contracts.md §4.2 -- T, S in {1, 2, 17, 63, 64, 65, 127, 128, 129, 257, 1023}, D in {32, 64, 80,\n"
                      "128}, H:Hkv in {1:1, 4:1, 8:1, 9:3, 8:2}, causal and not, logits of +-1e4 -- once per block size\n"
                      "in {1, 8, 16, 32}, blocks shuffled and every unused slot NaN; then batches of five sequences of\n"
                      "different lengths (decode and prefill rows mixed) against the paged reference.\n"
                      "Tolerance: atol 1e-5, rtol 1e-4. Ends with 'N passed, N failed'.",
                      argc, argv);
    VerifyTally tally = {.passed = 0, .failed = 0, .verbose = a.verbose};
    uint64_t seed = 1;
    for (int i = 0; i < VERIFY_N_BLOCK_SIZES; i++) { /* a round per block size, with its own placement */
        char label[16];
        snprintf(label, sizeof label, "bs=%d", VERIFY_BLOCK_SIZES[i]);
        im.label = label;
        o.block_size = VERIFY_BLOCK_SIZES[i];
        o.shuffle_seed = 1000 + (uint64_t)i;
        attn_verify_grid(&tally, &im, a.device, a.kernel, a.have_gpu, a.quick, &seed);
        verify_mixed(&tally, &im, a.device, a.kernel, a.have_gpu, VERIFY_BLOCK_SIZES[i], seed++);
    }
    return verify_finish(&tally);
}
