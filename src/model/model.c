/* GPT-2 and Llama: parameter layout, initialisation, forward and backward over one flat buffer. */
#include "loom/model.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/half.h"
#include "loom/kernels.h"
#include "loom/quant.h"
#include "model/model_impl.h"

static void qbase_free(struct loom_qbase *q);

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
    /* the same table as a trainable-vector manifest: the FULL set, every tensor shared */
    int rc = loom_tvec_create(&m->manifest);
    for (int i = 0; i < m->n_tensors && rc == LOOM_OK; i++) {
        const loom_tensor *t = &m->tensors[i];
        rc = loom_tvec_add_at(m->manifest, t->name, t->ndim, t->shape, t->offset, LOOM_ROLE_SHARED);
    }
    return rc;
}

const loom_tvec *loom_model_manifest(const loom_model *m) { return m->manifest; }

int loom_model_find(const loom_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return i;
    return -1;
}

const loom_config *loom_model_config(const loom_model *m) { return &m->cfg; }
int loom_model_n_tensors(const loom_model *m) { return m->n_tensors; }
const loom_tensor *loom_model_tensor(const loom_model *m, int idx) {
    return idx >= 0 && idx < m->n_tensors ? &m->tensors[idx] : NULL;
}
size_t loom_model_n_params(const loom_model *m) { return m->n_params; }
float *loom_model_params(loom_model *m) { return m->params; }
const float *loom_model_params_const(const loom_model *m) { return m->params; }
int loom_model_is_quantized(const loom_model *m) { return m->qbase != NULL; }

/* Allocates the layout and an uninitialised parameter buffer. */
int lm_model_alloc(loom_model **out, const loom_config *cfg) {
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
    loom_tvec_free(m->manifest);
    loom_free(m->params);
    qbase_free(m->qbase);
    free(m);
}

/* Initialises tensor i from (seed, i) (GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2L)). */
static void init_tensor(loom_model *m, int i, uint64_t seed) {
    loom_tensor *t = &m->tensors[i];
    float *p = m->params + t->offset;
    loom_rng r;
    loom_rng_init(&r, seed, LOOM_STREAM_MODEL_TENSOR(i));
    int is_resid = strstr(t->name, "c_proj.weight") || strstr(t->name, "o_proj.weight") ||
                   strstr(t->name, "down_proj.weight");
    float resid_std = 0.02f / sqrtf(2.0f * m->cfg.n_layer);
    switch (t->kind) {
    case LOOM_T_NORM_W:
        for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f;
        break;
    case LOOM_T_NORM_B:
    case LOOM_T_LINEAR_B:
        memset(p, 0, t->numel * sizeof *p);
        break;
    case LOOM_T_POS:
        for (size_t j = 0; j < t->numel; j++) p[j] = 0.01f * (float)loom_rng_normal(&r);
        break;
    default: {
        float sd = is_resid ? resid_std : 0.02f;
        for (size_t j = 0; j < t->numel; j++) p[j] = sd * (float)loom_rng_normal(&r);
    }
    }
}

int loom_model_create(loom_model **out, const loom_config *cfg, uint64_t seed) {
    int rc = lm_model_alloc(out, cfg);
    if (rc != LOOM_OK) return rc;
    loom_model *m = *out;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < m->n_tensors; i++) init_tensor(m, i, seed);
    return LOOM_OK;
}

/* ---------------------------------------------------------------- low-precision base */

static int is_base_linear(const loom_model *m, int i) { return m->tensors[i].kind == LOOM_T_LINEAR_W; }

/* Held in low precision by loom_model_quantize_ex(..., what): the linear weights, and with
 * LOOM_QUANT_EMBED_HEAD the token embedding and the head (one tensor when tied). */
static int is_held_low(const loom_model *m, int i, int what) {
    return is_base_linear(m, i) || ((what & LOOM_QUANT_EMBED_HEAD) && (i == m->t_embed || i == m->t_head));
}

/* Returns the pages wholly inside params[off, off+n) to the system: the values there are no longer
 * read (the quantized copy is), so the float copy should not stay resident. */
static void release_range(float *params, size_t off, size_t n) {
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0) return;
    uintptr_t a = (uintptr_t)(params + off), e = (uintptr_t)(params + off + n);
    uintptr_t a1 = (a + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1), e1 = e & ~((uintptr_t)pg - 1);
    if (e1 > a1) madvise((void *)a1, e1 - a1, MADV_DONTNEED);
}

static int qbase_alloc(loom_model *m, loom_qtype type, int what) {
    struct loom_qbase *q = calloc(1, sizeof *q);
    if (!q) return loom_error(LOOM_ENOMEM, "out of memory");
    q->type = type;
    q->qoff = malloc((size_t)m->n_tensors * sizeof *q->qoff);
    q->soff = malloc((size_t)m->n_tensors * sizeof *q->soff);
    size_t ne = 0, ns = 0;
    for (int i = 0; q->qoff && q->soff && i < m->n_tensors; i++) {
        q->qoff[i] = q->soff[i] = (size_t)-1;
        if (!is_held_low(m, i, what)) continue;
        q->qoff[i] = ne;
        q->soff[i] = ns;
        ne += m->tensors[i].numel;
        /* output channels: rows of a Linear [out, in] (and of the embedding and head [V, C]), columns
         * of a Conv1D [in, out] */
        ns += (size_t)(m->cfg.arch == LOOM_ARCH_GPT2 && is_base_linear(m, i) ? m->tensors[i].shape[1]
                                                                              : m->tensors[i].shape[0]);
    }
    size_t es = type == LOOM_Q_BF16 ? 2 : type == LOOM_Q_INT8 ? 1 : 4;
    q->data = q->qoff ? loom_alloc(ne * es) : NULL;
    q->scale = type == LOOM_Q_INT8 ? loom_alloc((ns ? ns : 1) * sizeof(float)) : NULL;
    q->bytes = ne * es + (type == LOOM_Q_INT8 ? ns * sizeof(float) : 0);
    m->qbase = q;
    if (!q->qoff || !q->soff || !q->data || (type == LOOM_Q_INT8 && !q->scale))
        return loom_error(LOOM_ENOMEM, "out of memory for a %s base (%zu weights)", type == LOOM_Q_BF16 ? "bf16" : "int8", ne);
    return LOOM_OK;
}

static void qbase_free(struct loom_qbase *q) {
    if (!q) return;
    loom_free(q->data);
    loom_free(q->scale);
    free(q->qoff);
    free(q->soff);
    free(q);
}

static void quantize_tensor(loom_model *m, int i) {
    struct loom_qbase *q = m->qbase;
    const loom_tensor *t = &m->tensors[i];
    int conv = m->cfg.arch == LOOM_ARCH_GPT2 && is_base_linear(m, i);
    int layout = conv ? LOOM_W_CONV1D : LOOM_W_LINEAR;
    int C = (int)(conv ? t->shape[0] : t->shape[1]), OC = (int)(conv ? t->shape[1] : t->shape[0]);
    size_t es = q->type == LOOM_Q_BF16 ? 2 : 1;
    loom_quantize((char *)q->data + q->qoff[i] * es, q->scale ? q->scale + q->soff[i] : NULL, m->params + t->offset,
                  q->type, layout, C, OC);
    m->tensors[i].dtype = q->type;
    release_range(m->params, t->offset, t->numel);
}

int loom_model_quantize(loom_model *m, loom_qtype type) { return loom_model_quantize_ex(m, type, 0); }

int loom_model_quantize_ex(loom_model *m, loom_qtype type, int what) {
    if (m->qbase) return loom_error(LOOM_ESTATE, "the model's base is already held in low precision");
    if (type == LOOM_Q_F32) return LOOM_OK;
    if (type != LOOM_Q_BF16 && type != LOOM_Q_INT8) return loom_error(LOOM_EINVAL, "unknown base type %d", (int)type);
    int rc = qbase_alloc(m, type, what);
    if (rc != LOOM_OK) {
        qbase_free(m->qbase);
        m->qbase = NULL;
        return rc;
    }
    for (int i = 0; i < m->n_tensors; i++)
        if (is_held_low(m, i, what)) quantize_tensor(m, i);
    return LOOM_OK;
}

int loom_model_create_quantized(loom_model **out, const loom_config *cfg, uint64_t seed, loom_qtype type) {
    return loom_model_create_quantized_ex(out, cfg, seed, type, 0);
}

int loom_model_create_quantized_ex(loom_model **out, const loom_config *cfg, uint64_t seed, loom_qtype type, int what) {
    if (type == LOOM_Q_F32) return loom_model_create(out, cfg, seed);
    int rc = lm_model_alloc(out, cfg);
    if (rc != LOOM_OK) return rc;
    loom_model *m = *out;
    if ((rc = qbase_alloc(m, type, what)) != LOOM_OK) {
        loom_model_free(m);
        *out = NULL;
        return rc;
    }
    /* one tensor at a time, so the float copy of the linear weights is never resident all at once */
    for (int i = 0; i < m->n_tensors; i++) {
        init_tensor(m, i, seed);
        if (is_held_low(m, i, what)) quantize_tensor(m, i);
    }
    return LOOM_OK;
}

loom_qtype loom_model_base_type(const loom_model *m) { return m->qbase ? m->qbase->type : LOOM_Q_F32; }

size_t loom_model_base_bytes(const loom_model *m) {
    size_t b = 0;
    for (int i = 0; i < m->n_tensors; i++)
        if (m->tensors[i].dtype == LOOM_Q_F32) b += m->tensors[i].numel * sizeof(float);
    return b + (m->qbase ? m->qbase->bytes : 0);
}

