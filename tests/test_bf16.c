/* bf16 mixed precision (loom_ws_set_precision, loom_train_config.precision).
 *
 *  - loom_f32_to_bf16_daz_n against a bit-level reference written here (round to nearest even, ties
 *    to even, float denormals to signed zero, NaN quiet) on special values and random floats.
 *  - At the same weights, the bf16 forward loss and gradient stay near the f32 ones. Each matmul rounds
 *    both operands to 8 significant bits: relative errors uniform in [-u, u], u = 2^-9, so each product
 *    term carries a relative error of rms sqrt(2/3) u, and a K-term sum of random-signed terms (these
 *    random models) the same relative rms in the random-walk model (numerator and size both grow as
 *    sqrt(K)). A gradient element is reached through up to 4L + 1 matmuls (QKV, O, UP, DOWN per layer and
 *    the head), whose independent errors add in quadrature: the gradient's relative L2 error is about
 *    sqrt(4L + 1) sqrt(2/3) 2^-9 (0.0048 for L = 2); we allow twice that. Truncating instead of
 *    rounding biases every operand by u and roughly triples the error, outside the band. The loss is
 *    a smooth function of the logits (|d loss / d z| sums to <= 2 a row): 2^-5 relative at most.
 *  - Training: 30 steps of AdamW on a fixed batch (full fine-tuning and LoRA, GPT-2 and Llama shapes):
 *    every step's bf16 loss within 2^-5 relative of the f32 run's, and the loss falls just as far.
 *  - A bf16 base (loom_model_quantize) trains LoRA in bf16 precision and matches its f32 precision run.
 *  - Without AVX-512 BF16 (LOOM_CPU_NO_BF16=1 makes the CPU check say no) the workspace refuses with a
 *    message, stays f32, and gives the f32 bits.
 *  - bf16 training (5 steps) is the same bits on 1 and 3 threads. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/half.h"
#include "loom/kernels.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/train.h"
#include "model/model_impl.h"
#include "test.h"

enum { B = 2, T = 32, STEPS = 30 };

static uint16_t ref_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t exp = (x >> 23) & 0xFF, mant = x & 0x7FFFFF, sign = x >> 31;
    if (exp == 0xFF && mant) return (uint16_t)((x >> 16) | 0x40); /* NaN: quiet, payload's top kept */
    if (exp == 0) return (uint16_t)(sign << 15);                   /* zero and denormals */
    uint32_t hi = x >> 16, lo = x & 0xFFFF;                          /* keep 16 bits, look at the rest */
    if (lo > 0x8000 || (lo == 0x8000 && (hi & 1))) hi++;            /* carries into exponent / Inf */
    return (uint16_t)hi;
}

static void test_convert(void) {
    const uint32_t specials[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x807FFFFFu, 0x00800000u, 0x3F808000u,
                                 0x3F818000u, 0x3F80FFFFu, 0x7F7FFFFFu, 0x7F7F8000u, 0x7F800000u, 0xFF800000u,
                                 0x7FC00001u, 0xFF812345u, 0x7F800001u, 0x3F800001u, 0xBF7F7FFFu, 0x00400000u};
    enum { NS = sizeof specials / sizeof specials[0], NR = 100003 };
    float *src = malloc((NS + NR) * sizeof *src);
    uint16_t *dst = malloc((NS + NR) * sizeof *dst);
    for (int i = 0; i < NS; i++) memcpy(src + i, specials + i, 4);
    uint64_t s = 77;
    for (int i = 0; i < NR; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(s >> 32);
        if (i % 3 == 0) u &= 0x807FFFFFu | ((u & 1) << 23); /* many denormals and tiny normals */
        memcpy(src + NS + i, &u, 4);
    }
    loom_f32_to_bf16_daz_n(dst, src, NS + NR);
    int bad = 0;
    for (int i = 0; i < NS + NR; i++) {
        uint16_t want = ref_bf16(src[i]);
        if (dst[i] != want && bad++ < 5) {
            uint32_t u;
            memcpy(&u, src + i, 4);
            CHECK(0, "bf16 of 0x%08x is 0x%04x, want 0x%04x", u, dst[i], want);
        }
    }
    CHECK(bad == 0, "%d conversions differ", bad);
    /* the strided form: a 3 x 5 block out of rows of 7 into rows of 6, the rest untouched */
    float m[21];
    uint16_t o[18];
    for (int i = 0; i < 21; i++) m[i] = 1.0f + i / 64.0f + 1.0f / 512;
    memset(o, 0xAB, sizeof o);
    loom_f32_to_bf16_daz_2d(o, 6, m, 7, 3, 5);
    int ok2 = 1;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 6; c++) ok2 &= o[r * 6 + c] == (c < 5 ? ref_bf16(m[r * 7 + c]) : 0xABAB);
    CHECK(ok2, "strided conversion");
    free(src);
    free(dst);
}

