/* The dashboard over HTTP (include/loom/dash.h): the page's built-in files, the API's routes shared by
 * every server of a board, and the plain loopback server of loom sim --serve and loom report --serve. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "loom/core.h"
#include "loom/dash.h"

extern const loom_dash_asset lm_dash_assets[]; /* generated from web/ (web/embed.cmake) */

const loom_dash_asset *loom_dash_find_asset(const char *path) {
    if (!path) return NULL;
    if (!strcmp(path, "/index.html")) path = "/";
    for (const loom_dash_asset *a = lm_dash_assets; a->path; a++)
        if (!strcmp(a->path, path)) return a;
    return NULL;
}

int loom_dash_is_api(const char *path) {
    return path && (!strcmp(path, "/v1/dash/status") || !strcmp(path, "/v1/dash/metrics"));
}

static char *err_body(const char *code, const char *msg, size_t *len) {
    char buf[512];
    snprintf(buf, sizeof buf, "{\"error\":\"%s\",\"message\":\"%s\"}", code, msg);
    char *b = strdup(buf);
    *len = b ? strlen(b) : 0;
    return b;
}

int loom_dash_route(loom_dash *d, const char *method, const char *path, const char *since, double now, int *status,
                    const char **ctype, char **body, size_t *len) {
    const loom_dash_asset *a = loom_dash_find_asset(path);
    if (!a && !loom_dash_is_api(path)) return 0;
    *body = NULL;
    *len = 0;
    *ctype = "application/json";
    if (!method || (strcmp(method, "GET") && strcmp(method, "HEAD"))) {
        *status = 405;
        *body = err_body("method_not_allowed", "the dashboard takes GET", len);
        return 1;
    }
    if (a) {
        *status = 200;
        *ctype = a->ctype;
        *body = malloc(a->len + 1);
        if (*body) {
            memcpy(*body, a->data, a->len);
            *len = a->len;
        } else *status = 503;
        return 1;
    }
    if (!strcmp(path, "/v1/dash/status")) *body = loom_dash_status_json(d, now);
    else {
        long s = 0;
        if (since && *since) {
            char *end;
            errno = 0;
            long long v = strtoll(since, &end, 10);
            if (errno || *end || v < 0 || v > (1 << 30)) {
                *status = 400;
                *body = err_body("bad_request", "since must be a whole number of rounds in [0, 2^30]", len);
                return 1;
            }
            s = (long)v;
        }
        *body = loom_dash_metrics_json(d, s);
    }
    if (*body) {
        *status = 200;
        *len = strlen(*body);
    } else {
        *status = 503;
        *body = err_body("busy", "out of memory", len);
    }
    return 1;
}

int loom_dash_parse_listen(const char *s, const char *flag, char *host, size_t hostn, int *port) {
    if (!s || !*s) return loom_error(LOOM_EINVAL, "%s: give [HOST:]PORT", flag);
    const char *colon = strrchr(s, ':');
    const char *ps = colon ? colon + 1 : s;
    size_t hl = colon ? (size_t)(colon - s) : 0;
    if (colon && hl == 0) return loom_error(LOOM_EINVAL, "%s %.64s: the host before ':' is empty", flag, s);
    if (hl >= hostn) return loom_error(LOOM_EINVAL, "%s %.64s: the host is too long", flag, s);
    if (colon) {
        memcpy(host, s, hl);
        host[hl] = 0;
        if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
            memmove(host, host + 1, hl - 2);
            host[hl - 2] = 0;
        }
    } else snprintf(host, hostn, "127.0.0.1");
    char *end;
    errno = 0;
    long p = strtol(ps, &end, 10);
    if (!*ps || *end || errno || p < 0 || p > 65535)
        return loom_error(LOOM_EINVAL, "%s %.64s: the port must be a whole number in 0..65535", flag, s);
    *port = (int)p;
    return LOOM_OK;
}

/* ------------------------------------------------------------------ the plain server */

struct loom_dash_http {
    struct MHD_Daemon *d;
    loom_dash *board;
    uint8_t token_sha[32];
};

static void sha(const char *s, size_t n, uint8_t out[32]) {
    loom_sha256 h;
    loom_sha256_init(&h);
    loom_sha256_update(&h, s, n);
    loom_sha256_final(&h, out);
}

static int authorised(const loom_dash_http *h, const char *a) {
    if (!a || strncasecmp(a, "Bearer ", 7)) return 0;
    const char *tok = a + 7;
    while (*tok == ' ') tok++;
    size_t n = strlen(tok);
    while (n > 0 && (tok[n - 1] == ' ' || tok[n - 1] == '\t')) n--;
    uint8_t got[32], diff = 0;
    sha(tok, n, got);
    for (int i = 0; i < 32; i++) diff |= (uint8_t)(got[i] ^ h->token_sha[i]);
    return diff == 0;
}

static double now_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version, (void)upload;
    loom_dash_http *h = cls;
    if (!*con_cls) { /* the headers: the body (if any) follows */
        *con_cls = h;
        return MHD_YES;
    }
    if (*upload_size) { /* no endpoint takes a body */
        *upload_size = 0;
        return MHD_YES;
    }
    int status = 404;
    const char *ctype = "application/json";
    char *body = NULL;
    size_t len = 0;
    if (loom_dash_is_api(url) &&
        !authorised(h, MHD_lookup_connection_value(con, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION))) {
        status = 401;
        body = err_body("unauthorized", "missing or unknown token", &len);
    } else if (!loom_dash_route(h->board, method, url,
                                MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "since"), now_wall(), &status,
                                &ctype, &body, &len)) {
        status = 404;
        body = err_body("not_found", "no such page", &len);
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body ? body : (char *)"", body ? MHD_RESPMEM_MUST_FREE
                                                                                                   : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(resp, "Content-Security-Policy", "default-src 'self'; img-src 'self' data:");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (status == 401) MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"loom\"");
    enum MHD_Result ok = MHD_queue_response(con, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

int loom_dash_serve(loom_dash_http **out, loom_dash *board, const char *listen, const char *token, int *port) {
    *out = NULL;
    char host[256];
    int p;
    int rc = loom_dash_parse_listen(listen, "--serve", host, sizeof host, &p);
    if (rc != LOOM_OK) return rc;
    if (!token || strlen(token) < 16) return loom_error(LOOM_EINVAL, "the dashboard token must have at least 16 characters");
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int g = getaddrinfo(host, NULL, &hints, &res);
    if (g != 0 || !res) return loom_error(LOOM_EINVAL, "--serve %s: cannot resolve %s: %s", listen, host, gai_strerror(g));
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof sa);
    memcpy(&sa, res->ai_addr, res->ai_addrlen);
    int v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    if (v6) ((struct sockaddr_in6 *)&sa)->sin6_port = htons((uint16_t)p);
    else ((struct sockaddr_in *)&sa)->sin_port = htons((uint16_t)p);
    loom_dash_http *h = calloc(1, sizeof *h);
    if (!h) return loom_error(LOOM_ENOMEM, "out of memory");
    h->board = board;
    sha(token, strlen(token), h->token_sha);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | (v6 ? MHD_USE_IPv6 : 0);
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
                            MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return loom_error(LOOM_EIO, "--serve %s: cannot listen on %s port %d: %s", listen, host, p, strerror(errno));
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    if (port) *port = info ? (int)info->port : p;
    *out = h;
    return LOOM_OK;
}

void loom_dash_serve_stop(loom_dash_http *h) {
    if (!h) return;
    if (h->d) MHD_stop_daemon(h->d);
    free(h);
}
