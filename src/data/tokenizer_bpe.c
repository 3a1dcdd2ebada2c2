/* BPE engine shared by the file-based tokenizers: hash maps, the word cache, the merge loop and UTF-8
 * helpers. See tokenizer_bpe.h for the model. */
#include <stdlib.h>
#include <string.h>

#include "data/tokenizer_bpe.h"
#include "loom/core.h"

/* ---- small containers ---- */

int tok_ids_push(tok_ids *a, int32_t id) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return loom_error(LOOM_ENOMEM, "out of memory (%zu token ids)", cap);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = id;
    return LOOM_OK;
}

int tok_ids_append(tok_ids *a, const int32_t *ids, size_t n) {
    if (a->n + n > a->cap) {
        size_t cap = a->cap ? a->cap : 256;
        while (cap < a->n + n) cap *= 2;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return loom_error(LOOM_ENOMEM, "out of memory (%zu token ids)", cap);
        a->v = v;
        a->cap = cap;
    }
    memcpy(a->v + a->n, ids, n * sizeof *ids);
    a->n += n;
    return LOOM_OK;
}

/* FNV-1a, finished with a 64-bit mixer so that the low bits index tables well. */
uint64_t tok_hash(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return loom_mix64(h ^ len);
}

static int strmap_grow(tok_strmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    tok_strmap n = {calloc(cap, sizeof(char *)), calloc(cap, sizeof(uint32_t)), calloc(cap, sizeof(int32_t)), cap, 0};
    if (!n.key || !n.klen || !n.val) {
        tok_strmap_free(&n);
        return loom_error(LOOM_ENOMEM, "out of memory (vocabulary map)");
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->key[i]) continue;
        size_t j = tok_hash(m->key[i], m->klen[i]) & (cap - 1);
        while (n.key[j]) j = (j + 1) & (cap - 1);
        n.key[j] = m->key[i];
        n.klen[j] = m->klen[i];
        n.val[j] = m->val[i];
        n.used++;
    }
    tok_strmap_free(m);
    *m = n;
    return LOOM_OK;
}

int tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val) {
    if ((m->used + 1) * 4 > m->cap * 3) {
        int rc = strmap_grow(m);
        if (rc != LOOM_OK) return rc;
    }
    size_t j = tok_hash(key, len) & (m->cap - 1);
    while (m->key[j]) {
        if (m->klen[j] == len && !memcmp(m->key[j], key, len)) return LOOM_OK;
        j = (j + 1) & (m->cap - 1);
    }
    m->key[j] = key;
    m->klen[j] = (uint32_t)len;
    m->val[j] = val;
    m->used++;
    return LOOM_OK;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t j = tok_hash(key, len) & (m->cap - 1);
    while (m->key[j]) {
        if (m->klen[j] == len && !memcmp(m->key[j], key, len)) return m->val[j];
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}

void tok_strmap_free(tok_strmap *m) {
    free(m->key);
    free(m->klen);
    free(m->val);
    memset(m, 0, sizeof *m);
}

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) + 1; }

static int pairmap_grow(tok_pairmap *m) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    tok_pairmap n = {calloc(cap, sizeof(uint64_t)), calloc(cap, sizeof(int32_t)), calloc(cap, sizeof(int32_t)), cap, 0};
    if (!n.key || !n.rank || !n.id) {
        tok_pairmap_free(&n);
        return loom_error(LOOM_ENOMEM, "out of memory (merge table)");
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->key[i]) continue;
        size_t j = loom_mix64(m->key[i]) & (cap - 1);
        while (n.key[j]) j = (j + 1) & (cap - 1);
        n.key[j] = m->key[i];
        n.rank[j] = m->rank[i];
        n.id[j] = m->id[i];
        n.used++;
    }
    tok_pairmap_free(m);
    *m = n;
    return LOOM_OK;
}

int tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id) {
    if ((m->used + 1) * 2 > m->cap) { /* kept at most half full: lookups dominate encoding */
        int rc = pairmap_grow(m);
        if (rc != LOOM_OK) return rc;
    }
    uint64_t k = pair_key(a, b);
    size_t j = loom_mix64(k) & (m->cap - 1);
    while (m->key[j]) {
        if (m->key[j] == k) return LOOM_OK;
        j = (j + 1) & (m->cap - 1);
    }
    m->key[j] = k;
    m->rank[j] = rank;
    m->id[j] = id;
    m->used++;
    return LOOM_OK;
}

int tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id) {
    if (!m->cap) return 0;
    uint64_t k = pair_key(a, b);
    size_t j = loom_mix64(k) & (m->cap - 1);
    while (m->key[j]) {
        if (m->key[j] == k) {
            *rank = m->rank[j];
            *id = m->id[j];
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

void tok_pairmap_free(tok_pairmap *m) {
    free(m->key);
    free(m->rank);
    free(m->id);
    memset(m, 0, sizeof *m);
}

/* ---- word cache ---- */

enum { CACHE_MAX_WORD = 128, CACHE_MAX_SLOTS = 1 << 19 };

static void cache_free(tok_cache *c) {
    free(c->hash);
    free(c->koff);
    free(c->klen);
    free(c->voff);
    free(c->vcnt);
    free(c->kpool);
    free(c->vpool);
    memset(c, 0, sizeof *c);
}

/* Empties the table (keeping its size) when it is full: a bounded cache, not an unbounded one. */
static void cache_clear(tok_cache *c) {
    for (size_t i = 0; i < c->cap; i++) c->koff[i] = UINT32_MAX;
    c->used = c->kused = c->vused = 0;
}

static int cache_alloc_table(tok_cache *c, size_t cap) {
    uint64_t *hash = malloc(cap * sizeof *hash);
    uint32_t *koff = malloc(cap * sizeof *koff), *klen = malloc(cap * sizeof *klen);
    uint32_t *voff = malloc(cap * sizeof *voff), *vcnt = malloc(cap * sizeof *vcnt);
    if (!hash || !koff || !klen || !voff || !vcnt) {
        free(hash), free(koff), free(klen), free(voff), free(vcnt);
        return LOOM_ENOMEM;
    }
    for (size_t i = 0; i < cap; i++) koff[i] = UINT32_MAX;
    for (size_t i = 0; i < c->cap; i++) {
        if (c->koff[i] == UINT32_MAX) continue;
        size_t j = c->hash[i] & (cap - 1);
        while (koff[j] != UINT32_MAX) j = (j + 1) & (cap - 1);
        hash[j] = c->hash[i], koff[j] = c->koff[i], klen[j] = c->klen[i], voff[j] = c->voff[i], vcnt[j] = c->vcnt[i];
    }
    free(c->hash), free(c->koff), free(c->klen), free(c->voff), free(c->vcnt);
    c->hash = hash, c->koff = koff, c->klen = klen, c->voff = voff, c->vcnt = vcnt;
    c->cap = cap;
    return LOOM_OK;
}

static long cache_find(const tok_cache *c, uint64_t h, const char *w, size_t len) {
    if (!c->cap) return -1;
    size_t j = h & (c->cap - 1);
    while (c->koff[j] != UINT32_MAX) {
        if (c->hash[j] == h && c->klen[j] == len && !memcmp(c->kpool + c->koff[j], w, len)) return (long)j;
        j = (j + 1) & (c->cap - 1);
    }
    return -1;
}

/* Best effort: a failed insert (out of memory) only loses the speed-up. */
static void cache_insert(tok_cache *c, uint64_t h, const char *w, size_t len, const int32_t *ids, size_t n) {
    if ((c->used + 1) * 4 > c->cap * 3) {
        if (c->cap >= CACHE_MAX_SLOTS) cache_clear(c);
        else if (cache_alloc_table(c, c->cap ? c->cap * 2 : 4096) != LOOM_OK) return;
    }
    if (c->kused + len > c->kcap) {
        size_t cap = c->kcap ? c->kcap * 2 : 1 << 16;
        while (cap < c->kused + len) cap *= 2;
        if (cap > UINT32_MAX) return;
        char *p = realloc(c->kpool, cap);
        if (!p) return;
        c->kpool = p, c->kcap = cap;
    }
    if (c->vused + n > c->vcap) {
        size_t cap = c->vcap ? c->vcap * 2 : 1 << 14;
        while (cap < c->vused + n) cap *= 2;
        if (cap > UINT32_MAX) return;
        int32_t *p = realloc(c->vpool, cap * sizeof *p);
        if (!p) return;
        c->vpool = p, c->vcap = cap;
    }
    size_t j = h & (c->cap - 1);
    while (c->koff[j] != UINT32_MAX) j = (j + 1) & (c->cap - 1);
    memcpy(c->kpool + c->kused, w, len);
    memcpy(c->vpool + c->vused, ids, n * sizeof *ids);
    c->hash[j] = h, c->koff[j] = (uint32_t)c->kused, c->klen[j] = (uint32_t)len;
    c->voff[j] = (uint32_t)c->vused, c->vcnt[j] = (uint32_t)n;
    c->kused += len, c->vused += n, c->used++;
}

/* ---- model ---- */

int tok_bpe_init(tok_bpe *m, int32_t n_vocab) {
    memset(m, 0, sizeof *m);
    if (n_vocab <= 0 || n_vocab > (1 << 24))
        return loom_error(LOOM_EFORMAT, "vocabulary size %d outside 1..%d", n_vocab, 1 << 24);
    m->n_vocab = n_vocab;
    m->str = calloc((size_t)n_vocab, sizeof *m->str);
    m->str_len = calloc((size_t)n_vocab, sizeof *m->str_len);
    if (!m->str || !m->str_len) return loom_error(LOOM_ENOMEM, "out of memory (vocabulary of %d)", n_vocab);
    m->unk = -1;
    for (int i = 0; i < 256; i++) m->byte_id[i] = -1;
    if (pthread_mutex_init(&m->mu, NULL) != 0) return loom_error(LOOM_ENOMEM, "cannot create a mutex");
    m->mu_init = 1;
    return LOOM_OK;
}

void tok_bpe_free(tok_bpe *m) {
    if (m->str)
        for (int32_t i = 0; i < m->n_vocab; i++) free(m->str[i]);
    free(m->str);
    free(m->str_len);
    tok_strmap_free(&m->vocab);
    tok_pairmap_free(&m->merges);
    cache_free(&m->cache);
    if (m->mu_init) pthread_mutex_destroy(&m->mu);
    memset(m, 0, sizeof *m);
}

int tok_bpe_set_token(tok_bpe *m, int32_t id, const char *s, size_t len) {
    if (id < 0 || id >= m->n_vocab) return loom_error(LOOM_EFORMAT, "token id %d outside 0..%d", id, m->n_vocab - 1);
    if (m->str[id]) return loom_error(LOOM_EFORMAT, "token id %d given twice", id);
    char *c = malloc(len + 1);
    if (!c) return loom_error(LOOM_ENOMEM, "out of memory");
    memcpy(c, s, len);
    c[len] = 0;
    m->str[id] = c;
    m->str_len[id] = (uint32_t)len;
    return tok_strmap_put(&m->vocab, c, len, id);
}

typedef struct {
    int32_t rank, pos;
    int32_t a, b; /* the pair's ids when pushed: a changed id means the entry is stale */
} merge_ent;

static int ent_less(const merge_ent *x, const merge_ent *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(merge_ent *h, size_t *n, merge_ent e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&e, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
}

static merge_ent heap_pop(merge_ent *h, size_t *n) {
    merge_ent top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        const merge_ent *best = &last;
        if (l < *n && ent_less(&h[l], best)) s = l, best = &h[l];
        if (r < *n && ent_less(&h[r], best)) s = r;
        if (s == i) break;
        h[i] = h[s];
        i = s;
    }
    if (*n) h[i] = last;
    return top;
}

static void push_pair(const tok_bpe *m, merge_ent *h, size_t *nh, const int32_t *sym, int32_t l, int32_t r) {
    if (l < 0 || r < 0 || sym[l] < 0 || sym[r] < 0) return;
    merge_ent e = {0, l, sym[l], sym[r]};
    int32_t id;
    if (tok_pairmap_get(&m->merges, sym[l], sym[r], &e.rank, &id)) heap_push(h, nh, e);
}

/* Initial symbols of a word; returns their count or a negative status. sym has room for len. */
static long initial_symbols(tok_bpe *m, const char *w, size_t len, int32_t *sym) {
    long n = 0;
    if (m->byte_level) {
        for (size_t i = 0; i < len; i++) {
            int32_t id = m->byte_id[(unsigned char)w[i]];
            if (id < 0) {
                if (m->unk < 0)
                    return loom_error(LOOM_EFORMAT, "byte 0x%02X has no token in this vocabulary", (unsigned char)w[i]);
                id = m->unk;
            }
            sym[n++] = id;
        }
        return n;
    }
    for (size_t i = 0; i < len;) {
        int k = tok_utf8_char_len((unsigned char)w[i]);
        if (k <= 0 || i + (size_t)k > len) k = 1;
        int32_t id = tok_strmap_get(&m->vocab, w + i, (size_t)k);
        if (id >= 0) {
            sym[n++] = id;
        } else if (m->byte_fallback) {
            int ok = 1;
            for (int j = 0; j < k; j++) ok &= m->byte_id[(unsigned char)w[i + j]] >= 0;
            if (!ok) goto unknown;
            for (int j = 0; j < k; j++) sym[n++] = m->byte_id[(unsigned char)w[i + j]];
        } else {
        unknown:
            if (m->unk < 0) {
                int cl;
                uint32_t cp = tok_utf8_get(w + i, &cl);
                return loom_error(LOOM_EFORMAT, "character U+%04X is not in the vocabulary and the tokenizer has no unknown token", cp);
            }
            if (!(m->fuse_unk && n > 0 && sym[n - 1] == m->unk)) sym[n++] = m->unk;
        }
        i += (size_t)k;
    }
    return n;
}

static int bpe_merge(tok_bpe *m, const char *w, size_t len, tok_ids *out) {
    enum { SMALL = 64 };
    int32_t s_sym[SMALL], s_next[SMALL], s_prev[SMALL];
    merge_ent s_heap[3 * SMALL];
    int32_t *sym = s_sym, *next = s_next, *prev = s_prev;
    merge_ent *heap = s_heap;
    void *block = NULL;
    if (len > SMALL) {
        if (len > (size_t)INT32_MAX / 4) return loom_error(LOOM_ERANGE, "word of %zu bytes is too long", len);
        block = malloc(len * (3 * sizeof(int32_t) + 3 * sizeof(merge_ent)));
        if (!block) return loom_error(LOOM_ENOMEM, "out of memory encoding a word of %zu bytes", len);
        heap = block;
        sym = (int32_t *)(heap + 3 * len);
        next = sym + len;
        prev = next + len;
    }
    long n = initial_symbols(m, w, len, sym);
    int rc = LOOM_OK;
    if (n < 0) {
        rc = (int)n;
        goto done;
    }
    size_t nh = 0;
    for (long i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (long i = 0; i + 1 < n; i++) push_pair(m, heap, &nh, sym, (int32_t)i, (int32_t)i + 1);
    while (nh) {
        merge_ent e = heap_pop(heap, &nh);
        int32_t l = e.pos, r = next[l];
        if (sym[l] != e.a || r < 0 || sym[r] != e.b) continue; /* stale */
        int32_t rank, id;
        if (!tok_pairmap_get(&m->merges, e.a, e.b, &rank, &id)) continue; /* only merges were pushed */
        sym[l] = id;
        sym[r] = -2; /* merged away */
        next[l] = next[r];
        if (next[r] >= 0) prev[next[r]] = l;
        push_pair(m, heap, &nh, sym, prev[l], l);
        push_pair(m, heap, &nh, sym, l, next[l]);
    }
    for (int32_t i = n ? 0 : -1; i >= 0 && rc == LOOM_OK; i = next[i]) rc = tok_ids_push(out, sym[i]);
done:
    free(block);
    return rc;
}

void tok_bpe_find_barriers(tok_bpe *m) {
    int seen[128] = {0};
    for (int32_t id = 0; id < m->n_vocab; id++) {
        if (!m->str[id] || m->str_len[id] < 2) continue;
        if (tok_strmap_get(&m->vocab, m->str[id], m->str_len[id]) != id) continue; /* not mergeable */
        for (uint32_t i = 0; i < m->str_len[id]; i++) {
            unsigned char c = (unsigned char)m->str[id][i];
            if (c < 128) seen[c] = 1;
        }
    }
    m->has_barriers = 0;
    for (int c = 0; c < 128; c++) {
        char ch = (char)c;
        /* a barrier must encode on its own to a fixed token (unknown ones could fuse across it) */
        int alone = tok_strmap_get(&m->vocab, &ch, 1) >= 0 || (m->byte_fallback && m->byte_id[c] >= 0);
        m->barrier[c] = !m->byte_level && !seen[c] && alone;
        m->has_barriers |= m->barrier[c];
    }
}

static int word_cached(tok_bpe *m, const char *w, size_t len, tok_ids *out) {
    int cacheable = len <= CACHE_MAX_WORD;
    uint64_t h = 0;
    if (cacheable) {
        h = tok_hash(w, len);
        pthread_mutex_lock(&m->mu);
        long j = cache_find(&m->cache, h, w, len);
        int rc = LOOM_OK;
        if (j >= 0) rc = tok_ids_append(out, m->cache.vpool + m->cache.voff[j], m->cache.vcnt[j]);
        pthread_mutex_unlock(&m->mu);
        if (j >= 0) return rc;
    }
    size_t start = out->n;
    int rc = bpe_merge(m, w, len, out);
    if (rc != LOOM_OK || !cacheable) return rc;
    pthread_mutex_lock(&m->mu);
    if (cache_find(&m->cache, h, w, len) < 0) cache_insert(&m->cache, h, w, len, out->v + start, out->n - start);
    pthread_mutex_unlock(&m->mu);
    return LOOM_OK;
}

void tok_bpe_set_byte_level(tok_bpe *m) {
    tok_byte_to_unicode(m->b2u);
    m->byte_level = 1;
    for (int b = 0; b < 256; b++) {
        char u[4];
        int n = tok_utf8_put(m->b2u[b], u);
        m->byte_id[b] = tok_strmap_get(&m->vocab, u, (size_t)n);
    }
}

/* Id of a whole word when the vocabulary has it, else -1 (byte-level words are looked up in their
 * bytes_to_unicode spelling). */
static int32_t whole_word(const tok_bpe *m, const char *w, size_t len) {
    if (!m->byte_level) return tok_strmap_get(&m->vocab, w, len);
    char stack[512];
    if (len > sizeof stack / 2) return -1; /* longer than any token */
    size_t k = 0;
    for (size_t i = 0; i < len; i++) k += (size_t)tok_utf8_put(m->b2u[(unsigned char)w[i]], stack + k);
    return tok_strmap_get(&m->vocab, stack, k);
}

int tok_bpe_word(tok_bpe *m, const char *w, size_t len, tok_ids *out) {
    if (len == 0) return LOOM_OK;
    if (m->ignore_merges) {
        int32_t id = whole_word(m, w, len);
        if (id >= 0) return tok_ids_push(out, id);
    }
    if (!m->has_barriers) return word_cached(m, w, len, out);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)w[i];
        if (c >= 128 || !m->barrier[c]) continue;
        int rc = LOOM_OK;
        if (i > start) rc = word_cached(m, w + start, i - start, out);
        if (rc == LOOM_OK) rc = word_cached(m, w + i, 1, out);
        if (rc != LOOM_OK) return rc;
        start = i + 1;
    }
    return start < len ? word_cached(m, w + start, len - start, out) : LOOM_OK;
}

/* ---- UTF-8 ---- */

size_t tok_utf8_valid(const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        /* ASCII runs, 8 bytes at a time */
        while (i + 8 <= len) {
            uint64_t x;
            memcpy(&x, s + i, 8);
            if (x & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= len) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) k = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            k = 3;
            if (c == 0xE0) lo = 0xA0;      /* overlong */
            else if (c == 0xED) hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 4;
            if (c == 0xF0) lo = 0x90;      /* overlong */
            else if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
        } else
            return i;
        if (i + k > len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t j = 2; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return i;
        i += k;
    }
    return len;
}

int tok_utf8_char_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xF0) return 4;
    if (c >= 0xE0) return 3;
    if (c >= 0xC0) return 2;
    return 1;
}

uint32_t tok_utf8_get(const char *str, int *len) {
    const unsigned char *s = (const unsigned char *)str;
    int k = tok_utf8_char_len(s[0]);
    *len = k;
    if (k == 1) return s[0];
    uint32_t cp = s[0] & (0x7F >> k);
    for (int i = 1; i < k; i++) cp = cp << 6 | (s[i] & 0x3F);
    return cp;
}

int tok_utf8_put(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, 0x7F-0xA0,
 * 0xAD) take the code points from U+0100 upward in byte order, so every byte has a visible,
 * non-space character. */
void tok_byte_to_unicode(uint32_t cp[256]) {
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp[b] = printable ? (uint32_t)b : next++;
    }
}
