/* Trainable vectors (core/ layer): ONE flat float vector described by a manifest of named tensors.
 *
 * What trains and travels is always such a vector: a model's full parameter buffer (full fine-tuning),
 * a LoRA or prefix set, or a server's aggregate. The manifest says where each named tensor lies in it
 * (offset, numel, shape), its element type, and its role: SHARED values travel to the server and are
 * aggregated, PRIVATE values stay on the client (a personalised head, local state). One serializer
 * reads and writes a vector (or the part of one role) as safetensors, to a file or a memory buffer,
 * under the manifest's names, with a format version in __metadata__:
 *
 *     __metadata__ {"loom_tvec": "1", "loom_tvec_dim": "<floats in the vector>", ...caller's keys}
 *     <name>: {"dtype": "F32", "shape": [...], ...}   one per manifest entry written, in manifest order
 *
 * Reading checks every entry: present, the manifest's shape, a float dtype (F32/F16/BF16/F64 are
 * converted), and refuses tensors the manifest lacks unless told to ignore them; the first mismatch
 * is named. Files without the version key (written by other tools, e.g. PEFT) are accepted; a newer
 * version than LOOM_TVEC_VERSION is refused.
 *
 *     loom_tvec *v;  loom_tvec_create(&v);
 *     int64_t shape[2] = {8, 768};
 *     loom_tvec_add(v, "lora_A", 2, shape, LOOM_ROLE_SHARED);        // offset 0
 *     float *vec = loom_calloc(loom_tvec_dim(v), sizeof(float));
 *     void *buf; size_t len;
 *     loom_tvec_serialize(v, vec, NULL, &buf, &len);                 // or loom_tvec_write(v, vec, NULL, path)
 *     loom_tvec_deserialize(v, vec, NULL, buf, len, "upload");       // or loom_tvec_read(v, vec, NULL, path)
 *     loom_free(buf); loom_tvec_free(v);
 */
#ifndef LOOM_TVEC_H
#define LOOM_TVEC_H

#include <stddef.h>
#include <stdint.h>

#include "loom/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_TVEC_VERSION 1
#define LOOM_TVEC_NAME_MAX 160
/* Largest serialized vector read by default (8 GiB: a 2B-parameter model in F32). */
#define LOOM_TVEC_MAX_BYTES ((size_t)8 << 30)

typedef enum { LOOM_ROLE_SHARED = 0, LOOM_ROLE_PRIVATE = 1 } loom_tvec_role;
#define LOOM_ROLES_ALL 0u
#define LOOM_ROLE_BIT(r) (1u << (unsigned)(r))

/* One named tensor of the vector. */
typedef struct {
    char name[LOOM_TVEC_NAME_MAX];
    int ndim;               /* 1 or 2 */
    int64_t shape[2];       /* shape[1] = 0 when ndim is 1 */
    size_t offset, numel;   /* in elements of the vector */
    loom_dtype dtype;       /* element type in the vector (LOOM_DT_F32) */
    loom_tvec_role role;
} loom_tvec_entry;

typedef struct loom_tvec loom_tvec;

int loom_tvec_create(loom_tvec **out);
void loom_tvec_free(loom_tvec *v); /* accepts NULL */
/* Appends an F32 tensor at offset dim (the vector grows by its numel). Names are unique, non-empty and
 * shorter than LOOM_TVEC_NAME_MAX; ndim 1 or 2 with positive sizes. */
int loom_tvec_add(loom_tvec *v, const char *name, int ndim, const int64_t *shape, loom_tvec_role role);
/* Adds an entry at a given offset (a view of an existing layout: a model's tensor table). Entries may
 * not overlap; dim becomes the largest end. */
int loom_tvec_add_at(loom_tvec *v, const char *name, int ndim, const int64_t *shape, size_t offset,
                     loom_tvec_role role);
int loom_tvec_set_role(loom_tvec *v, int i, loom_tvec_role role);
size_t loom_tvec_dim(const loom_tvec *v);                 /* elements in the vector */
int loom_tvec_count(const loom_tvec *v);
const loom_tvec_entry *loom_tvec_at(const loom_tvec *v, int i);   /* NULL outside 0..count-1 */
const loom_tvec_entry *loom_tvec_find(const loom_tvec *v, const char *name);
/* Elements of the entries of the given roles (LOOM_ROLES_ALL: every entry). */
size_t loom_tvec_numel(const loom_tvec *v, unsigned roles);

/* How to serialize: which roles, a name prefix (several vectors in one file, e.g. a checkpoint),
 * extra __metadata__ pairs to write, and the reading limits. A NULL loom_tvec_io is all defaults. */
typedef struct {
    unsigned roles;          /* LOOM_ROLE_BIT(...) mask; LOOM_ROLES_ALL = every entry */
    const char *prefix;      /* prepended to every tensor name; NULL = none */
    const char *const *meta; /* write: NULL-terminated key, value, key, value, ... (may be NULL) */
    size_t max_bytes;        /* read: refuse a larger buffer or file (0 = LOOM_TVEC_MAX_BYTES) */
    int allow_extra;         /* read: ignore tensors outside the manifest instead of refusing them */
} loom_tvec_io;

/* Adds the selected entries of vec to a writer (names are copied, data referenced until the write). */
int loom_tvec_add_to(loom_st_writer *w, const loom_tvec *v, const float *vec, const loom_tvec_io *io);
/* Reads the selected entries from an open file into vec (other elements untouched). */
int loom_tvec_read_from(const loom_st_file *f, const loom_tvec *v, float *vec, const loom_tvec_io *io);

int loom_tvec_write(const loom_tvec *v, const float *vec, const loom_tvec_io *io, const char *path);
int loom_tvec_read(const loom_tvec *v, float *vec, const loom_tvec_io *io, const char *path);
/* Serialises into a new buffer (release with loom_free). */
int loom_tvec_serialize(const loom_tvec *v, const float *vec, const loom_tvec_io *io, void **data, size_t *len);
/* Reads from bytes in memory; `name` names the buffer in messages (may be NULL). */
int loom_tvec_deserialize(const loom_tvec *v, float *vec, const loom_tvec_io *io, const void *data, size_t len,
                          const char *name);

#ifdef __cplusplus
}
#endif
#endif
