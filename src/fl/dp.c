/* The RDP accountant of the sampled Gaussian mechanism (see include/loom/dp.h). */
#include "loom/dp.h"

#include <math.h>

#include "loom/core.h"

static double orders[LOOM_DP_N_ORDERS];
static int orders_made;

const double *loom_dp_default_orders(void) {
    if (!orders_made) { /* 1 + x / 10 for x in 1..99, then 12..63; idempotent, so a race is harmless */
        int k = 0;
        for (int x = 1; x < 100; x++) orders[k++] = 1.0 + x / 10.0;
        for (int a = 12; a < 64; a++) orders[k++] = a;
        orders_made = 1;
    }
    return orders;
}

/* log(exp(x) + exp(y)) and log(exp(x) - exp(y)) (x >= y), with -inf as log 0 */
static double log_add(double x, double y) {
    double a = fmin(x, y), b = fmax(x, y);
    if (a == -INFINITY) return b;
    return log1p(exp(a - b)) + b;
}

static double log_sub(double x, double y) {
    if (y == -INFINITY) return x;
    if (x == y) return -INFINITY;
    double d = expm1(x - y);
    return isinf(d) ? x : log(d) + y;
}

/* log(erfc(x)), also where erfc(x) underflows (its asymptotic series, accurate to ~1e-16 there) */
static double log_erfc(double x) {
    if (x < 25) return log(erfc(x));
    double x2 = x * x, t = 1, s = 1;
    for (int k = 1; k <= 8; k++) {
        t *= -(2.0 * k - 1) / (2 * x2);
        s += t;
    }
    return -x2 - log(x) - 0.5 * log(M_PI) + log(s);
}

/* binom(alpha, i) for real alpha: the product of (alpha - m) / (m + 1) */
static double binom(double alpha, int i) {
    double c = 1;
    for (int m = 0; m < i; m++) c *= (alpha - m) / (m + 1);
    return c;
}

static double log_a_int(double q, double sigma, int alpha) {
    double la = -INFINITY;
    for (int i = 0; i <= alpha; i++) {
        double s = log(binom(alpha, i)) + i * log(q) + (alpha - i) * log(1 - q) + (double)(i * i - i) / (2 * sigma * sigma);
        la = log_add(la, s);
    }
    return la;
}

static double log_a_frac(double q, double sigma, double alpha) {
    double a0 = -INFINITY, a1 = -INFINITY;
    double z0 = sigma * sigma * log(1 / q - 1) + 0.5;
    for (int i = 0; i < 100000; i++) {
        double coef = binom(alpha, i), lc = log(fabs(coef)), j = alpha - i;
        double t0 = lc + i * log(q) + j * log(1 - q), t1 = lc + j * log(q) + i * log(1 - q);
        double e0 = log(0.5) + log_erfc((i - z0) / (sqrt(2.0) * sigma));
        double e1 = log(0.5) + log_erfc((z0 - j) / (sqrt(2.0) * sigma));
        double s0 = t0 + (double)(i * (double)i - i) / (2 * sigma * sigma) + e0;
        double s1 = t1 + (j * j - j) / (2 * sigma * sigma) + e1;
        if (coef > 0) {
            a0 = log_add(a0, s0);
            a1 = log_add(a1, s1);
        } else {
            a0 = log_sub(a0, s0);
            a1 = log_sub(a1, s1);
        }
        if (fmax(s0, s1) < -30) break;
    }
    return log_add(a0, a1);
}

double loom_dp_rdp(double q, double sigma, double alpha) {
    if (q == 0) return 0;
    if (sigma == 0) return INFINITY;
    if (q == 1.0) return alpha / (2 * sigma * sigma);
    if (isinf(alpha)) return INFINITY;
    double la = alpha == floor(alpha) ? log_a_int(q, sigma, (int)alpha) : log_a_frac(q, sigma, alpha);
    return la / (alpha - 1);
}

static int check_args(double q, double sigma, double steps, double delta) {
    if (!(q >= 0 && q <= 1)) return loom_error(LOOM_EINVAL, "the sampling rate q = %g must be in [0, 1]", q);
    if (!(sigma >= 0) || isinf(sigma)) return loom_error(LOOM_EINVAL, "the noise multiplier sigma = %g must be finite and >= 0", sigma);
    if (!(steps >= 0) || isinf(steps)) return loom_error(LOOM_EINVAL, "steps = %g must be finite and >= 0", steps);
    if (!(delta > 0 && delta < 1)) return loom_error(LOOM_EINVAL, "delta = %g must be in (0, 1)", delta);
    return LOOM_OK;
}

int loom_dp_epsilon(double q, double sigma, double steps, double delta, const double *ord, size_t n, double *epsilon,
                    double *order) {
    int rc = check_args(q, sigma, steps, delta);
    if (rc != LOOM_OK) return rc;
    if (!ord || n == 0) {
        ord = loom_dp_default_orders();
        n = LOOM_DP_N_ORDERS;
    }
    double best = NAN, best_a = NAN;
    for (size_t k = 0; k < n; k++) {
        double a = ord[k];
        if (!(a > 1) || a > 1e6) return loom_error(LOOM_EINVAL, "RDP order %g must be in (1, 1e6]", a);
        double e = steps * loom_dp_rdp(q, sigma, a) - (log(delta) + log(a)) / (a - 1) + log((a - 1) / a);
        if (!isnan(e) && (isnan(best) || e < best)) { /* the first minimum, as numpy's nanargmin */
            best = e;
            best_a = a;
        }
    }
    *epsilon = best;
    if (order) *order = best_a;
    return LOOM_OK;
}

int loom_dp_sigma(double q, double steps, double delta, double target, double *sigma, double *epsilon) {
    int rc = check_args(q, 1, steps, delta);
    if (rc != LOOM_OK) return rc;
    if (!(target > 0) || isinf(target)) return loom_error(LOOM_EINVAL, "the target epsilon %g must be finite and > 0", target);
    double lo = 0, hi = 1, e = 0;
    for (;;) { /* grow hi until it meets the target */
        if ((rc = loom_dp_epsilon(q, hi, steps, delta, NULL, 0, &e, NULL)) != LOOM_OK) return rc;
        if (e <= target) break;
        lo = hi;
        hi *= 2;
        if (hi > 1e6)
            return loom_error(LOOM_ERANGE, "no noise multiplier up to 1e6 reaches epsilon %g at delta %g in %g steps of q %g",
                              target, delta, steps, q);
    }
    while (hi - lo > 1e-9 * hi) {
        double mid = 0.5 * (lo + hi), em;
        if ((rc = loom_dp_epsilon(q, mid, steps, delta, NULL, 0, &em, NULL)) != LOOM_OK) return rc;
        if (em <= target) hi = mid;
        else lo = mid;
    }
    *sigma = hi;
    return loom_dp_epsilon(q, hi, steps, delta, NULL, 0, epsilon, NULL);
}
