/* Trainable sets on disk: safetensors under the manifest's names; PEFT-layout adapter directories. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/json_num.h"
#include "loom/core.h"
#include "loom/safetensors.h"
#include "peft/peft_impl.h"

static const char *peft_type(loom_peft_method m) {
    switch (m) {
    case LOOM_PEFT_LORA: return "LORA";
    case LOOM_PEFT_PREFIX: return "PREFIX_TUNING";
    case LOOM_PEFT_PROMPT: return "PROMPT_TUNING";
    case LOOM_PEFT_ADAPTER: return "LOOM_ADAPTER";
    case LOOM_PEFT_BITFIT: return "LOOM_BITFIT";
    default: return "LOOM_FULL";
    }
}

static const char *arch_name(const loom_model *m) { return m->cfg.arch == LOOM_ARCH_GPT2 ? "gpt2" : "llama"; }

int loom_tset_save(const loom_tset *ts, const float *vec, const char *path) {
    char dim[32];
    snprintf(dim, sizeof dim, "%zu", ts->dim);
    const char *meta[] = {"loom_peft", loom_peft_method_name(ts->cfg.method), "loom_dim", dim, "loom_arch",
                          arch_name(ts->m), NULL};
    loom_tvec_io io = {.meta = meta};
    return loom_tvec_write(ts->manifest, vec, &io, path);
}

int loom_tset_load(const loom_tset *ts, float *vec, const char *path) {
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    /* files loom wrote say which architecture they were trained on (shapes alone may agree) */
    const char *arch = loom_st_meta(f, "loom_arch");
    if (arch && strcmp(arch, arch_name(ts->m)))
        rc = loom_error(LOOM_EINVAL, "%s was trained on a %s model; this model is %s", path, arch, arch_name(ts->m));
    loom_tvec_io io = {.allow_extra = 1};
    if (rc == LOOM_OK) rc = loom_tvec_read_from(f, ts->manifest, vec, &io);
    for (size_t i = 0; rc == LOOM_OK && i < loom_st_count(f); i++) {
        const loom_st_tensor *t = loom_st_at(f, i);
        if (!loom_tset_find(ts, t->name))
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %s matches nothing in this model's %s set (another base model?)",
                            path, t->name, loom_peft_method_name(ts->cfg.method));
    }
    loom_st_close(f);
    return rc;
}

/* ---------------------------------------------------------------- PEFT layout */

