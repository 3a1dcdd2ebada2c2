/* Internal to the net/ layer: the server's SQLite store (store.c) and the request handler behind the
 * HTTP daemon (server.c), callable without sockets (tests, the fuzz harness). */
#ifndef LOOM_NET_IMPL_H
#define LOOM_NET_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "loom/net.h"

/* ------------------------------------------------------------------ store (state_dir/state.db) */

typedef struct net_store net_store;

/* Opens (creating when new) state_dir (0700) and state_dir/state.db (0600, WAL, synchronous=FULL). */
int net_store_open(net_store **out, const char *state_dir);
void net_store_close(net_store *s); /* accepts NULL */

/* One identity of the registry. */
typedef struct {
    char name[65];
    uint8_t token_sha[32];
    int admin, revoked;
    int viewer;      /* reads the dashboard only (role "viewer") */
} net_identity;

/* role: LOOM_NET_ROLE_CLIENT, _ADMIN or _VIEWER (include/loom/net.h) */
int net_store_add_client(net_store *s, const char *name, const uint8_t token_sha[32], int role);
int net_store_revoke_client(net_store *s, const char *name);
/* Every identity in byte order of the names (*out: malloc'd, n entries). */
int net_store_identities(net_store *s, net_identity **out, int *n);

/* The run's fingerprint: what a restart must match. */
typedef struct {
    uint64_t run_id;
    size_t dim;
    uint64_t seed;
    char strategy[64];
    int rounds;
    char *clients; /* names joined by '\n' (malloc'd) */
} net_run;
/* LOOM_OK and *found = 1 with the stored run, or *found = 0. */
int net_store_get_run(net_store *s, net_run *r, int *found);
int net_store_put_run(net_store *s, const net_run *r);
void net_run_clear(net_run *r);

/* Rounds: 1-based. Opening stores the round (state "open", opened_at) with its sampled clients in one
 * transaction; an existing row is kept (a restart reopens the round at its original time). */
int net_store_open_round(net_store *s, int round, double now, const int *sampled, int n, double *opened_at);
int net_store_round_done(net_store *s, int round);
/* 1 when any round row exists (the run has started). */
int net_store_started(net_store *s, int *started);

/* A client's answer in a round: kind "update" (accepted by the checks), "rejected" (decoded, content
 * refused: kept so the engine gives its verdict), "failed" (the client reported a failure). */
typedef struct {
    int round, client;
    char kind[16];
    char idem_key[65];
    char sha256[65];
    uint64_t examples;
    double loss;
    int64_t tokens;
    char file[64];   /* under state_dir/updates; "" for failed */
    char reason[256];
    double received_at;
} net_answer;
int net_store_put_answer(net_store *s, const net_answer *a);
/* The answer of (client, idem_key) in any round: *found. */
int net_store_find_key(net_store *s, int client, const char *idem_key, net_answer *a, int *found);
/* The answers of a round (*out malloc'd). */
int net_store_answers(net_store *s, int round, net_answer **out, int *n);

int net_store_put_eval(net_store *s, int round, int client, const loom_eval_result *r);
int net_store_evals(net_store *s, int round, int **clients, loom_eval_result **res, int *n);

