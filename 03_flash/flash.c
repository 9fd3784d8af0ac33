/*
 * flash.c: chapter 03 on the CPU -- FlashAttention's tiles and online softmax.
 *
 * What it teaches: softmax(QKᵀ)V can be computed one tile of keys at a time, keeping per query
 * row only a running maximum m, a running sum l and an unnormalised output o, so the T x S
 * score matrix never exists. Extra memory is a few tiles, whatever T and S are.
 *
 *   v1 flash_attention_tiled: the algorithm with the paper's names (Br, Bc, Tr, Tc, m, l), one
 *      row at a time in plain loops. Slow (under 3 GFLOP/s on the 2-core machine) but short.
 *   v2 flash_attention_fast: the same algorithm arranged for the machine. K and V of each kv
 *      head are packed once into 16-wide panels; per query block, QKᵀ and PV run through
 *      common/matmul's MR x 16 register-blocked micro-kernel (12 x 16 with AVX-512, 6 x 16 with AVX2) on those panels; exp is vectorised
 *      (common/vmath.h); the G query heads of a GQA group are stacked position by position so
 *      each K/V tile is read once for the whole group; tiles past the causal diagonal are never
 *      visited; OpenMP hands out (batch, kv head, query block) tasks head by head, heaviest first.
 *      `build/bin/03_flash bench` measures it against chapter 02 and the FMA peak.
 *
 * Partially masked tiles (the causal diagonal) multiply P by V one row at a time over exactly
 * the keys that row sees, so a NaN in a K or V row a query cannot see never reaches its output.
 */
#include "03_flash/flash.h"

#include <math.h>
#include <string.h>

#include "common/attn_cli.h"
#include "common/error.h"
#include "common/matmul.h"
#include "common/tensor.h"
#include "common/vmath.h"

#ifdef _OPENMP
#include <omp.h>
#endif

FlashTiles flash_default_tiles(int kernel)
{
    if (kernel == 1)
        return (FlashTiles){.Br = 16, .Bc = 16};
    return (FlashTiles){.Br = 24, .Bc = 512}; /* chosen by the lesson's tile sweep on the 2-core machine */
}

int flash_check_shape(const GqaShape *s)
{
    if (gqa_check_heads(s->H, s->Hkv) != 0)
        return -1;
    if (s->D < 1 || s->D > FLASH_MAX_D)
        return error_set("head dim D = %d is not supported (1 .. %d)", s->D, FLASH_MAX_D);
    return 0;
}

static int check_tiles(FlashTiles tiles, int need_16)
{
    if (tiles.Br < 1 || tiles.Bc < 1 || tiles.Br > 4096 || tiles.Bc > 65536)
        return error_set("tile sizes Br = %d, Bc = %d out of range", tiles.Br, tiles.Bc);
    if (need_16 && tiles.Bc % MATMUL_NR != 0)
        return error_set("Bc = %d must be a multiple of %d for the fast version", tiles.Bc, MATMUL_NR);
    return 0;
}

/* ==== v1: the tiled algorithm, plain =============================================================== */

