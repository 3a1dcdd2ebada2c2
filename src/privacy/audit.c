/* Privacy audits: ROC AUC, TPR at a false-positive rate, canary exposure and canary formats
 * (include/loom/audit.h states the definitions and conventions). */
#include "loom/audit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

#define FORMAT_MAX 4096

static int check_scores(const double *x, size_t n, const char *what) {
    if (n && !x) return loom_error(LOOM_EINVAL, "%s scores are NULL", what);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return loom_error(LOOM_EINVAL, "%s score %zu is not finite (%g)", what, i, x[i]);
    return LOOM_OK;
}

static int check_sets(const double *pos, size_t np, const double *neg, size_t nn) {
    if (!np) return loom_error(LOOM_EINVAL, "no member scores");
    if (!nn) return loom_error(LOOM_EINVAL, "no non-member scores");
    int rc = check_scores(pos, np, "member");
    return rc != LOOM_OK ? rc : check_scores(neg, nn, "non-member");
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* Sorted copy (descending) of x[n]; NULL when out of memory. */
static double *sorted_desc(const double *x, size_t n) {
    double *s = malloc((n ? n : 1) * sizeof *s);
    if (!s) return NULL;
    memcpy(s, x, n * sizeof *s);
    qsort(s, n, sizeof *s, cmp_desc);
    return s;
}

/* Checks both score sets and returns sorted copies of each (release both with free). */
static int sorted_sets(const double *pos, size_t np, const double *neg, size_t nn, double **p, double **q) {
    int rc = check_sets(pos, np, neg, nn);
    if (rc != LOOM_OK) return rc;
    *p = sorted_desc(pos, np);
    *q = sorted_desc(neg, nn);
    if (!*p || !*q) {
        free(*p);
        free(*q);
        return loom_error(LOOM_ENOMEM, "out of memory for %zu scores", np + nn);
    }
    return LOOM_OK;
}

int loom_audit_auc(const double *pos, size_t np, const double *neg, size_t nn, double *auc) {
    double *p, *q;
    int rc = sorted_sets(pos, np, neg, nn, &p, &q);
    if (rc != LOOM_OK) return rc;
    /* Walk both lists from the top: for each distinct value v, the members at v beat every non-member
     * below v and tie with those at v. Counted in units of one half, exactly, in 64-bit integers
     * (np * nn * 2 < 2^64 for any sizes that fit in memory). */
    unsigned long long wins2 = 0;
    size_t i = 0, j = 0;
    while (i < np) {
        double v = p[i];
        size_t ip = i, jq;
        while (i < np && p[i] == v) i++;
        while (j < nn && q[j] > v) j++;
        jq = j;
        while (jq < nn && q[jq] == v) jq++;
        unsigned long long below = nn - jq, ties = jq - j;
        wins2 += (unsigned long long)(i - ip) * (2 * below + ties);
    }
    free(p);
    free(q);
    *auc = (double)wins2 / (2.0 * (double)np * (double)nn);
    return LOOM_OK;
}

int loom_audit_tpr_at_fpr(const double *pos, size_t np, const double *neg, size_t nn, double alpha, double *tpr,
                          double *fpr, double *threshold) {
    if (!(alpha >= 0 && alpha <= 1)) return loom_error(LOOM_EINVAL, "false-positive rate %g is outside [0, 1]", alpha);
    double *p, *q;
    int rc = sorted_sets(pos, np, neg, nn, &p, &q);
    if (rc != LOOM_OK) return rc;
    /* Thresholds in decreasing order: every distinct score. TP and FP only grow as tau falls, so the
     * answer is the last threshold whose FP rate is still allowed. */
    size_t tp = 0, fp = 0, best_tp = 0, best_fp = 0, i = 0, j = 0;
    double best_tau = INFINITY;
    while (i < np || j < nn) {
        double v = i < np && (j >= nn || p[i] >= q[j]) ? p[i] : q[j];
        size_t ti = i, tj = j;
        while (ti < np && p[ti] >= v) ti++;
        while (tj < nn && q[tj] >= v) tj++;
        if ((double)tj / (double)nn > alpha) break;
        tp = ti, fp = tj, i = ti, j = tj;
        best_tp = tp, best_fp = fp, best_tau = v;
    }
    free(p);
    free(q);
    *tpr = (double)best_tp / (double)np;
    if (fpr) *fpr = (double)best_fp / (double)nn;
    if (threshold) *threshold = best_tau;
    return LOOM_OK;
}

int loom_audit_exposure(double canary_px, const double *cand_px, size_t k, double *exposure, double *rank) {
    if (!isfinite(canary_px)) return loom_error(LOOM_EINVAL, "canary log-perplexity is not finite (%g)", canary_px);
    int rc = check_scores(cand_px, k, "candidate");
    if (rc != LOOM_OK) return rc;
    size_t less = 0, ties = 0;
    for (size_t i = 0; i < k; i++) {
        less += cand_px[i] < canary_px;
        ties += cand_px[i] == canary_px;
    }
    double r = 1.0 + (double)less + 0.5 * (double)ties;
    *exposure = log2((double)k + 1.0) - log2(r);
    if (rank) *rank = r;
    return LOOM_OK;
}

int loom_audit_format_check(const char *fmt, int *digits, uint64_t *space) {
    if (!fmt) return loom_error(LOOM_EINVAL, "no canary format");
    size_t len = strnlen(fmt, FORMAT_MAX + 1);
    if (len > FORMAT_MAX) return loom_error(LOOM_EINVAL, "canary format longer than %d bytes", FORMAT_MAX);
    int d = 0;
    for (size_t i = 0; i < len; i++) {
        if (fmt[i] == '\n' || fmt[i] == '\r')
            return loom_error(LOOM_EINVAL, "canary format '%s' holds a line break (a canary is one line)", fmt);
        d += fmt[i] == '#';
    }
    if (d < 1) return loom_error(LOOM_EINVAL, "canary format '%s' has no '#' (a secret digit)", fmt);
    if (d > LOOM_AUDIT_MAX_DIGITS)
        return loom_error(LOOM_EINVAL, "canary format '%s' has %d '#' digits, at most %d", fmt, d, LOOM_AUDIT_MAX_DIGITS);
    uint64_t s = 1;
    for (int i = 0; i < d; i++) s *= 10;
    if (digits) *digits = d;
    if (space) *space = s;
    return LOOM_OK;
}

int loom_audit_format_fill(const char *fmt, uint64_t v, char *out, size_t cap) {
    int d;
    uint64_t space;
    int rc = loom_audit_format_check(fmt, &d, &space);
    if (rc != LOOM_OK) return rc;
    if (v >= space) return loom_error(LOOM_ERANGE, "candidate %llu is outside the format's %llu", (unsigned long long)v,
                                      (unsigned long long)space);
    size_t len = strlen(fmt);
    if (len + 1 > cap) return loom_error(LOOM_ERANGE, "canary of %zu bytes does not fit %zu", len, cap);
    uint64_t div = space / 10;
    for (size_t i = 0; i < len; i++) {
        if (fmt[i] == '#') {
            out[i] = (char)('0' + (v / div) % 10);
            div /= 10;
        } else {
            out[i] = fmt[i];
        }
    }
    out[len] = 0;
    return LOOM_OK;
}

int loom_audit_format_parse(const char *fmt, const char *s, uint64_t *v) {
    int rc = loom_audit_format_check(fmt, NULL, NULL);
    if (rc != LOOM_OK) return rc;
    size_t len = strlen(fmt);
    if (!s || strlen(s) != len) return loom_error(LOOM_EFORMAT, "'%s' does not match the format '%s'", s ? s : "", fmt);
    uint64_t x = 0;
    for (size_t i = 0; i < len; i++) {
        if (fmt[i] == '#') {
            if (s[i] < '0' || s[i] > '9')
                return loom_error(LOOM_EFORMAT, "'%s' does not match the format '%s' (byte %zu is not a digit)", s, fmt, i);
            x = x * 10 + (uint64_t)(s[i] - '0');
        } else if (s[i] != fmt[i]) {
            return loom_error(LOOM_EFORMAT, "'%s' does not match the format '%s' (byte %zu)", s, fmt, i);
        }
    }
    *v = x;
    return LOOM_OK;
}

/* Uniform in [0, n) from the stream: 64-bit draws below 2^64 mod n are rejected. */
static uint64_t below64(loom_rng *r, uint64_t n) {
    uint64_t reject = (0 - n) % n;
    for (;;) {
        uint64_t x = loom_rng_u64(r);
        if (x >= reject) return x % n;
    }
}

uint64_t loom_audit_candidate(uint64_t seed, uint64_t space, uint64_t j) {
    loom_rng r;
    loom_rng_init(&r, seed, loom_hash2(LOOM_STREAM_AUDIT_CANDIDATE, j));
    return space ? below64(&r, space) : 0;
}

int loom_audit_canary_draw(uint64_t seed, uint64_t space, size_t n, uint64_t *out) {
    if (space < 2 || n > space / 2)
        return loom_error(LOOM_EINVAL, "%zu distinct canaries from a space of %llu: at most half the space", n,
                          (unsigned long long)space);
    loom_rng r;
    loom_rng_init(&r, seed, LOOM_STREAM_AUDIT_CANARY);
    for (size_t i = 0; i < n; i++) {
        for (;;) {
            uint64_t v = below64(&r, space);
            size_t k = 0;
            while (k < i && out[k] != v) k++;
            if (k == i) {
                out[i] = v;
                break;
            }
        }
    }
    return LOOM_OK;
}
