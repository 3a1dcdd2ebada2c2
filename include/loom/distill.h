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

/* ---- FedDF: the server's ensemble distillation (fl/feddf.c; Lin et al. 2020) ----
 * After each round's aggregation the server fine-tunes the new global model on unlabeled public text
 * to match the ensemble of the round's clients: client i's model is prev + u_i (the round's starting
 * global plus its update, after clipping), and the target at each position is the plain average
 *     q = (1/n) sum_i softmax(f(prev + u_i) / temp)
 * in the pipeline's content order of the updates (so it does not depend on arrival order). The global
 * model takes `steps` AdamW steps (learning rate lr, no weight decay, clip 1, optimizer state fresh each
 * round) on the distillation loss temp^2 KL(q || softmax(f(global) / temp)) (alpha = 1), each step on B
 * windows of T + 1 tokens of the public text drawn from (seed, LOOM_STREAM_DISTILL, round, step). It is
 * the pipeline's post stage (loom_pipeline_config.post = loom_feddf_post, post_ud = the loom_feddf), so
 * it runs wherever the pipeline runs and knows nothing of the transport. steps = 0 leaves the
 * optimizer's result untouched (plain FedAvg bit for bit). Results do not depend on the thread count. */
struct loom_model;
struct loom_tset;
typedef struct {
    const struct loom_model *m;  /* the model of the federation (only read) */
    const float *base;           /* its frozen base (a trainable set's), or NULL for the model's own buffer */
    const struct loom_tset *ts;  /* the trainable set the federation trains; NULL: the whole model */
    const int32_t *tokens;       /* the public text, tokenized (only read; must outlive the object) */
    size_t n_tokens;             /* > T */
    int steps;                   /* >= 0 */
    float temp;                  /* > 0; default 1 */
    float lr;                    /* >= 0; default 1e-3 */
    int B, T;                    /* windows per step and their length */
    uint64_t seed;
} loom_feddf_config;
void loom_feddf_defaults(loom_feddf_config *c);
typedef struct loom_feddf loom_feddf;
int loom_feddf_create(loom_feddf **out, const loom_feddf_config *c);
void loom_feddf_free(loom_feddf *f);
/* The loom_post_fn of include/loom/pipeline.h (ud = the loom_feddf). */
int loom_feddf_post(void *ud, int round, float *global, const float *prev, const float *const *updates,
                    const double *weights, size_t n);
/* The ensemble's targets for one batch tokens[B * T] (the config's B and T): q[B * T * V] as above. */
int loom_feddf_targets(loom_feddf *f, const float *prev, const float *const *updates, size_t n, const int32_t *tokens,
                       float *q);
/* The public-text window batch of (round, step): tokens[B * T] and targets[B * T] (the next tokens). */
void loom_feddf_batch(const loom_feddf *f, int round, int step, int32_t *tokens, int32_t *targets);
/* Distillation KL (nats, at temp) of the last round's first and last steps (NAN before any). */
void loom_feddf_last_kl(const loom_feddf *f, double *first, double *last);

/* ---- synthetic data from a model (fl/synthetic.c) ----
 * A model (the federation's global model, or a larger teacher) writes n samples of len tokens: each
 * starts with the prompt's tokens and continues by sampling (include/loom/sample.h) from the model's
 * KV-cached decoding, sample k drawing from the stream (seed, hash2(LOOM_STREAM_SYNTH, k)), so the
 * samples depend only on the model, the settings and the seed, never on the thread count. Clients
 * with little data mix them into their training (loom_synth_mix). */
typedef struct {
    int n;                 /* samples (>= 0) */
    int len;               /* tokens per sample, prompt included: prompt_len < len <= the model's positions */
    const int32_t *prompt; /* the first tokens of every sample (prompt_len >= 1) */
    int prompt_len;
    float temperature;     /* 0 = greedy; default 0.8 */
    int top_k;             /* 0 = off */
    float top_p;           /* 1 = off */
    uint64_t seed;
} loom_synth_config;
void loom_synth_defaults(loom_synth_config *c);
/* out[n * len]: the samples, one after another. ts NULL: the model's own weights (base, NULL for its
 * buffer); else the set's vector vec over the frozen base. */
int loom_synth_generate(const struct loom_model *m, const float *base, const struct loom_tset *ts, const float *vec,
                        const loom_synth_config *c, int32_t *out);
/* Appends examples first .. first + n - 1 (the synthetic ones, after the dataset's own) to the training
 * list of every client with fewer than `below` training examples (below 0: every client) and sets
 * part->n_examples to first + n. *mixed (may be NULL): the clients that took them. A client's weight is
 * its training examples, so the synthetic ones count in it. */
struct loom_partition;
int loom_synth_mix(struct loom_partition *part, size_t first, size_t n, size_t below, size_t *mixed);

#ifdef __cplusplus
}
#endif
#endif
