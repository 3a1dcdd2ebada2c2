/* What split learning (SplitLoRA, include/loom/split.h) moves and what the client holds, against a client
 * that runs the whole model and sends its trainable set's update:
 *   split_cost [SHAPE [B [T [E [PEFT [R]]]]]]
 * SHAPE: a built-in shape or a config.json (default gpt2-124m; random weights: sizes only); batches of
 * B x T (4 x 128); E local steps per round (4); PEFT lora (default, rank R = 8 on the default targets) or
 * full. One row per cut k: the trainable values on each side, the bytes of one step (activations and
 * targets up, their gradient down), a round's bytes each way for one client (E steps plus its part's
 * download and upload) against the whole set's download and upload, and the client's memory (the base
 * weights of its part, its part's workspace, 16 bytes a trained value for the value, its gradient and
 * AdamW's moments) against running the whole model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/split.h"

static double mib(double b) { return b / 1048576.0; }

int main(int argc, char **argv) {
    const char *shape = argc > 1 ? argv[1] : "gpt2-124m";
    int B = argc > 2 ? atoi(argv[2]) : 4, T = argc > 3 ? atoi(argv[3]) : 128, E = argc > 4 ? atoi(argv[4]) : 4;
    const char *peft = argc > 5 ? argv[5] : "lora";
    int R = argc > 6 ? atoi(argv[6]) : 8;
    loom_config cfg;
    loom_model *m = NULL;
    loom_tset *ts = NULL;
    loom_peft_method method;
    if (loom_config_named(&cfg, shape) != LOOM_OK || loom_model_create(&m, &cfg, 1) != LOOM_OK ||
        loom_peft_method_parse(peft, &method) != LOOM_OK) {
        fprintf(stderr, "split_cost: %s\n", loom_errmsg());
        return 1;
    }
    loom_peft_config pc;
    loom_peft_defaults(&pc, method);
    pc.lora_r = R;
    int rc = method == LOOM_PEFT_FULL ? loom_tset_create_layout(&ts, m, &pc) : loom_tset_create(&ts, m, &pc, 1);
    if (rc != LOOM_OK) {
        fprintf(stderr, "split_cost: %s\n", loom_errmsg());
        return 1;
    }
    const int L = cfg.n_layer;
    size_t dim = loom_tset_dim(ts);
    printf("%s (%d layers, C = %d), %s with %zu trainable values (%.2f MiB), batch %d x %d, %d local steps a round\n",
           shape, L, cfg.dim, peft, dim, mib(dim * 4.0), B, T, E);
    printf("| cut k | client / server values | step up / down (KiB) | round each way, split (MiB) | round each way, "
           "whole set (MiB) | client memory (MiB) | whole model (MiB) |\n");
    printf("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    int ks[] = {0, 1, 2, L / 4, L / 2, 3 * L / 4, L};
    int last = -1;
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        int k = ks[i];
        if (k <= last) continue;
        last = k;
        loom_split_cost c;
        if (loom_split_cost_of(ts, k, B, T, &c) != LOOM_OK) {
            printf("| %d | %s | | | | | |\n", k, loom_errmsg());
            continue;
        }
        double up = (double)E * c.up_step + 4.0 * c.client_dim, down = (double)E * c.down_step + 4.0 * c.client_dim;
        double cm = (double)c.client_weights + c.client_ws + c.client_state;
        double wm = (double)c.model_weights + c.model_ws + c.model_state;
        printf("| %d | %zu / %zu | %.0f / %.0f | %.2f / %.2f | %.2f | %.1f (weights %.1f, activations %.1f) | %.1f |\n", k,
               c.client_dim, c.server_dim, c.up_step / 1024.0, c.down_step / 1024.0, mib(up), mib(down), mib(dim * 4.0),
               mib(cm), mib(c.client_weights), mib(c.client_ws), mib(wm));
    }
    loom_tset_free(ts);
    loom_model_free(m);
    return 0;
}
