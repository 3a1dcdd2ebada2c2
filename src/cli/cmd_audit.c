/* loom audit: privacy audits of a trained model (include/loom/audit.h holds the statistics).
 *
 *   loom audit mia       membership inference: per-example losses of members and non-members, the
 *                        loss-threshold attack and the reference-calibrated attack, ROC AUC, TPR@FPR
 *   loom audit canaries  random canary strings of a format (and their insertion into a client's file)
 *   loom audit exposure  each canary's exposure: its rank among random candidates of its format
 *
 * Per-example loss: the example's tokens as the training loader makes them (loom_dataset_load, the
 * same formats, BOS and EOS as the loader adds them unless --bos / --eos say otherwise), the first
 * --seq-len + 1 tokens (the last ones for an example
 * with a prompt, so that its response stays), one forward pass of an inference workspace; the loss of
 * an example is the mean over its target tokens, its log-perplexity the sum. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "loom/audit.h"
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/tokenizer.h"

#define AUDIT_MAX_FILE (1024L << 20)   /* members / non-members / client files: 1 GiB */
#define AUDIT_MAX_JSON (64L << 20)     /* canaries.json */
#define AUDIT_MAX_CANARIES 10000
#define AUDIT_CHUNK 4096               /* candidate strings tokenized at a time */
#define DEFAULT_FORMAT "my secret code is # # # # # #"

/* ---------------------------------------------------------------- scoring */

typedef struct {
    loom_model *m;
    loom_tset *set;
    loom_ws *ws;
    int B, T;
    int32_t *tok, *tgt; /* [B*T] */
} scorer;

static void scorer_close(scorer *s) {
    loom_ws_free(s->ws);
    loom_tset_free(s->set);
    loom_model_free(s->m);
    free(s->tok);
    free(s->tgt);
    memset(s, 0, sizeof *s);
}

/* Loads model (+ adapter) for scoring batches of B rows of up to T tokens; T = 0 picks
 * min(128, positions). Errors are printed naming mflag / aflag; returns 0 or the exit code. */
static int scorer_open(scorer *s, const char *model, const char *adapter, const char *base_dtype, int B, int T,
                       const char *mflag, const char *aflag) {
    memset(s, 0, sizeof *s);
    if (loom_model_load(&s->m, model) != LOOM_OK) {
        fprintf(stderr, "loom audit: %s %s: %s\n", mflag, model, loom_errmsg());
        return 1;
    }
    cli_peft_opts po;
    cli_peft_init(&po);
    po.load_only = 1;
    po.adapter = adapter;
    if (base_dtype) po.base_dtype = base_dtype;
    if (cli_peft_setup(&po, s->m, 0, &s->set) != LOOM_OK) {
        fprintf(stderr, "loom audit: %s %s: %s\n", adapter ? aflag : "--base-dtype", adapter ? adapter : po.base_dtype,
                loom_errmsg());
        scorer_close(s);
        return 1;
    }
    int P = s->set && loom_tset_config(s->set)->method == LOOM_PEFT_PROMPT ? loom_tset_config(s->set)->prompt_len : 0;
    int maxT = loom_model_config(s->m)->max_seq - P;
    if (T == 0) T = maxT < 128 ? maxT : 128;
    if (T > maxT || T < 1) {
        fprintf(stderr, "loom audit: --seq-len %d exceeds the %d positions %s %s has%s\n", T, maxT, mflag, model,
                P ? " beside its soft prompt" : "");
        scorer_close(s);
        return 2;
    }
    s->B = B;
    s->T = T;
    s->tok = malloc((size_t)B * T * sizeof *s->tok);
    s->tgt = malloc((size_t)B * T * sizeof *s->tgt);
    if (!s->tok || !s->tgt ||
        loom_ws_create_infer(&s->ws, s->m, B, T, s->set ? loom_tset_plan(s->set) : NULL) != LOOM_OK) {
        fprintf(stderr, "loom audit: %s: workspace: %s\n", mflag, loom_errmsg());
        scorer_close(s);
        return 1;
    }
    return 0;
}

/* The window of example e scored: tokens/targets [*len <= T]; returns the targets it holds. */
static int example_row(const loom_example *e, int T, int32_t *tok, int32_t *tgt, int *len) {
    size_t n = e->n, first = 0;
    if (n > (size_t)T + 1 && e->prompt_len) first = n - (size_t)T - 1; /* keep the response */
    int L = n - first > (size_t)T + 1 ? T : (int)(n - first) - 1, cnt = 0;
    for (int t = 0; t < L; t++) {
        tok[t] = e->ids[first + t];
        tgt[t] = e->mask[first + t + 1] ? e->ids[first + t + 1] : -1;
        cnt += tgt[t] >= 0;
    }
    *len = L > 0 ? L : 0;
    return L > 0 ? cnt : 0;
}

/* sum[i] (sum of target-token losses, nats) and cnt[i] (targets) of every example of ds; cnt 0 = the
 * example has no target in its window (not scored). */
