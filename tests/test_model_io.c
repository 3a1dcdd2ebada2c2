/* Model files: save/load round trip (loom's own files load back bit for bit, and their forward pass is
 * identical), BF16/F16 weights, sharded checkpoints, llama2.c checkpoints, and clear errors for
 * malformed directories (missing tensor, wrong shape, bad config.json, truncated .bin). */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/half.h"
#include "loom/model.h"
#include "loom/safetensors.h"
#include "model/model_impl.h"
#include "test.h"

static char dir[256];

static void path(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

static float forward_loss(const loom_model *m, const float *params) {
    loom_ws *ws;
    if (loom_ws_create(&ws, m, 2, 8) != LOOM_OK) return NAN;
    int32_t tok[16], tgt[16];
    for (int i = 0; i < 16; i++) {
        tok[i] = (i * 37 + 11) % m->cfg.vocab;
        tgt[i] = (i * 53 + 5) % m->cfg.vocab;
    }
    float l = NAN;
    loom_forward(m, params, ws, tok, tgt, 2, 8, &l);
    loom_ws_free(ws);
    return l;
}

/* Writes the model's tensors into `file` with dtype dt, optionally skipping one tensor or changing
 * one tensor's shape. */
static int write_tensors(const loom_model *m, const char *file, loom_dtype dt, const char *skip, const char *reshape,
                         int first, int last) {
    loom_st_writer *w;
    loom_st_writer_create(&w);
    int rc = LOOM_OK;
    for (int i = first; i < last && rc == LOOM_OK; i++) {
        const loom_tensor *t = &m->tensors[i];
        if (skip && !strcmp(skip, t->name)) continue;
        int64_t shape[2] = {t->shape[0], t->shape[1]};
        int ndim = t->ndim;
        if (reshape && !strcmp(reshape, t->name)) {
            /* same element count, other shape: [numel] */
            shape[0] = (int64_t)t->numel;
            ndim = 1;
        }
        rc = loom_st_writer_add_f32(w, t->name, dt, ndim, shape, m->params + t->offset);
    }
    if (rc == LOOM_OK) rc = loom_st_writer_write(w, file);
    loom_st_writer_free(w);
    return rc;
}

static void roundtrip(const char *shape) {
    loom_config cfg;
    CHECK_OK(loom_config_named(&cfg, shape));
    cfg.vocab = 97;
    loom_model *m, *m2;
    CHECK_OK(loom_model_create(&m, &cfg, 21));
    CHECK_OK(loom_model_save(m, m->params, dir));
    CHECK_OK(loom_model_load(&m2, dir));
    if (!m2) return;
    CHECK(m2->n_params == m->n_params && memcmp(m2->params, m->params, m->n_params * 4) == 0,
          "%s: saved model loads back bit for bit", shape);
    CHECK(forward_loss(m, m->params) == forward_loss(m2, m2->params), "%s: same forward pass", shape);
    CHECK(m2->cfg.n_kv_head == cfg.n_kv_head && m2->cfg.norm_eps == cfg.norm_eps && m2->cfg.act == cfg.act,
          "%s: config round trip", shape);
    loom_model_free(m2);

    /* BF16 and F16 files: computed in F32 after conversion; loss close to the F32 model's */
    char p[512];
    path(p, sizeof p, "model.safetensors");
    loom_dtype dts[2] = {LOOM_DT_BF16, LOOM_DT_F16};
    for (int k = 0; k < 2; k++) {
        CHECK_OK(write_tensors(m, p, dts[k], NULL, NULL, 0, m->n_tensors));
        CHECK_OK(loom_model_load(&m2, dir));
        if (!m2) continue;
        double md = 0;
        for (size_t i = 0; i < m->n_params; i++) md = fmax(md, fabs(m2->params[i] - m->params[i]) / (fabs(m->params[i]) + 1e-3));
        CHECK(md < (k == 0 ? 8e-3 : 1e-3), "%s %s: relative weight error %g", shape, loom_dtype_name(dts[k]), md);
        CHECK_NEAR(forward_loss(m2, m2->params), forward_loss(m, m->params), 0.05);
        loom_model_free(m2);
    }
    /* sharded: two files and an index */
    char p1[512], p2[512], idx[512];
    path(p1, sizeof p1, "model-00001-of-00002.safetensors");
    path(p2, sizeof p2, "model-00002-of-00002.safetensors");
    path(idx, sizeof idx, "model.safetensors.index.json");
    int half = m->n_tensors / 2;
    CHECK_OK(write_tensors(m, p1, LOOM_DT_F32, NULL, NULL, 0, half));
    CHECK_OK(write_tensors(m, p2, LOOM_DT_F32, NULL, NULL, half, m->n_tensors));
    size_t cap = 1 << 16, n = 0;
    char *js = malloc(cap);
    n += (size_t)snprintf(js + n, cap - n, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < m->n_tensors; i++)
        n += (size_t)snprintf(js + n, cap - n, "%s\"%s\": \"%s\"", i ? ", " : "", m->tensors[i].name,
                              i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors");
    n += (size_t)snprintf(js + n, cap - n, "}}");
    loom_write_file_atomic(idx, js, n);
    free(js);
    unlink(p);
    CHECK_OK(loom_model_load(&m2, dir));
    if (m2) {
        CHECK(memcmp(m2->params, m->params, m->n_params * 4) == 0, "%s: sharded checkpoint loads bit for bit", shape);
        loom_model_free(m2);
    }
    unlink(p1);
    unlink(p2);
    unlink(idx);

    /* malformed: a missing tensor, a wrong shape */
    int vi = 0;
    while (vi < m->n_tensors && !(m->tensors[vi].layer == 0 && m->tensors[vi].ndim == 2)) vi++;
    const char *victim = m->tensors[vi].name; /* a matrix: [numel] is another shape */
    CHECK_OK(write_tensors(m, p, LOOM_DT_F32, victim, NULL, 0, m->n_tensors));
    CHECK(loom_model_load(&m2, dir) == LOOM_ENOTFOUND && strstr(loom_errmsg(), victim), "%s: missing tensor named: %s",
          shape, loom_errmsg());
    CHECK_OK(write_tensors(m, p, LOOM_DT_F32, NULL, victim, 0, m->n_tensors));
    CHECK(loom_model_load(&m2, dir) == LOOM_EFORMAT && strstr(loom_errmsg(), "shape"), "%s: wrong shape named: %s", shape,
          loom_errmsg());
    loom_model_free(m);
}

static void bad_configs(void) {
    char p[512];
    path(p, sizeof p, "config.json");
    const char *cases[][2] = {
        {"{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 5}", "divisible"},
        {"{\"model_type\": \"bert\"}", "not supported"},
        {"{\"model_type\": \"gpt2\", \"activation_function\": \"relu\"}", "activation_function"},
        {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_key_value_heads\": 3}", "key/value"},
        {"[1, 2", "config.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        loom_write_file_atomic(p, cases[i][0], strlen(cases[i][0]));
        loom_model *m = NULL;
        int rc = loom_model_load(&m, dir);
        CHECK(rc != LOOM_OK && m == NULL && strstr(loom_errmsg(), cases[i][1]), "config %zu: %s", i, loom_errmsg());
    }
}

static void llama2c(void) {
    char p[1024];
    loom_model *m;
    CHECK_OK(loom_model_load(&m, test_path(p, sizeof p, "data/stories260K/stories260K.bin")));
    if (!m) return;
    /* the header as documented in its SOURCE.md: 64, 172, 5, 8, 4, 512, 512; shared classifier */
    CHECK(m->cfg.dim == 64 && m->cfg.hidden == 172 && m->cfg.n_layer == 5 && m->cfg.n_head == 8 &&
              m->cfg.n_kv_head == 4 && m->cfg.vocab == 512 && m->cfg.max_seq == 512 && m->cfg.tied,
          "stories260K config");
    /* 264,128 floats in the file, minus the 2 x 2,048 unused RoPE tables */
    CHECK(m->n_params == 264128 - 4096, "stories260K parameters: %zu", m->n_params);
    /* saved as a Hugging Face directory it loads back and computes the same */
    CHECK_OK(loom_model_save(m, m->params, dir));
    loom_model *m2;
    CHECK_OK(loom_model_load(&m2, dir));
    if (m2) {
        CHECK(forward_loss(m, m->params) == forward_loss(m2, m2->params), "stories260K: HF export computes the same");
        loom_model_free(m2);
    }
    /* truncated and padded copies are refused */
    char *data;
    size_t len;
    CHECK_OK(loom_read_file(p, &data, &len));
    char bad[512];
    path(bad, sizeof bad, "bad.bin");
    size_t cuts[] = {0, 10, 28, len / 2, len - 4};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        loom_write_file_atomic(bad, data, cuts[i]);
        loom_model *mb = NULL;
        CHECK(loom_model_load(&mb, bad) == LOOM_EFORMAT && !mb, "truncated at %zu: %s", cuts[i], loom_errmsg());
    }
    /* a header with absurd dimensions */
    int32_t hdr[7] = {64, 172, 5, 7, 4, 512, 512}; /* 7 heads do not divide 64 */
    memcpy(data, hdr, sizeof hdr);
    loom_write_file_atomic(bad, data, len);
    loom_model *mb = NULL;
    CHECK(loom_model_load(&mb, bad) != LOOM_OK && strstr(loom_errmsg(), "header"), "bad header: %s", loom_errmsg());
    free(data);
    unlink(bad);
    loom_model_free(m);
}

int main(void) {
    test_tmpdir(dir, sizeof dir);
    roundtrip("gpt2-tiny");
    roundtrip("llama-tiny");
    bad_configs();
    llama2c();
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
    return test_summary();
}
