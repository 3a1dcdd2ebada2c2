/* The decode matrix-vector products (loom/gemv.h): every weight type (f32, bf16, int8) and layout
 * (Linear [OC, C], Conv1D [C, OC]) on every instruction-set path this CPU has, against a double sum
 * over the dequantized weights (dequantized here, from the stored bits); the same bits on 1, 2 and 3
 * threads and on every path; sizes that are not multiples of 16 or 32; the split among up to 8 threads
 * (pieces taken from other threads' ranges) writing every output once. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/gemv.h"
#include "loom/kernels.h"
#include "loom/model.h"
#include "loom/quant.h"
#include "test.h"

#define U 5.9604644775390625e-08 /* 2^-24, the unit roundoff of float */

static float *randv(size_t n, uint64_t seed, double sd) {
    float *v = malloc(n * sizeof *v);
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) v[i] = (float)(sd * test_normal(&s));
    return v;
}

/* The stored weight (layout order, element i) as a double, from its bits: bf16 is the top half of a
 * float, int8 is q times its output channel's scale. */
static double stored(const loom_qmat *w, size_t i, int o) {
    if (w->type == LOOM_Q_F32) return ((const float *)w->data)[i];
    if (w->type == LOOM_Q_BF16) {
        uint32_t u = (uint32_t)((const uint16_t *)w->data)[i] << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    return (double)((const int8_t *)w->data)[i] * w->scale[o];
}

/* The order gemv.h documents, written out here: Linear, 64 fma chains (lane j over c = j, j + 64, ...,
 * the last block zero-padded), then lanes added j + 32, + 16, + 8, + 4, + 2, + 1; Conv1D, one fma chain
 * over c.
 * int8 times its scale after the sum. */
static float documented(const loom_qmat *w, const float *x, int C, int OC, int o) {
    float sum;
    if (w->layout == LOOM_W_LINEAR) {
        float lane[64] = {0};
        for (int c0 = 0; c0 < C; c0 += 64)
            for (int j = 0; j < 64; j++) {
                int c = c0 + j;
                float wv = c < C ? (float)(stored(w, (size_t)o * C + c, o) / (w->scale ? w->scale[o] : 1.0)) : 0.0f;
                lane[j] = fmaf(wv, c < C ? x[c] : 0.0f, lane[j]);
            }
        for (int h = 32; h >= 1; h /= 2)
            for (int j = 0; j < h; j++) lane[j] = lane[j] + lane[j + h];
        sum = lane[0];
    } else {
        sum = 0;
        for (int c = 0; c < C; c++)
            sum = fmaf(x[c], (float)(stored(w, (size_t)c * OC + o, o) / (w->scale ? w->scale[o] : 1.0)), sum);
    }
    return w->scale ? sum * w->scale[o] : sum;
}

/* LOOM_I8_DOT as gemv.h documents it: x quantized per block of 32, exact int32 lanes of 4 products,
 * fma into lane (b % 2) * 8 + j, the pairwise sum, times the scale; *err gets the bound on its
 * distance from the exact product that rounding x allows, scale * sum_b dx[b] / 2 * sum |q|. */
static float documented_dot(const loom_qmat *w, const float *x, int C, int o, double *err) {
    const int8_t *q = (const int8_t *)w->data + (size_t)o * C;
    float lane[16] = {0};
    double e = 0;
    for (int b = 0; b * 32 < C; b++) {
        float mx = 0;
        for (int c = b * 32; c < C && c < b * 32 + 32; c++) mx = fmaxf(mx, fabsf(x[c]));
        float d = mx / 127.0f;
        double qa = 0;
        for (int j = 0; j < 8; j++) {
            int32_t s = 0;
            for (int k = 0; k < 4; k++) {
                int c = b * 32 + 4 * j + k;
                if (c >= C) continue;
                long xq = d > 0 ? lrintf(x[c] / d) : 0;
                s += (int32_t)q[c] * (int32_t)xq;
                qa += abs(q[c]);
            }
            lane[(b % 2) * 8 + j] = fmaf((float)s, d, lane[(b % 2) * 8 + j]);
        }
        e += d / 2.0 * qa;
    }
    for (int h = 8; h >= 1; h /= 2)
        for (int j = 0; j < h; j++) lane[j] = lane[j] + lane[j + h];
    *err = w->scale[o] * e;
    return lane[0] * w->scale[o];
}

static const char *tname(loom_qtype t) { return t == LOOM_Q_BF16 ? "bf16" : t == LOOM_Q_INT8 ? "int8" : "f32"; }

static void check_case(loom_qtype type, int layout, int OC, int C) {
    const int conv = layout == LOOM_W_CONV1D;
    char what[128];
    snprintf(what, sizeof what, "%s %s OC=%d C=%d", tname(type), conv ? "conv1d" : "linear", OC, C);
    size_t n = (size_t)OC * C;
    float *wf = randv(n, 11 + (uint64_t)OC * 7 + (uint64_t)C, 0.5), *x = randv((size_t)C, 5 + (uint64_t)C, 1.0);
    void *q = malloc(n * 4);
    float *scale = malloc((size_t)OC * sizeof *scale);
    loom_quantize(q, scale, wf, type, layout, C, OC);
    loom_qmat w = {type, layout, q, type == LOOM_Q_INT8 ? scale : NULL};

    /* reference: a double sum of the dequantized products; bound: a float sum of C + 1 roundings */
    double *ref = malloc((size_t)OC * sizeof *ref), *bound = malloc((size_t)OC * sizeof *bound);
    for (int o = 0; o < OC; o++) {
        double s = 0, a = 0;
        for (int c = 0; c < C; c++) {
            double p = stored(&w, conv ? (size_t)c * OC + o : (size_t)o * C + c, o) * x[c];
            s += p;
            a += fabs(p);
        }
        ref[o] = s;
        bound[o] = (C + 2) * U * a + 1e-30;
    }

    float *y = malloc((size_t)OC * sizeof *y), *y0 = malloc((size_t)OC * sizeof *y0);
    const int threads[3] = {1, 2, 3};
    loom_isa best = loom_isa_best();
    for (int isa = LOOM_ISA_PORTABLE; isa <= (int)best; isa++) {
        CHECK_OK(loom_gemv_set_isa((loom_isa)isa));
        for (int t = 0; t < 3; t++) {
            loom_set_threads(threads[t]);
            for (int o = 0; o < OC; o++) y[o] = NAN;
            loom_qgemv(y, &w, x, C, OC);
            if (isa == LOOM_ISA_PORTABLE && t == 0) {
                int bad = -1;
                for (int o = 0; o < OC && bad < 0; o++)
                    if (!(fabs(y[o] - ref[o]) <= bound[o])) bad = o;
                CHECK(bad < 0, "%s: y[%d] = %.9g, reference %.9g, bound %.3g", what, bad, bad >= 0 ? y[bad] : 0.0,
                      bad >= 0 ? ref[bad] : 0.0, bad >= 0 ? bound[bad] : 0.0);
                memcpy(y0, y, (size_t)OC * sizeof *y);
                int off = -1;
                for (int o = 0; o < OC && off < 0; o++) {
                    float d = documented(&w, x, C, OC, o);
                    if (memcmp(&d, &y[o], sizeof d)) off = o;
                }
                CHECK(off < 0, "%s: y[%d] = %.9g is not the documented order's %.9g", what, off, off >= 0 ? y[off] : 0.0,
                      off >= 0 ? documented(&w, x, C, OC, off) : 0.0);
            } else {
                CHECK(memcmp(y, y0, (size_t)OC * sizeof *y) == 0, "%s: %s on %d threads gives other bits than portable on 1",
                      what, loom_isa_name((loom_isa)isa), threads[t]);
            }
        }
        /* the float entry points of kernels.h are the same products */
        if (type == LOOM_Q_F32) {
            if (conv) loom_gemv_t(y, q, x, C, OC);
            else loom_gemv(y, q, x, OC, C);
            CHECK(memcmp(y, y0, (size_t)OC * sizeof *y) == 0, "%s: loom_gemv%s (%s) differs from loom_qgemv", what,
                  conv ? "_t" : "", loom_isa_name((loom_isa)isa));
        }
    }
    CHECK_OK(loom_gemv_set_isa(best));

    /* int8 Linear with x quantized (LOOM_I8_DOT): the documented bits on every path and thread count,
     * and within the bound that rounding x allows (plus the float sum's) of the exact product */
    if (type == LOOM_Q_INT8 && !conv) {
        CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_DOT));
        int off = -1, far = -1;
        for (int o = 0; o < OC; o++) {
            double e;
            y0[o] = documented_dot(&w, x, C, o, &e);
            if (far < 0 && !(fabs(y0[o] - ref[o]) <= e + bound[o])) far = o;
        }
        CHECK(far < 0, "%s dot: y[%d] = %.9g, reference %.9g", what, far, far >= 0 ? y0[far] : 0.0, far >= 0 ? ref[far] : 0.0);
        for (int isa = LOOM_ISA_PORTABLE; isa <= (int)best; isa++)
            for (int vnni = 1; vnni >= 0; vnni--) { /* VNNI's kernel where the CPU has one, then maddubs + madd */
                CHECK_OK(loom_gemv_set_isa((loom_isa)isa));
                loom_gemv_set_vnni(vnni);
                if (vnni && !loom_gemv_vnni()) continue; /* (the same kernel as with vnni off) */
                for (int t = 0; t < 3; t++) {
                    loom_set_threads(threads[t]);
                    for (int o = 0; o < OC; o++) y[o] = NAN;
                    loom_qgemv(y, &w, x, C, OC);
                    for (int o = 0; o < OC && off < 0; o++)
                        if (memcmp(&y[o], &y0[o], sizeof *y)) off = o;
                    CHECK(off < 0, "%s dot, %s%s on %d threads: y[%d] = %.9g, documented %.9g", what,
                          loom_isa_name((loom_isa)isa), vnni ? " vnni" : "", threads[t], off, off >= 0 ? y[off] : 0.0,
                          off >= 0 ? y0[off] : 0.0);
                }
            }
        loom_gemv_set_vnni(1);
        CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_WIDEN));
        CHECK_OK(loom_gemv_set_isa(best));
    }
    loom_set_threads(1);
    free(wf), free(x), free(q), free(scale), free(ref), free(bound), free(y), free(y0);
}

