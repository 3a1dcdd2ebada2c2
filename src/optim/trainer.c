#include "loom/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/peft.h"

/* One path for every trainable set: full fine-tuning is the FULL set, whose vector has the model's own
 * layout, so loom_trainer_create trains the caller's parameter vector in place through that set's plan. */
struct loom_trainer {
    const loom_model *m;
    float *params, *grads;      /* the trained vector and its gradient ([dim]) */
    int grads_zero;             /* grads holds zeros (apply-gradient cleared it while reading it) */
    size_t dim;
    const float *base;          /* the frozen base (for the FULL set: params itself) */
    const loom_tset *ts;        /* the set trained */
    loom_tset *own_ts;          /* loom_trainer_create: the FULL layout, owned */
    loom_train_config cfg;
    loom_optimizer *opt;
    loom_ws *ws;
    loom_grad_hook hook;
    void *hook_ud;
    /* DP-SGD (cfg.dp_sgd) */
    float *dp_rows;             /* [B][dim] per-example gradients (NULL: the row loop) */
    float *dp_buf;              /* [dim] a row's gradient (row loop), then the noise */
    float *dp_norms, *dp_w;     /* [B] per-example norms, row weights */
    long *dp_nv;                /* [B] valid targets per row */
    uint64_t dp_seed;           /* the noise stream's seed (cfg.seed unless set) */
    /* split learning (cfg.split): the server part's workspace, the two messages of a step, the server
     * part's gradient (kept apart for its own clipping), or the remote server part */
    loom_ws *ws_srv;
    float *wire;                /* [2][B * T' * C] the cut's activations, then their gradient */
    float *grads_srv;           /* [dim] */
    loom_split_remote remote;
    void *remote_ud;
    /* distillation (cfg.kd_teacher or loom_trainer_set_soft_targets) */
    loom_soft_target_fn kd_fn;
    void *kd_ud;
    float kd_temp, kd_alpha;
    float *kd_q;                /* [B * (P + T) * V] target distributions, then the soft term's gradient */
    int32_t *kd_tgt;            /* [B * (P + T)] targets of the logits' rows (-1 on soft-prompt rows) */
    loom_ws *kd_ws;             /* the teacher's inference workspace */
    double kd_kl;               /* the last step's mean KL */
};

void loom_train_defaults(loom_train_config *c) {
    memset(c, 0, sizeof *c);
    loom_opt_defaults(&c->opt, LOOM_OPT_ADAMW);
    c->opt.lr = 3e-4f;
    c->opt.weight_decay = 0.1f;
    c->opt.beta2 = 0.95f;
    c->min_lr = 0.0f;
    c->warmup = 0;
    c->total_steps = 0;
    c->clip = 1.0f;
    c->B = 4;
    c->T = 64;
    c->decay_2d_only = 1;
    c->kd_temp = 2.0f;
    c->kd_alpha = 0.5f;
}

static int check_config(const loom_train_config *c) {
    if (!(c->clip >= 0)) return loom_error(LOOM_EINVAL, "gradient clip %g must be >= 0", c->clip);
    if (c->warmup < 0 || c->total_steps < 0) return loom_error(LOOM_EINVAL, "warm-up and step counts must be >= 0");
    if (c->split && (c->dp_sgd || c->forward_only))
        return loom_error(LOOM_EINVAL, "split learning computes whole-batch gradients: it does not combine with %s",
                          c->dp_sgd ? "DP-SGD" : "a forward-only trainer");
    if (c->dp_sgd) {
        if (!(c->dp_clip > 0) || !isfinite(c->dp_clip))
            return loom_error(LOOM_EINVAL, "DP-SGD clip norm %g must be finite and > 0", (double)c->dp_clip);
        if (!(c->dp_noise >= 0) || !isfinite(c->dp_noise))
            return loom_error(LOOM_EINVAL, "DP-SGD noise multiplier %g must be finite and >= 0", (double)c->dp_noise);
    }
    if (c->kd_teacher && c->split)
        return loom_error(LOOM_EINVAL, "distillation needs the whole model's logits on one side: it does not combine with split learning");
    if (c->kd_teacher) {
        if (!(c->kd_temp > 0) || !isfinite(c->kd_temp))
            return loom_error(LOOM_EINVAL, "distillation temperature %g must be finite and > 0", (double)c->kd_temp);
        if (!(c->kd_alpha >= 0 && c->kd_alpha <= 1))
            return loom_error(LOOM_EINVAL, "distillation weight alpha %g must be in [0, 1]", (double)c->kd_alpha);
        if (c->dp_sgd || c->forward_only)
            return loom_error(LOOM_EINVAL, "distillation does not combine with %s", c->dp_sgd ? "DP-SGD" : "a forward-only trainer");
    }
    return LOOM_OK;
}

