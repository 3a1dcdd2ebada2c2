/* Decentralized federated simulation (sim/ layer): peers on a topology, no server.
 *
 * Every client of the simulator's configuration (include/loom/sim.h) is a peer with its own model x_i
 * (all start from init). A round: every peer trains locally from its own model with the clients'
 * algorithm (loom_client_run_fit: the same code, data order and seeds as a simulated client with the
 * same index), x_i <- x_i + update_i; then `gossip_steps` synchronous gossip steps over the topology
 * (include/loom/gossip.h): Metropolis-Hastings mixing x_i <- sum_j W_ij x_j on an undirected graph, or
 * push-sum on a directed one (each peer's (s_i, w_i) pair in double precision, its model the ratio
 * s_i / w_i, from which it trains; s_i <- w_i (x_i + update_i) after local training). Peers run on
 * `workers` threads, each peer's training on client_threads threads; every peer's computation depends
 * only on its own inputs and the gossip sums run in a fixed order, so a run is bitwise identical for
 * any number of workers.
 *
 * Properties (tests/test_decentral.c): on the full graph with one gossip step, W = (1/n) 1 1^T, so after
 * each round every peer holds x + (1/n) sum_i update_i: FedAvg with equal client weights and server
 * learning rate 1 (to float rounding); learning rate 0 leaves every peer's model bit for bit.
 *
 * Metrics per round: the consensus distance (1/n) sum_i ||x_i - xbar||^2 after local training and after
 * gossip, the peers' mean training loss, and, when the round evaluates (eval_every as in loom sim), the
 * average model xbar's loss and accuracy pooled over every peer's test data and each peer's own model on
 * its own test data (their mean, minimum and maximum accuracy); every peer is evaluated (eval_clients is
 * not used). Outputs in out_dir: metrics.jsonl (one
 * "round" row per round, then one "peer" row per peer), global.safetensors (the average model) and
 * peers/<i>.safetensors (each peer's final model).
 *
 * What a decentralized run does not take (LOOM_EINVAL naming the flag): client sampling, asynchronous
 * modes, server-side settings (strategies other than fedavg and fedprox, robust aggregators, central DP,
 * secure sums, update bounds and clipping, compression), SCAFFOLD, attacks, faults, heterogeneous masks,
 * FedKSeed and resume. */
#ifndef LOOM_DECENTRAL_H
#define LOOM_DECENTRAL_H

#include "loom/gossip.h"
#include "loom/sim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int round;
    int n;                      /* peers */
    double consensus_trained;   /* consensus distance after local training, before gossip */
    double consensus;           /* after gossip */
    double train_loss;          /* mean over the peers that trained */
    int failed;                 /* peers whose local training failed (their model stays) */
    int evaluated;              /* 1 when this round evaluated */
    double avg_loss, avg_acc;   /* the average model over all peers' test data (token / example weighted) */
    double peer_loss, peer_acc; /* each peer's own model on its own test data, pooled the same way */
    double peer_acc_mean, peer_acc_min, peer_acc_max; /* over the peers with test data */
    const double *peer_accs;    /* (n) each peer's accuracy (NAN without test data); NULL when not evaluated */
    double seconds;
} loom_decentral_metrics;

typedef void (*loom_decentral_cb)(const loom_decentral_metrics *m, void *ud);

typedef struct {
    const loom_topology *topo;  /* peers = its n = the partition's clients */
    int gossip_steps;           /* S >= 0 gossip steps after each round's training (0: local training only) */
    int push_sum;               /* 1: push-sum (required for a directed topology); 0: Metropolis-Hastings */
    loom_decentral_cb on_round;
    void *ud;
} loom_decentral_config;

/* Runs the rounds of c as a decentralized federation over d. average (dim) receives the final average
 * model; peers (NULL, or n vectors of dim) each peer's final model. A topology that is not connected
 * (strongly, for push-sum) is refused before any work. */
int loom_decentral_run(const loom_sim_config *c, const loom_decentral_config *d, float *average, float *const *peers);

#ifdef __cplusplus
}
#endif
#endif
