/* loom bench: training and generation throughput, measured against this machine's loom_gemm at the
 * model's own matmul shapes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "cli/runspec.h"
#include "loom/half.h"
#include "loom/core.h"
#include "loom/gemv.h"
#include "loom/kernels.h"
#include "loom/peft.h"
#include "loom/train.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* GFLOP/s of loom_gemm (the matmuls training runs) for C[M,N] = A[M,K] B[K,N] with the given transposes,
 * both operands of type `type` (LOOM_GEMM_F32 or LOOM_GEMM_BF16), median of reps. */
static double gemm_rate(int M, int N, int K, int ta, int tb, int reps, int type) {
    size_t es = type == LOOM_GEMM_BF16 ? 2 : 4;
    void *a = loom_alloc((size_t)M * K * es), *b = loom_alloc((size_t)K * N * es);
    float *c = loom_alloc((size_t)M * N * 4), *f = loom_alloc((size_t)LOOM_MAX((size_t)M * K, (size_t)K * N) * 4);
    if (!a || !b || !c || !f) {
        loom_free(a); loom_free(b); loom_free(c); loom_free(f);
        return 0;
    }
    for (size_t i = 0; i < (size_t)M * K; i++) f[i] = (float)((i * 7) % 13) * 0.01f;
    if (type == LOOM_GEMM_BF16) loom_f32_to_bf16_n(a, f, (size_t)M * K);
    else memcpy(a, f, (size_t)M * K * 4);
    for (size_t i = 0; i < (size_t)K * N; i++) f[i] = (float)((i * 5) % 11) * 0.01f;
    if (type == LOOM_GEMM_BF16) loom_f32_to_bf16_n(b, f, (size_t)K * N);
    else memcpy(b, f, (size_t)K * N * 4);
    double t[16];
    if (reps > 16) reps = 16;
    for (int r = 0; r <= reps; r++) {
        double t0 = loom_now();
        loom_gemm(ta, tb, M, N, K, 1.0f, a, type, ta ? M : K, b, type, tb ? K : N, 0.0f, c, N);
        if (r > 0) t[r - 1] = loom_now() - t0; /* the first call makes the primitives */
    }
    loom_free(a); loom_free(b); loom_free(c); loom_free(f);
    return 2.0 * M * N * K / median(t, reps) / 1e9;
}

typedef struct {
    const char *what;
    int M, N, K, ta, tb;
    double count; /* how many times per training step */
} mm_shape;

/* The matmuls of one training step (forward, input gradient, weight gradient) of each linear layer. */
static int step_shapes(const loom_model *m, int B, int T, mm_shape *s) {
    const loom_config *c = loom_model_config(m);
    int N = B * T, C = c->dim, H = c->hidden, V = c->vocab, KV = c->n_kv_head * (C / c->n_head), L = c->n_layer;
    int conv = c->arch == LOOM_ARCH_GPT2;
    int qkv = C + 2 * KV, up = conv ? H : 2 * H;
    struct { const char *n; int in, out; double cnt; } lin[] = {
        {"qkv", C, qkv, L}, {"attn out", C, C, L}, {"mlp up", C, up, L}, {"mlp down", H, C, L}, {"lm head", C, V, 1}};
    int k = 0;
    for (int i = 0; i < 5; i++) {
        int in = lin[i].in, out = lin[i].out;
        int w_conv = conv && i < 4;
        s[k++] = (mm_shape){lin[i].n, N, out, in, 0, !w_conv, lin[i].cnt};          /* forward */
        s[k++] = (mm_shape){lin[i].n, N, in, out, 0, w_conv, lin[i].cnt};            /* d input */
        s[k++] = w_conv ? (mm_shape){lin[i].n, in, out, N, 1, 0, lin[i].cnt}         /* d weight */
                        : (mm_shape){lin[i].n, out, in, N, 1, 0, lin[i].cnt};
    }
    return k;
}

