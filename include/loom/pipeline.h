/* The update pipeline (fl/ layer): what the server does with client updates, stage by stage.
 *
 *     decode -> validate -> clip -> aggregate -> noise -> server optimizer
 *
 *   decode     the update's codec turns its payload into dim floats: f32, f16, int8 with per-chunk
 *              scales and top-k (loom_update_decode, include/loom/update.h; a transport decodes before
 *              it submits, the simulator's clients hand over what the codec would deliver). The
 *              seed-scalar slot (zeroth-order clients: a seed and one scalar per step) is reserved.
 *   validate   length = dim, every value finite, L2 norm <= max_norm (0 = no bound), weight a whole
 *              number in [1, LOOM_FX_MAX_WEIGHT] (loom_update_check; refusals carry a reason).
 *   clip       optional: an update with L2 norm above clip_norm is scaled by clip_norm / norm (the norm
 *              bound of DP-FedAvg; 0 = off). After clipping every value must lie within
 *              +-LOOM_FX_MAX_ABS, else the update is refused ("value out of fixed-point range").
 *   aggregate  an aggregator (loom_aggregator_ops). The default is the streaming, order-independent
 *              fixed-point weighted mean below. Buffered aggregators (the robust rules below: Krum,
 *              Bulyan, coordinate-wise median, FLTrust, ...) plug in here with kind LOOM_AGG_BUFFERED:
 *              they keep the round's updates (O(n dim) memory) and pick or combine them in finish();
 *              nothing else changes.
 *   noise      a hook on the round's mean before the optimizer sees it (loom_noise_fn; NULL = identity).
 *              Central DP-FedAvg (the round engine's loom_engine_config.dp, include/loom/dp.h) installs
 *              one: Gaussian noise of scale sigma * clip_norm on the sum, divided by the clients sampled
 *              (after the exact sum, so the noise is added once per round).
 *   optimize   the strategy (include/loom/strategy.h): fedavg, fedsgd, fedprox, fedavgm, fedadagrad,
 *              fedadam, fedyogi, scaffold turn the mean into the next global vector.
 *
 * Who calls whom: a driver (the round engine, include/loom/engine.h, or a test) owns one pipeline.
 * begin_round opens it; loom_pipeline_add may then be called from any number of threads at once (the
 * sum is locked inside); end_round (one thread) finishes the aggregate, applies noise and the
 * strategy. State: the aggregator's O(dim) accumulator lives here for one round; the strategy's
 * persistent state (momentum, moments, server control) lives in the strategy and is checkpointed
 * through loom_pipeline_strategy().
 *
 * ---- The fixed-point weighted sum (LOOM_AGG_FIXED_MEAN, streaming) ----
 *
 * Each coordinate of an accepted update u (a float, after clipping by the factor f <= 1) is rounded
 * once to an integer multiple of 2^-LOOM_FX_FRAC_BITS = 2^-48,
 *     q = rint(f * u * 2^48)                 (round to nearest even, in double: f*u*2^48 is exact
 *                                              up to one rounding of f*u when f != 1)
 * and the round keeps, per coordinate, the exact integer S = sum_n w_n q_n in a signed 128-bit
 * accumulator, plus the exact integer W = sum_n w_n. Integer addition is associative and commutative,
 * so S and W, and hence the mean, are bit-identical for every order of arrival and every split of the
 * work among threads, without keeping the updates. The mean handed on is
 *     Delta = ((double)S / (double)W) * 2^-48.
 * The unweighted control-delta sum of scaffold uses a second accumulator with w = 1, and
 * sum_n dc_n = (double)S_c * 2^-48.
 *
 * Accepted range (anything outside is refused with a reason, never wrapped):
 *   |f u| <= LOOM_FX_MAX_ABS = 2^20 per value       ("value out of fixed-point range")
 *   w whole, 1 <= w <= LOOM_FX_MAX_WEIGHT = 2^32 - 1 ("weight must be a whole number ...")
 *   at most LOOM_FX_MAX_UPDATES = 2^20 updates a round ("round is full")
 * No overflow is possible within these limits: |q| <= 2^20 * 2^48 = 2^68 (2^68 is a double, and
 * rounding is monotone, so rint cannot step past it); |w q| < 2^32 * 2^68 = 2^100; |S| < 2^20 * 2^100
 * = 2^120 < 2^127 - 1 = INT128_MAX. W < 2^20 * 2^32 = 2^52, so W is exact in both uint64 and double.
 * Control sums: |S_c| <= 2^20 * 2^68 = 2^88.
 *
 * Accuracy against the exact weighted mean m of the (clipped) values: each q differs from f u 2^48 by
 * at most 1/2, so S/W differs from m 2^48 by at most 1/2 (a weighted mean of errors of at most 1/2);
 * the conversion of S to double and the division round twice more. Hence
 *     |Delta - m| <= 2^-49 + 2^-52 |m|    (2^-49 = 1.8e-15)
 * while a double running sum in some arrival order is off by up to about (n + 1) 2^-53 sum_n w_n |u_n| / W.
 * Both are far below the float rounding of the global vector for any |x| >= 2^-25. Values smaller
 * than 2^-49 in magnitude round to zero: an update that small moves no float weight >= 2^-25 anyway.
 */
