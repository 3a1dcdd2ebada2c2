/* Paillier additive homomorphic aggregation (privacy/ layer): clients encrypt fixed-point updates under
 * the key holder's public key, the server multiplies ciphertexts (which adds the plaintexts) and never
 * holds the secret key, and only the key holder decrypts the sum.
 *
 * The scheme (Paillier, EUROCRYPT 1999), with GMP:
 *   keys     n = p q, p and q random primes of bits/2 bits each (top two bits set, so n has exactly
 *            `bits` bits), p != q, gcd(n, (p-1)(q-1)) = 1; g = n + 1; lambda = lcm(p-1, q-1),
 *            mu = L(g^lambda mod n^2)^-1 mod n with L(u) = (u - 1) / n.
 *   encrypt  c = g^m r^n mod n^2 = (1 + m n) r^n mod n^2, r uniform in [1, n) with gcd(r, n) = 1, for a
 *            plaintext 0 <= m < n.
 *   add      E(a) E(b) mod n^2 is an encryption of a + b mod n.
 *   decrypt  by the Chinese remainder theorem: m_p = L_p(c^(p-1) mod p^2) h_p mod p with
 *            h_p = L_p(g^(p-1) mod p^2)^-1 mod p and L_p(u) = (u - 1) / p, the same mod q, then
 *            m = m_q + q ((m_p - m_q) q^-1 mod p) (equal to L(c^lambda mod n^2) mu mod n, about four
 *            times faster).
 * Keys below LOOM_PAILLIER_MIN_BITS (2048) are refused everywhere. Randomness (primes, r) comes from
 * libsodium's randombytes; a 32-byte seed argument instead derives it deterministically (ChaCha20 via
 * randombytes_buf_deterministic): that is for tests, benchmarks and the deterministic simulator only,
 * never for a deployment, since whoever knows the seed knows the key and every r.
 *
 * ---- Encoding of an update (loom_paillier_params) ----
 * Value x (a float of the update) of a client with weight w (1 <= w <= max_weight):
 *     xc = min(max(x, -clip), clip)                        (non-finite values are refused)
 *     q  = rint(xc 2^frac_bits)                            (round to nearest even; |q| <= Q)
 *     Q  = rint(clip 2^frac_bits)                          (the offset; 1 <= Q)
 *     v  = w (q + Q)              in [0, 2 Q max_weight]   (the weight as a multiplier; the offset makes
 *                                                            every slot non-negative)
 * and one extra value, the weight itself, v_dim = w (no offset). The L = dim + 1 values are packed
 * `slots` per plaintext, each in a slot of s bits, value j of the update in plaintext j / slots at
 * bit s (j % slots):  m_t = sum_i v_{t slots + i} 2^(s i); unused slots of the last plaintext are 0.
 *
 *     B = max_clients 2 Q max_weight,   s = the bit length of B (the least s with B < 2^s; s <= 63),
 *     slots = floor((bits - 1) / s) with packing, 1 without.
 *
 * Why the sum of K <= max_clients updates never carries from one slot into the next, and never wraps
 * mod n: every client slot value is in [0, 2 Q max_weight] (the weight slot too: w <= max_weight <=
 * 2 Q max_weight as Q >= 1), so slot i of the integer sum M_t = sum_k m_{k,t} is S_i = sum_k v_{k,i} <=
 * K 2 Q max_weight <= B < 2^s. A sum of digits S_i 2^(s i) with every 0 <= S_i < 2^s is M_t's base-2^s
 * representation: slot i of M_t is exactly S_i (no carry). And M_t < 2^(s slots) <= 2^(bits-1) <= n
 * (n has `bits` bits), so the homomorphic sum M_t mod n is M_t itself. The server refuses a sum of more
 * than max_clients updates, which is what the bound rests on.
 *
 * Decoding the sum: the weight slot gives W = sum_k w_k; value j is S_j - Q W = sum_k w_k q_{k,j} exactly
 * (an int64, since B < 2^63), and as a double (S_j - Q W) 2^-frac_bits (exact up to 2^53, rounded above).
 * The mean update is sum / W. A slot above 2 Q W, a non-zero unused slot or bits above the last slot
 * mean an update that was not encoded as above: decryption refuses the sum.
 *
 * What the encryption does not give: the server cannot check that a client's plaintext respects the
 * encoding (no proof of validity), so a malicious client can shift the sum (or break decoding, which is
 * detected); the key holder learns the sum and nothing else, and must not be the server (the server
 * holding both sees every update). See docs/privacy-paillier.md.
 *
 * ---- The encrypted-update blob (client -> server, and a sum: server -> key holder) ----
 * little-endian integers; ciphertexts big-endian, each exactly ct_bytes = 2 bits / 8 bytes, in [1, n^2)
 * and coprime to n:
 *     0   4  magic "LPHE"
 *     4   4  version (1)
 *     8   4  key bits
 *    12  32  key id: SHA-256 of the public key's serialization
 *    44   8  dim
 *    52   8  clip (IEEE-754 binary64 bits)
 *    60   4  frac_bits
 *    64   8  max_weight
 *    72   4  max_clients
 *    76   4  slots per ciphertext
 *    80   4  count: updates in this blob (1 from a client)
 *    84   4  n_ct = ceil((dim + 1) / slots)
 *    88      n_ct ciphertexts
 * A blob is refused unless its length, key, parameters and ciphertext count are exactly those expected.
 *
 * ---- Use (the shape of a secure-sum backend) ----
 *     key holder: loom_paillier_keygen(&sk, 2048, NULL); pk = loom_paillier_sk_public(sk)
 *                 (loom_paillier_pk_save -> clients and server, loom_paillier_pk_load there)
 *     everyone:   loom_paillier_defaults(&prm, dim); same prm on every side
 *     client:     loom_paillier_encrypt_update(pk, &prm, x, dim, w, NULL, &blob)   -> server
 *     server:     loom_paillier_sum_create(&s, pk, &prm); loom_paillier_sum_add(s, blob.data, blob.len)
 *                 for each client; loom_paillier_sum_result(s, &sum_blob)         -> key holder
 *     key holder: loom_paillier_decrypt_sum(sk, &prm, sum_blob.data, sum_blob.len, sum, &W)
 *                 (sum[dim] = sum_k w_k dec(enc(x_k)); the weighted mean is sum / W) */
