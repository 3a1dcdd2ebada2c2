/* Federated aggregation strategies: each check is a mathematical property, with the expected values
 * worked out by hand in the comments or obtained by an independent route. */
#include "loom/core.h"
#include "loom/pipeline.h"
#include "loom/strategy.h"
#include "test.h"

/* One client's contribution to a round. */
typedef struct {
    const float *u;
    double w;
    const float *dc;
} client;

/* One update through the pipeline (validate, clip, aggregate), of the pipeline's length. */
static int add(loom_pipeline *s, const float *u, double w, const float *dc) {
    return loom_pipeline_add(s, u, loom_pipeline_dim(s), w, dc, NULL, NULL);
}

static int run_round(loom_pipeline *s, float *x, const client *c, int n) {
    int rc = loom_pipeline_begin_round(s, 0);
    for (int i = 0; i < n && rc == LOOM_OK; i++) rc = add(s, c[i].u, c[i].w, c[i].dc);
    if (rc == LOOM_OK) rc = loom_pipeline_end_round(s, x);
    else loom_pipeline_abort_round(s);
    return rc;
}

/* A pipeline with strategy `name` (parameters p, or the defaults) and no clipping or bound. */
static loom_pipeline *make(const char *name, loom_strategy_params *p, size_t dim) {
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, dim);
    pc.strategy = name;
    if (p) pc.sp = *p;
    else loom_strategy_defaults(name, &pc.sp);
    loom_pipeline *s = NULL;
    int rc = loom_pipeline_create(&s, &pc);
    CHECK(rc == LOOM_OK && s, "create %s: %s", name, loom_errmsg());
    return s;
}

static loom_strategy *st(loom_pipeline *s) { return loom_pipeline_strategy(s); }

static void fill_random(float *v, size_t n, loom_rng *r, double scale) {
    for (size_t i = 0; i < n; i++) v[i] = (float)(scale * loom_rng_normal(r));
}

/* ---- FedAvg ---- */

static void test_fedavg(void) {
    /* Two clients, |D_1| = 1, |D_2| = 3:
     *   d1 = [4, -8, 0.5], d2 = [0, 4, -0.5]
     *   Delta = (1*d1 + 3*d2) / 4 = [4/4, (-8+12)/4, (0.5-1.5)/4] = [1, 1, -0.25]
     *   x = [1, 2, 3] + Delta = [2, 3, 2.75]   (every step exact in binary floating point) */
    float x[3] = {1, 2, 3};
    const float d1[3] = {4, -8, 0.5f}, d2[3] = {0, 4, -0.5f};
    loom_pipeline *s = make("fedavg", NULL, 3);
    client c[2] = {{d1, 1, NULL}, {d2, 3, NULL}};
    CHECK_OK(run_round(s, x, c, 2));
    CHECK(x[0] == 2.0f && x[1] == 3.0f && x[2] == 2.75f, "fedavg = [%g %g %g], want [2 3 2.75]", x[0], x[1], x[2]);

    /* Eq. (2) verbatim from client models: theta_1 = [3, -1, 0] with |D_1| = 1, theta_2 = [-1, 3, 4] with
     * |D_2| = 3: (theta_1 + 3 theta_2) / 4 = [(3-3)/4, (-1+9)/4, (0+12)/4] = [0, 2, 3], whatever x was. */
    float g[3] = {0.5f, 0.25f, -1};
    const float t1[3] = {3, -1, 0}, t2[3] = {-1, 3, 4};
    CHECK_OK(loom_pipeline_begin_round(s, 0));
    CHECK_OK(loom_pipeline_add_model(s, t1, g, 1, NULL, NULL));
    CHECK_OK(loom_pipeline_add_model(s, t2, g, 3, NULL, NULL));
    CHECK(loom_pipeline_num_added(s) == 2 && loom_pipeline_total_weight(s) == 4, "round counts %zu, %g",
          loom_pipeline_num_added(s), (double)loom_pipeline_total_weight(s));
    CHECK_OK(loom_pipeline_end_round(s, g));
    CHECK(g[0] == 0.0f && g[1] == 2.0f && g[2] == 3.0f, "eq. (2) = [%g %g %g], want [0 2 3]", g[0], g[1], g[2]);

    /* The one-call form gives the first round's result again. */
    float h[3] = {1, 2, 3};
    const float *ups[2] = {d1, d2};
    const double ws[2] = {1, 3};
    CHECK_OK(loom_pipeline_aggregate(s, h, ups, ws, NULL, 2));
    CHECK(memcmp(h, x, sizeof h) == 0, "aggregate = [%g %g %g]", h[0], h[1], h[2]);
    const double wbad[2] = {1, -3};
    CHECK(loom_pipeline_aggregate(s, h, ups, wbad, NULL, 2) == LOOM_EINVAL, "bad weight in aggregate");
    CHECK(memcmp(h, x, sizeof h) == 0, "failed aggregate leaves the global vector");
    CHECK_OK(loom_pipeline_aggregate(s, h, ups, ws, NULL, 2));
    loom_pipeline_free(s);

    /* server_lr 0.5 halves the step: [1,2,3] + 0.5 [1, 1, -0.25] = [1.5, 2.5, 2.875]. */
    loom_strategy_params p;
    CHECK_OK(loom_strategy_defaults("fedavg", &p));
    CHECK(p.server_lr == 1.0 && p.mu == 0.0, "fedavg defaults: server_lr %g mu %g", p.server_lr, p.mu);
    p.server_lr = 0.5;
    s = make("fedavg", &p, 3);
    float y[3] = {1, 2, 3};
    CHECK_OK(run_round(s, y, c, 2));
    CHECK(y[0] == 1.5f && y[1] == 2.5f && y[2] == 2.875f, "server_lr 0.5: [%g %g %g]", y[0], y[1], y[2]);
    loom_pipeline_free(s);

    /* FedProx's server step is FedAvg's: the same round gives the same bits. */
    float z[3] = {1, 2, 3};
    s = make("fedprox", NULL, 3);
    CHECK(loom_strategy_get_params(st(s))->mu == 0.01, "fedprox default mu %g", loom_strategy_get_params(st(s))->mu);
    CHECK_OK(run_round(s, z, c, 2));
    CHECK(z[0] == 2.0f && z[1] == 3.0f && z[2] == 2.75f, "fedprox = [%g %g %g]", z[0], z[1], z[2]);
    loom_pipeline_free(s);
}

