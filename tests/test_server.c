/* The HTTPS federation server (docs/protocol.md) on loopback, spoken to with libcurl by fake clients
 * that upload hand-made updates:
 *  - a FedAvg run ends on the example-weighted mean of the deltas, computed here in double
 *  - evaluation reports reach metrics.jsonl (pooled loss computed here)
 *  - every refusal of the protocol table: status, JSON error code and message
 *  - an idempotent replay counts once; state files are 0600, directories 0700
 *  - a stop mid-round and a restart on the same state directory give the same bits as a run without
 *  - kill -9 of a forked server process at several points, restarted each time: the same bits */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/net.h"
#include "loom/safetensors.h"
#include "loom/secagg.h"
#include "loom/update.h"
#include "test.h"

enum { DIM = 64, NCL = 3 };
static const char *NAMES[NCL] = {"alice", "bob", "carol"};

/* ------------------------------------------------------------------ a fake client over libcurl */

typedef struct {
    long status;
    char *body;
    size_t len;
    char sha[80];
    char crange[96];
} resp;

static size_t on_data(char *p, size_t sz, size_t n, void *ud) {
    resp *r = ud;
    size_t k = sz * n;
    char *nb = realloc(r->body, r->len + k + 1);
    if (!nb) return 0;
    memcpy(nb + r->len, p, k);
    r->body = nb;
    r->len += k;
    r->body[r->len] = 0;
    return k;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
    resp *r = ud;
    size_t k = sz * n;
    if (k > 15 && !strncasecmp(p, "X-Loom-SHA256: ", 15)) sscanf(p + 15, "%79s", r->sha);
    if (k > 15 && !strncasecmp(p, "Content-Range: ", 15)) snprintf(r->crange, sizeof r->crange, "%.*s", (int)(k - 17), p + 15);
    return k;
}

static int g_port;
static __thread CURL *g_curl; /* this thread's handle, kept between requests */

static void curl_done(void) {
    if (g_curl) curl_easy_cleanup(g_curl);
    g_curl = NULL;
}
static int g_chunked; /* the next POST streams its body without a Content-Length */

typedef struct {
    const uint8_t *p;
    size_t left;
} reader;

static size_t on_read(char *buf, size_t sz, size_t n, void *ud) {
    reader *r = ud;
    size_t k = sz * n < r->left ? sz * n : r->left;
    if (k > 1000) k = 1000;
    memcpy(buf, r->p, k);
    r->p += k;
    r->left -= k;
    return k;
}
static char g_ca[4200];

/* One request: method, path (with query), token (NULL: none), extra headers, body. */
static resp req(const char *method, const char *path, const char *token, const char *const *hdrs, const void *body,
                size_t len) {
    resp r;
    memset(&r, 0, sizeof r);
    if (g_curl) curl_easy_reset(g_curl);
    else g_curl = curl_easy_init();
    CURL *c = g_curl;
    char url[512], auth[128];
    snprintf(url, sizeof url, "https://127.0.0.1:%d%s", g_port, path);
    struct curl_slist *h = NULL;
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    for (int i = 0; hdrs && hdrs[i]; i++) h = curl_slist_append(h, hdrs[i]);
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CAINFO, g_ca);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    reader rd = {body, len};
    if (!strcmp(method, "POST") && g_chunked) {
        h = curl_slist_append(h, "Transfer-Encoding: chunked");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, &rd);
        g_chunked = 0;
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    } else if (strcmp(method, "GET")) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    CURLcode cc = curl_easy_perform(c);
    if (cc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    else r.status = -1;
    curl_slist_free_all(h);
    return r;
}

static void resp_free(resp *r) { free(r->body); }

/* The JSON "error" code (or "type", or another key) of a response. */
static const char *jstr(const resp *r, const char *key, char *buf, size_t n) {
    buf[0] = 0;
    json_t *j = r->body ? json_loadb(r->body, r->len, 0, NULL) : NULL;
    const char *v = json_string_value(json_object_get(j, key));
    snprintf(buf, n, "%s", v ? v : "");
    json_decref(j);
    return buf;
}

static long long jint(const resp *r, const char *key) {
    json_t *j = r->body ? json_loadb(r->body, r->len, 0, NULL) : NULL;
    long long v = json_is_integer(json_object_get(j, key)) ? json_integer_value(json_object_get(j, key)) : -1;
    json_decref(j);
    return v;
}

/* Checks a refusal: status, error code, and a message that contains `words`. */
#define EXPECT_ERR(r, st, code, words)                                                                          \
    do {                                                                                                        \
        char e_[64], m_[512];                                                                                   \
        jstr(&(r), "error", e_, sizeof e_);                                                                     \
        jstr(&(r), "message", m_, sizeof m_);                                                                   \
        CHECK((r).status == (st) && !strcmp(e_, code) && strstr(m_, words), "want %d %s (\"%s\"), got %ld %s: %s", \
              st, code, words, (r).status, e_, m_);                                                            \
    } while (0)

static resp hello(const char *token, const char *name) {
    char b[256];
    snprintf(b, sizeof b, "{\"name\":\"%s\",\"loom\":\"test\",\"base_sha256\":null}", name);
    return req("POST", "/v1/hello", token, NULL, b, strlen(b));
}

/* The hand-made update of client k in round r, and its weight. */
static void make_delta(int k, int r, float *u) {
    for (int i = 0; i < DIM; i++) u[i] = (float)(0.01 * (k + 1) * sin(0.3 * i + r) + 0.001 * r);
}
static uint64_t weight_of(int k) { return (uint64_t)(10 * (k + 1) + 3); }

static void init_vec(float *x) {
    for (int i = 0; i < DIM; i++) x[i] = (float)(0.5 - 0.01 * i);
}

/* The encoded upload of client k for round r (values may be overridden). */
static uint8_t *encode(uint64_t run_id, int r, uint64_t version, int k, const float *vals, size_t len, size_t *n) {
    loom_update u = {run_id, r, version, k, weight_of(k), 1.5 + k, 100 + k, LOOM_CODEC_F32, len, vals, NULL, 0};
    uint8_t *buf = NULL;
    int rc = loom_update_encode(&u, NULL, &buf, n);
    CHECK(rc == LOOM_OK, "encode: %s", loom_errmsg());
    return buf;
}

static resp upload(const char *token, const uint8_t *body, size_t n, const char *key) {
    char kh[128], sha[65];
    loom_sha256_hex(body, n, sha);
    snprintf(kh, sizeof kh, "Idempotency-Key: %s", key ? key : sha);
    const char *h[] = {kh, NULL};
    return req("POST", "/v1/update", token, h, body, n);
}

/* ------------------------------------------------------------------ the server in a thread */

typedef struct {
    loom_server_config c;
    float init[DIM], out[DIM];
    volatile int stop;
    int rc;
    char msg[512];
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int port;
} server_run;

static double g_t0;
static void tlog(int level, const char *msg, void *ud) {
    (void)ud;
    fprintf(stderr, "%8.3f %d %s\n", loom_now() - g_t0, level, msg);
}

