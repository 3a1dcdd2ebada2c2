/* In-process federated simulation: a driver of the round engine with worker threads, an in-process
 * wire and a virtual clock (see include/loom/sim.h). */
#include "loom/sim.h"
#include "loom/zo.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/hetero.h"
#include "loom/personal.h"
#include "loom/safetensors.h"
#include "loom/unlearn.h"
#include "sim/sim_attack.h"
#include "sim/sim_dist.h"
#include "sim/sim_secure.h"

void loom_sim_defaults(loom_sim_config *c) {
    memset(c, 0, sizeof *c);
    c->B = 8;
    c->T = 64;
    c->strategy = "fedavg";
    loom_strategy_defaults("fedavg", &c->sp);
    c->fit.local_steps = 10;
    c->rounds = 10;
    c->min_updates = 1;
    c->workers = 1;
    c->client_threads = 1;
    c->seed = 1;
    c->per_client_rows = 1;
    c->async_alpha = 0.6;
    c->staleness = (loom_staleness_fn){LOOM_STALENESS_CONSTANT, 0.5, 4};
    loom_dp_config_defaults(&c->dp);
}

uint64_t loom_sim_client_seed(uint64_t seed, int client) { return loom_hash2(seed, LOOM_STREAM_CLIENT + (uint64_t)client); }

loom_client_data loom_sim_client_data(const loom_sim_config *c, int client) {
    const loom_client *cl = &c->part->clients[client];
    loom_client_data d = {c->client_ds ? c->client_ds[client] : c->ds, cl->train, cl->n_train, cl->test, cl->n_test,
                          c->B, c->T, loom_sim_client_seed(c->seed, client)};
    return d;
}

int loom_sim_sample(const loom_sim_config *c, int round, int *clients, int *n) {
    return loom_engine_sample((int)c->part->n_clients, c->sample, c->sample_frac, c->seed, round, clients, n);
}

double loom_sim_client_seconds(const loom_sim_config *c, int client) {
    double speed = 1.0;
    if (c->time_spread > 0) {
        loom_rng r;
        loom_rng_init(&r, c->seed, loom_hash2(LOOM_STREAM_CLIENT_SPEED, (uint64_t)client));
        speed = exp(c->time_spread * loom_rng_normal(&r));
    }
    /* ---- device profiles (hetero.h): the client's own speed and link ---- */
    if (c->profiles) {
        const loom_device_profile *p = &c->profiles[client];
        double transfer = p->bandwidth > 0 ? 2.0 * (double)c->dim * sizeof(float) / (p->bandwidth * 1e6) : 0.0;
        return c->fit.local_steps * c->step_seconds * speed / p->speed + transfer;
    }
    return c->fit.local_steps * c->step_seconds * speed;
}

void loom_sim_engine_config(const loom_sim_config *c, loom_engine_config *ec) {
    loom_engine_defaults(ec);
    ec->dim = c->dim;
    ec->init = c->init;
    ec->pipe.strategy = c->strategy;
    ec->pipe.sp = c->sp;
    ec->pipe.max_norm = c->max_update_norm;
    ec->pipe.clip_norm = c->clip_norm;
    ec->pipe.aggregator = c->aggregator;
    ec->pipe.aggregator_config = c->aggregator_config;
    ec->pipe.post = c->post;
    ec->pipe.post_ud = c->post_ud;
    ec->continual = c->continual;
    ec->rounds = c->rounds;
    ec->sample = c->sample;
    ec->sample_frac = c->sample_frac;
    ec->seed = c->seed;
    ec->min_updates = c->min_updates;
    ec->deadline = c->deadline;
    ec->eval_every = c->eval_every;
    ec->eval_clients = c->eval_clients;
    ec->mode = c->mode;
    ec->async_alpha = c->async_alpha;
    ec->staleness = c->staleness;
    ec->buffer = c->buffer;
    ec->concurrency = c->concurrency;
    ec->max_staleness = c->max_staleness;
    ec->dp = c->dp;
    if (c->hetero) { /* heterogeneous clients: the engine recomputes each client's mask */
        ec->mask = loom_hetero_mask_cb;
        ec->mask_ud = (void *)c->hetero;
        ec->pipe.mask_pad = loom_hetero_pad(c->hetero);
        if (loom_hetero_sparsity(c->hetero)) { /* HetLoRA's sparsity-weighted aggregation */
            ec->weight = loom_hetero_weight_cb;
            ec->weight_ud = (void *)c->hetero;
        }
    }
    if (!loom_personal_trivial(c->personal)) { /* personalization: the private values stay out of the mean */
        ec->mask = loom_personal_mask_cb;
        ec->mask_ud = (void *)c->personal;
    }
    ec->excluded = c->excluded; /* unlearning: clients removed from the population */
}

/* ------------------------------------------------------------------ shared run state */

typedef struct {
    loom_trainer *tr;
    float *vec, *update, *dc;
    uint8_t *mask; /* (dim) heterogeneous clients: the client's mask this round */
    float *stored; /* (dim) FedEraser replay: the client's stored update of the round */
    float *pers;   /* (dim) the per-client evaluation: the personalized vector */
} worker_slot;

typedef struct sim_run {
    const loom_sim_config *c;
    const loom_client_algo *algo;
    size_t dim;
    int n_clients;
    loom_engine *eng;
    const loom_tvec *manifest; /* the vector's tensor names: c->manifest, or own_manifest */
    loom_tvec *own_manifest;   /* one tensor "vector" when the caller gave no manifest */
    loom_client_state *states; /* (n_clients) the clients' own state, kept by the driver */
    double t_open;             /* virtual time the round opened */
    /* the current phase */
    const int *list;
    int count;
    int next;                  /* next list position to hand out */
    int done;
    int round;
    int failed;
    int failed_rc;
    char failed_msg[512];
    worker_slot *slots;        /* (workers) */
    struct async_job *jobs;    /* asynchronous modes: the places of the clients in training */
    lm_secure_round *secure;   /* a secure-sum backend's holding area (sim_secure.c), NULL: plain */
    lm_attack *attack;         /* the simulated attackers (sim_attack.c), NULL: none */
    /* FLoRA stacking (c->stack): the round's global vector and the accepted updates by list position */
    float *stack_x, *stack_u;
    uint8_t *stack_held;
    int stack_cap;
    loom_personal_eval *evals;   /* (n_clients) the per-client evaluation after the last round */
    int *mine;                 /* (n_clients) a distributed run: this process's clients of a phase */
    pthread_mutex_t mu;
} sim_run;

typedef struct {
    sim_run *run;
    int phase; /* 0 fit, 1 eval */
    int index;
} worker_arg;

static int fault_of(const loom_sim_config *c, int client) {
    for (int i = 0; i < c->n_faults; i++)
        if (c->faults[i].client == client) return c->faults[i].kind;
    return 0;
}

/* A server-side error (a worker that cannot be built): the run stops. Client errors never come here. */
static void fail(sim_run *r, int rc) {
    pthread_mutex_lock(&r->mu);
    if (!r->failed) {
        r->failed = 1;
        r->failed_rc = rc;
        snprintf(r->failed_msg, sizeof r->failed_msg, "%s", loom_errmsg());
    }
    pthread_mutex_unlock(&r->mu);
}


