/* safetensors from memory: header validation, then every tensor converted (the converters must stay
 * inside what the header promised). */
#include "fuzz_util.h"
#include "loom/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_dir();
    loom_st_file *f = NULL;
    int rc = loom_st_open_memory(&f, data, n, "fuzz.safetensors");
    fuzz_check_error(rc);
    if (rc != LOOM_OK) return 0;
    for (size_t i = 0; i < loom_st_count(f); i++) {
        const loom_st_tensor *t = loom_st_at(f, i);
        fuzz_assert(t && t->name && (const uint8_t *)t->data >= data && t->nbytes <= n);
        fuzz_assert(loom_st_find(f, t->name) == t);
        if (t->numel > (1u << 20)) continue;
        float *x = malloc((t->numel ? t->numel : 1) * sizeof *x);
        int32_t *y = malloc((t->numel ? t->numel : 1) * sizeof *y);
        fuzz_check_error(loom_st_to_f32(t, x, t->numel));
        fuzz_check_error(loom_st_to_i32(t, y, t->numel));
        free(x);
        free(y);
    }
    for (size_t i = 0; i < loom_st_meta_count(f); i++) {
        const char *k, *v;
        fuzz_assert(loom_st_meta_at(f, i, &k, &v) == LOOM_OK && k && v);
        fuzz_assert(loom_st_meta(f, k) != NULL);
    }
    loom_st_close(f);
    return 0;
}
