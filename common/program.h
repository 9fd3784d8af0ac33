/*
 * program.h: the skeleton every chapter's program stands on, so that its main.c holds the lesson
 * and little else.
 *
 *   Program        the chapter's name, title, lesson and table of subcommands; program_main
 *                  dispatches argv[1] to the table (or runs the lesson), and an unknown word gets
 *                  one error line that lists the table
 *   lesson_*       the opening every lesson prints: the title, underlined, and the machine the
 *                  figures were measured on
 *   BenchSession   what every `bench` subcommand does around its own timing loop: which devices
 *                  to time, the rows (stdout or --out) and build/bench/<chapter>_bench.dat, the
 *                  machine on stderr, the plot at the end
 *   program_load_model  --checkpoint, or the built-in random model, or one error line
 *
 * A chapter's main.c then reads:
 *
 *   static const Subcommand COMMANDS[] = {
 *       {"attn", cmd_attn, "attention on .npy files (Q, K, V -> O)"},
 *       {"bench", cmd_bench, "timing rows (TSV) and a plot"},
 *       {NULL, NULL, NULL},
 *   };
 *   static const Program PROGRAM = {"01_mha", "Chapter 01: multi-head attention (MHA)", cmd_lesson, COMMANDS};
 *   int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
 */
#ifndef COMMON_PROGRAM_H
#define COMMON_PROGRAM_H

#include <stddef.h>

#include "args.h"
#include "bench.h"
#include "device.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *name;                  /* the word after the program's name: "attn" */
    int (*run)(int argc, char **argv); /* argv[0] is that word; returns the exit status */
    const char *summary;               /* one line in the lesson's --help; NULL: not listed (a tool
                                          for scripts, such as chapter 04's _agree) */
} Subcommand;

typedef struct {
    const char *name;                     /* "01_mha": messages, file names */
    const char *title;                    /* "Chapter 01: multi-head attention (MHA)" */
    int (*lesson)(int argc, char **argv); /* run without a subcommand; argv[0] is the program */
    const Subcommand *subcommands;        /* ends with an entry whose name is NULL */
} Program;

/* Sets the name errors start with, then runs the subcommand argv[1] names, or the lesson when
 * argv[1] is absent or an option. A word that names no subcommand: one error line, exit 1. */
int program_main(const Program *p, int argc, char **argv);

/* For the lesson's ArgCommand: "[attn|verify|bench] [options]" and "<title>. Without a
 * subcommand: the lesson.\nSubcommands (each takes --help):\n  attn  ...". Static buffers. */
const char *program_usage(const Program *p);
const char *program_about(const Program *p);

/* The lesson's first lines: the title underlined to its width, a blank line. */
void lesson_title(const char *title);
/* "Machine: <cpu>; measured fp32 FMA peak <g> GFLOP/s (<what>), DRAM read <b> GB/s." and, with
 * device_line, "Device: cpu (...)" or "Device: cuda, <the GPU>.", then a blank line. */
void lesson_machine(Device dev, int device_line);

/* The options every chapter's subcommands share, for ArgSpec tables. */
#define OPTION_DEVICE(var, help_text)                                                                           \
    {.name = "device", .kind = ARG_CHOICE, .dest = (var), .choices = DEVICE_CHOICES, .help = (help_text)}
#define OPTION_OUT(var)                                                                                         \
    {.name = "out", .kind = ARG_STRING, .dest = (var), .metavar = "FILE", .help = "rows to FILE instead of stdout"}
#define OPTION_REPEATS(var)                                                                                     \
    {.name = "repeats", .kind = ARG_INT, .dest = (var), .metavar = "N",                                       \
     .help = "timed runs per point, median reported (default 5)", .min = 1, .max = 1000}
#define OPTION_CHECKPOINT(var)                                                                                  \
    {.name = "checkpoint", .kind = ARG_STRING, .dest = (var), .metavar = "FILE",                              \
     .help = "llama2.c checkpoint (default: the built-in random model)"}

typedef struct {
    const char *prog;
    int use_cpu, use_gpu; /* the devices this run times: --device auto gives the GPU when present */
    Tsv tsv;              /* the rows: to stdout or --out, and to dat */
    char dat[4096];       /* <build>/bench/<prog>_bench.dat */
} BenchSession;

/* Resolves --device (cuda without a usable GPU: one error line, exit 1), opens the rows and the
 * .dat file (a bad --out is refused before any timing), prints "<prog> bench on <machine>: ..."
 * on stderr and the header `columns` (tab-separated names) as the first row. */
void bench_begin(BenchSession *b, const char *prog, const char *device, const char *out, const char *columns);
/* Clears the progress line, commits the rows and draws <prog>_bench.png (its path on stderr). */
void bench_end(BenchSession *b);

/* model_load_or_builtin, or die with its error: a checkpoint file, or NULL for the built-in model. */
void program_load_model(const char *checkpoint, Model *m);

#ifdef __cplusplus
}
#endif
#endif
