/* Trainable sets: gradients of every method against central differences (GPT-2 and Llama, LoRA with
 * dropout, on a low-precision base); full/BitFit gradients equal the plain backward's; merge/unmerge;
 * save/load and PEFT-layout round trips; a trainer step moves only the vector; bad input.
 *
 * Gradient checks (test.h): per manifest entry of a tiny model along the entry's gradient and three
 * random directions, and element by element for every method on a micro model (C = 8). Mutations of
 * src/model/model.c that were seen to fail this test, naming the entry: LoRA B gradient halved; LoRA A
 * gradient halved; LoRA's share of the input gradient halved; adapter up-projection bias gradient
 * halved; prefix key gradients halved (element check only: keys and values are one entry);
 * c_attn.weight and ln_1.bias gradients halved (full and BitFit). */
#include <omp.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/safetensors.h"
#include "loom/train.h"
#include "model/model_impl.h"
#include "test.h"

enum { B = 2, T = 8 };

static void batch(loom_rng *r, int V, int32_t *tok, int32_t *tgt) {
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(r, (uint32_t)V);
        tgt[i] = i % 5 == 0 ? -1 : (int32_t)loom_rng_below(r, (uint32_t)V);
    }
}

/* A tiny model (C = 64), or with micro a very small one (C = 8) for element-by-element checks. */
static loom_model *tiny_ex(int llama, int micro, uint64_t seed) {
    loom_config cfg;
    loom_config_named(&cfg, llama ? "llama-tiny" : "gpt2-tiny");
    cfg.vocab = 37;
    cfg.max_seq = 32;
    if (micro) {
        cfg.dim = 8, cfg.n_head = 2, cfg.n_kv_head = llama ? 1 : 2, cfg.hidden = llama ? 12 : 32;
        cfg.vocab = 11, cfg.max_seq = 16;
    }
    if (!llama) cfg.act = LOOM_ACT_GELU_TANH;
    loom_model *m = NULL;
    CHECK_OK(loom_model_create(&m, &cfg, seed));
    if (!m) return NULL;
    /* larger-than-default weights so every path carries signal */
    loom_rng r;
    loom_rng_init(&r, seed, 99);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += (micro ? 0.3f : 0.05f) * (float)loom_rng_normal(&r);
    return m;
}

static loom_model *tiny(int llama, uint64_t seed) { return tiny_ex(llama, 0, seed); }

/* finite differences: directions per entry, step, tolerances (see test_grad_check in test.h) */
#define FD_DIRS 4
#define FD_STEP 1e-2
#define FD_TOL_GRAD 1e-2
#define FD_TOL_RAND 1e-1
#define FD_TOL_ELEM 2e-2
#define FD_STEP_ELEM 3e-3

typedef struct {
    const loom_model *m;
    loom_ws *ws;
    const loom_peft *pf;
    const int32_t *tok, *tgt;
} loss_ctx;

static double loss_of(void *ctx, const float *vec) {
    loss_ctx *c = ctx;
    float l = 0;
    loom_forward_ex(c->m, c->m->params, c->ws, c->pf, vec, c->tok, c->tgt, B, T, &l);
    return l;
}

/* Finite differences per manifest entry: along the entry's gradient and random directions, or (elems)
 * element by element; the vector is randomised first so that every tensor (LoRA B, adapter
 * up-projections, ...) carries gradient. */
