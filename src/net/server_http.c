/* The HTTPS daemon of the server (libmicrohttpd with GnuTLS): bodies collected under their limits,
 * the request handed to net_handle, the answer sent; the development certificate; loom_server_run. */
#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loom/core.h"
#include "net/server_impl.h"

/* ------------------------------------------------------------------ the development certificate */

#define GT(call)                                                                                  \
    do {                                                                                          \
        int g_ = (call);                                                                          \
        if (g_ < 0) {                                                                             \
            rc = loom_error(LOOM_EIO, "making the TLS certificate: %s: %s", #call, gnutls_strerror(g_)); \
            goto done;                                                                            \
        }                                                                                         \
    } while (0)

/* A self-signed certificate for localhost and 127.0.0.1 (ECDSA P-256, five years), PEM texts. */
static int make_cert(char **cert_pem, char **key_pem) {
    int rc = LOOM_OK;
    gnutls_x509_privkey_t key = NULL;
    gnutls_x509_crt_t crt = NULL;
    gnutls_datum_t c = {NULL, 0}, k = {NULL, 0};
    *cert_pem = *key_pem = NULL;
    GT(gnutls_x509_privkey_init(&key));
    GT(gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0));
    GT(gnutls_x509_crt_init(&crt));
    GT(gnutls_x509_crt_set_version(crt, 3));
    unsigned char serial[16];
    if ((rc = net_random(serial, sizeof serial)) != LOOM_OK) goto done;
    serial[0] &= 0x7f;
    GT(gnutls_x509_crt_set_serial(crt, serial, sizeof serial));
    time_t now = time(NULL);
    GT(gnutls_x509_crt_set_activation_time(crt, now - 3600));
    GT(gnutls_x509_crt_set_expiration_time(crt, now + (time_t)5 * 365 * 86400));
    GT(gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, "localhost", 9));
    GT(gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_ORGANIZATION_NAME, 0, "loom development", 16));
    GT(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, "localhost", 9, GNUTLS_FSAN_SET));
    unsigned char ip[4] = {127, 0, 0, 1};
    GT(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, ip, 4, GNUTLS_FSAN_APPEND));
    GT(gnutls_x509_crt_set_key(crt, key));
    GT(gnutls_x509_crt_set_basic_constraints(crt, 1, 0)); /* its own trust anchor (the clients' --ca-cert) */
    GT(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_CERT_SIGN));
    GT(gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0));
    unsigned char kid[64];
    size_t kidn = sizeof kid;
    GT(gnutls_x509_crt_get_key_id(crt, 0, kid, &kidn));
    GT(gnutls_x509_crt_set_subject_key_id(crt, kid, kidn));
    GT(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0));
    GT(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &c));
    GT(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &k));
    *cert_pem = strndup((const char *)c.data, c.size);
    *key_pem = strndup((const char *)k.data, k.size);
    if (!*cert_pem || !*key_pem) rc = loom_error(LOOM_ENOMEM, "out of memory");
done:
    if (c.data) gnutls_free(c.data);
    if (k.data) {
        memset(k.data, 0, k.size);
        gnutls_free(k.data);
    }
    if (crt) gnutls_x509_crt_deinit(crt);
    if (key) gnutls_x509_privkey_deinit(key);
    if (rc != LOOM_OK) {
        free(*cert_pem);
        free(*key_pem);
        *cert_pem = *key_pem = NULL;
    }
    return rc;
}

