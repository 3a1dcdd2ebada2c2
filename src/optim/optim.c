#include "loom/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

struct loom_optimizer {
    loom_opt_config cfg;
    size_t n;
    float *m, *v;     /* AdamW moments, or SGD velocity in m */
    uint8_t *decay;   /* per element: 1 = apply weight decay; NULL = everywhere */
    long t;
};

void loom_opt_defaults(loom_opt_config *c, loom_opt_kind kind) {
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->lr = kind == LOOM_OPT_ADAMW ? 1e-3f : 1e-2f;
    c->beta1 = 0.9f;
    c->beta2 = 0.999f;
    c->eps = 1e-8f;
    c->weight_decay = kind == LOOM_OPT_ADAMW ? 0.01f : 0.0f;
}

int loom_opt_kind_parse(const char *name, loom_opt_kind *kind) {
    if (!strcmp(name, "adamw") || !strcmp(name, "adam")) *kind = LOOM_OPT_ADAMW;
    else if (!strcmp(name, "sgd")) *kind = LOOM_OPT_SGD;
    else return loom_error(LOOM_EINVAL, "unknown optimizer '%s' (sgd, adamw)", name);
    return LOOM_OK;
}

int loom_optimizer_create(loom_optimizer **out, const loom_opt_config *cfg, size_t n) {
    *out = NULL;
    if (!(cfg->lr >= 0)) return loom_error(LOOM_EINVAL, "learning rate %g must be >= 0", cfg->lr);
    if (cfg->kind == LOOM_OPT_ADAMW) {
        if (!(cfg->beta1 >= 0 && cfg->beta1 < 1)) return loom_error(LOOM_EINVAL, "beta1 %g must be in [0, 1)", cfg->beta1);
        if (!(cfg->beta2 >= 0 && cfg->beta2 < 1)) return loom_error(LOOM_EINVAL, "beta2 %g must be in [0, 1)", cfg->beta2);
        if (!(cfg->eps > 0)) return loom_error(LOOM_EINVAL, "eps %g must be > 0", cfg->eps);
    }
    if (!(cfg->weight_decay >= 0)) return loom_error(LOOM_EINVAL, "weight decay %g must be >= 0", cfg->weight_decay);
    if (!(cfg->momentum >= 0 && cfg->momentum < 1)) return loom_error(LOOM_EINVAL, "momentum %g must be in [0, 1)", cfg->momentum);
    loom_optimizer *o = calloc(1, sizeof *o);
    if (!o) return loom_error(LOOM_ENOMEM, "out of memory");
    o->cfg = *cfg;
    o->n = n;
    int need_m = cfg->kind == LOOM_OPT_ADAMW || cfg->momentum > 0, need_v = cfg->kind == LOOM_OPT_ADAMW;
    if (need_m) o->m = loom_calloc(n, sizeof(float));
    if (need_v) o->v = loom_calloc(n, sizeof(float));
    if ((need_m && !o->m) || (need_v && !o->v)) {
        loom_optimizer_free(o);
        return loom_error(LOOM_ENOMEM, "out of memory for optimizer state (%zu parameters)", n);
    }
    *out = o;
    return LOOM_OK;
}

void loom_optimizer_free(loom_optimizer *o) {
    if (!o) return;
    loom_free(o->m);
    loom_free(o->v);
    free(o->decay);
    free(o);
}

int loom_optimizer_decay_ranges(loom_optimizer *o, const size_t *begin, const size_t *end, int count) {
    free(o->decay);
    o->decay = calloc(o->n ? o->n : 1, 1);
    if (!o->decay) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < count; i++) {
        if (begin[i] > end[i] || end[i] > o->n) return loom_error(LOOM_ERANGE, "decay range %d out of bounds", i);
        memset(o->decay + begin[i], 1, end[i] - begin[i]);
    }
    return LOOM_OK;
}

long loom_optimizer_steps(const loom_optimizer *o) { return o->t; }
void loom_optimizer_set_steps(loom_optimizer *o, long t) { o->t = t; }

void loom_optimizer_reset(loom_optimizer *o) {
    if (o->m) memset(o->m, 0, o->n * sizeof(float));
    if (o->v) memset(o->v, 0, o->n * sizeof(float));
    o->t = 0;
}

float *loom_optimizer_state(loom_optimizer *o, int which, size_t *n) {
    *n = o->n;
    return which == 0 ? o->m : o->v;
}

void loom_optimizer_step(loom_optimizer *o, float *p, const float *g, float lr) {
    loom_optimizer_step_ex(o, p, (float *)g, 1.0f, lr, 0);
}

/* Run-time CPU dispatch (see src/kernels/kernels.c): the optimizer's loops are compiled for AVX-512,
 * AVX2 and baseline x86-64 and the loader picks one; element-wise arithmetic without contraction gives
 * the same bits in each. OpenMP runs outside the cloned chunk kernels. */
#include "core/dispatch.h"
#define CHUNK 8192

typedef struct {
    float b1, b2, eps, decay, step_size, bc2_sqrt, gs;
} adamw_k;