/* ---- a zero learning rate is an exact no-op, for every strategy ---- */

static void test_lr_zero(void) {
    enum { D = 7 };
    loom_rng r;
    loom_rng_init(&r, 11, 0);
    float x0[D] = {-0.0f, 0.0f, 1e-30f, -3.5f, 1e20f, 0.1f, -7.25f};
    float u[3][D], dc[3][D];
    for (int k = 0; k < 3; k++) {
        fill_random(u[k], D, &r, 1.0);
        fill_random(dc[k], D, &r, 1.0);
    }
    int n_names = 0;
    for (size_t i = 0; loom_strategy_name_at(i); i++) {
        const char *name = loom_strategy_name_at(i);
        n_names++;
        loom_strategy_params p;
        CHECK_OK(loom_strategy_defaults(name, &p));
        p.server_lr = 0;
        loom_pipeline *s = make(name, &p, D);
        if (!s) continue;
        int ctl = loom_strategy_uses_control(st(s));
        client c[3] = {{u[0], 2, ctl ? dc[0] : NULL}, {u[1], 5, ctl ? dc[1] : NULL}, {u[2], 1, ctl ? dc[2] : NULL}};
        float x[D];
        memcpy(x, x0, sizeof x);
        CHECK_OK(run_round(s, x, c, 3));
        CHECK_OK(run_round(s, x, c, 2));
        CHECK(memcmp(x, x0, sizeof x) == 0, "%s with server_lr 0 changed the global vector", name);
        loom_pipeline_free(s);
    }
    CHECK(n_names == 8, "%d strategies registered, expected 8", n_names);
}

/* ---- FedSGD ---- */

static void test_fedsgd(void) {
    /* K = 4 equal-weight clients with losses f_n(x) = 1/2 ||x - a_n||^2, gradient x - a_n at x.
     * One SGD step on the mean loss: x - lr * (x - mean_n a_n), computed here in double. */
    enum { D = 5, K = 4 };
    loom_rng r;
    loom_rng_init(&r, 5, 1);
    float x[D], a[K][D], g[K][D];
    fill_random(x, D, &r, 1.0);
    for (int k = 0; k < K; k++) fill_random(a[k], D, &r, 2.0);
    for (int k = 0; k < K; k++)
        for (int i = 0; i < D; i++) g[k][i] = x[i] - a[k][i];
    const double lr = 0.3;
    double want[D];
    for (int i = 0; i < D; i++) {
        double abar = 0;
        for (int k = 0; k < K; k++) abar += a[k][i];
        abar /= K;
        want[i] = x[i] - lr * (x[i] - abar);
    }
    loom_strategy_params p;
    CHECK_OK(loom_strategy_defaults("fedsgd", &p));
    p.server_lr = lr;
    loom_pipeline *s = make("fedsgd", &p, D);
    CHECK(loom_strategy_update_kind(st(s)) == LOOM_UPDATE_GRADIENT, "fedsgd takes gradients");
    client c[K];
    for (int k = 0; k < K; k++) c[k] = (client){g[k], 1.0, NULL};
    CHECK_OK(run_round(s, x, c, K));
    for (int i = 0; i < D; i++) CHECK_NEAR(x[i], want[i], 2e-6);
    CHECK(loom_pipeline_add_model(s, x, x, 1, NULL, NULL) != LOOM_OK, "add_model outside a round is refused");
    CHECK_OK(loom_pipeline_begin_round(s, 0));
    CHECK(loom_pipeline_add_model(s, x, x, 1, NULL, NULL) == LOOM_EINVAL, "fedsgd refuses client models");
    loom_pipeline_free(s);

    /* Unequal clients: client n holds examples b_{n,j} with per-example gradient x - b_{n,j}, and computes
     * its mean gradient batch by batch (loom_update_mean_push); weighted by |D_n|, the round is one
     * full-batch SGD step over the union of the data: x - lr (x - mean of all 9 examples). */
    enum { NEX = 9 };
    const int sizes[3] = {2, 3, 4};           /* |D_n| */
    const int batch[3][2] = {{1, 1}, {2, 1}, {3, 1}}; /* batch sizes per client */
    float ex[NEX][D], y[D];
    fill_random(y, D, &r, 1.0);
    for (int j = 0; j < NEX; j++) fill_random(ex[j], D, &r, 1.5);
    double want2[D];
    for (int i = 0; i < D; i++) {
        double m = 0;
        for (int j = 0; j < NEX; j++) m += ex[j][i];
        want2[i] = y[i] - lr * (y[i] - m / NEX);
    }
    s = make("fedsgd", &p, D);
    CHECK_OK(loom_pipeline_begin_round(s, 0));
    int e = 0;
    for (int n = 0; n < 3; n++) {
        float mean[D], bg[D];
        double wsum = 0;
        for (int b = 0; b < 2; b++) {
            /* mean gradient of this batch */
            for (int i = 0; i < D; i++) {
                double m = 0;
                for (int j = 0; j < batch[n][b]; j++) m += y[i] - ex[e + j][i];
                bg[i] = (float)(m / batch[n][b]);
            }
            e += batch[n][b];
            CHECK_OK(loom_update_mean_push(mean, &wsum, bg, batch[n][b], D));
        }
        CHECK(wsum == sizes[n], "client %d pushed %g examples", n, wsum);
        CHECK_OK(add(s, mean, sizes[n], NULL));
    }
    CHECK_OK(loom_pipeline_end_round(s, y));
    for (int i = 0; i < D; i++) CHECK_NEAR(y[i], want2[i], 2e-6);
    loom_pipeline_free(s);
}

