/* Personalized clients (fl/ layer): a shared part that federates and a private part that never leaves.
 *
 * FedPer (Arivazhagan et al. 2019) and pFedLoRA-style personalization split the trainable set by name:
 * the entries matching --private PATTERN[,PATTERN] get LOOM_ROLE_PRIVATE in the vector's manifest
 * (include/loom/tvec.h), every other entry stays SHARED. E.g. with LoRA on c_attn and mlp.c_fc,
 * "--private mlp.c_fc" keeps the MLP adapter local (a second, local adapter beside the global one);
 * "--private h.3." keeps the last layer's adapters of a 4-layer model local. A pattern with '*' or '?'
 * is a glob over the whole name (fnmatch); one without is a substring of the name ("h.3." matches
 * "base_model.model.transformer.h.3.attn.c_attn.lora_A.weight"). Every pattern must match an entry.
 *
 * What each side does (the same code in loom sim and loom client: loom_client_run_fit):
 *   client  holds its private values in its state (loom_client_state.priv, n_private floats in manifest
 *           offset order), initialised from the run's initial vector (loom_personal_set_init; without
 *           one, from the first global vector it receives). Each round it trains from the global shared
 *           values and its own private ones, keeps the trained private values, and its update carries 0
 *           there; on the wire it sends only the values its server-side mask marks TRAIN (below: the
 *           shared ones, n_shared floats without other masks, so bytes up shrink by 4 n_private), and
 *           compression runs over those.
 *   server  recomputes each client's mask with the private values FROZEN (loom_personal_mask): the
 *           pipeline leaves them out of the mean (include/loom/pipeline.h, masked updates), so the
 *           global vector's private values stay at their initial values (central DP's noise aside:
 *           it is added to every value of the mean) and the strategy moves only the shared part.
 * With no private entry, no mask is installed and a run is plain FedAvg bit for bit. Combined with
 * heterogeneous clients (include/loom/hetero.h) the client's own mask applies to both parts and the
 * server's mask is the client's with the private values FROZEN.
 *
 * Evaluation after the last round (loom_sim_config.client_eval): every client with test data scores
 * the global model (its private values the initial ones) and its personalized model: the global shared
 * values with its own private values, after --finetune-steps N local steps from there (plain local
 * training, nothing leaves the client; 0 = none). Rows in metrics.jsonl:
 *   {"type":"client_eval","client":k,"name":..,"examples":n_test,"global_loss":..,"global_acc":..,
 *    "personal_loss":..,"personal_acc":..}   (personal_* only with a private part or fine-tuning)
 *   {"type":"personal","clients":n,"finetune_steps":N,"private_values":..,"shared_values":..,
 *    "global_acc_mean":..,"global_acc_min":..,"global_loss_mean":..,"personal_acc_mean":..,
 *    "personal_acc_min":..,"personal_loss_mean":..}
 * Accuracy is correct / count of the client's test set (loom_eval_result), loss its loss_sum / tokens.
 *
 *     loom_tvec *man;  loom_personal_manifest(&man, loom_tset_manifest(ts), "mlp.c_fc", &n);
 *     loom_personal *p; loom_personal_create(&p, man, hetero_or_NULL);
 *     sc.manifest = man; sc.personal = p; sc.fit.personal = p; sc.client_eval = 1;
 */
#ifndef LOOM_PERSONAL_H
#define LOOM_PERSONAL_H

#include <stddef.h>
#include <stdint.h>

#include "loom/tvec.h"
#include "loom/update.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_PRIVATE_SPEC_MAX 4096 /* bytes of a --private value */
#define LOOM_FINETUNE_MAX 1000000  /* --finetune-steps */

struct loom_hetero;
typedef struct loom_personal loom_personal;

/* A copy of src (names, shapes, offsets) with the entries matching patterns marked PRIVATE (the others
 * keep their roles). *n_marked (may be NULL) = entries marked. Errors (LOOM_EINVAL, naming --private):
 * an empty or too long spec, an empty pattern, a pattern that matches no entry. */
int loom_personal_manifest(loom_tvec **out, const loom_tvec *src, const char *patterns, int *n_marked);
/* The plan of manifest's PRIVATE entries (the manifest may be freed afterwards). h (may be NULL) is
 * the heterogeneous clients' masks the server's mask starts from; it must outlive p. */