/* "gpt2-wide": gpt2-tiny with a vocabulary of 4500, so the bf16 head's backward runs in two column
 * blocks (HEAD_VB = 4096 in model.c) */
static loom_model *tiny(const char *shape) {
    loom_config c;
    loom_model *m = NULL;
    int wide = !strcmp(shape, "gpt2-wide");
    if (loom_config_named(&c, wide ? "gpt2-tiny" : shape) != LOOM_OK) return NULL;
    if (wide) c.vocab = 4500;
    if (loom_model_create(&m, &c, 3) != LOOM_OK) return NULL;
    return m;
}

/* A fixed batch with structure to learn: each row counts up by a stride through a small alphabet. */
static void batch(int V, int32_t *tok, int32_t *tgt) {
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            tok[b * T + t] = (int32_t)((b * 5 + t * (3 + b)) % 61 + 7) % V;
            tgt[b * T + t] = (int32_t)((b * 5 + (t + 1) * (3 + b)) % 61 + 7) % V;
        }
}

static void train_cfg(loom_train_config *tc, int prec, int lora) {
    loom_train_defaults(tc);
    tc->opt.lr = lora ? 1e-2f : 3e-3f;
    tc->B = B;
    tc->T = T;
    tc->seed = 5;
    tc->clip = 1.0f;
    tc->precision = prec;
}

/* Trains STEPS steps and writes each step's loss (before the step) into losses. lora: a LoRA set on
 * every projection, else full fine-tuning of a copy of the parameters. */
static int train_n(const loom_model *m, int lora, int prec, float *losses, int *prec_used, int steps) {
    loom_train_config tc;
    train_cfg(&tc, prec, lora);
    int32_t tok[B * T], tgt[B * T];
    batch(m->cfg.vocab, tok, tgt);
    loom_trainer *tr = NULL;
    loom_tset *ts = NULL;
    float *params = NULL;
    int rc;
    if (lora) {
        loom_peft_config pc;
        loom_peft_defaults(&pc, LOOM_PEFT_LORA);
        pc.lora_r = 4;
        pc.lora_alpha = 8;
        snprintf(pc.target_modules, sizeof pc.target_modules, "%s",
                 m->cfg.arch == LOOM_ARCH_GPT2 ? "c_attn,c_proj,c_fc" : "q_proj,v_proj,up_proj,down_proj");
        rc = loom_tset_create(&ts, m, &pc, 11);
        if (rc == LOOM_OK) rc = loom_trainer_create_peft(&tr, m, m->params, ts, loom_tset_data(ts), &tc);
    } else {
        params = malloc(m->n_params * sizeof *params);
        memcpy(params, m->params, m->n_params * sizeof *params);
        rc = loom_trainer_create(&tr, m, params, &tc);
    }
    if (rc == LOOM_OK && prec_used) *prec_used = loom_ws_precision(loom_trainer_ws(tr));
    for (int s = 0; rc == LOOM_OK && s < steps; s++) rc = loom_trainer_step(tr, tok, tgt, &losses[s], NULL);
    loom_trainer_free(tr);
    loom_tset_free(ts);
    free(params);
    return rc;
}

