/* Personalized clients: the shared/private split of the trainable set by name (include/loom/personal.h). */
#include "loom/personal.h"

#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/hetero.h"
#include "loom/pipeline.h"

typedef struct {
    size_t offset, numel;
} span;

struct loom_personal {
    size_t dim, n_private;
    float *init_priv; /* (n_private) the run's initial private values, NULL: from the global vector */
    span *priv; /* private entries, ascending offsets */
    int n_priv;
    const loom_hetero *h;
};

static int matches(const char *pat, size_t len, const char *name) {
    char p[LOOM_TVEC_NAME_MAX + 8];
    if (len + 1 > sizeof p) return 0;
    memcpy(p, pat, len);
    p[len] = 0;
    if (strpbrk(p, "*?[")) return fnmatch(p, name, 0) == 0;
    return strstr(name, p) != NULL;
}

int loom_personal_manifest(loom_tvec **out, const loom_tvec *src, const char *patterns, int *n_marked) {
    *out = NULL;
    if (n_marked) *n_marked = 0;
    if (!src || !patterns || !*patterns) return loom_error(LOOM_EINVAL, "--private: empty pattern list");
    if (strlen(patterns) >= LOOM_PRIVATE_SPEC_MAX)
        return loom_error(LOOM_EINVAL, "--private: %zu bytes (at most %d)", strlen(patterns), LOOM_PRIVATE_SPEC_MAX - 1);
    loom_tvec *v;
    int rc = loom_tvec_create(&v);
    if (rc != LOOM_OK) return rc;
    int n = loom_tvec_count(src);
    for (int i = 0; i < n && rc == LOOM_OK; i++) {
        const loom_tvec_entry *e = loom_tvec_at(src, i);
        rc = loom_tvec_add_at(v, e->name, e->ndim, e->shape, e->offset, e->role);
    }
    int marked = 0;
    const char *p = patterns;
    while (rc == LOOM_OK) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == 0) {
            rc = loom_error(LOOM_EINVAL, "--private '%s': an empty pattern", patterns);
            break;
        }
        if (len > LOOM_TVEC_NAME_MAX) {
            rc = loom_error(LOOM_EINVAL, "--private: pattern '%.*s...' is longer than a tensor name", 40, p);
            break;
        }
        int hit = 0;
        for (int i = 0; i < n && rc == LOOM_OK; i++) {
            const loom_tvec_entry *e = loom_tvec_at(v, i);
            if (!matches(p, len, e->name)) continue;
            hit++;
            if (e->role != LOOM_ROLE_PRIVATE) marked++;
            rc = loom_tvec_set_role(v, i, LOOM_ROLE_PRIVATE);
        }
        if (rc == LOOM_OK && !hit) {
            const loom_tvec_entry *e0 = loom_tvec_at(v, 0);
            rc = loom_error(LOOM_EINVAL, "--private: pattern '%.*s' matches no tensor of the trainable set (names look "
                            "like %s)", (int)len, p, e0 ? e0->name : "?");
        }
        if (!c) break;
        p = c + 1;
    }
    if (rc != LOOM_OK) {
        loom_tvec_free(v);
        return rc;
    }
    if (n_marked) *n_marked = marked;
    *out = v;
    return LOOM_OK;
}

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int loom_personal_create(loom_personal **out, const loom_tvec *manifest, const loom_hetero *h) {
    *out = NULL;
    if (!manifest) return loom_error(LOOM_EINVAL, "personalization: no manifest");
    if (h && loom_hetero_dim(h) != loom_tvec_dim(manifest))
        return loom_error(LOOM_EINVAL, "personalization: masks of %zu values, the manifest has %zu",
                          loom_hetero_dim(h), loom_tvec_dim(manifest));
    loom_personal *p = calloc(1, sizeof *p);
    int n = loom_tvec_count(manifest);
    if (p) p->priv = malloc((size_t)(n ? n : 1) * sizeof *p->priv);
    if (!p || !p->priv) {
        loom_personal_free(p);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    p->dim = loom_tvec_dim(manifest);
    p->h = h;
    for (int i = 0; i < n; i++) {
        const loom_tvec_entry *e = loom_tvec_at(manifest, i);
        if (e->role != LOOM_ROLE_PRIVATE) continue;
        p->priv[p->n_priv++] = (span){e->offset, e->numel};
        p->n_private += e->numel;
    }
    qsort(p->priv, (size_t)p->n_priv, sizeof *p->priv, span_cmp);
    *out = p;
    return LOOM_OK;
}

void loom_personal_free(loom_personal *p) {
    if (!p) return;
    loom_free(p->init_priv);
    free(p->priv);
    free(p);
}

int loom_personal_set_init(loom_personal *p, const float *init) {
    if (!init) return loom_error(LOOM_EINVAL, "personalization: no initial vector");
    if (!p->init_priv && !(p->init_priv = loom_alloc((p->n_private ? p->n_private : 1) * sizeof(float))))
        return loom_error(LOOM_ENOMEM, "out of memory");
    loom_personal_get(p, init, p->init_priv);
    return LOOM_OK;
}

void loom_personal_init_priv(const loom_personal *p, const float *global, float *priv) {
    if (p->init_priv) memcpy(priv, p->init_priv, p->n_private * sizeof(float));
    else loom_personal_get(p, global, priv);
}

size_t loom_personal_dim(const loom_personal *p) { return p->dim; }
size_t loom_personal_n_private(const loom_personal *p) { return p->n_private; }
size_t loom_personal_n_shared(const loom_personal *p) { return p->dim - p->n_private; }
int loom_personal_trivial(const loom_personal *p) { return !p || p->n_private == 0; }

void loom_personal_pack(const loom_personal *p, const float *full, float *shared) {
    size_t at = 0, k = 0;
    for (int i = 0; i < p->n_priv; i++) {
        size_t len = p->priv[i].offset - at;
        memcpy(shared + k, full + at, len * sizeof(float));
        k += len;
        at = p->priv[i].offset + p->priv[i].numel;
    }
    memcpy(shared + k, full + at, (p->dim - at) * sizeof(float));
}

void loom_personal_unpack(const loom_personal *p, const float *shared, float *full) {
    size_t at = 0, k = 0;
    for (int i = 0; i < p->n_priv; i++) {
        size_t len = p->priv[i].offset - at;
        memcpy(full + at, shared + k, len * sizeof(float));
        k += len;
        memset(full + p->priv[i].offset, 0, p->priv[i].numel * sizeof(float));
        at = p->priv[i].offset + p->priv[i].numel;
    }
    memcpy(full + at, shared + k, (p->dim - at) * sizeof(float));
}

void loom_personal_get(const loom_personal *p, const float *full, float *priv) {
    size_t k = 0;
    for (int i = 0; i < p->n_priv; i++) {
        memcpy(priv + k, full + p->priv[i].offset, p->priv[i].numel * sizeof(float));
        k += p->priv[i].numel;
    }
}

void loom_personal_put(const loom_personal *p, const float *priv, float *full) {
    size_t k = 0;
    for (int i = 0; i < p->n_priv; i++) {
        memcpy(full + p->priv[i].offset, priv + k, p->priv[i].numel * sizeof(float));
        k += p->priv[i].numel;
    }
}

void loom_personal_zero(const loom_personal *p, float *full) {
    for (int i = 0; i < p->n_priv; i++) memset(full + p->priv[i].offset, 0, p->priv[i].numel * sizeof(float));
}

int loom_personal_mask(const loom_personal *p, int client, int round, uint8_t *mask) {
    if (p->h) {
        int rc = loom_hetero_mask(p->h, client, round, mask);
        if (rc != LOOM_OK) return rc;
    } else {
        memset(mask, LOOM_MASK_TRAIN, p->dim);
    }
    for (int i = 0; i < p->n_priv; i++) memset(mask + p->priv[i].offset, LOOM_MASK_FROZEN, p->priv[i].numel);
    return LOOM_OK;
}

int loom_personal_mask_cb(void *ud, int client, int round, uint8_t *mask) {
    return loom_personal_mask(ud, client, round, mask);
}

size_t loom_personal_wire_bytes(const loom_personal *p, const loom_update *u, const loom_codec_opts *o) {
    size_t ns = loom_personal_n_shared(p);
    float *packed = loom_alloc((ns ? ns : 1) * sizeof(float));
    if (!packed) return 0;
    if (u->values) loom_personal_pack(p, u->values, packed);
    else memset(packed, 0, (ns ? ns : 1) * sizeof(float));
    loom_update cu = *u;
    cu.len = ns;
    cu.values = packed;
    cu.control = u->control ? packed : NULL; /* a control delta travels at the same length */
    loom_codec_opts f32;
    memset(&f32, 0, sizeof f32);
    size_t n = loom_update_encoded_size(&cu, o ? o : &f32);
    loom_free(packed);
    return n;
}

void loom_personal_summarize(const loom_personal_eval *ev, int n, loom_personal_summary *s) {
    memset(s, 0, sizeof *s);
    s->global_acc_min = s->personal_acc_min = INFINITY;
    int np = 0;
    for (int i = 0; i < n; i++) {
        const loom_personal_eval *e = &ev[i];
        if (!e->evaluated || e->global.count == 0) continue;
        double ga = (double)e->global.correct / (double)e->global.count;
        double gl = e->global.tokens ? e->global.loss_sum / (double)e->global.tokens : NAN;
        s->clients++;
        s->global_acc_mean += ga;
        s->global_loss_mean += gl;
        s->global_acc_min = fmin(s->global_acc_min, ga);
        if (e->personalized && e->personal.count > 0) {
            double pa = (double)e->personal.correct / (double)e->personal.count;
            double pl = e->personal.tokens ? e->personal.loss_sum / (double)e->personal.tokens : NAN;
            np++;
            s->personal_acc_mean += pa;
            s->personal_loss_mean += pl;
            s->personal_acc_min = fmin(s->personal_acc_min, pa);
        }
    }
    if (s->clients) {
        s->global_acc_mean /= s->clients;
        s->global_loss_mean /= s->clients;
    } else {
        s->global_acc_mean = s->global_loss_mean = s->global_acc_min = NAN;
    }
    if (np) {
        s->personal_acc_mean /= np;
        s->personal_loss_mean /= np;
    } else {
        s->personal_acc_mean = s->personal_loss_mean = s->personal_acc_min = NAN;
    }
}

/* ------------------------------------------------------------------ masked updates on the wire */

size_t loom_mask_sent(const uint8_t *mask, size_t dim) {
    size_t n = 0;
    for (size_t i = 0; i < dim; i++) n += mask[i] == LOOM_MASK_TRAIN;
    return n;
}

void loom_mask_pack(const uint8_t *mask, size_t dim, const float *full, float *packed) {
    size_t k = 0;
    for (size_t i = 0; i < dim; i++)
        if (mask[i] == LOOM_MASK_TRAIN) packed[k++] = full[i];
}

void loom_mask_unpack(const uint8_t *mask, size_t dim, const float *packed, float *full) {
    size_t k = 0;
    for (size_t i = 0; i < dim; i++) full[i] = mask[i] == LOOM_MASK_TRAIN ? packed[k++] : 0.0f;
}

void loom_personal_send_mask(const loom_personal *p, const uint8_t *client_mask, size_t dim, uint8_t *out) {
    if (!client_mask) memset(out, LOOM_MASK_TRAIN, dim);
    else if (out != client_mask) memcpy(out, client_mask, dim);
    for (int i = 0; p && i < p->n_priv; i++) memset(out + p->priv[i].offset, LOOM_MASK_FROZEN, p->priv[i].numel);
}
