/* The federation client (net/ layer): docs/protocol.md from the client's side, over libcurl.
 *
 * One easy handle carries every request (keep-alive: one TLS session for the whole run). The loop is
 * hello, then poll /v1/task and act on the answer:
 *
 *     wait  sleep retry_ms (+-20 %, jitter seeded from the name)
 *     fit   download the global version (resuming), fit, encode, write pending-R.upd (fsync), upload
 *     eval  download, evaluate, report
 *     done  return LOOM_OK
 *
 * Failures fall in three classes. Transient (no answer, a 5xx): the same request again after an
 * exponential back-off (0.2 s doubling to 30 s, +-20 % jitter), until the server has been out of
 * contact for give_up_s. Final for the run (401, 403, 409 base_mismatch, a TLS verification failure,
 * an answer that breaks the protocol): the run fails with the server's message. Final for the round
 * (409 duplicate, 410 stale or late, 412, and the content refusals 400/413/422 of an upload): logged,
 * the pending upload dropped, and the client goes back to polling.
 *
 * Files in work_dir: global-V.part (a download in progress; kept across failures and restarts, resumed
 * with a Range request), global-V.safetensors (verified against the task's SHA-256), pending-R.upd
 * (the encoded update of round R, durable before it is sent, deleted once the server has answered; a
 * restarted client sends it again, with the same idempotency key, instead of training again). */
#include "loom/net.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <gnutls/crypto.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/safetensors.h"
#include "loom/secagg.h"
#include "net/net_impl.h"

#define NC_JSON_MAX ((size_t)1 << 20)          /* largest JSON answer read */
#define NC_GLOBAL_MARGIN ((size_t)16 << 20)    /* header room above 8 bytes a float (values + control) */
#define NC_BACKOFF_FIRST 0.2
#define NC_BACKOFF_MAX 30.0
#define NC_BAD_DOWNLOADS 5                     /* consecutive corrupt downloads before the run fails */
#define NC_REASON_MAX 1000                     /* bytes of a failure reason sent in /v1/fail */
/* The jitter of poll intervals and back-offs: loom_rng stream under a seed hashed from the name. */
#define NC_STREAM_JITTER UINT64_C(0x6a6974) /* "jit" */

/* ------------------------------------------------------------------ state */

typedef struct {
    const loom_netclient_config *c;
    CURL *curl;
    char base_url[1024];
    char auth[600];             /* "Authorization: Bearer TOKEN" */
    char agent[64];
    loom_rng rng;
    double last_contact;        /* loom_now() of the last answer that was not a 5xx */
    double give_up_s;
    /* from hello */
    loom_netclient_hello hello;
    char run_id_hex[17];
    char mode[33], compress[33], base_sha[65];
    char *run_json, *model_config_json;
    int poll_ms;
    size_t max_global;          /* largest global body accepted */
    /* the decoded global model */
    float *global, *control;    /* dim floats each (control allocated when first needed) */
    int has_control;
    char loaded_sha[65];        /* the SHA-256 of the file global holds ("" when none) */
    uint64_t loaded_version;
    char global_path[PATH_MAX]; /* the verified file of loaded_sha */
    /* the last task that ended without an accepted answer (the same task again is not redone) */
    char finished_type[8];
    int finished_round;
    uint64_t finished_version;
    uint64_t finished_epoch;    /* a secure round's epoch (a restarted server's round is a new task) */
} nc;

typedef struct {
    char type[8];               /* "wait", "fit", "eval", "done" */
    int round;
    uint64_t version;
    char sha[65];
    size_t bytes;
    double deadline_s;
    int retry_ms;
    /* a secure round: the task's "secagg" object */
    int sa;
    uint32_t sa_id, sa_n, sa_threshold, sa_neighbours;
    double sa_clip, sa_fit_timeout_s, sa_timeout_s;
    uint64_t sa_max_weight, sa_seed, sa_epoch;
} nc_task;

/* One request. */
typedef struct {
    const char *method;         /* "GET" or "POST" */
    const char *path;           /* "/v1/task", ... */
    const void *body;           /* POST body (may be NULL) */
    size_t len;
    const char *content_type;
    const char *key;            /* Idempotency-Key and X-Loom-SHA256 (upload), or NULL */
    /* downloads: the body of a 200/206 goes to sink, which already holds offset bytes */
    FILE *sink;
    size_t offset, total;       /* the full body's size: a longer one is refused */
    int bulk;                   /* a large transfer: a low-speed limit instead of a total timeout */
} nc_req;

/* One answer. */
typedef struct {
    long status;                /* HTTP status; 0 when none arrived */
    loom_strbuf body;           /* JSON answers and error bodies (at most NC_JSON_MAX bytes) */
    char code[48], message[512];/* the error body's "error" and "message" */
    char sha[65];               /* X-Loom-SHA256 */
    long long range_start;      /* Content-Range start (206), -1 when absent */
    int started;                /* the body of a download began */
    size_t received;            /* body bytes written to the sink */
    char abort_why[256];        /* why the client stopped reading the answer (protocol breach) */
    int stopped;                /* cfg->stop interrupted the transfer */
    char curl_err[CURL_ERROR_SIZE];
    const nc_req *req;
    nc *n;
} nc_resp;

/* ------------------------------------------------------------------ small helpers */

static pthread_once_t nc_curl_once = PTHREAD_ONCE_INIT;
static int nc_curl_ok;
static void nc_curl_init(void) { nc_curl_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK; }

static int nc_stopped(const nc *n) { return n->c->stop && __atomic_load_n(n->c->stop, __ATOMIC_RELAXED); }

static int nc_stop_error(void) { return loom_error(LOOM_ESTATE, "net client: stopped"); }

/* Uniform factor in [0.8, 1.2). */
static double nc_jitter(nc *n) { return 0.8 + 0.4 * loom_rng_uniform(&n->rng); }

/* Sleeps s seconds in short slices; 1 when stop was set meanwhile. */
static int nc_sleep(nc *n, double s) {
    double end = loom_now() + s;
    for (;;) {
        if (nc_stopped(n)) return 1;
        double left = end - loom_now();
        if (left <= 0) return 0;
        double step = left < 0.05 ? left : 0.05;
        struct timespec ts = {(time_t)step, (long)((step - (double)(time_t)step) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static int nc_is_hex(const char *s, size_t len) {
    if (strlen(s) != len) return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int nc_check_name(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64 || s[0] == '.' || s[0] == '-') return 0;
    for (size_t i = 0; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '_' || s[i] == '-')) return 0;
    return 1;
}

static uint64_t nc_fnv(const char *s) {
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (; *s; s++) h = (h ^ (unsigned char)*s) * UINT64_C(0x100000001b3);
    return h;
}

static int nc_path(char *out, const nc *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int nc_path(char *out, const nc *n, const char *fmt, ...) {
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    if (snprintf(out, PATH_MAX, "%s/%s", n->c->work_dir, name) >= PATH_MAX)
        return loom_error(LOOM_EINVAL, "net client: work directory path too long: %s", n->c->work_dir);
    return LOOM_OK;
}

/* mkdir -p, new directories 0700. */
static int nc_mkdirs(const char *dir) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s", dir);
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != 0) continue;
        char keep = *s;
        *s = 0;
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            return loom_error(LOOM_EIO, "net client: cannot create %s: %s", p, strerror(errno));
        *s = keep;
        if (!keep) break;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return loom_error(LOOM_EIO, "net client: %s is not a directory", dir);
    return LOOM_OK;
}

static int nc_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return loom_error(LOOM_EIO, "cannot open %s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    return rc == 0 ? LOOM_OK : loom_error(LOOM_EIO, "cannot fsync %s: %s", dir, strerror(errno));
}

/* Deletes work_dir files "PREFIX<number>SUFFIX" whose number is not keep (keep < 0: all). */
static void nc_remove_others(const nc *n, const char *prefix, const char *suffix, long long keep) {
    DIR *d = opendir(n->c->work_dir);
    if (!d) return;
    struct dirent *e;
    size_t lp = strlen(prefix), ls = strlen(suffix);
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= lp + ls || strncmp(e->d_name, prefix, lp) != 0 || strcmp(e->d_name + len - ls, suffix) != 0) continue;
        char *end;
        errno = 0;
        unsigned long long v = strtoull(e->d_name + lp, &end, 10);
        if (errno || end != e->d_name + len - ls || !isdigit((unsigned char)e->d_name[lp])) continue;
        if (keep >= 0 && v == (unsigned long long)keep) continue;
        char p[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", n->c->work_dir, e->d_name) >= (int)sizeof p) continue;
        if (unlink(p) == 0) loom_log(LOOM_DEBUG, "net client: removed %s", p);
    }
    closedir(d);
}

/* SHA-256 through GnuTLS (its SHA-NI / AVX2 code runs ~7x faster than the portable loom_sha256 on a
 * 500 MB full model); the same digests. Shared with the server (net_impl.h). */
int net_sha256_hex(const void *data, size_t len, char out[65]) {
    uint8_t d[32];
    if (gnutls_hash_fast(GNUTLS_DIG_SHA256, data, len, d) != 0) return loom_error(LOOM_EIO, "net client: SHA-256 failed");
    loom_hex(d, 32, out);
    return LOOM_OK;
}

static int nc_sha256_file(const char *path, char out[65]) {
    FILE *f = fopen(path, "rb");
    if (!f) return loom_error(LOOM_EIO, "net client: cannot open %s: %s", path, strerror(errno));
    gnutls_hash_hd_t h;
    if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) != 0) {
        fclose(f);
        return loom_error(LOOM_EIO, "net client: SHA-256 failed");
    }
    size_t cap = (size_t)1 << 20, got;
    uint8_t *buf = malloc(cap), d[32];
    int rc = buf ? LOOM_OK : loom_error(LOOM_ENOMEM, "net client: out of memory hashing %s", path);
    while (rc == LOOM_OK && (got = fread(buf, 1, cap, f)) > 0) gnutls_hash(h, buf, got);
    if (rc == LOOM_OK && ferror(f)) rc = loom_error(LOOM_EIO, "net client: cannot read %s", path);
    gnutls_hash_deinit(h, d);
    free(buf);
    fclose(f);
    if (rc == LOOM_OK) loom_hex(d, 32, out);
    return rc;
}

