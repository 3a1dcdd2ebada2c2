/* Hugging Face tokenizer.json (BPE model) and GPT-2's encoder.json + vocab.bpe.
 *
 * Encoding follows the `tokenizers` pipeline: added tokens are cut out of the text first (matched as
 * whole strings, longest first), then each remaining segment goes through the normalizers, the
 * pre-tokenizers (regex splits, ByteLevel, Metaspace, Digits) and the BPE model, word by word.
 * GPT-2's original files are the same pipeline with a fixed ByteLevel pre-tokenizer and no added
 * tokens (OpenAI's encoder.py encodes "<|endoftext|>" in text as ordinary characters). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_bpe.h"
#include "loom/core.h"

/* GPT-2's pre-tokenizer pattern (encoder.py), also the default of ByteLevel's use_regex. */
static const char gpt2_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* tiktoken's cl100k pattern, which Llama 3 uses (pat_str in its tokenizer.py). */
static const char tiktoken_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

typedef struct {
    pcre2_code *code;
    int jit;
} tok_regex;

typedef struct {
    char *s;
    size_t len;
    int32_t id;
    int lstrip, rstrip, single_word;
} added_tok;

enum { NORM_PREPEND, NORM_REPLACE, NORM_UNICODE };
typedef struct {
    int type;
    const UNormalizer2 *unorm; /* NFC, NFD, NFKC, NFKD (ICU's shared instance) */
    char *text; /* Prepend: the prefix; Replace: the replacement */
    size_t text_len;
    tok_regex re; /* Replace: the pattern */
} norm_step;

enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_DIGITS };
enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_PREVIOUS, SPLIT_NEXT, SPLIT_CONTIGUOUS };
enum { PREPEND_NEVER, PREPEND_FIRST, PREPEND_ALWAYS };
typedef struct {
    int type;
    tok_regex re;          /* Split; ByteLevel with use_regex */
    int behavior;          /* Split */
    int add_prefix_space;  /* ByteLevel */
    char repl[8];          /* Metaspace replacement character (UTF-8) */
    int repl_len, prepend, split;
    int individual_digits; /* Digits */
} pre_step;

enum { MAX_PRE = 8 };

typedef struct {
    tok_bpe bpe;
    added_tok *added; /* sorted by length, longest first */
    int n_added;
    int match_added;                /* added tokens in the text become their ids */
    unsigned char added_first[256]; /* 1 where some added token starts with this byte */
    norm_step *norm;
    int n_norm;
    pre_step pre[MAX_PRE];
    int n_pre;
    char **dec; /* [vocab] decoded bytes of each id */
    uint32_t *dec_len;
    int strip_first; /* the decoder drops one leading space of the first piece */
} hf_impl;

/* ---- regex ---- */

static int regex_compile(tok_regex *r, const char *pattern, size_t len, int literal, const char *where) {
    int err;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    r->code = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &off, NULL);
    if (!r->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return loom_error(LOOM_EFORMAT, "%s: cannot compile the regex /%.*s/ at offset %zu: %s", where, (int)LOOM_MIN(len, 200),
                          pattern, (size_t)off, (char *)msg);
    }
    r->jit = pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE) == 0;
    return LOOM_OK;
}

static void regex_free(tok_regex *r) {
    pcre2_code_free(r->code);
    r->code = NULL;
}

/* Finds the next non-empty match in s[from..len); returns 1 with [*ms, *me), 0 for none, <0 on error. */
static int regex_next(const tok_regex *r, pcre2_match_data *md, const char *s, size_t len, size_t from, size_t *ms, size_t *me) {
    while (from <= len) {
        int rc = r->jit ? pcre2_jit_match(r->code, (PCRE2_SPTR)s, len, from, PCRE2_NO_UTF_CHECK, md, NULL)
                        : pcre2_match(r->code, (PCRE2_SPTR)s, len, from, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) /* the interpreter keeps its backtracking on the heap */
            rc = pcre2_match(r->code, (PCRE2_SPTR)s, len, from, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return loom_error(LOOM_EINVAL, "regex match failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] > ov[0]) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        if (ov[0] >= len) return 0;
        from = ov[0] + (size_t)tok_utf8_char_len((unsigned char)s[ov[0]]); /* skip an empty match */
    }
    return 0;
}

/* ---- encoding ---- */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t n) {
    if (n <= b->cap) return LOOM_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < n) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return loom_error(LOOM_ENOMEM, "out of memory (%zu bytes)", cap);
    b->p = p;
    b->cap = cap;
    return LOOM_OK;
}

static int buf_add(buf_t *b, const void *s, size_t n) {
    if (n == 0) return LOOM_OK; /* b->p may still be NULL: no memcpy to NULL */
    int rc = buf_reserve(b, b->len + n);
    if (rc != LOOM_OK) return rc;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return LOOM_OK;
}

typedef struct {
    hf_impl *h;
    tok_ids out;
    pcre2_match_data *md;
    buf_t norm[2];
    buf_t level[MAX_PRE];
} enc_ctx;

static int pre_word(enc_ctx *c, int level, const char *s, size_t len, int first);

/* Emits the pieces of s that a Split step with matches [ms, me) produces. */
static int split_emit(enc_ctx *c, int level, const char *s, size_t len, int first, const tok_regex *re, int behavior) {
    size_t pos = 0, from = 0, ms, me;
    size_t pend = 0; /* start of the piece being accumulated (MergedWithNext / Contiguous) */
    int have_pend = 0, rc;
#define EMIT(a, b)                                                                              \
    do {                                                                                        \
        if ((b) > (a) && (rc = pre_word(c, level + 1, s + (a), (b) - (a), first && (a) == 0)) != LOOM_OK) \
            return rc;                                                                          \
    } while (0)
    while ((rc = regex_next(re, c->md, s, len, from, &ms, &me)) == 1) {
        switch (behavior) {
        case SPLIT_ISOLATED:
            EMIT(pos, ms);
            EMIT(ms, me);
            break;
        case SPLIT_REMOVED:
            EMIT(pos, ms);
            break;
        case SPLIT_PREVIOUS:
            EMIT(pos, me);
            break;
        case SPLIT_NEXT:
            if (have_pend) EMIT(pend, ms);
            else EMIT(pos, ms);
            pend = ms;
            have_pend = 1;
            break;
        case SPLIT_CONTIGUOUS:
            if (have_pend && ms == pos) break; /* extends the run of matches */
            if (have_pend) EMIT(pend, pos);
            EMIT(pos, ms);
            pend = ms;
            have_pend = 1;
            break;
        }
        pos = from = me;
    }
    if (rc < 0) return rc;
    if (behavior == SPLIT_NEXT && have_pend) EMIT(pend, len);
    else if (behavior == SPLIT_CONTIGUOUS && have_pend) {
        EMIT(pend, pos);
        EMIT(pos, len);
    } else
        EMIT(pos, len);
#undef EMIT
    return LOOM_OK;
}

