/* Split learning at the model level: the model cut after layer k into a client part (embeddings, layers
 * 0 .. k - 1) and a server part (layers k .. L - 1, final norm, head, loss) that exchange the cut's
 * activations and their gradient computes the whole model's loss and gradients, for GPT-2 and Llama
 * shapes, every k from 0 to L, LoRA (with dropout) and full fine-tuning; the split trainer steps like the
 * whole one; bad cuts are refused with a message. The expected values come from the whole model's own
 * forward and backward (loom_forward_ex / loom_backward_ex). */
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/train.h"
#include "test.h"

enum { B = 2, T = 8, NL = 3 };

static loom_model *tiny(int llama, uint64_t seed) {
    loom_config cfg;
    loom_config_named(&cfg, llama ? "llama-tiny" : "gpt2-tiny");
    cfg.n_layer = NL;
    cfg.vocab = 37;
    cfg.max_seq = 32;
    loom_model *m = NULL;
    CHECK_OK(loom_model_create(&m, &cfg, seed));
    if (!m) return NULL;
    /* larger-than-default weights so that every path carries signal */
    loom_rng r;
    loom_rng_init(&r, seed, 7);
    float *p = loom_model_params(m);
    for (size_t i = 0; i < loom_model_n_params(m); i++) p[i] += 0.05f * (float)loom_rng_normal(&r);
    return m;
}

static void batch(uint64_t seed, int V, int32_t *tok, int32_t *tgt) {
    loom_rng r;
    loom_rng_init(&r, seed, 3);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)V);
        tgt[i] = i % 5 == 0 ? -1 : (int32_t)loom_rng_below(&r, (uint32_t)V);
    }
}

/* max |a - b| / max |b| over n values (0 when both are 0) */
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return s > 0 ? d / s : d;
}

/* One set on one model: for every cut k, the split loss and gradients against the whole model's. */
static void check_set(loom_model *m, const loom_peft_config *pc, const char *what) {
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, pc, 11));
    if (!ts) return;
    const loom_peft *pf = loom_tset_plan(ts);
    size_t dim = loom_tset_dim(ts);
    float *vec = loom_tset_data(ts);
    /* LoRA's B starts at zero: give it values so that every A gets a gradient */
    loom_rng r;
    loom_rng_init(&r, 5, 5);
    for (size_t i = 0; pc->method == LOOM_PEFT_LORA && i < dim; i++) vec[i] += 0.05f * (float)loom_rng_normal(&r);
    const int L = loom_model_config(m)->n_layer, C = loom_model_config(m)->dim;
    int32_t tok[B * T], tgt[B * T];
    batch(9, loom_model_config(m)->vocab, tok, tgt);
    const float *base = loom_model_params(m);

    float *gref = calloc(dim, sizeof(float)), *gs = calloc(dim, sizeof(float)), *gc = calloc(dim, sizeof(float));
    float *act = malloc((size_t)B * T * C * sizeof(float)), *dact = malloc((size_t)B * T * C * sizeof(float));
    loom_ws *ws = NULL;
    CHECK_OK(loom_ws_create_ex(&ws, m, B, T, pf));
    loom_ws_set_dropout(ws, 1, 1234);
    float lref = 0;
    CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &lref));
    CHECK_OK(loom_backward_ex(m, base, ws, pf, vec, gref));
    for (int k = 0; k <= L; k++) {
        loom_ws *wc = NULL, *wsv = NULL;
        CHECK_OK(loom_ws_create_part(&wc, m, B, T, pf, 0, k));
        CHECK_OK(loom_ws_create_part(&wsv, m, B, T, pf, k, L));
        if (!wc || !wsv) break;
        loom_ws_set_dropout(wc, 1, 1234);
        loom_ws_set_dropout(wsv, 1, 1234);
        memset(gs, 0, dim * sizeof(float));
        memset(gc, 0, dim * sizeof(float));
        float ls = -1;
        size_t n = 0;
        CHECK_OK(loom_forward_part(m, base, wc, pf, vec, 0, k, tok, NULL, NULL, B, T, NULL));
        const float *a = loom_ws_activation(wc, &n);
        CHECK(a && n == (size_t)B * T * C, "%s k=%d: %zu activations, expected %d", what, k, n, B * T * C);
        if (!a) break;
        memcpy(act, a, n * sizeof(float));
        CHECK_OK(loom_forward_part(m, base, wsv, pf, vec, k, L, NULL, act, tgt, B, T, &ls));
        CHECK_OK(loom_backward_part(m, base, wsv, pf, vec, gs, NULL, dact));
        CHECK_OK(loom_backward_part(m, base, wc, pf, vec, gc, dact, NULL));
        CHECK(ls == lref, "%s k=%d: split loss %.9g, whole model %.9g", what, k, (double)ls, (double)lref);
        /* each entry's gradient comes from the side that runs it (a tied embedding from both) */
        for (int e = 0; e < loom_tset_count(ts); e++) {
            const loom_tset_entry *en = loom_tset_entry_at(ts, e);
            float *sum = malloc(en->numel * sizeof(float));
            for (size_t i = 0; i < en->numel; i++) sum[i] = gc[en->offset + i] + gs[en->offset + i];
            double err = rel_err(sum, gref + en->offset, en->numel);
            CHECK(err <= 1e-5, "%s k=%d: %s relative error %.3g", what, k, en->name, err);
            double gmax = 0;
            for (size_t i = 0; i < en->numel; i++) gmax = fmax(gmax, fabs(gref[en->offset + i]));
            CHECK(gmax > 0, "%s: %s has no gradient (the check would be empty)", what, en->name);
            if (en->layer >= 0) { /* a layer's values get their gradient from its own side only */
                const float *other = en->layer < k ? gs : gc;
                double o = 0;
                for (size_t i = 0; i < en->numel; i++) o = fmax(o, fabs(other[en->offset + i]));
                CHECK(o == 0, "%s k=%d: %s (layer %d) got a gradient from the %s part", what, k, en->name, en->layer,
                      en->layer < k ? "server" : "client");
            }
            free(sum);
        }
        loom_ws_free(wc);
        loom_ws_free(wsv);
    }
    loom_ws_free(ws);
    free(gref), free(gs), free(gc), free(act), free(dact);
    loom_tset_free(ts);
}

