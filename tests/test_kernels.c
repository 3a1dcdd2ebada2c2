/* Every kernel of kernels.h (and the low-precision matmuls of quant.h) against a naive reference in
 * double precision written here from the formulas, on odd sizes (1, 7, 33, 257, and a tall head) and
 * with 1, 2 and 3 threads.
 *
 * Tolerances. u = 2^-24 is float's unit roundoff. A float sum of K terms, in any order and with or
 * without FMA, is within gamma_K = K u / (1 - K u) of the exact value relative to the sum of the
 * terms' absolute values (Higham, Accuracy and Stability of Numerical Algorithms, 3.1); so reductions
 * (matmuls, column sums, norms' statistics) are checked as |got - ref| <= (K + k) u * sum|terms|, with
 * k a few more roundings for the ops around the sum. Element-wise kernels built on fast_expf (relative
 * error ~1e-7) are checked against libm in double with a bound of a few times that on the output's
 * scale. Each bound is stated where it is used. A broken kernel (a swapped index, a missing term, a
 * halved value) misses these bounds by orders of magnitude.
 *
 * Kernels that do not call BLAS promise bitwise identical results for any thread count: they are also
 * compared bit for bit between 1, 2 and 3 threads. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/half.h"
#include "loom/kernels.h"
#include "loom/quant.h"
#include "test.h"

#define U (1.0 / 16777216.0) /* 2^-24 */
static const int threads[] = {1, 2, 3};
#define NTHREADS 3

static float *fvec(size_t n, uint64_t seed, float scale, float offset) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    loom_rng r;
    loom_rng_init(&r, seed, 1);
    for (size_t i = 0; i < n; i++) a[i] = offset + scale * (float)(2.0 * loom_rng_uniform(&r) - 1.0);
    return a;
}
static double *dvec(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

/* |got[i] - ref[i]| <= bound[i] for all i (bound NULL: tol * (1 + |ref|)). Reports the first miss. */
static int close_to(const char *what, const float *got, const double *ref, const double *bound, double tol, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double b = bound ? bound[i] : tol * (1.0 + fabs(ref[i]));
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= b)) {
            CHECK(0, "%s: element %zu is %.9g, reference %.9g (|d| %.3g > bound %.3g)", what, i, got[i], ref[i], e, b);
            return 0;
        }
    }
    CHECK(1, "%s", what);
    return 1;
}

static void same_bits(const char *what, const float *a, const float *b, size_t n, int t) {
    CHECK(memcmp(a, b, n * sizeof *a) == 0, "%s: %d threads give other bits than 1 thread", what, t);
}

/* ---------------------------------------------------------------- gemv (decoding) */

/* loom_gemv and loom_gemv_t against a double-precision sum, with the error bound of a float sum of C
 * products: each output within C * 2^-24 * sum_c |w x| (+ tiny), and the same bits on 1, 2, 3 threads. */
static void test_gemv(int OC, int C, int transposed) {
    float *W = fvec((size_t)OC * C, 100 + (uint64_t)OC, 1.0f, 0.0f), *x = fvec((size_t)C, 200 + (uint64_t)C, 1.0f, 0.5f);
    float *y = malloc((size_t)OC * sizeof *y), *y1 = malloc((size_t)OC * sizeof *y1);
    double *ref = dvec((size_t)OC), *bound = dvec((size_t)OC);
    for (int o = 0; o < OC; o++) {
        double s = 0, a = 0;
        for (int c = 0; c < C; c++) {
            double w = transposed ? W[(size_t)c * OC + o] : W[(size_t)o * C + c];
            s += w * x[c];
            a += fabs(w * x[c]);
        }
        ref[o] = s;
        bound[o] = (double)C * U * a + 1e-30;
    }
    char what[96];
    for (int t = 0; t < NTHREADS; t++) {
        loom_set_threads(threads[t]);
        if (transposed) loom_gemv_t(y, W, x, C, OC);
        else loom_gemv(y, W, x, OC, C);
        if (t == 0) {
            snprintf(what, sizeof what, "gemv%s %d x %d", transposed ? "_t" : "", OC, C);
            close_to(what, y, ref, bound, 0, (size_t)OC);
            memcpy(y1, y, (size_t)OC * sizeof *y);
        } else same_bits(what, y, y1, (size_t)OC, threads[t]);
    }
    loom_set_threads(1);
    free(W), free(x), free(y), free(y1), free(ref), free(bound);
}

/* ---------------------------------------------------------------- matmul */

static double wat(const float *w, int layout, int C, int OC, int o, int c) {
    return layout == LOOM_W_LINEAR ? w[(size_t)o * C + c] : w[(size_t)c * OC + o];
}

