/* Server optimizers ("strategies", fl/ layer): the last stage of the update pipeline.
 *
 * Everything a federated algorithm moves is one contiguous float vector of length `dim`, the
 * trainable set (all weights, or the LoRA matrices, ...). The server holds the global vector x; each
 * participating client n sends one update u_n of the same length with a weight w_n = |D_n|, its number
 * of training examples. The update pipeline (include/loom/pipeline.h) decodes, validates, clips and
 * sums the updates into the weighted mean Delta = sum_n w_n u_n / sum_n w_n (an exact fixed-point sum,
 * so Delta does not depend on the order updates arrive in), optionally adds noise, and then hands
 * Delta to a strategy: loom_strategy_step turns it into the next global vector. A strategy knows
 * nothing of models, transports, threads or how the mean was formed; its memory is its O(dim) state.
 *
 *     loom_strategy_params p;
 *     loom_strategy_defaults("fedadam", &p);         // then override fields, or loom_strategy_params_set
 *     p.server_lr = 0.03;
 *     loom_strategy *s;
 *     if (loom_strategy_create(&s, "fedadam", &p, dim) != LOOM_OK) ... loom_errmsg() ...;
 *     loom_strategy_step(s, global, mean, NULL, n_updates);   // usually called by loom_pipeline_end_round
 *     loom_strategy_free(s);
 *
 * Memory of the aggregation rules (all plug into the pipeline's aggregate stage, include/loom/pipeline.h,
 * as a loom_aggregator_ops): the default fixed-point weighted mean streams in O(dim) memory whatever
 * the number of updates (LOOM_AGG_STREAMING: each update is folded in and forgotten), and so does
 * everything the strategies below do after it (O(dim) state). Every robust rule (median, trimmed-mean,
 * krum, multi-krum, bulyan, norm-bound, geomedian, centered-clip, fltrust: loom_agg_robust) buffers the
 * round's updates, O(n dim) (LOOM_AGG_BUFFERED), because it compares or sorts them all at once.
 *
 * Reproducibility: every element is computed independently in double and rounded once, so the result
 * is bitwise reproducible whatever the number of threads the element loops use. Calls on one strategy
 * object must not overlap (the object is not locked); large vectors are processed with OpenMP.
 *
 * What the clients send (loom_strategy_update_kind):
 *   LOOM_UPDATE_DELTA     u_n = y_n - x: the client's model after local training minus the global model
 *                         it started the round from (loom_update_delta). All strategies but fedsgd.
 *   LOOM_UPDATE_GRADIENT  u_n = the client's mean loss gradient at the global model x over its examples
 *                         (an example-weighted mean of per-batch mean gradients: loom_update_mean_push).
 *                         fedsgd only.
 *
 * Strategies (the defaults are those of loom_strategy_defaults; Delta = sum_n w_n u_n / sum_n w_n is
 * the weighted mean update of the round; all vector operations are element-wise):
 *   fedavg      x <- x + server_lr * Delta. With server_lr = 1 (default) this is eq. (2) of the survey:
 *               the |D_n|-weighted average of the client models (McMahan et al. 2017).
 *   fedprox     server side identical to fedavg (Li et al. 2020). The clients add the proximal term
 *               mu/2 ||w - x||^2 to their local objective (loom_fedprox_grad, loom_fedprox_value);
 *               mu default 0.01 (other strategies default mu to 0: no proximal term).
 *   fedsgd      x <- x - server_lr * G, G = weighted mean gradient; server_lr default 0.01 (it is the
 *               SGD learning rate of the whole federation: tune it).
 *   fedavgm     server momentum (Hsu et al. 2019): v <- momentum * v + Delta; x <- x + server_lr * v.
 *               Defaults server_lr 1, momentum 0.9; v starts at 0. State: "server_momentum".
 *   fedadagrad, fedadam, fedyogi  (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2):
 *               m <- beta1 m + (1 - beta1) Delta
 *               fedadagrad: v <- v + Delta^2
 *               fedadam:    v <- beta2 v + (1 - beta2) Delta^2
 *               fedyogi:    v <- v - (1 - beta2) Delta^2 sign(v - Delta^2)      (sign(0) = 0)
 *               x <- x + server_lr * m / (sqrt(v) + tau)
 *               No bias correction (as in the paper's Algorithm 2). m starts at 0; v starts at v_init,
 *               by default tau^2 (the paper asks v_{-1} >= tau^2; any v_init >= 0 is accepted).
 *               Defaults server_lr 0.01, beta1 0.9, beta2 0.99, tau 1e-3 (the paper tunes eta and tau per
 *               task; these are a common starting point). fedadagrad ignores beta2.
 *               State: "server_m", "server_v".
 *   scaffold    (Karimireddy et al. 2020) with server control variate c and client control variates c_i.
 *               Each update carries, besides the model delta u_n = y_n - x, the control delta dc_n = c_i+ - c_i;
 *               the pipeline sums them unweighted and passes sum_n dc_n to the step.
 *               x <- x + server_lr * Delta           (Delta weighted by |D_n| as everywhere; the paper's
 *                                                     unweighted mean is the case of equal weights)
 *               c <- c + (1/N) sum_{n in S} dc_n      (= (|S|/N) * the unweighted mean control delta, so
 *                                                     that c stays the mean of all N clients' c_i)
 *               N = num_clients, the total client population; 0 (default) means full participation,
 *               N = |S| in every round. server_lr default 1; c starts at 0. State: "server_control"
 *               (also what the server sends to clients each round). Client side: loom_scaffold_*.
 *
 * Checkpoint/resume: state that persists across rounds is a set of named float vectors, each of length
 * dim (loom_strategy_state). Write them (e.g. into a safetensors checkpoint, one F32 tensor each, under
 * their names) between rounds; to resume, create a strategy with the same name and parameters and load
 * each one back (loom_strategy_state_load). The following rounds are then bitwise identical to an
 * uninterrupted run. The hyper-parameters are not part of the state: the caller stores its config.
 */
