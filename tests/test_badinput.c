/* Bad input found by fuzzing: each case is a file (or buffer) that once crashed, read freed memory,
 * hit undefined behaviour or was silently misread. Each must now give a clear error that names the
 * file and what is wrong in it (or, for valid-but-odd input, the right result). Run under ASan+UBSan
 * as well: several of these were found there and pass silently in a release build. */
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/safetensors.h"
#include "loom/tokenizer.h"
#include "test.h"

static char tmpdir[256];

static char *tmp_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", tmpdir, name);
    return buf;
}

static void write_text(const char *path, const char *s) { CHECK_OK(loom_write_file_atomic(path, s, strlen(s))); }

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw) { return remove(p); }

static int has(const char *msg, const char *part) { return msg && strstr(msg, part) != NULL; }

/* ---- adapter_config.json ---- */

/* Writes <tmp>/<sub>/adapter_config.json with the given text; returns the directory. */
static const char *adapter_dir(char *dir, size_t n, const char *sub, const char *json) {
    tmp_path(dir, n, sub);
    mkdir(dir, 0755);
    char p[512];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    write_text(p, json);
    return dir;
}

static void expect_adapter_error(const char *sub, const char *json, int code, const char *part1, const char *part2) {
    char dir[400];
    loom_peft_config cfg;
    int rc = loom_peft_config_load(&cfg, adapter_dir(dir, sizeof dir, sub, json), NULL, 0);
    CHECK(rc == code, "%s: rc %d (want %d): %s", sub, rc, code, loom_errmsg());
    CHECK(has(loom_errmsg(), "adapter_config.json") && has(loom_errmsg(), part1) && has(loom_errmsg(), part2),
          "%s: message \"%s\" should name adapter_config.json, %s and %s", sub, loom_errmsg(), part1, part2);
}

static void test_adapter_config(void) {
    /* an unknown peft_type: the name was read from the JSON after the JSON was freed */
    expect_adapter_error("unknown_type", "{\"peft_type\": \"SOME_FUTURE_METHOD_WITH_A_LONG_NAME\"}", LOOM_EUNSUPPORTED,
                         "'SOME_FUTURE_METHOD_WITH_A_LONG_NAME'", "LORA");
    /* numbers: 1e10 overflowed the int conversion, 4294967300 wrapped to 4, a string meant the default */
    expect_adapter_error("r_huge_real", "{\"peft_type\": \"LORA\", \"r\": 1e10}", LOOM_ERANGE, "r is 10000000000", "[1, 1024]");
    expect_adapter_error("r_wrap", "{\"peft_type\": \"LORA\", \"r\": 4294967300}", LOOM_ERANGE, "r is 4294967300", "[1, 1024]");
    expect_adapter_error("r_string", "{\"peft_type\": \"LORA\", \"r\": \"4\"}", LOOM_EFORMAT, "r is a string", "integer");
    expect_adapter_error("r_fraction", "{\"peft_type\": \"LORA\", \"r\": 4.5}", LOOM_ERANGE, "r is 4.5", "integer");
    expect_adapter_error("r_negative", "{\"peft_type\": \"LORA\", \"r\": -4}", LOOM_ERANGE, "r is -4", "[1, 1024]");
    expect_adapter_error("alpha_string", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": \"8\"}", LOOM_EFORMAT,
                         "lora_alpha is a string", "number");
    expect_adapter_error("dropout_range", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_dropout\": 2}", LOOM_ERANGE,
                         "lora_dropout is 2", "[0, 1]");
    expect_adapter_error("prefix_huge", "{\"peft_type\": \"PREFIX_TUNING\", \"num_virtual_tokens\": 1e12}", LOOM_ERANGE,
                         "num_virtual_tokens", "[1, 4096]");
    expect_adapter_error("prompt_bool", "{\"peft_type\": \"PROMPT_TUNING\", \"num_virtual_tokens\": true}", LOOM_EFORMAT,
                         "num_virtual_tokens is a boolean", "integer");
    expect_adapter_error("adapter_wrap", "{\"peft_type\": \"LOOM_ADAPTER\", \"adapter_dim\": 4294967312}", LOOM_ERANGE,
                         "adapter_dim is 4294967312", "integer");
    /* valid values still load, integer-valued reals included; null means the default */
    char dir[400];
    loom_peft_config cfg;
    CHECK_OK(loom_peft_config_load(&cfg, adapter_dir(dir, sizeof dir, "ok",
                                                     "{\"peft_type\": \"LORA\", \"r\": 4.0, \"lora_alpha\": 8, "
                                                     "\"lora_dropout\": null, \"target_modules\": [\"c_attn\"]}"),
                                   NULL, 0));
    CHECK(cfg.lora_r == 4 && cfg.lora_alpha == 8.0f && cfg.lora_dropout == 0.0f, "r %d alpha %g dropout %g", cfg.lora_r,
          cfg.lora_alpha, cfg.lora_dropout);
    char p[512];
    CHECK_OK(loom_peft_config_load(&cfg, test_path(p, sizeof p, "reference/gpt2-tiny-lora"), NULL, 0));
    CHECK(cfg.lora_r == 4 && cfg.lora_alpha == 8.0f, "reference adapter: r %d alpha %g", cfg.lora_r, cfg.lora_alpha);
}

