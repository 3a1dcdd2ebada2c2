/* Knowledge distillation (optim/ layer for the loss, fl/ for the server's ensemble distillation).
 *
 * The distillation loss of one position with student logits s[V], a target distribution q[V] at
 * temperature T (for a teacher model q = softmax(t / T)) and label y:
 *
 *     loss = alpha * T^2 * KL(q || softmax(s / T)) + (1 - alpha) * CE(softmax(s), y)
 *
 * and the batch loss is its mean over the positions whose label is valid (0 <= y < V), as the plain
 * cross-entropy's. Its gradient with respect to s is
 *
 *     alpha * T * (softmax(s / T) - q) / n_valid + (1 - alpha) * (softmax(s) - onehot(y)) / n_valid
 *
 * (the T^2 factor keeps the soft term's gradient on the scale of the hard one, as Hinton et al.). With
 * alpha = 0 it is the cross-entropy's gradient bit for bit; with q = softmax(s / T) and alpha = 1 it is 0.
 *
 * The trainer takes the loss through loom_train_config (kd_teacher: a loaded model with the student's
 * vocabulary, possibly larger) or through loom_trainer_set_soft_targets (any producer of q, such as
 * the server's ensemble below). */
#ifndef LOOM_DISTILL_H
#define LOOM_DISTILL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* q[N, V] = softmax(x[N, V] / temp) row by row (q may be x). Each row is computed serially (double
 * sums), so the result does not depend on the thread count. temp > 0. */
void loom_kd_soften(float *q, const float *x, int N, int V, float temp);

/* The distillation gradient of a batch, in place: s[N, V] (student logits) becomes d loss / d s, with
 * loss as above over the rows whose targets[n] is in [0, V) (other rows get a zero gradient), and
 * q[N, V] (target distributions at temp) is overwritten (scratch). *kl (may be NULL): the mean over
 * valid rows of KL(q || softmax(s / temp)) in nats. Returns LOOM_OK or LOOM_ENOMEM. The caller's
 * cross-entropy mean ce gives the loss alpha * temp^2 * kl + (1 - alpha) * ce (loom_kd_loss).
 * temp > 0, alpha in [0, 1]. */
int loom_kd_grad(float *s, float *q, const int32_t *targets, int N, int V, float temp, float alpha, double *kl);
/* alpha * temp^2 * kl + (1 - alpha) * ce (alpha = 0: ce exactly). */
float loom_kd_loss(double kl, float ce, float temp, float alpha);

/* A source of target distributions for the trainer (loom_trainer_set_soft_targets): writes
 * q[B * T * V], the distribution at temperature temp for each position of tokens[B * T]. Returns a
 * LOOM_E* code. It is called from the thread of the trainer's step. */
typedef int (*loom_soft_target_fn)(void *ud, const int32_t *tokens, int B, int T, float temp, float *q);

#ifdef __cplusplus
}
#endif
#endif