static void on_listen(void *ud, int port) {
    server_run *s = ud;
    pthread_mutex_lock(&s->mu);
    s->port = port;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void *server_main(void *p) {
    server_run *s = p;
    s->rc = loom_server_run(&s->c, s->out);
    snprintf(s->msg, sizeof s->msg, "%s", s->rc ? loom_errmsg() : "");
    pthread_mutex_lock(&s->mu);
    if (!s->port) s->port = -1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static void config(server_run *s, const char *dir, int rounds, int sample) {
    memset(s, 0, sizeof *s);
    init_vec(s->init);
    loom_server_defaults(&s->c);
    s->c.state_dir = dir;
    s->c.listen = "127.0.0.1:0";
    s->c.engine.dim = DIM;
    s->c.engine.init = s->init;
    s->c.engine.rounds = rounds;
    s->c.engine.sample = sample;
    s->c.engine.seed = 7;
    s->c.engine.pipe.strategy = "fedavg";
    loom_strategy_defaults("fedavg", &s->c.engine.pipe.sp);
    s->c.run_json = "{\"strategy\": \"fedavg\", \"rounds\": 3}";
    s->c.poll_ms = 20;
    s->c.threads = 2;
    s->c.no_eval = 1;
    s->c.done_grace_s = 10;
    s->c.on_listen = on_listen;
    s->c.ud = s;
    s->c.stop = &s->stop;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
}

static int start(server_run *s) {
    s->port = 0;
    pthread_create(&s->th, NULL, server_main, s);
    pthread_mutex_lock(&s->mu);
    while (s->port == 0) pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);
    g_port = s->port;
    snprintf(g_ca, sizeof g_ca, "%s/tls/cert.pem", s->c.state_dir);
    return s->port > 0;
}

static int finish(server_run *s) {
    pthread_join(s->th, NULL);
    return s->rc;
}

static void stop_server(server_run *s) {
    __atomic_store_n(&s->stop, 1, __ATOMIC_RELAXED);
    pthread_join(s->th, NULL);
    s->stop = 0;
}

static void add_clients(const char *dir, char tok[][65], int n) {
    for (int k = 0; k < n; k++) CHECK_OK(loom_server_add_client(dir, NAMES[k], 0, tok[k]));
}

/* Polls until the task is of `type` for round r (or any round with r 0); 0 when it did not come. */
static int wait_task(const char *token, const char *type, int r, double timeout) {
    double t0 = loom_now();
    char t[32];
    while (loom_now() - t0 < timeout) {
        resp x = req("GET", "/v1/task", token, NULL, NULL, 0);
        int ok = x.status == 200 && !strcmp(jstr(&x, "type", t, sizeof t), type) && (r == 0 || jint(&x, "round") == r);
        resp_free(&x);
        if (ok) return 1;
        usleep(10000);
    }
    return 0;
}

static uint64_t run_id_of(const char *token, const char *name) {
    resp h = hello(token, name);
    char id[32];
    jstr(&h, "run_id", id, sizeof id);
    CHECK(h.status == 200 && strlen(id) == 16, "hello %s: %ld %s", name, h.status, h.body ? h.body : "");
    resp_free(&h);
    return strtoull(id, NULL, 16);
}

/* Downloads version v, checks its hash, and its values against want (NULL: no check). */
static void check_global(const char *token, int v, const float *want) {
    char path[64];
    snprintf(path, sizeof path, "/v1/global?version=%d", v);
    resp g = req("GET", path, token, NULL, NULL, 0);
    CHECK(g.status == 200, "global v%d: %ld", v, g.status);
    char sha[65];
    loom_sha256_hex(g.body, g.len, sha);
    CHECK(!strcmp(sha, g.sha), "X-Loom-SHA256 %s, body %s", g.sha, sha);
    loom_st_file *f = NULL;
    if (want && g.status == 200 && loom_st_open_memory(&f, g.body, g.len, "global") == LOOM_OK) {
        const loom_st_tensor *t = loom_st_find(f, "vector");
        float got[DIM];
        CHECK(t && loom_st_to_f32(t, got, DIM) == LOOM_OK && !memcmp(got, want, sizeof got),
              "global v%d differs from the model", v);
        loom_st_close(f);
    } else if (want) CHECK(0, "global v%d is not safetensors: %s", v, loom_errmsg());
    resp_free(&g);
}

/* The clients' side of rounds [from, to]: each sampled client uploads its delta; skip[k] = round
 * whose upload client k already made (not again). Returns the accepted count. */
static int play_rounds(char tok[][65], uint64_t run_id, int from, int to, int eval) {
    int acc = 0;
    for (int r = from; r <= to; r++) {
        for (int k = 0; k < NCL; k++) {
            if (!wait_task(tok[k], "fit", r, 20)) {
                CHECK(0, "client %d got no fit task for round %d", k, r);
                return acc;
            }
            float u[DIM];
            make_delta(k, r, u);
            size_t n;
            uint8_t *b = encode(run_id, r, (uint64_t)(r - 1), k, u, DIM, &n);
            resp x = upload(tok[k], b, n, NULL);
            CHECK(x.status == 200, "round %d client %d upload: %ld %s", r, k, x.status, x.body ? x.body : "");
            acc += x.status == 200;
            resp_free(&x);
            free(b);
        }
        if (eval && r == to)
            for (int k = 0; k < NCL; k++) {
                CHECK(wait_task(tok[k], "eval", r, 20), "client %d got no eval task", k);
                char b[256];
                snprintf(b, sizeof b, "{\"round\":%d,\"loss_sum\":%g,\"tokens\":%d,\"correct\":%d,\"count\":%d}", r,
                         10.0 * (k + 1), 20 * (k + 1), 5 * (k + 1), 20 * (k + 1));
                resp x = req("POST", "/v1/eval", tok[k], NULL, b, strlen(b));
                CHECK(x.status == 200, "eval %d: %ld %s", k, x.status, x.body ? x.body : "");
                resp_free(&x);
            }
    }
    return acc;
}

/* The expected model after `rounds` rounds of every client: x += sum w u / sum w, in double. */
static void expected(int rounds, float *x) {
    double v[DIM];
    for (int i = 0; i < DIM; i++) v[i] = (float)(0.5 - 0.01 * i);
    for (int r = 1; r <= rounds; r++) {
        float xf[DIM];
        for (int i = 0; i < DIM; i++) xf[i] = (float)v[i];
        double W = 0, s[DIM] = {0};
        for (int k = 0; k < NCL; k++) {
            float u[DIM];
            make_delta(k, r, u);
            W += (double)weight_of(k);
            for (int i = 0; i < DIM; i++) s[i] += (double)weight_of(k) * u[i];
        }
        for (int i = 0; i < DIM; i++) v[i] = (double)xf[i] + s[i] / W;
    }
    for (int i = 0; i < DIM; i++) x[i] = (float)v[i];
}

static int mode_is(const char *path, mode_t want) {
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    return (st.st_mode & 0777) == want;
}

static int count_lines(const char *path, const char *what) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, what)) n++;
    fclose(f);
    return n;
}

static float g_reference[DIM]; /* the uninterrupted run's final model */

/* ------------------------------------------------------------------ the tests */

