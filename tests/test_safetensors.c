#include "loom/core.h"
#include "loom/half.h"
#include "loom/safetensors.h"
#include "test.h"

#include <dirent.h>
#include <jansson.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* Files are written under a fresh scratch directory in /tmp, removed at the end. */
static char scratch[128];

static const char *tmp_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", scratch, name);
    return buf;
}

static int shape_is(const loom_st_tensor *t, int ndim, const int64_t *shape) {
    if (!t || t->ndim != ndim) return 0;
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (t->shape[d] != shape[d]) return 0;
        numel *= (size_t)shape[d];
    }
    return t->numel == numel && t->nbytes == numel * loom_dtype_size(t->dtype);
}

static double mean_std(const float *x, size_t n, double *std) {
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    double m = s / (double)n;
    for (size_t i = 0; i < n; i++) s2 += (x[i] - m) * (x[i] - m);
    *std = sqrt(s2 / (double)n);
    return m;
}

/* ---------------------------------------------------------------- reference files */

static void test_reference_model(void) {
    char p[512];
    loom_st_file *f;
    CHECK_OK(loom_st_open(&f, test_path(p, sizeof p, "reference/gpt2-tiny/model.safetensors")));
    if (!f) return;
    /* README listing: 28 tensors, lm_head omitted (tied) */
    CHECK(loom_st_count(f) == 28, "count %zu", loom_st_count(f));
    CHECK(loom_st_find(f, "lm_head.weight") == NULL, "lm_head is tied, not stored");
    const loom_st_tensor *wte = loom_st_find(f, "transformer.wte.weight");
    CHECK(wte && wte->dtype == LOOM_DT_F32 && shape_is(wte, 2, (int64_t[]){512, 64}), "wte F32 [512,64]");
    CHECK(shape_is(loom_st_find(f, "transformer.wpe.weight"), 2, (int64_t[]){64, 64}), "wpe [64,64]");
    CHECK(shape_is(loom_st_find(f, "transformer.h.0.attn.c_attn.weight"), 2, (int64_t[]){64, 192}), "c_attn [64,192]");
    CHECK(shape_is(loom_st_find(f, "transformer.h.1.mlp.c_proj.weight"), 2, (int64_t[]){256, 64}), "c_proj [256,64]");
    CHECK(shape_is(loom_st_find(f, "transformer.ln_f.bias"), 1, (int64_t[]){64}), "ln_f.bias [64]");
    CHECK(strcmp(loom_st_at(f, 0)->name, "transformer.wte.weight") == 0, "header order: first is %s",
          loom_st_at(f, 0)->name);
    CHECK(loom_st_at(f, 28) == NULL, "at() past the end");
    if (wte) {
        /* README: wte ~ N(0, 0.2^2); 32768 draws give the std to within ~0.001 */
        float *w = malloc(wte->numel * sizeof *w);
        CHECK_OK(loom_st_to_f32(wte, w, wte->numel));
        double sd, m = mean_std(w, wte->numel, &sd);
        CHECK(fabs(m) < 0.01 && fabs(sd - 0.2) < 0.01, "wte mean %g std %g", m, sd);
        float first;
        memcpy(&first, wte->data, 4);
        CHECK(w[0] == first, "to_f32 copies the raw float32 values");
        CHECK(loom_st_to_f32(wte, w, wte->numel - 1) == LOOM_EINVAL, "wrong count is EINVAL");
        int32_t dummy[1];
        CHECK(loom_st_to_i32(wte, dummy, 1) != LOOM_OK, "to_i32 on F32 fails");
        free(w);
    }
    const loom_st_tensor *g = loom_st_find(f, "transformer.h.0.ln_1.weight");
    CHECK(g != NULL, "transformer.h.0.ln_1.weight present");
    if (g) {
        /* LayerNorm gains 1 + N(0, 0.1^2) */
        float w[64];
        CHECK_OK(loom_st_to_f32(g, w, 64));
        double sd, m = mean_std(w, 64, &sd);
        CHECK(fabs(m - 1) < 0.06 && sd > 0.05 && sd < 0.15, "ln_1 gain mean %g std %g", m, sd);
    }
    loom_st_close(f);

    CHECK_OK(loom_st_open(&f, test_path(p, sizeof p, "reference/llama-tiny/model.safetensors")));
    if (f) {
        CHECK(loom_st_count(f) == 21, "llama count %zu", loom_st_count(f));
        CHECK(shape_is(loom_st_find(f, "model.layers.1.self_attn.k_proj.weight"), 2, (int64_t[]){32, 64}), "k_proj");
        CHECK(shape_is(loom_st_find(f, "lm_head.weight"), 2, (int64_t[]){512, 64}), "lm_head");
        CHECK(shape_is(loom_st_find(f, "model.layers.0.mlp.gate_proj.weight"), 2, (int64_t[]){192, 64}), "gate");
        loom_st_close(f);
    }
}

