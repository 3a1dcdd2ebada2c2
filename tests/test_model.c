/* Model forward/backward: gradients against central differences, for GPT-2 (both GELUs, tied and
 * untied) and Llama (GQA, q/k/v biases, tied and untied heads); ignored targets; thread-count
 * independence; KV-cached decoding.
 *
 * Two gradient checks (test_grad_check and test_grad_check_elems in test.h):
 *  - per tensor of a tiny model, the derivative along the tensor's own gradient direction must equal
 *    |g| (relative error < FD_TOL_GRAD) and along three random directions must match to FD_TOL_RAND
 *    of a typical directional derivative |g|/sqrt(n);
 *  - every element of every tensor of a micro model (C = 8) against its own central difference.
 * Mutations of src/model/model.c's backward that these checks were seen to catch (each test fails,
 * naming the tensor): c_attn.weight gradient halved; ln_1.bias gradient halved; attention output
 * projection (c_proj / o_proj) halved; Llama q/k/v weight gradient halved; input_layernorm.weight
 * halved; token-embedding contribution halved; one row of c_attn.weight / q_proj.weight off by 10%
 * (caught by the element check only); one element of the MLP down-projection halved (element check
 * only). The earlier check (error relative to |g| along one random direction) passed the first. */
#include <omp.h>

#include "loom/core.h"
#include "loom/model.h"
#include "model/model_impl.h"
#include "test.h"

enum { B = 2, T = 8 };
/* finite differences: directions per tensor, step, tolerances (see test_grad_check in test.h) */
#define FD_DIRS 4
#define FD_STEP 1e-2
#define FD_TOL_GRAD 1e-2
#define FD_TOL_RAND 1e-1
#define FD_TOL_ELEM 1e-2


typedef struct {
    const loom_model *m;
    loom_ws *ws;
    const int32_t *tok, *tgt;
} loss_ctx;

static double loss_of(void *ctx, const float *params) {
    loss_ctx *c = ctx;
    float l = 0;
    loom_forward(c->m, params, c->ws, c->tok, c->tgt, B, T, &l);
    return l;
}

typedef struct {
    const loom_model *m;
    loom_ws *ws;
    const int32_t *tok, *tgt;
    int B, T;
} elem_ctx;

static double elem_loss(void *ctx, const float *params) {
    elem_ctx *c = ctx;
    float l = 0;
    loom_forward(c->m, params, c->ws, c->tok, c->tgt, c->B, c->T, &l);
    return l;
}

static void fd_check(const char *label, loom_config *cfg, int ignore_some) {
    loom_model *m;
    CHECK_OK(loom_model_create(&m, cfg, 11));
    if (!m) return;
    /* larger-than-default weights so every path carries signal */
    loom_rng r;
    loom_rng_init(&r, 5, 0);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.05f * (float)loom_rng_normal(&r);
    loom_ws *ws;
    CHECK_OK(loom_ws_create(&ws, m, B, T));
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)cfg->vocab);
        tgt[i] = (int32_t)loom_rng_below(&r, (uint32_t)cfg->vocab);
        if (ignore_some && i % 3 == 0) tgt[i] = -1;
    }
    float *g = loom_calloc(m->n_params, sizeof(float));
    float *p = loom_alloc(m->n_params * sizeof(float));
    memcpy(p, m->params, m->n_params * sizeof(float));
    float l0;
    CHECK_OK(loom_forward(m, m->params, ws, tok, tgt, B, T, &l0));
    CHECK_OK(loom_backward(m, m->params, ws, g, NULL));
    loss_ctx c = {m, ws, tok, tgt};
    double worst_g = 0, worst_r = 0;
    const char *worst_name = "";
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const loom_tensor *t = &m->tensors[ti];
        size_t n = t->numel;
        if (t->kind == LOOM_T_POS) n = (size_t)T * cfg->dim; /* rows >= T have zero gradient; checked below */
        double eg, er;
        test_grad_check(loss_of, &c, p, t->offset, n, g, FD_DIRS, 1000 + (uint64_t)ti, FD_STEP, &eg, &er);
        if (fmax(eg / FD_TOL_GRAD, er / FD_TOL_RAND) > fmax(worst_g / FD_TOL_GRAD, worst_r / FD_TOL_RAND)) worst_name = t->name;
        worst_g = fmax(worst_g, eg);
        worst_r = fmax(worst_r, er);
        CHECK(eg < FD_TOL_GRAD && er < FD_TOL_RAND,
              "%s: %s: gradient disagrees with central differences: relative error %.3g along the gradient, %.3g along random directions",
              label, t->name, eg, er);
    }
    printf("%s: worst relative finite-difference error %.2e along the gradient, %.2e along random directions (%s)\n", label,
           worst_g, worst_r, worst_name);
    if (cfg->arch == LOOM_ARCH_GPT2) {
        const loom_tensor *t = &m->tensors[m->t_pos];
        int zero = 1;
        for (size_t j = (size_t)T * cfg->dim; j < t->numel; j++) zero &= g[t->offset + j] == 0.0f;
        CHECK(zero, "%s: position rows >= T get no gradient", label);
    }
    loom_free(g);
    loom_free(p);
    loom_ws_free(ws);
    loom_model_free(m);
}

