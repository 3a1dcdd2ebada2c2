/* Internal to the model/ layer, and to peft/, which builds the plans the forward pass follows and
 * implements their hooks. Cross-file private names carry the lm_ prefix (public ones loom_). */
#ifndef LOOM_MODEL_IMPL_H
#define LOOM_MODEL_IMPL_H
#include <stddef.h>
#include <stdint.h>

#include "loom/model.h"
#include "loom/quant.h"

/* The model: config, tensor table, the float buffer and an optional low-precision base. */
struct loom_model {
    loom_config cfg;
    loom_tensor *tensors;
    int n_tensors;
    int (*layer_slot)[LOOM_L_NSLOTS]; /* [L][slot] -> tensor index */
    int t_embed, t_pos, t_normf_w, t_normf_b, t_head; /* -1 if absent; t_head = t_embed when tied */
    size_t n_params;
    float *params; /* [n_params], owned */
    struct loom_qbase *qbase; /* frozen linear weights in low precision, or NULL (see loom_model_quantize) */
    loom_tvec *manifest;      /* the tensor table as a trainable-vector manifest (loom_model_manifest) */
};

/* Allocates the layout and an uninitialised parameter buffer. */
int lm_model_alloc(loom_model **out, const loom_config *cfg);

/* Matmul sites of a layer, where LoRA modules attach (their output columns are a slice of the site's
 * output): QKV (GPT-2 c_attn; Llama q|k|v), O (c_proj / o_proj), UP (GPT-2 c_fc; Llama gate|up), DOWN. */
enum { LOOM_SITE_QKV = 0, LOOM_SITE_O, LOOM_SITE_UP, LOOM_SITE_DOWN, LOOM_SITE_COUNT };

/* Positions in the forward order, for "lowest trainable point": layer l, stage s -> l * LOOM_STAGES + s.
 * Embeddings (and soft prompts) are -1; the final norm and head L * LOOM_STAGES. */
enum {
    LOOM_ST_NORM1 = 0, LOOM_ST_QKV, LOOM_ST_ATTN, LOOM_ST_O, LOOM_ST_ADAPT1, LOOM_ST_NORM2, LOOM_ST_UP, LOOM_ST_DOWN,
    LOOM_ST_ADAPT2, LOOM_STAGES
};

typedef struct {
    int layer, site;
    int col0;          /* first output column of the site this module adds to */
    int in, out;       /* A [r, in], B [out, r] */
    int tensor;        /* the base weight tensor it adapts (for merging) */
    size_t a_off, b_off; /* offsets of A and B in the trainable vector */
} loom_lora_mod;


/* What a method's hooks see of one pass: the plan, the trainable vector and its gradient (NULL in a
 * forward-only pass), the plan's workspace block (ws_floats floats for the workspace's capacity B x T,
 * N = B * T), the LoRA dropout setting and the first position of the call's rows (pos0). */
typedef struct {
    const loom_model *m;
    const loom_peft *pf;
    const float *vec;
    float *gvec;
    float *mem;
    int B, T;
    size_t N;
    int dropout_on;
    uint64_t dropout_seed;
    /* first batch position of this call's rows (0 for a batched call; b * T when the backward calls a
     * backward hook row by row for per-example gradients, with N = T rows starting at row b): where the
     * call's rows sit in mem, and their positions in the LoRA dropout masks */
    size_t pos0;
} lm_hook_ctx;

/* A trainable-set method as hooks the forward and backward passes call (src/peft/ implements them; a
 * NULL hook does nothing). x, dout, out are row-major with the given leading dimensions; N rows.
 *   site_fwd/site_bwd   at each matmul site (LOOM_SITE_*) of layer l, after the base matmul: out += the
 *                       method's term; backward accumulates its gradients and dinp (may be NULL) += its
 *                       input gradient.
 *   point_fwd/point_bwd at the adapter points after attention (a = 0) and after the MLP (a = 1), in
 *                       place on y[N, C]; backward returns the input gradient (NULL if need_input is 0).
 *   attn_fwd/attn_bwd   replace the attention of layer l (return 1) or leave it to the model (0).
 *   prompt              soft-token rows [prompt_len, C] at the start of every sequence (and their
 *                       gradient rows through *grad, NULL in a forward-only pass).
 * KV-cached decoding (model/decode.c) runs the forward hooks on N rows of one sequence (B = 1, T = N the
 * cache's rows per pass, no gradient, no dropout) and adds:
 *   dec_floats          hook memory for N rows while decoding (NULL: ws_floats(m, pf, 1, N))
 *   point_dec           the adapter points while decoding (NULL: point_fwd)
 *   kv_prefix           rows the method puts before the sequence in every layer's key/value cache, attended
 *                       like cached positions (prefix tuning's virtual tokens): returns their number and,
 *                       when k and v are not NULL, writes layer l's key and value rows (row stride ld). A
 *                       method whose attn_fwd has no kv_prefix cannot be decoded with a cache. */
