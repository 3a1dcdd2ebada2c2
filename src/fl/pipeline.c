/* The update pipeline: validate -> clip -> aggregate -> noise -> server optimizer, and the exact
 * fixed-point weighted mean (see include/loom/pipeline.h for the scale, the range and the proof that
 * the 128-bit sums cannot overflow). */
#include "loom/pipeline.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

/* Element loops go parallel only on vectors large enough to pay for the threads; every element is
 * independent (and integer sums are exact), so results do not depend on the thread count. */
#define PAR_MIN 65536

/* ------------------------------------------------------------------ the fixed-point mean */

__extension__ typedef __int128 fx_acc; /* gcc and clang on 64-bit targets */

#define FX_ONE 281474976710656.0 /* 2^LOOM_FX_FRAC_BITS = 2^48 */
#define FX_INV (1.0 / FX_ONE)

struct loom_aggregator {
    size_t dim;
    fx_acc *acc; /* (dim) sum_n w_n q_n */
    fx_acc *ctl; /* (dim) sum_n q(dc_n); NULL without control */
    uint64_t wsum;
};

static void fx_free(loom_aggregator *a) {
    if (!a) return;
    loom_free(a->acc);
    loom_free(a->ctl);
    free(a);
}

static int fx_create(loom_aggregator **out, size_t dim, int with_control) {
    *out = NULL;
    loom_aggregator *a = calloc(1, sizeof *a);
    if (!a) return loom_error(LOOM_ENOMEM, "out of memory");
    a->dim = dim;
    a->acc = loom_calloc(dim, sizeof *a->acc);
    if (with_control) a->ctl = loom_calloc(dim, sizeof *a->ctl);
    if (!a->acc || (with_control && !a->ctl)) {
        fx_free(a);
        return loom_error(LOOM_ENOMEM, "out of memory for the fixed-point sum of %zu values", dim);
    }
    *out = a;
    return LOOM_OK;
}

static void fx_begin(loom_aggregator *a) {
    memset(a->acc, 0, a->dim * sizeof *a->acc);
    if (a->ctl) memset(a->ctl, 0, a->dim * sizeof *a->ctl);
    a->wsum = 0;
}

/* acc += w * rint(x * 2^48) for |x| <= 2^20 (checked by the caller): x * 2^48 is exact in double. The
 * common case |q| < 2^62 takes one 64 x 64 -> 128-bit multiply; larger values convert via 128 bits. */
static inline void fx_fold(fx_acc *acc, double x, int64_t w) {
    double d = rint(x * FX_ONE);
    if (fabs(d) < 4.611686018427387904e18) *acc += (fx_acc)(int64_t)d * (fx_acc)w; /* 2^62 */
    else *acc += (fx_acc)d * w;
}

static int fx_add(loom_aggregator *a, const float *u, double scale, uint64_t w, const float *dc) {
    fx_acc *acc = a->acc;
    const size_t dim = a->dim;
    const int64_t wi = (int64_t)w;
    if (scale == 1.0) {
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
        for (size_t i = 0; i < dim; i++) fx_fold(&acc[i], (double)u[i], wi);
    } else {
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
        for (size_t i = 0; i < dim; i++) fx_fold(&acc[i], (double)u[i] * scale, wi);
    }
    if (dc && a->ctl) {
        fx_acc *ctl = a->ctl;
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
        for (size_t i = 0; i < dim; i++) fx_fold(&ctl[i], (double)dc[i], 1);
    }
    a->wsum += w;
    return LOOM_OK;
}

static int fx_finish(loom_aggregator *a, double *mean, double *control_sum) {
    if (a->wsum == 0) return loom_error(LOOM_ESTATE, "fixed-point mean of no update");
    const fx_acc *acc = a->acc;
    const double W = (double)a->wsum; /* exact: W < 2^52 */
    const size_t dim = a->dim;
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
    for (size_t i = 0; i < dim; i++) mean[i] = ((double)acc[i] / W) * FX_INV;
    if (control_sum && a->ctl) {
        const fx_acc *ctl = a->ctl;
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
        for (size_t i = 0; i < dim; i++) control_sum[i] = (double)ctl[i] * FX_INV;
    }
    return LOOM_OK;
}

