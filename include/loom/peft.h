/* Parameter-efficient fine-tuning (peft/ layer): trainable sets.
 *
 * A trainable set is the part of a model that trains and travels: ONE contiguous float vector plus a
 * manifest of named tensors (name, shape, offset) inside it. The optimizer steps it; federated code
 * averages, clips, masks and sends it; it is saved as safetensors under the manifest's names. The frozen
 * base model is only read (one base can serve many clients, each with its own vector), is never copied
 * per client and never differentiated: no weight-gradient matmuls for frozen weights, and the backward
 * pass stops below the lowest point that has trainable parameters.
 *
 * Methods (loom_peft_config.method) and what the vector holds, with its tensor names:
 *   FULL     every model tensor (a trained copy), under the model's own names: the trainable set
 *            "all weights".
 *   LORA     per target module, A [r, in] and B [out, r]: output += scale * (dropout(x) A^T) B^T with
 *            scale = alpha / r (rsLoRA: alpha / sqrt(r)). Names as PEFT saves them:
 *            "base_model.model.<module>.lora_A.weight" / "...lora_B.weight", e.g.
 *            base_model.model.transformer.h.0.attn.c_attn.lora_A.weight. Target modules are matched as
 *            PEFT does for a list: a module whose path equals a target or ends with "." + target
 *            ("c_proj" selects attn.c_proj and mlp.c_proj in GPT-2, "attn.c_proj" only the first).
 *            Modules: GPT-2 c_attn (q|k|v fused, Conv1D [in, out]), attn.c_proj, mlp.c_fc, mlp.c_proj;
 *            Llama q_proj, k_proj, v_proj (column slices of the fused q|k|v output), o_proj, gate_proj,
 *            up_proj (slices of the fused gate|up output), down_proj. Default targets: c_attn (GPT-2),
 *            q_proj,v_proj (Llama). Init as PEFT: A Kaiming-uniform (a = sqrt(5): U(+-1/sqrt(in))), B 0.
 *   PREFIX   P-tuning v2 / prefix tuning: "prompt_embeddings" [P, L*2*KV] (PEFT's layout without a
 *            projection): layer l's key prefix is columns [2l*KV, (2l+1)*KV), its value prefix the next
 *            KV columns (KV = kv heads * head size, heads contiguous). Every query attends to the P
 *            prefix positions and causally to its sequence; prefix keys are used as given (no position
 *            embedding or RoPE: they play the part of a KV cache, at positions 0 .. P - 1, and the
 *            sequence's token t sits at position P + t, as in PEFT). Init N(0, 0.02^2).
 *   PROMPT   prompt tuning: "prompt_embeddings" [P, C], P soft tokens prepended to every sequence; they
 *            take positions 0..P-1 (GPT-2 adds wpe rows to them) and carry no loss. Init: rows of the
 *            token embedding drawn at random from the vocabulary (PEFT's SAMPLE_VOCAB).
 *   ADAPTER  Houlsby bottleneck adapters after the attention output projection and after the MLP, each
 *            y + up(gelu_tanh(down(y))) before its residual add: per layer and site (attn, mlp)
 *            "base_model.model.<layer>.adapter_<site>.down.weight" [m, C], ".down.bias" [m],
 *            ".up.weight" [C, m], ".up.bias" [C] (<layer> = transformer.h.<i> or model.layers.<i>).
 *            Init: down Kaiming-uniform, up and biases 0 (the adapter starts as the identity).
 *   BITFIT   every bias (and with bitfit_norms the norm gains), under the model's names.
 *
 * PEFT-layout directories (loom_tset_save_peft / loom_tset_load_peft): adapter_model.safetensors (the
 * vector under the names above) and adapter_config.json. LoRA, prefix and prompt tuning use PEFT's own
 * peft_type (LORA, PREFIX_TUNING, PROMPT_TUNING) and fields; adapters and BitFit, which PEFT lacks, use
 * peft_type "LOOM_ADAPTER" (adapter_dim) and "LOOM_BITFIT" (bitfit_norms) in the same spirit.
 * Prefix and prompt tuning write PromptLearningConfig's fields with the values PEFT derives from the base:
 * prefix token_dim = kv heads x head size, num_attention_heads = kv heads, encoder_hidden_size =
 * token_dim; prompt token_dim = C, num_attention_heads = heads; num_layers; num_transformer_submodules 1.
 * Reading checks them against the model (naming the field), and accepts prefix_projection true: PEFT
 * saves the projection's output, the same [P, L*2*KV] table.
 *
 * Worked example: LoRA r=8 on GPT-2's c_attn, one training step, saved in PEFT layout.
 *
 *     loom_model *m;   loom_model_load(&m, "gpt2-dir");
 *     loom_peft_config pc;  loom_peft_defaults(&pc, LOOM_PEFT_LORA);
 *     pc.lora_r = 8; pc.lora_alpha = 16; snprintf(pc.target_modules, sizeof pc.target_modules, "c_attn");
 *     loom_tset *ts;   if (loom_tset_create(&ts, m, &pc, 42) != LOOM_OK) ... loom_errmsg() ...
 *     // ts's own vector holds the initial values: 2 * 12 * 8 * (768 + 2304) = 589,824 floats
 *     loom_train_config tc; loom_train_defaults(&tc);
 *     loom_trainer *tr; loom_trainer_create_peft(&tr, m, loom_model_params(m), ts, loom_tset_data(ts), &tc);
 *     loom_trainer_step(tr, tokens, targets, &loss, NULL);   // steps only the LoRA vector
 *     loom_tset_save_peft(ts, loom_trainer_vector(tr), "out-dir", "gpt2-dir");
 *     loom_trainer_free(tr); loom_tset_free(ts); loom_model_free(m);
 *
 * A federated client keeps its own copy of the vector (loom_tset_dim floats) and trains it with
 * loom_trainer_create_peft(..., client_vec, ...); the model and the set are shared read-only.
 */
