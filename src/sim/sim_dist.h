/* The simulator's side of a run spread over several processes (sim_dist.c, loom_sim_config.dist),
 * private to sim/. */
#ifndef LOOM_SIM_DIST_H
#define LOOM_SIM_DIST_H

#include "loom/engine.h"
#include "loom/sim.h"

/* 1 when c runs over several processes (dist.ranks >= 1 with a sum). */
int lm_dist_on(const loom_sim_config *c);
/* The clients of list[0..n) this process runs (client mod ranks == rank), in order, into mine;
 * returns their number. */
int lm_dist_mine(const loom_sim_config *c, const int *list, int n, int *mine);
/* Sums the engines' shares of the open round (after the fit phase) or of the closed one (after the
 * evaluation) over the processes and imports the sum. Every process must call it at the same point. */
int lm_dist_exchange(const loom_sim_config *c, loom_engine *e);

#endif
