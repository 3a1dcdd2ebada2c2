/* GGUF v3 container: key/values, tensor infos and aligned tensor data (see loom/gguf.h). */
#include "loom/gguf.h"

#include "loom/core.h"
#include "loom/half.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "loom's GGUF I/O assumes a little-endian host"
#endif

/* ---------------------------------------------------------------- tensor types */

typedef struct {
    uint16_t d;                 /* fp16 scale */
    int8_t qs[LOOM_GGML_QK8_0]; /* quants */
} q8_0_block;                   /* 34 bytes, no padding: read and written with memcpy */

const char *loom_ggml_type_name(loom_ggml_type t) {
    switch (t) {
    case LOOM_GGML_F32: return "f32";
    case LOOM_GGML_F16: return "f16";
    case LOOM_GGML_BF16: return "bf16";
    case LOOM_GGML_Q8_0: return "q8_0";
    }
    return "?";
}

/* Names of the ggml types loom does not read, for messages. */
static const char *other_type_name(uint32_t t) {
    static const char *const names[] = {
        [2] = "q4_0",  [3] = "q4_1",  [6] = "q5_0",  [7] = "q5_1",   [9] = "q8_1",    [10] = "q2_K", [11] = "q3_K",
        [12] = "q4_K", [13] = "q5_K", [14] = "q6_K", [15] = "q8_K",  [16] = "iq2_xxs", [17] = "iq2_xs",
        [18] = "iq3_xxs", [19] = "iq1_s", [20] = "iq4_nl", [21] = "iq3_s", [22] = "iq2_s", [23] = "iq4_xs",
        [24] = "i8", [25] = "i16", [26] = "i32", [27] = "i64", [28] = "f64", [29] = "iq1_m", [34] = "tq1_0",
        [35] = "tq2_0", [39] = "mxfp4",
    };
    return t < sizeof names / sizeof names[0] && names[t] ? names[t] : "unknown";
}

int loom_ggml_type_parse(const char *name, loom_ggml_type *t) {
    static const loom_ggml_type all[] = {LOOM_GGML_F32, LOOM_GGML_F16, LOOM_GGML_BF16, LOOM_GGML_Q8_0};
    for (size_t i = 0; name && i < sizeof all / sizeof all[0]; i++)
        if (!strcasecmp(name, loom_ggml_type_name(all[i]))) {
            *t = all[i];
            return LOOM_OK;
        }
    return loom_error(LOOM_EUNSUPPORTED, "unknown GGUF tensor type '%s' (f32, f16, bf16 or q8_0)", name ? name : "");
}

size_t loom_ggml_block_size(loom_ggml_type t) {
    switch (t) {
    case LOOM_GGML_F32:
    case LOOM_GGML_F16:
    case LOOM_GGML_BF16: return 1;
    case LOOM_GGML_Q8_0: return LOOM_GGML_QK8_0;
    }
    return 0;
}

size_t loom_ggml_type_size(loom_ggml_type t) {
    switch (t) {
    case LOOM_GGML_F32: return 4;
    case LOOM_GGML_F16:
    case LOOM_GGML_BF16: return 2;
    case LOOM_GGML_Q8_0: return sizeof(q8_0_block);
    }
    return 0;
}

size_t loom_ggml_nbytes(loom_ggml_type t, size_t n) {
    size_t bs = loom_ggml_block_size(t);
    if (!bs || n % bs) return 0;
    return n / bs * loom_ggml_type_size(t);
}

static void q8_0_quantize(void *dst, const float *x, size_t n) {
    uint8_t *out = dst;
    for (size_t b = 0; b < n / LOOM_GGML_QK8_0; b++, x += LOOM_GGML_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < LOOM_GGML_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        q8_0_block blk;
        blk.d = loom_f32_to_f16(d);
        for (int j = 0; j < LOOM_GGML_QK8_0; j++) blk.qs[j] = (int8_t)roundf(x[j] * id);
        memcpy(out + b * sizeof blk, &blk, sizeof blk);
    }
}

static void q8_0_dequantize(float *y, const void *src, size_t n) {
    const uint8_t *in = src;
    for (size_t b = 0; b < n / LOOM_GGML_QK8_0; b++, y += LOOM_GGML_QK8_0) {
        q8_0_block blk;
        memcpy(&blk, in + b * sizeof blk, sizeof blk);
        const float d = loom_f16_to_f32(blk.d);
        for (int j = 0; j < LOOM_GGML_QK8_0; j++) y[j] = (float)blk.qs[j] * d;
    }
}

int loom_ggml_from_f32(loom_ggml_type t, void *dst, const float *src, size_t n) {
    if (!loom_ggml_block_size(t)) return loom_error(LOOM_EINVAL, "ggml type %d is not one loom writes", (int)t);
    if (n % loom_ggml_block_size(t))
        return loom_error(LOOM_EINVAL, "%zu values do not fill whole %s blocks of %zu", n, loom_ggml_type_name(t),
                          loom_ggml_block_size(t));
    switch (t) {
    case LOOM_GGML_F32: memcpy(dst, src, n * 4); break;
    case LOOM_GGML_F16:
        if ((uintptr_t)dst % 2 == 0) {
            loom_f32_to_f16_n(dst, src, n);
        } else {
            for (size_t i = 0; i < n; i++) {
                uint16_t h = loom_f32_to_f16(src[i]);
                memcpy((uint8_t *)dst + 2 * i, &h, 2);
            }
        }
        break;
    case LOOM_GGML_BF16:
        if ((uintptr_t)dst % 2 == 0) {
            loom_f32_to_bf16_n(dst, src, n);
        } else {
            for (size_t i = 0; i < n; i++) {
                uint16_t h = loom_f32_to_bf16(src[i]);
                memcpy((uint8_t *)dst + 2 * i, &h, 2);
            }
        }
        break;
    case LOOM_GGML_Q8_0: q8_0_quantize(dst, src, n); break;
    }
    return LOOM_OK;
}

int loom_ggml_to_f32(loom_ggml_type t, float *dst, const void *src, size_t n) {
    if (!loom_ggml_block_size(t)) return loom_error(LOOM_EINVAL, "ggml type %d is not one loom reads", (int)t);
    if (n % loom_ggml_block_size(t))
        return loom_error(LOOM_EINVAL, "%zu values do not fill whole %s blocks of %zu", n, loom_ggml_type_name(t),
                          loom_ggml_block_size(t));
    const uint8_t *s = src;
    switch (t) {
    case LOOM_GGML_F32: memcpy(dst, src, n * 4); break;
    case LOOM_GGML_F16:
    case LOOM_GGML_BF16:
        if ((uintptr_t)src % 2 == 0) {
            if (t == LOOM_GGML_F16) loom_f16_to_f32_n(dst, src, n);
            else loom_bf16_to_f32_n(dst, src, n);
        } else {
            for (size_t i = 0; i < n; i++) {
                uint16_t h;
                memcpy(&h, s + 2 * i, 2);
                dst[i] = t == LOOM_GGML_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
            }
        }
        break;
    case LOOM_GGML_Q8_0: q8_0_dequantize(dst, src, n); break;
    }
    return LOOM_OK;
}