static void test_matmul(int N, int C, int OC, int layout, int with_bias) {
    char what[160];
    const int ldi = C + 3, ldo = OC + 5;
    float *inp = fvec((size_t)N * ldi, 1, 1.0f, 0), *w = fvec((size_t)C * OC, 2, 0.5f, 0), *bias = fvec(OC, 3, 1.0f, 0);
    float *dout = fvec((size_t)N * ldo, 4, 1.0f, 0);
    float *out = malloc((size_t)N * ldo * sizeof *out), *dinp = malloc((size_t)N * ldi * sizeof *dinp);
    float *dw = malloc((size_t)C * OC * sizeof *dw), *db = malloc(OC * sizeof *db);
    float *dinp0 = fvec((size_t)N * ldi, 5, 1.0f, 0), *dw0 = fvec((size_t)C * OC, 6, 1.0f, 0), *db0 = fvec(OC, 7, 1.0f, 0);
    double *ref = dvec((size_t)N * ldo), *bnd = dvec((size_t)N * ldo);
    double *rdi = dvec((size_t)N * ldi), *bdi = dvec((size_t)N * ldi);
    double *rdw = dvec((size_t)C * OC), *bdw = dvec((size_t)C * OC), *rdb = dvec(OC), *bdb = dvec(OC);
    const float *b = with_bias ? bias : NULL;
    /* out = inp W + b: C products and the bias, gamma_(C+2) of sum|x w| + |b| */
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0, a = b ? fabs(b[o]) : 0;
            for (int c = 0; c < C; c++) {
                double p = inp[(size_t)n * ldi + c] * wat(w, layout, C, OC, o, c);
                s += p;
                a += fabs(p);
            }
            ref[(size_t)n * ldo + o] = s;
            bnd[(size_t)n * ldo + o] = (C + 2) * U * a + 1e-30;
        }
    /* dinp = beta dinp0 + dout W^T (OC products), dW = dW0 + inp^T dout (N products), db = db0 + colsum */
    for (int beta = 0; beta <= 1; beta++) {
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++) {
                double s = beta ? dinp0[(size_t)n * ldi + c] : 0, a = fabs(s);
                for (int o = 0; o < OC; o++) {
                    double p = dout[(size_t)n * ldo + o] * wat(w, layout, C, OC, o, c);
                    s += p;
                    a += fabs(p);
                }
                rdi[(size_t)n * ldi + c] = s;
                bdi[(size_t)n * ldi + c] = (OC + 2) * U * a + 1e-30;
            }
        for (int o = 0; o < OC; o++) {
            double s = db0[o], a = fabs(s);
            for (int n = 0; n < N; n++) {
                s += dout[(size_t)n * ldo + o];
                a += fabs(dout[(size_t)n * ldo + o]);
            }
            rdb[o] = s;
            bdb[o] = (N + 2) * U * a;
            for (int c = 0; c < C; c++) {
                size_t k = layout == LOOM_W_LINEAR ? (size_t)o * C + c : (size_t)c * OC + o;
                double s2 = dw0[k], a2 = fabs(s2);
                for (int n = 0; n < N; n++) {
                    double p = (double)inp[(size_t)n * ldi + c] * dout[(size_t)n * ldo + o];
                    s2 += p;
                    a2 += fabs(p);
                }
                rdw[k] = s2;
                bdw[k] = (N + 2) * U * a2;
            }
        }
        for (int ti = 0; ti < NTHREADS; ti++) {
            loom_set_threads(threads[ti]);
            snprintf(what, sizeof what, "matmul %s N=%d C=%d OC=%d bias=%d beta=%d threads=%d",
                     layout == LOOM_W_LINEAR ? "linear" : "conv1d", N, C, OC, with_bias, beta, threads[ti]);
            if (!beta) {
                for (size_t i = 0; i < (size_t)N * ldo; i++) out[i] = 777.0f;
                loom_matmul_forward(out, ldo, inp, ldi, w, layout, b, N, C, OC);
                int pad = 1;
                for (int n = 0; n < N; n++)
                    for (int o = OC; o < ldo; o++) pad &= out[(size_t)n * ldo + o] == 777.0f;
                CHECK(pad, "%s: forward wrote past OC", what);
                /* compare the N x OC block (strided) */
                for (int n = 0; n < N; n++) {
                    ref[(size_t)n * ldo + OC] = 777.0; /* first padding column must be untouched too */
                    bnd[(size_t)n * ldo + OC] = 0;
                }
                char w2[200];
                snprintf(w2, sizeof w2, "%s forward", what);
                double *r2 = ref, *b2 = bnd;
                /* rows are contiguous in ldo: check every element including the checked padding */
                for (int n = 0; n < N; n++)
                    for (int o = OC + 1; o < ldo; o++) {
                        r2[(size_t)n * ldo + o] = 777.0;
                        b2[(size_t)n * ldo + o] = 0;
                    }
                close_to(w2, out, ref, bnd, 0, (size_t)N * ldo);
            }
            memcpy(dinp, dinp0, (size_t)N * ldi * sizeof *dinp);
            memcpy(dw, dw0, (size_t)C * OC * sizeof *dw);
            memcpy(db, db0, OC * sizeof *db);
            loom_matmul_backward(dinp, ldi, (float)beta, dw, with_bias ? db : NULL, dout, ldo, inp, w, layout, N, C, OC);
            char w2[200];
            /* padding columns of dinp keep dinp0 */
            for (int n = 0; n < N; n++)
                for (int c = C; c < ldi; c++) {
                    rdi[(size_t)n * ldi + c] = dinp0[(size_t)n * ldi + c];
                    bdi[(size_t)n * ldi + c] = 0;
                }
            snprintf(w2, sizeof w2, "%s dinp", what);
            close_to(w2, dinp, rdi, bdi, 0, (size_t)N * ldi);
            snprintf(w2, sizeof w2, "%s dW", what);
            close_to(w2, dw, rdw, bdw, 0, (size_t)C * OC);
            if (with_bias) {
                snprintf(w2, sizeof w2, "%s dbias", what);
                close_to(w2, db, rdb, bdb, 0, OC);
            }
        }
    }
    free(inp), free(w), free(bias), free(dout), free(out), free(dinp), free(dw), free(db);
    free(dinp0), free(dw0), free(db0), free(ref), free(bnd), free(rdi), free(bdi), free(rdw), free(bdw), free(rdb),
        free(bdb);
}

/* ---------------------------------------------------------------- column sum */

static void test_colsum(int N, int C) {
    const int ld = C + 2;
    float *x = fvec((size_t)N * ld, 11, 1.0f, 0), *o0 = fvec(C, 12, 1.0f, 0), *o = malloc(C * sizeof *o);
    float *first = malloc(C * sizeof *first);
    double *ref = dvec(C), *bnd = dvec(C);
    /* out += sum over N rows: gamma_(N+1) of sum |x| + |out0| */
    for (int c = 0; c < C; c++) {
        double s = o0[c], a = fabs(s);
        for (int n = 0; n < N; n++) {
            s += x[(size_t)n * ld + c];
            a += fabs(x[(size_t)n * ld + c]);
        }
        ref[c] = s;
        bnd[c] = (N + 2) * U * a;
    }
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        memcpy(o, o0, C * sizeof *o);
        loom_colsum_acc(o, x, ld, N, C);
        char what[96];
        snprintf(what, sizeof what, "colsum N=%d C=%d threads=%d", N, C, threads[ti]);
        close_to(what, o, ref, bnd, 0, C);
        if (ti == 0) memcpy(first, o, C * sizeof *o);
        else same_bits(what, first, o, C, threads[ti]);
    }
    free(x), free(o0), free(o), free(first), free(ref), free(bnd);
}

