/* Minimal SVG line charts for the CLI's reports (no dependencies; any browser renders them). */
#ifndef LOOM_CLI_SVGPLOT_H
#define LOOM_CLI_SVGPLOT_H

typedef struct {
    const char *label;
    const double *x, *y; /* n points; NAN y values are skipped */
    int n;
} svg_series;

int svg_line_chart(const char *path, const char *title, const char *xlabel, const char *ylabel, const svg_series *s,
                   int ns);

#endif
