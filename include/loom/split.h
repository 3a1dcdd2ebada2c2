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
#include "loom/train.h"

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

/* ---- across processes (loom server / loom client; docs/protocol.md, "Split learning") ----
 * A step's request, client to server (POST /v1/split), little-endian: a 32-byte header "LMSP", version 1,
 * round, step (0-based within the round), B, T, T' (T plus soft-prompt positions), C (int32 each), then
 * the activations f32 [B x T' x C] and the targets int32 [B x T]. The answer: a 16-byte header "LMSG",
 * round, step (int32), loss (f32), then the activations' gradient f32 [B x T' x C]. At the end of its
 * local steps the client asks for the server part of its update (GET /v1/split?round=R): a 16-byte
 * header "LMSU", round, steps, dim (int32), then f32 [dim], the server-side values' change over the round
 * (0 at the client's values); the client puts it into its update before uploading it, so the upload is
 * the whole set's update as in loom sim. */
#define LOOM_SPLIT_HDR 32
#define LOOM_SPLIT_REPLY_HDR 16
/* Bytes of a step's request for batches of B x T x C with P soft-prompt positions. */
size_t loom_split_request_bytes(int B, int T, int P, int C);
/* Encodes a request (malloc'd into *out, *len). */
int loom_split_encode_request(int round, long step, int B, int T, int Tp, int C, const float *act,
                              const int32_t *targets, uint8_t **out, size_t *len);

/* The server side: one trainer per client (the run's training configuration tc, split set), holding that
 * client's copy of the set for the round: step 0 of a round starts it from the round's global vector with
 * fresh optimizer state, and each step must follow the last (a repeat of the last step is answered again
 * without training: a retried request). Safe across threads for different clients; n_clients is a hint
 * (a client's copy is made when it first asks). */
typedef struct loom_split_server loom_split_server;
int loom_split_server_create(loom_split_server **out, const loom_model *m, const loom_tset *ts,
                             const loom_train_config *tc, int n_clients);
void loom_split_server_free(loom_split_server *s);
/* Largest request body it takes. */
size_t loom_split_server_max_request(const loom_split_server *s);
/* One step's request of client k in round (global: the round's global vector, read at step 0): the answer
 * in *reply (malloc'd, *rlen bytes). Errors: LOOM_EINVAL / LOOM_EFORMAT (a malformed request; *status 400),
 * LOOM_ESTATE (a step out of order; 409), or the training's (500). */
int loom_split_server_step(loom_split_server *s, int k, int round, const float *global, const void *body, size_t len,
                           void **reply, size_t *rlen, int *status);
/* Client k's server-side update of round (the answer of GET /v1/split). LOOM_ESTATE (409) when client k has
 * no steps in that round. */
int loom_split_server_update(loom_split_server *s, int k, int round, void **reply, size_t *rlen, int *status);
/* The client's side of the answers: a step's (the gradient into dact[n], *loss) and the update's (dim
 * floats into upd at the server's values; the client's values are left). LOOM_EFORMAT naming what is wrong. */
int loom_split_decode_reply(const void *body, size_t len, int round, long step, float *dact, size_t n, float *loss);
int loom_split_decode_update(const void *body, size_t len, int round, const uint8_t *side, float *upd, size_t dim);

#ifdef __cplusplus
}
#endif
#endif