static int score_dataset(scorer *s, const loom_dataset *ds, double *sum, long *cnt) {
    int vocab = loom_model_config(s->m)->vocab;
    const float *base = loom_model_params(s->m);
    const loom_peft *pf = s->set ? loom_tset_plan(s->set) : NULL;
    const float *vec = s->set ? loom_tset_data(s->set) : NULL;
    int32_t *row_tok = malloc((size_t)s->T * sizeof *row_tok), *row_tgt = malloc((size_t)s->T * sizeof *row_tgt);
    size_t *which = malloc((size_t)s->B * sizeof *which);
    int *len = malloc((size_t)s->B * sizeof *len);
    int rc = row_tok && row_tgt && which && len ? LOOM_OK : loom_error(LOOM_ENOMEM, "out of memory");
    size_t i = 0;
    while (rc == LOOM_OK && i < ds->n) {
        /* gather up to B examples that have targets; the batch is as long as its longest row */
        int rows = 0, Tb = 0;
        for (; i < ds->n && rows < s->B; i++) {
            sum[i] = 0;
            cnt[i] = 0;
            const loom_example *e = &ds->ex[i];
            for (uint32_t k = 0; k < e->n; k++)
                if (e->ids[k] < 0 || e->ids[k] >= vocab) {
                    rc = loom_error(LOOM_ERANGE, "example %zu (line %u) has token %d outside the model's vocabulary (%d)",
                                    i + 1, e->line, e->ids[k], vocab);
                    break;
                }
            if (rc != LOOM_OK) break;
            int L;
            if (!example_row(e, s->T, row_tok, row_tgt, &L)) continue;
            which[rows] = i;
            len[rows] = L;
            rows++;
            if (L > Tb) Tb = L;
        }
        if (rc != LOOM_OK || !rows) break;
        for (int b = 0; b < rows; b++) {
            int L;
            example_row(&ds->ex[which[b]], s->T, row_tok, row_tgt, &L);
            for (int t = 0; t < Tb; t++) {
                s->tok[b * Tb + t] = t < len[b] ? row_tok[t] : 0;
                s->tgt[b * Tb + t] = t < len[b] ? row_tgt[t] : -1;
            }
        }
        float loss;
        rc = pf ? loom_forward_ex(s->m, base, s->ws, pf, vec, s->tok, s->tgt, rows, Tb, &loss)
                : loom_forward(s->m, base, s->ws, s->tok, s->tgt, rows, Tb, &loss);
        if (rc != LOOM_OK) break;
        const float *pl = loom_ws_losses(s->ws);
        int P = loom_ws_prompt_len(s->ws);
        for (int b = 0; b < rows; b++) {
            double acc = 0;
            long c = 0;
            for (int t = 0; t < Tb; t++)
                if (s->tgt[b * Tb + t] >= 0) {
                    acc += pl[(size_t)b * (P + Tb) + P + t];
                    c++;
                }
            sum[which[b]] = acc;
            cnt[which[b]] = c;
        }
    }
    free(row_tok);
    free(row_tgt);
    free(which);
    free(len);
    return rc;
}

/* ---------------------------------------------------------------- data */

/* --bos / --eos: -1 auto (as the training loader: BOS when the tokenizer has one distinct from EOS,
 * EOS after a language-modelling example when it has one), 0 no, 1 yes; -2 for anything else. */
static int special_kind(const char *s) {
    if (!strcmp(s, "auto")) return -1;
    if (!strcmp(s, "no")) return 0;
    if (!strcmp(s, "yes")) return 1;
    return -2;
}

static int split_kind(const char *s) {
    if (!strcmp(s, "line")) return LOOM_SPLIT_LINE;
    if (!strcmp(s, "paragraph")) return LOOM_SPLIT_PARAGRAPH;
    if (!strcmp(s, "file")) return LOOM_SPLIT_FILE;
    return -1;
}

/* Loads the examples of a file named by flag; prints the error and returns NULL on failure. */
static loom_dataset *load_examples(const char *flag, const char *path, const char *format, const char *text_col,
                                   int split, int bos, int eos, long max_examples, const loom_tokenizer *tok) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "loom audit: %s %s: %s\n", flag, path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "loom audit: %s %s is not a regular file\n", flag, path);
        return NULL;
    }
    if (st.st_size > AUDIT_MAX_FILE) {
        fprintf(stderr, "loom audit: %s %s has %lld bytes, more than the limit of %ld MiB\n", flag, path,
                (long long)st.st_size, AUDIT_MAX_FILE >> 20);
        return NULL;
    }
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = cli_format("audit", format ? format : "text");
    if (o.format < 0) return NULL;
    o.text_split = split;
    o.add_bos = bos;
    o.add_eos = eos;
    o.text_col = text_col;
    o.max_examples = (size_t)max_examples;
    loom_dataset *ds = NULL;
    if (loom_dataset_load(&ds, path, &o, tok) != LOOM_OK) {
        fprintf(stderr, "loom audit: %s %s: %s\n", flag, path, loom_errmsg());
        return NULL;
    }
    if (ds->kind == LOOM_DS_CLASSIFY) {
        fprintf(stderr, "loom audit: %s %s: classification examples are not scored by loss (give the text without --label-col)\n",
                flag, path);
        loom_dataset_free(ds);
        return NULL;
    }
    return ds;
}

/* Mean losses of the scored examples of ds (cnt > 0), compacted into loss[]; returns how many. */
static size_t mean_losses(const double *sum, const long *cnt, size_t n, double *loss) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (cnt[i] > 0) loss[k++] = sum[i] / (double)cnt[i];
    return k;
}

static double mean_of(const double *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    return n ? s / (double)n : NAN;
}

/* ---------------------------------------------------------------- loom audit mia */

typedef struct {
    double auc, tpr, fpr, tau;
} attack_result;

static int attack(const double *pos, size_t np, const double *neg, size_t nn, double alpha, attack_result *r) {
    if (loom_audit_auc(pos, np, neg, nn, &r->auc) != LOOM_OK ||
        loom_audit_tpr_at_fpr(pos, np, neg, nn, alpha, &r->tpr, &r->fpr, &r->tau) != LOOM_OK)
        return cli_fail("attack");
    return 0;
}

static void print_attack_json(const char *name, const attack_result *r) {
    printf(", \"%s\": {\"auc\": %.17g, \"tpr_at_fpr\": %.17g, \"fpr\": %.17g}", name, r->auc, r->tpr, r->fpr);
}

