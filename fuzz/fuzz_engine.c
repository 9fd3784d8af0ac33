/*
 * fuzz_engine.c: chapter 05's block allocator and chapter 06's scheduler driven by the input.
 *
 * Even first byte: a sequence of allocator operations (append, fork, free, truncate, shuffle)
 * on a pool and six tables, paged_check after every one; a refused append (PAGED_EXHAUSTED) must
 * change nothing; at the end everything is freed and the pool is full again.
 * Odd first byte: the engine's options (any of the three policies, prefix caching on or off,
 * batch, token budget, block size, pool size) and up to ten requests (arrival, prompt, max_new,
 * abort time) from the input -- a prompt id byte of 200 or more repeats the previous request's id
 * at that position, so prompts share prefixes --, served on a tiny model with check_invariants on
 * (the pool's invariants after every step): it must finish (no stall), give every completed
 * request max_new tokens, reject or abort only with a reason, and give every block back
 * (engine_serve checks that itself). With prefix caching on the same requests are served again
 * with it off: every request gets the same tokens (up to where an abort stopped it, which happens
 * at another step when fewer tokens are computed). Arrivals, steps, finishes, aborts, preemptions,
 * cache hits and evictions all happen inside; fork is the allocator's (the engine does not fork).
 */
#include <stdlib.h>
#include <string.h>

#include "05_paged/paged.h"
#include "06_batching/engine.h"
#include "common/error.h"
#include "fuzz/fuzz.h"

typedef struct {
    const uint8_t *p;
    size_t n;
} Bytes;

static int next(Bytes *b)
{
    if (b->n == 0)
        return 0;
    b->n--;
    return *b->p++;
}

static void allocator_ops(Bytes *b)
{
    PagedPool p;
    if (paged_pool_create(&p, 1, 1, 2, 1 + next(b) % 8, 1 + next(b) % 32) != 0)
        fuzz_fail("pool: %s", error_message());
    enum { N = 6 };
    PagedSeq s[N], *all[N];
    for (int i = 0; i < N; i++)
        paged_seq_init(&s[i]), all[i] = &s[i];
    while (b->n > 0) {
        const int op = next(b) % 5, i = next(b) % N;
        if (op == 0) {
            const int len = s[i].len, nb = s[i].n_blocks, free0 = p.n_free, k = 1 + next(b) % 9;
            const int rc = paged_seq_append(&p, &s[i], k);
            if (rc == PAGED_EXHAUSTED && (s[i].len != len || s[i].n_blocks != nb || p.n_free != free0))
                fuzz_fail("a refused append changed the pool or the table");
            if (rc != 0 && rc != PAGED_EXHAUSTED)
                fuzz_fail("append: %s", error_message());
        } else if (op == 1) {
            const int j = next(b) % N;
            if (j != i && s[j].len == 0 && s[j].n_blocks == 0 && paged_seq_fork(&p, &s[i], &s[j]) != 0)
                fuzz_fail("fork: %s", error_message());
        } else if (op == 2) {
            if (paged_seq_free(&p, &s[i]) != 0)
                fuzz_fail("free: %s", error_message());
        } else if (op == 3) {
            if (paged_seq_truncate(&p, &s[i], s[i].len ? next(b) % (s[i].len + 1) : 0) != 0)
                fuzz_fail("truncate: %s", error_message());
        } else {
            paged_pool_shuffle(&p, (uint64_t)next(b) + 1);
        }
        if (paged_check(&p, all, N) != 0)
            fuzz_fail("after operation %d: %s", op, error_message());
    }
    for (int i = 0; i < N; i++)
        paged_seq_free(&p, &s[i]);
    if (p.n_free != p.num_blocks)
        fuzz_fail("the pool is not full after freeing everything");
    paged_pool_free(&p);
}

static Model model;

/* The requests served again with prefix caching off: the same tokens for every request, up to
 * where the shorter of the two stopped (an abort comes at a time, and so at another step). */
