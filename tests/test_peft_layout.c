/* Prefix and prompt tuning in Hugging Face PEFT's own layout.
 *
 * PEFT (peft_model.py, tuners/prefix_tuning, tuners/prompt_tuning, utils/save_and_load.py) saves a
 * prompt-learning adapter as one tensor "prompt_embeddings" in adapter_model.safetensors (metadata
 * {"format": "pt"}) and a PromptLearningConfig in adapter_config.json:
 *   prefix tuning   [num_virtual_tokens, num_layers * 2 * token_dim]; get_prompt views it as
 *                   [P, 2 L, heads, token_dim / heads] and permutes to [2 L, heads, P, head size]: slice
 *                   2l is layer l's keys, 2l + 1 its values. For a grouped-query model token_dim = kv
 *                   heads x head size and num_attention_heads = kv heads; encoder_hidden_size defaults to
 *                   token_dim.
 *   prompt tuning   [num_virtual_tokens * num_transformer_submodules, token_dim] with token_dim the model
 *                   width (1 submodule for a causal LM).
 * The expected values below come from those rules applied by hand to the test model's numbers (flat
 * indices of the view written out), never from loom's writer; the safetensors file is parsed here with
 * jansson and plain byte reads, not with loom's reader; and "PEFT's files" are assembled byte by byte.
 *
 * The LoRA-adapter GGUF (loom_tset_save_gguf_lora) is read back with loom's GGUF reader and checked
 * against llama.cpp's rules (src/llama-adapter.cpp: lora_a ne = {in, r}, lora_b ne = {r, out}, scale
 * alpha / r) and the q/k row order of llama.cpp's converter, written out by hand.
 *
 * Mutations seen to fail this test: writing token_dim as the model width for prefix tuning; the value
 * slice read at 2l + 2 instead of 2l + 1 (peft_hooks.c prefix_kv); keys and values swapped; the
 * num_attention_heads check dropped; in the GGUF writer, q/k rows left in Hugging Face's order, k
 * permuted with the query head count, rsLoRA's alpha not rescaled, A's and B's ne swapped. */
#include <jansson.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/gguf.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "peft/peft_impl.h"
#include "test.h"

/* Llama with grouped-query attention: C = 16, 4 heads of 4, 2 kv heads (KV = 8), 2 layers. */
enum { C = 16, NH = 4, NKV = 2, HS = 4, KVW = NKV * HS, L = 2, P = 3 };

static loom_model *micro(int llama) {
    loom_config cfg;
    loom_config_named(&cfg, llama ? "llama-tiny" : "gpt2-tiny");
    cfg.dim = C, cfg.n_head = NH, cfg.n_kv_head = llama ? NKV : NH, cfg.n_layer = L, cfg.hidden = 24;
    cfg.vocab = 11, cfg.max_seq = 16;
    if (!llama) cfg.act = LOOM_ACT_GELU_TANH;
    loom_model *m = NULL;
    CHECK_OK(loom_model_create(&m, &cfg, 7));
    return m;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "open %s", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* A safetensors file with one F32 tensor, as safetensors' serializer lays it out: u64 little-endian
 * header length, the JSON header padded with spaces to a multiple of 8, the raw data. */
static void write_st(const char *path, const char *name, int rows, int cols, const float *x) {
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr,
                     "{\"__metadata__\":{\"format\":\"pt\"},\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%d]}}",
                     name, rows, cols, rows * cols * 4);
    while (n % 8) hdr[n++] = ' ';
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)n >> (8 * i));
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "open %s", path);
    if (!f) return;
    fwrite(len, 1, 8, f);
    fwrite(hdr, 1, (size_t)n, f);
    for (int i = 0; i < rows * cols; i++) { /* little-endian bytes of each float */
        uint32_t u;
        memcpy(&u, &x[i], 4);
        unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
        fwrite(b, 1, 4, f);
    }
    fclose(f);
}

