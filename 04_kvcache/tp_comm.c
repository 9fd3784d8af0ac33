/*
 * tp_comm.c: the ranks of chapter 04's tensor parallelism, joined by MPI (tp.h).
 *
 * What it teaches: a tensor-parallel forward needs two things of the other ranks -- a sum of every
 * rank's partial activations (all-reduce: after attention's Wo and after the MLP's W2, as in
 * Megatron-LM) and, for a classifier split by vocabulary, every rank's slice of the logits
 * (all-gather). MPI has both; this file times the first. And one thing more for a program people
 * run: when any rank fails, every rank must stop, and one line must say why.
 */
#include "04_kvcache/tp.h"

#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/tensor.h"
#include "common/timer.h"

/* ==== the collectives model_forward asks for ============================================================ */

static int tp_all_reduce(void *ctx, float *x, size_t n)
{
    TpRanks *t = ctx;
    if (n > (size_t)INT32_MAX)
        return error_set("an all-reduce of %zu floats is more than MPI's int count", n);
    const double t0 = timer_now();
    const int rc = MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    t->reduce_s += timer_now() - t0;
    t->reduce_bytes += (double)n * sizeof(float);
    t->reduces++;
    return rc == MPI_SUCCESS ? 0 : error_set("MPI_Allreduce of %zu floats failed (%d)", n, rc);
}

static int tp_all_gather(void *ctx, const float *part, float *all, const int *counts)
{
    const TpRanks *t = ctx;
    int *displs = mem_alloc((size_t)t->world * sizeof(int), "all-gather displacements");
    if (!displs)
        return -1;
    for (int r = 0, at = 0; r < t->world; at += counts[r], r++)
        displs[r] = at;
    const int rc = MPI_Allgatherv(part, counts[t->rank], MPI_FLOAT, all, counts, displs, MPI_FLOAT, MPI_COMM_WORLD);
    mem_free(displs);
    return rc == MPI_SUCCESS ? 0 : error_set("MPI_Allgatherv of the logits failed (%d)", rc);
}

/* ==== starting, stopping, and errors every rank agrees on ============================================== */

static int saved_out = -1, saved_err = -1; /* a quiet rank's stdout and stderr, while silenced */

static void finalize_at_exit(void)
{
    int started = 0, done = 0;
    MPI_Initialized(&started);
    MPI_Finalized(&done);
    if (started && !done) {
        fflush(stdout), fflush(stderr);
        MPI_Finalize();
    }
}

void tp_init(TpRanks *t, int *argc, char ***argv)
{
    *t = (TpRanks){0};
    if (MPI_Init(argc, argv) != MPI_SUCCESS)
        die("MPI_Init failed");
    atexit(finalize_at_exit);
    MPI_Comm_rank(MPI_COMM_WORLD, &t->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t->world);
    t->comm = (ModelComm){.all_reduce = tp_all_reduce, .all_gather = tp_all_gather, .ctx = t};
    if (t->rank != 0) { /* the same arguments give every rank the same errors and help: rank 0 says it */
        const int null = open("/dev/null", O_WRONLY);
        fflush(stdout), fflush(stderr);
        saved_out = dup(1), saved_err = dup(2);
        if (null >= 0)
            dup2(null, 1), dup2(null, 2), close(null);
    }
}

void tp_quiet_end(const TpRanks *t)
{
    if (t->rank == 0 || saved_out < 0)
        return;
    fflush(stdout), fflush(stderr);
    dup2(saved_out, 1), dup2(saved_err, 2);
    close(saved_out), close(saved_err);
    saved_out = saved_err = -1;
}

void tp_agree(const TpRanks *t, int rc)
{
    int mine = rc != 0 ? t->rank : t->world, first = t->world;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (first == t->world)
        return;
    char msg[1024] = {0};
    if (t->rank == first)
        snprintf(msg, sizeof msg, "%s", error_message());
    MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, MPI_COMM_WORLD);
    if (t->rank == 0) {
        if (first > 0)
            fprintf(stderr, "%s: error: rank %d: %s\n", error_program(), first, msg);
        else
            fprintf(stderr, "%s: error: %s\n", error_program(), msg);
    }
    exit(1); /* every rank: MPI_Finalize runs at exit */
}

void tp_load_model(TpRanks *t, const char *checkpoint, Model *m)
{
    tp_agree(t, model_load_or_builtin_shard(checkpoint, t->rank, t->world, m));
    m->comm = &t->comm;
}

double *tp_gather(const TpRanks *t, const double *mine, int n)
{
    double *all = t->rank == 0 ? mem_alloc_or_die((size_t)t->world * n * sizeof(double), "every rank's values") : NULL;
    MPI_Gather(mine, n, MPI_DOUBLE, all, n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    return all;
}

double tp_rss(void) { return (double)mem_rss_bytes(); }
