/*
 * main.c: the chapter 05 program, build/bin/05_paged: the lesson, and the table of subcommands.
 *
 *   05_paged [--device D]   the lesson: block tables drawn over the pool, the memory a contiguous
 *                           cache wastes against paging (measured with the allocators' own
 *                           counters, waste.c), fragmentation as requests come and go (frag.c),
 *                           what fork/copy-on-write saves, prefix caching (lesson_prefix.c),
 *                           decode speed by block size, and the same tokens as chapter 04
 *   05_paged generate ...   token ids in, token ids out, through a paged cache (docs/contracts.md
 *                           §4), with --n-samples K forked samples of one prompt (generate.c)
 *   05_paged attn ...       attention on .npy files: K, V scattered into a shuffled block table
 *                           (harness.c)
 *   05_paged verify ...     every kernel against chapter 04, for block sizes 1, 8, 16, 32, and
 *                           batches of sequences of different lengths (harness.c)
 *   05_paged bench ...      decode GB/s, paged by block size against chapter 04's contiguous cache
 *                           (bench.c)
 *
 * Every subcommand takes --help.
 */
#include <stdio.h>
#include <string.h>

#include "04_kvcache/kvcache.h"
#include "05_paged/commands.h"
#include "05_paged/frag.h"
#include "05_paged/paged.h"
#include "05_paged/waste.h"
#include "common/bench.h"
#include "common/device.h"
#include "common/error.h"
#include "common/model.h"
#include "common/plot.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/tensor.h"

#define PROG PAGED_PROG

static void lesson_intro(void)
{
    printf("Chapter 04 gave every sequence max_seq positions of cache up front. A server does not know how long\n"
           "a request will run, so most of that reservation stays empty, and reservations of different sizes\n"
           "fragment what is left. Paging cuts the cache into blocks of a few tokens kept in one pool; each\n"
           "sequence has a block table (logical block -> physical block), takes a block when its last one is\n"
           "full, and the attention kernel reads K and V through the table, in place.\n\n");
}

/* ==== 1. block tables over the pool, drawn ============================================================ */

static void draw_pool(const PagedPool *p, PagedSeq *const *seqs, const char *names, int n_seqs)
{
    const int bs = p->block_size;
    for (int id = 0; id < p->num_blocks; id++) {
        printf("     #%02d |", id);
        for (int slot = 0; slot < bs; slot++) {
            char cell[32] = "";
            for (int s = 0; s < n_seqs; s++)
                for (int b = 0; b < seqs[s]->n_blocks; b++)
                    if (seqs[s]->blocks[b] == id && b * bs + slot < seqs[s]->len) {
                        char one[24];
                        snprintf(one, sizeof one, "%s%c%d", cell[0] ? "/" : "", names[s], b * bs + slot);
                        strncat(cell, one, sizeof cell - strlen(cell) - 1);
                    }
            printf(" %-7s", cell[0] ? cell : ".");
        }
        printf("| %s\n", p->ref[id] == 0 ? "free" : p->ref[id] == 1 ? "ref 1" : "ref 2, shared");
    }
    for (int s = 0; s < n_seqs; s++) {
        printf("     table %c (%2d tokens):", names[s], seqs[s]->len);
        for (int b = 0; b < seqs[s]->n_blocks; b++)
            printf(" %d->#%02d", b, seqs[s]->blocks[b]);
        printf("\n");
    }
}

