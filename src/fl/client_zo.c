/* Zeroth-order clients: MeZO and FedKSeed (include/loom/zo.h). */
#include "loom/zo.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/strategy.h"
#include "loom/streams.h"

#define ZCHUNK 4096    /* perturbation values regenerated at a time, on the stack */
#define ZCHUNK_BIG 262144 /* a larger chunk on the heap for long vectors (fewer parallel regions) */

int loom_zo_restore_parse(const char *s, int *mode) {
    if (s && !strcmp(s, "copy")) *mode = LOOM_ZO_RESTORE_COPY;
    else if (s && !strcmp(s, "inplace")) *mode = LOOM_ZO_RESTORE_INPLACE;
    else return loom_error(LOOM_EINVAL, "--zo-restore %s: expected copy or inplace", s ? s : "(none)");
    return LOOM_OK;
}

int loom_kseed_probs_parse(const char *s, int *probs) {
    if (s && !strcmp(s, "uniform")) *probs = LOOM_KSEED_UNIFORM;
    else if (s && !strcmp(s, "importance")) *probs = LOOM_KSEED_IMPORTANCE;
    else return loom_error(LOOM_EINVAL, "--seed-probs %s: expected uniform or importance", s ? s : "(none)");
    return LOOM_OK;
}

void loom_zo_axpy(float *v, size_t n, uint64_t seed, float a) {
    float small[ZCHUNK], *big = n > 4 * ZCHUNK ? malloc(ZCHUNK_BIG * sizeof(float)) : NULL, *z = big ? big : small;
    size_t chunk = big ? ZCHUNK_BIG : ZCHUNK;
    for (size_t off = 0; off < n; off += chunk) {
        size_t len = n - off < chunk ? n - off : chunk;
        loom_rng_normal_fill(seed, LOOM_STREAM_ZO_PERTURB, off, len, z);
        float *p = v + off;
        for (size_t i = 0; i < len; i++) p[i] = p[i] + a * z[i];
    }
    free(big);
}

uint64_t loom_zo_step_seed(uint64_t round_seed, uint64_t step) {
    return loom_hash2(loom_hash2(round_seed, LOOM_STREAM_ZO_PERTURB), step);
}

int loom_zo_estimate(loom_trainer *tr, float *vec, const int32_t *tok, const int32_t *tgt, uint64_t seed, float eps,
                     int restore, float *scratch, double *g, float *loss) {
    size_t dim = loom_trainer_dim(tr);
    if (!(eps > 0) || !isfinite(eps)) return loom_error(LOOM_EINVAL, "--zo-eps %g must be finite and > 0", (double)eps);
    if (restore == LOOM_ZO_RESTORE_COPY) {
        if (!scratch) return loom_error(LOOM_EINVAL, "zeroth-order restore by copy needs a scratch vector");
        memcpy(scratch, vec, dim * sizeof(float));
    } else if (restore != LOOM_ZO_RESTORE_INPLACE) {
        return loom_error(LOOM_EINVAL, "unknown zeroth-order restore mode %d", restore);
    }
    float lp = 0, lm = 0;
    loom_zo_axpy(vec, dim, seed, eps);
    int rc = loom_trainer_loss_at(tr, vec, tok, tgt, &lp);
    loom_zo_axpy(vec, dim, seed, -2.0f * eps);
    if (rc == LOOM_OK) rc = loom_trainer_loss_at(tr, vec, tok, tgt, &lm);
    if (restore == LOOM_ZO_RESTORE_COPY) memcpy(vec, scratch, dim * sizeof(float));
    else loom_zo_axpy(vec, dim, seed, eps);
    if (rc != LOOM_OK) return rc;
    if (!isfinite(lp) || !isfinite(lm))
        return loom_error(LOOM_ERANGE, "zeroth-order loss became non-finite (%g, %g): lower --zo-lr or --zo-eps",
                          (double)lp, (double)lm);
    *g = ((double)lp - (double)lm) / (2.0 * (double)eps);
    *loss = 0.5f * (lp + lm);
    return LOOM_OK;
}

