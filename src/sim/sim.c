/* In-process federated simulation: server-side rounds over a pool of client workers. */
#include "loom/sim.h"

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
#include "loom/safetensors.h"

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
}

uint64_t loom_sim_client_seed(uint64_t seed, int client) { return loom_hash2(seed, LOOM_STREAM_CLIENT + (uint64_t)client); }

int loom_sim_sample(const loom_sim_config *c, int round, int *clients, int *n) {
    int N = (int)c->part->n_clients;
    int m = c->sample > 0 ? c->sample : c->sample_frac > 0 ? (int)ceil(c->sample_frac * N) : N;
    if (m > N) return loom_error(LOOM_EINVAL, "--sample %d is more than the %d clients", m, N);
    if (m < 1) m = 1;
    int *all = malloc((size_t)N * sizeof *all);
    if (!all) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < N; i++) all[i] = i;
    if (m < N) {
        loom_rng r;
        loom_rng_init(&r, c->seed, loom_hash2(LOOM_STREAM_SAMPLE, (uint64_t)round));
        for (int i = 0; i < m; i++) { /* partial Fisher-Yates */
            int j = i + (int)loom_rng_below(&r, (uint32_t)(N - i));
            int t = all[i];
            all[i] = all[j];
            all[j] = t;
        }
        /* fixed (ascending) order of aggregation */
        for (int i = 1; i < m; i++)
            for (int k = i; k > 0 && all[k - 1] > all[k]; k--) {
                int t = all[k];
                all[k] = all[k - 1];
                all[k - 1] = t;
            }
    }
    memcpy(clients, all, (size_t)m * sizeof *clients);
    *n = m;
    free(all);
    return LOOM_OK;
}

/* ------------------------------------------------------------------ shared run state */

typedef struct {
    double loss;
    long tokens;
    double norm;
    const char *status; /* NULL = accepted */
} client_row;

typedef struct {
    loom_trainer *tr;
    float *vec, *update, *dc;
} worker_slot;

