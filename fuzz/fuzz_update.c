/* Upload bodies: loom_update_decode over any bytes with the server's limit (4096 values), once with a
 * control buffer and once without. A decoded update must be in bounds and well formed, and encoding
 * it again (f32, lossless) must decode to the same values bit for bit. */
#include "fuzz_util.h"
#include "loom/update.h"

enum { MAX_LEN = 4096 };

static float vals[MAX_LEN], ctl[MAX_LEN], again[MAX_LEN], again_ctl[MAX_LEN];

static void check(const uint8_t *data, size_t n, float *control) {
    loom_update u;
    int rc = loom_update_decode(data, n, MAX_LEN, &u, vals, control);
    fuzz_check_error(rc);
    if (rc != LOOM_OK) {
        fuzz_assert(u.len == 0 && u.values == NULL && u.control == NULL);
        return;
    }
    fuzz_assert(u.len <= MAX_LEN && u.values == vals && u.wire_bytes == n);
    fuzz_assert(u.control == NULL || (control && u.control == control));
    fuzz_assert(u.round >= 0 && u.client >= 0 && u.examples >= 1 && u.examples <= UINT32_MAX && u.tokens >= 0);
    fuzz_assert(u.codec <= LOOM_CODEC_TOPK);
    uint8_t *buf = NULL;
    size_t bn = 0;
    rc = loom_update_encode(&u, NULL, &buf, &bn);
    fuzz_assert(rc == LOOM_OK && bn == loom_update_encoded_size(&u, NULL));
    loom_update d;
    fuzz_assert(loom_update_decode(buf, bn, MAX_LEN, &d, again, again_ctl) == LOOM_OK);
    fuzz_assert(d.len == u.len && d.round == u.round && d.client == u.client && d.examples == u.examples &&
                d.loss == u.loss && d.run_id == u.run_id && d.version == u.version && d.tokens == u.tokens);
    fuzz_assert(!memcmp(again, vals, u.len * sizeof(float)));
    fuzz_assert((d.control != NULL) == (u.control != NULL));
    if (u.control) fuzz_assert(!memcmp(again_ctl, u.control, u.len * sizeof(float)));
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_dir();
    check(data, n, ctl);
    check(data, n, NULL);
    return 0;
}