/* ---------------------------------------------------------------- norms */

static void test_layernorm(int N, int C) {
    const float eps = 1e-5f;
    size_t NC = (size_t)N * C;
    float *x = fvec(NC, 21, 1.0f, 0.3f), *w = fvec(C, 22, 0.5f, 1.0f), *b = fvec(C, 23, 0.5f, 0);
    float *dy = fvec(NC, 24, 1.0f, 0), *dx0 = fvec(NC, 25, 1.0f, 0), *dw0 = fvec(C, 26, 1.0f, 0), *db0 = fvec(C, 27, 1.0f, 0);
    float *out = malloc(NC * 4), *mean = malloc(N * 4), *rstd = malloc(N * 4), *dx = malloc(NC * 4), *dw = malloc(C * 4),
          *db = malloc(C * 4);
    float *first = malloc(NC * 4), *firstdx = malloc(NC * 4), *firstdw = malloc(C * 4);
    double *ro = dvec(NC), *bo = dvec(NC), *rm = dvec(N), *bm = dvec(N), *rr = dvec(N), *br = dvec(N);
    double *rdx = dvec(NC), *bdx = dvec(NC), *rdw = dvec(C), *bdw = dvec(C), *rdb = dvec(C), *bdb = dvec(C);
    for (int c = 0; c < C; c++) {
        rdw[c] = dw0[c], bdw[c] = fabs(dw0[c]);
        rdb[c] = db0[c], bdb[c] = fabs(db0[c]);
    }
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        double m = 0, am = 0, v = 0;
        for (int c = 0; c < C; c++) m += xr[c], am += fabs(xr[c]);
        m /= C;
        for (int c = 0; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
        v /= C;
        double r = 1.0 / sqrt(v + eps);
        /* mean: a sum in double, rounded once to float; rstd: from float deviations, (C + 8) u relative
         * with the mean's rounding carried through |m| r */
        rm[n] = m, bm[n] = 4 * U * am / C;
        rr[n] = r, br[n] = 16 * U * r * (1 + fabs(m) * r);
        double sd = 0, sdn = 0, asd = 0, asdn = 0;
        for (int c = 0; c < C; c++) {
            double nrm = (xr[c] - m) * r, dn = w[c] * dy[(size_t)n * C + c];
            /* out: a few float roundings on the normalised value, plus the mean's own rounding */
            ro[(size_t)n * C + c] = nrm * w[c] + b[c];
            bo[(size_t)n * C + c] = 16 * U * (fabs(w[c]) * r * (fabs(xr[c] - m) + fabs(m)) + fabs(b[c]));
            sd += dn, sdn += dn * nrm, asd += fabs(dn), asdn += fabs(dn * nrm);
            rdw[c] += nrm * dy[(size_t)n * C + c];
            bdw[c] += fabs(nrm * dy[(size_t)n * C + c]) * (1 + fabs(m) * r);
            rdb[c] += dy[(size_t)n * C + c];
            bdb[c] += fabs(dy[(size_t)n * C + c]);
        }
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            double nrm = (xr[c] - m) * r, dn = w[c] * dy[i];
            rdx[i] = dx0[i] + r * (dn - sd / C - nrm * sdn / C);
            /* C-term means in double, the rest in float with the saved (float) mean and rstd */
            bdx[i] = 32 * U * (fabs(dx0[i]) + r * (1 + fabs(m) * r) * (fabs(dn) + asd / C + (fabs(nrm) + 1) * asdn / C));
        }
    }
    for (int c = 0; c < C; c++) bdw[c] = (N + 16) * U * bdw[c], bdb[c] = (N + 2) * U * bdb[c];
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        char what[128];
        snprintf(what, sizeof what, "layernorm N=%d C=%d threads=%d", N, C, threads[ti]);
        loom_layernorm_forward(out, mean, rstd, x, w, b, N, C, eps);
        close_to(what, out, ro, bo, 0, NC);
        close_to("layernorm mean", mean, rm, bm, 0, N);
        close_to("layernorm rstd", rstd, rr, br, 0, N);
        memcpy(dx, dx0, NC * 4), memcpy(dw, dw0, C * 4), memcpy(db, db0, C * 4);
        loom_layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C);
        close_to("layernorm dinp", dx, rdx, bdx, 0, NC);
        close_to("layernorm dw", dw, rdw, bdw, 0, C);
        close_to("layernorm db", db, rdb, bdb, 0, C);
        if (ti == 0) {
            memcpy(first, out, NC * 4), memcpy(firstdx, dx, NC * 4), memcpy(firstdw, dw, C * 4);
        } else {
            same_bits(what, first, out, NC, threads[ti]);
            same_bits("layernorm dinp", firstdx, dx, NC, threads[ti]);
            same_bits("layernorm dw", firstdw, dw, C, threads[ti]);
        }
    }
    /* frozen weights: dw, db NULL leaves dinp as before */
    memcpy(dx, dx0, NC * 4);
    loom_layernorm_backward(dx, NULL, NULL, dy, x, w, mean, rstd, N, C);
    same_bits("layernorm dinp without dw/db", firstdx, dx, NC, 1);
    free(x), free(w), free(b), free(dy), free(dx0), free(dw0), free(db0), free(out), free(mean), free(rstd), free(dx),
        free(dw), free(db), free(first), free(firstdx), free(firstdw);
    free(ro), free(bo), free(rm), free(bm), free(rr), free(br), free(rdx), free(bdx), free(rdw), free(bdw), free(rdb),
        free(bdb);
}

