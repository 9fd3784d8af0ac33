/*
 * model_weights.c: how a Model holds its weights (see model.h) -- the checkpoint's blocks in file
 * order, the vectors kept as they are and every matrix packed for matmul_packed as it is read or
 * drawn, one matrix at a time: a loaded checkpoint is held once, packed, never twice. And the
 * way back: model_unpack gives the checkpoint's floats again, one matrix at a time, to save the
 * model or upload it to a GPU.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "fileio.h"
#include "matmul.h"
#include "tensor.h"

/* Sizes from a file's header are hostile: every product and sum below saturates at SIZE_MAX
 * instead of wrapping (a header of dim 2^30, heads 2^29, vocab 2^31-10 once declared 2^64 + 156
 * bytes, which wrapped to the 156 bytes of its file and passed the size check). No real size comes
 * near SIZE_MAX, so SIZE_MAX means "too large" and model_check_config refuses it. */
static size_t sat_mul(size_t a, size_t b)
{
    size_t r;
    return size_mul(&r, a, b) == 0 ? r : SIZE_MAX;
}

static size_t sat_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

static size_t sat_mul3(size_t a, size_t b, size_t c) { return sat_mul(sat_mul(a, b), c); }

/* ==== the checkpoint's blocks ========================================================================= */

/* What a block holds, for model_init_random's draws: N(0, 1), ones, N(0, 1/cols), zeros. */
typedef enum { BLOCK_EMBEDDING, BLOCK_NORM, BLOCK_MATRIX, BLOCK_ROPE } BlockKind;

/* The checkpoint's float blocks in file order, for counting, loading, random weights, saving and
 * unpacking alike. A block is `count` pieces of (rows, cols) floats -- a matrix per layer -- and
 * lives at `file` in the checkpoint's layout; the Model keeps it unpacked (`vec`, in m->data),
 * packed (`mat`, in m->p_data, a piece every matmul_packed_floats(rows, cols) floats), or not at
 * all (the unused RoPE tables). */
typedef struct {
    BlockKind kind;
    float **file, **vec, **mat;
    size_t count, rows, cols;
} Block;

static int blocks_of(const ModelConfig *c, ModelTensors *t, ModelWeights *w, ModelPacked *p, Block b[14])
{
    const size_t L = (size_t)c->n_layers, dim = (size_t)c->dim, D = (size_t)(c->dim / c->n_heads);
    const size_t qd = (size_t)c->n_heads * D, kvd = (size_t)c->n_kv_heads * D, hid = (size_t)c->hidden_dim;
    const size_t V = (size_t)c->vocab_size, rope = sat_mul((size_t)c->seq_len, D) / 2;
    const int shared = c->shared_classifier; /* then the embedding is kept once: packed, as the classifier */
    int i = 0;
    b[i++] = (Block){.kind = BLOCK_EMBEDDING, .file = &t->token_embedding, .vec = shared ? NULL : &w->token_embedding,
                     .mat = shared ? &p->wcls : NULL, .count = 1, .rows = V, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_NORM, .file = &t->rms_att, .vec = &w->rms_att, .count = L, .rows = 1, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_MATRIX, .file = &t->wq, .mat = &p->wq, .count = L, .rows = qd, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_MATRIX, .file = &t->wk, .mat = &p->wk, .count = L, .rows = kvd, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_MATRIX, .file = &t->wv, .mat = &p->wv, .count = L, .rows = kvd, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_MATRIX, .file = &t->wo, .mat = &p->wo, .count = L, .rows = dim, .cols = qd};
    b[i++] = (Block){.kind = BLOCK_NORM, .file = &t->rms_ffn, .vec = &w->rms_ffn, .count = L, .rows = 1, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_MATRIX, .file = &t->w1, .mat = &p->w1, .count = L, .rows = hid, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_MATRIX, .file = &t->w2, .mat = &p->w2, .count = L, .rows = dim, .cols = hid};
    b[i++] = (Block){.kind = BLOCK_MATRIX, .file = &t->w3, .mat = &p->w3, .count = L, .rows = hid, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_NORM, .file = &t->rms_final, .vec = &w->rms_final, .count = 1, .rows = 1, .cols = dim};
    b[i++] = (Block){.kind = BLOCK_ROPE, .count = 1, .rows = 1, .cols = rope}; /* freq_cis_real, unused */
    b[i++] = (Block){.kind = BLOCK_ROPE, .count = 1, .rows = 1, .cols = rope}; /* freq_cis_imag, unused */
    if (!shared)
        b[i++] = (Block){.kind = BLOCK_MATRIX, .file = &t->wcls, .mat = &p->wcls, .count = 1, .rows = V, .cols = dim};
    return i;
}

/* Floats of a block in the file, saturating (the sizes may come from a hostile header). */
static size_t block_floats(const Block *b) { return sat_mul3(b->count, b->rows, b->cols); }

/* Floats of a packed block, saturating. rows and cols come from ints (< 2^31 each), so
 * matmul_packed_floats(rows, cols), below (2^31 + MATMUL_NR) * 2^31, cannot wrap a 64-bit size_t. */
