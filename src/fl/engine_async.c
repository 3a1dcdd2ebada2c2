/* The round engine's asynchronous modes: FedAsync (mix on arrival) and FedBuff (aggregate every K
 * arrivals), the versions handed to training clients, staleness functions, and one metrics row per
 * version (see include/loom/engine.h for the definitions and the papers). */
#include "fl/engine_async.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

#define PAR_MIN 65536   /* element loops go parallel from this length (each element independent) */
#define ROWS_MAX 65536  /* client rows kept per version; arrivals past it are counted, not listed */

/* ------------------------------------------------------------------ staleness functions */

double loom_staleness_weight(const loom_staleness_fn *f, uint64_t staleness) {
    double d = (double)staleness;
    switch (f->kind) {
    case LOOM_STALENESS_CONSTANT: return 1.0;
    case LOOM_STALENESS_POLY: return f->a > 0 && isfinite(f->a) ? pow(d + 1.0, -f->a) : NAN;
    case LOOM_STALENESS_HINGE:
        if (!(f->a > 0 && isfinite(f->a) && f->b >= 0 && isfinite(f->b))) return NAN;
        return d <= f->b ? 1.0 : 1.0 / (f->a * (d - f->b) + 1.0);
    }
    return NAN;
}

int loom_staleness_check(const loom_staleness_fn *f) {
    switch (f->kind) {
    case LOOM_STALENESS_CONSTANT: return LOOM_OK;
    case LOOM_STALENESS_POLY:
        if (!(f->a > 0 && isfinite(f->a)))
            return loom_error(LOOM_EINVAL, "--staleness poly:%g: the exponent must be finite and > 0", f->a);
        return LOOM_OK;
    case LOOM_STALENESS_HINGE:
        if (!(f->a > 0 && isfinite(f->a)))
            return loom_error(LOOM_EINVAL, "--staleness hinge:%g:%g: the slope must be finite and > 0", f->a, f->b);
        if (!(f->b >= 0 && isfinite(f->b)))
            return loom_error(LOOM_EINVAL, "--staleness hinge:%g:%g: the tolerated staleness must be finite and >= 0",
                              f->a, f->b);
        return LOOM_OK;
    }
    return loom_error(LOOM_EINVAL, "--staleness: unknown function %d", (int)f->kind);
}

/* One ":NUMBER" field of a --staleness value; *p moves past it. */
static int parse_field(const char **p, double *v, const char *all) {
    if (**p != ':') return LOOM_OK; /* omitted: the default stays */
    const char *s = *p + 1;
    char *end = NULL;
    errno = 0;
    double x = strtod(s, &end);
    if (end == s || errno || !isfinite(x) || (*end && *end != ':'))
        return loom_error(LOOM_EINVAL, "--staleness %s: \"%.*s\" is not a number", all, (int)strcspn(s, ":"), s);
    *v = x;
    *p = end;
    return LOOM_OK;
}

int loom_staleness_parse(const char *s, loom_staleness_fn *f) {
    if (!s) return loom_error(LOOM_EINVAL, "--staleness: no value");
    loom_staleness_fn g = {LOOM_STALENESS_CONSTANT, 0.5, 4};
    size_t n = strcspn(s, ":");
    const char *p = s + n;
    int rc = LOOM_OK, fields = 0;
    if (n == 8 && !strncmp(s, "constant", 8)) g.kind = LOOM_STALENESS_CONSTANT;
    else if (n == 4 && !strncmp(s, "poly", 4)) g.kind = LOOM_STALENESS_POLY, fields = 1;
    else if (n == 5 && !strncmp(s, "hinge", 5)) g.kind = LOOM_STALENESS_HINGE, fields = 2;
    else
        return loom_error(LOOM_EINVAL, "--staleness %s: expected constant, poly[:A] or hinge[:A[:B]]", s);
    if (fields >= 1 && (rc = parse_field(&p, &g.a, s)) != LOOM_OK) return rc;
    if (fields >= 2 && (rc = parse_field(&p, &g.b, s)) != LOOM_OK) return rc;
    if (*p) return loom_error(LOOM_EINVAL, "--staleness %s: unexpected \"%s\"", s, p);
    if ((rc = loom_staleness_check(&g)) != LOOM_OK) return rc;
    *f = g;
    return LOOM_OK;
}

