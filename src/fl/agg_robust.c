/* Byzantine-robust aggregators (buffered): coordinate-wise median and trimmed mean by a pruned
 * sorting network (or selection), Krum, Multi-Krum and Bulyan from one Gram matrix, norm bounding, the
 * geometric median, centered clipping and FLTrust. The rules, their assumptions and the order
 * independence are described in include/loom/pipeline.h.
 *
 * Shapes: n = updates in the round, d = dim; U (n, d) the held updates, row-major, one row each. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/pipeline.h"

#define PAR_MIN 65536  /* coordinates below which the selection loops stay on one thread */
#define SEL_BLOCK 64   /* coordinates transposed together for the selection (n x SEL_BLOCK floats) */
#define GRAM_STRIPES 64 /* column stripes of the Gram matrix, each with its own partial sum */
#define NET_MAX 256    /* largest n sorted by the network; above it, selection and sorts */
#define NET_B 32       /* coordinates sorted together by the network (n x NET_B floats) */
#define NET_SUPER 16   /* blocks of NET_B read together from each row */

/* indexed by loom_robust_rule */
static const char *const rule_names[] = {"median",    "trimmed-mean", "krum",          "multi-krum", "norm-bound",
                                         "geomedian", "bulyan",       "centered-clip", "fltrust"};
#define N_RULES (sizeof rule_names / sizeof rule_names[0])

void loom_robust_defaults(loom_robust_config *c, loom_robust_rule rule) {
    memset(c, 0, sizeof *c);
    c->rule = rule;
    c->beta = 0.1;
    c->bound = 1.0;
    c->iters = 100;
    c->nu = 1e-6;
    c->tau = 1.0;
    c->cc_iters = 1;
}