/* The split trainer (loom_train_config.split) takes the same steps as the whole one: the same bits. */
static void check_trainer(loom_model *m) {
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 4;
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    if (!ts) return;
    size_t dim = loom_tset_dim(ts);
    float *v1 = malloc(dim * sizeof(float)), *v2 = malloc(dim * sizeof(float));
    memcpy(v1, loom_tset_data(ts), dim * sizeof(float));
    memcpy(v2, v1, dim * sizeof(float));
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.B = B, tc.T = T, tc.opt.lr = 1e-2f, tc.clip = 0.5f;
    loom_trainer *t1 = NULL, *t2 = NULL;
    CHECK_OK(loom_trainer_create_peft(&t1, m, loom_model_params(m), ts, v1, &tc));
    tc.split = 1, tc.split_layer = 1;
    CHECK_OK(loom_trainer_create_peft(&t2, m, loom_model_params(m), ts, v2, &tc));
    int32_t tok[B * T], tgt[B * T];
    for (int s = 0; t1 && t2 && s < 3; s++) {
        batch(100 + (uint64_t)s, loom_model_config(m)->vocab, tok, tgt);
        float l1 = 0, l2 = 1;
        CHECK_OK(loom_trainer_step(t1, tok, tgt, &l1, NULL));
        CHECK_OK(loom_trainer_step(t2, tok, tgt, &l2, NULL));
        CHECK(l1 == l2, "step %d: split loss %.9g, whole %.9g", s, (double)l2, (double)l1);
    }
    CHECK(memcmp(v1, v2, dim * sizeof(float)) == 0, "the split trainer's vector differs from the whole trainer's");
    double moved = 0;
    for (size_t i = 0; i < dim; i++) moved = fmax(moved, fabs((double)v1[i] - loom_tset_data(ts)[i]));
    CHECK(moved > 0, "the steps moved nothing (the comparison would be empty)");
    loom_trainer_free(t1);
    loom_trainer_free(t2);
    /* a cut beyond the model is refused, naming the range */
    tc.split_layer = NL + 1;
    int rc = loom_trainer_create_peft(&t2, m, loom_model_params(m), ts, v2, &tc);
    CHECK(rc != LOOM_OK && strstr(loom_errmsg(), "split layer 4 is outside 0..3"), "rc %d: %s", rc, loom_errmsg());
    free(v1), free(v2);
    loom_tset_free(ts);
}

static void check_refusals(loom_model *m) {
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    if (!ts) return;
    const loom_peft *pf = loom_tset_plan(ts);
    int32_t tok[B * T], tgt[B * T];
    batch(1, loom_model_config(m)->vocab, tok, tgt);
    loom_ws *wc = NULL;
    int rc = loom_ws_create_part(&wc, m, B, T, pf, 2, 1);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "layers 2 .. 0 are not a part"), "rc %d: %s", rc, loom_errmsg());
    CHECK_OK(loom_ws_create_part(&wc, m, B, T, pf, 0, 1));
    if (!wc) return;
    const float *base = loom_model_params(m), *vec = loom_tset_data(ts);
    rc = loom_forward_ex(m, base, wc, pf, vec, tok, tgt, B, T, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "outside the workspace's part (layers 0 .. 0)"), "rc %d: %s", rc,
          loom_errmsg());
    rc = loom_forward_part(m, base, wc, pf, vec, 0, 1, NULL, NULL, NULL, B, T, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "needs tokens"), "rc %d: %s", rc, loom_errmsg());
    CHECK_OK(loom_forward_part(m, base, wc, pf, vec, 0, 1, tok, NULL, NULL, B, T, NULL));
    float *g = calloc(loom_tset_dim(ts), sizeof(float));
    rc = loom_backward_part(m, base, wc, pf, vec, g, NULL, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "needs the gradient of its output"), "rc %d: %s", rc, loom_errmsg());
    free(g);
    loom_ws_free(wc);
    loom_tset_free(ts);
}

int main(void) {
    for (int llama = 0; llama <= 1; llama++) {
        loom_model *m = tiny(llama, 42 + (uint64_t)llama);
        if (!m) continue;
        const char *arch = llama ? "llama" : "gpt2";
        char what[64];
        loom_peft_config pc;
        loom_peft_defaults(&pc, LOOM_PEFT_LORA);
        pc.lora_r = 4;
        pc.lora_dropout = 0.1f;
        snprintf(what, sizeof what, "%s lora", arch);
        check_set(m, &pc, what);
        loom_peft_defaults(&pc, LOOM_PEFT_FULL);
        snprintf(what, sizeof what, "%s full", arch);
        check_set(m, &pc, what);
        if (!llama) {
            check_trainer(m);
            check_refusals(m);
        }
        loom_model_free(m);
    }
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