int loom_tset_save_peft(const loom_tset *ts, const float *vec, const char *dir, const char *base_name) {
    if (ts->cfg.method == LOOM_PEFT_FULL)
        return loom_error(LOOM_EINVAL, "a full fine-tuning set is a model: save it with loom_model_save");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return loom_error(LOOM_EIO, "cannot create %s: %s", dir, strerror(errno));
    const loom_model *m = ts->m;
    const loom_config *c = &m->cfg;
    int KV = c->n_kv_head * (c->dim / c->n_head);
    json_t *j = json_object();
    json_object_set_new(j, "peft_type", json_string(peft_type(ts->cfg.method)));
    json_object_set_new(j, "task_type", json_string("CAUSAL_LM"));
    json_object_set_new(j, "base_model_name_or_path", base_name ? json_string(base_name) : json_null());
    json_object_set_new(j, "inference_mode", json_true());
    json_object_set_new(j, "revision", json_null());
    switch (ts->cfg.method) {
    case LOOM_PEFT_LORA: {
        json_object_set_new(j, "r", json_integer(ts->cfg.lora_r));
        json_object_set_new(j, "lora_alpha", json_real(ts->cfg.lora_alpha));
        json_object_set_new(j, "lora_dropout", json_real(ts->cfg.lora_dropout));
        json_object_set_new(j, "use_rslora", json_boolean(ts->cfg.rslora));
        json_object_set_new(j, "bias", json_string("none"));
        json_object_set_new(j, "fan_in_fan_out", json_boolean(c->arch == LOOM_ARCH_GPT2));
        json_object_set_new(j, "init_lora_weights", json_true());
        json_object_set_new(j, "use_dora", json_false());
        json_object_set_new(j, "modules_to_save", json_null());
        json_t *tm = json_array();
        char targets[sizeof ts->cfg.target_modules], *save = NULL;
        snprintf(targets, sizeof targets, "%s", ts->cfg.target_modules[0] ? ts->cfg.target_modules
                                                : c->arch == LOOM_ARCH_GPT2 ? "c_attn" : "q_proj,v_proj");
        for (char *t = strtok_r(targets, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) json_array_append_new(tm, json_string(t));
        json_object_set_new(j, "target_modules", tm);
        break;
    }
    case LOOM_PEFT_PREFIX:
    case LOOM_PEFT_PROMPT: {
        /* PromptLearningConfig's fields with the values PEFT's _prepare_prompt_learning_config derives
         * from the base model's config: prefix tuning stores keys and values of the kv heads (token_dim =
         * kv heads x head size, num_attention_heads = kv heads, encoder_hidden_size = token_dim when
         * unset); prompt tuning's rows are input embeddings (token_dim = the model width). */
        int prefix = ts->cfg.method == LOOM_PEFT_PREFIX;
        json_object_set_new(j, "auto_mapping", json_null());
        json_object_set_new(j, "num_virtual_tokens", json_integer(prefix ? ts->cfg.prefix_len : ts->cfg.prompt_len));
        json_object_set_new(j, "token_dim", json_integer(prefix ? KV : c->dim));
        json_object_set_new(j, "num_attention_heads", json_integer(prefix ? c->n_kv_head : c->n_head));
        json_object_set_new(j, "num_layers", json_integer(c->n_layer));
        json_object_set_new(j, "num_transformer_submodules", json_integer(1));
        json_object_set_new(j, "modules_to_save", json_null());
        if (prefix) {
            json_object_set_new(j, "encoder_hidden_size", json_integer(KV));
            json_object_set_new(j, "prefix_projection", json_false());
            json_object_set_new(j, "init_weights", json_null());
        } else {
            json_object_set_new(j, "prompt_tuning_init", json_string("SAMPLE_VOCAB"));
            json_object_set_new(j, "prompt_tuning_init_text", json_null());
            json_object_set_new(j, "tokenizer_name_or_path", json_null());
            json_object_set_new(j, "tokenizer_kwargs", json_null());
        }
        break;
    }
    case LOOM_PEFT_ADAPTER:
        json_object_set_new(j, "adapter_dim", json_integer(ts->cfg.adapter_dim));
        json_object_set_new(j, "adapter_sites", json_string("attn,mlp"));
        json_object_set_new(j, "nonlinearity", json_string("gelu_new"));
        break;
    case LOOM_PEFT_BITFIT:
        json_object_set_new(j, "bitfit_norms", json_boolean(ts->cfg.bitfit_norms));
        break;
    default: break;
    }
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(j);
    if (!text) return loom_error(LOOM_ENOMEM, "out of memory");
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    size_t n = strlen(text);
    int rc = loom_write_file_atomic(path, text, n);
    free(text);
    if (rc != LOOM_OK) return rc;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    return loom_tset_save(ts, vec, path);
}

int loom_peft_config_load(loom_peft_config *cfg, const char *dir, char *base, size_t cap) {
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j) {
        FILE *f = fopen(path, "r");
        if (!f) return loom_error(LOOM_ENOTFOUND, "%s: cannot open (is %s a PEFT adapter directory?)", path, dir);
        fclose(f);
        return loom_error(LOOM_EFORMAT, "%s:%d: invalid JSON: %s", path, err.line, err.text);
    }
    int rc = LOOM_OK;
    json_t *pt = json_object_get(j, "peft_type");
    const char *type = json_is_string(pt) ? json_string_value(pt) : "";
    loom_peft_method mth;
    if (!strcmp(type, "LORA")) mth = LOOM_PEFT_LORA;
    else if (!strcmp(type, "PREFIX_TUNING")) mth = LOOM_PEFT_PREFIX;
    else if (!strcmp(type, "PROMPT_TUNING")) mth = LOOM_PEFT_PROMPT;
    else if (!strcmp(type, "LOOM_ADAPTER")) mth = LOOM_PEFT_ADAPTER;
    else if (!strcmp(type, "LOOM_BITFIT")) mth = LOOM_PEFT_BITFIT;
    else {
        /* the message is built before the JSON (which owns `type`) is released */
        rc = loom_error(LOOM_EUNSUPPORTED, "%s: peft_type '%s' is not supported (LORA, PREFIX_TUNING, PROMPT_TUNING, LOOM_ADAPTER, LOOM_BITFIT)", path, type);
        json_decref(j);
        return rc;
    }
    loom_peft_defaults(cfg, mth);
    if (base && cap) {
        json_t *b = json_object_get(j, "base_model_name_or_path");
        snprintf(base, cap, "%s", json_is_string(b) ? json_string_value(b) : "");
    }
    switch (mth) {
    case LOOM_PEFT_LORA: {
        double alpha, dropout;
        if ((rc = loom_json_int32(j, "r", 1, 1024, 8, &cfg->lora_r, path)) != LOOM_OK ||
            (rc = loom_json_real(j, "lora_alpha", 0, 1e6, 8, &alpha, path)) != LOOM_OK ||
            (rc = loom_json_real(j, "lora_dropout", 0, 1, 0, &dropout, path)) != LOOM_OK)
            break;
        cfg->lora_alpha = (float)alpha;
        cfg->lora_dropout = (float)dropout;
        cfg->rslora = json_is_true(json_object_get(j, "use_rslora"));
        json_t *bias = json_object_get(j, "bias");
        if (json_is_string(bias) && strcmp(json_string_value(bias), "none"))
            rc = loom_error(LOOM_EUNSUPPORTED, "%s: bias '%s' is not supported (only \"none\")", path, json_string_value(bias));
        if (json_is_true(json_object_get(j, "use_dora")))
            rc = loom_error(LOOM_EUNSUPPORTED, "%s: DoRA adapters are not supported", path);
        json_t *tm = json_object_get(j, "target_modules");
        size_t n = 0;
        if (json_is_array(tm)) {
            for (size_t i = 0; i < json_array_size(tm); i++) {
                json_t *s = json_array_get(tm, i);
                if (!json_is_string(s)) continue;
                n += (size_t)snprintf(cfg->target_modules + n, n < sizeof cfg->target_modules ? sizeof cfg->target_modules - n : 0,
                                      "%s%s", i ? "," : "", json_string_value(s));
            }
        } else if (json_is_string(tm)) {
            const char *s = json_string_value(tm);
            if (strpbrk(s, "*.^$[]()|+?\\") && !strchr(s, ','))
                rc = loom_error(LOOM_EUNSUPPORTED, "%s: target_modules as a regular expression (%s) is not supported; give a list", path, s);
            n = (size_t)snprintf(cfg->target_modules, sizeof cfg->target_modules, "%s", s);
        }
        if (n >= sizeof cfg->target_modules) rc = loom_error(LOOM_ERANGE, "%s: target_modules too long", path);
        break;
    }
    case LOOM_PEFT_PREFIX: rc = loom_json_int32(j, "num_virtual_tokens", 1, 4096, 0, &cfg->prefix_len, path); break;
    case LOOM_PEFT_PROMPT: rc = loom_json_int32(j, "num_virtual_tokens", 1, 1 << 20, 0, &cfg->prompt_len, path); break;
    case LOOM_PEFT_ADAPTER: rc = loom_json_int32(j, "adapter_dim", 1, 65536, 0, &cfg->adapter_dim, path); break;
    case LOOM_PEFT_BITFIT: cfg->bitfit_norms = json_is_true(json_object_get(j, "bitfit_norms")); break;
    default: break;
    }
    json_decref(j);
    return rc;
}

