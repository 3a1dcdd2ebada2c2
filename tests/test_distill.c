/* Knowledge distillation (include/loom/distill.h), how we know it is right:
 *  - the kernel's gradient equals the closed form alpha T (softmax(s/T) - q) / n + (1 - alpha)
 *    (softmax(s) - onehot) / n written out here in double, and central differences of the loss written
 *    out here; rows without a target get nothing
 *  - the trainer's gradient with a teacher (full fine-tuning and prompt tuning, whose logits carry soft
 *    rows) against central differences of alpha T^2 KL + (1 - alpha) CE computed here from the models'
 *    logits
 *  - alpha = 0 with a teacher trains bit for bit as without one
 *  - teacher = student at alpha = 1: the gradient vanishes
 *  - the same bits on 1 and 3 threads; a teacher with another vocabulary is refused, naming both sizes
 *  - FedDF: with all clients identical the ensemble's target is that one model's distribution (from its
 *    logits, here in double); distill-steps 0 is plain FedAvg bit for bit through the pipeline; the
 *    result does not depend on the order the updates arrive in; the distillation lowers the KL to the
 *    ensemble; the post stage refuses masked updates and secure sums
 *  - synthetic data: the same samples for a seed on 1 and 3 threads, others for another seed; each
 *    token is the sampler's draw (the sample's own stream) on the full forward's logits of its prefix; the appended examples hold
 *    the samples with their prompt masked and leave the dataset's own unchanged; only the clients below
 *    the threshold take them */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/distill.h"
#include "loom/dataset.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/tokenizer.h"
#include "loom/pipeline.h"
#include "loom/sample.h"
#include "loom/train.h"
#include "test.h"

enum { B = 2, T = 8 };

/* ---- the kernel on a hand-sized case ---- */

static void softmax_d(const double *x, int V, double temp, double *p) {
    double m = x[0], z = 0;
    for (int v = 1; v < V; v++) m = x[v] > m ? x[v] : m;
    for (int v = 0; v < V; v++) z += exp((x[v] - m) / temp);
    for (int v = 0; v < V; v++) p[v] = exp((x[v] - m) / temp) / z;
}

enum { KN = 3, KV = 5 };
static const int32_t ktg[KN] = {2, -1, 4};
static double kq[KN][KV];

/* the loss written out: mean over valid rows of alpha T^2 KL(q || softmax(s/T)) + (1 - alpha) CE */
static double kernel_loss(const double *s, double temp, double alpha) {
    double total = 0;
    int nv = 0;
    for (int n = 0; n < KN; n++) {
        if (ktg[n] < 0) continue;
        double p[KV], p1[KV], kl = 0;
        softmax_d(s + n * KV, KV, temp, p);
        softmax_d(s + n * KV, KV, 1.0, p1);
        for (int v = 0; v < KV; v++) kl += kq[n][v] * log(kq[n][v] / p[v]);
        total += alpha * temp * temp * kl - (1 - alpha) * log(p1[ktg[n]]);
        nv++;
    }
    return total / nv;
}

