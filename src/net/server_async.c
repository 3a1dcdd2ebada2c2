/* The server's asynchronous modes (FedAsync, FedBuff): the same engine calls as the simulator's event
 * loop (include/loom/engine.h), driven by the clients' polls and uploads in real time.
 *
 * A poll of an idle client asks the engine for a task (loom_engine_async_task: at most `concurrency`
 * clients train at once); the task carries a number unique in the run (its "round" on the wire) and
 * the version it trains on, whose snapshot is served as GET /v1/global?version=V while some client
 * holds it. An upload is checked (loom_engine_async_check), made durable, acknowledged and applied
 * (loom_engine_async_submit) in the order uploads arrive: FedAsync's result depends on that order by
 * definition. A client that holds a task past the deadline is released (loom_engine_async_fail). After
 * the last version the server evaluates it as in synchronous rounds and writes global.safetensors.
 * An asynchronous run does not resume after a restart (it is refused with a message). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/core.h"
#include "net/server_impl.h"

int net_async_init(net_server *s) {
    size_t N = (size_t)s->n;
    s->atask = calloc(N, sizeof *s->atask);
    s->aver = calloc(N, sizeof *s->aver);
    s->aat = calloc(N, sizeof *s->aat);
    s->abusy = calloc(N, sizeof *s->abusy);
    s->nablob = 0;
    s->ablob = calloc(N + 1, sizeof *s->ablob);
    if (!s->atask || !s->aver || !s->aat || !s->abusy || !s->ablob)
        return loom_error(LOOM_ENOMEM, "out of memory for %zu clients", N);
    return LOOM_OK;
}

void net_async_free(net_server *s) {
    for (int i = 0; s->ablob && i < s->nablob; i++) {
        loom_free(s->ablob[i]->data);
        free(s->ablob[i]);
    }
    free(s->ablob);
    free(s->atask);
    free(s->aver);
    free(s->aat);
    free(s->abusy);
}

/* The served snapshot of version v (under mu), or NULL. */
static net_blob *find_blob(net_server *s, uint64_t v) {
    for (int i = 0; i < s->nablob; i++)
        if (s->ablob[i]->version == v) return s->ablob[i];
    return NULL;
}

net_blob *net_async_blob(net_server *s, uint64_t v) {
    net_blob *b = find_blob(s, v);
    if (b) b->refs++;
    return b;
}

/* Drops the snapshots no client holds a task on any more (under mu). */
static void prune(net_server *s) {
    for (int i = 0; i < s->nablob;) {
        uint64_t v = s->ablob[i]->version;
        int used = 0;
        for (int k = 0; k < s->n && !used; k++) used = s->atask[k] && s->aver[k] == v;
        if (used) {
            i++;
            continue;
        }
        net_blob *b = s->ablob[i];
        s->ablob[i] = s->ablob[--s->nablob];
        if (--b->refs == 0) {
            loom_free(b->data);
            free(b);
        }
    }
}

int net_async_task(net_server *s, int k, json_t *o) {
    /* under mu: hand out a task when the client holds none */
    if (s->phase != NET_PH_FIT) return 0;
    loom_task t;
    int fresh = 0;
    if (!s->atask[k] && !s->abusy[k] && loom_engine_async_task(s->eng, k, net_wall(), &t) == LOOM_OK) {
        s->atask[k] = ++s->aseq;
        s->aver[k] = t.version;
        s->aat[k] = net_wall();
        fresh = !find_blob(s, t.version);
    }
    if (!s->atask[k]) return 0;
    if (fresh) {
        /* the snapshot's body, built outside the lock: the snapshot stays valid while this client holds
         * its task, and abusy keeps the driver from releasing it (at the deadline or the run's end) */
        s->abusy[k] = 1; /* the driver releases no task while its snapshot is being read */
        pthread_mutex_unlock(&s->mu);
        net_blob *b = NULL;
        int rc = net_make_blob_of(s, t.version, t.global, NULL, &b);
        pthread_mutex_lock(&s->mu);
        s->abusy[k] = 0;
        pthread_cond_broadcast(&s->cv);
        if (rc != LOOM_OK) {
            loom_log(LOOM_ERROR, "cannot serve version %llu: %s", (unsigned long long)t.version, loom_errmsg());
            return 0;
        }
        if (find_blob(s, t.version) || s->nablob > s->n) net_blob_release_locked(b);
        else s->ablob[s->nablob++] = b;
    }
    net_blob *b = find_blob(s, s->aver[k]);
    if (!b) return 0;
    json_object_set_new(o, "type", json_string("fit"));
    json_object_set_new(o, "round", json_integer((json_int_t)s->atask[k]));
    json_object_set_new(o, "version", json_integer((json_int_t)s->aver[k]));
    json_object_set_new(o, "global_sha256", json_string(b->sha256));
    json_object_set_new(o, "global_bytes", json_integer((json_int_t)b->len));
    if (s->ec.deadline > 0)
        json_object_set_new(o, "deadline_s", json_real(fmax(0, s->aat[k] + s->ec.deadline - net_wall())));
    return 1;
}