static void lesson_picture(void)
{
    PagedPool p;
    if (paged_pool_create(&p, 1, 1, 1, 4, 10) != 0)
        die_with_error();
    paged_pool_shuffle(&p, 7);
    PagedSeq a, b, c;
    paged_seq_init(&a), paged_seq_init(&b), paged_seq_init(&c);
    PagedSeq *all[3] = {&a, &b, &c};
    /* two requests arrive and grow a token at a time, interleaved, as a server runs them */
    for (int step = 0; step < 9; step++) {
        if (step < 6 && paged_seq_append(&p, &a, 1) != 0)
            die_with_error();
        if (paged_seq_append(&p, &b, 1) != 0)
            die_with_error();
    }
    printf("1. A pool of 10 blocks of 4 token slots, handed out in shuffled order. Request A holds 6 tokens,\n"
           "   request B 9; they grew one token at a time, side by side. Each cell is a slot: the owner and the\n"
           "   token's position, '.' for an empty slot.\n\n");
    draw_pool(&p, all, "AB", 2);
    if (paged_seq_fork(&p, &a, &c) != 0)
        die_with_error();
    printf("\n   Fork: C = A (a second sample of A's prompt). C's table points at A's blocks; nothing is copied:\n\n");
    draw_pool(&p, all, "ABC", 3);
    if (paged_seq_append(&p, &c, 1) != 0 || paged_seq_append(&p, &a, 1) != 0)
        die_with_error();
    printf("\n   C and then A add a token. C's first write goes to the shared, partly filled block: C gets a copy\n"
           "   of its two filled slots (copy-on-write) and writes there; A's block is its own again.\n\n");
    draw_pool(&p, all, "ABC", 3);
    if (paged_check(&p, all, 3) != 0)
        die_with_error();
    for (int s = 0; s < 3; s++)
        paged_seq_free(&p, all[s]);
    printf("\n   Allocator counters: %zu allocations, %zu releases, %zu copy-on-write; after freeing all: %d of %d "
           "free.\n\n",
           p.n_allocs, p.n_releases, p.n_cow_copies, p.n_free, p.num_blocks);
    paged_pool_free(&p);
}

/* ==== 2. memory waste: contiguous reservations against paging ========================================= */

enum { WASTE_REQUESTS = 2000 };

/* One scheme on both workloads: its row in the table and its two rows in the .dat file. */
static void waste_row(Tsv *tsv, const WorkloadItem *const wl[2], int scheme, int max_seq, int budget)
{
    static const char *const WORKLOAD_NAMES[2] = {"skewed", "uniform"};
    char name[64], label[16];
    if (scheme == PAGED_RESERVE_MAX_SEQ)
        snprintf(name, sizeof name, "(a) contiguous, reserve max_seq");
    else if (scheme == PAGED_RESERVE_OWN)
        snprintf(name, sizeof name, "(b) contiguous, reserve own final length");
    else
        snprintf(name, sizeof name, "(c) paged, block size %d", scheme);
    snprintf(label, sizeof label, scheme < 0 ? "max_seq" : scheme == 0 ? "own" : "bs%d", scheme);
    PagedWaste r[2];
    for (int k = 0; k < 2; k++) {
        if (paged_waste_measure(wl[k], WASTE_REQUESTS, scheme, max_seq, budget, &r[k]) != 0)
            die_with_error();
        tsv_row(tsv, "%s\t%s\t%d\t%.2f\t%.2f\t%d\t%s", WORKLOAD_NAMES[k],
                scheme < 0 ? "max_seq" : scheme == 0 ? "own_length" : "paged", scheme, 100.0 * r[k].used_frac,
                100.0 * (1.0 - r[k].used_frac), r[k].fit, label);
    }
    printf("   %-40s %13.1f%% %14d %13.1f%% %14d\n", name, 100.0 * r[0].used_frac, r[0].fit, 100.0 * r[1].used_frac,
           r[1].fit);
}

