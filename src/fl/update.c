/* The update message: encode and decode (format in include/loom/update.h). The body is a safetensors
 * file written by loom_st_writer and read by loom_st_open_memory; this file adds the codecs and the
 * checks of the metadata and the tensors. */
#include "loom/update.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/half.h"
#include "loom/safetensors.h"

#define MSG "update message"

const char *loom_codec_name(loom_codec c) {
    switch (c) {
    case LOOM_CODEC_F32: return "f32";
    case LOOM_CODEC_F16: return "f16";
    case LOOM_CODEC_INT8: return "int8";
    case LOOM_CODEC_TOPK: return "topk";
    case LOOM_CODEC_SEED_SCALAR: return "seed_scalar";
    }
    return "?";
}

size_t loom_codec_topk_k(size_t dim, double frac) {
    if (dim == 0) return 0;
    double k = ceil(frac * (double)dim);
    if (!(k >= 1)) return 1;
    return k >= (double)dim ? dim : (size_t)k;
}

int loom_codec_opts_parse(const char *spec, loom_codec_opts *o) {
    memset(o, 0, sizeof *o);
    o->codec = LOOM_CODEC_F32;
    if (!spec) return loom_error(LOOM_EINVAL, "--compress: no value (none, fp16, int8[:CHUNK], topk[:FRAC])");
    const char *colon = strchr(spec, ':');
    size_t nl = colon ? (size_t)(colon - spec) : strlen(spec);
    const char *arg = colon ? colon + 1 : NULL;
#define IS(s) (nl == strlen(s) && !strncmp(spec, s, nl))
    if ((IS("none") || IS("f32") || IS("fp16") || IS("f16")) && arg)
        return loom_error(LOOM_EINVAL, "--compress %s: %.*s takes no parameter", spec, (int)nl, spec);
    if (IS("none") || IS("f32")) return LOOM_OK;
    if (IS("fp16") || IS("f16")) {
        o->codec = LOOM_CODEC_F16;
        return LOOM_OK;
    }
    if (IS("int8")) {
        o->codec = LOOM_CODEC_INT8;
        o->chunk = LOOM_CODEC_CHUNK_DEFAULT;
        if (!arg) return LOOM_OK;
        char *end = NULL;
        long c = strtol(arg, &end, 10);
        if (!*arg || *end || c < 1 || c > INT_MAX || arg[0] == '+' || arg[0] == '-' || arg[0] == ' ')
            return loom_error(LOOM_EINVAL, "--compress %s: the int8 chunk must be a whole number >= 1", spec);
        o->chunk = (int)c;
        return LOOM_OK;
    }
    if (IS("topk")) {
        o->codec = LOOM_CODEC_TOPK;
        o->topk_frac = LOOM_CODEC_TOPK_DEFAULT;
        if (!arg) return LOOM_OK;
        char *end = NULL;
        double f = strtod(arg, &end);
        if (!*arg || *end || arg[0] == ' ' || !(f > 0 && f <= 1))
            return loom_error(LOOM_EINVAL, "--compress %s: the top-k share must be a number in (0, 1]", spec);
        o->topk_frac = f;
        return LOOM_OK;
    }
#undef IS
    return loom_error(LOOM_EINVAL, "--compress %s: unknown codec (none, fp16, int8[:CHUNK], topk[:FRAC])", spec);
}

/* ------------------------------------------------------------------ the message's layout */

/* Options with the defaults filled in and checked, and what follows from them for dim values. */
typedef struct {
    loom_codec codec;
    size_t chunk, scales; /* INT8 */
    size_t k;             /* TOPK, SEED_SCALAR */
} plan;

/* seed_scalar keeps the values that are not +0 (a -0 is kept, so decoding gives the same bits) */
static inline int ss_kept(float v) { return v != 0 || signbit(v); }

/* The part of the plan that depends on the values: seed_scalar's count of kept values. */
static void plan_values(plan *p, const float *v, size_t dim) {
    if (p->codec != LOOM_CODEC_SEED_SCALAR) return;
    p->k = 0;
    for (size_t i = 0; i < dim; i++) p->k += ss_kept(v[i]);
}

