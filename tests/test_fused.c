/* The fused work of a training step (how we know it is right):
 *  - a trainer step (norm, then one optimizer pass that applies the clip scale as it reads the gradient
 *    and leaves zeros behind; the fused classifier and loss) equals the old sequence written out here,
 *    bit for bit: unfused forward, backward into a cleared buffer, loom_clip_grad_norm scaling the
 *    buffer, then loom_optimizer_step; AdamW and SGD with momentum, clipping active and inactive, full
 *    and LoRA, 1 and 2 threads
 *  - the fused cross-entropy kernel equals forward then backward bit for bit (losses, mean, count,
 *    gradient; ignored targets, row weights, a zero weight) and a double-precision softmax
 *  - a fused forward + backward through the model equals the unfused pair bit for bit
 *  - causal attention computed block by block equals a naive double-precision attention (output,
 *    probabilities, d q/k/v) at lengths that are not multiples of the block, and gives the same bits
 *    on 1 and 3 threads */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/kernels.h"
#include "loom/model.h"
#include "loom/optim.h"
#include "loom/peft.h"
#include "loom/train.h"
#include "model/model_impl.h"
#include "test.h"

enum { B = 2, T = 16 };

static void batch(const loom_model *m, uint64_t seed, int32_t *tok, int32_t *tgt) {
    loom_rng r;
    loom_rng_init(&r, seed, 7);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)m->cfg.vocab);
        tgt[i] = i % 7 == 3 ? -1 : (int32_t)loom_rng_below(&r, (uint32_t)m->cfg.vocab);
    }
}

static loom_model *tiny(const char *shape) {
    loom_config c;
    loom_model *m = NULL;
    if (loom_config_named(&c, shape) != LOOM_OK || loom_model_create(&m, &c, 11) != LOOM_OK) return NULL;
    return m;
}

static int all_zero(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (x[i] != 0.0f) return 0;
    return 1;
}

/* Three trainer steps against the old sequence by hand. clip: the bound (0 = none); want_clipped: whether
 * the first step's norm must exceed it (so the test knows which branch it exercised). */
