/* loom sim --decentralized: the decentralized federation's run, progress lines and summary. */
#ifndef LOOM_CLI_SIM_DECENTRAL_H
#define LOOM_CLI_SIM_DECENTRAL_H

#include "cli/runspec.h"
#include "loom/sim.h"

/* Runs sc (as cmd_sim built it) over r's --topology, --gossip-steps and --push-sum, printing a line per
 * round and a summary; writes OUT/consensus.svg and OUT/accuracy.svg with --out. global (sc->dim)
 * receives the peers' average model. 0, or -1 after printing the error (prefix "loom sim: "). */
int cli_sim_decentral(const cli_run *r, loom_sim_config *sc, float *global);

#endif