static void test_reference_batch(void) {
    char p[512];
    loom_st_file *f;
    CHECK_OK(loom_st_open(&f, test_path(p, sizeof p, "reference/gpt2-tiny/reference.safetensors")));
    if (!f) return;
    /* 4 batch/loss tensors + grad, adamw1, adamw2 of the 28 weights + loss_after_adamw1 */
    CHECK(loom_st_count(f) == 4 + 3 * 28 + 1, "count %zu", loom_st_count(f));
    const loom_st_tensor *tok = loom_st_find(f, "tokens"), *tgt = loom_st_find(f, "targets");
    CHECK(tok && tok->dtype == LOOM_DT_I32 && shape_is(tok, 2, (int64_t[]){4, 32}), "tokens I32 [4,32]");
    CHECK(tgt && tgt->dtype == LOOM_DT_I32 && shape_is(tgt, 2, (int64_t[]){4, 32}), "targets I32 [4,32]");
    if (tok && tgt && tok->numel == 128 && tgt->numel == 128) {
        int32_t a[128], b[128];
        CHECK_OK(loom_st_to_i32(tok, a, 128));
        CHECK_OK(loom_st_to_i32(tgt, b, 128));
        /* README: tokens[0,0] = 0, tokens[0,1] = V-1, targets = the next token of the same sequence */
        CHECK(a[0] == 0 && a[1] == 511, "tokens start %d %d", a[0], a[1]);
        int shift_ok = 1, range_ok = 1;
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < 32; t++) {
                if (t < 31) shift_ok &= b[r * 32 + t] == a[r * 32 + t + 1];
                range_ok &= a[r * 32 + t] >= 0 && a[r * 32 + t] < 512 && b[r * 32 + t] >= 0 && b[r * 32 + t] < 512;
            }
        CHECK(shift_ok, "targets are tokens shifted by one");
        CHECK(range_ok, "ids inside the vocabulary");
        float x[128];
        CHECK(loom_st_to_f32(tok, x, 128) == LOOM_EUNSUPPORTED, "to_f32 on I32 is unsupported");
    }
    const loom_st_tensor *loss = loom_st_find(f, "loss");
    CHECK(loss && loss->dtype == LOOM_DT_F32 && loss->ndim == 0 && loss->numel == 1 && loss->nbytes == 4,
          "loss is an F32 scalar");
    if (loss) {
        float l;
        CHECK_OK(loom_st_to_f32(loss, &l, 1));
        CHECK(isfinite(l) && l > 0 && l < 50, "loss %g", l);
    }
    CHECK(shape_is(loom_st_find(f, "logits"), 3, (int64_t[]){4, 32, 512}), "logits [4,32,512]");
    CHECK(shape_is(loom_st_find(f, "loss_after_adamw1"), 0, NULL), "loss_after_adamw1 []");
    CHECK(shape_is(loom_st_find(f, "grad.transformer.wte.weight"), 2, (int64_t[]){512, 64}), "grad.wte");
    CHECK(shape_is(loom_st_find(f, "adamw2.transformer.ln_f.bias"), 1, (int64_t[]){64}), "adamw2.ln_f.bias");
    /* README provenance: the nanoGPT oracle commit */
    const char *oracle = loom_st_meta(f, "oracle");
    CHECK(oracle && strstr(oracle, "karpathy/nanoGPT@3adf61e154c3fe3fca428ad6bc3818b27a3b8291"), "oracle %s",
          oracle ? oracle : "(null)");
    CHECK(loom_st_meta(f, "no such key") == NULL, "absent metadata key");
    CHECK(loom_st_meta_count(f) >= 1, "metadata entries %zu", loom_st_meta_count(f));
    loom_st_close(f);
}

/* ---------------------------------------------------------------- round trips */

