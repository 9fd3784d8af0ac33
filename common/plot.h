/*
 * plot.h: drawing a chapter's benchmark data with gnuplot, as a PNG and in the terminal.
 *
 * Each chapter's plot.gp is copied by the Makefile to <build>/share/<chapter>.gp and is run as
 *   gnuplot -e "which='...'; datafile='...'; outfile='...'; term='png|dumb'; setup='...'" script
 * where `which` names one of the chapter's plots and `setup` is <build>/share/common.gp, which
 * picks the terminal (pngcairo when gnuplot has it, else png; or dumb, text in the terminal).
 * When gnuplot is not installed, plotting prints one line saying so and the program goes on.
 */
#ifndef COMMON_PLOT_H
#define COMMON_PLOT_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

int plot_available(void); /* gnuplot on PATH */

/* Draws plot `which` of `chapter` from datafile into <build>/plots/<chapter>_<which>.png and,
 * when `in_terminal`, as text on stdout. Writes the PNG path into png (may be NULL).
 * Returns 0 when drawn, 1 when skipped because gnuplot is missing, -1 on failure. */
int plot_draw(const char *chapter, const char *which, const char *datafile, int in_terminal,
              char *png, size_t png_len);

/* plot_draw, then one line on f: lead "Plot: <png> (data: <datafile>)" end, or lead "(plot
 * failed: <why>)" end; nothing more when gnuplot is missing. Returns what plot_draw returned. */
int plot_show(const char *chapter, const char *which, const char *datafile, int in_terminal, FILE *f,
              const char *lead, const char *end);

#ifdef __cplusplus
}
#endif
#endif
