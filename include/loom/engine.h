/* The round engine (fl/ layer): the server's side of synchronous federated rounds, transport-free.
 *
 * The engine samples each round's clients, hands out tasks, accepts or refuses the updates clients
 * submit (with a reason), closes the round on quorum, on a deadline or when every sampled client has
 * answered, aggregates the accepted updates through the update pipeline (include/loom/pipeline.h),
 * hands out the evaluation, and reports metrics through a sink. It never reads a clock, opens a file
 * or starts a thread: the driver passes the time in (a virtual clock in the simulator, a real one in
 * a server), moves the bytes and runs the clients.
 *
 * A driver's loop (the simulator, src/sim/sim.c, is one; the HTTPS server and an MPI root are others):
 *
 *     loom_engine_create(&e, &cfg);
 *     while (loom_engine_next_round(e) < cfg.rounds) {
 *         loom_engine_open_round(e, now, &clients, &n);         // sampling
 *         loom_engine_task(e, &task);                            // global vector, server control, round
 *         ... each client k trains (loom_client_algo.fit, with its own loom_client_state) ...
 *         loom_engine_submit(e, &update_k, now_k, &verdict);    // any thread, any order
 *         loom_engine_fail(e, round, k, "reason", now_k, NULL); // a failed client: a refused update, not fatal
 *         ... until loom_engine_ready(e, now) ...
 *         loom_engine_close_round(e, now);                       // aggregate (or keep the model: too few)
 *         loom_engine_eval_plan(e, &eclients, &ne);              // evaluation hand-out (ne may be 0)
 *         ... loom_engine_eval_submit(e, k, &result) ...
 *         loom_engine_end_round(e, seconds, &metrics);           // metrics rows to the sink
 *     }
 *
 * Who calls whom (one arrow = "calls"):
 *
 *     driver (sim/sim.c; later net/ server, MPI root)
 *       |-- loom_engine_*            fl/engine.c    sampling, admission, close, eval hand-out, metrics
 *       |     |-- loom_pipeline_*    fl/pipeline.c  decode, validate, clip, aggregate, noise
 *       |     |     |-- loom_aggregator_ops         fixed-point mean (later: Krum, median, ...)
 *       |     |     `-- loom_strategy_step          fl/strategy*.c: the server optimizer
 *       |     `-- loom_metrics_sink                 the driver's (sim: metrics.jsonl rows)
 *       `-- loom_client_algo.fit / .evaluate  fl/client.c, on the driver's workers
 *             `-- loom_trainer_*               optim/: gradient, hook (FedProx, SCAFFOLD), step
 *
 * Where state lives: the engine owns the global vector, the pipeline (the strategy's persistent state
 * and the round's O(dim) fixed-point sum) and the current round's per-client rows (O(sampled)).
 * Client state (data position, SCAFFOLD c_i) belongs to the clients (loom_client_state in
 * include/loom/fl.h): the engine never holds it. Checkpoint = the global vector (loom_engine_global),
 * the strategy's named state (loom_strategy_state on loom_engine_strategy) and next_round; the driver
 * writes them with its own client state and restores them with loom_engine_restore.
 *
 * Threads: submit, fail and eval_submit may be called concurrently from any number of threads while a
 * round is open (the fixed-point sum makes the result independent of their order); the other calls
 * come from the driver's thread.
 *
 * Where the coming features plug in:
 *   HTTPS server transport  a driver: decodes loom_update messages (loom_update_decode, size-limited)
 *                           and calls submit with the wall clock; deadlines and quorum are already here.
 *   MPI (built)             every rank runs an engine and its own clients; the shares are summed (below).
 *   async rounds            FedAsync and FedBuff: the loom_engine_async_* calls below (mode field of
 *                           the config); the simulator drives them on its virtual clock.
 *   secure aggregation      clients send masked fixed-point vectors; the aggregate stage sums them in
 *                           the same 128-bit integers (the masks cancel in the exact sum).
 *   DP (built)              loom_engine_config.dp: central DP-FedAvg sets the clip stage and the
 *                           noise stage, local DP and DP-SGD run in the clients; epsilon per round row.
 *   robust aggregators      Krum, median, trimmed mean: a LOOM_AGG_BUFFERED loom_aggregator_ops.
 *   zeroth-order clients    a loom_client_algo whose updates use the seed-scalar codec.
 */
