/* Heterogeneous clients (fl/ layer): HetLoRA ranks, FFA-LoRA, FedRA layers, FLoRA stacking.
 *
 * Clients differ in memory and compute, so each holds and trains only part of the global trainable
 * set. Every method here is one coordinate mask per (client, round): dim bytes of LOOM_MASK_*
 * (include/loom/pipeline.h) that the client applies to what it trains (loom_fit_config.mask) and
 * that the server recomputes from (client, round, seed) when the update arrives
 * (loom_engine_config.mask), so nothing extra travels and the wire format is unchanged: an update is
 * still dim floats (zeros where the client trained nothing). The pipeline then averages each
 * coordinate over the clients that trained it (loom_pipeline_add_masked). The strategy never sees
 * masks: it steps on the masked mean as on any mean.
 *
 *   HetLoRA (Cho et al. 2024, "Heterogeneous LoRA for federated fine-tuning of on-device foundation
 *            models"): client k has a rank budget r_k <= r_max (ranks[k]); the global LoRA keeps
 *            r_max. Its truncation is A[:r_k, :] and B[:, :r_k] of every module: the rank slots
 *            j >= r_k are ABSENT (the client's vector holds 0 there, which is exactly a rank-r_k LoRA
 *            with the global scale alpha / r_max). Aggregation:
 *              pad       (default) the clients' LoRA matrices zero-padded to r_max and averaged with
 *                        the clients' weights: a slot held by few clients shrinks toward 0, as in the
 *                        paper (with fedavg, server_lr 1: x_c <- sum_k w_k pad(y_k)_c / sum_k w_k)
 *              rankwise  each slot averaged over the clients that hold it only (slots nobody holds
 *                        this round stay as they are)
 *              sparsity  zero-padding with the paper's sparsity weights S_k / sum S_j in place of the
 *                        examples (S_k = ||B_k A_k||_F of the client's model: loom_hetero_weight)
 *   FFA-LoRA (Sun et al. 2024, "Improving LoRA in privacy-preserving federated learning"): freeze_a:
 *            every A is FROZEN at its seeded initial value, only the B's train and are averaged, so
 *            the mean of the clients' B A is (mean B) A exactly. With rank budgets the A rows past a
 *            client's rank are FROZEN too (not ABSENT): they meet its zero B columns, so it still
 *            computes a rank-r_k product, and zero-padding never shrinks an A.
 *   FedRA    (Su et al. 2023, "FedRA: a random allocation strategy for federated tuning"): each round
 *            a random allocation matrix M (clients x layers) from (seed, round) decides which layers
 *            a resource-limited client adapts: client k with a budget of n_k < L layers trains n_k
 *            layers drawn uniformly without replacement from the stream
 *            (seed, hash2(hash2(LOOM_STREAM_FEDRA, round), k)); its other layers' tensors are FROZEN
 *            (held at the global values in its forward pass; the paper drops them from the client's
 *            model, which loom's fixed-depth forward cannot do). Each layer is averaged over the
 *            clients that trained it. A budget of 0 or >= L trains every layer. Tensors outside a
 *            layer always train.
 * The three combine (a rank budget and a layer budget and frozen A's). With every client at r_max, no
 * layer budget and freeze_a off, every mask is all TRAIN and a run is plain FedAvg of LoRA bit for bit.
 *
 * FLoRA stacking (Wang et al. 2024, "FLoRA: federated fine-tuning with heterogeneous low-rank
 * adaptations"): the clients' modules are concatenated, A_s = [A_1; ...; A_n] (sum r_k rows) and
 * B_s = [p_1 B_1, ..., p_n B_n] (p_k = w_k / sum w), so B_s A_s = sum_k p_k B_k A_k: the product of
 * the aggregate is exactly the mean of the products (the mean of B's times the mean of A's is not).
 * The stacked rank grows with every round, so FLoRA merges it into the base weights and restarts the
 * adapter; loom_lora_stack gives the stacked matrices of one module and loom_lora_stack_merge adds the
 * stacked product of every module into a float copy of the base (loom_tset_merge's layout).
 *
 *     loom_hetero_config hc;  loom_hetero_defaults(&hc);
 *     int ranks[3] = {2, 4, 8};  hc.n_clients = 3; hc.ranks = ranks;     // r_max = the set's rank
 *     loom_hetero *h;  loom_hetero_create(&h, ts, &hc);
 *     ec.mask = loom_hetero_mask_cb; ec.mask_ud = h; ec.pipe.mask_pad = !hc.rankwise;   // the server
 *     uint8_t *mask = malloc(loom_tset_dim(ts));
 *     loom_hetero_mask(h, client, round, mask); fc.mask = mask;          // the client, each round
 */
#ifndef LOOM_HETERO_H
#define LOOM_HETERO_H