int loom_robust_rule_parse(const char *name, loom_robust_rule *rule) {
    for (size_t i = 0; name && i < N_RULES; i++)
        if (strcmp(name, rule_names[i]) == 0) {
            *rule = (loom_robust_rule)i;
            return LOOM_OK;
        }
    return loom_error(LOOM_EINVAL,
                      "unknown robust aggregator '%s' (median, trimmed-mean, krum, multi-krum, bulyan, norm-bound, "
                      "geomedian, centered-clip, fltrust)",
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
    case LOOM_ROBUST_BULYAN:
        if (c->f < 0) return loom_error(LOOM_EINVAL, "bulyan: f must be >= 0 (got %d)", c->f);
        if (n > 0 && n < 4 * (size_t)c->f + 3)
            return loom_error(LOOM_EINVAL, "bulyan needs n >= 4f + 3 updates: f = %d needs at least %zu, got n = %zu",
                              c->f, 4 * (size_t)c->f + 3, n);
        return LOOM_OK;
    case LOOM_ROBUST_CENTERED_CLIP:
        if (!(c->tau > 0) || isinf(c->tau))
            return loom_error(LOOM_EINVAL, "centered-clip: tau must be finite and > 0 (got %g)", c->tau);
        if (c->cc_iters < 1)
            return loom_error(LOOM_EINVAL, "centered-clip: iters must be >= 1 (got %d)", c->cc_iters);
        return LOOM_OK;
    case LOOM_ROBUST_FLTRUST:
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

/* A 64-bit hash of the row's bytes: four independent multiply-xorshift lanes over 32-byte steps (so
 * that the multiplies overlap), then the tail, folded into one. */
static uint64_t row_hash(const float *u, size_t dim) {
    const unsigned char *b = (const unsigned char *)u;
    size_t nb = dim * sizeof *u, i = 0;
    uint64_t h[4] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull, 0x9e3779b97f4a7c15ull, 0x7f4a7c159e3779b9ull};
    for (; i + 32 <= nb; i += 32)
        for (int k = 0; k < 4; k++) {
            uint64_t x;
            memcpy(&x, b + i + 8 * k, 8);
            h[k] = (h[k] ^ x) * 0x100000001b3ull;
            h[k] ^= h[k] >> 29;
        }
    uint64_t r = h[0];
    for (int k = 1; k < 4; k++) r = (r ^ h[k]) * 0x9e3779b97f4a7c15ull, r ^= r >> 32;
    for (; i < nb; i++) r = (r ^ b[i]) * 0x100000001b3ull;
    return r;
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

/* ------------------------------------------------------------------ the sorting network */

/* A compare-exchange: position a gets the smaller value, b (> a) the larger. */
typedef struct {
    uint16_t a, b;
} cmpx;

static size_t pow2_at_least(size_t n) {
    size_t p = 1;
    while (p < n) p <<= 1;
    return p;
}

/* The comparators of Batcher's odd-even merge sort of P = pow2_at_least(n) values, with positions
 * n..P-1 thought of as holding +inf, pruned to those the ranks [lo, hi) of the sorted output depend
 * on. Every comparator has a < b, so a comparator with b >= n meets +inf at b (by induction the +inf
 * never leave n..P-1) and changes nothing: only those within [0, n) are kept, and no padding is needed
 * (forward pass). One whose outputs no later kept comparator or wanted rank reads is dropped (backward
 * pass). *out is allocated; returns the count, or (size_t)-1 when out of memory. */
static size_t net_build(cmpx **out, size_t n, size_t lo, size_t hi) {
    size_t P = pow2_at_least(n), lg = 0, cnt = 0;
    while (((size_t)1 << lg) < P) lg++;
    size_t cap = P / 2 * (lg * (lg + 1) / 2) + 1; /* lg (lg + 1) / 2 stages of at most P / 2 */
    cmpx *c = malloc(cap * sizeof *c);
    unsigned char *flag = calloc(n ? n : 1, 1);
    if (!c || !flag) {
        free(c), free(flag);
        return (size_t)-1;
    }
    for (size_t p = 1; p < P; p <<= 1)
        for (size_t k = p; k >= 1; k >>= 1)
            for (size_t j = k % p; j + k < n; j += 2 * k)
                for (size_t i = 0; i < k && i + j + k < n; i++)
                    if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) c[cnt++] = (cmpx){(uint16_t)(i + j), (uint16_t)(i + j + k)};
    for (size_t q = 0; q < n; q++) flag[q] = q >= lo && q < hi; /* flag = the value is needed */
    for (size_t r = cnt; r-- > 0;) {
        if (flag[c[r].a] || flag[c[r].b]) flag[c[r].a] = flag[c[r].b] = 1;
        else c[r].a = c[r].b = 0; /* dropped (no kept comparator has a == b) */
    }
    size_t w = 0;
    for (size_t r = 0; r < cnt; r++)
        if (c[r].a != c[r].b) c[w++] = c[r];
    free(flag);
    *out = c;
    return w;
}

static inline void cx(float *restrict x, float *restrict y) {
    for (size_t j = 0; j < NET_B; j++) {
        /* both stores unconditional: written as x[j] = p < q ? p : q, GCC turns the store into a
         * branch on whether any lane changes */
        float p = x[j], q = y[j];
        float lo = q < p ? q : p, hi = q < p ? p : q;
        x[j] = lo;
        y[j] = hi;
    }
}

/* t (n, NET_B): each of the NET_B columns sorted at the positions the network was pruned to. */
static void net_apply(float *t, const cmpx *c, size_t nc) {
    for (size_t r = 0; r < nc; r++) cx(t + (size_t)c[r].a * NET_B, t + (size_t)c[r].b * NET_B);
}

/* ------------------------------------------------------------------ coordinate-wise rules */

typedef enum { CW_MEDIAN, CW_TRIM, CW_BULYAN } cw_mode;

/* Bulyan's coordinate: s[0..theta) sorted; the mean of the beta values closest to the median, taken
 * outward from the middle (at equal distance the lower one), summed in ascending order. */
static double bulyan_col(const float *s, size_t theta, size_t beta) {
    size_t h = theta / 2;
    double med = theta & 1 ? (double)s[h] : 0.5 * ((double)s[h - 1] + (double)s[h]);
    ptrdiff_t l = theta & 1 ? (ptrdiff_t)h : (ptrdiff_t)h - 1, r = l + 1;
    for (size_t k = 0; k < beta; k++) {
        if (r >= (ptrdiff_t)theta || (l >= 0 && med - (double)s[l] <= (double)s[r] - med)) l--;
        else r++;
    }
    double sum = 0;
    for (ptrdiff_t i = l + 1; i < r; i++) sum += s[i];
    return sum / (double)beta;
}

/* bulyan_col on the NET_B sorted columns of t (theta, NET_B) at once, without branches: the window
 * [L, L + beta) bulyan_col ends with is the one where the value below it is farther from the median
 * than its top value and the value above it is at least as far as its bottom value, so (both
 * distances monotone in L) L = the number of L' < theta - beta with med - s[L'] > s[L' + beta] - med.
 * The window's values are then added in ascending order, as in bulyan_col. */
static void bulyan_block(double *out, const float *t, size_t theta, size_t beta, size_t nb) {
    size_t h = theta / 2;
    double med[NET_B], sum[NET_B];
    size_t L[NET_B];
    for (size_t j = 0; j < NET_B; j++) {
        med[j] = theta & 1 ? (double)t[h * NET_B + j] : 0.5 * ((double)t[(h - 1) * NET_B + j] + (double)t[h * NET_B + j]);
        L[j] = 0, sum[j] = 0;
    }
    for (size_t l = 0; l + beta < theta; l++)
        for (size_t j = 0; j < NET_B; j++)
            L[j] += med[j] - (double)t[l * NET_B + j] > (double)t[(l + beta) * NET_B + j] - med[j];
    for (size_t r = 0; r < theta; r++)
        for (size_t j = 0; j < NET_B; j++) {
            double v = sum[j] + (double)t[r * NET_B + j];
            sum[j] = r >= L[j] && r < L[j] + beta ? v : sum[j];
        }
    for (size_t j = 0; j < nb; j++) out[j] = sum[j] / (double)beta;
}

static int flt_cmp(const void *pa, const void *pb) {
    float a = *(const float *)pa, b = *(const float *)pb;
    return a < b ? -1 : a > b;
}

/* One sorted or partly selected column col[0..n) -> its value for the mode (k: trim's cut, or
 * Bulyan's beta). The fallback for n > NET_MAX; equal to the network's value. */
static double col_combine(float *col, size_t n, cw_mode mode, size_t k) {
    if (mode == CW_MEDIAN) {
        size_t h = n / 2;
        select_k(col, n, h);
        if (n & 1) return col[h];
        float lo = col[0];
        for (size_t i = 1; i < h; i++) lo = col[i] > lo ? col[i] : lo;
        return 0.5 * ((double)lo + (double)col[h]);
    }
    qsort(col, n, sizeof *col, flt_cmp);
    if (mode == CW_BULYAN) return bulyan_col(col, n, k);
    double s = 0;
    for (size_t i = k; i < n - k; i++) s += col[i];
    return s / (double)(n - 2 * k);
}

/* out[j] for every coordinate j of the n rows: the median, the trimmed mean cutting k from each end,
 * or Bulyan's mean of the k values closest to the median. Each coordinate on its own: the result does
 * not depend on the threads. */
static int coordinatewise(double *out, const float *const *rows, size_t n, size_t dim, cw_mode mode, size_t k) {
    int nt = omp_get_max_threads();
    if (dim < PAR_MIN) nt = 1;
    if (n <= NET_MAX) {
        size_t lo = mode == CW_MEDIAN ? (n - 1) / 2 : mode == CW_TRIM ? k : 0;
        size_t hi = mode == CW_MEDIAN ? n / 2 + 1 : mode == CW_TRIM ? n - k : n;
        cmpx *net = NULL;
        size_t nc = net_build(&net, n, lo, hi);
        size_t per = NET_SUPER * n * NET_B; /* per thread: NET_SUPER blocks of (n, NET_B) */
        float *scratch = loom_alloc((size_t)nt * per * sizeof *scratch);
        if (nc == (size_t)-1 || !scratch) {
            free(net), loom_free(scratch);
            return loom_error(LOOM_ENOMEM, "out of memory for the selection of %zu updates", n);
        }
        /* Each row's NET_SUPER * NET_B coordinates of a super-block are read as one contiguous run (so
         * that the hardware prefetcher follows the n streams) into NET_SUPER blocks of (n, NET_B), each
         * then sorted in the caches. */
        size_t sup = NET_SUPER * NET_B, nsup = (dim + sup - 1) / sup;
#pragma omp parallel for schedule(static) num_threads(nt)
        for (size_t q = 0; q < nsup; q++) {
            float *t0 = scratch + (size_t)omp_get_thread_num() * per;
            size_t q0 = q * sup, qn = dim - q0 < sup ? dim - q0 : sup, nblk = (qn + NET_B - 1) / NET_B;
            for (size_t i = 0; i < n; i++) {
                const float *src = rows[i] + q0;
                for (size_t b = 0; b < nblk; b++) {
                    size_t nb = qn - b * NET_B < NET_B ? qn - b * NET_B : NET_B;
                    float *dst = t0 + (b * n + i) * NET_B;
                    memcpy(dst, src + b * NET_B, nb * sizeof *dst);
                    for (size_t j = nb; j < NET_B; j++) dst[j] = 0;
                }
            }
            for (size_t b = 0; b < nblk; b++) {
                float *t = t0 + b * n * NET_B;
                size_t j0 = q0 + b * NET_B, nb = qn - b * NET_B < NET_B ? qn - b * NET_B : NET_B;
                net_apply(t, net, nc);
                if (mode == CW_MEDIAN) {
                    const float *x = t + lo * NET_B, *z = t + (hi - 1) * NET_B;
                    for (size_t j = 0; j < nb; j++)
                        out[j0 + j] = n & 1 ? (double)x[j] : 0.5 * ((double)x[j] + (double)z[j]);
                } else if (mode == CW_TRIM) {
                    double acc[NET_B] = {0};
                    for (size_t r = lo; r < hi; r++)
                        for (size_t j = 0; j < NET_B; j++) acc[j] += t[r * NET_B + j];
                    for (size_t j = 0; j < nb; j++) out[j0 + j] = acc[j] / (double)(n - 2 * k);
                } else
                    bulyan_block(out + j0, t, n, k, nb);
            }
        }
        free(net);
        loom_free(scratch);
        return LOOM_OK;
    }
    float *scratch = loom_alloc((size_t)nt * n * SEL_BLOCK * sizeof *scratch);
    if (!scratch) return loom_error(LOOM_ENOMEM, "out of memory for the selection of %zu updates", n);
    size_t nblk = (dim + SEL_BLOCK - 1) / SEL_BLOCK;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t b = 0; b < nblk; b++) {
        float *t = scratch + (size_t)omp_get_thread_num() * n * SEL_BLOCK;
        size_t j0 = b * SEL_BLOCK, nb = dim - j0 < SEL_BLOCK ? dim - j0 : SEL_BLOCK;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < nb; j++) t[j * n + i] = rows[i][j0 + j];
        for (size_t j = 0; j < nb; j++) out[j0 + j] = col_combine(t + j * n, n, mode, k);
    }
    loom_free(scratch);
    return LOOM_OK;
}

