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
 *   MPI                     a driver on the root rank; ranks run clients and send encoded updates.
 *   async rounds            FedAsync/FedBuff: a buffered variant of open/close where an update's
 *                           version (loom_update.version) may lag; the staleness weight enters at the
 *                           pipeline's weight, the buffer size is the quorum.
 *   secure aggregation      clients send masked fixed-point vectors; the aggregate stage sums them in
 *                           the same 128-bit integers (the masks cancel in the exact sum).
 *   DP                      clip_norm (pipeline clip stage) + a loom_noise_fn (pipeline noise stage);
 *                           DP-SGD on the client side is a loom_client_algo.
 *   robust aggregators      Krum, median, trimmed mean: a LOOM_AGG_BUFFERED loom_aggregator_ops.
 *   zeroth-order clients    a loom_client_algo whose updates use the seed-scalar codec.
 */
#ifndef LOOM_ENGINE_H
#define LOOM_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "loom/pipeline.h"
#include "loom/strategy.h"
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
    int evaluated;              /* clients evaluated this round (0 = no evaluation) */
    int aggregated;             /* 1 when the global model was updated (accepted >= min_updates) */
    double bytes_down, bytes_up; /* down: the f32 global (and control) per sampled client; up: the
                                    submitted updates' wire_bytes (f32 size when not given) */
    double seconds;             /* as given by the driver to end_round */
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

typedef struct {
    size_t dim;
    const float *init;          /* initial global vector (dim) */
    int n_clients;              /* the population */
    const size_t *n_test;       /* (n_clients) test examples per client, NULL: no client evaluates */
    loom_pipeline_config pipe;  /* strategy, norm bound, clip, noise, aggregator (pipe.dim is set here) */
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

#ifdef __cplusplus
}
#endif
#endif
