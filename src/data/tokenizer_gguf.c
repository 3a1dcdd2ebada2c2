/* Tokenizers in GGUF files (tokenizer.ggml.* keys, as llama.cpp reads them): written from loom's
 * tokenizers, and read back.
 *
 * Two vocabularies:
 *   "llama": SentencePiece pieces (U+2581 for a space), a score per piece and a token type (1 normal,
 *            2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte <0xNN>). Encoding merges the
 *            adjacent pair whose concatenation is the highest-scoring piece first, as SentencePiece's
 *            BPE (and llama.cpp's SPM tokenizer, and loom's llama2c kind) do.
 *   "gpt2":  byte-level BPE tokens in GPT-2's bytes_to_unicode spelling, token types, and merges
 *            "left right" by priority. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_bpe.h"
#include "data/tokenizer_impl.h"
#include "loom/core.h"
#include "loom/gguf.h"

enum { GGUF_MAX_PIECE = 1 << 16 }; /* bytes of one token read from a file */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };
#define SPACE_MARK "\xE2\x96\x81" /* U+2581, SentencePiece's space */

/* ---------------------------------------------------------------- out */

static int is_byte_token(const char *s, size_t n, unsigned *b) {
    char tail;
    return n == 6 && sscanf(s, "<0x%2X%c", b, &tail) == 2 && tail == '>';
}

/* s[n] with every ' ' written as U+2581 (malloc'ed, NUL-terminated). */
static char *mark_spaces(const char *s, size_t n, size_t *out_len) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += s[i] == ' ' ? 3 : 1;
    char *o = malloc(k + 1);
    if (!o) return NULL;
    k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') memcpy(o + k, SPACE_MARK, 3), k += 3;
        else o[k++] = s[i];
    }
    o[k] = 0;
    *out_len = k;
    return o;
}

/* bytes written in bytes_to_unicode characters (malloc'ed). */
static char *byte_spelling(const char *s, size_t n, size_t *out_len) {
    uint32_t b2u[256];
    tok_byte_to_unicode(b2u);
    char *o = malloc(4 * n + 1);
    if (!o) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += (size_t)tok_utf8_put(b2u[(unsigned char)s[i]], o + k);
    o[k] = 0;
    *out_len = k;
    return o;
}

typedef struct {
    int32_t rank, a, b;
} merge_ent;

static int by_rank(const void *x, const void *y) {
    const merge_ent *p = x, *q = y;
    if (p->rank != q->rank) return p->rank < q->rank ? -1 : 1;
    return p->a != q->a ? (p->a < q->a ? -1 : 1) : (p->b < q->b ? -1 : p->b > q->b);
}

