/* Decoder-only transformer models (model/ layer): GPT-2 and Llama families.
 *
 * All weights live in ONE contiguous float buffer (`params`), described by a table of tensors
 * (Hugging Face name, shape, offset). Gradients use the same layout. Weights are kept in the Hugging Face
 * layout of their architecture: GPT-2 Conv1D weights are [in, out], Llama (nn.Linear) weights [out, in],
 * so names, shapes and offsets map one to one onto model.safetensors.
 *
 * The model (config + layout + weights) is read-only during training; activations live in a workspace
 * (loom_ws) sized for a batch B and sequence length T, so several workers can share one model:
 *
 *     loom_model *m;   loom_model_load(&m, "dir");             // or loom_model_create(&m, &cfg, seed)
 *     loom_ws *ws;     loom_ws_create(&ws, m, B, T);           // loom_ws_create_infer: forward only
 *     float *p = loom_model_params(m), loss;
 *                      loom_forward(m, p, ws, tokens, targets, B, T, &loss);
 *     float *grads = loom_calloc(loom_model_n_params(m), sizeof(float));
 *                      loom_backward(m, p, ws, grads, NULL);
 *
 * A tensor's storage type is loom_tensor.dtype: LOOM_Q_F32 in the float buffer, or BF16/INT8 in a
 * low-precision base (loom_model_quantize); every reader goes through one internal weight accessor,
 * so forward, backward, decoding and saving all read a low-precision base as it is held.
 *
 * Dimension letters: B batch, T time, C model width, H MLP width, V vocabulary, L layers. */
#ifndef LOOM_MODEL_H
#define LOOM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "loom/gguf.h"
#include "loom/quant.h"
#include "loom/tvec.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOOM_ARCH_GPT2 = 0, LOOM_ARCH_LLAMA = 1 } loom_arch;
typedef enum { LOOM_ACT_GELU_TANH = 0, LOOM_ACT_GELU_ERF = 1, LOOM_ACT_SILU = 2 } loom_act;

typedef struct {
    loom_arch arch;
    int n_layer, n_head, n_kv_head;
    int dim;        /* C */
    int hidden;     /* H: MLP width */
    int vocab;      /* V */
    int max_seq;    /* positions (GPT-2 wpe rows; Llama max_position_embeddings) */
    float norm_eps;
    float rope_theta;
    loom_act act;   /* GPT-2: gelu_new or gelu; Llama: silu */
    int tied;       /* lm_head shares the token embedding */
    int qkv_bias;   /* Llama family: q/k/v projections have biases (Qwen2) */
    int bos_id, eos_id; /* -1 when unknown */
} loom_config;

/* Fills a config from a Hugging Face config.json text / file. */
int loom_config_parse(loom_config *cfg, const char *json_text);
int loom_config_load(loom_config *cfg, const char *path);
/* Built-in shapes: "gpt2-124m", "gpt2-tiny", "llama-110m", "llama-tiny", "tiny" (a small GPT-2 for
 * byte-level text), or a path to a config.json. */
int loom_config_named(loom_config *cfg, const char *name_or_path);
/* config.json text (malloc'ed) in the Hugging Face format for this config. */
char *loom_config_to_json(const loom_config *cfg);
int loom_config_validate(const loom_config *cfg);

/* Tensor kinds (what a trainable-set method selects). */
typedef enum {
    LOOM_T_EMBED, LOOM_T_POS, LOOM_T_NORM_W, LOOM_T_NORM_B, LOOM_T_LINEAR_W, LOOM_T_LINEAR_B, LOOM_T_HEAD
} loom_tensor_kind;

typedef struct {
    char name[96];
    loom_tensor_kind kind;
    int layer;      /* -1 for non-layer tensors */
    int ndim;
    int64_t shape[2];
    size_t offset;  /* into params/grads, in floats */
    size_t numel;
    loom_qtype dtype; /* storage: LOOM_Q_F32 in params, or BF16/INT8 in the low-precision base */
} loom_tensor;