static void test_rmsnorm(int N, int C) {
    const float eps = 1e-6f;
    size_t NC = (size_t)N * C;
    float *x = fvec(NC, 31, 1.0f, 0.2f), *w = fvec(C, 32, 0.5f, 1.0f), *dy = fvec(NC, 33, 1.0f, 0);
    float *dx0 = fvec(NC, 34, 1.0f, 0), *dw0 = fvec(C, 35, 1.0f, 0);
    float *out = malloc(NC * 4), *rstd = malloc(N * 4), *dx = malloc(NC * 4), *dw = malloc(C * 4);
    float *first = malloc(NC * 4), *firstdx = malloc(NC * 4), *firstdw = malloc(C * 4);
    double *ro = dvec(NC), *bo = dvec(NC), *rr = dvec(N), *br = dvec(N), *rdx = dvec(NC), *bdx = dvec(NC);
    double *rdw = dvec(C), *bdw = dvec(C);
    for (int c = 0; c < C; c++) rdw[c] = dw0[c], bdw[c] = fabs(dw0[c]);
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C, *dyr = dy + (size_t)n * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)xr[c] * xr[c];
        double r = 1.0 / sqrt(ss / C + eps), s = 0, as = 0;
        rr[n] = r, br[n] = 4 * U * r;
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            ro[i] = w[c] * xr[c] * r;
            bo[i] = 8 * U * fabs(ro[i]) + 1e-30;
            s += (double)w[c] * dyr[c] * xr[c];
            as += fabs((double)w[c] * dyr[c] * xr[c]);
            rdw[c] += dyr[c] * xr[c] * r;
            bdw[c] += fabs(dyr[c] * xr[c] * r);
        }
        /* dx = r w dy - (mean(w dy x) r^3) x */
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)n * C + c;
            rdx[i] = dx0[i] + r * w[c] * dyr[c] - s / C * r * r * r * xr[c];
            bdx[i] = 16 * U * (fabs(dx0[i]) + r * fabs(w[c] * dyr[c]) + as / C * r * r * r * fabs(xr[c]));
        }
    }
    for (int c = 0; c < C; c++) bdw[c] = (N + 8) * U * bdw[c];
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        char what[128];
        snprintf(what, sizeof what, "rmsnorm N=%d C=%d threads=%d", N, C, threads[ti]);
        loom_rmsnorm_forward(out, rstd, x, w, N, C, eps);
        close_to(what, out, ro, bo, 0, NC);
        close_to("rmsnorm rstd", rstd, rr, br, 0, N);
        memcpy(dx, dx0, NC * 4), memcpy(dw, dw0, C * 4);
        loom_rmsnorm_backward(dx, dw, dy, x, w, rstd, N, C);
        close_to("rmsnorm dinp", dx, rdx, bdx, 0, NC);
        close_to("rmsnorm dw", dw, rdw, bdw, 0, C);
        if (ti == 0) {
            memcpy(first, out, NC * 4), memcpy(firstdx, dx, NC * 4), memcpy(firstdw, dw, C * 4);
        } else {
            same_bits(what, first, out, NC, threads[ti]);
            same_bits("rmsnorm dinp", firstdx, dx, NC, threads[ti]);
            same_bits("rmsnorm dw", firstdw, dw, C, threads[ti]);
        }
    }
    free(x), free(w), free(dy), free(dx0), free(dw0), free(out), free(rstd), free(dx), free(dw), free(first),
        free(firstdx), free(firstdw);
    free(ro), free(bo), free(rr), free(br), free(rdx), free(bdx), free(rdw), free(bdw);
}

/* ---------------------------------------------------------------- activations */

static void test_gelu(size_t n, int exact) {
    float *x = fvec(n, 41, 6.0f, 0), *dy = fvec(n, 42, 1.0f, 0), *out = malloc(n * 4), *dx = malloc(n * 4);
    float *f1 = malloc(n * 4), *f2 = malloc(n * 4);
    double *ro = dvec(n), *bo = dvec(n), *rd = dvec(n), *bd = dvec(n);
    const double s = sqrt(2.0 / M_PI);
    for (size_t i = 0; i < n; i++) {
        double v = x[i], g, dg;
        if (exact) {
            g = 0.5 * v * (1 + erf(v / sqrt(2.0)));
            dg = 0.5 * (1 + erf(v / sqrt(2.0))) + v * exp(-0.5 * v * v) / sqrt(2 * M_PI);
        } else {
            double u = s * (v + 0.044715 * v * v * v), th = tanh(u);
            g = 0.5 * v * (1 + th);
            dg = 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * s * (1 + 3 * 0.044715 * v * v);
        }
        ro[i] = g, rd[i] = dg * dy[i];
        /* float evaluation of tanh/erf (relative ~1e-7 on 1 + tanh) times |x|, a few roundings: 16 u of
         * |x| for the value; the derivative's terms reach |x|^3 * 0.13 * sech^2 before they cancel */
        bo[i] = 16 * U * (fabs(v) + 1e-3);
        bd[i] = 32 * U * (1 + fabs(v) + 0.2 * fabs(v * v * v)) * (fabs(dy[i]) + 1e-3);
    }
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        char what[96];
        snprintf(what, sizeof what, "gelu %s n=%zu threads=%d", exact ? "erf" : "tanh", n, threads[ti]);
        loom_gelu_forward(out, x, n, exact);
        close_to(what, out, ro, bo, 0, n);
        loom_gelu_backward(dx, x, dy, n, exact);
        close_to("gelu backward", dx, rd, bd, 0, n);
        if (ti == 0) memcpy(f1, out, n * 4), memcpy(f2, dx, n * 4);
        else same_bits(what, f1, out, n, threads[ti]), same_bits("gelu backward", f2, dx, n, threads[ti]);
    }
    free(x), free(dy), free(out), free(dx), free(f1), free(f2), free(ro), free(bo), free(rd), free(bd);
}

