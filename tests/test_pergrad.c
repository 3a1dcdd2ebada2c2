/* Loss weights per batch row, per-example gradient norms (and DP-SGD's clipped sum), and the
 * forward-only workspace.
 *
 * Per-example gradients are checked against an independent route: the batched forward/backward with
 * one-hot row weights gives row b's share of the batch gradient directly, while loom_per_example_grads
 * runs each row alone at batch 1, and loom_backward_ex_rows instantiates every row's gradient in one
 * batched backward (checked against both, with LoRA dropout on as well). Weighted losses are checked
 * against sums of the unweighted per-position losses. */
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "test.h"

enum { B = 3, T = 8 };

static loom_qtype base_type = LOOM_Q_F32; /* the frozen base of the next check_set */

static double norm2(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / fmax(s, 1e-30);
}

static void check_set(const char *shape, loom_peft_method method, float dropout) {
    const char *mn = loom_peft_method_name(method);
    loom_config cfg;
    CHECK_OK(loom_config_named(&cfg, shape));
    loom_model *m;
    CHECK_OK(loom_model_create(&m, &cfg, 5));
    if (!m) return;
    if (base_type != LOOM_Q_F32) CHECK_OK(loom_model_quantize(m, base_type));
    loom_peft_config pc;
    loom_peft_defaults(&pc, method);
    if (method == LOOM_PEFT_LORA) pc.lora_dropout = dropout;
    if (method == LOOM_PEFT_BITFIT) pc.bitfit_norms = 1; /* Llama has no biases */
    loom_tset *ts;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 9));
    if (!ts) {
        loom_model_free(m);
        return;
    }
    const loom_peft *pf = loom_tset_plan(ts);
    size_t dim = loom_tset_dim(ts);
    float *vec = loom_tset_data(ts);
    loom_rng r;
    loom_rng_init(&r, 3, 1);
    for (size_t i = 0; i < dim; i++) vec[i] += 0.05f * (float)loom_rng_normal(&r); /* LoRA B away from 0 */
    int32_t tok[B * T], tgt[B * T];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)cfg.vocab);
        tgt[i] = (int32_t)loom_rng_below(&r, (uint32_t)cfg.vocab);
    }
    for (int t = 0; t < 5; t++) tgt[1 * T + t] = -1; /* rows with 8, 3 and 8 targets */
    loom_ws *ws;
    CHECK_OK(loom_ws_create_ex(&ws, m, B, T, pf));
    if (dropout > 0) loom_ws_set_dropout(ws, 1, 77);
    const float *base = loom_model_params(m);
    float *g = loom_calloc(dim, sizeof(float)), *g1 = loom_calloc(dim, sizeof(float)), *sum = loom_calloc(dim, sizeof(float));
    float *gb[B], *scratch = loom_calloc(dim, sizeof(float)), *clipped = loom_calloc(dim, sizeof(float));
    float l0, l1;

    /* all-1 weights are exactly today's loss and gradient */
    CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &l0));
    CHECK_OK(loom_backward_ex(m, base, ws, pf, vec, g));
    float ones[B] = {1, 1, 1};
    CHECK_OK(loom_ws_set_row_weights(ws, ones, B));
    CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &l1));
    CHECK_OK(loom_backward_ex(m, base, ws, pf, vec, g1));
    CHECK(l0 == l1 && !memcmp(g, g1, dim * sizeof(float)), "%s %s: weights of 1 change the loss (%.9g, %.9g) or gradient",
          shape, mn, l0, l1);

    /* weighted loss from the unweighted per-position losses */
    float w[B] = {2.0f, 0.0f, 0.5f};
    CHECK_OK(loom_ws_set_row_weights(ws, w, B));
    CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &l1));
    const float *pl = loom_ws_losses(ws);
    int P0 = loom_ws_prompt_len(ws); /* soft-prompt rows come first in each row of losses */
    double want = 0;
    int nv = 0;
    for (int n = 0; n < B * T; n++)
        if (tgt[n] >= 0) {
            want += w[n / T] * (double)pl[(n / T) * (P0 + T) + P0 + n % T];
            nv++;
        }
    want /= nv;
    CHECK_NEAR(l1, want, 1e-6 * fabs(want));
    int rc = loom_forward_ex(m, base, ws, pf, vec, tok, tgt, 2, T, &l1);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "row weights"), "batch size mismatch: %s", loom_errmsg());
    float bad[B] = {1, NAN, 1};
    rc = loom_ws_set_row_weights(ws, bad, B);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "row weight 1"), "NaN weight: %s", loom_errmsg());

    /* independent route: one-hot row weights on the batch give each row's share g_b */
    for (int b = 0; b < B; b++) {
        float e[B] = {0, 0, 0};
        e[b] = 1;
        gb[b] = loom_calloc(dim, sizeof(float));
        CHECK_OK(loom_ws_set_row_weights(ws, e, B));
        CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &l1));
        CHECK_OK(loom_backward_ex(m, base, ws, pf, vec, gb[b]));
    }
    CHECK_OK(loom_ws_set_row_weights(ws, NULL, B));
    for (size_t i = 0; i < dim; i++) sum[i] = gb[0][i] + gb[1][i] + gb[2][i];
    CHECK(rel_diff(sum, g, dim) < 1e-5, "%s %s: one-hot shares do not sum to the gradient (%.3g)", shape, mn,
          rel_diff(sum, g, dim));

    /* one batched backward with per-row weight gradients: each row equals its one-hot share */
    float *rows = loom_calloc((size_t)B * dim, sizeof(float));
    CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &l1));
    CHECK_OK(loom_backward_ex_rows(m, base, ws, pf, vec, rows));
    for (int b = 0; b < B; b++) {
        double d = rel_diff(rows + (size_t)b * dim, gb[b], dim);
        CHECK(d < 1e-5, "%s %s dropout %g: per-row gradient of row %d differs from its one-hot share by %.3g", shape, mn,
              (double)dropout, b, d);
    }
    rc = loom_backward_ex_rows(m, base, ws, pf, vec, rows);
    CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "forward pass"), "per-row backward without a forward: %s",
          loom_errmsg());
    /* one-hot weights through the per-row backward: the other rows get nothing */
    float e1[B] = {0, 1, 0};
    memset(rows, 0, (size_t)B * dim * sizeof(float));
    CHECK_OK(loom_ws_set_row_weights(ws, e1, B));
    CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &l1));
    CHECK_OK(loom_backward_ex_rows(m, base, ws, pf, vec, rows));
    CHECK_OK(loom_ws_set_row_weights(ws, NULL, B));
    CHECK(norm2(rows, dim) == 0 && norm2(rows + 2 * dim, dim) == 0 && rel_diff(rows + dim, gb[1], dim) < 1e-5,
          "%s %s: a zero row weight leaves a per-row gradient", shape, mn);
    loom_free(rows);
    if (dropout > 0) { /* the row-at-a-time route below has row 0's masks for every row */
        for (int b = 0; b < B; b++) loom_free(gb[b]);
        loom_free(g); loom_free(g1); loom_free(sum); loom_free(scratch); loom_free(clipped);
        loom_ws_free(ws);
        loom_tset_free(ts);
        loom_model_free(m);
        return;
    }

    float norms[B], lp;
    memset(g1, 0, dim * sizeof(float));
    CHECK_OK(loom_per_example_grads(m, base, ws, pf, vec, tok, tgt, B, T, norms, 0.0f, g1, scratch, &lp));
    CHECK_NEAR(lp, l0, 1e-5 * fabs(l0));
    for (int b = 0; b < B; b++) {
        double nb = norm2(gb[b], dim);
        CHECK(fabs(norms[b] - nb) <= 1e-4 * nb, "%s %s: row %d norm %.7g, one-hot route %.7g", shape, mn, b,
              (double)norms[b], nb);
    }
    CHECK(rel_diff(g1, g, dim) < 1e-4, "%s %s: unclipped per-example sum differs from the gradient by %.3g", shape, mn,
          rel_diff(g1, g, dim));

    /* clipped sum: every row scaled to at most the clip norm */
    float clip = 0.6f * fminf(norms[0], fminf(norms[1], norms[2]));
    memset(g1, 0, dim * sizeof(float));
    CHECK_OK(loom_per_example_grads(m, base, ws, pf, vec, tok, tgt, B, T, norms, clip, g1, scratch, NULL));
    double fac[B];
    for (int b = 0; b < B; b++) fac[b] = fmin(1.0, clip / norm2(gb[b], dim));
    for (size_t i = 0; i < dim; i++) {
        double v = 0;
        for (int b = 0; b < B; b++) v += gb[b][i] * fac[b];
        clipped[i] = (float)v;
    }
    CHECK(rel_diff(g1, clipped, dim) < 1e-4, "%s %s: clipped sum differs by %.3g", shape, mn, rel_diff(g1, clipped, dim));
    CHECK(fabs(norm2(clipped, dim) - norm2(g, dim)) > 1e-3 * norm2(g, dim), "%s %s: clipping had no effect", shape, mn);
    rc = loom_per_example_grads(m, base, ws, pf, vec, tok, tgt, B, T, norms, -1.0f, g1, scratch, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "clip"), "negative clip: %s", loom_errmsg());

    /* forward-only workspace: the same logits and loss, less memory, no backward */
    loom_ws *wi;
    CHECK_OK(loom_ws_create_infer(&wi, m, B, T, pf));
    if (wi) {
        float li;
        CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &l1));
        CHECK_OK(loom_forward_ex(m, base, wi, pf, vec, tok, tgt, B, T, &li));
        int P = loom_ws_prompt_len(ws);
        CHECK(l1 == li && !memcmp(loom_ws_logits(ws), loom_ws_logits(wi), (size_t)B * (T + P) * cfg.vocab * sizeof(float)),
              "%s %s: forward-only workspace gives other logits (loss %.9g vs %.9g)", shape, mn, l1, li);
        CHECK(loom_ws_bytes(wi) < loom_ws_bytes(ws), "%s %s: forward-only workspace %zu bytes, training %zu", shape, mn,
              loom_ws_bytes(wi), loom_ws_bytes(ws));
        rc = loom_backward_ex(m, base, wi, pf, vec, g1);
        CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "inference only"), "backward on inference ws: %s", loom_errmsg());
        loom_ws_free(wi);
    }
    for (int b = 0; b < B; b++) loom_free(gb[b]);
    loom_free(g); loom_free(g1); loom_free(sum); loom_free(scratch); loom_free(clipped);
    loom_ws_free(ws);
    loom_tset_free(ts);
    loom_model_free(m);
}

