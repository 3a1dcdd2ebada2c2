/* Zeroth-order federated clients (fl/ layer): MeZO and FedKSeed, training with forward passes only.
 *
 * A perturbation z is a standard-normal vector named by a 64-bit seed and never stored:
 * z_i = loom_rng_normal_at(seed, LOOM_STREAM_ZO_PERTURB, i), regenerated in chunks whenever it is
 * applied. One SPSA step (Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward
 * Passes") on a batch, over the trainable vector theta of any trainable set (full weights or a PEFT
 * set):
 *
 *     theta += eps z;  L+ = L(theta);  theta -= 2 eps z;  L- = L(theta);  restore theta
 *     g = (L+ - L-) / (2 eps)              the projected gradient, ~ grad L . z
 *     theta += c z,  c = (float)(-lr g)    the step, in place
 *
 * Restore: LOOM_ZO_RESTORE_COPY keeps one copy of theta (dim floats) and copies it back, so theta is
 * restored bit for bit (with lr 0 a step changes nothing). LOOM_ZO_RESTORE_INPLACE adds eps z back
 * instead (no copy, MeZO's own way): in float, theta is then restored up to rounding, per value
 * |theta' - theta| <= 2^-24 (|p1| + |p2| + |p3|) with p1 = fl(theta + a), p2 = fl(p1 - 2a),
 * p3 = fl(p2 + a), a = fl(eps z) (three roundings of at most half an ulp each). Every vector update is
 * loom_zo_axpy (v_i = v_i + a z_i), so a replay of the same (seed, scalar) pairs gives the same bits.
 *
 * The clients run on a forward-only trainer (loom_train_config.forward_only: the inference workspace,
 * no gradient, no optimizer state), so a client's memory is the model's plus one inference workspace.
 *
 * MeZO (loom_client_mezo): E = local_steps SPSA steps from the global vector; step s of a round uses
 * the seed hash2(hash2(round seed, LOOM_STREAM_ZO_PERTURB), s), the round seed being
 * fc.sgd_noise_seed (loom_client_run_fit: hash2(client seed, round)). The update is the model delta
 * y - x, as for FedAvg: every server stage works on it unchanged.
 *
 * FedKSeed (Qin et al., ICML 2024; loom_client_fedkseed): the server owns a pool of K seeds,
 * seed_k = hash2(hash2(run seed, LOOM_STREAM_KSEED_POOL), k). Each step a client picks an index k
 * (uniform, or by the importance probabilities below; step s draws from the stream
 * (hash2(round seed, s), LOOM_STREAM_KSEED_PICK)),
 * computes the scalar c_j = -lr g_j of z(seed_k) and steps. Its round update is
 * sum_j c_j z(seed_{k_j}) = sum_k s_k z(seed_k), s_k = the summed scalars of the steps that drew k,
 * so the K-vector s (float sums in step order) describes it exactly. That K-vector is the update the
 * round engine sees: the vector the federation trains has K values, and every pipeline stage runs on
 * it unchanged (the weighted mean, secure aggregation's masked fixed-point sums, DP clipping of each
 * client's K-vector and noise on the per-seed sums, the robust rules per seed). The global K-vector
 * S_r is the running sum of the aggregated per-seed scalars (fedavg, server lr 1), and the global
 * model is its expansion: w_r = w_{r-1} + sum_k (S_r,k - S_{r-1},k) z(seed_k), k ascending, zero
 * differences skipped (loom_kseed_sync): the server and every client that has seen each version
 * replay the same history to the same bits, a client catching up only the new part. (A client that
 * skipped versions applies their differences at once: the same model up to float rounding.)
 *
 * Importance probabilities (FedKSeed's non-uniform sampling): seed k's importance psi_k is the mean
 * |difference| of its scalar over the versions in which it changed (0 before any), normalised to
 * [0, 1] by the largest; p_k = exp(psi_k) / sum_j exp(psi_j). They depend on the history only, so
 * the server and every synced client compute the same ones.
 *
 * On the wire (codec LOOM_CODEC_SEED_SCALAR, include/loom/update.h) the update is the list of the
 * K-vector's non-zero entries as (index, scalar) pairs: at most E pairs, 8 bytes each. */
#ifndef LOOM_ZO_H
#define LOOM_ZO_H

#include <stddef.h>
#include <stdint.h>

