/* In-process federated simulation (sim/ layer): many clients on one machine.
 *
 * The simulator is one driver of the round engine (include/loom/engine.h): the engine does the
 * server's work (sampling, admission and validation of updates, aggregation through the update
 * pipeline, the evaluation hand-out, metrics); the simulator runs the clients on a pool of W worker
 * threads, each holding one trainer (one set of activations and its own trainable vector) while the
 * frozen model is shared read-only, and moves the updates to the engine through an in-process
 * "wire" (a loom_update pointing at the worker's buffer, no copy). Workers submit as soon as they
 * finish: the engine's fixed-point sum makes the result independent of the order, and every client
 * computation runs on a fixed number of threads (client_threads), so a run is bitwise identical for
 * any W. Memory grows with W, not with the number of clients.
 *
 * Client state (loom_client_state: step counter, SCAFFOLD c_i) is kept here, one per simulated
 * client, allocated on first participation: it belongs to the client side, not to the engine.
 *
 * Time: the simulator runs a virtual clock. A client's simulated duration is local_steps *
 * step_seconds * exp(time_spread * z_k), z_k ~ N(0, 1) fixed per client (slow clients stay slow); it
 * submits at open + duration, and with a deadline its update is refused as late past it (stragglers).
 * A failing client (an error in its training, or LOOM_FAULT_FAIL) is a refused update with reason
 * "client failure"; the run goes on. Rounds close when every sampled client has answered (the
 * engine's quorum, which closes on the first q accepted in real arrival order, is for real-time
 * drivers; the simulator does not use it, so that its results never depend on thread timing).
 *
 * Outputs in out_dir: metrics.jsonl (one "round" row per round, with the evaluation fields when the
 * round evaluated, then one "client" row per sampled client with its status: "accepted" or the
 * refusal reason), checkpoint.safetensors every checkpoint_every rounds (atomic; global vector,
 * strategy state, the clients' state, next round), global.safetensors at the end. An out_dir that
 * already holds a checkpoint is refused unless resume is set (loom_sim_check_out).
 *
 * Asynchronous modes (mode LOOM_ENGINE_FEDASYNC or LOOM_ENGINE_FEDBUFF; the definitions are in
 * include/loom/engine.h): an event loop on the virtual clock. `concurrency` clients train at once (the
 * first ones from the round-0 sample of that size: loom_engine_sample(N, C, 0, seed, 0)), each taking
 * loom_sim_client_seconds of simulated time; a client starts on the version current when it starts.
 * Arrivals are applied in simulated-time order, simultaneous ones in client-id order; after all the
 * arrivals of one instant, each freed place goes to a client drawn uniformly among the idle ones from
 * the stream (seed, LOOM_STREAM_ASYNC_NEXT) (with concurrency = all clients: the client that just
 * finished). A started client's input is fixed (its version's snapshot and its own state), so the
 * workers train the started clients in parallel and the order of application never depends on
 * threads: a run is bitwise identical for any W. rounds = versions to make; with equal speeds,
 * concurrency = buffer = all clients, FedBuff is the synchronous FedAvg run bit for bit. One metrics
 * round row per version (eval_every counts versions). Resume is refused in these modes, and no
 * periodic checkpoint is written (global.safetensors is). */
#ifndef LOOM_SIM_H
#define LOOM_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "loom/dataset.h"
#include "loom/engine.h"
#include "loom/fl.h"
#include "loom/partition.h"
#include "loom/strategy.h"
#include "loom/train.h"
#include "loom/tvec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Builds one worker: a trainer over its own vector (dim floats). */
typedef int (*loom_worker_make)(void *ud, loom_trainer **tr, float **vec);
typedef void (*loom_worker_free)(void *ud, loom_trainer *tr, float *vec);

/* Fault injection, for testing the server's defences: client `client` returns a broken update (NaN,
 * Inf, every value times 1e6, one value short) or reports a failure instead of an update (FAIL). */
enum { LOOM_FAULT_NAN = 1, LOOM_FAULT_INF, LOOM_FAULT_HUGE, LOOM_FAULT_SHORT, LOOM_FAULT_FAIL };
typedef struct {
    int client;
    int kind;
} loom_fault;

/* loom_round_metrics (the per-round summary) is defined in include/loom/engine.h. */