static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* Runs pre-tokenizer `level` on one word; the last level hands words to the model. first: the word
 * begins at offset 0 of the original text (Metaspace's prepend_scheme "first"). */
static int pre_word(enc_ctx *c, int level, const char *s, size_t len, int first) {
    hf_impl *h = c->h;
    if (len == 0) return LOOM_OK;
    if (level == h->n_pre) return tok_bpe_word(&h->bpe, s, len, &c->out);
    const pre_step *p = &h->pre[level];
    buf_t *b = &c->level[level];
    int rc;
    switch (p->type) {
    case PRE_SPLIT:
        return split_emit(c, level, s, len, first, &p->re, p->behavior);
    case PRE_BYTELEVEL:
        if (p->add_prefix_space && s[0] != ' ') {
            b->len = 0;
            if ((rc = buf_add(b, " ", 1)) != LOOM_OK || (rc = buf_add(b, s, len)) != LOOM_OK) return rc;
            s = b->p;
            len = b->len;
        }
        if (p->re.code) return split_emit(c, level, s, len, first, &p->re, SPLIT_ISOLATED);
        return pre_word(c, level + 1, s, len, first);
    case PRE_METASPACE: {
        b->len = 0;
        int starts = len >= (size_t)p->repl_len && !memcmp(s, p->repl, (size_t)p->repl_len);
        if (s[0] == ' ') starts = 1; /* becomes the replacement below */
        if (!starts && (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && first)))
            if ((rc = buf_add(b, p->repl, (size_t)p->repl_len)) != LOOM_OK) return rc;
        if ((rc = buf_reserve(b, b->len + len * (size_t)p->repl_len)) != LOOM_OK) return rc;
        for (size_t i = 0; i < len; i++) {
            if (s[i] == ' ') {
                memcpy(b->p + b->len, p->repl, (size_t)p->repl_len);
                b->len += (size_t)p->repl_len;
            } else
                b->p[b->len++] = s[i];
        }
        s = b->p;
        len = b->len;
        if (!p->split) return pre_word(c, level + 1, s, len, first);
        /* MergedWithNext on the replacement: each word starts with it */
        size_t start = 0;
        for (size_t i = 1; i + (size_t)p->repl_len <= len; i++) {
            if (!memcmp(s + i, p->repl, (size_t)p->repl_len)) {
                if ((rc = pre_word(c, level + 1, s + start, i - start, first && start == 0)) != LOOM_OK) return rc;
                start = i;
            }
        }
        return pre_word(c, level + 1, s + start, len - start, first && start == 0);
    }
    case PRE_DIGITS: {
        size_t start = 0;
        for (size_t i = 1; i <= len; i++) {
            int boundary = i == len || is_digit(s[i]) != is_digit(s[i - 1]) || (p->individual_digits && is_digit(s[i]));
            if (!boundary) continue;
            if ((rc = pre_word(c, level + 1, s + start, i - start, first && start == 0)) != LOOM_OK) return rc;
            start = i;
        }
        return LOOM_OK;
    }
    }
    return loom_error(LOOM_EINVAL, "unknown pre-tokenizer step %d", p->type);
}

/* Unicode normalization through ICU, which works on UTF-16. */
static int unicode_normalize(const UNormalizer2 *norm, const char *s, size_t len, buf_t *out) {
    if (len > INT32_MAX / 4) return loom_error(LOOM_ERANGE, "text of %zu bytes too long to normalize", len);
    UErrorCode st = U_ZERO_ERROR;
    int32_t n16 = 0, cap16 = (int32_t)len + 1, capn = 3 * cap16 + 16;
    UChar *src = malloc((size_t)cap16 * sizeof *src), *dst = malloc((size_t)capn * sizeof *dst);
    int rc = LOOM_OK;
    if (!src || !dst) {
        rc = loom_error(LOOM_ENOMEM, "out of memory normalizing %zu bytes", len);
        goto done;
    }
    u_strFromUTF8(src, cap16, &n16, s, (int32_t)len, &st);
    int32_t nn = U_SUCCESS(st) ? unorm2_normalize(norm, src, n16, dst, capn, &st) : 0;
    if (st == U_BUFFER_OVERFLOW_ERROR) { /* decompositions can grow past the first guess */
        free(dst);
        capn = nn + 1;
        dst = malloc((size_t)capn * sizeof *dst);
        if (!dst) {
            rc = loom_error(LOOM_ENOMEM, "out of memory normalizing %zu bytes", len);
            goto done;
        }
        st = U_ZERO_ERROR;
        nn = unorm2_normalize(norm, src, n16, dst, capn, &st);
    }
    int32_t n8 = 0;
    if (U_SUCCESS(st)) u_strToUTF8(NULL, 0, &n8, dst, nn, &st);
    if (st == U_BUFFER_OVERFLOW_ERROR) st = U_ZERO_ERROR;
    if (U_SUCCESS(st) && (rc = buf_reserve(out, (size_t)n8 + 1)) == LOOM_OK) u_strToUTF8(out->p, n8 + 1, &n8, dst, nn, &st);
    if (rc == LOOM_OK && U_FAILURE(st)) rc = loom_error(LOOM_EINVAL, "Unicode normalization failed: %s", u_errorName(st));
    if (rc == LOOM_OK) out->len = (size_t)n8;
done:
    free(src);
    free(dst);
    return rc;
}

static int normalize(enc_ctx *c, const char **s, size_t *len) {
    hf_impl *h = c->h;
    int cur = 0, rc;
    for (int k = 0; k < h->n_norm; k++) {
        const norm_step *n = &h->norm[k];
        buf_t *b = &c->norm[cur];
        b->len = 0;
        if (n->type == NORM_UNICODE) {
            int ascii = 1;
            for (size_t i = 0; i < *len && ascii; i++) ascii = (unsigned char)(*s)[i] < 0x80;
            if (ascii) continue; /* ASCII is unchanged by every normalization form */
            if ((rc = unicode_normalize(n->unorm, *s, *len, b)) != LOOM_OK) return rc;
        } else if (n->type == NORM_PREPEND) {
            if (*len == 0) continue;
            if ((rc = buf_add(b, n->text, n->text_len)) != LOOM_OK || (rc = buf_add(b, *s, *len)) != LOOM_OK) return rc;
        } else {
            size_t pos = 0, ms, me;
            while ((rc = regex_next(&n->re, c->md, *s, *len, pos, &ms, &me)) == 1) {
                if ((rc = buf_add(b, *s + pos, ms - pos)) != LOOM_OK || (rc = buf_add(b, n->text, n->text_len)) != LOOM_OK)
                    return rc;
                pos = me;
            }
            if (rc < 0 || (rc = buf_add(b, *s + pos, *len - pos)) != LOOM_OK) return rc;
        }
        *s = b->p ? b->p : "";
        *len = b->len;
        cur ^= 1;
    }
    return LOOM_OK;
}

static int segment(enc_ctx *c, const char *s, size_t len, int at_start) {
    if (len == 0) return LOOM_OK;
    int rc = normalize(c, &s, &len);
    if (rc != LOOM_OK) return rc;
    return pre_word(c, 0, s, len, at_start);
}