static void step_equals_old(const loom_model *m, const loom_tset *ts, loom_opt_kind kind, float clip, int want_clipped,
                            int threads, const char *what) {
    loom_set_threads(threads);
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.kind = kind;
    tc.opt.lr = kind == LOOM_OPT_SGD ? 0.05f : 1e-2f;
    if (kind == LOOM_OPT_SGD) tc.opt.momentum = 0.9f, tc.opt.weight_decay = 1e-3f;
    tc.warmup = 1;
    tc.total_steps = 6;
    tc.clip = clip;
    tc.B = B;
    tc.T = T;
    tc.seed = 3;
    tc.decay_2d_only = 0;
    const size_t n = ts ? loom_tset_dim(ts) : m->n_params;
    const float *init = ts ? loom_tset_data((loom_tset *)ts) : m->params;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *g = loom_calloc(n, sizeof *g);
    memcpy(a, init, n * sizeof *a);
    memcpy(b, init, n * sizeof *b);
    loom_trainer *tr;
    if (ts) CHECK_OK(loom_trainer_create_peft(&tr, m, m->params, ts, a, &tc));
    else CHECK_OK(loom_trainer_create(&tr, m, a, &tc));
    loom_optimizer *o;
    CHECK_OK(loom_optimizer_create(&o, &tc.opt, n));
    loom_ws *ws;
    CHECK_OK(ts ? loom_ws_create_ex(&ws, m, B, T, loom_tset_plan(ts)) : loom_ws_create(&ws, m, B, T));
    int32_t tok[B * T], tgt[B * T];
    int same_loss = 1, same_norm = 1, zeros = 1, clipped = -1;
    for (int s = 0; s < 3; s++) {
        batch(m, (uint64_t)s + 40, tok, tgt);
        float la, lb;
        double na, nb;
        CHECK_OK(loom_trainer_step(tr, tok, tgt, &la, &na));
        /* the old sequence: unfused loss, clear, backward, clip the buffer, optimizer step */
        loom_ws_set_dropout(ws, 1, loom_hash2(tc.seed, (uint64_t)s));
        if (ts) CHECK_OK(loom_forward_ex(m, m->params, ws, loom_tset_plan(ts), b, tok, tgt, B, T, &lb));
        else CHECK_OK(loom_forward(m, b, ws, tok, tgt, B, T, &lb));
        memset(g, 0, n * sizeof *g);
        if (ts) CHECK_OK(loom_backward_ex(m, m->params, ws, loom_tset_plan(ts), b, g));
        else CHECK_OK(loom_backward(m, b, ws, g, NULL));
        loom_ws_set_dropout(ws, 0, 0);
        nb = loom_clip_grad_norm(g, n, clip);
        loom_optimizer_step(o, b, g, loom_lr_cosine(tc.opt.lr, tc.min_lr, s, tc.warmup, tc.total_steps));
        if (s == 0) clipped = clip > 0 && nb > clip;
        same_loss &= memcmp(&la, &lb, sizeof la) == 0;
        same_norm &= memcmp(&na, &nb, sizeof na) == 0;
        zeros &= all_zero(loom_trainer_grads(tr), n);
    }
    CHECK(clipped == want_clipped, "%s: clipping %s on the first step", what, want_clipped ? "active" : "inactive");
    CHECK(same_loss && same_norm, "%s: the losses and norms equal the old sequence's", what);
    CHECK(zeros, "%s: apply-gradient leaves the gradient buffer zeroed", what);
    CHECK(memcmp(a, b, n * sizeof *a) == 0, "%s: the fused step equals the old sequence bit for bit", what);
    CHECK(memcmp(a, init, n * sizeof *a) != 0, "%s: training changed the vector", what);
    loom_ws_free(ws);
    loom_optimizer_free(o);
    loom_trainer_free(tr);
    free(a);
    free(b);
    loom_free(g);
}

/* a gradient written by hand into a zeroed buffer after a step is applied as written */
static void hand_gradient_after_step(const loom_model *m) {
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.kind = LOOM_OPT_SGD;
    tc.opt.lr = 0.5f;
    tc.opt.weight_decay = 0;
    tc.clip = 0;
    tc.B = B;
    tc.T = T;
    size_t n = m->n_params;
    float *p = malloc(n * sizeof *p), *q = malloc(n * sizeof *q);
    memcpy(p, m->params, n * sizeof *p);
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create(&tr, m, p, &tc));
    int32_t tok[B * T], tgt[B * T];
    batch(m, 5, tok, tgt);
    CHECK_OK(loom_trainer_step(tr, tok, tgt, NULL, NULL));
    memcpy(q, p, n * sizeof *q);
    float *g = loom_trainer_grads(tr);
    for (size_t i = 0; i < n; i++) g[i] = 2.0f;
    CHECK_OK(loom_trainer_apply_gradient(tr, NULL));
    CHECK(p[0] == q[0] - 1.0f && p[n - 1] == q[n - 1] - 1.0f, "a hand-made gradient after a step is applied as written");
    /* a gradient after a hand-made one: the backward starts from zeros, so the step equals a fresh one */
    loom_trainer *t2;
    float *r = malloc(n * sizeof *r);
    memcpy(r, p, n * sizeof *r);
    CHECK_OK(loom_trainer_create(&t2, m, r, &tc));
    float la, lb;
    CHECK_OK(loom_trainer_step(tr, tok, tgt, &la, NULL));
    CHECK_OK(loom_trainer_step(t2, tok, tgt, &lb, NULL));
    CHECK(la == lb && memcmp(p, r, n * sizeof *p) == 0, "a step after a hand-made gradient equals a fresh trainer's");
    loom_trainer_free(t2);
    loom_trainer_free(tr);
    free(p);
    free(q);
    free(r);
}

/* ---------------------------------------------------------------- cross-entropy */

