/* The update pipeline's fixed-point aggregate, the round engine's protocol and the update message:
 *  - any arrival order (and concurrent submission from threads) gives the same bits
 *  - the fixed-point mean is within its stated bound of a high-precision reference, and within the
 *    combined bound of a double running sum
 *  - the range limits hold exactly at the edges and refuse (not wrap) past them
 *  - clipping, the noise slot, refusals with reasons, quorum, deadline, failures, min-updates,
 *    evaluation hand-out, restore
 *  - the update message round-trips and refuses malformed buffers with clear errors */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/engine.h"
#include "loom/pipeline.h"
#include "loom/safetensors.h"
#include "loom/update.h"
#include "test.h"

static loom_pipeline *make_pipe(const char *strategy, size_t dim, double max_norm, double clip) {
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, dim);
    pc.strategy = strategy;
    loom_strategy_defaults(strategy, &pc.sp);
    pc.max_norm = max_norm;
    pc.clip_norm = clip;
    loom_pipeline *p = NULL;
    int rc = loom_pipeline_create(&p, &pc);
    CHECK(rc == LOOM_OK && p, "pipeline %s: %s", strategy, loom_errmsg());
    return p;
}

/* ---- order independence and accuracy of the fixed-point mean ---- */

enum { OD = 1000, ON = 37 };

static void shuffled_orders_identical(void) {
    loom_rng r;
    loom_rng_init(&r, 42, 1);
    static float u[ON][OD];
    double w[ON];
    for (int n = 0; n < ON; n++) {
        /* magnitudes from 1e-6 to 10, both signs, so that a double sum does depend on the order */
        double scale = pow(10.0, -6.0 + 7.0 * loom_rng_uniform(&r));
        for (int i = 0; i < OD; i++) u[n][i] = (float)(scale * loom_rng_normal(&r));
        w[n] = 1 + (double)loom_rng_below(&r, 5000);
    }
    float x0[OD], ref_x[OD];
    for (int i = 0; i < OD; i++) x0[i] = (float)loom_rng_normal(&r);
    int perm[ON];
    double *dbl_first = malloc(OD * sizeof *dbl_first);
    int dbl_differs = 0;
    for (int t = 0; t < 6; t++) {
        for (int n = 0; n < ON; n++) perm[n] = n;
        if (t == 1)
            for (int n = 0; n < ON; n++) perm[n] = ON - 1 - n; /* reversed */
        if (t >= 2)
            for (int n = ON - 1; n > 0; n--) {
                int j = (int)loom_rng_below(&r, (uint32_t)(n + 1)), tmp = perm[n];
                perm[n] = perm[j];
                perm[j] = tmp;
            }
        loom_pipeline *p = make_pipe("fedavg", OD, 0, 0);
        float x[OD];
        memcpy(x, x0, sizeof x);
        CHECK_OK(loom_pipeline_begin_round(p, 1));
        for (int n = 0; n < ON; n++) CHECK_OK(loom_pipeline_add(p, u[perm[n]], OD, w[perm[n]], NULL, NULL, NULL));
        CHECK_OK(loom_pipeline_end_round(p, x));
        if (t == 0) memcpy(ref_x, x, sizeof x);
        else CHECK(memcmp(x, ref_x, sizeof x) == 0, "arrival order %d gives other bits", t);
        loom_pipeline_free(p);
        /* the double running sum in the same order (what the strategy did before) */
        double W = 0;
        for (int n = 0; n < ON; n++) W += w[n];
        for (int i = 0; i < OD; i++) {
            double s = 0;
            for (int n = 0; n < ON; n++) s += w[perm[n]] * (double)u[perm[n]][i];
            if (t == 0) dbl_first[i] = s / W;
            else dbl_differs |= s / W != dbl_first[i];
        }
    }
    CHECK(dbl_differs, "the data are hard enough that a double sum depends on the order");
    free(dbl_first);
}

typedef struct {
    double *copy;
    size_t dim;
    uint64_t W;
    size_t n;
    int round, calls;
    double add;
} noise_probe;

static int probe(void *ud, double *mean, size_t dim, uint64_t W, size_t n, int round) {
    noise_probe *q = ud;
    memcpy(q->copy, mean, dim * sizeof *mean);
    q->dim = dim;
    q->W = W;
    q->n = n;
    q->round = round;
    q->calls++;
    for (size_t i = 0; i < dim; i++) mean[i] += q->add;
    return LOOM_OK;
}

