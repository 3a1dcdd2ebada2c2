/* Byzantine-robust aggregators (buffered): coordinate-wise median and trimmed mean by selection,
 * Krum and Multi-Krum from one Gram matrix, norm bounding. The rules, their assumptions and the order
 * independence are described in include/loom/pipeline.h.
 *
 * Shapes: n = updates in the round, d = dim; U (n, d) the held updates, row-major, one row each. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/pipeline.h"

#define PAR_MIN 65536  /* coordinates below which the selection loops stay on one thread */
#define SEL_BLOCK 64   /* coordinates transposed together for the selection (n x SEL_BLOCK floats) */
#define GRAM_BLOCK 2048 /* columns of U converted to double per dsyrk call */

static const char *const rule_names[] = {"median", "trimmed-mean", "krum", "multi-krum", "norm-bound", "geomedian"};
#define N_RULES (sizeof rule_names / sizeof rule_names[0])

void loom_robust_defaults(loom_robust_config *c, loom_robust_rule rule) {
    memset(c, 0, sizeof *c);
    c->rule = rule;
    c->beta = 0.1;
    c->bound = 1.0;
    c->iters = 100;
    c->nu = 1e-6;
}

int loom_robust_rule_parse(const char *name, loom_robust_rule *rule) {
    for (size_t i = 0; name && i < N_RULES; i++)
        if (strcmp(name, rule_names[i]) == 0) {
            *rule = (loom_robust_rule)i;
            return LOOM_OK;
        }
    return loom_error(LOOM_EINVAL,
                      "unknown robust aggregator '%s' (median, trimmed-mean, krum, multi-krum, norm-bound, geomedian)",
                      name ? name : "(null)");
}

const char *loom_robust_rule_name(loom_robust_rule rule) {
    return (unsigned)rule < N_RULES ? rule_names[rule] : "unknown";
}

int loom_robust_check(const loom_robust_config *c, size_t n) {
    if (!c) return loom_error(LOOM_EINVAL, "robust aggregator: NULL configuration");
    switch (c->rule) {
    case LOOM_ROBUST_MEDIAN:
        return LOOM_OK;
    case LOOM_ROBUST_TRIMMED_MEAN: {
        if (!(c->beta >= 0 && c->beta < 0.5))
            return loom_error(LOOM_EINVAL, "trimmed-mean: beta must be in [0, 0.5) (got %g)", c->beta);
        size_t k = (size_t)floor(c->beta * (double)n);
        if (n > 0 && 2 * k >= n)
            return loom_error(LOOM_EINVAL, "trimmed-mean needs 2 floor(beta n) < n: beta = %g cuts %zu of n = %zu",
                              c->beta, 2 * k, n);
        return LOOM_OK;
    }
    case LOOM_ROBUST_KRUM:
    case LOOM_ROBUST_MULTI_KRUM: {
        const char *nm = rule_names[c->rule];
        if (c->f < 0) return loom_error(LOOM_EINVAL, "%s: f must be >= 0 (got %d)", nm, c->f);
        if (c->rule == LOOM_ROBUST_MULTI_KRUM && c->m < 0)
            return loom_error(LOOM_EINVAL, "multi-krum: m must be >= 1, or 0 for n - f (got %d)", c->m);
        if (n == 0) return LOOM_OK;
        if (n < 2 * (size_t)c->f + 3)
            return loom_error(LOOM_EINVAL, "%s needs n >= 2f + 3 updates: f = %d needs at least %zu, got n = %zu", nm,
                              c->f, 2 * (size_t)c->f + 3, n);
        if (c->rule == LOOM_ROBUST_MULTI_KRUM && (size_t)c->m > n - (size_t)c->f)
            return loom_error(LOOM_EINVAL, "multi-krum needs m <= n - f: m = %d with n = %zu, f = %d", c->m, n, c->f);
        return LOOM_OK;
    }
    case LOOM_ROBUST_NORM_BOUND:
        if (!(c->bound > 0) || isinf(c->bound))
            return loom_error(LOOM_EINVAL, "norm-bound: bound must be finite and > 0 (got %g)", c->bound);
        return LOOM_OK;
    case LOOM_ROBUST_GEOMEDIAN:
        if (c->iters < 1) return loom_error(LOOM_EINVAL, "geomedian: iters must be >= 1 (got %d)", c->iters);
        if (!(c->nu > 0) || isinf(c->nu))
            return loom_error(LOOM_EINVAL, "geomedian: nu must be finite and > 0 (got %g)", c->nu);
        return LOOM_OK;
    }
    return loom_error(LOOM_EINVAL, "robust aggregator: unknown rule %d", (int)c->rule);
}