static int cmd_mia(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *tokp = NULL, *members = NULL, *nonmembers = NULL, *ref = NULL,
               *ref_adapter = NULL, *format = NULL, *text_col = NULL, *split_s = "line", *base_dtype = NULL,
               *scores_path = NULL, *bos_s = "auto", *eos_s = "auto";
    int T = 0, B = 16, threads = 0, json = 0;
    long max_examples = 100000;
    float alpha = 0.01f;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "the audited model: a model directory, llama2.c .bin or .gguf", 0, 0},
        {"adapter", OPT_STR, &adapter, "its PEFT-layout adapter directory (the trained set)", 0, 0},
        {"base-dtype", OPT_STR, &base_dtype, "hold the frozen base's linear weights as f32, bf16 or int8 (with --adapter)", 0, 0},
        {"tokenizer", OPT_STR, &tokp, "tokenizer (default: the model's, or byte-level for 259-token models)", 0, 0},
        {"members", OPT_STR, &members, "examples the model was trained on (one per line by default)", 0, 0},
        {"nonmembers", OPT_STR, &nonmembers, "examples of the same distribution it never saw", 0, 0},
        {"reference", OPT_STR, &ref, "reference model (not trained on the members) for the calibrated attack", 0, 0},
        {"reference-adapter", OPT_STR, &ref_adapter, "the reference's adapter directory (e.g. one trained on other data)", 0, 0},
        {"format", OPT_STR, &format, "data format: " CLI_FORMATS " (default text)", 0, 0},
        {"text-col", OPT_STR, &text_col, "text column or JSON field", 0, 0},
        {"split", OPT_STR, &split_s, "text format: an example is a line, a paragraph (blank-line separated) or the file", 0, 0},
        {"bos", OPT_STR, &bos_s, "start each example with BOS: auto (as loom sim's data loader: when the tokenizer has one), yes or no (a model trained by loom train on plain text never saw BOS)", 0, 0},
        {"eos", OPT_STR, &eos_s, "end each example with EOS: auto (as loom sim's data loader: when the tokenizer has one), yes or no (loom train on plain text: no)", 0, 0},
        {"seq-len", OPT_INT, &T, "tokens of each example scored (its first seq-len + 1; 0 = min(128, the model's positions))", 0, 1048576},
        {"batch", OPT_INT, &B, "examples per forward pass", 1, 4096},
        {"max-examples", OPT_LONG, &max_examples, "read at most N examples of each file", 1, 10000000},
        {"fpr", OPT_FLOAT, &alpha, "false-positive rate of the reported TPR", 0, 1},
        {"scores", OPT_STR, &scores_path, "write every example's losses as TSV (set, example, line, tokens, loss, reference loss)", 0, 0},
        {"threads", OPT_INT, &threads, "threads (0 = all cores)", 0, cli_max_threads()},
        {"json", OPT_FLAG, &json, "print one JSON object", 0, 0},
    };
    int pr = cli_parse(
        argc, argv, "loom audit mia --model M [--adapter A] --members FILE --nonmembers FILE [--reference M2 [--reference-adapter A2]] [options]",
        "Membership inference against a trained model. Every example of --members (trained on) and\n"
        "--nonmembers (never seen) gets its mean token loss under the model. The loss-threshold attack\n"
        "scores -loss; with --reference, the calibrated attack scores loss_ref - loss (the reference's\n"
        "loss removes how hard the example is for any model). Prints each attack's ROC AUC (exact, by\n"
        "ranks, ties counted one half; 0.5 is chance) and its TPR at FPR <= --fpr (the empirical ROC curve\n"
        "without interpolation: the best threshold whose false-positive rate is at most --fpr; with N\n"
        "non-members only multiples of 1/N are reachable). Examples are read by the training loader (the\n"
        "same --format, BOS and EOS as loom sim's loader adds them); examples without a target token are\n"
        "skipped and counted.",
        opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (!model) {
        fprintf(stderr, "loom audit mia: --model is required\n");
        return 2;
    }
    if (!members || !nonmembers) {
        fprintf(stderr, "loom audit mia: --members and --nonmembers are required (the two files of examples)\n");
        return 2;
    }
    if (ref_adapter && !ref) {
        fprintf(stderr, "loom audit mia: --reference-adapter needs --reference (its base model; it may be --model)\n");
        return 2;
    }
    int split = split_kind(split_s), bos = special_kind(bos_s), eos = special_kind(eos_s);
    if (split < 0) {
        fprintf(stderr, "loom audit mia: --split '%s': give line, paragraph or file\n", split_s);
        return 2;
    }
    if (bos < -1 || eos < -1) {
        fprintf(stderr, "loom audit mia: %s '%s': give auto, yes or no\n", bos < -1 ? "--bos" : "--eos",
                bos < -1 ? bos_s : eos_s);
        return 2;
    }
    if (threads > 0) loom_set_threads(threads);
    scorer tgt = {0}, rs = {0};
    loom_tokenizer *tok = NULL;
    loom_dataset *dm = NULL, *dn = NULL;
    double *sm = NULL, *sn = NULL, *rsm = NULL, *rsn = NULL, *lm = NULL, *ln = NULL, *pos = NULL, *neg = NULL;
    long *cm = NULL, *cn = NULL, *rcm = NULL, *rcn = NULL;
    FILE *sf = NULL;
    int rc = scorer_open(&tgt, model, adapter, base_dtype, B, T, "--model", "--adapter");
    if (rc) return rc;
    rc = 1;
    if (cli_tokenizer(&tok, tokp, model, tgt.m) != LOOM_OK) {
        cli_fail("--tokenizer");
        goto done;
    }
    if (loom_tokenizer_vocab_size(tok) > loom_model_config(tgt.m)->vocab) {
        fprintf(stderr, "loom audit mia: the tokenizer has %d tokens, --model %s only %d: give its --tokenizer\n",
                loom_tokenizer_vocab_size(tok), model, loom_model_config(tgt.m)->vocab);
        goto done;
    }
    if (scores_path && cli_out_file("--scores", scores_path) != 0) goto done;
    if (!(dm = load_examples("--members", members, format, text_col, split, bos, eos, max_examples, tok)) ||
        !(dn = load_examples("--nonmembers", nonmembers, format, text_col, split, bos, eos, max_examples, tok)))
        goto done;
    size_t nm = dm->n, nn = dn->n;
    sm = calloc(nm + 1, sizeof *sm), sn = calloc(nn + 1, sizeof *sn), lm = calloc(nm + 1, sizeof *lm),
    ln = calloc(nn + 1, sizeof *ln), pos = calloc(nm + 1, sizeof *pos), neg = calloc(nn + 1, sizeof *neg);
    cm = calloc(nm + 1, sizeof *cm), cn = calloc(nn + 1, sizeof *cn);
    if (!sm || !sn || !lm || !ln || !pos || !neg || !cm || !cn) {
        fprintf(stderr, "loom audit mia: out of memory for %zu examples\n", nm + nn);
        goto done;
    }
    double t0 = loom_now();
    if (score_dataset(&tgt, dm, sm, cm) != LOOM_OK || score_dataset(&tgt, dn, sn, cn) != LOOM_OK) {
        cli_fail("--model: scoring");
        goto done;
    }
    if (ref) {
        int r2 = scorer_open(&rs, ref, ref_adapter, base_dtype, B, tgt.T, "--reference", "--reference-adapter");
        if (r2) {
            rc = r2;
            goto done;
        }
        if (loom_model_config(rs.m)->vocab != loom_model_config(tgt.m)->vocab) {
            fprintf(stderr, "loom audit mia: --reference %s has %d tokens, --model %s %d: the two must share the tokenizer\n",
                    ref, loom_model_config(rs.m)->vocab, model, loom_model_config(tgt.m)->vocab);
            goto done;
        }
        rsm = calloc(nm + 1, sizeof *rsm), rsn = calloc(nn + 1, sizeof *rsn);
        rcm = calloc(nm + 1, sizeof *rcm), rcn = calloc(nn + 1, sizeof *rcn);
        if (!rsm || !rsn || !rcm || !rcn) {
            fprintf(stderr, "loom audit mia: out of memory\n");
            goto done;
        }
        if (score_dataset(&rs, dm, rsm, rcm) != LOOM_OK || score_dataset(&rs, dn, rsn, rcn) != LOOM_OK) {
            cli_fail("--reference: scoring");
            goto done;
        }
    }
    double secs = loom_now() - t0;
    size_t km = mean_losses(sm, cm, nm, lm), kn = mean_losses(sn, cn, nn, ln);
    if (!km || !kn) {
        fprintf(stderr, "loom audit mia: %s %s has no example with a target token (%zu examples read)\n",
                km ? "--nonmembers" : "--members", km ? nonmembers : members, km ? nn : nm);
        goto done;
    }
    for (size_t i = 0; i < km; i++) pos[i] = -lm[i];
    for (size_t i = 0; i < kn; i++) neg[i] = -ln[i];
    attack_result la, ra;
    if (attack(pos, km, neg, kn, alpha, &la)) goto done;
    if (ref) {
        /* the same examples carry targets under both models (same tokens, same windows) */
        size_t k = 0;
        for (size_t i = 0; i < nm; i++)
            if (cm[i] > 0) pos[k++] = rsm[i] / (double)rcm[i] - sm[i] / (double)cm[i];
        k = 0;
        for (size_t i = 0; i < nn; i++)
            if (cn[i] > 0) neg[k++] = rsn[i] / (double)rcn[i] - sn[i] / (double)cn[i];
        if (attack(pos, km, neg, kn, alpha, &ra)) goto done;
    }
    if (scores_path) {
        if (!(sf = fopen(scores_path, "w"))) {
            fprintf(stderr, "loom audit mia: --scores %s: %s\n", scores_path, strerror(errno));
            goto done;
        }
        fprintf(sf, "set\texample\tline\ttokens\tloss\treference_loss\n");
        for (int set = 0; set < 2; set++) {
            const loom_dataset *d = set ? dn : dm;
            const double *s = set ? sn : sm, *r = set ? rsn : rsm;
            const long *c = set ? cn : cm, *q = set ? rcn : rcm;
            for (size_t i = 0; i < d->n; i++) {
                if (c[i] <= 0) continue;
                fprintf(sf, "%s\t%zu\t%u\t%ld\t%.9g", set ? "nonmember" : "member", i + 1, d->ex[i].line, c[i],
                        s[i] / (double)c[i]);
                if (r) fprintf(sf, "\t%.9g\n", r[i] / (double)q[i]);
                else fprintf(sf, "\t\n");
            }
        }
        if (fclose(sf) != 0) {
            sf = NULL;
            fprintf(stderr, "loom audit mia: --scores %s: write error\n", scores_path);
            goto done;
        }
        sf = NULL;
    }
    double mlm = mean_of(lm, km), mln = mean_of(ln, kn);
    if (json) {
        printf("{\"members\": %zu, \"nonmembers\": %zu, \"skipped_members\": %zu, \"skipped_nonmembers\": %zu, "
               "\"seq_len\": %d, \"fpr_target\": %.6g, \"mean_loss_members\": %.9g, \"mean_loss_nonmembers\": %.9g",
               km, kn, nm - km, nn - kn, tgt.T, alpha, mlm, mln);
        print_attack_json("loss", &la);
        if (ref) print_attack_json("reference", &ra);
        printf("}\n");
    } else {
        printf("%-28s %zu members, %zu non-members (%zu + %zu without a target skipped), %d tokens each at most\n",
               "examples", km, kn, nm - km, nn - kn, tgt.T);
        printf("%-28s members %.4f, non-members %.4f (%.1fs)\n", "mean loss", mlm, mln, secs);
        char head[64];
        snprintf(head, sizeof head, "TPR at FPR <= %g", alpha);
        printf("%-28s %-8s %-20s %s\n", "attack", "AUC", head, "FPR reached");
        printf("%-28s %-8.4f %-20.4f %.4f\n", "loss threshold", la.auc, la.tpr, la.fpr);
        if (ref) printf("%-28s %-8.4f %-20.4f %.4f\n", "reference-calibrated", ra.auc, ra.tpr, ra.fpr);
    }
    rc = 0;
done:
    if (sf) fclose(sf);
    free(sm), free(sn), free(rsm), free(rsn), free(lm), free(ln), free(pos), free(neg);
    free(cm), free(cn), free(rcm), free(rcn);
    loom_dataset_free(dm);
    loom_dataset_free(dn);
    loom_tokenizer_free(tok);
    scorer_close(&rs);
    scorer_close(&tgt);
    return rc;
}