static void accuracy_bounds(void) {
    enum { D = 2000, N = 50 };
    loom_rng r;
    loom_rng_init(&r, 7, 2);
    float *u = malloc((size_t)N * D * sizeof *u);
    double w[N];
    for (int n = 0; n < N; n++) {
        double scale = pow(10.0, -5.0 + 6.0 * loom_rng_uniform(&r));
        for (int i = 0; i < D; i++) u[(size_t)n * D + i] = (float)(scale * loom_rng_normal(&r));
        w[n] = 1 + (double)loom_rng_below(&r, 100000);
    }
    noise_probe q = {malloc(D * sizeof(double)), 0, 0, 0, 0, 0, 0.0};
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, D);
    pc.noise = probe;
    pc.noise_ud = &q;
    loom_pipeline *p;
    CHECK_OK(loom_pipeline_create(&p, &pc));
    float *x = calloc(D, sizeof *x);
    CHECK_OK(loom_pipeline_begin_round(p, 3));
    for (int n = 0; n < N; n++) CHECK_OK(loom_pipeline_add(p, u + (size_t)n * D, D, w[n], NULL, NULL, NULL));
    CHECK_OK(loom_pipeline_end_round(p, x));
    uint64_t Wi = 0;
    for (int n = 0; n < N; n++) Wi += (uint64_t)w[n];
    CHECK(q.calls == 1 && q.W == Wi && q.n == N && q.round == 3 && q.dim == D,
          "noise stage called once with W %llu n %zu round %d", (unsigned long long)q.W, q.n, q.round);
    double worst_ref = 0, worst_dbl = 0;
    int ok_ref = 1, ok_dbl = 1;
    for (int i = 0; i < D; i++) {
        long double s = 0; /* 64-bit mantissa: error ~ N 2^-64, negligible against 2^-49 */
        double sd = 0, sa = 0;
        for (int n = 0; n < N; n++) {
            s += (long double)w[n] * u[(size_t)n * D + i];
            sd += w[n] * (double)u[(size_t)n * D + i];
            sa += w[n] * fabs((double)u[(size_t)n * D + i]);
        }
        double m = (double)(s / (long double)Wi), md = sd / (double)Wi, fx = q.copy[i];
        /* stated bound: |Delta - m| <= 2^-49 + 2^-52 |m| (plus the reference's own error) */
        double bound_ref = ldexp(1, -49) + ldexp(1, -52) * fabs(m) + ldexp(1, -60) * sa / Wi;
        /* against a double running sum: add its error (n + 1) 2^-53 sum w|u| / W */
        double bound_dbl = bound_ref + (N + 1) * ldexp(1, -53) * sa / Wi;
        worst_ref = fmax(worst_ref, fabs(fx - m) / bound_ref);
        worst_dbl = fmax(worst_dbl, fabs(fx - md) / bound_dbl);
        ok_ref &= fabs(fx - m) <= bound_ref;
        ok_dbl &= fabs(fx - md) <= bound_dbl;
    }
    CHECK(ok_ref, "fixed-point mean within 2^-49 + 2^-52|m| of the exact mean (worst %.3g of the bound)", worst_ref);
    CHECK(ok_dbl, "fixed-point mean within the stated bound of a double sum (worst %.3g of the bound)", worst_dbl);
    /* the global vector moved from 0 by the mean, rounded to float */
    int moved = 1;
    for (int i = 0; i < D; i++) moved &= x[i] == (float)q.copy[i];
    CHECK(moved, "fedavg with server_lr 1 from 0 writes the mean");
    /* the noise stage's change reaches the optimizer: +0.5 on every coordinate */
    q.add = 0.5;
    float y[4] = {0, 0, 0, 0};
    loom_pipeline_free(p);
    pc.dim = 4;
    CHECK_OK(loom_pipeline_create(&p, &pc));
    const float z[4] = {0, 0, 0, 0};
    const float *ups[1] = {z};
    const double ws[1] = {3};
    CHECK_OK(loom_pipeline_aggregate(p, y, ups, ws, NULL, 1));
    CHECK(y[0] == 0.5f && y[3] == 0.5f, "noise added 0.5 to the mean: [%g %g]", y[0], y[3]);
    loom_pipeline_free(p);
    free(q.copy);
    free(x);
    free(u);
}

