/* Secure sums in the simulator: the holding area between the clients' updates and the engine
 * (lm_secure_*), and secure aggregation (include/loom/secagg.h) as a secure-sum backend
 * (loom_sim_secagg_backend). See include/loom/sim.h. */
#include "sim/sim_secure.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/secagg.h"

/* The clients that vanish after sending their masked input: (seed, hash2(this, round)). */
#define STREAM_SECAGG_DROP UINT64_C(0x73647270) /* "sdrp" */

/* ------------------------------------------------------------------ holding area */

typedef struct {
    loom_update u;  /* its metadata; u.values = v */
    float *v;       /* (dim) the clipped update */
    double now;
} held;

struct lm_secure_round {
    const loom_sim_config *c;
    pthread_mutex_t mu;
    held *h;        /* (n_clients) */
    int n, cap;
};

int lm_secure_create(lm_secure_round **out, const loom_sim_config *c, int n_clients) {
    *out = NULL;
    lm_secure_round *s = calloc(1, sizeof *s);
    if (!s || !(s->h = calloc((size_t)n_clients, sizeof *s->h))) {
        free(s);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    s->c = c;
    s->cap = n_clients;
    pthread_mutex_init(&s->mu, NULL);
    *out = s;
    return LOOM_OK;
}

static void clear(lm_secure_round *s) {
    for (int i = 0; i < s->n; i++) loom_free(s->h[i].v);
    s->n = 0;
}

void lm_secure_free(lm_secure_round *s) {
    if (!s) return;
    clear(s);
    free(s->h);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void lm_secure_hold(lm_secure_round *s, loom_engine *e, const loom_update *u, double now) {
    loom_update_verdict v;
    float *copy = NULL;
    if (loom_engine_check(e, u, now, &v) == LOOM_OK && (copy = loom_alloc(u->len * sizeof *copy)) != NULL) {
        double n2 = 0, clip = s->c->clip_norm, scale = 1;
        for (size_t i = 0; i < u->len; i++) n2 += (double)u->values[i] * u->values[i];
        if (clip > 0 && sqrt(n2) > clip) scale = clip / sqrt(n2);
        for (size_t i = 0; i < u->len; i++) copy[i] = (float)(u->values[i] * scale);
        pthread_mutex_lock(&s->mu);
        int room = s->n < s->cap;
        if (room) {
            held *h = &s->h[s->n++];
            h->u = *u;
            h->u.values = h->v = copy;
            h->now = now;
        }
        pthread_mutex_unlock(&s->mu);
        if (room) return;
        loom_free(copy);
    }
    loom_engine_submit(e, u, now, NULL); /* refused: the engine records the same verdict */
}

static int by_client(const void *a, const void *b) {
    const held *x = a, *y = b;
    return (x->u.client > y->u.client) - (x->u.client < y->u.client);
}

int lm_secure_finish(lm_secure_round *s, loom_engine *e, int round) {
    const loom_secure_sum *b = &s->c->secure;
    size_t n = (size_t)s->n, dim = s->c->dim;
    if (n == 0) return LOOM_OK;
    qsort(s->h, n, sizeof *s->h, by_client); /* the workers' order must not matter */
    const float **ups = malloc(n * sizeof *ups);
    uint64_t *w = malloc(n * sizeof *w), tw = 0;
    int *cl = malloc(n * sizeof *cl);
    double *bytes = calloc(n, sizeof *bytes), *sum = loom_alloc(dim * sizeof *sum), now = 0;
    loom_update *mem = malloc(n * sizeof *mem);
    int rc = LOOM_OK;
    if (!ups || !w || !cl || !bytes || !sum || !mem) rc = loom_error(LOOM_ENOMEM, "out of memory");
    for (size_t i = 0; rc == LOOM_OK && i < n; i++) {
        ups[i] = s->h[i].v;
        w[i] = s->h[i].u.examples;
        cl[i] = s->h[i].u.client;
        now = fmax(now, s->h[i].now);
    }
    if (rc == LOOM_OK) rc = b->sum(b->ud, round, dim, ups, w, cl, n, sum, &tw, bytes);
    if (rc == LOOM_OK) {
        for (size_t i = 0; i < n; i++) {
            mem[i] = s->h[i].u;
            mem[i].values = NULL;
            mem[i].wire_bytes = (uint64_t)bytes[i];
        }
        rc = loom_engine_submit_sum(e, round, sum, dim, tw, mem, n, now);
        if (rc != LOOM_OK) rc = loom_error_context(rc, "round %d: secure sum", round);
    } else {
        char why[512];
        snprintf(why, sizeof why, "%s: %s", b->name ? b->name : "secure sum", loom_errmsg());
        loom_log(LOOM_WARN, "round %d: %s; the round's updates are lost", round, why);
        rc = LOOM_OK;
        for (size_t i = 0; i < n && rc == LOOM_OK; i++) rc = loom_engine_fail(e, round, cl[i], why, s->h[i].now, NULL);
    }
    free(ups);
    free(w);
    free(cl);
    free(bytes);
    loom_free(sum);
    free(mem);
    clear(s);
    return rc;
}

/* ------------------------------------------------------------------ secure aggregation backend */

void loom_sim_secagg_defaults(loom_sim_secagg *s) {
    memset(s, 0, sizeof *s);
    s->clip = 1.0;
    s->max_weight = UINT64_C(1) << 20;
}

static void round_params(const loom_sim_secagg *s, uint32_t n, size_t dim, uint64_t round, loom_secagg_params *p) {
    loom_secagg_defaults(p, n, dim);
    p->neighbours = s->neighbours;
    uint32_t holders = s->neighbours ? s->neighbours + 1 : n;
    p->threshold = s->threshold ? s->threshold : 2 * holders / 3 + 1;
    p->clip = s->clip;
    p->max_weight = s->max_weight;
    p->seed = s->seed;
    p->round = round;
}

static int secagg_check(void *ud, int per_round) {
    const loom_sim_secagg *s = ud;
    uint32_t n = (uint32_t)per_round;
    if (per_round < 2 || n > LOOM_SECAGG_MAX_CLIENTS)
        return loom_error(LOOM_EINVAL, "--secagg needs 2 to %u clients a round (the run samples %d)",
                          LOOM_SECAGG_MAX_CLIENTS, per_round);
    if (s->neighbours && (s->neighbours % 2 || s->neighbours >= n - 1))
        return loom_error(LOOM_EINVAL, "--secagg-neighbours %u must be even and below %u (the clients of a round - 1)",
                          s->neighbours, n - 1);
    uint32_t holders = s->neighbours ? s->neighbours + 1 : n;
    if (s->threshold && (s->threshold > holders || 2 * s->threshold <= holders))
        return loom_error(LOOM_EINVAL, "--secagg-threshold %u must be above %u/2 and at most %u (%s)", s->threshold,
                          holders, holders, s->neighbours ? "the neighbours + 1" : "the clients of a round");
    loom_secagg_params p;
    round_params(s, n, 1, 0, &p);
    if (s->drop < 0 || (uint32_t)s->drop > n - p.threshold)
        return loom_error(LOOM_EINVAL, "--secagg-drop %d must be in [0, %u]: the threshold %u of the %u clients of a "
                          "round must answer", s->drop, n - p.threshold, p.threshold, n);
    if (!(s->clip > 0) || !isfinite(s->clip))
        return loom_error(LOOM_EINVAL, "--secagg-clip %g must be positive and finite", s->clip);
    int rc = loom_secagg_check(&p);
    if (rc) return loom_error_context(rc, "--secagg-clip %g", s->clip);
    return LOOM_OK;
}

static int secagg_sum(void *ud, int round, size_t dim, const float *const *updates, const uint64_t *weights,
                      const int *clients, size_t n, double *sum, uint64_t *total_weight, double *bytes_up) {
    const loom_sim_secagg *s = ud;
    if (n < 2) return loom_error(LOOM_EINVAL, "secure aggregation needs at least 2 updates, the round has %zu", n);
    loom_secagg_params p;
    round_params(s, (uint32_t)n, dim, (uint64_t)round, &p);
    if (p.neighbours >= p.n - 1) { /* too few clients this round for a sparse graph: the complete one */
        p.neighbours = 0;
        if (!s->threshold) p.threshold = 2 * p.n / 3 + 1;
    }
    if (p.threshold > p.n) return loom_error(LOOM_EINVAL, "--secagg-threshold %u is above the %zu updates", p.threshold, n);
    int rc = loom_secagg_check(&p);
    if (rc) return rc;
    /* who vanishes after sending its masked input */
    int *drop = calloc(n, sizeof *drop);
    uint32_t *perm = malloc(n * sizeof *perm);
    loom_secagg_client **cl = calloc(n, sizeof *cl);
    loom_secagg_buf *msg = calloc(n, sizeof *msg);
    int *crc = calloc(n, sizeof *crc);
    char (*why)[256] = calloc(n, sizeof *why);
    loom_secagg_server *srv = NULL;
    if (!drop || !perm || !cl || !msg || !crc || !why) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    size_t nd = (size_t)s->drop < n - p.threshold ? (size_t)s->drop : n - p.threshold;
    for (uint32_t i = 0; i < n; i++) perm[i] = i;
    loom_rng r;
    loom_rng_init(&r, s->seed, loom_hash2(STREAM_SECAGG_DROP, (uint64_t)round));
    loom_rng_shuffle_u32(&r, perm, (uint32_t)n);
    for (size_t i = 0; i < nd; i++) drop[perm[i]] = 1;
    if ((rc = loom_secagg_server_create(&srv, &p))) goto done;
    for (size_t i = 0; i < n && !rc; i++) { /* keys from (seed, round, client): the simulation is reproducible */
        uint8_t seed[32];
        uint64_t h = loom_hash2(loom_hash2(s->seed, (uint64_t)round), (uint64_t)clients[i]);
        for (int k = 0; k < 4; k++) {
            uint64_t v = loom_mix64(h + (uint64_t)k * 0x9e3779b97f4a7c15ull);
            for (int b = 0; b < 8; b++) seed[8 * k + b] = (uint8_t)(v >> (8 * b));
        }
        rc = loom_secagg_client_create(&cl[i], &p, (uint32_t)i, seed);
    }
    for (int ph = 0; ph < 4 && !rc; ph++) {
        /* the clients' side of the phase in parallel (each its own message), the server's in order */
#pragma omp parallel for schedule(dynamic, 1)
        for (size_t i = 0; i < n; i++) {
            crc[i] = LOOM_OK;
            msg[i].data = NULL;
            msg[i].len = 0;
            if (ph == 3 && drop[i]) continue;
            loom_secagg_buf in = {0};
            if (ph > 0) crc[i] = loom_secagg_server_message(srv, (loom_secagg_phase)(ph - 1), (uint32_t)i, &in);
            if (crc[i]) continue;
            if (ph == 0) crc[i] = loom_secagg_client_advertise(cl[i], &msg[i]);
            if (ph == 1) crc[i] = loom_secagg_client_share(cl[i], in.data, in.len, &msg[i]);
            if (ph == 2) crc[i] = loom_secagg_client_mask(cl[i], in.data, in.len, updates[i], weights[i], &msg[i]);
            if (ph == 3) crc[i] = loom_secagg_client_unmask(cl[i], in.data, in.len, &msg[i]);
            loom_secagg_buf_free(&in);
            if (crc[i]) snprintf(why[i], sizeof why[i], "%s", loom_errmsg());
        }
        for (size_t i = 0; i < n && !rc; i++) {
            if (ph == 3 && drop[i]) continue;
            if (crc[i]) rc = loom_error(crc[i], "client %d, %s phase: %s", clients[i],
                                        ph == 0 ? "advertise" : ph == 1 ? "share" : ph == 2 ? "mask" : "unmask", why[i]);
            else rc = loom_secagg_server_receive(srv, (loom_secagg_phase)ph, (uint32_t)i, msg[i].data, msg[i].len);
            bytes_up[i] += (double)msg[i].len;
        }
        for (size_t i = 0; i < n; i++) loom_secagg_buf_free(&msg[i]);
        if (!rc) rc = loom_secagg_server_close(srv, (loom_secagg_phase)ph);
    }
    uint32_t nin = 0;
    if (!rc) rc = loom_secagg_server_result(srv, sum, total_weight, &nin, NULL);
    if (!rc && nin != n) rc = loom_error(LOOM_ESTATE, "secure aggregation: %u of the %zu updates in the sum", nin, n);
    if (!rc && nd)
        loom_log(LOOM_INFO, "round %d: %zu clients vanished after their masked input; their self-masks were removed "
                 "through the others' shares", round, nd);
done:
    for (size_t i = 0; cl && i < n; i++) loom_secagg_client_free(cl[i]);
    loom_secagg_server_free(srv);
    free(cl);
    free(msg);
    free(crc);
    free(why);
    free(drop);
    free(perm);
    return rc;
}

loom_secure_sum loom_sim_secagg_backend(loom_sim_secagg *s) {
    loom_secure_sum b = {"secure aggregation", secagg_check, secagg_sum, s};
    return b;
}
