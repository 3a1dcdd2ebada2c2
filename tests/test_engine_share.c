/* A round shared by several processes (include/loom/pipeline.h and include/loom/engine.h, "a round
 * shared by several processes"; loom sim --mpi): the element-wise sum of the processes' shares,
 * imported, gives what one pipeline or engine that received every update gives, bit for bit. The
 * expected values come from that one pipeline (engine) fed directly. The processes are simulated here
 * by several pipelines (engines) in one program and a plain loop for MPI_SUM. */
#include "loom/core.h"
#include "loom/engine.h"
#include "loom/pipeline.h"
#include "test.h"

enum { D = 5, U = 7 };

/* values at the edges of the fixed-point range: near +-2^20, tiny, negative, with the largest weight */
static const float upd_v[U][D] = {
    {1048575.0f, -3.25f, 1e-9f, 0.5f, -1048575.0f},
    {-1048575.0f, 7.0f, -2e-9f, 0.25f, -1048575.0f},
    {0.125f, -0.0f, 3.0f, -1.0e-3f, 1.0f},
    {-0.5f, 2.5f, -1.0f, 1e-7f, 1048575.0f},
    {3.0f, -1.0f, 0.75f, 2.0f, -2.0f},
    {1048575.0f, 1048575.0f, -1048575.0f, -1048575.0f, 0.0f},
    {-7.5f, 0.0f, 1.0f, 1.0f, 1.0f},
};
static const double upd_w[U] = {4294967295.0, 4294967295.0, 1, 3, 17, 4294967295.0, 2};
static const int owner[U] = {0, 2, 2, 0, 2, 0, 2}; /* process 1 gets none */

static void sum_words(int64_t *acc, const int64_t *w, size_t n) {
    for (size_t i = 0; i < n; i++) acc[i] += w[i];
}

static void pipeline_share(const char *strategy) {
    loom_pipeline_config c;
    loom_pipeline_defaults(&c, D);
    c.strategy = strategy;
    loom_strategy_defaults(strategy, &c.sp);
    int ctl = !strcmp(strategy, "scaffold");
    float dc[U][D];
    for (int u = 0; u < U; u++)
        for (int i = 0; i < D; i++) dc[u][i] = (float)((u - 3) * 349525.0 / (i + 1)); /* up to 2^20 - 1 */
    loom_pipeline *one, *p[3], *in;
    CHECK_OK(loom_pipeline_create(&one, &c));
    CHECK_OK(loom_pipeline_create(&in, &c));
    for (int k = 0; k < 3; k++) CHECK_OK(loom_pipeline_create(&p[k], &c));
    float g_one[D] = {1, 2, 3, 4, 5}, g_in[D] = {1, 2, 3, 4, 5};
    for (int r = 0; r < 2; r++) { /* two rounds: the strategy's state follows the shared sums too */
        CHECK_OK(loom_pipeline_begin_round(one, r + 1));
        CHECK_OK(loom_pipeline_begin_round(in, r + 1));
        for (int k = 0; k < 3; k++) CHECK_OK(loom_pipeline_begin_round(p[k], r + 1));
        for (int u = 0; u < U; u++) {
            CHECK_OK(loom_pipeline_add(one, upd_v[u], D, upd_w[u], ctl ? dc[u] : NULL, NULL, NULL));
            CHECK_OK(loom_pipeline_add(p[owner[u]], upd_v[u], D, upd_w[u], ctl ? dc[u] : NULL, NULL, NULL));
        }
        size_t n = loom_pipeline_share_len(in);
        CHECK(n == 2 + 3 * D * (ctl ? 2u : 1u), "share length %zu", n);
        int64_t *sum = calloc(n, sizeof *sum), *w = malloc(n * sizeof *w);
        for (int k = 2; k >= 0; k--) { /* any order */
            CHECK_OK(loom_pipeline_share_export(p[k], w));
            sum_words(sum, w, n);
        }
        CHECK(sum[1] == U, "%lld updates", (long long)sum[1]);
        CHECK_OK(loom_pipeline_share_import(in, sum));
        CHECK(loom_pipeline_num_added(in) == U && loom_pipeline_total_weight(in) == loom_pipeline_total_weight(one),
              "counts after import");
        CHECK_OK(loom_pipeline_end_round(one, g_one));
        CHECK_OK(loom_pipeline_end_round(in, g_in));
        CHECK(memcmp(g_one, g_in, sizeof g_one) == 0, "%s round %d: %.9g %.9g / %.9g %.9g", strategy, r + 1,
              g_one[0], g_one[4], g_in[0], g_in[4]);
        for (int k = 0; k < 3; k++) loom_pipeline_abort_round(p[k]);
        free(sum);
        free(w);
    }
    /* a sum that no shares make is refused */
    CHECK_OK(loom_pipeline_begin_round(in, 3));
    int64_t bad[2 + 6 * D];
    memset(bad, 0, sizeof bad);
    bad[0] = 5, bad[1] = 3 + (int64_t)LOOM_FX_MAX_UPDATES;
    CHECK(loom_pipeline_share_import(in, bad) == LOOM_ERANGE && strstr(loom_errmsg(), "shared round"), "%s",
          loom_errmsg());
    bad[0] = 1, bad[1] = 2; /* weight below the count */
    CHECK(loom_pipeline_share_import(in, bad) == LOOM_ERANGE, "W < n refused");
    loom_pipeline_abort_round(in);
    CHECK(loom_pipeline_share_export(in, bad) == LOOM_ESTATE, "outside a round: %s", loom_errmsg());
    for (int k = 0; k < 3; k++) loom_pipeline_free(p[k]);
    loom_pipeline_free(one);
    loom_pipeline_free(in);
}