/* The teacher of cfg.kd_teacher as a source of target distributions: its logits, softened. */
static int teacher_targets(void *ud, const int32_t *tokens, int B, int T, float temp, float *q) {
    loom_trainer *t = ud;
    const loom_model *tm = t->cfg.kd_teacher;
    const float *tp = t->cfg.kd_teacher_params ? t->cfg.kd_teacher_params : loom_model_params_const(tm);
    int rc = loom_forward(tm, tp, t->kd_ws, tokens, NULL, B, T, NULL);
    if (rc != LOOM_OK) return rc;
    loom_kd_soften(q, loom_ws_logits(t->kd_ws), B * T, loom_model_config(tm)->vocab, temp);
    return LOOM_OK;
}

static int kd_alloc(loom_trainer *t) {
    if (t->kd_q) return LOOM_OK;
    const loom_peft_config *pc = loom_tset_config(t->ts);
    size_t P = pc->method == LOOM_PEFT_PROMPT ? (size_t)pc->prompt_len : 0, rows = (size_t)t->cfg.B * ((size_t)t->cfg.T + P);
    size_t V = (size_t)loom_model_config(t->m)->vocab;
    t->kd_q = loom_alloc(rows * V * sizeof(float));
    t->kd_tgt = malloc(rows * sizeof(int32_t));
    if (!t->kd_q || !t->kd_tgt)
        return loom_error(LOOM_ENOMEM, "out of memory for distillation's target distributions (%zu x %zu floats)", rows, V);
    return LOOM_OK;
}

static int kd_init(loom_trainer *t) {
    const loom_train_config *c = &t->cfg;
    const loom_config *sc = loom_model_config(t->m), *tc = loom_model_config(c->kd_teacher);
    if (tc->vocab != sc->vocab)
        return loom_error(LOOM_EINVAL, "the teacher's vocabulary has %d tokens, the student's %d: distillation needs the same vocabulary",
                          tc->vocab, sc->vocab);
    if (c->T > tc->max_seq)
        return loom_error(LOOM_EINVAL, "the teacher has %d positions, fewer than the sequence length %d", tc->max_seq, c->T);
    int rc = loom_ws_create_infer(&t->kd_ws, c->kd_teacher, c->B, c->T, NULL);
    if (rc == LOOM_OK) rc = kd_alloc(t);
    if (rc != LOOM_OK) return rc;
    t->kd_fn = teacher_targets;
    t->kd_ud = t;
    t->kd_temp = c->kd_temp;
    t->kd_alpha = c->kd_alpha;
    return LOOM_OK;
}

