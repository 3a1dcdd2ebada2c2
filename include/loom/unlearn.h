/* Federated unlearning (fl/ layer): what a run keeps so that one client's contribution can be removed,
 * and the two ways of removing it.
 *
 * What a run keeps (loom sim --out DIR writes it under DIR/unlearn/, see loom_sim_config.unlearn):
 *   membership.jsonl   one row per round: {"round": R, "clients": [k...], "weights": [w...]}: the
 *                      clients whose update was accepted in round R (they contributed) and their
 *                      aggregation weights (examples), in sampled order. A refused, failed or late
 *                      client did not contribute and is not listed. Always written (a few bytes a round).
 *   start_RRRRRR.safetensors  the checkpoint at the start of round R (global vector, strategy state,
 *                      the clients' state: what --resume reads), for R = 1 + K, 1 + 2K, ... with
 *                      --keep-checkpoints K (0: none; round 1's start is the initial model, which the
 *                      run's own flags rebuild). One is dim * 4 bytes plus the strategy's state.
 *   updates/rRRRRRR_cKKKKKK.safetensors  client K's update as the server received it in round R (one
 *                      tensor "update" of dim floats), for every accepted client of rounds R = 1, 1 + K,
 *                      1 + 2K, ... with --keep-updates K (0: none). A kept round costs
 *                      (its accepted clients) x dim x 4 bytes.
 *
 * Exact unlearning of client c: let f be the first round c contributed to (membership). Rounds before f
 * never saw c's data, so the model at the start of round f is kept as it is: the run restarts from the
 * last kept checkpoint at or before f (round s = 1 + K floor((f - 1) / K), the initial model when s = 1)
 * and retrains rounds s..R with c removed from the population. "Removed" means (loom_engine_config.excluded):
 * every round samples exactly as before ((seed, round) over all N clients, so every other client is
 * sampled in the same rounds, trains on the same batches from the same data seed and weighs the same);
 * a round that sampled c runs with the others only; c is never evaluated. With full participation
 * and c the last client of a --clients-dir, this is exactly a run in which c's file never existed.
 *
 * Approximate unlearning (FedEraser, Liu et al. 2021): from the same restart point, each kept round is
 * replayed with the remaining clients only: each of them trains a few calibration steps from the
 * current unlearned model (its direction), and that update is rescaled to the L2 norm of its stored
 * update of the same round (the magnitude it had in the original run): u~ = |U| u / |u|
 * (loom_unlearn_calibrate). The server then aggregates the calibrated updates as in the original run.
 * Rounds without stored updates leave the model (FedEraser's interval). c's own stored updates are never
 * read. With calibration of every round by the full local steps and no rescaling, the replay is the
 * exact retrain. */
#ifndef LOOM_UNLEARN_H
#define LOOM_UNLEARN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The rounds a run's clients contributed to (membership.jsonl). */
typedef struct {
    int round;
    int n;
    int *clients;       /* (n) */
    uint64_t *weights;  /* (n) */
} loom_membership_round;

typedef struct {
    int n_rounds;
    loom_membership_round *rounds; /* in file order (increasing rounds) */
} loom_membership;

#define LOOM_MEMBERSHIP_MAX_BYTES (256L << 20) /* a membership file larger than this is refused */

/* Appends one round's row to f (an open file; the caller flushes): LOOM_OK or LOOM_EIO. */
int loom_membership_write_row(void *file, int round, const int *clients, const uint64_t *weights, int n);
/* Reads membership.jsonl: each row must be an object with an integer round (increasing, >= 1; a round
 * repeated by the next row, redone after a restart, keeps the later row) and two arrays of the same
 * length; an error names the file and the line. n_clients > 0: client ids must be
 * below it. */
int loom_membership_load(loom_membership *m, const char *path, int n_clients);
void loom_membership_free(loom_membership *m);
/* The first round client contributed to, 0 when none. */
int loom_membership_first(const loom_membership *m, int client);
/* Client client's weight in round round, 0 when it did not contribute. */
uint64_t loom_membership_weight(const loom_membership *m, int round, int client);

/* The restart round of exact (and approximate) unlearning: the last kept start at or before first
 * (first >= 1), with checkpoints every keep rounds (0: none kept): 1 + keep floor((first - 1) / keep),
 * or 1. */
int loom_unlearn_restart(int first, int keep);
/* Whether round round (1-based) keeps its checkpoint / its updates with a period of keep (0: never).
 * Round 1's start checkpoint is never written (the initial model). */
int loom_unlearn_keeps_start(int round, int keep);
int loom_unlearn_keeps_updates(int round, int keep);

/* Paths under a run directory (buf of n bytes; LOOM_EINVAL if too long). */
int loom_unlearn_start_path(char *buf, size_t n, const char *run_dir, int round);
int loom_unlearn_update_path(char *buf, size_t n, const char *run_dir, int round, int client);
/* Creates run_dir/unlearn (and its updates/ when updates is set). */
int loom_unlearn_mkdirs(const char *run_dir, int updates);

/* One stored update: written atomically as safetensors (tensor "update", F32, metadata round and
 * client); reading checks the length (dim), the round and the client and refuses non-finite values,
 * naming the file. LOOM_ENOTFOUND (no message printed by anyone) when the file does not exist. */
int loom_unlearn_update_write(const char *path, int round, int client, const float *u, size_t dim);
int loom_unlearn_update_read(const char *path, int round, int client, float *u, size_t dim);

/* FedEraser's calibration: fresh (the calibration update, dim values) is rescaled in place to the L2 norm
 * of stored: fresh <- fresh |stored| / |fresh| (norms in double). A zero fresh update stays zero. */
void loom_unlearn_calibrate(float *fresh, const float *stored, size_t dim);

/* The L2 distance between the vectors of two safetensors files holding the same tensors (names,
 * shapes; read as f32): *dist. Tensors present in only one file, or of different sizes: LOOM_EINVAL
 * naming the tensor. */
int loom_unlearn_distance(const char *path_a, const char *path_b, double *dist);

#ifdef __cplusplus
}
#endif
#endif
