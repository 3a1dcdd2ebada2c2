/* loom gguf: reading and writing GGUF v3, the single-file model format of ggml and llama.cpp.
 *
 * Format (every integer and float little-endian):
 *   u32 magic 0x46554747 ("GGUF")   u32 version (3; 2 is read too)
 *   u64 tensor_count                u64 kv_count
 *   kv_count key/values:            string key, u32 value type, value
 *   tensor_count tensor infos:      string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset
 *   padding to general.alignment (default 32), then the data section
 * A string is u64 length + that many bytes (UTF-8, no NUL). An array value is u32 element type,
 * u64 count, then the elements. ne[0] is the fastest-varying dimension: a C-order [rows, cols]
 * matrix has ne = {cols, rows}. Each tensor's offset is relative to the data section and a multiple
 * of the alignment; its bytes are ne[1]*ne[2]*ne[3] rows of ne[0] elements in the type's blocks.
 *
 * Types (ggml's numbering): F32, F16 (IEEE half), BF16, and Q8_0: blocks of 32 values stored as an
 * fp16 scale d followed by 32 int8 q (34 bytes), value = d * q, quantized as ggml's reference does
 * (d = max|x| / 127, q = round(x / d)).
 *
 * Reading maps the file read-only and validates all of it on open: magic and version, every count and
 * length against the bytes left and the limits below, value types, no duplicate keys or tensor names,
 * dimensions, tensor types, offsets aligned, inside the data section and not overlapping. A key or a
 * tensor handed out is therefore always in bounds.
 *
 *     loom_gguf *g;
 *     if (loom_gguf_open(&g, "model.gguf") != LOOM_OK) return -1;   // loom_errmsg() says why
 *     uint32_t L;  loom_gguf_get_u32(g, "llama.block_count", &L);
 *     const loom_gguf_tensor *t = loom_gguf_find_tensor(g, "token_embd.weight");
 *     float *w = loom_alloc(t->numel * sizeof(float));
 *     loom_gguf_tensor_to_f32(t, w, t->numel);
 *     loom_gguf_close(g);
 *
 * Writing collects key/values (copied) and references to caller-owned tensor data (until write):
 *
 *     loom_gguf_writer *w;   loom_gguf_writer_create(&w);
 *     loom_gguf_set_str(w, "general.architecture", "llama");
 *     int64_t ne[2] = {64, 512};                                  // 512 rows of 64
 *     loom_gguf_writer_add_f32(w, "token_embd.weight", LOOM_GGML_Q8_0, 2, ne, emb);
 *     loom_gguf_writer_write(w, "out.gguf");                      // atomic
 *     loom_gguf_writer_free(w);
 */
#ifndef LOOM_GGUF_H
#define LOOM_GGUF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Value types of key/values (GGUF numbering). */
typedef enum {
    LOOM_GGUF_UINT8 = 0,
    LOOM_GGUF_INT8 = 1,
    LOOM_GGUF_UINT16 = 2,
    LOOM_GGUF_INT16 = 3,
    LOOM_GGUF_UINT32 = 4,
    LOOM_GGUF_INT32 = 5,
    LOOM_GGUF_FLOAT32 = 6,
    LOOM_GGUF_BOOL = 7,
    LOOM_GGUF_STRING = 8,
    LOOM_GGUF_ARRAY = 9,
    LOOM_GGUF_UINT64 = 10,
    LOOM_GGUF_INT64 = 11,
    LOOM_GGUF_FLOAT64 = 12,
} loom_gguf_vtype;
#define LOOM_GGUF_VTYPE_COUNT 13

/* Tensor types loom reads and writes (ggml numbering; other ggml types are refused). */
typedef enum {
    LOOM_GGML_F32 = 0,
    LOOM_GGML_F16 = 1,
    LOOM_GGML_Q8_0 = 8,
    LOOM_GGML_BF16 = 30,
} loom_ggml_type;

