/* The federation client (src/net/client.c) against a scripted mock server (libmicrohttpd, plain HTTP)
 * that plays docs/protocol.md and injects faults: a download cut mid-body (the client must resume
 * with a Range request), a corrupt download (hash mismatch: downloaded again), 503 twice before an
 * upload is accepted (same idempotency key each time), 409 duplicate (the client moves on), 401 (the
 * run fails with the server's message), a failing fit (reported to /v1/fail), a client stopped
 * mid-upload and restarted (the pending update is sent again, not retrained), an unreachable server
 * (give_up_s). Every request body the mock receives is kept, to check that only protocol bodies leave
 * the client: the bytes next to the fit's output (a marker standing for training text) never do. */
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <pthread.h>
#include <time.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/net.h"
#include "loom/safetensors.h"
#include "loom/strategy.h"
#include "loom/tvec.h"
#include "loom/update.h"
#include "test.h"

#define TOKEN "tok-0123456789abcdef"
#define MARKER "TRAINING TEXT: patient 4711 was admitted on"
#define RUN_ID "00c0ffee12345678"

enum { SC_MAIN, SC_AUTH, SC_FAIL, SC_STOP, SC_RESUME };

typedef struct {
    int scenario;
    pthread_mutex_t mu;
    const char *work_dir;
    volatile int *stop;
    /* the global versions (v1 carries SCAFFOLD control tensors) */
    size_t dim;
    void *g[2];
    size_t glen[2];
    char gsha[2][65];
    /* script state */
    int phase, task_calls, hello_calls, global_calls[2], update_calls, eval_calls, fail_calls, bad_auth;
    int v0_drop_at;          /* bytes of the first v0 answer before the connection drops */
    int ignore_range;        /* answer a resumed download with the whole body (200) */
    const char *hello_answer; /* replaces the hello answer (a broken server) */
    char range[4][64];       /* Range headers of the v0 requests */
    char keys[8][65], shas[8][65];
    uint8_t *bodies[8];
    size_t body_len[8];
    int pending_ok[8];       /* pending-R.upd held the body when it arrived */
    char eval_json[512], fail_json[2048], hello_json[512];
    loom_strbuf all;         /* every request body and header value received */
} mock;

typedef struct {
    loom_strbuf body;
} req_ctx;

static enum MHD_Result reply(struct MHD_Connection *c, int status, const char *json) {
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(json), (void *)json, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

typedef struct {
    const uint8_t *data;
    size_t len, cut;
} cut_body;

static ssize_t cut_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    cut_body *b = cls;
    if (pos >= b->cut) return MHD_CONTENT_READER_END_WITH_ERROR; /* the connection drops here */
    size_t n = LOOM_MIN(max, b->cut - (size_t)pos);
    memcpy(buf, b->data + pos, n);
    return (ssize_t)n;
}

