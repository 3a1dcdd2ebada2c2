/* The run-status board (include/loom/dash.h) and its plain HTTP server:
 *  - the rows it serves are metrics.jsonl's rows (written beside it by the jsonl sink, compared as JSON)
 *  - the client table's counts, the bytes-down shares and the loss spread, computed here by hand
 *  - since=N filtering; the limits (configuration keys, value length at a UTF-8 boundary, rows kept)
 *  - bad metrics lines are refused naming the file and line
 *  - the page's files are web/'s bytes; the API answers 401 without the token, 200 with it
 *  - feeding and rendering from several threads at once (ThreadSanitizer runs this test) */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dash.h"
#include "test.h"

static loom_round_metrics round_row(int round, double train_loss, double bytes_down, double bytes_up) {
    loom_round_metrics m;
    memset(&m, 0, sizeof m);
    m.round = round;
    m.train_loss = train_loss;
    m.eval_loss = m.eval_acc = m.eval_loss_mean = m.eval_loss_std = m.eval_acc_mean = m.eval_acc_std = NAN;
    m.attack_success = NAN;
    m.bytes_down = bytes_down;
    m.bytes_up = bytes_up;
    m.seconds = 0.5;
    return m;
}

static loom_client_row client_row(int round, int client, double loss, double bytes_up, loom_update_verdict v) {
    loom_client_row r;
    memset(&r, 0, sizeof r);
    r.round = round;
    r.client = client;
    r.examples = 10;
    r.tokens = 100;
    r.loss = loss;
    r.bytes_up = bytes_up;
    r.verdict = v;
    r.status = loom_update_verdict_str(v);
    r.staleness = -1;
    return r;
}

static json_t *parse(const char *text) {
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    CHECK(j != NULL, "not JSON: %.200s", text ? text : "(null)");
    return j;
}

static json_t *client_of(json_t *status, int k) { return json_array_get(json_object_get(status, "clients"), (size_t)k); }
static long long ival(json_t *o, const char *key) { return json_integer_value(json_object_get(o, key)); }
static double dval(json_t *o, const char *key) { return json_number_value(json_object_get(o, key)); }