/* ------------------------------------------------------------------ order by content */

typedef struct {
    uint64_t hash;
    double w;
    size_t idx;
    const float *u;
    size_t dim;
} row_key;

static uint64_t row_hash(const float *u, size_t dim) {
    const unsigned char *b = (const unsigned char *)u;
    size_t nb = dim * sizeof *u, i = 0;
    uint64_t h = 0xcbf29ce484222325ull;
    for (; i + 8 <= nb; i += 8) {
        uint64_t x;
        memcpy(&x, b + i, 8);
        h = (h ^ x) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < nb; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static int row_cmp(const void *pa, const void *pb) {
    const row_key *a = pa, *b = pb;
    if (a->hash != b->hash) return a->hash < b->hash ? -1 : 1;
    if (a->w != b->w) return a->w < b->w ? -1 : 1;
    return memcmp(a->u, b->u, a->dim * sizeof *a->u);
}

/* ------------------------------------------------------------------ selection */

/* Rearranges a[0..n) so that a[k] holds the k-th smallest value, with a[<k] <= a[k] <= a[>k]
 * (Hoare partition around a median of three; deterministic for a given input order). */
static void select_k(float *a, size_t n, size_t k) {
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, kk = (ptrdiff_t)k;
    while (hi > lo) {
        float x0 = a[lo], x1 = a[lo + (hi - lo) / 2], x2 = a[hi];
        float x = x0 < x1 ? (x1 < x2 ? x1 : (x0 < x2 ? x2 : x0)) : (x0 < x2 ? x0 : (x1 < x2 ? x2 : x1));
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < x) i++;
            while (a[j] > x) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        /* now a[lo..j] <= x, a[i..hi] >= x, and a[j+1..i-1] == x */
        if (kk <= j) hi = j;
        else if (kk >= i) lo = i;
        else return;
    }
}

/* The median (k = -1) or the trimmed mean cutting k from each end of col[0..n). */
static double col_combine(float *col, size_t n, long k) {
    if (k < 0) {
        size_t h = n / 2;
        select_k(col, n, h);
        if (n & 1) return col[h];
        float lo = col[0];
        for (size_t i = 1; i < h; i++) lo = col[i] > lo ? col[i] : lo;
        return 0.5 * ((double)lo + (double)col[h]);
    }
    size_t kk = (size_t)k;
    if (kk > 0) {
        select_k(col, n, kk);                      /* col[0..k) = the k smallest */
        select_k(col + kk, n - kk, n - 2 * kk - 1); /* col[n-k..n) = the k largest */
    }
    double s = 0;
    for (size_t i = kk; i < n - kk; i++) s += col[i];
    return s / (double)(n - 2 * kk);
}

static int coordinatewise(double *out, const float *const *rows, size_t n, size_t dim, long k) {
    int nt = omp_get_max_threads();
    if (dim < PAR_MIN) nt = 1;
    float *scratch = loom_alloc((size_t)nt * n * SEL_BLOCK * sizeof *scratch);
    if (!scratch) return loom_error(LOOM_ENOMEM, "out of memory for the selection of %zu updates", n);
    size_t nblk = (dim + SEL_BLOCK - 1) / SEL_BLOCK;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t b = 0; b < nblk; b++) {
        float *t = scratch + (size_t)omp_get_thread_num() * n * SEL_BLOCK;
        size_t j0 = b * SEL_BLOCK, nb = dim - j0 < SEL_BLOCK ? dim - j0 : SEL_BLOCK;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < nb; j++) t[j * n + i] = rows[i][j0 + j];
        for (size_t j = 0; j < nb; j++) out[j0 + j] = col_combine(t + j * n, n, k);
    }
    loom_free(scratch);
    return LOOM_OK;
}

