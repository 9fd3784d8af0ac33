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
 * packed (`mat`, in m->p_data, a piece every matmul_packed_floats(nr, nc) floats), or not at
 * all (the unused RoPE tables). Of each piece it keeps rows r0 .. r0+nr-1 and columns
 * c0 .. c0+nc-1: all of it for the whole model, a shard's part otherwise (model.h's ModelShard). */
typedef struct {
    BlockKind kind;
    float **file, **vec, **mat;
    size_t count, rows, cols;
    size_t r0, nr, c0, nc; /* the part kept */
} Block;

/* A block of `count` pieces of (rows, cols), all kept. */
static Block block(BlockKind kind, float **file, size_t count, size_t rows, size_t cols)
{
    return (Block){.kind = kind, .file = file, .count = count, .rows = rows, .cols = cols, .nr = rows, .nc = cols};
}

/* The same block keeping rows [r0, r0 + nr) of each piece (a shard's heads of Wq, its SwiGLU rows
 * of W1), or columns [c0, c0 + nc) (its heads of Wo, its columns of W2). */
static Block rows_of(Block b, size_t r0, size_t nr) { return b.r0 = r0, b.nr = nr, b; }
static Block cols_of(Block b, size_t c0, size_t nc) { return b.c0 = c0, b.nc = nc, b; }

static int blocks_of(const ModelConfig *c, const ModelShard *s, ModelTensors *t, ModelWeights *w, ModelPacked *p,
                     Block b[14])
{
    const size_t L = (size_t)c->n_layers, dim = (size_t)c->dim, D = (size_t)(c->dim / c->n_heads);
    const size_t qd = (size_t)c->n_heads * D, kvd = (size_t)c->n_kv_heads * D, hid = (size_t)c->hidden_dim;
    const size_t V = (size_t)c->vocab_size, rope = sat_mul((size_t)c->seq_len, D) / 2;
    /* the shard's ranges (the whole model: everything) */
    const size_t q0 = (size_t)s->h0 * D, nq = (size_t)s->n_h * D, k0 = (size_t)s->kv0 * D, nk = (size_t)s->n_kv * D;
    const size_t f0 = (size_t)s->f0, nf = (size_t)s->n_f, v0 = (size_t)s->v0, nv = (size_t)s->n_v;
    const int shared = c->shared_classifier; /* then the embedding is kept once: packed, as the classifier */
    int i = 0;
    b[i] = rows_of(block(BLOCK_EMBEDDING, &t->token_embedding, 1, V, dim), v0, nv);
    b[i].vec = shared ? NULL : &w->token_embedding, b[i++].mat = shared ? &p->wcls : NULL;
    b[i] = block(BLOCK_NORM, &t->rms_att, L, 1, dim), b[i++].vec = &w->rms_att;
    b[i] = rows_of(block(BLOCK_MATRIX, &t->wq, L, qd, dim), q0, nq), b[i++].mat = &p->wq;
    b[i] = rows_of(block(BLOCK_MATRIX, &t->wk, L, kvd, dim), k0, nk), b[i++].mat = &p->wk;
    b[i] = rows_of(block(BLOCK_MATRIX, &t->wv, L, kvd, dim), k0, nk), b[i++].mat = &p->wv;
    b[i] = cols_of(block(BLOCK_MATRIX, &t->wo, L, dim, qd), q0, nq), b[i++].mat = &p->wo;
    b[i] = block(BLOCK_NORM, &t->rms_ffn, L, 1, dim), b[i++].vec = &w->rms_ffn;
    b[i] = rows_of(block(BLOCK_MATRIX, &t->w1, L, hid, dim), f0, nf), b[i++].mat = &p->w1;
    b[i] = cols_of(block(BLOCK_MATRIX, &t->w2, L, dim, hid), f0, nf), b[i++].mat = &p->w2;
    b[i] = rows_of(block(BLOCK_MATRIX, &t->w3, L, hid, dim), f0, nf), b[i++].mat = &p->w3;
    b[i] = block(BLOCK_NORM, &t->rms_final, 1, 1, dim), b[i++].vec = &w->rms_final;
    b[i++] = block(BLOCK_ROPE, NULL, 1, 1, rope); /* freq_cis_real, unused */
    b[i++] = block(BLOCK_ROPE, NULL, 1, 1, rope); /* freq_cis_imag, unused */
    if (!shared)
        b[i] = rows_of(block(BLOCK_MATRIX, &t->wcls, 1, V, dim), v0, nv), b[i++].mat = &p->wcls;
    return i;
}

