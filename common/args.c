/* args.c: the getopt_long wrapper described in args.h. */
#include "args.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define MAX_SPECS 64

void args_print_help(const ArgCommand *cmd)
{
    printf("usage: %s %s\n\n%s\n\noptions:\n", cmd->name, cmd->usage, cmd->summary);
    for (int i = 0; i < cmd->n_specs; i++) {
        const ArgSpec *s = &cmd->specs[i];
        char left[64];
        if (s->kind == ARG_FLAG)
            snprintf(left, sizeof left, "--%s", s->name);
        else if (s->kind == ARG_CHOICE)
            snprintf(left, sizeof left, "--%s %s", s->name, s->choices);
        else
            snprintf(left, sizeof left, "--%s %s", s->name, s->metavar ? s->metavar : "VALUE");
        printf("  %-24s %s%s", left, s->help, s->required ? " (required)" : "");
        if (s->conflicts)
            printf(" (not with --%s)", s->conflicts);
        printf("\n");
    }
    printf("  %-24s %s\n", "-h, --help", "show this help and exit");
}

static int in_choices(const char *choices, const char *value)
{
    size_t n = strlen(value);
    const char *p = choices;
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, value, n) == 0)
            return 1;
        if (!bar)
            break;
        p = bar + 1;
    }
    return 0;
}

/* Whether a value taken from the next word of the command line is in fact an option the user
 * gave without the value before it ("--q --k k.npy"): a word starting with "--", or "-" and a
 * letter ("-h"). For a number, a word the number parser takes whole ("-1", "-2.5e3", "-inf") is a
 * value. */
static int looks_like_option(const ArgSpec *s, const char *text)
{
    if (text[0] != '-' || text[1] == '\0')
        return 0;
    if (s->kind == ARG_INT || s->kind == ARG_DOUBLE) {
        char *end;
        (void)strtod(text, &end);
        if (*end == '\0')
            return 0;
    }
    return text[1] == '-' || (text[1] >= 'a' && text[1] <= 'z') || (text[1] >= 'A' && text[1] <= 'Z');
}

static int set_value(const ArgCommand *cmd, const ArgSpec *s, const char *text)
{
    char *end = NULL;
    int ranged = s->min < s->max;
    switch (s->kind) {
    case ARG_FLAG:
        *(int *)s->dest = 1;
        return 0;
    case ARG_INT: {
        /* the range is in every refusal: an int option holds -2147483647 .. 2147483647 at most */
        const double lo = ranged ? s->min : -2147483647.0, hi = ranged ? s->max : 2147483647.0;
        errno = 0;
        long v = strtol(text, &end, 10);
        if (text[0] == '\0' || *end != '\0' || errno == ERANGE || v < lo || v > hi)
            return error_set("%s: --%s expects an integer from %.0f to %.0f, got '%s'", cmd->name, s->name, lo, hi,
                             error_quote(text));
        *(int *)s->dest = (int)v;
        return 0;
    }
    case ARG_DOUBLE: {
        errno = 0;
        double v = strtod(text, &end);
        /* ERANGE also flags an underflow ("1e-320" parses as a tiny number): only an overflow is
         * not a finite number */
        const int bad = text[0] == '\0' || *end != '\0' || (errno == ERANGE && fabs(v) > 1.0) || !isfinite(v);
        if (ranged && (bad || v < s->min || v > s->max))
            return error_set("%s: --%s expects a number from %g to %g, got '%s'", cmd->name, s->name, s->min, s->max,
                             error_quote(text));
        if (bad)
            return error_set("%s: --%s expects a finite number, got '%s'", cmd->name, s->name, error_quote(text));
        *(double *)s->dest = v;
        return 0;
    }
    case ARG_STRING:
        if (text[0] == '\0')
            return error_set("%s: --%s expects a value, got an empty string", cmd->name, s->name);
        *(const char **)s->dest = text;
        return 0;
    case ARG_CHOICE:
        if (!in_choices(s->choices, text))
            return error_set("%s: --%s must be one of %s, got '%s'", cmd->name, s->name, s->choices, text);
        *(const char **)s->dest = text;
        return 0;
    }
    return error_set("%s: internal error: unknown option kind", cmd->name);
}

int args_parse(const ArgCommand *cmd, int argc, char **argv)
{
    struct option longopts[MAX_SPECS + 2];
    int seen[MAX_SPECS] = {0};
    if (cmd->n_specs > MAX_SPECS)
        return error_set("%s: internal error: too many options", cmd->name);
    for (int i = 0; i < cmd->n_specs; i++) {
        longopts[i].name = cmd->specs[i].name;
        longopts[i].has_arg = cmd->specs[i].kind == ARG_FLAG ? no_argument : required_argument;
        longopts[i].flag = NULL;
        longopts[i].val = 1000 + i;
    }
    longopts[cmd->n_specs] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[cmd->n_specs + 1] = (struct option){NULL, 0, NULL, 0};

    optind = 0; /* glibc: 0 restarts the scan, so a program can parse more than once */
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, ":h", longopts, NULL);
        if (c == -1)
            break;
        /* after a bad option getopt has stepped past it, so it is argv[optind - 1] */
        const char *bad = optind >= 1 && optind - 1 < argc ? argv[optind - 1] : "?";
        if (c == 'h') {
            args_print_help(cmd);
            return 1;
        }
        if (c == '?')
            return error_set("%s: unknown option '%s' (see '%s --help')", cmd->name, bad, cmd->name);
        if (c == ':')
            return error_set("%s: option '%s' needs a value", cmd->name, bad);
        int i = c - 1000;
        /* the value as a word of its own (not "--q=..."), which getopt takes whatever it is */
        if (optarg && optind >= 1 && optarg == argv[optind - 1] && looks_like_option(&cmd->specs[i], optarg))
            return error_set("%s: --%s needs a value, got the option '%s' (for a value that starts with '-', "
                             "write --%s=VALUE)",
                             cmd->name, cmd->specs[i].name, error_quote(optarg), cmd->specs[i].name);
        if (set_value(cmd, &cmd->specs[i], optarg ? optarg : "") != 0)
            return -1;
        seen[i] = 1;
    }
    if (optind < argc)
        return error_set("%s: unexpected argument '%s' (see '%s --help')", cmd->name, argv[optind], cmd->name);
    for (int i = 0; i < cmd->n_specs; i++)
        for (int j = 0; seen[i] && cmd->specs[i].conflicts && j < cmd->n_specs; j++)
            if (seen[j] && strcmp(cmd->specs[j].name, cmd->specs[i].conflicts) == 0)
                return error_set("%s: --%s and --%s cannot be given together (see '%s --help')", cmd->name,
                                 cmd->specs[j].name, cmd->specs[i].name, cmd->name);
    for (int i = 0; i < cmd->n_specs; i++) {
        if (cmd->specs[i].given)
            *cmd->specs[i].given = seen[i];
        if (cmd->specs[i].required && !seen[i])
            return error_set("%s: missing --%s (%s)", cmd->name, cmd->specs[i].name, cmd->specs[i].help);
    }
    return 0;
}

void args_parse_or_exit(const ArgCommand *cmd, int argc, char **argv)
{
    int rc = args_parse(cmd, argc, argv);
    if (rc == 1)
        exit(0);
    if (rc != 0)
        die_with_error();
}
