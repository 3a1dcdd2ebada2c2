/* Training steps on one model (optim/ layer): forward, backward, clipping, optimizer, schedule.
 * Used by `loom train`, by federated clients (client_fit) and by `loom bench train`. */
#ifndef LOOM_TRAIN_H
#define LOOM_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "loom/distill.h"
#include "loom/model.h"
#include "loom/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    loom_opt_config opt;   /* optimizer and its base learning rate (opt.lr) */
    float min_lr;          /* cosine floor */
    long warmup;           /* linear warm-up steps */
    long total_steps;      /* schedule length; 0 = constant learning rate */
    float clip;            /* global gradient-norm bound; 0 = none */
    int B, T;              /* batch shape the workspace is sized for */
    int decay_2d_only;     /* weight decay on matrices only (biases, norms, ... excluded) */
    uint64_t seed;         /* LoRA dropout masks (step s uses a stream named by (seed, s)) */
    /* DP-SGD (dp_sgd = 1): each step clips every example's gradient to L2 norm dp_clip, adds
     * N(0, (dp_noise * dp_clip)^2) to each coordinate of the sum of the clipped gradients (the noise
     * stream named by (seed, step), LOOM_STREAM_DP_NOISE), and divides by the batch size B.
     * An example is a batch row; its gradient is that of the row's OWN mean loss (the mean over its
     * valid targets), so one example moves the sum by at most dp_clip whatever the other rows hold; a
     * row without valid targets contributes nothing (its gradient is 0, it still counts in B). With
     * every row holding the same number of targets, sigma = 0 and a clip above every norm, the step is
     * the plain mean-loss step. Global clipping (clip) still applies after the noise if set. */
    int dp_sgd;
    float dp_clip;         /* C > 0 */
    float dp_noise;        /* sigma >= 0, the noise multiplier */
    /* How per-example gradients are computed: 0 (default) one batched backward with the trainable
     * set's weight gradients split per row (loom_backward_ex_rows; B x dim floats) when that buffer
     * fits in LOOM_DP_ROWS_MAX_BYTES, else one forward/backward per row; 1 always the row loop. */
    int dp_row_loop;
    /* Matmul precision (LOOM_PREC_F32, the default, or LOOM_PREC_BF16: see loom_ws_set_precision).
     * On a CPU without AVX-512 BF16 the trainer runs f32: loom_ws_precision(loom_trainer_ws(t)) says
     * which one runs. Master weights, gradients and optimizer state are float either way. */
    int precision;
    /* Forward-only (zeroth-order clients, include/loom/zo.h): the workspace is the inference one
     * (loom_ws_create_infer), and there is no gradient buffer and no optimizer state; compute- and
     * apply-gradient are refused (LOOM_ESTATE), loom_trainer_loss_at and loom_trainer_eval work. */
    int forward_only;
    /* Split learning (include/loom/split.h): with split = 1, compute-gradient runs the model as two parts
     * cut after layer split_layer (0..L): the client part (embeddings, layers 0 .. split_layer - 1) and
     * the server part (the other layers, the final norm, the head and the loss), which exchange the
     * activations at the cut and their gradient (loom_forward_part / loom_backward_part). The gradient
     * has the same bits as the whole model's; apply-gradient clips the client part's gradient and the
     * server part's each by its own norm (neither side sees the other's), so with clip the step equals
     * the whole model's only while both norms stay below it. Not with DP-SGD or forward_only. */
    int split, split_layer;
    /* Knowledge distillation (include/loom/distill.h): with kd_teacher set, each step's loss is
     * kd_alpha * kd_temp^2 * KL(softmax(teacher / kd_temp) || softmax(student / kd_temp))
     * + (1 - kd_alpha) * cross-entropy, over the positions with targets. The teacher is a model with
     * the student's vocabulary (any size, its own parameters kd_teacher_params, NULL for its own
     * buffer), only read, so many trainers may share it; each trainer holds its own inference
     * workspace for it (B x T) and a [B x T, V] buffer of target distributions. kd_alpha = 0 trains
     * exactly as without a teacher (the same bits). Not with dp_sgd nor forward_only. */
    const loom_model *kd_teacher;
    const float *kd_teacher_params;
    float kd_temp;         /* > 0; default 2 */
    float kd_alpha;        /* [0, 1]; default 0.5 */
} loom_train_config;