int flash_attention_tiled(const GqaShape *s, FlashTiles tiles, const float *q, const float *k, const float *v,
                          float *out, float *lse)
{
    if (flash_check_shape(s) != 0 || check_tiles(tiles, 0) != 0)
        return -1;
    const int T = s->T, S = s->S, D = s->D, G = s->H / s->Hkv;
    const int Br = tiles.Br, Bc = tiles.Bc;
    const int Tr = (T + Br - 1) / Br; /* query tiles */
    const int Tc = (S + Bc - 1) / Bc; /* key tiles */
    float *m = mem_alloc((size_t)Br * sizeof(float), "m (Br)");              /* running max per row */
    float *l = mem_alloc((size_t)Br * sizeof(float), "l (Br)");              /* running sum per row */
    float *o = mem_alloc((size_t)Br * D * sizeof(float), "o (Br, D)");       /* unnormalised output */
    float *Sij = mem_alloc((size_t)Br * Bc * sizeof(float), "S_ij (Br, Bc)"); /* one tile of scores */
    if (!m || !l || !o || !Sij) {
        mem_free(m), mem_free(l), mem_free(o), mem_free(Sij);
        return -1;
    }
    for (size_t b = 0; b < (size_t)s->B; b++)
        for (size_t h = 0; h < (size_t)s->H; h++) {
            const float *qh = q + (b * s->H + h) * T * D;                  /* (T, D) */
            const float *kh = k + (b * s->Hkv + h / G) * (size_t)S * D;    /* (S, D) */
            const float *vh = v + (b * s->Hkv + h / G) * (size_t)S * D;    /* (S, D) */
            float *oh = out + (b * s->H + h) * (size_t)T * D;              /* (T, D) */
            for (int i = 0; i < Tr; i++) {
                const int t0 = i * Br, rows = T - t0 < Br ? T - t0 : Br;
                for (int r = 0; r < rows; r++) {
                    m[r] = -INFINITY, l[r] = 0.0f;
                    memset(o + (size_t)r * D, 0, (size_t)D * sizeof(float));
                }
                for (int j = 0; j < Tc; j++) {
                    const int c0 = j * Bc, cols = S - c0 < Bc ? S - c0 : Bc;
                    /* causal: once a tile starts past what the tile's last row sees, so do all later ones */
                    if (c0 >= attn_visible_keys(t0 + rows - 1, T, S, s->causal))
                        break;
                    for (int r = 0; r < rows; r++) {
                        int n = attn_visible_keys(t0 + r, T, S, s->causal) - c0; /* keys of this tile row r sees */
                        n = n > cols ? cols : n;
                        if (n <= 0)
                            continue;
                        /* scores of row r against the tile, and their maximum */
                        float *Sr = Sij + (size_t)r * Bc, m_tile = -INFINITY;
                        for (int c = 0; c < n; c++) {
                            float dot = 0.0f;
                            for (int d = 0; d < D; d++)
                                dot += qh[(size_t)(t0 + r) * D + d] * kh[(size_t)(c0 + c) * D + d];
                            Sr[c] = dot * s->scale;
                            m_tile = Sr[c] > m_tile ? Sr[c] : m_tile;
                        }
                        /* the online softmax: a larger maximum rescales what was summed so far */
                        const float m_new = m[r] > m_tile ? m[r] : m_tile;
                        const float alpha = expf(m[r] - m_new); /* 0 on the row's first tile (m = -inf) */
                        float *orow = o + (size_t)r * D;
                        l[r] *= alpha;
                        for (int d = 0; d < D; d++)
                            orow[d] *= alpha;
                        for (int c = 0; c < n; c++) {
                            const float p = expf(Sr[c] - m_new);
                            l[r] += p;
                            for (int d = 0; d < D; d++)
                                orow[d] += p * vh[(size_t)(c0 + c) * D + d];
                        }
                        m[r] = m_new;
                    }
                }
                /* out = o / l; lse = m + log l. A row that saw no key: zeros and -inf. */
                for (int r = 0; r < rows; r++) {
                    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
                    for (int d = 0; d < D; d++)
                        oh[(size_t)(t0 + r) * D + d] = o[(size_t)r * D + d] * inv;
                    if (lse)
                        lse[(b * s->H + h) * T + t0 + r] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
                }
            }
        }
    mem_free(m), mem_free(l), mem_free(o), mem_free(Sij);
    return 0;
}

/* ==== v2: fast ===================================================================================== */

#define NR MATMUL_NR /* 16: the panel width of the micro-kernel */
#define MR MATMUL_MR /* 6: its rows */

typedef struct {
    const GqaShape *s;
    size_t G;       /* query heads per kv head */
    size_t Tb;      /* query positions per block; a block is Tb * G stacked rows */
    size_t Bc;      /* keys per tile, a multiple of 16 */
    size_t nKb;     /* 16-key panels per head: ceil(S / 16) */
    size_t Spad;    /* nKb * 16 */
    size_t nDb;     /* 16-column panels of V: ceil(D / 16) */
    size_t Dp;      /* nDb * 16 */
    const float *Kp; /* (B*Hkv, nKb, D, 16): 16 keys at a time, transposed */
    const float *Vp; /* (B*Hkv, nDb, Spad, 16): 16 columns of V at a time */
} Plan;

/* Per-thread scratch for one block of R <= Rmax stacked rows. */
typedef struct {
    float *q;  /* (Rmax, D) the block's queries, gathered */
    float *Sp; /* (Rmax, Bc) scores, then probabilities, of one tile */
    float *o;  /* (Rmax, Dp) unnormalised output */
    float *m, *l; /* (Rmax) running max and sum per row */
    int *n;       /* (Rmax) keys each row sees */
} Scratch;