lm_wref lm_weight_ref(const loom_model *m, const float *params, int idx) {
    const loom_tensor *t = &m->tensors[idx];
    int gpt2 = m->cfg.arch == LOOM_ARCH_GPT2;
    lm_wref w;
    memset(&w, 0, sizeof w);
    w.type = t->dtype;
    if (t->ndim == 2) { /* GPT-2 Conv1D [in, out]; Llama Linear and embeddings [out, in] */
        int conv = gpt2 && t->kind == LOOM_T_LINEAR_W;
        w.C = (int)(conv ? t->shape[0] : t->shape[1]);
        w.OC = (int)(conv ? t->shape[1] : t->shape[0]);
    }
    if (t->dtype == LOOM_Q_F32) {
        w.f = params + t->offset;
        return w;
    }
    const struct loom_qbase *q = m->qbase;
    size_t es = q->type == LOOM_Q_BF16 ? 2 : 1;
    w.q.type = q->type;
    w.q.layout = gpt2 && t->kind == LOOM_T_LINEAR_W ? LOOM_W_CONV1D : LOOM_W_LINEAR;
    w.q.data = (const char *)q->data + q->qoff[idx] * es;
    w.q.scale = q->scale ? q->scale + q->soff[idx] : NULL;
    return w;
}

int loom_model_weight(const loom_model *m, const float *params, int idx, float *dst) {
    if (idx < 0 || idx >= m->n_tensors) return loom_error(LOOM_EINVAL, "no tensor %d", idx);
    const loom_tensor *t = &m->tensors[idx];
    lm_wref w = lm_weight_ref(m, params, idx);
    if (w.type == LOOM_Q_F32) memcpy(dst, w.f, t->numel * sizeof(float));
    else loom_dequantize_rows(dst, &w.q, w.C, w.OC, 0, (int)t->shape[0]);
    return LOOM_OK;
}

int loom_model_to_float(loom_model **out, const loom_model *m, const float *params) {
    int rc = lm_model_alloc(out, &m->cfg);
    if (rc != LOOM_OK) return rc;
    for (int i = 0; i < m->n_tensors; i++) loom_model_weight(m, params, i, (*out)->params + m->tensors[i].offset);
    return LOOM_OK;
}

int lm_tensor_stage(const loom_model *m, int idx) {
    const loom_tensor *t = &m->tensors[idx];
    if (t->kind == LOOM_T_EMBED || t->kind == LOOM_T_POS) return -1;
    if (t->layer < 0) return m->cfg.n_layer * LOOM_STAGES;
    int s = LOOM_ST_NORM1;
    for (int k = 0; k < LOOM_L_NSLOTS; k++)
        if (m->layer_slot[t->layer][k] == idx) {
            switch (k) {
            case LOOM_L_NORM1_W: case LOOM_L_NORM1_B: s = LOOM_ST_NORM1; break;
            case LOOM_L_QKV_W: case LOOM_L_QKV_B: case LOOM_L_K_W: case LOOM_L_V_W: s = LOOM_ST_QKV; break;
            case LOOM_L_O_W: case LOOM_L_O_B: s = LOOM_ST_O; break;
            case LOOM_L_NORM2_W: case LOOM_L_NORM2_B: s = LOOM_ST_NORM2; break;
            case LOOM_L_UP_W: case LOOM_L_UP_B: case LOOM_L_GATE_W: s = LOOM_ST_UP; break;
            default: s = LOOM_ST_DOWN;
            }
            return t->layer * LOOM_STAGES + s;
        }
    /* Llama k/v biases have no slot of their own: they sit with q's */
    return t->layer * LOOM_STAGES + (t->kind == LOOM_T_LINEAR_B ? LOOM_ST_QKV : s);
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
    int part_l0, part_l1; /* layers the last forward ran (loom_forward_part; 0 and L for a whole pass) */
    int part_in;          /* the last forward started from given activations, not the embeddings */
    int part_head;        /* the last forward ran the final norm and the head */
    int ws_l0, ws_l1;     /* layers the workspace holds (loom_ws_create_part; 0 and L otherwise) */
    int fuse_loss;       /* loom_ws_set_fused_loss: a training forward with targets leaves dloss/dlogits */
    int logits_grad;     /* logits holds d loss / d logits (a fused forward), not the logits */
    const int32_t *tokens, *targets;
    int curB, curT;      /* batch of the last forward, as run (curT includes soft-prompt positions) */
    int32_t *tok_copy, *tgt_copy; /* tok_copy < 0: a soft-prompt position */
    /* trainable-set extras, sized for the plan given at creation */
    const loom_peft *pf, *last_pf; /* sized for / used by the last forward */
    const float *last_vec, *last_base;
    int prompt_len;      /* positions per row that are soft prompt (of the last forward) */
    float *pmem;
    float *hmem;         /* the plan's hook workspace (lm_peft_ops.ws_floats floats) */
    float *qscratch;     /* low-precision base: dequantized block */
    int dropout_on;
    uint64_t dropout_seed;
    int train;           /* sized for backward (else forward only) */
    float *row_w;        /* [B] loss weight per batch row (loom_ws_set_row_weights) */
    int use_row_w, n_row_w;
    /* matmul precision (loom_ws_set_precision) and the bf16 buffers of mixed precision */
    const loom_model *m;
    int prec;
    uint16_t *a16, *g16;          /* a matmul's input [N, max(C, H)] and output gradient [N, G16_COLS] */
    size_t g16_cols;
    uint16_t *w16_base;           /* bf16 mirror of a frozen base (only its matmul weights are written) */
    uint16_t *w16_tmp;            /* one matmul's bf16 weights, for weights that change (see w16_of) */
    uint64_t *st_base;            /* [n_tensors] whether each base tensor's conversion is made */
    const float *w16_base_src;    /* the base the permanent conversions came from */
};

/* Columns of the LM head's gradient converted to bf16 at a time (bf16 backward). */
#define HEAD_VB 4096
/* A permanent conversion (a frozen base): valid while the base pointer stays the same. */
#define W16_KEEP UINT64_MAX

/* train: sized for backward (every layer's activations kept, gradient scratch); else forward only
 * (one layer's activations, reused layer after layer, and no gradient scratch). */
static int ws_create(loom_ws **out, const loom_model *m, int B, int T, const loom_peft *pf, int train, int l0,
                     int l1, int head) {
    *out = NULL;
    const loom_config *c = &m->cfg;
    if (l0 < 0 || l1 > c->n_layer || l0 > l1)
        return loom_error(LOOM_EINVAL, "layers %d .. %d are not a part of a model of %d layers", l0, l1 - 1, c->n_layer);
    int P = pf ? pf->prompt_len : 0, PO = pf ? pf->prefix_len : 0;
    if (B < 1 || T < 1) return loom_error(LOOM_EINVAL, "batch %d x %d is empty", B, T);
    if (T + P + PO > c->max_seq) {
        if (P) return loom_error(LOOM_EINVAL, "sequence length %d plus a soft prompt of %d exceeds the model's %d positions", T, P, c->max_seq);
        if (PO) return loom_error(LOOM_EINVAL, "sequence length %d plus %d prefix positions exceeds the model's %d positions", T, PO, c->max_seq);
        return loom_error(LOOM_EINVAL, "sequence length %d exceeds the model's %d positions", T, c->max_seq);
    }
    T += P;
    loom_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return loom_error(LOOM_ENOMEM, "out of memory");
    int L = c->n_layer, C = c->dim, H = c->hidden, V = c->vocab;
    int KV = c->n_kv_head * (C / c->n_head);
    size_t N = (size_t)B * T;
    ws->B = B; ws->T = T; ws->L = L; ws->C = C; ws->H = H; ws->V = V;
    ws->QKV = C + 2 * KV;
    ws->mlp_in = c->arch == LOOM_ARCH_LLAMA ? 2 * H : H;
    ws->pf = pf;
    ws->m = m;
    ws->train = train;
    ws->ws_l0 = l0;
    ws->ws_l1 = l1;
    head = head && l1 == L;
    const int part = l0 > 0 || l1 < L || !head; /* a part's workspace: its layers only, logits only with the head */
    const size_t NV = head ? N * V : 0;
    ws->row_w = malloc((size_t)B * sizeof *ws->row_w);
    size_t att = (size_t)B * c->n_head * T * T;
    size_t per_layer = N * C * 4 + N * 4 + N * ws->QKV + att + N * ws->mlp_in + N * H;
    int nl = train ? l1 - l0 : 1, nres = train ? l1 - l0 + 1 : 2; /* layers whose activations are stored */
    size_t total = (size_t)nres * N * C + (size_t)nl * per_layer + N * C + 2 * N + NV + N + /* tmp */ N * C +
                   (train ? /* backward scratch */ N * C * 3 + N * ws->QKV + N * ws->mlp_in + N * H + att + 2 * N : 0);
    ws->mem = loom_alloc(total * sizeof(float));
    float ***lists[] = {&ws->res, &ws->n1, &ws->mean1, &ws->rstd1, &ws->qkv, &ws->att, &ws->atty, &ws->res2,
                        &ws->n2, &ws->mean2, &ws->rstd2, &ws->fch, &ws->fca};
    int ok = ws->mem != NULL;
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        *lists[i] = calloc(2 * (size_t)L + 1, sizeof(float *));
        ok &= *lists[i] != NULL;
    }
    ws->tok_copy = malloc(N * sizeof(int32_t));
    ws->tgt_copy = malloc(N * sizeof(int32_t));
    /* extras: what the plan's hooks keep (LoRA x A^T, adapter activations, prefix attention
     * probabilities); a low-precision base one dequantized block */
    size_t hooks = pf && pf->ops && pf->ops->ws_floats ? pf->ops->ws_floats(m, pf, B, T) : 0;
    size_t extra = hooks;
    size_t qs = 0;
    if (m->qbase) {
        int dims[3] = {ws->QKV, ws->mlp_in, C};
        for (int i = 0; i < 3; i++) {
            size_t a = loom_qmatmul_scratch(C, dims[i]), b = loom_qmatmul_scratch(H, C);
            qs = LOOM_MAX(qs, LOOM_MAX(a, b));
        }
        extra += qs;
    }
    if (extra) ws->pmem = loom_alloc(extra * sizeof(float));
    if (!ok || !ws->tok_copy || !ws->tgt_copy || !ws->row_w || (extra && !ws->pmem)) {
        loom_ws_free(ws);
        return loom_error(LOOM_ENOMEM, "out of memory for activations of batch %d x %d (%.1f MiB)", B, T,
                          (total + extra) * 4.0 / (1 << 20));
    }
    ws->bytes = (total + extra) * sizeof(float);
    float *p = ws->mem;
