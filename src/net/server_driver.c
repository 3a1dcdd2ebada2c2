/* The server's round driver: the run's fingerprint, the engine, checkpoints and the round loop
 * (open, collect durable answers, submit them in the sampled order, close, evaluate, end, checkpoint).
 * The same loop as the simulator's (src/sim/sim.c), with the wall clock and the network's clients. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/safetensors.h"
#include "loom/unlearn.h"
#include "net/server_impl.h"

int net_stopped(const net_server *s) { return s->c.stop && __atomic_load_n(s->c.stop, __ATOMIC_RELAXED); }
#define stopped net_stopped

/* ------------------------------------------------------------------ checkpoints */

/* The checkpoint: the global vector under the manifest's names, the strategy's state as
 * strategy.NAME, and the metadata a restart checks (the simulator's layout; the clients keep their
 * own state). metrics_bytes is metrics.jsonl's length when it was written. */
static int save_checkpoint(net_server *s, int next_round, const char *file, int final) {
    loom_st_writer *w;
    int rc = loom_st_writer_create(&w);
    if (rc != LOOM_OK) return rc;
    rc = loom_engine_checkpoint_add(s->eng, w, s->manifest, next_round, final);
    char buf[64];
    snprintf(buf, sizeof buf, "%016llx", (unsigned long long)s->run_id);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "run_id", buf);
    snprintf(buf, sizeof buf, "%zu", s->metrics_bytes);
    if (rc == LOOM_OK && !final) rc = loom_st_writer_meta(w, "metrics_bytes", buf);
    void *data = NULL;
    size_t len = 0;
    if (rc == LOOM_OK) rc = loom_st_writer_serialize(w, &data, &len);
    if (rc == LOOM_OK) rc = net_write_durable(s->c.state_dir, file, data, len);
    loom_free(data);
    loom_st_writer_free(w);
    return rc;
}

static int load_checkpoint(net_server *s, const char *path) {
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    char want[32];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)s->run_id);
    const char *v = loom_st_meta(f, "run_id");
    if (!v || strcmp(v, want)) {
        loom_st_close(f);
        return loom_error(LOOM_EINVAL, "%s: run_id is %s, this run is %s: a restart needs the same run", path,
                          v ? v : "missing", want);
    }
    v = loom_st_meta(f, "metrics_bytes");
    s->metrics_bytes = v ? (size_t)strtoull(v, NULL, 10) : 0;
    int nr = 0;
    rc = loom_engine_checkpoint_load(s->eng, f, s->manifest, path, &nr);
    loom_st_close(f);
    if (rc == LOOM_OK) s->next_round = nr;
    return rc;
}

/* ------------------------------------------------------------------ the metrics sink */

/* The metrics rows (loom_metrics_jsonl_sink), and each accepted client with its weight for the round's
 * membership (net_store_put_members after the round ends). */
static void member_round(void *ud, const loom_round_metrics *m, const int *clients, int n) {
    net_server *s = ud;
    s->mem_n = 0;
    if (s->js_sink.round) s->js_sink.round(s->js_sink.ud, m, clients, n);
}

static void member_client(void *ud, const loom_client_row *r) {
    net_server *s = ud;
    if (r->verdict == LOOM_UPDATE_ACCEPTED && s->mem_n < s->n) {
        s->mem_c[s->mem_n] = r->client;
        s->mem_w[s->mem_n++] = r->examples;
    }
    if (s->js_sink.client) s->js_sink.client(s->js_sink.ud, r);
}

/* ------------------------------------------------------------------ create / free */