/* ---- the range limits, clipping and refusals ---- */

static void limits_and_clipping(void) {
    enum { D = 3 };
    loom_pipeline *p = make_pipe("fedavg", D, 0, 0);
    loom_update_verdict v;
    /* At the edge: 200 updates of +-2^20 with the largest weight. The exact sums are
     * +-200 * (2^32-1) * 2^68 (< 2^128 would wrap a 128-bit integer with fewer guard bits): the mean
     * must be exactly +-2^20 and exactly 0 for a balanced coordinate. */
    const float hi[D] = {1048576.0f, -1048576.0f, 1048576.0f}, lo[D] = {1048576.0f, -1048576.0f, -1048576.0f};
    float x[D] = {0, 0, 0};
    CHECK_OK(loom_pipeline_begin_round(p, 1));
    for (int k = 0; k < 100; k++) {
        CHECK_OK(loom_pipeline_add(p, hi, D, LOOM_FX_MAX_WEIGHT, NULL, &v, NULL));
        CHECK_OK(loom_pipeline_add(p, lo, D, LOOM_FX_MAX_WEIGHT, NULL, &v, NULL));
    }
    CHECK(loom_pipeline_total_weight(p) == 200ull * 4294967295ull, "total weight %llu",
          (unsigned long long)loom_pipeline_total_weight(p));
    CHECK_OK(loom_pipeline_end_round(p, x));
    CHECK(x[0] == 1048576.0f && x[1] == -1048576.0f && x[2] == 0.0f, "edge mean [%g %g %g]", x[0], x[1], x[2]);
    /* past the edge: refused with a reason, nothing added */
    const float over[D] = {2097152.0f, 0, 0};
    CHECK_OK(loom_pipeline_begin_round(p, 2));
    CHECK(loom_pipeline_add(p, over, D, 1, NULL, &v, NULL) == LOOM_ERANGE && v == LOOM_UPDATE_OUT_OF_RANGE,
          "value 2^21 refused (verdict %d)", v);
    CHECK(strstr(loom_errmsg(), "fixed-point range"), "message: %s", loom_errmsg());
    CHECK(strcmp(loom_update_verdict_str(v), "value out of fixed-point range") == 0, "verdict text");
    const float one[D] = {1, 2, 3};
    CHECK(loom_pipeline_add(p, one, D, 2.5, NULL, &v, NULL) == LOOM_EINVAL && v == LOOM_UPDATE_BAD_WEIGHT,
          "fractional weight refused");
    CHECK(strstr(loom_errmsg(), "whole number"), "message: %s", loom_errmsg());
    CHECK(loom_pipeline_add(p, one, D, 4294967296.0, NULL, &v, NULL) == LOOM_EINVAL && v == LOOM_UPDATE_BAD_WEIGHT,
          "weight 2^32 refused");
    CHECK(loom_pipeline_add(p, one, D, 0, NULL, &v, NULL) == LOOM_EINVAL, "weight 0 refused");
    CHECK(loom_pipeline_num_added(p) == 0, "refused updates are not counted");
    /* the smallest values: 2^-49 rounds to even (0), 3 * 2^-49 to 2^-47 (2 * 2^-48): exactly representable */
    const float tiny[D] = {(float)ldexp(1, -49), (float)ldexp(3, -49), (float)ldexp(1, -48)};
    CHECK_OK(loom_pipeline_add(p, tiny, D, 1, NULL, &v, NULL));
    float t[D] = {0, 0, 0};
    CHECK_OK(loom_pipeline_end_round(p, t));
    CHECK(t[0] == 0.0f && t[1] == (float)ldexp(1, -47) && t[2] == (float)ldexp(1, -48),
          "rounding to 2^-48: [%g %g %g]", t[0], t[1], t[2]);
    loom_pipeline_free(p);

    /* clipping: [6, 8] (norm 10) clipped to norm 5 is [3, 4]; [0.3, 0.4] (norm 0.5) passes as is.
     * Weights 1 and 1: mean [1.65, 2.2]. */
    p = make_pipe("fedavg", 2, 0, 5.0);
    float y[2] = {0, 0};
    const float big[2] = {6, 8}, small[2] = {0.3f, 0.4f};
    double norm;
    CHECK_OK(loom_pipeline_begin_round(p, 1));
    CHECK_OK(loom_pipeline_add(p, big, 2, 1, NULL, &v, &norm));
    CHECK(norm == 10.0, "norm before clipping %g", norm);
    CHECK_OK(loom_pipeline_add(p, small, 2, 1, NULL, &v, NULL));
    CHECK_OK(loom_pipeline_end_round(p, y));
    CHECK_NEAR(y[0], (3.0 + (double)0.3f) / 2, 1e-7);
    CHECK_NEAR(y[1], (4.0 + (double)0.4f) / 2, 1e-7);
    loom_pipeline_free(p);
    /* clipping makes an out-of-range update usable: 2^21 clipped to norm 1 is 1 */
    p = make_pipe("fedavg", D, 0, 1.0);
    float z[D] = {0, 0, 0};
    CHECK_OK(loom_pipeline_begin_round(p, 1));
    CHECK_OK(loom_pipeline_add(p, over, D, 1, NULL, &v, NULL));
    CHECK_OK(loom_pipeline_end_round(p, z));
    CHECK(z[0] == 1.0f && z[1] == 0.0f, "clipped to [%g %g]", z[0], z[1]);
    loom_pipeline_free(p);

    /* configuration errors name the flag */
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, 4);
    pc.max_norm = -1;
    CHECK(loom_pipeline_create(&p, &pc) == LOOM_EINVAL && strstr(loom_errmsg(), "--max-update-norm"),
          "negative bound refused: %s", loom_errmsg());
    pc.max_norm = 0;
    pc.clip_norm = NAN;
    CHECK(loom_pipeline_create(&p, &pc) == LOOM_EINVAL && strstr(loom_errmsg(), "clip"), "NaN clip refused: %s",
          loom_errmsg());
}

