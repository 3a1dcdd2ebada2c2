/* Federated learning, client side (fl/ layer): one client's work in a round, transport-free.
 *
 * A client receives a task (the global trainable vector and a fit configuration), trains on its own
 * data with its persistent state (loom_client_state) and returns an update (include/loom/strategy.h
 * says what each strategy expects): the model delta y - x after E local optimizer steps, or for
 * FedSGD the mean gradient at x. Neither this code nor the
 * strategies know how the bytes move: the in-process simulator (include/loom/sim.h) and the network
 * transports call these same functions.
 *
 * Who calls whom: a driver (the simulator's workers, a network client) takes a task from the round
 * engine, calls algo->fit on a worker (loom_client_ctx), wraps the output in a loom_update
 * (include/loom/update.h) and submits it. State: the worker owns the trainer and vector buffers;
 * the client's state (step counter, SCAFFOLD c_i) belongs to the client and is passed in.
 *
 * The survey's eq. (1) is the inside of loom_client_fit: E steps of the client's optimizer on its local
 * loss (plus FedProx's proximal term or SCAFFOLD's drift correction when configured). */
#ifndef LOOM_FL_H
#define LOOM_FL_H

#include <stddef.h>
#include <stdint.h>

#include "loom/dataset.h"
#include "loom/train.h"
#include "loom/update.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_SCAFFOLD_OFF = 0, LOOM_SCAFFOLD_OPTION_I = 1, LOOM_SCAFFOLD_OPTION_II = 2 };

typedef struct {
    int local_steps;   /* E: local optimizer steps per round (FedSGD: gradient batches averaged) */
    double prox_mu;    /* FedProx: mu/2 ||w - x||^2 added to the local loss (0 = off) */
    int scaffold;      /* LOOM_SCAFFOLD_*: client control-variate update option */
    int gradient_only; /* 1: return the mean gradient at x (FedSGD) instead of a delta */
    /* local DP (include/loom/dp.h, --dp local): loom_client_run_fit clips the update to dp_clip and adds
     * N(0, (dp_noise dp_clip)^2) per value (loom_dp_local_privatize) before compression. dp_clip 0: off.
     * The noise is drawn from (dp_seed, or the client's data seed when 0; round): a simulation is
     * reproducible, and a client that keeps its dp_seed secret keeps its noise from the server. */
    double dp_clip;
    double dp_noise;
    uint64_t dp_seed;
    /* DP-SGD (the trainer's dp_sgd): the seed of this client's noise in this round, given to the trainer
     * by loom_client_fit (the trainer's step count restarts every round); loom_client_run_fit sets it to
     * hash2(data seed, round). 0: the trainer's own. */
    uint64_t sgd_noise_seed;
    /* zeroth-order clients (include/loom/zo.h: loom_client_mezo, loom_client_fedkseed). The step's
     * perturbation seeds derive from sgd_noise_seed (hash2(data seed, round), set by loom_client_run_fit). */
    float zo_eps;             /* perturbation scale eps (> 0) */
    float zo_lr;              /* step size: vec -= zo_lr * g * z (>= 0) */
    int zo_restore;           /* LOOM_ZO_RESTORE_COPY (exact) or LOOM_ZO_RESTORE_INPLACE */
    /* Heterogeneous clients (include/loom/hetero.h): which values this client holds and trains, dim
     * bytes of LOOM_MASK_* (include/loom/pipeline.h); NULL = all. The client starts from the global
     * vector with its ABSENT values set to 0 (a truncated LoRA: rank r_i of r_max), trains only the
     * TRAIN values (the gradient of the others is zeroed before clipping, and after every optimizer
     * step FROZEN values are put back to the global ones and ABSENT values to 0, so weight decay moves
     * nothing it should not), and reports 0 for every value it did not train. */
    const uint8_t *mask;
    /* Personalization (include/loom/personal.h; NULL or nothing private = off): loom_client_run_fit
     * trains from the global shared values and the client's own private ones (st->priv), keeps the
     * trained private values in st->priv and reports 0 for them; compression runs over the shared
     * values only. Needs loom_client_local_sgd with local steps (not gradient_only). */
    const struct loom_personal *personal;
} loom_fit_config;

typedef struct {
    double loss;        /* mean training loss over the local steps (before each step) */
    long tokens;        /* target tokens seen */
    int steps;
} loom_fit_result;

/* A client's persistent state, owned by the client side (in the simulator: one per simulated
 * client, kept by the driver, never by the round engine). It survives rounds and is saved in
 * checkpoints, so a resumed run continues bitwise identically. */
typedef struct {
    uint64_t steps; /* local steps taken so far: batches are drawn at steps, steps+1, ... (data order) */
    float *control; /* SCAFFOLD c_i (dim floats), NULL until the client's first SCAFFOLD round */
    size_t dim;     /* length of control (0 while it is NULL) */
    float *residual;     /* error feedback: what compression has not sent yet (residual_dim floats),
                            NULL until the client's first compressed round */
    size_t residual_dim; /* length of residual (0 while it is NULL) */
    float *priv;         /* personalization: the client's private values (priv_dim floats, manifest order
                            of include/loom/personal.h), NULL until its first personalized round */
    size_t priv_dim;
} loom_client_state;

void loom_client_state_init(loom_client_state *s);
/* Releases control and residual; the state is then as after init. */
void loom_client_state_clear(loom_client_state *s);
/* Allocates a zero residual of dim floats if there is none yet (LOOM_EINVAL if it has another length). */
int loom_client_state_residual(loom_client_state *s, size_t dim);