/* ------------------------------------------------------------------ Krum */

static int dbl_cmp(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? -1 : a > b;
}

/* score[i] = the sum of the n - f - 2 smallest ||u_i - u_j||^2 over j != i. G (n, n) = U U^T, upper
 * triangle, accumulated in double over column blocks of U. */
static int krum_scores(double *score, const float *const *rows, size_t n, size_t dim, int f) {
    size_t kb = dim < GRAM_BLOCK ? dim : GRAM_BLOCK;
    double *G = loom_calloc(n * n, sizeof *G);
    double *A = loom_alloc(n * kb * sizeof *A);
    double *t = loom_alloc(n * sizeof *t);
    if (!G || !A || !t) {
        loom_free(G), loom_free(A), loom_free(t);
        return loom_error(LOOM_ENOMEM, "out of memory for the Gram matrix of %zu updates", n);
    }
    for (size_t j0 = 0; j0 < dim; j0 += kb) {
        size_t nb = dim - j0 < kb ? dim - j0 : kb;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < nb; j++) A[i * nb + j] = rows[i][j0 + j];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (int)n, (int)nb, 1.0, A, (int)nb, 1.0, G, (int)n);
    }
    size_t keep = n - (size_t)f - 2;
    for (size_t i = 0; i < n; i++) {
        size_t c = 0;
        for (size_t j = 0; j < n; j++) {
            if (j == i) continue;
            size_t a = i < j ? i : j, b = i < j ? j : i;
            double d = G[a * n + a] + G[b * n + b] - 2 * G[a * n + b];
            t[c++] = d > 0 ? d : 0;
        }
        qsort(t, c, sizeof *t, dbl_cmp);
        double s = 0;
        for (size_t j = 0; j < keep; j++) s += t[j];
        score[i] = s;
    }
    loom_free(G), loom_free(A), loom_free(t);
    return LOOM_OK;
}

typedef struct {
    double score;
    size_t i;
} scored;

static int scored_cmp(const void *pa, const void *pb) {
    const scored *a = pa, *b = pb;
    if (a->score != b->score) return a->score < b->score ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* out = sum_i c_i u_i / sum_i c_i over the rows with c_i > 0 (parallel over coordinates). */
static void weighted_mean(double *out, const float *const *rows, const double *c, size_t n, size_t dim) {
    double W = 0;
    for (size_t i = 0; i < n; i++) W += c[i];
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
    for (size_t j = 0; j < dim; j++) {
        double s = 0;
        for (size_t i = 0; i < n; i++)
            if (c[i] != 0) s += c[i] * rows[i][j];
        out[j] = s / W;
    }
}

/* ------------------------------------------------------------------ geometric median */

/* dist[i] = ||z - u_i|| (each a sequential double sum: the same whatever the thread count). */
static void distances(double *dist, const double *z, const float *const *rows, size_t n, size_t dim) {
#pragma omp parallel for schedule(static) if (n * dim >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (size_t j = 0; j < dim; j++) {
            double d = z[j] - rows[i][j];
            s += d * d;
        }
        dist[i] = sqrt(s);
    }
}