static int make_plan(const loom_codec_opts *o, size_t dim, plan *p) {
    memset(p, 0, sizeof *p);
    p->codec = o ? o->codec : LOOM_CODEC_F32;
    switch (p->codec) {
    case LOOM_CODEC_F32:
    case LOOM_CODEC_F16: return LOOM_OK;
    case LOOM_CODEC_INT8:
        if (o->chunk < 0) return loom_error(LOOM_EINVAL, "update codec int8: chunk %d must be >= 1", o->chunk);
        p->chunk = o->chunk ? (size_t)o->chunk : LOOM_CODEC_CHUNK_DEFAULT;
        p->scales = dim / p->chunk + (dim % p->chunk != 0);
        return LOOM_OK;
    case LOOM_CODEC_TOPK: {
        double fr = o->topk_frac == 0 ? LOOM_CODEC_TOPK_DEFAULT : o->topk_frac;
        if (!(fr > 0 && fr <= 1)) return loom_error(LOOM_EINVAL, "update codec topk: share %g must be in (0, 1]", fr);
        if (dim > (size_t)INT32_MAX)
            return loom_error(LOOM_ERANGE, "update codec topk: %zu values do not fit 32-bit indices", dim);
        p->k = loom_codec_topk_k(dim, fr);
        return LOOM_OK;
    }
    case LOOM_CODEC_SEED_SCALAR: /* k: the non-zero values, counted by plan_values */
        if (dim > (size_t)INT32_MAX)
            return loom_error(LOOM_ERANGE, "update codec seed_scalar: %zu seeds do not fit 32-bit indices", dim);
        return LOOM_OK;
    default: break;
    }
    return loom_error(LOOM_EUNSUPPORTED, "update codec %s (%d) cannot be encoded", loom_codec_name(p->codec),
                      (int)p->codec);
}

enum { MAX_META = 12, MAX_TENSORS = 3, VAL_LEN = 40 };

typedef struct {
    const char *key;
    char val[VAL_LEN];
} meta_kv;

typedef struct {
    const char *name;
    loom_dtype dt;
    size_t numel;
} tensor_desc;

/* The metadata entries in their written order. */
static int layout_meta(const loom_update *u, const plan *p, meta_kv *m) {
    int n = 0;
#define PUT(k, ...) (m[n].key = k, snprintf(m[n].val, VAL_LEN, __VA_ARGS__), n++)
    PUT("loom_update", "%d", LOOM_UPDATE_FORMAT);
    PUT("run_id", "%016llx", (unsigned long long)u->run_id);
    PUT("round", "%d", u->round);
    PUT("version", "%llu", (unsigned long long)u->version);
    PUT("client", "%d", u->client);
    PUT("examples", "%llu", (unsigned long long)u->examples);
    PUT("loss", "%.17g", u->loss);
    PUT("tokens", "%lld", (long long)u->tokens);
    PUT("codec", "%s", loom_codec_name(p->codec));
    PUT("dim", "%zu", u->len);
    if (p->codec == LOOM_CODEC_INT8) PUT("chunk", "%zu", p->chunk);
    if (p->codec == LOOM_CODEC_TOPK || p->codec == LOOM_CODEC_SEED_SCALAR) PUT("k", "%zu", p->k);
#undef PUT
    return n;
}

/* The tensors in their written order (their data is added by encode). */
static int layout_tensors(const plan *p, size_t dim, int control, tensor_desc *t) {
    int n = 0;
    switch (p->codec) {
    case LOOM_CODEC_F32: t[n++] = (tensor_desc){"update", LOOM_DT_F32, dim}; break;
    case LOOM_CODEC_F16: t[n++] = (tensor_desc){"update", LOOM_DT_F16, dim}; break;
    case LOOM_CODEC_INT8:
        t[n++] = (tensor_desc){"update.q", LOOM_DT_I8, dim};
        t[n++] = (tensor_desc){"update.scale", LOOM_DT_F32, p->scales};
        break;
    case LOOM_CODEC_TOPK:
        t[n++] = (tensor_desc){"update.index", LOOM_DT_I32, p->k};
        t[n++] = (tensor_desc){"update.value", LOOM_DT_F32, p->k};
        break;
    case LOOM_CODEC_SEED_SCALAR:
        t[n++] = (tensor_desc){"update.seed", LOOM_DT_I32, p->k};
        t[n++] = (tensor_desc){"update.scalar", LOOM_DT_F32, p->k};
        break;
    default: break;
    }
    if (control) t[n++] = (tensor_desc){"control", LOOM_DT_F32, dim};
    return n;
}

