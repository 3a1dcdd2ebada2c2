/* Charts as standalone SVG (no scripts, no external resources): stacked bars, lines with bands, grouped bars. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/plot.h"
#include "loom/core.h"

typedef struct {
    char *s;
    size_t n, cap;
    int err;
} out_buf;

static void put(out_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out_buf *b, const char *fmt, ...) {
    if (b->err) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->s + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->err = 1;
            return;
        }
        if ((size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)k + 1;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->err = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
}

static void put_escaped(out_buf *b, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': put(b, "&lt;"); break;
        case '>': put(b, "&gt;"); break;
        case '&': put(b, "&amp;"); break;
        case '"': put(b, "&quot;"); break;
        default:
            /* Control characters are not allowed in XML 1.0 text. */
            if ((unsigned char)*s < 0x20) put(b, " ");
            else put(b, "%c", *s);
        }
    }
}

/* Ten distinct colours (Tableau 10), then evenly spaced hues. */
static void colour(size_t k, char out[16]) {
    static const char *const base[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                       "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
    if (k < 10) {
        snprintf(out, 16, "%s", base[k]);
        return;
    }
    double h = fmod((double)k * 137.508, 360.0); /* golden angle: neighbours differ */
    snprintf(out, 16, "hsl(%d,55%%,%d%%)", (int)h, 45 + (int)(k % 3) * 10);
}

static double nice_step(double max) {
    if (max <= 0) return 1;
    double raw = max / 5, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

int loom_plot_stacked_svg(char **svg, size_t *len, const char *title, size_t n_bars, size_t n_series,
                          const uint64_t *counts, const char *const *bar_names, const char *const *series_names) {
    *svg = NULL;
    *len = 0;
    out_buf b = {malloc(4096), 0, 4096, 0};
    if (!b.s) return loom_error(LOOM_ENOMEM, "out of memory");
    b.s[0] = 0;
    uint64_t max = 0;
    for (size_t i = 0; i < n_bars; i++) {
        uint64_t t = 0;
        for (size_t k = 0; k < n_series; k++) t += counts[i * n_series + k];
        if (t > max) max = t;
    }
    double bw = n_bars <= 20 ? 32 : n_bars <= 100 ? 12 : 4; /* bar pitch in pixels */
    double left = 70, top = 40, ph = 320, bottom = 90;
    double pw = LOOM_MAX(bw * (double)n_bars, 200.0);
    size_t legend_rows = n_series;
    double legend_x = left + pw + 30, legend_w = 220;
    /* Wide enough for the title (about 8.5 px a character at 15 px). */
    double width = LOOM_MAX(legend_x + legend_w, left + 8.5 * (double)(title ? strlen(title) : 0)), height = top + LOOM_MAX(ph + bottom, 20.0 + 16.0 * (double)legend_rows);
    put(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"sans-serif\" font-size=\"11\">\n", width, height, width, height);
    put(&b, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    put(&b, "<text x=\"%.0f\" y=\"22\" font-size=\"15\">", left);
    put_escaped(&b, title ? title : "");
    put(&b, "</text>\n");
    double step = nice_step((double)max), ymax = max ? ceil((double)max / step) * step : 1;
    for (double y = 0; y <= ymax + 1e-9; y += step) {
        double py = top + ph - ph * y / ymax;
        put(&b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, py, left + pw, py);
        put(&b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n", left - 6, py + 4, y);
    }
    put(&b, "<text transform=\"translate(16,%.0f) rotate(-90)\" text-anchor=\"middle\">examples</text>\n", top + ph / 2);
    size_t label_every = n_bars <= 40 ? 1 : (n_bars + 39) / 40;
    for (size_t i = 0; i < n_bars; i++) {
        double x = left + bw * (double)i, acc = 0;
        for (size_t k = 0; k < n_series; k++) {
            uint64_t c = counts[i * n_series + k];
            if (!c) continue;
            double h = ph * (double)c / ymax, y = top + ph - ph * acc / ymax - h;
            char col[16];
            colour(k, col);
            put(&b, "<rect x=\"%.1f\" y=\"%.2f\" width=\"%.1f\" height=\"%.2f\" fill=\"%s\"><title>", x + bw * 0.1, y,
                bw * 0.8, h, col);
            if (bar_names) put_escaped(&b, bar_names[i]);
            else put(&b, "%zu", i);
            put(&b, ": ");
            if (series_names) put_escaped(&b, series_names[k]);
            else put(&b, "%zu", k);
            put(&b, " = %llu</title></rect>\n", (unsigned long long)c);
            acc += (double)c;
        }
        if (i % label_every == 0) {
            put(&b, "<text transform=\"translate(%.1f,%.1f) rotate(-60)\" text-anchor=\"end\" font-size=\"9\">",
                x + bw / 2 + 3, top + ph + 8);
            if (bar_names) put_escaped(&b, bar_names[i]);
            else put(&b, "%zu", i);
            put(&b, "</text>\n");
        }
    }
    put(&b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, top + ph, left + pw, top + ph);
    for (size_t k = 0; k < n_series; k++) {
        char col[16];
        colour(k, col);
        double y = top + 16.0 * (double)k;
        put(&b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"10\" height=\"10\" fill=\"%s\"/><text x=\"%.0f\" y=\"%.0f\">",
            legend_x, y, col, legend_x + 15, y + 9);
        if (series_names) put_escaped(&b, series_names[k]);
        else put(&b, "%zu", k);
        put(&b, "</text>\n");
    }
    put(&b, "</svg>\n");
    if (b.err) {
        free(b.s);
        return loom_error(LOOM_ENOMEM, "out of memory writing the chart");
    }
    *svg = b.s;
    *len = b.n;
    return LOOM_OK;
}

/* Tick values of a linear axis over [v0, v1]: multiples of a round step (1, 2 or 5 x 10^k), about five;
 * integer only keeps steps >= 1 (rounds). Returns the count, at most max. */
static int ticks(double v0, double v1, int integer, double *t, int max) {
    double step = nice_step(v1 - v0);
    if (integer && step < 1) step = 1;
    int n = 0;
    for (double k = ceil(v0 / step - 1e-9); n < max && k * step <= v1 + 1e-9 * step; k++) t[n++] = k * step;
    return n;
}

/* The y value as the axis maps it: log10 on a log axis (NAN for values <= 0). */
static double yval(const loom_plot_opts *o, double v) {
    if (!isfinite(v)) return NAN;
    if (o->log_y) return v > 0 ? log10(v) : NAN;
    return v;
}

static void legend(out_buf *b, size_t k, const char *label, int band_only) {
    char col[16];
    colour(k, col);
    double y = LOOM_PLOT_TOP + 12 + 18.0 * (double)k;
    if (band_only)
        put(b, "<rect x=\"%d\" y=\"%.0f\" width=\"14\" height=\"10\" fill=\"%s\" fill-opacity=\"0.25\"/>\n",
            LOOM_PLOT_RIGHT + 12, y - 3, col);
    else put(b, "<rect x=\"%d\" y=\"%.0f\" width=\"14\" height=\"4\" fill=\"%s\"/>\n", LOOM_PLOT_RIGHT + 12, y, col);
    put(b, "<text x=\"%d\" y=\"%.0f\">", LOOM_PLOT_RIGHT + 30, y + 5);
    put_escaped(b, label);
    put(b, "</text>\n");
}

static void frame(out_buf *b, const loom_plot_opts *o) {
    put(b, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n", LOOM_PLOT_LEFT,
        LOOM_PLOT_TOP, LOOM_PLOT_RIGHT - LOOM_PLOT_LEFT, LOOM_PLOT_BOTTOM - LOOM_PLOT_TOP);
    put(b, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", (LOOM_PLOT_LEFT + LOOM_PLOT_RIGHT) / 2, LOOM_PLOT_HEIGHT - 10);
    put_escaped(b, o->xlabel);
    put(b, "</text>\n<text transform=\"translate(16,%d) rotate(-90)\" text-anchor=\"middle\">",
        (LOOM_PLOT_TOP + LOOM_PLOT_BOTTOM) / 2);
    put_escaped(b, o->ylabel);
    put(b, "</text>\n");
}

static int finish(out_buf *b, char **svg, size_t *len) {
    put(b, "</svg>\n");
    if (b->err) {
        free(b->s);
        return loom_error(LOOM_ENOMEM, "out of memory writing a chart");
    }
    *svg = b->s;
    *len = b->n;
    return LOOM_OK;
}

/* Grouped bars: one group per point index of the longest series. */
static int bars_svg(out_buf *b, const loom_plot_opts *o, const loom_plot_curve *s, size_t ns, char **svg, size_t *len) {
    size_t n = 0;
    double max = 0;
    for (size_t k = 0; k < ns; k++) {
        if (s[k].n > n) n = s[k].n;
        for (size_t i = 0; i < s[k].n; i++)
            if (s[k].y && isfinite(s[k].y[i]) && s[k].y[i] > max) max = s[k].y[i];
    }
    double ymax = max > 0 ? max * 1.05 : 1, pw = LOOM_PLOT_RIGHT - LOOM_PLOT_LEFT, ph = LOOM_PLOT_BOTTOM - LOOM_PLOT_TOP;
    double gw = n ? pw / (double)n : pw, bw = gw * 0.8 / (double)(ns ? ns : 1);
    double tv[16];
    int nt = ticks(0, ymax, 0, tv, 16);
    for (int t = 0; t < nt; t++) {
        double py = LOOM_PLOT_BOTTOM - ph * tv[t] / ymax;
        put(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", LOOM_PLOT_LEFT, py, LOOM_PLOT_RIGHT, py);
        put(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", LOOM_PLOT_LEFT - 6, py + 4, tv[t]);
    }
    size_t every = n <= 25 ? 1 : (n + 24) / 25;
    for (size_t i = 0; i < n; i++) {
        double gx = LOOM_PLOT_LEFT + gw * (double)i;
        const loom_plot_curve *first = NULL;
        for (size_t k = 0; k < ns && !first; k++)
            if (i < s[k].n && s[k].x) first = &s[k];
        if (first && i % every == 0)
            put(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.4g</text>\n", gx + gw / 2, LOOM_PLOT_BOTTOM + 18,
                first->x[i]);
        for (size_t k = 0; k < ns; k++) {
            if (i >= s[k].n || !s[k].y || !isfinite(s[k].y[i]) || s[k].y[i] < 0) continue;
            char col[16];
            colour(k, col);
            double h = ph * s[k].y[i] / ymax;
            put(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>", gx + gw * 0.1 + bw * (double)k,
                LOOM_PLOT_BOTTOM - h, bw, h, col);
            put_escaped(b, s[k].label);
            put(b, ", x = %.6g: %.6g</title></rect>\n", s[k].x ? s[k].x[i] : (double)i, s[k].y[i]);
        }
    }
    frame(b, o);
    for (size_t k = 0; k < ns; k++) legend(b, k, s[k].label, 0);
    return finish(b, svg, len);
}

int loom_plot_chart_svg(char **svg, size_t *len, const loom_plot_opts *o, const loom_plot_curve *s, size_t ns) {
    *svg = NULL;
    *len = 0;
    out_buf b = {0};
    put(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
        LOOM_PLOT_WIDTH, LOOM_PLOT_HEIGHT, LOOM_PLOT_WIDTH, LOOM_PLOT_HEIGHT);
    put(&b, "<text x=\"%d\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">", (LOOM_PLOT_LEFT + LOOM_PLOT_RIGHT) / 2);
    put_escaped(&b, o->title);
    put(&b, "</text>\n");
    if (o->bars) return bars_svg(&b, o, s, ns, svg, len);
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (size_t k = 0; k < ns; k++)
        for (size_t i = 0; i < s[k].n; i++) {
            if (!isfinite(s[k].x[i])) continue;
            const double *cols[3] = {s[k].y, s[k].lo, s[k].hi};
            for (int c = 0; c < 3; c++) {
                double v = cols[c] ? yval(o, cols[c][i]) : NAN;
                if (!isfinite(v)) continue;
                x0 = fmin(x0, s[k].x[i]);
                x1 = fmax(x1, s[k].x[i]);
                y0 = fmin(y0, v);
                y1 = fmax(y1, v);
            }
        }
    if (!isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) { /* one value: centre it */
        double d = y0 != 0 ? 0.05 * fabs(y0) : 0.5;
        y0 -= d;
        y1 += d;
    }
    double pad = 0.05 * (y1 - y0);
    y0 -= pad;
    y1 += pad;
    int xint = 1; /* whole x values (rounds): whole ticks */
    for (size_t k = 0; k < ns; k++)
        for (size_t i = 0; i < s[k].n; i++)
            if (isfinite(s[k].x[i]) && s[k].x[i] != floor(s[k].x[i])) xint = 0;
#define PX(v) (LOOM_PLOT_LEFT + ((v) - x0) / (x1 - x0) * (LOOM_PLOT_RIGHT - LOOM_PLOT_LEFT))
#define PY(v) (LOOM_PLOT_BOTTOM - ((v) - y0) / (y1 - y0) * (LOOM_PLOT_BOTTOM - LOOM_PLOT_TOP))
    double tv[16];
    int nt = ticks(x0, x1, xint, tv, 16);
    for (int i = 0; i < nt; i++)
        put(&b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", PX(tv[i]), LOOM_PLOT_BOTTOM + 18, tv[i]);
    if (o->log_y && floor(y1) - ceil(y0) >= 1) { /* a decade or more: ticks at the powers of ten */
        for (double p = ceil(y0); p <= y1; p++) {
            put(&b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", LOOM_PLOT_LEFT, PY(p), LOOM_PLOT_RIGHT, PY(p));
            put(&b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", LOOM_PLOT_LEFT - 6, PY(p) + 4, pow(10, p));
        }
    } else if (o->log_y) { /* less than a decade: five ticks, labelled with their values */
        for (int i = 0; i <= 5; i++) {
            double yv = y0 + (y1 - y0) * i / 5;
            put(&b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", LOOM_PLOT_LEFT, PY(yv), LOOM_PLOT_RIGHT, PY(yv));
            put(&b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", LOOM_PLOT_LEFT - 6, PY(yv) + 4, pow(10, yv));
        }
    } else {
        nt = ticks(y0, y1, 0, tv, 16);
        for (int i = 0; i < nt; i++) {
            put(&b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", LOOM_PLOT_LEFT, PY(tv[i]), LOOM_PLOT_RIGHT, PY(tv[i]));
            put(&b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", LOOM_PLOT_LEFT - 6, PY(tv[i]) + 4, tv[i]);
        }
    }
    for (size_t k = 0; k < ns; k++) { /* bands first, under every line */
        if (!s[k].lo || !s[k].hi) continue;
        char col[16];
        colour(k, col);
        put(&b, "<polygon fill=\"%s\" fill-opacity=\"0.25\" stroke=\"none\" points=\"", col);
        for (size_t i = 0; i < s[k].n; i++) {
            double hi = yval(o, s[k].hi[i]), lo = yval(o, s[k].lo[i]);
            if (isfinite(s[k].x[i]) && isfinite(hi) && isfinite(lo)) put(&b, "%.1f,%.1f ", PX(s[k].x[i]), PY(hi));
        }
        for (size_t i = s[k].n; i-- > 0;) {
            double hi = yval(o, s[k].hi[i]), lo = yval(o, s[k].lo[i]);
            if (isfinite(s[k].x[i]) && isfinite(hi) && isfinite(lo)) put(&b, "%.1f,%.1f ", PX(s[k].x[i]), PY(lo));
        }
        put(&b, "\"/>\n");
    }
    for (size_t k = 0; k < ns; k++) {
        if (s[k].y) {
            char col[16];
            colour(k, col);
            put(&b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
            for (size_t i = 0; i < s[k].n; i++) {
                double v = yval(o, s[k].y[i]);
                if (isfinite(v) && isfinite(s[k].x[i])) put(&b, "%.1f,%.1f ", PX(s[k].x[i]), PY(v));
            }
            put(&b, "\"/>\n");
        }
        legend(&b, k, s[k].label, !s[k].y);
    }
#undef PX
#undef PY
    frame(&b, o);
    return finish(&b, svg, len);
}

int loom_plot_lines_svg(char **svg, size_t *len, const char *title, const char *xlabel, const char *ylabel,
                        const loom_plot_series *s, size_t ns) {
    *svg = NULL;
    *len = 0;
    loom_plot_curve *c = calloc(ns ? ns : 1, sizeof *c);
    if (!c) return loom_error(LOOM_ENOMEM, "out of memory writing a chart");
    for (size_t k = 0; k < ns; k++) c[k] = (loom_plot_curve){s[k].label, s[k].x, s[k].y, NULL, NULL, s[k].n};
    loom_plot_opts o = {title, xlabel, ylabel, 0, 0};
    int rc = loom_plot_chart_svg(svg, len, &o, c, ns);
    free(c);
    return rc;
}