static long count_targets(const int32_t *tgt, size_t n) {
    long c = 0;
    for (size_t i = 0; i < n; i++) c += tgt[i] >= 0;
    return c;
}

/* the batch buffers and, for COPY, the scratch vector */
typedef struct {
    int32_t *tok, *tgt;
    float *scratch;
    size_t BT;
} zo_bufs;

static int bufs_init(zo_bufs *b, loom_trainer *tr, int restore) {
    memset(b, 0, sizeof *b);
    b->BT = loom_trainer_batch_tokens(tr);
    b->tok = malloc(b->BT * sizeof *b->tok);
    b->tgt = malloc(b->BT * sizeof *b->tgt);
    size_t dim = loom_trainer_dim(tr);
    if (restore == LOOM_ZO_RESTORE_COPY) b->scratch = loom_alloc((dim ? dim : 1) * sizeof(float));
    if (!b->tok || !b->tgt || (restore == LOOM_ZO_RESTORE_COPY && !b->scratch))
        return loom_error(LOOM_ENOMEM, "out of memory for a zeroth-order step (%zu values)", dim);
    return LOOM_OK;
}

static void bufs_free(zo_bufs *b) {
    free(b->tok);
    free(b->tgt);
    loom_free(b->scratch);
}

static int check_zo(const loom_fit_config *fc) {
    if (fc->local_steps < 1) return loom_error(LOOM_EINVAL, "local steps %d must be >= 1", fc->local_steps);
    if (!(fc->zo_eps > 0) || !isfinite(fc->zo_eps))
        return loom_error(LOOM_EINVAL, "--zo-eps %g must be finite and > 0", (double)fc->zo_eps);
    if (!(fc->zo_lr >= 0) || !isfinite(fc->zo_lr))
        return loom_error(LOOM_EINVAL, "--zo-lr %g must be finite and >= 0", (double)fc->zo_lr);
    if (fc->scaffold || fc->prox_mu > 0 || fc->gradient_only)
        return loom_error(LOOM_EINVAL, "zeroth-order clients do not take scaffold, fedprox or fedsgd");
    return LOOM_OK;
}

static uint64_t round_seed_of(const loom_fit_task *task, const loom_client_state *st) {
    return task->fc.sgd_noise_seed ? task->fc.sgd_noise_seed : loom_hash2(st->steps, (uint64_t)task->round);
}

static int mezo_fit(const loom_client_ctx *ctx, const loom_fit_task *task, loom_client_state *st, loom_fit_output *out) {
    const loom_fit_config *fc = &task->fc;
    memset(&out->res, 0, sizeof out->res);
    int rc = check_zo(fc);
    if (rc != LOOM_OK) return rc;
    loom_trainer *tr = ctx->tr;
    size_t dim = ctx->dim;
    if (dim != loom_trainer_dim(tr))
        return loom_error(LOOM_EINVAL, "MeZO: the update has %zu values, the trainer %zu", dim, loom_trainer_dim(tr));
    if (!out->update || !task->global || !task->data)
        return loom_error(LOOM_EINVAL, "client fit needs a global vector, data and an update buffer");
    zo_bufs b;
    if ((rc = bufs_init(&b, tr, fc->zo_restore)) != LOOM_OK) {
        bufs_free(&b);
        return rc;
    }
    float *vec = ctx->vec;
    memcpy(vec, task->global, dim * sizeof(float));
    uint64_t rs = round_seed_of(task, st);
    double loss_sum = 0;
    for (int s = 0; s < fc->local_steps && rc == LOOM_OK; s++) {
        if ((rc = loom_batcher_fill(task->data, st->steps + (uint64_t)s, b.tok, b.tgt, NULL)) != LOOM_OK) break;
        uint64_t seed = loom_zo_step_seed(rs, (uint64_t)s);
        double g;
        float l;
        if ((rc = loom_zo_estimate(tr, vec, b.tok, b.tgt, seed, fc->zo_eps, fc->zo_restore, b.scratch, &g, &l)) != LOOM_OK)
            break;
        loom_zo_axpy(vec, dim, seed, (float)(-(double)fc->zo_lr * g));
        long n = count_targets(b.tgt, b.BT);
        loss_sum += (double)l * n;
        out->res.tokens += n;
        out->res.steps++;
    }
    bufs_free(&b);
    if (rc != LOOM_OK) return rc;
    loom_update_delta(out->update, vec, task->global, dim);
    out->res.loss = out->res.tokens ? loss_sum / (double)out->res.tokens : 0.0;
    st->steps += (uint64_t)fc->local_steps;
    return LOOM_OK;
}