int net_tls_load(const char *state_dir, const char *cert_file, const char *key_file, char **cert, char **key) {
    *cert = *key = NULL;
    size_t n;
    int rc;
    if (cert_file || key_file) {
        if (!cert_file || !key_file)
            return loom_error(LOOM_EINVAL, "--tls-cert and --tls-key go together (one of them is missing)");
        if ((rc = loom_read_file(cert_file, cert, &n)) != LOOM_OK) return loom_error_context(rc, "--tls-cert");
        if ((rc = loom_read_file(key_file, key, &n)) != LOOM_OK) {
            free(*cert);
            *cert = NULL;
            return loom_error_context(rc, "--tls-key");
        }
        return LOOM_OK;
    }
    char dir[4200], cp[4300], kp[4300];
    snprintf(dir, sizeof dir, "%s/tls", state_dir);
    snprintf(cp, sizeof cp, "%s/cert.pem", dir);
    snprintf(kp, sizeof kp, "%s/key.pem", dir);
    struct stat st;
    if (stat(cp, &st) == 0 && stat(kp, &st) == 0) {
        if ((rc = loom_read_file(cp, cert, &n)) != LOOM_OK) return rc;
        if ((rc = loom_read_file(kp, key, &n)) != LOOM_OK) {
            free(*cert);
            *cert = NULL;
            return rc;
        }
        loom_log(LOOM_WARN, "using the self-signed development certificate %s: clients must trust it (--ca-cert); "
                            "give --tls-cert and --tls-key for a real deployment", cp);
        return LOOM_OK;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return loom_error(LOOM_EIO, "cannot create %s: %s", dir, strerror(errno));
    if ((rc = make_cert(cert, key)) != LOOM_OK) return rc;
    rc = net_write_durable(dir, "key.pem", *key, strlen(*key));
    if (rc == LOOM_OK) rc = net_write_durable(dir, "cert.pem", *cert, strlen(*cert));
    if (rc != LOOM_OK) {
        free(*cert);
        free(*key);
        *cert = *key = NULL;
        return rc;
    }
    loom_log(LOOM_WARN,
             "WARNING: no --tls-cert given: made a SELF-SIGNED development certificate %s (key %s), valid for "
             "localhost and 127.0.0.1 only; clients must trust it with --ca-cert %s. Use a real certificate "
             "(--tls-cert, --tls-key) for a deployment.",
             cp, kp, cp);
    return LOOM_OK;
}

/* ------------------------------------------------------------------ the daemon */

typedef struct {
    uint8_t *body;
    size_t len, cap, limit;
    int too_large;   /* the body exceeds the limit: 1 draining it (413 sent after), 2 413 queued */
    size_t drained;  /* bytes of an oversized body read and dropped */
    uint64_t tag;    /* the answer's tag (net_response.tag) */
} conn_ctx;

/* An oversized body is read and dropped up to this many bytes before the 413 goes out, so that a client
 * still sending (without Expect: 100-continue) reads the answer instead of a reset connection; a larger
 * one, or one announced with Expect, gets the 413 at once and the connection closes. */
#define NET_DRAIN_MAX ((size_t)8 << 20)

typedef struct {
    const net_http_service *svc;
    net_blob *blob;
    size_t off;
} blob_reader;

static ssize_t read_blob(void *cls, uint64_t pos, char *buf, size_t max) {
    blob_reader *br = cls;
    size_t len = br->blob->len;
    size_t at = br->off + (size_t)pos;
    if (at >= len) return MHD_CONTENT_READER_END_OF_STREAM;
    size_t n = len - at < max ? len - at : max;
    memcpy(buf, br->blob->data + at, n);
    return (ssize_t)n;
}

static void free_blob_reader(void *cls) {
    blob_reader *br = cls;
    br->svc->release_blob(br->svc->ud, br->blob);
    free(br);
}

static enum MHD_Result send_response(struct MHD_Connection *con, const net_http_service *s, net_response *r) {
    struct MHD_Response *resp = NULL;
    if (r->blob) {
        blob_reader *br = malloc(sizeof *br);
        if (br) {
            *br = (blob_reader){s, r->blob, r->off};
            resp = MHD_create_response_from_callback(r->len, 256 * 1024, read_blob, br, free_blob_reader);
            if (resp) r->blob = NULL; /* the reader owns the reference */
            else free(br);
        }
    } else {
        resp = MHD_create_response_from_buffer(r->len, r->body, MHD_RESPMEM_MUST_FREE);
        if (resp) r->body = NULL;
    }
    if (!resp) {
        s->clear(s->ud, r);
        return MHD_NO;
    }
    if (r->ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->ctype);
    for (int i = 0; i < r->nhdr; i++) MHD_add_response_header(resp, r->hdr[i][0], r->hdr[i][1]);
    enum MHD_Result ok = MHD_queue_response(con, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    s->clear(s->ud, r);
    return ok;
}

static enum MHD_Result send_too_large(struct MHD_Connection *con, const net_http_service *s, size_t limit) {
    net_response r;
    memset(&r, 0, sizeof r);
    r.status = 413;
    r.ctype = "application/json";
    char msg[256];
    snprintf(msg, sizeof msg, "{\"error\":\"too_large\",\"message\":\"the request body exceeds the %zu-byte limit\"}",
             limit);
    r.body = strdup(msg);
    r.len = r.body ? strlen(r.body) : 0;
    return send_response(con, s, &r);
}

/* LOOM_NET_TRACE=FILE appends every request's method, path and body to FILE (for audits and tests: it
 * shows exactly what clients send; off unless set). */
static pthread_mutex_t trace_mu = PTHREAD_MUTEX_INITIALIZER;
static void trace_request(const char *method, const char *url, const uint8_t *body, size_t len) {
    const char *path = getenv("LOOM_NET_TRACE");
    if (!path || !*path) return;
    pthread_mutex_lock(&trace_mu);
    FILE *f = fopen(path, "ab");
    if (f) {
        fprintf(f, "%s %s %zu\n", method, url, len);
        fwrite(body, 1, len, f);
        fputc('\n', f);
        fclose(f);
    }
    pthread_mutex_unlock(&trace_mu);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    const net_http_service *s = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) {
        cx = calloc(1, sizeof *cx);
        if (!cx) return MHD_NO;
        *con_cls = cx;
        if (s->begin) s->begin(s->ud);
        cx->limit = s->limit(s->ud, url);
        const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            unsigned long long v = strtoull(cl, NULL, 10);
            if (v > cx->limit) {
                const char *ex = MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
                if (v - cx->limit <= NET_DRAIN_MAX && !(ex && !strcasecmp(ex, "100-continue"))) {
                    cx->too_large = 1; /* drained, answered when it has all arrived */
                    return MHD_YES;
                }
                cx->too_large = 2;
                return send_too_large(con, s, cx->limit); /* before the body is read */
            }
            if (v > 0) {
                cx->body = malloc((size_t)v);
                if (!cx->body) return MHD_NO;
                cx->cap = (size_t)v;
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (cx->too_large == 2) return MHD_YES;
        if (cx->too_large || n > cx->limit - cx->len) {
            if (!cx->too_large) {
                cx->too_large = 1;
                free(cx->body);
                cx->body = NULL;
                cx->drained = cx->len;
                cx->len = cx->cap = 0;
            }
            cx->drained += n;
            if (cx->drained <= cx->limit + NET_DRAIN_MAX) return MHD_YES;
            cx->too_large = 2;
            return send_too_large(con, s, cx->limit) == MHD_YES ? MHD_YES : MHD_NO;
        }
        if (cx->len + n > cx->cap) {
            size_t cap = cx->cap ? cx->cap : 4096;
            while (cap < cx->len + n) cap *= 2;
            if (cap > cx->limit) cap = cx->limit;
            uint8_t *nb = realloc(cx->body, cap);
            if (!nb) return MHD_NO;
            cx->body = nb;
            cx->cap = cap;
        }
        memcpy(cx->body + cx->len, upload, n);
        cx->len += n;
        return MHD_YES;
    }
    if (cx->too_large == 2) return MHD_YES; /* the 413 is queued */
    if (cx->too_large) {
        cx->too_large = 2;
        return send_too_large(con, s, cx->limit);
    }
    net_request q = {
        .method = method,
        .path = url,
        .authorization = MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
        .idem_key = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Idempotency-Key"),
        .sha256 = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "X-Loom-SHA256"),
        .range = MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_RANGE),
        .version = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "version"),
        .arg_round = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "round"),
        .arg_phase = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "phase"),
        .arg_epoch = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "epoch"),
        .arg_examples = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "examples"),
        .arg_loss = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "loss"),
        .arg_tokens = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "tokens"),
        .arg_since = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "since"),
        .arg_step = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "step"),
        .body = cx->body ? cx->body : (const uint8_t *)"",
        .len = cx->len,
    };
    trace_request(method, url, q.body, q.len);
    net_response r;
    s->handle(s->ud, &q, &r);
    cx->tag = r.tag;
    return send_response(con, s, &r);
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)con;
    const net_http_service *s = cls;
    conn_ctx *cx = *con_cls;
    if (!cx) return;
    uint64_t tag = cx->tag;
    free(cx->body);
    free(cx);
    *con_cls = NULL;
    if (s->end) s->end(s->ud, tag, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK); /* the response is out */
}

