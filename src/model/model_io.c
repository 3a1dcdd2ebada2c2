/* Model files: Hugging Face directories (config.json + safetensors, sharded or not) and llama2.c
 * checkpoints in; Hugging Face directories out. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/safetensors.h"
#include "model/model_impl.h"

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Names under which a tensor may appear: HF GPT2LMHeadModel files use "transformer.", GPT2Model files
 * (e.g. the hub's openai-community/gpt2) have no prefix. */
static const loom_st_tensor *find_tensor(const loom_st_set *s, const char *name) {
    const loom_st_tensor *t = loom_st_set_find(s, name);
    if (!t && !strncmp(name, "transformer.", 12)) t = loom_st_set_find(s, name + 12);
    return t;
}

/* Weights must be finite: a NaN or Inf in a file would otherwise run through every forward pass
 * and show up only as "loss nan" or a stream of <unk>. */
static int check_finite(const float *x, size_t n, const char *file, const char *tensor) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return loom_error(LOOM_EFORMAT, "%s: tensor %s holds a non-finite value (%g at element %zu)", file, tensor,
                              (double)x[i], i);
    return LOOM_OK;
}

/* The file of a set that holds tensor t (for messages about shards). */
static const char *file_of(const loom_st_set *s, const loom_st_tensor *t, const char *fallback) {
    for (size_t i = 0; i < loom_st_set_file_count(s); i++) {
        const loom_st_file *f = loom_st_set_file(s, i);
        if (loom_st_find(f, t->name) == t) return loom_st_path(f);
    }
    return fallback;
}

static int load_hf(loom_model **out, const char *dir, const char *weights) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    loom_config cfg;
    int rc = loom_config_load(&cfg, path);
    if (rc != LOOM_OK) return rc;
    loom_st_set *set;
    if ((rc = loom_st_set_open(&set, weights)) != LOOM_OK) return rc;
    /* A GPT-2 file may carry an untied lm_head; a Llama file may lack one when tied. */
    if (cfg.arch == LOOM_ARCH_LLAMA && !cfg.tied && !loom_st_set_find(set, "lm_head.weight")) {
        loom_log(LOOM_INFO, "%s: no lm_head.weight; tying it to the embeddings", weights);
        cfg.tied = 1;
    }
    loom_model *m;
    if ((rc = lm_model_alloc(&m, &cfg)) != LOOM_OK) {
        loom_st_set_close(set);
        return rc;
    }
    for (int i = 0; i < m->n_tensors && rc == LOOM_OK; i++) {
        const loom_tensor *t = &m->tensors[i];
        const loom_st_tensor *st = find_tensor(set, t->name);
        if (!st) {
            rc = loom_error(LOOM_ENOTFOUND, "%s: tensor %s is missing (config.json describes a %s model with %d layers)",
                            weights, t->name, cfg.arch == LOOM_ARCH_GPT2 ? "GPT-2" : "Llama", cfg.n_layer);
            break;
        }
        int same = st->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = st->shape[d] == t->shape[d];
        if (!same) {
            char have[64] = "", want[64] = "";
            for (int d = 0; d < st->ndim && d < 4; d++)
                snprintf(have + strlen(have), sizeof have - strlen(have), "%s%lld", d ? "," : "", (long long)st->shape[d]);
            for (int d = 0; d < t->ndim; d++)
                snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "," : "", (long long)t->shape[d]);
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %s has shape [%s], config.json implies [%s]", weights, t->name, have, want);
            break;
        }
        if ((rc = loom_st_to_f32(st, m->params + t->offset, t->numel)) != LOOM_OK)
            loom_error_context(rc, "%s: tensor %s", weights, t->name);
        else
            rc = check_finite(m->params + t->offset, t->numel, file_of(set, st, weights), st->name);
    }
    loom_st_set_close(set);
    if (rc != LOOM_OK) {
        loom_model_free(m);
        return rc;
    }
    *out = m;
    return LOOM_OK;
}

