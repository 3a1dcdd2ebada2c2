/* Partitioners: IID, Dirichlet label skew, natural groups, quantity skew; per-client test split. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/partition.h"

/* RNG stream tags, so that the draws of different methods never share a stream. */
enum {
    STREAM_IID = LOOM_STREAM_PARTITION_IID,
    STREAM_DIRICHLET = LOOM_STREAM_PARTITION_DIRICHLET,
    STREAM_CLASS_SHUFFLE = LOOM_STREAM_PARTITION_CLASS,
    STREAM_QUANTITY = LOOM_STREAM_PARTITION_QUANTITY,
    STREAM_TEST = LOOM_STREAM_PARTITION_TEST,
};

void loom_partition_opts_init(loom_partition_opts *o) {
    memset(o, 0, sizeof *o);
    o->method = LOOM_PART_IID;
    o->n_clients = 10;
    o->alpha = 0.5;
    o->sigma = 1.0;
    o->by = LOOM_BY_AUTO;
    o->max_tries = 1000;
}

int loom_partition_method(const char *name) {
    static const char *const names[] = {"iid", "dirichlet", "natural", "quantity"};
    for (int i = 0; i < 4; i++)
        if (name && !strcmp(name, names[i])) return i;
    return -1;
}

void loom_partition_free(loom_partition *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_clients; i++) {
        free(p->clients[i].name);
        free(p->clients[i].train);
        free(p->clients[i].test);
    }
    free(p->clients);
    free(p);
}

static loom_partition *part_new(size_t n_clients, size_t n) {
    loom_partition *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->clients = calloc(n_clients ? n_clients : 1, sizeof *p->clients);
    if (!p->clients) {
        free(p);
        return NULL;
    }
    p->n_clients = n_clients;
    p->n_examples = n;
    p->draws = 1;
    for (size_t i = 0; i < n_clients; i++) {
        char name[32];
        snprintf(name, sizeof name, "client_%04zu", i);
        p->clients[i].name = loom_strdup(name);
        if (!p->clients[i].name) {
            loom_partition_free(p);
            return NULL;
        }
    }
    return p;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Gives client c the indices src[0..n), sorted. */
static int set_train(loom_client *c, const uint32_t *src, size_t n) {
    free(c->train);
    c->train = malloc((n ? n : 1) * sizeof *c->train);
    if (!c->train) return loom_error(LOOM_ENOMEM, "out of memory");
    memcpy(c->train, src, n * sizeof *src);
    qsort(c->train, n, sizeof *c->train, cmp_u32);
    c->n_train = n;
    return LOOM_OK;
}

static uint32_t *iota_shuffled(size_t n, uint64_t seed, uint64_t stream) {
    uint32_t *a = malloc((n ? n : 1) * sizeof *a);
    if (!a) return NULL;
    for (size_t i = 0; i < n; i++) a[i] = (uint32_t)i;
    loom_rng r;
    loom_rng_init(&r, seed, stream);
    loom_rng_shuffle_u32(&r, a, n);
    return a;
}

static int check_sizes(size_t n, size_t n_clients, size_t min_examples, const char *what) {
    if (n_clients == 0) return loom_error(LOOM_EINVAL, "%s partition: 0 clients", what);
    if (n > UINT32_MAX) return loom_error(LOOM_ERANGE, "%s partition: more than 2^32 examples", what);
    if (min_examples && n / n_clients < min_examples)
        return loom_error(LOOM_ERANGE, "%s partition: %zu examples cannot give %zu clients %zu examples each", what, n,
                          n_clients, min_examples);
    return LOOM_OK;
}

/* Cuts the shuffled order into consecutive chunks of the given sizes (sum = n). */
static int assign_chunks(loom_partition *p, const uint32_t *order, const size_t *sizes) {
    size_t at = 0;
    for (size_t i = 0; i < p->n_clients; i++) {
        int rc = set_train(&p->clients[i], order + at, sizes[i]);
        if (rc) return rc;
        at += sizes[i];
    }
    return LOOM_OK;
}

int loom_partition_iid(loom_partition **out, size_t n, size_t n_clients, size_t min_examples, uint64_t seed) {
    *out = NULL;
    int rc = check_sizes(n, n_clients, min_examples, "iid");
    if (rc) return rc;
    loom_partition *p = part_new(n_clients, n);
    uint32_t *order = iota_shuffled(n, seed, STREAM_IID);
    size_t *sizes = malloc(n_clients * sizeof *sizes);
    if (!p || !order || !sizes) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
    } else {
        for (size_t i = 0; i < n_clients; i++) sizes[i] = n / n_clients + (i < n % n_clients);
        rc = assign_chunks(p, order, sizes);
    }
    free(order);
    free(sizes);
    if (rc) {
        loom_partition_free(p);
        return rc;
    }
    *out = p;
    return LOOM_OK;
}

