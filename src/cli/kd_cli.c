/* --teacher, --kd-temp, --kd-alpha (see kd_cli.h). */
#include "cli/kd_cli.h"

#include <stdio.h>

#include "cli/args.h"
#include "loom/core.h"

void cli_kd_init(cli_kd *k) {
    k->teacher = NULL;
    k->temp = 2.0f;
    k->alpha = 0.5f;
    k->m = NULL;
}

int cli_kd_setup(cli_kd *k, const char *cmd, const loom_model *student, const char *student_path, int T,
                 loom_train_config *tc) {
    if (!k->teacher) return 0;
    if (loom_model_load(&k->m, k->teacher) != LOOM_OK) {
        fprintf(stderr, "loom %s: --teacher %s: %s\n", cmd, k->teacher, loom_errmsg());
        return -1;
    }
    const loom_config *tcfg = loom_model_config(k->m), *scfg = loom_model_config(student);
    if (tcfg->vocab != scfg->vocab) {
        fprintf(stderr, "loom %s: --teacher %s has a vocabulary of %d tokens, --model %s one of %d: distillation needs "
                        "the same tokenizer\n", cmd, k->teacher, tcfg->vocab, student_path, scfg->vocab);
        return -1;
    }
    if (T > tcfg->max_seq) {
        fprintf(stderr, "loom %s: --seq %d exceeds --teacher %s's %d positions\n", cmd, T, k->teacher, tcfg->max_seq);
        return -1;
    }
    tc->kd_teacher = k->m;
    tc->kd_teacher_params = NULL;
    tc->kd_temp = k->temp;
    tc->kd_alpha = k->alpha;
    fprintf(stderr, "  distillation from %s (%zu parameters): T %g, alpha %g\n", k->teacher, loom_model_n_params(k->m),
            (double)k->temp, (double)k->alpha);
    return 0;
}

void cli_kd_free(cli_kd *k) {
    loom_model_free(k->m);
    k->m = NULL;
}
