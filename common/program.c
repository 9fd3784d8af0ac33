/*
 * program.c: the skeleton of every chapter's program (program.h): subcommand dispatch, the
 * lesson's opening and its data files, the frame around each benchmark, loading the model.
 */
#include "program.h"

#include <stdio.h>
#include <string.h>

#include "error.h"
#include "paths.h"
#include "plot.h"
#include "roofline.h"

int program_main(const Program *p, int argc, char **argv)
{
    error_set_program(p->name);
    if (argc > 1)
        for (const Subcommand *s = p->subcommands; s->name; s++)
            if (strcmp(argv[1], s->name) == 0)
                return s->run(argc - 1, argv + 1);
    if (argc > 1 && argv[1][0] != '-') {
        char expected[512] = "";
        size_t n_listed = 0, k = 0;
        for (const Subcommand *s = p->subcommands; s->name; s++)
            n_listed += s->summary != NULL;
        for (const Subcommand *s = p->subcommands; s->name; s++) {
            if (!s->summary)
                continue;
            k++;
            const char *sep = k == 1 ? "" : k == n_listed ? " or " : ", ";
            snprintf(expected + strlen(expected), sizeof expected - strlen(expected), "%s%s", sep, s->name);
        }
        die("unknown subcommand '%s' (expected %s; see '%s --help')", error_quote(argv[1]), expected, p->name);
    }
    return p->lesson(argc, argv);
}

const char *program_usage(const Program *p)
{
    static char buf[512];
    size_t len = 0;
    buf[0] = '\0';
    for (const Subcommand *s = p->subcommands; s->name; s++)
        if (s->summary)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%s%s", len ? "|" : "[", s->name);
    snprintf(buf + len, sizeof buf - len, "%s[options]", len ? "] " : "");
    return buf;
}

const char *program_about(const Program *p)
{
    static char buf[4096];
    int width = 0;
    for (const Subcommand *s = p->subcommands; s->name; s++)
        if (s->summary && (int)strlen(s->name) > width)
            width = (int)strlen(s->name);
    size_t len = (size_t)snprintf(buf, sizeof buf, "%s. Without a subcommand: the lesson.\n"
                                                   "Subcommands (each takes --help):", p->title);
    for (const Subcommand *s = p->subcommands; s->name && len < sizeof buf; s++)
        if (s->summary)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "\n  %-*s  %s", width, s->name, s->summary);
    return buf;
}

