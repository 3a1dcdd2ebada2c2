/* loom report: a finished run's metrics as a static HTML page with SVG plots and a markdown summary.
 *
 * Reads RUN_DIR/metrics.jsonl (the rows every driver of the round engine writes: loom sim --out and
 * loom server --state) and the run's metadata from RUN_DIR/global.safetensors or
 * RUN_DIR/checkpoint.safetensors when present (strategy, seed, clients, DP mode). Writes into --out:
 *   report.html   one self-contained page: the run's settings, the summary table, every plot inline
 *   *.svg         each plot as its own file (loss, accuracy, perplexity, clients, bytes, epsilon, attack)
 *   summary.md    the summary as a markdown table
 * Plots are drawn by loom itself (src/data/plot.c); nothing is fetched or run. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "loom/core.h"
#include "loom/plot.h"
#include "loom/safetensors.h"

#define REPORT_MAX_FILE (4ull << 30) /* metrics.jsonl larger than this is refused */
#define REPORT_MAX_LINE (64u << 20)  /* one row (a round row lists its sampled clients) */
#define REPORT_MAX_ROWS 10000000     /* round rows */
#define REPORT_MAX_CLIENT 16777216   /* client ids below this */

/* One round row, with the spread of its clients' training losses from the client rows. */
typedef struct {
    double round, train_loss, eval_loss, eval_acc, ppl, eloss_mean, eloss_std, asr, eps, up, down, secs;
    int sampled, accepted, rejected, evaluated;
    double *closs; /* the accepted clients' losses */
    size_t ncl, capcl;
    double cmin, cmax, cmed; /* NAN without client rows */
} round_row;

typedef struct {
    round_row *r;
    size_t n, cap;
    unsigned char *seen; /* client ids seen in client rows */
    size_t n_clients, client_rows, attackers;
} run_metrics;

static void metrics_free(run_metrics *m) {
    for (size_t i = 0; i < m->n; i++) free(m->r[i].closs);
    free(m->r);
    free(m->seen);
}

