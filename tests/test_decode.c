/* KV-cached decoding: batched prompt processing (loom_prefill) and decoding with every trainable-set
 * method (loom_prefill_ex / loom_decode_step_ex) against the full forward pass.
 *
 * The independent route is loom_forward_ex (loom_forward without a set) over the whole sequence: its
 * logits row for position t must equal the cache's logits at t. The two compute the same float
 * products in another order (batched sgemm against matrix-vector products, the attention's sums over
 * cached rows, a prefix's rows in the cache instead of prefix attention), so the tolerance is relative:
 * |d| <= 1e-4 of the largest logit (plus 1e-5). Greedy ids generated with the cache must equal those of
 * re-running the forward over the growing sequence. Every set's vector is perturbed at random so each
 * of its values carries signal, and its logits must differ from the plain model's. */
#include <omp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/gemv.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "test.h"

enum { TT = 20, NP = 6, GEN = 10 };

static loom_model *make(const char *shape, loom_qtype qt) {
    loom_config cfg;
    if (loom_config_named(&cfg, shape) != LOOM_OK) return NULL;
    loom_model *m = NULL;
    if (loom_model_create(&m, &cfg, 11) != LOOM_OK) return NULL;
    loom_rng r;
    loom_rng_init(&r, 5, 0);
    float *p = loom_model_params(m);
    for (size_t i = 0; i < loom_model_n_params(m); i++) p[i] += 0.05f * (float)loom_rng_normal(&r);
    if (qt != LOOM_Q_F32 && loom_model_quantize(m, qt) != LOOM_OK) {
        loom_model_free(m);
        return NULL;
    }
    return m;
}

static void tokens(int32_t *tok, int n, int V, uint64_t seed) {
    loom_rng r;
    loom_rng_init(&r, seed, 1);
    for (int i = 0; i < n; i++) tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)V);
}

