/* Internal to the model/ layer, and to peft/, which builds the plans the forward pass follows. */
#ifndef LOOM_MODEL_IMPL_H
#define LOOM_MODEL_IMPL_H
#include <stddef.h>
#include <stdint.h>

#include "loom/model.h"
#include "loom/quant.h"

/* Allocates the layout and an uninitialised parameter buffer. */
int loom_model_alloc(loom_model **out, const loom_config *cfg);

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

/* What a trainable set changes in the model's computation. The trainable vector `vec` holds every
 * trained value; the frozen base supplies the rest. */
struct loom_peft {
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

/* Forward position of a model tensor (see LOOM_ST_*). */
int loom_tensor_stage(const loom_model *m, int idx);

#endif
