/* Zeroth-order clients (include/loom/zo.h), how we know they are right:
 *  - a forward-only trainer holds exactly the inference workspace (no backward storage)
 *  - MeZO with lr 0 leaves the model bit for bit (restore by copy); the in-place restore stays within
 *    its rounding bound, recomputed here value by value
 *  - the projected gradient approximates grad L . z (backprop), within a bound derived from the
 *    difference of two step sizes
 *  - one MeZO client in the simulator equals centralized MeZO written out here from the primitives
 *  - FedKSeed: replaying a client's (seed, scalar) pairs reproduces its model bit for bit; two clients
 *    with the same data and seeds give the same pairs; lr 0 leaves the model; the seed_scalar codec is
 *    lossless; the simulator's global K-vector is the weighted mean of the clients' K-vectors, under
 *    secure aggregation the same sums, under DP the clipped mean, under median the per-seed median */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/fl.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/pipeline.h"
#include "loom/sim.h"
#include "loom/streams.h"
#include "loom/tokenizer.h"
#include "loom/train.h"
#include "loom/update.h"
#include "loom/zo.h"
#include "fl_fixture.h"
#include "test.h"

static loom_model *model;
static loom_dataset *ds;
static loom_tokenizer *tok;
static size_t NP;

enum { B = 2, T = 16 };

static void fo_config(loom_train_config *tc, int forward_only) {
    loom_train_defaults(tc);
    tc->opt.kind = LOOM_OPT_SGD;
    tc->opt.lr = 0.05f;
    tc->opt.weight_decay = 0;
    tc->clip = 0;
    tc->B = B;
    tc->T = T;
    tc->forward_only = forward_only;
}

static int mk(void *ud, loom_trainer **tr, float **vec) {
    loom_train_config *tc = ud;
    *vec = loom_alloc(NP * sizeof(float));
    return loom_trainer_create(tr, model, *vec, tc);
}
static void fr(void *ud, loom_trainer *tr, float *vec) {
    (void)ud;
    loom_trainer_free(tr);
    loom_free(vec);
}

static loom_batcher *batcher_of(const loom_partition *p, int client, uint64_t seed) {
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = B;
    bo.T = T;
    bo.seed = seed;
    loom_batcher *b = NULL;
    CHECK_OK(loom_batcher_create(&b, ds, p->clients[client].train, p->clients[client].n_train, &bo));
    return b;
}

/* ---- MeZO ---- */

static void forward_only_workspace(void) {
    loom_train_config tc;
    fo_config(&tc, 1);
    float *v = loom_alloc(NP * sizeof(float));
    memcpy(v, loom_model_params(model), NP * sizeof(float));
    loom_trainer *tr = NULL, *bp = NULL;
    CHECK_OK(loom_trainer_create(&tr, model, v, &tc));
    loom_ws *inf = NULL, *trn = NULL;
    CHECK_OK(loom_ws_create_infer(&inf, model, B, T, NULL));
    CHECK_OK(loom_ws_create(&trn, model, B, T));
    if (tr && inf && trn) {
        size_t a = loom_ws_bytes(loom_trainer_ws(tr)), b = loom_ws_bytes(inf), c = loom_ws_bytes(trn);
        CHECK(a == b, "forward-only trainer's workspace %zu bytes, the inference workspace %zu", a, b);
        CHECK(c > b, "the training workspace (%zu bytes) holds the backward activations the inference one (%zu) has not", c, b);
        int32_t tk[B * T], tg[B * T];
        for (int i = 0; i < B * T; i++) tk[i] = i % 200, tg[i] = (i + 1) % 200;
        int rc = loom_trainer_step(tr, tk, tg, NULL, NULL);
        CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "forward-only"), "a forward-only trainer refuses a step: %d %s", rc,
              loom_errmsg());
        float l = 0;
        CHECK_OK(loom_trainer_loss_at(tr, v, tk, tg, &l));
        CHECK(isfinite(l) && l > 0, "forward-only loss %g", (double)l);
    }
    /* the same with a LoRA set: the plan's forward-only workspace */
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, model, &pc, 3));
    if (ts) {
        float *lv = loom_alloc(loom_tset_dim(ts) * sizeof(float));
        memcpy(lv, loom_tset_data(ts), loom_tset_dim(ts) * sizeof(float));
        CHECK_OK(loom_trainer_create_peft(&bp, model, loom_model_params(model), ts, lv, &tc));
        loom_ws *li = NULL;
        CHECK_OK(loom_ws_create_infer(&li, model, B, T, loom_tset_plan(ts)));
        if (bp && li)
            CHECK(loom_ws_bytes(loom_trainer_ws(bp)) == loom_ws_bytes(li), "LoRA forward-only workspace %zu vs %zu",
                  loom_ws_bytes(loom_trainer_ws(bp)), loom_ws_bytes(li));
        loom_ws_free(li);
        loom_trainer_free(bp);
        loom_free(lv);
        loom_tset_free(ts);
    }
    loom_ws_free(inf);
    loom_ws_free(trn);
    loom_trainer_free(tr);
    loom_free(v);
}

