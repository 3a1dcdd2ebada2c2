/* KV-cached single-sequence inference for generation: the prompt in batched passes (matrix products
 * over its rows), then one token at a time (matrix-vector products), with any trainable set applied on
 * the fly (loom/model.h, the decode section). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/dispatch.h"
#include "loom/core.h"
#include "loom/gemv.h"
#include "loom/kernels.h"
#include "loom/model.h"
#include "loom/quant.h"
#include "model/model_impl.h"

#define KV_ROWS 512 /* default rows per batched pass: a prompt up to this long is one forward */
#define KV_MAX_ROWS 65536

/* Cache slot of model position p: s = pre + p (a prefix set's rows first). Model positions count the
 * soft-prompt rows: token position t sits at model position soft + t. */
struct loom_kv {
    int max_len, L, KV;
    float *k, *v;           /* [L, slots, KV] */
    float *x, *xb, *qkv, *att, *y, *h, *mean, *rstd; /* scratch: [rows, *] (att: [natt, slots]) */
    int natt;                                        /* score rows: one a thread, or a head (one row) */
    float *qscratch;        /* low-precision base: one dequantized block */
    const loom_peft *pf;    /* the plan the cache was made for (NULL: the model alone) */
    int rows;               /* most rows per batched pass */
    int pre, soft, slots;   /* prefix rows, soft-prompt positions, pre + soft + max_len */
    int nthr;               /* attention workers (one score row each) */
    float *ha;              /* [rows, H] MLP activation */
    float *hmem;            /* the plan's hook memory for rows rows */
    int32_t *tok;           /* [rows] the pass's tokens (-1: a soft-prompt row) */
    size_t bytes;
};

