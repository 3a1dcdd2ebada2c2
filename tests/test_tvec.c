/* Trainable-vector manifests and their serializer: round trips through files and memory, roles,
 * prefixes, the format version, and a clear error naming the tensor for every kind of bad input;
 * a model's and a trainable set's manifests describe their vectors. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/safetensors.h"
#include "loom/tvec.h"
#include "test.h"

static loom_tvec *small(void) {
    loom_tvec *v;
    if (loom_tvec_create(&v) != LOOM_OK) return NULL;
    int64_t a[2] = {3, 4}, b[1] = {5}, c[2] = {2, 2};
    CHECK_OK(loom_tvec_add(v, "a.weight", 2, a, LOOM_ROLE_SHARED));
    CHECK_OK(loom_tvec_add(v, "b.bias", 1, b, LOOM_ROLE_SHARED));
    CHECK_OK(loom_tvec_add(v, "head.weight", 2, c, LOOM_ROLE_PRIVATE));
    return v;
}

static void test_manifest(void) {
    loom_tvec *v = small();
    if (!v) return;
    CHECK(loom_tvec_count(v) == 3 && loom_tvec_dim(v) == 12 + 5 + 4, "dim %zu", loom_tvec_dim(v));
    const loom_tvec_entry *b = loom_tvec_find(v, "b.bias");
    CHECK(b && b->offset == 12 && b->numel == 5 && b->ndim == 1 && b->dtype == LOOM_DT_F32, "b.bias entry");
    CHECK(loom_tvec_numel(v, LOOM_ROLE_BIT(LOOM_ROLE_SHARED)) == 17, "shared numel");
    CHECK(loom_tvec_numel(v, LOOM_ROLE_BIT(LOOM_ROLE_PRIVATE)) == 4, "private numel");
    CHECK(loom_tvec_numel(v, LOOM_ROLES_ALL) == 21, "all numel");
    int64_t s[1] = {2};
    int rc = loom_tvec_add(v, "b.bias", 1, s, LOOM_ROLE_SHARED);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "b.bias") && strstr(loom_errmsg(), "twice"), "dup: %s", loom_errmsg());
    rc = loom_tvec_add_at(v, "overlap", 1, s, 11, LOOM_ROLE_SHARED);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "overlap") && strstr(loom_errmsg(), "a.weight"), "overlap: %s",
          loom_errmsg());
    int64_t z[1] = {0};
    rc = loom_tvec_add(v, "empty", 1, z, LOOM_ROLE_SHARED);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "empty"), "zero size: %s", loom_errmsg());
    loom_tvec_free(v);
}

static void fill(float *x, size_t n, float k) {
    for (size_t i = 0; i < n; i++) x[i] = k * (float)i - 3.0f;
}

static void test_roundtrip(const char *dir) {
    loom_tvec *v = small();
    if (!v) return;
    size_t n = loom_tvec_dim(v);
    float *x = calloc(n, sizeof *x), *y = calloc(n, sizeof *y);
    fill(x, n, 0.25f);
    char path[4096];
    snprintf(path, sizeof path, "%s/v.safetensors", dir);
    const char *meta[] = {"loom_peft", "lora", NULL};
    loom_tvec_io io = {.meta = meta};
    CHECK_OK(loom_tvec_write(v, x, &io, path));
    CHECK_OK(loom_tvec_read(v, y, NULL, path));
    CHECK(!memcmp(x, y, n * sizeof *x), "file round trip");
    loom_st_file *f;
    CHECK_OK(loom_st_open(&f, path));
    if (f) {
        CHECK(loom_st_meta(f, "loom_tvec") && !strcmp(loom_st_meta(f, "loom_tvec"), "1"), "version key");
        CHECK(loom_st_meta(f, "loom_peft") && !strcmp(loom_st_meta(f, "loom_peft"), "lora"), "caller's key");
        CHECK(loom_st_count(f) == 3, "3 tensors, got %zu", loom_st_count(f));
        loom_st_close(f);
    }

    /* memory, shared role only: the private head neither travels nor is overwritten */
    void *buf;
    size_t len;
    loom_tvec_io sh = {.roles = LOOM_ROLE_BIT(LOOM_ROLE_SHARED)};
    CHECK_OK(loom_tvec_serialize(v, x, &sh, &buf, &len));
    for (size_t i = 0; i < n; i++) y[i] = 99.0f;
    CHECK_OK(loom_tvec_deserialize(v, y, &sh, buf, len, "upload"));
    const loom_tvec_entry *h = loom_tvec_find(v, "head.weight");
    CHECK(!memcmp(x, y, h->offset * sizeof *x), "shared part read back");
    CHECK(y[h->offset] == 99.0f && y[n - 1] == 99.0f, "private part untouched");
    /* reading everything from a shared-only buffer names the missing private tensor */
    int rc = loom_tvec_deserialize(v, y, NULL, buf, len, "upload");
    CHECK(rc == LOOM_ENOTFOUND && strstr(loom_errmsg(), "upload") && strstr(loom_errmsg(), "head.weight"), "missing: %s",
          loom_errmsg());
    /* size limit */
    loom_tvec_io lim = {.max_bytes = len - 1};
    rc = loom_tvec_deserialize(v, y, &lim, buf, len, "upload");
    CHECK(rc == LOOM_ERANGE && strstr(loom_errmsg(), "upload") && strstr(loom_errmsg(), "limit"), "limit: %s",
          loom_errmsg());
    lim.max_bytes = 64;
    rc = loom_tvec_read(v, y, &lim, path);
    CHECK(rc == LOOM_ERANGE && strstr(loom_errmsg(), path) && strstr(loom_errmsg(), "limit"), "file limit: %s",
          loom_errmsg());
    /* truncated buffer */
    rc = loom_tvec_deserialize(v, y, &sh, buf, len / 2, "upload");
    CHECK(rc == LOOM_EFORMAT && strstr(loom_errmsg(), "upload"), "truncated: %s", loom_errmsg());
    loom_free(buf);

    /* prefixes: two vectors in one file */
    loom_st_writer *w;
    CHECK_OK(loom_st_writer_create(&w));
    loom_tvec_io pa = {.prefix = "global."}, pb = {.prefix = "momentum."};
    float *x2 = calloc(n, sizeof *x2), *y2 = calloc(n, sizeof *y2);
    fill(x2, n, -0.5f);
    CHECK_OK(loom_tvec_add_to(w, v, x, &pa));
    CHECK_OK(loom_tvec_add_to(w, v, x2, &pb));
    CHECK_OK(loom_st_writer_serialize(w, &buf, &len));
    loom_st_writer_free(w);
    CHECK_OK(loom_st_open_memory(&f, buf, len, "ckpt"));
    if (f) {
        CHECK_OK(loom_tvec_read_from(f, v, y, &pa));
        CHECK_OK(loom_tvec_read_from(f, v, y2, &pb));
        CHECK(!memcmp(x, y, n * sizeof *x) && !memcmp(x2, y2, n * sizeof *x), "prefixed vectors");
        loom_st_close(f);
    }
    loom_free(buf);

    /* a newer format version, a wrong shape, an extra tensor, a non-float dtype */
    int64_t a[2] = {3, 4}, a2[2] = {4, 3}, b[1] = {5}, c[2] = {2, 2};
    int32_t ints[5] = {0};
    for (int k = 0; k < 4; k++) {
        CHECK_OK(loom_st_writer_create(&w));
        CHECK_OK(loom_st_writer_add(w, "a.weight", LOOM_DT_F32, 2, k == 1 ? a2 : a, x));
        CHECK_OK(loom_st_writer_add(w, "b.bias", k == 3 ? LOOM_DT_I32 : LOOM_DT_F32, 1, b, k == 3 ? (void *)ints : (void *)(x + 12)));
        CHECK_OK(loom_st_writer_add(w, "head.weight", LOOM_DT_F32, 2, c, x + 17));
        if (k == 2) CHECK_OK(loom_st_writer_add(w, "stray", LOOM_DT_F32, 1, b, x));
        CHECK_OK(loom_st_writer_meta(w, "loom_tvec", k == 0 ? "2" : "1"));
        CHECK_OK(loom_st_writer_serialize(w, &buf, &len));
        loom_st_writer_free(w);
        rc = loom_tvec_deserialize(v, y, NULL, buf, len, "bad");
        const char *e = loom_errmsg();
        if (k == 0) CHECK(rc == LOOM_EUNSUPPORTED && strstr(e, "version 2"), "version: %s", e);
        if (k == 1) CHECK(rc == LOOM_EFORMAT && strstr(e, "a.weight") && strstr(e, "[4, 3]") && strstr(e, "[3, 4]"), "shape: %s", e);
        if (k == 2) CHECK(rc == LOOM_EFORMAT && strstr(e, "stray"), "extra: %s", e);
        if (k == 3) CHECK(rc == LOOM_EUNSUPPORTED && strstr(e, "b.bias"), "dtype: %s", e);
        if (k == 2) {
            loom_tvec_io ex = {.allow_extra = 1};
            CHECK_OK(loom_tvec_deserialize(v, y, &ex, buf, len, "bad"));
        }
        loom_free(buf);
    }
    free(x); free(y); free(x2); free(y2);
    loom_tvec_free(v);
}