static void kernel_closed_form(void) {
    const float temp = 2.0f, alpha = 0.3f;
    float s[KN * KV], q[KN * KV], t[KN * KV];
    double sd[KN * KV];
    uint64_t seed = 7;
    for (int i = 0; i < KN * KV; i++) {
        s[i] = (float)(1.5 * test_normal(&seed));
        t[i] = (float)(1.5 * test_normal(&seed));
        sd[i] = s[i];
    }
    for (int n = 0; n < KN; n++) {
        double tt[KV];
        for (int v = 0; v < KV; v++) tt[v] = t[n * KV + v];
        softmax_d(tt, KV, temp, kq[n]);
    }
    loom_kd_soften(q, t, KN, KV, temp);
    double qerr = 0;
    for (int n = 0; n < KN; n++)
        for (int v = 0; v < KV; v++) qerr = fmax(qerr, fabs(q[n * KV + v] - kq[n][v]));
    CHECK(qerr < 1e-7, "soften: max error %.3g against the softmax in double", qerr);
    /* closed form */
    double want[KN * KV], want_kl = 0;
    int nv = 2;
    for (int n = 0; n < KN; n++) {
        double p[KV], p1[KV];
        softmax_d(sd + n * KV, KV, temp, p);
        softmax_d(sd + n * KV, KV, 1.0, p1);
        for (int v = 0; v < KV; v++) {
            want[n * KV + v] = ktg[n] < 0 ? 0
                               : (alpha * temp * (p[v] - kq[n][v]) + (1 - alpha) * (p1[v] - (v == ktg[n]))) / nv;
            if (ktg[n] >= 0) want_kl += kq[n][v] * log(kq[n][v] / p[v]) / nv;
        }
    }
    double kl = -1;
    CHECK_OK(loom_kd_grad(s, q, ktg, KN, KV, temp, alpha, &kl));
    double err = 0, fderr = 0;
    for (int i = 0; i < KN * KV; i++) err = fmax(err, fabs(s[i] - want[i]));
    CHECK(err < 1e-7, "kd gradient: max error %.3g against the closed form", err);
    CHECK_NEAR(kl, want_kl, 2e-7); /* q is float */
    for (int v = 0; v < KV; v++) CHECK(s[1 * KV + v] == 0.0f, "row without a target: gradient %g", s[KV + v]);
    /* central differences of the loss written out */
    for (int i = 0; i < KN * KV; i++) {
        const double h = 1e-5, x0 = sd[i];
        sd[i] = x0 + h;
        double lp = kernel_loss(sd, temp, alpha);
        sd[i] = x0 - h;
        double lm = kernel_loss(sd, temp, alpha);
        sd[i] = x0;
        fderr = fmax(fderr, fabs((lp - lm) / (2 * h) - s[i]));
    }
    CHECK(fderr < 1e-6, "kd gradient: max error %.3g against central differences", fderr);
    /* the loss's mixing */
    CHECK(loom_kd_loss(0.7, 2.5f, 2.0f, 0.0f) == 2.5f, "alpha 0 is the cross-entropy exactly");
    CHECK_NEAR(loom_kd_loss(0.7, 2.5f, 2.0f, 0.25f), 0.25 * 4 * 0.7 + 0.75 * 2.5, 1e-6);
    printf("kernel: closed form %.2e, central differences %.2e, KL %.6f\n", err, fderr, kl);
}

/* ---- the trainer ---- */

static loom_model *micro(int dim, int layers, uint64_t seed) {
    loom_config cfg;
    loom_config_named(&cfg, "gpt2-tiny");
    cfg.dim = dim, cfg.n_head = 2, cfg.n_kv_head = 2, cfg.hidden = 2 * dim, cfg.n_layer = layers;
    cfg.vocab = 11, cfg.max_seq = 16;
    cfg.act = LOOM_ACT_GELU_TANH;
    loom_model *m = NULL;
    CHECK_OK(loom_model_create(&m, &cfg, seed));
    if (!m) return NULL;
    loom_rng r;
    loom_rng_init(&r, seed, 99);
    float *p = loom_model_params(m);
    for (size_t i = 0; i < loom_model_n_params(m); i++) p[i] += 0.3f * (float)loom_rng_normal(&r);
    return m;
}

static void batch(uint64_t seed, int V, int32_t *tok, int32_t *tgt) {
    loom_rng r;
    loom_rng_init(&r, seed, 5);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)V);
        tgt[i] = i % 5 == 3 ? -1 : (int32_t)loom_rng_below(&r, (uint32_t)V);
    }
}

static void config(loom_train_config *tc, const loom_model *teacher, float temp, float alpha) {
    loom_train_defaults(tc);
    tc->opt.lr = 1e-2f;
    tc->clip = 0;
    tc->B = B;
    tc->T = T;
    tc->seed = 3;
    tc->kd_teacher = teacher;
    tc->kd_temp = temp;
    tc->kd_alpha = alpha;
}

typedef struct {
    const loom_model *m;
    const loom_peft *pf;
    loom_ws *ws;
    const int32_t *tok, *tgt;
    const double *q; /* [B*T][V] the teacher's distributions at temp */
    double temp, alpha;
    int full;        /* x is the model's parameters (else the set's vector over the model's own) */
} fd_ctx;

