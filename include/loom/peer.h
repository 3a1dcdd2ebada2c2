/* Peer-to-peer decentralized federation over HTTPS (net/ layer): `loom client --peers FILE`.
 *
 * Each peer of a peers file runs this: an HTTPS server (the daemon of loom server, libmicrohttpd with
 * GnuTLS) that answers its neighbours' GET /v1/peer/vector?round=R&step=K with its current vector, and a
 * libcurl client (the one of loom client) that fetches its neighbours' vectors. A round is the
 * decentralized simulation's (include/loom/decentral.h): the peer trains locally from its own model
 * (the caller's fit callback: the same loom_client_run_fit, data and seeds as the simulated peer with the
 * same index), then takes `gossip_steps` Metropolis-Hastings steps x <- sum_j W_ij x_j over the topology,
 * step K mixing the neighbours' step-K vectors (K = 0: just after local training). The vectors travel
 * as f32 safetensors (loom_tvec_serialize), which decode to the same floats, so a run equals the
 * simulation bit for bit. Push-sum (directed graphs) is not served over the network.
 *
 * The peers file: one peer per line, "NAME URL TOKEN_SHA256 [CA_FILE]" separated by blanks ('#' starts a
 * comment); the line order gives the peers' indices 0..n-1 (the topology's ids and the data seeds).
 * URL is https://HOST:PORT; TOKEN_SHA256 the SHA-256 (64 hex digits) of the peer's token text, which it
 * presents as "Authorization: Bearer TOKEN" to its neighbours; CA_FILE the PEM certificate the others
 * trust for it (absent or "-": the system's CAs). A peer answers only its neighbours (401 without a
 * known token, 403 for a peer that is not a neighbour). At most LOOM_PEERS_MAX peers, 1 MiB of file;
 * errors name the file and line.
 *
 * Answers of GET /v1/peer/vector?round=R&step=K (docs/protocol.md, "Peer-to-peer"): 200 with the vector
 * (application/octet-stream, X-Loom-SHA256); 425 not_ready with retry_ms when the peer has not reached
 * (R, K) yet; 410 gone when it is past it (a peer keeps its last two vectors: a neighbour is never more
 * than one step behind); 400 for a malformed query. After its last step a peer keeps serving until every
 * neighbour has fetched its last vector (or give_up_s passed). */
#ifndef LOOM_PEER_H
#define LOOM_PEER_H

#include <stddef.h>
#include <stdint.h>

#include "loom/tvec.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_PEERS_MAX 4096

typedef struct {
    char name[65];
    char url[1024];
    uint8_t token_sha[32];
    char ca[4096]; /* "" = the system's CAs */
} loom_peer_entry;

/* Reads a peers file: *out (malloc'd, *n entries). Names must be unique (loom_net_check_name). */
int loom_peers_load(const char *path, loom_peer_entry **out, int *n);

typedef struct {
    const loom_peer_entry *peers;
    int n;
    int self;                   /* this peer's index */
    const char *token;          /* this peer's token */
    const char *listen;         /* HOST:PORT to listen on (NULL: the host and port of its URL) */
    const char *tls_cert, *tls_key; /* PEM files; NULL: a development certificate in work_dir/tls */
    const char *work_dir;
    const char *topology;       /* ring, kregular:K, full or an edge-list file (include/loom/gossip.h) */
    uint64_t seed;              /* the run's seed (kregular's draw) */
    int rounds, gossip_steps;
    size_t dim;
    const loom_tvec *manifest;  /* the vector's names (NULL: one tensor "vector") */
    const float *init;          /* the starting model (every peer the same) */
    /* local training of `round` from x (dim floats): writes update (dim floats) and *loss */
    int (*fit)(void *ud, int round, const float *x, float *update, double *loss);
    void *ud;
    double give_up_s;           /* a neighbour unreachable this long fails the run (default 600) */
    volatile int *stop;
    void (*on_listen)(void *ud, int port);
} loom_peer_config;

/* Runs the rounds; final (dim) receives this peer's final model. */
int loom_peer_run(const loom_peer_config *c, float *final);

#ifdef __cplusplus
}
#endif
#endif