#define TAKE(n) (p += (n), p - (n))
    for (int l = 0; l <= L; l++)
        ws->res[l] = part ? (l >= l0 && l <= l1 ? TAKE(N * C) : NULL) : l < nres ? TAKE(N * C) : ws->res[l % 2];
    for (int l = 0; l < L; l++) {
        if (part && (l < l0 || l >= l1)) continue; /* outside the part: nothing kept */
        if (!train && l >= 1) { /* forward only: every layer works in layer 0's buffers */
            float ***ls[] = {&ws->n1, &ws->mean1, &ws->rstd1, &ws->qkv, &ws->att, &ws->atty, &ws->res2,
                             &ws->n2, &ws->mean2, &ws->rstd2, &ws->fch, &ws->fca};
            for (size_t i = 0; i < sizeof ls / sizeof ls[0]; i++) (*ls[i])[l] = (*ls[i])[0];
            continue;
        }
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
    ws->logits = NV ? TAKE(NV) : NULL;
    ws->losses = TAKE(N);
    ws->tmp = TAKE(N * C);
    if (train) {
        ws->dres = TAKE(N * C);
        ws->dn = TAKE(N * C);
        ws->datty = TAKE(N * C);
        ws->dqkv = TAKE(N * ws->QKV);
        ws->dfch = TAKE(N * ws->mlp_in);
        ws->dfca = TAKE(N * H);
        ws->datt = TAKE(att);
    }
    p = ws->pmem;
    if (hooks) ws->hmem = TAKE(hooks);
    if (qs) ws->qscratch = TAKE(qs);
#undef TAKE
    *out = ws;
    return LOOM_OK;
}

int loom_ws_create_ex(loom_ws **out, const loom_model *m, int B, int T, const loom_peft *pf) {
    return ws_create(out, m, B, T, pf, 1, 0, m->cfg.n_layer, 1);
}

int loom_ws_create_part(loom_ws **out, const loom_model *m, int B, int T, const loom_peft *pf, int l0, int l1,
                        int head) {
    return ws_create(out, m, B, T, pf, 1, l0, l1, head);
}

int loom_ws_create(loom_ws **out, const loom_model *m, int B, int T) {
    return ws_create(out, m, B, T, NULL, 1, 0, m->cfg.n_layer, 1);
}

int loom_ws_create_infer(loom_ws **out, const loom_model *m, int B, int T, const loom_peft *pf) {
    return ws_create(out, m, B, T, pf, 0, 0, m->cfg.n_layer, 1);
}

int loom_ws_set_row_weights(loom_ws *ws, const float *w, int B) {
    if (!w) {
        ws->use_row_w = 0;
        return LOOM_OK;
    }
    if (B < 1 || B > ws->B) return loom_error(LOOM_EINVAL, "%d row weights for a workspace of %d rows", B, ws->B);
    for (int b = 0; b < B; b++)
        if (!isfinite(w[b]) || w[b] < 0)
            return loom_error(LOOM_EINVAL, "row weight %d is %g (weights must be finite and >= 0)", b, (double)w[b]);
    memcpy(ws->row_w, w, (size_t)B * sizeof *w);
    ws->n_row_w = B;
    ws->use_row_w = 1;
    return LOOM_OK;
}

void loom_ws_free(loom_ws *ws) {
    if (!ws) return;
    loom_free(ws->mem);
    loom_free(ws->pmem);
    free(ws->res); free(ws->n1); free(ws->mean1); free(ws->rstd1); free(ws->qkv); free(ws->att);
    free(ws->atty); free(ws->res2); free(ws->n2); free(ws->mean2); free(ws->rstd2); free(ws->fch); free(ws->fca);
    free(ws->tok_copy);
    free(ws->tgt_copy);
    free(ws->row_w);
    loom_free(ws->a16);
    loom_free(ws->g16);
    loom_free(ws->w16_base);
    loom_free(ws->w16_tmp);
    free(ws->st_base);
    free(ws);
}

static void ws_drop_bf16(loom_ws *ws) {
    loom_free(ws->a16);
    loom_free(ws->g16);
    loom_free(ws->w16_base);
    loom_free(ws->w16_tmp);
    free(ws->st_base);
    ws->a16 = ws->g16 = ws->w16_base = ws->w16_tmp = NULL;
    ws->st_base = NULL;
    ws->w16_base_src = NULL;
    ws->prec = LOOM_PREC_F32;
}

int loom_ws_set_precision(loom_ws *ws, int precision) {
    if (precision != LOOM_PREC_F32 && precision != LOOM_PREC_BF16)
        return loom_error(LOOM_EINVAL, "unknown matmul precision %d", precision);
    ws_drop_bf16(ws);
    if (precision == LOOM_PREC_F32) return LOOM_OK;
    if (!loom_cpu_has_bf16())
        return loom_error(LOOM_EUNSUPPORTED, "this CPU has no AVX-512 BF16: matmuls stay in f32");
    const loom_model *m = ws->m;
    size_t N = (size_t)ws->B * ws->T;
    size_t acols = (size_t)LOOM_MAX(ws->C, ws->H);
    size_t gcols = (size_t)LOOM_MAX(LOOM_MAX(ws->QKV, ws->mlp_in), LOOM_MAX(ws->C, LOOM_MIN(ws->V, HEAD_VB)));
    size_t nt = (size_t)m->n_tensors;
    /* the largest single matmul's weights (fused neighbours included; the head in blocks of HEAD_VB rows) */
    size_t tmp = (size_t)ws->C * LOOM_MAX(LOOM_MAX(ws->QKV, ws->mlp_in), LOOM_MAX(ws->C, LOOM_MIN(ws->V, HEAD_VB)));
    tmp = LOOM_MAX(tmp, (size_t)ws->H * ws->C);
    /* the mirror is as long as the base but only a frozen base's matmul weights are ever written, so only
     * those pages become resident */
    ws->a16 = loom_alloc(N * acols * 2);
    ws->g16 = loom_alloc(N * gcols * 2);
    ws->g16_cols = gcols;
    ws->w16_base = loom_alloc(m->n_params * 2);
    ws->w16_tmp = loom_alloc(tmp * 2);
    ws->st_base = calloc(nt, sizeof *ws->st_base);
    if (!ws->a16 || !ws->g16 || !ws->w16_base || !ws->w16_tmp || !ws->st_base) {
        ws_drop_bf16(ws);
        return loom_error(LOOM_ENOMEM, "out of memory for the bf16 copies of a %zu-parameter model", m->n_params);
    }
    ws->prec = LOOM_PREC_BF16;
    return LOOM_OK;
}

int loom_ws_precision(const loom_ws *ws) { return ws->prec; }

const char *loom_precision_name(int precision) { return precision == LOOM_PREC_BF16 ? "bf16" : "f32"; }

int loom_precision_parse(const char *s) {
    if (!s) return -1;
    if (!strcmp(s, "f32")) return LOOM_PREC_F32;
    if (!strcmp(s, "bf16")) return LOOM_PREC_BF16;
    return -1;
}

size_t loom_ws_bytes(const loom_ws *ws) { return ws->bytes; }
float *loom_ws_logits(loom_ws *ws) { return ws->logits; }
const float *loom_ws_losses(const loom_ws *ws) { return ws->losses; }
int loom_ws_prompt_len(const loom_ws *ws) { return ws->prompt_len; }
void loom_ws_set_fused_loss(loom_ws *ws, int on) { ws->fuse_loss = on != 0; }
int loom_ws_set_logits_grad(loom_ws *ws) {
    if (!ws->train || !ws->have_forward || ws->n_valid < 0)
        return loom_error(LOOM_ESTATE, "the logits gradient needs a training forward with targets first");
    ws->logits_grad = 1;
    return LOOM_OK;
}
void loom_ws_set_dropout(loom_ws *ws, int on, uint64_t seed) {
    ws->dropout_on = on;
    ws->dropout_seed = seed;
}

/* ---------------------------------------------------------------- forward */

/* Where each tensor comes from in one pass: the trainable vector (a trained copy), the frozen base
 * (float or low precision), and where its gradient goes (NULL: frozen). */
typedef struct {
    const loom_model *m;
    const float *base, *vec;
    float *gbase, *gvec;
    const uint8_t *trainable;
    const loom_peft *pf;
    loom_ws *ws;
    int lay;
    /* per-row weight gradients (loom_backward_ex_rows): gvec is row 0's gradient, row b's lies at
     * gvec + b * gstride; 0 = one gradient for the whole batch */
    size_t gstride;
} run_ctx;

static int trained_copy(const run_ctx *r, int idx) { return r->pf && r->pf->tmap[idx] >= 0; }

/* Float values of tensor idx in this pass (a trained copy, or the float base); NULL for a tensor held
 * in low precision, whose values only the matmuls read (through qmat_of). */