/* Optimizer (weight decay on the set's matrices only, with decay_2d_only) and workspace for t->ts. */
static int trainer_init(loom_trainer *t) {
    const loom_train_config *c = &t->cfg;
    const loom_tset *ts = t->ts;
    int rc = LOOM_OK, n = loom_tset_count(ts);
    if (c->forward_only) { /* zeroth-order clients: the inference workspace, no gradient, no optimizer state */
        if (c->dp_sgd) return loom_error(LOOM_EINVAL, "a forward-only trainer cannot run DP-SGD");
        loom_opt_config oc = c->opt; /* plain SGD holds no state: the step counter and schedule only */
        oc.kind = LOOM_OPT_SGD;
        oc.momentum = 0;
        rc = loom_optimizer_create(&t->opt, &oc, t->dim);
        if (rc == LOOM_OK) rc = loom_ws_create_infer(&t->ws, t->m, c->B, c->T, loom_tset_plan(ts));
        return rc;
    }
    t->grads = loom_calloc(t->dim ? t->dim : 1, sizeof(float));
    t->grads_zero = 1;
    if (!t->grads) rc = LOOM_ENOMEM;
    if (rc == LOOM_OK) rc = loom_optimizer_create(&t->opt, &c->opt, t->dim);
    if (rc == LOOM_OK && c->decay_2d_only && c->opt.weight_decay > 0) {
        size_t *b = malloc((size_t)n * sizeof *b + 1), *e = malloc((size_t)n * sizeof *e + 1);
        int k = 0;
        if (!b || !e) rc = loom_error(LOOM_ENOMEM, "out of memory");
        for (int i = 0; rc == LOOM_OK && i < n; i++) {
            const loom_tset_entry *en = loom_tset_entry_at(ts, i);
            if (!en->matrix) continue;
            b[k] = en->offset;
            e[k] = en->offset + en->numel;
            k++;
        }
        if (rc == LOOM_OK) rc = loom_optimizer_decay_ranges(t->opt, b, e, k);
        free(b);
        free(e);
    }
    if (rc == LOOM_OK) rc = loom_ws_create_ex(&t->ws, t->m, c->B, c->T, loom_tset_plan(ts));
    if (rc == LOOM_OK && c->split) { /* the server part's workspace is made when first needed */
        int L = loom_model_config(t->m)->n_layer;
        if (c->split_layer < 0 || c->split_layer > L)
            rc = loom_error(LOOM_EINVAL, "split layer %d is outside 0..%d (the model's layers)", c->split_layer, L);
        if (rc == LOOM_OK && !(t->wire = loom_alloc(2 * loom_ws_activation_cap(t->ws) * sizeof(float))))
            rc = loom_error(LOOM_ENOMEM, "out of memory for the split layer's activations");
    }
    if (rc == LOOM_OK && c->precision != LOOM_PREC_F32) {
        rc = loom_ws_set_precision(t->ws, c->precision);
        if (rc == LOOM_EUNSUPPORTED) rc = LOOM_OK; /* no bf16 on this CPU: the workspace runs f32 */
    }
    if (rc == LOOM_OK && c->dp_sgd) {
        size_t B = (size_t)c->B, d = t->dim ? t->dim : 1;
        t->dp_buf = loom_alloc(d * sizeof(float));
        t->dp_norms = calloc(B, sizeof(float));
        t->dp_w = calloc(B, sizeof(float));
        t->dp_nv = calloc(B, sizeof(long));
        /* per-row gradients in one batched backward when B x dim floats fit, else the row loop */
        int batched = !c->dp_row_loop && d <= LOOM_DP_ROWS_MAX_BYTES / sizeof(float) / B;
        if (batched) t->dp_rows = loom_alloc(B * d * sizeof(float));
        if (!t->dp_buf || !t->dp_norms || !t->dp_w || !t->dp_nv || (batched && !t->dp_rows))
            rc = loom_error(LOOM_ENOMEM, "out of memory for DP-SGD's per-example gradients (%d x %zu floats)", c->B, d);
    }
    if (rc == LOOM_OK && c->kd_teacher) rc = kd_init(t);
    return rc;
}

int loom_trainer_create(loom_trainer **out, const loom_model *m, float *params, const loom_train_config *c) {
    *out = NULL;
    if (!params) return loom_error(LOOM_EINVAL, "a parameter vector is required");
    int rc = check_config(c);
    if (rc != LOOM_OK) return rc;
    if (loom_model_is_quantized(m)) return loom_error(LOOM_EUNSUPPORTED, "full fine-tuning needs a float base: use a trainable set");
    loom_trainer *t = calloc(1, sizeof *t);
    if (!t) return loom_error(LOOM_ENOMEM, "out of memory");
    t->m = m;
    t->params = params;
    t->base = params;
    t->cfg = *c;
    t->dp_seed = c->seed;
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_FULL);
    rc = loom_tset_create_layout(&t->own_ts, m, &pc);
    if (rc == LOOM_OK) {
        t->ts = t->own_ts;
        t->dim = loom_tset_dim(t->ts);
        /* the FULL vector must be laid out as the model's parameters, since params trains in place */
        int same = t->dim == loom_model_n_params(m);
        for (int i = 0; same && i < loom_tset_count(t->ts); i++) {
            const loom_tset_entry *e = loom_tset_entry_at(t->ts, i);
            same = e->tensor >= 0 && e->offset == loom_model_tensor(m, e->tensor)->offset;
        }
        if (!same) rc = loom_error(LOOM_ESTATE, "the full trainable set is not laid out as the model's parameters");
    }
    if (rc == LOOM_OK) rc = trainer_init(t);
    if (rc != LOOM_OK) {
        loom_trainer_free(t);
        return rc;
    }
    *out = t;
    return LOOM_OK;
}

int loom_trainer_create_peft(loom_trainer **out, const loom_model *m, const float *base_params, const loom_tset *ts,
                             float *vec, const loom_train_config *c) {
    *out = NULL;
    if (!ts || !vec) return loom_error(LOOM_EINVAL, "a trainable set and its vector are required");
    if (loom_tset_model(ts) != m) return loom_error(LOOM_EINVAL, "the trainable set was built for another model");
    int rc = check_config(c);
    if (rc != LOOM_OK) return rc;
    loom_trainer *t = calloc(1, sizeof *t);
    if (!t) return loom_error(LOOM_ENOMEM, "out of memory");
    t->m = m;
    t->params = vec;
    t->base = base_params;
    t->ts = ts;
    t->dim = loom_tset_dim(ts);
    t->cfg = *c;
    t->dp_seed = c->seed;
    if ((rc = trainer_init(t)) != LOOM_OK) {
        loom_trainer_free(t);
        return rc;
    }
    *out = t;
    return LOOM_OK;
}