static int is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f'; }
static int is_word_byte(char ch) {
    unsigned char u = (unsigned char)ch;
    return u >= 0x80 || (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || u == '_';
}

/* The added token matching at s[i], or NULL. */
static const added_tok *match_added(const hf_impl *h, const char *s, size_t len, size_t i) {
    if (!h->added_first[(unsigned char)s[i]]) return NULL;
    for (int k = 0; k < h->n_added; k++) {
        const added_tok *a = &h->added[k];
        if (a->len > len - i || memcmp(s + i, a->s, a->len)) continue;
        if (a->single_word && ((i > 0 && is_word_byte(s[i - 1])) || (i + a->len < len && is_word_byte(s[i + a->len]))))
            continue;
        return a;
    }
    return NULL;
}

static int hf_encode(const loom_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.h = t->impl;
    c.md = pcre2_match_data_create(1, NULL);
    if (!c.md) return loom_error(LOOM_ENOMEM, "out of memory");
    int rc = LOOM_OK;
    size_t seg = 0;
    for (size_t i = 0; i < len && rc == LOOM_OK;) {
        const added_tok *a = c.h->match_added ? match_added(c.h, text, len, i) : NULL;
        if (!a) {
            i++;
            continue;
        }
        size_t end = i;
        if (a->lstrip)
            while (end > seg && is_ws(text[end - 1])) end--;
        rc = segment(&c, text + seg, end - seg, seg == 0);
        if (rc == LOOM_OK) rc = tok_ids_push(&c.out, a->id);
        i += a->len;
        if (a->rstrip)
            while (i < len && is_ws(text[i])) i++;
        seg = i;
    }
    if (rc == LOOM_OK) rc = segment(&c, text + seg, len - seg, seg == 0);
    pcre2_match_data_free(c.md);
    free(c.norm[0].p);
    free(c.norm[1].p);
    for (int k = 0; k < MAX_PRE; k++) free(c.level[k].p);
    if (rc != LOOM_OK) {
        free(c.out.v);
        return rc;
    }
    *ids = c.out.v ? c.out.v : malloc(sizeof(int32_t));
    *n = c.out.n;
    if (!*ids) return loom_error(LOOM_ENOMEM, "out of memory");
    return LOOM_OK;
}

static int hf_piece(const loom_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t cap) {
    const hf_impl *h = t->impl;
    if (id < 0 || id >= t->vocab_size) return loom_error(LOOM_ERANGE, "token id %d outside the vocabulary (%d)", id, t->vocab_size);
    const char *s = h->dec[id] ? h->dec[id] : "";
    size_t n = h->dec_len[id];
    if (h->strip_first && (prev < 0 || prev == t->bos) && n > 0 && s[0] == ' ') s++, n--;
    if (n > cap) return loom_error(LOOM_EINVAL, "piece of token %d (%zu bytes) does not fit in %zu bytes", id, n, cap);
    memcpy(buf, s, n);
    return (int)n;
}

static void hf_destroy(loom_tokenizer *t) {
    hf_impl *h = t->impl;
    if (!h) return;
    tok_bpe_free(&h->bpe);
    for (int k = 0; k < h->n_added; k++) free(h->added[k].s);
    free(h->added);
    for (int k = 0; k < h->n_norm; k++) {
        free(h->norm[k].text);
        regex_free(&h->norm[k].re);
    }
    free(h->norm);
    for (int k = 0; k < h->n_pre; k++) regex_free(&h->pre[k].re);
    if (h->dec)
        for (int32_t i = 0; i < t->vocab_size; i++) free(h->dec[i]);
    free(h->dec);
    free(h->dec_len);
    free(h);
    t->impl = NULL;
}

static int32_t find_token(const hf_impl *h, const char *s);
static int32_t hf_token_id(const loom_tokenizer *t, const char *token) { return find_token(t->impl, token); }

static const loom_tokenizer_ops bytelevel_ops = {"bpe-bytelevel", hf_encode, hf_piece, hf_destroy, hf_token_id};
static const loom_tokenizer_ops sentencepiece_ops = {"bpe-sentencepiece", hf_encode, hf_piece, hf_destroy, hf_token_id};
static const loom_tokenizer_ops tiktoken_ops = {"tiktoken", hf_encode, hf_piece, hf_destroy, hf_token_id};

/* ---- loading ---- */

static int new_tokenizer(loom_tokenizer **out, hf_impl **h) {
    loom_tokenizer *t = calloc(1, sizeof *t);
    *h = calloc(1, sizeof **h);
    if (!t || !*h) {
        free(t);
        free(*h);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    t->impl = *h;
    t->ops = &sentencepiece_ops;
    t->bos = t->eos = t->pad = -1;
    *out = t;
    return LOOM_OK;
}

/* Id of a token string: added tokens first, then the model vocabulary; -1 when absent. */
static int32_t find_token(const hf_impl *h, const char *s) {
    size_t n = strlen(s);
    for (int k = 0; k < h->n_added; k++)
        if (h->added[k].len == n && !memcmp(h->added[k].s, s, n)) return h->added[k].id;
    return tok_strmap_get(&h->bpe.vocab, s, n);
}

static int add_merge(tok_bpe *m, int32_t rank, const char *a, size_t alen, const char *b, size_t blen, const char *where) {
    int32_t ia = tok_strmap_get(&m->vocab, a, alen), ib = tok_strmap_get(&m->vocab, b, blen);
    if (ia < 0 || ib < 0)
        return loom_error(LOOM_EFORMAT, "%s %d (\"%.*s %.*s\"): token \"%.*s\" is not in the vocabulary", where, rank, (int)alen, a,
                          (int)blen, b, ia < 0 ? (int)alen : (int)blen, ia < 0 ? a : b);
    char stack[256], *ab = alen + blen <= sizeof stack ? stack : malloc(alen + blen);
    if (!ab) return loom_error(LOOM_ENOMEM, "out of memory");
    memcpy(ab, a, alen);
    memcpy(ab + alen, b, blen);
    int32_t id = tok_strmap_get(&m->vocab, ab, alen + blen);
    if (ab != stack) free(ab);
    if (id < 0)
        return loom_error(LOOM_EFORMAT, "%s %d (\"%.*s %.*s\"): the merged token \"%.*s%.*s\" is not in the vocabulary", where, rank,
                          (int)alen, a, (int)blen, b, (int)alen, a, (int)blen, b);
    return tok_pairmap_put(&m->merges, ia, ib, rank, id);
}

/* Builds the decode table: byte-level strings map back through bytes_to_unicode; SentencePiece-style
 * strings turn the replacement character into a space and <0xNN> into the byte. */
static int build_decoder(loom_tokenizer *t, hf_impl *h, const char *repl) {
    h->dec = calloc((size_t)t->vocab_size, sizeof *h->dec);
    h->dec_len = calloc((size_t)t->vocab_size, sizeof *h->dec_len);
    if (!h->dec || !h->dec_len) return loom_error(LOOM_ENOMEM, "out of memory");
    uint32_t b2u[256];
    int32_t u2b[512];
    tok_byte_to_unicode(b2u);
    for (int i = 0; i < 512; i++) u2b[i] = -1;
    for (int b = 0; b < 256; b++) u2b[b2u[b]] = b;
    size_t rlen = strlen(repl);
    int max_piece = 1;
    for (int32_t id = 0; id < t->vocab_size; id++) {
        const char *s = h->bpe.str[id];
        size_t n = h->bpe.str_len[id];
        if (!s) continue;
        char *d = malloc(n + 1);
        if (!d) return loom_error(LOOM_ENOMEM, "out of memory");
        size_t k = 0;
        unsigned hex;
        char tail;
        if (h->bpe.byte_level) {
            for (size_t i = 0; i < n;) {
                int cl;
                uint32_t cp = tok_utf8_get(s + i, &cl);
                if (i + (size_t)cl > n) cl = 1;
                if (cp < 512 && u2b[cp] >= 0) d[k++] = (char)u2b[cp];
                else memcpy(d + k, s + i, (size_t)cl), k += (size_t)cl;
                i += (size_t)cl;
            }
        } else if (h->bpe.byte_fallback && n == 6 && sscanf(s, "<0x%2X%c", &hex, &tail) == 2 && tail == '>') {
            d[k++] = (char)hex;
        } else {
            for (size_t i = 0; i < n;) {
                if (rlen && i + rlen <= n && !memcmp(s + i, repl, rlen)) {
                    d[k++] = ' ';
                    i += rlen;
                } else
                    d[k++] = s[i++];
            }
        }
        d[k] = 0;
        h->dec[id] = d;
        h->dec_len[id] = (uint32_t)k;
        if ((int)k > max_piece) max_piece = (int)k;
    }
    /* added tokens decode to their content as written */
    for (int a = 0; a < h->n_added; a++) {
        const added_tok *at = &h->added[a];
        char *d = malloc(at->len + 1);
        if (!d) return loom_error(LOOM_ENOMEM, "out of memory");
        memcpy(d, at->s, at->len + 1);
        free(h->dec[at->id]);
        h->dec[at->id] = d;
        h->dec_len[at->id] = (uint32_t)at->len;
        if ((int)at->len > max_piece) max_piece = (int)at->len;
    }
    t->max_piece = max_piece;
    return LOOM_OK;
}

static int cmp_added(const void *x, const void *y) {
    const added_tok *a = x, *b = y;
    return a->len < b->len ? 1 : a->len > b->len ? -1 : 0;
}

static int finish_added(hf_impl *h) {
    qsort(h->added, (size_t)h->n_added, sizeof *h->added, cmp_added);
    for (int k = 0; k < h->n_added; k++) h->added_first[(unsigned char)h->added[k].s[0]] = 1;
    return LOOM_OK;
}

/* ---- GPT-2 encoder.json + vocab.bpe ---- */

static int json_error(const char *path, const json_error_t *e) {
    return loom_error(LOOM_EFORMAT, "%s: invalid JSON at line %d column %d: %s", path, e->line, e->column, e->text);
}

/* Fills the vocabulary from a JSON object token -> id. */
static int load_vocab(tok_bpe *m, json_t *vocab, int32_t n_vocab, const char *where) {
    int rc = tok_bpe_init(m, n_vocab);
    if (rc != LOOM_OK) return rc;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val))
            return loom_error(LOOM_EFORMAT, "%s: the id of token \"%.60s\" is not an integer", where, key);
        /* jansson keys are NUL-terminated; tokens holding U+0000 are not representable */
        if ((rc = tok_bpe_set_token(m, (int32_t)json_integer_value(val), key, strlen(key))) != LOOM_OK)
            return loom_error_context(rc, "%s", where);
    }
    return LOOM_OK;
}