#include <stddef.h>
#include <stdint.h>

#include "loom/peft.h"
#include "loom/pipeline.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_HETERO_MAX_CLIENTS 1000000

typedef struct {
    int n_clients;        /* the population (>= 1) */
    const int *ranks;     /* (n_clients) HetLoRA rank budgets, each in 1..r_max; NULL = all r_max */
    int rankwise;         /* HetLoRA aggregation: 0 zero-padding (the paper's), 1 rank-wise */
    int freeze_a;         /* FFA-LoRA: A frozen, only B trains */
    const int *layers;    /* (n_clients) FedRA layer budgets (0 or >= L: every layer); NULL = no FedRA */
    uint64_t seed;        /* the run's seed (FedRA's allocation) */
    double prune_gamma;   /* HetLoRA rank self-pruning threshold in [0, 1] (0 = off): loom_hetero_prune */
    int sparsity;         /* HetLoRA sparsity-weighted aggregation (zero-padding with loom_hetero_weight) */
} loom_hetero_config;

typedef struct loom_hetero loom_hetero;

void loom_hetero_defaults(loom_hetero_config *c);
/* Builds the masks' plan for trainable set ts (which must outlive h; its manifest names the LoRA
 * matrices "...lora_A.weight" [r_max, in] and "...lora_B.weight" [out, r_max]). The arrays are copied.
 * Errors (LOOM_EINVAL / LOOM_ERANGE naming the flag): ranks or freeze_a on a set that is not LoRA
 * (--client-ranks, --lora-freeze-a), a rank outside 1..r_max, a negative layer budget (--fedra-layers),
 * FedRA on a set without layers. */
int loom_hetero_create(loom_hetero **out, const loom_tset *ts, const loom_hetero_config *c);
void loom_hetero_free(loom_hetero *h);
size_t loom_hetero_dim(const loom_hetero *h);
int loom_hetero_clients(const loom_hetero *h); /* n_clients */
int loom_hetero_r_max(const loom_hetero *h);   /* the set's LoRA rank (0 when not LoRA) */
int loom_hetero_rank(const loom_hetero *h, int client);     /* client's rank budget */
/* 1 when every client's mask is all TRAIN (nothing heterogeneous configured). */
int loom_hetero_trivial(const loom_hetero *h);
/* The pipeline's mask_pad for this configuration (HetLoRA's zero-padding: 1 unless rankwise). */
int loom_hetero_pad(const loom_hetero *h);
/* FedRA: layers[l] = 1 when client trains layer l in round (1-based), l < the model's layers. */
int loom_hetero_layers(const loom_hetero *h, int client, int round, uint8_t *layers);
/* Client's mask in round (dim bytes, LOOM_MASK_*). A client outside 0..n_clients-1: LOOM_EINVAL. */
int loom_hetero_mask(const loom_hetero *h, int client, int round, uint8_t *mask);
/* HetLoRA rank self-pruning, after a client's accepted round: with its model y = global + update (dim
 * floats each), the share of its last rank slot r - 1 in the sum over slots j < r and over every module
 * of |B[:, j]| |A[j, :]| (each term the Frobenius norm of slot j's rank-one product) is compared with
 * prune_gamma; below it, the client's rank becomes r - 1 (never below 1) from the next round on. Both
 * sides can compute it (the server holds the global vector and the update), so nothing extra travels.
 * *pruned (may be NULL) = 1 when the rank fell. Not thread-safe for one client; distinct clients may run
 * at once. Off (prune_gamma 0) or not LoRA: nothing happens. */
int loom_hetero_prune(loom_hetero *h, int client, const float *global, const float *update, int *pruned);
int loom_hetero_pruning(const loom_hetero *h); /* 1 when prune_gamma > 0 */
/* HetLoRA's sparsity-weighted aggregation (the paper's server rule, --hetlora-agg sparsity): client k's
 * zero-padded model y = global + update weighs S_k / sum_j S_j with S_k = ||Delta W_k||_F, the Frobenius
 * norm of its reconstructed update over every module, sqrt(sum_m ||B_m[:, :r_k] A_m[:r_k, :]||_F^2)
 * (computed from the r_k x r_k Gram matrices of A's rows and B's columns), in place of its examples.
 * The pipeline takes whole weights, so *w = rint(S_k 2^24) clamped to 1..2^32 - 1 (relative rounding
 * below 2^-24 S_k for S_k >= 1, e.g. 6e-5 at S_k = 1e-3). Not LoRA: LOOM_EINVAL. */
int loom_hetero_weight(const loom_hetero *h, int client, const float *global, const float *update, double *s,
                       uint64_t *w);