#ifndef LOOM_STRATEGY_H
#define LOOM_STRATEGY_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_strategy loom_strategy;

/* Hyper-parameters. Unused fields are ignored by strategies that have no use for them, but every field
 * is range-checked so that a typo is caught wherever it is. */
typedef struct {
    double server_lr;   /* eta, >= 0 (0 leaves the global vector unchanged) */
    double momentum;    /* fedavgm beta, in [0, 1) */
    double beta1;       /* adaptive first-moment decay, in [0, 1) */
    double beta2;       /* adaptive second-moment decay, in [0, 1) */
    double tau;         /* adaptivity (the epsilon of Adam), > 0 */
    double v_init;      /* initial second moment, >= 0; a negative value means tau^2 (the default) */
    double mu;          /* proximal coefficient for clients, >= 0 */
    long num_clients;   /* scaffold N >= 0; 0 means full participation (N = |S| in every round) */
} loom_strategy_params;

enum { LOOM_UPDATE_DELTA = 0, LOOM_UPDATE_GRADIENT = 1 };

/* The i-th registered strategy name, NULL past the end (for listings and --help). */
const char *loom_strategy_name_at(size_t i);

/* Fills p with the defaults of strategy `name` (see the table above). Unknown name: LOOM_EINVAL. */
int loom_strategy_defaults(const char *name, loom_strategy_params *p);
/* Sets one field by name ("server_lr" (alias "eta"), "momentum", "beta1", "beta2", "tau", "v_init",
 * "mu", "num_clients"), for configuration files and the command line. Unknown key, or a num_clients that
 * is not a whole number: LOOM_EINVAL.
 * The value is range-checked at loom_strategy_create / loom_strategy_params_check. */
int loom_strategy_params_set(loom_strategy_params *p, const char *key, double value);
/* LOOM_OK, or LOOM_ERANGE with a message naming the first out-of-range parameter. */
int loom_strategy_params_check(const loom_strategy_params *p);

/* Creates strategy `name` for vectors of length dim (> 0). params NULL: the strategy's defaults.
 * Allocates the O(dim) state up front. */
int loom_strategy_create(loom_strategy **out, const char *name, const loom_strategy_params *params, size_t dim);
void loom_strategy_free(loom_strategy *s);