static const float *tp(const run_ctx *r, int idx) {
    if (idx < 0) return NULL;
    if (trained_copy(r, idx)) return r->vec + r->pf->tmap[idx];
    return lm_weight_ref(r->m, r->base, idx).f;
}

static int tq(const run_ctx *r, int idx) { /* held in low precision (and frozen) */
    return idx >= 0 && r->m->tensors[idx].dtype != LOOM_Q_F32 && !trained_copy(r, idx);
}

static float *tg(const run_ctx *r, int idx) {
    if (idx < 0) return NULL;
    if (r->pf) return r->pf->tmap[idx] >= 0 ? r->gvec + r->pf->tmap[idx] : NULL;
    if ((r->trainable && !r->trainable[idx]) || tq(r, idx)) return NULL;
    return r->gbase + r->m->tensors[idx].offset;
}

static loom_qmat qmat_of(const run_ctx *r, int idx) { return lm_weight_ref(r->m, r->base, idx).q; }

/* ---- bf16 mixed precision (loom_ws_set_precision) */

static int use_bf16(const run_ctx *r) { return r->ws->prec == LOOM_PREC_BF16; }

/* bf16 values e0 .. e0 + n - 1 of those a matmul reads from tensor idx onwards (full of them in all: they
 * may run into the tensors that follow it, Llama's adjacent q|k|v and gate|up). A frozen base (a plan's
 * base) is converted once, all full values, into the mirror, and kept while the base pointer stays; a
 * base held in bf16 is read as it is. Weights that change (a trained copy, or a base without a plan,
 * which loom_backward may be training) are converted at each use into one matmul's scratch (valid until
 * the next call): no bf16 copy of the whole model, at the cost of converting again in backward. */
static const uint16_t *w16_of(const run_ctx *r, int idx, size_t full, size_t e0, size_t n) {
    loom_ws *ws = r->ws;
    const loom_model *m = r->m;
    if (tq(r, idx)) return (const uint16_t *)lm_weight_ref(m, r->base, idx).q.data + e0; /* a bf16 base */
    const float *src = tp(r, idx);
    if (trained_copy(r, idx) || !r->pf) {
        loom_f32_to_bf16_daz_n(ws->w16_tmp, src + e0, n);
        return ws->w16_tmp;
    }
    size_t off = m->tensors[idx].offset;
    if (ws->w16_base_src != r->base) { /* a new base: forget the old one's copies */
        memset(ws->st_base, 0, (size_t)m->n_tensors * sizeof *ws->st_base);
        ws->w16_base_src = r->base;
    }
    if (ws->st_base[idx] != W16_KEEP) {
        loom_f32_to_bf16_daz_n(ws->w16_base + off, src, full);
        ws->st_base[idx] = W16_KEEP;
    }
    return ws->w16_base + off + e0;
}

/* bf16 applies to tensor widx: a float weight, or a base held in bf16 (an int8 base keeps its path) */
static int bf16_for(const run_ctx *r, int widx) {
    return use_bf16(r) && (!tq(r, widx) || r->m->tensors[widx].dtype == LOOM_Q_BF16);
}

static void add_bias(float *out, int ldo, const float *bias, int N, int OC) {
#pragma omp parallel for schedule(static) if ((size_t)N * OC >= 8192)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * ldo;
        for (int j = 0; j < OC; j++) o[j] += bias[j];
    }
}

/* out[N, OC] = bf16(inp) @ bf16(W) (+ bias), float accumulation */
static void mm_fwd16(const run_ctx *r, int widx, int layout, float *out, int ldo, const float *inp, int ldi,
                     const float *bias, int N, int C, int OC) {
    const uint16_t *w = w16_of(r, widx, (size_t)C * OC, 0, (size_t)C * OC);
    loom_f32_to_bf16_daz_2d(r->ws->a16, (size_t)C, inp, (size_t)ldi, (size_t)N, (size_t)C);
    if (layout == LOOM_W_LINEAR) loom_sbgemm(0, 1, N, OC, C, 1.0f, r->ws->a16, C, w, C, 0.0f, out, ldo);
    else loom_sbgemm(0, 0, N, OC, C, 1.0f, r->ws->a16, C, w, OC, 0.0f, out, ldo);
    if (bias) add_bias(out, ldo, bias, N, OC);
}

static void mm_fwd(const run_ctx *r, int widx, float *out, int ldo, const float *inp, int ldi, const float *bias, int N,
                   int C, int OC) {
    if (bf16_for(r, widx)) {
        mm_fwd16(r, widx, r->lay, out, ldo, inp, ldi, bias, N, C, OC);
    } else if (tq(r, widx)) {
        loom_qmat w = qmat_of(r, widx);
        loom_qmatmul_forward(out, ldo, inp, ldi, &w, bias, N, C, OC, r->ws->qscratch);
    } else {
        loom_matmul_forward(out, ldo, inp, ldi, tp(r, widx), r->lay, bias, N, C, OC);
    }
}

/* Per-row weight gradients: the input gradient for the whole batch in one product, then the weight (and
 * bias) gradient of each batch row b (positions b*T .. b*T+T-1) into its own gradient row. */
static void mm_bwd_f(const run_ctx *r, const float *w, int layout, float *dinp, int ldi, float beta, float *dw, float *db,
                     const float *dout, int ldo, const float *inp, int N, int C, int OC) {
    if (!r->gstride || (!dw && !db)) {
        loom_matmul_backward(dinp, ldi, beta, dw, db, dout, ldo, inp, w, layout, N, C, OC);
        return;
    }
    if (dinp) loom_matmul_backward(dinp, ldi, beta, NULL, NULL, dout, ldo, inp, w, layout, N, C, OC);
    const int B = r->ws->curB, T = r->ws->curT;
    for (int b = 0; b < B; b++) {
        size_t o = (size_t)b * r->gstride, p = (size_t)b * T;
        loom_matmul_backward(NULL, ldi, 0.0f, dw ? dw + o : NULL, db ? db + o : NULL, dout + p * ldo, ldo, inp + p * ldi, w,
                             layout, T, C, OC);
    }
}

static void colsum_rows(const run_ctx *r, float *db, const float *x, int ld, int N, int C) {
    if (!r->gstride) {
        loom_colsum_acc(db, x, ld, N, C);
        return;
    }
    const int T = r->ws->curT;
    for (int b = 0; b < r->ws->curB; b++) loom_colsum_acc(db + (size_t)b * r->gstride, x + (size_t)b * T * ld, ld, T, C);
}

static void ln_bwd(const run_ctx *r, float *dinp, float *dw, float *db, const float *dout, const float *x, const float *w,
                   const float *mean, const float *rstd, int N, int C) {
    if (!r->gstride || (!dw && !db)) {
        loom_layernorm_backward(dinp, dw, db, dout, x, w, mean, rstd, N, C);
        return;
    }
    const int T = r->ws->curT;
    for (int b = 0; b < r->ws->curB; b++) {
        size_t o = (size_t)b * r->gstride, p = (size_t)b * T;
        loom_layernorm_backward(dinp + p * C, dw ? dw + o : NULL, db ? db + o : NULL, dout + p * C, x + p * C, w, mean + p,
                                rstd + p, T, C);
    }
}

static void rms_bwd(const run_ctx *r, float *dinp, float *dw, const float *dout, const float *x, const float *w,
                    const float *rstd, int N, int C) {
    if (!r->gstride || !dw) {
        loom_rmsnorm_backward(dinp, dw, dout, x, w, rstd, N, C);
        return;
    }
    const int T = r->ws->curT;
    for (int b = 0; b < r->ws->curB; b++) {
        size_t p = (size_t)b * T;
        loom_rmsnorm_backward(dinp + p * C, dw + (size_t)b * r->gstride, dout + p * C, x + p * C, w, rstd + p, T, C);
    }
}

/* The bf16 backward of out = inp @ W: dinp = beta dinp + bf16(dout) @ bf16(W)^T, dW += bf16(inp)^T
 * bf16(dout) (per batch row with gstride), db += colsum(dout) in float. */
static void mm_bwd16(const run_ctx *r, int widx, int layout, float *dinp, int ldi, float beta, float *dw, float *db,
                     const float *dout, int ldo, const float *inp, int N, int C, int OC) {
    loom_ws *ws = r->ws;
    uint16_t *g = ws->g16, *a = ws->a16;
    loom_f32_to_bf16_daz_2d(g, (size_t)OC, dout, (size_t)ldo, (size_t)N, (size_t)OC);
    if (dinp) {
        const uint16_t *w = w16_of(r, widx, (size_t)C * OC, 0, (size_t)C * OC);
        if (layout == LOOM_W_LINEAR) loom_sbgemm(0, 0, N, C, OC, 1.0f, g, OC, w, C, beta, dinp, ldi);
        else loom_sbgemm(0, 1, N, C, OC, 1.0f, g, OC, w, OC, beta, dinp, ldi);
    }
    if (dw) {
        loom_f32_to_bf16_daz_2d(a, (size_t)C, inp, (size_t)ldi, (size_t)N, (size_t)C);
        const int rows = r->gstride ? ws->curB : 1, T = r->gstride ? ws->curT : N;
        for (int b = 0; b < rows; b++) {
            size_t p = (size_t)b * T;
            float *d = dw + (size_t)b * r->gstride;
            if (layout == LOOM_W_LINEAR) loom_sbgemm(1, 0, OC, C, T, 1.0f, g + p * OC, OC, a + p * C, C, 1.0f, d, C);
            else loom_sbgemm(1, 0, C, OC, T, 1.0f, a + p * C, C, g + p * OC, OC, 1.0f, d, OC);
        }
    }
    if (db) colsum_rows(r, db, dout, ldo, N, OC);
}