int loom_kv_create_ex(loom_kv **out, const loom_model *m, const loom_peft *pf, int max_len, int max_batch) {
    *out = NULL;
    const loom_config *c = &m->cfg;
    const lm_peft_ops *ops = pf ? pf->ops : NULL;
    if (ops && ops->attn_fwd && !ops->kv_prefix)
        return loom_error(LOOM_EUNSUPPORTED, "this trainable set replaces attention and cannot be decoded with a KV cache");
    int soft = pf ? pf->prompt_len : 0;
    if (soft && !ops->prompt) return loom_error(LOOM_EINVAL, "a soft prompt of %d positions without its rows", soft);
    lm_hook_ctx h0 = {m, pf, NULL, NULL, NULL, 1, 1, 1, 0, 0, 0};
    int pre = ops && ops->kv_prefix ? ops->kv_prefix(&h0, 0, NULL, NULL, 0) : 0;
    if (max_len < 1 || max_len > c->max_seq - soft - pre) {
        if (pre)
            return loom_error(LOOM_EINVAL, "generation length %d outside 1..%d (the model's %d positions less %d prefix positions)",
                              max_len, c->max_seq - pre, c->max_seq, pre);
        if (soft)
            return loom_error(LOOM_EINVAL, "generation length %d outside 1..%d (the model's %d positions less a soft prompt of %d)",
                              max_len, c->max_seq - soft, c->max_seq, soft);
        return loom_error(LOOM_EINVAL, "generation length %d outside 1..%d (the model's positions)", max_len, c->max_seq);
    }
    if (max_batch < 0 || max_batch > KV_MAX_ROWS)
        return loom_error(LOOM_EINVAL, "%d rows per prompt pass outside 0..%d (0: the default)", max_batch, KV_MAX_ROWS);
    loom_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return loom_error(LOOM_ENOMEM, "out of memory");
    int C = c->dim, H = c->hidden, KV = c->n_kv_head * (C / c->n_head), QKV = C + 2 * KV;
    int MI = c->arch == LOOM_ARCH_LLAMA ? 2 * H : H;
    kv->max_len = max_len;
    kv->L = c->n_layer;
    kv->KV = KV;
    kv->pf = pf;
    kv->pre = pre;
    kv->soft = soft;
    kv->slots = pre + soft + max_len;
    kv->rows = LOOM_MIN(max_batch ? max_batch : KV_ROWS, soft + max_len);
    kv->nthr = LOOM_MAX(1, omp_get_max_threads());
    size_t R = (size_t)kv->rows, cache = (size_t)c->n_layer * kv->slots * KV;
    size_t hooks = 0;
    if (ops && ops->dec_floats) hooks = ops->dec_floats(m, pf, kv->rows);
    else if (ops && ops->ws_floats) hooks = ops->ws_floats(m, pf, 1, kv->rows);
    kv->k = loom_alloc(cache * sizeof(float));
    kv->v = loom_alloc(cache * sizeof(float));
    kv->x = loom_alloc(R * C * sizeof(float));
    kv->xb = loom_alloc(R * C * sizeof(float));
    kv->qkv = loom_alloc(R * QKV * sizeof(float));
    kv->natt = LOOM_MAX(kv->nthr, c->n_head);
    kv->att = loom_alloc((size_t)kv->natt * kv->slots * sizeof(float));
    kv->y = loom_alloc(R * C * sizeof(float));
    kv->h = loom_alloc(R * MI * sizeof(float));
    kv->ha = loom_alloc(R * H * sizeof(float));
    kv->mean = loom_alloc(R * sizeof(float));
    kv->rstd = loom_alloc(R * sizeof(float));
    kv->tok = malloc(R * sizeof *kv->tok);
    if (hooks) kv->hmem = loom_alloc(hooks * sizeof(float));
    size_t floats = 2 * cache + R * (3 * (size_t)C + QKV + MI + H + 2) + (size_t)kv->natt * kv->slots + hooks;
    int lowp = 0;
    for (int i = 0; i < m->n_tensors; i++) lowp |= m->tensors[i].dtype != LOOM_Q_F32;
    if (lowp) {
        int outs[3] = {C + 2 * KV, C, c->arch == LOOM_ARCH_LLAMA ? 2 * H : H};
        size_t qs = loom_qmatmul_scratch(H, C);
        for (int i = 0; i < 3; i++) qs = LOOM_MAX(qs, loom_qmatmul_scratch(C, outs[i]));
        if (!(kv->qscratch = loom_alloc(qs * sizeof(float)))) {
            loom_kv_free(kv);
            return loom_error(LOOM_ENOMEM, "out of memory for a KV cache of %d positions", max_len);
        }
        floats += qs;
    }
    kv->bytes = floats * sizeof(float) + R * sizeof *kv->tok;
    if (!kv->k || !kv->v || !kv->x || !kv->xb || !kv->qkv || !kv->att || !kv->y || !kv->h || !kv->ha || !kv->mean ||
        !kv->rstd || !kv->tok || (hooks && !kv->hmem)) {
        loom_kv_free(kv);
        return loom_error(LOOM_ENOMEM, "out of memory for a KV cache of %d positions", max_len);
    }
    *out = kv;
    return LOOM_OK;
}

int loom_kv_create(loom_kv **out, const loom_model *m, int max_len) { return loom_kv_create_ex(out, m, NULL, max_len, 0); }

size_t loom_kv_bytes(const loom_kv *kv) { return kv->bytes; }

int lm_kv_layer(const loom_kv *kv, int l, const float **k, const float **v) {
    size_t o = (size_t)l * kv->slots * kv->KV;
    *k = kv->k + o;
    *v = kv->v + o;
    return kv->KV;
}