/* alpha T^2 KL + (1 - alpha) CE, from the student's logits, in double */
static double kd_loss_of(void *ud, const float *x) {
    fd_ctx *c = ud;
    const int V = loom_model_config(c->m)->vocab;
    float ce = 0;
    if (c->full) loom_forward(c->m, x, c->ws, c->tok, c->tgt, B, T, &ce);
    else loom_forward_ex(c->m, loom_model_params_const(c->m), c->ws, c->pf, x, c->tok, c->tgt, B, T, &ce);
    const int P = loom_ws_prompt_len(c->ws);
    const float *lg = loom_ws_logits(c->ws);
    double total = 0;
    int nv = 0;
    for (int b = 0; b < B; b++)
        for (int j = 0; j < T; j++) {
            int n = b * T + j;
            if (c->tgt[n] < 0) continue;
            double s[64], p[64], p1[64], kl = 0;
            for (int v = 0; v < V; v++) s[v] = lg[((size_t)b * (P + T) + P + j) * V + v];
            softmax_d(s, V, c->temp, p);
            softmax_d(s, V, 1.0, p1);
            for (int v = 0; v < V; v++) kl += c->q[(size_t)n * V + v] * log(c->q[(size_t)n * V + v] / p[v]);
            total += c->alpha * c->temp * c->temp * kl - (1 - c->alpha) * log(p1[c->tgt[n]]);
            nv++;
        }
    return total / nv;
}

/* the trainer's gradient against central differences of kd_loss_of, tensor by tensor (entry by entry) */
static void trainer_fd(const char *label, loom_model *m, loom_model *teacher, int method) {
    const float temp = 1.7f, alpha = 0.6f;
    const int V = loom_model_config(m)->vocab;
    loom_train_config tc;
    config(&tc, teacher, temp, alpha);
    loom_tset *ts = NULL;
    loom_peft_config pc;
    loom_peft_defaults(&pc, method);
    pc.prompt_len = 3;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 4));
    if (!ts) return;
    size_t dim = loom_tset_dim(ts);
    int full = method == LOOM_PEFT_FULL;
    float *vec = loom_alloc(dim * sizeof(float)), *x = loom_alloc(dim * sizeof(float));
    memcpy(vec, full ? loom_model_params(m) : loom_tset_data(ts), dim * sizeof(float));
    loom_rng r;
    loom_rng_init(&r, 21, 1);
    if (!full)
        for (size_t i = 0; i < dim; i++) vec[i] += 0.2f * (float)loom_rng_normal(&r);
    loom_trainer *tr = NULL;
    CHECK_OK(full ? loom_trainer_create(&tr, m, vec, &tc) : loom_trainer_create_peft(&tr, m, loom_model_params(m), ts, vec, &tc));
    if (!tr) return;
    int32_t tok[B * T], tgt[B * T];
    batch(11, V, tok, tgt);
    float loss = 0;
    CHECK_OK(loom_trainer_compute_gradient(tr, tok, tgt, &loss, NULL));
    const float *g = loom_trainer_grads(tr);
    /* the teacher's distributions, from its logits, in double */
    loom_ws *tws = NULL, *ws = NULL;
    CHECK_OK(loom_ws_create_infer(&tws, teacher, B, T, NULL));
    CHECK_OK(loom_forward(teacher, loom_model_params(teacher), tws, tok, NULL, B, T, NULL));
    double *q = malloc((size_t)B * T * V * sizeof *q);
    for (int n = 0; n < B * T; n++) {
        double tl[64];
        for (int v = 0; v < V; v++) tl[v] = loom_ws_logits(tws)[(size_t)n * V + v];
        softmax_d(tl, V, temp, q + (size_t)n * V);
    }
    CHECK_OK(loom_ws_create_ex(&ws, m, B, T, loom_tset_plan(ts)));
    fd_ctx c = {m, loom_tset_plan(ts), ws, tok, tgt, q, temp, alpha, full};
    memcpy(x, vec, dim * sizeof(float));
    double l0 = kd_loss_of(&c, x);
    CHECK_NEAR(loss, l0, 1e-5 * fmax(1.0, fabs(l0)));
    double worst = 0;
    for (int k = 0; k < loom_tset_count(ts); k++) {
        const loom_tset_entry *e = loom_tset_entry_at(ts, k);
        size_t n = e->numel;
        if (full && loom_model_tensor(m, e->tensor)->kind == LOOM_T_POS) n = (size_t)T * loom_model_config(m)->dim;
        double eg, er;
        test_grad_check(kd_loss_of, &c, x, e->offset, n, g, 4, 300 + (uint64_t)k, 1e-2, &eg, &er);
        worst = fmax(worst, fmax(eg, er / 10));
        CHECK(eg < 1e-2 && er < 1e-1, "%s: %s: relative error %.3g along the gradient, %.3g along random directions",
              label, e->name, eg, er);
    }
    printf("%s: trainer's distillation gradient vs central differences, worst %.2e (%d entries), loss %.5f\n", label,
           worst, loom_tset_count(ts), loss);
    free(q);
    loom_ws_free(ws);
    loom_ws_free(tws);
    loom_trainer_free(tr);
    loom_free(vec);
    loom_free(x);
    loom_tset_free(ts);
}

