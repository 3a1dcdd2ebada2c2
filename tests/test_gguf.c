/* GGUF container: a hand-assembled file read back key by key and tensor by tensor, the writer's bytes
 * equal to that file, the tensor types' conversions against values worked out by hand, and every kind
 * of malformed file refused with a message. */
#include "loom/core.h"
#include "loom/gguf.h"
#include "loom/half.h"
#include "loom/model.h"
#include "loom/tokenizer.h"
#include "test.h"

/* ---- a byte builder independent of the library's writer ---- */
typedef struct {
    uint8_t b[8192];
    size_t n;
} bytes;

static void put(bytes *x, const void *p, size_t n) {
    memcpy(x->b + x->n, p, n);
    x->n += n;
}
static void u32(bytes *x, uint32_t v) { put(x, &v, 4); }
static void u64(bytes *x, uint64_t v) { put(x, &v, 8); }
static void f32(bytes *x, float v) { put(x, &v, 4); }
static void str(bytes *x, const char *s) {
    u64(x, strlen(s));
    put(x, s, strlen(s));
}
static void pad(bytes *x, size_t a) {
    while (x->n % a) x->b[x->n++] = 0;
}

/* The reference file: 4 key/values, 2 tensors (F32 [3 x 2], F16 [4]), alignment 32. */
static const float T0[6] = {1, -2, 3.5f, 0.25f, -0.125f, 8};
static void reference(bytes *x, uint32_t version) {
    x->n = 0;
    u32(x, 0x46554747u);
    u32(x, version);
    u64(x, 2); /* tensors */
    u64(x, 4); /* key/values */
    str(x, "general.architecture");
    u32(x, 8);
    str(x, "llama");
    str(x, "llama.block_count");
    u32(x, 4);
    u32(x, 7);
    str(x, "llama.rope.freq_base");
    u32(x, 6);
    f32(x, 10000.0f);
    str(x, "tokenizer.ggml.tokens");
    u32(x, 9);
    u32(x, 8);
    u64(x, 3);
    str(x, "<unk>");
    str(x, "");
    str(x, "\xe2\x96\x81the");
    /* tensor infos */
    str(x, "a.weight");
    u32(x, 2);
    u64(x, 2);
    u64(x, 3);
    u32(x, 0);
    u64(x, 0);
    str(x, "b");
    u32(x, 1);
    u64(x, 4);
    u32(x, 1);
    u64(x, 32);
    pad(x, 32);
    put(x, T0, sizeof T0);
    pad(x, 32);
    /* 1, -2, 0.5, 65504 in IEEE half, worked out by hand */
    const uint16_t h[4] = {0x3C00, 0xC000, 0x3800, 0x7BFF};
    put(x, h, 8);
    pad(x, 32);
}