#ifndef LOOM_PIPELINE_H
#define LOOM_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "loom/strategy.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_FX_FRAC_BITS 48
#define LOOM_FX_MAX_ABS 1048576.0               /* 2^20 */
#define LOOM_FX_MAX_WEIGHT 4294967295.0         /* 2^32 - 1 */
#define LOOM_FX_MAX_UPDATES ((size_t)1 << 20)   /* per round */

/* Why an update was refused (or LOOM_UPDATE_ACCEPTED), for counting and for the metrics rows. The
 * first group comes from the pipeline (the update's content), the second from the round engine (the
 * update's place in the protocol). */
typedef enum {
    LOOM_UPDATE_ACCEPTED = 0,
    LOOM_UPDATE_BAD_LENGTH,    /* "wrong length" */
    LOOM_UPDATE_NONFINITE,     /* "non-finite value" */
    LOOM_UPDATE_TOO_LARGE,     /* "norm above bound" */
    LOOM_UPDATE_OUT_OF_RANGE,  /* "value out of fixed-point range" */
    LOOM_UPDATE_BAD_WEIGHT,    /* "invalid weight" */
    LOOM_UPDATE_BAD_CODEC,     /* "unsupported codec" */
    LOOM_UPDATE_BAD_CONTROL,   /* "control delta missing or unexpected" */
    LOOM_UPDATE_ROUND_FULL,    /* "round is full" */
    LOOM_UPDATE_NOT_SAMPLED,   /* "not sampled" */
    LOOM_UPDATE_DUPLICATE,     /* "duplicate" */
    LOOM_UPDATE_LATE,          /* "late" (after the deadline, or after the round closed) */
    LOOM_UPDATE_WRONG_ROUND,   /* "wrong round" (trained on another round's model) */
    LOOM_UPDATE_CLIENT_FAILED, /* "client failure" (the client reported an error instead of an update) */
    LOOM_UPDATE_MISSING,       /* "no update" (sampled, but nothing arrived before the round closed) */
    LOOM_UPDATE_BAD_BOUND,     /* "invalid norm bound" (a configuration error, not the client's) */
    LOOM_UPDATE_STALE,         /* "stale" (asynchronous modes: trained on a version too far behind) */
} loom_update_verdict;

/* The verdict's short text (the "status" of a metrics client row). */
const char *loom_update_verdict_str(loom_update_verdict v);

/* The validate stage on its own: len must equal dim, every value finite, and the L2 norm at most
 * max_norm (max_norm 0 = no bound; a negative or NaN bound is a configuration error: LOOM_EINVAL with
 * verdict LOOM_UPDATE_BAD_BOUND). Accepted: LOOM_OK. Rejected: LOOM_EINVAL (length) or LOOM_ERANGE
 * with the reason as the error message (loom_errmsg). verdict and norm (the L2 norm, computed in
 * double; 0 when not computed) may be NULL; verdict is always written when given. */
int loom_update_check(const float *update, size_t len, size_t dim, double max_norm, loom_update_verdict *verdict,
                      double *norm);

/* ---- aggregators ---- */

typedef enum {
    LOOM_AGG_STREAMING = 0, /* O(dim) memory whatever the number of updates; add() folds and forgets */
    LOOM_AGG_BUFFERED = 1,  /* keeps every update of the round until finish() (Krum, median, ...) */
} loom_agg_kind;

typedef struct loom_aggregator loom_aggregator;

