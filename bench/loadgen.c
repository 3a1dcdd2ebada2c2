/* loadgen: N simulated federation clients speaking docs/protocol.md against a running `loom server`,
 * in one thread over the libcurl multi interface (keep-alive connections, one per client).
 *
 *     loadgen --url https://127.0.0.1:8443 --ca-cert cert.pem --clients tokens.txt [--n 1000]
 *             [--retry-ms 500] [--duration 60] [--seed 1] [--base-sha256 HEX (a PEFT run's frozen base)]
 *     loadgen ... --base-model gpt2-124m --base-seed 1   the base's hash from a model made from a shape
 *                                             with that seed (as `loom server` makes it)
 *     loadgen ... --uploads K                 stop once K uploads were accepted
 *     loadgen ... --n 1 --write-body FILE     the first fit's encoded update goes to FILE (not sent):
 *                                             a reference upload with another tool (curl)
 *
 * tokens.txt: one "NAME TOKEN" a line. Each client says hello, polls /v1/task every retry_ms (+-20 %),
 * and on a fit task uploads a prepared update (the same values for everyone, encoded with that client's
 * run, round, version and index; loom_update_encode, F32), under the body's SHA-256 as idempotency
 * key (encoded and hashed by a worker thread, so that the event loop never stalls on it); eval tasks
 * get a fixed report. It does not download the global model. It ends when every
 * client was told "done", or after --duration seconds, and prints requests/s, p50/p99 latency of
 * polls and uploads, bytes uploaded and MB/s, and the answers by status. */
#include <curl/curl.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <pthread.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/update.h"

enum { K_HELLO, K_POLL, K_UPLOAD, K_EVAL, K_KINDS };
static const char *kind_name[K_KINDS] = {"hello", "poll", "upload", "eval"};

typedef struct {
    char name[128];
    char auth[640];
    CURL *h;
    struct curl_slist *hdr;
    int busy, done, kind, said_hello, want_eval;
    int prep;                   /* upload body: 0 none, 1 being encoded by the worker, 2 ready (atomic) */
    double due, t0;             /* next request; start of the one in flight */
    double backoff;
    loom_strbuf resp;
    uint8_t *body;              /* the upload in flight */
    size_t body_len;
    char key[65];
    int client, round, uploaded_round, evaluated_round;
    uint64_t version;
    uint64_t run_id;
} sim;

typedef struct {
    double *v;
    size_t n, cap;
} series;

static void series_add(series *s, double x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 1024;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = x;
}
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double series_pct(series *s, double p) {
    if (!s->n) return 0;
    qsort(s->v, s->n, sizeof *s->v, cmp_double);
    size_t i = (size_t)(p * (double)(s->n - 1) + 0.5);
    return s->v[i];
}

static struct {
    const char *url, *ca, *clients, *write_body, *base_sha;
    int n, retry_ms, max_uploads;
    long accepted;
    double duration;
    uint64_t seed;
    size_t dim;
    float *values;
    loom_rng rng;
    series lat[K_KINDS];        /* every request */
    series steady[K_KINDS];     /* requests started once every client had said hello (plus 1 s) */
    double steady_t0;           /* 0 until then */
    int hellos;
    long steady_requests;
    size_t steady_bytes;
    long answers[K_KINDS][6];   /* by status class: 0 none/transport, 2xx, 3xx, 4xx, 5xx, other */
    long requests;
    size_t bytes_up;
    int wrote_body;
    long connects;              /* new connections (TLS handshakes): keep-alive keeps this near N */
} G;

static size_t on_body(char *buf, size_t size, size_t n, void *ud) {
    sim *s = ud;
    size_t len = size * n;
    if (s->resp.n + len > (1u << 20)) return 0;
    loom_strbuf_add(&s->resp, buf, len);
    return len;
}

static double jitter(void) { return 0.8 + 0.4 * loom_rng_uniform(&G.rng); }

