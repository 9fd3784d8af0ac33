/*
 * program.h: the skeleton every chapter's program stands on, so that its main.c holds the lesson
 * and little else.
 *
 *   Program        the chapter's name, title, lesson and table of subcommands; program_main
 *                  dispatches argv[1] to the table (or runs the lesson), and an unknown word gets
 *                  one error line that lists the table
 *   lesson_*       the opening every lesson goes through (its options, the device, the title,
 *                  the machine the figures were measured on), the .dat files its plots read, and
 *                  its closing take-away
 *   BenchSession   what every `bench` subcommand does around its own timing loop: its options
 *                  (--device, --out, --repeats), which devices to time, the rows (stdout or
 *                  --out) and build/bench/<chapter>_bench.dat, the machine on stderr, the plot
 *   program_load_model  --checkpoint, or the built-in random model, or one error line
 *
 * A chapter's main.c then reads:
 *
 *   static const Subcommand COMMANDS[] = {
 *       {.name = "attn", .run = mha_cmd_attn, .summary = "attention on .npy files (Q, K, V -> O)"},
 *       {.name = "bench", .run = mha_cmd_bench, .summary = "timing rows (TSV) and a plot"},
 *       {.name = NULL},
 *   };
 *   static const Program PROGRAM = {.name = "01_mha", .title = "Chapter 01: multi-head attention (MHA)",
 *                                   .lesson = cmd_lesson, .subcommands = COMMANDS};
 *   int main(int argc, char **argv) { return program_main(&PROGRAM, argc, argv); }
 *
 * and its lesson starts with `Device dev = lesson_begin(&PROGRAM, "where to run", NULL, 0, argc, argv);`.
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
/* What every lesson starts with: its options parsed (--device, with device_help, then `extra`;
 * --help lists the subcommands), the device resolved (cuda without a usable GPU: one error line,
 * exit 1), and the title printed. */
Device lesson_begin(const Program *p, const char *device_help, const ArgSpec *extra, int n_extra, int argc,
                    char **argv);
/* What every lesson ends with: "Take-away: " and the text (its lines ending in \n). Returns 0, the
 * lesson's exit status. */
int lesson_end(const char *takeaway);
/* Opens build/bench/<prog>_<name>.dat (its path into dat, dat_len bytes) for the rows of one of the
 * lesson's plots, the header `columns` written; the rows go nowhere else. Dies on an error. */
void lesson_data_open(Tsv *tsv, char *dat, size_t dat_len, const char *prog, const char *name, const char *columns);
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
/* The sampling options of the generating subcommands (chapters 04-06). */
#define OPTION_TEMPERATURE(var, help_text)                                                                      \
    {.name = "temperature", .kind = ARG_DOUBLE, .dest = (var), .metavar = "T", .help = (help_text), .min = 0, \
     .max = 100}
#define OPTION_SEED(var)                                                                                        \
    {.name = "seed", .kind = ARG_INT, .dest = (var), .metavar = "S", .help = "sampling seed (default 42)",     \
     .min = 0, .max = 2147483647}
/* --top-p and --top-k (common/model.h's Sampling): defaults 0.9 (llama2.c's run.c) and 0 (off). */
#define OPTION_TOP_P(var)                                                                                       \
    {.name = "top-p", .kind = ARG_DOUBLE, .dest = (var), .metavar = "P",                                      \
     .help = "at temperature > 0, sample only from the most probable tokens whose probabilities add up to "  \
             "more than P, as llama2.c's run.c (default 0.9, run.c's; 1: every token)"}
#define OPTION_TOP_K(var)                                                                                       \
    {.name = "top-k", .kind = ARG_INT, .dest = (var), .metavar = "K",                                         \
     .help = "at temperature > 0, sample only from the K most probable tokens (default 0: every token)",      \
     .min = 0, .max = 1 << 30}
#define OPTION_SHUFFLE(var, help_text)                                                                          \
    {.name = "shuffle", .kind = ARG_INT, .dest = (var), .metavar = "S", .help = (help_text), .min = 0,        \
     .max = 2147483647}

/* The number of entries of an array (an ArgSpec table). */
#define ARRAY_COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

typedef struct {
    const char *prog;
    int use_cpu, use_gpu; /* the devices this run times: --device auto gives the GPU when present */
    int repeats;          /* --repeats (bench_command_begin) */
    int limit;            /* the sweep's bound, BenchCommand.limit (bench_command_begin) */
    Tsv tsv;              /* the rows: to stdout or --out, and to dat */
    char dat[4096];       /* <build>/bench/<prog>_bench.dat */
} BenchSession;

/* Resolves --device (cuda without a usable GPU: one error line, exit 1), opens the rows and the
 * .dat file (a bad --out is refused before any timing), prints "<prog> bench on <machine>: ..."
 * on stderr and the header `columns` (tab-separated names) as the first row. */
void bench_begin(BenchSession *b, const char *prog, const char *device, const char *out, const char *columns);
/* Clears the progress line, commits the rows and draws <prog>_bench.png (its path on stderr). */
void bench_end(BenchSession *b);

/* The one integer option every sweep has, how far it goes: --max-t N, --l N. */
typedef struct {
    const char *name;    /* "max-t" */
    int value, min, max; /* the default, and the range */
    const char *help;    /* its line in --help */
} BenchLimit;

/* A `<prog> bench` subcommand: its rows, its --help and its options. */
typedef struct {
    const char *prog;         /* "01_mha" */
    const char *device_help;  /* --device's line; NULL: "auto: CPU versions, and CUDA versions when a GPU is present" */
    const char *repeats_help; /* NULL: "timed runs per point, median reported (default 5)" */
    const char *columns;      /* the header row: tab-separated names */
    const char *summary;      /* the --help paragraph */
    BenchLimit limit;         /* listed after --out; its value in BenchSession.limit */
} BenchCommand;

/* Parses --device, --out, c->limit, the chapter's `more` options (n_more of them) and --repeats
 * (default 5, into b->repeats), exiting after --help or on a bad option; then bench_begin. */
void bench_command_begin(BenchSession *b, const BenchCommand *c, const ArgSpec *more, int n_more, int argc,
                         char **argv);

/* The devices the session times, the CPU first: their number, the devices into devs. */
int bench_devices(const BenchSession *b, Device devs[2]);

/* model_load_or_builtin, or die with its error: a checkpoint file, or NULL for the built-in model. */
void program_load_model(const char *checkpoint, Model *m);

#ifdef __cplusplus
}
#endif
#endif
