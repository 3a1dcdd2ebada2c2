/* GPT-2 and Llama: parameter layout, initialisation, forward and backward over one flat buffer. */
#include "loom/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/kernels.h"
#include "model/model_impl.h"

/* ---------------------------------------------------------------- layout */

static int add_tensor(loom_model *m, int cap, const char *name, loom_tensor_kind kind, int layer, int ndim,
                      int64_t d0, int64_t d1) {
    if (m->n_tensors >= cap) return -1;
    loom_tensor *t = &m->tensors[m->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->layer = layer;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim > 1 ? d1 : 0;
    t->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    t->offset = m->n_params;
    m->n_params += t->numel;
    return m->n_tensors++;
}

static int build_layout(loom_model *m) {
    const loom_config *c = &m->cfg;
    int L = c->n_layer, C = c->dim, H = c->hidden, V = c->vocab;
    int KV = c->n_kv_head * (C / c->n_head);
    int cap = 8 + L * LOOM_L_NSLOTS;
    m->tensors = calloc((size_t)cap, sizeof *m->tensors);
    m->layer_slot = malloc((size_t)L * sizeof *m->layer_slot);
    if (!m->tensors || !m->layer_slot) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int l = 0; l < L; l++)
        for (int s = 0; s < LOOM_L_NSLOTS; s++) m->layer_slot[l][s] = -1;
    m->t_pos = m->t_normf_b = -1;
    char nm[96];
    if (c->arch == LOOM_ARCH_GPT2) {
        m->t_embed = add_tensor(m, cap, "transformer.wte.weight", LOOM_T_EMBED, -1, 2, V, C);
        m->t_pos = add_tensor(m, cap, "transformer.wpe.weight", LOOM_T_POS, -1, 2, c->max_seq, C);
        for (int l = 0; l < L; l++) {
            int *s = m->layer_slot[l];
#define T_(slot, suffix, kind, nd, a, b)                                  \
    snprintf(nm, sizeof nm, "transformer.h.%d.%s", l, suffix);            \
    s[slot] = add_tensor(m, cap, nm, kind, l, nd, a, b)
            T_(LOOM_L_NORM1_W, "ln_1.weight", LOOM_T_NORM_W, 1, C, 0);
            T_(LOOM_L_NORM1_B, "ln_1.bias", LOOM_T_NORM_B, 1, C, 0);
            T_(LOOM_L_QKV_W, "attn.c_attn.weight", LOOM_T_LINEAR_W, 2, C, 3 * C);
            T_(LOOM_L_QKV_B, "attn.c_attn.bias", LOOM_T_LINEAR_B, 1, 3 * C, 0);
            T_(LOOM_L_O_W, "attn.c_proj.weight", LOOM_T_LINEAR_W, 2, C, C);
            T_(LOOM_L_O_B, "attn.c_proj.bias", LOOM_T_LINEAR_B, 1, C, 0);
            T_(LOOM_L_NORM2_W, "ln_2.weight", LOOM_T_NORM_W, 1, C, 0);
            T_(LOOM_L_NORM2_B, "ln_2.bias", LOOM_T_NORM_B, 1, C, 0);
            T_(LOOM_L_UP_W, "mlp.c_fc.weight", LOOM_T_LINEAR_W, 2, C, H);
            T_(LOOM_L_UP_B, "mlp.c_fc.bias", LOOM_T_LINEAR_B, 1, H, 0);
            T_(LOOM_L_DOWN_W, "mlp.c_proj.weight", LOOM_T_LINEAR_W, 2, H, C);
            T_(LOOM_L_DOWN_B, "mlp.c_proj.bias", LOOM_T_LINEAR_B, 1, C, 0);
        }
        m->t_normf_w = add_tensor(m, cap, "transformer.ln_f.weight", LOOM_T_NORM_W, -1, 1, C, 0);
        m->t_normf_b = add_tensor(m, cap, "transformer.ln_f.bias", LOOM_T_NORM_B, -1, 1, C, 0);
        m->t_head = c->tied ? m->t_embed : add_tensor(m, cap, "lm_head.weight", LOOM_T_HEAD, -1, 2, V, C);
    } else {
        m->t_embed = add_tensor(m, cap, "model.embed_tokens.weight", LOOM_T_EMBED, -1, 2, V, C);
        for (int l = 0; l < L; l++) {
            int *s = m->layer_slot[l];
#undef T_
#define T_(slot, suffix, kind, nd, a, b)                                  \
    snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix);             \
    s[slot] = add_tensor(m, cap, nm, kind, l, nd, a, b)
            T_(LOOM_L_NORM1_W, "input_layernorm.weight", LOOM_T_NORM_W, 1, C, 0);
            /* q, k, v adjacent: one [C + 2KV, C] matrix */
            T_(LOOM_L_QKV_W, "self_attn.q_proj.weight", LOOM_T_LINEAR_W, 2, C, C);
            T_(LOOM_L_K_W, "self_attn.k_proj.weight", LOOM_T_LINEAR_W, 2, KV, C);
            T_(LOOM_L_V_W, "self_attn.v_proj.weight", LOOM_T_LINEAR_W, 2, KV, C);
            if (c->qkv_bias) {
                /* q, k, v biases adjacent: one [C + 2KV] vector */
                T_(LOOM_L_QKV_B, "self_attn.q_proj.bias", LOOM_T_LINEAR_B, 1, C, 0);
                snprintf(nm, sizeof nm, "model.layers.%d.self_attn.k_proj.bias", l);
                add_tensor(m, cap, nm, LOOM_T_LINEAR_B, l, 1, KV, 0);
                snprintf(nm, sizeof nm, "model.layers.%d.self_attn.v_proj.bias", l);
                add_tensor(m, cap, nm, LOOM_T_LINEAR_B, l, 1, KV, 0);
            }
            T_(LOOM_L_O_W, "self_attn.o_proj.weight", LOOM_T_LINEAR_W, 2, C, C);
            T_(LOOM_L_NORM2_W, "post_attention_layernorm.weight", LOOM_T_NORM_W, 1, C, 0);
            /* gate, up adjacent: one [2H, C] matrix */
            T_(LOOM_L_GATE_W, "mlp.gate_proj.weight", LOOM_T_LINEAR_W, 2, H, C);
            T_(LOOM_L_UP_W, "mlp.up_proj.weight", LOOM_T_LINEAR_W, 2, H, C);
            T_(LOOM_L_DOWN_W, "mlp.down_proj.weight", LOOM_T_LINEAR_W, 2, C, H);
#undef T_
        }
        m->t_normf_w = add_tensor(m, cap, "model.norm.weight", LOOM_T_NORM_W, -1, 1, C, 0);
        m->t_head = c->tied ? m->t_embed : add_tensor(m, cap, "lm_head.weight", LOOM_T_HEAD, -1, 2, V, C);
    }
    return LOOM_OK;
}