/* ---- config.json ---- */

static void expect_config_error(const char *json, int code, const char *part1, const char *part2) {
    loom_config c;
    int rc = loom_config_parse(&c, json);
    CHECK(rc == code, "%s: rc %d (want %d): %s", json, rc, code, loom_errmsg());
    CHECK(has(loom_errmsg(), "config.json") && has(loom_errmsg(), part1) && has(loom_errmsg(), part2),
          "%s: message \"%s\" should name config.json, %s and %s", json, loom_errmsg(), part1, part2);
}

#define GPT2 "{\"model_type\": \"gpt2\", "
#define LLAMA "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 192, \"num_attention_heads\": 4, "

static void test_config(void) {
    expect_config_error(GPT2 "\"n_layer\": 1e12}", LOOM_ERANGE, "n_layer is 1000000000000", "[1, 1024]");
    expect_config_error(GPT2 "\"n_layer\": 4294967298}", LOOM_ERANGE, "n_layer is 4294967298", "[1, 1024]");
    expect_config_error(GPT2 "\"n_layer\": \"2\"}", LOOM_EFORMAT, "n_layer is a string", "integer");
    expect_config_error(GPT2 "\"n_layer\": 2.5}", LOOM_ERANGE, "n_layer is 2.5", "integer");
    /* 4 * n_embd overflowed int before validation */
    expect_config_error(GPT2 "\"n_embd\": 2147483647}", LOOM_ERANGE, "n_embd is 2147483647", "[1, 65536]");
    expect_config_error(GPT2 "\"n_inner\": -5}", LOOM_ERANGE, "n_inner is -5", "integer");
    expect_config_error(GPT2 "\"vocab_size\": [512]}", LOOM_EFORMAT, "vocab_size is an array", "integer");
    expect_config_error(GPT2 "\"layer_norm_epsilon\": \"1e-5\"}", LOOM_EFORMAT, "layer_norm_epsilon is a string", "number");
    expect_config_error(GPT2 "\"bos_token_id\": 1e300}", LOOM_ERANGE, "bos_token_id", "integer");
    /* head_dim * num_attention_heads overflowed */
    expect_config_error(LLAMA "\"head_dim\": 4611686018427387904}", LOOM_ERANGE, "head_dim is 4611686018427387904", "integer");
    expect_config_error(LLAMA "\"head_dim\": 8}", LOOM_EUNSUPPORTED, "head_dim 8", "hidden_size/num_attention_heads");
    expect_config_error(LLAMA "\"num_hidden_layers\": -1}", LOOM_ERANGE, "num_hidden_layers is -1", "[1, 1024]");
    expect_config_error(LLAMA "\"rope_theta\": \"10000\"}", LOOM_EFORMAT, "rope_theta is a string", "number");
    expect_config_error(LLAMA "\"eos_token_id\": [\"2\"]}", LOOM_EFORMAT, "eos_token_id", "integer");
    /* valid: integer-valued reals, nulls, an eos list (Llama 3 style: the first id is kept) */
    loom_config c;
    CHECK_OK(loom_config_parse(&c, GPT2 "\"n_layer\": 2.0, \"n_embd\": 64, \"n_head\": 4, \"n_inner\": null, "
                                        "\"vocab_size\": 512, \"n_positions\": 64}"));
    CHECK(c.n_layer == 2 && c.dim == 64 && c.hidden == 256 && c.vocab == 512 && c.max_seq == 64,
          "L %d C %d H %d V %d T %d", c.n_layer, c.dim, c.hidden, c.vocab, c.max_seq);
    CHECK_OK(loom_config_parse(&c, LLAMA "\"num_hidden_layers\": 2, \"vocab_size\": 512, \"head_dim\": 16, "
                                         "\"eos_token_id\": [7, 9], \"bos_token_id\": null}"));
    CHECK(c.eos_id == 7 && c.bos_id == -1 && c.n_layer == 2, "eos %d bos %d L %d", c.eos_id, c.bos_id, c.n_layer);
    char p[512];
    CHECK_OK(loom_config_load(&c, test_path(p, sizeof p, "reference/gpt2-tiny/config.json")));
    CHECK(c.hidden == 4 * c.dim && c.eos_id == 511, "reference config: hidden %d eos %d", c.hidden, c.eos_id);
}

