/* A low-precision base (loom_model_quantize, bf16 and int8) is a first-class model: KV-cached decoding,
 * the forward pass and loom_model_save read the low-precision weights, never the released float pages.
 *
 * Expected values come from a float model whose linear weights were rounded here, independently of
 * the quantizer (bf16 round-to-nearest-even by bit arithmetic; int8 absmax per output channel as
 * loom/quant.h states it): decoding on the low-precision base must match decoding that float model up
 * to summation order, and a saved low-precision model must load back as exactly those values. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/model.h"
#include "test.h"

enum { NPOS = 12 };

static float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u; /* round to nearest, ties to even */
    memcpy(&f, &u, 4);
    return f;
}

/* Rounds tensor w (rows x cols as stored) the way a low-precision base holds it. Output channels are
 * rows for Llama's [out, in] weights and columns for GPT-2's Conv1D [in, out]. */
static void round_like_base(float *w, int64_t rows, int64_t cols, int out_is_col, loom_qtype qt) {
    size_t n = (size_t)(rows * cols);
    if (qt == LOOM_Q_BF16) {
        for (size_t i = 0; i < n; i++) w[i] = bf16_round(w[i]);
        return;
    }
    int64_t nch = out_is_col ? cols : rows;
    for (int64_t o = 0; o < nch; o++) {
        float mx = 0;
        for (int64_t k = 0; k < (out_is_col ? rows : cols); k++) {
            float v = out_is_col ? w[k * cols + o] : w[o * cols + k];
            mx = fmaxf(mx, fabsf(v));
        }
        float s = mx > 0 ? mx / 127.0f : 1.0f;
        for (int64_t k = 0; k < (out_is_col ? rows : cols); k++) {
            float *v = out_is_col ? &w[k * cols + o] : &w[o * cols + k];
            *v = (float)lrintf(*v / s) * s;
        }
    }
}

/* The same weights in every model: the shape's init plus a perturbation so every path carries signal. */
static loom_model *make(const loom_config *cfg) {
    loom_model *m = NULL;
    if (loom_model_create(&m, cfg, 3) != LOOM_OK) return NULL;
    loom_rng r;
    loom_rng_init(&r, 17, 0);
    float *p = loom_model_params(m);
    for (size_t i = 0; i < loom_model_n_params(m); i++) p[i] += 0.05f * (float)loom_rng_normal(&r);
    return m;
}

static void decode_all(const loom_model *m, const float *params, const int32_t *tok, float *logits) {
    loom_kv *kv;
    CHECK_OK(loom_kv_create(&kv, m, NPOS));
    if (!kv) return;
    int V = loom_model_config(m)->vocab;
    for (int t = 0; t < NPOS; t++) CHECK_OK(loom_decode_step(m, params, kv, tok[t], t, logits + (size_t)t * V));
    loom_kv_free(kv);
}

static double max_abs(const float *a, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)a[i]));
    return mx;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)a[i] - b[i]));
    return mx;
}

