/* Trainable-vector manifests and their one serializer (safetensors with a format version). */
#include "loom/tvec.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"

struct loom_tvec {
    loom_tvec_entry *e;
    int n, cap;
    size_t dim;
};

int loom_tvec_create(loom_tvec **out) {
    *out = calloc(1, sizeof **out);
    return *out ? LOOM_OK : loom_error(LOOM_ENOMEM, "out of memory");
}

void loom_tvec_free(loom_tvec *v) {
    if (!v) return;
    free(v->e);
    free(v);
}

static int entry_numel(const char *name, int ndim, const int64_t *shape, size_t *numel) {
    if (ndim < 1 || ndim > 2) return loom_error(LOOM_EINVAL, "tensor %s: %d dimensions (1 or 2 supported)", name, ndim);
    size_t n = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 1 || (uint64_t)shape[d] > ((size_t)1 << 40))
            return loom_error(LOOM_EINVAL, "tensor %s: size %lld in dimension %d", name, (long long)shape[d], d);
        n *= (size_t)shape[d];
    }
    *numel = n;
    return LOOM_OK;
}

int loom_tvec_add_at(loom_tvec *v, const char *name, int ndim, const int64_t *shape, size_t offset,
                     loom_tvec_role role) {
    if (!name || !*name || strlen(name) >= LOOM_TVEC_NAME_MAX)
        return loom_error(LOOM_EINVAL, "tensor name '%.40s' is empty or longer than %d bytes", name ? name : "",
                          LOOM_TVEC_NAME_MAX - 1);
    if (role != LOOM_ROLE_SHARED && role != LOOM_ROLE_PRIVATE)
        return loom_error(LOOM_EINVAL, "tensor %s: unknown role %d", name, (int)role);
    size_t numel = 0;
    int rc = entry_numel(name, ndim, shape, &numel);
    if (rc != LOOM_OK) return rc;
    if (offset > SIZE_MAX / 2 || numel > SIZE_MAX / 2 - offset)
        return loom_error(LOOM_EINVAL, "tensor %s: offset %zu overflows", name, offset);
    for (int i = 0; i < v->n; i++) {
        if (!strcmp(v->e[i].name, name)) return loom_error(LOOM_EINVAL, "tensor %s is in the manifest twice", name);
        if (offset < v->e[i].offset + v->e[i].numel && v->e[i].offset < offset + numel)
            return loom_error(LOOM_EINVAL, "tensor %s overlaps %s in the vector", name, v->e[i].name);
    }
    if (v->n == v->cap) {
        int cap = v->cap ? 2 * v->cap : 16;
        loom_tvec_entry *ne = realloc(v->e, (size_t)cap * sizeof *ne);
        if (!ne) return loom_error(LOOM_ENOMEM, "out of memory");
        v->e = ne;
        v->cap = cap;
    }
    loom_tvec_entry *e = &v->e[v->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->ndim = ndim;
    e->shape[0] = shape[0];
    e->shape[1] = ndim > 1 ? shape[1] : 0;
    e->offset = offset;
    e->numel = numel;
    e->dtype = LOOM_DT_F32;
    e->role = role;
    if (offset + numel > v->dim) v->dim = offset + numel;
    return LOOM_OK;
}

int loom_tvec_add(loom_tvec *v, const char *name, int ndim, const int64_t *shape, loom_tvec_role role) {
    return loom_tvec_add_at(v, name, ndim, shape, v->dim, role);
}

int loom_tvec_set_role(loom_tvec *v, int i, loom_tvec_role role) {
    if (i < 0 || i >= v->n) return loom_error(LOOM_EINVAL, "no manifest entry %d", i);
    if (role != LOOM_ROLE_SHARED && role != LOOM_ROLE_PRIVATE)
        return loom_error(LOOM_EINVAL, "tensor %s: unknown role %d", v->e[i].name, (int)role);
    v->e[i].role = role;
    return LOOM_OK;
}

size_t loom_tvec_dim(const loom_tvec *v) { return v->dim; }
int loom_tvec_count(const loom_tvec *v) { return v->n; }
const loom_tvec_entry *loom_tvec_at(const loom_tvec *v, int i) { return i >= 0 && i < v->n ? &v->e[i] : NULL; }

const loom_tvec_entry *loom_tvec_find(const loom_tvec *v, const char *name) {
    for (int i = 0; i < v->n; i++)
        if (!strcmp(v->e[i].name, name)) return &v->e[i];
    return NULL;
}

static int selected(const loom_tvec_entry *e, unsigned roles) {
    return roles == LOOM_ROLES_ALL || (roles & LOOM_ROLE_BIT(e->role));
}

size_t loom_tvec_numel(const loom_tvec *v, unsigned roles) {
    size_t n = 0;
    for (int i = 0; i < v->n; i++)
        if (selected(&v->e[i], roles)) n += v->e[i].numel;
    return n;
}

/* ---------------------------------------------------------------- serializer */

static const loom_tvec_io default_io;

static int full_name(char *buf, size_t cap, const loom_tvec_io *io, const char *name) {
    int n = snprintf(buf, cap, "%s%s", io->prefix ? io->prefix : "", name);
    if (n < 0 || (size_t)n >= cap) return loom_error(LOOM_EINVAL, "tensor name %s%s is too long", io->prefix, name);
    return LOOM_OK;
}

int loom_tvec_add_to(loom_st_writer *w, const loom_tvec *v, const float *vec, const loom_tvec_io *io) {
    if (!io) io = &default_io;
    char nm[LOOM_TVEC_NAME_MAX + 256];
    for (int i = 0; i < v->n; i++) {
        const loom_tvec_entry *e = &v->e[i];
        if (!selected(e, io->roles)) continue;
        int rc = full_name(nm, sizeof nm, io, e->name);
        if (rc == LOOM_OK) rc = loom_st_writer_add(w, nm, LOOM_DT_F32, e->ndim, e->shape, vec + e->offset);
        if (rc != LOOM_OK) return rc;
    }
    return LOOM_OK;
}

static int shape_text(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t p = 0;
    buf[0] = 0;
    for (int d = 0; d < ndim && p + 24 < cap; d++)
        p += (size_t)snprintf(buf + p, cap - p, "%s%lld", d ? ", " : "", (long long)shape[d]);
    return LOOM_OK;
}

int loom_tvec_read_from(const loom_st_file *f, const loom_tvec *v, float *vec, const loom_tvec_io *io) {
    if (!io) io = &default_io;
    const char *src = loom_st_path(f) ? loom_st_path(f) : "vector";
    const char *ver = loom_st_meta(f, "loom_tvec");
    if (ver) {
        char *end;
        errno = 0;
        long n = strtol(ver, &end, 10);
        if (errno || end == ver || *end || n < 1)
            return loom_error(LOOM_EFORMAT, "%s: format version '%.32s' is not a positive integer", src, ver);
        if (n > LOOM_TVEC_VERSION)
            return loom_error(LOOM_EUNSUPPORTED, "%s: format version %ld is newer than this loom reads (%d)", src, n,
                              LOOM_TVEC_VERSION);
    }
    char nm[LOOM_TVEC_NAME_MAX + 256];
    for (int i = 0; i < v->n; i++) {
        const loom_tvec_entry *e = &v->e[i];
        if (!selected(e, io->roles)) continue;
        int rc = full_name(nm, sizeof nm, io, e->name);
        if (rc != LOOM_OK) return rc;
        const loom_st_tensor *t = loom_st_find(f, nm);
        if (!t) return loom_error(LOOM_ENOTFOUND, "%s: no tensor %s", src, nm);
        int same = t->ndim == e->ndim;
        for (int d = 0; same && d < e->ndim; d++) same = t->shape[d] == e->shape[d];
        if (!same) {
            char got[128], want[64];
            shape_text(got, sizeof got, t->ndim, t->shape);
            shape_text(want, sizeof want, e->ndim, e->shape);
            return loom_error(LOOM_EFORMAT, "%s: %s has shape [%s], the manifest says [%s]", src, nm, got, want);
        }
        if ((rc = loom_st_to_f32(t, vec + e->offset, e->numel)) != LOOM_OK)
            return loom_error_context(rc, "%s: %s", src, nm);
        /* a NaN or Inf would poison every forward pass and every aggregate: refuse it, naming where */
        for (size_t k = 0; k < e->numel; k++)
            if (!isfinite(vec[e->offset + k]))
                return loom_error(LOOM_EFORMAT, "%s: tensor %s holds a non-finite value (%g at element %zu)", src, nm,
                                  (double)vec[e->offset + k], k);
    }
    if (io->allow_extra) return LOOM_OK;
    size_t pl = io->prefix ? strlen(io->prefix) : 0;
    for (size_t i = 0; i < loom_st_count(f); i++) {
        const char *tn = loom_st_at(f, i)->name;
        if (pl && strncmp(tn, io->prefix, pl)) continue; /* another vector of the same file */
        const loom_tvec_entry *e = loom_tvec_find(v, tn + pl);
        if (!e)
            return loom_error(LOOM_EFORMAT, "%s: tensor %s is not in the manifest", src, tn);
    }
    return LOOM_OK;
}

static int make_writer(loom_st_writer **w, const loom_tvec *v, const float *vec, const loom_tvec_io *io) {
    if (!io) io = &default_io;
    int rc = loom_st_writer_create(w);
    if (rc != LOOM_OK) return rc;
    char dim[32];
    snprintf(dim, sizeof dim, "%zu", v->dim);
    rc = loom_tvec_add_to(*w, v, vec, io);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(*w, "format", "pt");
    for (const char *const *kv = io->meta; rc == LOOM_OK && kv && kv[0] && kv[1]; kv += 2)
        rc = loom_st_writer_meta(*w, kv[0], kv[1]);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(*w, "loom_tvec", "1");
    if (rc == LOOM_OK) rc = loom_st_writer_meta(*w, "loom_tvec_dim", dim);
    if (rc != LOOM_OK) {
        loom_st_writer_free(*w);
        *w = NULL;
    }
    return rc;
}

int loom_tvec_write(const loom_tvec *v, const float *vec, const loom_tvec_io *io, const char *path) {
    loom_st_writer *w;
    int rc = make_writer(&w, v, vec, io);
    if (rc != LOOM_OK) return rc;
    rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    return rc;
}

int loom_tvec_serialize(const loom_tvec *v, const float *vec, const loom_tvec_io *io, void **data, size_t *len) {
    loom_st_writer *w;
    *data = NULL;
    *len = 0;
    int rc = make_writer(&w, v, vec, io);
    if (rc != LOOM_OK) return rc;
    rc = loom_st_writer_serialize(w, data, len);
    loom_st_writer_free(w);
    return rc;
}

static size_t limit_of(const loom_tvec_io *io) { return io && io->max_bytes ? io->max_bytes : LOOM_TVEC_MAX_BYTES; }

int loom_tvec_read(const loom_tvec *v, float *vec, const loom_tvec_io *io, const char *path) {
    struct stat sb;
    if (stat(path, &sb) == 0 && (uint64_t)sb.st_size > limit_of(io))
        return loom_error(LOOM_ERANGE, "%s: %lld bytes exceed the limit of %zu for a vector", path,
                          (long long)sb.st_size, limit_of(io));
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    rc = loom_tvec_read_from(f, v, vec, io);
    loom_st_close(f);
    return rc;
}

int loom_tvec_deserialize(const loom_tvec *v, float *vec, const loom_tvec_io *io, const void *data, size_t len,
                          const char *name) {
    if (!name) name = "vector";
    if (len > limit_of(io))
        return loom_error(LOOM_ERANGE, "%s: %zu bytes exceed the limit of %zu for a vector", name, len, limit_of(io));
    loom_st_file *f;
    int rc = loom_st_open_memory(&f, data, len, name);
    if (rc != LOOM_OK) return rc;
    rc = loom_tvec_read_from(f, v, vec, io);
    loom_st_close(f);
    return rc;
}