static void test_round_trip(void) {
    char path[256];
    tmp_path(path, sizeof path, "all.safetensors");
    /* one tensor of every dtype, with recognisable bytes */
    enum { N = 6 };
    uint8_t raw[LOOM_DT_COUNT][N * 8];
    for (int dt = 0; dt < LOOM_DT_COUNT; dt++)
        for (int i = 0; i < N * 8; i++) raw[dt][i] = (uint8_t)(dt * 31 + i * 7 + 1);
    for (int i = 0; i < N; i++) raw[LOOM_DT_BOOL][i] = (uint8_t)(i & 1);
    double f64[N] = {1.5, -2.25, 1e30, -0.0, 3.0, 1e-3};
    memcpy(raw[LOOM_DT_F64], f64, sizeof f64);
    int64_t i64[N] = {0, -1, INT32_MAX, INT32_MIN, 12345, -99};
    memcpy(raw[LOOM_DT_I64], i64, sizeof i64);
    float f32[N] = {0.1f, -3.5f, 1e-8f, 65504.0f, 1.0f / 3.0f, -0.0f};

    loom_st_writer *w;
    CHECK_OK(loom_st_writer_create(&w));
    if (!w) return;
    int64_t shape2[2] = {2, 3}, shape0[2] = {0, 5};
    char name[32];
    for (int dt = 0; dt < LOOM_DT_COUNT; dt++) {
        snprintf(name, sizeof name, "t.%s", loom_dtype_name((loom_dtype)dt));
        CHECK_OK(loom_st_writer_add(w, name, (loom_dtype)dt, 2, shape2, raw[dt]));
    }
    CHECK_OK(loom_st_writer_add(w, "scalar", LOOM_DT_F32, 0, NULL, &f32[1]));
    CHECK_OK(loom_st_writer_add(w, "empty", LOOM_DT_F32, 2, shape0, NULL));
    CHECK_OK(loom_st_writer_add(w, "odd", LOOM_DT_U8, 1, (int64_t[]){3}, raw[LOOM_DT_U8]));
    CHECK_OK(loom_st_writer_add_f32(w, "as_f16", LOOM_DT_F16, 2, shape2, f32)); /* starts at an odd offset */
    CHECK_OK(loom_st_writer_add_f32(w, "as_bf16", LOOM_DT_BF16, 1, (int64_t[]){N}, f32));
    CHECK_OK(loom_st_writer_add_f32(w, "as_f32", LOOM_DT_F32, 1, (int64_t[]){N}, f32));
    CHECK_OK(loom_st_writer_meta(w, "format", "pt"));
    CHECK_OK(loom_st_writer_meta(w, "note", "first"));
    CHECK_OK(loom_st_writer_meta(w, "note", "caf\xc3\xa9 \"quoted\"")); /* replaces */
    CHECK(loom_st_writer_count(w) == LOOM_DT_COUNT + 6, "writer count");
    CHECK_OK(loom_st_writer_write(w, path));

    loom_st_file *f;
    CHECK_OK(loom_st_open(&f, path));
    if (f) {
        CHECK(loom_st_count(f) == LOOM_DT_COUNT + 6, "count %zu", loom_st_count(f));
        for (int dt = 0; dt < LOOM_DT_COUNT; dt++) {
            snprintf(name, sizeof name, "t.%s", loom_dtype_name((loom_dtype)dt));
            const loom_st_tensor *t = loom_st_find(f, name);
            CHECK(t && t->dtype == (loom_dtype)dt && shape_is(t, 2, shape2) &&
                      memcmp(t->data, raw[dt], t->nbytes) == 0,
                  "%s round trip", name);
            CHECK(t == loom_st_at(f, (size_t)dt), "%s in add order", name);
        }
        const loom_st_tensor *t = loom_st_find(f, "scalar");
        float v = 0;
        CHECK(t && t->ndim == 0 && t->numel == 1 && loom_st_to_f32(t, &v, 1) == LOOM_OK && v == f32[1], "scalar");
        t = loom_st_find(f, "empty");
        CHECK(t && t->numel == 0 && t->nbytes == 0 && t->ndim == 2 && t->shape[1] == 5, "empty tensor");
        CHECK(t && loom_st_to_f32(t, NULL, 0) == LOOM_OK, "empty to_f32");

        float got[N];
        t = loom_st_find(f, "as_f16");
        CHECK(t && t->dtype == LOOM_DT_F16 && ((uintptr_t)t->data & 1), "as_f16 stored F16 at an odd address");
        int ok = t && loom_st_to_f32(t, got, N) == LOOM_OK;
        for (int i = 0; ok && i < N; i++) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
            ok &= h == loom_f32_to_f16(f32[i]) && got[i] == loom_f16_to_f32(h);
        }
        CHECK(ok, "F16 written with loom_f32_to_f16 and read back");
        t = loom_st_find(f, "as_bf16");
        ok = t && t->dtype == LOOM_DT_BF16 && loom_st_to_f32(t, got, N) == LOOM_OK;
        for (int i = 0; ok && i < N; i++) {
            uint16_t h;
            memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
            ok &= h == loom_f32_to_bf16(f32[i]) && got[i] == loom_bf16_to_f32(h);
        }
        CHECK(ok, "BF16 written with loom_f32_to_bf16 and read back");
        t = loom_st_find(f, "as_f32");
        CHECK(t && loom_st_to_f32(t, got, N) == LOOM_OK && memcmp(got, f32, sizeof f32) == 0, "F32 exact");

        t = loom_st_find(f, "t.F64");
        ok = t && loom_st_to_f32(t, got, N) == LOOM_OK;
        for (int i = 0; ok && i < N; i++) ok &= got[i] == (float)f64[i];
        CHECK(ok, "F64 to float");
        int32_t iv[N];
        t = loom_st_find(f, "t.I64");
        ok = t && loom_st_to_i32(t, iv, N) == LOOM_OK;
        for (int i = 0; ok && i < N; i++) ok &= iv[i] == i64[i];
        CHECK(ok, "I64 to int32 in range");
        t = loom_st_find(f, "t.BOOL");
        ok = t && loom_st_to_i32(t, iv, N) == LOOM_OK;
        for (int i = 0; ok && i < N; i++) ok &= iv[i] == (i & 1);
        CHECK(ok, "BOOL to int32");
        t = loom_st_find(f, "t.I8");
        ok = t && loom_st_to_i32(t, iv, N) == LOOM_OK;
        for (int i = 0; ok && i < N; i++) ok &= iv[i] == (int8_t)raw[LOOM_DT_I8][i];
        CHECK(ok, "I8 sign-extended");

        CHECK(loom_st_meta(f, "format") && strcmp(loom_st_meta(f, "format"), "pt") == 0, "meta format");
        CHECK(loom_st_meta(f, "note") && strcmp(loom_st_meta(f, "note"), "caf\xc3\xa9 \"quoted\"") == 0,
              "meta replaced, UTF-8 and quotes kept");
        const char *k, *v2;
        CHECK(loom_st_meta_count(f) == 2 && loom_st_meta_at(f, 0, &k, &v2) == LOOM_OK && strcmp(k, "format") == 0,
              "meta order");
        CHECK(loom_st_meta_at(f, 2, &k, &v2) == LOOM_ENOTFOUND, "meta_at past the end");
        loom_st_close(f);
    }

    /* I64 out of int32 range */
    int64_t big[2] = {1, (int64_t)INT32_MAX + 1};
    loom_st_writer *w2;
    CHECK_OK(loom_st_writer_create(&w2));
    CHECK_OK(loom_st_writer_add(w2, "big", LOOM_DT_I64, 1, (int64_t[]){2}, big));
    void *buf;
    size_t len;
    CHECK_OK(loom_st_writer_serialize(w2, &buf, &len));
    CHECK_OK(loom_st_open_memory(&f, buf, len, "big"));
    if (f) {
        int32_t iv[2];
        CHECK(loom_st_to_i32(loom_st_find(f, "big"), iv, 2) == LOOM_ERANGE, "I64 out of range: %s", loom_errmsg());
        loom_st_close(f);
    }
    loom_free(buf);
    loom_st_writer_free(w2);
    loom_st_writer_free(w);
}