/* Two rounds through the tee sink (board first, then the metrics.jsonl sink into a file). */
static void test_rows_and_table(const char *dir) {
    loom_dash *d;
    CHECK_OK(loom_dash_create(&d));
    const char *names[3] = {"alice", "bob", "carol"};
    CHECK_OK(loom_dash_set_clients(d, 3, names));
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "w");
    loom_metrics_jsonl js = {f, names, 1};
    loom_dash_tee tee;
    loom_metrics_sink sink = loom_dash_sink(&tee, d, loom_metrics_jsonl_sink(&js), names);
    /* round 1: clients 0, 1, 2; 1 is late; bytes down 300 (100 each) */
    int l1[3] = {0, 1, 2}, l2[2] = {1, 2};
    loom_round_metrics m1 = round_row(1, 3.0, 300, 70);
    m1.evaluated = 2, m1.eval_loss = 2.5, m1.eval_acc = 0.25, m1.eval_acc_mean = 0.2, m1.eval_acc_std = 0.05;
    m1.eval_loss_mean = 2.6, m1.eval_loss_std = 0.1;
    sink.round(sink.ud, &m1, l1, 3);
    loom_client_row c;
    c = client_row(1, 0, 2.0, 30, LOOM_UPDATE_ACCEPTED), sink.client(sink.ud, &c);
    c = client_row(1, 1, 9.0, 0, LOOM_UPDATE_LATE), sink.client(sink.ud, &c);
    c = client_row(1, 2, 4.0, 40, LOOM_UPDATE_ACCEPTED), sink.client(sink.ud, &c);
    /* round 2: clients 1 (failed) and 2; bytes down 200 (100 each); DP on */
    loom_round_metrics m2 = round_row(2, 1.5, 200, 25);
    m2.dp = 1, m2.epsilon = 0.75, m2.dp_clip = 1;
    sink.round(sink.ud, &m2, l2, 2);
    c = client_row(2, 1, NAN, 0, LOOM_UPDATE_CLIENT_FAILED), sink.client(sink.ud, &c);
    c = client_row(2, 2, 1.5, 25, LOOM_UPDATE_ACCEPTED), sink.client(sink.ud, &c);
    fclose(f);

    /* the rows are the file's round rows */
    json_t *file_rows = json_array();
    f = fopen(path, "r");
    char line[8192];
    while (f && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (j && !strcmp(json_string_value(json_object_get(j, "type")), "round")) json_array_append(file_rows, j);
        json_decref(j);
    }
    if (f) fclose(f);
    CHECK(json_array_size(file_rows) == 2, "%zu round rows in the file", json_array_size(file_rows));
    char *mt = loom_dash_metrics_json(d, 0);
    json_t *mj = parse(mt);
    json_t *rows = json_object_get(mj, "rows");
    CHECK(json_equal(rows, file_rows), "the board's rows differ from metrics.jsonl's: %.400s", mt);
    CHECK(ival(mj, "first_round") == 1 && ival(mj, "last_round") == 2, "%s", mt);
    /* the spread of round 1: the accepted losses 2 and 4 (the late client's 9 is not in it) */
    json_t *sp = json_array_get(json_object_get(mj, "spread"), 0);
    CHECK(ival(sp, "n") == 2 && dval(sp, "loss_min") == 2.0 && dval(sp, "loss_mean") == 3.0 && dval(sp, "loss_max") == 4.0,
          "spread of round 1: %s", mt);
    json_decref(mj);
    free(mt);
    mt = loom_dash_metrics_json(d, 1);
    mj = parse(mt);
    CHECK(json_array_size(json_object_get(mj, "rows")) == 1 &&
              ival(json_array_get(json_object_get(mj, "rows"), 0), "round") == 2,
          "since=1: %s", mt);
    json_decref(mj);
    free(mt);

    /* the table, by hand */
    loom_dash_progress(d, 2, 5, "fit");
    char *st = loom_dash_status_json(d, 100.0);
    json_t *sj = parse(st);
    json_t *c0 = client_of(sj, 0), *c1 = client_of(sj, 1), *c2 = client_of(sj, 2);
    CHECK(!strcmp(json_string_value(json_object_get(c0, "name")), "alice"), "%s", st);
    CHECK(ival(c0, "rounds_contributed") == 1 && dval(c0, "bytes_down") == 100 && dval(c0, "bytes_up") == 30, "alice: %s", st);
    CHECK(ival(c1, "rounds_contributed") == 0 && ival(c1, "stragglers") == 1 && ival(c1, "dropouts") == 1 &&
              dval(c1, "bytes_down") == 200,
          "bob: %s", st);
    CHECK(ival(c2, "rounds_contributed") == 2 && dval(c2, "bytes_up") == 65 && dval(c2, "bytes_down") == 200 &&
              ival(c2, "stragglers") == 0,
          "carol: %s", st);
    CHECK(ival(sj, "round") == 2 && ival(sj, "rounds") == 5 && !strcmp(json_string_value(json_object_get(sj, "state")), "fit"),
          "%s", st);
    CHECK(json_is_true(json_object_get(sj, "dp")) && json_is_false(json_object_get(sj, "attack")), "dp flags: %s", st);
    CHECK(ival(json_object_get(sj, "latest"), "round") == 2 && dval(json_object_get(sj, "latest"), "epsilon") == 0.75,
          "latest row: %s", st);
    CHECK(json_is_null(json_object_get(sj, "sample")), "no sample yet: %s", st);
    /* the file loaded into a fresh board (loom report --serve) gives the same table and rows */
    loom_dash *e;
    CHECK_OK(loom_dash_create(&e));
    CHECK_OK(loom_dash_load_jsonl(e, path, 0));
    char *st2 = loom_dash_status_json(e, 100.0), *mt2 = loom_dash_metrics_json(e, 0);
    json_t *sj2 = parse(st2), *mj2 = parse(mt2);
    const char *keys[] = {"name", "rounds_contributed", "bytes_up", "bytes_down", "stragglers", "dropouts"};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 6; i++)
            CHECK(json_equal(json_object_get(client_of(sj, k), keys[i]), json_object_get(client_of(sj2, k), keys[i])),
                  "client %d's %s differs once loaded: %s", k, keys[i], st2);
    CHECK(json_equal(json_object_get(mj2, "rows"), file_rows), "loaded rows: %.300s", mt2);
    json_decref(sj2);
    json_decref(mj2);
    free(st2);
    free(mt2);
    loom_dash_free(e);
    json_decref(sj);
    free(st);

    /* the routes: a bad since is refused naming it */
    int status;
    const char *ctype;
    char *body;
    size_t len;
    CHECK(loom_dash_route(d, "GET", "/v1/dash/metrics", "-3", 0, &status, &ctype, &body, &len) == 1 && status == 400 &&
              strstr(body, "since"),
          "since=-3: %d %s", status, body);
    free(body);
    CHECK(loom_dash_route(d, "POST", "/v1/dash/status", NULL, 0, &status, &ctype, &body, &len) == 1 && status == 405,
          "POST: %d", status);
    free(body);
    CHECK(loom_dash_route(d, "GET", "/v1/task", NULL, 0, &status, &ctype, &body, &len) == 0, "not a dashboard path");
    json_decref(file_rows);
    loom_dash_free(d);
}

