#include "loom/safetensors.h"

#include "loom/core.h"
#include "loom/half.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tensor bytes are handed out and written as they are in memory. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "loom's safetensors I/O assumes a little-endian host"
#endif

/* ---------------------------------------------------------------- dtypes */

static const struct {
    const char *name;
    size_t size;
} dtypes[LOOM_DT_COUNT] = {
    [LOOM_DT_F32] = {"F32", 4}, [LOOM_DT_F16] = {"F16", 2}, [LOOM_DT_BF16] = {"BF16", 2},
    [LOOM_DT_F64] = {"F64", 8}, [LOOM_DT_I64] = {"I64", 8}, [LOOM_DT_I32] = {"I32", 4},
    [LOOM_DT_I16] = {"I16", 2}, [LOOM_DT_I8] = {"I8", 1},   [LOOM_DT_U8] = {"U8", 1},
    [LOOM_DT_BOOL] = {"BOOL", 1},
};

static int dtype_valid(loom_dtype dt) { return (unsigned)dt < LOOM_DT_COUNT; }

size_t loom_dtype_size(loom_dtype dt) { return dtype_valid(dt) ? dtypes[dt].size : 0; }

const char *loom_dtype_name(loom_dtype dt) { return dtype_valid(dt) ? dtypes[dt].name : "?"; }

int loom_dtype_parse(const char *name, loom_dtype *dt) {
    for (int i = 0; i < LOOM_DT_COUNT; i++)
        if (strcmp(name, dtypes[i].name) == 0) {
            *dt = (loom_dtype)i;
            return LOOM_OK;
        }
    return loom_error(LOOM_EUNSUPPORTED, "unknown dtype '%s'", name);
}

/* ---------------------------------------------------------------- name index
 * Open addressing over tensor pointers, at most half full. */

typedef struct {
    const loom_st_tensor **slots;
    size_t mask;
} st_index;

static uint64_t name_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return loom_mix64(h);
}

static int index_init(st_index *ix, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    ix->slots = loom_calloc(cap, sizeof *ix->slots);
    ix->mask = cap - 1;
    return ix->slots ? LOOM_OK : LOOM_ENOMEM;
}

static void index_free(st_index *ix) {
    loom_free(ix->slots);
    ix->slots = NULL;
}

/* Inserts t; returns the tensor already holding that name, or NULL. */
static const loom_st_tensor *index_insert(st_index *ix, const loom_st_tensor *t) {
    for (size_t i = name_hash(t->name) & ix->mask;; i = (i + 1) & ix->mask) {
        if (!ix->slots[i]) {
            ix->slots[i] = t;
            return NULL;
        }
        if (strcmp(ix->slots[i]->name, t->name) == 0) return ix->slots[i];
    }
}

static const loom_st_tensor *index_find(const st_index *ix, const char *name) {
    if (!ix->slots || !name) return NULL;
    for (size_t i = name_hash(name) & ix->mask; ix->slots[i]; i = (i + 1) & ix->mask)
        if (strcmp(ix->slots[i]->name, name) == 0) return ix->slots[i];
    return NULL;
}

/* ---------------------------------------------------------------- reading */

struct loom_st_file {
    char *path;
    const uint8_t *base; /* whole file */
    size_t size;
    int mapped;          /* base is our mmap (else caller memory) */
    json_t *root;        /* owns the names and metadata strings */
    loom_st_tensor *tensors;
    size_t count;
    json_t *meta;        /* the __metadata__ object or NULL */
    const char **meta_kv; /* key, value pairs in header order */
    size_t meta_count;
    st_index index;
};