/* LOOM_I8_DOT on inputs that catch a wrong quantizer: a block of zeros (scale 0), exact ties x / dx = k + 1/2
 * (round to nearest even: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2), one nonzero input, subnormal inputs (no flush to
 * zero), large ones, weights at -127 and 127, a last block of 8 and a last group of one row, split over 1,
 * 2 and 3 threads: every path gives the documented bits. */
static void check_dot_edges(void) {
    const int OC = 333, C = 200; /* blocks 0-5 full, block 6 of 8 inputs; 83 groups of 4 rows and one row */
    float *x = randv((size_t)C, 77, 1.0), *scale = malloc(OC * sizeof *scale), *y = malloc(OC * sizeof *y);
    float *y0 = malloc(OC * sizeof *y0);
    int8_t *q = malloc((size_t)OC * C);
    for (int c = 0; c < 32; c++) x[c] = 0.0f;                                   /* block 0: dx = 0 */
    for (int c = 32; c < 64; c++) x[c] = (float)((c - 48) % 11) + (c % 2 ? 0.5f : 0.0f); /* block 1 */
    x[40] = 127.0f;                                                             /* dx = 1: x / dx = x */
    x[41] = -2.5f, x[42] = 1.5f, x[43] = 0.5f, x[44] = -0.5f, x[45] = -0.0f;
    for (int c = 64; c < 96; c++) x[c] = 0.0f;                                  /* block 2: one input */
    x[77] = -3.0f;
    for (int c = 96; c < 128; c++) x[c] = (float)(c - 110) * 1e-40f;            /* block 3: subnormal */
    for (int c = 128; c < 160; c++) x[c] = (c % 3 ? 1e4f : -7e3f) * (float)(c % 5); /* block 4: large (not so large
                                                                                     that it hides the others) */
    uint64_t st = 99;
    for (size_t i = 0; i < (size_t)OC * C; i++) q[i] = (int8_t)(i % 7 == 0 ? (i % 2 ? 127 : -127) : (int)(test_normal(&st) * 40) % 128);
    for (int o = 0; o < OC; o++) scale[o] = 1e-3f * (float)(o % 13 + 1);
    loom_qmat w = {LOOM_Q_INT8, LOOM_W_LINEAR, q, scale};
    double e;
    for (int o = 0; o < OC; o++) y0[o] = documented_dot(&w, x, C, o, &e);
    CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_DOT));
    loom_isa best = loom_isa_best();
    for (int isa = LOOM_ISA_PORTABLE; isa <= (int)best; isa++)
        for (int vnni = 1; vnni >= 0; vnni--) {
            CHECK_OK(loom_gemv_set_isa((loom_isa)isa));
            loom_gemv_set_vnni(vnni);
            if (vnni && !loom_gemv_vnni()) continue;
            for (int t = 1; t <= 3; t++) {
                loom_set_threads(t);
                for (int o = 0; o < OC; o++) y[o] = NAN;
                loom_qgemv(y, &w, x, C, OC);
                int off = -1;
                for (int o = 0; o < OC && off < 0; o++)
                    if (memcmp(&y[o], &y0[o], sizeof *y)) off = o;
                CHECK(off < 0, "dot edges, %s%s on %d threads: y[%d] = %.9g, documented %.9g", loom_isa_name((loom_isa)isa),
                      vnni ? " vnni" : "", t, off, off >= 0 ? y[off] : 0.0, off >= 0 ? y0[off] : 0.0);
            }
        }
    loom_gemv_set_vnni(1);
    loom_set_threads(1);
    CHECK_OK(loom_gemv_set_isa(best));
    CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_WIDEN));
    free(x), free(scale), free(y), free(y0), free(q);
}