/* Every element of every tensor of a very small model (C = 8, two layers, T = 4) against its own
 * central difference: catches errors confined to a row, a head or a single element, which
 * directional checks on larger tensors average away. */
static void fd_elements(const char *label, loom_config *cfg) {
    enum { EB = 2, ET = 4 };
    loom_model *m;
    CHECK_OK(loom_model_create(&m, cfg, 23));
    if (!m) return;
    loom_rng r;
    loom_rng_init(&r, 6, 0);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.2f * (float)loom_rng_normal(&r);
    loom_ws *ws;
    CHECK_OK(loom_ws_create(&ws, m, EB, ET));
    int32_t tok[EB * ET], tgt[EB * ET];
    for (int i = 0; i < EB * ET; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)cfg->vocab);
        tgt[i] = i == 5 ? -1 : (int32_t)loom_rng_below(&r, (uint32_t)cfg->vocab);
    }
    float *g = loom_calloc(m->n_params, sizeof(float));
    float *p = loom_alloc(m->n_params * sizeof(float));
    memcpy(p, m->params, m->n_params * sizeof(float));
    float l0;
    CHECK_OK(loom_forward(m, m->params, ws, tok, tgt, EB, ET, &l0));
    CHECK_OK(loom_backward(m, m->params, ws, g, NULL));
    elem_ctx c = {m, ws, tok, tgt, EB, ET};
    double worst = 0;
    const char *worst_name = "";
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const loom_tensor *t = &m->tensors[ti];
        size_t at;
        double e = test_grad_check_elems(elem_loss, &c, p, t->offset, t->numel, g, FD_STEP, &at);
        if (e > worst) worst = e, worst_name = t->name;
        CHECK(e < FD_TOL_ELEM, "%s: %s[%zu]: gradient %.6g disagrees with its central difference (error %.3g of the largest)",
              label, t->name, at, g[t->offset + at], e);
    }
    printf("%s: %zu values one by one, worst error %.2e of the tensor's largest gradient (%s)\n", label, m->n_params,
           worst, worst_name);
    loom_free(g);
    loom_free(p);
    loom_ws_free(ws);
    loom_model_free(m);
}

static void ignore_label(void) {
    /* A batch where half the targets are ignored has the mean loss of the counted positions only. */
    loom_config cfg;
    loom_config_named(&cfg, "gpt2-tiny");
    loom_model *m;
    CHECK_OK(loom_model_create(&m, &cfg, 3));
    loom_ws *ws;
    CHECK_OK(loom_ws_create(&ws, m, B, T));
    int32_t tok[B * T], tgt[B * T], tgt2[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 7) % cfg.vocab;
        tgt[i] = (i * 13 + 1) % cfg.vocab;
        tgt2[i] = i % 2 ? tgt[i] : -1;
    }
    float lall, lhalf;
    CHECK_OK(loom_forward(m, m->params, ws, tok, tgt, B, T, &lall));
    double s = 0;
    const float *per = loom_ws_losses(ws);
    for (int i = 1; i < B * T; i += 2) s += per[i];
    CHECK_OK(loom_forward(m, m->params, ws, tok, tgt2, B, T, &lhalf));
    CHECK_NEAR(lhalf, s / (B * T / 2), 1e-5);
    /* all ignored: loss 0 and zero gradient */
    for (int i = 0; i < B * T; i++) tgt2[i] = -100;
    float lnone;
    CHECK_OK(loom_forward(m, m->params, ws, tok, tgt2, B, T, &lnone));
    CHECK(lnone == 0.0f, "all-ignored loss %g", lnone);
    float *g = loom_calloc(m->n_params, sizeof(float));
    CHECK_OK(loom_backward(m, m->params, ws, g, NULL));
    int zero = 1;
    for (size_t j = 0; j < m->n_params; j++) zero &= g[j] == 0.0f;
    CHECK(zero, "all-ignored batch gives a zero gradient");
    loom_free(g);
    loom_ws_free(ws);
    loom_model_free(m);
}

