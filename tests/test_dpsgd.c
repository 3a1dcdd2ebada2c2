/* DP-SGD in the trainer (cfg.dp_sgd), and how we know it is right:
 *  - the batched route (one backward, per-row weight gradients) gives the same per-example norms and
 *    the same clipped, averaged gradient as the row loop (each row alone at batch 1, the model's plain
 *    backward), for LoRA, FULL, BitFit, adapters and prefix tuning on GPT-2 and Llama micro models;
 *    both equal a clipped mean computed here from the row loop's norms
 *  - sigma 0 and a clip above every norm give the plain mean-loss gradient and the same SGD step
 *  - the noise is N(0, (sigma C)^2 / B^2) per coordinate: its sample standard deviation over every
 *    coordinate is within 5 standard errors of sigma C / B, it is exactly the documented stream
 *    (seed, hash2(LOOM_STREAM_DP_NOISE, step)), reproducible, new at each step and for each seed
 *  - one example moves the noiseless sum by at most C, even with a huge loss, and a row without
 *    targets moves nothing
 *  - the result does not depend on the number of threads
 *  - invalid settings are refused with messages naming them */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/train.h"
#include "test.h"

enum { B = 4, T = 12 };

static double norm2(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / fmax(s, 1e-30);
}

/* A batch with rows of 12, 12, 7 and 12 targets (all 12 with full = 1). */
static void batch(int V, uint64_t seed, int full, int32_t *tok, int32_t *tgt) {
    loom_rng r;
    loom_rng_init(&r, seed, 11);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)V);
        tgt[i] = (int32_t)loom_rng_below(&r, (uint32_t)V);
    }
    if (!full)
        for (int t = 0; t < 5; t++) tgt[2 * T + t] = -1;
}

static void config(loom_train_config *tc, float clip, float sigma) {
    loom_train_defaults(tc);
    loom_opt_defaults(&tc->opt, LOOM_OPT_SGD);
    tc->opt.lr = 0.1f;
    tc->opt.weight_decay = 0;
    tc->clip = 0;
    tc->B = B;
    tc->T = T;
    tc->seed = 21;
    tc->dp_sgd = 1;
    tc->dp_clip = clip;
    tc->dp_noise = sigma;
}

typedef struct {
    loom_model *m;
    loom_tset *ts; /* NULL: FULL through loom_trainer_create */
    float *vec;    /* the trained vector (the set's, or a copy of the parameters) */
    size_t dim;
} fixture;

static int fixture_open(fixture *f, const char *shape, loom_peft_method method) {
    memset(f, 0, sizeof *f);
    loom_config cfg;
    if (loom_config_named(&cfg, shape) != LOOM_OK || loom_model_create(&f->m, &cfg, 5) != LOOM_OK) return 0;
    if (method == LOOM_PEFT_FULL) {
        f->dim = loom_model_n_params(f->m);
        f->vec = loom_model_params(f->m);
        return 1;
    }
    loom_peft_config pc;
    loom_peft_defaults(&pc, method);
    pc.bitfit_norms = 1;
    if (loom_tset_create(&f->ts, f->m, &pc, 9) != LOOM_OK) return 0;
    f->dim = loom_tset_dim(f->ts);
    f->vec = loom_tset_data(f->ts);
    loom_rng r;
    loom_rng_init(&r, 3, 1);
    for (size_t i = 0; i < f->dim; i++) f->vec[i] += 0.05f * (float)loom_rng_normal(&r); /* LoRA B away from 0 */
    return 1;
}

static void fixture_close(fixture *f) {
    loom_tset_free(f->ts);
    loom_model_free(f->m);
}

static int trainer(loom_trainer **t, fixture *f, const loom_train_config *tc) {
    if (f->ts) return loom_trainer_create_peft(t, f->m, loom_model_params(f->m), f->ts, f->vec, tc);
    return loom_trainer_create(t, f->m, f->vec, tc);
}

