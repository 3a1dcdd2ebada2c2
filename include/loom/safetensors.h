/* loom safetensors: reading and writing the safetensors tensor file format.
 *
 * Format (all integers little-endian):
 *   u64 N                       header length in bytes
 *   N bytes of UTF-8 JSON       {"__metadata__": {str: str},          (optional)
 *                                name: {"dtype": "F32", "shape": [d0, d1, ...],
 *                                       "data_offsets": [begin, end]}, ...}
 *                               written padded with spaces so that 8 + N is a multiple of 8
 *   data section                raw little-endian C-order tensor bytes; [begin, end) are relative
 *                               to the start of this section and end - begin = numel * dtype size
 * A scalar has shape [] (numel 1); a tensor with a zero in its shape has numel 0 and begin == end.
 *
 * Reading maps the file read-only and validates the whole header on open (types, dtypes, shapes,
 * offsets inside the data section, sizes, no overlapping tensors, no duplicate names), so a tensor
 * handed out is always in bounds. Tensor data points into the mapping: it stays valid until close, is
 * little-endian, and is only as aligned as the file makes it (read values with memcpy or the
 * loom_st_to_* copies, which handle any alignment).
 *
 *     loom_st_file *f;
 *     if (loom_st_open(&f, "model.safetensors") != LOOM_OK) return -1;   // loom_errmsg() says why
 *     const loom_st_tensor *t = loom_st_find(f, "transformer.wte.weight");
 *     float *w = loom_alloc(t->numel * sizeof(float));
 *     loom_st_to_f32(t, w, t->numel);
 *     loom_st_close(f);
 *
 * Writing collects references to caller-owned data and writes the file atomically:
 *
 *     loom_st_writer *w;
 *     loom_st_writer_create(&w);
 *     int64_t shape[2] = {512, 64};
 *     loom_st_writer_add_f32(w, "wte", LOOM_DT_BF16, 2, shape, wte);   // wte must live until write
 *     loom_st_writer_meta(w, "format", "pt");
 *     loom_st_writer_write(w, "out.safetensors");
 *     loom_st_writer_free(w);
 */
#ifndef LOOM_SAFETENSORS_H
#define LOOM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LOOM_DT_F32,
    LOOM_DT_F16,
    LOOM_DT_BF16,
    LOOM_DT_F64,
    LOOM_DT_I64,
    LOOM_DT_I32,
    LOOM_DT_I16,
    LOOM_DT_I8,
    LOOM_DT_U8,
    LOOM_DT_BOOL,
} loom_dtype;
#define LOOM_DT_COUNT 10

size_t loom_dtype_size(loom_dtype dt);        /* bytes per element; 0 for a value outside the enum */
const char *loom_dtype_name(loom_dtype dt);   /* "F32", "BF16", ... as in the format; "?" if invalid */
/* Parses a format name ("F32"...) into *dt; LOOM_EUNSUPPORTED for names loom does not know. */
int loom_dtype_parse(const char *name, loom_dtype *dt);

#define LOOM_ST_MAX_DIMS 8
/* Largest header loom accepts (real headers are kilobytes to a few megabytes). */
#define LOOM_ST_MAX_HEADER (100u * 1024u * 1024u)

typedef struct {
    const char *name;
    loom_dtype dtype;
    int ndim;                         /* 0 for a scalar */
    int64_t shape[LOOM_ST_MAX_DIMS];  /* entries past ndim are 0 */
    size_t numel;                     /* product of shape (1 for a scalar) */
    const void *data;                 /* points into the mapped file; little-endian raw bytes */
    size_t nbytes;                    /* numel * loom_dtype_size(dtype) */
} loom_st_tensor;

/* ---- one file ---- */
typedef struct loom_st_file loom_st_file;
/* Maps `path` read-only and validates it. Errors: LOOM_ENOTFOUND (no such file), LOOM_EIO,
 * LOOM_EFORMAT (malformed; the message names the file and the tensor), LOOM_EUNSUPPORTED (a dtype
 * loom does not know), LOOM_ENOMEM. */
int loom_st_open(loom_st_file **out, const char *path);
/* The same over bytes already in memory (e.g. a received upload). The buffer is referenced, not
 * copied: it must stay unchanged until loom_st_close. `name` is used in messages (may be NULL). */