/* ---- adaptive strategies ---- */

static void test_fedadam(void) {
    /* beta1 = 0, beta2 = 0.5, tau = 1e-9 (v starts at tau^2 = 1e-18), eta = 0.1, x = [1, 1].
     * Round 1: clients [0, -1] and [1, -3], equal weights: Delta = [0.5, -2]
     *   m = Delta = [0.5, -2]
     *   v = 0.5 * 1e-18 + 0.5 * [0.25, 4] = [0.125, 2]
     *   m / sqrt(v) = [0.5 / 0.35355339, -2 / 1.41421356] = [sqrt 2, -sqrt 2]
     *   x = [1 + 0.1 sqrt 2, 1 - 0.1 sqrt 2]
     * Round 2: one client [0, 1]: m = [0, 1], v = 0.5 [0.125, 2] + 0.5 [0, 1] = [0.0625, 1.5]
     *   x += 0.1 [0, 1 / sqrt(1.5)] */
    loom_strategy_params p;
    CHECK_OK(loom_strategy_defaults("fedadam", &p));
    CHECK(p.server_lr == 0.01 && p.beta1 == 0.9 && p.beta2 == 0.99 && p.tau == 1e-3, "fedadam defaults");
    p.beta1 = 0;
    p.beta2 = 0.5;
    p.tau = 1e-9;
    p.server_lr = 0.1;
    loom_pipeline *s = make("fedadam", &p, 2);
    float *m, *v;
    size_t len;
    CHECK_OK(loom_strategy_state_find(st(s), "server_m", &m, &len));
    CHECK_OK(loom_strategy_state_find(st(s), "server_v", &v, &len));
    CHECK(len == 2 && m[0] == 0 && v[0] == (float)1e-18, "initial m %g, v %g (want 0, tau^2)", m[0], v[0]);
    float x[2] = {1, 1};
    const float u1[2] = {0, -1}, u2[2] = {1, -3}, u3[2] = {0, 1};
    client c[2] = {{u1, 4, NULL}, {u2, 4, NULL}};
    CHECK_OK(run_round(s, x, c, 2));
    CHECK(m[0] == 0.5f && m[1] == -2.0f, "m = [%g %g]", m[0], m[1]);
    CHECK_NEAR(v[0], 0.125, 1e-9);
    CHECK_NEAR(v[1], 2.0, 1e-9);
    CHECK_NEAR(x[0], 1 + 0.1 * sqrt(2.0), 1e-6);
    CHECK_NEAR(x[1], 1 - 0.1 * sqrt(2.0), 1e-6);
    client c2[1] = {{u3, 1, NULL}};
    CHECK_OK(run_round(s, x, c2, 1));
    CHECK_NEAR(v[0], 0.0625, 1e-9);
    CHECK_NEAR(v[1], 1.5, 1e-9);
    CHECK_NEAR(x[0], 1 + 0.1 * sqrt(2.0), 1e-6);
    CHECK_NEAR(x[1], 1 - 0.1 * sqrt(2.0) + 0.1 / sqrt(1.5), 1e-6);
    loom_pipeline_free(s);
}

static void test_fedyogi(void) {
    /* beta1 = 0.5, beta2 = 0.75, tau = 0.5, v_init = 1, eta = 1, x = 0; one client Delta = [2, 0.5, 1].
     *   m = 0.5 * Delta = [1, 0.25, 0.5]
     *   Delta^2 = [4, 0.25, 1]; sign(v - Delta^2) = [sign(-3), sign(0.75), sign(0)] = [-1, +1, 0]
     *   v = 1 - 0.25 Delta^2 sign = [1 + 1, 1 - 0.0625, 1] = [2, 0.9375, 1]
     *   x = m / (sqrt v + 0.5) = [1 / (sqrt 2 + 0.5), 0.25 / (sqrt 0.9375 + 0.5), 0.5 / 1.5]
     * (FedAdam would have v = 0.75 + 0.25 Delta^2 = [1.75, 0.8125, 1]: the first two differ.) */
    loom_strategy_params p;
    CHECK_OK(loom_strategy_defaults("fedyogi", &p));
    p.beta1 = 0.5;
    p.beta2 = 0.75;
    p.tau = 0.5;
    p.v_init = 1;
    p.server_lr = 1;
    loom_pipeline *s = make("fedyogi", &p, 3);
    float x[3] = {0, 0, 0};
    const float d[3] = {2, 0.5f, 1};
    client c[1] = {{d, 7, NULL}};
    CHECK_OK(run_round(s, x, c, 1));
    float *v;
    CHECK_OK(loom_strategy_state_find(st(s), "server_v", &v, NULL));
    CHECK(v[0] == 2.0f && v[1] == 0.9375f && v[2] == 1.0f, "yogi v = [%g %g %g]", v[0], v[1], v[2]);
    CHECK_NEAR(x[0], 1 / (sqrt(2.0) + 0.5), 1e-6);
    CHECK_NEAR(x[1], 0.25 / (sqrt(0.9375) + 0.5), 1e-6);
    CHECK_NEAR(x[2], 0.5 / 1.5, 1e-6);
    loom_pipeline_free(s);
}