int loom_tokenizer_gguf_add(const loom_tokenizer *t, int n_vocab, loom_gguf_writer *w) {
    const char *kind = loom_tokenizer_kind(t);
    const int V = t->vocab_size;
    int l2c = !strcmp(kind, "llama2c");
    int spm = l2c || !strcmp(kind, "bpe-sentencepiece") || !strcmp(kind, "gguf-llama");
    int byte = !strcmp(kind, "byte");
    if (!spm && !byte && strcmp(kind, "bpe-bytelevel"))
        return loom_error(LOOM_EUNSUPPORTED, "a %s tokenizer has no GGUF form in loom (SentencePiece-style and byte-level BPE ones do)", kind);
    if (n_vocab < V) return loom_error(LOOM_EINVAL, "the tokenizer has %d tokens but the model only %d", V, n_vocab);
    const tok_bpe *m = tok_bpe_of(t);
    char **tok = calloc((size_t)n_vocab, sizeof *tok);
    size_t *len = calloc((size_t)n_vocab, sizeof *len);
    int32_t *type = calloc((size_t)n_vocab, sizeof *type);
    float *score = calloc((size_t)n_vocab, sizeof *score);
    int32_t *rank = malloc((size_t)n_vocab * sizeof *rank);
    merge_ent *merges = NULL;
    char **mstr = NULL;
    size_t *mlen = NULL, n_merges = 0;
    char *piece = malloc((size_t)(t->max_piece > 0 ? t->max_piece : 1) + 1);
    int rc = LOOM_OK;
    if (!tok || !len || !type || !score || !rank || !piece) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_vocab; i++) rank[i] = INT32_MAX;
    if (m) {
        if (m->merges.used && !(merges = malloc(m->merges.used * sizeof *merges))) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t k = 0; k < m->merges.cap; k++) {
            if (!m->merges.key[k]) continue;
            uint64_t key = m->merges.key[k] - 1;
            int32_t id = m->merges.id[k];
            merges[n_merges++] = (merge_ent){m->merges.rank[k], (int32_t)(key >> 32), (int32_t)(key & 0xffffffffu)};
            if (id >= 0 && id < n_vocab && m->merges.rank[k] < rank[id]) rank[id] = m->merges.rank[k];
        }
        qsort(merges, n_merges, sizeof *merges, by_rank);
    }
    for (int id = 0; id < n_vocab && rc == LOOM_OK; id++) {
        int special = id == t->bos || id == t->eos || id == t->pad;
        const char *s = m && id < V ? m->str[id] : NULL;
        size_t n = m && id < V ? m->str_len[id] : 0;
        char name[32];
        unsigned b;
        if (id >= V) {
            snprintf(name, sizeof name, "[PAD%d]", id);
            tok[id] = strdup(name), len[id] = strlen(name), type[id] = TT_UNUSED;
        } else if (byte) {
            if (id < 256) {
                char c = (char)id;
                tok[id] = byte_spelling(&c, 1, &len[id]);
            } else {
                static const char *const names[] = {"<|bos|>", "<|eos|>", "<|pad|>"};
                tok[id] = strdup(names[id - 256]), len[id] = strlen(names[id - 256]);
            }
            type[id] = id < 256 ? TT_NORMAL : TT_CONTROL;
        } else if (spm && l2c && (id == t->bos || id == t->eos || id == m->unk)) {
            const char *nm = id == t->bos ? "<s>" : id == t->eos ? "</s>" : "<unk>";
            tok[id] = strdup(nm), len[id] = strlen(nm), type[id] = id == m->unk && !special ? TT_UNKNOWN : TT_CONTROL;
        } else if (spm && s && m->byte_fallback && is_byte_token(s, n, &b) && m->byte_id[b] == id) {
            tok[id] = strdup(s), len[id] = n, type[id] = TT_BYTE;
        } else if (s) {
            tok[id] = spm ? mark_spaces(s, n, &len[id]) : strdup(s);
            if (!spm) len[id] = n;
            type[id] = special ? TT_CONTROL : spm && id == m->unk ? TT_UNKNOWN : TT_NORMAL;
        } else {
            /* an added token outside the model vocabulary: its text */
            int k = t->ops->piece(t, -1, id, piece, (size_t)(t->max_piece > 0 ? t->max_piece : 1));
            if (k <= 0) {
                snprintf(name, sizeof name, "[PAD%d]", id);
                tok[id] = strdup(name), len[id] = strlen(name), type[id] = TT_UNUSED;
            } else {
                tok[id] = spm ? mark_spaces(piece, (size_t)k, &len[id]) : byte_spelling(piece, (size_t)k, &len[id]);
                type[id] = TT_CONTROL;
            }
        }
        if (!tok[id]) rc = loom_error(LOOM_ENOMEM, "out of memory");
        /* the merge order as scores: a piece made by an earlier merge scores higher; pieces no merge
         * makes never take part in one and score below all */
        if (spm) score[id] = type[id] != TT_NORMAL ? 0.0f : rank[id] != INT32_MAX ? -(float)rank[id] : -1e9f;
    }
    if (rc != LOOM_OK) goto done;
    rc = loom_gguf_set_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    if (rc == LOOM_OK && !spm) rc = loom_gguf_set_str(w, "tokenizer.ggml.pre", "gpt-2");
    if (rc == LOOM_OK) rc = loom_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, len, (size_t)n_vocab);
    if (rc == LOOM_OK && spm) rc = loom_gguf_set_arr(w, "tokenizer.ggml.scores", LOOM_GGUF_FLOAT32, score, (size_t)n_vocab);
    if (rc == LOOM_OK) rc = loom_gguf_set_arr(w, "tokenizer.ggml.token_type", LOOM_GGUF_INT32, type, (size_t)n_vocab);
    if (rc == LOOM_OK && !spm) {
        mstr = calloc(n_merges + 1, sizeof *mstr);
        mlen = calloc(n_merges + 1, sizeof *mlen);
        if (!mstr || !mlen) rc = loom_error(LOOM_ENOMEM, "out of memory");
        for (size_t k = 0; k < n_merges && rc == LOOM_OK; k++) {
            const merge_ent *e = &merges[k];
            size_t la = m->str_len[e->a], lb = m->str_len[e->b];
            if (!(mstr[k] = malloc(la + lb + 2))) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            memcpy(mstr[k], m->str[e->a], la);
            mstr[k][la] = ' ';
            memcpy(mstr[k] + la + 1, m->str[e->b], lb);
            mstr[k][la + 1 + lb] = 0;
            mlen[k] = la + 1 + lb;
        }
        if (rc == LOOM_OK) rc = loom_gguf_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mstr, mlen, n_merges);
    }
    if (rc == LOOM_OK && t->bos >= 0) rc = loom_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)t->bos);
    if (rc == LOOM_OK && t->eos >= 0) rc = loom_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)t->eos);
    if (rc == LOOM_OK && spm && m->unk >= 0) rc = loom_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)m->unk);
    if (rc == LOOM_OK && t->pad >= 0) rc = loom_gguf_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)t->pad);
    if (rc == LOOM_OK) rc = loom_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", spm);
    if (rc == LOOM_OK) rc = loom_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", 0);