/* MeZO's fit on one client for one round from the model's parameters; returns the update in upd */
static int mezo_round(loom_trainer *tr, float *vec, const loom_partition *p, float eps, float lr, int restore,
                      int steps, float *upd, uint64_t round_seed) {
    loom_batcher *b = batcher_of(p, 0, 11);
    loom_fit_task task;
    memset(&task, 0, sizeof task);
    task.round = 1;
    task.global = loom_model_params(model);
    task.data = b;
    task.fc.local_steps = steps;
    task.fc.zo_eps = eps;
    task.fc.zo_lr = lr;
    task.fc.zo_restore = restore;
    task.fc.sgd_noise_seed = round_seed;
    loom_client_state st;
    loom_client_state_init(&st);
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = upd;
    loom_client_ctx ctx = {tr, vec, NP, NULL};
    int rc = loom_client_mezo.fit(&ctx, &task, &st, &out);
    loom_batcher_free(b);
    return rc;
}

static void mezo_lr0_and_restore(const loom_partition *p) {
    loom_train_config tc;
    fo_config(&tc, 1);
    float *v = loom_alloc(NP * sizeof(float)), *upd = loom_alloc(NP * sizeof(float));
    loom_trainer *tr = NULL;
    CHECK_OK(loom_trainer_create(&tr, model, v, &tc));
    if (!tr) return;
    const float *x = loom_model_params(model);
    CHECK_OK(mezo_round(tr, v, p, 1e-3f, 0.0f, LOOM_ZO_RESTORE_COPY, 3, upd, 77));
    CHECK(!memcmp(v, x, NP * sizeof(float)), "MeZO with lr 0 (restore by copy) leaves the model bit for bit");
    size_t nz = 0;
    for (size_t i = 0; i < NP; i++) nz += upd[i] != 0;
    CHECK(nz == 0, "lr 0: the update is all zeros (%zu non-zero)", nz);

    /* in place: one estimate, then every value within 2^-24 (|p1| + |p2| + |p3|) of the original, the
     * three intermediate values recomputed here from loom_rng_normal_at */
    int32_t tk[B * T], tg[B * T];
    loom_batcher *b = batcher_of(p, 0, 11);
    loom_batcher_fill(b, 0, tk, tg, NULL);
    memcpy(v, x, NP * sizeof(float));
    double g;
    float l;
    const float eps = 1e-2f;
    uint64_t seed = 12345;
    CHECK_OK(loom_zo_estimate(tr, v, tk, tg, seed, eps, LOOM_ZO_RESTORE_INPLACE, NULL, &g, &l));
    size_t bad = 0, moved = 0;
    for (size_t i = 0; i < NP; i++) {
        float a = eps * loom_rng_normal_at(seed, LOOM_STREAM_ZO_PERTURB, i);
        float p1 = x[i] + a, p2 = p1 - 2.0f * a, p3 = p2 + a;
        double bound = ldexp(fabs(p1) + fabs(p2) + fabs(p3), -24);
        bad += fabs((double)v[i] - x[i]) > bound;
        moved += v[i] != x[i];
    }
    CHECK(bad == 0, "in-place restore: %zu of %zu values beyond the rounding bound", bad, NP);
    printf("in-place restore: %zu of %zu values differ from the original after +eps, -2eps, +eps (eps %g)\n", moved, NP,
           (double)eps);
    /* restore by copy: exact */
    memcpy(v, x, NP * sizeof(float));
    float *scr = loom_alloc(NP * sizeof(float));
    CHECK_OK(loom_zo_estimate(tr, v, tk, tg, seed, eps, LOOM_ZO_RESTORE_COPY, scr, &g, &l));
    CHECK(!memcmp(v, x, NP * sizeof(float)), "restore by copy is exact");
    int rc = loom_zo_estimate(tr, v, tk, tg, seed, 0.0f, LOOM_ZO_RESTORE_COPY, scr, &g, &l);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "--zo-eps"), "eps 0 refused naming --zo-eps: %s", loom_errmsg());
    loom_free(scr);
    loom_batcher_free(b);
    loom_trainer_free(tr);
    loom_free(v);
    loom_free(upd);
}