/* three AdamW steps with a teacher at alpha = 0 and without a teacher: the same bits */
static void alpha_zero_is_plain(loom_model *m, loom_model *teacher, int method) {
    loom_peft_config pc;
    loom_peft_defaults(&pc, method);
    pc.prompt_len = 3;
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 4));
    if (!ts) return;
    int full = method == LOOM_PEFT_FULL;
    size_t dim = loom_tset_dim(ts);
    float *v[2];
    float loss[2][3];
    for (int run = 0; run < 2; run++) {
        loom_train_config tc;
        config(&tc, run ? teacher : NULL, 3.0f, 0.0f);
        v[run] = loom_alloc(dim * sizeof(float));
        memcpy(v[run], full ? loom_model_params(m) : loom_tset_data(ts), dim * sizeof(float));
        loom_trainer *tr = NULL;
        CHECK_OK(full ? loom_trainer_create(&tr, m, v[run], &tc)
                      : loom_trainer_create_peft(&tr, m, loom_model_params(m), ts, v[run], &tc));
        for (int s = 0; tr && s < 3; s++) {
            int32_t tok[B * T], tgt[B * T];
            batch(40 + (uint64_t)s, loom_model_config(m)->vocab, tok, tgt);
            CHECK_OK(loom_trainer_step(tr, tok, tgt, &loss[run][s], NULL));
        }
        loom_trainer_free(tr);
    }
    CHECK(memcmp(v[0], v[1], dim * sizeof(float)) == 0, "%s: alpha 0 with a teacher differs from plain training",
          loom_peft_method_name(method));
    CHECK(memcmp(loss[0], loss[1], sizeof loss[0]) == 0, "%s: alpha 0: losses %.9g %.9g differ", loom_peft_method_name(method),
          loss[0][2], loss[1][2]);
    double d = 0;
    for (size_t i = 0; i < dim; i++) d += fabs(v[0][i] - (full ? loom_model_params(m) : loom_tset_data(ts))[i]);
    CHECK(d > 0, "the runs trained");
    loom_free(v[0]);
    loom_free(v[1]);
    loom_tset_free(ts);
}

/* the gradient's norm with teacher (params tp) at alpha 1 */
static double grad_norm_with(loom_model *m, loom_model *teacher, const float *tp, int threads, float **copy) {
    loom_train_config tc;
    config(&tc, teacher, 2.0f, 1.0f);
    tc.kd_teacher_params = tp;
    size_t n = loom_model_n_params(m);
    float *p = loom_alloc(n * sizeof(float));
    memcpy(p, loom_model_params(m), n * sizeof(float));
    loom_trainer *tr = NULL;
    CHECK_OK(loom_trainer_create(&tr, m, p, &tc));
    double gn = -1;
    if (tr) {
        int32_t tok[B * T], tgt[B * T];
        batch(5, loom_model_config(m)->vocab, tok, tgt);
        loom_set_threads(threads);
        CHECK_OK(loom_trainer_compute_gradient(tr, tok, tgt, NULL, NULL));
        loom_set_threads(0);
        gn = loom_grad_norm(loom_trainer_grads(tr), n);
        if (copy) {
            *copy = malloc(n * sizeof(float));
            memcpy(*copy, loom_trainer_grads(tr), n * sizeof(float));
        }
    }
    loom_trainer_free(tr);
    loom_free(p);
    return gn;
}

