/* The simulator's side of a secure-sum backend (sim_secure.c), private to sim/. */
#ifndef LOOM_SIM_SECURE_H
#define LOOM_SIM_SECURE_H

#include "loom/engine.h"
#include "loom/sim.h"

typedef struct lm_secure_round lm_secure_round;

/* The round's holding area for up to n_clients updates of dim floats. */
int lm_secure_create(lm_secure_round **out, const loom_sim_config *c, int n_clients);
void lm_secure_free(lm_secure_round *s);
/* A worker's finished update: checked by the engine (a refusal is recorded as by loom_engine_submit),
 * clipped to clip_norm, and held. Any thread. */
void lm_secure_hold(lm_secure_round *s, loom_engine *e, const loom_update *u, double now);
/* After the round's fit phase: the backend's sum of the held updates into the engine. An error of the
 * backend refuses the held updates (the run goes on); only an engine error is returned. */
int lm_secure_finish(lm_secure_round *s, loom_engine *e, int round);

#endif