static void test_swiglu(int N, int H) {
    size_t NH = (size_t)N * H;
    float *gu = fvec(2 * NH, 51, 8.0f, 0), *dy = fvec(NH, 52, 1.0f, 0), *out = malloc(NH * 4), *dgu = malloc(2 * NH * 4);
    float *f1 = malloc(NH * 4), *f2 = malloc(2 * NH * 4);
    double *ro = dvec(NH), *bo = dvec(NH), *rd = dvec(2 * NH), *bd = dvec(2 * NH);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < H; j++) {
            double g = gu[(size_t)n * 2 * H + j], u = gu[(size_t)n * 2 * H + H + j], d = dy[(size_t)n * H + j];
            double sg = 1 / (1 + exp(-g));
            size_t i = (size_t)n * H + j, ig = (size_t)n * 2 * H + j;
            ro[i] = g * sg * u;
            /* fast_expf (~1e-7 relative) and four roundings: 16 u relative to |g u| */
            bo[i] = 16 * U * fabs(g * u) + 1e-30;
            rd[ig + H] = d * g * sg;
            bd[ig + H] = 16 * U * fabs(d * g) + 1e-30;
            rd[ig] = d * u * sg * (1 + g * (1 - sg));
            bd[ig] = 16 * U * fabs(d * u) * (1 + fabs(g)) + 1e-30;
        }
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        char what[96];
        snprintf(what, sizeof what, "swiglu N=%d H=%d threads=%d", N, H, threads[ti]);
        loom_swiglu_forward(out, gu, N, H);
        close_to(what, out, ro, bo, 0, NH);
        loom_swiglu_backward(dgu, dy, gu, N, H);
        close_to("swiglu backward", dgu, rd, bd, 0, 2 * NH);
        if (ti == 0) memcpy(f1, out, NH * 4), memcpy(f2, dgu, 2 * NH * 4);
        else same_bits(what, f1, out, NH, threads[ti]), same_bits("swiglu backward", f2, dgu, 2 * NH, threads[ti]);
    }
    free(gu), free(dy), free(out), free(dgu), free(f1), free(f2), free(ro), free(bo), free(rd), free(bd);
}

/* ---------------------------------------------------------------- rotary embedding */

static void test_rope(int B, int T, int nheads, int HS, int pos0) {
    const int ld = nheads * HS + 3, half = HS / 2;
    const float theta = 10000.0f;
    size_t n = (size_t)B * T * ld;
    float *x = fvec(n, 61, 1.0f, 0), *y = malloc(n * 4), *f1 = malloc(n * 4);
    double *ref = dvec(n), *bnd = dvec(n);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *row = x + ((size_t)b * T + t) * ld;
            for (int c = 0; c < ld; c++) ref[((size_t)b * T + t) * ld + c] = row[c]; /* columns past the heads */
            for (int h = 0; h < nheads; h++)
                for (int j = 0; j < half; j++) {
                    /* the angle as Hugging Face computes it, in float32: inv_freq = theta^(-2j/HS) rounded
                     * to float, times the position in float; then the rotation exactly */
                    float inv = (float)(1.0 / pow(theta, 2.0 * j / HS));
                    double ang = (float)(pos0 + t) * inv, a = row[h * HS + j], c = row[h * HS + j + half];
                    size_t i = ((size_t)b * T + t) * ld + h * HS + j;
                    ref[i] = a * cos(ang) - c * sin(ang);
                    ref[i + half] = c * cos(ang) + a * sin(ang);
                    /* cosf/sinf (1 ulp) and three roundings on values of size |a| + |c| */
                    bnd[i] = bnd[i + half] = 8 * U * (fabs(a) + fabs(c));
                }
        }
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        char what[128];
        snprintf(what, sizeof what, "rope B=%d T=%d heads=%d HS=%d pos0=%d threads=%d", B, T, nheads, HS, pos0, threads[ti]);
        memcpy(y, x, n * 4);
        loom_rope(y, ld, B, T, nheads, HS, theta, pos0, 0);
        close_to(what, y, ref, bnd, 0, n);
        if (ti == 0) memcpy(f1, y, n * 4);
        else same_bits(what, f1, y, n, threads[ti]);
        /* inverse undoes the rotation (to the same few roundings) */
        loom_rope(y, ld, B, T, nheads, HS, theta, pos0, 1);
        double *rx = dvec(n), *bx = dvec(n);
        for (size_t i = 0; i < n; i++) rx[i] = x[i], bx[i] = 2 * bnd[i] + 1e-30;
        close_to("rope inverse", y, rx, bx, 0, n);
        free(rx), free(bx);
    }
    free(x), free(y), free(f1), free(ref), free(bnd);
}

/* ---------------------------------------------------------------- attention */