/* Cancellation and signed zeros: the order of the sums decides the bits, so any path that adds in
 * another order than the portable one shows up here even where the reference check cannot see it. */
static void check_order(void) {
    const int OC = 3, C = 80;
    float W[3 * 80], x[80], y[3], y0[3];
    for (int c = 0; c < C; c++) {
        x[c] = 1.0f;
        W[c] = c % 2 ? -1e8f : 1e8f;            /* row 0: +-1e8 alternating with 1 in lane 5 */
        W[C + c] = c == 5 || c == 69 ? 1.0f : 0; /* row 1: two ones in one lane */
        W[2 * C + c] = -0.0f;                    /* row 2: -0 * 1 everywhere */
    }
    W[5] = 1.0f;
    loom_isa best = loom_isa_best();
    for (int isa = LOOM_ISA_PORTABLE; isa <= (int)best; isa++) {
        CHECK_OK(loom_gemv_set_isa((loom_isa)isa));
        loom_gemv(y, W, x, OC, C);
        if (isa == LOOM_ISA_PORTABLE) memcpy(y0, y, sizeof y);
        CHECK(memcmp(y, y0, sizeof y) == 0, "order case: %s gives %.9g %.9g %.9g, portable %.9g %.9g %.9g",
              loom_isa_name((loom_isa)isa), y[0], y[1], y[2], y0[0], y0[1], y0[2]);
    }
    /* row 1: 1 + 1 = 2 exactly; row 2: -0 products onto partial sums that start at +0 give +0 */
    CHECK(y0[1] == 2.0f, "order case: y[1] = %.9g, want 2", y0[1]);
    CHECK(y0[2] == 0.0f && !signbit(y0[2]), "order case: y[2] = %g, want +0", y0[2]);
    CHECK_OK(loom_gemv_set_isa(best));
}