const loom_aggregator_ops loom_agg_fixed_mean = {"fixed-mean", LOOM_AGG_STREAMING, fx_create, fx_free,
                                                 fx_begin,     fx_add,             fx_finish,  NULL, NULL, NULL};

/* ------------------------------------------------------------------ the pipeline */

/* ------------------------------------------------------------------ masked updates (heterogeneous clients) */

/* Per-coordinate weights of a round with masked updates (allocated at the first one). */
typedef struct {
    uint64_t *held;   /* (dim) weight of the masked updates that trained the coordinate */
    uint64_t *absent; /* (dim) weight of the masked updates that lack it */
    int used;         /* a masked update arrived this round */
} mask_acc;

static int mask_fold(loom_aggregator *a, mask_acc *m, const float *u, double scale, uint64_t w,
                     const uint8_t *mask) {
    const size_t dim = a->dim;
    if (!m->held) {
        m->held = loom_calloc(dim, sizeof *m->held);
        m->absent = loom_calloc(dim, sizeof *m->absent);
        if (!m->held || !m->absent) {
            loom_free(m->held);
            loom_free(m->absent);
            m->held = m->absent = NULL;
            return loom_error(LOOM_ENOMEM, "out of memory for the masked weights of %zu values", dim);
        }
    }
    fx_acc *acc = a->acc;
    const int64_t wi = (int64_t)w;
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
    for (size_t i = 0; i < dim; i++) {
        if (mask[i] == LOOM_MASK_TRAIN) {
            fx_fold(&acc[i], scale == 1.0 ? (double)u[i] : (double)u[i] * scale, wi);
            m->held[i] += w;
        } else if (mask[i] == LOOM_MASK_ABSENT) {
            m->absent[i] += w;
        }
    }
    m->used = 1;
    return LOOM_OK;
}

/* The masked round's mean (pipeline.h): unmasked updates' weight a->wsum counts everywhere. */
static void mask_finish(const loom_aggregator *a, const mask_acc *m, int pad, const float *x, double *mean) {
    const size_t dim = a->dim;
    const fx_acc *acc = a->acc;
#pragma omp parallel for schedule(static) if (dim >= PAR_MIN)
    for (size_t i = 0; i < dim; i++) {
        uint64_t A = pad ? m->absent[i] : 0, W = a->wsum + m->held[i];
        if (W + A == 0) mean[i] = 0.0;
        else if (A == 0) mean[i] = ((double)acc[i] / (double)W) * FX_INV;
        else mean[i] = ((double)acc[i] * FX_INV - (double)A * (double)x[i]) / (double)(W + A);
    }
}

struct loom_pipeline {
    loom_pipeline_config c;
    mask_acc mask;
    loom_strategy *strat;
    const loom_aggregator_ops *ops;
    loom_aggregator *agg;
    int uses_control;
    double *mean, *csum; /* (dim) each; csum only with control */
    pthread_mutex_t mu;  /* guards everything below and the aggregator */
    int in_round, round;
    size_t n_added;
    uint64_t wsum;
    /* post stage: the round's accepted updates (after clipping) and their weights */
    float **kept, *prev;
    double *kept_w;
    size_t n_kept, cap_kept;
};

static void kept_clear(loom_pipeline *p) {
    for (size_t i = 0; i < p->n_kept; i++) loom_free(p->kept[i]);
    p->n_kept = 0;
}

/* a copy of the clipped update u * scale, kept under the lock held by the caller */
static int kept_push(loom_pipeline *p, float *copy, double w) {
    if (p->n_kept == p->cap_kept) {
        size_t cap = p->cap_kept ? 2 * p->cap_kept : 16;
        float **k = realloc(p->kept, cap * sizeof *k);
        if (k) p->kept = k;
        double *kw = k ? realloc(p->kept_w, cap * sizeof *kw) : NULL;
        if (kw) p->kept_w = kw;
        if (!k || !kw) return loom_error(LOOM_ENOMEM, "out of memory for the round's updates");
        p->cap_kept = cap;
    }
    p->kept[p->n_kept] = copy;
    p->kept_w[p->n_kept] = w;
    p->n_kept++;
    return LOOM_OK;
}