static int type_known(uint32_t t) {
    return t == LOOM_GGML_F32 || t == LOOM_GGML_F16 || t == LOOM_GGML_BF16 || t == LOOM_GGML_Q8_0;
}

/* Bytes of one value of a fixed-size GGUF type; 0 for STRING, ARRAY and unknown types. */
static size_t vtype_size(uint32_t t) {
    switch (t) {
    case LOOM_GGUF_UINT8:
    case LOOM_GGUF_INT8:
    case LOOM_GGUF_BOOL: return 1;
    case LOOM_GGUF_UINT16:
    case LOOM_GGUF_INT16: return 2;
    case LOOM_GGUF_UINT32:
    case LOOM_GGUF_INT32:
    case LOOM_GGUF_FLOAT32: return 4;
    case LOOM_GGUF_UINT64:
    case LOOM_GGUF_INT64:
    case LOOM_GGUF_FLOAT64: return 8;
    }
    return 0;
}

/* ---------------------------------------------------------------- name sets
 * Open addressing over string indices, at most half full: duplicate checks and lookups by name. */

typedef struct {
    int32_t *slot; /* index + 1; 0 = empty */
    size_t mask;
} name_set;

static uint64_t fnv(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static int set_init(name_set *s, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n + 2) cap *= 2;
    s->slot = loom_calloc(cap, sizeof *s->slot);
    s->mask = cap - 1;
    return s->slot ? LOOM_OK : LOOM_ENOMEM;
}

/* Inserts index i named names[i]; returns the index already holding that name, or -1. */
static int32_t set_insert(name_set *s, const char *const *names, size_t stride, int32_t i) {
#define NAME_AT(k) (*(const char *const *)((const char *)names + (size_t)(k) * stride))
    const char *name = NAME_AT(i);
    for (size_t h = fnv(name) & s->mask;; h = (h + 1) & s->mask) {
        if (!s->slot[h]) {
            s->slot[h] = i + 1;
            return -1;
        }
        if (!strcmp(NAME_AT(s->slot[h] - 1), name)) return s->slot[h] - 1;
    }
}

static int32_t set_find(const name_set *s, const char *const *names, size_t stride, const char *name) {
    if (!s->slot) return -1;
    for (size_t h = fnv(name) & s->mask;; h = (h + 1) & s->mask) {
        if (!s->slot[h]) return -1;
        if (!strcmp(NAME_AT(s->slot[h] - 1), name)) return s->slot[h] - 1;
    }
#undef NAME_AT
}

/* ---------------------------------------------------------------- reading */

typedef struct {
    const uint8_t *raw; /* fixed-size values (scalar or array) in the mapping */
    size_t str0;        /* STRING values: index of the first in the string table */
} kv_val;

struct loom_gguf {
    char *path;
    const uint8_t *base;
    size_t size;
    int mapped;
    uint32_t version;
    size_t alignment;
    size_t n_kv, n_t;
    loom_gguf_kv *kv;
    kv_val *val;
    loom_gguf_tensor *t;
    name_set kset, tset;
    /* every key, string value and tensor name, NUL-terminated, in one pool */
    char *pool;
    size_t pool_used, pool_cap;
    size_t n_str;
    size_t *str_off, *str_len; /* string values: offset into pool, length */
};

typedef struct {
    const uint8_t *p;
    size_t left;
    const loom_gguf *g;
} cursor;

static int need(cursor *c, size_t n, const char *what) {
    if (c->left < n)
        return loom_error(LOOM_EFORMAT, "%s: file ends inside %s (at byte %zu of %zu)", c->g->path, what,
                          c->g->size - c->left, c->g->size);
    return LOOM_OK;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what) {
    int rc = need(c, 4, what);
    if (rc) return rc;
    memcpy(v, c->p, 4);
    c->p += 4;
    c->left -= 4;
    return LOOM_OK;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what) {
    int rc = need(c, 8, what);
    if (rc) return rc;
    memcpy(v, c->p, 8);
    c->p += 8;
    c->left -= 8;
    return LOOM_OK;
}

/* Copies bytes into the pool with a NUL after them; returns the pool offset in *off. */
static int pool_add(loom_gguf *g, const uint8_t *s, size_t n, size_t *off) {
    if (g->pool_used + n + 1 > g->pool_cap) {
        size_t cap = g->pool_cap ? g->pool_cap : 4096;
        while (cap < g->pool_used + n + 1) cap *= 2;
        char *p = realloc(g->pool, cap);
        if (!p) return loom_error(LOOM_ENOMEM, "%s: out of memory reading strings", g->path);
        g->pool = p;
        g->pool_cap = cap;
    }
    memcpy(g->pool + g->pool_used, s, n);
    g->pool[g->pool_used + n] = 0;
    *off = g->pool_used;
    g->pool_used += n + 1;
    return LOOM_OK;
}

/* A string of at most max bytes into the pool. */
static int rd_str(cursor *c, uint64_t max, size_t *off, size_t *len, const char *what) {
    uint64_t n;
    int rc = rd_u64(c, &n, what);
    if (rc) return rc;
    if (n > max) return loom_error(LOOM_EFORMAT, "%s: %s is %llu bytes long (limit %llu)", c->g->path, what, (unsigned long long)n, (unsigned long long)max);
    if ((rc = need(c, (size_t)n, what))) return rc;
    if ((rc = pool_add((loom_gguf *)c->g, c->p, (size_t)n, off))) return rc;
    c->p += n;
    c->left -= (size_t)n;
    *len = (size_t)n;
    return LOOM_OK;
}

static int str_push(loom_gguf *g, size_t off, size_t len, size_t *cap) {
    if (g->n_str == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        size_t *a = realloc(g->str_off, nc * sizeof *a), *b = a ? realloc(g->str_len, nc * sizeof *b) : NULL;
        if (a) g->str_off = a;
        if (b) g->str_len = b;
        if (!a || !b) return loom_error(LOOM_ENOMEM, "%s: out of memory reading strings", g->path);
        *cap = nc;
    }
    g->str_off[g->n_str] = off;
    g->str_len[g->n_str++] = len;
    return LOOM_OK;
}