static void pack_group(const Plan *p, size_t g, const float *k, const float *v, float *Kp, float *Vp)
{
    const size_t S = (size_t)p->s->S, D = (size_t)p->s->D;
    const float *kg = k + g * S * D, *vg = v + g * S * D; /* (S, D) */
    float *kp = Kp + g * p->nKb * D * NR, *vp = Vp + g * p->nDb * p->Spad * NR;
    for (size_t kb = 0; kb < p->nKb; kb++)
        for (size_t c = 0; c < NR; c++) {
            const size_t key = kb * NR + c;
            for (size_t d = 0; d < D; d++)
                kp[(kb * D + d) * NR + c] = key < S ? kg[key * D + d] : 0.0f;
        }
    for (size_t db = 0; db < p->nDb; db++)
        for (size_t j = 0; j < p->Spad; j++)
            for (size_t c = 0; c < NR; c++) {
                const size_t col = db * NR + c;
                vp[(db * p->Spad + j) * NR + c] = j < S && col < D ? vg[j * D + col] : 0.0f;
            }
}

/* One block: positions t0 .. t0+tb-1 of every query head of group g (row r = tl * G + gi). Its
 * queries are gathered into w->q, with the keys each row sees, and the running m, l, o reset. */
static void block_begin(const Plan *p, const Scratch *w, size_t g, size_t t0, size_t tb, const float *q)
{
    const GqaShape *s = p->s;
    const size_t G = p->G, D = (size_t)s->D, T = (size_t)s->T;
    const size_t b = g / (size_t)s->Hkv, kvh = g % (size_t)s->Hkv;
    for (size_t tl = 0; tl < tb; tl++)
        for (size_t gi = 0; gi < G; gi++) {
            const size_t r = tl * G + gi;
            memcpy(w->q + r * D, q + ((b * s->H + kvh * G + gi) * T + t0 + tl) * D, D * sizeof(float));
            w->n[r] = attn_visible_keys((int)(t0 + tl), s->T, s->S, s->causal);
            w->m[r] = -INFINITY, w->l[r] = 0.0f;
        }
    memset(w->o, 0, tb * G * p->Dp * sizeof(float));
}

/* The online softmax of the block's R rows over the tile of bc keys at j0, whose scores S = Q Kᵀ
 * are in w->Sp: each row's probabilities replace its scores (0 for keys it does not see), and a
 * larger maximum rescales what the row summed so far. */
static void tile_softmax(const Plan *p, const Scratch *w, size_t R, size_t j0, size_t bc)
{
    const GqaShape *s = p->s;
    const size_t D = (size_t)s->D, Bc = p->Bc, Dp = p->Dp;
    for (size_t r = 0; r < R; r++) {
        float *Sr = w->Sp + r * Bc;
        size_t n = (size_t)w->n[r] > j0 ? (size_t)w->n[r] - j0 : 0;
        n = n > bc ? bc : n;
        if (n == 0) {
            memset(Sr, 0, bc * sizeof(float));
            continue;
        }
        float m_tile = -INFINITY;
        const float scale = s->scale;
#pragma omp simd reduction(max : m_tile)
        for (size_t c = 0; c < n; c++)
            m_tile = Sr[c] * scale > m_tile ? Sr[c] * scale : m_tile;
        const float m_new = w->m[r] > m_tile ? w->m[r] : m_tile;
        const float alpha = expf(w->m[r] - m_new);
        const float sum = vexp_scaled_sum(Sr, n, s->scale, m_new); /* Sr[c] = exp(scale Sr[c] - m_new) */
        for (size_t c = n; c < bc; c++)
            Sr[c] = 0.0f;
        w->l[r] = w->l[r] * alpha + sum;
        w->m[r] = m_new;
        if (alpha != 1.0f) {
            float *orow = w->o + r * Dp;
#pragma omp simd
            for (size_t d = 0; d < D; d++)
                orow[d] *= alpha;
        }
    }
}

/* O += P V for the tile of bc keys at j0: the keys every row of the block sees (the first
 * `common`) go through the micro-kernel; on the causal diagonal, the rest (a triangle) row by row
 * over exactly the keys each row sees. vg: the group's V (S, D). */
