/* Decentralized simulation properties:
 *  - the full graph with one gossip step (uniform weights 1/n) equals FedAvg with equal client weights
 *    (loom_sim_run, the round engine's fixed-point mean), to float rounding, round after round
 *  - learning rate 0 leaves every peer's model bit for bit (Metropolis-Hastings and push-sum)
 *  - results are bitwise identical for 1 and 3 worker threads
 *  - the reported consensus distance is that of the returned peer models; gossip shrinks it
 *  - a disconnected topology, a directed one without push-sum and client sampling are refused */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/decentral.h"
#include "loom/fl.h"
#include "loom/gossip.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/sim.h"
#include "loom/train.h"
#include "model/model_impl.h"
#include "fl_fixture.h"
#include "test.h"

static loom_model *model;
static loom_dataset *ds;
static loom_tokenizer *tok;

typedef struct {
    loom_train_config tc;
} wud;

static int mk(void *ud, loom_trainer **tr, float **vec) {
    wud *u = ud;
    *vec = loom_alloc(model->n_params * sizeof(float));
    return loom_trainer_create(tr, model, *vec, &u->tc);
}
static void fr(void *ud, loom_trainer *tr, float *vec) {
    (void)ud;
    loom_trainer_free(tr);
    loom_free(vec);
}

static void config(loom_sim_config *c, wud *u, loom_partition *p, float lr) {
    loom_train_defaults(&u->tc);
    u->tc.opt.kind = LOOM_OPT_SGD;
    u->tc.opt.lr = lr;
    u->tc.opt.weight_decay = 0;
    u->tc.opt.momentum = 0;
    u->tc.clip = 0;
    u->tc.warmup = 0;
    u->tc.total_steps = 0;
    u->tc.B = 4;
    u->tc.T = 16;
    loom_sim_defaults(c);
    c->dim = model->n_params;
    c->init = model->params;
    c->make_worker = mk;
    c->free_worker = fr;
    c->worker_ud = u;
    c->ds = ds;
    c->part = p;
    c->B = 4;
    c->T = 16;
    c->fit.local_steps = 3;
    c->rounds = 3;
    c->eval_every = 0;
    c->seed = 9;
}

static double maxdiff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

typedef struct {
    double consensus, consensus_trained;
    int rounds, evaluated;
    double avg_acc;
} seen;

static void on_round(const loom_decentral_metrics *m, void *ud) {
    seen *s = ud;
    s->consensus = m->consensus;
    s->consensus_trained = m->consensus_trained;
    s->rounds++;
    if (m->evaluated) s->evaluated++, s->avg_acc = m->avg_acc;
}

static float **peer_bufs(int n, size_t dim) {
    float **p = calloc((size_t)n, sizeof *p);
    for (int i = 0; i < n; i++) p[i] = loom_alloc(dim * sizeof(float));
    return p;
}
static void peer_free(float **p, int n) {
    for (int i = 0; i < n; i++) loom_free(p[i]);
    free(p);
}

static void full_equals_fedavg(void) {
    enum { K = 4 };
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, K, 0, 3));
    CHECK_OK(loom_partition_split_test(p, 0.2, 3, 0));
    size_t fewest = SIZE_MAX;
    for (int i = 0; i < K; i++) fewest = p->clients[i].n_train < fewest ? p->clients[i].n_train : fewest;
    for (int i = 0; i < K; i++) p->clients[i].n_train = fewest; /* equal weights in FedAvg */
    size_t dim = model->n_params;
    loom_sim_config c;
    wud u;
    config(&c, &u, p, 0.2f);
    float *fedavg = loom_alloc(dim * sizeof(float)), *avg = loom_alloc(dim * sizeof(float));
    CHECK_OK(loom_sim_run(&c, fedavg));
    loom_topology *t;
    CHECK_OK(loom_topology_full(&t, K));
    loom_decentral_config d = {t, 1, 0, on_round, NULL};
    seen s = {0};
    d.ud = &s;
    float **peers = peer_bufs(K, dim);
    CHECK_OK(loom_decentral_run(&c, &d, avg, peers));
    double moved = maxdiff(fedavg, model->params, dim);
    CHECK(moved > 1e-3, "training moved the model by %g", moved);
    CHECK(maxdiff(avg, fedavg, dim) < 1e-5, "full graph, one step vs FedAvg: %g (moved %g)", maxdiff(avg, fedavg, dim), moved);
    for (int i = 0; i < K; i++) CHECK(maxdiff(peers[i], fedavg, dim) < 1e-5, "peer %d vs FedAvg: %g", i, maxdiff(peers[i], fedavg, dim));
    CHECK(s.rounds == 3 && s.evaluated == 1, "%d rounds, %d evaluated", s.rounds, s.evaluated);
    CHECK(s.consensus < 1e-10 && s.consensus_trained > 1e-6, "consensus %g after gossip, %g before", s.consensus,
          s.consensus_trained);
    CHECK(s.avg_acc > 0 && s.avg_acc < 1, "accuracy %g", s.avg_acc);
    peer_free(peers, K);
    loom_topology_free(t);
    loom_free(fedavg);
    loom_free(avg);
    loom_partition_free(p);
}