/* ------------------------------------------------------------------ one HTTP exchange */

static size_t nc_on_header(char *buf, size_t size, size_t nitems, void *ud) {
    nc_resp *r = ud;
    size_t len = size * nitems;
    char line[512];
    size_t m = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, buf, m);
    line[m] = 0;
    while (m && (line[m - 1] == '\r' || line[m - 1] == '\n')) line[--m] = 0;
    if (strncmp(line, "HTTP/", 5) == 0) { /* a new status line (after a 100 Continue, too) */
        const char *sp = strchr(line, ' ');
        r->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        r->sha[0] = 0;
        r->range_start = -1;
        return len;
    }
    char *colon = strchr(line, ':');
    if (!colon) return len;
    *colon = 0;
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    if (strcasecmp(line, "X-Loom-SHA256") == 0) {
        snprintf(r->sha, sizeof r->sha, "%s", v);
    } else if (strcasecmp(line, "Content-Range") == 0) {
        long long a;
        if (sscanf(v, "bytes %lld-", &a) == 1 && a >= 0) r->range_start = a;
    }
    return len;
}

static size_t nc_on_body(char *buf, size_t size, size_t nitems, void *ud) {
    nc_resp *r = ud;
    size_t len = size * nitems;
    const nc_req *q = r->req;
    if (q->sink && (r->status == 200 || r->status == 206)) {
        if (!r->started) {
            r->started = 1;
            if (r->status == 200 && q->offset > 0) {
                /* the server sent the whole body: start the file again */
                if (fflush(q->sink) != 0 || ftruncate(fileno(q->sink), 0) != 0) {
                    snprintf(r->abort_why, sizeof r->abort_why, "cannot truncate the partial download: %s",
                             strerror(errno));
                    return 0;
                }
            } else if (r->status == 206 && r->range_start != (long long)q->offset) {
                snprintf(r->abort_why, sizeof r->abort_why, "206 answer starts at byte %lld, asked for %zu",
                         r->range_start, q->offset);
                return 0;
            }
        }
        size_t have = (r->status == 206 ? q->offset : 0) + r->received;
        if (len > q->total - LOOM_MIN(have, q->total)) {
            snprintf(r->abort_why, sizeof r->abort_why, "the body is longer than the task's %zu bytes", q->total);
            return 0;
        }
        if (fwrite(buf, 1, len, q->sink) != len) {
            snprintf(r->abort_why, sizeof r->abort_why, "cannot write the download: %s", strerror(errno));
            return 0;
        }
        r->received += len;
        return len;
    }
    if (r->body.n + len > NC_JSON_MAX) {
        snprintf(r->abort_why, sizeof r->abort_why, "answer larger than %zu bytes", NC_JSON_MAX);
        return 0;
    }
    if (loom_strbuf_add(&r->body, buf, len) != LOOM_OK) {
        snprintf(r->abort_why, sizeof r->abort_why, "out of memory reading the answer");
        return 0;
    }
    return len;
}

static int nc_on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    nc_resp *r = ud;
    if (nc_stopped(r->n)) {
        r->stopped = 1;
        return 1;
    }
    return 0;
}

static void nc_resp_reset(nc_resp *r) {
    free(r->body.s);
    memset(r, 0, sizeof *r);
    r->range_start = -1;
}

/* Reads the error body's code and message (when it has them). */
static void nc_parse_error(nc_resp *r) {
    r->code[0] = r->message[0] = 0;
    if (!r->body.s) return;
    json_t *j = json_loadb(r->body.s, r->body.n, 0, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return;
    }
    const char *code = json_string_value(json_object_get(j, "error"));
    const char *msg = json_string_value(json_object_get(j, "message"));
    if (code) snprintf(r->code, sizeof r->code, "%s", code);
    if (msg) snprintf(r->message, sizeof r->message, "%s", msg);
    json_decref(j);
}

enum { NC_ANSWER = 0, NC_TRANSIENT = 1, NC_FATAL = 2, NC_STOP = 3 };

/* Sends q once. NC_ANSWER: r->status holds the server's answer (any status); NC_TRANSIENT: no answer
 * that could be used, worth retrying (r->curl_err says why); NC_FATAL: an error recorded with
 * loom_error (TLS verification, a protocol breach); NC_STOP: cfg->stop was set. */
static int nc_perform(nc *n, const nc_req *q, nc_resp *r) {
    nc_resp_reset(r);
    r->req = q;
    r->n = n;
    CURL *h = n->curl;
    curl_easy_reset(h); /* keeps the connection cache: the next request reuses the connection */
    char url[1200];
    snprintf(url, sizeof url, "%s%s", n->base_url, q->path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, n->agent);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->curl_err);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, nc_on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, nc_on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, nc_on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, r);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L); /* never carry the token elsewhere */
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (n->c->ca_cert) { /* that file only: not the system's CA directory as well */
        curl_easy_setopt(h, CURLOPT_CAINFO, n->c->ca_cert);
        curl_easy_setopt(h, CURLOPT_CAPATH, NULL);
    }
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 15L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (q->bulk) {
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1024L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    } else {
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
    }
    struct curl_slist *hdr = curl_slist_append(NULL, n->auth);
    char line[160];
    if (q->content_type) {
        snprintf(line, sizeof line, "Content-Type: %s", q->content_type);
        hdr = curl_slist_append(hdr, line);
    }
    if (q->key) {
        snprintf(line, sizeof line, "Idempotency-Key: %s", q->key);
        hdr = curl_slist_append(hdr, line);
        snprintf(line, sizeof line, "X-Loom-SHA256: %s", q->key);
        hdr = curl_slist_append(hdr, line);
    }
    if (q->sink && q->offset > 0) {
        snprintf(line, sizeof line, "Range: bytes=%zu-", q->offset);
        hdr = curl_slist_append(hdr, line);
    }
    if (strcmp(q->method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body ? q->body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->len);
    }
    if (!hdr) return loom_error(LOOM_ENOMEM, "net client: out of memory for request headers"), NC_FATAL;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    CURLcode cc = curl_easy_perform(h);
    curl_slist_free_all(hdr);
    if (r->stopped) return NC_STOP;
    if (r->abort_why[0]) {
        loom_error(LOOM_EFORMAT, "net client: %s %s: %s", q->method, q->path, r->abort_why);
        return NC_FATAL;
    }
    if (!r->curl_err[0]) snprintf(r->curl_err, sizeof r->curl_err, "%s", curl_easy_strerror(cc));
    switch (cc) {
    case CURLE_OK: break;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_OUT_OF_MEMORY:
        loom_error(LOOM_EIO, "net client: %s %s: %s", q->method, url, r->curl_err);
        return NC_FATAL;
    default: return NC_TRANSIENT; /* refused, reset, timed out, cut short: try again */
    }
    if (r->status >= 500 || r->status < 200) {
        nc_parse_error(r);
        snprintf(r->curl_err, sizeof r->curl_err, "%ld %s%s%.180s", r->status, r->code, r->message[0] ? ": " : "",
                 r->message);
        return NC_TRANSIENT;
    }
    n->last_contact = loom_now();
    if (r->status >= 400) nc_parse_error(r);
    return NC_ANSWER;
}