/* ---------------------------------------------------------------- decoding from a low-precision model */

#define NDEC 20

static double held_bytes_expected(const loom_model *m, loom_qtype qt) {
    const loom_config *c = loom_model_config(m);
    double es = qt == LOOM_Q_BF16 ? 2 : 1, b = 0;
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const loom_tensor *t = loom_model_tensor(m, i);
        int lin = t->kind == LOOM_T_LINEAR_W, low = lin || t->kind == LOOM_T_EMBED || t->kind == LOOM_T_HEAD;
        /* int8 scales: one per output channel, a Conv1D's columns, else rows (the embedding's tokens) */
        int64_t outs = c->arch == LOOM_ARCH_GPT2 && lin ? t->shape[1] : t->shape[0];
        b += low ? (double)t->numel * es + (qt == LOOM_Q_INT8 ? 4.0 * (double)outs : 0) : 4.0 * (double)t->numel;
    }
    return b;
}

/* A model held whole in bf16/int8 (loom_model_quantize_ex with the embedding and head) decodes
 * greedily to the logits of its dequantized float copy: bf16 to the same bits (the same values and the
 * same order of sums), int8 within rounding (s * sum q x against sum (q s) x); it holds the bytes of
 * its precision; the forward pass refuses it with a message. */
static void check_decode(const char *shape, loom_qtype qt) {
    loom_config cfg;
    CHECK_OK(loom_config_named(&cfg, shape));
    cfg.vocab = 509; /* odd sizes: tails in the head, the MLP and the embedding rows */
    cfg.hidden = 200;
    loom_model *mq = NULL, *mf = NULL, *m2 = NULL;
    CHECK_OK(loom_model_create_quantized_ex(&mq, &cfg, 7, qt, LOOM_QUANT_EMBED_HEAD));
    CHECK_OK(loom_model_create(&m2, &cfg, 7));
    if (!mq || !m2) return;
    CHECK_OK(loom_model_quantize_ex(m2, qt, LOOM_QUANT_EMBED_HEAD));
    CHECK_OK(loom_model_to_float(&mf, mq, loom_model_params(mq)));
    if (!mf) return;
    const char *qn = tname(qt);
    int V = cfg.vocab, nt = loom_model_n_tensors(mq);
    for (int i = 0; i < nt; i++) {
        const loom_tensor *t = loom_model_tensor(mq, i);
        int low = t->kind == LOOM_T_LINEAR_W || t->kind == LOOM_T_EMBED || t->kind == LOOM_T_HEAD;
        CHECK(t->dtype == (low ? qt : LOOM_Q_F32), "%s %s: %s held as %d", shape, qn, t->name, (int)t->dtype);
        /* created straight into the precision = created in float, then quantized */
        float *a = malloc(t->numel * sizeof *a), *b = malloc(t->numel * sizeof *b);
        CHECK_OK(loom_model_weight(mq, loom_model_params(mq), i, a));
        CHECK_OK(loom_model_weight(m2, loom_model_params(m2), i, b));
        CHECK(!memcmp(a, b, t->numel * sizeof *a), "%s %s: %s differs between the two ways of quantizing", shape, qn, t->name);
        free(a), free(b);
    }
    double want = held_bytes_expected(mq, qt);
    CHECK((double)loom_model_base_bytes(mq) == want, "%s %s: holds %zu bytes, want %.0f", shape, qn,
          loom_model_base_bytes(mq), want);
    CHECK(loom_model_base_bytes(mq) * (qt == LOOM_Q_BF16 ? 1.9 : 3.0) < loom_model_base_bytes(mf),
          "%s %s: %zu bytes against %zu in float", shape, qn, loom_model_base_bytes(mq), loom_model_base_bytes(mf));

    loom_kv *kq = NULL, *kf = NULL;
    CHECK_OK(loom_kv_create(&kq, mq, NDEC));
    CHECK_OK(loom_kv_create(&kf, mf, NDEC));
    float *lq = malloc((size_t)V * sizeof *lq), *lf = malloc((size_t)V * sizeof *lf);
    int32_t tok = 1;
    double worst = 0, top = 0;
    int same_bits = 1, same_tok = 1;
    for (int p = 0; kq && kf && p < NDEC; p++) {
        CHECK_OK(loom_decode_step(mq, loom_model_params(mq), kq, tok, p, lq));
        CHECK_OK(loom_decode_step(mf, loom_model_params(mf), kf, tok, p, lf));
        int bq = 0, bf = 0;
        for (int i = 0; i < V; i++) {
            worst = fmax(worst, fabs((double)lq[i] - lf[i]));
            top = fmax(top, fabs((double)lf[i]));
            if (lq[i] > lq[bq]) bq = i;
            if (lf[i] > lf[bf]) bf = i;
        }
        same_bits &= !memcmp(lq, lf, (size_t)V * sizeof *lq);
        same_tok &= bq == bf;
        tok = bq;
    }
    if (getenv("TEST_VERBOSE")) fprintf(stderr, "%s %s: decode max diff %.3g, max logit %.3g\n", shape, qn, worst, top);
    if (qt == LOOM_Q_BF16) CHECK(same_bits, "%s bf16: logits differ from the dequantized model's by %.3g", shape, worst);
    /* int8: each product rounds once more or less per output (the scale outside the sum); 1e-5 of the
     * largest logit is ~100 float roundings, far below what quantizing costs (~1e-2) */
    CHECK(worst <= 1e-5 * fmax(1.0, top), "%s %s: logits differ from the dequantized model's by %.3g (max |logit| %.3g)",
          shape, qn, worst, top);
    CHECK(same_tok, "%s %s: greedy tokens differ from the dequantized model's", shape, qn);

    /* int8 with x quantized per block of 32 (what generate uses): the same positions within what
     * rounding x to 8 bits costs, ~1/254 of a block's largest input per product; 2% of the largest
     * logit leaves room for its growth through the layers, and still fails a wrong product (~100%) */
    if (qt == LOOM_Q_INT8 && kq && kf) {
        CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_DOT));
        double wd = 0;
        int32_t tk = 1;
        for (int p = 0; p < NDEC; p++) {
            CHECK_OK(loom_decode_step(mq, loom_model_params(mq), kq, tk, p, lq));
            CHECK_OK(loom_decode_step(mf, loom_model_params(mf), kf, tk, p, lf));
            int bf = 0;
            for (int i = 0; i < V; i++) {
                wd = fmax(wd, fabs((double)lq[i] - lf[i]));
                if (lf[i] > lf[bf]) bf = i;
            }
            tk = bf;
        }
        CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_WIDEN));
        if (getenv("TEST_VERBOSE")) fprintf(stderr, "%s int8 dot: decode max diff %.3g\n", shape, wd);
        CHECK(wd <= 0.02 * fmax(1.0, top) && wd > 0, "%s int8 dot: logits differ from the dequantized model's by %.3g",
              shape, wd);
    }

    loom_ws *ws = NULL;
    CHECK_OK(loom_ws_create(&ws, mq, 1, 4));
    int32_t toks[4] = {1, 2, 3, 4};
    if (ws) {
        int rc = loom_forward(mq, loom_model_params(mq), ws, toks, NULL, 1, 4, NULL);
        CHECK(rc == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "for generation only"), "%s %s: forward gives %d: %s", shape,
              qn, rc, loom_errmsg());
    }
    loom_ws_free(ws);
    free(lq), free(lf);
    loom_kv_free(kq), loom_kv_free(kf);
    loom_model_free(mq), loom_model_free(mf), loom_model_free(m2);
}