typedef struct sim_run {
    const loom_sim_config *c;
    size_t dim;
    int n_clients;
    float *global;
    loom_strategy *strat;
    uint64_t *client_steps;   /* per client: local steps taken so far (data order) */
    float **control;          /* SCAFFOLD c_i per client, allocated on first participation */
    float *server_control;    /* view of the strategy's state (or NULL) */
    /* the current phase */
    const int *list;
    int count;
    int next;                 /* next list position to hand out */
    int turn;                 /* next list position allowed to submit */
    int done;
    int round;
    int failed;
    int failed_rc;
    char failed_msg[512];
    client_row *rows;
    int accepted, rejected;
    double loss_w, weight;
    double *ev_loss;          /* per evaluated client: loss sum, correct, tokens */
    long *ev_correct, *ev_tokens;
    long *ev_count;           /* what accuracy is counted over: tokens (LM) or examples (classification) */
    worker_slot *slots;       /* (workers) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
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

static void fail(sim_run *r, int rc) {
    pthread_mutex_lock(&r->mu);
    if (!r->failed) {
        r->failed = 1;
        r->failed_rc = rc;
        snprintf(r->failed_msg, sizeof r->failed_msg, "%s", loom_errmsg());
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

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
        if (!ws->update || (c->fit.scaffold && !ws->dc)) {
            fail(r, LOOM_ENOMEM);
            return NULL;
        }
    }
    loom_trainer *tr = ws->tr;
    float *vec = ws->vec, *update = ws->update, *dc = ws->dc;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        if (r->failed || r->next >= r->count) {
            pthread_mutex_unlock(&r->mu);
            break;
        }
        int pos = r->next++;
        pthread_mutex_unlock(&r->mu);
        int client = r->list[pos];
        const loom_client *cl = &c->part->clients[client];
        loom_batcher_opts bo;
        loom_batcher_opts_init(&bo);
        bo.B = (size_t)c->B;
        bo.T = (size_t)c->T;
        bo.seed = loom_sim_client_seed(c->seed, client);
        loom_batcher *b = NULL;
        if (a->phase == 0) {
            rc = loom_batcher_create(&b, c->ds, cl->train, cl->n_train, &bo);
            loom_fit_result fr = {0};
            if (rc == LOOM_OK)
                rc = loom_client_fit(tr, vec, dim, r->global, b, r->client_steps[client], &c->fit, r->server_control,
                                     c->fit.scaffold ? r->control[client] : NULL, dc, update, &fr);
            loom_batcher_free(b);
            if (rc != LOOM_OK) {
                loom_error_context(rc, "client %d (%s), round %d", client, cl->name, r->round);
                fail(r, rc);
                break;
            }
            size_t len = dim;
            switch (fault_of(c, client)) {
            case LOOM_FAULT_NAN: update[dim / 2] = NAN; break;
            case LOOM_FAULT_INF: update[0] = INFINITY; break;
            case LOOM_FAULT_HUGE:
                for (size_t i = 0; i < dim; i++) update[i] *= 1e6f;
                break;
            case LOOM_FAULT_SHORT: len = dim - 1; break;
            default: break;
            }
            /* submit in list order: wait for this position's turn */
            pthread_mutex_lock(&r->mu);
            while (r->turn != pos && !r->failed) pthread_cond_wait(&r->cv, &r->mu);
            if (r->failed) {
                pthread_mutex_unlock(&r->mu);
                break;
            }
            loom_update_verdict verdict;
            double norm = 0;
            client_row *row = &r->rows[pos];
            row->loss = fr.loss;
            row->tokens = fr.tokens;
            int ck = loom_update_check(update, len, dim, c->max_update_norm, &verdict, &norm);
            row->norm = norm;
            if (ck != LOOM_OK) {
                row->status = loom_update_verdict_str(verdict);
                r->rejected++;
                loom_log(LOOM_WARN, "round %d: update of client %d (%s) rejected: %s", r->round, client, cl->name,
                         row->status);
            } else {
                double w = (double)cl->n_train;
                int arc = loom_strategy_add(r->strat, update, w, c->fit.scaffold ? dc : NULL);
                if (arc != LOOM_OK) {
                    pthread_mutex_unlock(&r->mu);
                    fail(r, arc);
                    break;
                }
                r->accepted++;
                r->loss_w += fr.loss * w;
                r->weight += w;
            }
            r->client_steps[client] += (uint64_t)c->fit.local_steps; /* data consumed, accepted or not */
            r->turn++;
            r->done++;
            int done = r->done;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
            if (c->on_client) c->on_client(r->round, done, r->count, c->cb_ud);
        } else {
            bo.once = 1;
            bo.shuffle = 0;
            double ls = 0;
            long corr = 0, toks = 0, nex = 0;
            if (c->ds->kind == LOOM_DS_CLASSIFY) {
                /* accuracy = the label whose verbalizer is most likely; counted per example */
                rc = loom_client_evaluate_cls(tr, vec, dim, r->global, c->ds, cl->test, cl->n_test, &ls, &toks, &corr, &nex);
                r->ev_count[pos] = nex;
            } else {
                rc = loom_batcher_create(&b, c->ds, cl->test, cl->n_test, &bo);
                if (rc == LOOM_OK && cl->n_test > 0) rc = loom_client_evaluate(tr, vec, dim, r->global, b, &ls, &corr, &toks);
                loom_batcher_free(b);
                r->ev_count[pos] = toks;
            }
            if (rc != LOOM_OK) {
                loom_error_context(rc, "evaluating client %d (%s)", client, cl->name);
                fail(r, rc);
                break;
            }
            r->ev_loss[pos] = ls;
            r->ev_correct[pos] = corr;
            r->ev_tokens[pos] = toks;
        }
    }
    return NULL;
}

