/* Decentralized federated simulation: local training and gossip over a topology, no server
 * (include/loom/decentral.h). */
#include "loom/decentral.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/tvec.h"

typedef struct {
    loom_trainer *tr;
    float *vec, *update;
} slot;

enum { PH_FIT, PH_MIX, PH_PUSH, PH_EVAL };

typedef struct {
    const loom_sim_config *c;
    const loom_decentral_config *d;
    const loom_client_algo *algo;
    const loom_mixing *w;
    int n, round, phase;
    size_t dim;
    float **x, **y;          /* (n) each peer's model; the gossip step's output */
    double **s, **s2, *ws, *ws2; /* push-sum: values and weights, and the step's outputs */
    const float *mean;       /* the average model (evaluation) */
    loom_client_state *st;   /* (n) */
    double *loss;            /* (n) this round's training loss (NAN: failed) */
    loom_eval_result *ev_avg, *ev_own; /* (n) */
    slot *slots;
    int next, failed, failed_rc;
    char failed_msg[512];
    pthread_mutex_t mu;
} drun;

typedef struct {
    drun *r;
    int index;
} warg;

static void fail(drun *r, int rc) {
    pthread_mutex_lock(&r->mu);
    if (!r->failed) {
        r->failed = 1;
        r->failed_rc = rc;
        snprintf(r->failed_msg, sizeof r->failed_msg, "%s", loom_errmsg());
    }
    pthread_mutex_unlock(&r->mu);
}

static void job(drun *r, slot *sl, int i) {
    const loom_sim_config *c = r->c;
    size_t dim = r->dim;
    loom_client_ctx ctx = {sl->tr, sl->vec, dim, NULL};
    loom_client_data dd = loom_sim_client_data(c, i);
    int rc = LOOM_OK;
    switch (r->phase) {
    case PH_FIT: {
        loom_fit_output out;
        memset(&out, 0, sizeof out);
        out.update = sl->update;
        rc = loom_client_run_fit(r->algo, &ctx, &dd, r->round, r->x[i], NULL, &c->fit, NULL, &r->st[i], &out);
        if (rc != LOOM_OK) { /* a failed peer keeps its model this round */
            loom_log(LOOM_WARN, "round %d: peer %d (%s) failed to train: %s", r->round, i, c->part->clients[i].name,
                     loom_errmsg());
            r->loss[i] = NAN;
            return;
        }
        float *x = r->x[i];
        for (size_t k = 0; k < dim; k++) x[k] += sl->update[k];
        if (r->s) { /* push-sum: the peer's values are its weight times its model */
            double w = r->ws[i], *s = r->s[i];
            for (size_t k = 0; k < dim; k++) s[k] = w * (double)x[k];
        }
        r->loss[i] = out.res.loss;
        return;
    }
    case PH_MIX:
        rc = loom_gossip_mix(r->w, i, (const float *const *)r->x, dim, r->y[i]);
        break;
    case PH_PUSH:
        rc = loom_pushsum_mix(r->d->topo, i, (const double *const *)r->s, r->ws, dim, r->s2[i], &r->ws2[i]);
        break;
    case PH_EVAL:
        rc = loom_client_run_eval(r->algo, &ctx, &dd, r->mean, &r->ev_avg[i]);
        if (rc == LOOM_OK) rc = loom_client_run_eval(r->algo, &ctx, &dd, r->x[i], &r->ev_own[i]);
        break;
    }
    if (rc != LOOM_OK) fail(r, rc);
}

static void *worker(void *p) {
    warg *a = p;
    drun *r = a->r;
    const loom_sim_config *c = r->c;
    omp_set_num_threads(c->client_threads > 0 ? c->client_threads : 1);
    slot *sl = &r->slots[a->index];
    int needs_trainer = r->phase == PH_FIT || r->phase == PH_EVAL;
    if (needs_trainer && !sl->tr) {
        int rc = c->make_worker(c->worker_ud, &sl->tr, &sl->vec);
        if (rc != LOOM_OK) {
            sl->tr = NULL;
            sl->vec = NULL;
            fail(r, rc);
            return NULL;
        }
        sl->update = loom_alloc(r->dim * sizeof(float));
        if (!sl->update) {
            fail(r, loom_error(LOOM_ENOMEM, "out of memory"));
            return NULL;
        }
    }
    for (;;) {
        pthread_mutex_lock(&r->mu);
        int i = r->failed || r->next >= r->n ? -1 : r->next++;
        pthread_mutex_unlock(&r->mu);
        if (i < 0) break;
        job(r, sl, i);
    }
    return NULL;
}