static void full_run(void) {
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    char tok[NCL][65], admin[65];
    add_clients(dir, tok, NCL);
    CHECK_OK(loom_server_add_client(dir, "root", 1, admin));
    server_run s;
    config(&s, dir, 3, 0);
    s.c.no_eval = 0; /* the last round evaluates */
    if (!start(&s)) {
        CHECK(0, "server did not start: %s", s.msg);
        return;
    }
    uint64_t id = 0;
    for (int k = 0; k < NCL; k++) id = run_id_of(tok[k], NAMES[k]);
    resp st = req("GET", "/v1/status", admin, NULL, NULL, 0);
    CHECK(st.status == 200 && jint(&st, "rounds") == 3, "status: %ld %s", st.status, st.body ? st.body : "");
    resp_free(&st);
    check_global(tok[0], 0, s.init);
    play_rounds(tok, id, 1, 3, 1);
    for (int k = 0; k < NCL; k++) CHECK(wait_task(tok[k], "done", 0, 20), "client %d was not told done", k);
    CHECK(finish(&s) == LOOM_OK, "server: %s", s.msg);
    float want[DIM];
    expected(3, want);
    double worst = 0;
    for (int i = 0; i < DIM; i++) worst = fmax(worst, fabs((double)s.out[i] - want[i]));
    CHECK(worst < 1e-6, "final model differs from the weighted mean by %g", worst);
    memcpy(g_reference, s.out, sizeof g_reference);
    /* global.safetensors holds the same vector */
    char p[512];
    snprintf(p, sizeof p, "%s/global.safetensors", dir);
    loom_st_file *f;
    if (loom_st_open(&f, p) == LOOM_OK) {
        float got[DIM];
        const loom_st_tensor *t = loom_st_find(f, "vector");
        CHECK(t && loom_st_to_f32(t, got, DIM) == LOOM_OK && !memcmp(got, s.out, sizeof got),
              "global.safetensors differs from the returned model");
        loom_st_close(f);
    } else CHECK(0, "no %s: %s", p, loom_errmsg());
    /* metrics: 3 round rows, 9 client rows, the pooled evaluation of the last round */
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    CHECK(count_lines(p, "\"type\":\"round\"") == 3, "round rows in %s", p);
    CHECK(count_lines(p, "\"status\":\"accepted\"") == 9, "accepted client rows in %s", p);
    char want_eval[64];
    snprintf(want_eval, sizeof want_eval, "\"eval_loss\":%.9g", 60.0 / 120.0); /* (10+20+30) / (20+40+60) */
    CHECK(count_lines(p, want_eval) == 1 && count_lines(p, "\"evaluated_clients\":3") == 1,
          "metrics lack the evaluation %s", want_eval);
    /* file modes */
    const char *files[] = {"state.db", "state.db-wal", "updates/r1-c0.upd", "updates/r3-c2.upd", "tls/key.pem",
                           "tls/cert.pem", "checkpoint.safetensors", "global.safetensors", "metrics.jsonl"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        struct stat sb;
        if (stat(p, &sb) != 0 && !strcmp(files[i], "state.db-wal")) continue; /* checkpointed away */
        CHECK(mode_is(p, 0600), "%s is not 0600", p);
    }
    snprintf(p, sizeof p, "%s/updates", dir);
    CHECK(mode_is(p, 0700), "%s is not 0700", p);
    snprintf(p, sizeof p, "%s/tls", dir);
    CHECK(mode_is(p, 0700), "%s is not 0700", p);
    CHECK(mode_is(dir, 0700), "%s is not 0700", dir);
    /* a second start of a finished run ends at once with the same model */
    server_run s2;
    config(&s2, dir, 3, 0);
    s2.c.done_grace_s = 0;
    if (start(&s2)) CHECK(finish(&s2) == LOOM_OK && !memcmp(s2.out, s.out, sizeof s.out), "restart of a finished run: %s", s2.msg);
    /* another configuration is refused, naming the difference */
    server_run s3;
    config(&s3, dir, 4, 0);
    int rc = loom_server_run(&s3.c, s3.out);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "3 rounds") && strstr(loom_errmsg(), "has 4"), "rounds change: %s",
          loom_errmsg());
    config(&s3, dir, 3, 0);
    s3.c.engine.seed = 8;
    rc = loom_server_run(&s3.c, s3.out);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "seed 7"), "seed change: %s", loom_errmsg());
    test_rmtree(dir);
}