/* llama2.c legacy checkpoint: 7 int32 header, then float32 weights in Meta's layout. */
static int load_llama2c(loom_model **out, const char *path) {
    char *data;
    size_t len;
    int rc = loom_read_file(path, &data, &len);
    if (rc != LOOM_OK) return rc;
    if (len < 28) {
        free(data);
        return loom_error(LOOM_EFORMAT, "%s: %zu bytes is too short for a llama2.c checkpoint header", path, len);
    }
    int32_t h[7];
    memcpy(h, data, sizeof h);
    /* a negative vocab_size means an unshared classifier; INT32_MIN has no negation (and is invalid) */
    int dim = h[0], hidden = h[1], L = h[2], NH = h[3], NKV = h[4], maxT = h[6];
    int V = h[5] == INT32_MIN ? 0 : h[5] < 0 ? -h[5] : h[5];
    int shared = h[5] > 0;
    loom_config cfg = {0};
    cfg.arch = LOOM_ARCH_LLAMA;
    cfg.dim = dim;
    cfg.hidden = hidden;
    cfg.n_layer = L;
    cfg.n_head = NH;
    cfg.n_kv_head = NKV;
    cfg.vocab = V;
    cfg.max_seq = maxT;
    cfg.norm_eps = 1e-5f;
    cfg.rope_theta = 10000.0f;
    cfg.act = LOOM_ACT_SILU;
    cfg.tied = shared;
    cfg.bos_id = 1;
    cfg.eos_id = 2;
    if ((rc = loom_config_validate(&cfg)) != LOOM_OK) {
        free(data);
        return loom_error_context(rc, "%s: header (dim %d, hidden %d, layers %d, heads %d, kv heads %d, vocab %d, seq %d)",
                                  path, dim, hidden, L, NH, NKV, h[5], maxT);
    }
    size_t HS = (size_t)dim / NH, KV = (size_t)NKV * HS;
    size_t need = (size_t)V * dim + (size_t)L * (2 * dim + (size_t)dim * dim * 2 + 2 * KV * dim + 3 * (size_t)hidden * dim) +
                  dim + (size_t)maxT * HS + (shared ? 0 : (size_t)V * dim);
    if (len != 28 + need * 4) {
        free(data);
        return loom_error(LOOM_EFORMAT, "%s: size %zu bytes does not match the header (expected %zu)", path, len, 28 + need * 4);
    }
    loom_model *m;
    if ((rc = lm_model_alloc(&m, &cfg)) != LOOM_OK) {
        free(data);
        return rc;
    }
    const float *src = (const float *)(void *)(data + 28);
#define SRC(n) (src += (n), src - (n))
    const float *emb = SRC((size_t)V * dim);
    const float *rms_att = SRC((size_t)L * dim);
    const float *wq = SRC((size_t)L * dim * dim);
    const float *wk = SRC((size_t)L * KV * dim);
    const float *wv = SRC((size_t)L * KV * dim);
    const float *wo = SRC((size_t)L * dim * dim);
    const float *rms_ffn = SRC((size_t)L * dim);
    const float *w1 = SRC((size_t)L * hidden * dim);
    const float *w2 = SRC((size_t)L * dim * hidden);
    const float *w3 = SRC((size_t)L * hidden * dim);
    const float *rms_f = SRC((size_t)dim);
    (void)SRC((size_t)maxT * HS); /* freq_cis_real, freq_cis_imag: recomputed */
    const float *wcls = shared ? NULL : SRC((size_t)V * dim);
#undef SRC
    float *P = m->params;
#define DST(i) (P + m->tensors[i].offset)
    memcpy(DST(m->t_embed), emb, (size_t)V * dim * 4);
    for (int l = 0; l < L; l++) {
        int *s = m->layer_slot[l];
        memcpy(DST(s[LOOM_L_NORM1_W]), rms_att + (size_t)l * dim, (size_t)dim * 4);
        /* Meta's interleaved RoPE pairs (2j, 2j+1) -> HF rotate-half pairs (j, j+HS/2): within each head,
         * row j*2+i moves to row i*HS/2+j. */
        const float *srcs[2] = {wq + (size_t)l * dim * dim, wk + (size_t)l * KV * dim};
        float *dsts[2] = {DST(s[LOOM_L_QKV_W]), DST(s[LOOM_L_K_W])};
        int heads[2] = {NH, NKV};
        for (int w = 0; w < 2; w++)
            for (int hh = 0; hh < heads[w]; hh++)
                for (size_t j = 0; j < HS / 2; j++)
                    for (int i = 0; i < 2; i++)
                        memcpy(dsts[w] + ((size_t)hh * HS + i * (HS / 2) + j) * dim,
                               srcs[w] + ((size_t)hh * HS + j * 2 + i) * dim, (size_t)dim * 4);
        memcpy(DST(s[LOOM_L_V_W]), wv + (size_t)l * KV * dim, KV * dim * 4);
        memcpy(DST(s[LOOM_L_O_W]), wo + (size_t)l * dim * dim, (size_t)dim * dim * 4);
        memcpy(DST(s[LOOM_L_NORM2_W]), rms_ffn + (size_t)l * dim, (size_t)dim * 4);
        memcpy(DST(s[LOOM_L_GATE_W]), w1 + (size_t)l * hidden * dim, (size_t)hidden * dim * 4);
        memcpy(DST(s[LOOM_L_DOWN_W]), w2 + (size_t)l * dim * hidden, (size_t)dim * hidden * 4);
        memcpy(DST(s[LOOM_L_UP_W]), w3 + (size_t)l * hidden * dim, (size_t)hidden * dim * 4);
    }
    memcpy(DST(m->t_normf_w), rms_f, (size_t)dim * 4);
    if (wcls) memcpy(DST(m->t_head), wcls, (size_t)V * dim * 4);
#undef DST
    free(data);
    for (int i = 0; i < m->n_tensors && rc == LOOM_OK; i++)
        rc = check_finite(m->params + m->tensors[i].offset, m->tensors[i].numel, path, m->tensors[i].name);
    if (rc != LOOM_OK) {
        loom_model_free(m);
        return rc;
    }
    *out = m;
    return LOOM_OK;
}