static void test_limits(const char *dir) {
    loom_dash *d;
    CHECK_OK(loom_dash_create(&d));
    char key[32], val[2048];
    int rc = LOOM_OK;
    for (int i = 0; i < LOOM_DASH_MAX_CONFIG && rc == LOOM_OK; i++) {
        snprintf(key, sizeof key, "k%d", i);
        rc = loom_dash_config(d, key, "v");
    }
    CHECK(rc == LOOM_OK, "%d keys: %s", LOOM_DASH_MAX_CONFIG, loom_errmsg());
    CHECK(loom_dash_config(d, "one-more", "v") == LOOM_EINVAL && strstr(loom_errmsg(), "at most 256"), "%s", loom_errmsg());
    CHECK_OK(loom_dash_config(d, "k0", "again")); /* an existing key is replaced */
    /* a value cut at LOOM_DASH_MAX_VALUE bytes, never inside a character: 1023 'a' then a 2-byte 'é' */
    memset(val, 'a', 1023);
    strcpy(val + 1023, "\xc3\xa9tail");
    CHECK_OK(loom_dash_config(d, "k1", val));
    CHECK(loom_dash_config(d, "", "v") == LOOM_EINVAL, "empty key");
    /* a sample cut the same way */
    char big[LOOM_DASH_MAX_SAMPLE + 16];
    memset(big, 'b', sizeof big);
    big[sizeof big - 1] = 0;
    loom_dash_sample(d, 3, big);
    char *st = loom_dash_status_json(d, 0);
    json_t *sj = parse(st);
    const char *v1 = json_string_value(json_object_get(json_object_get(sj, "config"), "k1"));
    CHECK(v1 && strlen(v1) == 1023, "value of %zu bytes, expected 1023 (cut before the 2-byte character)", v1 ? strlen(v1) : 0);
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(sj, "config"), "k0")), "again"), "replaced key");
    json_t *sample = json_object_get(sj, "sample");
    CHECK(ival(sample, "round") == 3 && strlen(json_string_value(json_object_get(sample, "text"))) == LOOM_DASH_MAX_SAMPLE,
          "sample cut to %d bytes", LOOM_DASH_MAX_SAMPLE);
    json_decref(sj);
    free(st);
    /* bad lines */
    CHECK(loom_dash_add_line(d, "not json", 8) == LOOM_EFORMAT && strstr(loom_errmsg(), "not a JSON object"), "%s", loom_errmsg());
    const char *noround = "{\"type\":\"round\"}";
    CHECK(loom_dash_add_line(d, noround, strlen(noround)) == LOOM_EFORMAT && strstr(loom_errmsg(), "\"round\""), "%s",
          loom_errmsg());
    const char *other = "{\"type\":\"event\",\"round\":1}";
    CHECK_OK(loom_dash_add_line(d, other, strlen(other)));
    const char *negk = "{\"type\":\"client\",\"round\":1,\"client\":-2}";
    CHECK(loom_dash_add_line(d, negk, strlen(negk)) == LOOM_EFORMAT && strstr(loom_errmsg(), "client"), "%s", loom_errmsg());
    char path[4200];
    snprintf(path, sizeof path, "%s/bad.jsonl", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"type\":\"round\",\"round\":1}\n\n{\"type\":\"round\",\"round\":\"two\"}\n");
    fclose(f);
    CHECK(loom_dash_load_jsonl(d, path, 0) == LOOM_EFORMAT && strstr(loom_errmsg(), "bad.jsonl line 3"), "%s", loom_errmsg());
    /* the rows kept: beyond LOOM_DASH_MAX_ROWS the oldest tenth goes */
    loom_dash *e;
    CHECK_OK(loom_dash_create(&e));
    rc = LOOM_OK;
    for (int r = 1; r <= LOOM_DASH_MAX_ROWS + 1 && rc == LOOM_OK; r++) {
        char row[64];
        int n = snprintf(row, sizeof row, "{\"type\":\"round\",\"round\":%d}", r);
        rc = loom_dash_add_line(e, row, (size_t)n);
    }
    CHECK_OK(rc);
    char *mt = loom_dash_metrics_json(e, LOOM_DASH_MAX_ROWS - 1);
    json_t *mj = parse(mt);
    CHECK(ival(mj, "first_round") == LOOM_DASH_MAX_ROWS / 10 + 1 && ival(mj, "last_round") == LOOM_DASH_MAX_ROWS + 1 &&
              json_array_size(json_object_get(mj, "rows")) == 2,
          "%.300s", mt);
    json_decref(mj);
    free(mt);
    mt = loom_dash_metrics_json(e, 0); /* an answer holds at most 5000 rows and says there are more */
    mj = parse(mt);
    CHECK(json_array_size(json_object_get(mj, "rows")) == 5000 && json_is_true(json_object_get(mj, "more")) &&
              ival(mj, "last_round") == LOOM_DASH_MAX_ROWS / 10 + 5000,
          "first answer: %zu rows, last %lld", json_array_size(json_object_get(mj, "rows")), ival(mj, "last_round"));
    json_decref(mj);
    free(mt);
    loom_dash_free(e);
    loom_dash_free(d);
}