/* out[T, V] = the full forward's logits at token positions 0 .. T-1 (soft-prompt rows skipped). */
static int forward_logits(const loom_model *m, const loom_peft *pf, const float *vec, const int32_t *tok, int T,
                          float *out) {
    loom_ws *ws;
    int rc = loom_ws_create_infer(&ws, m, 1, T, pf);
    if (rc != LOOM_OK) return rc;
    const float *base = loom_model_params_const(m);
    rc = pf ? loom_forward_ex(m, base, ws, pf, vec, tok, NULL, 1, T, NULL) : loom_forward(m, base, ws, tok, NULL, 1, T, NULL);
    int V = loom_model_config(m)->vocab, P = loom_ws_prompt_len(ws);
    if (rc == LOOM_OK) memcpy(out, loom_ws_logits(ws) + (size_t)P * V, (size_t)T * V * sizeof(float));
    loom_ws_free(ws);
    return rc;
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

/* Logits got[V] against want[V] within the stated tolerance; the label is a printf format. */
static void check_logits(const float *got, const float *want, int V, double scale, const char *fmt, ...) {
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    double d = max_diff(got, want, (size_t)V);
    CHECK(d <= 1e-4 * scale + 1e-5, "%s: max |d| %.3g (max |logit| %.3g)", what, d, scale);
}
#define CHECK_LOGITS check_logits

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Prefill equals n single decode steps and the full forward, in one pass and in passes of 7 rows, from
 * position 0 and continuing at a later position (RoPE offsets, the causal mask inside a pass). */
static void prefill_matches(const char *shape) {
    loom_model *m = make(shape, LOOM_Q_F32);
    CHECK(m != NULL, "%s: model", shape);
    if (!m) return;
    const int V = loom_model_config(m)->vocab;
    const float *params = loom_model_params_const(m);
    int32_t tok[TT];
    tokens(tok, TT, V, 7);
    float *full = malloc((size_t)TT * V * sizeof(float)), *steps = malloc((size_t)TT * V * sizeof(float));
    float *lg = malloc((size_t)V * sizeof(float));
    CHECK_OK(forward_logits(m, NULL, NULL, tok, TT, full));
    double sc = max_abs(full, (size_t)TT * V);
    loom_kv *kv;
    CHECK_OK(loom_kv_create(&kv, m, TT));
    for (int t = 0; t < TT; t++) CHECK_OK(loom_decode_step(m, params, kv, tok[t], t, steps + (size_t)t * V));
    loom_kv_free(kv);
    for (int t = 0; t < TT; t++) CHECK_LOGITS(steps + (size_t)t * V, full + (size_t)t * V, V, sc, "%s: step %d vs forward", shape, t);

    /* the whole prompt in one pass */
    CHECK_OK(loom_kv_create_ex(&kv, m, NULL, TT, 0));
    CHECK_OK(loom_prefill(m, params, kv, tok, TT, 0, lg));
    CHECK_LOGITS(lg, full + (size_t)(TT - 1) * V, V, sc, "%s: prefill of %d vs forward", shape, TT);
    CHECK_LOGITS(lg, steps + (size_t)(TT - 1) * V, V, sc, "%s: prefill of %d vs %d steps", shape, TT, TT);
    /* a new sequence in the same cache: 9 positions, then 11 more in one pass from position 9 */
    CHECK_OK(loom_prefill(m, params, kv, tok, 9, 0, lg));
    CHECK_LOGITS(lg, full + (size_t)8 * V, V, sc, "%s: prefill of 9 vs forward", shape);
    CHECK_OK(loom_prefill(m, params, kv, tok + 9, TT - 9, 9, lg));
    CHECK_LOGITS(lg, full + (size_t)(TT - 1) * V, V, sc, "%s: prefill continued at 9 vs forward", shape);
    loom_kv_free(kv);

    /* passes of 7 rows (13 positions: two passes), then single steps */
    CHECK_OK(loom_kv_create_ex(&kv, m, NULL, TT, 7));
    CHECK_OK(loom_prefill(m, params, kv, tok, 13, 0, lg));
    CHECK_LOGITS(lg, full + (size_t)12 * V, V, sc, "%s: prefill of 13 in passes of 7 vs forward", shape);
    for (int t = 13; t < TT; t++) {
        CHECK_OK(loom_decode_step(m, params, kv, tok[t], t, lg));
        CHECK_LOGITS(lg, full + (size_t)t * V, V, sc, "%s: step %d after a chunked prefill vs forward", shape, t);
    }
    loom_kv_free(kv);
    free(full);
    free(steps);
    free(lg);
    loom_model_free(m);
}

static void set_config(loom_peft_config *pc, loom_peft_method meth, int gpt2) {
    loom_peft_defaults(pc, meth);
    pc->lora_r = 4;
    snprintf(pc->target_modules, sizeof pc->target_modules, "%s",
             gpt2 ? "c_attn,c_proj,c_fc" : "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    pc->prefix_len = 5;
    pc->prompt_len = 4;
    pc->adapter_dim = 8;
    pc->bitfit_norms = 1;
}

/* For the set's method: the cache's logits at every position (a prefill of NP, then steps; and steps
 * from position 0) equal the full forward's, and greedy generation gives the same ids. */
static void method_matches(const char *shape, loom_peft_method meth, loom_qtype qt) {
    const char *mn = loom_peft_method_name(meth), *qn = loom_base_dtype_name(qt);
    loom_model *m = make(shape, qt);
    CHECK(m != NULL, "%s %s: model", shape, qn);
    if (!m) return;
    const loom_config *c = loom_model_config(m);
    const int V = c->vocab;
    loom_peft_config pc;
    set_config(&pc, meth, c->arch == LOOM_ARCH_GPT2);
    pc.base_dtype = qt;
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    if (!ts) {
        loom_model_free(m);
        return;
    }
    const loom_peft *pf = loom_tset_plan(ts);
    size_t dim = loom_tset_dim(ts);
    float *vec = malloc(dim * sizeof(float));
    memcpy(vec, loom_tset_data(ts), dim * sizeof(float));
    loom_rng r;
    loom_rng_init(&r, 9, 2);
    for (size_t i = 0; i < dim; i++) vec[i] += 0.05f * (float)loom_rng_normal(&r);
    const float *base = loom_model_params_const(m);
    size_t base_bytes = loom_model_base_bytes(m);

    int32_t tok[TT];
    tokens(tok, TT, V, 13);
    float *full = malloc((size_t)TT * V * sizeof(float)), *plain = malloc((size_t)TT * V * sizeof(float));
    float *lg = malloc((size_t)V * sizeof(float));
    CHECK_OK(forward_logits(m, pf, vec, tok, TT, full));
    CHECK_OK(forward_logits(m, NULL, NULL, tok, TT, plain));
    double sc = max_abs(full, (size_t)TT * V);
    CHECK(max_diff(full, plain, (size_t)TT * V) > 1e-3 * sc, "%s %s %s: the set changes nothing", shape, mn, qn);

    loom_kv *kv = NULL;
    CHECK_OK(loom_kv_create_ex(&kv, m, pf, TT, 0));
    if (!kv) goto done;
    CHECK_OK(loom_prefill_ex(m, base, kv, pf, vec, tok, NP, 0, lg));
    CHECK_LOGITS(lg, full + (size_t)(NP - 1) * V, V, sc, "%s %s %s: prefill of %d", shape, mn, qn, NP);
    for (int t = NP; t < TT; t++) {
        CHECK_OK(loom_decode_step_ex(m, base, kv, pf, vec, tok[t], t, lg));
        CHECK_LOGITS(lg, full + (size_t)t * V, V, sc, "%s %s %s: step %d after a prefill", shape, mn, qn, t);
    }
    for (int t = 0; t < TT; t++) {
        CHECK_OK(loom_decode_step_ex(m, base, kv, pf, vec, tok[t], t, lg));
        CHECK_LOGITS(lg, full + (size_t)t * V, V, sc, "%s %s %s: step %d", shape, mn, qn, t);
    }
    loom_kv *k3 = NULL; /* passes of 3 rows: a soft prompt's rows split across passes */
    CHECK_OK(loom_kv_create_ex(&k3, m, pf, TT, 3));
    if (k3) {
        CHECK_OK(loom_prefill_ex(m, base, k3, pf, vec, tok, NP, 0, lg));
        CHECK_LOGITS(lg, full + (size_t)(NP - 1) * V, V, sc, "%s %s %s: prefill of %d in passes of 3", shape, mn, qn, NP);
        loom_kv_free(k3);
    }
    if (qt != LOOM_Q_F32) { /* decoded from the base as held: no float copy of its weights anywhere */
        size_t fl = 0;
        for (int i = 0; i < loom_model_n_tensors(m); i++)
            if (loom_model_tensor(m, i)->kind == LOOM_T_LINEAR_W) fl += loom_model_tensor(m, i)->numel * sizeof(float);
        CHECK(loom_kv_bytes(kv) < fl / 2, "%s %s %s: the cache holds %zu bytes (the float linear weights %zu)", shape, mn,
              qn, loom_kv_bytes(kv), fl);
        CHECK(loom_model_base_bytes(m) == base_bytes && loom_model_base_type(m) == qt, "%s %s %s: base now %zu bytes, was %zu",
              shape, mn, qn, loom_model_base_bytes(m), base_bytes);
    }

    /* greedy: the cache against the forward over the growing sequence */
    int32_t seq[NP + GEN], ids[GEN];
    memcpy(seq, tok, NP * sizeof *seq);
    CHECK_OK(loom_prefill_ex(m, base, kv, pf, vec, tok, NP, 0, lg));
    for (int g = 0; g < GEN; g++) {
        ids[g] = argmax(lg, V);
        if (g + 1 < GEN) CHECK_OK(loom_decode_step_ex(m, base, kv, pf, vec, ids[g], NP + g, lg));
    }
    int same = 1, at = -1;
    for (int g = 0; g < GEN; g++) {
        CHECK_OK(forward_logits(m, pf, vec, seq, NP + g, full));
        seq[NP + g] = argmax(full + (size_t)(NP + g - 1) * V, V);
        if (seq[NP + g] != ids[g] && same) same = 0, at = g;
    }
    CHECK(same, "%s %s %s: greedy ids differ from the forward's at %d", shape, mn, qn, at);
done:
    loom_kv_free(kv);
    free(full);
    free(plain);
    free(lg);
    free(vec);
    loom_tset_free(ts);
    loom_model_free(m);
}

static int msg_has(const char *s) { return strstr(loom_errmsg(), s) != NULL; }

static void refusals(void) {
    loom_model *m = make("llama-tiny", LOOM_Q_F32);
    CHECK(m != NULL, "model");
    if (!m) return;
    const int V = loom_model_config(m)->vocab, S = loom_model_config(m)->max_seq;
    const float *base = loom_model_params_const(m);
    loom_peft_config pc;
    set_config(&pc, LOOM_PEFT_PROMPT, 0);
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    if (!ts) {
        loom_model_free(m);
        return;
    }
    const loom_peft *pf = loom_tset_plan(ts);
    float *lg = malloc((size_t)V * sizeof(float));
    int32_t tok[4] = {1, 2, V, 3};
    loom_kv *kv = NULL;
    CHECK(loom_kv_create_ex(&kv, m, pf, S, 0) == LOOM_EINVAL && !kv && msg_has("less a soft prompt of 4"),
          "a soft prompt past the model's positions: %s", loom_errmsg());
    CHECK(loom_kv_create_ex(&kv, m, NULL, 8, -1) == LOOM_EINVAL && msg_has("rows per prompt pass"), "rows: %s",
          loom_errmsg());
    CHECK_OK(loom_kv_create_ex(&kv, m, pf, 8, 0));
    if (kv) {
        CHECK(loom_prefill(m, base, kv, tok, 2, 0, lg) == LOOM_EINVAL && msg_has("made for another trainable set"),
              "plain prefill on a set's cache: %s", loom_errmsg());
        CHECK(loom_prefill_ex(m, base, kv, pf, NULL, tok, 2, 0, lg) == LOOM_EINVAL && msg_has("needs its vector"),
              "no vector: %s", loom_errmsg());
        const float *vec = loom_tset_data(ts);
        CHECK(loom_prefill_ex(m, base, kv, pf, vec, tok, 4, 0, lg) == LOOM_ERANGE &&
                  msg_has("token 512 at position 2 outside the vocabulary (512)"),
              "token past the vocabulary: %s", loom_errmsg());
        CHECK(loom_prefill_ex(m, base, kv, pf, vec, tok, 2, 7, lg) == LOOM_ERANGE &&
                  msg_has("positions 7..8 outside the KV cache (8)"),
              "prefill past the cache: %s", loom_errmsg());
        CHECK(loom_decode_step_ex(m, base, kv, pf, vec, 1, 8, lg) == LOOM_ERANGE && msg_has("position 8 outside the KV cache"),
              "step past the cache: %s", loom_errmsg());
        loom_kv_free(kv);
    }
    kv = NULL;
    CHECK_OK(loom_kv_create(&kv, m, 8));
    if (kv) {
        CHECK(loom_prefill_ex(m, base, kv, pf, loom_tset_data(ts), tok, 2, 0, lg) == LOOM_EINVAL &&
                  msg_has("made for the model without a trainable set"),
              "a set on a plain cache: %s", loom_errmsg());
        loom_kv_free(kv);
    }
    free(lg);
    loom_tset_free(ts);
    loom_model_free(m);
}

/* The cached logits are the same bits on 1 and 2 threads (a prefill, then steps, with adapters: the
 * matrix products, the attention's per-(row, head) sums and a method's hooks). */
static void thread_independence(void) {
    enum { NT = 48, NQ = 40 }; /* long enough for the attention to run in parallel */
    loom_model *m = make("gpt2-tiny", LOOM_Q_F32);
    CHECK(m != NULL, "model");
    if (!m) return;
    const int V = loom_model_config(m)->vocab;
    loom_peft_config pc;
    set_config(&pc, LOOM_PEFT_ADAPTER, 1);
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    float *lg[2] = {malloc((size_t)NT * V * sizeof(float)), malloc((size_t)NT * V * sizeof(float))};
    int32_t tok[NT];
    tokens(tok, NT, V, 21);
    for (int k = 0; k < 2 && ts; k++) {
        omp_set_num_threads(k + 1);
        loom_kv *kv = NULL;
        CHECK_OK(loom_kv_create_ex(&kv, m, loom_tset_plan(ts), NT, 0));
        if (!kv) break;
        CHECK_OK(loom_prefill_ex(m, loom_model_params(m), kv, loom_tset_plan(ts), loom_tset_data(ts), tok, NQ, 0, lg[k]));
        for (int t = NQ; t < NT; t++)
            CHECK_OK(loom_decode_step_ex(m, loom_model_params(m), kv, loom_tset_plan(ts), loom_tset_data(ts), tok[t], t,
                                         lg[k] + (size_t)(t - NQ + 1) * V));
        loom_kv_free(kv);
    }
    omp_set_num_threads(1);
    CHECK(!memcmp(lg[0], lg[1], (size_t)(NT - NQ + 1) * V * sizeof(float)), "logits on 1 and 2 threads differ");
    free(lg[0]);
    free(lg[1]);
    loom_tset_free(ts);
    loom_model_free(m);
}

/* A Llama held whole in int8 and decoded with x quantized (LOOM_I8_DOT, what `loom generate` runs): the
 * same bits on every instruction-set path (VNNI's kernels and maddubs + madd) and on 1 and 2 threads.
 * Odd sizes (160 inputs: a half pair of blocks; 416 hidden: 13 blocks), grouped-query attention, and
 * products above the threading threshold (the head, the MLP). */
static void int8_paths_agree(void) {
    enum { NP = 3, NS = 8 };
    loom_config cfg;
    CHECK_OK(loom_config_named(&cfg, "llama-tiny"));
    cfg.dim = 160, cfg.n_head = 5, cfg.n_kv_head = 1, cfg.hidden = 416, cfg.vocab = 500;
    loom_model *m = NULL;
    CHECK_OK(loom_model_create_quantized_ex(&m, &cfg, 13, LOOM_Q_INT8, LOOM_QUANT_EMBED_HEAD));
    if (!m) return;
    const int V = cfg.vocab;
    int32_t tok[NP + NS];
    tokens(tok, NP + NS, V, 31);
    float *ref = malloc((size_t)(NS + 1) * V * sizeof(float)), *lg = malloc((size_t)(NS + 1) * V * sizeof(float));
    CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_DOT));
    const loom_isa best = loom_isa_best();
    int runs = 0;
    for (int isa = (int)best; isa >= (int)LOOM_ISA_PORTABLE; isa--)
        for (int vnni = 1; vnni >= 0; vnni--)
            for (int t = 1; t <= 2; t++) {
                CHECK_OK(loom_gemv_set_isa((loom_isa)isa));
                loom_gemv_set_vnni(vnni);
                if (vnni && !loom_gemv_vnni()) continue;
                omp_set_num_threads(t);
                loom_kv *kv = NULL;
                CHECK_OK(loom_kv_create(&kv, m, NP + NS));
                if (!kv) continue;
                float *out = runs ? lg : ref;
                CHECK_OK(loom_prefill(m, loom_model_params(m), kv, tok, NP, 0, out));
                for (int s = 0; s < NS; s++)
                    CHECK_OK(loom_decode_step(m, loom_model_params(m), kv, tok[NP + s], NP + s, out + (size_t)(s + 1) * V));
                loom_kv_free(kv);
                if (runs++) {
                    size_t off = 0;
                    while (off < (size_t)(NS + 1) * V && !memcmp(&lg[off], &ref[off], sizeof *lg)) off++;
                    CHECK(off == (size_t)(NS + 1) * V, "int8 dot decoding, %s%s on %d threads: step %zu logit %zu is %.9g, not %.9g",
                          loom_isa_name((loom_isa)isa), vnni ? " vnni" : "", t, off / V, off % V,
                          off < (size_t)(NS + 1) * V ? lg[off] : 0.0, off < (size_t)(NS + 1) * V ? ref[off] : 0.0);
                }
            }
    CHECK(runs >= 3, "int8 dot decoding ran %d configurations", runs);
    double mx = 0;
    for (size_t i = 0; i < (size_t)(NS + 1) * V; i++) mx = fmax(mx, fabs(ref[i]));
    CHECK(mx > 1e-3 && isfinite(mx), "int8 dot decoding: logits up to %.3g", mx); /* not a zero model */
    loom_gemv_set_vnni(1);
    CHECK_OK(loom_gemv_set_isa(best));
    CHECK_OK(loom_gemv_set_i8_scheme(LOOM_I8_WIDEN));
    omp_set_num_threads(1);
    free(ref), free(lg);
    loom_model_free(m);
}