/* An aggregator plugs into the aggregate stage. add() may be called concurrently from several threads
 * (the pipeline serialises calls with a lock, so an implementation needs none), and the result of
 * finish() must not depend on the order of the add() calls. */
typedef struct {
    const char *name;
    loom_agg_kind kind;
    int (*create)(loom_aggregator **out, size_t dim, int with_control);
    void (*free)(loom_aggregator *a);
    void (*begin)(loom_aggregator *a);
    /* Folds u (dim floats) scaled by `scale` (the clip factor, in (0, 1]) with integer weight w, and the
     * control delta dc (dim floats, only when created with_control). The pipeline has already checked
     * the range, so add() cannot fail on valid input. */
    int (*add)(loom_aggregator *a, const float *u, double scale, uint64_t w, const float *dc);
    /* mean (dim) = the weighted mean; control_sum (dim, only with_control) = sum of dc. */
    int (*finish)(loom_aggregator *a, double *mean, double *control_sum);
    /* Optional: create with a rule-specific configuration (loom_pipeline_config.aggregator_config, e.g.
     * a loom_robust_config); when set, the pipeline calls it instead of create(). */
    int (*create_with)(loom_aggregator **out, size_t dim, int with_control, const void *config);
    /* Optional: the round's reference update (dim floats, finite), given once per round between begin
     * and finish: the server's own update on its root data for FLTrust. The aggregator copies it. A rule
     * that needs one and did not get one fails at finish(). NULL: the aggregator takes none. */
    int (*reference)(loom_aggregator *a, const float *ref);
    /* Optional: 1 when this aggregator's configuration needs the reference update (FLTrust), else 0. */
    int (*wants_reference)(const loom_aggregator *a);
} loom_aggregator_ops;

/* The exact fixed-point weighted mean described above (streaming). */
extern const loom_aggregator_ops loom_agg_fixed_mean;

/* ---- heterogeneous clients: masked updates (include/loom/hetero.h) ----
 * A client that holds only part of the vector (a LoRA of lower rank, some layers, B without A) sends
 * its update with a per-coordinate mask the server recomputes itself (nothing extra travels):
 *   LOOM_MASK_TRAIN   the client trained this value: its update enters the sum with its weight
 *   LOOM_MASK_FROZEN  the client held the value fixed (FFA-LoRA's A, FedRA's other layers): left out
 *   LOOM_MASK_ABSENT  the client does not hold the value at all (HetLoRA's truncated rank slots): left
 *                     out, or with mask_pad its zero-padded model (value 0) enters the mean
 * loom_pipeline_add_masked folds only the TRAIN values (the same 128-bit integers, exact for any order)
 * and counts per coordinate the weight W_c of the clients that trained it and A_c of those that lack
 * it; an unmasked update counts in every coordinate. The round's mean is then, per coordinate,
 *     mask_pad = 0:  Delta_c = S_c / W_c                         (0 where W_c = 0: the value stays)
 *     mask_pad = 1:  Delta_c = (S_c - A_c x_c) / (W_c + A_c)     (x the global vector)
 * With strategy fedavg (server_lr 1) mask_pad gives x_c + Delta_c = (sum_i w_i y_ic + sum_absent 0) /
 * (W_c + A_c): the weighted mean of the clients' zero-padded models, HetLoRA's aggregation. Without
 * ABSENT values (or without padding) a coordinate every client trained is bit-identical to the plain
 * mean's ((double)S / (double)W) 2^-48. Masked updates need the fixed-point mean (LOOM_EUNSUPPORTED
 * with another aggregator) and are not combined with a secure sum. */
enum { LOOM_MASK_ABSENT = 0, LOOM_MASK_FROZEN = 1, LOOM_MASK_TRAIN = 2 };

/* ---- the pipeline ---- */

/* Noise stage: called once per round on the weighted mean (dim doubles) before the optimizer, with the
 * total weight W and the number of updates n. Return LOOM_OK, or an error to abort the round's step. */
typedef int (*loom_noise_fn)(void *ud, double *mean, size_t dim, uint64_t total_weight, size_t n_updates,
                             int round);