int loom_engine_mode_parse(const char *s, loom_engine_mode *m) {
    if (s && !strcmp(s, "sync")) *m = LOOM_ENGINE_SYNC;
    else if (s && !strcmp(s, "fedasync")) *m = LOOM_ENGINE_FEDASYNC;
    else if (s && !strcmp(s, "fedbuff")) *m = LOOM_ENGINE_FEDBUFF;
    else return loom_error(LOOM_EINVAL, "--mode %s: expected sync, fedasync or fedbuff", s ? s : "(none)");
    return LOOM_OK;
}

const char *loom_engine_mode_name(loom_engine_mode m) {
    switch (m) {
    case LOOM_ENGINE_SYNC: return "sync";
    case LOOM_ENGINE_FEDASYNC: return "fedasync";
    case LOOM_ENGINE_FEDBUFF: return "fedbuff";
    }
    return "unknown";
}

/* ------------------------------------------------------------------ state */

typedef struct {
    uint64_t version; /* UINT64_MAX: holds nothing */
    int refs;         /* clients training on it */
    float *x;         /* (dim) */
} snapshot;

typedef struct {
    int client;
    uint64_t examples;
    long tokens;
    double loss, norm;
    loom_update_verdict verdict;
    long staleness;
    double bytes;     /* uploaded: the update's wire_bytes, else its f32 size (0: nothing arrived) */
} arow;

/* The arrivals of one version (the one being built, or the one last made awaiting its row). */
typedef struct {
    arow *rows;
    int *clients;
    int n, cap;
    long arrivals, accepted, payloads, tasks;
    double loss_w, weight, st_sum, st_max, bytes_up;
} batch;

struct lm_async {
    loom_engine_config c;
    float *global;
    loom_pipeline *pipe;
    size_t dim;
    int N, C, K;
    double per_bytes;
    pthread_mutex_t mu;
    uint64_t t;           /* the current version */
    snapshot *snaps;      /* (C) */
    int *slot_of;         /* (N) client -> snapshot of its task, -1 */
    int training;
    float *scratch;       /* (dim) FedBuff's staleness-scaled copy (used under the lock) */
    batch cur, pend;
    int pending;          /* pend holds the row of version pend_version, not yet emitted */
    uint64_t pend_version;
    double pend_clock;
    int eval_due;
    int *elist, ne;       /* the evaluated clients (sorted), the same for every version */
    int *epos;            /* (N) client -> position in elist, -1 */
    loom_eval_result *eres;
    int *edone;
};

int lm_async_check(const loom_engine_config *c) {
    if (c->mode == LOOM_ENGINE_SYNC) return LOOM_OK;
    if (c->mode != LOOM_ENGINE_FEDASYNC && c->mode != LOOM_ENGINE_FEDBUFF)
        return loom_error(LOOM_EINVAL, "--mode: unknown engine mode %d", (int)c->mode);
    if (!(c->async_alpha >= 0 && c->async_alpha <= 1))
        return loom_error(LOOM_EINVAL, "--async-alpha %g must be in [0, 1]", c->async_alpha);
    int rc = loom_staleness_check(&c->staleness);
    if (rc != LOOM_OK) return rc;
    if (c->concurrency < 0) return loom_error(LOOM_EINVAL, "--concurrency %d must be >= 0", c->concurrency);
    if (c->concurrency > c->n_clients)
        return loom_error(LOOM_EINVAL, "--concurrency %d is more than the %d clients", c->concurrency, c->n_clients);
    if (c->buffer < 0) return loom_error(LOOM_EINVAL, "--buffer %d must be >= 0", c->buffer);
    if (c->buffer > (int)LOOM_FX_MAX_UPDATES)
        return loom_error(LOOM_EINVAL, "--buffer %d is more than the %zu updates a sum takes", c->buffer,
                          LOOM_FX_MAX_UPDATES);
    if (c->max_staleness < 0) return loom_error(LOOM_EINVAL, "max staleness %ld must be >= 0", c->max_staleness);
    return LOOM_OK;
}