static void fit_one(sim_run *r, worker_slot *ws, int client) {
    const loom_sim_config *c = r->c;
    const loom_client *cl = &c->part->clients[client];
    size_t dim = r->dim;
    loom_task task;
    loom_engine_task(r->eng, &task);
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = ws->update;
    out.control_delta = ws->dc;
    loom_client_ctx ctx = {ws->tr, ws->vec, dim, c->kseed};
    loom_client_data d = loom_sim_client_data(c, client);
    lm_attack_data(r->attack, client, &d); /* a label-flipping or backdoor attacker's poisoned copy */
    int compress = c->compress.codec != LOOM_CODEC_F32;
    loom_fit_config fc = c->fit;
    int rc = LOOM_OK;
    if (c->replay_dir) { /* FedEraser: only clients whose update of this round was kept take part */
        char path[4096];
        rc = loom_unlearn_update_path(path, sizeof path, c->replay_dir, task.round, client);
        if (rc == LOOM_OK) rc = loom_unlearn_update_read(path, task.round, client, ws->stored, dim);
        if (rc != LOOM_OK) {
            char why[600];
            snprintf(why, sizeof why, "%s (%s)", rc == LOOM_ENOTFOUND ? "no stored update of this round" : loom_errmsg(),
                     cl->name);
            loom_engine_fail(r->eng, task.round, client, why, r->t_open, NULL);
            return;
        }
    }
    if (c->hetero) { /* the client's truncation (ranks), frozen part (A, layers) this round */
        rc = loom_hetero_mask(c->hetero, client, task.round, ws->mask);
        fc.mask = ws->mask;
    }
    if (rc == LOOM_OK)
        rc = loom_client_run_fit(r->algo, &ctx, &d, task.round, task.global, task.server_control, &fc, &c->compress,
                                 &r->states[client], &out);
    double now = r->t_open + loom_sim_client_seconds(c, client);
    int fault = fault_of(c, client);
    if (rc != LOOM_OK || fault == LOOM_FAULT_FAIL) {
        char why[512];
        snprintf(why, sizeof why, "%s (%s)", rc != LOOM_OK ? loom_errmsg() : "injected failure", cl->name);
        loom_engine_fail(r->eng, task.round, client, why, now, NULL);
        return;
    }
    float *update = ws->update;
    size_t len = dim;
    if (c->replay_dir && !c->replay_no_rescale) loom_unlearn_calibrate(update, ws->stored, dim); /* FedEraser */
    switch (fault) {
    case LOOM_FAULT_NAN: update[dim / 2] = NAN; break;
    case LOOM_FAULT_INF: update[0] = INFINITY; break;
    case LOOM_FAULT_HUGE:
        for (size_t i = 0; i < dim; i++) update[i] *= 1e6f;
        break;
    case LOOM_FAULT_SHORT: len = dim - 1; break;
    default: break;
    }
    /* the in-process wire: the message points at the worker's buffers */
    loom_update u = {task.run_id, task.round, task.version, client, (uint64_t)cl->n_train, out.res.loss,
                     out.res.tokens, LOOM_CODEC_F32, len, update, c->fit.scaffold ? ws->dc : NULL, 0};
    if (compress) { /* the values are already what the codec delivers; count what it would send */
        u.codec = c->compress.codec;
        u.wire_bytes = loom_update_encoded_size(&u, &c->compress);
    }
    if ((c->hetero || !loom_personal_trivial(c->personal)) && len == dim && fault != LOOM_FAULT_NAN &&
        fault != LOOM_FAULT_INF) { /* a masked update travels as its TRAIN values (include/loom/personal.h) */
        uint8_t *send = malloc(dim);
        float *packed = loom_alloc(dim * sizeof(float));
        if (send && packed) {
            loom_personal_send_mask(loom_personal_trivial(c->personal) ? NULL : c->personal, c->hetero ? ws->mask : NULL,
                                    dim, send);
            loom_update pu = u;
            pu.len = loom_mask_sent(send, dim);
            loom_mask_pack(send, dim, update, packed);
            pu.values = packed;
            if (u.control) pu.control = packed; /* a control delta of the same length (its values do not count) */
            loom_codec_opts f32 = {LOOM_CODEC_F32, 0, 0};
            u.wire_bytes = loom_update_encoded_size(&pu, compress ? &c->compress : &f32);
        }
        free(send);
        loom_free(packed);
    }
    if (r->attack && !lm_attack_update(r->attack, &u, update, now, fault != 0))
        return; /* an omniscient attacker: held until the honest updates are in (sim_attack.c) */
    if (r->secure) { /* secure sum: held until the round's sum (sim_secure.c) */
        lm_secure_hold(r->secure, r->eng, &u, now);
        return;
    }
    int sub = loom_engine_submit(r->eng, &u, now, NULL); /* a refusal is recorded in the client's row */
    if (sub == LOOM_OK && c->out_dir && loom_unlearn_keeps_updates(task.round, c->keep_updates)) {
        char path[4096]; /* kept for approximate unlearning (include/loom/unlearn.h) */
        int wrc = loom_unlearn_update_path(path, sizeof path, c->out_dir, task.round, client);
        if (wrc == LOOM_OK) wrc = loom_unlearn_update_write(path, task.round, client, update, dim);
        if (wrc != LOOM_OK) fail(r, wrc);
    }
    if (sub == LOOM_OK && c->hetero) /* HetLoRA self-pruning: the rank of its next rounds, as the server sees it */
        loom_hetero_prune(c->hetero, client, task.global, update, NULL);
    if (sub == LOOM_OK && r->stack_u) { /* FLoRA: keep the accepted update at the client's list position */
        int pos = 0;
        while (pos < r->count && r->list[pos] != client) pos++;
        if (pos < r->count) {
            memcpy(r->stack_u + (size_t)pos * dim, update, dim * sizeof(float));
            r->stack_held[pos] = 1;
        }
    }
}

/* ---- FLoRA stacking: merge the round's client models into the driver's base, restart the adapter ---- */

static int stack_open(sim_run *r, int n) {
    if (n > r->stack_cap) {
        loom_free(r->stack_u);
        free(r->stack_held);
        r->stack_u = loom_alloc((size_t)n * r->dim * sizeof(float));
        r->stack_held = malloc((size_t)n);
        r->stack_cap = n;
        if (!r->stack_u || !r->stack_held) {
            r->stack_cap = 0;
            return loom_error(LOOM_ENOMEM, "out of memory for %d client updates of %zu values", n, r->dim);
        }
    }
    memset(r->stack_held, 0, (size_t)n);
    memcpy(r->stack_x, loom_engine_global(r->eng), r->dim * sizeof(float));
    return LOOM_OK;
}

static int stack_close(sim_run *r, const int *list, int n) {
    const loom_sim_config *c = r->c;
    const float **models = malloc((size_t)(n ? n : 1) * sizeof *models);
    int *clients = malloc((size_t)(n ? n : 1) * sizeof *clients);
    double *w = malloc((size_t)(n ? n : 1) * sizeof *w);
    int rc = models && clients && w ? LOOM_OK : loom_error(LOOM_ENOMEM, "out of memory");
    size_t k = 0;
    for (int pos = 0; pos < n && rc == LOOM_OK; pos++) {
        if (!r->stack_held[pos]) continue;
        float *y = r->stack_u + (size_t)pos * r->dim;
        for (size_t i = 0; i < r->dim; i++) y[i] += r->stack_x[i]; /* the client's model */
        models[k] = y;
        clients[k] = list[pos];
        w[k++] = (double)c->part->clients[list[pos]].n_train;
    }
    size_t need = c->min_updates > 0 ? (size_t)c->min_updates : 1;
    if (rc == LOOM_OK && k >= need) {
        rc = c->stack(c->stack_ud, r->round, models, clients, w, k);
        if (rc == LOOM_OK) memcpy(loom_engine_global(r->eng), c->init, r->dim * sizeof(float));
        else rc = loom_error_context(rc, "FLoRA stacking of round %d", r->round);
    }
    free(models);
    free(clients);
    free(w);
    return rc;
}

static void eval_one(sim_run *r, worker_slot *ws, int client) {
    const loom_sim_config *c = r->c;
    const loom_client *cl = &c->part->clients[client];
    loom_client_ctx ctx = {ws->tr, ws->vec, r->dim, r->c->kseed};
    loom_client_data d = loom_sim_client_data(c, client);
    loom_eval_result res;
    int rc = loom_client_run_eval(r->algo, &ctx, &d, loom_engine_global(r->eng), &res);
    if (rc != LOOM_OK) {
        loom_log(LOOM_WARN, "round %d: evaluating client %d (%s) failed: %s", r->round, client, cl->name, loom_errmsg());
        return;
    }
    /* a backdoor run: the same test examples with the trigger (attack success; sim_attack.c) */
    if (lm_attack_eval(r->attack, r->algo, &ctx, &d, loom_engine_global(r->eng), &res) != LOOM_OK)
        loom_log(LOOM_WARN, "round %d: the triggered evaluation of client %d (%s) failed: %s", r->round, client,
                 cl->name, loom_errmsg());
    loom_engine_eval_submit(r->eng, client, &res);
}

/* The per-client evaluation after the last round (include/loom/personal.h): the global model, then the
 * global shared values with the client's own private ones, fine-tuned locally. */