static void check_base(const char *shape, loom_qtype qt) {
    const char *qn = qt == LOOM_Q_BF16 ? "bf16" : "int8";
    loom_config cfg;
    CHECK_OK(loom_config_named(&cfg, shape));
    loom_model *mf = make(&cfg), *mq = make(&cfg), *mr = make(&cfg);
    CHECK(mf && mq && mr, "%s: models", shape);
    if (!mf || !mq || !mr) goto done;
    CHECK_OK(loom_model_quantize(mq, qt));
    CHECK(loom_model_base_type(mq) == qt, "%s %s: base type %d", shape, qn, (int)loom_model_base_type(mq));
    int gpt2 = cfg.arch == LOOM_ARCH_GPT2;
    float *pr = loom_model_params(mr);
    int nt = loom_model_n_tensors(mr);
    for (int i = 0; i < nt; i++) {
        const loom_tensor *t = loom_model_tensor(mr, i);
        CHECK(loom_model_tensor(mq, i)->dtype == (t->kind == LOOM_T_LINEAR_W ? qt : LOOM_Q_F32),
              "%s %s: %s stored as %d", shape, qn, t->name, (int)loom_model_tensor(mq, i)->dtype);
        if (t->kind == LOOM_T_LINEAR_W) round_like_base(pr + t->offset, t->shape[0], t->shape[1], gpt2, qt);
    }

    int32_t tok[NPOS];
    for (int t = 0; t < NPOS; t++) tok[t] = (int32_t)((t * 37 + 5) % cfg.vocab);
    size_t nl = (size_t)NPOS * cfg.vocab;
    float *lq = loom_alloc(nl * sizeof(float)), *lr = loom_alloc(nl * sizeof(float)), *lf = loom_alloc(nl * sizeof(float));
    decode_all(mq, loom_model_params(mq), tok, lq);
    decode_all(mr, pr, tok, lr);
    decode_all(mf, loom_model_params(mf), tok, lf);
    /* same weights, same arithmetic up to the order of sums (blocked sgemm against sgemv) */
    double scale = fmax(1.0, max_abs(lr, nl)), d = max_diff(lq, lr, nl);
    CHECK(d <= 1e-4 * scale, "%s %s: decode logits differ from the rounded float model by %.3g (max |logit| %.3g)",
          shape, qn, d, scale);
    /* and against the float model, within what rounding the weights to the base type costs: bf16 keeps
     * 8 significant bits (relative error <= 2^-9 per weight), int8 about 7 (<= 1/254 of a channel's max) */
    double df = max_diff(lq, lf, nl), sf = fmax(1.0, max_abs(lf, nl));
    CHECK(df <= 0.05 * sf, "%s %s: decode logits differ from the float model by %.3g (max |logit| %.3g)", shape, qn,
          df, sf);
    CHECK(df > 0, "%s %s: logits identical to the float model's: was the base used at all?", shape, qn);

    /* the forward pass over the same tokens gives the same last-position logits */
    loom_ws *ws;
    CHECK_OK(loom_ws_create(&ws, mq, 1, NPOS));
    if (ws) {
        CHECK_OK(loom_forward(mq, loom_model_params(mq), ws, tok, NULL, 1, NPOS, NULL));
        double dw = max_diff(loom_ws_logits(ws) + (size_t)(NPOS - 1) * cfg.vocab, lq + (size_t)(NPOS - 1) * cfg.vocab,
                             (size_t)cfg.vocab);
        CHECK(dw <= 1e-4 * scale, "%s %s: forward and decode differ by %.3g", shape, qn, dw);
        loom_ws_free(ws);
    }

    /* save, then load: the dequantized (bf16: native) values, never the released float pages */
    char dir[] = "/tmp/loom_test_qbase_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/model", dir);
    CHECK_OK(loom_model_save(mq, loom_model_params(mq), sub));
    loom_model *ml = NULL;
    CHECK_OK(loom_model_load(&ml, sub));
    if (ml) {
        CHECK(loom_model_n_params(ml) == loom_model_n_params(mr), "%s %s: loaded %zu parameters", shape, qn,
              loom_model_n_params(ml));
        const float *pl = loom_model_params(ml);
        for (int i = 0; i < nt; i++) {
            const loom_tensor *t = loom_model_tensor(mr, i);
            double dt = max_diff(pl + t->offset, pr + t->offset, t->numel);
            CHECK(dt <= 1e-7 * fmax(1.0, max_abs(pr + t->offset, t->numel)), "%s %s: saved %s differs by %.3g", shape,
                  qn, t->name, dt);
        }
        loom_model_free(ml);
    }
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "rm %s", dir);
    loom_free(lq);
    loom_free(lr);
    loom_free(lf);
done:
    loom_model_free(mf);
    loom_model_free(mq);
    loom_model_free(mr);
}

int main(void) {
    check_base("gpt2-tiny", LOOM_Q_BF16);
    check_base("gpt2-tiny", LOOM_Q_INT8);
    check_base("llama-tiny", LOOM_Q_BF16);
    check_base("llama-tiny", LOOM_Q_INT8);
    return test_summary();
}
