/* Optimizers and schedules against hand-computed values (torch.optim semantics). */
#include "loom/core.h"
#include "loom/optim.h"
#include "test.h"

static void sgd_momentum(void) {
    /* torch.optim.SGD(lr=0.1, momentum=0.9): buf1 = g1; p1 = p0 - 0.1*buf1;
     * buf2 = 0.9*buf1 + g2; p2 = p1 - 0.1*buf2.
     * p0 = 1, g1 = 0.5, g2 = -1: buf1 = 0.5, p1 = 0.95; buf2 = 0.45 - 1 = -0.55, p2 = 0.95 + 0.055 = 1.005 */
    loom_opt_config c;
    loom_opt_defaults(&c, LOOM_OPT_SGD);
    c.lr = 0.1f;
    c.momentum = 0.9f;
    loom_optimizer *o;
    CHECK_OK(loom_optimizer_create(&o, &c, 1));
    float p = 1.0f, g1 = 0.5f, g2 = -1.0f;
    loom_optimizer_step(o, &p, &g1, 0.1f);
    CHECK_NEAR(p, 0.95, 1e-7);
    loom_optimizer_step(o, &p, &g2, 0.1f);
    CHECK_NEAR(p, 1.005, 1e-6);
    loom_optimizer_free(o);
    /* Nesterov: d = g + mu*buf. Step 1: buf = 0.5, d = 0.5 + 0.45 = 0.95, p = 1 - 0.095 = 0.905 */
    c.nesterov = 1;
    CHECK_OK(loom_optimizer_create(&o, &c, 1));
    p = 1.0f;
    loom_optimizer_step(o, &p, &g1, 0.1f);
    CHECK_NEAR(p, 0.905, 1e-6);
    loom_optimizer_free(o);
    /* weight decay (L2 in SGD): d = g + wd*p = 0.5 + 0.1*1 = 0.6; p = 1 - 0.1*0.6 = 0.94 */
    loom_opt_defaults(&c, LOOM_OPT_SGD);
    c.weight_decay = 0.1f;
    CHECK_OK(loom_optimizer_create(&o, &c, 1));
    p = 1.0f;
    loom_optimizer_step(o, &p, &g1, 0.1f);
    CHECK_NEAR(p, 0.94, 1e-7);
    loom_optimizer_free(o);
}

static void adamw_decay_and_mask(void) {
    /* AdamW step 1 with g = 0: the moment update is 0 and only decoupled decay acts:
     * p = p * (1 - lr*wd) = 2 * (1 - 0.01*0.5) = 1.99 where decay applies, 2 elsewhere. */
    loom_opt_config c;
    loom_opt_defaults(&c, LOOM_OPT_ADAMW);
    c.lr = 0.01f;
    c.weight_decay = 0.5f;
    loom_optimizer *o;
    CHECK_OK(loom_optimizer_create(&o, &c, 4));
    size_t b[1] = {1}, e[1] = {3};
    CHECK_OK(loom_optimizer_decay_ranges(o, b, e, 1));
    float p[4] = {2, 2, 2, 2}, g[4] = {0, 0, 0, 0};
    loom_optimizer_step(o, p, g, 0.01f);
    CHECK(p[0] == 2.0f && p[3] == 2.0f, "no decay outside the ranges");
    CHECK_NEAR(p[1], 1.99, 1e-6);
    CHECK_NEAR(p[2], 1.99, 1e-6);
    /* step 2 with g = 1 on element 0: m = 0.9*0 + 0.1 = 0.1, v = 0.001; bias corrections t=2:
     * m_hat = 0.1/0.19, v_hat = 0.001/(1-0.999^2); update = lr * m_hat / (sqrt(v_hat) + eps) */
    float g2[4] = {1, 0, 0, 0};
    loom_optimizer_step(o, p, g2, 0.01f);
    double mh = 0.1 / (1 - 0.81), vh = 0.001 / (1 - 0.999 * 0.999);
    CHECK_NEAR(p[0], 2.0 - 0.01 * mh / (sqrt(vh) + 1e-8), 1e-6);
    loom_optimizer_free(o);
    /* refused settings */
    c.beta1 = 1.0f;
    CHECK(loom_optimizer_create(&o, &c, 1) == LOOM_EINVAL && strstr(loom_errmsg(), "beta1"), "beta1 = 1 refused");
}

static void clipping_and_schedule(void) {
    float g[4] = {3, 4, 0, 0}; /* norm 5 */
    double n = loom_clip_grad_norm(g, 4, 1.0);
    CHECK_NEAR(n, 5.0, 1e-9);
    CHECK_NEAR(g[0], 0.6, 1e-6);
    CHECK_NEAR(g[1], 0.8, 1e-6);
    n = loom_clip_grad_norm(g, 4, 10.0);
    CHECK_NEAR(g[0], 0.6, 1e-6); /* below the bound: unchanged */
    /* warm-up: lr*(s+1)/W; cosine: min + (base-min)/2*(1+cos(pi*progress)) */
    CHECK_NEAR(loom_lr_cosine(1.0f, 0.1f, 0, 10, 110), 0.1, 1e-7);
    CHECK_NEAR(loom_lr_cosine(1.0f, 0.1f, 9, 10, 110), 1.0, 1e-7);
    CHECK_NEAR(loom_lr_cosine(1.0f, 0.1f, 10, 10, 110), 1.0, 1e-6);
    CHECK_NEAR(loom_lr_cosine(1.0f, 0.1f, 60, 10, 110), 0.55, 1e-6); /* halfway: cos(pi/2) = 0 */
    CHECK_NEAR(loom_lr_cosine(1.0f, 0.1f, 110, 10, 110), 0.1, 1e-6);
}

int main(void) {
    sgd_momentum();
    adamw_decay_and_mask();
    clipping_and_schedule();
    return test_summary();
}