/* ---------------------------------------------------------------- loom audit canaries */

/* Appends each canary `repeat` times to path, each copy its own blank-line separated paragraph (a
 * separate example for the paragraph and line splits alike). */
static int insert_canaries(const char *path, char **lines, size_t n, long repeat) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "loom audit canaries: --insert %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "loom audit canaries: --insert %s is not a regular file\n", path);
        return 1;
    }
    if (st.st_size > AUDIT_MAX_FILE) {
        fprintf(stderr, "loom audit canaries: --insert %s has %lld bytes, more than the limit of %ld MiB\n", path,
                (long long)st.st_size, AUDIT_MAX_FILE >> 20);
        return 1;
    }
    int last_nl = 1;
    FILE *f = fopen(path, "rb");
    if (f && st.st_size > 0 && fseek(f, -1, SEEK_END) == 0) last_nl = fgetc(f) == '\n';
    if (f) fclose(f);
    f = fopen(path, "ab");
    if (!f) {
        fprintf(stderr, "loom audit canaries: --insert %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (!last_nl) fputc('\n', f);
    for (long r = 0; r < repeat; r++)
        for (size_t i = 0; i < n; i++) fprintf(f, "\n%s\n", lines[i]);
    if (fclose(f) != 0) {
        fprintf(stderr, "loom audit canaries: --insert %s: write error\n", path);
        return 1;
    }
    return 0;
}

static int cmd_canaries(int argc, char **argv) {
    const char *out = NULL, *fmt = DEFAULT_FORMAT, *insert = NULL;
    long n = 1, seed = 1, repeat = 1;
    cli_opt opts[] = {
        {"out", OPT_STR, &out, "directory written: canaries.txt (one a line) and canaries.json (format, space, secrets)", 0, 0},
        {"n", OPT_LONG, &n, "canaries", 1, AUDIT_MAX_CANARIES},
        {"seed", OPT_LONG, &seed, "seed of the secrets (stream \"cnry\")", 0, 9e18},
        {"format", OPT_STR, &fmt, "template: each '#' is a random decimal digit (1 to 18 of them)", 0, 0},
        {"insert", OPT_STR, &insert, "append the canaries to this client's text file (each copy its own paragraph)", 0, 0},
        {"repeat", OPT_LONG, &repeat, "with --insert: copies of each canary appended", 1, 1000000},
    };
    int pr = cli_parse(argc, argv, "loom audit canaries --out DIR [--n N] [--seed S] [--format F] [--insert FILE [--repeat R]]",
                       "Draws N distinct random canaries of --format (each '#' a decimal digit drawn from --seed; the\n"
                       "candidate space is every filling, 10^digits strings) and writes them to DIR for loom audit\n"
                       "exposure. With --insert, appends them --repeat times to a copy of one client's data file\n"
                       "(copy the clients directory first: the file is changed in place).",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (!out) {
        fprintf(stderr, "loom audit canaries: --out is required (the canary directory)\n");
        return 2;
    }
    if (repeat != 1 && !insert) {
        fprintf(stderr, "loom audit canaries: --repeat needs --insert (the file the copies go into)\n");
        return 2;
    }
    struct stat ist;
    errno = 0;
    if (insert && (stat(insert, &ist) != 0 || !S_ISREG(ist.st_mode))) {
        fprintf(stderr, "loom audit canaries: --insert %s: %s\n", insert,
                errno ? strerror(errno) : "not a regular file");
        return 1;
    }
    int digits;
    uint64_t space;
    if (loom_audit_format_check(fmt, &digits, &space) != LOOM_OK) {
        fprintf(stderr, "loom audit canaries: --format: %s\n", loom_errmsg());
        return 2;
    }
    if ((uint64_t)n > space / 2) {
        fprintf(stderr, "loom audit canaries: --n %ld: the format's %llu candidates allow at most %llu distinct canaries\n",
                n, (unsigned long long)space, (unsigned long long)(space / 2));
        return 2;
    }
    if (cli_out_dir("--out", out) != 0) return 1;
    uint64_t *v = malloc((size_t)n * sizeof *v);
    char **lines = calloc((size_t)n, sizeof *lines);
    size_t flen = strlen(fmt);
    int rc = 1;
    json_t *root = json_object(), *arr = json_array(), *sec = json_array();
    if (!v || !lines || !root || !arr || !sec) goto oom;
    if (loom_audit_canary_draw((uint64_t)seed, space, (size_t)n, v) != LOOM_OK) {
        cli_fail("canaries");
        goto done;
    }
    for (long i = 0; i < n; i++) {
        if (!(lines[i] = malloc(flen + 1))) goto oom;
        loom_audit_format_fill(fmt, v[i], lines[i], flen + 1);
        json_array_append_new(arr, json_string(lines[i]));
        json_array_append_new(sec, json_integer((json_int_t)v[i]));
    }
    json_object_set_new(root, "format", json_string(fmt));
    json_object_set_new(root, "digits", json_integer(digits));
    json_object_set_new(root, "space", json_integer((json_int_t)space));
    json_object_set_new(root, "seed", json_integer(seed));
    json_object_set_new(root, "canaries", arr);
    json_object_set_new(root, "secrets", sec);
    arr = sec = NULL;
    if (insert) {
        json_object_set_new(root, "inserted_into", json_string(insert));
        json_object_set_new(root, "repeat", json_integer(repeat));
    }
    char path[4200];
    char *js = json_dumps(root, JSON_INDENT(1));
    if (!js) goto oom;
    snprintf(path, sizeof path, "%s/canaries.json", out);
    int wr = loom_write_file_atomic(path, js, strlen(js));
    free(js);
    if (wr != LOOM_OK) {
        cli_fail("--out");
        goto done;
    }
    loom_strbuf txt = {0};
    for (long i = 0; i < n; i++)
        if (loom_strbuf_add(&txt, lines[i], flen) != LOOM_OK || loom_strbuf_add(&txt, "\n", 1) != LOOM_OK) {
            free(txt.s);
            goto oom;
        }
    snprintf(path, sizeof path, "%s/canaries.txt", out);
    wr = loom_write_file_atomic(path, txt.s, txt.n);
    free(txt.s);
    if (wr != LOOM_OK) {
        cli_fail("--out");
        goto done;
    }
    if (insert && insert_canaries(insert, lines, (size_t)n, repeat)) goto done;
    fprintf(stderr, "loom audit canaries: %ld canaries of '%s' (%llu candidates) in %s/canaries.json%s%s%s\n", n, fmt,
            (unsigned long long)space, out, insert ? ", appended to " : "", insert ? insert : "",
            insert ? (repeat > 1 ? " (repeated)" : "") : "");
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "loom audit canaries: out of memory\n");
done:
    for (long i = 0; lines && i < n; i++) free(lines[i]);
    free(lines);
    free(v);
    json_decref(arr);
    json_decref(sec);
    json_decref(root);
    return rc;
}

/* ---------------------------------------------------------------- loom audit exposure */

typedef struct {
    char *fmt;
    size_t n;
    char **lines;
    uint64_t *v;
} canary_set;

static void canary_set_free(canary_set *c) {
    for (size_t i = 0; c->lines && i < c->n; i++) free(c->lines[i]);
    free(c->lines);
    free(c->v);
    free(c->fmt);
    memset(c, 0, sizeof *c);
}

/* Reads DIR/canaries.json; prints errors naming the file. */
static int canary_set_read(canary_set *c, const char *dir) {
    memset(c, 0, sizeof *c);
    char path[4200];
    snprintf(path, sizeof path, "%s/canaries.json", dir);
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "loom audit exposure: --canaries %s: %s (make it with loom audit canaries --out %s)\n", path,
                strerror(errno), dir);
        return 1;
    }
    if (st.st_size > AUDIT_MAX_JSON) {
        fprintf(stderr, "loom audit exposure: %s has %lld bytes, more than the limit of %ld MiB\n", path,
                (long long)st.st_size, AUDIT_MAX_JSON >> 20);
        return 1;
    }
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        fprintf(stderr, "loom audit exposure: %s: line %d: %s\n", path, je.line, je.text);
        return 1;
    }
    int rc = 1;
    json_t *f = json_object_get(root, "format"), *arr = json_object_get(root, "canaries");
    if (!json_is_string(f)) {
        fprintf(stderr, "loom audit exposure: %s: \"format\" must be a string\n", path);
        goto done;
    }
    if (loom_audit_format_check(json_string_value(f), NULL, NULL) != LOOM_OK) {
        fprintf(stderr, "loom audit exposure: %s: \"format\": %s\n", path, loom_errmsg());
        goto done;
    }
    if (!json_is_array(arr) || json_array_size(arr) < 1 || json_array_size(arr) > AUDIT_MAX_CANARIES) {
        fprintf(stderr, "loom audit exposure: %s: \"canaries\" must be an array of 1 to %d strings\n", path,
                AUDIT_MAX_CANARIES);
        goto done;
    }
    c->fmt = loom_strdup(json_string_value(f));
    c->n = json_array_size(arr);
    c->lines = calloc(c->n, sizeof *c->lines);
    c->v = calloc(c->n, sizeof *c->v);
    if (!c->fmt || !c->lines || !c->v) {
        fprintf(stderr, "loom audit exposure: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < c->n; i++) {
        json_t *s = json_array_get(arr, i);
        if (!json_is_string(s) || loom_audit_format_parse(c->fmt, json_string_value(s), &c->v[i]) != LOOM_OK) {
            fprintf(stderr, "loom audit exposure: %s: canary %zu: %s\n", path, i + 1,
                    json_is_string(s) ? loom_errmsg() : "not a string");
            goto done;
        }
        if (!(c->lines[i] = loom_strdup(json_string_value(s)))) {
            fprintf(stderr, "loom audit exposure: out of memory\n");
            goto done;
        }
    }
    rc = 0;
done:
    json_decref(root);
    if (rc) canary_set_free(c);
    return rc;
}

