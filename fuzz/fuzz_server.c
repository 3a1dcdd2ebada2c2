/* The server's request handler (src/net/server.c) without sockets: arbitrary methods, paths, tokens,
 * headers and bodies against a small run whose first round is open (two clients, dim 8). The input:
 *   byte 0  endpoint and method      byte 1  token (alice, bob, admin, unknown, none)
 *   byte 2  body mode: raw bytes, or a valid update of alice with the rest XORed into it
 *   then three length-prefixed strings (Idempotency-Key, Range, ?version=) and the body.
 * Every answer must be a status the protocol knows with a JSON error body (or the model). */
#include <jansson.h>

#include "fuzz_util.h"
#include "net/server_impl.h"

enum { FDIM = 8 };
static net_server *srv;
static char tok[3][65];
static float init[FDIM];
static uint8_t *valid;
static size_t valid_n;

static void setup(void) {
    const char *dir = fuzz_dir();
    char sd[128];
    snprintf(sd, sizeof sd, "%s/state", dir);
    if (loom_server_add_client(sd, "alice", 0, tok[0]) || loom_server_add_client(sd, "bob", 0, tok[1]) ||
        loom_server_add_client(sd, "root", 1, tok[2]))
        abort();
    static loom_server_config c;
    loom_server_defaults(&c);
    c.state_dir = strdup(sd);
    for (int i = 0; i < FDIM; i++) init[i] = 0.25f * (float)i;
    c.engine.dim = FDIM;
    c.engine.init = init;
    c.engine.rounds = 2;
    c.engine.pipe.strategy = "fedavg";
    c.engine.pipe.max_norm = 100;
    c.no_eval = 1;
    c.max_upload = 4096;
    if (net_server_create(&srv, &c) != LOOM_OK) abort();
    /* what the driver does when it opens round 1 */
    const int *list;
    int n;
    if (loom_engine_open_round(srv->eng, net_wall(), &list, &n) != LOOM_OK) abort();
    for (int i = 0; i < n; i++) srv->spos[list[i]] = i;
    srv->n_sampled = n;
    srv->round = 1;
    srv->opened_at = net_wall();
    srv->phase = NET_PH_FIT;
    float u[FDIM] = {0.1f, -0.2f, 0.3f, 0, 0, 0, 0, 1};
    loom_update up = {srv->run_id, 1, 0, 0, 5, 1.0, 10, LOOM_CODEC_F32, FDIM, u, NULL, 0};
    if (loom_update_encode(&up, NULL, &valid, &valid_n) != LOOM_OK) abort();
}

/* A length-prefixed string of at most 80 bytes (NULL for length 255). */
static const char *take(const uint8_t **p, size_t *n, char *buf) {
    if (*n < 1) return NULL;
    size_t len = (*p)[0];
    (*p)++, (*n)--;
    if (len == 255) return NULL;
    len %= 81;
    if (len > *n) len = *n;
    memcpy(buf, *p, len);
    buf[len] = 0;
    *p += len, *n -= len;
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (!srv) setup();
    if (n < 3) return 0;
    static const char *paths[] = {"/v1/hello", "/v1/task", "/v1/global", "/v1/update",
                                  "/v1/eval",  "/v1/fail", "/v1/status", "/v1/../etc"};
    static const char *methods[] = {"GET", "POST", "HEAD", "PUT"};
    net_request q;
    memset(&q, 0, sizeof q);
    q.path = paths[data[0] & 7];
    q.method = methods[(data[0] >> 3) & 3];
    char auth[128];
    int t = data[1] % 5;
    if (t < 3) snprintf(auth, sizeof auth, "Bearer %s", tok[t]);
    else snprintf(auth, sizeof auth, "Bearer %064d", 7);
    q.authorization = t < 4 ? auth : NULL;
    int mode = data[2] & 1;
    const uint8_t *p = data + 3;
    size_t left = n - 3;
    char key[96], range[96], ver[96];
    q.idem_key = take(&p, &left, key);
    q.range = take(&p, &left, range);
    q.version = take(&p, &left, ver);
    uint8_t *body = NULL;
    if (mode == 1) { /* a valid update with bytes flipped */
        body = malloc(valid_n);
        memcpy(body, valid, valid_n);
        for (size_t i = 0; i + 1 < left; i += 2) body[p[i] % valid_n] ^= p[i + 1];
        q.body = body;
        q.len = valid_n;
    } else {
        q.body = p;
        q.len = left;
    }
    net_response r;
    net_handle(srv, &q, &r);
    static const int known[] = {200, 206, 400, 401, 403, 404, 405, 409, 410, 412, 413, 416, 422, 503};
    int ok = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) ok |= r.status == known[i];
    fuzz_assert(ok);
    if (r.status >= 400) {
        json_t *j = json_loadb(r.body, r.len, 0, NULL);
        fuzz_assert(j && json_is_string(json_object_get(j, "error")) && json_is_string(json_object_get(j, "message")));
        json_decref(j);
    }
    if (r.blob) fuzz_assert(r.off + r.len <= r.blob->len);
    net_response_clear(srv, &r);
    free(body);
    return 0;
}
