/* Tokenizer front end: the kind-independent API, UTF-8 handling, streaming decode, and the
 * byte-level tokenizer. Other kinds live in their own files and plug in through loom_tokenizer_ops. */
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_impl.h"
#include "loom/core.h"

/* ---- byte-level tokenizer ---- */

enum { BYTE_BOS = 256, BYTE_EOS = 257, BYTE_PAD = 258, BYTE_VOCAB = 259 };

static int byte_encode(const loom_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
    (void)t;
    int32_t *out = malloc((len ? len : 1) * sizeof *out);
    if (!out) return loom_error(LOOM_ENOMEM, "out of memory encoding %zu bytes", len);
    for (size_t i = 0; i < len; i++) out[i] = (unsigned char)text[i];
    *ids = out;
    *n = len;
    return LOOM_OK;
}

static int byte_piece(const loom_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t cap) {
    (void)t;
    (void)prev;
    if (id < 0 || id >= BYTE_VOCAB) return loom_error(LOOM_ERANGE, "token id %d outside the byte vocabulary (259)", id);
    if (id >= 256) return 0;
    if (cap < 1) return loom_error(LOOM_EINVAL, "buffer too small");
    buf[0] = (char)id;
    return 1;
}

static void byte_destroy(loom_tokenizer *t) { (void)t; }

static const loom_tokenizer_ops byte_ops = {"byte", byte_encode, byte_piece, byte_destroy};

int loom_tokenizer_byte(loom_tokenizer **out) {
    loom_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return loom_error(LOOM_ENOMEM, "out of memory");
    t->ops = &byte_ops;
    t->vocab_size = BYTE_VOCAB;
    t->bos = BYTE_BOS;
    t->eos = BYTE_EOS;
    t->pad = BYTE_PAD;
    *out = t;
    return LOOM_OK;
}

/* ---- kind-independent API ---- */

void loom_tokenizer_free(loom_tokenizer *t) {
    if (!t) return;
    if (t->ops && t->ops->destroy) t->ops->destroy(t);
    free(t);
}

int loom_tokenizer_vocab_size(const loom_tokenizer *t) { return t->vocab_size; }
int loom_tokenizer_bos(const loom_tokenizer *t) { return t->bos; }
int loom_tokenizer_eos(const loom_tokenizer *t) { return t->eos; }
int loom_tokenizer_pad(const loom_tokenizer *t) { return t->pad; }
const char *loom_tokenizer_kind(const loom_tokenizer *t) { return t->ops->kind; }

int loom_tokenizer_encode(const loom_tokenizer *t, const char *text, size_t len, int flags, int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    int32_t *body;
    size_t nb;
    int rc = t->ops->encode(t, text, len, &body, &nb);
    if (rc != LOOM_OK) return rc;
    int add_bos = (flags & LOOM_TOK_BOS) && t->bos >= 0, add_eos = (flags & LOOM_TOK_EOS) && t->eos >= 0;
    if (!add_bos && !add_eos) {
        *ids = body;
        *n = nb;
        return LOOM_OK;
    }
    int32_t *out = malloc((nb + 2) * sizeof *out);
    if (!out) {
        free(body);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    size_t k = 0;
    if (add_bos) out[k++] = t->bos;
    memcpy(out + k, body, nb * sizeof *out);
    k += nb;
    if (add_eos) out[k++] = t->eos;
    free(body);
    *ids = out;
    *n = k;
    return LOOM_OK;
}

static int is_special(const loom_tokenizer *t, int32_t id) { return id == t->bos || id == t->eos || id == t->pad; }

int loom_tokenizer_decode(const loom_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len) {
    size_t cap = 64 + n * 8, used = 0;
    char *out = malloc(cap);
    if (!out) return loom_error(LOOM_ENOMEM, "out of memory");
    int32_t prev = -1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size) {
            free(out);
            return loom_error(LOOM_ERANGE, "token id %d at position %zu is outside the vocabulary (%d)", ids[i], i, t->vocab_size);
        }
        if (is_special(t, ids[i])) {
            prev = ids[i];
            continue;
        }
        if (cap - used < 256) {
            cap = cap * 2 + 256;
            char *grown = realloc(out, cap);
            if (!grown) {
                free(out);
                return loom_error(LOOM_ENOMEM, "out of memory");
            }
            out = grown;
        }
        int k = t->ops->piece(t, prev, ids[i], out + used, cap - used - 1);
        if (k < 0) {
            free(out);
            return k;
        }
        used += (size_t)k;
        prev = ids[i];
    }
    out[used] = 0;
    *text = out;
    if (len) *len = used;
    return LOOM_OK;
}

