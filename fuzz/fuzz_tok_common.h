/* After a tokenizer loads, it must encode and decode a few texts (ASCII, multi-byte, specials-like,
 * and bytes from the input itself) without failing in ways other than an error with a message. */
#ifndef LOOM_FUZZ_TOK_COMMON_H
#define LOOM_FUZZ_TOK_COMMON_H
#include "fuzz_util.h"
#include "loom/tokenizer.h"

static inline void fuzz_exercise_tokenizer(loom_tokenizer *t, const uint8_t *data, size_t n) {
    const char *texts[] = {"Once upon a time, there was a little girl.", "  caf\xc3\xa9 \xe2\x80\x94 \xf0\x9f\x98\x80 12345",
                           "<s></s><|endoftext|>\n\n\t", ""};
    int V = loom_tokenizer_vocab_size(t);
    fuzz_assert(V > 0);
    for (int k = 0; k < 5; k++) {
        const char *s = k < 4 ? texts[k] : (const char *)data;
        size_t len = k < 4 ? strlen(s) : (n < 64 ? n : 64);
        int32_t *ids = NULL;
        size_t m = 0;
        int rc = loom_tokenizer_encode(t, s, len, LOOM_TOK_BOS | LOOM_TOK_EOS, &ids, &m);
        fuzz_check_error(rc);
        if (rc == LOOM_OK) {
            for (size_t i = 0; i < m; i++) fuzz_assert(ids[i] >= 0 && ids[i] < V);
            char *out = NULL;
            size_t olen = 0;
            fuzz_check_error(loom_tokenizer_decode(t, ids, m, &out, &olen));
            free(out);
            loom_detok *d = NULL;
            if (loom_detok_create(&d, t) == LOOM_OK) {
                char buf[256];
                size_t w;
                for (size_t i = 0; i < m; i++) fuzz_check_error(loom_detok_push(d, ids[i], buf, sizeof buf, &w));
                fuzz_check_error(loom_detok_flush(d, buf, sizeof buf, &w));
                loom_detok_free(d);
            }
        }
        free(ids);
    }
    /* ids out of range must be refused, not read */
    int32_t bad[3] = {-1, V, 0x7fffffff};
    char *out = NULL;
    size_t olen;
    fuzz_check_error(loom_tokenizer_decode(t, bad, 3, &out, &olen));
    free(out);
    (void)loom_tokenizer_token_id(t, "<s>");
}
#endif