#ifndef LOOM_ENGINE_H
#define LOOM_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "loom/dp.h"
#include "loom/pipeline.h"
#include "loom/strategy.h"
#include "loom/safetensors.h"
#include "loom/tvec.h"
#include "loom/update.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One round's summary, for the round row of the metrics and progress displays. */
typedef struct {
    int round;                  /* 1-based */
    int sampled, accepted, rejected; /* rejected = sampled - accepted (refused, failed, late or missing) */
    double train_loss;          /* example-weighted over accepted updates; NAN with none */
    double eval_loss, eval_acc; /* pooled over the evaluated clients' test tokens; NAN when not evaluated */
    double eval_loss_mean, eval_loss_std, eval_acc_mean, eval_acc_std; /* across clients */
    double eval_acc_min;        /* the worst evaluated client's accuracy */
    int evaluated;              /* clients evaluated this round (0 = no evaluation) */
    double attack_success;      /* backdoor attack success rate: sum of the evaluated clients' attack_hits over
                                   the sum of their attack_count (loom_eval_result); NAN when no triggered
                                   example was scored (no backdoor attack, or no evaluation) */
    int aggregated;             /* 1 when the global model was updated (accepted >= min_updates) */
    double bytes_down, bytes_up; /* down: the f32 global (and control) per sampled client; up: the
                                    submitted updates' wire_bytes (f32 size when not given) */
    double seconds;             /* as given by the driver to end_round */
    /* asynchronous modes only (0 in synchronous rounds): */
    uint64_t version;           /* the global version this row made (= round) */
    double staleness_mean;      /* over the accepted updates the version contains */
    double staleness_max;
    double clock;               /* the driver's time when the version was made (the sim's virtual clock) */
    /* differential privacy (dp = 0 when the run has none): */
    int dp;
    double epsilon;             /* spent after this round (loom_dp_run_epsilon; +inf with --dp-noise 0) */
    double dp_clip;             /* the clip this round used (central: it moves with adaptive clipping) */
} loom_round_metrics;

/* One sampled client's outcome in a round (a client row of the metrics). */
typedef struct {
    int round;
    int client;
    uint64_t examples;          /* the weight it reported (0 when nothing arrived) */
    long tokens;
    double loss;
    double update_norm;         /* L2 norm of the update before clipping (0 when not computed) */
    loom_update_verdict verdict;
    const char *status;         /* loom_update_verdict_str(verdict) */
    long staleness;             /* asynchronous modes: version at arrival - version trained on (-1: none) */
    double bytes_up;            /* bytes its update took on the wire (loom_update.wire_bytes, else the
                                   f32 size; 0 when nothing arrived) */
} loom_client_row;

/* The metrics sink: round() is called once per round, then client() once per sampled client in the
 * sampled order (both from end_round). Either may be NULL. */
typedef struct {
    void (*round)(void *ud, const loom_round_metrics *m, const int *clients, int n);
    void (*client)(void *ud, const loom_client_row *r);
    void *ud;
} loom_metrics_sink;

/* The metrics.jsonl rows (one JSON object a line; the format the plots and tests read), shared by
 * the drivers: a round row, then a client row (name and examples given by the driver). f NULL: nothing. */
void loom_metrics_jsonl_round(FILE *f, const loom_round_metrics *m, const int *clients, int n);
void loom_metrics_jsonl_client(FILE *f, const loom_client_row *r, const char *name, uint64_t examples);
/* A sink writing those rows to f: client names from names[client] (may be NULL), the examples each
 * client reported; per_client_rows 0 writes round rows only. s must outlive the sink. */
typedef struct {
    FILE *f;
    const char *const *names;
    int per_client_rows;
} loom_metrics_jsonl;
loom_metrics_sink loom_metrics_jsonl_sink(loom_metrics_jsonl *s);

