/* Model configurations: Hugging Face config.json in and out, built-in shapes, validation. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/json_num.h"
#include "loom/core.h"
#include "loom/model.h"

#define CFG "config.json"

/* Integer fields: a JSON number, integer-valued, within [lo, hi] (json_num.h); absent or null = def. */
#define GET_INT(dst, key, lo, hi, def)                                               \
    do {                                                                              \
        if (rc == LOOM_OK) rc = loom_json_int32(root, key, lo, hi, def, &(dst), CFG); \
    } while (0)
#define GET_REAL(dst, key, lo, hi, def)                                   \
    do {                                                                   \
        double v_ = 0;                                                     \
        if (rc == LOOM_OK && (rc = loom_json_real(root, key, lo, hi, def, &v_, CFG)) == LOOM_OK) \
            (dst) = (float)v_;                                             \
    } while (0)

/* A token id; Llama 3 style configs give a list of end ids, of which the first is kept. */
static int get_token_id(json_t *root, const char *key, int *out) {
    json_t *v = json_object_get(root, key);
    if (json_is_array(v)) v = json_array_size(v) ? json_array_get(v, 0) : NULL;
    long long x = -1;
    int rc = v && !json_is_null(v) ? loom_json_int_value(v, key, -1, 1 << 24, &x, CFG) : LOOM_OK;
    if (rc == LOOM_OK) *out = (int)x;
    return rc;
}

static const char *get_str(json_t *root, const char *key) {
    json_t *v = json_object_get(root, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int loom_config_parse(loom_config *cfg, const char *text) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root) return loom_error(LOOM_EFORMAT, "config.json: line %d: %s", jerr.line, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return loom_error(LOOM_EFORMAT, "config.json: not a JSON object");
    }
    const char *mt = get_str(root, "model_type");
    const char *arch = NULL;
    json_t *archs = json_object_get(root, "architectures");
    if (json_is_array(archs) && json_array_size(archs) > 0 && json_is_string(json_array_get(archs, 0)))
        arch = json_string_value(json_array_get(archs, 0));
    int rc = LOOM_OK;
    int is_gpt2 = (mt && !strcmp(mt, "gpt2")) || (arch && !strcmp(arch, "GPT2LMHeadModel"));
    int is_llama = (mt && (!strcmp(mt, "llama") || !strcmp(mt, "mistral") || !strcmp(mt, "qwen2"))) ||
                   (arch && (!strcmp(arch, "LlamaForCausalLM") || !strcmp(arch, "MistralForCausalLM") ||
                             !strcmp(arch, "Qwen2ForCausalLM")));
    rc = get_token_id(root, "bos_token_id", &cfg->bos_id);
    if (rc == LOOM_OK) rc = get_token_id(root, "eos_token_id", &cfg->eos_id);
    if (is_gpt2) {
        cfg->arch = LOOM_ARCH_GPT2;
        int inner = 0, n_ctx = 1024;
        GET_INT(cfg->dim, "n_embd", 1, 65536, 768);
        GET_INT(cfg->n_layer, "n_layer", 1, 1024, 12);
        GET_INT(cfg->n_head, "n_head", 1, 65536, 12);
        GET_INT(inner, "n_inner", 0, 1 << 20, 0);
        GET_INT(cfg->vocab, "vocab_size", 1, 1 << 24, 50257);
        GET_INT(n_ctx, "n_ctx", 1, 1 << 20, 1024);
        GET_INT(cfg->max_seq, "n_positions", 1, 1 << 20, n_ctx);
        GET_REAL(cfg->norm_eps, "layer_norm_epsilon", 0, 1, 1e-5);
        if (rc != LOOM_OK) goto done;
        cfg->n_kv_head = cfg->n_head;
        cfg->hidden = inner > 0 ? inner : 4 * cfg->dim;
        cfg->tied = 1;
        json_t *tie = json_object_get(root, "tie_word_embeddings");
        if (json_is_boolean(tie)) cfg->tied = json_is_true(tie);
        const char *act = get_str(root, "activation_function");
        if (!act || !strcmp(act, "gelu_new") || !strcmp(act, "gelu_pytorch_tanh") || !strcmp(act, "gelu_fast"))
            cfg->act = LOOM_ACT_GELU_TANH;
        else if (!strcmp(act, "gelu"))
            cfg->act = LOOM_ACT_GELU_ERF;
        else
            rc = loom_error(LOOM_EUNSUPPORTED, "config.json: activation_function \"%s\" is not supported (gelu_new, gelu)", act);
    } else if (is_llama) {
        cfg->arch = LOOM_ARCH_LLAMA;
        GET_INT(cfg->dim, "hidden_size", 1, 65536, 4096);
        GET_INT(cfg->n_layer, "num_hidden_layers", 1, 1024, 32);
        GET_INT(cfg->n_head, "num_attention_heads", 1, 65536, 32);
        GET_INT(cfg->n_kv_head, "num_key_value_heads", 1, 65536, cfg->n_head);
        GET_INT(cfg->hidden, "intermediate_size", 1, 1 << 20, 11008);
        GET_INT(cfg->vocab, "vocab_size", 1, 1 << 24, 32000);
        GET_INT(cfg->max_seq, "max_position_embeddings", 1, 1 << 20, 2048);
        GET_REAL(cfg->norm_eps, "rms_norm_eps", 0, 1, 1e-6);
        GET_REAL(cfg->rope_theta, "rope_theta", 0, 1e30, 10000.0);
        int head_dim = 0;
        GET_INT(head_dim, "head_dim", 1, 65536, 0);
        if (rc != LOOM_OK) goto done;
        if (head_dim && (long long)head_dim * cfg->n_head != cfg->dim)
            rc = loom_error(LOOM_EUNSUPPORTED, "config.json: head_dim %d differs from hidden_size/num_attention_heads", head_dim);
        cfg->act = LOOM_ACT_SILU;
        json_t *tie = json_object_get(root, "tie_word_embeddings");
        cfg->tied = json_is_boolean(tie) ? json_is_true(tie) : 0;
        json_t *ab = json_object_get(root, "attention_bias");
        cfg->qkv_bias = (mt && !strcmp(mt, "qwen2")) || (json_is_boolean(ab) && json_is_true(ab));
        const char *act = get_str(root, "hidden_act");
        if (act && strcmp(act, "silu") != 0)
            rc = loom_error(LOOM_EUNSUPPORTED, "config.json: hidden_act \"%s\" is not supported (silu)", act);
        json_t *rs = json_object_get(root, "rope_scaling");
        if (rs && !json_is_null(rs))
            loom_log(LOOM_WARN, "config.json: rope_scaling is ignored (plain RoPE is used)");
    } else if (rc == LOOM_OK) {
        rc = loom_error(LOOM_EUNSUPPORTED,
                        "config.json: model_type \"%s\" / architecture \"%s\" is not supported "
                        "(GPT2LMHeadModel, LlamaForCausalLM and its Mistral/Qwen2 relatives)",
                        mt ? mt : "?", arch ? arch : "?");
    }
done:
    json_decref(root);
    if (rc != LOOM_OK) return rc;
    return loom_config_validate(cfg);
}