/* The task's end (under mu): the client is idle again. */
static void release(net_server *s, int k) {
    s->atask[k] = 0;
    prune(s);
    pthread_cond_broadcast(&s->cv);
}

int net_async_answer(net_server *s, int k, int round, net_response *r) {
    /* under mu: the client's upload or failure report for task `round` may go on (0), or the reply */
    if (s->phase != NET_PH_FIT) {
        net_reply_err(r, 410, "stale", "the run accepts no updates now (its versions are made)");
        return -1;
    }
    if (!s->atask[k] || (uint64_t)round != s->atask[k]) {
        net_reply_err(r, 410, "stale", "task %d is not client %d's current task", round, k);
        return -1;
    }
    if (s->abusy[k]) {
        net_reply_err(r, 409, "duplicate", "an answer of client %d to task %d is being stored", k, round);
        return -1;
    }
    s->abusy[k] = 1;
    return 0;
}

void net_async_update(net_server *s, const loom_update *u, int k, const char *name, const char *idem_key,
                      const char *sha, const uint8_t *body, size_t len, net_response *r) {
    pthread_mutex_lock(&s->mu);
    int res = net_async_answer(s, k, u->round, r);
    pthread_mutex_unlock(&s->mu);
    if (res != 0) return;
    double now = net_wall();
    loom_update_verdict v = LOOM_UPDATE_ACCEPTED;
    int rc = loom_engine_async_check(s->eng, u, now, &v);
    int status = 200;
    const char *code = rc == LOOM_OK ? NULL : net_verdict_code(v, &status);
    char why[512];
    snprintf(why, sizeof why, "%s", rc == LOOM_OK ? "" : loom_errmsg());
    if (rc != LOOM_OK && status != 422 && v != LOOM_UPDATE_STALE) {
        pthread_mutex_lock(&s->mu);
        s->abusy[k] = 0;
        pthread_mutex_unlock(&s->mu);
        net_reply_err(r, status, code, "%s", why);
        return;
    }
    /* accepted, or refused on its content or staleness (the task is used up either way): durable first */
    net_answer a;
    memset(&a, 0, sizeof a);
    a.round = u->round;
    a.client = k;
    snprintf(a.kind, sizeof a.kind, "%s", rc == LOOM_OK ? "update" : "rejected");
    snprintf(a.idem_key, sizeof a.idem_key, "%s", idem_key);
    memcpy(a.sha256, sha, 65);
    a.examples = u->examples;
    a.loss = u->loss;
    a.tokens = u->tokens;
    snprintf(a.file, sizeof a.file, "t%d-c%d.upd", u->round, k);
    snprintf(a.reason, sizeof a.reason, "%s", rc == LOOM_OK ? "" : loom_update_verdict_str(v));
    a.received_at = now;
    int wrc = net_write_durable(s->upd_dir, a.file, body, len);
    if (wrc == LOOM_OK) wrc = net_store_put_answer(s->store, &a);
    if (wrc != LOOM_OK) {
        pthread_mutex_lock(&s->mu);
        s->abusy[k] = 0;
        pthread_mutex_unlock(&s->mu);
        loom_log(LOOM_ERROR, "task %d: cannot store the update of client %d: %s", u->round, k, loom_errmsg());
        net_reply_err(r, 503, "busy", "the update could not be stored; retry it");
        return;
    }
    int made = 0;
    loom_update_verdict v2 = LOOM_UPDATE_ACCEPTED;
    int src = loom_engine_async_submit(s->eng, u, now, &v2, &made); /* refusals are in the version's rows */
    if (src != LOOM_OK && v2 == LOOM_UPDATE_ACCEPTED)
        loom_log(LOOM_ERROR, "task %d: the server strategy failed: %s", u->round, loom_errmsg());
    pthread_mutex_lock(&s->mu);
    s->abusy[k] = 0;
    if (made) s->amade++;
    release(s, k);
    pthread_mutex_unlock(&s->mu);
    if (src == LOOM_OK) {
        net_store_event(s->store, u->round, "update", "client %d (%s): version %llu, %llu examples, loss %.6g, %zu bytes%s",
                        k, name, (unsigned long long)u->version, (unsigned long long)u->examples, u->loss, len,
                        made ? ", new version" : "");
        net_reply_accepted(r, u->round, k, 0);
    } else {
        snprintf(why, sizeof why, "%s", loom_errmsg());
        net_store_event(s->store, u->round, "rejected", "client %d (%s): %s", k, name, why);
        int st2 = 422;
        const char *c2 = net_verdict_code(v2, &st2);
        if (st2 != 422) net_reply_err(r, st2, c2, "%s", why); /* e.g. late: the last version was made meanwhile */
        else net_reply_rejected(r, loom_update_verdict_str(v2), why);
    }
}

