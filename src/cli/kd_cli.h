/* Knowledge-distillation flags shared by loom train and loom sim (--teacher, --kd-temp, --kd-alpha). */
#ifndef LOOM_CLI_KD_CLI_H
#define LOOM_CLI_KD_CLI_H

#include "loom/model.h"
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

#endif