static enum MHD_Result serve_global(mock *m, struct MHD_Connection *c, int v) {
    int call = m->global_calls[v]++;
    const char *range = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range");
    if (v == 0 && call < 4) snprintf(m->range[call], sizeof m->range[call], "%s", range ? range : "");
    size_t from = 0;
    if (m->ignore_range) range = NULL;
    if (range && sscanf(range, "bytes=%zu-", &from) != 1) return reply(c, 416, "{\"error\":\"bad_range\",\"message\":\"?\"}");
    if (from >= m->glen[v]) return reply(c, 416, "{\"error\":\"bad_range\",\"message\":\"outside\"}");
    struct MHD_Response *r;
    if (v == 0 && call == 0) { /* full answer announced, connection dropped after v0_drop_at bytes */
        cut_body *b = malloc(sizeof *b);
        *b = (cut_body){m->g[0], m->glen[0], (size_t)m->v0_drop_at};
        r = MHD_create_response_from_callback(m->glen[0], 4096, cut_reader, b, free);
    } else if (v == 1 && call == 0 && m->scenario == SC_MAIN) { /* a corrupt body under the right headers */
        uint8_t *bad = malloc(m->glen[1]);
        memcpy(bad, m->g[1], m->glen[1]);
        bad[m->glen[1] - 5] ^= 0x40;
        r = MHD_create_response_from_buffer(m->glen[1], bad, MHD_RESPMEM_MUST_FREE);
    } else {
        r = MHD_create_response_from_buffer(m->glen[v] - from, (uint8_t *)m->g[v] + from, MHD_RESPMEM_PERSISTENT);
    }
    MHD_add_response_header(r, "Content-Type", "application/octet-stream");
    MHD_add_response_header(r, "X-Loom-SHA256", m->gsha[v]);
    MHD_add_response_header(r, "Accept-Ranges", "bytes");
    int status = 200;
    if (range) {
        char cr[96];
        snprintf(cr, sizeof cr, "bytes %zu-%zu/%zu", from, m->glen[v] - 1, m->glen[v]);
        MHD_add_response_header(r, "Content-Range", cr);
        status = 206;
    }
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result serve_task(mock *m, struct MHD_Connection *c) {
    char buf[512];
    m->task_calls++;
    if (m->scenario == SC_AUTH && m->task_calls >= 2)
        return reply(c, 401, "{\"error\":\"unauthorized\",\"message\":\"unknown or revoked token\"}");
    if (m->phase == 0) {
        m->phase = 1;
        return reply(c, 200, "{\"type\":\"wait\",\"retry_ms\":10,\"round\":1}");
    }
    if (m->phase == 1) {
        snprintf(buf, sizeof buf, "{\"type\":\"fit\",\"round\":1,\"version\":0,\"global_sha256\":\"%s\",\"global_bytes\":%zu,"
                 "\"deadline_s\":30.5}", m->gsha[0], m->glen[0]);
        return reply(c, 200, buf);
    }
    if (m->phase == 2) {
        snprintf(buf, sizeof buf, "{\"type\":\"eval\",\"round\":1,\"version\":1,\"global_sha256\":\"%s\",\"global_bytes\":%zu}",
                 m->gsha[1], m->glen[1]);
        return reply(c, 200, buf);
    }
    if (m->phase == 3) {
        snprintf(buf, sizeof buf, "{\"type\":\"fit\",\"round\":2,\"version\":1,\"global_sha256\":\"%s\",\"global_bytes\":%zu}",
                 m->gsha[1], m->glen[1]);
        return reply(c, 200, buf);
    }
    snprintf(buf, sizeof buf, "{\"type\":\"done\",\"rounds\":2,\"global_sha256\":\"%s\"}", m->gsha[1]);
    return reply(c, 200, buf);
}

static enum MHD_Result serve_update(mock *m, struct MHD_Connection *c, const req_ctx *q) {
    int i = m->update_calls++;
    const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Idempotency-Key");
    const char *sha = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Loom-SHA256");
    if (i < 8) {
        snprintf(m->keys[i], sizeof m->keys[i], "%s", key ? key : "");
        snprintf(m->shas[i], sizeof m->shas[i], "%s", sha ? sha : "");
        m->bodies[i] = malloc(q->body.n + 1);
        memcpy(m->bodies[i], q->body.s ? q->body.s : "", q->body.n);
        m->body_len[i] = q->body.n;
        char p[512];
        int round = m->phase == 3 ? 2 : 1;
        snprintf(p, sizeof p, "%s/pending-%d.upd", m->work_dir, round);
        char *data;
        size_t len;
        if (loom_read_file(p, &data, &len) == LOOM_OK) {
            m->pending_ok[i] = len == q->body.n && memcmp(data, q->body.s, len) == 0;
            free(data);
        }
    }
    if (m->scenario == SC_STOP) {
        __atomic_store_n(m->stop, 1, __ATOMIC_RELAXED);
        return reply(c, 503, "{\"error\":\"busy\",\"message\":\"try later\"}");
    }
    if (m->phase == 1) {
        if (m->scenario == SC_MAIN && i < 2) return reply(c, 503, "{\"error\":\"busy\",\"message\":\"try later\"}");
        m->phase = m->scenario == SC_MAIN ? 2 : 4;
        return reply(c, 200, "{\"status\":\"accepted\",\"round\":1,\"client\":1}");
    }
    m->phase = 4;
    return reply(c, 409, "{\"error\":\"duplicate\",\"message\":\"client 1 already answered round 2\"}");
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
    mock *m = cls;
    if (!*con_cls) {
        *con_cls = calloc(1, sizeof(req_ctx));
        return MHD_YES;
    }
    req_ctx *q = *con_cls;
    if (*upload_size) {
        loom_strbuf_add(&q->body, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&m->mu);
    if (q->body.n) loom_strbuf_add(&m->all, q->body.s, q->body.n);
    const char *hdrs[] = {"Authorization", "Idempotency-Key", "X-Loom-SHA256", "Range", "User-Agent", "Content-Type"};
    for (size_t i = 0; i < sizeof hdrs / sizeof *hdrs; i++) {
        const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, hdrs[i]);
        if (v) loom_strbuf_add(&m->all, v, strlen(v));
    }
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    enum MHD_Result ret;
    if (!auth || strcmp(auth, "Bearer " TOKEN) != 0) {
        m->bad_auth++;
        ret = reply(c, 401, "{\"error\":\"unauthorized\",\"message\":\"missing token\"}");
    } else if (strcmp(url, "/v1/hello") == 0 && strcmp(method, "POST") == 0) {
        m->hello_calls++;
        snprintf(m->hello_json, sizeof m->hello_json, "%.*s", (int)q->body.n, q->body.s ? q->body.s : "");
        char buf[512];
        if (m->hello_answer) {
            ret = reply(c, 200, m->hello_answer);
            pthread_mutex_unlock(&m->mu);
            return ret;
        }
        snprintf(buf, sizeof buf, "{\"run_id\":\"" RUN_ID "\",\"client\":1,\"clients\":3,\"rounds\":2,\"dim\":%zu,"
                 "\"mode\":\"sync\",\"compress\":\"none\",\"poll_ms\":20,\"base_sha256\":null,"
                 "\"run\":{\"rounds\":2,\"strategy\":\"fedavg\"}}", m->dim);
        ret = reply(c, 200, buf);
    } else if (strcmp(url, "/v1/task") == 0) {
        ret = serve_task(m, c);
    } else if (strcmp(url, "/v1/global") == 0) {
        const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "version");
        if (v && (strcmp(v, "0") == 0 || strcmp(v, "1") == 0)) ret = serve_global(m, c, v[0] - '0');
        else ret = reply(c, 410, "{\"error\":\"stale\",\"message\":\"no such version\"}");
    } else if (strcmp(url, "/v1/update") == 0) {
        ret = serve_update(m, c, q);
    } else if (strcmp(url, "/v1/eval") == 0) {
        m->eval_calls++;
        snprintf(m->eval_json, sizeof m->eval_json, "%.*s", (int)q->body.n, q->body.s ? q->body.s : "");
        m->phase = 3;
        ret = reply(c, 200, "{\"status\":\"accepted\"}");
    } else if (strcmp(url, "/v1/fail") == 0) {
        m->fail_calls++;
        snprintf(m->fail_json, sizeof m->fail_json, "%.*s", (int)q->body.n, q->body.s ? q->body.s : "");
        m->phase = 4;
        ret = reply(c, 200, "{\"status\":\"accepted\"}");
    } else {
        ret = reply(c, 404, "{\"error\":\"not_found\",\"message\":\"no such endpoint\"}");
    }
    pthread_mutex_unlock(&m->mu);
    return ret;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    req_ctx *q = *con_cls;
    if (q) {
        free(q->body.s);
        free(q);
    }
    *con_cls = NULL;
}

static struct MHD_Daemon *mock_start(mock *m, int *port) {
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handler, m,
                                            MHD_OPTION_NOTIFY_COMPLETED, completed, m,
                                            MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_END);
    if (!d) return NULL;
    *port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
    return d;
}

/* The same mock over TLS, with a certificate and key in PEM. */
static struct MHD_Daemon *mock_start_tls(mock *m, int *port, const char *cert, const char *key) {
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_TLS, 0, NULL, NULL, handler, m,
                                            MHD_OPTION_NOTIFY_COMPLETED, completed, m,
                                            MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_HTTPS_MEM_CERT, cert,
                                            MHD_OPTION_END);
    if (!d) return NULL;
    *port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
    return d;
}

/* ------------------------------------------------------------------ the global versions */

static loom_tvec *g_manifest;

/* Two tensors whose names sort the other way round from the file order (the order that counts). */
static void make_manifest(void) {
    loom_tvec_create(&g_manifest);
    int64_t s1[2] = {64, 512}, s2[1] = {10000};
    loom_tvec_add(g_manifest, "z.first", 2, s1, LOOM_ROLE_SHARED);
    loom_tvec_add(g_manifest, "a.second", 1, s2, LOOM_ROLE_SHARED);
}

static float value_of(int v, size_t i) { return (float)(v + 1) * 0.001f * (float)((i * 7919) % 1000) - 0.3f; }
static float control_of(size_t i) { return -0.25f + 1e-5f * (float)i; }

static void mock_init(mock *m, int scenario, const char *work_dir) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->scenario = scenario;
    m->work_dir = work_dir;
    m->dim = loom_tvec_dim(g_manifest);
    float *x = malloc(m->dim * sizeof(float)), *ctl = malloc(m->dim * sizeof(float));
    for (int v = 0; v < 2; v++) {
        for (size_t i = 0; i < m->dim; i++) x[i] = value_of(v, i), ctl[i] = control_of(i);
        loom_st_writer *w;
        loom_st_writer_create(&w);
        loom_tvec_add_to(w, g_manifest, x, NULL);
        loom_tvec_io io = {.prefix = "control/"};
        if (v == 1) loom_tvec_add_to(w, g_manifest, ctl, &io);
        loom_st_writer_serialize(w, &m->g[v], &m->glen[v]);
        loom_st_writer_free(w);
        loom_sha256_hex(m->g[v], m->glen[v], m->gsha[v]);
    }
    free(x);
    free(ctl);
    m->v0_drop_at = (int)(m->glen[0] / 2 + 13);
}

