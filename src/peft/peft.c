/* Trainable sets: building the manifest and plan for each method, initialisation, merge/unmerge. */
#include "loom/peft.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/kernels.h"
#include "model/model_impl.h"
#include "peft/peft_impl.h"

void loom_peft_defaults(loom_peft_config *c, loom_peft_method method) {
    memset(c, 0, sizeof *c);
    c->method = method;
    c->lora_r = 8;
    c->lora_alpha = 16;
    c->prefix_len = 16;
    c->prompt_len = 16;
    c->adapter_dim = 16;
    c->base_dtype = LOOM_Q_F32;
}

static const char *method_names[] = {"full", "lora", "prefix", "prompt", "adapter", "bitfit"};

int loom_peft_method_parse(const char *name, loom_peft_method *method) {
    for (int i = 0; i < 6; i++)
        if (name && !strcmp(name, method_names[i])) {
            *method = (loom_peft_method)i;
            return LOOM_OK;
        }
    return loom_error(LOOM_EINVAL, "unknown fine-tuning method '%s' (full, lora, prefix, prompt, adapter, bitfit)",
                      name ? name : "");
}

const char *loom_peft_method_name(loom_peft_method method) {
    return (unsigned)method < 6 ? method_names[method] : "?";
}

int loom_base_dtype_parse(const char *name, loom_qtype *type) {
    if (name && !strcmp(name, "f32")) *type = LOOM_Q_F32;
    else if (name && !strcmp(name, "bf16")) *type = LOOM_Q_BF16;
    else if (name && !strcmp(name, "int8")) *type = LOOM_Q_INT8;
    else return loom_error(LOOM_EINVAL, "unknown base type '%s' (f32, bf16, int8)", name ? name : "");
    return LOOM_OK;
}

const char *loom_base_dtype_name(loom_qtype type) {
    return type == LOOM_Q_BF16 ? "bf16" : type == LOOM_Q_INT8 ? "int8" : "f32";
}

/* ---------------------------------------------------------------- LoRA modules of an architecture */

/* The adaptable linear modules of layer l: weight tensor slot, site, output columns, in/out sizes. */
typedef struct {
    const char *suffix; /* path inside the layer */
    int slot, site, col0, in, out;
} module_desc;

static int layer_modules(const loom_model *m, module_desc *d) {
    const loom_config *c = &m->cfg;
    int C = c->dim, H = c->hidden, KV = c->n_kv_head * (C / c->n_head);
    int k = 0;
    if (c->arch == LOOM_ARCH_GPT2) {
        d[k++] = (module_desc){"attn.c_attn", LOOM_L_QKV_W, LOOM_SITE_QKV, 0, C, 3 * C};
        d[k++] = (module_desc){"attn.c_proj", LOOM_L_O_W, LOOM_SITE_O, 0, C, C};
        d[k++] = (module_desc){"mlp.c_fc", LOOM_L_UP_W, LOOM_SITE_UP, 0, C, H};
        d[k++] = (module_desc){"mlp.c_proj", LOOM_L_DOWN_W, LOOM_SITE_DOWN, 0, H, C};
    } else {
        d[k++] = (module_desc){"self_attn.q_proj", LOOM_L_QKV_W, LOOM_SITE_QKV, 0, C, C};
        d[k++] = (module_desc){"self_attn.k_proj", LOOM_L_K_W, LOOM_SITE_QKV, C, C, KV};
        d[k++] = (module_desc){"self_attn.v_proj", LOOM_L_V_W, LOOM_SITE_QKV, C + KV, C, KV};
        d[k++] = (module_desc){"self_attn.o_proj", LOOM_L_O_W, LOOM_SITE_O, 0, C, C};
        d[k++] = (module_desc){"mlp.gate_proj", LOOM_L_GATE_W, LOOM_SITE_UP, 0, C, H};
        d[k++] = (module_desc){"mlp.up_proj", LOOM_L_UP_W, LOOM_SITE_UP, H, C, H};
        d[k++] = (module_desc){"mlp.down_proj", LOOM_L_DOWN_W, LOOM_SITE_DOWN, 0, H, C};
    }
    return k;
}

static const char *layer_prefix(const loom_model *m) {
    return m->cfg.arch == LOOM_ARCH_GPT2 ? "transformer.h" : "model.layers";
}