static double num(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Reads path (metrics.jsonl); 0, or -1 after printing an error naming path and line. */
static int read_metrics(const char *path, run_metrics *m) {
    memset(m, 0, sizeof *m);
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "loom report: %s: %s (a run directory of loom sim --out or loom server --state holds "
                "metrics.jsonl)\n", path, strerror(errno));
        return -1;
    }
    if ((unsigned long long)st.st_size > REPORT_MAX_FILE) {
        fprintf(stderr, "loom report: %s: %lld bytes, more than the %llu this command reads\n", path,
                (long long)st.st_size, REPORT_MAX_FILE);
        return -1;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "loom report: %s: %s\n", path, strerror(errno));
        return -1;
    }
    m->seen = calloc(REPORT_MAX_CLIENT / 8, 1);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    int rc = m->seen ? 0 : -1;
    if (rc) fprintf(stderr, "loom report: out of memory\n");
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if ((size_t)len > REPORT_MAX_LINE) {
            fprintf(stderr, "loom report: %s:%ld: a row of %zd bytes, more than %u\n", path, lineno, len, REPORT_MAX_LINE);
            rc = -1;
            break;
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len == 0) continue;
        json_error_t e;
        json_t *o = json_loadb(line, (size_t)len, 0, &e);
        if (!o || !json_is_object(o)) {
            /* a run stopped mid-write leaves a partial last row: skip it, refuse one elsewhere */
            int c = fgetc(f);
            if (c == EOF) {
                fprintf(stderr, "loom report: %s:%ld: an incomplete last row was skipped\n", path, lineno);
            } else {
                fprintf(stderr, "loom report: %s:%ld: not a JSON object (%s)\n", path, lineno, o ? "another JSON value" : e.text);
                rc = -1;
            }
            json_decref(o);
            if (c != EOF) ungetc(c, f);
            continue;
        }
        const char *type = json_string_value(json_object_get(o, "type"));
        if (type && !strcmp(type, "round")) {
            if (m->n == REPORT_MAX_ROWS) {
                fprintf(stderr, "loom report: %s:%ld: more than %d round rows\n", path, lineno, REPORT_MAX_ROWS);
                rc = -1;
            } else if (m->n == m->cap) {
                size_t nc = m->cap ? m->cap * 2 : 64;
                round_row *p = realloc(m->r, nc * sizeof *p);
                if (!p) {
                    fprintf(stderr, "loom report: out of memory\n");
                    rc = -1;
                } else {
                    m->r = p;
                    m->cap = nc;
                }
            }
            if (!rc) {
                round_row *r = &m->r[m->n++];
                memset(r, 0, sizeof *r);
                r->round = num(o, "round");
                if (!isfinite(r->round)) {
                    fprintf(stderr, "loom report: %s:%ld: a round row without a round number\n", path, lineno);
                    rc = -1;
                }
                r->train_loss = num(o, "train_loss");
                r->eval_loss = num(o, "eval_loss");
                r->eval_acc = num(o, "eval_acc");
                r->ppl = num(o, "perplexity");
                r->eloss_mean = num(o, "eval_loss_mean");
                r->eloss_std = num(o, "eval_loss_std");
                r->asr = num(o, "attack_success");
                r->eps = num(o, "epsilon");
                r->up = num(o, "bytes_up");
                r->down = num(o, "bytes_down");
                r->secs = num(o, "seconds");
                r->sampled = (int)json_integer_value(json_object_get(o, "sampled"));
                r->accepted = (int)json_integer_value(json_object_get(o, "accepted"));
                r->rejected = (int)json_integer_value(json_object_get(o, "rejected"));
                r->evaluated = (int)json_integer_value(json_object_get(o, "evaluated_clients"));
                r->cmin = r->cmax = r->cmed = NAN;
            }
        } else if (type && !strcmp(type, "client")) {
            m->client_rows++;
            json_int_t id = json_integer_value(json_object_get(o, "client"));
            if (id >= 0 && id < REPORT_MAX_CLIENT && !(m->seen[id / 8] & (1u << (id % 8)))) {
                m->seen[id / 8] |= (unsigned char)(1u << (id % 8));
                m->n_clients++;
            }
            if (json_is_true(json_object_get(o, "attacker"))) m->attackers++;
            double round = num(o, "round"), loss = num(o, "loss");
            const char *status = json_string_value(json_object_get(o, "status"));
            /* the client rows follow their round's row: attach to the latest row of that round */
            round_row *r = NULL;
            for (size_t i = m->n; i-- > 0 && m->n - i <= 64;)
                if (m->r[i].round == round) {
                    r = &m->r[i];
                    break;
                }
            if (r && isfinite(loss) && status && !strcmp(status, "accepted")) {
                if (r->ncl == r->capcl) {
                    size_t nc = r->capcl ? r->capcl * 2 : 16;
                    double *p = realloc(r->closs, nc * sizeof *p);
                    if (!p) {
                        fprintf(stderr, "loom report: out of memory\n");
                        rc = -1;
                    } else {
                        r->closs = p;
                        r->capcl = nc;
                    }
                }
                if (!rc) r->closs[r->ncl++] = loss;
            }
        }
        json_decref(o);
    }
    if (!rc && ferror(f)) {
        fprintf(stderr, "loom report: %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(f);
    if (!rc && m->n == 0) {
        fprintf(stderr, "loom report: %s has no round rows: the run finished no round\n", path);
        rc = -1;
    }
    for (size_t i = 0; !rc && i < m->n; i++) {
        round_row *r = &m->r[i];
        if (!r->ncl) continue;
        qsort(r->closs, r->ncl, sizeof *r->closs, cmp_double);
        r->cmin = r->closs[0];
        r->cmax = r->closs[r->ncl - 1];
        r->cmed = r->ncl % 2 ? r->closs[r->ncl / 2] : 0.5 * (r->closs[r->ncl / 2 - 1] + r->closs[r->ncl / 2]);
    }
    if (rc) metrics_free(m);
    return rc;
}

/* ---------------------------------------------------------------- output text */

typedef struct {
    loom_strbuf b;
    int err;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...) {
    char small[1024];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (k < 0) {
        t->err = 1;
        return;
    }
    if ((size_t)k < sizeof small) {
        if (loom_strbuf_add(&t->b, small, (size_t)k) != LOOM_OK) t->err = 1;
        return;
    }
    char *big = malloc((size_t)k + 1);
    if (!big) {
        t->err = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    if (loom_strbuf_add(&t->b, big, (size_t)k) != LOOM_OK) t->err = 1;
    free(big);
}

static void add_html(text *t, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': add(t, "&lt;"); break;
        case '>': add(t, "&gt;"); break;
        case '&': add(t, "&amp;"); break;
        case '"': add(t, "&quot;"); break;
        default: add(t, "%c", *s);
        }
    }
}

