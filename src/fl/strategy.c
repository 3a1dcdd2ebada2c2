/* Strategy front end: the registry, hyper-parameters, the step and the persistent-state table. The arithmetic of each strategy lives in strategy_<family>.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl/strategy_impl.h"
#include "loom/core.h"

/* The registry: adding a strategy means one line here (and its ops in a file of its own). */
static const loom_strategy_ops *const registry[] = {
    &loom_strategy_fedavg_ops,     &loom_strategy_fedprox_ops, &loom_strategy_fedsgd_ops,
    &loom_strategy_fedavgm_ops,    &loom_strategy_fedadagrad_ops, &loom_strategy_fedadam_ops,
    &loom_strategy_fedyogi_ops,    &loom_strategy_scaffold_ops,
};
#define N_REGISTRY (sizeof registry / sizeof registry[0])

static const loom_strategy_ops *find_ops(const char *name) {
    if (!name) return NULL;
    for (size_t i = 0; i < N_REGISTRY; i++)
        if (strcmp(registry[i]->name, name) == 0) return registry[i];
    return NULL;
}

static int unknown_name(const char *name) {
    char list[256] = "";
    size_t off = 0;
    for (size_t i = 0; i < N_REGISTRY && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", registry[i]->name);
    return loom_error(LOOM_EINVAL, "unknown strategy \"%s\" (known: %s)", name ? name : "(null)", list);
}

const char *loom_strategy_name_at(size_t i) { return i < N_REGISTRY ? registry[i]->name : NULL; }

/* ---- hyper-parameters ---- */

int loom_strategy_defaults(const char *name, loom_strategy_params *p) {
    const loom_strategy_ops *ops = find_ops(name);
    if (!ops) return unknown_name(name);
    p->server_lr = 1.0;
    p->momentum = 0.9;
    p->beta1 = 0.9;
    p->beta2 = 0.99;
    p->tau = 1e-3;
    p->v_init = -1.0;
    p->mu = 0.0;
    p->num_clients = 0;
    if (ops->defaults) ops->defaults(p);
    return LOOM_OK;
}

int loom_strategy_params_set(loom_strategy_params *p, const char *key, double value) {
    if (!key) return loom_error(LOOM_EINVAL, "strategy parameter name is NULL");
    if (!strcmp(key, "server_lr") || !strcmp(key, "eta")) p->server_lr = value;
    else if (!strcmp(key, "momentum")) p->momentum = value;
    else if (!strcmp(key, "beta1")) p->beta1 = value;
    else if (!strcmp(key, "beta2")) p->beta2 = value;
    else if (!strcmp(key, "tau")) p->tau = value;
    else if (!strcmp(key, "v_init")) p->v_init = value;
    else if (!strcmp(key, "mu")) p->mu = value;
    else if (!strcmp(key, "num_clients")) {
        if (!(value >= 0 && value <= 1e15) || value != floor(value))
            return loom_error(LOOM_EINVAL, "num_clients must be a whole number >= 0 (got %g)", value);
        p->num_clients = (long)value;
    } else
        return loom_error(LOOM_EINVAL,
                          "unknown strategy parameter \"%s\" (known: server_lr, eta, momentum, beta1, beta2, tau, "
                          "v_init, mu, num_clients)",
                          key);
    return LOOM_OK;
}

int loom_strategy_params_check(const loom_strategy_params *p) {
    if (!p) return loom_error(LOOM_EINVAL, "strategy parameters are NULL");
    if (!(p->server_lr >= 0 && isfinite(p->server_lr)))
        return loom_error(LOOM_ERANGE, "server_lr must be finite and >= 0 (got %g)", p->server_lr);
    if (!(p->momentum >= 0 && p->momentum < 1))
        return loom_error(LOOM_ERANGE, "momentum must be in [0, 1) (got %g)", p->momentum);
    if (!(p->beta1 >= 0 && p->beta1 < 1)) return loom_error(LOOM_ERANGE, "beta1 must be in [0, 1) (got %g)", p->beta1);
    if (!(p->beta2 >= 0 && p->beta2 < 1)) return loom_error(LOOM_ERANGE, "beta2 must be in [0, 1) (got %g)", p->beta2);
    if (!(p->tau > 0 && isfinite(p->tau))) return loom_error(LOOM_ERANGE, "tau must be finite and > 0 (got %g)", p->tau);
    /* v_init < 0 is the "tau^2" sentinel; NaN and infinity are not. */
    if (!isfinite(p->v_init)) return loom_error(LOOM_ERANGE, "v_init must be finite (got %g)", p->v_init);
    if (!(p->mu >= 0 && isfinite(p->mu))) return loom_error(LOOM_ERANGE, "mu must be finite and >= 0 (got %g)", p->mu);
    if (p->num_clients < 0) return loom_error(LOOM_ERANGE, "num_clients must be >= 0 (got %ld)", p->num_clients);
    return LOOM_OK;
}

/* ---- lifetime ---- */

int strategy_state_add(loom_strategy *s, const char *name, float init, float **data) {
    if (s->n_state >= LOOM_STRATEGY_MAX_STATE)
        return loom_error(LOOM_ESTATE, "strategy %s declares more than %d state vectors", s->ops->name,
                          LOOM_STRATEGY_MAX_STATE);
    float *d = loom_calloc(s->dim, sizeof *d);
    if (!d) return loom_error_context(LOOM_ENOMEM, "strategy %s state %s", s->ops->name, name);
    if (init != 0.0f)
        for (size_t i = 0; i < s->dim; i++) d[i] = init;
    s->state[s->n_state].name = name;
    s->state[s->n_state].data = d;
    s->n_state++;
    *data = d;
    return LOOM_OK;
}

int loom_strategy_create(loom_strategy **out, const char *name, const loom_strategy_params *params, size_t dim) {
    *out = NULL;
    const loom_strategy_ops *ops = find_ops(name);
    if (!ops) return unknown_name(name);
    if (dim == 0) return loom_error(LOOM_EINVAL, "strategy %s: dim must be > 0", name);
    loom_strategy_params p;
    if (params) p = *params;
    else loom_strategy_defaults(name, &p);
    int rc = loom_strategy_params_check(&p);
    if (rc != LOOM_OK) return loom_error_context(rc, "strategy %s", name);

    loom_strategy *s = calloc(1, sizeof *s);
    if (!s) return loom_error(LOOM_ENOMEM, "out of memory");
    s->ops = ops;
    s->p = p;
    s->dim = dim;
    if (ops->init) rc = ops->init(s);
    if (rc != LOOM_OK) {
        loom_strategy_free(s);
        return loom_error_context(rc, "strategy %s with dim %zu", name, dim);
    }
    *out = s;
    return LOOM_OK;
}

void loom_strategy_free(loom_strategy *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_state; i++) loom_free(s->state[i].data);
    free(s);
}

