/*
 * paged.c: chapter 05's attention on the CPU -- reading K and V through the block tables, in place.
 *
 * What it teaches: the attention kernels never copy a sequence into a contiguous buffer. Each
 * (block, layer, kv head) of the pool is a contiguous (bs, D) matrix; logical block j / bs of a
 * sequence is physical block table[j / bs], and key j is row j % bs of it. Two versions:
 *
 *   1 ref:  per query row and head, plain loops over the visible positions through the table
 *   2 fast: tasks of (sequence, kv head, query tile, partition of the blocks): the G query heads
 *           of a group (and a tile of query positions) score a chunk of blocks with common/matmul,
 *           chapter 03's online softmax across chunks, P V added block by block
 *           (matmul_nn_acc_ld), partitions merged with their log-sum-exp (chapter 03's
 *           flash_merge); OpenMP over the tasks
 *
 * Which keys a query sees is common/causal.h's rule (attn_visible_keys). `build/bin/05_paged
 * bench` measures the fast kernel against chapter 04's contiguous cache (bench.c).
 */
#include "05_paged/paged.h"

#include <math.h>
#include <string.h>

#include "03_flash/flash.h"
#include "common/causal.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/tensor.h"
#include "common/vmath.h"

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

/* ==== the batch ==================================================================================== */

static int check_batch(const PagedPool *p, int H, int n_seq, PagedSeq *const *seqs, const int *q_start)
{
    if (H < 1 || H % p->n_kv_heads != 0)
        return error_set("H = %d query heads is not a multiple of the pool's %d kv heads", H, p->n_kv_heads);
    if (n_seq < 0 || (n_seq > 0 && q_start[0] != 0))
        return error_set("the batch's query rows must start at row 0");
    for (int i = 0; i < n_seq; i++) {
        if (paged_seq_check_pool(p, seqs[i]) != 0)
            return -1;
        if (q_start[i + 1] < q_start[i])
            return error_set("sequence %d: query rows %d..%d run backwards", i, q_start[i], q_start[i + 1]);
        if (seqs[i]->n_blocks != ceil_div(seqs[i]->len, p->block_size))
            return error_set("sequence %d: its table has %d blocks for %d tokens", i, seqs[i]->n_blocks, seqs[i]->len);
    }
    return 0;
}

/* ==== 1 ref: plain loops through the table ============================================================ */

int paged_attention_ref(const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                        PagedSeq *const *seqs, const int *q_start, const float *q, float *out)
{
    if (check_batch(p, H, n_seq, seqs, q_start) != 0)
        return -1;
    const int D = p->D, G = H / p->n_kv_heads, bs = p->block_size;
    int max_len = 1;
    for (int i = 0; i < n_seq; i++)
        max_len = seqs[i]->len > max_len ? seqs[i]->len : max_len;
    float *sc = mem_alloc((size_t)max_len * sizeof(float), "scores of one row");
    if (!sc)
        return -1;
    for (int i = 0; i < n_seq; i++) {
        const PagedSeq *s = seqs[i];
        const int T = q_start[i + 1] - q_start[i];
        for (int t = 0; t < T; t++)
            for (int hq = 0; hq < H; hq++) {
                const size_t row = ((size_t)(q_start[i] + t) * H + hq) * D;
                const float *qr = q + row;
                float *o = out + row;
                const int n = attn_visible_keys(t, T, s->len, causal);
                /* scores against every visible key, found through the table */
                float m = -INFINITY, sum = 0.0f;
                for (int j = 0; j < n; j++) {
                    const float *kr = paged_k_block(p, s->blocks[j / bs], layer, hq / G) + (size_t)(j % bs) * D;
                    float dot = 0.0f;
                    for (int d = 0; d < D; d++)
                        dot += qr[d] * kr[d];
                    sc[j] = dot * scale;
                    m = sc[j] > m ? sc[j] : m;
                }
                for (int j = 0; j < n; j++) {
                    sc[j] = expf(sc[j] - m);
                    sum += sc[j];
                }
                for (int d = 0; d < D; d++)
                    o[d] = 0.0f;
                for (int j = 0; j < n; j++) { /* out = sum_j p_j v_j */
                    const float *vr = paged_v_block(p, s->blocks[j / bs], layer, hq / G) + (size_t)(j % bs) * D;
                    for (int d = 0; d < D; d++)
                        o[d] += sc[j] / sum * vr[d];
                }
            }
    }
    mem_free(sc);
    return 0;
}

/* ==== 2 fast: tiles of query rows against chunks of blocks ========================================== */

#define TILE_ROWS 48    /* query rows (positions x the group's G heads) per task, at most */
#define CHUNK_KEYS 1024 /* keys per step of the online softmax, rounded to whole blocks: long
                         * enough that K and V are read in long runs, one after the other */