void net_async_fail(net_server *s, int k, const char *reason) {
    /* under mu, after net_async_answer */
    loom_engine_async_fail(s->eng, k, reason, net_wall());
    s->abusy[k] = 0;
    release(s, k);
}

/* Ends the versions made so far (their metrics rows), under mu. */
static void end_versions(net_server *s, double *t0) {
    while (s->aended < s->amade) {
        s->aended++;
        loom_round_metrics m;
        double now = net_wall();
        if (loom_engine_async_end_version(s->eng, now - *t0, &m) == LOOM_OK) {
            net_store_event(s->store, (int)m.version, "version", "version %llu: %d accepted, staleness mean %.2f max %.0f",
                            (unsigned long long)m.version, m.accepted, m.staleness_mean, m.staleness_max);
            if (s->c.on_round) s->c.on_round(s->c.ud, &m);
        }
        *t0 = now;
    }
    fflush(s->metrics);
}

int net_async_drive(net_server *s, float *global) {
    int started = 0;
    net_store_started(s->store, &started);
    if (started)
        return loom_error(LOOM_EUNSUPPORTED, "%s holds an asynchronous run that was interrupted: asynchronous runs "
                                             "do not resume; start it in a new --state directory",
                          s->c.state_dir);
    double opened;
    net_store_open_round(s->store, 1, net_wall(), NULL, 0, &opened); /* marks the run as started */
    int need = s->c.min_clients > 0 ? LOOM_MIN(s->c.min_clients, s->n) : s->n;
    net_store_event(s->store, 0, "waiting", "waiting for %d of %d clients to say hello", need, s->n);
    pthread_mutex_lock(&s->mu);
    while (s->n_hello < need && !net_stopped(s)) net_wait_for(s, 0.1);
    s->phase = NET_PH_FIT;
    s->round = 1;
    pthread_cond_broadcast(&s->cv);
    net_store_event(s->store, 0, "open", "%s: %d versions to make", loom_engine_mode_name(loom_engine_get_mode(s->eng)),
                    s->ec.rounds);
    double t0 = net_wall();
    while ((int)loom_engine_version(s->eng) < s->ec.rounds && !net_stopped(s)) {
        end_versions(s, &t0);
        /* a client holding its task past the deadline has vanished: its place goes to another */
        if (s->ec.deadline > 0)
            for (int k = 0; k < s->n; k++)
                if (s->atask[k] && !s->abusy[k] && net_wall() > s->aat[k] + s->ec.deadline) {
                    net_store_event(s->store, (int)s->atask[k], "late", "client %d held task %llu past the %gs deadline",
                                    k, (unsigned long long)s->atask[k], s->ec.deadline);
                    net_async_fail(s, k, "no update before the deadline");
                }
        net_wait_for(s, 0.1);
    }
    s->phase = NET_PH_CLOSING;
    while (1) { /* uploads being stored finish */
        int busy = 0;
        for (int k = 0; k < s->n; k++) busy |= s->abusy[k];
        if (!busy) break;
        net_wait_for(s, 0.01);
    }
    pthread_mutex_unlock(&s->mu);
    if (net_stopped(s)) return loom_error(LOOM_ESTATE, "the server was stopped before the run ended");
    /* the last version: release the clients still training, evaluate it, write it */
    pthread_mutex_lock(&s->mu);
    for (int k = 0; k < s->n; k++)
        if (s->atask[k]) net_async_fail(s, k, "the run's versions are made");
    pthread_mutex_unlock(&s->mu);
    int rc = net_publish(s, (uint64_t)s->ec.rounds);
    if (rc != LOOM_OK) return rc;
    const int *elist;
    int ne = 0;
    if (loom_engine_eval_plan(s->eng, &elist, &ne) == LOOM_OK && ne > 0) {
        pthread_mutex_lock(&s->mu);
        for (int i = 0; i < s->n; i++) s->epos[i] = -1, s->ereported[i] = 0;
        for (int i = 0; i < ne; i++) s->epos[elist[i]] = i;
        s->ne = ne;
        s->n_reported = 0;
        s->round = s->ec.rounds;
        s->phase = NET_PH_EVAL;
        pthread_cond_broadcast(&s->cv);
        double te = net_wall();
        while (s->n_reported < s->ne && !net_stopped(s) && net_wall() < te + s->c.eval_timeout_s)
            net_wait_for(s, te + s->c.eval_timeout_s - net_wall());
        s->phase = NET_PH_WAIT;
        pthread_mutex_unlock(&s->mu);
        net_store_event(s->store, s->ec.rounds, "evaluated", "%d of %d clients reported", s->n_reported, ne);
    }
    pthread_mutex_lock(&s->mu);
    end_versions(s, &t0);
    pthread_mutex_unlock(&s->mu);
    return LOOM_OK;
}