static void fused_crossentropy(int N, int V, int TT, int weighted) {
    size_t NV = (size_t)N * V;
    float *x = malloc(NV * sizeof *x), *g = malloc(NV * sizeof *g), *f = malloc(NV * sizeof *f);
    float *l1 = malloc((size_t)N * sizeof *l1), *l2 = malloc((size_t)N * sizeof *l2);
    int32_t *tg = malloc((size_t)N * sizeof *tg);
    int nb = (N + TT - 1) / TT;
    float *w = malloc((size_t)nb * sizeof *w);
    loom_rng r;
    loom_rng_init(&r, 17, 1);
    for (size_t i = 0; i < NV; i++) x[i] = (float)(12.0 * loom_rng_uniform(&r) - 6.0);
    for (int n = 0; n < N; n++) tg[n] = n % 5 == 2 ? -1 : n % 11 == 7 ? V : (int32_t)loom_rng_below(&r, (uint32_t)V);
    for (int b = 0; b < nb; b++) w[b] = b == 1 ? 0.0f : 0.5f + (float)b;
    const float *rw = weighted ? w : NULL;
    const float dloss = 1.0f;
    int c1 = -1, c2 = -2;
    float m1 = loom_crossentropy_forward_w(l1, x, tg, rw, TT, N, V, &c1);
    memcpy(g, x, NV * sizeof *g);
    loom_crossentropy_backward_w(g, tg, rw, TT, N, V, c1, dloss);
    memcpy(f, x, NV * sizeof *f);
    float m2 = loom_crossentropy_fused_w(l2, f, tg, rw, TT, N, V, &c2, dloss);
    char what[96];
    snprintf(what, sizeof what, "fused cross-entropy N=%d V=%d%s", N, V, weighted ? " weighted" : "");
    CHECK(c1 == c2 && memcmp(&m1, &m2, sizeof m1) == 0, "%s: mean %.9g vs %.9g, count %d vs %d", what, m1, m2, c1, c2);
    CHECK(memcmp(l1, l2, (size_t)N * sizeof *l1) == 0, "%s: per-row losses equal bit for bit", what);
    CHECK(memcmp(g, f, NV * sizeof *g) == 0, "%s: the gradient equals forward + backward bit for bit", what);
    /* against softmax - one-hot in double: fast_expf (~1e-7 relative) and a float sum of V terms */
    double worst = 0, wl = 0;
    for (int n = 0; n < N; n++) {
        const float *row = x + (size_t)n * V;
        int ok = tg[n] >= 0 && tg[n] < V;
        double k = ok ? dloss / c1 * (rw ? rw[n / TT] : 1.0) : 0.0;
        double mx = row[0], s = 0;
        for (int j = 1; j < V; j++) mx = fmax(mx, row[j]);
        for (int j = 0; j < V; j++) s += exp(row[j] - mx);
        if (ok) wl = fmax(wl, fabs(l2[n] - (log(s) + mx - row[tg[n]])));
        else CHECK(l2[n] == 0.0f, "%s: an ignored row has loss 0", what);
        for (int j = 0; j < V; j++) {
            double want = k * (exp(row[j] - mx) / s - (j == tg[n]));
            worst = fmax(worst, fabs(f[(size_t)n * V + j] - want));
        }
    }
    double u = 1.0 / 16777216.0;
    CHECK(worst <= (V + 16) * u * 8.0 / c1, "%s: gradient within %.3g of double softmax (%.3g)", what,
          (V + 16) * u * 8.0 / c1, worst);
    CHECK(wl <= (V + 8) * u + 32 * u, "%s: losses within %.3g of double (%.3g)", what, (V + 8) * u + 32 * u, wl);
    free(x), free(g), free(f), free(l1), free(l2), free(tg), free(w);
}

