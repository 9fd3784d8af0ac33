/* plot.c: runs gnuplot on a chapter's script (see plot.h). */
#include "plot.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "paths.h"

int plot_available(void)
{
    const char *path = getenv("PATH");
    char dir[PATH_MAX], exe[PATH_MAX + 16];
    while (path && *path) {
        const char *colon = strchr(path, ':');
        size_t n = colon ? (size_t)(colon - path) : strlen(path);
        if (n > 0 && n < sizeof dir) {
            memcpy(dir, path, n);
            dir[n] = '\0';
            snprintf(exe, sizeof exe, "%s/gnuplot", dir);
            if (access(exe, X_OK) == 0)
                return 1;
        }
        path = colon ? colon + 1 : NULL;
    }
    return 0;
}

/* gnuplot -e "<vars>" script, with stdout inherited (the dumb terminal draws there). */
static int run_gnuplot(const char *vars, const char *script)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return error_set("cannot start gnuplot: fork failed");
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", "-e", vars, script, (char *)NULL);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return error_set("gnuplot failed on %s", script);
    return 0;
}

int plot_draw(const char *chapter, const char *which, const char *datafile, int in_terminal,
              char *png, size_t png_len)
{
    char script[PATH_MAX], setup[PATH_MAX], out[PATH_MAX], name[256], vars[4 * PATH_MAX];
    if (!plot_available()) {
        printf("(plot skipped: gnuplot is not installed; 'sudo apt-get install gnuplot-nox' adds it)\n");
        return 1;
    }
    snprintf(script, sizeof script, "%s/share/%s.gp", paths_build_dir(), chapter);
    snprintf(setup, sizeof setup, "%s/share/common.gp", paths_build_dir());
    snprintf(name, sizeof name, "%s_%s.png", chapter, which);
    paths_in_build(out, sizeof out, "plots", name);
    if (access(script, R_OK) != 0)
        return error_set("%s: plot script missing (run make to copy it)", script);
    if (strchr(datafile, '\'') || strchr(out, '\'') || strchr(script, '\''))
        return error_set("plot paths must not contain a single quote");

    snprintf(vars, sizeof vars, "which='%s'; datafile='%s'; outfile='%s'; setup='%s'; term='png'", which,
             datafile, out, setup);
    if (run_gnuplot(vars, script) != 0)
        return -1;
    if (png)
        snprintf(png, png_len, "%s", out);
    if (in_terminal) {
        snprintf(vars, sizeof vars, "which='%s'; datafile='%s'; outfile=''; setup='%s'; term='dumb'", which,
                 datafile, setup);
        if (run_gnuplot(vars, script) != 0)
            return -1;
    }
    return 0;
}

int plot_show(const char *chapter, const char *which, const char *datafile, int in_terminal, FILE *f,
              const char *lead, const char *end)
{
    char png[PATH_MAX];
    const int rc = plot_draw(chapter, which, datafile, in_terminal, png, sizeof png);
    if (rc == 0)
        fprintf(f, "%sPlot: %s (data: %s)%s", lead, png, datafile, end);
    else if (rc < 0)
        fprintf(f, "%s(plot failed: %s)%s", lead, error_message(), end);
    return rc;
}
