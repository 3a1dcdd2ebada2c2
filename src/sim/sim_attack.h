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
/* The dataset client trains on: its flipped copy for a labelflip attacker, else ds. */
const loom_dataset *lm_attack_data(const lm_attack *a, int client, const loom_dataset *ds);

/* The run's attackers and holding area; checks the configuration against the run (synchronous rounds,
 * attackers within the clients, ALIE's f below half of a round). *out NULL when c has no attack. */
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