static void lesson_waste(int max_seq)
{
    const int budget = 64 * max_seq; /* the memory of 64 max_seq reservations */
    const int schemes[] = {PAGED_RESERVE_MAX_SEQ, PAGED_RESERVE_OWN, 1, 8, 16, 32, 64, 128};
    char dat[4096];
    Tsv tsv;
    lesson_data_open(&tsv, dat, sizeof dat, PROG, "waste",
                     "workload\tscheme\tblock_size\tused_pct\twaste_pct\trequests_fit\tlabel");
    printf("2. Memory waste. %d requests per workload, max_seq %d. 'skewed': lognormal prompt and output lengths\n"
           "   with ShareGPT's means (161 and 338 tokens, medians %d and %d, sigma 1); 'uniform': both uniform in\n"
           "   1..%d. 'used' = KV memory holding tokens / KV memory allocated, averaged over every decode step\n"
           "   of every request (the allocator's counters: chapter 04 caches' bytes, the pool's blocks in use).\n"
           "   'fit' = requests held at once at their final lengths in the memory of 64 max_seq reservations.\n\n"
           "   %-40s %14s %14s %14s %14s\n",
           WASTE_REQUESTS, max_seq, PAGED_WASTE_PROMPT_MEDIAN, PAGED_WASTE_OUT_MEDIAN, 2 * PAGED_WASTE_UNIFORM_MEDIAN,
           "scheme", "skewed used", "skewed fit", "uniform used", "uniform fit");
    WorkloadItem *skewed, *uniform;
    if (paged_waste_workload(WORKLOAD_SKEWED, WASTE_REQUESTS, max_seq, 2023, &skewed) != 0 ||
        paged_waste_workload(WORKLOAD_UNIFORM, WASTE_REQUESTS, max_seq, 2024, &uniform) != 0)
        die_with_error();
    const WorkloadItem *const wl[2] = {skewed, uniform};
    for (size_t s = 0; s < sizeof schemes / sizeof schemes[0]; s++)
        waste_row(&tsv, wl, schemes[s], max_seq, budget);
    tsv_close(&tsv);
    double mean_pr = 0, mean_out = 0;
    for (int i = 0; i < WASTE_REQUESTS; i++)
        mean_pr += skewed[i].prompt_len, mean_out += skewed[i].output_len;
    printf("\n   (skewed sample: mean prompt %.0f, mean output %.0f tokens after clipping to max_seq.)\n"
           "   The vLLM paper measured 20.4%% - 38.2%% of KV memory holding tokens in earlier systems, and under\n"
           "   4%% waste with paging. Reserving max_seq is (a); even knowing each request's final length (b)\n"
           "   wastes the slots reserved for tokens not generated yet; paging wastes only the empty slots of each\n"
           "   sequence's last block, at most block_size - 1.\n\n",
           mean_pr / WASTE_REQUESTS, mean_out / WASTE_REQUESTS);
    workload_free(skewed, WASTE_REQUESTS), workload_free(uniform, WASTE_REQUESTS);
    plot_show(PROG, "waste", dat, 1, stdout, "   ", "\n\n");
}

/* ==== 3. fragmentation: requests arriving and leaving one arena over time ============================= */

enum { FRAG_REQUESTS = 2000, FRAG_SCHEMES = 5 };
#define FRAG_RATE 1.0 /* arrivals per step */
static const int FRAG_SCHEME[FRAG_SCHEMES] = {PAGED_RESERVE_MAX_SEQ, PAGED_RESERVE_OWN, 1, 16, 64};

static const char *frag_name(int scheme, char *buf, size_t len)
{
    if (scheme == PAGED_RESERVE_MAX_SEQ)
        snprintf(buf, len, "contiguous, max_seq");
    else if (scheme == PAGED_RESERVE_OWN)
        snprintf(buf, len, "contiguous, own length");
    else
        snprintf(buf, len, "paged, block size %d", scheme);
    return buf;
}

static double frag_waste(const PagedFrag *f) { return f->reserved_pct + f->internal_pct + f->external_pct; }

