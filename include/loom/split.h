/* Split learning (fl/ layer): SplitLoRA, split federated learning of a trainable set.
 *
 * The model is cut after layer k (0 <= k <= L). The client runs the embeddings and layers 0 .. k - 1 on
 * its own data and sends the activations at the cut, [B, T', C] floats (T' = T plus a soft prompt), with
 * the batch's targets (the server computes the loss); the server runs layers k .. L - 1, the final norm,
 * the head and the loss, and sends back the gradient of the loss with respect to those activations, which
 * the client backpropagates through its part. Tokens never leave the client. The model layer computes the
 * parts (loom_forward_part / loom_backward_part in loom/model.h) with the same bits as the whole model,
 * and the trainer runs a step that way with loom_train_config.split (loom/train.h).
 *
 * The federation (SplitLoRA, which builds on split federated learning, SFL): every round each sampled
 * client trains E local steps from the round's global trainable set; its client-side values (the set's
 * tensors in the embeddings and layers 0 .. k - 1) train on the client, its server-side values (layers
 * k .. L - 1, final norm, head) on a copy the server keeps for that client for the round. At the round's
 * end the client-side values are averaged FedAvg-style over the clients (the client uploads its part's
 * update) and the server-side copies the same way on the server (the averaging variant of SFL: the
 * server-side LoRA is one shared adapter, trained in parallel copies within a round and averaged). So a
 * round is FedAvg of the whole set computed split, and a split run gives the same global vector as the
 * unsplit one with the same seeds, bit for bit (loom sim --split-layer K).
 *
 * Which values belong to which side is loom_split_sides; what a step moves and what the client holds is
 * loom_split_cost_of. */
#ifndef LOOM_SPLIT_H
#define LOOM_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#include "loom/model.h"
#include "loom/peft.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_SPLIT_CLIENT = 1, LOOM_SPLIT_SERVER = 2 };

/* side[loom_tset_dim(ts)]: LOOM_SPLIT_CLIENT for the values of tensors the client part runs (the
 * embeddings, a soft prompt, layers 0 .. k - 1), LOOM_SPLIT_SERVER for the others. Refused (LOOM_EINVAL,
 * naming the tensor): k outside 0..L; a trained tensor both parts use (a tied embedding and head in a FULL
 * set); a tensor that spans the cut (prefix tuning's keys and values of every layer). side may be NULL
 * (the check only). */
int loom_split_sides(const loom_tset *ts, int k, uint8_t *side);

/* What one client moves and holds in split learning with batches of B x T, against a client that runs
 * the whole model (plain federated training of the same set). Bytes. */
typedef struct {
    int k;
    size_t act_floats;          /* activations at the cut per step: B x T' x C */
    size_t up_step, down_step;  /* per step: activations + targets (int32) up, their gradient down */
    size_t client_dim, server_dim; /* trainable values on each side */
    size_t client_weights, model_weights; /* frozen base weights the client part / the whole model reads */
    size_t client_ws, model_ws;           /* activation workspaces (loom_ws_create_part / loom_ws_create_ex) */
    size_t client_state, model_state;     /* trained values, gradient and AdamW's two moments: 16 bytes a value */
} loom_split_cost;
/* Fills c for set ts on its model cut after layer k (creates and frees the two workspaces to measure them).
 * Base weights count 4 bytes a value in float, 2 in bf16, 1 in int8 (its per-channel scales left out). */
int loom_split_cost_of(const loom_tset *ts, int k, int B, int T, loom_split_cost *c);

#ifdef __cplusplus
}
#endif
#endif
