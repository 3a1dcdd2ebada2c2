/* Reads the metrics.jsonl of several `loom sim` runs and reports, for each, the first round whose
 * pooled evaluation accuracy reaches a target, the ratio of those rounds to the first run's, and an SVG
 * of accuracy per round.
 *
 *   shakespeare_report --target 0.40 --svg out.svg LABEL=runs/x/metrics.jsonl LABEL2=runs/y/metrics.jsonl */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/plot.h"
#include "loom/core.h"

typedef struct {
    char label[128];
    double *x, *acc;
    size_t n;
    int reach;      /* first round with acc >= target, or -1 */
    double best;
    double seconds; /* total wall time of the rounds */
    double bytes;
} run;

static int load(run *r, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return loom_error(LOOM_EIO, "cannot open %s", path);
    size_t cap = 64;
    r->x = malloc(cap * sizeof(double));
    r->acc = malloc(cap * sizeof(double));
    char *line = NULL;
    size_t lcap = 0;
    while (getline(&line, &lcap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j) continue;
        const char *type = json_string_value(json_object_get(j, "type"));
        if (type && !strcmp(type, "round")) {
            r->seconds += json_number_value(json_object_get(j, "seconds"));
            r->bytes += json_number_value(json_object_get(j, "bytes_up")) + json_number_value(json_object_get(j, "bytes_down"));
            json_t *a = json_object_get(j, "eval_acc");
            if (json_is_number(a)) {
                if (r->n == cap) {
                    cap *= 2;
                    r->x = realloc(r->x, cap * sizeof(double));
                    r->acc = realloc(r->acc, cap * sizeof(double));
                }
                r->x[r->n] = (double)json_integer_value(json_object_get(j, "round"));
                r->acc[r->n] = json_number_value(a);
                r->n++;
            }
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    return LOOM_OK;
}

int main(int argc, char **argv) {
    double target = 0.4;
    const char *svg = NULL;
    run runs[8];
    int nr = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--target") && i + 1 < argc) target = atof(argv[++i]);
        else if (!strcmp(argv[i], "--svg") && i + 1 < argc) svg = argv[++i];
        else if (strchr(argv[i], '=') && nr < 8) {
            run *r = &runs[nr];
            memset(r, 0, sizeof *r);
            const char *eq = strchr(argv[i], '=');
            snprintf(r->label, sizeof r->label, "%.*s", (int)(eq - argv[i]), argv[i]);
            if (load(r, eq + 1) != LOOM_OK) {
                fprintf(stderr, "shakespeare_report: %s\n", loom_errmsg());
                return 1;
            }
            nr++;
        } else {
            fprintf(stderr, "usage: shakespeare_report [--target ACC] [--svg FILE] LABEL=metrics.jsonl ...\n");
            return 2;
        }
    }
    printf("| run | rounds to %.0f%% accuracy | best accuracy | rounds run | time | traffic |\n| --- | --- | --- | --- | --- | --- |\n",
           target * 100);
    for (int k = 0; k < nr; k++) {
        run *r = &runs[k];
        r->reach = -1;
        r->best = 0;
        for (size_t i = 0; i < r->n; i++) {
            if (r->acc[i] >= target && r->reach < 0) r->reach = (int)r->x[i];
            r->best = fmax(r->best, r->acc[i]);
        }
        char reach[32];
        if (r->reach >= 0) snprintf(reach, sizeof reach, "%d", r->reach);
        else snprintf(reach, sizeof reach, "not reached");
        printf("| %s | %s | %.3f | %.0f | %.0fs | %.0f MiB |\n", r->label, reach, r->best, r->n ? r->x[r->n - 1] : 0,
               r->seconds, r->bytes / 1048576.0);
    }
    if (nr >= 2 && runs[0].reach > 0 && runs[1].reach > 0)
        printf("\nratio %s rounds / %s rounds = %.1f\n", runs[1].label, runs[0].label, (double)runs[1].reach / runs[0].reach);
    else if (nr >= 2 && runs[0].reach > 0 && runs[1].n > 0)
        printf("\nratio %s rounds / %s rounds > %.1f (%s did not reach the target in %.0f rounds)\n", runs[1].label,
               runs[0].label, runs[1].x[runs[1].n - 1] / runs[0].reach, runs[1].label, runs[1].x[runs[1].n - 1]);
    if (svg) {
        loom_plot_series s[8];
        for (int k = 0; k < nr; k++) s[k] = (loom_plot_series){runs[k].label, runs[k].x, runs[k].acc, runs[k].n};
        char *text;
        size_t len;
        char title[128];
        snprintf(title, sizeof title, "Federated Shakespeare: test accuracy per round (target %.0f%%)", target * 100);
        if (loom_plot_lines_svg(&text, &len, title, "communication round", "next-character accuracy", s, (size_t)nr) != LOOM_OK ||
            loom_write_file_atomic(svg, text, len) != LOOM_OK) {
            fprintf(stderr, "shakespeare_report: %s\n", loom_errmsg());
            return 1;
        }
        free(text);
        printf("plot: %s\n", svg);
    }
    for (int k = 0; k < nr; k++) {
        free(runs[k].x);
        free(runs[k].acc);
    }
    return 0;
}