/* "HOST:PORT" ("[V6]:PORT" for IPv6) into a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *sa, int *v6) {
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen) return loom_error(LOOM_EINVAL, "--listen %s is not HOST:PORT", listen);
    size_t hl = (size_t)(colon - listen);
    if (hl >= sizeof host) return loom_error(LOOM_EINVAL, "--listen %.64s: host too long", listen);
    memcpy(host, listen, hl);
    host[hl] = 0;
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535)
        return loom_error(LOOM_EINVAL, "--listen %s: the port must be 0..65535", listen);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int g = getaddrinfo(host, NULL, &hints, &res);
    if (g != 0 || !res) return loom_error(LOOM_EINVAL, "--listen %s: cannot resolve %s: %s", listen, host, gai_strerror(g));
    memset(sa, 0, sizeof *sa);
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *v6 = res->ai_family == AF_INET6;
    if (*v6) ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
    else ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return LOOM_OK;
}

/* ---- the daemon over any service (the server's handlers, a peer's) ---- */

int net_http_start(struct MHD_Daemon **out, const char *listen, const char *cert, const char *key, unsigned threads,
                   const net_http_service *svc, int *port) {
    *out = NULL;
    struct sockaddr_storage sa;
    int v6 = 0, rc;
    if ((rc = parse_listen(listen, &sa, &v6)) != LOOM_OK) return rc;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_TLS | (v6 ? MHD_USE_IPv6 : 0);
    struct MHD_Daemon *d =
        MHD_start_daemon(flags, 0, NULL, NULL, on_request, (void *)svc, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                         MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_THREAD_POOL_SIZE,
                         threads, MHD_OPTION_NOTIFY_COMPLETED, on_completed, (void *)svc,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_CONNECTION_LIMIT, (unsigned)4096,
                         MHD_OPTION_END);
    if (!d) return loom_error(LOOM_EIO, "cannot listen on %s (TLS with the given certificate): %s", listen, strerror(errno));
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? (int)info->port : 0;
    *out = d;
    return LOOM_OK;
}