static int train(const loom_model *m, int lora, int prec, float *losses, int *prec_used) {
    return train_n(m, lora, prec, losses, prec_used, STEPS);
}

static void test_curves(const char *shape, int lora) {
    loom_model *m = tiny(shape);
    CHECK(m != NULL, "%s: %s", shape, loom_errmsg());
    if (!m) return;
    float lf[STEPS], lb[STEPS];
    int used = -1;
    double t0 = loom_now();
    CHECK_OK(train(m, lora, LOOM_PREC_F32, lf, NULL));
    double t1 = loom_now();
    CHECK_OK(train(m, lora, LOOM_PREC_BF16, lb, &used));
    if (getenv("LOOM_TEST_VERBOSE")) fprintf(stderr, "%s lora=%d: f32 %.3f s, bf16 %.3f s\n", shape, lora, t1 - t0, loom_now() - t1);
    CHECK(used == LOOM_PREC_BF16, "%s: the trainer runs precision %d", shape, used);
    double worst = 0, band = 1.0 / 32;
    for (int s = 0; s < STEPS; s++) {
        double rel = fabs((double)lb[s] - lf[s]) / fabs((double)lf[s]);
        if (rel > worst) worst = rel;
    }
    CHECK(worst <= band, "%s %s: bf16 loss curve %.4f relative from f32 (band %.4f); last %.5f vs %.5f", shape,
          lora ? "lora" : "full", worst, band, lb[STEPS - 1], lf[STEPS - 1]);
    /* it learns: the loss falls by a third or more, and as far as in f32 */
    double fall = lora ? 0.95 : 0.67;
    CHECK(lf[STEPS - 1] < fall * lf[0] && lb[STEPS - 1] < fall * lb[0], "%s: loss %g -> %g (f32), %g -> %g (bf16)", shape,
          lf[0], lf[STEPS - 1], lb[0], lb[STEPS - 1]);
    if (getenv("LOOM_TEST_VERBOSE"))
        fprintf(stderr, "%s %s: worst rel %.5f  f32 %.5f -> %.5f  bf16 %.5f -> %.5f\n", shape, lora ? "lora" : "full",
                worst, lf[0], lf[STEPS - 1], lb[0], lb[STEPS - 1]);
    loom_model_free(m);
}

/* One forward/backward at the model's own weights in both precisions. */
static void test_gradient(const char *shape) {
    loom_model *m = tiny(shape);
    if (!m) return;
    int32_t tok[B * T], tgt[B * T];
    batch(m->cfg.vocab, tok, tgt);
    float *g[2];
    float loss[2];
    for (int p = 0; p < 2; p++) {
        loom_ws *ws = NULL;
        g[p] = calloc(m->n_params, sizeof(float));
        CHECK_OK(loom_ws_create(&ws, m, B, T));
        CHECK_OK(loom_ws_set_precision(ws, p ? LOOM_PREC_BF16 : LOOM_PREC_F32));
        CHECK_OK(loom_forward(m, m->params, ws, tok, tgt, B, T, &loss[p]));
        CHECK_OK(loom_backward(m, m->params, ws, g[p], NULL));
        loom_ws_free(ws);
    }
    double d2 = 0, n2 = 0;
    for (size_t i = 0; i < m->n_params; i++) {
        double d = (double)g[1][i] - g[0][i];
        d2 += d * d;
        n2 += (double)g[0][i] * g[0][i];
    }
    double rel = sqrt(d2 / n2), lrel = fabs((double)loss[1] - loss[0]) / loss[0];
    CHECK(lrel <= 1.0 / 32, "%s: bf16 loss %.6f vs f32 %.6f", shape, loss[1], loss[0]);
    double band = 2.0 * sqrt(4.0 * m->cfg.n_layer + 1) * sqrt(2.0 / 3.0) / 512;
    CHECK(rel <= band, "%s: bf16 gradient %.4f relative L2 from f32 (band %.4f)", shape, rel, band);
    /* and the rounding is there: bf16 is not secretly f32 */
    CHECK(rel > 1e-5, "%s: bf16 gradient equals f32 (%.3g): no rounding happened", shape, rel);
    if (getenv("LOOM_TEST_VERBOSE")) fprintf(stderr, "%s: loss rel %.3g grad rel %.3g\n", shape, lrel, rel);
    free(g[0]);
    free(g[1]);
    loom_model_free(m);
}

