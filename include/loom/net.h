/* The network transport (net/ layer): `loom server` and `loom client` over HTTPS (docs/protocol.md).
 *
 * The server is a driver of the round engine (include/loom/engine.h), as the simulator is: the engine
 * decides sampling, admission, closing and aggregation; this layer moves bytes (libmicrohttpd with
 * GnuTLS on the server, libcurl on the client), checks tokens, and makes what it acknowledges durable
 * (SQLite in WAL mode, fsync'd update files, atomic checkpoints). It never knows the algorithm: the
 * strategy, the clients' training and the codecs come from fl/.
 *
 * Who calls whom:
 *
 *     cli/cmd_server.c -- loom_server_run --------------- net/server.c  HTTP handlers, round driver
 *                           |-- loom_engine_*              fl/engine.c   every decision
 *                           |-- loom_update_decode         fl/update.c   upload bodies (size-limited)
 *                           `-- store (SQLite)             net/store.c   registry, rounds, updates, events
 *     cli/cmd_client.c -- loom_netclient_run ------------ net/client.c  poll, download, upload, retry
 *                           `-- callbacks setup/fit/evaluate (the CLI's: the same client code as loom sim)
 *
 * State: the server's lives in state_dir (state.db, updates/, checkpoint.safetensors,
 * global.safetensors, metrics.jsonl, tls/); the client's in work_dir (the downloaded global model,
 * the pending upload, the driver's own client state). */
#ifndef LOOM_NET_H
#define LOOM_NET_H

#include <stddef.h>
#include <stdint.h>

#include "loom/engine.h"
#include "loom/tvec.h"
#include "loom/update.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ identities (state_dir/state.db) */

/* 1..64 chars of [A-Za-z0-9._-], not starting with '.' or '-'. LOOM_OK or LOOM_EINVAL with a message. */
int loom_net_check_name(const char *name);
/* The roles of an identity: a client of the run (trains), an administrator (reads /v1/status and the
 * dashboard, never trains), a viewer (reads the dashboard's page and API only: GET /v1/dash/status and /v1/dash/metrics). */
enum { LOOM_NET_ROLE_CLIENT = 0, LOOM_NET_ROLE_ADMIN = 1, LOOM_NET_ROLE_VIEWER = 2 };
/* Registers NAME (creating state_dir and its database when new) with role (LOOM_NET_ROLE_*; 1 keeps
 * meaning an administrator) and writes its fresh token (64 hex digits) to token[65]; only the token's
 * SHA-256 is stored. A name already registered (and not revoked): LOOM_EINVAL. */
int loom_server_add_client(const char *state_dir, const char *name, int role, char token[65]);
/* Revokes NAME: its token is refused from then on. Unknown name: LOOM_ENOTFOUND. */
int loom_server_revoke_client(const char *state_dir, const char *name);

/* ------------------------------------------------------------------ server */

typedef enum { LOOM_NET_SYNC = 0, LOOM_NET_FEDASYNC = 1, LOOM_NET_FEDBUFF = 2 } loom_net_mode;