/* the batched route against the row loop, and both against the clipped mean computed here */
static void routes_agree(const char *shape, loom_peft_method method) {
    const char *mn = loom_peft_method_name(method);
    fixture f;
    CHECK(fixture_open(&f, shape, method), "%s %s: %s", shape, mn, loom_errmsg());
    if (!f.m) return;
    int32_t tok[B * T], tgt[B * T];
    batch(loom_model_config(f.m)->vocab, 1, 0, tok, tgt);
    for (int t = 0; t < T; t++) tgt[1 * T + t] = -1; /* row 1: no targets */
    loom_train_config tc;
    config(&tc, 1.0f, 0.0f);
    loom_trainer *tl = NULL, *tb = NULL;
    tc.dp_row_loop = 1;
    CHECK_OK(trainer(&tl, &f, &tc));
    float ll, lb;
    CHECK_OK(loom_trainer_compute_gradient(tl, tok, tgt, &ll, NULL));
    int loop = 0;
    const float *nl = loom_trainer_dp_norms(tl, &loop);
    CHECK(loop == 1, "%s %s: dp_row_loop = 1 did not take the row loop", shape, mn);
    /* a clip between the norms, so some rows are clipped and some not */
    float lo = INFINITY, hi = 0;
    for (int b = 0; b < B; b++)
        if (b != 1) {
            lo = fminf(lo, nl[b]);
            hi = fmaxf(hi, nl[b]);
        }
    CHECK(nl[1] == 0.0f && lo > 0, "%s %s: norms %g %g %g %g", shape, mn, nl[0], nl[1], nl[2], nl[3]);
    tc.dp_clip = 0.5f * (lo + hi);
    loom_trainer_free(tl);
    CHECK_OK(trainer(&tl, &f, &tc));
    tc.dp_row_loop = 0;
    CHECK_OK(trainer(&tb, &f, &tc));
    if (!tl || !tb) goto out;
    CHECK_OK(loom_trainer_compute_gradient(tl, tok, tgt, &ll, NULL));
    CHECK_OK(loom_trainer_compute_gradient(tb, tok, tgt, &lb, NULL));
    nl = loom_trainer_dp_norms(tl, NULL);
    const float *nb = loom_trainer_dp_norms(tb, &loop);
    CHECK(loop == 0, "%s %s: the batched route was not taken", shape, mn);
    for (int b = 0; b < B; b++)
        CHECK(fabs(nb[b] - nl[b]) <= 1e-5 * nl[b], "%s %s: row %d norm %.8g batched, %.8g row loop", shape, mn, b,
              (double)nb[b], (double)nl[b]);
    double d = rel_diff(loom_trainer_grads(tb), loom_trainer_grads(tl), f.dim);
    CHECK(d < 1e-5, "%s %s: the batched DP gradient differs from the row loop's by %.3g", shape, mn, d);
    /* the mean loss over the batch's valid targets: the plain trainer's loss */
    loom_train_config pc = tc;
    pc.dp_sgd = 0;
    loom_trainer *tp = NULL;
    CHECK_OK(trainer(&tp, &f, &pc));
    float lp = 0;
    if (tp) CHECK_OK(loom_trainer_compute_gradient(tp, tok, tgt, &lp, NULL));
    CHECK(fabsf(lb - lp) <= 1e-5f * fabsf(lp) && fabsf(ll - lp) <= 1e-5f * fabsf(lp),
          "%s %s: DP loss %.8g (loop %.8g), plain %.8g", shape, mn, lb, ll, lp);
    loom_trainer_free(tp);
    /* independent: each row's own-mean gradient from a plain trainer at batch 1, clipped and averaged here */
    loom_train_config one = pc;
    one.B = 1;
    tp = NULL;
    CHECK_OK(trainer(&tp, &f, &one));
    float *want = calloc(f.dim, sizeof *want);
    int clipped = 0;
    for (int b = 0; tp && b < B; b++) {
        if (b == 1) continue; /* no targets: contributes nothing */
        CHECK_OK(loom_trainer_compute_gradient(tp, tok + b * T, tgt + b * T, NULL, NULL));
        const float *gb = loom_trainer_grads(tp);
        double nrm = norm2(gb, f.dim), fac = nrm > tc.dp_clip ? tc.dp_clip / nrm : 1.0;
        clipped += nrm > tc.dp_clip;
        CHECK(fabs(nrm - nb[b]) <= 1e-5 * nrm, "%s %s: row %d norm %.8g, plain trainer at batch 1 %.8g", shape, mn, b,
              (double)nb[b], nrm);
        for (size_t i = 0; i < f.dim; i++) want[i] += (float)(fac * gb[i] / B);
    }
    d = rel_diff(loom_trainer_grads(tb), want, f.dim);
    CHECK(d < 1e-5, "%s %s: the DP gradient differs from the clipped mean by hand by %.3g", shape, mn, d);
    CHECK(clipped >= 1 && clipped <= 2, "%s %s: %d rows clipped", shape, mn, clipped);
    free(want);
    loom_trainer_free(tp);
out:
    loom_trainer_free(tl);
    loom_trainer_free(tb);
    fixture_close(&f);
}

