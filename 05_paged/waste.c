/*
 * waste.c: the measurements behind chapter 05's lesson (waste.h) -- what contiguous reservations
 * waste against paging, and what fork saves -- counted by the allocators themselves.
 *
 * What it teaches: the waste of a contiguous cache is not a formula someone asserts; run the
 * requests through chapter 04's caches and through the block pool, and read what each allocated.
 * A cache of max_seq positions per request holds mostly empty slots; even a cache sized to the
 * request's final length holds the slots of tokens not generated yet; a paged sequence holds at
 * most block_size - 1 empty slots, in its last block. The tests (test_paged.c) check every
 * figure on a workload small enough to count by hand.
 */
#include "05_paged/waste.h"

#include "04_kvcache/kvcache.h"
#include "05_paged/paged.h"
#include "common/error.h"
#include "common/tensor.h"

int paged_waste_workload(WorkloadKind kind, int n, int max_seq, uint64_t seed, WorkloadItem **items)
{
    const int skewed = kind == WORKLOAD_SKEWED;
    const WorkloadSpec spec = {
        .n = n,
        .rate = 0.0, /* arrivals do not matter here: requests run one after the other */
        .kind = kind,
        .prompt_median = skewed ? PAGED_WASTE_PROMPT_MEDIAN : PAGED_WASTE_UNIFORM_MEDIAN,
        .out_median = skewed ? PAGED_WASTE_OUT_MEDIAN : PAGED_WASTE_UNIFORM_MEDIAN,
        .seq_len = max_seq,
        .vocab = 0, /* lengths only */
        .seed = seed,
    };
    return workload_make(&spec, items);
}

/* Contiguous: one chapter 04 cache per request, of max_seq or of the request's final length. */
static int waste_contiguous(const WorkloadItem *reqs, int n, int scheme, int max_seq, int budget_tokens,
                            PagedWaste *out)
{
    const size_t tok_bytes = kvcache_bytes_per_token(1, 1, 1, KV_F32); /* a 1-layer, 1-head, D = 1 cache */
    double held = 0.0, alloc = 0.0;
    for (int i = 0; i < n; i++) {
        KvCache c;
        const int reserve = scheme == PAGED_RESERVE_MAX_SEQ ? max_seq : reqs[i].prompt_len + reqs[i].output_len;
        if (kvcache_create(&c, 1, 1, 1, reserve, 1, KV_F32) != 0)
            return -1;
        for (int s = 1; s <= reqs[i].output_len; s++)
            held += (double)(reqs[i].prompt_len + s) * tok_bytes, alloc += (double)kvcache_bytes(&c);
        kvcache_free(&c);
    }
    *out = (PagedWaste){.used_frac = held / alloc, .fit = 0};
    long sum = 0;
    for (int i = 0; i < n; i++) {
        sum += scheme == PAGED_RESERVE_MAX_SEQ ? max_seq : reqs[i].prompt_len + reqs[i].output_len;
        if (sum > budget_tokens)
            break;
        out->fit++;
    }
    return 0;
}

/* Paging, the used fraction: one sequence at a time in a pool of max_seq tokens' blocks. */
static int paged_used_fraction(const WorkloadItem *reqs, int n, int bs, int max_seq, double *used_frac)
{
    const size_t tok_bytes = kvcache_bytes_per_token(1, 1, 1, KV_F32);
    PagedPool p;
    if (paged_pool_create(&p, 1, 1, 1, bs, (max_seq + bs - 1) / bs) != 0)
        return -1;
    const double block_bytes = (double)paged_block_bytes(&p);
    double held = 0.0, alloc = 0.0;
    PagedSeq s;
    paged_seq_init(&s);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        rc = paged_seq_append(&p, &s, reqs[i].prompt_len);
        for (int t = 1; t <= reqs[i].output_len && rc == 0; t++)
            if ((rc = paged_seq_append(&p, &s, 1)) == 0)
                held += (double)s.len * tok_bytes, alloc += paged_pool_used(&p) * block_bytes;
        paged_seq_free(&p, &s);
    }
    paged_pool_free(&p);
    *used_frac = held / alloc;
    return rc == 0 ? 0 : -1;
}

/* Paging, the fit: a pool of the budget's blocks, each request appended at its final length
 * until the pool is exhausted. */