void net_server_free(net_server *s) {
    if (!s) return;
    if (s->metrics) fclose(s->metrics);
    loom_engine_free(s->eng);
    loom_dash_free(s->dash);
    net_store_close(s->store);
    for (int i = 0; s->names && i < s->n; i++) free(s->names[i]);
    free(s->names);
    free(s->n_test);
    free(s->hello);
    free(s->last_seen);
    free(s->seen_done);
    free(s->spos);
    free(s->ans);
    free(s->epos);
    free(s->ereported);
    free(s->mem_c);
    free(s->mem_w);
    free(s->removed);
    net_async_free(s);
    net_sa_free(s);
    free(s->ids);
    free(s->run_text);
    free(s->model_text);
    if (s->cur) {
        loom_free(s->cur->data);
        free(s->cur);
    }
    if (s->prev) {
        loom_free(s->prev->data);
        free(s->prev);
    }
    loom_tvec_free(s->own_manifest);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

/* A JSON text made compact (NULL: fallback). */
static int compact_json(const char *text, const char *fallback, const char *what, char **out) {
    if (!text) {
        *out = strdup(fallback);
        return *out ? LOOM_OK : loom_error(LOOM_ENOMEM, "out of memory");
    }
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return loom_error(LOOM_EINVAL, "%s is not a JSON object%s%s", what, j ? "" : ": ", j ? "" : e.text);
    }
    *out = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return *out ? LOOM_OK : loom_error(LOOM_ENOMEM, "out of memory");
}

/* The stored run, or a new one from the registered clients; a restart with another configuration is
 * refused naming what differs. */
static int resolve_run(net_server *s) {
    net_run run;
    int found = 0;
    int rc = net_store_get_run(s->store, &run, &found);
    if (rc != LOOM_OK) return rc;
    const char *strategy = s->ec.pipe.strategy ? s->ec.pipe.strategy : "fedavg";
    if (found) {
        if (run.dim != s->dim)
            rc = loom_error(LOOM_EINVAL, "%s holds a run with a vector of %zu values, this configuration has %zu",
                            s->c.state_dir, run.dim, s->dim);
        else if (run.seed != s->ec.seed)
            rc = loom_error(LOOM_EINVAL, "%s holds a run with seed %llu, this configuration has seed %llu",
                            s->c.state_dir, (unsigned long long)run.seed, (unsigned long long)s->ec.seed);
        else if (strcmp(run.strategy, strategy))
            rc = loom_error(LOOM_EINVAL, "%s holds a run with strategy %s, this configuration has %s", s->c.state_dir,
                            run.strategy, strategy);
        else if (run.rounds != s->ec.rounds)
            rc = loom_error(LOOM_EINVAL, "%s holds a run of %d rounds, this configuration has %d", s->c.state_dir,
                            run.rounds, s->ec.rounds);
        if (rc != LOOM_OK) {
            net_run_clear(&run);
            return rc;
        }
    } else {
        net_identity *ids;
        int nids;
        if ((rc = net_store_identities(s->store, &ids, &nids)) != LOOM_OK) return rc;
        loom_strbuf b = {0};
        int cnt = 0;
        for (int i = 0; i < nids && rc == LOOM_OK; i++) {
            if (ids[i].admin || ids[i].viewer || ids[i].revoked) continue;
            if (cnt++) rc = loom_strbuf_add(&b, "\n", 1);
            if (rc == LOOM_OK) rc = loom_strbuf_add(&b, ids[i].name, strlen(ids[i].name));
        }
        free(ids);
        if (rc == LOOM_OK && cnt == 0)
            rc = loom_error(LOOM_EINVAL, "%s has no registered clients: add them first (loom server add-client)",
                            s->c.state_dir);
        run.clients = b.s;
        do {
            if (rc == LOOM_OK) rc = net_random(&run.run_id, sizeof run.run_id);
        } while (rc == LOOM_OK && run.run_id == 0);
        run.dim = s->dim;
        run.seed = s->ec.seed;
        snprintf(run.strategy, sizeof run.strategy, "%s", strategy);
        run.rounds = s->ec.rounds;
        if (rc == LOOM_OK) rc = net_store_put_run(s->store, &run);
        if (rc != LOOM_OK) {
            net_run_clear(&run);
            return rc;
        }
        net_store_event(s->store, 0, "run", "run %016llx created: %d clients, %d rounds, strategy %s, dim %zu",
                        (unsigned long long)run.run_id, cnt, run.rounds, strategy, run.dim);
    }
    s->run_id = run.run_id;
    int n = 0;
    for (char *p = run.clients; p && *p; n++) {
        char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : p + strlen(p);
    }
    s->names = calloc((size_t)(n ? n : 1), sizeof *s->names);
    if (!s->names) rc = loom_error(LOOM_ENOMEM, "out of memory");
    char *p = run.clients;
    for (int i = 0; rc == LOOM_OK && i < n; i++) {
        char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        s->names[i] = strndup(p, len);
        if (!s->names[i]) rc = loom_error(LOOM_ENOMEM, "out of memory");
        s->n = i + 1;
        p += len + (nl ? 1 : 0);
    }
    net_run_clear(&run);
    return rc;
}