/* Post stage (optional, after the optimizer): a hook that sees the round's individual updates, for a
 * server step that needs more than their mean (FedDF's ensemble distillation, include/loom/distill.h).
 * With loom_pipeline_config.post set the pipeline keeps a float copy of every accepted update after
 * clipping (O(n dim) memory, as a buffered aggregator) and its weight; end_round runs the aggregate,
 * noise and optimizer stages as always, then post(ud, round, global, prev, updates, weights, n) with
 * global the optimizer's result (read and written in place), prev the global vector the round started
 * from, and the updates ordered by content (weight, then bytes), so that the result never depends on
 * the order of arrival. Masked updates and secure sums are refused (LOOM_EUNSUPPORTED: the stage needs
 * every client's own update). An error from post fails end_round (the optimizer's step is kept). */
typedef int (*loom_post_fn)(void *ud, int round, float *global, const float *prev, const float *const *updates,
                            const double *weights, size_t n);

typedef struct {
    size_t dim;
    const char *strategy;          /* server optimizer name (default "fedavg") */
    loom_strategy_params sp;       /* its parameters (loom_strategy_defaults) */
    double max_norm;               /* validate: refuse updates with a larger L2 norm (0 = no bound) */
    double clip_norm;              /* clip: scale larger updates down to this L2 norm (0 = off) */
    loom_noise_fn noise;           /* noise stage (NULL = identity) */
    void *noise_ud;
    const loom_aggregator_ops *aggregator; /* NULL = loom_agg_fixed_mean */
    const void *aggregator_config;         /* given to aggregator->create_with (NULL = its defaults) */
    int mask_pad;                  /* masked updates: ABSENT values count as zero-padded models (above) */
    loom_post_fn post;             /* post stage (above; NULL = none) */
    void *post_ud;
} loom_pipeline_config;

typedef struct loom_pipeline loom_pipeline;

/* Defaults: fedavg with its defaults, no bound, no clipping, no noise, the fixed-point mean. */
void loom_pipeline_defaults(loom_pipeline_config *c, size_t dim);
/* Creates the strategy and the aggregator (O(dim) memory up front). A negative or NaN max_norm or
 * clip_norm, a clip_norm above LOOM_FX_MAX_ABS, or a bad strategy: LOOM_EINVAL/LOOM_ERANGE naming it. */
int loom_pipeline_create(loom_pipeline **out, const loom_pipeline_config *c);
void loom_pipeline_free(loom_pipeline *p);

/* The server optimizer (for its name, update kind, state and checkpointing). */
loom_strategy *loom_pipeline_strategy(loom_pipeline *p);
size_t loom_pipeline_dim(const loom_pipeline *p);

/* Opens a round. A round already open: LOOM_ESTATE. */
int loom_pipeline_begin_round(loom_pipeline *p, int round);
/* validate -> clip -> aggregate one decoded update (len floats) with weight w = |D_n| (a whole number
 * in [1, LOOM_FX_MAX_WEIGHT]) and, for scaffold, its control delta dc (dim floats; NULL otherwise).
 * Accepted: LOOM_OK. Refused: LOOM_EINVAL or LOOM_ERANGE with the reason in loom_errmsg and in
 * *verdict; the round goes on. Outside a round: LOOM_ESTATE. Thread-safe between begin_round and
 * end_round. verdict and norm (the norm before clipping) may be NULL. */
int loom_pipeline_add(loom_pipeline *p, const float *u, size_t len, double w, const float *dc,
                      loom_update_verdict *verdict, double *norm);
/* loom_pipeline_add with the client's coordinate mask (dim bytes of LOOM_MASK_*; NULL = plain add).
 * Only the TRAIN values enter the sum (see "masked updates" above); validation and clipping are those
 * of loom_pipeline_add over the whole update. Another aggregator than the fixed-point mean:
 * LOOM_EUNSUPPORTED (verdict "unsupported codec"). */
int loom_pipeline_add_masked(loom_pipeline *p, const float *u, size_t len, double w, const float *dc,
                             const uint8_t *mask, loom_update_verdict *verdict, double *norm);
/* The validate and clip stages of loom_pipeline_add without adding (any time, any thread): LOOM_OK
 * when loom_pipeline_add would accept the update in an open round with room. A network server checks an
 * upload with it before storing it, and adds the stored updates when the round closes. */
int loom_pipeline_check(const loom_pipeline *p, const float *u, size_t len, double w, const float *dc,
                        loom_update_verdict *verdict, double *norm);
/* Same from a client's model y (dim floats) and the global model x it started from: u = y - x. */
int loom_pipeline_add_model(loom_pipeline *p, const float *y, const float *x, double w, const float *dc,
                            loom_update_verdict *verdict);