static void test_attention(int B, int T, int NH, int NKV, int HS) {
    const int C = NH * HS, QKV = C + 2 * NKV * HS, ld = QKV + 1, group = NH / NKV;
    size_t N = (size_t)B * T, natt = (size_t)B * NH * T * T;
    float *qkv = fvec(N * ld, 71, 1.0f, 0), *dout = fvec(N * C, 72, 1.0f, 0);
    float *out = malloc(N * C * 4), *att = malloc(natt * 4), *dqkv = malloc(N * ld * 4), *scratch = malloc(natt * 4);
    double *ro = dvec(N * C), *bo = dvec(N * C), *ra = dvec(natt), *ba = dvec(natt), *rd = dvec(N * ld), *bd = dvec(N * ld);
    double *p = dvec((size_t)T * T), *dp = dvec((size_t)T * T), *ads = dvec((size_t)T * T);
    const double sc = 1.0 / sqrt((double)HS);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *base = qkv + (size_t)b * T * ld;
            int kh = h / group;
#define Q(t, d) base[(size_t)(t) * ld + h * HS + (d)]
#define K(t, d) base[(size_t)(t) * ld + C + kh * HS + (d)]
#define V(t, d) base[(size_t)(t) * ld + C + NKV * HS + kh * HS + (d)]
            for (int t = 0; t < T; t++) {
                double mx = -INFINITY, s = 0;
                for (int j = 0; j <= t; j++) {
                    double z = 0;
                    for (int d = 0; d < HS; d++) z += Q(t, d) * K(j, d);
                    p[(size_t)t * T + j] = z * sc;
                    mx = fmax(mx, z * sc);
                }
                for (int j = 0; j <= t; j++) s += p[(size_t)t * T + j] = exp(p[(size_t)t * T + j] - mx);
                for (int j = 0; j < T; j++) {
                    double pr = j <= t ? p[(size_t)t * T + j] / s : 0;
                    p[(size_t)t * T + j] = pr;
                    size_t ia = (((size_t)b * NH + h) * T + t) * T + j;
                    ra[ia] = pr;
                    /* scores: HS products (gamma_HS of sum|q k| <= HS |scores|, amplified by softmax by at most
                     * the score scale): a relative 1e-5 of each probability is ample, and zero above */
                    ba[ia] = j <= t ? 1e-5 * (pr + 1e-6) + (HS + T + 8) * U * pr : 0;
                }
                for (int d = 0; d < HS; d++) {
                    double o = 0, a = 0;
                    for (int j = 0; j <= t; j++) o += p[(size_t)t * T + j] * V(j, d), a += p[(size_t)t * T + j] * fabs(V(j, d));
                    ro[((size_t)b * T + t) * C + h * HS + d] = o;
                    bo[((size_t)b * T + t) * C + h * HS + d] = 1e-5 * a + (T + 2) * U * a;
                }
            }
            /* backward: dP = dY V^T, dS = P (dP - rowsum(P dP)) / sqrt(HS), dQ = dS K, dK += dS^T Q, dV += P^T dY */
            const float *dy = dout + (size_t)b * T * C + h * HS;
            for (int t = 0; t < T; t++) {
                double rs = 0, ars = 0;
                for (int j = 0; j <= t; j++) {
                    double z = 0;
                    for (int d = 0; d < HS; d++) z += (double)dy[(size_t)t * C + d] * V(j, d);
                    dp[(size_t)t * T + j] = z;
                    rs += p[(size_t)t * T + j] * z;
                    ars += p[(size_t)t * T + j] * fabs(z);
                }
                for (int j = 0; j <= t; j++) {
                    ads[(size_t)t * T + j] = p[(size_t)t * T + j] * (fabs(dp[(size_t)t * T + j]) + ars) * sc;
                    dp[(size_t)t * T + j] = p[(size_t)t * T + j] * (dp[(size_t)t * T + j] - rs) * sc;
                }
            }
            double *dbase = rd + (size_t)b * T * ld, *bbase = bd + (size_t)b * T * ld;
            for (int t = 0; t < T; t++)
                for (int d = 0; d < HS; d++) {
                    double q = 0, aq = 0;
                    for (int j = 0; j <= t; j++) q += dp[(size_t)t * T + j] * K(j, d), aq += ads[(size_t)t * T + j] * fabs(K(j, d));
                    dbase[(size_t)t * ld + h * HS + d] = q;
                    bbase[(size_t)t * ld + h * HS + d] = 1e-5 * aq + 1e-7;
                    double k = 0, ak = 0, v = 0, av = 0;
                    for (int i = t; i < T; i++) {
                        k += dp[(size_t)i * T + t] * Q(i, d), ak += ads[(size_t)i * T + t] * fabs(Q(i, d));
                        v += p[(size_t)i * T + t] * dy[(size_t)i * C + d], av += p[(size_t)i * T + t] * fabs(dy[(size_t)i * C + d]);
                    }
                    dbase[(size_t)t * ld + C + kh * HS + d] += k;
                    bbase[(size_t)t * ld + C + kh * HS + d] += 1e-5 * ak + 1e-7;
                    dbase[(size_t)t * ld + C + NKV * HS + kh * HS + d] += v;
                    bbase[(size_t)t * ld + C + NKV * HS + kh * HS + d] += 1e-5 * av + 1e-7;
                }
#undef Q
#undef K
#undef V
        }
    /* the column past QKV is not written */
    for (size_t n = 0; n < N; n++) rd[n * ld + QKV] = 555.0, bd[n * ld + QKV] = 0;
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        char what[128];
        snprintf(what, sizeof what, "attention B=%d T=%d NH=%d NKV=%d HS=%d threads=%d", B, T, NH, NKV, HS, threads[ti]);
        for (size_t i = 0; i < natt; i++) att[i] = 999.0f;
        loom_attention_forward(out, att, qkv, ld, B, T, NH, NKV, HS);
        close_to(what, out, ro, bo, 0, N * C);
        close_to("attention probabilities", att, ra, ba, 0, natt);
        for (size_t i = 0; i < N * ld; i++) dqkv[i] = 555.0f;
        loom_attention_backward(dqkv, scratch, dout, qkv, att, ld, B, T, NH, NKV, HS);
        close_to("attention backward dqkv", dqkv, rd, bd, 0, N * ld);
    }
    free(qkv), free(dout), free(out), free(att), free(dqkv), free(scratch), free(ro), free(bo), free(ra), free(ba),
        free(rd), free(bd), free(p), free(dp), free(ads);
}

/* ---------------------------------------------------------------- cross-entropy */