int net_server_create(net_server **out, const loom_server_config *c) {
    *out = NULL;
    if (!c->state_dir) return loom_error(LOOM_EINVAL, "the server needs a state directory (--state)");
    if (c->engine.dim == 0 || !c->engine.init) return loom_error(LOOM_EINVAL, "the server needs the run's initial vector");
    if (c->poll_ms < 1 || c->threads < 1 || c->eval_timeout_s < 0 || c->checkpoint_every < 1 ||
        !(c->done_grace_s >= 0) || c->min_clients < 0)
        return loom_error(LOOM_EINVAL, "server: poll_ms, threads and checkpoint_every must be >= 1, eval_timeout_s, "
                                       "min_clients and done_grace_s >= 0");
    net_server *s = calloc(1, sizeof *s);
    if (!s) return loom_error(LOOM_ENOMEM, "out of memory");
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->c = *c;
    s->ec = c->engine;
    s->dim = c->engine.dim;
    int rc = LOOM_OK;
    s->manifest = c->manifest;
    if (!s->manifest) {
        int64_t shape[1] = {(int64_t)s->dim};
        if ((rc = loom_tvec_create(&s->own_manifest)) != LOOM_OK ||
            (rc = loom_tvec_add(s->own_manifest, "vector", 1, shape, LOOM_ROLE_SHARED)) != LOOM_OK)
            goto fail;
        s->manifest = s->own_manifest;
    }
    if (loom_tvec_dim(s->manifest) != s->dim) {
        rc = loom_error(LOOM_EINVAL, "the vector's manifest describes %zu values, the vector has %zu",
                        loom_tvec_dim(s->manifest), s->dim);
        goto fail;
    }
    if ((rc = compact_json(c->run_json, "{}", "the run configuration", &s->run_text)) != LOOM_OK ||
        (rc = compact_json(c->model_config_json, "null", "the model configuration", &s->model_text)) != LOOM_OK)
        goto fail;
    if ((rc = net_store_open(&s->store, c->state_dir)) != LOOM_OK) goto fail;
    snprintf(s->upd_dir, sizeof s->upd_dir, "%s/updates", c->state_dir);
    if (mkdir(s->upd_dir, 0700) != 0 && errno != EEXIST) {
        rc = loom_error(LOOM_EIO, "cannot create %s: %s", s->upd_dir, strerror(errno));
        goto fail;
    }
    if ((rc = resolve_run(s)) != LOOM_OK) goto fail;
    size_t N = (size_t)s->n;
    s->n_test = malloc(N * sizeof *s->n_test);
    s->hello = calloc(N, sizeof *s->hello);
    s->last_seen = calloc(N, sizeof *s->last_seen);
    s->seen_done = calloc(N, sizeof *s->seen_done);
    s->spos = malloc(N * sizeof *s->spos);
    s->ans = calloc(N, sizeof *s->ans);
    s->epos = malloc(N * sizeof *s->epos);
    s->ereported = calloc(N, sizeof *s->ereported);
    if (!s->n_test || !s->hello || !s->last_seen || !s->seen_done || !s->spos || !s->ans || !s->epos || !s->ereported) {
        rc = loom_error(LOOM_ENOMEM, "out of memory for %zu clients", N);
        goto fail;
    }
    s->async = c->engine.mode != LOOM_ENGINE_SYNC;
    if (s->async && (rc = net_async_init(s)) != LOOM_OK) goto fail;
    for (size_t i = 0; i < N; i++) {
        s->n_test[i] = 1; /* every client is asked; one without test data reports no tokens */
        s->spos[i] = s->epos[i] = -1;
    }
    s->ec.n_clients = s->n;
    s->ec.run_id = s->run_id;
    s->ec.n_test = c->no_eval ? NULL : s->n_test;
    s->js = (loom_metrics_jsonl){NULL, (const char *const *)s->names, 1};
    /* unlearning: the metrics rows, and the accepted clients of each round (table members); clients
     * removed by loom unlearn leave the population (sampling unchanged, never asked to evaluate) */
    s->js_sink = loom_metrics_jsonl_sink(&s->js);
    s->ec.sink = (loom_metrics_sink){member_round, member_client, s};
    s->mem_c = malloc(N * sizeof *s->mem_c);
    s->mem_w = malloc(N * sizeof *s->mem_w);
    s->removed = calloc(N, 1);
    if (!s->mem_c || !s->mem_w || !s->removed) {
        rc = loom_error(LOOM_ENOMEM, "out of memory for %zu clients", N);
        goto fail;
    }
    if ((rc = net_store_removed(s->store, s->removed, s->n)) != LOOM_OK) goto fail;
    for (int i = 0; i < s->n; i++)
        if (s->removed[i]) {
            s->n_removed++;
            s->n_test[i] = 0;
        }
    if (s->n_removed) s->ec.excluded = s->removed;
    if (c->keep_checkpoints > 0 && (rc = loom_unlearn_mkdirs(c->state_dir, 0)) != LOOM_OK) goto fail;
    /* the dashboard's board gets the same rows (include/loom/dash.h) */
    if ((rc = loom_dash_create(&s->dash)) != LOOM_OK ||
        (rc = loom_dash_set_clients(s->dash, s->n, (const char *const *)s->names)) != LOOM_OK ||
        (rc = loom_dash_config_json(s->dash, s->run_text)) != LOOM_OK)
        goto fail;
    loom_dash_config(s->dash, "mode", loom_engine_mode_name(s->ec.mode));
    loom_dash_progress(s->dash, 0, s->ec.rounds, "waiting");
    s->ec.sink = loom_dash_sink(&s->dash_tee, s->dash, s->ec.sink, (const char *const *)s->names);
    if ((rc = loom_engine_create(&s->eng, &s->ec)) != LOOM_OK) goto fail;
    s->uses_control = loom_strategy_uses_control(loom_engine_strategy(s->eng));
    if (loom_engine_wants_reference(s->eng) && (!c->reference || c->mode != LOOM_NET_SYNC)) {
        rc = loom_error(LOOM_EINVAL, !c->reference ? "the aggregator needs the server's own update each round, and "
                                                     "the server has no root data to train on"
                                                   : "the aggregator needs the server's own update each round: "
                                                     "synchronous rounds only");
        goto fail;
    }
    if ((rc = net_sa_init(s)) != LOOM_OK) goto fail;
    if (c->max_upload) s->max_upload = c->max_upload;
    else {
        loom_update u = {.len = s->dim, .control = s->uses_control ? c->engine.init : NULL};
        s->max_upload = 2 * loom_update_encoded_size(&u, NULL) + ((size_t)1 << 20);
    }
    char path[4300];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->state_dir);
    struct stat st;
    if (stat(path, &st) == 0) {
        if ((rc = load_checkpoint(s, path)) != LOOM_OK) goto fail;
        if (s->next_round < s->ec.rounds)
            net_store_event(s->store, 0, "resume", "resuming at round %d of %d", s->next_round + 1, s->ec.rounds);
        else net_store_event(s->store, 0, "resume", "the run's %d rounds are already done", s->ec.rounds);
    }
    /* metrics.jsonl as it was at the checkpoint: rows of a round redone after a crash are written once */
    snprintf(path, sizeof path, "%s/metrics.jsonl", c->state_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)s->metrics_bytes) != 0 || !(s->metrics = fdopen(fd, "r+")) ||
        fseek(s->metrics, 0, SEEK_END) != 0) {
        rc = loom_error(LOOM_EIO, "cannot write %s: %s", path, strerror(errno));
        if (fd >= 0 && !s->metrics) close(fd);
        goto fail;
    }
    s->js.f = s->metrics;
    if (s->metrics_bytes > 0 && loom_dash_load_jsonl(s->dash, path, 0) != LOOM_OK) /* the dashboard only */
        loom_log(LOOM_WARN, "the dashboard shows no earlier rounds: %s", loom_errmsg());
    s->round = s->next_round;
    if ((rc = net_publish(s, (uint64_t)s->next_round)) != LOOM_OK) goto fail;
    *out = s;
    return LOOM_OK;