#define LOOM_DP_ROWS_MAX_BYTES ((size_t)512 << 20)

void loom_train_defaults(loom_train_config *c);

typedef struct loom_trainer loom_trainer;
struct loom_tset;

/* Full fine-tuning: params[m->n_params] is trained in place (it may be m->params, or a client's own copy).
 * This is the FULL trainable set (loom_tset_create_layout with LOOM_PEFT_FULL, whose vector has the
 * model's layout) trained through the same path as any other set. */
int loom_trainer_create(loom_trainer **out, const loom_model *m, float *params, const loom_train_config *c);
/* Parameter-efficient (or any trainable-set) training: vec[loom_tset_dim(ts)] is trained in place; the
 * base (base_params, usually m->params, possibly with a low-precision m->qbase) is only read. With
 * decay_2d_only, weight decay applies to the set's matrices (manifest entries with matrix = 1). */
int loom_trainer_create_peft(loom_trainer **out, const loom_model *m, const float *base_params,
                             const struct loom_tset *ts, float *vec, const loom_train_config *c);
void loom_trainer_free(loom_trainer *t);

/* A step is compute-gradient then apply-gradient; between the two the caller may rewrite the gradient
 * in loom_trainer_grads() (per-example clipping and noise for DP-SGD, a zeroth-order estimate, a
 * gradient received from elsewhere). loom_trainer_step is exactly the two calls in a row.
 *
 * Compute-gradient: forward and backward of a batch tokens/targets [B*T] into loom_trainer_grads()
 * (overwritten). *loss: the batch's mean loss; *n_targets: positions that carry loss (targets >= 0).
 * Either may be NULL. A non-finite loss is LOOM_ERANGE ("loss became non-finite at step N ...": the
 * gradient is then meaningless; *loss holds the value). */
int loom_trainer_compute_gradient(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss,
                                  long *n_targets);
/* Apply-gradient: the gradient hook (if set), global-norm clipping (cfg.clip), one optimizer step at the
 * schedule's learning rate, on whatever loom_trainer_grads() holds. *grad_norm (may be NULL): the norm
 * after the hook and before clipping. A non-finite norm is LOOM_ERANGE and the vector is left unchanged.
 * Two passes over the gradient: its norm, then the optimizer, which multiplies each element by the clip
 * scale as it reads it (the same bits as clipping the buffer first) and writes 0 behind it, so the
 * gradient buffer reads all zeros after a successful apply-gradient and the next compute-gradient
 * accumulates into it without clearing it first. A caller that writes into the buffer must do so through
 * a pointer obtained from loom_trainer_grads() after the last apply-gradient (that call marks the buffer
 * as no longer known to be zero). */
int loom_trainer_apply_gradient(loom_trainer *t, double *grad_norm);
/* One step on a batch: compute-gradient then apply-gradient. loss and grad_norm may be NULL. */
int loom_trainer_step(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss, double *grad_norm);
/* Forward and backward only (no optimizer step): the gradient is left in loom_trainer_grads(). */
int loom_trainer_gradient(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss);
/* Loss of a batch without training, at the trained vector. */
int loom_trainer_eval(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss);
/* Forward-only loss at another vector vec[loom_trainer_dim] in the trained vector's layout (for example
 * vec + eps*z for a zeroth-order estimate): no backward, the gradient buffer is not touched. */
int loom_trainer_loss_at(loom_trainer *t, const float *vec, const int32_t *tokens, const int32_t *targets, float *loss);
float loom_trainer_lr(const loom_trainer *t); /* learning rate of the next step */
/* Called by apply-gradient before clipping and the optimizer step, with the gradient and the current
 * trained vector (n floats each): federated clients add FedProx's proximal gradient or SCAFFOLD's
 * correction here. NULL removes the hook. */