static void tile_pv(const Plan *p, const Scratch *w, const float *Vp, const float *vg, size_t R, size_t j0, size_t bc,
                    size_t common)
{
    const size_t D = (size_t)p->s->D, Bc = p->Bc, Dp = p->Dp;
    if (common > 0)
        for (size_t db = 0; db < p->nDb; db++) {
            const float *panel = Vp + (db * p->Spad + j0) * NR;
            for (size_t r0 = 0; r0 < R; r0 += MR)
                matmul_micro(w->o + r0 * Dp + db * NR, Dp, w->Sp + r0 * Bc, Bc, panel, common,
                                  R - r0 < MR ? R - r0 : MR, 1);
        }
    if (common < bc)
        for (size_t r = 0; r < R; r++) {
            size_t n = (size_t)w->n[r] > j0 ? (size_t)w->n[r] - j0 : 0;
            n = n > bc ? bc : n;
            float *orow = w->o + r * Dp;
            for (size_t c = common; c < n; c++) {
                const float pc = w->Sp[r * Bc + c];
                const float *vrow = vg + (j0 + c) * D;
#pragma omp simd
                for (size_t d = 0; d < D; d++)
                    orow[d] += pc * vrow[d];
            }
        }
}

/* out = o / l and lse = m + log l for the block's rows; a row that saw no key: zeros and -inf. */
static void block_end(const Plan *p, const Scratch *w, size_t g, size_t t0, size_t tb, float *out, float *lse)
{
    const GqaShape *s = p->s;
    const size_t G = p->G, D = (size_t)s->D, T = (size_t)s->T;
    const size_t b = g / (size_t)s->Hkv, kvh = g % (size_t)s->Hkv;
    for (size_t tl = 0; tl < tb; tl++)
        for (size_t gi = 0; gi < G; gi++) {
            const size_t r = tl * G + gi, row = (b * s->H + kvh * G + gi) * T + t0 + tl;
            const float inv = w->l[r] > 0.0f ? 1.0f / w->l[r] : 0.0f;
            for (size_t d = 0; d < D; d++)
                out[row * D + d] = w->o[r * p->Dp + d] * inv;
            if (lse)
                lse[row] = w->l[r] > 0.0f ? w->m[r] + logf(w->l[r]) : -INFINITY;
        }
}

/* One block of query positions of group g, tile by tile of keys. */
static void fast_block(const Plan *p, const Scratch *w, size_t g, size_t t0, size_t tb, const float *q,
                       const float *v, float *out, float *lse)
{
    const size_t D = (size_t)p->s->D, Bc = p->Bc, S = (size_t)p->s->S, R = tb * p->G;
    const float *Kp = p->Kp + g * p->nKb * D * NR, *Vp = p->Vp + g * p->nDb * p->Spad * NR;
    const float *vg = v + g * S * D; /* (S, D) */

    block_begin(p, w, g, t0, tb, q);
    const size_t width = (size_t)w->n[R - 1]; /* what the block's last position sees */
    const size_t seen_by_all = (size_t)w->n[0];
    for (size_t j0 = 0; j0 < width; j0 += Bc) { /* tiles past the diagonal are never visited */
        const size_t bc = width - j0 < Bc ? width - j0 : Bc;
        const size_t panels = (bc + NR - 1) / NR;
        /* S = Q Kᵀ for this tile: (R, D) x (D, bc), panel by panel */
        for (size_t pi = 0; pi < panels; pi++) {
            const float *panel = Kp + (j0 / NR + pi) * D * NR;
            for (size_t r0 = 0; r0 < R; r0 += MR)
                matmul_micro(w->Sp + r0 * Bc + pi * NR, Bc, w->q + r0 * D, D, panel, D,
                                  R - r0 < MR ? R - r0 : MR, 0);
        }
        tile_softmax(p, w, R, j0, bc);
        const size_t common = seen_by_all > j0 ? (seen_by_all - j0 < bc ? seen_by_all - j0 : bc) : 0;
        tile_pv(p, w, Vp, vg, R, j0, bc, common);
    }
    block_end(p, w, g, t0, tb, out, lse);
}

