/* The trainer's two halves (how we know they are right):
 *  - loom_trainer_step equals compute-gradient + apply-gradient, bit for bit (full and LoRA sets)
 *  - full fine-tuning through the FULL set equals forward + backward + clip + optimizer by hand, bit for
 *    bit (the route the trainer had before the FULL set, written out here with the model and optim APIs)
 *  - apply-gradient on a hand-made gradient gives the hand-computed SGD (with warm-up and clipping) and
 *    AdamW (decoupled decay on matrices only) updates
 *  - the forward-only loss at another vector leaves the gradient alone and equals eval at that vector
 *  - a non-finite loss or gradient norm stops with LOOM_ERANGE and a message naming the step */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/optim.h"
#include "loom/peft.h"
#include "loom/train.h"
#include "model/model_impl.h"
#include "test.h"

enum { B = 2, T = 16 };

static void batch(const loom_model *m, uint64_t seed, int32_t *tok, int32_t *tgt) {
    loom_rng r;
    loom_rng_init(&r, seed, 5);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)m->cfg.vocab);
        tgt[i] = i % 5 == 4 ? -1 : (int32_t)loom_rng_below(&r, (uint32_t)m->cfg.vocab);
    }
    tgt[1] = 0; /* token 0 is a target like any other */
}

static void config(loom_train_config *tc, loom_opt_kind kind) {
    loom_train_defaults(tc);
    tc->opt.kind = kind;
    tc->opt.lr = 1e-2f;
    tc->warmup = 2;
    tc->total_steps = 10;
    tc->clip = 0.5f;
    tc->B = B;
    tc->T = T;
    tc->seed = 9;
}

static loom_model *tiny(const char *shape) {
    loom_config c;
    loom_model *m = NULL;
    if (loom_config_named(&c, shape) != LOOM_OK || loom_model_create(&m, &c, 3) != LOOM_OK) return NULL;
    return m;
}

/* step == compute-gradient + apply-gradient, three steps, on two copies of the vector */
static void split_equals_step(const loom_model *m, const loom_tset *ts, loom_opt_kind kind, const char *what) {
    loom_train_config tc;
    config(&tc, kind);
    size_t n = ts ? loom_tset_dim(ts) : m->n_params;
    const float *init = ts ? loom_tset_data((loom_tset *)ts) : m->params;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    memcpy(a, init, n * sizeof *a);
    memcpy(b, init, n * sizeof *b);
    loom_trainer *ta, *tb;
    if (ts) {
        CHECK_OK(loom_trainer_create_peft(&ta, m, m->params, ts, a, &tc));
        CHECK_OK(loom_trainer_create_peft(&tb, m, m->params, ts, b, &tc));
    } else {
        CHECK_OK(loom_trainer_create(&ta, m, a, &tc));
        CHECK_OK(loom_trainer_create(&tb, m, b, &tc));
    }
    int32_t tok[B * T], tgt[B * T];
    int same_loss = 1, same_norm = 1;
    for (int s = 0; s < 3; s++) {
        batch(m, (uint64_t)s, tok, tgt);
        float la, lb;
        double ga, gb;
        long nt = -1;
        CHECK_OK(loom_trainer_step(ta, tok, tgt, &la, &ga));
        CHECK_OK(loom_trainer_compute_gradient(tb, tok, tgt, &lb, &nt));
        CHECK(nt == B * T - B * T / 5, "%s: %ld target tokens counted, expected %d", what, nt, B * T - B * T / 5);
        CHECK_OK(loom_trainer_apply_gradient(tb, &gb));
        same_loss &= memcmp(&la, &lb, sizeof la) == 0;
        same_norm &= memcmp(&ga, &gb, sizeof ga) == 0;
    }
    CHECK(same_loss && same_norm, "%s: losses and norms of step and gradient+apply agree", what);
    CHECK(memcmp(a, b, n * sizeof *a) == 0, "%s: step and gradient+apply give the same bits", what);
    CHECK(memcmp(a, init, n * sizeof *a) != 0, "%s: training changed the vector", what);
    CHECK(loom_trainer_steps(ta) == 3 && loom_trainer_steps(tb) == 3, "%s: three steps counted", what);
    loom_trainer_free(ta);
    loom_trainer_free(tb);
    free(a);
    free(b);
}

/* The full trainer against the step written out by hand: loom_forward, loom_backward, clipping,
 * an AdamW step with decay on 2-D tensors only, warm-up learning rate. */