static void mm_bwd(const run_ctx *r, int widx, float *dinp, int ldi, float beta, float *dw, float *db, const float *dout,
                   int ldo, const float *inp, int N, int C, int OC) {
    if (bf16_for(r, widx) && (dinp || dw)) {
        mm_bwd16(r, widx, r->lay, dinp, ldi, beta, dw, db, dout, ldo, inp, N, C, OC);
    } else if (tq(r, widx)) {
        loom_qmat w = qmat_of(r, widx);
        if (dinp) loom_qmatmul_backward(dinp, ldi, beta, dout, ldo, &w, N, C, OC, r->ws->qscratch);
        if (db) colsum_rows(r, db, dout, ldo, N, OC);
    } else {
        mm_bwd_f(r, tp(r, widx), r->lay, dinp, ldi, beta, dw, db, dout, ldo, inp, N, C, OC);
    }
}

/* The LM head: logits[N, V] = nf[N, C] @ W^T, W the [V, C] head (or tied embedding); in bf16 HEAD_VB
 * rows of W (columns of the logits) at a time. */
static void head_fwd(const run_ctx *r, float *logits, const float *nf, int N, int C, int V) {
    int h = r->m->t_head;
    if (!use_bf16(r)) {
        loom_matmul_forward(logits, V, nf, C, tp(r, h), LOOM_W_LINEAR, NULL, N, C, V);
        return;
    }
    loom_f32_to_bf16_daz_2d(r->ws->a16, (size_t)C, nf, (size_t)C, (size_t)N, (size_t)C);
    for (int v0 = 0; v0 < V; v0 += HEAD_VB) {
        int vb = LOOM_MIN(HEAD_VB, V - v0);
        const uint16_t *w = w16_of(r, h, (size_t)V * C, (size_t)v0 * C, (size_t)vb * C);
        loom_sbgemm(0, 1, N, vb, C, 1.0f, r->ws->a16, C, w, C, 0.0f, logits + v0, V);
    }
}

/* dn[N, C] = dlogits @ W, dW += dlogits^T nf. In bf16 the [N, V] gradient is converted HEAD_VB columns
 * at a time (a bf16 copy of all of it would be as large as the activations): dn sums the column blocks
 * in order, each dW row block is one product. */
static void head_bwd(const run_ctx *r, float *dn, float *dw, const float *dlogits, const float *nf, int N, int C, int V) {
    int h = r->m->t_head;
    if (!use_bf16(r)) {
        mm_bwd_f(r, tp(r, h), LOOM_W_LINEAR, dn, C, 0.0f, dw, NULL, dlogits, V, nf, N, C, V);
        return;
    }
    loom_ws *ws = r->ws;
    uint16_t *g = ws->g16, *a = ws->a16;
    if (dw) loom_f32_to_bf16_daz_2d(a, (size_t)C, nf, (size_t)C, (size_t)N, (size_t)C);
    const int rows = r->gstride ? ws->curB : 1, T = r->gstride ? ws->curT : N;
    for (int v0 = 0; v0 < V; v0 += HEAD_VB) {
        int vb = LOOM_MIN(HEAD_VB, V - v0);
        loom_f32_to_bf16_daz_2d(g, (size_t)vb, dlogits + v0, (size_t)V, (size_t)N, (size_t)vb);
        if (dn) {
            const uint16_t *w = w16_of(r, h, (size_t)V * C, (size_t)v0 * C, (size_t)vb * C);
            loom_sbgemm(0, 0, N, C, vb, 1.0f, g, vb, w, C, v0 ? 1.0f : 0.0f, dn, C);
        }
        for (int b = 0; dw && b < rows; b++) {
            size_t p = (size_t)b * T;
            loom_sbgemm(1, 0, vb, C, T, 1.0f, g + p * vb, vb, a + p * C, C, 1.0f, dw + (size_t)b * r->gstride + (size_t)v0 * C,
                        C);
        }
    }
}

/* The hooks' view of this pass. */
static lm_hook_ctx hook_ctx(const run_ctx *r) {
    const loom_ws *ws = r->ws;
    lm_hook_ctx h = {r->m, r->pf, r->vec, r->gvec, ws->hmem, ws->B, ws->T, (size_t)ws->B * ws->T, ws->dropout_on,
                     ws->dropout_seed, 0};
    return h;
}

#define SLOT(l, s) (m->layer_slot[l][s])
#define PW(l, s) tp(&r, SLOT(l, s))

/* A method's hook, if the plan has one (see lm_peft_ops). */
#define HOOK(fn) (ops && ops->fn)

/* Layers l0 .. l1 - 1 (0 and L for a whole pass): from x_in when given (else from the embeddings, l0 = 0);
 * l1 < L stops before the final norm. */
static int forward_impl(const run_ctx *rc, int l0, int l1, int head, const int32_t *tokens, const float *x_in,
                        const int32_t *targets, int B, int Tu, float *loss) {
    const run_ctx r = *rc;
    const lm_hook_ctx hk = hook_ctx(&r);
    const lm_peft_ops *ops = r.pf ? r.pf->ops : NULL;
    const loom_model *m = r.m;
    loom_ws *ws = r.ws;
    const loom_peft *pf = r.pf;
    const loom_config *c = &m->cfg;
    const int P = pf ? pf->prompt_len : 0, T = Tu + P;
    if (pf && ws->pf != pf)
        return loom_error(LOOM_EINVAL, "the workspace was not created for this trainable set (loom_ws_create_ex)");
    const int L = c->n_layer;
    if (l0 < 0 || l1 > L || l0 > l1)
        return loom_error(LOOM_EINVAL, "layers %d .. %d are not a part of a model of %d layers", l0, l1 - 1, L);
    if (!x_in && !tokens) return loom_error(LOOM_EINVAL, "a forward pass from the embeddings needs tokens");
    if (l0 > 0 && !x_in) return loom_error(LOOM_EINVAL, "a forward pass from layer %d needs its input activations", l0);
    if (l0 < ws->ws_l0 || l1 > ws->ws_l1)
        return loom_error(LOOM_EINVAL, "layers %d .. %d are outside the workspace's part (layers %d .. %d)", l0, l1 - 1,
                          ws->ws_l0, ws->ws_l1 - 1);
    if (l1 < L) head = 0;
    if (head && !ws->logits)
        return loom_error(LOOM_EINVAL, "the workspace was made for a part without the head (loom_ws_create_part)");
    if (!head) targets = NULL; /* no loss in a part that ends before the head */
    if ((!x_in && !tp(&r, m->t_embed)) || (head && !tp(&r, m->t_head)))
        return loom_error(LOOM_EUNSUPPORTED, "the token embedding and head are held in low precision for generation "
                                             "only (loom_model_quantize_ex): the forward pass needs them in float");
    if (B > ws->B || T > ws->T || B < 1 || Tu < 1)
        return loom_error(LOOM_EINVAL, "batch %d x %d does not fit the workspace (%d x %d)", B, Tu, ws->B, ws->T - P);
    const int C = c->dim, H = c->hidden, V = c->vocab, NH = c->n_head, NKV = c->n_kv_head, HS = C / NH;
    const int QKV = ws->QKV, N = B * T;
    const int gpt2 = c->arch == LOOM_ARCH_GPT2;
    if (tokens)
        for (int n = 0; n < B * Tu; n++)
            if (tokens[n] < 0 || tokens[n] >= V)
                return loom_error(LOOM_ERANGE, "token %d at position %d is outside the vocabulary (%d)", tokens[n], n, V);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            ws->tok_copy[b * T + t] = t < P ? -1 : tokens ? tokens[b * Tu + t - P] : 0;
            ws->tgt_copy[b * T + t] = t < P || !targets ? -1 : targets[b * Tu + t - P];
        }
    ws->curB = B;
    ws->curT = T;
    ws->prompt_len = P;
    ws->last_pf = pf;
    ws->last_vec = r.vec;
    ws->last_base = r.base;
    ws->part_l0 = l0;
    ws->part_l1 = l1;
    ws->part_in = x_in != NULL;
    ws->part_head = head;
    ws->have_forward = 0;

    /* embeddings (soft-prompt rows come from the trainable vector) */
    const float *wte = tp(&r, m->t_embed), *wpe = gpt2 ? tp(&r, m->t_pos) : NULL;
    const float *prompt = P && HOOK(prompt) ? ops->prompt(&hk, NULL) : NULL;
    if (P && !prompt) return loom_error(LOOM_EINVAL, "a soft prompt of %d positions without its rows", P);
    const int32_t *tk = ws->tok_copy;
    float *x0 = ws->res[0];
    /* prefix tuning's rows sit at positions 0 .. prefix_len - 1 before the sequence (as in PEFT, where they are
     * the cache of a past): the sequence's row t is at position prefix_len + t */
    const int PO = pf ? pf->prefix_len : 0;
    if (x_in) memcpy(ws->res[l0], x_in, (size_t)N * C * sizeof(float));
