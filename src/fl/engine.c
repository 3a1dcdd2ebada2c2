/* The round engine: sampling, task hand-out, admission of updates, closing, aggregation through the
 * pipeline, evaluation hand-out and metrics (see include/loom/engine.h). */
#include "loom/engine.h"
#include "loom/personal.h"

#include "loom/safetensors.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "fl/engine_async.h"

enum { PH_IDLE = 0, PH_OPEN, PH_CLOSING, PH_CLOSED };

typedef struct {
    int answered; /* a verdict was given (or a submission is being processed) */
    loom_update_verdict verdict;
    uint64_t examples;
    long tokens;
    double loss, norm;
    double bytes; /* uploaded: the update's wire_bytes, else its f32 size */
} row;

typedef struct {
    int done;
    loom_eval_result r;
} eval_row;

struct loom_engine {
    loom_engine_config c;
    loom_pipeline *pipe;
    float *global;
    float *server_control; /* view of the strategy's state, or NULL */
    size_t dim;
    int N, next_round;
    /* the current round */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int phase, round, inflight;
    double t_open;
    int *list, n;  /* sampled, sorted */
    int *pos;      /* (N) client -> position in list, -1 */
    row *rows;     /* (N) by position */
    int answered, accepted, payloads;
    double loss_w, weight, bytes_up;
    int *elist, ne;
    int *epos;     /* (N) client -> position in elist, -1 */
    eval_row *erows;
    lm_async *as;  /* the asynchronous modes' state (engine_async.c), NULL in synchronous rounds */
    /* differential privacy (c.dp): */
    int per_round;      /* m: clients sampled per round */
    double dp_sigma;    /* central: the update noise multiplier (sigma, or sigma_delta when adaptive) */
    double dp_bits_sd;  /* adaptive: sigma_b */
    double dp_clip;     /* the clip of the open (or next) round */
    double dp_next_clip;/* adaptive: the clip the open round hands on */
    int dp_bits;        /* adaptive: accepted updates of the open round with norm <= dp_clip */
};

void loom_engine_defaults(loom_engine_config *c) {
    memset(c, 0, sizeof *c);
    loom_pipeline_defaults(&c->pipe, 0);
    c->rounds = 1;
    c->min_updates = 1;
    c->seed = 1;
    c->async_alpha = 0.6;
    c->staleness.kind = LOOM_STALENESS_CONSTANT;
    c->staleness.a = 0.5;
    c->staleness.b = 4;
    loom_dp_config_defaults(&c->dp);
}

int loom_engine_sample(int N, int sample, double sample_frac, uint64_t seed, int round, int *clients, int *n) {
    int m = sample > 0 ? sample : sample_frac > 0 ? (int)ceil(sample_frac * N) : N;
    if (m > N) return loom_error(LOOM_EINVAL, "--sample %d is more than the %d clients", m, N);
    if (m < 1) m = 1;
    uint32_t *all = malloc((size_t)N * sizeof *all);
    if (!all) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < N; i++) all[i] = (uint32_t)i;
    if (m < N) {
        loom_rng r;
        loom_rng_init(&r, seed, loom_hash2(LOOM_STREAM_SAMPLE, (uint64_t)round));
        loom_rng_draw_u32(&r, all, (size_t)N, (size_t)m);
        for (int i = 1; i < m; i++) /* ascending: the order of the rows */
            for (int k = i; k > 0 && all[k - 1] > all[k]; k--) {
                uint32_t t = all[k];
                all[k] = all[k - 1];
                all[k - 1] = t;
            }
    }
    for (int i = 0; i < m; i++) clients[i] = (int)all[i];
    *n = m;
    free(all);
    return LOOM_OK;
}

/* m: the clients each round samples (loom_engine_sample's count) */
static int per_round(const loom_engine_config *c) {
    int N = c->n_clients;
    int m = c->sample > 0 ? c->sample : c->sample_frac > 0 ? (int)ceil(c->sample_frac * N) : N;
    return m < 1 ? 1 : m > N ? N : m;
}

/* Central DP's noise stage: the mean of the n accepted (clipped, weight 1) updates becomes
 * (sum + N(0, (sigma C)^2)) / m, m the clients sampled (a fixed denominator). */
static int dp_noise(void *ud, double *mean, size_t dim, uint64_t W, size_t n, int round) {
    loom_engine *e = ud;
    (void)W;
    const double m = (double)e->n;
    if ((double)n != m) {
        const double f = (double)n / m;
        for (size_t i = 0; i < dim; i++) mean[i] *= f;
    }
    loom_dp_add_noise(mean, dim, e->dp_sigma * e->dp_clip / m, e->c.seed, loom_dp_stream(LOOM_DP_STREAM_CENTRAL, round));
    return LOOM_OK;
}

