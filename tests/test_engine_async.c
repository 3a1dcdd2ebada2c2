/* The round engine's asynchronous modes (FedAsync, FedBuff) and the simulator's event loop for them:
 *  - the staleness functions' values against fractions worked out by hand, and the --staleness parser
 *  - FedAsync's mixing against x_{t+1} = (1 - a) x_t + a (x_tau + u), a = alpha s(t - tau), computed
 *    here in double; alpha 1 at staleness 0 is the client's model; alpha 0 changes nothing
 *  - FedBuff with K = N, every client starting each cycle on the same version, equals synchronous
 *    FedAvg (and FedAdam) bit for bit, also with the updates submitted from threads
 *  - refusals: no task, newer or other version, too stale, concurrency, all versions made, configs
 *  - the simulator: bitwise identical for 1 and 3 workers, FedBuff K = N equals the synchronous run,
 *    client lr 0 leaves the model unchanged, one metrics row per version */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/engine.h"
#include "loom/fl.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/pipeline.h"
#include "loom/sim.h"
#include "loom/tokenizer.h"
#include "loom/train.h"
#include "model/model_impl.h"
#include "test.h"

/* ---- staleness functions ---- */

static void staleness_functions(void) {
    loom_staleness_fn c = {LOOM_STALENESS_CONSTANT, 0.5, 4};
    CHECK(loom_staleness_weight(&c, 0) == 1 && loom_staleness_weight(&c, 1000) == 1, "constant s = 1");
    /* polynomial (d + 1)^-a: a = 0.5 at d = 0, 3, 8 gives 1, 1/2, 1/3; a = 2 at d = 1 gives 1/4 */
    loom_staleness_fn p = {LOOM_STALENESS_POLY, 0.5, 0};
    CHECK_NEAR(loom_staleness_weight(&p, 0), 1.0, 0);
    CHECK_NEAR(loom_staleness_weight(&p, 3), 0.5, 1e-15);
    CHECK_NEAR(loom_staleness_weight(&p, 8), 1.0 / 3.0, 1e-15);
    p.a = 2;
    CHECK_NEAR(loom_staleness_weight(&p, 1), 0.25, 1e-15);
    /* hinge a = 0.5, b = 4: 1 up to 4, then 1 / (0.5 (d - 4) + 1): d = 6 -> 1/2, d = 10 -> 1/4 */
    loom_staleness_fn h = {LOOM_STALENESS_HINGE, 0.5, 4};
    CHECK(loom_staleness_weight(&h, 0) == 1 && loom_staleness_weight(&h, 4) == 1, "hinge is 1 up to b");
    CHECK_NEAR(loom_staleness_weight(&h, 5), 1.0 / 1.5, 1e-15);
    CHECK_NEAR(loom_staleness_weight(&h, 6), 0.5, 1e-15);
    CHECK_NEAR(loom_staleness_weight(&h, 10), 0.25, 1e-15);
    /* a = 10, b = 2 (another slope): d = 3 -> 1/11 */
    h.a = 10;
    h.b = 2;
    CHECK_NEAR(loom_staleness_weight(&h, 3), 1.0 / 11.0, 1e-15);
    /* the parser */
    loom_staleness_fn f;
    CHECK_OK(loom_staleness_parse("constant", &f));
    CHECK(f.kind == LOOM_STALENESS_CONSTANT, "constant parsed");
    CHECK_OK(loom_staleness_parse("poly", &f));
    CHECK(f.kind == LOOM_STALENESS_POLY && f.a == 0.5, "poly takes the default exponent 0.5 (%g)", f.a);
    CHECK_OK(loom_staleness_parse("poly:2", &f));
    CHECK(f.kind == LOOM_STALENESS_POLY && f.a == 2, "poly:2 (%g)", f.a);
    CHECK_OK(loom_staleness_parse("hinge", &f));
    CHECK(f.kind == LOOM_STALENESS_HINGE && f.a == 0.5 && f.b == 4, "hinge defaults a 0.5, b 4 (%g %g)", f.a, f.b);
    CHECK_OK(loom_staleness_parse("hinge:10:3", &f));
    CHECK(f.kind == LOOM_STALENESS_HINGE && f.a == 10 && f.b == 3, "hinge:10:3 (%g %g)", f.a, f.b);
    const char *bad[] = {"quadratic", "poly:x", "poly:0", "hinge:1:-1", "hinge:1:2:3", "poly:", "constant:1"};
    for (int i = 0; i < 7; i++) {
        int rc = loom_staleness_parse(bad[i], &f);
        CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "--staleness"), "%s refused naming --staleness: %s", bad[i],
              loom_errmsg());
    }
    loom_engine_mode m;
    CHECK(loom_engine_mode_parse("fedbuff", &m) == LOOM_OK && m == LOOM_ENGINE_FEDBUFF, "fedbuff parsed");
    CHECK(loom_engine_mode_parse("fedasync", &m) == LOOM_OK && m == LOOM_ENGINE_FEDASYNC, "fedasync parsed");
    CHECK(loom_engine_mode_parse("async", &m) == LOOM_EINVAL && strstr(loom_errmsg(), "--mode"), "bad mode: %s",
          loom_errmsg());
}

/* ---- engine helpers ---- */

typedef struct {
    int rows, client_rows;
    loom_round_metrics last;
    long st[64];
    int nst;
} capture;

static void cap_round(void *ud, const loom_round_metrics *m, const int *clients, int n) {
    capture *c = ud;
    c->rows++;
    c->last = *m;
}
static void cap_client(void *ud, const loom_client_row *r) {
    capture *c = ud;
    if (c->nst < 64) c->st[c->nst++] = r->staleness;
    c->client_rows++;
}