/* Floats of a block in the file, saturating (the sizes may come from a hostile header). */
static size_t block_floats(const Block *b) { return sat_mul3(b->count, b->rows, b->cols); }

/* Floats of the part of a block a model keeps unpacked (its vectors). */
static size_t block_kept_floats(const Block *b) { return sat_mul3(b->count, b->nr, b->nc); }

/* Floats of a packed block, saturating. rows and cols come from ints (< 2^31 each), so
 * matmul_packed_floats(rows, cols), below (2^31 + MATMUL_NR) * 2^31, cannot wrap a 64-bit size_t. */
static size_t block_packed_floats(const Block *b) { return sat_mul(b->count, matmul_packed_floats(b->nr, b->nc)); }

/* The whole model as a shard: world 1, every range everything. */
static ModelShard whole(const ModelConfig *c)
{
    return (ModelShard){.rank = 0, .world = 1, .h0 = 0, .n_h = c->n_heads, .kv0 = 0, .n_kv = c->n_kv_heads,
                        .f0 = 0, .n_f = c->hidden_dim, .v0 = 0, .n_v = c->vocab_size};
}

/* The floats of shard s's blocks as the checkpoint stores them (packed = 0, the whole blocks), or
 * as the shard keeps them (packed = 1: its matrices packed, its vectors), saturating. */
static size_t blocks_total(const ModelConfig *c, const ModelShard *s, int packed, int with_vectors)
{
    ModelTensors t;
    ModelWeights w;
    ModelPacked p;
    Block b[14];
    size_t total = 0;
    for (int i = 0, n = blocks_of(c, s, &t, &w, &p, b); i < n; i++)
        if (!packed)
            total = sat_add(total, block_floats(&b[i]));
        else if (b[i].mat)
            total = sat_add(total, block_packed_floats(&b[i]));
        else if (b[i].vec && with_vectors)
            total = sat_add(total, block_kept_floats(&b[i]));
    return total;
}

size_t model_checkpoint_floats(const ModelConfig *c)
{
    const ModelShard s = whole(c);
    return blocks_total(c, &s, 0, 0);
}

size_t model_checkpoint_bytes(const ModelConfig *c) { return 28 + model_checkpoint_floats(c) * sizeof(float); }

size_t model_packed_floats(const ModelConfig *c)
{
    const ModelShard s = whole(c);
    return blocks_total(c, &s, 1, 0);
}

size_t model_shard_floats(const ModelConfig *c, const ModelShard *s) { return blocks_total(c, s, 1, 1); }

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
    const ModelShard s = whole(c);
    for (int i = 0, n = blocks_of(c, &s, t, &w, &p, b); i < n; i++) {
        if (b[i].file)
            *b[i].file = x;
        x += block_floats(&b[i]);
    }
    if (c->shared_classifier)
        t->wcls = t->token_embedding;
}

/* m->data (the vectors) and m->p_data (the packed matrices) for shard s of config c, and every
 * pointer of m->w and m->p into them; the weights are zeros until filled. */
