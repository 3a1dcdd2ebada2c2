/* The run-status board (include/loom/dash.h): the state a dashboard shows, fed by a driver and
 * rendered as the dashboard API's JSON. Transport-free; one lock. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loom/core.h"
#include "loom/dash.h"

typedef struct {
    char name[65];
    char state[24];
    int registered, active;
    int named;                 /* the name came from the driver or a row (not "client-K") */
    double last_seen;
    long contributed, stragglers, dropouts;
    double bytes_up, bytes_down;
} dclient;

typedef struct {
    int round;
    char *row;                 /* the metrics.jsonl round row, without its newline */
    int n;                     /* accepted clients' losses seen */
    double lmin, lmax, lsum;
} drow;

struct loom_dash {
    pthread_mutex_t mu;
    json_t *config;            /* object of strings */
    int round, rounds;
    char state[32];
    double updated_at;
    dclient *cl;
    int ncl;
    drow *rows;
    size_t nrows, cap;
    char *sample;
    int sample_round;
    int dp, attack;
};

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int loom_dash_create(loom_dash **out) {
    *out = NULL;
    loom_dash *d = calloc(1, sizeof *d);
    if (!d || !(d->config = json_object())) {
        free(d);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    pthread_mutex_init(&d->mu, NULL);
    snprintf(d->state, sizeof d->state, "waiting");
    d->updated_at = wall();
    *out = d;
    return LOOM_OK;
}

void loom_dash_free(loom_dash *d) {
    if (!d) return;
    json_decref(d->config);
    for (size_t i = 0; i < d->nrows; i++) free(d->rows[i].row);
    free(d->rows);
    free(d->cl);
    free(d->sample);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* The longest prefix of s of at most max bytes that ends on a UTF-8 character boundary. */
static size_t utf8_cut(const char *s, size_t max) {
    size_t n = strlen(s);
    if (n <= max) return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    return n;
}

/* A JSON string of s cut to max bytes; invalid UTF-8 becomes "?" runs (never NULL unless out of memory). */
static json_t *jstr(const char *s, size_t max) {
    if (!s) s = "";
    size_t n = utf8_cut(s, max);
    json_t *j = json_stringn(s, n);
    if (j) return j;
    char *c = malloc(n + 1);
    if (!c) return NULL;
    for (size_t i = 0; i < n; i++) c[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
    c[n] = 0;
    j = json_string(c);
    free(c);
    return j;
}

int loom_dash_config(loom_dash *d, const char *key, const char *value) {
    if (!key || !*key || strlen(key) > 63)
        return loom_error(LOOM_EINVAL, "dashboard configuration key %.64s: 1 to 63 bytes", key ? key : "(null)");
    json_t *v = jstr(value, LOOM_DASH_MAX_VALUE);
    if (!v) return loom_error(LOOM_ENOMEM, "out of memory");
    pthread_mutex_lock(&d->mu);
    int rc = LOOM_OK;
    if (!json_object_get(d->config, key) && json_object_size(d->config) >= LOOM_DASH_MAX_CONFIG) {
        json_decref(v);
        rc = loom_error(LOOM_EINVAL, "the dashboard keeps at most %d configuration keys (%.63s refused)",
                        LOOM_DASH_MAX_CONFIG, key);
    } else if (json_object_set_new(d->config, key, v) != 0) rc = loom_error(LOOM_EINVAL, "bad configuration key %.63s", key);
    d->updated_at = wall();
    pthread_mutex_unlock(&d->mu);
    return rc;
}

int loom_dash_config_json(loom_dash *d, const char *text) {
    json_error_t e;
    json_t *j = text ? json_loads(text, 0, &e) : NULL;
    if (!json_is_object(j)) {
        json_decref(j);
        return loom_error(LOOM_EFORMAT, "the run configuration is not a JSON object%s%s", text ? ": " : "",
                          text ? e.text : "");
    }
    const char *k;
    json_t *v;
    int rc = LOOM_OK;
    json_object_foreach(j, k, v) {
        if (strlen(k) > 63 || json_is_null(v)) continue;
        if (json_is_string(v)) rc = loom_dash_config(d, k, json_string_value(v));
        else if (json_is_real(v)) { /* a float setting as the user wrote it, not its double expansion */
            char t[32];
            snprintf(t, sizeof t, "%.7g", json_real_value(v));
            rc = loom_dash_config(d, k, t);
        } else {
            char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            rc = t ? loom_dash_config(d, k, t) : loom_error(LOOM_ENOMEM, "out of memory");
            free(t);
        }
        if (rc != LOOM_OK) break;
    }
    json_decref(j);
    return rc;
}

void loom_dash_progress(loom_dash *d, int round, int rounds, const char *state) {
    pthread_mutex_lock(&d->mu);
    d->round = round;
    if (rounds > 0) d->rounds = rounds;
    if (state) snprintf(d->state, sizeof d->state, "%.*s", (int)utf8_cut(state, 31), state);
    d->updated_at = wall();
    pthread_mutex_unlock(&d->mu);
}

/* Grows the table to n clients (the caller holds mu). */
static int grow_clients(loom_dash *d, int n) {
    if (n <= d->ncl) return LOOM_OK;
    if (n > LOOM_DASH_MAX_CLIENTS) return loom_error(LOOM_EINVAL, "the dashboard keeps at most %d clients", LOOM_DASH_MAX_CLIENTS);
    dclient *c = realloc(d->cl, (size_t)n * sizeof *c);
    if (!c) return loom_error(LOOM_ENOMEM, "out of memory");
    memset(c + d->ncl, 0, (size_t)(n - d->ncl) * sizeof *c);
    for (int i = d->ncl; i < n; i++) {
        snprintf(c[i].name, sizeof c[i].name, "client-%d", i);
        snprintf(c[i].state, sizeof c[i].state, "idle");
    }
    d->cl = c;
    d->ncl = n;
    return LOOM_OK;
}

int loom_dash_set_clients(loom_dash *d, int n, const char *const *names) {
    if (n < 0 || n > LOOM_DASH_MAX_CLIENTS)
        return loom_error(LOOM_EINVAL, "%d clients: the dashboard keeps 0 to %d", n, LOOM_DASH_MAX_CLIENTS);
    pthread_mutex_lock(&d->mu);
    int rc = grow_clients(d, n);
    if (rc == LOOM_OK) {
        d->ncl = n;
        for (int i = 0; names && i < n; i++)
            if (names[i]) {
                snprintf(d->cl[i].name, sizeof d->cl[i].name, "%.*s", (int)utf8_cut(names[i], 64), names[i]);
                d->cl[i].named = 1;
            }
    }
    d->updated_at = wall();
    pthread_mutex_unlock(&d->mu);
    return rc;
}

void loom_dash_client_seen(loom_dash *d, int k, int registered, int active, double last_seen, const char *state) {
    pthread_mutex_lock(&d->mu);
    if (k >= 0 && k < d->ncl) {
        dclient *c = &d->cl[k];
        c->registered = registered != 0;
        c->active = active != 0;
        if (last_seen > 0) c->last_seen = last_seen;
        if (state) snprintf(c->state, sizeof c->state, "%.*s", (int)utf8_cut(state, 23), state);
    }
    pthread_mutex_unlock(&d->mu);
}

/* ------------------------------------------------------------------ rows */

static int json_whole(json_t *v, long long lo, long long hi, long long *out) {
    if (!json_is_integer(v)) return 0;
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return 0;
    *out = x;
    return 1;
}

/* The kept row of `round` (the caller holds mu), or NULL. Rows are in round order: search from the end. */
static drow *find_row(loom_dash *d, int round) {
    for (size_t i = d->nrows; i-- > 0;) {
        if (d->rows[i].round == round) return &d->rows[i];
        if (d->rows[i].round < round) break;
    }
    return NULL;
}

/* A round row (text of len bytes, parsed j) into the rows (the caller holds mu). */
static int put_round(loom_dash *d, json_t *j, const char *text, size_t len, int round, double now_seen) {
    char *t = malloc(len + 1);
    if (!t) return loom_error(LOOM_ENOMEM, "out of memory");
    memcpy(t, text, len);
    t[len] = 0;
    drow *r = find_row(d, round);
    if (r) { /* a round given again (a resumed run redoes it): the new row replaces the old one */
        free(r->row);
        r->row = t;
        r->n = 0;
        r->lmin = r->lmax = r->lsum = 0;
    } else {
        if (d->nrows == LOOM_DASH_MAX_ROWS) { /* drop the oldest tenth at once */
            size_t drop = LOOM_DASH_MAX_ROWS / 10;
            for (size_t i = 0; i < drop; i++) free(d->rows[i].row);
            memmove(d->rows, d->rows + drop, (d->nrows - drop) * sizeof *d->rows);
            d->nrows -= drop;
        }
        if (d->nrows == d->cap) {
            size_t cap = d->cap ? 2 * d->cap : 64;
            drow *nr = realloc(d->rows, cap * sizeof *nr);
            if (!nr) {
                free(t);
                return loom_error(LOOM_ENOMEM, "out of memory");
            }
            d->rows = nr;
            d->cap = cap;
        }
        size_t at = d->nrows; /* rows stay in round order */
        while (at > 0 && d->rows[at - 1].round > round) at--;
        memmove(d->rows + at + 1, d->rows + at, (d->nrows - at) * sizeof *d->rows);
        d->rows[at] = (drow){round, t, 0, 0, 0, 0};
        d->nrows++;
    }
    if (json_object_get(j, "epsilon")) d->dp = 1;
    if (json_object_get(j, "attack_success")) d->attack = 1;
    if (round > d->round) d->round = round;
    /* the round's traffic down, shared evenly by its sampled clients */
    json_t *list = json_object_get(j, "clients");
    json_t *bd = json_object_get(j, "bytes_down");
    size_t n = json_array_size(list);
    if (n > 0 && json_is_number(bd)) {
        double share = json_number_value(bd) / (double)n;
        for (size_t i = 0; i < n; i++) {
            long long k;
            if (!json_whole(json_array_get(list, i), 0, LOOM_DASH_MAX_CLIENTS - 1, &k)) continue;
            if (grow_clients(d, (int)k + 1) != LOOM_OK) break;
            d->cl[k].bytes_down += share;
            if (now_seen > 0) d->cl[k].active = 0;
        }
    }
    return LOOM_OK;
}

/* A client row's fields into the table (the caller holds mu): name (NULL: keep), status, loss and
 * bytes_up (NAN: none). */
static int put_client_fields(loom_dash *d, int round, long long k, const char *name, const char *st, double loss,
                             double bytes_up, double now_seen) {
    int rc = grow_clients(d, (int)k + 1);
    if (rc != LOOM_OK) return rc;
    dclient *c = &d->cl[k];
    if (!c->named && name && *name) {
        snprintf(c->name, sizeof c->name, "%.*s", (int)utf8_cut(name, 64), name);
        c->named = 1;
    }
    st = st ? st : "";
    if (isfinite(bytes_up)) c->bytes_up += bytes_up;
    if (!strcmp(st, "accepted")) {
        c->contributed++;
        drow *r = find_row(d, round);
        if (r && isfinite(loss)) {
            double x = loss;
            if (r->n == 0 || x < r->lmin) r->lmin = x;
            if (r->n == 0 || x > r->lmax) r->lmax = x;
            r->lsum += x;
            r->n++;
        }
    } else if (!strcmp(st, "late")) c->stragglers++;
    else if (!strcmp(st, "client failure") || !strcmp(st, "no update")) c->dropouts++;
    if (*st) snprintf(c->state, sizeof c->state, "%.*s", (int)utf8_cut(st, 23), st);
    c->registered = 1;
    if (now_seen > 0 && strcmp(st, "no update")) c->last_seen = now_seen;
    return LOOM_OK;
}

static double jnumber(json_t *v) { return json_is_number(v) ? json_number_value(v) : NAN; }

/* A client row (parsed) into the table (the caller holds mu). */
static int put_client(loom_dash *d, json_t *j, int round, double now_seen) {
    long long k;
    if (!json_whole(json_object_get(j, "client"), 0, LOOM_DASH_MAX_CLIENTS - 1, &k))
        return loom_error(LOOM_EFORMAT, "a client row without a whole \"client\" in [0, %d)", LOOM_DASH_MAX_CLIENTS);
    return put_client_fields(d, round, k, json_string_value(json_object_get(j, "name")),
                             json_string_value(json_object_get(j, "status")), jnumber(json_object_get(j, "loss")),
                             jnumber(json_object_get(j, "bytes_up")), now_seen);
}

static int add_line(loom_dash *d, const char *line, size_t len, double now_seen) {
    if (len > LOOM_DASH_MAX_LINE)
        return loom_error(LOOM_EFORMAT, "a metrics row of %zu bytes, more than %d", len, LOOM_DASH_MAX_LINE);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ')) len--;
    json_error_t e;
    json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(j)) {
        json_decref(j);
        return loom_error(LOOM_EFORMAT, "not a JSON object%s%s", j ? "" : ": ", j ? "" : e.text);
    }
    const char *type = json_string_value(json_object_get(j, "type"));
    int rc = LOOM_OK;
    long long round;
    if (!type) rc = loom_error(LOOM_EFORMAT, "a row without a \"type\"");
    else if (strcmp(type, "round") && strcmp(type, "client")) rc = LOOM_OK; /* other rows: not shown */
    else if (!json_whole(json_object_get(j, "round"), 1, 1 << 30, &round))
        rc = loom_error(LOOM_EFORMAT, "a %s row without a whole \"round\" >= 1", type);
    else {
        pthread_mutex_lock(&d->mu);
        rc = !strcmp(type, "round") ? put_round(d, j, line, len, (int)round, now_seen)
                                     : put_client(d, j, (int)round, now_seen);
        d->updated_at = wall();
        pthread_mutex_unlock(&d->mu);
    }
    json_decref(j);
    return rc;
}

int loom_dash_add_line(loom_dash *d, const char *line, size_t len) { return add_line(d, line, len, 0); }

/* A row written by the metrics.jsonl writer into memory, then added. */
#define WITH_ROW(call)                                     \
    do {                                                   \
        char *buf_ = NULL;                                 \
        size_t len_ = 0;                                   \
        FILE *mem_ = open_memstream(&buf_, &len_);         \
        if (!mem_) return;                                 \
        call;                                              \
        fclose(mem_);                                      \
        if (buf_) add_line(d, buf_, len_, wall());         \
        free(buf_);                                        \
    } while (0)

void loom_dash_round(loom_dash *d, const loom_round_metrics *m, const int *clients, int n) {
    WITH_ROW(loom_metrics_jsonl_round(mem_, m, clients, n));
}

/* A client row goes straight into the table (only round rows are kept as text): the fields that
 * loom_metrics_jsonl_client writes and put_client reads, without the text in between. */
void loom_dash_client(loom_dash *d, const loom_client_row *r, const char *name, uint64_t examples) {
    (void)examples;
    if (r->round < 1 || r->client < 0 || r->client >= LOOM_DASH_MAX_CLIENTS) return;
    double now = wall();
    pthread_mutex_lock(&d->mu);
    put_client_fields(d, r->round, r->client, name, r->status, r->loss, r->bytes_up, now);
    d->updated_at = now;
    pthread_mutex_unlock(&d->mu);
}

int loom_dash_load_jsonl(loom_dash *d, const char *path, size_t max_bytes) {
    if (!max_bytes) max_bytes = (size_t)1 << 30;
    FILE *f = fopen(path, "rb");
    if (!f) return loom_error(LOOM_EIO, "cannot open %s", path);
    char *line = NULL;
    size_t cap = 0, total = 0;
    ssize_t n;
    long no = 0;
    int rc = LOOM_OK;
    while ((n = getline(&line, &cap, f)) >= 0) {
        no++;
        total += (size_t)n;
        if (total > max_bytes) {
            rc = loom_error(LOOM_EFORMAT, "%s is larger than %zu bytes", path, max_bytes);
            break;
        }
        size_t k = (size_t)n;
        while (k > 0 && (line[k - 1] == '\n' || line[k - 1] == '\r' || line[k - 1] == ' ')) k--;
        if (k == 0) continue;
        if ((rc = add_line(d, line, k, 0)) != LOOM_OK) {
            rc = loom_error_context(rc, "%s line %ld", path, no);
            break;
        }
    }
    free(line);
    fclose(f);
    return rc;
}

void loom_dash_sample(loom_dash *d, int round, const char *text) {
    size_t n = utf8_cut(text ? text : "", LOOM_DASH_MAX_SAMPLE);
    char *t = malloc(n + 1);
    if (!t) return;
    memcpy(t, text ? text : "", n);
    t[n] = 0;
    pthread_mutex_lock(&d->mu);
    free(d->sample);
    d->sample = t;
    d->sample_round = round;
    d->updated_at = wall();
    pthread_mutex_unlock(&d->mu);
}

/* ------------------------------------------------------------------ the tee sink */

static void tee_round(void *ud, const loom_round_metrics *m, const int *clients, int n) {
    loom_dash_tee *t = ud;
    loom_dash_round(t->d, m, clients, n);
    if (t->next.round) t->next.round(t->next.ud, m, clients, n);
}

static void tee_client(void *ud, const loom_client_row *r) {
    loom_dash_tee *t = ud;
    loom_dash_client(t->d, r, t->names ? t->names[r->client] : NULL, r->examples);
    if (t->next.client) t->next.client(t->next.ud, r);
}

loom_metrics_sink loom_dash_sink(loom_dash_tee *t, loom_dash *d, loom_metrics_sink next, const char *const *names) {
    t->d = d;
    t->next = next;
    t->names = names;
    return (loom_metrics_sink){tee_round, tee_client, t};
}

/* ------------------------------------------------------------------ rendering */

static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

char *loom_dash_status_json(loom_dash *d, double now) {
    json_t *o = json_object();
    if (!o) return NULL;
    pthread_mutex_lock(&d->mu);
    json_object_set(o, "config", d->config);
    json_object_set_new(o, "round", json_integer(d->round));
    json_object_set_new(o, "rounds", json_integer(d->rounds));
    json_object_set_new(o, "state", json_string(d->state));
    json_object_set_new(o, "updated_at", json_real(d->updated_at));
    json_object_set_new(o, "now", jnum(now));
    json_object_set_new(o, "clients_total", json_integer(d->ncl));
    json_t *cl = json_array();
    int shown = d->ncl < LOOM_DASH_STATUS_CLIENTS ? d->ncl : LOOM_DASH_STATUS_CLIENTS;
    for (int k = 0; k < shown; k++) {
        const dclient *c = &d->cl[k];
        json_t *x = json_object();
        json_object_set_new(x, "client", json_integer(k));
        json_object_set_new(x, "name", jstr(c->name, 64));
        json_object_set_new(x, "registered", json_boolean(c->registered));
        json_object_set_new(x, "active", json_boolean(c->active));
        json_object_set_new(x, "state", jstr(c->state, 23));
        json_object_set_new(x, "last_seen", c->last_seen > 0 ? json_real(c->last_seen) : json_null());
        json_object_set_new(x, "rounds_contributed", json_integer(c->contributed));
        json_object_set_new(x, "bytes_up", json_real(c->bytes_up));
        json_object_set_new(x, "bytes_down", json_real(c->bytes_down));
        json_object_set_new(x, "stragglers", json_integer(c->stragglers));
        json_object_set_new(x, "dropouts", json_integer(c->dropouts));
        json_array_append_new(cl, x);
    }
    json_object_set_new(o, "clients", cl);
    json_t *latest = d->nrows ? json_loads(d->rows[d->nrows - 1].row, 0, NULL) : NULL;
    json_object_set_new(o, "latest", latest ? latest : json_null());
    if (d->sample) {
        json_t *s = json_object();
        json_object_set_new(s, "round", json_integer(d->sample_round));
        json_object_set_new(s, "text", jstr(d->sample, LOOM_DASH_MAX_SAMPLE));
        json_object_set_new(o, "sample", s);
    } else json_object_set_new(o, "sample", json_null());
    json_object_set_new(o, "dp", json_boolean(d->dp));
    json_object_set_new(o, "attack", json_boolean(d->attack));
    pthread_mutex_unlock(&d->mu);
    char *t = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return t;
}

/* A growing text buffer. */
typedef struct {
    char *p;
    size_t n, cap;
    int bad;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->bad) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->bad = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0) sb_add(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

static void sb_num(sbuf *b, const char *key, double v) {
    if (isfinite(v)) sb_printf(b, ",\"%s\":%.9g", key, v);
    else sb_printf(b, ",\"%s\":null", key);
}

/* At most this many rows per answer: a dashboard asks again from the last one it got. */
#define DASH_ROWS_PER_ANSWER 5000

char *loom_dash_metrics_json(loom_dash *d, long since) {
    sbuf b = {0};
    pthread_mutex_lock(&d->mu);
    size_t lo = 0;
    while (lo < d->nrows && d->rows[lo].round <= since) lo++;
    size_t hi = d->nrows - lo > DASH_ROWS_PER_ANSWER ? lo + DASH_ROWS_PER_ANSWER : d->nrows;
    sb_printf(&b, "{\"since\":%ld,\"first_round\":%d,\"last_round\":%d,\"more\":%s,\"rows\":[", since,
              d->nrows ? d->rows[0].round : 0, hi > lo ? d->rows[hi - 1].round : (int)(since > 0 ? since : 0),
              hi < d->nrows ? "true" : "false");
    for (size_t i = lo; i < hi; i++) {
        if (i > lo) sb_add(&b, ",", 1);
        sb_add(&b, d->rows[i].row, strlen(d->rows[i].row));
    }
    sb_add(&b, "],\"spread\":[", 12);
    for (size_t i = lo; i < hi; i++) {
        const drow *r = &d->rows[i];
        sb_printf(&b, "%s{\"round\":%d,\"n\":%d", i > lo ? "," : "", r->round, r->n);
        sb_num(&b, "loss_min", r->n ? r->lmin : NAN);
        sb_num(&b, "loss_mean", r->n ? r->lsum / r->n : NAN);
        sb_num(&b, "loss_max", r->n ? r->lmax : NAN);
        sb_add(&b, "}", 1);
    }
    sb_add(&b, "]}", 2);
    pthread_mutex_unlock(&d->mu);
    if (b.bad) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