done:
    for (int i = 0; tok && i < n_vocab; i++) free(tok[i]);
    for (size_t k = 0; mstr && k < n_merges; k++) free(mstr[k]);
    free(tok);
    free(len);
    free(type);
    free(score);
    free(rank);
    free(merges);
    free(mstr);
    free(mlen);
    free(piece);
    return rc;
}

/* ---------------------------------------------------------------- in: "llama" */

typedef struct {
    tok_bpe bpe; /* first: see tok_bpe_of */
    uint8_t *type;
} spm_impl;

static int spm_encode(const loom_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
    spm_impl *p = t->impl;
    return tok_spm_encode(&p->bpe, text, len, ids, n);
}

static int spm_piece(const loom_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t cap) {
    const spm_impl *p = t->impl;
    if (id < 0 || id >= t->vocab_size) return loom_error(LOOM_ERANGE, "token id %d outside the vocabulary (%d)", id, t->vocab_size);
    const char *s = p->bpe.str[id];
    size_t n = p->bpe.str_len[id];
    unsigned b;
    if (p->type[id] == TT_BYTE && is_byte_token(s, n, &b)) {
        if (cap < 1) return loom_error(LOOM_EINVAL, "buffer too small");
        buf[0] = (char)b;
        return 1;
    }
    if (p->type[id] == TT_CONTROL || p->type[id] == TT_UNUSED) return 0;
    if ((prev < 0 || prev == t->bos) && n > 0 && s[0] == ' ') s++, n--;
    if (n > cap) return loom_error(LOOM_EINVAL, "piece of token %d (%zu bytes) does not fit in %zu bytes", id, n, cap);
    memcpy(buf, s, n);
    return (int)n;
}

static void spm_destroy(loom_tokenizer *t) {
    spm_impl *p = t->impl;
    if (!p) return;
    tok_bpe_free(&p->bpe);
    free(p->type);
    free(p);
    t->impl = NULL;
}

/* A token as written in the file (U+2581 or a space for a space). */
static int32_t spm_token_id(const loom_tokenizer *t, const char *token) {
    const spm_impl *p = t->impl;
    size_t n;
    char *sp = NULL;
    /* pieces are held with spaces: turn U+2581 into spaces */
    size_t tl = strlen(token);
    if (!(sp = malloc(tl + 1))) return -1;
    n = 0;
    for (size_t i = 0; i < tl; i++) {
        if (i + 3 <= tl && !memcmp(token + i, SPACE_MARK, 3)) sp[n++] = ' ', i += 2;
        else sp[n++] = token[i];
    }
    int32_t id = tok_strmap_get(&p->bpe.vocab, sp, n);
    for (int32_t i = 0; id < 0 && i < t->vocab_size; i++)
        if (p->bpe.str[i] && p->bpe.str_len[i] == tl && !memcmp(p->bpe.str[i], token, tl)) id = i;
    free(sp);
    return id;
}

