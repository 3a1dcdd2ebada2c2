/* The SVG charts of src/data/plot.c: point positions computed by hand from the geometry plot.h
 * documents (plot area x 70..570, y 390 (bottom) .. 40 (top), y range padded by 5%), a log axis, the
 * min/max band, grouped bars, skipped NAN points, escaping, and the line chart wrapper. */
#include "test.h"

#include "loom/core.h"
#include "loom/plot.h"

/* The value of attribute `name` (e.g. "points=\"") in the nth element starting with `elem`. */
static const char *attr(const char *svg, const char *elem, int nth, const char *name, char *buf, size_t n) {
    const char *p = svg;
    for (int i = 0; i <= nth; i++) {
        p = strstr(p, elem);
        if (!p) return "";
        if (i < nth) p++;
    }
    const char *a = strstr(p, name);
    if (!a) return "";
    a += strlen(name);
    const char *e = strchr(a, '"');
    snprintf(buf, n, "%.*s", (int)(e - a), a);
    return buf;
}

static int count(const char *s, const char *what) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)); p++) n++;
    return n;
}

int main(void) {
    char *svg;
    size_t len;
    char buf[4096];
    double x[3] = {1, 2, 3};

    /* Lines: y 0, 10, 20 -> range [-1, 21]; px = 70 + (x - 1) / 2 * 500, py = 390 - (y + 1) / 22 * 350. */
    double y[3] = {0, 10, 20};
    loom_plot_curve c = {"a", x, y, NULL, NULL, 3};
    loom_plot_opts o = {"t", "round", "loss", 0, 0};
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, &c, 1));
    CHECK(len == strlen(svg), "length %zu", len);
    CHECK(!strcmp(attr(svg, "<polyline", 0, "points=\"", buf, sizeof buf), "70.0,374.1 320.0,215.0 570.0,55.9 "),
          "points '%s'", buf);
    CHECK(strstr(svg, "</svg>") != NULL, "closed");
    /* the line chart of loom_plot_lines_svg is the same chart */
    char *svg2;
    size_t len2;
    loom_plot_series ls = {"a", x, y, 3};
    CHECK_OK(loom_plot_lines_svg(&svg2, &len2, "t", "round", "loss", &ls, 1));
    CHECK(len2 == len && !memcmp(svg, svg2, len), "lines_svg differs from chart_svg");
    free(svg2);
    free(svg);

    /* Log axis: 1, 10, 100 are log10 0, 1, 2 -> the same positions as 0, 10, 20 above; ticks at 1, 10, 100. */
    double yl[3] = {1, 10, 100};
    c.y = yl;
    o.log_y = 1;
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, &c, 1));
    CHECK(!strcmp(attr(svg, "<polyline", 0, "points=\"", buf, sizeof buf), "70.0,374.1 320.0,215.0 570.0,55.9 "),
          "log points '%s'", buf);
    CHECK(strstr(svg, ">100</text>") && strstr(svg, ">10</text>") && strstr(svg, ">1</text>"), "decade ticks");
    CHECK(strstr(svg, "y=\"219.0\" text-anchor=\"end\">10</text>") != NULL, "the tick 10 sits at 10's height (+4)");
    CHECK(!strstr(svg, ">1000</text>"), "no tick past the range");
    free(svg);
    /* a value <= 0 has no place on a log axis: skipped; the rest (x 2..3, log y 1..2) spans the area */
    double yz[3] = {0, 10, 100};
    c.y = yz;
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, &c, 1));
    CHECK(!strcmp(attr(svg, "<polyline", 0, "points=\"", buf, sizeof buf), "70.0,374.1 570.0,55.9 "), "log zero '%s'", buf);
    free(svg);
    o.log_y = 0;

    /* NAN points are skipped; x range from the finite points only */
    double yn[3] = {0, NAN, 20};
    c.y = yn;
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, &c, 1));
    CHECK(!strcmp(attr(svg, "<polyline", 0, "points=\"", buf, sizeof buf), "70.0,374.1 570.0,55.9 "), "nan '%s'", buf);
    free(svg);

    /* Band: lo 0, 0, 0 and hi 20, 20, 20 around y 10: the range is [-1, 21] again; the polygon runs
     * along hi forwards then lo backwards, under the line. */
    double lo[3] = {0, 0, 0}, hi[3] = {20, 20, 20}, mid[3] = {10, 10, 10};
    c = (loom_plot_curve){"band", x, mid, lo, hi, 3};
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, &c, 1));
    CHECK(!strcmp(attr(svg, "<polygon", 0, "points=\"", buf, sizeof buf),
                  "70.0,55.9 320.0,55.9 570.0,55.9 570.0,374.1 320.0,374.1 70.0,374.1 "),
          "band '%s'", buf);
    CHECK(!strcmp(attr(svg, "<polyline", 0, "points=\"", buf, sizeof buf), "70.0,215.0 320.0,215.0 570.0,215.0 "),
          "line over band '%s'", buf);
    CHECK(strstr(svg, "<polygon") < strstr(svg, "<polyline"), "band drawn first");
    free(svg);
    /* a band alone (y NULL): a polygon and no polyline */
    c.y = NULL;
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, &c, 1));
    CHECK(count(svg, "<polygon") == 1 && count(svg, "<polyline") == 0, "band only");
    free(svg);

    /* One value everywhere: centred (2 +- 5%, then padded), not at the bottom edge */
    double ys[3] = {2, 2, 2};
    c = (loom_plot_curve){"flat", x, ys, NULL, NULL, 3};
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, &c, 1));
    CHECK(!strcmp(attr(svg, "<polyline", 0, "points=\"", buf, sizeof buf), "70.0,215.0 320.0,215.0 570.0,215.0 "),
          "flat '%s'", buf);
    free(svg);

    /* Bars: two series of 3; the top is 1.05 x 10 = 10.5, a bar of 5 is 350 * 5 / 10.5 = 166.7 high.
     * Groups are 500 / 3 wide, bars 0.8 x that / 2. */
    double up[3] = {5, 10, 0}, down[3] = {1, 2, NAN};
    loom_plot_curve b[2] = {{"up", x, up, NULL, NULL, 3}, {"down", x, down, NULL, NULL, 3}};
    o.bars = 1;
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, b, 2));
    CHECK(count(svg, "<title>") == 5, "5 bars (NAN skipped), got %d", count(svg, "<title>"));
    CHECK(!strcmp(attr(svg, "<rect x=\"86.7\"", 0, "height=\"", buf, sizeof buf), "166.7"), "bar height '%s'", buf);
    CHECK(!strcmp(attr(svg, "<rect x=\"86.7\"", 0, "y=\"", buf, sizeof buf), "223.3"), "bar top '%s'", buf);
    CHECK(strstr(svg, "<title>up, x = 2: 10</title>") != NULL, "bar title");
    CHECK(strstr(svg, "<title>down, x = 1: 1</title>") != NULL, "second series title");
    free(svg);
    o.bars = 0;

    /* Names are escaped */
    loom_plot_opts e = {"a<b&\"c\"", "x>", "y", 0, 0};
    c = (loom_plot_curve){"<s>", x, y, NULL, NULL, 3};
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &e, &c, 1));
    CHECK(strstr(svg, "a&lt;b&amp;&quot;c&quot;") && strstr(svg, "x&gt;") && strstr(svg, "&lt;s&gt;"), "escaped");
    CHECK(!strstr(svg, "<s>"), "raw name");
    free(svg);

    /* No points at all: still a document */
    c.n = 0;
    CHECK_OK(loom_plot_chart_svg(&svg, &len, &o, &c, 1));
    CHECK(strstr(svg, "</svg>") != NULL, "empty chart");
    free(svg);

    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed != 0;
}