static int32_t vocab_extent(json_t *vocab, const char *where, int *rc) {
    json_int_t max = -1;
    const char *key;
    json_t *val;
    *rc = LOOM_OK;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val)) {
            *rc = loom_error(LOOM_EFORMAT, "%s: the id of token \"%.60s\" is not an integer", where, key);
            return -1;
        }
        json_int_t v = json_integer_value(val);
        if (v < 0 || v >= (1 << 24)) {
            *rc = loom_error(LOOM_EFORMAT, "%s: token \"%.60s\" has id %lld outside 0..%d", where, key, (long long)v, (1 << 24) - 1);
            return -1;
        }
        if (v > max) max = v;
    }
    return (int32_t)(max + 1);
}

int tok_load_gpt2_files(loom_tokenizer **out, const char *encoder_json, const char *vocab_bpe) {
    *out = NULL;
    json_error_t je;
    json_t *enc = json_load_file(encoder_json, 0, &je);
    if (!enc) return json_error(encoder_json, &je);
    loom_tokenizer *t = NULL;
    hf_impl *h = NULL;
    char *bpe = NULL;
    size_t bpe_len = 0;
    int rc;
    if (!json_is_object(enc)) {
        rc = loom_error(LOOM_EFORMAT, "%s: expected a JSON object token -> id", encoder_json);
        goto fail;
    }
    int32_t n_vocab = vocab_extent(enc, encoder_json, &rc);
    if (rc != LOOM_OK) goto fail;
    if ((rc = new_tokenizer(&t, &h)) != LOOM_OK) goto fail;
    t->ops = &bytelevel_ops;
    t->vocab_size = n_vocab;
    if ((rc = load_vocab(&h->bpe, enc, n_vocab, encoder_json)) != LOOM_OK) goto fail;
    if ((rc = loom_read_file(vocab_bpe, &bpe, &bpe_len)) != LOOM_OK) goto fail;
    /* vocab.bpe: "#version" line, then one merge "left right" per line, by priority */
    size_t pos = 0;
    int32_t rank = 0, line = 0;
    while (pos < bpe_len) {
        size_t e = pos;
        while (e < bpe_len && bpe[e] != '\n') e++;
        line++;
        size_t le = e;
        if (le > pos && bpe[le - 1] == '\r') le--;
        if (le > pos && !(line == 1 && bpe[pos] == '#')) {
            const char *sp = memchr(bpe + pos, ' ', le - pos);
            if (!sp || sp == bpe + pos || sp + 1 == bpe + le || memchr(sp + 1, ' ', (size_t)(bpe + le - sp - 1))) {
                rc = loom_error(LOOM_EFORMAT, "%s: line %d: expected \"left right\"", vocab_bpe, line);
                goto fail;
            }
            rc = add_merge(&h->bpe, rank, bpe + pos, (size_t)(sp - bpe - pos), sp + 1, (size_t)(bpe + le - sp - 1), "merge");
            if (rc != LOOM_OK) {
                loom_error_context(rc, "%s: line %d", vocab_bpe, line);
                goto fail;
            }
            rank++;
        }
        pos = e + 1;
    }
    if (rank == 0) {
        rc = loom_error(LOOM_EFORMAT, "%s: no merges", vocab_bpe);
        goto fail;
    }
    tok_bpe_set_byte_level(&h->bpe);
    for (int b = 0; b < 256; b++)
        if (h->bpe.byte_id[b] < 0) {
            rc = loom_error(LOOM_EFORMAT, "%s: byte 0x%02X has no token", encoder_json, b);
            goto fail;
        }
    pre_step *p = &h->pre[h->n_pre++];
    p->type = PRE_BYTELEVEL;
    if ((rc = regex_compile(&p->re, gpt2_pattern, strlen(gpt2_pattern), 0, "GPT-2 pattern")) != LOOM_OK) goto fail;
    if ((rc = build_decoder(t, h, "")) != LOOM_OK) goto fail;
    int32_t eot = find_token(h, "<|endoftext|>");
    t->bos = t->eos = eot;
    free(bpe);
    json_decref(enc);
    *out = t;
    return LOOM_OK;
fail:
    free(bpe);
    json_decref(enc);
    loom_tokenizer_free(t);
    return rc;
}