/* Accepted updates and their total weight in the open round (0 outside a round). */
size_t loom_pipeline_num_added(const loom_pipeline *p);
uint64_t loom_pipeline_total_weight(const loom_pipeline *p);
/* aggregate (finish) -> noise -> optimizer: writes the next global model into global (dim floats, read
 * and written in place). A round with no accepted update fails with LOOM_ESTATE and leaves global and
 * state untouched; the round is closed either way. */
int loom_pipeline_end_round(loom_pipeline *p, float *global);
/* Closes the round without applying it (too few usable updates): global and state stay as they were. */
void loom_pipeline_abort_round(loom_pipeline *p);
/* One whole round from updates in memory: begin, add each (the first refusal fails the call and closes
 * the round, global untouched), end. */
int loom_pipeline_aggregate(loom_pipeline *p, float *global, const float *const *updates, const double *weights,
                            const float *const *control_deltas, size_t n);
/* The open round's reference update (len = dim floats, every value finite), for an aggregator that
 * takes one (loom_aggregator_ops.reference: FLTrust's server update); copied. Outside a round:
 * LOOM_ESTATE; an aggregator without the hook: LOOM_EUNSUPPORTED; a bad length or value: LOOM_EINVAL.
 * Thread-safe like loom_pipeline_add. */
int loom_pipeline_set_reference(loom_pipeline *p, const float *ref, size_t len);
/* 1 when the pipeline's aggregator takes a reference update (the driver must then compute one). */
int loom_pipeline_wants_reference(const loom_pipeline *p);
/* The clip stage's norm for the coming rounds (DP's adaptive clipping): between rounds only (inside an
 * open round: LOOM_ESTATE); 0 = off; a negative, NaN or too large value: LOOM_EINVAL. */
int loom_pipeline_set_clip(loom_pipeline *p, double clip_norm);
double loom_pipeline_clip(const loom_pipeline *p);
/* Restores strategy state `name` (loom_strategy_state_load); inside an open round: LOOM_ESTATE. */
int loom_pipeline_state_load(loom_pipeline *p, const char *name, const float *data, size_t len);

/* ---- secure aggregation: a round's updates as one sum ----
 * A secure-sum backend (secure aggregation, Paillier) delivers only the weighted sum of the updates it
 * received, never the updates. loom_pipeline_add_sum folds sum (len = dim doubles, sum_n w_n u_n as
 * the backend decoded it), its total weight and the number of updates it holds into the round as if
 * they had been added one by one: each value is rounded once to the 2^-48 grid (exact for a secure
 * sum's 2^-24 grid), and noise and the strategy run after it as usual. The clip stage cannot apply to
 * a sum (the clients clip before they encode). Refused (LOOM_EINVAL / LOOM_ERANGE / LOOM_EUNSUPPORTED,
 * the round goes on): a length other than dim, a non-finite value, |sum_i| > LOOM_FX_MAX_ABS * total
 * weight, a total weight outside [n_updates, n_updates * LOOM_FX_MAX_WEIGHT], an aggregator other than
 * the fixed-point mean (a robust aggregator needs the updates), a strategy with control variates.
 * Outside a round: LOOM_ESTATE. Thread-safe like loom_pipeline_add. */
int loom_pipeline_add_sum(loom_pipeline *p, const double *sum, size_t len, uint64_t total_weight, size_t n_updates);

/* ---- a round shared by several processes (loom sim --mpi, include/loom/mpi.h) ----
 * Each process adds its own clients' updates to its own pipeline; the round's exact fixed-point sum is
 * then the sum of theirs. loom_pipeline_share_export writes the open round's state as
 * loom_pipeline_share_len(p) signed 64-bit integers:
 *     [0] W (total weight)   [1] n (updates added)
 *     [2 + 3i .. 4 + 3i]     S_i as three limbs l0 + l1 2^40 + l2 2^80 (l0, l1 in [0, 2^40), |l2| < 2^40)
 *     then the same three limbs of the control sum per coordinate (strategies with control variates)
 * Summing the words element-wise over P processes (MPI_SUM over int64, any order) sums W, n and each
 * limb exactly as long as P < 2^23 (P 2^40 < 2^63), and l0 + l1 2^40 + l2 2^80 of the sums is the sum of
 * the S_i: loom_pipeline_share_import replaces the open round's state by such a sum (the same words), so
 * end_round then gives bit for bit what one pipeline holding every update would. The fixed-point mean
 * only, without masked updates (else LOOM_EUNSUPPORTED); outside a round LOOM_ESTATE; an imported n
 * above LOOM_FX_MAX_UPDATES or a W outside [n, n (2^32 - 1)] is refused with LOOM_ERANGE. Driver's
 * thread, while no add runs. */