static void fd_check(const char *label, loom_model *m, loom_peft_config *pc, int dropout, int elems) {
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, pc, 3));
    if (!ts) return;
    size_t dim = loom_tset_dim(ts);
    const loom_peft *pf = loom_tset_plan(ts);
    float *vec = loom_alloc(dim * 4), *g = loom_calloc(dim, 4);
    loom_rng r;
    loom_rng_init(&r, 17, 1);
    for (size_t i = 0; i < dim; i++) vec[i] = loom_tset_data(ts)[i] + (elems ? 0.2f : 0.1f) * (float)loom_rng_normal(&r);
    loom_ws *ws;
    CHECK_OK(loom_ws_create_ex(&ws, m, B, T, pf));
    if (dropout) loom_ws_set_dropout(ws, 1, 1234);
    int32_t tok[B * T], tgt[B * T];
    batch(&r, m->cfg.vocab, tok, tgt);
    float *base_copy = loom_alloc(m->n_params * 4);
    memcpy(base_copy, m->params, m->n_params * 4);
    float l0;
    CHECK_OK(loom_forward_ex(m, m->params, ws, pf, vec, tok, tgt, B, T, &l0));
    CHECK_OK(loom_backward_ex(m, m->params, ws, pf, vec, g));
    loss_ctx c = {m, ws, pf, tok, tgt};
    double worst_g = 0, worst_r = 0;
    const char *worst_name = "";
    for (int k = 0; k < loom_tset_count(ts); k++) {
        const loom_tset_entry *e = loom_tset_entry_at(ts, k);
        size_t n = e->numel;
        if (e->tensor >= 0 && m->tensors[e->tensor].kind == LOOM_T_POS) n = (size_t)T * m->cfg.dim; /* rows >= T: no gradient */
        double gn = 0;
        for (size_t j = 0; j < n; j++) gn += (double)g[e->offset + j] * g[e->offset + j];
        CHECK(gn > 0 || n == 0, "%s: %s gets a gradient", label, e->name);
        if (elems) {
            size_t at;
            double err = test_grad_check_elems(loss_of, &c, vec, e->offset, n, g, FD_STEP_ELEM, &at);
            if (err > worst_g) worst_g = err, worst_name = e->name;
            CHECK(err < FD_TOL_ELEM, "%s: %s[%zu]: gradient %.6g disagrees with its central difference (error %.3g of the largest)",
                  label, e->name, at, g[e->offset + at], err);
            continue;
        }
        double eg, er;
        test_grad_check(loss_of, &c, vec, e->offset, n, g, FD_DIRS, 500 + (uint64_t)k, FD_STEP, &eg, &er);
        if (fmax(eg / FD_TOL_GRAD, er / FD_TOL_RAND) > fmax(worst_g / FD_TOL_GRAD, worst_r / FD_TOL_RAND)) worst_name = e->name;
        worst_g = fmax(worst_g, eg);
        worst_r = fmax(worst_r, er);
        CHECK(eg < FD_TOL_GRAD && er < FD_TOL_RAND,
              "%s: %s: gradient disagrees with central differences: relative error %.3g along the gradient, %.3g along random directions",
              label, e->name, eg, er);
    }
    CHECK(memcmp(base_copy, m->params, m->n_params * 4) == 0, "%s: the base is not written", label);
    if (elems)
        printf("%s: %zu trainable values one by one, worst error %.2e of the entry's largest gradient (%s)\n", label, dim,
               worst_g, worst_name);
    else
        printf("%s: %zu trainable values, worst relative finite-difference error %.2e along the gradient, %.2e along random "
               "directions (%s)\n", label, dim, worst_g, worst_r, worst_name);
    loom_free(base_copy);
    loom_free(vec);
    loom_free(g);
    loom_ws_free(ws);
    loom_tset_free(ts);
}

