/* Secure aggregation over the network (docs/protocol.md, "Secure aggregation"): the server side of
 * the four phases of a synchronous round. The library (include/loom/secagg.h) turns messages into
 * messages; this file carries them: POST /v1/secagg takes a client's phase-K message, GET /v1/secagg
 * serves the server's message for that client once phase K closed, and the round thread closes each
 * phase when every client of the previous phase's set has sent or at the phase timeout, aborts the
 * round with fewer than t, and gives the unmasked sum to the engine.
 *
 * A client's secure-aggregation id in round R is its place in the round's sampled list (s->spos).
 * Everything here lives in memory under the server mutex (the library's calls too): a restarted
 * server starts the round's secure aggregation again from phase 0 under a new epoch. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/secagg.h"
#include "net/server_impl.h"

#define SA_PHASES 4
#define SA_RETRY_MS 100          /* the retry_ms of a "wait" answer (phases close within the timeout) */
#define SA_SMALL_BASE ((size_t)64 << 10) /* phases 0, 1, 3: 64 KiB plus SA_SMALL_PER_CLIENT per client */
#define SA_SMALL_PER_CLIENT ((size_t)256)

typedef struct net_sa {
    loom_secagg_server *srv;
    loom_secagg_params p;
    int round;                   /* the round it serves (0: none yet) */
    uint64_t epoch;              /* this instance of the round's secure aggregation */
    int phase;                   /* the open phase 0..3; 4 once phase 3 closed */
    int aborted;
    char why[512];               /* the abort's message */
    double phase_at;             /* when the open phase opened */
    int n;                       /* ids (the sampled clients) */
    int cap;
    unsigned *sent;              /* (n) bit K: the phase-K message was accepted */
    char (*sha)[SA_PHASES][65];  /* (n) the accepted bodies' SHA-256 in hex (idempotent retries) */
    uint64_t (*up)[SA_PHASES];   /* (n) bytes received from the client per phase */
    uint64_t (*down)[SA_PHASES]; /* (n) bytes served to it per phase */
    double *loss;                /* (n) phase 2's examples, loss and tokens (the metrics rows) */
    int64_t *tokens;
    uint64_t *examples;
    int count[SA_PHASES];        /* messages accepted per phase */
} net_sa;

static double phase_timeout(const net_server *s) {
    return s->c.secagg_phase_timeout_s > 0 ? s->c.secagg_phase_timeout_s : 60.0;
}

static double fit_timeout(const net_server *s) {
    return s->c.secagg_fit_timeout_s > 0 ? s->c.secagg_fit_timeout_s : 600.0;
}

int net_sa_init(net_server *s) {
    if (!s->c.secagg) return LOOM_OK;
    if (s->async)
        return loom_error(LOOM_EINVAL, "secure aggregation needs synchronous rounds: the run's mode is %s",
                          loom_engine_mode_name(s->ec.mode));
    if (s->c.compress && strcmp(s->c.compress, "none") && strcmp(s->c.compress, "f32"))
        return loom_error(LOOM_EINVAL, "secure aggregation masks f32 updates: compress %s cannot be combined with it",
                          s->c.compress);
    if (s->uses_control)
        return loom_error(LOOM_EINVAL, "secure aggregation carries the update only: the strategy's control variates "
                                       "(SCAFFOLD) cannot be combined with it");
    if (s->ec.pipe.clip_norm > 0)
        return loom_error(LOOM_EINVAL, "secure aggregation hides the updates from the server, which cannot clip them to "
                                       "clip_norm %g: clip on the clients instead", s->ec.pipe.clip_norm);
    if (s->c.secagg_clip < 0 || !isfinite(s->c.secagg_clip) || s->c.secagg_phase_timeout_s < 0 ||
        !isfinite(s->c.secagg_phase_timeout_s) || s->c.secagg_fit_timeout_s < 0 || !isfinite(s->c.secagg_fit_timeout_s))
        return loom_error(LOOM_EINVAL, "secure aggregation: the clip and the timeouts must be finite and >= 0");
    if (s->n > (int)LOOM_SECAGG_MAX_CLIENTS)
        return loom_error(LOOM_EINVAL, "secure aggregation serves at most %u clients a round, the run has %d",
                          LOOM_SECAGG_MAX_CLIENTS, s->n);
    net_sa *a = calloc(1, sizeof *a);
    int cap = s->n > 0 ? s->n : 1;
    if (a) {
        a->cap = cap;
        a->sent = calloc((size_t)cap, sizeof *a->sent);
        a->sha = calloc((size_t)cap, sizeof *a->sha);
        a->up = calloc((size_t)cap, sizeof *a->up);
        a->down = calloc((size_t)cap, sizeof *a->down);
        a->loss = calloc((size_t)cap, sizeof *a->loss);
        a->tokens = calloc((size_t)cap, sizeof *a->tokens);
        a->examples = calloc((size_t)cap, sizeof *a->examples);
    }
    s->sa = a;
    if (!a || !a->sent || !a->sha || !a->up || !a->down || !a->loss || !a->tokens || !a->examples)
        return loom_error(LOOM_ENOMEM, "out of memory for secure aggregation");
    a->phase = -1;
    return LOOM_OK;
}

