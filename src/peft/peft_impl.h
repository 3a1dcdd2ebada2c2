/* Internal to the peft/ layer. */
#ifndef LOOM_PEFT_IMPL_H
#define LOOM_PEFT_IMPL_H

#include "loom/peft.h"
#include "loom/tvec.h"
#include "model/model_impl.h"

struct loom_tset {
    const loom_model *m;   /* layout (and, for FULL/BITFIT/PROMPT init, the values) */
    loom_peft_config cfg;
    loom_peft plan;        /* what the forward pass does with the vector */
    loom_tset_entry *e;    /* manifest, in vector order */
    int n, cap;
    size_t dim;
    float *data;           /* [dim], the set's own vector */
    loom_tvec *manifest;   /* the same entries as a trainable-vector manifest (built with the set) */
};

int lm_tset_alloc_data(loom_tset *ts);

/* The methods' hooks (peft_hooks.c). */
extern const lm_peft_ops lm_lora_ops, lm_adapter_ops, lm_prefix_ops, lm_prompt_ops, lm_copy_ops;

#endif