static void self_teacher(loom_model *m, loom_model *other) {
    float *g1 = NULL, *g3 = NULL;
    double self = grad_norm_with(m, m, loom_model_params(m), 1, &g1);
    double diff = grad_norm_with(m, other, NULL, 3, NULL);
    CHECK(diff > 1e-3, "another teacher gives a gradient (%g)", diff);
    CHECK(self <= 1e-5 * diff, "teacher = student at alpha 1: gradient norm %.3g (another teacher: %.3g)", self, diff);
    grad_norm_with(m, m, loom_model_params(m), 3, &g3);
    CHECK(g1 && g3 && memcmp(g1, g3, loom_model_n_params(m) * sizeof(float)) == 0, "1 and 3 threads: the same bits");
    printf("teacher = student, alpha 1: |g| %.2e (another teacher %.2e)\n", self, diff);
    free(g1);
    free(g3);
}

static void refusals(loom_model *m) {
    loom_config cfg = *loom_model_config(m);
    cfg.vocab = 13;
    loom_model *t = NULL;
    CHECK_OK(loom_model_create(&t, &cfg, 1));
    loom_train_config tc;
    config(&tc, t, 2.0f, 0.5f);
    float *p = loom_alloc(loom_model_n_params(m) * sizeof(float));
    memcpy(p, loom_model_params(m), loom_model_n_params(m) * sizeof(float));
    loom_trainer *tr = NULL;
    int rc = loom_trainer_create(&tr, m, p, &tc);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "13 tokens, the student's 11"), "vocabulary mismatch: %d %s", rc,
          loom_errmsg());
    config(&tc, m, 0.0f, 0.5f);
    rc = loom_trainer_create(&tr, m, p, &tc);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "temperature"), "temperature 0: %d %s", rc, loom_errmsg());
    config(&tc, m, 1.0f, 1.5f);
    rc = loom_trainer_create(&tr, m, p, &tc);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "alpha"), "alpha 1.5: %d %s", rc, loom_errmsg());
    loom_free(p);
    loom_model_free(t);
}

/* ---- FedDF ---- */

enum { NPUB = 300, NCL = 3 };

static void feddf_make(loom_feddf **f, loom_model *m, const int32_t *pub, int steps) {
    loom_feddf_config c;
    loom_feddf_defaults(&c);
    c.m = m;
    c.tokens = pub;
    c.n_tokens = NPUB;
    c.steps = steps;
    c.temp = 1.5f;
    c.lr = 3e-3f;
    c.B = B;
    c.T = T;
    c.seed = 8;
    CHECK_OK(loom_feddf_create(f, &c));
}