/* The bytes on disk, checked field by field with jansson directly rather than through the reader. */
static void test_layout(void) {
    char path[256];
    tmp_path(path, sizeof path, "layout.safetensors");
    float a[3] = {1, 2, 3};
    uint8_t b[5] = {1, 2, 3, 4, 5};
    int32_t c[2] = {7, -7};
    loom_st_writer *w;
    CHECK_OK(loom_st_writer_create(&w));
    CHECK_OK(loom_st_writer_add(w, "zeta", LOOM_DT_F32, 1, (int64_t[]){3}, a));
    CHECK_OK(loom_st_writer_add(w, "alpha", LOOM_DT_U8, 1, (int64_t[]){5}, b));
    CHECK_OK(loom_st_writer_add(w, "mid", LOOM_DT_I32, 2, (int64_t[]){1, 2}, c));
    CHECK_OK(loom_st_writer_write(w, path));
    char *data;
    size_t len;
    CHECK_OK(loom_read_file(path, &data, &len));
    void *mem;
    size_t mlen;
    CHECK_OK(loom_st_writer_serialize(w, &mem, &mlen));
    CHECK(mem && mlen == len && memcmp(mem, data, len) == 0, "serialize gives the file's bytes");
    loom_free(mem);
    loom_st_writer_free(w);
    if (!data) return;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | (uint8_t)data[i];
    CHECK(n % 8 == 0 && 8 + n + 12 + 5 + 8 == len, "header length %llu, file %zu", (unsigned long long)n, len);
    json_error_t err;
    json_t *root = json_loadb(data + 8, n, 0, &err);
    CHECK(root != NULL, "header parses: %s", err.text);
    /* the JSON ends at the last '}' and only spaces follow */
    size_t end = n;
    while (end > 0 && data[8 + end - 1] == ' ') end--;
    CHECK(end > 0 && data[8 + end - 1] == '}' && n - end < 8, "padded with %zu spaces", n - end);
    CHECK(data[8] == '{', "header starts with '{'");
    const char *names[3] = {"zeta", "alpha", "mid"};
    long long expect[3][2] = {{0, 12}, {12, 17}, {17, 25}};
    for (int i = 0; i < 3 && root; i++) {
        json_t *e = json_object_get(root, names[i]), *o = json_object_get(e, "data_offsets");
        CHECK(json_integer_value(json_array_get(o, 0)) == expect[i][0] &&
                  json_integer_value(json_array_get(o, 1)) == expect[i][1],
              "%s offsets", names[i]);
    }
    CHECK(root && strcmp(json_string_value(json_object_get(json_object_get(root, "alpha"), "dtype")), "U8") == 0,
          "dtype name");
    CHECK(root && json_object_get(root, "__metadata__") == NULL, "no empty __metadata__");
    CHECK(memcmp(data + 8 + n, a, 12) == 0 && memcmp(data + 8 + n + 12, b, 5) == 0 &&
              memcmp(data + 8 + n + 17, c, 8) == 0,
          "data contiguous in add order");
    json_decref(root);
    free(data);

    /* no temporary file is left beside the output */
    DIR *d = opendir(scratch);
    int leftovers = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) leftovers += strstr(e->d_name, ".tmp") != NULL;
    if (d) closedir(d);
    CHECK(leftovers == 0, "%d temporary files left", leftovers);
}

static void test_writer_errors(void) {
    loom_st_writer *w;
    CHECK_OK(loom_st_writer_create(&w));
    float x[4] = {0};
    int64_t s1[1] = {4}, neg[1] = {-1}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 4};
    CHECK_OK(loom_st_writer_add(w, "x", LOOM_DT_F32, 1, s1, x));
    CHECK(loom_st_writer_add(w, "x", LOOM_DT_F32, 1, s1, x) == LOOM_EINVAL, "duplicate name");
    CHECK(strstr(loom_errmsg(), "'x'") != NULL, "message names the tensor: %s", loom_errmsg());
    CHECK(loom_st_writer_add(w, "__metadata__", LOOM_DT_F32, 1, s1, x) == LOOM_EINVAL, "reserved name");
    CHECK(loom_st_writer_add(w, "bad\xff", LOOM_DT_F32, 1, s1, x) == LOOM_EINVAL, "invalid UTF-8 name");
    CHECK(loom_st_writer_add(w, "n", LOOM_DT_F32, 1, neg, x) == LOOM_EINVAL, "negative dim");
    CHECK(loom_st_writer_add(w, "n", LOOM_DT_F32, 9, s9, x) == LOOM_EINVAL, "too many dims");
    CHECK(loom_st_writer_add(w, "n", LOOM_DT_F32, 1, s1, NULL) == LOOM_EINVAL, "NULL data");
    CHECK(loom_st_writer_add(w, "n", (loom_dtype)99, 1, s1, x) == LOOM_EINVAL, "bad dtype");
    CHECK(loom_st_writer_add_f32(w, "n", LOOM_DT_I32, 1, s1, x) == LOOM_EINVAL, "floats as I32");
    CHECK(loom_st_writer_add(w, "huge", LOOM_DT_F32, 3, (int64_t[]){INT64_MAX, INT64_MAX, 2}, x) == LOOM_EINVAL,
          "numel overflow");
    CHECK(loom_st_writer_meta(w, "k", "bad\xc3") == LOOM_EINVAL, "invalid UTF-8 metadata");
    CHECK(loom_st_writer_count(w) == 1, "failed adds add nothing");
    CHECK(loom_st_writer_write(w, "/nonexistent-dir/x.safetensors") == LOOM_EIO, "unwritable path");
    loom_st_writer_free(w);
    loom_st_writer_free(NULL);
    loom_st_close(NULL);
    loom_st_set_close(NULL);
}