static int cmp_pair(const void *a, const void *b) {
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] < y[1] ? -1 : x[1] > y[1];
}

static int parse(loom_gguf *g) {
    cursor c = {g->base, g->size, g};
    uint32_t magic, version;
    uint64_t n_t, n_kv;
    int rc;
    if ((rc = rd_u32(&c, &magic, "the header"))) return rc;
    if (magic != LOOM_GGUF_MAGIC) return loom_error(LOOM_EFORMAT, "%s is not a GGUF file (no GGUF magic)", g->path);
    if ((rc = rd_u32(&c, &version, "the header"))) return rc;
    if (version == 1) return loom_error(LOOM_EUNSUPPORTED, "%s: GGUF version 1 is not supported (2 and 3 are)", g->path);
    if (version != 2 && version != 3)
        return loom_error(LOOM_EUNSUPPORTED, "%s: GGUF version %u is not supported (2 and 3 are; a big-endian file reads as a huge version)",
                          g->path, version);
    g->version = version;
    if ((rc = rd_u64(&c, &n_t, "the header")) || (rc = rd_u64(&c, &n_kv, "the header"))) return rc;
    if (n_t > LOOM_GGUF_MAX_TENSORS)
        return loom_error(LOOM_EFORMAT, "%s: tensor count %llu exceeds the limit %u", g->path, (unsigned long long)n_t, LOOM_GGUF_MAX_TENSORS);
    if (n_kv > LOOM_GGUF_MAX_KV)
        return loom_error(LOOM_EFORMAT, "%s: key/value count %llu exceeds the limit %u", g->path, (unsigned long long)n_kv, LOOM_GGUF_MAX_KV);
    /* each key/value needs at least 12 bytes and each tensor info 24: refuse counts the file cannot hold
     * before allocating for them */
    if (n_kv * 12 + n_t * 24 > c.left)
        return loom_error(LOOM_EFORMAT, "%s: %llu key/values and %llu tensors cannot fit in %zu bytes", g->path,
                          (unsigned long long)n_kv, (unsigned long long)n_t, g->size);
    g->n_kv = (size_t)n_kv;
    g->n_t = (size_t)n_t;
    g->kv = loom_calloc(g->n_kv + 1, sizeof *g->kv);
    g->val = loom_calloc(g->n_kv + 1, sizeof *g->val);
    g->t = loom_calloc(g->n_t + 1, sizeof *g->t);
    size_t *koff = loom_calloc(g->n_kv + 1, sizeof *koff), *toff = loom_calloc(g->n_t + 1, sizeof *toff);
    size_t str_cap = 0;
    if (!g->kv || !g->val || !g->t || !koff || !toff) {
        rc = loom_error(LOOM_ENOMEM, "%s: out of memory", g->path);
        goto done;
    }
    g->alignment = LOOM_GGUF_DEFAULT_ALIGNMENT;
    for (size_t i = 0; i < g->n_kv; i++) {
        loom_gguf_kv *kv = &g->kv[i];
        char what[64];
        snprintf(what, sizeof what, "key %zu", i);
        if ((rc = rd_str(&c, LOOM_GGUF_MAX_KEY, &koff[i], &kv->key_len, what))) goto done;
        if (memchr(g->pool + koff[i], 0, kv->key_len) || kv->key_len == 0) {
            rc = loom_error(LOOM_EFORMAT, "%s: key %zu is empty or holds a NUL byte", g->path, i);
            goto done;
        }
        /* the pool may move while a string value is read: the key is re-derived for each message */
#define key (g->pool + koff[i])
        uint32_t type;
        if ((rc = rd_u32(&c, &type, key))) goto done;
        kv->type = (loom_gguf_vtype)type;
        uint64_t n = 1;
        uint32_t et = type;
        if (type == LOOM_GGUF_ARRAY) {
            if ((rc = rd_u32(&c, &et, key)) || (rc = rd_u64(&c, &n, key))) goto done;
            if (et == LOOM_GGUF_ARRAY) {
                rc = loom_error(LOOM_EUNSUPPORTED, "%s: key %s is an array of arrays, which loom does not read", g->path, key);
                goto done;
            }
            if (n > LOOM_GGUF_MAX_ARRAY) {
                rc = loom_error(LOOM_EFORMAT, "%s: key %s has %llu elements (limit %u)", g->path, key, (unsigned long long)n,
                                LOOM_GGUF_MAX_ARRAY);
                goto done;
            }
            kv->arr_type = (loom_gguf_vtype)et;
        } else {
            kv->arr_type = (loom_gguf_vtype)type;
        }
        kv->n = (size_t)n;
        if (et == LOOM_GGUF_STRING) {
            g->val[i].str0 = g->n_str;
            for (uint64_t k = 0; k < n; k++) {
                size_t off, len;
                if ((rc = rd_str(&c, LOOM_GGUF_MAX_STRING, &off, &len, key)) || (rc = str_push(g, off, len, &str_cap))) goto done;
            }
        } else {
            size_t es = vtype_size(et);
            if (!es) {
                rc = loom_error(LOOM_EFORMAT, "%s: key %s has unknown value type %u", g->path, key, et);
                goto done;
            }
            if ((rc = need(&c, (size_t)n * es, key))) goto done;
            g->val[i].raw = c.p;
            if (et == LOOM_GGUF_BOOL)
                for (size_t k = 0; k < n; k++)
                    if (c.p[k] > 1) {
                        rc = loom_error(LOOM_EFORMAT, "%s: key %s holds a bool that is neither 0 nor 1", g->path, key);
                        goto done;
                    }
            c.p += (size_t)n * es;
            c.left -= (size_t)n * es;
        }
#undef key
    }
    for (size_t i = 0; i < g->n_t; i++) {
        loom_gguf_tensor *t = &g->t[i];
        char what[64];
        snprintf(what, sizeof what, "tensor info %zu", i);
        size_t len;
        if ((rc = rd_str(&c, LOOM_GGUF_MAX_NAME - 1, &toff[i], &len, what))) goto done;
        if (memchr(g->pool + toff[i], 0, len) || len == 0) {
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %zu's name is empty or holds a NUL byte", g->path, i);
            goto done;
        }
        const char *name = g->pool + toff[i];
        uint32_t nd, type;
        if ((rc = rd_u32(&c, &nd, name))) goto done;
        if (nd < 1 || nd > LOOM_GGUF_MAX_DIMS) {
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %s has %u dimensions (1 to %d)", g->path, name, nd, LOOM_GGUF_MAX_DIMS);
            goto done;
        }
        t->ndim = (int)nd;
        uint64_t numel = 1;
        for (int d = 0; d < LOOM_GGUF_MAX_DIMS; d++) {
            uint64_t ne = 1;
            if (d < (int)nd && (rc = rd_u64(&c, &ne, name))) goto done;
            /* each dimension below 2^40 and the product below 2^50 elements: no overflow anywhere below */
            if (ne >= (1ull << 40) || (ne && numel > (1ull << 50) / ne)) {
                rc = loom_error(LOOM_EFORMAT, "%s: tensor %s has an impossible dimension %llu", g->path, name, (unsigned long long)ne);
                goto done;
            }
            t->ne[d] = (int64_t)ne;
            numel *= ne;
        }
        if ((rc = rd_u32(&c, &type, name)) || (rc = rd_u64(&c, &t->offset, name))) goto done;
        if (!type_known(type)) {
            rc = loom_error(LOOM_EUNSUPPORTED, "%s: tensor %s has ggml type %u (%s); loom reads f32, f16, bf16 and q8_0", g->path,
                            name, type, other_type_name(type));
            goto done;
        }
        t->type = (loom_ggml_type)type;
        if (t->ne[0] % (int64_t)loom_ggml_block_size(t->type)) {
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %s: row length %lld is not a multiple of the %s block (%zu)", g->path, name,
                            (long long)t->ne[0], loom_ggml_type_name(t->type), loom_ggml_block_size(t->type));
            goto done;
        }
        t->numel = (size_t)numel;
        t->nbytes = loom_ggml_nbytes(t->type, t->numel);
    }
    /* general.alignment, if present, must be a u32 power of two */
    for (size_t i = 0; i < g->n_kv; i++) {
        if (strcmp(g->pool + koff[i], "general.alignment")) continue;
        uint32_t a = 0;
        if (g->kv[i].type == LOOM_GGUF_UINT32) memcpy(&a, g->val[i].raw, 4);
        if (g->kv[i].type != LOOM_GGUF_UINT32 || a == 0 || (a & (a - 1)) || a > LOOM_GGUF_MAX_ALIGNMENT) {
            rc = loom_error(LOOM_EFORMAT, "%s: general.alignment must be a u32 power of two up to %u", g->path, LOOM_GGUF_MAX_ALIGNMENT);
            goto done;
        }
        g->alignment = a;
    }
    /* pointers into the pool are fixed now that it no longer grows */
    for (size_t i = 0; i < g->n_kv; i++) g->kv[i].key = g->pool + koff[i];
    for (size_t i = 0; i < g->n_t; i++) g->t[i].name = g->pool + toff[i];
    size_t pos = g->size - c.left;
    size_t data0 = (pos + g->alignment - 1) / g->alignment * g->alignment;
    size_t data_len = data0 <= g->size ? g->size - data0 : 0;
    if (g->n_t && data0 > g->size) {
        rc = loom_error(LOOM_EFORMAT, "%s: the file ends before its data section", g->path);
        goto done;
    }
    for (size_t i = 0; i < g->n_t; i++) {
        loom_gguf_tensor *t = &g->t[i];
        if (t->offset % g->alignment) {
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %s's offset %llu is not a multiple of the alignment %zu", g->path, t->name,
                            (unsigned long long)t->offset, g->alignment);
            goto done;
        }
        if (t->offset > data_len || t->nbytes > data_len - t->offset) {
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %s's data [%llu, +%zu) lies outside the data section (%zu bytes)", g->path,
                            t->name, (unsigned long long)t->offset, t->nbytes, data_len);
            goto done;
        }
        t->data = g->base + data0 + t->offset;
    }
    if ((rc = set_init(&g->kset, g->n_kv)) || (rc = set_init(&g->tset, g->n_t))) {
        rc = loom_error(LOOM_ENOMEM, "%s: out of memory", g->path);
        goto done;
    }
    for (size_t i = 0; i < g->n_kv; i++)
        if (set_insert(&g->kset, &g->kv[0].key, sizeof g->kv[0], (int32_t)i) >= 0) {
            rc = loom_error(LOOM_EFORMAT, "%s: key %s appears twice", g->path, g->kv[i].key);
            goto done;
        }
    for (size_t i = 0; i < g->n_t; i++)
        if (set_insert(&g->tset, &g->t[0].name, sizeof g->t[0], (int32_t)i) >= 0) {
            rc = loom_error(LOOM_EFORMAT, "%s: tensor %s appears twice", g->path, g->t[i].name);
            goto done;
        }
    /* no two tensors share bytes: sort (offset, index) pairs and compare neighbours */
    if (g->n_t > 1) {
        uint64_t (*ord)[2] = loom_alloc(g->n_t * sizeof *ord);
        if (!ord) {
            rc = loom_error(LOOM_ENOMEM, "%s: out of memory", g->path);
            goto done;
        }
        for (size_t i = 0; i < g->n_t; i++) {
            ord[i][0] = g->t[i].offset;
            ord[i][1] = i;
        }
        qsort(ord, g->n_t, sizeof *ord, cmp_pair);
        for (size_t i = 0; i + 1 < g->n_t && rc == LOOM_OK; i++) {
            const loom_gguf_tensor *a = &g->t[ord[i][1]], *b = &g->t[ord[i + 1][1]];
            if (a->offset + a->nbytes > b->offset && a->nbytes && b->nbytes)
                rc = loom_error(LOOM_EFORMAT, "%s: tensors %s and %s overlap", g->path, a->name, b->name);
        }
        loom_free(ord);
    }
