/* loom train: single-process training (pre-training from scratch or fine-tuning) on a text file. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/textdata.h"
#include "loom/core.h"
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

int cmd_train(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *tokp = NULL, *out = NULL, *optname = "adamw", *sample_prompt = "";
    int B = 8, T = 128, threads = 0, log_every = 10, eval_every = 100, sample_len = 200;
    long steps = 500, seed = 1337, warmup = -1, eval_windows_max = 64;
    float lr = 1e-3f, min_lr = -1.0f, wd = 0.1f, clip = 1.0f, val_frac = 0.1f, momentum = 0.0f;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "model dir / llama2.c .bin to fine-tune, or a shape/config.json to train from scratch"},
        {"data", OPT_STR, &data, "UTF-8 text file"},
        {"tokenizer", OPT_STR, &tokp, "tokenizer (default: the model's, or byte-level for 259-token models)"},
        {"steps", OPT_LONG, &steps, "optimizer steps"},
        {"batch", OPT_INT, &B, "sequences per step"},
        {"seq", OPT_INT, &T, "tokens per sequence"},
        {"lr", OPT_FLOAT, &lr, "peak learning rate"},
        {"min-lr", OPT_FLOAT, &min_lr, "cosine floor (default lr/10)"},
        {"warmup", OPT_LONG, &warmup, "linear warm-up steps (default steps/20)"},
        {"optimizer", OPT_STR, &optname, "adamw or sgd"},
        {"momentum", OPT_FLOAT, &momentum, "SGD momentum"},
        {"weight-decay", OPT_FLOAT, &wd, "decoupled weight decay on matrices"},
        {"clip", OPT_FLOAT, &clip, "global gradient-norm clip (0 = off)"},
        {"val-frac", OPT_FLOAT, &val_frac, "share of the text (its end) held out for validation"},
        {"eval-every", OPT_INT, &eval_every, "validation loss every N steps (0 = only at the end)"},
        {"eval-windows", OPT_LONG, &eval_windows_max, "validation windows of --seq tokens per evaluation"},
        {"log-every", OPT_INT, &log_every, "progress line every N steps when not on a terminal"},
        {"seed", OPT_LONG, &seed, "seed for initialisation and batch order"},
        {"out", OPT_STR, &out, "run directory: writes OUT/model.safetensors + config.json"},
        {"sample-len", OPT_INT, &sample_len, "tokens of generated text printed at the end (0 = none)"},
        {"sample-prompt", OPT_STR, &sample_prompt, "prompt for that sample"},
        {"threads", OPT_INT, &threads, "threads (0 = all cores)"},
    };
    int pr = cli_parse(argc, argv, "loom train --model PATH|SHAPE --data FILE [options]",
                       "Trains one model on a text file: pre-training from scratch (--model gpt2-tiny, tiny,\n"
                       "llama-tiny, a config.json, ...) or full fine-tuning of a loaded model. Batches are random\n"
                       "windows of --seq+1 tokens from the first (1 - val-frac) of the text, drawn from --seed.\n"
                       "Shows step, loss, tokens/s and ETA; evaluates on the held-out end of the text.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (!data) {
        fprintf(stderr, "loom train: --data is required (see --help)\n");
        return 2;
    }
    if (steps < 1 || B < 1 || T < 2 || !(val_frac >= 0 && val_frac < 1) || !(lr >= 0)) {
        fprintf(stderr, "loom train: need --steps >= 1, --batch >= 1, --seq >= 2, 0 <= --val-frac < 1, --lr >= 0\n");
        return 2;
    }
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

    loom_model *m = NULL;
    loom_tokenizer *tok = NULL;
    loom_trainer *tr = NULL;
    token_stream ts = {0};
    int32_t *tokens = NULL, *targets = NULL;
    int created, rc = 1;
    if (cli_load_or_create(&m, model, (unsigned long long)seed, &created) != LOOM_OK) return cli_fail("--model");
    if (T > m->cfg.max_seq) {
        fprintf(stderr, "loom train: --seq %d exceeds the model's %d positions\n", T, m->cfg.max_seq);
        goto done;
    }
    if (cli_tokenizer(&tok, tokp, created ? NULL : model, m) != LOOM_OK) {
        cli_fail("tokenizer");
        goto done;
    }
    if (text_load(&ts, data, tok) != LOOM_OK) {
        cli_fail("--data");
        goto done;
    }
    size_t ntrain = (size_t)((double)ts.n * (1.0 - val_frac));
    if (ntrain < (size_t)T + 2) {
        fprintf(stderr, "loom train: %s has %zu training tokens, fewer than one window of %d\n", data, ntrain, T + 1);
        goto done;
    }
    if (loom_trainer_create(&tr, m, m->params, &tc) != LOOM_OK) {
        cli_fail("trainer");
        goto done;
    }
    fprintf(stderr, "loom train: %s model, %zu parameters (%s), %zu tokens (%zu train / %zu validation, %s tokenizer)\n",
            m->cfg.arch == LOOM_ARCH_GPT2 ? "GPT-2" : "Llama", m->n_params, created ? "new" : "loaded", ts.n, ntrain,
            ts.n - ntrain, loom_tokenizer_kind(tok));
    fprintf(stderr, "  %ld steps of %d x %d tokens, %s lr %g (warm-up %ld, cosine to %g), clip %g, %d threads\n", steps, B,
            T, optname, lr, tc.warmup, tc.min_lr, clip, loom_threads());
    tokens = malloc((size_t)B * T * 4);
    targets = malloc((size_t)B * T * 4);
    long vcount;
    if (val_frac > 0) {
        double v0 = eval_windows(tr, &ts, ntrain, ts.n, B, T, eval_windows_max, &vcount);
        fprintf(stderr, "  step %6d  val loss %.4f  (ppl %.2f, %ld tokens)\n", 0, v0, exp(v0), vcount);
    }
    double t0 = loom_now(), tlast = t0, ema = -1;
    int tty = cli_tty();
    for (long s = 0; s < steps; s++) {
        text_batch(&ts, 0, ntrain, B, T, (uint64_t)seed, s, tokens, targets);
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
        double now = loom_now(), el = now - t0;
        double tps = (double)(s + 1) * B * T / el;
        char eta[32];
        cli_duration(el / (double)(s + 1) * (double)(steps - s - 1), eta, sizeof eta);
        if (tty) {
            if (now - tlast > 0.2 || s + 1 == steps) {
                fprintf(stderr, "\r  step %6ld/%ld  loss %.4f  lr %.2e  |g| %.2f  %.0f tok/s  ETA %s   ", s + 1, steps,
                        ema, lr_now, gn, tps, eta);
                tlast = now;
            }
        } else if ((s + 1) % (log_every > 0 ? log_every : 1) == 0 || s + 1 == steps || s == 0) {
            fprintf(stderr, "  step %6ld/%ld  loss %.4f  lr %.2e  |g| %.2f  %.0f tok/s  ETA %s\n", s + 1, steps, loss,
                    lr_now, gn, tps, eta);
        }
        if (val_frac > 0 && ((eval_every > 0 && (s + 1) % eval_every == 0) || s + 1 == steps)) {
            double v = eval_windows(tr, &ts, ntrain, ts.n, B, T, eval_windows_max, &vcount);
            fprintf(stderr, "%s  step %6ld  val loss %.4f  (ppl %.2f)\n", tty ? "\n" : "", s + 1, v, exp(v));
        }
    }
    if (tty) fprintf(stderr, "\n");
    fprintf(stderr, "loom train: %ld steps in %.1fs, peak RSS %.0f MiB\n", steps, loom_now() - t0,
            loom_peak_rss() / 1048576.0);
    if (out) {
        if (loom_model_save(m, m->params, out) != LOOM_OK) {
            cli_fail("saving");
            goto done;
        }
        fprintf(stderr, "loom train: wrote %s/model.safetensors and %s/config.json\n", out, out);
    }
    if (sample_len > 0) {
        fprintf(stderr, "sample (temperature 0.8):\n");
        cli_generate(m, m->params, tok, sample_prompt, sample_len + 1, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
    }
    rc = 0;
done:
    free(tokens);
    free(targets);
    text_free(&ts);
    loom_trainer_free(tr);
    loom_tokenizer_free(tok);
    loom_model_free(m);
    return rc;
}

int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *tokp = NULL;
    int B = 8, T = 128, threads = 0;
    long max_windows = 0;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "model directory or llama2.c .bin"},
        {"data", OPT_STR, &data, "UTF-8 text file"},
        {"tokenizer", OPT_STR, &tokp, "tokenizer (default: the model's)"},
        {"batch", OPT_INT, &B, "windows per forward pass"},
        {"seq", OPT_INT, &T, "tokens per window"},
        {"max-windows", OPT_LONG, &max_windows, "stop after N windows (0 = the whole file)"},
        {"threads", OPT_INT, &threads, "threads (0 = all cores)"},
    };
    int pr = cli_parse(argc, argv, "loom eval --model PATH --data FILE [options]",
                       "Mean next-token loss and perplexity over the file, in non-overlapping windows of --seq.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (!model || !data) {
        fprintf(stderr, "loom eval: --model and --data are required\n");
        return 2;
    }
    if (threads > 0) loom_set_threads(threads);
    loom_model *m = NULL;
    loom_tokenizer *tok = NULL;
    loom_trainer *tr = NULL;
    token_stream ts = {0};
    int rc = 1;
    if (loom_model_load(&m, model) != LOOM_OK) return cli_fail("--model");
    if (T > m->cfg.max_seq) T = m->cfg.max_seq;
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
    if (loom_trainer_create(&tr, m, m->params, &tc) != LOOM_OK) {
        cli_fail("evaluator");
        goto done;
    }
    long cnt;
    double t0 = loom_now();
    double l = eval_windows(tr, &ts, 0, ts.n, B, T, max_windows > 0 ? max_windows : 1L << 40, &cnt);
    printf("loss %.4f  perplexity %.3f  (%ld tokens, %.0f tokens/s)\n", l, exp(l), cnt, cnt / (loom_now() - t0));
    rc = 0;
done:
    text_free(&ts);
    loom_trainer_free(tr);
    loom_tokenizer_free(tok);
    loom_model_free(m);
    return rc;
}