static int cmp_by_offset(const void *a, const void *b) {
    const loom_st_tensor *x = *(const loom_st_tensor *const *)a, *y = *(const loom_st_tensor *const *)b;
    uintptr_t xb = (uintptr_t)x->data, yb = (uintptr_t)y->data;
    if (xb != yb) return xb < yb ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Reads a non-negative JSON integer. */
static int json_u64(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

static int parse_tensor(loom_st_file *f, const char *key, json_t *v, const uint8_t *data, size_t data_len,
                        loom_st_tensor *t) {
    const char *p = f->path;
    if (!json_is_object(v)) return loom_error(LOOM_EFORMAT, "%s: tensor '%s': entry is not a JSON object", p, key);
    json_t *jdt = json_object_get(v, "dtype"), *jshape = json_object_get(v, "shape"),
           *joff = json_object_get(v, "data_offsets");
    if (!jdt || !jshape || !joff)
        return loom_error(LOOM_EFORMAT, "%s: tensor '%s': missing \"%s\"", p, key,
                          !jdt ? "dtype" : !jshape ? "shape" : "data_offsets");
    if (!json_is_string(jdt)) return loom_error(LOOM_EFORMAT, "%s: tensor '%s': dtype is not a string", p, key);
    if (loom_dtype_parse(json_string_value(jdt), &t->dtype) != LOOM_OK) {
        /* names the format defines but loom does not handle are unsupported rather than malformed */
        static const char *known[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3",
                                      "F6_E3M2", "F4", "C64", "U1", "I4", "U4"};
        int code = LOOM_EFORMAT;
        for (size_t i = 0; i < sizeof known / sizeof *known; i++)
            if (strcmp(json_string_value(jdt), known[i]) == 0) code = LOOM_EUNSUPPORTED;
        return loom_error(code, "%s: tensor '%s': %s dtype '%s'", p, key,
                          code == LOOM_EUNSUPPORTED ? "unsupported" : "unknown", json_string_value(jdt));
    }
    if (!json_is_array(jshape)) return loom_error(LOOM_EFORMAT, "%s: tensor '%s': shape is not an array", p, key);
    size_t nd = json_array_size(jshape);
    if (nd > LOOM_ST_MAX_DIMS)
        return loom_error(LOOM_EUNSUPPORTED, "%s: tensor '%s': %zu dimensions (loom supports up to %d)", p, key, nd,
                          LOOM_ST_MAX_DIMS);
    t->name = key;
    t->ndim = (int)nd;
    memset(t->shape, 0, sizeof t->shape);
    size_t numel = 1;
    int overflow = 0;
    for (size_t d = 0; d < nd; d++) {
        uint64_t dim;
        if (!json_u64(json_array_get(jshape, d), &dim))
            return loom_error(LOOM_EFORMAT, "%s: tensor '%s': shape[%zu] is not a non-negative integer", p, key, d);
        t->shape[d] = (int64_t)dim;
        if (dim > SIZE_MAX || __builtin_mul_overflow(numel, (size_t)dim, &numel)) overflow = 1;
    }
    for (size_t d = 0; d < nd; d++)
        if (t->shape[d] == 0) numel = 0, overflow = 0; /* an empty tensor, however large its other dims */
    size_t nbytes;
    if (overflow || __builtin_mul_overflow(numel, dtypes[t->dtype].size, &nbytes))
        return loom_error(LOOM_EFORMAT, "%s: tensor '%s': shape overflows the size of memory", p, key);
    uint64_t begin, end;
    if (!json_is_array(joff) || json_array_size(joff) != 2 || !json_u64(json_array_get(joff, 0), &begin) ||
        !json_u64(json_array_get(joff, 1), &end))
        return loom_error(LOOM_EFORMAT, "%s: tensor '%s': data_offsets is not [begin, end] with non-negative integers",
                          p, key);
    if (begin > end)
        return loom_error(LOOM_EFORMAT, "%s: tensor '%s': data_offsets begin %llu > end %llu", p, key,
                          (unsigned long long)begin, (unsigned long long)end);
    if (end > data_len)
        return loom_error(LOOM_EFORMAT, "%s: tensor '%s': data_offsets end %llu is past the end of the data (%zu bytes)",
                          p, key, (unsigned long long)end, data_len);
    if (end - begin != nbytes) {
        char sh[LOOM_ST_MAX_DIMS * 21 + 3] = "[";
        for (int d = 0; d < t->ndim; d++)
            snprintf(sh + strlen(sh), sizeof sh - strlen(sh), "%s%lld", d ? "," : "", (long long)t->shape[d]);
        strcat(sh, "]");
        return loom_error(LOOM_EFORMAT, "%s: tensor '%s': data_offsets span %llu bytes but %s %s needs %zu", p, key,
                          (unsigned long long)(end - begin), dtypes[t->dtype].name, sh, nbytes);
    }
    t->numel = numel;
    t->nbytes = nbytes;
    t->data = data + begin;
    return LOOM_OK;
}

static int parse_metadata(loom_st_file *f, json_t *m) {
    if (!json_is_object(m)) return loom_error(LOOM_EFORMAT, "%s: __metadata__ is not a JSON object", f->path);
    f->meta = m;
    f->meta_count = json_object_size(m);
    f->meta_kv = loom_calloc(2 * f->meta_count + 1, sizeof *f->meta_kv);
    if (!f->meta_kv) return LOOM_ENOMEM;
    size_t i = 0;
    const char *k;
    json_t *v;
    json_object_foreach(m, k, v) {
        if (!json_is_string(v))
            return loom_error(LOOM_EFORMAT, "%s: __metadata__ value of '%s' is not a string", f->path, k);
        f->meta_kv[2 * i] = k;
        f->meta_kv[2 * i + 1] = json_string_value(v);
        i++;
    }
    return LOOM_OK;
}

static int parse_file(loom_st_file *f) {
    const char *p = f->path;
    if (f->size < 8)
        return loom_error(LOOM_EFORMAT, "%s: file is %zu bytes, shorter than the 8-byte header length", p, f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->base[i];
    if (n > LOOM_ST_MAX_HEADER)
        return loom_error(LOOM_EFORMAT, "%s: header length %llu exceeds loom's limit of %u bytes", p,
                          (unsigned long long)n, LOOM_ST_MAX_HEADER);
    if (n > f->size - 8)
        return loom_error(LOOM_EFORMAT, "%s: header length %llu is larger than the file (%zu bytes)", p,
                          (unsigned long long)n, f->size);
    const uint8_t *data = f->base + 8 + n;
    size_t data_len = f->size - 8 - (size_t)n;

    json_error_t jerr;
    f->root = json_loadb((const char *)f->base + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!f->root)
        return loom_error(LOOM_EFORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", p, jerr.text,
                          jerr.line, jerr.column);
    if (!json_is_object(f->root)) return loom_error(LOOM_EFORMAT, "%s: header is not a JSON object", p);

    size_t total = json_object_size(f->root);
    f->tensors = loom_calloc(total ? total : 1, sizeof *f->tensors);
    if (!f->tensors) return LOOM_ENOMEM;
    const char *key;
    json_t *v;
    json_object_foreach(f->root, key, v) {
        int rc;
        if (strcmp(key, "__metadata__") == 0)
            rc = parse_metadata(f, v);
        else
            rc = parse_tensor(f, key, v, data, data_len, &f->tensors[f->count++]);
        if (rc != LOOM_OK) return rc;
    }

    /* Overlap: sorted by start, each tensor holding bytes must begin at or after the furthest end so far.
     * Empty tensors hold no bytes and cannot overlap anything. */
    const loom_st_tensor **order = loom_calloc(f->count ? f->count : 1, sizeof *order);
    if (!order) return LOOM_ENOMEM;
    for (size_t i = 0; i < f->count; i++) order[i] = &f->tensors[i];
    qsort(order, f->count, sizeof *order, cmp_by_offset);
    const loom_st_tensor *last = NULL;
    int rc = LOOM_OK;
    for (size_t i = 0; i < f->count && rc == LOOM_OK; i++) {
        const loom_st_tensor *t = order[i];
        if (!t->nbytes) continue;
        if (last && (const uint8_t *)t->data < (const uint8_t *)last->data + last->nbytes)
            rc = loom_error(LOOM_EFORMAT, "%s: tensor '%s' (bytes %zu..%zu) overlaps tensor '%s' (bytes %zu..%zu)", p,
                            t->name, (size_t)((const uint8_t *)t->data - data),
                            (size_t)((const uint8_t *)t->data - data) + t->nbytes, last->name,
                            (size_t)((const uint8_t *)last->data - data),
                            (size_t)((const uint8_t *)last->data - data) + last->nbytes);
        last = t;
    }
    loom_free(order);
    if (rc != LOOM_OK) return rc;

    if (index_init(&f->index, f->count) != LOOM_OK) return LOOM_ENOMEM;
    for (size_t i = 0; i < f->count; i++) index_insert(&f->index, &f->tensors[i]); /* names are unique */
    return LOOM_OK;
}

static loom_st_file *file_new(const char *name) {
    loom_st_file *f = loom_calloc(1, sizeof *f);
    if (!f) return NULL;
    f->path = loom_strdup(name ? name : "<memory>");
    if (!f->path) {
        loom_free(f);
        return NULL;
    }
    return f;
}

void loom_st_close(loom_st_file *f) {
    if (!f) return;
    if (f->mapped) loom_unmap_file(f->base, f->size);
    json_decref(f->root);
    loom_free(f->tensors);
    loom_free(f->meta_kv);
    index_free(&f->index);
    loom_free(f->path);
    loom_free(f);
}

int loom_st_open_memory(loom_st_file **out, const void *data, size_t len, const char *name) {
    *out = NULL;
    if (!data && len) return loom_error(LOOM_EINVAL, "loom_st_open_memory: NULL data");
    loom_st_file *f = file_new(name);
    if (!f) return loom_error(LOOM_ENOMEM, "out of memory opening %s", name ? name : "<memory>");
    f->base = data;
    f->size = len;
    int rc = parse_file(f);
    if (rc != LOOM_OK) {
        if (rc == LOOM_ENOMEM) loom_error(rc, "%s: out of memory reading the header", f->path);
        loom_st_close(f);
        return rc;
    }
    *out = f;
    return LOOM_OK;
}

int loom_st_open(loom_st_file **out, const char *path) {
    *out = NULL;
    const uint8_t *base;
    size_t size;
    int rc = loom_map_file(path, &base, &size);
    if (rc != LOOM_OK) return rc;
    loom_st_file *f = file_new(path);
    if (!f) {
        loom_unmap_file(base, size);
        return loom_error(LOOM_ENOMEM, "out of memory opening %s", path);
    }
    f->base = base;
    f->size = size;
    f->mapped = 1;
    rc = parse_file(f);
    if (rc != LOOM_OK) {
        if (rc == LOOM_ENOMEM) loom_error(rc, "%s: out of memory reading the header", path);
        loom_st_close(f);
        return rc;
    }
    *out = f;
    return LOOM_OK;
}

size_t loom_st_count(const loom_st_file *f) { return f ? f->count : 0; }

const loom_st_tensor *loom_st_at(const loom_st_file *f, size_t i) {
    return f && i < f->count ? &f->tensors[i] : NULL;
}

const loom_st_tensor *loom_st_find(const loom_st_file *f, const char *name) {
    return f ? index_find(&f->index, name) : NULL;
}

const char *loom_st_meta(const loom_st_file *f, const char *key) {
    if (!f || !f->meta || !key) return NULL;
    return json_string_value(json_object_get(f->meta, key));
}

size_t loom_st_meta_count(const loom_st_file *f) { return f ? f->meta_count : 0; }

int loom_st_meta_at(const loom_st_file *f, size_t i, const char **key, const char **value) {
    if (!f || i >= f->meta_count) return loom_error(LOOM_ENOTFOUND, "metadata entry %zu does not exist", i);
    if (key) *key = f->meta_kv[2 * i];
    if (value) *value = f->meta_kv[2 * i + 1];
    return LOOM_OK;
}

const char *loom_st_path(const loom_st_file *f) { return f ? f->path : NULL; }

const void *loom_st_bytes(const loom_st_file *f, size_t *len) {
    if (len) *len = f ? f->size : 0;
    return f ? f->base : NULL;
}

/* ---------------------------------------------------------------- conversion */

static int check_count(const loom_st_tensor *t, size_t n, const char *what) {
    if (!t) return loom_error(LOOM_EINVAL, "%s: NULL tensor", what);
    if (n != t->numel)
        return loom_error(LOOM_EINVAL, "%s: tensor '%s' has %zu elements, destination %zu", what, t->name, t->numel, n);
    return LOOM_OK;
}

int loom_st_to_f32(const loom_st_tensor *t, float *dst, size_t n) {
    int rc = check_count(t, n, "loom_st_to_f32");
    if (rc != LOOM_OK) return rc;
    const uint8_t *src = t->data;
    switch (t->dtype) {
    case LOOM_DT_F32:
        if (n) memcpy(dst, src, n * 4);
        return LOOM_OK;
    case LOOM_DT_F16:
    case LOOM_DT_BF16: {
        void (*conv)(float *, const uint16_t *, size_t) =
            t->dtype == LOOM_DT_F16 ? loom_f16_to_f32_n : loom_bf16_to_f32_n;
        if ((uintptr_t)src % 2 == 0) {
            conv(dst, (const uint16_t *)(const void *)src, n);
            return LOOM_OK;
        }
        /* a tensor after an odd-sized one starts on an odd address: go through an aligned copy */
        uint16_t buf[1024];
        for (size_t i = 0; i < n; i += 1024) {
            size_t k = n - i < 1024 ? n - i : 1024;
            memcpy(buf, src + 2 * i, 2 * k);
            conv(dst + i, buf, k);
        }
        return LOOM_OK;
    }
    case LOOM_DT_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            dst[i] = (float)d;
        }
        return LOOM_OK;
    default:
        return loom_error(LOOM_EUNSUPPORTED, "loom_st_to_f32: tensor '%s' is %s, not a floating-point type", t->name,
                          loom_dtype_name(t->dtype));
    }
}

int loom_st_to_i32(const loom_st_tensor *t, int32_t *dst, size_t n) {
    int rc = check_count(t, n, "loom_st_to_i32");
    if (rc != LOOM_OK) return rc;
    const uint8_t *src = t->data;
    switch (t->dtype) {
    case LOOM_DT_I32:
        if (n) memcpy(dst, src, n * 4);
        return LOOM_OK;
    case LOOM_DT_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v;
            memcpy(&v, src + 8 * i, 8);
            if (v < INT32_MIN || v > INT32_MAX)
                return loom_error(LOOM_ERANGE, "loom_st_to_i32: tensor '%s' element %zu = %lld does not fit in int32",
                                  t->name, i, (long long)v);
            dst[i] = (int32_t)v;
        }
        return LOOM_OK;
    case LOOM_DT_I16:
        for (size_t i = 0; i < n; i++) {
            int16_t v;
            memcpy(&v, src + 2 * i, 2);
            dst[i] = v;
        }
        return LOOM_OK;
    case LOOM_DT_I8:
        for (size_t i = 0; i < n; i++) dst[i] = (int8_t)src[i];
        return LOOM_OK;
    case LOOM_DT_U8:
        for (size_t i = 0; i < n; i++) dst[i] = src[i];
        return LOOM_OK;
    case LOOM_DT_BOOL:
        for (size_t i = 0; i < n; i++) dst[i] = src[i] != 0;
        return LOOM_OK;
    default:
        return loom_error(LOOM_EUNSUPPORTED, "loom_st_to_i32: tensor '%s' is %s, not an integer type", t->name,
                          loom_dtype_name(t->dtype));
    }
}

/* ---------------------------------------------------------------- sets (one file or shards) */

struct loom_st_set {
    loom_st_file **files;
    size_t nfiles;
    const loom_st_tensor **all;
    size_t count;
    st_index index;
};

void loom_st_set_close(loom_st_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->nfiles; i++) loom_st_close(s->files[i]);
    loom_free(s->files);
    loom_free(s->all);
    index_free(&s->index);
    loom_free(s);
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *s = loom_alloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') s[k++] = '/';
    memcpy(s + k, name, b + 1);
    return s;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Shard names come from a file: keep them inside the index's directory. */
static int shard_name_ok(const char *s) {
    if (!*s || s[0] == '/') return 0;
    for (const char *c = s; *c;) {
        const char *e = strchr(c, '/');
        size_t len = e ? (size_t)(e - c) : strlen(c);
        if (len == 2 && c[0] == '.' && c[1] == '.') return 0;
        c += len + (e != NULL);
    }
    return 1;
}

static int set_add_file(loom_st_set *s, const char *path) {
    loom_st_file **nf = loom_alloc((s->nfiles + 1) * sizeof *nf);
    if (!nf) return LOOM_ENOMEM;
    if (s->nfiles) memcpy(nf, s->files, s->nfiles * sizeof *nf);
    loom_free(s->files);
    s->files = nf;
    int rc = loom_st_open(&s->files[s->nfiles], path);
    if (rc == LOOM_OK) s->nfiles++;
    return rc;
}

/* Opens the shards listed in an index file (their order: first mention in weight_map). *shards_out maps
 * each shard name to its position in s->files. */
static int set_open_index(loom_st_set *s, const char *index_path, json_t **weight_map_out, json_t **root_out,
                          json_t **shards_out) {
    json_error_t jerr;
    char *text;
    size_t len;
    int rc = loom_read_file(index_path, &text, &len);
    if (rc != LOOM_OK) return rc;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    *root_out = root;
    if (!root)
        return loom_error(LOOM_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", index_path, jerr.text, jerr.line,
                          jerr.column);
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) return loom_error(LOOM_EFORMAT, "%s: no \"weight_map\" object", index_path);
    *weight_map_out = wm;

    char *dir = loom_strdup(index_path);
    if (!dir) return LOOM_ENOMEM;
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = 0;
    else
        strcpy(dir, ".");
    json_t *seen = json_object();
    *shards_out = seen;
    if (!seen) {
        loom_free(dir);
        return LOOM_ENOMEM;
    }
    const char *name;
    json_t *v;
    rc = LOOM_OK;
    json_object_foreach(wm, name, v) {
        if (!json_is_string(v)) {
            rc = loom_error(LOOM_EFORMAT, "%s: weight_map entry '%s' is not a file name", index_path, name);
            break;
        }
        const char *shard = json_string_value(v);
        if (json_object_get(seen, shard)) continue;
        if (!shard_name_ok(shard)) {
            rc = loom_error(LOOM_EFORMAT, "%s: shard name '%s' (tensor '%s') leaves the model directory", index_path,
                            shard, name);
            break;
        }
        if (json_object_set_new(seen, shard, json_integer((json_int_t)s->nfiles)) != 0) {
            rc = LOOM_ENOMEM;
            break;
        }
        char *sp = path_join(dir, shard);
        if (!sp) {
            rc = LOOM_ENOMEM;
            break;
        }
        rc = set_add_file(s, sp);
        loom_free(sp);
        if (rc != LOOM_OK) {
            loom_error_context(rc, "%s: shard '%s' (holding tensor '%s')", index_path, shard, name);
            break;
        }
    }
    loom_free(dir);
    return rc;
}