static void test_bf16_base(void) {
    loom_model *m = tiny("gpt2-tiny");
    if (!m) return;
    CHECK_OK(loom_model_quantize(m, LOOM_Q_BF16));
    float lf[STEPS], lb[STEPS];
    CHECK_OK(train(m, 1, LOOM_PREC_F32, lf, NULL));
    CHECK_OK(train(m, 1, LOOM_PREC_BF16, lb, NULL));
    double worst = 0;
    for (int s = 0; s < STEPS; s++) worst = fmax(worst, fabs((double)lb[s] - lf[s]) / lf[s]);
    CHECK(worst <= 1.0 / 32, "bf16 base + LoRA: bf16 precision %.4f relative from f32 precision", worst);
    CHECK(lb[STEPS - 1] < 0.95 * lb[0], "bf16 base + LoRA learns: %g -> %g", lb[0], lb[STEPS - 1]);
    loom_model_free(m);
}

static void test_fallback(void) {
    loom_model *m = tiny("gpt2-tiny");
    if (!m) return;
    setenv("LOOM_CPU_NO_BF16", "1", 1);
    loom_ws *ws = NULL;
    CHECK_OK(loom_ws_create(&ws, m, B, T));
    int rc = loom_ws_set_precision(ws, LOOM_PREC_BF16);
    CHECK(rc == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "AVX-512 BF16"), "no bf16: rc %d, %s", rc, loom_errmsg());
    CHECK(loom_ws_precision(ws) == LOOM_PREC_F32, "no bf16: precision %d", loom_ws_precision(ws));
    rc = loom_ws_set_precision(ws, 7);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "precision 7"), "precision 7: rc %d, %s", rc, loom_errmsg());
    float lf[5], lb[5];
    int used = -1;
    CHECK_OK(train_n(m, 0, LOOM_PREC_F32, lf, NULL, 5));
    CHECK_OK(train_n(m, 0, LOOM_PREC_BF16, lb, &used, 5));
    CHECK(used == LOOM_PREC_F32, "no bf16: the trainer runs precision %d", used);
    CHECK(!memcmp(lf, lb, sizeof lf), "no bf16: the f32 fallback differs from f32");
    unsetenv("LOOM_CPU_NO_BF16");
    loom_ws_free(ws);
    loom_model_free(m);
}

static void test_threads(void) {
    loom_model *m = tiny("llama-tiny");
    if (!m) return;
    float l1[5], l3[5];
    int saved = loom_threads();
    loom_set_threads(1);
    CHECK_OK(train_n(m, 0, LOOM_PREC_BF16, l1, NULL, 5));
    loom_set_threads(3);
    CHECK_OK(train_n(m, 0, LOOM_PREC_BF16, l3, NULL, 5));
    loom_set_threads(saved);
    CHECK(!memcmp(l1, l3, sizeof l1), "bf16 training differs between 1 and 3 threads");
    loom_model_free(m);
}

int main(void) {
    /* one thread: these tiny models only pay for parallel regions (results are the same bits on any
     * number, which test_threads checks) */
    loom_set_threads(1);
    test_convert();
    if (!loom_cpu_has_bf16()) {
        /* the numeric checks need the instructions; the fallback is checked anywhere */
        test_fallback();
        printf("%d passed, %d failed (no AVX-512 BF16: bf16 numerics not run)\n", test_passed, test_failed);
        return test_failed ? 1 : 0;
    }
    test_gradient("gpt2-tiny");
    test_gradient("llama-tiny");
    test_gradient("gpt2-wide");
    test_curves("gpt2-tiny", 0);
    test_curves("gpt2-tiny", 1);
    test_curves("llama-tiny", 0);
    test_curves("llama-tiny", 1);
    test_bf16_base();
    test_fallback();
    test_threads();
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