static void test_read_reference(void) {
    bytes x;
    reference(&x, 3);
    loom_gguf *g;
    CHECK_OK(loom_gguf_open_memory(&g, x.b, x.n, "ref.gguf"));
    if (!g) return;
    CHECK(loom_gguf_version(g) == 3, "version %u", loom_gguf_version(g));
    CHECK(loom_gguf_kv_count(g) == 4 && loom_gguf_tensor_count(g) == 2, "%zu kv %zu tensors", loom_gguf_kv_count(g),
          loom_gguf_tensor_count(g));
    const char *s;
    size_t len;
    CHECK_OK(loom_gguf_get_str(g, "general.architecture", &s, &len));
    CHECK(len == 5 && !strcmp(s, "llama"), "arch %s", s);
    uint32_t L = 0;
    CHECK_OK(loom_gguf_get_u32(g, "llama.block_count", &L));
    CHECK(L == 7, "block_count %u", L);
    int64_t L64 = 0;
    CHECK_OK(loom_gguf_get_i64(g, "llama.block_count", &L64));
    CHECK(L64 == 7, "block_count %lld", (long long)L64);
    float fb = 0;
    CHECK_OK(loom_gguf_get_f32(g, "llama.rope.freq_base", &fb));
    CHECK(fb == 10000.0f, "freq_base %g", fb);
    /* wrong types and absent keys name the key */
    CHECK(loom_gguf_get_str(g, "llama.block_count", &s, NULL) == LOOM_EFORMAT && strstr(loom_errmsg(), "llama.block_count"),
          "%s", loom_errmsg());
    CHECK(loom_gguf_get_u32(g, "general.architecture", &L) == LOOM_EFORMAT, "%s", loom_errmsg());
    CHECK(loom_gguf_get_u32(g, "llama.nope", &L) == LOOM_ENOTFOUND && strstr(loom_errmsg(), "llama.nope"), "%s", loom_errmsg());
    int kv = loom_gguf_find_kv(g, "tokenizer.ggml.tokens");
    CHECK(kv == 3, "tokens at %d", kv);
    const loom_gguf_kv *k = loom_gguf_kv_at(g, (size_t)kv);
    CHECK(k && k->type == LOOM_GGUF_ARRAY && k->arr_type == LOOM_GGUF_STRING && k->n == 3, "tokens kv");
    CHECK_OK(loom_gguf_arr_str(g, kv, 2, &s, &len));
    CHECK(len == 6 && !strcmp(s, "\xe2\x96\x81the"), "token 2 %s", s);
    CHECK_OK(loom_gguf_arr_str(g, kv, 1, &s, &len));
    CHECK(len == 0 && s[0] == 0, "token 1 is empty");
    CHECK(loom_gguf_arr_str(g, kv, 3, &s, &len) == LOOM_ERANGE, "past the end");
    float fv;
    CHECK(loom_gguf_arr_f32(g, kv, 0, &fv) == LOOM_EFORMAT, "strings are not floats");

    const loom_gguf_tensor *a = loom_gguf_find_tensor(g, "a.weight"), *b = loom_gguf_find_tensor(g, "b");
    CHECK(a && b && !loom_gguf_find_tensor(g, "c"), "tensors found");
    if (a && b) {
        CHECK(a->type == LOOM_GGML_F32 && a->ndim == 2 && a->ne[0] == 2 && a->ne[1] == 3 && a->ne[2] == 1 && a->numel == 6 &&
                  a->offset == 0 && a->nbytes == 24,
              "a's info");
        CHECK(b->type == LOOM_GGML_F16 && b->ndim == 1 && b->numel == 4 && b->offset == 32 && b->nbytes == 8, "b's info");
        float va[6], vb[4];
        CHECK_OK(loom_gguf_tensor_to_f32(a, va, 6));
        CHECK(!memcmp(va, T0, sizeof va), "a's values");
        CHECK_OK(loom_gguf_tensor_to_f32(b, vb, 4));
        CHECK(vb[0] == 1 && vb[1] == -2 && vb[2] == 0.5f && vb[3] == 65504, "b's values %g %g %g %g", vb[0], vb[1], vb[2], vb[3]);
        CHECK(loom_gguf_tensor_to_f32(b, vb, 3) == LOOM_EINVAL, "count checked");
    }
    loom_gguf_close(g);
    /* version 2 has the same layout */
    reference(&x, 2);
    CHECK_OK(loom_gguf_open_memory(&g, x.b, x.n, "v2.gguf"));
    loom_gguf_close(g);
}

/* The writer, given the same content, produces exactly the reference bytes. */
static void test_writer_bytes(void) {
    bytes x;
    reference(&x, 3);
    loom_gguf_writer *w;
    CHECK_OK(loom_gguf_writer_create(&w));
    CHECK_OK(loom_gguf_set_str(w, "general.architecture", "gpt2"));
    CHECK_OK(loom_gguf_set_u32(w, "llama.block_count", 7));
    CHECK_OK(loom_gguf_set_f32(w, "llama.rope.freq_base", 10000.0f));
    const char *toks[3] = {"<unk>", "", "\xe2\x96\x81the"};
    CHECK_OK(loom_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, NULL, 3));
    CHECK_OK(loom_gguf_set_str(w, "general.architecture", "llama")); /* replaces, keeps the place */
    int64_t ne_a[2] = {2, 3}, ne_b[1] = {4};
    const float vb[4] = {1, -2, 0.5f, 65504};
    CHECK_OK(loom_gguf_writer_add(w, "a.weight", LOOM_GGML_F32, 2, ne_a, T0));
    CHECK_OK(loom_gguf_writer_add_f32(w, "b", LOOM_GGML_F16, 1, ne_b, vb));
    CHECK(loom_gguf_writer_add(w, "b", LOOM_GGML_F32, 1, ne_b, vb) == LOOM_EINVAL && strstr(loom_errmsg(), "twice"), "%s",
          loom_errmsg());
    char longname[80];
    memset(longname, 'x', 64);
    longname[64] = 0;
    CHECK(loom_gguf_writer_add(w, longname, LOOM_GGML_F32, 1, ne_b, vb) == LOOM_EINVAL, "name too long");
    int64_t ne_q[1] = {48};
    CHECK(loom_gguf_writer_add_f32(w, "q", LOOM_GGML_Q8_0, 1, ne_q, T0) == LOOM_EINVAL && strstr(loom_errmsg(), "block"), "%s",
          loom_errmsg());
    CHECK(loom_gguf_writer_tensor_count(w) == 2, "two tensors");
    void *data;
    size_t len;
    CHECK_OK(loom_gguf_writer_serialize(w, &data, &len));
    CHECK(len == x.n && !memcmp(data, x.b, len), "writer bytes equal the reference (%zu vs %zu)", len, x.n);
    if (len == x.n)
        for (size_t i = 0; i < len; i++)
            if (((uint8_t *)data)[i] != x.b[i]) {
                CHECK(0, "first difference at byte %zu", i);
                break;
            }
    loom_free(data);
    /* to a file in a fresh directory, and back */
    char dir[] = "/tmp/loom_gguf_XXXXXX", path[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/t.gguf", dir);
    CHECK_OK(loom_gguf_writer_write(w, path));
    loom_gguf *g;
    CHECK_OK(loom_gguf_open(&g, path));
    if (g) {
        const loom_gguf_tensor *b = loom_gguf_find_tensor(g, "b");
        float back[4] = {0};
        CHECK(b && loom_gguf_tensor_to_f32(b, back, 4) == LOOM_OK && !memcmp(back, vb, sizeof back), "file round trip");
    }
    loom_gguf_close(g);
    CHECK(loom_gguf_open(&g, "/tmp/loom_gguf_no_such_file.gguf") == LOOM_ENOTFOUND && strstr(loom_errmsg(), "no_such_file"), "%s",
          loom_errmsg());
    unlink(path);
    rmdir(dir);
    loom_gguf_writer_free(w);
}

