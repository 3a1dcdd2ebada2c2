/* The cost of DP-SGD on a LoRA set: median time of a training step (forward, backward, optimizer) of
 * the non-private trainer, of DP-SGD with per-example gradients from one batched backward (the
 * default), and of DP-SGD with the row loop (each example alone at batch 1), on random tokens.
 *   dpsgd [MODEL [B [T [STEPS [RANK [TARGETS]]]]]]
 * MODEL: a model directory or llama2.c file, or a built-in shape (gpt2-tiny, llama-tiny, ...);
 * default $LOOM_SHARED/data/stories260K/stories260K.bin (or ../shared/...). Defaults B 8, T 64,
 * 30 timed steps (after 3 warm-up steps), LoRA rank 8 on the default targets. The three routes take
 * turns step by step (each with its own vector), so they see the same machine load.
 * Prints one line per route: the median wall-clock and CPU time of a step (the CPU time of the process,
 * which a machine shared with other jobs disturbs far less; run with OMP_NUM_THREADS=1 for it to be
 * the step's work) and their ratios to the plain step. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/train.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { ROUTES = 3 };

/* CPU seconds of the whole process (all its threads): on a machine shared with other jobs this moves
 * far less than the wall clock. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Median seconds of `steps` steps of each route's trainer, each on its own copy of the LoRA vector. The
 * routes take turns step by step, so a load that comes and goes on the machine falls on all of them. */
static int time_steps(const loom_model *m, const loom_tset *ts, const loom_train_config *tc, const int32_t *tok,
                      const int32_t *tgt, int steps, double *median, double *cpu_median, double *loss) {
    size_t dim = loom_tset_dim(ts);
    float *vec[ROUTES] = {NULL};
    loom_trainer *t[ROUTES] = {NULL};
    double *s = malloc((size_t)ROUTES * steps * sizeof *s), *u = malloc((size_t)ROUTES * steps * sizeof *u);
    int rc = s && u ? LOOM_OK : LOOM_ENOMEM;
    for (int k = 0; k < ROUTES && rc == LOOM_OK; k++) {
        vec[k] = loom_alloc(dim * sizeof(float));
        if (!vec[k]) {
            rc = LOOM_ENOMEM;
            break;
        }
        memcpy(vec[k], loom_tset_data((loom_tset *)ts), dim * sizeof(float));
        rc = loom_trainer_create_peft(&t[k], m, loom_model_params_const(m), ts, vec[k], &tc[k]);
    }
    size_t bt = (size_t)tc[0].B * tc[0].T;
    for (int i = -3; i < steps && rc == LOOM_OK; i++)
        for (int k = 0; k < ROUTES && rc == LOOM_OK; k++) {
            float l;
            size_t o = (size_t)((i + 3) % 4) * bt;
            double t0 = loom_now(), c0 = cpu_now();
            rc = loom_trainer_step(t[k], tok + o, tgt + o, &l, NULL);
            if (i >= 0) {
                s[(size_t)k * steps + i] = loom_now() - t0;
                u[(size_t)k * steps + i] = cpu_now() - c0;
            }
            loss[k] = l;
        }
    for (int k = 0; k < ROUTES && rc == LOOM_OK; k++) {
        qsort(s + (size_t)k * steps, (size_t)steps, sizeof *s, cmp_double);
        median[k] = s[(size_t)k * steps + steps / 2];
        qsort(u + (size_t)k * steps, (size_t)steps, sizeof *u, cmp_double);
        cpu_median[k] = u[(size_t)k * steps + steps / 2];
    }
    for (int k = 0; k < ROUTES; k++) {
        loom_trainer_free(t[k]);
        loom_free(vec[k]);
    }
    free(s);
    free(u);
    return rc;
}