void loom_trainer_free(loom_trainer *t) {
    if (!t) return;
    loom_free(t->grads);
    loom_optimizer_free(t->opt);
    loom_ws_free(t->ws);
    loom_ws_free(t->ws_srv);
    loom_free(t->wire);
    loom_free(t->grads_srv);
    loom_tset_free(t->own_ts);
    loom_free(t->dp_rows);
    loom_free(t->dp_buf);
    free(t->dp_norms);
    free(t->dp_w);
    free(t->dp_nv);
    loom_free(t->kd_q);
    free(t->kd_tgt);
    loom_ws_free(t->kd_ws);
    free(t);
}

float loom_trainer_lr(const loom_trainer *t) {
    long s = loom_optimizer_steps(t->opt);
    if (t->cfg.total_steps <= 0 && t->cfg.warmup <= 0) return t->cfg.opt.lr;
    return loom_lr_cosine(t->cfg.opt.lr, t->cfg.min_lr, s, t->cfg.warmup, t->cfg.total_steps > 0 ? t->cfg.total_steps : s + 1);
}

static const char *nonfinite_name(double x) { return isnan(x) ? "NaN" : x > 0 ? "+Inf" : "-Inf"; }

static long count_targets(const int32_t *targets, size_t n) {
    long c = 0;
    for (size_t i = 0; i < n; i++) c += targets[i] >= 0;
    return c;
}

static double sq_norm(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

/* DP-SGD's gradient of one batch (see loom_train_config): per-example gradients of each row's own mean
 * loss, each clipped to dp_clip, summed, noised with N(0, (dp_noise dp_clip)^2) per coordinate from the
 * stream (seed, hash2(LOOM_STREAM_DP_NOISE, step)), divided by B. *loss: the batch's plain mean loss. */
static int dp_gradient(loom_trainer *t, const int32_t *tokens, const int32_t *targets, long step, float *loss) {
    const loom_peft *pf = loom_tset_plan(t->ts);
    const int B = t->cfg.B, T = t->cfg.T, V = loom_model_config(t->m)->vocab;
    const size_t dim = t->dim;
    const double C = t->cfg.dp_clip;
    if (!targets) return loom_error(LOOM_EINVAL, "DP-SGD needs targets");
    long nv = 0;
    for (int b = 0; b < B; b++) {
        long c = 0;
        for (int j = 0; j < T; j++) c += targets[(size_t)b * T + j] >= 0 && targets[(size_t)b * T + j] < V;
        t->dp_nv[b] = c;
        nv += c;
    }
    double lsum = 0;
    int rc = LOOM_OK;
    if (t->dp_rows) {
        /* one batched pass: row weights nv / nv_b turn the batch-mean loss into the sum of the rows'
         * own means, and the per-row backward keeps each row's gradient apart */
        for (int b = 0; b < B; b++) t->dp_w[b] = t->dp_nv[b] ? (float)((double)nv / (double)t->dp_nv[b]) : 0.0f;
        rc = loom_ws_set_row_weights(t->ws, t->dp_w, B);
        float lw;
        if (rc == LOOM_OK) rc = loom_forward_ex(t->m, t->base, t->ws, pf, t->params, tokens, targets, B, T, &lw);
        if (rc == LOOM_OK) {
            const float *pl = loom_ws_losses(t->ws);
            size_t np = (size_t)B * (size_t)(T + loom_ws_prompt_len(t->ws));
            for (size_t n = 0; n < np; n++) lsum += pl[n]; /* 0 where no target */
            memset(t->dp_rows, 0, (size_t)B * dim * sizeof(float));
            rc = loom_backward_ex_rows(t->m, t->base, t->ws, pf, t->params, t->dp_rows);
        }
        loom_ws_set_row_weights(t->ws, NULL, B);
        if (rc != LOOM_OK) return rc;
        float *f = t->dp_w; /* now the clip factors */
        for (int b = 0; b < B; b++) {
            double nrm = sqrt(sq_norm(t->dp_rows + (size_t)b * dim, dim));
            t->dp_norms[b] = (float)nrm;
            f[b] = (float)(nrm > C ? C / nrm : 1.0);
        }
        float *g = t->grads; /* overwritten */
        const float *rows = t->dp_rows;
        t->grads_zero = 0;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < dim; i++) {
            double v = 0;
            for (int b = 0; b < B; b++) v += (double)f[b] * rows[(size_t)b * dim + i];
            g[i] = (float)v;
        }
    } else {
        /* the row loop: each row alone at batch 1, where the batch mean is the row's own mean */
        if (!t->grads_zero) memset(t->grads, 0, dim * sizeof(float));
        t->grads_zero = 0;
        for (int b = 0; b < B && rc == LOOM_OK; b++) {
            t->dp_norms[b] = 0.0f;
            if (!t->dp_nv[b]) continue;
            float lb;
            rc = loom_forward_ex(t->m, t->base, t->ws, pf, t->params, tokens + (size_t)b * T, targets + (size_t)b * T, 1,
                                 T, &lb);
            if (rc != LOOM_OK) break;
            memset(t->dp_buf, 0, dim * sizeof(float));
            if ((rc = loom_backward_ex(t->m, t->base, t->ws, pf, t->params, t->dp_buf)) != LOOM_OK) break;
            lsum += (double)lb * (double)t->dp_nv[b];
            double nrm = sqrt(sq_norm(t->dp_buf, dim)), f = nrm > C ? C / nrm : 1.0;
            t->dp_norms[b] = (float)nrm;
            for (size_t i = 0; i < dim; i++) t->grads[i] += (float)(f * t->dp_buf[i]);
        }
        if (rc != LOOM_OK) return rc;
    }
    /* noise on the clipped sum, then the mean over the B examples of the batch */
    const float sd = (float)(t->cfg.dp_noise * C), inv = 1.0f / (float)B;
    float *g = t->grads;
    if (sd > 0) {
        loom_rng_normal_fill(t->dp_seed, loom_hash2(LOOM_STREAM_DP_NOISE, (uint64_t)step), 0, dim, t->dp_buf);
        const float *z = t->dp_buf;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < dim; i++) g[i] = (g[i] + sd * z[i]) * inv;
    } else {
        for (size_t i = 0; i < dim; i++) g[i] *= inv;
    }
    *loss = nv ? (float)(lsum / (double)nv) : 0.0f;
    return LOOM_OK;
}