static void test_types(void) {
    /* F16 / BF16 of a few values whose bits are known by hand */
    const float v[4] = {1.0f, -2.5f, 0.0f, 3.140625f};
    uint16_t h[4], bf[4];
    CHECK_OK(loom_ggml_from_f32(LOOM_GGML_F16, h, v, 4));
    CHECK_OK(loom_ggml_from_f32(LOOM_GGML_BF16, bf, v, 4));
    CHECK(h[0] == 0x3C00 && h[1] == 0xC100 && h[2] == 0 && h[3] == 0x4248, "f16 %04x %04x %04x %04x", h[0], h[1], h[2], h[3]);
    CHECK(bf[0] == 0x3F80 && bf[1] == 0xC020 && bf[2] == 0 && bf[3] == 0x4049, "bf16 %04x %04x %04x %04x", bf[0], bf[1], bf[2], bf[3]);
    /* Q8_0: x_j = (j - 13) * 0.37; amax 6.66, d = amax / 127, q_j = round(x_j / d), worked out separately
     * in float32 arithmetic; the scale is stored as fp16 0x2AB6 */
    float x[64], y[64];
    for (int j = 0; j < 32; j++) x[j] = (float)((j - 13) * 0.37);
    for (int j = 32; j < 64; j++) x[j] = 0; /* an all-zero block: d = 0, q = 0 */
    static const int8_t q[32] = {-92, -85, -78, -71, -63, -56, -49, -42, -35, -28, -21, -14, -7, 0, 7, 14,
                                 21,  28,  35,  42,  49,  56,  63,  71,  78,  85,  92,  99,  106, 113, 120, 127};
    uint8_t blk[68];
    CHECK(loom_ggml_nbytes(LOOM_GGML_Q8_0, 64) == 68 && loom_ggml_nbytes(LOOM_GGML_Q8_0, 40) == 0, "q8_0 sizes");
    CHECK_OK(loom_ggml_from_f32(LOOM_GGML_Q8_0, blk, x, 64));
    CHECK(blk[0] == 0xB6 && blk[1] == 0x2A, "q8_0 scale %02x%02x", blk[1], blk[0]);
    CHECK(!memcmp(blk + 2, q, 32), "q8_0 quants");
    for (int j = 0; j < 34; j++) CHECK(blk[34 + j] == 0, "zero block byte %d", j);
    CHECK_OK(loom_ggml_to_f32(LOOM_GGML_Q8_0, y, blk, 64));
    /* dequantized: q_j times the fp16 scale (0x2AB6 = 0.05242919921875) */
    int same = 1;
    for (int j = 0; j < 32; j++) same &= y[j] == (float)q[j] * 0.05242919921875f;
    for (int j = 32; j < 64; j++) same &= y[j] == 0;
    CHECK(same, "q8_0 dequantized values");
    CHECK(loom_ggml_from_f32(LOOM_GGML_Q8_0, blk, x, 33) == LOOM_EINVAL, "partial block refused");
    loom_ggml_type t;
    CHECK(loom_ggml_type_parse("Q8_0", &t) == LOOM_OK && t == LOOM_GGML_Q8_0, "parse q8_0");
    CHECK(loom_ggml_type_parse("q4_k", &t) == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "q4_k"), "%s", loom_errmsg());
    CHECK(!strcmp(loom_ggml_type_name(LOOM_GGML_BF16), "bf16"), "name");
}

