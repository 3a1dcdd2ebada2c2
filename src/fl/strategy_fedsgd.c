/* FedSGD (McMahan et al. 2017): each client sends its mean loss gradient at the global model, and the
 * server takes one SGD step on the |D_n|-weighted mean of them, x <- x - server_lr * G. With every
 * client's gradient the mean over its own examples, G is the gradient of the federation's loss over
 * all examples, so a round is one step of centralized full-batch SGD. */
#include "fl/strategy_impl.h"

static int fedsgd_step(loom_strategy *s, float *x) {
    const double *mean = s->mean, lr = s->p.server_lr;
    const size_t dim = s->dim;
#pragma omp parallel for schedule(static) if (dim >= LOOM_STRATEGY_PAR_MIN)
    for (size_t i = 0; i < dim; i++) x[i] = strategy_apply(x[i], -(lr * (mean[i])));
    return LOOM_OK;
}

static void fedsgd_defaults(loom_strategy_params *p) { p->server_lr = 0.01; }

const loom_strategy_ops loom_strategy_fedsgd_ops = {"fedsgd", LOOM_UPDATE_GRADIENT, 0, fedsgd_defaults, NULL,
                                                    fedsgd_step};