int main(void) {
    check_set("gpt2-tiny", LOOM_PEFT_LORA, 0);
    check_set("llama-tiny", LOOM_PEFT_LORA, 0);
    check_set("gpt2-tiny", LOOM_PEFT_LORA, 0.3f);
    check_set("gpt2-tiny", LOOM_PEFT_FULL, 0);
    check_set("llama-tiny", LOOM_PEFT_FULL, 0);
    check_set("gpt2-tiny", LOOM_PEFT_PREFIX, 0);
    check_set("llama-tiny", LOOM_PEFT_PREFIX, 0);
    check_set("llama-tiny", LOOM_PEFT_PROMPT, 0);
    check_set("gpt2-tiny", LOOM_PEFT_PROMPT, 0);
    check_set("gpt2-tiny", LOOM_PEFT_BITFIT, 0);
    check_set("llama-tiny", LOOM_PEFT_BITFIT, 0);
    check_set("gpt2-tiny", LOOM_PEFT_ADAPTER, 0);
    check_set("llama-tiny", LOOM_PEFT_ADAPTER, 0);
    base_type = LOOM_Q_INT8; /* frozen low-precision weights: their bias gradients are split per row too */
    check_set("gpt2-tiny", LOOM_PEFT_BITFIT, 0);
    check_set("llama-tiny", LOOM_PEFT_LORA, 0);
    return test_summary();
}