#include "loom/fl.h"
#include "loom/train.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_ZO_RESTORE_COPY = 0, LOOM_ZO_RESTORE_INPLACE = 1 };
enum { LOOM_KSEED_UNIFORM = 0, LOOM_KSEED_IMPORTANCE = 1 };

#define LOOM_ZO_EPS_DEFAULT 1e-3f
#define LOOM_ZO_LR_DEFAULT 1e-4f
#define LOOM_KSEED_MAX 1048576 /* seeds in a pool */

/* "copy" / "inplace" -> LOOM_ZO_RESTORE_*; "uniform" / "importance" -> LOOM_KSEED_*; LOOM_EINVAL naming
 * the flag otherwise (--zo-restore, --seed-probs). */
int loom_zo_restore_parse(const char *s, int *mode);
int loom_kseed_probs_parse(const char *s, int *probs);

/* v_i = v_i + a z_i for i < n, z = the perturbation of seed (regenerated in chunks). */
void loom_zo_axpy(float *v, size_t n, uint64_t seed, float a);
/* The seed of MeZO's step s in a round with round seed rs. */
uint64_t loom_zo_step_seed(uint64_t round_seed, uint64_t step);

/* One two-point estimate at vec (the trainer's layout, loom_trainer_dim floats) along z(seed) on one
 * batch: *g = (L+ - L-) / (2 eps) in double, *loss = (L+ + L-) / 2; vec is restored as `restore` says
 * (COPY needs scratch, dim floats; INPLACE ignores it). A non-finite loss is LOOM_ERANGE (vec restored). */
int loom_zo_estimate(loom_trainer *tr, float *vec, const int32_t *tok, const int32_t *tgt, uint64_t seed, float eps,
                     int restore, float *scratch, double *g, float *loss);

/* MeZO: fc.zo_eps, fc.zo_lr, fc.zo_restore; ctx->dim must be the trainer's dim. */
extern const loom_client_algo loom_client_mezo;
/* FedKSeed: ctx->kseed (required), fc.zo_eps, fc.zo_lr, fc.zo_restore; ctx->dim = K (the update), the
 * worker's vector ctx->vec is the trainer's (loom_trainer_dim floats: the dense model). */
extern const loom_client_algo loom_client_fedkseed;

/* ---- FedKSeed's pool and global model ---- */
typedef struct loom_kseed loom_kseed;
/* K seeds from run_seed; the global model starts as init (dim floats, copied) with S = 0. */
int loom_kseed_create(loom_kseed **out, uint64_t run_seed, int K, int probs, const float *init, size_t dim);
void loom_kseed_free(loom_kseed *ks);
int loom_kseed_k(const loom_kseed *ks);
size_t loom_kseed_dim(const loom_kseed *ks);
uint64_t loom_kseed_seed(const loom_kseed *ks, int k);
/* Catches the model up to the global K-vector S (K floats, finite): w += (S_k - S'_k) z_k for the
 * changed k, ascending, S' the last S synced (thread-safe). */
int loom_kseed_sync(loom_kseed *ks, const float *S);
/* The model of the last sync (dim floats); read it only while no sync runs. */
const float *loom_kseed_model(const loom_kseed *ks);
/* The current sampling probabilities (K doubles, summing to 1). */
const double *loom_kseed_probs(const loom_kseed *ks);
/* Step s's seed index for a client with round seed rs (uniform or by the current probabilities). */
int loom_kseed_pick(const loom_kseed *ks, uint64_t round_seed, uint64_t step);

/* One client's FedKSeed round: from vec (the trainer's dim floats, already the global model) E =
 * steps SPSA steps on batches step0.. of data; kvec (K floats) receives the per-seed scalar sums;
 * idx/scal (steps entries each, may be NULL) the pairs in step order; *loss the mean loss
 * (token-weighted), *tokens the target tokens. */
int loom_kseed_fit(const loom_kseed *ks, loom_trainer *tr, float *vec, loom_batcher *data, uint64_t step0, int steps,
                   uint64_t round_seed, float eps, float lr, int restore, float *kvec, uint32_t *idx, float *scal,
                   double *loss, long *tokens);
/* w (the pool's dim floats) += scal[j] z(seed_{idx[j]}) for j < n, in order: a client's round replayed. */
int loom_kseed_replay(const loom_kseed *ks, float *w, const uint32_t *idx, const float *scal, size_t n);

#ifdef __cplusplus
}
#endif
#endif