static void test_fedadagrad(void) {
    /* beta1 = 0.5, tau = 0.5, v starts at tau^2 = 0.25, eta = 0.3, x = 0; Delta = [1.2, -0.9375]
     * (two clients of weights 1 and 3: [1.2, -0.9375] each, so the mean is the same vector).
     *   m = 0.5 Delta = [0.6, -0.46875]
     *   v = 0.25 + Delta^2 = [1.69, 1.12890625], sqrt v = [1.3, 1.0625]    (5-12-13 and 8-15-17 triangles)
     *   x = 0.3 m / (sqrt v + 0.5) = 0.3 [0.6 / 1.8, -0.46875 / 1.5625] = [0.1, -0.09] */
    loom_strategy_params p;
    CHECK_OK(loom_strategy_defaults("fedadagrad", &p));
    p.beta1 = 0.5;
    p.tau = 0.5;
    p.server_lr = 0.3;
    loom_pipeline *s = make("fedadagrad", &p, 2);
    float x[2] = {0, 0};
    const float d[2] = {1.2f, -0.9375f};
    client c[2] = {{d, 1, NULL}, {d, 3, NULL}};
    CHECK_OK(run_round(s, x, c, 2));
    CHECK_NEAR(x[0], 0.1, 1e-6);
    CHECK_NEAR(x[1], -0.09, 1e-6);
    loom_pipeline_free(s);
}

static void test_fedavgm(void) {
    /* momentum 0.5, server_lr 2, x = [0, 0].
     * Round 1: clients [0, -4] and [2, 0], equal weights: Delta = [1, -2]
     *   v = 0.5 * 0 + Delta = [1, -2];  x = 0 + 2 [1, -2] = [2, -4]
     * Round 2: one client [3, 1]: v = 0.5 [1, -2] + [3, 1] = [3.5, 0];  x = [2, -4] + 2 [3.5, 0] = [9, -4] */
    loom_strategy_params p;
    CHECK_OK(loom_strategy_defaults("fedavgm", &p));
    CHECK(p.server_lr == 1.0 && p.momentum == 0.9, "fedavgm defaults %g %g", p.server_lr, p.momentum);
    p.momentum = 0.5;
    p.server_lr = 2;
    loom_pipeline *s = make("fedavgm", &p, 2);
    float x[2] = {0, 0};
    const float a[2] = {0, -4}, b[2] = {2, 0}, d[2] = {3, 1};
    client c1[2] = {{a, 1, NULL}, {b, 1, NULL}}, c2[1] = {{d, 5, NULL}};
    float *v;
    CHECK_OK(loom_strategy_state_find(st(s), "server_momentum", &v, NULL));
    CHECK_OK(run_round(s, x, c1, 2));
    CHECK(v[0] == 1 && v[1] == -2 && x[0] == 2 && x[1] == -4, "round 1: v [%g %g] x [%g %g]", v[0], v[1], x[0], x[1]);
    CHECK_OK(run_round(s, x, c2, 1));
    CHECK(v[0] == 3.5f && v[1] == 0 && x[0] == 9 && x[1] == -4, "round 2: v [%g %g] x [%g %g]", v[0], v[1], x[0],
          x[1]);
    loom_pipeline_free(s);
}

/* ---- SCAFFOLD ---- */

static void test_scaffold_control(void) {
    /* N = 4 clients in all; round 1 has clients 1 and 2 (weights 10 and 30), c starts at 0.
     *   dc1 = [0.4, -0.8], dc2 = [1.2, 0.4]:  c = (1/4)(dc1 + dc2) = (1/4)[1.6, -0.4] = [0.4, -0.1]
     *   (= |S|/N * mean dc = 2/4 * [0.8, -0.2]; the weights do not enter)
     *   u1 = [1, 0], u2 = [0, 1]:  x = 0 + (10 u1 + 30 u2) / 40 = [0.25, 0.75]
     * Round 2, client 3 alone, dc3 = [-0.4, 0.2]: c = [0.4 - 0.1, -0.1 + 0.05] = [0.3, -0.05]. */
    loom_strategy_params p;
    CHECK_OK(loom_strategy_defaults("scaffold", &p));
    CHECK_OK(loom_strategy_params_set(&p, "num_clients", 4));
    loom_pipeline *s = make("scaffold", &p, 2);
    CHECK(loom_strategy_uses_control(st(s)) == 1, "scaffold uses control deltas");
    float *c;
    CHECK_OK(loom_strategy_state_find(st(s), "server_control", &c, NULL));
    float x[2] = {0, 0};
    const float u1[2] = {1, 0}, u2[2] = {0, 1}, u3[2] = {0, 0};
    const float dc1[2] = {0.4f, -0.8f}, dc2[2] = {1.2f, 0.4f}, dc3[2] = {-0.4f, 0.2f};
    client r1[2] = {{u1, 10, dc1}, {u2, 30, dc2}}, r2[1] = {{u3, 1, dc3}};
    CHECK_OK(run_round(s, x, r1, 2));
    CHECK(x[0] == 0.25f && x[1] == 0.75f, "scaffold x = [%g %g]", x[0], x[1]);
    CHECK_NEAR(c[0], 0.4, 1e-7);
    CHECK_NEAR(c[1], -0.1, 1e-7);
    CHECK_OK(run_round(s, x, r2, 1));
    CHECK_NEAR(c[0], 0.3, 1e-7);
    CHECK_NEAR(c[1], -0.05, 1e-7);
    CHECK(x[0] == 0.25f && x[1] == 0.75f, "zero delta leaves x: [%g %g]", x[0], x[1]);
    loom_pipeline_free(s);

    /* More participants than N is a configuration error. */
    p.num_clients = 1;
    s = make("scaffold", &p, 2);
    CHECK(run_round(s, x, r1, 2) == LOOM_ESTATE, "2 participants with num_clients 1");
    CHECK(strstr(loom_errmsg(), "num_clients") != NULL, "message: %s", loom_errmsg());
    loom_pipeline_free(s);
}