/* After a transient failure: waits the back-off *delay (then doubles it) unless the server has been
 * out of contact for give_up_s. LOOM_OK to try again, or an error. */
static int nc_backoff(nc *n, double *delay, const nc_req *q, const char *why) {
    double silent = loom_now() - n->last_contact;
    if (silent >= n->give_up_s)
        return loom_error(LOOM_EIO, "net client: giving up: no answer from %s for %.0f s (last: %s %s: %s)",
                          n->base_url, silent, q->method, q->path, why);
    double wait = *delay * nc_jitter(n);
    loom_log(LOOM_WARN, "net client: %s %s: %s; retrying in %.1f s", q->method, q->path, why, wait);
    *delay = LOOM_MIN(*delay * 2, NC_BACKOFF_MAX);
    if (nc_sleep(n, wait)) return nc_stop_error();
    return LOOM_OK;
}

/* Sends q until an answer comes (LOOM_OK, any 2xx/4xx status in r->status), retrying transient
 * failures with back-off. */
static int nc_call(nc *n, const nc_req *q, nc_resp *r) {
    double delay = NC_BACKOFF_FIRST;
    for (;;) {
        if (nc_stopped(n)) return nc_stop_error();
        int k = nc_perform(n, q, r);
        if (k == NC_ANSWER) return LOOM_OK;
        if (k == NC_FATAL) return LOOM_EIO;
        if (k == NC_STOP) return nc_stop_error();
        char why[CURL_ERROR_SIZE];
        snprintf(why, sizeof why, "%s", r->curl_err);
        int rc = nc_backoff(n, &delay, q, why);
        if (rc != LOOM_OK) return rc;
    }
}

/* An answer that ends the run: the server's own words. */
static int nc_refused(const nc_resp *r, const char *what) {
    return loom_error(LOOM_EINVAL, "net client: %s refused by the server (%ld %s): %s", what, r->status,
                      r->code[0] ? r->code : "no code", r->message[0] ? r->message : "no message");
}

/* 401, 403 and base_mismatch end the run. */
static int nc_is_final_for_run(const nc_resp *r) {
    return r->status == 401 || r->status == 403 || (r->status == 409 && strcmp(r->code, "base_mismatch") == 0);
}

static int nc_post_json(nc *n, const char *path, json_t *j, nc_resp *r) {
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (!text) return loom_error(LOOM_ENOMEM, "net client: cannot format the request body of %s", path);
    nc_req q = {.method = "POST", .path = path, .body = text, .len = strlen(text), .content_type = "application/json"};
    int rc = nc_call(n, &q, r);
    free(text);
    return rc;
}

static json_t *nc_answer_json(const nc_resp *r, const char *what) {
    json_error_t e;
    json_t *j = r->body.s ? json_loadb(r->body.s, r->body.n, 0, &e) : NULL;
    if (!json_is_object(j)) {
        json_decref(j);
        loom_error(LOOM_EFORMAT, "net client: %s: the answer is not a JSON object", what);
        return NULL;
    }
    return j;
}

/* An integer member in [lo, hi] (present: required). */
static int nc_get_int(json_t *j, const char *key, long long lo, long long hi, int required, long long *out,
                      const char *what) {
    json_t *v = json_object_get(j, key);
    if (!v && !required) return LOOM_OK;
    if (!json_is_integer(v)) return loom_error(LOOM_EFORMAT, "net client: %s: \"%s\" missing or not an integer", what, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return loom_error(LOOM_EFORMAT, "net client: %s: \"%s\" = %lld outside [%lld, %lld]", what, key, x, lo, hi);
    *out = x;
    return LOOM_OK;
}

/* ------------------------------------------------------------------ hello */

static int nc_hello(nc *n) {
    const loom_netclient_config *c = n->c;
    json_t *req = json_pack("{s:s, s:s, s:o}", "name", c->name, "loom", c->version ? c->version : "unknown",
                            "base_sha256", c->base_sha256 ? json_string(c->base_sha256) : json_null());
    nc_resp r = {0};
    int rc = nc_post_json(n, "/v1/hello", req, &r);
    json_decref(req);
    if (rc != LOOM_OK) goto done;
    if (r.status != 200) {
        rc = nc_refused(&r, "hello");
        goto done;
    }
    json_t *j = nc_answer_json(&r, "hello");
    if (!j) {
        rc = LOOM_EFORMAT;
        goto done;
    }
    const char *what = "hello answer";
    long long client = -1, clients = 0, rounds = 0, dim = 0, poll = 500;
    const char *run_id = json_string_value(json_object_get(j, "run_id"));
    const char *mode = json_string_value(json_object_get(j, "mode"));
    const char *compress = json_string_value(json_object_get(j, "compress"));
    json_t *base = json_object_get(j, "base_sha256");
    json_t *run = json_object_get(j, "run"), *mc = json_object_get(j, "model_config");
    json_t *sa = json_object_get(j, "secagg");
    if (!run_id || !nc_is_hex(run_id, 16)) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: \"run_id\" missing or not 16 hex digits", what);
    } else if ((rc = nc_get_int(j, "clients", 1, INT_MAX, 1, &clients, what)) != LOOM_OK ||
               (rc = nc_get_int(j, "client", 0, clients - 1, 1, &client, what)) != LOOM_OK ||
               (rc = nc_get_int(j, "rounds", 0, INT_MAX, 1, &rounds, what)) != LOOM_OK ||
               (rc = nc_get_int(j, "dim", 1, (long long)(LOOM_TVEC_MAX_BYTES / 4), 1, &dim, what)) != LOOM_OK ||
               (rc = nc_get_int(j, "poll_ms", 1, 3600000, 0, &poll, what)) != LOOM_OK) {
    } else if (!mode || !*mode || strlen(mode) >= sizeof n->mode) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: \"mode\" missing or not a short string", what);
    } else if (compress && strlen(compress) >= sizeof n->compress) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: \"compress\" not a short string", what);
    } else if (base && !json_is_null(base) && !(json_is_string(base) && nc_is_hex(json_string_value(base), 64))) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: \"base_sha256\" is not 64 hex digits", what);
    } else if (run && !json_is_object(run)) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: \"run\" is not an object", what);
    } else if (mc && !json_is_null(mc) && !json_is_object(mc)) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: \"model_config\" is not an object", what);
    } else if (sa && !json_is_null(sa) && !json_is_object(sa)) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: \"secagg\" is not an object", what);
    }
    if (rc == LOOM_OK && json_is_string(base) && c->base_sha256 && strcmp(json_string_value(base), c->base_sha256) != 0)
        rc = loom_error(LOOM_EINVAL, "net client: the server's base model (SHA-256 %s) is not this client's (%s)",
                        json_string_value(base), c->base_sha256);
    if (rc == LOOM_OK) {
        snprintf(n->run_id_hex, sizeof n->run_id_hex, "%s", run_id);
        snprintf(n->mode, sizeof n->mode, "%s", mode);
        snprintf(n->compress, sizeof n->compress, "%s", compress ? compress : "none");
        n->base_sha[0] = 0;
        if (json_is_string(base)) snprintf(n->base_sha, sizeof n->base_sha, "%s", json_string_value(base));
        n->run_json = run ? json_dumps(run, JSON_COMPACT) : strdup("{}");
        n->model_config_json = json_is_object(mc) ? json_dumps(mc, JSON_COMPACT) : NULL;
        if (!n->run_json || (json_is_object(mc) && !n->model_config_json))
            rc = loom_error(LOOM_ENOMEM, "net client: out of memory keeping the run configuration");
    }
    if (rc != LOOM_OK) {
        json_decref(j);
        goto done;
    }
    n->poll_ms = (int)poll;
    loom_netclient_hello *h = &n->hello;
    h->run_id = strtoull(n->run_id_hex, NULL, 16);
    h->client = (int)client;
    h->n_clients = (int)clients;
    h->rounds = (int)rounds;
    h->dim = (size_t)dim;
    h->mode = n->mode;
    h->compress = n->compress;
    h->run_json = n->run_json;
    h->model_config_json = n->model_config_json;
    h->base_sha256 = n->base_sha[0] ? n->base_sha : NULL;
    h->secagg = json_is_object(sa);
    n->max_global = 8 * h->dim + NC_GLOBAL_MARGIN;
    json_decref(j);
    loom_log(LOOM_INFO, "net client: hello %s: run %s, client %d of %d, %d rounds, dim %zu, mode %s, compress %s%s",
             c->name, n->run_id_hex, h->client, h->n_clients, h->rounds, h->dim, n->mode, n->compress,
             h->secagg ? ", secure aggregation" : "");