/* Splits `total` into n parts proportional to w (w >= 0) by largest remainder; rem (n) is scratch.
 * Ties go to the lower index, so the result is deterministic. */
static void apportion(size_t *out, const double *w, double *rem, size_t n, size_t total) {
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += w[i];
    size_t given = 0;
    for (size_t i = 0; i < n; i++) {
        double x = sum > 0 ? (double)total * (w[i] / sum) : (double)total / (double)n;
        double f = floor(x);
        out[i] = f >= (double)total ? total : (size_t)f;
        given += out[i];
        rem[i] = x - f;
    }
    while (given < total) {
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (rem[i] > rem[best]) best = i;
        out[best]++;
        rem[best] = -1;
        given++;
    }
    while (given > total) { /* only through floating-point excess; take from the largest */
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (out[i] > out[best]) best = i;
        out[best]--;
        given--;
    }
}

/* log of a Gamma(a, 1) draw. Marsaglia-Tsang for a >= 1; for a < 1 the boost
 * G(a) = G(a+1) * U^(1/a), kept in logs because U^(1/a) underflows for small a. */
static double log_gamma_draw(loom_rng *r, double a) {
    double boost = 0;
    if (a < 1) {
        double u = loom_rng_uniform(r);
        if (u <= 0) u = 0x1p-60;
        boost = log(u) / a;
        a += 1;
    }
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9 * d);
    for (;;) {
        double x = loom_rng_normal(r), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = loom_rng_uniform(r);
        if (u <= 0) continue;
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return log(d * v) + boost;
    }
}

/* p ~ Dirichlet(alpha, ..., alpha) of dimension k. */
static void dirichlet_draw(loom_rng *r, double alpha, double *p, size_t k) {
    double mx = -INFINITY;
    for (size_t i = 0; i < k; i++) {
        p[i] = log_gamma_draw(r, alpha);
        if (p[i] > mx) mx = p[i];
    }
    double s = 0;
    for (size_t i = 0; i < k; i++) s += (p[i] = exp(p[i] - mx));
    for (size_t i = 0; i < k; i++) p[i] /= s;
}

