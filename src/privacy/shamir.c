/* Shamir secret sharing over the prime field GF(p), p = 2^61 - 1 (a Mersenne prime), for secure
 * aggregation (src/privacy/secagg.c). A 32-byte secret is cut into LM_SHAMIR_CHUNKS = 5 field elements
 * of 7 bytes each (little-endian; the last holds 4), every chunk below 2^56 < p, and each chunk is
 * shared with its own random polynomial of degree t - 1. Client u's share sits at x = u + 1, so x is
 * never 0 and distinct clients have distinct points. */
#include "privacy/shamir.h"

#include <string.h>

#define P LM_SHAMIR_P

static uint64_t addm(uint64_t a, uint64_t b) {
    uint64_t s = a + b; /* a, b < 2^61: no wrap */
    return s >= P ? s - P : s;
}

static uint64_t subm(uint64_t a, uint64_t b) { return a >= b ? a - b : a + P - b; }

static uint64_t mulm(uint64_t a, uint64_t b) {
    unsigned __int128 x = (unsigned __int128)a * b; /* < 2^122 */
    uint64_t lo = (uint64_t)x & P, hi = (uint64_t)(x >> 61);
    uint64_t s = lo + hi; /* 2^k = 2^(k-61) mod p */
    return s >= P ? s - P : s;
}

static uint64_t powm(uint64_t a, uint64_t e) {
    uint64_t r = 1;
    while (e) {
        if (e & 1) r = mulm(r, a);
        a = mulm(a, a);
        e >>= 1;
    }
    return r;
}

static uint64_t invm(uint64_t a) { return powm(a, P - 2); } /* Fermat; a != 0 */

void lm_shamir_split_secret(const uint8_t secret[32], uint64_t chunks[LM_SHAMIR_CHUNKS]) {
    for (int c = 0; c < LM_SHAMIR_CHUNKS; c++) {
        uint64_t v = 0;
        for (int b = 6; b >= 0; b--) {
            int i = 7 * c + b;
            v = (v << 8) | (i < 32 ? secret[i] : 0);
        }
        chunks[c] = v;
    }
}

int lm_shamir_join_secret(const uint64_t chunks[LM_SHAMIR_CHUNKS], uint8_t secret[32]) {
    for (int c = 0; c < LM_SHAMIR_CHUNKS; c++) {
        uint64_t v = chunks[c];
        if (v >> (c == LM_SHAMIR_CHUNKS - 1 ? 32 : 56)) return -1; /* not a chunk of any secret */
        for (int b = 0; b < 7; b++) {
            int i = 7 * c + b;
            if (i < 32) secret[i] = (uint8_t)(v >> (8 * b));
        }
    }
    return 0;
}

uint64_t lm_shamir_eval(const uint64_t *coef, uint32_t t, uint64_t x) {
    uint64_t y = 0;
    for (uint32_t k = t; k-- > 0;) y = addm(mulm(y, x), coef[k]); /* Horner */
    return y;
}

int lm_shamir_lagrange(const uint64_t *xs, uint32_t t, uint64_t z, uint64_t *lambda) {
    for (uint32_t i = 0; i < t; i++) {
        uint64_t num = 1, den = 1;
        for (uint32_t j = 0; j < t; j++) {
            if (j == i) continue;
            if (xs[j] == xs[i]) return -1;
            num = mulm(num, subm(z, xs[j]));
            den = mulm(den, subm(xs[i], xs[j]));
        }
        lambda[i] = mulm(num, invm(den));
    }
    return 0;
}

uint64_t lm_shamir_combine(const uint64_t *lambda, const uint64_t *ys, size_t stride, uint32_t t) {
    uint64_t s = 0;
    for (uint32_t i = 0; i < t; i++) s = addm(s, mulm(lambda[i], ys[i * stride]));
    return s;
}