/* ---------------------------------------------------------------- malformed input */

/* Builds "u64 length | header | data_len zero bytes"; hlen < 0 means the header's own length. */
static uint8_t *craft(const char *header, long long hlen, size_t data_len, size_t *len) {
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    uint8_t *b = calloc(1, *len);
    uint64_t n = hlen < 0 ? h : (uint64_t)hlen;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(n >> (8 * i));
    memcpy(b + 8, header, h);
    return b;
}

static void test_malformed(void) {
    static const struct {
        const char *header;
        size_t data_len;
        int rc;
        const char *tensor; /* the message must name it */
        const char *why;    /* and contain this */
    } cases[] = {
        {"not json", 0, LOOM_EFORMAT, NULL, "JSON"},
        {"{\"a\":", 0, LOOM_EFORMAT, NULL, "JSON"},
        {"[1,2]", 0, LOOM_EFORMAT, NULL, "object"},
        {"{\"a\":1}", 0, LOOM_EFORMAT, "'a'", "object"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'", "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'", "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, LOOM_EFORMAT, "'a'", "data_offsets"},
        {"{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'", "dtype"},
        {"{\"a\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'", "F17"},
        {"{\"a\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, LOOM_EUNSUPPORTED, "'a'", "U16"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":\"x\",\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'", "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'", "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'", "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'", "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, LOOM_EUNSUPPORTED,
         "'a'", "dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT,
         "'a'", "overflow"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, "'a'",
         "overflow"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4, LOOM_EFORMAT, NULL,
         "JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, LOOM_EFORMAT, "'a'", "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, LOOM_EFORMAT, "'a'", "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,-4]}}", 4, LOOM_EFORMAT, "'a'", "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[\"0\",\"4\"]}}", 4, LOOM_EFORMAT, "'a'",
         "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"b\":0}}}", 4, LOOM_EFORMAT, "'a'", "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, LOOM_EFORMAT, "'a'", "begin"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 4, LOOM_EFORMAT, "'a'", "past the end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 4, LOOM_EFORMAT, NULL,
         "JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, LOOM_EFORMAT, "'a'", "needs 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000],\"data_offsets\":[0,4000000]}}", 8, LOOM_EFORMAT, "'a'",
         "past the end"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, LOOM_EFORMAT, "'b'", "overlaps tensor 'a'"},
        {"{\"a\":{\"dtype\":\"I8\",\"shape\":[12],\"data_offsets\":[0,12]},"
         "\"b\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[4,6]}}",
         12, LOOM_EFORMAT, "'b'", "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, LOOM_EFORMAT, NULL, "duplicate"},
        {"{\"__metadata__\":[\"x\"]}", 0, LOOM_EFORMAT, NULL, "__metadata__"},
        {"{\"__metadata__\":{\"k\":1}}", 0, LOOM_EFORMAT, NULL, "'k'"},
        /* valid: nothing at all, a gap between tensors, an empty tensor inside another's bytes */
        {"{}", 0, LOOM_OK, NULL, NULL},
        {"{\"__metadata__\":{}}  ", 0, LOOM_OK, NULL, NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
         "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[6,6]},"
         "\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[12,16]}}",
         16, LOOM_OK, NULL, NULL},
        {"{\"e\":{\"dtype\":\"F32\",\"shape\":[0,4611686018427387904],\"data_offsets\":[0,0]}}", 0, LOOM_OK, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t len;
        uint8_t *b = craft(cases[i].header, -1, cases[i].data_len, &len);
        loom_st_file *f;
        int rc = loom_st_open_memory(&f, b, len, "crafted.safetensors");
        CHECK(rc == cases[i].rc, "case %zu (%s): rc %d, want %d: %s", i, cases[i].header, rc, cases[i].rc,
              loom_errmsg());
        if (rc != LOOM_OK) {
            const char *m = loom_errmsg();
            CHECK(f == NULL && strstr(m, "crafted.safetensors") && (!cases[i].tensor || strstr(m, cases[i].tensor)) &&
                      (!cases[i].why || strstr(m, cases[i].why)),
                  "case %zu message: %s", i, m);
        } else if (f) {
            for (size_t j = 0; j < loom_st_count(f); j++) {
                const loom_st_tensor *t = loom_st_at(f, j);
                CHECK((const uint8_t *)t->data >= b + len - cases[i].data_len &&
                          (const uint8_t *)t->data + t->nbytes <= b + len,
                      "case %zu tensor %s in bounds", i, t->name);
            }
        }
        loom_st_close(f);
        free(b);
    }
    /* the scalar and empty tensors of the valid case above */
    size_t len;
    uint8_t *b = craft(cases[sizeof cases / sizeof *cases - 2].header, -1, 16, &len);
    loom_st_file *f;
    CHECK_OK(loom_st_open_memory(&f, b, len, NULL));
    const loom_st_tensor *e = loom_st_find(f, "e"), *sc = loom_st_find(f, "s");
    CHECK(e && e->numel == 0 && e->nbytes == 0 && sc && sc->ndim == 0 && sc->numel == 1, "empty and scalar");
    loom_st_close(f);
    free(b);

    /* header length field: larger than the file, absurd */
    b = craft("{}", 1000, 0, &len);
    CHECK(loom_st_open_memory(&f, b, len, "x.st") == LOOM_EFORMAT && strstr(loom_errmsg(), "larger than the file"),
          "header past the end: %s", loom_errmsg());
    free(b);
    b = craft("{}", 200ll << 20, 0, &len);
    CHECK(loom_st_open_memory(&f, b, len, "x.st") == LOOM_EFORMAT && strstr(loom_errmsg(), "limit"),
          "absurd header length: %s", loom_errmsg());
    free(b);
    b = craft("{}", (long long)(~0ull >> 1), 0, &len);
    CHECK(loom_st_open_memory(&f, b, len, "x.st") == LOOM_EFORMAT, "2^63-1 header length");
    free(b);
    b = craft("{} junk", -1, 0, &len);
    CHECK(loom_st_open_memory(&f, b, len, "x.st") == LOOM_EFORMAT, "trailing garbage after the JSON");
    free(b);
    b = craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, &len);
    b[12] = 0; /* a NUL inside the header */
    CHECK(loom_st_open_memory(&f, b, len, "x.st") == LOOM_EFORMAT, "NUL in header");
    free(b);

    /* the same checks on real files: short files, a truncated file */
    char path[256];
    tmp_path(path, sizeof path, "short.safetensors");
    for (size_t n = 0; n < 8; n++) {
        CHECK_OK(loom_write_file_atomic(path, "\x02\0\0\0\0\0\0", n));
        CHECK(loom_st_open(&f, path) == LOOM_EFORMAT && strstr(loom_errmsg(), path) && strstr(loom_errmsg(), "shorter"),
              "%zu-byte file: %s", n, loom_errmsg());
    }
    b = craft("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", -1, 16, &len);
    tmp_path(path, sizeof path, "cut.safetensors");
    CHECK_OK(loom_write_file_atomic(path, b, len - 1));
    CHECK(loom_st_open(&f, path) == LOOM_EFORMAT && strstr(loom_errmsg(), path) && strstr(loom_errmsg(), "'w'"),
          "truncated file: %s", loom_errmsg());
    CHECK(f == NULL, "no file on failure");
    free(b);
    tmp_path(path, sizeof path, "absent.safetensors");
    CHECK(loom_st_open(&f, path) == LOOM_ENOTFOUND, "missing file");
    CHECK(loom_st_open(&f, scratch) == LOOM_EIO, "a directory is not a file");
}