static void fd_all(void) {
    for (int micro = 0; micro <= 1; micro++)
    for (int llama = 0; llama <= 1; llama++) {
        loom_model *m = tiny_ex(llama, micro, 5);
        if (!m) return;
        const char *arch = micro ? (llama ? "llama micro" : "gpt2 micro") : (llama ? "llama" : "gpt2");
        char label[64];
        loom_peft_config pc;
        loom_peft_defaults(&pc, LOOM_PEFT_LORA);
        pc.lora_r = 3;
        pc.lora_alpha = 6;
        snprintf(pc.target_modules, sizeof pc.target_modules, "%s",
                 llama ? "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj" : "c_attn,c_proj,c_fc");
        snprintf(label, sizeof label, "%s lora (all modules)", arch);
        fd_check(label, m, &pc, 0, micro);
        pc.lora_dropout = 0.3f;
        pc.rslora = 1;
        snprintf(label, sizeof label, "%s lora dropout rslora", arch);
        fd_check(label, m, &pc, 1, micro);
        loom_peft_defaults(&pc, LOOM_PEFT_PREFIX);
        pc.prefix_len = 3;
        snprintf(label, sizeof label, "%s prefix", arch);
        fd_check(label, m, &pc, 0, micro);
        loom_peft_defaults(&pc, LOOM_PEFT_PROMPT);
        pc.prompt_len = 4;
        snprintf(label, sizeof label, "%s prompt", arch);
        fd_check(label, m, &pc, 0, micro);
        loom_peft_defaults(&pc, LOOM_PEFT_ADAPTER);
        pc.adapter_dim = 5;
        snprintf(label, sizeof label, "%s adapter", arch);
        fd_check(label, m, &pc, 0, micro);
        loom_peft_defaults(&pc, LOOM_PEFT_BITFIT);
        pc.bitfit_norms = 1;
        snprintf(label, sizeof label, "%s bitfit+norms", arch);
        fd_check(label, m, &pc, 0, micro);
        loom_peft_defaults(&pc, LOOM_PEFT_FULL);
        snprintf(label, sizeof label, "%s full", arch);
        fd_check(label, m, &pc, 0, micro);
        loom_model_free(m);
    }
    /* Qwen2-style q/k/v biases under BitFit (adjacent bias tensors train together) */
    loom_config cfg;
    loom_config_named(&cfg, "llama-tiny");
    cfg.vocab = 29;
    cfg.qkv_bias = 1;
    loom_model *m;
    CHECK_OK(loom_model_create(&m, &cfg, 8));
    loom_rng r;
    loom_rng_init(&r, 8, 1);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.05f * (float)loom_rng_normal(&r);
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_BITFIT);
    fd_check("llama qkv-bias bitfit", m, &pc, 0, 0);
    /* LoRA on an int8 base: the gradient is that of the dequantized model */
    CHECK_OK(loom_model_quantize(m, LOOM_Q_INT8));
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 2;
    snprintf(pc.target_modules, sizeof pc.target_modules, "q_proj,v_proj,down_proj");
    fd_check("llama lora on int8 base", m, &pc, 0, 0);
    loom_model_free(m);
}

/* FULL and BITFIT gradients equal loom_backward's on the same tensors (an independent path). */
static void same_as_plain_backward(void) {
    loom_model *m = tiny(0, 21);
    if (!m) return;
    int32_t tok[B * T], tgt[B * T];
    loom_rng r;
    loom_rng_init(&r, 4, 4);
    batch(&r, m->cfg.vocab, tok, tgt);
    loom_ws *ws0;
    CHECK_OK(loom_ws_create(&ws0, m, B, T));
    float *g0 = loom_calloc(m->n_params, 4), l0, l1;
    CHECK_OK(loom_forward(m, m->params, ws0, tok, tgt, B, T, &l0));
    CHECK_OK(loom_backward(m, m->params, ws0, g0, NULL));
    for (int meth = 0; meth < 2; meth++) {
        loom_peft_config pc;
        loom_peft_defaults(&pc, meth ? LOOM_PEFT_BITFIT : LOOM_PEFT_FULL);
        loom_tset *ts;
        CHECK_OK(loom_tset_create(&ts, m, &pc, 1));
        loom_ws *ws;
        CHECK_OK(loom_ws_create_ex(&ws, m, B, T, loom_tset_plan(ts)));
        float *g = loom_calloc(loom_tset_dim(ts), 4);
        CHECK_OK(loom_forward_ex(m, m->params, ws, loom_tset_plan(ts), loom_tset_data(ts), tok, tgt, B, T, &l1));
        CHECK(l0 == l1, "%s: same loss %g vs %g", pc.method ? "bitfit" : "full", l0, l1);
        CHECK_OK(loom_backward_ex(m, m->params, ws, loom_tset_plan(ts), loom_tset_data(ts), g));
        double md = 0, mg = 0;
        for (int k = 0; k < loom_tset_count(ts); k++) {
            const loom_tset_entry *e = loom_tset_entry_at(ts, k);
            const float *ref = g0 + m->tensors[e->tensor].offset;
            for (size_t j = 0; j < e->numel; j++) {
                md = fmax(md, fabs(g[e->offset + j] - ref[j]));
                mg = fmax(mg, fabs(ref[j]));
            }
        }
        CHECK(md <= 1e-6 * mg, "%s gradient equals loom_backward's: max diff %g (max %g)", meth ? "bitfit" : "full", md, mg);
        loom_free(g);
        loom_ws_free(ws);
        loom_tset_free(ts);
    }
    loom_free(g0);
    loom_ws_free(ws0);
    loom_model_free(m);
}