/* ---- streaming decode ---- */

struct loom_detok {
    const loom_tokenizer *t;
    int32_t prev;
    unsigned char held[8];
    int nheld;
};

int loom_detok_create(loom_detok **out, const loom_tokenizer *t) {
    loom_detok *d = calloc(1, sizeof *d);
    if (!d) return loom_error(LOOM_ENOMEM, "out of memory");
    d->t = t;
    d->prev = -1;
    *out = d;
    return LOOM_OK;
}

void loom_detok_free(loom_detok *d) { free(d); }

/* Length of the UTF-8 sequence starting with byte c (1 for invalid lead bytes, handled as U+FFFD). */
static int utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0; /* invalid lead */
}

static void put(char *out, size_t cap, size_t *n, const void *src, size_t k) {
    if (*n + k + 1 > cap) k = cap > *n + 1 ? cap - *n - 1 : 0;
    memcpy(out + *n, src, k);
    *n += k;
    if (cap) out[*n] = 0;
}

static const char replacement[] = "\xEF\xBF\xBD";

/* Moves every complete character from the held buffer to out. */
static void drain(loom_detok *d, char *out, size_t cap, size_t *n) {
    while (d->nheld > 0) {
        int need = utf8_len(d->held[0]);
        if (need == 0) {
            put(out, cap, n, replacement, 3);
            memmove(d->held, d->held + 1, (size_t)--d->nheld);
            continue;
        }
        if (d->nheld < need) {
            /* Incomplete: keep it unless a byte that cannot continue the sequence arrived. */
            int ok = 1;
            for (int i = 1; i < d->nheld; i++) ok &= (d->held[i] & 0xC0) == 0x80;
            if (ok) return;
            put(out, cap, n, replacement, 3);
            memmove(d->held, d->held + 1, (size_t)--d->nheld);
            continue;
        }
        int ok = 1;
        for (int i = 1; i < need; i++) ok &= (d->held[i] & 0xC0) == 0x80;
        if (ok) {
            put(out, cap, n, d->held, (size_t)need);
            memmove(d->held, d->held + need, (size_t)(d->nheld - need));
            d->nheld -= need;
        } else {
            put(out, cap, n, replacement, 3);
            memmove(d->held, d->held + 1, (size_t)--d->nheld);
        }
    }
}

int loom_detok_push(loom_detok *d, int32_t id, char *out, size_t cap, size_t *n) {
    *n = 0;
    if (cap) out[0] = 0;
    const loom_tokenizer *t = d->t;
    if (id < 0 || id >= t->vocab_size) return loom_error(LOOM_ERANGE, "token id %d outside the vocabulary (%d)", id, t->vocab_size);
    if (is_special(t, id)) {
        d->prev = id;
        return LOOM_OK;
    }
    char buf[256];
    int k = t->ops->piece(t, d->prev, id, buf, sizeof buf);
    if (k < 0) return k;
    d->prev = id;
    for (int i = 0; i < k; i++) {
        if (d->nheld == (int)sizeof d->held) drain(d, out, cap, n);
        if (d->nheld == (int)sizeof d->held) { /* cannot happen after drain, but stay in bounds */
            put(out, cap, n, replacement, 3);
            d->nheld = 0;
        }
        d->held[d->nheld++] = (unsigned char)buf[i];
        drain(d, out, cap, n);
    }
    return LOOM_OK;
}

int loom_detok_flush(loom_detok *d, char *out, size_t cap, size_t *n) {
    *n = 0;
    if (cap) out[0] = 0;
    drain(d, out, cap, n);
    if (d->nheld > 0) {
        put(out, cap, n, replacement, 3);
        d->nheld = 0;
    }
    return LOOM_OK;
}

int loom_tokenizer_load(loom_tokenizer **out, const char *path) {
    *out = NULL;
    return loom_error(LOOM_EUNSUPPORTED, "%s: loading tokenizer files is not available in this build", path);
}