/* ---- concurrent submission ---- */

typedef struct {
    loom_pipeline *p;
    const float *u;
    size_t dim;
    int first, step, n;
} adder;

static void *add_some(void *arg) {
    adder *a = arg;
    for (int k = a->first; k < a->n; k += a->step)
        loom_pipeline_add(a->p, a->u + (size_t)k * a->dim, a->dim, 1 + k, NULL, NULL, NULL);
    return NULL;
}

static void concurrent_adds(void) {
    enum { D = 70000, N = 12, T = 4 }; /* D above the parallel threshold of the element loops */
    float *u = malloc((size_t)N * D * sizeof *u);
    loom_rng r;
    loom_rng_init(&r, 3, 3);
    for (size_t i = 0; i < (size_t)N * D; i++) u[i] = (float)(0.01 * loom_rng_normal(&r));
    float *a = calloc(D, sizeof *a), *b = calloc(D, sizeof *b);
    loom_pipeline *p = make_pipe("fedadam", D, 0, 0);
    CHECK_OK(loom_pipeline_begin_round(p, 1));
    for (int k = N - 1; k >= 0; k--) CHECK_OK(loom_pipeline_add(p, u + (size_t)k * D, D, 1 + k, NULL, NULL, NULL));
    CHECK_OK(loom_pipeline_end_round(p, a));
    loom_pipeline_free(p);
    p = make_pipe("fedadam", D, 0, 0);
    CHECK_OK(loom_pipeline_begin_round(p, 1));
    pthread_t th[T];
    adder ad[T];
    for (int t = 0; t < T; t++) {
        ad[t] = (adder){p, u, D, t, T, N};
        pthread_create(&th[t], NULL, add_some, &ad[t]);
    }
    for (int t = 0; t < T; t++) pthread_join(th[t], NULL);
    CHECK(loom_pipeline_num_added(p) == N, "all %d concurrent adds counted (%zu)", N, loom_pipeline_num_added(p));
    CHECK_OK(loom_pipeline_end_round(p, b));
    CHECK(memcmp(a, b, D * sizeof *a) == 0, "4 threads adding at once give the bits of one thread in reverse order");
    loom_pipeline_free(p);
    free(a);
    free(b);
    free(u);
}

/* ---- the round engine ---- */

typedef struct {
    int rounds, clients;
    loom_round_metrics last;
    char status[16][40];
    int row_client[16];
} sink_log;

static void log_round(void *ud, const loom_round_metrics *m, const int *c, int n) {
    sink_log *s = ud;
    s->rounds++;
    s->last = *m;
    s->clients = 0;
    (void)c;
    (void)n;
}

