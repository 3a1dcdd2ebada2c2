/* Heterogeneous clients: HetLoRA rank masks, FFA-LoRA, FedRA layer allocation, FLoRA stacking
 * (include/loom/hetero.h). */
#include "loom/hetero.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/streams.h"

typedef struct {
    int e;       /* manifest entry */
    int kind;    /* 0 other, 1 LoRA A [r, in], 2 LoRA B [out, r] */
    int layer;
} part;

struct loom_hetero {
    const loom_tset *ts;
    loom_hetero_config c;
    int *ranks, *layers; /* (n_clients) own copies, NULL when not given */
    part *parts;
    int n_parts, n_layers, r_max, n_modules;
    size_t dim;
};

static int ends_with(const char *s, const char *tail) {
    size_t a = strlen(s), b = strlen(tail);
    return a >= b && !strcmp(s + a - b, tail);
}

void loom_hetero_defaults(loom_hetero_config *c) {
    memset(c, 0, sizeof *c);
    c->seed = 1;
}

void loom_hetero_free(loom_hetero *h) {
    if (!h) return;
    free(h->ranks);
    free(h->layers);
    free(h->parts);
    free(h);
}

static int *copy_ints(const int *src, int n) {
    int *d = malloc((size_t)n * sizeof *d);
    if (d) memcpy(d, src, (size_t)n * sizeof *d);
    return d;
}