int loom_st_open_memory(loom_st_file **out, const void *data, size_t len, const char *name);
void loom_st_close(loom_st_file *f);                                         /* accepts NULL */
size_t loom_st_count(const loom_st_file *f);
const loom_st_tensor *loom_st_at(const loom_st_file *f, size_t i);          /* header order; NULL past the end */
const loom_st_tensor *loom_st_find(const loom_st_file *f, const char *name); /* NULL if absent */
const char *loom_st_meta(const loom_st_file *f, const char *key);          /* __metadata__ value or NULL */
size_t loom_st_meta_count(const loom_st_file *f);
/* i-th __metadata__ entry in header order; LOOM_ENOTFOUND past the end. */
int loom_st_meta_at(const loom_st_file *f, size_t i, const char **key, const char **value);
const char *loom_st_path(const loom_st_file *f);                            /* as given to open */
/* The whole file's bytes (the mapping), e.g. to send it unchanged. */
const void *loom_st_bytes(const loom_st_file *f, size_t *len);

/* Copies a tensor into dst converting F32/F16/BF16/F64 to float; n must equal numel (else LOOM_EINVAL).
 * Other dtypes: LOOM_EUNSUPPORTED. */
int loom_st_to_f32(const loom_st_tensor *t, float *dst, size_t n);
/* From I32 or I64 (LOOM_ERANGE if a value does not fit), or the narrower I16/I8/U8/BOOL. */
int loom_st_to_i32(const loom_st_tensor *t, int32_t *dst, size_t n);

/* ---- a model: one file or shards ----
 * path_or_dir is: a directory holding model.safetensors.index.json ({"weight_map": {name: shard file}},
 * shards relative to the index) or model.safetensors; a path to such an index file; or a path to a
 * single .safetensors file. Every tensor of every file belongs to the set; a name in two files, a
 * shard named by the index but missing, or a tensor the index places in a shard that lacks it is an
 * error. Lookup is by name across all files. */
typedef struct loom_st_set loom_st_set;
int loom_st_set_open(loom_st_set **out, const char *path_or_dir);
void loom_st_set_close(loom_st_set *s);                                      /* accepts NULL */
const loom_st_tensor *loom_st_set_find(const loom_st_set *s, const char *name);
size_t loom_st_set_count(const loom_st_set *s);
const loom_st_tensor *loom_st_set_at(const loom_st_set *s, size_t i);      /* files in order, then header order */
size_t loom_st_set_file_count(const loom_st_set *s);
const loom_st_file *loom_st_set_file(const loom_st_set *s, size_t i);

/* ---- writer ----
 * Tensors are referenced (not copied) until write and written contiguously in add order, after a
 * header padded with spaces to a multiple of 8 (so the data section starts 8-aligned). Write is atomic
 * (temp file + fsync + rename); the writer can be written again or extended after a write. */
typedef struct loom_st_writer loom_st_writer;
int loom_st_writer_create(loom_st_writer **out);
void loom_st_writer_free(loom_st_writer *w);                                 /* accepts NULL */
/* data: numel * dtype_size bytes, little-endian (may be NULL when numel is 0). Names must be valid
 * UTF-8, unique, and not "__metadata__". ndim 0..LOOM_ST_MAX_DIMS, shape entries >= 0. */
int loom_st_writer_add(loom_st_writer *w, const char *name, loom_dtype dt, int ndim, const int64_t *shape,
                       const void *data);
/* Adds a float tensor stored as dt (F32, F16 or BF16: converted at write time, round-to-nearest-even). */
int loom_st_writer_add_f32(loom_st_writer *w, const char *name, loom_dtype dt, int ndim, const int64_t *shape,
                           const float *data);
/* Sets a __metadata__ entry (key and value are copied; setting a key again replaces its value). */
int loom_st_writer_meta(loom_st_writer *w, const char *key, const char *value);
size_t loom_st_writer_count(const loom_st_writer *w);
int loom_st_writer_write(loom_st_writer *w, const char *path);
/* Serialises into a new buffer (release with loom_free); same bytes as write. */
int loom_st_writer_serialize(loom_st_writer *w, void **data, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