int loom_partition_dirichlet(loom_partition **out, const int32_t *cls, size_t n, size_t n_classes,
                             size_t n_clients, double alpha, size_t min_examples, uint64_t seed,
                             size_t max_tries) {
    *out = NULL;
    int rc = check_sizes(n, n_clients, min_examples, "dirichlet");
    if (rc) return rc;
    if (!(alpha > 0) || !isfinite(alpha)) return loom_error(LOOM_EINVAL, "dirichlet partition: alpha = %g must be positive", alpha);
    if (n_classes == 0) return loom_error(LOOM_EINVAL, "dirichlet partition: no classes");
    for (size_t i = 0; i < n; i++)
        if (cls[i] < 0 || (size_t)cls[i] >= n_classes)
            return loom_error(LOOM_EINVAL, "dirichlet partition: example %zu has class %d, expected 0..%zu", i, cls[i],
                              n_classes - 1);
    if (max_tries == 0) max_tries = 1;
    /* Each class's examples, shuffled once (the same for every draw). */
    size_t *cstart = calloc(n_classes + 1, sizeof *cstart);
    uint32_t *byc = malloc((n ? n : 1) * sizeof *byc);
    double *prob = malloc(n_clients * sizeof *prob), *rem = malloc(n_clients * sizeof *rem);
    size_t *cnt = malloc(n_clients * sizeof *cnt), *total = malloc(n_clients * sizeof *total);
    size_t *cut = malloc(n_classes * n_clients * sizeof *cut); /* (n_classes, n_clients) */
    loom_partition *p = NULL;
    if (!cstart || !byc || !prob || !rem || !cnt || !total || !cut) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) cstart[cls[i] + 1]++;
    for (size_t c = 0; c < n_classes; c++) cstart[c + 1] += cstart[c];
    {
        size_t *fill = malloc(n_classes * sizeof *fill);
        if (!fill) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto done;
        }
        memcpy(fill, cstart, n_classes * sizeof *fill);
        for (size_t i = 0; i < n; i++) byc[fill[cls[i]]++] = (uint32_t)i;
        free(fill);
    }
    for (size_t c = 0; c < n_classes; c++) {
        loom_rng r;
        loom_rng_init(&r, seed, loom_hash2(STREAM_CLASS_SHUFFLE, c));
        loom_rng_shuffle_u32(&r, byc + cstart[c], cstart[c + 1] - cstart[c]);
    }
    size_t tries = 0;
    for (;;) {
        loom_rng r;
        loom_rng_init(&r, seed, loom_hash2(STREAM_DIRICHLET, tries));
        tries++;
        memset(total, 0, n_clients * sizeof *total);
        for (size_t c = 0; c < n_classes; c++) {
            dirichlet_draw(&r, alpha, prob, n_clients);
            apportion(cnt, prob, rem, n_clients, cstart[c + 1] - cstart[c]);
            for (size_t j = 0; j < n_clients; j++) {
                cut[c * n_clients + j] = cnt[j];
                total[j] += cnt[j];
            }
        }
        size_t smallest = total[0];
        for (size_t j = 1; j < n_clients; j++) smallest = LOOM_MIN(smallest, total[j]);
        if (smallest >= min_examples) break;
        if (tries >= max_tries) {
            rc = loom_error(LOOM_ERANGE,
                            "dirichlet partition: %zu draws with alpha = %g all left a client with fewer than %zu examples; "
                            "raise alpha, lower the minimum or use fewer clients",
                            tries, alpha, min_examples);
            goto done;
        }
    }
    p = part_new(n_clients, n);
    if (!p) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    p->draws = tries;
    for (size_t j = 0; j < n_clients && !rc; j++) {
        loom_client *cl = &p->clients[j];
        cl->train = malloc((total[j] ? total[j] : 1) * sizeof *cl->train);
        if (!cl->train) rc = loom_error(LOOM_ENOMEM, "out of memory");
    }
    for (size_t c = 0; c < n_classes && !rc; c++) {
        size_t at = cstart[c];
        for (size_t j = 0; j < n_clients; j++) {
            loom_client *cl = &p->clients[j];
            size_t k = cut[c * n_clients + j];
            memcpy(cl->train + cl->n_train, byc + at, k * sizeof *byc);
            cl->n_train += k;
            at += k;
        }
    }
    for (size_t j = 0; j < n_clients && !rc; j++)
        qsort(p->clients[j].train, p->clients[j].n_train, sizeof(uint32_t), cmp_u32);
done:
    free(cstart);
    free(byc);
    free(prob);
    free(rem);
    free(cnt);
    free(total);
    free(cut);
    if (rc) {
        loom_partition_free(p);
        return rc;
    }
    *out = p;
    return LOOM_OK;
}

int loom_partition_natural(loom_partition **out, const int32_t *group, size_t n, size_t n_groups,
                           const char *const *names, size_t min_examples) {
    *out = NULL;
    if (n > UINT32_MAX) return loom_error(LOOM_ERANGE, "natural partition: more than 2^32 examples");
    if (n_groups == 0) return loom_error(LOOM_EINVAL, "natural partition: no groups");
    for (size_t i = 0; i < n; i++)
        if (group[i] < 0 || (size_t)group[i] >= n_groups)
            return loom_error(LOOM_EINVAL, "natural partition: example %zu has no group (value %d, expected 0..%zu)", i,
                              group[i], n_groups - 1);
    if (min_examples > n)
        return loom_error(LOOM_ERANGE, "natural partition: %zu examples cannot make a client of %zu", n, min_examples);
    size_t *count = calloc(n_groups, sizeof *count);
    size_t *client_of = malloc(n_groups * sizeof *client_of);
    size_t *first = malloc(n_groups * sizeof *first); /* first group of each client, for names */
    size_t *members = calloc(n_groups, sizeof *members);
    int rc = LOOM_OK;
    loom_partition *p = NULL;
    if (!count || !client_of || !first || !members) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) count[group[i]]++;
    /* Groups in key order; small ones are gathered into a pending client until it reaches the minimum. */
    size_t nc = 0, pending = 0, pending_n = 0;
    int has_pending = 0;
    for (size_t g = 0; g < n_groups; g++) {
        if (count[g] == 0) {
            client_of[g] = SIZE_MAX;
            continue;
        }
        if (count[g] >= min_examples) {
            first[nc] = g;
            members[nc] = 1;
            client_of[g] = nc++;
            continue;
        }
        if (!has_pending) {
            has_pending = 1;
            pending = nc++;
            pending_n = 0;
            first[pending] = g;
            members[pending] = 0;
        }
        client_of[g] = pending;
        members[pending]++;
        pending_n += count[g];
        if (pending_n >= min_examples) has_pending = 0;
    }
    if (has_pending && nc > 1) {
        /* The remainder never reached the minimum: it joins the last client formed before it. */
        size_t target = pending == nc - 1 ? nc - 2 : nc - 1;
        size_t target_after = target > pending ? target - 1 : target; /* its index once pending is removed */
        for (size_t g = 0; g < n_groups; g++)
            if (client_of[g] == pending) client_of[g] = target_after;
            else if (client_of[g] != SIZE_MAX && client_of[g] > pending) client_of[g]--;
        members[target] += members[pending];
        for (size_t c = pending; c + 1 < nc; c++) {
            first[c] = first[c + 1];
            members[c] = members[c + 1];
        }
        nc--;
    }
    p = part_new(nc, n);
    if (!p) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t c = 0; c < nc && !rc; c++) {
        loom_client *cl = &p->clients[c];
        size_t sz = 0;
        for (size_t g = 0; g < n_groups; g++)
            if (client_of[g] == c) sz += count[g];
        cl->train = malloc((sz ? sz : 1) * sizeof *cl->train);
        if (!cl->train) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            break;
        }
        if (names) {
            char buf[256];
            const char *nm = names[first[c]];
            if (members[c] > 1) snprintf(buf, sizeof buf, "%s+%zu", nm, members[c] - 1);
            else snprintf(buf, sizeof buf, "%s", nm);
            free(cl->name);
            cl->name = loom_strdup(buf);
            if (!cl->name) rc = LOOM_ENOMEM;
        }
    }
    for (size_t i = 0; i < n && !rc; i++) {
        loom_client *cl = &p->clients[client_of[group[i]]];
        cl->train[cl->n_train++] = (uint32_t)i;
    }