/* Log-perplexities px[i] (sum of token losses, nats) of the n strings of candidate numbers v[] in fmt,
 * tokenized AUDIT_CHUNK at a time. */
static int score_strings(scorer *s, const loom_tokenizer *tok, const char *fmt, int bos, int eos, const uint64_t *v,
                         size_t n, double *px) {
    size_t flen = strlen(fmt);
    size_t chunk = n < AUDIT_CHUNK ? n : AUDIT_CHUNK;
    char *buf = malloc(chunk * (flen + 1) + 1);
    const char **texts = malloc(chunk * sizeof *texts);
    double *sum = malloc(chunk * sizeof *sum);
    long *cnt = malloc(chunk * sizeof *cnt);
    int rc = buf && texts && sum && cnt ? LOOM_OK : loom_error(LOOM_ENOMEM, "out of memory");
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.add_bos = bos;
    o.add_eos = eos;
    for (size_t first = 0; rc == LOOM_OK && first < n; first += chunk) {
        size_t k = n - first < chunk ? n - first : chunk;
        for (size_t i = 0; i < k; i++) {
            char *p = buf + i * (flen + 1);
            loom_audit_format_fill(fmt, v[first + i], p, flen + 1);
            texts[i] = p;
        }
        loom_dataset *ds = NULL;
        rc = loom_dataset_from_texts(&ds, texts, NULL, NULL, k, &o, tok);
        if (rc == LOOM_OK) rc = score_dataset(s, ds, sum, cnt);
        for (size_t i = 0; rc == LOOM_OK && i < k; i++) {
            if (cnt[i] <= 0) rc = loom_error(LOOM_EINVAL, "'%s' has no token to score", texts[i]);
            else if (ds->ex[i].n > (uint32_t)s->T + 1)
                rc = loom_error(LOOM_ERANGE, "'%s' has %u tokens, more than --seq-len %d + 1", texts[i], ds->ex[i].n, s->T);
            px[first + i] = sum[i];
        }
        loom_dataset_free(ds);
    }
    free(buf);
    free(texts);
    free(sum);
    free(cnt);
    return rc;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int cmd_exposure(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *tokp = NULL, *dir = NULL, *base_dtype = NULL, *bos_s = "auto",
               *eos_s = "auto";
    long K = 1000, seed = 1;
    int T = 0, B = 64, threads = 0, json = 0;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "the audited model: a model directory, llama2.c .bin or .gguf", 0, 0},
        {"adapter", OPT_STR, &adapter, "its PEFT-layout adapter directory", 0, 0},
        {"base-dtype", OPT_STR, &base_dtype, "hold the frozen base's linear weights as f32, bf16 or int8 (with --adapter)", 0, 0},
        {"tokenizer", OPT_STR, &tokp, "tokenizer (default: the model's, or byte-level for 259-token models)", 0, 0},
        {"canaries", OPT_STR, &dir, "directory written by loom audit canaries (canaries.json)", 0, 0},
        {"candidates", OPT_LONG, &K, "random candidates each canary is ranked among (all of the space when K >= its size - 1)", 1, 1000000},
        {"seed", OPT_LONG, &seed, "seed of the candidates (stream \"cand\")", 0, 9e18},
        {"seq-len", OPT_INT, &T, "positions of the scoring window (0 = min(128, the model's positions))", 0, 1048576},
        {"bos", OPT_STR, &bos_s, "start each example with BOS: auto (as loom sim's data loader: when the tokenizer has one), yes or no (a model trained by loom train on plain text never saw BOS)", 0, 0},
        {"eos", OPT_STR, &eos_s, "end each example with EOS: auto (as loom sim's data loader: when the tokenizer has one), yes or no (loom train on plain text: no)", 0, 0},
        {"batch", OPT_INT, &B, "strings per forward pass", 1, 4096},
        {"threads", OPT_INT, &threads, "threads (0 = all cores)", 0, cli_max_threads()},
        {"json", OPT_FLAG, &json, "print one JSON object", 0, 0},
    };
    int pr = cli_parse(argc, argv, "loom audit exposure --model M [--adapter A] --canaries DIR [--candidates K] [--json]",
                       "Exposure of each canary of DIR (Carlini et al. 2019): its log-perplexity under the model (the\n"
                       "sum of its token losses, with BOS and EOS as loom sim's loader adds them) is ranked among K\n"
                       "candidates of the same format drawn uniformly from its space (without the canary itself; every\n"
                       "other string of the space when K >= its size - 1): rank = 1 + #lower + #equal / 2, exposure =\n"
                       "log2(K + 1) - log2(rank), in [0, log2(K + 1)] bits; about 1.44 for a canary the model never\n"
                       "saw, log2(K + 1) for one it memorised. Prints each canary's exposure and the mean and maximum.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (!model || !dir) {
        fprintf(stderr, "loom audit exposure: --model and --canaries are required\n");
        return 2;
    }
    int bos = special_kind(bos_s), eos = special_kind(eos_s);
    if (bos < -1 || eos < -1) {
        fprintf(stderr, "loom audit exposure: %s '%s': give auto, yes or no\n", bos < -1 ? "--bos" : "--eos",
                bos < -1 ? bos_s : eos_s);
        return 2;
    }
    canary_set cs;
    if (canary_set_read(&cs, dir)) return 1;
    if (threads > 0) loom_set_threads(threads);
    scorer s;
    int rc = scorer_open(&s, model, adapter, base_dtype, B, T, "--model", "--adapter");
    if (rc) {
        canary_set_free(&cs);
        return rc;
    }
    rc = 1;
    loom_tokenizer *tok = NULL;
    uint64_t space;
    loom_audit_format_check(cs.fmt, NULL, &space);
    int all = (uint64_t)K >= space - 1;
    size_t nc = all ? (size_t)space : (size_t)K;
    uint64_t *cand = malloc(nc * sizeof *cand);
    double *cpx = malloc(nc * sizeof *cpx), *kpx = malloc(cs.n * sizeof *kpx), *own = malloc(nc * sizeof *own),
           *expo = malloc(cs.n * sizeof *expo), *rank = malloc(cs.n * sizeof *rank);
    uint64_t *sorted = malloc(nc * sizeof *sorted);
    if (!cand || !cpx || !kpx || !own || !expo || !rank || !sorted) {
        fprintf(stderr, "loom audit exposure: out of memory for %zu candidates\n", nc);
        goto done;
    }
    if (cli_tokenizer(&tok, tokp, model, s.m) != LOOM_OK) {
        cli_fail("--tokenizer");
        goto done;
    }
    for (size_t j = 0; j < nc; j++) cand[j] = all ? j : loom_audit_candidate((uint64_t)seed, space, j);
    double t0 = loom_now();
    if (score_strings(&s, tok, cs.fmt, bos, eos, cs.v, cs.n, kpx) != LOOM_OK ||
        score_strings(&s, tok, cs.fmt, bos, eos, cand, nc, cpx) != LOOM_OK) {
        cli_fail("scoring");
        goto done;
    }
    double sum = 0, mx = -INFINITY;
    size_t kmin = nc;
    for (size_t i = 0; i < cs.n; i++) {
        size_t k = 0;
        for (size_t j = 0; j < nc; j++)
            if (cand[j] != cs.v[i]) own[k++] = cpx[j];
        if (k < kmin) kmin = k;
        if (loom_audit_exposure(kpx[i], own, k, &expo[i], &rank[i]) != LOOM_OK) {
            cli_fail("exposure");
            goto done;
        }
        sum += expo[i];
        if (expo[i] > mx) mx = expo[i];
    }
    /* distinct candidates drawn (duplicates are kept: they are independent draws of the estimate) */
    memcpy(sorted, cand, nc * sizeof *sorted);
    qsort(sorted, nc, sizeof *sorted, cmp_u64);
    size_t distinct = nc ? 1 : 0;
    for (size_t j = 1; j < nc; j++) distinct += sorted[j] != sorted[j - 1];
    double mean = sum / (double)cs.n, ceiling = log2((double)kmin + 1);
    if (json) {
        printf("{\"canaries\": %zu, \"candidates\": %zu, \"distinct_candidates\": %zu, \"exhaustive\": %s, \"space\": %llu, "
               "\"max_possible\": %.17g, \"mean_exposure\": %.17g, \"max_exposure\": %.17g, \"exposures\": [",
               cs.n, kmin, distinct, all ? "true" : "false", (unsigned long long)space, ceiling, mean, mx);
        for (size_t i = 0; i < cs.n; i++) printf("%s%.17g", i ? ", " : "", expo[i]);
        printf("], \"ranks\": [");
        for (size_t i = 0; i < cs.n; i++) printf("%s%.17g", i ? ", " : "", rank[i]);
        printf("]}\n");
    } else {
        printf("%-36s %8s %10s %12s\n", "canary", "exposure", "rank", "log-ppl");
        for (size_t i = 0; i < cs.n; i++) printf("%-36s %8.3f %10.1f %12.4f\n", cs.lines[i], expo[i], rank[i], kpx[i]);
        printf("%-36s %8.3f (max %.3f, ceiling log2(%zu + 1) = %.3f; %zu candidates of %llu%s, %.1fs)\n", "mean exposure",
               mean, mx, kmin, ceiling, nc, (unsigned long long)space, all ? ", all" : "", loom_now() - t0);
    }
    rc = 0;
