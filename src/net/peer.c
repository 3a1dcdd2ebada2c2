/* Peer-to-peer decentralized federation over HTTPS (include/loom/peer.h): the peers file, the peer's
 * GET /v1/peer/vector service on the server's daemon, and the rounds (local training, then gossip
 * steps with the neighbours' vectors fetched through the client's exchange machinery). */
#include "loom/peer.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/gossip.h"
#include "loom/net.h"
#include "net/net_impl.h"

#define PEERS_FILE_MAX (1u << 20)
#define PEER_RETRY_MS 20

/* ------------------------------------------------------------------ the peers file */

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int loom_peers_load(const char *path, loom_peer_entry **out, int *n) {
    *out = NULL;
    *n = 0;
    struct stat sb;
    if (stat(path, &sb) != 0) return loom_error(LOOM_ENOTFOUND, "%s: cannot open the peers file: %s", path, strerror(errno));
    if (sb.st_size > PEERS_FILE_MAX) return loom_error(LOOM_ERANGE, "%s: the peers file is larger than %u bytes", path, PEERS_FILE_MAX);
    char *text = NULL;
    size_t len;
    int rc = loom_read_file(path, &text, &len);
    if (rc != LOOM_OK) return rc;
    loom_peer_entry *p = NULL;
    int cnt = 0, cap = 0;
    long ln = 0;
    for (char *line = text, *next; line && rc == LOOM_OK; line = next) {
        ln++;
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *f[5] = {0};
        int nf = 0;
        for (char *tok = strtok(line, " \t\r"); tok; tok = strtok(NULL, " \t\r")) {
            if (nf == 4) {
                rc = loom_error(LOOM_EFORMAT, "%s:%ld: more than NAME URL TOKEN_SHA256 [CA_FILE]", path, ln);
                break;
            }
            f[nf++] = tok;
        }
        if (rc != LOOM_OK || nf == 0) continue;
        if (nf < 3) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: expected NAME URL TOKEN_SHA256 [CA_FILE]", path, ln);
            break;
        }
        if (loom_net_check_name(f[0]) != LOOM_OK) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: %s", path, ln, loom_errmsg());
            break;
        }
        if (strncmp(f[1], "https://", 8) || strlen(f[1]) >= sizeof p->url || !strchr(f[1] + 8, ':')) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: the URL '%.200s' is not https://HOST:PORT", path, ln, f[1]);
            break;
        }
        if (strlen(f[2]) != 64) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: the token's SHA-256 must be 64 hex digits", path, ln);
            break;
        }
        if (nf == 4 && strlen(f[3]) >= sizeof p->ca) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: CA file name too long", path, ln);
            break;
        }
        if (cnt == LOOM_PEERS_MAX) {
            rc = loom_error(LOOM_ERANGE, "%s:%ld: more than %d peers", path, ln, LOOM_PEERS_MAX);
            break;
        }
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            loom_peer_entry *np = realloc(p, (size_t)cap * sizeof *p);
            if (!np) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            p = np;
        }
        loom_peer_entry *e = &p[cnt];
        memset(e, 0, sizeof *e);
        snprintf(e->name, sizeof e->name, "%s", f[0]);
        snprintf(e->url, sizeof e->url, "%s", f[1]);
        for (int i = 0; i < 32 && rc == LOOM_OK; i++) {
            int a = hexval((unsigned char)f[2][2 * i]), b = hexval((unsigned char)f[2][2 * i + 1]);
            if (a < 0 || b < 0) rc = loom_error(LOOM_EFORMAT, "%s:%ld: the token's SHA-256 must be 64 hex digits", path, ln);
            e->token_sha[i] = (uint8_t)(16 * a + b);
        }
        if (nf == 4 && strcmp(f[3], "-")) snprintf(e->ca, sizeof e->ca, "%s", f[3]);
        for (int i = 0; i < cnt && rc == LOOM_OK; i++)
            if (!strcmp(p[i].name, e->name)) rc = loom_error(LOOM_EFORMAT, "%s:%ld: peer %s named twice", path, ln, e->name);
        if (rc == LOOM_OK) cnt++;
    }
    free(text);
    if (rc == LOOM_OK && cnt == 0) rc = loom_error(LOOM_EFORMAT, "%s: no peers", path);
    if (rc != LOOM_OK) {
        free(p);
        return rc;
    }
    *out = p;
    *n = cnt;
    return LOOM_OK;
}

/* ------------------------------------------------------------------ the service */

typedef struct {
    int round, step;     /* 0, 0: empty */
    uint8_t *data;       /* loom_alloc'd serialization */
    size_t len;
    char sha[65];
} published;

typedef struct {
    const loom_peer_config *c;
    const loom_topology *t;
    pthread_mutex_t mu;
    published pub[2];    /* the newest in pub[0] */
    int last_round, last_step; /* the run's last vector's label */
    char *fetched_last;  /* (n) the neighbour fetched the last vector */
} peer_srv;