/* ---- malformed files ---- */

static int open_bytes(const bytes *x, const char *expect) {
    loom_gguf *g;
    int rc = loom_gguf_open_memory(&g, x->b, x->n, "bad.gguf");
    loom_gguf_close(g);
    CHECK(rc != LOOM_OK, "expected a refusal (%s)", expect);
    CHECK(rc != LOOM_OK && strstr(loom_errmsg(), "bad.gguf") && strstr(loom_errmsg(), expect), "message '%s' lacks '%s'",
          loom_errmsg(), expect);
    return rc;
}

/* A one-tensor file with chosen fields. */
static void one_tensor(bytes *x, uint32_t nd, uint64_t ne0, uint32_t type, uint64_t off, size_t data_bytes) {
    x->n = 0;
    u32(x, 0x46554747u);
    u32(x, 3);
    u64(x, 1);
    u64(x, 0);
    str(x, "w");
    u32(x, nd);
    for (uint32_t d = 0; d < nd && d < 8; d++) u64(x, d ? 1 : ne0);
    u32(x, type);
    u64(x, off);
    pad(x, 32);
    memset(x->b + x->n, 0, data_bytes);
    x->n += data_bytes;
}

static void test_malformed(void) {
    bytes x, y;
    reference(&x, 3);
    /* every truncation is refused, never read past the end */
    int all = 1;
    for (size_t n = 0; n < x.n - 24; n++) {
        loom_gguf *g;
        y = x;
        y.n = n;
        int rc = loom_gguf_open_memory(&g, y.b, y.n, "cut.gguf");
        loom_gguf_close(g);
        if (rc != LOOM_EFORMAT || !strstr(loom_errmsg(), "cut.gguf")) {
            all = 0;
            CHECK(0, "truncated at %zu: rc %d %s", n, rc, loom_errmsg());
            break;
        }
    }
    CHECK(all, "truncations refused");
    y = x;
    y.b[0] = 'X';
    open_bytes(&y, "not a GGUF file");
    y = x;
    y.b[4] = 1;
    CHECK(open_bytes(&y, "version 1") == LOOM_EUNSUPPORTED, "version 1");
    y = x;
    memset(y.b + 4, 0, 4);
    y.b[7] = 3; /* big-endian version 3 */
    open_bytes(&y, "version");
    y = x;
    memcpy(y.b + 8, &(uint64_t){1ull << 40}, 8);
    open_bytes(&y, "tensor count");
    y = x;
    memcpy(y.b + 16, &(uint64_t){100000}, 8);
    open_bytes(&y, "key/value count");
    y = x;
    memcpy(y.b + 8, &(uint64_t){50}, 8);
    open_bytes(&y, "cannot fit");
    /* a key length beyond the file */
    y = x;
    memcpy(y.b + 24, &(uint64_t){1ull << 62}, 8);
    open_bytes(&y, "limit");
    /* a string value longer than the file */
    y = x;
    size_t at = 24 + 8 + 20 + 4;
    memcpy(y.b + at, &(uint64_t){1000000}, 8);
    open_bytes(&y, "general.architecture");
    /* an unknown value type */
    y = x;
    memcpy(y.b + 24 + 8 + 20, &(uint32_t){13}, 4);
    open_bytes(&y, "unknown value type");
    /* a duplicate key: the second key renamed to the first's name is impossible in place, so the first
     * key is written twice in a new file */
    y.n = 0;
    u32(&y, 0x46554747u);
    u32(&y, 3);
    u64(&y, 0);
    u64(&y, 2);
    for (int i = 0; i < 2; i++) {
        str(&y, "k");
        u32(&y, 4);
        u32(&y, (uint32_t)i);
    }
    open_bytes(&y, "appears twice");
    /* nested arrays, arrays over the limit, a bool that is not 0/1, a bad alignment */
    y.n = 0;
    u32(&y, 0x46554747u);
    u32(&y, 3);
    u64(&y, 0);
    u64(&y, 1);
    str(&y, "nest");
    u32(&y, 9);
    u32(&y, 9);
    u64(&y, 1);
    CHECK(open_bytes(&y, "array of arrays") == LOOM_EUNSUPPORTED, "nested");
    y.n -= 12;
    u32(&y, 4);
    u64(&y, (uint64_t)LOOM_GGUF_MAX_ARRAY + 1);
    open_bytes(&y, "elements");
    y.n -= 12;
    u32(&y, 7);
    u64(&y, 1);
    y.b[y.n++] = 2;
    open_bytes(&y, "bool");
    y.n = 0;
    u32(&y, 0x46554747u);
    u32(&y, 3);
    u64(&y, 0);
    u64(&y, 1);
    str(&y, "general.alignment");
    u32(&y, 4);
    u32(&y, 48);
    open_bytes(&y, "general.alignment");
    /* tensor infos */
    one_tensor(&y, 2, 4, 0, 0, 16);
    {
        loom_gguf *g;
        CHECK_OK(loom_gguf_open_memory(&g, y.b, y.n, "ok.gguf"));
        loom_gguf_close(g);
    }
    one_tensor(&y, 5, 4, 0, 0, 16);
    open_bytes(&y, "dimensions");
    one_tensor(&y, 0, 4, 0, 0, 16);
    open_bytes(&y, "dimensions");
    one_tensor(&y, 1, 1ull << 50, 0, 0, 16);
    open_bytes(&y, "impossible dimension");
    one_tensor(&y, 1, 4, 12, 0, 16);
    CHECK(open_bytes(&y, "q4_K") == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "tensor w"), "%s", loom_errmsg());
    one_tensor(&y, 1, 48, 8, 0, 64);
    open_bytes(&y, "not a multiple of the q8_0 block");
    one_tensor(&y, 1, 4, 0, 8, 64);
    open_bytes(&y, "not a multiple of the alignment");
    one_tensor(&y, 1, 4, 0, 0, 15);
    open_bytes(&y, "outside the data section");
    one_tensor(&y, 1, 4, 0, 1ull << 63, 16);
    open_bytes(&y, "outside the data section");
    /* two tensors sharing bytes */
    y.n = 0;
    u32(&y, 0x46554747u);
    u32(&y, 3);
    u64(&y, 2);
    u64(&y, 0);
    for (int i = 0; i < 2; i++) {
        str(&y, i ? "b" : "a");
        u32(&y, 1);
        u64(&y, 8);
        u32(&y, 0);
        u64(&y, i ? 32 : 0);
    }
    pad(&y, 32);
    memset(y.b + y.n, 0, 96);
    y.n += 96;
    {
        loom_gguf *g;
        CHECK_OK(loom_gguf_open_memory(&g, y.b, y.n, "ok.gguf"));
        loom_gguf_close(g);
    }
    y.n = 0;
    u32(&y, 0x46554747u);
    u32(&y, 3);
    u64(&y, 2);
    u64(&y, 0);
    for (int i = 0; i < 2; i++) {
        str(&y, i ? "b" : "a");
        u32(&y, 1);
        u64(&y, 16);
        u32(&y, 0);
        u64(&y, (uint64_t)i * 32); /* a's 64 bytes run into b's */
    }
    pad(&y, 32);
    memset(y.b + y.n, 0, 96);
    y.n += 96;
    open_bytes(&y, "overlap");
    /* a duplicate tensor name */
    y.n = 0;
    u32(&y, 0x46554747u);
    u32(&y, 3);
    u64(&y, 2);
    u64(&y, 0);
    for (int i = 0; i < 2; i++) {
        str(&y, "a");
        u32(&y, 1);
        u64(&y, 8);
        u32(&y, 0);
        u64(&y, (uint64_t)i * 32);
    }
    pad(&y, 32);
    memset(y.b + y.n, 0, 64);
    y.n += 64;
    open_bytes(&y, "appears twice");
}