/* sigma 0 and a clip above every norm: the plain mean-loss step (rows of equal length) */
static void plain_when_noiseless(const char *shape, loom_peft_method method) {
    const char *mn = loom_peft_method_name(method);
    fixture f;
    CHECK(fixture_open(&f, shape, method), "%s %s: %s", shape, mn, loom_errmsg());
    if (!f.m) return;
    int32_t tok[B * T], tgt[B * T];
    batch(loom_model_config(f.m)->vocab, 2, 1, tok, tgt);
    float *v0 = malloc(f.dim * sizeof *v0), *v1 = malloc(f.dim * sizeof *v1);
    memcpy(v0, f.vec, f.dim * sizeof *v0);
    loom_train_config tc;
    config(&tc, 1e6f, 0.0f);
    loom_train_config pc = tc;
    pc.dp_sgd = 0;
    loom_trainer *t = NULL;
    float *gp = malloc(f.dim * sizeof *gp);
    /* the plain step first (on the vector), then the DP step from the same start */
    CHECK_OK(trainer(&t, &f, &pc));
    if (t) {
        CHECK_OK(loom_trainer_step(t, tok, tgt, NULL, NULL));
        memcpy(gp, loom_trainer_grads(t), f.dim * sizeof *gp);
        memcpy(v1, f.vec, f.dim * sizeof *v1);
        loom_trainer_free(t);
    }
    memcpy(f.vec, v0, f.dim * sizeof *v0);
    t = NULL;
    CHECK_OK(trainer(&t, &f, &tc));
    if (t) {
        CHECK_OK(loom_trainer_step(t, tok, tgt, NULL, NULL));
        double d = rel_diff(loom_trainer_grads(t), gp, f.dim);
        CHECK(d < 1e-5, "%s %s: noiseless unclipped DP gradient differs from the mean gradient by %.3g", shape, mn, d);
        double moved = 0, off = 0;
        for (size_t i = 0; i < f.dim; i++) {
            moved = fmax(moved, fabs((double)v1[i] - v0[i]));
            off = fmax(off, fabs((double)f.vec[i] - v1[i]));
        }
        CHECK(moved > 0 && off <= 1e-5 * moved, "%s %s: DP step off the plain step by %.3g (step %.3g)", shape, mn, off,
              moved);
        loom_trainer_free(t);
    }
    free(v0); free(v1); free(gp);
    fixture_close(&f);
}

