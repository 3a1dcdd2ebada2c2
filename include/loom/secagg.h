/* Secure aggregation (privacy/ layer): the server learns the sum of the clients' updates and nothing
 * else, and still gets the exact sum when clients drop out (Bonawitz et al., CCS 2017; SecAgg+ with a
 * sparse random neighbour graph, Bell et al., CCS 2020, as an option).
 *
 * The protocol is written here; every primitive comes from libsodium (X25519 key agreement, ChaCha20
 * as the mask PRG, authenticated encryption of the shares). Shamir secret sharing over a prime field is
 * the protocol's own arithmetic.
 *
 * This module never moves bytes: each phase turns messages into messages. A transport (the simulator,
 * or net/ over HTTPS) carries them between the clients and the server, and a dropout is a message
 * that never arrives. The messages are opaque byte strings with a size limit, checked on receipt.
 *
 *   phase 0  advertise   client -> server   its two public keys            (server: roster to all)
 *   phase 1  share       client -> server   encrypted Shamir shares of its  (server: each client's
 *                                           self-mask seed and mask key,     inbox of shares)
 *                                           one per other client
 *   phase 2  mask        client -> server   the masked, encoded update       (server: survivor list)
 *   phase 3  unmask      client -> server   shares: self-mask seeds of the survivors, mask keys of the
 *                                           clients that dropped before phase 2
 *   result               the server reconstructs what it may, removes the masks, and decodes the sum
 *
 * Clients are numbered 0..n-1 within a round (their place in the round's sample); the transport maps
 * them to identities and authenticates them (the server is trusted to relay, not to see).
 *
 * Threads: a client or server object is used by one thread at a time, except that
 * loom_secagg_server_message (read-only) may run on many threads at once while no receive, close or
 * result runs. loom_secagg_server_result takes the masks off on loom_threads() threads. */
#ifndef LOOM_SECAGG_H
#define LOOM_SECAGG_H

#include <stddef.h>
#include <stdint.h>

#include "loom/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LOOM_SECAGG_ADVERTISE = 0,
    LOOM_SECAGG_SHARE = 1,
    LOOM_SECAGG_MASK = 2,
    LOOM_SECAGG_UNMASK = 3,
} loom_secagg_phase;

typedef struct {
    uint32_t n;          /* clients in the round (2 .. LOOM_SECAGG_MAX_CLIENTS) */
    uint32_t threshold;  /* t: shares needed to reconstruct a secret, and the fewest clients a phase may
                            close with (n/2 < t <= n for the complete graph; (k+1)/2 < t <= k+1 with k
                            neighbours, who hold a client's shares with the client itself) */
    uint32_t neighbours; /* SecAgg+: each client shares keys and masks with k random neighbours (k even,
                            2 <= k < n - 1: a randomly relabelled Harary graph); 0 = with every other
                            client (SecAgg) */
    size_t dim;          /* floats per update */
    double clip;         /* every value is clipped to [-clip, clip] before encoding (> 0) */
    uint64_t max_weight; /* the largest weight (examples) a client may give its update */
    uint64_t seed;       /* public: the neighbour graph of the round */
    uint64_t round;      /* bound into every derived key and nonce: masks never repeat across rounds */
} loom_secagg_params;

#define LOOM_SECAGG_MAX_CLIENTS 4096u
#define LOOM_SECAGG_MAX_DIM (1u << 28) /* floats per update: a masked input is 8 (dim + 1) bytes */
#define LOOM_SECAGG_FRAC_BITS 24       /* fixed-point fraction bits of the encoding (see secagg.c) */

/* Defaults: threshold = floor(2n/3)+1, complete graph, clip 1, max_weight 2^16, seed 0, round 0. */
void loom_secagg_defaults(loom_secagg_params *p, uint32_t n, size_t dim);
/* LOOM_OK, or LOOM_EINVAL naming the bad field (including parameters for which the encoding could
 * overflow, n * max_weight * rint(clip 2^24) >= 2^63: see the encoding in secagg.c and
 * docs/privacy-secagg.md). */