/* Per-layer tensor slots (index into loom_model.tensors, -1 if absent). */
enum {
    LOOM_L_NORM1_W, LOOM_L_NORM1_B, LOOM_L_QKV_W, LOOM_L_QKV_B, LOOM_L_K_W, LOOM_L_V_W, LOOM_L_O_W, LOOM_L_O_B,
    LOOM_L_NORM2_W, LOOM_L_NORM2_B, LOOM_L_UP_W, LOOM_L_UP_B, LOOM_L_GATE_W, LOOM_L_DOWN_W, LOOM_L_DOWN_B,
    LOOM_L_NSLOTS
};
/* Note: for Llama, QKV_W is q_proj and K_W/V_W follow it contiguously (so [q;k;v] is one [C+2*KV, C]
 * matrix); GATE_W is gate_proj and UP_W follows it contiguously ([gate;up] is one [2H, C] matrix). */

/* Opaque: read a model through the accessors below (the layout lives in src/model/model_impl.h). */
typedef struct loom_model loom_model;

/* Allocates a model with this config, weights initialised from `seed` (GPT-2: N(0, 0.02), residual
 * projections scaled by 1/sqrt(2L); norms 1, biases 0). */
int loom_model_create(loom_model **out, const loom_config *cfg, uint64_t seed);
/* Loads a Hugging Face directory (config.json + model.safetensors or shards), a llama2.c .bin, or a
 * GGUF file (loom_model_load_gguf). */
int loom_model_load(loom_model **out, const char *path);
/* Writes dir/config.json and dir/model.safetensors (atomically); creates dir if needed. Float tensors
 * come from params; tensors of a low-precision base are written as they are held (BF16 natively,
 * int8 dequantized to F32), so the file loads back as the values the model computes with. */
int loom_model_save(const loom_model *m, const float *params, const char *dir);
void loom_model_free(loom_model *m);
/* GGUF, the format of llama.cpp (architectures "llama" and "gpt2", its key and tensor names; Llama q/k
 * rows in Meta's interleaved RoPE order, GPT-2 Conv1D weights transposed, as llama.cpp's converter
 * writes them). Save adds the model's keys and tensors to w, which may already hold other keys (the
 * tokenizer's: loom_tokenizer_gguf_add), and writes path atomically; matrices are stored as type
 * (F32, F16, BF16 or Q8_0; a row length Q8_0 cannot block stays F32), vectors as F32. The tensors
 * added reference buffers released on return: w may only be freed afterwards. */
int loom_model_save_gguf(const loom_model *m, const float *params, loom_ggml_type type, loom_gguf_writer *w, const char *path);
/* Loads a llama or gpt2 GGUF model (F32/F16/BF16/Q8_0 tensors, dequantized to float). Unsupported
 * architectures, tensor types, RoPE variants and tensors are refused with a message naming the file
 * and what is unsupported. loom_model_load calls it for a path ending in .gguf or a file starting with
 * the GGUF magic. */
int loom_model_load_gguf(loom_model **out, const char *path);
int loom_model_find(const loom_model *m, const char *name); /* tensor index or -1 */
/* The whole parameter vector as a trainable-vector manifest (loom/tvec.h): every tensor under its
 * name at its offset, F32, role SHARED. This is the FULL set's manifest, what sim and the trainer use
 * when the whole model trains. Owned by the model. */
const loom_tvec *loom_model_manifest(const loom_model *m);
/* Accessors: the only way callers outside the model layer read a model. */
const loom_config *loom_model_config(const loom_model *m);
int loom_model_n_tensors(const loom_model *m);
const loom_tensor *loom_model_tensor(const loom_model *m, int idx); /* NULL outside 0..n_tensors-1 */
size_t loom_model_n_params(const loom_model *m);
/* The model's own float buffer [n_params]. Tensors held in low precision (dtype != LOOM_Q_F32) have no
 * values there: read them with loom_model_weight. */
float *loom_model_params(loom_model *m);
const float *loom_model_params_const(const loom_model *m);
/* 1 if the frozen base is held in low precision (loom_model_quantize), 0 if all tensors are float. */
int loom_model_is_quantized(const loom_model *m);
/* Multiply-accumulates of one forward pass per token, excluding attention (2 * this = FLOPs). */
double loom_model_flops_per_token(const loom_model *m, int T, int with_attention);

