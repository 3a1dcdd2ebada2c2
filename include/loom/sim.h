/* In-process federated simulation (sim/ layer): many clients on one machine.
 *
 * The server side of each round (sampling, aggregation through a strategy, validation of updates,
 * evaluation, metrics, checkpoints) runs here; client work is loom_client_fit on a pool of W worker
 * threads, each holding one trainer (one set of activations and its own trainable vector) while the
 * frozen model is shared read-only. Updates are added to the strategy in the sampled order whatever
 * order the workers finish in, and every client computation runs on a fixed number of threads
 * (client_threads), so a run is bitwise identical for any W. Memory grows with W, not with the number
 * of clients: only per-client step counters (and SCAFFOLD control variates, when used) are kept.
 *
 * Outputs in out_dir: metrics.jsonl (one "round" row per round, one "client" row per participant,
 * "eval" rows), checkpoint.safetensors every checkpoint_every rounds (atomic; global vector, strategy
 * state, client state, round), global.safetensors at the end. */
#ifndef LOOM_SIM_H
#define LOOM_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "loom/dataset.h"
#include "loom/fl.h"
#include "loom/partition.h"
#include "loom/strategy.h"
#include "loom/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A named slice of the trainable vector, for writing it as safetensors. */
typedef struct {
    const char *name;
    size_t offset, numel;
    int ndim;
    int64_t shape[2];
} loom_vec_entry;

/* Builds one worker: a trainer over its own vector (dim floats). */
typedef int (*loom_worker_make)(void *ud, loom_trainer **tr, float **vec);
typedef void (*loom_worker_free)(void *ud, loom_trainer *tr, float *vec);

/* Fault injection, for testing the server's defences: client `client` returns a broken update. */
enum { LOOM_FAULT_NAN = 1, LOOM_FAULT_INF, LOOM_FAULT_HUGE, LOOM_FAULT_SHORT };
typedef struct {
    int client;
    int kind;
} loom_fault;

typedef struct {
    int round;
    int sampled, accepted, rejected;
    double train_loss;          /* example-weighted over accepted updates */
    double eval_loss, eval_acc; /* pooled over the evaluated clients' test tokens; NAN when not evaluated */
    double eval_loss_mean, eval_loss_std, eval_acc_mean, eval_acc_std; /* across clients */
    int evaluated;              /* clients evaluated this round (0 = no evaluation) */
    double bytes_down, bytes_up;
    double seconds;
} loom_round_metrics;

typedef void (*loom_round_cb)(const loom_round_metrics *m, void *ud);
typedef void (*loom_client_cb)(int round, int done, int total, void *ud);

typedef struct {
    /* model and trainable vector */
    size_t dim;
    const float *init;              /* initial global vector (dim) */
    const loom_vec_entry *entries;  /* manifest for safetensors output (may be NULL: one tensor "vector") */
    int n_entries;
    loom_worker_make make_worker;
    loom_worker_free free_worker;
    void *worker_ud;
    /* data */
    const loom_dataset *ds;
    const loom_partition *part;     /* clients: train and test example indices */
    int B, T;
    /* federation */
    const char *strategy;
    loom_strategy_params sp;
    loom_fit_config fit;
    int rounds;
    int sample;                     /* clients per round (0: use sample_frac) */
    double sample_frac;             /* fraction of clients per round (0 and sample 0: all) */
    int min_updates;                /* accepted updates needed to aggregate (default 1) */
    double max_update_norm;         /* reject updates with a larger L2 norm (0 = no bound) */
    const loom_fault *faults;
    int n_faults;
    /* execution */
    int workers;                    /* W worker threads */
    int client_threads;             /* threads inside one client's computation (fixed for determinism) */
    uint64_t seed;
    /* evaluation */
    int eval_every;                 /* rounds between evaluations (0 = only the last round) */
    int eval_clients;               /* evaluate at most this many clients (0 = all), chosen by seed */
    /* output */
    const char *out_dir;            /* NULL: no files */
    int checkpoint_every;           /* rounds between checkpoints (0 = none) */
    int resume;                     /* continue from out_dir/checkpoint.safetensors */
    int per_client_rows;            /* write one metrics row per participating client (default 1) */
    loom_round_cb on_round;
    loom_client_cb on_client;
    void *cb_ud;
} loom_sim_config;

void loom_sim_defaults(loom_sim_config *c);
/* Runs the rounds; global (dim) receives the final global vector. */
int loom_sim_run(const loom_sim_config *c, float *global);
/* The seed of client `client`'s data order (its batcher's seed): batches depend on (this, step). */
uint64_t loom_sim_client_seed(uint64_t seed, int client);
/* Clients sampled in a round: a sorted subset of [0, n_clients), from (seed, round). *n = count. */
int loom_sim_sample(const loom_sim_config *c, int round, int *clients, int *n);

#ifdef __cplusplus
}
#endif
#endif
