/* Stacked bar charts as standalone SVG (no scripts, no external resources). */
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

int loom_plot_lines_svg(char **svg, size_t *len, const char *title, const char *xlabel, const char *ylabel,
                        const loom_plot_series *s, size_t ns) {
    *svg = NULL;
    *len = 0;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (size_t k = 0; k < ns; k++)
        for (size_t i = 0; i < s[k].n; i++) {
            if (!isfinite(s[k].y[i]) || !isfinite(s[k].x[i])) continue;
            x0 = fmin(x0, s[k].x[i]);
            x1 = fmax(x1, s[k].x[i]);
            y0 = fmin(y0, s[k].y[i]);
            y1 = fmax(y1, s[k].y[i]);
        }
    if (!isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    if (x1 <= x0) x1 = x0 + 1;
    if (y1 <= y0) y1 = y0 + 1;
    double pad = 0.05 * (y1 - y0);
    y0 -= pad;
    y1 += pad;
    const double W = 760, H = 440, L = 70, R = 190, T = 40, B = 50;
    out_buf b = {0};
    put(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
            "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H);
    put(&b, "<text x=\"%.0f\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">", (W - R + L) / 2);
    put_escaped(&b, title);
    put(&b, "</text>\n");
#define PX(v) (L + ((v) - x0) / (x1 - x0) * (W - L - R))
#define PY(v) (H - B - ((v) - y0) / (y1 - y0) * (H - T - B))
    for (int i = 0; i <= 5; i++) {
        double yv = y0 + (y1 - y0) * i / 5, xv = x0 + (x1 - x0) * i / 5;
        put(&b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, PY(yv), W - R, PY(yv));
        put(&b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", L - 6, PY(yv) + 4, yv);
        put(&b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.4g</text>\n", PX(xv), H - B + 18, xv);
    }
    put(&b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", L, T,
        W - L - R, H - T - B);
    put(&b, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">", (W - R + L) / 2, H - 10);
    put_escaped(&b, xlabel);
    put(&b, "</text>\n<text transform=\"translate(16,%.0f) rotate(-90)\" text-anchor=\"middle\">", (H - B + T) / 2);
    put_escaped(&b, ylabel);
    put(&b, "</text>\n");
    for (size_t k = 0; k < ns; k++) {
        char col[16];
        colour(k, col);
        put(&b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (size_t i = 0; i < s[k].n; i++)
            if (isfinite(s[k].y[i]) && isfinite(s[k].x[i])) put(&b, "%.1f,%.1f ", PX(s[k].x[i]), PY(s[k].y[i]));
        put(&b, "\"/>\n<rect x=\"%.0f\" y=\"%.0f\" width=\"14\" height=\"4\" fill=\"%s\"/>\n<text x=\"%.0f\" y=\"%.0f\">",
            W - R + 12, T + 12 + 18.0 * k, col, W - R + 30, T + 17 + 18.0 * k);
        put_escaped(&b, s[k].label);
        put(&b, "</text>\n");
    }
#undef PX
#undef PY
    put(&b, "</svg>\n");
    if (b.err) {
        free(b.s);
        return loom_error(LOOM_ENOMEM, "out of memory writing a chart");
    }
    *svg = b.s;
    *len = b.n;
    return LOOM_OK;
}