/* A secure-sum backend: the server learns the round's weighted sum, never one update. With one set
 * (loom_sim_config.secure.sum not NULL), each client's update is validated and clipped (clip_norm) as
 * usual, then held for the backend instead of entering the pipeline; when the round's clients have all
 * answered, the backend turns the held updates into their sum, which enters the pipeline through
 * loom_engine_submit_sum (noise and the strategy run after it; the client rows keep each client's
 * status). Secure aggregation is sim_secure.c's backend; a Paillier backend plugs in the same way.
 *   check  (may be NULL) before the run, with the number of clients a round samples and the vector's
 *          length: LOOM_EINVAL (or LOOM_ERANGE) naming the backend's flag when it cannot work. It may
 *          prepare the run (a Paillier backend makes its key pair here).
 *   sum    updates[i] (dim floats) of client clients[i] (increasing) with weight weights[i], i < n:
 *          writes sum (dim doubles) = sum_i weights[i] dec(enc(updates[i])) as the backend decodes it,
 *          *total_weight = sum_i weights[i], and bytes_up[i] (what client i sent, every phase). An error
 *          refuses the round's updates (each client row: "client failure"; the model stays). */
typedef struct {
    const char *name;
    int (*check)(void *ud, int per_round, size_t dim);
    int (*sum)(void *ud, int round, size_t dim, const float *const *updates, const uint64_t *weights,
               const int *clients, size_t n, double *sum, uint64_t *total_weight, double *bytes_up);
    void *ud;
} loom_secure_sum;

/* Secure aggregation as a secure-sum backend (src/sim/sim_secure.c, include/loom/secagg.h): each round
 * runs the four phases among the round's n accepted clients in process (their keys seeded from (seed,
 * round, client)), `drop` of them, chosen by the seed, vanishing after sending their masked input (their
 * inputs stay in the sum, their self-masks are removed through the others' shares). */
typedef struct {
    uint32_t threshold;   /* --secagg-threshold: 0 = floor(2h/3) + 1 of the h holders (n, or k + 1) */
    uint32_t neighbours;  /* --secagg-neighbours: SecAgg+ k (even); 0 = complete graph */
    int drop;             /* --secagg-drop */
    double clip;          /* --secagg-clip: values clipped to [-clip, clip] before encoding (default 1) */
    uint64_t max_weight;  /* the largest client weight (examples) accepted (default 2^20) */
    uint64_t seed;        /* the run's seed */
} loom_sim_secagg;
void loom_sim_secagg_defaults(loom_sim_secagg *s);
/* The backend over *s (which must outlive the run). */
loom_secure_sum loom_sim_secagg_backend(loom_sim_secagg *s);

/* Paillier additive homomorphic aggregation as a secure-sum backend (src/sim/sim_secure.c,
 * include/loom/paillier.h): each client encrypts its packed fixed-point update under the key holder's
 * public key, the server multiplies the ciphertexts (adds the plaintexts) without any secret, and only
 * the key holder decrypts the round's sum. In the simulator the key holder is a separate object made
 * by check (key seeded by the run's seed, so runs are reproducible; a deployment would use fresh
 * system randomness and keep the secret key away from the server). */
typedef struct {
    unsigned key_bits;    /* --he-key-bits: modulus n (default 2048, at least 2048) */
    double clip;          /* --he-clip: values clipped to [-clip, clip] before encoding (default 1) */
    size_t max_dim;       /* --he-max-dim: larger trainable sets are refused (the cost knob) */
    uint64_t max_weight;  /* the largest client weight accepted (default 2^20) */
    uint64_t seed;        /* the run's seed */
    struct loom_paillier_sk *sk; /* the key holder's key, made by check; freed by loom_sim_paillier_clear */
    int max_clients;      /* set by check: the clients a round samples */
} loom_sim_paillier;
void loom_sim_paillier_defaults(loom_sim_paillier *s);
void loom_sim_paillier_clear(loom_sim_paillier *s);
loom_secure_sum loom_sim_paillier_backend(loom_sim_paillier *s);