static void test_scaffold_vs_fedavg(void) {
    /* Full participation, c = c_i = 0: the clients' corrected gradients are their plain gradients, so
     * the first SCAFFOLD round with server_lr 1 is exactly a FedAvg round. Clients minimise
     * f_n(y) = 1/2 sum_i h_n,i (y_i - a_n,i)^2 with K = 5 steps of lr 0.1 and use option II. */
    enum { D = 6, NC = 3, K = 5 };
    const double lr = 0.1;
    loom_rng r;
    loom_rng_init(&r, 21, 0);
    float x0[D], a[NC][D], h[NC][D], u[NC][D], dc[NC][D], ci_new[NC][D];
    float zero[D] = {0}, *cg;
    const double w[NC] = {2, 3, 5};
    fill_random(x0, D, &r, 1.0);
    for (int n = 0; n < NC; n++) {
        fill_random(a[n], D, &r, 1.0);
        for (int i = 0; i < D; i++) h[n][i] = (float)(0.5 + loom_rng_uniform(&r));
    }
    loom_pipeline *sc = make("scaffold", NULL, D);
    CHECK_OK(loom_strategy_state_find(st(sc), "server_control", &cg, NULL));
    for (int n = 0; n < NC; n++) {
        float y[D], g[D];
        memcpy(y, x0, sizeof y);
        for (int k = 0; k < K; k++) {
            for (int i = 0; i < D; i++) g[i] = h[n][i] * (y[i] - a[n][i]);
            loom_scaffold_correct(g, zero, cg, D);
            for (int i = 0; i < D; i++) y[i] -= (float)lr * g[i];
        }
        loom_update_delta(u[n], y, x0, D);
        CHECK_OK(loom_scaffold_control_option2(ci_new[n], zero, cg, x0, y, K, lr, D));
        loom_scaffold_control_delta(dc[n], ci_new[n], zero, D);
    }
    float xs[D], xf[D];
    memcpy(xs, x0, sizeof xs);
    memcpy(xf, x0, sizeof xf);
    client cs[NC], cf[NC];
    for (int n = 0; n < NC; n++) {
        cs[n] = (client){u[n], w[n], dc[n]};
        cf[n] = (client){u[n], w[n], NULL};
    }
    CHECK_OK(run_round(sc, xs, cs, NC));
    loom_pipeline *fa = make("fedavg", NULL, D);
    CHECK_OK(run_round(fa, xf, cf, NC));
    CHECK(memcmp(xs, xf, sizeof xs) == 0, "first scaffold round differs from fedavg");
    /* c = (1/N) sum_n dc_n with N = |S| = 3; dc_n = (x - y_n) / (K lr) = -u_n / (K lr). */
    for (int i = 0; i < D; i++) {
        double want = 0;
        for (int n = 0; n < NC; n++) want += -(double)u[n][i] / (K * lr);
        CHECK_NEAR(cg[i], want / NC, 1e-5);
    }
    loom_pipeline_free(sc);
    loom_pipeline_free(fa);
}

static void test_scaffold_client(void) {
    /* Drift correction by hand: g - c_i + c = [1 - 0.5 + 2, -1 - (-1) + 0] = [2.5, 0]. */
    float g[2] = {1, -1};
    const float ci[2] = {0.5f, -1}, c[2] = {2, 0};
    loom_scaffold_correct(g, ci, c, 2);
    CHECK(g[0] == 2.5f && g[1] == 0.0f, "corrected gradient [%g %g]", g[0], g[1]);

    /* With one local step, option II equals option I: y = x - lr (g(x) - c_i + c), so
     * c_i - c + (x - y) / lr = c_i - c + g(x) - c_i + c = g(x). Quadratic loss g(x) = h (x - a). */
    enum { D = 4 };
    loom_rng r;
    loom_rng_init(&r, 3, 3);
    float x[D], a[D], cl[D], cs[D], gx[D], y[D], opt1[D], opt2[D];
    fill_random(x, D, &r, 1.0);
    fill_random(a, D, &r, 1.0);
    fill_random(cl, D, &r, 0.5);
    fill_random(cs, D, &r, 0.5);
    for (int i = 0; i < D; i++) gx[i] = 1.5f * (x[i] - a[i]);
    float gc[D];
    memcpy(gc, gx, sizeof gc);
    loom_scaffold_correct(gc, cl, cs, D);
    const double lr = 0.25;
    for (int i = 0; i < D; i++) y[i] = (float)(x[i] - lr * gc[i]);
    loom_scaffold_control_option1(opt1, gx, D);
    CHECK_OK(loom_scaffold_control_option2(opt2, cl, cs, x, y, 1, lr, D));
    for (int i = 0; i < D; i++) {
        CHECK(opt1[i] == gx[i], "option I copies the gradient at x");
        CHECK_NEAR(opt2[i], opt1[i], 1e-5);
    }
    /* In place (c_new aliasing c_local) gives the same values. */
    CHECK_OK(loom_scaffold_control_option2(cl, cl, cs, x, y, 1, lr, D));
    CHECK(memcmp(cl, opt2, sizeof cl) == 0, "option II in place");
    CHECK(loom_scaffold_control_option2(opt2, cl, cs, x, y, 0, lr, D) == LOOM_EINVAL, "steps 0 refused");
    CHECK(loom_scaffold_control_option2(opt2, cl, cs, x, y, 1, 0, D) == LOOM_EINVAL, "lr 0 refused");
}

/* ---- FedProx client side ---- */