/* ------------------------------------------------------------------ Krum and Bulyan */

static int dbl_cmp(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? -1 : a > b;
}

/* x y + z: one fused multiply-add where the build targets FMA (so the result of a build is the same
 * on every run and thread count, though an FMA build and one without differ in the last bits of the
 * Gram matrix); the separate product and sum elsewhere. */
#ifdef __FMA__
#define MADD(x, y, z) fma(x, y, z)
#else
#define MADD(x, y, z) ((x) * (y) + (z))
#endif

/* s[16] += the 16 dot products of rows a0..a3 with b0..b3 over nb doubles (nb a multiple of 8), each
 * summed in 8 lanes (column j into lane j mod 8) and the lanes then in order: a fixed order, and a
 * loop the compiler vectorizes without reassociating anything. */
static void tile44(double *restrict s16, const double *a0, const double *a1, const double *a2, const double *a3,
                   const double *b0, const double *b1, const double *b2, const double *b3, size_t nb) {
    double s[16][8];
    for (int i = 0; i < 16; i++)
        for (int l = 0; l < 8; l++) s[i][l] = 0;
    for (size_t j = 0; j < nb; j += 8)
        for (int l = 0; l < 8; l++) {
            double x0 = a0[j + l], x1 = a1[j + l], x2 = a2[j + l], x3 = a3[j + l];
            double y0 = b0[j + l], y1 = b1[j + l], y2 = b2[j + l], y3 = b3[j + l];
            s[0][l] = MADD(x0, y0, s[0][l]), s[1][l] = MADD(x0, y1, s[1][l]);
            s[2][l] = MADD(x0, y2, s[2][l]), s[3][l] = MADD(x0, y3, s[3][l]);
            s[4][l] = MADD(x1, y0, s[4][l]), s[5][l] = MADD(x1, y1, s[5][l]);
            s[6][l] = MADD(x1, y2, s[6][l]), s[7][l] = MADD(x1, y3, s[7][l]);
            s[8][l] = MADD(x2, y0, s[8][l]), s[9][l] = MADD(x2, y1, s[9][l]);
            s[10][l] = MADD(x2, y2, s[10][l]), s[11][l] = MADD(x2, y3, s[11][l]);
            s[12][l] = MADD(x3, y0, s[12][l]), s[13][l] = MADD(x3, y1, s[13][l]);
            s[14][l] = MADD(x3, y2, s[14][l]), s[15][l] = MADD(x3, y3, s[15][l]);
        }
    for (int i = 0; i < 16; i++)
        s16[i] += ((s[i][0] + s[i][1]) + (s[i][2] + s[i][3])) + ((s[i][4] + s[i][5]) + (s[i][6] + s[i][7]));
}

