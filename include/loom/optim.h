/* Optimizers over flat parameter vectors (optim/ layer): AdamW (as torch.optim.AdamW: decoupled weight
 * decay, bias correction) and SGD with momentum; global-norm gradient clipping; learning-rate
 * schedules. Per-element weight-decay selection comes from an optional mask of ranges. */
#ifndef LOOM_OPTIM_H
#define LOOM_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOOM_OPT_SGD = 0, LOOM_OPT_ADAMW = 1 } loom_opt_kind;

typedef struct {
    loom_opt_kind kind;
    float lr;
    float beta1, beta2, eps; /* AdamW; defaults 0.9, 0.999, 1e-8 */
    float weight_decay;      /* AdamW: decoupled (p -= lr*wd*p); SGD: L2 added to the gradient */
    float momentum;          /* SGD; 0 = plain SGD */
    int nesterov;            /* SGD */
} loom_opt_config;

/* torch defaults: AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01; SGD momentum 0. */
void loom_opt_defaults(loom_opt_config *c, loom_opt_kind kind);
int loom_opt_kind_parse(const char *name, loom_opt_kind *kind);

typedef struct loom_optimizer loom_optimizer;
int loom_optimizer_create(loom_optimizer **out, const loom_opt_config *cfg, size_t n);
void loom_optimizer_free(loom_optimizer *o);
/* Restricts weight decay to the ranges [begin, end) given (e.g. 2-D weights only); default: all. */
int loom_optimizer_decay_ranges(loom_optimizer *o, const size_t *begin, const size_t *end, int count);
/* One step: params[n] updated from grads[n] with learning rate lr (the schedule's value). */
void loom_optimizer_step(loom_optimizer *o, float *params, const float *grads, float lr);
/* The same step in one pass over the gradient, reading grads[i] * gscale (the clip scale of
 * loom_clip_scale; 1 = none) instead of grads[i]: the same bits as scaling the buffer first and then
 * stepping. zero_grad = 1 writes 0 into grads[i] once read, so the next backward can accumulate into
 * the buffer without a separate clearing pass. */
void loom_optimizer_step_ex(loom_optimizer *o, float *params, float *grads, float gscale, float lr, int zero_grad);
long loom_optimizer_steps(const loom_optimizer *o);
/* State for checkpoints: moments (m, v for AdamW; velocity for SGD) and the step count. */
float *loom_optimizer_state(loom_optimizer *o, int which, size_t *n); /* which 0: m/velocity, 1: v */
void loom_optimizer_set_steps(loom_optimizer *o, long t);
void loom_optimizer_reset(loom_optimizer *o);

/* Global L2 norm of g[n]; scales g so the norm is at most max_norm (max_norm <= 0: no clipping).
 * Returns the norm before clipping. The same as loom_grad_norm, then g[i] *= loom_clip_scale(...). */
double loom_clip_grad_norm(float *g, size_t n, double max_norm);
/* Global L2 norm of g[n] (double sums over fixed blocks: independent of the thread count). */
double loom_grad_norm(const float *g, size_t n);
/* The factor clipping multiplies a gradient of this norm by: max_norm / (norm + 1e-6) when
 * norm > max_norm > 0 (torch's clip_grad_norm_), else 1. */
float loom_clip_scale(double norm, double max_norm);

/* Cosine schedule with linear warm-up: lr(step) for step in [0, total). */
float loom_lr_cosine(float base_lr, float min_lr, long step, long warmup, long total);

#ifdef __cplusplus
}
#endif
#endif