static void test_fedprox(void) {
    /* Value by hand: w - w_global = [3, 4], ||.||^2 = 25, mu = 0.2: 0.2 / 2 * 25 = 2.5. */
    const float w2[2] = {4, 6}, g2[2] = {1, 2};
    CHECK_NEAR(loom_fedprox_value(w2, g2, 0.2, 2), 2.5, 1e-12);

    /* Gradient against central finite differences of the value. The value is quadratic, so the central
     * difference is exact up to rounding; h = 2^-8 and w on a 1/8 grid keep w +- h exact in float. */
    enum { D = 6 };
    const double mu = 0.3, hstep = 1.0 / 256;
    float w[D] = {0.5f, -1.25f, 2, 0.125f, -3, 1}, wg[D] = {1, -1, -0.5f, 0.125f, 2.5f, -1.75f};
    float grad[D] = {0.5f, -0.5f, 1, 0, 2, -2}, base[D];
    memcpy(base, grad, sizeof base);
    loom_fedprox_grad(grad, w, wg, mu, D);
    for (int j = 0; j < D; j++) {
        float wp[D], wm[D];
        memcpy(wp, w, sizeof wp);
        memcpy(wm, w, sizeof wm);
        wp[j] = (float)(w[j] + hstep);
        wm[j] = (float)(w[j] - hstep);
        double fd = (loom_fedprox_value(wp, wg, mu, D) - loom_fedprox_value(wm, wg, mu, D)) / (2 * hstep);
        CHECK_NEAR(grad[j] - base[j], fd, 1e-6);
    }
    CHECK(grad[3] == base[3], "equal coordinates add nothing");
}

/* ---- checkpoint / resume ---- */

static void test_state_resume(void) {
    enum { D = 37 };
    loom_rng r;
    loom_rng_init(&r, 99, 0);
    float x0[D], u[2][3][D], dc[2][3][D];
    fill_random(x0, D, &r, 1.0);
    for (int t = 0; t < 2; t++)
        for (int k = 0; k < 3; k++) {
            fill_random(u[t][k], D, &r, 0.1);
            fill_random(dc[t][k], D, &r, 0.1);
        }
    const double w[3] = {3, 1, 2};
    int stateful = 0;
    for (size_t si = 0; loom_strategy_name_at(si); si++) {
        const char *name = loom_strategy_name_at(si);
        loom_strategy_params p;
        CHECK_OK(loom_strategy_defaults(name, &p));
        p.server_lr = 0.5;
        p.beta1 = 0.6;  /* makes round 2 depend on round 1's m */
        client c[2][3];
        for (int t = 0; t < 2; t++)
            for (int k = 0; k < 3; k++) c[t][k] = (client){u[t][k], w[k], NULL};

        /* Two rounds straight. */
        loom_pipeline *a = make(name, &p, D);
        if (!a) continue;
        int ctl = loom_strategy_uses_control(st(a));
        if (ctl)
            for (int t = 0; t < 2; t++)
                for (int k = 0; k < 3; k++) c[t][k].dc = dc[t][k];
        float xa[D];
        memcpy(xa, x0, sizeof xa);
        CHECK_OK(run_round(a, xa, c[0], 3));
        CHECK_OK(run_round(a, xa, c[1], 3));

        /* One round, save the state (as a checkpoint writer would: by name, as flat vectors). */
        loom_pipeline *b = make(name, &p, D);
        float xb[D];
        memcpy(xb, x0, sizeof xb);
        CHECK_OK(run_round(b, xb, c[0], 3));
        size_t ns = loom_strategy_state_count(st(b));
        const char *names[4];
        float saved[4][D];
        CHECK(ns <= 4, "%s has %zu state vectors", name, ns);
        for (size_t i = 0; i < ns && i < 4; i++) {
            float *data;
            size_t len;
            CHECK_OK(loom_strategy_state(st(b), i, &names[i], &data, &len));
            CHECK(len == D, "%s state %s has length %zu", name, names[i], len);
            memcpy(saved[i], data, sizeof saved[i]);
        }
        CHECK(loom_strategy_state(st(b), ns, NULL, NULL, NULL) == LOOM_ERANGE, "state index past the end");
        loom_pipeline_free(b);
        stateful += ns > 0;

        /* New object, restore, one round. */
        loom_pipeline *cobj = make(name, &p, D);
        CHECK(loom_strategy_state_count(st(cobj)) == ns, "%s: state count after re-create", name);
        for (size_t i = 0; i < ns && i < 4; i++) {
            CHECK(loom_pipeline_state_load(cobj, names[i], saved[i], D - 1) == LOOM_EFORMAT, "short state refused");
            CHECK_OK(loom_pipeline_state_load(cobj, names[i], saved[i], D));
        }
        float xc[D];
        memcpy(xc, xb, sizeof xc);
        CHECK_OK(run_round(cobj, xc, c[1], 3));
        CHECK(memcmp(xa, xc, sizeof xa) == 0, "%s: resumed run differs from the straight one", name);
        for (size_t i = 0; i < ns; i++) {
            float *da, *dcp;
            loom_strategy_state(st(a), i, NULL, &da, NULL);
            loom_strategy_state(st(cobj), i, NULL, &dcp, NULL);
            CHECK(memcmp(da, dcp, D * sizeof(float)) == 0, "%s: state %zu differs after resume", name, i);
        }

        /* The check has teeth: without the restore, a stateful strategy ends elsewhere. */
        if (ns > 0) {
            loom_pipeline *fresh = make(name, &p, D);
            float xf[D];
            memcpy(xf, xb, sizeof xf);
            CHECK_OK(run_round(fresh, xf, c[1], 3));
            /* (SCAFFOLD's c does not enter the server's x step, only the next clients' steps.) */
            int differs = memcmp(xa, xf, sizeof xa) != 0;
            for (size_t i = 0; i < ns; i++) {
                float *da, *df;
                loom_strategy_state(st(a), i, NULL, &da, NULL);
                loom_strategy_state(st(fresh), i, NULL, &df, NULL);
                differs |= memcmp(da, df, D * sizeof(float)) != 0;
            }
            CHECK(differs, "%s: state made no difference", name);
            loom_pipeline_free(fresh);
        }
        loom_pipeline_free(a);
        loom_pipeline_free(cobj);
    }
    CHECK(stateful == 5, "%d strategies with state (fedavgm, fedadagrad, fedadam, fedyogi, scaffold)", stateful);
    float *data;
    loom_pipeline *s = make("fedavg", NULL, 3);
    CHECK(loom_strategy_state_find(st(s), "server_m", &data, NULL) == LOOM_ENOTFOUND, "fedavg has no state");
    loom_pipeline_free(s);

    /* Loading is refused for a corrupt vector and inside a round, and then changes nothing. */
    s = make("fedadam", NULL, 3);
    float *m;
    const float bad[3] = {1, NAN, 2}, good[3] = {1, 2, 3};
    CHECK_OK(loom_strategy_state_find(st(s), "server_m", &m, NULL));
    CHECK(loom_pipeline_state_load(s, "server_m", bad, 3) == LOOM_EFORMAT, "NaN state refused");
    CHECK(m[0] == 0 && m[2] == 0, "refused load left the state");
    CHECK(loom_pipeline_state_load(s, "momentum", good, 3) == LOOM_ENOTFOUND, "unknown state name");
    CHECK_OK(loom_pipeline_begin_round(s, 0));
    CHECK(loom_pipeline_state_load(s, "server_m", good, 3) == LOOM_ESTATE, "load inside a round");
    loom_pipeline_free(s);
}

