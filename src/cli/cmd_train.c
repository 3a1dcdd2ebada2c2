/* loom train: single-process training (pre-training from scratch or fine-tuning) on a text file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "cli/kd_cli.h"
#include "cli/runspec.h"
#include "cli/textdata.h"
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/dp.h"
#include "loom/peft.h"
#include "loom/safetensors.h"
#include "loom/train.h"

/* Mean loss over up to max_windows non-overlapping windows of [lo, hi). */
static double eval_windows(loom_trainer *tr, const token_stream *s, size_t lo, size_t hi, int B, int T, long max_windows,
                           long *count) {
    int32_t *tok = malloc((size_t)B * T * 4), *tgt = malloc((size_t)B * T * 4);
    double total = 0;
    long k = 0, batches = 0;
    *count = 0;
    while (tok && tgt && k < max_windows) {
        int filled = 0;
        for (int b = 0; b < B; b++) {
            if (k < max_windows && text_window(s, lo, hi, T, k, tok + b * T, tgt + b * T)) {
                k++;
                filled++;
            } else {
                for (int t = 0; t < T; t++) tok[b * T + t] = 0, tgt[b * T + t] = -1;
            }
        }
        if (!filled) break;
        float l;
        if (loom_trainer_eval(tr, tok, tgt, &l) != LOOM_OK) break;
        /* weight by counted positions so a short last batch counts correctly */
        long cnt = 0;
        for (int i = 0; i < B * T; i++) cnt += tgt[i] >= 0;
        total += (double)l * cnt;
        *count += cnt;
        batches++;
    }
    free(tok);
    free(tgt);
    return *count ? total / (double)*count : NAN;
}

/* Mean loss over one pass of a dataset batcher (once = 1), weighted by counted targets. */
static double eval_batcher(loom_trainer *tr, loom_batcher *b, int B, int T, long max_batches, long *count) {
    int32_t *tok = malloc((size_t)B * T * 4), *tgt = malloc((size_t)B * T * 4);
    double total = 0;
    *count = 0;
    for (long s = 0; tok && tgt && s < max_batches; s++) {
        size_t rows;
        if (loom_batcher_fill(b, (uint64_t)s, tok, tgt, &rows) != LOOM_OK || rows == 0) break;
        long cnt = 0;
        for (int i = 0; i < B * T; i++) cnt += tgt[i] >= 0;
        if (!cnt) continue;
        float l;
        if (loom_trainer_eval(tr, tok, tgt, &l) != LOOM_OK) break;
        total += (double)l * cnt;
        *count += cnt;
    }
    free(tok);
    free(tgt);
    return *count ? total / (double)*count : NAN;
}

/* Training data: a token stream (plain text, as before) or a dataset with per-token loss masks. */
typedef struct {
    token_stream ts;
    size_t ntrain;
    loom_dataset *ds;
    loom_batcher *train, *val;
} train_data;

static double eval_data(loom_trainer *tr, train_data *d, int B, int T, long max_windows, long *count) {
    if (d->ds) return d->val ? eval_batcher(tr, d->val, B, T, (max_windows + B - 1) / B, count) : NAN;
    return eval_windows(tr, &d->ts, d->ntrain, d->ts.n, B, T, max_windows, count);
}


/* ---------------------------------------------------------------- checkpoints and metrics
 * OUT/checkpoint.safetensors: "vector" (the trained vector: all weights, or the trainable set), "opt.m"
 * and "opt.v" (the optimizer's moments, when it has them), and metadata naming the step reached and
 * the settings a resumed run must share (batches are drawn from (seed, step), so the step is also the
 * data position). Written atomically. */

typedef struct {
    long steps, step;
    int B, T;
    long seed;
    size_t dim;
    float lr;
    const char *optimizer;
} train_state;

static int ckpt_write(const char *dir, loom_trainer *tr, const train_state *st) {
    char path[4200], buf[64];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
    loom_optimizer *o = loom_trainer_optimizer(tr);
    size_t n;
    float *m = loom_optimizer_state(o, 0, &n), *v = loom_optimizer_state(o, 1, &n);
    int64_t shape[1] = {(int64_t)st->dim};
    loom_st_writer *w;
    int rc = loom_st_writer_create(&w);
    if (rc != LOOM_OK) return rc;
    rc = loom_st_writer_add_f32(w, "vector", LOOM_DT_F32, 1, shape, loom_trainer_vector(tr));
    if (rc == LOOM_OK && m) rc = loom_st_writer_add_f32(w, "opt.m", LOOM_DT_F32, 1, shape, m);
    if (rc == LOOM_OK && v) rc = loom_st_writer_add_f32(w, "opt.v", LOOM_DT_F32, 1, shape, v);
#define META(k, fmt, val) \
    if (rc == LOOM_OK) snprintf(buf, sizeof buf, fmt, val), rc = loom_st_writer_meta(w, k, buf)
    META("format", "%s", "loom-train-checkpoint");
    META("step", "%ld", st->step);
    META("steps", "%ld", st->steps);
    META("batch", "%d", st->B);
    META("seq", "%d", st->T);
    META("seed", "%ld", st->seed);
    META("optimizer", "%s", st->optimizer);
    META("lr", "%.9g", st->lr);
#undef META
    if (rc == LOOM_OK) rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    return rc;
}