static int label_cmp(int r1, int s1, int r2, int s2) { return r1 != r2 ? (r1 < r2 ? -1 : 1) : (s1 > s2) - (s1 < s2); }

static void answer_json(net_response *r, int status, const char *code, const char *msg, int retry_ms) {
    json_t *o = json_object();
    json_object_set_new(o, "error", json_string(code));
    json_object_set_new(o, "message", json_string(msg));
    if (retry_ms) json_object_set_new(o, "retry_ms", json_integer(retry_ms));
    r->status = status;
    r->ctype = "application/json";
    r->body = json_dumps(o, JSON_COMPACT);
    r->len = r->body ? strlen(r->body) : 0;
    json_decref(o);
}

static size_t ps_limit(void *ud, const char *url) {
    (void)ud, (void)url;
    return NET_MAX_JSON;
}

static void ps_clear(void *ud, net_response *r) {
    (void)ud;
    free(r->body);
    r->body = NULL;
}

/* The peer presenting this bearer token, or -1. */
static int who(const peer_srv *s, const char *auth) {
    if (!auth || strncmp(auth, "Bearer ", 7)) return -1;
    const char *tok = auth + 7;
    uint8_t h[32];
    loom_sha256 st;
    loom_sha256_init(&st);
    loom_sha256_update(&st, tok, strlen(tok));
    loom_sha256_final(&st, h);
    int found = -1;
    for (int i = 0; i < s->c->n; i++) {
        unsigned diff = 0;
        for (int k = 0; k < 32; k++) diff |= (unsigned)(h[k] ^ s->c->peers[i].token_sha[k]);
        if (!diff) found = i;
    }
    return found;
}

static int parse_int(const char *v, int lo, int hi, int *out) {
    if (!v || !*v) return -1;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*end || errno || x < lo || x > hi) return -1;
    *out = (int)x;
    return 0;
}

static void ps_handle(void *ud, const net_request *q, net_response *r) {
    peer_srv *s = ud;
    memset(r, 0, sizeof *r);
    if (strcmp(q->path, "/v1/peer/vector")) {
        answer_json(r, 404, "not_found", "no such endpoint", 0);
        return;
    }
    if (strcmp(q->method, "GET")) {
        answer_json(r, 405, "method", "GET only", 0);
        return;
    }
    int j = who(s, q->authorization);
    if (j < 0) {
        answer_json(r, 401, "unauthorized", "no token of a peer of this run", 0);
        return;
    }
    int deg, nb = 0;
    const int *ns = loom_topology_out(s->t, s->c->self, &deg);
    for (int k = 0; k < deg; k++) nb |= ns[k] == j;
    if (!nb) {
        answer_json(r, 403, "not_neighbour", "this peer is not a neighbour in the topology", 0);
        return;
    }
    int round, step;
    int max_step = s->c->gossip_steps > 0 ? s->c->gossip_steps - 1 : 0;
    if (parse_int(q->arg_round, 1, s->c->rounds, &round) || parse_int(q->arg_step ? q->arg_step : "0", 0, max_step, &step)) {
        answer_json(r, 400, "bad_query", "round must be in [1, rounds] and step in [0, gossip steps)", 0);
        return;
    }
    pthread_mutex_lock(&s->mu);
    const published *p = NULL;
    for (int k = 0; k < 2; k++)
        if (s->pub[k].data && s->pub[k].round == round && s->pub[k].step == step) p = &s->pub[k];
    if (p) {
        r->body = malloc(p->len ? p->len : 1);
        if (r->body) {
            memcpy(r->body, p->data, p->len);
            r->len = p->len;
            r->status = 200;
            r->ctype = "application/octet-stream";
            snprintf(r->hdr[0][0], sizeof r->hdr[0][0], "X-Loom-SHA256");
            snprintf(r->hdr[0][1], sizeof r->hdr[0][1], "%s", p->sha);
            r->nhdr = 1;
            if (round == s->last_round && step == s->last_step) r->tag = (uint64_t)j + 1; /* marked once sent */
        }
        pthread_mutex_unlock(&s->mu);
        if (!r->body) answer_json(r, 503, "busy", "out of memory", 0);
        return;
    }
    int ahead = !s->pub[0].data || label_cmp(round, step, s->pub[0].round, s->pub[0].step) > 0;
    pthread_mutex_unlock(&s->mu);
    if (ahead) {
        answer_json(r, 425, "not_ready", "this peer has not reached that step yet", PEER_RETRY_MS);
        return;
    }
    answer_json(r, 410, "gone", "this peer is past that step", 0);
}