static void refusals(void) {
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    char tok[NCL][65], admin[65], eve[65], late[65];
    add_clients(dir, tok, NCL);
    CHECK_OK(loom_server_add_client(dir, "root", 1, admin));
    CHECK_OK(loom_server_add_client(dir, "eve", 0, eve));
    CHECK_OK(loom_server_revoke_client(dir, "eve"));
    /* names and registry */
    CHECK(loom_net_check_name("x/../y") == LOOM_EINVAL && strstr(loom_errmsg(), "position 2"), "path name: %s", loom_errmsg());
    CHECK(loom_net_check_name(".hidden") == LOOM_EINVAL && strstr(loom_errmsg(), "starts with"), "%s", loom_errmsg());
    CHECK(loom_net_check_name("a/b") == LOOM_EINVAL, "slash accepted");
    CHECK_OK(loom_net_check_name("site-3_b.x"));
    char t[65];
    CHECK(loom_server_add_client(dir, "alice", 0, t) == LOOM_EINVAL && strstr(loom_errmsg(), "already registered"),
          "second alice: %s", loom_errmsg());
    CHECK(loom_server_revoke_client(dir, "nobody") == LOOM_ENOTFOUND && strstr(loom_errmsg(), "nobody"), "%s",
          loom_errmsg());
    server_run s;
    config(&s, dir, 1, 2); /* 2 of the 3 clients are sampled */
    s.c.done_grace_s = 0.2; /* no client polls for "done" here */
    s.c.max_upload = 4096;
    if (!start(&s)) {
        CHECK(0, "server did not start: %s", s.msg);
        return;
    }
    CHECK_OK(loom_server_add_client(dir, "latecomer", 0, late));
    uint64_t id = 0;
    for (int k = 0; k < NCL; k++) id = run_id_of(tok[k], NAMES[k]);
    resp x;
    /* 401: missing, unknown, revoked */
    x = req("GET", "/v1/task", NULL, NULL, NULL, 0);
    EXPECT_ERR(x, 401, "unauthorized", "token");
    resp_free(&x);
    x = req("GET", "/v1/task", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", NULL, NULL, 0);
    EXPECT_ERR(x, 401, "unauthorized", "token");
    resp_free(&x);
    x = req("GET", "/v1/task", eve, NULL, NULL, 0);
    EXPECT_ERR(x, 401, "unauthorized", "revoked");
    resp_free(&x);
    /* 403 */
    x = hello(tok[0], "bob");
    EXPECT_ERR(x, 403, "wrong_client", "another client");
    resp_free(&x);
    x = hello(late, "latecomer");
    EXPECT_ERR(x, 403, "not_in_run", "after the run was created");
    resp_free(&x);
    x = hello(admin, "root");
    EXPECT_ERR(x, 403, "not_in_run", "administrator");
    resp_free(&x);
    /* a revocation while the server runs takes effect within about a second */
    CHECK_OK(loom_server_revoke_client(dir, "latecomer"));
    long last = 0;
    for (int i = 0; i < 60 && last != 401; i++) {
        x = hello(late, "latecomer");
        last = x.status;
        if (last == 401) EXPECT_ERR(x, 401, "unauthorized", "revoked");
        resp_free(&x);
        if (last != 401) usleep(50000);
    }
    CHECK(last == 401, "the revoked token still gets %ld", last);
    x = req("GET", "/v1/status", tok[0], NULL, NULL, 0);
    EXPECT_ERR(x, 403, "forbidden", "administrator");
    resp_free(&x);
    /* 404, 405 */
    x = req("GET", "/v1/nothing", tok[0], NULL, NULL, 0);
    EXPECT_ERR(x, 404, "not_found", "/v1/nothing");
    resp_free(&x);
    x = req("POST", "/v1/task", tok[0], NULL, "{}", 2);
    EXPECT_ERR(x, 405, "method_not_allowed", "GET");
    resp_free(&x);
    /* who is sampled: the clients told to fit */
    int sampled[NCL], ns = 0, unsampled = -1;
    for (int k = 0; k < NCL; k++) {
        sampled[k] = wait_task(tok[k], "fit", 1, 0.5);
        if (sampled[k]) ns++;
        else unsampled = k;
    }
    CHECK(ns == 2 && unsampled >= 0, "%d clients sampled, want 2", ns);
    if (ns != 2 || unsampled < 0) {
        stop_server(&s);
        test_rmtree(dir);
        return;
    }
    int a = unsampled == 0 ? 1 : 0, b = 3 - unsampled - a; /* the two sampled ones */
    float u[DIM];
    make_delta(a, 1, u);
    size_t n;
    uint8_t *body = encode(id, 1, 0, a, u, DIM, &n);
    /* 412 not sampled */
    uint8_t *ub = encode(id, 1, 0, unsampled, u, DIM, &n);
    x = upload(tok[unsampled], ub, n, NULL);
    EXPECT_ERR(x, 412, "not_sampled", "not sampled");
    resp_free(&x);
    free(ub);
    /* 403 wrong client: a's update sent with b's token */
    x = upload(tok[b], body, n, NULL);
    EXPECT_ERR(x, 403, "wrong_client", "token");
    resp_free(&x);
    /* 410 stale: a future round, another version, another run */
    uint8_t *sb = encode(id, 2, 1, a, u, DIM, &n);
    x = upload(tok[a], sb, n, NULL);
    EXPECT_ERR(x, 410, "stale", "round 2");
    resp_free(&x);
    free(sb);
    sb = encode(id, 1, 5, a, u, DIM, &n);
    x = upload(tok[a], sb, n, NULL);
    EXPECT_ERR(x, 410, "stale", "version 5");
    resp_free(&x);
    free(sb);
    sb = encode(id ^ 1, 1, 0, a, u, DIM, &n);
    x = upload(tok[a], sb, n, NULL);
    EXPECT_ERR(x, 410, "stale", "run");
    resp_free(&x);
    free(sb);
    x = req("GET", "/v1/global?version=7", tok[a], NULL, NULL, 0);
    EXPECT_ERR(x, 410, "stale", "version 7");
    resp_free(&x);
    /* 400: garbage, truncated, missing key, wrong hash header */
    x = upload(tok[a], (const uint8_t *)"garbage garbage", 15, NULL);
    EXPECT_ERR(x, 400, "bad_request", "not an update");
    resp_free(&x);
    x = upload(tok[a], body, n / 2, NULL);
    EXPECT_ERR(x, 400, "bad_request", "not an update");
    resp_free(&x);
    {
        const char *h[] = {NULL};
        x = req("POST", "/v1/update", tok[a], h, body, n);
        EXPECT_ERR(x, 400, "bad_request", "Idempotency-Key is missing");
        resp_free(&x);
        const char *h2[] = {"Idempotency-Key: abc", "X-Loom-SHA256: 00", NULL};
        x = req("POST", "/v1/update", tok[a], h2, body, n);
        EXPECT_ERR(x, 400, "bad_request", "X-Loom-SHA256");
        resp_free(&x);
        const char *h3[] = {"Idempotency-Key: a/b", NULL};
        x = req("POST", "/v1/update", tok[a], h3, body, n);
        EXPECT_ERR(x, 400, "bad_request", "malformed");
        resp_free(&x);
    }
    x = req("POST", "/v1/hello", tok[a], NULL, "{\"name\":", 8);
    EXPECT_ERR(x, 400, "bad_request", "JSON");
    resp_free(&x);
    /* 413: an upload over the limit, a JSON body over 64 KiB */
    uint8_t *big = calloc(1, 5000);
    x = upload(tok[a], big, 5000, NULL);
    EXPECT_ERR(x, 413, "too_large", "4096");
    resp_free(&x);
    g_chunked = 1; /* no Content-Length: the bytes past the limit are read and dropped, then the 413 */
    x = upload(tok[a], big, 5000, NULL);
    EXPECT_ERR(x, 413, "too_large", "4096");
    resp_free(&x);
    g_chunked = 1; /* a chunked body under the limit is read to its end */
    x = upload(tok[a], big, 3000, NULL);
    EXPECT_ERR(x, 400, "bad_request", "not an update");
    resp_free(&x);
    free(big);
    char *bigj = malloc(70000);
    memset(bigj, ' ', 70000);
    bigj[0] = '{';
    bigj[69999] = '}';
    x = req("POST", "/v1/hello", tok[a], NULL, bigj, 70000);
    EXPECT_ERR(x, 413, "too_large", "65536");
    resp_free(&x);
    free(bigj);
    /* Range: 206 with the tail, 416 past the end */
    {
        resp full = req("GET", "/v1/global?version=0", tok[a], NULL, NULL, 0);
        const char *h[] = {"Range: bytes=10-", NULL};
        x = req("GET", "/v1/global?version=0", tok[a], h, NULL, 0);
        CHECK(x.status == 206 && full.len > 10 && x.len == full.len - 10 && !memcmp(x.body, full.body + 10, x.len) &&
                  strstr(x.crange, "bytes 10-"),
              "range: %ld, %zu of %zu bytes, %s", x.status, x.len, full.len, x.crange);
        resp_free(&x);
        const char *h2[] = {"Range: bytes=999999-", NULL};
        x = req("GET", "/v1/global?version=0", tok[a], h2, NULL, 0);
        EXPECT_ERR(x, 416, "bad_range", "outside");
        resp_free(&x);
        resp_free(&full);
    }
    /* a's update: accepted, replayed, then a duplicate under another key */
    x = upload(tok[a], body, n, "key-1");
    CHECK(x.status == 200 && jint(&x, "round") == 1 && jint(&x, "client") == a, "upload: %ld %s", x.status,
          x.body ? x.body : "");
    resp_free(&x);
    x = upload(tok[a], body, n, "key-1");
    {
        json_t *j = json_loadb(x.body ? x.body : "", x.len, 0, NULL);
        CHECK(x.status == 200 && json_is_true(json_object_get(j, "replayed")), "replay: %ld %s", x.status,
              x.body ? x.body : "");
        json_decref(j);
    }
    resp_free(&x);
    x = upload(tok[a], body, n, "key-2");
    EXPECT_ERR(x, 409, "duplicate", "already answered");
    resp_free(&x);
    /* 422: b's update holds a NaN (its answer: refused, stored, not aggregated) */
    float bad[DIM];
    make_delta(b, 1, bad);
    bad[5] = NAN;
    uint8_t *nb = encode(id, 1, 0, b, bad, DIM, &n);
    x = upload(tok[b], nb, n, NULL);
    EXPECT_ERR(x, 422, "rejected", "");
    char reason[64];
    CHECK(!strcmp(jstr(&x, "reason", reason, sizeof reason), "non-finite value"), "reason %s", reason);
    resp_free(&x);
    free(nb);
    free(body);
    /* the round closes with a's update alone: final = init + u_a */
    CHECK(finish(&s) == LOOM_OK, "server: %s", s.msg);
    float want[DIM];
    init_vec(want);
    for (int i = 0; i < DIM; i++) want[i] = (float)((double)want[i] + (double)u[i]);
    double worst = 0;
    for (int i = 0; i < DIM; i++) worst = fmax(worst, fabs((double)s.out[i] - want[i]));
    CHECK(worst < 1e-6, "final model differs from init + u_a by %g (the NaN update or the replay counted?)", worst);
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    CHECK(count_lines(p, "\"status\":\"non-finite value\"") == 1 && count_lines(p, "\"accepted\":1,") == 1,
          "metrics of the refusal round");
    test_rmtree(dir);
}

/* A deadline: client 0 uploads, client 1 reports a failure, client 2 is late; the round aggregates
 * client 0's update alone. */
static void deadline(void) {
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    char tok[NCL][65];
    add_clients(dir, tok, NCL);
    server_run s;
    config(&s, dir, 1, 0);
    s.c.engine.deadline = 3.0;
    s.c.done_grace_s = 10;
    if (!start(&s)) {
        CHECK(0, "server did not start: %s", s.msg);
        return;
    }
    uint64_t id = 0;
    for (int k = 0; k < NCL; k++) id = run_id_of(tok[k], NAMES[k]);
    CHECK(wait_task(tok[0], "fit", 1, 5), "no fit task");
    resp x = req("GET", "/v1/task", tok[0], NULL, NULL, 0);
    json_t *j = json_loadb(x.body ? x.body : "", x.len, 0, NULL);
    double left = json_number_value(json_object_get(j, "deadline_s"));
    CHECK(left > 0 && left <= 3.0, "deadline_s %g", left);
    json_decref(j);
    resp_free(&x);
    float u[DIM];
    make_delta(0, 1, u);
    size_t n;
    uint8_t *b = encode(id, 1, 0, 0, u, DIM, &n);
    x = upload(tok[0], b, n, NULL);
    CHECK(x.status == 200, "upload: %ld", x.status);
    resp_free(&x);
    free(b);
    const char *fj = "{\"round\":1,\"reason\":\"out of disk\"}";
    x = req("POST", "/v1/fail", tok[1], NULL, fj, strlen(fj));
    CHECK(x.status == 200, "fail: %ld %s", x.status, x.body ? x.body : "");
    resp_free(&x);
    x = req("POST", "/v1/fail", tok[1], NULL, fj, strlen(fj));
    EXPECT_ERR(x, 409, "duplicate", "already answered");
    resp_free(&x);
    CHECK(wait_task(tok[2], "done", 0, 20), "the run did not end after the deadline"); /* the round closed */
    float u2[DIM];
    make_delta(2, 1, u2);
    b = encode(id, 1, 0, 2, u2, DIM, &n);
    x = upload(tok[2], b, n, NULL);
    EXPECT_ERR(x, 410, "late", "deadline");
    resp_free(&x);
    free(b);
    for (int k = 0; k < 2; k++) CHECK(wait_task(tok[k], "done", 0, 5), "client %d not told done", k);
    CHECK(finish(&s) == LOOM_OK, "server: %s", s.msg);
    float want[DIM];
    init_vec(want);
    double worst = 0;
    for (int i = 0; i < DIM; i++) worst = fmax(worst, fabs((double)s.out[i] - ((double)want[i] + u[i])));
    CHECK(worst < 1e-6, "partial aggregation differs from init + u_0 by %g", worst);
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    CHECK(count_lines(p, "\"status\":\"client failure\"") == 1 && count_lines(p, "\"status\":\"no update\"") == 1 &&
              count_lines(p, "\"accepted\":1,") == 1,
          "metrics of the deadline round");
    test_rmtree(dir);
}

/* Round 1 whole, round 2 half, stop; restart: the acknowledged update replays, the rest arrive. */
static void stop_restart(void) {
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    char tok[NCL][65];
    add_clients(dir, tok, NCL);
    server_run s;
    config(&s, dir, 3, 0);
    if (!start(&s)) {
        CHECK(0, "server did not start: %s", s.msg);
        return;
    }
    uint64_t id = 0;
    for (int k = 0; k < NCL; k++) id = run_id_of(tok[k], NAMES[k]);
    play_rounds(tok, id, 1, 1, 0);
    CHECK(wait_task(tok[0], "fit", 2, 20), "no round 2");
    float u[DIM];
    make_delta(0, 2, u);
    size_t n;
    uint8_t *b = encode(id, 2, 1, 0, u, DIM, &n);
    resp x = upload(tok[0], b, n, NULL);
    CHECK(x.status == 200, "round 2 upload: %ld", x.status);
    resp_free(&x);
    stop_server(&s);
    CHECK(s.rc == LOOM_ESTATE && strstr(s.msg, "stopped"), "stopped server: %d %s", s.rc, s.msg);
    server_run s2;
    config(&s2, dir, 3, 0);
    if (!start(&s2)) {
        CHECK(0, "server did not restart: %s", s2.msg);
        free(b);
        return;
    }
    /* client 0's retry of its acknowledged upload is a replay; it is not asked again */
    x = upload(tok[0], b, n, NULL);
    CHECK(x.status == 200 && strstr(x.body ? x.body : "", "replayed"), "retry after restart: %ld %s", x.status,
          x.body ? x.body : "");
    resp_free(&x);
    free(b);
    CHECK(!wait_task(tok[0], "fit", 2, 0.3), "client 0 asked again for round 2");
    for (int k = 1; k < NCL; k++) {
        CHECK(wait_task(tok[k], "fit", 2, 20), "client %d: no round 2 after the restart", k);
        make_delta(k, 2, u);
        b = encode(id, 2, 1, k, u, DIM, &n);
        x = upload(tok[k], b, n, NULL);
        CHECK(x.status == 200, "round 2 client %d: %ld", k, x.status);
        resp_free(&x);
        free(b);
    }
    play_rounds(tok, id, 3, 3, 0);
    for (int k = 0; k < NCL; k++) wait_task(tok[k], "done", 0, 20);
    CHECK(finish(&s2) == LOOM_OK, "restarted server: %s", s2.msg);
    CHECK(!memcmp(s2.out, g_reference, sizeof g_reference), "the restarted run's model differs from the uninterrupted one");
    char p[512];
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    CHECK(count_lines(p, "\"type\":\"round\"") == 3, "round rows after a restart");
    test_rmtree(dir);
}

/* ------------------------------------------------------------------ kill -9 */

static pid_t spawn(const char *dir, int *port) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        static server_run s;
        config(&s, dir, 3, 0);
        s.c.on_listen = NULL;
        s.c.stop = NULL;
        /* the port goes to the parent through the pipe: on_listen is called in this process */
        struct {
            int fd;
        } *ctx = malloc(sizeof *ctx);
        ctx->fd = fds[1];
        s.c.ud = ctx;
        s.c.on_listen = (void (*)(void *, int))0;
        extern void test_listen_pipe(void *, int);
        s.c.on_listen = test_listen_pipe;
        int rc = loom_server_run(&s.c, s.out);
        _exit(rc == LOOM_OK ? 0 : 3);
    }
    close(fds[1]);
    *port = 0;
    ssize_t k = read(fds[0], port, sizeof *port);
    close(fds[0]);
    if (k != sizeof *port) *port = -1;
    return pid;
}