fail:
    net_server_free(s);
    return rc;
}

/* ------------------------------------------------------------------ the round loop */

/* Waits on the condition for at most dt seconds (the caller holds mu). */
void net_wait_for(net_server *s, double dt) {
    if (dt > 0.1) dt = 0.1; /* the stop flag is looked at every 100 ms */
    if (dt < 0.001) dt = 0.001;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    long ns = ts.tv_nsec + (long)(dt * 1e9);
    ts.tv_sec += ns / 1000000000L;
    ts.tv_nsec = ns % 1000000000L;
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
}

/* The server's own update of round R (FLTrust) into the open round. Deterministic, so a restarted
 * server hands the aggregator the same reference. */
static int server_reference(net_server *s, int R) {
    float *ref = loom_alloc(s->dim * sizeof *ref);
    if (!ref) return loom_error(LOOM_ENOMEM, "out of memory");
    int rc = s->c.reference(s->c.reference_ud, R, loom_engine_global(s->eng), ref, s->dim);
    if (rc == LOOM_OK) rc = loom_engine_set_reference(s->eng, R, ref, s->dim);
    else rc = loom_error_context(rc, "round %d: the server's own update", R);
    loom_free(ref);
    if (rc == LOOM_OK) net_store_event(s->store, R, "reference", "the server's own update on its root data is in");
    return rc;
}