/* The sentences under the table, from one workload's rows (r[FRAG_SCHEMES], in FRAG_SCHEME's order). */
static void frag_say(const char *workload, const PagedFrag *r)
{
    int worst = 0;
    for (int i = 1; i < FRAG_SCHEMES; i++)
        worst = frag_waste(&r[i]) > frag_waste(&r[worst]) ? i : worst;
    char b[40];
    const PagedFrag *mx = &r[0], *own = &r[1], *p16 = &r[3];
    const int faster_mx = p16->steps < mx->steps, faster_own = p16->steps < own->steps;
    printf("   %s: %s wastes most, %.1f%% of the arena (reserved %.1f%%, internal\n"
           "   %.1f%%, external %.1f%%). Ranges of one size (max_seq) leave %s external fragmentation\n"
           "   (%.1f%%); ranges of each request's own length leave no internal fragmentation %s:\n"
           "   %.1f%% external. Paged, block size 16 wastes %.1f%% and finishes in %ld steps, %.1fx %s\n"
           "   than contiguous max_seq and %.1fx %s than own-length ranges; its tokens fill %.1f%% of the\n"
           "   arena (max_seq ranges %.1f%%, own-length %.1f%%).\n",
           workload, frag_name(FRAG_SCHEME[worst], b, sizeof b), frag_waste(&r[worst]), r[worst].reserved_pct,
           r[worst].internal_pct, r[worst].external_pct, mx->external_pct > 0 ? "some" : "no", mx->external_pct,
           own->external_pct > 0 ? "but holes" : "and no holes", own->external_pct, frag_waste(p16), p16->steps,
           faster_mx ? (double)mx->steps / p16->steps : (double)p16->steps / mx->steps, faster_mx ? "faster" : "slower",
           faster_own ? (double)own->steps / p16->steps : (double)p16->steps / own->steps,
           faster_own ? "faster" : "slower", p16->used_pct, mx->used_pct, own->used_pct);
}

static void lesson_frag(int max_seq)
{
    const int arena = 16 * max_seq;
    char dat[4096], b[40];
    Tsv tsv;
    lesson_data_open(&tsv, dat, sizeof dat, PROG, "frag",
                     "workload\tscheme\tused_pct\treserved_pct\tinternal_pct\texternal_pct\tfree_pct\tsteps\t"
                     "completed\tpreemptions\tmean_running\twaiting_pct\tlabel");
    printf("3. Fragmentation. The same %d requests per workload as in 2 arrive at %.0f per step at an arena of\n"
           "   %d token slots (16 x max_seq). Each step every running request generates a token; the head of\n"
           "   the queue is admitted when it fits (contiguous: the first hole big enough for its range; paged:\n"
           "   blocks for its prompt and first token; a paged request that finds no free block preempts the\n"
           "   newest one, which starts over). Each step's slots, as %% of the arena averaged over the steps:\n"
           "   used (tokens held), reserved (for tokens the request will still generate), internal (reserved\n"
           "   past its final length), external (free, while the head of the queue waits for a hole although\n"
           "   enough slots are free), free. Counts, not timings: the same on every machine.\n\n"
           "   %-24s %6s %9s %9s %9s %6s %7s %8s %8s\n",
           FRAG_REQUESTS, FRAG_RATE, arena, "scheme", "used", "reserved", "internal", "external", "free", "steps",
           "running", "preempt");
    static const char *const WL[2] = {"skewed", "uniform"};
    PagedFrag r[2][FRAG_SCHEMES];
    for (int k = 0; k < 2; k++) {
        WorkloadItem *w;
        if (paged_frag_workload(k == 0 ? WORKLOAD_SKEWED : WORKLOAD_UNIFORM, FRAG_REQUESTS, max_seq, FRAG_RATE,
                                k == 0 ? 2023 : 2024, &w) != 0)
            die_with_error();
        printf("   %s\n", WL[k]);
        for (int i = 0; i < FRAG_SCHEMES; i++) {
            const PagedFrag *f = &r[k][i];
            if (paged_frag_simulate(w, FRAG_REQUESTS, FRAG_SCHEME[i], arena, max_seq, NULL, 0, &r[k][i]) != 0)
                die_with_error();
            printf("   %-24s %5.1f%% %8.1f%% %8.1f%% %8.1f%% %5.1f%% %7ld %8.1f %8ld\n", frag_name(FRAG_SCHEME[i], b, sizeof b),
                   f->used_pct, f->reserved_pct, f->internal_pct, f->external_pct, f->free_pct, f->steps,
                   f->mean_running, f->preemptions);
            tsv_row(&tsv, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%ld\t%d\t%ld\t%.2f\t%.1f\t%s", WL[k], FRAG_SCHEME[i],
                    f->used_pct, f->reserved_pct, f->internal_pct, f->external_pct, f->free_pct, f->steps,
                    f->completed, f->preemptions, f->mean_running, f->waiting_pct,
                    FRAG_SCHEME[i] < 0 ? "max_seq" : FRAG_SCHEME[i] == 0 ? "own" : FRAG_SCHEME[i] == 1 ? "bs1"
                                                   : FRAG_SCHEME[i] == 16 ? "bs16" : "bs64");
        }
        workload_free(w, FRAG_REQUESTS);
    }
    tsv_close(&tsv);
    double least_waiting = 100.0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < FRAG_SCHEMES; i++)
            least_waiting = r[k][i].waiting_pct < least_waiting ? r[k][i].waiting_pct : least_waiting;
    printf("\n   'running' = requests generating a token per step, the mean. A request was waiting at the end of\n"
           "   at least %.0f%% of the steps under every scheme: the arena was the limit, as in a busy server.\n"
           "   'free' = slots nobody holds: while the request at the head needs more than is free in all, and\n"
           "   as the arena drains after the last arrival.\n",
           least_waiting);
    frag_say("Skewed", r[0]);
    frag_say("Uniform", r[1]);
    double lo = 100.0, hi = 0.0;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 2; i++) /* the contiguous schemes */
            lo = r[k][i].used_pct < lo ? r[k][i].used_pct : lo, hi = r[k][i].used_pct > hi ? r[k][i].used_pct : hi;
    printf("   The vLLM paper (Fig. 2) measured 20.4%% - 38.2%% of KV memory holding tokens in earlier systems;\n"
           "   here tokens fill %.1f%% - %.1f%% of the arena under contiguous ranges.\n", lo, hi);
    plot_show(PROG, "frag", dat, 0, stdout, "   ", "\n\n");
}