static void log_client(void *ud, const loom_client_row *r) {
    sink_log *s = ud;
    if (s->clients < 16) {
        snprintf(s->status[s->clients], sizeof s->status[0], "%s", r->status);
        s->row_client[s->clients] = r->client;
    }
    s->clients++;
}

static loom_update upd(int round, int client, const float *v, size_t len, uint64_t ex) {
    loom_update u = {0, round, (uint64_t)(round - 1), client, ex, 1.5, 10, LOOM_CODEC_F32, len, v, NULL, 0};
    return u;
}

static const char *status_of(const sink_log *s, int client) {
    for (int i = 0; i < s->clients && i < 16; i++)
        if (s->row_client[i] == client) return s->status[i];
    return "(no row)";
}

static void engine_protocol(void) {
    enum { D = 2, N = 6 };
    const float init[D] = {1, 1};
    size_t n_test[N] = {3, 0, 3, 3, 3, 3};
    sink_log log;
    memset(&log, 0, sizeof log);
    loom_engine_config c;
    loom_engine_defaults(&c);
    c.dim = D;
    c.init = init;
    c.n_clients = N;
    c.n_test = n_test;
    c.rounds = 3;
    c.sample = 4;
    c.seed = 11;
    c.deadline = 10;
    c.eval_every = 2;
    c.eval_clients = 2;
    c.sink = (loom_metrics_sink){log_round, log_client, &log};
    loom_engine *e;
    CHECK_OK(loom_engine_create(&e, &c));
    const int *cl;
    int n;
    CHECK_OK(loom_engine_open_round(e, 100.0, &cl, &n));
    CHECK(n == 4, "4 sampled (%d)", n);
    int want[N], wn;
    CHECK_OK(loom_engine_sample(N, 4, 0, 11, 0, want, &wn));
    CHECK(wn == 4 && memcmp(cl, want, 4 * sizeof(int)) == 0, "sampling is loom_engine_sample's");
    for (int i = 1; i < n; i++) CHECK(cl[i - 1] < cl[i], "sorted");
    int out = -1;
    for (int k = 0; k < N && out < 0; k++) {
        int in = 0;
        for (int i = 0; i < n; i++) in |= cl[i] == k;
        if (!in) out = k;
    }
    loom_task t;
    CHECK_OK(loom_engine_task(e, &t));
    CHECK(t.round == 1 && t.version == 0 && t.global[0] == 1.0f, "task of round %d", t.round);
    const float a[D] = {1, 3}, b[D] = {3, -1}, bad[D] = {NAN, 0};
    loom_update_verdict v;
    /* client cl[0]: accepted, weight 1; cl[1]: accepted, weight 3 */
    loom_update u = upd(1, cl[0], a, D, 1);
    CHECK_OK(loom_engine_submit(e, &u, 101.0, &v));
    CHECK(loom_engine_submit(e, &u, 101.5, &v) != LOOM_OK && v == LOOM_UPDATE_DUPLICATE, "duplicate refused");
    CHECK(strstr(loom_errmsg(), "already"), "message: %s", loom_errmsg());
    u = upd(1, out, a, D, 1);
    CHECK(loom_engine_submit(e, &u, 101.0, &v) != LOOM_OK && v == LOOM_UPDATE_NOT_SAMPLED, "unsampled refused");
    CHECK(strstr(loom_errmsg(), "not sampled"), "message: %s", loom_errmsg());
    u = upd(2, cl[1], b, D, 3);
    CHECK(loom_engine_submit(e, &u, 101.0, &v) != LOOM_OK && v == LOOM_UPDATE_WRONG_ROUND, "wrong round refused");
    CHECK(!loom_engine_ready(e, 105.0), "not ready: 1 of 4 answered");
    u = upd(1, cl[1], b, D, 3);
    CHECK_OK(loom_engine_submit(e, &u, 109.9, &v));
    /* cl[2]: NaN; cl[3]: too late (deadline 10 s after 100) */
    u = upd(1, cl[2], bad, D, 2);
    CHECK(loom_engine_submit(e, &u, 102.0, &v) == LOOM_ERANGE && v == LOOM_UPDATE_NONFINITE, "NaN refused");
    CHECK(!loom_engine_ready(e, 109.0), "not ready before the deadline");
    CHECK(loom_engine_ready(e, 110.0), "ready at the deadline");
    u = upd(1, cl[3], a, D, 5);
    CHECK(loom_engine_submit(e, &u, 110.5, &v) != LOOM_OK && v == LOOM_UPDATE_LATE, "late refused");
    CHECK(strstr(loom_errmsg(), "deadline"), "message: %s", loom_errmsg());
    CHECK_OK(loom_engine_close_round(e, 110.0));
    /* after close everything is late */
    u = upd(1, cl[3], a, D, 5);
    CHECK(loom_engine_submit(e, &u, 110.0, &v) != LOOM_OK && v == LOOM_UPDATE_LATE, "after close: late");
    /* x = 1 + (1 * a + 3 * b) / 4 = 1 + [10/4, 0] = [3.5, 1] */
    const float *g = loom_engine_global(e);
    CHECK(g[0] == 3.5f && g[1] == 1.0f, "aggregate [%g %g], want [3.5 1]", g[0], g[1]);
    const int *el;
    int ne;
    CHECK_OK(loom_engine_eval_plan(e, &el, &ne));
    CHECK(ne == 0, "round 1 does not evaluate (every 2)");
    CHECK_OK(loom_engine_end_round(e, 0.25, NULL));
    CHECK(log.rounds == 1 && log.clients == 4, "sink: %d round rows, %d client rows", log.rounds, log.clients);
    CHECK(log.last.sampled == 4 && log.last.accepted == 2 && log.last.rejected == 2 && log.last.aggregated,
          "round metrics %d/%d/%d", log.last.sampled, log.last.accepted, log.last.rejected);
    CHECK_NEAR(log.last.train_loss, 1.5, 1e-12);
    CHECK(!strcmp(status_of(&log, cl[0]), "accepted") && !strcmp(status_of(&log, cl[2]), "non-finite value") &&
              !strcmp(status_of(&log, cl[3]), "late"),
          "rows: %s, %s, %s", status_of(&log, cl[0]), status_of(&log, cl[2]), status_of(&log, cl[3]));

    /* round 2: a failure, a missing client, quorum; min_updates 1 */
    CHECK_OK(loom_engine_open_round(e, 200.0, &cl, &n));
    CHECK(loom_engine_fail(e, 2, cl[0], "out of memory", 201.0, &v) == LOOM_OK && v == LOOM_UPDATE_CLIENT_FAILED,
          "failure recorded");
    CHECK(loom_engine_fail(e, 2, cl[0], "again", 201.0, &v) != LOOM_OK && v == LOOM_UPDATE_DUPLICATE,
          "a second report is a duplicate");
    u = upd(2, cl[1], a, D, 1);
    CHECK_OK(loom_engine_submit(e, &u, 201.0, &v));
    CHECK_OK(loom_engine_close_round(e, 202.0)); /* cl[2], cl[3] never answer */
    CHECK_OK(loom_engine_eval_plan(e, &el, &ne));
    CHECK(ne == 2, "round 2 evaluates 2 clients (%d)", ne);
    for (int i = 0; i < ne; i++) CHECK(n_test[el[i]] > 0, "evaluates only clients with test data");
    loom_eval_result er = {2.0, 4, 3, 4, 0, 0};
    CHECK_OK(loom_engine_eval_submit(e, el[0], &er));
    CHECK(loom_engine_eval_submit(e, el[0], &er) != LOOM_OK, "evaluation twice refused");
    loom_eval_result er2 = {6.0, 4, 1, 4, 0, 0};
    CHECK_OK(loom_engine_eval_submit(e, el[1], &er2));
    CHECK(loom_engine_eval_submit(e, 1, &er2) != LOOM_OK, "a client not asked to evaluate is refused");
    loom_round_metrics m;
    CHECK_OK(loom_engine_end_round(e, 0, &m));
    CHECK(!strcmp(status_of(&log, cl[0]), "client failure") && !strcmp(status_of(&log, cl[2]), "no update"),
          "rows: %s, %s", status_of(&log, cl[0]), status_of(&log, cl[2]));
    /* pooled: loss (2 + 6) / 8 = 1, accuracy 4 / 8; per client 0.5 and 1.5 (mean 1, std 0.5) */
    CHECK(m.evaluated == 2, "evaluated %d", m.evaluated);
    CHECK_NEAR(m.eval_loss, 1.0, 1e-12);
    CHECK_NEAR(m.eval_acc, 0.5, 1e-12);
    CHECK_NEAR(m.eval_loss_std, 0.5, 1e-12);
    CHECK_NEAR(m.bytes_up, 1 * D * 4.0, 1e-9);
    CHECK(m.accepted == 1 && m.rejected == 3, "round 2: %d accepted", m.accepted);

    /* round 3: nobody succeeds, the model stays; then all rounds are done */
    float before[D];
    memcpy(before, loom_engine_global(e), sizeof before);
    CHECK_OK(loom_engine_open_round(e, 300.0, &cl, &n));
    CHECK_OK(loom_engine_close_round(e, 300.0));
    CHECK(memcmp(before, loom_engine_global(e), sizeof before) == 0, "a round without updates keeps the model");
    CHECK_OK(loom_engine_end_round(e, 0, &m));
    CHECK(!m.aggregated && m.accepted == 0, "round 3 not aggregated");
    CHECK(loom_engine_open_round(e, 400.0, &cl, &n) == LOOM_ESTATE, "all rounds done");
    loom_engine_free(e);

    /* quorum: ready after 2 accepted of 4; restore continues at a given round */
    c.deadline = 0;
    c.quorum = 2;
    c.sink = (loom_metrics_sink){0};
    CHECK_OK(loom_engine_create(&e, &c));
    CHECK_OK(loom_engine_restore(e, 2));
    CHECK_OK(loom_engine_open_round(e, 0, &cl, &n));
    CHECK_OK(loom_engine_task(e, &t));
    CHECK(t.round == 3, "restored engine opens round 3 (%d)", t.round);
    u = upd(3, cl[0], bad, D, 1);
    CHECK(loom_engine_submit(e, &u, 1, &v) != LOOM_OK, "NaN refused");
    u = upd(3, cl[1], a, D, 1);
    CHECK_OK(loom_engine_submit(e, &u, 1, &v));
    CHECK(!loom_engine_ready(e, 1e9), "no deadline: two answers but one accepted is not a quorum of 2");
    u = upd(3, cl[2], a, D, 1);
    CHECK_OK(loom_engine_submit(e, &u, 2, &v));
    CHECK(loom_engine_ready(e, 2), "quorum of 2 accepted reached");
    loom_engine_free(e);

    /* configuration errors name the flag */
    c.quorum = 0;
    c.pipe.max_norm = -1;
    CHECK(loom_engine_create(&e, &c) == LOOM_EINVAL && strstr(loom_errmsg(), "--max-update-norm"), "%s",
          loom_errmsg());
    c.pipe.max_norm = 0;
    c.sample = 7;
    CHECK(loom_engine_create(&e, &c) == LOOM_EINVAL && strstr(loom_errmsg(), "--sample"), "%s", loom_errmsg());
}

