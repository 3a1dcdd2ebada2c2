/* GGUF from memory: the container's validation, every key/value read back through its typed getter,
 * every tensor converted to float (the converters must stay inside what the header promised); then the
 * same bytes as a file through the model loader (architecture keys, tensor shapes, the tokenizer). */
#include "fuzz_util.h"
#include "loom/gguf.h"
#include "loom/model.h"

static void read_kv(const loom_gguf *g, size_t i) {
    const loom_gguf_kv *kv = loom_gguf_kv_at(g, i);
    fuzz_assert(kv && kv->key && loom_gguf_find_kv(g, kv->key) >= 0);
    uint32_t u;
    int64_t l;
    float f;
    int b;
    const char *s;
    size_t len;
    if (kv->type == LOOM_GGUF_ARRAY) {
        size_t n = kv->n < 64 ? kv->n : 64;
        for (size_t j = 0; j < n; j++) {
            if (kv->arr_type == LOOM_GGUF_STRING) {
                fuzz_check_error(loom_gguf_arr_str(g, (int)i, j, &s, &len));
            } else if (kv->arr_type == LOOM_GGUF_FLOAT32 || kv->arr_type == LOOM_GGUF_FLOAT64) {
                fuzz_check_error(loom_gguf_arr_f32(g, (int)i, j, &f));
            } else {
                fuzz_check_error(loom_gguf_arr_i64(g, (int)i, j, &l));
            }
        }
        fuzz_assert(loom_gguf_arr_i64(g, (int)i, kv->n, &l) != LOOM_OK);
        return;
    }
    fuzz_check_error(loom_gguf_get_u32(g, kv->key, &u));
    fuzz_check_error(loom_gguf_get_i64(g, kv->key, &l));
    fuzz_check_error(loom_gguf_get_f32(g, kv->key, &f));
    fuzz_check_error(loom_gguf_get_bool(g, kv->key, &b));
    fuzz_check_error(loom_gguf_get_str(g, kv->key, &s, &len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_dir();
    loom_gguf *g = NULL;
    int rc = loom_gguf_open_memory(&g, data, n, "fuzz.gguf");
    fuzz_check_error(rc);
    if (rc != LOOM_OK) return 0;
    for (size_t i = 0; i < loom_gguf_kv_count(g); i++) read_kv(g, i);
    for (size_t i = 0; i < loom_gguf_tensor_count(g); i++) {
        const loom_gguf_tensor *t = loom_gguf_tensor_at(g, i);
        fuzz_assert(t && t->name && loom_gguf_find_tensor(g, t->name) == t);
        fuzz_assert((const uint8_t *)t->data >= data && t->nbytes <= n);
        if (t->numel > (1u << 20)) continue;
        float *x = malloc((t->numel ? t->numel : 1) * sizeof *x);
        fuzz_check_error(loom_gguf_tensor_to_f32(t, x, t->numel));
        free(x);
    }
    loom_gguf_close(g);
    char path[128];
    fuzz_write(path, sizeof path, "m.gguf", data, n);
    loom_model *m = NULL;
    rc = loom_model_load_gguf(&m, path);
    fuzz_check_error(rc);
    loom_model_free(m);
    return 0;
}