/* ---- models ---- */

/* Q8_0 of n values at stride st, dequantized in place: the reference rule written out again here
 * (d = max|x| / 127 rounded to fp16, q = round(x / d) with the unrounded d). */
static void q8_ref(float *x, size_t n, size_t st) {
    for (size_t b = 0; b < n; b += 32) {
        float amax = 0;
        for (size_t j = b; j < b + 32; j++) amax = fmaxf(amax, fabsf(x[j * st]));
        float d = amax / 127, id = d ? 1 / d : 0, dh = loom_f16_to_f32(loom_f32_to_f16(d));
        for (size_t j = b; j < b + 32; j++) x[j * st] = (float)(int)roundf(x[j * st] * id) * dh; /* an int8: no -0 */
    }
}

/* What a tensor reads back as after a GGUF of `type`: matrices rounded (Q8_0 in blocks along the GGUF
 * rows, which are the HF columns of a transposed GPT-2 Conv1D weight), vectors exact. */
static void expect_tensor(const loom_tensor *t, int gpt2, loom_ggml_type type, float *x) {
    if (t->ndim != 2 || type == LOOM_GGML_F32) return;
    size_t R = (size_t)t->shape[0], C = (size_t)t->shape[1];
    if (type == LOOM_GGML_F16 || type == LOOM_GGML_BF16) {
        for (size_t i = 0; i < t->numel; i++)
            x[i] = type == LOOM_GGML_F16 ? loom_f16_to_f32(loom_f32_to_f16(x[i])) : loom_bf16_to_f32(loom_f32_to_bf16(x[i]));
        return;
    }
    int transposed = gpt2 && t->kind == LOOM_T_LINEAR_W;
    if (transposed) {
        if (R % 32 == 0)
            for (size_t c = 0; c < C; c++) q8_ref(x + c, R, C);
    } else if (C % 32 == 0) {
        for (size_t r = 0; r < R; r++) q8_ref(x + r * C, C, 1);
    }
}