static int paged_fit(const WorkloadItem *reqs, int n, int bs, int budget_tokens, int *fit)
{
    PagedPool p;
    if (paged_pool_create(&p, 1, 1, 1, bs, budget_tokens / bs) != 0)
        return -1;
    PagedSeq *seqs = mem_alloc((size_t)n * sizeof(PagedSeq), "block tables (n requests)"); /* zeroed: empty tables */
    int rc = seqs ? 0 : -1;
    *fit = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        rc = paged_seq_append(&p, &seqs[i], reqs[i].prompt_len + reqs[i].output_len);
        if (rc == PAGED_EXHAUSTED) {
            rc = 0;
            break;
        }
        if (rc == 0)
            (*fit)++;
    }
    for (int i = 0; i < n && seqs; i++)
        paged_seq_free(&p, &seqs[i]);
    if (rc == 0 && p.n_free != p.num_blocks)
        rc = error_set("the pool did not return to full after the waste measurement");
    mem_free(seqs);
    paged_pool_free(&p);
    return rc;
}

int paged_waste_measure(const WorkloadItem *reqs, int n, int scheme, int max_seq, int budget_tokens,
                        PagedWaste *out)
{
    if (n < 1 || max_seq < 1 || budget_tokens < 1 || scheme < PAGED_RESERVE_MAX_SEQ)
        return error_set("waste measurement: n (%d), max_seq (%d) and the budget (%d) must be positive, the scheme "
                         "(%d) -1, 0 or a block size",
                         n, max_seq, budget_tokens, scheme);
    if (scheme <= PAGED_RESERVE_OWN)
        return waste_contiguous(reqs, n, scheme, max_seq, budget_tokens, out);
    *out = (PagedWaste){.used_frac = 0.0, .fit = 0};
    if (paged_used_fraction(reqs, n, scheme, max_seq, &out->used_frac) != 0)
        return -1;
    return paged_fit(reqs, n, scheme, budget_tokens, &out->fit);
}

/* One run of paged_fork_measure: share = 0, every sample prefills its own prompt; 1, samples
 * 1..n-1 fork sample 0. */
static int fork_run(int n_prompt, int new_tokens, int n, int bs, int share, PagedForkCost *out)
{
    PagedPool p;
    if (paged_pool_create(&p, 1, 1, 1, bs, n * ((n_prompt + new_tokens + bs - 1) / bs + 1)) != 0)
        return -1;
    PagedSeq *s = mem_alloc((size_t)n * sizeof(PagedSeq), "block tables (n samples)"); /* zeroed: empty tables */
    int rc = s ? 0 : -1;
    for (int i = 0; i < n && rc == 0; i++)
        rc = share && i > 0 ? paged_seq_fork(&p, &s[0], &s[i]) : paged_seq_append(&p, &s[i], n_prompt);
    for (int t = 0; t < new_tokens && rc == 0; t++)
        for (int i = 0; i < n && rc == 0; i++)
            rc = paged_seq_append(&p, &s[i], 1);
    if (share) {
        out->peak_forked = p.peak_used, out->cow_copies = p.n_cow_copies, out->shared_blocks = 0;
        for (int id = 0; id < p.num_blocks; id++)
            out->shared_blocks += p.ref[id] > 1;
    } else {
        out->peak_unshared = p.peak_used;
    }
    for (int i = 0; i < n && s; i++)
        paged_seq_free(&p, &s[i]);
    mem_free(s);
    paged_pool_free(&p);
    return rc == 0 ? 0 : -1;
}

int paged_fork_measure(int n_prompt, int new_tokens, int n_samples, int bs, PagedForkCost *out)
{
    *out = (PagedForkCost){.peak_unshared = 0, .peak_forked = 0, .cow_copies = 0, .shared_blocks = 0};
    if (n_prompt < 1 || new_tokens < 0 || n_samples < 1 || bs < 1)
        return error_set("fork measurement: a prompt of %d tokens, %d new, %d samples, block size %d", n_prompt,
                         new_tokens, n_samples, bs);
    if (fork_run(n_prompt, new_tokens, n_samples, bs, 0, out) != 0)
        return -1;
    return fork_run(n_prompt, new_tokens, n_samples, bs, 1, out);
}