/* Reads path's header and the data of its only tensor (caller frees *data); checks the name set. */
static json_t *read_st(const char *path, float **data, size_t *count) {
    *data = NULL;
    *count = 0;
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "open %s", path);
    if (!f) return NULL;
    unsigned char len[8];
    uint64_t n = 0;
    if (fread(len, 1, 8, f) == 8)
        for (int i = 7; i >= 0; i--) n = n << 8 | len[i];
    CHECK(n > 0 && n < 65536 && n % 8 == 0, "header length %llu (safetensors pads it to 8)", (unsigned long long)n);
    char *hdr = calloc(1, n + 1);
    json_t *h = NULL;
    if (hdr && fread(hdr, 1, n, f) == n) h = json_loads(hdr, 0, NULL);
    free(hdr);
    CHECK(h != NULL, "%s: header parses as JSON", path);
    json_t *t = h ? json_object_get(h, "prompt_embeddings") : NULL;
    json_t *off = t ? json_object_get(t, "data_offsets") : NULL;
    if (off && json_array_size(off) == 2) {
        size_t a = (size_t)json_integer_value(json_array_get(off, 0)), b = (size_t)json_integer_value(json_array_get(off, 1));
        *count = (b - a) / 4;
        *data = malloc(b - a + 1);
        fseek(f, (long)(8 + n + a), SEEK_SET);
        CHECK(*data && fread(*data, 1, b - a, f) == b - a, "%s: tensor data", path);
    }
    fclose(f);
    return h;
}

static long long jint(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? json_integer_value(v) : -999;
}

/* PEFT's get_prompt: past_key_values.view(P, 2L, H, D).permute(2, 0, 3, 1, 4) (batch dropped), so
 * element [s][h][p][d] (s = 2l keys, 2l + 1 values of layer l) is the view's flat index
 * ((p * 2L + s) * H + h) * D + d of the saved table. */
static float peft_kv(const float *table, int s, int h, int p, int d) {
    return table[(((size_t)p * 2 * L + s) * NKV + h) * HS + d];
}

/* loom's prefix rows for layer l as decoding puts them in its cache ([P, KV] keys and values, heads
 * contiguous) compared with PEFT's reading of the same table. */
static int kv_matches_peft(loom_tset *ts, const float *vec, const float *table) {
    const loom_model *m = loom_tset_model(ts);
    lm_hook_ctx h = {m, loom_tset_plan(ts), vec, NULL, NULL, 1, 1, 1, 0, 0, 0};
    float k[P * KVW], v[P * KVW];
    int bad = 0;
    for (int l = 0; l < L; l++) {
        CHECK(lm_prefix_ops.kv_prefix(&h, l, k, v, KVW) == P, "prefix rows");
        for (int hh = 0; hh < NKV; hh++)
            for (int p = 0; p < P; p++)
                for (int d = 0; d < HS; d++) {
                    bad += k[p * KVW + hh * HS + d] != peft_kv(table, 2 * l, hh, p, d);
                    bad += v[p * KVW + hh * HS + d] != peft_kv(table, 2 * l + 1, hh, p, d);
                }
    }
    return bad;
}