/* Low-precision frozen base (QLoRA-style): every linear weight (LOOM_T_LINEAR_W) is held in BF16 or int8
 * with one absmax scale per output channel (its loom_tensor.dtype says which), and dequantized block by
 * block inside each matmul: forward, backward, loom_decode_step and loom_model_save read it as held,
 * whatever params buffer they are given. The float copies of those weights in the model's buffer are
 * released (their pages returned to the system) and hold nothing: loom_model_weight gives the values.
 * Such weights are frozen: loom_backward gives them no gradient, and a trainable set may not contain
 * them. Embeddings, norms and biases stay float. */
int loom_model_quantize(loom_model *m, loom_qtype type);
/* loom_model_create followed by loom_model_quantize, one tensor at a time, so the float copy of the
 * linear weights is never resident as a whole (peak memory ~ the low-precision model). */
int loom_model_create_quantized(loom_model **out, const loom_config *cfg, uint64_t seed, loom_qtype type);
/* What else loom_model_quantize_ex holds in low precision (flags). */
enum { LOOM_QUANT_EMBED_HEAD = 1 };
/* loom_model_quantize (what = 0); with LOOM_QUANT_EMBED_HEAD also the token embedding and the lm head
 * (one tensor when tied; Linear layout [V, C], an int8 scale per token row), so that all the weight
 * memory is at the precision, as llama.cpp's Q8_0 holds its output matrix. Such a model is for
 * generation: loom_decode_step reads its embedding row by row and its head with loom_qgemv, while the
 * forward pass (and so training) refuses it, and a prompt-tuning set cannot take its initial rows
 * from the embedding. loom_model_create_quantized_ex is the one-tensor-at-a-time creation of it. */
int loom_model_quantize_ex(loom_model *m, loom_qtype type, int what);
int loom_model_create_quantized_ex(loom_model **out, const loom_config *cfg, uint64_t seed, loom_qtype type, int what);
loom_qtype loom_model_base_type(const loom_model *m);
/* Bytes the base weights occupy (float tensors + low-precision linear weights with their scales). */
size_t loom_model_base_bytes(const loom_model *m);
/* Copies tensor idx as floats into dst[numel] (dequantized if held in low precision; else from params). */
int loom_model_weight(const loom_model *m, const float *params, int idx, float *dst);
/* A new float model (no low-precision base) holding m's values: params for float tensors, the
 * dequantized base for the others. What merging an adapter into a low-precision base needs. */
int loom_model_to_float(loom_model **out, const loom_model *m, const float *params);

/* Activation workspace for batches up to B x T. */
typedef struct loom_ws loom_ws;
int loom_ws_create(loom_ws **out, const loom_model *m, int B, int T);
void loom_ws_free(loom_ws *ws);
size_t loom_ws_bytes(const loom_ws *ws);
/* Logits [B*T, V] of the last forward (valid until backward, which overwrites them; after a forward
 * with loom_ws_set_fused_loss on, d loss / d logits instead). */
float *loom_ws_logits(loom_ws *ws);
/* Per-position losses [B*T] of the last forward (0 where the target is ignored). */
const float *loom_ws_losses(const loom_ws *ws);

/* Forward pass. targets may be NULL (no loss; *loss = 0). targets < 0 carry no loss. */
int loom_forward(const loom_model *m, const float *params, loom_ws *ws, const int32_t *tokens,
                 const int32_t *targets, int B, int T, float *loss);
/* Backward pass of the last forward: grads[n_params] += d loss / d params. trainable[n_tensors] (1 = want
 * the gradient) may be NULL for all; weight-gradient work for other tensors is skipped. */
int loom_backward(const loom_model *m, const float *params, loom_ws *ws, float *grads, const uint8_t *trainable);