#pragma omp parallel for schedule(static)
    for (int n = 0; n < (x_in ? 0 : N); n++) {
        const float *e = tk[n] >= 0 ? wte + (size_t)tk[n] * C : prompt + (size_t)(n % T) * C;
        float *o = x0 + (size_t)n * C;
        if (wpe) {
            const float *pp = wpe + (size_t)(PO + n % T) * C;
            for (int i = 0; i < C; i++) o[i] = e[i] + pp[i];
        } else {
            memcpy(o, e, (size_t)C * sizeof *o);
        }
    }

    for (int l = l0; l < l1; l++) {
        float *x = ws->res[l], *x2 = ws->res2[l], *x3 = ws->res[l + 1];
        if (gpt2)
            loom_layernorm_forward(ws->n1[l], ws->mean1[l], ws->rstd1[l], x, PW(l, LOOM_L_NORM1_W), PW(l, LOOM_L_NORM1_B),
                                   N, C, c->norm_eps);
        else
            loom_rmsnorm_forward(ws->n1[l], ws->rstd1[l], x, PW(l, LOOM_L_NORM1_W), N, C, c->norm_eps);
        mm_fwd(&r, SLOT(l, LOOM_L_QKV_W), ws->qkv[l], QKV, ws->n1[l], C, PW(l, LOOM_L_QKV_B), N, C, QKV);
        if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_QKV, ws->n1[l], C, ws->qkv[l], QKV, N);
        if (!gpt2) {
            loom_rope(ws->qkv[l], QKV, B, T, NH, HS, c->rope_theta, PO, 0);
            loom_rope(ws->qkv[l] + C, QKV, B, T, NKV, HS, c->rope_theta, PO, 0);
        }
        if (!(HOOK(attn_fwd) && ops->attn_fwd(&hk, l, ws->atty[l], ws->qkv[l], QKV, B, T)))
            loom_attention_forward(ws->atty[l], ws->att[l], ws->qkv[l], QKV, B, T, NH, NKV, HS);
        mm_fwd(&r, SLOT(l, LOOM_L_O_W), ws->tmp, C, ws->atty[l], C, PW(l, LOOM_L_O_B), N, C, C);
        if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_O, ws->atty[l], C, ws->tmp, C, N);
        if (HOOK(point_fwd)) ops->point_fwd(&hk, l, 0, ws->tmp, N);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < (size_t)N * C; i++) x2[i] = x[i] + ws->tmp[i];
        if (gpt2) {
            loom_layernorm_forward(ws->n2[l], ws->mean2[l], ws->rstd2[l], x2, PW(l, LOOM_L_NORM2_W),
                                   PW(l, LOOM_L_NORM2_B), N, C, c->norm_eps);
            mm_fwd(&r, SLOT(l, LOOM_L_UP_W), ws->fch[l], H, ws->n2[l], C, PW(l, LOOM_L_UP_B), N, C, H);
            if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_UP, ws->n2[l], C, ws->fch[l], H, N);
            loom_gelu_forward(ws->fca[l], ws->fch[l], (size_t)N * H, c->act == LOOM_ACT_GELU_ERF);
        } else {
            loom_rmsnorm_forward(ws->n2[l], ws->rstd2[l], x2, PW(l, LOOM_L_NORM2_W), N, C, c->norm_eps);
            mm_fwd(&r, SLOT(l, LOOM_L_GATE_W), ws->fch[l], 2 * H, ws->n2[l], C, NULL, N, C, 2 * H);
            if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_UP, ws->n2[l], C, ws->fch[l], 2 * H, N);
            loom_swiglu_forward(ws->fca[l], ws->fch[l], N, H);
        }
        mm_fwd(&r, SLOT(l, LOOM_L_DOWN_W), ws->tmp, C, ws->fca[l], H, PW(l, LOOM_L_DOWN_B), N, H, C);
        if (HOOK(site_fwd)) ops->site_fwd(&hk, l, LOOM_SITE_DOWN, ws->fca[l], H, ws->tmp, C, N);
        if (HOOK(point_fwd)) ops->point_fwd(&hk, l, 1, ws->tmp, N);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < (size_t)N * C; i++) x3[i] = x2[i] + ws->tmp[i];
    }
    if (!head) { /* a part that ends before the head: its output is the residual stream res[l1] */
        ws->have_forward = 1;
        ws->logits_grad = 0;
        ws->n_valid = 0;
        if (loss) *loss = 0.0f;
        return LOOM_OK;
    }
    float *xl = ws->res[c->n_layer];
    if (gpt2)
        loom_layernorm_forward(ws->nf, ws->meanf, ws->rstdf, xl, tp(&r, m->t_normf_w), tp(&r, m->t_normf_b), N, C,
                               c->norm_eps);
    else
        loom_rmsnorm_forward(ws->nf, ws->rstdf, xl, tp(&r, m->t_normf_w), N, C, c->norm_eps);
    head_fwd(&r, ws->logits, ws->nf, N, C, V);

    ws->have_forward = 1;
    ws->logits_grad = 0;
    if (targets) {
        if (ws->use_row_w && ws->n_row_w != B)
            return loom_error(LOOM_EINVAL, "%d row weights set for a batch of %d rows", ws->n_row_w, B);
        const float *rw = ws->use_row_w ? ws->row_w : NULL;
        float l;
        if (ws->fuse_loss && ws->train) {
            /* training: the loss and its gradient in one pass (e^x once per logit); backward starts there */
            l = loom_crossentropy_fused_w(ws->losses, ws->logits, ws->tgt_copy, rw, T, N, V, &ws->n_valid, 1.0f);
            ws->logits_grad = 1;
        } else {
            l = loom_crossentropy_forward_w(ws->losses, ws->logits, ws->tgt_copy, rw, T, N, V, &ws->n_valid);
        }
        if (loss) *loss = l;
    } else {
        ws->n_valid = -1;
        if (loss) *loss = 0.0f;
    }
    return LOOM_OK;
}

int loom_forward(const loom_model *m, const float *params, loom_ws *ws, const int32_t *tokens,
                 const int32_t *targets, int B, int T, float *loss) {
    run_ctx r = {m, params, NULL, NULL, NULL, NULL, NULL, ws, m->cfg.arch == LOOM_ARCH_GPT2 ? LOOM_W_CONV1D : LOOM_W_LINEAR, 0};
    return forward_impl(&r, 0, m->cfg.n_layer, 1, tokens, NULL, targets, B, T, loss);
}

int loom_forward_ex(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                    const int32_t *tokens, const int32_t *targets, int B, int T, float *loss) {
    if (!pf || !vec) return loom_error(LOOM_EINVAL, "loom_forward_ex needs a plan and its vector");
    run_ctx r = {m, base, vec, NULL, NULL, NULL, pf, ws, m->cfg.arch == LOOM_ARCH_GPT2 ? LOOM_W_CONV1D : LOOM_W_LINEAR, 0};
    return forward_impl(&r, 0, m->cfg.n_layer, 1, tokens, NULL, targets, B, T, loss);
}

/* ---------------------------------------------------------------- backward */

#define G(idx) tg(&r, idx)
#define GS(l, s) G(SLOT(l, s))

/* Lowest forward position whose parameters get a gradient in this pass. */
static int lowest_trainable(const run_ctx *r) {
    const loom_model *m = r->m;
    if (r->pf) return r->pf->lowest;
    int lo = m->cfg.n_layer * LOOM_STAGES + 1;
    for (int i = 0; i < m->n_tensors; i++)
        if (tg(r, i)) lo = LOOM_MIN(lo, lm_tensor_stage(m, i));
    return lo;
}

/* The hooks' view of batch row b in a per-row pass: its own gradient row, and its first position in the
 * batch (where the method finds what the batched forward kept for that row). */
static lm_hook_ctx hook_row(const lm_hook_ctx *hk, const run_ctx *r, int b) {
    lm_hook_ctx h = *hk;
    h.gvec = hk->gvec + (size_t)b * r->gstride;
    h.pos0 = (size_t)b * r->ws->curT;
    return h;
}

static void site_bwd_rows(const run_ctx *r, const lm_hook_ctx *hk, int l, int site, const float *x, int ldx,
                          const float *dout, int ldo, float *dinp, int ldi, int N) {
    const lm_peft_ops *ops = r->pf->ops;
    if (!r->gstride) {
        ops->site_bwd(hk, l, site, x, ldx, dout, ldo, dinp, ldi, N);
        return;
    }
    const int T = r->ws->curT;
    for (int b = 0; b < r->ws->curB; b++) {
        lm_hook_ctx h = hook_row(hk, r, b);
        size_t p = (size_t)b * T;
        ops->site_bwd(&h, l, site, x + p * ldx, ldx, dout + p * ldo, ldo, dinp ? dinp + p * ldi : NULL, ldi, T);
    }
}

/* Row by row, each row's input gradient lands at its own positions of one [N, C] buffer (the method's):
 * the first row's pointer is the whole batch's. */
static const float *point_bwd_rows(const run_ctx *r, const lm_hook_ctx *hk, int l, int a, const float *dy, int N,
                                   int need_input) {
    const lm_peft_ops *ops = r->pf->ops;
    if (!r->gstride) return ops->point_bwd(hk, l, a, dy, N, need_input);
    const int T = r->ws->curT, C = r->m->cfg.dim;
    const float *first = NULL;
    for (int b = 0; b < r->ws->curB; b++) {
        lm_hook_ctx h = hook_row(hk, r, b);
        const float *o = ops->point_bwd(&h, l, a, dy + (size_t)b * T * C, T, need_input);
        if (b == 0) first = o;
    }
    return first;
}

static int attn_bwd_rows(const run_ctx *r, const lm_hook_ctx *hk, int l, float *dqkv, const float *dout,
                         const float *qkv, int ldqkv, int B, int T) {
    const lm_peft_ops *ops = r->pf->ops;
    if (!r->gstride) return ops->attn_bwd(hk, l, dqkv, dout, qkv, ldqkv, B, T);
    const int C = r->m->cfg.dim;
    for (int b = 0; b < B; b++) {
        lm_hook_ctx h = hook_row(hk, r, b);
        size_t p = (size_t)b * T;
        if (!ops->attn_bwd(&h, l, dqkv + p * ldqkv, dout + p * C, qkv + p * ldqkv, ldqkv, 1, T)) return 0;
    }
    return 1;
}

/* dx_out: the gradient of a part's output activations (a part that ends before the head); dx_in (may be
 * NULL): receives the gradient of its input activations (a part that starts after the embeddings). */