/* fused forward + backward through the model equals the unfused pair, with and without row weights */
static void model_fused_equals_unfused(const loom_model *m, const char *what) {
    size_t n = m->n_params;
    float *g1 = loom_calloc(n, sizeof *g1), *g2 = loom_calloc(n, sizeof *g2);
    loom_ws *w1, *w2;
    CHECK_OK(loom_ws_create(&w1, m, B, T));
    CHECK_OK(loom_ws_create(&w2, m, B, T));
    int32_t tok[B * T], tgt[B * T];
    batch(m, 91, tok, tgt);
    const float rw[B] = {0.25f, 3.0f};
    for (int weighted = 0; weighted < 2; weighted++) {
        CHECK_OK(loom_ws_set_row_weights(w1, weighted ? rw : NULL, B));
        CHECK_OK(loom_ws_set_row_weights(w2, weighted ? rw : NULL, B));
        float la, lb;
        memset(g1, 0, n * sizeof *g1);
        memset(g2, 0, n * sizeof *g2);
        CHECK_OK(loom_forward(m, m->params, w1, tok, tgt, B, T, &la));
        CHECK_OK(loom_backward(m, m->params, w1, g1, NULL));
        loom_ws_set_fused_loss(w2, 1);
        CHECK_OK(loom_forward(m, m->params, w2, tok, tgt, B, T, &lb));
        CHECK(memcmp(loom_ws_losses(w1), loom_ws_losses(w2), B * T * sizeof(float)) == 0,
              "%s: fused per-position losses equal", what);
        CHECK_OK(loom_backward(m, m->params, w2, g2, NULL));
        loom_ws_set_fused_loss(w2, 0);
        CHECK(memcmp(&la, &lb, sizeof la) == 0, "%s%s: fused loss %.9g equals %.9g", what, weighted ? " weighted" : "",
              lb, la);
        CHECK(memcmp(g1, g2, n * sizeof *g1) == 0, "%s%s: fused gradient equals the unfused one bit for bit", what,
              weighted ? " weighted" : "");
    }
    /* fused off again: the logits are the logits */
    float l;
    CHECK_OK(loom_forward(m, m->params, w2, tok, tgt, B, T, &l));
    CHECK_OK(loom_forward(m, m->params, w1, tok, tgt, B, T, &l));
    CHECK(memcmp(loom_ws_logits(w1), loom_ws_logits(w2), (size_t)B * T * m->cfg.vocab * sizeof(float)) == 0,
          "%s: with the fused loss off, forward leaves the logits", what);
    loom_ws_free(w1);
    loom_ws_free(w2);
    loom_free(g1);
    loom_free(g2);
}

int main(void) {
    loom_model *g = tiny("gpt2-tiny"), *l = tiny("llama-tiny");
    CHECK(g && l, "tiny models: %s", loom_errmsg());
    if (!g || !l) return test_summary();
    step_equals_old(g, NULL, LOOM_OPT_ADAMW, 0.05f, 1, 2, "gpt2 full adamw clipped");
    step_equals_old(g, NULL, LOOM_OPT_ADAMW, 0.0f, 0, 1, "gpt2 full adamw unclipped");
    step_equals_old(l, NULL, LOOM_OPT_SGD, 0.05f, 1, 1, "llama full sgd clipped");
    step_equals_old(l, NULL, LOOM_OPT_SGD, 1e6f, 0, 1, "llama full sgd bound above the norm");
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_dropout = 0.1f;
    loom_tset *ts;
    CHECK_OK(loom_tset_create(&ts, l, &pc, 5));
    step_equals_old(l, ts, LOOM_OPT_ADAMW, 1e-3f, 1, 1, "llama lora adamw clipped");
    step_equals_old(l, ts, LOOM_OPT_ADAMW, 0.0f, 0, 2, "llama lora adamw unclipped");
    loom_tset_free(ts);
    hand_gradient_after_step(g);
    fused_crossentropy(1, 1, 1, 0);
    fused_crossentropy(37, 1001, 5, 0);
    fused_crossentropy(37, 1001, 5, 1);
    fused_crossentropy(9, 16, 3, 1);
    model_fused_equals_unfused(g, "gpt2-tiny");
    model_fused_equals_unfused(l, "llama-tiny");
    loom_model_free(g);
    loom_model_free(l);
    return test_summary();
}
