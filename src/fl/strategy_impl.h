/* Internal layout of loom_strategy, shared by the strategy implementation files.
 *
 * The generic part (strategy.c) holds the registry, the parameters and the state table; the update
 * pipeline (pipeline.c) forms the round's weighted mean update and, for strategies with control
 * variates, the unweighted sum of control deltas. A strategy only declares its persistent state and
 * applies the step to the global vector. To add a strategy: write its ops in a file of its own and
 * list them in the registry table of strategy.c. */
#ifndef LOOM_STRATEGY_IMPL_H
#define LOOM_STRATEGY_IMPL_H

#include "loom/core.h"
#include "loom/strategy.h"

#include <stdint.h>

/* Element loops go parallel only when the vector is large enough to pay for the threads; every
 * element is computed independently, so the result does not depend on the number of threads. */
#define LOOM_STRATEGY_PAR_MIN 65536
#define LOOM_STRATEGY_MAX_STATE 4

typedef struct {
    const char *name;
    int update_kind;  /* LOOM_UPDATE_DELTA / LOOM_UPDATE_GRADIENT */
    int uses_control; /* updates carry a control delta */
    /* Overrides the generic defaults (may be NULL). */
    void (*defaults)(loom_strategy_params *p);
    /* Declares the persistent state with strategy_state_add (may be NULL). */
    int (*init)(loom_strategy *s);
    /* Applies the round to global (dim floats) from s->mean (and control_sum, n_updates);
     * returns LOOM_OK or an error, in which case global and state must be untouched. */
    int (*step)(loom_strategy *s, float *global);
} loom_strategy_ops;

struct loom_strategy {
    const loom_strategy_ops *ops;
    loom_strategy_params p;
    size_t dim;
    /* inputs of the step being applied (valid only inside loom_strategy_step) */
    const double *mean;        /* (dim) sum_n w_n u_n / sum_n w_n */
    const double *control_sum; /* (dim) sum_n dc_n; NULL unless ops->uses_control */
    size_t n_updates;
    size_t n_state;
    struct {
        const char *name;
        float *data; /* (dim) */
    } state[LOOM_STRATEGY_MAX_STATE];
};

/* Allocates a named state vector of s->dim floats, every element = init; *data receives it. */
int strategy_state_add(loom_strategy *s, const char *name, float init, float **data);

/* x + step rounded to float, except that a zero step leaves x's bits alone (so -0.0 stays -0.0 and a
 * zero learning rate is an exact no-op). */
static inline float strategy_apply(float x, double step) { return step != 0.0 ? (float)((double)x + step) : x; }

extern const loom_strategy_ops loom_strategy_fedavg_ops, loom_strategy_fedprox_ops, loom_strategy_fedsgd_ops,
    loom_strategy_fedavgm_ops, loom_strategy_fedadagrad_ops, loom_strategy_fedadam_ops, loom_strategy_fedyogi_ops,
    loom_strategy_scaffold_ops;

#endif