#ifndef LOOM_PEFT_H
#define LOOM_PEFT_H

#include <stddef.h>
#include <stdint.h>

#include "loom/model.h"
#include "loom/tvec.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LOOM_PEFT_FULL = 0, LOOM_PEFT_LORA, LOOM_PEFT_PREFIX, LOOM_PEFT_PROMPT, LOOM_PEFT_ADAPTER, LOOM_PEFT_BITFIT
} loom_peft_method;

typedef struct {
    loom_peft_method method;
    int lora_r;               /* rank, 1..1024 and at most the smaller side of every target (default 8) */
    float lora_alpha;         /* > 0 (default 16) */
    int rslora;               /* scale alpha/sqrt(r) instead of alpha/r */
    float lora_dropout;       /* in [0, 1) (default 0) */
    char target_modules[512]; /* comma-separated module names; "" = the architecture's default */
    int prefix_len;           /* virtual tokens of prefix tuning (default 16) */
    int prompt_len;           /* virtual tokens of prompt tuning (default 16) */
    int adapter_dim;          /* bottleneck width, 1..C (default 16) */
    int bitfit_norms;         /* BitFit also trains norm gains */
    loom_qtype base_dtype;    /* how the caller holds the frozen base (recorded; see loom_model_quantize) */
} loom_peft_config;

void loom_peft_defaults(loom_peft_config *c, loom_peft_method method);
/* "full", "lora", "prefix", "prompt", "adapter", "bitfit" */
int loom_peft_method_parse(const char *name, loom_peft_method *method);
const char *loom_peft_method_name(loom_peft_method method);
/* "f32", "bf16", "int8" */
int loom_base_dtype_parse(const char *name, loom_qtype *type);
const char *loom_base_dtype_name(loom_qtype type);

/* One tensor of the trainable vector. */
typedef struct {
    char name[160];
    int ndim;
    int64_t shape[2];
    size_t offset, numel;   /* in floats, into the vector */
    int layer;              /* -1 if not in a layer */
    int tensor;             /* model tensor it copies (FULL, BITFIT) or adapts (LoRA), else -1 */
    int matrix;             /* 2-D weight (weight decay applies when decaying matrices only) */
} loom_tset_entry;

typedef struct loom_tset loom_tset;

/* Builds the set for model m (its layout; m must outlive the set) and initialises its own vector from
 * seed (FULL and BITFIT copy the model's current values). Errors: unknown target modules (the message
 * lists the modules that exist), ranks/alphas/lengths out of range, FULL on a low-precision base. */
int loom_tset_create(loom_tset **out, const loom_model *m, const loom_peft_config *cfg, uint64_t seed);
/* The manifest and plan of a FULL or BITFIT set without a vector of its own (loom_tset_data returns
 * NULL): their values are copies of model tensors the caller already holds. The FULL vector's layout is
 * the model's (entry k at the offset of model tensor k), so m->params or a copy of it trains in place. */