done:
    free(count);
    free(client_of);
    free(first);
    free(members);
    if (rc) {
        loom_partition_free(p);
        return rc;
    }
    *out = p;
    return LOOM_OK;
}

int loom_partition_quantity(loom_partition **out, size_t n, size_t n_clients, double sigma,
                            size_t min_examples, uint64_t seed) {
    *out = NULL;
    int rc = check_sizes(n, n_clients, min_examples, "quantity");
    if (rc) return rc;
    if (!(sigma >= 0) || !isfinite(sigma)) return loom_error(LOOM_EINVAL, "quantity partition: sigma = %g must be >= 0", sigma);
    loom_partition *p = part_new(n_clients, n);
    uint32_t *order = iota_shuffled(n, seed, loom_hash2(STREAM_QUANTITY, 0));
    size_t *sizes = malloc(n_clients * sizeof *sizes);
    double *w = calloc(n_clients, sizeof *w), *rem = calloc(n_clients, sizeof *rem);
    if (!p || !order || !sizes || !w || !rem) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
    } else {
        loom_rng r;
        loom_rng_init(&r, seed, loom_hash2(STREAM_QUANTITY, 1));
        for (size_t i = 0; i < n_clients; i++) w[i] = exp(sigma * loom_rng_normal(&r));
        apportion(sizes, w, rem, n_clients, n - min_examples * n_clients);
        for (size_t i = 0; i < n_clients; i++) sizes[i] += min_examples;
        rc = assign_chunks(p, order, sizes);
    }
    free(order);
    free(sizes);
    free(w);
    free(rem);
    if (rc) {
        loom_partition_free(p);
        return rc;
    }
    *out = p;
    return LOOM_OK;
}