/* ==== 4. what fork and copy-on-write save for n samples of one prompt ================================= */

static void lesson_fork(const Model *m)
{
    const int bs = 16, prompts[2] = {512, 100}, new_tokens = 128, ns[] = {1, 2, 4, 8, 16};
    PagedPool real;
    if (paged_pool_create(&real, m->c.n_layers, m->c.n_kv_heads, model_head_size(&m->c), bs, 1) != 0)
        die_with_error();
    const size_t block_bytes = paged_block_bytes(&real);
    paged_pool_free(&real);
    char b1[32], b2[32];
    int cow_each = 1; /* every row copies the partial prompt block once per other sample */
    printf("4. n samples of one prompt (parallel sampling), %d new tokens each, block size %d. Without sharing,\n"
           "   every sample holds its own copy of the prompt's K/V; forked, they share its blocks and copy only a\n"
           "   partly filled last block on its first write. Blocks counted by the pool at its peak; bytes for\n"
           "   this chapter's model (%s per block).\n\n   %7s %4s %16s %16s %8s %6s %12s\n",
           new_tokens, bs, format_bytes((double)block_bytes, b1, sizeof b1), "prompt", "n", "blocks, no share",
           "blocks, forked", "saved", "COW", "forked KV");
    for (int pi = 0; pi < 2; pi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            PagedForkCost f;
            if (paged_fork_measure(prompts[pi], new_tokens, ns[ni], bs, &f) != 0)
                die_with_error();
            cow_each = cow_each && f.cow_copies == (size_t)(prompts[pi] % bs ? ns[ni] - 1 : 0);
            printf("   %7d %4d %16d %16d %7.1f%% %6zu %12s\n", prompts[pi], ns[ni], f.peak_unshared, f.peak_forked,
                   100.0 * (f.peak_unshared - f.peak_forked) / f.peak_unshared, f.cow_copies,
                   format_bytes((double)f.peak_forked * block_bytes, b2, sizeof b2));
        }
    printf("\n   A 100-token prompt ends inside a block (100 = 6 x 16 + 4): %s\n"
           "   'generate --n-samples K' runs exactly this through the model.\n\n",
           cow_each ? "each of the other n - 1\n   samples copies that block once (COW = n - 1 in every row)."
                    : "the COW column counts the\n   samples that copied that block.");
}

