/* Secure aggregation: the protocol of Bonawitz et al. (CCS 2017) for an honest-but-curious server
 * (no signatures, no consistency round), with the sparse neighbour graph of SecAgg+ (Bell et al., CCS
 * 2020) as an option. See include/loom/secagg.h for the phases and docs/privacy-secagg.md for the
 * analysis. Every primitive is libsodium's: X25519 (crypto_scalarmult), BLAKE2b (crypto_generichash),
 * ChaCha20 (crypto_stream_chacha20_ietf), XChaCha20-Poly1305 (crypto_aead_xchacha20poly1305_ietf).
 * Shamir sharing over GF(2^61 - 1) is in shamir.c.
 *
 * ---- Encoding ----
 * F = LOOM_SECAGG_FRAC_BITS = 24 fraction bits, ring Z_{2^64} (uint64_t, wrapping arithmetic).
 *     q_j = rint(clamp(x_j, -clip, clip) * 2^F)     (round to nearest, ties to even, in double: exact)
 *     e_j = w * q_j  mod 2^64      for j < dim,       e_dim = w  (the weight is one more ring element)
 * The server learns only E = sum_u e_u: sum w and sum w q. With Q = rint(clip 2^F) >= |q_j|,
 * loom_secagg_check demands n * max_weight * Q < 2^63, so |sum_u w_u q_u| < 2^63 and the sum read as
 * a signed 64-bit integer is the exact integer; decoding is sum_j = (double)(int64_t)E_j * 2^-F
 * (exact when |E_j| <= 2^53, else one double rounding). Per value the encoding error is at most
 * 2^-(F+1) (plus clipping), so |decoded weighted sum - sum w x| <= 2^-(F+1) * sum w.
 *
 * ---- Keys (all per round: a revealed secret is useless the next round) ----
 * From the client's 32-byte master seed (key_seed, or 32 random bytes), K(label) = BLAKE2b-256 keyed
 * by the seed over "loom-secagg" || label || round (8 LE) || id (4 LE):
 *     c_sk = K("c"), s_sk = K("s")  X25519 secret keys (c: share encryption, s: pairwise masks)
 *     b    = K("b")                 the self-mask seed
 *     r    = K("r")                 the key of the Shamir coefficients' ChaCha20 stream
 *     commit = BLAKE2b-256(b, key "loom-secagg commit" || round || id), sent in phase 0
 * Pair (u, v), lo = min, hi = max, dh = X25519(sk_u, pk_v):
 *     share key  BLAKE2b-256(dh || "loom-secagg share" || round || lo || hi)
 *     mask seed  BLAKE2b-256(dh || "loom-secagg mask"  || round || lo || hi)
 *     mask       ChaCha20-IETF(mask seed, nonce round (8 LE) || lo (2 LE) || hi (2 LE)), keystream read
 *                as (dim + 1) little-endian uint64 values; u adds it if u < v, subtracts it if u > v
 *     self mask  ChaCha20-IETF(BLAKE2b-256(b, key "loom-secagg self" || round || id),
 *                nonce round || id (2) || id (2)), added by u
 *     y_u = e_u + selfmask_u + sum_{v in U2, v ~ u, v > u} mask_uv - sum_{v in U2, v ~ u, v < u} mask_uv
 * (v ~ u: neighbours; U2: the clients whose shares reached the server in phase 1).
 *
 * ---- Neighbour graph (SecAgg+) ----
 * k = neighbours (even). A permutation pi of 0..n-1 drawn from loom_rng(seed, hash2(STREAM, round))
 * places the clients on a cycle; u ~ v when their places are at most k/2 apart on the cycle (a Harary
 * graph relabelled at random: k-regular). k = 0: everyone is everyone's neighbour. A client shares its
 * secrets with its neighbours and itself (k + 1 holders) in the complete graph's n.
 *
 * ---- Messages (all integers little-endian) ----
 * header (24 bytes): "LSAG", version 1 (u8), kind (u8), 0 (u16), round (u64), id (u32), count (u32)
 *   kind 1 advertise  (client -> server) count 1:   c_pk[32] s_pk[32] commit[32]
 *   kind 2 roster     (server -> all)    count m:   m x { id u32, c_pk[32], s_pk[32], commit[32] }
 *   kind 3 shares     (client -> server) count m:   m x { recipient u32, ciphertext[96] }
 *   kind 4 inbox      (server -> client) count m:   m x { sender u32, ciphertext[96] }
 *   kind 5 masked     (client -> server) count dim+1: (dim + 1) x u64
 *   kind 6 survivors  (server -> client) count m:   m x { id u32 }
 *   kind 7 unmask     (client -> server) count m:   m x { owner u32, what u8 (0 = b, 1 = s_sk), 0[3],
 *                                                         share[5] u64 }
 * Lists are sorted by id, without repeats. A share ciphertext is XChaCha20-Poly1305 of the 80-byte
 * plaintext { b share[5] u64, s_sk share[5] u64 } under the pair's share key, nonce round (8) ||
 * sender (4) || recipient (4) || 0 (8), associated data "LSAG" || round || sender || recipient. */
#include "loom/secagg.h"

#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "privacy/shamir.h"

#define FRAC LOOM_SECAGG_FRAC_BITS
#define HDR 24
#define ADV_LEN 96
#define ROSTER_ENT 100
#define CT_LEN 96 /* 80 + the Poly1305 tag */
#define PT_LEN 80
#define SHARE_ENT (4 + CT_LEN)
#define UNMASK_ENT 48
#define NC LM_SHAMIR_CHUNKS
/* The neighbour graph's random stream ("sagg"), hashed with the round. */
#define STREAM_SECAGG_GRAPH UINT64_C(0x73616767)

enum { K_ADVERTISE = 1, K_ROSTER, K_SHARES, K_INBOX, K_MASKED, K_SURVIVORS, K_UNMASK };

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_ok;
static void sodium_start(void) { sodium_ok = sodium_init() >= 0; }
static int need_sodium(void) {
    pthread_once(&sodium_once, sodium_start);
    return sodium_ok ? LOOM_OK : loom_error(LOOM_EUNSUPPORTED, "secagg: libsodium failed to initialise");
}

/* ---- little-endian bytes ---- */

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static const char *kind_name(int k) {
    static const char *names[] = {"?", "advertise", "roster", "shares", "inbox", "masked", "survivors", "unmask"};
    return k >= 1 && k <= 7 ? names[k] : "?";
}

static void put_header(uint8_t *h, int kind, uint64_t round, uint32_t id, uint32_t count) {
    memcpy(h, "LSAG", 4);
    h[4] = 1;
    h[5] = (uint8_t)kind;
    h[6] = h[7] = 0;
    put64(h + 8, round);
    put32(h + 16, id);
    put32(h + 20, count);
}

/* Checks a message's header and its exact length (count entries of `ent` bytes, count <= max_count);
 * *count receives the count. */