/* LoRA merge-then-forward equals the unmerged forward; unmerge restores the base. */
static void merge_unmerge(void) {
    for (int llama = 0; llama <= 1; llama++) {
        loom_model *m = tiny(llama, 31);
        if (!m) return;
        loom_peft_config pc;
        loom_peft_defaults(&pc, LOOM_PEFT_LORA);
        pc.lora_r = 4;
        snprintf(pc.target_modules, sizeof pc.target_modules, "%s", llama ? "k_proj,o_proj,up_proj,down_proj" : "c_attn,c_proj,c_fc");
        loom_tset *ts;
        CHECK_OK(loom_tset_create(&ts, m, &pc, 2));
        float *vec = loom_tset_data(ts);
        loom_rng r;
        loom_rng_init(&r, 2, 2);
        for (size_t i = 0; i < loom_tset_dim(ts); i++) vec[i] += 0.2f * (float)loom_rng_normal(&r);
        int32_t tok[B * T], tgt[B * T];
        batch(&r, m->cfg.vocab, tok, tgt);
        loom_ws *ws, *ws0;
        CHECK_OK(loom_ws_create_ex(&ws, m, B, T, loom_tset_plan(ts)));
        CHECK_OK(loom_ws_create(&ws0, m, B, T));
        float l1, l2;
        CHECK_OK(loom_forward_ex(m, m->params, ws, loom_tset_plan(ts), vec, tok, tgt, B, T, &l1));
        float *merged = loom_alloc(m->n_params * 4);
        memcpy(merged, m->params, m->n_params * 4);
        CHECK_OK(loom_tset_merge(ts, vec, merged));
        CHECK_OK(loom_forward(m, merged, ws0, tok, tgt, B, T, &l2));
        const float *a = loom_ws_logits(ws), *b = loom_ws_logits(ws0);
        double md = 0, moved = 0;
        for (size_t j = 0; j < (size_t)B * T * m->cfg.vocab; j++) md = fmax(md, fabs(a[j] - b[j]));
        for (size_t j = 0; j < m->n_params; j++) moved = fmax(moved, fabs(merged[j] - m->params[j]));
        CHECK(md <= 1e-5, "%s: merged forward differs from unmerged by %g", llama ? "llama" : "gpt2", md);
        CHECK(moved > 1e-3, "merging changed the weights (%g)", moved);
        CHECK_OK(loom_tset_unmerge(ts, vec, merged));
        double back = 0;
        for (size_t j = 0; j < m->n_params; j++) back = fmax(back, fabs(merged[j] - m->params[j]));
        CHECK(back <= 1e-6, "unmerge restores the base (max diff %g)", back);
        loom_free(merged);
        loom_ws_free(ws);
        loom_ws_free(ws0);
        loom_tset_free(ts);
        loom_model_free(m);
    }
}