/* One summary line: a name and its value as text (markdown and HTML show the same). */
typedef struct {
    char name[64], value[160];
} summary_row;

typedef struct {
    summary_row row[24];
    int n;
} summary;

static void srow(summary *s, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void srow(summary *s, const char *name, const char *fmt, ...) {
    if (s->n == (int)(sizeof s->row / sizeof s->row[0])) return;
    summary_row *r = &s->row[s->n++];
    snprintf(r->name, sizeof r->name, "%s", name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->value, sizeof r->value, fmt, ap);
    va_end(ap);
}

/* The last finite value of a column and the best one (lowest, or highest with maximize). */
static int last_best(const run_metrics *m, size_t off, int maximize, double *last, double *best, double *best_round) {
    *last = *best = *best_round = NAN;
    int any = 0;
    for (size_t i = 0; i < m->n; i++) {
        double v = *(const double *)((const char *)&m->r[i] + off);
        if (!isfinite(v)) continue;
        *last = v;
        if (!any || (maximize ? v > *best : v < *best)) {
            *best = v;
            *best_round = m->r[i].round;
        }
        any = 1;
    }
    return any;
}

static const char *mib(double bytes, char *buf, size_t n) {
    snprintf(buf, n, "%.0f (%.2f MiB)", bytes, bytes / 1048576.0);
    return buf;
}

static void make_summary(const run_metrics *m, summary *s) {
    double last, best, br;
    srow(s, "rounds", "%zu (last round %.0f)", m->n, m->r[m->n - 1].round);
    if (m->client_rows) srow(s, "clients seen", "%zu (%zu client rows)", m->n_clients, m->client_rows);
    if (last_best(m, offsetof(round_row, train_loss), 0, &last, &best, &br)) {
        srow(s, "final train loss", "%.4f", last);
        srow(s, "best train loss", "%.4f (round %.0f)", best, br);
    }
    if (last_best(m, offsetof(round_row, eval_loss), 0, &last, &best, &br)) {
        srow(s, "final eval loss", "%.4f", last);
        srow(s, "best eval loss", "%.4f (round %.0f)", best, br);
    }
    if (last_best(m, offsetof(round_row, eval_acc), 1, &last, &best, &br)) {
        srow(s, "final accuracy", "%.4f", last);
        srow(s, "best accuracy", "%.4f (round %.0f)", best, br);
    }
    if (last_best(m, offsetof(round_row, ppl), 0, &last, &best, &br)) {
        srow(s, "final perplexity", "%.2f", last);
        srow(s, "best perplexity", "%.2f (round %.0f)", best, br);
    }
    double up = 0, down = 0, secs = 0;
    long acc = 0, rej = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (isfinite(m->r[i].up)) up += m->r[i].up;
        if (isfinite(m->r[i].down)) down += m->r[i].down;
        if (isfinite(m->r[i].secs)) secs += m->r[i].secs;
        acc += m->r[i].accepted;
        rej += m->r[i].rejected;
    }
    srow(s, "updates accepted / refused", "%ld / %ld", acc, rej);
    char b1[64];
    srow(s, "bytes up", "%s", mib(up, b1, sizeof b1));
    srow(s, "bytes down", "%s", mib(down, b1, sizeof b1));
    int dp = 0;
    for (size_t i = 0; i < m->n; i++) dp |= isfinite(m->r[i].eps);
    if (dp) {
        last_best(m, offsetof(round_row, eps), 0, &last, &best, &br);
        srow(s, "epsilon (final)", "%.4g", last);
    }
    if (last_best(m, offsetof(round_row, asr), 1, &last, &best, &br)) {
        srow(s, "attack success (final)", "%.4f", last);
        srow(s, "attack success (highest)", "%.4f (round %.0f)", best, br);
    }
    srow(s, "wall time", "%.1f s (sum of the rounds' seconds)", secs);
}