static void projected_gradient(const loom_partition *p) {
    loom_train_config tc;
    fo_config(&tc, 0);
    float *v = loom_alloc(NP * sizeof(float)), *scr = loom_alloc(NP * sizeof(float));
    memcpy(v, loom_model_params(model), NP * sizeof(float));
    loom_trainer *tr = NULL;
    CHECK_OK(loom_trainer_create(&tr, model, v, &tc));
    if (!tr) return;
    int32_t tk[B * T], tg[B * T];
    loom_batcher *b = batcher_of(p, 0, 11);
    loom_batcher_fill(b, 0, tk, tg, NULL);
    float l;
    CHECK_OK(loom_trainer_gradient(tr, tk, tg, &l));
    for (uint64_t seed = 1; seed <= 3; seed++) {
        /* grad L . z in double, z from loom_rng_normal_at */
        const float *gr = loom_trainer_grads(tr);
        double dd = 0;
        for (size_t i = 0; i < NP; i++) dd += (double)gr[i] * loom_rng_normal_at(seed, LOOM_STREAM_ZO_PERTURB, i);
        double g1, g2;
        float l1;
        const float eps = 2e-3f;
        CHECK_OK(loom_zo_estimate(tr, v, tk, tg, seed, eps, LOOM_ZO_RESTORE_COPY, scr, &g1, &l1));
        CHECK_OK(loom_zo_estimate(tr, v, tk, tg, seed, 2 * eps, LOOM_ZO_RESTORE_COPY, scr, &g2, &l1));
        /* truncation O(eps^2): g(2 eps) - g(eps) is 3x the error at eps; the float losses' rounding
         * (relative 2^-24 per value, summed over a few hundred terms) divided by 2 eps */
        double tol = fabs(g2 - g1) + 256.0 * ldexp(fabs((double)l), -24) / eps;
        CHECK(fabs(g1 - dd) <= tol, "seed %llu: projected gradient %.6g vs grad . z %.6g (tol %.3g)",
              (unsigned long long)seed, g1, dd, tol);
        CHECK(fabs(dd) > 10 * tol, "the directional derivative %.3g is well above the tolerance %.3g", dd, tol);
    }
    loom_batcher_free(b);
    loom_trainer_free(tr);
    loom_free(v);
    loom_free(scr);
}