static void zero_lr_and_workers(void) {
    enum { K = 5 };
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, K, 0, 4));
    CHECK_OK(loom_partition_split_test(p, 0.2, 4, 0));
    size_t dim = model->n_params;
    loom_topology *ring, *dir;
    CHECK_OK(loom_topology_ring(&ring, K));
    int a[] = {0, 1, 2, 3, 4, 0}, b[] = {1, 2, 3, 4, 0, 3};
    CHECK_OK(loom_topology_from_edges(&dir, K, a, b, 6, 1));
    float **p1 = peer_bufs(K, dim), **p3 = peer_bufs(K, dim);
    for (int ps = 0; ps < 2; ps++) {
        loom_decentral_config d = {ps ? dir : ring, 2, ps, NULL, NULL};
        loom_sim_config c;
        wud u;
        config(&c, &u, p, 0.0f);
        c.rounds = 2;
        CHECK_OK(loom_decentral_run(&c, &d, NULL, p1));
        int same = 1;
        for (int i = 0; i < K; i++) same &= !memcmp(p1[i], model->params, dim * sizeof(float));
        CHECK(same, "lr 0 (%s) left every peer's model", ps ? "push-sum" : "MH");
        config(&c, &u, p, 0.2f);
        seen s = {0};
        d.on_round = on_round;
        d.ud = &s;
        c.workers = 1;
        CHECK_OK(loom_decentral_run(&c, &d, NULL, p1));
        double cons = s.consensus, before = s.consensus_trained;
        c.workers = 3;
        CHECK_OK(loom_decentral_run(&c, &d, NULL, p3));
        same = 1;
        for (int i = 0; i < K; i++) same &= !memcmp(p1[i], p3[i], dim * sizeof(float));
        CHECK(same, "1 and 3 workers give the same peers (%s)", ps ? "push-sum" : "MH");
        CHECK(s.consensus == cons, "the same consensus distance");
        /* the reported distance is the returned peers' (computed here in double, independently) */
        double dist = 0;
        for (size_t k = 0; k < dim; k++) {
            double m = 0;
            for (int i = 0; i < K; i++) m += p3[i][k];
            m /= K;
            for (int i = 0; i < K; i++) dist += (p3[i][k] - m) * (p3[i][k] - m);
        }
        dist /= K;
        CHECK_NEAR(cons, dist, 1e-9 + 1e-6 * dist);
        CHECK(cons > 0 && cons < before, "gossip shrank the consensus distance: %g -> %g", before, cons);
    }
    /* refusals */
    loom_sim_config c;
    wud u;
    config(&c, &u, p, 0.1f);
    loom_decentral_config d = {dir, 1, 0, NULL, NULL};
    CHECK(loom_decentral_run(&c, &d, NULL, NULL) == LOOM_EINVAL && strstr(loom_errmsg(), "push-sum"), "%s", loom_errmsg());
    loom_topology *split;
    int sa[] = {0, 2, 3}, sb[] = {1, 3, 4};
    CHECK_OK(loom_topology_from_edges(&split, K, sa, sb, 3, 0));
    d.topo = split;
    CHECK(loom_decentral_run(&c, &d, NULL, NULL) == LOOM_EINVAL && strstr(loom_errmsg(), "disconnected"), "%s", loom_errmsg());
    d.topo = ring;
    c.sample = 2;
    CHECK(loom_decentral_run(&c, &d, NULL, NULL) == LOOM_EINVAL && strstr(loom_errmsg(), "--sample"), "%s", loom_errmsg());
    loom_topology_free(split);
    peer_free(p1, K);
    peer_free(p3, K);
    loom_topology_free(ring);
    loom_topology_free(dir);
    loom_partition_free(p);
}

int main(void) {
    if (fl_fixture(1, 16, 16, 160, &model, &tok, &ds) != LOOM_OK) return test_summary();
    full_equals_fedavg();
    zero_lr_and_workers();
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(model);
    return test_summary();
}