static void feddf_checks(loom_model *m) {
    const int V = loom_model_config(m)->vocab;
    const size_t dim = loom_model_n_params(m);
    int32_t pub[NPUB];
    uint64_t sd = 3;
    for (int i = 0; i < NPUB; i++) pub[i] = (int32_t)((uint64_t)(test_normal(&sd) * 1e6) % (uint64_t)V + V) % V;
    float *prev = loom_alloc(dim * sizeof(float)), *u[NCL];
    memcpy(prev, loom_model_params(m), dim * sizeof(float));
    loom_rng r;
    loom_rng_init(&r, 77, 2);
    for (int i = 0; i < NCL; i++) {
        u[i] = loom_alloc(dim * sizeof(float));
        for (size_t k = 0; k < dim; k++) u[i][k] = 0.05f * (float)loom_rng_normal(&r);
    }
    /* identical clients: the target is the one model's distribution */
    loom_feddf *f = NULL;
    feddf_make(&f, m, pub, 1);
    if (!f) return;
    int32_t tok[B * T], tgt[B * T];
    loom_feddf_batch(f, 2, 0, tok, tgt);
    int inside = 1;
    for (int i = 0; i < B * T; i++) inside &= tok[i] >= 0 && tok[i] < V && tgt[i] >= 0 && tgt[i] < V;
    CHECK(inside, "public windows hold the text's tokens");
    const float *same[NCL] = {u[1], u[1], u[1]};
    float *q = malloc((size_t)B * T * V * sizeof *q);
    CHECK_OK(loom_feddf_targets(f, prev, same, NCL, tok, q));
    float *x = loom_alloc(dim * sizeof(float));
    for (size_t k = 0; k < dim; k++) x[k] = prev[k] + u[1][k];
    loom_ws *ws = NULL;
    CHECK_OK(loom_ws_create_infer(&ws, m, B, T, NULL));
    CHECK_OK(loom_forward(m, x, ws, tok, NULL, B, T, NULL));
    double err = 0, mix = 0;
    for (int n = 0; n < B * T; n++) {
        double lg[64], p[64];
        for (int v = 0; v < V; v++) lg[v] = loom_ws_logits(ws)[(size_t)n * V + v];
        softmax_d(lg, V, 1.5, p);
        for (int v = 0; v < V; v++) err = fmax(err, fabs(q[(size_t)n * V + v] - p[v]));
    }
    CHECK(err < 1e-6, "identical clients: target off the model's distribution by %.3g", err);
    /* distinct clients: the mean of their distributions */
    const float *diff[NCL] = {u[0], u[1], u[2]};
    CHECK_OK(loom_feddf_targets(f, prev, diff, NCL, tok, q));
    double *want = calloc((size_t)B * T * V, sizeof *want);
    for (int i = 0; i < NCL; i++) {
        for (size_t k = 0; k < dim; k++) x[k] = prev[k] + u[i][k];
        CHECK_OK(loom_forward(m, x, ws, tok, NULL, B, T, NULL));
        for (int n = 0; n < B * T; n++) {
            double lg[64], p[64];
            for (int v = 0; v < V; v++) lg[v] = loom_ws_logits(ws)[(size_t)n * V + v];
            softmax_d(lg, V, 1.5, p);
            for (int v = 0; v < V; v++) want[(size_t)n * V + v] += p[v] / NCL;
        }
    }
    for (size_t k = 0; k < (size_t)B * T * V; k++) mix = fmax(mix, fabs(q[k] - want[k]));
    CHECK(mix < 1e-6, "three clients: target off the mean of their distributions by %.3g", mix);
    free(want);
    printf("FedDF: identical clients' target vs the model's softmax: %.2e; three clients' vs their mean: %.2e\n", err, mix);
    loom_ws_free(ws);
    loom_free(x);
    free(q);
    loom_feddf_free(f);

    /* through the pipeline: steps 0 = plain FedAvg; order independence; the KL falls */
    const double w[NCL] = {3, 5, 2};
    float *g[4];
    double kl0 = NAN, kl1 = NAN;
    for (int run = 0; run < 4; run++) { /* 0 plain, 1 steps 0, 2 steps 6, 3 steps 6 reversed */
        loom_pipeline_config pc;
        loom_pipeline_defaults(&pc, dim);
        pc.clip_norm = 2.0; /* the post stage sees the clipped updates */
        loom_feddf *fd = NULL;
        if (run) {
            feddf_make(&fd, m, pub, run == 1 ? 0 : 6);
            pc.post = loom_feddf_post;
            pc.post_ud = fd;
        }
        loom_pipeline *p = NULL;
        CHECK_OK(loom_pipeline_create(&p, &pc));
        g[run] = loom_alloc(dim * sizeof(float));
        memcpy(g[run], prev, dim * sizeof(float));
        if (!p) continue;
        CHECK_OK(loom_pipeline_begin_round(p, 4));
        for (int i = 0; i < NCL; i++) {
            int k = run == 3 ? NCL - 1 - i : i;
            CHECK_OK(loom_pipeline_add(p, u[k], dim, w[k], NULL, NULL, NULL));
        }
        if (run == 1) {
            uint8_t *mask = calloc(dim, 1);
            int rc = loom_pipeline_add_masked(p, u[0], dim, 1, NULL, mask, NULL, NULL);
            CHECK(rc == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "masked"), "masked update: %d %s", rc, loom_errmsg());
            double *sum = calloc(dim, sizeof *sum);
            rc = loom_pipeline_add_sum(p, sum, dim, 1, 1);
            CHECK(rc == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "secure sum"), "secure sum: %d %s", rc, loom_errmsg());
            free(sum);
            free(mask);
        }
        CHECK_OK(loom_pipeline_end_round(p, g[run]));
        if (run == 2) loom_feddf_last_kl(fd, &kl0, &kl1);
        loom_pipeline_free(p);
        loom_feddf_free(fd);
    }
    CHECK(memcmp(g[0], g[1], dim * sizeof(float)) == 0, "distill-steps 0 differs from plain FedAvg");
    CHECK(memcmp(g[0], g[2], dim * sizeof(float)) != 0, "distillation changes the model");
    CHECK(memcmp(g[2], g[3], dim * sizeof(float)) == 0, "the distilled model depends on the order of arrival");
    CHECK(kl1 < 0.9 * kl0, "distillation lowers the KL to the ensemble: first step %.5f, last %.5f", kl0, kl1);
    printf("FedDF: 6 server steps, KL to the ensemble %.5f -> %.5f\n", kl0, kl1);
    for (int run = 0; run < 4; run++) loom_free(g[run]);
    for (int i = 0; i < NCL; i++) loom_free(u[i]);
    loom_free(prev);
}

