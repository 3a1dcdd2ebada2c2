/* Model configurations: Hugging Face config.json in and out, built-in shapes, validation. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"

static int get_int(json_t *root, const char *key, int def) {
    json_t *v = json_object_get(root, key);
    if (json_is_integer(v)) return (int)json_integer_value(v);
    if (json_is_real(v)) return (int)json_real_value(v);
    return def;
}

static double get_num(json_t *root, const char *key, double def) {
    json_t *v = json_object_get(root, key);
    if (json_is_number(v)) return json_number_value(v);
    return def;
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
    cfg->bos_id = get_int(root, "bos_token_id", -1);
    cfg->eos_id = get_int(root, "eos_token_id", -1);
    if (is_gpt2) {
        cfg->arch = LOOM_ARCH_GPT2;
        cfg->dim = get_int(root, "n_embd", 768);
        cfg->n_layer = get_int(root, "n_layer", 12);
        cfg->n_head = get_int(root, "n_head", 12);
        cfg->n_kv_head = cfg->n_head;
        int inner = get_int(root, "n_inner", 0);
        cfg->hidden = inner > 0 ? inner : 4 * cfg->dim;
        cfg->vocab = get_int(root, "vocab_size", 50257);
        cfg->max_seq = get_int(root, "n_positions", get_int(root, "n_ctx", 1024));
        cfg->norm_eps = (float)get_num(root, "layer_norm_epsilon", 1e-5);
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
        cfg->dim = get_int(root, "hidden_size", 4096);
        cfg->n_layer = get_int(root, "num_hidden_layers", 32);
        cfg->n_head = get_int(root, "num_attention_heads", 32);
        cfg->n_kv_head = get_int(root, "num_key_value_heads", cfg->n_head);
        cfg->hidden = get_int(root, "intermediate_size", 11008);
        cfg->vocab = get_int(root, "vocab_size", 32000);
        cfg->max_seq = get_int(root, "max_position_embeddings", 2048);
        cfg->norm_eps = (float)get_num(root, "rms_norm_eps", 1e-6);
        cfg->rope_theta = (float)get_num(root, "rope_theta", 10000.0);
        cfg->act = LOOM_ACT_SILU;
        json_t *tie = json_object_get(root, "tie_word_embeddings");
        cfg->tied = json_is_boolean(tie) ? json_is_true(tie) : 0;
        json_t *ab = json_object_get(root, "attention_bias");
        cfg->qkv_bias = (mt && !strcmp(mt, "qwen2")) || (json_is_boolean(ab) && json_is_true(ab));
        const char *act = get_str(root, "hidden_act");
        if (act && strcmp(act, "silu") != 0)
            rc = loom_error(LOOM_EUNSUPPORTED, "config.json: hidden_act \"%s\" is not supported (silu)", act);
        json_t *hd = json_object_get(root, "head_dim");
        if (json_is_integer(hd) && json_integer_value(hd) * cfg->n_head != cfg->dim)
            rc = loom_error(LOOM_EUNSUPPORTED, "config.json: head_dim %d differs from hidden_size/num_attention_heads",
                            (int)json_integer_value(hd));
        json_t *rs = json_object_get(root, "rope_scaling");
        if (rs && !json_is_null(rs))
            loom_log(LOOM_WARN, "config.json: rope_scaling is ignored (plain RoPE is used)");
    } else {
        rc = loom_error(LOOM_EUNSUPPORTED,
                        "config.json: model_type \"%s\" / architecture \"%s\" is not supported "
                        "(GPT2LMHeadModel, LlamaForCausalLM and its Mistral/Qwen2 relatives)",
                        mt ? mt : "?", arch ? arch : "?");
    }
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