/* ---- asynchronous modes ----
 *
 * Global version t counts the server's updates of the global model (0 = the initial vector). A client
 * pulls version tau (loom_engine_async_task), trains, and its update arrives later; its staleness is
 * t - tau at arrival. Clients send deltas as in synchronous rounds: u = y - x_tau, y = its model.
 *
 *   FedAsync (Xie, Koyejo, Gupta 2019, "Asynchronous Federated Optimization"): every accepted update
 *            is mixed into the global model on arrival,
 *                x_{t+1} = (1 - a) x_t + a y,   y = x_tau + u,   a = alpha * s(t - tau),
 *            computed per element in double as x_t + a ((x_tau - x_t) + c u) and rounded once to float
 *            (c = the pipeline's clip factor, 1 without clipping). alpha 0 leaves x unchanged bit for
 *            bit; alpha 1 with staleness 0 replaces x by the client's model. The server strategy is not
 *            used: FedAsync needs fedavg (its server_lr is ignored).
 *   FedBuff  (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"): the
 *            accepted updates, each scaled by s(t - tau) (no copy when s = 1), go into the pipeline's
 *            exact fixed-point weighted sum (weight = examples); after every K accepted updates the
 *            buffer's mean is handed to the server strategy (fedavg server_lr 1: x + mean delta),
 *            and t advances. With K = the number of clients, every client starting each cycle on the
 *            same version and s constant, this is synchronous FedAvg, bit for bit.
 *
 * Staleness functions s (the FedAsync paper's section 5.2; s(0) = 1 for each):
 *   constant    s = 1
 *   polynomial  s_a(d) = (d + 1)^(-a)                          (a > 0, default 0.5)
 *   hinge       s_{a,b}(d) = 1 if d <= b, else 1 / (a (d - b) + 1)  (a > 0, default 0.5; b >= 0, default 4)
 *
 * Versions in use: a task hands out a snapshot of the current version (shared by every client that
 * pulls the same version), kept until that client's update or failure is in. At most `concurrency`
 * clients hold a task at once (a further task is refused with LOOM_ESTATE until one answers), so the
 * engine keeps at most `concurrency` snapshots: O(concurrency * dim) memory, and x_tau is exact for
 * FedAsync however stale an update is. A real-time driver reports a vanished client with
 * loom_engine_async_fail to free its place.
 *
 * Refusals (verdict, then the round goes on): no task held by that client ("not sampled"; a replayed
 * upload after its task was consumed lands here too), a version newer than the current one or other
 * than the one handed out ("wrong round"), staleness above max_staleness ("stale"), another run_id
 * ("wrong round"), and the pipeline's content checks. A refused update consumes the client's task
 * except "not sampled" and "wrong round" (so a corrected upload can follow).
 *
 * Work: `rounds` is the number of versions to make (FedAsync: applied updates; FedBuff: buffer
 * flushes). Metrics: one round row per version (round = version), with the arrivals since the
 * previous version as its client rows and the staleness of the accepted ones.
 *
 * A driver's loop (the simulator's, src/sim/sim.c; a real-time server calls the same from its threads):
 *
 *     while (loom_engine_version(e) < cfg.rounds) {
 *         loom_engine_async_task(e, k, now, &task);      // client k starts on task.version (task.global)
 *         ... k trains on task.global ...
 *         loom_engine_async_submit(e, &u, now, &verdict, &made);  // u.version = task.version
 *         if (made) {                                     // a new version: evaluate and report it
 *             loom_engine_eval_plan(e, &ec, &ne); ... loom_engine_eval_submit(e, k, &res) ...
 *             loom_engine_async_end_version(e, seconds, &m);
 *         }
 *     }
 *
 * Threads: task, check, submit, fail, copy_global, eval_submit and end_version may be called from any
 * thread (one lock; an update is validated and applied under it, so arrivals are serialised in the
 * order they take the lock, and a real-time driver's result depends on that order, as FedAsync's
 * does by definition). The sink is called under that lock: it must not call the engine. The global
 * vector (loom_engine_global) may be read directly only while no submit runs; otherwise through
 * loom_engine_async_copy_global. A version made while the previous version's row is still pending
 * emits that row first (with whatever evaluation came in), so no row is lost when a driver does not
 * call end_version. */

