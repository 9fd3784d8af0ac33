/*
 * test_kvcache.h: what chapter 04's two test files share. test_kvcache.c checks the model through
 * the cache and the cache itself on the CPU, and holds main(); test_kvcache_program.c the program
 * end to end, the CUDA versions and hostile inputs, and gives those cases to main's table.
 */
#ifndef TEST_KVCACHE_H
#define TEST_KVCACHE_H

#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#include "04_kvcache/kvcache.h"
#include "common/error.h"
#include "common/model.h"
#include "common/testing.h"
#include "common/testing_main.h"

/* A small model for fast tests: GQA 2:1, hidden < dim on purpose, an odd vocabulary. */
static inline ModelConfig small_config(int shared)
{
    return (ModelConfig){.dim = 64, .hidden_dim = 48, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                         .vocab_size = 97, .seq_len = 160, .shared_classifier = shared};
}

/* small_config(shared)'s model, its weights random from seed. */
static inline void small_model(Model *m, int shared, uint64_t seed)
{
    const ModelConfig c = small_config(shared);
    ck_assert_int_eq(model_init_random(m, &c, seed), 0);
}

/* A cache of one layer filled with random rows for n_seq sequences of the given lengths. */
static inline void random_cache(KvCache *c, int n_seq, int Hkv, int max_seq, int D, KvDtype dt, const int *lens,
                                uint64_t seed)
{
    ck_assert_int_eq(kvcache_create(c, 1, n_seq, Hkv, max_seq, D, dt), 0);
    float *row = xmalloc((size_t)2 * Hkv * D * sizeof(float), "row");
    for (int b = 0; b < n_seq; b++)
        for (int t = 0; t < lens[b]; t++) {
            fill_normal(row, (size_t)2 * Hkv * D, seed + (uint64_t)b * 1000 + (uint64_t)t);
            kvcache_write(c, 0, b, t, 1, row, row + Hkv * D);
        }
    free(row);
}

/* test_kvcache_program.c's cases: "program", "hostile inputs" and "cuda". */
TestingCase kvcache_program_case(void);
TestingCase kvcache_hostile_case(void);
TestingCase kvcache_cuda_case(void);
TestingCase kvcache_sampling_lesson_case(void); /* test_sampling_lesson.c: "sampling lesson" */
TestingCase kvcache_tp_shards_case(void);       /* test_tp.c: "tensor parallel shards" */
TestingCase kvcache_tp_ranks_case(void);        /* test_tp_ranks.c: "tensor parallel ranks" (with Open MPI) */

#endif
