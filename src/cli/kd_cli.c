/* --teacher, --kd-temp, --kd-alpha (see kd_cli.h). */
#include "cli/kd_cli.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/textdata.h"
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/sim.h"
#include "loom/tokenizer.h"
#include "loom/distill.h"
#include "loom/pipeline.h"

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

/* ---- FedDF ---- */

#define FEDDF_TEXT_MAX ((long long)1 << 30) /* bytes of public text */

void cli_feddf_init(cli_feddf *d) {
    memset(d, 0, sizeof *d);
    d->steps = 50;
    d->temp = 1.0f;
    d->lr = 1e-3f;
}

int cli_feddf_setup(cli_feddf *d, const char *cmd, const loom_model *m, const struct loom_tset *ts,
                    const struct loom_tokenizer *tok, int B, int T, uint64_t seed, loom_post_fn *post_fn, void **post_ud) {
    if (!d->text) return 0;
    struct stat st;
    if (stat(d->text, &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "loom %s: --server-distill %s: not a readable file\n", cmd, d->text);
        return -1;
    }
    if ((long long)st.st_size > FEDDF_TEXT_MAX) {
        fprintf(stderr, "loom %s: --server-distill %s: %lld bytes, more than the %lld accepted\n", cmd, d->text,
                (long long)st.st_size, FEDDF_TEXT_MAX);
        return -1;
    }
    token_stream s = {0};
    if (text_load(&s, d->text, tok) != LOOM_OK) {
        fprintf(stderr, "loom %s: --server-distill %s: %s\n", cmd, d->text, loom_errmsg());
        return -1;
    }
    if (s.n < (size_t)T + 2) {
        fprintf(stderr, "loom %s: --server-distill %s has %zu tokens, fewer than one window of --seq %d + 1\n", cmd,
                d->text, s.n, T);
        text_free(&s);
        return -1;
    }
    d->tokens = malloc(s.n * sizeof *d->tokens);
    if (!d->tokens) {
        text_free(&s);
        fprintf(stderr, "loom %s: out of memory for --server-distill %s\n", cmd, d->text);
        return -1;
    }
    for (size_t i = 0; i < s.n; i++) d->tokens[i] = text_id(&s, i);
    d->n_tokens = s.n;
    text_free(&s);
    loom_feddf_config c;
    loom_feddf_defaults(&c);
    c.m = m;
    c.ts = ts;
    c.tokens = d->tokens;
    c.n_tokens = d->n_tokens;
    c.steps = d->steps;
    c.temp = d->temp;
    c.lr = d->lr;
    c.B = B;
    c.T = T;
    c.seed = seed;
    if (loom_feddf_create(&d->f, &c) != LOOM_OK) {
        fprintf(stderr, "loom %s: --server-distill: %s\n", cmd, loom_errmsg());
        return -1;
    }
    *post_fn = loom_feddf_post;
    *post_ud = d->f;
    fprintf(stderr, "  FedDF: %d server distillation steps a round on %s (%zu tokens), T %g, lr %g\n", d->steps, d->text,
            d->n_tokens, (double)d->temp, (double)d->lr);
    return 0;
}

void cli_feddf_free(cli_feddf *d) {
    loom_feddf_free(d->f);
    free(d->tokens);
    d->f = NULL;
    d->tokens = NULL;
}

/* ---- synthetic data ---- */

void cli_synth_init(cli_synth *s) {
    memset(s, 0, sizeof *s);
    s->temp = 0.8f;
    s->prompt = NULL; /* a newline */
}