int flash_attention_fast(const GqaShape *s, FlashTiles tiles, const float *q, const float *k, const float *v,
                         float *out, float *lse)
{
    if (flash_check_shape(s) != 0 || check_tiles(tiles, 1) != 0)
        return -1;
    const size_t G = (size_t)(s->H / s->Hkv), nKb = ((size_t)s->S + NR - 1) / NR, nDb = ((size_t)s->D + NR - 1) / NR;
    Plan p = {.s = s, .G = G, .Tb = (size_t)tiles.Br / G > 0 ? (size_t)tiles.Br / G : 1, .Bc = (size_t)tiles.Bc,
              .nKb = nKb, .Spad = nKb * NR, .nDb = nDb, .Dp = nDb * NR}; /* Kp, Vp: once packed */
    const size_t groups = (size_t)s->B * (size_t)s->Hkv, D = (size_t)s->D;
    float *Kp = mem_alloc(groups * p.nKb * D * NR * sizeof(float), "K panels (B, Hkv, S/16, D, 16)");
    float *Vp = mem_alloc(groups * p.nDb * p.Spad * NR * sizeof(float), "V panels (B, Hkv, D/16, S, 16)");
    if (!Kp || !Vp) {
        mem_free(Kp), mem_free(Vp);
        return -1;
    }
#pragma omp parallel for schedule(static)
    for (size_t g = 0; g < groups; g++)
        pack_group(&p, g, k, v, Kp, Vp);
    p.Kp = Kp, p.Vp = Vp;

    const size_t n_blocks = ((size_t)s->T + p.Tb - 1) / p.Tb, Rmax = p.Tb * p.G;
    int failed = 0;
#pragma omp parallel
    {
        Scratch w = {
            .q = mem_alloc(Rmax * D * sizeof(float), "block queries"),
            .Sp = mem_alloc(Rmax * p.Bc * sizeof(float), "score tile (Br, Bc)"),
            .o = mem_alloc(Rmax * p.Dp * sizeof(float), "block output (Br, D)"),
            .m = mem_alloc(Rmax * sizeof(float), "m"),
            .l = mem_alloc(Rmax * sizeof(float), "l"),
            .n = mem_alloc(Rmax * sizeof(int), "visible keys"),
        };
        const int ok = w.q && w.Sp && w.o && w.m && w.l && w.n;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        /* every thread reaches the loop (an OpenMP rule); one without scratch skips its share.
         * Tasks go head by head, so the threads share one head's K/V panels in the caches (taking
         * heads in turn made T = 8192 run at 55% of the FMA peak instead of 67%), and within a head
         * heaviest first: with a causal mask the last positions see the most keys. */
#pragma omp for schedule(dynamic)
        for (size_t i = 0; i < groups * n_blocks; i++) {
            const size_t g = i / n_blocks, blk = n_blocks - 1 - i % n_blocks;
            const size_t t0 = blk * p.Tb, tb = (size_t)s->T - t0 < p.Tb ? (size_t)s->T - t0 : p.Tb;
            if (ok)
                fast_block(&p, &w, g, t0, tb, q, v, out, lse);
        }
        mem_free(w.q), mem_free(w.Sp), mem_free(w.o), mem_free(w.m), mem_free(w.l), mem_free(w.n);
    }
    mem_free(Kp), mem_free(Vp);
    return failed ? error_set("out of memory for the flash attention scratch") : 0;
}

/* ==== dispatcher and merging ======================================================================== */

int flash_attention_cpu(int kernel, const GqaShape *s, const float *q, const float *k, const float *v, float *out,
                        float *lse)
{
    switch (kernel) {
    case 1:
        return flash_attention_tiled(s, flash_default_tiles(1), q, k, v, out, lse);
    case 0:
    case 2:
        return flash_attention_fast(s, flash_default_tiles(2), q, k, v, out, lse);
    default:
        return error_set("--kernel %d: chapter 03 has CPU kernels 1..%d", kernel, FLASH_CPU_KERNELS);
    }
}

/* The versions' names by number; 0, the default, is the fastest. */
static const char *const CPU_NAMES[FLASH_CPU_KERNELS + 1] = {"fast", "tiled", "fast"};

const char *flash_cpu_kernel_name(int kernel)
{
    return kernel >= 0 && kernel <= FLASH_CPU_KERNELS ? CPU_NAMES[kernel] : NULL;
}

void flash_merge(float *o, float *lse, const float *o2, const float *lse2, size_t rows, int D)
{
    for (size_t r = 0; r < rows; r++) {
        const float a = lse[r], b = lse2[r];
        if (b == -INFINITY)
            continue;
        float *orow = o + r * (size_t)D;
        const float *o2row = o2 + r * (size_t)D;
        if (a == -INFINITY) {
            memcpy(orow, o2row, (size_t)D * sizeof(float));
            lse[r] = b;
            continue;
        }
        const float mx = a > b ? a : b, wa = expf(a - mx), wb = expf(b - mx), sum = wa + wb;
        for (int d = 0; d < D; d++)
            orow[d] = (wa * orow[d] + wb * o2row[d]) / sum;
        lse[r] = mx + logf(sum);
    }
}