static const loom_tokenizer_ops spm_ops = {"gguf-llama", spm_encode, spm_piece, spm_destroy, spm_token_id};

typedef struct {
    float score;
    int32_t id;
} scored;

static int by_score_desc(const void *x, const void *y) {
    const scored *a = x, *b = y;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return a->id < b->id ? -1 : 1;
}

static int load_spm(loom_tokenizer *t, const loom_gguf *g, int kv_tok, int kv_type, int kv_score) {
    const char *path = loom_gguf_path(g);
    const int32_t n = t->vocab_size;
    spm_impl *p = calloc(1, sizeof *p);
    scored *order = NULL;
    int32_t *rank = NULL;
    if (!p) return loom_error(LOOM_ENOMEM, "out of memory");
    t->impl = p;
    t->ops = &spm_ops;
    int rc = tok_bpe_init(&p->bpe, n);
    if (rc != LOOM_OK) return rc;
    tok_bpe *m = &p->bpe;
    p->type = calloc((size_t)n, 1);
    order = malloc((size_t)n * sizeof *order);
    rank = malloc((size_t)n * sizeof *rank);
    if (!p->type || !order || !rank) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    int max_piece = 8, n_bytes = 0;
    for (int32_t id = 0; id < n && rc == LOOM_OK; id++) {
        const char *s;
        size_t len;
        int64_t ty = TT_NORMAL;
        float sc = 0;
        if ((rc = loom_gguf_arr_str(g, kv_tok, (size_t)id, &s, &len)) != LOOM_OK) break;
        if (kv_type >= 0 && (rc = loom_gguf_arr_i64(g, kv_type, (size_t)id, &ty)) != LOOM_OK) break;
        if (kv_score >= 0 && (rc = loom_gguf_arr_f32(g, kv_score, (size_t)id, &sc)) != LOOM_OK) break;
        if (ty < TT_NORMAL || ty > TT_BYTE) ty = TT_NORMAL;
        if (id == t->bos || id == t->eos) ty = TT_CONTROL;
        if (!isfinite(sc)) {
            rc = loom_error(LOOM_EFORMAT, "%s: token %d has a non-finite score", path, id);
            break;
        }
        p->type[id] = (uint8_t)ty;
        order[id] = (scored){sc, id};
        unsigned b;
        char *c;
        size_t cl = len;
        if (ty == TT_BYTE) {
            if (!is_byte_token(s, len, &b)) {
                rc = loom_error(LOOM_EFORMAT, "%s: token %d is a byte token but reads \"%.16s\", not <0xNN>", path, id, s);
                break;
            }
            if (m->byte_id[b] < 0) m->byte_id[b] = id, n_bytes++;
            c = strdup(s);
        } else if (ty == TT_NORMAL || ty == TT_USER) {
            /* the pieces are held with spaces, as llama2c's are */
            c = malloc(len + 1);
            if (c) {
                cl = 0;
                for (size_t i = 0; i < len; i++) {
                    if (i + 3 <= len && !memcmp(s + i, SPACE_MARK, 3)) c[cl++] = ' ', i += 2;
                    else c[cl++] = s[i];
                }
                c[cl] = 0;
            }
        } else {
            c = strdup(s);
            if (ty == TT_UNKNOWN && m->unk < 0) m->unk = id;
        }
        if (!c) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            break;
        }
        m->str[id] = c;
        m->str_len[id] = (uint32_t)cl;
        if ((int)cl > max_piece) max_piece = (int)cl;
        /* only normal pieces take part in lookups and merges: text "<s>" must not become BOS */
        if ((ty == TT_NORMAL || ty == TT_USER) && cl > 0 && (rc = tok_strmap_put(&m->vocab, c, cl, id)) != LOOM_OK) break;
    }
    if (rc != LOOM_OK) goto done;
    if (n_bytes && n_bytes < 256) {
        rc = loom_error(LOOM_EFORMAT, "%s: %d of the 256 byte tokens <0xNN>: byte fallback needs all of them", path, n_bytes);
        goto done;
    }
    m->byte_fallback = n_bytes == 256;
    uint32_t unk;
    if (loom_gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &unk) == LOOM_OK && unk < (uint32_t)n) m->unk = (int32_t)unk;
    loom_clear_error();
    tok_bpe_find_barriers(m);
    /* rank = position in descending score order, equal scores sharing a rank */
    qsort(order, (size_t)n, sizeof *order, by_score_desc);
    for (int32_t i = 0; i < n; i++) rank[order[i].id] = (i > 0 && order[i].score == order[i - 1].score) ? rank[order[i - 1].id] : i;
    /* every way of writing a piece as the concatenation of two pieces is a mergeable pair */
    for (int32_t id = 0; id < n && rc == LOOM_OK; id++) {
        if (p->type[id] != TT_NORMAL && p->type[id] != TT_USER) continue;
        const char *s = m->str[id];
        uint32_t len = m->str_len[id];
        for (uint32_t k = 1; k < len && rc == LOOM_OK; k++) {
            int32_t a = tok_strmap_get(&m->vocab, s, k), b = tok_strmap_get(&m->vocab, s + k, len - k);
            if (a >= 0 && b >= 0) rc = tok_pairmap_put(&m->merges, a, b, rank[id], id);
        }
    }
    t->max_piece = max_piece;
