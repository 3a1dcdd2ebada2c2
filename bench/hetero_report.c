/* Reads the metrics.jsonl of several `loom sim --client-eval` runs (bench/heterogeneity.sh) and prints a
 * markdown table: per method the mean and worst client's accuracy of the global model and, where the
 * run personalizes (--private, --finetune-steps), of the personalized models, and the bytes the clients
 * sent per round. --svg draws each method's per-client accuracies sorted from the worst client up
 * (the personalized model's where there is one).
 *
 *   hetero_report [--svg out.svg] LABEL=runs/x/metrics.jsonl LABEL2=runs/y/metrics.jsonl ... */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/plot.h"

#define MAX_CLIENTS 100000

typedef struct {
    char label[128];
    double *gacc, *pacc; /* per evaluated client */
    size_t n;
    int personal;
    double bytes_up;
    int rounds;
    double g_mean, g_min, p_mean, p_min;
} run;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double num(json_t *j, const char *k) {
    json_t *v = json_object_get(j, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static int load(run *r, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return loom_error(LOOM_EIO, "cannot open %s", path);
    size_t cap = 64;
    r->gacc = malloc(cap * sizeof(double));
    r->pacc = malloc(cap * sizeof(double));
    char *line = NULL;
    size_t lcap = 0;
    int rc = LOOM_OK;
    while (rc == LOOM_OK && getline(&line, &lcap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        if (!j) continue;
        const char *type = json_string_value(json_object_get(j, "type"));
        if (type && !strcmp(type, "round")) {
            r->bytes_up += num(j, "bytes_up");
            r->rounds++;
        } else if (type && !strcmp(type, "client_eval")) {
            if (r->n == cap) {
                if (cap >= MAX_CLIENTS) rc = loom_error(LOOM_ERANGE, "%s: more than %d clients", path, MAX_CLIENTS);
                cap *= 2;
                r->gacc = realloc(r->gacc, cap * sizeof(double));
                r->pacc = realloc(r->pacc, cap * sizeof(double));
            }
            if (rc == LOOM_OK) {
                r->gacc[r->n] = num(j, "global_acc");
                r->pacc[r->n] = num(j, "personal_acc");
                if (!isnan(r->pacc[r->n])) r->personal = 1;
                r->n++;
            }
        } else if (type && !strcmp(type, "personal")) {
            r->g_mean = num(j, "global_acc_mean");
            r->g_min = num(j, "global_acc_min");
            r->p_mean = num(j, "personal_acc_mean");
            r->p_min = num(j, "personal_acc_min");
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    if (rc == LOOM_OK && r->n == 0)
        rc = loom_error(LOOM_EFORMAT, "%s has no client_eval rows (run loom sim with --client-eval)", path);
    return rc;
}

static void cell(double v) {
    if (isnan(v)) printf(" — |");
    else printf(" %.3f |", v);
}

int main(int argc, char **argv) {
    const char *svg_path = NULL;
    run *runs = calloc((size_t)argc, sizeof *runs);
    int nr = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--svg") && i + 1 < argc) {
            svg_path = argv[++i];
            continue;
        }
        const char *eq = strchr(argv[i], '=');
        if (!eq || eq == argv[i] || (size_t)(eq - argv[i]) >= sizeof runs[0].label) {
            fprintf(stderr, "hetero_report: '%s' is not LABEL=metrics.jsonl\n", argv[i]);
            return 2;
        }
        run *r = &runs[nr++];
        snprintf(r->label, sizeof r->label, "%.*s", (int)(eq - argv[i]), argv[i]);
        if (load(r, eq + 1) != LOOM_OK) {
            fprintf(stderr, "hetero_report: %s\n", loom_errmsg());
            return 1;
        }
    }
    if (nr == 0) {
        fprintf(stderr, "usage: hetero_report [--svg out.svg] LABEL=metrics.jsonl ...\n");
        return 2;
    }
    printf("| method | global model: mean acc | worst client | personalized: mean acc | worst client | bytes up per round |\n");
    printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (int i = 0; i < nr; i++) {
        run *r = &runs[i];
        printf("| %s |", r->label);
        cell(r->g_mean);
        cell(r->g_min);
        cell(r->personal ? r->p_mean : NAN);
        cell(r->personal ? r->p_min : NAN);
        double per = r->rounds ? r->bytes_up / r->rounds : 0;
        printf(" %.1f KiB |\n", per / 1024.0);
    }
    if (svg_path) {
        loom_plot_series *s = calloc((size_t)nr, sizeof *s);
        double **xs = calloc((size_t)nr, sizeof *xs), **ys = calloc((size_t)nr, sizeof *ys);
        char (*names)[160] = calloc((size_t)nr, sizeof *names);
        for (int i = 0; i < nr; i++) {
            run *r = &runs[i];
            xs[i] = malloc(r->n * sizeof(double));
            ys[i] = malloc(r->n * sizeof(double));
            for (size_t k = 0; k < r->n; k++) {
                xs[i][k] = (double)(k + 1);
                ys[i][k] = r->personal ? r->pacc[k] : r->gacc[k];
            }
            qsort(ys[i], r->n, sizeof(double), cmp_double);
            snprintf(names[i], sizeof names[i], "%s%s", r->label, r->personal ? " (pers.)" : "");
            s[i] = (loom_plot_series){names[i], xs[i], ys[i], r->n};
        }
        char *svg;
        size_t len;
        int rc = loom_plot_lines_svg(&svg, &len, "Per-client test accuracy, sorted from the worst client",
                                     "client (worst to best)", "accuracy", s, (size_t)nr);
        if (rc == LOOM_OK) rc = loom_write_file_atomic(svg_path, svg, len);
        if (rc != LOOM_OK) {
            fprintf(stderr, "hetero_report: %s: %s\n", svg_path, loom_errmsg());
            return 1;
        }
        free(svg);
        for (int i = 0; i < nr; i++) free(xs[i]), free(ys[i]);
        free(xs);
        free(ys);
        free(names);
        free(s);
    }
    for (int i = 0; i < nr; i++) free(runs[i].gacc), free(runs[i].pacc);
    free(runs);
    return 0;
}