done:
    nc_resp_reset(&r);
    return rc;
}

/* ------------------------------------------------------------------ task */

/* A number member > 0 (finite). */
static int nc_get_pos(json_t *j, const char *key, double *out, const char *what) {
    json_t *v = json_object_get(j, key);
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || !(json_number_value(v) > 0))
        return loom_error(LOOM_EFORMAT, "net client: %s: \"%s\" missing or not a number > 0", what, key);
    *out = json_number_value(v);
    return LOOM_OK;
}

static int nc_get_hex64(json_t *j, const char *key, uint64_t *out, const char *what) {
    const char *v = json_string_value(json_object_get(j, key));
    if (!v || !nc_is_hex(v, 16)) return loom_error(LOOM_EFORMAT, "net client: %s: \"%s\" missing or not 16 hex digits", what, key);
    *out = strtoull(v, NULL, 16);
    return LOOM_OK;
}

/* The fit task's "secagg" object (docs/protocol.md): the round's parameters and this client's id. */
static int nc_parse_secagg(json_t *sa, nc_task *t, const char *what) {
    if (!json_is_object(sa)) return loom_error(LOOM_EFORMAT, "net client: %s: \"secagg\" is not an object", what);
    long long cnt = 0, id = 0, th = 0, nb = 0, mw = 0;
    int rc;
    if ((rc = nc_get_int(sa, "n", 2, LOOM_SECAGG_MAX_CLIENTS, 1, &cnt, what)) != LOOM_OK ||
        (rc = nc_get_int(sa, "id", 0, cnt - 1, 1, &id, what)) != LOOM_OK ||
        (rc = nc_get_int(sa, "threshold", 1, cnt, 1, &th, what)) != LOOM_OK ||
        (rc = nc_get_int(sa, "neighbours", 0, cnt, 1, &nb, what)) != LOOM_OK ||
        (rc = nc_get_int(sa, "max_weight", 1, LLONG_MAX, 1, &mw, what)) != LOOM_OK ||
        (rc = nc_get_pos(sa, "clip", &t->sa_clip, what)) != LOOM_OK ||
        (rc = nc_get_pos(sa, "fit_timeout_s", &t->sa_fit_timeout_s, what)) != LOOM_OK ||
        (rc = nc_get_pos(sa, "phase_timeout_s", &t->sa_timeout_s, what)) != LOOM_OK ||
        (rc = nc_get_hex64(sa, "seed", &t->sa_seed, what)) != LOOM_OK ||
        (rc = nc_get_hex64(sa, "epoch", &t->sa_epoch, what)) != LOOM_OK)
        return rc;
    t->sa = 1;
    t->sa_n = (uint32_t)cnt;
    t->sa_id = (uint32_t)id;
    t->sa_threshold = (uint32_t)th;
    t->sa_neighbours = (uint32_t)nb;
    t->sa_max_weight = (uint64_t)mw;
    return LOOM_OK;
}

static int nc_get_task(nc *n, nc_task *t) {
    memset(t, 0, sizeof *t);
    nc_req q = {.method = "GET", .path = "/v1/task"};
    nc_resp r = {0};
    int rc = nc_call(n, &q, &r);
    if (rc != LOOM_OK) goto done;
    if (r.status != 200) {
        rc = nc_refused(&r, "task poll");
        goto done;
    }
    json_t *j = nc_answer_json(&r, "task");
    if (!j) {
        rc = LOOM_EFORMAT;
        goto done;
    }
    const char *what = "task answer";
    const char *type = json_string_value(json_object_get(j, "type"));
    long long v = 0;
    if (!type) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: \"type\" missing", what);
    } else if (strcmp(type, "wait") == 0) {
        strcpy(t->type, "wait");
        t->retry_ms = n->poll_ms;
        if ((rc = nc_get_int(j, "retry_ms", 0, 3600000, 0, &v, what)) == LOOM_OK && json_object_get(j, "retry_ms"))
            t->retry_ms = (int)v;
    } else if (strcmp(type, "done") == 0) {
        strcpy(t->type, "done");
    } else if (strcmp(type, "fit") == 0 || strcmp(type, "eval") == 0) {
        snprintf(t->type, sizeof t->type, "%s", type);
        const char *sha = json_string_value(json_object_get(j, "global_sha256"));
        json_t *dl = json_object_get(j, "deadline_s");
        if ((rc = nc_get_int(j, "round", 1, INT_MAX, 1, &v, what)) != LOOM_OK) goto parsed;
        t->round = (int)v;
        if ((rc = nc_get_int(j, "version", 0, LLONG_MAX, 1, &v, what)) != LOOM_OK) goto parsed;
        t->version = (uint64_t)v;
        if ((rc = nc_get_int(j, "global_bytes", 1, (long long)n->max_global, 1, &v, what)) != LOOM_OK) goto parsed;
        t->bytes = (size_t)v;
        if (!sha || !nc_is_hex(sha, 64)) {
            rc = loom_error(LOOM_EFORMAT, "net client: %s: \"global_sha256\" missing or not 64 hex digits", what);
            goto parsed;
        }
        strcpy(t->sha, sha);
        if (dl && !json_is_null(dl)) {
            if (!json_is_number(dl) || !(json_number_value(dl) >= 0)) {
                rc = loom_error(LOOM_EFORMAT, "net client: %s: \"deadline_s\" is not a number >= 0", what);
                goto parsed;
            }
            t->deadline_s = json_number_value(dl);
        }
        json_t *sa = json_object_get(j, "secagg");
        if (strcmp(type, "fit") == 0 && sa && !json_is_null(sa) && (rc = nc_parse_secagg(sa, t, what)) != LOOM_OK)
            goto parsed;
    } else {
        loom_log(LOOM_WARN, "net client: unknown task type \"%.32s\": waiting", type);
        strcpy(t->type, "wait");
        t->retry_ms = n->poll_ms;
    }
parsed:
    json_decref(j);
done:
    nc_resp_reset(&r);
    return rc;
}

/* ------------------------------------------------------------------ the global model */

typedef struct {
    const loom_st_tensor *t;
    size_t index;
} nc_tensor_ref;

static int nc_by_data(const void *a, const void *b) {
    const nc_tensor_ref *x = a, *y = b;
    const char *p = x->t->data, *q = y->t->data;
    if (p != q) return p < q ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

/* Decodes a verified global file into n->global (the tensors in file order) and, when it has
 * "control/NAME" tensors, n->control (each at NAME's offset). */
static int nc_decode_global(nc *n, const char *path) {
    loom_st_file *f = NULL;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    size_t count = loom_st_count(f), dim = n->hello.dim;
    nc_tensor_ref *refs = calloc(count ? count : 1, sizeof *refs);
    size_t *offs = calloc(count ? count : 1, sizeof *offs);
    if (!refs || !offs) {
        rc = loom_error(LOOM_ENOMEM, "net client: out of memory reading %s", path);
        goto done;
    }
    for (size_t i = 0; i < count; i++) refs[i] = (nc_tensor_ref){loom_st_at(f, i), i};
    qsort(refs, count, sizeof *refs, nc_by_data);
    size_t off = 0, ctl = 0;
    for (size_t i = 0; i < count; i++) {
        const loom_st_tensor *t = refs[i].t;
        if (strncmp(t->name, "control/", 8) == 0) continue;
        if (t->numel > dim - off) {
            rc = loom_error(LOOM_EFORMAT, "net client: %s holds more than the run's %zu floats (at %s)", path, dim, t->name);
            goto done;
        }
        offs[i] = off;
        if ((rc = loom_st_to_f32(t, n->global + off, t->numel)) != LOOM_OK) {
            loom_error_context(rc, "net client: %s: tensor %s", path, t->name);
            goto done;
        }
        off += t->numel;
    }
    if (off != dim) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s holds %zu floats, the run's dim is %zu", path, off, dim);
        goto done;
    }
    for (size_t i = 0; i < count; i++) {
        const loom_st_tensor *t = refs[i].t;
        if (strncmp(t->name, "control/", 8) != 0) continue;
        size_t k = 0;
        while (k < count && (strncmp(refs[k].t->name, "control/", 8) == 0 || strcmp(refs[k].t->name, t->name + 8) != 0)) k++;
        if (k == count || refs[k].t->numel != t->numel) {
            rc = loom_error(LOOM_EFORMAT, "net client: %s: %s has no tensor %s of its size", path, t->name, t->name + 8);
            goto done;
        }
        if (!n->control && !(n->control = loom_alloc(dim * sizeof(float)))) {
            rc = LOOM_ENOMEM;
            goto done;
        }
        if ((rc = loom_st_to_f32(t, n->control + offs[k], t->numel)) != LOOM_OK) {
            loom_error_context(rc, "net client: %s: tensor %s", path, t->name);
            goto done;
        }
        ctl += t->numel;
    }
    if (ctl != 0 && ctl != dim) {
        rc = loom_error(LOOM_EFORMAT, "net client: %s: control tensors cover %zu of %zu floats", path, ctl, dim);
        goto done;
    }
    n->has_control = ctl == dim;
done:
    free(refs);
    free(offs);
    loom_st_close(f);
    return rc;
}