typedef enum {
    LOOM_ENGINE_SYNC = 0,       /* synchronous rounds (open_round ... end_round) */
    LOOM_ENGINE_FEDASYNC = 1,   /* mix each update on arrival */
    LOOM_ENGINE_FEDBUFF = 2,    /* aggregate every `buffer` arrivals */
} loom_engine_mode;

typedef enum {
    LOOM_STALENESS_CONSTANT = 0,
    LOOM_STALENESS_POLY = 1,
    LOOM_STALENESS_HINGE = 2,
} loom_staleness_kind;

typedef struct {
    loom_staleness_kind kind;
    double a;                   /* polynomial exponent, hinge slope (> 0) */
    double b;                   /* hinge: staleness tolerated at full weight (>= 0) */
} loom_staleness_fn;

/* s(staleness) as defined above (a configuration that loom_staleness_check refuses gives NAN). */
double loom_staleness_weight(const loom_staleness_fn *f, uint64_t staleness);
/* LOOM_OK, or LOOM_EINVAL naming --staleness and the bad parameter. */
int loom_staleness_check(const loom_staleness_fn *f);
/* Parses "constant", "poly", "poly:A", "hinge", "hinge:A" or "hinge:A:B" (the --staleness flag;
 * omitted parameters take the defaults above). A bad string: LOOM_EINVAL naming --staleness. */
int loom_staleness_parse(const char *s, loom_staleness_fn *f);
/* "sync", "fedasync", "fedbuff" (the --mode flag); unknown: LOOM_EINVAL naming --mode. */
int loom_engine_mode_parse(const char *s, loom_engine_mode *m);
const char *loom_engine_mode_name(loom_engine_mode m);

typedef struct {
    size_t dim;
    const float *init;          /* initial global vector (dim) */
    int n_clients;              /* the population */
    const size_t *n_test;       /* (n_clients) test examples per client, NULL: no client evaluates */
    loom_pipeline_config pipe;  /* strategy, norm bound, clip, noise, aggregator (pipe.dim is set here) */
    int continual;              /* checkpoint_load accepts a checkpoint of fewer clients (continual rounds:
                                   clients joined since); otherwise the counts must match */
    int rounds;
    int sample;                 /* clients per round (0: sample_frac) */
    double sample_frac;         /* fraction of clients per round (0 and sample 0: all) */
    uint64_t seed;              /* names the sampling and evaluation streams */
    uint64_t run_id;            /* updates must carry it (0: not checked) */
    int min_updates;            /* accepted updates needed to aggregate (0 or 1: one) */
    int quorum;                 /* ready once this many are accepted (0: wait for every sampled client) */
    double deadline;            /* seconds after open_round; later submissions are late (0: none) */
    int eval_every;             /* rounds between evaluations (0 = only the last round) */
    int eval_clients;           /* evaluate at most this many clients (0 = all), chosen by seed */
    loom_metrics_sink sink;
    /* asynchronous modes (see above; ignored in LOOM_ENGINE_SYNC). rounds = versions to make;
     * sample, min_updates, quorum and deadline do not apply; eval_every counts versions. */
    loom_engine_mode mode;      /* default LOOM_ENGINE_SYNC */
    double async_alpha;         /* FedAsync alpha in [0, 1] (default 0.6) */
    loom_staleness_fn staleness;/* s (default constant) */
    int buffer;                 /* FedBuff K >= 1 (0: = concurrency) */
    int concurrency;            /* clients holding a task at once, >= 1 (0: the sample size, from sample
                                   or sample_frac, else every client) */
    long max_staleness;         /* refuse updates staler than this (0 = no limit) */
    /* differential privacy (include/loom/dp.h; mode LOOM_DP_OFF by default). Any mode: every client
     * weighs 1 in the mean, the run is refused at create when its epsilon would pass dp.epsilon_budget,
     * and the round rows carry epsilon and dp_clip; synchronous rounds only, not with scaffold.
     * central: the engine sets the pipeline's clip (dp.clip; pipe.clip_norm must be 0 or equal) and
     * its noise stage (pipe.noise must be NULL): the sum of the clipped updates gets N(0, (sigma_u
     * C)^2) per value (sigma_u = dp.noise, or sigma_delta with adaptive clipping) from the stream
     * (seed, loom_dp_stream(LOOM_DP_STREAM_CENTRAL, round)) and is divided by the number of sampled
     * clients m; adaptive clipping moves C after each aggregated round (its value is in the
     * checkpoint: metadata dp_clip). local and sgd: the clients privatize; the engine accounts. */
    loom_dp_config dp;
    /* heterogeneous clients (include/loom/hetero.h): client k's coordinate mask in round r (1-based),
     * dim bytes of LOOM_MASK_* that the engine recomputes for every update it submits (nothing extra
     * travels), which then enters the pipeline masked (loom_pipeline_add_masked; pipe.mask_pad says
     * how absent values count). NULL: every client holds the whole vector. Synchronous rounds, the
     * fixed-point mean and strategies without control variates only. */
    int (*mask)(void *ud, int client, int round, uint8_t *mask);
    void *mask_ud;
    /* Clients removed from the population (unlearning, include/loom/unlearn.h): (n_clients) bytes, 1 =
     * removed, NULL = none. Sampling is unchanged ((seed, round) over all n_clients, so every other
     * client is sampled in the same rounds); a removed client is then dropped from its rounds' lists, and
     * the round runs with the others only. Synchronous rounds only. */
    const unsigned char *excluded;
    /* Masked updates may travel as their TRAIN values only (include/loom/personal.h): an update of
     * that length is scattered back to dim values by the client's mask before the pipeline.
     * weight (NULL: the update's examples): the weight of client's update in its round from the
     * round's global vector and the update (dim floats each), a whole number in 1..LOOM_FX_MAX_WEIGHT
     * (HetLoRA's sparsity weights: loom_hetero_weight_cb). Not with central DP (uniform weights). */
    int (*weight)(void *ud, int client, int round, const float *global, const float *update, uint64_t *w);
    void *weight_ud;
} loom_engine_config;