/* AdamW on n elements: torch.optim.AdamW's single-tensor path, same operation order. Each element reads
 * g[i] * gs, rounded once: the value loom_clip_grad_norm would have stored in the buffer, so the fused
 * step has the same bits as scaling first (g * 1.0f is g exactly); zero_grad writes 0 behind it. */
LOOM_DISPATCH static void adamw_chunk(float *p, float *g, float *m, float *v, const uint8_t *dm, size_t n,
                                      const adamw_k *k, int zero_grad) {
    const float b1 = k->b1, b2 = k->b2, eps = k->eps, decay = k->decay, step_size = k->step_size;
    const float bc2_sqrt = k->bc2_sqrt, gs = k->gs;
    if (zero_grad) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] * gs;
            g[i] = 0.0f;
            p[i] *= dm && !dm[i] ? 1.0f : decay;
            m[i] += (gi - m[i]) * (1.0f - b1);
            v[i] = v[i] * b2 + (1.0f - b2) * gi * gi;
            float denom = sqrtf(v[i]) / bc2_sqrt + eps;
            p[i] += -step_size * (m[i] / denom);
        }
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            float gi = g[i] * gs;
            p[i] *= dm && !dm[i] ? 1.0f : decay;
            m[i] += (gi - m[i]) * (1.0f - b1);
            v[i] = v[i] * b2 + (1.0f - b2) * gi * gi;
            float denom = sqrtf(v[i]) / bc2_sqrt + eps;
            p[i] += -step_size * (m[i] / denom);
        }
    }
}

void loom_optimizer_step_ex(loom_optimizer *o, float *p, float *g, float gscale, float lr, int zero_grad) {
    const loom_opt_config *c = &o->cfg;
    const size_t n = o->n;
    const uint8_t *dm = o->decay;
    const float gs = gscale;
    o->t++;
    if (c->kind == LOOM_OPT_ADAMW) {
        const double bc1 = 1.0 - pow((double)c->beta1, (double)o->t), bc2 = 1.0 - pow((double)c->beta2, (double)o->t);
        const adamw_k k = {c->beta1, c->beta2, c->eps, 1.0f - lr * c->weight_decay, (float)(lr / bc1), (float)sqrt(bc2), gs};
        float *m = o->m, *v = o->v;
        const size_t nc = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < nc; j++) {
            size_t i = j * CHUNK, e = n - i < CHUNK ? n - i : CHUNK;
            adamw_chunk(p + i, g + i, m + i, v + i, dm ? dm + i : NULL, e, &k, zero_grad);
        }
    } else {
        /* torch.optim.SGD: d = g + wd*p; buf = mu*buf + d (buf = d at the first step); p -= lr*d' */
        const float mu = c->momentum, wd = c->weight_decay;
        float *buf = o->m;
        const int first = o->t == 1;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) {
            float d = g[i] * gs;
            if (zero_grad) g[i] = 0.0f;
            if (wd != 0.0f && (!dm || dm[i])) d += wd * p[i];
            if (buf) {
                buf[i] = first ? d : mu * buf[i] + d;
                d = c->nesterov ? d + mu * buf[i] : buf[i];
            }
            p[i] -= lr * d;
        }
    }
}

/* sum of g[i]^2 in double over 16 interleaved lanes (the tail in order), the lanes added pairwise: a
 * fixed order for any vector width, and no chain of dependent additions */
LOOM_DISPATCH static double sq_block(const float *g, size_t n) {
    enum { L = 16 };
    double acc[L] = {0};
    size_t i = 0;
    for (; i + L <= n; i += L)
        for (int l = 0; l < L; l++) acc[l] += (double)g[i + l] * g[i + l];
    for (int l = 0; i + l < n; l++) acc[l] += (double)g[i + l] * g[i + l];
    for (int w = L / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

double loom_grad_norm(const float *g, size_t n) {
    /* fixed blocks summed in order: the norm does not depend on the thread count */
    enum { BLK = 1 << 16 };
    size_t nb = (n + BLK - 1) / BLK;
    double *part = calloc(nb ? nb : 1, sizeof *part);
    double s = 0;
    if (!part) {
        for (size_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    } else {
#pragma omp parallel for schedule(static)
        for (size_t b = 0; b < nb; b++) {
            size_t e = (b + 1) * BLK < n ? (b + 1) * BLK : n;
            part[b] = sq_block(g + b * BLK, e - b * BLK);
        }
        for (size_t b = 0; b < nb; b++) s += part[b];
        free(part);
    }
    return sqrt(s);
}

float loom_clip_scale(double norm, double max_norm) {
    return max_norm > 0 && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
}

double loom_clip_grad_norm(float *g, size_t n, double max_norm) {
    double norm = loom_grad_norm(g, n);
    if (max_norm > 0 && norm > max_norm) {
        float k = loom_clip_scale(norm, max_norm);
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) g[i] *= k;
    }
    return norm;
}

float loom_lr_cosine(float base, float min_lr, long step, long warmup, long total) {
    if (warmup > 0 && step < warmup) return base * (float)(step + 1) / (float)warmup;
    if (total <= warmup) return base;
    double prog = (double)(step - warmup) / (double)(total - warmup);
    if (prog > 1) prog = 1;
    return min_lr + (base - min_lr) * 0.5f * (float)(1.0 + cos(M_PI * prog));
}
