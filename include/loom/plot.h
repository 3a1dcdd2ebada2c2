/* SVG charts (data/ layer): stacked bars of data splits, line charts of training curves; used by the
 * CLI (loom data, loom sim, loom report) and the benchmarks. */
#ifndef LOOM_PLOT_H
#define LOOM_PLOT_H

#include <stddef.h>
#include <stdint.h>

/* A stacked bar chart: one bar per client, one colour per series (label or key), with a legend.
 * counts: (n_bars, n_series). *svg is malloc'ed, NUL-terminated, *len without the NUL.
 * Names are XML-escaped; names may be NULL (then "0", "1", ...). */
int loom_plot_stacked_svg(char **svg, size_t *len, const char *title, size_t n_bars, size_t n_series,
                          const uint64_t *counts, const char *const *bar_names, const char *const *series_names);

/* A line chart: one polyline per series (NAN points skipped), with a legend. */
typedef struct {
    const char *label;
    const double *x, *y; /* (n) */
    size_t n;
} loom_plot_series;
int loom_plot_lines_svg(char **svg, size_t *len, const char *title, const char *xlabel, const char *ylabel,
                        const loom_plot_series *s, size_t ns);

/* The general chart of loom_plot_chart_svg. Geometry (fixed, so readers can map values back): the
 * SVG is 760 x 440; the plot area spans x from LOOM_PLOT_LEFT to LOOM_PLOT_RIGHT and y from LOOM_PLOT_TOP (top)
 * to LOOM_PLOT_BOTTOM (bottom). Lines: x in [xmin, xmax] of the finite points maps linearly onto the
 * area's width; y in [ymin - 5%, ymax + 5%] of the range (ymax - ymin, 1 when all values are equal)
 * onto its height, top = high. A log axis maps log10(y) the same way (values <= 0 are skipped) with
 * ticks at powers of ten. Bars: one group per point index, series side by side, from 0 up to
 * 1.05 x the largest value (log_y is ignored); each bar has a <title> "series, x = X: Y". Points are written with one
 * decimal ("%.1f,%.1f "). */
#define LOOM_PLOT_WIDTH 760
#define LOOM_PLOT_HEIGHT 440
#define LOOM_PLOT_LEFT 70
#define LOOM_PLOT_RIGHT 570
#define LOOM_PLOT_TOP 40
#define LOOM_PLOT_BOTTOM 390
/* A curve of loom_plot_chart_svg: a line through (x[i], y[i]) and, when lo and hi are given, a shaded
 * band from lo[i] to hi[i] under it (the per-client spread of a round: min/max); y NULL draws only the
 * band. NAN points are skipped. */
typedef struct {
    const char *label;
    const double *x, *y, *lo, *hi; /* (n); y, lo, hi may be NULL */
    size_t n;
} loom_plot_curve;
typedef struct {
    const char *title, *xlabel, *ylabel;
    int log_y; /* logarithmic y axis */
    int bars;  /* grouped bars instead of lines (bands are ignored) */
} loom_plot_opts;
int loom_plot_chart_svg(char **svg, size_t *len, const loom_plot_opts *o, const loom_plot_curve *s, size_t ns);

#endif
