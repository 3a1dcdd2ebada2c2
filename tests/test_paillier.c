/* Paillier (include/loom/paillier.h) at 2048 bits: keys and their refusals; decrypt(encrypt(m)) = m and
 * E(a) E(b) = E(a + b), checked against the textbook formulas computed here with GMP from the secret
 * key's primes (lambda/mu decryption, encryption with our own r); the decrypted aggregate of several
 * clients (mixed signs, weights, clipping, packed and unpacked) against the fixed-point sum computed
 * here as integers; the worst case of the slot headroom (every value at +clip or -clip, max weight,
 * max clients); order independence; malformed keys, ciphertexts and blobs refused with their reasons;
 * the size refusal. */
#include <gmp.h>
#include <omp.h>
#include <string.h>

#include "loom/core.h"
#include "loom/paillier.h"
#include "test.h"

static int has(const char *needle) { return strstr(loom_errmsg(), needle) != NULL; }

#define CHECK_ERR(expr, code, needle)                                                                       \
    do {                                                                                                    \
        loom_clear_error();                                                                                 \
        int rc2_ = (expr);                                                                                  \
        CHECK(rc2_ == (code) && has(needle), "%s: rc %d (want %d), message \"%s\" (want \"%s\")", #expr, rc2_, \
              (int)(code), loom_errmsg(), needle);                                                          \
    } while (0)