void net_sa_free(net_server *s) {
    net_sa *a = s->sa;
    if (!a) return;
    loom_secagg_server_free(a->srv);
    free(a->sent);
    free(a->sha);
    free(a->up);
    free(a->down);
    free(a->loss);
    free(a->tokens);
    free(a->examples);
    free(a);
    s->sa = NULL;
}

size_t net_sa_body_limit(const net_server *s) { return 8 * (s->dim + 1) + SA_SMALL_BASE; }

static size_t small_limit(const net_server *s) { return SA_SMALL_BASE + SA_SMALL_PER_CLIENT * (size_t)s->n; }

json_t *net_sa_hello(const net_server *s) {
    if (!s->c.secagg) return json_null();
    /* the configuration only (no lock needed): the per-round values come with each fit task */
    return json_pack("{s:I, s:I, s:f, s:f, s:f}", "threshold", (json_int_t)s->c.secagg_threshold, "neighbours",
                     (json_int_t)s->c.secagg_neighbours, "clip", s->c.secagg_clip > 0 ? s->c.secagg_clip : 1.0,
                     "fit_timeout_s", fit_timeout(s), "phase_timeout_s", phase_timeout(s));
}

static int live(const net_server *s) {
    const net_sa *a = s->sa;
    return a && a->round == s->round && a->round > 0 && !a->aborted && s->phase == NET_PH_FIT;
}

int net_sa_offers_fit(const net_server *s, int k) {
    const net_sa *a = s->sa;
    return live(s) && a->phase == 0 && s->spos[k] >= 0 && !(a->sent[s->spos[k]] & 1u);
}

void net_sa_task(net_server *s, int k, json_t *o) {
    const net_sa *a = s->sa;
    char seed[17], epoch[17];
    snprintf(seed, sizeof seed, "%016" PRIx64, a->p.seed);
    snprintf(epoch, sizeof epoch, "%016" PRIx64, a->epoch);
    json_object_set_new(o, "secagg",
                        json_pack("{s:i, s:I, s:I, s:I, s:f, s:I, s:s, s:s, s:f, s:f}", "id", s->spos[k], "n",
                                  (json_int_t)a->p.n, "threshold", (json_int_t)a->p.threshold, "neighbours",
                                  (json_int_t)a->p.neighbours, "clip", a->p.clip, "max_weight",
                                  (json_int_t)a->p.max_weight, "seed", seed, "epoch", epoch, "fit_timeout_s",
                                  fit_timeout(s), "phase_timeout_s", phase_timeout(s)));
}

/* ------------------------------------------------------------------ the handler */

