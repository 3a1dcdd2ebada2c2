/* A LoRA set as llama.cpp's LoRA-adapter GGUF (the form convert_lora_to_gguf.py writes and
 * src/llama-adapter.cpp reads): general.type "adapter", adapter.type "lora", adapter.lora.alpha,
 * general.architecture, and per adapted weight "<base tensor>.lora_a" / ".lora_b". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/gguf.h"
#include "peft/peft_impl.h"

/* PEFT module suffix -> llama.cpp's tensor name inside blk.<l>; permute: 1 for q, 2 for k (the rows
 * of the output the base exporter reorders into Meta's interleaved RoPE layout). */
typedef struct {
    const char *suffix, *gguf;
    int permute;
} gguf_module;

static const gguf_module gpt2_modules[] = {
    {"attn.c_attn", "attn_qkv", 0}, {"attn.c_proj", "attn_output", 0}, {"mlp.c_fc", "ffn_up", 0},
    {"mlp.c_proj", "ffn_down", 0},  {NULL, NULL, 0}};
static const gguf_module llama_modules[] = {
    {"self_attn.q_proj", "attn_q", 1},      {"self_attn.k_proj", "attn_k", 2}, {"self_attn.v_proj", "attn_v", 0},
    {"self_attn.o_proj", "attn_output", 0}, {"mlp.gate_proj", "ffn_gate", 0},  {"mlp.up_proj", "ffn_up", 0},
    {"mlp.down_proj", "ffn_down", 0},       {NULL, NULL, 0}};

/* Maps "base_model.model.<layers>.<l>.<suffix>.lora_A.weight" to its module; *ab = 0 for A, 1 for B. */
static const gguf_module *module_of(const loom_model *m, const char *name, int layer, int *ab) {
    char head[96];
    snprintf(head, sizeof head, "base_model.model.%s.%d.", m->cfg.arch == LOOM_ARCH_GPT2 ? "transformer.h" : "model.layers",
             layer);
    size_t nh = strlen(head);
    if (strncmp(name, head, nh)) return NULL;
    const char *rest = name + nh, *tail = strstr(rest, ".lora_");
    if (!tail || (strcmp(tail, ".lora_A.weight") && strcmp(tail, ".lora_B.weight"))) return NULL;
    *ab = tail[6] == 'B';
    for (const gguf_module *g = m->cfg.arch == LOOM_ARCH_GPT2 ? gpt2_modules : llama_modules; g->suffix; g++)
        if (strlen(g->suffix) == (size_t)(tail - rest) && !strncmp(rest, g->suffix, (size_t)(tail - rest))) return g;
    return NULL;
}

/* The row order llama.cpp's converter gives q and k (convert_hf_to_gguf.py LlamaModel.permute): within
 * each head of hs rows, Hugging Face's halves [first hs/2 | second hs/2] become interleaved pairs, so
 * output row h*hs + 2i + j is input row h*hs + j*hs/2 + i. dst and src are [heads*hs, cols]. */
static void permute_rows(float *dst, const float *src, int heads, int hs, int cols) {
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < hs / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(dst + ((size_t)h * hs + 2 * i + j) * cols, src + ((size_t)h * hs + j * (hs / 2) + i) * cols,
                       (size_t)cols * sizeof(float));
}

int loom_tset_save_gguf_lora(const loom_tset *ts, const float *vec, const char *path) {
    if (ts->cfg.method != LOOM_PEFT_LORA)
        return loom_error(LOOM_EINVAL, "a GGUF LoRA adapter holds LoRA sets only (this set is %s)",
                          loom_peft_method_name(ts->cfg.method));
    const loom_model *m = ts->m;
    const loom_config *c = &m->cfg;
    int HS = c->dim / c->n_head;
    if (c->arch == LOOM_ARCH_LLAMA && HS % 2)
        return loom_error(LOOM_EINVAL, "head size %d is odd: llama.cpp's rotary layout needs pairs", HS);
    loom_gguf_writer *w;
    int rc = loom_gguf_writer_create(&w);
    if (rc != LOOM_OK) return rc;
    /* llama.cpp scales by alpha / rank (rank = lora_b's ne[0]); rsLoRA's alpha / sqrt(r) is the same
     * product with alpha * sqrt(r) */
    float r = (float)ts->cfg.lora_r, alpha = ts->cfg.rslora ? ts->cfg.lora_alpha * sqrtf(r) : ts->cfg.lora_alpha;
    if ((rc = loom_gguf_set_str(w, "general.architecture", c->arch == LOOM_ARCH_GPT2 ? "gpt2" : "llama")) != LOOM_OK ||
        (rc = loom_gguf_set_str(w, "general.type", "adapter")) != LOOM_OK ||
        (rc = loom_gguf_set_str(w, "general.name", "loom LoRA adapter")) != LOOM_OK ||
        (rc = loom_gguf_set_str(w, "adapter.type", "lora")) != LOOM_OK ||
        (rc = loom_gguf_set_f32(w, "adapter.lora.alpha", alpha)) != LOOM_OK) {
        loom_gguf_writer_free(w);
        return rc;
    }
    /* permuted copies of q/k B matrices live until the write */
    float **copies = calloc((size_t)ts->n + 1, sizeof *copies);
    if (!copies) {
        loom_gguf_writer_free(w);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    for (int k = 0; k < ts->n && rc == LOOM_OK; k++) {
        const loom_tset_entry *e = &ts->e[k];
        int ab;
        const gguf_module *g = module_of(m, e->name, e->layer, &ab);
        if (!g) {
            rc = loom_error(LOOM_EINVAL, "LoRA tensor %s has no llama.cpp counterpart", e->name);
            break;
        }
        char name[LOOM_GGUF_MAX_NAME];
        snprintf(name, sizeof name, "blk.%d.%s.weight.lora_%c", e->layer, g->gguf, ab ? 'b' : 'a');
        /* A [r, in] and B [out, r] in C order: ne = {in, r} and {r, out}, as llama.cpp checks them
         * against the base weight's ne = {in, out} */
        int64_t ne[2] = {e->shape[1], e->shape[0]};
        const float *src = vec + e->offset;
        if (ab && g->permute) {
            int heads = g->permute == 1 ? c->n_head : c->n_kv_head;
            if (!(copies[k] = loom_alloc(e->numel * sizeof(float)))) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            permute_rows(copies[k], src, heads, HS, (int)e->shape[1]);
            src = copies[k];
        }
        rc = loom_gguf_writer_add_f32(w, name, LOOM_GGML_F32, 2, ne, src);
    }
    if (rc == LOOM_OK) rc = loom_gguf_writer_write(w, path);
    for (int k = 0; k < ts->n; k++) loom_free(copies[k]);
    free(copies);
    loom_gguf_writer_free(w);
    return rc;
}