/* ---- llama2.c header ---- */

static void test_llama2c_header(void) {
    /* vocab_size = INT_MIN: its negation (the "unshared classifier" sentinel) overflowed */
    int32_t h[7] = {64, 172, 5, 8, 4, INT32_MIN, 512};
    char p[512];
    CHECK_OK(loom_write_file_atomic(tmp_path(p, sizeof p, "intmin.bin"), h, sizeof h));
    loom_model *m = NULL;
    int rc = loom_model_load(&m, p);
    CHECK(rc == LOOM_EINVAL && !m, "rc %d: %s", rc, loom_errmsg());
    CHECK(has(loom_errmsg(), "intmin.bin") && has(loom_errmsg(), "vocab -2147483648"), "message: %s", loom_errmsg());
}

/* ---- non-finite weights ---- */

/* Copies the safetensors file src to dst with element `at` of tensor `name` set to v. */
static void copy_poisoned(const char *src, const char *dst, const char *name, size_t at, float v) {
    loom_st_file *f;
    CHECK_OK(loom_st_open(&f, src));
    loom_st_writer *w;
    CHECK_OK(loom_st_writer_create(&w));
    size_t n = loom_st_count(f);
    float **bufs = calloc(n, sizeof *bufs);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        const loom_st_tensor *t = loom_st_at(f, i);
        bufs[i] = malloc((t->numel ? t->numel : 1) * sizeof(float));
        CHECK_OK(loom_st_to_f32(t, bufs[i], t->numel));
        if (!strcmp(t->name, name) && at < t->numel) {
            bufs[i][at] = v;
            found = 1;
        }
        CHECK_OK(loom_st_writer_add(w, t->name, LOOM_DT_F32, t->ndim, t->shape, bufs[i]));
    }
    CHECK(found, "%s has no tensor %s with %zu elements", src, name, at + 1);
    CHECK_OK(loom_st_writer_write(w, dst));
    loom_st_writer_free(w);
    for (size_t i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    loom_st_close(f);
}

static void copy_file(const char *src, const char *dst) {
    char *data;
    size_t len;
    CHECK_OK(loom_read_file(src, &data, &len));
    CHECK_OK(loom_write_file_atomic(dst, data, len));
    free(data);
}

static void expect_model_error(const char *path, const char *part1, const char *part2) {
    loom_model *m = NULL;
    int rc = loom_model_load(&m, path);
    CHECK(rc == LOOM_EFORMAT && !m, "%s: rc %d: %s", path, rc, loom_errmsg());
    CHECK(has(loom_errmsg(), part1) && has(loom_errmsg(), part2) && has(loom_errmsg(), "non-finite"),
          "%s: message \"%s\" should name %s and %s", path, loom_errmsg(), part1, part2);
    loom_model_free(m);
}