int loom_config_load(loom_config *cfg, const char *path) {
    char *text;
    int rc = loom_read_file(path, &text, NULL);
    if (rc != LOOM_OK) return rc;
    rc = loom_config_parse(cfg, text);
    free(text);
    if (rc != LOOM_OK) loom_error_context(rc, "%s", path);
    return rc;
}

int loom_config_validate(const loom_config *c) {
    if (c->n_layer < 1 || c->n_layer > 1024) return loom_error(LOOM_EINVAL, "config: n_layer %d out of range", c->n_layer);
    if (c->dim < 1 || c->dim > 65536) return loom_error(LOOM_EINVAL, "config: hidden size %d out of range", c->dim);
    if (c->n_head < 1 || c->dim % c->n_head)
        return loom_error(LOOM_EINVAL, "config: hidden size %d is not divisible by %d heads", c->dim, c->n_head);
    if ((c->dim / c->n_head) % 2 || c->dim / c->n_head > 512)
        return loom_error(LOOM_EINVAL, "config: head size %d must be even and at most 512", c->dim / c->n_head);
    if (c->n_kv_head < 1 || c->n_head % c->n_kv_head)
        return loom_error(LOOM_EINVAL, "config: %d heads are not a multiple of %d key/value heads", c->n_head, c->n_kv_head);
    if (c->hidden < 1 || c->hidden > 1 << 20) return loom_error(LOOM_EINVAL, "config: MLP width %d out of range", c->hidden);
    if (c->vocab < 1 || c->vocab > 1 << 24) return loom_error(LOOM_EINVAL, "config: vocab_size %d out of range", c->vocab);
    if (c->max_seq < 1 || c->max_seq > 1 << 20) return loom_error(LOOM_EINVAL, "config: max positions %d out of range", c->max_seq);
    if (!(c->norm_eps > 0 && c->norm_eps < 1)) return loom_error(LOOM_EINVAL, "config: norm epsilon %g out of range", c->norm_eps);
    if (c->arch == LOOM_ARCH_LLAMA && !(c->rope_theta > 1)) return loom_error(LOOM_EINVAL, "config: rope_theta %g out of range", c->rope_theta);
    return LOOM_OK;
}

