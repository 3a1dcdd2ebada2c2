/* A federated run's configuration, shared by loom sim, loom server and loom client: the flags (and
 * --config RUN.json keys) of loom sim, and how they turn into the simulator's, the engine's and a
 * client's settings. One table, so a RUN.json means the same thing to the simulator and to a server,
 * and a client trains with exactly the settings the server resolved. */
#ifndef LOOM_CLI_RUNSPEC_H
#define LOOM_CLI_RUNSPEC_H

#include "cli/args.h"
#include "cli/common.h"
#include "cli/kd_cli.h"
#include "loom/dataset.h"
#include "loom/partition.h"
#include "loom/sim.h"
#include "loom/train.h"

typedef struct {
    /* model */
    const char *model, *tokenizer;
    cli_peft_opts peft;
    /* data (the simulator's; a networked client has its own --data) */
    const char *data, *format, *text_col, *label_col, *labels, *key, *partition, *clients_dir;
    int clients, min_examples, min_lines;
    float alpha, test_frac;
    /* federation */
    const char *strategy, *sample, *compress, *mode, *staleness;
    int rounds, local_steps, min_updates, scaffold_option, eval_every, eval_clients, buffer, concurrency;
    float server_lr, server_momentum, beta1, beta2, tau, mu, max_norm, update_clip, deadline, async_alpha;
    long max_staleness;
    /* robust aggregation (--aggregator; include/loom/pipeline.h): the rule's settings live here */
    const char *aggregator;
    int agg_f, agg_m, agg_iters, root_examples;
    const char *root_data; /* fltrust: the server's own data file (NULL in loom sim: from the clients') */
    float agg_beta, agg_bound, agg_tau;
    loom_robust_config robust_cfg;
    /* differential privacy (include/loom/dp.h): numbers as text, parsed in double precision */
    const char *dp, *dp_clip, *dp_noise, *dp_delta, *dp_adaptive, *dp_clip_lr, *dp_clip_noise, *dp_epsilon;
    long dp_min_examples;
    /* client training */
    const char *optimizer;
    const char *precision; /* f32 | bf16: the clients' matmul precision */
    int B, T;
    float lr, momentum, wd, clip;
    long seed;
    /* simulator only (accepted in a server's RUN.json, and ignored there) */
    const char *faults, *out, *plot, *prompt;
    int workers, client_threads, checkpoint_every, resume, sample_len, quiet_clients, compare;
    float step_seconds, time_spread, progress_every;
    int mpi; /* loom sim --mpi: one run over the processes of mpirun (include/loom/mpi.h) */
    /* secure aggregation (loom sim --secagg; sim_secure.c): the backend's settings live here, so they
     * outlive the run */
    int secagg, secagg_threshold, secagg_neighbours, secagg_drop;
    float secagg_clip;
    loom_sim_secagg secagg_cfg;
    /* Paillier aggregation (loom sim --he paillier; sim_secure.c) */
    const char *he;
    int he_key_bits;
    float he_clip;
    long he_max_dim;
    loom_sim_paillier paillier_cfg;
    /* simulated attackers (loom sim --attack; sim_attack.c) */
    const char *attack, *attackers;
    float attack_scale;
    const char *backdoor_trigger; /* --attack backdoor|embedding: NULL, NAN and -1 when not given */
    float backdoor_frac;
    int backdoor_target;
    /* zeroth-order clients (--client-algo mezo|fedkseed; include/loom/zo.h) */
    const char *client_algo, *zo_restore, *seed_probs;
    float zo_eps, zo_lr; /* zo_lr NAN: --lr when given, else LOOM_ZO_LR_DEFAULT */
    int seed_pool;
    int kseed_probs;     /* --seed-probs as LOOM_KSEED_* (set by cli_run_federation) */
    /* ---- heterogeneous clients (loom sim; include/loom/hetero.h) ---- */
    const char *client_ranks, *hetlora_agg, *fedra_layers, *profile;
    int lora_freeze_a;
    float hetlora_prune;
    /* ---- unlearning (loom sim; include/loom/unlearn.h) ---- */
    int keep_checkpoints, keep_updates, replay_no_rescale;
    const char *exclude_client, *start_from, *replay_updates;
    /* ---- split learning (--split-layer; include/loom/split.h): -1 = off ---- */
    int split_layer;
    /* ---- personalization (include/loom/personal.h) ---- */
    const char *private_spec;
    int finetune_steps, client_eval;
    /* ---- decentralized federation (loom sim --decentralized; include/loom/decentral.h) ---- */
    int decentralized, gossip_steps, push_sum;
    const char *topology; /* NULL: ring */
    /* ---- distillation (loom sim; include/loom/distill.h, cli/kd_cli.h) ---- */
    cli_kd kd;
    cli_feddf feddf;
    cli_synth synth;
    cli_continual cont;
} cli_run;