typedef struct {
    const char *state_dir;       /* required */
    const char *listen;          /* "HOST:PORT" (default "127.0.0.1:8443"); port 0 picks a free one */
    const char *tls_cert, *tls_key; /* PEM files; NULL: a self-signed development certificate is made
                                      in state_dir/tls/ (cert.pem, key.pem) and a warning logged */
    /* the run: the engine's configuration. dim, init, rounds, pipe (strategy, bounds), sample, seed,
     * min_updates, deadline, eval_every, eval_clients are used; n_clients, run_id and n_test are set by
     * the server (the registered clients; a random run id kept in the database). */
    loom_engine_config engine;
    const loom_tvec *manifest;   /* the vector's tensor names (global.safetensors, downloads) */
    const char *run_json;        /* JSON object text sent to clients in hello ("run") */
    const char *model_config_json; /* JSON object text ("model_config"), or NULL (PEFT run) */
    const char *base_sha256;     /* PEFT run: the frozen base's hash clients must match; NULL otherwise */
    const char *compress;        /* "none", "fp16", "int8", "topk" (told to clients in hello) */
    int min_clients;             /* clients that said hello before round 1 opens (0: all registered) */
    size_t max_upload;           /* bytes (0: twice the f32 update size plus 1 MiB) */
    int poll_ms;                 /* the retry_ms told to waiting clients (default 500) */
    int eval_timeout_s;          /* seconds to wait for evaluation reports (default 60) */
    int threads;                 /* HTTP worker threads (default 4) */
    int checkpoint_every;        /* rounds between checkpoints (default 1: every round) */
    int keep_checkpoints;        /* unlearning (include/loom/unlearn.h): keep state_dir/unlearn/start_R.safetensors,
                                    the start of rounds 1 + K, 1 + 2K, ... (0: none); the round membership
                                    is always kept (state.db, table members) and the updates are */
    loom_net_mode mode;          /* synchronous rounds, or asynchronous (FedAsync, FedBuff) */
    int no_eval;                 /* 1: no evaluation phase (else every client evaluates on the engine's
                                    eval_every rounds and the last one; a client without test data
                                    reports tokens 0 and is left out) */
    double done_grace_s;         /* after the last round, tasks answer "done" until every client has
                                    seen it or this many seconds passed (default 10) */
    int serve_wait;              /* 1: after the last round (and the grace), keep serving the dashboard and
                                    "done" until *stop is set (a finished run stays visible) */
    /* secure aggregation (docs/protocol.md, "Secure aggregation"): every synchronous round runs the
     * four phases of /v1/secagg and the server only learns the round's sum */
    int secagg;                  /* 1: on (synchronous mode, no compression, no SCAFFOLD) */
    uint32_t secagg_threshold;   /* t (0: floor(2h/3) + 1 of the h holders of a client's shares: the n
                                    sampled, or neighbours + 1) */
    uint32_t secagg_neighbours;  /* SecAgg+: neighbours per client (0: every other client) */
    double secagg_clip;          /* values are clipped to [-clip, clip] before encoding (0: the library's 1) */
    uint64_t secagg_max_weight;  /* the largest weight (examples) a client may give (0: the library's) */
    double secagg_fit_timeout_s; /* phase 0 (the clients' download and training, then their keys)
                                    closes this long after the round opened (default 600) */
    double secagg_phase_timeout_s; /* phases 1, 2, 3 close this long after they opened (default 60) */
    /* The server's own update of a round, for an aggregator that takes one (FLTrust,
     * loom_engine_wants_reference): called on the driver's thread right after each synchronous round
     * opens, with the round's global vector (dim floats); writes ref (dim floats). NULL with such an
     * aggregator: the run is refused at start. */
    int (*reference)(void *ud, int round, const float *global, float *ref, size_t dim);
    void *reference_ud;
    /* Split learning (docs/protocol.md, "Split learning"; include/loom/split.h): POST /v1/split (a step's
     * activations, up to split_max_body bytes) and GET /v1/split?round=R (the server side of the client's
     * update), answered by these on the HTTP threads for a client sampled in the open synchronous round
     * that has not answered yet; step gets the round's global vector (dim floats). They return a LOOM_E*
     * code, the answer's body (malloc'd) and its HTTP status. NULL: the endpoints answer 404. */
    int (*split_step)(void *ud, int client, int round, const float *global, const void *body, size_t len, void **reply,
                      size_t *rlen, int *status);
    int (*split_update)(void *ud, int client, int round, void **reply, size_t *rlen, int *status);
    void *split_ud;
    size_t split_max_body;
    /* progress: called on the round thread once a round's (an asynchronous version's) metrics row is
     * written, with its summary (ud below); NULL: none */
    void (*on_round)(void *ud, const loom_round_metrics *m);
    /* test hooks */
    void (*on_listen)(void *ud, int port); /* called once the socket listens (tests use port 0) */
    void *ud;
    volatile int *stop;          /* when non-NULL and set (read atomically: a signal handler may set
                                    it), the server stops within 100 ms: LOOM_ESTATE "stopped" */
} loom_server_config;

void loom_server_defaults(loom_server_config *c);
/* Runs (or resumes) the run in state_dir until its last round is done: writes state_dir/
 * global.safetensors and metrics.jsonl, returns LOOM_OK and the final vector in global (dim). A second
 * start with the same configuration continues where the first stopped; another configuration
 * (dim, seed, strategy, rounds) is refused with a message naming the difference (the clients are
 * those registered when the run was created). Before round 1 it waits for min_clients hellos; the
 * events go to loom_log(LOOM_INFO), one line each. Stopped through c->stop: LOOM_ESTATE. Only
 * LOOM_NET_SYNC is served (the others: LOOM_EUNSUPPORTED). */
int loom_server_run(const loom_server_config *c, float *global);

/* Unlearning a server's run (include/loom/unlearn.h): prepares out_dir (new, or empty) as the state of
 * the same run restarted without client `name`. Its first contributed round f comes from the membership
 * (table members); the restart round s is the last start kept at or before f (keep_checkpoints), else 1.
 * out_dir gets a copy of the database with the rounds from s on forgotten, the client removed from the
 * population (sampling unchanged, rounds that sample it run with the others only, never asked to
 * evaluate) and its token revoked; the kept start of round s as its checkpoint.safetensors, the kept starts
 * before it, metrics.jsonl and tls/. loom server --state out_dir with the run's configuration then
 * retrains rounds s.. with the remaining clients, which connect as before. A client that contributed
 * nothing: *info says so (first_round 0) and nothing is written. Unknown name: LOOM_ENOTFOUND. */
typedef struct {
    int client;         /* the client's index */
    int first_round;    /* 0: it contributed to no round */
    int restart_round;  /* s */
    int rounds;         /* the run's rounds */
} loom_server_unlearn_info;
int loom_server_unlearn(const char *state_dir, const char *name, const char *out_dir, loom_server_unlearn_info *info);

/* ------------------------------------------------------------------ client */

