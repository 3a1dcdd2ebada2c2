/* Differential privacy accounting (fl/ layer): the RDP accountant of the sampled Gaussian mechanism.
 *
 * The mechanism: each step samples every example (or client) with probability q (Poisson sampling),
 * clips each contribution to L2 norm C and adds Gaussian noise of standard deviation sigma * C to the
 * sum (add/remove-one adjacency). Its Renyi DP of order alpha for one step is rdp1(alpha) = log(A_alpha)
 * / (alpha - 1), computed exactly as Mironov, Talwar and Zhang (2019, arXiv:1908.10530, sec. 3.3)
 * give it and Opacus computes it: a finite binomial sum for integer alpha, the alternating series with
 * erfc terms for fractional alpha (stopped at the first term below e^-30). T steps compose to T * rdp1.
 * The conversion to (epsilon, delta) is Balle et al. (2020, arXiv:1905.09982, thm. 21):
 *     epsilon(alpha) = rdp(alpha) - (log delta + log alpha) / (alpha - 1) + log((alpha - 1) / alpha),
 * minimised over the orders (the first minimum wins). The default orders are Opacus's:
 * 1.1, 1.2, ..., 10.9, 12, 13, ..., 63 (151 orders). tests/test_dp.c reproduces
 * ../shared/reference/dp to a relative error below 1e-9 with the same optimal order. */
#ifndef LOOM_DP_H
#define LOOM_DP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_DP_N_ORDERS 151
/* The default orders (LOOM_DP_N_ORDERS of them). */
const double *loom_dp_default_orders(void);

/* RDP of order alpha (> 1) of one step of the sampled Gaussian mechanism with sampling rate q in
 * [0, 1] and noise multiplier sigma >= 0 (q = 0: 0; sigma = 0: +inf; q = 1: alpha / (2 sigma^2)). */
double loom_dp_rdp(double q, double sigma, double alpha);

/* epsilon at delta after `steps` steps, minimised over orders (NULL, 0: the default orders); *order
 * receives the optimal order. Bad arguments (q outside [0, 1], sigma < 0, steps < 0, delta outside
 * (0, 1), an order <= 1): LOOM_EINVAL naming the parameter. */
int loom_dp_epsilon(double q, double sigma, double steps, double delta, const double *orders, size_t n_orders,
                    double *epsilon, double *order);

/* The smallest noise multiplier whose epsilon after `steps` steps at delta is at most target_epsilon
 * (to a relative 1e-9 in sigma), by bisection; *epsilon receives the epsilon it gives. A target no
 * sigma up to 1e6 reaches: LOOM_ERANGE. */
int loom_dp_sigma(double q, double steps, double delta, double target_epsilon, double *sigma, double *epsilon);

/* ---- client-level DP of a federated run (DP-FedAvg; fl/dp_fedavg.c) ----
 *
 * Three modes (the --dp flag of loom sim and loom server):
 *   central  DP-FedAvg with a trusted server (McMahan et al. 2018, "Learning Differentially Private
 *            Recurrent Language Models"): the server clips each client's update to L2 norm S (clip),
 *            sums the clipped updates with weight 1 each (so one client moves the sum by at most S),
 *            adds N(0, sigma^2 S^2) to every coordinate of the sum and divides by the number of clients
 *            sampled for the round, m (a fixed denominator: dropped clients count as zero updates, and
 *            the estimate's sensitivity is S / m whatever happens). Accounting: client-level,
 *            add/remove-one client, sampled Gaussian mechanism with q = m / N per round (the
 *            fixed-size sample is accounted as Poisson sampling with that q), one step per round.
 *   local    each client clips its own update to S and adds N(0, sigma^2 S^2) before sending
 *            (loom_dp_local_privatize, in loom_client_run_fit). The server sees every release, so
 *            there is no amplification by sampling; neighbouring = replacing one client's whole data,
 *            sensitivity 2S per release: each release is a Gaussian mechanism with noise multiplier
 *            sigma / 2 relative to its sensitivity, composed over every round so far (a client may be
 *            sampled in each): q = 1, sigma / 2, one step per round.
 *   sgd      the clients train with DP-SGD (loom_train_config.dp_sgd): example-level DP for each
 *            client's data; the run's epsilon is the worst client's, q = B / its examples (sgd_q),
 *            sgd_steps steps per round, every round so far.
 * Every mode weights each client 1 in the server's mean (weights by examples would change with one
 * example or one client beyond what the clip bounds); the example counts still travel in the update
 * header and in the metrics rows, outside the guarantee.
 *
 * Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping";
 * central mode only): with target quantile gamma in (0, 1), each round the server counts the
 * accepted clients whose update norm was at most the round's clip C, adds N(0, sigma_b^2) to the
 * count (sigma_b = bits_noise, default m / 20), b = noisy count / m, and the next round's clip is
 *     C <- C * exp(-eta (b - gamma))                           (eta = clip_lr, default 0.2);
 * the update's noise multiplier becomes sigma_delta = (sigma^-2 - (2 sigma_b)^-2)^(-1/2), so that
 * the two releases together cost what one Gaussian mechanism of multiplier sigma costs (the
 * paper's theorem): the accounting uses sigma. sigma_b must exceed sigma / 2.
 *
 * Noise streams: central round r draws coordinate i from loom_rng_normal_at(run seed,
 * loom_dp_stream(LOOM_DP_STREAM_CENTRAL, r), i); the adaptive count from (run seed,
 * loom_dp_stream(LOOM_DP_STREAM_BITS, r)); a local client from (its seed, loom_dp_stream(
 * LOOM_DP_STREAM_LOCAL, r)). All are families of LOOM_STREAM_DP_NOISE (include/loom/streams.h). */

