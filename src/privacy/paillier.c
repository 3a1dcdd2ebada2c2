/* Paillier keys, ciphertexts and the aggregation of encrypted fixed-point updates (format, encoding
 * and the proof that packed slots never carry: include/loom/paillier.h). */
#include "loom/paillier.h"

#include <gmp.h>
#include <limits.h>
#include <math.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

_Static_assert(sizeof(unsigned long) == 8, "slot values go through mpz_*_ui: unsigned long must be 64 bits");

#define PK_MAGIC "LPPK"
#define SK_MAGIC "LPSK"
#define BLOB_MAGIC "LPHE"
#define VERSION 1u
#define KEY_HEADER 12u
#define BLOB_HEADER 88u

struct loom_paillier_pk {
    unsigned bits;
    size_t pt_bytes, ct_bytes;
    mpz_t n, n2;
    uint8_t *n2_be; /* n^2 as ct_bytes big-endian bytes: ciphertext range checks without GMP */
    uint8_t id[32];
};

struct loom_paillier_sk {
    loom_paillier_pk pk;
    mpz_t p, q, p2, q2, hp, hq, qinv_p, lambda, mu;
};

/* ---- small helpers ---- */

static void put_u32(uint8_t *b, uint32_t v) {
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *b, uint64_t v) {
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *b) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | b[i];
    return v;
}
static uint64_t get_u64(const uint8_t *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

/* z (0 <= z < 256^width) as exactly `width` big-endian bytes. */
static void export_fixed(uint8_t *out, size_t width, const mpz_t z) {
    memset(out, 0, width);
    if (mpz_sgn(z) == 0) return;
    size_t bytes = (mpz_sizeinbase(z, 2) + 7) / 8, cnt;
    mpz_export(out + width - bytes, &cnt, 1, 1, 1, 0, z);
}

static void import_fixed(mpz_t z, const uint8_t *in, size_t width) { mpz_import(z, width, 1, 1, 1, 0, in); }

/* Overwrites the limbs of a secret before it is released (GMP may have left copies in memory it
 * reallocated: best effort). */
static void mpz_wipe(mpz_t z) {
    size_t n = mpz_size(z);
    if (n) {
        mp_limb_t *l = mpz_limbs_modify(z, (mp_size_t)n);
        sodium_memzero(l, n * sizeof *l);
        mpz_limbs_finish(z, 0);
    }
    mpz_clear(z);
}

static int check_bits(int code, unsigned bits, const char *what) {
    if (bits < LOOM_PAILLIER_MIN_BITS || bits > LOOM_PAILLIER_MAX_BITS || bits % 64)
        return loom_error(code, "paillier: %s of %u bits: the key size must be a multiple of 64 in [%u, %u]", what,
                          bits, LOOM_PAILLIER_MIN_BITS, LOOM_PAILLIER_MAX_BITS);
    return LOOM_OK;
}

static int sodium_ready(void) {
    if (sodium_init() < 0) return loom_error(LOOM_ESTATE, "paillier: libsodium could not be initialised");
    return LOOM_OK;
}

/* Random bytes: libsodium's randombytes, or (seeded) a ChaCha20 stream whose 32-byte seed for draw k is
 * BLAKE2b(key = the 32-byte stream key, message = k). */
typedef struct {
    int seeded;
    uint8_t key[32];
    uint64_t ctr;
} prng;

/* A stream for purpose `tag` and index `idx` under seed (NULL: the system generator). */
static void prng_init(prng *g, const uint8_t *seed, const char *tag, uint64_t idx) {
    g->seeded = seed != NULL;
    g->ctr = 0;
    if (!seed) return;
    uint8_t msg[40];
    size_t tl = strlen(tag);
    if (tl > 32) tl = 32;
    memcpy(msg, tag, tl);
    put_u64(msg + tl, idx);
    crypto_generichash(g->key, 32, msg, tl + 8, seed, 32);
}

static void prng_bytes(prng *g, uint8_t *buf, size_t n) {
    if (!g->seeded) {
        randombytes_buf(buf, n);
        return;
    }
    uint8_t msg[8], sub[randombytes_SEEDBYTES];
    put_u64(msg, g->ctr++);
    crypto_generichash(sub, sizeof sub, msg, sizeof msg, g->key, sizeof g->key);
    randombytes_buf_deterministic(buf, n, sub);
    sodium_memzero(sub, sizeof sub);
}

/* r uniform in [1, n) with gcd(r, n) = 1 (n has exactly bits = 8 nb bits, so a draw is accepted with
 * probability above 1/2). tmp: scratch. */
static void rand_unit(mpz_t r, mpz_t tmp, const loom_paillier_pk *pk, prng *g) {
    uint8_t buf[LOOM_PAILLIER_MAX_BITS / 8];
    for (;;) {
        prng_bytes(g, buf, pk->pt_bytes);
        import_fixed(r, buf, pk->pt_bytes);
        if (mpz_sgn(r) == 0 || mpz_cmp(r, pk->n) >= 0) continue;
        mpz_gcd(tmp, r, pk->n);
        if (mpz_cmp_ui(tmp, 1) == 0) break;
    }
    sodium_memzero(buf, sizeof buf);
}

/* ---- keys ---- */

static void pk_init(loom_paillier_pk *pk) {
    memset(pk, 0, sizeof *pk);
    mpz_inits(pk->n, pk->n2, NULL);
}

static void pk_clear(loom_paillier_pk *pk) {
    mpz_clears(pk->n, pk->n2, NULL);
    free(pk->n2_be);
    pk->n2_be = NULL;
}

/* n^2, the byte forms and the key id, from pk->n and pk->bits. */
static int pk_derive(loom_paillier_pk *pk) {
    pk->pt_bytes = pk->bits / 8;
    pk->ct_bytes = 2 * pk->pt_bytes;
    mpz_mul(pk->n2, pk->n, pk->n);
    free(pk->n2_be);
    pk->n2_be = malloc(pk->ct_bytes);
    if (!pk->n2_be) return loom_error(LOOM_ENOMEM, "paillier: out of memory");
    export_fixed(pk->n2_be, pk->ct_bytes, pk->n2);
    loom_paillier_blob b = {0};
    int rc = loom_paillier_pk_save(pk, &b);
    if (rc != LOOM_OK) return rc;
    loom_sha256 h;
    loom_sha256_init(&h);
    loom_sha256_update(&h, b.data, b.len);
    loom_sha256_final(&h, pk->id);
    loom_paillier_blob_free(&b);
    return LOOM_OK;
}

static void sk_init(loom_paillier_sk *sk) {
    pk_init(&sk->pk);
    mpz_inits(sk->p, sk->q, sk->p2, sk->q2, sk->hp, sk->hq, sk->qinv_p, sk->lambda, sk->mu, NULL);
}

void loom_paillier_sk_free(loom_paillier_sk *sk) {
    if (!sk) return;
    pk_clear(&sk->pk);
    mpz_wipe(sk->p), mpz_wipe(sk->q), mpz_wipe(sk->p2), mpz_wipe(sk->q2), mpz_wipe(sk->hp), mpz_wipe(sk->hq);
    mpz_wipe(sk->qinv_p), mpz_wipe(sk->lambda), mpz_wipe(sk->mu);
    sodium_memzero(sk, sizeof *sk);
    free(sk);
}

void loom_paillier_pk_free(loom_paillier_pk *pk) {
    if (!pk) return;
    pk_clear(pk);
    free(pk);
}

/* h = L_x(g^(x-1) mod x^2)^-1 mod x for the prime x, g = n + 1. */
static int crt_h(mpz_t h, const mpz_t x, const mpz_t x2, const mpz_t n) {
    mpz_t g, e;
    mpz_inits(g, e, NULL);
    mpz_add_ui(g, n, 1);
    mpz_mod(g, g, x2);
    mpz_sub_ui(e, x, 1);
    mpz_powm(h, g, e, x2);
    mpz_sub_ui(h, h, 1);
    mpz_divexact(h, h, x);
    int ok = mpz_invert(h, h, x);
    mpz_clears(g, e, NULL);
    return ok ? LOOM_OK : loom_error(LOOM_EFORMAT, "paillier: not a valid key (L_p(g^(p-1)) is not invertible)");
}

/* Checks p and q (already set, with the sizes checked) and computes everything else. */
static int sk_derive(loom_paillier_sk *sk, unsigned bits, int check_primes) {
    unsigned pbits = bits / 2;
    if (mpz_sizeinbase(sk->p, 2) != pbits || mpz_sizeinbase(sk->q, 2) != pbits)
        return loom_error(LOOM_EFORMAT, "paillier: secret key: p and q must have %u bits each", pbits);
    if (mpz_cmp(sk->p, sk->q) == 0) return loom_error(LOOM_EFORMAT, "paillier: secret key: p equals q");
    if (check_primes && (!mpz_probab_prime_p(sk->p, 25) || !mpz_probab_prime_p(sk->q, 25)))
        return loom_error(LOOM_EFORMAT, "paillier: secret key: p or q is not prime");
    mpz_t t, u;
    mpz_inits(t, u, NULL);
    int rc = LOOM_OK;
    /* |p - q| > 2^(bits/2 - 64): Fermat's factoring needs |p - q| small */
    mpz_sub(t, sk->p, sk->q);
    mpz_abs(t, t);
    if (mpz_sizeinbase(t, 2) <= pbits - 64) {
        rc = loom_error(LOOM_EFORMAT, "paillier: secret key: p and q are too close");
        goto done;
    }
    sk->pk.bits = bits;
    mpz_mul(sk->pk.n, sk->p, sk->q);
    if (mpz_sizeinbase(sk->pk.n, 2) != bits) {
        rc = loom_error(LOOM_EFORMAT, "paillier: secret key: p q does not have %u bits", bits);
        goto done;
    }
    /* gcd(n, (p-1)(q-1)) = 1 */
    mpz_sub_ui(t, sk->p, 1);
    mpz_sub_ui(u, sk->q, 1);
    mpz_mul(t, t, u);
    mpz_gcd(t, t, sk->pk.n);
    if (mpz_cmp_ui(t, 1) != 0) {
        rc = loom_error(LOOM_EFORMAT, "paillier: secret key: gcd(n, (p-1)(q-1)) is not 1");
        goto done;
    }
    if ((rc = pk_derive(&sk->pk)) != LOOM_OK) goto done;
    mpz_mul(sk->p2, sk->p, sk->p);
    mpz_mul(sk->q2, sk->q, sk->q);
    if ((rc = crt_h(sk->hp, sk->p, sk->p2, sk->pk.n)) != LOOM_OK) goto done;
    if ((rc = crt_h(sk->hq, sk->q, sk->q2, sk->pk.n)) != LOOM_OK) goto done;
    if (!mpz_invert(sk->qinv_p, sk->q, sk->p)) {
        rc = loom_error(LOOM_EFORMAT, "paillier: secret key: q is not invertible mod p");
        goto done;
    }
    /* lambda = lcm(p-1, q-1), mu = L(g^lambda mod n^2)^-1 mod n */
    mpz_sub_ui(t, sk->p, 1);
    mpz_sub_ui(u, sk->q, 1);
    mpz_lcm(sk->lambda, t, u);
    mpz_add_ui(t, sk->pk.n, 1);
    mpz_powm(u, t, sk->lambda, sk->pk.n2);
    mpz_sub_ui(u, u, 1);
    mpz_divexact(u, u, sk->pk.n);
    if (!mpz_invert(sk->mu, u, sk->pk.n)) rc = loom_error(LOOM_EFORMAT, "paillier: secret key: mu does not exist");
done:
    mpz_wipe(t);
    mpz_wipe(u);
    return rc;
}

/* A prime of exactly pbits bits with its top two bits set (so that the product of two has 2 pbits bits):
 * the next prime after a random odd start with those bits. */
static void gen_prime(mpz_t p, unsigned pbits, prng *g) {
    uint8_t buf[LOOM_PAILLIER_MAX_BITS / 16];
    size_t nb = pbits / 8;
    do {
        prng_bytes(g, buf, nb);
        buf[0] |= 0xC0;
        buf[nb - 1] |= 1;
        import_fixed(p, buf, nb);
        mpz_nextprime(p, p);
    } while (mpz_sizeinbase(p, 2) != pbits);
    sodium_memzero(buf, sizeof buf);
}

int loom_paillier_keygen(loom_paillier_sk **out, unsigned bits, const uint8_t seed[32]) {
    *out = NULL;
    int rc = check_bits(LOOM_EINVAL, bits, "keygen: a key");
    if (rc != LOOM_OK) return rc;
    if ((rc = sodium_ready()) != LOOM_OK) return rc;
    loom_paillier_sk *sk = calloc(1, sizeof *sk);
    if (!sk) return loom_error(LOOM_ENOMEM, "paillier: out of memory");
    sk_init(sk);
    prng g;
    prng_init(&g, seed, "loom paillier keygen", 0);
    for (int attempt = 0;; attempt++) {
        gen_prime(sk->p, bits / 2, &g);
        gen_prime(sk->q, bits / 2, &g);
        rc = sk_derive(sk, bits, 0);
        if (rc == LOOM_OK || rc == LOOM_ENOMEM || attempt == 100) break;
    }
    sodium_memzero(&g, sizeof g);
    if (rc != LOOM_OK) {
        loom_paillier_sk_free(sk);
        return rc;
    }
    loom_clear_error();
    *out = sk;
    return LOOM_OK;
}

const loom_paillier_pk *loom_paillier_sk_public(const loom_paillier_sk *sk) { return &sk->pk; }
unsigned loom_paillier_pk_bits(const loom_paillier_pk *pk) { return pk->bits; }
void loom_paillier_pk_id(const loom_paillier_pk *pk, uint8_t id[32]) { memcpy(id, pk->id, 32); }
size_t loom_paillier_pt_bytes(const loom_paillier_pk *pk) { return pk->pt_bytes; }
size_t loom_paillier_ct_bytes(const loom_paillier_pk *pk) { return pk->ct_bytes; }

void loom_paillier_blob_free(loom_paillier_blob *b) {
    if (!b) return;
    if (b->data) sodium_memzero(b->data, b->len);
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

static int blob_alloc(loom_paillier_blob *b, size_t len) {
    b->data = calloc(1, len ? len : 1);
    b->len = b->data ? len : 0;
    return b->data ? LOOM_OK : loom_error(LOOM_ENOMEM, "paillier: out of memory for %zu bytes", len);
}

int loom_paillier_pk_save(const loom_paillier_pk *pk, loom_paillier_blob *out) {
    int rc = blob_alloc(out, KEY_HEADER + pk->bits / 8);
    if (rc != LOOM_OK) return rc;
    memcpy(out->data, PK_MAGIC, 4);
    put_u32(out->data + 4, VERSION);
    put_u32(out->data + 8, pk->bits);
    export_fixed(out->data + KEY_HEADER, pk->bits / 8, pk->n);
    return LOOM_OK;
}

/* The common header of both key formats: magic, version, bits, exact length. */
static int key_header(const uint8_t *data, size_t len, const char *magic, const char *what, unsigned *bits) {
    if (len < KEY_HEADER)
        return loom_error(LOOM_EFORMAT, "paillier: %s of %zu bytes is shorter than its %u-byte header", what, len,
                          KEY_HEADER);
    if (memcmp(data, magic, 4))
        return loom_error(LOOM_EFORMAT, "paillier: not a %s (magic is not \"%s\")", what, magic);
    if (get_u32(data + 4) != VERSION)
        return loom_error(LOOM_EFORMAT, "paillier: %s of version %u; this build reads version %u", what,
                          get_u32(data + 4), VERSION);
    *bits = get_u32(data + 8);
    if (check_bits(LOOM_EFORMAT, *bits, what) != LOOM_OK) return LOOM_EFORMAT;
    if (len != KEY_HEADER + *bits / 8)
        return loom_error(LOOM_EFORMAT, "paillier: %s of %u bits must be %u bytes, not %zu", what, *bits,
                          KEY_HEADER + *bits / 8, len);
    return LOOM_OK;
}

int loom_paillier_pk_load(loom_paillier_pk **out, const uint8_t *data, size_t len) {
    *out = NULL;
    unsigned bits;
    int rc = key_header(data, len, PK_MAGIC, "public key", &bits);
    if (rc != LOOM_OK) return rc;
    loom_paillier_pk *pk = malloc(sizeof *pk);
    if (!pk) return loom_error(LOOM_ENOMEM, "paillier: out of memory");
    pk_init(pk);
    pk->bits = bits;
    import_fixed(pk->n, data + KEY_HEADER, bits / 8);
    mpz_t small;
    mpz_init(small);
    mpz_primorial_ui(small, 1000);
    mpz_gcd(small, small, pk->n);
    if (mpz_sizeinbase(pk->n, 2) != bits)
        rc = loom_error(LOOM_EFORMAT, "paillier: public key: n does not have %u bits", bits);
    else if (mpz_even_p(pk->n))
        rc = loom_error(LOOM_EFORMAT, "paillier: public key: n is even");
    else if (mpz_cmp_ui(small, 1) != 0)
        rc = loom_error(LOOM_EFORMAT, "paillier: public key: n has a factor below 1000");
    else if (mpz_perfect_square_p(pk->n))
        rc = loom_error(LOOM_EFORMAT, "paillier: public key: n is a perfect square");
    else
        rc = pk_derive(pk);
    mpz_clear(small);
    if (rc != LOOM_OK) {
        loom_paillier_pk_free(pk);
        return rc;
    }
    *out = pk;
    return LOOM_OK;
}

int loom_paillier_sk_save(const loom_paillier_sk *sk, loom_paillier_blob *out) {
    unsigned bits = sk->pk.bits;
    int rc = blob_alloc(out, KEY_HEADER + bits / 8);
    if (rc != LOOM_OK) return rc;
    memcpy(out->data, SK_MAGIC, 4);
    put_u32(out->data + 4, VERSION);
    put_u32(out->data + 8, bits);
    export_fixed(out->data + KEY_HEADER, bits / 16, sk->p);
    export_fixed(out->data + KEY_HEADER + bits / 16, bits / 16, sk->q);
    return LOOM_OK;
}

int loom_paillier_sk_load(loom_paillier_sk **out, const uint8_t *data, size_t len) {
    *out = NULL;
    unsigned bits;
    int rc = key_header(data, len, SK_MAGIC, "secret key", &bits);
    if (rc != LOOM_OK) return rc;
    loom_paillier_sk *sk = calloc(1, sizeof *sk);
    if (!sk) return loom_error(LOOM_ENOMEM, "paillier: out of memory");
    sk_init(sk);
    import_fixed(sk->p, data + KEY_HEADER, bits / 16);
    import_fixed(sk->q, data + KEY_HEADER + bits / 16, bits / 16);
    if ((rc = sk_derive(sk, bits, 1)) != LOOM_OK) {
        loom_paillier_sk_free(sk);
        return rc;
    }
    *out = sk;
    return LOOM_OK;
}

/* ---- single ciphertexts ---- */

/* A ciphertext's bytes are in [1, n^2). */
static int ct_in_range(const loom_paillier_pk *pk, const uint8_t *ct) {
    size_t i = 0;
    while (i < pk->ct_bytes && ct[i] == 0) i++;
    return i < pk->ct_bytes && memcmp(ct, pk->n2_be, pk->ct_bytes) < 0;
}

/* c = (1 + m n) r^n mod n^2 (m < n). */
static void encrypt_mpz(const loom_paillier_pk *pk, mpz_t c, const mpz_t m, prng *g, mpz_t r, mpz_t t) {
    rand_unit(r, t, pk, g);
    mpz_powm(r, r, pk->n, pk->n2);
    mpz_mul(t, m, pk->n);
    mpz_add_ui(t, t, 1);
    mpz_mul(c, t, r);
    mpz_mod(c, c, pk->n2);
}

/* m = D(c) by CRT. t, u: scratch. */
static void decrypt_mpz(const loom_paillier_sk *sk, mpz_t m, const mpz_t c, mpz_t t, mpz_t u) {
    /* m_p in u */
    mpz_mod(t, c, sk->p2);
    mpz_sub_ui(u, sk->p, 1);
    mpz_powm_sec(t, t, u, sk->p2);
    mpz_sub_ui(t, t, 1);
    mpz_divexact(t, t, sk->p);
    mpz_mul(t, t, sk->hp);
    mpz_mod(u, t, sk->p);
    /* m_q in m */
    mpz_mod(t, c, sk->q2);
    mpz_sub_ui(m, sk->q, 1);
    mpz_powm_sec(t, t, m, sk->q2);
    mpz_sub_ui(t, t, 1);
    mpz_divexact(t, t, sk->q);
    mpz_mul(t, t, sk->hq);
    mpz_mod(m, t, sk->q);
    /* m = m_q + q ((m_p - m_q) q^-1 mod p) */
    mpz_sub(t, u, m);
    mpz_mul(t, t, sk->qinv_p);
    mpz_mod(t, t, sk->p);
    mpz_addmul(m, t, sk->q);
}

int loom_paillier_encrypt(const loom_paillier_pk *pk, const uint8_t *m, size_t m_len, const uint8_t seed[32],
                          uint8_t *ct) {
    int rc = sodium_ready();
    if (rc != LOOM_OK) return rc;
    mpz_t mm, c, r, t;
    mpz_inits(mm, c, r, t, NULL);
    mpz_import(mm, m_len, 1, 1, 1, 0, m);
    if (mpz_cmp(mm, pk->n) >= 0) {
        rc = loom_error(LOOM_ERANGE, "paillier: plaintext of %zu bits is not below n (%u bits)",
                        mpz_sizeinbase(mm, 2), pk->bits);
    } else {
        prng g;
        prng_init(&g, seed, "loom paillier r", 0);
        encrypt_mpz(pk, c, mm, &g, r, t);
        export_fixed(ct, pk->ct_bytes, c);
    }
    mpz_wipe(mm), mpz_wipe(r), mpz_clear(c), mpz_clear(t);
    return rc;
}

static int ct_check(const loom_paillier_pk *pk, const uint8_t *ct, mpz_t c, mpz_t t, const char *what) {
    if (!ct_in_range(pk, ct)) return loom_error(LOOM_EFORMAT, "paillier: %s is not in [1, n^2)", what);
    import_fixed(c, ct, pk->ct_bytes);
    mpz_gcd(t, c, pk->n);
    if (mpz_cmp_ui(t, 1) != 0) return loom_error(LOOM_EFORMAT, "paillier: %s is not coprime to n", what);
    return LOOM_OK;
}

int loom_paillier_add(const loom_paillier_pk *pk, const uint8_t *a, const uint8_t *b, uint8_t *out) {
    mpz_t x, y, t;
    mpz_inits(x, y, t, NULL);
    int rc = ct_check(pk, a, x, t, "first ciphertext");
    if (rc == LOOM_OK) rc = ct_check(pk, b, y, t, "second ciphertext");
    if (rc == LOOM_OK) {
        mpz_mul(x, x, y);
        mpz_mod(x, x, pk->n2);
        export_fixed(out, pk->ct_bytes, x);
    }
    mpz_clears(x, y, t, NULL);
    return rc;
}

int loom_paillier_decrypt(const loom_paillier_sk *sk, const uint8_t *ct, uint8_t *m) {
    mpz_t c, mm, t, u;
    mpz_inits(c, mm, t, u, NULL);
    int rc = ct_check(&sk->pk, ct, c, t, "ciphertext");
    if (rc == LOOM_OK) {
        decrypt_mpz(sk, mm, c, t, u);
        export_fixed(m, sk->pk.pt_bytes, mm);
    }
    mpz_clear(c);
    mpz_wipe(mm), mpz_wipe(t), mpz_wipe(u);
    return rc;
}

/* ---- aggregation ---- */

void loom_paillier_defaults(loom_paillier_params *p, size_t dim) {
    memset(p, 0, sizeof *p);
    p->dim = dim;
    p->clip = 1.0;
    p->frac_bits = 32;
    p->max_weight = (uint64_t)1 << 16;
    p->max_clients = 1024;
    p->pack = 1;
    p->max_dim = LOOM_PAILLIER_DEFAULT_MAX_DIM;
}

int loom_paillier_check(const loom_paillier_params *p, unsigned key_bits, loom_paillier_layout *layout) {
    int rc = check_bits(LOOM_EINVAL, key_bits, "a key");
    if (rc != LOOM_OK) return rc;
    if (!(p->clip > 0) || !isfinite(p->clip))
        return loom_error(LOOM_EINVAL, "paillier: clip must be finite and > 0 (is %g)", p->clip);
    if (p->frac_bits > 62) return loom_error(LOOM_EINVAL, "paillier: frac_bits %u is above 62", p->frac_bits);
    if (p->max_weight < 1) return loom_error(LOOM_EINVAL, "paillier: max_weight must be at least 1");
    if (p->max_clients < 1) return loom_error(LOOM_EINVAL, "paillier: max_clients must be at least 1");
    if (p->pack != 0 && p->pack != 1) return loom_error(LOOM_EINVAL, "paillier: pack must be 0 or 1 (is %d)", p->pack);
    if (p->dim < 1) return loom_error(LOOM_EINVAL, "paillier: dim must be at least 1");
    double qd = rint(ldexp(p->clip, (int)p->frac_bits));
    if (!(qd >= 1))
        return loom_error(LOOM_EINVAL, "paillier: clip %g at frac_bits %u rounds to 0: raise frac_bits", p->clip,
                          p->frac_bits);
    if (!(qd < 0x1p62))
        return loom_error(LOOM_EINVAL, "paillier: clip %g 2^frac_bits (%u) is 2^62 or more: lower frac_bits", p->clip,
                          p->frac_bits);
    uint64_t Q = (uint64_t)qd;
    unsigned __int128 B = (unsigned __int128)p->max_clients * (2 * (unsigned __int128)Q) * p->max_weight;
    if (B >= (unsigned __int128)1 << 63)
        return loom_error(LOOM_EINVAL,
                          "paillier: max_clients %u x 2 clip 2^frac_bits (%llu) x max_weight %llu needs a slot "
                          "of more than 63 bits: lower frac_bits, clip, max_weight or max_clients",
                          p->max_clients, (unsigned long long)(2 * Q), (unsigned long long)p->max_weight);
    uint32_t s = 0;
    while (((unsigned __int128)1 << s) <= B) s++; /* the least s with B < 2^s */
    uint32_t slots = p->pack ? (key_bits - 1) / s : 1;
    size_t n_ct = p->dim / slots + 1; /* ceil((dim + 1) / slots) */
    size_t ct_bytes = 2 * (size_t)key_bits / 8;
    if (p->dim > p->max_dim)
        return loom_error(LOOM_ERANGE,
                          "paillier: a trainable set of %zu values is above the limit of %zu (params.max_dim): "
                          "each client would encrypt %zu ciphertexts of %u bits a round; raise max_dim to "
                          "allow it, or train a smaller set",
                          p->dim, p->max_dim, n_ct, 2 * key_bits);
    if (n_ct > UINT32_MAX || n_ct > (SIZE_MAX - BLOB_HEADER) / ct_bytes)
        return loom_error(LOOM_ERANGE, "paillier: %zu values need %zu ciphertexts: too many for one blob", p->dim,
                          n_ct);
    if (layout) {
        layout->slot_bits = s;
        layout->slots = slots;
        layout->n_ct = n_ct;
        layout->blob_bytes = BLOB_HEADER + n_ct * ct_bytes;
        layout->offset = (int64_t)Q;
    }
    return LOOM_OK;
}

static void blob_header(uint8_t *h, const loom_paillier_pk *pk, const loom_paillier_params *p,
                        const loom_paillier_layout *L, uint32_t count) {
    uint64_t clip_bits;
    memcpy(&clip_bits, &p->clip, 8);
    memcpy(h, BLOB_MAGIC, 4);
    put_u32(h + 4, VERSION);
    put_u32(h + 8, pk->bits);
    memcpy(h + 12, pk->id, 32);
    put_u64(h + 44, p->dim);
    put_u64(h + 52, clip_bits);
    put_u32(h + 60, p->frac_bits);
    put_u64(h + 64, p->max_weight);
    put_u32(h + 72, p->max_clients);
    put_u32(h + 76, L->slots);
    put_u32(h + 80, count);
    put_u32(h + 84, (uint32_t)L->n_ct);
}

/* Checks a blob's header against the key and the parameters; *count = its updates. */
static int blob_parse(const uint8_t *d, size_t len, const loom_paillier_pk *pk, const loom_paillier_params *p,
                      const loom_paillier_layout *L, uint32_t *count) {
    if (len < BLOB_HEADER)
        return loom_error(LOOM_EFORMAT, "paillier blob of %zu bytes is shorter than its %u-byte header", len,
                          BLOB_HEADER);
    if (memcmp(d, BLOB_MAGIC, 4)) return loom_error(LOOM_EFORMAT, "paillier blob: magic is not \"" BLOB_MAGIC "\"");
    if (get_u32(d + 4) != VERSION)
        return loom_error(LOOM_EFORMAT, "paillier blob of version %u; this build reads version %u", get_u32(d + 4),
                          VERSION);
    if (get_u32(d + 8) != pk->bits)
        return loom_error(LOOM_EFORMAT, "paillier blob encrypted under a %u-bit key; this key has %u bits",
                          get_u32(d + 8), pk->bits);
    if (memcmp(d + 12, pk->id, 32)) return loom_error(LOOM_EFORMAT, "paillier blob encrypted under another public key");
    uint64_t clip_bits;
    memcpy(&clip_bits, &p->clip, 8);
    if (get_u64(d + 44) != p->dim)
        return loom_error(LOOM_EFORMAT, "paillier blob of %llu values; the parameters say dim %zu",
                          (unsigned long long)get_u64(d + 44), p->dim);
    if (get_u64(d + 52) != clip_bits) {
        uint64_t b = get_u64(d + 52);
        double c;
        memcpy(&c, &b, 8);
        return loom_error(LOOM_EFORMAT, "paillier blob with clip %.17g; the parameters say %.17g", c, p->clip);
    }
    if (get_u32(d + 60) != p->frac_bits)
        return loom_error(LOOM_EFORMAT, "paillier blob with frac_bits %u; the parameters say %u", get_u32(d + 60),
                          p->frac_bits);
    if (get_u64(d + 64) != p->max_weight)
        return loom_error(LOOM_EFORMAT, "paillier blob with max_weight %llu; the parameters say %llu",
                          (unsigned long long)get_u64(d + 64), (unsigned long long)p->max_weight);
    if (get_u32(d + 72) != p->max_clients)
        return loom_error(LOOM_EFORMAT, "paillier blob with max_clients %u; the parameters say %u", get_u32(d + 72),
                          p->max_clients);
    if (get_u32(d + 76) != L->slots)
        return loom_error(LOOM_EFORMAT, "paillier blob with %u slots per ciphertext; the parameters give %u",
                          get_u32(d + 76), L->slots);
    *count = get_u32(d + 80);
    if (*count < 1 || *count > p->max_clients)
        return loom_error(LOOM_EFORMAT, "paillier blob holding %u updates; it must hold 1 .. max_clients (%u)", *count,
                          p->max_clients);
    if (get_u32(d + 84) != L->n_ct)
        return loom_error(LOOM_EFORMAT, "paillier blob of %u ciphertexts; the parameters give %zu", get_u32(d + 84),
                          L->n_ct);
    if (len != L->blob_bytes)
        return loom_error(LOOM_EFORMAT, "paillier blob of %zu bytes; %zu ciphertexts make %zu", len, L->n_ct,
                          L->blob_bytes);
    return LOOM_OK;
}

int loom_paillier_encrypt_update(const loom_paillier_pk *pk, const loom_paillier_params *p, const float *x,
                                 size_t dim, uint64_t w, const uint8_t seed[32], loom_paillier_blob *out) {
    out->data = NULL;
    out->len = 0;
    loom_paillier_layout L;
    int rc = loom_paillier_check(p, pk->bits, &L);
    if (rc != LOOM_OK) return rc;
    if (dim != p->dim) return loom_error(LOOM_EINVAL, "paillier: an update of %zu values; params.dim is %zu", dim, p->dim);
    if (w < 1 || w > p->max_weight)
        return loom_error(LOOM_EINVAL, "paillier: weight %llu is outside [1, max_weight = %llu]", (unsigned long long)w,
                          (unsigned long long)p->max_weight);
    if ((rc = sodium_ready()) != LOOM_OK) return rc;
    /* v_j = w (q_j + Q), v_dim = w */
    uint64_t *v = malloc((dim + 1) * sizeof *v);
    if (!v) return loom_error(LOOM_ENOMEM, "paillier: out of memory for %zu values", dim);
    const double scale = ldexp(1.0, (int)p->frac_bits);
    for (size_t j = 0; j < dim; j++) {
        double xj = x[j];
        if (!isfinite(xj)) {
            free(v);
            return loom_error(LOOM_EINVAL, "paillier: value %zu of the update is not finite", j);
        }
        xj = xj > p->clip ? p->clip : xj < -p->clip ? -p->clip : xj;
        int64_t q = (int64_t)rint(xj * scale);
        v[j] = w * (uint64_t)(q + L.offset);
    }
    v[dim] = w;
    if ((rc = blob_alloc(out, L.blob_bytes)) != LOOM_OK) {
        free(v);
        return rc;
    }
    blob_header(out->data, pk, p, &L, 1);
    const size_t n_vals = dim + 1;
    const long n_ct = (long)L.n_ct;
#pragma omp parallel if (n_ct > 1)
    {
        mpz_t m, c, r, t;
        mpz_inits(m, c, r, t, NULL);
#pragma omp for schedule(dynamic, 1)
        for (long k = 0; k < n_ct; k++) {
            size_t first = (size_t)k * L.slots, last = LOOM_MIN(first + L.slots, n_vals);
            mpz_set_ui(m, 0);
            for (size_t j = last; j-- > first;) { /* m = sum_i v_(first+i) 2^(s i) */
                mpz_mul_2exp(m, m, L.slot_bits);
                mpz_add_ui(m, m, v[j]);
            }
            prng g;
            prng_init(&g, seed, "loom paillier update r", (uint64_t)k);
            encrypt_mpz(pk, c, m, &g, r, t);
            export_fixed(out->data + BLOB_HEADER + (size_t)k * pk->ct_bytes, pk->ct_bytes, c);
            sodium_memzero(&g, sizeof g);
        }
        mpz_wipe(m), mpz_wipe(r), mpz_clear(c), mpz_wipe(t);
    }
    sodium_memzero(v, (dim + 1) * sizeof *v);
    free(v);
    return LOOM_OK;
}

struct loom_paillier_sum {
    loom_paillier_params p;
    loom_paillier_layout L;
    loom_paillier_pk pk; /* a copy: the sum does not borrow the caller's key */
    uint32_t count;
    mpz_t *acc; /* L.n_ct running products, 1 while empty */
};

int loom_paillier_sum_create(loom_paillier_sum **out, const loom_paillier_pk *pk, const loom_paillier_params *p) {
    *out = NULL;
    loom_paillier_layout L;
    int rc = loom_paillier_check(p, pk->bits, &L);
    if (rc != LOOM_OK) return rc;
    loom_paillier_sum *s = calloc(1, sizeof *s);
    if (!s) return loom_error(LOOM_ENOMEM, "paillier: out of memory");
    s->p = *p;
    s->L = L;
    pk_init(&s->pk);
    s->pk.bits = pk->bits;
    mpz_set(s->pk.n, pk->n);
    s->acc = malloc(L.n_ct * sizeof *s->acc);
    if (!s->acc || (rc = pk_derive(&s->pk)) != LOOM_OK) {
        if (!s->acc) rc = loom_error(LOOM_ENOMEM, "paillier: out of memory for %zu ciphertexts", L.n_ct);
        free(s->acc);
        s->acc = NULL;
        loom_paillier_sum_free(s);
        return rc;
    }
    for (size_t k = 0; k < L.n_ct; k++) mpz_init_set_ui(s->acc[k], 1);
    *out = s;
    return LOOM_OK;
}

void loom_paillier_sum_free(loom_paillier_sum *s) {
    if (!s) return;
    if (s->acc)
        for (size_t k = 0; k < s->L.n_ct; k++) mpz_clear(s->acc[k]);
    free(s->acc);
    pk_clear(&s->pk);
    free(s);
}

uint32_t loom_paillier_sum_count(const loom_paillier_sum *s) { return s->count; }

int loom_paillier_sum_add(loom_paillier_sum *s, const uint8_t *blob, size_t len) {
    uint32_t count;
    int rc = blob_parse(blob, len, &s->pk, &s->p, &s->L, &count);
    if (rc != LOOM_OK) return rc;
    if ((uint64_t)s->count + count > s->p.max_clients)
        return loom_error(LOOM_ERANGE,
                          "paillier: adding %u updates to a sum of %u would exceed max_clients (%u), beyond which "
                          "the slots could carry",
                          count, s->count, s->p.max_clients);
    /* every ciphertext is checked before any is added, so a refused blob leaves the sum unchanged */
    const size_t cb = s->pk.ct_bytes;
    const uint8_t *cts = blob + BLOB_HEADER;
    for (size_t k = 0; k < s->L.n_ct; k++)
        if (!ct_in_range(&s->pk, cts + k * cb))
            return loom_error(LOOM_EFORMAT, "paillier blob: ciphertext %zu is not in [1, n^2)", k);
    const long n_ct = (long)s->L.n_ct;
#pragma omp parallel if (n_ct > 64)
    {
        mpz_t c;
        mpz_init(c);
#pragma omp for schedule(static)
        for (long k = 0; k < n_ct; k++) {
            import_fixed(c, cts + (size_t)k * cb, cb);
            mpz_mul(s->acc[k], s->acc[k], c);
            mpz_mod(s->acc[k], s->acc[k], s->pk.n2);
        }
        mpz_clear(c);
    }
    s->count += count;
    return LOOM_OK;
}

int loom_paillier_sum_result(const loom_paillier_sum *s, loom_paillier_blob *out) {
    out->data = NULL;
    out->len = 0;
    if (s->count == 0) return loom_error(LOOM_ESTATE, "paillier: the sum holds no update");
    int rc = blob_alloc(out, s->L.blob_bytes);
    if (rc != LOOM_OK) return rc;
    blob_header(out->data, &s->pk, &s->p, &s->L, s->count);
    for (size_t k = 0; k < s->L.n_ct; k++)
        export_fixed(out->data + BLOB_HEADER + k * s->pk.ct_bytes, s->pk.ct_bytes, s->acc[k]);
    return LOOM_OK;
}

int loom_paillier_decrypt_sum_fx(const loom_paillier_sk *sk, const loom_paillier_params *p, const uint8_t *blob,
                                 size_t len, int64_t *sum_fx, uint64_t *total_weight, uint32_t *count_out) {
    const loom_paillier_pk *pk = &sk->pk;
    loom_paillier_layout L;
    int rc = loom_paillier_check(p, pk->bits, &L);
    if (rc != LOOM_OK) return rc;
    uint32_t count;
    if ((rc = blob_parse(blob, len, pk, p, &L, &count)) != LOOM_OK) return rc;
    const size_t n_vals = p->dim + 1;
    uint64_t *S = malloc(n_vals * sizeof *S);
    if (!S) return loom_error(LOOM_ENOMEM, "paillier: out of memory for %zu values", p->dim);
    /* decrypt and cut every plaintext into its slots; the first bad ciphertext is reported */
    long bad = -1;
    int bad_kind = 0; /* 1: range or not a unit, 2: non-zero bits outside the slots in use */
    const long n_ct = (long)L.n_ct;
    const uint64_t slot_mask = ((uint64_t)1 << L.slot_bits) - 1;
#pragma omp parallel if (n_ct > 1)
    {
        mpz_t c, m, t, u;
        mpz_inits(c, m, t, u, NULL);
#pragma omp for schedule(dynamic, 1)
        for (long k = 0; k < n_ct; k++) {
            const uint8_t *ct = blob + BLOB_HEADER + (size_t)k * pk->ct_bytes;
            int kind = 0;
            if (!ct_in_range(pk, ct)) {
                kind = 1;
            } else {
                import_fixed(c, ct, pk->ct_bytes);
                mpz_gcd(t, c, pk->n);
                if (mpz_cmp_ui(t, 1) != 0) kind = 1;
            }
            if (!kind) {
                decrypt_mpz(sk, m, c, t, u);
                size_t first = (size_t)k * L.slots;
                for (size_t i = 0; i < L.slots; i++) {
                    uint64_t sv = mpz_get_ui(m) & slot_mask;
                    mpz_fdiv_q_2exp(m, m, L.slot_bits);
                    if (first + i < n_vals)
                        S[first + i] = sv;
                    else if (sv)
                        kind = 2;
                }
                if (mpz_sgn(m)) kind = 2;
            }
            if (kind) {
#pragma omp critical(loom_paillier_bad)
                if (bad < 0 || k < bad) bad = k, bad_kind = kind;
            }
        }
        mpz_wipe(c), mpz_wipe(m), mpz_wipe(t), mpz_wipe(u);
    }
    if (bad >= 0) {
        free(S);
        return bad_kind == 1
                   ? loom_error(LOOM_EFORMAT, "paillier blob: ciphertext %ld is not in [1, n^2) or not coprime to n", bad)
                   : loom_error(LOOM_EFORMAT,
                                "paillier sum: plaintext %ld has bits outside the slots in use: an update was not "
                                "encoded with these parameters",
                                bad);
    }
    const uint64_t W = S[p->dim], Q = (uint64_t)L.offset;
    if (W < 1 || W > (uint64_t)count * p->max_weight) {
        free(S);
        return loom_error(LOOM_EFORMAT, "paillier sum: total weight %llu is outside [1, %u x max_weight]",
                          (unsigned long long)W, count);
    }
    for (size_t j = 0; j < p->dim; j++) {
        if (S[j] > 2 * Q * W) { /* 2 Q W <= B < 2^63 */
            free(S);
            return loom_error(LOOM_EFORMAT,
                              "paillier sum: value %zu is above 2 clip 2^frac_bits x the total weight: an update "
                              "was not encoded with these parameters",
                              j);
        }
        if (sum_fx) sum_fx[j] = (int64_t)S[j] - (int64_t)(Q * W);
    }
    free(S);
    if (total_weight) *total_weight = W;
    if (count_out) *count_out = count;
    return LOOM_OK;
}

int loom_paillier_decrypt_sum(const loom_paillier_sk *sk, const loom_paillier_params *p, const uint8_t *blob,
                              size_t len, double *sum, uint64_t *total_weight) {
    int64_t *fx = NULL;
    if (sum) {
        if (p->dim < 1 || p->dim > p->max_dim) return loom_paillier_check(p, sk->pk.bits, NULL);
        fx = malloc(p->dim * sizeof *fx);
        if (!fx) return loom_error(LOOM_ENOMEM, "paillier: out of memory for %zu values", p->dim);
    }
    int rc = loom_paillier_decrypt_sum_fx(sk, p, blob, len, fx, total_weight, NULL);
    if (rc == LOOM_OK && sum)
        for (size_t j = 0; j < p->dim; j++) sum[j] = ldexp((double)fx[j], -(int)p->frac_bits);
    free(fx);
    return rc;
}