static void mock_free(mock *m) {
    for (int v = 0; v < 2; v++) loom_free(m->g[v]);
    for (int i = 0; i < 8; i++) free(m->bodies[i]);
    free(m->all.s);
    pthread_mutex_destroy(&m->mu);
}

/* ------------------------------------------------------------------ the driver */

typedef struct {
    int setup_calls, fit_calls, eval_calls;
    int fit_fails;
    size_t dim;
    int global_ok[3], control_ok[3], control_null[3];
    float *out;              /* dim values + the marker right behind them */
    float *ctl_out;
    float *sent[3];          /* copies of what fit produced, per round */
    loom_netclient_hello hello; /* its strings are valid during the run only: checked in setup */
    int hello_run_ok, hello_strings_ok;
} driver;

static int drv_setup(void *ud, const loom_netclient_hello *h) {
    driver *d = ud;
    d->setup_calls++;
    d->hello = *h;
    d->hello_run_ok = h->run_json && strstr(h->run_json, "\"fedavg\"") != NULL && h->model_config_json == NULL;
    d->hello_strings_ok = strcmp(h->mode, "sync") == 0 && strcmp(h->compress, "none") == 0 && h->base_sha256 == NULL;
    d->dim = h->dim;
    return LOOM_OK;
}

static int drv_fit(void *ud, const loom_netclient_task *t, const float *global, const float *control, loom_update *u,
                   loom_codec_opts *co) {
    driver *d = ud;
    d->fit_calls++;
    if (d->fit_fails) return loom_error(LOOM_EIO, "the trainer ran out of memory at step 3");
    int r = t->round;
    if (r < 1 || r > 2) return loom_error(LOOM_EINVAL, "unexpected round %d", r);
    int ok = 1, cok = 1;
    for (size_t i = 0; i < d->dim; i++) {
        if (global[i] != value_of((int)t->version, i)) ok = 0;
        if (control && control[i] != control_of(i)) cok = 0;
    }
    d->global_ok[r] = ok;
    d->control_ok[r] = control && cok;
    d->control_null[r] = control == NULL;
    for (size_t i = 0; i < d->dim; i++) d->out[i] = global[i] * 0.5f + (float)r + 1e-3f * (float)(i % 97);
    free(d->sent[r]);
    d->sent[r] = malloc(d->dim * sizeof(float));
    memcpy(d->sent[r], d->out, d->dim * sizeof(float));
    u->values = d->out;
    u->len = d->dim;
    u->examples = 7 + (uint64_t)r;
    u->loss = 1.25 * r;
    u->tokens = 99;
    if (control) {
        for (size_t i = 0; i < d->dim; i++) d->ctl_out[i] = control[i] - 0.125f;
        u->control = d->ctl_out;
    }
    co->codec = LOOM_CODEC_F32;
    return LOOM_OK;
}

static int drv_eval(void *ud, const loom_netclient_task *t, const float *global, loom_eval_result *r) {
    driver *d = ud;
    d->eval_calls++;
    r->loss_sum = 3.5;
    r->tokens = 10;
    r->correct = 4;
    r->count = 10;
    int ok = 1;
    for (size_t i = 0; i < d->dim; i++)
        if (global[i] != value_of((int)t->version, i)) ok = 0;
    d->global_ok[0] = ok;
    return LOOM_OK;
}

static void driver_init(driver *d, size_t dim) {
    memset(d, 0, sizeof *d);
    d->out = calloc(dim + 64, sizeof(float));
    memcpy(d->out + dim, MARKER, sizeof MARKER); /* the "training text" lies right behind the update */
    d->ctl_out = calloc(dim, sizeof(float));
}

static void driver_free(driver *d) {
    free(d->out);
    free(d->ctl_out);
    for (int r = 0; r < 3; r++) free(d->sent[r]);
}

static void config_init(loom_netclient_config *c, char *url, int port, const char *work_dir, driver *d) {
    memset(c, 0, sizeof *c);
    snprintf(url, 64, "http://127.0.0.1:%d/", port);
    c->url = url;
    c->name = "alice";
    c->token = TOKEN;
    c->work_dir = work_dir;
    c->setup = drv_setup;
    c->fit = drv_fit;
    c->evaluate = drv_eval;
    c->ud = d;
    c->give_up_s = 20;
    c->version = "0.1.0-test";
}

static int mem_has(const loom_strbuf *b, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; b->s && i + k <= b->n; i++)
        if (memcmp(b->s + i, needle, k) == 0) return 1;
    return 0;
}