typedef enum {
    LOOM_DP_OFF = 0,
    LOOM_DP_SGD = 1,
    LOOM_DP_CENTRAL = 2,
    LOOM_DP_LOCAL = 3,
} loom_dp_mode;

/* "sgd", "central", "local" (and "off"); anything else: LOOM_EINVAL naming --dp. */
int loom_dp_mode_parse(const char *s, loom_dp_mode *m);
const char *loom_dp_mode_name(loom_dp_mode m);

#define LOOM_DP_DEFAULT_DELTA 1e-5
#define LOOM_DP_DEFAULT_CLIP_LR 0.2

typedef struct {
    loom_dp_mode mode;      /* LOOM_DP_OFF: none of the rest applies */
    double clip;            /* S (central: the initial clip with adaptive clipping; local; sgd: C) > 0 */
    double noise;           /* sigma >= 0, the noise multiplier the accounting uses */
    double delta;           /* in (0, 1) (default LOOM_DP_DEFAULT_DELTA) */
    double epsilon_budget;  /* refuse a run whose epsilon would exceed it before its last round (0: none) */
    double quantile;        /* adaptive clipping's target quantile gamma in (0, 1) (0: a fixed clip) */
    double clip_lr;         /* eta > 0 (default LOOM_DP_DEFAULT_CLIP_LR) */
    double bits_noise;      /* sigma_b > 0 (0: m / 20) */
    double sgd_q;           /* sgd: B / the fewest training examples of any client, in (0, 1] */
    double sgd_steps;       /* sgd: DP-SGD steps per client and round (the local steps) */
} loom_dp_config;

void loom_dp_config_defaults(loom_dp_config *c);

/* The mechanism a run composes once per round: `steps` steps of the sampled Gaussian mechanism of rate
 * q and noise multiplier sigma (central: m / N, sigma, 1; local: 1, sigma / 2, 1; sgd: sgd_q, sigma,
 * sgd_steps). Also validates c (a bad value: LOOM_EINVAL naming its flag). n_clients = N, per_round = m. */
typedef struct {
    double q, sigma, steps;
} loom_dp_mechanism;
int loom_dp_run_mechanism(const loom_dp_config *c, int n_clients, int per_round, loom_dp_mechanism *m);
/* epsilon after `rounds` rounds (0 rounds: 0; sigma 0: +inf). */
int loom_dp_run_epsilon(const loom_dp_config *c, int n_clients, int per_round, int rounds, double *epsilon);
/* The budget check before round 1: LOOM_OK when there is no budget or epsilon after `rounds` rounds is
 * within it; else LOOM_ERANGE with a message giving the epsilon the run would reach, the round the
 * budget runs out at, the --dp-noise that fits the budget (loom_dp_sigma) and the --rounds that fit. */
int loom_dp_run_budget(const loom_dp_config *c, int n_clients, int per_round, int rounds);

enum { LOOM_DP_STREAM_CENTRAL = 1, LOOM_DP_STREAM_BITS = 2, LOOM_DP_STREAM_LOCAL = 3 };
/* The stream of round `round` (1-based) of a kind: hash2(hash2(LOOM_STREAM_DP_NOISE, kind), round). */
uint64_t loom_dp_stream(int kind, int round);

/* x[i] += std * loom_rng_normal_at(seed, stream, i) for i < n (in parallel on long vectors; the values
 * do not depend on the thread count). std 0 leaves x untouched. */
void loom_dp_add_noise(double *x, size_t n, double std, uint64_t seed, uint64_t stream);

/* Local DP on a client's update u (dim floats, in place): scaled by min(1, clip / ||u||), then
 * u[i] += noise * clip * loom_rng_normal_at(seed, loom_dp_stream(LOOM_DP_STREAM_LOCAL, round), i),
 * rounded once to float. *norm (may be NULL) receives ||u|| before clipping. clip must be > 0 and
 * noise >= 0 (else LOOM_EINVAL naming --dp-clip / --dp-noise). */
int loom_dp_local_privatize(float *u, size_t dim, double clip, double noise, uint64_t seed, int round, double *norm);

/* Adaptive clipping: sigma_delta = (sigma^-2 - (2 sigma_b)^-2)^(-1/2) (sigma 0: 0); NAN when
 * sigma_b <= sigma / 2 (no such sigma_delta). */
double loom_dp_adaptive_sigma(double sigma, double sigma_b);
/* The next clip: C * exp(-eta (b - gamma)), b = (count + sigma_b z) / expected. */
double loom_dp_adaptive_next(double clip, double count, double expected, double sigma_b, double z, double quantile,
                             double eta);

#ifdef __cplusplus
}
#endif
#endif
