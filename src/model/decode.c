/* KV-cached single-sequence inference for generation: one token at a time, matrix-vector products. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/gemv.h"
#include "loom/kernels.h"
#include "loom/model.h"
#include "loom/quant.h"
#include "model/model_impl.h"

struct loom_kv {
    int max_len, L, KV;
    float *k, *v;           /* [L, max_len, KV] */
    float *x, *xb, *qkv, *att, *y, *h, *mean, *rstd; /* scratch */
    float *qscratch;        /* low-precision base: one dequantized block */
};

int loom_kv_create(loom_kv **out, const loom_model *m, int max_len) {
    *out = NULL;
    const loom_config *c = &m->cfg;
    if (max_len < 1 || max_len > c->max_seq)
        return loom_error(LOOM_EINVAL, "generation length %d outside 1..%d (the model's positions)", max_len, c->max_seq);
    loom_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return loom_error(LOOM_ENOMEM, "out of memory");
    int C = c->dim, KV = c->n_kv_head * (C / c->n_head);
    kv->max_len = max_len;
    kv->L = c->n_layer;
    kv->KV = KV;
    size_t cache = (size_t)c->n_layer * max_len * KV;
    kv->k = loom_alloc(cache * sizeof(float));
    kv->v = loom_alloc(cache * sizeof(float));
    kv->x = loom_alloc((size_t)C * sizeof(float));
    kv->xb = loom_alloc((size_t)C * sizeof(float));
    kv->qkv = loom_alloc((size_t)(C + 2 * KV) * sizeof(float));
    kv->att = loom_alloc((size_t)c->n_head * max_len * sizeof(float));
    kv->y = loom_alloc((size_t)C * sizeof(float));
    kv->h = loom_alloc((size_t)3 * c->hidden * sizeof(float));
    kv->mean = loom_alloc(sizeof(float));
    kv->rstd = loom_alloc(sizeof(float));
    int lowp = 0;
    for (int i = 0; i < m->n_tensors; i++) lowp |= m->tensors[i].dtype != LOOM_Q_F32;
    if (lowp) {
        int H = c->hidden, outs[3] = {C + 2 * KV, C, c->arch == LOOM_ARCH_LLAMA ? 2 * H : H};
        size_t qs = loom_qmatmul_scratch(H, C);
        for (int i = 0; i < 3; i++) qs = LOOM_MAX(qs, loom_qmatmul_scratch(C, outs[i]));
        if (!(kv->qscratch = loom_alloc(qs * sizeof(float)))) {
            loom_kv_free(kv);
            return loom_error(LOOM_ENOMEM, "out of memory for a KV cache of %d positions", max_len);
        }
    }
    if (!kv->k || !kv->v || !kv->x || !kv->xb || !kv->qkv || !kv->att || !kv->y || !kv->h || !kv->mean || !kv->rstd) {
        loom_kv_free(kv);
        return loom_error(LOOM_ENOMEM, "out of memory for a KV cache of %d positions", max_len);
    }
    *out = kv;
    return LOOM_OK;
}

void loom_kv_free(loom_kv *kv) {
    if (!kv) return;
    loom_free(kv->k); loom_free(kv->v); loom_free(kv->x); loom_free(kv->xb); loom_free(kv->qkv);
    loom_free(kv->att); loom_free(kv->y); loom_free(kv->h); loom_free(kv->mean); loom_free(kv->rstd);
    loom_free(kv->qscratch);
    free(kv);
}

/* y[OC] = W x[C] (+ b), W = tensor idx (with its fused neighbours when OC covers them), read as it is
 * held: float, or a low-precision base's bf16/int8 straight from its bits (loom_qgemv, no float copy). */
static void matvec(const loom_model *m, const float *params, loom_kv *kv, float *y, const float *x, int idx,
                   const float *b, int C, int OC) {
    (void)kv;
    lm_wref w = lm_weight_ref(m, params, idx);
    if (w.type == LOOM_Q_F32) {
        int conv = m->cfg.arch == LOOM_ARCH_GPT2 && m->tensors[idx].kind == LOOM_T_LINEAR_W;
        w.q = (loom_qmat){LOOM_Q_F32, conv ? LOOM_W_CONV1D : LOOM_W_LINEAR, w.f, NULL};
    }
    loom_qgemv(y, &w.q, x, C, OC);
    if (b)
        for (int i = 0; i < OC; i++) y[i] += b[i];
}

/* Float values of tensor idx (norms, biases, positions: never held in low precision). */
static const float *fval(const loom_model *m, const float *params, int idx) {
    return idx >= 0 ? lm_weight_ref(m, params, idx).f : NULL;
}

#define P(idx) fval(m, params, idx)
#define PW(l, s) P(m->layer_slot[l][s])
#define MV(y, x, l, s, bias, C, OC) matvec(m, params, kv, y, x, m->layer_slot[l][s], bias, C, OC)