/* ---------------------------------------------------------------- plots */

typedef struct {
    char file[32];  /* e.g. loss.svg */
    char caption[160];
    char *svg;
    size_t len;
} figure;

typedef struct {
    figure f[8];
    int n;
} figures;

static int has(const double *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (isfinite(v[i])) return 1;
    return 0;
}

static int add_figure(figures *fs, const char *file, const char *caption, const loom_plot_opts *o,
                      const loom_plot_curve *s, size_t ns) {
    figure *f = &fs->f[fs->n];
    snprintf(f->file, sizeof f->file, "%s", file);
    snprintf(f->caption, sizeof f->caption, "%s", caption);
    if (loom_plot_chart_svg(&f->svg, &f->len, o, s, ns) != LOOM_OK) return cli_fail("report: plotting");
    fs->n++;
    return 0;
}

/* The columns of the plots, one array per metric. */
enum { C_X, C_TRAIN, C_EVAL, C_ACC, C_PPL, C_CMIN, C_CMAX, C_CMED, C_EMLO, C_EMHI, C_UP, C_DOWN, C_EPS, C_ASR, C_N };

static int make_figures(const run_metrics *m, const char *name, figures *fs) {
    size_t n = m->n;
    double *c[C_N];
    int rc = 0;
    for (int k = 0; k < C_N; k++)
        if (!(c[k] = malloc((n ? n : 1) * sizeof(double)))) rc = -1;
    if (rc) {
        fprintf(stderr, "loom report: out of memory\n");
        goto done;
    }
    double maxb = 0;
    for (size_t i = 0; i < n; i++) {
        const round_row *r = &m->r[i];
        c[C_X][i] = r->round;
        c[C_TRAIN][i] = r->train_loss;
        c[C_EVAL][i] = r->eval_loss;
        c[C_ACC][i] = r->eval_acc;
        c[C_PPL][i] = r->ppl;
        c[C_CMIN][i] = r->cmin;
        c[C_CMAX][i] = r->cmax;
        c[C_CMED][i] = r->cmed;
        c[C_EMLO][i] = r->eloss_mean - r->eloss_std;
        c[C_EMHI][i] = r->eloss_mean + r->eloss_std;
        c[C_UP][i] = r->up;
        c[C_DOWN][i] = r->down;
        c[C_EPS][i] = r->eps;
        c[C_ASR][i] = r->asr;
        maxb = fmax(maxb, fmax(isfinite(r->up) ? r->up : 0, isfinite(r->down) ? r->down : 0));
    }
    char title[256];
    loom_plot_opts o = {title, "round", "", 0, 0};
    /* 1. global loss */
    snprintf(title, sizeof title, "%.200s: loss per round", name);
    o.ylabel = "loss";
    loom_plot_curve s[3];
    size_t ns = 0;
    if (has(c[C_TRAIN], n)) s[ns++] = (loom_plot_curve){"train loss", c[C_X], c[C_TRAIN], NULL, NULL, n};
    if (has(c[C_EVAL], n)) s[ns++] = (loom_plot_curve){"eval loss (pooled)", c[C_X], c[C_EVAL], NULL, NULL, n};
    if (ns && (rc = add_figure(fs, "loss.svg", "Global loss per round", &o, s, ns))) goto done;
    /* 2. accuracy */
    if (has(c[C_ACC], n)) {
        snprintf(title, sizeof title, "%.200s: next-token accuracy", name);
        o.ylabel = "accuracy";
        s[0] = (loom_plot_curve){"eval accuracy (pooled)", c[C_X], c[C_ACC], NULL, NULL, n};
        if ((rc = add_figure(fs, "accuracy.svg", "Accuracy on the clients' test data", &o, s, 1))) goto done;
    }
    /* 3. perplexity, log axis */
    if (has(c[C_PPL], n)) {
        snprintf(title, sizeof title, "%.200s: perplexity (log scale)", name);
        o.ylabel = "perplexity";
        o.log_y = 1;
        s[0] = (loom_plot_curve){"eval perplexity", c[C_X], c[C_PPL], NULL, NULL, n};
        rc = add_figure(fs, "perplexity.svg", "Perplexity on the clients' test data (log axis)", &o, s, 1);
        o.log_y = 0;
        if (rc) goto done;
    }
    /* 4. the clients' spread */
    ns = 0;
    if (has(c[C_CMED], n))
        s[ns++] = (loom_plot_curve){"train: median, min-max", c[C_X], c[C_CMED], c[C_CMIN], c[C_CMAX], n};
    if (has(c[C_EMLO], n)) s[ns++] = (loom_plot_curve){"eval: mean ± std", c[C_X], NULL, c[C_EMLO], c[C_EMHI], n};
    if (ns) {
        snprintf(title, sizeof title, "%.200s: spread across clients", name);
        o.ylabel = "loss";
        if ((rc = add_figure(fs, "clients.svg", "Per-client spread in each round: the accepted clients' training losses (median, min-max band) and their evaluation losses (mean ± std)", &o, s, ns))) goto done;
    }
    /* 5. bytes per round, in the unit that fits */
    if (has(c[C_UP], n) || has(c[C_DOWN], n)) {
        const char *unit = maxb >= 1 << 30 ? "GiB" : maxb >= 1 << 20 ? "MiB" : maxb >= 1 << 10 ? "KiB" : "bytes";
        double scale = maxb >= 1 << 30 ? 1.0 / (1 << 30) : maxb >= 1 << 20 ? 1.0 / (1 << 20) : maxb >= 1 << 10 ? 1.0 / (1 << 10) : 1;
        for (size_t i = 0; i < n; i++) {
            c[C_UP][i] *= scale;
            c[C_DOWN][i] *= scale;
        }
        snprintf(title, sizeof title, "%.200s: bytes per round", name);
        char ylabel[32];
        snprintf(ylabel, sizeof ylabel, "%s per round", unit);
        o.ylabel = ylabel;
        o.bars = 1;
        s[0] = (loom_plot_curve){"up (updates)", c[C_X], c[C_UP], NULL, NULL, n};
        s[1] = (loom_plot_curve){"down (global model)", c[C_X], c[C_DOWN], NULL, NULL, n};
        rc = add_figure(fs, "bytes.svg", "Bytes on the wire per round", &o, s, 2);
        o.bars = 0;
        if (rc) goto done;
    }
    /* 6. privacy budget */
    if (has(c[C_EPS], n)) {
        snprintf(title, sizeof title, "%.200s: privacy budget spent", name);
        o.ylabel = "epsilon";
        s[0] = (loom_plot_curve){"epsilon", c[C_X], c[C_EPS], NULL, NULL, n};
        if ((rc = add_figure(fs, "epsilon.svg", "Differential privacy: epsilon spent after each round", &o, s, 1))) goto done;
    }
    /* 7. attacks */
    if (has(c[C_ASR], n)) {
        snprintf(title, sizeof title, "%.200s: backdoor attack success", name);
        o.ylabel = "attack success rate";
        s[0] = (loom_plot_curve){"attack success", c[C_X], c[C_ASR], NULL, NULL, n};
        if ((rc = add_figure(fs, "attack.svg", "Simulated attack: success rate on triggered examples", &o, s, 1))) goto done;
    }
done:
    for (int k = 0; k < C_N; k++) free(c[k]);
    return rc;
}

