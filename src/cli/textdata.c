#include "cli/textdata.h"

#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

int text_load(token_stream *s, const char *path, const loom_tokenizer *tok) {
    memset(s, 0, sizeof *s);
    char *data;
    size_t len;
    int rc = loom_read_file(path, &data, &len);
    if (rc != LOOM_OK) return rc;
    rc = loom_tokenizer_encode(tok, data, len, 0, &s->ids, &s->n);
    free(data);
    if (rc != LOOM_OK) return loom_error_context(rc, "%s", path);
    return LOOM_OK;
}

void text_free(token_stream *s) {
    free(s->ids);
    s->ids = NULL;
    s->n = 0;
}

void text_batch(const token_stream *s, size_t lo, size_t hi, int B, int T, uint64_t seed, long step, int32_t *tokens,
                int32_t *targets) {
    loom_rng r;
    loom_rng_init(&r, seed, loom_hash2(LOOM_STREAM_TEXT_WINDOW, (uint64_t)step));
    size_t span = hi - lo > (size_t)T + 1 ? hi - lo - (size_t)T - 1 : 1;
    for (int b = 0; b < B; b++) {
        size_t start = lo + (size_t)(loom_rng_uniform(&r) * (double)span);
        for (int t = 0; t < T; t++) {
            size_t i = start + (size_t)t;
            tokens[b * T + t] = i < hi ? s->ids[i] : 0;
            targets[b * T + t] = i + 1 < hi ? s->ids[i + 1] : -1;
        }
    }
}

int text_window(const token_stream *s, size_t lo, size_t hi, int T, long k, int32_t *tokens, int32_t *targets) {
    size_t start = lo + (size_t)k * (size_t)T;
    if (start + 1 >= hi) return 0;
    for (int t = 0; t < T; t++) {
        size_t i = start + (size_t)t;
        tokens[t] = i < hi ? s->ids[i] : 0;
        targets[t] = i + 1 < hi ? s->ids[i + 1] : -1;
    }
    return 1;
}