static int backward_impl(const run_ctx *rc, const float *dx_out, float *dx_in) {
    const run_ctx r = *rc;
    const lm_hook_ctx hk = hook_ctx(&r);
    const lm_peft_ops *ops = r.pf ? r.pf->ops : NULL;
    const loom_model *m = r.m;
    loom_ws *ws = r.ws;
    const loom_peft *pf = r.pf;
    const loom_config *c = &m->cfg;
    if (!ws->train)
        return loom_error(LOOM_ESTATE, "the workspace is for inference only (loom_ws_create_infer): no backward");
    if (!ws->have_forward || ws->n_valid < 0)
        return loom_error(LOOM_ESTATE, "backward needs a forward pass with targets first");
    if (ws->last_pf != pf || ws->last_vec != r.vec || ws->last_base != r.base)
        return loom_error(LOOM_ESTATE, "backward must use the parameters and trainable set of the forward pass");
    const int B = ws->curB, T = ws->curT, N = B * T;
    const int C = c->dim, H = c->hidden, V = c->vocab, NH = c->n_head, NKV = c->n_kv_head, HS = C / NH;
    const int QKV = ws->QKV, KV = NKV * HS;
    const int gpt2 = c->arch == LOOM_ARCH_GPT2;
    const int l0 = ws->part_l0, l1 = ws->part_l1;
    const int head = ws->part_head;
    if (!head && !dx_out)
        return loom_error(LOOM_EINVAL, "the backward of a part ending at layer %d needs the gradient of its output", l1);
    const int from_x = ws->part_in;
    if (!from_x) dx_in = NULL;
    /* the input gradient of a part is wanted whatever trains inside it */
    const int lowest = dx_in ? LOOM_MIN(lowest_trainable(&r), l0 * LOOM_STAGES - 1) : lowest_trainable(&r);
    if (from_x && dx_in && l0 == l1 && !head) { /* an empty part: the gradient passes through */
        memcpy(dx_in, dx_out, (size_t)N * C * sizeof(float));
        return LOOM_OK;
    }
    /* NEED(l, s): the input gradient of stage s of layer l is needed (something below it trains);
     * below the lowest trainable point nothing is differentiated */
#define NEED(l, s) ((l) * LOOM_STAGES + (s) > lowest)
    ws->have_forward = 0; /* logits are about to be overwritten */

    if (!head) { /* a part ending before the head: start from the gradient of its output */
        ws->logits_grad = 0;
        if (!NEED(l1, 0)) return LOOM_OK;
        memcpy(ws->dres, dx_out, (size_t)N * C * sizeof(float));
        goto layers;
    }
    /* loss -> logits (in place; a fused forward already left the gradient there) -> final norm */
    if (!ws->logits_grad)
        loom_crossentropy_backward_w(ws->logits, ws->tgt_copy, ws->use_row_w ? ws->row_w : NULL, T, N, V, ws->n_valid,
                                     1.0f);
    ws->logits_grad = 0;
    head_bwd(&r, ws->dn, G(m->t_head), ws->logits, ws->nf, N, C, V);
    float *xl = ws->res[c->n_layer];
    if (!NEED(c->n_layer, 0)) { /* only the final norm / head train: no gradient flows into the layers */
        if (gpt2)
            ln_bwd(&r, ws->tmp, G(m->t_normf_w), G(m->t_normf_b), ws->dn, xl, tp(&r, m->t_normf_w), ws->meanf, ws->rstdf,
                   N, C);
        else
            rms_bwd(&r, ws->tmp, G(m->t_normf_w), ws->dn, xl, tp(&r, m->t_normf_w), ws->rstdf, N, C);
        return LOOM_OK;
    }
    memset(ws->dres, 0, (size_t)N * C * sizeof(float));
    if (gpt2)
        ln_bwd(&r, ws->dres, G(m->t_normf_w), G(m->t_normf_b), ws->dn, xl, tp(&r, m->t_normf_w), ws->meanf, ws->rstdf, N,
               C);
    else
        rms_bwd(&r, ws->dres, G(m->t_normf_w), ws->dn, xl, tp(&r, m->t_normf_w), ws->rstdf, N, C);

layers:
    for (int l = l1 - 1; l >= l0; l--) {
        float *x = ws->res[l], *x2 = ws->res2[l];
        /* MLP: x3 = x2 + adapter(down(act(up(norm2(x2))))) ; dres holds d x3 */
        const float *dy = ws->dres;
        if (HOOK(point_bwd)) {
            dy = point_bwd_rows(&r, &hk, l, 1, ws->dres, N, NEED(l, LOOM_ST_ADAPT2));
            if (!dy) return LOOM_OK;
        }
        int need = NEED(l, LOOM_ST_DOWN);
        mm_bwd(&r, SLOT(l, LOOM_L_DOWN_W), need ? ws->dfca : NULL, H, 0.0f, GS(l, LOOM_L_DOWN_W), GS(l, LOOM_L_DOWN_B),
               dy, C, ws->fca[l], N, H, C);
        if (HOOK(site_bwd)) site_bwd_rows(&r, &hk, l, LOOM_SITE_DOWN, ws->fca[l], H, dy, C, need ? ws->dfca : NULL, H, N);
        if (!need) return LOOM_OK;
        need = NEED(l, LOOM_ST_UP);
        if (gpt2) {
            loom_gelu_backward(ws->dfch, ws->fch[l], ws->dfca, (size_t)N * H, c->act == LOOM_ACT_GELU_ERF);
            mm_bwd(&r, SLOT(l, LOOM_L_UP_W), need ? ws->dn : NULL, C, 0.0f, GS(l, LOOM_L_UP_W), GS(l, LOOM_L_UP_B),
                   ws->dfch, H, ws->n2[l], N, C, H);
            if (HOOK(site_bwd)) site_bwd_rows(&r, &hk, l, LOOM_SITE_UP, ws->n2[l], C, ws->dfch, H, need ? ws->dn : NULL, C, N);
            if (!need) return LOOM_OK;
            need = NEED(l, LOOM_ST_NORM2);
            ln_bwd(&r, need ? ws->dres : ws->tmp, GS(l, LOOM_L_NORM2_W), GS(l, LOOM_L_NORM2_B), ws->dn, x2,
                   PW(l, LOOM_L_NORM2_W), ws->mean2[l], ws->rstd2[l], N, C);
        } else {
            loom_swiglu_backward(ws->dfch, ws->dfca, ws->fch[l], N, H);
            /* gate and up weights are adjacent: one [2H, C] gradient when both train */
            float *dg = GS(l, LOOM_L_GATE_W), *du = GS(l, LOOM_L_UP_W);
            float *dn = need ? ws->dn : NULL;
            if ((dg && du) || tq(&r, SLOT(l, LOOM_L_GATE_W))) {
                mm_bwd(&r, SLOT(l, LOOM_L_GATE_W), dn, C, 0.0f, dg, NULL, ws->dfch, 2 * H, ws->n2[l], N, C, 2 * H);
            } else {
                mm_bwd(&r, SLOT(l, LOOM_L_GATE_W), dn, C, 0.0f, dg, NULL, ws->dfch, 2 * H, ws->n2[l], N, C, H);
                mm_bwd(&r, SLOT(l, LOOM_L_UP_W), dn, C, 1.0f, du, NULL, ws->dfch + H, 2 * H, ws->n2[l], N, C, H);
            }
            if (HOOK(site_bwd)) site_bwd_rows(&r, &hk, l, LOOM_SITE_UP, ws->n2[l], C, ws->dfch, 2 * H, dn, C, N);
            if (!need) return LOOM_OK;
            need = NEED(l, LOOM_ST_NORM2);
            rms_bwd(&r, need ? ws->dres : ws->tmp, GS(l, LOOM_L_NORM2_W), ws->dn, x2, PW(l, LOOM_L_NORM2_W), ws->rstd2[l],
                    N, C);
        }
        if (!need) return LOOM_OK;
        /* attention: x2 = x + adapter(o(attn(qkv(norm1(x))))) ; dres holds d x2 */
        dy = ws->dres;
        if (HOOK(point_bwd)) {
            dy = point_bwd_rows(&r, &hk, l, 0, ws->dres, N, NEED(l, LOOM_ST_ADAPT1));
            if (!dy) return LOOM_OK;
        }
        need = NEED(l, LOOM_ST_O);
        mm_bwd(&r, SLOT(l, LOOM_L_O_W), need ? ws->datty : NULL, C, 0.0f, GS(l, LOOM_L_O_W), GS(l, LOOM_L_O_B), dy, C,
               ws->atty[l], N, C, C);
        if (HOOK(site_bwd)) site_bwd_rows(&r, &hk, l, LOOM_SITE_O, ws->atty[l], C, dy, C, need ? ws->datty : NULL, C, N);
        if (!need) return LOOM_OK;
        if (!(HOOK(attn_bwd) && attn_bwd_rows(&r, &hk, l, ws->dqkv, ws->datty, ws->qkv[l], QKV, B, T)))
            loom_attention_backward(ws->dqkv, ws->datt, ws->datty, ws->qkv[l], ws->att[l], QKV, B, T, NH, NKV, HS);
        if (!NEED(l, LOOM_ST_ATTN)) return LOOM_OK;
        if (!gpt2) {
            loom_rope(ws->dqkv, QKV, B, T, NH, HS, c->rope_theta, pf ? pf->prefix_len : 0, 1);
            loom_rope(ws->dqkv + C, QKV, B, T, NKV, HS, c->rope_theta, pf ? pf->prefix_len : 0, 1);
        }
        need = NEED(l, LOOM_ST_QKV);
        float *dn = need ? ws->dn : NULL;
        if (gpt2) {
            mm_bwd(&r, SLOT(l, LOOM_L_QKV_W), dn, C, 0.0f, GS(l, LOOM_L_QKV_W), GS(l, LOOM_L_QKV_B), ws->dqkv, QKV,
                   ws->n1[l], N, C, QKV);
            if (HOOK(site_bwd)) site_bwd_rows(&r, &hk, l, LOOM_SITE_QKV, ws->n1[l], C, ws->dqkv, QKV, dn, C, N);
            if (!need) return LOOM_OK;
            need = NEED(l, LOOM_ST_NORM1);
            ln_bwd(&r, need ? ws->dres : ws->tmp, GS(l, LOOM_L_NORM1_W), GS(l, LOOM_L_NORM1_B), ws->dn, x,
                   PW(l, LOOM_L_NORM1_W), ws->mean1[l], ws->rstd1[l], N, C);
        } else {
            float *dq = GS(l, LOOM_L_QKV_W), *dk = GS(l, LOOM_L_K_W), *dv = GS(l, LOOM_L_V_W);
            float *db = GS(l, LOOM_L_QKV_B); /* q/k/v biases adjacent; they train together */
            if ((dq && dk && dv) || tq(&r, SLOT(l, LOOM_L_QKV_W))) {
                mm_bwd(&r, SLOT(l, LOOM_L_QKV_W), dn, C, 0.0f, dq, db, ws->dqkv, QKV, ws->n1[l], N, C, QKV);
            } else {
                mm_bwd(&r, SLOT(l, LOOM_L_QKV_W), dn, C, 0.0f, dq, NULL, ws->dqkv, QKV, ws->n1[l], N, C, C);
                mm_bwd(&r, SLOT(l, LOOM_L_K_W), dn, C, 1.0f, dk, NULL, ws->dqkv + C, QKV, ws->n1[l], N, C, KV);
                mm_bwd(&r, SLOT(l, LOOM_L_V_W), dn, C, 1.0f, dv, NULL, ws->dqkv + C + KV, QKV, ws->n1[l], N, C, KV);
                if (db) colsum_rows(&r, db, ws->dqkv, QKV, N, QKV);
            }
            if (HOOK(site_bwd)) site_bwd_rows(&r, &hk, l, LOOM_SITE_QKV, ws->n1[l], C, ws->dqkv, QKV, dn, C, N);
            if (!need) return LOOM_OK;
            need = NEED(l, LOOM_ST_NORM1);
            rms_bwd(&r, need ? ws->dres : ws->tmp, GS(l, LOOM_L_NORM1_W), ws->dn, x, PW(l, LOOM_L_NORM1_W), ws->rstd1[l],
                    N, C);
        }
        if (!need) return LOOM_OK;
    }
#undef NEED
    if (from_x) { /* a part starting from given activations: dres is the gradient of its input */
        if (dx_in) memcpy(dx_in, ws->dres, (size_t)N * C * sizeof(float));
        return LOOM_OK;
    }
    /* embeddings (and soft-prompt rows): parallel over channel blocks so repeated tokens never race */
    float *dwte = G(m->t_embed), *dwpe = gpt2 ? G(m->t_pos) : NULL;
    float *dprompt = NULL;
    if (pf && pf->prompt_len && HOOK(prompt)) ops->prompt(&hk, &dprompt);
    const int32_t *tok = ws->tok_copy;
    const size_t gs = r.gstride; /* per-row pass: position n's gradient goes to row n / T */
    if (dwte || dwpe || dprompt) {
        int nblk = (C + 63) / 64;
#pragma omp parallel for schedule(static)
        for (int blk = 0; blk < nblk; blk++) {
            int c0 = blk * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
            for (int n = 0; n < N; n++) {
                const float *d = ws->dres + (size_t)n * C;
                size_t ro = (size_t)(n / T) * gs;
                float *g = tok[n] >= 0 ? (dwte ? dwte + ro + (size_t)tok[n] * C : NULL)
                                       : (dprompt ? dprompt + ro + (size_t)(n % T) * C : NULL);
                if (g)
                    for (int i = c0; i < c1; i++) g[i] += d[i];
                if (dwpe) {
                    float *gp = dwpe + ro + (size_t)((pf ? pf->prefix_len : 0) + n % T) * C;
                    for (int i = c0; i < c1; i++) gp[i] += d[i];
                }
            }
        }
    }
    return LOOM_OK;
}

