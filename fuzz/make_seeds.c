/* Writes small seed inputs for each fuzz harness from the shared data:
 *     fuzz_make_seeds SHARED_DIR OUT_DIR       -> OUT_DIR/<harness>/<seed files>
 * Seeds are kept small (trimmed vocabularies, a few rows, tiny tensors) so that mutations run fast;
 * nothing here is committed. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/gguf.h"
#include "loom/model.h"
#include "loom/safetensors.h"
#include "loom/update.h"

static const char *shared, *out;
static int written;

static void put(const char *target, const char *name, const void *data, size_t n) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", out, target);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/%s/%s", out, target, name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n)) {
        fprintf(stderr, "fuzz_make_seeds: cannot write %s\n", p);
        exit(1);
    }
    fclose(f);
    written++;
}

static void put_str(const char *target, const char *name, const char *s) { put(target, name, s, strlen(s)); }

/* The file's first `max` bytes cut back to a whole line (all of it when max = 0); NULL when absent. */
static char *read_head(const char *rel, size_t max, size_t *len) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", shared, rel);
    char *d;
    size_t n;
    if (loom_read_file(p, &d, &n) != LOOM_OK) {
        fprintf(stderr, "fuzz_make_seeds: skipping %s: %s\n", p, loom_errmsg());
        return NULL;
    }
    if (max && n > max) {
        n = max;
        while (n > 0 && d[n - 1] != '\n') n--;
        d[n] = 0;
    }
    *len = n;
    return d;
}

static void copy_head(const char *target, const char *name, const char *rel, size_t max, const char *prefix) {
    size_t n;
    char *d = read_head(rel, max, &n);
    if (!d) return;
    size_t pl = prefix ? strlen(prefix) : 0;
    char *buf = malloc(pl + n + 1);
    if (pl) memcpy(buf, prefix, pl);
    memcpy(buf + pl, d, n);
    put(target, name, buf, pl + n);
    free(buf);
    free(d);
}

/* Small tensors of a reference model, rewritten in the given dtype. */
/* A GGUF model small enough to mutate: a llama-tiny or gpt2-tiny shape cut down to one layer of width
 * 32 and 64 tokens, written by loom's exporter with matrices as type. */
static void gguf_seed(const char *shape, const char *name, loom_ggml_type type) {
    loom_config c;
    if (loom_config_named(&c, shape) != LOOM_OK) return;
    c.n_layer = 1;
    c.dim = 32;
    c.n_head = 2;
    c.n_kv_head = c.n_kv_head < c.n_head ? 1 : 2;
    c.hidden = 64;
    c.vocab = 64;
    c.max_seq = 16;
    if (c.bos_id >= c.vocab) c.bos_id = -1;
    if (c.eos_id >= c.vocab) c.eos_id = -1;
    loom_model *m = NULL;
    loom_gguf_writer *w = NULL;
    char p[1024];
    snprintf(p, sizeof p, "%s/fuzz_gguf", out);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/fuzz_gguf/%s", out, name);
    if (loom_model_create(&m, &c, 1) == LOOM_OK && loom_gguf_writer_create(&w) == LOOM_OK &&
        loom_model_save_gguf(m, loom_model_params_const(m), type, w, p) == LOOM_OK)
        written++;
    loom_gguf_writer_free(w);
    loom_model_free(m);
}

static void safetensors_seed(const char *rel, const char *name, loom_dtype dt) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", shared, rel);
    loom_st_file *f;
    if (loom_st_open(&f, p) != LOOM_OK) return;
    loom_st_writer *w;
    loom_st_writer_create(&w);
    float *bufs[8];
    int k = 0;
    for (size_t i = 0; i < loom_st_count(f) && k < 8; i++) {
        const loom_st_tensor *t = loom_st_at(f, i);
        if (t->numel > 128) continue;
        bufs[k] = malloc(t->numel * sizeof(float));
        loom_st_to_f32(t, bufs[k], t->numel);
        loom_st_writer_add_f32(w, t->name, dt, t->ndim, t->shape, bufs[k]);
        k++;
    }
    static float scalar = 1.5f;
    int64_t none[1] = {0};
    loom_st_writer_add_f32(w, "scalar", LOOM_DT_F32, 0, none, &scalar);
    loom_st_writer_add_f32(w, "empty", LOOM_DT_F32, 1, none, &scalar);
    loom_st_writer_meta(w, "format", "pt");
    void *data;
    size_t len;
    if (loom_st_writer_serialize(w, &data, &len) == LOOM_OK) {
        put("fuzz_safetensors", name, data, len);
        free(data);
    }
    loom_st_writer_free(w);
    for (int i = 0; i < k; i++) free(bufs[i]);
    loom_st_close(f);
}