done:
    loom_free(koff);
    loom_free(toff);
    return rc;
}

static loom_gguf *gguf_new(const char *name) {
    loom_gguf *g = loom_calloc(1, sizeof *g);
    if (!g) return NULL;
    g->path = loom_strdup(name ? name : "<memory>");
    if (!g->path) {
        loom_free(g);
        return NULL;
    }
    return g;
}

void loom_gguf_close(loom_gguf *g) {
    if (!g) return;
    if (g->mapped) loom_unmap_file(g->base, g->size);
    loom_free(g->kv);
    loom_free(g->val);
    loom_free(g->t);
    loom_free(g->kset.slot);
    loom_free(g->tset.slot);
    free(g->pool);
    free(g->str_off);
    free(g->str_len);
    loom_free(g->path);
    loom_free(g);
}

int loom_gguf_open_memory(loom_gguf **out, const void *data, size_t len, const char *name) {
    *out = NULL;
    if (!data && len) return loom_error(LOOM_EINVAL, "loom_gguf_open_memory: NULL data");
    loom_gguf *g = gguf_new(name);
    if (!g) return loom_error(LOOM_ENOMEM, "out of memory opening %s", name ? name : "<memory>");
    g->base = data;
    g->size = len;
    int rc = parse(g);
    if (rc != LOOM_OK) {
        loom_gguf_close(g);
        return rc;
    }
    *out = g;
    return LOOM_OK;
}