/* The page's files are web/'s, byte for byte. */
static void test_assets(void) {
    const char *src = getenv("LOOM_SRC");
    const char *files[3][2] = {{"/", "index.html"}, {"/dash.js", "dash.js"}, {"/dash.css", "dash.css"}};
    for (int i = 0; i < 3; i++) {
        const loom_dash_asset *a = loom_dash_find_asset(files[i][0]);
        CHECK(a != NULL, "no asset %s", files[i][0]);
        if (!a || !src) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/web/%s", src, files[i][1]);
        char *data = NULL;
        size_t n = 0;
        CHECK_OK(loom_read_file(path, &data, &n));
        CHECK(data && n == a->len && !memcmp(data, a->data, n), "%s: %zu bytes built in, %zu in %s", files[i][0], a->len, n, path);
        free(data);
    }
    CHECK(loom_dash_find_asset("/index.html") == loom_dash_find_asset("/"), "index.html is /");
    CHECK(loom_dash_find_asset("/../etc/passwd") == NULL && loom_dash_find_asset("/v1/status") == NULL, "other paths");
}

/* ------------------------------------------------------------------ over HTTP */

typedef struct {
    char *p;
    size_t n;
} buf;

static size_t on_data(char *p, size_t sz, size_t n, void *ud) {
    buf *b = ud;
    char *np = realloc(b->p, b->n + sz * n + 1);
    if (!np) return 0;
    memcpy(np + b->n, p, sz * n);
    b->p = np;
    b->n += sz * n;
    b->p[b->n] = 0;
    return sz * n;
}

static long get(int port, const char *path, const char *token, buf *b) {
    CURL *c = curl_easy_init();
    char url[256], auth[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    struct curl_slist *h = NULL;
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h = curl_slist_append(h, auth);
    }
    memset(b, 0, sizeof *b);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    long code = 0;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return code;
}

