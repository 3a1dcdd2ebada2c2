/* FedDF: the server's ensemble distillation after aggregation (include/loom/distill.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/distill.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/train.h"

struct loom_feddf {
    loom_feddf_config c;
    int V, P;            /* vocabulary; soft-prompt rows of prompt tuning */
    size_t dim;
    loom_ws *ws;         /* inference workspace for the clients' models */
    float *scratch;      /* [dim] a client's model prev + u_i */
    float *soft;         /* [B * T * V] one client's softened outputs */
    /* the round being distilled (set by loom_feddf_post for the trainer's callback) */
    const float *prev;
    const float *const *updates;
    size_t n;
    double kl_first, kl_last;
};

void loom_feddf_defaults(loom_feddf_config *c) {
    memset(c, 0, sizeof *c);
    c->temp = 1.0f;
    c->lr = 1e-3f;
    c->B = 8;
    c->T = 64;
}

void loom_feddf_free(loom_feddf *f) {
    if (!f) return;
    loom_ws_free(f->ws);
    loom_free(f->scratch);
    loom_free(f->soft);
    free(f);
}

int loom_feddf_create(loom_feddf **out, const loom_feddf_config *c) {
    *out = NULL;
    if (!c->m) return loom_error(LOOM_EINVAL, "server distillation: no model");
    if (c->steps < 0) return loom_error(LOOM_EINVAL, "--distill-steps %d must be >= 0", c->steps);
    if (!(c->temp > 0) || !isfinite(c->temp)) return loom_error(LOOM_EINVAL, "--distill-temp %g must be > 0", (double)c->temp);
    if (!(c->lr >= 0) || !isfinite(c->lr)) return loom_error(LOOM_EINVAL, "--distill-lr %g must be >= 0", (double)c->lr);
    if (c->B < 1 || c->T < 2) return loom_error(LOOM_EINVAL, "server distillation: batch %d x %d", c->B, c->T);
    if (!c->tokens || c->n_tokens < (size_t)c->T + 2)
        return loom_error(LOOM_EINVAL, "the public text has %zu tokens, fewer than one window of %d", c->n_tokens, c->T + 1);
    loom_feddf *f = calloc(1, sizeof *f);
    if (!f) return loom_error(LOOM_ENOMEM, "out of memory");
    f->c = *c;
    f->V = loom_model_config(c->m)->vocab;
    const loom_peft_config *pc = c->ts ? loom_tset_config(c->ts) : NULL;
    f->P = pc && pc->method == LOOM_PEFT_PROMPT ? pc->prompt_len : 0;
    f->dim = c->ts ? loom_tset_dim(c->ts) : loom_model_n_params(c->m);
    f->kl_first = f->kl_last = NAN;
    size_t nq = (size_t)c->B * (size_t)c->T * (size_t)f->V;
    int rc = loom_ws_create_infer(&f->ws, c->m, c->B, c->T, c->ts ? loom_tset_plan(c->ts) : NULL);
    if (rc == LOOM_OK) {
        f->scratch = loom_alloc(f->dim * sizeof(float));
        f->soft = loom_alloc(nq * sizeof(float));
        if (!f->scratch || !f->soft) rc = loom_error(LOOM_ENOMEM, "out of memory for server distillation");
    }
    if (rc != LOOM_OK) {
        loom_feddf_free(f);
        return rc;
    }
    *out = f;
    return LOOM_OK;
}

void loom_feddf_batch(const loom_feddf *f, int round, int step, int32_t *tokens, int32_t *targets) {
    loom_rng r;
    loom_rng_init(&r, f->c.seed, loom_hash2(loom_hash2(LOOM_STREAM_DISTILL, (uint64_t)round), (uint64_t)step));
    const int T = f->c.T;
    const uint64_t span = (uint64_t)(f->c.n_tokens - (size_t)T); /* window starts 0 .. n - T - 1 */
    for (int b = 0; b < f->c.B; b++) {
        size_t s = (size_t)(loom_rng_u64(&r) % span);
        for (int j = 0; j < T; j++) {
            tokens[(size_t)b * T + j] = f->c.tokens[s + (size_t)j];
            targets[(size_t)b * T + j] = f->c.tokens[s + (size_t)j + 1];
        }
    }
}