static int geomedian(const loom_robust_config *c, double *z, const float *const *rows, const double *w, size_t n,
                     size_t dim) {
    double *dist = malloc(n * sizeof *dist), *b = malloc(n * sizeof *b);
    if (!dist || !b) {
        free(dist), free(b);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    weighted_mean(z, rows, w, n, dim);
    distances(dist, z, rows, n, dim);
    double obj = 0;
    for (size_t i = 0; i < n; i++) obj += w[i] * dist[i];
    for (int it = 0; it < c->iters; it++) {
        for (size_t i = 0; i < n; i++) b[i] = w[i] / (dist[i] > c->nu ? dist[i] : c->nu);
        weighted_mean(z, rows, b, n, dim);
        distances(dist, z, rows, n, dim);
        double o = 0;
        for (size_t i = 0; i < n; i++) o += w[i] * dist[i];
        int done = obj - o <= 1e-10 * o;
        obj = o;
        if (done) break;
    }
    free(dist), free(b);
    return LOOM_OK;
}

/* ------------------------------------------------------------------ one rule on sorted rows */

static int combine(const loom_robust_config *c, double *out, const float *const *rows, const double *w, size_t n,
                   size_t dim, int *sel) {
    for (size_t i = 0; i < n; i++) sel[i] = 1;
    switch (c->rule) {
    case LOOM_ROBUST_MEDIAN:
        return coordinatewise(out, rows, n, dim, -1);
    case LOOM_ROBUST_GEOMEDIAN:
        return geomedian(c, out, rows, w, n, dim);
    case LOOM_ROBUST_TRIMMED_MEAN:
        return coordinatewise(out, rows, n, dim, (long)floor(c->beta * (double)n));
    case LOOM_ROBUST_NORM_BOUND: {
        double *cw = malloc(n * sizeof *cw);
        if (!cw) return loom_error(LOOM_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            double s = 0;
            for (size_t j = 0; j < dim; j++) s += (double)rows[i][j] * rows[i][j];
            s = sqrt(s);
            cw[i] = w[i] * (s > c->bound ? c->bound / s : 1.0);
        }
        /* the scaled weights sum to less than W: divide by W itself, not by their sum */
        double W = 0, Wc = 0;
        for (size_t i = 0; i < n; i++) W += w[i], Wc += cw[i];
        weighted_mean(out, rows, cw, n, dim);
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
        for (size_t j = 0; j < dim; j++) out[j] *= Wc / W;
        free(cw);
        return LOOM_OK;
    }
    case LOOM_ROBUST_KRUM:
    case LOOM_ROBUST_MULTI_KRUM: {
        double *score = malloc(n * sizeof *score), *cw = calloc(n, sizeof *cw);
        scored *s = malloc(n * sizeof *s);
        int rc = score && cw && s ? krum_scores(score, rows, n, dim, c->f) : loom_error(LOOM_ENOMEM, "out of memory");
        if (rc == LOOM_OK) {
            for (size_t i = 0; i < n; i++) s[i] = (scored){score[i], i};
            qsort(s, n, sizeof *s, scored_cmp);
            size_t m = c->rule == LOOM_ROBUST_KRUM ? 1 : c->m > 0 ? (size_t)c->m : n - (size_t)c->f;
            for (size_t i = 0; i < n; i++) sel[i] = 0;
            for (size_t i = 0; i < m; i++) sel[s[i].i] = 1, cw[s[i].i] = c->rule == LOOM_ROBUST_KRUM ? 1.0 : w[s[i].i];
            weighted_mean(out, rows, cw, n, dim);
        }
        free(score), free(cw), free(s);
        return rc;
    }
    }
    return loom_error(LOOM_EINVAL, "robust aggregator: unknown rule %d", (int)c->rule);
}

int loom_robust_aggregate(const loom_robust_config *c, double *out, const float *const *updates,
                          const double *weights, size_t n, size_t dim, int *selected) {
    int rc = loom_robust_check(c, n);
    if (rc != LOOM_OK) return rc;
    if (n == 0) return loom_error(LOOM_ESTATE, "%s of no update", rule_names[c->rule]);
    if (!out || !updates || dim == 0) return loom_error(LOOM_EINVAL, "%s: no output or updates", rule_names[c->rule]);
    row_key *key = malloc(n * sizeof *key);
    const float **rows = malloc(n * sizeof *rows);
    double *w = malloc(n * sizeof *w);
    int *sel = malloc(n * sizeof *sel);
    if (!key || !rows || !w || !sel) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        double wi = weights ? weights[i] : 1.0;
        if (!(wi >= 1 && wi <= LOOM_FX_MAX_WEIGHT && wi == floor(wi))) {
            rc = loom_error(LOOM_EINVAL, "%s: weight %zu must be a whole number >= 1 (got %g)", rule_names[c->rule],
                            i, wi);
            goto done;
        }
        key[i] = (row_key){row_hash(updates[i], dim), wi, i, updates[i], dim};
    }
    qsort(key, n, sizeof *key, row_cmp);
    for (size_t i = 0; i < n; i++) rows[i] = key[i].u, w[i] = key[i].w;
    rc = combine(c, out, rows, w, n, dim, sel);
    if (rc == LOOM_OK && selected)
        for (size_t i = 0; i < n; i++) selected[key[i].idx] = sel[i];
done:
    free(key), free(rows), free(w), free(sel);
    return rc;
}