enum { NC_GOT = 0, NC_AGAIN = 1 }; /* *outcome of a step that did not fail: done, or back to polling */

/* Makes n->global hold version t->version with SHA-256 t->sha: reuses what is loaded or on disk, or
 * downloads it (resuming work_dir/global-V.part). */
static int nc_fetch_global(nc *n, const nc_task *t, int *outcome) {
    *outcome = NC_GOT;
    if (n->loaded_sha[0] && strcmp(n->loaded_sha, t->sha) == 0) return LOOM_OK;
    n->loaded_sha[0] = 0;
    char part[PATH_MAX], final[PATH_MAX], path[64];
    int rc;
    if ((rc = nc_path(part, n, "global-%" PRIu64 ".part", t->version)) != LOOM_OK ||
        (rc = nc_path(final, n, "global-%" PRIu64 ".safetensors", t->version)) != LOOM_OK)
        return rc;
    snprintf(path, sizeof path, "/v1/global?version=%" PRIu64, t->version);
    char sha[65];
    if (access(final, F_OK) == 0) {
        if (nc_sha256_file(final, sha) == LOOM_OK && strcmp(sha, t->sha) == 0) goto verified;
        unlink(final);
    }
    double delay = NC_BACKOFF_FIRST, t0 = loom_now();
    size_t fetched = 0;
    int bad = 0;
    nc_resp r = {0};
    for (;;) {
        if (nc_stopped(n)) {
            rc = nc_stop_error();
            goto out;
        }
        struct stat st;
        size_t offset = stat(part, &st) == 0 ? (size_t)st.st_size : 0;
        if (offset > t->bytes) {
            unlink(part);
            offset = 0;
        }
        if (offset < t->bytes) {
            FILE *f = fopen(part, offset ? "ab" : "wb");
            if (!f) {
                rc = loom_error(LOOM_EIO, "net client: cannot open %s: %s", part, strerror(errno));
                goto out;
            }
            nc_req q = {.method = "GET", .path = path, .sink = f, .offset = offset, .total = t->bytes, .bulk = 1};
            if (offset) loom_log(LOOM_INFO, "net client: resuming version %" PRIu64 " at byte %zu of %zu", t->version,
                                 offset, t->bytes);
            int k = nc_perform(n, &q, &r);
            fetched += r.received;
            if (fclose(f) != 0 && k == NC_ANSWER) {
                rc = loom_error(LOOM_EIO, "net client: cannot write %s: %s", part, strerror(errno));
                goto out;
            }
            if (k == NC_STOP) {
                rc = nc_stop_error();
                goto out;
            }
            if (k == NC_FATAL && r.abort_why[0] && r.started) {
                /* a body that breaks the task's promise: start again, a few times */
                loom_log(LOOM_WARN, "%s", loom_errmsg());
                unlink(part);
                if (++bad >= NC_BAD_DOWNLOADS) goto too_bad;
                if ((rc = nc_backoff(n, &delay, &q, "bad body")) != LOOM_OK) goto out;
                continue;
            }
            if (k == NC_FATAL) {
                rc = LOOM_EIO;
                goto out;
            }
            if (k == NC_TRANSIENT) {
                if (r.received > 0) { /* bytes came: the server is there, and the next try resumes */
                    n->last_contact = loom_now();
                    delay = NC_BACKOFF_FIRST;
                }
                if ((rc = nc_backoff(n, &delay, &q, r.curl_err)) != LOOM_OK) goto out;
                continue;
            }
            if (r.status == 410) {
                loom_log(LOOM_WARN, "net client: version %" PRIu64 " is no longer served (%s): polling again", t->version,
                         r.message);
                unlink(part);
                *outcome = NC_AGAIN;
                rc = LOOM_OK;
                goto out;
            }
            if (r.status == 416) {
                loom_error(LOOM_EFORMAT, "416 %s: %s", r.code, r.message);
                unlink(part);
                if (++bad >= NC_BAD_DOWNLOADS) goto too_bad;
                continue;
            }
            if (r.status != 200 && r.status != 206) {
                rc = nc_refused(&r, "download");
                goto out;
            }
            if (r.sha[0] && strcmp(r.sha, t->sha) != 0) {
                loom_log(LOOM_WARN, "net client: version %" PRIu64 " is served with SHA-256 %s, the task says %s: polling again",
                         t->version, r.sha, t->sha);
                unlink(part);
                *outcome = NC_AGAIN;
                rc = LOOM_OK;
                goto out;
            }
            long long have = stat(part, &st) == 0 ? (long long)st.st_size : -1;
            if (have != (long long)t->bytes) {
                /* an answer shorter than promised that curl did not flag: resume it, a few times */
                loom_error(LOOM_EFORMAT, "the body ended at byte %lld of %zu", have, t->bytes);
                if (++bad >= NC_BAD_DOWNLOADS) goto too_bad;
                if ((rc = nc_backoff(n, &delay, &q, "short body")) != LOOM_OK) goto out;
                continue;
            }
        }
        if ((rc = nc_sha256_file(part, sha)) != LOOM_OK) goto out;
        if (strcmp(sha, t->sha) == 0) break;
        loom_log(LOOM_WARN, "net client: version %" PRIu64 " downloaded with SHA-256 %s, expected %s: downloading again",
                 t->version, sha, t->sha);
        unlink(part);
        if (++bad >= NC_BAD_DOWNLOADS) goto too_bad;
        nc_req q = {.method = "GET", .path = path};
        if ((rc = nc_backoff(n, &delay, &q, "hash mismatch")) != LOOM_OK) goto out;
    }
    if (rename(part, final) != 0) {
        rc = loom_error(LOOM_EIO, "net client: cannot rename %s to %s: %s", part, final, strerror(errno));
        goto out;
    }
    double secs = loom_now() - t0;
    loom_log(LOOM_INFO, "net client: downloaded version %" PRIu64 " (%zu bytes, %zu this run, %.1f s, %.1f MB/s)",
             t->version, t->bytes, fetched, secs, secs > 0 ? fetched / secs / 1e6 : 0.0);
    nc_resp_reset(&r);
verified:
    nc_remove_others(n, "global-", ".safetensors", (long long)t->version);
    nc_remove_others(n, "global-", ".part", (long long)t->version);
    if ((rc = nc_decode_global(n, final)) != LOOM_OK) {
        unlink(final);
        return rc;
    }
    snprintf(n->loaded_sha, sizeof n->loaded_sha, "%s", t->sha);
    n->loaded_version = t->version;
    snprintf(n->global_path, sizeof n->global_path, "%s", final);
    return LOOM_OK;
too_bad:
    rc = loom_error(LOOM_EFORMAT, "net client: version %" PRIu64 " came corrupt %d times in a row (%s)", t->version, bad,
                    loom_errmsg());
out:
    nc_resp_reset(&r);
    return rc;
}

/* ------------------------------------------------------------------ fit, upload, eval, fail */

static void nc_mark_finished(nc *n, const nc_task *t) {
    snprintf(n->finished_type, sizeof n->finished_type, "%s", t->type);
    n->finished_round = t->round;
    n->finished_version = t->version;
    n->finished_epoch = t->sa ? t->sa_epoch : 0;
}

static int nc_is_finished(const nc *n, const nc_task *t) {
    return strcmp(n->finished_type, t->type) == 0 && n->finished_round == t->round && n->finished_version == t->version &&
           n->finished_epoch == (t->sa ? t->sa_epoch : 0);
}

static int nc_post_fail(nc *n, const nc_task *t, const char *reason) {
    char text[NC_REASON_MAX + 1];
    snprintf(text, sizeof text, "%s", reason ? reason : "unknown");
    json_t *j = json_pack("{s:i, s:s}", "round", t->round, "reason", text);
    if (!j) j = json_pack("{s:i, s:s}", "round", t->round, "reason", "failure (reason not valid UTF-8)");
    nc_resp r = {0};
    int rc = nc_post_json(n, "/v1/fail", j, &r);
    json_decref(j);
    if (rc == LOOM_OK) {
        if (nc_is_final_for_run(&r)) rc = nc_refused(&r, "failure report");
        else if (r.status == 200) loom_log(LOOM_INFO, "net client: round %d: failure reported", t->round);
        else loom_log(LOOM_WARN, "net client: round %d: failure report refused (%ld %s): %s", t->round, r.status, r.code, r.message);
    }
    nc_mark_finished(n, t);
    nc_resp_reset(&r);
    return rc;
}