static void client_eval_one(sim_run *r, worker_slot *ws, int client) {
    const loom_sim_config *c = r->c;
    const loom_client *cl = &c->part->clients[client];
    loom_client_ctx ctx = {ws->tr, ws->vec, r->dim, c->kseed};
    loom_client_data d = loom_sim_client_data(c, client);
    loom_personal_eval *ev = &r->evals[client];
    const float *global = loom_engine_global(r->eng);
    if (!ws->pers && !(ws->pers = loom_alloc(r->dim * sizeof(float)))) {
        loom_log(LOOM_WARN, "evaluating client %d (%s): out of memory", client, cl->name);
        return;
    }
    int rc = loom_client_run_eval(r->algo, &ctx, &d, global, &ev->global);
    const loom_personal *pp = loom_personal_trivial(c->personal) ? NULL : c->personal;
    loom_client_state *st = &r->states[client];
    if (rc == LOOM_OK && (pp || c->finetune_steps > 0)) {
        memcpy(ws->pers, global, r->dim * sizeof(float));
        if (pp && st->priv) loom_personal_put(pp, st->priv, ws->pers);
        if (c->finetune_steps > 0) { /* plain local training: nothing leaves the client */
            loom_fit_config fc = c->fit;
            fc.local_steps = c->finetune_steps;
            fc.personal = NULL;
            fc.prox_mu = 0;
            fc.scaffold = 0;
            fc.gradient_only = 0;
            fc.dp_clip = 0;
            fc.mask = NULL;
            if (c->hetero && (rc = loom_hetero_mask(c->hetero, client, c->rounds > 0 ? c->rounds : 1, ws->mask)) == LOOM_OK)
                fc.mask = ws->mask; /* the client's own truncation and layers */
            loom_fit_output out;
            memset(&out, 0, sizeof out);
            out.update = ws->update;
            if (rc == LOOM_OK)
                rc = loom_client_run_fit(r->algo, &ctx, &d, c->rounds + 1, ws->pers, NULL, &fc, NULL, st, &out);
            if (rc == LOOM_OK) memcpy(ws->pers, ws->vec, r->dim * sizeof(float));
        }
        if (rc == LOOM_OK) rc = loom_client_run_eval(r->algo, &ctx, &d, ws->pers, &ev->personal);
        if (rc == LOOM_OK) ev->personalized = 1;
        if (rc == LOOM_OK && c->on_personal) c->on_personal(c->personal_ud, client, ws->pers);
    }
    if (rc != LOOM_OK) {
        loom_log(LOOM_WARN, "evaluating client %d (%s) after the last round failed: %s", client, cl->name, loom_errmsg());
        memset(ev, 0, sizeof *ev);
        return;
    }
    ev->evaluated = 1;
}

static void fit_async(sim_run *r, worker_slot *ws, int job);

static void *worker_main(void *p) {
    worker_arg *a = p;
    sim_run *r = a->run;
    const loom_sim_config *c = r->c;
    omp_set_num_threads(c->client_threads > 0 ? c->client_threads : 1);
    /* The worker's trainer and buffers live for the whole run (slot a->index), built on first use. */
    worker_slot *ws = &r->slots[a->index];
    size_t dim = r->dim;
    int rc;
    if (!ws->tr) {
        if ((rc = c->make_worker(c->worker_ud, &ws->tr, &ws->vec)) != LOOM_OK) {
            ws->tr = NULL;
            ws->vec = NULL;
            fail(r, rc);
            return NULL;
        }
        ws->update = loom_alloc(dim * sizeof(float));
        ws->dc = c->fit.scaffold ? loom_alloc(dim * sizeof(float)) : NULL;
        ws->mask = c->hetero ? malloc(dim) : NULL;
        ws->stored = c->replay_dir ? loom_alloc(dim * sizeof(float)) : NULL;
        ws->pers = r->evals ? loom_alloc(dim * sizeof(float)) : NULL;
        if (!ws->update || (c->fit.scaffold && !ws->dc) || (c->hetero && !ws->mask) || (c->replay_dir && !ws->stored) || (r->evals && !ws->pers)) {
            fail(r, LOOM_ENOMEM);
            return NULL;
        }
    }
    for (;;) {
        pthread_mutex_lock(&r->mu);
        if (r->failed || r->next >= r->count) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        int pos = r->next++;
        pthread_mutex_unlock(&r->mu);
        int client = r->list[pos];
        if (a->phase == 0) fit_one(r, ws, client);
        else if (a->phase == 1) eval_one(r, ws, client);
        else if (a->phase == 3) client_eval_one(r, ws, client);
        else fit_async(r, ws, client); /* phase 2: `client` is a place in r->jobs */
        pthread_mutex_lock(&r->mu);
        int done = ++r->done;
        pthread_mutex_unlock(&r->mu);
        if (a->phase == 0 && c->on_client) c->on_client(r->round, done, r->count, c->cb_ud);
    }
    return NULL;
}