/* loom writes what PEFT writes: the config's fields, one tensor of PEFT's shape, PEFT's reading of it. */
static void save_layout(void) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    for (int llama = 0; llama < 2; llama++) {
        loom_model *m = micro(llama);
        if (!m) continue;
        int kv = llama ? NKV : NH, kvw = kv * HS;
        for (int prefix = 1; prefix >= 0; prefix--) {
            loom_peft_config pc;
            loom_peft_defaults(&pc, prefix ? LOOM_PEFT_PREFIX : LOOM_PEFT_PROMPT);
            pc.prefix_len = pc.prompt_len = P;
            loom_tset *ts = NULL, *back = NULL;
            CHECK_OK(loom_tset_create(&ts, m, &pc, 5));
            if (!ts) continue;
            float *vec = loom_tset_data(ts);
            size_t dim = loom_tset_dim(ts);
            for (size_t i = 0; i < dim; i++) vec[i] = (float)i + 0.25f;
            CHECK_OK(loom_tset_save_peft(ts, vec, dir, "base"));
            const char *what = prefix ? "prefix" : "prompt";
            snprintf(path, sizeof path, "%s/adapter_config.json", dir);
            json_t *j = json_load_file(path, 0, NULL);
            CHECK(j != NULL, "%s: config parses", what);
            if (j) {
                CHECK(!strcmp(json_string_value(json_object_get(j, "peft_type")), prefix ? "PREFIX_TUNING" : "PROMPT_TUNING"),
                      "%s: peft_type", what);
                CHECK(!strcmp(json_string_value(json_object_get(j, "task_type")), "CAUSAL_LM"), "%s: task_type", what);
                CHECK(jint(j, "num_virtual_tokens") == P, "%s: num_virtual_tokens", what);
                CHECK(jint(j, "num_layers") == L, "%s: num_layers", what);
                CHECK(jint(j, "num_transformer_submodules") == 1, "%s: one submodule", what);
                CHECK(jint(j, "token_dim") == (prefix ? kvw : C), "%s (llama %d): token_dim %lld", what, llama, jint(j, "token_dim"));
                CHECK(jint(j, "num_attention_heads") == (prefix ? kv : NH), "%s (llama %d): num_attention_heads %lld", what,
                      llama, jint(j, "num_attention_heads"));
                if (prefix) {
                    CHECK(jint(j, "encoder_hidden_size") == kvw, "encoder_hidden_size = token_dim");
                    CHECK(json_is_false(json_object_get(j, "prefix_projection")), "no projection");
                } else {
                    CHECK(!strcmp(json_string_value(json_object_get(j, "prompt_tuning_init")), "SAMPLE_VOCAB"), "init");
                }
                CHECK(json_is_null(json_object_get(j, "modules_to_save")), "%s: modules_to_save null", what);
                json_decref(j);
            }
            snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
            float *data;
            size_t count;
            json_t *h = read_st(path, &data, &count);
            if (h) {
                CHECK(json_object_size(h) == 2, "%s: one tensor besides __metadata__ (%zu keys)", what, json_object_size(h));
                json_t *t = json_object_get(h, "prompt_embeddings"), *sh = json_object_get(t, "shape");
                CHECK(t && !strcmp(json_string_value(json_object_get(t, "dtype")), "F32"), "%s: F32", what);
                CHECK(json_array_size(sh) == 2 && json_integer_value(json_array_get(sh, 0)) == P &&
                          json_integer_value(json_array_get(sh, 1)) == (prefix ? L * 2 * kvw : C),
                      "%s (llama %d): shape [%d, %d]", what, llama, P, prefix ? L * 2 * kvw : C);
                json_t *meta = json_object_get(h, "__metadata__");
                json_t *fmt = json_object_get(meta, "format");
                CHECK(json_is_string(fmt) && !strcmp(json_string_value(fmt), "pt"), "%s: format pt in the metadata", what);
                CHECK(count == dim && data && !memcmp(data, vec, dim * 4), "%s: the values, in order", what);
                if (prefix && llama && data) CHECK(kv_matches_peft(ts, vec, data) == 0, "loom's prefix rows are PEFT's");
                json_decref(h);
            }
            free(data);
            CHECK_OK(loom_tset_load_peft(&back, m, dir));
            CHECK(back && loom_tset_dim(back) == dim && !memcmp(loom_tset_data(back), vec, dim * 4), "%s: round trip", what);
            loom_tset_free(back);
            loom_tset_free(ts);
        }
        loom_model_free(m);
    }
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
}

/* A config as PEFT 0.17 writes one for this model (every field of PrefixTuningConfig), with fields to
 * change spliced in. */
static void peft_prefix_config(const char *dir, int token_dim, int heads, int subm, const char *proj) {
    char path[512], text[2048];
    snprintf(text, sizeof text,
             "{\n  \"auto_mapping\": null,\n  \"base_model_name_or_path\": \"tiny\",\n  \"encoder_hidden_size\": %d,\n"
             "  \"inference_mode\": true,\n  \"init_weights\": null,\n  \"modules_to_save\": null,\n"
             "  \"num_attention_heads\": %d,\n  \"num_layers\": %d,\n  \"num_transformer_submodules\": %d,\n"
             "  \"num_virtual_tokens\": %d,\n  \"peft_type\": \"PREFIX_TUNING\",\n  \"peft_version\": \"0.17.1\",\n"
             "  \"prefix_projection\": %s,\n  \"revision\": null,\n  \"task_type\": \"CAUSAL_LM\",\n  \"token_dim\": %d\n}\n",
             token_dim, heads, L, subm, P, proj, token_dim);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    write_text(path, text);
}