static size_t block_packed_floats(const Block *b) { return sat_mul(b->count, matmul_packed_floats(b->rows, b->cols)); }

/* The floats of c's blocks as the checkpoint stores them (packed = 0), or of its matrices
 * packed (packed = 1), saturating. */
static size_t blocks_total(const ModelConfig *c, int packed)
{
    ModelTensors t;
    ModelWeights w;
    ModelPacked p;
    Block b[14];
    size_t total = 0;
    for (int i = 0, n = blocks_of(c, &t, &w, &p, b); i < n; i++)
        if (!packed)
            total = sat_add(total, block_floats(&b[i]));
        else if (b[i].mat)
            total = sat_add(total, block_packed_floats(&b[i]));
    return total;
}

size_t model_checkpoint_floats(const ModelConfig *c) { return blocks_total(c, 0); }

size_t model_checkpoint_bytes(const ModelConfig *c) { return 28 + model_checkpoint_floats(c) * sizeof(float); }

size_t model_packed_floats(const ModelConfig *c) { return blocks_total(c, 1); }

size_t model_param_count(const ModelConfig *c)
{
    const size_t D = (size_t)(c->dim / c->n_heads);
    return model_checkpoint_floats(c) - (size_t)c->seq_len * D;
}

void model_tensors_at(const ModelConfig *c, float *base, ModelTensors *t)
{
    ModelWeights w;
    ModelPacked p;
    Block b[14];
    float *x = base;
    for (int i = 0, n = blocks_of(c, t, &w, &p, b); i < n; i++) {
        if (b[i].file)
            *b[i].file = x;
        x += block_floats(&b[i]);
    }
    if (c->shared_classifier)
        t->wcls = t->token_embedding;
}

/* m->data (the vectors) and m->p_data (the packed matrices) for config c, and every pointer of
 * m->w and m->p into them; the weights are zeros until filled. */
static int alloc_model(Model *m, const ModelConfig *c, const char *what)
{
    memset(m, 0, sizeof *m);
    if (model_check_config(c) != 0)
        return -1;
    m->c = *c;
    ModelTensors t;
    Block b[14];
    const int n = blocks_of(c, &t, &m->w, &m->p, b);
    size_t vec = 0, mat = 0;
    for (int i = 0; i < n; i++)
        vec += b[i].vec ? block_floats(&b[i]) : 0, mat += b[i].mat ? block_packed_floats(&b[i]) : 0;
    m->data = mem_alloc(vec * sizeof(float), what);
    m->p_data = m->data ? mem_alloc(mat * sizeof(float), what) : NULL; /* what: the file, for a load */
    if (!m->p_data) {
        model_free(m);
        return -1;
    }
    float *v = m->data, *x = m->p_data;
    for (int i = 0; i < n; i++) {
        if (b[i].vec)
            *b[i].vec = v, v += block_floats(&b[i]);
        if (b[i].mat)
            *b[i].mat = x, x += block_packed_floats(&b[i]);
    }
    const size_t dim = (size_t)c->dim, qd = (size_t)c->n_heads * model_head_size(c), kvd = (size_t)model_kv_dim(c);
    const size_t hid = (size_t)c->hidden_dim;
    m->p.q = matmul_packed_floats(qd, dim), m->p.kv = matmul_packed_floats(kvd, dim);
    m->p.o = matmul_packed_floats(dim, qd), m->p.up = matmul_packed_floats(hid, dim);
    m->p.down = matmul_packed_floats(dim, hid);
    return 0;
}

/* ==== filling a model, block by block ================================================================== */

/* The next n floats of the checkpoint, which belong to block b, into dst: read from the file
 * (model_load) or drawn (model_init_random). 0, or -1 with an error. */
typedef int (*ModelFill)(void *ctx, const Block *b, float *dst, size_t n);

/* Fills m in checkpoint order: a kept vector straight into its place, every other piece (one
 * matrix) into a scratch buffer the size of that block's pieces, packed from there. The scratch
 * is freed after each block, so the most a load holds is the packed model and one matrix. */
static int fill_model(Model *m, ModelFill fill, void *ctx)
{
    ModelTensors t;
    Block b[14];
    int rc = 0;
    for (int i = 0, n = blocks_of(&m->c, &t, &m->w, &m->p, b); i < n && rc == 0; i++) {
        const size_t piece = b[i].rows * b[i].cols;
        if (b[i].vec) {
            rc = fill(ctx, &b[i], *b[i].vec, b[i].count * piece);
            continue;
        }
        float *scratch = mem_alloc(piece * sizeof(float), "one matrix of the checkpoint, before packing");
        rc = scratch ? 0 : -1;
        for (size_t j = 0; j < b[i].count && rc == 0; j++) {
            rc = fill(ctx, &b[i], scratch, piece);
            if (rc == 0 && b[i].mat)
                matmul_pack_weights(*b[i].mat + j * matmul_packed_floats(b[i].rows, b[i].cols), scratch, b[i].rows,
                                    b[i].cols);
        }
        mem_free(scratch);
    }
    return rc;
}