static int run_phase(sim_run *r, int phase, const int *list, int count) {
    const loom_sim_config *c = r->c;
    r->list = list;
    r->count = count;
    r->next = r->done = 0;
    int W = c->workers > 0 ? c->workers : 1;
    if (W > count) W = count;
    pthread_t *th = malloc((size_t)W * sizeof *th);
    worker_arg *args = malloc((size_t)W * sizeof *args);
    if (!th || !args) {
        free(th);
        free(args);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    int started = 0;
    for (int i = 0; i < W; i++) {
        args[i] = (worker_arg){r, phase, i};
        if (pthread_create(&th[i], NULL, worker_main, &args[i]) != 0) {
            fail(r, loom_error(LOOM_ENOMEM, "cannot start worker thread %d", i));
            break;
        }
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(th);
    free(args);
    if (r->failed) return loom_error(r->failed_rc, "%s", r->failed_msg);
    return LOOM_OK;
}

/* A phase over this process's clients of list; in a distributed run then the sum of every process's
 * share of the round (sim_dist.c). */
static int run_mine(sim_run *r, int phase, const int *list, int count) {
    if (!lm_dist_on(r->c)) return run_phase(r, phase, list, count);
    int k = lm_dist_mine(r->c, list, count, r->mine), rc = k > 0 ? run_phase(r, phase, r->mine, k) : LOOM_OK;
    return rc == LOOM_OK ? lm_dist_exchange(r->c, r->eng) : rc;
}

/* ------------------------------------------------------------------ asynchronous modes */

/* One place of a training client: its task (version snapshot), simulated arrival and update. */
typedef struct async_job {
    int active;     /* a client holds this place */
    int client;
    double arrive;  /* simulated arrival time */
    loom_task task;
    int trained;
    int failed;     /* the client failed (its training, or an injected failure) */
    char why[512];
    float *buf;     /* (dim) its update */
    size_t len;
    double loss;
    long tokens;
} async_job;

/* Trains the client of place `job` on its task (a worker, phase 2). Same client code as fit_one. */
static void fit_async(sim_run *r, worker_slot *ws, int job) {
    const loom_sim_config *c = r->c;
    async_job *j = &r->jobs[job];
    const loom_client *cl = &c->part->clients[j->client];
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = j->buf;
    loom_client_ctx ctx = {ws->tr, ws->vec, r->dim, r->c->kseed};
    loom_client_data d = loom_sim_client_data(c, j->client);
    int rc = loom_client_run_fit(r->algo, &ctx, &d, j->task.round, j->task.global, NULL, &c->fit, &c->compress,
                                 &r->states[j->client], &out);
    int fault = fault_of(c, j->client);
    j->trained = 1;
    j->len = r->dim;
    j->loss = out.res.loss;
    j->tokens = out.res.tokens;
    if (rc != LOOM_OK || fault == LOOM_FAULT_FAIL) {
        j->failed = 1;
        snprintf(j->why, sizeof j->why, "%s (%s)", rc != LOOM_OK ? loom_errmsg() : "injected failure", cl->name);
        return;
    }
    switch (fault) {
    case LOOM_FAULT_NAN: j->buf[r->dim / 2] = NAN; break;
    case LOOM_FAULT_INF: j->buf[0] = INFINITY; break;
    case LOOM_FAULT_HUGE:
        for (size_t i = 0; i < r->dim; i++) j->buf[i] *= 1e6f;
        break;
    case LOOM_FAULT_SHORT: j->len = r->dim - 1; break;
    default: break;
    }
}

static int async_start(sim_run *r, async_job *j, int client, double now, char *busy) {
    int rc = loom_engine_async_task(r->eng, client, now, &j->task);
    if (rc != LOOM_OK) return rc;
    j->active = 1;
    j->client = client;
    j->arrive = now + loom_sim_client_seconds(r->c, client);
    j->trained = j->failed = 0;
    busy[client] = 1;
    return LOOM_OK;
}

/* After a new version: its evaluation (if due) and its metrics row. */
static int async_version(sim_run *r, FILE *mf, double *t0) {
    const loom_sim_config *c = r->c;
    const int *elist;
    int ne = 0, rc;
    r->round = (int)loom_engine_version(r->eng);
    if ((rc = loom_engine_eval_plan(r->eng, &elist, &ne)) != LOOM_OK) return rc;
    if (ne > 0 && (rc = run_phase(r, 1, elist, ne)) != LOOM_OK) return rc;
    loom_round_metrics m;
    double now = loom_now();
    if ((rc = loom_engine_async_end_version(r->eng, now - *t0, &m)) != LOOM_OK) return rc;
    *t0 = now;
    if (mf) fflush(mf);
    if (c->on_round) c->on_round(&m, c->cb_ud);
    return LOOM_OK;
}

/* The event loop of the asynchronous modes on the virtual clock (see include/loom/sim.h). */
static int run_async(sim_run *r, FILE *mf) {
    const loom_sim_config *c = r->c;
    const int N = r->n_clients;
    int m = c->sample > 0 ? c->sample : c->sample_frac > 0 ? (int)ceil(c->sample_frac * N) : N;
    if (m > N) m = N;
    if (m < 1) m = 1;
    const int C = c->concurrency > 0 ? c->concurrency : m;
    int rc = LOOM_OK;
    if (c->rounds == 0) return LOOM_OK;
    char *busy = calloc((size_t)N, 1);
    int *list = malloc((size_t)N * sizeof *list), *idx = malloc((size_t)C * sizeof *idx);
    int *batch = malloc((size_t)C * sizeof *batch);
    r->jobs = calloc((size_t)C, sizeof *r->jobs);
    if (!busy || !list || !idx || !batch || !r->jobs) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < C; i++)
        if (!(r->jobs[i].buf = loom_alloc(r->dim * sizeof(float)))) {
            rc = loom_error(LOOM_ENOMEM, "out of memory for %d updates of %zu values", C, r->dim);
            goto out;
        }
    loom_rng next;
    loom_rng_init(&next, c->seed, LOOM_STREAM_ASYNC_NEXT);
    int n0 = 0;
    if ((rc = loom_engine_sample(N, C, 0, c->seed, 0, list, &n0)) != LOOM_OK) goto out;
    for (int i = 0; i < n0; i++)
        if ((rc = async_start(r, &r->jobs[i], list[i], 0, busy)) != LOOM_OK) goto out;
    const uint64_t rounds = (uint64_t)c->rounds;
    long idle_arrivals = 0; /* arrivals since the last new version */
    const long idle_limit = 64L * (C + N) + 1024;
    double t0 = loom_now();
    while (loom_engine_version(r->eng) < rounds) {
        /* the next instant and its arrivals, in client-id order */
        double T = INFINITY;
        for (int i = 0; i < C; i++)
            if (r->jobs[i].active && r->jobs[i].arrive < T) T = r->jobs[i].arrive;
        int nb = 0, untrained = 0;
        for (int i = 0; i < C; i++) {
            async_job *j = &r->jobs[i];
            if (!j->active) continue;
            if (j->arrive == T) {
                int k = nb++;
                for (; k > 0 && r->jobs[batch[k - 1]].client > j->client; k--) batch[k] = batch[k - 1];
                batch[k] = i;
            }
            if (!j->trained) idx[untrained++] = i;
        }
        if (nb == 0) {
            rc = loom_error(LOOM_ESTATE, "asynchronous simulation: no client is training");
            goto out;
        }
        int need = 0;
        for (int k = 0; k < nb; k++) need |= !r->jobs[batch[k]].trained;
        /* every started client's input is fixed: train all untrained ones at once, in parallel */
        if (need && (rc = run_phase(r, 2, idx, untrained)) != LOOM_OK) goto out;
        int freed = 0;
        for (int k = 0; k < nb && loom_engine_version(r->eng) < rounds; k++) {
            async_job *j = &r->jobs[batch[k]];
            int made = 0;
            if (j->failed) {
                loom_engine_async_fail(r->eng, j->client, j->why, T);
            } else {
                const loom_client *cl = &c->part->clients[j->client];
                loom_update u = {j->task.run_id, j->task.round, j->task.version, j->client, (uint64_t)cl->n_train,
                                 j->loss, j->tokens, LOOM_CODEC_F32, j->len, j->buf, NULL, 0};
                if (c->compress.codec != LOOM_CODEC_F32) { /* what the codec delivers, and what it would send */
                    u.codec = c->compress.codec;
                    u.wire_bytes = loom_update_encoded_size(&u, &c->compress);
                }
                loom_update_verdict v;
                int src = loom_engine_async_submit(r->eng, &u, T, &v, &made);
                if (src != LOOM_OK && v == LOOM_UPDATE_ACCEPTED) { /* the server strategy failed */
                    rc = src;
                    goto out;
                }
            }
            j->active = 0;
            busy[j->client] = 0;
            batch[freed++] = batch[k];
            if (made) {
                idle_arrivals = 0;
                if ((rc = async_version(r, mf, &t0)) != LOOM_OK) goto out;
            } else if (++idle_arrivals > idle_limit) {
                rc = loom_error(LOOM_ESTATE, "asynchronous simulation: %ld arrivals without a new version (every update refused?)",
                                idle_arrivals);
                goto out;
            }
        }
        if (loom_engine_version(r->eng) >= rounds) break;
        /* each freed place goes to a client drawn among the idle ones */
        for (int k = 0; k < freed; k++) {
            int n_idle = 0;
            for (int i = 0; i < N; i++) n_idle += !busy[i];
            if (n_idle == 0) break;
            int pick = (int)loom_rng_below(&next, (uint32_t)n_idle), client = -1;
            for (int i = 0; i < N; i++)
                if (!busy[i] && pick-- == 0) {
                    client = i;
                    break;
                }
            if ((rc = async_start(r, &r->jobs[batch[k]], client, T, busy)) != LOOM_OK) goto out;
        }
    }
out:
    for (int i = 0; r->jobs && i < C; i++) loom_free(r->jobs[i].buf);
    free(r->jobs);
    r->jobs = NULL;
    free(busy);
    free(list);
    free(idx);
    free(batch);
    return rc;
}

/* ------------------------------------------------------------------ checkpoints */

/* The checkpoint: the engine's part (global vector, strategy state, run metadata) and the clients'
 * state this driver keeps (data positions, SCAFFOLD c_i, compression residuals). The final
 * global.safetensors holds the vector alone. */
static int save_checkpoint(sim_run *r, int next_round, const char *file) {
    const loom_sim_config *c = r->c;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", c->out_dir, file);
    loom_st_writer *w;
    int rc = loom_st_writer_create(&w);
    if (rc != LOOM_OK) return rc;
    int final = !strcmp(file, "global.safetensors");
    int64_t *steps = NULL;
    rc = loom_engine_checkpoint_add(r->eng, w, r->manifest, next_round, final);
    if (!final && rc == LOOM_OK) {
        steps = malloc((size_t)r->n_clients * sizeof *steps);
        if (!steps) rc = loom_error(LOOM_ENOMEM, "out of memory");
        for (int i = 0; steps && i < r->n_clients; i++) steps[i] = (int64_t)r->states[i].steps;
        int64_t shape[1] = {r->n_clients};
        if (rc == LOOM_OK) rc = loom_st_writer_add(w, "client_steps", LOOM_DT_I64, 1, shape, steps);
        for (int i = 0; i < r->n_clients && rc == LOOM_OK; i++) {
            char nm[48];
            int64_t sh[1] = {(int64_t)r->dim};
            if (r->states[i].control) {
                snprintf(nm, sizeof nm, "client_control.%d", i);
                rc = loom_st_writer_add(w, nm, LOOM_DT_F32, 1, sh, r->states[i].control);
            }
            if (rc == LOOM_OK && r->states[i].residual) { /* error feedback of compression */
                snprintf(nm, sizeof nm, "client_residual.%d", i);
                sh[0] = (int64_t)r->states[i].residual_dim;
                rc = loom_st_writer_add(w, nm, LOOM_DT_F32, 1, sh, r->states[i].residual);
            }
            if (rc == LOOM_OK && r->states[i].priv) { /* personalization: the client's private values */
                snprintf(nm, sizeof nm, "client_private.%d", i);
                sh[0] = (int64_t)r->states[i].priv_dim;
                rc = loom_st_writer_add(w, nm, LOOM_DT_F32, 1, sh, r->states[i].priv);
            }
        }
    }
    if (rc == LOOM_OK) rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    free(steps);
    return rc;
}

/* The checkpoint's next round, from its metadata (for the checks before any work). */
static int checkpoint_next_round(const char *path, int *next) {
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    const char *v = loom_st_meta(f, "next_round");
    char *end = NULL;
    long n = v ? strtol(v, &end, 10) : -1;
    if (!v || *end || n < 0 || n > 1000000000L)
        rc = loom_error(LOOM_EFORMAT, "%s: next_round is %s", path, v ? v : "missing");
    else *next = (int)n;
    loom_st_close(f);
    return rc;
}

int loom_sim_check_out(const char *out_dir, int resume, int rounds) {
    if (!out_dir) return resume ? loom_error(LOOM_EINVAL, "--resume needs --out (the run directory)") : LOOM_OK;
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", out_dir);
    struct stat st;
    int exists = stat(path, &st) == 0;
    if (!resume) {
        if (exists)
            return loom_error(LOOM_EINVAL,
                              "--out %s holds checkpoint.safetensors from an earlier run: pass --resume to continue "
                              "it, or choose another --out (or delete the file)",
                              out_dir);
        return LOOM_OK;
    }
    if (!exists) return loom_error(LOOM_EINVAL, "--resume: %s does not exist", path);
    int next = 0;
    int rc = checkpoint_next_round(path, &next);
    if (rc != LOOM_OK) return loom_error_context(rc, "--resume");
    if (rounds <= next)
        return loom_error(LOOM_EINVAL,
                          "--resume: the checkpoint in %s has finished %d rounds, so --rounds %d leaves nothing to do "
                          "(give --rounds above %d to continue)",
                          out_dir, next, rounds, next);
    return LOOM_OK;
}

static int load_checkpoint(sim_run *r, const char *from, int *next_round) {
    const loom_sim_config *c = r->c;
    char path[4096];
    if (from) snprintf(path, sizeof path, "%s", from);
    else snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out_dir);
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    rc = loom_engine_checkpoint_load(r->eng, f, r->manifest, path, next_round);
    const loom_st_tensor *t = loom_st_find(f, "client_steps");
    /* continual rounds: the checkpoint's clients keep their state, clients that joined since start fresh */
    const size_t held = t ? t->numel : 0;
    if (rc == LOOM_OK && (!t || t->dtype != LOOM_DT_I64 ||
                          (c->continual ? held > (size_t)r->n_clients : held != (size_t)r->n_clients)))
        rc = loom_error(LOOM_EFORMAT, "%s: client_steps missing or of the wrong size (%zu clients in the checkpoint, %d "
                        "in the run%s)", path, held, r->n_clients, c->continual ? "" : "; new clients need --continual");
    if (rc == LOOM_OK) {
        for (int i = 0; i < (int)held; i++) {
            int64_t s;
            memcpy(&s, (const char *)t->data + (size_t)i * sizeof s, sizeof s);
            r->states[i].steps = (uint64_t)s;
        }
    }
    for (int i = 0; i < r->n_clients && rc == LOOM_OK && c->fit.scaffold; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "client_control.%d", i);
        const loom_st_tensor *ct = loom_st_find(f, nm);
        if (!ct) continue;
        if ((rc = loom_client_state_control(&r->states[i], r->dim)) == LOOM_OK)
            rc = loom_st_to_f32(ct, r->states[i].control, r->dim);
    }
    for (int i = 0; i < r->n_clients && rc == LOOM_OK && c->compress.codec != LOOM_CODEC_F32; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "client_residual.%d", i);
        const loom_st_tensor *rt = loom_st_find(f, nm);
        if (!rt) continue;
        if ((rc = loom_client_state_residual(&r->states[i], r->dim)) == LOOM_OK)
            rc = loom_st_to_f32(rt, r->states[i].residual, r->dim);
        if (rc != LOOM_OK) rc = loom_error_context(rc, "%s: %s", path, nm);
    }
    for (int i = 0; i < r->n_clients && rc == LOOM_OK && !loom_personal_trivial(c->personal); i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "client_private.%d", i);
        const loom_st_tensor *pt = loom_st_find(f, nm);
        if (!pt) continue;
        size_t np = loom_personal_n_private(c->personal);
        if (!(r->states[i].priv = loom_alloc((np ? np : 1) * sizeof(float)))) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            break;
        }
        r->states[i].priv_dim = np;
        if ((rc = loom_st_to_f32(pt, r->states[i].priv, np)) != LOOM_OK) rc = loom_error_context(rc, "%s: %s", path, nm);
    }
    loom_st_close(f);
    return rc;
}

