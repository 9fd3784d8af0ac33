/* paths.c: see paths.h. */
#include "paths.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

static char build_dir[PATH_MAX];

const char *paths_build_dir(void)
{
    if (build_dir[0])
        return build_dir;
    ssize_t n = readlink("/proc/self/exe", build_dir, sizeof build_dir - 1);
    if (n <= 0) {
        snprintf(build_dir, sizeof build_dir, ".");
        return build_dir;
    }
    build_dir[n] = '\0';
    for (int up = 0; up < 2; up++) { /* strip "/<program>", then "/bin" */
        char *slash = strrchr(build_dir, '/');
        if (!slash || slash == build_dir) {
            snprintf(build_dir, sizeof build_dir, ".");
            return build_dir;
        }
        *slash = '\0';
    }
    return build_dir;
}

/* One mkdir; an existing folder is fine, an existing file is not (said here, not later as a
 * puzzling "Not a directory" when a file is written into it). */
static int make_dir(const char *path)
{
    struct stat st;
    if (mkdir(path, 0755) == 0)
        return 0;
    if (errno != EEXIST)
        return error_set("%s: cannot create folder: %s", error_quote(path), strerror(errno));
    if (stat(path, &st) == 0 && !S_ISDIR(st.st_mode))
        return error_set("%s: exists and is not a folder", error_quote(path));
    return 0;
}

int paths_make_dirs(const char *path)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return error_set("%s: path too long", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (make_dir(buf) != 0)
            return -1;
        *p = '/';
    }
    return make_dir(buf);
}

const char *paths_in_build(char *buf, size_t len, const char *sub, const char *name)
{
    snprintf(buf, len, "%s/%s", paths_build_dir(), sub);
    if (paths_make_dirs(buf) != 0)
        fprintf(stderr, "%s: warning: %s\n", error_program(), error_message());
    snprintf(buf, len, "%s/%s/%s", paths_build_dir(), sub, name);
    return buf;
}