static int alloc_model(Model *m, const ModelConfig *c, const ModelShard *s, const char *what)
{
    memset(m, 0, sizeof *m);
    if (model_check_config(c) != 0)
        return -1;
    m->c = *c;
    m->s = *s;
    ModelTensors t;
    Block b[14];
    const int n = blocks_of(c, s, &t, &m->w, &m->p, b);
    size_t vec = 0, mat = 0;
    for (int i = 0; i < n; i++)
        vec += b[i].vec ? block_kept_floats(&b[i]) : 0, mat += b[i].mat ? block_packed_floats(&b[i]) : 0;
    m->data = mem_alloc(vec * sizeof(float), what);
    m->p_data = m->data ? mem_alloc(mat * sizeof(float), what) : NULL; /* what: the file, for a load */
    if (!m->p_data) {
        model_free(m);
        return -1;
    }
    float *v = m->data, *x = m->p_data;
    for (int i = 0; i < n; i++) {
        if (b[i].vec)
            *b[i].vec = v, v += block_kept_floats(&b[i]);
        if (b[i].mat)
            *b[i].mat = x, x += block_packed_floats(&b[i]);
    }
    const size_t dim = (size_t)c->dim, D = (size_t)model_head_size(c);
    const size_t qd = (size_t)s->n_h * D, kvd = (size_t)s->n_kv * D, hid = (size_t)s->n_f;
    m->p.q = matmul_packed_floats(qd, dim), m->p.kv = matmul_packed_floats(kvd, dim);
    m->p.o = matmul_packed_floats(dim, qd), m->p.up = matmul_packed_floats(hid, dim);
    m->p.down = matmul_packed_floats(dim, hid);
    return 0;
}

/* ==== filling a model, block by block ================================================================== */

/* The next piece of block b in the checkpoint -- (rows, cols) floats -- of which the part the model
 * keeps, (nr, nc), goes into dst (nr * nc floats; NULL: nothing is kept, the RoPE tables): read
 * from the file (model_load) or drawn (model_init_random). 0, or -1 with an error. */
typedef int (*ModelFill)(void *ctx, const Block *b, float *dst);

/* Fills m in checkpoint order: a kept vector straight into its place, every matrix's kept part
 * into a scratch buffer of that size, packed from there. The scratch is freed after each block,
 * so the most a load holds is the packed model (or shard) and one matrix of it. */
static int fill_model(Model *m, ModelFill fill, void *ctx)
{
    ModelTensors t;
    Block b[14];
    int rc = 0;
    for (int i = 0, n = blocks_of(&m->c, &m->s, &t, &m->w, &m->p, b); i < n && rc == 0; i++) {
        const size_t kept = b[i].nr * b[i].nc;
        float *scratch = NULL;
        if (b[i].mat) {
            scratch = mem_alloc(kept * sizeof(float), "one matrix of the checkpoint, before packing");
            rc = scratch ? 0 : -1;
        }
        for (size_t j = 0; j < b[i].count && rc == 0; j++) {
            rc = fill(ctx, &b[i], b[i].vec ? *b[i].vec + j * kept : scratch);
            if (rc == 0 && b[i].mat)
                matmul_pack_weights(*b[i].mat + j * matmul_packed_floats(b[i].nr, b[i].nc), scratch, b[i].nr, b[i].nc);
        }
        mem_free(scratch);
    }
    return rc;
}

/* model_init_random's draws, in checkpoint order (the RoPE tables are not drawn): a whole piece
 * is drawn even when a shard keeps only part of it, so that every shard's weights are the whole
 * model's. */
static int fill_random(void *ctx, const Block *b, float *dst)
{
    Rng *rng = ctx;
    if (!dst) /* the RoPE tables: nothing drawn */
        return 0;
    const float std = b->kind == BLOCK_EMBEDDING ? 1.0f : 1.0f / sqrtf((float)b->cols);
    const int all = b->nr == b->rows && b->nc == b->cols;
    float *piece = all ? dst : mem_alloc(b->rows * b->cols * sizeof(float), "one matrix, drawn whole for a shard");
    if (!piece)
        return -1;
    for (size_t i = 0; i < b->rows * b->cols; i++)
        piece[i] = b->kind == BLOCK_NORM ? 1.0f : std * rng_normal(rng);
    if (!all) {
        for (size_t r = 0; r < b->nr; r++)
            memcpy(dst + r * b->nc, piece + (b->r0 + r) * b->cols + b->c0, b->nc * sizeof(float));
        mem_free(piece);
    }
    return 0;
}