/* ---- tokenizer.json ---- */

static int jbool(json_t *o, const char *k, int dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* A {"String": s} or {"Regex": r} pattern. */
static int compile_pattern(tok_regex *re, json_t *pat, const char *where) {
    json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    if (json_is_string(s)) return regex_compile(re, json_string_value(s), json_string_length(s), 1, where);
    if (json_is_string(r)) return regex_compile(re, json_string_value(r), json_string_length(r), 0, where);
    return loom_error(LOOM_EFORMAT, "%s: pattern must be {\"String\": ...} or {\"Regex\": ...}", where);
}

static int parse_normalizer(hf_impl *h, json_t *n, const char *path) {
    if (!n || json_is_null(n)) return LOOM_OK;
    const char *type = json_string_value(json_object_get(n, "type"));
    if (!type) return loom_error(LOOM_EFORMAT, "%s: normalizer without a \"type\"", path);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list)) return loom_error(LOOM_EFORMAT, "%s: Sequence normalizer without a \"normalizers\" list", path);
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x) {
            int rc = parse_normalizer(h, x, path);
            if (rc != LOOM_OK) return rc;
        }
        return LOOM_OK;
    }
    int is_prepend = !strcmp(type, "Prepend"), is_replace = !strcmp(type, "Replace");
    UErrorCode st = U_ZERO_ERROR;
    const UNormalizer2 *unorm = !strcmp(type, "NFC")    ? unorm2_getNFCInstance(&st)
                                : !strcmp(type, "NFD")  ? unorm2_getNFDInstance(&st)
                                : !strcmp(type, "NFKC") ? unorm2_getNFKCInstance(&st)
                                : !strcmp(type, "NFKD") ? unorm2_getNFKDInstance(&st)
                                                        : NULL;
    if (!is_prepend && !is_replace && !unorm)
        return loom_error(LOOM_EUNSUPPORTED, "%s: normalizer \"%s\" is not supported (NFC, NFD, NFKC, NFKD, Prepend, Replace and Sequence are)",
                          path, type);
    if (U_FAILURE(st)) return loom_error(LOOM_EUNSUPPORTED, "%s: normalizer %s unavailable: %s", path, type, u_errorName(st));
    norm_step *grown = realloc(h->norm, (size_t)(h->n_norm + 1) * sizeof *grown);
    if (!grown) return loom_error(LOOM_ENOMEM, "out of memory");
    h->norm = grown;
    norm_step *s = &h->norm[h->n_norm];
    memset(s, 0, sizeof *s);
    if (unorm) {
        s->type = NORM_UNICODE;
        s->unorm = unorm;
        h->n_norm++;
        return LOOM_OK;
    }
    json_t *text = json_object_get(n, is_prepend ? "prepend" : "content");
    if (!json_is_string(text)) return loom_error(LOOM_EFORMAT, "%s: %s normalizer without its string", path, type);
    s->type = is_prepend ? NORM_PREPEND : NORM_REPLACE;
    s->text = loom_strdup(json_string_value(text));
    if (!s->text) return LOOM_ENOMEM;
    s->text_len = json_string_length(text);
    h->n_norm++;
    if (is_replace) return compile_pattern(&s->re, json_object_get(n, "pattern"), "Replace normalizer");
    return LOOM_OK;
}

static int parse_pre(hf_impl *h, json_t *p, const char *path) {
    if (!p || json_is_null(p)) return LOOM_OK;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (!type) return loom_error(LOOM_EFORMAT, "%s: pre_tokenizer without a \"type\"", path);
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(p, "pretokenizers");
        if (!json_is_array(list)) return loom_error(LOOM_EFORMAT, "%s: Sequence pre_tokenizer without a \"pretokenizers\" list", path);
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x) {
            int rc = parse_pre(h, x, path);
            if (rc != LOOM_OK) return rc;
        }
        return LOOM_OK;
    }
    if (h->n_pre == MAX_PRE) return loom_error(LOOM_EUNSUPPORTED, "%s: more than %d pre-tokenizers", path, MAX_PRE);
    pre_step *s = &h->pre[h->n_pre];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "ByteLevel")) {
        s->type = PRE_BYTELEVEL;
        s->add_prefix_space = jbool(p, "add_prefix_space", 1);
        h->n_pre++;
        h->bpe.byte_level = 1;
        if (jbool(p, "use_regex", 1)) return regex_compile(&s->re, gpt2_pattern, strlen(gpt2_pattern), 0, "ByteLevel pattern");
        return LOOM_OK;
    }
    if (!strcmp(type, "Metaspace")) {
        s->type = PRE_METASPACE;
        json_t *r = json_object_get(p, "replacement");
        const char *repl = json_is_string(r) ? json_string_value(r) : "\xE2\x96\x81";
        size_t rl = strlen(repl);
        if (rl == 0 || rl > 4) return loom_error(LOOM_EFORMAT, "%s: Metaspace replacement must be one character", path);
        memcpy(s->repl, repl, rl);
        s->repl_len = (int)rl;
        const char *scheme = json_string_value(json_object_get(p, "prepend_scheme"));
        if (scheme) {
            if (!strcmp(scheme, "always")) s->prepend = PREPEND_ALWAYS;
            else if (!strcmp(scheme, "first")) s->prepend = PREPEND_FIRST;
            else if (!strcmp(scheme, "never")) s->prepend = PREPEND_NEVER;
            else return loom_error(LOOM_EFORMAT, "%s: unknown Metaspace prepend_scheme \"%s\"", path, scheme);
        } else
            s->prepend = jbool(p, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER; /* older files */
        s->split = jbool(p, "split", 1);
        h->n_pre++;
        return LOOM_OK;
    }
    if (!strcmp(type, "Split")) {
        s->type = PRE_SPLIT;
        if (jbool(p, "invert", 0)) return loom_error(LOOM_EUNSUPPORTED, "%s: Split pre_tokenizer with invert=true is not supported", path);
        const char *b = json_string_value(json_object_get(p, "behavior"));
        static const char *names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        s->behavior = -1;
        for (int k = 0; k < 5 && b; k++)
            if (!strcmp(b, names[k])) s->behavior = k;
        if (s->behavior < 0) return loom_error(LOOM_EFORMAT, "%s: Split pre_tokenizer with unknown behavior \"%s\"", path, b ? b : "(none)");
        h->n_pre++;
        return compile_pattern(&s->re, json_object_get(p, "pattern"), "Split pre_tokenizer");
    }
    if (!strcmp(type, "Digits")) {
        s->type = PRE_DIGITS;
        s->individual_digits = jbool(p, "individual_digits", 0);
        h->n_pre++;
        return LOOM_OK;
    }
    return loom_error(LOOM_EUNSUPPORTED, "%s: pre_tokenizer \"%s\" is not supported (ByteLevel, Metaspace, Split, Digits and Sequence are)",
                      path, type);
}