/* D (n, n) = the squared distances ||u_i - u_j||^2 (>= 0, D_ii = 0) from the Gram matrix G = U U^T,
 * ||a - b||^2 = G_aa + G_bb - 2 G_ab, in double. The columns are cut into GRAM_STRIPES fixed stripes
 * (whatever the number of threads); a stripe converts chunks of its columns to double (n_pad x ch, in
 * the caches) and adds 4 x 4 tiles of dot products into its own G; the stripes' Gs are then added in
 * stripe order. Every sum has a fixed order, so D does not depend on the threads. A hand-written
 * kernel rather than BLAS dsyrk: OpenBLAS may fall back to old kernels on an unrecognised CPU, and the
 * Gram of n ~ 100 rows is a thin product BLAS does not block well. */
static int sq_distances(double *D, const float *const *rows, size_t n, size_t dim) {
    size_t np = (n + 3) / 4 * 4, nt4 = np / 4, npairs = nt4 * (nt4 + 1) / 2;
    size_t ns = (size_t)1 << 24 >= np * np * GRAM_STRIPES ? GRAM_STRIPES : ((size_t)1 << 24) / (np * np);
    if (ns < 1) ns = 1;
    if (ns > dim / 8 + 1) ns = dim / 8 + 1;
    size_t ch = 32768 / np < 256 ? 256 : 32768 / np / 8 * 8; /* chunk columns: about 256 KB of doubles */
    int nt = omp_get_max_threads();
    if (n * dim < PAR_MIN) nt = 1;
    double *Gs = loom_calloc(ns * np * np, sizeof *Gs);
    double *A = loom_alloc((size_t)nt * np * ch * sizeof *A);
    if (!Gs || !A) {
        loom_free(Gs), loom_free(A);
        return loom_error(LOOM_ENOMEM, "out of memory for the Gram matrix of %zu updates", n);
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (size_t st = 0; st < ns; st++) {
        double *G = Gs + st * np * np, *a = A + (size_t)omp_get_thread_num() * np * ch;
        size_t c0 = dim * st / ns, c1 = dim * (st + 1) / ns;
        for (size_t j0 = c0; j0 < c1; j0 += ch) {
            size_t nb = c1 - j0 < ch ? c1 - j0 : ch, nb8 = (nb + 7) / 8 * 8;
            for (size_t i = 0; i < np; i++)
                for (size_t j = 0; j < nb8; j++) a[i * ch + j] = i < n && j < nb ? (double)rows[i][j0 + j] : 0.0;
            for (size_t pr = 0, ta = 0, tb = 0; pr < npairs; pr++) {
                const double *x = a + 4 * ta * ch, *y = a + 4 * tb * ch;
                double s16[16] = {0};
                tile44(s16, x, x + ch, x + 2 * ch, x + 3 * ch, y, y + ch, y + 2 * ch, y + 3 * ch, nb8);
                for (int p = 0; p < 4; p++)
                    for (int q = 0; q < 4; q++) G[(4 * ta + p) * np + 4 * tb + q] += s16[4 * p + q];
                if (++tb == nt4) tb = ++ta;
            }
        }
    }
    double *G = Gs; /* the sum of the stripes, in order, into the first */
    for (size_t st = 1; st < ns; st++)
        for (size_t i = 0; i < np * np; i++) G[i] += Gs[st * np * np + i];
    for (size_t a = 0; a < n; a++)
        for (size_t b = a; b < n; b++) {
            double d = a == b ? 0 : G[a * np + a] + G[b * np + b] - 2 * G[a * np + b];
            D[a * n + b] = D[b * n + a] = d > 0 ? d : 0;
        }
    loom_free(Gs), loom_free(A);
    return LOOM_OK;
}

/* The Krum score of i over the rows with active[j] != 0: the sum of the `keep` smallest D_ij, j != i,
 * in ascending order (t: n doubles of scratch). */
static double krum_score(const double *D, size_t n, size_t i, const unsigned char *active, size_t keep, double *t) {
    size_t c = 0;
    for (size_t j = 0; j < n; j++)
        if (j != i && active[j]) t[c++] = D[i * n + j];
    qsort(t, c, sizeof *t, dbl_cmp);
    double s = 0;
    for (size_t j = 0; j < keep && j < c; j++) s += t[j];
    return s;
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

/* out = sum_i c_i u_i / denom over the rows with c_i != 0, each coordinate's sum in the order of i
 * (parallel over blocks of coordinates, the rows' loop outside so that the coordinates vectorize). */
static void linear_comb(double *out, const float *const *rows, const double *c, size_t n, size_t dim, double denom) {
    enum { B = 1024 };
    size_t nblk = (dim + B - 1) / B;
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
    for (size_t b = 0; b < nblk; b++) {
        size_t j0 = b * B, nb = dim - j0 < B ? dim - j0 : B;
        double s[B];
        for (size_t j = 0; j < nb; j++) s[j] = 0;
        for (size_t i = 0; i < n; i++) {
            if (c[i] == 0) continue;
            const float *r = rows[i] + j0;
            double ci = c[i];
            for (size_t j = 0; j < nb; j++) s[j] += ci * r[j];
        }
        for (size_t j = 0; j < nb; j++) out[j0 + j] = s[j] / denom;
    }
}

/* out = sum_i c_i u_i / sum_i c_i. */
static void weighted_mean(double *out, const float *const *rows, const double *c, size_t n, size_t dim) {
    double W = 0;
    for (size_t i = 0; i < n; i++) W += c[i];
    linear_comb(out, rows, c, n, dim, W);
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

/* ------------------------------------------------------------------ Bulyan, centered clipping, FLTrust */

static int bulyan(const loom_robust_config *c, double *out, const float *const *rows, size_t n, size_t dim,
                  int *sel) {
    size_t f = (size_t)c->f, theta = n - 2 * f;
    double *D = loom_alloc(n * n * sizeof *D), *t = malloc(n * sizeof *t);
    unsigned char *active = malloc(n);
    const float **chosen = malloc(theta * sizeof *chosen);
    int rc = D && t && active && chosen ? sq_distances(D, rows, n, dim) : loom_error(LOOM_ENOMEM, "out of memory");
    if (rc == LOOM_OK) {
        memset(active, 1, n);
        for (size_t i = 0; i < n; i++) sel[i] = 0;
        for (size_t s = 0; s < theta; s++) {
            size_t left = n - s, keep = left > f + 2 ? left - f - 2 : 0, best = n;
            double bs = 0;
            for (size_t i = 0; i < n; i++) {
                if (!active[i]) continue;
                double sc = krum_score(D, n, i, active, keep, t);
                if (best == n || sc < bs) best = i, bs = sc; /* ties: the first in the sorted order */
            }
            active[best] = 0, sel[best] = 1;
            chosen[s] = rows[best];
        }
        rc = coordinatewise(out, chosen, theta, dim, CW_BULYAN, theta - 2 * f);
    }
    loom_free(D), free(t), free(active), free(chosen);
    return rc;
}

static int centered_clip(const loom_robust_config *c, double *v, const float *const *rows, size_t n, size_t dim) {
    double *dist = malloc(n * sizeof *dist), *cl = malloc(n * sizeof *cl);
    if (!dist || !cl) {
        free(dist), free(cl);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    if (c->center) memcpy(v, c->center, dim * sizeof *v);
    else memset(v, 0, dim * sizeof *v);
    for (int it = 0; it < c->cc_iters; it++) {
        distances(dist, v, rows, n, dim);
        for (size_t i = 0; i < n; i++) cl[i] = dist[i] > c->tau ? c->tau / dist[i] : 1.0;
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
        for (size_t j = 0; j < dim; j++) {
            double s = 0;
            for (size_t i = 0; i < n; i++) s += cl[i] * ((double)rows[i][j] - v[j]);
            v[j] += s / (double)n;
        }
    }
    free(dist), free(cl);
    return LOOM_OK;
}

static int fltrust(const loom_robust_config *c, double *out, const float *const *rows, size_t n, size_t dim) {
    const float *g = c->server_update;
    if (!g)
        return loom_error(LOOM_EINVAL, "fltrust: the server update is missing (the server's reference update on its "
                                       "root data must be given each round)");
    double *dot = malloc(n * sizeof *dot), *nrm = malloc(n * sizeof *nrm);
    if (!dot || !nrm) {
        free(dot), free(nrm);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    double g2 = 0;
    for (size_t j = 0; j < dim; j++) g2 += (double)g[j] * g[j];
#pragma omp parallel for schedule(static) if (n * dim >= PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        double d = 0, s = 0;
        for (size_t j = 0; j < dim; j++) d += (double)rows[i][j] * g[j], s += (double)rows[i][j] * rows[i][j];
        dot[i] = d, nrm[i] = sqrt(s);
    }
    double g0 = sqrt(g2), ts_sum = 0;
    for (size_t i = 0; i < n; i++) { /* dot[i] becomes TS_i ||g0|| / ||u_i||, the coefficient of u_i */
        double ts = g0 > 0 && nrm[i] > 0 ? dot[i] / (nrm[i] * g0) : 0;
        ts = ts > 0 ? ts : 0;
        ts_sum += ts;
        dot[i] = ts > 0 ? ts * g0 / nrm[i] : 0;
    }
    if (ts_sum > 0) linear_comb(out, rows, dot, n, dim, ts_sum);
    else memset(out, 0, dim * sizeof *out);
    free(dot), free(nrm);
    return LOOM_OK;
}

/* ------------------------------------------------------------------ one rule on sorted rows */

static int combine(const loom_robust_config *c, double *out, const float *const *rows, const double *w, size_t n,
                   size_t dim, int *sel) {
    for (size_t i = 0; i < n; i++) sel[i] = 1;
    switch (c->rule) {
    case LOOM_ROBUST_MEDIAN:
        return coordinatewise(out, rows, n, dim, CW_MEDIAN, 0);
    case LOOM_ROBUST_GEOMEDIAN:
        return geomedian(c, out, rows, w, n, dim);
    case LOOM_ROBUST_TRIMMED_MEAN:
        return coordinatewise(out, rows, n, dim, CW_TRIM, (size_t)floor(c->beta * (double)n));
    case LOOM_ROBUST_BULYAN:
        return bulyan(c, out, rows, n, dim, sel);
    case LOOM_ROBUST_CENTERED_CLIP:
        return centered_clip(c, out, rows, n, dim);
    case LOOM_ROBUST_FLTRUST:
        return fltrust(c, out, rows, n, dim);
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
        double *cw = calloc(n, sizeof *cw), *D = loom_alloc(n * n * sizeof *D);
        double *t = malloc(n * sizeof *t);
        unsigned char *active = malloc(n);
        scored *s = malloc(n * sizeof *s);
        int rc = cw && D && t && active && s ? sq_distances(D, rows, n, dim) : loom_error(LOOM_ENOMEM, "out of memory");
        if (rc == LOOM_OK) {
            memset(active, 1, n);
            for (size_t i = 0; i < n; i++) s[i] = (scored){krum_score(D, n, i, active, n - (size_t)c->f - 2, t), i};
            qsort(s, n, sizeof *s, scored_cmp);
            size_t m = c->rule == LOOM_ROBUST_KRUM ? 1 : c->m > 0 ? (size_t)c->m : n - (size_t)c->f;
            for (size_t i = 0; i < n; i++) sel[i] = 0;
            for (size_t i = 0; i < m; i++) sel[s[i].i] = 1, cw[s[i].i] = c->rule == LOOM_ROBUST_KRUM ? 1.0 : w[s[i].i];
            weighted_mean(out, rows, cw, n, dim);
        }
        loom_free(D), free(t), free(active);
        free(cw), free(s);
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
        key[i] = (row_key){0, wi, i, updates[i], dim};
    }
#pragma omp parallel for schedule(dynamic, 1) if (n * dim >= PAR_MIN)
    for (size_t i = 0; i < n; i++) key[i].hash = row_hash(updates[i], dim);
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
    float *buf;     /* (cap, dim): the round's updates, clip factor applied */
    double *w;      /* (cap) */
    double *center; /* centered-clip: (dim) the previous round's aggregate, zero at first */
    float *ref;     /* fltrust: (dim) the round's reference update, when has_ref */
    int has_ref;
};

static void rb_free(loom_aggregator *a) {
    if (!a) return;
    loom_free(a->buf);
    free(a->w);
    loom_free(a->center);
    loom_free(a->ref);
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
    a->c.center = NULL, a->c.server_update = NULL; /* the plug keeps its own */
    a->dim = dim;
    if (c.rule == LOOM_ROBUST_CENTERED_CLIP && !(a->center = loom_calloc(dim ? dim : 1, sizeof *a->center))) {
        free(a);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    *out = a;
    return LOOM_OK;
}

static int rb_create(loom_aggregator **out, size_t dim, int with_control) {
    return rb_create_with(out, dim, with_control, NULL);
}

static void rb_begin(loom_aggregator *a) { a->n = 0, a->has_ref = 0; }

static int rb_reference(loom_aggregator *a, const float *ref) {
    if (a->c.rule != LOOM_ROBUST_FLTRUST)
        return loom_error(LOOM_EUNSUPPORTED, "robust aggregator %s takes no reference update (fltrust does)",
                          rule_names[a->c.rule]);
    if (!a->ref && !(a->ref = loom_alloc(a->dim * sizeof *a->ref)))
        return loom_error(LOOM_ENOMEM, "out of memory for the reference update");
    memcpy(a->ref, ref, a->dim * sizeof *a->ref);
    a->has_ref = 1;
    return LOOM_OK;
}

static int rb_wants_reference(const loom_aggregator *a) { return a->c.rule == LOOM_ROBUST_FLTRUST; }

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
    loom_robust_config c = a->c;
    c.center = a->center;
    c.server_update = a->has_ref ? a->ref : NULL;
    int rc = loom_robust_aggregate(&c, mean, rows, a->w, a->n, a->dim, NULL);
    if (rc == LOOM_OK && a->center) memcpy(a->center, mean, a->dim * sizeof *mean);
    free(rows);
    return rc;
}

const loom_aggregator_ops loom_agg_robust = {"robust",  LOOM_AGG_BUFFERED, rb_create, rb_free,
                                             rb_begin,  rb_add,            rb_finish, rb_create_with,
                                             rb_reference, rb_wants_reference};