/* The width of a UTF-8 string on a terminal, counting each code point as one column. */
static int display_width(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

void lesson_title(const char *title)
{
    printf("%s\n", title);
    for (int i = display_width(title); i > 0; i--)
        putchar('=');
    printf("\n\n");
}

Device lesson_begin(const Program *p, const char *device_help, const ArgSpec *extra, int n_extra, int argc,
                    char **argv)
{
    const char *device = "auto";
    ArgSpec specs[8] = {OPTION_DEVICE(&device, device_help)};
    if (n_extra > 7)
        die("lesson_begin: %d options, at most 7", n_extra);
    for (int i = 0; i < n_extra; i++)
        specs[1 + i] = extra[i];
    const ArgCommand cmd = {.name = p->name, .usage = program_usage(p), .summary = program_about(p), .specs = specs,
                            .n_specs = 1 + n_extra};
    args_parse_or_exit(&cmd, argc, argv);
    Device dev;
    if (device_resolve(device, &dev) != 0)
        die_with_error();
    lesson_title(p->title);
    return dev;
}

int lesson_end(const char *takeaway)
{
    printf("Take-away: %s", takeaway);
    return 0;
}

void lesson_data_open(Tsv *tsv, char *dat, size_t dat_len, const char *prog, const char *name, const char *columns)
{
    char file[256];
    snprintf(file, sizeof file, "%s_%s.dat", prog, name);
    paths_in_build(dat, dat_len, "bench", file);
    if (tsv_open(tsv, "/dev/null", dat) != 0)
        die_with_error();
    tsv_header(tsv, columns);
}

void lesson_machine(Device dev, int device_line)
{
    const Roofline *roof = roofline_get();
    printf("Machine: %s; measured fp32 FMA peak %.1f GFLOP/s (%s), DRAM read %.1f GB/s.\n", roofline_machine(),
           roof->fma_gflops, roof->fma_what, roof->dram_gbs);
    if (device_line)
        printf("Device: %s%s%s.\n", device_name(dev), dev == DEVICE_CUDA ? ", " : "",
               dev == DEVICE_CUDA ? device_description(dev) : " (run with a GPU and nvcc for the CUDA versions)");
    printf("\n");
}

void bench_begin(BenchSession *b, const char *prog, const char *device, const char *out, const char *columns)
{
    char why[256];
    const int have_gpu = device_cuda_available(why, sizeof why);
    if (strcmp(device, "cuda") == 0 && !have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    b->prog = prog;
    b->use_cpu = strcmp(device, "cuda") != 0;
    b->use_gpu = have_gpu && strcmp(device, "cpu") != 0;
    char file[256];
    snprintf(file, sizeof file, "%s_bench.dat", prog);
    paths_in_build(b->dat, sizeof b->dat, "bench", file);
    if (tsv_open(&b->tsv, out, b->dat) != 0)
        die_with_error();
    const Roofline *roof = b->use_cpu ? roofline_refresh() : roofline_get(); /* the machine as it is now */
    fprintf(stderr, "%s bench on %s: FMA peak %.1f GFLOP/s (%s), DRAM %.1f GB/s%s%s\n", prog, roofline_machine(),
            roof->fma_gflops, roof->fma_what, roof->dram_gbs, b->use_gpu ? "; GPU: " : "",
            b->use_gpu ? device_description(DEVICE_CUDA) : "");
    tsv_header(&b->tsv, columns);
}

void bench_command_begin(BenchSession *b, const BenchCommand *c, const ArgSpec *more, int n_more, int argc,
                         char **argv)
{
    const char *device = "auto", *out = NULL;
    char name[96];
    b->repeats = 5, b->limit = c->limit.value;
    ArgSpec specs[12] = {
        OPTION_DEVICE(&device, c->device_help ? c->device_help
                                              : "auto: CPU versions, and CUDA versions when a GPU is present"),
        OPTION_OUT(&out),
        {.name = c->limit.name, .kind = ARG_INT, .dest = &b->limit, .metavar = "N", .help = c->limit.help,
         .min = c->limit.min, .max = c->limit.max},
    };
    if (n_more > 8)
        die("bench_command_begin: %d options, at most 8", n_more);
    for (int i = 0; i < n_more; i++)
        specs[3 + i] = more[i];
    specs[3 + n_more] = (ArgSpec)OPTION_REPEATS(&b->repeats);
    if (c->repeats_help)
        specs[3 + n_more].help = c->repeats_help;
    snprintf(name, sizeof name, "%s bench", c->prog);
    const ArgCommand cmd = {.name = name, .usage = "[options]", .summary = c->summary, .specs = specs,
                            .n_specs = 4 + n_more};
    args_parse_or_exit(&cmd, argc, argv);
    bench_begin(b, c->prog, device, out, c->columns);
}

int bench_devices(const BenchSession *b, Device devs[2])
{
    int n = 0;
    if (b->use_cpu)
        devs[n++] = DEVICE_CPU;
    if (b->use_gpu)
        devs[n++] = DEVICE_CUDA;
    return n;
}

void bench_end(BenchSession *b)
{
    char lead[256];
    bench_progress_done();
    tsv_close(&b->tsv);
    snprintf(lead, sizeof lead, "%s bench: ", b->prog);
    plot_show(b->prog, "bench", b->dat, 0, stderr, lead, "\n");
}

void program_load_model(const char *checkpoint, Model *m)
{
    if (model_load_or_builtin(checkpoint, m) != 0)
        die_with_error();
}
