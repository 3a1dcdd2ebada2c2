/* Models as GGUF (llama.cpp's format): out with the keys and tensor names llama.cpp's llama and gpt2
 * architectures read, and back in.
 *
 * loom holds Hugging Face layouts; llama.cpp expects those of its own converter
 * (convert_hf_to_gguf.py), which differ in two places:
 *   Llama q/k projections (weights and biases): Meta's interleaved RoPE pairs. Within each head of HS
 *     rows, HF row i*HS/2 + j (rotate-half pair (j, j+HS/2)) is GGUF row 2j + i.
 *   GPT-2 Conv1D weights: HF [in, out], GGUF C-order [out, in] (ne = {in, out}): transposed.
 * Every other tensor keeps its C-order shape, written as ne = reversed shape. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/gguf.h"
#include "loom/model.h"
#include "model/model_impl.h"

enum { X_NONE, X_TRANSPOSE, X_PERM_Q, X_PERM_K };

typedef struct {
    const char *hf, *gguf;
    int xform;
} name_map;

static const name_map llama_layer[] = {
    {"input_layernorm.weight", "attn_norm.weight", X_NONE},
    {"self_attn.q_proj.weight", "attn_q.weight", X_PERM_Q},
    {"self_attn.k_proj.weight", "attn_k.weight", X_PERM_K},
    {"self_attn.v_proj.weight", "attn_v.weight", X_NONE},
    {"self_attn.q_proj.bias", "attn_q.bias", X_PERM_Q},
    {"self_attn.k_proj.bias", "attn_k.bias", X_PERM_K},
    {"self_attn.v_proj.bias", "attn_v.bias", X_NONE},
    {"self_attn.o_proj.weight", "attn_output.weight", X_NONE},
    {"post_attention_layernorm.weight", "ffn_norm.weight", X_NONE},
    {"mlp.gate_proj.weight", "ffn_gate.weight", X_NONE},
    {"mlp.up_proj.weight", "ffn_up.weight", X_NONE},
    {"mlp.down_proj.weight", "ffn_down.weight", X_NONE},
};
static const name_map llama_global[] = {
    {"model.embed_tokens.weight", "token_embd.weight", X_NONE},
    {"model.norm.weight", "output_norm.weight", X_NONE},
    {"lm_head.weight", "output.weight", X_NONE},
};
static const name_map gpt2_layer[] = {
    {"ln_1.weight", "attn_norm.weight", X_NONE},        {"ln_1.bias", "attn_norm.bias", X_NONE},
    {"attn.c_attn.weight", "attn_qkv.weight", X_TRANSPOSE}, {"attn.c_attn.bias", "attn_qkv.bias", X_NONE},
    {"attn.c_proj.weight", "attn_output.weight", X_TRANSPOSE}, {"attn.c_proj.bias", "attn_output.bias", X_NONE},
    {"ln_2.weight", "ffn_norm.weight", X_NONE},         {"ln_2.bias", "ffn_norm.bias", X_NONE},
    {"mlp.c_fc.weight", "ffn_up.weight", X_TRANSPOSE},  {"mlp.c_fc.bias", "ffn_up.bias", X_NONE},
    {"mlp.c_proj.weight", "ffn_down.weight", X_TRANSPOSE}, {"mlp.c_proj.bias", "ffn_down.bias", X_NONE},
};
static const name_map gpt2_global[] = {
    {"transformer.wte.weight", "token_embd.weight", X_NONE},
    {"transformer.wpe.weight", "position_embd.weight", X_NONE},
    {"transformer.ln_f.weight", "output_norm.weight", X_NONE},
    {"transformer.ln_f.bias", "output_norm.bias", X_NONE},
    {"lm_head.weight", "output.weight", X_NONE},
};

/* The GGUF name and transform of model tensor t; LOOM_EUNSUPPORTED for a name outside the tables. */
static int map_name(const loom_model *m, const loom_tensor *t, char *out, size_t cap, int *xform) {
    int gpt2 = m->cfg.arch == LOOM_ARCH_GPT2;
    const name_map *tab = gpt2 ? gpt2_global : llama_global;
    size_t n = gpt2 ? sizeof gpt2_global / sizeof *gpt2_global : sizeof llama_global / sizeof *llama_global;
    const char *name = t->name;
    if (t->layer >= 0) {
        char prefix[64];
        snprintf(prefix, sizeof prefix, gpt2 ? "transformer.h.%d." : "model.layers.%d.", t->layer);
        size_t pl = strlen(prefix);
        if (!strncmp(name, prefix, pl)) {
            name += pl;
            tab = gpt2 ? gpt2_layer : llama_layer;
            n = gpt2 ? sizeof gpt2_layer / sizeof *gpt2_layer : sizeof llama_layer / sizeof *llama_layer;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (!strcmp(name, tab[i].hf)) {
            if (t->layer >= 0) snprintf(out, cap, "blk.%d.%s", t->layer, tab[i].gguf);
            else snprintf(out, cap, "%s", tab[i].gguf);
            *xform = tab[i].xform;
            return LOOM_OK;
        }
    return loom_error(LOOM_EUNSUPPORTED, "tensor %s has no GGUF name", t->name);
}

/* rows x cols, row-major. Permutation of rows within each head of hs rows: HF row i*hs/2 + j <-> GGUF
 * row 2j + i (to_gguf says which way). */
static void permute_rows(float *dst, const float *src, size_t rows, size_t cols, int heads, int to_gguf) {
    size_t hs = rows / (size_t)heads;
    for (size_t h = 0; h < (size_t)heads; h++)
        for (size_t j = 0; j < hs / 2; j++)
            for (size_t i = 0; i < 2; i++) {
                size_t hf = h * hs + i * (hs / 2) + j, gg = h * hs + 2 * j + i;
                memcpy(dst + (to_gguf ? gg : hf) * cols, src + (to_gguf ? hf : gg) * cols, cols * sizeof *dst);
            }
}

static void transpose(float *dst, const float *src, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

/* Applies a transform to t's values (HF layout <-> GGUF layout); dst and src are numel floats. */
static void apply(const loom_model *m, const loom_tensor *t, int xform, int to_gguf, float *dst, const float *src) {
    size_t rows = (size_t)t->shape[0], cols = t->ndim == 2 ? (size_t)t->shape[1] : 1;
    switch (xform) {
    case X_NONE: memcpy(dst, src, t->numel * sizeof *dst); break;
    case X_TRANSPOSE:
        if (to_gguf) transpose(dst, src, rows, cols); /* HF [rows, cols] -> [cols, rows] */
        else transpose(dst, src, cols, rows);
        break;
    case X_PERM_Q: permute_rows(dst, src, rows, cols, m->cfg.n_head, to_gguf); break;
    case X_PERM_K: permute_rows(dst, src, rows, cols, m->cfg.n_kv_head, to_gguf); break;
    }
}

/* GGUF ne of a tensor: the reversed C-order shape of its GGUF layout. */
static int gguf_ne(const loom_tensor *t, int xform, int64_t ne[2]) {
    if (t->ndim == 1) {
        ne[0] = t->shape[0];
        return 1;
    }
    if (xform == X_TRANSPOSE) {
        ne[0] = t->shape[0];
        ne[1] = t->shape[1];
    } else {
        ne[0] = t->shape[1];
        ne[1] = t->shape[0];
    }
    return 2;
}

static uint32_t file_type(loom_ggml_type t) {
    switch (t) {
    case LOOM_GGML_F32: return 0;
    case LOOM_GGML_F16: return 1;
    case LOOM_GGML_Q8_0: return 7;
    case LOOM_GGML_BF16: return 32;
    }
    return 0;
}

int loom_model_save_gguf(const loom_model *m, const float *params, loom_ggml_type type, loom_gguf_writer *w, const char *path) {
    if (!loom_ggml_block_size(type)) return loom_error(LOOM_EINVAL, "GGUF tensor type %d is not one loom writes", (int)type);
    const loom_config *c = &m->cfg;
    const char *arch = c->arch == LOOM_ARCH_GPT2 ? "gpt2" : "llama";
    char key[128];
    int rc = LOOM_OK;
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    if (c->arch == LOOM_ARCH_GPT2 && c->act != LOOM_ACT_GELU_TANH)
        loom_log(LOOM_WARN, "%s: llama.cpp's gpt2 uses the tanh GELU; this model uses the erf GELU, so its outputs will differ slightly", path);
    if (c->arch == LOOM_ARCH_LLAMA && c->act != LOOM_ACT_SILU)
        return loom_error(LOOM_EUNSUPPORTED, "%s: a Llama model with a non-SiLU activation has no GGUF form", path);
    if (rc == LOOM_OK) rc = loom_gguf_set_str(w, "general.architecture", arch);
    if (rc == LOOM_OK) rc = loom_gguf_set_str(w, "general.name", "loom");
    if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, "general.file_type", file_type(type));
    if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, KEY("context_length"), (uint32_t)c->max_seq);
    if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, KEY("embedding_length"), (uint32_t)c->dim);
    if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, KEY("block_count"), (uint32_t)c->n_layer);
    if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->hidden);
    if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)c->n_head);
    if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_kv_head);
    if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, KEY("vocab_size"), (uint32_t)c->vocab);
    if (c->arch == LOOM_ARCH_GPT2) {
        if (rc == LOOM_OK) rc = loom_gguf_set_f32(w, KEY("attention.layer_norm_epsilon"), c->norm_eps);
    } else {
        if (rc == LOOM_OK) rc = loom_gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->norm_eps);
        if (rc == LOOM_OK) rc = loom_gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)(c->dim / c->n_head));
        if (rc == LOOM_OK) rc = loom_gguf_set_f32(w, KEY("rope.freq_base"), c->rope_theta);
    }