static void mezo_one_client_equals_centralized(const loom_partition *p) {
    loom_train_config tc;
    fo_config(&tc, 1);
    loom_sim_config c;
    loom_sim_defaults(&c);
    c.dim = NP;
    c.init = loom_model_params(model);
    c.make_worker = mk;
    c.free_worker = fr;
    c.worker_ud = &tc;
    c.ds = ds;
    c.part = p;
    c.B = B;
    c.T = T;
    c.eval_every = 0;
    c.seed = 5;
    c.rounds = 2;
    c.fit.local_steps = 3;
    c.fit.zo_eps = 1e-3f;
    c.fit.zo_lr = 1e-3f;
    c.algo = &loom_client_mezo;
    float *g = loom_alloc(NP * sizeof(float));
    CHECK_OK(loom_sim_run(&c, g));
    /* centralized MeZO written out from the primitives: same batches, same seeds */
    float *w = loom_alloc(NP * sizeof(float)), *z = loom_alloc(NP * sizeof(float)), *keep = loom_alloc(NP * sizeof(float));
    memcpy(w, c.init, NP * sizeof(float));
    loom_trainer *tr = NULL;
    CHECK_OK(loom_trainer_create(&tr, model, w, &tc));
    uint64_t cs = loom_sim_client_seed(c.seed, 0);
    loom_batcher *b = batcher_of(p, 0, cs);
    int32_t tk[B * T], tg[B * T];
    for (int r = 1; r <= c.rounds && tr; r++)
        for (int s = 0; s < c.fit.local_steps; s++) {
            loom_batcher_fill(b, (uint64_t)((r - 1) * c.fit.local_steps + s), tk, tg, NULL);
            uint64_t seed = loom_hash2(loom_hash2(loom_hash2(cs, (uint64_t)r), LOOM_STREAM_ZO_PERTURB), (uint64_t)s);
            for (size_t i = 0; i < NP; i++) z[i] = loom_rng_normal_at(seed, LOOM_STREAM_ZO_PERTURB, i);
            memcpy(keep, w, NP * sizeof(float));
            float lp, lm;
            for (size_t i = 0; i < NP; i++) w[i] = keep[i] + c.fit.zo_eps * z[i];
            loom_trainer_loss_at(tr, w, tk, tg, &lp);
            for (size_t i = 0; i < NP; i++) w[i] = w[i] + (-2.0f * c.fit.zo_eps) * z[i];
            loom_trainer_loss_at(tr, w, tk, tg, &lm);
            double gr = ((double)lp - lm) / (2.0 * c.fit.zo_eps);
            float a = (float)(-(double)c.fit.zo_lr * gr);
            for (size_t i = 0; i < NP; i++) w[i] = keep[i] + a * z[i];
        }
    double d = 0, moved = 0;
    for (size_t i = 0; i < NP; i++) {
        d = fmax(d, fabs((double)g[i] - w[i]));
        moved = fmax(moved, fabs((double)w[i] - c.init[i]));
    }
    CHECK(d <= 1e-6, "1 MeZO client x 2 rounds x 3 steps vs 6 centralized MeZO steps: max |d| = %g", d);
    CHECK(moved > 1e-5, "MeZO moved the weights (%g)", moved);
    loom_batcher_free(b);
    loom_trainer_free(tr);
    loom_free(w);
    loom_free(z);
    loom_free(keep);
    loom_free(g);
}

/* ---- FedKSeed ---- */

