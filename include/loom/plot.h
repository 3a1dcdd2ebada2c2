/* SVG charts (data/ layer): stacked bars of data splits, line charts of training curves; used by the
 * CLI (loom data, loom sim) and the benchmarks. */
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

#endif
