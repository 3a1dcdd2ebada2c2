/* Minimal test harness: each tests/test_*.c is one program registered with CTest.
 * CHECK records a failure and goes on; the program ends with "N passed, M failed" and exits 1 on any
 * failure. Data paths come from $LOOM_SHARED (set by CTest) or ../shared. */
#ifndef LOOM_TEST_H
#define LOOM_TEST_H
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int test_passed, test_failed;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (cond) {                                                              \
            test_passed++;                                                       \
        } else {                                                                 \
            test_failed++;                                                       \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, "\n");                                               \
        }                                                                        \
    } while (0)

#define CHECK_OK(expr)                                                                        \
    do {                                                                                      \
        int rc_ = (expr);                                                                     \
        CHECK(rc_ == 0, "%s returned %d: %s", #expr, rc_, loom_errmsg());                     \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                 \
    do {                                                                                      \
        double a_ = (a), b_ = (b);                                                            \
        CHECK(fabs(a_ - b_) <= (tol), "%s = %.9g, %s = %.9g, |d| = %.3g > %.3g", #a, a_, #b, b_, \
              fabs(a_ - b_), (double)(tol));                                                  \
    } while (0)

static inline const char *test_shared(void) {
    const char *s = getenv("LOOM_SHARED");
    return s && *s ? s : "../shared";
}

/* Writes "<shared>/<rel>" into buf. */
static inline const char *test_path(char *buf, size_t n, const char *rel) {
    snprintf(buf, n, "%s/%s", test_shared(), rel);
    return buf;
}

/* ---- gradient checks against central differences ----
 * test_grad_check compares the analytic gradient g[off, off+n) of one tensor with central differences
 * of loss(x) along ndir unit directions that live in that tensor only:
 *  - direction 0 is the gradient's own direction, where the derivative must equal |g|: a scaled,
 *    sign-flipped, misplaced or partly missing gradient shows up as a relative error of order one;
 *  - directions 1.. are random (a fixed seed); each error is measured against |g| / sqrt(n), the size
 *    of a typical directional derivative, so that a lucky near-zero product cannot hide an error.
 * Each difference is Richardson-extrapolated from steps h and 2h (error O(h^4)) and computed in double
 * from the loss the callback returns. Returns the worst of the two relative errors (direction 0 in
 * *err_grad, the random ones in *err_rand, either may be NULL); x is restored on return. */
typedef double (*test_loss_fn)(void *ctx, const float *x);

static inline double test_normal(uint64_t *s) {
    /* splitmix64 + Box-Muller: independent of the library's generators */
    double u[2];
    for (int i = 0; i < 2; i++) {
        uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        u[i] = ((double)(z >> 11) + 0.5) / 9007199254740992.0;
    }
    return sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

static inline double test_dir_deriv(test_loss_fn f, void *ctx, float *x, const float *x0, size_t off, size_t n,
                                    const double *d, double h) {
    double l[4];
    const double st[4] = {h, -h, 2 * h, -2 * h};
    for (int k = 0; k < 4; k++) {
        for (size_t j = 0; j < n; j++) x[off + j] = (float)(x0[j] + st[k] * d[j]);
        l[k] = f(ctx, x);
    }
    for (size_t j = 0; j < n; j++) x[off + j] = x0[j];
    double f1 = (l[0] - l[1]) / (2 * h), f2 = (l[2] - l[3]) / (4 * h);
    return (4 * f1 - f2) / 3;
}

static inline double test_grad_check(test_loss_fn f, void *ctx, float *x, size_t off, size_t n, const float *g,
                                      int ndir, uint64_t seed, double h, double *err_grad, double *err_rand) {
    float *x0 = (float *)malloc((n ? n : 1) * sizeof(float));
    double *d = (double *)malloc((n ? n : 1) * sizeof(double));
    memcpy(x0, x + off, n * sizeof(float));
    double gn = 0;
    for (size_t j = 0; j < n; j++) gn += (double)g[off + j] * g[off + j];
    gn = sqrt(gn);
    double e0 = 0, er = 0;
    uint64_t s = seed * 0x2545f4914f6cdd1dull + off;
    for (int k = 0; k < ndir; k++) {
        double nrm = 0, dot = 0;
        for (size_t j = 0; j < n; j++) {
            d[j] = k == 0 ? g[off + j] : test_normal(&s);
            nrm += d[j] * d[j];
        }
        if (nrm == 0) { /* zero gradient: any random direction must then show a zero derivative */
            for (size_t j = 0; j < n; j++) d[j] = test_normal(&s), nrm += d[j] * d[j];
        }
        nrm = sqrt(nrm);
        for (size_t j = 0; j < n; j++) d[j] /= nrm, dot += d[j] * g[off + j];
        double fd = test_dir_deriv(f, ctx, x, x0, off, n, d, h);
        if (k == 0)
            e0 = fabs(fd - dot) / (gn > 0 ? gn : 1);
        else
            er = fmax(er, fabs(fd - dot) / (gn > 0 ? gn / sqrt((double)n) : 1));
    }
    free(x0);
    free(d);
    if (err_grad) *err_grad = e0;
    if (err_rand) *err_rand = er;
    return fmax(e0, er);
}

/* Element by element (for very small models): the worst |fd_j - g_j| over the tensor relative to its
 * largest |g_j|; *worst gets the element's index. A zero gradient tensor is measured absolutely. */
static inline double test_grad_check_elems(test_loss_fn f, void *ctx, float *x, size_t off, size_t n, const float *g,
                                           double h, size_t *worst) {
    double gmax = 0, err = 0;
    const double one = 1;
    for (size_t j = 0; j < n; j++) gmax = fmax(gmax, fabs(g[off + j]));
    if (worst) *worst = 0;
    for (size_t j = 0; j < n; j++) {
        float x0 = x[off + j];
        double e = fabs(test_dir_deriv(f, ctx, x, &x0, off + j, 1, &one, h) - g[off + j]) / (gmax > 0 ? gmax : 1);
        if (e > err) {
            err = e;
            if (worst) *worst = j;
        }
    }
    return err;
}

/* Scratch space: a fresh directory /tmp/loom_test_XXXXXX (written into dir[n]); test_rmtree removes
 * it with everything in it. Tests write nothing anywhere else. */
static inline const char *test_tmpdir(char *dir, size_t n) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, n, "%s/loom_test_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(2);
    }
    return dir;
}

static inline int test_rmtree_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static inline int test_rmtree(const char *dir) { return nftw(dir, test_rmtree_one, 16, FTW_DEPTH | FTW_PHYS); }

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

#endif
