/* Internal to the server's files (server.c: handlers, server_driver.c: rounds, server_http.c: daemon). */
#ifndef LOOM_SERVER_IMPL_H
#define LOOM_SERVER_IMPL_H

#include <pthread.h>
#include <jansson.h>
#include <stdio.h>

#include "loom/dash.h"
#include "net/net_impl.h"

enum { NET_PH_WAIT = 0, NET_PH_FIT, NET_PH_CLOSING, NET_PH_EVAL, NET_PH_DONE };

struct net_server {
    loom_server_config c;
    loom_engine_config ec;     /* as given to the engine (n_clients, run_id, n_test set) */
    net_store *store;
    loom_engine *eng;
    const loom_tvec *manifest;
    loom_tvec *own_manifest;
    size_t dim, max_upload;
    int uses_control;
    uint64_t run_id;
    char upd_dir[4200];
    char *run_text, *model_text; /* compact JSON texts for hello */
    /* the run's clients, in byte order of their names (index = client id) */
    int n;
    char **names;
    size_t *n_test;
    int next_round;            /* from the checkpoint */
    size_t metrics_bytes;      /* metrics.jsonl's length at the checkpoint */
    FILE *metrics;
    loom_metrics_jsonl js;
    /* unlearning: the round's accepted clients and weights (table members); the removed clients */
    loom_metrics_sink js_sink;
    int *mem_c, mem_n;
    uint64_t *mem_w;
    unsigned char *removed;
    int n_removed;
    loom_dash *dash;           /* the dashboard's board (GET /, /v1/dash/status, /v1/dash/metrics): fed by the metrics rows */
    loom_dash_tee dash_tee;
    /* identities cache (refreshed every second: revocations of a running server) */
    net_identity *ids;
    int nids;
    double ids_at;
    /* everything below under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int phase, round;          /* round: 1-based, the open (or evaluated) one; 0 before the first */
    double opened_at;
    int *hello, n_hello;       /* (n) */
    double *last_seen;         /* (n) wall seconds */
    int *seen_done, n_seen_done;
    int in_flight;               /* HTTP requests begun and not yet completed (atomic): the server
                                    stops only once the last client's "done" has been sent */
    int *spos;                 /* (n) client -> position in the sampled list, -1 */
    int *ans;                  /* (n) 0 nothing, 1 pending (being stored), 2 answered (stored) */
    int pending, n_sampled, n_answered, n_updates;
    int *epos, *ereported, ne, n_reported;
    net_blob *cur, *prev;      /* the served global bodies */
    /* asynchronous modes (server_async.c), under mu */
    int async;
    uint64_t *atask;           /* (n) the task a client holds (its number), 0: none */
    uint64_t *aver;            /* (n) the version it trains on */
    double *aat;               /* (n) when it got the task */
    int *abusy;                /* (n) an answer is being stored */
    net_blob **ablob;          /* the snapshots clients train on */
    int nablob;
    uint64_t aseq;             /* tasks handed out */
    int amade, aended;         /* versions made, and whose rows were emitted */
    /* secure aggregation (server_secagg.c), under mu */
    struct net_sa *sa;
};

double net_wall(void);
int net_random(void *buf, size_t n);
int net_write_durable(const char *dir, const char *name, const void *data, size_t len);
int net_publish(net_server *s, uint64_t version);
int net_make_blob(net_server *s, uint64_t version, net_blob **out);
void net_blob_release(net_server *s, net_blob *b);
void net_blob_release_locked(net_blob *b); /* the same, the caller holding mu */
/* The body of vector vec (and control, or NULL) as version `version`. */
int net_make_blob_of(net_server *s, uint64_t version, const float *vec, const float *control, net_blob **out);
/* Replies shared by the handlers (server.c). */
void net_reply_err(net_response *r, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void net_reply_accepted(net_response *r, int round, int k, int replayed);
void net_reply_rejected(net_response *r, const char *reason, const char *msg);
const char *net_verdict_code(loom_update_verdict v, int *status);
int net_stopped(const net_server *s);
void net_wait_for(net_server *s, double dt); /* the caller holds mu */
/* Asynchronous modes (server_async.c). */
int net_async_init(net_server *s);
void net_async_free(net_server *s);
int net_async_task(net_server *s, int k, json_t *o);     /* under mu: 1 when a fit task was written */
net_blob *net_async_blob(net_server *s, uint64_t v);     /* under mu: a held snapshot (referenced) */
int net_async_answer(net_server *s, int k, int round, net_response *r); /* under mu */
void net_async_update(net_server *s, const loom_update *u, int k, const char *name, const char *idem_key,
                      const char *sha, const uint8_t *body, size_t len, net_response *r);
void net_async_fail(net_server *s, int k, const char *reason); /* under mu, after net_async_answer */
int net_async_drive(net_server *s, float *global);
/* Secure aggregation rounds (server_secagg.c). */
int net_sa_init(net_server *s);                 /* at create: checks the configuration, allocates */
void net_sa_free(net_server *s);
/* The round thread, once round R is open with the sampled list (n): runs phases 0..3, then gives the
 * engine the stored failure reports and the round's secure sum (nothing when the round aborted). */
int net_sa_round(net_server *s, int round, const int *list, int n);
int net_sa_offers_fit(const net_server *s, int k); /* under mu: 1 when client k may get the fit task */
void net_sa_task(net_server *s, int k, json_t *o); /* under mu: the fit task's "secagg" object */
json_t *net_sa_hello(const net_server *s);        /* hello's "secagg" (null without) */
void net_sa_handle(net_server *s, const net_request *q, int k, const char *name, net_response *r);
size_t net_sa_body_limit(const net_server *s);    /* the largest /v1/secagg body (phase 2) */
/* Split learning (split_server.c): POST and GET /v1/split of client k. */
void net_split_handle(net_server *s, const net_request *q, int k, net_response *r);

#endif