static int bench_train(int argc, char **argv) {
    const char *config = "gpt2-124m", *optname = "adamw", *precision = "f32";
    int B = 4, T = 256, steps = 5, warm = 2, threads = 2, peak_reps = 5;
    long seed = 1;
    cli_peft_opts po;
    cli_peft_init(&po);
    cli_opt opts[] = {
        {"model", OPT_STR, &config, "shape (gpt2-124m, gpt2-tiny, llama-110m, llama-tiny, tiny), config.json or model dir", 0, 0},
        CLI_PEFT_METHOD_OPTS(po),
        {"base-dtype", OPT_STR, &po.base_dtype, "frozen base's linear weights: f32, bf16 or int8 (with --peft)", 0, 0},
        {"batch", OPT_INT, &B, "batch size B", 1, 65536},
        {"seq", OPT_INT, &T, "sequence length T", 2, 1048576},
        {"steps", OPT_INT, &steps, "timed steps (median reported)", 1, 1000000},
        {"warmup", OPT_INT, &warm, "untimed steps first", 0, 1000000},
        {"threads", OPT_INT, &threads, "threads for loom and BLAS", 1, cli_max_threads()},
        {"optimizer", OPT_STR, &optname, "adamw or sgd", 0, 0},
        {"precision", OPT_STR, &precision, "matmul precision: f32 (default) or bf16 (mixed precision)", 0, 0},
        {"peak-reps", OPT_INT, &peak_reps, "repetitions per matmul shape when measuring the peak", 1, 1000},
        {"seed", OPT_LONG, &seed, "seed", 0, 9e18},
        CLI_OUTPUT_OPTS,
    };
    int pr = cli_parse(argc, argv, "loom bench train [--model gpt2-124m] [--batch 4] [--seq 256] [options]",
                       "Times full training steps (forward with full logits, mean cross-entropy, backward, AdamW\n"
                       "lr 6e-4 betas 0.9/0.95 weight decay 0.1 on matrices, as ../shared/bench/torch_baseline.py)\n"
                       "and reports tokens/s, achieved GFLOP/s (6 x matmul parameters x tokens + attention), the\n"
                       "rate loom_gemm reaches on this machine at the step's own matmul shapes in f32 and in bf16,\n"
                       "the step's share of each, and peak RSS. --precision bf16 trains in mixed precision. With --peft (e.g. --peft lora --lora-r 8 --target-modules c_attn, the baseline's\n"
                       "LoRA mode: AdamW lr 6e-4 betas 0.9/0.95, no weight decay, over the LoRA vector only) the base\n"
                       "is frozen, optionally held in bf16/int8 (--base-dtype), and a created model is quantized\n"
                       "tensor by tensor so its float copy is never resident whole.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (cli_output_begin("bench train") != 0) return 2;
    int prec_want;
    if (cli_precision(precision, "bench train", &prec_want) != 0) return 2;
    if (threads > 0) loom_set_threads(threads);
    loom_model *m;
    int created;
    loom_qtype qt = LOOM_Q_F32;
    loom_peft_method meth = LOOM_PEFT_FULL;
    if (loom_base_dtype_parse(po.base_dtype, &qt) != LOOM_OK) return cli_fail("--base-dtype");
    if (po.peft && loom_peft_method_parse(po.peft, &meth) != LOOM_OK) return cli_fail("--peft");
    loom_config bc;
    if (qt != LOOM_Q_F32 && meth != LOOM_PEFT_FULL && loom_config_named(&bc, config) == LOOM_OK) {
        /* a built-in shape: create it straight into low precision */
        if (loom_model_create_quantized(&m, &bc, (unsigned long long)seed, qt) != LOOM_OK) return cli_fail("--model");
        po.base_dtype = "f32"; /* already applied */
    } else if (cli_load_or_create(&m, config, (unsigned long long)seed, &created) != LOOM_OK) {
        return cli_fail("--model");
    }
    loom_tset *set = NULL;
    if (cli_peft_setup(&po, m, (unsigned long long)seed, &set) != LOOM_OK) return cli_fail("--peft");
    loom_train_config tc;
    loom_train_defaults(&tc);
    if (loom_opt_kind_parse(optname, &tc.opt.kind) != LOOM_OK) return cli_fail("--optimizer");
    tc.opt.lr = 6e-4f;
    tc.opt.beta1 = 0.9f;
    tc.opt.beta2 = 0.95f;
    tc.opt.weight_decay = 0.1f;
    tc.clip = 0; /* the baseline does not clip */
    tc.B = B;
    tc.T = T;
    tc.precision = prec_want;
    loom_trainer *tr;
    if (set) {
        tc.opt.weight_decay = 0.0f; /* the baseline's LoRA mode */
        if (loom_trainer_create_peft(&tr, m, loom_model_params(m), set, loom_tset_data(set), &tc) != LOOM_OK) return cli_fail("trainer");
    } else if (loom_trainer_create(&tr, m, loom_model_params(m), &tc) != LOOM_OK) {
        return cli_fail("trainer");
    }
    int N = B * T;
    int32_t *tok = malloc((size_t)N * 4), *tgt = malloc((size_t)N * 4);
    loom_rng r;
    loom_rng_init(&r, (uint64_t)seed, LOOM_STREAM_BENCH_BATCH);
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)loom_model_config(m)->vocab);
        tgt[i] = (int32_t)loom_rng_below(&r, (uint32_t)loom_model_config(m)->vocab);
    }
    int prec = loom_ws_precision(loom_trainer_ws(tr));
    printf("loom bench train: %s, %zu parameters, B=%d T=%d, %d threads, %s, %s matmuls\n", config, loom_model_n_params(m), B,
           T, loom_threads(), optname, loom_precision_name(prec));
    if (set)
        printf("  %s: %zu trainable parameters (%.1f KiB), frozen base %s: %.1f MiB\n",
               loom_peft_method_name(loom_tset_config(set)->method), loom_tset_dim(set), loom_tset_bytes(set) / 1024.0,
               loom_base_dtype_name(loom_model_base_type(m)), loom_model_base_bytes(m) / 1048576.0);
    double *times = malloc((size_t)(steps > 0 ? steps : 1) * sizeof *times);
    float first = 0, last = 0;
    cli_progress bar;
    cli_progress_start(&bar, "bench train", "step", NULL, warm + steps, -1);
    for (int s = 0; s < warm + steps; s++) {
        double t0 = loom_now();
        float loss;
        if (loom_trainer_step(tr, tok, tgt, &loss, NULL) != LOOM_OK) return cli_fail("step");
        double dt = loom_now() - t0;
        if (s == 0) first = loss;
        last = loss;
        if (s >= warm) times[s - warm] = dt;
        cli_kv kv[] = {{"ms", dt * 1e3, "%.1f"}, {"loss", loss, "%.4f"}, {"warm_up", s < warm ? 1 : NAN, "%.0f"}};
        cli_progress_done(&bar, s + 1, kv, 3);
    }
    cli_progress_end(&bar);
    double med = median(times, steps), mn = times[0], mx = times[steps - 1];
    if (set) {
        printf("  step: median %.1f ms (min %.1f, max %.1f), %.1f tokens/s, loss %.3f -> %.3f\n", med * 1e3, mn * 1e3,
               mx * 1e3, N / med, first, last);
        printf("  peak RSS %.0f MiB (base %.0f MiB, activations %.0f MiB)\n", loom_peak_rss() / 1048576.0,
               loom_model_base_bytes(m) / 1048576.0, loom_ws_bytes(loom_trainer_ws(tr)) / 1048576.0);
        {
            cli_kv res[] = {{"tokens_per_s", N / med, NULL}, {"step_ms", med * 1e3, NULL}, {"peak_rss_mib", loom_peak_rss() / 1048576.0, NULL},
                            {"trainable", (double)loom_tset_dim(set), NULL}};
            cli_result("bench train", res, 4, NULL, 0);
        }
        printf("RESULT tokens_per_s=%.2f step_ms=%.2f peak_rss_mib=%.0f trainable=%zu base_mib=%.1f precision=%s\n", N / med,
               med * 1e3, loom_peak_rss() / 1048576.0, loom_tset_dim(set), loom_model_base_bytes(m) / 1048576.0,
               loom_precision_name(prec));
        free(times);
        free(tok);
        free(tgt);
        loom_trainer_free(tr);
        loom_tset_free(set);
        loom_model_free(m);
        return 0;
    }
    double flops_tok = 6.0 * loom_model_flops_per_token(m, T, 0) + 12.0 * loom_model_config(m)->n_layer * (double)T * loom_model_config(m)->dim;
    double achieved = flops_tok * N / med / 1e9;
    /* peak RSS of the step itself, before the peak measurement allocates its own operands */
    double rss = loom_peak_rss() / 1048576.0;
    /* loom_gemm at the step's shapes, f32 and bf16 */
    mm_shape sh[16];
    int ns = step_shapes(m, B, T, sh);
    int has16 = loom_cpu_has_bf16();
    double best[2] = {0, 0}, fl_total = 0, t_total[2] = {0, 0};
    printf("  loom_gemm at this step's shapes (%d threads), GFLOP/s f32%s:\n", loom_threads(), has16 ? " / bf16" : "");
    for (int i = 0; i < ns; i++) {
        double g[2] = {gemm_rate(sh[i].M, sh[i].N, sh[i].K, sh[i].ta, sh[i].tb, peak_reps, LOOM_GEMM_F32), 0};
        if (has16) g[1] = gemm_rate(sh[i].M, sh[i].N, sh[i].K, sh[i].ta, sh[i].tb, peak_reps, LOOM_GEMM_BF16);
        double fl = 2.0 * sh[i].M * sh[i].N * sh[i].K * sh[i].count;
        fl_total += fl;
        for (int p = 0; p < 1 + has16; p++) {
            t_total[p] += fl / (g[p] * 1e9);
            if (g[p] > best[p]) best[p] = g[p];
        }
        printf("    %-9s %-6s M=%-6d N=%-6d K=%-6d %7.1f", sh[i].what, i % 3 == 0 ? "fwd" : i % 3 == 1 ? "dinp" : "dw",
               sh[i].M, sh[i].N, sh[i].K, g[0]);
        if (has16) printf(" / %7.1f", g[1]);
        printf("\n");
    }
    double weighted[2] = {fl_total / t_total[0] / 1e9, has16 ? fl_total / t_total[1] / 1e9 : 0};
    printf("  step: median %.1f ms (min %.1f, max %.1f), %.1f tokens/s, loss %.3f -> %.3f\n", med * 1e3, mn * 1e3,
           mx * 1e3, N / med, first, last);
    printf("  achieved %.1f GFLOP/s (%.3g GFLOP per step) in %s\n", achieved, flops_tok * N / 1e9, loom_precision_name(prec));
    for (int p = 0; p < 1 + has16; p++)
        printf("  %-4s matmul peak at these shapes %.1f GFLOP/s (FLOP-weighted mean %.1f): the step reaches %.1f%% of it "
               "(%.1f%% of the weighted mean)\n", p ? "bf16" : "f32", best[p], weighted[p], 100 * achieved / best[p],
               100 * achieved / weighted[p]);
    printf("  peak RSS %.0f MiB (parameters %.0f MiB, activations %.0f MiB)\n", rss, loom_model_n_params(m) * 4.0 / 1048576.0,
           loom_ws_bytes(loom_trainer_ws(tr)) / 1048576.0);
    {
        cli_kv res[] = {{"tokens_per_s", N / med, NULL}, {"step_ms", med * 1e3, NULL}, {"gflops", achieved, NULL},
                        {"peak_rss_mib", rss, NULL}};
        cli_result("bench train", res, 4, NULL, 0);
    }
    printf("RESULT tokens_per_s=%.2f step_ms=%.2f gflops=%.2f peak_gflops=%.2f share=%.3f precision=%s "
           "peak_gflops_f32=%.2f share_f32=%.3f peak_gflops_bf16=%.2f share_bf16=%.3f peak_rss_mib=%.0f\n", N / med,
           med * 1e3, achieved, best[prec], achieved / best[prec], loom_precision_name(prec), best[0], achieved / best[0],
           best[1], best[1] > 0 ? achieved / best[1] : 0.0, rss);
    free(times);
    free(tok);
    free(tgt);
    loom_trainer_free(tr);
    loom_model_free(m);
    return 0;
}

