/* The federation server's state and request handling (docs/protocol.md): identities, the task
 * hand-out, the global model download, durable uploads, evaluation reports and the status page. The
 * round driver that moves the engine through the rounds is in server_driver.c; the HTTPS daemon in
 * server_http.c. Every handler runs on one of the daemon's threads under the server mutex, except
 * for the slow parts of an upload (decode, check, file write, fsync, commit), which run outside it
 * while the client's slot is marked pending. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loom/core.h"
#include "net/server_impl.h"

double net_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ names, tokens, identities */

int loom_net_check_name(const char *name) {
    if (!name || !*name) return loom_error(LOOM_EINVAL, "client name is empty");
    size_t n = strlen(name);
    if (n > 64) return loom_error(LOOM_EINVAL, "client name is %zu characters long, more than 64", n);
    if (name[0] == '.' || name[0] == '-')
        return loom_error(LOOM_EINVAL, "client name %s starts with '%c'", name, name[0]);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '.' ||
              ch == '_' || ch == '-'))
            return loom_error(LOOM_EINVAL, "client name %.64s has a character outside [A-Za-z0-9._-] at position %zu",
                              name, i + 1);
    }
    return LOOM_OK;
}

int net_random(void *buf, size_t n) {
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t k = getrandom(p, n, 0);
        if (k < 0) {
            if (errno == EINTR) continue;
            return loom_error(LOOM_EIO, "getrandom: %s", strerror(errno));
        }
        p += k;
        n -= (size_t)k;
    }
    return LOOM_OK;
}

static void token_hash(const char *token, size_t n, uint8_t out[32]) {
    loom_sha256 h;
    loom_sha256_init(&h);
    loom_sha256_update(&h, token, n);
    loom_sha256_final(&h, out);
}

int loom_server_add_client(const char *state_dir, const char *name, int role, char token[65]) {
    token[0] = 0;
    int rc = loom_net_check_name(name);
    if (rc != LOOM_OK) return rc;
    if (role < LOOM_NET_ROLE_CLIENT || role > LOOM_NET_ROLE_VIEWER) return loom_error(LOOM_EINVAL, "unknown role %d", role);
    uint8_t raw[32], sha[32];
    if ((rc = net_random(raw, sizeof raw)) != LOOM_OK) return rc;
    char hex[65];
    loom_hex(raw, sizeof raw, hex);
    token_hash(hex, 64, sha);
    net_store *s;
    if ((rc = net_store_open(&s, state_dir)) != LOOM_OK) return rc;
    rc = net_store_add_client(s, name, sha, role);
    if (rc == LOOM_OK) {
        net_store_event(s, 0, "add-client", "%s registered%s", name,
                        role == LOOM_NET_ROLE_ADMIN ? " as an administrator" : role == LOOM_NET_ROLE_VIEWER ? " as a viewer" : "");
        memcpy(token, hex, 65);
    }
    net_store_close(s);
    return rc;
}

int loom_server_revoke_client(const char *state_dir, const char *name) {
    int rc = loom_net_check_name(name);
    if (rc != LOOM_OK) return rc;
    net_store *s;
    if ((rc = net_store_open(&s, state_dir)) != LOOM_OK) return rc;
    rc = net_store_revoke_client(s, name);
    if (rc == LOOM_OK) net_store_event(s, 0, "revoke-client", "%s revoked", name);
    net_store_close(s);
    return rc;
}

void loom_server_defaults(loom_server_config *c) {
    memset(c, 0, sizeof *c);
    c->listen = "127.0.0.1:8443";
    loom_engine_defaults(&c->engine);
    c->compress = "none";
    c->poll_ms = 500;
    c->eval_timeout_s = 60;
    c->threads = 4;
    c->checkpoint_every = 1;
    c->done_grace_s = 10;
}

/* ------------------------------------------------------------------ durable files */

int net_write_durable(const char *dir, const char *name, const void *data, size_t len) {
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return loom_error(LOOM_EIO, "cannot create %s: %s", tmp, strerror(errno));
    const uint8_t *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t k = write(fd, p, left);
        if (k < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            return loom_error(LOOM_EIO, "cannot write %s: %s", tmp, strerror(e));
        }
        p += k;
        left -= (size_t)k;
    }
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return loom_error(LOOM_EIO, "cannot sync %s: %s", tmp, strerror(e));
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return loom_error(LOOM_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(e));
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return loom_error(LOOM_EIO, "cannot open %s: %s", dir, strerror(errno));
    int rc = fsync(dfd) == 0 ? LOOM_OK : loom_error(LOOM_EIO, "cannot sync %s: %s", dir, strerror(errno));
    close(dfd);
    return rc;
}

/* ------------------------------------------------------------------ the global model as a body */

void net_blob_release_locked(net_blob *b) {
    if (b && --b->refs == 0) {
        loom_free(b->data);
        free(b);
    }
}

void net_blob_release(net_server *s, net_blob *b) {
    if (!b) return;
    pthread_mutex_lock(&s->mu);
    int last = --b->refs == 0;
    pthread_mutex_unlock(&s->mu);
    if (last) {
        loom_free(b->data);
        free(b);
    }
}