static void test_model_roundtrip(void) {
    char dir[] = "/tmp/loom_gguf_XXXXXX", path[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    loom_config cfg[2];
    CHECK_OK(loom_config_named(&cfg[0], "llama-tiny"));
    cfg[0].qkv_bias = 1; /* q/k biases are permuted too */
    cfg[0].tied = 0;
    cfg[0].hidden = 80; /* ffn_down rows of 80 cannot be Q8_0 blocks: they stay F32 */
    cfg[0].rope_theta = 50000.0f;
    cfg[0].norm_eps = 1e-6f;
    CHECK_OK(loom_config_named(&cfg[1], "gpt2-tiny"));
    cfg[1].tied = 0;
    const loom_ggml_type types[4] = {LOOM_GGML_F32, LOOM_GGML_F16, LOOM_GGML_BF16, LOOM_GGML_Q8_0};
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 4; k++) {
            loom_model *m = NULL, *back = NULL;
            if (a == 1) cfg[a].tied = k % 2; /* GPT-2 with a tied head for F16 and Q8_0: no output.weight */
            CHECK_OK(loom_model_create(&m, &cfg[a], 7));
            if (!m) continue;
            float *p = loom_model_params(m);
            uint64_t seed = 99;
            for (size_t i = 0; i < loom_model_n_params(m); i++) p[i] = (float)(0.2 * test_normal(&seed));
            loom_gguf_writer *w;
            CHECK_OK(loom_gguf_writer_create(&w));
            CHECK_OK(loom_model_save_gguf(m, p, types[k], w, path));
            loom_gguf_writer_free(w);
            CHECK_OK(loom_model_load(&back, path)); /* through the loader's GGUF hook */
            if (back) {
                const loom_config *b = loom_model_config(back), *c = &cfg[a];
                CHECK(b->arch == c->arch && b->n_layer == c->n_layer && b->dim == c->dim && b->hidden == c->hidden &&
                          b->n_head == c->n_head && b->n_kv_head == c->n_kv_head && b->vocab == c->vocab && b->max_seq == c->max_seq &&
                          b->tied == c->tied && b->qkv_bias == c->qkv_bias && b->norm_eps == c->norm_eps &&
                          (a == 1 || b->rope_theta == c->rope_theta) && b->act == c->act,
                      "config back (%s, %s)", a ? "gpt2" : "llama", loom_ggml_type_name(types[k]));
                CHECK(loom_model_n_params(back) == loom_model_n_params(m), "same size");
                if (types[k] == LOOM_GGML_F32) {
                    CHECK(!memcmp(loom_model_params(back), p, loom_model_n_params(m) * sizeof(float)),
                          "F32 round trip bit-identical (%s)", a ? "gpt2" : "llama");
                } else {
                    int bad = -1;
                    for (int i = 0; i < loom_model_n_tensors(m) && bad < 0; i++) {
                        const loom_tensor *t = loom_model_tensor(m, i);
                        float *x = malloc(t->numel * sizeof *x);
                        memcpy(x, p + t->offset, t->numel * sizeof *x);
                        expect_tensor(t, a == 1, types[k], x);
                        if (memcmp(x, loom_model_params(back) + t->offset, t->numel * sizeof *x)) bad = i;
                        free(x);
                    }
                    CHECK(bad < 0, "%s %s import equals the rounded export; first difference in %s", a ? "gpt2" : "llama",
                          loom_ggml_type_name(types[k]), bad >= 0 ? loom_model_tensor(m, bad)->name : "");
                }
            }
            loom_model_free(back);
            loom_model_free(m);
        }
    unlink(path);

    /* stories260K from its llama2.c file, which holds Meta's layout: the GGUF's attn_q / attn_k are
     * those bytes exactly (loom holds the HF layout in between) */
    char bin[512];
    test_path(bin, sizeof bin, "data/stories260K/stories260K.bin");
    loom_model *m = NULL;
    CHECK_OK(loom_model_load(&m, bin));
    char *raw = NULL;
    size_t rlen = 0;
    CHECK_OK(loom_read_file(bin, &raw, &rlen));
    if (m && raw) {
        loom_gguf_writer *w;
        CHECK_OK(loom_gguf_writer_create(&w));
        CHECK_OK(loom_model_save_gguf(m, loom_model_params(m), LOOM_GGML_F32, w, path));
        loom_gguf_writer_free(w);
        int32_t h[7];
        memcpy(h, raw, sizeof h);
        size_t dim = (size_t)h[0], L = (size_t)h[2], kv = (size_t)h[4] * (dim / (size_t)h[3]), V = (size_t)(h[5] < 0 ? -h[5] : h[5]);
        const char *wq = raw + 28 + 4 * (V * dim + L * dim), *wk = wq + 4 * L * dim * dim;
        loom_gguf *g;
        CHECK_OK(loom_gguf_open(&g, path));
        if (g) {
            int same = 1;
            for (size_t l = 0; l < L; l++) {
                char nq[64], nk[64];
                snprintf(nq, sizeof nq, "blk.%zu.attn_q.weight", l);
                snprintf(nk, sizeof nk, "blk.%zu.attn_k.weight", l);
                const loom_gguf_tensor *q = loom_gguf_find_tensor(g, nq), *k = loom_gguf_find_tensor(g, nk);
                same &= q && k && q->nbytes == 4 * dim * dim && k->nbytes == 4 * kv * dim &&
                        !memcmp(q->data, wq + 4 * l * dim * dim, q->nbytes) && !memcmp(k->data, wk + 4 * l * kv * dim, k->nbytes);
            }
            CHECK(same, "attn_q/attn_k hold llama2.c's (Meta's) rows");
            uint32_t rd = 0;
            CHECK(loom_gguf_get_u32(g, "llama.rope.dimension_count", &rd) == LOOM_OK && rd == dim / (size_t)h[3], "rope dims %u", rd);
        }
        loom_gguf_close(g);
    }
    free(raw);
    loom_model_free(m);

    /* refusals name the file and what is unsupported */
    loom_gguf_writer *w;
    CHECK_OK(loom_gguf_writer_create(&w));
    loom_gguf_set_str(w, "general.architecture", "mamba");
    CHECK_OK(loom_gguf_writer_write(w, path));
    loom_gguf_writer_free(w);
    CHECK(loom_model_load(&m, path) == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), path) && strstr(loom_errmsg(), "'mamba'"), "%s",
          loom_errmsg());
    CHECK_OK(loom_gguf_writer_create(&w));
    loom_gguf_set_str(w, "general.architecture", "llama");
    loom_gguf_set_u32(w, "llama.block_count", 2);
    CHECK_OK(loom_gguf_writer_write(w, path));
    loom_gguf_writer_free(w);
    CHECK(loom_model_load(&m, path) == LOOM_ENOTFOUND && strstr(loom_errmsg(), "llama.embedding_length"), "%s", loom_errmsg());
    /* keys describing a huge model over a tiny tensor: refused before any allocation */
    CHECK_OK(loom_gguf_writer_create(&w));
    loom_gguf_set_str(w, "general.architecture", "llama");
    loom_gguf_set_u32(w, "llama.block_count", 1024);
    loom_gguf_set_u32(w, "llama.embedding_length", 65536);
    loom_gguf_set_u32(w, "llama.feed_forward_length", 1 << 20);
    loom_gguf_set_u32(w, "llama.attention.head_count", 256);
    loom_gguf_set_u32(w, "llama.context_length", 4096);
    {
        static const float one[64];
        int64_t ne[2] = {64, 1}; /* one row of 64: the size check comes before the shape check */
        loom_gguf_writer_add_f32(w, "token_embd.weight", LOOM_GGML_F32, 2, ne, one);
    }
    CHECK_OK(loom_gguf_writer_write(w, path));
    loom_gguf_writer_free(w);
    CHECK(loom_model_load(&m, path) == LOOM_EFORMAT && strstr(loom_errmsg(), "tensors hold 64"), "%s", loom_errmsg());
    unlink(path);
    rmdir(dir);
}