typedef struct {
    const float *u;
    double w;
    size_t dim;
} kept_key;
static int kept_cmp(const void *a, const void *b) {
    const kept_key *x = a, *y = b;
    if (x->w != y->w) return x->w < y->w ? -1 : 1;
    return memcmp(x->u, y->u, x->dim * sizeof(float));
}

/* the post stage: updates in content order, then the hook */
static int run_post(loom_pipeline *p, float *global) {
    const size_t n = p->n_kept, dim = p->c.dim;
    kept_key *k = malloc((n ? n : 1) * sizeof *k);
    const float **u = malloc((n ? n : 1) * sizeof *u);
    double *w = malloc((n ? n : 1) * sizeof *w);
    int rc = LOOM_OK;
    if (!k || !u || !w) rc = loom_error(LOOM_ENOMEM, "out of memory");
    if (rc == LOOM_OK) {
        for (size_t i = 0; i < n; i++) k[i] = (kept_key){p->kept[i], p->kept_w[i], dim};
        qsort(k, n, sizeof *k, kept_cmp);
        for (size_t i = 0; i < n; i++) u[i] = k[i].u, w[i] = k[i].w;
        rc = p->c.post(p->c.post_ud, p->round, global, p->prev, u, w, n);
    }
    free(k);
    free(u);
    free(w);
    return rc;
}

void loom_pipeline_defaults(loom_pipeline_config *c, size_t dim) {
    memset(c, 0, sizeof *c);
    c->dim = dim;
    c->strategy = "fedavg";
    loom_strategy_defaults("fedavg", &c->sp);
}

int loom_pipeline_create(loom_pipeline **out, const loom_pipeline_config *c) {
    *out = NULL;
    if (!c || c->dim == 0) return loom_error(LOOM_EINVAL, "update pipeline: dim must be > 0");
    if (!(c->max_norm >= 0) || isinf(c->max_norm))
        return loom_error(LOOM_EINVAL, "--max-update-norm must be finite and >= 0 (got %g)", c->max_norm);
    if (!(c->clip_norm >= 0 && c->clip_norm <= LOOM_FX_MAX_ABS))
        return loom_error(LOOM_EINVAL, "update clip norm must be in [0, %g] (got %g)", LOOM_FX_MAX_ABS, c->clip_norm);
    loom_pipeline *p = calloc(1, sizeof *p);
    if (!p) return loom_error(LOOM_ENOMEM, "out of memory");
    p->c = *c;
    if (!p->c.strategy) p->c.strategy = "fedavg";
    p->ops = c->aggregator ? c->aggregator : &loom_agg_fixed_mean;
    pthread_mutex_init(&p->mu, NULL);
    int rc = loom_strategy_create(&p->strat, p->c.strategy, &p->c.sp, c->dim);
    if (rc == LOOM_OK) {
        p->uses_control = loom_strategy_uses_control(p->strat);
        rc = p->ops->create_with ? p->ops->create_with(&p->agg, c->dim, p->uses_control, c->aggregator_config)
                                 : p->ops->create(&p->agg, c->dim, p->uses_control);
    }
    if (rc == LOOM_OK && c->post && !(p->prev = loom_alloc(c->dim * sizeof *p->prev)))
        rc = loom_error(LOOM_ENOMEM, "out of memory");
    if (rc == LOOM_OK) {
        p->mean = loom_alloc(c->dim * sizeof *p->mean);
        if (p->uses_control) p->csum = loom_alloc(c->dim * sizeof *p->csum);
        if (!p->mean || (p->uses_control && !p->csum)) rc = loom_error(LOOM_ENOMEM, "out of memory");
    }
    if (rc != LOOM_OK) {
        loom_pipeline_free(p);
        return rc;
    }
    *out = p;
    return LOOM_OK;
}