/* Loads OUT/checkpoint.safetensors into the trainer; *step = the step it reached. */
static int ckpt_read(const char *dir, loom_trainer *tr, const train_state *st, long *step) {
    char path[4200];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return loom_error_context(rc, "--resume");
    const char *fmt = loom_st_meta(f, "format");
    char want[4][64];
    snprintf(want[0], 64, "%ld", st->steps);
    snprintf(want[1], 64, "%d", st->B);
    snprintf(want[2], 64, "%d", st->T);
    snprintf(want[3], 64, "%ld", st->seed);
    static const char *const keys[4][2] = {{"steps", "--steps"}, {"batch", "--batch"}, {"seq", "--seq"}, {"seed", "--seed"}};
    if (!fmt || strcmp(fmt, "loom-train-checkpoint")) {
        rc = loom_error(LOOM_EFORMAT, "%s is not a loom train checkpoint", path);
        goto done;
    }
    for (int i = 0; i < 4; i++) {
        const char *got = loom_st_meta(f, keys[i][0]);
        if (!got || strcmp(got, want[i])) {
            rc = loom_error(LOOM_EINVAL, "%s was written with %s %s, this run has %s", path, keys[i][1], got ? got : "?",
                            want[i]);
            goto done;
        }
    }
    const char *opt = loom_st_meta(f, "optimizer");
    if (!opt || strcmp(opt, st->optimizer)) {
        rc = loom_error(LOOM_EINVAL, "%s was written with --optimizer %s, this run has %s", path, opt ? opt : "?",
                        st->optimizer);
        goto done;
    }
    char *end;
    const char *sv = loom_st_meta(f, "step");
    long s = sv ? strtol(sv, &end, 10) : -1;
    if (!sv || *end || s < 0 || s > st->steps) {
        rc = loom_error(LOOM_EFORMAT, "%s: bad step '%s'", path, sv ? sv : "");
        goto done;
    }
    loom_optimizer *o = loom_trainer_optimizer(tr);
    size_t n;
    float *dst[3] = {loom_trainer_vector(tr), loom_optimizer_state(o, 0, &n), loom_optimizer_state(o, 1, &n)};
    static const char *const names[3] = {"vector", "opt.m", "opt.v"};
    for (int i = 0; i < 3 && rc == LOOM_OK; i++) {
        const loom_st_tensor *t = loom_st_find(f, names[i]);
        if (!dst[i]) continue;
        if (!t) rc = loom_error(LOOM_EFORMAT, "%s has no tensor %s", path, names[i]);
        else if (t->numel != st->dim)
            rc = loom_error(LOOM_EFORMAT, "%s: %s has %zu values, this run trains %zu", path, names[i], t->numel, st->dim);
        else rc = loom_st_to_f32(t, dst[i], st->dim);
    }
    if (rc == LOOM_OK) {
        loom_optimizer_set_steps(o, s);
        *step = s;
    }
done:
    loom_st_close(f);
    return rc;
}

/* ---------------------------------------------------------------- DP-SGD accounting
 * Each step's batch is accounted as Poisson sampling of the N training examples with q = B / N (the
 * batches are fixed-size draws: with replacement for text windows, without for a dataset's epochs;
 * Opacus accounts them the same way), through the RDP accountant of loom/dp.h. */

typedef struct {
    int on;
    double q, sigma, delta, budget; /* budget: NAN = none */
    long n_examples;
} dp_acct;

/* epsilon after `steps` steps; *order (may be NULL) the optimal order */
static double dp_eps_at(const dp_acct *a, long steps, double *order) {
    double eps = NAN, ord = 0;
    if (loom_dp_epsilon(a->q, a->sigma, (double)steps, a->delta, NULL, 0, &eps, &ord) != LOOM_OK) return NAN;
    if (order) *order = ord;
    return eps;
}

/* Refuses (1) a run whose epsilon after its last step would exceed the budget, naming the knobs. */
static int dp_check_budget(const dp_acct *a, long steps) {
    double eps = dp_eps_at(a, steps, NULL);
    if (!isfinite(eps) && a->sigma > 0) {
        fprintf(stderr, "loom train: the accountant failed: %s\n", loom_errmsg());
        return 1;
    }
    if (isnan(a->budget) || eps <= a->budget) return 0;
    long lo = 0, hi = steps; /* the most steps within the budget: epsilon grows with the steps */
    while (hi - lo > 1) {
        long mid = lo + (hi - lo) / 2;
        if (dp_eps_at(a, mid, NULL) <= a->budget) lo = mid;
        else hi = mid;
    }
    double sig = NAN, got = NAN;
    int src = loom_dp_sigma(a->q, (double)steps, a->delta, a->budget, &sig, &got);
    fprintf(stderr,
            "loom train: --dp-epsilon %g would be exceeded: %ld steps at q = %.6g (--batch %d of %ld examples), "
            "--dp-noise %g, --dp-delta %g spend epsilon %.4g\n",
            a->budget, steps, a->q, (int)(a->q * (double)a->n_examples + 0.5), a->n_examples, a->sigma, a->delta, eps);
    if (src == LOOM_OK) {
        double p = pow(10.0, floor(log10(sig)) - 3); /* 4 significant digits, rounded up */
        dp_acct b = *a;
        b.sigma = ceil(sig / p) * p;
        fprintf(stderr, "  raise --dp-noise to %.4g (epsilon %.4g after %ld steps), or lower --steps to %ld\n", b.sigma,
                dp_eps_at(&b, steps, NULL), steps, lo);
    }
    else
        fprintf(stderr, "  lower --steps to %ld (no --dp-noise reaches the budget in %ld steps)\n", lo, steps);
    return 1;
}