static int file_exists(const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* Decodes body i and compares it with what fit produced in round r. */
static void check_body(mock *m, int i, driver *d, int r, int with_control, uint64_t version) {
    loom_update u;
    float *vals = malloc(m->dim * sizeof(float)), *ctl = malloc(m->dim * sizeof(float));
    int rc = loom_update_decode(m->bodies[i], m->body_len[i], m->dim, &u, vals, ctl);
    CHECK(rc == LOOM_OK, "update %d decodes: %s", i, loom_errmsg());
    if (rc == LOOM_OK) {
        CHECK(u.run_id == UINT64_C(0x00c0ffee12345678), "run id %016llx", (unsigned long long)u.run_id);
        CHECK(u.round == r && u.version == version && u.client == 1, "round %d version %llu client %d", u.round,
              (unsigned long long)u.version, u.client);
        CHECK(u.examples == 7u + (unsigned)r && u.loss == 1.25 * r && u.tokens == 99, "metadata %llu %g %lld",
              (unsigned long long)u.examples, u.loss, (long long)u.tokens);
        CHECK(u.len == m->dim && d->sent[r] && memcmp(vals, d->sent[r], m->dim * sizeof(float)) == 0,
              "update %d values are exactly the fit's", i);
        if (with_control) {
            int ok = u.control != NULL;
            for (size_t k = 0; ok && k < m->dim; k++) ok = ctl[k] == control_of(k) - 0.125f;
            CHECK(ok, "update %d carries the control delta", i);
        } else {
            CHECK(u.control == NULL, "update %d has no control delta", i);
        }
    }
    char key[65];
    loom_sha256_hex(m->bodies[i], m->body_len[i], key);
    CHECK(strcmp(m->keys[i], key) == 0, "Idempotency-Key %s is the body's SHA-256 %s", m->keys[i], key);
    CHECK(strcmp(m->shas[i], key) == 0, "X-Loom-SHA256 %s", m->shas[i]);
    free(vals);
    free(ctl);
}

/* ------------------------------------------------------------------ scenarios */

static void test_main_run(void) {
    char dir[64];
    test_tmpdir(dir, sizeof dir);
    mock m;
    mock_init(&m, SC_MAIN, dir);
    int port;
    struct MHD_Daemon *daemon = mock_start(&m, &port);
    CHECK(daemon != NULL, "mock server starts");
    if (!daemon) return;
    driver d;
    driver_init(&d, m.dim);
    loom_netclient_config c;
    char url[64];
    config_init(&c, url, port, dir, &d);
    /* a stale file under the name of version 0 (another run's): never trusted without its hash */
    char stale[128];
    snprintf(stale, sizeof stale, "%s/global-0.safetensors", dir);
    CHECK_OK(loom_write_file_atomic(stale, "not this version", 16));
    int rc = loom_netclient_run(&c);
    MHD_stop_daemon(daemon);
    CHECK(rc == LOOM_OK, "the scripted run completes: %s", loom_errmsg());
    CHECK(m.bad_auth == 0, "every request carries the bearer token (%d did not)", m.bad_auth);
    CHECK(m.hello_calls == 1 && d.setup_calls == 1, "one hello (%d), one setup (%d)", m.hello_calls, d.setup_calls);
    CHECK(strstr(m.hello_json, "\"name\":\"alice\"") && strstr(m.hello_json, "\"loom\":\"0.1.0-test\"") &&
          strstr(m.hello_json, "\"base_sha256\":null"), "hello body %s", m.hello_json);
    CHECK(d.hello.run_id == UINT64_C(0x00c0ffee12345678) && d.hello.client == 1 && d.hello.n_clients == 3 &&
          d.hello.rounds == 2 && d.hello.dim == m.dim && d.hello_strings_ok, "hello decoded");
    CHECK(d.hello_run_ok, "the run configuration reaches setup");
    /* the cut download resumed where the bytes stopped */
    long long from = -1;
    sscanf(m.range[1], "bytes=%lld-", &from);
    CHECK(m.range[0][0] == 0, "the first download asks for the whole body (%s)", m.range[0]);
    CHECK(from > 0 && from <= m.v0_drop_at, "the second asks for the rest: \"%s\" (cut at %d)", m.range[1], m.v0_drop_at);
    CHECK(m.global_calls[0] == 2, "version 0: %d requests (cut, resumed)", m.global_calls[0]);
    CHECK(m.global_calls[1] == 2, "version 1: %d requests (corrupt, good; round 2 reuses it)", m.global_calls[1]);
    CHECK(d.global_ok[1] && d.global_ok[2] && d.global_ok[0], "fit and evaluate see the served versions (%d %d %d)",
          d.global_ok[1], d.global_ok[2], d.global_ok[0]);
    CHECK(d.control_null[1] && d.control_ok[2], "control: none in version 0, the served one in version 1");
    CHECK(d.fit_calls == 2 && d.eval_calls == 1, "fit %d, evaluate %d", d.fit_calls, d.eval_calls);
    /* two 503s, then accepted: three identical uploads under one key; then round 2 (409) */
    CHECK(m.update_calls == 4, "%d uploads (503, 503, 200, 409)", m.update_calls);
    for (int i = 0; i < 3 && i < m.update_calls; i++) {
        check_body(&m, i, &d, 1, 0, 0);
        CHECK(strcmp(m.keys[i], m.keys[0]) == 0, "retry %d keeps the key", i);
        CHECK(m.pending_ok[i], "pending-1.upd held the body before upload %d", i);
    }
    if (m.update_calls >= 4) {
        check_body(&m, 3, &d, 2, 1, 1);
        CHECK(m.pending_ok[3], "pending-2.upd held the body");
    }
    CHECK(strstr(m.eval_json, "\"round\":1") && strstr(m.eval_json, "\"loss_sum\":3.5") &&
          strstr(m.eval_json, "\"tokens\":10") && strstr(m.eval_json, "\"correct\":4") && strstr(m.eval_json, "\"count\":10"),
          "eval body %s", m.eval_json);
    CHECK(!file_exists(dir, "pending-1.upd") && !file_exists(dir, "pending-2.upd"), "no pending upload is left");
    CHECK(file_exists(dir, "global-1.safetensors") && !file_exists(dir, "global-0.safetensors") &&
          !file_exists(dir, "global-0.part") && !file_exists(dir, "global-1.part"),
          "only the last verified version stays in the work directory");
    CHECK(!mem_has(&m.all, MARKER) && !mem_has(&m.all, "TRAINING TEXT"), "no training text in any request");
    driver_free(&d);
    mock_free(&m);
    test_rmtree(dir);
}

static void test_unauthorized(void) {
    char dir[64];
    test_tmpdir(dir, sizeof dir);
    mock m;
    mock_init(&m, SC_AUTH, dir);
    int port;
    struct MHD_Daemon *daemon = mock_start(&m, &port);
    driver d;
    driver_init(&d, m.dim);
    loom_netclient_config c;
    char url[64];
    config_init(&c, url, port, dir, &d);
    double t0 = loom_now();
    int rc = loom_netclient_run(&c);
    MHD_stop_daemon(daemon);
    CHECK(rc != LOOM_OK && strstr(loom_errmsg(), "unknown or revoked token") && strstr(loom_errmsg(), "401"),
          "401 ends the run with the server's message: %s", loom_errmsg());
    CHECK(m.task_calls == 2 && loom_now() - t0 < 5, "no retry after a 401 (%d polls)", m.task_calls);
    mock_free(&m);
    /* a wrong token: the hello itself is refused */
    mock_init(&m, SC_MAIN, dir);
    daemon = mock_start(&m, &port);
    config_init(&c, url, port, dir, &d);
    c.token = "tok-wrong";
    d.setup_calls = 0;
    rc = loom_netclient_run(&c);
    MHD_stop_daemon(daemon);
    CHECK(rc != LOOM_OK && strstr(loom_errmsg(), "hello") && strstr(loom_errmsg(), "missing token"),
          "a refused hello fails: %s", loom_errmsg());
    CHECK(d.setup_calls == 0, "setup is not called after a refused hello");
    mock_free(&m);
    /* hello answers that break the protocol: refused with the field named, setup never called */
    const char *broken[][2] = {
        {"{\"run_id\":\"" RUN_ID "\",\"client\":0,\"clients\":2,\"rounds\":2,\"dim\":0,\"mode\":\"sync\"}", "\"dim\""},
        {"{\"run_id\":\"xyz\",\"client\":0,\"clients\":2,\"rounds\":2,\"dim\":5,\"mode\":\"sync\"}", "\"run_id\""},
        {"{\"run_id\":\"" RUN_ID "\",\"client\":2,\"clients\":2,\"rounds\":2,\"dim\":5,\"mode\":\"sync\"}", "\"client\""},
        {"{\"run_id\":\"" RUN_ID "\",\"client\":0,\"clients\":2,\"rounds\":2,\"dim\":5}", "\"mode\""},
        {"[1, 2]", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof broken / sizeof *broken; i++) {
        mock_init(&m, SC_MAIN, dir);
        m.hello_answer = broken[i][0];
        daemon = mock_start(&m, &port);
        config_init(&c, url, port, dir, &d);
        d.setup_calls = 0;
        rc = loom_netclient_run(&c);
        MHD_stop_daemon(daemon);
        CHECK(rc == LOOM_EFORMAT && strstr(loom_errmsg(), broken[i][1]) && d.setup_calls == 0 && m.task_calls == 0,
              "broken hello %zu: %d %s", i, rc, loom_errmsg());
        mock_free(&m);
    }
    /* an unreachable server: given up after give_up_s */
    mock_init(&m, SC_MAIN, dir);
    daemon = mock_start(&m, &port);
    MHD_stop_daemon(daemon);
    config_init(&c, url, port, dir, &d);
    c.give_up_s = 1;
    t0 = loom_now();
    rc = loom_netclient_run(&c);
    double took = loom_now() - t0;
    CHECK(rc == LOOM_EIO && strstr(loom_errmsg(), "giving up"), "unreachable: %s", loom_errmsg());
    CHECK(took >= 1 && took < 6, "gave up after %.1f s", took);
    /* bad configurations are refused up front */
    config_init(&c, url, port, dir, &d);
    c.name = "../etc";
    CHECK(loom_netclient_run(&c) == LOOM_EINVAL && strstr(loom_errmsg(), "invalid name"), "%s", loom_errmsg());
    config_init(&c, url, port, dir, &d);
    c.token = "abc\r\nX-Evil: 1";
    CHECK(loom_netclient_run(&c) == LOOM_EINVAL && strstr(loom_errmsg(), "control character"), "%s", loom_errmsg());
    config_init(&c, url, port, dir, &d);
    c.url = "ftp://127.0.0.1";
    CHECK(loom_netclient_run(&c) == LOOM_EINVAL && strstr(loom_errmsg(), "https://"), "%s", loom_errmsg());
    driver_free(&d);
    mock_free(&m);
    test_rmtree(dir);
}

static void test_fit_failure(void) {
    char dir[64];
    test_tmpdir(dir, sizeof dir);
    mock m;
    mock_init(&m, SC_FAIL, dir);
    m.phase = 1;
    int port;
    struct MHD_Daemon *daemon = mock_start(&m, &port);
    driver d;
    driver_init(&d, m.dim);
    d.fit_fails = 1;
    loom_netclient_config c;
    char url[64];
    config_init(&c, url, port, dir, &d);
    int rc = loom_netclient_run(&c);
    MHD_stop_daemon(daemon);
    CHECK(rc == LOOM_OK, "a failing fit does not end the run: %s", loom_errmsg());
    CHECK(m.fail_calls == 1 && m.update_calls == 0, "one failure report (%d), no upload (%d)", m.fail_calls, m.update_calls);
    CHECK(strstr(m.fail_json, "\"round\":1") && strstr(m.fail_json, "ran out of memory at step 3"), "fail body %s",
          m.fail_json);
    driver_free(&d);
    mock_free(&m);
    test_rmtree(dir);
}

/* Stopped while the server answers 503, then started again: the pending update goes out again as is. */
static void test_restart_resends_pending(void) {
    char dir[64];
    test_tmpdir(dir, sizeof dir);
    volatile int stop = 0;
    mock m;
    mock_init(&m, SC_STOP, dir);
    m.phase = 1;
    m.stop = &stop;
    m.ignore_range = 1; /* the cut download is answered 200 from byte 0: the client starts the file again */
    int port;
    struct MHD_Daemon *daemon = mock_start(&m, &port);
    driver d;
    driver_init(&d, m.dim);
    loom_netclient_config c;
    char url[64];
    config_init(&c, url, port, dir, &d);
    c.stop = &stop;
    int rc = loom_netclient_run(&c);
    MHD_stop_daemon(daemon);
    CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "stopped"), "stopped: %d %s", rc, loom_errmsg());
    CHECK(d.fit_calls == 1 && m.update_calls == 1, "trained once (%d), one upload (%d)", d.fit_calls, m.update_calls);
    CHECK(m.global_calls[0] == 2 && d.global_ok[1], "a 200 answer to a Range request restarts the file (%d requests)",
          m.global_calls[0]);
    CHECK(file_exists(dir, "pending-1.upd"), "the unacknowledged update stays pending");
    char key1[65];
    snprintf(key1, sizeof key1, "%s", m.keys[0]);
    uint8_t *body1 = m.bodies[0];
    size_t len1 = m.body_len[0];
    m.bodies[0] = NULL;
    mock_free(&m);

    mock m2;
    mock_init(&m2, SC_RESUME, dir);
    m2.phase = 1;
    daemon = mock_start(&m2, &port);
    driver d2;
    driver_init(&d2, m2.dim);
    config_init(&c, url, port, dir, &d2);
    rc = loom_netclient_run(&c);
    MHD_stop_daemon(daemon);
    CHECK(rc == LOOM_OK, "the restarted client finishes: %s", loom_errmsg());
    CHECK(d2.fit_calls == 0, "no training again (%d fits)", d2.fit_calls);
    CHECK(m2.global_calls[0] == 0, "no download again (%d)", m2.global_calls[0]);
    CHECK(m2.update_calls == 1 && strcmp(m2.keys[0], key1) == 0, "the same key again: %s vs %s", m2.keys[0], key1);
    CHECK(m2.update_calls == 1 && m2.body_len[0] == len1 && memcmp(m2.bodies[0], body1, len1) == 0, "the same bytes again");
    CHECK(!file_exists(dir, "pending-1.upd"), "the pending update is gone once accepted");
    free(body1);
    driver_free(&d);
    driver_free(&d2);
    mock_free(&m2);
    test_rmtree(dir);
}