int loom_model_load(loom_model **out, const char *path) {
    *out = NULL;
    int rc;
    if (is_dir(path)) {
        rc = load_hf(out, path, path);
    } else if (ends_with(path, ".safetensors") || ends_with(path, ".index.json")) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
        rc = load_hf(out, dir, path);
    } else {
        FILE *f = fopen(path, "rb");
        if (!f) return loom_error(errno == ENOENT ? LOOM_ENOTFOUND : LOOM_EIO, "cannot open model %s: %s", path, strerror(errno));
        char magic[4] = {0};
        size_t got = fread(magic, 1, 4, f);
        fclose(f);
        if (ends_with(path, ".gguf") || (got == 4 && !memcmp(magic, "GGUF", 4))) rc = loom_model_load_gguf(out, path);
        else rc = load_llama2c(out, path);
    }
    return rc;
}

int loom_model_save(const loom_model *m, const float *params, const char *dir) {
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return loom_error(LOOM_EIO, "cannot create %s: %s", dir, strerror(errno));
    char path[4096];
    char *cfg = loom_config_to_json(&m->cfg);
    if (!cfg) return loom_error(LOOM_ENOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t n = strlen(cfg);
    cfg[n] = 0;
    int rc = loom_write_file_atomic(path, cfg, n);
    free(cfg);
    if (rc != LOOM_OK) return rc;
    loom_st_writer *w;
    if ((rc = loom_st_writer_create(&w)) != LOOM_OK) return rc;
    /* each tensor through the weight accessor: a bf16 base is written as it is held, an int8 one
     * dequantized (into copies that live until the write) */
    float **deq = calloc((size_t)m->n_tensors, sizeof *deq);
    if (!deq) rc = loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < m->n_tensors && rc == LOOM_OK; i++) {
        const loom_tensor *t = &m->tensors[i];
        lm_wref r = lm_weight_ref(m, params, i);
        if (r.type == LOOM_Q_F32) {
            rc = loom_st_writer_add(w, t->name, LOOM_DT_F32, t->ndim, t->shape, r.f);
        } else if (r.type == LOOM_Q_BF16) {
            rc = loom_st_writer_add(w, t->name, LOOM_DT_BF16, t->ndim, t->shape, r.q.data);
        } else if (!(deq[i] = loom_alloc(t->numel * sizeof(float)))) {
            rc = loom_error(LOOM_ENOMEM, "out of memory saving %s", t->name);
        } else {
            loom_model_weight(m, params, i, deq[i]);
            rc = loom_st_writer_add(w, t->name, LOOM_DT_F32, t->ndim, t->shape, deq[i]);
        }
    }
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "format", "pt");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (rc == LOOM_OK) rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    for (int i = 0; deq && i < m->n_tensors; i++) loom_free(deq[i]);
    free(deq);
    return rc;
}