int loom_secagg_check(const loom_secagg_params *p);

/* A byte string produced by a phase (free with loom_secagg_buf_free). */
typedef struct {
    uint8_t *data;
    size_t len;
} loom_secagg_buf;
void loom_secagg_buf_free(loom_secagg_buf *b);

/* ---- client ---- */

typedef struct loom_secagg_client loom_secagg_client;

/* id in [0, n). Keys come from libsodium's random generator, or, when key_seed is not NULL (tests, the
 * deterministic simulator), from the 32 bytes given. */
int loom_secagg_client_create(loom_secagg_client **out, const loom_secagg_params *p, uint32_t id,
                              const uint8_t key_seed[32]);
void loom_secagg_client_free(loom_secagg_client *c);
/* Phase 0: the public keys to send. */
int loom_secagg_client_advertise(loom_secagg_client *c, loom_secagg_buf *out);
/* Phase 1: from the server's roster (the phase-0 messages it accepted), the encrypted shares to send.
 * A roster with fewer than t clients, or that omits this client: LOOM_EINVAL. */
int loom_secagg_client_share(loom_secagg_client *c, const uint8_t *roster, size_t len, loom_secagg_buf *out);
/* Phase 2: from the server's inbox for this client (the shares addressed to it), the masked encoding of
 * x (dim floats) with weight w (1 .. max_weight): the server can only ever learn sum w x. */
int loom_secagg_client_mask(loom_secagg_client *c, const uint8_t *inbox, size_t len, const float *x, uint64_t w,
                            loom_secagg_buf *out);
/* Phase 3: from the server's survivor list (who sent phase 2), the shares the server may have. A list
 * with fewer than t clients is refused (LOOM_EINVAL), so the server never gets both secrets of one
 * client. */
int loom_secagg_client_unmask(loom_secagg_client *c, const uint8_t *survivors, size_t len, loom_secagg_buf *out);

/* ---- server ---- */

typedef struct loom_secagg_server loom_secagg_server;

int loom_secagg_server_create(loom_secagg_server **out, const loom_secagg_params *p);
void loom_secagg_server_free(loom_secagg_server *s);
/* The phase-`phase` message of client `from`. Refused with LOOM_EINVAL and a reason (wrong phase,
 * duplicate, malformed, too large, a client not in the previous phase's set); the round goes on. */
int loom_secagg_server_receive(loom_secagg_server *s, loom_secagg_phase phase, uint32_t from, const uint8_t *msg,
                               size_t len);
/* Closes the phase with the messages received so far: fewer than t is LOOM_ESTATE ("only K of the T
 * needed"), and the round cannot finish. */
int loom_secagg_server_close(loom_secagg_server *s, loom_secagg_phase phase);
/* After closing phase `phase` (< UNMASK): what client `to` fetches to run phase + 1 (the roster, its
 * inbox, the survivor list). A client not in the closed phase's set: LOOM_ENOTFOUND. */
int loom_secagg_server_message(loom_secagg_server *s, loom_secagg_phase phase, uint32_t to, loom_secagg_buf *out);
/* After closing UNMASK: the exact weighted sum of the survivors' encoded updates decoded to doubles,
 * sum[dim] = sum_u w_u dec(enc(x_u)), its total weight, and how many updates it holds. ring_sum (may be
 * NULL; dim + 1 values, the last the weight) receives the raw sum of the encodings in the ring, for
 * exactness tests. After a failure (LOOM_EFORMAT, LOOM_ESTATE) the round cannot finish. A share that does not
 * match the commitment its owner made (a lying client) is refused with LOOM_EFORMAT naming it. */
int loom_secagg_server_result(loom_secagg_server *s, double *sum, uint64_t *total_weight, uint32_t *n_included,
                              uint64_t *ring_sum);

#ifdef __cplusplus
}
#endif
#endif