/* Submits the round's stored answers to the engine in the sampled order, each read back from its file. */
static int submit_stored(net_server *s, int round, const int *list, int n) {
    net_answer *a;
    int na;
    int rc = net_store_answers(s->store, round, &a, &na);
    if (rc != LOOM_OK) return rc;
    float *values = loom_alloc(s->dim * sizeof(float));
    float *control = s->uses_control ? loom_alloc(s->dim * sizeof(float)) : NULL;
    if (!values || (s->uses_control && !control)) rc = loom_error(LOOM_ENOMEM, "out of memory");
    int j = 0;
    for (int i = 0; i < n && rc == LOOM_OK; i++) {
        while (j < na && a[j].client < list[i]) j++;
        if (j >= na || a[j].client != list[i]) continue;
        const net_answer *x = &a[j];
        if (!strcmp(x->kind, "failed")) {
            loom_engine_fail(s->eng, round, x->client, x->reason, x->received_at, NULL);
            continue;
        }
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", s->upd_dir, x->file);
        char *buf = NULL;
        size_t len = 0;
        loom_update u;
        int r = loom_read_file(path, &buf, &len);
        if (r == LOOM_OK) r = loom_update_decode((const uint8_t *)buf, len, s->dim, &u, values, control);
        if (r == LOOM_OK) loom_engine_submit(s->eng, &u, x->received_at, NULL); /* a refusal is in its row */
        else {
            loom_log(LOOM_ERROR, "round %d: the stored update of client %d is unreadable: %s", round, x->client,
                     loom_errmsg());
            loom_engine_fail(s->eng, round, x->client, "stored update unreadable", x->received_at, NULL);
        }
        free(buf);
    }
    loom_free(values);
    loom_free(control);
    free(a);
    return rc;
}