/* Random corruption of a valid small file: every open must either fail cleanly or hand out tensors that
 * lie inside the buffer (which is exactly the file's size, so ASan sees any read past it). */
static void fuzz_check(const uint8_t *buf, size_t len, int *opened, int *bad) {
    loom_st_file *f;
    if (loom_st_open_memory(&f, buf, len, "fuzz") != LOOM_OK) {
        *bad += f != NULL || loom_errmsg()[0] == 0;
        return;
    }
    (*opened)++;
    for (size_t j = 0; j < loom_st_count(f); j++) {
        const loom_st_tensor *t = loom_st_at(f, j);
        const uint8_t *d = t->data;
        size_t numel = 1;
        for (int k = 0; k < t->ndim; k++) numel *= (size_t)t->shape[k];
        int ok = d >= buf + 8 && d <= buf + len && t->nbytes <= (size_t)(buf + len - d) && t->numel == numel &&
                 t->nbytes == numel * loom_dtype_size(t->dtype) && loom_st_find(f, t->name) == t;
        *bad += !ok;
        if (!ok) continue;
        unsigned sum = 0; /* touch every byte */
        for (size_t k = 0; k < t->nbytes; k++) sum += d[k];
        (void)sum;
        float *x = malloc(t->numel * sizeof(float) + 1);
        int32_t *y = malloc(t->numel * sizeof(int32_t) + 1);
        loom_st_to_f32(t, x, t->numel);
        loom_st_to_i32(t, y, t->numel);
        free(x);
        free(y);
    }
    for (size_t j = 0; j < loom_st_meta_count(f); j++) {
        const char *k, *v;
        *bad += loom_st_meta_at(f, j, &k, &v) != LOOM_OK || loom_st_meta(f, k) != v;
    }
    loom_st_close(f);
}