done:
    free(order);
    free(rank);
    return rc;
}

/* ---------------------------------------------------------------- in: the file */

static int32_t opt_id(const loom_gguf *g, const char *key, int32_t n) {
    uint32_t v;
    int rc = loom_gguf_get_u32(g, key, &v);
    loom_clear_error();
    return rc == LOOM_OK && v < (uint32_t)n ? (int32_t)v : -1;
}

/* The index of an array key of type et with n elements (n = 0: any length), -1 when absent. */
static int array_kv(const loom_gguf *g, const char *key, loom_gguf_vtype et, int is_float, size_t n, int *rc) {
    int kv = loom_gguf_find_kv(g, key);
    *rc = LOOM_OK;
    if (kv < 0) return -1;
    const loom_gguf_kv *k = loom_gguf_kv_at(g, (size_t)kv);
    int ok = k->type == LOOM_GGUF_ARRAY;
    if (ok && et == LOOM_GGUF_STRING) ok = k->arr_type == LOOM_GGUF_STRING;
    else if (ok && is_float) ok = k->arr_type == LOOM_GGUF_FLOAT32 || k->arr_type == LOOM_GGUF_FLOAT64;
    else if (ok) ok = k->arr_type != LOOM_GGUF_STRING && k->arr_type != LOOM_GGUF_FLOAT32 && k->arr_type != LOOM_GGUF_FLOAT64;
    if (!ok) *rc = loom_error(LOOM_EFORMAT, "%s: %s is not an array of %s", loom_gguf_path(g), key, et == LOOM_GGUF_STRING ? "strings" : is_float ? "floats" : "integers");
    else if (n && k->n != n) *rc = loom_error(LOOM_EFORMAT, "%s: %s has %zu entries for %zu tokens", loom_gguf_path(g), key, k->n, n);
    return kv;
}