typedef struct {
    uint64_t run_id;
    int client;                  /* this client's index in the run */
    int n_clients, rounds;
    size_t dim;
    const char *mode;            /* "sync", "fedasync", "fedbuff" */
    const char *compress;        /* "none", "fp16", "int8", "topk" */
    const char *run_json;        /* the run configuration (JSON object text) */
    const char *model_config_json; /* or NULL */
    const char *base_sha256;     /* or NULL */
    int secagg;                  /* 1: the run's rounds use secure aggregation */
} loom_netclient_hello;

typedef struct {
    int round;
    uint64_t version;
    double deadline_s;           /* seconds left (0: none) */
    int secagg;                  /* 1: the round uses secure aggregation (the update is masked, never sent) */
    void *conn;                  /* the connection, for calls made during fit (loom_netclient_split_*) */
} loom_netclient_task;

typedef struct {
    const char *url;             /* "https://HOST:PORT" */
    const char *name;
    const char *token;
    const char *ca_cert;         /* PEM file trusted for the server (NULL: the system's CAs) */
    const char *work_dir;        /* required: downloads, the pending upload */
    const char *base_sha256;     /* this client's frozen base hash (PEFT), or NULL */
    /* The driver: setup after hello (build the trainer; check the manifest), fit one round (fill u with
     * values pointing at the driver's buffers, u->round/version/client/examples/loss/tokens, and the
     * codec to send in *co), evaluate the global model. global (and control, SCAFFOLD's c, or NULL)
     * are dim floats valid during the call; the hello's strings stay valid until the run returns.
     * fit's u comes preset with run_id, round, version, client, len = dim and codec F32 (fit sets
     * values, examples, loss, tokens, and control for SCAFFOLD); an update that does not match its
     * task, or a fit that fails, is reported to /v1/fail with loom_errmsg() and the run goes on. */
    int (*setup)(void *ud, const loom_netclient_hello *h);
    int (*fit)(void *ud, const loom_netclient_task *t, const float *global, const float *control, loom_update *u,
               loom_codec_opts *co);
    int (*evaluate)(void *ud, const loom_netclient_task *t, const float *global, loom_eval_result *r);
    void *ud;
    double give_up_s;            /* stop when the server was unreachable this long (default 600) */
    volatile int *stop;          /* when non-NULL and set, the run stops at the next step: LOOM_ESTATE */
    const char *version;         /* the loom version told in hello and the User-Agent (NULL: "unknown") */
    /* test hook: called once the server accepted this client's phase-`phase` message of a secure round
     * (tests stop the process there, as a client that vanishes); NULL: none */
    void (*on_secagg_sent)(void *ud, int round, int phase);
} loom_netclient_config;

/* Says hello, then polls, downloads (resuming), trains, uploads (retrying transient failures with
 * back-off) until the run is done: LOOM_OK. Refusals that cannot be retried (401, 403, 409
 * base_mismatch), an untrusted certificate, or an answer that breaks the protocol fail with the
 * server's message (LOOM_EINVAL for refusals, LOOM_EIO for transport, LOOM_EFORMAT for bad answers);
 * a server out of contact for give_up_s: LOOM_EIO "giving up"; *stop set: LOOM_ESTATE "stopped".
 * 409 duplicate, 410 stale/late, 412 and the content refusals of an upload end that round for this
 * client only (logged; polling goes on). Logs one line per event through loom_log.
 *
 *     loom_netclient_config c = {0};
 *     c.url = "https://server:8443"; c.name = "alice"; c.token = token;   // token: no newline
 *     c.ca_cert = "cert.pem"; c.work_dir = "work"; c.version = LOOM_VERSION;
 *     c.base_sha256 = base_hex;                        // PEFT: hash of the local frozen base, or NULL
 *     c.setup = my_setup; c.fit = my_fit; c.evaluate = my_eval; c.ud = &state; c.stop = &sigint_flag;
 *     if (loom_netclient_run(&c) != LOOM_OK) fprintf(stderr, "loom: %s\n", loom_errmsg());
 *
 * work_dir (created 0700 when missing) holds global-V.part / global-V.safetensors (the verified
 * download) and pending-R.upd (an update written and fsync'd before it is sent; a restarted client
 * sends it again under the same idempotency key instead of training again): keep it across restarts
 * of the same client, and give every client its own. */
int loom_netclient_run(const loom_netclient_config *c);

/* Split learning, the client's side (net/split_client.c; include/loom/split.h has the bodies): during fit,
 * over the task's connection. A step: POST /v1/split with the cut's activations act[n] and targets[nt];
 * the server's gradient into dact[n] and *loss. The update: GET /v1/split?round=R, the server-side values
 * (side[i] == LOOM_SPLIT_SERVER) of upd[dim]. Transient failures are retried as any request; a refusal is
 * LOOM_EINVAL with the server's message. */
int loom_netclient_split_step(void *conn, int round, long step, int B, int T, int Tp, int C, const float *act,
                              size_t n, const int32_t *targets, float *dact, float *loss);
int loom_netclient_split_update(void *conn, int round, const uint8_t *side, float *upd, size_t dim);

#ifdef __cplusplus
}
#endif
#endif