static void full_equals_manual(const loom_model *m, const char *what) {
    loom_train_config tc;
    config(&tc, LOOM_OPT_ADAMW);
    size_t n = m->n_params;
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *g = loom_calloc(n, sizeof *g);
    memcpy(a, m->params, n * sizeof *a);
    memcpy(b, m->params, n * sizeof *b);
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create(&tr, m, a, &tc));
    CHECK(loom_trainer_vector(tr) == a && loom_trainer_dim(tr) == n, "%s: the full trainer trains params in place", what);
    loom_optimizer *o;
    CHECK_OK(loom_optimizer_create(&o, &tc.opt, n));
    size_t *rb = malloc((size_t)m->n_tensors * sizeof *rb), *re = malloc((size_t)m->n_tensors * sizeof *re);
    int k = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].ndim >= 2) {
            rb[k] = m->tensors[i].offset;
            re[k++] = m->tensors[i].offset + m->tensors[i].numel;
        }
    CHECK_OK(loom_optimizer_decay_ranges(o, rb, re, k));
    loom_ws *ws;
    CHECK_OK(loom_ws_create(&ws, m, B, T));
    int32_t tok[B * T], tgt[B * T];
    int same_loss = 1;
    for (int s = 0; s < 3; s++) {
        batch(m, (uint64_t)s + 10, tok, tgt);
        float la, lb;
        CHECK_OK(loom_trainer_step(tr, tok, tgt, &la, NULL));
        CHECK_OK(loom_forward(m, b, ws, tok, tgt, B, T, &lb));
        memset(g, 0, n * sizeof *g);
        CHECK_OK(loom_backward(m, b, ws, g, NULL));
        loom_clip_grad_norm(g, n, tc.clip);
        loom_optimizer_step(o, b, g, loom_lr_cosine(tc.opt.lr, tc.min_lr, s, tc.warmup, tc.total_steps));
        same_loss &= memcmp(&la, &lb, sizeof la) == 0;
    }
    CHECK(same_loss, "%s: the FULL-set trainer's losses equal forward by hand", what);
    CHECK(memcmp(a, b, n * sizeof *a) == 0, "%s: the FULL-set trainer equals the hand-written step, bit for bit", what);
    loom_ws_free(ws);
    loom_optimizer_free(o);
    loom_trainer_free(tr);
    free(rb);
    free(re);
    free(a);
    free(b);
    loom_free(g);
}

static float grad_value(size_t i) { return (float)((int)(i % 13) - 6) * 0.25f; } /* -1.5 .. 1.5 */

/* apply-gradient on a hand-made gradient: SGD with warm-up and clipping, then AdamW */
static void apply_by_hand(const loom_model *m) {
    size_t n = m->n_params;
    float *p = malloc(n * sizeof *p);
    memcpy(p, m->params, n * sizeof *p);
    loom_train_config tc;
    config(&tc, LOOM_OPT_SGD);
    tc.opt.momentum = 0;
    tc.opt.weight_decay = 0;
    tc.opt.lr = 0.1f;
    tc.warmup = 4;      /* first step: lr * 1/4 */
    tc.total_steps = 0; /* cosine off after warm-up */
    tc.clip = 2.0f;
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create(&tr, m, p, &tc));
    float *g = loom_trainer_grads(tr);
    double ss = 0;
    for (size_t i = 0; i < n; i++) {
        g[i] = grad_value(i);
        ss += (double)g[i] * g[i];
    }
    double norm = sqrt(ss), gn = 0;
    CHECK_OK(loom_trainer_apply_gradient(tr, &gn));
    CHECK_NEAR(gn, norm, 1e-9 * norm);
    /* clip scale 2/(norm + 1e-6) (torch's clip_grad_norm_), lr 0.1/4 */
    double scale = 2.0 / (norm + 1e-6), worst = 0;
    for (size_t i = 0; i < n; i++) {
        double want = (double)m->params[i] - 0.025 * (double)grad_value(i) * scale;
        double err = fabs((double)p[i] - want) / (fabs(want) + 1e-3);
        if (err > worst) worst = err;
    }
    CHECK(worst < 1e-6, "SGD update with warm-up and clipping by hand: worst relative error %.3g", worst);
    loom_trainer_free(tr);

    /* AdamW step 1 from zero moments: m = (1-b1) g, v = (1-b2) g^2, so the update is
     * lr * g / (|g| + eps) after decoupled decay p *= 1 - lr*wd (on 2-D tensors only) */
    memcpy(p, m->params, n * sizeof *p);
    config(&tc, LOOM_OPT_ADAMW);
    tc.opt.lr = 1e-3f;
    tc.opt.weight_decay = 0.5f;
    tc.warmup = 0;
    tc.total_steps = 0;
    tc.clip = 0;
    CHECK_OK(loom_trainer_create(&tr, m, p, &tc));
    g = loom_trainer_grads(tr);
    for (size_t i = 0; i < n; i++) g[i] = grad_value(i);
    CHECK_OK(loom_trainer_apply_gradient(tr, NULL));
    worst = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const loom_tensor *te = &m->tensors[t];
        double decay = te->ndim >= 2 ? 1.0 - 1e-3 * 0.5 : 1.0;
        for (size_t j = 0; j < te->numel; j++) {
            size_t i = te->offset + j;
            double gi = grad_value(i);
            double want = (double)m->params[i] * decay - 1e-3 * gi / (fabs(gi) + 1e-8);
            double err = fabs((double)p[i] - want);
            if (err > worst) worst = err;
        }
    }
    CHECK(worst < 2e-7, "AdamW first step by hand: worst absolute error %.3g", worst);
    loom_trainer_free(tr);
    free(p);
}