/* A tokenizer.json with its vocabulary cut to ids < keep and the merges that stay inside it. */
static void trimmed_tokenizer_json(const char *rel, const char *name, int keep) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", shared, rel);
    json_error_t e;
    json_t *root = json_load_file(p, 0, &e);
    if (!root) return;
    json_t *model = json_object_get(root, "model"), *vocab = json_object_get(model, "vocab");
    json_t *nv = json_object(), *nm = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) if (json_integer_value(v) < keep) json_object_set(nv, k, v);
    size_t i;
    json_array_foreach(json_object_get(model, "merges"), i, v) {
        const char *m = json_string_value(v);
        const char *sp = m ? strchr(m, ' ') : NULL;
        if (!sp) continue;
        char a[256], b[512];
        snprintf(a, sizeof a, "%.*s", (int)(sp - m), m);
        snprintf(b, sizeof b, "%s%s", a, sp + 1);
        if (json_object_get(nv, a) && json_object_get(nv, sp + 1) && json_object_get(nv, b)) json_array_append(nm, v);
    }
    json_object_set_new(model, "vocab", nv);
    json_object_set_new(model, "merges", nm);
    json_t *added = json_array();
    json_array_foreach(json_object_get(root, "added_tokens"), i, v)
        if (json_integer_value(json_object_get(v, "id")) < keep) json_array_append(added, v);
    json_object_set_new(root, "added_tokens", added);
    char *s = json_dumps(root, JSON_COMPACT);
    put_str("fuzz_tokenizer_json", name, s);
    free(s);
    json_decref(root);
}