static int check_update(const loom_update *u) {
    if (!u) return loom_error(LOOM_EINVAL, "update encode: NULL update");
    if (u->round < 0 || u->client < 0)
        return loom_error(LOOM_EINVAL, "update encode: round %d and client %d must be >= 0", u->round, u->client);
    if (u->examples < 1 || u->examples > UINT32_MAX)
        return loom_error(LOOM_EINVAL, "update encode: examples %llu must be in 1..2^32-1",
                          (unsigned long long)u->examples);
    if (u->tokens < 0) return loom_error(LOOM_EINVAL, "update encode: tokens %lld must be >= 0", (long long)u->tokens);
    if (!isfinite(u->loss)) return loom_error(LOOM_EINVAL, "update encode: loss %g is not finite", u->loss);
    if (u->len && !u->values) return loom_error(LOOM_EINVAL, "update encode: update without values");
    return LOOM_OK;
}

size_t loom_update_encoded_size(const loom_update *u, const loom_codec_opts *o) {
    plan p;
    if (!u || make_plan(o, u->len, &p) != LOOM_OK) return 0;
    if (p.codec == LOOM_CODEC_SEED_SCALAR && u->len && !u->values) return 0;
    plan_values(&p, u->values, u->len);
    meta_kv m[MAX_META];
    tensor_desc t[MAX_TENSORS];
    int nm = layout_meta(u, &p, m), nt = layout_tensors(&p, u->len, u->control != NULL, t);
    /* the header loom_st_writer writes: compact JSON, metadata first, tensors in order, then spaces
     * up to a multiple of 8 (the tests compare this with what encode produces) */
    size_t h = 2 + strlen("\"__metadata__\":{}");
    for (int i = 0; i < nm; i++) h += strlen(m[i].key) + strlen(m[i].val) + 5 + (i > 0);
    size_t off = 0;
    for (int i = 0; i < nt; i++) {
        size_t bytes = t[i].numel * loom_dtype_size(t[i].dt);
        char e[256];
        h += 1 + (size_t)snprintf(e, sizeof e, "\"%s\":{\"dtype\":\"%s\",\"shape\":[%zu],\"data_offsets\":[%zu,%zu]}",
                                  t[i].name, loom_dtype_name(t[i].dt), t[i].numel, off, off + bytes);
        off += bytes;
    }
    return 8 + ((h + 7) & ~(size_t)7) + off;
}

/* ------------------------------------------------------------------ encode */

static int check_finite(const float *v, size_t n, const char *codec) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return loom_error(LOOM_ERANGE, "update encode: value %zu is %s: the %s codec carries finite values only",
                              i, isnan(v[i]) ? "NaN" : "infinite", codec);
    return LOOM_OK;
}

/* scale = amax / 127 (a float division): then fl(fl(127 * scale) / 127) == scale for every finite
 * scale (checked exhaustively over the floats), so encoding the decoded values again gives the same
 * scales and q: what loom_client_compress accounts for is what the server receives. */
static void int8_encode(const float *v, size_t dim, size_t chunk, int8_t *q, float *scale) {
    for (size_t c = 0, b = 0; b < dim; c++, b += chunk) {
        size_t e = b + chunk < dim ? b + chunk : dim;
        float amax = 0;
        for (size_t i = b; i < e; i++) amax = fmaxf(amax, fabsf(v[i]));
        float s = amax / 127.0f;
        scale[c] = s;
        for (size_t i = b; i < e; i++) {
            double r = s > 0 ? rint((double)v[i] / (double)s) : 0;
            q[i] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
        }
    }
}

/* Orders coordinates by |v| descending, then index ascending: a larger key ranks first. The bits of
 * a finite non-negative float order like its value. */
static inline uint64_t topk_key(const float *v, size_t i) {
    float a = fabsf(v[i]);
    uint32_t b;
    memcpy(&b, &a, 4);
    return (uint64_t)b << 32 | (uint32_t)(UINT32_MAX - (uint32_t)i);
}

static inline void swap64(uint64_t *a, size_t i, size_t j) {
    uint64_t t = a[i];
    a[i] = a[j];
    a[j] = t;
}

/* The k-th largest of n distinct keys (1 <= k <= n), by quickselect with a median-of-three pivot;
 * keys is reordered. */