/* loom reads what PEFT writes: files assembled here byte by byte, in PEFT's layout. */
static void load_peft_files(void) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    loom_model *m = micro(1), *g = micro(0);
    if (!m || !g) return;
    enum { W = L * 2 * KVW };
    float table[P * W];
    for (int i = 0; i < P * W; i++) table[i] = 0.5f * (float)i - 7.0f;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    write_st(path, "prompt_embeddings", P, W, table);
    const char *proj[] = {"false", "true"};
    for (int i = 0; i < 2; i++) {
        peft_prefix_config(dir, KVW, NKV, 1, proj[i]);
        loom_tset *ts = NULL;
        CHECK_OK(loom_tset_load_peft(&ts, m, dir));
        if (!ts) continue;
        CHECK(loom_tset_config(ts)->method == LOOM_PEFT_PREFIX && loom_tset_config(ts)->prefix_len == P, "prefix of %d", P);
        CHECK(loom_tset_dim(ts) == P * W && !memcmp(loom_tset_data(ts), table, sizeof table), "PEFT's values (projection %s)",
              proj[i]);
        CHECK(kv_matches_peft(ts, loom_tset_data(ts), table) == 0, "loom reads PEFT's keys and values");
        loom_tset_free(ts);
    }
    /* fields that do not describe this model are refused by name */
    struct { int td, heads, subm; const char *msg; } bad[] = {
        {C, NKV, 1, "token_dim is 16"},               /* the model width: a PEFT before grouped-query support */
        {KVW, NH, 1, "num_attention_heads is 4"},     /* same width, another head split */
        {KVW, NKV, 2, "num_transformer_submodules is 2"},
    };
    for (int i = 0; i < 3; i++) {
        peft_prefix_config(dir, bad[i].td, bad[i].heads, bad[i].subm, "false");
        loom_tset *ts = NULL;
        int rc = loom_tset_load_peft(&ts, m, dir);
        CHECK(rc != LOOM_OK && ts == NULL && strstr(loom_errmsg(), bad[i].msg) && strstr(loom_errmsg(), "adapter_config.json"),
              "refused naming '%s': %s", bad[i].msg, loom_errmsg());
        loom_tset_free(ts);
    }
    /* the previous loom layout (encoder_hidden_size = the model width, no auto_mapping or
     * modules_to_save) still loads */
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    char text[1024];
    snprintf(text, sizeof text,
             "{\"base_model_name_or_path\": null, \"encoder_hidden_size\": %d, \"inference_mode\": true, "
             "\"num_attention_heads\": %d, \"num_layers\": %d, \"num_transformer_submodules\": 1, \"num_virtual_tokens\": %d, "
             "\"peft_type\": \"PREFIX_TUNING\", \"prefix_projection\": false, \"revision\": null, \"task_type\": \"CAUSAL_LM\", "
             "\"token_dim\": %d}",
             C, NKV, L, P, KVW);
    write_text(path, text);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    write_st(path, "prompt_embeddings", P, W, table);
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_load_peft(&ts, m, dir));
    CHECK(ts && !memcmp(loom_tset_data(ts), table, sizeof table), "previous loom layout read");
    loom_tset_free(ts);
    /* prompt tuning as PEFT writes it for GPT-2 ([P, C], num_attention_heads = heads) */
    float rows[P * C];
    for (int i = 0; i < P * C; i++) rows[i] = 0.125f * (float)i;
    write_st(path, "prompt_embeddings", P, C, rows);
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    snprintf(text, sizeof text,
             "{\"auto_mapping\": null, \"base_model_name_or_path\": \"gpt2\", \"inference_mode\": true, \"modules_to_save\": null, "
             "\"num_attention_heads\": %d, \"num_layers\": %d, \"num_transformer_submodules\": 1, \"num_virtual_tokens\": %d, "
             "\"peft_type\": \"PROMPT_TUNING\", \"peft_version\": \"0.17.1\", \"prompt_tuning_init\": \"RANDOM\", "
             "\"prompt_tuning_init_text\": null, \"revision\": null, \"task_type\": \"CAUSAL_LM\", \"token_dim\": %d, "
             "\"tokenizer_kwargs\": null, \"tokenizer_name_or_path\": null}",
             NH, L, P, C);
    write_text(path, text);
    CHECK_OK(loom_tset_load_peft(&ts, g, dir));
    CHECK(ts && loom_tset_config(ts)->method == LOOM_PEFT_PROMPT && loom_tset_config(ts)->prompt_len == P &&
              !memcmp(loom_tset_data(ts), rows, sizeof rows), "PEFT's prompt rows read");
    loom_tset_free(ts);
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
    loom_model_free(m);
    loom_model_free(g);
}

/* llama.cpp's converter permutes q and k rows per head: reshape(heads, 2, hs / 2, cols) then
 * swapaxes(1, 2), so input row h*hs + j*(hs/2) + i lands at output row h*hs + 2i + j. */
static int meta_row(int row) {
    int h = row / HS, r = row % HS, j = r / (HS / 2), i = r % (HS / 2);
    return h * HS + 2 * i + j;
}