#undef KEY
    if (rc != LOOM_OK) return rc;
    /* each tensor in its GGUF layout, in copies that live until the write */
    float **buf = calloc((size_t)m->n_tensors, sizeof *buf);
    float *tmp = NULL;
    if (!buf) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < m->n_tensors && rc == LOOM_OK; i++) {
        const loom_tensor *t = &m->tensors[i];
        char name[LOOM_GGUF_MAX_NAME + 32];
        int xform;
        if ((rc = map_name(m, t, name, sizeof name, &xform)) != LOOM_OK) break;
        loom_free(tmp);
        if (!(tmp = loom_alloc(t->numel * sizeof(float))) || !(buf[i] = loom_alloc(t->numel * sizeof(float)))) {
            rc = loom_error(LOOM_ENOMEM, "out of memory exporting %s", t->name);
            break;
        }
        if ((rc = loom_model_weight(m, params, i, tmp)) != LOOM_OK) break;
        apply(m, t, xform, 1, buf[i], tmp);
        int64_t ne[2];
        int nd = gguf_ne(t, xform, ne);
        /* matrices in the chosen type (a row length that Q8_0 cannot block stays F32); vectors F32, as
         * llama.cpp's converter does */
        loom_ggml_type tt = nd == 2 && ne[0] % (int64_t)loom_ggml_block_size(type) == 0 ? type : LOOM_GGML_F32;
        rc = loom_gguf_writer_add_f32(w, name, tt, nd, ne, buf[i]);
    }
    loom_free(tmp);
    if (rc == LOOM_OK) rc = loom_gguf_writer_write(w, path);
    for (int i = 0; i < m->n_tensors; i++) loom_free(buf[i]);
    free(buf);
    return rc;
}

