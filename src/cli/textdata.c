#include "cli/textdata.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

#define TEXT_BLOCK (4u << 20)

/* Appends ids to the stream, narrowing them when the stream is 16-bit. */
static int stream_add(token_stream *s, size_t *cap, const int32_t *ids, size_t n) {
    if (s->n + n > *cap) {
        size_t nc = *cap ? *cap : 1u << 16;
        while (nc < s->n + n) nc *= 2;
        size_t w = s->ids16 ? 2 : 4;
        void *p = realloc(s->ids16 ? (void *)s->ids16 : (void *)s->ids32, nc * w);
        if (!p) return loom_error(LOOM_ENOMEM, "out of memory for %zu tokens", nc);
        if (s->ids16) s->ids16 = p;
        else s->ids32 = p;
        *cap = nc;
    }
    if (s->ids16)
        for (size_t i = 0; i < n; i++) s->ids16[s->n + i] = (uint16_t)ids[i];
    else
        memcpy(s->ids32 + s->n, ids, n * sizeof *ids);
    s->n += n;
    return LOOM_OK;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Where a block may be cut: just after a '\n' that sits between two non-blank characters. 0 = none. */
static size_t cut_point(const char *t, size_t len) {
    for (size_t i = len; i >= 3; i--)
        if (t[i - 2] == '\n' && !is_blank(t[i - 3]) && !is_blank(t[i - 1])) return i - 1;
    return 0;
}

/* True when encoding a probe text in two pieces cut at such a line break gives the ids of the whole
 * (no prefix added at the start of a text, no merge across the break). */
static int cut_safe(const loom_tokenizer *tok) {
    static const char probe[] = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.";
    size_t len = sizeof probe - 1, cut = cut_point(probe, len);
    int32_t *a = NULL, *b = NULL, *c = NULL;
    size_t na = 0, nb = 0, nc = 0;
    int ok = cut && loom_tokenizer_encode(tok, probe, len, 0, &a, &na) == LOOM_OK &&
             loom_tokenizer_encode(tok, probe, cut, 0, &b, &nb) == LOOM_OK &&
             loom_tokenizer_encode(tok, probe + cut, len - cut, 0, &c, &nc) == LOOM_OK && na == nb + nc &&
             !memcmp(a, b, nb * sizeof *a) && !memcmp(a + nb, c, nc * sizeof *a);
    free(a);
    free(b);
    free(c);
    loom_clear_error();
    return ok;
}

int text_load(token_stream *s, const char *path, const loom_tokenizer *tok) {
    memset(s, 0, sizeof *s);
    const char *kind = loom_tokenizer_kind(tok);
    int blockwise = (!strcmp(kind, "byte") || !strcmp(kind, "bpe-bytelevel") || !strcmp(kind, "tiktoken")) &&
                    cut_safe(tok);
    int narrow = loom_tokenizer_vocab_size(tok) <= 65536;
    size_t cap = 0, block = TEXT_BLOCK;
    const char *env = getenv("LOOM_TEXT_BLOCK");
    if (env && atol(env) >= 16) block = (size_t)atol(env);
    if (narrow) s->ids16 = malloc(2);
    else s->ids32 = malloc(4);
    if (!s->ids16 && !s->ids32) return loom_error(LOOM_ENOMEM, "out of memory");
    if (!blockwise) {
        char *data;
        size_t len;
        int32_t *ids;
        size_t n;
        int rc = loom_read_file(path, &data, &len);
        if (rc != LOOM_OK) goto fail_rc;
        rc = loom_tokenizer_encode(tok, data, len, 0, &ids, &n);
        free(data);
        if (rc != LOOM_OK) {
            rc = loom_error_context(rc, "%s", path);
            goto fail_rc;
        }
        rc = stream_add(s, &cap, ids, n);
        free(ids);
        if (rc != LOOM_OK) goto fail_rc;
        return LOOM_OK;
    fail_rc:
        text_free(s);
        return rc;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        text_free(s);
        return loom_error(LOOM_EIO, "cannot open %s: %s", path, strerror(errno));
    }
    char *buf = malloc(block + 1);
    size_t have = 0;
    int rc = buf ? LOOM_OK : loom_error(LOOM_ENOMEM, "out of memory");
    while (rc == LOOM_OK) {
        size_t got = fread(buf + have, 1, block - have, f);
        have += got;
        int eof = got == 0 || feof(f);
        if (ferror(f)) {
            rc = loom_error(LOOM_EIO, "%s: read error", path);
            break;
        }
        if (eof && !have) break;
        size_t cut = eof ? have : cut_point(buf, have);
        if (!cut) { /* no line break to cut at in a whole block: grow it */
            char *nb = realloc(buf, 2 * block + 1);
            if (!nb) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            buf = nb;
            block *= 2;
            continue;
        }
        int32_t *ids;
        size_t n;
        if ((rc = loom_tokenizer_encode(tok, buf, cut, 0, &ids, &n)) != LOOM_OK) {
            rc = loom_error_context(rc, "%s", path);
            break;
        }
        rc = stream_add(s, &cap, ids, n);
        free(ids);
        memmove(buf, buf + cut, have - cut);
        have -= cut;
    }
    free(buf);
    fclose(f);
    if (rc != LOOM_OK) text_free(s);
    return rc;
}

void text_free(token_stream *s) {
    free(s->ids16);
    free(s->ids32);
    memset(s, 0, sizeof *s);
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
            tokens[b * T + t] = i < hi ? text_id(s, i) : 0;
            targets[b * T + t] = i + 1 < hi ? text_id(s, i + 1) : -1;
        }
    }
}

int text_window(const token_stream *s, size_t lo, size_t hi, int T, long k, int32_t *tokens, int32_t *targets) {
    size_t start = lo + (size_t)k * (size_t)T;
    if (start + 1 >= hi) return 0;
    for (int t = 0; t < T; t++) {
        size_t i = start + (size_t)t;
        tokens[t] = i < hi ? text_id(s, i) : 0;
        targets[t] = i + 1 < hi ? text_id(s, i + 1) : -1;
    }
    return 1;
}