/* One row in events, and one info log line. */
void net_store_event(net_store *s, int round, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int net_store_count_updates(net_store *s, int *n);
/* Unlearning (include/loom/unlearn.h): the accepted clients of a round and their weights (a redone
 * round replaces its rows); the first round client contributed to (0: none); the removed clients
 * (removed: n bytes, 1 = removed). restart_without copies the database to copy_to (a new file) and, in
 * the copy, forgets the rounds from from_round on, removes client (named name) from the population
 * and revokes its token. */
int net_store_put_members(net_store *s, int round, const int *clients, const uint64_t *weights, int n);
int net_store_first_member(net_store *s, int client, int *round);
int net_store_removed(net_store *s, unsigned char *removed, int n);
int net_store_restart_without(net_store *s, int from_round, int client, const char *name, const char *copy_to);

/* ------------------------------------------------------------------ request handling */

typedef struct net_server net_server;

typedef struct {
    const char *method;        /* "GET", "POST", ... */
    const char *path;          /* "/v1/task" */
    const char *authorization; /* header values, NULL when absent */
    const char *idem_key;
    const char *sha256;
    const char *range;
    const char *version;       /* the ?version= argument */
    /* /v1/secagg's arguments: ?round=R&phase=K&epoch=E (and &examples=N&loss=X&tokens=N with phase 2) */
    const char *arg_round, *arg_phase, *arg_epoch, *arg_examples, *arg_loss, *arg_tokens;
    const char *arg_since;     /* /v1/dash/metrics?since=N */
    const char *arg_step;      /* /v1/peer/vector's ?step= (src/net/peer.c) */
    const uint8_t *body;
    size_t len;
} net_request;

/* A body shared between responses (the serialized global model). */
typedef struct net_blob net_blob;
struct net_blob {
    int refs;                  /* under the server mutex */
    uint8_t *data;
    size_t len;
    char sha256[65];
    uint64_t version;
};

typedef struct {
    int status;
    const char *ctype;
    char *body;                /* malloc'd, or NULL */
    size_t len;
    net_blob *blob;            /* or a range of a shared blob (release with net_response_clear) */
    size_t off;
    char hdr[4][2][96];        /* extra headers: name, value */
    int nhdr;
    uint64_t tag;              /* the handler's own mark, handed to net_http_service.end (0: none) */
} net_response;

/* A server without sockets or a driver thread: state_dir, the run's engine configuration. */
int net_server_create(net_server **out, const loom_server_config *c);
void net_server_free(net_server *s);
/* Handles one request with its whole body. Always fills r (status and JSON body, or the blob). */
void net_handle(net_server *s, const net_request *q, net_response *r);
void net_response_clear(net_server *s, net_response *r);
/* The driver, for tests that step it without the daemon: runs every round (loom_server_run minus
 * the HTTP daemon). */
int net_server_drive(net_server *s, float *global);

/* A binary request made during a client's fit (net/client.c; used by net/split_client.c). */
int net_client_binary(void *conn, const char *method, const char *path, const void *body, size_t len,
                      size_t max_reply, void **reply, size_t *rlen);

/* The largest JSON request body. */
#define NET_MAX_JSON (64 * 1024)

/* SHA-256 of a buffer as hex, through GnuTLS (several times faster than the portable loom_sha256). */
int net_sha256_hex(const void *data, size_t len, char out[65]);

/* ------------------------------------------------------------------ HTTPS machinery shared with peers */

/* What the daemon (server_http.c) serves: the body limit of a URL, the handler, the release of an
 * answer (its body, or its blob: release_blob may be NULL when handle never sets one), and the optional
 * begin / end of each request (end gets the answer's tag and whether it was sent completely). */
typedef struct {
    size_t (*limit)(void *ud, const char *url);
    void (*handle)(void *ud, const net_request *q, net_response *r);
    void (*clear)(void *ud, net_response *r);
    void (*release_blob)(void *ud, net_blob *b);
    void (*begin)(void *ud);
    void (*end)(void *ud, uint64_t tag, int completed);
    void *ud;
} net_http_service;
struct MHD_Daemon;
/* Listens on "HOST:PORT" with TLS (PEM texts) on `threads` threads, serving *svc (which must outlive the
 * daemon); *port = the bound port. */
int net_http_start(struct MHD_Daemon **d, const char *listen, const char *cert_pem, const char *key_pem, unsigned threads,
                   const net_http_service *svc, int *port);
void net_http_stop(struct MHD_Daemon *d); /* accepts NULL */
/* The PEM texts of cert_file and key_file, or (both NULL) of state_dir/tls/{cert,key}.pem, a self-signed
 * development certificate for localhost and 127.0.0.1 made there when absent. */
int net_tls_load(const char *state_dir, const char *cert_file, const char *key_file, char **cert, char **key);

/* GETs through the client's exchange machinery (client.c: bearer token, TLS verification against
 * ca_cert or the system's CAs, retries of transient failures with back-off until give_up_s without an
 * answer, stop). net_getter_get: LOOM_OK with *status the answer's status; a 200's body (at most max
 * bytes, malloc'd) in *body, *len; for another status, *code the error code and loom_errmsg() the
 * server's message. */
typedef struct net_getter net_getter;
int net_getter_create(net_getter **g, const char *base_url, const char *token, const char *ca_cert, double give_up_s,
                      volatile int *stop);
int net_getter_get(net_getter *g, const char *path, size_t max, uint8_t **body, size_t *len, long *status,
                   char code[48]);
void net_getter_free(net_getter *g);

#endif