/* GPT-2's encoder.json (ids < keep) and the vocab.bpe merges inside it, joined by a NUL. */
static void gpt2_seed(int keep, json_t **vocab_out, json_t **merges_out) {
    char p[1024];
    snprintf(p, sizeof p, "%s/reference/tokenizer/encoder.json", shared);
    json_error_t e;
    json_t *enc = json_load_file(p, 0, &e);
    size_t n;
    char *bpe = read_head("reference/tokenizer/vocab.bpe", 0, &n);
    if (!enc || !bpe) {
        json_decref(enc);
        free(bpe);
        return;
    }
    json_t *nv = json_object(), *merges = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(enc, k, v) if (json_integer_value(v) < keep) json_object_set(nv, k, v);
    loom_strbuf sb = {0};
    char *s = json_dumps(nv, JSON_COMPACT);
    loom_strbuf_add(&sb, s, strlen(s));
    loom_strbuf_add(&sb, "", 1); /* the NUL separator */
    free(s);
    char *save = NULL;
    for (char *line = strtok_r(bpe, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *sp = strchr(line, ' ');
        if (!strncmp(line, "#version", 8)) {
            loom_strbuf_add(&sb, line, strlen(line));
            loom_strbuf_add(&sb, "\n", 1);
            continue;
        }
        if (!sp) continue;
        char a[256], b[512];
        snprintf(a, sizeof a, "%.*s", (int)(sp - line), line);
        snprintf(b, sizeof b, "%s%s", a, sp + 1);
        if (json_object_get(nv, a) && json_object_get(nv, sp + 1) && json_object_get(nv, b)) {
            loom_strbuf_add(&sb, line, strlen(line));
            loom_strbuf_add(&sb, "\n", 1);
            json_array_append_new(merges, json_string(line));
        }
    }
    put("fuzz_gpt2_bpe", "gpt2", sb.s, sb.n);
    free(sb.s);
    free(bpe);
    json_decref(enc);
    *vocab_out = nv;
    *merges_out = merges;
}

/* A tiny llama2.c checkpoint: header then as many floats as it implies. */
static void llama2c_seed(const char *name, int shared_cls) {
    int32_t h[7] = {8, 16, 1, 2, 2, shared_cls ? 16 : -16, 4};
    size_t dim = 8, hid = 16, L = 1, V = 16, T = 4, HS = 4, KV = 8;
    size_t need = V * dim + L * (2 * dim + dim * dim * 2 + 2 * KV * dim + 3 * hid * dim) + dim + T * HS +
                  (shared_cls ? 0 : V * dim);
    size_t len = 28 + need * 4;
    char *d = malloc(len);
    memcpy(d, h, 28);
    loom_rng r;
    loom_rng_init(&r, 1, 2);
    for (size_t i = 0; i < need; i++) {
        float x = (float)(loom_rng_uniform(&r) - 0.5);
        memcpy(d + 28 + i * 4, &x, 4);
    }
    put("fuzz_llama2c", name, d, len);
    free(d);
}

/* Upload bodies: a small update in every codec, with and without a control delta. */
static void update_seeds(void) {
    float v[40], c[40];
    for (int i = 0; i < 40; i++) v[i] = (float)((i * 37 % 17) - 8) / 64, c[i] = (float)i / 40;
    const loom_codec_opts codecs[] = {{LOOM_CODEC_F32, 0, 0}, {LOOM_CODEC_F16, 0, 0}, {LOOM_CODEC_INT8, 16, 0},
                                      {LOOM_CODEC_TOPK, 0, 0.2}};
    for (int k = 0; k < 8; k++) {
        loom_update u = {0xfeedULL, 3, 2, 1, 12, 2.5, 640, LOOM_CODEC_F32, 40, v, k % 2 ? c : NULL, 0};
        uint8_t *buf;
        size_t n;
        if (loom_update_encode(&u, &codecs[k / 2], &buf, &n) != LOOM_OK) continue;
        char name[32];
        snprintf(name, sizeof name, "%s%s", loom_codec_name(codecs[k / 2].codec), k % 2 ? "-control" : "");
        put("fuzz_update", name, buf, n);
        free(buf);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: fuzz_make_seeds SHARED_DIR OUT_DIR\n");
        return 2;
    }
    shared = argv[1];
    out = argv[2];
    mkdir(out, 0755);
    loom_set_log(NULL, NULL, LOOM_ERROR + 1);

    gguf_seed("llama-tiny", "llama-f16", LOOM_GGML_F16);
    gguf_seed("llama-tiny", "llama-q8_0", LOOM_GGML_Q8_0);
    gguf_seed("gpt2-tiny", "gpt2-f32", LOOM_GGML_F32);
    safetensors_seed("reference/gpt2-tiny/model.safetensors", "gpt2-f32", LOOM_DT_F32);
    safetensors_seed("reference/llama-tiny/model.safetensors", "llama-bf16", LOOM_DT_BF16);
    safetensors_seed("reference/gpt2-tiny-lora/adapter_model.safetensors", "lora-f16", LOOM_DT_F16);

    put_str("fuzz_st_index", "index",
            "{\"metadata\": {\"total_size\": 40}, \"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\", "
            "\"b.bias\": \"model-00002-of-00002.safetensors\"}}");
    put_str("fuzz_st_index", "one", "{\"weight_map\": {\"a.weight\": \"model-00001-of-00002.safetensors\"}}");

    trimmed_tokenizer_json("data/mistral-tokenizer/tokenizer.json", "mistral", 600);
    json_t *gv = NULL, *gm = NULL;
    gpt2_seed(400, &gv, &gm);
    if (gv) { /* the same vocabulary as a ByteLevel tokenizer.json */
        json_t *tj = json_pack("{s:{s:s,s:O,s:O},s:{s:s,s:b},s:{s:s},s:[{s:i,s:s,s:b}]}", "model", "type", "BPE", "vocab",
                               gv, "merges", gm, "pre_tokenizer", "type", "ByteLevel", "add_prefix_space", 0, "decoder",
                               "type", "ByteLevel", "added_tokens", "id", 400, "content", "<|endoftext|>", "special", 1);
        char *s = json_dumps(tj, JSON_COMPACT);
        if (s) put_str("fuzz_tokenizer_json", "bytelevel", s);
        free(s);
        json_decref(tj);
        json_decref(gv);
        json_decref(gm);
    }
    copy_head("fuzz_tokenizer_bin", "tok512", "data/stories260K/tok512.bin", 0, NULL);
    copy_head("fuzz_tokenizer_bin", "tiktoken", "data/llama3-tokenizer/tokenizer.model", 4000, NULL);

    llama2c_seed("shared", 1);
    llama2c_seed("unshared", 0);

    copy_head("fuzz_adapter_config", "lora", "reference/gpt2-tiny-lora/adapter_config.json", 0, NULL);
    put_str("fuzz_adapter_config", "prefix", "{\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": 4}");
    put_str("fuzz_adapter_config", "prompt", "{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": 4}");
    put_str("fuzz_adapter_config", "adapter", "{\"peft_type\": \"LOOM_ADAPTER\", \"adapter_dim\": 8}");
    put_str("fuzz_adapter_config", "bitfit", "{\"peft_type\": \"LOOM_BITFIT\", \"bitfit_norms\": true}");
    put_str("fuzz_adapter_config", "llama",
            "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4.0, \"target_modules\": \"q_proj,v_proj\"}");

    copy_head("fuzz_config", "gpt2", "reference/gpt2-tiny/config.json", 0, NULL);
    copy_head("fuzz_config", "gpt2-gelu_new", "reference/gpt2-tiny-gelu_new/config.json", 0, NULL);
    copy_head("fuzz_config", "llama", "reference/llama-tiny/config.json", 0, NULL);

    /* datasets: the first byte selects the format (see fuzz_dataset.c) */
    copy_head("fuzz_dataset", "self-instruct", "data/self-instruct/seed_tasks.jsonl", 3000, "\x04");
    copy_head("fuzz_dataset", "ag-news-cls", "data/ag-news/test.csv", 2000, "\x55");
    copy_head("fuzz_dataset", "ag-news-lm", "data/ag-news/test.csv", 1000, "\x05");
    copy_head("fuzz_dataset", "sst2-tsv", "data/sst2/dev.tsv", 1500, "\x46");
    copy_head("fuzz_dataset", "shakespeare", "data/tinyshakespeare/input.txt", 1500, "\x07");
    copy_head("fuzz_dataset", "shakespeare-lines", "data/tinyshakespeare/input.txt", 800, "\x17");
    put_str("fuzz_dataset", "alpaca",
            "\x02{\"instruction\": \"Add.\", \"input\": \"2 3\", \"output\": \"5\"}\n{\"instruction\": \"Hi\", \"output\": \"Hello\"}\n");
    put_str("fuzz_dataset", "dolly",
            "\x03{\"instruction\": \"Why?\", \"context\": \"c\", \"response\": \"Because\", \"category\": \"qa\"}\n");
    put_str("fuzz_dataset", "jsonl-cls", "\x01{\"text\": \"good film\", \"label\": 1}\n{\"text\": \"bad\", \"label\": 0}\n");
    put_str("fuzz_dataset", "jsonl-lm", "\x40{\"text\": \"a b c\", \"label\": \"x\"}\n{\"text\": \"d\", \"label\": \"y\"}\n");

    put_str("fuzz_sim_config", "sim", "{\"rounds\": 3, \"clients\": 10, \"lr\": 0.05, \"sample\": 0.5, \"seed\": 7, "
                                      "\"quiet\": true, \"data\": \"shakespeare\", \"strategy\": \"fedavg\"}");
    put_str("fuzz_sim_config", "odd", "{\"rounds\": 4294967297, \"lr\": 1e400, \"quiet\": false, \"x\": null}");
    update_seeds();
    printf("fuzz_make_seeds: %d seeds in %s\n", written, out);
    return written > 20 ? 0 : 1;
}