int loom_model_find(const loom_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return i;
    return -1;
}

/* Allocates the layout and an uninitialised parameter buffer. */
int loom_model_alloc(loom_model **out, const loom_config *cfg) {
    *out = NULL;
    int rc = loom_config_validate(cfg);
    if (rc != LOOM_OK) return rc;
    loom_model *m = calloc(1, sizeof *m);
    if (!m) return loom_error(LOOM_ENOMEM, "out of memory");
    m->cfg = *cfg;
    if ((rc = build_layout(m)) != LOOM_OK) {
        loom_model_free(m);
        return rc;
    }
    m->params = loom_alloc(m->n_params * sizeof(float));
    if (!m->params) {
        size_t n = m->n_params;
        loom_model_free(m);
        return loom_error(LOOM_ENOMEM, "out of memory for %zu parameters", n);
    }
    *out = m;
    return LOOM_OK;
}

void loom_model_free(loom_model *m) {
    if (!m) return;
    free(m->tensors);
    free(m->layer_slot);
    loom_free(m->params);
    free(m);
}

int loom_model_create(loom_model **out, const loom_config *cfg, uint64_t seed) {
    int rc = loom_model_alloc(out, cfg);
    if (rc != LOOM_OK) return rc;
    loom_model *m = *out;
    float resid_std = 0.02f / sqrtf(2.0f * cfg->n_layer);
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < m->n_tensors; i++) {
        loom_tensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
        loom_rng r;
        loom_rng_init(&r, seed, (uint64_t)i);
        int is_resid = strstr(t->name, "c_proj.weight") || strstr(t->name, "o_proj.weight") ||
                       strstr(t->name, "down_proj.weight");
        switch (t->kind) {
        case LOOM_T_NORM_W:
            for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f;
            break;
        case LOOM_T_NORM_B:
        case LOOM_T_LINEAR_B:
            memset(p, 0, t->numel * sizeof *p);
            break;
        case LOOM_T_POS: {
            for (size_t j = 0; j < t->numel; j++) p[j] = 0.01f * (float)loom_rng_normal(&r);
            break;
        }
        default: {
            float sd = is_resid ? resid_std : 0.02f;
            for (size_t j = 0; j < t->numel; j++) p[j] = sd * (float)loom_rng_normal(&r);
        }
        }
    }
    return LOOM_OK;
}