static void start(CURLM *multi, sim *s, double now) {
    CURL *h = s->h;
    curl_easy_reset(h);
    char url[1200];
    const char *path = "/v1/task";
    s->kind = K_POLL;
    if (!s->said_hello) {
        path = "/v1/hello";
        s->kind = K_HELLO;
    } else if (s->body) {
        path = "/v1/update";
        s->kind = K_UPLOAD;
    } else if (s->want_eval) {
        path = "/v1/eval";
        s->kind = K_EVAL;
    }
    snprintf(url, sizeof url, "%s%s", G.url, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(h, CURLOPT_PRIVATE, s);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 30L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 600L);
    if (G.ca) { /* that file only: loading the system's CA directory costs ~40 ms a connection */
        curl_easy_setopt(h, CURLOPT_CAINFO, G.ca);
        curl_easy_setopt(h, CURLOPT_CAPATH, NULL);
    }
    curl_slist_free_all(s->hdr);
    s->hdr = curl_slist_append(NULL, s->auth);
    static char hello[400];
    if (s->kind == K_HELLO) {
        char base[80] = "null";
        if (G.base_sha) snprintf(base, sizeof base, "\"%.64s\"", G.base_sha);
        snprintf(hello, sizeof hello, "{\"name\":\"%s\",\"loom\":\"loadgen\",\"base_sha256\":%s}", s->name, base);
        s->hdr = curl_slist_append(s->hdr, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, hello);
    } else if (s->kind == K_UPLOAD) {
        char line[128];
        s->hdr = curl_slist_append(s->hdr, "Content-Type: application/octet-stream");
        snprintf(line, sizeof line, "Idempotency-Key: %s", s->key);
        s->hdr = curl_slist_append(s->hdr, line);
        snprintf(line, sizeof line, "X-Loom-SHA256: %s", s->key);
        s->hdr = curl_slist_append(s->hdr, line);
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, s->body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body_len);
    } else if (s->kind == K_EVAL) {
        char ev[160];
        snprintf(ev, sizeof ev, "{\"round\":%d,\"loss_sum\":1.0,\"tokens\":1,\"correct\":0,\"count\":1}", s->round);
        s->hdr = curl_slist_append(s->hdr, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_COPYPOSTFIELDS, ev);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, s->hdr);
    s->resp.n = 0;
    s->busy = 1;
    s->t0 = now;
    G.requests++;
    curl_multi_add_handle(multi, h);
}

/* Builds the prepared update for this client's fit task. */
static int prepare_upload(sim *s) {
    loom_update u = {.run_id = s->run_id, .round = s->round, .version = s->version, .client = s->client,
                     .examples = 10, .loss = 2.5, .tokens = 320, .codec = LOOM_CODEC_F32, .len = G.dim,
                     .values = G.values};
    loom_codec_opts co = {.codec = LOOM_CODEC_F32};
    if (loom_update_encode(&u, &co, &s->body, &s->body_len) != LOOM_OK) {
        fprintf(stderr, "loadgen: cannot encode an update: %s\n", loom_errmsg());
        return -1;
    }
    uint8_t d[32];
    gnutls_hash_fast(GNUTLS_DIG_SHA256, s->body, s->body_len, d);
    loom_hex(d, 32, s->key);
    return 0;
}