/* ==== 5. decode speed: paged by block size against chapter 04's contiguous cache ====================== */

static void lesson_speed(void)
{
    const int B = 8, H = 8, Hkv = 2, L = 8192, D = 128, sizes[] = {1, 16, 128};
    const Roofline *roof = roofline_get();
    char b1[32];
    PagedDecodeTiming c = paged_time_decode(B, H, Hkv, L, D, 0, 5, 1, 0);
    printf("6. Decode attention through the tables against chapter 04's contiguous cache: B = %d sequences of\n"
           "   L = %d tokens, H = %d, Hkv = %d, D = %d (%s of K and V, caches flushed before each run).\n"
           "   'in order': each sequence's blocks consecutive in the pool; 'shuffled': every block anywhere.\n\n"
           "   %-26s %10s %8s %12s\n   %-26s %7.2f ms %8.1f %11s\n",
           B, L, H, Hkv, D, format_bytes(c.bytes, b1, sizeof b1), "cache", "time", "GB/s", "vs contig.",
           "contiguous (ch04 split)", c.contig_s * 1e3, c.bytes / c.contig_s / 1e9, "1.00");
    double ratio[2][3], gbs[2][3]; /* [in order, shuffled][sizes] */
    for (int shuffled = 0; shuffled <= 1; shuffled++)
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            PagedDecodeTiming t = paged_time_decode(B, H, Hkv, L, D, sizes[i], 5, 0, shuffled);
            char name[40];
            snprintf(name, sizeof name, "paged, bs %d, %s", sizes[i], shuffled ? "shuffled" : "in order");
            ratio[shuffled][i] = c.contig_s / t.paged_s, gbs[shuffled][i] = t.bytes / t.paged_s / 1e9;
            printf("   %-26s %7.2f ms %8.1f %11.2f\n", name, t.paged_s * 1e3, gbs[shuffled][i], ratio[shuffled][i]);
        }
    const double scattered = roofline_scattered_read_gbs((size_t)16 * D * sizeof(float));
    const double shuffle_cost = 100.0 * (1.0 - ratio[1][1] / ratio[0][1]);
    printf("\n   'vs contig.' > 1 is faster. This machine reads DRAM at %.1f GB/s as one stream, and at %.1f GB/s in\n"
           "   8 KiB pieces taken in random order (one block of 16 tokens of one kv head), with no arithmetic\n"
           "   at all: the ceiling for shuffled blocks of 16. The kernel reads them at %.1f GB/s, %.0f%% of it.\n",
           roof->dram_gbs, scattered, gbs[1][1], 100.0 * gbs[1][1] / scattered);
    if (shuffle_cost > 5.0)
        printf("   Shuffled, block size 16 takes %.0f%% longer than in order: the hardware prefetcher follows a\n"
               "   stream within a page, and each jump to another block restarts it cold.\n",
               100.0 * (ratio[0][1] / ratio[1][1] - 1.0));
    else
        printf("   Shuffled and in order, block size 16 runs within 5%% here (%.2fx and %.2fx): this run's\n"
               "   prefetcher did not lose much at each jump to another block.\n",
               ratio[1][1], ratio[0][1]);
    printf("   Block size 1, in order, runs at %.2fx against %.2fx at 16: %s.\n"
           "   A GPU is expected to hide scattered blocks: thousands of warps each keep loads outstanding, and\n"
           "   while some wait for DRAM the others compute ('bench --device cuda' measures it). The kernel looks\n"
           "   each chunk's blocks up in the table once, before its loops (docs/05_paged.md says why it does\n"
           "   not also prefetch the next block in software). 'bench' sweeps more.\n\n",
           ratio[0][0], ratio[0][1],
           ratio[0][0] < ratio[0][1] ? "a table lookup and a 1-column matrix\n   product for every key cost more"
                                     : "tiny blocks cost nothing more here");
}