int model_init_random_shard(Model *m, const ModelConfig *c, uint64_t seed, const ModelShard *s)
{
    if (alloc_model(m, c, s, "model weights") != 0)
        return -1;
    Rng rng;
    rng_seed(&rng, seed);
    if (fill_model(m, fill_random, &rng) != 0) {
        model_free(m);
        return -1;
    }
    return 0;
}

int model_init_random(Model *m, const ModelConfig *c, uint64_t seed)
{
    const ModelShard s = whole(c);
    return model_init_random_shard(m, c, seed, &s);
}

/* model_load's reads: every float kept is checked finite, named by its index among the file's
 * floats. A shard's part of a piece is read row by row, seeking past the rest. */
typedef struct {
    FILE *f;
    const char *path;
    size_t at;  /* floats of the file before the current piece */
    size_t pos; /* the float the file is positioned at */
} FileFill;

/* n floats at float index `from` of the file into dst (a seek first when not already there). */
static int read_floats(FileFill *r, size_t from, float *dst, size_t n)
{
    if (from != r->pos && fseeko(r->f, (off_t)(28 + from * sizeof(float)), SEEK_SET) != 0)
        return error_set("%s: seek error", r->path);
    if (fread(dst, sizeof(float), n, r->f) != n)
        return error_set("%s: read error", r->path);
    r->pos = from + n;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return error_set("%s: weight %zu is not finite", r->path, from + i);
    return 0;
}

static int fill_from_file(void *ctx, const Block *b, float *dst)
{
    FileFill *r = ctx;
    int rc = 0;
    if (dst && b->nc == b->cols) /* whole rows: one read */
        rc = read_floats(r, r->at + b->r0 * b->cols, dst, b->nr * b->nc);
    else if (dst) /* a shard's columns (Wo, W2): a read per row */
        for (size_t i = 0; i < b->nr && rc == 0; i++)
            rc = read_floats(r, r->at + (b->r0 + i) * b->cols + b->c0, dst + i * b->nc, b->nc);
    r->at += b->rows * b->cols;
    return rc;
}

int model_load_shard(const char *path, int rank, int world, Model *m)
{
    memset(m, 0, sizeof *m);
    size_t have; /* the file's bytes */
    FILE *f = file_open_input_size(path, &have); /* a regular file, or an error: never blocks on a FIFO */
    if (!f)
        return -1;
    ModelConfig c;
    ModelShard s;
    FileFill r = {.f = f, .path = path, .at = 0, .pos = 0};
    int rc = model_read_header(f, path, have, &c);
    if (rc == 0)
        rc = model_shard_plan(&c, rank, world, &s);
    if (rc == 0)
        rc = alloc_model(m, &c, &s, path);
    if (rc == 0 && fill_model(m, fill_from_file, &r) != 0) {
        model_free(m);
        rc = -1;
    }
    fclose(f);
    return rc;
}

int model_load(const char *path, Model *m) { return model_load_shard(path, 0, 1, m); }

int model_load_or_builtin_shard(const char *checkpoint, int rank, int world, Model *m)
{
    if (checkpoint)
        return model_load_shard(checkpoint, rank, world, m);
    ModelConfig c = model_default_config();
    ModelShard s;
    if (model_shard_plan(&c, rank, world, &s) != 0)
        return -1;
    return model_init_random_shard(m, &c, MODEL_DEFAULT_SEED, &s);
}

int model_load_or_builtin(const char *checkpoint, Model *m) { return model_load_or_builtin_shard(checkpoint, 0, 1, m); }

/* ==== the checkpoint, given back ======================================================================= */

int model_unpack(const Model *m, ModelPut put, void *ctx)
{
    if (m->s.world > 1)
        return error_set("rank %d of %d holds a shard of the model, not the checkpoint: it cannot be given back whole",
                         m->s.rank, m->s.world);
    ModelTensors t;
    ModelWeights w = m->w;
    ModelPacked p = m->p;
    Block b[14];
    int rc = 0;
    for (int i = 0, n = blocks_of(&m->c, &m->s, &t, &w, &p, b); i < n && rc == 0; i++) {
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

