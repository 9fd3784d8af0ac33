/*
 * paths.h: where a program finds its build folder, wherever it is run from.
 *
 * Programs live in <build>/bin/ and tests in <build>/test/, so <build> is the parent of the
 * executable's folder ("build", or "build/san" for SAN=1). Benchmark data goes to
 * <build>/bench/, plots to <build>/plots/, gnuplot scripts are copied to <build>/share/, and
 * the roofline cache is <build>/roofline.tsv.
 */
#ifndef COMMON_PATHS_H
#define COMMON_PATHS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The build folder, found from /proc/self/exe ("." if that fails). */
const char *paths_build_dir(void);

/* <build>/<sub>/<name> into buf, creating <build>/<sub> if needed. Returns buf. */
const char *paths_in_build(char *buf, size_t len, const char *sub, const char *name);

/* mkdir -p. 0 on success, -1 with an error recorded. */
int paths_make_dirs(const char *path);

#ifdef __cplusplus
}
#endif
#endif