const char *loom_strategy_name(const loom_strategy *s) { return s->ops->name; }
const loom_strategy_params *loom_strategy_get_params(const loom_strategy *s) { return &s->p; }
size_t loom_strategy_dim(const loom_strategy *s) { return s->dim; }
int loom_strategy_update_kind(const loom_strategy *s) { return s->ops->update_kind; }
int loom_strategy_uses_control(const loom_strategy *s) { return s->ops->uses_control; }

/* ---- the step ---- */

int loom_strategy_step(loom_strategy *s, float *global, const double *mean, const double *control_sum,
                       size_t n_updates) {
    const char *name = s->ops->name;
    if (!global || !mean) return loom_error(LOOM_EINVAL, "strategy %s: step without a global vector or a mean", name);
    if (n_updates == 0)
        return loom_error(LOOM_ESTATE, "strategy %s: round closed with no accepted update; global model unchanged",
                          name);
    if (s->ops->uses_control && !control_sum)
        return loom_error(LOOM_EINVAL, "strategy %s: the step needs the sum of control-variate deltas", name);
    if (!s->ops->uses_control && control_sum)
        return loom_error(LOOM_EINVAL, "strategy %s has no control variates, but a control sum was given", name);
    s->mean = mean;
    s->control_sum = control_sum;
    s->n_updates = n_updates;
    int rc = s->ops->step(s, global);
    s->mean = s->control_sum = NULL;
    s->n_updates = 0;
    return rc;
}

/* ---- persistent state ---- */

size_t loom_strategy_state_count(const loom_strategy *s) { return s->n_state; }

int loom_strategy_state(loom_strategy *s, size_t i, const char **name, float **data, size_t *len) {
    if (i >= s->n_state)
        return loom_error(LOOM_ERANGE, "strategy %s has %zu state vectors, no index %zu", s->ops->name, s->n_state, i);
    if (name) *name = s->state[i].name;
    if (data) *data = s->state[i].data;
    if (len) *len = s->dim;
    return LOOM_OK;
}

int loom_strategy_state_find(loom_strategy *s, const char *name, float **data, size_t *len) {
    for (size_t i = 0; i < s->n_state; i++)
        if (name && strcmp(s->state[i].name, name) == 0) return loom_strategy_state(s, i, NULL, data, len);
    return loom_error(LOOM_ENOTFOUND, "strategy %s has no state \"%s\"", s->ops->name, name ? name : "(null)");
}

int loom_strategy_state_load(loom_strategy *s, const char *name, const float *data, size_t len) {
    float *dst;
    size_t dim;
    int rc = loom_strategy_state_find(s, name, &dst, &dim);
    if (rc != LOOM_OK) return rc;
    if (!data || len != dim)
        return loom_error(LOOM_EFORMAT, "strategy %s: state %s has %zu values, expected %zu", s->ops->name, name,
                          data ? len : 0, dim);
    for (size_t i = 0; i < len; i++)
        if (!isfinite(data[i]))
            return loom_error(LOOM_EFORMAT, "strategy %s: state %s value %zu is not finite", s->ops->name, name, i);
    memcpy(dst, data, len * sizeof *dst);
    return LOOM_OK;
}