int main(void) {
    double t0 = loom_now();
    /* tiny models: one thread (many small products; the suite runs tests side by side) */
    omp_set_num_threads(1);
    thread_independence();
    int8_paths_agree();
    prefill_matches("gpt2-tiny");
    prefill_matches("llama-tiny");
    const loom_peft_method meths[] = {LOOM_PEFT_LORA, LOOM_PEFT_PREFIX, LOOM_PEFT_PROMPT, LOOM_PEFT_ADAPTER,
                                      LOOM_PEFT_BITFIT, LOOM_PEFT_FULL};
    for (size_t i = 0; i < sizeof meths / sizeof meths[0]; i++) {
        method_matches("gpt2-tiny", meths[i], LOOM_Q_F32);
        method_matches("llama-tiny", meths[i], LOOM_Q_F32);
    }
    /* a low-precision base, decoded as it is held */
    method_matches("llama-tiny", LOOM_PEFT_LORA, LOOM_Q_BF16);
    method_matches("gpt2-tiny", LOOM_PEFT_ADAPTER, LOOM_Q_BF16);
    method_matches("gpt2-tiny", LOOM_PEFT_LORA, LOOM_Q_INT8);
    method_matches("llama-tiny", LOOM_PEFT_PREFIX, LOOM_Q_INT8);
    refusals();
    printf("test_decode: %.2f s\n", loom_now() - t0);
    return test_summary();
}