/* Decoder settings that change the text: a ByteLevel decoder, a leading-space strip (Strip with
 * start >= 1, or Metaspace with a prepend scheme), and the replacement character. */
static void parse_decoder(json_t *d, int *byte_level, int *strip, const char **repl) {
    if (!d || !json_is_object(d)) return;
    const char *type = json_string_value(json_object_get(d, "type"));
    if (!type) return;
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(d, "decoders"), i, x) parse_decoder(x, byte_level, strip, repl);
    } else if (!strcmp(type, "ByteLevel")) {
        *byte_level = 1;
    } else if (!strcmp(type, "Strip")) {
        json_t *start = json_object_get(d, "start");
        const char *content = json_string_value(json_object_get(d, "content"));
        if (json_integer_value(start) >= 1 && content && !strcmp(content, " ")) *strip = 1;
    } else if (!strcmp(type, "Metaspace")) {
        const char *scheme = json_string_value(json_object_get(d, "prepend_scheme"));
        if (scheme ? strcmp(scheme, "never") != 0 : jbool(d, "add_prefix_space", 1)) *strip = 1;
        const char *r = json_string_value(json_object_get(d, "replacement"));
        if (r) *repl = r;
    } else if (!strcmp(type, "Replace")) {
        const char *s = json_string_value(json_object_get(json_object_get(d, "pattern"), "String"));
        const char *c = json_string_value(json_object_get(d, "content"));
        if (s && c && !strcmp(c, " ")) *repl = s;
    }
}

/* A special token named in tokenizer_config.json: a string or {"content": ...}. */
static int config_token(const hf_impl *h, json_t *cfg, const char *key, int32_t *id, const char *path) {
    json_t *v = json_object_get(cfg, key);
    if (!v) return LOOM_OK;
    if (json_is_null(v)) { /* explicitly none (Qwen2 has no bos) */
        *id = -1;
        return LOOM_OK;
    }
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return loom_error(LOOM_EFORMAT, "%s: \"%s\" is neither a string nor {\"content\": ...}", path, key);
    int32_t x = find_token(h, json_string_value(v));
    if (x < 0) return loom_error(LOOM_EFORMAT, "%s: %s \"%s\" is not a token of the tokenizer", path, key, json_string_value(v));
    *id = x;
    return LOOM_OK;
}

static int32_t first_found(const hf_impl *h, const char *const *names) {
    for (; *names; names++) {
        int32_t id = find_token(h, *names);
        if (id >= 0) return id;
    }
    return -1;
}

/* The first special token of a TemplateProcessing "single" template: the token prepended as BOS. */
static const char *template_bos(json_t *pp) {
    if (!json_is_object(pp)) return NULL;
    const char *type = json_string_value(json_object_get(pp, "type"));
    if (type && !strcmp(type, "Sequence")) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(pp, "processors"), i, x) {
            const char *s = template_bos(x);
            if (s) return s;
        }
        return NULL;
    }
    if (!type || strcmp(type, "TemplateProcessing")) return NULL;
    json_t *first = json_array_get(json_object_get(pp, "single"), 0);
    return json_string_value(json_object_get(json_object_get(first, "SpecialToken"), "id"));
}

static int special_tokens(loom_tokenizer *t, hf_impl *h, json_t *root, const char *path) {
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "<|endoftext|>", NULL};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", NULL};
    static const char *const pad_names[] = {"<pad>", "<|pad|>", "[PAD]", NULL};
    const char *tb = template_bos(json_object_get(root, "post_processor"));
    t->bos = tb ? find_token(h, tb) : -1;
    if (t->bos < 0) t->bos = first_found(h, bos_names);
    t->eos = first_found(h, eos_names);
    t->pad = first_found(h, pad_names);
    /* tokenizer_config.json beside the file names them explicitly */
    const char *slash = strrchr(path, '/');
    size_t dir = slash ? (size_t)(slash - path + 1) : 0;
    char *cfg_path = malloc(dir + 32);
    if (!cfg_path) return loom_error(LOOM_ENOMEM, "out of memory");
    memcpy(cfg_path, path, dir);
    strcpy(cfg_path + dir, "tokenizer_config.json");
    FILE *f = fopen(cfg_path, "rb");
    if (!f) {
        free(cfg_path);
        return LOOM_OK;
    }
    fclose(f);
    json_error_t je;
    json_t *cfg = json_load_file(cfg_path, 0, &je);
    int rc = cfg ? LOOM_OK : json_error(cfg_path, &je);
    if (rc == LOOM_OK && !json_is_object(cfg)) rc = loom_error(LOOM_EFORMAT, "%s: expected a JSON object", cfg_path);
    if (rc == LOOM_OK) rc = config_token(h, cfg, "bos_token", &t->bos, cfg_path);
    if (rc == LOOM_OK) rc = config_token(h, cfg, "eos_token", &t->eos, cfg_path);
    if (rc == LOOM_OK) rc = config_token(h, cfg, "pad_token", &t->pad, cfg_path);
    json_decref(cfg);
    free(cfg_path);
    return rc;
}

static int parse_added(hf_impl *h, json_t *list, int32_t n_vocab, const char *path) {
    if (!list || json_is_null(list)) return LOOM_OK;
    if (!json_is_array(list)) return loom_error(LOOM_EFORMAT, "%s: \"added_tokens\" is not a list", path);
    h->added = calloc(json_array_size(list) + 1, sizeof *h->added);
    if (!h->added) return loom_error(LOOM_ENOMEM, "out of memory");
    size_t i;
    json_t *x;
    json_array_foreach(list, i, x) {
        json_t *id = json_object_get(x, "id"), *content = json_object_get(x, "content");
        if (!json_is_integer(id) || !json_is_string(content) || json_string_length(content) == 0)
            return loom_error(LOOM_EFORMAT, "%s: added_tokens[%zu] needs an integer \"id\" and a non-empty \"content\"", path, i);
        json_int_t v = json_integer_value(id);
        if (v < 0 || v >= n_vocab) return loom_error(LOOM_EFORMAT, "%s: added_tokens[%zu] has id %lld outside 0..%d", path, i, (long long)v, n_vocab - 1);
        added_tok *a = &h->added[h->n_added];
        a->s = malloc(json_string_length(content) + 1);
        if (!a->s) return loom_error(LOOM_ENOMEM, "out of memory");
        memcpy(a->s, json_string_value(content), json_string_length(content) + 1);
        a->len = json_string_length(content);
        a->id = (int32_t)v;
        a->lstrip = jbool(x, "lstrip", 0);
        a->rstrip = jbool(x, "rstrip", 0);
        a->single_word = jbool(x, "single_word", 0);
        h->n_added++;
    }
    h->match_added = 1;
    return finish_added(h);
}