/* The encoding worker: a queue of clients whose upload body is to be built. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    sim **q;
    size_t head, tail, cap;
    int quit;
} W = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0, 0};

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&W.mu);
    for (;;) {
        while (W.head == W.tail && !W.quit) pthread_cond_wait(&W.cv, &W.mu);
        if (W.head == W.tail) break;
        sim *s = W.q[W.head++ % W.cap];
        pthread_mutex_unlock(&W.mu);
        int ok = prepare_upload(s) == 0;
        __atomic_store_n(&s->prep, ok ? 2 : 0, __ATOMIC_RELEASE);
        pthread_mutex_lock(&W.mu);
    }
    pthread_mutex_unlock(&W.mu);
    return NULL;
}

static void enqueue(sim *s) {
    __atomic_store_n(&s->prep, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&W.mu);
    W.q[W.tail++ % W.cap] = s;
    pthread_cond_signal(&W.cv);
    pthread_mutex_unlock(&W.mu);
}

static json_t *answer(sim *s) {
    return s->resp.s && s->resp.n ? json_loadb(s->resp.s, s->resp.n, 0, NULL) : NULL;
}

static void finish(sim *s, CURLcode cc, long status, double now) {
    double lat = now - s->t0;
    int cls = cc != CURLE_OK ? 0 : status >= 200 && status < 600 ? (int)(status / 100) : 5;
    G.answers[s->kind][cls]++;
    s->busy = 0;
    double poll = G.retry_ms / 1000.0 * jitter();
    if (cls == 0 || cls == 5) { /* transient: back off */
        if (cls == 0) fprintf(stderr, "loadgen: %s %s: %s\n", s->name, kind_name[s->kind], curl_easy_strerror(cc));
        s->backoff = s->backoff ? LOOM_MIN(s->backoff * 2, 30.0) : 0.2;
        s->due = now + s->backoff * jitter();
        return;
    }
    s->backoff = 0;
    series_add(&G.lat[s->kind], lat);
    int steady = G.steady_t0 > 0 && s->t0 >= G.steady_t0;
    if (steady) {
        series_add(&G.steady[s->kind], lat);
        G.steady_requests++;
    }
    json_t *j = answer(s);
    if (s->kind == K_HELLO) {
        if (status != 200) {
            fprintf(stderr, "loadgen: %s: hello refused (%ld): %.*s\n", s->name, status, (int)s->resp.n, s->resp.s);
            s->done = 1;
        } else {
            s->said_hello = 1;
            if (++G.hellos == G.n) G.steady_t0 = now + 1.0;
            s->client = (int)json_integer_value(json_object_get(j, "client"));
            const char *rid = json_string_value(json_object_get(j, "run_id"));
            s->run_id = rid ? strtoull(rid, NULL, 16) : 0;
            size_t dim = (size_t)json_integer_value(json_object_get(j, "dim"));
            if (!G.values && dim) {
                G.dim = dim;
                G.values = malloc(dim * sizeof(float));
                loom_rng r;
                loom_rng_init(&r, G.seed, 1);
                for (size_t i = 0; i < dim; i++) G.values[i] = (float)(1e-3 * loom_rng_normal(&r));
            }
            s->due = now;
        }
    } else if (s->kind == K_POLL) {
        const char *type = status == 200 ? json_string_value(json_object_get(j, "type")) : NULL;
        s->due = now + poll;
        if (!type) {
            fprintf(stderr, "loadgen: %s: poll answered %ld: %.*s\n", s->name, status, (int)s->resp.n, s->resp.s);
            if (status == 401 || status == 403) s->done = 1;
        } else if (strcmp(type, "done") == 0) {
            s->done = 1;
        } else if (strcmp(type, "fit") == 0 || strcmp(type, "eval") == 0) {
            int round = (int)json_integer_value(json_object_get(j, "round"));
            s->version = (uint64_t)json_integer_value(json_object_get(j, "version"));
            s->round = round;
            if (type[0] == 'f' && round != s->uploaded_round && G.dim && !G.write_body) {
                enqueue(s); /* sent once the worker has built it */
            } else if (type[0] == 'f' && round != s->uploaded_round && G.dim) {
                if (prepare_upload(s) != 0) exit(1);
                FILE *f = fopen(G.write_body, "wb");
                if (!f || fwrite(s->body, 1, s->body_len, f) != s->body_len || fclose(f) != 0) {
                    fprintf(stderr, "loadgen: cannot write %s\n", G.write_body);
                    exit(1);
                }
                printf("wrote %s: %zu bytes, key %s, client %s\n", G.write_body, s->body_len, s->key, s->name);
                fflush(stdout);
                G.wrote_body = 1;
                s->done = 1;
            } else if (type[0] == 'e' && round != s->evaluated_round) {
                s->want_eval = 1; /* the next request reports */
                s->due = now;
            }
        }
    } else if (s->kind == K_UPLOAD) {
        if (status == 200) {
            G.bytes_up += s->body_len;
            G.accepted++;
            if (steady) G.steady_bytes += s->body_len;
        }
        else fprintf(stderr, "loadgen: %s: upload answered %ld: %.*s\n", s->name, status, (int)s->resp.n, s->resp.s);
        free(s->body);
        s->body = NULL;
        s->uploaded_round = s->round;
        s->due = now;
    } else if (s->kind == K_EVAL) {
        s->evaluated_round = s->round;
        s->want_eval = 0;
        s->due = now;
    }
    json_decref(j);
}