static loom_engine *make(loom_engine_mode mode, const char *strategy, size_t dim, const float *init, int N, int rounds,
                         int C, int K, double alpha, loom_staleness_fn s, capture *cap) {
    loom_engine_config ec;
    loom_engine_defaults(&ec);
    ec.dim = dim;
    ec.init = init;
    ec.n_clients = N;
    ec.rounds = rounds;
    ec.pipe.strategy = strategy;
    loom_strategy_defaults(strategy, &ec.pipe.sp);
    ec.mode = mode;
    ec.concurrency = C;
    ec.buffer = K;
    ec.async_alpha = alpha;
    ec.staleness = s;
    if (cap) ec.sink = (loom_metrics_sink){cap_round, cap_client, cap};
    loom_engine *e = NULL;
    int rc = loom_engine_create(&e, &ec);
    CHECK(rc == LOOM_OK && e, "engine (%s): %s", loom_engine_mode_name(mode), loom_errmsg());
    return e;
}

static loom_update upd(int client, uint64_t version, uint64_t examples, const float *v, size_t len) {
    loom_update u = {0, (int)version + 1, version, client, examples, 1.0, 10, LOOM_CODEC_F32, len, v, NULL, 0};
    return u;
}

static int submit(loom_engine *e, int client, uint64_t version, uint64_t examples, const float *v, size_t len,
                  loom_update_verdict *verdict, int *made) {
    loom_update u = upd(client, version, examples, v, len);
    return loom_engine_async_submit(e, &u, 0, verdict, made);
}

static int near_f(double got, double want) { return fabs(got - want) <= 1e-6 * fabs(want) + 1e-7; }

/* ---- FedAsync ---- */

enum { AD = 6 };

static void fedasync_mixing(void) {
    float x0[AD] = {0.5f, -1.25f, 2.0f, 0.0f, 3.5f, -0.75f};
    float u[4][AD];
    loom_rng r;
    loom_rng_init(&r, 3, 9);
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < AD; i++) u[k][i] = (float)(0.5 * loom_rng_normal(&r));
    loom_staleness_fn poly = {LOOM_STALENESS_POLY, 0.5, 0};
    double alpha = 0.8;
    capture cap = {0};
    loom_engine *e = make(LOOM_ENGINE_FEDASYNC, "fedavg", AD, x0, 3, 10, 3, 0, alpha, poly, &cap);
    loom_task t0, t1, t2;
    CHECK_OK(loom_engine_async_task(e, 0, 0, &t0));
    CHECK_OK(loom_engine_async_task(e, 1, 0, &t1));
    CHECK_OK(loom_engine_async_task(e, 2, 0, &t2));
    CHECK(t0.version == 0 && t1.version == 0 && t0.global != loom_engine_global(e), "tasks on version 0, a snapshot");
    CHECK(memcmp(t0.global, x0, sizeof x0) == 0, "the snapshot is x0");
    /* the reference, in double: x_{t+1} = (1 - a) x_t + a (x_tau + u) */
    double ref[AD], xt0[AD];
    for (int i = 0; i < AD; i++) ref[i] = xt0[i] = x0[i];
    int made = 0;
    loom_update_verdict v;
    /* client 1 at staleness 0: a = 0.8 */
    CHECK_OK(submit(e, 1, 0, 5, u[1], AD, &v, &made));
    CHECK(made == 1 && loom_engine_version(e) == 1, "FedAsync: every update makes a version (%d, %llu)", made,
          (unsigned long long)loom_engine_version(e));
    double a = alpha * 1.0;
    for (int i = 0; i < AD; i++) ref[i] = (1 - a) * ref[i] + a * (xt0[i] + u[1][i]);
    int ok = 1;
    for (int i = 0; i < AD; i++) ok &= near_f(loom_engine_global(e)[i], ref[i]);
    CHECK(ok, "FedAsync staleness 0 matches (1 - a) x + a (x_tau + u)");
    CHECK(memcmp(t0.global, x0, sizeof x0) == 0, "the snapshot handed to client 0 did not change");
    /* client 1 pulls version 1 (its snapshot is the new global) */
    CHECK_OK(loom_engine_async_task(e, 1, 0, &t1));
    CHECK(t1.version == 1 && memcmp(t1.global, loom_engine_global(e), sizeof x0) == 0, "version 1 handed out");
    double xt1[AD];
    for (int i = 0; i < AD; i++) xt1[i] = t1.global[i];
    /* client 0 at staleness 1: a = 0.8 * 2^-0.5 */
    CHECK_OK(submit(e, 0, 0, 5, u[0], AD, &v, &made));
    a = alpha / sqrt(2.0);
    for (int i = 0; i < AD; i++) ref[i] = (1 - a) * ref[i] + a * (xt0[i] + u[0][i]);
    ok = 1;
    for (int i = 0; i < AD; i++) ok &= near_f(loom_engine_global(e)[i], ref[i]);
    CHECK(ok, "FedAsync staleness 1 with polynomial s: a = alpha / sqrt(2)");
    /* client 2 at staleness 2: a = 0.8 / sqrt(3) */
    CHECK_OK(submit(e, 2, 0, 5, u[2], AD, &v, &made));
    a = alpha / sqrt(3.0);
    for (int i = 0; i < AD; i++) ref[i] = (1 - a) * ref[i] + a * (xt0[i] + u[2][i]);
    /* client 1 (on version 1) at staleness 2 */
    CHECK_OK(submit(e, 1, 1, 5, u[3], AD, &v, &made));
    for (int i = 0; i < AD; i++) ref[i] = (1 - a) * ref[i] + a * (xt1[i] + u[3][i]);
    ok = 1;
    for (int i = 0; i < AD; i++) ok &= near_f(loom_engine_global(e)[i], ref[i]);
    CHECK(ok, "FedAsync after four mixes matches the double reference");
    CHECK(loom_engine_version(e) == 4 && loom_engine_async_training(e) == 0, "version 4, nobody training");
    /* rows: one per version; the last had one update of staleness 2 */
    CHECK_OK(loom_engine_async_end_version(e, 0.5, NULL));
    CHECK(cap.rows == 4, "one round row per version (%d)", cap.rows);
    CHECK(cap.last.version == 4 && cap.last.round == 4 && cap.last.staleness_max == 2 && cap.last.staleness_mean == 2,
          "last row: version %llu, staleness max %g mean %g", (unsigned long long)cap.last.version,
          cap.last.staleness_max, cap.last.staleness_mean);
    CHECK(cap.client_rows == 4 && cap.st[0] == 0 && cap.st[1] == 1 && cap.st[2] == 2 && cap.st[3] == 2,
          "client rows carry the staleness (%ld %ld %ld %ld)", cap.st[0], cap.st[1], cap.st[2], cap.st[3]);
    CHECK(loom_engine_async_end_version(e, 0, NULL) == LOOM_ESTATE, "no second row for the same version");
    loom_engine_free(e);

    /* alpha 1 at staleness 0 is the client's model, bit for bit (y near x0, so u = y - x0 is exact) */
    float y[AD], du[AD];
    for (int i = 0; i < AD; i++) {
        y[i] = x0[i] * 1.3f + 0.01f;
        du[i] = y[i] - x0[i];
    }
    loom_staleness_fn cst = {LOOM_STALENESS_CONSTANT, 0.5, 4};
    e = make(LOOM_ENGINE_FEDASYNC, "fedavg", AD, x0, 2, 5, 2, 0, 1.0, cst, NULL);
    CHECK_OK(loom_engine_async_task(e, 1, 0, &t1));
    CHECK_OK(submit(e, 1, 0, 3, du, AD, &v, &made));
    CHECK(memcmp(loom_engine_global(e), y, sizeof y) == 0, "alpha 1, staleness 0: the global model is the client's");
    loom_engine_free(e);

    /* clipping: an update of norm 2 with clip norm 1 enters as u / 2 */
    {
        loom_engine_config ec;
        loom_engine_defaults(&ec);
        ec.dim = AD;
        ec.init = x0;
        ec.n_clients = 1;
        ec.rounds = 1;
        ec.mode = LOOM_ENGINE_FEDASYNC;
        ec.async_alpha = 0.5;
        ec.pipe.clip_norm = 1;
        float cu[AD] = {2, 0, 0, 0, 0, 0};
        CHECK_OK(loom_engine_create(&e, &ec));
        CHECK_OK(loom_engine_async_task(e, 0, 0, &t0));
        CHECK_OK(submit(e, 0, 0, 1, cu, AD, &v, &made));
        CHECK(near_f(loom_engine_global(e)[0], x0[0] + 0.5 * 1.0) && loom_engine_global(e)[1] == x0[1],
              "FedAsync mixes the clipped update: %g", loom_engine_global(e)[0]);
        loom_engine_free(e);
    }
    /* alpha 0: nothing changes, bit for bit, whatever arrives */
    e = make(LOOM_ENGINE_FEDASYNC, "fedavg", AD, x0, 3, 9, 3, 0, 0.0, poly, NULL);
    for (int round = 0; round < 3; round++)
        for (int k = 0; k < 3; k++) {
            CHECK_OK(loom_engine_async_task(e, k, 0, &t0));
            CHECK_OK(submit(e, k, t0.version, 2, u[k], AD, &v, &made));
        }
    CHECK(loom_engine_version(e) == 9 && memcmp(loom_engine_global(e), x0, sizeof x0) == 0,
          "alpha 0: nine versions, the model unchanged bit for bit");
    loom_engine_free(e);
}

