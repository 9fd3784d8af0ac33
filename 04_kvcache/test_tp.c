/*
 * test_tp.c: chapter 04's tensor parallelism (tp.h, common/model.h's ModelShard) -- the cases
 * "tensor parallel shards" and "tensor parallel ranks" of chapter 04's suite.
 *
 * Shards, in process: model_shard_plan's ranges tile every head, kv head, SwiGLU column and
 * vocabulary row exactly once (kv heads once per replica) and refuse the numbers of ranks the rules
 * forbid; a shard's weights, drawn or loaded from a checkpoint, are exactly the slices of the whole
 * model's, cut here by plain index arithmetic.
 *
 * Ranks, through `mpirun -np N 04_kvcache_tp` (when Open MPI is installed; make test installs it):
 * the greedy tokens of N = 1, 2, 4 equal the single-process model's (this suite's kvcache_generate)
 * on checkpoints with GQA 4:1 and 2:1 and with shared and unshared classifiers, and every step's
 * logits agree within TP_LOGITS_RTOL (1 rank: bit for bit); each rank's resident memory grows by
 * about 1/N of the weights and the cache; a bad N is one error line from rank 0 and every rank's exit.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "04_kvcache/kvcache.h"
#include "04_kvcache/test_kvcache.h"
#include "common/matmul.h"
#include "common/npy.h"
#include "common/tensor.h"
#include "common/testing.h"

/* The ranks' logits against one process's: |a - b| <= TP_LOGITS_RTOL * max(1, max |b|) per step.
 * The all-reduces add the ranks' partial sums in another order than one process adds the whole
 * dot products; measured on these models the worst step is ~1e-6 of the largest logit. */
#define TP_LOGITS_RTOL 1e-4

/* ==== shards, in process ============================================================================== */

/* Every rank's ranges for world ranks: each query head, SwiGLU column and vocabulary row exactly
 * once; each rank's query heads read kv heads it holds. NULL, or what is wrong. */
static const char *check_tiling(const ModelConfig *c, int world)
{
    static char why[256];
    const int G = c->n_heads / c->n_kv_heads;
    int next_h = 0, next_f = 0, next_v = 0;
    for (int r = 0; r < world; r++) {
        ModelShard s;
        if (model_shard_plan(c, r, world, &s) != 0)
            return snprintf(why, sizeof why, "world %d rank %d refused: %s", world, r, error_message()), why;
        if (s.h0 != next_h || s.f0 != next_f || s.v0 != next_v || s.n_h < 1 || s.n_f < 1 || s.n_v < 1)
            return snprintf(why, sizeof why, "world %d rank %d: ranges do not follow on", world, r), why;
        next_h += s.n_h, next_f += s.n_f, next_v += s.n_v;
        if (s.h0 / G != s.kv0 || (s.h0 + s.n_h - 1) / G != s.kv0 + s.n_kv - 1)
            return snprintf(why, sizeof why, "world %d rank %d: heads %d.. read kv heads it lacks", world, r, s.h0), why;
    }
    if (next_h != c->n_heads || next_f != c->hidden_dim || next_v != c->vocab_size)
        return snprintf(why, sizeof why, "world %d: the ranges do not cover the model", world), why;
    return NULL;
}

START_TEST(test_shard_plan_rules)
{
    ModelConfig c = small_config(0); /* 4 heads over 2 kv heads, hidden 48, vocab 97 */
    for (int world = 1; world <= 4; world *= 2) {
        const char *why = check_tiling(&c, world);
        ck_assert_msg(!why, "%s", why);
    }
    ModelShard s;
    ck_assert_int_eq(model_shard_plan(&c, 0, 3, &s), -1); /* 3 ranks: neither divides 2 nor a multiple of 2 */
    ck_assert_msg(strstr(error_message(), "multiple of 2"), "%s", error_message());
    ck_assert_int_eq(model_shard_plan(&c, 0, 8, &s), -1); /* more ranks than query heads */
    ck_assert_msg(strstr(error_message(), "8 ranks but the model has 4 query heads"), "%s", error_message());
    c.n_kv_heads = 4, c.n_heads = 8, c.dim = 64;
    ck_assert_int_eq(model_shard_plan(&c, 1, 3, &s), -1);
    ck_assert_msg(strstr(error_message(), "3 ranks do not divide the model's 4 kv heads"), "%s", error_message());
    ck_assert_int_eq(model_shard_plan(&c, 2, 2, &s), -1); /* no rank 2 of 2 */
    /* replication: 4 ranks over 2 kv heads hold kv heads 0, 0, 1, 1 */
    c = small_config(1);
    for (int r = 0; r < 4; r++) {
        ck_assert_int_eq(model_shard_plan(&c, r, 4, &s), 0);
        ck_assert_msg(s.n_kv == 1 && s.kv0 == r / 2 && s.n_h == 1 && s.h0 == r, "rank %d: kv %d+%d, q %d+%d", r, s.kv0,
                      s.n_kv, s.h0, s.n_h);
    }
}
END_TEST