static void report(series *lat, double secs, size_t bytes) {
    for (int k = 0; k < K_KINDS; k++) {
        if (!lat[k].n) continue;
        double p50 = series_pct(&lat[k], 0.5) * 1e3, p99 = series_pct(&lat[k], 0.99) * 1e3;
        double mx = lat[k].v[lat[k].n - 1] * 1e3;
        printf("  %-6s n %zu  p50 %.2f ms  p99 %.2f ms  max %.2f ms\n", kind_name[k], lat[k].n, p50, p99, mx);
    }
    printf("  uploaded: %zu bytes accepted, %.2f MB/s\n", bytes, bytes / secs / 1e6);
    if (lat[K_UPLOAD].n && bytes)
        printf("  upload throughput (one upload, median latency): %.1f MB/s\n",
               (double)bytes / (double)lat[K_UPLOAD].n / series_pct(&lat[K_UPLOAD], 0.5) / 1e6);
}

static int usage(void) {
    fprintf(stderr, "usage: loadgen --url URL --clients FILE [--ca-cert F] [--n 1000] [--retry-ms 500] "
                    "[--duration 60] [--uploads K] [--seed 1] [--base-sha256 HEX | --base-model SHAPE --base-seed S] "
                    "[--write-body FILE]\n");
    return 2;
}

