/* FedAvgM (Hsu, Qi and Brown 2019): server momentum on the mean client delta,
 * v <- momentum * v + Delta, x <- x + server_lr * v. The effective step grows towards
 * server_lr / (1 - momentum) while successive rounds agree, which damps client drift noise. */
#include "fl/strategy_impl.h"

static int fedavgm_init(loom_strategy *s) {
    float *v;
    return strategy_state_add(s, "server_momentum", 0.0f, &v);
}

static int fedavgm_step(loom_strategy *s, float *x) {
    const double *mean = s->mean, lr = s->p.server_lr, beta = s->p.momentum;
    float *v = s->state[0].data;
    const size_t dim = s->dim;
#pragma omp parallel for schedule(static) if (dim >= LOOM_STRATEGY_PAR_MIN)
    for (size_t i = 0; i < dim; i++) {
        float vi = (float)(beta * (double)v[i] + mean[i]);
        v[i] = vi;
        x[i] = strategy_apply(x[i], lr * (double)vi);
    }
    return LOOM_OK;
}

const loom_strategy_ops loom_strategy_fedavgm_ops = {"fedavgm", LOOM_UPDATE_DELTA, 0, NULL, fedavgm_init,
                                                     fedavgm_step};