static int check_config(const loom_engine_config *c) {
    if (c->dim == 0 || !c->init) return loom_error(LOOM_EINVAL, "round engine needs a vector length and an initial vector");
    if (c->n_clients < 1) return loom_error(LOOM_EINVAL, "the partition has no clients");
    if (c->rounds < 0) return loom_error(LOOM_EINVAL, "--rounds %d must be >= 0", c->rounds);
    if (c->sample < 0) return loom_error(LOOM_EINVAL, "--sample %d must be >= 0", c->sample);
    if (c->sample > c->n_clients)
        return loom_error(LOOM_EINVAL, "--sample %d is more than the %d clients", c->sample, c->n_clients);
    if (!(c->sample_frac >= 0 && c->sample_frac <= 1))
        return loom_error(LOOM_EINVAL, "--sample fraction %g must be in (0, 1]", c->sample_frac);
    if (c->min_updates < 0) return loom_error(LOOM_EINVAL, "--min-updates must be >= 0");
    if (c->quorum < 0) return loom_error(LOOM_EINVAL, "quorum %d must be >= 0", c->quorum);
    if (!(c->deadline >= 0) || isinf(c->deadline))
        return loom_error(LOOM_EINVAL, "round deadline %g must be finite and >= 0", c->deadline);
    if (c->eval_every < 0) return loom_error(LOOM_EINVAL, "--eval-every %d must be >= 0", c->eval_every);
    if (c->eval_clients < 0) return loom_error(LOOM_EINVAL, "--eval-clients %d must be >= 0", c->eval_clients);
    if (!(c->pipe.max_norm >= 0) || isinf(c->pipe.max_norm))
        return loom_error(LOOM_EINVAL, "--max-update-norm %g must be finite and >= 0 (0 = no bound)", c->pipe.max_norm);
    if (c->dp.mode != LOOM_DP_OFF) {
        const char *mode = loom_dp_mode_name(c->dp.mode);
        if (c->mode != LOOM_ENGINE_SYNC)
            return loom_error(LOOM_EUNSUPPORTED, "--dp %s works with --mode sync only (not %s): the accounting of "
                              "asynchronous updates is not implemented", mode, loom_engine_mode_name(c->mode));
        if (c->pipe.strategy && !strcmp(c->pipe.strategy, "scaffold"))
            return loom_error(LOOM_EUNSUPPORTED, "--dp %s does not work with --strategy scaffold (its control deltas "
                              "would travel unclipped and without noise)", mode);
        if (c->dp.mode == LOOM_DP_CENTRAL && c->pipe.noise)
            return loom_error(LOOM_EINVAL, "--dp central: the pipeline already has a noise stage");
        if (c->dp.mode == LOOM_DP_CENTRAL && c->pipe.clip_norm != 0 && c->pipe.clip_norm != c->dp.clip)
            return loom_error(LOOM_EINVAL, "--update-clip %g with --dp central: the server clips to --dp-clip %g (give "
                              "one of them)", c->pipe.clip_norm, c->dp.clip);
        if (c->dp.mode == LOOM_DP_CENTRAL && !(c->dp.clip <= LOOM_FX_MAX_ABS))
            return loom_error(LOOM_EINVAL, "--dp-clip %g is above the fixed-point range %g", c->dp.clip, LOOM_FX_MAX_ABS);
        int rc = loom_dp_run_budget(&c->dp, c->n_clients, per_round(c), c->rounds);
        if (rc != LOOM_OK) return rc;
    }
    if (c->excluded && c->mode != LOOM_ENGINE_SYNC)
        return loom_error(LOOM_EUNSUPPORTED, "removing clients from the population (--exclude-client) needs --mode sync");
    if (c->mask) {
        if (c->mode != LOOM_ENGINE_SYNC)
            return loom_error(LOOM_EUNSUPPORTED, "heterogeneous clients (masked updates) need --mode sync");
        if (c->pipe.aggregator && c->pipe.aggregator != &loom_agg_fixed_mean)
            return loom_error(LOOM_EUNSUPPORTED, "heterogeneous clients (masked updates) need the plain mean, not "
                              "aggregator %s", c->pipe.aggregator->name);
        if (c->pipe.strategy && !strcmp(c->pipe.strategy, "scaffold"))
            return loom_error(LOOM_EUNSUPPORTED, "heterogeneous clients do not work with --strategy scaffold");
        if (c->dp.mode == LOOM_DP_CENTRAL)
            return loom_error(LOOM_EUNSUPPORTED, "heterogeneous clients do not work with --dp central (its noise and "
                              "fixed denominator assume every client holds every value)");
    }
    return lm_async_check(c);
}

