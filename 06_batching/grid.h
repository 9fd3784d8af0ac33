/*
 * grid.h: chapter 06's iteration x sequence grid -- Orca's picture of a batching policy, drawn
 * from what the engine decided.
 *
 * One row per request, one column per iteration; a cell says what that request did in that
 * iteration (EngineCell: a prefill chunk, a decode, waiting, preempted, recomputing, padding).
 * engine_grid_record is an EngineTraceFn: give it as EngineOptions.trace with an EngineGrid as
 * trace_ctx and engine_serve fills the grid, one column per iteration. The lesson prints it,
 * writes it as TSV rows and plots it (plot.gp's 'grid').
 */
#ifndef ENGINE_GRID_H
#define ENGINE_GRID_H

#include <stdio.h>

#include "06_batching/engine.h"
#include "common/bench.h"

typedef struct {
    int n;             /* rows: requests */
    int iterations;    /* columns recorded */
    int cap;           /* columns allocated */
    EngineCell *cells; /* (cap, n): the cell of request i in iteration t is cells[t * n + i] */
} EngineGrid;

/* An empty grid for n requests (nothing allocated until the first column). */
EngineGrid engine_grid_empty(int n);
/* The EngineTraceFn: appends one column (ctx is an EngineGrid). 0, or -1 with an error recorded
 * (out of memory, or a column out of order). */
int engine_grid_record(void *ctx, int iteration, const EngineCell *cells, int n);
void engine_grid_free(EngineGrid *g);

static inline const EngineCell *engine_grid_at(const EngineGrid *g, int iteration, int i)
{
    return &g->cells[(size_t)iteration * (size_t)g->n + (size_t)i];
}

/* The one character a state is drawn with, and its name in the legend and the TSV. */
char engine_grid_mark(EngineCellState s);
const char *engine_grid_state_name(EngineCellState s);

/* Cells of request i in state s. */
int engine_grid_count(const EngineGrid *g, int i, EngineCellState s);
/* Token slots of iteration t: every request's tokens and padding in that column. */
int engine_grid_column_slots(const EngineGrid *g, int t);

/* The grid as text on f: a ruler of iteration numbers, then one line per request, labelled
 * with its index, prompt and output lengths (reqs), and after it the slots it computed for
 * itself and those thrown away. Each line starts with indent. */
void engine_grid_print(FILE *f, const EngineGrid *g, const EngineRequest *reqs, const char *indent);
/* Every mark and what it means, wrapped after about 100 columns; lines start with indent. */
void engine_grid_legend(FILE *f, const char *indent);

/* The columns of engine_grid_rows, and one row per cell: policy, iteration, request, the state's
 * number (EngineCellState) and name, its own tokens, its thrown-away slots. */
#define ENGINE_GRID_COLUMNS "policy\titeration\trequest\tstate\tname\ttokens\tpadded"
void engine_grid_rows(Tsv *t, const char *policy, const EngineGrid *g);

#endif