/* Compression with error feedback, on the client before its update is encoded: update += residual,
 * then update is replaced in place by exactly what the server decodes from the update encoded with
 * o (loom_update_encode then loom_update_decode: the lossy round trip, bit for bit), and residual
 * becomes the pre-compression update minus that. So encoding the compressed update again with o
 * gives what the client accounted for, and over rounds sum(sent) + residual = sum(raw updates) up
 * to float rounding: nothing is lost, only delayed (top-k sends every coordinate eventually). The
 * residual is allocated (zeros) on first use. o NULL or codec F32: nothing is done. Errors: those
 * of loom_update_encode (a non-finite value; f16: a value beyond its range), then update and
 * residual are unchanged. */
int loom_client_compress(loom_client_state *st, float *update, size_t dim, const loom_codec_opts *o);
/* Allocates a zero control variate of dim floats if there is none yet. */
int loom_client_state_control(loom_client_state *s, size_t dim);

/* The worker a client algorithm runs on: a trainer over its own copy of the trainable vector. */
typedef struct {
    loom_trainer *tr;
    float *vec; /* (dim) the worker's vector, overwritten by every task */
    size_t dim;
    /* FedKSeed (include/loom/zo.h): the seed pool and the global model it expands to, shared by the
     * workers (NULL otherwise). dim is then the pool's K, vec the trainer's dense vector. */
    struct loom_kseed *kseed;
} loom_client_ctx;

/* What the server hands out for one round (the task), and what fit returns. */
typedef struct {
    int round;                  /* 1-based */
    const float *global;        /* (dim) the round's global vector */
    const float *server_control;/* (dim) SCAFFOLD's c, NULL otherwise */
    loom_batcher *data;         /* the client's training batches (its own data order) */
    loom_fit_config fc;
} loom_fit_task;

typedef struct {
    float *update;        /* (dim) receives the update */
    float *control_delta; /* (dim) receives c_i+ - c_i (SCAFFOLD); may be NULL otherwise */
    loom_fit_result res;
} loom_fit_output;

/* Evaluation task: LM loss/accuracy over `data` (a once-mode batcher), or with ds of kind
 * LOOM_DS_CLASSIFY the classification accuracy over examples idx[0..n) of ds. */
typedef struct {
    const float *global;
    loom_batcher *data;   /* language modelling */
    const loom_dataset *ds; /* classification (data unused) */
    const uint32_t *idx;
    size_t n;
} loom_eval_task;

/* A client algorithm: fit trains one round and writes the update; evaluate scores the global model.
 * Both may be called from any thread with their own ctx. A zeroth-order (MeZO) client, or one with
 * DP-SGD, is another loom_client_algo: nothing on the server side changes. */
typedef struct loom_client_algo {
    const char *name;
    int (*fit)(const loom_client_ctx *ctx, const loom_fit_task *task, loom_client_state *st, loom_fit_output *out);
    int (*evaluate)(const loom_client_ctx *ctx, const loom_eval_task *task, loom_eval_result *res);
} loom_client_algo;

/* Local training with the trainer's optimizer: FedAvg's E steps (eq. 1), FedProx's proximal term,
 * SCAFFOLD's drift correction (options I and II) and FedSGD's mean gradient, as fc says. */
extern const loom_client_algo loom_client_local_sgd;

/* loom_client_local_sgd's fit. The worker's vector starts from task->global; batches come from
 * task->data at steps st->steps, st->steps + 1, ...; on success st->steps advances by
 * fc.local_steps. SCAFFOLD: st->control is c_i (allocated as zeros on first use), updated in place,
 * and out->control_delta receives c_i+ - c_i. The trainer's optimizer is reset first: each round
 * starts with fresh optimizer state. */
int loom_client_fit(const loom_client_ctx *ctx, const loom_fit_task *task, loom_client_state *st,
                    loom_fit_output *out);
/* loom_client_local_sgd's evaluate (dispatches to the two functions below). */
int loom_client_eval(const loom_client_ctx *ctx, const loom_eval_task *task, loom_eval_result *res);

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

/* A client's data as every driver hands it to its algorithm: examples of ds (train for fit, test for
 * evaluation) in batches of B x T, in the data order named by data_seed (the simulator's
 * loom_sim_client_seed(run seed, client index): a networked client with the same index and files
 * draws the same batches). */
typedef struct {
    const loom_dataset *ds;
    const uint32_t *train;
    size_t n_train;
    const uint32_t *test;
    size_t n_test;
    int B, T;
    uint64_t data_seed;
} loom_client_data;

/* One round of a client, as the simulator and `loom client` run it: algo->fit on d's training batches
 * from the task's global vector (and SCAFFOLD's control, or NULL), then local DP when fc->dp_clip > 0,
 * then, when co names a lossy codec,
 * loom_client_compress with error feedback (out->update becomes what the server will decode). */
int loom_client_run_fit(const loom_client_algo *algo, const loom_client_ctx *ctx, const loom_client_data *d, int round,
                        const float *global, const float *control, const loom_fit_config *fc, const loom_codec_opts *co,
                        loom_client_state *st, loom_fit_output *out);
/* The evaluation of global on d's test examples (one pass; classification data by its labels). A
 * client without test examples reports nothing (res zeroed, LOOM_OK). */
int loom_client_run_eval(const loom_client_algo *algo, const loom_client_ctx *ctx, const loom_client_data *d,
                         const float *global, loom_eval_result *res);

#ifdef __cplusplus
}
#endif
#endif