/* PEFT's rule for a list of target names: the module path equals the target or ends with "." + it. */
static int target_matches(const char *path, const char *target) {
    size_t lp = strlen(path), lt = strlen(target);
    if (lt == 0 || lt > lp) return 0;
    if (strcmp(path + lp - lt, target)) return 0;
    return lp == lt || path[lp - lt - 1] == '.';
}

static int site_stage(int site) {
    switch (site) {
    case LOOM_SITE_QKV: return LOOM_ST_QKV;
    case LOOM_SITE_O: return LOOM_ST_O;
    case LOOM_SITE_UP: return LOOM_ST_UP;
    default: return LOOM_ST_DOWN;
    }
}

/* ---------------------------------------------------------------- building */

static int add_entry(loom_tset *ts, const char *name, int ndim, int64_t d0, int64_t d1, int layer, int tensor) {
    if (ts->n == ts->cap) {
        int cap = ts->cap ? 2 * ts->cap : 64;
        loom_tset_entry *e = realloc(ts->e, (size_t)cap * sizeof *e);
        if (!e) return loom_error(LOOM_ENOMEM, "out of memory");
        ts->e = e;
        ts->cap = cap;
    }
    loom_tset_entry *e = &ts->e[ts->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = ndim > 1 ? d1 : 0;
    e->numel = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    e->offset = ts->dim;
    e->layer = layer;
    e->tensor = tensor;
    e->matrix = ndim >= 2;
    ts->dim += e->numel;
    return LOOM_OK;
}

/* Lists the module names a target may use, for error messages. */
static void module_list(const loom_model *m, char *buf, size_t cap) {
    module_desc d[8];
    int k = layer_modules(m, d);
    buf[0] = 0;
    for (int i = 0; i < k; i++) {
        const char *leaf = strrchr(d[i].suffix, '.') + 1;
        size_t n = strlen(buf);
        snprintf(buf + n, cap - n, "%s%s (%s)", i ? ", " : "", leaf, d[i].suffix);
    }
}

static int build_lora(loom_tset *ts, uint64_t seed) {
    const loom_model *m = ts->m;
    const loom_peft_config *c = &ts->cfg;
    loom_peft *pf = &ts->plan;
    module_desc d[8];
    int nd = layer_modules(m, d);
    char targets[sizeof c->target_modules];
    snprintf(targets, sizeof targets, "%s", c->target_modules[0] ? c->target_modules
                                            : m->cfg.arch == LOOM_ARCH_GPT2 ? "c_attn" : "q_proj,v_proj");
    if (c->lora_r < 1 || c->lora_r > 1024) return loom_error(LOOM_ERANGE, "LoRA rank %d outside 1..1024", c->lora_r);
    if (!(c->lora_alpha > 0) || !isfinite(c->lora_alpha) || c->lora_alpha > 1e6)
        return loom_error(LOOM_ERANGE, "LoRA alpha %g must be > 0 (and at most 1e6)", c->lora_alpha);
    if (!(c->lora_dropout >= 0 && c->lora_dropout < 1))
        return loom_error(LOOM_ERANGE, "LoRA dropout %g outside [0, 1)", c->lora_dropout);
    /* every target must select at least one module (matched per layer, so "h.0.attn.c_attn" is layer 0's) */
    int L = m->cfg.n_layer, n = 0;
    uint8_t *selected = calloc((size_t)L * nd, 1);
    if (!selected) return loom_error(LOOM_ENOMEM, "out of memory");
    char *save = NULL;
    for (char *t = strtok_r(targets, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        int hit = 0;
        for (int l = 0; l < L; l++)
            for (int i = 0; i < nd; i++) {
                char path[160];
                snprintf(path, sizeof path, "%s.%d.%s", layer_prefix(m), l, d[i].suffix);
                if (target_matches(path, t)) {
                    selected[l * nd + i] = 1;
                    hit = 1;
                }
            }
        if (!hit) {
            char list[512];
            module_list(m, list, sizeof list);
            free(selected);
            return loom_error(LOOM_EINVAL, "target module '%s' matches no module of this %s model; modules: %s", t,
                              m->cfg.arch == LOOM_ARCH_GPT2 ? "GPT-2" : "Llama", list);
        }
    }
    for (int k = 0; k < L * nd; k++) {
        const module_desc *di = &d[k % nd];
        n += selected[k];
        if (selected[k] && c->lora_r > LOOM_MIN(di->in, di->out)) {
            free(selected);
            return loom_error(LOOM_ERANGE, "LoRA rank %d exceeds the smaller side of %s (%d x %d)", c->lora_r,
                              di->suffix, di->in, di->out);
        }
    }
    pf->lora = calloc((size_t)(n ? n : 1), sizeof *pf->lora);
    if (!pf->lora) {
        free(selected);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    pf->lora_r = c->lora_r;
    pf->lora_scale = c->rslora ? c->lora_alpha / sqrtf((float)c->lora_r) : c->lora_alpha / (float)c->lora_r;
    pf->lora_dropout = c->lora_dropout;
    pf->lowest = L * LOOM_STAGES;
    int R = c->lora_r, rc = LOOM_OK;
    for (int l = 0; l < L && rc == LOOM_OK; l++)
        for (int i = 0; i < nd && rc == LOOM_OK; i++) {
            if (!selected[l * nd + i]) continue;
            loom_lora_mod *md = &pf->lora[pf->n_lora++];
            md->layer = l;
            md->site = d[i].site;
            md->col0 = d[i].col0;
            md->in = d[i].in;
            md->out = d[i].out;
            md->tensor = m->layer_slot[l][d[i].slot];
            pf->lora_max_in = LOOM_MAX(pf->lora_max_in, md->in);
            pf->lowest = LOOM_MIN(pf->lowest, l * LOOM_STAGES + site_stage(md->site));
            char nm[192];
            snprintf(nm, sizeof nm, "base_model.model.%s.%d.%s.lora_A.weight", layer_prefix(m), l, d[i].suffix);
            md->a_off = ts->dim;
            if ((rc = add_entry(ts, nm, 2, R, md->in, l, md->tensor)) != LOOM_OK) break;
            snprintf(nm, sizeof nm, "base_model.model.%s.%d.%s.lora_B.weight", layer_prefix(m), l, d[i].suffix);
            md->b_off = ts->dim;
            rc = add_entry(ts, nm, 2, md->out, R, l, md->tensor);
        }
    free(selected);
    if (rc != LOOM_OK || (rc = lm_tset_alloc_data(ts)) != LOOM_OK) return rc;
    /* PEFT init: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
    for (int k = 0; k < pf->n_lora; k++) {
        const loom_lora_mod *md = &pf->lora[k];
        loom_rng r;
        loom_rng_init(&r, seed, LOOM_STREAM_LORA_MODULE(k));
        float bound = 1.0f / sqrtf((float)md->in);
        float *a = ts->data + md->a_off;
        for (size_t j = 0; j < (size_t)R * md->in; j++) a[j] = bound * (float)(2.0 * loom_rng_uniform(&r) - 1.0);
        memset(ts->data + md->b_off, 0, (size_t)md->out * R * sizeof(float));
    }
    return LOOM_OK;
}

/* FULL and BITFIT: trained copies of model tensors, in model order (so fused neighbours stay adjacent). */
static int build_copies(loom_tset *ts, int with_data) {
    const loom_model *m = ts->m;
    loom_peft *pf = &ts->plan;
    int full = ts->cfg.method == LOOM_PEFT_FULL, rc;
    if (full && m->qbase)
        return loom_error(LOOM_EUNSUPPORTED, "full fine-tuning needs a float base (the model's linear weights are %s)",
                          loom_base_dtype_name(m->qbase->type));
    pf->lowest = m->cfg.n_layer * LOOM_STAGES + 1;
    for (int i = 0; i < m->n_tensors; i++) {
        const loom_tensor *t = &m->tensors[i];
        int take = full || t->kind == LOOM_T_LINEAR_B || t->kind == LOOM_T_NORM_B ||
                   (ts->cfg.bitfit_norms && t->kind == LOOM_T_NORM_W);
        if (!take) continue;
        pf->tmap[i] = (long)ts->dim;
        pf->lowest = LOOM_MIN(pf->lowest, lm_tensor_stage(m, i));
        if ((rc = add_entry(ts, t->name, t->ndim, t->shape[0], t->shape[1], t->layer, i)) != LOOM_OK) return rc;
    }
    if (ts->n == 0)
        return loom_error(LOOM_EINVAL, "this model has no biases for BitFit to train (add bitfit_norms / --bitfit-norms)");
    if (!with_data) return LOOM_OK;
    if ((rc = lm_tset_alloc_data(ts)) != LOOM_OK) return rc;
    for (int k = 0; k < ts->n; k++)
        memcpy(ts->data + ts->e[k].offset, m->params + m->tensors[ts->e[k].tensor].offset, ts->e[k].numel * sizeof(float));
    return LOOM_OK;
}

static int build_prefix(loom_tset *ts, uint64_t seed) {
    const loom_model *m = ts->m;
    const loom_config *c = &m->cfg;
    int P = ts->cfg.prefix_len, KV = c->n_kv_head * (c->dim / c->n_head), rc;
    if (P < 1 || P > 4096) return loom_error(LOOM_ERANGE, "prefix length %d outside 1..4096", P);
    ts->plan.prefix_len = P;
    ts->plan.prefix_off = ts->dim;
    ts->plan.lowest = LOOM_ST_ATTN;
    if ((rc = add_entry(ts, "prompt_embeddings", 2, P, 2 * (int64_t)c->n_layer * KV, -1, -1)) != LOOM_OK) return rc;
    ts->e[0].matrix = 0; /* an embedding table, not a weight matrix: no weight decay */
    if ((rc = lm_tset_alloc_data(ts)) != LOOM_OK) return rc;
    loom_rng r;
    loom_rng_init(&r, seed, LOOM_STREAM_PREFIX_INIT);
    for (size_t j = 0; j < ts->dim; j++) ts->data[j] = 0.02f * (float)loom_rng_normal(&r);
    return LOOM_OK;
}

static int build_prompt(loom_tset *ts, uint64_t seed) {
    const loom_model *m = ts->m;
    const loom_config *c = &m->cfg;
    int P = ts->cfg.prompt_len, C = c->dim, rc;
    if (P < 1 || P >= c->max_seq)
        return loom_error(LOOM_ERANGE, "prompt length %d outside 1..%d (the model has %d positions)", P, c->max_seq - 1,
                          c->max_seq);
    ts->plan.prompt_len = P;
    ts->plan.prompt_off = ts->dim;
    ts->plan.lowest = -1;
    if ((rc = add_entry(ts, "prompt_embeddings", 2, P, C, -1, -1)) != LOOM_OK) return rc;
    ts->e[0].matrix = 0;
    if ((rc = lm_tset_alloc_data(ts)) != LOOM_OK) return rc;
    loom_rng r;
    loom_rng_init(&r, seed, LOOM_STREAM_PROMPT_INIT);
    const float *wte = m->params + m->tensors[m->t_embed].offset;
    for (int p = 0; p < P; p++) {
        uint32_t v = loom_rng_below(&r, (uint32_t)c->vocab);
        memcpy(ts->data + (size_t)p * C, wte + (size_t)v * C, (size_t)C * sizeof(float));
    }
    return LOOM_OK;
}

static int build_adapter(loom_tset *ts, uint64_t seed) {
    const loom_model *m = ts->m;
    const loom_config *c = &m->cfg;
    int M = ts->cfg.adapter_dim, C = c->dim, L = c->n_layer, rc;
    if (M < 1 || M > C) return loom_error(LOOM_ERANGE, "adapter width %d outside 1..%d (the model width)", M, C);
    loom_peft *pf = &ts->plan;
    pf->adapter_dim = M;
    pf->adapter_off = calloc((size_t)L, sizeof *pf->adapter_off);
    if (!pf->adapter_off) return loom_error(LOOM_ENOMEM, "out of memory");
    pf->lowest = LOOM_ST_ADAPT1;
    static const char *site[2] = {"attn", "mlp"};
    for (int l = 0; l < L; l++)
        for (int a = 0; a < 2; a++) {
            char nm[192];
            pf->adapter_off[l][a] = ts->dim;
#define ADD(part, nd, d0, d1)                                                                                     \
    snprintf(nm, sizeof nm, "base_model.model.%s.%d.adapter_%s.%s", layer_prefix(m), l, site[a], part);          \
    if ((rc = add_entry(ts, nm, nd, d0, d1, l, -1)) != LOOM_OK) return rc
            ADD("down.weight", 2, M, C);
            ADD("down.bias", 1, M, 0);
            ADD("up.weight", 2, C, M);
            ADD("up.bias", 1, C, 0);
#undef ADD
        }
    if ((rc = lm_tset_alloc_data(ts)) != LOOM_OK) return rc;
    memset(ts->data, 0, ts->dim * sizeof(float));
    float bound = 1.0f / sqrtf((float)C);
    for (int l = 0; l < L; l++)
        for (int a = 0; a < 2; a++) {
            loom_rng r;
            loom_rng_init(&r, seed, LOOM_STREAM_ADAPTER(l, a));
            float *wd = ts->data + pf->adapter_off[l][a];
            for (size_t j = 0; j < (size_t)M * C; j++) wd[j] = bound * (float)(2.0 * loom_rng_uniform(&r) - 1.0);
        }
    return LOOM_OK;
}

int lm_tset_alloc_data(loom_tset *ts) {
    ts->data = loom_calloc(ts->dim ? ts->dim : 1, sizeof(float));
    if (!ts->data) return loom_error(LOOM_ENOMEM, "out of memory for a trainable set of %zu values", ts->dim);
    return LOOM_OK;
}

static int tset_create(loom_tset **out, const loom_model *m, const loom_peft_config *cfg, uint64_t seed, int with_data) {
    *out = NULL;
    loom_tset *ts = calloc(1, sizeof *ts);
    if (!ts) return loom_error(LOOM_ENOMEM, "out of memory");
    ts->m = m;
    ts->cfg = *cfg;
    ts->plan.n_tensors = m->n_tensors;
    ts->plan.tmap = malloc((size_t)m->n_tensors * sizeof *ts->plan.tmap);
    if (!ts->plan.tmap) {
        free(ts);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    for (int i = 0; i < m->n_tensors; i++) ts->plan.tmap[i] = -1;
    int rc;
    switch (cfg->method) {
    case LOOM_PEFT_FULL:
    case LOOM_PEFT_BITFIT: ts->plan.ops = &lm_copy_ops; rc = build_copies(ts, with_data); break;
    case LOOM_PEFT_LORA: ts->plan.ops = &lm_lora_ops; rc = build_lora(ts, seed); break;
    case LOOM_PEFT_PREFIX: ts->plan.ops = &lm_prefix_ops; rc = build_prefix(ts, seed); break;
    case LOOM_PEFT_PROMPT: ts->plan.ops = &lm_prompt_ops; rc = build_prompt(ts, seed); break;
    case LOOM_PEFT_ADAPTER: ts->plan.ops = &lm_adapter_ops; rc = build_adapter(ts, seed); break;
    default: rc = loom_error(LOOM_EINVAL, "unknown fine-tuning method %d", (int)cfg->method);
    }
    ts->plan.dim = ts->dim;
    if (rc == LOOM_OK) rc = loom_tvec_create(&ts->manifest);
    for (int i = 0; i < ts->n && rc == LOOM_OK; i++)
        rc = loom_tvec_add_at(ts->manifest, ts->e[i].name, ts->e[i].ndim, ts->e[i].shape, ts->e[i].offset,
                              LOOM_ROLE_SHARED);
    if (rc != LOOM_OK) {
        loom_tset_free(ts);
        return rc;
    }
    *out = ts;
    return LOOM_OK;
}

const loom_tvec *loom_tset_manifest(const loom_tset *ts) { return ts->manifest; }

void loom_tset_free(loom_tset *ts) {
    if (!ts) return;
    free(ts->plan.tmap);
    free(ts->plan.lora);
    free(ts->plan.adapter_off);
    free(ts->e);
    loom_free(ts->data);
    loom_tvec_free(ts->manifest);
    free(ts);
}

const loom_peft_config *loom_tset_config(const loom_tset *ts) { return &ts->cfg; }
const loom_model *loom_tset_model(const loom_tset *ts) { return ts->m; }
const loom_peft *loom_tset_plan(const loom_tset *ts) { return &ts->plan; }
size_t loom_tset_dim(const loom_tset *ts) { return ts->dim; }
size_t loom_tset_bytes(const loom_tset *ts) { return ts->dim * sizeof(float); }
float *loom_tset_data(loom_tset *ts) { return ts->data; }
int loom_tset_count(const loom_tset *ts) { return ts->n; }
const loom_tset_entry *loom_tset_entry_at(const loom_tset *ts, int i) { return i >= 0 && i < ts->n ? &ts->e[i] : NULL; }
const loom_tset_entry *loom_tset_find(const loom_tset *ts, const char *name) {
    for (int i = 0; i < ts->n; i++)
        if (!strcmp(ts->e[i].name, name)) return &ts->e[i];
    return NULL;
}
float loom_tset_lora_scale(const loom_tset *ts) { return ts->plan.n_lora ? ts->plan.lora_scale : 0.0f; }
int loom_tset_mergeable(const loom_tset *ts) {
    return ts->cfg.method == LOOM_PEFT_FULL || ts->cfg.method == LOOM_PEFT_BITFIT || ts->cfg.method == LOOM_PEFT_LORA;
}

/* ---------------------------------------------------------------- merge */

static int lora_merge(const loom_tset *ts, const float *vec, float *params, float sign) {
    const loom_model *m = ts->m;
    const loom_peft *pf = &ts->plan;
    int gpt2 = m->cfg.arch == LOOM_ARCH_GPT2, R = pf->lora_r;
    for (int k = 0; k < pf->n_lora; k++) {
        const loom_lora_mod *md = &pf->lora[k];
        float *w = params + m->tensors[md->tensor].offset;
        const float *A = vec + md->a_off, *Bm = vec + md->b_off;
        if (gpt2) /* Conv1D W [in, out] += s (B A)^T = s A^T B^T */
            loom_sgemm(1, 1, md->in, md->out, R, sign * pf->lora_scale, A, md->in, Bm,
                        R, 1.0f, w, md->out);
        else /* Linear W [out, in] += s B A */
            loom_sgemm(0, 0, md->out, md->in, R, sign * pf->lora_scale, Bm, R, A,
                        md->in, 1.0f, w, md->in);
    }
    return LOOM_OK;
}

/* The weights a merge writes must be floats the caller holds: the model's own buffer has no values
 * for tensors of a low-precision base (loom_model_to_float gives a float copy). */
static int check_merge_target(const loom_tset *ts, const float *params, int tensor) {
    const loom_tensor *t = &ts->m->tensors[tensor];
    if (params == ts->m->params && t->dtype != LOOM_Q_F32)
        return loom_error(LOOM_EINVAL, "%s is held in %s: merge into a float copy of the model (loom_model_to_float)",
                          t->name, loom_base_dtype_name(t->dtype));
    return LOOM_OK;
}

int loom_tset_merge(const loom_tset *ts, const float *vec, float *params) {
    if (!loom_tset_mergeable(ts))
        return loom_error(LOOM_EUNSUPPORTED, "a %s set adds computation and cannot be merged into the weights",
                          loom_peft_method_name(ts->cfg.method));
    for (int k = 0; k < ts->n; k++) {
        int rc = ts->e[k].tensor >= 0 ? check_merge_target(ts, params, ts->e[k].tensor) : LOOM_OK;
        if (rc != LOOM_OK) return rc;
    }
    if (ts->cfg.method == LOOM_PEFT_LORA) return lora_merge(ts, vec, params, 1.0f);
    for (int k = 0; k < ts->n; k++)
        memcpy(params + ts->m->tensors[ts->e[k].tensor].offset, vec + ts->e[k].offset, ts->e[k].numel * sizeof(float));
    return LOOM_OK;
}

int loom_tset_unmerge(const loom_tset *ts, const float *vec, float *params) {
    if (ts->cfg.method != LOOM_PEFT_LORA)
        return loom_error(LOOM_EUNSUPPORTED, "only a LoRA merge can be undone (a %s merge replaces the values)",
                          loom_peft_method_name(ts->cfg.method));
    for (int k = 0; k < ts->n; k++) {
        int rc = ts->e[k].tensor >= 0 ? check_merge_target(ts, params, ts->e[k].tensor) : LOOM_OK;
        if (rc != LOOM_OK) return rc;
    }
    return lora_merge(ts, vec, params, -1.0f);
}

int loom_tset_create(loom_tset **out, const loom_model *m, const loom_peft_config *cfg, uint64_t seed) {
    return tset_create(out, m, cfg, seed, 1);
}

int loom_tset_create_layout(loom_tset **out, const loom_model *m, const loom_peft_config *cfg) {
    *out = NULL;
    if (cfg->method != LOOM_PEFT_FULL && cfg->method != LOOM_PEFT_BITFIT)
        return loom_error(LOOM_EINVAL, "only a full or BitFit set can be created without its vector");
    return tset_create(out, m, cfg, 0, 0);
}