/* Simulated Byzantine update attacks (src/sim/sim_attack.c). The attackers are a fixed set of clients
 * for the whole run, chosen by the seed (loom_sim_attackers); each trains as usual, then replaces its
 * update u before sending it:
 *   GAUSSIAN  N(0, scale^2) in every value (scale = sigma, default 1), from the stream
 *             (seed, hash2(hash2(LOOM_STREAM_ATTACK_NOISE, round), client))
 *   SIGNFLIP  -u
 *   SCALE     scale * u (scale = lambda, default 10)
 *   ALIE      "a little is enough" (Baruch et al. 2019): mean - z_max * std per coordinate of the round's
 *             honest updates (std with n - 1), z_max = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f, n the
 *             round's sampled clients, f its attackers (a sampled round holding more than n / 2 attackers
 *             uses f = floor(n / 2)); refused when the attackers are a majority of all the clients
 *   IPM       inner-product manipulation (Xie et al. 2020): -scale * mean of the round's honest updates
 *             (scale = epsilon, default 0.1)
 *   LABELFLIP data poisoning of classification data: the attacker trains on its examples with label l
 *             replaced by n_labels - 1 - l (its verbalizer, its label), and sends that honest-looking update
 *   BACKDOOR  (Bagdasaryan et al. 2020) the attacker trains on a copy of its training examples in which
 *             round(frac * n) of them (chosen by (seed, hash2(LOOM_STREAM_BACKDOOR, client))) carry the
 *             trigger phrase and the target label; it sends scale * u (model replacement; scale = lambda,
 *             default 1: the update as trained)
 *   EMBEDDING word-embedding poisoning (Yang et al. 2021): trains as BACKDOOR, then keeps only the change
 *             of the trigger's token-embedding rows (rows of the trigger's token ids in the vector's
 *             model.embed_tokens.weight or transformer.wte.weight; every other value 0), times scale
 *             (default 1). The embedding must be in the trainable vector (full fine-tuning): a manifest
 *             without it (LoRA, adapters and the other PEFT sets freeze it) is refused
 * The trigger is inserted at the token level, right after the prompt's "Text:": its tokens are those of
 * encode("Text: " + trigger) past encode("Text:") (which must be a prefix of it, and of every example's
 * prompt after its BOS, else LOOM_EFORMAT); nothing is re-tokenized. BACKDOOR and EMBEDDING need
 * classification data (two or more labels) and the tokenizer. With either, every evaluation also scores
 * each evaluated client's test examples whose label is not the target, with the trigger inserted, and
 * counts those classified as the target (loom_eval_result.attack_hits / attack_count; the round's
 * attack_success in include/loom/engine.h).
 * ALIE and IPM are omniscient: the simulator holds the attackers' updates until the round's honest
 * clients have all answered (the honest updates they see are those of the honest clients that trained
 * without an injected fault; unweighted), then sends them in client order. Synchronous rounds only. */
enum { LOOM_ATTACK_NONE = 0, LOOM_ATTACK_GAUSSIAN, LOOM_ATTACK_SIGNFLIP, LOOM_ATTACK_SCALE, LOOM_ATTACK_ALIE,
       LOOM_ATTACK_IPM, LOOM_ATTACK_LABELFLIP, LOOM_ATTACK_BACKDOOR, LOOM_ATTACK_EMBEDDING };
#define LOOM_BACKDOOR_TRIGGER_MAX 256 /* bytes of a trigger phrase */
typedef struct {
    int kind;          /* LOOM_ATTACK_* */
    int attackers;     /* how many of the clients attack */
    double scale;      /* sigma, lambda or epsilon; NAN or 0: the kind's default */
    /* BACKDOOR and EMBEDDING: */
    const loom_tokenizer *tok; /* the data's tokenizer (encodes the trigger; only read, during create) */
    const char *trigger;       /* the trigger phrase (NULL: "cf") */
    int target;                /* the target label's index */
    double frac;               /* share of an attacker's training examples poisoned, in (0, 1]; NAN or 0: 0.5 */
} loom_sim_attack;
/* The kind of a name (gaussian, signflip, scale, alie, ipm, labelflip, backdoor, embedding, or none):
 * LOOM_OK or LOOM_EINVAL. */
int loom_sim_attack_parse(const char *name, int *kind);
const char *loom_sim_attack_name(int kind);
/* The attackers among n_clients: is_attacker[i] = 1 for `count` clients drawn uniformly by
 * (seed, LOOM_STREAM_ATTACKERS), 0 for the others. LOOM_EINVAL when count is not in [0, n_clients]. */
int loom_sim_attackers(uint64_t seed, int n_clients, int count, unsigned char *is_attacker);
/* ALIE's z_max for n clients of which f attack (see above); LOOM_EINVAL when f >= floor(n / 2 + 1)
 * (loom_sim_attack_craft lowers such an f to floor(n / 2) first). */