#ifndef LOOM_PAILLIER_H
#define LOOM_PAILLIER_H

#include <stddef.h>
#include <stdint.h>

#include "loom/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_PAILLIER_MIN_BITS 2048u
#define LOOM_PAILLIER_MAX_BITS 8192u
/* The default params.max_dim: at 2048 bits a packed client encrypts about 3,000 values per CPU second
 * (330 us each, bench/paillier.c, docs/privacy-paillier.md), so 2^19 = 524,288 values is about three
 * CPU minutes per client per round; a 294,912-value LoRA set passes (about 100 s). */
#define LOOM_PAILLIER_DEFAULT_MAX_DIM ((size_t)1 << 19)

/* A byte string (free with loom_paillier_blob_free, which also wipes it: secret keys travel in it). */
typedef struct {
    uint8_t *data;
    size_t len;
} loom_paillier_blob;
void loom_paillier_blob_free(loom_paillier_blob *b);

/* ---- keys ---- */

typedef struct loom_paillier_pk loom_paillier_pk;
typedef struct loom_paillier_sk loom_paillier_sk;

/* A key pair with an n of `bits` bits (a multiple of 64 in [LOOM_PAILLIER_MIN_BITS,
 * LOOM_PAILLIER_MAX_BITS]; anything else is LOOM_EINVAL). seed NULL: libsodium's randombytes; else the 32
 * bytes given derive the primes (tests and benchmarks only: see above). */
int loom_paillier_keygen(loom_paillier_sk **out, unsigned bits, const uint8_t seed[32]);
void loom_paillier_sk_free(loom_paillier_sk *sk);
/* The public half, owned by sk (valid until loom_paillier_sk_free). */
const loom_paillier_pk *loom_paillier_sk_public(const loom_paillier_sk *sk);
void loom_paillier_pk_free(loom_paillier_pk *pk);
unsigned loom_paillier_pk_bits(const loom_paillier_pk *pk);
/* SHA-256 of the public key's serialization (names the key in every blob). */
void loom_paillier_pk_id(const loom_paillier_pk *pk, uint8_t id[32]);

/* Public key: "LPPK", u32 version 1, u32 bits, n (bits/8 bytes, big-endian); 12 + bits/8 bytes. */
int loom_paillier_pk_save(const loom_paillier_pk *pk, loom_paillier_blob *out);
/* Refuses (LOOM_EFORMAT, with the reason) a wrong magic, version or length, a size outside the limits,
 * an n without exactly `bits` bits, even, a perfect square or with a factor below 1000. */
int loom_paillier_pk_load(loom_paillier_pk **out, const uint8_t *data, size_t len);
/* Secret key (the key holder's only): "LPSK", u32 version 1, u32 bits, p, q (bits/16 bytes each,
 * big-endian); 12 + bits/8 bytes. */
int loom_paillier_sk_save(const loom_paillier_sk *sk, loom_paillier_blob *out);
/* Refuses primes of the wrong size, composite, equal or too close, and a gcd condition that fails. */
int loom_paillier_sk_load(loom_paillier_sk **out, const uint8_t *data, size_t len);

/* ---- single ciphertexts (fixed-length big-endian byte strings) ---- */

size_t loom_paillier_pt_bytes(const loom_paillier_pk *pk); /* bits / 8 */
size_t loom_paillier_ct_bytes(const loom_paillier_pk *pk); /* 2 bits / 8 */
/* ct[ct_bytes] = E(m), m the big-endian integer m[m_len] (< n, else LOOM_ERANGE). seed: as keygen's (one
 * seed always gives the same r: tests only). */
