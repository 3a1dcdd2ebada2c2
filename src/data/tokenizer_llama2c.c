/* llama2.c tokenizer.bin: a SentencePiece BPE vocabulary exported as pieces and scores.
 *
 * Layout (little-endian): int32 max_token_length, then per token until the end of the file:
 * float32 score, int32 len, len bytes. Ids 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>; pieces
 * carry real spaces where SentencePiece writes U+2581.
 *
 * Encoding reproduces SentencePiece's BPE: the dummy prefix " " goes in front of non-empty text,
 * each UTF-8 character starts as its own symbol, and the adjacent pair whose concatenation is the
 * highest-scoring piece merges first (leftmost among equal scores); characters outside the vocabulary
 * become their <0xNN> byte tokens. Decoding follows llama2.c's run.c: a piece's leading space is
 * dropped after BOS (and at the start of a sequence, which undoes the dummy prefix), <0xNN> gives
 * the raw byte. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_bpe.h"
#include "loom/core.h"

enum { L2C_BOS = 1, L2C_EOS = 2, L2C_FIRST_BYTE = 3, L2C_FIRST_PIECE = 259, L2C_MAX_LEN = 1 << 16 };

typedef struct {
    tok_bpe bpe;
} l2c_impl;

int tok_spm_encode(tok_bpe *bpe, const char *text, size_t len, int32_t **ids, size_t *n) {
    tok_ids out = {0};
    int rc = LOOM_OK;
    if (len > 0) {
        /* " " + text, with U+2581 written as the space it stands for in these pieces */
        char *s = malloc(len + 1);
        if (!s) return loom_error(LOOM_ENOMEM, "out of memory encoding %zu bytes", len);
        size_t k = 0;
        s[k++] = ' ';
        for (size_t i = 0; i < len; i++) {
            if (i + 3 <= len && !memcmp(text + i, "\xE2\x96\x81", 3)) {
                s[k++] = ' ';
                i += 2;
            } else
                s[k++] = text[i];
        }
        rc = tok_bpe_word(bpe, s, k, &out);
        free(s);
    }
    if (rc != LOOM_OK) {
        free(out.v);
        return rc;
    }
    *ids = out.v ? out.v : malloc(sizeof(int32_t));
    *n = out.n;
    if (!*ids) return loom_error(LOOM_ENOMEM, "out of memory");
    return LOOM_OK;
}

static int l2c_encode(const loom_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
    l2c_impl *p = t->impl;
    return tok_spm_encode(&p->bpe, text, len, ids, n);
}

static int l2c_piece(const loom_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t cap) {
    const l2c_impl *p = t->impl;
    if (id < 0 || id >= t->vocab_size) return loom_error(LOOM_ERANGE, "token id %d outside the vocabulary (%d)", id, t->vocab_size);
    if (id >= L2C_FIRST_BYTE && id < L2C_FIRST_PIECE) {
        if (cap < 1) return loom_error(LOOM_EINVAL, "buffer too small");
        buf[0] = (char)(id - L2C_FIRST_BYTE);
        return 1;
    }
    const char *s = p->bpe.str[id];
    size_t n = p->bpe.str_len[id];
    if ((prev < 0 || prev == L2C_BOS) && n > 0 && s[0] == ' ') s++, n--;
    if (n > cap) return loom_error(LOOM_EINVAL, "piece of token %d (%zu bytes) does not fit in %zu bytes", id, n, cap);
    memcpy(buf, s, n);
    return (int)n;
}

static void l2c_destroy(loom_tokenizer *t) {
    l2c_impl *p = t->impl;
    if (!p) return;
    tok_bpe_free(&p->bpe);
    free(p);
    t->impl = NULL;
}

/* Pieces as stored in tokenizer.bin (spaces, not U+2581); the specials by their SentencePiece names. */
static int32_t l2c_token_id(const loom_tokenizer *t, const char *token) {
    const l2c_impl *p = t->impl;
    if (!strcmp(token, "<unk>")) return 0;
    if (!strcmp(token, "<s>")) return L2C_BOS;
    if (!strcmp(token, "</s>")) return L2C_EOS;
    size_t n = strlen(token);
    for (int32_t id = L2C_FIRST_BYTE; id < L2C_FIRST_PIECE; id++)
        if (p->bpe.str_len[id] == n && !memcmp(p->bpe.str[id], token, n)) return id;
    return tok_strmap_get(&p->bpe.vocab, token, n);
}

static const loom_tokenizer_ops l2c_ops = {"llama2c", l2c_encode, l2c_piece, l2c_destroy, l2c_token_id};

