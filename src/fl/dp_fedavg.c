/* Client-level differential privacy of a federated run: the modes, the run's accounting and budget,
 * the noise streams, local DP on a client's update and adaptive clipping (see include/loom/dp.h). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dp.h"

/* Element loops go parallel only on vectors long enough to pay for the threads; each element's noise
 * is a function of its index, so the result does not depend on the thread count. */
#define PAR_MIN 65536

int loom_dp_mode_parse(const char *s, loom_dp_mode *m) {
    static const char *const names[] = {"off", "sgd", "central", "local"};
    for (int i = 0; s && i < 4; i++)
        if (!strcmp(s, names[i])) {
            *m = (loom_dp_mode)i;
            return LOOM_OK;
        }
    return loom_error(LOOM_EINVAL, "--dp must be sgd, central or local (got '%s')", s ? s : "");
}

const char *loom_dp_mode_name(loom_dp_mode m) {
    switch (m) {
    case LOOM_DP_OFF: return "off";
    case LOOM_DP_SGD: return "sgd";
    case LOOM_DP_CENTRAL: return "central";
    case LOOM_DP_LOCAL: return "local";
    }
    return "?";
}

void loom_dp_config_defaults(loom_dp_config *c) {
    memset(c, 0, sizeof *c);
    c->delta = LOOM_DP_DEFAULT_DELTA;
    c->clip_lr = LOOM_DP_DEFAULT_CLIP_LR;
}

double loom_dp_adaptive_sigma(double sigma, double sigma_b) {
    if (sigma == 0) return 0;
    double r = 1 / (sigma * sigma) - 1 / (4 * sigma_b * sigma_b);
    return r > 0 ? 1 / sqrt(r) : NAN;
}

double loom_dp_adaptive_next(double clip, double count, double expected, double sigma_b, double z, double quantile,
                             double eta) {
    double b = (count + sigma_b * z) / expected;
    return clip * exp(-eta * (b - quantile));
}

int loom_dp_run_mechanism(const loom_dp_config *c, int N, int m, loom_dp_mechanism *out) {
    const char *mode = loom_dp_mode_name(c->mode);
    if (c->mode == LOOM_DP_OFF) return loom_error(LOOM_EINVAL, "differential privacy is off (no --dp mode)");
    if ((unsigned)c->mode > LOOM_DP_LOCAL) return loom_error(LOOM_EINVAL, "--dp: unknown mode %d", (int)c->mode);
    if (!(c->clip > 0) || isinf(c->clip))
        return loom_error(LOOM_EINVAL, "--dp %s needs --dp-clip > 0 (the L2 norm each %s is clipped to), got %g", mode,
                          c->mode == LOOM_DP_SGD ? "example's gradient" : "client's update", c->clip);
    if (!(c->noise >= 0) || isinf(c->noise))
        return loom_error(LOOM_EINVAL, "--dp-noise must be finite and >= 0 (the noise multiplier sigma), got %g", c->noise);
    if (!(c->delta > 0 && c->delta < 1)) return loom_error(LOOM_EINVAL, "--dp-delta must be in (0, 1), got %g", c->delta);
    if (!(c->epsilon_budget >= 0) || isinf(c->epsilon_budget))
        return loom_error(LOOM_EINVAL, "--dp-epsilon must be finite and > 0 (0: no budget), got %g", c->epsilon_budget);
    if (c->quantile != 0) {
        if (!(c->quantile > 0 && c->quantile < 1))
            return loom_error(LOOM_EINVAL, "--dp-adaptive-clip must be a quantile in (0, 1), got %g", c->quantile);
        if (c->mode != LOOM_DP_CENTRAL)
            return loom_error(LOOM_EINVAL, "--dp-adaptive-clip works with --dp central only (not --dp %s)", mode);
        if (!(c->clip_lr > 0) || isinf(c->clip_lr))
            return loom_error(LOOM_EINVAL, "--dp-clip-lr must be finite and > 0, got %g", c->clip_lr);
        if (!(c->bits_noise >= 0) || isinf(c->bits_noise))
            return loom_error(LOOM_EINVAL, "--dp-clip-noise must be finite and >= 0 (0: clients per round / 20), got %g",
                              c->bits_noise);
    }
    if (N < 1 || m < 1 || m > N)
        return loom_error(LOOM_EINVAL, "DP accounting: %d clients per round of a population of %d", m, N);
    if (c->quantile != 0 && c->noise > 0) {
        double sb = c->bits_noise > 0 ? c->bits_noise : m / 20.0;
        if (isnan(loom_dp_adaptive_sigma(c->noise, sb)))
            return loom_error(LOOM_EINVAL,
                              "--dp-adaptive-clip: the noise of the clip count, sigma_b = %g, must exceed --dp-noise / 2 "
                              "= %g (raise --dp-clip-noise, sample more clients per round, or lower --dp-noise)",
                              sb, c->noise / 2);
    }
    switch (c->mode) {
    case LOOM_DP_CENTRAL: *out = (loom_dp_mechanism){(double)m / N, c->noise, 1}; break;
    case LOOM_DP_LOCAL: *out = (loom_dp_mechanism){1, c->noise / 2, 1}; break;
    default:
        if (!(c->sgd_q > 0 && c->sgd_q <= 1))
            return loom_error(LOOM_EINVAL, "--dp sgd: the sampling rate batch / fewest examples %g must be in (0, 1]",
                              c->sgd_q);
        if (!(c->sgd_steps >= 1) || isinf(c->sgd_steps))
            return loom_error(LOOM_EINVAL, "--dp sgd: %g DP-SGD steps per round (must be >= 1)", c->sgd_steps);
        *out = (loom_dp_mechanism){c->sgd_q, c->noise, c->sgd_steps};
        break;
    }
    return LOOM_OK;
}