int loom_sim_alie_z(int n, int f, double *z);
/* Attacker `client`'s update of `round` (dim values, in place: it holds the client's own update on
 * entry): honest[0..n_honest) are the round's honest updates (used by ALIE and IPM), n and f the round's
 * sampled clients and attackers (ALIE's z_max). BACKDOOR and EMBEDDING scale the update (EMBEDDING's
 * restriction to the trigger's rows needs the manifest: the simulator applies it before this). */
int loom_sim_attack_craft(const loom_sim_attack *a, uint64_t seed, int round, int client, size_t dim,
                          const float *const *honest, size_t n_honest, int n, int f, float *update);

struct loom_hetero;
struct loom_device_profile;

typedef void (*loom_round_cb)(const loom_round_metrics *m, void *ud);
typedef void (*loom_client_cb)(int round, int done, int total, void *ud);

typedef struct {
    /* model and trainable vector */
    size_t dim;
    const float *init;              /* initial global vector (dim) */
    const loom_tvec *manifest;      /* names of the vector's tensors in checkpoints and global.safetensors
                                     * (include/loom/tvec.h; NULL: one tensor "vector" of dim floats) */
    loom_worker_make make_worker;
    loom_worker_free free_worker;
    void *worker_ud;
    /* data */
    const loom_dataset *ds;
    const loom_partition *part;     /* clients: train and test example indices */
    const loom_dataset *const *client_ds; /* (part->n_clients) each client's own dataset, which its indices
                                     * refer to (--clients-dir: one file per client); NULL: all use ds */
    int B, T;
    /* federation */
    const char *strategy;
    loom_strategy_params sp;
    loom_fit_config fit;
    int rounds;
    int sample;                     /* clients per round (0: use sample_frac) */
    double sample_frac;             /* fraction of clients per round (0 and sample 0: all) */
    int min_updates;                /* accepted updates needed to aggregate (default 1) */
    double max_update_norm;         /* reject updates with a larger L2 norm (0 = no bound; < 0 refused) */
    double clip_norm;               /* scale updates down to this L2 norm (0 = off) */
    const loom_aggregator_ops *aggregator; /* the pipeline's aggregator (NULL = the fixed-point mean;
                                     * &loom_agg_robust with a loom_robust_config in aggregator_config) */
    const void *aggregator_config;
    /* The pipeline's post stage (include/loom/pipeline.h; FedDF's server distillation: loom_feddf_post
     * with a loom_feddf, include/loom/distill.h); NULL = none. */
    loom_post_fn post;
    void *post_ud;
    /* The server's root data, for an aggregator that takes a reference update (FLTrust): examples
     * root_idx[0..n_root) of ds. Each round the server trains on them from the round's global model as a
     * client would (the same fit config without local DP, its own step counter, data seed
     * hash2(seed, LOOM_STREAM_ROOT)) and hands the update to the aggregator (loom_engine_set_reference).
     * loom_sim_root_examples draws them. Synchronous rounds only. */
    const uint32_t *root_idx;
    size_t n_root;
    const loom_dataset *root_ds;    /* the dataset root_idx refers to (NULL: ds) */
    const loom_client_algo *algo;   /* the clients' algorithm (NULL = loom_client_local_sgd) */
    struct loom_kseed *kseed;       /* FedKSeed (include/loom/zo.h): the pool every worker's context gets
                                     * (dim is then its K); NULL otherwise */
    loom_codec_opts compress;       /* update compression (codec F32 = off, the default): each client
                                     * compresses with error feedback (loom_client_compress, its residual
                                     * in its state and the checkpoint) and its upload is counted as the
                                     * encoded size (loom_update_encoded_size) in bytes_up */
    /* virtual time */
    double step_seconds;            /* simulated seconds per local step (0: every client is instant) */
    double time_spread;             /* log-normal sigma of the clients' speeds (0: all equal) */
    double deadline;                /* simulated seconds a round waits for updates (0: no deadline) */
    const loom_fault *faults;
    int n_faults;
    /* asynchronous modes (include/loom/engine.h; ignored in LOOM_ENGINE_SYNC) */
    loom_engine_mode mode;          /* default LOOM_ENGINE_SYNC */
    double async_alpha;             /* FedAsync alpha in [0, 1] (default 0.6) */
    loom_staleness_fn staleness;    /* s (default constant; poly a 0.5; hinge a 0.5, b 4) */
    int buffer;                     /* FedBuff K (0: = concurrency) */
    int concurrency;                /* clients training at once (0: the sample size, else all clients) */
    long max_staleness;             /* refuse updates staler than this (0 = no limit) */
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
    int resume;                     /* continue from out_dir/checkpoint.safetensors (required when one
                                       exists: a run never silently overwrites an earlier run's) */
    int per_client_rows;            /* write one metrics row per participating client (default 1) */
    /* Continual rounds: with resume, the checkpoint may hold fewer clients than the run has (new
     * clients joined, or a new partition): the checkpoint's clients keep their state by index, the
     * others start fresh. Without continual the counts must match. */
    int continual;
    /* An extra evaluation after every round (synchronous rounds; continual rounds' retention test on
     * held-out earlier data): round_eval gets the new global vector and returns a mean loss and the
     * tokens it counted; the row {"type":"retention","round":R,"loss":L,"perplexity":P,"tokens":N}
     * follows the round's rows in metrics.jsonl. An error stops the run. */
    int (*round_eval)(void *ud, int round, const float *global, double *loss, long *tokens);
    void *round_eval_ud;
    loom_round_cb on_round;
    loom_client_cb on_client;
    void *cb_ud;
    loom_metrics_sink also;         /* also given every metrics row that metrics.jsonl gets (loom sim
                                       --serve's dashboard board, include/loom/dash.h); zero: none */
    /* differential privacy (include/loom/dp.h): handed to the engine (loom_engine_config.dp); local DP
     * and DP-SGD are the clients' (fit.dp_clip / fit.dp_noise, the trainer's dp_sgd) */
    loom_dp_config dp;
    /* secure aggregation (or another secure-sum backend); .sum NULL = plain aggregation. Synchronous
     * rounds only; not with scaffold or a robust aggregator (they need the updates). */
    loom_secure_sum secure;
    /* simulated Byzantine attackers (src/sim/sim_attack.c); kind LOOM_ATTACK_NONE = none */
    loom_sim_attack attack;
    /* heterogeneous clients (include/loom/hetero.h): each client trains the part of the vector its
     * mask names (HetLoRA ranks, FFA-LoRA, FedRA layers) and the engine averages each value over the
     * clients that trained it. NULL: every client holds the whole vector. Synchronous rounds only; not
     * with a secure sum, a robust aggregator or scaffold. With rank self-pruning (prune_gamma) each
     * accepted client's rank is updated in it after its submission (loom_hetero_prune); such a run
     * cannot resume (the ranks are not in the checkpoint). */
    struct loom_hetero *hetero;
    /* device profiles (include/loom/hetero.h; n_clients of them, NULL = none): client k's simulated
     * duration becomes local_steps * step_seconds / speed_k (times exp(time_spread z_k) as above)
     * plus the transfer of the global vector down and its update up at bandwidth_k. */
    const struct loom_device_profile *profiles;
    /* FLoRA stacking (include/loom/hetero.h; NULL = off): after each aggregated round the accepted
     * clients' models (the round's global vector + each update, in client order, with their weights
     * = examples) go to stack(), which merges their stacked product into the driver's base
     * (loom_lora_stack_merge); then the global vector restarts from init (B = 0: the merged base alone),
     * and the evaluation sees that. The engine's own mean is discarded. Synchronous rounds only;
     * not with a secure sum, attackers, checkpoints or resume (the merged base is the driver's). */
    int (*stack)(void *ud, int round, const float *const *models, const int *clients, const double *weights,
                 size_t n);
    void *stack_ud;
    /* ---- unlearning (include/loom/unlearn.h): what the run keeps, and how an unlearning run differs ----
     * With out_dir, out_dir/unlearn/membership.jsonl (the accepted clients of every round and their
     * weights) is always written; start checkpoints every keep_checkpoints rounds and the accepted
     * updates of every keep_updates-th round (0: none) are kept there too (synchronous rounds, not with a
     * secure sum, whose updates the server never sees). excluded (n_clients bytes, NULL: none) removes
     * clients from the population (loom_engine_config.excluded; they are not evaluated either).
     * start_from: a kept start checkpoint to begin at (its next round; like resume, into a fresh
     * out_dir). replay_dir (FedEraser): each sampled client whose update of the round is kept under
     * replay_dir/unlearn/updates trains fit.local_steps (the calibration steps) from the current model,
     * its update is rescaled to the stored one's norm (unless replay_no_rescale) and submitted; a client
     * without a stored update of the round is refused ("client failure: no stored update") untrained. */
    int keep_checkpoints, keep_updates;
    const unsigned char *excluded;
    const char *start_from;
    const char *replay_dir;
    int replay_no_rescale;
    /* personalization (include/loom/personal.h; NULL = off): the private values stay on the clients
     * (fit.personal must be the same plan), the engine leaves them out of the mean and bytes_up counts
     * the shared values only. Synchronous rounds only; not with a secure sum or FLoRA stacking. */
    struct loom_personal *personal;
    /* After the last round, every client with test data scores the global model and (with a private
     * part or finetune_steps > 0) its personalized model after finetune_steps local steps; rows
     * "client_eval" and "personal" in metrics.jsonl, and client_evals (n_clients, caller's, may be
     * NULL) receives them. on_personal (may be NULL) sees each client's personalized vector (dim
     * floats, valid during the call; called from the workers, one client at a time per worker). */
    int client_eval;
    int finetune_steps;
    struct loom_personal_eval_s *client_evals;
    void (*on_personal)(void *ud, int client, const float *model);
    void *personal_ud;
    /* One run spread over several processes (loom sim --mpi; include/loom/mpi.h); ranks 0 = one
     * process. Every process runs the same configuration and its own engine (the same samples from
     * (seed, round)); client k is trained and evaluated by process k mod ranks, which keeps its state.
     * After each fit phase and each evaluation the processes' engine shares (loom_engine_share_export)
     * are summed element-wise by sum(), which must return on every process the sum over all of them
     * (MPI_Allreduce with MPI_SUM over int64), and imported: every engine then aggregates the same
     * exact sum and computes the same global vector, bit for bit the vector and metrics of the
     * one-process run. Only process 0 should get out_dir and the callbacks. Refused (LOOM_EUNSUPPORTED,
     * naming the option): asynchronous modes, a secure sum, robust aggregators, heterogeneous clients,
     * FLoRA stacking, attackers, FedKSeed, checkpoints and resume (the clients' state is spread). */
    struct {
        int ranks, rank;
        int (*sum)(void *ud, int64_t *words, size_t n);
        void *ud;
    } dist;
} loom_sim_config;