/* The shape fields of PEFT's PromptLearningConfig must describe this model: PEFT reshapes prefix
 * tuning's [P, num_layers * 2 * token_dim] table by them (view [P, 2 num_layers, heads, token_dim /
 * heads], key of layer l = slice 2l, value = 2l + 1), so a table of the right total width with another
 * head split or layer count would be read differently. An absent or null field is derived from the base
 * by PEFT and by loom alike; files of earlier loom versions (encoder_hidden_size = the model width,
 * prompt tuning without num_attention_heads) pass. prefix_projection true is accepted: PEFT saves the
 * projection's output, the same [P, num_layers * 2 * token_dim] table, and runs it as given when loaded
 * for inference. */
static int check_prompt_learning(const loom_model *m, loom_peft_method mth, const char *dir) {
    const loom_config *c = &m->cfg;
    int prefix = mth == LOOM_PEFT_PREFIX, KV = c->n_kv_head * (c->dim / c->n_head);
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    json_t *j = json_load_file(path, 0, NULL);
    if (!j) return loom_error(LOOM_EFORMAT, "%s: cannot read", path);
    struct { const char *key; int want; const char *what; } f[] = {
        {"token_dim", prefix ? KV : c->dim, prefix ? "kv heads x head size" : "the model width"},
        {"num_layers", c->n_layer, "layers"},
        {"num_attention_heads", c->n_kv_head, "kv heads"},
        {"num_transformer_submodules", 1, "a decoder-only model"},
    };
    int rc = LOOM_OK;
    for (int i = 0; rc == LOOM_OK && i < 4; i++) {
        if (!prefix && i == 2) continue; /* prompt tuning never splits its rows into heads */
        int v;
        if ((rc = loom_json_int32(j, f[i].key, 1, 1 << 24, f[i].want, &v, path)) != LOOM_OK) break;
        if (v != f[i].want)
            rc = loom_error(LOOM_EINVAL, "%s: %s is %d; this model's %s tuning needs %d (%s)", path, f[i].key, v,
                            prefix ? "prefix" : "prompt", f[i].want, f[i].what);
    }
    json_decref(j);
    return rc;
}

int loom_tset_load_peft(loom_tset **out, const loom_model *m, const char *dir) {
    *out = NULL;
    loom_peft_config cfg;
    int rc = loom_peft_config_load(&cfg, dir, NULL, 0);
    if (rc != LOOM_OK) return rc;
    if ((cfg.method == LOOM_PEFT_PREFIX || cfg.method == LOOM_PEFT_PROMPT) &&
        (rc = check_prompt_learning(m, cfg.method, dir)) != LOOM_OK)
        return loom_error_context(rc, "adapter %s does not fit this model", dir);
    loom_tset *ts;
    if ((rc = loom_tset_create(&ts, m, &cfg, 0)) != LOOM_OK)
        return loom_error_context(rc, "adapter %s does not fit this model", dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if ((rc = loom_tset_load(ts, ts->data, path)) != LOOM_OK) {
        loom_tset_free(ts);
        return loom_error_context(rc, "adapter %s does not fit this model", dir);
    }
    *out = ts;
    return LOOM_OK;
}