int loom_gguf_open(loom_gguf **out, const char *path) {
    *out = NULL;
    const uint8_t *base;
    size_t size;
    int rc = loom_map_file(path, &base, &size);
    if (rc != LOOM_OK) return rc;
    loom_gguf *g = gguf_new(path);
    if (!g) {
        loom_unmap_file(base, size);
        return loom_error(LOOM_ENOMEM, "out of memory opening %s", path);
    }
    g->base = base;
    g->size = size;
    g->mapped = 1;
    rc = parse(g);
    if (rc != LOOM_OK) {
        loom_gguf_close(g);
        return rc;
    }
    *out = g;
    return LOOM_OK;
}

const char *loom_gguf_path(const loom_gguf *g) { return g->path; }
uint32_t loom_gguf_version(const loom_gguf *g) { return g->version; }
size_t loom_gguf_alignment(const loom_gguf *g) { return g->alignment; }
size_t loom_gguf_kv_count(const loom_gguf *g) { return g->n_kv; }
const loom_gguf_kv *loom_gguf_kv_at(const loom_gguf *g, size_t i) { return i < g->n_kv ? &g->kv[i] : NULL; }

int loom_gguf_find_kv(const loom_gguf *g, const char *key) {
    return key ? (int)set_find(&g->kset, &g->kv[0].key, sizeof g->kv[0], key) : -1;
}

size_t loom_gguf_tensor_count(const loom_gguf *g) { return g->n_t; }
const loom_gguf_tensor *loom_gguf_tensor_at(const loom_gguf *g, size_t i) { return i < g->n_t ? &g->t[i] : NULL; }

const loom_gguf_tensor *loom_gguf_find_tensor(const loom_gguf *g, const char *name) {
    int32_t i = name ? set_find(&g->tset, &g->t[0].name, sizeof g->t[0], name) : -1;
    return i >= 0 ? &g->t[i] : NULL;
}

int loom_gguf_tensor_to_f32(const loom_gguf_tensor *t, float *dst, size_t n) {
    if (n != t->numel) return loom_error(LOOM_EINVAL, "tensor %s has %zu values, not %zu", t->name, t->numel, n);
    return loom_ggml_to_f32(t->type, dst, t->data, n);
}

static int is_int_type(loom_gguf_vtype t) {
    return t == LOOM_GGUF_UINT8 || t == LOOM_GGUF_INT8 || t == LOOM_GGUF_UINT16 || t == LOOM_GGUF_INT16 ||
           t == LOOM_GGUF_UINT32 || t == LOOM_GGUF_INT32 || t == LOOM_GGUF_UINT64 || t == LOOM_GGUF_INT64;
}

/* Integer element i of raw values of type t; *big set when a UINT64 does not fit an int64. */
static int64_t int_at(const uint8_t *raw, loom_gguf_vtype t, size_t i, int *big) {
    *big = 0;
    switch (t) {
    case LOOM_GGUF_UINT8:
    case LOOM_GGUF_BOOL: return raw[i];
    case LOOM_GGUF_INT8: return (int8_t)raw[i];
    case LOOM_GGUF_UINT16: {
        uint16_t v;
        memcpy(&v, raw + 2 * i, 2);
        return v;
    }
    case LOOM_GGUF_INT16: {
        int16_t v;
        memcpy(&v, raw + 2 * i, 2);
        return v;
    }
    case LOOM_GGUF_UINT32: {
        uint32_t v;
        memcpy(&v, raw + 4 * i, 4);
        return v;
    }
    case LOOM_GGUF_INT32: {
        int32_t v;
        memcpy(&v, raw + 4 * i, 4);
        return v;
    }
    case LOOM_GGUF_UINT64: {
        uint64_t v;
        memcpy(&v, raw + 8 * i, 8);
        if (v > INT64_MAX) *big = 1;
        return (int64_t)(v & INT64_MAX);
    }
    case LOOM_GGUF_INT64: {
        int64_t v;
        memcpy(&v, raw + 8 * i, 8);
        return v;
    }
    default: return 0;
    }
}

static const loom_gguf_kv *scalar(const loom_gguf *g, const char *key, int *idx) {
    *idx = loom_gguf_find_kv(g, key);
    return *idx >= 0 ? &g->kv[*idx] : NULL;
}

static int absent(const loom_gguf *g, const char *key) {
    return loom_error(LOOM_ENOTFOUND, "%s: no key %s", g->path, key ? key : "(null)");
}

int loom_gguf_get_i64(const loom_gguf *g, const char *key, int64_t *v) {
    int i;
    const loom_gguf_kv *kv = scalar(g, key, &i);
    if (!kv) return absent(g, key);
    int big;
    if (!is_int_type(kv->type)) return loom_error(LOOM_EFORMAT, "%s: key %s is not an integer", g->path, key);
    int64_t x = int_at(g->val[i].raw, kv->type, 0, &big);
    if (big) return loom_error(LOOM_EFORMAT, "%s: key %s's value does not fit 64 signed bits", g->path, key);
    *v = x;
    return LOOM_OK;
}

int loom_gguf_get_u32(const loom_gguf *g, const char *key, uint32_t *v) {
    int64_t x;
    int rc = loom_gguf_get_i64(g, key, &x);
    if (rc) return rc;
    if (x < 0 || x > UINT32_MAX) return loom_error(LOOM_EFORMAT, "%s: key %s = %lld does not fit 32 unsigned bits", g->path, key, (long long)x);
    *v = (uint32_t)x;
    return LOOM_OK;
}

int loom_gguf_get_f32(const loom_gguf *g, const char *key, float *v) {
    int i;
    const loom_gguf_kv *kv = scalar(g, key, &i);
    if (!kv) return absent(g, key);
    if (kv->type == LOOM_GGUF_FLOAT32) {
        memcpy(v, g->val[i].raw, 4);
    } else if (kv->type == LOOM_GGUF_FLOAT64) {
        double d;
        memcpy(&d, g->val[i].raw, 8);
        *v = (float)d;
    } else if (is_int_type(kv->type)) {
        int big;
        *v = (float)int_at(g->val[i].raw, kv->type, 0, &big);
    } else {
        return loom_error(LOOM_EFORMAT, "%s: key %s is not a number", g->path, key);
    }
    return LOOM_OK;
}

