/*
 * args.h: command-line options on libc's getopt_long, with --help generated from the table.
 *
 * A program or subcommand describes its options once, with designated initialisers:
 *
 *   int kernel = 0; const char *q = NULL;
 *   ArgSpec specs[] = {
 *       {.name = "q", .kind = ARG_STRING, .dest = &q, .metavar = "FILE",
 *        .help = "queries, float32 (B, H, T, D)", .required = 1},
 *       {.name = "kernel", .kind = ARG_INT, .dest = &kernel, .metavar = "N",
 *        .help = "version to run", .min = 1, .max = 2},
 *   };
 *   ArgCommand cmd = {"01_mha attn", "--q FILE ... [options]", "Runs attention ...", specs, 2};
 *   int rc = args_parse(&cmd, argc, argv);   // argv[0] is the subcommand name
 *
 * Every bad argument (unknown option, missing value, not a number, out of range, a missing
 * required option, a stray positional word, two options that cannot go together) is an error
 * with one line naming it; a number out of range says the range ("--max-new expects an integer
 * from 0 to 16777216, got '99999999999'"). A value that looks like an option ("--q --k k.npy":
 * '--k' is taken for the value of --q) is refused, naming the option that lacks its value; a
 * value that starts with '-' on purpose is written --q=-x. Negative numbers ("--scale -1") are
 * values.
 */
#ifndef COMMON_ARGS_H
#define COMMON_ARGS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ARG_FLAG,   /* --causal           -> int* set to 1 */
    ARG_INT,    /* --kernel 2         -> int*, range-checked when min < max */
    ARG_DOUBLE, /* --scale 0.125      -> double*, finite, range-checked when min < max */
    ARG_STRING, /* --q Q.npy          -> const char ** */
    ARG_CHOICE  /* --device cuda      -> const char **, one of choices "auto|cpu|cuda" */
} ArgKind;

typedef struct {
    const char *name; /* long name without "--" */
    ArgKind kind;
    void *dest;
    const char *metavar; /* shown in --help: "FILE", "N" */
    const char *help;
    double min, max; /* inclusive range for ARG_INT and ARG_DOUBLE; unused when min >= max */
    const char *choices;
    int required;
    int *given; /* optional: set to 1 when the option appears */
    const char *conflicts; /* optional: the name of an option that cannot be given with this one */
} ArgSpec;

typedef struct {
    const char *name;    /* "01_mha attn": used in usage lines and messages */
    const char *usage;   /* the synopsis after the name */
    const char *summary; /* one paragraph printed by --help */
    const ArgSpec *specs;
    int n_specs;
} ArgCommand;

/* 0: parsed, go on. 1: --help was printed to stdout, exit 0. -1: bad argument (error recorded). */
int args_parse(const ArgCommand *cmd, int argc, char **argv);

/* Prints the generated help of a command to stdout. */
void args_print_help(const ArgCommand *cmd);

/* args_parse, then exit(0) after --help or die() on a bad argument. */
void args_parse_or_exit(const ArgCommand *cmd, int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