void loom_trainer_set_dp_seed(loom_trainer *t, uint64_t seed) { t->dp_seed = seed; }

const float *loom_trainer_dp_norms(const loom_trainer *t, int *row_loop) {
    if (row_loop) *row_loop = t->dp_rows == NULL;
    return t->cfg.dp_sgd ? t->dp_norms : NULL;
}

/* The server part's workspace and gradient (split learning), made on first use. */
static int split_server_init(loom_trainer *t) {
    if (t->ws_srv) return LOOM_OK;
    const int L = loom_model_config(t->m)->n_layer;
    int rc = loom_ws_create_part(&t->ws_srv, t->m, t->cfg.B, t->cfg.T, loom_tset_plan(t->ts), t->cfg.split_layer, L, 1);
    if (rc == LOOM_OK && t->cfg.precision != LOOM_PREC_F32) {
        rc = loom_ws_set_precision(t->ws_srv, t->cfg.precision);
        if (rc == LOOM_EUNSUPPORTED) rc = LOOM_OK;
    }
    if (rc == LOOM_OK && !(t->grads_srv = loom_calloc(t->dim ? t->dim : 1, sizeof(float))))
        rc = loom_error(LOOM_ENOMEM, "out of memory for the server part's gradient");
    if (rc != LOOM_OK) {
        loom_ws_free(t->ws_srv);
        t->ws_srv = NULL;
    }
    return rc;
}

/* The server part of a step from the cut's activations act: forward, loss, backward into gs, and the
 * activations' gradient into dact. */
static int split_server_part(loom_trainer *t, const float *act, const int32_t *targets, float *gs, float *dact,
                             float *l) {
    const loom_peft *pf = loom_tset_plan(t->ts);
    const int k = t->cfg.split_layer, L = loom_model_config(t->m)->n_layer;
    long step = loom_optimizer_steps(t->opt);
    loom_ws_set_dropout(t->ws_srv, 1, loom_hash2(t->cfg.seed, (uint64_t)step));
    loom_ws_set_fused_loss(t->ws_srv, 1);
    int rc = loom_forward_part(t->m, t->base, t->ws_srv, pf, t->params, k, L, NULL, act, targets, t->cfg.B, t->cfg.T, l);
    if (rc == LOOM_OK) rc = loom_backward_part(t->m, t->base, t->ws_srv, pf, t->params, gs, NULL, dact);
    loom_ws_set_dropout(t->ws_srv, 0, 0);
    loom_ws_set_fused_loss(t->ws_srv, 0);
    return rc;
}

