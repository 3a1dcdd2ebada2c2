/* The simulator's side of the Byzantine attacks (sim_attack.c), private to sim/: which clients attack,
 * and the holding area of the omniscient attacks (ALIE, IPM), whose updates are made once the round's
 * honest updates are in. */
#ifndef LOOM_SIM_ATTACK_H
#define LOOM_SIM_ATTACK_H

#include "loom/engine.h"
#include "loom/sim.h"
#include "sim/sim_secure.h"

/* The attackers' choice: hash2 of this with nothing, under the run's seed (streams.h's fl/ family). */
#define LOOM_STREAM_ATTACKERS UINT64_C(0x6174746b)    /* "attk": the attacking clients, one shuffle */
#define LOOM_STREAM_ATTACK_NOISE UINT64_C(0x61746e7a) /* "atnz": Gaussian attack, hash2(hash2(id, round), client) */
#define LOOM_STREAM_BACKDOOR UINT64_C(0x6174626b)     /* "atbk": an attacker's poisoned examples, hash2(id, client) */

typedef struct lm_attack lm_attack;

/* Label flipping: a copy of ds (classification data with two or more labels, else LOOM_EINVAL) whose
 * examples have label l replaced by n_labels - 1 - l: the label index and the verbalizer tokens after
 * the prompt (examples without a label stay as they are). */
typedef struct {
    loom_dataset *ds;
    int32_t *ids;  /* the flipped examples' tokens */
    uint8_t *mask;
} lm_flip;
int lm_flip_create(lm_flip **out, const loom_dataset *ds);
void lm_flip_free(lm_flip *fl);
/* The trigger of a backdoor at the token level (see include/loom/sim.h): head = encode("Text:"), the
 * prompt's start; trig = encode("Text: " + trigger) past head. */
typedef struct {
    int32_t *head, *trig;
    size_t n_head, n_trig;
    int32_t bos; /* the tokenizer's BOS (-1: none), which may open an example before head */
} lm_trigger;
/* trigger NULL: "cf". LOOM_EINVAL for an empty or too long phrase, LOOM_EFORMAT when the tokenizer does
 * not encode "Text: " + trigger as head followed by more tokens; messages name --backdoor-trigger. */
int lm_trigger_init(lm_trigger *t, const loom_tokenizer *tok, const char *trigger);
void lm_trigger_clear(lm_trigger *t);
/* Where the trigger goes in e: right after its BOS (when it starts with one) and head; LOOM_EFORMAT when
 * its prompt does not start so. */
int lm_trigger_at(const lm_trigger *t, const loom_example *e, size_t *at);
/* A copy of examples idx[0..n) of ds (classification data, in that order: copy example i is
 * ds->ex[idx[i]]) in which every example i with pick[i] set (pick NULL: every one) gets the trigger's
 * tokens inserted at lm_trigger_at and the label `target` (its verbalizer); the others are kept as they
 * are. Out-of-range labels and prompts that do not start with head are refused (LOOM_EFORMAT, naming the
 * example's line). */
int lm_trigger_copy(lm_flip **out, const loom_dataset *ds, const uint32_t *idx, size_t n, const unsigned char *pick,
                    const lm_trigger *t, int target);
/* The poisoned examples of a backdoor attacker `client` among its n training examples: pick[i] = 1 for
 * round(frac * n) of them (halves up) drawn uniformly by (seed, hash2(LOOM_STREAM_BACKDOOR, client)), 0
 * elsewhere. */
int lm_backdoor_pick(uint64_t seed, int client, size_t n, double frac, unsigned char *pick);

/* The data `client` trains on (d: its own, rewritten in place): a labelflip attacker's flipped copy; a
 * backdoor or embedding attacker's poisoned copy of its training examples (d->train then indexes that
 * copy, in the same order, so its batches are those of the clean data); else d is left as it is. */
void lm_attack_data(const lm_attack *a, int client, loom_client_data *d);
/* Backdoor and embedding runs: the attack success of global on d's test examples (those whose label is
 * not the target, with the trigger), through algo's evaluation: res->attack_hits (classified as the
 * target) and res->attack_count. Other runs (a NULL): LOOM_OK, res untouched. */
int lm_attack_eval(const lm_attack *a, const loom_client_algo *algo, const loom_client_ctx *ctx,
                   const loom_client_data *d, const float *global, loom_eval_result *res);
/* Embedding poisoning: the update's values outside the trigger's embedding rows set to 0 (the rows as
 * lm_attack_create found them in the manifest). */
void lm_attack_embedding_mask(const lm_attack *a, float *values, size_t len);

/* The run's attackers and holding area; checks the configuration against the run (synchronous rounds,
 * attackers within the clients, ALIE's f below half of a round; a backdoor's tokenizer, classification
 * data, target, fraction and trigger; embedding poisoning's token embedding in c->manifest) and makes
 * the poisoned copies. *out NULL when c has no attack. */
int lm_attack_create(lm_attack **out, const loom_sim_config *c, int n_clients);
void lm_attack_free(lm_attack *a);
int lm_attack_is(const lm_attack *a, int client);
/* The round's sampled clients (list, increasing), before its fit phase. */
int lm_attack_open(lm_attack *a, int round, const int *list, int n);
/* A worker's finished update of `client` (any thread, one call per client): an honest client's update is
 * kept for the omniscient attacks (when it has no injected fault); an attacker's update is replaced in
 * place (returns 1: send it) or held (returns 0: lm_attack_finish sends it). */
int lm_attack_update(lm_attack *a, loom_update *u, float *values, double now, int faulted);
/* After the fit phase: the held attackers' updates, made from the honest ones, into the engine (or the
 * secure-sum backend), in client order. */
int lm_attack_finish(lm_attack *a, loom_engine *e, lm_secure_round *secure);

#endif