/* A neighbour has the last vector once its answer went out completely. */
static void ps_end(void *ud, uint64_t tag, int completed) {
    peer_srv *s = ud;
    if (!tag || !completed) return;
    pthread_mutex_lock(&s->mu);
    s->fetched_last[tag - 1] = 1;
    pthread_mutex_unlock(&s->mu);
}

static int publish(peer_srv *s, int round, int step, const float *x) {
    void *data;
    size_t len;
    int rc = loom_tvec_serialize(s->c->manifest, x, NULL, &data, &len);
    if (rc != LOOM_OK) return rc;
    char sha[65];
    if ((rc = net_sha256_hex(data, len, sha)) != LOOM_OK) {
        loom_free(data);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    loom_free(s->pub[1].data);
    s->pub[1] = s->pub[0];
    s->pub[0] = (published){round, step, data, len, ""};
    memcpy(s->pub[0].sha, sha, sizeof sha);
    pthread_mutex_unlock(&s->mu);
    return LOOM_OK;
}

static int stopped(const loom_peer_config *c) { return c->stop && __atomic_load_n(c->stop, __ATOMIC_RELAXED); }

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Neighbour j's vector of (round, step) into out, waiting while it is not ready. */
static int fetch(const loom_peer_config *c, net_getter **g, int j, int round, int step, float *out) {
    const loom_peer_entry *e = &c->peers[j];
    double t0 = loom_now(), give_up = c->give_up_s > 0 ? c->give_up_s : 600;
    char path[128];
    snprintf(path, sizeof path, "/v1/peer/vector?round=%d&step=%d", round, step);
    for (;;) {
        if (stopped(c)) return loom_error(LOOM_ESTATE, "peer: stopped");
        if (loom_now() - t0 > give_up)
            return loom_error(LOOM_EIO, "peer %s (%s) did not serve round %d step %d within %.0f s", e->name, e->url, round,
                              step, give_up);
        struct stat sb;
        if (e->ca[0] && stat(e->ca, &sb) != 0) { /* its certificate is not there yet (the peer is starting) */
            nap_ms(100);
            continue;
        }
        int rc;
        if (!g[j] && (rc = net_getter_create(&g[j], e->url, c->token, e->ca[0] ? e->ca : NULL, give_up, c->stop)) != LOOM_OK)
            return rc;
        uint8_t *body;
        size_t len;
        long status;
        char code[48];
        rc = net_getter_get(g[j], path, c->dim * sizeof(float) + ((size_t)16 << 20), &body, &len, &status, code);
        if (rc != LOOM_OK) return loom_error_context(rc, "peer %s", e->name);
        if (status == 425) {
            nap_ms(PEER_RETRY_MS);
            continue;
        }
        if (status != 200) return loom_error(LOOM_EINVAL, "peer %s refused round %d step %d: %s", e->name, round, step, loom_errmsg());
        char what[128];
        snprintf(what, sizeof what, "peer %s's vector of round %d step %d", e->name, round, step);
        rc = loom_tvec_deserialize(c->manifest, out, NULL, body, len, what);
        free(body);
        return rc;
    }
}

static void host_port(const char *url, char *out, size_t cap) { snprintf(out, cap, "%s", url + 8); }

int loom_peer_run(const loom_peer_config *c, float *final) {
    if (c->self < 0 || c->self >= c->n) return loom_error(LOOM_EINVAL, "peer: index %d out of %d peers", c->self, c->n);
    if (c->gossip_steps < 0 || c->rounds < 1) return loom_error(LOOM_EINVAL, "peer: rounds >= 1 and gossip steps >= 0");
    loom_topology *t = NULL;
    loom_mixing *w = NULL;
    loom_tvec *own_man = NULL;
    loom_peer_config cc = *c;
    int rc = loom_topology_parse(&t, c->topology ? c->topology : "ring", c->n, c->seed, "--topology");
    if (rc == LOOM_OK && loom_topology_directed(t))
        rc = loom_error(LOOM_EUNSUPPORTED, "--topology %s is directed: push-sum is not served over the network", c->topology);
    if (rc == LOOM_OK) rc = loom_topology_check_connected(t);
    if (rc == LOOM_OK) rc = loom_mixing_metropolis(t, &w);
    if (rc == LOOM_OK && !cc.manifest) {
        int64_t shape[1] = {(int64_t)c->dim};
        rc = loom_tvec_create(&own_man);
        if (rc == LOOM_OK) rc = loom_tvec_add(own_man, "vector", 1, shape, LOOM_ROLE_SHARED);
        cc.manifest = own_man;
    }
    if (rc != LOOM_OK) {
        loom_topology_free(t);
        loom_tvec_free(own_man);
        return rc;
    }
    c = &cc;
    int n = c->n, me = c->self, S = c->gossip_steps;
    size_t dim = c->dim;
    peer_srv srv;
    memset(&srv, 0, sizeof srv);
    srv.c = c;
    srv.t = t;
    pthread_mutex_init(&srv.mu, NULL);
    srv.last_round = c->rounds;
    srv.last_step = S > 0 ? S - 1 : -1;
    srv.fetched_last = calloc((size_t)n, 1);
    float **x = calloc((size_t)n, sizeof *x), *y = loom_alloc(dim * sizeof(float)), *u = loom_alloc(dim * sizeof(float));
    net_getter **g = calloc((size_t)n, sizeof *g);
    int deg;
    const int *nb = loom_topology_out(t, me, &deg);
    if (!srv.fetched_last || !x || !y || !u || !g) rc = loom_error(LOOM_ENOMEM, "out of memory");
    if (rc == LOOM_OK && !(x[me] = loom_alloc(dim * sizeof(float)))) rc = loom_error(LOOM_ENOMEM, "out of memory");
    for (int k = 0; k < deg && rc == LOOM_OK; k++)
        if (!(x[nb[k]] = loom_alloc(dim * sizeof(float)))) rc = loom_error(LOOM_ENOMEM, "out of memory for the neighbours' vectors");
    char *cert = NULL, *key = NULL;
    struct MHD_Daemon *d = NULL;
    net_http_service svc = {ps_limit, ps_handle, ps_clear, NULL, NULL, ps_end, &srv};
    char listen[1100];
    if (c->listen) snprintf(listen, sizeof listen, "%s", c->listen);
    else host_port(c->peers[me].url, listen, sizeof listen);
    int port = 0;
    if (rc == LOOM_OK) rc = net_tls_load(c->work_dir, c->tls_cert, c->tls_key, &cert, &key);
    if (rc == LOOM_OK) rc = net_http_start(&d, listen, cert, key, 2, &svc, &port);
    if (rc == LOOM_OK) {
        loom_log(LOOM_INFO, "peer %s (%d of %d): listening on %s (port %d), %d neighbours, %d rounds x %d gossip steps",
                 c->peers[me].name, me, n, listen, port, deg, c->rounds, S);
        if (c->on_listen) c->on_listen(c->ud, port);
        memcpy(x[me], c->init, dim * sizeof(float));
    }
    for (int round = 1; round <= c->rounds && rc == LOOM_OK; round++) {
        double loss = 0;
        if ((rc = c->fit(c->ud, round, x[me], u, &loss)) != LOOM_OK) {
            loom_error_context(rc, "peer: round %d's local training", round);
            break;
        }
        for (size_t k = 0; k < dim; k++) x[me][k] += u[k];
        for (int step = 0; step < S && rc == LOOM_OK; step++) {
            if ((rc = publish(&srv, round, step, x[me])) != LOOM_OK) break;
            for (int k = 0; k < deg && rc == LOOM_OK; k++) rc = fetch(c, g, nb[k], round, step, x[nb[k]]);
            if (rc == LOOM_OK) rc = loom_gossip_mix(w, me, (const float *const *)x, dim, y);
            if (rc == LOOM_OK) memcpy(x[me], y, dim * sizeof(float));
        }
        if (rc == LOOM_OK)
            loom_log(LOOM_INFO, "peer %s: round %d: trained (loss %.4f), %d gossip step%s with %d neighbours", c->peers[me].name,
                     round, loss, S, S == 1 ? "" : "s", deg);
    }
    /* serve the last vector until every neighbour has it */
    double t0 = loom_now(), give_up = c->give_up_s > 0 ? c->give_up_s : 600;
    while (rc == LOOM_OK && S > 0) {
        int all = 1;
        pthread_mutex_lock(&srv.mu);
        for (int k = 0; k < deg; k++) all &= srv.fetched_last[nb[k]];
        pthread_mutex_unlock(&srv.mu);
        if (all) break;
        if (stopped(c)) rc = loom_error(LOOM_ESTATE, "peer: stopped");
        else if (loom_now() - t0 > give_up) {
            loom_log(LOOM_WARN, "peer %s: not every neighbour fetched the last vector within %.0f s", c->peers[me].name, give_up);
            break;
        } else nap_ms(20);
    }
    if (rc == LOOM_OK && final) memcpy(final, x[me], dim * sizeof(float));
    net_http_stop(d);
    if (key) memset(key, 0, strlen(key));
    free(cert);
    free(key);
    for (int k = 0; k < n && g; k++) net_getter_free(g[k]);
    free(g);
    for (int k = 0; k < n && x; k++) loom_free(x[k]);
    free(x);
    loom_free(y);
    loom_free(u);
    for (int k = 0; k < 2; k++) loom_free(srv.pub[k].data);
    free(srv.fetched_last);
    pthread_mutex_destroy(&srv.mu);
    loom_mixing_free(w);
    loom_topology_free(t);
    loom_tvec_free(own_man);
    return rc;
}
