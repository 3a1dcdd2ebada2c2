/* loom verify: run a reference file's batch through a model and compare logits, loss, every gradient
 * and two AdamW steps with the reference values (tolerances of ../shared/reference/README.md). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "loom/core.h"
#include "loom/kernels.h"
#include "loom/model.h"
#include "loom/optim.h"
#include "loom/peft.h"
#include "loom/safetensors.h"

typedef struct {
    int rows, failed;
    int verbose;
} report;

/* Tolerances. f32: those of ../shared/reference/README.md. bf16 (--precision bf16), derived from bf16's
 * 8 significant bits: every matmul rounds both operands (relative 2^-9 each), so each product term is
 * off by up to 2^-8 relative and a matmul's output by about 2^-8 of its size (the random-walk model: the
 * errors of a K-term sum grow as sqrt(K), like the sum of random-signed terms itself). A logit passes
 * through d = 4L + 1 matmuls (QKV, O, UP, DOWN per layer, the head) whose errors add in quadrature:
 * sqrt(d) 2^-8 relative to the logits' size, times 4 for the largest of many elements (a 4-sigma tail):
 *   logits  4 sqrt(d) 2^-8 max|ref| (at least the f32 tolerance)
 *   loss    2 x the logits' tolerance (d loss / d z sums to at most 2 in absolute value over a row)
 *   grads   4 sqrt(2d) 2^-8 max|ref| + 1e-7 per tensor (the backward adds d more matmuls)
 *   AdamW   2 lr per step taken on every element: an Adam step is about lr sign(g) at the start, so a
 *           gradient element small enough for bf16 to flip its sign moves by up to 2 lr
 * (the zero-gradient key-bias slice stays exactly 0 in bf16 too, checked at 1e-6). */
typedef struct {
    double logits_rel, loss_mul, grad_rel, adam_good1, adam_good2;
    int bf16;
} tolerances;

static tolerances tolerances_for(int bf16, int L, double lr) {
    tolerances t = {1e-5, 0, 1e-4, 2e-5, 5e-5, bf16};
    if (bf16) {
        double d = 4.0 * L + 1;
        t.logits_rel = 4 * sqrt(d) / 256;
        t.loss_mul = 2;
        t.grad_rel = 4 * sqrt(2 * d) / 256;
        t.adam_good1 = 2 * lr;
        t.adam_good2 = 4 * lr;
    }
    return t;
}

static double tol_logits(const tolerances *t, double maxref) { return fmax(1e-4, t->logits_rel * maxref); }
static double tol_loss(const tolerances *t, double maxref_logits) {
    return t->bf16 ? t->loss_mul * tol_logits(t, maxref_logits) : 1e-5;
}

static void row(report *r, const char *what, const char *name, double maxref, double maxd, double tol, const char *note) {
    int ok = maxd <= tol && !isnan(maxd);
    r->rows++;
    if (!ok) r->failed++;
    if (ok && !r->verbose && strcmp(what, "logits") && strcmp(what, "loss")) return;
    printf("  %-7s %-48s %11.3e %11.3e %10.1e  %-4s %s\n", what, name, maxref, maxd, tol, ok ? "ok" : "FAIL", note ? note : "");
}