int loom_gguf_get_bool(const loom_gguf *g, const char *key, int *v) {
    int i;
    const loom_gguf_kv *kv = scalar(g, key, &i);
    if (!kv) return absent(g, key);
    if (kv->type != LOOM_GGUF_BOOL) return loom_error(LOOM_EFORMAT, "%s: key %s is not a bool", g->path, key);
    *v = g->val[i].raw[0];
    return LOOM_OK;
}

int loom_gguf_get_str(const loom_gguf *g, const char *key, const char **s, size_t *len) {
    int i;
    const loom_gguf_kv *kv = scalar(g, key, &i);
    if (!kv) return absent(g, key);
    if (kv->type != LOOM_GGUF_STRING) return loom_error(LOOM_EFORMAT, "%s: key %s is not a string", g->path, key);
    *s = g->pool + g->str_off[g->val[i].str0];
    if (len) *len = g->str_len[g->val[i].str0];
    return LOOM_OK;
}

static int arr_check(const loom_gguf *g, int kv, size_t i) {
    if (kv < 0 || (size_t)kv >= g->n_kv) return loom_error(LOOM_EINVAL, "%s: no key/value %d", g->path, kv);
    if (g->kv[kv].type != LOOM_GGUF_ARRAY) return loom_error(LOOM_EFORMAT, "%s: key %s is not an array", g->path, g->kv[kv].key);
    if (i >= g->kv[kv].n)
        return loom_error(LOOM_ERANGE, "%s: element %zu of %s is past its end (%zu)", g->path, i, g->kv[kv].key, g->kv[kv].n);
    return LOOM_OK;
}

int loom_gguf_arr_str(const loom_gguf *g, int kv, size_t i, const char **s, size_t *len) {
    int rc = arr_check(g, kv, i);
    if (rc) return rc;
    if (g->kv[kv].arr_type != LOOM_GGUF_STRING) return loom_error(LOOM_EFORMAT, "%s: %s is not an array of strings", g->path, g->kv[kv].key);
    size_t k = g->val[kv].str0 + i;
    *s = g->pool + g->str_off[k];
    if (len) *len = g->str_len[k];
    return LOOM_OK;
}

int loom_gguf_arr_f32(const loom_gguf *g, int kv, size_t i, float *v) {
    int rc = arr_check(g, kv, i);
    if (rc) return rc;
    const uint8_t *raw = g->val[kv].raw;
    if (g->kv[kv].arr_type == LOOM_GGUF_FLOAT32) {
        memcpy(v, raw + 4 * i, 4);
    } else if (g->kv[kv].arr_type == LOOM_GGUF_FLOAT64) {
        double d;
        memcpy(&d, raw + 8 * i, 8);
        *v = (float)d;
    } else {
        return loom_error(LOOM_EFORMAT, "%s: %s is not an array of floats", g->path, g->kv[kv].key);
    }
    return LOOM_OK;
}

int loom_gguf_arr_i64(const loom_gguf *g, int kv, size_t i, int64_t *v) {
    int rc = arr_check(g, kv, i);
    if (rc) return rc;
    loom_gguf_vtype t = g->kv[kv].arr_type;
    if (!is_int_type(t) && t != LOOM_GGUF_BOOL) return loom_error(LOOM_EFORMAT, "%s: %s is not an array of integers", g->path, g->kv[kv].key);
    int big;
    *v = int_at(g->val[kv].raw, t, i, &big);
    if (big) return loom_error(LOOM_EFORMAT, "%s: element %zu of %s does not fit 64 signed bits", g->path, i, g->kv[kv].key);
    return LOOM_OK;
}

/* ---------------------------------------------------------------- writing */

typedef struct {
    char *key;
    uint8_t *val; /* serialised: u32 type, then the value as in the file */
    size_t nval;
} w_kv;

typedef struct {
    char *name;
    loom_ggml_type type;
    int ndim;
    int64_t ne[LOOM_GGUF_MAX_DIMS];
    size_t numel, nbytes;
    const void *data;
    int from_f32;
} w_tensor;

struct loom_gguf_writer {
    w_kv *kv;
    size_t n_kv, cap_kv;
    w_tensor *t;
    size_t n_t, cap_t;
    uint32_t alignment;
};

int loom_gguf_writer_create(loom_gguf_writer **out) {
    loom_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return loom_error(LOOM_ENOMEM, "out of memory");
    w->alignment = LOOM_GGUF_DEFAULT_ALIGNMENT;
    *out = w;
    return LOOM_OK;
}