static void test_crossentropy(int N, int V) {
    size_t NV = (size_t)N * V;
    float *logits = fvec(NV, 81, 8.0f, 0), *g = malloc(NV * 4), *losses = malloc(N * 4), *f1 = malloc(NV * 4);
    int32_t *tg = malloc(N * sizeof *tg);
    loom_rng r;
    loom_rng_init(&r, 82, 0);
    for (int n = 0; n < N; n++) tg[n] = n % 4 == 3 ? -1 : n % 9 == 5 ? V + 2 : (int32_t)loom_rng_below(&r, (uint32_t)V);
    double *rl = dvec(N), *bl = dvec(N), *rg = dvec(NV), *bg = dvec(NV), total = 0;
    int valid = 0;
    for (int n = 0; n < N; n++) valid += tg[n] >= 0 && tg[n] < V;
    const float dloss = 0.7f;
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        if (tg[n] < 0 || tg[n] >= V) continue; /* ignored: loss 0, gradient 0 */
        double mx = row[0], s = 0;
        for (int j = 1; j < V; j++) mx = fmax(mx, row[j]);
        for (int j = 0; j < V; j++) s += exp(row[j] - mx);
        rl[n] = log(s) + mx - row[tg[n]];
        total += rl[n];
        /* fast_expf terms (~1e-7 relative each) summed in float: (V + 8) u relative on s, so on the
         * loss (V + 8) u absolute plus the rounding of |mx| + |row[tg]| */
        bl[n] = (V + 8) * U + 4 * U * (fabs(mx) + fabs(row[tg[n]]));
        for (int j = 0; j < V; j++) {
            double pj = exp(row[j] - mx) / s;
            rg[(size_t)n * V + j] = dloss / valid * (pj - (j == tg[n]));
            bg[(size_t)n * V + j] = dloss / valid * ((V + 16) * U * pj + 4 * U);
        }
    }
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        char what[96];
        snprintf(what, sizeof what, "crossentropy N=%d V=%d threads=%d", N, V, threads[ti]);
        int nv = -1;
        float mean = loom_crossentropy_forward(losses, logits, tg, N, V, &nv);
        CHECK(nv == valid, "%s: %d rows counted, expected %d", what, nv, valid);
        close_to(what, losses, rl, bl, 0, N);
        double want = valid ? total / valid : 0;
        CHECK_NEAR(mean, want, (V + 8) * U + 4 * U * fabs(want) + 8 * U * 8);
        memcpy(g, logits, NV * 4);
        loom_crossentropy_backward(g, tg, N, V, valid, dloss);
        close_to("crossentropy backward", g, rg, bg, 0, NV);
        if (ti == 0) memcpy(f1, g, NV * 4);
        else same_bits(what, f1, g, NV, threads[ti]);
    }
    free(logits), free(g), free(losses), free(f1), free(tg), free(rl), free(bl), free(rg), free(bg);
}

/* ---------------------------------------------------------------- low-precision matmuls */

static void test_qmatmul(int N, int C, int OC, int layout, loom_qtype type) {
    char what[160];
    const int ldi = C + 1, ldo = OC + 2;
    size_t nw = (size_t)C * OC;
    float *w = fvec(nw, 91, 0.5f, 0), *inp = fvec((size_t)N * ldi, 92, 1.0f, 0), *bias = fvec(OC, 93, 1.0f, 0);
    float *dout = fvec((size_t)N * ldo, 94, 1.0f, 0), *dinp0 = fvec((size_t)N * ldi, 95, 1.0f, 0);
    float *wd = malloc(nw * 4), *scale = malloc(OC * 4), *out = malloc((size_t)N * ldo * 4), *dinp = malloc((size_t)N * ldi * 4);
    void *q = malloc(nw * 2);
    float *scratch = malloc(loom_qmatmul_scratch(C, OC) * 4);
    loom_quantize(q, scale, w, type, layout, C, OC);
    /* the stored values, from the format's definition: bf16 = the top 16 bits of the float;
     * int8 = q * scale[o], scale[o] = max |w[o, :]| / 127 */
    int fmt_ok = 1;
    for (int o = 0; o < OC; o++) {
        double mx = 0;
        for (int c = 0; c < C; c++) mx = fmax(mx, fabs(wat(w, layout, C, OC, o, c)));
        if (type == LOOM_Q_INT8) fmt_ok &= fabs(scale[o] - (mx > 0 ? mx / 127 : 1)) <= 2 * U * mx / 127;
        for (int c = 0; c < C; c++) {
            size_t k = layout == LOOM_W_LINEAR ? (size_t)o * C + c : (size_t)c * OC + o;
            if (type == LOOM_Q_BF16) {
                union { uint32_t i; float f; } b = {.i = (uint32_t)((const uint16_t *)q)[k] << 16};
                wd[k] = b.f;
                fmt_ok &= fabs(wd[k] - w[k]) <= fabs(w[k]) / 256; /* 8 significant bits: half an ulp 2^-8 */
            } else {
                wd[k] = (float)((const int8_t *)q)[k] * scale[o];
                fmt_ok &= fabs(wd[k] - w[k]) <= 0.5001 * scale[o];
            }
        }
    }
    snprintf(what, sizeof what, "q%s %s N=%d C=%d OC=%d", type == LOOM_Q_BF16 ? "bf16" : "int8",
             layout == LOOM_W_LINEAR ? "linear" : "conv1d", N, C, OC);
    CHECK(fmt_ok, "%s: quantized values as the format defines them", what);
    double *ref = dvec((size_t)N * ldo), *bnd = dvec((size_t)N * ldo), *rdi = dvec((size_t)N * ldi), *bdi = dvec((size_t)N * ldi);
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double s = bias[o], a = fabs(bias[o]);
            for (int c = 0; c < C; c++) {
                double p = inp[(size_t)n * ldi + c] * wat(wd, layout, C, OC, o, c);
                s += p, a += fabs(p);
            }
            ref[(size_t)n * ldo + o] = s;
            bnd[(size_t)n * ldo + o] = (C + 2) * U * a + 1e-30;
        }
        for (int o = OC; o < ldo; o++) ref[(size_t)n * ldo + o] = 777.0;
        for (int c = 0; c < C; c++) {
            double s = 0.5 * dinp0[(size_t)n * ldi + c], a = fabs(s);
            for (int o = 0; o < OC; o++) {
                double p = dout[(size_t)n * ldo + o] * wat(wd, layout, C, OC, o, c);
                s += p, a += fabs(p);
            }
            rdi[(size_t)n * ldi + c] = s;
            bdi[(size_t)n * ldi + c] = (OC + 3) * U * a + 1e-30;
        }
        rdi[(size_t)n * ldi + C] = dinp0[(size_t)n * ldi + C];
    }
    loom_qmat qm = {type, layout, q, type == LOOM_Q_INT8 ? scale : NULL};
    for (int ti = 0; ti < NTHREADS; ti++) {
        loom_set_threads(threads[ti]);
        char w2[200];
        snprintf(w2, sizeof w2, "%s threads=%d forward", what, threads[ti]);
        for (size_t i = 0; i < (size_t)N * ldo; i++) out[i] = 777.0f;
        loom_qmatmul_forward(out, ldo, inp, ldi, &qm, bias, N, C, OC, scratch);
        close_to(w2, out, ref, bnd, 0, (size_t)N * ldo);
        memcpy(dinp, dinp0, (size_t)N * ldi * 4);
        loom_qmatmul_backward(dinp, ldi, 0.5f, dout, ldo, &qm, N, C, OC, scratch);
        snprintf(w2, sizeof w2, "%s threads=%d backward", what, threads[ti]);
        close_to(w2, dinp, rdi, bdi, 0, (size_t)N * ldi);
    }
    free(w), free(inp), free(bias), free(dout), free(dinp0), free(wd), free(scale), free(out), free(dinp), free(q),
        free(scratch), free(ref), free(bnd), free(rdi), free(bdi);
}

