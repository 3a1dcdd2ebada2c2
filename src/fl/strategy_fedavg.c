/* FedAvg (McMahan et al. 2017; eq. (2) of the survey) and FedProx (Li et al. 2020), whose server side
 * is FedAvg's: x <- x + server_lr * Delta, Delta the |D_n|-weighted mean client delta. With server_lr 1,
 * x + Delta is the weighted mean of the client models. */
#include "fl/strategy_impl.h"

static int fedavg_step(loom_strategy *s, float *x) {
    const double *mean = s->mean, lr = s->p.server_lr;
    const size_t dim = s->dim;
#pragma omp parallel for schedule(static) if (dim >= LOOM_STRATEGY_PAR_MIN)
    for (size_t i = 0; i < dim; i++) x[i] = strategy_apply(x[i], lr * (mean[i]));
    return LOOM_OK;
}

/* FedProx's mu only matters to the clients (loom_fedprox_grad); the server passes it on. */
static void fedprox_defaults(loom_strategy_params *p) { p->mu = 0.01; }

const loom_strategy_ops loom_strategy_fedavg_ops = {"fedavg", LOOM_UPDATE_DELTA, 0, NULL, NULL, fedavg_step};
const loom_strategy_ops loom_strategy_fedprox_ops = {"fedprox", LOOM_UPDATE_DELTA, 0, fedprox_defaults, NULL,
                                                     fedavg_step};