/* ------------------------------------------------------------------ the pipeline's plug */

struct loom_aggregator {
    loom_robust_config c;
    size_t dim, n, cap;
    float *buf; /* (cap, dim): the round's updates, clip factor applied */
    double *w;  /* (cap) */
};

static void rb_free(loom_aggregator *a) {
    if (!a) return;
    loom_free(a->buf);
    free(a->w);
    free(a);
}

static int rb_create_with(loom_aggregator **out, size_t dim, int with_control, const void *config) {
    *out = NULL;
    loom_robust_config c;
    if (config) c = *(const loom_robust_config *)config;
    else loom_robust_defaults(&c, LOOM_ROBUST_MEDIAN);
    int rc = loom_robust_check(&c, 0);
    if (rc != LOOM_OK) return rc;
    if (with_control)
        return loom_error(LOOM_EUNSUPPORTED, "aggregator %s does not support control variates (scaffold)",
                          rule_names[c.rule]);
    loom_aggregator *a = calloc(1, sizeof *a);
    if (!a) return loom_error(LOOM_ENOMEM, "out of memory");
    a->c = c;
    a->dim = dim;
    *out = a;
    return LOOM_OK;
}

static int rb_create(loom_aggregator **out, size_t dim, int with_control) {
    return rb_create_with(out, dim, with_control, NULL);
}

static void rb_begin(loom_aggregator *a) { a->n = 0; }

static int rb_add(loom_aggregator *a, const float *u, double scale, uint64_t w, const float *dc) {
    (void)dc;
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 8;
        float *nb = loom_alloc(cap * a->dim * sizeof *nb);
        double *nw = realloc(a->w, cap * sizeof *nw);
        if (!nb || !nw) {
            loom_free(nb);
            if (nw) a->w = nw;
            return loom_error(LOOM_ENOMEM, "out of memory holding %zu updates of %zu values", cap, a->dim);
        }
        if (a->n) memcpy(nb, a->buf, a->n * a->dim * sizeof *nb);
        loom_free(a->buf);
        a->buf = nb, a->w = nw, a->cap = cap;
    }
    float *dst = a->buf + a->n * a->dim;
    if (scale == 1.0) memcpy(dst, u, a->dim * sizeof *dst);
    else
        for (size_t i = 0; i < a->dim; i++) dst[i] = (float)((double)u[i] * scale);
    a->w[a->n++] = (double)w;
    return LOOM_OK;
}

static int rb_finish(loom_aggregator *a, double *mean, double *control_sum) {
    (void)control_sum;
    const float **rows = malloc((a->n ? a->n : 1) * sizeof *rows);
    if (!rows) return loom_error(LOOM_ENOMEM, "out of memory");
    for (size_t i = 0; i < a->n; i++) rows[i] = a->buf + i * a->dim;
    int rc = loom_robust_aggregate(&a->c, mean, rows, a->w, a->n, a->dim, NULL);
    free(rows);
    return rc;
}

const loom_aggregator_ops loom_agg_robust = {"robust",  LOOM_AGG_BUFFERED, rb_create, rb_free,
                                             rb_begin,  rb_add,            rb_finish, rb_create_with,
                                             NULL,      NULL};