static uint64_t kth_largest(uint64_t *a, size_t n, size_t k) {
    size_t lo = 0, hi = n - 1, want = k - 1; /* want: the position in descending order */
    for (;;) {
        if (lo == hi) return a[lo];
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] > a[hi]) swap64(a, mid, hi);
        if (a[lo] > a[hi]) swap64(a, lo, hi);
        if (a[mid] > a[lo]) swap64(a, mid, lo); /* now a[mid] <= a[lo] <= a[hi]: the median is a[lo] */
        swap64(a, lo, hi);                      /* pivot at hi */
        uint64_t piv = a[hi];
        size_t s = lo;
        for (size_t i = lo; i < hi; i++)
            if (a[i] > piv) swap64(a, i, s++);
        swap64(a, s, hi); /* a[lo..s) > piv = a[s] > a(s..hi] */
        if (want == s) return a[s];
        if (want < s) hi = s - 1;
        else lo = s + 1;
    }
}

static int topk_encode(const float *v, size_t dim, size_t k, int32_t *idx, float *val) {
    if (k == 0) return LOOM_OK;
    uint64_t thr = 0;
    if (k < dim) {
        uint64_t *keys = malloc(dim * sizeof *keys);
        if (!keys) return loom_error(LOOM_ENOMEM, "update encode: out of memory for top-k of %zu values", dim);
        for (size_t i = 0; i < dim; i++) keys[i] = topk_key(v, i);
        thr = kth_largest(keys, dim, k);
        free(keys);
    }
    size_t j = 0;
    for (size_t i = 0; i < dim && j < k; i++)
        if (k == dim || topk_key(v, i) >= thr) {
            idx[j] = (int32_t)i;
            val[j] = v[i];
            j++;
        }
    return LOOM_OK;
}

int loom_update_encode(const loom_update *u, const loom_codec_opts *o, uint8_t **buf, size_t *n) {
    *buf = NULL;
    *n = 0;
    int rc = check_update(u);
    if (rc != LOOM_OK) return rc;
    plan p;
    if ((rc = make_plan(o, u->len, &p)) != LOOM_OK) return rc;
    size_t dim = u->len;
    plan_values(&p, u->values, dim);
    const char *cname = loom_codec_name(p.codec);
    if (p.codec != LOOM_CODEC_F32 && (rc = check_finite(u->values, dim, cname)) != LOOM_OK) return rc;
    if (p.codec == LOOM_CODEC_F16)
        for (size_t i = 0; i < dim; i++)
            if (fabsf(u->values[i]) >= 65520.0f)
                return loom_error(LOOM_ERANGE, "update encode: value %zu (%g) is beyond the f16 range (65504)", i,
                                  (double)u->values[i]);
    meta_kv m[MAX_META];
    tensor_desc t[MAX_TENSORS];
    int nm = layout_meta(u, &p, m), nt = layout_tensors(&p, dim, u->control != NULL, t);
    /* the codec's payload arrays */
    void *a = NULL, *b = NULL;
    if (p.codec == LOOM_CODEC_INT8) {
        a = malloc(dim ? dim : 1);
        b = malloc((p.scales ? p.scales : 1) * sizeof(float));
        if (a && b) int8_encode(u->values, dim, p.chunk, a, b);
    } else if (p.codec == LOOM_CODEC_TOPK) {
        a = malloc((p.k ? p.k : 1) * sizeof(int32_t));
        b = malloc((p.k ? p.k : 1) * sizeof(float));
        if (a && b && (rc = topk_encode(u->values, dim, p.k, a, b)) != LOOM_OK) goto done;
    } else if (p.codec == LOOM_CODEC_SEED_SCALAR) { /* the kept values as (seed index, scalar), ascending */
        a = malloc((p.k ? p.k : 1) * sizeof(int32_t));
        b = malloc((p.k ? p.k : 1) * sizeof(float));
        for (size_t i = 0, j = 0; a && b && i < dim; i++)
            if (ss_kept(u->values[i])) {
                ((int32_t *)a)[j] = (int32_t)i;
                ((float *)b)[j++] = u->values[i];
            }
    }
    if ((p.codec == LOOM_CODEC_INT8 || p.codec == LOOM_CODEC_TOPK || p.codec == LOOM_CODEC_SEED_SCALAR) && (!a || !b)) {
        rc = loom_error(LOOM_ENOMEM, "update encode: out of memory for %zu values", dim);
        goto done;
    }
    loom_st_writer *w = NULL;
    if ((rc = loom_st_writer_create(&w)) != LOOM_OK) goto done;
    for (int i = 0; i < nm && rc == LOOM_OK; i++) rc = loom_st_writer_meta(w, m[i].key, m[i].val);
    int64_t s0[1] = {(int64_t)t[0].numel}, s1[1] = {(int64_t)(nt > 1 ? t[1].numel : 0)}, sd[1] = {(int64_t)dim};
    if (rc == LOOM_OK) {
        if (p.codec == LOOM_CODEC_F32 || p.codec == LOOM_CODEC_F16) {
            rc = loom_st_writer_add_f32(w, t[0].name, t[0].dt, 1, s0, u->values); /* F16: converted (RNE) */
        } else {
            rc = loom_st_writer_add(w, t[0].name, t[0].dt, 1, s0, a);
            if (rc == LOOM_OK) rc = loom_st_writer_add(w, t[1].name, t[1].dt, 1, s1, b);
        }
    }
    if (rc == LOOM_OK && u->control) rc = loom_st_writer_add(w, "control", LOOM_DT_F32, 1, sd, u->control);
    void *out = NULL;
    size_t len = 0;
    if (rc == LOOM_OK) rc = loom_st_writer_serialize(w, &out, &len);
    loom_st_writer_free(w);
    if (rc == LOOM_OK) {
        *buf = out;
        *n = len;
    }
done:
    free(a);
    free(b);
    return rc;
}