/* Sends the encoded update of round t->round until the server answers; deletes pending once it has. */
static int nc_upload(nc *n, const nc_task *t, const uint8_t *body, size_t len, const char *pending) {
    char key[65];
    int rc = net_sha256_hex(body, len, key);
    if (rc != LOOM_OK) return rc;
    nc_req q = {.method = "POST", .path = "/v1/update", .body = body, .len = len,
                .content_type = "application/octet-stream", .key = key, .bulk = 1};
    nc_resp r = {0};
    double t0 = loom_now();
    rc = nc_call(n, &q, &r);
    if (rc != LOOM_OK) goto done;
    double secs = loom_now() - t0;
    if (nc_is_final_for_run(&r)) {
        rc = nc_refused(&r, "upload");
        goto done;
    }
    if (r.status == 200) {
        json_t *j = r.body.s ? json_loadb(r.body.s, r.body.n, 0, NULL) : NULL;
        int replayed = json_is_true(json_object_get(j, "replayed"));
        json_decref(j);
        loom_log(LOOM_INFO, "net client: round %d: upload accepted%s (%zu bytes, %.2f s, %.1f MB/s)", t->round,
                 replayed ? " (replayed)" : "", len, secs, secs > 0 ? len / secs / 1e6 : 0.0);
    } else if (r.status == 409 || r.status == 410 || r.status == 412) {
        loom_log(LOOM_WARN, "net client: round %d is over for this client (%ld %s): %s", t->round, r.status, r.code,
                 r.message);
        nc_mark_finished(n, t);
    } else {
        loom_log(LOOM_ERROR, "net client: round %d: update refused (%ld %s): %s", t->round, r.status, r.code, r.message);
        nc_mark_finished(n, t);
    }
    if (unlink(pending) != 0 && errno != ENOENT)
        loom_log(LOOM_WARN, "net client: cannot delete %s: %s", pending, strerror(errno));
done:
    nc_resp_reset(&r);
    return rc;
}

/* A pending upload of this task from an earlier process: its bytes, or NULL (none, or not this task's). */
static uint8_t *nc_read_pending(nc *n, const nc_task *t, const char *pending, size_t *len) {
    char *data = NULL;
    if (access(pending, F_OK) != 0 || loom_read_file(pending, &data, len) != LOOM_OK) return NULL;
    size_t dim = n->hello.dim;
    /* check it against the task; the decoded floats land in the global buffer (reloaded when needed) */
    n->loaded_sha[0] = 0;
    if (!n->control) n->control = loom_alloc(dim * sizeof(float));
    loom_update u;
    int ok = n->control && loom_update_decode((const uint8_t *)data, *len, dim, &u, n->global, n->control) == LOOM_OK &&
             u.len == dim && u.run_id == n->hello.run_id && u.round == t->round && u.version == t->version &&
             u.client == n->hello.client;
    if (!ok) {
        loom_log(LOOM_WARN, "net client: %s is not an update of this task: training again", pending);
        free(data);
        unlink(pending);
        return NULL;
    }
    loom_log(LOOM_INFO, "net client: round %d: sending the pending update again (%zu bytes)", t->round, *len);
    return (uint8_t *)data;
}

/* ------------------------------------------------------------------ secure aggregation */

/* "/v1/secagg?round=R&phase=K&epoch=E" (+ extra). */
static void nc_sa_path(char *out, size_t cap, const nc_task *t, int phase, const char *extra) {
    snprintf(out, cap, "/v1/secagg?round=%d&phase=%d&epoch=%016" PRIx64 "%s", t->round, phase, t->sa_epoch, extra);
}

/* The end of this client's part in a secure round without a result (logged; polling goes on). */
static int nc_sa_out(nc *n, const nc_task *t, int phase, const nc_resp *r, const char *what) {
    if (nc_is_final_for_run(r)) return nc_refused(r, what);
    loom_log(LOOM_WARN, "net client: round %d: out of the secure round at phase %d (%ld %s): %s", t->round, phase,
             r->status, r->code, r->message);
    nc_mark_finished(n, t);
    return LOOM_OK;
}

/* Phases 0..3 of a secure round with the trained update u (docs/protocol.md): each phase's message is
 * posted, then the server's message for it is fetched once the phase closed. The client's keys and
 * masks live in memory only. */
static int nc_secagg(nc *n, const nc_task *t, const loom_update *u) {
    loom_secagg_params p;
    loom_secagg_defaults(&p, t->sa_n, n->hello.dim);
    p.threshold = t->sa_threshold;
    p.neighbours = t->sa_neighbours;
    p.clip = t->sa_clip;
    p.max_weight = t->sa_max_weight;
    p.seed = t->sa_seed;
    p.round = (uint64_t)t->round;
    loom_secagg_client *sc = NULL;
    loom_secagg_buf msg = {0};
    uint8_t *in = NULL;
    size_t in_len = 0;
    nc_resp r = {0};
    size_t up[4] = {0}, down[4] = {0};
    char path[160];
    int rc = loom_secagg_client_create(&sc, &p, t->sa_id, NULL);
    if (rc != LOOM_OK) {
        char why[NC_REASON_MAX + 1];
        snprintf(why, sizeof why, "secure aggregation: %s", loom_errmsg());
        loom_log(LOOM_ERROR, "net client: round %d: %s", t->round, why);
        return nc_post_fail(n, t, why);
    }
    int phase;
    for (phase = 0; phase < 4; phase++) {
        loom_secagg_buf_free(&msg);
        switch (phase) {
        case 0: rc = loom_secagg_client_advertise(sc, &msg); break;
        case 1: rc = loom_secagg_client_share(sc, in, in_len, &msg); break;
        case 2: rc = loom_secagg_client_mask(sc, in, in_len, u->values, u->examples, &msg); break;
        default: rc = loom_secagg_client_unmask(sc, in, in_len, &msg); break;
        }
        if (rc != LOOM_OK) {
            char why[NC_REASON_MAX + 1];
            snprintf(why, sizeof why, "secure aggregation phase %d: %s", phase, loom_errmsg());
            loom_log(LOOM_ERROR, "net client: round %d: %s", t->round, why);
            rc = phase <= 2 ? nc_post_fail(n, t, why) : LOOM_OK;
            nc_mark_finished(n, t);
            goto done;
        }
        char extra[128] = "";
        if (phase == 2)
            snprintf(extra, sizeof extra, "&examples=%" PRIu64 "&loss=%.17g&tokens=%" PRId64, u->examples, u->loss, u->tokens);
        for (char *x = extra; (x = strchr(x, '+'));) { /* "1e+20": a '+' in a query is a space */
            memmove(x + 3, x + 1, strlen(x + 1) + 1);
            memcpy(x, "%2B", 3);
        }
        nc_sa_path(path, sizeof path, t, phase, extra);
        nc_req q = {.method = "POST", .path = path, .body = msg.data, .len = msg.len,
                    .content_type = "application/octet-stream", .bulk = phase == 2};
        if ((rc = nc_call(n, &q, &r)) != LOOM_OK) goto done;
        if (r.status != 200) {
            rc = nc_sa_out(n, t, phase, &r, "secure aggregation");
            goto done;
        }
        up[phase] = msg.len;
        if (n->c->on_secagg_sent) n->c->on_secagg_sent(n->c->ud, t->round, phase);
        if (phase == 3) break;
        /* the server's message once the phase closed */
        nc_sa_path(path, sizeof path, t, phase, "");
        /* the server closes the phase well before */
        double t0 = loom_now(), most = 2 * (phase == 0 ? t->sa_fit_timeout_s : t->sa_timeout_s) + 60;
        for (;;) {
            nc_req g = {.method = "GET", .path = path};
            if ((rc = nc_call(n, &g, &r)) != LOOM_OK) goto done;
            if (r.status != 202) break;
            if (loom_now() - t0 > most) {
                loom_log(LOOM_WARN, "net client: round %d: phase %d did not close in %.0f s: leaving the round", t->round,
                         phase, most);
                nc_mark_finished(n, t);
                goto done;
            }
            long long retry = 100;
            json_t *j = r.body.s ? json_loadb(r.body.s, r.body.n, 0, NULL) : NULL;
            json_t *rv = json_object_get(j, "retry_ms");
            if (json_is_integer(rv) && json_integer_value(rv) >= 1 && json_integer_value(rv) <= 60000) retry = json_integer_value(rv);
            json_decref(j);
            if (nc_sleep(n, retry / 1000.0 * nc_jitter(n))) {
                rc = nc_stop_error();
                goto done;
            }
        }
        if (r.status != 200) {
            rc = nc_sa_out(n, t, phase, &r, "secure aggregation");
            goto done;
        }
        free(in);
        in_len = r.body.n;
        in = malloc(in_len ? in_len : 1);
        if (!in) {
            rc = loom_error(LOOM_ENOMEM, "net client: out of memory");
            goto done;
        }
        memcpy(in, r.body.s, in_len);
        down[phase] = in_len;
    }
    loom_log(LOOM_INFO, "net client: round %d: secure aggregation done: sent %zu + %zu + %zu + %zu bytes, received %zu + "
             "%zu + %zu bytes (phases 0-3)", t->round, up[0], up[1], up[2], up[3], down[0], down[1], down[2]);
    nc_mark_finished(n, t);
done:
    nc_resp_reset(&r);
    free(in);
    loom_secagg_buf_free(&msg);
    loom_secagg_client_free(sc);
    return rc;
}