static void test_fuzz(void) {
    loom_st_writer *w;
    CHECK_OK(loom_st_writer_create(&w));
    float a[6] = {1, 2, 3, 4, 5, 6};
    int32_t tok[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    uint8_t m[3] = {1, 0, 1};
    CHECK_OK(loom_st_writer_add(w, "w", LOOM_DT_F32, 2, (int64_t[]){2, 3}, a));
    CHECK_OK(loom_st_writer_add(w, "tok", LOOM_DT_I32, 2, (int64_t[]){2, 4}, tok));
    CHECK_OK(loom_st_writer_add(w, "mask", LOOM_DT_BOOL, 1, (int64_t[]){3}, m));
    CHECK_OK(loom_st_writer_add_f32(w, "h", LOOM_DT_F16, 1, (int64_t[]){4}, a));
    CHECK_OK(loom_st_writer_add(w, "loss", LOOM_DT_F32, 0, NULL, a));
    CHECK_OK(loom_st_writer_add(w, "none", LOOM_DT_I64, 1, (int64_t[]){0}, NULL));
    int64_t big[1] = {1ll << 40}; /* referenced until serialised: must outlive the add */
    CHECK_OK(loom_st_writer_add(w, "big", LOOM_DT_I64, 1, (int64_t[]){1}, big));
    CHECK_OK(loom_st_writer_meta(w, "format", "pt"));
    uint8_t *base;
    size_t blen;
    CHECK_OK(loom_st_writer_serialize(w, (void **)&base, &blen));
    loom_st_writer_free(w);
    if (!base) return;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | base[i];

    loom_rng r;
    loom_rng_init(&r, 1234, 77);
    int iters = 20000, opened = 0, bad = 0;
    uint8_t *buf = malloc(blen + 64);
    for (int it = 0; it < iters; it++) {
        memcpy(buf, base, blen);
        size_t len = blen;
        int kind = (int)loom_rng_below(&r, 6), nmut = 1 + (int)loom_rng_below(&r, 4);
        for (int k = 0; k < nmut; k++) {
            if (kind == 0) { /* any byte, any value */
                buf[loom_rng_below(&r, (uint32_t)len)] = (uint8_t)loom_rng_u64(&r);
            } else if (kind <= 2) { /* a digit of the header becomes another digit: still JSON, new numbers */
                size_t at = 8 + loom_rng_below(&r, (uint32_t)hlen);
                for (size_t s = 0; s < hlen && !(buf[at] >= '0' && buf[at] <= '9'); s++)
                    at = 8 + (at - 8 + 1) % hlen;
                if (buf[at] >= '0' && buf[at] <= '9') buf[at] = (uint8_t)('0' + loom_rng_below(&r, 10));
            } else if (kind == 3) { /* structural characters of the header */
                static const char sym[] = "{}[]\",:0-9eE. \\";
                buf[8 + loom_rng_below(&r, (uint32_t)hlen)] = (uint8_t)sym[loom_rng_below(&r, sizeof sym - 1)];
            } else if (kind == 4) { /* the length field */
                buf[loom_rng_below(&r, 8)] ^= (uint8_t)(1u << loom_rng_below(&r, 8));
            } else { /* truncate or extend */
                len = loom_rng_below(&r, 2) ? loom_rng_below(&r, (uint32_t)len + 1) : blen + loom_rng_below(&r, 64);
                if (len > blen) memset(buf + blen, 0, len - blen);
            }
        }
        /* an exactly-sized heap copy, so reading one byte past it is caught */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        fuzz_check(exact, len, &opened, &bad);
        free(exact);
    }
    printf("fuzz: %d of %d mutated files opened\n", opened, iters);
    CHECK(bad == 0, "%d of %d mutated files broke an invariant", bad, iters);
    /* both outcomes must occur, or the mutations are not reaching the validation */
    CHECK(opened > iters / 20 && opened < iters - iters / 20, "%d of %d mutated files opened", opened, iters);

    /* a few through real files and mmap */
    char path[256];
    tmp_path(path, sizeof path, "fuzz.safetensors");
    int file_bad = 0;
    for (int it = 0; it < 200; it++) {
        memcpy(buf, base, blen);
        size_t at = 8 + loom_rng_below(&r, (uint32_t)hlen);
        if (buf[at] >= '0' && buf[at] <= '9') buf[at] = (uint8_t)('0' + loom_rng_below(&r, 10));
        else buf[at] = (uint8_t)loom_rng_u64(&r);
        loom_write_file_atomic(path, buf, blen);
        loom_st_file *f;
        if (loom_st_open(&f, path) == LOOM_OK) {
            size_t flen;
            const uint8_t *fb = loom_st_bytes(f, &flen);
            for (size_t j = 0; j < loom_st_count(f); j++) {
                const loom_st_tensor *t = loom_st_at(f, j);
                file_bad += flen != blen || (const uint8_t *)t->data < fb ||
                            (const uint8_t *)t->data + t->nbytes > fb + flen;
            }
            loom_st_close(f);
        }
    }
    CHECK(file_bad == 0, "%d mapped tensors out of bounds", file_bad);
    free(buf);
    loom_free(base);
}

/* ---------------------------------------------------------------- sets */

static void write_shard(const char *dir, const char *file, const char *const *names, int n, const float *data) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    loom_st_writer *w;
    CHECK_OK(loom_st_writer_create(&w));
    for (int i = 0; i < n; i++) CHECK_OK(loom_st_writer_add(w, names[i], LOOM_DT_F32, 1, (int64_t[]){2}, data + 2 * i));
    CHECK_OK(loom_st_writer_write(w, path));
    loom_st_writer_free(w);
}

static void write_text(const char *dir, const char *file, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    CHECK_OK(loom_write_file_atomic(path, text, strlen(text)));
}