int loom_st_set_open(loom_st_set **out, const char *path_or_dir) {
    *out = NULL;
    loom_st_set *s = loom_calloc(1, sizeof *s);
    if (!s) return loom_error(LOOM_ENOMEM, "out of memory");
    char *index_path = NULL;
    json_t *root = NULL, *wm = NULL, *shards = NULL;
    int rc = LOOM_OK;
    if (is_dir(path_or_dir)) {
        char *ip = path_join(path_or_dir, "model.safetensors.index.json");
        char *mp = path_join(path_or_dir, "model.safetensors");
        if (!ip || !mp)
            rc = LOOM_ENOMEM;
        else if (is_file(ip))
            index_path = ip, ip = NULL;
        else if (is_file(mp))
            rc = set_add_file(s, mp);
        else
            rc = loom_error(LOOM_ENOTFOUND, "%s has neither model.safetensors.index.json nor model.safetensors",
                            path_or_dir);
        loom_free(ip);
        loom_free(mp);
    } else if (ends_with(path_or_dir, ".json")) {
        index_path = loom_strdup(path_or_dir);
        if (!index_path) rc = LOOM_ENOMEM;
    } else {
        rc = set_add_file(s, path_or_dir);
    }
    if (rc == LOOM_OK && index_path) rc = set_open_index(s, index_path, &wm, &root, &shards);

    if (rc == LOOM_OK) {
        for (size_t i = 0; i < s->nfiles; i++) s->count += loom_st_count(s->files[i]);
        s->all = loom_calloc(s->count ? s->count : 1, sizeof *s->all);
        if (!s->all || index_init(&s->index, s->count) != LOOM_OK) rc = LOOM_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; rc == LOOM_OK && i < s->nfiles; i++) {
        for (size_t j = 0; rc == LOOM_OK && j < loom_st_count(s->files[i]); j++) {
            const loom_st_tensor *t = loom_st_at(s->files[i], j);
            const loom_st_tensor *dup = index_insert(&s->index, t);
            if (dup) {
                const char *other = "?";
                for (size_t q = 0; q < s->nfiles; q++)
                    if (loom_st_find(s->files[q], t->name) == dup) other = loom_st_path(s->files[q]);
                rc = loom_error(LOOM_EFORMAT, "tensor '%s' is in both %s and %s", t->name, other,
                                loom_st_path(s->files[i]));
            }
            s->all[k++] = t;
        }
    }
    if (rc == LOOM_OK && wm) {
        /* the index must not promise a tensor its shard lacks */
        const char *name;
        json_t *v;
        json_object_foreach(wm, name, v) {
            const char *shard = json_string_value(v);
            json_int_t q = json_integer_value(json_object_get(shards, shard));
            if (!loom_st_find(s->files[q], name)) {
                rc = loom_error(LOOM_EFORMAT, "%s: weight_map places tensor '%s' in %s, which does not contain it",
                                index_path, name, shard);
                break;
            }
        }
    }
    if (rc == LOOM_ENOMEM) loom_error(rc, "out of memory opening %s", path_or_dir);
    json_decref(shards);
    json_decref(root);
    loom_free(index_path);
    if (rc != LOOM_OK) {
        loom_st_set_close(s);
        return rc;
    }
    *out = s;
    return LOOM_OK;
}