/* ==== 6. the same tokens as chapter 04 ================================================================= */

static void lesson_tokens(const Model *m)
{
    enum { N_PROMPT = 24, N_NEW = 48 };
    int prompt[N_PROMPT], ref[N_NEW], got[N_NEW];
    for (int i = 0; i < N_PROMPT; i++)
        prompt[i] = (i * 29 + 3) % m->c.vocab_size;
    const GenOptions o4 = {.max_new = N_NEW, .temperature = 0.0f, .seed = 0, .use_cache = 1, .dtype = KV_F32,
                           .kernel = 2, .prefill_chunk = 0, .stop_at_bos_eos = 0};
    if (kvcache_generate(m, prompt, N_PROMPT, &o4, ref, NULL) != 0)
        die_with_error();
    printf("7. Greedy generation, %d tokens after a %d-token prompt, against chapter 04 (contiguous cache):\n\n",
           N_NEW, N_PROMPT);
    const int sizes[] = {1, 8, 16, 32};
    for (int i = 0; i < 4; i++) {
        const PagedGenOptions o = {.max_new = N_NEW, .temperature = 0.0f, .seed = 0, .n_samples = 1,
                                   .block_size = sizes[i], .num_blocks = 0, .kernel = 2, .shuffle = 77,
                                   .stop_at_bos_eos = 0};
        PagedGenStats st;
        if (paged_generate(m, prompt, N_PROMPT, &o, got, &st) != 0)
            die_with_error();
        printf("   block size %2d, shuffled blocks: %s tokens (%d blocks)\n", sizes[i],
               memcmp(ref, got, sizeof ref) == 0 ? "the same" : "DIFFERENT", st.peak_blocks);
    }
    printf("\n");
}

/* ==== the lesson ======================================================================================= */

static const Program PROGRAM;

static int cmd_lesson(int argc, char **argv)
{
    const Device dev = lesson_begin(
        &PROGRAM, "where to run (the lesson measures the CPU; bench --device cuda times the GPU kernels)", NULL, 0,
        argc, argv);
    Model m;
    program_load_model(NULL, &m);
    lesson_intro();
    lesson_machine(dev, 0);
    lesson_picture();
    lesson_waste(m.c.seq_len);
    lesson_frag(m.c.seq_len);
    lesson_fork(&m);
    paged_lesson_prefix(); /* lesson_prefix.c */
    lesson_speed();
    lesson_tokens(&m);
    model_free(&m);
    return lesson_end(
        "paging turns the cache into a pool of small blocks: a sequence wastes at most one block's\n"
        "empty slots, requests of any length share one pool, samples of one prompt share its blocks, and\n"
        "requests that start alike share the blocks of their common prefix, cached after they finish.\n"
        "The attention kernel pays one table lookup per block. Chapter 06 schedules many requests over this\n"
        "pool at every step (continuous batching).\n");
}

/* ==== main ============================================================================================= */

static const Subcommand COMMANDS[] = {
    {.name = "generate", .run = paged_cmd_generate,
     .summary = "token ids in, token ids out, through a paged cache (--n-samples: forked samples)"},
    {.name = "attn", .run = paged_cmd_attn,
     .summary = "attention on .npy files, K/V scattered into a shuffled block table"},
    {.name = "verify", .run = paged_cmd_verify,
     .summary = "every kernel against chapter 04 for block sizes 1, 8, 16, 32 and mixed batches"},
    {.name = "bench", .run = paged_cmd_bench,
     .summary = "decode GB/s by block size against chapter 04's contiguous cache"},
    {.name = NULL},
};

static const Program PROGRAM = {
    .name = PROG, .title = "Chapter 05: PagedAttention", .lesson = cmd_lesson, .subcommands = COMMANDS};

int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