static int parse_merges(tok_bpe *m, json_t *merges, const char *path) {
    size_t i;
    json_t *x;
    json_array_foreach(merges, i, x) {
        int rc;
        if (json_is_string(x)) {
            const char *s = json_string_value(x);
            size_t n = json_string_length(x);
            const char *sp = memchr(s, ' ', n);
            if (!sp || sp == s || sp + 1 == s + n || memchr(sp + 1, ' ', (size_t)(s + n - sp - 1)))
                return loom_error(LOOM_EFORMAT, "%s: merges[%zu] \"%.80s\" is not \"left right\"", path, i, s);
            rc = add_merge(m, (int32_t)i, s, (size_t)(sp - s), sp + 1, (size_t)(s + n - sp - 1), "merges");
        } else if (json_is_array(x) && json_array_size(x) == 2 && json_is_string(json_array_get(x, 0)) &&
                   json_is_string(json_array_get(x, 1))) {
            json_t *a = json_array_get(x, 0), *b = json_array_get(x, 1);
            rc = add_merge(m, (int32_t)i, json_string_value(a), json_string_length(a), json_string_value(b), json_string_length(b), "merges");
        } else
            return loom_error(LOOM_EFORMAT, "%s: merges[%zu] is neither \"left right\" nor [left, right]", path, i);
        if (rc != LOOM_OK) return loom_error_context(rc, "%s", path);
    }
    return LOOM_OK;
}

int tok_load_hf_json(loom_tokenizer **out, const char *path) {
    *out = NULL;
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return json_error(path, &je);
    loom_tokenizer *t = NULL;
    hf_impl *h = NULL;
    int rc;
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) {
        rc = loom_error(LOOM_EFORMAT, "%s: no \"model\" object", path);
        goto fail;
    }
    const char *type = json_string_value(json_object_get(model, "type"));
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (type && strcmp(type, "BPE")) {
        rc = loom_error(LOOM_EUNSUPPORTED, "%s: model type \"%s\" is not supported (only BPE)", path, type);
        goto fail;
    }
    if (!json_is_object(vocab) || !json_is_array(merges)) {
        rc = loom_error(LOOM_EFORMAT, "%s: the BPE model needs a \"vocab\" object and a \"merges\" list", path);
        goto fail;
    }
    const char *cont = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *eow = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if ((cont && *cont) || (eow && *eow)) {
        rc = loom_error(LOOM_EUNSUPPORTED, "%s: BPE with continuing_subword_prefix/end_of_word_suffix is not supported", path);
        goto fail;
    }
    int32_t n_vocab = vocab_extent(vocab, path, &rc);
    if (rc != LOOM_OK) goto fail;
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(root, "added_tokens"), i, x) {
        json_int_t v = json_integer_value(json_object_get(x, "id"));
        if (v >= n_vocab && v < (1 << 24)) n_vocab = (int32_t)v + 1;
    }
    if (n_vocab <= 0) {
        rc = loom_error(LOOM_EFORMAT, "%s: empty vocabulary", path);
        goto fail;
    }
    if ((rc = new_tokenizer(&t, &h)) != LOOM_OK) goto fail;
    t->vocab_size = n_vocab;
    if ((rc = load_vocab(&h->bpe, vocab, n_vocab, path)) != LOOM_OK) goto fail;
    if ((rc = parse_merges(&h->bpe, merges, path)) != LOOM_OK) goto fail;
    if ((rc = parse_added(h, json_object_get(root, "added_tokens"), n_vocab, path)) != LOOM_OK) goto fail;
    if ((rc = parse_normalizer(h, json_object_get(root, "normalizer"), path)) != LOOM_OK) goto fail;
    if ((rc = parse_pre(h, json_object_get(root, "pre_tokenizer"), path)) != LOOM_OK) goto fail;
    tok_bpe *m = &h->bpe;
    m->byte_fallback = jbool(model, "byte_fallback", 0);
    m->fuse_unk = jbool(model, "fuse_unk", 0);
    m->ignore_merges = jbool(model, "ignore_merges", 0);
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) {
        m->unk = find_token(h, unk);
        if (m->unk < 0) {
            rc = loom_error(LOOM_EFORMAT, "%s: unk_token \"%s\" is not in the vocabulary", path, unk);
            goto fail;
        }
    }
    int dec_byte_level = 0, strip = 0;
    const char *repl = "\xE2\x96\x81";
    parse_decoder(json_object_get(root, "decoder"), &dec_byte_level, &strip, &repl);
    if (m->byte_level || dec_byte_level) {
        tok_bpe_set_byte_level(m);
        t->ops = &bytelevel_ops;
    } else if (m->byte_fallback) {
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            m->byte_id[b] = tok_strmap_get(&m->vocab, name, 6);
        }
    }
    tok_bpe_find_barriers(m);
    h->strip_first = strip && !m->byte_level;
    if ((rc = build_decoder(t, h, m->byte_level ? "" : repl)) != LOOM_OK) goto fail;
    if ((rc = special_tokens(t, h, root, path)) != LOOM_OK) goto fail;
    json_decref(root);
    *out = t;
    return LOOM_OK;
fail:
    json_decref(root);
    loom_tokenizer_free(t);
    return rc;
}

/* ---- tiktoken ranks file (Llama 3's tokenizer.model) ---- */

static int b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes standard base64 (with '=' padding) into out (room for 3*len/4 bytes); -1 if malformed. */
static long b64_decode(const char *s, size_t len, unsigned char *out) {
    if (len == 0 || len % 4) return -1;
    long n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)s[i + k];
            if (c == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad || (v[k] = b64_value(c)) < 0)
                return -1;
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[n++] = (unsigned char)(x >> 16);
        if (pad < 2) out[n++] = (unsigned char)(x >> 8);
        if (pad < 1) out[n++] = (unsigned char)x;
    }
    return n;
}

enum { LLAMA3_RANKS = 128000, LLAMA3_SPECIALS = 256 };

/* Llama 3's special tokens, appended after its 128,000 ranks (models/llama3/tokenizer.py). */
static void llama3_special_name(int k, char *buf, size_t cap) {
    static const char *const first[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                        "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                                        "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                                        "<|python_tag|>", "<|image|>"};
    if (k < 12) snprintf(buf, cap, "%s", first[k]);
    else snprintf(buf, cap, "<|reserved_special_token_%d|>", k - 12 + 2);
}