int loom_personal_create(loom_personal **out, const loom_tvec *manifest, const struct loom_hetero *h);
void loom_personal_free(loom_personal *p); /* accepts NULL */
/* The run's initial vector (dim floats; copied): a client's private values start from its private
 * values instead of the first global vector it receives (which central DP's noise may have moved). */
int loom_personal_set_init(loom_personal *p, const float *init);
/* Initial private values (n_private floats) into priv: those of set_init, else global's. */
void loom_personal_init_priv(const loom_personal *p, const float *global, float *priv);
size_t loom_personal_dim(const loom_personal *p);       /* the whole vector */
size_t loom_personal_n_private(const loom_personal *p); /* values that stay on the client */
size_t loom_personal_n_shared(const loom_personal *p);  /* values that travel */
/* 1 when nothing is private (then no mask is needed and everything is plain FedAvg). */
int loom_personal_trivial(const loom_personal *p);
/* shared[n_shared] = full's shared values in offset order; unpack scatters them back into full[dim]
 * and writes 0 at the private values. */
void loom_personal_pack(const loom_personal *p, const float *full, float *shared);
void loom_personal_unpack(const loom_personal *p, const float *shared, float *full);
/* priv[n_private] = full's private values (get); full's private values = priv (put); zero: 0 there. */
void loom_personal_get(const loom_personal *p, const float *full, float *priv);
void loom_personal_put(const loom_personal *p, const float *priv, float *full);
void loom_personal_zero(const loom_personal *p, float *full);
/* The server's mask of client in round: the heterogeneous one (all TRAIN without) with every private
 * value FROZEN. loom_personal_mask_cb is it as the engine's callback (ud = the loom_personal). */
int loom_personal_mask(const loom_personal *p, int client, int round, uint8_t *mask);
int loom_personal_mask_cb(void *ud, int client, int round, uint8_t *mask);
/* Bytes of u's upload when only the shared values travel: loom_update_encoded_size of u with len
 * n_shared (o NULL: F32). */
size_t loom_personal_wire_bytes(const loom_personal *p, const loom_update *u, const loom_codec_opts *o);

/* ---- masked updates on the wire (heterogeneous and personalized clients) ----
 * A client sends only the values its server-side mask marks TRAIN: its TRAIN values (include/loom/
 * hetero.h: a HetLoRA rank-r_k truncation sends r_k of r_max rank slots, FedRA only its layers, FFA-LoRA
 * only the B's) less its private ones. The upload is an ordinary update message whose dim is that count
 * (docs/protocol.md); the round engine recomputes the client's mask from (client, round), checks that
 * the count matches and scatters the values back (0 elsewhere), so nothing extra travels. The client
 * compresses those values only (top-k keeps a share of what it sends). */
size_t loom_mask_sent(const uint8_t *mask, size_t dim); /* values marked LOOM_MASK_TRAIN */
void loom_mask_pack(const uint8_t *mask, size_t dim, const float *full, float *packed);
void loom_mask_unpack(const uint8_t *mask, size_t dim, const float *packed, float *full); /* 0 elsewhere */
/* The server's mask as the client computes it: client_mask (NULL: all TRAIN) with the private values of
 * p (NULL: none) FROZEN, into out (dim bytes; may be client_mask itself). */
void loom_personal_send_mask(const loom_personal *p, const uint8_t *client_mask, size_t dim, uint8_t *out);

/* The per-client evaluation after the last round (see above): one per client. */
typedef struct loom_personal_eval_s {
    int evaluated;            /* 0: the client has no test data */
    int personalized;         /* personal fields filled */
    loom_eval_result global;  /* the global model */
    loom_eval_result personal;/* global shared + own private, after fine-tuning */
} loom_personal_eval;

typedef struct {
    int clients; /* evaluated */
    double global_acc_mean, global_acc_min, global_loss_mean;
    double personal_acc_mean, personal_acc_min, personal_loss_mean; /* NAN when not personalized */
} loom_personal_summary;

/* Mean and worst client over the evaluated entries of ev[n]. */
void loom_personal_summarize(const loom_personal_eval *ev, int n, loom_personal_summary *s);

#ifdef __cplusplus
}
#endif
#endif