/* ------------------------------------------------------------------ decode */

/* A plain decimal (digits only, no leading zeros) <= max. */
static int parse_dec(const char *s, uint64_t max, uint64_t *v) {
    if (!s || !*s || (s[0] == '0' && s[1])) return 0;
    uint64_t x = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return 0;
        unsigned d = (unsigned)(*s - '0');
        if (x > (UINT64_MAX - d) / 10) return 0;
        x = x * 10 + d;
    }
    if (x > max) return 0;
    *v = x;
    return 1;
}

static int parse_hex(const char *s, uint64_t *v) {
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 16) return 0;
    uint64_t x = 0;
    for (; *s; s++) {
        int d = *s >= '0' && *s <= '9' ? *s - '0' : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10 : *s >= 'A' && *s <= 'F' ? *s - 'A' + 10 : -1;
        if (d < 0) return 0;
        x = x << 4 | (uint64_t)d;
    }
    *v = x;
    return 1;
}

static int parse_loss(const char *s, double *v) {
    if (!s || !*s || strspn(s, "0123456789+-.eE") != strlen(s)) return 0;
    char *end = NULL;
    double x = strtod(s, &end);
    if (*end || !isfinite(x)) return 0;
    *v = x;
    return 1;
}

static const char *const BASE_KEYS[] = {"loom_update", "run_id", "round", "version", "client",
                                        "examples",    "loss",   "tokens", "codec",  "dim"};
#define N_BASE_KEYS (sizeof BASE_KEYS / sizeof BASE_KEYS[0])