void test_listen_pipe(void *ud, int port) {
    int fd = *(int *)ud;
    ssize_t k = write(fd, &port, sizeof port);
    (void)k;
    close(fd);
}

typedef struct {
    const char *token;
    const uint8_t *body;
    size_t n;
    long status;
} upload_job;

static void *upload_main(void *p) {
    upload_job *j = p;
    resp x = upload(j->token, j->body, j->n, NULL);
    j->status = x.status;
    resp_free(&x);
    curl_done();
    return NULL;
}

static void kill9(void) {
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    char tok[NCL][65];
    add_clients(dir, tok, NCL);
    snprintf(g_ca, sizeof g_ca, "%s/tls/cert.pem", dir);
    int port;
    pid_t pid = spawn(dir, &port);
    CHECK(pid > 0 && port > 0, "no server process");
    if (pid <= 0 || port <= 0) return;
    g_port = port;
    uint64_t id = 0;
    for (int k = 0; k < NCL; k++) id = run_id_of(tok[k], NAMES[k]);
    /* kill after the 2nd, 4th, 5th and 7th acknowledged upload (rounds 1, 2, 2, 3) */
    const int kill_after[] = {2, 4, 5, 7};
    int kills = 0, acks = 0;
    for (int r = 1; r <= 3; r++)
        for (int k = 0; k < NCL; k++) {
            float u[DIM];
            make_delta(k, r, u);
            size_t n;
            uint8_t *b = encode(id, r, (uint64_t)(r - 1), k, u, DIM, &n);
            int ok = 0;
            if ((r == 1 && k == 2) || (r == 3 && k == 1)) {
                /* killed while the upload is in flight (before, during or after it is made durable) */
                upload_job job = {tok[k], b, n, 0};
                pthread_t th;
                pthread_create(&th, NULL, upload_main, &job);
                usleep(r == 1 ? 2000 : 15000);
                kill(pid, SIGKILL);
                int st;
                waitpid(pid, &st, 0);
                pthread_join(th, NULL);
                pid = spawn(dir, &port);
                CHECK(pid > 0 && port > 0, "no server process after the kill mid-upload");
                if (pid <= 0 || port <= 0) return;
                g_port = port;
                for (int attempt = 0; attempt < 200 && !ok; attempt++) { /* the retry, same key: once */
                    resp x = upload(tok[k], b, n, NULL);
                    ok = x.status == 200;
                    resp_free(&x);
                    if (!ok) usleep(20000);
                }
            }
            for (int attempt = 0; attempt < 3 && !ok; attempt++) {
                if (!wait_task(tok[k], "fit", r, 20)) continue;
                resp x = upload(tok[k], b, n, NULL);
                ok = x.status == 200;
                resp_free(&x);
            }
            CHECK(ok, "round %d client %d: no acknowledged upload", r, k);
            free(b);
            acks++;
            if (kills < 4 && acks == kill_after[kills]) {
                kill(pid, SIGKILL);
                int st;
                waitpid(pid, &st, 0);
                kills++;
                pid = spawn(dir, &port);
                CHECK(pid > 0 && port > 0, "no server process after kill %d", kills);
                if (pid <= 0 || port <= 0) return;
                g_port = port;
                /* the acknowledged upload replays after the restart */
                if (k == NCL - 1) continue;
                uint8_t *again = encode(id, r, (uint64_t)(r - 1), k, u, DIM, &n);
                resp x = upload(tok[k], again, n, NULL);
                CHECK(x.status == 200 && strstr(x.body ? x.body : "", "replayed"), "replay after kill %d: %ld %s", kills,
                      x.status, x.body ? x.body : "");
                resp_free(&x);
                free(again);
            }
        }
    for (int k = 0; k < NCL; k++) wait_task(tok[k], "done", 0, 20);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the last server process ended with %d", st);
    char p[512];
    snprintf(p, sizeof p, "%s/global.safetensors", dir);
    loom_st_file *f;
    if (loom_st_open(&f, p) == LOOM_OK) {
        float got[DIM];
        const loom_st_tensor *t = loom_st_find(f, "vector");
        CHECK(t && loom_st_to_f32(t, got, DIM) == LOOM_OK && !memcmp(got, g_reference, sizeof got),
              "the model after %d kills differs from the uninterrupted run's", kills);
        loom_st_close(f);
    } else CHECK(0, "no %s after the kills: %s", p, loom_errmsg());
    snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
    CHECK(count_lines(p, "\"type\":\"round\"") == 3, "round rows after the kills: %d", count_lines(p, "\"type\":\"round\""));
    test_rmtree(dir);
}