/* A self-signed ECDSA certificate for 127.0.0.1 (PEM, NUL-terminated; release with gnutls_free). */
static int make_cert(char **cert, char **key) {
    gnutls_x509_privkey_t k;
    gnutls_x509_crt_t c;
    gnutls_datum_t dc = {0}, dk = {0};
    unsigned char ip[4];
    inet_pton(AF_INET, "127.0.0.1", ip);
    time_t now = time(NULL);
    int ok = gnutls_x509_privkey_init(&k) == 0 && gnutls_x509_crt_init(&c) == 0;
    ok = ok && gnutls_x509_privkey_generate(k, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0) == 0;
    ok = ok && gnutls_x509_crt_set_version(c, 3) == 0 && gnutls_x509_crt_set_serial(c, "\x01\x02", 2) == 0 &&
         gnutls_x509_crt_set_activation_time(c, now - 3600) == 0 &&
         gnutls_x509_crt_set_expiration_time(c, now + 86400) == 0 &&
         gnutls_x509_crt_set_dn_by_oid(c, GNUTLS_OID_X520_COMMON_NAME, 0, "127.0.0.1", 9) == 0 &&
         gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_IPADDRESS, ip, 4, GNUTLS_FSAN_SET) == 0 &&
         gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_DNSNAME, "localhost", 9, GNUTLS_FSAN_APPEND) == 0 &&
         gnutls_x509_crt_set_basic_constraints(c, 1, -1) == 0 && gnutls_x509_crt_set_key(c, k) == 0 &&
         gnutls_x509_crt_sign2(c, c, k, GNUTLS_DIG_SHA256, 0) == 0 &&
         gnutls_x509_crt_export2(c, GNUTLS_X509_FMT_PEM, &dc) == 0 &&
         gnutls_x509_privkey_export2(k, GNUTLS_X509_FMT_PEM, &dk) == 0;
    gnutls_x509_crt_deinit(c);
    gnutls_x509_privkey_deinit(k);
    *cert = ok ? gnutls_realloc(dc.data, dc.size + 1) : NULL;
    *key = ok ? gnutls_realloc(dk.data, dk.size + 1) : NULL;
    if (!ok || !*cert || !*key) return -1;
    (*cert)[dc.size] = 0;
    (*key)[dk.size] = 0;
    return 0;
}