#define CLI_RUN_MAX_OPTS 240
void cli_run_init(cli_run *r);
/* Writes the run's option entries into opts (room for CLI_RUN_MAX_OPTS) and returns their number. */
int cli_run_opts(cli_run *r, cli_opt *opts);
/* The settings a client needs to train as the server resolved them, as a JSON object text (release
 * with free): the client-training and federation keys, not the model, data or simulator keys. */
char *cli_run_client_json(cli_run *r);
/* Applies such a JSON text (from a server) to r: unknown keys or bad values fail, naming `from`. */
int cli_run_apply_json(cli_run *r, const char *text, const char *from, cli_config **cfg);

/* The federation settings of sc (strategy and its parameters, fit, sampling among n_clients, bounds,
 * deadline, seed, evaluation, differential privacy: sc->dp, local DP in sc->fit, DP-SGD in tc; --dp sgd's
 * sc->dp.sgd_q comes from --dp-min-examples, which loom sim replaces by its partition's fewest) and the
 * clients' trainer configuration tc. Errors are printed naming
 * the flag (prefix: "loom CMD: "); returns 0 or -1. */
int cli_run_federation(cli_run *r, const char *cmd, size_t n_clients, loom_sim_config *sc, loom_train_config *tc);

/* One client's data from its own file (format flags of r): *ds, and cl's train and test lists (the
 * test split drawn with the run's seed and the client's index, as loom sim draws it) and its name
 * (the file's stem). Release with cli_client_data_free. */
int cli_client_data(const cli_run *r, const char *path, const loom_tokenizer *tok, size_t index, loom_dataset **ds,
                    loom_client *cl);
void cli_client_data_free(loom_client *cl);
/* FLTrust's root data: path loaded as a client's file (the run's data options and --test-frac split),
 * then min(--root-examples, its training examples) of them drawn by the seed (stream LOOM_STREAM_ROOT)
 * into *idx (malloc'd, *n of them). loom sim and loom server draw alike, so their runs agree. */
int cli_root_data(const cli_run *r, const char *path, const loom_tokenizer *tok, loom_dataset **ds, loom_client *cl,
                  uint32_t **idx, size_t *n);
/* The files of a clients directory (regular files not starting with '.'), in byte order of their
 * names: *paths (n strings, release with cli_free_list). An empty or unreadable directory fails. */
int cli_list_dir(const char *dir, char ***paths, size_t *n);
void cli_free_list(char **paths, size_t n);

/* A client's trainer over its own vector: the whole model (ts NULL) or the trainable set ts over the
 * shared frozen base (the simulator's workers and a networked client). */
typedef struct {
    const loom_model *m;
    const loom_tset *ts;
    loom_train_config tc;
} cli_trainer_ud;
int cli_trainer_make(void *ud, loom_trainer **tr, float **vec);
void cli_trainer_free(void *ud, loom_trainer *tr, float *vec);

/* --precision VALUE of command cmd ("loom CMD") as LOOM_PREC_* in *prec; an unknown value is printed
 * naming the flag (returns -1). bf16 on a CPU without AVX-512 BF16 prints one note that the run stays
 * in f32 (the trainers fall back by themselves) and sets *prec to LOOM_PREC_F32. */
int cli_precision(const char *value, const char *cmd, int *prec);

/* The SHA-256 of a model's f32 parameters, little-endian in tensor order: a PEFT run's frozen base,
 * which a networked client must hold identically (docs/protocol.md, hello). */
int cli_base_sha256(const loom_model *m, char out[65]);

/* Logs every library event (info and above) as one timestamped line on stderr, tagged `who`
 * (a string that outlives the program's run): loom server and loom client. */
void cli_event_log(const char *who);

#endif