/* ---- the update message ---- */

static void update_message(void) {
    const float v[3] = {1.5f, -2.25f, 1e-20f}, dc[3] = {0.5f, 0, -1};
    loom_update u = {0xabcdef0123ULL, 7, 6, 42, 1234, 2.75, 999, LOOM_CODEC_F32, 3, v, dc, 0};
    uint8_t *buf;
    size_t n;
    CHECK_OK(loom_update_encode(&u, NULL, &buf, &n));
    CHECK(n == loom_update_encoded_size(&u, NULL), "encoded size %zu, announced %zu", n,
          loom_update_encoded_size(&u, NULL));
    /* a safetensors file read by the general reader: the metadata and tensors of docs/protocol.md */
    loom_st_file *f;
    CHECK_OK(loom_st_open_memory(&f, buf, n, "upload"));
    CHECK(loom_st_meta(f, "round") && !strcmp(loom_st_meta(f, "round"), "7") && !strcmp(loom_st_meta(f, "client"), "42") &&
              !strcmp(loom_st_meta(f, "run_id"), "000000abcdef0123") && !strcmp(loom_st_meta(f, "codec"), "f32") &&
              !strcmp(loom_st_meta(f, "dim"), "3") && !strcmp(loom_st_meta(f, "loom_update"), "1"),
          "metadata");
    const loom_st_tensor *tu = loom_st_find(f, "update"), *tc = loom_st_find(f, "control");
    CHECK(tu && tc && tu->dtype == LOOM_DT_F32 && tu->numel == 3 && loom_st_count(f) == 2, "tensors");
    float back[3];
    CHECK(tu && loom_st_to_f32(tu, back, 3) == LOOM_OK && !memcmp(back, v, sizeof back), "update tensor bytes");
    loom_st_close(f);
    float vals[3], ctl[3];
    loom_update d;
    CHECK_OK(loom_update_decode(buf, n, 3, &d, vals, ctl));
    CHECK(d.run_id == u.run_id && d.round == 7 && d.version == 6 && d.client == 42 && d.examples == 1234 &&
              d.loss == 2.75 && d.tokens == 999 && d.len == 3 && d.codec == LOOM_CODEC_F32 && d.wire_bytes == n,
          "fields round-trip");
    CHECK(!memcmp(vals, v, sizeof vals) && d.control && !memcmp(ctl, dc, sizeof ctl), "payload round-trips");
    CHECK(loom_update_decode(buf, n, 2, &d, vals, ctl) == LOOM_ERANGE && strstr(loom_errmsg(), "limit"),
          "over the size limit: %s", loom_errmsg());
    CHECK(loom_update_decode(buf, n - 1, 3, &d, vals, ctl) == LOOM_EFORMAT && strstr(loom_errmsg(), "not a safetensors"),
          "truncated: %s", loom_errmsg());
    CHECK(loom_update_decode(buf, 10, 3, &d, vals, ctl) == LOOM_EFORMAT && strstr(loom_errmsg(), "header"),
          "shorter than its header: %s", loom_errmsg());
    CHECK(loom_update_decode(buf, n, 3, &d, vals, NULL) == LOOM_EFORMAT && strstr(loom_errmsg(), "control"),
          "unexpected control delta: %s", loom_errmsg());
    free(buf);
    /* a message written by the general writer with an unknown codec, a future format, no metadata */
    const char *cases[][3] = {{"codec", "bf16", "codec 'bf16'"},
                              {"loom_update", "2", "format 2"},
                              {"client", "2147483648", "client"}};
    for (int c = 0; c < 3; c++) {
        loom_st_writer *w;
        CHECK_OK(loom_st_writer_create(&w));
        const char *kv[][2] = {{"loom_update", "1"}, {"run_id", "1"}, {"round", "1"},   {"version", "0"},
                               {"client", "0"},      {"examples", "1"}, {"loss", "1"}, {"tokens", "0"},
                               {"codec", "f32"},     {"dim", "3"}};
        for (int i = 0; i < 10; i++) loom_st_writer_meta(w, kv[i][0], kv[i][1]);
        loom_st_writer_meta(w, cases[c][0], cases[c][1]);
        int64_t sh[1] = {3};
        loom_st_writer_add_f32(w, "update", LOOM_DT_F32, 1, sh, v);
        void *b;
        size_t bn;
        CHECK_OK(loom_st_writer_serialize(w, &b, &bn));
        int rc = loom_update_decode(b, bn, 3, &d, vals, ctl);
        CHECK(rc == (c == 0 ? LOOM_EUNSUPPORTED : LOOM_EFORMAT) && strstr(loom_errmsg(), cases[c][2]), "%s: %s",
              cases[c][2], loom_errmsg());
        loom_free(b);
        loom_st_writer_free(w);
    }
    /* a huge announced dim is refused before anything is read */
    loom_st_writer *w;
    CHECK_OK(loom_st_writer_create(&w));
    const char *kv[][2] = {{"loom_update", "1"}, {"run_id", "1"},  {"round", "1"}, {"version", "0"},
                           {"client", "0"},      {"examples", "1"}, {"loss", "1"}, {"tokens", "0"},
                           {"codec", "f32"},     {"dim", "18446744073709551615"}};
    for (int i = 0; i < 10; i++) loom_st_writer_meta(w, kv[i][0], kv[i][1]);
    void *b;
    size_t bn;
    CHECK_OK(loom_st_writer_serialize(w, &b, &bn));
    CHECK(loom_update_decode(b, bn, 1000, &d, vals, ctl) == LOOM_ERANGE && strstr(loom_errmsg(), "limit"),
          "huge length refused: %s", loom_errmsg());
    loom_free(b);
    loom_st_writer_free(w);
}

int main(void) {
    shuffled_orders_identical();
    accuracy_bounds();
    limits_and_clipping();
    concurrent_adds();
    engine_protocol();
    update_message();
    return test_summary();
}
