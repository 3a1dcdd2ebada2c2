/* A sharded model's index (model.safetensors.index.json) over two small valid shards written once:
 * the index may name them, other files, paths that leave the directory, or nothing. */
#include "fuzz_util.h"
#include "loom/safetensors.h"

static void write_shards(void) {
    static int done;
    if (done) return;
    done = 1;
    float a[6] = {1, 2, 3, 4, 5, 6}, b[4] = {7, 8, 9, 10};
    int64_t sa[2] = {2, 3}, sb[1] = {4};
    for (int s = 0; s < 2; s++) {
        loom_st_writer *w;
        if (loom_st_writer_create(&w) != LOOM_OK) abort();
        if (s == 0) loom_st_writer_add(w, "a.weight", LOOM_DT_F32, 2, sa, a);
        else loom_st_writer_add(w, "b.bias", LOOM_DT_F32, 1, sb, b);
        char p[256];
        snprintf(p, sizeof p, "%s/model-0000%d-of-00002.safetensors", fuzz_dir(), s + 1);
        if (loom_st_writer_write(w, p) != LOOM_OK) abort();
        loom_st_writer_free(w);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    write_shards();
    char p[256];
    fuzz_write(p, sizeof p, "model.safetensors.index.json", data, n);
    loom_st_set *s = NULL;
    int rc = loom_st_set_open(&s, p);
    fuzz_check_error(rc);
    if (rc == LOOM_OK) {
        for (size_t i = 0; i < loom_st_set_count(s); i++) {
            const loom_st_tensor *t = loom_st_set_at(s, i);
            fuzz_assert(t && loom_st_set_find(s, t->name) == t);
            float x[8];
            if (t->numel <= 8) fuzz_check_error(loom_st_to_f32(t, x, t->numel));
        }
        loom_st_set_close(s);
    }
    return 0;
}