static int nc_fit(nc *n, const nc_task *t) {
    const loom_netclient_config *c = n->c;
    char pending[PATH_MAX];
    int rc = nc_path(pending, n, "pending-%d.upd", t->round);
    if (rc != LOOM_OK) return rc;
    nc_remove_others(n, "pending-", ".upd", t->round);
    size_t len = 0;
    uint8_t *body = t->sa ? NULL : nc_read_pending(n, t, pending, &len); /* a masked input is never kept */
    if (!body) {
        int outcome;
        if ((rc = nc_fetch_global(n, t, &outcome)) != LOOM_OK) return rc;
        if (outcome == NC_AGAIN) return LOOM_OK;
        if (nc_stopped(n)) return nc_stop_error();
        loom_update u = {.run_id = n->hello.run_id, .round = t->round, .version = t->version,
                         .client = n->hello.client, .codec = LOOM_CODEC_F32, .len = n->hello.dim};
        loom_codec_opts co = {.codec = LOOM_CODEC_F32};
        loom_netclient_task nt = {t->round, t->version, t->deadline_s, t->sa, n};
        loom_clear_error();
        double t0 = loom_now();
        rc = c->fit(c->ud, &nt, n->global, n->has_control ? n->control : NULL, &u, &co);
        if (rc != LOOM_OK) {
            char why[NC_REASON_MAX + 1];
            snprintf(why, sizeof why, "%s", loom_errmsg()[0] ? loom_errmsg() : loom_strerror(rc));
            loom_log(LOOM_ERROR, "net client: round %d: training failed: %s", t->round, why);
            return nc_post_fail(n, t, why);
        }
        if (u.run_id != n->hello.run_id || u.round != t->round || u.version != t->version ||
            u.client != n->hello.client || u.len > n->hello.dim || !u.values) { /* a masked update: fewer */
            char why[256];
            snprintf(why, sizeof why, "the trained update does not match its task (round %d version %" PRIu64
                     " client %d len %zu, expected round %d version %" PRIu64 " client %d len %zu)",
                     u.round, u.version, u.client, u.len, t->round, t->version, n->hello.client, n->hello.dim);
            loom_log(LOOM_ERROR, "net client: %s", why);
            return nc_post_fail(n, t, why);
        }
        if (t->sa) {
            loom_log(LOOM_INFO, "net client: round %d: trained on version %" PRIu64 " in %.1f s (%" PRIu64
                     " examples, loss %.4f); secure aggregation", t->round, t->version, loom_now() - t0, u.examples, u.loss);
            return nc_secagg(n, t, &u);
        }
        rc = loom_update_encode(&u, &co, &body, &len);
        if (rc != LOOM_OK) {
            char why[NC_REASON_MAX + 1];
            snprintf(why, sizeof why, "cannot encode the update: %s", loom_errmsg());
            loom_log(LOOM_ERROR, "net client: round %d: %s", t->round, why);
            return nc_post_fail(n, t, why);
        }
        loom_log(LOOM_INFO, "net client: round %d: trained on version %" PRIu64 " in %.1f s (%" PRIu64 " examples, loss %.4f)",
                 t->round, t->version, loom_now() - t0, u.examples, u.loss);
        /* durable before it leaves: a restarted client sends these bytes, under the same key */
        if ((rc = loom_write_file_atomic(pending, body, len)) != LOOM_OK || (rc = nc_fsync_dir(c->work_dir)) != LOOM_OK) {
            free(body);
            return rc;
        }
    }
    rc = nc_upload(n, t, body, len, pending);
    free(body);
    return rc;
}

static int nc_eval(nc *n, const nc_task *t) {
    const loom_netclient_config *c = n->c;
    int outcome;
    int rc = nc_fetch_global(n, t, &outcome);
    if (rc != LOOM_OK || outcome == NC_AGAIN) return rc;
    if (nc_stopped(n)) return nc_stop_error();
    loom_eval_result e = {0};
    loom_netclient_task nt = {t->round, t->version, 0, 0, n};
    loom_clear_error();
    rc = c->evaluate(c->ud, &nt, n->global, &e);
    if (rc != LOOM_OK || !isfinite(e.loss_sum) || e.tokens < 0 || e.correct < 0 || e.count < 0) {
        loom_log(LOOM_ERROR, "net client: round %d: evaluation failed: %s", t->round,
                 rc != LOOM_OK ? loom_errmsg() : "a result that is not finite or is negative");
        nc_mark_finished(n, t);
        return LOOM_OK;
    }
    json_t *j = json_pack("{s:i, s:f, s:I, s:I, s:I}", "round", t->round, "loss_sum", e.loss_sum, "tokens",
                          (json_int_t)e.tokens, "correct", (json_int_t)e.correct, "count", (json_int_t)e.count);
    nc_resp r = {0};
    rc = nc_post_json(n, "/v1/eval", j, &r);
    json_decref(j);
    if (rc == LOOM_OK) {
        if (nc_is_final_for_run(&r)) {
            rc = nc_refused(&r, "evaluation report");
        } else if (r.status == 200) {
            loom_log(LOOM_INFO, "net client: round %d: evaluation reported (loss %.4f over %ld tokens)", t->round,
                     e.tokens ? e.loss_sum / (double)e.tokens : 0.0, e.tokens);
        } else {
            loom_log(LOOM_WARN, "net client: round %d: evaluation report refused (%ld %s): %s", t->round, r.status, r.code,
                     r.message);
            nc_mark_finished(n, t);
        }
    }
    nc_resp_reset(&r);
    return rc;
}

/* ------------------------------------------------------------------ the run */

static int nc_check_config(const loom_netclient_config *c) {
    if (!c) return loom_error(LOOM_EINVAL, "net client: no configuration");
    if (!c->url || (strncmp(c->url, "https://", 8) != 0 && strncmp(c->url, "http://", 7) != 0))
        return loom_error(LOOM_EINVAL, "net client: the server URL must start with https:// (got %s)", c->url ? c->url : "none");
    if (strlen(c->url) >= 1000) return loom_error(LOOM_EINVAL, "net client: the server URL is too long");
    if (!nc_check_name(c->name))
        return loom_error(LOOM_EINVAL, "net client: invalid name \"%.80s\": 1 to 64 characters of [A-Za-z0-9._-], "
                          "not starting with '.' or '-'", c->name ? c->name : "");
    size_t tl = c->token ? strlen(c->token) : 0;
    if (tl < 1 || tl > 512) return loom_error(LOOM_EINVAL, "net client: the token must be 1 to 512 characters");
    for (size_t i = 0; i < tl; i++)
        if (c->token[i] <= ' ' || c->token[i] > '~')
            return loom_error(LOOM_EINVAL, "net client: the token holds a space or control character at %zu", i);
    if (!c->work_dir || !*c->work_dir) return loom_error(LOOM_EINVAL, "net client: work_dir is required");
    if (strlen(c->work_dir) > PATH_MAX - 64) return loom_error(LOOM_EINVAL, "net client: work_dir path too long");
    if (c->base_sha256 && !nc_is_hex(c->base_sha256, 64))
        return loom_error(LOOM_EINVAL, "net client: base_sha256 must be 64 lowercase hex digits");
    if (!c->fit || !c->evaluate) return loom_error(LOOM_EINVAL, "net client: the fit and evaluate callbacks are required");
    if (c->give_up_s < 0 || !isfinite(c->give_up_s)) return loom_error(LOOM_EINVAL, "net client: give_up_s must be >= 0");
    return LOOM_OK;
}