int tok_load_gguf(loom_tokenizer **out, const char *path) {
    *out = NULL;
    loom_gguf *g;
    int rc = loom_gguf_open(&g, path);
    if (rc != LOOM_OK) return rc;
    loom_tokenizer *t = NULL;
    const char **mer = NULL;
    const char **tok = NULL;
    size_t *tlen = NULL, *mlen = NULL;
    const char *model;
    if ((rc = loom_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL)) != LOOM_OK) {
        if (rc == LOOM_ENOTFOUND) rc = loom_error(LOOM_ENOTFOUND, "%s: the file holds no tokenizer (no tokenizer.ggml.model key)", path);
        goto done;
    }
    int spm = !strcmp(model, "llama");
    if (!spm && strcmp(model, "gpt2")) {
        rc = loom_error(LOOM_EUNSUPPORTED, "%s: tokenizer model '%.32s' is not supported (loom reads llama and gpt2 vocabularies)", path, model);
        goto done;
    }
    int kv_tok = array_kv(g, "tokenizer.ggml.tokens", LOOM_GGUF_STRING, 0, 0, &rc);
    if (rc != LOOM_OK) goto done;
    if (kv_tok < 0) {
        rc = loom_error(LOOM_EFORMAT, "%s: no tokenizer.ggml.tokens", path);
        goto done;
    }
    size_t n = loom_gguf_kv_at(g, (size_t)kv_tok)->n;
    if (n < 1 || n > (1u << 24)) {
        rc = loom_error(LOOM_EFORMAT, "%s: %zu tokens (1 to %u)", path, n, 1u << 24);
        goto done;
    }
    /* every piece is split at each byte when merges are derived: bound their length */
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if ((rc = loom_gguf_arr_str(g, kv_tok, i, &s, &len)) != LOOM_OK) goto done;
        if (len > GGUF_MAX_PIECE) {
            rc = loom_error(LOOM_EFORMAT, "%s: token %zu is %zu bytes long (limit %d)", path, i, len, GGUF_MAX_PIECE);
            goto done;
        }
    }
    int kv_type = array_kv(g, "tokenizer.ggml.token_type", LOOM_GGUF_INT32, 0, n, &rc);
    if (rc != LOOM_OK) goto done;
    if (!(t = calloc(1, sizeof *t))) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    t->vocab_size = (int)n;
    t->bos = opt_id(g, "tokenizer.ggml.bos_token_id", (int32_t)n);
    t->eos = opt_id(g, "tokenizer.ggml.eos_token_id", (int32_t)n);
    t->pad = opt_id(g, "tokenizer.ggml.padding_token_id", (int32_t)n);
    if (spm) {
        int kv_score = array_kv(g, "tokenizer.ggml.scores", LOOM_GGUF_FLOAT32, 1, n, &rc);
        if (rc == LOOM_OK) rc = load_spm(t, g, kv_tok, kv_type, kv_score);
        if (rc != LOOM_OK) loom_error_context(rc, "%s", path);
        goto done;
    }
    int kv_mer = array_kv(g, "tokenizer.ggml.merges", LOOM_GGUF_STRING, 0, 0, &rc);
    if (rc != LOOM_OK) goto done;
    size_t nm = kv_mer >= 0 ? loom_gguf_kv_at(g, (size_t)kv_mer)->n : 0;
    const char *pre = "gpt2";
    loom_gguf_get_str(g, "tokenizer.ggml.pre", &pre, NULL);
    loom_clear_error();
    tok = calloc(n, sizeof *tok);
    tlen = calloc(n, sizeof *tlen);
    mer = calloc(nm + 1, sizeof *mer);
    mlen = calloc(nm + 1, sizeof *mlen);
    if (!tok || !tlen || !mer || !mlen) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n && rc == LOOM_OK; i++) rc = loom_gguf_arr_str(g, kv_tok, i, &tok[i], &tlen[i]);
    for (size_t i = 0; i < nm && rc == LOOM_OK; i++) rc = loom_gguf_arr_str(g, kv_mer, i, &mer[i], &mlen[i]);
    for (size_t i = 0; i < nm && rc == LOOM_OK; i++)
        if (mlen[i] > 2 * GGUF_MAX_PIECE + 1) rc = loom_error(LOOM_EFORMAT, "%s: merge %zu is %zu bytes long (limit %d)", path, i, mlen[i], 2 * GGUF_MAX_PIECE + 1);
    if (rc != LOOM_OK) goto done;
    loom_tokenizer *bl;
    if ((rc = tok_load_bytelevel(&bl, (int32_t)n, tok, tlen, nm, mer, mlen, !strcmp(pre, "llama-bpe"), path)) != LOOM_OK) goto done;
    bl->bos = t->bos;
    bl->eos = t->eos;
    bl->pad = t->pad;
    free(t);
    t = bl;
done:
    free(tok);
    free(tlen);
    free(mer);
    free(mlen);
    loom_gguf_close(g);
    if (rc != LOOM_OK) {
        loom_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return LOOM_OK;
}