/* Split learning: the client part (embeddings, layers 0 .. k - 1) on t->ws, its activations through the
 * wire to the server part (layers k .. L - 1, the head, the loss: on t->ws_srv, or remote), whose backward
 * sends the activations' gradient back through the wire for the client part's backward. The same
 * operations in the same order as the whole model's forward and backward; the server part's gradient
 * lands in grads_srv (apply-gradient clips each part by its own norm). */
static int split_gradient(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *l) {
    const loom_peft *pf = loom_tset_plan(t->ts);
    const int k = t->cfg.split_layer;
    int rc = loom_forward_part(t->m, t->base, t->ws, pf, t->params, 0, k, tokens, NULL, NULL, t->cfg.B, t->cfg.T, NULL);
    if (rc != LOOM_OK) return rc;
    size_t n;
    const float *act = loom_ws_activation(t->ws, &n);
    float *up = t->wire, *dact = t->wire + loom_ws_activation_cap(t->ws);
    memcpy(up, act, n * sizeof(float));
    size_t nt = (size_t)t->cfg.B * t->cfg.T;
    if (t->remote) {
        rc = t->remote(t->remote_ud, loom_optimizer_steps(t->opt), up, n, targets, nt, dact, l);
    } else {
        if ((rc = split_server_init(t)) != LOOM_OK) return rc;
        memset(t->grads_srv, 0, t->dim * sizeof(float));
        rc = split_server_part(t, up, targets, t->grads_srv, dact, l);
    }
    if (rc != LOOM_OK) return rc;
    if (!t->grads_zero) memset(t->grads, 0, t->dim * sizeof(float));
    t->grads_zero = 0;
    return loom_backward_part(t->m, t->base, t->ws, pf, t->params, t->grads, dact, NULL);
}

void loom_trainer_set_split_remote(loom_trainer *t, loom_split_remote fn, void *ud) {
    t->remote = fn;
    t->remote_ud = ud;
}

int loom_trainer_split_server_step(loom_trainer *t, const float *act, size_t n, const int32_t *targets, size_t nt,
                                   float *dact, float *loss) {
    if (!t->cfg.split) return loom_error(LOOM_ESTATE, "the trainer is not a split learning trainer");
    if (n != loom_ws_activation_cap(t->ws) || nt != (size_t)t->cfg.B * t->cfg.T)
        return loom_error(LOOM_EINVAL, "%zu activations and %zu targets for batches of %d x %d (expected %zu and %zu)", n,
                          nt, t->cfg.B, t->cfg.T, loom_ws_activation_cap(t->ws), (size_t)t->cfg.B * t->cfg.T);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(act[i])) return loom_error(LOOM_ERANGE, "activation %zu is not finite", i);
    int rc = split_server_init(t);
    if (rc != LOOM_OK) return rc;
    float l = 0;
    if (!t->grads_zero) memset(t->grads, 0, t->dim * sizeof(float));
    t->grads_zero = 0;
    long step = loom_optimizer_steps(t->opt);
    if ((rc = split_server_part(t, act, targets, t->grads, dact, &l)) != LOOM_OK) return rc;
    if (loss) *loss = l;
    if (!isfinite(l))
        return loom_error(LOOM_ERANGE, "loss became non-finite (%s) at step %ld: lower --lr (now %g) or check the data",
                          nonfinite_name(l), step + 1, (double)loom_trainer_lr(t));
    return loom_trainer_apply_gradient(t, NULL);
}
/* A distillation step's gradient: the student's forward keeps its logits (fused loss off), the source
 * gives the target distributions, loom_kd_grad turns the logits into the gradient of the mixed loss
 * and the backward starts from there. The soft-prompt rows of prompt tuning carry no loss. */