static void gpt2_shape(loom_config *c, int L, int NH, int C, int V, int maxT) {
    memset(c, 0, sizeof *c);
    c->arch = LOOM_ARCH_GPT2;
    c->n_layer = L;
    c->n_head = c->n_kv_head = NH;
    c->dim = C;
    c->hidden = 4 * C;
    c->vocab = V;
    c->max_seq = maxT;
    c->norm_eps = 1e-5f;
    c->act = LOOM_ACT_GELU_TANH;
    c->tied = 1;
    c->bos_id = c->eos_id = -1;
}

static void llama_shape(loom_config *c, int L, int NH, int NKV, int C, int H, int V, int maxT) {
    memset(c, 0, sizeof *c);
    c->arch = LOOM_ARCH_LLAMA;
    c->n_layer = L;
    c->n_head = NH;
    c->n_kv_head = NKV;
    c->dim = C;
    c->hidden = H;
    c->vocab = V;
    c->max_seq = maxT;
    c->norm_eps = 1e-5f;
    c->rope_theta = 10000.0f;
    c->act = LOOM_ACT_SILU;
    c->tied = 0;
    c->bos_id = 1;
    c->eos_id = 2;
}

int loom_config_named(loom_config *cfg, const char *name) {
    if (!strcmp(name, "gpt2-124m") || !strcmp(name, "gpt2")) gpt2_shape(cfg, 12, 12, 768, 50257, 1024);
    else if (!strcmp(name, "gpt2-tiny")) gpt2_shape(cfg, 2, 4, 64, 512, 64);
    else if (!strcmp(name, "tiny")) gpt2_shape(cfg, 4, 4, 128, 259, 256);
    else if (!strcmp(name, "llama-110m")) { /* llama2.c's stories110M shape: shared classifier */
        llama_shape(cfg, 12, 12, 12, 768, 2048, 32000, 1024);
        cfg->tied = 1;
    }
    else if (!strcmp(name, "llama-tiny")) llama_shape(cfg, 2, 4, 2, 64, 192, 512, 64);
    else return loom_config_load(cfg, name);
    return loom_config_validate(cfg);
}

char *loom_config_to_json(const loom_config *c) {
    json_t *o = json_object();
    if (c->arch == LOOM_ARCH_GPT2) {
        json_object_set_new(o, "architectures", json_pack("[s]", "GPT2LMHeadModel"));
        json_object_set_new(o, "model_type", json_string("gpt2"));
        json_object_set_new(o, "n_embd", json_integer(c->dim));
        json_object_set_new(o, "n_layer", json_integer(c->n_layer));
        json_object_set_new(o, "n_head", json_integer(c->n_head));
        json_object_set_new(o, "n_positions", json_integer(c->max_seq));
        json_object_set_new(o, "n_ctx", json_integer(c->max_seq));
        if (c->hidden != 4 * c->dim) json_object_set_new(o, "n_inner", json_integer(c->hidden));
        json_object_set_new(o, "vocab_size", json_integer(c->vocab));
        json_object_set_new(o, "layer_norm_epsilon", json_real(c->norm_eps));
        json_object_set_new(o, "activation_function", json_string(c->act == LOOM_ACT_GELU_ERF ? "gelu" : "gelu_new"));
        json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tied));
    } else {
        json_object_set_new(o, "architectures", json_pack("[s]", "LlamaForCausalLM"));
        json_object_set_new(o, "model_type", json_string("llama"));
        json_object_set_new(o, "hidden_size", json_integer(c->dim));
        json_object_set_new(o, "intermediate_size", json_integer(c->hidden));
        json_object_set_new(o, "num_hidden_layers", json_integer(c->n_layer));
        json_object_set_new(o, "num_attention_heads", json_integer(c->n_head));
        json_object_set_new(o, "num_key_value_heads", json_integer(c->n_kv_head));
        json_object_set_new(o, "max_position_embeddings", json_integer(c->max_seq));
        json_object_set_new(o, "vocab_size", json_integer(c->vocab));
        json_object_set_new(o, "rms_norm_eps", json_real(c->norm_eps));
        json_object_set_new(o, "rope_theta", json_real(c->rope_theta));
        json_object_set_new(o, "hidden_act", json_string("silu"));
        json_object_set_new(o, "tie_word_embeddings", json_boolean(c->tied));
        if (c->qkv_bias) json_object_set_new(o, "attention_bias", json_true());
    }
    if (c->bos_id >= 0) json_object_set_new(o, "bos_token_id", json_integer(c->bos_id));
    if (c->eos_id >= 0) json_object_set_new(o, "eos_token_id", json_integer(c->eos_id));
    json_object_set_new(o, "torch_dtype", json_string("float32"));
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(o);
    return s;
}
