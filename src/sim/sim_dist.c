/* A simulation spread over several processes: each runs its own clients and the engines' shares are
 * summed between the phases (see loom_sim_config.dist in include/loom/sim.h). The transport is the
 * caller's sum (MPI in loom sim --mpi); this file never knows it. */
#include "sim/sim_dist.h"

#include <stdlib.h>

#include "loom/core.h"
#include "loom/zo.h"

int lm_dist_on(const loom_sim_config *c) { return c->dist.ranks > 0; }

int loom_sim_dist_check(const loom_sim_config *c) {
    if (!lm_dist_on(c)) return LOOM_OK;
    if (!c->dist.sum || c->dist.rank < 0 || c->dist.rank >= c->dist.ranks)
        return loom_error(LOOM_EINVAL, "distributed run: rank %d of %d processes, %s", c->dist.rank, c->dist.ranks,
                          c->dist.sum ? "out of range" : "without a sum");
    const char *what = NULL;
    if (c->mode != LOOM_ENGINE_SYNC) what = c->mode == LOOM_ENGINE_FEDASYNC ? "--mode fedasync" : "--mode fedbuff";
    else if (c->secure.sum) what = "a secure sum (--secagg, --he)";
    else if (c->aggregator) what = "--aggregator (a robust rule keeps every update)";
    else if (c->hetero) what = "heterogeneous clients (--client-ranks, --fedra-layers, --lora-freeze-a, --hetlora-prune)";
    else if (c->stack) what = "--hetlora-agg stack";
    else if (c->attack.kind != LOOM_ATTACK_NONE) what = "--attack";
    else if (c->kseed || c->algo == &loom_client_fedkseed) what = "--client-algo fedkseed";
    else if (c->checkpoint_every > 0) what = "--checkpoint-every (the clients' state is spread over the processes)";
    else if (c->resume) what = "--resume";
    if (what) return loom_error(LOOM_EUNSUPPORTED, "--mpi cannot distribute %s", what);
    return LOOM_OK;
}

int lm_dist_mine(const loom_sim_config *c, const int *list, int n, int *mine) {
    int k = 0;
    for (int i = 0; i < n; i++)
        if (list[i] % c->dist.ranks == c->dist.rank) mine[k++] = list[i];
    return k;
}

int lm_dist_exchange(const loom_sim_config *c, loom_engine *e) {
    size_t n = loom_engine_share_len(e);
    int64_t *w = malloc((n ? n : 1) * sizeof *w);
    if (!w) return loom_error(LOOM_ENOMEM, "out of memory for a share of %zu words", n);
    int rc = loom_engine_share_export(e, w);
    if (rc == LOOM_OK && (rc = c->dist.sum(c->dist.ud, w, n)) != LOOM_OK)
        rc = loom_error_context(rc, "summing the round over %d processes", c->dist.ranks);
    if (rc == LOOM_OK) rc = loom_engine_share_import(e, w);
    free(w);
    return rc;
}