/* Save/load in loom's and PEFT's layout, for every method; then bad adapters are refused by name. */
static void io_roundtrip(void) {
    loom_model *m = tiny(0, 41), *ml = tiny(1, 41);
    if (!m || !ml) return;
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    loom_peft_method meths[] = {LOOM_PEFT_LORA, LOOM_PEFT_PREFIX, LOOM_PEFT_PROMPT, LOOM_PEFT_ADAPTER, LOOM_PEFT_BITFIT};
    for (int i = 0; i < 5; i++) {
        loom_peft_config pc;
        loom_peft_defaults(&pc, meths[i]);
        pc.lora_r = 4;
        pc.prefix_len = 2;
        pc.prompt_len = 3;
        pc.adapter_dim = 6;
        snprintf(pc.target_modules, sizeof pc.target_modules, "attn.c_attn,mlp.c_proj");
        loom_tset *ts, *back = NULL;
        CHECK_OK(loom_tset_create(&ts, m, &pc, 9));
        float *vec = loom_tset_data(ts);
        for (size_t j = 0; j < loom_tset_dim(ts); j++) vec[j] += 0.001f * (float)j;
        CHECK_OK(loom_tset_save_peft(ts, vec, dir, "tiny-base"));
        CHECK_OK(loom_tset_load_peft(&back, m, dir));
        if (back) {
            CHECK(loom_tset_dim(back) == loom_tset_dim(ts) && loom_tset_config(back)->method == pc.method,
                  "%s: same set back", loom_peft_method_name(pc.method));
            CHECK(!memcmp(loom_tset_data(back), vec, loom_tset_dim(ts) * 4), "%s: same values back",
                  loom_peft_method_name(pc.method));
        }
        loom_tset_free(back);
        snprintf(path, sizeof path, "%s/plain.safetensors", dir);
        float *v2 = loom_calloc(loom_tset_dim(ts), 4);
        CHECK_OK(loom_tset_save(ts, vec, path));
        CHECK_OK(loom_tset_load(ts, v2, path));
        CHECK(!memcmp(v2, vec, loom_tset_dim(ts) * 4), "tset_save/load round trip");
        loom_free(v2);
        unlink(path);
        /* a GPT-2 adapter on a Llama model: refused */
        back = NULL;
        int rc = loom_tset_load_peft(&back, ml, dir);
        CHECK(rc != LOOM_OK && back == NULL, "%s adapter for GPT-2 refused on Llama", loom_peft_method_name(pc.method));
        printf("  %s on the wrong architecture: %s\n", loom_peft_method_name(pc.method), loom_errmsg());
        loom_tset_free(ts);
    }
    /* LoRA adapter: the model lacks a layer it names (a 3-layer adapter on a 2-layer model) */
    loom_config cfg = m->cfg;
    cfg.n_layer = 3;
    loom_model *m3;
    CHECK_OK(loom_model_create(&m3, &cfg, 1));
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 2;
    loom_tset *ts, *back = NULL;
    CHECK_OK(loom_tset_create(&ts, m3, &pc, 1));
    CHECK_OK(loom_tset_save_peft(ts, loom_tset_data(ts), dir, NULL));
    int rc = loom_tset_load_peft(&back, m, dir);
    CHECK(rc != LOOM_OK && strstr(loom_errmsg(), "transformer.h.2.attn.c_attn"), "extra layer named: %s", loom_errmsg());
    loom_tset_free(ts);
    /* ...a different width: the shape mismatch is named */
    cfg = m->cfg;
    cfg.dim = 32;
    cfg.n_head = 2;
    cfg.n_kv_head = 2;
    loom_model *mw;
    CHECK_OK(loom_model_create(&mw, &cfg, 1));
    CHECK_OK(loom_tset_create(&ts, mw, &pc, 1));
    CHECK_OK(loom_tset_save_peft(ts, loom_tset_data(ts), dir, NULL));
    rc = loom_tset_load_peft(&back, m, dir);
    CHECK(rc != LOOM_OK && strstr(loom_errmsg(), "shape") && strstr(loom_errmsg(), "h.0.attn.c_attn.lora_A"),
          "shape mismatch named: %s", loom_errmsg());
    loom_tset_free(ts);
    /* ...a module missing from the file */
    CHECK_OK(loom_tset_create(&ts, m, &pc, 1));
    loom_st_writer *w;
    loom_st_writer_create(&w);
    for (int k = 1; k < loom_tset_count(ts); k++) {
        const loom_tset_entry *e = loom_tset_entry_at(ts, k);
        loom_st_writer_add(w, e->name, LOOM_DT_F32, e->ndim, e->shape, loom_tset_data(ts) + e->offset);
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK_OK(loom_st_writer_write(w, path));
    loom_st_writer_free(w);
    rc = loom_tset_load_peft(&back, m, dir);
    CHECK(rc != LOOM_OK && strstr(loom_errmsg(), loom_tset_entry_at(ts, 0)->name), "missing tensor named: %s", loom_errmsg());
    loom_tset_free(ts);
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
    loom_model_free(m3);
    loom_model_free(mw);
    loom_model_free(m);
    loom_model_free(ml);
}

static void bad_configs(void) {
    loom_model *m = tiny(0, 51);
    if (!m) return;
    loom_peft_config pc;
    loom_tset *ts = NULL;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    snprintf(pc.target_modules, sizeof pc.target_modules, "c_attn,q_proj");
    CHECK(loom_tset_create(&ts, m, &pc, 1) == LOOM_EINVAL && ts == NULL, "unknown target refused");
    CHECK(strstr(loom_errmsg(), "q_proj") && strstr(loom_errmsg(), "c_fc") && strstr(loom_errmsg(), "attn.c_proj"),
          "message names the target and lists the modules: %s", loom_errmsg());
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 0;
    CHECK(loom_tset_create(&ts, m, &pc, 1) == LOOM_ERANGE, "rank 0 refused");
    pc.lora_r = 65;
    CHECK(loom_tset_create(&ts, m, &pc, 1) == LOOM_ERANGE, "rank above the module's side refused: %s", loom_errmsg());
    pc.lora_r = 4;
    pc.lora_alpha = -1;
    CHECK(loom_tset_create(&ts, m, &pc, 1) == LOOM_ERANGE, "negative alpha refused");
    pc.lora_alpha = NAN;
    CHECK(loom_tset_create(&ts, m, &pc, 1) == LOOM_ERANGE, "NaN alpha refused");
    pc.lora_alpha = 8;
    pc.lora_dropout = 1;
    CHECK(loom_tset_create(&ts, m, &pc, 1) == LOOM_ERANGE, "dropout 1 refused");
    loom_peft_defaults(&pc, LOOM_PEFT_ADAPTER);
    pc.adapter_dim = 0;
    CHECK(loom_tset_create(&ts, m, &pc, 1) == LOOM_ERANGE, "adapter width 0 refused");
    loom_peft_defaults(&pc, LOOM_PEFT_PROMPT);
    pc.prompt_len = m->cfg.max_seq;
    CHECK(loom_tset_create(&ts, m, &pc, 1) == LOOM_ERANGE, "prompt as long as the context refused");
    /* a prompt that leaves no room for the batch's sequence is refused at workspace creation */
    pc.prompt_len = 30;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 1));
    loom_ws *ws = NULL;
    CHECK(loom_ws_create_ex(&ws, m, B, T, loom_tset_plan(ts)) == LOOM_EINVAL, "prompt + T > positions refused");
    loom_tset_free(ts);
    /* PEFT suffix matching: "c_proj" selects both projections, "attn.c_proj" only one */
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    snprintf(pc.target_modules, sizeof pc.target_modules, "c_proj");
    CHECK_OK(loom_tset_create(&ts, m, &pc, 1));
    CHECK(ts && loom_tset_count(ts) == 2 * 2 * m->cfg.n_layer, "c_proj: attn and mlp modules");
    loom_tset_free(ts);
    snprintf(pc.target_modules, sizeof pc.target_modules, "attn.c_proj");
    CHECK_OK(loom_tset_create(&ts, m, &pc, 1));
    CHECK(ts && loom_tset_count(ts) == 2 * m->cfg.n_layer && loom_tset_find(ts, "base_model.model.transformer.h.1.attn.c_proj.lora_B.weight"),
          "attn.c_proj: one module a layer");
    loom_tset_free(ts);
    /* LoRA init: B zero (the set starts as the identity), A within +-1/sqrt(in) */
    snprintf(pc.target_modules, sizeof pc.target_modules, "c_fc");
    CHECK_OK(loom_tset_create(&ts, m, &pc, 1));
    const loom_tset_entry *a = loom_tset_find(ts, "base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight");
    const loom_tset_entry *b = loom_tset_find(ts, "base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight");
    CHECK(a && b, "c_fc entries");
    if (a && b) {
        double mx = 0, bz = 0;
        for (size_t j = 0; j < a->numel; j++) mx = fmax(mx, fabs(loom_tset_data(ts)[a->offset + j]));
        for (size_t j = 0; j < b->numel; j++) bz = fmax(bz, fabs(loom_tset_data(ts)[b->offset + j]));
        CHECK(mx <= 1.0 / sqrt(m->cfg.dim) && mx > 0.5 / sqrt(m->cfg.dim), "A bound %g", mx);
        CHECK(bz == 0, "B starts at zero");
        CHECK(a->shape[0] == 8 && a->shape[1] == m->cfg.dim && b->shape[0] == m->cfg.hidden && b->shape[1] == 8,
              "A [r, in], B [out, r]");
    }
    loom_tset_free(ts);
    /* full fine-tuning needs a float base; BitFit on a bias-free Llama needs norms */
    loom_model *ml = tiny(1, 3);
    loom_peft_defaults(&pc, LOOM_PEFT_BITFIT);
    CHECK(loom_tset_create(&ts, ml, &pc, 1) == LOOM_EINVAL, "BitFit without biases refused: %s", loom_errmsg());
    CHECK_OK(loom_model_quantize(ml, LOOM_Q_BF16));
    loom_peft_defaults(&pc, LOOM_PEFT_FULL);
    CHECK(loom_tset_create(&ts, ml, &pc, 1) == LOOM_EUNSUPPORTED, "full on a bf16 base refused");
    loom_model_free(ml);
    loom_model_free(m);
}