/* ---- trainable sets (peft/ builds the plan; see loom/peft.h) ----
 * A plan says which values come from a trainable vector `vec` instead of the frozen base: trained
 * copies of model tensors (full fine-tuning, BitFit), LoRA modules, prefixes, soft prompts, adapters.
 * The base is only read; gradients go to gvec[dim] (+=) and nothing is computed for frozen weights:
 * no weight-gradient matmuls, and no input gradients below the lowest trainable point. */
typedef struct loom_peft loom_peft;
/* A workspace sized for B x T plus what the plan needs (soft-prompt positions, LoRA/adapter/prefix
 * activations, a dequantization block for a low-precision base). pf may be NULL. */
int loom_ws_create_ex(loom_ws **out, const loom_model *m, int B, int T, const loom_peft *pf);
/* A forward-only workspace (generation, evaluation, a forward-only client): one layer's activations,
 * reused through the layers, and no backward scratch; loom_backward* on it is refused. pf may be NULL. */
int loom_ws_create_infer(loom_ws **out, const loom_model *m, int B, int T, const loom_peft *pf);
/* Loss weight per batch row for the following forwards and backwards: the loss becomes
 * sum over valid targets of w[row] * loss / (number of valid targets), so all 1 is the plain mean (the
 * default, and what w = NULL restores). Per-position losses (loom_ws_losses) stay unweighted. A
 * forward must then run batches of exactly B rows. Weights must be finite and >= 0. */
int loom_ws_set_row_weights(loom_ws *ws, const float *w, int B);
/* LoRA dropout for the following forward/backward pairs: on in training, off (default) in evaluation;
 * the mask is a function of (seed, module, element), so give each step its own seed. */
void loom_ws_set_dropout(loom_ws *ws, int on, uint64_t seed);
/* Matmul precision of the following forwards and backwards (f32 is the default and the reference).
 * LOOM_PREC_BF16 is mixed precision: every matmul of the model (QKV, O, UP/gate, DOWN, the LM head;
 * forward, input and weight gradients) multiplies bf16 copies of its operands with float accumulation
 * and a float result; norms, attention, activations, softmax, loss and gradients stay float, and the
 * weights themselves (the master copy the optimizer updates) stay float. bf16 copies of the weights
 * live in the workspace: trained weights are converted once per forward (its backward reuses them), a
 * frozen float base once and then kept while the base pointer stays the same (a frozen base must not
 * change under a workspace: set the precision again to drop the copies), a base held in bf16
 * (loom_model_quantize) is used as it is; an int8 base keeps its float path. Activations are converted
 * as they enter a matmul (loom_f32_to_bf16_daz_n). LoRA's A/B products and adapters stay float.
 * bf16 needs AVX-512 BF16 (checked at run time): without it the workspace stays f32 and the call returns
 * LOOM_EUNSUPPORTED with a message saying so (the workspace remains usable). LOOM_EINVAL for an
 * unknown precision, LOOM_ENOMEM if the bf16 buffers cannot be had (the workspace stays f32). */
enum { LOOM_PREC_F32 = 0, LOOM_PREC_BF16 = 1 };
int loom_ws_set_precision(loom_ws *ws, int precision);
int loom_ws_precision(const loom_ws *ws);
/* "f32" / "bf16" <-> LOOM_PREC_*; loom_precision_parse returns -1 for anything else. */
const char *loom_precision_name(int precision);
int loom_precision_parse(const char *s);
/* Fused loss for the following forwards (off by default; the trainer turns it on around its
 * compute-gradient): a forward with targets on a training workspace computes the loss and its gradient
 * with respect to the logits in one pass (loom_crossentropy_fused_w: e^x once per logit), so
 * loom_ws_logits() then holds d loss / d logits instead of the logits, and the following backward starts
 * from it. Losses and gradients have the same bits as with it off. Leave it off wherever the logits are
 * read after a forward (evaluation, scoring, generation). */
void loom_ws_set_fused_loss(loom_ws *ws, int on);
/* After a forward with targets (fused loss off) the caller has overwritten loom_ws_logits() with its own
 * d loss / d logits (a distillation loss: include/loom/distill.h): the following backward starts from it
 * instead of the cross-entropy's gradient. LOOM_ESTATE without such a forward. */
