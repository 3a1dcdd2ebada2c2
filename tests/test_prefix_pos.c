/* Prefix tuning's positions are PEFT's: the P prefix rows are a past the sequence continues, so the
 * sequence's token t sits at position P + t (GPT-2's position embedding, Llama's RoPE), and the rows are
 * used as given (keys not rotated again).
 *
 * The independent route is the plain model on a longer sequence: run it over x (P tokens) then y (T
 * tokens); its cached keys and values of x at every layer are a prefix table. The prefix set holding that
 * table, run over y alone, must give the plain model's logits for y's positions (P .. P + T - 1), up to
 * float reordering: |d| <= 1e-4 of the largest logit (plus 1e-5). With the sequence at positions
 * 0 .. T - 1 instead, GPT-2's position embeddings and Llama's rotations differ and so do the logits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "model/model_impl.h"
#include "test.h"

enum { P = 5, T = 9 };

static void check_shape(const char *shape) {
    loom_config cfg;
    CHECK_OK(loom_config_named(&cfg, shape));
    loom_model *m = NULL;
    CHECK_OK(loom_model_create(&m, &cfg, 21));
    if (!m) return;
    loom_rng r;
    loom_rng_init(&r, 4, 0);
    float *par = loom_model_params(m);
    for (size_t i = 0; i < loom_model_n_params(m); i++) par[i] += 0.05f * (float)loom_rng_normal(&r);
    const loom_config *c = loom_model_config(m);
    const int V = c->vocab, L = c->n_layer;
    int32_t tok[P + T];
    for (int i = 0; i < P + T; i++) tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)V);

    /* the plain model over x y: its logits at y's positions and its cache of x */
    loom_ws *ws = NULL;
    CHECK_OK(loom_ws_create_infer(&ws, m, 1, P + T, NULL));
    CHECK_OK(loom_forward(m, par, ws, tok, NULL, 1, P + T, NULL));
    float *want = malloc((size_t)T * V * sizeof(float));
    memcpy(want, loom_ws_logits(ws) + (size_t)P * V, (size_t)T * V * sizeof(float));
    loom_ws_free(ws);
    loom_kv *kv = NULL;
    CHECK_OK(loom_kv_create(&kv, m, P));
    float *lg = malloc((size_t)V * sizeof(float));
    CHECK_OK(loom_prefill(m, par, kv, tok, P, 0, lg));

    /* the prefix set holding x's keys and values: prompt_embeddings [P, L * 2 * KV], layer l's keys at
     * columns 2l KV, its values at (2l + 1) KV */
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_PREFIX);
    pc.prefix_len = P;
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    const float *k, *v;
    int KV = lm_kv_layer(kv, 0, &k, &v);
    size_t dim = loom_tset_dim(ts);
    CHECK(dim == (size_t)P * L * 2 * KV, "%s: prefix set of %zu values, expected P x L x 2 x KV = %d", shape, dim,
          P * L * 2 * KV);
    float *vec = calloc(dim, sizeof(float));
    for (int l = 0; l < L; l++) {
        lm_kv_layer(kv, l, &k, &v);
        for (int p = 0; p < P; p++) {
            memcpy(vec + (size_t)p * L * 2 * KV + (size_t)2 * l * KV, k + (size_t)p * KV, (size_t)KV * sizeof(float));
            memcpy(vec + (size_t)p * L * 2 * KV + (size_t)(2 * l + 1) * KV, v + (size_t)p * KV, (size_t)KV * sizeof(float));
        }
    }

    /* the set over y alone, by the full forward and by the cache */
    const loom_peft *pf = loom_tset_plan(ts);
    CHECK_OK(loom_ws_create_infer(&ws, m, 1, T, pf));
    CHECK_OK(loom_forward_ex(m, par, ws, pf, vec, tok + P, NULL, 1, T, NULL));
    const float *got = loom_ws_logits(ws);
    double sc = 0, d = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) {
        sc = fmax(sc, fabs(want[i]));
        d = fmax(d, fabs((double)got[i] - want[i]));
    }
    double tol = 1e-4 * sc + 1e-5;
    CHECK(d <= tol, "%s: prefix set over y vs the plain model over x y: max |d| %.3g > %.3g", shape, d, tol);
    loom_ws_free(ws);
    loom_kv *kp = NULL;
    CHECK_OK(loom_kv_create_ex(&kp, m, pf, T, 0));
    double dk = 0;
    for (int t = 0; t < T; t++) {
        CHECK_OK(loom_decode_step_ex(m, par, kp, pf, vec, tok[P + t], t, lg));
        for (int i = 0; i < V; i++) dk = fmax(dk, fabs((double)lg[i] - want[(size_t)t * V + i]));
    }
    CHECK(dk <= tol, "%s: the prefix set decoded with a cache vs the plain model: max |d| %.3g > %.3g", shape, dk, tol);
    /* positions count the prefix: the cache holds P + T at most of the model's positions */
    loom_kv *kbig = NULL;
    int rc = loom_kv_create_ex(&kbig, m, pf, c->max_seq - P + 1, 0);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "prefix positions"),
          "%s: a cache past the model's positions less the prefix is refused (rc %d: %s)", shape, rc, loom_errmsg());
    loom_kv_free(kbig);
    loom_kv_free(kp);
    loom_kv_free(kv);
    loom_tset_free(ts);
    free(vec);
    free(lg);
    free(want);
    loom_model_free(m);
}

int main(void) {
    check_shape("gpt2-tiny");
    check_shape("llama-tiny");
    return test_summary();
}
