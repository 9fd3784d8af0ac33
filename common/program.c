/*
 * program.c: the skeleton of every chapter's program (program.h): subcommand dispatch, the
 * lesson's opening lines, the frame around each benchmark, loading the model.
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
    const Roofline *roof = roofline_get();
    fprintf(stderr, "%s bench on %s: FMA peak %.1f GFLOP/s (%s), DRAM %.1f GB/s%s%s\n", prog, roofline_machine(),
            roof->fma_gflops, roof->fma_what, roof->dram_gbs, b->use_gpu ? "; GPU: " : "",
            b->use_gpu ? device_description(DEVICE_CUDA) : "");
    tsv_header(&b->tsv, columns);
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