void loom_gguf_writer_free(loom_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

/* Stores key with the serialised value val[n] (taken over). */
static int put_kv(loom_gguf_writer *w, const char *key, uint8_t *val, size_t n) {
    if (!val) return loom_error(LOOM_ENOMEM, "out of memory");
    if (!key || !*key || strlen(key) > LOOM_GGUF_MAX_KEY) {
        free(val);
        return loom_error(LOOM_EINVAL, "GGUF key must be 1 to %u bytes", LOOM_GGUF_MAX_KEY);
    }
    for (size_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) {
            free(w->kv[i].val);
            w->kv[i].val = val;
            w->kv[i].nval = n;
            return LOOM_OK;
        }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? 2 * w->cap_kv : 32;
        w_kv *k = realloc(w->kv, cap * sizeof *k);
        if (!k) {
            free(val);
            return loom_error(LOOM_ENOMEM, "out of memory");
        }
        w->kv = k;
        w->cap_kv = cap;
    }
    char *kc = strdup(key);
    if (!kc) {
        free(val);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    w->kv[w->n_kv++] = (w_kv){kc, val, n};
    return LOOM_OK;
}

static uint8_t *scalar_val(uint32_t type, const void *v, size_t size, size_t *n) {
    uint8_t *b = malloc(4 + size);
    if (b) {
        memcpy(b, &type, 4);
        memcpy(b + 4, v, size);
    }
    *n = 4 + size;
    return b;
}

int loom_gguf_set_u32(loom_gguf_writer *w, const char *key, uint32_t v) {
    size_t n;
    uint8_t *b = scalar_val(LOOM_GGUF_UINT32, &v, 4, &n);
    return put_kv(w, key, b, n);
}

int loom_gguf_set_i32(loom_gguf_writer *w, const char *key, int32_t v) {
    size_t n;
    uint8_t *b = scalar_val(LOOM_GGUF_INT32, &v, 4, &n);
    return put_kv(w, key, b, n);
}

int loom_gguf_set_u64(loom_gguf_writer *w, const char *key, uint64_t v) {
    size_t n;
    uint8_t *b = scalar_val(LOOM_GGUF_UINT64, &v, 8, &n);
    return put_kv(w, key, b, n);
}

int loom_gguf_set_f32(loom_gguf_writer *w, const char *key, float v) {
    size_t n;
    uint8_t *b = scalar_val(LOOM_GGUF_FLOAT32, &v, 4, &n);
    return put_kv(w, key, b, n);
}

int loom_gguf_set_bool(loom_gguf_writer *w, const char *key, int v) {
    uint8_t x = v ? 1 : 0;
    size_t n;
    uint8_t *b = scalar_val(LOOM_GGUF_BOOL, &x, 1, &n);
    return put_kv(w, key, b, n);
}

int loom_gguf_set_str(loom_gguf_writer *w, const char *key, const char *s) {
    if (!s) return loom_error(LOOM_EINVAL, "GGUF key %s: NULL string", key ? key : "(null)");
    uint64_t len = strlen(s);
    size_t n = 4 + 8 + (size_t)len;
    uint8_t *b = malloc(n);
    if (b) {
        uint32_t t = LOOM_GGUF_STRING;
        memcpy(b, &t, 4);
        memcpy(b + 4, &len, 8);
        memcpy(b + 12, s, (size_t)len);
    }
    return put_kv(w, key, b, n);
}

int loom_gguf_set_arr(loom_gguf_writer *w, const char *key, loom_gguf_vtype t, const void *data, size_t n) {
    size_t es = vtype_size((uint32_t)t);
    if (!es) return loom_error(LOOM_EINVAL, "GGUF key %s: arrays of type %d are written with loom_gguf_set_arr_str or not at all", key ? key : "(null)", (int)t);
    if (n > LOOM_GGUF_MAX_ARRAY) return loom_error(LOOM_EINVAL, "GGUF key %s: %zu elements exceed the limit", key ? key : "(null)", n);
    size_t nb = 16 + n * es;
    uint8_t *b = malloc(nb);
    if (b) {
        uint32_t at = LOOM_GGUF_ARRAY, et = (uint32_t)t;
        uint64_t cnt = n;
        memcpy(b, &at, 4);
        memcpy(b + 4, &et, 4);
        memcpy(b + 8, &cnt, 8);
        if (n) memcpy(b + 16, data, n * es);
    }
    return put_kv(w, key, b, nb);
}

int loom_gguf_set_arr_str(loom_gguf_writer *w, const char *key, const char *const *s, const size_t *lens, size_t n) {
    if (n > LOOM_GGUF_MAX_ARRAY) return loom_error(LOOM_EINVAL, "GGUF key %s: %zu elements exceed the limit", key ? key : "(null)", n);
    size_t nb = 16;
    for (size_t i = 0; i < n; i++) nb += 8 + (lens ? lens[i] : strlen(s[i]));
    uint8_t *b = malloc(nb);
    if (b) {
        uint32_t at = LOOM_GGUF_ARRAY, et = LOOM_GGUF_STRING;
        uint64_t cnt = n;
        memcpy(b, &at, 4);
        memcpy(b + 4, &et, 4);
        memcpy(b + 8, &cnt, 8);
        size_t p = 16;
        for (size_t i = 0; i < n; i++) {
            uint64_t len = lens ? lens[i] : strlen(s[i]);
            memcpy(b + p, &len, 8);
            if (len) memcpy(b + p + 8, s[i], (size_t)len);
            p += 8 + (size_t)len;
        }
    }
    return put_kv(w, key, b, nb);
}

int loom_gguf_writer_set_alignment(loom_gguf_writer *w, uint32_t alignment) {
    if (!alignment || (alignment & (alignment - 1)) || alignment > LOOM_GGUF_MAX_ALIGNMENT)
        return loom_error(LOOM_EINVAL, "GGUF alignment %u is not a power of two up to %u", alignment, LOOM_GGUF_MAX_ALIGNMENT);
    w->alignment = alignment;
    return loom_gguf_set_u32(w, "general.alignment", alignment);
}

static int writer_add(loom_gguf_writer *w, const char *name, loom_ggml_type t, int ndim, const int64_t *ne, const void *data,
                      int from_f32) {
    if (!name || !*name || strlen(name) >= LOOM_GGUF_MAX_NAME)
        return loom_error(LOOM_EINVAL, "GGUF tensor name '%s' must be 1 to %d bytes", name ? name : "", LOOM_GGUF_MAX_NAME - 1);
    if (!type_known((uint32_t)t)) return loom_error(LOOM_EINVAL, "tensor %s: ggml type %d is not one loom writes", name, (int)t);
    if (ndim < 1 || ndim > LOOM_GGUF_MAX_DIMS) return loom_error(LOOM_EINVAL, "tensor %s: %d dimensions (1 to 4)", name, ndim);
    w_tensor e = {0};
    e.type = t;
    e.ndim = ndim;
    e.numel = 1;
    for (int d = 0; d < LOOM_GGUF_MAX_DIMS; d++) {
        e.ne[d] = d < ndim ? ne[d] : 1;
        if (e.ne[d] < 1 || e.ne[d] >= (1ll << 40)) return loom_error(LOOM_EINVAL, "tensor %s: dimension %d is %lld", name, d, (long long)e.ne[d]);
        e.numel *= (size_t)e.ne[d];
    }
    if (e.ne[0] % (int64_t)loom_ggml_block_size(t))
        return loom_error(LOOM_EINVAL, "tensor %s: row length %lld is not a multiple of the %s block (%zu)", name, (long long)e.ne[0],
                          loom_ggml_type_name(t), loom_ggml_block_size(t));
    e.nbytes = loom_ggml_nbytes(t, e.numel);
    if (!data) return loom_error(LOOM_EINVAL, "tensor %s: NULL data", name);
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return loom_error(LOOM_EINVAL, "tensor %s added twice", name);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        w_tensor *a = realloc(w->t, cap * sizeof *a);
        if (!a) return loom_error(LOOM_ENOMEM, "out of memory");
        w->t = a;
        w->cap_t = cap;
    }
    if (!(e.name = strdup(name))) return loom_error(LOOM_ENOMEM, "out of memory");
    e.data = data;
    e.from_f32 = from_f32;
    w->t[w->n_t++] = e;
    return LOOM_OK;
}

int loom_gguf_writer_add(loom_gguf_writer *w, const char *name, loom_ggml_type t, int ndim, const int64_t *ne, const void *data) {
    return writer_add(w, name, t, ndim, ne, data, 0);
}