/* ------------------------------------------------------------------ the server's root data (FLTrust) */

static int u32_cmp(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int loom_sim_root_examples(const loom_partition *part, uint64_t seed, size_t n, uint32_t **out) {
    *out = NULL;
    size_t total = 0;
    for (size_t i = 0; i < part->n_clients; i++) total += part->clients[i].n_train;
    if (n == 0 || n > total)
        return loom_error(LOOM_EINVAL, "--root-examples %zu must be in [1, %zu] (the clients' training examples)", n,
                          total);
    uint32_t *all = malloc(total * sizeof *all);
    if (!all) return loom_error(LOOM_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < part->n_clients; i++)
        for (size_t j = 0; j < part->clients[i].n_train; j++) all[k++] = part->clients[i].train[j];
    qsort(all, total, sizeof *all, u32_cmp); /* the draw does not depend on how the clients list them */
    loom_rng r;
    loom_rng_init(&r, seed, LOOM_STREAM_ROOT);
    loom_rng_draw_u32(&r, all, total, n);
    qsort(all, n, sizeof *all, u32_cmp);
    *out = all;
    return LOOM_OK;
}

/* The server's update of this round on its root data (see loom_sim_config.root_idx), into the
 * aggregator. Runs on the driver's thread with worker 0's trainer, before the round's fit phase. */
static int server_reference(sim_run *r, loom_client_state *st) {
    const loom_sim_config *c = r->c;
    worker_slot *ws = &r->slots[0];
    int rc;
    if (!ws->tr) {
        if ((rc = c->make_worker(c->worker_ud, &ws->tr, &ws->vec)) != LOOM_OK) {
            ws->tr = NULL, ws->vec = NULL;
            return rc;
        }
        ws->update = loom_alloc(r->dim * sizeof(float));
        ws->dc = c->fit.scaffold ? loom_alloc(r->dim * sizeof(float)) : NULL;
        if (!ws->update || (c->fit.scaffold && !ws->dc)) return loom_error(LOOM_ENOMEM, "out of memory");
    }
    loom_task task;
    loom_engine_task(r->eng, &task);
    /* the server trains every round: its step counter is a function of the round (a resumed run is the
     * same run) */
    st->steps = (uint64_t)(task.round - 1) * (uint64_t)c->fit.local_steps;
    loom_fit_config fc = c->fit;
    fc.dp_clip = 0; /* the server's own data: no local DP */
    fc.dp_noise = 0;
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = ws->update;
    out.control_delta = ws->dc;
    loom_client_ctx ctx = {ws->tr, ws->vec, r->dim, r->c->kseed};
    const loom_dataset *rds = c->root_ds ? c->root_ds : c->ds;
    loom_client_data d = {rds, c->root_idx, c->n_root, NULL, 0, c->B, c->T, loom_hash2(c->seed, LOOM_STREAM_ROOT)};
    loom_codec_opts none;
    memset(&none, 0, sizeof none);
    none.codec = LOOM_CODEC_F32;
    int threads = omp_get_max_threads(); /* the same thread count as a client's computation */
    omp_set_num_threads(c->client_threads > 0 ? c->client_threads : 1);
    rc = loom_client_run_fit(r->algo, &ctx, &d, task.round, task.global, task.server_control, &fc, &none, st, &out);
    omp_set_num_threads(threads);
    if (rc != LOOM_OK) return loom_error_context(rc, "round %d: the server's update on its root data", task.round);
    return loom_engine_set_reference(r->eng, task.round, ws->update, r->dim);
}

/* ------------------------------------------------------------------ metrics */

/* The metrics sink of the simulator: metrics.jsonl rows, in the format the plots and tests read. */
typedef struct {
    FILE *f;
    const loom_sim_config *c;
    const lm_attack *attack;
    int *mem_clients;    /* the round's accepted clients and their weights (unlearning's membership; */
    uint64_t *mem_w;     /* synchronous rounds only), room for mem_cap */
    int mem_n, mem_cap;
} jsonl_sink;

static void sink_round(void *ud, const loom_round_metrics *m, const int *list, int n) {
    jsonl_sink *s = ud;
    loom_metrics_jsonl_round(s->f, m, list, n); /* no run directory: f is NULL */
    if (s->c->also.round) s->c->also.round(s->c->also.ud, m, list, n);
}

static void sink_client(void *ud, const loom_client_row *r) {
    jsonl_sink *s = ud;
    if (s->mem_clients && r->verdict == LOOM_UPDATE_ACCEPTED && s->mem_n < s->mem_cap) {
        s->mem_clients[s->mem_n] = r->client;
        s->mem_w[s->mem_n++] = r->examples;
    }
    if (s->c->also.client) s->c->also.client(s->c->also.ud, r);
    if (!s->f || !s->c->per_client_rows) return;
    const loom_client *cl = &s->c->part->clients[r->client];
    if (!lm_attack_is(s->attack, r->client)) {
        loom_metrics_jsonl_client(s->f, r, cl->name, cl->n_train);
        return;
    }
    /* an attacker's row: the same row with "attacker": true */
    char *row = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&row, &len);
    if (mem) {
        loom_metrics_jsonl_client(mem, r, cl->name, cl->n_train);
        fclose(mem);
    }
    if (row && len >= 2 && row[len - 2] == '}') fprintf(s->f, "%.*s,\"attacker\":true}\n", (int)(len - 2), row);
    else loom_metrics_jsonl_client(s->f, r, cl->name, cl->n_train);
    free(row);
}

