/* Tokenizer front end: the kind-independent API, UTF-8 handling, streaming decode, and the
 * byte-level tokenizer. Other kinds live in their own files and plug in through loom_tokenizer_ops. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/tokenizer_bpe.h"
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

static int32_t byte_token_id(const loom_tokenizer *t, const char *token) {
    (void)t;
    if (!strcmp(token, "<|bos|>")) return BYTE_BOS;
    if (!strcmp(token, "<|eos|>")) return BYTE_EOS;
    if (!strcmp(token, "<|pad|>")) return BYTE_PAD;
    return token[0] && !token[1] ? (unsigned char)token[0] : -1;
}

static const loom_tokenizer_ops byte_ops = {"byte", byte_encode, byte_piece, byte_destroy, byte_token_id};

int loom_tokenizer_byte(loom_tokenizer **out) {
    loom_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return loom_error(LOOM_ENOMEM, "out of memory");
    t->ops = &byte_ops;
    t->vocab_size = BYTE_VOCAB;
    t->bos = BYTE_BOS;
    t->eos = BYTE_EOS;
    t->pad = BYTE_PAD;
    t->max_piece = 1;
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
int32_t loom_tokenizer_token_id(const loom_tokenizer *t, const char *token) { return token ? t->ops->token_id(t, token) : -1; }

int loom_tokenizer_encode(const loom_tokenizer *t, const char *text, size_t len, int flags, int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    if (t->ops != &byte_ops) {
        size_t bad = tok_utf8_valid(text, len);
        if (bad < len) return loom_error(LOOM_EFORMAT, "invalid UTF-8 at byte %zu of the input (0x%02X)", bad, (unsigned char)text[bad]);
    }
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
    size_t piece = (size_t)(t->max_piece > 0 ? t->max_piece : 1);
    size_t cap = 64 + piece + n * 8, used = 0;
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
        if (cap - used < piece + 1) {
            cap = cap * 2 + piece;
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
    char *piece; /* [t->max_piece] */
};

int loom_detok_create(loom_detok **out, const loom_tokenizer *t) {
    loom_detok *d = calloc(1, sizeof *d);
    if (d) d->piece = malloc((size_t)(t->max_piece > 0 ? t->max_piece : 1));
    if (!d || !d->piece) {
        free(d);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    d->t = t;
    d->prev = -1;
    *out = d;
    return LOOM_OK;
}

void loom_detok_free(loom_detok *d) {
    if (!d) return;
    free(d->piece);
    free(d);
}

/* Length of the UTF-8 sequence starting with byte c, 0 for bytes that cannot start one. */
static int utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* Whether held[0..k) can begin a valid sequence: the second byte's range depends on the lead (no
 * overlong forms, surrogates or code points above U+10FFFF), later bytes are continuations. */
static int valid_prefix(const unsigned char *h, int k) {
    for (int i = 1; i < k; i++) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (i == 1) {
            if (h[0] == 0xE0) lo = 0xA0;
            else if (h[0] == 0xED) hi = 0x9F;
            else if (h[0] == 0xF0) lo = 0x90;
            else if (h[0] == 0xF4) hi = 0x8F;
        }
        if (h[i] < lo || h[i] > hi) return 0;
    }
    return 1;
}

static void put(char *out, size_t cap, size_t *n, const void *src, size_t k) {
    if (*n + k + 1 > cap) k = cap > *n + 1 ? cap - *n - 1 : 0;
    memcpy(out + *n, src, k);
    *n += k;
    if (cap) out[*n] = 0;
}

static const char replacement[] = "\xEF\xBF\xBD";

static void drop_one(loom_detok *d, char *out, size_t cap, size_t *n) {
    put(out, cap, n, replacement, 3);
    memmove(d->held, d->held + 1, (size_t)--d->nheld);
}

