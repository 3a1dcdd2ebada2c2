/* Knowledge-distillation flags shared by loom train and loom sim (--teacher, --kd-temp, --kd-alpha). */
#ifndef LOOM_CLI_KD_CLI_H
#define LOOM_CLI_KD_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "loom/model.h"
#include "loom/pipeline.h"
#include "loom/sim.h"
#include "loom/train.h"

typedef struct {
    const char *teacher;
    float temp, alpha;
    loom_model *m; /* the loaded teacher */
} cli_kd;

void cli_kd_init(cli_kd *k);
#define CLI_KD_OPTS(k)                                                                                                  \
    {"teacher", OPT_STR, &(k).teacher, "knowledge distillation: a teacher model (directory, .bin or .gguf; the student's vocabulary, any size) whose softened outputs the training matches", 0, 0}, \
    {"kd-temp", OPT_FLOAT, &(k).temp, "--teacher: softmax temperature T of the distillation term", 0.01, 100},           \
    {"kd-alpha", OPT_FLOAT, &(k).alpha, "--teacher: weight alpha of alpha T^2 KL(teacher || student) + (1 - alpha) cross-entropy", 0, 1}

/* Loads k->teacher (if given) and sets tc's distillation fields; student is the model trained, named
 * student_path in messages. A vocabulary mismatch names both files. Errors are printed ("loom CMD: ...");
 * returns 0 or -1. */
int cli_kd_setup(cli_kd *k, const char *cmd, const loom_model *student, const char *student_path, int T,
                 loom_train_config *tc);
void cli_kd_free(cli_kd *k);

/* FedDF's server distillation (--server-distill, --distill-steps, --distill-temp, --distill-lr). */
struct loom_feddf;
struct loom_tset;
struct loom_tokenizer;
typedef struct {
    const char *text;
    int steps;
    float temp, lr;
    int32_t *tokens;
    size_t n_tokens;
    struct loom_feddf *f;
} cli_feddf;

void cli_feddf_init(cli_feddf *d);
#define CLI_FEDDF_OPTS(d)                                                                                                   {"server-distill", OPT_STR, &(d).text, "FedDF: after each round's aggregation the server distils the clients' ensemble (the average of their output distributions) into the global model on this unlabeled public text file", 0, 0},     {"distill-steps", OPT_INT, &(d).steps, "--server-distill: server AdamW steps per round (0 = plain aggregation)", 0, 1000000},     {"distill-temp", OPT_FLOAT, &(d).temp, "--server-distill: softmax temperature of the ensemble and the global model", 0.01, 100},     {"distill-lr", OPT_FLOAT, &(d).lr, "--server-distill: the server's AdamW learning rate", 0, 10}

/* Loads d->text (if given) with tok and creates the distiller for model m and set ts (NULL: the whole
 * model) with batches of B x T; *post and *post_ud are then the pipeline's post stage. Errors printed
 * ("loom CMD: ..."); returns 0 or -1. */
int cli_feddf_setup(cli_feddf *d, const char *cmd, const loom_model *m, const struct loom_tset *ts,
                    const struct loom_tokenizer *tok, int B, int T, uint64_t seed, loom_post_fn *post_fn, void **post_ud);
void cli_feddf_free(cli_feddf *d);

/* Synthetic data (--synthetic, --synthetic-below, --synthetic-teacher, --synthetic-len,
 * --synthetic-temp, --synthetic-prompt). */
struct loom_dataset;
struct loom_partition;
typedef struct {
    int n, below, len;
    float temp;
    const char *teacher, *prompt;
    size_t mixed; /* clients that took the samples */
} cli_synth;
void cli_synth_init(cli_synth *s);
#define CLI_SYNTH_OPTS(s)                                                                                               \
    {"synthetic", OPT_INT, &(s).n, "synthetic data: samples the initial global model (or --synthetic-teacher) writes before the first round, mixed into the training of the clients with little data (0 = off)", 0, 1000000}, \
    {"synthetic-below", OPT_INT, &(s).below, "--synthetic: clients with fewer training examples than this take the samples (0 = every client); the samples count in a client's weight", 0, 1e9}, \
    {"synthetic-teacher", OPT_STR, &(s).teacher, "--synthetic: the model that writes the samples (the federation's vocabulary; default the initial global model)", 0, 0}, \
    {"synthetic-len", OPT_INT, &(s).len, "--synthetic: tokens per sample, prompt included (0 = --seq + 1)", 0, 1048576}, \
    {"synthetic-temp", OPT_FLOAT, &(s).temp, "--synthetic: sampling temperature (0 = greedy)", 0, 100}, \
    {"synthetic-prompt", OPT_STR, &(s).prompt, "--synthetic: text every sample starts from, after BOS when the model has one (default: a newline)", 0, 0}

/* Continual rounds (--continual, --retention-test FILE). */
struct loom_trainer;
typedef struct {
    int continual;
    const char *retention;
    int B, T;
    void *ts_data;              /* the text's token stream (textdata.h) */
    struct loom_trainer *tr;    /* the evaluator over its own vector */
    float *vec;
    size_t dim;
    double last;                /* the last round's retention loss */
} cli_continual;
void cli_continual_init(cli_continual *c);
#define CLI_CONTINUAL_OPTS(c)                                                                                           \
    {"continual", OPT_FLAG, &(c).continual, "with --resume: the run continues with new data or new clients (a larger --clients or --clients-dir, another --data or --partition); the checkpoint's clients keep their state by index, new ones start fresh", 0, 0}, \
    {"retention-test", OPT_STR, &(c).retention, "a held-out text file of earlier data: after every round the global model's loss on it (windows of --seq, as loom eval) goes to metrics.jsonl as a retention row, to show forgetting", 0, 0}

/* Loads c->retention (if given) and sets sc's round evaluation over model m and set ts (NULL: the whole
 * model) with batches of B x T; sets sc->continual. Errors printed; 0 or -1. */
int cli_continual_setup(cli_continual *c, const char *cmd, const loom_model *m, const struct loom_tset *ts,
                        const struct loom_tokenizer *tok, int B, int T, loom_sim_config *sc);
void cli_continual_free(cli_continual *c);

/* With s->n > 0: generates the samples from the model (or s->teacher), replaces *ds by a copy with the
 * samples appended (the old one is freed) and mixes them into part. Errors printed; 0 or -1. */
int cli_synth_setup(cli_synth *s, const char *cmd, const loom_model *m, const struct loom_tset *ts, const float *vec,
                    const struct loom_tokenizer *tok, int T, uint64_t seed, struct loom_dataset **ds,
                    struct loom_partition *part);

#endif