/* Rows [r0, r0+nr) and columns [c0, c0+nc) of the whole (rows, cols) matrix w equal the shard's
 * packed matrix, unpacked. */
static int slice_equal(const float *packed, const float *w, size_t cols, size_t r0, size_t nr, size_t c0, size_t nc)
{
    float *u = xmalloc(nr * nc * sizeof(float), "unpacked shard matrix");
    matmul_unpack_weights(u, packed, nr, nc);
    int same = 1;
    for (size_t i = 0; i < nr && same; i++)
        same = memcmp(u + i * nc, w + (r0 + i) * cols + c0, nc * sizeof(float)) == 0;
    free(u);
    return same;
}

/* Every matrix and vector of shard m equals its slice of the whole model's tensors t. */
static void expect_slices(const Model *m, const ModelTensors *t)
{
    const ModelConfig *c = &m->c;
    const ModelShard *s = &m->s;
    const size_t dim = (size_t)c->dim, D = (size_t)model_head_size(c), hid = (size_t)c->hidden_dim;
    const size_t qd = (size_t)c->n_heads * D, kvd = (size_t)c->n_kv_heads * D, V = (size_t)c->vocab_size;
    const size_t q0 = (size_t)s->h0 * D, nq = (size_t)s->n_h * D, k0 = (size_t)s->kv0 * D, nk = (size_t)s->n_kv * D;
    for (size_t l = 0; l < (size_t)c->n_layers; l++) {
        ck_assert(slice_equal(m->p.wq + l * m->p.q, t->wq + l * qd * dim, dim, q0, nq, 0, dim));
        ck_assert(slice_equal(m->p.wk + l * m->p.kv, t->wk + l * kvd * dim, dim, k0, nk, 0, dim));
        ck_assert(slice_equal(m->p.wv + l * m->p.kv, t->wv + l * kvd * dim, dim, k0, nk, 0, dim));
        ck_assert(slice_equal(m->p.wo + l * m->p.o, t->wo + l * dim * qd, qd, 0, dim, q0, nq));
        ck_assert(slice_equal(m->p.w1 + l * m->p.up, t->w1 + l * hid * dim, dim, (size_t)s->f0, (size_t)s->n_f, 0, dim));
        ck_assert(slice_equal(m->p.w3 + l * m->p.up, t->w3 + l * hid * dim, dim, (size_t)s->f0, (size_t)s->n_f, 0, dim));
        ck_assert(slice_equal(m->p.w2 + l * m->p.down, t->w2 + l * dim * hid, hid, 0, dim, (size_t)s->f0, (size_t)s->n_f));
    }
    ck_assert(slice_equal(m->p.wcls, t->wcls, dim, (size_t)s->v0, (size_t)s->n_v, 0, dim));
    if (!c->shared_classifier)
        ck_assert(memcmp(m->w.token_embedding, t->token_embedding + (size_t)s->v0 * dim,
                         (size_t)s->n_v * dim * sizeof(float)) == 0);
    ck_assert(memcmp(m->w.rms_att, t->rms_att, (size_t)c->n_layers * dim * sizeof(float)) == 0);
    ck_assert(memcmp(m->w.rms_final, t->rms_final, dim * sizeof(float)) == 0);
    (void)V;
}

START_TEST(test_shard_weights_are_slices_of_the_whole)
{
    for (int shared = 0; shared < 2; shared++) {
        const ModelConfig c = small_config(shared);
        Model whole;
        ck_assert_int_eq(model_init_random(&whole, &c, 99), 0);
        ModelTensors t;
        float *all = model_unpack_all(&whole, &t);
        ck_assert_ptr_nonnull(all);
        char path[4200];
        ck_assert_int_eq(model_save(&whole, testing_tmp_path(path, sizeof path, "whole.bin")), 0);
        for (int world = 2; world <= 4; world *= 2)
            for (int r = 0; r < world; r++) {
                ModelShard s;
                ck_assert_int_eq(model_shard_plan(&c, r, world, &s), 0);
                Model drawn, loaded;
                ck_assert_int_eq(model_init_random_shard(&drawn, &c, 99, &s), 0);
                ck_assert_int_eq(model_load_shard(path, r, world, &loaded), 0);
                expect_slices(&drawn, &t);  /* drawn whole, sliced */
                expect_slices(&loaded, &t); /* read slice by slice from the file */
                ck_assert_int_eq(model_save(&loaded, path), -1); /* a shard is not a checkpoint */
                ck_assert_msg(strstr(error_message(), "holds a shard"), "%s", error_message());
                model_free(&drawn), model_free(&loaded);
            }
        mem_free(all);
        model_free(&whole);
    }
}
END_TEST

TestingCase kvcache_tp_shards_case(void)
{
    return (TestingCase){.name = "tensor parallel shards", .timeout_s = 60, .temp_dir = 1,
                         .tests = {test_shard_plan_rules, test_shard_weights_are_slices_of_the_whole}};
}