static int kd_gradient(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss) {
    const loom_peft *pf = loom_tset_plan(t->ts);
    const int B = t->cfg.B, T = t->cfg.T, V = loom_model_config(t->m)->vocab;
    if (!targets) return loom_error(LOOM_EINVAL, "distillation needs targets");
    loom_ws_set_fused_loss(t->ws, 0);
    float ce = 0;
    int rc = loom_forward_ex(t->m, t->base, t->ws, pf, t->params, tokens, targets, B, T, &ce);
    if (rc != LOOM_OK) return rc;
    const int P = loom_ws_prompt_len(t->ws), R = T + P;
    const size_t rowf = (size_t)V;
    if ((rc = t->kd_fn(t->kd_ud, tokens, B, T, t->kd_temp, t->kd_q)) != LOOM_OK) return rc;
    for (int b = B - 1; P > 0 && b >= 0; b--) { /* spread each row's T positions behind its soft prompt */
        memmove(t->kd_q + ((size_t)b * R + P) * rowf, t->kd_q + (size_t)b * T * rowf, (size_t)T * rowf * sizeof(float));
        memset(t->kd_q + (size_t)b * R * rowf, 0, (size_t)P * rowf * sizeof(float));
    }
    for (int b = 0; b < B; b++)
        for (int j = 0; j < R; j++) t->kd_tgt[(size_t)b * R + j] = j < P ? -1 : targets[(size_t)b * T + j - P];
    double kl = 0;
    rc = loom_kd_grad(loom_ws_logits(t->ws), t->kd_q, t->kd_tgt, B * R, V, t->kd_temp, t->kd_alpha, &kl);
    if (rc == LOOM_OK) rc = loom_ws_set_logits_grad(t->ws);
    if (rc != LOOM_OK) return rc;
    t->kd_kl = kl;
    if (!t->grads_zero) memset(t->grads, 0, t->dim * sizeof(float));
    t->grads_zero = 0;
    rc = loom_backward_ex(t->m, t->base, t->ws, pf, t->params, t->grads);
    *loss = loom_kd_loss(kl, ce, t->kd_temp, t->kd_alpha);
    return rc;
}

int loom_trainer_set_soft_targets(loom_trainer *t, loom_soft_target_fn fn, void *ud, float temp, float alpha) {
    if (fn && t->cfg.split)
        return loom_error(LOOM_EINVAL, "distillation needs the whole model's logits on one side: it does not combine with split learning");
    if (!fn) {
        t->kd_fn = t->cfg.kd_teacher ? teacher_targets : NULL;
        t->kd_ud = t;
        t->kd_temp = t->cfg.kd_temp;
        t->kd_alpha = t->cfg.kd_alpha;
        return LOOM_OK;
    }
    if (!(temp > 0) || !isfinite(temp))
        return loom_error(LOOM_EINVAL, "distillation temperature %g must be finite and > 0", (double)temp);
    if (!(alpha >= 0 && alpha <= 1)) return loom_error(LOOM_EINVAL, "distillation weight alpha %g must be in [0, 1]", (double)alpha);
    if (t->cfg.dp_sgd || t->cfg.forward_only)
        return loom_error(LOOM_EINVAL, "distillation does not combine with %s", t->cfg.dp_sgd ? "DP-SGD" : "a forward-only trainer");
    int rc = kd_alloc(t);
    if (rc != LOOM_OK) return rc;
    t->kd_fn = fn;
    t->kd_ud = ud;
    t->kd_temp = temp;
    t->kd_alpha = alpha;
    return LOOM_OK;
}

double loom_trainer_kd_kl(const loom_trainer *t) { return t->kd_fn ? t->kd_kl : 0.0; }

int loom_trainer_compute_gradient(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss,
                                  long *n_targets) {
    if (t->cfg.forward_only) return loom_error(LOOM_ESTATE, "the trainer is forward-only (zeroth-order): no gradient");
    const loom_peft *pf = loom_tset_plan(t->ts);
    long step = loom_optimizer_steps(t->opt);
    float l = 0;
    int rc;
    loom_ws_set_dropout(t->ws, 1, loom_hash2(t->cfg.seed, (uint64_t)step));
    loom_ws_set_fused_loss(t->ws, 1); /* every forward here is followed by its backward */
    if (t->cfg.dp_sgd) {
        rc = dp_gradient(t, tokens, targets, step, &l);
    } else if (t->cfg.split) {
        rc = split_gradient(t, tokens, targets, &l);
    } else if (t->kd_fn) {
        rc = kd_gradient(t, tokens, targets, &l);
    } else {
        rc = loom_forward_ex(t->m, t->base, t->ws, pf, t->params, tokens, targets, t->cfg.B, t->cfg.T, &l);
        if (rc == LOOM_OK) {
            /* the last apply-gradient left zeros behind it: the backward accumulates into them */
            if (!t->grads_zero) memset(t->grads, 0, t->dim * sizeof(float));
            t->grads_zero = 0;
            rc = loom_backward_ex(t->m, t->base, t->ws, pf, t->params, t->grads);
        }
    }
    loom_ws_set_dropout(t->ws, 0, 0);
    loom_ws_set_fused_loss(t->ws, 0);
    if (rc != LOOM_OK) return rc;
    if (loss) *loss = l;
    if (n_targets) *n_targets = targets ? count_targets(targets, loom_trainer_batch_tokens(t)) : 0;
    if (!isfinite(l))
        return loom_error(LOOM_ERANGE, "loss became non-finite (%s) at step %ld: lower --lr (now %g) or check the data",
                          nonfinite_name(l), step + 1, (double)loom_trainer_lr(t));
    return LOOM_OK;
}