static void test_http(void) {
    loom_dash *d;
    CHECK_OK(loom_dash_create(&d));
    const char *row = "{\"type\":\"round\",\"round\":1,\"train_loss\":2.5}";
    CHECK_OK(loom_dash_add_line(d, row, strlen(row)));
    const char *token = "0123456789abcdef0123456789abcdef";
    loom_dash_http *h = NULL;
    int port = 0;
    CHECK(loom_dash_serve(&h, d, "127.0.0.1:0:0", token, &port) == LOOM_EINVAL && strstr(loom_errmsg(), "--serve"),
          "a bad address: %s", loom_errmsg());
    CHECK(loom_dash_serve(&h, d, "0", "short", &port) == LOOM_EINVAL && strstr(loom_errmsg(), "16"), "%s", loom_errmsg());
    CHECK_OK(loom_dash_serve(&h, d, "0", token, &port));
    CHECK(port > 0, "port %d", port);
    buf b;
    long code = get(port, "/", NULL, &b);
    CHECK(code == 200 && b.p && strstr(b.p, "login-form"), "page without a token: %ld", code);
    free(b.p);
    code = get(port, "/v1/dash/status", NULL, &b);
    CHECK(code == 401 && b.p && strstr(b.p, "unauthorized"), "status without a token: %ld %s", code, b.p ? b.p : "");
    free(b.p);
    code = get(port, "/v1/dash/metrics", "0123456789abcdef0123456789abcdee", &b);
    CHECK(code == 401, "a wrong token: %ld", code);
    free(b.p);
    code = get(port, "/v1/dash/metrics?since=0", token, &b);
    json_t *j = code == 200 ? parse(b.p) : NULL;
    CHECK(code == 200 && dval(json_array_get(json_object_get(j, "rows"), 0), "train_loss") == 2.5, "metrics: %ld %s", code,
          b.p ? b.p : "");
    json_decref(j);
    free(b.p);
    code = get(port, "/nothing", token, &b);
    CHECK(code == 404, "another path: %ld", code);
    free(b.p);
    loom_dash_serve_stop(h);
    loom_dash_free(d);
}

/* ------------------------------------------------------------------ threads */

enum { FEEDERS = 2, RENDERERS = 2, PER_FEEDER = 200 };
static loom_dash *g_d;

static void *feeder(void *arg) {
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < PER_FEEDER; i++) {
        int round = 1 + id * PER_FEEDER + i, list[1] = {id};
        loom_round_metrics m = round_row(round, 1.0, 8, 4);
        loom_dash_round(g_d, &m, list, 1);
        loom_client_row c = client_row(round, id, 1.0, 4, LOOM_UPDATE_ACCEPTED);
        loom_dash_client(g_d, &c, NULL, 10);
        loom_dash_client_seen(g_d, id, 1, i % 2, 1.0 + i, "training");
        loom_dash_progress(g_d, round, FEEDERS * PER_FEEDER, "fit");
    }
    return NULL;
}

static void *renderer(void *arg) {
    (void)arg;
    for (int i = 0; i < 100; i++) {
        free(loom_dash_status_json(g_d, 0));
        free(loom_dash_metrics_json(g_d, i));
    }
    return NULL;
}

static void test_threads(void) {
    CHECK_OK(loom_dash_create(&g_d));
    CHECK_OK(loom_dash_set_clients(g_d, FEEDERS, NULL));
    pthread_t t[FEEDERS + RENDERERS];
    for (int i = 0; i < FEEDERS; i++) pthread_create(&t[i], NULL, feeder, (void *)(intptr_t)i);
    for (int i = 0; i < RENDERERS; i++) pthread_create(&t[FEEDERS + i], NULL, renderer, NULL);
    for (int i = 0; i < FEEDERS + RENDERERS; i++) pthread_join(t[i], NULL);
    char *mt = loom_dash_metrics_json(g_d, 0), *st = loom_dash_status_json(g_d, 0);
    json_t *mj = parse(mt), *sj = parse(st);
    json_t *rows = json_object_get(mj, "rows");
    int ordered = 1;
    for (size_t i = 0; i < json_array_size(rows); i++) ordered &= ival(json_array_get(rows, i), "round") == (long long)i + 1;
    CHECK(json_array_size(rows) == FEEDERS * PER_FEEDER && ordered, "%zu rows, in round order: %d", json_array_size(rows), ordered);
    for (int k = 0; k < FEEDERS; k++)
        CHECK(ival(client_of(sj, k), "rounds_contributed") == PER_FEEDER && dval(client_of(sj, k), "bytes_down") == 8.0 * PER_FEEDER,
              "client %d: %s", k, st);
    json_decref(mj);
    json_decref(sj);
    free(mt);
    free(st);
    loom_dash_free(g_d);
}

int main(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char dir[4096];
    if (!test_tmpdir(dir, sizeof dir)) return 1;
    test_rows_and_table(dir);
    test_limits(dir);
    test_assets();
    test_http();
    test_threads();
    test_rmtree(dir);
    curl_global_cleanup();
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