/* ------------------------------------------------------------------ secure aggregation's endpoint */

/* A client's part in a secure round, played by hand with the library's client side. */
typedef struct {
    int k;                       /* the client */
    uint32_t id;                 /* its secure-aggregation id */
    char epoch[17];
    loom_secagg_params p;
    loom_secagg_client *c;
    uint8_t *in;                 /* the server's last message */
    size_t in_len;
    loom_secagg_buf sent;        /* the client's last message */
} sa_party;

/* The fit task's "secagg" object into x (and a library client); 0 when the task is not a secure fit. */
static int sa_task(const char *token, int k, sa_party *x) {
    memset(x, 0, sizeof *x);
    x->k = k;
    resp t = req("GET", "/v1/task", token, NULL, NULL, 0);
    json_t *j = t.body ? json_loadb(t.body, t.len, 0, NULL) : NULL;
    json_t *a = json_object_get(j, "secagg");
    const char *type = json_string_value(json_object_get(j, "type"));
    int ok = t.status == 200 && type && !strcmp(type, "fit") && json_is_object(a);
    if (ok) {
        loom_secagg_defaults(&x->p, (uint32_t)json_integer_value(json_object_get(a, "n")), DIM);
        x->id = (uint32_t)json_integer_value(json_object_get(a, "id"));
        x->p.threshold = (uint32_t)json_integer_value(json_object_get(a, "threshold"));
        x->p.neighbours = (uint32_t)json_integer_value(json_object_get(a, "neighbours"));
        x->p.max_weight = (uint64_t)json_integer_value(json_object_get(a, "max_weight"));
        x->p.clip = json_real_value(json_object_get(a, "clip"));
        x->p.seed = strtoull(json_string_value(json_object_get(a, "seed")), NULL, 16);
        x->p.round = (uint64_t)json_integer_value(json_object_get(j, "round"));
        snprintf(x->epoch, sizeof x->epoch, "%s", json_string_value(json_object_get(a, "epoch")));
        ok = loom_secagg_client_create(&x->c, &x->p, x->id, NULL) == LOOM_OK;
    }
    json_decref(j);
    resp_free(&t);
    return ok;
}