#define LOOM_GGUF_MAGIC 0x46554747u
#define LOOM_GGUF_VERSION 3u
#define LOOM_GGUF_DEFAULT_ALIGNMENT 32u
#define LOOM_GGUF_MAX_DIMS 4
#define LOOM_GGML_QK8_0 32 /* values per Q8_0 block */
/* Limits on what a file may declare (llama.cpp's own files are far below them). */
#define LOOM_GGUF_MAX_NAME 64                /* tensor name bytes, as ggml's GGML_MAX_NAME (incl. NUL) */
#define LOOM_GGUF_MAX_KEY 65535u             /* key bytes */
#define LOOM_GGUF_MAX_KV 65536u              /* key/values */
#define LOOM_GGUF_MAX_TENSORS 1048576u       /* tensors */
#define LOOM_GGUF_MAX_ARRAY (1u << 28)       /* elements of one array */
#define LOOM_GGUF_MAX_STRING (1u << 28)      /* bytes of one string value */
#define LOOM_GGUF_MAX_ALIGNMENT 65536u

/* "f32", "f16", "bf16", "q8_0"; "?" outside the enum. */
const char *loom_ggml_type_name(loom_ggml_type t);
/* Parses those names (case-insensitive) into *t; LOOM_EUNSUPPORTED for anything else. */
int loom_ggml_type_parse(const char *name, loom_ggml_type *t);
/* Values per block (1, or 32 for Q8_0) and bytes per block (4, 2, 2, 34); 0 for an unknown type. */
size_t loom_ggml_block_size(loom_ggml_type t);
size_t loom_ggml_type_size(loom_ggml_type t);
/* Bytes of n values (n must be a multiple of the block size; else 0). */
size_t loom_ggml_nbytes(loom_ggml_type t, size_t n);
/* float <-> type for n values (n a multiple of the block size, else LOOM_EINVAL). F16/BF16 round to
 * nearest even (loom/half.h); Q8_0 as ggml's quantize_row_q8_0_ref. src and dst must not overlap. */
int loom_ggml_from_f32(loom_ggml_type t, void *dst, const float *src, size_t n);
int loom_ggml_to_f32(loom_ggml_type t, float *dst, const void *src, size_t n);

/* ---- reading ---- */
typedef struct {
    const char *key;      /* NUL-terminated */
    size_t key_len;
    loom_gguf_vtype type;
    loom_gguf_vtype arr_type; /* element type when type is ARRAY (never ARRAY itself: nested arrays are refused) */
    size_t n;             /* elements of an array; 1 for a scalar */
} loom_gguf_kv;

typedef struct {
    const char *name;     /* NUL-terminated */
    loom_ggml_type type;
    int ndim;             /* 1..4 */
    int64_t ne[LOOM_GGUF_MAX_DIMS]; /* ne[0] fastest; entries past ndim are 1 */
    size_t numel;
    uint64_t offset;      /* within the data section */
    const void *data;     /* points into the mapping (aligned as the file makes it) */
    size_t nbytes;
} loom_gguf_tensor;

typedef struct loom_gguf loom_gguf;
/* Maps path read-only and validates it. Errors: LOOM_ENOTFOUND (no such file), LOOM_EIO, LOOM_EFORMAT
 * (malformed; the message names the file and the key or tensor), LOOM_EUNSUPPORTED (a tensor type or
 * version loom does not read; the message names it), LOOM_ENOMEM. */
int loom_gguf_open(loom_gguf **out, const char *path);
/* The same over bytes in memory (referenced, not copied: they must outlive the handle). name is used
 * in messages (may be NULL). */
int loom_gguf_open_memory(loom_gguf **out, const void *data, size_t len, const char *name);
void loom_gguf_close(loom_gguf *g); /* accepts NULL */
const char *loom_gguf_path(const loom_gguf *g);
uint32_t loom_gguf_version(const loom_gguf *g);
size_t loom_gguf_alignment(const loom_gguf *g);

size_t loom_gguf_kv_count(const loom_gguf *g);
const loom_gguf_kv *loom_gguf_kv_at(const loom_gguf *g, size_t i); /* file order; NULL past the end */
int loom_gguf_find_kv(const loom_gguf *g, const char *key);       /* index or -1 */
/* Typed scalar getters. LOOM_ENOTFOUND when the key is absent, LOOM_EFORMAT (naming the file and the
 * key) when its type does not fit: get_u32 / get_i64 take any integer type whose value fits, get_f32
 * FLOAT32 or FLOAT64 (or an integer), get_bool BOOL, get_str STRING (*s NUL-terminated, owned by g;
 * len may be NULL; a string may hold NUL bytes, len counts them). */