static int run_phase(sim_run *r, int phase, const int *list, int count) {
    const loom_sim_config *c = r->c;
    r->list = list;
    r->count = count;
    r->next = r->turn = r->done = 0;
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

/* ------------------------------------------------------------------ checkpoints */

static int write_vector(loom_st_writer *w, const loom_sim_config *c, const char *prefix, const float *v, size_t dim,
                        char **names, int *nn) {
    int rc = LOOM_OK;
    if (c->entries && c->n_entries > 0) {
        for (int i = 0; i < c->n_entries && rc == LOOM_OK; i++) {
            const loom_vec_entry *e = &c->entries[i];
            char *nm = malloc(strlen(prefix) + strlen(e->name) + 1);
            sprintf(nm, "%s%s", prefix, e->name);
            names[(*nn)++] = nm;
            rc = loom_st_writer_add(w, nm, LOOM_DT_F32, e->ndim, e->shape, v + e->offset);
        }
    } else {
        char *nm = malloc(strlen(prefix) + 8);
        sprintf(nm, "%svector", prefix);
        names[(*nn)++] = nm;
        int64_t shape[1] = {(int64_t)dim};
        rc = loom_st_writer_add(w, nm, LOOM_DT_F32, 1, shape, v);
    }
    return rc;
}

static int read_vector(const loom_st_file *f, const loom_sim_config *c, const char *prefix, float *v, size_t dim) {
    char nm[512];
    if (c->entries && c->n_entries > 0) {
        for (int i = 0; i < c->n_entries; i++) {
            snprintf(nm, sizeof nm, "%s%s", prefix, c->entries[i].name);
            const loom_st_tensor *t = loom_st_find(f, nm);
            if (!t) return loom_error(LOOM_ENOTFOUND, "checkpoint has no tensor %s", nm);
            int rc = loom_st_to_f32(t, v + c->entries[i].offset, c->entries[i].numel);
            if (rc != LOOM_OK) return loom_error_context(rc, "checkpoint tensor %s", nm);
        }
        return LOOM_OK;
    }
    snprintf(nm, sizeof nm, "%svector", prefix);
    const loom_st_tensor *t = loom_st_find(f, nm);
    if (!t) return loom_error(LOOM_ENOTFOUND, "checkpoint has no tensor %s", nm);
    return loom_st_to_f32(t, v, dim);
}

static int save_checkpoint(sim_run *r, int next_round, const char *file) {
    const loom_sim_config *c = r->c;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", c->out_dir, file);
    loom_st_writer *w;
    int rc = loom_st_writer_create(&w);
    if (rc != LOOM_OK) return rc;
    int cap = (c->n_entries > 0 ? c->n_entries : 1) + 16 + r->n_clients;
    char **names = calloc((size_t)cap, sizeof *names);
    int nn = 0;
    rc = write_vector(w, c, "", r->global, r->dim, names, &nn);
    int final = !strcmp(file, "global.safetensors");
    int64_t *steps = NULL;
    if (!final) {
        size_t ns = loom_strategy_state_count(r->strat);
        for (size_t i = 0; i < ns && rc == LOOM_OK; i++) {
            const char *sn;
            float *data;
            size_t len;
            loom_strategy_state(r->strat, i, &sn, &data, &len);
            char *nm = malloc(strlen(sn) + 16);
            sprintf(nm, "strategy.%s", sn);
            names[nn++] = nm;
            int64_t shape[1] = {(int64_t)len};
            rc = loom_st_writer_add(w, nm, LOOM_DT_F32, 1, shape, data);
        }
        steps = malloc((size_t)r->n_clients * sizeof *steps);
        for (int i = 0; i < r->n_clients; i++) steps[i] = (int64_t)r->client_steps[i];
        int64_t shape[1] = {r->n_clients};
        if (rc == LOOM_OK) rc = loom_st_writer_add(w, "client_steps", LOOM_DT_I64, 1, shape, steps);
        for (int i = 0; i < r->n_clients && rc == LOOM_OK && r->control; i++) {
            if (!r->control[i]) continue;
            char *nm = malloc(32);
            snprintf(nm, 32, "client_control.%d", i);
            if (nn >= cap) break;
            names[nn++] = nm;
            int64_t sh[1] = {(int64_t)r->dim};
            rc = loom_st_writer_add(w, nm, LOOM_DT_F32, 1, sh, r->control[i]);
        }
    }
    char buf[64];
    snprintf(buf, sizeof buf, "%d", next_round);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "next_round", buf);
    snprintf(buf, sizeof buf, "%zu", r->dim);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "dim", buf);
    snprintf(buf, sizeof buf, "%d", r->n_clients);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "clients", buf);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)c->seed);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "seed", buf);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "strategy", loom_strategy_name(r->strat));
    if (rc == LOOM_OK) rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    for (int i = 0; i < nn; i++) free(names[i]);
    free(names);
    free(steps);
    return rc;
}

static int load_checkpoint(sim_run *r, int *next_round) {
    const loom_sim_config *c = r->c;
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out_dir);
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    const char *v;
    char want[64];
#define EXPECT(key, fmt, val)                                                                                  \
    snprintf(want, sizeof want, fmt, val);                                                                     \
    v = loom_st_meta(f, key);                                                                                  \
    if (!v || strcmp(v, want)) {                                                                               \
        rc = loom_error(LOOM_EINVAL, "%s: %s is %s, this run has %s: resume needs the same configuration", path,  \
                        key, v ? v : "missing", want);                                                         \
        loom_st_close(f);                                                                                      \
        return rc;                                                                                             \
    }
    EXPECT("dim", "%zu", r->dim);
    EXPECT("clients", "%d", r->n_clients);
    EXPECT("seed", "%llu", (unsigned long long)c->seed);
    EXPECT("strategy", "%s", loom_strategy_name(r->strat));