void loom_pipeline_free(loom_pipeline *p) {
    if (!p) return;
    if (p->agg) p->ops->free(p->agg);
    loom_free(p->mask.held);
    loom_free(p->mask.absent);
    loom_strategy_free(p->strat);
    loom_free(p->mean);
    loom_free(p->csum);
    kept_clear(p);
    free(p->kept);
    free(p->kept_w);
    loom_free(p->prev);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

loom_strategy *loom_pipeline_strategy(loom_pipeline *p) { return p->strat; }
size_t loom_pipeline_dim(const loom_pipeline *p) { return p->c.dim; }

int loom_pipeline_begin_round(loom_pipeline *p, int round) {
    pthread_mutex_lock(&p->mu);
    int open = p->in_round;
    if (!open) {
        p->ops->begin(p->agg);
        if (p->mask.used) {
            memset(p->mask.held, 0, p->c.dim * sizeof *p->mask.held);
            memset(p->mask.absent, 0, p->c.dim * sizeof *p->mask.absent);
            p->mask.used = 0;
        }
        p->in_round = 1;
        p->round = round;
        p->n_added = 0;
        p->wsum = 0;
        kept_clear(p);
    }
    pthread_mutex_unlock(&p->mu);
    if (open) return loom_error(LOOM_ESTATE, "update pipeline: begin_round while round %d is open", p->round);
    return LOOM_OK;
}

static int refuse(loom_update_verdict *out, loom_update_verdict v, int code) {
    if (out) *out = v;
    return code;
}

/* Largest |x| of n floats (all finite: checked before); a plain compare so that it vectorises. */
static double max_abs(const float *x, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        m = a > m ? a : m;
    }
    return (double)m;
}

/* validate and clip without adding: the accepted update's clip factor in *scale */
static int check(const loom_pipeline *p, const float *u, size_t len, double w, const float *dc,
                 loom_update_verdict *verdict, double *norm, double *scale_out) {
    const size_t dim = p->c.dim;
    if (norm) *norm = 0;
    /* validate: the weight, the control delta, then the update itself */
    if (!(w >= 1 && w <= LOOM_FX_MAX_WEIGHT && w == floor(w)))
        return refuse(verdict, LOOM_UPDATE_BAD_WEIGHT,
                      loom_error(LOOM_EINVAL, "client weight must be a whole number in [1, %.0f] (got %g)",
                                 LOOM_FX_MAX_WEIGHT, w));
    if (p->uses_control && !dc)
        return refuse(verdict, LOOM_UPDATE_BAD_CONTROL,
                      loom_error(LOOM_EINVAL, "strategy %s: the update needs a control-variate delta", p->c.strategy));
    if (!p->uses_control && dc)
        return refuse(verdict, LOOM_UPDATE_BAD_CONTROL,
                      loom_error(LOOM_EINVAL, "strategy %s has no control variates, but a control delta was given",
                                 p->c.strategy));
    double n2;
    int rc = loom_update_check(u, len, dim, p->c.max_norm, verdict, &n2);
    if (norm) *norm = n2;
    if (rc != LOOM_OK) return rc;
    /* clip */
    double scale = p->c.clip_norm > 0 && n2 > p->c.clip_norm ? p->c.clip_norm / n2 : 1.0;
    double big = max_abs(u, dim) * scale;
    if (big > LOOM_FX_MAX_ABS)
        return refuse(verdict, LOOM_UPDATE_OUT_OF_RANGE,
                      loom_error(LOOM_ERANGE, "update value of magnitude %g is outside the fixed-point range +-%g",
                                 big, LOOM_FX_MAX_ABS));
    if (dc) {
        for (size_t i = 0; i < dim; i++)
            if (!isfinite(dc[i]))
                return refuse(verdict, LOOM_UPDATE_NONFINITE,
                              loom_error(LOOM_ERANGE, "control delta value %zu is not finite", i));
        if (max_abs(dc, dim) > LOOM_FX_MAX_ABS)
            return refuse(verdict, LOOM_UPDATE_OUT_OF_RANGE,
                          loom_error(LOOM_ERANGE, "control delta outside the fixed-point range +-%g", LOOM_FX_MAX_ABS));
    }
    *scale_out = scale;
    if (verdict) *verdict = LOOM_UPDATE_ACCEPTED;
    return LOOM_OK;
}