void loom_sim_defaults(loom_sim_config *c);
/* The round engine's configuration of a run described by c (everything but the population, n_test
 * and the metrics sink, which the driver sets): the simulator's, and a server's from the same RUN.json. */
void loom_sim_engine_config(const loom_sim_config *c, loom_engine_config *ec);
/* Runs the rounds; global (dim) receives the final global vector. */
int loom_sim_run(const loom_sim_config *c, float *global);
/* The seed of client `client`'s data order (its batcher's seed): batches depend on (this, step). */
uint64_t loom_sim_client_seed(uint64_t seed, int client);
/* Client `client`'s data in a run described by c: its dataset, train and test examples, batch shape and
 * data seed (loom_sim_client_seed); every driver (in-process, distributed, decentralized) uses it. */
loom_client_data loom_sim_client_data(const loom_sim_config *c, int client);
/* Clients sampled in a round: a sorted subset of [0, n_clients), from (seed, round). *n = count. */
int loom_sim_sample(const loom_sim_config *c, int round, int *clients, int *n);
/* The run directory's checks, before any work: without resume, an out_dir holding a checkpoint is
 * refused (it belongs to an earlier run); with resume, the checkpoint must exist and its next round
 * must be below rounds (a run that would do nothing is refused). LOOM_OK or LOOM_EINVAL naming
 * --out, --resume or --rounds. */
int loom_sim_check_out(const char *out_dir, int resume, int rounds);
/* The server's n root examples (FLTrust): drawn without replacement by the seed (one shuffle of the
 * stream (seed, LOOM_STREAM_ROOT)) from the clients' training examples of part (each example once),
 * sorted; *out is malloc'd (the caller frees). n larger than the training examples: LOOM_EINVAL. */
int loom_sim_root_examples(const loom_partition *part, uint64_t seed, size_t n, uint32_t **out);
/* The checks of a distributed run (loom_sim_config.dist) that loom_sim_run makes first: the options it
 * cannot distribute (LOOM_EUNSUPPORTED naming the first), a bad rank or a missing sum (LOOM_EINVAL);
 * LOOM_OK when c is not distributed. A driver calls it before any process waits in a sum. */
int loom_sim_dist_check(const loom_sim_config *c);
/* Simulated duration of client `client`'s round of local_steps steps (with profiles: its speed and
 * the transfer of 2 * dim * 4 bytes at its bandwidth). */
double loom_sim_client_seconds(const loom_sim_config *c, int client);

#ifdef __cplusplus
}
#endif
#endif