static void test_sets(void) {
    char p[512], dir[256];
    loom_st_set *s;
    /* a directory holding model.safetensors, and the file itself */
    CHECK_OK(loom_st_set_open(&s, test_path(p, sizeof p, "reference/gpt2-tiny")));
    CHECK(loom_st_set_count(s) == 28 && loom_st_set_file_count(s) == 1, "single-file set: %zu",
          loom_st_set_count(s));
    const loom_st_tensor *t = loom_st_set_find(s, "transformer.wte.weight");
    CHECK(shape_is(t, 2, (int64_t[]){512, 64}), "set find");
    CHECK(loom_st_set_at(s, 0) == t && loom_st_set_at(s, 28) == NULL, "set order");
    CHECK(loom_st_set_find(s, "nope") == NULL, "set find absent");
    loom_st_set_close(s);
    CHECK_OK(loom_st_set_open(&s, test_path(p, sizeof p, "reference/llama-tiny/model.safetensors")));
    CHECK(loom_st_set_count(s) == 21, "set from a file path");
    loom_st_set_close(s);

    /* shards */
    tmp_path(dir, sizeof dir, "sharded");
    mkdir(dir, 0700);
    float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    const char *n1[] = {"a", "b"}, *n2[] = {"c", "d"};
    write_shard(dir, "model-00001-of-00002.safetensors", n1, 2, data);
    write_shard(dir, "model-00002-of-00002.safetensors", n2, 2, data + 4);
    write_text(dir, "model.safetensors.index.json",
               "{\"metadata\": {\"total_size\": 32}, \"weight_map\": {"
               "\"a\": \"model-00001-of-00002.safetensors\", \"c\": \"model-00002-of-00002.safetensors\","
               "\"b\": \"model-00001-of-00002.safetensors\", \"d\": \"model-00002-of-00002.safetensors\"}}");
    CHECK_OK(loom_st_set_open(&s, dir));
    CHECK(loom_st_set_count(s) == 4 && loom_st_set_file_count(s) == 2, "sharded set: %zu tensors, %zu files",
          loom_st_set_count(s), loom_st_set_file_count(s));
    int ok = 1;
    const char *all[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) {
        t = loom_st_set_find(s, all[i]);
        float v[2];
        ok &= t && loom_st_to_f32(t, v, 2) == LOOM_OK && v[0] == data[2 * i] && v[1] == data[2 * i + 1];
        ok &= loom_st_set_at(s, (size_t)i) == t;
    }
    CHECK(ok, "every tensor found in its shard with its data");
    CHECK(loom_st_find(loom_st_set_file(s, 1), "c") == loom_st_set_find(s, "c"), "c lives in the second shard");
    loom_st_set_close(s);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    CHECK_OK(loom_st_set_open(&s, p));
    CHECK(loom_st_set_count(s) == 4, "set from the index path");
    loom_st_set_close(s);
    /* an index named without any directory part */
    char cwd[1024];
    int in_dir = getcwd(cwd, sizeof cwd) && chdir(dir) == 0;
    CHECK(in_dir, "chdir to %s", dir);
    if (in_dir) {
        CHECK_OK(loom_st_set_open(&s, "model.safetensors.index.json"));
        CHECK(loom_st_set_count(s) == 4, "set from a bare index name");
        loom_st_set_close(s);
        CHECK_OK(loom_st_set_open(&s, "."));
        CHECK(loom_st_set_count(s) == 4, "set from \".\"");
        loom_st_set_close(s);
        CHECK(chdir(cwd) == 0, "back to %s", cwd);
    }

    /* broken indexes */
    static const struct {
        const char *index;
        int rc;
        const char *msg;
    } bad[] = {
        {"{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"x\": \"missing.safetensors\"}}",
         LOOM_ENOTFOUND, "missing.safetensors"},
        {"{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"zz\": \"model-00001-of-00002.safetensors\"}}",
         LOOM_EFORMAT, "'zz'"},
        {"{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"c\": \"model-00001-of-00002.safetensors\","
         "\"d\": \"model-00002-of-00002.safetensors\"}}",
         LOOM_EFORMAT, "'c'"},
        {"{\"weight_map\": {\"a\": \"../sharded/model-00001-of-00002.safetensors\"}}", LOOM_EFORMAT, "leaves"},
        {"{\"weight_map\": {\"a\": \"/etc/passwd\"}}", LOOM_EFORMAT, "leaves"},
        {"{\"weight_map\": {\"a\": 3}}", LOOM_EFORMAT, "'a'"},
        {"{\"weights\": {}}", LOOM_EFORMAT, "weight_map"},
        {"{\"weight_map\": ", LOOM_EFORMAT, "JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_text(dir, "model.safetensors.index.json", bad[i].index);
        int rc = loom_st_set_open(&s, dir);
        CHECK(rc == bad[i].rc && s == NULL && strstr(loom_errmsg(), bad[i].msg), "bad index %zu: rc %d: %s", i, rc,
              loom_errmsg());
        loom_st_set_close(s);
    }
    /* a tensor in two shards */
    const char *dup[] = {"a", "e"};
    write_shard(dir, "model-00002-of-00002.safetensors", dup, 2, data);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00001-of-00002.safetensors\","
               "\"e\": \"model-00002-of-00002.safetensors\"}}");
    CHECK(loom_st_set_open(&s, dir) == LOOM_EFORMAT && strstr(loom_errmsg(), "'a'") &&
              strstr(loom_errmsg(), "model-00001-of-00002") && strstr(loom_errmsg(), "model-00002-of-00002"),
          "tensor in two shards: %s", loom_errmsg());
    /* a corrupt shard: the message names the shard */
    write_text(dir, "model-00002-of-00002.safetensors", "garbage!garbage!");
    CHECK(loom_st_set_open(&s, dir) == LOOM_EFORMAT && strstr(loom_errmsg(), "model-00002-of-00002.safetensors"),
          "corrupt shard: %s", loom_errmsg());
    /* nothing to open */
    tmp_path(dir, sizeof dir, "emptydir");
    mkdir(dir, 0700);
    CHECK(loom_st_set_open(&s, dir) == LOOM_ENOTFOUND, "directory without a model: %s", loom_errmsg());
}

int main(void) {
    test_tmpdir(scratch, sizeof scratch);
    test_reference_model();
    test_reference_batch();
    test_round_trip();
    test_layout();
    test_writer_errors();
    test_malformed();
    test_fuzz();
    test_sets();
    CHECK(test_rmtree(scratch) == 0, "scratch directory %s removed", scratch);
    return test_summary();
}