/* A binary request made during fit (split learning, net/split_client.c): its answer's body (200, at most
 * max_reply bytes) into *reply (malloc'd). A refusal (4xx) is LOOM_EINVAL with the server's words. */
int net_client_binary(void *conn, const char *method, const char *path, const void *body, size_t len,
                      size_t max_reply, void **reply, size_t *rlen) {
    nc *n = conn;
    *reply = NULL;
    *rlen = 0;
    char *mem = NULL;
    size_t mlen = 0;
    nc_req q = {.method = method, .path = path, .body = body, .len = len,
                .content_type = body ? "application/octet-stream" : NULL, .total = max_reply};
    nc_resp r;
    memset(&r, 0, sizeof r);
    double delay = NC_BACKOFF_FIRST;
    int rc = LOOM_OK;
    for (;;) { /* nc_call's loop, each attempt into a fresh buffer */
        if (nc_stopped(n)) return nc_stop_error();
        FILE *sink = open_memstream(&mem, &mlen);
        if (!sink) return loom_error(LOOM_ENOMEM, "net client: out of memory for an answer");
        q.sink = sink;
        int k = nc_perform(n, &q, &r);
        fclose(sink);
        if (k == NC_ANSWER) break;
        free(mem);
        mem = NULL;
        if (k == NC_FATAL) rc = LOOM_EIO;
        else if (k == NC_STOP) rc = nc_stop_error();
        else {
            char why[CURL_ERROR_SIZE];
            snprintf(why, sizeof why, "%s", r.curl_err);
            rc = nc_backoff(n, &delay, &q, why);
        }
        if (rc != LOOM_OK) {
            nc_resp_reset(&r);
            return rc;
        }
    }
    if (r.status != 200)
        rc = loom_error(LOOM_EINVAL, "net client: %s %s refused by the server (%ld %s): %s", method, path, r.status,
                        r.code[0] ? r.code : "no code", r.message[0] ? r.message : "no message");
    nc_resp_reset(&r);
    if (rc != LOOM_OK) {
        free(mem);
        return rc;
    }
    *reply = mem;
    *rlen = mlen;
    return LOOM_OK;
}

int loom_netclient_run(const loom_netclient_config *c) {
    int rc = nc_check_config(c);
    if (rc != LOOM_OK) return rc;
    if ((rc = nc_mkdirs(c->work_dir)) != LOOM_OK) return rc;
    pthread_once(&nc_curl_once, nc_curl_init);
    if (!nc_curl_ok) return loom_error(LOOM_EIO, "net client: libcurl could not be initialised");
    nc *n = calloc(1, sizeof *n);
    if (!n) return loom_error(LOOM_ENOMEM, "net client: out of memory");
    n->c = c;
    n->curl = curl_easy_init();
    if (!n->curl) {
        free(n);
        return loom_error(LOOM_EIO, "net client: cannot create a libcurl handle");
    }
    snprintf(n->base_url, sizeof n->base_url, "%s", c->url);
    for (size_t l = strlen(n->base_url); l && n->base_url[l - 1] == '/'; l--) n->base_url[l - 1] = 0;
    snprintf(n->auth, sizeof n->auth, "Authorization: Bearer %s", c->token);
    snprintf(n->agent, sizeof n->agent, "loom/%.32s", c->version ? c->version : "unknown");
    loom_rng_init(&n->rng, nc_fnv(c->name), NC_STREAM_JITTER);
    n->give_up_s = c->give_up_s > 0 ? c->give_up_s : 600;
    n->last_contact = loom_now();
    if (strncmp(c->url, "http://", 7) == 0)
        loom_log(LOOM_WARN, "net client: %s is plain HTTP: the token and the updates travel unencrypted", c->url);

    if ((rc = nc_hello(n)) != LOOM_OK) goto done;
    if (!(n->global = loom_alloc(n->hello.dim * sizeof(float)))) {
        rc = LOOM_ENOMEM;
        goto done;
    }
    if (c->setup && (rc = c->setup(c->ud, &n->hello)) != LOOM_OK) {
        loom_error_context(rc, "net client: setup");
        goto done;
    }
    for (;;) {
        if (nc_stopped(n)) {
            rc = nc_stop_error();
            break;
        }
        nc_task t;
        if ((rc = nc_get_task(n, &t)) != LOOM_OK) break;
        if (strcmp(t.type, "done") == 0) {
            loom_log(LOOM_INFO, "net client: the run is done");
            rc = LOOM_OK;
            break;
        }
        int wait_ms = t.retry_ms;
        if (strcmp(t.type, "wait") != 0) {
            if (nc_is_finished(n, &t)) {
                wait_ms = n->poll_ms; /* this task ended without an accepted answer: not again */
            } else {
                loom_log(LOOM_INFO, "net client: task %s: round %d, version %" PRIu64 "%s", t.type, t.round, t.version,
                         t.deadline_s > 0 ? " (with a deadline)" : "");
                rc = strcmp(t.type, "fit") == 0 ? nc_fit(n, &t) : nc_eval(n, &t);
                if (rc != LOOM_OK) break;
                continue;
            }
        }
        if (nc_sleep(n, wait_ms / 1000.0 * nc_jitter(n))) {
            rc = nc_stop_error();
            break;
        }
    }
done:
    curl_easy_cleanup(n->curl);
    loom_free(n->global);
    loom_free(n->control);
    free(n->run_json);
    free(n->model_config_json);
    free(n);
    return rc;
}

/* ------------------------------------------------------------------ GETs for other net/ parts (peers) */

struct net_getter {
    loom_netclient_config cfg;
    char ca[4096];
    nc n;
};

int net_getter_create(net_getter **out, const char *base_url, const char *token, const char *ca_cert, double give_up_s,
                      volatile int *stop) {
    *out = NULL;
    pthread_once(&nc_curl_once, nc_curl_init);
    if (!nc_curl_ok) return loom_error(LOOM_EIO, "net client: libcurl could not be initialised");
    net_getter *g = calloc(1, sizeof *g);
    if (!g) return loom_error(LOOM_ENOMEM, "net client: out of memory");
    if (ca_cert) {
        snprintf(g->ca, sizeof g->ca, "%s", ca_cert);
        g->cfg.ca_cert = g->ca;
    }
    g->cfg.stop = stop;
    g->n.c = &g->cfg;
    if (!(g->n.curl = curl_easy_init())) {
        free(g);
        return loom_error(LOOM_EIO, "net client: cannot create a libcurl handle");
    }
    snprintf(g->n.base_url, sizeof g->n.base_url, "%s", base_url);
    for (size_t l = strlen(g->n.base_url); l && g->n.base_url[l - 1] == '/'; l--) g->n.base_url[l - 1] = 0;
    snprintf(g->n.auth, sizeof g->n.auth, "Authorization: Bearer %s", token);
    snprintf(g->n.agent, sizeof g->n.agent, "loom/peer");
    loom_rng_init(&g->n.rng, nc_fnv(base_url), NC_STREAM_JITTER);
    g->n.give_up_s = give_up_s > 0 ? give_up_s : 600;
    g->n.last_contact = loom_now();
    *out = g;
    return LOOM_OK;
}

void net_getter_free(net_getter *g) {
    if (!g) return;
    curl_easy_cleanup(g->n.curl);
    free(g);
}

int net_getter_get(net_getter *g, const char *path, size_t max, uint8_t **body, size_t *len, long *status,
                   char code[48]) {
    *body = NULL;
    *len = 0;
    *status = 0;
    code[0] = 0;
    char *buf = NULL;
    size_t blen = 0;
    FILE *sink = open_memstream(&buf, &blen);
    if (!sink) return loom_error(LOOM_ENOMEM, "net client: out of memory");
    nc_req q = {"GET", path, NULL, 0, NULL, NULL, sink, 0, max, 1};
    nc_resp r;
    memset(&r, 0, sizeof r);
    int rc = nc_call(&g->n, &q, &r);
    int ok = fclose(sink) == 0;
    if (rc == LOOM_OK && !ok) rc = loom_error(LOOM_ENOMEM, "net client: out of memory for the answer");
    if (rc == LOOM_OK) {
        *status = r.status;
        snprintf(code, 48, "%s", r.code);
        if (r.status == 200) {
            *body = (uint8_t *)buf;
            *len = blen;
            buf = NULL;
        } else if (r.message[0])
            loom_error(LOOM_EINVAL, "%s%s: %ld %s: %s", g->n.base_url, path, r.status, r.code, r.message);
        else
            loom_error(LOOM_EINVAL, "%s%s: %ld", g->n.base_url, path, r.status);
    }
    free(buf);
    free(r.body.s);
    return rc;
}