int loom_hetero_sparsity(const loom_hetero *h); /* 1 when sparsity weights are on */
/* loom_hetero_weight as the round engine's weight callback (ud = the loom_hetero). */
int loom_hetero_weight_cb(void *ud, int client, int round, const float *global, const float *update, uint64_t *w);
/* loom_hetero_mask as the round engine's callback (ud = the loom_hetero). */
int loom_hetero_mask_cb(void *ud, int client, int round, uint8_t *mask);

/* Rank budgets from a --client-ranks string: "R1,R2,..." (one per client, or fewer: repeated in turn,
 * client k gets entry k mod count) or "draw:R1,R2,..." (each client's rank drawn uniformly from the
 * list by (seed, hash2(LOOM_STREAM_RANK_DRAW, k))). Every rank in 1..r_max; at most 4096 entries.
 * Errors name --client-ranks and the bad entry. The same syntax serves --fedra-layers (what = the
 * flag's name, lo..hi its range). */
int loom_hetero_parse_list(const char *s, const char *what, int lo, int hi, uint64_t seed, int n_clients, int *out);

/* FLoRA stacking of module k (0-based, in manifest order) of n clients: vecs[i] (dim floats, the
 * set's layout, rank slots j >= ranks[i] ignored; ranks NULL = all r_max), weights[i] > 0.
 * A_out [sum r_i, in] = the clients' A[:r_i, :] one below the other, B_out [out, sum r_i] = their
 * p_i B[:, :r_i] side by side (p_i = weights[i] / sum weights). *rank_out = sum r_i. Either output
 * may be NULL (then only *rank_out). */
int loom_lora_stack(const loom_tset *ts, int module, const float *const *vecs, const int *ranks,
                    const double *weights, size_t n, float *A_out, float *B_out, int *rank_out);
/* params (a float copy of the base, loom_tset_merge's layout) += scale * B_s A_s for every module:
 * the stacked product, sum_i p_i scale B_i[:, :r_i] A_i[:r_i, :], in the weight's own layout. */
int loom_lora_stack_merge(const loom_tset *ts, const float *const *vecs, const int *ranks, const double *weights,
                          size_t n, float *params);
/* LoRA modules of the set (pairs of A and B entries). */
int loom_lora_modules(const loom_tset *ts);

/* ---- device profiles (sim/profile.c) ----
 * What a simulated client's device can do: its compute speed relative to the reference device that
 * takes --step-seconds per local step, the memory it has for training (MiB) and its link (MB/s, both
 * ways). The simulator's virtual clock uses speed and bandwidth (include/loom/sim.h); the rank and
 * layer budgets follow from memory when the run asks for it (loom_profile_ranks, loom_profile_layers).
 *
 * A profile file is TSV (tabs or spaces; '#' starts a comment; blank lines skipped): a header line
 *     client  speed  memory_mb  bandwidth_mbps  [rank]  [layers]
 * then one line per client in client order (the client column is its index 0, 1, ...; every client
 * of the run must have a line), speed > 0, memory_mb > 0, bandwidth_mbps >= 0 (0 = instant link),
 * and optionally a rank budget and a FedRA layer budget ("-" or absent: derived from memory). At most
 * LOOM_HETERO_MAX_CLIENTS lines of 1024 bytes, 64 MiB. Errors name the file and the line.
 * A distribution instead of a file: "tiers" draws each client's device from three tiers with
 * probabilities 0.5 / 0.3 / 0.2 by (seed, hash2(LOOM_STREAM_PROFILE, k)):
 *     phone   speed 0.25, memory 1024 MiB, 2 MB/s
 *     laptop  speed 1,    memory 4096 MiB, 20 MB/s
 *     server  speed 4,    memory 16384 MiB, 100 MB/s */
typedef struct loom_device_profile {
    double speed;     /* > 0, 1 = the reference device */
    double memory_mb; /* > 0 */
    double bandwidth; /* MB/s, >= 0 (0 = transfers take no time) */
    int rank;         /* rank budget from the file (0 = derive from memory) */
    int layers;       /* FedRA layer budget from the file (-1 = derive from memory) */
} loom_device_profile;

/* Reads spec (a file path, or "tiers") into out[n_clients]. */
int loom_profile_load(const char *spec, int n_clients, uint64_t seed, loom_device_profile *out);
/* Rank budgets from the profiles: a profile's own rank when given (checked against 1..r_max), else
 * max(1, floor(r_max * memory_k / max_j memory_j)): the client with the most memory gets r_max. */
int loom_profile_ranks(const loom_device_profile *p, int n_clients, int r_max, int *ranks);
/* FedRA layer budgets likewise: max(1, floor(L * memory_k / max_j memory_j)) (L: every layer). */
int loom_profile_layers(const loom_device_profile *p, int n_clients, int n_layers, int *layers);

#ifdef __cplusplus
}
#endif
#endif