static void hook_add(float *grad, const float *vec, size_t n, void *ud) {
    (void)vec;
    int *calls = ud;
    ++*calls;
    for (size_t i = 0; i < n; i++) grad[i] += 1.0f;
}

/* the hook runs inside apply-gradient, before clipping; loss at another vector is forward-only */
static void hook_and_loss_at(const loom_model *m) {
    size_t n = m->n_params;
    float *p = malloc(n * sizeof *p), *q = malloc(n * sizeof *q);
    memcpy(p, m->params, n * sizeof *p);
    loom_train_config tc;
    config(&tc, LOOM_OPT_SGD);
    tc.opt.lr = 0.5f;
    tc.opt.weight_decay = 0;
    tc.warmup = 0;
    tc.total_steps = 0;
    tc.clip = 0;
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create(&tr, m, p, &tc));
    int calls = 0;
    loom_trainer_set_grad_hook(tr, hook_add, &calls);
    memset(loom_trainer_grads(tr), 0, n * sizeof(float));
    CHECK_OK(loom_trainer_apply_gradient(tr, NULL));
    CHECK(calls == 1, "the hook ran once (%d)", calls);
    CHECK(p[0] == m->params[0] - 0.5f && p[n - 1] == m->params[n - 1] - 0.5f, "hook's gradient applied");
    loom_trainer_set_grad_hook(tr, NULL, NULL);

    int32_t tok[B * T], tgt[B * T];
    batch(m, 77, tok, tgt);
    float le, la, lz;
    CHECK_OK(loom_trainer_eval(tr, tok, tgt, &le));
    float *g = loom_trainer_grads(tr);
    for (size_t i = 0; i < n; i++) g[i] = 3.0f;
    CHECK_OK(loom_trainer_loss_at(tr, p, tok, tgt, &la));
    CHECK(memcmp(&le, &la, sizeof le) == 0, "loss at the trained vector equals eval (%.9g, %.9g)", le, la);
    loom_rng r;
    loom_rng_init(&r, 4, 4);
    for (size_t i = 0; i < n; i++) q[i] = p[i] + 1e-2f * (float)loom_rng_normal(&r);
    CHECK_OK(loom_trainer_loss_at(tr, q, tok, tgt, &lz));
    int untouched = 1;
    for (size_t i = 0; i < n; i++) untouched &= g[i] == 3.0f;
    CHECK(untouched, "the forward-only loss leaves the gradient buffer alone");
    CHECK(lz != la && isfinite(lz), "a perturbed vector gives another loss (%.9g vs %.9g)", lz, la);
    /* the same forward with the perturbed vector as the trained one: same value */
    loom_trainer *tq;
    CHECK_OK(loom_trainer_create(&tq, m, q, &tc));
    float lq;
    CHECK_OK(loom_trainer_eval(tq, tok, tgt, &lq));
    CHECK(memcmp(&lq, &lz, sizeof lq) == 0, "loss at vec+eps*z equals eval of a trainer on vec+eps*z");
    CHECK(loom_trainer_loss_at(tr, NULL, tok, tgt, &lz) == LOOM_EINVAL && strstr(loom_errmsg(), "vector"),
          "loss at NULL refused: %s", loom_errmsg());
    loom_trainer_free(tq);
    loom_trainer_free(tr);
    free(p);
    free(q);
}