size_t loom_pipeline_share_len(const loom_pipeline *p);
int loom_pipeline_share_export(loom_pipeline *p, int64_t *words);
int loom_pipeline_share_import(loom_pipeline *p, const int64_t *words);

/* ---- robust aggregators (src/fl/agg_robust.c; LOOM_AGG_BUFFERED) ----
 * Byzantine-robust rules over the n updates of a round (u_1..u_n, dim floats each, after clipping; the
 * pipeline's weights w_n). Each keeps the round's updates (O(n dim) memory) and combines them in
 * finish(). Before combining, the held updates are sorted by a key of their content (a 64-bit hash
 * of the bytes, then the weight, then the bytes), so the result does not depend on the order of add().
 * f is the number of Byzantine updates a rule is configured to tolerate.
 *
 *   median        coordinate-wise median (unweighted; an even n takes the mean of the two middle
 *                 values). Parallel over coordinates: for n <= 256 a sorting network (Batcher's odd-even
 *                 merge sort of the next power of two, the comparators within n, pruned to the ranks
 *                 needed) run over 32 coordinates at once, else selection; both exact. Assumes n >= 1.
 *   trimmed-mean  per coordinate, drop the k = floor(beta n) smallest and k largest values and average
 *                 the rest (unweighted; the kept values summed in double in ascending order, so the
 *                 result equals that of a full sort). Assumes 0 <= beta < 0.5 and 2k < n.
 *   krum          the update with the smallest score, score_i = the sum of the n - f - 2 smallest
 *                 squared distances ||u_i - u_j||^2, j != i (Blanchard et al. 2017). Pairwise distances
 *                 from one Gram matrix G = U U^T of the n x dim update matrix (a blocked product in
 *                 double: 4 x 4 tiles over fixed column stripes, each sum in a fixed order):
 *                 ||a - b||^2 = max(0, G_aa + G_bb - 2 G_ab). Assumes n >= 2f + 3.
 *   multi-krum    the weighted mean of the m updates with the smallest Krum scores (m = 0: n - f).
 *                 Assumes n >= 2f + 3 and 1 <= m <= n - f.
 *   bulyan        (El Mhamdi et al. 2018) theta = n - 2f updates chosen by repeated Krum: from the
 *                 remaining set R (all n at first) take the update with the smallest score over R (the
 *                 sum of its |R| - f - 2 smallest squared distances to the others in R, no term when
 *                 that count is <= 0; distances from the one Gram matrix), remove it from R, repeat.
 *                 Then per coordinate, of the theta chosen values sorted, the beta = theta - 2f values
 *                 closest to their median (odd theta: the middle value; even theta: the mean of the two
 *                 middle values, in double) are averaged (unweighted, summed in ascending order). The
 *                 beta values are taken one by one outward from the middle, the closer of the next value
 *                 below and the next above each time (distances in double); at equal distance the one
 *                 below is taken. Assumes n >= 4f + 3 (so beta >= 3).
 *   norm-bound    the weighted mean of the updates, each scaled to L2 norm at most `bound`
 *                 (Sun et al. 2019). Assumes bound > 0.
 *   geomedian     the weighted geometric median argmin_z sum_i w_i ||z - u_i|| by smoothed Weiszfeld
 *                 iterations (RFA, Pillutla et al. 2022): z <- sum_i b_i u_i / sum_i b_i with
 *                 b_i = w_i / max(nu, ||z - u_i||), from the weighted mean, at most `iters` steps, until
 *                 the objective improves by less than 1e-10 of itself. Assumes iters >= 1, nu > 0.
 *   centered-clip (Karimireddy, He and Jaggi 2021) cc_iters times
 *                     v <- v + (1/n) sum_i (u_i - v) min(1, tau / ||u_i - v||)
 *                 (unweighted; a term with u_i = v is zero), from v = `center` (loom_robust_aggregate;
 *                 NULL = the zero vector). The pipeline's plug starts each round from the previous
 *                 round's aggregate (the zero vector in its first round) and keeps it itself: it is not
 *                 part of any checkpoint, so a resumed run restarts it from zero. Assumes tau > 0 and
 *                 cc_iters >= 1.
 *   fltrust       (Cao et al. 2021) with the server's reference update g0 (its own update on its root
 *                 data): trust TS_i = max(0, cos(u_i, g0)) (0 when u_i = 0), each u_i rescaled to
 *                 ||g0||, aggregate = sum_i TS_i (||g0|| / ||u_i||) u_i / sum_i TS_i (unweighted). All
 *                 TS_i zero, or g0 = 0: the zero update. g0 is `server_update` (loom_robust_aggregate) or
 *                 the round's reference update (loom_pipeline_set_reference); without one the round
 *                 fails at finish with LOOM_EINVAL ("fltrust: the server update is missing ...").
 * Score ties (Krum, Bulyan) are broken by the sorted order, so the choice is deterministic. A
 * configuration that breaks its assumption is refused with LOOM_EINVAL naming the parameter (at create
 * for the parameters alone, at finish when n is known). Control variates (scaffold) are not supported.
 * Results do not depend on the number of threads (every double sum has a fixed order). */