/* The LoRA-adapter GGUF as llama.cpp's loader reads it (src/llama-adapter.cpp): keys, names, ne, data. */
static void gguf_lora(void) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/a.gguf", dir);
    for (int llama = 0; llama < 2; llama++)
        for (int rs = 0; rs < 2; rs++) {
            loom_model *m = micro(llama);
            if (!m) continue;
            loom_peft_config pc;
            loom_peft_defaults(&pc, LOOM_PEFT_LORA);
            pc.lora_r = 2, pc.lora_alpha = 6, pc.rslora = rs;
            snprintf(pc.target_modules, sizeof pc.target_modules, "%s", llama ? "q_proj,k_proj,v_proj,down_proj" : "c_attn,attn.c_proj");
            loom_tset *ts = NULL;
            CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
            if (!ts) continue;
            float *vec = loom_tset_data(ts);
            for (size_t i = 0; i < loom_tset_dim(ts); i++) vec[i] = (float)i;
            CHECK_OK(loom_tset_save_gguf_lora(ts, vec, path));
            loom_gguf *g = NULL;
            CHECK_OK(loom_gguf_open(&g, path));
            if (!g) continue;
            const char *s;
            float alpha;
            CHECK(loom_gguf_get_str(g, "general.type", &s, NULL) == LOOM_OK && !strcmp(s, "adapter"), "general.type");
            CHECK(loom_gguf_get_str(g, "adapter.type", &s, NULL) == LOOM_OK && !strcmp(s, "lora"), "adapter.type");
            CHECK(loom_gguf_get_str(g, "general.architecture", &s, NULL) == LOOM_OK && !strcmp(s, llama ? "llama" : "gpt2"),
                  "architecture");
            /* llama.cpp's scale is alpha / r: rsLoRA's 6 / sqrt(2) needs alpha 6 sqrt(2) */
            CHECK(loom_gguf_get_f32(g, "adapter.lora.alpha", &alpha) == LOOM_OK &&
                      fabsf(alpha / 2 - (rs ? 6 / sqrtf(2) : 3.0f)) < 1e-6f, "alpha %g (rslora %d)", alpha, rs);
            /* modules in the set's order: name, in, out, rows permuted */
            struct { const char *name; int in, out, perm; } gl[] = {
                {"attn_q", C, C, 1}, {"attn_k", C, KVW, 1}, {"attn_v", C, KVW, 0}, {"ffn_down", 24, C, 0}};
            struct { const char *name; int in, out, perm; } gg[] = {{"attn_qkv", C, 3 * C, 0}, {"attn_output", C, C, 0}};
            int nmod = llama ? 4 : 2;
            CHECK(loom_gguf_tensor_count(g) == (size_t)(2 * nmod * L), "%zu tensors", loom_gguf_tensor_count(g));
            size_t off = 0;
            int bad = 0;
            for (int l = 0; l < L; l++)
                for (int k = 0; k < nmod; k++) {
                    const char *nm = llama ? gl[k].name : gg[k].name;
                    int in = llama ? gl[k].in : gg[k].in, out = llama ? gl[k].out : gg[k].out, perm = llama && gl[k].perm;
                    char an[64], bn[64];
                    snprintf(an, sizeof an, "blk.%d.%s.weight.lora_a", l, nm);
                    snprintf(bn, sizeof bn, "blk.%d.%s.weight.lora_b", l, nm);
                    const loom_gguf_tensor *a = loom_gguf_find_tensor(g, an), *b = loom_gguf_find_tensor(g, bn);
                    CHECK(a && b, "%s and %s present", an, bn);
                    if (!a || !b) continue;
                    CHECK(a->type == LOOM_GGML_F32 && a->ndim == 2 && a->ne[0] == in && a->ne[1] == 2, "%s ne {%d, r}", an, in);
                    CHECK(b->type == LOOM_GGML_F32 && b->ndim == 2 && b->ne[0] == 2 && b->ne[1] == out, "%s ne {r, %d}", bn, out);
                    const float *ad = a->data, *bd = b->data;
                    for (int i = 0; i < 2 * in; i++) bad += ad[i] != vec[off + i]; /* A [r, in] as it is */
                    off += (size_t)2 * in;
                    for (int row = 0; row < out; row++) /* B [out, r]: row -> meta_row(row) for q and k */
                        for (int j = 0; j < 2; j++) bad += bd[(perm ? meta_row(row) : row) * 2 + j] != vec[off + row * 2 + j];
                    off += (size_t)2 * out;
                }
            CHECK(bad == 0 && off == loom_tset_dim(ts), "llama %d: %d values misplaced", llama, bad);
            loom_gguf_close(g);
            loom_tset_free(ts);
            loom_model_free(m);
        }
    /* only LoRA sets */
    loom_model *m = micro(0);
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_PREFIX);
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 1));
    CHECK(ts && loom_tset_save_gguf_lora(ts, loom_tset_data(ts), path) == LOOM_EINVAL && strstr(loom_errmsg(), "LoRA sets only"),
          "prefix set refused: %s", loom_errmsg());
    loom_tset_free(ts);
    loom_model_free(m);
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
}

int main(void) {
    save_layout();
    load_peft_files();
    gguf_lora();
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