int loom_pipeline_check(const loom_pipeline *p, const float *u, size_t len, double w, const float *dc,
                        loom_update_verdict *verdict, double *norm) {
    double scale = 1.0;
    return check(p, u, len, w, dc, verdict, norm, &scale);
}

int loom_pipeline_add(loom_pipeline *p, const float *u, size_t len, double w, const float *dc,
                      loom_update_verdict *verdict, double *norm) {
    return loom_pipeline_add_masked(p, u, len, w, dc, NULL, verdict, norm);
}

int loom_pipeline_add_masked(loom_pipeline *p, const float *u, size_t len, double w, const float *dc,
                             const uint8_t *mask, loom_update_verdict *verdict, double *norm) {
    if (mask && p->ops != &loom_agg_fixed_mean)
        return refuse(verdict, LOOM_UPDATE_BAD_CODEC,
                      loom_error(LOOM_EUNSUPPORTED, "aggregator %s cannot take masked (heterogeneous) updates",
                                 p->ops->name));
    if (mask && p->uses_control)
        return refuse(verdict, LOOM_UPDATE_BAD_CONTROL,
                      loom_error(LOOM_EUNSUPPORTED, "strategy %s: control variates cannot be masked", p->c.strategy));
    if (mask && p->c.post)
        return refuse(verdict, LOOM_UPDATE_BAD_CODEC,
                      loom_error(LOOM_EUNSUPPORTED, "the post stage needs every client's whole update: masked updates are refused"));
    double scale = 1.0;
    int rc = check(p, u, len, w, dc, verdict, norm, &scale);
    if (rc != LOOM_OK) return rc;
    float *copy = NULL;
    if (p->c.post) { /* the post stage's copy, clipped as the aggregate sees it */
        const size_t dim = p->c.dim;
        if (!(copy = loom_alloc(dim * sizeof *copy))) return loom_error(LOOM_ENOMEM, "out of memory for an update's copy");
        if (scale == 1.0) memcpy(copy, u, dim * sizeof *copy);
        else
            for (size_t i = 0; i < dim; i++) copy[i] = (float)((double)u[i] * scale);
    }
    /* aggregate */
    pthread_mutex_lock(&p->mu);
    if (!p->in_round) rc = loom_error(LOOM_ESTATE, "update pipeline: update added outside a round");
    else if (p->n_added >= LOOM_FX_MAX_UPDATES) {
        rc = refuse(verdict, LOOM_UPDATE_ROUND_FULL,
                    loom_error(LOOM_ERANGE, "round %d is full (%zu updates)", p->round, p->n_added));
    } else if ((rc = mask ? mask_fold(p->agg, &p->mask, u, scale, (uint64_t)w, mask)
                          : p->ops->add(p->agg, u, scale, (uint64_t)w, dc)) == LOOM_OK) {
        p->n_added++;
        p->wsum += (uint64_t)w;
        if (copy && (rc = kept_push(p, copy, w)) == LOOM_OK) copy = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    loom_free(copy);
    if (rc == LOOM_OK && verdict) *verdict = LOOM_UPDATE_ACCEPTED;
    return rc;
}

int loom_pipeline_add_model(loom_pipeline *p, const float *y, const float *x, double w, const float *dc,
                            loom_update_verdict *verdict) {
    if (loom_strategy_update_kind(p->strat) != LOOM_UPDATE_DELTA)
        return loom_error(LOOM_EINVAL, "strategy %s takes gradients, not client models", p->c.strategy);
    if (!y || !x) return loom_error(LOOM_EINVAL, "update pipeline: NULL model");
    float *u = loom_alloc(p->c.dim * sizeof *u);
    if (!u) return LOOM_ENOMEM;
    loom_update_delta(u, y, x, p->c.dim);
    int rc = loom_pipeline_add(p, u, p->c.dim, w, dc, verdict, NULL);
    loom_free(u);
    return rc;
}

size_t loom_pipeline_num_added(const loom_pipeline *p) {
    pthread_mutex_lock((pthread_mutex_t *)&p->mu);
    size_t n = p->in_round ? p->n_added : 0;
    pthread_mutex_unlock((pthread_mutex_t *)&p->mu);
    return n;
}

uint64_t loom_pipeline_total_weight(const loom_pipeline *p) {
    pthread_mutex_lock((pthread_mutex_t *)&p->mu);
    uint64_t w = p->in_round ? p->wsum : 0;
    pthread_mutex_unlock((pthread_mutex_t *)&p->mu);
    return w;
}

int loom_pipeline_end_round(loom_pipeline *p, float *global) {
    pthread_mutex_lock(&p->mu);
    int open = p->in_round;
    size_t n = p->n_added;
    uint64_t W = p->wsum;
    p->in_round = 0;
    int rc = LOOM_OK;
    if (!open) rc = loom_error(LOOM_ESTATE, "update pipeline: end_round without begin_round");
    else if (!global) rc = loom_error(LOOM_EINVAL, "update pipeline: end_round with a NULL global vector");
    else if (n == 0)
        rc = loom_error(LOOM_ESTATE, "strategy %s: round closed with no accepted update; global model unchanged",
                        p->c.strategy);
    else if (p->mask.used) mask_finish(p->agg, &p->mask, p->c.mask_pad, global, p->mean);
    else rc = p->ops->finish(p->agg, p->mean, p->csum);
    pthread_mutex_unlock(&p->mu);
    if (rc != LOOM_OK) return rc;
    if (p->c.noise && (rc = p->c.noise(p->c.noise_ud, p->mean, p->c.dim, W, n, p->round)) != LOOM_OK)
        return loom_error_context(rc, "noise stage of round %d", p->round);
    if (p->c.post) memcpy(p->prev, global, p->c.dim * sizeof *global);
    rc = loom_strategy_step(p->strat, global, p->mean, p->uses_control ? p->csum : NULL, n);
    if (rc == LOOM_OK && p->c.post) {
        rc = run_post(p, global);
        if (rc != LOOM_OK) rc = loom_error_context(rc, "post stage of round %d", p->round);
    }
    kept_clear(p);
    return rc;
}

void loom_pipeline_abort_round(loom_pipeline *p) {
    pthread_mutex_lock(&p->mu);
    p->in_round = 0;
    kept_clear(p);
    pthread_mutex_unlock(&p->mu);
}

int loom_pipeline_aggregate(loom_pipeline *p, float *global, const float *const *updates, const double *weights,
                            const float *const *control_deltas, size_t n) {
    if (n > 0 && (!updates || !weights))
        return loom_error(LOOM_EINVAL, "update pipeline: aggregate of %zu updates without updates or weights", n);
    int rc = loom_pipeline_begin_round(p, 0);
    if (rc != LOOM_OK) return rc;
    for (size_t i = 0; i < n; i++) {
        rc = loom_pipeline_add(p, updates[i], p->c.dim, weights[i], control_deltas ? control_deltas[i] : NULL, NULL,
                               NULL);
        if (rc != LOOM_OK) {
            loom_pipeline_abort_round(p);
            return loom_error_context(rc, "update %zu", i);
        }
    }
    return loom_pipeline_end_round(p, global);
}

int loom_pipeline_state_load(loom_pipeline *p, const char *name, const float *data, size_t len) {
    pthread_mutex_lock(&p->mu);
    int open = p->in_round;
    pthread_mutex_unlock(&p->mu);
    if (open) return loom_error(LOOM_ESTATE, "strategy %s: state %s loaded inside a round", p->c.strategy, name);
    return loom_strategy_state_load(p->strat, name, data, len);
}

int loom_pipeline_set_clip(loom_pipeline *p, double clip_norm) {
    if (!(clip_norm >= 0 && clip_norm <= LOOM_FX_MAX_ABS))
        return loom_error(LOOM_EINVAL, "update clip norm must be in [0, %g] (got %g)", LOOM_FX_MAX_ABS, clip_norm);
    pthread_mutex_lock(&p->mu);
    int open = p->in_round;
    if (!open) p->c.clip_norm = clip_norm;
    pthread_mutex_unlock(&p->mu);
    if (open) return loom_error(LOOM_ESTATE, "update pipeline: clip changed inside round %d", p->round);
    return LOOM_OK;
}

double loom_pipeline_clip(const loom_pipeline *p) { return p->c.clip_norm; }

int loom_pipeline_wants_reference(const loom_pipeline *p) {
    return p->ops->reference && p->ops->wants_reference && p->ops->wants_reference(p->agg);
}

int loom_pipeline_set_reference(loom_pipeline *p, const float *ref, size_t len) {
    if (!p->ops->reference)
        return loom_error(LOOM_EUNSUPPORTED, "aggregator %s takes no reference update", p->ops->name);
    if (!ref || len != p->c.dim)
        return loom_error(LOOM_EINVAL, "reference update of %zu values for a vector of %zu", ref ? len : 0, p->c.dim);
    for (size_t i = 0; i < len; i++)
        if (!isfinite(ref[i])) return loom_error(LOOM_EINVAL, "reference update: value %zu is not finite", i);
    pthread_mutex_lock(&p->mu);
    int open = p->in_round, rc = LOOM_OK;
    if (open) rc = p->ops->reference(p->agg, ref);
    pthread_mutex_unlock(&p->mu);
    if (!open) return loom_error(LOOM_ESTATE, "update pipeline: reference update outside a round");
    return rc;
}

/* ------------------------------------------------------------------ a secure sum (see pipeline.h) */

int loom_pipeline_add_sum(loom_pipeline *p, const double *sum, size_t len, uint64_t total_weight, size_t n_updates) {
    if (!sum || len != p->c.dim)
        return loom_error(LOOM_EINVAL, "update pipeline: secure sum of %zu values, the vector has %zu", len, p->c.dim);
    if (p->ops != &loom_agg_fixed_mean)
        return loom_error(LOOM_EUNSUPPORTED, "aggregator %s needs the individual updates: it cannot take a secure sum",
                          p->ops->name);
    if (p->uses_control)
        return loom_error(LOOM_EUNSUPPORTED, "strategy %s needs control deltas: it cannot take a secure sum",
                          p->c.strategy);
    if (p->c.post)
        return loom_error(LOOM_EUNSUPPORTED, "the post stage needs the individual updates: it cannot take a secure sum");
    if (n_updates < 1 || total_weight < n_updates || (double)total_weight > (double)n_updates * LOOM_FX_MAX_WEIGHT)
        return loom_error(LOOM_EINVAL, "update pipeline: secure sum of %zu updates with total weight %llu", n_updates,
                          (unsigned long long)total_weight);
    const double lim = LOOM_FX_MAX_ABS * (double)total_weight;
    for (size_t i = 0; i < len; i++)
        if (!(fabs(sum[i]) <= lim))
            return loom_error(LOOM_ERANGE, "secure sum value %zu (%g) is outside the fixed-point range", i, sum[i]);
    pthread_mutex_lock(&p->mu);
    int rc = LOOM_OK;
    if (!p->in_round) rc = loom_error(LOOM_ESTATE, "update pipeline: secure sum added outside a round");
    else if (p->n_added + n_updates > LOOM_FX_MAX_UPDATES)
        rc = loom_error(LOOM_ERANGE, "round %d is full (%zu updates)", p->round, p->n_added);
    else {
        fx_acc *acc = p->agg->acc;
        /* |sum 2^48| <= 2^20 2^52 2^48 = 2^120: exact in the 128-bit sum */
#pragma omp parallel for schedule(static) if (len >= PAR_MIN)
        for (size_t i = 0; i < len; i++) acc[i] += (fx_acc)rint(sum[i] * FX_ONE);
        p->agg->wsum += total_weight;
        p->n_added += n_updates;
        p->wsum += total_weight;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* ------------------------------------------------------------------ a round shared by processes (see pipeline.h) */

__extension__ typedef unsigned __int128 fx_uacc;

size_t loom_pipeline_share_len(const loom_pipeline *p) { return 2 + 3 * p->c.dim * (p->uses_control ? 2 : 1); }

static int share_usable(const loom_pipeline *p, const char *what) {
    if (p->ops != &loom_agg_fixed_mean)
        return loom_error(LOOM_EUNSUPPORTED, "aggregator %s keeps the updates: its round cannot be %s as a sum",
                          p->ops->name, what);
    if (p->mask.used)
        return loom_error(LOOM_EUNSUPPORTED, "masked (heterogeneous) updates cannot be %s as a sum", what);
    if (!p->in_round) return loom_error(LOOM_ESTATE, "update pipeline: no open round to be %s", what);
    return LOOM_OK;
}

/* S = l0 + l1 2^40 + l2 2^80 with l0, l1 in [0, 2^40): l2 = (S - l0 - l1 2^40) / 2^80 exactly */
static void limbs_of(fx_acc s, int64_t *l) {
    const fx_acc one40 = (fx_acc)1 << 40;
    fx_uacc u = (fx_uacc)s; /* two's complement: the low bits of s */
    l[0] = (int64_t)(u & (((fx_uacc)1 << 40) - 1));
    l[1] = (int64_t)((u >> 40) & (((fx_uacc)1 << 40) - 1));
    l[2] = (int64_t)((s - (fx_acc)l[0] - (fx_acc)l[1] * one40) / (one40 * one40));
}

static fx_acc limbs_sum(const int64_t *l) {
    const fx_acc one40 = (fx_acc)1 << 40;
    return (fx_acc)l[0] + (fx_acc)l[1] * one40 + (fx_acc)l[2] * one40 * one40;
}

int loom_pipeline_share_export(loom_pipeline *p, int64_t *words) {
    pthread_mutex_lock(&p->mu);
    int rc = share_usable(p, "shared");
    if (rc == LOOM_OK) {
        const size_t dim = p->c.dim;
        words[0] = (int64_t)p->wsum;
        words[1] = (int64_t)p->n_added;
        const fx_acc *acc = p->agg->acc;
        for (size_t i = 0; i < dim; i++) limbs_of(acc[i], words + 2 + 3 * i);
        if (p->uses_control)
            for (size_t i = 0; i < dim; i++) limbs_of(p->agg->ctl[i], words + 2 + 3 * dim + 3 * i);
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int loom_pipeline_share_import(loom_pipeline *p, const int64_t *words) {
    int64_t W = words[0], n = words[1];
    if (n < 0 || (uint64_t)n > LOOM_FX_MAX_UPDATES || W < n || (double)W > (double)n * LOOM_FX_MAX_WEIGHT)
        return loom_error(LOOM_ERANGE, "update pipeline: a shared round of %lld updates with total weight %lld",
                          (long long)n, (long long)W);
    pthread_mutex_lock(&p->mu);
    int rc = share_usable(p, "imported");
    if (rc == LOOM_OK) {
        const size_t dim = p->c.dim;
        fx_acc *acc = p->agg->acc;
        for (size_t i = 0; i < dim; i++) acc[i] = limbs_sum(words + 2 + 3 * i);
        if (p->uses_control)
            for (size_t i = 0; i < dim; i++) p->agg->ctl[i] = limbs_sum(words + 2 + 3 * dim + 3 * i);
        p->agg->wsum = (uint64_t)W;
        p->wsum = (uint64_t)W;
        p->n_added = (size_t)n;
    }
    pthread_mutex_unlock(&p->mu);
    return rc;
}