static int decode_file(const loom_st_file *f, size_t max_len, loom_update *out, float *values, float *control) {
    const char *fmt = loom_st_meta(f, "loom_update");
    if (!fmt) return loom_error(LOOM_EFORMAT, MSG ": no loom_update metadata (not an update message)");
    if (strcmp(fmt, "1"))
        return loom_error(LOOM_EFORMAT, MSG " format %.20s is not supported (this build reads %d)", fmt,
                          LOOM_UPDATE_FORMAT);
    const char *cs = loom_st_meta(f, "codec");
    if (!cs) return loom_error(LOOM_EFORMAT, MSG ": metadata key 'codec' is missing");
    loom_codec codec;
    if (!strcmp(cs, "f32")) codec = LOOM_CODEC_F32;
    else if (!strcmp(cs, "f16")) codec = LOOM_CODEC_F16;
    else if (!strcmp(cs, "int8")) codec = LOOM_CODEC_INT8;
    else if (!strcmp(cs, "topk")) codec = LOOM_CODEC_TOPK;
    else if (!strcmp(cs, "seed_scalar")) codec = LOOM_CODEC_SEED_SCALAR;
    else return loom_error(LOOM_EUNSUPPORTED, MSG ": codec '%.20s' is not supported (f32, f16, int8, topk, seed_scalar)", cs);
    const char *extra = codec == LOOM_CODEC_INT8 ? "chunk" : codec == LOOM_CODEC_TOPK || codec == LOOM_CODEC_SEED_SCALAR ? "k" : NULL;
    size_t want = N_BASE_KEYS + (extra != NULL);
    for (size_t i = 0; i < N_BASE_KEYS; i++)
        if (!loom_st_meta(f, BASE_KEYS[i]))
            return loom_error(LOOM_EFORMAT, MSG ": metadata key '%s' is missing", BASE_KEYS[i]);
    if (extra && !loom_st_meta(f, extra))
        return loom_error(LOOM_EFORMAT, MSG ": metadata key '%s' is missing (codec %s)", extra, cs);
    if (loom_st_meta_count(f) != want)
        for (size_t i = 0; i < loom_st_meta_count(f); i++) {
            const char *k, *v;
            loom_st_meta_at(f, i, &k, &v);
            int known = extra && !strcmp(k, extra);
            for (size_t j = 0; j < N_BASE_KEYS && !known; j++) known = !strcmp(k, BASE_KEYS[j]);
            if (!known) return loom_error(LOOM_EFORMAT, MSG ": unexpected metadata key '%.64s' (codec %s)", k, cs);
        }

    uint64_t run_id, round, version, client, examples, tokens, dim, chunk = 0, k = 0;
    double loss;
#define FIELD(ok, key, what)                                                                                      \
    if (!(ok))                                                                                                    \
        return loom_error(LOOM_EFORMAT, MSG ": %s '%.40s' is not " what, key, loom_st_meta(f, key));
    FIELD(parse_hex(loom_st_meta(f, "run_id"), &run_id), "run_id", "1 to 16 hex digits");
    FIELD(parse_dec(loom_st_meta(f, "round"), INT_MAX, &round), "round", "a whole number in 0..2^31-1");
    FIELD(parse_dec(loom_st_meta(f, "version"), UINT64_MAX, &version), "version", "a whole number in 0..2^64-1");
    FIELD(parse_dec(loom_st_meta(f, "client"), INT_MAX, &client), "client", "a whole number in 0..2^31-1");
    FIELD(parse_dec(loom_st_meta(f, "examples"), UINT32_MAX, &examples) && examples >= 1, "examples",
          "a whole number in 1..2^32-1");
    FIELD(parse_loss(loom_st_meta(f, "loss"), &loss), "loss", "a finite number");
    FIELD(parse_dec(loom_st_meta(f, "tokens"), INT64_MAX, &tokens), "tokens", "a whole number in 0..2^63-1");
    FIELD(parse_dec(loom_st_meta(f, "dim"), UINT64_MAX, &dim), "dim", "a whole number");
    if (codec == LOOM_CODEC_INT8)
        FIELD(parse_dec(loom_st_meta(f, "chunk"), INT_MAX, &chunk) && chunk >= 1, "chunk",
              "a whole number in 1..2^31-1");
    if (codec == LOOM_CODEC_TOPK || codec == LOOM_CODEC_SEED_SCALAR)
        FIELD(parse_dec(loom_st_meta(f, "k"), UINT64_MAX, &k), "k", "a whole number");
#undef FIELD
    if (dim > max_len)
        return loom_error(LOOM_ERANGE, MSG ": dim %llu exceeds the limit of %zu values", (unsigned long long)dim,
                          max_len);
    if ((codec == LOOM_CODEC_TOPK || codec == LOOM_CODEC_SEED_SCALAR) && k > dim)
        return loom_error(LOOM_EFORMAT, MSG ": k %llu is above dim %llu", (unsigned long long)k, (unsigned long long)dim);
    if (dim && !values) return loom_error(LOOM_EINVAL, MSG ": no buffer for the values");

    /* the tensors: exactly the codec's, plus an optional control delta */
    plan p = {codec, (size_t)chunk, chunk ? (size_t)(dim / chunk + (dim % chunk != 0)) : 0, (size_t)k};
    const loom_st_tensor *ct = loom_st_find(f, "control");
    if (ct && !control) return loom_error(LOOM_EFORMAT, MSG " carries an unexpected control delta");
    tensor_desc t[MAX_TENSORS];
    int nt = layout_tensors(&p, (size_t)dim, ct != NULL, t);
    const loom_st_tensor *got[MAX_TENSORS];
    for (int i = 0; i < nt; i++) {
        got[i] = loom_st_find(f, t[i].name);
        if (!got[i]) return loom_error(LOOM_EFORMAT, MSG ": tensor '%s' is missing (codec %s)", t[i].name, cs);
        if (got[i]->dtype != t[i].dt || got[i]->ndim != 1 || got[i]->numel != t[i].numel)
            return loom_error(LOOM_EFORMAT, MSG ": tensor '%s' must be %s [%zu] (codec %s, dim %llu)", t[i].name,
                              loom_dtype_name(t[i].dt), t[i].numel, cs, (unsigned long long)dim);
    }
    if (loom_st_count(f) != (size_t)nt)
        for (size_t i = 0; i < loom_st_count(f); i++) {
            const char *nm = loom_st_at(f, i)->name;
            int known = 0;
            for (int j = 0; j < nt && !known; j++) known = !strcmp(nm, t[j].name);
            if (!known) return loom_error(LOOM_EFORMAT, MSG ": unexpected tensor '%.64s' (codec %s)", nm, cs);
        }

    size_t D = (size_t)dim;
    const uint8_t *d0 = got[0]->data;
    switch (codec) {
    case LOOM_CODEC_F32:
    case LOOM_CODEC_F16: {
        int rc = loom_st_to_f32(got[0], values, D);
        if (rc != LOOM_OK) return rc;
        break;
    }
    case LOOM_CODEC_INT8: {
        const uint8_t *sc = got[1]->data;
        for (size_t c = 0; c < p.scales; c++) {
            float s;
            memcpy(&s, sc + 4 * c, 4);
            if (!(isfinite(s) && s >= 0))
                return loom_error(LOOM_EFORMAT, MSG ": int8 scale %zu is %g (must be finite and >= 0)", c, (double)s);
        }
        for (size_t c = 0, b = 0; b < D; c++, b += p.chunk) {
            float s;
            memcpy(&s, sc + 4 * c, 4);
            size_t e = b + p.chunk < D ? b + p.chunk : D;
            for (size_t i = b; i < e; i++) values[i] = (float)(int8_t)d0[i] * s;
        }
        break;
    }
    case LOOM_CODEC_TOPK:
    case LOOM_CODEC_SEED_SCALAR: {
        const uint8_t *vb = got[1]->data;
        int64_t prev = -1;
        for (size_t j = 0; j < p.k; j++) {
            int32_t ix;
            memcpy(&ix, d0 + 4 * j, 4);
            if (ix <= prev || (uint64_t)ix >= dim)
                return loom_error(LOOM_EFORMAT, MSG ": %s index %zu is %d: indices must be ascending, distinct "
                                  "and below dim %llu", codec == LOOM_CODEC_TOPK ? "top-k" : "seed", j, (int)ix,
                                  (unsigned long long)dim);
            prev = ix;
        }
        memset(values, 0, D * sizeof *values);
        for (size_t j = 0; j < p.k; j++) {
            int32_t ix;
            memcpy(&ix, d0 + 4 * j, 4);
            memcpy(&values[ix], vb + 4 * j, 4);
        }
        break;
    }
    default: break;
    }
    if (ct) {
        int rc = loom_st_to_f32(got[nt - 1], control, D);
        if (rc != LOOM_OK) return rc;
    }
    out->run_id = run_id;
    out->round = (int)round;
    out->version = version;
    out->client = (int)client;
    out->examples = examples;
    out->loss = loss;
    out->tokens = (int64_t)tokens;
    out->codec = codec;
    out->len = D;
    out->values = values;
    out->control = ct ? control : NULL;
    return LOOM_OK;
}

int loom_update_decode(const uint8_t *buf, size_t n, size_t max_len, loom_update *out, float *values, float *control) {
    memset(out, 0, sizeof *out);
    if (!buf) return loom_error(LOOM_EFORMAT, MSG ": no bytes");
    loom_st_file *f = NULL;
    int rc = loom_st_open_memory(&f, buf, n, "body");
    if (rc != LOOM_OK) return rc == LOOM_ENOMEM ? rc : loom_error_context(LOOM_EFORMAT, MSG " is not a safetensors file");
    rc = decode_file(f, max_len, out, values, control);
    loom_st_close(f);
    if (rc != LOOM_OK) memset(out, 0, sizeof *out);
    else out->wire_bytes = n;
    return rc;
}