void loom_engine_free(loom_engine *e) {
    if (!e) return;
    lm_async_free(e->as);
    loom_pipeline_free(e->pipe);
    loom_free(e->global);
    free(e->list);
    free(e->pos);
    free(e->rows);
    free(e->elist);
    free(e->epos);
    free(e->erows);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

int loom_engine_create(loom_engine **out, const loom_engine_config *c) {
    *out = NULL;
    int rc = check_config(c);
    if (rc != LOOM_OK) return rc;
    loom_engine *e = calloc(1, sizeof *e);
    if (!e) return loom_error(LOOM_ENOMEM, "out of memory");
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->c = *c;
    e->dim = c->dim;
    e->N = c->n_clients;
    e->per_round = per_round(c);
    loom_pipeline_config pc = c->pipe;
    if (c->dp.mode == LOOM_DP_CENTRAL) {
        e->dp_clip = c->dp.clip;
        e->dp_sigma = c->dp.noise;
        if (c->dp.quantile > 0) {
            e->dp_bits_sd = c->dp.bits_noise > 0 ? c->dp.bits_noise : e->per_round / 20.0;
            e->dp_sigma = loom_dp_adaptive_sigma(c->dp.noise, e->dp_bits_sd);
        }
        pc.clip_norm = c->dp.clip;
        pc.noise = dp_noise;
        pc.noise_ud = e;
    } else if (c->dp.mode != LOOM_DP_OFF) {
        e->dp_clip = c->dp.clip;
    }
    pc.dim = c->dim;
    if (!pc.strategy) pc.strategy = "fedavg";
    if (!strcmp(pc.strategy, "scaffold") && pc.sp.num_clients == 0) pc.sp.num_clients = c->n_clients;
    e->c.pipe = pc;
    size_t N = (size_t)c->n_clients;
    e->global = loom_alloc(c->dim * sizeof(float));
    e->list = malloc(N * sizeof *e->list);
    e->pos = malloc(N * sizeof *e->pos);
    e->rows = calloc(N, sizeof *e->rows);
    e->elist = malloc(N * sizeof *e->elist);
    e->epos = malloc(N * sizeof *e->epos);
    e->erows = calloc(N, sizeof *e->erows);
    if (!e->global || !e->list || !e->pos || !e->rows || !e->elist || !e->epos || !e->erows) {
        loom_engine_free(e);
        return loom_error(LOOM_ENOMEM, "out of memory for %zu clients", N);
    }
    for (size_t i = 0; i < N; i++) e->pos[i] = e->epos[i] = -1;
    if ((rc = loom_pipeline_create(&e->pipe, &pc)) != LOOM_OK) {
        loom_engine_free(e);
        return rc;
    }
    memcpy(e->global, c->init, c->dim * sizeof(float));
    loom_strategy *s = loom_pipeline_strategy(e->pipe);
    if (loom_strategy_uses_control(s)) {
        size_t len;
        loom_strategy_state_find(s, "server_control", &e->server_control, &len);
    }
    if (c->mode != LOOM_ENGINE_SYNC && (rc = lm_async_create(&e->as, &e->c, e->global, e->pipe)) != LOOM_OK) {
        loom_engine_free(e);
        return rc;
    }
    *out = e;
    return LOOM_OK;
}

int loom_engine_next_round(const loom_engine *e) { return e->next_round; }
float *loom_engine_global(loom_engine *e) { return e->global; }
loom_strategy *loom_engine_strategy(loom_engine *e) { return loom_pipeline_strategy(e->pipe); }
loom_pipeline *loom_engine_pipeline(loom_engine *e) { return e->pipe; }
loom_engine_mode loom_engine_get_mode(const loom_engine *e) { return e->c.mode; }
lm_async *lm_engine_async(const loom_engine *e) { return e->as; }

int loom_engine_restore(loom_engine *e, int next_round) {
    if (e->as)
        return loom_error(LOOM_EUNSUPPORTED, "round engine: resuming is not supported in the asynchronous mode %s",
                          loom_engine_mode_name(e->c.mode));
    if (e->phase != PH_IDLE) return loom_error(LOOM_ESTATE, "round engine: restore inside a round");
    if (next_round < 0) return loom_error(LOOM_EINVAL, "round engine: next round %d must be >= 0", next_round);
    e->next_round = next_round;
    return LOOM_OK;
}

int loom_engine_open_round(loom_engine *e, double now, const int **clients, int *n) {
    if (e->as)
        return loom_error(LOOM_ESTATE, "round engine: no rounds to open in mode %s (use loom_engine_async_task)",
                          loom_engine_mode_name(e->c.mode));
    if (e->phase != PH_IDLE) return loom_error(LOOM_ESTATE, "round engine: round %d is still open", e->round);
    if (e->next_round >= e->c.rounds)
        return loom_error(LOOM_ESTATE, "round engine: all %d rounds are done", e->c.rounds);
    for (int i = 0; i < e->n; i++) e->pos[e->list[i]] = -1;
    for (int i = 0; i < e->ne; i++) e->epos[e->elist[i]] = -1;
    e->ne = 0;
    int rc = loom_engine_sample(e->N, e->c.sample, e->c.sample_frac, e->c.seed, e->next_round, e->list, &e->n);
    if (rc != LOOM_OK) {
        e->n = 0;
        return rc;
    }
    if (e->c.excluded) { /* removed clients (unlearning): the round runs with the others */
        int k = 0;
        for (int i = 0; i < e->n; i++)
            if (!e->c.excluded[e->list[i]]) e->list[k++] = e->list[i];
        e->n = k;
    }
    for (int i = 0; i < e->n; i++) e->pos[e->list[i]] = i;
    memset(e->rows, 0, (size_t)e->n * sizeof *e->rows);
    e->round = e->next_round + 1;
    if ((rc = loom_pipeline_begin_round(e->pipe, e->round)) != LOOM_OK) return rc;
    e->answered = e->accepted = e->payloads = e->inflight = 0;
    e->dp_bits = 0;
    e->dp_next_clip = e->dp_clip;
    e->loss_w = e->weight = e->bytes_up = 0;
    e->t_open = now;
    pthread_mutex_lock(&e->mu);
    e->phase = PH_OPEN;
    pthread_mutex_unlock(&e->mu);
    if (clients) *clients = e->list;
    if (n) *n = e->n;
    return LOOM_OK;
}

int loom_engine_task(loom_engine *e, loom_task *t) {
    if (e->phase != PH_OPEN) return loom_error(LOOM_ESTATE, "round engine: no open round");
    t->round = e->round;
    t->version = (uint64_t)(e->round - 1);
    t->run_id = e->c.run_id;
    t->global = e->global;
    t->server_control = e->server_control;
    return LOOM_OK;
}

static int refuse(loom_update_verdict *out, loom_update_verdict v, int code) {
    if (out) *out = v;
    return code;
}

/* Admission under the lock: the protocol checks. On success the row is reserved (answered) and
 * inflight counts the submission until finish(). */
static int admit(loom_engine *e, int round, int client, double now, loom_update_verdict *verdict, row **r) {
    if (e->phase != PH_OPEN)
        return refuse(verdict, LOOM_UPDATE_LATE, loom_error(LOOM_ESTATE, "round %d is closed", round));
    if (round != e->round)
        return refuse(verdict, LOOM_UPDATE_WRONG_ROUND,
                      loom_error(LOOM_EINVAL, "update for round %d, but round %d is open", round, e->round));
    if (client < 0 || client >= e->N || e->pos[client] < 0)
        return refuse(verdict, LOOM_UPDATE_NOT_SAMPLED,
                      loom_error(LOOM_EINVAL, "client %d is not sampled in round %d", client, e->round));
    row *w = &e->rows[e->pos[client]];
    if (w->answered)
        return refuse(verdict, LOOM_UPDATE_DUPLICATE,
                      loom_error(LOOM_EINVAL, "client %d already answered in round %d", client, e->round));
    w->answered = 1;
    e->answered++;
    *r = w;
    if (e->c.deadline > 0 && now > e->t_open + e->c.deadline) {
        w->verdict = LOOM_UPDATE_LATE;
        return refuse(verdict, LOOM_UPDATE_LATE,
                      loom_error(LOOM_ERANGE, "client %d answered %.3gs after the round opened, past the %gs deadline",
                                 client, now - e->t_open, e->c.deadline));
    }
    e->inflight++;
    return LOOM_OK;
}

/* A masked update that carries only its TRAIN values (include/loom/personal.h, masked updates on the
 * wire): with the client's mask, *full is a copy of u scattered back to dim values (0 elsewhere) and
 * *held its buffers (release with loom_free). u is left as it is when it is dim long, when its length
 * is not its mask's count (the pipeline refuses the length), or without a mask. */
static int masked_full(loom_engine *e, const loom_update *u, const uint8_t *mask, loom_update *full, float **held) {
    *full = *u;
    *held = NULL;
    if (!mask || u->len == e->dim || u->len != loom_mask_sent(mask, e->dim)) return LOOM_OK;
    float *buf = loom_alloc(2 * (e->dim ? e->dim : 1) * sizeof(float));
    if (!buf) return loom_error(LOOM_ENOMEM, "out of memory for a masked update");
    loom_mask_unpack(mask, e->dim, u->values, buf);
    full->values = buf;
    full->len = e->dim;
    if (u->control) {
        loom_mask_unpack(mask, e->dim, u->control, buf + e->dim);
        full->control = buf + e->dim;
    }
    *held = buf;
    return LOOM_OK;
}

int loom_engine_check(loom_engine *e, const loom_update *u, double now, loom_update_verdict *verdict) {
    if (!u) return loom_error(LOOM_EINVAL, "round engine: NULL update");
    pthread_mutex_lock(&e->mu);
    int rc = LOOM_OK;
    if (e->c.run_id && u->run_id != e->c.run_id)
        rc = refuse(verdict, LOOM_UPDATE_WRONG_ROUND,
                    loom_error(LOOM_EINVAL, "update of run %llx, this run is %llx", (unsigned long long)u->run_id,
                               (unsigned long long)e->c.run_id));
    else if (e->phase != PH_OPEN)
        rc = refuse(verdict, LOOM_UPDATE_LATE, loom_error(LOOM_ESTATE, "round %d is closed", u->round));
    else if (u->round != e->round)
        rc = refuse(verdict, LOOM_UPDATE_WRONG_ROUND,
                    loom_error(LOOM_EINVAL, "update for round %d, but round %d is open", u->round, e->round));
    else if (u->client < 0 || u->client >= e->N || e->pos[u->client] < 0)
        rc = refuse(verdict, LOOM_UPDATE_NOT_SAMPLED,
                    loom_error(LOOM_EINVAL, "client %d is not sampled in round %d", u->client, e->round));
    else if (e->rows[e->pos[u->client]].answered)
        rc = refuse(verdict, LOOM_UPDATE_DUPLICATE,
                    loom_error(LOOM_EINVAL, "client %d already answered in round %d", u->client, e->round));
    else if (e->c.deadline > 0 && now > e->t_open + e->c.deadline)
        rc = refuse(verdict, LOOM_UPDATE_LATE,
                    loom_error(LOOM_ERANGE, "client %d answered %.3gs after the round opened, past the %gs deadline",
                               u->client, now - e->t_open, e->c.deadline));
    pthread_mutex_unlock(&e->mu);
    if (rc != LOOM_OK) return rc;
    if (u->codec > LOOM_CODEC_SEED_SCALAR) /* the codecs loom_update_decode turns into floats */
        return refuse(verdict, LOOM_UPDATE_BAD_CODEC,
                      loom_error(LOOM_EUNSUPPORTED, "update codec %u is not supported", u->codec));
    loom_update full = *u;
    float *held = NULL;
    if (e->c.mask && u->len != e->dim) { /* a masked update carrying its TRAIN values only */
        uint8_t *mask = malloc(e->dim ? e->dim : 1);
        if (!mask) return refuse(verdict, LOOM_UPDATE_CLIENT_FAILED, loom_error(LOOM_ENOMEM, "out of memory for a mask"));
        rc = e->c.mask(e->c.mask_ud, u->client, u->round, mask);
        if (rc == LOOM_OK) rc = masked_full(e, u, mask, &full, &held);
        free(mask);
        if (rc != LOOM_OK) return refuse(verdict, LOOM_UPDATE_CLIENT_FAILED, rc);
    }
    rc = loom_pipeline_check(e->pipe, full.values, full.len, e->c.dp.mode ? 1.0 : (double)u->examples, full.control,
                             verdict, NULL);
    loom_free(held);
    return rc;
}

double loom_engine_opened_at(const loom_engine *e) { return e->t_open; }

int loom_engine_submit(loom_engine *e, const loom_update *u, double now, loom_update_verdict *verdict) {
    if (!u) return loom_error(LOOM_EINVAL, "round engine: NULL update");
    row *r = NULL;
    pthread_mutex_lock(&e->mu);
    int rc = LOOM_OK;
    if (e->c.run_id && u->run_id != e->c.run_id)
        rc = refuse(verdict, LOOM_UPDATE_WRONG_ROUND,
                    loom_error(LOOM_EINVAL, "update of run %llx, this run is %llx", (unsigned long long)u->run_id,
                               (unsigned long long)e->c.run_id));
    else rc = admit(e, u->round, u->client, now, verdict, &r);
    if (rc == LOOM_OK) e->payloads++;
    pthread_mutex_unlock(&e->mu);
    if (rc != LOOM_OK) return rc;
    /* the pipeline outside the engine's lock: decode -> validate -> clip -> aggregate */
    loom_update_verdict v = LOOM_UPDATE_ACCEPTED;
    double norm = 0;
    if (u->codec > LOOM_CODEC_SEED_SCALAR)
        rc = refuse(&v, LOOM_UPDATE_BAD_CODEC, loom_error(LOOM_EUNSUPPORTED, "update codec %u is not supported", u->codec));
    else if (e->c.mask) { /* a heterogeneous client: the server recomputes what it holds */
        uint8_t *mask = malloc(e->dim);
        if (!mask) rc = refuse(&v, LOOM_UPDATE_CLIENT_FAILED, loom_error(LOOM_ENOMEM, "out of memory for a mask"));
        else if ((rc = e->c.mask(e->c.mask_ud, u->client, u->round, mask)) != LOOM_OK) v = LOOM_UPDATE_CLIENT_FAILED;
        else {
            loom_update full;
            float *held = NULL;
            uint64_t w = u->examples;
            if ((rc = masked_full(e, u, mask, &full, &held)) != LOOM_OK) v = LOOM_UPDATE_CLIENT_FAILED;
            else if (e->c.weight && !e->c.dp.mode && full.len == e->dim && /* HetLoRA's sparsity weights */
                     (rc = e->c.weight(e->c.weight_ud, u->client, u->round, e->global, full.values, &w)) != LOOM_OK)
                v = LOOM_UPDATE_CLIENT_FAILED;
            if (rc == LOOM_OK)
                rc = loom_pipeline_add_masked(e->pipe, full.values, full.len, e->c.dp.mode ? 1.0 : (double)w,
                                              full.control, mask, &v, &norm);
            loom_free(held);
        }
        free(mask);
    } else
        rc = loom_pipeline_add(e->pipe, u->values, u->len, e->c.dp.mode ? 1.0 : (double)u->examples, u->control, &v,
                               &norm); /* DP: every client weighs 1 */
    if (rc != LOOM_OK && v == LOOM_UPDATE_ACCEPTED) v = LOOM_UPDATE_LATE; /* the pipeline's round was closed */
    pthread_mutex_lock(&e->mu);
    r->verdict = v;
    r->examples = u->examples;
    r->tokens = (long)u->tokens;
    r->loss = u->loss;
    r->norm = norm;
    r->bytes = u->wire_bytes ? (double)u->wire_bytes : (double)u->len * sizeof(float) * (u->control ? 2 : 1);
    e->bytes_up += r->bytes;
    if (rc == LOOM_OK) {
        e->accepted++;
        e->dp_bits += norm <= e->dp_clip;
        e->loss_w += u->loss * (double)u->examples;
        e->weight += (double)u->examples;
    }
    e->inflight--;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (verdict) *verdict = v;
    return rc;
}

int loom_engine_fail(loom_engine *e, int round, int client, const char *reason, double now,
                     loom_update_verdict *verdict) {
    row *r = NULL;
    pthread_mutex_lock(&e->mu);
    int rc = admit(e, round, client, now, verdict, &r);
    if (rc == LOOM_OK) {
        r->verdict = LOOM_UPDATE_CLIENT_FAILED;
        e->inflight--;
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != LOOM_OK) return rc;
    loom_log(LOOM_WARN, "round %d: client %d failed: %s", round, client, reason ? reason : "no reason given");
    if (verdict) *verdict = LOOM_UPDATE_CLIENT_FAILED;
    return LOOM_OK;
}

int loom_engine_ready(loom_engine *e, double now) {
    pthread_mutex_lock(&e->mu);
    int ready = e->phase == PH_OPEN &&
                (e->answered >= e->n || (e->c.quorum > 0 && e->accepted >= e->c.quorum) ||
                 (e->c.deadline > 0 && now >= e->t_open + e->c.deadline));
    pthread_mutex_unlock(&e->mu);
    return ready;
}

int loom_engine_close_round(loom_engine *e, double now) {
    (void)now;
    pthread_mutex_lock(&e->mu);
    if (e->phase != PH_OPEN) {
        pthread_mutex_unlock(&e->mu);
        return loom_error(LOOM_ESTATE, "round engine: no open round to close");
    }
    e->phase = PH_CLOSING; /* new submissions are late from here on */
    while (e->inflight > 0) pthread_cond_wait(&e->cv, &e->mu);
    for (int i = 0; i < e->n; i++)
        if (!e->rows[i].answered) e->rows[i].verdict = LOOM_UPDATE_MISSING;
    int accepted = e->accepted;
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < e->n; i++) {
        loom_update_verdict v = e->rows[i].verdict;
        if (v != LOOM_UPDATE_ACCEPTED && v != LOOM_UPDATE_CLIENT_FAILED)
            loom_log(LOOM_WARN, "round %d: update of client %d rejected: %s", e->round, e->list[i],
                     loom_update_verdict_str(v));
    }
    int need = e->c.min_updates > 0 ? e->c.min_updates : 1, rc = LOOM_OK;
    if (accepted >= need) {
        rc = loom_pipeline_end_round(e->pipe, e->global);
        if (rc == LOOM_OK && e->c.dp.mode == LOOM_DP_CENTRAL && e->c.dp.quantile > 0) {
            /* adaptive clipping: the noisy share of updates within the clip moves it toward the quantile */
            loom_rng br;
            loom_rng_init(&br, e->c.seed, loom_dp_stream(LOOM_DP_STREAM_BITS, e->round));
            double next = loom_dp_adaptive_next(e->dp_clip, e->dp_bits, e->n, e->dp_bits_sd, loom_rng_normal(&br),
                                                e->c.dp.quantile, e->c.dp.clip_lr);
            next = fmin(fmax(next, 1e-12), LOOM_FX_MAX_ABS);
            e->dp_next_clip = next;
        }
    } else {
        loom_pipeline_abort_round(e->pipe);
        loom_log(LOOM_WARN, "round %d: %d accepted updates, fewer than the %d required; global model unchanged",
                 e->round, accepted, need);
    }
    /* the evaluation hand-out */
    int last = e->round == e->c.rounds;
    e->ne = 0;
    if (e->c.n_test && (last || (e->c.eval_every > 0 && e->round % e->c.eval_every == 0))) {
        int ne = 0;
        for (int i = 0; i < e->N; i++)
            if (e->c.n_test[i] > 0) e->elist[ne++] = i;
        if (e->c.eval_clients > 0 && ne > e->c.eval_clients) {
            loom_rng er;
            loom_rng_init(&er, e->c.seed, LOOM_STREAM_EVAL);
            for (int i = 0; i < e->c.eval_clients; i++) {
                int j = i + (int)loom_rng_below(&er, (uint32_t)(ne - i));
                int t = e->elist[i];
                e->elist[i] = e->elist[j];
                e->elist[j] = t;
            }
            ne = e->c.eval_clients;
            for (int i = 1; i < ne; i++)
                for (int k = i; k > 0 && e->elist[k - 1] > e->elist[k]; k--) {
                    int t = e->elist[k];
                    e->elist[k] = e->elist[k - 1];
                    e->elist[k - 1] = t;
                }
        }
        e->ne = ne;
        for (int i = 0; i < ne; i++) e->epos[e->elist[i]] = i;
        memset(e->erows, 0, (size_t)ne * sizeof *e->erows);
    }
    pthread_mutex_lock(&e->mu);
    e->phase = PH_CLOSED;
    pthread_mutex_unlock(&e->mu);
    if (rc != LOOM_OK) return loom_error_context(rc, "round %d", e->round);
    return LOOM_OK;
}