/* model_init_random's draws, in checkpoint order (the RoPE tables are not drawn). */
static int fill_random(void *ctx, const Block *b, float *dst, size_t n)
{
    Rng *rng = ctx;
    const float std = b->kind == BLOCK_EMBEDDING ? 1.0f : 1.0f / sqrtf((float)b->cols);
    for (size_t i = 0; i < n; i++)
        dst[i] = b->kind == BLOCK_NORM ? 1.0f : b->kind == BLOCK_ROPE ? 0.0f : std * rng_normal(rng);
    return 0;
}

int model_init_random(Model *m, const ModelConfig *c, uint64_t seed)
{
    if (alloc_model(m, c, "model weights") != 0)
        return -1;
    Rng rng;
    rng_seed(&rng, seed);
    if (fill_model(m, fill_random, &rng) != 0) {
        model_free(m);
        return -1;
    }
    return 0;
}

/* model_load's reads: every float checked finite, named by its index among the file's floats. */
typedef struct {
    FILE *f;
    const char *path;
    size_t at; /* floats read so far */
} FileFill;

static int fill_from_file(void *ctx, const Block *b, float *dst, size_t n)
{
    FileFill *r = ctx;
    (void)b;
    if (fread(dst, sizeof(float), n, r->f) != n)
        return error_set("%s: read error", r->path);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return error_set("%s: weight %zu is not finite", r->path, r->at + i);
    r->at += n;
    return 0;
}

int model_load(const char *path, Model *m)
{
    memset(m, 0, sizeof *m);
    size_t have; /* the file's bytes */
    FILE *f = file_open_input_size(path, &have); /* a regular file, or an error: never blocks on a FIFO */
    if (!f)
        return -1;
    ModelConfig c;
    FileFill r = {.f = f, .path = path, .at = 0};
    int rc = model_read_header(f, path, have, &c);
    if (rc == 0)
        rc = alloc_model(m, &c, path);
    if (rc == 0 && fill_model(m, fill_from_file, &r) != 0) {
        model_free(m);
        rc = -1;
    }
    fclose(f);
    return rc;
}

int model_load_or_builtin(const char *checkpoint, Model *m)
{
    if (checkpoint)
        return model_load(checkpoint, m);
    ModelConfig c = model_default_config();
    return model_init_random(m, &c, MODEL_DEFAULT_SEED);
}

/* ==== the checkpoint, given back ======================================================================= */

int model_unpack(const Model *m, ModelPut put, void *ctx)
{
    ModelTensors t;
    ModelWeights w = m->w;
    ModelPacked p = m->p;
    Block b[14];
    int rc = 0;
    for (int i = 0, n = blocks_of(&m->c, &t, &w, &p, b); i < n && rc == 0; i++) {
        const size_t piece = b[i].rows * b[i].cols;
        if (b[i].vec) {
            rc = put(ctx, *b[i].vec, b[i].count * piece);
            continue;
        }
        float *scratch = mem_alloc(piece * sizeof(float), "one matrix of the checkpoint, unpacked"); /* zeros */
        rc = scratch ? 0 : -1;
        for (size_t j = 0; j < b[i].count && rc == 0; j++) {
            if (b[i].mat)
                matmul_unpack_weights(scratch, *b[i].mat + j * matmul_packed_floats(b[i].rows, b[i].cols), b[i].rows,
                                      b[i].cols);
            rc = put(ctx, scratch, piece);
        }
        mem_free(scratch);
    }
    return rc;
}

static int put_copy(void *ctx, const float *x, size_t n)
{
    float **at = ctx;
    memcpy(*at, x, n * sizeof(float));
    *at += n;
    return 0;
}

float *model_unpack_all(const Model *m, ModelTensors *t)
{
    float *all = mem_alloc(model_checkpoint_floats(&m->c) * sizeof(float), "the model, unpacked");
    float *at = all;
    if (!all || model_unpack(m, put_copy, &at) != 0) {
        mem_free(all);
        return NULL;
    }
    model_tensors_at(&m->c, all, t);
    return all;
}

/* out_write remembers a failed write and skips the rest; out_commit reports it */
static int put_out(void *ctx, const float *x, size_t n)
{
    out_write(ctx, x, n * sizeof(float));
    return 0;
}

int model_save(const Model *m, const char *path)
{
    OutFile o; /* a temporary file renamed over path at the end: a failed write keeps the old one */
    if (out_open(&o, path) != 0)
        return -1;
    const ModelConfig *c = &m->c;
    int32_t h[7] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
                    c->shared_classifier ? c->vocab_size : -c->vocab_size, c->seq_len};
    out_write(&o, h, sizeof h);
    if (model_unpack(m, put_out, &o) != 0) {
        out_abort(&o);
        return -1;
    }
    return out_commit(&o);
}

void model_free(Model *m)
{
    mem_free(m->data);
    mem_free(m->p_data);
    memset(m, 0, sizeof *m);
}