typedef struct lm_peft_ops {
    size_t (*ws_floats)(const loom_model *m, const loom_peft *pf, int B, int T);
    void (*site_fwd)(const lm_hook_ctx *h, int l, int site, const float *x, int ldx, float *out, int ldo, int N);
    void (*site_bwd)(const lm_hook_ctx *h, int l, int site, const float *x, int ldx, const float *dout, int ldo,
                     float *dinp, int ldi, int N);
    void (*point_fwd)(const lm_hook_ctx *h, int l, int a, float *y, int N);
    const float *(*point_bwd)(const lm_hook_ctx *h, int l, int a, const float *dy, int N, int need_input);
    int (*attn_fwd)(const lm_hook_ctx *h, int l, float *out, const float *qkv, int ldqkv, int B, int T);
    int (*attn_bwd)(const lm_hook_ctx *h, int l, float *dqkv, const float *dout, const float *qkv, int ldqkv, int B,
                    int T);
    const float *(*prompt)(const lm_hook_ctx *h, float **grad);
    size_t (*dec_floats)(const loom_model *m, const loom_peft *pf, int N);
    void (*point_dec)(const lm_hook_ctx *h, int l, int a, float *y, int N);
    int (*kv_prefix)(const lm_hook_ctx *h, int l, float *k, float *v, int ld);
} lm_peft_ops;

/* What a trainable set changes in the model's computation. The trainable vector `vec` holds every
 * trained value; the frozen base supplies the rest. The model's passes read only tmap, prompt_len,
 * lowest and ops; the other fields belong to the methods' hooks. */
struct loom_peft {
    const lm_peft_ops *ops; /* the method's hooks (never NULL in a built plan) */
    size_t dim;             /* floats in the trainable vector */
    int n_tensors;
    long *tmap;            /* [n_tensors] offset of a trained copy of the model tensor in vec, or -1 (frozen) */
    /* LoRA: out[:, col0:col0+out] += scale * (dropout(x) A^T) B^T */
    int n_lora, lora_r;
    loom_lora_mod *lora;
    float lora_scale, lora_dropout;
    int lora_max_in;
    /* prefix tuning: prompt_embeddings [P, L*2*KV]; layer l keys at columns 2l*KV, values at (2l+1)*KV */
    int prefix_len;
    size_t prefix_off;
    /* prompt tuning: prompt_embeddings [P, C] prepended to every sequence */
    int prompt_len;
    size_t prompt_off;
    /* bottleneck adapters after attention (a=0) and MLP (a=1): down W [m, C], b [m]; up W [C, m], b [C]
     * consecutive from adapter_off[l][a] */
    int adapter_dim;
    size_t (*adapter_off)[2];
    int lowest;            /* lowest forward position with trainable parameters */
};

/* Frozen linear weights held in low precision (loom_model.qbase). */
struct loom_qbase {
    loom_qtype type;
    void *data;            /* every LINEAR_W tensor, in tensor order (so fused neighbours stay adjacent) */
    float *scale;          /* INT8: per output channel, in tensor order */
    size_t *qoff, *soff;   /* [n_tensors] element offsets into data / scale; (size_t)-1 if not held */
    size_t bytes;
};

/* The one way to reach a tensor's values: every reader (forward, backward, decode, save, merge, export)
 * goes through it, so a tensor held in low precision is never read from the released float pages.
 * type LOOM_Q_F32: the values are f[numel] (in the params buffer given); otherwise q, a matrix of C
 * inputs and OC outputs in the low-precision base (f is NULL). */
typedef struct {
    loom_qtype type;
    const float *f;
    loom_qmat q;
    int C, OC;
} lm_wref;
lm_wref lm_weight_ref(const loom_model *m, const float *params, int idx);
/* Layer l of a KV cache (tests): *k, *v = its [slots, KV] keys and values (after RoPE), model position p at
 * slot prefix rows + p; returns KV. */
int lm_kv_layer(const loom_kv *kv, int l, const float **k, const float **v);

/* Forward position of a model tensor (see LOOM_ST_*). */
int lm_tensor_stage(const loom_model *m, int idx);

/* sum_i a[i] b[i] in a fixed order (16 interleaved partial sums, then pairwise), so it vectorises
 * without fast-math and gives the same bits on any thread (decoding's attention and one-row LoRA). */
static inline float lm_dot16(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    for (int j = 0; i < n; i++, j++) acc[j] += a[i] * b[i];
    for (int h = 8; h > 0; h /= 2)
        for (int j = 0; j < h; j++) acc[j] += acc[j + h];
    return acc[0];
}

#endif