const char *loom_strategy_name(const loom_strategy *s);
const loom_strategy_params *loom_strategy_get_params(const loom_strategy *s);
size_t loom_strategy_dim(const loom_strategy *s);
int loom_strategy_update_kind(const loom_strategy *s);  /* LOOM_UPDATE_DELTA or LOOM_UPDATE_GRADIENT */
int loom_strategy_uses_control(const loom_strategy *s); /* 1 when updates carry a control delta (scaffold) */

/* The server-optimizer step of one round. mean (dim doubles) is the round's weighted mean update
 * Delta (a mean gradient for fedsgd); control_sum (dim doubles) is sum_n dc_n over the round's updates
 * for scaffold (required), NULL for the others (refused otherwise); n_updates (> 0) is the number of
 * updates aggregated. global (dim floats) is read and updated in place, and the persistent state
 * advances. On an error, global and state are untouched. */
int loom_strategy_step(loom_strategy *s, float *global, const double *mean, const double *control_sum,
                       size_t n_updates);

/* Persistent state as named flat vectors of `dim` floats (the names are listed in the table above).
 * The pointers stay valid until loom_strategy_free; write through them between rounds to restore. */
size_t loom_strategy_state_count(const loom_strategy *s);
int loom_strategy_state(loom_strategy *s, size_t i, const char **name, float **data, size_t *len);
/* By name; LOOM_ENOTFOUND if this strategy has no such state. */
int loom_strategy_state_find(loom_strategy *s, const char *name, float **data, size_t *len);
/* Restores state `name` from len floats read back from a checkpoint: LOOM_ENOTFOUND for an unknown
 * name, LOOM_EFORMAT for a length other than dim or a non-finite value (nothing is changed then).
 * (loom_pipeline_state_load refuses it inside an open round.) */
int loom_strategy_state_load(loom_strategy *s, const char *name, const float *data, size_t len);

/* ---- update helpers and validation ---- */

/* delta = local - global (what delta strategies expect from a client). */
void loom_update_delta(float *delta, const float *local, const float *global, size_t dim);
/* Streaming example-weighted mean, for a fedsgd client that computes its gradient batch by batch:
 * starting from *wsum = 0, push each batch's mean gradient x with w = the batch's example count;
 * afterwards `mean` holds the mean gradient over all the client's examples. */
int loom_update_mean_push(float *mean, double *wsum, const float *x, double w, size_t dim);

/* Update validation (loom_update_check) and the refusal reasons live in include/loom/pipeline.h. */

/* ---- FedProx, client side ---- */

/* grad += mu * (w - w_global): the gradient of the proximal term, added to the local loss gradient. */
void loom_fedprox_grad(float *grad, const float *w, const float *w_global, double mu, size_t dim);
/* mu/2 * ||w - w_global||^2, the proximal term's value (to report the local objective). */
double loom_fedprox_value(const float *w, const float *w_global, double mu, size_t dim);

/* ---- SCAFFOLD, client side ----
 * Per round a client receives x (global) and c ("server_control"), keeps its own c_i (initially 0), runs
 * K local steps y <- y - lr * (g(y) - c_i + c) from y = x, then computes c_i+ by option I or II and sends
 * u = y - x and dc = c_i+ - c_i; it keeps c_i+ as its new c_i (loom_client_state, include/loom/fl.h). */

/* grad <- grad - c_local + c_global: the drift correction applied to every local gradient. */
void loom_scaffold_correct(float *grad, const float *c_local, const float *c_global, size_t dim);
/* Option I: c_i+ = the gradient of the client's objective at the global model x (computed by the
 * caller, ideally over more data than one batch); copied into c_new. */
void loom_scaffold_control_option1(float *c_new, const float *grad_at_global, size_t dim);
/* Option II: c_i+ = c_i - c + (x - y_i) / (steps * lr), with y_i the client model after `steps` local
 * steps of learning rate lr (both > 0). c_new may alias c_local. */
int loom_scaffold_control_option2(float *c_new, const float *c_local, const float *c_global, const float *x_global,
                                  const float *y_local, long steps, double lr, size_t dim);
/* dc = c_new - c_old (the control delta an update carries). */
void loom_scaffold_control_delta(float *dc, const float *c_new, const float *c_old, size_t dim);

#ifdef __cplusplus
}
#endif
#endif