static void batch_clear(batch *b) {
    arow *rows = b->rows;
    int *cl = b->clients, cap = b->cap;
    memset(b, 0, sizeof *b);
    b->rows = rows;
    b->clients = cl;
    b->cap = cap;
}

static void batch_free(batch *b) {
    free(b->rows);
    free(b->clients);
}

void lm_async_free(lm_async *a) {
    if (!a) return;
    for (int i = 0; a->snaps && i < a->C; i++) loom_free(a->snaps[i].x);
    free(a->snaps);
    free(a->slot_of);
    loom_free(a->scratch);
    batch_free(&a->cur);
    batch_free(&a->pend);
    free(a->elist);
    free(a->epos);
    free(a->eres);
    free(a->edone);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* The evaluated clients: those with test examples, at most eval_clients of them chosen by the seed
 * (the same choice as the synchronous rounds'). */
static void eval_set(lm_async *a) {
    const loom_engine_config *c = &a->c;
    int ne = 0;
    if (c->n_test)
        for (int i = 0; i < a->N; i++)
            if (c->n_test[i] > 0) a->elist[ne++] = i;
    if (c->eval_clients > 0 && ne > c->eval_clients) {
        loom_rng er;
        loom_rng_init(&er, c->seed, LOOM_STREAM_EVAL);
        for (int i = 0; i < c->eval_clients; i++) {
            int j = i + (int)loom_rng_below(&er, (uint32_t)(ne - i));
            int t = a->elist[i];
            a->elist[i] = a->elist[j];
            a->elist[j] = t;
        }
        ne = c->eval_clients;
        for (int i = 1; i < ne; i++)
            for (int k = i; k > 0 && a->elist[k - 1] > a->elist[k]; k--) {
                int t = a->elist[k];
                a->elist[k] = a->elist[k - 1];
                a->elist[k - 1] = t;
            }
    }
    a->ne = ne;
    for (int i = 0; i < ne; i++) a->epos[a->elist[i]] = i;
}

int lm_async_create(lm_async **out, const loom_engine_config *c, float *global, loom_pipeline *pipe) {
    *out = NULL;
    loom_strategy *s = loom_pipeline_strategy(pipe);
    const char *sn = loom_strategy_name(s);
    if (c->mode == LOOM_ENGINE_FEDASYNC && strcmp(sn, "fedavg") && strcmp(sn, "fedprox"))
        return loom_error(LOOM_EINVAL, "--mode fedasync mixes each update itself: it takes --strategy fedavg (or fedprox), not %s",
                          sn);
    if (loom_strategy_uses_control(s) || loom_strategy_update_kind(s) != LOOM_UPDATE_DELTA)
        return loom_error(LOOM_EINVAL, "--mode %s needs model deltas without control variates: --strategy %s is not supported",
                          loom_engine_mode_name(c->mode), sn);
    lm_async *a = calloc(1, sizeof *a);
    if (!a) return loom_error(LOOM_ENOMEM, "out of memory");
    pthread_mutex_init(&a->mu, NULL);
    a->c = *c;
    a->global = global;
    a->pipe = pipe;
    a->dim = c->dim;
    a->N = c->n_clients;
    int m = c->sample > 0 ? c->sample : c->sample_frac > 0 ? (int)ceil(c->sample_frac * a->N) : a->N;
    if (m > a->N) m = a->N;
    if (m < 1) m = 1;
    a->C = c->concurrency > 0 ? c->concurrency : m;
    a->K = c->buffer > 0 ? c->buffer : a->C;
    a->per_bytes = (double)a->dim * sizeof(float);
    size_t N = (size_t)a->N;
    a->snaps = calloc((size_t)a->C, sizeof *a->snaps);
    a->slot_of = malloc(N * sizeof *a->slot_of);
    a->elist = malloc(N * sizeof *a->elist);
    a->epos = malloc(N * sizeof *a->epos);
    a->eres = calloc(N, sizeof *a->eres);
    a->edone = calloc(N, sizeof *a->edone);
    if (c->mode == LOOM_ENGINE_FEDBUFF) a->scratch = loom_alloc(a->dim * sizeof(float));
    int ok = a->snaps && a->slot_of && a->elist && a->epos && a->eres && a->edone &&
             (c->mode != LOOM_ENGINE_FEDBUFF || a->scratch);
    if (!ok) {
        lm_async_free(a);
        return loom_error(LOOM_ENOMEM, "out of memory for %d clients", a->N);
    }
    for (int i = 0; i < a->C; i++) a->snaps[i].version = UINT64_MAX; /* x allocated on first use */
    for (size_t i = 0; i < N; i++) a->slot_of[i] = a->epos[i] = -1;
    eval_set(a);
    int rc = LOOM_OK;
    if (c->mode == LOOM_ENGINE_FEDBUFF && (rc = loom_pipeline_begin_round(pipe, 1)) != LOOM_OK) {
        lm_async_free(a);
        return rc;
    }
    *out = a;
    return LOOM_OK;
}

/* ------------------------------------------------------------------ rows */

static void record(batch *b, int client, const loom_update *u, double norm, loom_update_verdict v, long staleness) {
    b->arrivals++;
    if (b->n == b->cap && b->cap < ROWS_MAX) {
        int cap = b->cap ? 2 * b->cap : 16;
        if (cap > ROWS_MAX) cap = ROWS_MAX;
        arow *r = realloc(b->rows, (size_t)cap * sizeof *r);
        if (r) b->rows = r;
        int *cl = realloc(b->clients, (size_t)cap * sizeof *cl);
        if (cl) b->clients = cl;
        if (r && cl) b->cap = cap;
    }
    if (b->n < b->cap) {
        arow *w = &b->rows[b->n];
        w->client = client;
        w->examples = u ? u->examples : 0;
        w->tokens = u ? (long)u->tokens : 0;
        w->loss = u ? u->loss : NAN;
        w->norm = norm;
        w->verdict = v;
        w->staleness = staleness;
        w->bytes = u ? (u->wire_bytes ? (double)u->wire_bytes : (double)u->len * sizeof(float)) : 0;
        b->clients[b->n++] = client;
    }
    if (v == LOOM_UPDATE_ACCEPTED) {
        b->accepted++;
        b->loss_w += u->loss * (double)u->examples;
        b->weight += (double)u->examples;
        b->st_sum += (double)staleness;
        b->st_max = fmax(b->st_max, (double)staleness);
    }
}

/* Emits pend's rows to the sink (under the lock). */
static void emit(lm_async *a, double seconds, loom_round_metrics *out) {
    const batch *b = &a->pend;
    loom_round_metrics m;
    memset(&m, 0, sizeof m);
    m.round = (int)a->pend_version;
    m.sampled = (int)b->arrivals;
    m.accepted = (int)b->accepted;
    m.rejected = (int)(b->arrivals - b->accepted);
    m.train_loss = b->weight > 0 ? b->loss_w / b->weight : NAN;
    m.eval_loss = m.eval_acc = NAN;
    m.aggregated = 1;
    m.bytes_down = a->per_bytes * (double)b->tasks;
    m.bytes_up = b->bytes_up;
    if (a->eval_due) {
        lm_eval_pool pool = {0};
        for (int i = 0; i < a->ne; i++)
            if (a->edone[i]) lm_eval_pool_add(&pool, &a->eres[i]);
        lm_eval_pool_finish(&pool, &m);
    }
    m.seconds = seconds;
    m.version = a->pend_version;
    m.staleness_mean = b->accepted > 0 ? b->st_sum / (double)b->accepted : 0;
    m.staleness_max = b->st_max;
    m.clock = a->pend_clock;
    const loom_metrics_sink *sk = &a->c.sink;
    if (sk->round) sk->round(sk->ud, &m, b->clients, b->n);
    if (sk->client)
        for (int i = 0; i < b->n; i++) {
            const arow *w = &b->rows[i];
            loom_client_row cr = {(int)a->pend_version, w->client, w->examples, w->tokens, w->loss, w->norm,
                                  w->verdict, loom_update_verdict_str(w->verdict), w->staleness,
                                  w->bytes};
            sk->client(sk->ud, &cr);
        }
    if (out) *out = m;
}

/* Version t was just made at time now: the previous row goes out if still pending, cur becomes pend. */
static void version_made(lm_async *a, double now) {
    if (a->pending) emit(a, 0, NULL);
    batch t = a->pend;
    a->pend = a->cur;
    a->cur = t;
    batch_clear(&a->cur);
    a->pending = 1;
    a->pend_version = a->t;
    a->pend_clock = now;
    int last = a->t >= (uint64_t)a->c.rounds;
    a->eval_due = a->ne > 0 && (last || (a->c.eval_every > 0 && a->t % (uint64_t)a->c.eval_every == 0));
    memset(a->edone, 0, (size_t)a->N * sizeof *a->edone);
}

/* ------------------------------------------------------------------ the calls */

static lm_async *need(const loom_engine *e) {
    lm_async *a = lm_engine_async(e);
    if (!a) loom_error(LOOM_ESTATE, "round engine: not in an asynchronous mode (the config's mode is sync)");
    return a;
}

uint64_t loom_engine_version(const loom_engine *e) {
    lm_async *a = lm_engine_async(e);
    if (!a) return (uint64_t)loom_engine_next_round(e);
    pthread_mutex_lock(&a->mu);
    uint64_t t = a->t;
    pthread_mutex_unlock(&a->mu);
    return t;
}

int loom_engine_async_copy_global(loom_engine *e, float *out, uint64_t *version) {
    lm_async *a = need(e);
    if (!a) return LOOM_ESTATE;
    pthread_mutex_lock(&a->mu);
    memcpy(out, a->global, a->dim * sizeof(float));
    if (version) *version = a->t;
    pthread_mutex_unlock(&a->mu);
    return LOOM_OK;
}

int loom_engine_async_training(const loom_engine *e) {
    lm_async *a = lm_engine_async(e);
    if (!a) return 0;
    pthread_mutex_lock(&a->mu);
    int n = a->training;
    pthread_mutex_unlock(&a->mu);
    return n;
}

static void fill_task(const lm_async *a, const snapshot *s, loom_task *t) {
    t->round = (int)(s->version + 1);
    t->version = s->version;
    t->run_id = a->c.run_id;
    t->global = s->x;
    t->server_control = NULL;
}

int loom_engine_async_task(loom_engine *e, int client, double now, loom_task *t) {
    (void)now;
    lm_async *a = need(e);
    if (!a) return LOOM_ESTATE;
    if (client < 0 || client >= a->N)
        return loom_error(LOOM_EINVAL, "round engine: client %d is not one of the %d clients", client, a->N);
    pthread_mutex_lock(&a->mu);
    int rc = LOOM_OK;
    if (a->slot_of[client] >= 0) {
        fill_task(a, &a->snaps[a->slot_of[client]], t);
    } else if (a->t >= (uint64_t)a->c.rounds) {
        rc = loom_error(LOOM_ESTATE, "round engine: all %d versions are made", a->c.rounds);
    } else if (a->training >= a->C) {
        rc = loom_error(LOOM_ESTATE, "round engine: %d clients are training, the concurrency limit", a->training);
    } else {
        int use = -1, spare = -1;
        for (int i = 0; i < a->C; i++) {
            if (a->snaps[i].version == a->t) use = i;
            else if (a->snaps[i].refs == 0 && spare < 0) spare = i;
        }
        if (use < 0) { /* there is one: fewer than C clients hold the C snapshots */
            use = spare;
            if (!a->snaps[use].x && !(a->snaps[use].x = loom_alloc(a->dim * sizeof(float)))) {
                pthread_mutex_unlock(&a->mu);
                return loom_error(LOOM_ENOMEM, "out of memory for a model version of %zu values", a->dim);
            }
            memcpy(a->snaps[use].x, a->global, a->dim * sizeof(float));
            a->snaps[use].version = a->t;
        }
        a->snaps[use].refs++;
        a->slot_of[client] = use;
        a->training++;
        a->cur.tasks++;
        fill_task(a, &a->snaps[use], t);
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

static void release(lm_async *a, int client) {
    int s = a->slot_of[client];
    if (s < 0) return;
    a->snaps[s].refs--;
    a->slot_of[client] = -1;
    a->training--;
}

static int refuse(loom_update_verdict *out, loom_update_verdict v, int code) {
    if (out) *out = v;
    return code;
}

/* x <- x + a ((x_tau - x) + c u), per element in double (FedAsync's mixing). */
static void fedasync_mix(float *x, const float *xtau, const float *u, double a, double c, size_t dim) {
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
    for (size_t i = 0; i < dim; i++) {
        double xi = (double)x[i];
        x[i] = (float)(xi + a * (((double)xtau[i] - xi) + c * (double)u[i]));
    }
}

/* Under the lock: the protocol checks that leave the client's task in place (run, task, version). */
static int check_task(const lm_async *a, const loom_update *u, loom_update_verdict *verdict) {
    const int client = u->client;
    if (a->c.run_id && u->run_id != a->c.run_id)
        return refuse(verdict, LOOM_UPDATE_WRONG_ROUND,
                      loom_error(LOOM_EINVAL, "update of run %llx, this run is %llx", (unsigned long long)u->run_id,
                                 (unsigned long long)a->c.run_id));
    if (a->t >= (uint64_t)a->c.rounds) /* a real-time driver's late arrival: the run is complete */
        return refuse(verdict, LOOM_UPDATE_LATE,
                      loom_error(LOOM_ESTATE, "all %d versions are made: the update arrived too late", a->c.rounds));
    if (client < 0 || client >= a->N || a->slot_of[client] < 0)
        return refuse(verdict, LOOM_UPDATE_NOT_SAMPLED,
                      loom_error(LOOM_EINVAL, "client %d holds no task (it was never handed one, or already answered)",
                                 client));
    snapshot *s = &a->snaps[a->slot_of[client]];
    if (u->version > a->t)
        return refuse(verdict, LOOM_UPDATE_WRONG_ROUND,
                      loom_error(LOOM_EINVAL, "client %d: update on version %llu, newer than the current version %llu",
                                 client, (unsigned long long)u->version, (unsigned long long)a->t));
    if (u->version != s->version)
        return refuse(verdict, LOOM_UPDATE_WRONG_ROUND,
                      loom_error(LOOM_EINVAL, "client %d was handed version %llu, its update says version %llu", client,
                                 (unsigned long long)s->version, (unsigned long long)u->version));
    return LOOM_OK;
}

/* The refusals that consume the task: too stale, codec; then the pipeline's content checks. */
static int check_content(const lm_async *a, const loom_update *u, uint64_t staleness, loom_update_verdict *verdict,
                         double *norm) {
    if (a->c.max_staleness > 0 && staleness > (uint64_t)a->c.max_staleness)
        return refuse(verdict, LOOM_UPDATE_STALE,
                      loom_error(LOOM_ERANGE, "client %d: update on version %llu is %llu versions old, more than the %ld allowed",
                                 u->client, (unsigned long long)u->version, (unsigned long long)staleness,
                                 a->c.max_staleness));
    if (u->codec > LOOM_CODEC_SEED_SCALAR) /* the codecs loom_update_decode turns into floats */
        return refuse(verdict, LOOM_UPDATE_BAD_CODEC,
                      loom_error(LOOM_EUNSUPPORTED, "update codec %u is not supported", u->codec));
    return loom_pipeline_check(a->pipe, u->values, u->len, (double)u->examples, u->control, verdict, norm);
}

/* Under the lock: the checks and the application of one update. */
static int submit_locked(lm_async *a, const loom_update *u, double now, loom_update_verdict *verdict, int *made,
                         double *norm_out, long *st_out) {
    const int client = u->client;
    int rc = check_task(a, u, verdict);
    if (rc != LOOM_OK) return rc;
    snapshot *s = &a->snaps[a->slot_of[client]];
    /* from here on the task is consumed, accepted or not */
    uint64_t staleness = a->t - s->version;
    *st_out = (long)staleness;
    const float *xtau = s->x; /* stays intact while the lock is held, even once released */
    release(a, client);
    a->cur.payloads++;
    a->cur.bytes_up += u->wire_bytes ? (double)u->wire_bytes : a->per_bytes;
    double norm = 0;
    rc = check_content(a, u, staleness, verdict, &norm);
    *norm_out = norm;
    if (rc != LOOM_OK) return rc;
    double sw = loom_staleness_weight(&a->c.staleness, staleness);
    double clip = a->c.pipe.clip_norm;
    double cf = clip > 0 && norm > clip ? clip / norm : 1.0; /* the pipeline's clip factor */
    if (a->c.mode == LOOM_ENGINE_FEDASYNC) {
        fedasync_mix(a->global, xtau, u->values, a->c.async_alpha * sw, cf, a->dim);
        a->t++;
        *made = 1;
        if (verdict) *verdict = LOOM_UPDATE_ACCEPTED;
        return LOOM_OK;
    }
    /* FedBuff: into the buffer (the pipeline's sum), scaled by s; the pipeline clips the unscaled one */
    const float *v = u->values;
    if (sw != 1.0) {
        double f = sw * cf;
        for (size_t i = 0; i < a->dim; i++) a->scratch[i] = (float)((double)u->values[i] * f);
        v = a->scratch;
    }
    if ((rc = loom_pipeline_add(a->pipe, v, a->dim, (double)u->examples, NULL, verdict, NULL)) != LOOM_OK) return rc;
    if (verdict) *verdict = LOOM_UPDATE_ACCEPTED;
    if (loom_pipeline_num_added(a->pipe) < (size_t)a->K) return LOOM_OK;
    int src = loom_pipeline_end_round(a->pipe, a->global); /* -> the server strategy */
    a->t++;
    *made = 1;
    int brc = loom_pipeline_begin_round(a->pipe, (int)(a->t + 1));
    (void)now;
    if (src != LOOM_OK) return loom_error_context(src, "FedBuff flush to version %llu", (unsigned long long)a->t);
    return brc;
}

int loom_engine_async_submit(loom_engine *e, const loom_update *u, double now, loom_update_verdict *verdict,
                             int *made) {
    if (made) *made = 0;
    if (!u) return loom_error(LOOM_EINVAL, "round engine: NULL update");
    lm_async *a = need(e);
    if (!a) return LOOM_ESTATE;
    loom_update_verdict v = LOOM_UPDATE_ACCEPTED;
    int mk = 0;
    double norm = 0;
    long st = -1;
    pthread_mutex_lock(&a->mu);
    int rc = submit_locked(a, u, now, &v, &mk, &norm, &st);
    /* a strategy error in a flush is the server's: the update itself was accepted */
    if (u->client >= 0 && u->client < a->N) record(&a->cur, u->client, u, norm, v, st);
    else a->cur.arrivals++; /* counted, but no row names a client that does not exist */
    if (mk) version_made(a, now);
    pthread_mutex_unlock(&a->mu);
    if (rc != LOOM_OK && v != LOOM_UPDATE_ACCEPTED)
        loom_log(LOOM_WARN, "version %llu: update of client %d refused: %s", (unsigned long long)loom_engine_version(e),
                 u->client, loom_update_verdict_str(v));
    if (verdict) *verdict = v;
    if (made) *made = mk;
    return rc;
}

int loom_engine_async_check(loom_engine *e, const loom_update *u, double now, loom_update_verdict *verdict) {
    (void)now;
    if (!u) return loom_error(LOOM_EINVAL, "round engine: NULL update");
    lm_async *a = need(e);
    if (!a) return LOOM_ESTATE;
    pthread_mutex_lock(&a->mu);
    int rc = check_task(a, u, verdict);
    if (rc == LOOM_OK) {
        uint64_t staleness = a->t - a->snaps[a->slot_of[u->client]].version;
        rc = check_content(a, u, staleness, verdict, NULL);
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int loom_engine_async_fail(loom_engine *e, int client, const char *reason, double now) {
    (void)now;
    lm_async *a = need(e);
    if (!a) return LOOM_ESTATE;
    pthread_mutex_lock(&a->mu);
    int rc = LOOM_OK;
    if (client < 0 || client >= a->N || a->slot_of[client] < 0) {
        rc = loom_error(LOOM_EINVAL, "client %d holds no task (it was never handed one, or already answered)", client);
    } else {
        long st = (long)(a->t - a->snaps[a->slot_of[client]].version);
        release(a, client);
        record(&a->cur, client, NULL, 0, LOOM_UPDATE_CLIENT_FAILED, st);
    }
    pthread_mutex_unlock(&a->mu);
    if (rc == LOOM_OK)
        loom_log(LOOM_WARN, "client %d failed: %s", client, reason ? reason : "no reason given");
    return rc;
}

int loom_engine_async_end_version(loom_engine *e, double seconds, loom_round_metrics *m) {
    lm_async *a = need(e);
    if (!a) return LOOM_ESTATE;
    pthread_mutex_lock(&a->mu);
    int rc = LOOM_OK;
    if (!a->pending) rc = loom_error(LOOM_ESTATE, "round engine: no new version to report");
    else {
        emit(a, seconds, m);
        a->pending = 0;
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

int lm_async_eval_plan(lm_async *a, const int **clients, int *n) {
    pthread_mutex_lock(&a->mu);
    int rc = LOOM_OK, due = a->pending && a->eval_due;
    if (!a->pending) rc = loom_error(LOOM_ESTATE, "round engine: evaluation before a new version was made");
    pthread_mutex_unlock(&a->mu);
    if (clients) *clients = a->elist;
    if (n) *n = due ? a->ne : 0;
    return rc;
}

int lm_async_eval_submit(lm_async *a, int client, const loom_eval_result *r) {
    pthread_mutex_lock(&a->mu);
    int rc = LOOM_OK;
    if (!a->pending || !a->eval_due) rc = loom_error(LOOM_ESTATE, "round engine: evaluation outside its phase");
    else if (client < 0 || client >= a->N || a->epos[client] < 0)
        rc = loom_error(LOOM_EINVAL, "client %d was not asked to evaluate version %llu", client,
                        (unsigned long long)a->pend_version);
    else if (a->edone[a->epos[client]])
        rc = loom_error(LOOM_EINVAL, "client %d already evaluated version %llu", client,
                        (unsigned long long)a->pend_version);
    else {
        a->edone[a->epos[client]] = 1;
        a->eres[a->epos[client]] = *r;
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}