/* the noise: its size, its stream, its reproducibility */
static void noise(void) {
    fixture f;
    CHECK(fixture_open(&f, "gpt2-tiny", LOOM_PEFT_LORA), "%s", loom_errmsg());
    if (!f.m) return;
    int32_t tok[B * T], tgt[B * T];
    batch(loom_model_config(f.m)->vocab, 3, 0, tok, tgt);
    const float C = 0.25f, sigma = 1.5f;
    loom_train_config tc;
    config(&tc, C, 0.0f);
    loom_trainer *t0 = NULL, *t1 = NULL, *t2 = NULL, *t3 = NULL;
    CHECK_OK(trainer(&t0, &f, &tc));
    tc.dp_noise = sigma;
    CHECK_OK(trainer(&t1, &f, &tc));
    CHECK_OK(trainer(&t2, &f, &tc));
    tc.seed = 22;
    CHECK_OK(trainer(&t3, &f, &tc));
    if (!t0 || !t1 || !t2 || !t3) goto out;
    size_t n = f.dim;
    CHECK(n >= 4000, "LoRA set of %zu floats: too few coordinates for the statistics", n);
    CHECK_OK(loom_trainer_compute_gradient(t0, tok, tgt, NULL, NULL));
    CHECK_OK(loom_trainer_compute_gradient(t1, tok, tgt, NULL, NULL));
    CHECK_OK(loom_trainer_compute_gradient(t2, tok, tgt, NULL, NULL));
    CHECK_OK(loom_trainer_compute_gradient(t3, tok, tgt, NULL, NULL));
    const float *g0 = loom_trainer_grads(t0), *g1 = loom_trainer_grads(t1);
    CHECK(!memcmp(g1, loom_trainer_grads(t2), n * sizeof(float)), "the same seed gave other noise");
    CHECK(memcmp(g1, loom_trainer_grads(t3), n * sizeof(float)), "another seed gave the same noise");
    /* z_i = B (g1 - g0) / (sigma C) must be standard normal, and the stream's own values */
    float *z = malloc(n * sizeof *z);
    double s1 = 0, s2 = 0, maxdev = 0;
    long within = 0;
    uint64_t stream = loom_hash2(LOOM_STREAM_DP_NOISE, 0);
    for (size_t i = 0; i < n; i++) {
        z[i] = (float)((double)B * ((double)g1[i] - g0[i]) / (sigma * C));
        s1 += z[i];
        s2 += (double)z[i] * z[i];
        within += fabsf(z[i]) <= 1.0f;
        maxdev = fmax(maxdev, fabs(z[i] - loom_rng_normal_at(21, stream, i)));
    }
    double mean = s1 / n, sd = sqrt(s2 / n - mean * mean), p1 = 0.682689492;
    /* standard errors: mean 1/sqrt(n), sd 1/sqrt(2n), the 1-sigma fraction sqrt(p(1-p)/n) */
    CHECK(fabs(mean) < 5 / sqrt((double)n), "noise mean %.4g over %zu coordinates", mean, n);
    CHECK(fabs(sd - 1) < 5 / sqrt(2.0 * n), "noise std %.4f x sigma C / B over %zu coordinates (want 1 +- %.4f)", sd, n,
          5 / sqrt(2.0 * n));
    CHECK(fabs((double)within / n - p1) < 5 * sqrt(p1 * (1 - p1) / n), "%.4f of the noise within 1 sd", (double)within / n);
    CHECK(maxdev < 1e-3, "the noise is not the stream (seed, hash2(LOOM_STREAM_DP_NOISE, step)): off by %.3g", maxdev);
    /* a seed set for the noise (a federated client's, per round): that stream at the same step */
    loom_trainer_set_dp_seed(t2, 99);
    CHECK_OK(loom_trainer_compute_gradient(t2, tok, tgt, NULL, NULL));
    const float *g2 = loom_trainer_grads(t2);
    double dev99 = 0;
    for (size_t i = 0; i < n; i++)
        dev99 = fmax(dev99, fabs(B * ((double)g2[i] - g0[i]) / (sigma * C) - loom_rng_normal_at(99, stream, i)));
    CHECK(dev99 < 1e-3, "the noise does not follow loom_trainer_set_dp_seed: off by %.3g", dev99);
    /* the next step draws new noise */
    CHECK_OK(loom_trainer_apply_gradient(t1, NULL));
    CHECK_OK(loom_trainer_compute_gradient(t1, tok, tgt, NULL, NULL));
    g1 = loom_trainer_grads(t1);
    double corr = 0;
    for (size_t i = 0; i < n; i++) corr += (double)B * g1[i] / (sigma * C) * z[i];
    CHECK(fabs(corr / n) < 0.1, "step 1's noise correlates with step 0's (%.3f)", corr / n);
    free(z);
out:
    loom_trainer_free(t0); loom_trainer_free(t1); loom_trainer_free(t2); loom_trainer_free(t3);
    fixture_close(&f);
}

/* one example's effect on the noiseless sum is at most C, even with a huge loss */
static void bounded(const char *shape, loom_peft_method method) {
    const char *mn = loom_peft_method_name(method);
    fixture f;
    CHECK(fixture_open(&f, shape, method), "%s %s: %s", shape, mn, loom_errmsg());
    if (!f.m) return;
    int V = loom_model_config(f.m)->vocab;
    int32_t tok[B * T], tgt[B * T], tgt2[B * T];
    batch(V, 4, 1, tok, tgt);
    memcpy(tgt2, tgt, sizeof tgt);
    for (int t = 0; t < T; t++) tgt2[3 * T + t] = -1; /* the neighbour batch: row 3 removed */
    const float C = 0.05f;
    loom_train_config tc;
    config(&tc, C, 0.0f);
    loom_trainer *t = NULL;
    CHECK_OK(trainer(&t, &f, &tc));
    if (!t) goto out;
    float *g = malloc(f.dim * sizeof *g);
    for (int huge = 0; huge < 2; huge++) {
        if (huge) /* the vector scaled up: logits and losses far from the start's */
            for (size_t i = 0; i < f.dim; i++) f.vec[i] *= 8.0f;
        float loss;
        CHECK_OK(loom_trainer_compute_gradient(t, tok, tgt, &loss, NULL));
        memcpy(g, loom_trainer_grads(t), f.dim * sizeof *g);
        const float *nr = loom_trainer_dp_norms(t, NULL);
        float n3 = nr[3];
        CHECK_OK(loom_trainer_compute_gradient(t, tok, tgt2, NULL, NULL));
        const float *g2 = loom_trainer_grads(t);
        for (size_t i = 0; i < f.dim; i++) g[i] = (float)B * (g[i] - g2[i]);
        double eff = norm2(g, f.dim);
        CHECK(n3 > 2 * C, "%s %s: row 3's norm %.4g is not above the clip", shape, mn, (double)n3);
        CHECK(fabs(eff - C) <= 1e-4 * C, "%s %s (huge %d, loss %.3g, norm %.4g): one example moved the sum by %.6g, clip %g",
              shape, mn, huge, (double)loss, (double)n3, eff, (double)C);
        /* a row without targets moves nothing */
        CHECK(loom_trainer_dp_norms(t, NULL)[3] == 0.0f, "%s %s: a row without targets has a norm", shape, mn);
    }
    free(g);
out:
    loom_trainer_free(t);
    fixture_close(&f);
}