const loom_st_tensor *loom_st_set_find(const loom_st_set *s, const char *name) {
    return s ? index_find(&s->index, name) : NULL;
}

size_t loom_st_set_count(const loom_st_set *s) { return s ? s->count : 0; }

const loom_st_tensor *loom_st_set_at(const loom_st_set *s, size_t i) {
    return s && i < s->count ? s->all[i] : NULL;
}

size_t loom_st_set_file_count(const loom_st_set *s) { return s ? s->nfiles : 0; }

const loom_st_file *loom_st_set_file(const loom_st_set *s, size_t i) {
    return s && i < s->nfiles ? s->files[i] : NULL;
}

/* ---------------------------------------------------------------- writing */

typedef struct {
    char *name;
    loom_dtype dtype;
    int ndim;
    int64_t shape[LOOM_ST_MAX_DIMS];
    size_t numel, nbytes;
    const void *data;
    int from_f32; /* data is float, converted to dtype when written */
} st_entry;

struct loom_st_writer {
    st_entry *e;
    size_t n, cap;
    json_t *names; /* name -> index, for duplicate detection */
    json_t *meta;
};

int loom_st_writer_create(loom_st_writer **out) {
    *out = NULL;
    loom_st_writer *w = loom_calloc(1, sizeof *w);
    if (!w) return loom_error(LOOM_ENOMEM, "out of memory");
    w->names = json_object();
    w->meta = json_object();
    if (!w->names || !w->meta) {
        loom_st_writer_free(w);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    *out = w;
    return LOOM_OK;
}

void loom_st_writer_free(loom_st_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) loom_free(w->e[i].name);
    loom_free(w->e);
    json_decref(w->names);
    json_decref(w->meta);
    loom_free(w);
}