static int eps_at(const loom_dp_config *c, const loom_dp_mechanism *k, int rounds, double *eps) {
    if (rounds <= 0) {
        *eps = 0;
        return LOOM_OK;
    }
    if (k->sigma == 0) {
        *eps = INFINITY;
        return LOOM_OK;
    }
    return loom_dp_epsilon(k->q, k->sigma, k->steps * rounds, c->delta, NULL, 0, eps, NULL);
}

int loom_dp_run_epsilon(const loom_dp_config *c, int N, int m, int rounds, double *epsilon) {
    loom_dp_mechanism k;
    int rc = loom_dp_run_mechanism(c, N, m, &k);
    if (rc != LOOM_OK) return rc;
    return eps_at(c, &k, rounds, epsilon);
}

int loom_dp_run_budget(const loom_dp_config *c, int N, int m, int rounds) {
    loom_dp_mechanism k;
    int rc = loom_dp_run_mechanism(c, N, m, &k);
    if (rc != LOOM_OK || c->epsilon_budget == 0 || rounds <= 0) return rc;
    double total;
    if ((rc = eps_at(c, &k, rounds, &total)) != LOOM_OK) return rc;
    const double B = c->epsilon_budget;
    if (total <= B) return LOOM_OK;
    /* the first round whose epsilon exceeds the budget (epsilon grows with the rounds) */
    int lo = 0, hi = rounds; /* eps(lo) <= B < eps(hi) */
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        double e;
        if ((rc = eps_at(c, &k, mid, &e)) != LOOM_OK) return rc;
        if (e <= B) lo = mid;
        else hi = mid;
    }
    /* the noise multiplier that fits all the rounds (local: the flag is twice the mechanism's) */
    char knob[256];
    double s = 0, se = 0;
    if (loom_dp_sigma(k.q, k.steps * rounds, c->delta, B, &s, &se) == LOOM_OK)
    {
        s *= c->mode == LOOM_DP_LOCAL ? 2 : 1;
        double p = pow(10, floor(log10(s)) - 3); /* rounded up to 4 digits, so the value printed fits */
        snprintf(knob, sizeof knob, "raise --dp-noise to %.4g", ceil(s / p * (1 - 1e-12)) * p);
    }
    else
        snprintf(knob, sizeof knob, "no --dp-noise up to 1e6 fits it");
    char fit[128];
    if (lo > 0) snprintf(fit, sizeof fit, "lower --rounds to %d", lo);
    else snprintf(fit, sizeof fit, "not even one round fits at this --dp-noise");
    return loom_error(LOOM_ERANGE,
                      "--dp-epsilon %g: this run would reach epsilon %.4g at delta %g after its %d rounds (--dp %s, "
                      "--dp-noise %g); the budget runs out at round %d: %s, or %s",
                      B, total, c->delta, rounds, loom_dp_mode_name(c->mode), c->noise, hi, knob, fit);
}

uint64_t loom_dp_stream(int kind, int round) {
    return loom_hash2(loom_hash2(LOOM_STREAM_DP_NOISE, (uint64_t)kind), (uint64_t)round);
}

/* Noise goes in blocks: loom_rng_normal_fill draws a block's normals in pairs (one Box-Muller
 * transform per two values), the same values as loom_rng_normal_at element by element. */
#define BLOCK 4096

void loom_dp_add_noise(double *x, size_t n, double std, uint64_t seed, uint64_t stream) {
    if (std == 0) return;
    const size_t nb = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t b = 0; b < nb; b++) {
        float z[BLOCK];
        size_t i0 = b * BLOCK, len = n - i0 < BLOCK ? n - i0 : BLOCK;
        loom_rng_normal_fill(seed, stream, i0, len, z);
        for (size_t i = 0; i < len; i++) x[i0 + i] += std * (double)z[i];
    }
}

int loom_dp_local_privatize(float *u, size_t dim, double clip, double noise, uint64_t seed, int round, double *norm) {
    if (!(clip > 0) || isinf(clip)) return loom_error(LOOM_EINVAL, "--dp local needs --dp-clip > 0, got %g", clip);
    if (!(noise >= 0) || isinf(noise)) return loom_error(LOOM_EINVAL, "--dp-noise must be finite and >= 0, got %g", noise);
    double s2 = 0;
    for (size_t i = 0; i < dim; i++) s2 += (double)u[i] * u[i];
    double n2 = sqrt(s2);
    if (norm) *norm = n2;
    if (!isfinite(n2)) return loom_error(LOOM_ERANGE, "local DP: the update has a non-finite norm");
    const double f = n2 > clip ? clip / n2 : 1.0, sd = noise * clip;
    const uint64_t stream = loom_dp_stream(LOOM_DP_STREAM_LOCAL, round);
    const size_t nb = (dim + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
    for (size_t b = 0; b < nb; b++) {
        float z[BLOCK];
        size_t i0 = b * BLOCK, len = dim - i0 < BLOCK ? dim - i0 : BLOCK;
        if (sd > 0) {
            loom_rng_normal_fill(seed, stream, i0, len, z);
            for (size_t i = 0; i < len; i++) u[i0 + i] = (float)((double)u[i0 + i] * f + sd * (double)z[i]);
        } else if (f != 1.0) {
            for (size_t i = 0; i < len; i++) u[i0 + i] = (float)((double)u[i0 + i] * f);
        }
    }
    return LOOM_OK;
}