static void sa_party_free(sa_party *x) {
    loom_secagg_client_free(x->c);
    free(x->in);
    loom_secagg_buf_free(&x->sent);
    memset(x, 0, sizeof *x);
}

static resp sa_req(const char *method, const char *token, const char *epoch, int phase, const char *extra,
                   const void *body, size_t len) {
    char path[256];
    snprintf(path, sizeof path, "/v1/secagg?round=1&phase=%d&epoch=%s%s", phase, epoch, extra ? extra : "");
    return req(method, path, token, NULL, body, len);
}

/* x's phase-`phase` message, posted: the status. */
static long sa_send(const char *token, sa_party *x, int phase, const float *delta) {
    loom_secagg_buf b = {0};
    int rc = phase == 0 ? loom_secagg_client_advertise(x->c, &b)
             : phase == 1 ? loom_secagg_client_share(x->c, x->in, x->in_len, &b)
             : phase == 2 ? loom_secagg_client_mask(x->c, x->in, x->in_len, delta, weight_of(x->k), &b)
                          : loom_secagg_client_unmask(x->c, x->in, x->in_len, &b);
    CHECK(rc == LOOM_OK, "client %d: phase %d: %s", x->k, phase, loom_errmsg());
    char extra[96] = "";
    if (phase == 2) snprintf(extra, sizeof extra, "&examples=%llu&loss=1.5&tokens=10", (unsigned long long)weight_of(x->k));
    resp r = sa_req("POST", token, x->epoch, phase, extra, b.data, b.len);
    long st = r.status;
    CHECK(st == 200, "client %d: phase %d posted: %ld %s", x->k, phase, st, r.body ? r.body : "");
    resp_free(&r);
    loom_secagg_buf_free(&x->sent);
    x->sent = b;
    return st;
}

/* The server's message of phase `phase` for x, waiting while the phase is open: the final status. */
static long sa_fetch(const char *token, sa_party *x, int phase) {
    double t0 = loom_now();
    for (;;) {
        resp r = sa_req("GET", token, x->epoch, phase, NULL, NULL, 0);
        if (r.status != 202 || loom_now() - t0 > 20) {
            long st = r.status;
            if (st == 200) {
                free(x->in);
                x->in = (uint8_t *)r.body;
                x->in_len = r.len;
                r.body = NULL;
            }
            resp_free(&r);
            return st;
        }
        resp_free(&r);
        usleep(20000);
    }
}

/* The model after one FedAvg round over the clients in mask, with each delta encoded as secure
 * aggregation does (rint(x 2^24) / 2^24), in double. */
static void sa_expected(unsigned mask, float *x) {
    double s[DIM] = {0}, W = 0;
    for (int k = 0; k < NCL; k++) {
        if (!(mask & (1u << k))) continue;
        float u[DIM];
        make_delta(k, 1, u);
        W += (double)weight_of(k);
        for (int i = 0; i < DIM; i++) s[i] += (double)weight_of(k) * rint((double)u[i] * 0x1p24) * 0x1p-24;
    }
    init_vec(x);
    for (int i = 0; i < DIM; i++) x[i] = (float)((double)x[i] + s[i] / W);
}