/* A secure-sum backend's checks and holding area. */
static int secure_start(sim_run *r) {
    const loom_sim_config *c = r->c;
    const char *name = c->secure.name ? c->secure.name : "a secure sum";
    if (c->mode != LOOM_ENGINE_SYNC)
        return loom_error(LOOM_EUNSUPPORTED, "%s needs synchronous rounds (not --mode %s)", name,
                          loom_engine_mode_name(c->mode));
    if (c->fit.scaffold) return loom_error(LOOM_EUNSUPPORTED, "%s cannot carry scaffold's control deltas", name);
    int *list = malloc((size_t)r->n_clients * sizeof *list), n = 0, rc;
    if (!list) return loom_error(LOOM_ENOMEM, "out of memory");
    rc = loom_sim_sample(c, 1, list, &n);
    free(list);
    if (rc == LOOM_OK && c->secure.check) rc = c->secure.check(c->secure.ud, n, c->dim);
    if (rc == LOOM_OK) rc = lm_secure_create(&r->secure, c, r->n_clients);
    return rc;
}

/* The per-client evaluation after the last round: every client with test data, rows in client order. */
static void eval_fields(FILE *f, const char *pre, const loom_eval_result *e) {
    double loss = e->tokens ? e->loss_sum / (double)e->tokens : NAN, acc = e->count ? (double)e->correct / (double)e->count : NAN;
    if (isfinite(loss)) fprintf(f, ",\"%s_loss\":%.9g", pre, loss);
    else fprintf(f, ",\"%s_loss\":null", pre);
    if (isfinite(acc)) fprintf(f, ",\"%s_acc\":%.9g", pre, acc);
    else fprintf(f, ",\"%s_acc\":null", pre);
}

static void num_field(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.9g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

static int client_evals(sim_run *r, FILE *mf) {
    const loom_sim_config *c = r->c;
    int N = r->n_clients, n = 0;
    int *list = malloc((size_t)N * sizeof *list);
    if (!list) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < N; i++)
        if (c->part->clients[i].n_test > 0) list[n++] = i;
    r->round = c->rounds + 1;
    int rc = n > 0 ? run_phase(r, 3, list, n) : LOOM_OK;
    free(list);
    if (rc != LOOM_OK) return rc;
    if (c->client_evals) memcpy(c->client_evals, r->evals, (size_t)N * sizeof *r->evals);
    if (!mf) return LOOM_OK;
    for (int i = 0; i < N; i++) {
        const loom_personal_eval *e = &r->evals[i];
        if (!e->evaluated) continue;
        const loom_client *cl = &c->part->clients[i];
        fprintf(mf, "{\"type\":\"client_eval\",\"client\":%d,\"name\":", i);
        json_t *js = json_string(cl->name ? cl->name : "");
        char *enc = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
        fputs(enc ? enc : "\"?\"", mf);
        free(enc);
        json_decref(js);
        fprintf(mf, ",\"examples\":%zu", cl->n_test);
        eval_fields(mf, "global", &e->global);
        if (e->personalized) eval_fields(mf, "personal", &e->personal);
        fprintf(mf, "}\n");
    }
    loom_personal_summary s;
    loom_personal_summarize(r->evals, N, &s);
    size_t np = loom_personal_trivial(c->personal) ? 0 : loom_personal_n_private(c->personal);
    fprintf(mf, "{\"type\":\"personal\",\"clients\":%d,\"finetune_steps\":%d,\"private_values\":%zu,\"shared_values\":%zu",
            s.clients, c->finetune_steps, np, r->dim - np);
    num_field(mf, "global_acc_mean", s.global_acc_mean);
    num_field(mf, "global_acc_min", s.global_acc_min);
    num_field(mf, "global_loss_mean", s.global_loss_mean);
    num_field(mf, "personal_acc_mean", s.personal_acc_mean);
    num_field(mf, "personal_acc_min", s.personal_acc_min);
    num_field(mf, "personal_loss_mean", s.personal_loss_mean);
    fprintf(mf, "}\n");
    fflush(mf);
    return LOOM_OK;
}