/* ---- FedBuff == synchronous FedAvg ---- */

enum { BD = 257, BN = 4, BR = 3 };
static float bu[BR][BN][BD];
static uint64_t bw[BN] = {3, 17, 1, 250};

typedef struct {
    loom_engine *e;
    int client, round;
    int rc, made;
} sub_arg;

static void *sub_thread(void *p) {
    sub_arg *s = p;
    loom_update_verdict v;
    s->rc = submit(s->e, s->client, (uint64_t)s->round, bw[s->client], bu[s->round][s->client], BD, &v, &s->made);
    return NULL;
}

typedef struct {
    loom_engine *e;
    int ok;
} reader_arg;

static void *reader_thread(void *p) {
    reader_arg *ra = p;
    float copy[BD];
    for (int i = 0; i < 50; i++) {
        uint64_t ver = 99;
        ra->ok &= loom_engine_async_copy_global(ra->e, copy, &ver) == LOOM_OK && ver <= BR;
    }
    return NULL;
}

static void fedbuff_equals_sync(void) {
    loom_rng r;
    loom_rng_init(&r, 11, 4);
    float x0[BD];
    for (int i = 0; i < BD; i++) x0[i] = (float)loom_rng_normal(&r);
    for (int k = 0; k < BR; k++)
        for (int n = 0; n < BN; n++)
            for (int i = 0; i < BD; i++) bu[k][n][i] = (float)(0.1 * pow(10, n - 2) * loom_rng_normal(&r));
    loom_staleness_fn cst = {LOOM_STALENESS_CONSTANT, 0.5, 4};
    const char *strategies[] = {"fedavg", "fedadam"};
    for (int si = 0; si < 2; si++) {
        /* synchronous rounds */
        loom_engine_config ec;
        loom_engine_defaults(&ec);
        ec.dim = BD;
        ec.init = x0;
        ec.n_clients = BN;
        ec.rounds = BR;
        ec.pipe.strategy = strategies[si];
        loom_strategy_defaults(strategies[si], &ec.pipe.sp);
        loom_engine *s;
        CHECK_OK(loom_engine_create(&s, &ec));
        for (int k = 0; k < BR; k++) {
            CHECK_OK(loom_engine_open_round(s, 0, NULL, NULL));
            for (int n = BN - 1; n >= 0; n--) {
                loom_update u = {0, k + 1, (uint64_t)k, n, bw[n], 1.0, 1, LOOM_CODEC_F32, BD, bu[k][n], NULL, 0};
                CHECK_OK(loom_engine_submit(s, &u, 0, NULL));
            }
            CHECK_OK(loom_engine_close_round(s, 0));
            CHECK_OK(loom_engine_end_round(s, 0, NULL));
        }
        /* FedBuff, K = N, submitted in another order, from threads in the last cycle */
        loom_engine *b = make(LOOM_ENGINE_FEDBUFF, strategies[si], BD, x0, BN, BR, BN, BN, 0.6, cst, NULL);
        for (int k = 0; k < BR; k++) {
            loom_task t;
            for (int n = 0; n < BN; n++) {
                CHECK_OK(loom_engine_async_task(b, n, 0, &t));
                CHECK(t.version == (uint64_t)k, "cycle %d: client %d on version %llu", k, n, (unsigned long long)t.version);
            }
            if (k < BR - 1) {
                int order[BN] = {2, 0, 3, 1}, made = 0;
                for (int j = 0; j < BN; j++) {
                    loom_update_verdict v;
                    CHECK_OK(submit(b, order[j], (uint64_t)k, bw[order[j]], bu[k][order[j]], BD, &v, &made));
                    CHECK(made == (j == BN - 1), "FedBuff makes a version on the K-th update only (%d at %d)", made, j);
                }
                CHECK_OK(loom_engine_async_end_version(b, 0, NULL));
            } else {
                pthread_t th[BN];
                sub_arg sa[BN];
                reader_arg ra = {b, 1};
                pthread_t rth;
                pthread_create(&rth, NULL, reader_thread, &ra);
                for (int n = 0; n < BN; n++) {
                    sa[n] = (sub_arg){b, n, k, 0, 0};
                    pthread_create(&th[n], NULL, sub_thread, &sa[n]);
                }
                pthread_join(rth, NULL);
                CHECK(ra.ok, "locked copies while the submits run");
                int mades = 0;
                for (int n = 0; n < BN; n++) {
                    pthread_join(th[n], NULL);
                    CHECK(sa[n].rc == LOOM_OK, "threaded submit %d: %s", n, loom_errmsg());
                    mades += sa[n].made;
                }
                CHECK(mades == 1, "one of the threaded submits made the version (%d)", mades);
                float copy[BD];
                uint64_t ver = 0;
                CHECK_OK(loom_engine_async_copy_global(b, copy, &ver));
                CHECK(ver == BR && memcmp(copy, loom_engine_global(b), sizeof copy) == 0, "a locked copy of version %llu",
                      (unsigned long long)ver);
            }
        }
        CHECK(loom_engine_version(b) == BR, "FedBuff made %d versions", BR);
        CHECK(memcmp(loom_engine_global(b), loom_engine_global(s), sizeof x0) == 0,
              "%s: FedBuff with K = N equals synchronous rounds bit for bit", strategies[si]);
        CHECK(memcmp(loom_engine_global(b), x0, sizeof x0) != 0, "and the model moved");
        loom_engine_free(b);
        loom_engine_free(s);
    }
    /* server_lr 0 leaves the model unchanged */
    loom_engine *b;
    {
        loom_engine_config c;
        loom_engine_defaults(&c);
        c.dim = BD;
        c.init = x0;
        c.n_clients = BN;
        c.rounds = 2;
        c.mode = LOOM_ENGINE_FEDBUFF;
        c.buffer = 2;
        c.pipe.sp.server_lr = 0;
        c.staleness = (loom_staleness_fn){LOOM_STALENESS_POLY, 0.5, 0};
        CHECK_OK(loom_engine_create(&b, &c));
        loom_task t;
        for (int n = 0; n < BN; n++) CHECK_OK(loom_engine_async_task(b, n, 0, &t));
        for (int n = 0; n < BN; n++) CHECK_OK(submit(b, n, 0, bw[n], bu[0][n], BD, NULL, NULL));
        CHECK(loom_engine_version(b) == 2 && memcmp(loom_engine_global(b), x0, sizeof x0) == 0,
              "FedBuff with server_lr 0: two flushes, the model unchanged bit for bit");
        loom_engine_free(b);
    }
    /* FedBuff's staleness scaling: K = 1, an update at staleness 3 with poly 0.5 moves x by u / 2 */
    {
        loom_staleness_fn poly = {LOOM_STALENESS_POLY, 0.5, 0};
        b = make(LOOM_ENGINE_FEDBUFF, "fedavg", BD, x0, BN, 10, BN, 1, 0.6, poly, NULL);
        loom_task t;
        for (int n = 0; n < BN; n++) CHECK_OK(loom_engine_async_task(b, n, 0, &t));
        for (int n = 0; n < 3; n++) CHECK_OK(submit(b, n, 0, bw[n], bu[0][n], BD, NULL, NULL));
        float before[BD];
        memcpy(before, loom_engine_global(b), sizeof before);
        CHECK_OK(submit(b, 3, 0, bw[3], bu[0][3], BD, NULL, NULL));
        int ok = 1;
        for (int i = 0; i < BD; i++) ok &= near_f(loom_engine_global(b)[i], (double)before[i] + 0.5 * bu[0][3][i]);
        CHECK(ok, "FedBuff at staleness 3 with (1 + d)^-0.5: x + u / 2");
        loom_engine_free(b);
    }
}