/* ---- synthetic data ---- */

static void synth_checks(loom_model *m) {
    const int V = loom_model_config(m)->vocab, L = 12, N = 4;
    const int32_t prompt[2] = {3, 7};
    loom_synth_config c;
    loom_synth_defaults(&c);
    c.n = N;
    c.len = L;
    c.prompt = prompt;
    c.prompt_len = 2;
    c.temperature = 1.0f;
    c.seed = 5;
    int32_t a[N * L], b[N * L], d[N * L];
    loom_set_threads(1);
    CHECK_OK(loom_synth_generate(m, NULL, NULL, NULL, &c, a));
    loom_set_threads(3);
    CHECK_OK(loom_synth_generate(m, NULL, NULL, NULL, &c, b));
    loom_set_threads(0);
    CHECK(memcmp(a, b, sizeof a) == 0, "synthetic samples differ between 1 and 3 threads");
    c.seed = 6;
    CHECK_OK(loom_synth_generate(m, NULL, NULL, NULL, &c, d));
    CHECK(memcmp(a, d, sizeof a) != 0, "another seed gives other samples");
    int ok = 1, distinct = 0;
    for (int k = 0; k < N; k++) {
        ok &= a[k * L] == 3 && a[k * L + 1] == 7;
        for (int j = 0; j < L; j++) ok &= a[k * L + j] >= 0 && a[k * L + j] < V;
        distinct |= k > 0 && memcmp(a, a + k * L, L * sizeof *a) != 0;
    }
    CHECK(ok, "every sample starts with the prompt and stays in the vocabulary");
    CHECK(distinct, "the samples differ from one another");
    /* replayed: the sampler on the full forward's logits of each prefix, with the sample's stream */
    loom_ws *ws = NULL;
    CHECK_OK(loom_ws_create_infer(&ws, m, 1, L, NULL));
    int replay = 1;
    const loom_sampler smp = {1.0f, 0, 1.0f};
    for (int k = 0; k < N; k++) {
        loom_rng r;
        loom_rng_init(&r, 5, loom_hash2(LOOM_STREAM_SYNTH, (uint64_t)k));
        for (int pos = 2; pos < L; pos++) {
            CHECK_OK(loom_forward(m, loom_model_params(m), ws, a + k * L, NULL, 1, pos, NULL));
            float lg[64];
            memcpy(lg, loom_ws_logits(ws) + (size_t)(pos - 1) * V, (size_t)V * sizeof *lg);
            replay &= loom_sample(lg, V, &smp, &r) == a[k * L + pos];
        }
    }
    CHECK(replay, "the samples are the sampler's draws on the model's next-token logits");
    loom_ws_free(ws);
    /* the appended examples and the mix */
    loom_tokenizer *tok = NULL;
    CHECK_OK(loom_tokenizer_byte(&tok));
    const char *texts[3] = {"abcdef", "gh", "ijklmnopq"};
    size_t lens[3] = {6, 2, 9};
    loom_dataset *ds = NULL, *ds2 = NULL;
    CHECK_OK(loom_dataset_from_texts(&ds, texts, lens, NULL, 3, NULL, tok));
    if (!ds) return;
    CHECK_OK(loom_dataset_append_ids(&ds2, ds, a, N, L, 2));
    if (!ds2) return;
    CHECK(ds2->n == 3 + (size_t)N && ds2->n_tokens == ds->n_tokens + (size_t)N * L, "appended: %zu examples, %zu tokens",
          ds2->n, ds2->n_tokens);
    int same = 1, mask = 1;
    for (size_t i = 0; i < 3; i++)
        same &= ds2->ex[i].n == ds->ex[i].n && !memcmp(ds2->ex[i].ids, ds->ex[i].ids, ds->ex[i].n * 4) &&
                !memcmp(ds2->ex[i].mask, ds->ex[i].mask, ds->ex[i].n);
    for (int k = 0; k < N; k++) {
        const loom_example *e = &ds2->ex[3 + k];
        same &= e->n == (uint32_t)L && !memcmp(e->ids, a + k * L, L * sizeof *a) && e->label == -1;
        for (int j = 0; j < L; j++) mask &= e->mask[j] == (j >= 2);
    }
    CHECK(same, "the dataset's own examples are unchanged and the samples appended as generated");
    CHECK(mask, "the prompt carries no loss, the generated tokens do");
    loom_partition part = {0};
    loom_client cl[2];
    memset(cl, 0, sizeof cl);
    cl[0].train = malloc(2 * sizeof(uint32_t));
    cl[0].train[0] = 0, cl[0].train[1] = 2, cl[0].n_train = 2;
    cl[1].train = malloc(sizeof(uint32_t));
    cl[1].train[0] = 1, cl[1].n_train = 1;
    part.n_clients = 2;
    part.clients = cl;
    part.n_examples = 3;
    size_t mixed = 9;
    CHECK_OK(loom_synth_mix(&part, 3, N, 2, &mixed));
    CHECK(mixed == 1 && cl[0].n_train == 2 && cl[1].n_train == 1 + (size_t)N && cl[1].train[1] == 3 &&
              cl[1].train[N] == 3 + (uint32_t)N - 1 && part.n_examples == 3 + (size_t)N,
          "mix: %zu clients, sizes %zu %zu", mixed, cl[0].n_train, cl[1].n_train);
    CHECK_OK(loom_partition_check(&part, ds2->n));
    free(cl[0].train);
    free(cl[1].train);
    loom_dataset_free(ds2);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    printf("synthetic: %d samples of %d tokens, the same on 1 and 3 threads, replayed from the forward pass\n", N, L);
}

int main(void) {
    kernel_closed_form();
    loom_model *m = micro(8, 1, 1), *teacher = micro(12, 2, 2);
    if (!m || !teacher) return 1;
    trainer_fd("full", m, teacher, LOOM_PEFT_FULL);
    trainer_fd("prompt", m, teacher, LOOM_PEFT_PROMPT);
    trainer_fd("lora", m, teacher, LOOM_PEFT_LORA);
    alpha_zero_is_plain(m, teacher, LOOM_PEFT_FULL);
    alpha_zero_is_plain(m, teacher, LOOM_PEFT_PROMPT);
    self_teacher(m, teacher);
    refusals(m);
    feddf_checks(m);
    synth_checks(m);
    loom_model_free(m);
    loom_model_free(teacher);
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