/* The whole scripted run over TLS with the server's certificate as CA; refused without it. */
static void test_tls(void) {
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        fprintf(stderr, "SKIP test_tls: libmicrohttpd without TLS\n");
        return;
    }
    char *cert, *key, *other_cert, *other_key;
    CHECK(make_cert(&cert, &key) == 0 && make_cert(&other_cert, &other_key) == 0, "certificates generated");
    char dir[64], ca[128], wrong[128];
    test_tmpdir(dir, sizeof dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    snprintf(wrong, sizeof wrong, "%s/other.pem", dir);
    CHECK_OK(loom_write_file_atomic(ca, cert, strlen(cert)));
    CHECK_OK(loom_write_file_atomic(wrong, other_cert, strlen(other_cert)));
    char work[128];
    snprintf(work, sizeof work, "%s/state/alice", dir);
    mock m;
    mock_init(&m, SC_MAIN, work); /* state/ does not exist yet: the client makes it */
    int port;
    struct MHD_Daemon *daemon = mock_start_tls(&m, &port, cert, key);
    CHECK(daemon != NULL, "TLS mock server starts");
    if (!daemon) return;
    driver d;
    driver_init(&d, m.dim);
    loom_netclient_config c;
    char url[64];
    config_init(&c, url, port, work, &d);
    snprintf(url, sizeof url, "https://127.0.0.1:%d", port);
    /* not trusted: the system's CAs, then another certificate; each fails at once, nothing is sent */
    const char *cas[2] = {NULL, wrong};
    for (int i = 0; i < 2; i++) {
        c.ca_cert = cas[i];
        double t0 = loom_now();
        int rc = loom_netclient_run(&c);
        CHECK(rc == LOOM_EIO && strstr(loom_errmsg(), "hello") && strcasestr(loom_errmsg(), "certificate"),
              "untrusted server (%s): %s", cas[i] ? "other CA" : "system CAs", loom_errmsg());
        CHECK(loom_now() - t0 < 5, "a TLS verification failure is not retried");
    }
    CHECK(m.hello_calls == 0 && m.all.n == 0, "nothing reached the untrusted server (%d hellos)", m.hello_calls);
    c.ca_cert = ca;
    int rc = loom_netclient_run(&c);
    MHD_stop_daemon(daemon);
    CHECK(rc == LOOM_OK, "the scripted run completes over TLS: %s", loom_errmsg());
    CHECK(m.update_calls == 4 && m.global_calls[0] == 2 && m.eval_calls == 1, "over TLS: %d uploads, %d downloads of v0",
          m.update_calls, m.global_calls[0]);
    if (m.update_calls >= 3) check_body(&m, 2, &d, 1, 0, 0);
    CHECK(!mem_has(&m.all, MARKER), "no training text in any request over TLS");
    driver_free(&d);
    mock_free(&m);
    gnutls_free(cert);
    gnutls_free(key);
    gnutls_free(other_cert);
    gnutls_free(other_key);
    test_rmtree(dir);
}

/* ------------------------------------------------------------------ against the real server */

#define E2E_DIM 5000
static const double e2e_delta[2] = {0.5, -0.25};
static const uint64_t e2e_examples[2] = {10, 30};

static double e2e_init(size_t i) { return 0.01 * (double)(i % 101) - 0.5; }
/* The global model after r rounds of FedAvg over the two clients' constant deltas, in double. */
static double e2e_expect(size_t i, int r) {
    double mean = (e2e_delta[0] * e2e_examples[0] + e2e_delta[1] * e2e_examples[1]) / (double)(e2e_examples[0] + e2e_examples[1]);
    return e2e_init(i) + r * mean;
}

typedef struct {
    int who, fits, global_ok;
    float *out;
} e2e_driver;

static int e2e_fit(void *ud, const loom_netclient_task *t, const float *global, const float *control, loom_update *u,
                   loom_codec_opts *co) {
    e2e_driver *d = ud;
    d->fits++;
    int ok = t->version == (uint64_t)(t->round - 1);
    for (size_t i = 0; i < E2E_DIM; i++) ok &= fabs(global[i] - e2e_expect(i, (int)t->version)) < 1e-5;
    d->global_ok += ok;
    for (size_t i = 0; i < E2E_DIM; i++) d->out[i] = (float)e2e_delta[d->who];
    u->values = d->out;
    u->examples = e2e_examples[d->who];
    u->loss = 1.0 + d->who;
    u->tokens = 100;
    return LOOM_OK;
}

static int e2e_eval(void *ud, const loom_netclient_task *t, const float *global, loom_eval_result *r) {
    r->loss_sum = 1;
    r->tokens = 1;
    r->count = 1;
    return LOOM_OK;
}

typedef struct {
    loom_server_config c;
    float *out;
    int rc, port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} e2e_server;