static void sa_check_model(const float *got, unsigned mask, const char *what) {
    float want[DIM];
    sa_expected(mask, want);
    double worst = 0;
    for (int i = 0; i < DIM; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
    CHECK(worst < 1e-6, "%s: the model is FedAvg of exactly the inputs unmasked (max error %g)", what, worst);
}

static void secure(void) {
    char dir[64];
    test_tmpdir(dir, sizeof dir);
    char tok[NCL][65];
    add_clients(dir, tok, NCL);
    server_run s;
    config(&s, dir, 1, NCL);
    s.c.secagg = 1;
    s.c.secagg_threshold = 2;
    s.c.secagg_fit_timeout_s = 1.0;
    s.c.secagg_phase_timeout_s = 1.0;
    s.c.done_grace_s = 0.2;
    CHECK(start(&s), "secure server starts: %s", s.msg);
    for (int k = 0; k < NCL; k++) {
        resp h = hello(tok[k], NAMES[k]);
        json_t *j = h.body ? json_loadb(h.body, h.len, 0, NULL) : NULL;
        CHECK(h.status == 200 && json_is_object(json_object_get(j, "secagg")), "hello tells secure aggregation: %s",
              h.body ? h.body : "");
        json_decref(j);
        resp_free(&h);
    }
    CHECK(wait_task(tok[0], "fit", 1, 10), "round 1 opens");
    sa_party x[NCL];
    for (int k = 0; k < NCL; k++) CHECK(sa_task(tok[k], k, &x[k]), "client %d: a secure fit task", k);
    CHECK(x[0].p.n == NCL && x[0].p.threshold == 2 && x[0].id != x[1].id, "the task's parameters: n %u, t %u", x[0].p.n,
          x[0].p.threshold);
    float d[NCL][DIM];
    for (int k = 0; k < NCL; k++) make_delta(k, 1, d[k]);
    /* refusals while phase 0 is open */
    resp r = req("POST", "/v1/secagg", tok[0], NULL, "x", 1);
    EXPECT_ERR(r, 400, "bad_request", "epoch=E");
    resp_free(&r);
    r = sa_req("POST", tok[0], "0123456789abcdef", 0, NULL, "x", 1);
    EXPECT_ERR(r, 410, "stale", "started the round's secure aggregation again");
    resp_free(&r);
    r = sa_req("POST", tok[0], x[0].epoch, 1, NULL, "x", 1);
    EXPECT_ERR(r, 409, "wrong_phase", "has not opened yet");
    resp_free(&r);
    r = sa_req("GET", tok[0], x[0].epoch, 3, NULL, NULL, 0);
    EXPECT_ERR(r, 400, "bad_request", "phase 3 has no server message");
    resp_free(&r);
    r = sa_req("GET", tok[0], x[0].epoch, 0, NULL, NULL, 0);
    CHECK(r.status == 202 && jint(&r, "retry_ms") > 0, "GET of an open phase: 202 wait (%ld)", r.status);
    resp_free(&r);
    size_t big = (64 << 10) + 256 * NCL + 1;
    char *junk = calloc(1, big);
    r = sa_req("POST", tok[0], x[0].epoch, 0, NULL, junk, big);
    EXPECT_ERR(r, 413, "too_large", "exceeds");
    resp_free(&r);
    r = sa_req("POST", tok[1], x[1].epoch, 0, NULL, junk, 100);
    EXPECT_ERR(r, 400, "bad_request", "phase-0 message was refused");
    resp_free(&r);
    free(junk);
    uint8_t body[8] = {0};
    size_t n = 0;
    uint8_t *upd = encode(1, 1, 0, 0, d[0], DIM, &n);
    r = upload(tok[0], upd, n, NULL);
    EXPECT_ERR(r, 409, "not_secure", "/v1/secagg");
    resp_free(&r);
    free(upd);
    /* alice and bob advertise; carol does not: phase 0 closes at its timeout with 2 of 3 */
    sa_send(tok[0], &x[0], 0, NULL);
    sa_send(tok[1], &x[1], 0, NULL);
    r = sa_req("POST", tok[0], x[0].epoch, 0, NULL, x[0].sent.data, x[0].sent.len);
    CHECK(r.status == 200 && strstr(r.body, "\"replayed\":true"), "the same phase-0 body again: 200 replayed (%ld)", r.status);
    resp_free(&r);
    r = sa_req("POST", tok[0], x[0].epoch, 0, NULL, body, sizeof body);
    EXPECT_ERR(r, 409, "duplicate", "another phase-0 message");
    resp_free(&r);
    CHECK(sa_fetch(tok[0], &x[0], 0) == 200 && sa_fetch(tok[1], &x[1], 0) == 200, "the roster once phase 0 closed");
    r = sa_req("POST", tok[2], x[2].epoch, 0, NULL, body, sizeof body);
    EXPECT_ERR(r, 409, "wrong_phase", "it closed");
    resp_free(&r);
    r = sa_req("POST", tok[2], x[2].epoch, 1, NULL, body, sizeof body);
    EXPECT_ERR(r, 409, "not_in_phase", "did not send phase 0");
    resp_free(&r);
    r = sa_req("GET", tok[2], x[2].epoch, 0, NULL, NULL, 0);
    EXPECT_ERR(r, 409, "not_in_phase", "did not send phase 0");
    resp_free(&r);
    CHECK(wait_task(tok[2], "wait", 1, 2), "a client out of the round gets no fit task");
    /* phases 1 to 3 for alice and bob */
    for (int k = 0; k < 2; k++) sa_send(tok[k], &x[k], 1, NULL);
    CHECK(sa_fetch(tok[0], &x[0], 1) == 200 && sa_fetch(tok[1], &x[1], 1) == 200, "the inboxes once phase 1 closed");
    r = sa_req("POST", tok[0], x[0].epoch, 2, NULL, body, sizeof body);
    EXPECT_ERR(r, 400, "bad_request", "examples=N");
    resp_free(&r);
    for (int k = 0; k < 2; k++) sa_send(tok[k], &x[k], 2, d[k]);
    CHECK(sa_fetch(tok[0], &x[0], 2) == 200 && sa_fetch(tok[1], &x[1], 2) == 200, "the survivors once phase 2 closed");
    for (int k = 0; k < 2; k++) sa_send(tok[k], &x[k], 3, NULL);
    CHECK(finish(&s) == LOOM_OK, "the secure run ends: %s", s.msg);
    sa_check_model(s.out, 3, "alice and bob");
    for (int k = 0; k < NCL; k++) sa_party_free(&x[k]);
    test_rmtree(dir);

    /* a server stopped in the middle of a secure round starts it again from phase 0, under a new epoch */
    test_tmpdir(dir, sizeof dir);
    add_clients(dir, tok, NCL);
    config(&s, dir, 1, NCL);
    s.c.secagg = 1;
    s.c.secagg_threshold = 2;
    s.c.secagg_fit_timeout_s = 5;
    s.c.secagg_phase_timeout_s = 5;
    s.c.done_grace_s = 0.2;
    CHECK(start(&s), "secure server starts: %s", s.msg);
    for (int k = 0; k < NCL; k++) {
        resp h = hello(tok[k], NAMES[k]);
        resp_free(&h);
    }
    CHECK(wait_task(tok[0], "fit", 1, 10), "round 1 opens");
    for (int k = 0; k < NCL; k++) CHECK(sa_task(tok[k], k, &x[k]), "client %d: a secure fit task", k);
    for (int k = 0; k < NCL; k++) sa_send(tok[k], &x[k], 0, NULL);
    for (int k = 0; k < NCL; k++) CHECK(sa_fetch(tok[k], &x[k], 0) == 200, "client %d: the roster", k);
    stop_server(&s);
    CHECK(start(&s), "secure server starts again: %s", s.msg);
    for (int k = 0; k < NCL; k++) {
        resp h = hello(tok[k], NAMES[k]);
        resp_free(&h);
    }
    CHECK(wait_task(tok[0], "fit", 1, 10), "round 1 is offered again");
    r = sa_req("POST", tok[1], x[1].epoch, 1, NULL, body, sizeof body);
    EXPECT_ERR(r, 410, "stale", "started the round's secure aggregation again");
    resp_free(&r);
    char old[17];
    snprintf(old, sizeof old, "%s", x[0].epoch);
    for (int k = 0; k < NCL; k++) {
        sa_party_free(&x[k]);
        CHECK(sa_task(tok[k], k, &x[k]), "client %d: the round's fit task again", k);
    }
    CHECK(strcmp(old, x[0].epoch) != 0, "a new epoch after the restart (%s)", x[0].epoch);
    for (int ph = 0; ph < 4; ph++)
        for (int k = 0; k < NCL; k++) {
            sa_send(tok[k], &x[k], ph, d[k]);
            if (ph < 3 && k == NCL - 1)
                for (int j = 0; j < NCL; j++) CHECK(sa_fetch(tok[j], &x[j], ph) == 200, "client %d: phase %d's message", j, ph);
        }
    CHECK(finish(&s) == LOOM_OK, "the restarted secure run ends: %s", s.msg);
    sa_check_model(s.out, 7, "after a restart mid-round, all three");
    for (int k = 0; k < NCL; k++) sa_party_free(&x[k]);
    test_rmtree(dir);
}

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_t0 = loom_now();
    loom_set_log(getenv("LOOM_TEST_LOG") ? tlog : NULL, NULL, getenv("LOOM_TEST_LOG") ? LOOM_INFO : LOOM_ERROR + 1); /* quiet: the refusals are expected */
    double t0 = loom_now();
    full_run();
    fprintf(stderr, "full run: %.1fs\n", loom_now() - t0);
    t0 = loom_now();
    refusals();
    fprintf(stderr, "refusals: %.1fs\n", loom_now() - t0);
    t0 = loom_now();
    deadline();
    fprintf(stderr, "deadline: %.1fs\n", loom_now() - t0);
    t0 = loom_now();
    stop_restart();
    fprintf(stderr, "stop and restart: %.1fs\n", loom_now() - t0);
    t0 = loom_now();
    secure();
    fprintf(stderr, "secure aggregation: %.1fs\n", loom_now() - t0);
    t0 = loom_now();
    kill9();
    fprintf(stderr, "kill -9: %.1fs\n", loom_now() - t0);
    curl_done();
    curl_global_cleanup();
    return test_summary();
}
