#include "cli/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/sample.h"

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int cli_load_or_create(loom_model **m, const char *spec, unsigned long long seed, int *created) {
    *created = 0;
    if (!spec) return loom_error(LOOM_EINVAL, "--model is required (a model directory, a llama2.c .bin, a config.json or a shape: gpt2-124m, gpt2-tiny, llama-110m, llama-tiny, tiny)");
    char cfgpath[4096];
    snprintf(cfgpath, sizeof cfgpath, "%s/model.safetensors", spec);
    int is_model = (is_dir(spec) && (exists(cfgpath) || (snprintf(cfgpath, sizeof cfgpath, "%s/model.safetensors.index.json", spec), exists(cfgpath)))) ||
                   (exists(spec) && !is_dir(spec) && !strstr(spec, ".json"));
    if (is_model) return loom_model_load(m, spec);
    loom_config cfg;
    int rc = loom_config_named(&cfg, spec);
    if (rc != LOOM_OK) return loom_error_context(rc, "--model %s is neither a model nor a known shape", spec);
    *created = 1;
    return loom_model_create(m, &cfg, seed);
}

int cli_tokenizer(loom_tokenizer **tok, const char *path, const char *model_path, const loom_model *m) {
    int rc;
    if (path) {
        rc = loom_tokenizer_load(tok, path);
    } else if (model_path && is_dir(model_path) &&
               (rc = loom_tokenizer_load(tok, model_path)) == LOOM_OK) {
        /* tokenizer files beside the model */
    } else if (m->cfg.vocab == 259) {
        rc = loom_tokenizer_byte(tok);
    } else {
        return loom_error(LOOM_EINVAL, "the model's vocabulary has %d tokens: give its tokenizer with --tokenizer", m->cfg.vocab);
    }
    if (rc != LOOM_OK) return rc;
    if (loom_tokenizer_vocab_size(*tok) > m->cfg.vocab) {
        int v = loom_tokenizer_vocab_size(*tok);
        loom_tokenizer_free(*tok);
        *tok = NULL;
        return loom_error(LOOM_EINVAL, "the tokenizer has %d tokens but the model only %d", v, m->cfg.vocab);
    }
    return LOOM_OK;
}

int cli_generate(const loom_model *m, const float *params, const loom_tokenizer *tok, const char *prompt, int steps,
                 float temperature, int top_k, float top_p, unsigned long long seed, double *seconds) {
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = loom_tokenizer_encode(tok, prompt, strlen(prompt), LOOM_TOK_BOS, &ids, &n);
    if (rc != LOOM_OK) return rc;
    if (n == 0) { /* no BOS in this tokenizer and an empty prompt: start from token 0 */
        free(ids);
        ids = calloc(1, sizeof *ids);
        n = 1;
    }
    if (steps > m->cfg.max_seq) steps = m->cfg.max_seq;
    if ((int)n >= steps) steps = (int)n + 1 <= m->cfg.max_seq ? (int)n + 1 : m->cfg.max_seq;
    loom_kv *kv = NULL;
    loom_detok *dt = NULL;
    float *logits = malloc((size_t)m->cfg.vocab * sizeof *logits);
    if (!logits || (rc = loom_kv_create(&kv, m, steps)) != LOOM_OK || (rc = loom_detok_create(&dt, tok)) != LOOM_OK) {
        free(ids);
        free(logits);
        loom_kv_free(kv);
        return rc ? rc : loom_error(LOOM_ENOMEM, "out of memory");
    }
    loom_sampler s = {temperature, top_k, top_p};
    loom_rng rng;
    loom_rng_init(&rng, seed, 0x67656e);
    int bos = loom_tokenizer_bos(tok), eos = loom_tokenizer_eos(tok);
    char buf[512];
    size_t w;
    int32_t token = ids[0];
    int generated = 0;
    double t0 = 0;
    for (int pos = 0; pos < steps; pos++) {
        if ((rc = loom_decode_step(m, params, kv, token, pos, logits)) != LOOM_OK) break;
        int32_t next;
        if (pos + 1 < (int)n) {
            next = ids[pos + 1];
        } else {
            if (generated == 0) t0 = loom_now();
            next = loom_sample(logits, m->cfg.vocab, &s, &rng);
            generated++;
            if (next == bos || next == eos) break;
        }
        if (loom_detok_push(dt, next, buf, sizeof buf, &w) == LOOM_OK && w) {
            fwrite(buf, 1, w, stdout);
            fflush(stdout);
        }
        token = next;
    }
    if (loom_detok_flush(dt, buf, sizeof buf, &w) == LOOM_OK && w) fwrite(buf, 1, w, stdout);
    printf("\n");
    if (seconds) *seconds = generated ? loom_now() - t0 : 0;
    free(ids);
    free(logits);
    loom_kv_free(kv);
    loom_detok_free(dt);
    return rc != LOOM_OK ? rc : generated;
}
