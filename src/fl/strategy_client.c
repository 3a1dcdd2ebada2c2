/* The client side of the strategies: forming updates, FedProx's proximal term, SCAFFOLD's gradient
 * correction and control-variate updates. Arithmetic is done in double per element and rounded once. */
#include <math.h>

#include "loom/core.h"
#include "loom/strategy.h"

void loom_update_delta(float *delta, const float *local, const float *global, size_t dim) {
    for (size_t i = 0; i < dim; i++) delta[i] = (float)((double)local[i] - (double)global[i]);
}

int loom_update_mean_push(float *mean, double *wsum, const float *x, double w, size_t dim) {
    if (!(w > 0 && isfinite(w))) return loom_error(LOOM_EINVAL, "batch weight must be finite and > 0 (got %g)", w);
    if (!(*wsum >= 0 && isfinite(*wsum))) return loom_error(LOOM_EINVAL, "running weight %g is invalid", *wsum);
    double total = *wsum + w;
    if (*wsum == 0) {
        for (size_t i = 0; i < dim; i++) mean[i] = x[i];
    } else {
        /* mean_new = (W mean + w x) / (W + w), written as an increment to stay accurate when w << W. */
        double f = w / total;
        for (size_t i = 0; i < dim; i++) mean[i] = (float)((double)mean[i] + f * ((double)x[i] - (double)mean[i]));
    }
    *wsum = total;
    return LOOM_OK;
}

void loom_fedprox_grad(float *grad, const float *w, const float *w_global, double mu, size_t dim) {
    for (size_t i = 0; i < dim; i++) grad[i] = (float)((double)grad[i] + mu * ((double)w[i] - (double)w_global[i]));
}

double loom_fedprox_value(const float *w, const float *w_global, double mu, size_t dim) {
    double s = 0;
    for (size_t i = 0; i < dim; i++) {
        double d = (double)w[i] - (double)w_global[i];
        s += d * d;
    }
    return 0.5 * mu * s;
}

void loom_scaffold_correct(float *grad, const float *c_local, const float *c_global, size_t dim) {
    for (size_t i = 0; i < dim; i++)
        grad[i] = (float)((double)grad[i] - (double)c_local[i] + (double)c_global[i]);
}

void loom_scaffold_control_option1(float *c_new, const float *grad_at_global, size_t dim) {
    if (c_new == grad_at_global) return;
    for (size_t i = 0; i < dim; i++) c_new[i] = grad_at_global[i];
}

int loom_scaffold_control_option2(float *c_new, const float *c_local, const float *c_global, const float *x_global,
                                  const float *y_local, long steps, double lr, size_t dim) {
    if (steps <= 0) return loom_error(LOOM_EINVAL, "scaffold option II: steps must be > 0 (got %ld)", steps);
    if (!(lr > 0 && isfinite(lr))) return loom_error(LOOM_EINVAL, "scaffold option II: lr must be > 0 (got %g)", lr);
    double inv = 1.0 / ((double)steps * lr);
    for (size_t i = 0; i < dim; i++)
        c_new[i] = (float)((double)c_local[i] - (double)c_global[i] + ((double)x_global[i] - (double)y_local[i]) * inv);
    return LOOM_OK;
}

void loom_scaffold_control_delta(float *dc, const float *c_new, const float *c_old, size_t dim) {
    for (size_t i = 0; i < dim; i++) dc[i] = (float)((double)c_new[i] - (double)c_old[i]);
}