static void same_without_caching(const EngineRequest *r, int n, const EngineOptions *o, const EngineResult *with)
{
    EngineOptions off = *o;
    off.prefix_caching = 0;
    EngineResult res[10];
    EngineMetrics mt;
    if (engine_serve(&model, r, n, &off, res, &mt) != 0)
        fuzz_fail("engine, caching off: %s", error_message());
    for (int i = 0; i < n; i++) {
        const int k = res[i].n_tokens < with[i].n_tokens ? res[i].n_tokens : with[i].n_tokens;
        if (res[i].status == ENGINE_REJECTED ? with[i].status != ENGINE_REJECTED
                                             : memcmp(res[i].tokens, with[i].tokens, (size_t)k * sizeof(int)) != 0)
            fuzz_fail("request %d: other tokens with prefix caching than without", i);
        if (res[i].status == ENGINE_DONE && with[i].status == ENGINE_DONE && res[i].n_tokens != with[i].n_tokens)
            fuzz_fail("request %d: %d tokens with prefix caching, %d without", i, with[i].n_tokens, res[i].n_tokens);
    }
    engine_free_results(res, n);
    engine_free_metrics(&mt);
}

static void scheduler(Bytes *b)
{
    if (!model.data) {
        ModelConfig c = {.dim = 16, .hidden_dim = 24, .n_layers = 1, .n_heads = 2, .n_kv_heads = 1,
                         .vocab_size = 50, .seq_len = 64, .shared_classifier = 0};
        if (model_init_random(&model, &c, 3) != 0)
            fuzz_fail("model: %s", error_message());
    }
    EngineOptions o = engine_default_options();
    const EnginePolicy policies[3] = {ENGINE_CONTINUOUS, ENGINE_STATIC, ENGINE_STATIC_PADDED};
    const int policy_byte = next(b);
    o.policy = policies[policy_byte % 3];
    o.prefix_caching = (policy_byte / 3) % 2 == 0; /* on for the small bytes: the default */
    o.max_batch = 1 + next(b) % 8, o.max_tokens = 1 + next(b) % 32, o.block_size = 1 + next(b) % 8;
    o.num_blocks = 1 + next(b) % 48, o.temperature = next(b) % 2 ? 0.8f : 0.0f, o.seed = (uint64_t)next(b);
    o.fixed_step_s = 0.01, o.check_invariants = 1, o.shuffle = (uint64_t)next(b);
    EngineRequest r[10];
    int n = 0;
    while (b->n > 0 && n < 10) {
        /* one byte each, in this order: prompt length, arrival, max_new, abort (below 64: the
         * client goes away that many steps after it arrives), then the prompt's ids */
        const int np = 1 + next(b) % 20;
        const double arrival = next(b) * 0.01;
        const int max_new = next(b) % 24, abort_byte = next(b);
        const double abort_at = abort_byte < 64 ? arrival + abort_byte * 0.01 + 1e-6 : 0.0;
        r[n] = (EngineRequest){.arrival = arrival, .max_new = max_new, .n_prompt = np,
                               .prompt = malloc((size_t)np * sizeof(int)), .abort_at = abort_at};
        for (int t = 0; t < np; t++) {
            const int id = next(b);
            r[n].prompt[t] = id >= 200 && n > 0 && t < r[n - 1].n_prompt ? r[n - 1].prompt[t] : id % 50;
        }
        n++;
    }
    EngineResult res[10];
    EngineMetrics mt;
    if (n > 0 && engine_serve(&model, r, n, &o, res, &mt) != 0)
        fuzz_fail("engine: %s", error_message());
    if (n > 0 && o.prefix_caching)
        same_without_caching(r, n, &o, res);
    for (int i = 0; i < n; i++) {
        if (res[i].status == ENGINE_DONE && res[i].n_tokens != r[i].max_new)
            fuzz_fail("request %d: %d tokens of %d", i, res[i].n_tokens, r[i].max_new);
        if (res[i].status != ENGINE_DONE && !res[i].reason[0])
            fuzz_fail("request %d rejected or aborted without a reason", i);
        if (res[i].status == ENGINE_ABORTED && (r[i].abort_at <= 0 || res[i].n_tokens > r[i].max_new))
            fuzz_fail("request %d aborted with no abort time, or with too many tokens", i);
    }
    if (n > 0) {
        engine_free_results(res, n);
        engine_free_metrics(&mt);
    }
    for (int i = 0; i < n; i++)
        free(r[i].prompt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Bytes b = {data, size};
    if (size == 0)
        return 0;
    if (next(&b) % 2 == 0)
        allocator_ops(&b);
    else
        scheduler(&b);
    return 0;
}
