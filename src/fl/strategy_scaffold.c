/* SCAFFOLD (Karimireddy et al. 2020, "Stochastic Controlled Averaging for Federated Learning").
 * The server keeps a control variate c, the mean of the N clients' control variates c_i; clients
 * correct every local gradient by c - c_i so that their local steps follow the global rather than
 * their own drifting objective. Server step for participants S:
 *     x <- x + server_lr * Delta          (Delta the |D_n|-weighted mean of y_n - x)
 *     c <- c + (1/N) sum_{n in S} dc_n     (dc_n = c_n+ - c_n; unweighted, so c = mean_i c_i holds)
 * N = num_clients, or |S| when num_clients is 0 (full participation). */
#include "fl/strategy_impl.h"
#include "loom/core.h"

static int scaffold_init(loom_strategy *s) {
    float *c;
    return strategy_state_add(s, "server_control", 0.0f, &c);
}

static int scaffold_step(loom_strategy *s, float *x) {
    double n_total = s->p.num_clients > 0 ? (double)s->p.num_clients : (double)s->n_updates;
    if ((double)s->n_updates > n_total)
        return loom_error(LOOM_ESTATE, "scaffold: %zu clients in the round but num_clients is %ld", s->n_updates,
                          s->p.num_clients);
    const double *mean = s->mean, *csum = s->control_sum, lr = s->p.server_lr;
    float *c = s->state[0].data;
    const size_t dim = s->dim;
#pragma omp parallel for schedule(static) if (dim >= LOOM_STRATEGY_PAR_MIN)
    for (size_t i = 0; i < dim; i++) {
        x[i] = strategy_apply(x[i], lr * (mean[i]));
        c[i] = strategy_apply(c[i], csum[i] / n_total);
    }
    return LOOM_OK;
}

const loom_strategy_ops loom_strategy_scaffold_ops = {"scaffold", LOOM_UPDATE_DELTA, 1, NULL, scaffold_init,
                                                      scaffold_step};