double loom_model_flops_per_token(const loom_model *m, int T, int with_attention) {
    const loom_config *c = &m->cfg;
    double macs = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const loom_tensor *t = &m->tensors[i];
        if (t->kind == LOOM_T_LINEAR_W || t->kind == LOOM_T_HEAD) macs += (double)t->numel;
    }
    if (c->tied) macs += (double)m->tensors[m->t_embed].numel; /* the head matmul */
    if (with_attention) macs += 2.0 * c->n_layer * (double)T * c->dim; /* QK^T and PV, full rows */
    return macs;
}

/* ---------------------------------------------------------------- workspace */

struct loom_ws {
    int B, T, L, C, H, V, QKV, mlp_in; /* mlp_in: width of the MLP's first matmul output (H or 2H) */
    float *mem;
    size_t bytes;
    /* saved activations */
    float **res;      /* [L+1][N*C] residual stream at each layer input (res[L] = final) */
    float **n1, **mean1, **rstd1, **qkv, **att, **atty, **res2, **n2, **mean2, **rstd2, **fch, **fca;
    float *nf, *meanf, *rstdf, *logits, *losses;
    /* backward scratch */
    float *dres, *dn, *dqkv, *datty, *dfch, *dfca, *datt, *tmp;
    int n_valid;
    int have_forward;
    const int32_t *tokens, *targets;
    int curB, curT;
    int32_t *tok_copy, *tgt_copy;
};

int loom_ws_create(loom_ws **out, const loom_model *m, int B, int T) {
    *out = NULL;
    const loom_config *c = &m->cfg;
    if (B < 1 || T < 1) return loom_error(LOOM_EINVAL, "batch %d x %d is empty", B, T);
    if (T > c->max_seq) return loom_error(LOOM_EINVAL, "sequence length %d exceeds the model's %d positions", T, c->max_seq);
    loom_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return loom_error(LOOM_ENOMEM, "out of memory");
    int L = c->n_layer, C = c->dim, H = c->hidden, V = c->vocab;
    int KV = c->n_kv_head * (C / c->n_head);
    size_t N = (size_t)B * T;
    ws->B = B; ws->T = T; ws->L = L; ws->C = C; ws->H = H; ws->V = V;
    ws->QKV = C + 2 * KV;
    ws->mlp_in = c->arch == LOOM_ARCH_LLAMA ? 2 * H : H;
    size_t att = (size_t)B * c->n_head * T * T;
    size_t per_layer = N * C * 4 + N * 4 + N * ws->QKV + att + N * ws->mlp_in + N * H;
    size_t total = (size_t)(L + 1) * N * C + (size_t)L * per_layer + N * C + 2 * N + N * V + N +
                   /* scratch */ N * C * 4 + N * ws->QKV + N * ws->mlp_in + N * H + att + 2 * N;
    ws->mem = loom_alloc(total * sizeof(float));
    float ***lists[] = {&ws->res, &ws->n1, &ws->mean1, &ws->rstd1, &ws->qkv, &ws->att, &ws->atty, &ws->res2,
                        &ws->n2, &ws->mean2, &ws->rstd2, &ws->fch, &ws->fca};
    int ok = ws->mem != NULL;
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        *lists[i] = calloc((size_t)L + 1, sizeof(float *));
        ok &= *lists[i] != NULL;
    }
    ws->tok_copy = malloc(N * sizeof(int32_t));
    ws->tgt_copy = malloc(N * sizeof(int32_t));
    if (!ok || !ws->tok_copy || !ws->tgt_copy) {
        loom_ws_free(ws);
        return loom_error(LOOM_ENOMEM, "out of memory for activations of batch %d x %d (%.1f MiB)", B, T,
                          total * 4.0 / (1 << 20));
    }
    ws->bytes = total * sizeof(float);
    float *p = ws->mem;