static void thread_independence(void) {
    loom_config cfg;
    loom_config_named(&cfg, "llama-tiny");
    loom_model *m;
    CHECK_OK(loom_model_create(&m, &cfg, 9));
    loom_ws *ws;
    CHECK_OK(loom_ws_create(&ws, m, 4, 16));
    int32_t tok[64], tgt[64];
    for (int i = 0; i < 64; i++) {
        tok[i] = (i * 31 + 5) % cfg.vocab;
        tgt[i] = (i * 17 + 2) % cfg.vocab;
    }
    float *g1 = loom_calloc(m->n_params, sizeof(float)), *g2 = loom_calloc(m->n_params, sizeof(float));
    float l1, l2;
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    loom_forward(m, m->params, ws, tok, tgt, 4, 16, &l1);
    loom_backward(m, m->params, ws, g1, NULL);
    omp_set_num_threads(saved > 1 ? saved : 2);
    loom_forward(m, m->params, ws, tok, tgt, 4, 16, &l2);
    loom_backward(m, m->params, ws, g2, NULL);
    omp_set_num_threads(saved);
    double md = 0, mg = 0;
    for (size_t j = 0; j < m->n_params; j++) {
        md = fmax(md, fabs(g1[j] - g2[j]));
        mg = fmax(mg, fabs(g1[j]));
    }
    CHECK_NEAR(l1, l2, 1e-6);
    CHECK(md <= 1e-6 * mg, "gradients with 1 and %d threads differ by %g (max %g)", saved, md, mg);
    loom_free(g1);
    loom_free(g2);
    loom_ws_free(ws);
    loom_model_free(m);
}

/* KV-cached decoding equals the full forward pass position by position (GPT-2 and Llama with GQA). */
static void decode_matches_forward(const char *shape) {
    loom_config cfg;
    loom_config_named(&cfg, shape);
    loom_model *m;
    CHECK_OK(loom_model_create(&m, &cfg, 17));
    loom_rng r;
    loom_rng_init(&r, 3, 1);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.05f * (float)loom_rng_normal(&r);
    enum { TT = 24 };
    int32_t tok[TT];
    for (int i = 0; i < TT; i++) tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)cfg.vocab);
    loom_ws *ws;
    CHECK_OK(loom_ws_create(&ws, m, 1, TT));
    CHECK_OK(loom_forward(m, m->params, ws, tok, NULL, 1, TT, NULL));
    const float *full = loom_ws_logits(ws);
    loom_kv *kv;
    CHECK_OK(loom_kv_create(&kv, m, TT));
    float *lg = malloc((size_t)cfg.vocab * sizeof *lg);
    double md = 0, mx = 0;
    for (int t = 0; t < TT; t++) {
        CHECK_OK(loom_decode_step(m, m->params, kv, tok[t], t, lg));
        for (int v = 0; v < cfg.vocab; v++) {
            md = fmax(md, fabs(lg[v] - full[(size_t)t * cfg.vocab + v]));
            mx = fmax(mx, fabs(full[(size_t)t * cfg.vocab + v]));
        }
    }
    CHECK(md <= 1e-5 * mx + 1e-5, "%s: decode vs forward logits max |d| %g (max |logit| %g)", shape, md, mx);
    CHECK(loom_decode_step(m, m->params, kv, tok[0], TT, lg) == LOOM_ERANGE, "%s: position past the cache refused", shape);
    free(lg);
    loom_kv_free(kv);
    loom_ws_free(ws);
    loom_model_free(m);
}

int main(void) {
    decode_matches_forward("gpt2-tiny");
    decode_matches_forward("llama-tiny");
    /* one thread for the many small forward passes of the finite differences (thread-count
     * independence is checked separately) */
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    loom_config cfg;
    loom_config_named(&cfg, "gpt2-tiny");
    cfg.vocab = 37;
    cfg.max_seq = 16;
    cfg.act = LOOM_ACT_GELU_TANH;
    fd_check("gpt2 gelu_new", &cfg, 0);
    cfg.act = LOOM_ACT_GELU_ERF;
    fd_check("gpt2 gelu", &cfg, 1);
    cfg.tied = 0;
    fd_check("gpt2 untied", &cfg, 0);
    loom_config_named(&cfg, "llama-tiny");
    cfg.vocab = 41;
    fd_check("llama gqa", &cfg, 1);
    cfg.qkv_bias = 1;
    cfg.tied = 1;
    cfg.n_kv_head = 4;
    fd_check("llama qkv-bias tied mha", &cfg, 0);
    loom_config_named(&cfg, "gpt2-tiny");
    cfg.dim = 8, cfg.n_head = 2, cfg.n_kv_head = 2, cfg.hidden = 32, cfg.vocab = 11, cfg.max_seq = 4, cfg.tied = 0;
    fd_elements("gpt2 micro untied", &cfg);
    cfg.tied = 1;
    cfg.act = LOOM_ACT_GELU_ERF;
    fd_elements("gpt2 micro tied gelu", &cfg);
    loom_config_named(&cfg, "llama-tiny");
    cfg.dim = 8, cfg.n_head = 2, cfg.n_kv_head = 1, cfg.hidden = 12, cfg.vocab = 11, cfg.max_seq = 8;
    fd_elements("llama micro gqa", &cfg);
    cfg.qkv_bias = 1, cfg.tied = 1, cfg.n_kv_head = 2;
    fd_elements("llama micro qkv-bias tied", &cfg);
    omp_set_num_threads(saved);
    ignore_label();
    thread_independence();
    return test_summary();
}