/* the same bits on 1 and 2 threads */
static void threads(void) {
    fixture f;
    CHECK(fixture_open(&f, "llama-tiny", LOOM_PEFT_LORA), "%s", loom_errmsg());
    if (!f.m) return;
    int32_t tok[B * T], tgt[B * T];
    batch(loom_model_config(f.m)->vocab, 5, 0, tok, tgt);
    loom_train_config tc;
    config(&tc, 0.1f, 1.0f);
    float *g[2] = {NULL, NULL};
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        loom_trainer *t = NULL;
        CHECK_OK(trainer(&t, &f, &tc));
        if (!t) continue;
        CHECK_OK(loom_trainer_compute_gradient(t, tok, tgt, NULL, NULL));
        g[k] = malloc(f.dim * sizeof(float));
        memcpy(g[k], loom_trainer_grads(t), f.dim * sizeof(float));
        loom_trainer_free(t);
    }
    omp_set_num_threads(saved);
    if (g[0] && g[1]) CHECK(!memcmp(g[0], g[1], f.dim * sizeof(float)), "1 and 2 threads give other DP gradients");
    free(g[0]);
    free(g[1]);
    fixture_close(&f);
}

static void refusals(void) {
    fixture f;
    CHECK(fixture_open(&f, "gpt2-tiny", LOOM_PEFT_LORA), "%s", loom_errmsg());
    if (!f.m) return;
    struct {
        float clip, noise;
        const char *msg;
    } bad[] = {{0.0f, 1.0f, "DP-SGD clip norm 0 must be finite and > 0"},
               {-1.0f, 1.0f, "DP-SGD clip norm -1 must be finite and > 0"},
               {NAN, 1.0f, "DP-SGD clip norm nan"},
               {INFINITY, 1.0f, "DP-SGD clip norm inf"},
               {1.0f, -0.5f, "DP-SGD noise multiplier -0.5 must be finite and >= 0"},
               {1.0f, NAN, "DP-SGD noise multiplier nan"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        loom_train_config tc;
        config(&tc, bad[i].clip, bad[i].noise);
        loom_trainer *t = NULL;
        int rc = trainer(&t, &f, &tc);
        CHECK(rc == LOOM_EINVAL && !t && strstr(loom_errmsg(), bad[i].msg), "clip %g noise %g: rc %d, %s", (double)bad[i].clip,
              (double)bad[i].noise, rc, loom_errmsg());
        loom_trainer_free(t);
    }
    loom_train_config tc;
    config(&tc, 1.0f, 1.0f);
    loom_trainer *t = NULL;
    CHECK_OK(trainer(&t, &f, &tc));
    int32_t tok[B * T] = {0};
    if (t) {
        int rc = loom_trainer_compute_gradient(t, tok, NULL, NULL, NULL);
        CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "DP-SGD needs targets"), "no targets: %s", loom_errmsg());
    }
    loom_trainer_free(t);
    fixture_close(&f);
}

int main(void) {
    routes_agree("gpt2-tiny", LOOM_PEFT_LORA);
    routes_agree("llama-tiny", LOOM_PEFT_LORA);
    routes_agree("gpt2-tiny", LOOM_PEFT_FULL);
    routes_agree("llama-tiny", LOOM_PEFT_FULL);
    routes_agree("llama-tiny", LOOM_PEFT_BITFIT);
    routes_agree("gpt2-tiny", LOOM_PEFT_ADAPTER);
    routes_agree("gpt2-tiny", LOOM_PEFT_PREFIX);
    routes_agree("llama-tiny", LOOM_PEFT_PROMPT);
    plain_when_noiseless("gpt2-tiny", LOOM_PEFT_LORA);
    plain_when_noiseless("llama-tiny", LOOM_PEFT_FULL);
    plain_when_noiseless("gpt2-tiny", LOOM_PEFT_BITFIT);
    noise();
    bounded("gpt2-tiny", LOOM_PEFT_LORA);
    bounded("llama-tiny", LOOM_PEFT_FULL);
    threads();
    refusals();
    return test_summary();
}