static void kseed_client(void) {
    enum { K = 1024, E = 6 };
    loom_partition *p = NULL;
    CHECK_OK(loom_partition_iid(&p, ds->n, 1, 0, 1));
    const float *x = loom_model_params(model);
    loom_kseed *ks = NULL;
    CHECK_OK(loom_kseed_create(&ks, 9, K, LOOM_KSEED_UNIFORM, x, NP));
    loom_train_config tc;
    fo_config(&tc, 1);
    float *v1 = loom_alloc(NP * 4), *v2 = loom_alloc(NP * 4), *w = loom_alloc(NP * 4);
    loom_trainer *t1 = NULL, *t2 = NULL;
    CHECK_OK(loom_trainer_create(&t1, model, v1, &tc));
    CHECK_OK(loom_trainer_create(&t2, model, v2, &tc));
    if (!ks || !t1 || !t2) return;
    uint32_t i1[E], i2[E];
    float s1[E], s2[E], k1[K], k2[K];
    double loss;
    long ntok;
    /* one client's round, then its pairs replayed from the same start */
    memcpy(v1, x, NP * 4);
    loom_batcher *b = batcher_of(p, 0, 11);
    CHECK_OK(loom_kseed_fit(ks, t1, v1, b, 0, E, 1234, 1e-3f, 1e-2f, LOOM_ZO_RESTORE_COPY, k1, i1, s1, &loss, &ntok));
    loom_batcher_free(b);
    memcpy(w, x, NP * 4);
    CHECK_OK(loom_kseed_replay(ks, w, i1, s1, E));
    CHECK(!memcmp(w, v1, NP * 4), "replaying the client's %d (seed, scalar) pairs gives its model bit for bit", E);
    CHECK(memcmp(v1, x, NP * 4) != 0, "the round moved the model");
    /* the K-vector: the float sums of each seed's scalars, in step order */
    float want[K];
    memset(want, 0, sizeof want);
    for (int j = 0; j < E; j++) want[i1[j]] += s1[j];
    CHECK(!memcmp(want, k1, sizeof want), "the K-vector holds the per-seed sums of the pairs");
    /* a second client with the same data and seeds: the same history */
    memcpy(v2, x, NP * 4);
    b = batcher_of(p, 0, 11);
    CHECK_OK(loom_kseed_fit(ks, t2, v2, b, 0, E, 1234, 1e-3f, 1e-2f, LOOM_ZO_RESTORE_COPY, k2, i2, s2, &loss, &ntok));
    loom_batcher_free(b);
    CHECK(!memcmp(i1, i2, sizeof i1) && !memcmp(s1, s2, sizeof s1), "identical clients record identical histories");
    /* lr 0 leaves the model and sends zeros */
    memcpy(v2, x, NP * 4);
    b = batcher_of(p, 0, 11);
    CHECK_OK(loom_kseed_fit(ks, t2, v2, b, 0, E, 1234, 1e-3f, 0.0f, LOOM_ZO_RESTORE_COPY, k2, NULL, NULL, &loss, &ntok));
    loom_batcher_free(b);
    size_t nz = 0;
    for (int k = 0; k < K; k++) nz += k2[k] != 0;
    CHECK(!memcmp(v2, x, NP * 4) && nz == 0, "lr 0: the model is unchanged and the K-vector zero (%zu non-zero)", nz);

    /* the wire: seed_scalar is lossless and smaller than the dense K-vector */
    loom_update u = {1, 1, 0, 0, 10, 1.0, 5, LOOM_CODEC_F32, K, k1, NULL, 0};
    loom_codec_opts ss = {LOOM_CODEC_SEED_SCALAR, 0, 0}, f32 = {LOOM_CODEC_F32, 0, 0};
    uint8_t *buf = NULL;
    size_t n = 0;
    CHECK_OK(loom_update_encode(&u, &ss, &buf, &n));
    float dec[K];
    loom_update d;
    CHECK_OK(loom_update_decode(buf, n, K, &d, dec, NULL));
    CHECK(d.codec == LOOM_CODEC_SEED_SCALAR && !memcmp(dec, k1, sizeof dec), "seed_scalar round trip is exact");
    CHECK(n == loom_update_encoded_size(&u, &ss), "encoded size %zu = computed %zu", n, loom_update_encoded_size(&u, &ss));
    size_t dense = loom_update_encoded_size(&u, &f32);
    CHECK(n < dense && n < 600, "pairs %zu bytes < dense %zu bytes", n, dense);
    printf("FedKSeed upload, K = %d, %d steps: %zu bytes as pairs, %zu as the dense K-vector\n", K, E, n, dense);
    /* a message whose seed indices are not ascending is refused */
    int32_t ix0, ix1;
    size_t hl = 0;
    memcpy(&hl, buf, 8);
    uint8_t *data = buf + 8 + hl;
    memcpy(&ix0, data, 4);
    memcpy(&ix1, data + 4, 4);
    memcpy(data, &ix1, 4);
    memcpy(data + 4, &ix0, 4);
    int rc = loom_update_decode(buf, n, K, &d, dec, NULL);
    CHECK(rc == LOOM_EFORMAT && strstr(loom_errmsg(), "seed index"), "swapped seed indices refused: %s", loom_errmsg());
    free(buf);

    /* the global model of a K-vector: replayed seed by seed, ascending, written out here */
    memcpy(w, x, NP * 4);
    for (int k = 0; k < K; k++) {
        if (k1[k] == 0) continue;
        uint64_t sd = loom_hash2(loom_hash2(9, LOOM_STREAM_KSEED_POOL), (uint64_t)k);
        for (size_t i = 0; i < NP; i++) w[i] = w[i] + k1[k] * loom_rng_normal_at(sd, LOOM_STREAM_ZO_PERTURB, i);
    }
    CHECK_OK(loom_kseed_sync(ks, k1));
    CHECK(!memcmp(w, loom_kseed_model(ks), NP * 4), "sync expands the K-vector seed by seed");
    CHECK_OK(loom_kseed_sync(ks, k1)); /* the same version again: nothing to do */
    CHECK(!memcmp(w, loom_kseed_model(ks), NP * 4), "a second sync to the same version changes nothing");
    loom_kseed_free(ks);

    /* importance probabilities: p_k = exp(psi_k / max psi) / sum, psi = mean |difference| */
    CHECK_OK(loom_kseed_create(&ks, 9, 4, LOOM_KSEED_IMPORTANCE, x, NP));
    float S1[4] = {0.5f, 0, -1.0f, 0}, S2[4] = {0.5f, 0.25f, -3.0f, 0};
    CHECK_OK(loom_kseed_sync(ks, S1));
    CHECK_OK(loom_kseed_sync(ks, S2));
    double psi[4] = {0.5, 0.25, 1.5, 0}, e[4], sum = 0; /* seed 2 changed by 1 then 2: mean 1.5 */
    for (int k = 0; k < 4; k++) sum += e[k] = exp(psi[k] / 1.5);
    const double *pr = loom_kseed_probs(ks);
    for (int k = 0; k < 4; k++) CHECK_NEAR(pr[k], e[k] / sum, 1e-12);
    int hits[4] = {0};
    for (uint64_t s = 0; s < 4000; s++) hits[loom_kseed_pick(ks, 77, s)]++;
    CHECK(hits[2] > hits[0] && hits[0] > hits[1] && hits[1] > hits[3], "picks follow the probabilities: %d %d %d %d",
          hits[0], hits[1], hits[2], hits[3]);
    loom_kseed_free(ks);
    int pr_mode = 0;
    rc = loom_kseed_probs_parse("often", &pr_mode);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "--seed-probs"), "a bad --seed-probs is named: %s", loom_errmsg());
    rc = loom_kseed_create(&ks, 9, 0, LOOM_KSEED_UNIFORM, x, NP);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "--seed-pool"), "an empty pool is refused: %s", loom_errmsg());
    loom_trainer_free(t1);
    loom_trainer_free(t2);
    loom_free(v1);
    loom_free(v2);
    loom_free(w);
    loom_partition_free(p);
}