#define TAKE(n) (p += (n), p - (n))
    for (int l = 0; l <= L; l++) ws->res[l] = TAKE(N * C);
    for (int l = 0; l < L; l++) {
        ws->n1[l] = TAKE(N * C);
        ws->mean1[l] = TAKE(N);
        ws->rstd1[l] = TAKE(N);
        ws->qkv[l] = TAKE(N * ws->QKV);
        ws->att[l] = TAKE(att);
        ws->atty[l] = TAKE(N * C);
        ws->res2[l] = TAKE(N * C);
        ws->n2[l] = TAKE(N * C);
        ws->mean2[l] = TAKE(N);
        ws->rstd2[l] = TAKE(N);
        ws->fch[l] = TAKE(N * ws->mlp_in);
        ws->fca[l] = TAKE(N * H);
    }
    ws->nf = TAKE(N * C);
    ws->meanf = TAKE(N);
    ws->rstdf = TAKE(N);
    ws->logits = TAKE(N * V);
    ws->losses = TAKE(N);
    ws->dres = TAKE(N * C);
    ws->dn = TAKE(N * C);
    ws->datty = TAKE(N * C);
    ws->tmp = TAKE(N * C);
    ws->dqkv = TAKE(N * ws->QKV);
    ws->dfch = TAKE(N * ws->mlp_in);
    ws->dfca = TAKE(N * H);
    ws->datt = TAKE(att);
#undef TAKE
    *out = ws;
    return LOOM_OK;
}

void loom_ws_free(loom_ws *ws) {
    if (!ws) return;
    loom_free(ws->mem);
    free(ws->res); free(ws->n1); free(ws->mean1); free(ws->rstd1); free(ws->qkv); free(ws->att);
    free(ws->atty); free(ws->res2); free(ws->n2); free(ws->mean2); free(ws->rstd2); free(ws->fch); free(ws->fca);
    free(ws->tok_copy);
    free(ws->tgt_copy);
    free(ws);
}

size_t loom_ws_bytes(const loom_ws *ws) { return ws->bytes; }
float *loom_ws_logits(loom_ws *ws) { return ws->logits; }
const float *loom_ws_losses(const loom_ws *ws) { return ws->losses; }

/* ---------------------------------------------------------------- forward */

#define P(idx) (params + m->tensors[idx].offset)
#define SLOT(l, s) (m->layer_slot[l][s])
#define PW(l, s) (SLOT(l, s) >= 0 ? P(SLOT(l, s)) : NULL)