typedef void (*loom_grad_hook)(float *grad, const float *vec, size_t n, void *ud);
void loom_trainer_set_grad_hook(loom_trainer *t, loom_grad_hook fn, void *ud);
/* Tokens per batch (B*T of the workspace) and the model's vocabulary size. */
size_t loom_trainer_batch_tokens(const loom_trainer *t);
void loom_trainer_shape(const loom_trainer *t, int *B, int *T);
int loom_trainer_vocab(const loom_trainer *t);
long loom_trainer_steps(const loom_trainer *t);
loom_optimizer *loom_trainer_optimizer(loom_trainer *t);
loom_ws *loom_trainer_ws(loom_trainer *t);
/* [loom_trainer_dim] the gradient of the last compute-gradient (zeros once apply-gradient consumed it) */
float *loom_trainer_grads(loom_trainer *t);
/* The trained flat vector and its length: the set's vector, or for loom_trainer_create the params. */
size_t loom_trainer_dim(const loom_trainer *t);
float *loom_trainer_vector(loom_trainer *t);
/* Zeroes the optimizer's moments and step count (a federated client starts each round afresh). */
void loom_trainer_reset_optimizer(loom_trainer *t);
/* DP-SGD (cfg.dp_sgd): the per-example gradient norms [B] of the last compute-gradient, before
 * clipping (0 for rows without targets); NULL without DP-SGD. *row_loop (may be NULL): 1 if the
 * trainer computes them by the row loop, 0 by one batched backward. */
const float *loom_trainer_dp_norms(const loom_trainer *t, int *row_loop);
/* DP-SGD: the seed of the noise stream for the following steps (default cfg.seed): step s draws from
 * (seed, hash2(LOOM_STREAM_DP_NOISE, s)). A federated client restarts its step count every round, so
 * it sets a seed of its own per round (loom_client_run_fit: hash2(client seed, round)); otherwise every
 * client would draw the same noise in every round. */
void loom_trainer_set_dp_seed(loom_trainer *t, uint64_t seed);
/* Split learning (cfg.split) across processes. On the client: fn replaces the server part of every
 * compute-gradient: it gets the step number, the cut's activations act[n] and the batch's targets[nt],
 * and must write their gradient into dact[n] and the batch loss into *loss (a networked client sends
 * them to the server: include/loom/split.h); the trainer's gradient then holds the client part's only.
 * NULL: the server part runs in the trainer. */
typedef int (*loom_split_remote)(void *ud, long step, const float *act, size_t n, const int32_t *targets, size_t nt,
                                 float *dact, float *loss);
void loom_trainer_set_split_remote(loom_trainer *t, loom_split_remote fn, void *ud);
/* On the server: one step of the server part from the cut's activations act[n] (B x T' x C) and targets[nt]
 * (B x T): forward, loss (*loss), backward (dact[n] receives the activations' gradient) and the
 * optimizer step on the server part's values, clipped by their own norm. Non-finite activations are
 * refused (LOOM_ERANGE). */
int loom_trainer_split_server_step(loom_trainer *t, const float *act, size_t n, const int32_t *targets, size_t nt,
                                   float *dact, float *loss);
/* Distillation against another source of target distributions (include/loom/distill.h: fn writes
 * q[B * T * V] for a batch's tokens at temperature temp): the loss of the following compute-gradients
 * is alpha * temp^2 * KL(q || softmax(student / temp)) + (1 - alpha) * cross-entropy. fn NULL returns
 * to plain training (or to cfg.kd_teacher's). LOOM_EINVAL for temp <= 0 or alpha outside [0, 1], or
 * with DP-SGD or a forward-only trainer; LOOM_ENOMEM for the [B*T, V] buffer. */
int loom_trainer_set_soft_targets(loom_trainer *t, loom_soft_target_fn fn, void *ud, float temp, float alpha);
/* The mean KL term (nats, at the temperature) of the last distillation step; 0 without distillation. */
double loom_trainer_kd_kl(const loom_trainer *t);
/* The trainable set given to loom_trainer_create_peft (NULL for loom_trainer_create). */
const struct loom_tset *loom_trainer_tset(const loom_trainer *t);

#ifdef __cplusplus
}
#endif
#endif