static int parse_ll(const char *v, long long lo, long long hi, long long *out) {
    if (!v || !*v) return -1;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

static int parse_hex64(const char *v, uint64_t *out) {
    if (!v || strlen(v) != 16) return -1;
    for (int i = 0; i < 16; i++)
        if (!((v[i] >= '0' && v[i] <= '9') || (v[i] >= 'a' && v[i] <= 'f'))) return -1;
    *out = strtoull(v, NULL, 16);
    return 0;
}

static void reply_accepted(net_response *r, int round, int phase, int replayed) {
    json_t *o = json_pack("{s:s, s:i, s:i}", "status", "accepted", "round", round, "phase", phase);
    if (replayed) json_object_set_new(o, "replayed", json_true());
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    r->status = text ? 200 : 500;
    r->ctype = "application/json";
    r->body = text;
    r->len = text ? strlen(text) : 0;
}

/* The checks every /v1/secagg call shares, under mu: 0 with *id, or -1 with the reply. */
static int sa_admit(net_server *s, int k, int round, uint64_t epoch, net_response *r, int *id) {
    net_sa *a = s->sa;
    if (a->aborted && a->round == round && epoch == a->epoch) { /* said until the next round starts */
        net_reply_err(r, 410, "secagg_aborted", "%s", a->why);
        return -1;
    }
    if (round != s->round || a->round != round || !(s->phase == NET_PH_FIT || s->phase == NET_PH_CLOSING)) {
        net_reply_err(r, 410, "stale", "round %d is not the open secure round (the server is at round %d)", round,
                      s->round);
        return -1;
    }
    if (epoch != a->epoch) {
        net_reply_err(r, 410, "stale", "epoch %016" PRIx64 " is not this round's (%016" PRIx64
                      "): the server started the round's secure aggregation again", epoch, a->epoch);
        return -1;
    }
    if (s->spos[k] < 0) {
        net_reply_err(r, 412, "not_sampled", "client %d is not sampled in round %d", k, round);
        return -1;
    }
    *id = s->spos[k];
    return 0;
}

static void sa_post(net_server *s, const net_request *q, int k, const char *name, int round, int phase,
                    uint64_t epoch, net_response *r) {
    net_sa *a = s->sa;
    size_t limit = phase == LOOM_SECAGG_MASK ? net_sa_body_limit(s) : small_limit(s);
    if (q->len > limit) {
        net_reply_err(r, 413, "too_large", "the phase-%d message of %zu bytes exceeds its %zu-byte limit", phase, q->len,
                      limit);
        return;
    }
    double loss = 0;
    long long tokens = 0, examples = 0;
    if (phase == LOOM_SECAGG_MASK) {
        if (parse_ll(q->arg_examples, 1, (long long)UINT32_MAX, &examples) != 0) {
            net_reply_err(r, 400, "bad_request", "phase 2 needs examples=N (the weight, 1 to 2^32-1), not %.32s",
                          q->arg_examples ? q->arg_examples : "nothing");
            return;
        }
        char *end = NULL;
        if (q->arg_loss) loss = strtod(q->arg_loss, &end);
        if (q->arg_loss && (*end || !isfinite(loss) || loss < 0)) {
            net_reply_err(r, 400, "bad_request", "loss=%.32s is not a finite number >= 0", q->arg_loss);
            return;
        }
        if (q->arg_tokens && parse_ll(q->arg_tokens, 0, (long long)1 << 52, &tokens) != 0) {
            net_reply_err(r, 400, "bad_request", "tokens=%.32s is not a whole number in [0, 2^52]", q->arg_tokens);
            return;
        }
    }
    char sha[65];
    if (net_sha256_hex(q->body, q->len, sha) != LOOM_OK) loom_sha256_hex(q->body, q->len, sha);
    pthread_mutex_lock(&s->mu);
    int id;
    if (sa_admit(s, k, round, epoch, r, &id) != 0) goto out;
    if (a->sent[id] & (1u << phase)) {
        if (!strcmp(a->sha[id][phase], sha)) reply_accepted(r, round, phase, 1);
        else net_reply_err(r, 409, "duplicate", "client %d already sent another phase-%d message in round %d", k, phase, round);
        goto out;
    }
    if (a->phase != phase) {
        net_reply_err(r, 409, "wrong_phase", "phase %d is not open in round %d (%s)", phase, round,
                      a->phase > phase ? "it closed" : "it has not opened yet");
        goto out;
    }
    if (phase > 0 && !(a->sent[id] & (1u << (phase - 1)))) {
        net_reply_err(r, 409, "not_in_phase", "client %d did not send phase %d of round %d in time: it is out of this round",
                      k, phase - 1, round);
        goto out;
    }
    if (loom_secagg_server_receive(a->srv, (loom_secagg_phase)phase, (uint32_t)id, q->body, q->len) != LOOM_OK) {
        net_reply_err(r, 400, "bad_request", "the phase-%d message was refused: %s", phase, loom_errmsg());
        goto out;
    }
    a->sent[id] |= 1u << phase;
    memcpy(a->sha[id][phase], sha, 65);
    a->up[id][phase] = q->len;
    a->count[phase]++;
    if (phase == LOOM_SECAGG_MASK) {
        a->loss[id] = loss;
        a->tokens[id] = tokens;
        a->examples[id] = (uint64_t)examples;
    }
    pthread_cond_broadcast(&s->cv);
    reply_accepted(r, round, phase, 0);
out:
    pthread_mutex_unlock(&s->mu);
    if (r->status == 200 && !strstr(r->body, "replayed"))
        loom_log(LOOM_DEBUG, "round %d: secure aggregation: client %d (%s) sent phase %d (%zu bytes)", round, k, name,
                 phase, q->len);
}

static void sa_get(net_server *s, int k, int round, int phase, uint64_t epoch, net_response *r) {
    net_sa *a = s->sa;
    if (phase == LOOM_SECAGG_UNMASK) {
        net_reply_err(r, 400, "bad_request", "phase 3 has no server message (GET phases 0, 1 and 2)");
        return;
    }
    pthread_mutex_lock(&s->mu);
    int id;
    loom_secagg_buf b = {0};
    if (sa_admit(s, k, round, epoch, r, &id) != 0) goto out;
    if (a->phase <= phase) {
        json_t *o = json_pack("{s:s, s:i, s:i}", "status", "wait", "retry_ms", SA_RETRY_MS, "phase", phase);
        char *text = json_dumps(o, JSON_COMPACT);
        json_decref(o);
        r->status = text ? 202 : 500;
        r->ctype = "application/json";
        r->body = text;
        r->len = text ? strlen(text) : 0;
        goto out;
    }
    if (!(a->sent[id] & (1u << phase))) {
        net_reply_err(r, 409, "not_in_phase", "client %d did not send phase %d of round %d: it is out of this round", k,
                      phase, round);
        goto out;
    }
    if (a->phase > phase + 1) {
        net_reply_err(r, 409, "wrong_phase", "phase %d of round %d closed already: it is too late for its message",
                      phase + 1, round);
        goto out;
    }
    int rc = loom_secagg_server_message(a->srv, (loom_secagg_phase)phase, (uint32_t)id, &b);
    if (rc == LOOM_ENOTFOUND) {
        net_reply_err(r, 409, "not_in_phase", "client %d is not in the set of phase %d of round %d: %s", k, phase, round,
                      loom_errmsg());
        goto out;
    }
    if (rc != LOOM_OK) {
        net_reply_err(r, 500, "server_error", "phase %d message: %s", phase, loom_errmsg());
        goto out;
    }
    r->body = malloc(b.len ? b.len : 1);
    if (!r->body) {
        net_reply_err(r, 503, "busy", "out of memory");
        goto out;
    }
    memcpy(r->body, b.data, b.len);
    r->len = b.len;
    r->status = 200;
    r->ctype = "application/octet-stream";
    char sha[65];
    if (net_sha256_hex(b.data, b.len, sha) != LOOM_OK) loom_sha256_hex(b.data, b.len, sha);
    snprintf(r->hdr[0][0], sizeof r->hdr[0][0], "X-Loom-SHA256");
    snprintf(r->hdr[0][1], sizeof r->hdr[0][1], "%s", sha);
    r->nhdr = 1;
    a->down[id][phase] = b.len;
out:
    pthread_mutex_unlock(&s->mu);
    loom_secagg_buf_free(&b);
}

void net_sa_handle(net_server *s, const net_request *q, int k, const char *name, net_response *r) {
    long long round, phase;
    uint64_t epoch;
    if (!s->c.secagg) {
        net_reply_err(r, 409, "not_secure", "this run does not use secure aggregation");
        return;
    }
    if (parse_ll(q->arg_round, 1, 1 << 30, &round) || parse_ll(q->arg_phase, 0, 3, &phase) ||
        parse_hex64(q->arg_epoch, &epoch)) {
        net_reply_err(r, 400, "bad_request", "/v1/secagg needs round=R (>= 1), phase=K (0..3) and epoch=E (16 hex digits)");
        return;
    }
    if (!strcmp(q->method, "POST")) sa_post(s, q, k, name, (int)round, (int)phase, epoch, r);
    else sa_get(s, k, (int)round, (int)phase, epoch, r);
}

/* ------------------------------------------------------------------ the round */

static void sa_abort(net_server *s, int round, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sa_abort(net_server *s, int round, const char *fmt, ...) {
    net_sa *a = s->sa;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&s->mu);
    a->aborted = 1;
    snprintf(a->why, sizeof a->why, "round %d: secure aggregation aborted %s", round, msg);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    loom_log(LOOM_WARN, "%s", a->why);
    net_store_event(s->store, round, "secagg", "aborted %s", msg);
}

/* The stored failure reports of the round (clients that could not train) go to the engine. */
static int submit_failures(net_server *s, int round) {
    net_answer *ans;
    int na;
    int rc = net_store_answers(s->store, round, &ans, &na);
    if (rc != LOOM_OK) return rc;
    for (int i = 0; i < na; i++)
        if (!strcmp(ans[i].kind, "failed")) loom_engine_fail(s->eng, round, ans[i].client, ans[i].reason, ans[i].received_at, NULL);
    free(ans);
    return LOOM_OK;
}

/* The unmasked sum of the survivors (ids with phase 2 sent) to the engine, each survivor described by
 * what it told with its masked input (weight, loss, tokens) and the bytes it sent. */
static int submit_sum(net_server *s, int round, const int *list, int n) {
    net_sa *a = s->sa;
    double *sum = loom_alloc(s->dim * sizeof(double));
    loom_update *members = calloc((size_t)(n ? n : 1), sizeof *members);
    if (!sum || !members) {
        loom_free(sum);
        free(members);
        return loom_error(LOOM_ENOMEM, "out of memory for the secure sum");
    }
    uint64_t total = 0, told = 0;
    uint32_t included = 0;
    int rc = LOOM_OK, m = 0;
    if (loom_secagg_server_result(a->srv, sum, &total, &included, NULL) != LOOM_OK) {
        sa_abort(s, round, "at the unmasking: %s", loom_errmsg());
        goto out;
    }
    for (int id = 0; id < n; id++) {
        if (!(a->sent[id] & (1u << LOOM_SECAGG_MASK))) continue;
        loom_update *u = &members[m++];
        u->run_id = s->run_id;
        u->round = round;
        u->version = (uint64_t)(round - 1);
        u->client = list[id];
        u->examples = a->examples[id];
        u->loss = a->loss[id];
        u->tokens = a->tokens[id];
        u->codec = LOOM_CODEC_F32;
        u->len = s->dim;
        u->wire_bytes = a->up[id][0] + a->up[id][1] + a->up[id][2] + a->up[id][3];
        told += a->examples[id];
    }
    if ((uint32_t)m != included || told != total) { /* the clients' own words against the masked sum */
        sa_abort(s, round, "at the unmasking: the sum holds %u inputs of total weight %" PRIu64 ", the %d clients "
                 "that masked one told a weight of %" PRIu64, included, total, m, told);
        goto out;
    }
    rc = loom_engine_submit_sum(s->eng, round, sum, s->dim, total, members, (size_t)m, net_wall());
    if (rc == LOOM_OK)
        net_store_event(s->store, round, "secagg", "the sum of %d clients' inputs (total weight %" PRIu64 ") unmasked", m,
                        total);
    else { /* refused by the pipeline (a value out of range): the members' rows hold the verdict */
        loom_log(LOOM_WARN, "round %d: the secure sum was refused: %s", round, loom_errmsg());
        rc = LOOM_OK;
    }
out:
    free(members);
    loom_free(sum);
    return rc;
}

int net_sa_round(net_server *s, int round, const int *list, int n) {
    net_sa *a = s->sa;
    loom_secagg_params p;
    /* the parameters loom sim --secagg gives a round of n clients */
    loom_secagg_defaults(&p, (uint32_t)(n > 0 ? n : 0), s->dim);
    p.neighbours = s->c.secagg_neighbours;
    if (n >= 2 && p.neighbours >= (uint32_t)n - 1) p.neighbours = 0; /* as many neighbours as clients: all */
    uint32_t holders = p.neighbours ? p.neighbours + 1 : (uint32_t)n;
    p.threshold = s->c.secagg_threshold ? s->c.secagg_threshold : 2 * holders / 3 + 1;
    if (s->c.secagg_clip > 0) p.clip = s->c.secagg_clip;
    if (s->c.secagg_max_weight > 0) p.max_weight = s->c.secagg_max_weight;
    p.seed = s->ec.seed;
    p.round = (uint64_t)round;
    uint64_t epoch = 0;
    int rc = net_random(&epoch, sizeof epoch);
    if (rc != LOOM_OK) return rc;
    loom_secagg_server *srv = NULL;
    int prc = n < 2 ? loom_error(LOOM_EINVAL, "%d client%s sampled, secure aggregation needs at least 2", n, n == 1 ? "" : "s")
                    : loom_secagg_check(&p);
    if (prc == LOOM_OK) prc = loom_secagg_server_create(&srv, &p);
    pthread_mutex_lock(&s->mu);
    loom_secagg_server_free(a->srv);
    a->srv = srv;
    a->p = p;
    a->round = round;
    a->epoch = epoch;
    a->aborted = 0;
    a->why[0] = 0;
    a->n = n;
    memset(a->count, 0, sizeof a->count);
    memset(a->sent, 0, (size_t)a->cap * sizeof *a->sent);
    memset(a->up, 0, (size_t)a->cap * sizeof *a->up);
    memset(a->down, 0, (size_t)a->cap * sizeof *a->down);
    a->phase = 0;
    a->phase_at = net_wall(); /* not the round's stored opening: a restarted round gets its whole phase 0 */
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (prc != LOOM_OK) sa_abort(s, round, "before phase 0: %s", loom_errmsg());
    else
        net_store_event(s->store, round, "secagg", "%d clients, threshold %u, %s, epoch %016" PRIx64, n, p.threshold,
                        p.neighbours ? "SecAgg+ neighbours" : "complete graph", epoch);
    for (int K = 0; K < SA_PHASES && !a->aborted; K++) {
        double timeout = K == 0 ? fit_timeout(s) : phase_timeout(s);
        pthread_mutex_lock(&s->mu);
        int expected = 0;
        for (;;) {
            expected = K == 0 ? n : a->count[K - 1];
            if (K == 0) /* clients that reported a failure will not advertise */
                for (int id = 0; id < n; id++)
                    if (s->ans[list[id]] == 2 && !(a->sent[id] & 1u)) expected--;
            double now = net_wall();
            if (a->count[K] >= expected || now >= a->phase_at + timeout || net_stopped(s)) break;
            net_wait_for(s, a->phase_at + timeout - now);
        }
        if (net_stopped(s)) {
            pthread_mutex_unlock(&s->mu);
            return loom_error(LOOM_ESTATE, "the server was stopped before the run ended");
        }
        int got = a->count[K];
        int crc = got < (int)p.threshold ? LOOM_ESTATE : loom_secagg_server_close(a->srv, (loom_secagg_phase)K);
        char why[300];
        snprintf(why, sizeof why, "%s", crc == LOOM_OK ? "" : loom_errmsg());
        if (crc == LOOM_OK) {
            a->phase = K + 1;
            a->phase_at = net_wall();
            pthread_cond_broadcast(&s->cv);
        }
        pthread_mutex_unlock(&s->mu);
        if (crc != LOOM_OK) {
            if (got < (int)p.threshold)
                sa_abort(s, round, "in phase %d: only %d of the %u clients needed", K, got, p.threshold);
            else sa_abort(s, round, "in phase %d: %s", K, why);
            break;
        }
        net_store_event(s->store, round, "secagg", "phase %d closed: %d of %d clients", K, got, expected);
    }
    pthread_mutex_lock(&s->mu);
    s->phase = NET_PH_CLOSING; /* answers are late from here on */
    while (s->pending > 0) net_wait_for(s, 0.01);
    pthread_mutex_unlock(&s->mu);
    if ((rc = submit_failures(s, round)) != LOOM_OK) return rc;
    if (!a->aborted && (rc = submit_sum(s, round, list, n)) != LOOM_OK) return rc;
    return LOOM_OK;
}