int loom_sim_run(const loom_sim_config *c, float *global) {
    if ((!c->ds && !c->client_ds) || !c->part || !c->make_worker || !c->free_worker || !c->init || c->dim == 0)
        return loom_error(LOOM_EINVAL, "simulation needs a dataset, a partition, a worker factory and an initial vector");
    if (c->rounds < 0) return loom_error(LOOM_EINVAL, "--rounds %d must be >= 0", c->rounds);
    if (c->workers < 1) return loom_error(LOOM_EINVAL, "--workers %d must be >= 1", c->workers);
    if (c->fit.local_steps < 1) return loom_error(LOOM_EINVAL, "--local-steps %d must be >= 1", c->fit.local_steps);
    int N = (int)c->part->n_clients;
    if (N < 1) return loom_error(LOOM_EINVAL, "the partition has no clients");
    for (int i = 0; i < N; i++)
        if (c->part->clients[i].n_train == 0)
            return loom_error(LOOM_EINVAL, "client %d (%s) has no training examples: lower --clients or use --min-examples",
                              i, c->part->clients[i].name);
    if (c->sample > N) return loom_error(LOOM_EINVAL, "--sample %d is more than the %d clients", c->sample, N);
    if (c->sample_frac < 0 || c->sample_frac > 1) return loom_error(LOOM_EINVAL, "--sample fraction %g must be in (0, 1]", c->sample_frac);
    if (c->min_updates < 0) return loom_error(LOOM_EINVAL, "--min-updates must be >= 0");
    if (!(c->max_update_norm >= 0) || isinf(c->max_update_norm))
        return loom_error(LOOM_EINVAL, "--max-update-norm %g must be finite and >= 0 (0 = no bound)", c->max_update_norm);
    if (!(c->step_seconds >= 0 && c->time_spread >= 0 && c->deadline >= 0) || isinf(c->step_seconds) ||
        isinf(c->time_spread))
        return loom_error(LOOM_EINVAL, "simulated step time, spread and deadline must be finite and >= 0");
    if (c->mode != LOOM_ENGINE_SYNC && c->resume)
        return loom_error(LOOM_EUNSUPPORTED, "--resume is not supported with --mode %s (asynchronous runs start afresh)",
                          loom_engine_mode_name(c->mode));
    if (c->compress.codec > LOOM_CODEC_SEED_SCALAR || c->compress.chunk < 0 ||
        !(c->compress.topk_frac >= 0 && c->compress.topk_frac <= 1))
        return loom_error(LOOM_EINVAL, "--compress: codec %d (chunk %d, top-k share %g) is not one of none, fp16, "
                          "int8[:CHUNK], topk[:FRAC in (0, 1]] or seed-scalar", (int)c->compress.codec, c->compress.chunk,
                          c->compress.topk_frac);
    if (c->kseed && (c->mode != LOOM_ENGINE_SYNC || c->resume || c->dim != (size_t)loom_kseed_k(c->kseed)))
        return loom_error(LOOM_EUNSUPPORTED, "FedKSeed needs synchronous rounds from the start (no --resume, no --mode "
                          "%s) over its K = %d scalars (the vector has %zu)", loom_engine_mode_name(c->mode),
                          loom_kseed_k(c->kseed), c->dim);
    if (c->keep_checkpoints < 0 || c->keep_updates < 0)
        return loom_error(LOOM_EINVAL, "--keep-checkpoints %d and --keep-updates %d must be >= 0", c->keep_checkpoints,
                          c->keep_updates);
    if ((c->keep_checkpoints || c->keep_updates || c->excluded || c->start_from || c->replay_dir) &&
        (c->mode != LOOM_ENGINE_SYNC || c->secure.sum || c->stack || c->kseed))
        return loom_error(LOOM_EUNSUPPORTED, "unlearning's records (--keep-checkpoints, --keep-updates) and runs "
                          "(--exclude-client, --start-from, --replay-updates) need synchronous rounds without a secure "
                          "sum, FLoRA stacking or FedKSeed");
    if (c->start_from && c->resume) return loom_error(LOOM_EINVAL, "--start-from and --resume exclude each other");
    if ((c->start_from || c->keep_checkpoints || c->keep_updates) && !c->out_dir)
        return loom_error(LOOM_EINVAL, "--keep-checkpoints, --keep-updates and --start-from need --out");
    int rc = loom_sim_check_out(c->out_dir, c->resume, c->rounds);
    if (rc == LOOM_OK) rc = loom_sim_dist_check(c);
    if (rc != LOOM_OK) return rc;

    sim_run r;
    memset(&r, 0, sizeof r);
    r.c = c;
    r.algo = c->algo ? c->algo : &loom_client_local_sgd;
    r.dim = c->dim;
    r.n_clients = N;
    pthread_mutex_init(&r.mu, NULL);
    size_t *n_test = malloc((size_t)N * sizeof *n_test);
    r.states = calloc((size_t)N, sizeof *r.states);
    r.slots = calloc((size_t)c->workers, sizeof *r.slots);
    r.mine = lm_dist_on(c) ? malloc((size_t)N * sizeof *r.mine) : NULL;
    FILE *mf = NULL, *memf = NULL; /* metrics.jsonl, unlearn/membership.jsonl */
    jsonl_sink js = {NULL, c, NULL, NULL, NULL, 0, 0};
    loom_client_state root_state; /* the server's own client state on its root data (FLTrust) */
    loom_client_state_init(&root_state);
    if (!n_test || !r.states || !r.slots || (lm_dist_on(c) && !r.mine)) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    r.manifest = c->manifest;
    if (!r.manifest) {
        int64_t shape[1] = {(int64_t)c->dim};
        if ((rc = loom_tvec_create(&r.own_manifest)) != LOOM_OK ||
            (rc = loom_tvec_add(r.own_manifest, "vector", 1, shape, LOOM_ROLE_SHARED)) != LOOM_OK)
            goto done;
        r.manifest = r.own_manifest;
    }
    if (loom_tvec_dim(r.manifest) != c->dim) {
        rc = loom_error(LOOM_EINVAL, "the vector's manifest describes %zu values, the vector has %zu",
                        loom_tvec_dim(r.manifest), c->dim);
        goto done;
    }
    for (int i = 0; i < N; i++) {
        n_test[i] = c->excluded && c->excluded[i] ? 0 : c->part->clients[i].n_test; /* a removed client: no evaluation */
        loom_client_state_init(&r.states[i]);
    }
    loom_engine_config ec;
    loom_sim_engine_config(c, &ec);
    ec.n_clients = N;
    ec.n_test = n_test;
    ec.sink = (loom_metrics_sink){sink_round, sink_client, &js};
    if ((rc = loom_engine_create(&r.eng, &ec)) != LOOM_OK) goto done;
    loom_strategy *strat = loom_engine_strategy(r.eng);
    int want_grad = loom_strategy_update_kind(strat) == LOOM_UPDATE_GRADIENT;
    if (want_grad != (c->fit.gradient_only != 0)) {
        rc = loom_error(LOOM_EINVAL, "strategy %s expects %s from the clients", c->strategy,
                        want_grad ? "gradients (fit.gradient_only = 1)" : "model deltas");
        goto done;
    }
    if (loom_strategy_uses_control(strat) != (c->fit.scaffold != 0)) {
        rc = loom_error(LOOM_EINVAL, "SCAFFOLD control variates must be used with the scaffold strategy, and only with it");
        goto done;
    }
    if (c->hetero && (c->secure.sum || c->mode != LOOM_ENGINE_SYNC)) {
        rc = loom_error(LOOM_EUNSUPPORTED, "heterogeneous clients need synchronous rounds without a secure sum");
        goto done;
    }
    if (c->hetero && loom_hetero_pruning(c->hetero) && c->resume) {
        rc = loom_error(LOOM_EUNSUPPORTED, "--resume with --hetlora-prune: the pruned ranks are not in the checkpoint");
        goto done;
    }
    if (c->hetero && (loom_hetero_dim(c->hetero) != c->dim || loom_hetero_clients(c->hetero) != N)) {
        rc = loom_error(LOOM_EINVAL, "heterogeneous clients: masks of %zu values for %d clients, the run has %zu "
                        "values and %d clients", loom_hetero_dim(c->hetero), loom_hetero_clients(c->hetero), c->dim, N);
        goto done;
    }
    if (c->stack && (c->secure.sum || c->mode != LOOM_ENGINE_SYNC || c->attack.kind != LOOM_ATTACK_NONE ||
                     c->checkpoint_every > 0 || c->resume)) {
        rc = loom_error(LOOM_EUNSUPPORTED, "FLoRA stacking needs synchronous rounds without a secure sum, attackers, "
                        "checkpoints or --resume (the merged base is not in a checkpoint)");
        goto done;
    }
    if (!loom_personal_trivial(c->personal) &&
        (c->secure.sum || c->mode != LOOM_ENGINE_SYNC || c->stack || loom_personal_dim(c->personal) != c->dim ||
         c->fit.personal != c->personal)) {
        rc = loom_error(LOOM_EUNSUPPORTED, "--private needs synchronous rounds (--mode sync) without a secure sum or "
                        "FLoRA stacking, over the run's vector");
        goto done;
    }
    if (c->finetune_steps < 0 || c->finetune_steps > LOOM_FINETUNE_MAX) {
        rc = loom_error(LOOM_ERANGE, "--finetune-steps %d must be in 0..%d", c->finetune_steps, LOOM_FINETUNE_MAX);
        goto done;
    }
    if (c->finetune_steps > 0 && (c->kseed || (c->algo && c->algo != &loom_client_local_sgd))) {
        rc = loom_error(LOOM_EUNSUPPORTED, "--finetune-steps needs --client-algo sgd");
        goto done;
    }
    int want_evals = c->client_eval || c->finetune_steps > 0 || !loom_personal_trivial(c->personal);
    if (want_evals && c->mode != LOOM_ENGINE_SYNC) {
        rc = loom_error(LOOM_EUNSUPPORTED, "the per-client evaluation (--client-eval, --finetune-steps) needs --mode sync");
        goto done;
    }
    if (want_evals && !(r.evals = calloc((size_t)N, sizeof *r.evals))) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    if (c->stack && !(r.stack_x = loom_alloc(c->dim * sizeof(float)))) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    if (c->secure.sum && (rc = secure_start(&r)) != LOOM_OK) goto done;
    if ((rc = lm_attack_create(&r.attack, c, N)) != LOOM_OK) goto done;
    js.attack = r.attack;
    int want_ref = loom_engine_wants_reference(r.eng);
    const loom_dataset *root_ds = c->root_ds ? c->root_ds : c->ds;
    if (want_ref && (c->mode != LOOM_ENGINE_SYNC || !root_ds || !c->root_idx || c->n_root == 0)) {
        rc = loom_error(LOOM_EINVAL, c->mode != LOOM_ENGINE_SYNC
                                         ? "the aggregator needs the server's update each round: synchronous rounds only"
                                         : "the aggregator needs the server's update on root data: no root examples "
                                           "given (--root-examples)");
        goto done;
    }
    for (size_t i = 0; want_ref && i < c->n_root; i++)
        if (c->root_idx[i] >= root_ds->n) {
            rc = loom_error(LOOM_EINVAL, "root example %u is not in the dataset (%zu examples)", c->root_idx[i],
                            root_ds->n);
            goto done;
        }

    int start = 0;
    char path[4096];
    if (c->out_dir) {
        if (mkdir(c->out_dir, 0755) != 0 && errno != EEXIST) {
            rc = loom_error(LOOM_EIO, "cannot create %s: %s", c->out_dir, strerror(errno));
            goto done;
        }
        if (c->resume) {
            if ((rc = load_checkpoint(&r, NULL, &start)) != LOOM_OK) goto done;
            loom_log(LOOM_INFO, "resuming at round %d", start + 1);
        }
        if (c->start_from) { /* unlearning: a kept start checkpoint of another run */
            if ((rc = load_checkpoint(&r, c->start_from, &start)) != LOOM_OK) goto done;
            if (start >= c->rounds) {
                rc = loom_error(LOOM_EINVAL, "--start-from %s starts round %d, after the last of --rounds %d",
                                c->start_from, start + 1, c->rounds);
                goto done;
            }
        }
        if ((rc = loom_unlearn_mkdirs(c->out_dir, c->keep_updates > 0)) != LOOM_OK) goto done;
        snprintf(path, sizeof path, "%s/unlearn/membership.jsonl", c->out_dir);
        if (c->mode == LOOM_ENGINE_SYNC && !(memf = fopen(path, c->resume ? "a" : "w"))) { /* rounds' members */
            rc = loom_error(LOOM_EIO, "cannot write %s: %s", path, strerror(errno));
            goto done;
        }
        if (memf) {
            js.mem_clients = malloc((size_t)N * sizeof *js.mem_clients);
            js.mem_w = malloc((size_t)N * sizeof *js.mem_w);
            js.mem_cap = N;
            if (!js.mem_clients || !js.mem_w) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                goto done;
            }
        }
        snprintf(path, sizeof path, "%s/metrics.jsonl", c->out_dir);
        mf = fopen(path, c->resume ? "a" : "w");
        if (!mf) {
            rc = loom_error(LOOM_EIO, "cannot write %s: %s", path, strerror(errno));
            goto done;
        }
        js.f = mf;
    }
    if (c->mode != LOOM_ENGINE_SYNC) {
        if (c->checkpoint_every > 0)
            loom_log(LOOM_WARN, "mode %s writes no periodic checkpoints (an asynchronous run cannot resume)",
                     loom_engine_mode_name(c->mode));
        if ((rc = run_async(&r, mf)) == LOOM_OK && c->out_dir) rc = save_checkpoint(&r, c->rounds, "global.safetensors");
        goto done;
    }
    double vclock = 0; /* the virtual clock */
    for (int round = start; round < c->rounds; round++) {
        double t0 = loom_now();
        const int *list;
        int n;
        if (c->out_dir && loom_unlearn_keeps_start(round + 1, c->keep_checkpoints)) { /* kept for unlearning */
            char file[64];
            snprintf(file, sizeof file, "unlearn/start_%06d.safetensors", round + 1);
            if ((rc = save_checkpoint(&r, round, file)) != LOOM_OK) goto done;
        }
        js.mem_n = 0;
        if ((rc = loom_engine_open_round(r.eng, vclock, &list, &n)) != LOOM_OK) goto done;
        if (c->stack && (rc = stack_open(&r, n)) != LOOM_OK) goto done;
        r.t_open = vclock;
        r.round = round + 1;
        if ((rc = lm_attack_open(r.attack, r.round, list, n)) != LOOM_OK) goto done;
        if (want_ref && (rc = server_reference(&r, &root_state)) != LOOM_OK) goto done;
        if ((rc = run_mine(&r, 0, list, n)) != LOOM_OK) goto done;
        if ((rc = lm_attack_finish(r.attack, r.eng, r.secure)) != LOOM_OK) goto done;
        if (r.secure && (rc = lm_secure_finish(r.secure, r.eng, r.round)) != LOOM_OK) goto done;
        double last_arrival = 0;
        for (int i = 0; i < n; i++) last_arrival = fmax(last_arrival, loom_sim_client_seconds(c, list[i]));
        double close = vclock + (c->deadline > 0 ? fmin(c->deadline, last_arrival) : last_arrival);
        if ((rc = loom_engine_close_round(r.eng, close)) != LOOM_OK) goto done;
        if (c->stack && (rc = stack_close(&r, list, n)) != LOOM_OK) goto done;
        vclock = close;
        const int *elist;
        int ne;
        loom_engine_eval_plan(r.eng, &elist, &ne);
        if (ne > 0 && (rc = run_mine(&r, 1, elist, ne)) != LOOM_OK) goto done;
        loom_round_metrics m;
        if ((rc = loom_engine_end_round(r.eng, loom_now() - t0, &m)) != LOOM_OK) goto done;
        if (c->round_eval) { /* continual rounds: the retention test on earlier data */
            double rl = NAN;
            long rt = 0;
            if ((rc = c->round_eval(c->round_eval_ud, r.round, loom_engine_global(r.eng), &rl, &rt)) != LOOM_OK) goto done;
            if (mf)
                fprintf(mf, "{\"type\":\"retention\",\"round\":%d,\"loss\":%.9g,\"perplexity\":%.9g,\"tokens\":%ld}\n",
                        r.round, rl, exp(rl), rt);
        }
        if (mf) fflush(mf);
        if (memf && ((rc = loom_membership_write_row(memf, r.round, js.mem_clients, js.mem_w, js.mem_n)) != LOOM_OK ||
                     fflush(memf) != 0)) {
            if (rc == LOOM_OK) rc = loom_error(LOOM_EIO, "cannot write %s/unlearn/membership.jsonl", c->out_dir);
            goto done;
        }
        if (c->on_round) c->on_round(&m, c->cb_ud);
        int last = round + 1 == c->rounds;
        if (c->out_dir && c->checkpoint_every > 0 && ((round + 1) % c->checkpoint_every == 0 || last))
            if ((rc = save_checkpoint(&r, round + 1, "checkpoint.safetensors")) != LOOM_OK) goto done;
    }
    if (r.evals && (rc = client_evals(&r, mf)) != LOOM_OK) goto done;
    if (c->out_dir) rc = save_checkpoint(&r, c->rounds, "global.safetensors");