int loom_ws_set_logits_grad(loom_ws *ws);
/* Soft-prompt positions at the start of each row of the last forward: logits and losses are then
 * [B, prompt_len + T] rows, the real tokens at rows b*(prompt_len+T) + prompt_len + t. */
int loom_ws_prompt_len(const loom_ws *ws);
int loom_forward_ex(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                    const int32_t *tokens, const int32_t *targets, int B, int T, float *loss);
/* gvec[dim] += d loss / d vec for the last forward_ex (same base, plan and vec). */
int loom_backward_ex(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                     float *gvec);

/* ---- a part of the model: layers l0 .. l1 - 1 (split learning, loom/split.h) ----
 * 0 <= l0 <= l1 <= L. A part given x_in [B * T', C] starts from it, the residual stream entering layer l0
 * (T' = T plus the plan's soft-prompt positions; tokens may then be NULL); without x_in, l0 must be 0 and
 * the part starts from the tokens' embeddings. A part with l1 = L given targets ends with the final norm, the head
 * and the loss, as loom_forward_ex; any other part ends with the residual stream leaving layer l1 - 1
 * (loom_ws_activation) and ignores targets. Parts 0..k and k..L run one after the other compute what
 * loom_forward_ex computes, in the same order (the same bits). The backward of the last forward part:
 * gvec += d loss / d vec for the values the part's layers read, starting from dx_out [B * T', C] (the
 * gradient of the output activations; NULL only after the head), and dx_in [B * T', C] (may be NULL; unused
 * for a part that started from the embeddings) receives the gradient of the input activations x_in. */
int loom_forward_part(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                      int l0, int l1, const int32_t *tokens, const float *x_in, const int32_t *targets, int B, int T,
                      float *loss);
int loom_backward_part(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                       float *gvec, const float *dx_out, float *dx_in);
/* A training workspace for the part l0 .. l1 - 1 only (0 <= l0 <= l1 <= L): its layers' activations, and the
 * final norm's and the logits' when head is set and l1 = L; a forward outside l0 .. l1, or through a head
 * it has no room for, is refused on it. */
int loom_ws_create_part(loom_ws **out, const loom_model *m, int B, int T, const loom_peft *pf, int l0, int l1,
                        int head);
/* The output activations of the last forward part (the residual stream after its last layer; after a whole
 * forward, the stream entering the final norm), *n (may be NULL) = their count; NULL before a forward and
 * after a backward. */
const float *loom_ws_activation(const loom_ws *ws, size_t *n);
/* The most activation floats a forward part on ws can have (its B x T' x C). */
size_t loom_ws_activation_cap(const loom_ws *ws);

/* Per-example gradients of the trainable vector (any set: LoRA, FULL, ...), one batch row at a time
 * (B forwards and backwards of batch 1; loom_backward_ex_rows below gets them from one batched pass):
 * g_b = d(row b's share of the batch loss)/d vec, where the batch loss is the mean over all B rows'
 * valid targets, so sum_b g_b is loom_backward_ex's gradient. norms[b] = ||g_b||_2. If gvec is not
 * NULL, gvec += sum_b s_b g_b with s_b = min(1, clip / norms[b]) when clip > 0, else 1 (the clipped
 * sum of DP-SGD). gscratch[dim] is caller scratch; *loss (may be NULL) gets the batch loss. Row weights
 * are ignored; LoRA dropout masks are those of row 0 for every row. The workspace keeps the last row's
 * forward (run the batch forward again before a loom_backward_ex of the batch). */
int loom_per_example_grads(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                           const int32_t *tokens, const int32_t *targets, int B, int T, float *norms, float clip,
                           float *gvec, float *gscratch, float *loss);

