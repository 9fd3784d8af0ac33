/*
 * prefix_internal.h: what the allocator (pool.c) and prefix caching (prefix.c) call of each other.
 * Callers use paged.h.
 *
 * The pool's ref-0 blocks are in one of two places: the stack of empty blocks (free_ids, no
 * name) or, with prefix caching, the list of cached blocks (named), least recently used first.
 * An allocation takes an empty block, else evicts the head of that list.
 */
#ifndef PAGED_PREFIX_INTERNAL_H
#define PAGED_PREFIX_INTERNAL_H

#include "05_paged/paged.h"

/* Room in s's table for n_total blocks, and for their names with prefix caching on (pool.c). */
int paged_seq_reserve(PagedPool *p, PagedSeq *s, int n_total);

/* Block id's ref count just reached 0: 1 if it holds a name (it is now the most recently used
 * cached block, n_cached + 1), 0 if not (the caller pushes it on the empty stack). */
int paged_prefix_cache(PagedPool *p, int id);

/* The least recently used cached block, taken off the list with its name forgotten (n_cached - 1,
 * n_evictions + 1). Only when n_cached > 0. */
int paged_prefix_evict(PagedPool *p);

/* A table that holds block id alone is about to write into it (its partly filled last block):
 * the block forgets its name, so that cached K/V are never overwritten. */
void paged_prefix_before_write(PagedPool *p, int id);

void paged_prefix_free(PagedPool *p);

/* Prefix caching's invariants (paged_check calls it when caching is on): the list of cached
 * blocks holds exactly the named blocks of ref 0, once each, linked both ways; no block on the
 * empty stack has a name; every table entry is a named block found under its name, whose stored
 * tokens and parent name hash to that name; the count of names; every table's names agree with
 * the blocks it holds. 0, or -1 naming the first broken one. */
int paged_prefix_check(const PagedPool *p, PagedSeq *const *seqs, int n_seqs);

#endif