static void test_nonfinite_weights(void) {
    char src[512], dir[400], p[512];
    /* a Hugging Face directory, NaN in one attention weight */
    tmp_path(dir, sizeof dir, "nan-gpt2");
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/config.json", dir);
    copy_file(test_path(src, sizeof src, "reference/gpt2-tiny/config.json"), p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    copy_poisoned(test_path(src, sizeof src, "reference/gpt2-tiny/model.safetensors"), p,
                  "transformer.h.1.attn.c_attn.weight", 77, NAN);
    expect_model_error(dir, "model.safetensors", "transformer.h.1.attn.c_attn.weight");
    /* +Inf in a Llama norm weight */
    tmp_path(dir, sizeof dir, "inf-llama");
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/config.json", dir);
    copy_file(test_path(src, sizeof src, "reference/llama-tiny/config.json"), p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    copy_poisoned(test_path(src, sizeof src, "reference/llama-tiny/model.safetensors"), p, "model.norm.weight", 3, INFINITY);
    expect_model_error(dir, "model.safetensors", "model.norm.weight");
    /* shards through an index: -Inf in the second shard */
    tmp_path(dir, sizeof dir, "shards");
    mkdir(dir, 0755);
    {
        loom_st_file *f;
        CHECK_OK(loom_st_open(&f, test_path(src, sizeof src, "reference/gpt2-tiny/model.safetensors")));
        loom_st_writer *w[2];
        CHECK_OK(loom_st_writer_create(&w[0]));
        CHECK_OK(loom_st_writer_create(&w[1]));
        size_t n = loom_st_count(f);
        float **bufs = calloc(n, sizeof *bufs);
        loom_strbuf map = {0};
        loom_strbuf_add(&map, "{\"weight_map\": {", 16);
        for (size_t i = 0; i < n; i++) {
            const loom_st_tensor *t = loom_st_at(f, i);
            bufs[i] = malloc(t->numel * sizeof(float));
            CHECK_OK(loom_st_to_f32(t, bufs[i], t->numel));
            int s = i >= n / 2;
            if (!strcmp(t->name, "transformer.ln_f.bias")) bufs[i][5] = -INFINITY;
            CHECK_OK(loom_st_writer_add(w[s], t->name, LOOM_DT_F32, t->ndim, t->shape, bufs[i]));
            char e[256];
            int k = snprintf(e, sizeof e, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "", t->name, s + 1);
            loom_strbuf_add(&map, e, (size_t)k);
        }
        loom_strbuf_add(&map, "}}", 2);
        for (int s = 0; s < 2; s++) {
            char sp[512];
            snprintf(sp, sizeof sp, "%s/model-0000%d-of-00002.safetensors", dir, s + 1);
            CHECK_OK(loom_st_writer_write(w[s], sp));
            loom_st_writer_free(w[s]);
        }
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        write_text(p, map.s);
        free(map.s);
        for (size_t i = 0; i < n; i++) free(bufs[i]);
        free(bufs);
        loom_st_close(f);
        snprintf(p, sizeof p, "%s/config.json", dir);
        copy_file(test_path(src, sizeof src, "reference/gpt2-tiny/config.json"), p);
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        expect_model_error(p, "model-00002-of-00002.safetensors", "transformer.ln_f.bias");
    }
    /* a llama2.c checkpoint: NaN in layer 0's wq (after the embeddings and the attention norms) */
    {
        char *data;
        size_t len;
        CHECK_OK(loom_read_file(test_path(src, sizeof src, "data/stories260K/stories260K.bin"), &data, &len));
        int32_t h[7];
        memcpy(h, data, sizeof h);
        size_t at = (size_t)h[5] * h[0] + (size_t)h[2] * h[0] + 5;
        float nan = NAN;
        memcpy(data + 28 + at * 4, &nan, 4);
        CHECK_OK(loom_write_file_atomic(tmp_path(p, sizeof p, "nan260K.bin"), data, len));
        free(data);
        expect_model_error(p, "nan260K.bin", "model.layers.0.self_attn.q_proj.weight");
    }
    /* an adapter: NaN in a LoRA B matrix */
    {
        loom_model *m = NULL;
        CHECK_OK(loom_model_load(&m, test_path(src, sizeof src, "reference/gpt2-tiny")));
        tmp_path(dir, sizeof dir, "nan-lora");
        mkdir(dir, 0755);
        snprintf(p, sizeof p, "%s/adapter_config.json", dir);
        copy_file(test_path(src, sizeof src, "reference/gpt2-tiny-lora/adapter_config.json"), p);
        snprintf(p, sizeof p, "%s/adapter_model.safetensors", dir);
        const char *bad = "base_model.model.transformer.h.0.attn.c_proj.lora_B.weight";
        copy_poisoned(test_path(src, sizeof src, "reference/gpt2-tiny-lora/adapter_model.safetensors"), p, bad, 2, NAN);
        loom_tset *ts = NULL;
        int rc = m ? loom_tset_load_peft(&ts, m, dir) : LOOM_OK;
        CHECK(rc == LOOM_EFORMAT && !ts, "rc %d: %s", rc, loom_errmsg());
        CHECK(has(loom_errmsg(), "adapter_model.safetensors") && has(loom_errmsg(), bad) && has(loom_errmsg(), "non-finite"),
              "message: %s", loom_errmsg());
        loom_tset_free(ts);
        /* the unpoisoned reference adapter still loads */
        CHECK_OK(loom_tset_load_peft(&ts, m, test_path(src, sizeof src, "reference/gpt2-tiny-lora")));
        loom_tset_free(ts);
        loom_model_free(m);
    }
    /* the unpoisoned models still load */
    loom_model *m = NULL;
    CHECK_OK(loom_model_load(&m, test_path(src, sizeof src, "data/stories260K/stories260K.bin")));
    loom_model_free(m);
}

/* ---- empty texts and empty replacements ---- */

static void test_empty_pieces(void) {
    /* a dataset whose first text is empty: the token pool was still unallocated */
    loom_tokenizer *tok;
    CHECK_OK(loom_tokenizer_byte(&tok));
    const char *texts[3] = {"", "ab", ""};
    size_t lens[3] = {0, 2, 0};
    loom_dataset *ds = NULL;
    CHECK_OK(loom_dataset_from_texts(&ds, texts, lens, NULL, 3, NULL, tok));
    CHECK(ds && ds->n == 3 && ds->ex[0].n == 0 && ds->ex[1].n == 2 && ds->ex[1].ids[0] == 'a' && ds->ex[1].ids[1] == 'b',
          "examples: %zu", ds ? ds->n : 0);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    /* a Replace normalizer deleting the first character: an empty piece went into an empty buffer */
    char p[512];
    write_text(tmp_path(p, sizeof p, "replace.json"),
               "{\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"String\": \"a\"}, \"content\": \"\"},"
               " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}}");
    CHECK_OK(loom_tokenizer_load(&tok, p));
    int32_t *ids = NULL;
    size_t n = 0;
    if (tok) CHECK_OK(loom_tokenizer_encode(tok, "abab", 4, 0, &ids, &n));
    CHECK(n == 2 && ids && ids[0] == 1 && ids[1] == 1, "\"abab\" without the a's is b b: %zu ids", n);
    free(ids);
    loom_tokenizer_free(tok);
}

/* ---- truncation keeps the label / response; shards without targets ---- */

/* Targets in one batch (B rows of T) and, in want (NUL-terminated), the target ids of row 0 in order. */
static size_t batch_targets(loom_batcher *b, size_t B, size_t T, int32_t *row0, size_t *n_row0) {
    int32_t *tk = malloc(B * T * sizeof *tk), *tg = malloc(B * T * sizeof *tg);
    size_t n = 0;
    *n_row0 = 0;
    CHECK_OK(loom_batcher_fill(b, 0, tk, tg, NULL));
    for (size_t i = 0; i < B * T; i++)
        if (tg[i] >= 0) {
            n++;
            if (i < T) row0[(*n_row0)++] = tg[i];
        }
    free(tk);
    free(tg);
    return n;
}

static void test_truncation(void) {
    loom_tokenizer *tok;
    CHECK_OK(loom_tokenizer_byte(&tok));
    loom_dataset_opts o;
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = 1;
    bo.T = 32;
    bo.shuffle = 0;
    int32_t row0[64];
    size_t n0;
    /* classification: a 200-character text; at T = 32 the label " pos" must still be the target */
    char csv[512] = "\"";
    for (int i = 0; i < 200; i++) strcat(csv, i % 10 == 9 ? " " : "x");
    strcat(csv, "\",\"pos\"\n\"short\",\"neg\"\n");
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_CSV;
    o.text_col = "1";
    o.label_col = "2";
    loom_dataset *ds = NULL;
    CHECK_OK(loom_dataset_load_buffer(&ds, csv, strlen(csv), "cls.csv", &o, tok));
    loom_batcher *b = NULL;
    if (ds) CHECK_OK(loom_batcher_create(&b, ds, NULL, 0, &bo));
    if (b) {
        size_t n = batch_targets(b, 1, 32, row0, &n0);
        CHECK(n == 4 && row0[0] == ' ' && row0[1] == 'p' && row0[2] == 'o' && row0[3] == 's',
              "long classification example: %zu targets (want the 4 bytes of \" pos\")", n);
        CHECK(loom_batcher_untargeted(b) == 0, "untargeted %zu", loom_batcher_untargeted(b));
    }
    loom_batcher_free(b);
    loom_dataset_free(ds);
    /* instruction: a long instruction, response "OK" + EOS */
    char js[1024] = "{\"instruction\": \"";
    for (int i = 0; i < 300; i++) strcat(js, i % 7 == 6 ? " " : "w");
    strcat(js, "\", \"output\": \"OK\"}\n");
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_ALPACA;
    ds = NULL;
    b = NULL;
    CHECK_OK(loom_dataset_load_buffer(&ds, js, strlen(js), "inst.jsonl", &o, tok));
    if (ds) CHECK_OK(loom_batcher_create(&b, ds, NULL, 0, &bo));
    if (b) {
        size_t n = batch_targets(b, 1, 32, row0, &n0);
        CHECK(n == 3 && row0[0] == 'O' && row0[1] == 'K' && row0[2] == loom_tokenizer_eos(tok),
              "long instruction: %zu targets (want O, K, EOS)", n);
    }
    loom_batcher_free(b);
    /* a response longer than the row: it starts right after the last prompt token and is cut at the end */
    bo.T = 4;
    b = NULL;
    const char *lr = "{\"instruction\": \"ask\", \"output\": \"abcdefghij\"}\n";
    loom_dataset_free(ds);
    ds = NULL;
    CHECK_OK(loom_dataset_load_buffer(&ds, lr, strlen(lr), "long.jsonl", &o, tok));
    if (ds) CHECK_OK(loom_batcher_create(&b, ds, NULL, 0, &bo));
    if (b) {
        size_t n = batch_targets(b, 1, 4, row0, &n0);
        CHECK(n == 4 && row0[0] == 'a' && row0[3] == 'd', "long response: %zu targets from %c", n, n ? row0[0] : '?');
    }
    loom_batcher_free(b);
    loom_dataset_free(ds);
    /* a shard where no sample has a target is refused; some without targets are counted */
    const char *one[2] = {"a", "b"};
    size_t lens[2] = {1, 1};
    ds = NULL;
    CHECK_OK(loom_dataset_from_texts(&ds, one, lens, NULL, 2, NULL, tok));
    bo.T = 8;
    bo.pack = LOOM_PACK_OFF;
    b = NULL;
    int rc = ds ? loom_batcher_create(&b, ds, NULL, 0, &bo) : LOOM_OK;
    CHECK(rc == LOOM_EINVAL && !b && has(loom_errmsg(), "none of the 2 samples has a target"), "rc %d: %s", rc,
          loom_errmsg());
    loom_dataset_free(ds);
    const char *mixed[2] = {"a", "bcd"};
    size_t mlens[2] = {1, 3};
    ds = NULL;
    CHECK_OK(loom_dataset_from_texts(&ds, mixed, mlens, NULL, 2, NULL, tok));
    if (ds) CHECK_OK(loom_batcher_create(&b, ds, NULL, 0, &bo));
    CHECK(b && loom_batcher_untargeted(b) == 1, "one of two samples untargeted: %zu", b ? loom_batcher_untargeted(b) : 0);
    loom_batcher_free(b);
    loom_dataset_free(ds);
    /* the README's AG News run (text column 3, label column 1) at the default --seq 64, and the
     * self-instruct seed tasks at --seq 128: every row has targets */
    char p[512];
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_CSV;
    o.text_col = "3";
    o.label_col = "1";
    o.labels = "1=World,2=Sports,3=Business,4=Sci/Tech";
    o.max_examples = 64;
    ds = NULL;
    CHECK_OK(loom_dataset_load(&ds, test_path(p, sizeof p, "data/ag-news/test.csv"), &o, tok));
    loom_batcher_opts_init(&bo);
    bo.B = 64;
    bo.T = 64;
    b = NULL;
    if (ds) CHECK_OK(loom_batcher_create(&b, ds, NULL, 0, &bo));
    if (b) {
        CHECK(loom_batcher_untargeted(b) == 0, "AG News: %zu of 64 rows without targets", loom_batcher_untargeted(b));
        size_t n = batch_targets(b, 64, 64, row0, &n0);
        CHECK(n >= 64 * 5, "AG News at T = 64: %zu targets in 64 rows (a label is at least ' ' + 5 bytes)", n);
    }
    loom_batcher_free(b);
    loom_dataset_free(ds);
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_SELF_INSTRUCT;
    ds = NULL;
    CHECK_OK(loom_dataset_load(&ds, test_path(p, sizeof p, "data/self-instruct/seed_tasks.jsonl"), &o, tok));
    bo.T = 128;
    bo.B = 16;
    b = NULL;
    if (ds) CHECK_OK(loom_batcher_create(&b, ds, NULL, 0, &bo));
    if (b) CHECK(loom_batcher_untargeted(b) == 0, "self-instruct: %zu rows without targets", loom_batcher_untargeted(b));
    loom_batcher_free(b);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/loom_badinput_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    loom_set_log(NULL, NULL, LOOM_ERROR + 1);
    test_adapter_config();
    test_config();
    test_llama2c_header();
    test_nonfinite_weights();
    test_empty_pieces();
    test_truncation();
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_summary();
}