/* Bytes of weights one decode step reads: every matrix whole (as held: 4, 2 or 1 bytes an element,
 * plus int8's scales), but one row of the token and position embeddings (unless the embedding is also
 * the head). */
static double decode_weight_bytes(const loom_model *m) {
    const loom_config *c = loom_model_config(m);
    double b = 0;
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const loom_tensor *t = loom_model_tensor(m, i);
        double es = t->dtype == LOOM_Q_BF16 ? 2 : t->dtype == LOOM_Q_INT8 ? 1 : 4;
        int conv = c->arch == LOOM_ARCH_GPT2 && t->kind == LOOM_T_LINEAR_W;
        double full = (double)t->numel * es + (t->dtype == LOOM_Q_INT8 ? 4.0 * (double)t->shape[conv ? 1 : 0] : 0);
        if ((t->kind == LOOM_T_EMBED && !c->tied) || t->kind == LOOM_T_POS) full /= (double)t->shape[0];
        b += full;
    }
    return b;
}

/* Resident memory now and its peak since the last reset_peak_rss (Linux: VmRSS / VmHWM), in bytes. */
static size_t proc_status_kib(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t v = 0, n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, n)) {
            v = (size_t)strtoull(line + n, NULL, 10);
            break;
        }
    fclose(f);
    return v * 1024;
}