int main(int argc, char **argv) {
    G.n = 1000;
    G.retry_ms = 500;
    G.duration = 60;
    G.seed = 1;
    const char *base_model = NULL;
    uint64_t base_seed = 1;
    static char base_hex[65];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        if (!strcmp(a, "--url")) G.url = v;
        else if (!strcmp(a, "--ca-cert")) G.ca = v;
        else if (!strcmp(a, "--clients")) G.clients = v;
        else if (!strcmp(a, "--write-body")) G.write_body = v;
        else if (!strcmp(a, "--base-sha256")) G.base_sha = v;
        else if (!strcmp(a, "--base-model")) base_model = v;
        else if (!strcmp(a, "--base-seed")) base_seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--n")) G.n = atoi(v);
        else if (!strcmp(a, "--retry-ms")) G.retry_ms = atoi(v);
        else if (!strcmp(a, "--duration")) G.duration = atof(v);
        else if (!strcmp(a, "--uploads")) G.max_uploads = atoi(v);
        else if (!strcmp(a, "--seed")) G.seed = strtoull(v, NULL, 10);
        else return usage();
        i++;
    }
    if (!G.url || !G.clients || G.n < 1 || G.retry_ms < 1 || G.duration <= 0) return usage();
    if (base_model) { /* the SHA-256 of the f32 parameters, as the server computes it */
        loom_config cfg;
        loom_model *m;
        if (loom_config_named(&cfg, base_model) != LOOM_OK || loom_model_create(&m, &cfg, base_seed) != LOOM_OK) {
            fprintf(stderr, "loadgen: --base-model %s: %s\n", base_model, loom_errmsg());
            return 1;
        }
        uint8_t d[32];
        gnutls_hash_fast(GNUTLS_DIG_SHA256, loom_model_params_const(m), loom_model_n_params(m) * sizeof(float), d);
        loom_hex(d, 32, base_hex);
        loom_model_free(m);
        G.base_sha = base_hex;
        printf("loadgen: base %s (seed %llu): SHA-256 %s\n", base_model, (unsigned long long)base_seed, base_hex);
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    FILE *f = fopen(G.clients, "r");
    if (!f) {
        fprintf(stderr, "loadgen: cannot open %s: %s\n", G.clients, strerror(errno));
        return 1;
    }
    sim *sims = calloc((size_t)G.n, sizeof *sims);
    int n = 0;
    char name[128], token[600];
    while (n < G.n && fscanf(f, "%127s %599s", name, token) == 2) {
        snprintf(sims[n].name, sizeof sims[n].name, "%s", name);
        snprintf(sims[n].auth, sizeof sims[n].auth, "Authorization: Bearer %s", token);
        n++;
    }
    fclose(f);
    if (n < G.n) {
        fprintf(stderr, "loadgen: %s has %d clients, %d asked for\n", G.clients, n, G.n);
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)n + 8);
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)n);
    loom_rng_init(&G.rng, G.seed, 2);
    double t0 = loom_now();
    for (int i = 0; i < n; i++) {
        sims[i].h = curl_easy_init();
        sims[i].due = t0 + G.retry_ms / 1000.0 * loom_rng_uniform(&G.rng); /* spread the hellos */
    }
    W.cap = (size_t)n;
    W.q = calloc(W.cap, sizeof *W.q);
    pthread_t wt;
    pthread_create(&wt, NULL, worker, NULL);
    int active = n;
    double end = t0 + G.duration;
    while (active > 0) {
        double now = loom_now();
        if (now >= end || (G.max_uploads > 0 && G.accepted >= G.max_uploads)) break;
        double next = now + 0.1;
        for (int i = 0; i < n; i++) {
            sim *s = &sims[i];
            if (s->busy || s->done) continue;
            int prep = __atomic_load_n(&s->prep, __ATOMIC_ACQUIRE);
            if (prep == 1) continue;
            if (prep == 2) s->prep = 0, s->due = now;
            if (s->due <= now) start(multi, s, now);
            else if (s->due < next) next = s->due;
        }
        int running;
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            sim *s;
            long status = 0;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            long nc = 0;
            curl_easy_getinfo(m->easy_handle, CURLINFO_NUM_CONNECTS, &nc);
            G.connects += nc;
            CURLcode cc = m->data.result;
            curl_multi_remove_handle(multi, m->easy_handle);
            finish(s, cc, status, loom_now());
            if (s->done) active--;
        }
        now = loom_now();
        int wait_ms = next > now ? (int)((next - now) * 1000) : 0;
        if (wait_ms > 0) curl_multi_poll(multi, NULL, 0, wait_ms, NULL);
    }
    double secs = loom_now() - t0;
    pthread_mutex_lock(&W.mu);
    W.quit = 1;
    pthread_cond_broadcast(&W.cv);
    pthread_mutex_unlock(&W.mu);
    pthread_join(wt, NULL);
    free(W.q);
    int unfinished = 0;
    for (int i = 0; i < n; i++) {
        if (sims[i].busy) curl_multi_remove_handle(multi, sims[i].h);
        unfinished += !sims[i].done;
        curl_easy_cleanup(sims[i].h);
        curl_slist_free_all(sims[i].hdr);
        free(sims[i].resp.s);
        free(sims[i].body);
    }
    curl_multi_cleanup(multi);
    if (G.write_body) return G.wrote_body ? 0 : 1;
    printf("loadgen: %d clients, %.1f s, %d not done, dim %zu\n", n, secs, unfinished, G.dim);
    printf("all requests: %ld (%.0f/s), %ld new connections\n", G.requests, G.requests / secs, G.connects);
    report(G.lat, secs, G.bytes_up);
    double steady_secs = G.steady_t0 > 0 ? t0 + secs - G.steady_t0 : 0;
    if (steady_secs > 1) {
        printf("steady state (from 1 s after the last hello, %.1f s): %ld requests (%.0f/s)\n", steady_secs,
               G.steady_requests, G.steady_requests / steady_secs);
        report(G.steady, steady_secs, G.steady_bytes);
    }
    free(G.values);
    for (int k = 0; k < K_KINDS; k++) {
        long *a = G.answers[k];
        if (a[0] || a[2] || a[3] || a[4] || a[5])
            printf("answers %-6s 2xx %ld, 4xx %ld, 5xx %ld, no answer %ld\n", kind_name[k], a[2], a[4], a[5], a[0]);
    }
    for (int k = 0; k < K_KINDS; k++) free(G.lat[k].v), free(G.steady[k].v);
    curl_global_cleanup();
    return 0;
}