/* ---- refusals ---- */

static void refusals(void) {
    float x0[AD] = {1, 2, 3, 4, 5, 6}, u[AD] = {0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
    loom_set_log(NULL, NULL, LOOM_ERROR); /* refusals are logged as warnings */
    loom_engine_config ec;
    loom_engine_defaults(&ec);
    ec.dim = AD;
    ec.init = x0;
    ec.n_clients = 3;
    ec.rounds = 4;
    ec.mode = LOOM_ENGINE_FEDASYNC;
    ec.concurrency = 2;
    ec.max_staleness = 1;
    capture cap = {0};
    ec.sink = (loom_metrics_sink){cap_round, cap_client, &cap};
    loom_engine *e;
    CHECK_OK(loom_engine_create(&e, &ec));
    loom_update_verdict v;
    int made;
    loom_task t;
    int rc = submit(e, 0, 0, 1, u, AD, &v, &made);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_NOT_SAMPLED && strstr(loom_errmsg(), "holds no task"),
          "an update without a task: %s", loom_errmsg());
    CHECK(loom_engine_open_round(e, 0, NULL, NULL) == LOOM_ESTATE && strstr(loom_errmsg(), "fedasync"),
          "synchronous calls refused in fedasync: %s", loom_errmsg());
    CHECK(loom_engine_async_task(e, 3, 0, &t) == LOOM_EINVAL, "no client 3");
    CHECK_OK(loom_engine_async_task(e, 0, 0, &t));
    CHECK_OK(loom_engine_async_task(e, 1, 0, &t));
    rc = loom_engine_async_task(e, 2, 0, &t);
    CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "concurrency"), "a third client past concurrency 2: %s",
          loom_errmsg());
    rc = submit(e, 0, 1, 1, u, AD, &v, &made);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_WRONG_ROUND && strstr(loom_errmsg(), "newer"), "a version from the future: %s",
          loom_errmsg());
    loom_update cu = upd(0, 0, 1, u, AD);
    CHECK_OK(loom_engine_async_check(e, &cu, 0, &v));
    float nan_u[AD] = {0, 0, NAN, 0, 0, 0};
    cu.values = nan_u;
    rc = loom_engine_async_check(e, &cu, 0, &v);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_NONFINITE, "check: NaN refused (%s)", loom_errmsg());
    CHECK(loom_engine_version(e) == 0 && loom_engine_async_training(e) == 2, "check records and consumes nothing");
    CHECK_OK(submit(e, 0, 0, 1, u, AD, &v, &made)); /* version 1 */
    rc = submit(e, 0, 0, 1, u, AD, &v, &made);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_NOT_SAMPLED, "a replayed update: %s", loom_errmsg());
    CHECK_OK(loom_engine_async_task(e, 0, 0, &t)); /* client 0 on version 1 */
    CHECK(t.version == 1, "client 0 pulled version 1");
    rc = submit(e, 0, 0, 1, u, AD, &v, &made);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_WRONG_ROUND && strstr(loom_errmsg(), "was handed version 1"),
          "an update claiming another version than handed out: %s", loom_errmsg());
    CHECK_OK(submit(e, 0, 1, 1, u, AD, &v, &made)); /* version 2; client 1 (on 0) is now 2 behind */
    float before[AD];
    memcpy(before, loom_engine_global(e), sizeof before);
    rc = submit(e, 1, 0, 1, u, AD, &v, &made);
    CHECK(rc == LOOM_ERANGE && v == LOOM_UPDATE_STALE && strstr(loom_errmsg(), "2 versions old") && !made,
          "staleness 2 above max 1 refused as stale: %s", loom_errmsg());
    CHECK(memcmp(before, loom_engine_global(e), sizeof before) == 0, "the stale update changed nothing");
    rc = submit(e, 1, 0, 1, u, AD, &v, &made);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_NOT_SAMPLED, "the stale update consumed the task");
    CHECK(loom_engine_async_training(e) == 0, "nobody training");
    float bad[AD] = {0, NAN, 0, 0, 0, 0};
    CHECK_OK(loom_engine_async_task(e, 2, 0, &t));
    rc = submit(e, 2, 2, 1, bad, AD, &v, &made);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_NONFINITE, "NaN refused: %s", loom_errmsg());
    CHECK_OK(loom_engine_async_task(e, 2, 0, &t));
    CHECK_OK(loom_engine_async_fail(e, 2, "test", 0));
    CHECK(loom_engine_async_fail(e, 2, "again", 0) == LOOM_EINVAL, "a second failure report without a task refused");
    CHECK_OK(loom_engine_async_task(e, 2, 0, &t));
    CHECK_OK(submit(e, 2, 2, 1, u, AD, &v, &made));
    CHECK_OK(loom_engine_async_task(e, 2, 0, &t));
    loom_task t0;
    CHECK_OK(loom_engine_async_task(e, 0, 0, &t0)); /* still training when the last version is made */
    CHECK_OK(submit(e, 2, 3, 1, u, AD, &v, &made));
    CHECK(loom_engine_version(e) == 4, "four versions");
    memcpy(before, loom_engine_global(e), sizeof before);
    rc = submit(e, 0, (int)t0.version, 1, u, AD, &v, &made);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_LATE && strstr(loom_errmsg(), "too late") && !made,
          "an update after the last version is late: %s", loom_errmsg());
    CHECK(loom_engine_version(e) == 4 && memcmp(before, loom_engine_global(e), sizeof before) == 0,
          "the late update made no fifth version");
    CHECK_OK(loom_engine_async_fail(e, 0, "the run is over", 0));
    rc = loom_engine_async_task(e, 1, 0, &t);
    CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "all 4 versions"), "no task once every version is made: %s",
          loom_errmsg());
    CHECK_OK(loom_engine_async_end_version(e, 0, NULL));
    /* version 3's row (emitted when version 4 was made) holds the refusals since version 2 */
    CHECK(cap.rows == 4, "four rows (%d)", cap.rows);
    loom_engine_free(e);

    /* another run's update */
    loom_engine_defaults(&ec);
    ec.dim = AD;
    ec.init = x0;
    ec.n_clients = 3;
    ec.mode = LOOM_ENGINE_FEDBUFF;
    ec.run_id = 0x1234;
    CHECK_OK(loom_engine_create(&e, &ec));
    CHECK_OK(loom_engine_async_task(e, 1, 0, &t));
    CHECK(t.run_id == 0x1234, "the task names the run");
    loom_update ru = upd(1, 0, 1, u, AD);
    ru.run_id = 0x999;
    rc = loom_engine_async_submit(e, &ru, 0, &v, &made);
    CHECK(rc != LOOM_OK && v == LOOM_UPDATE_WRONG_ROUND && strstr(loom_errmsg(), "run 999"), "another run: %s",
          loom_errmsg());
    ru.run_id = 0x1234;
    CHECK_OK(loom_engine_async_submit(e, &ru, 0, &v, &made)); /* the task was not consumed by the refusal */
    loom_engine_free(e);

    /* configurations */
    struct {
        loom_engine_mode mode;
        const char *strategy;
        double alpha;
        int conc, buf;
        const char *want;
    } cfgs[] = {
        {LOOM_ENGINE_FEDASYNC, "fedavg", 1.5, 0, 0, "--async-alpha"},
        {LOOM_ENGINE_FEDASYNC, "fedavg", 0.5, 4, 0, "--concurrency 4"},
        {LOOM_ENGINE_FEDBUFF, "fedavg", 0.5, 0, -1, "--buffer"},
        {LOOM_ENGINE_FEDASYNC, "fedadam", 0.5, 0, 0, "fedasync"},
        {LOOM_ENGINE_FEDBUFF, "scaffold", 0.5, 0, 0, "scaffold"},
        {LOOM_ENGINE_FEDBUFF, "fedsgd", 0.5, 0, 0, "fedsgd"},
    };
    for (int i = 0; i < 6; i++) {
        loom_engine_defaults(&ec);
        ec.dim = AD;
        ec.init = x0;
        ec.n_clients = 3;
        ec.mode = cfgs[i].mode;
        ec.pipe.strategy = cfgs[i].strategy;
        loom_strategy_defaults(cfgs[i].strategy, &ec.pipe.sp);
        ec.async_alpha = cfgs[i].alpha;
        ec.concurrency = cfgs[i].conc;
        ec.buffer = cfgs[i].buf;
        e = NULL;
        rc = loom_engine_create(&e, &ec);
        CHECK(rc == LOOM_EINVAL && !e && strstr(loom_errmsg(), cfgs[i].want), "config %d refused naming %s: %s", i,
              cfgs[i].want, loom_errmsg());
        loom_engine_free(e);
    }
    loom_set_log(NULL, NULL, LOOM_INFO);
}