/* Tokenizers read from GGUF files: a small llama vocabulary encodes by its scores, and malformed ones
 * are refused naming the file and the key. */
static void test_tokenizer(void) {
    char dir[] = "/tmp/loom_gguf_XXXXXX", path[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/t.gguf", dir);
    /* <unk> <s> </s>, 256 bytes, then a b ab ▁ab ▁ c bc: "ab abc" is ▁ab ▁ab c (ab scores above bc; the other order gives ▁ab ▁a bc) */
    enum { NV = 3 + 256 + 7 };
    const char *tok[NV];
    char bytes[256][8];
    float score[NV];
    int32_t type[NV];
    tok[0] = "<unk>", tok[1] = "<s>", tok[2] = "</s>";
    type[0] = 2, type[1] = type[2] = 3;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        tok[3 + b] = bytes[b];
        type[3 + b] = 6;
    }
    const char *pieces[7] = {"a", "b", "ab", "\xe2\x96\x81" "ab", "\xe2\x96\x81", "c", "bc"};
    const float ps[7] = {-10, -11, -1, -2, -12, -13, -3};
    for (int i = 0; i < 7; i++) tok[259 + i] = pieces[i], type[259 + i] = 1, score[259 + i] = ps[i];
    for (int i = 0; i < 259; i++) score[i] = 0;
    for (int bad = 0; bad < 4; bad++) {
        loom_gguf_writer *w;
        CHECK_OK(loom_gguf_writer_create(&w));
        loom_gguf_set_str(w, "tokenizer.ggml.model", bad == 1 ? "bert" : "llama");
        loom_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tok, NULL, NV);
        loom_gguf_set_arr(w, "tokenizer.ggml.scores", LOOM_GGUF_FLOAT32, score, NV);
        loom_gguf_set_arr(w, "tokenizer.ggml.token_type", LOOM_GGUF_INT32, type, bad == 2 ? NV - 1 : NV);
        if (bad == 3) loom_gguf_set_arr(w, "tokenizer.ggml.scores", LOOM_GGUF_INT32, type, NV);
        loom_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
        loom_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
        CHECK_OK(loom_gguf_writer_write(w, path));
        loom_gguf_writer_free(w);
        loom_tokenizer *t = NULL;
        int rc = loom_tokenizer_load(&t, path);
        if (bad == 0) {
            CHECK(rc == LOOM_OK, "%s", loom_errmsg());
            if (t) {
                int32_t *ids;
                size_t n;
                CHECK_OK(loom_tokenizer_encode(t, "ab abc\xc3\xa9", 8, LOOM_TOK_BOS, &ids, &n));
                /* BOS, ▁ab, ▁ab, c, then é as its two byte tokens 0xC3 0xA9 */
                static const int32_t want[6] = {1, 262, 262, 264, 3 + 0xC3, 3 + 0xA9};
                CHECK(n == 6 && !memcmp(ids, want, sizeof want), "encoded %zu ids: %d %d %d %d %d", n, n > 1 ? ids[1] : -1,
                      n > 2 ? ids[2] : -1, n > 3 ? ids[3] : -1, n > 4 ? ids[4] : -1, n > 5 ? ids[5] : -1);
                char *text;
                size_t len;
                CHECK_OK(loom_tokenizer_decode(t, ids, n, &text, &len));
                CHECK(len == 8 && !memcmp(text, "ab abc\xc3\xa9", 8), "decoded '%s'", text);
                free(text);
                free(ids);
                CHECK(!strcmp(loom_tokenizer_kind(t), "gguf-llama") && loom_tokenizer_bos(t) == 1 && loom_tokenizer_eos(t) == 2, "kind");
            }
        } else {
            const char *want = bad == 1 ? "'bert' is not supported" : bad == 2 ? "token_type has 265 entries" : "scores is not an array of floats";
            CHECK(rc != LOOM_OK && strstr(loom_errmsg(), path) && strstr(loom_errmsg(), want), "case %d: %s", bad, loom_errmsg());
        }
        loom_tokenizer_free(t);
    }
    unlink(path);
    rmdir(dir);
}

int main(void) {
    test_read_reference();
    test_writer_bytes();
    test_types();
    test_malformed();
    test_model_roundtrip();
    test_tokenizer();
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