int tok_load_tiktoken(loom_tokenizer **out, const char *path) {
    *out = NULL;
    char *data;
    size_t size;
    int rc = loom_read_file(path, &data, &size);
    if (rc != LOOM_OK) return rc;
    loom_tokenizer *t = NULL;
    hf_impl *h = NULL;
    /* first pass: count lines and find the largest rank */
    int32_t lines = 0, max_rank = -1;
    for (size_t pos = 0; pos < size;) {
        size_t e = pos;
        while (e < size && data[e] != '\n') e++;
        if (e > pos) {
            lines++;
            const char *sp = memchr(data + pos, ' ', e - pos);
            char *end;
            long r = sp ? strtol(sp + 1, &end, 10) : -1;
            if (!sp || r < 0 || r >= (1 << 24) - LLAMA3_SPECIALS || (end != data + e && !(end + 1 == data + e && *end == '\r'))) {
                rc = loom_error(LOOM_EFORMAT, "%s: line %d: expected \"<base64> <rank>\"", path, lines);
                goto fail;
            }
            if (r > max_rank) max_rank = (int32_t)r;
        }
        pos = e + 1;
    }
    if (lines == 0) {
        rc = loom_error(LOOM_EFORMAT, "%s: no ranks", path);
        goto fail;
    }
    int llama3 = lines == LLAMA3_RANKS && max_rank == LLAMA3_RANKS - 1;
    int32_t n_vocab = max_rank + 1 + (llama3 ? LLAMA3_SPECIALS : 0);
    if ((rc = new_tokenizer(&t, &h)) != LOOM_OK) goto fail;
    t->ops = &tiktoken_ops;
    t->vocab_size = n_vocab;
    tok_bpe *m = &h->bpe;
    if ((rc = tok_bpe_init(m, n_vocab)) != LOOM_OK) goto fail;
    uint32_t b2u[256];
    tok_byte_to_unicode(b2u);
    int32_t line = 0;
    for (size_t pos = 0; pos < size;) {
        size_t e = pos;
        while (e < size && data[e] != '\n') e++;
        if (e > pos) {
            line++;
            const char *sp = memchr(data + pos, ' ', e - pos);
            int32_t r = (int32_t)strtol(sp + 1, NULL, 10);
            unsigned char raw[768];
            char mapped[2 * sizeof raw];
            size_t blen = (size_t)(sp - data - pos);
            long n = blen <= 1024 ? b64_decode(data + pos, blen, raw) : -1;
            if (n <= 0) {
                rc = loom_error(LOOM_EFORMAT, "%s: line %d: invalid base64 token", path, line);
                goto fail;
            }
            size_t k = 0;
            for (long i = 0; i < n; i++) k += (size_t)tok_utf8_put(b2u[raw[i]], mapped + k);
            if ((rc = tok_bpe_set_token(m, r, mapped, k)) != LOOM_OK) {
                loom_error_context(rc, "%s: line %d", path, line);
                goto fail;
            }
        }
        pos = e + 1;
    }
    /* a token's rank is its merge priority: every split into two tokens is a mergeable pair */
    for (int32_t id = 0; id <= max_rank; id++) {
        const char *s = m->str[id];
        uint32_t len = m->str_len[id];
        if (!s) continue;
        for (uint32_t k = (uint32_t)tok_utf8_char_len((unsigned char)s[0]); k < len; k += (uint32_t)tok_utf8_char_len((unsigned char)s[k])) {
            int32_t a = tok_strmap_get(&m->vocab, s, k), b = tok_strmap_get(&m->vocab, s + k, len - k);
            if (a >= 0 && b >= 0 && (rc = tok_pairmap_put(&m->merges, a, b, id, id)) != LOOM_OK) goto fail;
        }
    }
    tok_bpe_set_byte_level(m);
    for (int b = 0; b < 256; b++)
        if (m->byte_id[b] < 0) {
            rc = loom_error(LOOM_EFORMAT, "%s: byte 0x%02X has no token", path, b);
            goto fail;
        }
    /* tiktoken looks a whole pre-token up before merging */
    m->ignore_merges = 1;
    if (llama3) {
        h->added = calloc(LLAMA3_SPECIALS, sizeof *h->added);
        if (!h->added) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto fail;
        }
        for (int k = 0; k < LLAMA3_SPECIALS; k++) {
            char name[64];
            llama3_special_name(k, name, sizeof name);
            added_tok *a = &h->added[h->n_added++];
            a->s = loom_strdup(name);
            a->len = strlen(name);
            a->id = LLAMA3_RANKS + k;
            if (!a->s) {
                rc = LOOM_ENOMEM;
                goto fail;
            }
        }
        finish_added(h);
        /* Meta's tokenizer.py encodes special-token text as plain text */
        h->match_added = 0;
        t->bos = LLAMA3_RANKS;
        t->eos = LLAMA3_RANKS + 1;
    }
    pre_step *p = &h->pre[h->n_pre++];
    p->type = PRE_SPLIT;
    p->behavior = SPLIT_ISOLATED;
    if ((rc = regex_compile(&p->re, tiktoken_pattern, strlen(tiktoken_pattern), 0, "tiktoken pattern")) != LOOM_OK) goto fail;
    if ((rc = build_decoder(t, h, "")) != LOOM_OK) goto fail;
    free(data);
    *out = t;
    return LOOM_OK;
fail:
    free(data);
    loom_tokenizer_free(t);
    return rc;
}

/* ---- byte-level BPE from tables in memory (a GGUF file's gpt2 vocabulary) ---- */

int tok_load_bytelevel(loom_tokenizer **out, int32_t n_vocab, const char *const *tok, const size_t *tok_len, size_t n_merges,
                       const char *const *merge, const size_t *merge_len, int llama3_pattern, const char *where) {
    *out = NULL;
    loom_tokenizer *t = NULL;
    hf_impl *h = NULL;
    int rc = new_tokenizer(&t, &h);
    if (rc != LOOM_OK) return rc;
    t->ops = &bytelevel_ops;
    t->vocab_size = n_vocab;
    if ((rc = tok_bpe_init(&h->bpe, n_vocab)) != LOOM_OK) goto fail;
    for (int32_t i = 0; i < n_vocab; i++)
        if ((rc = tok_bpe_set_token(&h->bpe, i, tok[i], tok_len[i])) != LOOM_OK) {
            loom_error_context(rc, "%s: token %d", where, i);
            goto fail;
        }
    for (size_t i = 0; i < n_merges; i++) {
        const char *sp = memchr(merge[i], ' ', merge_len[i]);
        if (!sp || sp == merge[i] || sp + 1 == merge[i] + merge_len[i]) {
            rc = loom_error(LOOM_EFORMAT, "%s: merge %zu (\"%.*s\") is not \"left right\"", where, i, (int)LOOM_MIN(merge_len[i], 60), merge[i]);
            goto fail;
        }
        size_t a = (size_t)(sp - merge[i]);
        if ((rc = add_merge(&h->bpe, (int32_t)i, merge[i], a, sp + 1, merge_len[i] - a - 1, "merge")) != LOOM_OK) {
            loom_error_context(rc, "%s", where);
            goto fail;
        }
    }
    tok_bpe_set_byte_level(&h->bpe);
    for (int b = 0; b < 256; b++)
        if (h->bpe.byte_id[b] < 0) {
            rc = loom_error(LOOM_EFORMAT, "%s: byte 0x%02X has no token", where, b);
            goto fail;
        }
    pre_step *p = &h->pre[h->n_pre++];
    const char *pat = llama3_pattern ? tiktoken_pattern : gpt2_pattern;
    p->type = PRE_BYTELEVEL;
    if ((rc = regex_compile(&p->re, pat, strlen(pat), 0, "pre-tokenizer pattern")) != LOOM_OK) goto fail;
    if ((rc = build_decoder(t, h, "")) != LOOM_OK) goto fail;
    *out = t;
    return LOOM_OK;
fail:
    loom_tokenizer_free(t);
    return rc;
}