/* ---- the simulator ---- */

static loom_model *model;
static loom_dataset *ds;

static int mk(void *ud, loom_trainer **tr, float **vec) {
    *vec = loom_alloc(model->n_params * sizeof(float));
    return loom_trainer_create(tr, model, *vec, (loom_train_config *)ud);
}
static void fr(void *ud, loom_trainer *tr, float *vec) {
    (void)ud;
    loom_trainer_free(tr);
    loom_free(vec);
}

static void sim_config(loom_sim_config *c, loom_train_config *tc, loom_partition *p) {
    loom_sim_defaults(c);
    c->dim = model->n_params;
    c->init = model->params;
    c->make_worker = mk;
    c->free_worker = fr;
    c->worker_ud = tc;
    c->ds = ds;
    c->part = p;
    c->B = (int)tc->B;
    c->T = (int)tc->T;
    c->eval_every = 0;
    c->seed = 5;
    c->fit.local_steps = 2;
}

static int count_rows(const char *dir, const char *what) {
    char path[512], line[65536];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f && fgets(line, sizeof line, f)) n += strstr(line, what) != NULL;
    if (f) fclose(f);
    return n;
}

typedef struct {
    int rows, ordered;
    uint64_t last_version;
    double last_clock, max_staleness;
} sim_watch;