size_t loom_st_writer_count(const loom_st_writer *w) { return w ? w->n : 0; }

static int writer_add(loom_st_writer *w, const char *name, loom_dtype dt, int ndim, const int64_t *shape,
                      const void *data, int from_f32) {
    const char *fn = from_f32 ? "loom_st_writer_add_f32" : "loom_st_writer_add";
    if (!w || !name) return loom_error(LOOM_EINVAL, "%s: NULL argument", fn);
    if (!dtype_valid(dt)) return loom_error(LOOM_EINVAL, "%s: tensor '%s': invalid dtype %d", fn, name, (int)dt);
    if (from_f32 && dt != LOOM_DT_F32 && dt != LOOM_DT_F16 && dt != LOOM_DT_BF16)
        return loom_error(LOOM_EINVAL, "%s: tensor '%s': cannot store floats as %s", fn, name, dtypes[dt].name);
    if (ndim < 0 || ndim > LOOM_ST_MAX_DIMS || (ndim > 0 && !shape))
        return loom_error(LOOM_EINVAL, "%s: tensor '%s': bad ndim %d", fn, name, ndim);
    if (strcmp(name, "__metadata__") == 0)
        return loom_error(LOOM_EINVAL, "%s: '__metadata__' is reserved, not a tensor name", fn);
    size_t numel = 1;
    int overflow = 0, empty = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return loom_error(LOOM_EINVAL, "%s: tensor '%s': shape[%d] = %lld", fn, name, d, (long long)shape[d]);
        if (shape[d] == 0) empty = 1;
        if ((uint64_t)shape[d] > SIZE_MAX || __builtin_mul_overflow(numel, (size_t)shape[d], &numel)) overflow = 1;
    }
    if (empty) numel = 0, overflow = 0;
    size_t nbytes;
    if (overflow || __builtin_mul_overflow(numel, dtypes[dt].size, &nbytes))
        return loom_error(LOOM_EINVAL, "%s: tensor '%s': shape overflows the size of memory", fn, name);
    if (numel && !data) return loom_error(LOOM_EINVAL, "%s: tensor '%s': NULL data", fn, name);
    if (json_object_get(w->names, name)) return loom_error(LOOM_EINVAL, "%s: tensor '%s' added twice", fn, name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        st_entry *ne = loom_alloc(cap * sizeof *ne);
        if (!ne) return loom_error(LOOM_ENOMEM, "out of memory");
        if (w->n) memcpy(ne, w->e, w->n * sizeof *ne);
        loom_free(w->e);
        w->e = ne;
        w->cap = cap;
    }
    /* jansson refuses keys that are not valid UTF-8, which the format requires */
    if (json_object_set_new(w->names, name, json_integer((json_int_t)w->n)) != 0)
        return loom_error(LOOM_EINVAL, "%s: tensor name is not valid UTF-8", fn);
    st_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = loom_strdup(name);
    if (!e->name) {
        json_object_del(w->names, name);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    e->dtype = dt;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    e->numel = numel;
    e->nbytes = nbytes;
    e->data = data;
    e->from_f32 = from_f32;
    w->n++;
    return LOOM_OK;
}