int cli_synth_setup(cli_synth *s, const char *cmd, const loom_model *m, const struct loom_tset *ts, const float *vec,
                    const struct loom_tokenizer *tok, int T, uint64_t seed, struct loom_dataset **ds,
                    struct loom_partition *part) {
    if (s->n == 0) return 0;
    if (!ds || !*ds || (*ds)->kind != LOOM_DS_LM) {
        fprintf(stderr, "loom %s: --synthetic needs language-modelling data (text or shakespeare, not --clients-dir, "
                        "classification or instruction formats)\n", cmd);
        return -1;
    }
    loom_model *tm = NULL;
    if (s->teacher) {
        if (loom_model_load(&tm, s->teacher) != LOOM_OK) {
            fprintf(stderr, "loom %s: --synthetic-teacher %s: %s\n", cmd, s->teacher, loom_errmsg());
            return -1;
        }
        if (loom_model_config(tm)->vocab != loom_model_config(m)->vocab) {
            fprintf(stderr, "loom %s: --synthetic-teacher %s has a vocabulary of %d tokens, the federation's model one "
                            "of %d\n", cmd, s->teacher, loom_model_config(tm)->vocab, loom_model_config(m)->vocab);
            loom_model_free(tm);
            return -1;
        }
    }
    const loom_model *g = tm ? tm : m;
    int32_t *pids = NULL, *out = NULL;
    size_t np = 0;
    int bos = loom_model_config(g)->bos_id, rc = -1;
    const char *ptext = s->prompt ? s->prompt : "\n";
    if (loom_tokenizer_encode(tok, ptext, strlen(ptext), 0, &pids, &np) != LOOM_OK) {
        fprintf(stderr, "loom %s: --synthetic-prompt: %s\n", cmd, loom_errmsg());
        goto done;
    }
    int32_t *prompt = malloc((np + 1) * sizeof *prompt);
    size_t pl = 0;
    if (!prompt) goto done;
    if (bos >= 0) prompt[pl++] = bos;
    for (size_t i = 0; i < np; i++) prompt[pl++] = pids[i];
    if (pl == 0) {
        fprintf(stderr, "loom %s: --synthetic-prompt is empty and the model has no BOS token to start from\n", cmd);
        free(prompt);
        goto done;
    }
    loom_synth_config c;
    loom_synth_defaults(&c);
    c.n = s->n;
    c.len = s->len > 0 ? s->len : T + 1;
    c.prompt = prompt;
    c.prompt_len = (int)pl;
    c.temperature = s->temp;
    c.seed = seed;
    out = malloc((size_t)c.n * (size_t)c.len * sizeof *out);
    double t0 = loom_now();
    int grc = out ? loom_synth_generate(g, NULL, tm ? NULL : ts, tm ? NULL : vec, &c, out)
                  : loom_error(LOOM_ENOMEM, "out of memory for %d synthetic samples", c.n);
    free(prompt);
    if (grc != LOOM_OK) {
        fprintf(stderr, "loom %s: --synthetic: %s\n", cmd, loom_errmsg());
        goto done;
    }
    struct loom_dataset *nds = NULL;
    size_t first = (*ds)->n;
    if (loom_dataset_append_ids(&nds, *ds, out, (size_t)c.n, (size_t)c.len, pl) != LOOM_OK ||
        loom_synth_mix(part, first, (size_t)c.n, (size_t)s->below, &s->mixed) != LOOM_OK) {
        loom_dataset_free(nds);
        fprintf(stderr, "loom %s: --synthetic: %s\n", cmd, loom_errmsg());
        goto done;
    }
    loom_dataset_free(*ds);
    *ds = nds;
    fprintf(stderr, "  synthetic data: %d samples of %d tokens from %s (%.1fs), mixed into %zu clients%s\n", c.n, c.len,
            tm ? s->teacher : "the initial global model", loom_now() - t0, s->mixed,
            s->below > 0 ? " below the threshold" : "");
    rc = 0;
done:
    free(pids);
    free(out);
    loom_model_free(tm);
    return rc;
}

/* ---- continual rounds ---- */

void cli_continual_init(cli_continual *c) {
    memset(c, 0, sizeof *c);
    c->last = NAN;
}

/* The mean next-token loss over the file's non-overlapping windows of T + 1 tokens (stride T), B at a
 * time, weighted by the positions counted: the route loom eval takes. */