/* The current global vector (and SCAFFOLD's server control as control/NAME) as a safetensors body. */
int net_make_blob(net_server *s, uint64_t version, net_blob **out) {
    loom_task t;
    const float *control = NULL;
    if (loom_engine_task(s->eng, &t) == LOOM_OK) control = t.server_control;
    else if (s->uses_control) {
        size_t len;
        float *c = NULL;
        loom_strategy_state_find(loom_engine_strategy(s->eng), "server_control", &c, &len);
        control = c;
    }
    return net_make_blob_of(s, version, loom_engine_global(s->eng), control, out);
}

int net_make_blob_of(net_server *s, uint64_t version, const float *vec, const float *control, net_blob **out) {
    *out = NULL;
    loom_st_writer *w;
    int rc = loom_st_writer_create(&w);
    if (rc != LOOM_OK) return rc;
    rc = loom_tvec_add_to(w, s->manifest, vec, NULL);
    if (rc == LOOM_OK && control) {
        loom_tvec_io io = {.prefix = "control/"};
        rc = loom_tvec_add_to(w, s->manifest, control, &io);
    }
    char buf[32];
    snprintf(buf, sizeof buf, "%zu", s->dim);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "format", "pt");
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "loom_tvec", "1");
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "loom_tvec_dim", buf);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)version);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "version", buf);
    net_blob *b = NULL;
    void *data = NULL;
    size_t len = 0;
    if (rc == LOOM_OK) rc = loom_st_writer_serialize(w, &data, &len);
    loom_st_writer_free(w);
    if (rc == LOOM_OK && !(b = calloc(1, sizeof *b))) rc = loom_error(LOOM_ENOMEM, "out of memory");
    if (rc != LOOM_OK) {
        loom_free(data);
        return rc;
    }
    b->refs = 1;
    b->data = data;
    b->len = len;
    b->version = version;
    if (net_sha256_hex(data, len, b->sha256) != LOOM_OK) loom_sha256_hex(data, len, b->sha256);
    *out = b;
    return LOOM_OK;
}

/* Makes the body of the current global model (version) the served one; the one before stays served
 * for downloads already under way. */
int net_publish(net_server *s, uint64_t version) {
    net_blob *b;
    int rc = net_make_blob(s, version, &b);
    if (rc != LOOM_OK) return rc;
    pthread_mutex_lock(&s->mu);
    net_blob *old = s->prev;
    s->prev = s->cur;
    s->cur = b;
    pthread_mutex_unlock(&s->mu);
    net_blob_release(s, old);
    return LOOM_OK;
}

/* ------------------------------------------------------------------ responses */

void net_response_clear(net_server *s, net_response *r) {
    free(r->body);
    if (r->blob) net_blob_release(s, r->blob);
    memset(r, 0, sizeof *r);
}

static void add_header(net_response *r, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add_header(net_response *r, const char *name, const char *fmt, ...) {
    if (r->nhdr >= 4) return;
    snprintf(r->hdr[r->nhdr][0], sizeof r->hdr[0][0], "%s", name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->hdr[r->nhdr][1], sizeof r->hdr[0][1], fmt, ap);
    va_end(ap);
    r->nhdr++;
}

/* A JSON body (takes the reference of j). */
static void reply_json(net_response *r, int status, json_t *j) {
    r->status = status;
    r->ctype = "application/json";
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text) {
        r->status = 500;
        text = strdup("{\"error\":\"server_error\",\"message\":\"out of memory\"}");
    }
    r->body = text;
    r->len = text ? strlen(text) : 0;
}

void net_reply_err(net_response *r, int status, const char *code, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *j = json_object();
    json_object_set_new(j, "error", json_string(code));
    json_t *m = json_string(msg);
    json_object_set_new(j, "message", m ? m : json_string("(message not valid UTF-8)"));
    reply_json(r, status, j);
}

void net_reply_rejected(net_response *r, const char *reason, const char *msg) {
    json_t *j = json_object();
    json_object_set_new(j, "error", json_string("rejected"));
    json_t *m = json_string(msg);
    json_object_set_new(j, "message", m ? m : json_string("update refused"));
    json_object_set_new(j, "reason", json_string(reason));
    reply_json(r, 422, j);
}

/* ------------------------------------------------------------------ authentication */

/* The identity holding the token of "Authorization: Bearer TOKEN": its index in ids, or -1 (and 401).
 * Every registered hash is compared, in constant time, so timing says nothing of which matched. */
static int authenticate(net_server *s, const net_request *q, net_response *r, net_identity *who) {
    const char *a = q->authorization;
    int idx = -1;
    if (a && !strncasecmp(a, "Bearer ", 7)) {
        const char *tok = a + 7;
        while (*tok == ' ') tok++;
        size_t n = strlen(tok);
        while (n > 0 && (tok[n - 1] == ' ' || tok[n - 1] == '\t')) n--;
        uint8_t sha[32];
        token_hash(tok, n, sha);
        pthread_mutex_lock(&s->mu);
        double now = net_wall();
        if (now - s->ids_at > 1.0 || now < s->ids_at) { /* picks up revocations of a running server */
            net_identity *ids;
            int nids;
            if (net_store_identities(s->store, &ids, &nids) == LOOM_OK) {
                free(s->ids);
                s->ids = ids;
                s->nids = nids;
                s->ids_at = now;
            }
        }
        for (int i = 0; i < s->nids; i++) {
            uint8_t d = 0;
            for (int k = 0; k < 32; k++) d |= (uint8_t)(s->ids[i].token_sha[k] ^ sha[k]);
            int hit = d == 0;
            idx = hit && idx < 0 ? i : idx;
        }
        if (idx >= 0 && s->ids[idx].revoked) idx = -1;
        if (idx >= 0) *who = s->ids[idx];
        pthread_mutex_unlock(&s->mu);
    }
    if (idx < 0) net_reply_err(r, 401, "unauthorized", "missing, unknown or revoked token");
    return idx;
}