/* Trainer: a LoRA step moves only the vector, the loss falls over steps, reset_optimizer restarts. */
static void trainer_peft(void) {
    loom_model *m = tiny(0, 61);
    if (!m) return;
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 4;
    loom_tset *ts;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 1));
    float *vec = loom_alloc(loom_tset_dim(ts) * 4);
    memcpy(vec, loom_tset_data(ts), loom_tset_dim(ts) * 4);
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.B = B;
    tc.T = T;
    tc.opt.lr = 1e-2f;
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create_peft(&tr, m, m->params, ts, vec, &tc));
    CHECK(loom_trainer_dim(tr) == loom_tset_dim(ts) && loom_trainer_vector(tr) == vec, "trainer exposes the vector");
    float *base = loom_alloc(m->n_params * 4);
    memcpy(base, m->params, m->n_params * 4);
    int32_t tok[B * T], tgt[B * T];
    loom_rng r;
    loom_rng_init(&r, 1, 1);
    batch(&r, m->cfg.vocab, tok, tgt);
    float first = 0, last = 0;
    for (int s = 0; s < 30; s++) {
        CHECK_OK(loom_trainer_step(tr, tok, tgt, &last, NULL));
        if (s == 0) first = last;
    }
    CHECK(last < first - 0.1f, "LoRA training lowers the loss (%g -> %g)", first, last);
    CHECK(!memcmp(base, m->params, m->n_params * 4), "the base is untouched");
    CHECK(loom_trainer_steps(tr) == 30, "30 steps");
    loom_trainer_reset_optimizer(tr);
    CHECK(loom_trainer_steps(tr) == 0, "reset optimizer");
    loom_trainer_free(tr);
    /* legacy trainer: vector = params */
    CHECK_OK(loom_trainer_create(&tr, m, m->params, &tc));
    CHECK(loom_trainer_vector(tr) == m->params && loom_trainer_dim(tr) == m->n_params && !loom_trainer_tset(tr),
          "full trainer exposes params");
    loom_trainer_free(tr);
    loom_free(base);
    loom_free(vec);
    loom_tset_free(ts);
    loom_model_free(m);
}