static void on_round(const loom_round_metrics *m, void *ud) {
    sim_watch *w = ud;
    w->ordered &= m->version == w->last_version + 1 && m->round == (int)m->version && m->clock >= w->last_clock;
    w->last_version = m->version;
    w->last_clock = m->clock;
    w->max_staleness = fmax(w->max_staleness, m->staleness_max);
    w->rows++;
}

static void sim_async(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 5, 0, 3));
    CHECK_OK(loom_partition_split_test(p, 0.2, 3, 0));
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.kind = LOOM_OPT_SGD;
    tc.opt.lr = 0.05f;
    tc.opt.weight_decay = 0;
    tc.opt.momentum = 0;
    tc.clip = 0;
    tc.warmup = 0;
    tc.total_steps = 0;
    tc.B = 2;
    tc.T = 16;
    size_t n = model->n_params;
    float *g1 = loom_alloc(n * 4), *g3 = loom_alloc(n * 4);
    loom_sim_config c;
    /* FedBuff with K = N, concurrency N, equal speeds == synchronous FedAvg with every client */
    sim_config(&c, &tc, p);
    c.rounds = 3;
    CHECK_OK(loom_sim_run(&c, g1));
    c.mode = LOOM_ENGINE_FEDBUFF;
    c.buffer = 5;
    c.concurrency = 5;
    c.workers = 2;
    CHECK_OK(loom_sim_run(&c, g3));
    CHECK(memcmp(g1, g3, n * 4) == 0, "sim: FedBuff K = N at equal speeds equals synchronous FedAvg bit for bit");
    CHECK(memcmp(g1, model->params, n * 4) != 0, "the run trained");
    /* both modes, client speeds spread, evaluation on: 1 and 3 workers give the same bits */
    loom_engine_mode modes[] = {LOOM_ENGINE_FEDASYNC, LOOM_ENGINE_FEDBUFF};
    for (int mi = 0; mi < 2; mi++) {
        sim_config(&c, &tc, p);
        c.mode = modes[mi];
        c.rounds = 6;
        c.concurrency = 3;
        c.buffer = 2;
        c.async_alpha = 0.7;
        c.staleness = (loom_staleness_fn){LOOM_STALENESS_HINGE, 0.5, 1};
        c.step_seconds = 1;
        c.time_spread = 0.8;
        c.eval_every = 3;
        char dir[256];
        test_tmpdir(dir, sizeof dir);
        c.out_dir = dir;
        c.workers = 1;
        sim_watch w = {0, 1, 0, 0, 0};
        c.on_round = on_round;
        c.cb_ud = &w;
        CHECK_OK(loom_sim_run(&c, g1));
        c.on_round = NULL;
        CHECK(w.rows == 6 && w.ordered, "%s: versions 1..6 in order on a clock that never goes back (%d rows)",
              loom_engine_mode_name(modes[mi]), w.rows);
        CHECK(w.max_staleness >= 1 && w.last_clock > 0, "%s: spread speeds make stale updates (max %g, clock %g)",
              loom_engine_mode_name(modes[mi]), w.max_staleness, w.last_clock);
        CHECK(count_rows(dir, "\"type\":\"round\"") == 6, "%s: one round row per version (%d)",
              loom_engine_mode_name(modes[mi]), count_rows(dir, "\"type\":\"round\""));
        CHECK(count_rows(dir, "\"eval_loss\"") == 2, "%s: evaluated at versions 3 and 6 (%d rows)",
              loom_engine_mode_name(modes[mi]), count_rows(dir, "\"eval_loss\""));
        CHECK(test_rmtree(dir) == 0, "scratch directory removed");
        c.out_dir = NULL;
        c.workers = 3;
        CHECK_OK(loom_sim_run(&c, g3));
        CHECK(memcmp(g1, g3, n * 4) == 0, "%s: 1 and 3 workers give bitwise identical models",
              loom_engine_mode_name(modes[mi]));
        CHECK(memcmp(g1, model->params, n * 4) != 0, "%s trained", loom_engine_mode_name(modes[mi]));
        /* client lr 0: every delta is 0, the model stays, bit for bit */
        tc.opt.lr = 0;
        CHECK_OK(loom_sim_run(&c, g3));
        CHECK(memcmp(g3, model->params, n * 4) == 0, "%s with client lr 0: unchanged bit for bit",
              loom_engine_mode_name(modes[mi]));
        tc.opt.lr = 0.05f;
        /* alpha 0 (FedAsync) leaves the model unchanged too */
        if (modes[mi] == LOOM_ENGINE_FEDASYNC) {
            c.async_alpha = 0;
            CHECK_OK(loom_sim_run(&c, g3));
            CHECK(memcmp(g3, model->params, n * 4) == 0, "fedasync alpha 0: unchanged bit for bit");
        }
    }
    /* resume is refused in the asynchronous modes */
    sim_config(&c, &tc, p);
    c.mode = LOOM_ENGINE_FEDASYNC;
    c.resume = 1;
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    c.out_dir = dir;
    int rc = loom_sim_run(&c, g3);
    CHECK(rc == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "--resume") && strstr(loom_errmsg(), "fedasync"),
          "resume refused in fedasync: %s", loom_errmsg());
    CHECK(test_rmtree(dir) == 0, "scratch directory removed");
    loom_free(g1);
    loom_free(g3);
    loom_partition_free(p);
}