typedef struct loom_engine loom_engine;

typedef struct {
    int round;                  /* 1-based */
    uint64_t version;           /* global model version: round - 1 in synchronous rounds */
    uint64_t run_id;
    const float *global;        /* (dim), valid until close_round */
    const float *server_control;/* (dim) scaffold's c, NULL otherwise */
} loom_task;

void loom_engine_defaults(loom_engine_config *c);
/* Validates the configuration (naming the flag of a bad value) and builds the pipeline. scaffold
 * with num_clients 0 gets the population. */
int loom_engine_create(loom_engine **out, const loom_engine_config *c);
void loom_engine_free(loom_engine *e);

/* Clients of round `round` (0-based): a sorted subset of [0, n_clients) of the configured size, from
 * (seed, round) by a partial Fisher-Yates shuffle. clients holds n_clients ints. */
int loom_engine_sample(int n_clients, int sample, double sample_frac, uint64_t seed, int round, int *clients,
                       int *n);

int loom_engine_next_round(const loom_engine *e); /* 0-based index of the next round to open */
float *loom_engine_global(loom_engine *e);         /* (dim) the global vector (write only between rounds) */
loom_strategy *loom_engine_strategy(loom_engine *e);
loom_pipeline *loom_engine_pipeline(loom_engine *e);
/* Continues at next_round (after the driver loaded the global vector and the strategy state). */
int loom_engine_restore(loom_engine *e, int next_round);

/* ---- checkpoints, shared by the drivers ----
 * The engine's part of a run checkpoint, added to w: the global vector under mf's names; unless final,
 * the strategy's named state as tensors "strategy.NAME"; metadata next_round, dim, loom_tvec,
 * loom_tvec_dim, clients, seed and strategy. A driver adds its own state (its clients', a run id) to the
 * same writer and writes it (the data are referenced until then: write before the next round). */
int loom_engine_checkpoint_add(loom_engine *e, loom_st_writer *w, const loom_tvec *mf, int next_round,
                               int final);
/* Restores what checkpoint_add wrote to f (path names it in errors): the metadata must match this
 * engine (dim, clients, seed, strategy: a difference is an error naming the key), then the vector, the
 * strategy state, and loom_engine_restore at the checkpoint's next round (*next_round). */
int loom_engine_checkpoint_load(loom_engine *e, const loom_st_file *f, const loom_tvec *mf, const char *path,
                                int *next_round);