static int run_phase(drun *r, int phase) {
    r->phase = phase;
    r->next = 0;
    int W = r->c->workers > 0 ? r->c->workers : 1;
    if (W > r->n) W = r->n;
    pthread_t th[256];
    warg args[256];
    if (W > 256) W = 256;
    int started = 0;
    for (int i = 0; i < W; i++) {
        args[i] = (warg){r, i};
        if (pthread_create(&th[i], NULL, worker, &args[i]) != 0) {
            fail(r, loom_error(LOOM_ENOMEM, "cannot start worker thread %d", i));
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    if (r->failed) return loom_error(r->failed_rc, "%s", r->failed_msg);
    return LOOM_OK;
}

static int refuse(const loom_sim_config *c, const loom_decentral_config *d) {
    const char *why = NULL;
    if (c->sample || c->sample_frac > 0) why = "--sample: every peer takes part in every round";
    else if (c->mode != LOOM_ENGINE_SYNC) why = "--mode: rounds are synchronous";
    else if (strcmp(c->strategy, "fedavg") && strcmp(c->strategy, "fedprox"))
        why = "--strategy: there is no server optimizer (fedavg or fedprox only)";
    else if (c->fit.scaffold || c->fit.gradient_only) why = "--strategy: peers exchange models, not gradients or controls";
    else if (c->aggregator) why = "--aggregator: there is no server to aggregate";
    else if (c->dp.mode == LOOM_DP_CENTRAL) why = "--dp central: there is no server (--dp local and sgd work)";
    else if (c->secure.sum) why = "--secagg/--he: there is no server sum";
    else if (c->max_update_norm > 0 || c->clip_norm > 0) why = "--max-update-norm/--update-clip: there is no server";
    else if (c->compress.codec != LOOM_CODEC_F32) why = "--compress: peers exchange whole models";
    else if (c->attack.kind != LOOM_ATTACK_NONE) why = "--attack";
    else if (c->n_faults) why = "--fault";
    else if (c->hetero || c->stack || c->kseed) why = "heterogeneous masks, stacking and FedKSeed";
    else if (c->resume) why = "--resume";
    else if (d->gossip_steps < 0) why = "--gossip-steps must be >= 0";
    if (why) return loom_error(LOOM_EINVAL, "a decentralized run does not take %s", why);
    if (!d->topo || loom_topology_n(d->topo) != (int)c->part->n_clients)
        return loom_error(LOOM_EINVAL, "the topology has %d peers, the run %zu clients", d->topo ? loom_topology_n(d->topo) : 0,
                          c->part->n_clients);
    if (loom_topology_directed(d->topo) && !d->push_sum)
        return loom_error(LOOM_EINVAL, "the topology is directed: it needs push-sum (--push-sum)");
    return loom_topology_check_connected(d->topo);
}

static void num(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.9g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

static int write_vec(const loom_tvec *man, const float *v, const char *dir, const char *name) {
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return loom_tvec_write(man, v, NULL, path);
}

int loom_decentral_run(const loom_sim_config *c, const loom_decentral_config *d, float *average, float *const *peers) {
    int rc = refuse(c, d);
    if (rc != LOOM_OK) return rc;
    drun r;
    memset(&r, 0, sizeof r);
    r.c = c;
    r.d = d;
    r.algo = c->algo ? c->algo : &loom_client_local_sgd;
    r.n = (int)c->part->n_clients;
    r.dim = c->dim;
    pthread_mutex_init(&r.mu, NULL);
    int n = r.n;
    size_t dim = r.dim;
    loom_mixing *w = NULL;
    loom_tvec *own_man = NULL;
    const loom_tvec *man = c->manifest;
    FILE *mf = NULL;
    double *accs = calloc((size_t)n, sizeof *accs);
    r.x = calloc((size_t)n, sizeof *r.x);
    r.y = calloc((size_t)n, sizeof *r.y);
    r.st = calloc((size_t)n, sizeof *r.st);
    r.loss = calloc((size_t)n, sizeof *r.loss);
    r.ev_avg = calloc((size_t)n, sizeof *r.ev_avg);
    r.ev_own = calloc((size_t)n, sizeof *r.ev_own);
    int W = c->workers > 0 ? (c->workers < 256 ? c->workers : 256) : 1;
    r.slots = calloc((size_t)W, sizeof *r.slots);
    float *mean = loom_alloc(dim * sizeof *mean);
    r.mean = mean;
    if (!accs || !r.x || !r.y || !r.st || !r.loss || !r.ev_avg || !r.ev_own || !r.slots || !mean)
        rc = loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < n && rc == LOOM_OK; i++) {
        loom_client_state_init(&r.st[i]);
        r.x[i] = loom_alloc(dim * sizeof(float));
        if (!r.x[i]) rc = loom_error(LOOM_ENOMEM, "out of memory for %d peer models of %zu values", n, dim);
        else memcpy(r.x[i], c->init, dim * sizeof(float));
    }
    if (rc == LOOM_OK && d->push_sum) {
        r.s = calloc((size_t)n, sizeof *r.s);
        r.s2 = calloc((size_t)n, sizeof *r.s2);
        r.ws = malloc((size_t)n * sizeof *r.ws);
        r.ws2 = malloc((size_t)n * sizeof *r.ws2);
        if (!r.s || !r.s2 || !r.ws || !r.ws2) rc = loom_error(LOOM_ENOMEM, "out of memory");
        for (int i = 0; i < n && rc == LOOM_OK; i++) {
            r.ws[i] = 1.0;
            r.s[i] = loom_alloc(dim * sizeof(double));
            r.s2[i] = loom_alloc(dim * sizeof(double));
            if (!r.s[i] || !r.s2[i]) rc = loom_error(LOOM_ENOMEM, "out of memory for push-sum's values");
        }
    } else if (rc == LOOM_OK) {
        rc = loom_mixing_metropolis(d->topo, &w);
        r.w = w;
        for (int i = 0; i < n && rc == LOOM_OK && d->gossip_steps > 0; i++)
            if (!(r.y[i] = loom_alloc(dim * sizeof(float)))) rc = loom_error(LOOM_ENOMEM, "out of memory");
    }
    if (rc == LOOM_OK && !man) {
        int64_t shape[1] = {(int64_t)dim};
        rc = loom_tvec_create(&own_man);
        if (rc == LOOM_OK) rc = loom_tvec_add(own_man, "vector", 1, shape, LOOM_ROLE_SHARED);
        man = own_man;
    }
    if (rc == LOOM_OK && c->out_dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/metrics.jsonl", c->out_dir);
        if (!(mf = fopen(path, "w"))) rc = loom_error(LOOM_EIO, "%s: %s", path, strerror(errno));
    }
    for (int round = 1; round <= c->rounds && rc == LOOM_OK; round++) {
        double t0 = loom_now();
        loom_decentral_metrics m;
        memset(&m, 0, sizeof m);
        m.round = r.round = round;
        m.n = n;
        rc = run_phase(&r, PH_FIT);
        if (rc != LOOM_OK) break;
        double lsum = 0;
        int trained = 0;
        for (int i = 0; i < n; i++)
            if (isnan(r.loss[i])) m.failed++;
            else lsum += r.loss[i], trained++;
        m.train_loss = trained ? lsum / trained : NAN;
        m.consensus_trained = loom_consensus_distance((const float *const *)r.x, n, dim, NULL);
        for (int step = 0; step < d->gossip_steps && rc == LOOM_OK; step++) {
            if (d->push_sum) {
                rc = run_phase(&r, PH_PUSH);
                double **ts = r.s, *tw = r.ws;
                r.s = r.s2, r.ws = r.ws2, r.s2 = ts, r.ws2 = tw;
            } else {
                rc = run_phase(&r, PH_MIX);
                float **t = r.x;
                r.x = r.y, r.y = t;
            }
        }
        if (rc != LOOM_OK) break;
        if (d->push_sum) /* each peer's model: its ratio estimate */
            for (int i = 0; i < n; i++)
                for (size_t k = 0; k < dim; k++) r.x[i][k] = (float)(r.s[i][k] / r.ws[i]);
        m.consensus = loom_consensus_distance((const float *const *)r.x, n, dim, mean);
        int last = round == c->rounds;
        if (last || (c->eval_every > 0 && round % c->eval_every == 0)) {
            rc = run_phase(&r, PH_EVAL);
            if (rc != LOOM_OK) break;
            double al = 0, ol = 0;
            long at = 0, ac = 0, acn = 0, ot = 0, oc = 0, ocn = 0;
            m.peer_acc_min = INFINITY;
            m.peer_acc_max = -INFINITY;
            int with = 0;
            double amean = 0;
            for (int i = 0; i < n; i++) {
                const loom_eval_result *a = &r.ev_avg[i], *o = &r.ev_own[i];
                al += a->loss_sum, at += a->tokens, ac += a->correct, acn += a->count;
                ol += o->loss_sum, ot += o->tokens, oc += o->correct, ocn += o->count;
                accs[i] = o->count ? (double)o->correct / (double)o->count : NAN;
                if (o->count) {
                    with++;
                    amean += accs[i];
                    m.peer_acc_min = fmin(m.peer_acc_min, accs[i]);
                    m.peer_acc_max = fmax(m.peer_acc_max, accs[i]);
                }
            }
            m.evaluated = 1;
            m.avg_loss = at ? al / (double)at : NAN;
            m.avg_acc = acn ? (double)ac / (double)acn : NAN;
            m.peer_loss = ot ? ol / (double)ot : NAN;
            m.peer_acc = ocn ? (double)oc / (double)ocn : NAN;
            m.peer_acc_mean = with ? amean / with : NAN;
            if (!with) m.peer_acc_min = m.peer_acc_max = NAN;
            m.peer_accs = accs;
        }
        m.seconds = loom_now() - t0;
        if (mf) {
            fprintf(mf, "{\"type\":\"round\",\"round\":%d,\"peers\":%d,\"failed\":%d", round, n, m.failed);
            num(mf, "train_loss", m.train_loss);
            num(mf, "consensus_trained", m.consensus_trained);
            num(mf, "consensus", m.consensus);
            if (m.evaluated) {
                num(mf, "eval_loss", m.avg_loss);
                num(mf, "eval_acc", m.avg_acc);
                num(mf, "peer_loss", m.peer_loss);
                num(mf, "peer_acc", m.peer_acc);
                num(mf, "peer_acc_mean", m.peer_acc_mean);
                num(mf, "peer_acc_min", m.peer_acc_min);
                num(mf, "peer_acc_max", m.peer_acc_max);
            }
            num(mf, "seconds", m.seconds);
            fprintf(mf, "}\n");
            for (int i = 0; i < n; i++) {
                fprintf(mf, "{\"type\":\"peer\",\"round\":%d,\"peer\":%d", round, i);
                num(mf, "train_loss", r.loss[i]);
                if (m.evaluated) {
                    const loom_eval_result *o = &r.ev_own[i], *a = &r.ev_avg[i];
                    num(mf, "eval_loss", o->tokens ? o->loss_sum / (double)o->tokens : NAN);
                    num(mf, "eval_acc", accs[i]);
                    num(mf, "avg_model_acc", a->count ? (double)a->correct / (double)a->count : NAN);
                }
                fprintf(mf, "}\n");
            }
            fflush(mf);
        }
        if (d->on_round) d->on_round(&m, d->ud);
    }
    if (mf && fclose(mf) != 0 && rc == LOOM_OK) rc = loom_error(LOOM_EIO, "%s/metrics.jsonl: write error", c->out_dir);
    if (rc == LOOM_OK) {
        loom_consensus_distance((const float *const *)r.x, n, dim, mean);
        if (average) memcpy(average, mean, dim * sizeof *mean);
        for (int i = 0; peers && i < n; i++) memcpy(peers[i], r.x[i], dim * sizeof(float));
    }
    if (rc == LOOM_OK && c->out_dir) {
        rc = write_vec(man, mean, c->out_dir, "global.safetensors");
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/peers", c->out_dir);
        if (rc == LOOM_OK && mkdir(dir, 0777) != 0 && errno != EEXIST)
            rc = loom_error(LOOM_EIO, "%s: %s", dir, strerror(errno));
        for (int i = 0; i < n && rc == LOOM_OK; i++) {
            char name[64];
            snprintf(name, sizeof name, "%d.safetensors", i);
            rc = write_vec(man, r.x[i], dir, name);
        }
    }
    for (int i = 0; i < W && r.slots; i++) {
        if (r.slots[i].tr) c->free_worker(c->worker_ud, r.slots[i].tr, r.slots[i].vec);
        loom_free(r.slots[i].update);
    }
    for (int i = 0; i < n; i++) {
        if (r.x) loom_free(r.x[i]);
        if (r.y) loom_free(r.y[i]);
        if (r.st) loom_client_state_clear(&r.st[i]);
        if (r.s) loom_free(r.s[i]);
        if (r.s2) loom_free(r.s2[i]);
    }
    free(r.x);
    free(r.y);
    free(r.s);
    free(r.s2);
    free(r.ws);
    free(r.ws2);
    free(r.st);
    free(r.loss);
    free(r.ev_avg);
    free(r.ev_own);
    free(r.slots);
    free(accs);
    loom_free(mean);
    loom_mixing_free(w);
    loom_tvec_free(own_man);
    pthread_mutex_destroy(&r.mu);
    return rc;
}