int loom_st_writer_add(loom_st_writer *w, const char *name, loom_dtype dt, int ndim, const int64_t *shape,
                       const void *data) {
    return writer_add(w, name, dt, ndim, shape, data, 0);
}

int loom_st_writer_add_f32(loom_st_writer *w, const char *name, loom_dtype dt, int ndim, const int64_t *shape,
                           const float *data) {
    return writer_add(w, name, dt, ndim, shape, data, 1);
}

int loom_st_writer_meta(loom_st_writer *w, const char *key, const char *value) {
    if (!w || !key || !value) return loom_error(LOOM_EINVAL, "loom_st_writer_meta: NULL argument");
    json_t *v = json_string(value);
    if (!v) return loom_error(LOOM_EINVAL, "loom_st_writer_meta: value of '%s' is not valid UTF-8", key);
    if (json_object_set_new(w->meta, key, v) != 0)
        return loom_error(LOOM_EINVAL, "loom_st_writer_meta: key is not valid UTF-8");
    return LOOM_OK;
}

/* Builds the padded header; *hlen is a multiple of 8. */
static int writer_header(const loom_st_writer *w, char **out, size_t *hlen, size_t *data_len) {
    json_t *root = json_object();
    if (!root) return LOOM_ENOMEM;
    int bad = 0;
    if (json_object_size(w->meta)) bad |= json_object_set(root, "__metadata__", w->meta);
    size_t off = 0;
    for (size_t i = 0; i < w->n && !bad; i++) {
        const st_entry *e = &w->e[i];
        if (off > (size_t)INT64_MAX - e->nbytes) {
            bad = 1;
            break;
        }
        json_t *shape = json_array(), *offs = json_array();
        for (int d = 0; d < e->ndim && shape; d++) bad |= json_array_append_new(shape, json_integer(e->shape[d]));
        if (offs) {
            bad |= json_array_append_new(offs, json_integer((json_int_t)off));
            bad |= json_array_append_new(offs, json_integer((json_int_t)(off + e->nbytes)));
        }
        /* "o" hands the arrays to the new object (jansson releases them if packing fails) */
        json_t *ent = json_pack("{s:s, s:o, s:o}", "dtype", dtypes[e->dtype].name, "shape", shape, "data_offsets", offs);
        if (!ent || json_object_set_new(root, e->name, ent) != 0) bad = 1;
        off += e->nbytes;
    }
    char *s = bad ? NULL : json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s) return LOOM_ENOMEM;
    size_t len = strlen(s), padded = (len + 7) & ~(size_t)7;
    char *h = loom_alloc(padded ? padded : 8);
    if (!h) {
        free(s);
        return LOOM_ENOMEM;
    }
    memcpy(h, s, len);
    memset(h + len, ' ', padded - len);
    free(s);
    *out = h;
    *hlen = padded;
    *data_len = off;
    return LOOM_OK;
}