static int check_header(const uint8_t *m, size_t len, int kind, uint64_t round, uint32_t id, size_t ent,
                        uint32_t max_count, uint32_t *count) {
    const char *k = kind_name(kind);
    if (!m || len < HDR) return loom_error(LOOM_EINVAL, "secagg: %s message of %zu bytes is shorter than its header", k, len);
    if (memcmp(m, "LSAG", 4) != 0) return loom_error(LOOM_EINVAL, "secagg: %s message: bad magic", k);
    if (m[4] != 1) return loom_error(LOOM_EINVAL, "secagg: %s message: unsupported version %u", k, m[4]);
    if (m[5] != kind)
        return loom_error(LOOM_EINVAL, "secagg: expected the %s message, got kind %u (%s)", k, m[5], kind_name(m[5]));
    if (m[6] || m[7]) return loom_error(LOOM_EINVAL, "secagg: %s message: reserved bytes not zero", k);
    if (get64(m + 8) != round)
        return loom_error(LOOM_EINVAL, "secagg: %s message for round %llu, this is round %llu", k,
                          (unsigned long long)get64(m + 8), (unsigned long long)round);
    if (get32(m + 16) != id)
        return loom_error(LOOM_EINVAL, "secagg: %s message names client %u, expected %u", k, get32(m + 16), id);
    uint32_t c = get32(m + 20);
    if (c > max_count) return loom_error(LOOM_EINVAL, "secagg: %s message: %u entries, at most %u allowed", k, c, max_count);
    if (len - HDR != (size_t)c * ent)
        return loom_error(LOOM_EINVAL, "secagg: %s message: %zu bytes, %u entries need %zu", k, len, c, HDR + (size_t)c * ent);
    *count = c;
    return LOOM_OK;
}

static int buf_alloc(loom_secagg_buf *b, size_t len) {
    b->data = malloc(len ? len : 1);
    b->len = len;
    if (!b->data) return loom_error(LOOM_ENOMEM, "secagg: out of memory (%zu bytes)", len);
    return LOOM_OK;
}