/* ---- the simulator's schedule against a reference written from its documented rules ----
 * A toy client algorithm pulls the model half-way to a target of its own, u = (target_k - x_tau) / 2,
 * so every update depends on the version the client trained on. The reference replays the schedule
 * of include/loom/sim.h here: durations loom_sim_client_seconds, the first clients from the round-0
 * sample, arrivals by (time, client id), freed places refilled after each instant from the
 * LOOM_STREAM_ASYNC_NEXT stream among the idle clients, and applies FedAsync's (1 - a) x + a y or
 * FedBuff's weighted mean in double. */

enum { TD = 8, TN = 5 };
static char toy_trainer; /* the toy algorithm needs no trainer: a placeholder object */

/* A client's identity, as the toy sees it: a hash of its first batch (its own data in its own order). */
static uint64_t batch_hash(loom_batcher *b) {
    int32_t tk[2 * 16], tg[2 * 16];
    loom_batcher_fill(b, 0, tk, tg, NULL);
    uint64_t h = 17;
    for (int i = 0; i < 2 * 16; i++) h = loom_hash2(h, (uint64_t)(uint32_t)tk[i]);
    return h;
}

static double toy_target(uint64_t h, int i) { return (double)((h >> (4 * i)) & 15) / 4.0 - 2.0; }

static int toy_fit(const loom_client_ctx *ctx, const loom_fit_task *t, loom_client_state *st, loom_fit_output *out) {
    uint64_t h = batch_hash(t->data);
    for (size_t i = 0; i < ctx->dim; i++) out->update[i] = (float)((toy_target(h, (int)i) - t->global[i]) * 0.5);
    out->res.loss = 1;
    out->res.tokens = 1;
    return LOOM_OK;
}
static int toy_eval(const loom_client_ctx *ctx, const loom_eval_task *t, loom_eval_result *r) {
    memset(r, 0, sizeof *r);
    return LOOM_OK;
}
static const loom_client_algo toy_algo = {"toy", toy_fit, toy_eval};

static int toy_mk(void *ud, loom_trainer **tr, float **vec) {
    *tr = (loom_trainer *)(void *)&toy_trainer;
    *vec = loom_alloc(TD * sizeof(float));
    return LOOM_OK;
}
static void toy_fr(void *ud, loom_trainer *tr, float *vec) { loom_free(vec); }

static void reference(const loom_sim_config *c, const loom_partition *p, double *x) {
    const int C = c->concurrency, N = TN;
    int list[TN], n0 = 0, busy[TN] = {0};
    loom_engine_sample(N, C, 0, c->seed, 0, list, &n0);
    struct {
        int active, client;
        double arrive;
        uint64_t version;
        double xtau[TD];
    } job[TN];
    uint64_t t = 0;
    for (int i = 0; i < TD; i++) x[i] = c->init[i];
    for (int k = 0; k < n0; k++) {
        job[k].active = 1;
        job[k].client = list[k];
        job[k].arrive = loom_sim_client_seconds(c, list[k]);
        job[k].version = 0;
        for (int i = 0; i < TD; i++) job[k].xtau[i] = x[i];
        busy[list[k]] = 1;
    }
    loom_rng next;
    loom_rng_init(&next, c->seed, LOOM_STREAM_ASYNC_NEXT);
    uint64_t hash[TN];
    for (int k = 0; k < N; k++) {
        loom_batcher_opts bo;
        loom_batcher_opts_init(&bo);
        bo.B = 2;
        bo.T = 16;
        bo.seed = loom_sim_client_seed(c->seed, k);
        loom_batcher *b;
        CHECK_OK(loom_batcher_create(&b, ds, p->clients[k].train, p->clients[k].n_train, &bo));
        hash[k] = batch_hash(b);
        loom_batcher_free(b);
    }
    double acc[TD] = {0}, W = 0;
    int in_buf = 0;
    while (t < (uint64_t)c->rounds) {
        double T = INFINITY;
        for (int k = 0; k < C; k++)
            if (job[k].active && job[k].arrive < T) T = job[k].arrive;
        int order[TN], nb = 0;
        for (int id = 0; id < N; id++) /* the arrivals at T, by client id */
            for (int k = 0; k < C; k++)
                if (job[k].active && job[k].arrive == T && job[k].client == id) order[nb++] = k;
        int freed[TN], nf = 0;
        for (int q = 0; q < nb && t < (uint64_t)c->rounds; q++) {
            int k = order[q], cl = job[k].client;
            double s = loom_staleness_weight(&c->staleness, t - job[k].version), u[TD];
            for (int i = 0; i < TD; i++) u[i] = (float)((toy_target(hash[cl], i) - (float)job[k].xtau[i]) * 0.5);
            if (c->mode == LOOM_ENGINE_FEDASYNC) {
                double a = c->async_alpha * s;
                for (int i = 0; i < TD; i++) x[i] = (float)((1 - a) * x[i] + a * (job[k].xtau[i] + u[i]));
                t++;
            } else {
                double w = (double)p->clients[cl].n_train;
                for (int i = 0; i < TD; i++) acc[i] += w * (float)(u[i] * s);
                W += w;
                if (++in_buf == c->buffer) {
                    for (int i = 0; i < TD; i++) x[i] = (float)(x[i] + acc[i] / W);
                    memset(acc, 0, sizeof acc);
                    W = 0;
                    in_buf = 0;
                    t++;
                }
            }
            job[k].active = 0;
            busy[cl] = 0;
            freed[nf++] = k;
        }
        if (t >= (uint64_t)c->rounds) break;
        for (int q = 0; q < nf; q++) {
            int n_idle = 0;
            for (int i = 0; i < N; i++) n_idle += !busy[i];
            int pick = (int)loom_rng_below(&next, (uint32_t)n_idle), cl = -1;
            for (int i = 0; i < N; i++)
                if (!busy[i] && pick-- == 0) {
                    cl = i;
                    break;
                }
            int k = freed[q];
            job[k].active = 1;
            job[k].client = cl;
            job[k].arrive = T + loom_sim_client_seconds(c, cl);
            job[k].version = t;
            for (int i = 0; i < TD; i++) job[k].xtau[i] = x[i];
            busy[cl] = 1;
        }
    }
}