#undef EXPECT
    v = loom_st_meta(f, "next_round");
    *next_round = v ? atoi(v) : 0;
    rc = read_vector(f, c, "", r->global, r->dim);
    size_t ns = loom_strategy_state_count(r->strat);
    for (size_t i = 0; i < ns && rc == LOOM_OK; i++) {
        const char *sn;
        float *data;
        size_t len;
        loom_strategy_state(r->strat, i, &sn, &data, &len);
        char nm[256];
        snprintf(nm, sizeof nm, "strategy.%s", sn);
        const loom_st_tensor *t = loom_st_find(f, nm);
        if (!t) {
            rc = loom_error(LOOM_ENOTFOUND, "%s: no strategy state %s", path, nm);
            break;
        }
        float *tmp = loom_alloc(len * sizeof(float));
        rc = loom_st_to_f32(t, tmp, len);
        if (rc == LOOM_OK) rc = loom_strategy_state_load(r->strat, sn, tmp, len);
        loom_free(tmp);
    }
    const loom_st_tensor *t = loom_st_find(f, "client_steps");
    if (rc == LOOM_OK && (!t || t->numel != (size_t)r->n_clients || t->dtype != LOOM_DT_I64))
        rc = loom_error(LOOM_EFORMAT, "%s: client_steps missing or of the wrong size", path);
    if (rc == LOOM_OK) {
        int64_t *s = malloc((size_t)r->n_clients * sizeof *s);
        memcpy(s, t->data, (size_t)r->n_clients * sizeof *s);
        for (int i = 0; i < r->n_clients; i++) r->client_steps[i] = (uint64_t)s[i];
        free(s);
    }
    for (int i = 0; i < r->n_clients && rc == LOOM_OK && r->control; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "client_control.%d", i);
        const loom_st_tensor *ct = loom_st_find(f, nm);
        if (!ct) continue;
        if (!r->control[i] && !(r->control[i] = loom_calloc(r->dim, sizeof(float)))) rc = LOOM_ENOMEM;
        else rc = loom_st_to_f32(ct, r->control[i], r->dim);
    }
    loom_st_close(f);
    return rc;
}

/* ------------------------------------------------------------------ metrics */

static void json_str(FILE *f, const char *s) {
    json_t *j = json_string(s ? s : ""); /* NULL for invalid UTF-8: a placeholder is written */
    char *e = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    fputs(e ? e : "\"?\"", f);
    free(e);
    json_decref(j);
}