const loom_client_algo loom_client_mezo = {"mezo", mezo_fit, loom_client_eval};

/* ---- FedKSeed ---- */

struct loom_kseed {
    int K, probs;
    size_t dim;
    uint64_t *seeds;
    float *w;        /* (dim) the global model of S */
    float *S;        /* (K) the last K-vector synced */
    double *amp;     /* (K) summed |differences| of each seed's scalar */
    long *cnt;       /* (K) versions in which it changed */
    double *p, *cdf; /* (K) sampling probabilities and their running sums */
    pthread_mutex_t mu;
};

static void kseed_probs(loom_kseed *ks) {
    int K = ks->K;
    if (ks->probs == LOOM_KSEED_IMPORTANCE) {
        double mx = 0;
        for (int k = 0; k < K; k++) {
            double psi = ks->cnt[k] ? ks->amp[k] / (double)ks->cnt[k] : 0.0;
            ks->p[k] = psi;
            if (psi > mx) mx = psi;
        }
        double sum = 0;
        for (int k = 0; k < K; k++) sum += ks->p[k] = exp(mx > 0 ? ks->p[k] / mx : 0.0);
        for (int k = 0; k < K; k++) ks->p[k] /= sum;
    } else {
        for (int k = 0; k < K; k++) ks->p[k] = 1.0 / K;
    }
    double c = 0;
    for (int k = 0; k < K; k++) ks->cdf[k] = c += ks->p[k];
}

int loom_kseed_create(loom_kseed **out, uint64_t run_seed, int K, int probs, const float *init, size_t dim) {
    *out = NULL;
    if (K < 1 || K > LOOM_KSEED_MAX) return loom_error(LOOM_EINVAL, "--seed-pool %d must be in [1, %d]", K, LOOM_KSEED_MAX);
    if (probs != LOOM_KSEED_UNIFORM && probs != LOOM_KSEED_IMPORTANCE)
        return loom_error(LOOM_EINVAL, "unknown seed probabilities %d", probs);
    if (!init || dim == 0) return loom_error(LOOM_EINVAL, "FedKSeed needs an initial model");
    loom_kseed *ks = calloc(1, sizeof *ks);
    if (!ks) return loom_error(LOOM_ENOMEM, "out of memory");
    ks->K = K;
    ks->probs = probs;
    ks->dim = dim;
    ks->seeds = malloc((size_t)K * sizeof *ks->seeds);
    ks->w = loom_alloc(dim * sizeof(float));
    ks->S = calloc((size_t)K, sizeof *ks->S);
    ks->amp = calloc((size_t)K, sizeof *ks->amp);
    ks->cnt = calloc((size_t)K, sizeof *ks->cnt);
    ks->p = malloc((size_t)K * sizeof *ks->p);
    ks->cdf = malloc((size_t)K * sizeof *ks->cdf);
    pthread_mutex_init(&ks->mu, NULL);
    if (!ks->seeds || !ks->w || !ks->S || !ks->amp || !ks->cnt || !ks->p || !ks->cdf) {
        loom_kseed_free(ks);
        return loom_error(LOOM_ENOMEM, "out of memory for a pool of %d seeds over %zu values", K, dim);
    }
    uint64_t base = loom_hash2(run_seed, LOOM_STREAM_KSEED_POOL);
    for (int k = 0; k < K; k++) ks->seeds[k] = loom_hash2(base, (uint64_t)k);
    memcpy(ks->w, init, dim * sizeof(float));
    kseed_probs(ks);
    *out = ks;
    return LOOM_OK;
}