/* One (sequence, kv head, query tile) and its partitions: the tasks of the fast kernel. */
typedef struct {
    int seq, h, t0, tq;  /* query positions t0 .. t0+tq-1 of the sequence's T */
    int n_parts;
    size_t o_off, l_off; /* its partial outputs (n_parts, tq*G, D) and lse (n_parts, tq*G) */
} PagedGroup;

typedef struct {
    size_t group;
    int part; /* partition pi covers blocks pi * part_blocks .. (pi + 1) * part_blocks - 1 */
} PagedTask;

typedef struct {
    float *qt;    /* (R, D) the tile's query rows, pre-scaled */
    float *sc;    /* (R, chunk) scores, then probabilities */
    float *m, *l; /* (R) */
    const float **kb, **vb; /* (chunk_blocks) the chunk's K and V blocks, looked up once */
} PagedScratch;

/* The chunk's blocks [lb0, lb0 + nb) through the table, once: pointers to their K and V rows of
 * this layer and kv head (the inner loops then never touch the table). */
static void lookup_blocks(const PagedPool *p, const PagedSeq *s, int layer, int h, int lb0, int nb, const float **kb,
                          const float **vb)
{
    for (int i = 0; i < nb; i++) {
        const int id = s->blocks[lb0 + i];
        kb[i] = paged_k_block(p, id, layer, h), vb[i] = paged_v_block(p, id, layer, h);
    }
}

/* Query rows of a group (tq positions x G heads) against the blocks [b0, b1) of its sequence:
 * the normalised partial output o (R, D) and its log-sum-exp lse (R). */
static void paged_task(const PagedPool *p, const PagedScratch *w, int layer, const PagedSeq *s, int T, int causal,
                       const PagedGroup *g, int G, int b0, int b1, int chunk_blocks, float *o, float *lse)
{
    const int bs = p->block_size, R = g->tq * G;
    const size_t D = (size_t)p->D, CH = (size_t)chunk_blocks * bs;
    for (int r = 0; r < R; r++)
        w->m[r] = -INFINITY, w->l[r] = 0.0f;
    memset(o, 0, (size_t)R * D * sizeof(float));
    /* keys beyond what the tile's last query sees are skipped */
    int k_end = attn_visible_keys(g->t0 + g->tq - 1, T, s->len, causal);
    k_end = k_end < b1 * bs ? k_end : b1 * bs;
    for (int c0 = b0 * bs; c0 < k_end; c0 += (int)CH) {
        const int ch = k_end - c0 < (int)CH ? k_end - c0 : (int)CH, nb = (ch + bs - 1) / bs;
        lookup_blocks(p, s, layer, g->h, c0 / bs, nb, w->kb, w->vb);
        for (int i = 0; i < nb; i++) { /* scores (R, ch), one block at a time, K read in place */
            const int j = i * bs, nk = ch - j < bs ? ch - j : bs;
            matmul_nt_rows_ld(w->sc + j, CH, w->qt, D, w->kb[i], D, (size_t)R, (size_t)nk, D); /* batch-invariant */
        }
        for (int r = 0; r < R; r++) { /* chapter 03's online softmax, row by row */
            float *sr = w->sc + (size_t)r * CH;
            int live = attn_visible_keys(g->t0 + r / G, T, s->len, causal) - c0; /* a prefix of the chunk */
            live = live < 0 ? 0 : live > ch ? ch : live;
            if (live == 0) { /* this row sees none of these keys */
                memset(sr, 0, (size_t)ch * sizeof(float));
                continue;
            }
            float mt = -INFINITY;
#pragma omp simd reduction(max : mt)
            for (int j = 0; j < live; j++)
                mt = sr[j] > mt ? sr[j] : mt;
            const float m_new = w->m[r] > mt ? w->m[r] : mt, alpha = expf(w->m[r] - m_new);
            w->l[r] = w->l[r] * alpha + vexp_scaled_sum(sr, (size_t)live, 1.0f, m_new);
            w->m[r] = m_new;
            if (live < ch)
                memset(sr + live, 0, (size_t)(ch - live) * sizeof(float));
            float *orow = o + (size_t)r * D;
#pragma omp simd
            for (size_t d = 0; d < D; d++)
                orow[d] *= alpha;
        }
        for (int i = 0; i < nb; i++) { /* o += P V, one block at a time, V read in place */
            const int j = i * bs, nk = ch - j < bs ? ch - j : bs;
            matmul_nn_acc_ld(o, D, w->sc + j, CH, w->vb[i], D, (size_t)R, D, (size_t)nk);
        }
    }
    for (int r = 0; r < R; r++) {
        const float inv = w->l[r] > 0.0f ? 1.0f / w->l[r] : 0.0f;
        for (size_t d = 0; d < D; d++)
            o[(size_t)r * D + d] *= inv;
        lse[r] = w->l[r] > 0.0f ? w->m[r] + logf(w->l[r]) : -INFINITY;
    }
}

