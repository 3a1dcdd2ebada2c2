/* FedAdagrad, FedAdam, FedYogi: Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2.
 * The server treats the negated mean client delta as a pseudo-gradient and runs an adaptive optimizer
 * on it:
 *     m <- beta1 m + (1 - beta1) Delta
 *     v <- v + Delta^2                                   (adagrad)
 *     v <- beta2 v + (1 - beta2) Delta^2                 (adam)
 *     v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)     (yogi)
 *     x <- x + eta m / (sqrt(v) + tau)
 * without bias correction, as in the paper; m starts at 0 and v at v_init (tau^2 by default, the
 * smallest value the paper's analysis allows). v stays >= 0 in all three rules when it starts >= 0. */
#include <math.h>

#include "fl/strategy_impl.h"

enum { ADAGRAD, ADAM, YOGI };

static int adaptive_init(loom_strategy *s) {
    float *m, *v;
    double v0 = s->p.v_init >= 0 ? s->p.v_init : s->p.tau * s->p.tau;
    int rc = strategy_state_add(s, "server_m", 0.0f, &m);
    if (rc == LOOM_OK) rc = strategy_state_add(s, "server_v", (float)v0, &v);
    return rc;
}

static int adaptive_step(loom_strategy *s, float *x, int variant) {
    const double *mean = s->mean;
    const double eta = s->p.server_lr, b1 = s->p.beta1, b2 = s->p.beta2, tau = s->p.tau;
    float *m = s->state[0].data, *v = s->state[1].data;
    const size_t dim = s->dim;
#pragma omp parallel for schedule(static) if (dim >= LOOM_STRATEGY_PAR_MIN)
    for (size_t i = 0; i < dim; i++) {
        double d = mean[i], d2 = d * d, vi = v[i];
        double mi = b1 * (double)m[i] + (1.0 - b1) * d;
        switch (variant) {
        case ADAGRAD: vi = vi + d2; break;
        case ADAM: vi = b2 * vi + (1.0 - b2) * d2; break;
        default: {
            double diff = vi - d2;
            double sgn = diff > 0 ? 1.0 : diff < 0 ? -1.0 : 0.0;
            vi = vi - (1.0 - b2) * d2 * sgn;
        }
        }
        m[i] = (float)mi;
        v[i] = (float)vi;
        x[i] = strategy_apply(x[i], eta * (double)m[i] / (sqrt((double)v[i]) + tau));
    }
    return LOOM_OK;
}

static int adagrad_step(loom_strategy *s, float *x) { return adaptive_step(s, x, ADAGRAD); }
static int adam_step(loom_strategy *s, float *x) { return adaptive_step(s, x, ADAM); }
static int yogi_step(loom_strategy *s, float *x) { return adaptive_step(s, x, YOGI); }

static void adaptive_defaults(loom_strategy_params *p) {
    p->server_lr = 0.01;
    p->beta1 = 0.9;
    p->beta2 = 0.99;
    p->tau = 1e-3;
}

const loom_strategy_ops loom_strategy_fedadagrad_ops = {"fedadagrad", LOOM_UPDATE_DELTA, 0, adaptive_defaults,
                                                        adaptive_init, adagrad_step};
const loom_strategy_ops loom_strategy_fedadam_ops = {"fedadam", LOOM_UPDATE_DELTA, 0, adaptive_defaults,
                                                     adaptive_init, adam_step};
const loom_strategy_ops loom_strategy_fedyogi_ops = {"fedyogi", LOOM_UPDATE_DELTA, 0, adaptive_defaults,
                                                     adaptive_init, yogi_step};