void loom_kseed_free(loom_kseed *ks) {
    if (!ks) return;
    pthread_mutex_destroy(&ks->mu);
    free(ks->seeds);
    loom_free(ks->w);
    free(ks->S);
    free(ks->amp);
    free(ks->cnt);
    free(ks->p);
    free(ks->cdf);
    free(ks);
}

int loom_kseed_k(const loom_kseed *ks) { return ks->K; }
size_t loom_kseed_dim(const loom_kseed *ks) { return ks->dim; }
uint64_t loom_kseed_seed(const loom_kseed *ks, int k) { return k >= 0 && k < ks->K ? ks->seeds[k] : 0; }
const float *loom_kseed_model(const loom_kseed *ks) { return ks->w; }
const double *loom_kseed_probs(const loom_kseed *ks) { return ks->p; }

static int sync_locked(loom_kseed *ks, const float *S) {
    for (int k = 0; k < ks->K; k++)
        if (!isfinite(S[k])) return loom_error(LOOM_ERANGE, "FedKSeed: the global scalar of seed %d is not finite", k);
    int changed = 0;
    for (int k = 0; k < ks->K; k++) {
        if (S[k] == ks->S[k]) continue;
        float d = S[k] - ks->S[k];
        loom_zo_axpy(ks->w, ks->dim, ks->seeds[k], d);
        ks->amp[k] += fabs((double)d);
        ks->cnt[k]++;
        ks->S[k] = S[k];
        changed = 1;
    }
    if (changed) kseed_probs(ks);
    return LOOM_OK;
}

int loom_kseed_sync(loom_kseed *ks, const float *S) {
    pthread_mutex_lock(&ks->mu);
    int rc = sync_locked(ks, S);
    pthread_mutex_unlock(&ks->mu);
    return rc;
}