int loom_backward(const loom_model *m, const float *params, loom_ws *ws, float *grads, const uint8_t *trainable) {
    run_ctx r = {m, params, NULL, grads, NULL, trainable, NULL, ws, m->cfg.arch == LOOM_ARCH_GPT2 ? LOOM_W_CONV1D : LOOM_W_LINEAR, 0};
    return backward_impl(&r, NULL, NULL);
}

int loom_backward_ex(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                     float *gvec) {
    if (!pf || !vec || !gvec) return loom_error(LOOM_EINVAL, "loom_backward_ex needs a plan, its vector and a gradient vector");
    run_ctx r = {m, base, vec, NULL, gvec, NULL, pf, ws, m->cfg.arch == LOOM_ARCH_GPT2 ? LOOM_W_CONV1D : LOOM_W_LINEAR, 0};
    return backward_impl(&r, NULL, NULL);
}

/* ---------------------------------------------------------------- parts (split learning) */

int loom_forward_part(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                      int l0, int l1, const int32_t *tokens, const float *x_in, const int32_t *targets, int B, int T,
                      float *loss) {
    if (!pf || !vec) return loom_error(LOOM_EINVAL, "loom_forward_part needs a plan and its vector");
    run_ctx r = {m, base, vec, NULL, NULL, NULL, pf, ws, m->cfg.arch == LOOM_ARCH_GPT2 ? LOOM_W_CONV1D : LOOM_W_LINEAR, 0};
    return forward_impl(&r, l0, l1, l1 == m->cfg.n_layer && targets, tokens, x_in, targets, B, T, loss);
}

int loom_backward_part(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                       float *gvec, const float *dx_out, float *dx_in) {
    if (!pf || !vec || !gvec) return loom_error(LOOM_EINVAL, "loom_backward_part needs a plan, its vector and a gradient vector");
    run_ctx r = {m, base, vec, NULL, gvec, NULL, pf, ws, m->cfg.arch == LOOM_ARCH_GPT2 ? LOOM_W_CONV1D : LOOM_W_LINEAR, 0};
    return backward_impl(&r, dx_out, dx_in);
}

size_t loom_ws_activation_cap(const loom_ws *ws) { return (size_t)ws->B * ws->T * ws->C; }

const float *loom_ws_activation(const loom_ws *ws, size_t *n) {
    if (n) *n = ws->have_forward ? (size_t)ws->curB * ws->curT * ws->C : 0;
    return ws->have_forward ? ws->res[ws->part_l1] : NULL;
}

/* ---------------------------------------------------------------- per-example gradients */

int loom_backward_ex_rows(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                          float *grows) {
    if (!pf || !vec || !grows)
        return loom_error(LOOM_EINVAL, "per-row gradients need a plan, its vector and a [B x dim] gradient buffer");
    if (!pf->dim) return loom_error(LOOM_EINVAL, "per-row gradients of an empty trainable set");
    run_ctx r = {m, base, vec, NULL, grows, NULL, pf, ws, m->cfg.arch == LOOM_ARCH_GPT2 ? LOOM_W_CONV1D : LOOM_W_LINEAR,
                 pf->dim};
    return backward_impl(&r, NULL, NULL);
}

int loom_per_example_grads(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                           const int32_t *tokens, const int32_t *targets, int B, int T, float *norms, float clip,
                           float *gvec, float *gscratch, float *loss) {
    if (!pf || !vec || !targets || !norms || !gscratch)
        return loom_error(LOOM_EINVAL, "per-example gradients need a plan, its vector, targets, norms and scratch");
    if (!(clip >= 0) || !isfinite(clip)) return loom_error(LOOM_EINVAL, "clip norm %g must be finite and >= 0", (double)clip);
    if (B < 1 || B > ws->B) return loom_error(LOOM_EINVAL, "batch of %d rows for a workspace of %d", B, ws->B);
    const int V = m->cfg.vocab;
    long nv = 0; /* valid targets of the whole batch: the mean's denominator */
    for (size_t n = 0; n < (size_t)B * T; n++) nv += targets[n] >= 0 && targets[n] < V;
    int saved = ws->use_row_w, rc = LOOM_OK;
    ws->use_row_w = 0;
    double total = 0;
    for (int b = 0; b < B && rc == LOOM_OK; b++) {
        float lb;
        memset(gscratch, 0, pf->dim * sizeof(float));
        rc = loom_forward_ex(m, base, ws, pf, vec, tokens + (size_t)b * T, targets + (size_t)b * T, 1, T, &lb);
        if (rc != LOOM_OK) break;
        int nb = ws->n_valid;
        norms[b] = 0.0f;
        if (nb == 0) continue;
        if ((rc = loom_backward_ex(m, base, ws, pf, vec, gscratch)) != LOOM_OK) break;
        /* row b's share of the batch mean is nb / nv times its own mean */
        double share = (double)nb / (double)nv, sq = 0;
        for (size_t i = 0; i < pf->dim; i++) sq += (double)gscratch[i] * gscratch[i];
        double nrm = share * sqrt(sq);
        norms[b] = (float)nrm;
        total += (double)lb * nb;
        if (gvec) {
            float f = (float)(share * (clip > 0 && nrm > clip ? clip / nrm : 1.0));
            for (size_t i = 0; i < pf->dim; i++) gvec[i] += f * gscratch[i];
        }
    }
    ws->use_row_w = saved;
    if (loss) *loss = nv ? (float)(total / (double)nv) : 0.0f;
    return rc;
}