static void sim_schedule(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, TN, 0, 3));
    float init[TD] = {0.3f, -0.2f, 1.0f, 0.0f, 2.0f, -1.5f, 0.25f, 0.75f};
    loom_sim_config c;
    loom_sim_defaults(&c);
    c.dim = TD;
    c.init = init;
    c.make_worker = toy_mk;
    c.free_worker = toy_fr;
    c.ds = ds;
    c.part = p;
    c.B = 2;
    c.T = 16;
    c.seed = 21;
    c.algo = &toy_algo;
    c.fit.local_steps = 3;
    c.step_seconds = 1;
    c.concurrency = 3;
    c.rounds = 14;
    c.async_alpha = 0.7;
    c.staleness = (loom_staleness_fn){LOOM_STALENESS_HINGE, 0.5, 1};
    loom_set_log(NULL, NULL, LOOM_ERROR);
    for (int mi = 0; mi < 2; mi++)
        for (int spread = 0; spread < 2; spread++) {
            c.mode = mi ? LOOM_ENGINE_FEDBUFF : LOOM_ENGINE_FEDASYNC;
            c.buffer = 2;
            c.time_spread = spread ? 0.9 : 0; /* 0: every arrival of an instant ties */
            c.workers = 1 + 2 * spread;
            float g[TD];
            double ref[TD];
            CHECK_OK(loom_sim_run(&c, g));
            reference(&c, p, ref);
            int ok = 1;
            double worst = 0;
            for (int i = 0; i < TD; i++) {
                ok &= fabs(g[i] - ref[i]) <= 1e-5 * fabs(ref[i]) + 1e-6;
                worst = fmax(worst, fabs(g[i] - ref[i]));
            }
            CHECK(ok, "%s, time spread %g: the simulator follows the reference schedule (max |d| %g)",
                  loom_engine_mode_name(c.mode), c.time_spread, worst);
            CHECK(memcmp(g, init, sizeof g) != 0, "and the model moved");
        }
    /* no versions to make: the initial model */
    c.rounds = 0;
    float g0[TD];
    CHECK_OK(loom_sim_run(&c, g0));
    CHECK(memcmp(g0, init, sizeof g0) == 0, "rounds 0: the initial model");
    c.rounds = 14;
    /* broken and failing clients are refused and counted; the run goes on */
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    c.out_dir = dir;
    c.mode = LOOM_ENGINE_FEDASYNC;
    loom_fault faults[] = {{1, LOOM_FAULT_NAN}, {2, LOOM_FAULT_FAIL}, {3, LOOM_FAULT_SHORT}};
    c.faults = faults;
    c.n_faults = 3;
    float g[TD];
    CHECK_OK(loom_sim_run(&c, g));
    CHECK(count_rows(dir, "\"type\":\"round\"") == c.rounds, "fedasync with faults: %d versions",
          count_rows(dir, "\"type\":\"round\""));
    CHECK(count_rows(dir, "\"status\":\"non-finite value\"") > 0 && count_rows(dir, "\"status\":\"client failure\"") > 0 &&
              count_rows(dir, "\"status\":\"wrong length\"") > 0,
          "the refused arrivals have their rows");
    CHECK(test_rmtree(dir) == 0, "scratch directory removed");
    c.out_dir = NULL;
    /* every client broken: the run stops with a clear error instead of spinning */
    loom_fault all[TN];
    for (int k = 0; k < TN; k++) all[k] = (loom_fault){k, LOOM_FAULT_FAIL};
    c.faults = all;
    c.n_faults = TN;
    int rc = loom_sim_run(&c, g);
    CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "without a new version"), "all clients failing: %s", loom_errmsg());
    loom_set_log(NULL, NULL, LOOM_INFO);
    loom_partition_free(p);
}

int main(void) {
    staleness_functions();
    fedasync_mixing();
    fedbuff_equals_sync();
    refusals();
    loom_config cfg;
    loom_config_named(&cfg, "gpt2-tiny");
    cfg.vocab = 259;
    cfg.n_layer = 1;
    cfg.dim = 32;
    cfg.hidden = 64;
    cfg.n_head = cfg.n_kv_head = 2;
    cfg.max_seq = 32;
    CHECK_OK(loom_model_create(&model, &cfg, 7));
    loom_tokenizer *tok = NULL;
    CHECK_OK(loom_tokenizer_byte(&tok));
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = loom_dataset_format("text");
    o.max_examples = 200;
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/tinyshakespeare/input.txt"), &o, tok));
    if (model && ds) sim_async();
    if (ds) sim_schedule();
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(model);
    return test_summary();
}