int main(int argc, char **argv) {
    char defpath[4096];
    const char *sh = getenv("LOOM_SHARED");
    snprintf(defpath, sizeof defpath, "%s/data/stories260K/stories260K.bin", sh && *sh ? sh : "../shared");
    const char *model = argc > 1 ? argv[1] : defpath;
    int B = argc > 2 ? atoi(argv[2]) : 8, T = argc > 3 ? atoi(argv[3]) : 64, steps = argc > 4 ? atoi(argv[4]) : 30;
    int rank = argc > 5 ? atoi(argv[5]) : 8;
    const char *targets = argc > 6 ? argv[6] : NULL;
    if (B < 1 || B > 4096 || T < 1 || T > 65536 || steps < 1 || steps > 100000 || rank < 1) {
        fprintf(stderr, "usage: dpsgd [MODEL [B [T [STEPS [RANK [TARGETS]]]]]]\n");
        return 2;
    }
    loom_model *m = NULL;
    loom_config cfg;
    int rc = loom_config_named(&cfg, model) == LOOM_OK ? loom_model_create(&m, &cfg, 1) : loom_model_load(&m, model);
    if (rc != LOOM_OK) {
        fprintf(stderr, "dpsgd: %s: %s\n", model, loom_errmsg());
        return 1;
    }
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = rank;
    if (targets) snprintf(pc.target_modules, sizeof pc.target_modules, "%s", targets);
    loom_tset *ts = NULL;
    if ((rc = loom_tset_create(&ts, m, &pc, 7)) != LOOM_OK) {
        fprintf(stderr, "dpsgd: LoRA set: %s\n", loom_errmsg());
        loom_model_free(m);
        return 1;
    }
    /* LoRA B starts at 0: move it so every gradient is non-trivial */
    float *v = loom_tset_data(ts);
    loom_rng r;
    loom_rng_init(&r, 5, 1);
    for (size_t i = 0; i < loom_tset_dim(ts); i++) v[i] += 0.01f * (float)loom_rng_normal(&r);
    const loom_config *mc = loom_model_config(m);
    size_t n = (size_t)4 * B * T;
    int32_t *tok = malloc(n * sizeof *tok), *tgt = malloc(n * sizeof *tgt);
    for (size_t i = 0; i < n; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)mc->vocab);
        tgt[i] = (int32_t)loom_rng_below(&r, (uint32_t)mc->vocab);
    }
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.B = B;
    tc.T = T;
    tc.clip = 0;
    tc.seed = 3;
    printf("model %s: %d layers, dim %d, %zu parameters; LoRA rank %d on %s: %zu floats; batch %d x %d, %d steps\n",
           model, mc->n_layer, mc->dim, loom_model_n_params(m), rank, pc.target_modules[0] ? pc.target_modules : "defaults",
           loom_tset_dim(ts), B, T, steps);
    const char *names[ROUTES] = {"plain", "dp-sgd batched", "dp-sgd row loop"};
    loom_train_config c[ROUTES];
    for (int k = 0; k < ROUTES; k++) {
        c[k] = tc;
        if (k > 0) {
            c[k].dp_sgd = 1;
            c[k].dp_clip = 1.0f;
            c[k].dp_noise = 1.0f;
            c[k].dp_row_loop = k == 2;
        }
    }
    double med[ROUTES] = {0}, cpu[ROUTES] = {0}, loss[ROUTES] = {0};
    rc = time_steps(m, ts, c, tok, tgt, steps, med, cpu, loss);
    for (int k = 0; k < ROUTES && rc == LOOM_OK; k++)
        printf("%-16s median step %9.3f ms wall  x%.3f   %9.3f ms cpu  x%.3f   (last loss %.4f)\n", names[k], med[k] * 1e3,
               med[k] / med[0], cpu[k] * 1e3, cpu[k] / cpu[0], loss[k]);
    if (rc != LOOM_OK) fprintf(stderr, "dpsgd: %s\n", loom_errmsg());
    free(tok);
    free(tgt);
    loom_tset_free(ts);
    loom_model_free(m);
    return rc == LOOM_OK ? 0 : 1;
}