static void e2e_on_listen(void *ud, int port) {
    e2e_server *s = ud;
    pthread_mutex_lock(&s->mu);
    s->port = port;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *e2e_server_main(void *p) {
    e2e_server *s = p;
    s->rc = loom_server_run(&s->c, s->out);
    pthread_mutex_lock(&s->mu);
    if (!s->port) s->port = -1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

typedef struct {
    loom_netclient_config c;
    int rc;
    char msg[512];
} e2e_client;

static void *e2e_client_main(void *p) {
    e2e_client *x = p;
    x->rc = loom_netclient_run(&x->c);
    snprintf(x->msg, sizeof x->msg, "%s", x->rc ? loom_errmsg() : "");
    return NULL;
}

/* Server (loom_server_run over TLS with its development certificate) and two clients, 2 rounds. */
static void test_against_server(void) {
    char dir[64], state[128], ca[160], work[2][160], url[64];
    test_tmpdir(dir, sizeof dir);
    snprintf(state, sizeof state, "%s/state", dir);
    const char *names[2] = {"alice", "bob"};
    char tok[2][65];
    for (int k = 0; k < 2; k++) CHECK_OK(loom_server_add_client(state, names[k], 0, tok[k]));
    loom_tvec *m;
    loom_tvec_create(&m);
    int64_t s1[2] = {40, 100}, s2[1] = {1000};
    loom_tvec_add(m, "b.layer", 2, s1, LOOM_ROLE_SHARED);
    loom_tvec_add(m, "a.layer", 1, s2, LOOM_ROLE_SHARED);
    float *init = malloc(E2E_DIM * sizeof(float));
    for (size_t i = 0; i < E2E_DIM; i++) init[i] = (float)e2e_init(i);
    e2e_server sv;
    memset(&sv, 0, sizeof sv);
    sv.out = calloc(E2E_DIM, sizeof(float));
    pthread_mutex_init(&sv.mu, NULL);
    pthread_cond_init(&sv.cv, NULL);
    loom_server_defaults(&sv.c);
    sv.c.state_dir = state;
    sv.c.listen = "127.0.0.1:0";
    sv.c.engine.dim = E2E_DIM;
    sv.c.engine.init = init;
    sv.c.engine.rounds = 2;
    sv.c.engine.sample = 2;
    sv.c.engine.seed = 5;
    sv.c.engine.pipe.strategy = "fedavg";
    loom_strategy_defaults("fedavg", &sv.c.engine.pipe.sp);
    sv.c.manifest = m;
    sv.c.run_json = "{\"strategy\": \"fedavg\", \"rounds\": 2}";
    sv.c.poll_ms = 20;
    sv.c.threads = 2;
    sv.c.no_eval = 1;
    sv.c.done_grace_s = 5;
    sv.c.on_listen = e2e_on_listen;
    sv.c.ud = &sv;
    pthread_t st, ct[2];
    pthread_create(&st, NULL, e2e_server_main, &sv);
    pthread_mutex_lock(&sv.mu);
    while (sv.port == 0) pthread_cond_wait(&sv.cv, &sv.mu);
    pthread_mutex_unlock(&sv.mu);
    CHECK(sv.port > 0, "the server listens: %s", loom_errmsg());
    snprintf(url, sizeof url, "https://127.0.0.1:%d", sv.port);
    snprintf(ca, sizeof ca, "%s/tls/cert.pem", state);
    e2e_client cl[2];
    e2e_driver dr[2];
    for (int k = 0; k < 2 && sv.port > 0; k++) {
        snprintf(work[k], sizeof work[k], "%s/work-%s", dir, names[k]);
        dr[k] = (e2e_driver){.who = k, .out = malloc(E2E_DIM * sizeof(float))};
        memset(&cl[k], 0, sizeof cl[k]);
        cl[k].c = (loom_netclient_config){.url = url, .name = names[k], .token = tok[k], .ca_cert = ca,
                                          .work_dir = work[k], .fit = e2e_fit, .evaluate = e2e_eval, .ud = &dr[k],
                                          .give_up_s = 30, .version = "test"};
        pthread_create(&ct[k], NULL, e2e_client_main, &cl[k]);
    }
    for (int k = 0; k < 2 && sv.port > 0; k++) {
        pthread_join(ct[k], NULL);
        CHECK(cl[k].rc == LOOM_OK, "client %s ends: %s", names[k], cl[k].msg);
        CHECK(dr[k].fits == 2 && dr[k].global_ok == 2, "client %s trained twice (%d) on the right globals (%d)",
              names[k], dr[k].fits, dr[k].global_ok);
        free(dr[k].out);
    }
    pthread_join(st, NULL);
    CHECK(sv.rc == LOOM_OK, "the server ends the run");
    int ok = 1;
    for (size_t i = 0; i < E2E_DIM; i++) ok &= fabs(sv.out[i] - e2e_expect(i, 2)) < 1e-5;
    CHECK(ok, "the final model is FedAvg of the uploads: %.7g vs %.7g", sv.out[0], e2e_expect(0, 2));
    free(sv.out);
    free(init);
    loom_tvec_free(m);
    test_rmtree(dir);
}

/* ------------------------------------------------------------------ secure aggregation against the real server */

/* Three clients with constant deltas on the encoding's 2^-24 grid, so that the exact secure sum and
 * FedAvg in double give the same numbers. */
#define SA_CLIENTS 3
static const double sa_delta[SA_CLIENTS] = {0.5, -0.25, 0.375};
static const uint64_t sa_examples[SA_CLIENTS] = {10, 30, 20};

/* FedAvg's step over the clients in mask (bit k: client k's input is in the round's sum), in double. */
static double sa_mean(unsigned mask) {
    double s = 0, w = 0;
    for (int k = 0; k < SA_CLIENTS; k++)
        if (mask & (1u << k)) {
            s += sa_delta[k] * (double)sa_examples[k];
            w += (double)sa_examples[k];
        }
    return w > 0 ? s / w : 0;
}

typedef struct {
    int who, fits, secure_tasks, stop_round, stop_phase;
    volatile int stop;
    float *out;
} sa_driver;

static int sa_setup(void *ud, const loom_netclient_hello *h) {
    sa_driver *d = ud;
    return h->secagg ? LOOM_OK : loom_error(LOOM_EINVAL, "client %d: hello does not say secure aggregation", d->who);
}

static int sa_fit(void *ud, const loom_netclient_task *t, const float *global, const float *control, loom_update *u,
                  loom_codec_opts *co) {
    sa_driver *d = ud;
    d->fits++;
    d->secure_tasks += t->secagg;
    for (size_t i = 0; i < E2E_DIM; i++) d->out[i] = (float)sa_delta[d->who];
    u->values = d->out;
    u->examples = sa_examples[d->who];
    u->loss = 1.0 + d->who;
    u->tokens = 100;
    return LOOM_OK;
}

/* The client vanishes once the server accepted its phase-stop_phase message of round stop_round. */
static void sa_sent(void *ud, int round, int phase) {
    sa_driver *d = ud;
    if (round == d->stop_round && phase == d->stop_phase) d->stop = 1;
}

/* A server with secure aggregation (t = 2 of 3) over TLS and three clients, 2 rounds; client 2 stops
 * after phase stop_phase of round 1 (-1: never). mask1, mask2: whose inputs each round's sum holds. */
static int g_aborts; /* log lines announcing an abort for too few clients (quiet_log counts them) */

static void secure_run(int started, int stop_phase, unsigned mask1, unsigned mask2, const char *what) {
    char dir[64], state[128], ca[160], work[SA_CLIENTS][160], url[64];
    test_tmpdir(dir, sizeof dir);
    snprintf(state, sizeof state, "%s/state", dir);
    const char *names[SA_CLIENTS] = {"alice", "bob", "carol"};
    char tok[SA_CLIENTS][65];
    for (int k = 0; k < SA_CLIENTS; k++) CHECK_OK(loom_server_add_client(state, names[k], 0, tok[k]));
    float *init = malloc(E2E_DIM * sizeof(float));
    for (size_t i = 0; i < E2E_DIM; i++) init[i] = (float)e2e_init(i);
    e2e_server sv;
    memset(&sv, 0, sizeof sv);
    sv.out = calloc(E2E_DIM, sizeof(float));
    pthread_mutex_init(&sv.mu, NULL);
    pthread_cond_init(&sv.cv, NULL);
    loom_server_defaults(&sv.c);
    sv.c.state_dir = state;
    sv.c.listen = "127.0.0.1:0";
    sv.c.engine.dim = E2E_DIM;
    sv.c.engine.init = init;
    sv.c.engine.rounds = 2;
    sv.c.engine.sample = SA_CLIENTS;
    sv.c.engine.seed = 11;
    sv.c.engine.pipe.strategy = "fedavg";
    loom_strategy_defaults("fedavg", &sv.c.engine.pipe.sp);
    sv.c.run_json = "{\"strategy\": \"fedavg\", \"rounds\": 2}";
    sv.c.poll_ms = 20;
    sv.c.threads = 4;
    sv.c.no_eval = 1;
    sv.c.done_grace_s = 0.5;
    sv.c.secagg = 1;
    sv.c.secagg_threshold = 2;
    sv.c.secagg_fit_timeout_s = 1.0;
    sv.c.secagg_phase_timeout_s = 1.0;
    sv.c.min_clients = started;
    sv.c.on_listen = e2e_on_listen;
    sv.c.ud = &sv;
    pthread_t st, ct[SA_CLIENTS];
    pthread_create(&st, NULL, e2e_server_main, &sv);
    pthread_mutex_lock(&sv.mu);
    while (sv.port == 0) pthread_cond_wait(&sv.cv, &sv.mu);
    pthread_mutex_unlock(&sv.mu);
    CHECK(sv.port > 0, "%s: the server listens: %s", what, loom_errmsg());
    snprintf(url, sizeof url, "https://127.0.0.1:%d", sv.port);
    snprintf(ca, sizeof ca, "%s/tls/cert.pem", state);
    e2e_client cl[SA_CLIENTS];
    sa_driver dr[SA_CLIENTS];
    for (int k = 0; k < started && sv.port > 0; k++) {
        snprintf(work[k], sizeof work[k], "%s/work-%s", dir, names[k]);
        memset(&dr[k], 0, sizeof dr[k]);
        dr[k].who = k;
        dr[k].out = malloc(E2E_DIM * sizeof(float));
        dr[k].stop_round = k == 2 ? 1 : -1;
        dr[k].stop_phase = stop_phase;
        memset(&cl[k], 0, sizeof cl[k]);
        cl[k].c = (loom_netclient_config){.url = url, .name = names[k], .token = tok[k], .ca_cert = ca,
                                          .work_dir = work[k], .setup = sa_setup, .fit = sa_fit, .evaluate = e2e_eval,
                                          .ud = &dr[k], .give_up_s = 30, .version = "test", .stop = &dr[k].stop,
                                          .on_secagg_sent = sa_sent};
        pthread_create(&ct[k], NULL, e2e_client_main, &cl[k]);
    }
    for (int k = 0; k < started && sv.port > 0; k++) {
        pthread_join(ct[k], NULL);
        int stops = k == 2 && stop_phase >= 0;
        CHECK(stops ? cl[k].rc == LOOM_ESTATE : cl[k].rc == LOOM_OK, "%s: client %s ends%s: %s", what, names[k],
              stops ? " when it vanishes" : "", cl[k].msg);
        CHECK(dr[k].fits == (stops ? 1 : 2) && dr[k].secure_tasks == dr[k].fits,
              "%s: client %s trained %d secure tasks (%d)", what, names[k], dr[k].fits, dr[k].secure_tasks);
        free(dr[k].out);
    }
    pthread_join(st, NULL);
    CHECK(sv.rc == LOOM_OK, "%s: the server ends the run", what);
    int ok = 1;
    double want0 = 0;
    for (size_t i = 0; i < E2E_DIM; i++) {
        double want = (double)init[i] + sa_mean(mask1) + sa_mean(mask2);
        if (i == 0) want0 = want;
        ok &= fabs(sv.out[i] - want) < 1e-6;
    }
    CHECK(ok, "%s: the final model is FedAvg of exactly the inputs the sums hold: %.9g vs %.9g", what, sv.out[0], want0);
    free(sv.out);
    free(init);
    test_rmtree(dir);
}

static void test_secure_against_server(void) {
    secure_run(3, -1, 7, 7, "secure, no dropout");
    /* carol vanishes before masking: the others' shares remove her pairwise masks; round 2 is without her */
    secure_run(3, 1, 3, 3, "secure, carol lost before masking");
    /* carol vanishes after masking: her input is unmasked with the others' shares */
    secure_run(3, 2, 7, 3, "secure, carol lost after masking");
    /* one client of the t = 2 needed: both rounds abort in phase 0 and the model stays */
    g_aborts = 0;
    secure_run(1, -1, 0, 0, "secure, too few clients");
    int aborts = __atomic_load_n(&g_aborts, __ATOMIC_RELAXED);
    CHECK(aborts == 2, "too few clients: both rounds aborted with the documented message (%d)", aborts);
}

static void quiet_log(int level, const char *msg, void *ud) {
    if (!strncmp(msg, "round ", 6) && strstr(msg, ": secure aggregation aborted in phase 0: only 1 of the 2 clients needed"))
        __atomic_add_fetch(&g_aborts, 1, __ATOMIC_RELAXED); /* the server's line, not the clients' echo of it */
    if (getenv("LOOM_TEST_VERBOSE")) fprintf(stderr, "[%d] %s\n", level, msg);
}

int main(void) {
    alarm(120); /* a client that never ends fails the test instead of hanging it */
    loom_set_log(quiet_log, NULL, LOOM_DEBUG);
    make_manifest();
    test_main_run();
    test_unauthorized();
    test_fit_failure();
    test_restart_resends_pending();
    test_tls();
    test_against_server();
    test_secure_against_server();
    loom_tvec_free(g_manifest);
    return test_summary();
}
