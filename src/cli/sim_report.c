#include "cli/sim_report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "loom/core.h"
#include "loom/train.h"

int cli_client_losses(const loom_model *m, const loom_tset *ts, const float *vec, const loom_dataset *ds,
                      const loom_partition *part, int B, int T, int threads, double *loss, long *tokens) {
    int saved = loom_threads();
    loom_set_threads(threads);
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.B = B;
    tc.T = T;
    tc.opt.lr = 0;
    size_t dim = ts ? loom_tset_dim(ts) : loom_model_n_params(m);
    /* the trainer trains in place: give it a copy so vec is only read */
    float *w = loom_alloc(dim * sizeof(float));
    int32_t *tok = malloc((size_t)B * T * sizeof *tok), *tgt = malloc((size_t)B * T * sizeof *tgt);
    loom_trainer *tr = NULL;
    int rc = w && tok && tgt ? LOOM_OK : loom_error(LOOM_ENOMEM, "out of memory");
    if (rc == LOOM_OK) {
        for (size_t i = 0; i < dim; i++) w[i] = vec[i];
        rc = ts ? loom_trainer_create_peft(&tr, m, loom_model_params_const(m), ts, w, &tc) : loom_trainer_create(&tr, m, w, &tc);
    }
    for (size_t c = 0; rc == LOOM_OK && c < part->n_clients; c++) {
        const loom_client *cl = &part->clients[c];
        loss[c] = NAN;
        tokens[c] = 0;
        if (!cl->n_test) continue;
        loom_batcher_opts bo;
        loom_batcher_opts_init(&bo);
        bo.B = (size_t)B;
        bo.T = (size_t)T;
        bo.shuffle = 0;
        bo.once = 1;
        loom_batcher *b;
        if ((rc = loom_batcher_create(&b, ds, cl->test, cl->n_test, &bo)) != LOOM_OK) break;
        double total = 0;
        long count = 0;
        for (uint64_t s = 0;; s++) {
            size_t rows;
            if ((rc = loom_batcher_fill(b, s, tok, tgt, &rows)) != LOOM_OK || rows == 0) break;
            long cnt = 0;
            for (int i = 0; i < B * T; i++) cnt += tgt[i] >= 0;
            if (!cnt) continue;
            float l;
            if ((rc = loom_trainer_eval(tr, tok, tgt, &l)) != LOOM_OK) break;
            total += (double)l * (double)cnt;
            count += cnt;
        }
        loom_batcher_free(b);
        if (count) loss[c] = total / (double)count;
        tokens[c] = count;
    }
    loom_trainer_free(tr);
    loom_free(w);
    free(tok);
    free(tgt);
    loom_set_threads(saved);
    return rc;
}

static const long *sort_tokens;
static int by_tokens(const void *a, const void *b) {
    long x = sort_tokens[*(const int *)a], y = sort_tokens[*(const int *)b];
    return x > y ? -1 : x < y ? 1 : *(const int *)a - *(const int *)b;
}

void cli_print_ppl_table(const loom_partition *part, const double *before, const double *after, const long *tokens,
                         int n) {
    int nc = (int)part->n_clients;
    int *order = malloc((size_t)nc * sizeof *order);
    if (!order) return;
    for (int i = 0; i < nc; i++) order[i] = i;
    sort_tokens = tokens;
    qsort(order, (size_t)nc, sizeof *order, by_tokens);
    if (n > nc) n = nc;
    printf("\nperplexity on each client's held-out text (its own test lines), before and after training:\n");
    printf("  %-20s %12s %12s %12s %8s\n", "client", "test tokens", "ppl before", "ppl after", "change");
    double sb = 0, sa = 0;
    long st = 0;
    int better = 0, counted = 0;
    for (int k = 0; k < nc; k++) {
        int i = order[k];
        if (!tokens[i] || !isfinite(before[i]) || !isfinite(after[i])) continue;
        sb += before[i] * (double)tokens[i];
        sa += after[i] * (double)tokens[i];
        st += tokens[i];
        better += after[i] < before[i];
        counted++;
        if (k < n)
            printf("  %-20.20s %12ld %12.2f %12.2f %+7.1f%%\n", part->clients[i].name, tokens[i], exp(before[i]),
                   exp(after[i]), 100.0 * (exp(after[i] - before[i]) - 1.0));
    }
    if (st) {
        if (n < nc) printf("  %-20s\n", "...");
        char all[64];
        snprintf(all, sizeof all, "all %d clients", counted);
        printf("  %-20s %12ld %12.2f %12.2f %+7.1f%%\n", all, st, exp(sb / (double)st), exp(sa / (double)st),
               100.0 * (exp((sa - sb) / (double)st) - 1.0));
        printf("  perplexity fell for %d of %d clients\n", better, counted);
    }
    free(order);
}