int loom_decode_step(const loom_model *m, const float *params, loom_kv *kv, int32_t token, int pos, float *logits) {
    const loom_config *c = &m->cfg;
    const int C = c->dim, H = c->hidden, V = c->vocab, NH = c->n_head, NKV = c->n_kv_head, HS = C / NH;
    const int KV = kv->KV, group = NH / NKV, gpt2 = c->arch == LOOM_ARCH_GPT2;
    if (token < 0 || token >= V) return loom_error(LOOM_ERANGE, "token %d outside the vocabulary (%d)", token, V);
    if (pos < 0 || pos >= kv->max_len) return loom_error(LOOM_ERANGE, "position %d outside the KV cache (%d)", pos, kv->max_len);
    float *x = kv->x;
    lm_wref we = lm_weight_ref(m, params, m->t_embed);
    if (we.type == LOOM_Q_F32) memcpy(x, we.f + (size_t)token * C, (size_t)C * sizeof *x);
    else loom_dequantize_rows(x, &we.q, C, V, token, token + 1); /* held for generation (see model.h) */
    if (gpt2)
        for (int i = 0; i < C; i++) x[i] += P(m->t_pos)[(size_t)pos * C + i];
    const float scale = 1.0f / sqrtf((float)HS);
    for (int l = 0; l < c->n_layer; l++) {
        if (gpt2)
            loom_layernorm_forward(kv->xb, kv->mean, kv->rstd, x, PW(l, LOOM_L_NORM1_W), PW(l, LOOM_L_NORM1_B), 1, C, c->norm_eps);
        else
            loom_rmsnorm_forward(kv->xb, kv->rstd, x, PW(l, LOOM_L_NORM1_W), 1, C, c->norm_eps);
        MV(kv->qkv, kv->xb, l, LOOM_L_QKV_W, PW(l, LOOM_L_QKV_B), C, C + 2 * KV);
        if (!gpt2) {
            loom_rope(kv->qkv, C + 2 * KV, 1, 1, NH, HS, c->rope_theta, pos, 0);
            loom_rope(kv->qkv + C, C + 2 * KV, 1, 1, NKV, HS, c->rope_theta, pos, 0);
        }
        float *kc = kv->k + ((size_t)l * kv->max_len) * KV, *vc = kv->v + ((size_t)l * kv->max_len) * KV;
        memcpy(kc + (size_t)pos * KV, kv->qkv + C, (size_t)KV * sizeof(float));
        memcpy(vc + (size_t)pos * KV, kv->qkv + C + KV, (size_t)KV * sizeof(float));
        for (int h = 0; h < NH; h++) {
            const float *q = kv->qkv + h * HS;
            float *a = kv->att + (size_t)h * kv->max_len;
            int kh = h / group;
            /* scores a[t] = scale * K[t] . q, then softmax, then y = V^T a: two matrix-vector products */
            cblas_sgemv(CblasRowMajor, CblasNoTrans, pos + 1, HS, scale, kc + kh * HS, KV, q, 1, 0.0f, a, 1);
            float mx = a[0];
            for (int t = 1; t <= pos; t++) mx = a[t] > mx ? a[t] : mx;
            float sum = 0;
            for (int t = 0; t <= pos; t++) {
                a[t] = expf(a[t] - mx);
                sum += a[t];
            }
            float *y = kv->y + h * HS;
            cblas_sgemv(CblasRowMajor, CblasTrans, pos + 1, HS, 1.0f / sum, vc + kh * HS, KV, a, 1, 0.0f, y, 1);
        }
        MV(kv->xb, kv->y, l, LOOM_L_O_W, PW(l, LOOM_L_O_B), C, C);
        for (int i = 0; i < C; i++) x[i] += kv->xb[i];
        if (gpt2) {
            loom_layernorm_forward(kv->xb, kv->mean, kv->rstd, x, PW(l, LOOM_L_NORM2_W), PW(l, LOOM_L_NORM2_B), 1, C, c->norm_eps);
            MV(kv->h, kv->xb, l, LOOM_L_UP_W, PW(l, LOOM_L_UP_B), C, H);
            loom_gelu_forward(kv->h + H, kv->h, (size_t)H, c->act == LOOM_ACT_GELU_ERF);
        } else {
            loom_rmsnorm_forward(kv->xb, kv->rstd, x, PW(l, LOOM_L_NORM2_W), 1, C, c->norm_eps);
            MV(kv->h, kv->xb, l, LOOM_L_GATE_W, NULL, C, 2 * H);
            loom_swiglu_forward(kv->h + 2 * H, kv->h, 1, H);
            memmove(kv->h + H, kv->h + 2 * H, (size_t)H * sizeof(float));
        }
        MV(kv->xb, kv->h + H, l, LOOM_L_DOWN_W, PW(l, LOOM_L_DOWN_B), H, C);
        for (int i = 0; i < C; i++) x[i] += kv->xb[i];
    }
    if (gpt2)
        loom_layernorm_forward(kv->xb, kv->mean, kv->rstd, x, P(m->t_normf_w), P(m->t_normf_b), 1, C, c->norm_eps);
    else
        loom_rmsnorm_forward(kv->xb, kv->rstd, x, P(m->t_normf_w), 1, C, c->norm_eps);
    matvec(m, params, kv, logits, kv->xb, m->t_head, NULL, C, V);
    return LOOM_OK;
}