void loom_kv_free(loom_kv *kv) {
    if (!kv) return;
    loom_free(kv->k); loom_free(kv->v); loom_free(kv->x); loom_free(kv->xb); loom_free(kv->qkv);
    loom_free(kv->att); loom_free(kv->y); loom_free(kv->h); loom_free(kv->mean); loom_free(kv->rstd);
    loom_free(kv->qscratch);
    loom_free(kv->ha); loom_free(kv->hmem); free(kv->tok);
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

/* Where one pass reads its values: the trainable vector for a trained copy (FULL, BitFit), else the
 * frozen base. */
typedef struct {
    const loom_model *m;
    const float *base, *vec;
    const loom_peft *pf;
    loom_kv *kv;
} pass;

static int layout_of(const loom_model *m, int idx) {
    return m->cfg.arch == LOOM_ARCH_GPT2 && m->tensors[idx].kind == LOOM_T_LINEAR_W ? LOOM_W_CONV1D : LOOM_W_LINEAR;
}

/* Float values of tensor idx in this pass (embeddings, norms, biases, head and trained copies). */
static const float *fv(const pass *p, int idx) {
    if (idx < 0) return NULL;
    if (p->pf && p->pf->tmap[idx] >= 0) return p->vec + p->pf->tmap[idx];
    return lm_weight_ref(p->m, p->base, idx).f;
}

/* y[n, OC] = x[n, C] W (+ b), W = tensor idx with its fused neighbours: one row through matvec, more rows
 * as one matrix product (a low-precision base block by block, never expanded whole). */
static void linear(const pass *p, float *y, const float *x, int n, int idx, const float *b, int C, int OC) {
    const loom_model *m = p->m;
    const float *params = p->base;
    if (p->pf && p->pf->tmap[idx] >= 0) {
        if ((size_t)p->pf->tmap[idx] != m->tensors[idx].offset) { /* a trained copy outside the model's layout */
            loom_matmul_forward(y, OC, x, C, p->vec + p->pf->tmap[idx], layout_of(m, idx), b, n, C, OC);
            return;
        }
        params = p->vec; /* the full set: the model's own layout, fused neighbours included */
    }
    if (n == 1) {
        matvec(m, params, p->kv, y, x, idx, b, C, OC);
        return;
    }
    lm_wref w = lm_weight_ref(m, params, idx);
    if (w.type != LOOM_Q_F32) loom_qmatmul_forward(y, OC, x, C, &w.q, b, n, C, OC, p->kv->qscratch);
    else loom_matmul_forward(y, OC, x, C, w.f, layout_of(m, idx), b, n, C, OC);
}

/* A head's keys (or values) of consecutive slots lie a cache row (KV floats, 3 KiB in the 110M shape) apart:
 * a stride the hardware prefetchers do not follow, so each slot's row is asked for ATT_AHEAD slots early. */
#define ATT_AHEAD 16

static inline void prefetch_row(const float *p, int n) {
    for (int j = 0; j < n; j += 16) __builtin_prefetch(p + j);
}

/* One row's attention over len cache slots (keys and values a row of stride floats apart) for heads
 * [h0, h1), HB heads at a time: slot by slot over the cache, each slot's keys (then values) of these heads
 * one piece of a cache row, so the reads go through the cache in order. Head h: scores a[(h - h0) * S ..],
 * their softmax, y[h * HS ..] the weighted values. Built for each instruction set (loom's dispatch): the
 * dot products keep lm_dot16's lanes and each head's sums add over t in order, so every version, and
 * every split of the heads, gives the same bits. */
#define HB 16
LOOM_DISPATCH static void attend_heads(float *y, float *a, int S, const float *q, const float *kc, const float *vc,
                                       int len, int stride, int HS, int group, int h0, int h1, float scale) {
    for (int hb = h0; hb < h1; hb += HB) {
        const int he = hb + HB < h1 ? hb + HB : h1, k0 = hb / group, k1 = (he - 1) / group + 1;
        float mx[HB], sum[HB];
        for (int h = hb; h < he; h++) mx[h - hb] = -INFINITY;
        for (int t = 0; t < len; t++) {
            const float *kt = kc + (size_t)t * stride;
            if (t + ATT_AHEAD < len) prefetch_row(kt + (size_t)ATT_AHEAD * stride + k0 * HS, (k1 - k0) * HS);
            for (int h = hb; h < he; h++) {
                float s = scale * lm_dot16(q + h * HS, kt + (h / group) * HS, HS);
                a[(size_t)(h - h0) * S + t] = s;
                mx[h - hb] = s > mx[h - hb] ? s : mx[h - hb];
            }
        }
        for (int h = hb; h < he; h++) {
            float *ah = a + (size_t)(h - h0) * S, sm = 0;
            for (int t = 0; t < len; t++) {
                ah[t] = expf(ah[t] - mx[h - hb]);
                sm += ah[t];
            }
            sum[h - hb] = sm;
            memset(y + h * HS, 0, (size_t)HS * sizeof *y);
        }
        for (int t = 0; t < len; t++) {
            const float *vt = vc + (size_t)t * stride;
            if (t + ATT_AHEAD < len) prefetch_row(vt + (size_t)ATT_AHEAD * stride + k0 * HS, (k1 - k0) * HS);
            for (int h = hb; h < he; h++) {
                const float *v = vt + (h / group) * HS, at = a[(size_t)(h - h0) * S + t];
                float *yh = y + h * HS;
                for (int j = 0; j < HS; j++) yh[j] += at * v[j];
            }
        }
        for (int h = hb; h < he; h++) {
            float inv = 1.0f / sum[h - hb], *yh = y + h * HS;
            for (int j = 0; j < HS; j++) yh[j] *= inv;
        }
    }
}

/* Causal attention of the pass's n rows (row i at cache slot s0 + i sees slots 0 .. s0 + i) over layer
 * l's cache: y[n, C]. Each (row, head) is one worker's whole computation, so the bits do not depend on
 * the thread count. */
static void attend(loom_kv *kv, const loom_config *c, int l, int n, int s0) {
    const int NH = c->n_head, HS = c->dim / NH, group = NH / c->n_kv_head, KV = kv->KV, QKV = c->dim + 2 * KV;
    const int S = kv->slots;
    const float *kc = kv->k + (size_t)l * S * KV, *vc = kv->v + (size_t)l * S * KV;
    const float scale = 1.0f / sqrtf((float)HS);
    long work = (long)n * NH * (s0 + n) * HS;
    if (n == 1) { /* decoding: each thread a contiguous range of heads, slot by slot */
#pragma omp parallel num_threads(kv->nthr) if (work >= 32768)
        {
            int nt = omp_get_num_threads(), t = omp_get_thread_num();
            int h0 = NH * t / nt;
            attend_heads(kv->y, kv->att + (size_t)h0 * S, S, kv->qkv, kc, vc, s0 + 1, KV, HS, group, h0,
                         NH * (t + 1) / nt, scale);
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(kv->nthr) if (work >= 32768)
    for (int r = 0; r < n * NH; r++) {
        int i = r / NH, h = r % NH;
        attend_heads(kv->y + (size_t)i * c->dim, kv->att + (size_t)omp_get_thread_num() * S, S,
                     kv->qkv + (size_t)i * QKV, kc, vc, s0 + i + 1, KV, HS, group, h, h + 1, scale);
    }
}

static void add_rows(float *x, const float *d, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += d[i];
}

#define SLOT(l, s) (m->layer_slot[l][s])
#define PW(l, s) fv(p, SLOT(l, s))
#define HOOK(fn) (ops && ops->fn)

/* One forward of n <= kv->rows rows of the sequence at model positions p0 .. p0 + n - 1 (kv->tok: token
 * ids, -1 for a soft-prompt row): their keys and values go into the cache and, when logits is not NULL,
 * the last row's logits[V] come out. */
static void run_rows(const pass *p, int n, int p0, float *logits) {
    const loom_model *m = p->m;
    loom_kv *kv = p->kv;
    const loom_config *c = &m->cfg;
    const loom_peft *pf = p->pf;
    const lm_peft_ops *ops = pf ? pf->ops : NULL;
    const int C = c->dim, H = c->hidden, NH = c->n_head, NKV = c->n_kv_head, HS = C / NH;
    const int KV = kv->KV, QKV = C + 2 * KV, gpt2 = c->arch == LOOM_ARCH_GPT2, MI = gpt2 ? H : 2 * H;
    const size_t nc = (size_t)n * C;
    lm_hook_ctx hk = {m, pf, p->vec, NULL, kv->hmem, 1, kv->rows, (size_t)kv->rows, 0, 0, 0};
    const float *wte = fv(p, m->t_embed), *wpe = gpt2 ? fv(p, m->t_pos) : NULL;
    const float *soft = kv->soft ? ops->prompt(&hk, NULL) : NULL;
    for (int i = 0; i < n; i++) {
        float *o = kv->x + (size_t)i * C;
        const float *e = o;
        if (kv->tok[i] < 0) {
            e = soft + (size_t)(p0 + i) * C;
        } else if (wte) {
            e = wte + (size_t)kv->tok[i] * C;
        } else { /* an embedding held in low precision for generation (see model.h) */
            lm_wref we = lm_weight_ref(m, p->base, m->t_embed);
            loom_dequantize_rows(o, &we.q, C, c->vocab, kv->tok[i], kv->tok[i] + 1);
        }
        if (wpe) { /* a prefix set's rows hold positions 0 .. pre - 1 (as in loom_forward_ex) */
            const float *pp = wpe + (size_t)(kv->pre + p0 + i) * C;
            for (int j = 0; j < C; j++) o[j] = e[j] + pp[j];
        } else {
            if (e != o) memcpy(o, e, (size_t)C * sizeof *o);
        }
    }
    for (int l = 0; l < c->n_layer; l++) {
        if (gpt2)
            loom_layernorm_forward(kv->xb, kv->mean, kv->rstd, kv->x, PW(l, LOOM_L_NORM1_W), PW(l, LOOM_L_NORM1_B), n, C,
                                   c->norm_eps);
        else
            loom_rmsnorm_forward(kv->xb, kv->rstd, kv->x, PW(l, LOOM_L_NORM1_W), n, C, c->norm_eps);
        linear(p, kv->qkv, kv->xb, n, SLOT(l, LOOM_L_QKV_W), PW(l, LOOM_L_QKV_B), C, QKV);
        if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_QKV, kv->xb, C, kv->qkv, QKV, n);
        if (!gpt2) {
            loom_rope(kv->qkv, QKV, 1, n, NH, HS, c->rope_theta, kv->pre + p0, 0);
            loom_rope(kv->qkv + C, QKV, 1, n, NKV, HS, c->rope_theta, kv->pre + p0, 0);
        }
        size_t s0 = (size_t)kv->pre + p0;
        float *kc = kv->k + ((size_t)l * kv->slots + s0) * KV, *vc = kv->v + ((size_t)l * kv->slots + s0) * KV;
        for (int i = 0; i < n; i++) {
            memcpy(kc + (size_t)i * KV, kv->qkv + (size_t)i * QKV + C, (size_t)KV * sizeof(float));
            memcpy(vc + (size_t)i * KV, kv->qkv + (size_t)i * QKV + C + KV, (size_t)KV * sizeof(float));
        }
        attend(kv, c, l, n, (int)s0);
        linear(p, kv->xb, kv->y, n, SLOT(l, LOOM_L_O_W), PW(l, LOOM_L_O_B), C, C);
        if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_O, kv->y, C, kv->xb, C, n);
        if (HOOK(point_dec)) ops->point_dec(&hk, l, 0, kv->xb, n);
        else if (HOOK(point_fwd)) ops->point_fwd(&hk, l, 0, kv->xb, n);
        add_rows(kv->x, kv->xb, nc);
        if (gpt2) {
            loom_layernorm_forward(kv->xb, kv->mean, kv->rstd, kv->x, PW(l, LOOM_L_NORM2_W), PW(l, LOOM_L_NORM2_B), n, C,
                                   c->norm_eps);
            linear(p, kv->h, kv->xb, n, SLOT(l, LOOM_L_UP_W), PW(l, LOOM_L_UP_B), C, H);
            if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_UP, kv->xb, C, kv->h, MI, n);
            loom_gelu_forward(kv->ha, kv->h, (size_t)n * H, c->act == LOOM_ACT_GELU_ERF);
        } else {
            loom_rmsnorm_forward(kv->xb, kv->rstd, kv->x, PW(l, LOOM_L_NORM2_W), n, C, c->norm_eps);
            linear(p, kv->h, kv->xb, n, SLOT(l, LOOM_L_GATE_W), NULL, C, 2 * H);
            if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_UP, kv->xb, C, kv->h, MI, n);
            loom_swiglu_forward(kv->ha, kv->h, n, H);
        }
        linear(p, kv->xb, kv->ha, n, SLOT(l, LOOM_L_DOWN_W), PW(l, LOOM_L_DOWN_B), H, C);
        if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_DOWN, kv->ha, H, kv->xb, C, n);
        if (HOOK(point_dec)) ops->point_dec(&hk, l, 1, kv->xb, n);
        else if (HOOK(point_fwd)) ops->point_fwd(&hk, l, 1, kv->xb, n);
        add_rows(kv->x, kv->xb, nc);
    }
    if (!logits) return;
    const float *xl = kv->x + (size_t)(n - 1) * C; /* only the last row's logits are wanted */
    if (gpt2)
        loom_layernorm_forward(kv->xb, kv->mean, kv->rstd, xl, fv(p, m->t_normf_w), fv(p, m->t_normf_b), 1, C, c->norm_eps);
    else
        loom_rmsnorm_forward(kv->xb, kv->rstd, xl, fv(p, m->t_normf_w), 1, C, c->norm_eps);
    linear(p, logits, kv->xb, 1, m->t_head, NULL, C, c->vocab);
}