static int retention_eval(void *ud, int round, const float *global, double *loss, long *tokens) {
    cli_continual *c = ud;
    (void)round;
    const token_stream *s = c->ts_data;
    memcpy(c->vec, global, c->dim * sizeof(float));
    const int B = c->B, T = c->T;
    int32_t *tok = malloc((size_t)B * T * sizeof *tok), *tgt = malloc((size_t)B * T * sizeof *tgt);
    if (!tok || !tgt) {
        free(tok);
        free(tgt);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    double total = 0;
    long k = 0, count = 0;
    int rc = LOOM_OK;
    for (;;) {
        int filled = 0;
        for (int b = 0; b < B; b++) {
            if (text_window(s, 0, s->n, T, k, tok + (size_t)b * T, tgt + (size_t)b * T)) {
                k++;
                filled++;
            } else {
                for (int t = 0; t < T; t++) tok[(size_t)b * T + t] = 0, tgt[(size_t)b * T + t] = -1;
            }
        }
        if (!filled) break;
        float l;
        if ((rc = loom_trainer_eval(c->tr, tok, tgt, &l)) != LOOM_OK) break;
        long cnt = 0;
        for (int i = 0; i < B * T; i++) cnt += tgt[i] >= 0;
        total += (double)l * cnt;
        count += cnt;
    }
    free(tok);
    free(tgt);
    if (rc != LOOM_OK) return loom_error_context(rc, "--retention-test");
    *loss = count ? total / (double)count : NAN;
    *tokens = count;
    c->last = *loss;
    return LOOM_OK;
}

int cli_continual_setup(cli_continual *c, const char *cmd, const loom_model *m, const struct loom_tset *ts,
                        const struct loom_tokenizer *tok, int B, int T, loom_sim_config *sc) {
    sc->continual = c->continual;
    if (!c->retention) return 0;
    struct stat st;
    if (stat(c->retention, &st) != 0 || !S_ISREG(st.st_mode)) {
        fprintf(stderr, "loom %s: --retention-test %s: not a readable file\n", cmd, c->retention);
        return -1;
    }
    if ((long long)st.st_size > FEDDF_TEXT_MAX) {
        fprintf(stderr, "loom %s: --retention-test %s: %lld bytes, more than the %lld accepted\n", cmd, c->retention,
                (long long)st.st_size, FEDDF_TEXT_MAX);
        return -1;
    }
    token_stream *s = calloc(1, sizeof *s);
    if (!s || text_load(s, c->retention, tok) != LOOM_OK) {
        fprintf(stderr, "loom %s: --retention-test %s: %s\n", cmd, c->retention, s ? loom_errmsg() : "out of memory");
        free(s);
        return -1;
    }
    c->ts_data = s;
    if (s->n < (size_t)T + 1) {
        fprintf(stderr, "loom %s: --retention-test %s has %zu tokens, fewer than one window of --seq %d + 1\n", cmd,
                c->retention, s->n, T);
        return -1;
    }
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.B = B;
    tc.T = T;
    c->B = B;
    c->T = T;
    c->dim = ts ? loom_tset_dim(ts) : loom_model_n_params(m);
    c->vec = loom_alloc(c->dim * sizeof(float));
    int rc = !c->vec ? loom_error(LOOM_ENOMEM, "out of memory")
             : ts    ? loom_trainer_create_peft(&c->tr, m, loom_model_params_const(m), ts, c->vec, &tc)
                     : loom_trainer_create(&c->tr, m, c->vec, &tc);
    if (rc != LOOM_OK) {
        fprintf(stderr, "loom %s: --retention-test: %s\n", cmd, loom_errmsg());
        return -1;
    }
    sc->round_eval = retention_eval;
    sc->round_eval_ud = c;
    fprintf(stderr, "  retention test: %s (%zu tokens) after every round\n", c->retention, s->n);
    return 0;
}

void cli_continual_free(cli_continual *c) {
    if (c->ts_data) text_free(c->ts_data);
    free(c->ts_data);
    loom_trainer_free(c->tr);
    loom_free(c->vec);
    c->ts_data = NULL;
    c->tr = NULL;
    c->vec = NULL;
}