/* The split of a product among threads: more threads than cores (so that threads start late and the
 * others take pieces from the back of their ranges), many times over, on a product of decode size for
 * the float kernels and for the int8 dot products: every output written, the bits of one thread. */
static void check_split(void) {
    const int OC = 2048, C = 768;
    float *wf = randv((size_t)OC * C, 31, 0.05), *x = randv(C, 32, 1.0);
    int8_t *q = malloc((size_t)OC * C);
    float *scale = malloc(OC * sizeof *scale), *y0 = malloc(OC * sizeof *y0), *y = malloc(OC * sizeof *y);
    loom_quantize(q, scale, wf, LOOM_Q_INT8, LOOM_W_LINEAR, C, OC);
    loom_qmat w8 = {LOOM_Q_INT8, LOOM_W_LINEAR, q, scale};
    const loom_i8_scheme scheme = loom_gemv_i8_scheme();
    CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_DOT));
    for (int kind = 0; kind < 2; kind++) {
        loom_set_threads(1);
        if (kind == 0) loom_gemv(y0, wf, x, OC, C);
        else loom_qgemv(y0, &w8, x, C, OC);
        int bad = 0;
        for (int nt = 2; nt <= 8; nt++) {
            loom_set_threads(nt);
            for (int rep = 0; rep < 40; rep++) {
                for (int o = 0; o < OC; o++) y[o] = NAN;
                if (kind == 0) loom_gemv(y, wf, x, OC, C);
                else loom_qgemv(y, &w8, x, C, OC);
                if (memcmp(y, y0, OC * sizeof *y)) bad++;
            }
        }
        CHECK(bad == 0, "%s product split among 2..8 threads: %d of 280 runs differ from 1 thread (an output skipped "
              "or written twice)", kind ? "int8 dot" : "f32", bad);
    }
    loom_set_threads(1);
    CHECK_OK(loom_gemv_set_i8_scheme(scheme));
    free(wf), free(x), free(q), free(scale), free(y0), free(y);
}