int loom_gguf_get_u32(const loom_gguf *g, const char *key, uint32_t *v);
int loom_gguf_get_i64(const loom_gguf *g, const char *key, int64_t *v);
int loom_gguf_get_f32(const loom_gguf *g, const char *key, float *v);
int loom_gguf_get_bool(const loom_gguf *g, const char *key, int *v);
int loom_gguf_get_str(const loom_gguf *g, const char *key, const char **s, size_t *len);
/* Arrays: element i of key/value kv (an index). arr_str for STRING arrays (*s NUL-terminated, owned by g;
 * len may be NULL), arr_f32 for FLOAT32/FLOAT64,
 * arr_i64 for integer and BOOL arrays; LOOM_EFORMAT on a type mismatch, LOOM_ERANGE past the end. */
int loom_gguf_arr_str(const loom_gguf *g, int kv, size_t i, const char **s, size_t *len);
int loom_gguf_arr_f32(const loom_gguf *g, int kv, size_t i, float *v);
int loom_gguf_arr_i64(const loom_gguf *g, int kv, size_t i, int64_t *v);

size_t loom_gguf_tensor_count(const loom_gguf *g);
const loom_gguf_tensor *loom_gguf_tensor_at(const loom_gguf *g, size_t i); /* file order; NULL past the end */
const loom_gguf_tensor *loom_gguf_find_tensor(const loom_gguf *g, const char *name); /* NULL if absent */
/* Copies a tensor into dst[n] as floats (n must equal numel, else LOOM_EINVAL). */
int loom_gguf_tensor_to_f32(const loom_gguf_tensor *t, float *dst, size_t n);

/* ---- writing ----
 * Keys keep the order they were first set in; setting a key again replaces its value. Tensors are
 * written in add order, each at the next aligned offset. Write is atomic (temp file + fsync + rename);
 * the writer may be written again after more additions. */
typedef struct loom_gguf_writer loom_gguf_writer;
int loom_gguf_writer_create(loom_gguf_writer **out);
void loom_gguf_writer_free(loom_gguf_writer *w); /* accepts NULL */
/* Alignment of the data (a power of two up to LOOM_GGUF_MAX_ALIGNMENT; 32 unless set), also written
 * as the key general.alignment. */
int loom_gguf_writer_set_alignment(loom_gguf_writer *w, uint32_t alignment);
int loom_gguf_set_u32(loom_gguf_writer *w, const char *key, uint32_t v);
int loom_gguf_set_i32(loom_gguf_writer *w, const char *key, int32_t v);
int loom_gguf_set_u64(loom_gguf_writer *w, const char *key, uint64_t v);
int loom_gguf_set_f32(loom_gguf_writer *w, const char *key, float v);
int loom_gguf_set_bool(loom_gguf_writer *w, const char *key, int v);
int loom_gguf_set_str(loom_gguf_writer *w, const char *key, const char *s);
/* An array of n fixed-size values of type t (not STRING or ARRAY): data holds n little-endian values
 * of that type (BOOL: one byte each); copied. */
int loom_gguf_set_arr(loom_gguf_writer *w, const char *key, loom_gguf_vtype t, const void *data, size_t n);
/* An array of n strings (copied); lens may be NULL for NUL-terminated strings. */
int loom_gguf_set_arr_str(loom_gguf_writer *w, const char *key, const char *const *s, const size_t *lens, size_t n);
/* A tensor of type t whose bytes (loom_ggml_nbytes(t, numel)) are already in that type; referenced
 * until write. ndim 1..4, ne[i] >= 1, ne[0] a multiple of the block size; names unique, shorter than
 * LOOM_GGUF_MAX_NAME bytes. */
int loom_gguf_writer_add(loom_gguf_writer *w, const char *name, loom_ggml_type t, int ndim, const int64_t *ne,
                         const void *data);
/* A float tensor stored as t (converted at write time); data referenced until write. */
int loom_gguf_writer_add_f32(loom_gguf_writer *w, const char *name, loom_ggml_type t, int ndim, const int64_t *ne,
                             const float *data);
size_t loom_gguf_writer_tensor_count(const loom_gguf_writer *w);
int loom_gguf_writer_write(loom_gguf_writer *w, const char *path);
/* Serialises into a new buffer (release with loom_free); the same bytes as write. */
int loom_gguf_writer_serialize(loom_gguf_writer *w, void **data, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
