/* Peak memory of one client's training: MeZO (forward passes only) against back-propagation, on the
 * same model, trainable set and batch. One route per process, so each peak RSS is that route's alone:
 *   zo_memory ROUTE [SHAPE [B [T [STEPS [PEFT]]]]]
 * ROUTE: mezo (forward-only trainer, restore by copy), mezo-inplace (no copy of the vector), sgd
 * (back-propagation, plain SGD: no optimizer state) or adamw (back-propagation, AdamW's two moments).
 * SHAPE: a built-in shape or a model directory (default gpt2-124m, random weights); B 4, T 128,
 * STEPS 2 training steps on random tokens; PEFT: full (default) or lora (rank 8 on the default targets).
 * Prints the workspace bytes, the trainer's vectors and the process's peak RSS (what the kernel
 * reports: the model's weights, the trainer, and the run-time's own pages). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/train.h"
#include "loom/zo.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: zo_memory mezo|mezo-inplace|sgd|adamw [SHAPE [B [T [STEPS [full|lora]]]]]\n");
        return 2;
    }
    const char *route = argv[1], *shape = argc > 2 ? argv[2] : "gpt2-124m";
    int B = argc > 3 ? atoi(argv[3]) : 4, T = argc > 4 ? atoi(argv[4]) : 128, steps = argc > 5 ? atoi(argv[5]) : 2;
    int lora = argc > 6 && !strcmp(argv[6], "lora");
    int zo = !strncmp(route, "mezo", 4), inplace = !strcmp(route, "mezo-inplace");
    if (!zo && strcmp(route, "sgd") && strcmp(route, "adamw")) {
        fprintf(stderr, "zo_memory: unknown route '%s'\n", route);
        return 2;
    }
    loom_config cfg;
    loom_model *m = NULL;
    if (loom_config_named(&cfg, shape) == LOOM_OK) {
        if (loom_model_create(&m, &cfg, 1) != LOOM_OK) m = NULL;
    } else if (loom_model_load(&m, shape) != LOOM_OK) {
        m = NULL;
    }
    if (!m) {
        fprintf(stderr, "zo_memory: %s: %s\n", shape, loom_errmsg());
        return 1;
    }
    if (T > loom_model_config(m)->max_seq) T = loom_model_config(m)->max_seq;
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.kind = !strcmp(route, "adamw") ? LOOM_OPT_ADAMW : LOOM_OPT_SGD;
    tc.opt.lr = 1e-4f;
    tc.opt.momentum = 0;
    tc.B = B;
    tc.T = T;
    tc.forward_only = zo;
    loom_tset *ts = NULL;
    float *vec = NULL;
    loom_trainer *tr = NULL;
    int rc;
    if (lora) {
        loom_peft_config pc;
        loom_peft_defaults(&pc, LOOM_PEFT_LORA);
        rc = loom_tset_create(&ts, m, &pc, 3);
        if (rc == LOOM_OK) {
            vec = loom_alloc(loom_tset_dim(ts) * sizeof(float));
            memcpy(vec, loom_tset_data(ts), loom_tset_dim(ts) * sizeof(float));
            rc = loom_trainer_create_peft(&tr, m, loom_model_params(m), ts, vec, &tc);
        }
    } else {
        /* full fine-tuning trains the model's own buffer in place, as loom train does */
        rc = loom_trainer_create(&tr, m, loom_model_params(m), &tc);
    }
    if (rc != LOOM_OK) {
        fprintf(stderr, "zo_memory: trainer: %s\n", loom_errmsg());
        return 1;
    }
    size_t dim = loom_trainer_dim(tr), BT = (size_t)B * T;
    float *scratch = zo && !inplace ? loom_alloc(dim * sizeof(float)) : NULL;
    int32_t *tok = malloc(BT * sizeof *tok), *tgt = malloc(BT * sizeof *tgt);
    loom_rng r;
    loom_rng_init(&r, 7, 77);
    int V = loom_model_config(m)->vocab;
    for (size_t i = 0; i < BT; i++) tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)V);
    for (size_t i = 0; i < BT; i++) tgt[i] = i + 1 < BT ? tok[i + 1] : tok[0];
    float *v = loom_trainer_vector(tr);
    double t0 = loom_now();
    float loss = 0;
    for (int s = 0; s < steps && rc == LOOM_OK; s++) {
        if (zo) {
            double g;
            uint64_t seed = loom_zo_step_seed(1, (uint64_t)s);
            int restore = inplace ? LOOM_ZO_RESTORE_INPLACE : LOOM_ZO_RESTORE_COPY;
            rc = loom_zo_estimate(tr, v, tok, tgt, seed, 1e-3f, restore, scratch, &g, &loss);
            if (rc == LOOM_OK) loom_zo_axpy(v, dim, seed, (float)(-1e-6 * g));
        } else {
            rc = loom_trainer_step(tr, tok, tgt, &loss, NULL);
        }
    }
    if (rc != LOOM_OK) {
        fprintf(stderr, "zo_memory: step: %s\n", loom_errmsg());
        return 1;
    }
    double secs = (loom_now() - t0) / steps;
    size_t ws = loom_ws_bytes(loom_trainer_ws(tr));
    printf("%-13s %s%s B %d T %d: trainable %zu, workspace %.1f MiB, peak RSS %.1f MiB, %.2f s/step, loss %.4f\n", route,
           shape, lora ? " lora" : " full", B, T, dim, ws / 1048576.0, loom_peak_rss() / 1048576.0, secs, (double)loss);
    free(tok);
    free(tgt);
    loom_free(scratch);
    loom_trainer_free(tr);
    loom_free(vec);
    loom_tset_free(ts);
    loom_model_free(m);
    return 0;
}