typedef enum {
    LOOM_ROBUST_MEDIAN = 0,
    LOOM_ROBUST_TRIMMED_MEAN,
    LOOM_ROBUST_KRUM,
    LOOM_ROBUST_MULTI_KRUM,
    LOOM_ROBUST_NORM_BOUND,
    LOOM_ROBUST_GEOMEDIAN,
    LOOM_ROBUST_BULYAN,
    LOOM_ROBUST_CENTERED_CLIP,
    LOOM_ROBUST_FLTRUST,
} loom_robust_rule;

typedef struct {
    loom_robust_rule rule;
    int f;        /* krum, multi-krum, bulyan: Byzantine updates tolerated (>= 0) */
    int m;        /* multi-krum: updates averaged (0 = n - f) */
    double beta;  /* trimmed-mean: fraction cut from each end, in [0, 0.5) */
    double bound; /* norm-bound: L2 norm bound (> 0) */
    int iters;    /* geomedian: most Weiszfeld steps (>= 1) */
    double nu;    /* geomedian: smoothing, the smallest distance used (> 0) */
    double tau;   /* centered-clip: clipping radius (> 0, finite) */
    int cc_iters; /* centered-clip: clipping steps (>= 1) */
    const double *center;       /* centered-clip, loom_robust_aggregate only: start v (dim; NULL = 0) */
    const float *server_update; /* fltrust, loom_robust_aggregate only: g0 (dim, finite; NULL = missing) */
} loom_robust_config;

/* Defaults for `rule`: f = 0, m = 0, beta = 0.1, bound = 1, iters = 100, nu = 1e-6, tau = 1,
 * cc_iters = 1, center = NULL, server_update = NULL. */
void loom_robust_defaults(loom_robust_config *c, loom_robust_rule rule);
/* "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "norm-bound", "geomedian",
 * "centered-clip", "fltrust" -> rule; anything else LOOM_EINVAL. */
int loom_robust_rule_parse(const char *name, loom_robust_rule *rule);
const char *loom_robust_rule_name(loom_robust_rule rule);
/* The rule's assumption for n updates (n = 0: the parameters alone). LOOM_OK or LOOM_EINVAL naming
 * the broken parameter (f, m, beta, bound, iters, nu, tau) and its value. */
int loom_robust_check(const loom_robust_config *c, size_t n);

/* The pipeline's plug: aggregator = &loom_agg_robust, aggregator_config = a loom_robust_config (copied
 * at create; NULL = median; its center and server_update pointers are not used: see centered-clip and
 * fltrust above). It takes a reference update (loom_pipeline_set_reference) for fltrust only, and
 * wants one (loom_pipeline_wants_reference) for fltrust. */
extern const loom_aggregator_ops loom_agg_robust;

/* One rule on n updates in memory (updates[i]: dim floats, finite; weights NULL = all 1, else whole
 * numbers >= 1): out (dim doubles) = the aggregate. selected (n ints, may be NULL) = 1 for the updates
 * Krum/Multi-Krum/Bulyan chose, else 0 (all 1 for the other rules), in the order given. */
int loom_robust_aggregate(const loom_robust_config *c, double *out, const float *const *updates,
                          const double *weights, size_t n, size_t dim, int *selected);

#ifdef __cplusplus
}
#endif
#endif