int loom_trainer_apply_gradient(loom_trainer *t, double *grad_norm) {
    if (t->cfg.forward_only) return loom_error(LOOM_ESTATE, "the trainer is forward-only (zeroth-order): no optimizer step");
    long step = loom_optimizer_steps(t->opt);
    if (t->hook) t->hook(t->grads, t->params, t->dim, t->hook_ud);
    t->grads_zero = 0;
    /* two passes over the gradient: its norm, then the optimizer, which applies the clip scale as it
     * reads each element (the same bits as clipping the buffer first) and leaves zeros behind */
    double gn = loom_grad_norm(t->grads, t->dim);
    float scale = loom_clip_scale(gn, t->cfg.clip);
    if (t->cfg.split && t->ws_srv && !t->remote && t->grads_srv && t->grads != t->grads_srv) {
        /* both parts here: each is clipped by its own norm, as the client and the server do apart */
        double gs = loom_grad_norm(t->grads_srv, t->dim);
        float ss = loom_clip_scale(gs, t->cfg.clip);
        for (size_t i = 0; i < t->dim; i++) {
            t->grads[i] = t->grads[i] * scale + t->grads_srv[i] * ss;
            t->grads_srv[i] = 0;
        }
        gn = sqrt(gn * gn + gs * gs);
        scale = 1.0f;
    }
    if (grad_norm) *grad_norm = gn;
    float lr = loom_trainer_lr(t);
    if (!isfinite(gn))
        return loom_error(LOOM_ERANGE, "gradient norm became non-finite (%s) at step %ld: lower --lr (now %g)",
                          nonfinite_name(gn), step + 1, (double)lr);
    loom_optimizer_step_ex(t->opt, t->params, t->grads, scale, lr, 1);
    t->grads_zero = 1;
    return LOOM_OK;
}

int loom_trainer_step(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss, double *grad_norm) {
    float l = 0;
    int rc = loom_trainer_compute_gradient(t, tokens, targets, &l, NULL);
    if (loss) *loss = l;
    if (rc != LOOM_OK) return rc;
    return loom_trainer_apply_gradient(t, grad_norm);
}

int loom_trainer_loss_at(loom_trainer *t, const float *vec, const int32_t *tokens, const int32_t *targets, float *loss) {
    if (!vec || !targets) return loom_error(LOOM_EINVAL, "a vector and targets are required");
    return loom_forward_ex(t->m, t->base, t->ws, loom_tset_plan(t->ts), vec, tokens, targets, t->cfg.B, t->cfg.T, loss);
}

int loom_trainer_eval(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss) {
    return loom_forward_ex(t->m, t->base, t->ws, loom_tset_plan(t->ts), t->params, tokens, targets, t->cfg.B, t->cfg.T,
                           loss);
}

long loom_trainer_steps(const loom_trainer *t) { return loom_optimizer_steps(t->opt); }
loom_optimizer *loom_trainer_optimizer(loom_trainer *t) { return t->opt; }
loom_ws *loom_trainer_ws(loom_trainer *t) { return t->ws; }
float *loom_trainer_grads(loom_trainer *t) {
    t->grads_zero = 0; /* the caller may write into it */
    return t->grads;
}

void loom_trainer_set_grad_hook(loom_trainer *t, loom_grad_hook fn, void *ud) {
    t->hook = fn;
    t->hook_ud = ud;
}

int loom_trainer_gradient(loom_trainer *t, const int32_t *tokens, const int32_t *targets, float *loss) {
    return loom_trainer_compute_gradient(t, tokens, targets, loss, NULL);
}

size_t loom_trainer_batch_tokens(const loom_trainer *t) { return (size_t)t->cfg.B * (size_t)t->cfg.T; }
int loom_trainer_vocab(const loom_trainer *t) { return loom_model_config(t->m)->vocab; }
void loom_trainer_shape(const loom_trainer *t, int *B, int *T) {
    *B = t->cfg.B;
    *T = t->cfg.T;
}
size_t loom_trainer_dim(const loom_trainer *t) { return t->dim; }
float *loom_trainer_vector(loom_trainer *t) { return t->params; }
void loom_trainer_reset_optimizer(loom_trainer *t) { loom_optimizer_reset(t->opt); }
const loom_tset *loom_trainer_tset(const loom_trainer *t) { return t->own_ts ? NULL : t->ts; }