/* Moves every complete character from the held buffer to out; an incomplete but valid prefix stays. */
static void drain(loom_detok *d, char *out, size_t cap, size_t *n) {
    while (d->nheld > 0) {
        int need = utf8_len(d->held[0]);
        if (need == 0) {
            drop_one(d, out, cap, n);
            continue;
        }
        int have = d->nheld < need ? d->nheld : need;
        if (!valid_prefix(d->held, have)) {
            drop_one(d, out, cap, n);
            continue;
        }
        if (have < need) return;
        put(out, cap, n, d->held, (size_t)need);
        memmove(d->held, d->held + need, (size_t)(d->nheld - need));
        d->nheld -= need;
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
    char *buf = d->piece;
    int k = t->ops->piece(t, d->prev, id, buf, (size_t)(t->max_piece > 0 ? t->max_piece : 1));
    if (k < 0) return k;
    d->prev = id;
    for (int i = 0; i < k; i++) {
        /* drain leaves at most 3 bytes (an incomplete sequence), so there is always room */
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

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* GPT-2's pair: encoder.json (or vocab.json) with vocab.bpe (or merges.txt) in the same directory. */
static int load_gpt2_pair(loom_tokenizer **out, const char *encoder) {
    const char *slash = strrchr(encoder, '/');
    size_t dir = slash ? (size_t)(slash - encoder + 1) : 0;
    char *merges = malloc(dir + 16);
    if (!merges) return loom_error(LOOM_ENOMEM, "out of memory");
    memcpy(merges, encoder, dir);
    strcpy(merges + dir, "vocab.bpe");
    if (!is_file(merges)) strcpy(merges + dir, "merges.txt");
    if (!is_file(merges)) {
        free(merges);
        return loom_error(LOOM_ENOTFOUND, "%s: no vocab.bpe or merges.txt beside it", encoder);
    }
    int rc = tok_load_gpt2_files(out, encoder, merges);
    free(merges);
    return rc;
}

/* A tiktoken ranks file starts with "<base64> <rank>\n". */
static int looks_tiktoken(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char buf[128];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    size_t i = 0;
    while (i < n && (isalnum((unsigned char)buf[i]) || buf[i] == '+' || buf[i] == '/' || buf[i] == '=')) i++;
    if (i == 0 || i >= n || buf[i] != ' ') return 0;
    size_t j = ++i;
    while (i < n && buf[i] >= '0' && buf[i] <= '9') i++;
    return i > j && i < n && (buf[i] == '\n' || buf[i] == '\r');
}

static int is_gguf(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char m[4] = {0};
    size_t n = fread(m, 1, 4, f);
    fclose(f);
    return n == 4 && !memcmp(m, "GGUF", 4);
}

const tok_bpe *tok_bpe_of(const loom_tokenizer *t) { return t->ops == &byte_ops ? NULL : (const tok_bpe *)t->impl; }

static int load_file(loom_tokenizer **out, const char *path) {
    if (ends_with(path, ".gguf") || is_gguf(path)) return tok_load_gguf(out, path);
    if (ends_with(path, "encoder.json") || ends_with(path, "/vocab.json") || !strcmp(path, "vocab.json"))
        return load_gpt2_pair(out, path);
    if (ends_with(path, ".json")) return tok_load_hf_json(out, path);
    /* otherwise decide by the content: JSON starts with '{', tokenizer.bin with a small int32 */
    FILE *f = fopen(path, "rb");
    if (!f) return loom_error(LOOM_EIO, "%s: cannot open", path);
    int c = fgetc(f);
    while (c == ' ' || c == '\n' || c == '\r' || c == '\t') c = fgetc(f);
    fclose(f);
    if (c == '{') return tok_load_hf_json(out, path);
    if (looks_tiktoken(path)) return tok_load_tiktoken(out, path);
    return tok_load_llama2c(out, path);
}

int loom_tokenizer_load(loom_tokenizer **out, const char *path) {
    *out = NULL;
    if (!path || !*path) return loom_error(LOOM_EINVAL, "no tokenizer path given");
    if (is_file(path)) return load_file(out, path);
    if (!is_dir(path)) return loom_error(LOOM_ENOTFOUND, "%s: no such file or directory", path);
    /* tokenizer.model only as a tiktoken file (SentencePiece's protobuf form is not read) */
    static const char *const names[] = {"tokenizer.json", "tokenizer.bin", "encoder.json", "vocab.json", "tokenizer.model"};
    size_t n = strlen(path);
    char *p = malloc(n + 32);
    if (!p) return loom_error(LOOM_ENOMEM, "out of memory");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, n + 32, "%s/%s", path, names[i]);
        if (!is_file(p) || (i == 4 && !looks_tiktoken(p))) continue;
        int rc = load_file(out, p);
        free(p);
        return rc;
    }
    free(p);
    return loom_error(LOOM_ENOTFOUND, "%s: no tokenizer.json, tokenizer.bin, encoder.json+vocab.bpe or tiktoken tokenizer.model in this directory",
                      path);
}
