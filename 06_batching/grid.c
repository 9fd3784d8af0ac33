/*
 * grid.c: chapter 06's iteration x sequence grid (grid.h) -- recorded from the engine's own
 * decisions, counted, printed as text and written as TSV rows.
 *
 * What it teaches: the picture the Orca paper (Yu et al. 2022) and most explanations of
 * continuous batching draw. Under static batching a batch's rows end at different columns and
 * the freed rows stay empty until the longest is done; under static-padded batching those rows
 * are computed all the same ('p'); under continuous batching a waiting request takes a freed row
 * at the next column. The engine fills the grid (EngineOptions.trace, engine_record_cells in
 * scheduler.c); nothing here reconstructs a decision.
 */
#include "06_batching/grid.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* ==== recording =================================================================================== */

EngineGrid engine_grid_empty(int n) { return (EngineGrid){.n = n, .iterations = 0, .cap = 0, .cells = NULL}; }

int engine_grid_record(void *ctx, int iteration, const EngineCell *cells, int n)
{
    EngineGrid *g = ctx;
    if (n != g->n || iteration != g->iterations)
        return error_set("grid: column %d of %d requests, expected column %d of %d", iteration, n, g->iterations,
                         g->n);
    if (g->iterations == g->cap) { /* grown by doubling */
        const int cap = g->cap ? 2 * g->cap : 64;
        EngineCell *more = realloc(g->cells, (size_t)cap * (size_t)n * sizeof(EngineCell));
        if (!more)
            return error_set("out of memory for a grid of %d iterations of %d requests", cap, n);
        g->cells = more, g->cap = cap;
    }
    memcpy(g->cells + (size_t)g->iterations * (size_t)n, cells, (size_t)n * sizeof(EngineCell));
    g->iterations++;
    return 0;
}

void engine_grid_free(EngineGrid *g)
{
    free(g->cells);
    *g = engine_grid_empty(g->n);
}

/* ==== counting ==================================================================================== */

static const struct {
    char mark;
    const char *name, *meaning;
} STATES[ENGINE_CELL_STATES] = {
    [ENGINE_CELL_NONE] = {' ', "none", "not arrived, or finished"},
    [ENGINE_CELL_WAITING] = {'-', "waiting", "waiting in the queue"},
    [ENGINE_CELL_STALLED] = {'.', "stalled", "in the batch, no token this iteration (budget spent)"},
    [ENGINE_CELL_PREFILL] = {'P', "prefill", "a chunk of its prompt"},
    [ENGINE_CELL_DECODE] = {'d', "decode", "one decode step"},
    [ENGINE_CELL_RECOMPUTE] = {'r', "recompute", "recomputing its K/V after a preemption"},
    [ENGINE_CELL_PREEMPTED] = {'X', "preempted", "preempted (blocks given back)"},
    [ENGINE_CELL_PADDING] = {'p', "padding", "computed and thrown away (padding, or already finished)"},
};

char engine_grid_mark(EngineCellState s) { return s >= 0 && s < ENGINE_CELL_STATES ? STATES[s].mark : '?'; }
const char *engine_grid_state_name(EngineCellState s)
{
    return s >= 0 && s < ENGINE_CELL_STATES ? STATES[s].name : "?";
}

int engine_grid_count(const EngineGrid *g, int i, EngineCellState s)
{
    int count = 0;
    for (int t = 0; t < g->iterations; t++)
        count += engine_grid_at(g, t, i)->state == s;
    return count;
}

int engine_grid_column_slots(const EngineGrid *g, int t)
{
    int slots = 0;
    for (int i = 0; i < g->n; i++)
        slots += engine_grid_at(g, t, i)->tokens + engine_grid_at(g, t, i)->padded;
    return slots;
}

/* ==== text and rows =============================================================================== */

void engine_grid_print(FILE *f, const EngineGrid *g, const EngineRequest *reqs, const char *indent)
{
    const char *label = "iteration";
    fprintf(f, "%s%-22s ", indent, label);
    for (int t = 0; t < g->iterations; t++) /* a ruler: the tens above the ones */
        fputc(t % 10 == 0 ? '0' + (t / 10) % 10 : ' ', f);
    fprintf(f, "\n%s%-22s ", indent, "");
    for (int t = 0; t < g->iterations; t++)
        fputc('0' + t % 10, f);
    fprintf(f, "   own  thrown away\n");
    for (int i = 0; i < g->n; i++) {
        char name[64];
        snprintf(name, sizeof name, "request %d (%d + %d)", i, reqs[i].n_prompt, reqs[i].max_new);
        fprintf(f, "%s%-22s|", indent, name);
        int own = 0, padded = 0;
        for (int t = 0; t < g->iterations; t++) {
            const EngineCell *c = engine_grid_at(g, t, i);
            fputc(engine_grid_mark(c->state), f);
            own += c->tokens, padded += c->padded;
        }
        fprintf(f, "| %4d %7d\n", own, padded);
    }
}

void engine_grid_legend(FILE *f, const char *indent)
{
    static const EngineCellState order[] = {ENGINE_CELL_PREFILL,   ENGINE_CELL_DECODE,  ENGINE_CELL_WAITING,
                                            ENGINE_CELL_STALLED,   ENGINE_CELL_PREEMPTED, ENGINE_CELL_RECOMPUTE,
                                            ENGINE_CELL_PADDING,   ENGINE_CELL_NONE};
    int col = 0;
    fputs(indent, f);
    for (size_t k = 0; k < sizeof order / sizeof order[0]; k++) {
        char item[128];
        const int len = snprintf(item, sizeof item, "%s'%c' %s", col ? ";  " : "", STATES[order[k]].mark,
                                 STATES[order[k]].meaning);
        if (col && col + len > 96) {
            fprintf(f, "\n%s", indent);
            col = 0;
            snprintf(item, sizeof item, "'%c' %s", STATES[order[k]].mark, STATES[order[k]].meaning);
        }
        col += fprintf(f, "%s", item);
    }
    fputc('\n', f);
}

void engine_grid_rows(Tsv *t, const char *policy, const EngineGrid *g)
{
    for (int it = 0; it < g->iterations; it++)
        for (int i = 0; i < g->n; i++) {
            const EngineCell *c = engine_grid_at(g, it, i);
            tsv_row(t, "%s\t%d\t%d\t%d\t%s\t%d\t%d", policy, it, i, (int)c->state, engine_grid_state_name(c->state),
                    c->tokens, c->padded);
        }
}