int loom_gguf_writer_add_f32(loom_gguf_writer *w, const char *name, loom_ggml_type t, int ndim, const int64_t *ne,
                             const float *data) {
    return writer_add(w, name, t, ndim, ne, data, 1);
}

size_t loom_gguf_writer_tensor_count(const loom_gguf_writer *w) { return w->n_t; }

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

/* Bytes before the data section (unpadded), and the data section's size. */
static void writer_sizes(const loom_gguf_writer *w, size_t *head, size_t *data) {
    size_t h = 24;
    for (size_t i = 0; i < w->n_kv; i++) h += 8 + strlen(w->kv[i].key) + w->kv[i].nval;
    for (size_t i = 0; i < w->n_t; i++) h += 8 + strlen(w->t[i].name) + 4 + 8 * (size_t)w->t[i].ndim + 4 + 8;
    size_t d = 0;
    for (size_t i = 0; i < w->n_t; i++) d = align_up(d + w->t[i].nbytes, w->alignment);
    *head = h;
    *data = d;
}

typedef struct {
    int fd;
    uint8_t *mem;
    size_t pos;
} sink;

static int sink_put(sink *k, const void *p, size_t n) {
    if (k->mem) {
        if (n) memcpy(k->mem + k->pos, p, n);
        k->pos += n;
        return 0;
    }
    const uint8_t *b = p;
    while (n) {
        ssize_t r = write(k->fd, b, n > (1u << 30) ? (1u << 30) : n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        b += r;
        n -= (size_t)r;
        k->pos += (size_t)r;
    }
    return 0;
}

static int sink_zeros(sink *k, size_t n) {
    static const uint8_t z[256];
    while (n) {
        size_t c = n < sizeof z ? n : sizeof z;
        if (sink_put(k, z, c)) return -1;
        n -= c;
    }
    return 0;
}

static int sink_str(sink *k, const char *s) {
    uint64_t n = strlen(s);
    return sink_put(k, &n, 8) || sink_put(k, s, (size_t)n);
}

#define CONV_CHUNK (LOOM_GGML_QK8_0 * 2048) /* values converted at a time */

static int writer_emit(const loom_gguf_writer *w, sink *k) {
    uint32_t magic = LOOM_GGUF_MAGIC, version = LOOM_GGUF_VERSION;
    uint64_t nt = w->n_t, nkv = w->n_kv;
    if (sink_put(k, &magic, 4) || sink_put(k, &version, 4) || sink_put(k, &nt, 8) || sink_put(k, &nkv, 8)) return -1;
    for (size_t i = 0; i < w->n_kv; i++)
        if (sink_str(k, w->kv[i].key) || sink_put(k, w->kv[i].val, w->kv[i].nval)) return -1;
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const w_tensor *e = &w->t[i];
        uint32_t nd = (uint32_t)e->ndim, type = (uint32_t)e->type;
        if (sink_str(k, e->name) || sink_put(k, &nd, 4)) return -1;
        for (int d = 0; d < e->ndim; d++) {
            uint64_t ne = (uint64_t)e->ne[d];
            if (sink_put(k, &ne, 8)) return -1;
        }
        if (sink_put(k, &type, 4) || sink_put(k, &off, 8)) return -1;
        off = align_up((size_t)off + e->nbytes, w->alignment);
    }
    if (sink_zeros(k, align_up(k->pos, w->alignment) - k->pos)) return -1;
    uint8_t *buf = NULL;
    int bad = 0;
    for (size_t i = 0; i < w->n_t && !bad; i++) {
        const w_tensor *e = &w->t[i];
        if (!e->from_f32 || e->type == LOOM_GGML_F32) {
            bad = sink_put(k, e->data, e->nbytes);
        } else {
            if (!buf && !(buf = loom_alloc(loom_ggml_nbytes(LOOM_GGML_F32, CONV_CHUNK)))) return -1;
            const float *src = e->data;
            for (size_t j = 0; j < e->numel && !bad; j += CONV_CHUNK) {
                size_t c = e->numel - j < CONV_CHUNK ? e->numel - j : CONV_CHUNK;
                loom_ggml_from_f32(e->type, buf, src + j, c); /* c is whole blocks: numel and CONV_CHUNK are */
                bad = sink_put(k, buf, loom_ggml_nbytes(e->type, c));
            }
        }
        if (!bad) bad = sink_zeros(k, align_up(e->nbytes, w->alignment) - e->nbytes);
    }
    loom_free(buf);
    return bad ? -1 : 0;
}

int loom_gguf_writer_serialize(loom_gguf_writer *w, void **data, size_t *len) {
    *data = NULL;
    *len = 0;
    if (!w) return loom_error(LOOM_EINVAL, "loom_gguf_writer_serialize: NULL writer");
    size_t head, dlen;
    writer_sizes(w, &head, &dlen);
    size_t total = align_up(head, w->alignment) + dlen;
    sink k = {.fd = -1, .mem = loom_alloc(total ? total : 1), .pos = 0};
    if (!k.mem) return loom_error(LOOM_ENOMEM, "out of memory serialising %zu bytes of GGUF", total);
    if (writer_emit(w, &k) || k.pos != total) {
        loom_free(k.mem);
        return loom_error(LOOM_ENOMEM, "out of memory serialising GGUF");
    }
    *data = k.mem;
    *len = total;
    return LOOM_OK;
}

int loom_gguf_writer_write(loom_gguf_writer *w, const char *path) {
    static atomic_uint counter;
    if (!w || !path) return loom_error(LOOM_EINVAL, "loom_gguf_writer_write: NULL argument");
    size_t plen = strlen(path) + 64;
    char *tmp = loom_alloc(plen);
    if (!tmp) return loom_error(LOOM_ENOMEM, "out of memory");
    snprintf(tmp, plen, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&counter, 1));
    int rc = LOOM_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        rc = loom_error(LOOM_EIO, "cannot create %s: %s", tmp, strerror(errno));
    } else {
        sink k = {.fd = fd, .mem = NULL, .pos = 0};
        int bad = writer_emit(w, &k);
        int e = errno;
        if (bad || fsync(fd) != 0) {
            if (!bad) e = errno;
            rc = loom_error(LOOM_EIO, "cannot write %s: %s", tmp, strerror(e));
        }
        if (close(fd) != 0 && rc == LOOM_OK) rc = loom_error(LOOM_EIO, "cannot close %s: %s", tmp, strerror(errno));
        if (rc == LOOM_OK && rename(tmp, path) != 0) rc = loom_error(LOOM_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        if (rc != LOOM_OK) unlink(tmp);
    }
    loom_free(tmp);
    return rc;
}