static int32_t rd_i32(const unsigned char *p) { return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24); }
static float rd_f32(const unsigned char *p) {
    uint32_t u = (uint32_t)rd_i32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct {
    float score;
    int32_t id;
} scored;

static int by_score_desc(const void *x, const void *y) {
    const scored *a = x, *b = y;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return a->id < b->id ? -1 : 1;
}

int tok_load_llama2c(loom_tokenizer **out, const char *path) {
    *out = NULL;
    char *data;
    size_t size;
    int rc = loom_read_file(path, &data, &size);
    if (rc != LOOM_OK) return rc;
    const unsigned char *d = (const unsigned char *)data;
    loom_tokenizer *t = NULL;
    l2c_impl *p = NULL;
    float *score = NULL;
    scored *order = NULL;
    int32_t *rank = NULL;
    if (size < 4) {
        rc = loom_error(LOOM_EFORMAT, "%s: %zu bytes, too short for a tokenizer.bin header", path, size);
        goto fail;
    }
    int32_t max_len = rd_i32(d);
    if (max_len <= 0 || max_len > L2C_MAX_LEN) {
        rc = loom_error(LOOM_EFORMAT, "%s: max_token_length %d outside 1..%d (not a llama2.c tokenizer.bin?)", path, max_len, L2C_MAX_LEN);
        goto fail;
    }
    /* first pass: count and check the records */
    int32_t n = 0;
    for (size_t pos = 4; pos < size; n++) {
        if (size - pos < 8) {
            rc = loom_error(LOOM_EFORMAT, "%s: truncated: token %d needs an 8-byte header, %zu bytes left", path, n, size - pos);
            goto fail;
        }
        int32_t len = rd_i32(d + pos + 4);
        float sc = rd_f32(d + pos);
        if (len < 0 || len > max_len) {
            rc = loom_error(LOOM_EFORMAT, "%s: token %d has length %d outside 0..max_token_length (%d)", path, n, len, max_len);
            goto fail;
        }
        if (!isfinite(sc)) {
            rc = loom_error(LOOM_EFORMAT, "%s: token %d has a non-finite score", path, n);
            goto fail;
        }
        if (size - pos - 8 < (size_t)len) {
            rc = loom_error(LOOM_EFORMAT, "%s: truncated: token %d needs %d bytes, %zu left", path, n, len, size - pos - 8);
            goto fail;
        }
        pos += 8 + (size_t)len;
        if (n >= (1 << 24)) {
            rc = loom_error(LOOM_EFORMAT, "%s: more than %d tokens", path, 1 << 24);
            goto fail;
        }
    }
    if (n < L2C_FIRST_PIECE) {
        rc = loom_error(LOOM_EFORMAT, "%s: %d tokens; a llama2.c vocabulary has <unk>, <s>, </s> and 256 byte tokens first", path, n);
        goto fail;
    }
    t = calloc(1, sizeof *t);
    p = calloc(1, sizeof *p);
    score = malloc((size_t)n * sizeof *score);
    order = malloc((size_t)n * sizeof *order);
    rank = malloc((size_t)n * sizeof *rank);
    if (!t || !p || !score || !order || !rank) {
        free(t), free(p);
        t = NULL;
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto fail;
    }
    t->impl = p;
    t->ops = &l2c_ops;
    t->vocab_size = n;
    t->bos = L2C_BOS;
    t->eos = L2C_EOS;
    t->pad = -1;
    t->max_piece = max_len > 8 ? max_len : 8;
    if ((rc = tok_bpe_init(&p->bpe, n)) != LOOM_OK) goto fail;
    tok_bpe *m = &p->bpe;
    size_t pos = 4;
    for (int32_t id = 0; id < n; id++) {
        score[id] = rd_f32(d + pos);
        int32_t len = rd_i32(d + pos + 4);
        const char *s = data + pos + 8;
        pos += 8 + (size_t)len;
        if (id >= L2C_FIRST_BYTE && id < L2C_FIRST_PIECE) {
            char want[8];
            snprintf(want, sizeof want, "<0x%02X>", id - L2C_FIRST_BYTE);
            if (len != 6 || memcmp(s, want, 6)) {
                rc = loom_error(LOOM_EFORMAT, "%s: token %d is \"%.*s\", expected the byte token %s", path, id, len, s, want);
                goto fail;
            }
            m->byte_id[id - L2C_FIRST_BYTE] = id;
        }
        /* Only normal pieces take part in lookups and merges: text "<s>" must not become BOS. */
        char *c = malloc((size_t)len + 1);
        if (!c) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto fail;
        }
        memcpy(c, s, (size_t)len);
        c[len] = 0;
        m->str[id] = c;
        m->str_len[id] = (uint32_t)len;
        if (id >= L2C_FIRST_PIECE && len > 0 && (rc = tok_strmap_put(&m->vocab, c, (size_t)len, id)) != LOOM_OK) goto fail;
    }
    m->byte_fallback = 1;
    tok_bpe_find_barriers(m);
    m->unk = 0;
    /* rank = position in descending score order, equal scores sharing a rank */
    for (int32_t i = 0; i < n; i++) order[i] = (scored){score[i], i};
    qsort(order, (size_t)n, sizeof *order, by_score_desc);
    for (int32_t i = 0; i < n; i++)
        rank[order[i].id] = (i > 0 && order[i].score == order[i - 1].score) ? rank[order[i - 1].id] : i;
    /* every way of writing a piece as the concatenation of two pieces is a mergeable pair */
    for (int32_t id = L2C_FIRST_PIECE; id < n; id++) {
        const char *s = m->str[id];
        uint32_t len = m->str_len[id];
        for (uint32_t k = 1; k < len; k++) {
            int32_t a = tok_strmap_get(&m->vocab, s, k), b = tok_strmap_get(&m->vocab, s + k, len - k);
            if (a >= 0 && b >= 0 && (rc = tok_pairmap_put(&m->merges, a, b, rank[id], id)) != LOOM_OK) goto fail;
        }
    }
    free(score);
    free(order);
    free(rank);
    free(data);
    *out = t;
    return LOOM_OK;
fail:
    free(score);
    free(order);
    free(rank);
    free(data);
    loom_tokenizer_free(t);
    return rc;
}
