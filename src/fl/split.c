/* Split learning: which side holds each trained value, and what a split client moves and holds
 * (include/loom/split.h). The split step itself is the trainer's (loom_train_config.split). */
#include "loom/split.h"

#include <string.h>

#include "loom/core.h"

/* The side a model tensor runs on: the embeddings and layers below the cut on the client. */
static int tensor_side(const loom_model *m, int idx, int k) {
    const loom_tensor *t = loom_model_tensor(m, idx);
    if (t->layer >= 0) return t->layer < k ? LOOM_SPLIT_CLIENT : LOOM_SPLIT_SERVER;
    return t->kind == LOOM_T_EMBED || t->kind == LOOM_T_POS ? LOOM_SPLIT_CLIENT : LOOM_SPLIT_SERVER;
}

int loom_split_sides(const loom_tset *ts, int k, uint8_t *side) {
    const loom_model *m = loom_tset_model(ts);
    const loom_config *c = loom_model_config(m);
    if (k < 0 || k > c->n_layer)
        return loom_error(LOOM_EINVAL, "split layer %d is outside 0..%d (the model's layers)", k, c->n_layer);
    const loom_peft_method method = loom_tset_config(ts)->method;
    for (int i = 0; i < loom_tset_count(ts); i++) {
        const loom_tset_entry *e = loom_tset_entry_at(ts, i);
        int s;
        if (e->layer >= 0) {
            s = e->layer < k ? LOOM_SPLIT_CLIENT : LOOM_SPLIT_SERVER;
        } else if (e->tensor >= 0) {
            s = tensor_side(m, e->tensor, k);
            if (c->tied && loom_model_tensor(m, e->tensor)->kind == LOOM_T_EMBED)
                return loom_error(LOOM_EINVAL, "%s is the tied embedding and head: the client part and the server part "
                                  "both train it, which split learning cannot (train a set without it, or untie the head)",
                                  e->name);
        } else if (method == LOOM_PEFT_PROMPT) {
            s = LOOM_SPLIT_CLIENT; /* soft-prompt rows enter with the embeddings */
        } else {
            return loom_error(LOOM_EINVAL, "%s holds values of every layer: a %s set cannot be split between the client "
                              "and the server", e->name, loom_peft_method_name(method));
        }
        if (side) memset(side + e->offset, s, e->numel);
    }
    return LOOM_OK;
}

static size_t weight_bytes(const loom_tensor *t) {
    return t->numel * (t->dtype == LOOM_Q_F32 ? 4 : t->dtype == LOOM_Q_BF16 ? 2 : 1);
}

int loom_split_cost_of(const loom_tset *ts, int k, int B, int T, loom_split_cost *c) {
    memset(c, 0, sizeof *c);
    const loom_model *m = loom_tset_model(ts);
    const loom_config *cfg = loom_model_config(m);
    size_t dim = loom_tset_dim(ts);
    uint8_t *side = loom_alloc(dim ? dim : 1);
    if (!side) return loom_error(LOOM_ENOMEM, "out of memory");
    int rc = loom_split_sides(ts, k, side);
    for (size_t i = 0; rc == LOOM_OK && i < dim; i++) c->client_dim += side[i] == LOOM_SPLIT_CLIENT;
    loom_free(side);
    if (rc != LOOM_OK) return rc;
    c->k = k;
    c->server_dim = dim - c->client_dim;
    int P = loom_tset_config(ts)->method == LOOM_PEFT_PROMPT ? loom_tset_config(ts)->prompt_len : 0;
    c->act_floats = (size_t)B * (size_t)(T + P) * (size_t)cfg->dim;
    c->up_step = c->act_floats * sizeof(float) + (size_t)B * T * sizeof(int32_t);
    c->down_step = c->act_floats * sizeof(float);
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const loom_tensor *t = loom_model_tensor(m, i);
        size_t b = weight_bytes(t);
        c->model_weights += b;
        if (tensor_side(m, i, k) == LOOM_SPLIT_CLIENT) c->client_weights += b;
    }
    c->client_state = 16 * c->client_dim;
    c->model_state = 16 * dim;
    loom_ws *ws = NULL;
    if ((rc = loom_ws_create_part(&ws, m, B, T, loom_tset_plan(ts), 0, k, 0)) != LOOM_OK) return rc;
    c->client_ws = loom_ws_bytes(ws);
    loom_ws_free(ws);
    if ((rc = loom_ws_create_ex(&ws, m, B, T, loom_tset_plan(ts))) != LOOM_OK) return rc;
    c->model_ws = loom_ws_bytes(ws);
    loom_ws_free(ws);
    return LOOM_OK;
}