/* ---- FedKSeed in the simulator, alone and composed ---- */

enum { KS = 64, KE = 4, KN = 3 };

typedef struct {
    double eps;
    int rounds;
} round_seen;

static void on_round_cb(const loom_round_metrics *m, void *ud) {
    round_seen *s = ud;
    s->eps = m->dp ? m->epsilon : 0;
    s->rounds++;
}

static void kseed_sim_config(loom_sim_config *c, loom_train_config *tc, const loom_partition *p, loom_kseed *ks,
                             float *zeros) {
    loom_sim_defaults(c);
    c->dim = KS;
    c->init = zeros;
    c->make_worker = mk;
    c->free_worker = fr;
    c->worker_ud = tc;
    c->ds = ds;
    c->part = p;
    c->B = B;
    c->T = T;
    c->eval_every = 0;
    c->seed = 5;
    c->rounds = 1;
    c->fit.local_steps = KE;
    c->fit.zo_eps = 1e-3f;
    c->fit.zo_lr = 5e-2f;
    c->algo = &loom_client_fedkseed;
    c->kseed = ks;
    c->compress.codec = LOOM_CODEC_SEED_SCALAR;
    c->workers = 2;
}

static void kseed_compositions(void) {
    loom_partition *p = NULL;
    CHECK_OK(loom_partition_iid(&p, ds->n, KN, 0, 3));
    const float *x = loom_model_params(model);
    loom_train_config tc;
    fo_config(&tc, 1);
    float zeros[KS] = {0}, kv[KN][KS], g[KS];
    double wt[KN], W = 0;
    /* each client's K-vector, computed directly */
    loom_kseed *ks = NULL;
    CHECK_OK(loom_kseed_create(&ks, 5, KS, LOOM_KSEED_UNIFORM, x, NP));
    float *v = loom_alloc(NP * 4);
    loom_trainer *tr = NULL;
    CHECK_OK(loom_trainer_create(&tr, model, v, &tc));
    if (!ks || !tr) return;
    for (int i = 0; i < KN; i++) {
        uint64_t cs = loom_sim_client_seed(5, i);
        memcpy(v, x, NP * 4);
        loom_batcher *b = batcher_of(p, i, cs);
        double l;
        long nt;
        CHECK_OK(loom_kseed_fit(ks, tr, v, b, 0, KE, loom_hash2(cs, 1), 1e-3f, 5e-2f, LOOM_ZO_RESTORE_COPY, kv[i], NULL,
                                NULL, &l, &nt));
        loom_batcher_free(b);
        W += wt[i] = (double)p->clients[i].n_train;
    }
    loom_trainer_free(tr);
    loom_free(v);
    loom_kseed_free(ks);

    /* plain: the weighted mean per seed */
    loom_sim_config c;
    CHECK_OK(loom_kseed_create(&ks, 5, KS, LOOM_KSEED_UNIFORM, x, NP));
    kseed_sim_config(&c, &tc, p, ks, zeros);
    CHECK_OK(loom_sim_run(&c, g));
    double worst = 0, mag = 0;
    float plain[KS];
    memcpy(plain, g, sizeof plain);
    for (int k = 0; k < KS; k++) {
        double m = 0;
        for (int i = 0; i < KN; i++) m += wt[i] * kv[i][k];
        m /= W;
        worst = fmax(worst, fabs(g[k] - m) - ldexp(fabs(m), -24));
        mag = fmax(mag, fabs(m));
    }
    CHECK(worst <= 1e-12 && mag > 0, "the global K-vector is the weighted mean of the clients' (excess %g, max %g)", worst, mag);
    c.mode = LOOM_ENGINE_FEDASYNC; /* FedKSeed's replay needs one version at a time */
    int rcode = loom_sim_run(&c, g);
    CHECK(rcode == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "FedKSeed needs synchronous"), "async FedKSeed refused: %s",
          loom_errmsg());
    loom_kseed_free(ks);

    /* secure aggregation: the masked fixed-point sums equal the plain fixed-point sums */
    loom_sim_secagg sa;
    loom_sim_secagg_defaults(&sa);
    sa.seed = 5;
    CHECK_OK(loom_kseed_create(&ks, 5, KS, LOOM_KSEED_UNIFORM, x, NP));
    kseed_sim_config(&c, &tc, p, ks, zeros);
    c.secure = loom_sim_secagg_backend(&sa);
    CHECK_OK(loom_sim_run(&c, g));
    worst = 0;
    double off = 0;
    for (int k = 0; k < KS; k++) {
        double fx = 0; /* the 2^-24 grid the clients encode on, weighted */
        for (int i = 0; i < KN; i++) fx += wt[i] * rint(ldexp(kv[i][k], 24));
        fx = ldexp(fx, -24) / W;
        worst = fmax(worst, fabs(g[k] - fx) - ldexp(fabs(fx), -24));
        off = fmax(off, fabs(g[k] - plain[k]));
    }
    CHECK(worst <= 1e-12, "secure aggregation's per-seed sums equal the fixed-point sums (excess %g)", worst);
    CHECK(off <= ldexp(1, -24), "and the plain mean within the 2^-24 grid (%g)", off);
    loom_kseed_free(ks);

    /* central DP: each client's K-vector clipped to S, weight 1, sum / m, then noise; epsilon reported */
    CHECK_OK(loom_kseed_create(&ks, 5, KS, LOOM_KSEED_UNIFORM, x, NP));
    kseed_sim_config(&c, &tc, p, ks, zeros);
    double nmin = INFINITY;
    for (int i = 0; i < KN; i++) {
        double n2 = 0;
        for (int k = 0; k < KS; k++) n2 += (double)kv[i][k] * kv[i][k];
        nmin = fmin(nmin, sqrt(n2));
    }
    double S = nmin / 2;
    c.dp.mode = LOOM_DP_CENTRAL;
    c.dp.clip = S;
    c.dp.noise = 0;
    CHECK_OK(loom_sim_run(&c, g));
    worst = 0;
    for (int k = 0; k < KS; k++) {
        double m = 0;
        for (int i = 0; i < KN; i++) {
            double n2 = 0;
            for (int j = 0; j < KS; j++) n2 += (double)kv[i][j] * kv[i][j];
            m += kv[i][k] * (S / sqrt(n2));
        }
        m /= KN;
        worst = fmax(worst, fabs(g[k] - m) - 1e-6 * fabs(m));
    }
    CHECK(worst <= 1e-9, "central DP without noise: the mean of the clipped K-vectors (excess %g)", worst);
    loom_kseed_free(ks);
    CHECK_OK(loom_kseed_create(&ks, 5, KS, LOOM_KSEED_UNIFORM, x, NP));
    kseed_sim_config(&c, &tc, p, ks, zeros);
    c.dp.mode = LOOM_DP_CENTRAL;
    c.dp.clip = S;
    c.dp.noise = 1.0;
    round_seen seen = {0, 0};
    c.on_round = on_round_cb;
    c.cb_ud = &seen;
    float noisy[KS];
    CHECK_OK(loom_sim_run(&c, noisy));
    double dn = 0;
    for (int k = 0; k < KS; k++) dn = fmax(dn, fabs(noisy[k] - g[k]));
    CHECK(seen.rounds == 1 && seen.eps > 0 && isfinite(seen.eps), "the accountant reports epsilon %g", seen.eps);
    CHECK(dn > 0.05 * S / KN, "noise on the per-seed sums (max shift %g)", dn);
    loom_kseed_free(ks);

    /* median over the per-seed scalars */
    CHECK_OK(loom_kseed_create(&ks, 5, KS, LOOM_KSEED_UNIFORM, x, NP));
    kseed_sim_config(&c, &tc, p, ks, zeros);
    loom_robust_config rc;
    loom_robust_defaults(&rc, LOOM_ROBUST_MEDIAN);
    c.aggregator = &loom_agg_robust;
    c.aggregator_config = &rc;
    CHECK_OK(loom_sim_run(&c, g));
    size_t wrong = 0;
    for (int k = 0; k < KS; k++) {
        float a = kv[0][k], b = kv[1][k], d = kv[2][k];
        float med = fmaxf(fminf(a, b), fminf(fmaxf(a, b), d));
        wrong += g[k] != med;
    }
    CHECK(wrong == 0, "median: the global K-vector is the per-seed median of the three clients' (%zu differ)", wrong);
    loom_kseed_free(ks);
    loom_partition_free(p);
}

int main(void) {
    if (fl_fixture(1, 32, 32, 120, &model, &tok, &ds) != LOOM_OK) return test_summary();
    NP = loom_model_n_params(model);
    loom_partition *p1 = NULL;
    CHECK_OK(loom_partition_iid(&p1, ds->n, 1, 0, 1));
    forward_only_workspace();
    mezo_lr0_and_restore(p1);
    projected_gradient(p1);
    mezo_one_client_equals_centralized(p1);
    kseed_client();
    kseed_compositions();
    loom_partition_free(p1);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(model);
    return test_summary();
}