/* A byte sink: either a file descriptor or a memory buffer with room for everything. */
typedef struct {
    int fd;
    uint8_t *mem;
    size_t pos;
} st_sink;

static int sink_put(st_sink *k, const void *p, size_t n) {
    if (k->mem) {
        memcpy(k->mem + k->pos, p, n);
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

#define CONV_CHUNK 65536

static int writer_emit(const loom_st_writer *w, st_sink *k, const char *header, size_t hlen) {
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    if (sink_put(k, len8, 8) || sink_put(k, header, hlen)) return -1;
    uint16_t *buf = NULL;
    for (size_t i = 0; i < w->n; i++) {
        const st_entry *e = &w->e[i];
        if (!e->from_f32 || e->dtype == LOOM_DT_F32) {
            if (e->nbytes && sink_put(k, e->data, e->nbytes)) goto fail;
            continue;
        }
        if (!buf && !(buf = loom_alloc(CONV_CHUNK * sizeof *buf))) goto fail;
        const float *src = e->data;
        for (size_t j = 0; j < e->numel; j += CONV_CHUNK) {
            size_t c = e->numel - j < CONV_CHUNK ? e->numel - j : CONV_CHUNK;
            if (e->dtype == LOOM_DT_F16)
                loom_f32_to_f16_n(buf, src + j, c);
            else
                loom_f32_to_bf16_n(buf, src + j, c);
            if (sink_put(k, buf, 2 * c)) goto fail;
        }
    }
    loom_free(buf);
    return 0;
fail:
    loom_free(buf);
    return -1;
}

int loom_st_writer_serialize(loom_st_writer *w, void **data, size_t *len) {
    *data = NULL;
    *len = 0;
    char *header;
    size_t hlen, dlen;
    if (!w) return loom_error(LOOM_EINVAL, "loom_st_writer_serialize: NULL writer");
    if (writer_header(w, &header, &hlen, &dlen) != LOOM_OK) return loom_error(LOOM_ENOMEM, "out of memory");
    size_t total = 8 + hlen + dlen;
    if (total < dlen) {
        loom_free(header);
        return loom_error(LOOM_ENOMEM, "safetensors data too large");
    }
    st_sink k = {.fd = -1, .mem = loom_alloc(total), .pos = 0};
    if (!k.mem) {
        loom_free(header);
        return loom_error(LOOM_ENOMEM, "out of memory serialising %zu bytes", total);
    }
    int bad = writer_emit(w, &k, header, hlen);
    loom_free(header);
    if (bad) {
        loom_free(k.mem);
        return loom_error(LOOM_ENOMEM, "out of memory serialising");
    }
    *data = k.mem;
    *len = total;
    return LOOM_OK;
}

int loom_st_writer_write(loom_st_writer *w, const char *path) {
    static atomic_uint counter;
    if (!w || !path) return loom_error(LOOM_EINVAL, "loom_st_writer_write: NULL argument");
    char *header;
    size_t hlen, dlen;
    if (writer_header(w, &header, &hlen, &dlen) != LOOM_OK) return loom_error(LOOM_ENOMEM, "out of memory");
    /* the temporary name is unique per process and call, so concurrent writers never share one */
    size_t plen = strlen(path) + 64;
    char *tmp = loom_alloc(plen);
    if (!tmp) {
        loom_free(header);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    snprintf(tmp, plen, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&counter, 1));
    int rc = LOOM_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
        rc = loom_error(LOOM_EIO, "cannot create %s: %s", tmp, strerror(errno));
    } else {
        st_sink k = {.fd = fd, .mem = NULL, .pos = 0};
        int bad = writer_emit(w, &k, header, hlen);
        int e = errno;
        if (bad || fsync(fd) != 0) {
            if (!bad) e = errno;
            rc = loom_error(LOOM_EIO, "cannot write %s: %s", tmp, strerror(e));
        }
        if (close(fd) != 0 && rc == LOOM_OK) rc = loom_error(LOOM_EIO, "cannot close %s: %s", tmp, strerror(errno));
        if (rc == LOOM_OK && rename(tmp, path) != 0)
            rc = loom_error(LOOM_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        if (rc != LOOM_OK) unlink(tmp);
    }
    if (rc == LOOM_OK) {
        /* make the rename itself durable; a directory that cannot be synced is not an error */
        char *dir = loom_strdup(path);
        if (dir) {
            char *slash = strrchr(dir, '/');
            if (slash)
                slash[slash == dir] = 0;
            else
                strcpy(dir, ".");
            int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
            loom_free(dir);
        }
    }
    loom_free(tmp);
    loom_free(header);
    return rc;
}