int loom_hetero_create(loom_hetero **out, const loom_tset *ts, const loom_hetero_config *c) {
    *out = NULL;
    if (!ts || !c) return loom_error(LOOM_EINVAL, "heterogeneous clients: no trainable set");
    if (c->n_clients < 1 || c->n_clients > LOOM_HETERO_MAX_CLIENTS)
        return loom_error(LOOM_EINVAL, "heterogeneous clients: %d clients (1..%d)", c->n_clients,
                          LOOM_HETERO_MAX_CLIENTS);
    int lora = loom_tset_config(ts)->method == LOOM_PEFT_LORA;
    if (c->ranks && !lora)
        return loom_error(LOOM_EINVAL, "--client-ranks needs --peft lora (the set is %s)",
                          loom_peft_method_name(loom_tset_config(ts)->method));
    if (c->freeze_a && !lora)
        return loom_error(LOOM_EINVAL, "--lora-freeze-a needs --peft lora (the set is %s)",
                          loom_peft_method_name(loom_tset_config(ts)->method));
    if (c->sparsity && !lora)
        return loom_error(LOOM_EINVAL, "--hetlora-agg sparsity needs --peft lora (the set is %s)",
                          loom_peft_method_name(loom_tset_config(ts)->method));
    loom_hetero *h = calloc(1, sizeof *h);
    if (!h) return loom_error(LOOM_ENOMEM, "out of memory");
    h->ts = ts;
    h->c = *c;
    h->dim = loom_tset_dim(ts);
    h->n_parts = loom_tset_count(ts);
    h->parts = calloc((size_t)(h->n_parts ? h->n_parts : 1), sizeof *h->parts);
    if (!h->parts) {
        loom_hetero_free(h);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    for (int i = 0; i < h->n_parts; i++) {
        const loom_tset_entry *e = loom_tset_entry_at(ts, i);
        part *p = &h->parts[i];
        p->e = i;
        p->layer = e->layer;
        if (lora && e->ndim == 2 && ends_with(e->name, "lora_A.weight")) {
            p->kind = 1;
            h->r_max = (int)e->shape[0];
            h->n_modules++;
        } else if (lora && e->ndim == 2 && ends_with(e->name, "lora_B.weight")) {
            p->kind = 2;
        }
        if (e->layer + 1 > h->n_layers) h->n_layers = e->layer + 1;
    }
    if (loom_tset_model(ts)) h->n_layers = LOOM_MAX(h->n_layers, loom_model_config(loom_tset_model(ts))->n_layer);
    int rc = LOOM_OK;
    if (!(c->prune_gamma >= 0 && c->prune_gamma <= 1))
        rc = loom_error(LOOM_ERANGE, "--hetlora-prune %g must be in [0, 1]", c->prune_gamma);
    else if (c->prune_gamma > 0 && !lora)
        rc = loom_error(LOOM_EINVAL, "--hetlora-prune needs --peft lora");
    if (rc == LOOM_OK && c->ranks) {
        for (int k = 0; k < c->n_clients && rc == LOOM_OK; k++)
            if (c->ranks[k] < 1 || c->ranks[k] > h->r_max)
                rc = loom_error(LOOM_ERANGE, "--client-ranks: client %d has rank %d, outside 1..%d (the global "
                                "LoRA rank, --lora-r)", k, c->ranks[k], h->r_max);
        if (rc == LOOM_OK && !(h->ranks = copy_ints(c->ranks, c->n_clients))) rc = LOOM_ENOMEM;
    }
    if (rc == LOOM_OK && !c->ranks && c->prune_gamma > 0) { /* pruning needs ranks of its own */
        if (!(h->ranks = malloc((size_t)c->n_clients * sizeof *h->ranks))) rc = LOOM_ENOMEM;
        for (int k = 0; h->ranks && k < c->n_clients; k++) h->ranks[k] = h->r_max;
    }
    if (rc == LOOM_OK && c->layers) {
        if (h->n_layers < 1) rc = loom_error(LOOM_EINVAL, "--fedra-layers: the trainable set has no layers");
        for (int k = 0; k < c->n_clients && rc == LOOM_OK; k++)
            if (c->layers[k] < 0)
                rc = loom_error(LOOM_ERANGE, "--fedra-layers: client %d has a budget of %d layers (must be >= 0)", k,
                                c->layers[k]);
        if (rc == LOOM_OK && !(h->layers = copy_ints(c->layers, c->n_clients))) rc = LOOM_ENOMEM;
    }
    h->c.ranks = h->ranks;
    h->c.layers = h->layers;
    if (rc != LOOM_OK) {
        if (rc == LOOM_ENOMEM) loom_error(LOOM_ENOMEM, "out of memory");
        loom_hetero_free(h);
        return rc;
    }
    *out = h;
    return LOOM_OK;
}

size_t loom_hetero_dim(const loom_hetero *h) { return h->dim; }
int loom_hetero_clients(const loom_hetero *h) { return h->c.n_clients; }
int loom_hetero_r_max(const loom_hetero *h) { return h->r_max; }
int loom_hetero_pad(const loom_hetero *h) { return !h->c.rankwise; }
int loom_lora_modules(const loom_tset *ts) {
    int n = 0;
    for (int i = 0; i < loom_tset_count(ts); i++) n += ends_with(loom_tset_entry_at(ts, i)->name, "lora_A.weight");
    return n;
}

int loom_hetero_rank(const loom_hetero *h, int client) {
    return h->ranks && client >= 0 && client < h->c.n_clients ? h->ranks[client] : h->r_max;
}

int loom_hetero_trivial(const loom_hetero *h) {
    if (h->c.freeze_a) return 0;
    for (int k = 0; k < h->c.n_clients; k++) {
        if (h->ranks && h->ranks[k] < h->r_max) return 0;
        if (h->layers && h->layers[k] > 0 && h->layers[k] < h->n_layers) return 0;
    }
    return 1;
}

int loom_hetero_layers(const loom_hetero *h, int client, int round, uint8_t *layers) {
    if (client < 0 || client >= h->c.n_clients)
        return loom_error(LOOM_EINVAL, "heterogeneous clients: no client %d (of %d)", client, h->c.n_clients);
    int L = h->n_layers, budget = h->layers ? h->layers[client] : 0;
    if (budget <= 0 || budget >= L) {
        memset(layers, 1, (size_t)L);
        return LOOM_OK;
    }
    /* the client's row of the round's allocation matrix: a partial Fisher-Yates shuffle of 0..L-1 */
    int *order = malloc((size_t)L * sizeof *order);
    if (!order) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int l = 0; l < L; l++) order[l] = l;
    loom_rng r;
    loom_rng_init(&r, h->c.seed, loom_hash2(loom_hash2(LOOM_STREAM_FEDRA, (uint64_t)round), (uint64_t)client));
    for (int i = 0; i < budget; i++) {
        int j = i + (int)loom_rng_below(&r, (uint32_t)(L - i)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    memset(layers, 0, (size_t)L);
    for (int i = 0; i < budget; i++) layers[order[i]] = 1;
    free(order);
    return LOOM_OK;
}

int loom_hetero_mask(const loom_hetero *h, int client, int round, uint8_t *mask) {
    if (client < 0 || client >= h->c.n_clients)
        return loom_error(LOOM_EINVAL, "heterogeneous clients: no client %d (of %d)", client, h->c.n_clients);
    uint8_t lay[4096], *held = lay;
    if (h->n_layers > (int)sizeof lay && !(held = malloc((size_t)h->n_layers)))
        return loom_error(LOOM_ENOMEM, "out of memory");
    int rc = h->n_layers > 0 ? loom_hetero_layers(h, client, round, held) : LOOM_OK;
    const int rk = loom_hetero_rank(h, client);
    for (int i = 0; i < h->n_parts && rc == LOOM_OK; i++) {
        const part *p = &h->parts[i];
        const loom_tset_entry *e = loom_tset_entry_at(h->ts, p->e);
        uint8_t base = p->layer < 0 || held[p->layer] ? LOOM_MASK_TRAIN : LOOM_MASK_FROZEN;
        uint8_t *m = mask + e->offset;
        if (p->kind == 1) { /* A [r_max, in]: rows are rank slots. A frozen A is the seeded init the client
                               * can hold whole: its rows past the rank meet zero B columns (the same rank-r_k
                               * product), and they stay out of the zero-padding, so no A ever changes */
            size_t in = (size_t)e->shape[1];
            for (int j = 0; j < (int)e->shape[0]; j++)
                memset(m + (size_t)j * in, h->c.freeze_a ? LOOM_MASK_FROZEN : j >= rk ? LOOM_MASK_ABSENT : base, in);
        } else if (p->kind == 2) { /* B [out, r_max]: columns are rank slots */
            size_t R = (size_t)e->shape[1];
            for (size_t o = 0; o < (size_t)e->shape[0]; o++)
                for (size_t j = 0; j < R; j++) m[o * R + j] = (int)j >= rk ? LOOM_MASK_ABSENT : base;
        } else {
            memset(m, base, e->numel);
        }
    }
    if (held != lay) free(held);
    return rc;
}

int loom_hetero_prune(loom_hetero *h, int client, const float *global, const float *update, int *pruned) {
    if (pruned) *pruned = 0;
    if (client < 0 || client >= h->c.n_clients)
        return loom_error(LOOM_EINVAL, "heterogeneous clients: no client %d (of %d)", client, h->c.n_clients);
    if (!(h->c.prune_gamma > 0) || !h->ranks) return LOOM_OK;
    const int r = h->ranks[client];
    if (r <= 1) return LOOM_OK;
    double last = 0, all = 0;
    for (int i = 0; i + 1 < h->n_parts; i++) {
        if (h->parts[i].kind != 1 || h->parts[i + 1].kind != 2) continue;
        const loom_tset_entry *A = loom_tset_entry_at(h->ts, h->parts[i].e), *B = loom_tset_entry_at(h->ts, h->parts[i + 1].e);
        const size_t in = (size_t)A->shape[1], out = (size_t)B->shape[0], R = (size_t)B->shape[1];
        for (int j = 0; j < r; j++) {
            double na = 0, nb = 0;
            for (size_t c = 0; c < in; c++) {
                size_t k = A->offset + (size_t)j * in + c;
                double v = (double)global[k] + update[k];
                na += v * v;
            }
            for (size_t o = 0; o < out; o++) {
                size_t k = B->offset + o * R + (size_t)j;
                double v = (double)global[k] + update[k];
                nb += v * v;
            }
            double t = sqrt(na) * sqrt(nb);
            all += t;
            if (j == r - 1) last += t;
        }
    }
    if (all > 0 && last < h->c.prune_gamma * all) {
        h->ranks[client] = r - 1;
        if (pruned) *pruned = 1;
    }
    return LOOM_OK;
}

int loom_hetero_pruning(const loom_hetero *h) { return h->c.prune_gamma > 0 && h->ranks; }

int loom_hetero_sparsity(const loom_hetero *h) { return h->c.sparsity != 0; }

int loom_hetero_weight(const loom_hetero *h, int client, const float *global, const float *update, double *s,
                       uint64_t *w) {
    if (client < 0 || client >= h->c.n_clients)
        return loom_error(LOOM_EINVAL, "heterogeneous clients: no client %d (of %d)", client, h->c.n_clients);
    if (h->r_max < 1) return loom_error(LOOM_EINVAL, "--hetlora-agg sparsity needs --peft lora");
    const int r = loom_hetero_rank(h, client);
    double *ga = malloc((size_t)r * (size_t)r * sizeof *ga), *gb = malloc((size_t)r * (size_t)r * sizeof *gb);
    if (!ga || !gb) {
        free(ga);
        free(gb);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    double total = 0;
    for (int i = 0; i + 1 < h->n_parts; i++) {
        if (h->parts[i].kind != 1 || h->parts[i + 1].kind != 2) continue;
        const loom_tset_entry *A = loom_tset_entry_at(h->ts, h->parts[i].e), *B = loom_tset_entry_at(h->ts, h->parts[i + 1].e);
        const size_t in = (size_t)A->shape[1], out = (size_t)B->shape[0], R = (size_t)B->shape[1];
        /* ||B A||_F^2 = sum_{j,l} (A A^T)_{jl} (B^T B)_{jl} over the slots j, l < r */
        for (int j = 0; j < r; j++)
            for (int l = 0; l <= j; l++) {
                double sa = 0, sb = 0;
                for (size_t c = 0; c < in; c++) {
                    size_t kj = A->offset + (size_t)j * in + c, kl = A->offset + (size_t)l * in + c;
                    sa += ((double)global[kj] + update[kj]) * ((double)global[kl] + update[kl]);
                }
                for (size_t o = 0; o < out; o++) {
                    size_t kj = B->offset + o * R + (size_t)j, kl = B->offset + o * R + (size_t)l;
                    sb += ((double)global[kj] + update[kj]) * ((double)global[kl] + update[kl]);
                }
                ga[j * r + l] = ga[l * r + j] = sa;
                gb[j * r + l] = gb[l * r + j] = sb;
            }
        for (int q = 0; q < r * r; q++) total += ga[q] * gb[q];
    }
    free(ga);
    free(gb);
    double S = sqrt(total > 0 ? total : 0), q = rint(S * 16777216.0);
    if (s) *s = S;
    *w = q < 1 ? 1 : q > LOOM_FX_MAX_WEIGHT ? (uint64_t)LOOM_FX_MAX_WEIGHT : (uint64_t)q;
    return LOOM_OK;
}

int loom_hetero_weight_cb(void *ud, int client, int round, const float *global, const float *update, uint64_t *w) {
    (void)round;
    return loom_hetero_weight(ud, client, global, update, NULL, w);
}

int loom_hetero_mask_cb(void *ud, int client, int round, uint8_t *mask) {
    return loom_hetero_mask(ud, client, round, mask);
}

/* ------------------------------------------------------------------ --client-ranks / --fedra-layers */

int loom_hetero_parse_list(const char *s, const char *what, int lo, int hi, uint64_t seed, int n_clients, int *out) {
    if (!s || !*s) return loom_error(LOOM_EINVAL, "%s: empty list", what);
    int draw = !strncmp(s, "draw:", 5);
    const char *p = draw ? s + 5 : s;
    int vals[4096], n = 0;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || (*end && *end != ','))
            return loom_error(LOOM_EINVAL, "%s: '%s' is not a comma-separated list of whole numbers", what, s);
        if (v < lo || v > hi)
            return loom_error(LOOM_ERANGE, "%s: entry %d is %ld, outside %d..%d", what, n + 1, v, lo, hi);
        if (n == (int)(sizeof vals / sizeof *vals))
            return loom_error(LOOM_ERANGE, "%s: more than %d entries", what, (int)(sizeof vals / sizeof *vals));
        vals[n++] = (int)v;
        p = *end ? end + 1 : end;
        if (*end && !*p) return loom_error(LOOM_EINVAL, "%s: '%s' ends with a comma", what, s);
    }
    if (n == 0) return loom_error(LOOM_EINVAL, "%s: empty list", what);
    if (!draw && n > n_clients)
        return loom_error(LOOM_EINVAL, "%s: %d entries for %d clients", what, n, n_clients);
    for (int k = 0; k < n_clients; k++) {
        if (draw) {
            loom_rng r;
            loom_rng_init(&r, seed, loom_hash2(LOOM_STREAM_RANK_DRAW, (uint64_t)k));
            out[k] = vals[loom_rng_below(&r, (uint32_t)n)];
        } else {
            out[k] = vals[k % n];
        }
    }
    return LOOM_OK;
}

/* ------------------------------------------------------------------ FLoRA stacking */

/* The k-th A entry and the B entry that follows it. */
static int find_module(const loom_tset *ts, int module, const loom_tset_entry **A, const loom_tset_entry **B) {
    int k = 0;
    for (int i = 0; i + 1 < loom_tset_count(ts); i++) {
        const loom_tset_entry *a = loom_tset_entry_at(ts, i);
        if (!ends_with(a->name, "lora_A.weight")) continue;
        if (k++ != module) continue;
        const loom_tset_entry *b = loom_tset_entry_at(ts, i + 1);
        if (!ends_with(b->name, "lora_B.weight") || b->shape[1] != a->shape[0])
            return loom_error(LOOM_EFORMAT, "LoRA module %s has no matching B", a->name);
        *A = a;
        *B = b;
        return LOOM_OK;
    }
    return loom_error(LOOM_EINVAL, "FLoRA stacking: no LoRA module %d (the set has %d)", module, k);
}

static int check_clients(const loom_tset *ts, const float *const *vecs, const int *ranks, const double *weights,
                         size_t n, int R, double *wsum) {
    if (n == 0 || !vecs || !weights) return loom_error(LOOM_EINVAL, "FLoRA stacking of no client");
    *wsum = 0;
    for (size_t i = 0; i < n; i++) {
        if (!vecs[i]) return loom_error(LOOM_EINVAL, "FLoRA stacking: client %zu has no vector", i);
        if (!(weights[i] > 0)) return loom_error(LOOM_EINVAL, "FLoRA stacking: client %zu has weight %g", i, weights[i]);
        if (ranks && (ranks[i] < 1 || ranks[i] > R))
            return loom_error(LOOM_ERANGE, "FLoRA stacking: client %zu has rank %d, outside 1..%d", i, ranks[i], R);
        *wsum += weights[i];
    }
    (void)ts;
    return LOOM_OK;
}

int loom_lora_stack(const loom_tset *ts, int module, const float *const *vecs, const int *ranks,
                    const double *weights, size_t n, float *A_out, float *B_out, int *rank_out) {
    const loom_tset_entry *A = NULL, *B = NULL;
    int rc = find_module(ts, module, &A, &B);
    if (rc != LOOM_OK) return rc;
    const int R = (int)A->shape[0];
    const size_t in = (size_t)A->shape[1], out = (size_t)B->shape[0];
    double W;
    if ((rc = check_clients(ts, vecs, ranks, weights, n, R, &W)) != LOOM_OK) return rc;
    size_t S = 0;
    for (size_t i = 0; i < n; i++) S += (size_t)(ranks ? ranks[i] : R);
    *rank_out = (int)S;
    size_t row = 0;
    for (size_t i = 0; i < n; i++) {
        const size_t r = (size_t)(ranks ? ranks[i] : R);
        const float *a = vecs[i] + A->offset, *b = vecs[i] + B->offset;
        const double p = weights[i] / W;
        if (A_out) memcpy(A_out + row * in, a, r * in * sizeof(float));
        if (B_out)
            for (size_t o = 0; o < out; o++)
                for (size_t j = 0; j < r; j++) B_out[o * S + row + j] = (float)(p * (double)b[o * (size_t)R + j]);
        row += r;
    }
    return LOOM_OK;
}

int loom_lora_stack_merge(const loom_tset *ts, const float *const *vecs, const int *ranks, const double *weights,
                          size_t n, float *params) {
    if (loom_tset_config(ts)->method != LOOM_PEFT_LORA)
        return loom_error(LOOM_EINVAL, "FLoRA stacking needs a LoRA set (the set is %s)",
                          loom_peft_method_name(loom_tset_config(ts)->method));
    const int R = loom_tset_config(ts)->lora_r;
    double W;
    int rc = check_clients(ts, vecs, ranks, weights, n, R, &W);
    if (rc != LOOM_OK) return rc;
    const size_t dim = loom_tset_dim(ts);
    float *tmp = loom_alloc(dim * sizeof *tmp);
    if (!tmp) return loom_error(LOOM_ENOMEM, "out of memory for a LoRA vector of %zu values", dim);
    /* B_s A_s = sum_i (p_i B_i[:, :r_i]) A_i[:r_i, :]: each client's truncated, weighted pair merged in turn */
    for (size_t i = 0; i < n && rc == LOOM_OK; i++) {
        const int r = ranks ? ranks[i] : R;
        const double p = weights[i] / W;
        memcpy(tmp, vecs[i], dim * sizeof *tmp);
        for (int e = 0; e < loom_tset_count(ts); e++) {
            const loom_tset_entry *t = loom_tset_entry_at(ts, e);
            float *v = tmp + t->offset;
            if (ends_with(t->name, "lora_A.weight")) {
                memset(v + (size_t)r * (size_t)t->shape[1], 0, (size_t)(R - r) * (size_t)t->shape[1] * sizeof *v);
            } else if (ends_with(t->name, "lora_B.weight")) {
                for (size_t o = 0; o < (size_t)t->shape[0]; o++)
                    for (int j = 0; j < R; j++) v[o * R + j] = j < r ? (float)(p * (double)v[o * R + j]) : 0.0f;
            }
        }
        rc = loom_tset_merge(ts, tmp, params);
    }
    loom_free(tmp);
    return rc;
}