int loom_partition_dataset(loom_partition **out, const loom_dataset *ds, const loom_partition_opts *o) {
    *out = NULL;
    if (o->method == LOOM_PART_IID) return loom_partition_iid(out, ds->n, o->n_clients, o->min_examples, o->seed);
    if (o->method == LOOM_PART_QUANTITY)
        return loom_partition_quantity(out, ds->n, o->n_clients, o->sigma, o->min_examples, o->seed);
    if (o->method != LOOM_PART_DIRICHLET && o->method != LOOM_PART_NATURAL)
        return loom_error(LOOM_EINVAL, "unknown partition method %d", o->method);
    int by = o->by;
    if (by == LOOM_BY_AUTO) by = ds->n_labels ? LOOM_BY_LABEL : LOOM_BY_KEY;
    size_t ng = by == LOOM_BY_LABEL ? ds->n_labels : ds->n_keys;
    if (ng == 0)
        return loom_error(LOOM_EINVAL, "%s partition: the dataset has no %s", o->method == LOOM_PART_NATURAL ? "natural" : "dirichlet",
                          by == LOOM_BY_LABEL ? "labels" : "keys (give a key field)");
    int32_t *g = malloc((ds->n ? ds->n : 1) * sizeof *g);
    if (!g) return loom_error(LOOM_ENOMEM, "out of memory");
    for (size_t i = 0; i < ds->n; i++) {
        g[i] = by == LOOM_BY_LABEL ? ds->ex[i].label : ds->ex[i].key;
        if (g[i] < 0) {
            int rc = loom_error(LOOM_EFORMAT, "example %zu (line %u) has no %s", i, ds->ex[i].line,
                                by == LOOM_BY_LABEL ? "label" : "key");
            free(g);
            return rc;
        }
    }
    int rc;
    if (o->method == LOOM_PART_NATURAL) {
        rc = loom_partition_natural(out, g, ds->n, ng,
                                    (const char *const *)(by == LOOM_BY_LABEL ? ds->label_names : ds->keys),
                                    o->min_examples);
    } else {
        rc = loom_partition_dirichlet(out, g, ds->n, ng, o->n_clients, o->alpha, o->min_examples, o->seed, o->max_tries);
    }
    free(g);
    return rc;
}

int loom_client_split_test(loom_client *cl, size_t c, double test_frac, uint64_t seed, int ordered) {
    if (!(test_frac >= 0 && test_frac <= 1)) return loom_error(LOOM_EINVAL, "test fraction %g is not in [0, 1]", test_frac);
    if (cl->n_test) return loom_error(LOOM_ESTATE, "client %s already has a test split", cl->name);
    size_t n = cl->n_train, nt = (size_t)floor(test_frac * (double)n + 0.5);
    if (nt > n) nt = n;
    uint32_t *test = malloc((nt ? nt : 1) * sizeof *test);
    if (!test) return loom_error(LOOM_ENOMEM, "out of memory");
    if (ordered) {
        memcpy(test, cl->train + (n - nt), nt * sizeof *test);
    } else {
        /* A seeded shuffle of the client's indices; the first nt go to test. */
        uint32_t *tmp = malloc((n ? n : 1) * sizeof *tmp);
        if (!tmp) {
            free(test);
            return loom_error(LOOM_ENOMEM, "out of memory");
        }
        memcpy(tmp, cl->train, n * sizeof *tmp);
        loom_rng r;
        loom_rng_init(&r, seed, loom_hash2(STREAM_TEST, c));
        loom_rng_shuffle_u32(&r, tmp, n);
        memcpy(test, tmp, nt * sizeof *test);
        qsort(test, nt, sizeof *test, cmp_u32);
        memcpy(cl->train, tmp + nt, (n - nt) * sizeof *tmp);
        qsort(cl->train, n - nt, sizeof *tmp, cmp_u32);
        free(tmp);
    }
    cl->n_train = n - nt;
    free(cl->test);
    cl->test = test;
    cl->n_test = nt;
    return LOOM_OK;
}

int loom_partition_split_test(loom_partition *p, double test_frac, uint64_t seed, int ordered) {
    for (size_t c = 0; c < p->n_clients; c++) {
        int rc = loom_client_split_test(&p->clients[c], c, test_frac, seed, ordered);
        if (rc != LOOM_OK) return rc;
    }
    return LOOM_OK;
}

int loom_partition_check(const loom_partition *p, size_t n) {
    uint8_t *seen = calloc(n ? n : 1, 1);
    if (!seen) return loom_error(LOOM_ENOMEM, "out of memory");
    int rc = LOOM_OK;
    size_t total = 0;
    for (size_t c = 0; c < p->n_clients && !rc; c++) {
        const loom_client *cl = &p->clients[c];
        for (int part = 0; part < 2 && !rc; part++) {
            const uint32_t *a = part ? cl->test : cl->train;
            size_t m = part ? cl->n_test : cl->n_train;
            for (size_t i = 0; i < m; i++) {
                if (a[i] >= n) {
                    rc = loom_error(LOOM_ERANGE, "client %s holds index %u, past %zu examples", cl->name, a[i], n);
                    break;
                }
                if (seen[a[i]]++) {
                    rc = loom_error(LOOM_EFORMAT, "example %u is in two places (again in client %s)", a[i], cl->name);
                    break;
                }
                total++;
            }
        }
    }
    if (!rc && total != n) rc = loom_error(LOOM_EFORMAT, "the clients hold %zu of %zu examples", total, n);
    free(seen);
    return rc;
}