/* The run's index of a name, or -1. */
static int client_index(net_server *s, const char *name) {
    int lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(s->names[mid], name);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* ------------------------------------------------------------------ JSON request bodies */

static json_t *parse_body(const net_request *q, net_response *r) {
    if (q->len > NET_MAX_JSON) {
        net_reply_err(r, 413, "too_large", "the request body of %zu bytes exceeds the %d-byte limit for JSON", q->len,
                  NET_MAX_JSON);
        return NULL;
    }
    json_error_t e;
    json_t *j = json_loadb((const char *)q->body, q->len, JSON_REJECT_DUPLICATES, &e);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        net_reply_err(r, 400, "bad_request", "the body is not a JSON object%s%s", j ? "" : ": ", j ? "" : e.text);
        return NULL;
    }
    return j;
}

/* An integer member in [lo, hi], or an error reply. */
static int get_int(json_t *j, const char *key, long long lo, long long hi, long long *v, net_response *r) {
    json_t *x = json_object_get(j, key);
    if (!json_is_integer(x)) {
        net_reply_err(r, 400, "bad_request", "\"%s\" is missing or not an integer", key);
        return -1;
    }
    *v = json_integer_value(x);
    if (*v < lo || *v > hi) {
        net_reply_err(r, 400, "bad_request", "\"%s\" = %lld is outside [%lld, %lld]", key, *v, lo, hi);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ endpoints */

static void handle_hello(net_server *s, const net_request *q, const net_identity *who, net_response *r) {
    json_t *j = parse_body(q, r);
    if (!j) return;
    const char *name = json_string_value(json_object_get(j, "name"));
    json_t *base = json_object_get(j, "base_sha256");
    if (!name) {
        net_reply_err(r, 400, "bad_request", "\"name\" is missing or not a string");
        json_decref(j);
        return;
    }
    if (strcmp(name, who->name)) {
        net_reply_err(r, 403, "wrong_client", "this token belongs to another client than %.64s", name);
        json_decref(j);
        return;
    }
    int k = who->admin ? -1 : client_index(s, who->name);
    if (k < 0) {
        net_reply_err(r, 403, "not_in_run", "%s is not a client of this run (%s)", who->name,
                  who->admin ? "an administrator identity" : "registered after the run was created");
        json_decref(j);
        return;
    }
    if (s->c.base_sha256) {
        /* a client that names its base must hold the server's; one that builds its base from the run's
         * settings (a model shape and the seed) names none and checks the hash it is told */
        const char *b = json_string_value(base);
        if (b && strcmp(b, s->c.base_sha256)) {
            net_reply_err(r, 409, "base_mismatch", "the client's base model (%.64s) differs from the server's (%.64s)",
                      b, s->c.base_sha256);
            json_decref(j);
            return;
        }
    }
    json_decref(j);
    pthread_mutex_lock(&s->mu);
    int first = !s->hello[k];
    if (first) {
        s->hello[k] = 1;
        s->n_hello++;
    }
    s->last_seen[k] = net_wall();
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (first) net_store_event(s->store, 0, "hello", "client %d (%s) said hello", k, who->name);
    char id[17];
    snprintf(id, sizeof id, "%016llx", (unsigned long long)s->run_id);
    json_t *o = json_object();
    json_object_set_new(o, "run_id", json_string(id));
    json_object_set_new(o, "client", json_integer(k));
    json_object_set_new(o, "clients", json_integer(s->n));
    json_object_set_new(o, "rounds", json_integer(s->ec.rounds));
    json_object_set_new(o, "dim", json_integer((json_int_t)s->dim));
    json_object_set_new(o, "mode", json_string(loom_engine_mode_name(s->ec.mode)));
    json_object_set_new(o, "compress", json_string(s->c.compress ? s->c.compress : "none"));
    json_object_set_new(o, "poll_ms", json_integer(s->c.poll_ms));
    json_object_set_new(o, "base_sha256", s->c.base_sha256 ? json_string(s->c.base_sha256) : json_null());
    json_object_set_new(o, "secagg", net_sa_hello(s));
    reply_json(r, 200, o);
    if (r->status != 200) return;
    /* the run's texts, checked and made compact once, spliced in (no JSON object shared by threads) */
    size_t n = r->len + strlen(s->run_text) + strlen(s->model_text) + 40;
    char *b = malloc(n);
    if (!b) {
        net_response_clear(s, r);
        net_reply_err(r, 503, "busy", "out of memory");
        return;
    }
    r->body[r->len - 1] = 0; /* the closing brace */
    snprintf(b, n, "%s,\"run\":%s,\"model_config\":%s}", r->body, s->run_text, s->model_text);
    free(r->body);
    r->body = b;
    r->len = strlen(b);
}

static void handle_task(net_server *s, const net_identity *who, net_response *r) {
    int k = who->admin ? -1 : client_index(s, who->name);
    if (k < 0) {
        net_reply_err(r, 403, "not_in_run", "%s is not a client of this run", who->name);
        return;
    }
    json_t *o = json_object();
    pthread_mutex_lock(&s->mu);
    s->last_seen[k] = net_wall();
    if (s->phase == NET_PH_DONE) {
        if (!s->seen_done[k]) {
            s->seen_done[k] = 1;
            s->n_seen_done++;
            pthread_cond_broadcast(&s->cv);
        }
        json_object_set_new(o, "type", json_string("done"));
        json_object_set_new(o, "rounds", json_integer(s->ec.rounds));
        json_object_set_new(o, "global_sha256", json_string(s->cur ? s->cur->sha256 : ""));
    } else if (s->async && net_async_task(s, k, o)) {
        /* an asynchronous task (server_async.c) */
    } else if (s->phase == NET_PH_FIT && s->spos[k] >= 0 && s->ans[k] == 0 && (!s->sa || net_sa_offers_fit(s, k))) {
        json_object_set_new(o, "type", json_string("fit"));
        if (s->sa) net_sa_task(s, k, o);
        json_object_set_new(o, "round", json_integer(s->round));
        json_object_set_new(o, "version", json_integer(s->round - 1));
        json_object_set_new(o, "global_sha256", json_string(s->cur->sha256));
        json_object_set_new(o, "global_bytes", json_integer((json_int_t)s->cur->len));
        if (s->ec.deadline > 0)
            json_object_set_new(o, "deadline_s", json_real(fmax(0, s->opened_at + s->ec.deadline - net_wall())));
    } else if (s->phase == NET_PH_EVAL && s->epos[k] >= 0 && !s->ereported[k]) {
        json_object_set_new(o, "type", json_string("eval"));
        json_object_set_new(o, "round", json_integer(s->round));
        json_object_set_new(o, "version", json_integer(s->round));
        json_object_set_new(o, "global_sha256", json_string(s->cur->sha256));
        json_object_set_new(o, "global_bytes", json_integer((json_int_t)s->cur->len));
    } else {
        json_object_set_new(o, "type", json_string("wait"));
        json_object_set_new(o, "retry_ms", json_integer(s->c.poll_ms));
        json_object_set_new(o, "round", json_integer(s->round));
    }
    pthread_mutex_unlock(&s->mu);
    reply_json(r, 200, o);
}

/* "bytes=A-" or "bytes=A-B" over a body of len bytes: 0 (with [*a, *b]) or -1. */
static int parse_range(const char *v, size_t len, size_t *a, size_t *b) {
    if (strncmp(v, "bytes=", 6)) return -1;
    const char *p = v + 6;
    char *end;
    if (*p < '0' || *p > '9') return -1;
    errno = 0;
    unsigned long long x = strtoull(p, &end, 10);
    if (errno || *end != '-') return -1;
    p = end + 1;
    unsigned long long y = len ? len - 1 : 0;
    if (*p) {
        if (*p < '0' || *p > '9') return -1;
        y = strtoull(p, &end, 10);
        if (errno || *end) return -1;
        if (y >= len) y = len ? len - 1 : 0;
    }
    if (len == 0 || x >= len || y < x) return -1;
    *a = (size_t)x;
    *b = (size_t)y;
    return 0;
}

static void handle_global(net_server *s, const net_request *q, const net_identity *who, net_response *r) {
    if (!who->admin && client_index(s, who->name) < 0) {
        net_reply_err(r, 403, "not_in_run", "%s is not a client of this run", who->name);
        return;
    }
    unsigned long long v = 0;
    int have = 0;
    if (q->version && *q->version >= '0' && *q->version <= '9') {
        char *end;
        errno = 0;
        v = strtoull(q->version, &end, 10);
        have = !errno && !*end;
    }
    pthread_mutex_lock(&s->mu);
    net_blob *b = NULL;
    if (!have && s->cur) b = s->cur;
    else if (s->cur && s->cur->version == v) b = s->cur;
    else if (s->prev && s->prev->version == v) b = s->prev;
    if (b) b->refs++;
    else if (s->async && have) b = net_async_blob(s, v);
    unsigned long long curv = s->cur ? (unsigned long long)s->cur->version : 0;
    pthread_mutex_unlock(&s->mu);
    if (!b) {
        if (q->version && !have) net_reply_err(r, 400, "bad_request", "version %.32s is not a whole number", q->version);
        else net_reply_err(r, 410, "stale", "version %llu is not served (the current version is %llu)", v, curv);
        return;
    }
    size_t a0 = 0, a1 = b->len ? b->len - 1 : 0;
    if (q->range) {
        if (parse_range(q->range, b->len, &a0, &a1) != 0) {
            net_reply_err(r, 416, "bad_range", "range %.64s lies outside the %zu-byte body", q->range, b->len);
            add_header(r, "Content-Range", "bytes */%zu", b->len);
            net_blob_release(s, b);
            return;
        }
        r->status = 206;
        add_header(r, "Content-Range", "bytes %zu-%zu/%zu", a0, a1, b->len);
    } else r->status = 200;
    r->ctype = "application/octet-stream";
    r->blob = b;
    r->off = a0;
    r->len = b->len ? a1 - a0 + 1 : 0;
    add_header(r, "X-Loom-SHA256", "%s", b->sha256);
    add_header(r, "X-Loom-Version", "%llu", (unsigned long long)b->version);
    add_header(r, "Accept-Ranges", "bytes");
}

static int key_ok(const char *k) {
    size_t n = k ? strlen(k) : 0;
    if (n < 1 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return 0;
    }
    return 1;
}

/* The protocol checks of an answer (update or failure report) of client k for round `round`, under the
 * lock: 0 (the slot is now pending) or -1 with the reply. */
static int reserve(net_server *s, int k, int round, double now, net_response *r) {
    int past_deadline = s->ec.deadline > 0 && now > s->opened_at + s->ec.deadline;
    if (s->round > 0 && round == s->round && (s->phase != NET_PH_FIT || past_deadline)) {
        if (past_deadline) net_reply_err(r, 410, "late", "round %d's deadline of %gs has passed", round, s->ec.deadline);
        else net_reply_err(r, 410, "stale", "round %d is closed", round);
        return -1;
    }
    if (s->phase != NET_PH_FIT || round != s->round) {
        if (s->round > 0)
            net_reply_err(r, 410, "stale", "round %d is not the open round (%s %d)", round,
                      s->phase == NET_PH_FIT ? "round" : "the last round was", s->round);
        else net_reply_err(r, 410, "stale", "round %d is not open (no round is open yet)", round);
        return -1;
    }
    if (s->spos[k] < 0) {
        net_reply_err(r, 412, "not_sampled", "client %d is not sampled in round %d", k, round);
        return -1;
    }
    if (s->ans[k] != 0) {
        net_reply_err(r, 409, "duplicate", "client %d already answered round %d", k, round);
        return -1;
    }
    s->ans[k] = 1;
    s->pending++;
    return 0;
}

/* The slot's end: answered (stored) or free again. */
static void settle(net_server *s, int k, int stored, int is_update) {
    pthread_mutex_lock(&s->mu);
    s->ans[k] = stored ? 2 : 0;
    if (stored) {
        s->n_answered++;
        if (is_update) s->n_updates++;
    }
    s->pending--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

const char *net_verdict_code(loom_update_verdict v, int *status) {
    switch (v) {
    case LOOM_UPDATE_WRONG_ROUND: *status = 410; return "stale";
    case LOOM_UPDATE_LATE: *status = 410; return "late";
    case LOOM_UPDATE_NOT_SAMPLED: *status = 412; return "not_sampled";
    case LOOM_UPDATE_DUPLICATE: *status = 409; return "duplicate";
    default: *status = 422; return "rejected";
    }
}

void net_reply_accepted(net_response *r, int round, int k, int replayed) {
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("accepted"));
    json_object_set_new(o, "round", json_integer(round));
    json_object_set_new(o, "client", json_integer(k));
    if (replayed) json_object_set_new(o, "replayed", json_true());
    reply_json(r, 200, o);
}

static void handle_update(net_server *s, const net_request *q, const net_identity *who, net_response *r) {
    int k = who->admin ? -1 : client_index(s, who->name);
    if (k < 0) {
        net_reply_err(r, 403, "not_in_run", "%s is not a client of this run", who->name);
        return;
    }
    if (s->sa) {
        net_reply_err(r, 409, "not_secure", "this run uses secure aggregation: send the masked input to /v1/secagg");
        return;
    }
    if (q->len > s->max_upload) {
        net_reply_err(r, 413, "too_large", "the update of %zu bytes exceeds the %zu-byte upload limit", q->len, s->max_upload);
        return;
    }
    if (!key_ok(q->idem_key)) {
        net_reply_err(r, 400, "bad_request", "Idempotency-Key is %s: 1 to 64 characters of [A-Za-z0-9_-]",
                  q->idem_key ? "malformed" : "missing");
        return;
    }
    char sha[65];
    if (net_sha256_hex(q->body, q->len, sha) != LOOM_OK) loom_sha256_hex(q->body, q->len, sha);
    if (q->sha256 && strcasecmp(q->sha256, sha)) {
        net_reply_err(r, 400, "bad_request", "X-Loom-SHA256 does not match the body's SHA-256 (%s)", sha);
        return;
    }
    net_answer prev;
    int found = 0;
    if (net_store_find_key(s->store, k, q->idem_key, &prev, &found) != LOOM_OK) {
        net_reply_err(r, 500, "server_error", "%s", loom_errmsg());
        return;
    }
    if (found) {
        if (strcmp(prev.sha256, sha))
            net_reply_err(r, 409, "duplicate", "idempotency key %s was used for another body in round %d", q->idem_key,
                      prev.round);
        else if (!strcmp(prev.kind, "update")) net_reply_accepted(r, prev.round, k, 1);
        else net_reply_err(r, 409, "duplicate", "this update was already answered in round %d (%s)", prev.round, prev.kind);
        return;
    }
    float *values = loom_alloc(s->dim * sizeof(float));
    float *control = s->uses_control ? loom_alloc(s->dim * sizeof(float)) : NULL;
    if (!values || (s->uses_control && !control)) {
        loom_free(values);
        loom_free(control);
        net_reply_err(r, 503, "busy", "out of memory for an upload");
        return;
    }
    loom_update u;
    memset(&u, 0, sizeof u);
    int rc = loom_update_decode(q->body, q->len, s->dim, &u, values, control);
    if (rc != LOOM_OK) {
        if (rc == LOOM_EUNSUPPORTED) net_reply_rejected(r, "unsupported codec", loom_errmsg());
        else net_reply_err(r, 400, "bad_request", "not an update: %s", loom_errmsg());
        goto out;
    }
    if (u.client != k) {
        net_reply_err(r, 403, "wrong_client", "the update is for client %d, this token is client %d (%s)", u.client, k,
                  who->name);
        goto out;
    }
    if (u.run_id != s->run_id) {
        net_reply_err(r, 410, "stale", "the update belongs to run %016llx, this run is %016llx",
                  (unsigned long long)u.run_id, (unsigned long long)s->run_id);
        goto out;
    }
    if (s->async) { /* FedAsync, FedBuff: applied on arrival (server_async.c) */
        net_async_update(s, &u, k, who->name, q->idem_key, sha, q->body, q->len, r);
        goto out;
    }
    if (u.version != (uint64_t)(u.round - 1)) {
        net_reply_err(r, 410, "stale", "the update of round %d was trained on version %llu, not %d", u.round,
                  (unsigned long long)u.version, u.round - 1);
        goto out;
    }
    double now = net_wall();
    pthread_mutex_lock(&s->mu);
    int res = reserve(s, k, u.round, now, r);
    pthread_mutex_unlock(&s->mu);
    if (res != 0) goto out;
    loom_update_verdict v = LOOM_UPDATE_ACCEPTED;
    rc = loom_engine_check(s->eng, &u, now, &v);
    int status = 200;
    const char *code = rc == LOOM_OK ? NULL : net_verdict_code(v, &status);
    char why[512];
    snprintf(why, sizeof why, "%s", rc == LOOM_OK ? "" : loom_errmsg());
    if (rc != LOOM_OK && status != 422) { /* the protocol's verdict (a race with the deadline): nothing stored */
        settle(s, k, 0, 0);
        net_reply_err(r, status, code, "%s", why);
        goto out;
    }
    /* accepted, or decoded but refused on its content: both are the client's answer, made durable */
    net_answer a;
    memset(&a, 0, sizeof a);
    a.round = u.round;
    a.client = k;
    snprintf(a.kind, sizeof a.kind, "%s", rc == LOOM_OK ? "update" : "rejected");
    snprintf(a.idem_key, sizeof a.idem_key, "%s", q->idem_key);
    memcpy(a.sha256, sha, 65);
    a.examples = u.examples;
    a.loss = u.loss;
    a.tokens = u.tokens;
    snprintf(a.file, sizeof a.file, "r%d-c%d.upd", u.round, k);
    snprintf(a.reason, sizeof a.reason, "%s", rc == LOOM_OK ? "" : loom_update_verdict_str(v));
    a.received_at = now;
    int wrc = net_write_durable(s->upd_dir, a.file, q->body, q->len);
    if (wrc == LOOM_OK) wrc = net_store_put_answer(s->store, &a);
    if (wrc != LOOM_OK) {
        settle(s, k, 0, 0);
        loom_log(LOOM_ERROR, "round %d: cannot store the update of client %d: %s", u.round, k, loom_errmsg());
        net_reply_err(r, 503, "busy", "the update could not be stored; retry it");
        goto out;
    }
    settle(s, k, 1, rc == LOOM_OK);
    if (rc == LOOM_OK) {
        net_store_event(s->store, u.round, "update", "client %d (%s): %llu examples, loss %.6g, %zu bytes", k,
                        who->name, (unsigned long long)u.examples, u.loss, q->len);
        net_reply_accepted(r, u.round, k, 0);
    } else {
        net_store_event(s->store, u.round, "rejected", "client %d (%s): %s", k, who->name, why);
        net_reply_rejected(r, loom_update_verdict_str(v), why);
    }
out:
    loom_free(values);
    loom_free(control);
}

static void handle_fail(net_server *s, const net_request *q, const net_identity *who, net_response *r) {
    int k = who->admin ? -1 : client_index(s, who->name);
    if (k < 0) {
        net_reply_err(r, 403, "not_in_run", "%s is not a client of this run", who->name);
        return;
    }
    json_t *j = parse_body(q, r);
    if (!j) return;
    long long round;
    if (get_int(j, "round", 1, 1 << 30, &round, r) != 0) {
        json_decref(j);
        return;
    }
    const char *reason = json_string_value(json_object_get(j, "reason"));
    net_answer a;
    memset(&a, 0, sizeof a);
    a.round = (int)round;
    a.client = k;
    snprintf(a.kind, sizeof a.kind, "failed");
    snprintf(a.reason, sizeof a.reason, "%s", reason ? reason : "no reason given");
    json_decref(j);
    a.received_at = net_wall();
    if (s->async) {
        pthread_mutex_lock(&s->mu);
        int ares = net_async_answer(s, k, a.round, r);
        if (ares == 0) net_async_fail(s, k, a.reason);
        pthread_mutex_unlock(&s->mu);
        if (ares != 0) return;
        net_store_event(s->store, a.round, "failed", "client %d (%s): %s", k, who->name, a.reason);
        json_t *o = json_object();
        json_object_set_new(o, "status", json_string("accepted"));
        reply_json(r, 200, o);
        return;
    }
    pthread_mutex_lock(&s->mu);
    int res = reserve(s, k, a.round, a.received_at, r);
    pthread_mutex_unlock(&s->mu);
    if (res != 0) return;
    /* the idempotency key of a failure is unique per round: it never matches an upload's */
    snprintf(a.idem_key, sizeof a.idem_key, "fail.r%d", a.round);
    if (net_store_put_answer(s->store, &a) != LOOM_OK) {
        settle(s, k, 0, 0);
        net_reply_err(r, 503, "busy", "the report could not be stored; retry it");
        return;
    }
    settle(s, k, 1, 0);
    net_store_event(s->store, a.round, "failed", "client %d (%s): %s", k, who->name, a.reason);
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("accepted"));
    reply_json(r, 200, o);
}

static void handle_eval(net_server *s, const net_request *q, const net_identity *who, net_response *r) {
    int k = who->admin ? -1 : client_index(s, who->name);
    if (k < 0) {
        net_reply_err(r, 403, "not_in_run", "%s is not a client of this run", who->name);
        return;
    }
    json_t *j = parse_body(q, r);
    if (!j) return;
    long long round, tokens, correct, count;
    const long long big = (long long)1 << 52;
    json_t *ls = json_object_get(j, "loss_sum");
    if (get_int(j, "round", 1, 1 << 30, &round, r) || get_int(j, "tokens", 0, big, &tokens, r) ||
        get_int(j, "correct", 0, big, &correct, r) || get_int(j, "count", 0, big, &count, r)) {
        json_decref(j);
        return;
    }
    if (!json_is_number(ls) || !isfinite(json_number_value(ls)) || json_number_value(ls) < 0 || correct > count) {
        net_reply_err(r, 400, "bad_request", "\"loss_sum\" must be a finite number >= 0 and \"correct\" at most \"count\"");
        json_decref(j);
        return;
    }
    loom_eval_result res = {json_number_value(ls), (long)tokens, (long)correct, (long)count, 0, 0};
    json_decref(j);
    pthread_mutex_lock(&s->mu);
    int ok = 0;
    if (s->phase != NET_PH_EVAL || round != s->round)
        net_reply_err(r, 410, "stale", "round %lld has no evaluation running", round);
    else if (s->epos[k] < 0)
        net_reply_err(r, 412, "not_sampled", "client %d is not asked to evaluate round %lld", k, round);
    else if (s->ereported[k])
        net_reply_err(r, 409, "duplicate", "client %d already reported its evaluation of round %lld", k, round);
    else {
        /* stored first, then counted: a restart submits the stored reports again */
        if (net_store_put_eval(s->store, (int)round, k, &res) != LOOM_OK ||
            loom_engine_eval_submit(s->eng, k, &res) != LOOM_OK)
            net_reply_err(r, 503, "busy", "the report could not be stored: %s", loom_errmsg());
        else {
            s->ereported[k] = 1;
            s->n_reported++;
            pthread_cond_broadcast(&s->cv);
            ok = 1;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (ok) {
        net_store_event(s->store, (int)round, "eval", "client %d (%s): loss %.6g over %lld tokens", k, who->name,
                        tokens ? res.loss_sum / (double)tokens : 0.0, tokens);
        json_t *o = json_object();
        json_object_set_new(o, "status", json_string("accepted"));
        reply_json(r, 200, o);
    }
}

/* The caller's client index, marked as seen now; -1 (403 answered) when it is not a client of the run. */
static int client_seen(net_server *s, const net_identity *who, net_response *r) {
    int k = who->admin ? -1 : client_index(s, who->name);
    if (k < 0) {
        net_reply_err(r, 403, "not_in_run", "%s is not a client of this run", who->name);
        return -1;
    }
    pthread_mutex_lock(&s->mu);
    s->last_seen[k] = net_wall();
    pthread_mutex_unlock(&s->mu);
    return k;
}

static void handle_secagg(net_server *s, const net_request *q, const net_identity *who, net_response *r) {
    int k = client_seen(s, who, r);
    if (k >= 0) net_sa_handle(s, q, k, who->name, r);
}

static void handle_split(net_server *s, const net_request *q, const net_identity *who, net_response *r) {
    int k = client_seen(s, who, r);
    if (k >= 0) net_split_handle(s, q, k, r);
}

static const char *phase_name(int p) {
    switch (p) {
    case NET_PH_WAIT: return "waiting";
    case NET_PH_FIT: return "fit";
    case NET_PH_CLOSING: return "closing";
    case NET_PH_EVAL: return "eval";
    case NET_PH_DONE: return "done";
    default: return "?";
    }
}

/* Client k's state word for the status and the dashboard (the caller holds mu). */
static const char *client_state(const net_server *s, int k) {
    const char *st = "idle";
    if (s->phase == NET_PH_FIT || s->phase == NET_PH_CLOSING) {
        if (s->spos[k] >= 0) st = s->ans[k] == 2 ? "answered" : s->ans[k] == 1 ? "uploading" : "training";
    } else if (s->phase == NET_PH_EVAL && s->epos[k] >= 0) st = s->ereported[k] ? "evaluated" : "evaluating";
    else if (s->phase == NET_PH_DONE) st = s->seen_done[k] ? "done" : "finishing";
    if (s->async && s->atask && s->atask[k]) st = "training";
    if (!s->hello[k] && s->last_seen[k] == 0) st = "absent";
    return st;
}

static void handle_status(net_server *s, const net_identity *who, net_response *r) {
    if (!who->admin) {
        net_reply_err(r, 403, "forbidden", "the status needs an administrator token");
        return;
    }
    int nup = 0;
    net_store_count_updates(s->store, &nup);
    char id[17];
    snprintf(id, sizeof id, "%016llx", (unsigned long long)s->run_id);
    json_t *o = json_object();
    json_object_set_new(o, "run_id", json_string(id));
    json_object_set_new(o, "mode", json_string(loom_engine_mode_name(s->ec.mode)));
    json_object_set_new(o, "rounds", json_integer(s->ec.rounds));
    json_object_set_new(o, "updates", json_integer(nup));
    json_t *cl = json_array();
    pthread_mutex_lock(&s->mu);
    json_object_set_new(o, "round", json_integer(s->round));
    json_object_set_new(o, "phase", json_string(phase_name(s->phase)));
    json_object_set_new(o, "version", json_integer(s->cur ? (json_int_t)s->cur->version : 0));
    for (int k = 0; k < s->n; k++) {
        json_t *c = json_object();
        json_object_set_new(c, "name", json_string(s->names[k]));
        json_object_set_new(c, "client", json_integer(k));
        json_object_set_new(c, "last_seen", s->last_seen[k] > 0 ? json_real(s->last_seen[k]) : json_null());
        json_object_set_new(c, "state", json_string(client_state(s, k)));
        json_array_append_new(cl, c);
    }
    pthread_mutex_unlock(&s->mu);
    json_object_set_new(o, "clients", cl);
    reply_json(r, 200, o);
}

/* The dashboard (include/loom/dash.h): its page and script without a token (they hold no data), its
 * API (GET /v1/dash/status, /v1/dash/metrics) with an administrator's or a viewer's token. The board
 * gets the round, the phase and each client's live state first. Metrics only: no client data. */
static void handle_dash(net_server *s, const net_request *q, net_response *r) {
    if (loom_dash_is_api(q->path)) {
        net_identity who;
        if (authenticate(s, q, r, &who) < 0) return;
        if (!who.admin && !who.viewer) {
            net_reply_err(r, 403, "forbidden", "the dashboard needs an administrator or viewer token");
            return;
        }
        pthread_mutex_lock(&s->mu);
        loom_dash_progress(s->dash, s->round, s->ec.rounds, phase_name(s->phase));
        for (int k = 0; k < s->n; k++) {
            const char *st = client_state(s, k);
            int active = !strcmp(st, "training") || !strcmp(st, "uploading") || !strcmp(st, "evaluating");
            loom_dash_client_seen(s->dash, k, s->hello[k] || s->last_seen[k] > 0, active, s->last_seen[k], st);
        }
        pthread_mutex_unlock(&s->mu);
    }
    int status = 500;
    const char *ctype = "application/json";
    char *body = NULL;
    size_t len = 0;
    loom_dash_route(s->dash, q->method, q->path, q->arg_since, net_wall(), &status, &ctype, &body, &len);
    if (!body) {
        net_reply_err(r, 503, "busy", "out of memory");
        return;
    }
    r->status = status;
    r->ctype = ctype;
    r->body = body;
    r->len = len;
    add_header(r, "Cache-Control", "no-store");
    add_header(r, "Content-Security-Policy", "default-src 'self'; img-src 'self' data:");
    add_header(r, "X-Content-Type-Options", "nosniff");
}

void net_handle(net_server *s, const net_request *q, net_response *r) {
    memset(r, 0, sizeof r[0]);
    if (q->path && (loom_dash_find_asset(q->path) || loom_dash_is_api(q->path))) {
        handle_dash(s, q, r);
        return;
    }
    static const struct {
        const char *path, *method;
    } routes[] = {{"/v1/hello", "POST"}, {"/v1/task", "GET"},  {"/v1/global", "GET"},   {"/v1/update", "POST"},
                  {"/v1/eval", "POST"},  {"/v1/fail", "POST"}, {"/v1/status", "GET"},   {"/v1/secagg", "POST"},
                  {"/v1/secagg", "GET"},  {"/v1/split", "POST"}, {"/v1/split", "GET"}};
    int route = -1, first = -1;
    for (int i = 0; i < (int)(sizeof routes / sizeof routes[0]); i++) {
        if (!q->path || strcmp(q->path, routes[i].path)) continue;
        if (first < 0) first = i;
        int is_head = q->method && !strcmp(q->method, "HEAD") && !strcmp(routes[i].method, "GET");
        if (q->method && (!strcmp(q->method, routes[i].method) || is_head) && route < 0) route = i;
    }
    if (first < 0) {
        net_reply_err(r, 404, "not_found", "no endpoint %.128s", q->path ? q->path : "");
        return;
    }
    if (route < 0) {
        net_reply_err(r, 405, "method_not_allowed", "%s takes %s", routes[first].path,
                      !strcmp(routes[first].path, "/v1/secagg") || !strcmp(routes[first].path, "/v1/split")
                          ? "POST or GET" : routes[first].method);
        return;
    }
    net_identity who;
    if (authenticate(s, q, r, &who) < 0) return;
    if (who.viewer) {
        net_reply_err(r, 403, "forbidden", "a viewer token reads the dashboard only (GET /v1/dash/status, /v1/dash/metrics)");
        return;
    }
    switch (route) {
    case 0: handle_hello(s, q, &who, r); break;
    case 1: handle_task(s, &who, r); break;
    case 2: handle_global(s, q, &who, r); break;
    case 3: handle_update(s, q, &who, r); break;
    case 4: handle_eval(s, q, &who, r); break;
    case 5: handle_fail(s, q, &who, r); break;
    case 6: handle_status(s, &who, r); break;
    case 9: case 10: handle_split(s, q, &who, r); break;
    default: handle_secagg(s, q, &who, r); break;
    }
}