void net_http_stop(struct MHD_Daemon *d) {
    if (d) MHD_stop_daemon(d);
}

/* the server's service: its handlers, body limits and in-flight count */
static size_t srv_limit(void *ud, const char *url) {
    net_server *s = ud;
    return url && !strcmp(url, "/v1/update")                          ? s->max_upload
           : url && !strcmp(url, "/v1/secagg")                        ? net_sa_body_limit(s)
           : url && !strcmp(url, "/v1/split") && s->c.split_max_body ? s->c.split_max_body
                                                                      : NET_MAX_JSON;
}
static void srv_handle(void *ud, const net_request *q, net_response *r) { net_handle(ud, q, r); }
static void srv_clear(void *ud, net_response *r) { net_response_clear(ud, r); }
static void srv_release_blob(void *ud, net_blob *b) { net_blob_release(ud, b); }
static void srv_begin(void *ud) { __atomic_add_fetch(&((net_server *)ud)->in_flight, 1, __ATOMIC_SEQ_CST); }
static void srv_end(void *ud, uint64_t tag, int completed) {
    (void)tag, (void)completed;
    __atomic_sub_fetch(&((net_server *)ud)->in_flight, 1, __ATOMIC_SEQ_CST);
}

int loom_server_run(const loom_server_config *c, float *global) {
    net_server *s = NULL;
    int rc = net_server_create(&s, c);
    if (rc != LOOM_OK) return rc;
    char *cert = NULL, *key = NULL;
    struct MHD_Daemon *d = NULL;
    int port = 0;
    net_http_service svc = {srv_limit, srv_handle, srv_clear, srv_release_blob, srv_begin, srv_end, s};
    if ((rc = net_tls_load(c->state_dir, c->tls_cert, c->tls_key, &cert, &key)) != LOOM_OK) goto done;
    if ((rc = net_http_start(&d, c->listen ? c->listen : "127.0.0.1:8443", cert, key, (unsigned)c->threads, &svc,
                             &port)) != LOOM_OK)
        goto done;
    net_store_event(s->store, 0, "listen", "listening on %s (port %d), run %016llx", c->listen ? c->listen : "127.0.0.1:8443",
                    port, (unsigned long long)s->run_id);
    if (c->on_listen) c->on_listen(c->ud, port);
    rc = net_server_drive(s, global);
done:
    if (d) MHD_stop_daemon(d);
    if (key) memset(key, 0, strlen(key));
    free(cert);
    free(key);
    if (rc != LOOM_OK && s && global) memcpy(global, loom_engine_global(s->eng), s->dim * sizeof(float));
    net_server_free(s);
    return rc;
}
