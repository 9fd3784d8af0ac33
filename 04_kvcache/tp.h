/*
 * tp.h: chapter 04's tensor parallelism -- the model of common/model.c split across N processes
 * (Megatron-LM's scheme, model.h's ModelShard), joined by MPI (Debian's Open MPI: `mpirun -np N`,
 * on one machine or several), each rank holding 1/N of every layer's weights and of the KV cache.
 *
 * The program 04_kvcache_tp (built when mpicc is present; tp_main.c):
 *   04_kvcache_tp                      the lesson (tp_lesson.c): what each rank holds, for this model
 *                                      and Llama-2-70B at 32k across 8 GPUs; the all-reduce's bytes per
 *                                      token against a link's bandwidth; and the time per token at
 *                                      N = 1, 2, 4 on this machine, measured by running
 *   mpirun -np N 04_kvcache_tp time    one row: time per token and the part of it spent in all-reduces
 *   mpirun -np N 04_kvcache_tp generate    greedy or sampled token ids, as `04_kvcache generate`
 *   mpirun -np N 04_kvcache_tp nccl    (CUDA builds) NCCL's all-reduce of a token's activations on N GPUs
 *
 * The files: tp_comm.c the ranks (ModelComm over MPI, and errors agreed by every rank), tp_main.c
 * the subcommands, tp_lesson.c the lesson, tp_nccl.cu NCCL on GPUs.
 */
#ifndef KVCACHE_TP_H
#define KVCACHE_TP_H

#include <stddef.h>

#include "common/model.h"
#include "common/program.h"

#define TP_PROG "04_kvcache_tp"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the ranks (tp_comm.c) -------------------------------------------------------------------- */

typedef struct {
    int rank, world;
    ModelComm comm;     /* model_forward's all-reduce and all-gather, over MPI_COMM_WORLD */
    double reduce_s;    /* seconds spent in all-reduces (waiting for the slowest rank included) */
    double reduce_bytes; /* floats summed by all-reduces, in bytes (each rank's payload) */
    long reduces;       /* all-reduces made */
} TpRanks;

/* MPI_Init and the rank's place; exit (after MPI_Finalize, from an atexit handler) then works
 * from anywhere, so a rank that stops early does not leave mpirun waiting. Ranks other than 0
 * print nothing on stdout or stderr until tp_quiet_end (their argument errors and --help are
 * rank 0's, word for word). */
void tp_init(TpRanks *t, int *argc, char ***argv);
void tp_quiet_end(const TpRanks *t);

/* Every rank's rc, agreed: 0 when all are 0. Otherwise the lowest failing rank's error message goes
 * to rank 0, which prints it as one error line ("rank r: " before it when r > 0), and every rank
 * exits with status 1 -- no rank is left waiting in a collective. */
void tp_agree(const TpRanks *t, int rc);

/* The model's shard for this rank (model_load_or_builtin_shard), with t's ModelComm. Agreed:
 * a bad number of ranks is one error line from rank 0 and every rank's exit. */
void tp_load_model(TpRanks *t, const char *checkpoint, Model *m);

/* Rank 0's copy of every rank's n doubles (rank-major, world * n), NULL elsewhere: mem_free it. */
double *tp_gather(const TpRanks *t, const double *mine, int n);

/* The resident memory of this process now, in bytes (/proc/self/statm). */
double tp_rss(void);

/* ---- the subcommands (tp_main.c, tp_lesson.c, tp_nccl.cu) -------------------------------------- */

extern const Program TP_PROGRAM; /* the lesson and the subcommands (tp_main.c) */

int tp_lesson(int argc, char **argv);
int tp_cmd_generate(int argc, char **argv);
int tp_cmd_time(int argc, char **argv);
int tp_cmd_nccl(int argc, char **argv);

/* The time subcommand's row: ranks, then these columns. */
#define TP_TIME_COLUMNS "ranks\tms_per_token\tallreduce_ms_per_token\tallreduce_bytes_per_token\tallreduces_per_token"

#if HAVE_NCCL
/* NCCL's all-reduce of n floats on this rank's GPU (rank mod the GPUs of its machine), `iters`
 * times after a warm-up; the NCCL id travels from rank 0 by MPI. The median seconds of one
 * all-reduce into *secs. 0, or -1 with an error recorded (no GPU, NCCL failed). */
int tp_nccl_allreduce_time(const TpRanks *t, size_t n, int iters, double *secs);
#endif

#ifdef __cplusplus
}
#endif

#endif