static void num(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.9g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

/* ------------------------------------------------------------------ the run */

int loom_sim_run(const loom_sim_config *c, float *global) {
    if (!c->ds || !c->part || !c->make_worker || !c->free_worker || !c->init || c->dim == 0)
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

    sim_run r;
    memset(&r, 0, sizeof r);
    r.c = c;
    r.dim = c->dim;
    r.n_clients = N;
    r.global = global;
    memcpy(global, c->init, c->dim * sizeof(float));
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    loom_strategy_params sp = c->sp;
    if (!strcmp(c->strategy, "scaffold") && sp.num_clients == 0) sp.num_clients = N;
    int rc = loom_strategy_create(&r.strat, c->strategy, &sp, c->dim);
    if (rc != LOOM_OK) return rc;
    int want_grad = loom_strategy_update_kind(r.strat) == LOOM_UPDATE_GRADIENT;
    if (want_grad != (c->fit.gradient_only != 0)) {
        loom_strategy_free(r.strat);
        return loom_error(LOOM_EINVAL, "strategy %s expects %s from the clients", c->strategy,
                          want_grad ? "gradients (fit.gradient_only = 1)" : "model deltas");
    }
    if (loom_strategy_uses_control(r.strat) != (c->fit.scaffold != 0)) {
        loom_strategy_free(r.strat);
        return loom_error(LOOM_EINVAL, "SCAFFOLD control variates must be used with the scaffold strategy, and only with it");
    }
    int *list = malloc((size_t)N * sizeof *list), *elist = malloc((size_t)N * sizeof *elist);
    r.client_steps = calloc((size_t)N, sizeof *r.client_steps);
    r.rows = calloc((size_t)N, sizeof *r.rows);
    r.ev_loss = calloc((size_t)N, sizeof *r.ev_loss);
    r.ev_correct = calloc((size_t)N, sizeof *r.ev_correct);
    r.ev_tokens = calloc((size_t)N, sizeof *r.ev_tokens);
    r.ev_count = calloc((size_t)N, sizeof *r.ev_count);
    r.slots = calloc((size_t)c->workers, sizeof *r.slots);
    if (c->fit.scaffold) r.control = calloc((size_t)N, sizeof *r.control);
    FILE *mf = NULL;
    if (!list || !elist || !r.client_steps || !r.rows || !r.ev_loss || !r.ev_correct || !r.ev_tokens || !r.ev_count || !r.slots ||
        (c->fit.scaffold && !r.control)) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    if (c->fit.scaffold) {
        size_t len;
        loom_strategy_state_find(r.strat, "server_control", &r.server_control, &len);
    }
    int start = 0;
    if (c->out_dir) {
        if (mkdir(c->out_dir, 0755) != 0 && errno != EEXIST) {
            rc = loom_error(LOOM_EIO, "cannot create %s: %s", c->out_dir, strerror(errno));
            goto done;
        }
        if (c->resume) {
            if ((rc = load_checkpoint(&r, &start)) != LOOM_OK) goto done;
            loom_log(LOOM_INFO, "resuming at round %d", start + 1);
        }
        char path[4096];
        snprintf(path, sizeof path, "%s/metrics.jsonl", c->out_dir);
        mf = fopen(path, c->resume ? "a" : "w");
        if (!mf) {
            rc = loom_error(LOOM_EIO, "cannot write %s: %s", path, strerror(errno));
            goto done;
        }
    }
    for (int round = start; round < c->rounds; round++) {
        double t0 = loom_now();
        loom_round_metrics m;
        memset(&m, 0, sizeof m);
        m.round = round + 1;
        m.eval_loss = m.eval_acc = NAN;
        int n;
        if ((rc = loom_sim_sample(c, round, list, &n)) != LOOM_OK) goto done;
        if (c->fit.scaffold)
            for (int i = 0; i < n; i++)
                if (!r.control[list[i]] && !(r.control[list[i]] = loom_calloc(c->dim, sizeof(float)))) {
                    rc = LOOM_ENOMEM;
                    goto done;
                }
        memset(r.rows, 0, (size_t)n * sizeof *r.rows);
        r.accepted = r.rejected = 0;
        r.loss_w = r.weight = 0;
        r.round = round + 1;
        if ((rc = loom_strategy_begin_round(r.strat, global)) != LOOM_OK) goto done;
        if ((rc = run_phase(&r, 0, list, n)) != LOOM_OK) goto done;
        m.sampled = n;
        m.accepted = r.accepted;
        m.rejected = r.rejected;
        m.train_loss = r.weight > 0 ? r.loss_w / r.weight : NAN;
        double per = (double)c->dim * sizeof(float) * (c->fit.scaffold ? 2 : 1);
        m.bytes_down = per * n;
        m.bytes_up = per * (n - 0); /* every sampled client uploads, accepted or not */
        if (r.accepted >= (c->min_updates > 0 ? c->min_updates : 1)) {
            if ((rc = loom_strategy_end_round(r.strat, global)) != LOOM_OK) goto done;
        } else {
            /* too few usable updates: the global model stays as it was */
            loom_strategy_abort_round(r.strat);
            loom_log(LOOM_WARN, "round %d: %d accepted updates, fewer than the %d required; global model unchanged",
                     round + 1, r.accepted, c->min_updates);
        }
        /* evaluation on the clients' test splits */
        int last = round + 1 == c->rounds;
        if (last || (c->eval_every > 0 && (round + 1) % c->eval_every == 0)) {
            int ne = 0;
            for (int i = 0; i < N; i++)
                if (c->part->clients[i].n_test > 0) elist[ne++] = i;
            if (c->eval_clients > 0 && ne > c->eval_clients) {
                loom_rng er;
                loom_rng_init(&er, c->seed, LOOM_STREAM_EVAL);
                for (int i = 0; i < c->eval_clients; i++) {
                    int j = i + (int)loom_rng_below(&er, (uint32_t)(ne - i));
                    int t = elist[i];
                    elist[i] = elist[j];
                    elist[j] = t;
                }
                ne = c->eval_clients;
                for (int i = 1; i < ne; i++)
                    for (int k = i; k > 0 && elist[k - 1] > elist[k]; k--) {
                        int t = elist[k];
                        elist[k] = elist[k - 1];
                        elist[k - 1] = t;
                    }
            }
            if (ne > 0) {
                if ((rc = run_phase(&r, 1, elist, ne)) != LOOM_OK) goto done;
                double ls = 0, s1 = 0, s2 = 0, a1 = 0, a2 = 0;
                long corr = 0, toks = 0, count = 0;
                int k = 0;
                for (int i = 0; i < ne; i++) {
                    if (r.ev_tokens[i] == 0 || r.ev_count[i] == 0) continue;
                    ls += r.ev_loss[i];
                    corr += r.ev_correct[i];
                    toks += r.ev_tokens[i];
                    count += r.ev_count[i];
                    double l = r.ev_loss[i] / r.ev_tokens[i], a = (double)r.ev_correct[i] / r.ev_count[i];
                    s1 += l;
                    s2 += l * l;
                    a1 += a;
                    a2 += a * a;
                    k++;
                }
                if (k > 0) {
                    m.evaluated = k;
                    m.eval_loss = ls / toks;
                    m.eval_acc = (double)corr / count;
                    m.eval_loss_mean = s1 / k;
                    m.eval_loss_std = sqrt(fmax(0, s2 / k - (s1 / k) * (s1 / k)));
                    m.eval_acc_mean = a1 / k;
                    m.eval_acc_std = sqrt(fmax(0, a2 / k - (a1 / k) * (a1 / k)));
                }
            }
        }
        m.seconds = loom_now() - t0;
        if (mf) {
            fprintf(mf, "{\"type\":\"round\",\"round\":%d,\"sampled\":%d,\"accepted\":%d,\"rejected\":%d", m.round, n,
                    m.accepted, m.rejected);
            num(mf, "train_loss", m.train_loss);
            if (m.evaluated) {
                num(mf, "eval_loss", m.eval_loss);
                num(mf, "eval_acc", m.eval_acc);
                num(mf, "perplexity", exp(m.eval_loss));
                num(mf, "eval_loss_mean", m.eval_loss_mean);
                num(mf, "eval_loss_std", m.eval_loss_std);
                num(mf, "eval_acc_mean", m.eval_acc_mean);
                num(mf, "eval_acc_std", m.eval_acc_std);
                fprintf(mf, ",\"evaluated_clients\":%d", m.evaluated);
            }
            num(mf, "bytes_down", m.bytes_down);
            num(mf, "bytes_up", m.bytes_up);
            num(mf, "seconds", m.seconds);
            fprintf(mf, ",\"clients\":[");
            for (int i = 0; i < n; i++) fprintf(mf, "%s%d", i ? "," : "", list[i]);
            fprintf(mf, "]}\n");
            if (c->per_client_rows)
                for (int i = 0; i < n; i++) {
                    const loom_client *cl = &c->part->clients[list[i]];
                    fprintf(mf, "{\"type\":\"client\",\"round\":%d,\"client\":%d,\"name\":", m.round, list[i]);
                    json_str(mf, cl->name);
                    fprintf(mf, ",\"examples\":%zu,\"tokens\":%ld", cl->n_train, r.rows[i].tokens);
                    num(mf, "loss", r.rows[i].loss);
                    num(mf, "update_norm", r.rows[i].norm);
                    fprintf(mf, ",\"status\":");
                    json_str(mf, r.rows[i].status ? r.rows[i].status : "accepted");
                    fprintf(mf, "}\n");
                }
            fflush(mf);
        }
        if (c->on_round) c->on_round(&m, c->cb_ud);
        if (c->out_dir && c->checkpoint_every > 0 && ((round + 1) % c->checkpoint_every == 0 || last))
            if ((rc = save_checkpoint(&r, round + 1, "checkpoint.safetensors")) != LOOM_OK) goto done;
    }
    if (c->out_dir) rc = save_checkpoint(&r, c->rounds, "global.safetensors");
done:
    if (mf) fclose(mf);
    if (r.control)
        for (int i = 0; i < N; i++) loom_free(r.control[i]);
    free(r.control);
    free(list);
    free(elist);
    free(r.client_steps);
    free(r.rows);
    free(r.ev_loss);
    free(r.ev_correct);
    free(r.ev_tokens);
    free(r.ev_count);
    for (int i = 0; r.slots && i < c->workers; i++) {
        if (r.slots[i].tr || r.slots[i].vec) c->free_worker(c->worker_ud, r.slots[i].tr, r.slots[i].vec);
        loom_free(r.slots[i].update);
        loom_free(r.slots[i].dc);
    }
    free(r.slots);
    loom_strategy_free(r.strat);
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cv);
    return rc;
}