int loom_prefill_ex(const loom_model *m, const float *base, loom_kv *kv, const loom_peft *pf, const float *vec,
                    const int32_t *tokens, int n, int pos, float *logits) {
    if (kv->pf != pf)
        return loom_error(LOOM_EINVAL, "the KV cache was made for %s (loom_kv_create_ex)",
                          kv->pf ? "another trainable set" : "the model without a trainable set");
    if (pf && !vec) return loom_error(LOOM_EINVAL, "decoding with a trainable set needs its vector");
    if (n < 1 || !tokens) return loom_error(LOOM_EINVAL, "no tokens to run (%d)", n);
    if (pos < 0 || pos > kv->max_len - n) {
        if (n == 1) return loom_error(LOOM_ERANGE, "position %d outside the KV cache (%d)", pos, kv->max_len);
        return loom_error(LOOM_ERANGE, "positions %d..%d outside the KV cache (%d)", pos, pos + n - 1, kv->max_len);
    }
    const int V = m->cfg.vocab;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V) {
            if (n == 1) return loom_error(LOOM_ERANGE, "token %d outside the vocabulary (%d)", tokens[i], V);
            return loom_error(LOOM_ERANGE, "token %d at position %d outside the vocabulary (%d)", tokens[i], pos + i, V);
        }
    pass p = {m, base, vec, pf, kv};
    const lm_peft_ops *ops = pf ? pf->ops : NULL;
    lm_hook_ctx hk = {m, pf, vec, NULL, kv->hmem, 1, kv->rows, (size_t)kv->rows, 0, 0, 0};
    if (pos == 0 && kv->pre) /* a new sequence: the set's rows before it, in every layer */
        for (int l = 0; l < kv->L; l++) {
            float *kc = kv->k + (size_t)l * kv->slots * kv->KV, *vc = kv->v + (size_t)l * kv->slots * kv->KV;
            ops->kv_prefix(&hk, l, kc, vc, kv->KV);
        }
    /* at the start the soft-prompt rows (model positions 0 .. soft - 1) run first, in the same passes */
    int lead = pos == 0 ? kv->soft : 0, rows = lead + n, p0 = pos == 0 ? 0 : kv->soft + pos;
    for (int r0 = 0; r0 < rows; r0 += kv->rows) {
        int cnt = LOOM_MIN(kv->rows, rows - r0);
        for (int i = 0; i < cnt; i++) kv->tok[i] = r0 + i < lead ? -1 : tokens[r0 + i - lead];
        run_rows(&p, cnt, p0 + r0, r0 + cnt == rows ? logits : NULL);
    }
    return LOOM_OK;
}

int loom_decode_step_ex(const loom_model *m, const float *base, loom_kv *kv, const loom_peft *pf, const float *vec,
                        int32_t token, int pos, float *logits) {
    return loom_prefill_ex(m, base, kv, pf, vec, &token, 1, pos, logits);
}

int loom_prefill(const loom_model *m, const float *params, loom_kv *kv, const int32_t *tokens, int n, int pos,
                 float *logits) {
    return loom_prefill_ex(m, params, kv, NULL, NULL, tokens, n, pos, logits);
}

int loom_decode_step(const loom_model *m, const float *params, loom_kv *kv, int32_t token, int pos, float *logits) {
    return loom_prefill_ex(m, params, kv, NULL, NULL, &token, 1, pos, logits);
}
