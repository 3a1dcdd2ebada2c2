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


/* ---------------------------------------------------------------- blocked causal attention */

static float *rvec(size_t n, uint64_t seed) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    loom_rng r;
    loom_rng_init(&r, seed, 2);
    for (size_t i = 0; i < n; i++) a[i] = (float)(2.0 * loom_rng_uniform(&r) - 1.0);
    return a;
}

/* worst |got - ref| / (1 + max |ref|) over n values */
static double rel_err(const float *got, const double *ref, size_t n) {
    double mx = 0, e = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(ref[i]));
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs((double)got[i] - ref[i]));
    return e / (1.0 + mx);
}

/* Naive causal attention in double, straight from the formulas: S = Q K^T / sqrt(HS) over j <= t,
 * P = softmax(S), Y = P V; dP = dY V^T, dS = P (dP - rowsum(P dP)) / sqrt(HS), dQ = dS K, dK = dS^T Q,
 * dV = P^T dY (summed over the query heads sharing a key/value head). */
static void attention_blocked(int Bn, int Tn, int NH, int NKV, int HS) {
    const int C = NH * HS, QKV = C + 2 * NKV * HS, ld = QKV + 3, group = NH / NKV;
    const size_t N = (size_t)Bn * Tn, natt = (size_t)Bn * NH * Tn * Tn;
    float *qkv = rvec(N * ld, 5), *dout = rvec(N * C, 6);
    float *out = malloc(N * C * sizeof *out), *att = malloc(natt * sizeof *att), *scr = malloc(natt * sizeof *scr);
    float *dqkv = malloc(N * ld * sizeof *dqkv), *out1 = malloc(N * C * sizeof *out1), *dq1 = malloc(N * ld * sizeof *dq1);
    double *ro = calloc(N * C, sizeof *ro), *rd = calloc(N * ld, sizeof *rd), *ra = calloc(natt, sizeof *ra);
    double *p = calloc((size_t)Tn * Tn, sizeof *p), *ds = calloc((size_t)Tn * Tn, sizeof *ds);
    const double sc = 1.0 / sqrt((double)HS);
    for (int b = 0; b < Bn; b++)
        for (int h = 0; h < NH; h++) {
            const float *bs = qkv + (size_t)b * Tn * ld;
            const int kh = h / group;
#define Q(t, d) (double)bs[(size_t)(t) * ld + h * HS + (d)]
#define K(t, d) (double)bs[(size_t)(t) * ld + C + kh * HS + (d)]
#define VV(t, d) (double)bs[(size_t)(t) * ld + C + NKV * HS + kh * HS + (d)]
#define DY(t, d) (double)dout[((size_t)b * Tn + (t)) * C + h * HS + (d)]
            for (int t = 0; t < Tn; t++) {
                double mx = -INFINITY, s = 0;
                for (int j = 0; j <= t; j++) {
                    double z = 0;
                    for (int d = 0; d < HS; d++) z += Q(t, d) * K(j, d);
                    p[(size_t)t * Tn + j] = z * sc;
                    mx = fmax(mx, z * sc);
                }
                for (int j = 0; j <= t; j++) s += p[(size_t)t * Tn + j] = exp(p[(size_t)t * Tn + j] - mx);
                for (int j = 0; j <= t; j++) {
                    p[(size_t)t * Tn + j] /= s;
                    ra[(((size_t)b * NH + h) * Tn + t) * Tn + j] = p[(size_t)t * Tn + j];
                }
                for (int d = 0; d < HS; d++) {
                    double y = 0;
                    for (int j = 0; j <= t; j++) y += p[(size_t)t * Tn + j] * VV(j, d);
                    ro[((size_t)b * Tn + t) * C + h * HS + d] = y;
                }
                double rs = 0;
                for (int j = 0; j <= t; j++) {
                    double z = 0;
                    for (int d = 0; d < HS; d++) z += DY(t, d) * VV(j, d);
                    ds[(size_t)t * Tn + j] = z;
                    rs += p[(size_t)t * Tn + j] * z;
                }
                for (int j = 0; j <= t; j++) ds[(size_t)t * Tn + j] = p[(size_t)t * Tn + j] * (ds[(size_t)t * Tn + j] - rs) * sc;
            }
            double *dbs = rd + (size_t)b * Tn * ld;
            for (int t = 0; t < Tn; t++)
                for (int d = 0; d < HS; d++) {
                    double q = 0, k = 0, v = 0;
                    for (int j = 0; j <= t; j++) q += ds[(size_t)t * Tn + j] * K(j, d);
                    for (int i = t; i < Tn; i++) {
                        k += ds[(size_t)i * Tn + t] * Q(i, d);
                        v += p[(size_t)i * Tn + t] * DY(i, d);
                    }
                    dbs[(size_t)t * ld + h * HS + d] = q;
                    dbs[(size_t)t * ld + C + kh * HS + d] += k;
                    dbs[(size_t)t * ld + C + NKV * HS + kh * HS + d] += v;
                }
#undef Q
#undef K
#undef VV
#undef DY
        }
    const int thr[2] = {1, 3};
    char what[96];
    snprintf(what, sizeof what, "blocked attention B=%d T=%d NH=%d NKV=%d HS=%d", Bn, Tn, NH, NKV, HS);
    for (int ti = 0; ti < 2; ti++) {
        loom_set_threads(thr[ti]);
        for (size_t i = 0; i < N * ld; i++) dqkv[i] = 555.0f;
        loom_attention_forward(out, att, qkv, ld, Bn, Tn, NH, NKV, HS);
        loom_attention_backward(dqkv, scr, dout, qkv, att, ld, Bn, Tn, NH, NKV, HS);
        /* float sums of at most T or HS terms of size <= 1: a relative 1e-5 of the scale is ample */
        double eo = rel_err(out, ro, N * C), ed = 0, ea = 0;
        int untouched = 1;
        for (size_t n = 0; n < N; n++) {
            double mx = 0;
            for (int c = 0; c < QKV; c++) mx = fmax(mx, fabs(rd[n * ld + c]));
            for (int c = 0; c < QKV; c++) ed = fmax(ed, fabs((double)dqkv[n * ld + c] - rd[n * ld + c]) / (1.0 + mx));
            for (int c = QKV; c < ld; c++) untouched &= dqkv[n * ld + c] == 555.0f;
        }
        CHECK(untouched, "%s: the columns past QKV are not written", what);
        for (int bh = 0; bh < Bn * NH; bh++)
            for (int t = 0; t < Tn; t++)
                for (int j = 0; j <= t; j++) {
                    size_t i = ((size_t)bh * Tn + t) * Tn + j;
                    ea = fmax(ea, fabs((double)att[i] - ra[i]));
                }
        CHECK(eo < 1e-5 && ed < 1e-5 && ea < 1e-6, "%s, %d threads: output %.3g, d qkv %.3g, probabilities %.3g from double",
              what, thr[ti], eo, ed, ea);
        if (ti == 0) {
            memcpy(out1, out, N * C * sizeof *out);
            memcpy(dq1, dqkv, N * ld * sizeof *dqkv);
        } else {
            CHECK(!memcmp(out1, out, N * C * sizeof *out) && !memcmp(dq1, dqkv, N * ld * sizeof *dqkv),
                  "%s: 1 and %d threads give the same bits", what, thr[ti]);
        }
    }
    free(qkv), free(dout), free(out), free(att), free(scr), free(dqkv), free(out1), free(dq1);
    free(ro), free(rd), free(ra), free(p), free(ds);
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
    attention_blocked(2, 100, 4, 2, 8);  /* two blocks, the second partial; grouped keys */
    attention_blocked(1, 130, 2, 2, 16); /* three blocks */
    attention_blocked(1, 64, 3, 1, 4);   /* exactly one block */
    loom_model_free(g);
    loom_model_free(l);
    return test_summary();
}