/* Reads a reference float tensor by name into a new buffer of n floats. */
static float *ref_f32(const loom_st_file *f, const char *name, size_t n, int *rc) {
    const loom_st_tensor *t = loom_st_find(f, name);
    if (!t) {
        *rc = loom_error(LOOM_ENOTFOUND, "reference has no tensor %s", name);
        return NULL;
    }
    float *d = malloc((n ? n : 1) * sizeof *d);
    if (!d) {
        *rc = loom_error(LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    if ((*rc = loom_st_to_f32(t, d, n)) != LOOM_OK) {
        free(d);
        return NULL;
    }
    return d;
}

/* Marks elements with a structurally-zero gradient that must stay exactly unchanged. */
static int key_slice(const loom_model *m, const loom_tensor *t, size_t j) {
    /* GPT-2 c_attn.bias [3C]: the key part [C, 2C) has an exact gradient of 0 */
    if (loom_model_config(m)->arch != LOOM_ARCH_GPT2 || !strstr(t->name, "attn.c_attn.bias")) return 0;
    return j >= (size_t)loom_model_config(m)->dim && j < 2 * (size_t)loom_model_config(m)->dim;
}

static int compare_adamw(report *r, const loom_model *m, const loom_st_file *f, const char *prefix, const float *params,
                         const float *orig, const float *refgrad, const int *token_used, int T, double tol_good,
                         double tol_ill, double lr) {
    int rc = LOOM_OK;
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const loom_tensor *t = loom_model_tensor(m, i);
        char nm[160];
        snprintf(nm, sizeof nm, "%s.%s", prefix, t->name);
        float *ref = ref_f32(f, nm, t->numel, &rc);
        if (!ref) return rc;
        const float *p = params + t->offset, *g = refgrad + t->offset, *o = orig + t->offset;
        double dgood = 0, dill = 0, maxref = 0;
        int frozen_moved = 0;
        for (size_t j = 0; j < t->numel; j++) {
            double d = fabs((double)p[j] - ref[j]);
            maxref = fmax(maxref, fabs(ref[j]));
            int structural = (t->kind == LOOM_T_POS && j / (size_t)loom_model_config(m)->dim >= (size_t)T) ||
                             (loom_model_config(m)->arch == LOOM_ARCH_LLAMA && t->kind == LOOM_T_EMBED && !token_used[j / (size_t)loom_model_config(m)->dim]);
            if (structural) frozen_moved |= p[j] != o[j];
            if (fabs(g[j]) > 1e-6 && !key_slice(m, t, j))
                dgood = fmax(dgood, d);
            else
                dill = fmax(dill, d);
        }
        row(r, prefix, t->name, maxref, dgood, tol_good, "well-conditioned elements");
        row(r, prefix, t->name, maxref, dill, tol_ill, "|grad| <= 1e-6 or zero-gradient slice (bound 2*lr per step)");
        (void)lr;
        if (frozen_moved) {
            r->rows++;
            r->failed++;
            printf("  %-7s %-48s a structurally-zero-gradient element moved  FAIL\n", prefix, t->name);
        }
        free(ref);
    }
    return LOOM_OK;
}

/* Reference with a LoRA adapter on a frozen base: logits, loss, grad.<peft name> of every LoRA tensor,
 * AdamW over the LoRA vector only (adamw1/adamw2), loss_after_adamw1 and merged.<base weight>. */
static int verify_adapter(report *r, loom_model *m, const char *adapter, const loom_st_file *f, const int32_t *tokens,
                          const int32_t *targets, int B, int T, int prec) {
    loom_tset *ts = NULL;
    loom_ws *ws = NULL;
    loom_optimizer *opt = NULL;
    float *vec = NULL, *g = NULL, *refgrad = NULL, *ref = NULL, *merged = NULL;
    int N = B * T, V = loom_model_config(m)->vocab, rc;
    if ((rc = loom_tset_load_peft(&ts, m, adapter)) != LOOM_OK) return rc;
    size_t dim = loom_tset_dim(ts);
    printf("  adapter %s: %s, %d tensors, %zu parameters (scale %g)\n", adapter, loom_peft_method_name(loom_tset_config(ts)->method),
           loom_tset_count(ts), dim, (double)loom_tset_lora_scale(ts));
    vec = loom_alloc(dim * sizeof(float));
    g = loom_calloc(dim, sizeof(float));
    refgrad = loom_alloc(dim * sizeof(float));
    if (!vec || !g || !refgrad) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(vec, loom_tset_data(ts), dim * sizeof(float));
    const loom_peft *pf = loom_tset_plan(ts);
    if ((rc = loom_ws_create_ex(&ws, m, B, T, pf)) != LOOM_OK) goto done;
    if (prec != LOOM_PREC_F32 && (rc = loom_ws_set_precision(ws, prec)) != LOOM_OK) goto done;
    const tolerances tl = tolerances_for(prec == LOOM_PREC_BF16, loom_model_config(m)->n_layer, 1e-3);
    double zmax = 0;
    float loss;
    if ((rc = loom_forward_ex(m, loom_model_params(m), ws, pf, vec, tokens, targets, B, T, &loss)) != LOOM_OK) goto done;
    if (!(ref = ref_f32(f, "logits", (size_t)N * V, &rc))) goto done;
    {
        const float *mine = loom_ws_logits(ws);
        double md = 0, mr = 0;
        for (size_t j = 0; j < (size_t)N * V; j++) {
            md = fmax(md, fabs((double)mine[j] - ref[j]));
            mr = fmax(mr, fabs(ref[j]));
        }
        row(r, "logits", "logits", mr, md, tol_logits(&tl, mr), NULL);
        zmax = mr;
        free(ref);
        if (!(ref = ref_f32(f, "loss", 1, &rc))) goto done;
        row(r, "loss", "loss", fabs(ref[0]), fabs((double)loss - ref[0]), tol_loss(&tl, zmax), NULL);
        free(ref);
        ref = NULL;
    }
    if ((rc = loom_backward_ex(m, loom_model_params(m), ws, pf, vec, g)) != LOOM_OK) goto done;
    for (int i = 0; i < loom_tset_count(ts); i++) {
        const loom_tset_entry *e = loom_tset_entry_at(ts, i);
        char nm[200];
        snprintf(nm, sizeof nm, "grad.%s", e->name);
        if (!(ref = ref_f32(f, nm, e->numel, &rc))) goto done;
        memcpy(refgrad + e->offset, ref, e->numel * sizeof(float));
        double md = 0, mr = 0;
        for (size_t j = 0; j < e->numel; j++) {
            md = fmax(md, fabs((double)g[e->offset + j] - ref[j]));
            mr = fmax(mr, fabs(ref[j]));
        }
        row(r, "grad", e->name, mr, md, tl.grad_rel * mr + 1e-7, NULL);
        free(ref);
        ref = NULL;
    }
    {
        loom_opt_config oc;
        loom_opt_defaults(&oc, LOOM_OPT_ADAMW);
        oc.lr = 1e-3f;
        oc.weight_decay = 0.0f;
        if ((rc = loom_optimizer_create(&opt, &oc, dim)) != LOOM_OK) goto done;
        for (int step = 1; step <= 2; step++) {
            loom_optimizer_step(opt, vec, g, oc.lr);
            for (int i = 0; i < loom_tset_count(ts); i++) {
                const loom_tset_entry *e = loom_tset_entry_at(ts, i);
                char nm[200], what[16];
                snprintf(what, sizeof what, "adamw%d", step);
                snprintf(nm, sizeof nm, "%s.%s", what, e->name);
                if (!(ref = ref_f32(f, nm, e->numel, &rc))) goto done;
                double dgood = 0, dill = 0, mr = 0;
                for (size_t j = 0; j < e->numel; j++) {
                    double d = fabs((double)vec[e->offset + j] - ref[j]);
                    mr = fmax(mr, fabs(ref[j]));
                    if (fabs(refgrad[e->offset + j]) > 1e-6) dgood = fmax(dgood, d);
                    else dill = fmax(dill, d);
                }
                row(r, what, e->name, mr, dgood, step == 1 ? tl.adam_good1 : tl.adam_good2, "well-conditioned elements");
                row(r, what, e->name, mr, dill, tl.bf16 ? 2 * step * oc.lr : 2 * oc.lr, "|grad| <= 1e-6 (bound 2*lr per step)");
                free(ref);
                ref = NULL;
            }
            if (step == 2) break;
            float l1;
            if ((rc = loom_forward_ex(m, loom_model_params(m), ws, pf, vec, tokens, targets, B, T, &l1)) != LOOM_OK) goto done;
            if (!(ref = ref_f32(f, "loss_after_adamw1", 1, &rc))) goto done;
            row(r, "loss", "loss_after_adamw1", fabs(ref[0]), fabs((double)l1 - ref[0]), tl.bf16 ? 2 * tol_loss(&tl, zmax) : 1e-5, NULL);
            free(ref);
            ref = NULL;
            memset(g, 0, dim * sizeof(float));
            if ((rc = loom_backward_ex(m, loom_model_params(m), ws, pf, vec, g)) != LOOM_OK) goto done;
        }
    }
    /* merging the adapter as loaded (before the AdamW steps) into the base weights */
    if (!(merged = loom_alloc(loom_model_n_params(m) * sizeof(float)))) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(merged, loom_model_params(m), loom_model_n_params(m) * sizeof(float));
    if ((rc = loom_tset_merge(ts, loom_tset_data(ts), merged)) != LOOM_OK) goto done;
    for (size_t i = 0; i < loom_st_count(f); i++) {
        const loom_st_tensor *t = loom_st_at(f, i);
        if (strncmp(t->name, "merged.", 7)) continue;
        int ti = loom_model_find(m, t->name + 7);
        if (ti < 0) {
            rc = loom_error(LOOM_ENOTFOUND, "reference tensor %s names no weight of the model", t->name);
            goto done;
        }
        const loom_tensor *mt = loom_model_tensor(m, ti);
        if (!(ref = ref_f32(f, t->name, mt->numel, &rc))) goto done;
        double md = 0, mr = 0;
        for (size_t j = 0; j < mt->numel; j++) {
            md = fmax(md, fabs((double)merged[mt->offset + j] - ref[j]));
            mr = fmax(mr, fabs(ref[j]));
        }
        row(r, "merged", mt->name, mr, md, 1e-5 * fmax(1.0, mr), NULL);
        free(ref);
        ref = NULL;
    }
    rc = LOOM_OK;
done:
    free(ref);
    loom_free(merged);
    loom_free(vec);
    loom_free(g);
    loom_free(refgrad);
    loom_optimizer_free(opt);
    loom_ws_free(ws);
    loom_tset_free(ts);
    return rc;
}

int cmd_verify(int argc, char **argv) {
    const char *model_path = NULL, *ref_path = NULL, *adapter = NULL, *precision = "f32";
    int verbose = 0;
    cli_opt opts[] = {
        {"model", OPT_STR, &model_path, "model directory (config.json + model.safetensors) or llama2.c .bin", 0, 0},
        {"reference", OPT_STR, &ref_path, "reference.safetensors with tokens, targets, logits, loss, grad.*, adamw1.*, adamw2.*", 0, 0},
        {"adapter", OPT_STR, &adapter, "PEFT-layout adapter directory: verify the adapter's tensors on the frozen base", 0, 0},
        {"verbose", OPT_FLAG, &verbose, "print a row for every tensor, not only failures", 0, 0},
        {"precision", OPT_STR, &precision, "matmul precision: f32 (default) or bf16 (mixed precision, with the bf16 tolerances)", 0, 0},
    };
    int pr = cli_parse(argc, argv, "loom verify --model DIR [--adapter DIR] --reference FILE",
                       "Checks loom's numerics against reference tensors from a PyTorch oracle: logits, loss,\n"
                       "every parameter gradient and two AdamW steps (lr 1e-3, betas 0.9/0.999, eps 1e-8,\n"
                       "no weight decay). Prints a per-tensor error table; exits 1 when any error exceeds its\n"
                       "tolerance. Tolerances: logits 1e-4 (or 1e-5*max|ref|), loss 1e-5, gradients\n"
                       "1e-4*max|ref|+1e-7 per tensor (absolute 1e-6 on GPT-2's zero-gradient key-bias slice),\n"
                       "AdamW 2e-5 / 5e-5 on elements with |grad| > 1e-6 and 2*lr elsewhere.\n"
                       "With --adapter the base is frozen and the gradients, AdamW steps (over the adapter only)\n"
                       "and merged.* weights (base + adapter merged, 1e-5 * max(1, max|ref|)) are the adapter's.\n"
                       "--precision bf16 runs every matmul with bf16 operands and checks against tolerances derived\n"
                       "from bf16's 8 significant bits, for L layers and d = 4L + 1 matmuls along a path: logits\n"
                       "4 sqrt(d) 2^-8 max|ref|, loss twice that, gradients 4 sqrt(2d) 2^-8 max|ref| + 1e-7,\n"
                       "AdamW 2*lr per step on every element (see src/cli/cmd_verify.c for the derivation).",
                       opts, 5, NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (!model_path || !ref_path) {
        fprintf(stderr, "loom verify: --model and --reference are required (see --help)\n");
        return 2;
    }
    int prec = loom_precision_parse(precision);
    if (prec < 0) {
        fprintf(stderr, "loom verify: --precision %s: expected f32 or bf16\n", precision);
        return 2;
    }
    if (prec == LOOM_PREC_BF16 && !loom_cpu_has_bf16()) {
        fprintf(stderr, "loom verify: --precision bf16: this CPU has no AVX-512 BF16, nothing to verify in bf16\n");
        return 1;
    }
    loom_model *m = NULL;
    loom_st_file *f = NULL;
    if (loom_model_load(&m, model_path) != LOOM_OK) return cli_fail("loading the model");
    if (loom_st_open(&f, ref_path) != LOOM_OK) {
        loom_model_free(m);
        return cli_fail("opening the reference");
    }
    int rc = LOOM_OK;
    const loom_st_tensor *tt = loom_st_find(f, "tokens"), *tg = loom_st_find(f, "targets");
    if (!tt || !tg || tt->ndim != 2 || tg->ndim != 2 || tt->shape[0] != tg->shape[0] || tt->shape[1] != tg->shape[1]) {
        loom_st_close(f);
        loom_model_free(m);
        fprintf(stderr, "loom verify: %s needs 2-D tokens and targets of the same shape\n", ref_path);
        return 1;
    }
    int B = (int)tt->shape[0], T = (int)tt->shape[1], N = B * T, V = loom_model_config(m)->vocab;
    int32_t *tokens = malloc((size_t)N * 4), *targets = malloc((size_t)N * 4);
    loom_st_to_i32(tt, tokens, (size_t)N);
    loom_st_to_i32(tg, targets, (size_t)N);
    report r = {0, 0, verbose};
    loom_ws *ws = NULL;
    float *grads = loom_calloc(loom_model_n_params(m), sizeof(float)), *refgrad = loom_alloc(loom_model_n_params(m) * sizeof(float));
    float *orig = loom_alloc(loom_model_n_params(m) * sizeof(float)), *logits = NULL;
    int *used = calloc((size_t)V, sizeof(int));
    loom_optimizer *opt = NULL;
    float loss = 0;
    if ((rc = loom_ws_create(&ws, m, B, T)) != LOOM_OK) goto done;
    if (prec != LOOM_PREC_F32 && (rc = loom_ws_set_precision(ws, prec)) != LOOM_OK) goto done;
    const tolerances tl = tolerances_for(prec == LOOM_PREC_BF16, loom_model_config(m)->n_layer, 1e-3);
    double zmax = 0;
    for (int i = 0; i < N; i++) used[tokens[i]] = 1;
    memcpy(orig, loom_model_params(m), loom_model_n_params(m) * sizeof(float));
    printf("loom verify: %s on %s (B=%d, T=%d, %zu parameters, %s matmuls)\n", model_path, ref_path, B, T,
           loom_model_n_params(m), loom_precision_name(prec));
    if (adapter) {
        printf("  %-7s %-48s %11s %11s %10s  %s\n", "what", "tensor", "max|ref|", "max|d|", "tol", "");
        rc = verify_adapter(&r, m, adapter, f, tokens, targets, B, T, prec);
        goto done;
    }
    printf("  %-7s %-48s %11s %11s %10s  %s\n", "what", "tensor", "max|ref|", "max|d|", "tol", "");
    if ((rc = loom_forward(m, loom_model_params(m), ws, tokens, targets, B, T, &loss)) != LOOM_OK) goto done;
    /* logits and loss */
    if (!(logits = ref_f32(f, "logits", (size_t)N * V, &rc))) goto done;
    {
        const float *mine = loom_ws_logits(ws);
        double md = 0, mr = 0;
        for (size_t j = 0; j < (size_t)N * V; j++) {
            md = fmax(md, fabs((double)mine[j] - logits[j]));
            mr = fmax(mr, fabs(logits[j]));
        }
        row(&r, "logits", "logits", mr, md, tol_logits(&tl, mr), NULL);
        zmax = mr;
        float refloss;
        float *rl = ref_f32(f, "loss", 1, &rc);
        if (!rl) goto done;
        refloss = rl[0];
        free(rl);
        row(&r, "loss", "loss", fabs(refloss), fabs((double)loss - refloss), tol_loss(&tl, zmax), NULL);
    }
    /* gradients */
    if ((rc = loom_backward(m, loom_model_params(m), ws, grads, NULL)) != LOOM_OK) goto done;
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const loom_tensor *t = loom_model_tensor(m, i);
        char nm[160];
        snprintf(nm, sizeof nm, "grad.%s", t->name);
        float *ref = ref_f32(f, nm, t->numel, &rc);
        if (!ref) goto done;
        memcpy(refgrad + t->offset, ref, t->numel * sizeof(float));
        double md = 0, mr = 0, mkey = 0;
        for (size_t j = 0; j < t->numel; j++) {
            double d = fabs((double)grads[t->offset + j] - ref[j]);
            if (key_slice(m, t, j)) {
                mkey = fmax(mkey, fabs(grads[t->offset + j]));
                continue;
            }
            md = fmax(md, d);
            mr = fmax(mr, fabs(ref[j]));
        }
        row(&r, "grad", t->name, mr, md, tl.grad_rel * mr + 1e-7, NULL);
        if (key_slice(m, t, (size_t)loom_model_config(m)->dim)) row(&r, "grad", t->name, 0.0, mkey, 1e-6, "key slice: exact gradient 0");
        free(ref);
    }
    /* two AdamW steps (torch.optim.AdamW defaults of the reference: lr 1e-3, no weight decay) */
    {
        loom_opt_config oc;
        loom_opt_defaults(&oc, LOOM_OPT_ADAMW);
        oc.lr = 1e-3f;
        oc.weight_decay = 0.0f;
        if ((rc = loom_optimizer_create(&opt, &oc, loom_model_n_params(m))) != LOOM_OK) goto done;
        loom_optimizer_step(opt, loom_model_params(m), grads, oc.lr);
        if ((rc = compare_adamw(&r, m, f, "adamw1", loom_model_params(m), orig, refgrad, used, T, tl.adam_good1,
                                 2 * oc.lr, oc.lr)) != LOOM_OK) goto done;
        float l1;
        if ((rc = loom_forward(m, loom_model_params(m), ws, tokens, targets, B, T, &l1)) != LOOM_OK) goto done;
        float *rl = ref_f32(f, "loss_after_adamw1", 1, &rc);
        if (!rl) goto done;
        row(&r, "loss", "loss_after_adamw1", fabs(rl[0]), fabs((double)l1 - rl[0]), tl.bf16 ? 2 * tol_loss(&tl, zmax) : 1e-5,
            NULL);
        free(rl);
        memset(grads, 0, loom_model_n_params(m) * sizeof(float));
        if ((rc = loom_backward(m, loom_model_params(m), ws, grads, NULL)) != LOOM_OK) goto done;
        loom_optimizer_step(opt, loom_model_params(m), grads, oc.lr);
        if ((rc = compare_adamw(&r, m, f, "adamw2", loom_model_params(m), orig, refgrad, used, T, tl.adam_good2,
                                 tl.bf16 ? 4 * oc.lr : 2 * oc.lr, oc.lr)) != LOOM_OK) goto done;
    }
done:
    if (rc != LOOM_OK) fprintf(stderr, "loom verify: %s\n", loom_errmsg());
    else printf("%d checks, %d failed: %s\n", r.rows, r.failed, r.failed ? "FAIL" : "all within tolerance");
    loom_optimizer_free(opt);
    free(logits);
    free(used);
    loom_free(grads);
    loom_free(refgrad);
    loom_free(orig);
    free(tokens);
    free(targets);
    loom_ws_free(ws);
    loom_st_close(f);
    loom_model_free(m);
    return rc != LOOM_OK || r.failed ? 1 : 0;
}