int loom_forward(const loom_model *m, const float *params, loom_ws *ws, const int32_t *tokens,
                 const int32_t *targets, int B, int T, float *loss) {
    const loom_config *c = &m->cfg;
    if (B > ws->B || T > ws->T || B < 1 || T < 1)
        return loom_error(LOOM_EINVAL, "batch %d x %d does not fit the workspace (%d x %d)", B, T, ws->B, ws->T);
    const int C = c->dim, H = c->hidden, V = c->vocab, NH = c->n_head, NKV = c->n_kv_head, HS = C / NH;
    const int QKV = ws->QKV, N = B * T;
    const int gpt2 = c->arch == LOOM_ARCH_GPT2;
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= V)
            return loom_error(LOOM_ERANGE, "token %d at position %d is outside the vocabulary (%d)", tokens[n], n, V);
    memcpy(ws->tok_copy, tokens, (size_t)N * sizeof(int32_t));
    ws->curB = B;
    ws->curT = T;

    /* embeddings */
    const float *wte = P(m->t_embed), *wpe = gpt2 ? P(m->t_pos) : NULL;
    float *x0 = ws->res[0];
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *e = wte + (size_t)tokens[n] * C;
        float *o = x0 + (size_t)n * C;
        if (wpe) {
            const float *pp = wpe + (size_t)(n % T) * C;
            for (int i = 0; i < C; i++) o[i] = e[i] + pp[i];
        } else {
            memcpy(o, e, (size_t)C * sizeof *o);
        }
    }

    for (int l = 0; l < c->n_layer; l++) {
        float *x = ws->res[l], *x2 = ws->res2[l], *x3 = ws->res[l + 1];
        if (gpt2)
            loom_layernorm_forward(ws->n1[l], ws->mean1[l], ws->rstd1[l], x, PW(l, LOOM_L_NORM1_W), PW(l, LOOM_L_NORM1_B),
                                   N, C, c->norm_eps);
        else
            loom_rmsnorm_forward(ws->n1[l], ws->rstd1[l], x, PW(l, LOOM_L_NORM1_W), N, C, c->norm_eps);
        int lay = gpt2 ? LOOM_W_CONV1D : LOOM_W_LINEAR;
        loom_matmul_forward(ws->qkv[l], QKV, ws->n1[l], C, PW(l, LOOM_L_QKV_W), lay, PW(l, LOOM_L_QKV_B), N, C, QKV);
        if (!gpt2) {
            loom_rope(ws->qkv[l], QKV, B, T, NH, HS, c->rope_theta, 0, 0);
            loom_rope(ws->qkv[l] + C, QKV, B, T, NKV, HS, c->rope_theta, 0, 0);
        }
        loom_attention_forward(ws->atty[l], ws->att[l], ws->qkv[l], QKV, B, T, NH, NKV, HS);
        loom_matmul_forward(ws->tmp, C, ws->atty[l], C, PW(l, LOOM_L_O_W), lay, PW(l, LOOM_L_O_B), N, C, C);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < (size_t)N * C; i++) x2[i] = x[i] + ws->tmp[i];
        if (gpt2) {
            loom_layernorm_forward(ws->n2[l], ws->mean2[l], ws->rstd2[l], x2, PW(l, LOOM_L_NORM2_W),
                                   PW(l, LOOM_L_NORM2_B), N, C, c->norm_eps);
            loom_matmul_forward(ws->fch[l], H, ws->n2[l], C, PW(l, LOOM_L_UP_W), lay, PW(l, LOOM_L_UP_B), N, C, H);
            loom_gelu_forward(ws->fca[l], ws->fch[l], (size_t)N * H, c->act == LOOM_ACT_GELU_ERF);
        } else {
            loom_rmsnorm_forward(ws->n2[l], ws->rstd2[l], x2, PW(l, LOOM_L_NORM2_W), N, C, c->norm_eps);
            loom_matmul_forward(ws->fch[l], 2 * H, ws->n2[l], C, PW(l, LOOM_L_GATE_W), lay, NULL, N, C, 2 * H);
            loom_swiglu_forward(ws->fca[l], ws->fch[l], N, H);
        }
        loom_matmul_forward(ws->tmp, C, ws->fca[l], H, PW(l, LOOM_L_DOWN_W), lay, PW(l, LOOM_L_DOWN_B), N, H, C);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < (size_t)N * C; i++) x3[i] = x2[i] + ws->tmp[i];
    }
    float *xl = ws->res[c->n_layer];
    if (gpt2)
        loom_layernorm_forward(ws->nf, ws->meanf, ws->rstdf, xl, P(m->t_normf_w), P(m->t_normf_b), N, C, c->norm_eps);
    else
        loom_rmsnorm_forward(ws->nf, ws->rstdf, xl, P(m->t_normf_w), N, C, c->norm_eps);
    loom_matmul_forward(ws->logits, V, ws->nf, C, P(m->t_head), LOOM_W_LINEAR, NULL, N, C, V);

    ws->have_forward = 1;
    if (targets) {
        memcpy(ws->tgt_copy, targets, (size_t)N * sizeof(int32_t));
        float l = loom_crossentropy_forward(ws->losses, ws->logits, targets, N, V, &ws->n_valid);
        if (loss) *loss = l;
    } else {
        ws->n_valid = -1;
        if (loss) *loss = 0.0f;
    }
    return LOOM_OK;
}