int net_server_drive(net_server *s, float *global) {
    int rc = LOOM_OK;
    if (s->async) {
        if ((rc = net_async_drive(s, global)) != LOOM_OK) return rc;
        goto finish;
    }
    int started = 0;
    net_store_started(s->store, &started);
    int need = s->c.min_clients > 0 ? LOOM_MIN(s->c.min_clients, s->n - s->n_removed) : s->n - s->n_removed;
    if (!started && s->next_round < s->ec.rounds) {
        net_store_event(s->store, 0, "waiting", "waiting for %d of %d clients to say hello", need, s->n);
        pthread_mutex_lock(&s->mu);
        while (s->n_hello < need && !stopped(s)) net_wait_for(s, 0.1);
        pthread_mutex_unlock(&s->mu);
    }
    for (int r0 = s->next_round; r0 < s->ec.rounds && rc == LOOM_OK; r0++) {
        if (stopped(s)) return loom_error(LOOM_ESTATE, "the server was stopped before the run ended");
        int R = r0 + 1;
        double t0 = net_wall(), opened_at;
        if (loom_unlearn_keeps_start(R, s->c.keep_checkpoints)) { /* kept for loom unlearn */
            char file[64];
            snprintf(file, sizeof file, "unlearn/start_%06d.safetensors", R);
            if ((rc = save_checkpoint(s, r0, file, 0)) != LOOM_OK) return rc;
        }
        int *sampled = malloc((size_t)s->n * sizeof *sampled), n = 0;
        if (!sampled) return loom_error(LOOM_ENOMEM, "out of memory");
        rc = loom_engine_sample(s->n, s->ec.sample, s->ec.sample_frac, s->ec.seed, r0, sampled, &n);
        if (rc == LOOM_OK) rc = net_store_open_round(s->store, R, t0, sampled, n, &opened_at);
        free(sampled);
        const int *list;
        if (rc == LOOM_OK) rc = loom_engine_open_round(s->eng, opened_at, &list, &n);
        if (rc == LOOM_OK && loom_engine_wants_reference(s->eng)) rc = server_reference(s, R);
        net_answer *a = NULL;
        int na = 0;
        if (rc == LOOM_OK) rc = net_store_answers(s->store, R, &a, &na);
        if (rc != LOOM_OK) return rc;
        pthread_mutex_lock(&s->mu);
        for (int i = 0; i < s->n; i++) {
            s->spos[i] = s->epos[i] = -1;
            s->ans[i] = s->ereported[i] = 0;
        }
        for (int i = 0; i < n; i++) s->spos[list[i]] = i;
        s->n_sampled = n;
        s->n_answered = s->n_updates = s->n_reported = s->ne = 0;
        for (int i = 0; i < na; i++) { /* a restart: what was acknowledged counts as answered */
            int k = a[i].client;
            if (k < 0 || k >= s->n || s->spos[k] < 0) continue;
            s->ans[k] = 2;
            s->n_answered++;
            if (!strcmp(a[i].kind, "update")) s->n_updates++;
        }
        s->round = R;
        s->opened_at = opened_at;
        s->phase = NET_PH_FIT;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        free(a);
        net_store_event(s->store, R, "open", "%d clients sampled, %d answers already stored%s", n, na,
                        s->ec.deadline > 0 ? "" : ", no deadline");
        if (s->sa) { /* secure aggregation: the four phases instead of uploads (server_secagg.c) */
            if ((rc = net_sa_round(s, R, list, n)) != LOOM_OK) return rc;
            pthread_mutex_lock(&s->mu);
            int answered = s->n_answered;
            pthread_mutex_unlock(&s->mu);
            if ((rc = loom_engine_close_round(s->eng, net_wall())) != LOOM_OK) return rc;
            net_store_event(s->store, R, "close", "%d of %d sampled clients reported a failure", answered, n);
            goto closed;
        }
        /* collect: every sampled client answered, the quorum of updates, or the deadline */
        pthread_mutex_lock(&s->mu);
        for (;;) {
            double now = net_wall();
            if (s->n_answered >= s->n_sampled || (s->ec.quorum > 0 && s->n_updates >= s->ec.quorum)) break;
            if (s->ec.deadline > 0 && now >= s->opened_at + s->ec.deadline) break;
            if (stopped(s)) break;
            net_wait_for(s, s->ec.deadline > 0 ? s->opened_at + s->ec.deadline - now : 0.1);
        }
        s->phase = NET_PH_CLOSING; /* new answers are late from here on */
        while (s->pending > 0) net_wait_for(s, 0.01);
        int answered = s->n_answered;
        pthread_mutex_unlock(&s->mu);
        if (stopped(s)) return loom_error(LOOM_ESTATE, "the server was stopped before the run ended");
        if ((rc = submit_stored(s, R, list, n)) != LOOM_OK) return rc;
        if ((rc = loom_engine_close_round(s->eng, net_wall())) != LOOM_OK) return rc;
        net_store_event(s->store, R, "close", "%d of %d sampled clients answered", answered, n);
    closed:
        if ((rc = net_publish(s, (uint64_t)R)) != LOOM_OK) return rc;
        const int *elist;
        int ne = 0;
        loom_engine_eval_plan(s->eng, &elist, &ne);
        if (ne > 0) {
            int *ec = NULL, nev = 0;
            loom_eval_result *er = NULL;
            if ((rc = net_store_evals(s->store, R, &ec, &er, &nev)) != LOOM_OK) return rc;
            pthread_mutex_lock(&s->mu);
            for (int i = 0; i < ne; i++) s->epos[elist[i]] = i;
            s->ne = ne;
            for (int i = 0; i < nev; i++) {
                int k = ec[i];
                if (k < 0 || k >= s->n || s->epos[k] < 0 || s->ereported[k]) continue;
                if (loom_engine_eval_submit(s->eng, k, &er[i]) == LOOM_OK) {
                    s->ereported[k] = 1;
                    s->n_reported++;
                }
            }
            s->phase = NET_PH_EVAL;
            pthread_cond_broadcast(&s->cv);
            double te = net_wall();
            while (s->n_reported < s->ne && !stopped(s)) {
                double now = net_wall();
                if (now >= te + s->c.eval_timeout_s) break;
                net_wait_for(s, te + s->c.eval_timeout_s - now);
            }
            int reported = s->n_reported;
            s->phase = NET_PH_WAIT;
            pthread_mutex_unlock(&s->mu);
            free(ec);
            free(er);
            if (stopped(s)) return loom_error(LOOM_ESTATE, "the server was stopped before the run ended");
            net_store_event(s->store, R, "evaluated", "%d of %d clients reported", reported, ne);
        } else {
            pthread_mutex_lock(&s->mu);
            s->phase = NET_PH_WAIT;
            pthread_mutex_unlock(&s->mu);
        }
        loom_round_metrics m;
        if ((rc = loom_engine_end_round(s->eng, net_wall() - t0, &m)) != LOOM_OK) return rc;
        if ((rc = net_store_put_members(s->store, R, s->mem_c, s->mem_w, s->mem_n)) != LOOM_OK) return rc;
        if (fflush(s->metrics) != 0 || fsync(fileno(s->metrics)) != 0)
            return loom_error(LOOM_EIO, "cannot write %s/metrics.jsonl: %s", s->c.state_dir, strerror(errno));
        long pos = ftell(s->metrics);
        s->metrics_bytes = pos > 0 ? (size_t)pos : 0;
        int last = R == s->ec.rounds;
        if (R % s->c.checkpoint_every == 0 || last)
            if ((rc = save_checkpoint(s, R, "checkpoint.safetensors", 0)) != LOOM_OK) return rc;
        net_store_round_done(s->store, R);
        if (s->c.on_round) s->c.on_round(s->c.ud, &m);
        net_store_event(s->store, R, "done", "%d accepted, train loss %.6g%s", m.accepted, m.train_loss,
                        m.aggregated ? "" : ", global model unchanged");
    }
finish:
    if ((rc = save_checkpoint(s, s->ec.rounds, "global.safetensors", 1)) != LOOM_OK) return rc;
    memcpy(global, loom_engine_global(s->eng), s->dim * sizeof(float));
    /* the run is over: tasks answer "done" until every client saw it, or the grace period passed */
    pthread_mutex_lock(&s->mu);
    s->phase = NET_PH_DONE;
    s->round = s->ec.rounds;
    pthread_cond_broadcast(&s->cv);
    double t = net_wall();
    for (;;) {
        if (s->n_seen_done >= s->n - s->n_removed || stopped(s) || net_wall() >= t + s->c.done_grace_s) break;
        net_wait_for(s, t + s->c.done_grace_s - net_wall());
    }
    while (s->c.serve_wait && !stopped(s)) net_wait_for(s, 0.25); /* until Ctrl-C / SIGTERM */
    /* a "done" is counted when it is answered, and sent after: let the answers in flight go out (at most
     * 2 s) before the daemon stops, or a client would wait for a server that is gone */
    for (int i = 0; i < 200 && __atomic_load_n(&s->in_flight, __ATOMIC_SEQ_CST) > 0; i++) net_wait_for(s, 0.01);
    pthread_mutex_unlock(&s->mu);
    net_store_event(s->store, 0, "finished", "the run's %d rounds are done; %s/global.safetensors written", s->ec.rounds,
                    s->c.state_dir);
    return LOOM_OK;
}