int loom_tset_create_layout(loom_tset **out, const loom_model *m, const loom_peft_config *cfg);
void loom_tset_free(loom_tset *ts);
const loom_peft_config *loom_tset_config(const loom_tset *ts);
const loom_model *loom_tset_model(const loom_tset *ts);
/* The plan the forward/backward passes follow (loom_forward_ex, loom_ws_create_ex). */
const loom_peft *loom_tset_plan(const loom_tset *ts);
size_t loom_tset_dim(const loom_tset *ts);            /* floats in the vector */
size_t loom_tset_bytes(const loom_tset *ts);          /* dim * 4 */
float *loom_tset_data(loom_tset *ts);                 /* the set's own vector (initial values) */
int loom_tset_count(const loom_tset *ts);
const loom_tset_entry *loom_tset_entry_at(const loom_tset *ts, int i);
const loom_tset_entry *loom_tset_find(const loom_tset *ts, const char *name);
/* The set's manifest as a trainable vector (loom/tvec.h): the entries above with dtype F32 and role
 * SHARED, owned by the set. The FULL set's manifest is the model's own (loom_model_manifest). */
const loom_tvec *loom_tset_manifest(const loom_tset *ts);
/* LoRA scale (alpha/r or alpha/sqrt(r)); 0 for other methods. */
float loom_tset_lora_scale(const loom_tset *ts);

/* vec[dim] as safetensors under the manifest's names (F32), with the config in __metadata__: the
 * trainable-vector format (loom_tvec_write) with keys loom_peft, loom_dim and loom_arch. */
int loom_tset_save(const loom_tset *ts, const float *vec, const char *path);
/* Reads path into vec[dim]: every manifest tensor must be present with its shape, and the file must hold
 * nothing else; the first mismatch is named. */
int loom_tset_load(const loom_tset *ts, float *vec, const char *path);

/* PEFT layout: dir/adapter_model.safetensors + dir/adapter_config.json (dir is created). base_name is
 * written as base_model_name_or_path (may be NULL). Not for FULL (save the model instead). */
int loom_tset_save_peft(const loom_tset *ts, const float *vec, const char *dir, const char *base_name);
/* Reads a PEFT-layout directory written by PEFT or by loom for model m: builds the set from
 * adapter_config.json and loads its vector (loom_tset_data). An adapter whose base does not match m
 * (a missing or extra module, another shape, another architecture) is refused naming the mismatch. */
int loom_tset_load_peft(loom_tset **out, const loom_model *m, const char *dir);
/* Reads only adapter_config.json into *cfg (and the base model name into base, cap bytes, if given). */
int loom_peft_config_load(loom_peft_config *cfg, const char *dir, char *base, size_t cap);

/* A LoRA set as llama.cpp's LoRA-adapter GGUF at path (F32): general.architecture (gpt2, llama),
 * general.type "adapter", adapter.type "lora", adapter.lora.alpha, and per adapted weight
 * "blk.<l>.<tensor>.weight.lora_a" (A, ne = {in, r}) and ".lora_b" (B, ne = {r, out}) under llama.cpp's
 * tensor names (GPT-2 attn_qkv attn_output ffn_up ffn_down; Llama attn_q attn_k attn_v attn_output
 * ffn_gate ffn_up ffn_down). For Llama the rows of q's and k's B are put in Meta's interleaved rotary
 * order, as the GGUF model exporter does to the base weights (B's rows are the weight's rows, so the
 * product B A permutes with them). llama.cpp scales by alpha / r; rsLoRA is written as alpha * sqrt(r). */
int loom_tset_save_gguf_lora(const loom_tset *ts, const float *vec, const char *path);

/* Folds the set into a float parameter vector params[n_params] of the model (a copy of the base):
 * LoRA W += scale * (B A) in the weight's own layout; FULL and BITFIT copy their tensors in. Prefix,
 * prompt and adapter sets cannot be merged (LOOM_EUNSUPPORTED). loom_tset_unmerge undoes a LoRA merge
 * (W -= scale * B A). */
int loom_tset_merge(const loom_tset *ts, const float *vec, float *params);
int loom_tset_unmerge(const loom_tset *ts, const float *vec, float *params);
/* Whether the set can be merged into the weights (FULL, BITFIT, LORA). */
int loom_tset_mergeable(const loom_tset *ts);

#ifdef __cplusplus
}
#endif
#endif