done:
    free(cand), free(cpx), free(kpx), free(own), free(expo), free(rank), free(sorted);
    loom_tokenizer_free(tok);
    scorer_close(&s);
    canary_set_free(&cs);
    return rc;
}

/* ---------------------------------------------------------------- dispatch */

int cmd_audit(int argc, char **argv) {
    const char *what = argc >= 2 ? argv[1] : "";
    if (!strcmp(what, "mia")) return cmd_mia(argc - 1, argv + 1);
    if (!strcmp(what, "canaries")) return cmd_canaries(argc - 1, argv + 1);
    if (!strcmp(what, "exposure")) return cmd_exposure(argc - 1, argv + 1);
    int help = !strcmp(what, "--help") || !strcmp(what, "-h");
    if (!help && *what) fprintf(stderr, "loom audit: unknown audit '%s' (mia, canaries or exposure; see loom audit --help)\n\n", what);
    fprintf(help ? stdout : stderr,
            "usage: loom audit mia --model M [--adapter A] --members FILE --nonmembers FILE [--reference M2] [--json]\n"
            "       loom audit canaries --out DIR [--n N] [--seed S] [--format F] [--insert FILE --repeat R]\n"
            "       loom audit exposure --model M [--adapter A] --canaries DIR [--candidates K] [--json]\n\n"
            "Privacy audits of a trained model (loom audit <audit> --help for each):\n"
            "  mia       membership inference: ROC AUC and TPR at 1%% FPR of the loss-threshold attack and\n"
            "            of the reference-calibrated attack\n"
            "  canaries  random canary strings (\"my secret code is # # # # # #\") to insert into a client's data\n"
            "  exposure  each canary's exposure: log2 of its rank among random candidates of its format\n");
    return help ? 0 : 2;
}
