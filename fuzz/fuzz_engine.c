/*
 * fuzz_engine.c: chapter 05's block allocator and chapter 06's scheduler driven by the input.
 *
 * Even first byte: a sequence of allocator operations (append, fork, free, truncate, shuffle)
 * on a pool and six tables, paged_check after every one; a refused append (PAGED_EXHAUSTED) must
 * change nothing; at the end everything is freed and the pool is full again.
 * Odd first byte: the engine's options (any of the three policies, batch, token budget, block
 * size, pool size) and up to ten requests (arrival, prompt, max_new, abort time) from the
 * input, served on a tiny model with check_invariants on (the pool's invariants after every step): it must finish (no
 * stall), give every completed request max_new tokens, reject or abort only with a reason, and
 * give every block back (engine_serve checks that itself). Arrivals, steps, finishes, aborts
 * and preemptions all happen inside; fork is the allocator's (the engine does not fork).
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
    o.policy = policies[next(b) % 3];
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
        r[n] = (EngineRequest){arrival, max_new, np, malloc((size_t)np * sizeof(int)), abort_at, NULL};
        for (int t = 0; t < np; t++)
            r[n].prompt[t] = next(b) % 50;
        n++;
    }
    EngineResult res[10];
    EngineMetrics mt;
    if (n > 0 && engine_serve(&model, r, n, &o, res, &mt) != 0)
        fuzz_fail("engine: %s", error_message());
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