/* The fast kernel's work list: every group with its partitions, and the buffers their partial
 * results go to before the merge. */
typedef struct {
    PagedGroup *groups; /* (n_groups) */
    PagedTask *tasks;   /* (n_tasks) task t -> (group, partition) */
    float *part_o;      /* every group's (n_parts, tq*G, D), at its o_off */
    float *part_l;      /* every group's (n_parts, tq*G), at its l_off */
    size_t n_groups, n_tasks;
    int tq_max, part_blocks, chunk_blocks;
} PagedPlan;

static void plan_free(PagedPlan *pl)
{
    mem_free(pl->groups), mem_free(pl->tasks), mem_free(pl->part_o), mem_free(pl->part_l);
}

/* Cuts the batch into groups of (sequence, kv head, query tile) and each group into partitions
 * of part_blocks blocks, fixed by the sequence's length alone (never by the batch or the thread
 * count: a sequence's output bits do not depend on its neighbours). */
static int plan_tasks(PagedPlan *pl, const PagedPool *p, int G, int n_seq, PagedSeq *const *seqs, const int *q_start)
{
    const int Hkv = p->n_kv_heads, bs = p->block_size;
    const size_t D = (size_t)p->D;
    *pl = (PagedPlan){
        .tq_max = TILE_ROWS / G > 1 ? TILE_ROWS / G : 1,
        .part_blocks = ceil_div(PAGED_PARTITION_KEYS, bs),
        .chunk_blocks = CHUNK_KEYS / bs > 1 ? CHUNK_KEYS / bs : 1,
    };
    for (int i = 0; i < n_seq; i++)
        pl->n_groups += (size_t)Hkv * ceil_div(q_start[i + 1] - q_start[i], pl->tq_max);
    pl->groups = mem_alloc(pl->n_groups * sizeof(PagedGroup), "attention groups");
    if (!pl->groups)
        return -1;
    size_t gi = 0, o_total = 0, l_total = 0;
    for (int i = 0; i < n_seq; i++) {
        const int T = q_start[i + 1] - q_start[i];
        const int n_parts = seqs[i]->n_blocks > 0 ? ceil_div(seqs[i]->n_blocks, pl->part_blocks) : 1;
        for (int h = 0; h < Hkv; h++)
            for (int t0 = 0; t0 < T; t0 += pl->tq_max) {
                const int tq = T - t0 < pl->tq_max ? T - t0 : pl->tq_max;
                pl->groups[gi++] = (PagedGroup){
                    .seq = i, .h = h, .t0 = t0, .tq = tq, .n_parts = n_parts, .o_off = o_total, .l_off = l_total};
                o_total += (size_t)n_parts * tq * G * D, l_total += (size_t)n_parts * tq * G;
                pl->n_tasks += (size_t)n_parts;
            }
    }
    pl->tasks = mem_alloc(pl->n_tasks * sizeof(PagedTask), "task list");
    pl->part_o = pl->tasks ? mem_alloc(o_total * sizeof(float), "partial outputs") : NULL;
    pl->part_l = pl->part_o ? mem_alloc(l_total * sizeof(float), "partial lse") : NULL;
    if (!pl->part_l) {
        plan_free(pl);
        return -1;
    }
    for (size_t g = 0, t = 0; g < pl->n_groups; g++)
        for (int part = 0; part < pl->groups[g].n_parts; part++)
            pl->tasks[t++] = (PagedTask){.group = g, .part = part};
    return 0;
}

/* The group's tile of query rows, (position, head of the group) order, pre-scaled: qt (tq*G, D). */
static void gather_tile(const PagedGroup *g, int H, int G, size_t D, float scale, const int *q_start, const float *q,
                        float *qt)
{
    for (int tt = 0; tt < g->tq; tt++)
        for (int gg = 0; gg < G; gg++) {
            const float *src = q + ((size_t)(q_start[g->seq] + g->t0 + tt) * H + (size_t)g->h * G + gg) * D;
            float *dst = qt + ((size_t)tt * G + gg) * D;
            for (size_t d = 0; d < D; d++)
                dst[d] = src[d] * scale;
        }
}

/* Every task of the plan, in parallel, each thread with its own scratch. 0, or -1 when a
 * thread's scratch could not be allocated (the outputs are then incomplete). */
