/* Federated learning, client side (fl/ layer): one client's work in a round, transport-free.
 *
 * A client receives the global trainable vector and a fit configuration, trains on its own data and
 * returns an update (see include/loom/strategy.h for what each strategy expects): the model delta
 * y - x after E local optimizer steps, or for FedSGD the mean gradient at x. Neither this code nor the
 * strategies know how the bytes move: the in-process simulator (include/loom/sim.h) and the network
 * transports call these same functions.
 *
 * The survey's eq. (1) is the inside of loom_client_fit: E steps of the client's optimizer on its local
 * loss (plus FedProx's proximal term or SCAFFOLD's drift correction when configured). */
#ifndef LOOM_FL_H
#define LOOM_FL_H

#include <stddef.h>
#include <stdint.h>

#include "loom/dataset.h"
#include "loom/train.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_SCAFFOLD_OFF = 0, LOOM_SCAFFOLD_OPTION_I = 1, LOOM_SCAFFOLD_OPTION_II = 2 };

typedef struct {
    int local_steps;   /* E: local optimizer steps per round (FedSGD: gradient batches averaged) */
    double prox_mu;    /* FedProx: mu/2 ||w - x||^2 added to the local loss (0 = off) */
    int scaffold;      /* LOOM_SCAFFOLD_*: client control-variate update option */
    int gradient_only; /* 1: return the mean gradient at x (FedSGD) instead of a delta */
} loom_fit_config;

typedef struct {
    double loss;        /* mean training loss over the local steps (before each step) */
    long tokens;        /* target tokens seen */
    int steps;
} loom_fit_result;

/* One round on one client. tr trains `vec` (dim floats: the worker's copy of the trainable vector);
 * `global` (dim) is the round's starting point. Batches come from `data` at steps step0, step0+1, ...
 * (the client's own cumulative step count, so data order continues across rounds). For SCAFFOLD,
 * c_global/c_local (dim) are the server and client control variates; c_local is updated in place and
 * dc (dim) receives c_local_new - c_local_old. update (dim) receives the update. The trainer's optimizer
 * is reset first: each round starts with fresh optimizer state. */
int loom_client_fit(loom_trainer *tr, float *vec, size_t dim, const float *global, loom_batcher *data, uint64_t step0,
                    const loom_fit_config *fc, const float *c_global, float *c_local, float *dc, float *update,
                    loom_fit_result *res);

/* Loss and next-token accuracy of `global` on the batches of `data` (a once-mode batcher: one pass).
 * Sums are token-weighted; *tokens = counted target tokens. */
int loom_client_evaluate(loom_trainer *tr, float *vec, size_t dim, const float *global, loom_batcher *data,
                         double *loss_sum, long *correct, long *tokens);

/* Classification accuracy of `global` on examples idx[0..n) of a classification dataset: each label's
 * verbalizer is scored by its summed log-likelihood after the example's prompt, and the best-scoring
 * label is the prediction. *loss_sum adds the true label's verbalizer loss (per token), *tokens its
 * tokens; *correct counts right predictions, *examples the examples scored. */
int loom_client_evaluate_cls(loom_trainer *tr, float *vec, size_t dim, const float *global, const loom_dataset *ds,
                             const uint32_t *idx, size_t n, double *loss_sum, long *tokens, long *correct,
                             long *examples);

#ifdef __cplusplus
}
#endif
#endif