static void robust_refused(void) {
    loom_pipeline_config c;
    loom_pipeline_defaults(&c, D);
    c.aggregator = &loom_agg_robust;
    loom_pipeline *p;
    CHECK_OK(loom_pipeline_create(&p, &c));
    CHECK_OK(loom_pipeline_begin_round(p, 1));
    int64_t w[2 + 3 * D];
    CHECK(loom_pipeline_share_export(p, w) == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "keeps the updates"), "%s",
          loom_errmsg());
    loom_pipeline_free(p);
}

/* ---- the engine: rows, counts and evaluation travel with the sum ---- */

typedef struct {
    loom_round_metrics m;
    int n;
    loom_client_row rows[8];
} capture;

static void cap_round(void *ud, const loom_round_metrics *m, const int *c, int n) {
    capture *s = ud;
    s->m = *m;
    s->n = 0;
    (void)c, (void)n;
}

static void cap_client(void *ud, const loom_client_row *r) {
    capture *s = ud;
    if (s->n < 8) s->rows[s->n++] = *r;
}

enum { N = 8, P = 3 };

static void engine_share(void) {
    const float init[D] = {1, -1, 0.5f, 2, 0};
    size_t n_test[N] = {3, 3, 0, 3, 3, 3, 3, 3};
    loom_engine_config c;
    loom_engine_defaults(&c);
    c.dim = D;
    c.init = init;
    c.n_clients = N;
    c.n_test = n_test;
    c.rounds = 2;
    c.sample = 6;
    c.seed = 4;
    c.deadline = 10;
    c.eval_every = 1;
    capture want, got[P];
    memset(&want, 0, sizeof want);
    memset(got, 0, sizeof got);
    loom_engine *one, *e[P];
    c.sink = (loom_metrics_sink){cap_round, cap_client, &want};
    CHECK_OK(loom_engine_create(&one, &c));
    for (int k = 0; k < P; k++) {
        c.sink = (loom_metrics_sink){cap_round, cap_client, &got[k]};
        CHECK_OK(loom_engine_create(&e[k], &c));
    }
    for (int r = 0; r < 2; r++) {
        const int *cl, *cl2;
        int n, n2;
        CHECK_OK(loom_engine_open_round(one, 0, &cl, &n));
        for (int k = 0; k < P; k++) {
            CHECK_OK(loom_engine_open_round(e[k], 0, &cl2, &n2));
            CHECK(n2 == n && !memcmp(cl, cl2, (size_t)n * sizeof *cl), "the same sample on every process");
        }
        /* client i: update upd_v[i % U] with its own loss; the 2nd sampled fails, the 3rd is late, the
         * 4th is refused (NaN) */
        float nanv[D] = {0, NAN, 0, 0, 0};
        for (int i = 0; i < n; i++) {
            int k = cl[i] % P;
            loom_update u = {0, r + 1, (uint64_t)r, cl[i], (uint64_t)(3 + i), 0.1 * (i + 1) + 1.0 / 3, 10 + i,
                             LOOM_CODEC_F32, D, i == 3 ? nanv : upd_v[i % U], NULL, 0};
            double now = i == 2 ? 11 : 1;
            if (i == 1) {
                CHECK_OK(loom_engine_fail(one, r + 1, cl[i], "test", now, NULL));
                CHECK_OK(loom_engine_fail(e[k], r + 1, cl[i], "test", now, NULL));
                continue;
            }
            loom_engine_submit(one, &u, now, NULL);
            loom_engine_submit(e[k], &u, now, NULL);
        }
        size_t len = loom_engine_share_len(e[0]);
        CHECK(len == (size_t)n * 8 + 2 + 3 * D, "share length %zu", len);
        int64_t *sum = calloc(len, sizeof *sum), *w = malloc(len * sizeof *w);
        for (int k = 0; k < P; k++) {
            CHECK_OK(loom_engine_share_export(e[k], w));
            sum_words(sum, w, len);
        }
        for (int k = 0; k < P; k++) CHECK_OK(loom_engine_share_import(e[k], sum));
        CHECK_OK(loom_engine_close_round(one, 20));
        for (int k = 0; k < P; k++) {
            CHECK_OK(loom_engine_close_round(e[k], 20));
            CHECK(!memcmp(loom_engine_global(one), loom_engine_global(e[k]), D * sizeof(float)),
                  "round %d process %d: the global vector", r + 1, k);
        }
        /* evaluation, split the same way */
        const int *ec;
        int ne;
        CHECK_OK(loom_engine_eval_plan(one, &ec, &ne));
        CHECK(ne == 7, "7 clients evaluate (%d)", ne);
        for (int i = 0; i < ne; i++) {
            loom_eval_result res = {2.0 / (i + 3), 10 + i, 3 + i, 10 + i, i, 2 * i};
            CHECK_OK(loom_engine_eval_submit(one, ec[i], &res));
            CHECK_OK(loom_engine_eval_submit(e[ec[i] % P], ec[i], &res));
        }
        size_t elen = loom_engine_share_len(e[0]);
        CHECK(elen == (size_t)ne * 7, "evaluation share length %zu", elen);
        memset(sum, 0, len * sizeof *sum);
        for (int k = 0; k < P; k++) {
            CHECK_OK(loom_engine_share_export(e[k], w));
            sum_words(sum, w, elen);
        }
        for (int k = 0; k < P; k++) CHECK_OK(loom_engine_share_import(e[k], sum));
        CHECK_OK(loom_engine_end_round(one, 0, NULL));
        for (int k = 0; k < P; k++) {
            CHECK_OK(loom_engine_end_round(e[k], 0, NULL));
            const loom_round_metrics *a = &want.m, *b = &got[k].m;
            CHECK(a->accepted == 3 && b->accepted == a->accepted && b->rejected == a->rejected &&
                      !memcmp(&a->train_loss, &b->train_loss, sizeof(double)) && b->bytes_up == a->bytes_up &&
                      !memcmp(&a->eval_loss, &b->eval_loss, sizeof(double)) &&
                      !memcmp(&a->eval_acc_std, &b->eval_acc_std, sizeof(double)) && b->evaluated == a->evaluated &&
                      !memcmp(&a->attack_success, &b->attack_success, sizeof(double)),
                  "round %d process %d: accepted %d/%d, train loss %.17g/%.17g, eval loss %.17g/%.17g", r + 1, k,
                  b->accepted, a->accepted, b->train_loss, a->train_loss, b->eval_loss, a->eval_loss);
            CHECK(got[k].n == want.n && want.n == 6, "rows %d/%d", got[k].n, want.n);
            for (int i = 0; i < want.n && i < got[k].n; i++) {
                const loom_client_row *x = &want.rows[i], *y = &got[k].rows[i];
                CHECK(x->client == y->client && x->verdict == y->verdict && x->examples == y->examples &&
                          x->tokens == y->tokens && !memcmp(&x->loss, &y->loss, sizeof(double)) &&
                          !memcmp(&x->update_norm, &y->update_norm, sizeof(double)) && x->bytes_up == y->bytes_up,
                      "round %d process %d row %d: client %d %s / %d %s", r + 1, k, i, y->client, y->status, x->client,
                      x->status);
            }
        }
        CHECK(!strcmp(want.rows[1].status, "client failure") && !strcmp(want.rows[2].status, "late") &&
                  !strcmp(want.rows[3].status, "non-finite value"),
              "the verdicts: %s %s %s", want.rows[1].status, want.rows[2].status, want.rows[3].status);
        free(sum);
        free(w);
    }
    /* a client reported by two processes is refused by name */
    loom_engine_free(e[1]);
    loom_engine_free(e[2]);
    c.rounds = 3;
    c.sink = (loom_metrics_sink){0};
    CHECK_OK(loom_engine_create(&e[1], &c));
    const int *cl;
    int n;
    CHECK_OK(loom_engine_open_round(e[1], 0, &cl, &n));
    loom_update u = {0, 1, 0, cl[0], 3, 1.0, 10, LOOM_CODEC_F32, D, upd_v[2], NULL, 0};
    CHECK_OK(loom_engine_submit(e[1], &u, 0, NULL));
    size_t len = loom_engine_share_len(e[1]);
    int64_t *w = malloc(len * sizeof *w);
    CHECK_OK(loom_engine_share_export(e[1], w));
    w[0] = 2; /* the first sampled client's row, as two processes' shares would sum it */
    char want_msg[64];
    snprintf(want_msg, sizeof want_msg, "client %d answered on 2 processes", cl[0]);
    CHECK(loom_engine_share_import(e[1], w) == LOOM_EINVAL && strstr(loom_errmsg(), want_msg), "%s", loom_errmsg());
    free(w);
    loom_engine_free(e[1]);
    loom_engine_free(e[0]);
    loom_engine_free(one);
}

int main(void) {
    pipeline_share("fedavg");
    pipeline_share("fedadam");
    pipeline_share("scaffold");
    robust_refused();
    engine_share();
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