static int run_tasks(const PagedPlan *pl, const PagedPool *p, int layer, int H, float scale, int causal,
                     PagedSeq *const *seqs, const int *q_start, const float *q)
{
    const int G = H / p->n_kv_heads;
    const size_t D = (size_t)p->D;
    int failed = 0;
#pragma omp parallel
    {
        const size_t R = (size_t)pl->tq_max * G, CH = (size_t)pl->chunk_blocks * p->block_size;
        PagedScratch w = {.qt = mem_alloc(R * D * sizeof(float), "query tile"),
                          .sc = mem_alloc(R * CH * sizeof(float), "scores"),
                          .m = mem_alloc(R * sizeof(float), "m"),
                          .l = mem_alloc(R * sizeof(float), "l"),
                          .kb = mem_alloc((size_t)pl->chunk_blocks * sizeof(float *), "chunk K blocks"),
                          .vb = mem_alloc((size_t)pl->chunk_blocks * sizeof(float *), "chunk V blocks")};
        const int ok = w.qt && w.sc && w.m && w.l && w.kb && w.vb;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (size_t t = 0; t < pl->n_tasks; t++) {
            const PagedGroup *g = &pl->groups[pl->tasks[t].group];
            const int pi = pl->tasks[t].part, rows = g->tq * G;
            if (!ok)
                continue;
            const PagedSeq *s = seqs[g->seq];
            const int T = q_start[g->seq + 1] - q_start[g->seq];
            gather_tile(g, H, G, D, scale, q_start, q, w.qt);
            const int b0 = pi * pl->part_blocks;
            const int b1 = b0 + pl->part_blocks < s->n_blocks ? b0 + pl->part_blocks : s->n_blocks;
            paged_task(p, &w, layer, s, T, causal, g, G, b0, b1, pl->chunk_blocks,
                       pl->part_o + g->o_off + (size_t)pi * rows * D, pl->part_l + g->l_off + (size_t)pi * rows);
        }
        mem_free(w.qt), mem_free(w.sc), mem_free(w.m), mem_free(w.l), mem_free((void *)w.kb), mem_free((void *)w.vb);
    }
    return failed ? -1 : 0;
}

/* Folds each group's partitions into the first with their log-sum-exp, then scatters its rows
 * to out (rows, H, D). */
static void merge_groups(const PagedPlan *pl, int H, int G, size_t D, const int *q_start, float *out)
{
    for (size_t g = 0; g < pl->n_groups; g++) {
        const PagedGroup *gr = &pl->groups[g];
        const size_t rows = (size_t)gr->tq * G;
        float *o0 = pl->part_o + gr->o_off, *l0 = pl->part_l + gr->l_off;
        for (int part = 1; part < gr->n_parts; part++)
            flash_merge(o0, l0, o0 + part * rows * D, l0 + part * rows, rows, (int)D);
        for (int tt = 0; tt < gr->tq; tt++)
            memcpy(out + ((size_t)(q_start[gr->seq] + gr->t0 + tt) * H + (size_t)gr->h * G) * D, o0 + (size_t)tt * G * D,
                   (size_t)G * D * sizeof(float));
    }
}

int paged_attention_fast(const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                         PagedSeq *const *seqs, const int *q_start, const float *q, float *out)
{
    if (check_batch(p, H, n_seq, seqs, q_start) != 0)
        return -1;
    const int G = H / p->n_kv_heads;
    PagedPlan pl;
    if (plan_tasks(&pl, p, G, n_seq, seqs, q_start) != 0)
        return -1;
    const int failed = run_tasks(&pl, p, layer, H, scale, causal, seqs, q_start, q) != 0;
    if (!failed)
        merge_groups(&pl, H, G, (size_t)p->D, q_start, out);
    plan_free(&pl);
    return failed ? error_set("out of memory for the attention scratch") : 0;
}

int paged_attention_cpu(int kernel, const PagedPool *p, int layer, int H, float scale, int causal, int n_seq,
                        PagedSeq *const *seqs, const int *q_start, const float *q, float *out)
{
    switch (kernel) {
    case 1:
        return paged_attention_ref(p, layer, H, scale, causal, n_seq, seqs, q_start, q, out);
    case 0:
    case 2:
        return paged_attention_fast(p, layer, H, scale, causal, n_seq, seqs, q_start, q, out);
    default:
        return error_set("--kernel %d: chapter 05 has CPU kernels 1..%d", kernel, PAGED_CPU_KERNELS);
    }
}

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CPU_NAMES[PAGED_CPU_KERNELS + 1] = {"fast", "ref", "fast"};

const char *paged_cpu_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= PAGED_CPU_KERNELS ? CPU_NAMES[kernel] : NULL;
}

