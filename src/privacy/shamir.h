/* Shamir secret sharing over GF(2^61 - 1), private to the privacy/ layer (see shamir.c). */
#ifndef LOOM_PRIVACY_SHAMIR_H
#define LOOM_PRIVACY_SHAMIR_H

#include <stddef.h>
#include <stdint.h>

#define LM_SHAMIR_P ((UINT64_C(1) << 61) - 1)
#define LM_SHAMIR_CHUNKS 5 /* field elements per 32-byte secret (7 bytes each) */

/* secret (32 bytes) -> chunks (each < 2^56), and back: -1 when a chunk is out of range. */
void lm_shamir_split_secret(const uint8_t secret[32], uint64_t chunks[LM_SHAMIR_CHUNKS]);
int lm_shamir_join_secret(const uint64_t chunks[LM_SHAMIR_CHUNKS], uint8_t secret[32]);
/* coef[0] + coef[1] x + ... + coef[t-1] x^(t-1) mod p (coefficients < p). */
uint64_t lm_shamir_eval(const uint64_t *coef, uint32_t t, uint64_t x);
/* lambda[i] = prod_{j != i} (z - x_j) / (x_i - x_j): the weights that interpolate the polynomial of
 * degree t - 1 through (xs[i], y_i) at z (z = 0: the secret). -1 if two xs are equal. */
int lm_shamir_lagrange(const uint64_t *xs, uint32_t t, uint64_t z, uint64_t *lambda);
/* sum_i lambda[i] ys[i * stride] mod p. */
uint64_t lm_shamir_combine(const uint64_t *lambda, const uint64_t *ys, size_t stride, uint32_t t);

#endif