/* ---- large vectors: the threaded element loops agree with the serial ones ---- */

static void test_large(void) {
    /* Coordinates are independent, so FedAdam on a vector big enough for the parallel path must give,
     * on its first 16 coordinates, the same bits as on a 16-element vector (serial path). */
    enum { BIG = 100003, SMALL = 16 };
    float *x = malloc(BIG * sizeof *x), *u1 = malloc(BIG * sizeof *x), *u2 = malloc(BIG * sizeof *x);
    loom_rng r;
    loom_rng_init(&r, 8, 8);
    fill_random(x, BIG, &r, 1.0);
    fill_random(u1, BIG, &r, 0.1);
    fill_random(u2, BIG, &r, 0.1);
    float xs[SMALL];
    memcpy(xs, x, sizeof xs);
    loom_pipeline *big = make("fedadam", NULL, BIG), *small = make("fedadam", NULL, SMALL);
    client cb[2] = {{u1, 3, NULL}, {u2, 4, NULL}};
    for (int t = 0; t < 2; t++) {
        CHECK_OK(run_round(big, x, cb, 2));
        CHECK_OK(run_round(small, xs, cb, 2));
    }
    CHECK(memcmp(x, xs, sizeof xs) == 0, "parallel and serial element loops differ");
    loom_pipeline_free(big);
    loom_pipeline_free(small);
    free(x);
    free(u1);
    free(u2);
}

/* ---- update validation ---- */

static void test_update_check(void) {
    loom_update_verdict v;
    double norm;
    const float good[2] = {3, 4}; /* norm 5 */
    CHECK(loom_update_check(good, 2, 2, 0, &v, &norm) == LOOM_OK && v == LOOM_UPDATE_ACCEPTED, "no bound");
    CHECK(norm == 5.0, "norm %g, want 5", norm);
    CHECK(loom_update_check(good, 2, 2, 5.0, &v, NULL) == LOOM_OK, "norm equal to the bound is accepted");
    CHECK(loom_update_check(good, 2, 2, 4.9, &v, &norm) == LOOM_ERANGE && v == LOOM_UPDATE_TOO_LARGE, "over norm");
    CHECK(strstr(loom_errmsg(), "norm") != NULL, "reason: %s", loom_errmsg());
    CHECK(strcmp(loom_update_verdict_str(v), "norm above bound") == 0, "verdict string");

    CHECK(loom_update_check(good, 2, 3, 0, &v, NULL) == LOOM_EINVAL && v == LOOM_UPDATE_BAD_LENGTH, "wrong length");
    CHECK(strstr(loom_errmsg(), "expected 3") != NULL, "reason: %s", loom_errmsg());
    CHECK(loom_update_check(NULL, 0, 3, 0, &v, NULL) == LOOM_EINVAL && v == LOOM_UPDATE_BAD_LENGTH, "no update");

    float bad[3] = {1, 2, NAN};
    CHECK(loom_update_check(bad, 3, 3, 0, &v, NULL) == LOOM_ERANGE && v == LOOM_UPDATE_NONFINITE, "NaN");
    CHECK(strstr(loom_errmsg(), "value 2 is NaN") != NULL, "reason: %s", loom_errmsg());
    bad[2] = INFINITY;
    CHECK(loom_update_check(bad, 3, 3, 0, &v, NULL) == LOOM_ERANGE && v == LOOM_UPDATE_NONFINITE, "+Inf");
    CHECK(strstr(loom_errmsg(), "infinite") != NULL, "reason: %s", loom_errmsg());
    bad[2] = -INFINITY;
    CHECK(loom_update_check(bad, 3, 3, 1e30, &v, NULL) == LOOM_ERANGE && v == LOOM_UPDATE_NONFINITE, "-Inf");
    bad[2] = 2;
    CHECK(loom_update_check(bad, 3, 3, 3.0, &v, &norm) == LOOM_OK && v == LOOM_UPDATE_ACCEPTED, "norm 3 within 3");
    v = LOOM_UPDATE_ACCEPTED;
    CHECK(loom_update_check(bad, 3, 3, -1, &v, NULL) == LOOM_EINVAL && v == LOOM_UPDATE_BAD_BOUND, "negative bound refused");
    CHECK(strstr(loom_errmsg(), "bound") != NULL, "reason: %s", loom_errmsg());
}

/* ---- hyper-parameters and the round protocol ---- */

static void expect_refused(const char *name, loom_strategy_params p, const char *param) {
    loom_strategy *s = (loom_strategy *)1;
    int rc = loom_strategy_create(&s, name, &p, 4);
    CHECK(rc == LOOM_ERANGE && s == NULL, "%s with bad %s: rc %d", name, param, rc);
    CHECK(strstr(loom_errmsg(), param) != NULL, "message names %s: %s", param, loom_errmsg());
}