static void test_model_and_set(void) {
    loom_config cfg;
    CHECK_OK(loom_config_named(&cfg, "gpt2-tiny"));
    loom_model *m;
    CHECK_OK(loom_model_create(&m, &cfg, 1));
    if (!m) return;
    const loom_tvec *mv = loom_model_manifest(m);
    CHECK(loom_tvec_count(mv) == loom_model_n_tensors(m) && loom_tvec_dim(mv) == loom_model_n_params(m), "model manifest size");
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const loom_tensor *t = loom_model_tensor(m, i);
        const loom_tvec_entry *e = loom_tvec_at(mv, i);
        CHECK(e && !strcmp(e->name, t->name) && e->offset == t->offset && e->numel == t->numel && e->shape[0] == t->shape[0],
              "model manifest entry %d", i);
    }
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    loom_tset *ts;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 7));
    if (ts) {
        const loom_tvec *tv = loom_tset_manifest(ts);
        CHECK(loom_tvec_count(tv) == loom_tset_count(ts) && loom_tvec_dim(tv) == loom_tset_dim(ts), "set manifest size");
        for (int i = 0; i < loom_tset_count(ts); i++) {
            const loom_tset_entry *a = loom_tset_entry_at(ts, i);
            const loom_tvec_entry *e = loom_tvec_at(tv, i);
            CHECK(e && !strcmp(e->name, a->name) && e->offset == a->offset && e->numel == a->numel &&
                  e->role == LOOM_ROLE_SHARED, "set manifest entry %d", i);
        }
        loom_tset_free(ts);
    }
    loom_peft_defaults(&pc, LOOM_PEFT_FULL);
    CHECK_OK(loom_tset_create(&ts, m, &pc, 7));
    if (ts) {
        const loom_tvec *tv = loom_tset_manifest(ts);
        CHECK(loom_tvec_dim(tv) == loom_tvec_dim(mv) && loom_tvec_count(tv) == loom_tvec_count(mv), "FULL = model manifest");
        for (int i = 0; i < loom_tvec_count(tv); i++)
            CHECK(loom_tvec_at(tv, i)->offset == loom_tvec_at(mv, i)->offset, "FULL entry %d", i);
        loom_tset_free(ts);
    }
    loom_model_free(m);
}

int main(void) {
    char dir[] = "/tmp/loom_test_tvec_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    test_manifest();
    test_roundtrip(dir);
    test_model_and_set();
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "rm");
    return test_summary();
}