/* Opens OUT/metrics.jsonl: a new file, or on resume the old one cut after the rows of steps <= step. */
static FILE *metrics_open(const char *dir, long resume_step) {
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (resume_step < 0) return fopen(path, "w");
    char *old = NULL;
    size_t len = 0;
    if (loom_read_file(path, &old, &len) != LOOM_OK) return fopen(path, "w");
    FILE *f = fopen(path, "w");
    for (char *line = old; f && line < old + len;) {
        char *nl = memchr(line, '\n', (size_t)(old + len - line));
        size_t ll = nl ? (size_t)(nl - line) + 1 : (size_t)(old + len - line);
        const char *sp = strstr(line, "\"step\":");
        if (sp && sp < line + ll && strtol(sp + 7, NULL, 10) <= resume_step) fwrite(line, 1, ll, f);
        line += ll;
    }
    free(old);
    return f;
}

int cmd_train(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *tokp = NULL, *out = NULL, *optname = "adamw", *sample_prompt = "";
    const char *precision = "f32";
    const char *format = NULL, *text_col = NULL, *label_col = NULL, *labels = NULL;
    int B = 8, T = 128, threads = 0, log_every = 10, eval_every = 100, sample_len = 200;
    cli_peft_opts po;
    cli_peft_init(&po);
    long steps = 500, seed = 1337, warmup = -1, eval_windows_max = 64, checkpoint_every = 100, stop_at = 0;
    int resume = 0;
    float lr = 1e-3f, min_lr = -1.0f, wd = 0.1f, clip = NAN, val_frac = 0.1f, momentum = 0.0f;
    const char *dp_mode = NULL;
    float dp_clip = NAN, dp_noise = NAN, dp_delta = 1e-5f, dp_budget = NAN, dp_adaptive = NAN;
    int dp_row_loop = 0;
    cli_kd kd;
    cli_kd_init(&kd);
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "model dir / llama2.c .bin / .gguf to fine-tune, or a shape/config.json to train from scratch", 0, 0},
        {"data", OPT_STR, &data, "UTF-8 text file, or a dataset in --format", 0, 0},
        {"format", OPT_STR, &format, "dataset format: " CLI_FORMATS " (default: plain text windows)", 0, 0},
        {"text-col", OPT_STR, &text_col, "text column (name, or 1-based number; 2,3 joins several) or JSON field", 0, 0},
        {"label-col", OPT_STR, &label_col, "label column or JSON field (classification)", 0, 0},
        {"labels", OPT_STR, &labels, "label names, the verbalizers trained: \"neg,pos\" names the sorted label values, \"1=World,2=Sports\" each value", 0, 0},
        {"tokenizer", OPT_STR, &tokp, "tokenizer (default: the model's, or byte-level for 259-token models)", 0, 0},
        CLI_PEFT_METHOD_OPTS(po),
        CLI_PEFT_LOAD_OPTS(po),
        {"steps", OPT_LONG, &steps, "optimizer steps", 1, 1e9},
        {"batch", OPT_INT, &B, "sequences per step", 1, 65536},
        {"seq", OPT_INT, &T, "tokens per sequence", 2, 1048576},
        {"lr", OPT_FLOAT, &lr, "peak learning rate", 0, 1000},
        {"min-lr", OPT_FLOAT, &min_lr, "cosine floor (default lr/10)", 0, 1000},
        {"warmup", OPT_LONG, &warmup, "linear warm-up steps (default steps/20)", 0, 1e9},
        {"optimizer", OPT_STR, &optname, "adamw or sgd", 0, 0},
        {"precision", OPT_STR, &precision, "matmul precision: f32 (default) or bf16 (mixed precision: bf16 operands, float accumulation, float weights and optimizer; f32 on a CPU without AVX-512 BF16)", 0, 0},
        {"momentum", OPT_FLOAT, &momentum, "SGD momentum", 0, 1},
        {"weight-decay", OPT_FLOAT, &wd, "decoupled weight decay on matrices", 0, 10},
        {"clip", OPT_FLOAT, &clip, "global gradient-norm clip (0 = off; default 1, or 0 with --dp sgd)", 0, 1e9},
        {"dp", OPT_STR, &dp_mode, "differential privacy: sgd (DP-SGD: each example's gradient clipped to --dp-clip, Gaussian noise on the sum; central and local are federated: loom sim / loom server)", 0, 0},
        {"dp-clip", OPT_FLOAT, &dp_clip, "--dp sgd: L2 norm C each example's gradient is clipped to (no default: required)", 0, 1e9},
        {"dp-noise", OPT_FLOAT, &dp_noise, "--dp sgd: noise multiplier sigma (noise std sigma x C on the clipped sum; loom dp sigma finds one for a budget; no default: required)", 0, 1e6},
        {"dp-delta", OPT_FLOAT, &dp_delta, "--dp sgd: delta of the reported epsilon", 0, 1},
        {"dp-epsilon", OPT_FLOAT, &dp_budget, "--dp sgd: budget: a run whose epsilon would exceed it before its last step is refused (default none)", 0, 1e9},
        {"dp-adaptive-clip", OPT_FLOAT, &dp_adaptive, "client-level DP only (loom sim / loom server --dp central); no default here", 0, 1},
        {"dp-row-loop", OPT_FLAG, &dp_row_loop, "--dp sgd: per-example gradients one example at a time (B passes) instead of one batched backward", 0, 0},
        {"val-frac", OPT_FLOAT, &val_frac, "share of the text (its end) held out for validation", 0, 0.99},
        {"eval-every", OPT_INT, &eval_every, "validation loss every N steps (0 = only at the end)", 0, 1e9},
        {"eval-windows", OPT_LONG, &eval_windows_max, "validation windows of --seq tokens per evaluation", 1, 1e9},
        {"log-every", OPT_INT, &log_every, "progress line every N steps when not on a terminal", 1, 1e9},
        {"seed", OPT_LONG, &seed, "seed for initialisation and batch order", 0, 9e18},
        {"out", OPT_STR, &out, "run directory: OUT/model.safetensors + config.json (full), or OUT/adapter_model.safetensors + adapter_config.json (PEFT layout)", 0, 0},
        {"sample-len", OPT_INT, &sample_len, "tokens of generated text printed at the end (0 = none)", 0, 1000000},
        {"sample-prompt", OPT_STR, &sample_prompt, "prompt for that sample", 0, 0},
        {"threads", OPT_INT, &threads, "threads (0 = all cores)", 0, cli_max_threads()},
        {"checkpoint-every", OPT_LONG, &checkpoint_every, "with --out: write OUT/checkpoint.safetensors every N steps and at the end (0 = never)", 0, 1e9},
        {"resume", OPT_FLAG, &resume, "continue from OUT/checkpoint.safetensors (same --steps, --batch, --seq, --seed, --optimizer)", 0, 0},
        {"stop-at", OPT_LONG, &stop_at, "stop after step N with a checkpoint, to be continued with --resume (0 = run all --steps)", 0, 1e9},
        CLI_OUTPUT_OPTS,
        CLI_KD_OPTS(kd),
    };
    int pr = cli_parse(argc, argv, "loom train --model PATH|SHAPE --data FILE [options]",
                       "Trains one model on a text file: pre-training from scratch (--model gpt2-tiny, tiny,\n"
                       "llama-tiny, a config.json, ...), full fine-tuning of a loaded model, or parameter-efficient\n"
                       "fine-tuning (--peft lora|prefix|prompt|adapter|bitfit, or --adapter DIR to continue one) on a\n"
                       "frozen base, optionally held in bf16/int8 (--base-dtype). Plain text: batches are random\n"
                       "windows of --seq+1 tokens from the first (1 - val-frac) of the text, drawn from --seed. With\n"
                       "--format, examples come from a dataset (instruction formats train on response tokens only)\n"
                       "and the last val-frac of the examples is held out. Shows step, loss, tokens/s and ETA.\n"
                       "With --out, also writes OUT/metrics.jsonl (a row per step: loss, lr, grad_norm, tokens/s;\n"
                       "rows with val_loss at evaluations) and OUT/checkpoint.safetensors (weights or set, optimizer\n"
                       "state, step) that --resume continues bit for bit.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (cli_output_begin("train") != 0) return 2;
    if (!data) {
        fprintf(stderr, "loom train: --data is required (see --help)\n");
        return 2;
    }
    if (steps < 1 || B < 1 || T < 2 || !(val_frac >= 0 && val_frac < 1) || !(lr >= 0)) {
        fprintf(stderr, "loom train: need --steps >= 1, --batch >= 1, --seq >= 2, 0 <= --val-frac < 1, --lr >= 0\n");
        return 2;
    }
    if ((resume || stop_at) && !out) {
        fprintf(stderr, "loom train: --resume and --stop-at need --out (the run directory holding the checkpoint)\n");
        return 2;
    }
    if (stop_at >= steps) {
        fprintf(stderr, "loom train: --stop-at %ld must be below --steps %ld\n", stop_at, steps);
        return 2;
    }
    if ((text_col || label_col) && !format) {
        fprintf(stderr, "loom train: --text-col and --label-col need --format (csv, tsv, jsonl, jsonl-cls, ...)\n");
        return 2;
    }
    if (cli_is_split_manifest(data)) {
        fprintf(stderr, "loom train: --data %s is a split manifest; give one client's file (client_NNNN.*) or the data\n",
                data);
        return 2;
    }
    dp_acct dp = {0};
    dp.budget = NAN;
    if (!dp_mode) {
        const char *given = !isnan(dp_clip) ? "--dp-clip" : !isnan(dp_noise) ? "--dp-noise" : !isnan(dp_budget) ? "--dp-epsilon"
                            : !isnan(dp_adaptive) ? "--dp-adaptive-clip" : dp_row_loop ? "--dp-row-loop" : NULL;
        if (given) {
            fprintf(stderr, "loom train: %s needs --dp sgd\n", given);
            return 2;
        }
    } else if (!strcmp(dp_mode, "central") || !strcmp(dp_mode, "local")) {
        fprintf(stderr, "loom train: --dp %s is client-level DP of a federated run (loom sim / loom server); loom train "
                        "offers --dp sgd\n", dp_mode);
        return 2;
    } else if (strcmp(dp_mode, "sgd")) {
        fprintf(stderr, "loom train: --dp %s: unknown; loom train offers --dp sgd\n", dp_mode);
        return 2;
    } else {
        if (!isnan(dp_adaptive)) {
            fprintf(stderr, "loom train: --dp-adaptive-clip is client-level DP's (loom sim / loom server --dp central), "
                            "not --dp sgd's\n");
            return 2;
        }
        if (isnan(dp_clip) || !(dp_clip > 0)) {
            fprintf(stderr, "loom train: --dp sgd needs --dp-clip C > 0 (the L2 norm each example's gradient is clipped to)\n");
            return 2;
        }
        if (isnan(dp_noise)) {
            fprintf(stderr, "loom train: --dp sgd needs --dp-noise SIGMA (the noise multiplier; loom dp sigma finds one for "
                            "a budget)\n");
            return 2;
        }
        if (!(dp_delta > 0 && dp_delta < 1)) {
            fprintf(stderr, "loom train: --dp-delta must be in (0, 1), got %g\n", dp_delta);
            return 2;
        }
        dp.on = 1;
        dp.sigma = dp_noise;
        dp.delta = dp_delta;
        dp.budget = dp_budget;
    }
    if (isnan(clip)) clip = dp.on ? 0.0f : 1.0f;
    if (out && cli_out_dir("--out", out) != 0) return 1;
    if (threads > 0) loom_set_threads(threads);
    loom_train_config tc;
    loom_train_defaults(&tc);
    if (loom_opt_kind_parse(optname, &tc.opt.kind) != LOOM_OK) return cli_fail("--optimizer");
    tc.opt.lr = lr;
    tc.opt.weight_decay = wd;
    tc.opt.momentum = momentum;
    tc.min_lr = min_lr >= 0 ? min_lr : lr / 10;
    tc.warmup = warmup >= 0 ? warmup : steps / 20;
    tc.total_steps = steps;
    tc.clip = clip;
    tc.B = B;
    tc.T = T;
    tc.dp_sgd = dp.on;
    tc.dp_clip = dp.on ? dp_clip : 0.0f;
    tc.dp_noise = dp.on ? dp_noise : 0.0f;
    tc.dp_row_loop = dp_row_loop;
    tc.seed = (uint64_t)seed; /* LoRA dropout masks and DP-SGD's noise */
    if (cli_precision(precision, "train", &tc.precision) != 0) return 1;

    loom_model *m = NULL;
    loom_tokenizer *tok = NULL;
    loom_trainer *tr = NULL;
    loom_tset *set = NULL;
    float *vec = NULL;
    train_data td;
    memset(&td, 0, sizeof td);
    int32_t *tokens = NULL, *targets = NULL;
    FILE *metrics = NULL;
    int created, rc = 1;
    if (cli_load_or_create(&m, model, (unsigned long long)seed, &created) != LOOM_OK) return cli_fail("--model");
    if (T > loom_model_config(m)->max_seq) {
        fprintf(stderr, "loom train: --seq %d exceeds the model's %d positions\n", T, loom_model_config(m)->max_seq);
        goto done;
    }
    if (cli_peft_setup(&po, m, (unsigned long long)seed, &set) != LOOM_OK) {
        cli_fail(po.adapter ? "--adapter" : "--peft");
        goto done;
    }
    if (kd.teacher && dp.on) {
        fprintf(stderr, "loom train: --teacher does not combine with --dp sgd\n");
        goto done;
    }
    if (cli_kd_setup(&kd, "train", m, model, T, &tc) != 0) goto done;
    if (cli_tokenizer(&tok, tokp, created ? NULL : model, m) != LOOM_OK) {
        cli_fail("tokenizer");
        goto done;
    }
    size_t ntok = 0, nval = 0;
    if (!format) {
        if (text_load(&td.ts, data, tok) != LOOM_OK) {
            cli_fail("--data");
            goto done;
        }
        td.ntrain = (size_t)((double)td.ts.n * (1.0 - val_frac));
        if (td.ntrain < (size_t)T + 2) {
            fprintf(stderr, "loom train: %s has %zu training tokens, fewer than one window of %d\n", data, td.ntrain, T + 1);
            goto done;
        }
        ntok = td.ts.n;
        nval = td.ts.n - td.ntrain;
    } else {
        loom_dataset_opts dopt;
        loom_dataset_opts_init(&dopt);
        dopt.format = cli_format("train", format);
        if (dopt.format < 0) goto done;
        dopt.text_col = text_col;
        dopt.label_col = label_col;
        dopt.labels = labels;
        if (loom_dataset_load(&td.ds, data, &dopt, tok) != LOOM_OK) {
            cli_fail("--data");
            goto done;
        }
        size_t n = td.ds->n, nv = (size_t)((double)n * val_frac + 0.5);
        if (n - nv < 1) {
            fprintf(stderr, "loom train: %s has %zu examples, none left for training\n", data, n);
            goto done;
        }
        uint32_t *idx = malloc((n ? n : 1) * sizeof *idx);
        for (size_t i = 0; idx && i < n; i++) idx[i] = (uint32_t)i;
        loom_batcher_opts bo;
        loom_batcher_opts_init(&bo);
        bo.B = (size_t)B;
        bo.T = (size_t)T;
        bo.seed = (uint64_t)seed;
        int ok = idx && loom_batcher_create(&td.train, td.ds, idx, n - nv, &bo) == LOOM_OK;
        bo.shuffle = 0;
        bo.once = 1;
        if (ok && nv) ok = loom_batcher_create(&td.val, td.ds, idx + (n - nv), nv, &bo) == LOOM_OK;
        free(idx);
        if (!ok) {
            cli_fail("batcher");
            goto done;
        }
        ntok = td.ds->n_tokens;
        nval = nv;
    }
    if (dp.on) {
        /* the examples a batch row is drawn from: text windows (their start positions), or examples */
        dp.n_examples = td.ds ? (long)(td.ds->n - nval) : (long)(td.ntrain > (size_t)T + 1 ? td.ntrain - (size_t)T - 1 : 1);
        dp.q = (double)B / (double)dp.n_examples;
        if (dp.q > 1) {
            fprintf(stderr, "loom train: --batch %d exceeds the %ld training examples: DP-SGD's sampling rate would be "
                            "above 1\n", B, dp.n_examples);
            goto done;
        }
        if (dp_check_budget(&dp, steps)) goto done;
    }
    if (set) {
        vec = loom_tset_data(set);
        tc.seed = (uint64_t)seed;
        if (loom_trainer_create_peft(&tr, m, loom_model_params(m), set, vec, &tc) != LOOM_OK) {
            cli_fail("trainer");
            goto done;
        }
    } else if (loom_trainer_create(&tr, m, loom_model_params(m), &tc) != LOOM_OK) {
        cli_fail("trainer");
        goto done;
    }
    cli_info("loom train: %s model, %zu parameters (%s), %zu %s (%zu %s held out, %s tokenizer)",
            loom_model_config(m)->arch == LOOM_ARCH_GPT2 ? "GPT-2" : "Llama", loom_model_n_params(m), created ? "new" : "loaded", ntok,
            td.ds ? "tokens in examples" : "tokens", nval, td.ds ? "examples" : "tokens", loom_tokenizer_kind(tok));
    if (set)
        cli_info("  %s: %zu trainable parameters (%.2f%% of the model, %.1f KiB), base %s (%.1f MiB)",
                loom_peft_method_name(loom_tset_config(set)->method), loom_tset_dim(set),
                100.0 * (double)loom_tset_dim(set) / (double)loom_model_n_params(m), loom_tset_bytes(set) / 1024.0,
                loom_base_dtype_name(loom_model_base_type(m)), loom_model_base_bytes(m) / 1048576.0);
    cli_info("  %ld steps of %d x %d tokens, %s lr %g (warm-up %ld, cosine to %g), clip %g, %d threads, %s matmuls",
            steps, B, T, optname, lr, tc.warmup, tc.min_lr, clip, loom_threads(),
            loom_precision_name(loom_ws_precision(loom_trainer_ws(tr))));
    if (dp.on) {
        int loop = 0;
        loom_trainer_dp_norms(tr, &loop);
        double e_end = dp_eps_at(&dp, steps, NULL);
        fprintf(stderr, "  DP-SGD: clip %g, noise %g, q = %d/%ld = %.6g (%s, accounted as Poisson sampling), delta %g: "
                        "epsilon %.4g after %ld steps%s%s; per-example gradients by %s\n",
                dp_clip, dp_noise, B, dp.n_examples, dp.q, td.ds ? "examples" : "text windows", dp.delta, e_end, steps,
                isnan(dp.budget) ? "" : " (budget ", isnan(dp.budget) ? "" : "ok)",
                loop ? "the row loop" : "one batched backward");
    }
    tokens = malloc((size_t)B * T * 4);
    targets = malloc((size_t)B * T * 4);
    train_state st = {.steps = steps, .B = B, .T = T, .seed = seed, .dim = loom_trainer_dim(tr), .lr = lr,
                      .optimizer = optname};
    long start = 0, end = stop_at > 0 ? stop_at : steps;
    if (resume) {
        if (ckpt_read(out, tr, &st, &start) != LOOM_OK) {
            cli_fail(NULL);
            goto done;
        }
        if (start >= end) {
            fprintf(stderr, "loom train: %s/checkpoint.safetensors is at step %ld: nothing left to do for --steps %ld%s\n",
                    out, start, steps, stop_at ? " --stop-at" : "");
            goto done;
        }
        cli_info("  resuming at step %ld from %s/checkpoint.safetensors", start, out);
    }
    if (out && !(metrics = metrics_open(out, resume ? start : -1))) {
        fprintf(stderr, "loom train: cannot write %s/metrics.jsonl\n", out);
        goto done;
    }
    long vcount;
    if (val_frac > 0 && !resume) {
        double v0 = eval_data(tr, &td, B, T, eval_windows_max, &vcount);
        cli_info("  step %6d  val loss %.4f  (ppl %.2f, %ld tokens)", 0, v0, exp(v0), vcount);
        cli_kv vk[] = {{"step", 0, NULL}, {"val_loss", v0, NULL}, {"val_ppl", exp(v0), NULL}};
        cli_json_line("eval", "train", vk, 3, NULL, 0);
        if (metrics) fprintf(metrics, "{\"step\":0,\"val_loss\":%.6f,\"val_ppl\":%.4f}\n", v0, exp(v0));
    }
    double t0 = loom_now(), ema = -1, last_loss = NAN;
    cli_progress bar;
    cli_progress_start(&bar, "train", "step", NULL, steps, -1);
    bar.plain_every = log_every > 0 ? log_every : 1;
    for (long s = start; s < end; s++) {
        if (td.ds) loom_batcher_fill(td.train, (uint64_t)s, tokens, targets, NULL);
        else text_batch(&td.ts, 0, td.ntrain, B, T, (uint64_t)seed, s, tokens, targets);
        float loss;
        double gn;
        float lr_now = loom_trainer_lr(tr);
        if (loom_trainer_step(tr, tokens, targets, &loss, &gn) != LOOM_OK) {
            cli_fail("training step");
            goto done;
        }
        if (!isfinite(loss)) {
            fprintf(stderr, "loom train: loss became %g at step %ld; lower --lr\n", loss, s + 1);
            goto done;
        }
        ema = ema < 0 ? loss : 0.9 * ema + 0.1 * loss;
        last_loss = loss;
        double now = loom_now(), el = now - t0;
        double tps = (double)(s + 1 - start) * B * T / el;
        if (metrics && dp.on)
            fprintf(metrics,
                    "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"epsilon\":%.6g,\"tokens_per_s\":%.1f}\n",
                    s + 1, loss, lr_now, gn, dp_eps_at(&dp, s + 1, NULL), tps);
        else if (metrics)
            fprintf(metrics, "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f}\n", s + 1,
                    loss, lr_now, gn, tps);
        {
            /* on a terminal the smoothed loss, in plain lines and JSON the step's own */
            cli_kv kv[] = {{"loss", bar.tty && cli_output_mode() == CLI_OUT_TEXT ? ema : loss, "%.4f"}, {"lr", lr_now, "%.2e"},
                           {"grad_norm", gn, "%.2f"}, {"tokens_per_s", tps, "%.0f"}};
            cli_progress_done(&bar, s + 1, kv, 4);
        }
        if (val_frac > 0 && ((eval_every > 0 && (s + 1) % eval_every == 0) || s + 1 == steps)) {
            double v = eval_data(tr, &td, B, T, eval_windows_max, &vcount);
            cli_progress_end(&bar);
            cli_info("  step %6ld  val loss %.4f  (ppl %.2f)", s + 1, v, exp(v));
            cli_kv vk[] = {{"step", (double)(s + 1), NULL}, {"val_loss", v, NULL}, {"val_ppl", exp(v), NULL}};
            cli_json_line("eval", "train", vk, 3, NULL, 0);
            if (metrics) fprintf(metrics, "{\"step\":%ld,\"val_loss\":%.6f,\"val_ppl\":%.4f}\n", s + 1, v, exp(v));
        }
        st.step = s + 1;
        if (out && ((checkpoint_every > 0 && (s + 1) % checkpoint_every == 0) || s + 1 == end) &&
            (checkpoint_every > 0 || s + 1 == stop_at) && ckpt_write(out, tr, &st) != LOOM_OK) {
            cli_fail("checkpoint");
            goto done;
        }
    }
    if (metrics) fflush(metrics);
    cli_progress_end(&bar);
    if (stop_at > 0) {
        cli_info("loom train: stopped after step %ld; %s/checkpoint.safetensors continues with --resume", end, out);
        rc = 0;
        goto done;
    }
    cli_info("loom train: %ld steps in %.1fs, peak RSS %.0f MiB", end - start, loom_now() - t0,
             loom_peak_rss() / 1048576.0);
    {
        cli_kv res[] = {{"steps", (double)(end - start), NULL}, {"loss", last_loss, NULL}, {"seconds", loom_now() - t0, NULL}};
        cli_result("train", res, 3, NULL, 0);
    }
    if (dp.on) {
        double order = 0, e = dp_eps_at(&dp, end, &order);
        cli_info("loom train: DP-SGD spent epsilon %.4f at delta %g (RDP order %g) over %ld steps of q = %.6g, "
                        "noise %g, clip %g", e, dp.delta, order, end, dp.q, dp.sigma, dp_clip);
    }
    if (out && set) {
        if (loom_tset_save_peft(set, vec, out, created ? NULL : model) != LOOM_OK) {
            cli_fail("saving");
            goto done;
        }
        cli_info("loom train: wrote %s/adapter_model.safetensors and %s/adapter_config.json", out, out);
    } else if (out) {
        if (loom_model_save(m, loom_model_params(m), out) != LOOM_OK) {
            cli_fail("saving");
            goto done;
        }
        cli_info("loom train: wrote %s/model.safetensors and %s/config.json", out, out);
    }
    if (sample_len > 0) {
        fprintf(stderr, "sample (temperature 0.8):\n");
        cli_generate_ex(m, set, vec, tok, sample_prompt, sample_len + 1, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
    }
    rc = 0;
done:
    if (metrics) fclose(metrics);
    free(tokens);
    free(targets);
    text_free(&td.ts);
    loom_batcher_free(td.train);
    loom_batcher_free(td.val);
    loom_dataset_free(td.ds);
    loom_trainer_free(tr);
    loom_tset_free(set);
    loom_tokenizer_free(tok);
    loom_model_free(m);
    cli_kd_free(&kd);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *tokp = NULL;
    int B = 8, T = 128, threads = 0;
    long max_windows = 0;
    cli_peft_opts po;
    cli_peft_init(&po);
    po.load_only = 1;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "model directory, llama2.c .bin or .gguf", 0, 0},
        CLI_PEFT_LOAD_OPTS(po),
        {"data", OPT_STR, &data, "UTF-8 text file", 0, 0},
        {"tokenizer", OPT_STR, &tokp, "tokenizer (default: the model's)", 0, 0},
        {"batch", OPT_INT, &B, "windows per forward pass", 1, 65536},
        {"seq", OPT_INT, &T, "tokens per window", 2, 1048576},
        {"max-windows", OPT_LONG, &max_windows, "stop after N windows (0 = the whole file)", 0, 1e12},
        {"threads", OPT_INT, &threads, "threads (0 = all cores)", 0, cli_max_threads()},
        CLI_OUTPUT_OPTS,
    };
    int pr = cli_parse(argc, argv, "loom eval --model PATH --data FILE [options]",
                       "Mean next-token loss and perplexity over the file, in non-overlapping windows of --seq.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (cli_output_begin("eval") != 0) return 2;
    if (!model || !data) {
        fprintf(stderr, "loom eval: --model and --data are required\n");
        return 2;
    }
    if (threads > 0) loom_set_threads(threads);
    loom_model *m = NULL;
    loom_tokenizer *tok = NULL;
    loom_trainer *tr = NULL;
    loom_tset *set = NULL;
    token_stream ts = {0};
    int rc = 1;
    if (loom_model_load(&m, model) != LOOM_OK) return cli_fail("--model");
    if (cli_peft_setup(&po, m, 0, &set) != LOOM_OK) {
        loom_model_free(m);
        return cli_fail("--adapter");
    }
    int P = set && loom_tset_config(set)->method == LOOM_PEFT_PROMPT ? loom_tset_config(set)->prompt_len : 0;
    if (T > loom_model_config(m)->max_seq - P) T = loom_model_config(m)->max_seq - P;
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.B = B;
    tc.T = T;
    if (cli_tokenizer(&tok, tokp, model, m) != LOOM_OK) {
        cli_fail("tokenizer");
        goto done;
    }
    if (text_load(&ts, data, tok) != LOOM_OK) {
        cli_fail("--data");
        goto done;
    }
    if ((set ? loom_trainer_create_peft(&tr, m, loom_model_params(m), set, loom_tset_data(set), &tc)
             : loom_trainer_create(&tr, m, loom_model_params(m), &tc)) != LOOM_OK) {
        cli_fail("evaluator");
        goto done;
    }
    long cnt;
    double t0 = loom_now();
    double l = eval_windows(tr, &ts, 0, ts.n, B, T, max_windows > 0 ? max_windows : 1L << 40, &cnt);
    double secs = loom_now() - t0;
    printf("loss %.4f  perplexity %.3f  (%ld tokens, %.0f tokens/s)\n", l, exp(l), cnt, cnt / secs);
    cli_kv res[] = {{"loss", l, NULL}, {"perplexity", exp(l), NULL}, {"tokens", (double)cnt, NULL}, {"seconds", secs, NULL}};
    cli_result("eval", res, 4, NULL, 0);
    rc = 0;
done:
    text_free(&ts);
    loom_trainer_free(tr);
    loom_tset_free(set);
    loom_tokenizer_free(tok);
    loom_model_free(m);
    return rc;
}