/* ---------------------------------------------------------------- run metadata */

typedef struct {
    char key[64], value[160];
} meta_row;

/* The metadata of the run's final or last checkpoint file, when one is there. */
static int read_meta(const char *dir, meta_row *rows, int max, char *from, size_t nfrom) {
    static const char *const files[] = {"global.safetensors", "checkpoint.safetensors"};
    for (int k = 0; k < 2; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, files[k]);
        struct stat st;
        if (stat(path, &st) != 0) continue;
        loom_st_file *f;
        if (loom_st_open(&f, path) != LOOM_OK) {
            fprintf(stderr, "loom report: %s is not readable (%s); the run's settings are left out\n", path, loom_errmsg());
            continue;
        }
        int n = 0;
        const char *key, *value;
        for (size_t i = 0; n < max && loom_st_meta_at(f, i, &key, &value) == LOOM_OK; i++) {
            if (!strcmp(key, "loom_tvec") || !strcmp(key, "loom_tvec_dim") || !strcmp(key, "metrics_bytes")) continue;
            snprintf(rows[n].key, sizeof rows[n].key, "%s", key);
            snprintf(rows[n].value, sizeof rows[n].value, "%.150s%s", value, strlen(value) > 150 ? "..." : "");
            n++;
        }
        loom_st_close(f);
        snprintf(from, nfrom, "%s", files[k]);
        return n;
    }
    return 0;
}

