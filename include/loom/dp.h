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

#ifdef __cplusplus
}
#endif
#endif