/* Per-example gradients in ONE batched backward of the last loom_forward_ex (same base, plan and vec):
 * grows[b * dim + i] += d(row b's share of the loss)/d vec[i] for each row b < B of that forward, with
 * dim = the plan's dimension, so sum_b grows[b] is loom_backward_ex's gradient (to rounding). The
 * input-gradient path (activations, attention, the frozen weights' products) runs batched as in
 * loom_backward_ex; only the trainable set's weight-gradient products are split by row (LoRA's A and B
 * per row, a trained tensor's outer products, norm and bias sums, embedding rows, prefix and prompt
 * rows), into grows[B * dim] (caller memory, zeroed by the caller). Row weights apply as in the forward,
 * so row b's share is w[b] * (its summed loss) / (the batch's valid targets). LoRA dropout masks are the
 * batch's own. The cost over loom_backward_ex is B * dim floats and B smaller products per trained
 * weight. */
int loom_backward_ex_rows(const loom_model *m, const float *base, loom_ws *ws, const loom_peft *pf, const float *vec,
                          float *grows);

/* KV-cached inference for generation, one sequence: the prompt in batched passes (matrix products over
 * its rows), then one token at a time (matrix-vector products). Positions are token positions,
 * 0-based; a call at position pos needs positions 0 .. pos - 1 in the cache already, and a call at 0
 * starts a new sequence.
 *
 *     loom_kv *kv;  loom_kv_create_ex(&kv, m, loom_tset_plan(ts), 256, 0);
 *     loom_prefill_ex(m, loom_model_params(m), kv, plan, vec, prompt, n, 0, logits);  // positions 0..n-1
 *     for (int pos = n; pos < 256; pos++) {
 *         int32_t next = loom_sample(logits, V, &s, &rng);
 *         loom_decode_step_ex(m, loom_model_params(m), kv, plan, vec, next, pos, logits);
 *     }
 *
 * Any trainable set decodes on the fly from the frozen base as it is held (a bf16/int8 base is never
 * expanded): trained copies (FULL, BitFit) from the vector, LoRA added after each base product, adapters
 * after attention and the MLP, prefix tuning's virtual tokens as the first prefix_len rows of every
 * layer's key/value cache (no position applied, as the training forward attends them; they hold positions
 * 0 .. prefix_len - 1, so token t sits at position prefix_len + t, as in PEFT), prompt tuning's
 * soft rows run as the first prompt_len model positions when a sequence starts (token t then sits at
 * model position prompt_len + t, as in loom_forward_ex). The logits equal loom_forward_ex's at the same
 * positions up to the order of sums. The vector must stay the same through a sequence. */
typedef struct loom_kv loom_kv;
int loom_kv_create(loom_kv **out, const loom_model *m, int max_len);
/* A cache for max_len token positions (1 .. the model's positions less a soft prompt) decoded with plan
 * pf (NULL: the model alone; the cache then serves only that plan). max_batch: rows per batched pass
 * (0: min(512, the positions)); a longer prompt runs in passes of that many rows. */
int loom_kv_create_ex(loom_kv **out, const loom_model *m, const loom_peft *pf, int max_len, int max_batch);
void loom_kv_free(loom_kv *kv);
/* Bytes the cache holds (keys, values and its scratch). */
size_t loom_kv_bytes(const loom_kv *kv);
/* Runs token at position pos (0-based; earlier positions must already be in the cache) and writes
 * logits[V]. */
int loom_decode_step(const loom_model *m, const float *params, loom_kv *kv, int32_t token, int pos, float *logits);
/* Runs tokens[n] at positions pos .. pos + n - 1 in batched passes, writes their keys and values into the
 * cache and the last position's logits[V] (logits may be NULL); decoding continues at pos + n. */
int loom_prefill(const loom_model *m, const float *params, loom_kv *kv, const int32_t *tokens, int n, int pos,
                 float *logits);
/* The same with the trainable set pf (the kv's plan) and its vector vec over the frozen base. */
int loom_prefill_ex(const loom_model *m, const float *base, loom_kv *kv, const loom_peft *pf, const float *vec,
                    const int32_t *tokens, int n, int pos, float *logits);
int loom_decode_step_ex(const loom_model *m, const float *base, loom_kv *kv, const loom_peft *pf, const float *vec,
                        int32_t token, int pos, float *logits);

#ifdef __cplusplus
}
#endif
#endif