/* ---------------------------------------------------------------- the command */

static int write_out(const char *dir, const char *file, const char *data, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (loom_write_file_atomic(path, data, len) != LOOM_OK) {
        fprintf(stderr, "loom report: --out: cannot write %s: %s\n", path, loom_errmsg());
        return -1;
    }
    printf("wrote %s\n", path);
    return 0;
}

int cmd_report(int argc, char **argv) {
    const char *out = NULL, *format = "html,svg,md", *title = NULL;
    cli_opt opts[] = {
        {"out", OPT_STR, &out, "folder for report.html, the .svg plots and summary.md (default RUN_DIR/report)", 0, 0},
        {"format", OPT_STR, &format, "what to write, a comma-separated list of html, svg, md", 0, 0},
        {"title", OPT_STR, &title, "the run's name in titles (default the run directory's name)", 0, 0},
    };
    const char *pos[1];
    int npos = 0;
    const char *usage = "loom report RUN_DIR [--out DIR] [--format html,svg,md] [--title S]";
    const char *desc =
        "Writes a finished run's report: report.html (one self-contained page: the run's settings, a summary\n"
        "table and every plot inline), each plot as its own SVG (loss, accuracy, perplexity, per-client\n"
        "spread, bytes per round, epsilon when DP was on, attack success when attacks were simulated) and\n"
        "summary.md (a markdown table). RUN_DIR is a loom sim --out or loom server --state directory: its\n"
        "metrics.jsonl, and the metadata of global.safetensors or checkpoint.safetensors when present.\n"
        "loom report --serve RUN_DIR: serve the run's dashboard: see the Dashboard section of README.md.";
    int pr = cli_parse(argc, argv, usage, desc, opts, (int)(sizeof opts / sizeof opts[0]), pos, &npos, 1);
    if (pr) return pr > 0 ? 0 : 2;
    if (npos != 1) {
        fprintf(stderr, "loom report: give the run directory: %s (see --help)\n", usage);
        return 2;
    }
    const char *dir = pos[0];
    int want_html = 0, want_svg = 0, want_md = 0;
    {
        char buf[256];
        if (snprintf(buf, sizeof buf, "%s", format) >= (int)sizeof buf || !*buf) {
            fprintf(stderr, "loom report: --format '%s': expected a list of html, svg, md\n", format);
            return 2;
        }
        for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (!strcmp(t, "html")) want_html = 1;
            else if (!strcmp(t, "svg")) want_svg = 1;
            else if (!strcmp(t, "md")) want_md = 1;
            else {
                fprintf(stderr, "loom report: --format: unknown format '%s' (html, svg, md)\n", t);
                return 2;
            }
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "loom report: %s: %s\n", dir, stat(dir, &st) != 0 ? strerror(errno) : "not a directory");
        return 1;
    }
    char mpath[4096];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", dir);
    if (stat(mpath, &st) != 0) {
        fprintf(stderr, "loom report: %s holds no metrics.jsonl: give a run directory (loom sim --out DIR or "
                "loom server --state DIR)\n", dir);
        return 1;
    }
    char outbuf[4096];
    if (!out) {
        snprintf(outbuf, sizeof outbuf, "%s/report", dir);
        out = outbuf;
    }
    if (cli_out_dir("--out", out) != 0) return 1;
    run_metrics m;
    if (read_metrics(mpath, &m) != 0) return 1;
    char name[256];
    if (title) snprintf(name, sizeof name, "%s", title);
    else {
        char d[4096];
        snprintf(d, sizeof d, "%s", dir);
        size_t n = strlen(d);
        while (n > 1 && d[n - 1] == '/') d[--n] = 0;
        const char *b = strrchr(d, '/');
        snprintf(name, sizeof name, "%s", b && b[1] ? b + 1 : d);
    }
    meta_row meta[32];
    char meta_from[64] = "";
    int nmeta = read_meta(dir, meta, 32, meta_from, sizeof meta_from);
    summary sum = {.n = 0};
    make_summary(&m, &sum);
    figures fs = {.n = 0};
    int rc = make_figures(&m, name, &fs) ? 1 : 0;
    for (int i = 0; !rc && want_svg && i < fs.n; i++)
        if (write_out(out, fs.f[i].file, fs.f[i].svg, fs.f[i].len)) rc = 1;
    if (!rc && want_md) {
        text t = {{0}, 0};
        add(&t, "# %s\n\n| metric | value |\n| --- | --- |\n", name);
        for (int i = 0; i < sum.n; i++) add(&t, "| %s | %s |\n", sum.row[i].name, sum.row[i].value);
        if (nmeta) {
            add(&t, "\n| setting (%s) | value |\n| --- | --- |\n", meta_from);
            for (int i = 0; i < nmeta; i++) add(&t, "| %s | %s |\n", meta[i].key, meta[i].value);
        }
        if (t.err) rc = cli_fail("report: summary.md");
        else if (write_out(out, "summary.md", t.b.s, t.b.n)) rc = 1;
        free(t.b.s);
    }
    if (!rc && want_html) {
        text t = {{0}, 0};
        add(&t, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>");
        add_html(&t, name);
        add(&t, "</title>\n<style>\nbody{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}\n"
                "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 10px;text-align:left}\n"
                "figure{margin:2em 0}figcaption{color:#555;margin-top:4px}\n</style>\n</head>\n<body>\n<h1>");
        add_html(&t, name);
        add(&t, "</h1>\n<p>Run directory <code>");
        add_html(&t, dir);
        add(&t, "</code>, written by <code>loom report</code> (loom %s).</p>\n<h2>Summary</h2>\n<table>\n", LOOM_VERSION);
        for (int i = 0; i < sum.n; i++) {
            add(&t, "<tr><th>");
            add_html(&t, sum.row[i].name);
            add(&t, "</th><td>");
            add_html(&t, sum.row[i].value);
            add(&t, "</td></tr>\n");
        }
        add(&t, "</table>\n");
        if (nmeta) {
            add(&t, "<h2>Settings</h2>\n<p>From <code>%s</code>.</p>\n<table>\n", meta_from);
            for (int i = 0; i < nmeta; i++) {
                add(&t, "<tr><th>");
                add_html(&t, meta[i].key);
                add(&t, "</th><td>");
                add_html(&t, meta[i].value);
                add(&t, "</td></tr>\n");
            }
            add(&t, "</table>\n");
        }
        add(&t, "<h2>Plots</h2>\n");
        for (int i = 0; i < fs.n; i++) {
            add(&t, "<figure id=\"%.*s\">\n", (int)(strlen(fs.f[i].file) - 4), fs.f[i].file);
            if (loom_strbuf_add(&t.b, fs.f[i].svg, fs.f[i].len) != LOOM_OK) t.err = 1;
            add(&t, "<figcaption>");
            add_html(&t, fs.f[i].caption);
            if (want_svg) add(&t, " (<a href=\"%s\">%s</a>)", fs.f[i].file, fs.f[i].file);
            add(&t, "</figcaption>\n</figure>\n");
        }
        add(&t, "</body>\n</html>\n");
        if (t.err) rc = cli_fail("report: report.html");
        else if (write_out(out, "report.html", t.b.s, t.b.n)) rc = 1;
        free(t.b.s);
    }
    for (int i = 0; i < fs.n; i++) free(fs.f[i].svg);
    metrics_free(&m);
    return rc;
}