/* Low-precision bases: close to the float model, and smaller. */
static void quantized_base(void) {
    for (int llama = 0; llama <= 1; llama++) {
        loom_config cfg;
        loom_config_named(&cfg, llama ? "llama-tiny" : "gpt2-tiny");
        loom_model *f, *q[2];
        CHECK_OK(loom_model_create(&f, &cfg, 77));
        CHECK_OK(loom_model_create_quantized(&q[0], &cfg, 77, LOOM_Q_BF16));
        CHECK_OK(loom_model_create(&q[1], &cfg, 77));
        CHECK_OK(loom_model_quantize(q[1], LOOM_Q_INT8));
        int32_t tok[B * T], tgt[B * T];
        loom_rng r;
        loom_rng_init(&r, 3, 3);
        batch(&r, cfg.vocab, tok, tgt);
        loom_ws *ws;
        CHECK_OK(loom_ws_create(&ws, f, B, T));
        float lf;
        CHECK_OK(loom_forward(f, f->params, ws, tok, tgt, B, T, &lf));
        loom_ws_free(ws);
        for (int k = 0; k < 2; k++) {
            CHECK_OK(loom_ws_create(&ws, q[k], B, T));
            float lq;
            CHECK_OK(loom_forward(q[k], q[k]->params, ws, tok, tgt, B, T, &lq));
            CHECK(fabs(lq - lf) < (k ? 2e-2 : 5e-3) && lq != lf, "%s %s base loss %g vs f32 %g", llama ? "llama" : "gpt2",
                  k ? "int8" : "bf16", lq, lf);
            CHECK(loom_model_base_bytes(q[k]) < loom_model_base_bytes(f) * (k ? 0.6 : 0.8), "smaller base");
            /* dequantized weights are within the type's resolution */
            int wi = q[k]->layer_slot[0][LOOM_L_QKV_W];
            const loom_tensor *t = &f->tensors[wi];
            float *dq = loom_alloc(t->numel * 4);
            CHECK_OK(loom_model_weight(q[k], q[k]->params, wi, dq));
            double md = 0, mw = 0;
            for (size_t j = 0; j < t->numel; j++) {
                md = fmax(md, fabs(dq[j] - f->params[t->offset + j]));
                mw = fmax(mw, fabs(f->params[t->offset + j]));
            }
            CHECK(md <= mw * (k ? 1.0 / 254 : 1.0 / 256) * 1.001, "weight error %g of max %g", md, mw);
            loom_free(dq);
            loom_ws_free(ws);
            loom_model_free(q[k]);
        }
        loom_model_free(f);
    }
}

int main(void) {
    /* one thread for the many small forward passes of the finite differences */
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    fd_all();
    omp_set_num_threads(saved);
    same_as_plain_backward();
    merge_unmerge();
    io_roundtrip();
    bad_configs();
    trainer_peft();
    quantized_base();
    return test_summary();
}