int loom_paillier_encrypt(const loom_paillier_pk *pk, const uint8_t *m, size_t m_len, const uint8_t seed[32],
                          uint8_t *ct);
/* out = a b mod n^2 (an encryption of the sum); out may alias a or b. A ciphertext outside [1, n^2) or
 * not coprime to n: LOOM_EFORMAT. */
int loom_paillier_add(const loom_paillier_pk *pk, const uint8_t *a, const uint8_t *b, uint8_t *out);
/* m[pt_bytes] = D(ct), big-endian. */
int loom_paillier_decrypt(const loom_paillier_sk *sk, const uint8_t *ct, uint8_t *m);

/* ---- aggregation of federated updates ---- */

typedef struct {
    size_t dim;           /* values per update (1 .. max_dim) */
    double clip;          /* values are clipped to [-clip, clip] (> 0, finite) */
    uint32_t frac_bits;   /* fixed point: q = rint(x 2^frac_bits) (0 .. 62) */
    uint64_t max_weight;  /* a client's weight w is in [1, max_weight] */
    uint32_t max_clients; /* the most updates one sum may hold (>= 1) */
    int pack;             /* 1: floor((bits - 1) / s) values per plaintext; 0: one */
    size_t max_dim;       /* a larger dim is refused: the cost knob */
} loom_paillier_params;

/* Defaults: clip 1, frac_bits 32, max_weight 2^16, max_clients 1024, pack 1,
 * max_dim LOOM_PAILLIER_DEFAULT_MAX_DIM (s = 60 bits, 34 slots per 2048-bit plaintext). */
void loom_paillier_defaults(loom_paillier_params *p, size_t dim);

typedef struct {
    uint32_t slot_bits; /* s */
    uint32_t slots;     /* values per plaintext */
    size_t n_ct;        /* ciphertexts per update: ceil((dim + 1) / slots) */
    size_t blob_bytes;  /* the blob's size */
    int64_t offset;     /* Q */
} loom_paillier_layout;
/* LOOM_OK and the layout, or LOOM_EINVAL naming the bad field; a dim above max_dim is LOOM_ERANGE with a
 * message naming the size, the limit and the knob (params.max_dim). */
int loom_paillier_check(const loom_paillier_params *p, unsigned key_bits, loom_paillier_layout *layout);

/* Client: the blob of x[dim] (dim must equal p->dim) with weight w, as above. seed NULL: libsodium's
 * randombytes for every r; else r is derived from the seed (tests only). Ciphertexts are computed in
 * parallel (OpenMP, the calling thread's team size); a seeded blob does not depend on the thread count. */
int loom_paillier_encrypt_update(const loom_paillier_pk *pk, const loom_paillier_params *p, const float *x,
                                 size_t dim, uint64_t w, const uint8_t seed[32], loom_paillier_blob *out);

/* Server: a running product of blobs; never needs the secret key. The result does not depend on the
 * order of the additions (the product mod n^2 is commutative). One thread at a time per sum (the
 * addition itself runs its ciphertexts in parallel); keys, parameters and blobs are read-only
 * everywhere, so clients may encrypt on many threads at once. */
typedef struct loom_paillier_sum loom_paillier_sum;
int loom_paillier_sum_create(loom_paillier_sum **out, const loom_paillier_pk *pk, const loom_paillier_params *p);
void loom_paillier_sum_free(loom_paillier_sum *s);
/* Adds a client's blob (or another partial sum). Refused, with the reason, and the sum unchanged: a
 * malformed blob, another key or other parameters, or more than max_clients updates in all. */
int loom_paillier_sum_add(loom_paillier_sum *s, const uint8_t *blob, size_t len);
uint32_t loom_paillier_sum_count(const loom_paillier_sum *s);
/* The sum as a blob (count = the updates added); an empty sum: LOOM_ESTATE. */
int loom_paillier_sum_result(const loom_paillier_sum *s, loom_paillier_blob *out);

/* Key holder: decrypts a sum blob. sum[dim] = (S_j - Q W) 2^-frac_bits, *total_weight = W (either
 * output may be NULL). */
int loom_paillier_decrypt_sum(const loom_paillier_sk *sk, const loom_paillier_params *p, const uint8_t *blob,
                              size_t len, double *sum, uint64_t *total_weight);
/* The same, exactly: sum_fx[dim] = sum_k w_k q_{k,j}; *count (may be NULL) = the updates summed. */
int loom_paillier_decrypt_sum_fx(const loom_paillier_sk *sk, const loom_paillier_params *p, const uint8_t *blob,
                                 size_t len, int64_t *sum_fx, uint64_t *total_weight, uint32_t *count);

#ifdef __cplusplus
}
#endif
#endif