/* Opens round next_round at time now: samples; *clients (n of them, sorted) stays valid until
 * end_round. All rounds done: LOOM_ESTATE. */
int loom_engine_open_round(loom_engine *e, double now, const int **clients, int *n);
int loom_engine_task(loom_engine *e, loom_task *t);
/* Submits a client's update at time now. Accepted: LOOM_OK. Refused: a negative code, the reason in
 * *verdict (may be NULL) and loom_errmsg; the round goes on. Refusals: "wrong round" (another round,
 * or another run_id), "not sampled", "duplicate", "late" (after the deadline or after close),
 * "unsupported codec", and the pipeline's (length, non-finite, norm, range, weight, control). */
int loom_engine_submit(loom_engine *e, const loom_update *u, double now, loom_update_verdict *verdict);
/* What loom_engine_submit would answer at time now, without recording anything: the protocol checks
 * (run, round, sampled, duplicate, late) and the pipeline's content checks (loom_pipeline_check). A
 * network server checks an upload with it, makes it durable, acknowledges it, and submits the stored
 * updates in the sampled order when the round closes (so the result never depends on arrival order). */
int loom_engine_check(loom_engine *e, const loom_update *u, double now, loom_update_verdict *verdict);
/* Time the open round opened (the `now` given to open_round; 0 before the first round). */
double loom_engine_opened_at(const loom_engine *e);
/* A sampled client reports that it could not train (reason is logged): its row says "client failure"
 * and LOOM_OK is returned (the report is recorded; the client's update counts as refused). A report
 * that is not sampled, duplicate or late is refused like a submission. */
int loom_engine_fail(loom_engine *e, int round, int client, const char *reason, double now,
                     loom_update_verdict *verdict);
/* 1 when the round may close at time now: every sampled client answered, the quorum of accepted
 * updates is reached, or the deadline has passed. */
int loom_engine_ready(loom_engine *e, double now);
/* Closes the round: clients that did not answer are marked "no update"; with at least min_updates
 * accepted the pipeline aggregates into the global vector, else it stays (a warning is logged). An
 * error here (the strategy's) is a server error, returned. */
int loom_engine_close_round(loom_engine *e, double now);
/* The closed round's evaluation hand-out: the clients to evaluate (sorted), n = 0 when this round
 * does not evaluate (evaluation runs on the last round and every eval_every rounds). */
int loom_engine_eval_plan(loom_engine *e, const int **clients, int *n);
/* One client's evaluation result (thread-safe). A client with no counted tokens is left out. */
int loom_engine_eval_submit(loom_engine *e, int client, const loom_eval_result *r);
/* Ends the round: pools the evaluation, emits the metrics rows to the sink and fills *m (may be NULL). */
int loom_engine_end_round(loom_engine *e, double seconds, loom_round_metrics *m);

/* ---- asynchronous modes (the synchronous round calls refuse with LOOM_ESTATE in these modes;
 * loom_engine_eval_plan and loom_engine_eval_submit serve the version last made) ---- */

loom_engine_mode loom_engine_get_mode(const loom_engine *e);
/* The current global version t (thread-safe; in synchronous rounds: the rounds ended). */
uint64_t loom_engine_version(const loom_engine *e);
/* Copies the global vector (dim floats) and its version under the lock, for a real-time driver's
 * checkpoint or download while submits may run (loom_engine_global is only safe between them). */
int loom_engine_async_copy_global(loom_engine *e, float *out, uint64_t *version);
/* The number of clients holding a task (thread-safe). */
int loom_engine_async_training(const loom_engine *e);
/* Hands client `client` the current version: t->version, t->round = version + 1, t->global = a
 * snapshot that stays valid until the client's update or failure is in (the global vector itself
 * changes under a training client). A client that already holds a task gets the same task again.
 * Refused with LOOM_ESTATE: every version made ("all N versions are made"), or `concurrency` clients
 * already training; LOOM_EINVAL: no such client. */
int loom_engine_async_task(loom_engine *e, int client, double now, loom_task *t);
/* An update trained on u->version arrives at time now (u->round is not used). Accepted: LOOM_OK, and
 * *made (may be NULL) is 1 when this update made a new version (FedAsync: every accepted one;
 * FedBuff: every K-th). Refused: a negative code, the reason in *verdict and loom_errmsg. An error of
 * the server strategy during a FedBuff flush is returned as the call's error with verdict ACCEPTED. */