/* ---------------------------------------------------------------- backward */

#define G(idx) ((idx) >= 0 && (!trainable || trainable[idx]) ? grads + m->tensors[idx].offset : NULL)
#define GS(l, s) G(SLOT(l, s))

int loom_backward(const loom_model *m, const float *params, loom_ws *ws, float *grads, const uint8_t *trainable) {
    const loom_config *c = &m->cfg;
    if (!ws->have_forward || ws->n_valid < 0)
        return loom_error(LOOM_ESTATE, "backward needs a forward pass with targets first");
    const int B = ws->curB, T = ws->curT, N = B * T;
    const int C = c->dim, H = c->hidden, V = c->vocab, NH = c->n_head, NKV = c->n_kv_head, HS = C / NH;
    const int QKV = ws->QKV;
    const int gpt2 = c->arch == LOOM_ARCH_GPT2;
    const int lay = gpt2 ? LOOM_W_CONV1D : LOOM_W_LINEAR;
    ws->have_forward = 0; /* logits are about to be overwritten */

    /* loss -> logits (in place) -> final norm */
    loom_crossentropy_backward(ws->logits, ws->tgt_copy, N, V, ws->n_valid, 1.0f);
    loom_matmul_backward(ws->dn, C, 0.0f, G(m->t_head), NULL, ws->logits, V, ws->nf, P(m->t_head), LOOM_W_LINEAR, N, C, V);
    memset(ws->dres, 0, (size_t)N * C * sizeof(float));
    float *xl = ws->res[c->n_layer];
    if (gpt2)
        loom_layernorm_backward(ws->dres, G(m->t_normf_w), G(m->t_normf_b), ws->dn, xl, P(m->t_normf_w), ws->meanf,
                                ws->rstdf, N, C);
    else
        loom_rmsnorm_backward(ws->dres, G(m->t_normf_w), ws->dn, xl, P(m->t_normf_w), ws->rstdf, N, C);

    for (int l = c->n_layer - 1; l >= 0; l--) {
        float *x = ws->res[l], *x2 = ws->res2[l];
        /* MLP: x3 = x2 + down(act(up(norm2(x2)))) ; dres holds d x3 */
        loom_matmul_backward(ws->dfca, H, 0.0f, GS(l, LOOM_L_DOWN_W), GS(l, LOOM_L_DOWN_B), ws->dres, C, ws->fca[l],
                             PW(l, LOOM_L_DOWN_W), lay, N, H, C);
        if (gpt2) {
            loom_gelu_backward(ws->dfch, ws->fch[l], ws->dfca, (size_t)N * H, c->act == LOOM_ACT_GELU_ERF);
            loom_matmul_backward(ws->dn, C, 0.0f, GS(l, LOOM_L_UP_W), GS(l, LOOM_L_UP_B), ws->dfch, H, ws->n2[l],
                                 PW(l, LOOM_L_UP_W), lay, N, C, H);
            loom_layernorm_backward(ws->dres, GS(l, LOOM_L_NORM2_W), GS(l, LOOM_L_NORM2_B), ws->dn, x2,
                                    PW(l, LOOM_L_NORM2_W), ws->mean2[l], ws->rstd2[l], N, C);
        } else {
            loom_swiglu_backward(ws->dfch, ws->dfca, ws->fch[l], N, H);
            /* gate and up weights are adjacent: one [2H, C] gradient when both train */
            float *dg = GS(l, LOOM_L_GATE_W), *du = GS(l, LOOM_L_UP_W);
            if (dg && du) {
                loom_matmul_backward(ws->dn, C, 0.0f, dg, NULL, ws->dfch, 2 * H, ws->n2[l], PW(l, LOOM_L_GATE_W), lay,
                                     N, C, 2 * H);
            } else {
                loom_matmul_backward(ws->dn, C, 0.0f, dg, NULL, ws->dfch, 2 * H, ws->n2[l], PW(l, LOOM_L_GATE_W), lay,
                                     N, C, H);
                loom_matmul_backward(ws->dn, C, 1.0f, du, NULL, ws->dfch + H, 2 * H, ws->n2[l], PW(l, LOOM_L_UP_W),
                                     lay, N, C, H);
            }
            loom_rmsnorm_backward(ws->dres, GS(l, LOOM_L_NORM2_W), ws->dn, x2, PW(l, LOOM_L_NORM2_W), ws->rstd2[l], N, C);
        }
        /* attention: x2 = x + o(attn(qkv(norm1(x)))) ; dres holds d x2 */
        loom_matmul_backward(ws->datty, C, 0.0f, GS(l, LOOM_L_O_W), GS(l, LOOM_L_O_B), ws->dres, C, ws->atty[l],
                             PW(l, LOOM_L_O_W), lay, N, C, C);
        loom_attention_backward(ws->dqkv, ws->datt, ws->datty, ws->qkv[l], ws->att[l], QKV, B, T, NH, NKV, HS);
        if (!gpt2) {
            loom_rope(ws->dqkv, QKV, B, T, NH, HS, c->rope_theta, 0, 1);
            loom_rope(ws->dqkv + C, QKV, B, T, NKV, HS, c->rope_theta, 0, 1);
        }
        if (gpt2) {
            loom_matmul_backward(ws->dn, C, 0.0f, GS(l, LOOM_L_QKV_W), GS(l, LOOM_L_QKV_B), ws->dqkv, QKV, ws->n1[l],
                                 PW(l, LOOM_L_QKV_W), lay, N, C, QKV);
            loom_layernorm_backward(ws->dres, GS(l, LOOM_L_NORM1_W), GS(l, LOOM_L_NORM1_B), ws->dn, x,
                                    PW(l, LOOM_L_NORM1_W), ws->mean1[l], ws->rstd1[l], N, C);
        } else {
            int KV = NKV * HS;
            float *dq = GS(l, LOOM_L_QKV_W), *dk = GS(l, LOOM_L_K_W), *dv = GS(l, LOOM_L_V_W);
            float *db = GS(l, LOOM_L_QKV_B); /* q/k/v biases adjacent; they train together */
            if (dq && dk && dv) {
                loom_matmul_backward(ws->dn, C, 0.0f, dq, db, ws->dqkv, QKV, ws->n1[l], PW(l, LOOM_L_QKV_W), lay, N, C, QKV);
            } else {
                const float *wq = PW(l, LOOM_L_QKV_W);
                loom_matmul_backward(ws->dn, C, 0.0f, dq, NULL, ws->dqkv, QKV, ws->n1[l], wq, lay, N, C, C);
                loom_matmul_backward(ws->dn, C, 1.0f, dk, NULL, ws->dqkv + C, QKV, ws->n1[l], PW(l, LOOM_L_K_W), lay,
                                     N, C, KV);
                loom_matmul_backward(ws->dn, C, 1.0f, dv, NULL, ws->dqkv + C + KV, QKV, ws->n1[l], PW(l, LOOM_L_V_W),
                                     lay, N, C, KV);
                if (db) loom_colsum_acc(db, ws->dqkv, QKV, N, QKV);
            }
            loom_rmsnorm_backward(ws->dres, GS(l, LOOM_L_NORM1_W), ws->dn, x, PW(l, LOOM_L_NORM1_W), ws->rstd1[l], N, C);
        }
    }
    /* embeddings: parallel over channel blocks so repeated tokens never race */
    float *dwte = G(m->t_embed), *dwpe = gpt2 ? G(m->t_pos) : NULL;
    const int32_t *tok = ws->tok_copy;
    if (dwte || dwpe) {
        int nblk = (C + 63) / 64;
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < nblk; blk++) {
            int c0 = blk * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
            for (int n = 0; n < N; n++) {
                const float *d = ws->dres + (size_t)n * C;
                if (dwte) {
                    float *g = dwte + (size_t)tok[n] * C;
                    for (int i = c0; i < c1; i++) g[i] += d[i];
                }
                if (dwpe) {
                    float *g = dwpe + (size_t)(n % T) * C;
                    for (int i = c0; i < c1; i++) g[i] += d[i];
                }
            }
        }
    }
    return LOOM_OK;
}