static void test_params(void) {
    loom_strategy_params d, p;
    CHECK_OK(loom_strategy_defaults("fedadam", &d));
    CHECK_OK(loom_strategy_params_check(&d));
    p = d; p.server_lr = -0.1; expect_refused("fedadam", p, "server_lr");
    p = d; p.server_lr = NAN; expect_refused("fedadam", p, "server_lr");
    p = d; p.server_lr = INFINITY; expect_refused("fedadam", p, "server_lr");
    p = d; p.beta1 = 1.0; expect_refused("fedadam", p, "beta1");
    p = d; p.beta1 = -0.5; expect_refused("fedadam", p, "beta1");
    p = d; p.beta2 = 1.5; expect_refused("fedyogi", p, "beta2");
    p = d; p.tau = 0; expect_refused("fedadam", p, "tau");
    p = d; p.tau = -1e-3; expect_refused("fedadagrad", p, "tau");
    p = d; p.mu = -0.01; expect_refused("fedprox", p, "mu");
    p = d; p.momentum = 1.0; expect_refused("fedavgm", p, "momentum");
    p = d; p.v_init = NAN; expect_refused("fedadam", p, "v_init");
    p = d; p.num_clients = -2; expect_refused("scaffold", p, "num_clients");

    loom_strategy *s = NULL;
    CHECK(loom_strategy_create(&s, "fedmagic", NULL, 4) == LOOM_EINVAL && !s, "unknown strategy refused");
    CHECK(strstr(loom_errmsg(), "fedmagic") && strstr(loom_errmsg(), "fedavg"), "message: %s", loom_errmsg());
    CHECK(loom_strategy_defaults("fedmagic", &p) == LOOM_EINVAL, "defaults of an unknown strategy");
    CHECK(loom_strategy_create(&s, "fedavg", NULL, 0) == LOOM_EINVAL, "dim 0 refused");

    p = d;
    CHECK_OK(loom_strategy_params_set(&p, "eta", 0.25));
    CHECK_OK(loom_strategy_params_set(&p, "beta2", 0.5));
    CHECK(p.server_lr == 0.25 && p.beta2 == 0.5, "params_set");
    CHECK(loom_strategy_params_set(&p, "learning_rate", 1) == LOOM_EINVAL, "unknown key refused");
    CHECK(strstr(loom_errmsg(), "learning_rate") != NULL, "message: %s", loom_errmsg());
    CHECK(loom_strategy_params_set(&p, "num_clients", 2.5) == LOOM_EINVAL, "fractional num_clients refused");
    CHECK(loom_strategy_params_set(&p, "num_clients", -1) == LOOM_EINVAL, "negative num_clients refused");
    p.tau = 0;
    CHECK(loom_strategy_params_check(&p) == LOOM_ERANGE, "params_check finds tau");
}

static void test_protocol(void) {
    float x[2] = {1, 2}, u[2] = {1, 1};
    const float x_before[2] = {1, 2};
    loom_pipeline *s = make("fedavg", NULL, 2);
    CHECK(add(s, u, 1, NULL) == LOOM_ESTATE, "add before begin_round");
    CHECK(loom_pipeline_end_round(s, x) == LOOM_ESTATE, "end_round before begin_round");
    CHECK_OK(loom_pipeline_begin_round(s, 0));
    CHECK(loom_pipeline_begin_round(s, 0) == LOOM_ESTATE, "begin_round twice");
    CHECK(add(s, u, 0, NULL) == LOOM_EINVAL, "weight 0");
    CHECK(add(s, u, -1, NULL) == LOOM_EINVAL, "negative weight");
    CHECK(add(s, u, NAN, NULL) == LOOM_EINVAL, "NaN weight");
    CHECK(add(s, u, 1, u) == LOOM_EINVAL, "control delta given to fedavg");
    CHECK(loom_pipeline_num_added(s) == 0, "refused adds are not counted");
    CHECK(loom_pipeline_end_round(s, x) == LOOM_ESTATE, "empty round");
    CHECK(memcmp(x, x_before, sizeof x) == 0, "empty round leaves the global vector");
    CHECK(add(s, u, 1, NULL) == LOOM_ESTATE, "the failed end_round closed the round");
    loom_pipeline_free(s);

    s = make("scaffold", NULL, 2);
    CHECK_OK(loom_pipeline_begin_round(s, 0));
    CHECK(add(s, u, 1, NULL) == LOOM_EINVAL, "scaffold needs a control delta");
    loom_pipeline_free(s);
    loom_pipeline_free(NULL);

    /* Streaming mean helper: pushes [2, 0] x2, [5, 3] x1, [0, 6] x3 -> ([4,0] + [5,3] + [0,18]) / 6 = [1.5, 3.5]. */
    float mean[2];
    double ws = 0;
    const float b1[2] = {2, 0}, b2[2] = {5, 3}, b3[2] = {0, 6};
    CHECK_OK(loom_update_mean_push(mean, &ws, b1, 2, 2));
    CHECK_OK(loom_update_mean_push(mean, &ws, b2, 1, 2));
    CHECK_OK(loom_update_mean_push(mean, &ws, b3, 3, 2));
    CHECK(ws == 6 && mean[0] == 1.5f && mean[1] == 3.5f, "mean [%g %g] over %g", mean[0], mean[1], ws);
    CHECK(loom_update_mean_push(mean, &ws, b3, 0, 2) == LOOM_EINVAL, "zero batch weight");

    float d[2];
    loom_update_delta(d, b2, b1, 2);
    CHECK(d[0] == 3 && d[1] == 3, "delta [%g %g]", d[0], d[1]);
}

int main(void) {
    test_fedavg();
    test_lr_zero();
    test_fedsgd();
    test_fedadam();
    test_fedyogi();
    test_fedadagrad();
    test_fedavgm();
    test_scaffold_control();
    test_scaffold_vs_fedavg();
    test_scaffold_client();
    test_fedprox();
    test_state_resume();
    test_large();
    test_update_check();
    test_params();
    test_protocol();
    return test_summary();
}