int loom_engine_async_submit(loom_engine *e, const loom_update *u, double now, loom_update_verdict *verdict,
                             int *made);
/* What loom_engine_async_submit would answer now, without recording or applying anything (a network
 * server checks an upload with it, makes it durable, then submits it). The staleness is that of this
 * moment: it can only grow before the submit. */
int loom_engine_async_check(loom_engine *e, const loom_update *u, double now, loom_update_verdict *verdict);
/* Client `client` could not train (or vanished): its task is released and its row says "client
 * failure". A client without a task: LOOM_EINVAL. */
int loom_engine_async_fail(loom_engine *e, int client, const char *reason, double now);
/* Emits the row of the version last made (pooling its evaluation) to the sink and fills *m (may be
 * NULL): seconds is the driver's wall time for it. No version pending: LOOM_ESTATE. */
int loom_engine_async_end_version(loom_engine *e, double seconds, loom_round_metrics *m);

/* ---- secure aggregation: the round's updates as one sum ----
 * loom_engine_submit_sum admits n sampled clients of round `round` together, with their weighted sum
 * instead of their updates (a secure-sum backend's output: sum (len = dim) = sum_i w_i u_i, total
 * weight W = sum_i w_i), and folds it into the pipeline (loom_pipeline_add_sum). members[i] describes
 * client i as an update would (client, examples, loss, tokens, wire_bytes; its values are not read).
 * Every member must be admissible as by loom_engine_submit (round open, sampled, not answered, before
 * the deadline at `now`), else the whole sum is refused with LOOM_EINVAL/LOOM_ESTATE naming the client
 * and nothing is recorded; a sum the pipeline refuses marks every member's row with its verdict.
 * Accepted: every member's row is "accepted". Driver's thread (or any thread, like submit). */
int loom_engine_submit_sum(loom_engine *e, int round, const double *sum, size_t len, uint64_t total_weight,
                           const loom_update *members, size_t n, double now);

/* ---- a round shared by several processes (loom sim --mpi, include/loom/mpi.h) ----
 * Every process runs an engine with the same configuration, so each opens the same rounds with the
 * same sample; each submits (or fails) only its own clients. The driver then sums the processes'
 * shares element-wise (MPI_SUM over int64: exact in any order) and imports the sum into every engine,
 * which then holds what one engine that received every client would: the rows, the counts and the
 * pipeline's fixed-point sum (loom_pipeline_share_export). Close and the strategy step then give the
 * same global vector on every process, bit for bit. Words (loom_engine_share_len):
 *   round open      8 per sampled client (answered, verdict, examples, tokens, and the bits of loss,
 *                   norm and bytes; zeros for a client this process did not hear from), then the
 *                   pipeline's share
 *   round closed    7 per client to evaluate (done, the bits of loss_sum, tokens, correct, count,
 *                   attack_hits, attack_count; zeros when evaluated elsewhere)
 * A client reported by two processes, or a sum that is not made of such shares, is refused with
 * LOOM_EINVAL/LOOM_ERANGE; no open or closed round, or a submission still in flight, LOOM_ESTATE.
 * Synchronous rounds only (LOOM_EUNSUPPORTED otherwise; masks and buffered aggregators too, from the
 * pipeline). Driver's thread. */
size_t loom_engine_share_len(const loom_engine *e);
int loom_engine_share_export(loom_engine *e, int64_t *words);
int loom_engine_share_import(loom_engine *e, const int64_t *words);

/* ---- a reference update (FLTrust's server update on its root data) ----
 * loom_engine_wants_reference: 1 when the pipeline's aggregator needs one each round; the driver then
 * computes it from the round's global model (loom_engine_task) and hands it over with
 * loom_engine_set_reference while the round is open, before it closes (loom_pipeline_set_reference). */
int loom_engine_wants_reference(const loom_engine *e);
int loom_engine_set_reference(loom_engine *e, int round, const float *ref, size_t len);

#ifdef __cplusplus
}
#endif
#endif