int loom_kseed_pick(const loom_kseed *ks, uint64_t round_seed, uint64_t step) {
    loom_rng r;
    loom_rng_init(&r, loom_hash2(round_seed, step), LOOM_STREAM_KSEED_PICK);
    if (ks->probs == LOOM_KSEED_UNIFORM) return (int)loom_rng_below(&r, (uint32_t)ks->K);
    double u = loom_rng_uniform(&r) * ks->cdf[ks->K - 1];
    int lo = 0, hi = ks->K - 1; /* the first k with cdf[k] > u */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (ks->cdf[mid] > u) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

int loom_kseed_fit(const loom_kseed *ks, loom_trainer *tr, float *vec, loom_batcher *data, uint64_t step0, int steps,
                   uint64_t round_seed, float eps, float lr, int restore, float *kvec, uint32_t *idx, float *scal,
                   double *loss, long *tokens) {
    size_t dim = loom_trainer_dim(tr);
    if (dim != ks->dim)
        return loom_error(LOOM_EINVAL, "FedKSeed: the trainer has %zu values, the seed pool's model %zu", dim, ks->dim);
    zo_bufs b;
    int rc = bufs_init(&b, tr, restore);
    if (rc != LOOM_OK) {
        bufs_free(&b);
        return rc;
    }
    memset(kvec, 0, (size_t)ks->K * sizeof(float));
    double loss_sum = 0;
    long ntok = 0;
    for (int s = 0; s < steps && rc == LOOM_OK; s++) {
        if ((rc = loom_batcher_fill(data, step0 + (uint64_t)s, b.tok, b.tgt, NULL)) != LOOM_OK) break;
        int k = loom_kseed_pick(ks, round_seed, (uint64_t)s);
        double g;
        float l;
        if ((rc = loom_zo_estimate(tr, vec, b.tok, b.tgt, ks->seeds[k], eps, restore, b.scratch, &g, &l)) != LOOM_OK)
            break;
        float c = (float)(-(double)lr * g);
        loom_zo_axpy(vec, dim, ks->seeds[k], c);
        kvec[k] += c;
        if (idx) idx[s] = (uint32_t)k;
        if (scal) scal[s] = c;
        long n = count_targets(b.tgt, b.BT);
        loss_sum += (double)l * n;
        ntok += n;
    }
    bufs_free(&b);
    if (loss) *loss = ntok ? loss_sum / (double)ntok : 0.0;
    if (tokens) *tokens = ntok;
    return rc;
}

int loom_kseed_replay(const loom_kseed *ks, float *w, const uint32_t *idx, const float *scal, size_t n) {
    for (size_t j = 0; j < n; j++)
        if (idx[j] >= (uint32_t)ks->K || !isfinite(scal[j]))
            return loom_error(LOOM_EINVAL, "FedKSeed replay: pair %zu (seed %u of %d, scalar %g) is out of range", j,
                              idx[j], ks->K, (double)scal[j]);
    for (size_t j = 0; j < n; j++) loom_zo_axpy(w, ks->dim, ks->seeds[idx[j]], scal[j]);
    return LOOM_OK;
}

/* the global model of task->global (the K-vector) into the worker's vector */
static int kseed_start(const loom_client_ctx *ctx, const float *S, loom_kseed *ks) {
    if (!ks) return loom_error(LOOM_EINVAL, "FedKSeed needs its seed pool (the worker context's kseed)");
    if (ctx->dim != (size_t)ks->K)
        return loom_error(LOOM_EINVAL, "FedKSeed: the global vector has %zu values, the pool %d seeds", ctx->dim, ks->K);
    if (loom_trainer_dim(ctx->tr) != ks->dim)
        return loom_error(LOOM_EINVAL, "FedKSeed: the trainer has %zu values, the pool's model %zu",
                          loom_trainer_dim(ctx->tr), ks->dim);
    pthread_mutex_lock(&ks->mu);
    int rc = sync_locked(ks, S);
    if (rc == LOOM_OK) memcpy(ctx->vec, ks->w, ks->dim * sizeof(float));
    pthread_mutex_unlock(&ks->mu);
    return rc;
}

static int kseed_fit(const loom_client_ctx *ctx, const loom_fit_task *task, loom_client_state *st, loom_fit_output *out) {
    const loom_fit_config *fc = &task->fc;
    memset(&out->res, 0, sizeof out->res);
    int rc = check_zo(fc);
    if (rc != LOOM_OK) return rc;
    if (!out->update || !task->global || !task->data)
        return loom_error(LOOM_EINVAL, "client fit needs a global vector, data and an update buffer");
    if ((rc = kseed_start(ctx, task->global, ctx->kseed)) != LOOM_OK) return rc;
    rc = loom_kseed_fit(ctx->kseed, ctx->tr, ctx->vec, task->data, st->steps, fc->local_steps, round_seed_of(task, st),
                        fc->zo_eps, fc->zo_lr, fc->zo_restore, out->update, NULL, NULL, &out->res.loss, &out->res.tokens);
    if (rc != LOOM_OK) return rc;
    out->res.steps = fc->local_steps;
    st->steps += (uint64_t)fc->local_steps;
    return LOOM_OK;
}

static int kseed_eval(const loom_client_ctx *ctx, const loom_eval_task *task, loom_eval_result *res) {
    memset(res, 0, sizeof *res);
    int rc = kseed_start(ctx, task->global, ctx->kseed);
    if (rc != LOOM_OK) return rc;
    /* the dense model is in the worker's vector: evaluate it there */
    loom_client_ctx dense = {ctx->tr, ctx->vec, loom_trainer_dim(ctx->tr), NULL};
    loom_eval_task et = *task;
    et.global = ctx->vec;
    return loom_client_eval(&dense, &et, res);
}

const loom_client_algo loom_client_fedkseed = {"fedkseed", kseed_fit, kseed_eval};