/* ---- in ---- */

static int need_u32(const loom_gguf *g, const char *arch, const char *suffix, int *v, uint32_t lo, uint32_t hi) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t x;
    int rc = loom_gguf_get_u32(g, key, &x);
    if (rc == LOOM_ENOTFOUND) return loom_error(rc, "%s: the key %s is missing", loom_gguf_path(g), key);
    if (rc != LOOM_OK) return rc;
    if (x < lo || x > hi) return loom_error(LOOM_EFORMAT, "%s: %s = %u is outside %u..%u", loom_gguf_path(g), key, x, lo, hi);
    *v = (int)x;
    return LOOM_OK;
}

static int opt_f32(const loom_gguf *g, const char *arch, const char *suffix, float *v) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = loom_gguf_get_f32(g, key, v);
    return rc == LOOM_ENOTFOUND ? LOOM_OK : rc;
}

int loom_model_load_gguf(loom_model **out, const char *path) {
    *out = NULL;
    loom_gguf *g;
    int rc = loom_gguf_open(&g, path);
    if (rc != LOOM_OK) return rc;
    const char *arch = NULL;
    loom_model *m = NULL;
    float *tmp = NULL;
    if ((rc = loom_gguf_get_str(g, "general.architecture", &arch, NULL)) != LOOM_OK) {
        if (rc == LOOM_ENOTFOUND) rc = loom_error(LOOM_EFORMAT, "%s: no general.architecture key", path);
        goto done;
    }
    loom_config cfg = {0};
    if (!strcmp(arch, "llama")) {
        cfg.arch = LOOM_ARCH_LLAMA;
        cfg.act = LOOM_ACT_SILU;
    } else if (!strcmp(arch, "gpt2")) {
        cfg.arch = LOOM_ARCH_GPT2;
        cfg.act = LOOM_ACT_GELU_TANH;
    } else {
        rc = loom_error(LOOM_EUNSUPPORTED, "%s: architecture '%.64s' is not supported (loom reads llama and gpt2 GGUF files)", path, arch);
        goto done;
    }
    if ((rc = need_u32(g, arch, "block_count", &cfg.n_layer, 1, 1024)) || (rc = need_u32(g, arch, "embedding_length", &cfg.dim, 1, 65536)) ||
        (rc = need_u32(g, arch, "feed_forward_length", &cfg.hidden, 1, 1 << 20)) ||
        (rc = need_u32(g, arch, "attention.head_count", &cfg.n_head, 1, 65536)) ||
        (rc = need_u32(g, arch, "context_length", &cfg.max_seq, 1, 1 << 20)))
        goto done;
    cfg.n_kv_head = cfg.n_head;
    char key[128];
    snprintf(key, sizeof key, "%s.attention.head_count_kv", arch);
    if (loom_gguf_find_kv(g, key) >= 0 && (rc = need_u32(g, arch, "attention.head_count_kv", &cfg.n_kv_head, 1, 65536))) goto done;
    cfg.norm_eps = 1e-5f;
    cfg.rope_theta = 10000.0f;
    if ((rc = opt_f32(g, arch, cfg.arch == LOOM_ARCH_GPT2 ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon",
                      &cfg.norm_eps)) ||
        (rc = opt_f32(g, arch, "rope.freq_base", &cfg.rope_theta)))
        goto done;
    if (cfg.arch == LOOM_ARCH_LLAMA) {
        snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
        int rd = 0;
        if (loom_gguf_find_kv(g, key) >= 0) {
            if ((rc = need_u32(g, arch, "rope.dimension_count", &rd, 0, 65536))) goto done;
            if (cfg.dim % cfg.n_head == 0 && rd != cfg.dim / cfg.n_head) {
                rc = loom_error(LOOM_EUNSUPPORTED, "%s: RoPE on %d of the head's %d dimensions is not supported", path, rd, cfg.dim / cfg.n_head);
                goto done;
            }
        }
        snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
        const char *st;
        if (loom_gguf_get_str(g, key, &st, NULL) == LOOM_OK && strcmp(st, "none")) {
            rc = loom_error(LOOM_EUNSUPPORTED, "%s: RoPE scaling '%.32s' is not supported", path, st);
            goto done;
        }
    }
    const loom_gguf_tensor *emb = loom_gguf_find_tensor(g, "token_embd.weight");
    if (!emb || emb->ndim != 2) {
        rc = loom_error(LOOM_EFORMAT, "%s: no 2-D tensor token_embd.weight", path);
        goto done;
    }
    cfg.vocab = emb->ne[1] > (1 << 24) ? 0 : (int)emb->ne[1];
    cfg.tied = loom_gguf_find_tensor(g, "output.weight") == NULL;
    cfg.qkv_bias = cfg.arch == LOOM_ARCH_LLAMA && loom_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    uint32_t id;
    cfg.bos_id = loom_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id) == LOOM_OK && id < (uint32_t)cfg.vocab ? (int)id : -1;
    cfg.eos_id = loom_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id) == LOOM_OK && id < (uint32_t)cfg.vocab ? (int)id : -1;
    loom_clear_error();
    if ((rc = loom_config_validate(&cfg)) != LOOM_OK) {
        loom_error_context(rc, "%s", path);
        goto done;
    }
    /* the keys come from outside: before allocating for them, the file's tensors must hold at least
     * the embedding and every layer's attention and MLP matrices they describe */
    double have = 0, least = (double)cfg.vocab * cfg.dim + (double)cfg.n_layer * (2.0 * cfg.dim * cfg.dim + 2.0 * cfg.hidden * cfg.dim);
    for (size_t k = 0; k < loom_gguf_tensor_count(g); k++) have += (double)loom_gguf_tensor_at(g, k)->numel;
    if (have < least) {
        rc = loom_error(LOOM_EFORMAT, "%s: the keys describe a model of at least %.0f weights but the file's tensors hold %.0f", path, least, have);
        goto done;
    }
    if ((rc = lm_model_alloc(&m, &cfg)) != LOOM_OK) goto done;
    size_t n_used = 0;
    for (int i = 0; i < m->n_tensors && rc == LOOM_OK; i++) {
        const loom_tensor *t = &m->tensors[i];
        char name[LOOM_GGUF_MAX_NAME + 32];
        int xform;
        if ((rc = map_name(m, t, name, sizeof name, &xform)) != LOOM_OK) break;
        const loom_gguf_tensor *gt = loom_gguf_find_tensor(g, name);
        if (!gt) {
            rc = loom_error(LOOM_ENOTFOUND, "%s: tensor %s is missing (the keys describe a %s model with %d layers)", path, name, arch,
                            cfg.n_layer);
            break;
        }
        int64_t ne[2];
        int nd = gguf_ne(t, xform, ne);
        int same = gt->ndim == nd && gt->ne[0] == ne[0] && (nd == 1 || gt->ne[1] == ne[1]);
        if (!same) {
            char have[96] = "", want[64] = "";
            for (int d = 0; d < gt->ndim; d++) snprintf(have + strlen(have), sizeof have - strlen(have), "%s%lld", d ? ", " : "", (long long)gt->ne[d]);
            for (int d = 0; d < nd; d++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? ", " : "", (long long)ne[d]);
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %s has ne [%s], the keys imply [%s]", path, name, have, want);
            break;
        }
        loom_free(tmp);
        if (!(tmp = loom_alloc(t->numel * sizeof(float)))) {
            rc = loom_error(LOOM_ENOMEM, "out of memory loading %s", name);
            break;
        }
        if ((rc = loom_gguf_tensor_to_f32(gt, tmp, t->numel)) != LOOM_OK) break;
        for (size_t k = 0; k < t->numel && rc == LOOM_OK; k++)
            if (!isfinite(tmp[k]))
                rc = loom_error(LOOM_EFORMAT, "%s: tensor %s holds a non-finite value (%g at element %zu)", path, name, (double)tmp[k], k);
        if (rc == LOOM_OK) apply(m, t, xform, 0, m->params + t->offset, tmp);
        n_used++;
    }
    if (rc == LOOM_OK && n_used != loom_gguf_tensor_count(g)) {
        /* a tensor loom would ignore changes what the model computes: name the first one */
        for (size_t k = 0; k < loom_gguf_tensor_count(g); k++) {
            const char *nm = loom_gguf_tensor_at(g, k)->name;
            int known = 0;
            for (int i = 0; i < m->n_tensors && !known; i++) {
                char name[LOOM_GGUF_MAX_NAME + 32];
                int xform;
                known = map_name(m, &m->tensors[i], name, sizeof name, &xform) == LOOM_OK && !strcmp(name, nm);
            }
            if (!known) {
                rc = loom_error(LOOM_EUNSUPPORTED, "%s: tensor %s is not part of a %s model as loom runs it", path, nm, arch);
                break;
            }
        }
    }
done:
    loom_free(tmp);
    loom_gguf_close(g);
    if (rc != LOOM_OK) {
        loom_model_free(m);
        return rc;
    }
    *out = m;
    return LOOM_OK;
}