void loom_secagg_buf_free(loom_secagg_buf *b) {
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

/* ---- parameters ---- */

void loom_secagg_defaults(loom_secagg_params *p, uint32_t n, size_t dim) {
    memset(p, 0, sizeof *p);
    p->n = n;
    p->threshold = 2 * n / 3 + 1;
    p->neighbours = 0;
    p->dim = dim;
    p->clip = 1.0;
    p->max_weight = UINT64_C(1) << 16;
    p->seed = 0;
    p->round = 0;
}

/* Q = rint(clip 2^F): the largest |q| the encoding can produce. */
static uint64_t max_q(double clip) { return (uint64_t)rint(clip * (double)(UINT64_C(1) << FRAC)); }

int loom_secagg_check(const loom_secagg_params *p) {
    if (!p) return loom_error(LOOM_EINVAL, "secagg: no parameters");
    if (p->n < 2 || p->n > LOOM_SECAGG_MAX_CLIENTS)
        return loom_error(LOOM_EINVAL, "secagg: n = %u clients, must be in [2, %u]", p->n, LOOM_SECAGG_MAX_CLIENTS);
    uint32_t k = p->neighbours;
    if (k != 0 && (k % 2 != 0 || k < 2 || k >= p->n - 1))
        return loom_error(LOOM_EINVAL,
                          "secagg: neighbours = %u must be even, at least 2 and below n - 1 = %u (0 = every other client)",
                          k, p->n - 1);
    uint32_t holders = k ? k + 1 : p->n; /* who holds shares of one client's secrets */
    if (p->threshold > holders || 2 * (uint64_t)p->threshold <= holders)
        return loom_error(LOOM_EINVAL, "secagg: threshold = %u must be above %u/2 and at most %u (%s)", p->threshold,
                          holders, holders, k ? "the neighbours + 1 holding each client's shares" : "n");
    if (p->dim < 1 || p->dim > LOOM_SECAGG_MAX_DIM)
        return loom_error(LOOM_EINVAL, "secagg: dim = %zu must be in [1, %u]", p->dim, LOOM_SECAGG_MAX_DIM);
    if (!(p->clip > 0) || !isfinite(p->clip) || p->clip * (double)(UINT64_C(1) << FRAC) > 0x1p62)
        return loom_error(LOOM_EINVAL, "secagg: clip = %g must be positive and finite (below 2^38)", p->clip);
    uint64_t q = max_q(p->clip);
    if (q < 1)
        return loom_error(LOOM_EINVAL, "secagg: clip = %g is below the encoding's step 2^-%d", p->clip, FRAC);
    if (p->max_weight < 1) return loom_error(LOOM_EINVAL, "secagg: max_weight must be at least 1");
    unsigned __int128 bound = (unsigned __int128)p->n * p->max_weight;
    if (bound >> 63 || bound * q >= ((unsigned __int128)1 << 63))
        return loom_error(LOOM_EINVAL,
                          "secagg: n * max_weight * clip * 2^%d = %u * %llu * %llu could overflow the ring "
                          "(must be below 2^63): lower max_weight or clip",
                          FRAC, p->n, (unsigned long long)p->max_weight, (unsigned long long)q);
    return LOOM_OK;
}

/* ---- the neighbour graph ---- */

/* place[u]: u's place on the cycle (NULL for the complete graph). */
static int graph_make(const loom_secagg_params *p, uint32_t **place) {
    *place = NULL;
    if (!p->neighbours) return LOOM_OK;
    uint32_t *perm = malloc(sizeof *perm * p->n), *pl = malloc(sizeof *pl * p->n);
    if (!perm || !pl) {
        free(perm);
        free(pl);
        return loom_error(LOOM_ENOMEM, "secagg: out of memory");
    }
    for (uint32_t i = 0; i < p->n; i++) perm[i] = i;
    loom_rng r;
    loom_rng_init(&r, p->seed, loom_hash2(STREAM_SECAGG_GRAPH, p->round));
    loom_rng_shuffle_u32(&r, perm, p->n);
    for (uint32_t i = 0; i < p->n; i++) pl[perm[i]] = i;
    free(perm);
    *place = pl;
    return LOOM_OK;
}

/* u ~ v (u == v counts: a client holds a share of its own secrets) */
static int graph_nb(const loom_secagg_params *p, const uint32_t *place, uint32_t u, uint32_t v) {
    if (!place) return 1;
    uint32_t d = place[u] > place[v] ? place[u] - place[v] : place[v] - place[u];
    if (p->n - d < d) d = p->n - d;
    return d <= p->neighbours / 2;
}

/* ---- derived keys and streams ---- */

static void kdf(uint8_t out[32], const uint8_t master[32], const char *label, uint64_t round, uint32_t id) {
    uint8_t in[64];
    size_t l = strlen(label), n = 0;
    memcpy(in, "loom-secagg", 11);
    n = 11;
    memcpy(in + n, label, l);
    n += l;
    put64(in + n, round);
    put32(in + n + 8, id);
    n += 12;
    crypto_generichash(out, 32, in, n, master, 32);
}

static void commitment(uint8_t out[32], const uint8_t b[32], uint64_t round, uint32_t id) {
    uint8_t key[32];
    memset(key, 0, sizeof key);
    memcpy(key, "loom-secagg commit", 18);
    put64(key + 18, round);
    put32(key + 26, id);
    crypto_generichash(out, 32, b, 32, key, sizeof key);
}

/* The pair key from dh for (lo, hi); -1 if dh is the all-zero result of a low-order point. */
static int pair_key(uint8_t out[32], const uint8_t sk[32], const uint8_t pk[32], const char *label, uint64_t round,
                    uint32_t a, uint32_t b) {
    uint8_t dh[32], in[32 + 24 + 16];
    if (crypto_scalarmult(dh, sk, pk) != 0) return -1;
    uint32_t lo = LOOM_MIN(a, b), hi = LOOM_MAX(a, b);
    size_t l = strlen(label), n = 32;
    memcpy(in, dh, 32);
    memcpy(in + n, label, l);
    n += l;
    put64(in + n, round);
    put32(in + n + 8, lo);
    put32(in + n + 12, hi);
    n += 16;
    crypto_generichash(out, 32, in, n, NULL, 0);
    sodium_memzero(dh, sizeof dh);
    return 0;
}

static void self_key(uint8_t out[32], const uint8_t b[32], uint64_t round, uint32_t id) {
    uint8_t key[32];
    memset(key, 0, sizeof key);
    memcpy(key, "loom-secagg self", 16);
    put64(key + 16, round);
    put32(key + 24, id);
    crypto_generichash(out, 32, b, 32, key, sizeof key);
}

static void stream_nonce(uint8_t nonce[12], uint64_t round, uint32_t a, uint32_t b) {
    put64(nonce, round);
    uint32_t lo = LOOM_MIN(a, b), hi = LOOM_MAX(a, b);
    nonce[8] = (uint8_t)lo;
    nonce[9] = (uint8_t)(lo >> 8);
    nonce[10] = (uint8_t)hi;
    nonce[11] = (uint8_t)(hi >> 8);
}

#define CHUNK_WORDS 4096 /* 32 KiB of keystream at a time: 512 ChaCha20 blocks */
static const uint8_t zeros[CHUNK_WORDS * 8];

/* acc[0..len) += sign * ChaCha20(key, nonce) read as little-endian uint64 (mod 2^64). */
static void add_stream(uint64_t *acc, size_t len, const uint8_t key[32], const uint8_t nonce[12], int sign) {
    uint64_t buf[CHUNK_WORDS];
    for (size_t off = 0; off < len; off += CHUNK_WORDS) {
        size_t m = LOOM_MIN((size_t)CHUNK_WORDS, len - off);
        crypto_stream_chacha20_ietf_xor_ic((uint8_t *)buf, zeros, m * 8, nonce, (uint32_t)(off / 8), key);
        uint64_t *a = acc + off;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (size_t j = 0; j < m; j++) buf[j] = __builtin_bswap64(buf[j]);
#endif
        if (sign > 0)
            for (size_t j = 0; j < m; j++) a[j] += buf[j];
        else
            for (size_t j = 0; j < m; j++) a[j] -= buf[j];
    }
    sodium_memzero(buf, sizeof buf);
}

/* Uniform field elements from ChaCha20(key, nonce), by rejection of the one 61-bit value >= p. */
typedef struct {
    uint8_t key[32], nonce[12];
    uint32_t block;
    uint64_t buf[8];
    int pos;
} field_rng;

static uint64_t field_draw(field_rng *r) {
    for (;;) {
        if (r->pos == 8) {
            crypto_stream_chacha20_ietf_xor_ic((uint8_t *)r->buf, zeros, 64, r->nonce, r->block++, r->key);
            r->pos = 0;
        }
        uint64_t v = r->buf[r->pos++] & LM_SHAMIR_P;
        if (v < LM_SHAMIR_P) return v;
    }
}

/* ---- client ---- */

struct loom_secagg_client {
    loom_secagg_params p;
    uint32_t id;
    uint32_t *place;
    int done; /* phases done: 0 none, 1 advertised, 2 shared, 3 masked, 4 unmasked */
    uint8_t c_sk[32], c_pk[32], s_sk[32], s_pk[32], b[32], commit[32], coef_key[32];
    uint8_t *in_roster;     /* n */
    uint8_t (*c_pks)[32];   /* n */
    uint8_t (*s_pks)[32];   /* n */
    uint8_t *in_u2;         /* n: neighbours whose shares I hold (my view of U2) */
    uint64_t (*held)[2 * NC]; /* n: the shares of their b and s_sk I hold */
};

int loom_secagg_client_create(loom_secagg_client **out, const loom_secagg_params *p, uint32_t id,
                              const uint8_t key_seed[32]) {
    *out = NULL;
    int rc = need_sodium();
    if (rc) return rc;
    if ((rc = loom_secagg_check(p))) return rc;
    if (id >= p->n) return loom_error(LOOM_EINVAL, "secagg: client id %u not below n = %u", id, p->n);
    loom_secagg_client *c = calloc(1, sizeof *c);
    if (!c) return loom_error(LOOM_ENOMEM, "secagg: out of memory");
    c->p = *p;
    c->id = id;
    c->in_roster = calloc(p->n, 1);
    c->in_u2 = calloc(p->n, 1);
    c->c_pks = calloc(p->n, 32);
    c->s_pks = calloc(p->n, 32);
    c->held = calloc(p->n, sizeof *c->held);
    if (!c->in_roster || !c->in_u2 || !c->c_pks || !c->s_pks || !c->held) {
        loom_secagg_client_free(c);
        return loom_error(LOOM_ENOMEM, "secagg: out of memory");
    }
    if ((rc = graph_make(p, &c->place))) {
        loom_secagg_client_free(c);
        return rc;
    }
    uint8_t master[32];
    if (key_seed)
        memcpy(master, key_seed, 32);
    else
        randombytes_buf(master, sizeof master);
    kdf(c->c_sk, master, "c", p->round, id);
    kdf(c->s_sk, master, "s", p->round, id);
    kdf(c->b, master, "b", p->round, id);
    kdf(c->coef_key, master, "r", p->round, id);
    sodium_memzero(master, sizeof master);
    crypto_scalarmult_base(c->c_pk, c->c_sk);
    crypto_scalarmult_base(c->s_pk, c->s_sk);
    commitment(c->commit, c->b, p->round, id);
    *out = c;
    return LOOM_OK;
}

void loom_secagg_client_free(loom_secagg_client *c) {
    if (!c) return;
    free(c->place);
    free(c->in_roster);
    free(c->in_u2);
    free(c->c_pks);
    free(c->s_pks);
    if (c->held) sodium_memzero(c->held, sizeof *c->held * c->p.n);
    free(c->held);
    sodium_memzero(c, sizeof *c);
    free(c);
}

static int client_phase(loom_secagg_client *c, int want, const char *what) {
    if (c->done != want)
        return loom_error(LOOM_ESTATE, "secagg: client %u cannot %s now (%d phases done, %d expected)", c->id, what,
                          c->done, want);
    return LOOM_OK;
}

int loom_secagg_client_advertise(loom_secagg_client *c, loom_secagg_buf *out) {
    out->data = NULL;
    out->len = 0;
    int rc = client_phase(c, 0, "advertise");
    if (rc || (rc = buf_alloc(out, HDR + ADV_LEN))) return rc;
    put_header(out->data, K_ADVERTISE, c->p.round, c->id, 1);
    memcpy(out->data + HDR, c->c_pk, 32);
    memcpy(out->data + HDR + 32, c->s_pk, 32);
    memcpy(out->data + HDR + 64, c->commit, 32);
    c->done = 1;
    return LOOM_OK;
}

/* Parses a sorted id list's entries: ids strictly increasing and below n. */
static int check_sorted(const char *what, uint32_t prev_plus1, uint32_t id, uint32_t n) {
    if (id >= n) return loom_error(LOOM_EINVAL, "secagg: %s names client %u, not below n = %u", what, id, n);
    if (id + 1 <= prev_plus1) return loom_error(LOOM_EINVAL, "secagg: %s is not sorted by client, or repeats %u", what, id);
    return LOOM_OK;
}

static void share_nonce(uint8_t nonce[24], uint8_t ad[20], uint64_t round, uint32_t from, uint32_t to) {
    memset(nonce, 0, 24);
    put64(nonce, round);
    put32(nonce + 8, from);
    put32(nonce + 12, to);
    memcpy(ad, "LSAG", 4);
    put64(ad + 4, round);
    put32(ad + 12, from);
    put32(ad + 16, to);
}

int loom_secagg_client_share(loom_secagg_client *c, const uint8_t *roster, size_t len, loom_secagg_buf *out) {
    out->data = NULL;
    out->len = 0;
    const loom_secagg_params *p = &c->p;
    uint32_t m;
    int rc = client_phase(c, 1, "share");
    if (rc || (rc = check_header(roster, len, K_ROSTER, p->round, UINT32_MAX, ROSTER_ENT, p->n, &m))) return rc;
    if (m < p->threshold)
        return loom_error(LOOM_EINVAL, "secagg: the roster holds %u clients, fewer than the threshold %u", m, p->threshold);
    memset(c->in_roster, 0, p->n);
    uint32_t prev = 0, holders = 0;
    int self_ok = 0;
    for (uint32_t i = 0; i < m; i++) {
        const uint8_t *e = roster + HDR + (size_t)i * ROSTER_ENT;
        uint32_t v = get32(e);
        if ((rc = check_sorted("roster", prev, v, p->n))) return rc;
        prev = v + 1;
        c->in_roster[v] = 1;
        memcpy(c->c_pks[v], e + 4, 32);
        memcpy(c->s_pks[v], e + 36, 32);
        if (v == c->id) {
            if (memcmp(e + 4, c->c_pk, 32) || memcmp(e + 36, c->s_pk, 32) || memcmp(e + 68, c->commit, 32))
                return loom_error(LOOM_EINVAL, "secagg: the roster changed client %u's own keys", c->id);
            self_ok = 1;
        }
        if (graph_nb(p, c->place, c->id, v)) holders++;
    }
    if (!self_ok) return loom_error(LOOM_EINVAL, "secagg: the roster omits client %u", c->id);
    if (holders < p->threshold)
        return loom_error(LOOM_EINVAL, "secagg: only %u of client %u's neighbours are in the roster, %u needed", holders,
                          c->id, p->threshold);

    /* The polynomials: chunk k of b is coef[k][0], of s_sk coef[NC + k][0]. */
    uint32_t t = p->threshold;
    uint64_t *coef = malloc(sizeof *coef * 2 * NC * t);
    if (!coef) return loom_error(LOOM_ENOMEM, "secagg: out of memory");
    field_rng fr = {.block = 0, .pos = 8};
    memcpy(fr.key, c->coef_key, 32);
    stream_nonce(fr.nonce, p->round, c->id, c->id);
    uint64_t sb[NC], ss[NC];
    lm_shamir_split_secret(c->b, sb);
    lm_shamir_split_secret(c->s_sk, ss);
    for (int k = 0; k < 2 * NC; k++) {
        coef[(size_t)k * t] = k < NC ? sb[k] : ss[k - NC];
        for (uint32_t j = 1; j < t; j++) coef[(size_t)k * t + j] = field_draw(&fr);
    }
    if ((rc = buf_alloc(out, HDR + (size_t)holders * SHARE_ENT))) {
        free(coef);
        return rc;
    }
    put_header(out->data, K_SHARES, p->round, c->id, holders);
    uint8_t *e = out->data + HDR;
    for (uint32_t v = 0; v < p->n; v++) {
        if (!c->in_roster[v] || !graph_nb(p, c->place, c->id, v)) continue;
        uint8_t pt[PT_LEN], key[32], nonce[24], ad[20];
        for (int k = 0; k < 2 * NC; k++) put64(pt + 8 * k, lm_shamir_eval(coef + (size_t)k * t, t, (uint64_t)v + 1));
        if (pair_key(key, c->c_sk, c->c_pks[v], "loom-secagg share", p->round, c->id, v) != 0) {
            sodium_memzero(coef, sizeof *coef * 2 * NC * t);
            free(coef);
            loom_secagg_buf_free(out);
            return loom_error(LOOM_EINVAL, "secagg: client %u's encryption key in the roster is invalid (low order)", v);
        }
        share_nonce(nonce, ad, p->round, c->id, v);
        put32(e, v);
        crypto_aead_xchacha20poly1305_ietf_encrypt(e + 4, NULL, pt, PT_LEN, ad, sizeof ad, NULL, nonce, key);
        sodium_memzero(pt, sizeof pt);
        sodium_memzero(key, sizeof key);
        e += SHARE_ENT;
    }
    sodium_memzero(coef, sizeof *coef * 2 * NC * t);
    free(coef);
    c->done = 2;
    return LOOM_OK;
}

/* q = rint(clamp(x, -clip, clip) 2^F): see the encoding at the top. */
static int64_t encode_value(float x, double clip) {
    double v = (double)x;
    if (v > clip) v = clip;
    if (v < -clip) v = -clip;
    return (int64_t)rint(v * (double)(UINT64_C(1) << FRAC));
}

int loom_secagg_client_mask(loom_secagg_client *c, const uint8_t *inbox, size_t len, const float *x, uint64_t w,
                            loom_secagg_buf *out) {
    out->data = NULL;
    out->len = 0;
    const loom_secagg_params *p = &c->p;
    uint32_t m;
    int rc = client_phase(c, 2, "mask");
    if (rc || (rc = check_header(inbox, len, K_INBOX, p->round, c->id, SHARE_ENT, p->n, &m))) return rc;
    if (w < 1 || w > p->max_weight)
        return loom_error(LOOM_EINVAL, "secagg: weight %llu must be in [1, %llu] (max_weight)", (unsigned long long)w,
                          (unsigned long long)p->max_weight);
    for (size_t j = 0; j < p->dim; j++)
        if (!isfinite(x[j])) return loom_error(LOOM_EINVAL, "secagg: update value %zu is not finite", j);
    if (m < p->threshold)
        return loom_error(LOOM_EINVAL, "secagg: the inbox holds shares from %u clients, fewer than the threshold %u", m,
                          p->threshold);
    memset(c->in_u2, 0, p->n);
    uint32_t prev = 0;
    for (uint32_t i = 0; i < m; i++) {
        const uint8_t *e = inbox + HDR + (size_t)i * SHARE_ENT;
        uint32_t u = get32(e);
        if ((rc = check_sorted("inbox", prev, u, p->n))) return rc;
        prev = u + 1;
        if (!c->in_roster[u] || !graph_nb(p, c->place, c->id, u))
            return loom_error(LOOM_EINVAL, "secagg: the inbox holds shares from client %u, not a neighbour in the roster", u);
        uint8_t pt[PT_LEN], key[32], nonce[24], ad[20];
        if (pair_key(key, c->c_sk, c->c_pks[u], "loom-secagg share", p->round, c->id, u) != 0)
            return loom_error(LOOM_EINVAL, "secagg: client %u's encryption key in the roster is invalid (low order)", u);
        share_nonce(nonce, ad, p->round, u, c->id);
        int bad = crypto_aead_xchacha20poly1305_ietf_decrypt(pt, NULL, NULL, e + 4, CT_LEN, ad, sizeof ad, nonce, key);
        sodium_memzero(key, sizeof key);
        if (bad) return loom_error(LOOM_EFORMAT, "secagg: the shares from client %u do not decrypt (forged or corrupted)", u);
        for (int k = 0; k < 2 * NC; k++) {
            c->held[u][k] = get64(pt + 8 * k);
            if (c->held[u][k] >= LM_SHAMIR_P)
                return loom_error(LOOM_EFORMAT, "secagg: client %u sent a share outside the field", u);
        }
        sodium_memzero(pt, sizeof pt);
        c->in_u2[u] = 1;
    }
    if (!c->in_u2[c->id]) return loom_error(LOOM_EINVAL, "secagg: the inbox omits client %u's own shares", c->id);

    size_t n1 = p->dim + 1;
    if ((rc = buf_alloc(out, HDR + n1 * 8))) return rc;
    uint64_t *y = malloc(sizeof *y * n1);
    if (!y) {
        loom_secagg_buf_free(out);
        return loom_error(LOOM_ENOMEM, "secagg: out of memory");
    }
    for (size_t j = 0; j < p->dim; j++) y[j] = w * (uint64_t)encode_value(x[j], p->clip); /* mod 2^64 */
    y[p->dim] = w;
    uint8_t key[32], nonce[12];
    self_key(key, c->b, p->round, c->id);
    stream_nonce(nonce, p->round, c->id, c->id);
    add_stream(y, n1, key, nonce, +1);
    for (uint32_t v = 0; v < p->n; v++) {
        if (v == c->id || !c->in_u2[v]) continue;
        if (pair_key(key, c->s_sk, c->s_pks[v], "loom-secagg mask", p->round, c->id, v) != 0) {
            free(y);
            loom_secagg_buf_free(out);
            return loom_error(LOOM_EINVAL, "secagg: client %u's mask key in the roster is invalid (low order)", v);
        }
        stream_nonce(nonce, p->round, c->id, v);
        add_stream(y, n1, key, nonce, c->id < v ? +1 : -1);
    }
    sodium_memzero(key, sizeof key);
    put_header(out->data, K_MASKED, p->round, c->id, (uint32_t)n1);
    for (size_t j = 0; j < n1; j++) put64(out->data + HDR + 8 * j, y[j]);
    free(y);
    c->done = 3;
    return LOOM_OK;
}

int loom_secagg_client_unmask(loom_secagg_client *c, const uint8_t *survivors, size_t len, loom_secagg_buf *out) {
    out->data = NULL;
    out->len = 0;
    const loom_secagg_params *p = &c->p;
    uint32_t m;
    int rc = client_phase(c, 3, "unmask");
    if (rc || (rc = check_header(survivors, len, K_SURVIVORS, p->round, c->id, 4, p->n, &m))) return rc;
    if (m < p->threshold)
        return loom_error(LOOM_EINVAL,
                          "secagg: the survivor list holds %u clients, fewer than the threshold %u: no shares revealed",
                          m, p->threshold);
    uint8_t *surv = calloc(p->n, 1);
    if (!surv) return loom_error(LOOM_ENOMEM, "secagg: out of memory");
    uint32_t prev = 0;
    for (uint32_t i = 0; i < m; i++) {
        uint32_t v = get32(survivors + HDR + 4 * (size_t)i);
        if ((rc = check_sorted("survivor list", prev, v, p->n))) break;
        prev = v + 1;
        if (graph_nb(p, c->place, c->id, v) && !c->in_u2[v]) {
            rc = loom_error(LOOM_EINVAL, "secagg: the survivor list names client %u, whose shares never arrived", v);
            break;
        }
        surv[v] = 1;
    }
    if (!rc && !surv[c->id]) rc = loom_error(LOOM_EINVAL, "secagg: the survivor list omits client %u", c->id);
    uint32_t cnt = 0;
    for (uint32_t v = 0; v < p->n; v++) cnt += c->in_u2[v];
    if (!rc) rc = buf_alloc(out, HDR + (size_t)cnt * UNMASK_ENT);
    if (rc) {
        free(surv);
        return rc;
    }
    put_header(out->data, K_UNMASK, p->round, c->id, cnt);
    uint8_t *e = out->data + HDR;
    for (uint32_t v = 0; v < p->n; v++) {
        if (!c->in_u2[v]) continue;
        int what = surv[v] ? 0 : 1; /* a survivor's self-mask seed, or a dropped client's mask key: never both */
        put32(e, v);
        e[4] = (uint8_t)what;
        e[5] = e[6] = e[7] = 0;
        for (int k = 0; k < NC; k++) put64(e + 8 + 8 * k, c->held[v][what * NC + k]);
        e += UNMASK_ENT;
    }
    free(surv);
    c->done = 4;
    return LOOM_OK;
}

/* ---- server ---- */

struct loom_secagg_server {
    loom_secagg_params p;
    uint32_t *place;
    int closed;           /* phases closed: 0 .. 4 */
    uint8_t *got[4];      /* n each: whose message of each phase was accepted */
    uint32_t count[4];
    uint8_t (*c_pk)[32], (*s_pk)[32], (*commit)[32]; /* n */
    uint8_t **shares;     /* n: each sender's share entries, sorted by recipient */
    uint32_t *share_cnt;
    uint8_t **unmask;     /* n: each holder's unmask entries, sorted by owner */
    uint32_t *unmask_cnt;
    uint64_t *acc;        /* dim + 1: the sum of the masked inputs */
    int have_result;
};

int loom_secagg_server_create(loom_secagg_server **out, const loom_secagg_params *p) {
    *out = NULL;
    int rc = need_sodium();
    if (rc || (rc = loom_secagg_check(p))) return rc;
    loom_secagg_server *s = calloc(1, sizeof *s);
    if (!s) return loom_error(LOOM_ENOMEM, "secagg: out of memory");
    s->p = *p;
    int ok = 1;
    for (int i = 0; i < 4; i++) ok &= (s->got[i] = calloc(p->n, 1)) != NULL;
    s->c_pk = calloc(p->n, 32);
    s->s_pk = calloc(p->n, 32);
    s->commit = calloc(p->n, 32);
    s->shares = calloc(p->n, sizeof *s->shares);
    s->share_cnt = calloc(p->n, sizeof *s->share_cnt);
    s->unmask = calloc(p->n, sizeof *s->unmask);
    s->unmask_cnt = calloc(p->n, sizeof *s->unmask_cnt);
    s->acc = calloc(p->dim + 1, sizeof *s->acc);
    if (!ok || !s->c_pk || !s->s_pk || !s->commit || !s->shares || !s->share_cnt || !s->unmask || !s->unmask_cnt ||
        !s->acc) {
        loom_secagg_server_free(s);
        return loom_error(LOOM_ENOMEM, "secagg: out of memory");
    }
    if ((rc = graph_make(p, &s->place))) {
        loom_secagg_server_free(s);
        return rc;
    }
    *out = s;
    return LOOM_OK;
}

void loom_secagg_server_free(loom_secagg_server *s) {
    if (!s) return;
    for (int i = 0; i < 4; i++) free(s->got[i]);
    free(s->place);
    free(s->c_pk);
    free(s->s_pk);
    free(s->commit);
    if (s->shares)
        for (uint32_t i = 0; i < s->p.n; i++) free(s->shares[i]);
    if (s->unmask)
        for (uint32_t i = 0; i < s->p.n; i++) free(s->unmask[i]);
    free(s->shares);
    free(s->share_cnt);
    free(s->unmask);
    free(s->unmask_cnt);
    free(s->acc);
    free(s);
}

static const char *phase_name(int ph) {
    static const char *names[] = {"advertise", "share", "mask", "unmask"};
    return ph >= 0 && ph <= 3 ? names[ph] : "?";
}

/* The share entry of sender u for recipient v (binary search), or NULL. */
static const uint8_t *find_entry(const uint8_t *ents, uint32_t cnt, size_t ent, uint32_t v) {
    uint32_t lo = 0, hi = cnt;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        uint32_t id = get32(ents + (size_t)mid * ent);
        if (id == v) return ents + (size_t)mid * ent;
        if (id < v) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

int loom_secagg_server_receive(loom_secagg_server *s, loom_secagg_phase phase, uint32_t from, const uint8_t *msg,
                               size_t len) {
    const loom_secagg_params *p = &s->p;
    int ph = (int)phase;
    if (ph < 0 || ph > 3) return loom_error(LOOM_EINVAL, "secagg: no phase %d", ph);
    if (from >= p->n) return loom_error(LOOM_EINVAL, "secagg: client %u is not below n = %u", from, p->n);
    if (s->closed != ph)
        return loom_error(LOOM_EINVAL, "secagg: %s message from client %u refused: the server is %s", phase_name(ph), from,
                          s->closed > ph ? "past that phase" : "not yet in that phase");
    if (ph > 0 && !s->got[ph - 1][from])
        return loom_error(LOOM_EINVAL, "secagg: %s message from client %u refused: it is not in the %s phase's set",
                          phase_name(ph), from, phase_name(ph - 1));
    if (s->got[ph][from])
        return loom_error(LOOM_EINVAL, "secagg: %s message from client %u refused: duplicate", phase_name(ph), from);
    uint32_t m;
    int rc;
    switch (ph) {
    case LOOM_SECAGG_ADVERTISE:
        if ((rc = check_header(msg, len, K_ADVERTISE, p->round, from, ADV_LEN, 1, &m))) return rc;
        if (m != 1) return loom_error(LOOM_EINVAL, "secagg: advertise message must hold one entry");
        memcpy(s->c_pk[from], msg + HDR, 32);
        memcpy(s->s_pk[from], msg + HDR + 32, 32);
        memcpy(s->commit[from], msg + HDR + 64, 32);
        break;
    case LOOM_SECAGG_SHARE: {
        if ((rc = check_header(msg, len, K_SHARES, p->round, from, SHARE_ENT, p->n, &m))) return rc;
        uint32_t i = 0;
        for (uint32_t v = 0; v < p->n; v++) {
            if (!s->got[0][v] || !graph_nb(p, s->place, from, v)) continue;
            if (i >= m || get32(msg + HDR + (size_t)i * SHARE_ENT) != v)
                return loom_error(LOOM_EINVAL, "secagg: shares from client %u: entry %u must be for client %u", from, i, v);
            i++;
        }
        if (i != m)
            return loom_error(LOOM_EINVAL, "secagg: shares from client %u: %u entries, its neighbours in the roster are %u",
                              from, m, i);
        s->shares[from] = malloc((size_t)m * SHARE_ENT);
        if (!s->shares[from]) return loom_error(LOOM_ENOMEM, "secagg: out of memory");
        memcpy(s->shares[from], msg + HDR, (size_t)m * SHARE_ENT);
        s->share_cnt[from] = m;
        break;
    }
    case LOOM_SECAGG_MASK: {
        if ((rc = check_header(msg, len, K_MASKED, p->round, from, 8, (uint32_t)(p->dim + 1), &m))) return rc;
        if (m != p->dim + 1)
            return loom_error(LOOM_EINVAL, "secagg: masked input from client %u holds %u values, expected %zu", from, m,
                              p->dim + 1);
        const uint8_t *d = msg + HDR;
        for (size_t j = 0; j <= p->dim; j++) s->acc[j] += get64(d + 8 * j); /* mod 2^64: masks cancel */
        break;
    }
    case LOOM_SECAGG_UNMASK: {
        if ((rc = check_header(msg, len, K_UNMASK, p->round, from, UNMASK_ENT, p->n, &m))) return rc;
        uint32_t i = 0;
        for (uint32_t u = 0; u < p->n; u++) {
            if (!s->got[1][u] || !graph_nb(p, s->place, u, from)) continue; /* the inbox `from` was given */
            if (i >= m || get32(msg + HDR + (size_t)i * UNMASK_ENT) != u)
                return loom_error(LOOM_EINVAL, "secagg: unmask message from client %u: entry %u must be for client %u",
                                  from, i, u);
            const uint8_t *e = msg + HDR + (size_t)i * UNMASK_ENT;
            int want = s->got[2][u] ? 0 : 1;
            if (e[4] != want || e[5] || e[6] || e[7])
                return loom_error(LOOM_EINVAL, "secagg: unmask message from client %u: for client %u it must reveal %s",
                                  from, u, want ? "the mask key (it dropped)" : "the self-mask seed (it survived)");
            for (int k = 0; k < NC; k++)
                if (get64(e + 8 + 8 * k) >= LM_SHAMIR_P)
                    return loom_error(LOOM_EINVAL, "secagg: unmask message from client %u: a share is outside the field",
                                      from);
            i++;
        }
        if (i != m)
            return loom_error(LOOM_EINVAL, "secagg: unmask message from client %u: %u entries, %u expected", from, m, i);
        s->unmask[from] = malloc((size_t)m * UNMASK_ENT + 1);
        if (!s->unmask[from]) return loom_error(LOOM_ENOMEM, "secagg: out of memory");
        memcpy(s->unmask[from], msg + HDR, (size_t)m * UNMASK_ENT);
        s->unmask_cnt[from] = m;
        break;
    }
    }
    s->got[ph][from] = 1;
    s->count[ph]++;
    return LOOM_OK;
}

int loom_secagg_server_close(loom_secagg_server *s, loom_secagg_phase phase) {
    int ph = (int)phase;
    if (ph < 0 || ph > 3 || s->closed != ph)
        return loom_error(LOOM_ESTATE, "secagg: cannot close the %s phase now", phase_name(ph));
    if (s->count[ph] < s->p.threshold)
        return loom_error(LOOM_ESTATE, "secagg: cannot close the %s phase: only %u of the %u needed", phase_name(ph),
                          s->count[ph], s->p.threshold);
    s->closed = ph + 1;
    return LOOM_OK;
}

int loom_secagg_server_message(loom_secagg_server *s, loom_secagg_phase phase, uint32_t to, loom_secagg_buf *out) {
    out->data = NULL;
    out->len = 0;
    const loom_secagg_params *p = &s->p;
    int ph = (int)phase, rc;
    if (ph < 0 || ph > 2 || s->closed <= ph)
        return loom_error(LOOM_ESTATE, "secagg: no message after the %s phase: it is not closed", phase_name(ph));
    if (to >= p->n || !s->got[ph][to])
        return loom_error(LOOM_ENOTFOUND, "secagg: client %u is not in the %s phase's set", to, phase_name(ph));
    if (ph == LOOM_SECAGG_ADVERTISE) {
        uint32_t m = s->count[0];
        if ((rc = buf_alloc(out, HDR + (size_t)m * ROSTER_ENT))) return rc;
        put_header(out->data, K_ROSTER, p->round, UINT32_MAX, m);
        uint8_t *e = out->data + HDR;
        for (uint32_t v = 0; v < p->n; v++) {
            if (!s->got[0][v]) continue;
            put32(e, v);
            memcpy(e + 4, s->c_pk[v], 32);
            memcpy(e + 36, s->s_pk[v], 32);
            memcpy(e + 68, s->commit[v], 32);
            e += ROSTER_ENT;
        }
    } else if (ph == LOOM_SECAGG_SHARE) {
        uint32_t m = 0;
        for (uint32_t u = 0; u < p->n; u++) m += s->got[1][u] && graph_nb(p, s->place, u, to);
        if ((rc = buf_alloc(out, HDR + (size_t)m * SHARE_ENT))) return rc;
        put_header(out->data, K_INBOX, p->round, to, m);
        uint8_t *e = out->data + HDR;
        for (uint32_t u = 0; u < p->n; u++) {
            if (!s->got[1][u] || !graph_nb(p, s->place, u, to)) continue;
            const uint8_t *src = find_entry(s->shares[u], s->share_cnt[u], SHARE_ENT, to);
            if (!src) { /* cannot happen: receive checked the recipients against the roster */
                loom_secagg_buf_free(out);
                return loom_error(LOOM_ESTATE, "secagg: client %u sent no share for client %u", u, to);
            }
            put32(e, u);
            memcpy(e + 4, src + 4, CT_LEN);
            e += SHARE_ENT;
        }
    } else {
        uint32_t m = s->count[2];
        if ((rc = buf_alloc(out, HDR + (size_t)m * 4))) return rc;
        put_header(out->data, K_SURVIVORS, p->round, to, m);
        uint8_t *e = out->data + HDR;
        for (uint32_t v = 0; v < p->n; v++)
            if (s->got[2][v]) {
                put32(e, v);
                e += 4;
            }
    }
    return LOOM_OK;
}

/* Reconstructs client u's secret `what` (0 = b, 1 = s_sk) from the unmask shares held by the clients
 * that answered phase 3, and checks it against u's advertised commitment (b) or public key (s_sk). With
 * t shares a mismatch is detected; with more, a single lying holder among the first t + 1 is named. */
static int reconstruct(loom_secagg_server *s, uint32_t u, int what, uint8_t secret[32]) {
    const loom_secagg_params *p = &s->p;
    uint32_t t = p->threshold, m = 0;
    const char *wname = what ? "mask key" : "self-mask seed";
    uint64_t *xs = malloc(sizeof *xs * (p->n + 1)), *ys = malloc(sizeof *ys * NC * p->n);
    uint32_t *who = malloc(sizeof *who * p->n);
    uint64_t *lam = malloc(sizeof *lam * (t + 1)), *sx = malloc(sizeof *sx * (t + 1)), *sy = malloc(sizeof *sy * NC * (t + 1));
    int rc = LOOM_OK;
    if (!xs || !ys || !who || !lam || !sx || !sy) {
        rc = loom_error(LOOM_ENOMEM, "secagg: out of memory");
        goto done;
    }
    for (uint32_t h = 0; h < p->n; h++) {
        if (!s->got[3][h]) continue;
        const uint8_t *e = find_entry(s->unmask[h], s->unmask_cnt[h], UNMASK_ENT, u);
        if (!e) continue; /* not one of u's holders */
        xs[m] = (uint64_t)h + 1;
        who[m] = h;
        for (int k = 0; k < NC; k++) ys[(size_t)m * NC + k] = get64(e + 8 + 8 * k);
        m++;
    }
    if (m < t) {
        rc = loom_error(LOOM_ESTATE, "secagg: client %u's %s: only %u of the %u shares needed arrived", u, wname, m, t);
        goto done;
    }
    /* try the first t shares, then (with a spare) the first t + 1 leaving each one out in turn */
    uint32_t tries = m > t ? t + 2 : 1;
    for (uint32_t tr = 0; tr < tries; tr++) {
        uint32_t skip = tr == 0 ? UINT32_MAX : tr - 1, k2 = 0;
        uint32_t lim = tr == 0 ? t : t + 1;
        for (uint32_t i = 0; i < lim && k2 < t; i++) {
            if (i == skip) continue;
            sx[k2] = xs[i];
            memcpy(sy + (size_t)k2 * NC, ys + (size_t)i * NC, sizeof(uint64_t) * NC);
            k2++;
        }
        if (lm_shamir_lagrange(sx, t, 0, lam) != 0) continue;
        uint64_t ch[NC];
        for (int k = 0; k < NC; k++) ch[k] = lm_shamir_combine(lam, sy + k, NC, t);
        if (lm_shamir_join_secret(ch, secret) != 0) continue;
        uint8_t check[32];
        if (what)
            crypto_scalarmult_base(check, secret);
        else
            commitment(check, secret, p->round, u);
        if (sodium_memcmp(check, what ? s->s_pk[u] : s->commit[u], 32) != 0) continue;
        if (tr == 0) goto done;
        rc = loom_error(LOOM_EFORMAT, "secagg: client %u lied: its share of client %u's %s does not match the commitment",
                        who[skip], u, wname);
        goto done;
    }
    if (m > t)
        rc = loom_error(LOOM_EFORMAT,
                        "secagg: the shares of client %u's %s do not match its commitment (more than one lying holder, "
                        "or client %u lied)",
                        u, wname, u);
    else
        rc = loom_error(LOOM_EFORMAT,
                        "secagg: the shares of client %u's %s do not match its commitment: one of its %u holders (or "
                        "client %u) lied, and with only t shares the liar cannot be named",
                        u, wname, m, u);
done:
    free(xs);
    free(ys);
    free(who);
    free(lam);
    free(sx);
    free(sy);
    return rc;
}

/* One mask to take off the sum: acc -= sign * ChaCha20(key, nonce). */
typedef struct {
    uint8_t key[32], nonce[12];
    int sign;
} unmask_job;

/* Runs the jobs into acc (len values): in parallel on loom_threads() threads, each into its own
 * partial sum, added at the end; integer sums mod 2^64 do not depend on the split. */
static int run_jobs(uint64_t *acc, size_t len, const unmask_job *jobs, size_t nj) {
    int nt = loom_threads();
    if (nt > (int)nj) nt = (int)nj;
    if (nt <= 1 || len < 65536) {
        for (size_t j = 0; j < nj; j++) add_stream(acc, len, jobs[j].key, jobs[j].nonce, jobs[j].sign);
        return LOOM_OK;
    }
    uint64_t *part = calloc((size_t)(nt - 1) * len, sizeof *part);
    if (!part) return loom_error(LOOM_ENOMEM, "secagg: out of memory for %d partial sums", nt - 1);
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        uint64_t *a = t == 0 ? acc : part + (size_t)(t - 1) * len;
#pragma omp for schedule(dynamic, 1)
        for (size_t j = 0; j < nj; j++) add_stream(a, len, jobs[j].key, jobs[j].nonce, jobs[j].sign);
    }
#pragma omp parallel for schedule(static) num_threads(nt)
    for (size_t i = 0; i < len; i++)
        for (int t = 1; t < nt; t++) acc[i] += part[(size_t)(t - 1) * len + i];
    free(part);
    return LOOM_OK;
}

int loom_secagg_server_result(loom_secagg_server *s, double *sum, uint64_t *total_weight, uint32_t *n_included,
                              uint64_t *ring_sum) {
    const loom_secagg_params *p = &s->p;
    if (s->closed < 4) return loom_error(LOOM_ESTATE, "secagg: no result before the unmask phase is closed");
    size_t n1 = p->dim + 1;
    int rc = LOOM_OK;
    if (!s->have_result) {
        /* the masks to take off: every survivor's self-mask, and each dropped client's pairwise masks with
         * its surviving neighbours (at most n + (n - t) (n - 1) jobs) */
        size_t nj = 0, cap = p->n;
        unmask_job *jobs = malloc(cap * sizeof *jobs);
        uint8_t sec[32];
        if (!jobs) rc = loom_error(LOOM_ENOMEM, "secagg: out of memory");
        for (uint32_t u = 0; u < p->n && !rc; u++) {
            if (!s->got[1][u]) continue;
            if (s->got[2][u]) { /* survived: remove its self-mask */
                if ((rc = reconstruct(s, u, 0, sec))) break;
                self_key(jobs[nj].key, sec, p->round, u);
                stream_nonce(jobs[nj].nonce, p->round, u, u);
                jobs[nj++].sign = -1;
                continue;
            }
            /* dropped after sharing: remove its masks from its surviving neighbours' inputs */
            if ((rc = reconstruct(s, u, 1, sec))) break;
            unmask_job *more = realloc(jobs, (cap + p->n) * sizeof *jobs);
            if (!more) {
                rc = loom_error(LOOM_ENOMEM, "secagg: out of memory");
                break;
            }
            jobs = more;
            cap += p->n;
            for (uint32_t v = 0; v < p->n; v++) {
                if (v == u || !s->got[2][v] || !graph_nb(p, s->place, u, v)) continue;
                if (pair_key(jobs[nj].key, sec, s->s_pk[v], "loom-secagg mask", p->round, u, v) != 0) {
                    rc = loom_error(LOOM_EFORMAT, "secagg: client %u's mask key is invalid (low order)", v);
                    break;
                }
                stream_nonce(jobs[nj].nonce, p->round, u, v);
                jobs[nj++].sign = v < u ? -1 : +1; /* v added the mask if v < u */
            }
        }
        sodium_memzero(sec, sizeof sec);
        if (!rc) rc = run_jobs(s->acc, n1, jobs, nj);
        if (jobs) sodium_memzero(jobs, nj * sizeof *jobs);
        free(jobs);
        if (rc) {
            s->closed = 5; /* the sum is half unmasked: the round cannot finish */
            return rc;
        }
        /* The unmasked sum must lie in the range the encoding allows; anything else means the masks did not
         * cancel (a client that sent an inconsistent masked input). */
        uint64_t nin = s->count[2], wsum = s->acc[p->dim];
        unsigned __int128 lim = (unsigned __int128)nin * p->max_weight * max_q(p->clip);
        if (wsum < nin || wsum > nin * p->max_weight) {
            s->closed = 5; /* the round cannot finish */
            return loom_error(LOOM_EFORMAT,
                              "secagg: the unmasked total weight %llu is outside [%llu, %llu]: a masked input was corrupt",
                              (unsigned long long)wsum, (unsigned long long)nin,
                              (unsigned long long)(nin * p->max_weight));
        }
        for (size_t j = 0; j < p->dim; j++) {
            int64_t v = (int64_t)s->acc[j];
            uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
            if (a > lim) {
                s->closed = 5;
                return loom_error(LOOM_EFORMAT, "secagg: unmasked value %zu is out of range: a masked input was corrupt", j);
            }
        }
        s->have_result = 1;
    }
    if (s->closed != 4 || !s->have_result) return loom_error(LOOM_ESTATE, "secagg: the round failed");
    const double step = 1.0 / (double)(UINT64_C(1) << FRAC);
    if (sum)
        for (size_t j = 0; j < p->dim; j++) sum[j] = (double)(int64_t)s->acc[j] * step;
    if (total_weight) *total_weight = s->acc[p->dim];
    if (n_included) *n_included = s->count[2];
    if (ring_sum) memcpy(ring_sum, s->acc, sizeof *ring_sum * n1);
    return LOOM_OK;
}