static void check_names(void) {
    loom_isa isa;
    CHECK_OK(loom_isa_parse("avx2", &isa));
    CHECK(isa == LOOM_ISA_AVX2, "parse avx2 gives %d", (int)isa);
    CHECK(loom_isa_parse("sse9", &isa) == LOOM_EINVAL && strstr(loom_errmsg(), "unknown instruction set 'sse9'"),
          "parse sse9: %s", loom_errmsg());
    if (loom_isa_best() < LOOM_ISA_AVX512) {
        CHECK(loom_gemv_set_isa(LOOM_ISA_AVX512) == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "no avx512"),
              "set avx512 on a CPU without it: %s", loom_errmsg());
    }
    fprintf(stderr, "best path on this CPU: %s\n", loom_isa_name(loom_isa_best()));
}

int main(void) {
    /* sizes around the 16 lanes, the 64 partial sums, the 4-row groups and the 32-blocks; the last two above the threading
     * threshold, so that 2 and 3 threads split them (unevenly) */
    const int sizes[][2] = {{1, 1},   {3, 15},   {5, 16},    {7, 17},    {17, 33}, {33, 100},
                            {9, 64},  {6, 96},   {5, 63},    {4, 65},    {3, 127}, {2, 129},
                            {203, 517}, {258, 300}, {130, 768}};
    const loom_qtype types[3] = {LOOM_Q_F32, LOOM_Q_BF16, LOOM_Q_INT8};
    for (int t = 0; t < 3; t++)
        for (int layout = 0; layout < 2; layout++)
            for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) check_case(types[t], layout, sizes[k][0], sizes[k][1]);
    check_order();
    check_dot_edges();
    check_split();
    check_names();
    const char *shapes[2] = {"llama-tiny", "gpt2-tiny"};
    for (int k = 0; k < 2; k++) {
        check_decode(shapes[k], LOOM_Q_BF16);
        check_decode(shapes[k], LOOM_Q_INT8);
    }
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