done:
    if (r.eng) memcpy(global, loom_engine_global(r.eng), c->dim * sizeof(float));
    else memcpy(global, c->init, c->dim * sizeof(float));
    if (mf) fclose(mf);
    if (memf) fclose(memf);
    free(js.mem_clients);
    free(js.mem_w);
    for (int i = 0; r.states && i < N; i++) loom_client_state_clear(&r.states[i]);
    loom_client_state_clear(&root_state);
    free(r.states);
    free(n_test);
    for (int i = 0; r.slots && i < c->workers; i++) {
        if (r.slots[i].tr || r.slots[i].vec) c->free_worker(c->worker_ud, r.slots[i].tr, r.slots[i].vec);
        loom_free(r.slots[i].update);
        loom_free(r.slots[i].dc);
        free(r.slots[i].mask);
        loom_free(r.slots[i].stored);
        loom_free(r.slots[i].pers);
    }
    free(r.slots);
    free(r.evals);
    free(r.mine);
    loom_free(r.stack_x);
    loom_free(r.stack_u);
    free(r.stack_held);
    loom_engine_free(r.eng);
    lm_secure_free(r.secure);
    lm_attack_free(r.attack);
    loom_tvec_free(r.own_manifest);
    pthread_mutex_destroy(&r.mu);
    return rc;
}