int loom_engine_eval_plan(loom_engine *e, const int **clients, int *n) {
    if (e->as) return lm_async_eval_plan(e->as, clients, n);
    if (e->phase != PH_CLOSED) return loom_error(LOOM_ESTATE, "round engine: evaluation before the round closed");
    if (clients) *clients = e->elist;
    if (n) *n = e->ne;
    return LOOM_OK;
}

int loom_engine_eval_submit(loom_engine *e, int client, const loom_eval_result *r) {
    if (e->as) return lm_async_eval_submit(e->as, client, r);
    pthread_mutex_lock(&e->mu);
    int rc = LOOM_OK;
    if (e->phase != PH_CLOSED) rc = loom_error(LOOM_ESTATE, "round engine: evaluation outside its phase");
    else if (client < 0 || client >= e->N || e->epos[client] < 0)
        rc = loom_error(LOOM_EINVAL, "client %d was not asked to evaluate in round %d", client, e->round);
    else if (e->erows[e->epos[client]].done)
        rc = loom_error(LOOM_EINVAL, "client %d already evaluated in round %d", client, e->round);
    else {
        eval_row *w = &e->erows[e->epos[client]];
        w->done = 1;
        w->r = *r;
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int loom_engine_end_round(loom_engine *e, double seconds, loom_round_metrics *out) {
    if (e->phase != PH_CLOSED) return loom_error(LOOM_ESTATE, "round engine: end_round before close_round");
    loom_round_metrics m;
    memset(&m, 0, sizeof m);
    m.round = e->round;
    m.sampled = e->n;
    m.accepted = e->accepted;
    m.rejected = e->n - e->accepted;
    /* the example-weighted loss in the sampled order (not the order of arrival): the same for any
     * number of workers or processes */
    double loss_w = 0, weight = 0;
    for (int i = 0; i < e->n; i++)
        if (e->rows[i].answered && e->rows[i].verdict == LOOM_UPDATE_ACCEPTED) {
            loss_w += e->rows[i].loss * (double)e->rows[i].examples;
            weight += (double)e->rows[i].examples;
        }
    m.train_loss = weight > 0 ? loss_w / weight : NAN;
    m.eval_loss = m.eval_acc = m.attack_success = NAN;
    int need = e->c.min_updates > 0 ? e->c.min_updates : 1;
    m.aggregated = e->accepted >= need;
    double per = (double)e->dim * sizeof(float) * (e->server_control ? 2 : 1);
    m.bytes_down = per * e->n;
    m.bytes_up = e->bytes_up;
    lm_eval_pool pool = {0};
    for (int i = 0; i < e->ne; i++)
        if (e->erows[i].done) lm_eval_pool_add(&pool, &e->erows[i].r);
    lm_eval_pool_finish(&pool, &m);
    m.seconds = seconds;
    if (e->c.dp.mode != LOOM_DP_OFF) {
        m.dp = 1;
        m.dp_clip = e->dp_clip;
        if (loom_dp_run_epsilon(&e->c.dp, e->N, e->per_round, e->round, &m.epsilon) != LOOM_OK) m.epsilon = NAN;
    }
    if (e->c.sink.round) e->c.sink.round(e->c.sink.ud, &m, e->list, e->n);
    if (e->c.sink.client)
        for (int i = 0; i < e->n; i++) {
            const row *w = &e->rows[i];
            loom_client_row cr = {e->round, e->list[i], w->examples, w->tokens, w->loss, w->norm, w->verdict,
                                  loom_update_verdict_str(w->verdict), -1, w->bytes};
            e->c.sink.client(e->c.sink.ud, &cr);
        }
    if (out) *out = m;
    pthread_mutex_lock(&e->mu);
    e->phase = PH_IDLE;
    pthread_mutex_unlock(&e->mu);
    e->next_round = e->round;
    if (e->dp_next_clip != e->dp_clip) { /* adaptive clipping: the next round's clip */
        e->dp_clip = e->dp_next_clip;
        int rc = loom_pipeline_set_clip(e->pipe, e->dp_clip);
        if (rc != LOOM_OK) return loom_error_context(rc, "round %d: adaptive clip", e->round);
    }
    return LOOM_OK;
}

/* ------------------------------------------------------------------ checkpoints */

int loom_engine_checkpoint_add(loom_engine *e, loom_st_writer *w, const loom_tvec *mf, int next_round, int final) {
    loom_strategy *strat = loom_engine_strategy(e);
    int rc = loom_tvec_add_to(w, mf, e->global, NULL);
    size_t ns = final ? 0 : loom_strategy_state_count(strat);
    for (size_t i = 0; i < ns && rc == LOOM_OK; i++) {
        const char *sn;
        float *data;
        size_t len;
        loom_strategy_state(strat, i, &sn, &data, &len);
        char nm[256];
        snprintf(nm, sizeof nm, "strategy.%s", sn);
        int64_t shape[1] = {(int64_t)len};
        rc = loom_st_writer_add(w, nm, LOOM_DT_F32, 1, shape, data);
    }
    char buf[64];
#define META(key, fmt, val)                                       \
    do {                                                          \
        snprintf(buf, sizeof buf, fmt, val);                      \
        if (rc == LOOM_OK) rc = loom_st_writer_meta(w, key, buf); \
    } while (0)
    META("next_round", "%d", next_round);
    META("dim", "%zu", e->c.dim);
    META("loom_tvec_dim", "%zu", e->c.dim);
    META("loom_tvec", "%d", LOOM_TVEC_VERSION);
    META("clients", "%d", e->c.n_clients);
    META("seed", "%llu", (unsigned long long)e->c.seed);
    META("strategy", "%s", loom_strategy_name(strat));
    if (e->c.dp.mode != LOOM_DP_OFF) {
        META("dp", "%s", loom_dp_mode_name(e->c.dp.mode));
        META("dp_clip", "%.17g", e->dp_clip); /* the next round's (adaptive clipping moves it) */
    }
#undef META
    return rc;
}

int loom_engine_checkpoint_load(loom_engine *e, const loom_st_file *f, const loom_tvec *mf, const char *path,
                                int *next_round) {
    loom_strategy *strat = loom_engine_strategy(e);
    char want[4][64];
    snprintf(want[0], sizeof want[0], "%zu", e->c.dim);
    snprintf(want[1], sizeof want[1], "%d", e->c.n_clients);
    snprintf(want[2], sizeof want[2], "%llu", (unsigned long long)e->c.seed);
    snprintf(want[3], sizeof want[3], "%s", loom_strategy_name(strat));
    static const char *const keys[4] = {"dim", "clients", "seed", "strategy"};
    for (int i = 0; i < 4; i++) {
        const char *v = loom_st_meta(f, keys[i]);
        if (i == 1 && e->c.continual && v && atol(v) >= 1 && atol(v) <= e->c.n_clients) continue; /* clients joined */
        if (!v || strcmp(v, want[i]))
            return loom_error(LOOM_EINVAL, "%s: %s is %s, this run has %s: resuming needs the same configuration", path,
                              keys[i], v ? v : "missing", want[i]);
    }
    const char *dpm = loom_st_meta(f, "dp"), *want_dp = loom_dp_mode_name(e->c.dp.mode);
    if (strcmp(dpm ? dpm : "off", want_dp))
        return loom_error(LOOM_EINVAL, "%s: dp is %s, this run has --dp %s: resuming needs the same configuration", path,
                          dpm ? dpm : "off (missing)", want_dp);
    double clip = e->dp_clip;
    if (e->c.dp.mode != LOOM_DP_OFF) {
        const char *cv = loom_st_meta(f, "dp_clip");
        char *ce = NULL;
        clip = cv ? strtod(cv, &ce) : NAN;
        if (!cv || *ce || !(clip > 0 && clip <= LOOM_FX_MAX_ABS))
            return loom_error(LOOM_EFORMAT, "%s: dp_clip is %s (a clip norm in (0, %g])", path, cv ? cv : "missing",
                              LOOM_FX_MAX_ABS);
        if (e->c.dp.quantile == 0) clip = e->dp_clip; /* a fixed clip: this run's flag */
    }
    const char *v = loom_st_meta(f, "next_round");
    char *end = NULL;
    long nr = v ? strtol(v, &end, 10) : -1;
    if (!v || *end || nr < 0 || nr > e->c.rounds)
        return loom_error(LOOM_EFORMAT, "%s: next_round is %s (the run has %d rounds)", path, v ? v : "missing",
                          e->c.rounds);
    loom_tvec_io io = {.allow_extra = 1}; /* a checkpoint holds state beside the vector */
    int rc = loom_tvec_read_from(f, mf, e->global, &io);
    if (rc != LOOM_OK) return loom_error_context(rc, "%s", path);
    size_t ns = loom_strategy_state_count(strat);
    for (size_t i = 0; i < ns && rc == LOOM_OK; i++) {
        const char *sn;
        float *data;
        size_t len;
        loom_strategy_state(strat, i, &sn, &data, &len);
        char nm[256];
        snprintf(nm, sizeof nm, "strategy.%s", sn);
        const loom_st_tensor *t = loom_st_find(f, nm);
        if (!t) return loom_error(LOOM_ENOTFOUND, "%s: no strategy state %s", path, nm);
        float *tmp = loom_alloc(len * sizeof(float));
        rc = tmp ? loom_st_to_f32(t, tmp, len) : LOOM_ENOMEM;
        if (rc == LOOM_OK) rc = loom_pipeline_state_load(e->pipe, sn, tmp, len);
        loom_free(tmp);
    }
    if (rc == LOOM_OK) rc = loom_engine_restore(e, (int)nr);
    if (rc == LOOM_OK && clip != e->dp_clip) {
        e->dp_clip = clip;
        rc = e->c.dp.mode == LOOM_DP_CENTRAL ? loom_pipeline_set_clip(e->pipe, clip) : LOOM_OK;
    }
    if (rc == LOOM_OK) *next_round = (int)nr;
    return rc;
}

/* ------------------------------------------------------------------ pooled evaluation */

void lm_eval_pool_add(lm_eval_pool *p, const loom_eval_result *r) {
    if (r->tokens == 0 || r->count == 0) return;
    p->ls += r->loss_sum;
    p->corr += r->correct;
    p->toks += r->tokens;
    p->count += r->count;
    double l = r->loss_sum / r->tokens, a = (double)r->correct / r->count;
    p->s1 += l;
    p->s2 += l * l;
    p->a1 += a;
    p->a2 += a * a;
    if (p->k == 0 || a < p->amin) p->amin = a;
    p->k++;
    if (r->attack_count > 0) { /* a backdoor run's triggered examples */
        p->atk_hits += r->attack_hits;
        p->atk_count += r->attack_count;
    }
}

void lm_eval_pool_finish(const lm_eval_pool *p, loom_round_metrics *m) {
    m->attack_success = p->atk_count > 0 ? (double)p->atk_hits / (double)p->atk_count : NAN;
    if (p->k == 0) return;
    double k = p->k;
    m->evaluated = p->k;
    m->eval_loss = p->ls / p->toks;
    m->eval_acc = (double)p->corr / p->count;
    m->eval_loss_mean = p->s1 / k;
    m->eval_loss_std = sqrt(fmax(0, p->s2 / k - (p->s1 / k) * (p->s1 / k)));
    m->eval_acc_mean = p->a1 / k;
    m->eval_acc_std = sqrt(fmax(0, p->a2 / k - (p->a1 / k) * (p->a1 / k)));
    m->eval_acc_min = p->amin;
}

/* ------------------------------------------------------------------ a secure sum (see engine.h) */

int loom_engine_submit_sum(loom_engine *e, int round, const double *sum, size_t len, uint64_t total_weight,
                           const loom_update *members, size_t n, double now) {
    if (n == 0 || !members || !sum) return loom_error(LOOM_EINVAL, "round engine: an empty secure sum");
    if (e->as) return loom_error(LOOM_EUNSUPPORTED, "round engine: a secure sum needs synchronous rounds");
    pthread_mutex_lock(&e->mu);
    int rc = LOOM_OK;
    for (size_t i = 0; i < n && rc == LOOM_OK; i++) { /* every member first, so that a refusal records nothing */
        int k = members[i].client;
        if (e->phase != PH_OPEN) rc = loom_error(LOOM_ESTATE, "round %d is closed", round);
        else if (round != e->round)
            rc = loom_error(LOOM_EINVAL, "secure sum for round %d, but round %d is open", round, e->round);
        else if (k < 0 || k >= e->N || e->pos[k] < 0)
            rc = loom_error(LOOM_EINVAL, "secure sum: client %d is not sampled in round %d", k, e->round);
        else if (e->rows[e->pos[k]].answered)
            rc = loom_error(LOOM_EINVAL, "secure sum: client %d already answered in round %d", k, e->round);
        else if (e->c.deadline > 0 && now > e->t_open + e->c.deadline)
            rc = loom_error(LOOM_ERANGE, "secure sum: %.3gs after the round opened, past the %gs deadline",
                            now - e->t_open, e->c.deadline);
        for (size_t j = 0; j < i && rc == LOOM_OK; j++)
            if (members[j].client == k) rc = loom_error(LOOM_EINVAL, "secure sum: client %d listed twice", k);
    }
    if (rc == LOOM_OK) {
        for (size_t i = 0; i < n; i++) {
            e->rows[e->pos[members[i].client]].answered = 1;
            e->answered++;
        }
        e->inflight++;
        e->payloads += (int)n;
    }
    pthread_mutex_unlock(&e->mu);
    if (rc != LOOM_OK) return rc;
    rc = loom_pipeline_add_sum(e->pipe, sum, len, total_weight, n);
    loom_update_verdict v = rc == LOOM_OK ? LOOM_UPDATE_ACCEPTED
                            : rc == LOOM_ERANGE ? LOOM_UPDATE_OUT_OF_RANGE
                            : rc == LOOM_ESTATE ? LOOM_UPDATE_LATE
                                                : LOOM_UPDATE_BAD_LENGTH;
    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < n; i++) {
        const loom_update *u = &members[i];
        row *r = &e->rows[e->pos[u->client]];
        r->verdict = v;
        r->examples = u->examples;
        r->tokens = (long)u->tokens;
        r->loss = u->loss;
        r->norm = 0;
        r->bytes = u->wire_bytes ? (double)u->wire_bytes : (double)len * sizeof(float);
        e->bytes_up += r->bytes;
        if (rc == LOOM_OK) {
            e->accepted++;
            e->loss_w += u->loss * (double)u->examples;
            e->weight += (double)u->examples;
        }
    }
    e->inflight--;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

/* ------------------------------------------------------------------ a reference update (see engine.h) */

int loom_engine_wants_reference(const loom_engine *e) { return loom_pipeline_wants_reference(e->pipe); }

int loom_engine_set_reference(loom_engine *e, int round, const float *ref, size_t len) {
    if (e->as) return loom_error(LOOM_EUNSUPPORTED, "round engine: a reference update needs synchronous rounds");
    pthread_mutex_lock(&e->mu);
    int rc = e->phase != PH_OPEN ? loom_error(LOOM_ESTATE, "reference update: round %d is closed", round)
             : round != e->round ? loom_error(LOOM_EINVAL, "reference update for round %d, but round %d is open", round,
                                              e->round)
                                 : loom_pipeline_set_reference(e->pipe, ref, len);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

/* ------------------------------------------------------------------ a round shared by processes (see engine.h) */

enum { ROW_WORDS = 8, EVAL_WORDS = 7 };

static int64_t dbits(double x) {
    int64_t b;
    memcpy(&b, &x, sizeof b);
    return b;
}

static double bitsd(int64_t b) {
    double x;
    memcpy(&x, &b, sizeof x);
    return x;
}

size_t loom_engine_share_len(const loom_engine *e) {
    if (e->phase == PH_CLOSED) return (size_t)e->ne * EVAL_WORDS;
    return (size_t)e->n * ROW_WORDS + loom_pipeline_share_len(e->pipe);
}

static int share_state(const loom_engine *e) {
    if (e->as)
        return loom_error(LOOM_EUNSUPPORTED, "round engine: mode %s cannot share its rounds between processes",
                          loom_engine_mode_name(e->c.mode));
    if (e->c.mask) return loom_error(LOOM_EUNSUPPORTED, "round engine: masked clients cannot share a round");
    if (e->phase != PH_OPEN && e->phase != PH_CLOSED)
        return loom_error(LOOM_ESTATE, "round engine: no open or closed round to share");
    if (e->inflight > 0) return loom_error(LOOM_ESTATE, "round engine: a submission is still in flight");
    return LOOM_OK;
}

int loom_engine_share_export(loom_engine *e, int64_t *words) {
    pthread_mutex_lock(&e->mu);
    int rc = share_state(e);
    pthread_mutex_unlock(&e->mu);
    if (rc != LOOM_OK) return rc;
    if (e->phase == PH_CLOSED) {
        for (int i = 0; i < e->ne; i++) {
            int64_t *w = words + (size_t)i * EVAL_WORDS;
            const eval_row *r = &e->erows[i];
            memset(w, 0, EVAL_WORDS * sizeof *w);
            if (!r->done) continue;
            w[0] = 1;
            w[1] = dbits(r->r.loss_sum);
            w[2] = r->r.tokens;
            w[3] = r->r.correct;
            w[4] = r->r.count;
            w[5] = r->r.attack_hits;
            w[6] = r->r.attack_count;
        }
        return LOOM_OK;
    }
    for (int i = 0; i < e->n; i++) {
        int64_t *w = words + (size_t)i * ROW_WORDS;
        const row *r = &e->rows[i];
        memset(w, 0, ROW_WORDS * sizeof *w);
        if (!r->answered) continue;
        w[0] = 1;
        w[1] = (int64_t)r->verdict;
        w[2] = (int64_t)r->examples;
        w[3] = r->tokens;
        w[4] = dbits(r->loss);
        w[5] = dbits(r->norm);
        w[6] = dbits(r->bytes);
    }
    return loom_pipeline_share_export(e->pipe, words + (size_t)e->n * ROW_WORDS);
}

int loom_engine_share_import(loom_engine *e, const int64_t *words) {
    pthread_mutex_lock(&e->mu);
    int rc = share_state(e);
    pthread_mutex_unlock(&e->mu);
    if (rc != LOOM_OK) return rc;
    if (e->phase == PH_CLOSED) {
        for (int i = 0; i < e->ne; i++) {
            const int64_t *w = words + (size_t)i * EVAL_WORDS;
            if (w[0] != 0 && w[0] != 1)
                return loom_error(LOOM_EINVAL, "round %d: client %d was evaluated by %lld processes", e->round,
                                  e->elist[i], (long long)w[0]);
        }
        for (int i = 0; i < e->ne; i++) {
            const int64_t *w = words + (size_t)i * EVAL_WORDS;
            eval_row *r = &e->erows[i];
            memset(r, 0, sizeof *r);
            if (!w[0]) continue;
            r->done = 1;
            r->r.loss_sum = bitsd(w[1]);
            r->r.tokens = (long)w[2];
            r->r.correct = (long)w[3];
            r->r.count = (long)w[4];
            r->r.attack_hits = (long)w[5];
            r->r.attack_count = (long)w[6];
        }
        return LOOM_OK;
    }
    for (int i = 0; i < e->n; i++) {
        const int64_t *w = words + (size_t)i * ROW_WORDS;
        if (w[0] != 0 && w[0] != 1)
            return loom_error(LOOM_EINVAL, "round %d: client %d answered on %lld processes", e->round, e->list[i],
                              (long long)w[0]);
        if (w[1] < 0 || w[1] > LOOM_UPDATE_STALE || w[2] < 0)
            return loom_error(LOOM_ERANGE, "round %d: client %d: a shared row with verdict %lld, %lld examples",
                              e->round, e->list[i], (long long)w[1], (long long)w[2]);
    }
    if ((rc = loom_pipeline_share_import(e->pipe, words + (size_t)e->n * ROW_WORDS)) != LOOM_OK)
        return loom_error_context(rc, "round %d", e->round);
    pthread_mutex_lock(&e->mu);
    e->answered = e->accepted = e->dp_bits = 0;
    e->loss_w = e->weight = e->bytes_up = 0;
    for (int i = 0; i < e->n; i++) { /* the counts as loom_engine_submit keeps them, in the sampled order */
        const int64_t *w = words + (size_t)i * ROW_WORDS;
        row *r = &e->rows[i];
        memset(r, 0, sizeof *r);
        if (!w[0]) continue;
        r->answered = 1;
        r->verdict = (loom_update_verdict)w[1];
        r->examples = (uint64_t)w[2];
        r->tokens = (long)w[3];
        r->loss = bitsd(w[4]);
        r->norm = bitsd(w[5]);
        r->bytes = bitsd(w[6]);
        e->answered++;
        e->bytes_up += r->bytes;
        if (r->verdict == LOOM_UPDATE_ACCEPTED) {
            e->accepted++;
            e->dp_bits += r->norm <= e->dp_clip;
            e->loss_w += r->loss * (double)r->examples;
            e->weight += (double)r->examples;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return LOOM_OK;
}