int loom_feddf_targets(loom_feddf *f, const float *prev, const float *const *updates, size_t n, const int32_t *tokens,
                       float *q) {
    const int B = f->c.B, T = f->c.T, V = f->V, P = f->P;
    const size_t dim = f->dim, rows = (size_t)B * T, nq = rows * (size_t)V;
    const float *base = f->c.base ? f->c.base : loom_model_params_const(f->c.m);
    if (n == 0) return loom_error(LOOM_EINVAL, "server distillation: no client models");
    memset(q, 0, nq * sizeof(float));
    const float inv = 1.0f / (float)n;
    for (size_t i = 0; i < n; i++) {
        float *x = f->scratch;
        const float *u = updates[i];
#pragma omp parallel for schedule(static) if (dim >= 65536)
        for (size_t k = 0; k < dim; k++) x[k] = prev[k] + u[k];
        int rc = f->c.ts ? loom_forward_ex(f->c.m, base, f->ws, loom_tset_plan(f->c.ts), x, tokens, NULL, B, T, NULL)
                         : loom_forward(f->c.m, x, f->ws, tokens, NULL, B, T, NULL);
        if (rc != LOOM_OK) return rc;
        const float *lg = loom_ws_logits(f->ws);
        for (int b = 0; b < B; b++) /* the real tokens' rows, behind a soft prompt's */
            loom_kd_soften(f->soft + (size_t)b * T * V, lg + ((size_t)b * (P + T) + P) * V, T, V, f->c.temp);
        const float *sp = f->soft;
#pragma omp parallel for schedule(static)
        for (size_t k = 0; k < nq; k++) q[k] += sp[k] * inv;
    }
    return LOOM_OK;
}

static int ensemble_targets(void *ud, const int32_t *tokens, int B, int T, float temp, float *q) {
    loom_feddf *f = ud;
    (void)B, (void)T, (void)temp;
    return loom_feddf_targets(f, f->prev, f->updates, f->n, tokens, q);
}

void loom_feddf_last_kl(const loom_feddf *f, double *first, double *last) {
    if (first) *first = f->kl_first;
    if (last) *last = f->kl_last;
}

int loom_feddf_post(void *ud, int round, float *global, const float *prev, const float *const *updates,
                    const double *weights, size_t n) {
    loom_feddf *f = ud;
    (void)weights;
    if (f->c.steps == 0 || n == 0) return LOOM_OK;
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.kind = LOOM_OPT_ADAMW;
    tc.opt.lr = f->c.lr;
    tc.opt.weight_decay = 0;
    tc.clip = 1.0f;
    tc.B = f->c.B;
    tc.T = f->c.T;
    tc.seed = loom_hash2(f->c.seed, (uint64_t)round);
    loom_trainer *tr = NULL;
    int rc = f->c.ts ? loom_trainer_create_peft(&tr, f->c.m, f->c.base ? f->c.base : loom_model_params_const(f->c.m), f->c.ts,
                                                global, &tc)
                     : loom_trainer_create(&tr, f->c.m, global, &tc);
    if (rc != LOOM_OK) return rc;
    f->prev = prev;
    f->updates = updates;
    f->n = n;
    rc = loom_trainer_set_soft_targets(tr, ensemble_targets, f, f->c.temp, 1.0f);
    size_t bt = (size_t)f->c.B * (size_t)f->c.T;
    int32_t *tok = malloc(bt * sizeof *tok), *tgt = malloc(bt * sizeof *tgt);
    if (rc == LOOM_OK && (!tok || !tgt)) rc = loom_error(LOOM_ENOMEM, "out of memory");
    for (int s = 0; rc == LOOM_OK && s < f->c.steps; s++) {
        loom_feddf_batch(f, round, s, tok, tgt);
        rc = loom_trainer_step(tr, tok, tgt, NULL, NULL);
        if (rc == LOOM_OK) {
            if (s == 0) f->kl_first = loom_trainer_kd_kl(tr);
            f->kl_last = loom_trainer_kd_kl(tr);
        }
    }
    if (rc != LOOM_OK) rc = loom_error_context(rc, "server distillation, round %d", round);
    free(tok);
    free(tgt);
    loom_trainer_free(tr);
    f->prev = NULL;
    f->updates = NULL;
    return rc;
}