static void reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return;
    fputs("5", f);
    fclose(f);
}

static int bench_generate(int argc, char **argv) {
    const char *model = "llama-110m", *weights = "f32", *isa_name = NULL, *i8 = "dot";
    int steps = 128, threads = 1, reps = 3;
    long seed = 1;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "model path or shape (llama-110m, gpt2-124m, ...; a llama2.c .bin)", 0, 0},
        {"weights", OPT_STR, &weights, "hold the whole model as f32, bf16 or int8 (linear weights, embedding and head)", 0, 0},
        {"steps", OPT_INT, &steps, "tokens generated per run", 1, 1000000},
        {"reps", OPT_INT, &reps, "runs (median reported)", 1, 1000},
        {"threads", OPT_INT, &threads, "threads", 1, cli_max_threads()},
        {"isa", OPT_STR, &isa_name, "matrix-vector path: portable, avx2 or avx512 (default: the best this CPU has)", 0, 0},
        {"int8", OPT_STR, &i8, "int8 products: dot (x quantized per block of 32, integer dot products, as llama.cpp) or widen (weights to float)", 0, 0},
        {"seed", OPT_LONG, &seed, "seed for a random model", 0, 9e18},
        CLI_OUTPUT_OPTS,
    };
    int pr = cli_parse(argc, argv, "loom bench generate [--model llama-110m] [--weights f32] [--steps 128]",
                       "Greedy KV-cached generation from BOS: tokens/s (median over --reps runs), the GB/s of\n"
                       "weights streamed (bytes of weights one step reads x tokens/s) and peak RSS. --weights\n"
                       "bf16|int8 quantizes the model at load (a built-in shape is created straight into that\n"
                       "precision, one tensor at a time).",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (cli_output_begin("bench generate") != 0) return 2;
    loom_qtype wq;
    if (loom_base_dtype_parse(weights, &wq) != LOOM_OK) return cli_fail("--weights");
    if (isa_name) {
        loom_isa isa;
        if (loom_isa_parse(isa_name, &isa) != LOOM_OK || loom_gemv_set_isa(isa) != LOOM_OK) return cli_fail("--isa");
    }
    if (strcmp(i8, "widen") && strcmp(i8, "dot")) {
        fprintf(stderr, "loom bench generate: --int8 '%s': dot or widen\n", i8);
        return 2;
    }
    loom_gemv_set_i8_scheme(strcmp(i8, "dot") ? LOOM_I8_WIDEN : LOOM_I8_DOT);
    if (threads > 0) loom_set_threads(threads);
    loom_model *m;
    int created;
    loom_config bc;
    if (wq != LOOM_Q_F32 && loom_config_named(&bc, model) == LOOM_OK) {
        if (loom_model_create_quantized_ex(&m, &bc, (unsigned long long)seed, wq, LOOM_QUANT_EMBED_HEAD) != LOOM_OK)
            return cli_fail("--model");
    } else {
        if (cli_load_or_create(&m, model, (unsigned long long)seed, &created) != LOOM_OK) return cli_fail("--model");
        if (wq != LOOM_Q_F32 && loom_model_quantize_ex(m, wq, LOOM_QUANT_EMBED_HEAD) != LOOM_OK) {
            loom_model_free(m);
            return cli_fail("--weights");
        }
    }
    const loom_config *c = loom_model_config(m);
    if (steps > c->max_seq) steps = c->max_seq;
    loom_kv *kv;
    if (loom_kv_create(&kv, m, steps) != LOOM_OK) {
        loom_model_free(m);
        return cli_fail("kv cache");
    }
    float *logits = malloc((size_t)c->vocab * 4);
    size_t load_peak = loom_peak_rss();
    reset_peak_rss(); /* from here the peak is that of generating */
    double t[16];
    if (reps > 16) reps = 16;
    cli_progress bar;
    cli_progress_start(&bar, "bench generate", "run", "token", reps, 0.5);
    for (int r = 0; r < reps; r++) {
        int32_t tok = c->bos_id >= 0 ? c->bos_id : 0;
        double t0 = loom_now();
        for (int p = 0; p < steps; p++) {
            if (loom_decode_step(m, loom_model_params(m), kv, tok, p, logits) != LOOM_OK) return cli_fail("decoding");
            int best = 0;
            for (int i = 1; i < c->vocab; i++)
                if (logits[i] > logits[best]) best = i;
            tok = best;
            if ((p & 15) == 15) cli_progress_step(&bar, r + 1, p + 1, steps, NULL, 0);
        }
        t[r] = loom_now() - t0;
        cli_kv kv[] = {{"tokens_per_s", steps / t[r], "%.1f"}};
        cli_progress_done(&bar, r + 1, kv, 1);
    }
    cli_progress_end(&bar);
    double med = median(t, reps), tps = steps / med, wb = decode_weight_bytes(m);
    size_t gen_peak = proc_status_kib("VmHWM:"), peak = loom_peak_rss();
    printf("loom bench generate: %s (%zu parameters, weights %s, %.1f MiB held), %d tokens, %d threads, %s path%s\n",
           model, loom_model_n_params(m), weights, loom_model_base_bytes(m) / 1048576.0, steps, loom_threads(),
           loom_isa_name(loom_gemv_isa()),
           wq == LOOM_Q_INT8 ? (loom_gemv_i8_scheme() == LOOM_I8_DOT ? ", int8 dot" : ", int8 widen") : "");
    printf("  %.1f tokens/s (median of %d), %.1f MiB of weights a token: %.1f GB/s\n", tps, reps, wb / 1048576.0,
           wb * tps / 1e9);
    printf("  peak RSS %.0f MiB (while generating %.0f MiB, at load %.0f MiB)\n", peak / 1048576.0,
           gen_peak / 1048576.0, load_peak / 1048576.0);
    {
        cli_kv res[] = {{"gen_tokens_per_s", tps, NULL}, {"gb_per_s", wb * tps / 1e9, NULL}, {"peak_rss_mib", peak / 1048576.0, NULL}};
        cli_result("bench generate", res, 3, NULL, 0);
    }
    printf("RESULT gen_tokens_per_s=%.2f gb_per_s=%.3f peak_rss_mib=%.0f gen_rss_mib=%.0f weight_mib=%.3f\n", tps,
           wb * tps / 1e9, peak / 1048576.0, gen_peak / 1048576.0, wb / 1048576.0);
    free(logits);
    loom_kv_free(kv);
    loom_model_free(m);
    return 0;
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: loom bench <train|generate|tokenize> [options]   (loom bench <what> --help)\n\n"
               "  train     training-step throughput and share of the sgemm peak\n"
               "  generate  KV-cached generation tokens/s\n"
               "  tokenize  tokenizer encoding throughput in MB/s\n");
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) return bench_train(argc - 1, argv + 1);
    if (!strcmp(argv[1], "generate")) return bench_generate(argc - 1, argv + 1);
    if (!strcmp(argv[1], "tokenize")) return bench_tokenize(argc - 1, argv + 1);
    fprintf(stderr, "loom bench: unknown benchmark '%s' (train, generate, tokenize; see loom bench --help)\n", argv[1]);
    return 2;
}