/* ---------------------------------------------------------------- non-finite inputs */

/* NaN in gives NaN out (and no undefined float-to-int conversion inside fast_expf); Inf saturates. */
static void test_non_finite(void) {
    float x[4] = {NAN, INFINITY, -INFINITY, 1.0f}, y[4], gu[8] = {NAN, 50.0f, -200.0f, 1.0f, 1, 1, 1, 1};
    loom_gelu_forward(y, x, 4, 0);
    CHECK(isnan(y[0]) && y[1] == INFINITY && fabsf(y[3] - 0.841192f) < 1e-5f, "gelu: NaN -> NaN, +Inf -> +Inf (%g %g)",
          y[0], y[1]);
    loom_swiglu_forward(y, gu, 1, 4);
    CHECK(isnan(y[0]) && y[1] == 50.0f && fabsf(y[2]) < 1e-30f && isfinite(y[3]), "swiglu: NaN -> NaN, large -> x, very negative -> 0 "
          "(%g %g %g)", y[0], y[1], y[2]);
    float logits[6] = {0, NAN, 1, 0, 1, 2}, losses[2];
    int32_t tg[2] = {0, 2};
    int nv;
    loom_crossentropy_forward(losses, logits, tg, 2, 3, &nv);
    CHECK(isnan(losses[0]) && isfinite(losses[1]), "crossentropy: a NaN logit gives a NaN loss for its row only");
}

int main(void) {
    int sizes[] = {1, 7, 33, 257};
    for (int layout = 0; layout < 2; layout++) {
        test_matmul(1, 1, 1, layout, 1);
        test_matmul(7, 33, 257, layout, 1);
        test_matmul(33, 257, 7, layout, 0);
        test_matmul(33, 7, 33, layout, 1);
    }
    test_matmul(2, 3, 16411, LOOM_W_LINEAR, 1); /* a vocabulary-sized head: dW in row blocks */
    /* gemv: sizes around the 16 lanes and the 256-output blocks, and one above the threading threshold */
    int gv[][2] = {{1, 1}, {7, 15}, {33, 16}, {17, 257}, {257, 33}, {300, 1000}};
    for (int k = 0; k < 6; k++) {
        test_gemv(gv[k][0], gv[k][1], 0);
        test_gemv(gv[k][0], gv[k][1], 1);
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            if (i == j || (i + j) % 2) continue;
            test_colsum(sizes[i], sizes[j]);
        }
    test_colsum(257, 257);
    int ns[][2] = {{1, 1}, {7, 33}, {33, 257}, {1, 257}, {257, 7}};
    for (int k = 0; k < 5; k++) {
        test_layernorm(ns[k][0], ns[k][1]);
        test_rmsnorm(ns[k][0], ns[k][1]);
        test_swiglu(ns[k][0], ns[k][1]);
    }
    size_t gn[] = {1, 7, 257, 33 * 257};
    for (int k = 0; k < 4; k++) {
        test_gelu(gn[k], 0);
        test_gelu(gn[k], 1);
    }
    test_rope(1, 1, 1, 2, 0);
    test_rope(2, 7, 3, 8, 0);
    test_rope(2, 33, 4, 64, 5);
    test_rope(1, 257, 2, 34, 1000);
    test_attention(1, 1, 1, 1, 1);
    test_attention(2, 7, 4, 2, 8);
    test_attention(1, 33, 4, 1, 16);
    test_attention(2, 33, 3, 3, 5);
    test_crossentropy(1, 1);
    test_crossentropy(7, 33);
    test_crossentropy(33, 257);
    test_crossentropy(37, 4099);
    for (int layout = 0; layout < 2; layout++) {
        test_qmatmul(7, 33, 257, layout, LOOM_Q_BF16);
        test_qmatmul(7, 33, 257, layout, LOOM_Q_INT8);
        test_qmatmul(1, 1, 1, layout, LOOM_Q_INT8);
        test_qmatmul(3, 257, 4133, layout, LOOM_Q_INT8); /* > 2^20 floats: the weight is expanded in 2 blocks */
    }
    test_non_finite();
    return test_summary();
}