static const uint8_t SEED[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

/* ---- the textbook scheme, written here from the definitions ---- */

typedef struct {
    mpz_t p, q, n, n2;
} ref_key;

static void ref_from_sk(ref_key *k, const loom_paillier_sk *sk) {
    loom_paillier_blob b = {0};
    CHECK_OK(loom_paillier_sk_save(sk, &b));
    unsigned bits = loom_paillier_pk_bits(loom_paillier_sk_public(sk));
    mpz_inits(k->p, k->q, k->n, k->n2, NULL);
    mpz_import(k->p, bits / 16, 1, 1, 1, 0, b.data + 12);
    mpz_import(k->q, bits / 16, 1, 1, 1, 0, b.data + 12 + bits / 16);
    mpz_mul(k->n, k->p, k->q);
    mpz_mul(k->n2, k->n, k->n);
    loom_paillier_blob_free(&b);
}

static void ref_clear(ref_key *k) { mpz_clears(k->p, k->q, k->n, k->n2, NULL); }

/* m = L(c^lambda mod n^2) mu mod n, lambda = lcm(p-1, q-1), mu = L(g^lambda mod n^2)^-1, g = n + 1 */
static void ref_decrypt(const ref_key *k, mpz_t m, const mpz_t c) {
    mpz_t lam, mu, t, u;
    mpz_inits(lam, mu, t, u, NULL);
    mpz_sub_ui(t, k->p, 1);
    mpz_sub_ui(u, k->q, 1);
    mpz_lcm(lam, t, u);
    mpz_add_ui(t, k->n, 1);
    mpz_powm(t, t, lam, k->n2);
    mpz_sub_ui(t, t, 1);
    mpz_divexact(t, t, k->n);
    mpz_invert(mu, t, k->n);
    mpz_powm(t, c, lam, k->n2);
    mpz_sub_ui(t, t, 1);
    mpz_divexact(t, t, k->n);
    mpz_mul(t, t, mu);
    mpz_mod(m, t, k->n);
    mpz_clears(lam, mu, t, u, NULL);
}

/* c = g^m r^n mod n^2 with g = n + 1 computed as a power (not the 1 + m n shortcut) */
static void ref_encrypt(const ref_key *k, mpz_t c, const mpz_t m, gmp_randstate_t rs) {
    mpz_t g, r;
    mpz_inits(g, r, NULL);
    mpz_add_ui(g, k->n, 1);
    mpz_powm(g, g, m, k->n2);
    do mpz_urandomm(r, rs, k->n);
    while (mpz_sgn(r) == 0);
    mpz_powm(r, r, k->n, k->n2);
    mpz_mul(c, g, r);
    mpz_mod(c, c, k->n2);
    mpz_clears(g, r, NULL);
}

static void to_bytes(uint8_t *out, size_t width, const mpz_t z) {
    memset(out, 0, width);
    size_t cnt, bytes = (mpz_sizeinbase(z, 2) + 7) / 8;
    if (mpz_sgn(z)) mpz_export(out + width - bytes, &cnt, 1, 1, 1, 0, z);
}

static void test_keys(loom_paillier_sk *sk) {
    loom_paillier_sk *bad = NULL;
    CHECK_ERR(loom_paillier_keygen(&bad, 1024, SEED), LOOM_EINVAL, "multiple of 64 in [2048, 8192]");
    CHECK_ERR(loom_paillier_keygen(&bad, 2048 + 32, SEED), LOOM_EINVAL, "2080 bits");
    CHECK(bad == NULL, "no key from a refused keygen");
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    CHECK(loom_paillier_pk_bits(pk) == 2048 && loom_paillier_ct_bytes(pk) == 512 && loom_paillier_pt_bytes(pk) == 256,
          "sizes of a 2048-bit key");
    ref_key k;
    ref_from_sk(&k, sk);
    CHECK(mpz_sizeinbase(k.n, 2) == 2048 && mpz_sizeinbase(k.p, 2) == 1024 && mpz_sizeinbase(k.q, 2) == 1024,
          "n has 2048 bits, p and q 1024");
    CHECK(mpz_probab_prime_p(k.p, 30) && mpz_probab_prime_p(k.q, 30) && mpz_cmp(k.p, k.q) != 0, "p, q distinct primes");
    /* public key: save, load, same id; and the secret key */
    loom_paillier_blob pb = {0}, sb = {0};
    CHECK_OK(loom_paillier_pk_save(pk, &pb));
    CHECK(pb.len == 12 + 256 && !memcmp(pb.data, "LPPK", 4), "public key blob of %zu bytes", pb.len);
    mpz_t n;
    mpz_init(n);
    mpz_import(n, 256, 1, 1, 1, 0, pb.data + 12);
    CHECK(mpz_cmp(n, k.n) == 0, "the public key holds n = p q");
    loom_paillier_pk *pk2 = NULL;
    CHECK_OK(loom_paillier_pk_load(&pk2, pb.data, pb.len));
    uint8_t id1[32], id2[32];
    loom_paillier_pk_id(pk, id1);
    if (pk2) loom_paillier_pk_id(pk2, id2);
    CHECK(pk2 && !memcmp(id1, id2, 32), "a loaded public key has the same id");
    loom_paillier_pk_free(pk2);
    CHECK_OK(loom_paillier_sk_save(sk, &sb));
    loom_paillier_sk *sk2 = NULL;
    CHECK_OK(loom_paillier_sk_load(&sk2, sb.data, sb.len));
    if (sk2) loom_paillier_pk_id(loom_paillier_sk_public(sk2), id2);
    CHECK(sk2 && !memcmp(id1, id2, 32), "a loaded secret key has the same public key");
    loom_paillier_sk_free(sk2);

    /* malformed public keys */
    uint8_t *x = malloc(pb.len);
    loom_paillier_pk *pk3 = NULL;
    CHECK_ERR(loom_paillier_pk_load(&pk3, pb.data, 11), LOOM_EFORMAT, "shorter than its 12-byte header");
    CHECK_ERR(loom_paillier_pk_load(&pk3, pb.data, pb.len - 1), LOOM_EFORMAT, "must be 268 bytes, not 267");
    memcpy(x, pb.data, pb.len), x[0] = 'X';
    CHECK_ERR(loom_paillier_pk_load(&pk3, x, pb.len), LOOM_EFORMAT, "magic");
    memcpy(x, pb.data, pb.len), x[4] = 2;
    CHECK_ERR(loom_paillier_pk_load(&pk3, x, pb.len), LOOM_EFORMAT, "version 2");
    memcpy(x, pb.data, pb.len), x[8] = 0, x[9] = 4; /* 1024 bits */
    CHECK_ERR(loom_paillier_pk_load(&pk3, x, pb.len), LOOM_EFORMAT, "public key of 1024 bits");
    memcpy(x, pb.data, pb.len), x[pb.len - 1] ^= 1;
    CHECK_ERR(loom_paillier_pk_load(&pk3, x, pb.len), LOOM_EFORMAT, "n is even");
    memcpy(x, pb.data, pb.len), x[12] = 0;
    CHECK_ERR(loom_paillier_pk_load(&pk3, x, pb.len), LOOM_EFORMAT, "does not have 2048 bits");
    mpz_t z;
    mpz_init(z);
    mpz_fdiv_r_ui(z, k.n, 6);
    mpz_sub(z, k.n, z);
    mpz_add_ui(z, z, 3); /* an odd multiple of 3 next to n */
    memcpy(x, pb.data, 12), to_bytes(x + 12, 256, z);
    CHECK_ERR(loom_paillier_pk_load(&pk3, x, pb.len), LOOM_EFORMAT, "factor below 1000");
    mpz_mul(z, k.p, k.p); /* 2048 bits: p has its top two bits set */
    memcpy(x, pb.data, 12), to_bytes(x + 12, 256, z);
    CHECK_ERR(loom_paillier_pk_load(&pk3, x, pb.len), LOOM_EFORMAT, "perfect square");
    CHECK(pk3 == NULL, "no key from a refused load");
    free(x);

    /* malformed secret keys */
    x = malloc(sb.len);
    loom_paillier_sk *sk3 = NULL;
    memcpy(x, sb.data, sb.len), x[3] = 'X';
    CHECK_ERR(loom_paillier_sk_load(&sk3, x, sb.len), LOOM_EFORMAT, "not a secret key");
    CHECK_ERR(loom_paillier_sk_load(&sk3, pb.data, pb.len), LOOM_EFORMAT, "not a secret key");
    CHECK_ERR(loom_paillier_sk_load(&sk3, sb.data, sb.len + 1), LOOM_EFORMAT, "must be 268 bytes, not 269");
    memcpy(x, sb.data, sb.len), x[12 + 127] ^= 2; /* p + 2 or p - 2: odd, not prime */
    CHECK_ERR(loom_paillier_sk_load(&sk3, x, sb.len), LOOM_EFORMAT, "not prime");
    memcpy(x, sb.data, sb.len), memcpy(x + 12 + 128, x + 12, 128);
    CHECK_ERR(loom_paillier_sk_load(&sk3, x, sb.len), LOOM_EFORMAT, "p equals q");
    memcpy(x, sb.data, sb.len), x[12] = 0x01;
    CHECK_ERR(loom_paillier_sk_load(&sk3, x, sb.len), LOOM_EFORMAT, "must have 1024 bits each");
    CHECK(sk3 == NULL, "no key from a refused load");
    free(x);
    mpz_clears(n, z, NULL);
    ref_clear(&k);
    loom_paillier_blob_free(&pb);
    loom_paillier_blob_free(&sb);
}

/* A seed names the key; without one, keys come from the system generator and differ. */
static void test_keygen_sources(loom_paillier_sk *sk) {
    loom_paillier_sk *again = NULL, *fresh = NULL;
    CHECK_OK(loom_paillier_keygen(&again, 2048, SEED));
    CHECK_OK(loom_paillier_keygen(&fresh, 2048, NULL));
    if (!again || !fresh) goto out;
    uint8_t a[32], b[32], c[32];
    loom_paillier_pk_id(loom_paillier_sk_public(sk), a);
    loom_paillier_pk_id(loom_paillier_sk_public(again), b);
    loom_paillier_pk_id(loom_paillier_sk_public(fresh), c);
    CHECK(!memcmp(a, b, 32), "the same seed gives the same key");
    CHECK(memcmp(a, c, 32) != 0, "a key from the system generator is another key");
    uint8_t m[256] = {0}, ct[512], d[256];
    m[255] = 42;
    CHECK_OK(loom_paillier_encrypt(loom_paillier_sk_public(fresh), m, 256, NULL, ct));
    CHECK_OK(loom_paillier_decrypt(fresh, ct, d));
    CHECK(!memcmp(m, d, 256), "a round trip under the fresh key");
    int rc = loom_paillier_decrypt(sk, ct, d); /* refused (out of range) or another plaintext */
    CHECK(rc != LOOM_OK || memcmp(m, d, 256) != 0, "another key does not decrypt it");
out:
    loom_paillier_sk_free(again);
    loom_paillier_sk_free(fresh);
}

static void test_ciphertexts(loom_paillier_sk *sk) {
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    ref_key k;
    ref_from_sk(&k, sk);
    gmp_randstate_t rs;
    gmp_randinit_mt(rs);
    gmp_randseed_ui(rs, 7);
    uint8_t ct[512], ct2[512], ct3[512], m[256], mb[256];
    mpz_t a, b, c, d;
    mpz_inits(a, b, c, d, NULL);
    /* round trips: 0, 1, n - 1 and random values; the library's ciphertexts decrypted by lambda/mu */
    for (int i = 0; i < 6; i++) {
        if (i == 0) mpz_set_ui(a, 0);
        else if (i == 1) mpz_set_ui(a, 1);
        else if (i == 2) mpz_sub_ui(a, k.n, 1);
        else mpz_urandomm(a, rs, k.n);
        to_bytes(mb, 256, a);
        CHECK_OK(loom_paillier_encrypt(pk, mb, 256, i == 5 ? NULL : SEED, ct));
        CHECK_OK(loom_paillier_decrypt(sk, ct, m));
        CHECK(!memcmp(m, mb, 256), "decrypt(encrypt(m)) = m, case %d", i);
        mpz_import(c, 512, 1, 1, 1, 0, ct);
        ref_decrypt(&k, d, c);
        CHECK(mpz_cmp(d, a) == 0, "the textbook decryption of the library's ciphertext, case %d", i);
        /* the textbook encryption decrypted by the library's CRT */
        ref_encrypt(&k, c, a, rs);
        to_bytes(ct, 512, c);
        CHECK_OK(loom_paillier_decrypt(sk, ct, m));
        CHECK(!memcmp(m, mb, 256), "CRT decryption of the textbook ciphertext, case %d", i);
    }
    /* encryption is randomised: two encryptions of one value differ */
    CHECK_OK(loom_paillier_encrypt(pk, mb, 256, NULL, ct));
    CHECK_OK(loom_paillier_encrypt(pk, mb, 256, NULL, ct2));
    CHECK(memcmp(ct, ct2, 512) != 0, "two encryptions of one plaintext differ");
    /* a short plaintext */
    uint8_t seven = 7;
    CHECK_OK(loom_paillier_encrypt(pk, &seven, 1, NULL, ct));
    CHECK_OK(loom_paillier_decrypt(sk, ct, m));
    mpz_import(d, 256, 1, 1, 1, 0, m);
    CHECK(mpz_cmp_ui(d, 7) == 0, "a one-byte plaintext");
    /* E(a) E(b) = E(a + b mod n), with and without the wrap */
    for (int i = 0; i < 3; i++) {
        if (i == 0) mpz_set_ui(a, 123456789), mpz_set_si(b, 987654321);
        else mpz_urandomm(a, rs, k.n), mpz_urandomm(b, rs, k.n);
        if (i == 2) mpz_sub(b, k.n, a), mpz_add_ui(b, b, 5); /* a + b = n + 5 */
        to_bytes(mb, 256, a);
        CHECK_OK(loom_paillier_encrypt(pk, mb, 256, NULL, ct));
        to_bytes(mb, 256, b);
        CHECK_OK(loom_paillier_encrypt(pk, mb, 256, NULL, ct2));
        CHECK_OK(loom_paillier_add(pk, ct, ct2, ct3));
        CHECK_OK(loom_paillier_add(pk, ct, ct2, ct)); /* aliasing */
        CHECK(!memcmp(ct, ct3, 512), "add in place");
        CHECK_OK(loom_paillier_decrypt(sk, ct3, m));
        mpz_add(c, a, b);
        mpz_mod(c, c, k.n);
        mpz_import(d, 256, 1, 1, 1, 0, m);
        CHECK(mpz_cmp(c, d) == 0, "E(a) E(b) decrypts to a + b mod n, case %d", i);
        if (i == 2) CHECK(mpz_cmp_ui(d, 5) == 0, "the wrap: a + b = n + 5 decrypts to 5");
    }
    /* refusals */
    to_bytes(mb, 256, k.n);
    CHECK_ERR(loom_paillier_encrypt(pk, mb, 256, NULL, ct), LOOM_ERANGE, "not below n");
    memset(ct2, 0, 512);
    CHECK_ERR(loom_paillier_decrypt(sk, ct2, m), LOOM_EFORMAT, "ciphertext is not in [1, n^2)");
    memset(ct2, 0xff, 512);
    CHECK_ERR(loom_paillier_decrypt(sk, ct2, m), LOOM_EFORMAT, "ciphertext is not in [1, n^2)");
    CHECK_ERR(loom_paillier_add(pk, ct, ct2, ct3), LOOM_EFORMAT, "second ciphertext is not in [1, n^2)");
    mpz_mul_ui(c, k.p, 12345);
    to_bytes(ct2, 512, c);
    CHECK_ERR(loom_paillier_decrypt(sk, ct2, m), LOOM_EFORMAT, "not coprime to n");
    CHECK_ERR(loom_paillier_add(pk, ct2, ct, ct3), LOOM_EFORMAT, "first ciphertext is not coprime");
    mpz_clears(a, b, c, d, NULL);
    gmp_randclear(rs);
    ref_clear(&k);
}

/* The fixed-point value of x as the encoding defines it, computed here: clip, scale, round to even. */
static int64_t ref_q(double x, double clip, unsigned f) {
    if (x > clip) x = clip;
    if (x < -clip) x = -clip;
    return (int64_t)nearbyint(x * pow(2.0, f));
}

/* K clients, mixed signs, beyond-clip values and weights: the decrypted aggregate equals the integer
 * sum of w_k q_kj computed here; any order of addition, or partial sums, gives the same bytes. */
static void test_aggregate(loom_paillier_sk *sk, int pack, size_t dim) {
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    enum { K = 5 };
    loom_paillier_params p;
    loom_paillier_defaults(&p, dim);
    p.clip = 0.5;
    p.frac_bits = 20;
    p.max_weight = 1000;
    p.max_clients = 16;
    p.pack = pack;
    loom_paillier_layout L;
    CHECK_OK(loom_paillier_check(&p, 2048, &L));
    /* B = 16 * 2 * 2^19 * 1000 = 16,777,216,000 < 2^34 = 17,179,869,184 and >= 2^33 */
    CHECK(L.slot_bits == 34 && L.offset == 524288, "slot of %u bits, offset %lld", L.slot_bits, (long long)L.offset);
    CHECK(L.slots == (pack ? 2047u / 34 : 1u) && L.n_ct == (dim + 1 + L.slots - 1) / L.slots,
          "%u slots, %zu ciphertexts", L.slots, L.n_ct);
    CHECK(L.blob_bytes == 88 + L.n_ct * 512, "blob of %zu bytes", L.blob_bytes);
    const uint64_t w[K] = {1, 1000, 37, 512, 999};
    float *x = malloc(dim * sizeof *x);
    int64_t *want = calloc(dim, sizeof *want), *got = calloc(dim, sizeof *got);
    double *gotd = calloc(dim, sizeof *gotd);
    loom_paillier_blob blob[K];
    uint64_t s = 99;
    for (int c = 0; c < K; c++) {
        for (size_t j = 0; j < dim; j++) {
            double v = 0.3 * test_normal(&s);
            if (j % 7 == 3) v = (c % 2 ? -1 : 1) * 3.0; /* beyond the clip: clipped to +-0.5 */
            if (j % 11 == 5) v = -0.5;
            x[j] = (float)v;
            want[j] += (int64_t)w[c] * ref_q(x[j], p.clip, p.frac_bits);
        }
        CHECK_OK(loom_paillier_encrypt_update(pk, &p, x, dim, w[c], NULL, &blob[c]));
        CHECK(blob[c].len == L.blob_bytes, "client blob of %zu bytes", blob[c].len);
    }
    /* forward order */
    loom_paillier_sum *sum = NULL;
    CHECK_OK(loom_paillier_sum_create(&sum, pk, &p));
    for (int c = 0; c < K && sum; c++) CHECK_OK(loom_paillier_sum_add(sum, blob[c].data, blob[c].len));
    loom_paillier_blob r1 = {0}, r2 = {0}, r3 = {0}, part1 = {0}, part2 = {0};
    CHECK(sum && loom_paillier_sum_count(sum) == K, "the sum holds %d updates", K);
    CHECK_OK(loom_paillier_sum_result(sum, &r1));
    loom_paillier_sum_free(sum);
    uint64_t W = 0;
    uint32_t count = 0;
    CHECK_OK(loom_paillier_decrypt_sum_fx(sk, &p, r1.data, r1.len, got, &W, &count));
    CHECK(W == 1 + 1000 + 37 + 512 + 999 && count == K, "total weight %llu, count %u", (unsigned long long)W, count);
    size_t bad = 0;
    for (size_t j = 0; j < dim; j++) bad += got[j] != want[j];
    CHECK(bad == 0, "pack %d: %zu of %zu values differ from the plain fixed-point sum (first: %lld vs %lld)", pack, bad,
          dim, (long long)got[0], (long long)want[0]);
    CHECK_OK(loom_paillier_decrypt_sum(sk, &p, r1.data, r1.len, gotd, &W));
    bad = 0;
    for (size_t j = 0; j < dim; j++) bad += gotd[j] != ldexp((double)want[j], -20);
    CHECK(bad == 0, "pack %d: %zu doubles differ from sum 2^-20", pack, bad);
    /* reverse order */
    CHECK_OK(loom_paillier_sum_create(&sum, pk, &p));
    for (int c = K - 1; c >= 0 && sum; c--) CHECK_OK(loom_paillier_sum_add(sum, blob[c].data, blob[c].len));
    CHECK_OK(loom_paillier_sum_result(sum, &r2));
    loom_paillier_sum_free(sum);
    CHECK(r1.len == r2.len && !memcmp(r1.data, r2.data, r1.len), "the sum does not depend on the order");
    /* partial sums {0, 1} and {2, 3, 4}, then their sum */
    CHECK_OK(loom_paillier_sum_create(&sum, pk, &p));
    CHECK_OK(loom_paillier_sum_add(sum, blob[1].data, blob[1].len));
    CHECK_OK(loom_paillier_sum_add(sum, blob[0].data, blob[0].len));
    CHECK_OK(loom_paillier_sum_result(sum, &part1));
    loom_paillier_sum_free(sum);
    CHECK_OK(loom_paillier_sum_create(&sum, pk, &p));
    for (int c = 2; c < K; c++) CHECK_OK(loom_paillier_sum_add(sum, blob[c].data, blob[c].len));
    CHECK_OK(loom_paillier_sum_result(sum, &part2));
    loom_paillier_sum_free(sum);
    CHECK_OK(loom_paillier_sum_create(&sum, pk, &p));
    CHECK_OK(loom_paillier_sum_add(sum, part2.data, part2.len));
    CHECK_OK(loom_paillier_sum_add(sum, part1.data, part1.len));
    CHECK(loom_paillier_sum_count(sum) == K, "partial sums count their updates");
    CHECK_OK(loom_paillier_sum_result(sum, &r3));
    loom_paillier_sum_free(sum);
    CHECK(r1.len == r3.len && !memcmp(r1.data, r3.data, r1.len), "a sum of partial sums is the same sum");
    for (int c = 0; c < K; c++) loom_paillier_blob_free(&blob[c]);
    loom_paillier_blob_free(&r1), loom_paillier_blob_free(&r2), loom_paillier_blob_free(&r3);
    loom_paillier_blob_free(&part1), loom_paillier_blob_free(&part2);
    free(x), free(want), free(got), free(gotd);
}

/* The worst case of the headroom: max_clients updates at max weight, every value at +clip or -clip
 * (slots alternately at their largest, B, and at 0: a carry out of a full slot would show in its empty
 * neighbour), then all at +clip, then all at -clip. The same client blob is added max_clients times. */
static void headroom_case(loom_paillier_sk *sk, double clip, unsigned f, uint64_t max_w, uint32_t max_k,
                          unsigned want_s) {
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    const size_t dim = 150; /* the first plaintext full at any slot width >= 14 */
    loom_paillier_params p;
    loom_paillier_defaults(&p, dim);
    p.clip = clip, p.frac_bits = f, p.max_weight = max_w, p.max_clients = max_k;
    loom_paillier_layout L;
    CHECK_OK(loom_paillier_check(&p, 2048, &L));
    CHECK(L.slot_bits == want_s, "clip %g f %u max_weight %llu max_clients %u: slot of %u bits, want %u", clip, f,
          (unsigned long long)max_w, max_k, L.slot_bits, want_s);
    /* B = max_k 2 Q max_w, computed here; the slot holds it, and half a slot would not */
    const double Q = nearbyint(clip * pow(2.0, f));
    const long double B = (long double)max_k * 2 * Q * (long double)max_w;
    CHECK(B < ldexpl(1, (int)want_s) && B >= ldexpl(1, (int)want_s - 1), "B = %.0Lf is in [2^(s-1), 2^s)", B);
    float x[150];
    for (int pattern = 0; pattern < 3; pattern++) {
        for (size_t j = 0; j < dim; j++) {
            double sign = pattern == 0 ? (j % 2 ? -1 : 1) : pattern == 1 ? 1 : -1;
            x[j] = (float)(sign * (j % 4 == 2 ? 4 * clip : clip)); /* beyond the clip counts as the clip */
        }
        loom_paillier_blob b = {0}, r = {0};
        CHECK_OK(loom_paillier_encrypt_update(pk, &p, x, dim, max_w, NULL, &b));
        loom_paillier_sum *sum = NULL;
        CHECK_OK(loom_paillier_sum_create(&sum, pk, &p));
        int fails = 0;
        for (uint32_t k = 0; k < max_k && sum; k++) fails += loom_paillier_sum_add(sum, b.data, b.len) != LOOM_OK;
        CHECK(fails == 0, "%d additions failed", fails);
        if (pattern == 0 && sum) {
            CHECK_ERR(loom_paillier_sum_add(sum, b.data, b.len), LOOM_ERANGE, "exceed max_clients");
            CHECK(loom_paillier_sum_count(sum) == max_k, "the refused update is not counted");
        }
        CHECK_OK(loom_paillier_sum_result(sum, &r));
        loom_paillier_sum_free(sum);
        int64_t got[150];
        uint64_t W = 0;
        CHECK_OK(loom_paillier_decrypt_sum_fx(sk, &p, r.data, r.len, got, &W, NULL));
        CHECK(W == (uint64_t)max_k * max_w, "pattern %d: total weight %llu", pattern, (unsigned long long)W);
        size_t bad = 0;
        for (size_t j = 0; j < dim; j++) {
            long double want = (x[j] > 0 ? 1 : -1) * (long double)max_k * (long double)max_w * Q;
            bad += (long double)got[j] != want;
        }
        CHECK(bad == 0, "pattern %d: %zu of %zu worst-case values decoded wrong (value 0: %lld)", pattern, bad, dim,
              (long long)got[0]);
        loom_paillier_blob_free(&b);
        loom_paillier_blob_free(&r);
    }
}

static void test_refusals(loom_paillier_sk *sk) {
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    loom_paillier_params p;
    loom_paillier_defaults(&p, 40);
    loom_paillier_layout L;
    CHECK_OK(loom_paillier_check(&p, 2048, &L));
    CHECK(L.slot_bits == 60 && L.slots == 34 && L.n_ct == 2, "defaults: %u-bit slots, %u per plaintext", L.slot_bits,
          L.slots);
    /* the size refusal names the size, the limit and the knob */
    loom_paillier_params big = p;
    big.dim = LOOM_PAILLIER_DEFAULT_MAX_DIM + 1;
    char want[200];
    snprintf(want, sizeof want, "trainable set of %zu values is above the limit of %zu (params.max_dim)", big.dim,
             (size_t)LOOM_PAILLIER_DEFAULT_MAX_DIM);
    CHECK_ERR(loom_paillier_check(&big, 2048, NULL), LOOM_ERANGE, want);
    CHECK(has("raise max_dim"), "the knob: %s", loom_errmsg());
    big.max_dim = big.dim;
    CHECK_OK(loom_paillier_check(&big, 2048, NULL));
    loom_paillier_params small = p;
    small.max_dim = 39;
    float x[40] = {0};
    loom_paillier_blob b = {0};
    CHECK_ERR(loom_paillier_encrypt_update(pk, &small, x, 40, 1, NULL, &b), LOOM_ERANGE,
              "trainable set of 40 values is above the limit of 39 (params.max_dim)");
    loom_paillier_sum *sum = NULL;
    CHECK_ERR(loom_paillier_sum_create(&sum, pk, &small), LOOM_ERANGE, "above the limit of 39");
    CHECK(sum == NULL && b.data == NULL, "nothing made");
    /* parameters */
    loom_paillier_params q = p;
    q.frac_bits = 40;
    CHECK_ERR(loom_paillier_check(&q, 2048, NULL), LOOM_EINVAL, "more than 63 bits");
    q = p, q.clip = 0;
    CHECK_ERR(loom_paillier_check(&q, 2048, NULL), LOOM_EINVAL, "clip must be finite and > 0");
    q = p, q.clip = 1e-9, q.frac_bits = 8;
    CHECK_ERR(loom_paillier_check(&q, 2048, NULL), LOOM_EINVAL, "rounds to 0");
    CHECK_ERR(loom_paillier_check(&p, 1536, NULL), LOOM_EINVAL, "1536 bits");
    /* client inputs */
    CHECK_ERR(loom_paillier_encrypt_update(pk, &p, x, 39, 1, NULL, &b), LOOM_EINVAL, "update of 39 values; params.dim is 40");
    CHECK_ERR(loom_paillier_encrypt_update(pk, &p, x, 40, 0, NULL, &b), LOOM_EINVAL, "weight 0 is outside [1, max_weight = 65536]");
    CHECK_ERR(loom_paillier_encrypt_update(pk, &p, x, 40, 65537, NULL, &b), LOOM_EINVAL, "weight 65537");
    x[17] = NAN;
    CHECK_ERR(loom_paillier_encrypt_update(pk, &p, x, 40, 1, NULL, &b), LOOM_EINVAL, "value 17 of the update is not finite");
    x[17] = 0.25f;
    /* malformed blobs at the server, and the sum unchanged after each */
    CHECK_OK(loom_paillier_encrypt_update(pk, &p, x, 40, 3, NULL, &b));
    CHECK_OK(loom_paillier_sum_create(&sum, pk, &p));
    uint8_t *y = malloc(b.len);
    CHECK_ERR(loom_paillier_sum_add(sum, b.data, 50), LOOM_EFORMAT, "shorter than its 88-byte header");
    CHECK_ERR(loom_paillier_sum_add(sum, b.data, b.len - 1), LOOM_EFORMAT, "1111 bytes; 2 ciphertexts make 1112");
    memcpy(y, b.data, b.len), y[1] = 'X';
    CHECK_ERR(loom_paillier_sum_add(sum, y, b.len), LOOM_EFORMAT, "magic");
    memcpy(y, b.data, b.len), y[20] ^= 1;
    CHECK_ERR(loom_paillier_sum_add(sum, y, b.len), LOOM_EFORMAT, "another public key");
    memcpy(y, b.data, b.len), y[44] = 41;
    CHECK_ERR(loom_paillier_sum_add(sum, y, b.len), LOOM_EFORMAT, "blob of 41 values; the parameters say dim 40");
    memcpy(y, b.data, b.len), y[60] = 31;
    CHECK_ERR(loom_paillier_sum_add(sum, y, b.len), LOOM_EFORMAT, "frac_bits 31");
    memcpy(y, b.data, b.len), y[80] = 0;
    CHECK_ERR(loom_paillier_sum_add(sum, y, b.len), LOOM_EFORMAT, "holding 0 updates");
    memcpy(y, b.data, b.len), memset(y + 88 + 512, 0xff, 512);
    CHECK_ERR(loom_paillier_sum_add(sum, y, b.len), LOOM_EFORMAT, "ciphertext 1 is not in [1, n^2)");
    memcpy(y, b.data, b.len), memset(y + 88, 0, 512);
    CHECK_ERR(loom_paillier_sum_add(sum, y, b.len), LOOM_EFORMAT, "ciphertext 0 is not in [1, n^2)");
    CHECK(loom_paillier_sum_count(sum) == 0, "refused blobs are not counted");
    loom_paillier_blob r = {0};
    CHECK_ERR(loom_paillier_sum_result(sum, &r), LOOM_ESTATE, "holds no update");
    CHECK_OK(loom_paillier_sum_add(sum, b.data, b.len));
    CHECK_OK(loom_paillier_sum_result(sum, &r));
    int64_t fx[40];
    uint64_t W;
    CHECK_OK(loom_paillier_decrypt_sum_fx(sk, &p, r.data, r.len, fx, &W, NULL));
    CHECK(W == 3 && fx[17] == 3 * ((int64_t)1 << 30) && fx[0] == 0, "only the good blob was added (W %llu, %lld)",
          (unsigned long long)W, (long long)fx[17]);
    /* decryption detects a plaintext that is not an encoding: bits above the last slot, a slot above
     * 2 Q W, a zero weight */
    ref_key k;
    ref_from_sk(&k, sk);
    mpz_t m;
    mpz_init(m);
    uint8_t mb[256];
    const char *why[3] = {"bits outside the slots in use", "value 2 is above 2 clip 2^frac_bits", "total weight 0"};
    for (int t = 0; t < 3; t++) {
        memcpy(y, r.data, r.len);
        if (t == 0) mpz_setbit(m, 34 * 60 + 1); /* plaintext 0: above its 34 slots */
        if (t == 1) mpz_set_ui(m, 0), mpz_setbit(m, 2 * 60 + 59); /* slot 2 = 2^59 > 2 Q 3 */
        if (t == 2) mpz_set_ui(m, 0);                               /* plaintext 1 (slots 34..40, weight 0) */
        to_bytes(mb, 256, m);
        CHECK_OK(loom_paillier_encrypt(pk, mb, 256, NULL, y + 88 + (t == 2 ? 512 : 0)));
        CHECK_ERR(loom_paillier_decrypt_sum_fx(sk, &p, y, r.len, fx, &W, NULL), LOOM_EFORMAT, why[t]);
    }
    memcpy(y, r.data, r.len);
    mpz_mul_ui(m, k.q, 3);
    to_bytes(y + 88 + 512, 512, m);
    CHECK_ERR(loom_paillier_decrypt_sum(sk, &p, y, r.len, NULL, &W), LOOM_EFORMAT, "ciphertext 1 is not in [1, n^2) or not coprime");
    /* a sum decrypted with other parameters */
    loom_paillier_params o = p;
    o.max_clients = 1000;
    CHECK_ERR(loom_paillier_decrypt_sum(sk, &o, r.data, r.len, NULL, &W), LOOM_EFORMAT, "max_clients 1024; the parameters say 1000");
    mpz_clear(m);
    ref_clear(&k);
    free(y);
    loom_paillier_blob_free(&b);
    loom_paillier_blob_free(&r);
    loom_paillier_sum_free(sum);
}

/* A seeded client blob is the same for any number of threads (each ciphertext's r is derived from the
 * seed and its index). */
static void test_threads(loom_paillier_sk *sk) {
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    loom_paillier_params p;
    loom_paillier_defaults(&p, 200);
    float x[200];
    for (int j = 0; j < 200; j++) x[j] = (float)(j - 100) / 128;
    loom_paillier_blob a = {0}, b = {0};
    int t0 = omp_get_max_threads();
    omp_set_num_threads(1);
    CHECK_OK(loom_paillier_encrypt_update(pk, &p, x, 200, 7, SEED, &a));
    omp_set_num_threads(3);
    CHECK_OK(loom_paillier_encrypt_update(pk, &p, x, 200, 7, SEED, &b));
    omp_set_num_threads(t0);
    CHECK(a.len == b.len && !memcmp(a.data, b.data, a.len), "a seeded blob does not depend on the thread count");
    loom_paillier_blob_free(&a);
    loom_paillier_blob_free(&b);
}

int main(void) {
    double t = loom_now();
    loom_paillier_sk *sk = NULL;
    CHECK_OK(loom_paillier_keygen(&sk, 2048, SEED));
    if (!sk) return test_summary();
    printf("keygen 2048: %.2f s\n", loom_now() - t);
    test_keys(sk);
    test_keygen_sources(sk);
    test_ciphertexts(sk);
    test_aggregate(sk, 1, 300);
    test_aggregate(sk, 0, 5);
    /* defaults: B = 1024 2 2^32 2^16 = 2^59, s = 60 */
    headroom_case(sk, 1.0, 32, (uint64_t)1 << 16, 1024, 60);
    /* B = 1000 2 rint(0.75 2^30) 50000 = 80,530,636,800,000,000 in [2^56, 2^57) */
    headroom_case(sk, 0.75, 30, 50000, 1000, 57);
    /* B = 64 2 2^14 2047 = 2^32 - 2^21: 63 slots of 32 bits; a 64th would make a full plaintext about
     * 2^2048 (1 - 2^-11), above n */
    headroom_case(sk, 1.0, 14, 2047, 64, 32);
    test_refusals(sk);
    test_threads(sk);
    loom_paillier_sk_free(sk);
    printf("%.2f s\n", loom_now() - t);
    return test_summary();
}