/* a run that diverges stops with a clear error instead of training on */
static void non_finite(const loom_model *m) {
    size_t n = m->n_params;
    float *p = malloc(n * sizeof *p);
    memcpy(p, m->params, n * sizeof *p);
    loom_train_config tc;
    config(&tc, LOOM_OPT_SGD);
    tc.opt.lr = 1e30f;
    tc.opt.weight_decay = 0;
    tc.warmup = 0;
    tc.total_steps = 0;
    tc.clip = 0;
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create(&tr, m, p, &tc));
    int32_t tok[B * T], tgt[B * T];
    int rc = LOOM_OK;
    long s;
    for (s = 0; s < 20 && rc == LOOM_OK; s++) {
        batch(m, (uint64_t)s, tok, tgt);
        rc = loom_trainer_step(tr, tok, tgt, NULL, NULL);
    }
    CHECK(rc == LOOM_ERANGE, "lr 1e30 ends in LOOM_ERANGE (rc %d after %ld steps)", rc, s);
    CHECK(strstr(loom_errmsg(), "non-finite") && strstr(loom_errmsg(), "at step") && strstr(loom_errmsg(), "lower --lr"),
          "message names the cause and the step: %s", loom_errmsg());
    CHECK(loom_trainer_steps(tr) == s - 1, "no optimizer step on the failing batch (%ld steps, %ld calls)",
          loom_trainer_steps(tr), s);
    loom_trainer_free(tr);

    /* a NaN weight: the first loss is non-finite, at step 1 */
    memcpy(p, m->params, n * sizeof *p);
    p[m->tensors[m->t_normf_w].offset] = NAN;
    tc.opt.lr = 1e-3f;
    CHECK_OK(loom_trainer_create(&tr, m, p, &tc));
    float loss = 0;
    rc = loom_trainer_step(tr, tok, tgt, &loss, NULL);
    CHECK(rc == LOOM_ERANGE && strstr(loom_errmsg(), "loss became non-finite") && strstr(loom_errmsg(), "step 1:"),
          "NaN weight: rc %d, %s", rc, loom_errmsg());
    CHECK(isnan(loss), "the non-finite loss is reported (%g)", loss);
    CHECK(isnan(p[m->tensors[m->t_normf_w].offset]) && p[0] == m->params[0], "the vector is not stepped");
    /* a non-finite gradient handed to apply-gradient: refused, vector unchanged */
    memcpy(p, m->params, n * sizeof *p);
    float *g = loom_trainer_grads(tr);
    memset(g, 0, n * sizeof *g);
    g[n / 2] = INFINITY;
    rc = loom_trainer_apply_gradient(tr, NULL);
    CHECK(rc == LOOM_ERANGE && strstr(loom_errmsg(), "gradient norm became non-finite"), "Inf gradient: %s",
          loom_errmsg());
    CHECK(memcmp(p, m->params, n * sizeof *p) == 0 && loom_trainer_steps(tr) == 0, "Inf gradient: nothing applied");
    loom_trainer_free(tr);
    free(p);
}

int main(void) {
    loom_set_threads(2);
    loom_model *g = tiny("gpt2-tiny"), *l = tiny("llama-tiny");
    CHECK(g && l, "tiny models: %s", loom_errmsg());
    if (!g || !l) return test_summary();
    split_equals_step(g, NULL, LOOM_OPT_ADAMW, "gpt2 full adamw");
    split_equals_step(l, NULL, LOOM_OPT_SGD, "llama full sgd");
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_dropout = 0.1f;
    loom_tset *ts;
    CHECK_OK(loom_tset_create(&ts, l, &pc, 5));
    split_equals_step(l, ts, LOOM_OPT_ADAMW, "llama lora with dropout");
    loom_tset_free(ts);
    full_equals_manual(g, "gpt2");
    full_equals_manual(l, "llama");
    apply_by_hand(g);
    hook_and_loss_at(l);
    non_finite(g);
    loom_model_free(g);
    loom_model_free(l);
    return test_summary();
}
