/* Simulated Byzantine update attacks (see include/loom/sim.h). */
#include "sim/sim_attack.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

static const char *const attack_names[] = {"none", "gaussian", "signflip", "scale",    "alie",
                                           "ipm",  "labelflip", "backdoor", "embedding"};

int loom_sim_attack_parse(const char *name, int *kind) {
    for (int i = 0; i < (int)(sizeof attack_names / sizeof attack_names[0]); i++)
        if (name && !strcmp(name, attack_names[i])) {
            *kind = i;
            return LOOM_OK;
        }
    return loom_error(LOOM_EINVAL,
                      "--attack '%s' is not one of gaussian, signflip, scale, alie, ipm, labelflip, backdoor, "
                      "embedding, none",
                      name ? name : "");
}

const char *loom_sim_attack_name(int kind) {
    return kind >= 0 && kind <= LOOM_ATTACK_EMBEDDING ? attack_names[kind] : "?";
}

int loom_sim_attackers(uint64_t seed, int n_clients, int count, unsigned char *is_attacker) {
    if (n_clients < 0 || count < 0 || count > n_clients)
        return loom_error(LOOM_EINVAL, "--attackers %d must be in [0, %d] (the clients)", count, n_clients);
    uint32_t *perm = malloc((size_t)(n_clients > 0 ? n_clients : 1) * sizeof *perm);
    if (!perm) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < n_clients; i++) perm[i] = (uint32_t)i;
    loom_rng r;
    loom_rng_init(&r, seed, LOOM_STREAM_ATTACKERS);
    memset(is_attacker, 0, (size_t)n_clients);
    loom_rng_draw_u32(&r, perm, (size_t)n_clients, (size_t)count);
    for (int i = 0; i < count; i++) is_attacker[perm[i]] = 1;
    free(perm);
    return LOOM_OK;
}

int loom_sim_alie_z(int n, int f, double *z) {
    int s = n / 2 + 1 - f;
    if (n < 1 || f < 0 || s <= 0)
        return loom_error(LOOM_EINVAL,
                          "--attack alie needs fewer attackers than floor(n/2 + 1) of a round's n clients (n %d, f %d)",
                          n, f);
    double p = (double)(n - s) / n;
    /* Phi^-1(p) by bisection on Phi(x) = erfc(-x / sqrt 2) / 2, increasing */
    double lo = -40, hi = 40;
    for (int i = 0; i < 200; i++) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * erfc(-mid / sqrt(2.0)) < p) lo = mid;
        else hi = mid;
    }
    *z = 0.5 * (lo + hi);
    return LOOM_OK;
}

static double scale_of(const loom_sim_attack *a) {
    if (a->scale != 0 && !isnan(a->scale)) return a->scale;
    if (a->kind == LOOM_ATTACK_BACKDOOR || a->kind == LOOM_ATTACK_EMBEDDING) return 1.0; /* no replacement scaling */
    return a->kind == LOOM_ATTACK_GAUSSIAN ? 1.0 : a->kind == LOOM_ATTACK_SCALE ? 10.0 : 0.1;
}

int loom_sim_attack_craft(const loom_sim_attack *a, uint64_t seed, int round, int client, size_t dim,
                          const float *const *honest, size_t n_honest, int n, int f, float *update) {
    double s = scale_of(a);
    switch (a->kind) {
    case LOOM_ATTACK_NONE:
    case LOOM_ATTACK_LABELFLIP: return LOOM_OK; /* the poisoning is in its data */
    case LOOM_ATTACK_GAUSSIAN: {
        uint64_t stream = loom_hash2(loom_hash2(LOOM_STREAM_ATTACK_NOISE, (uint64_t)round), (uint64_t)client);
        for (size_t i = 0; i < dim; i++) update[i] = (float)(s * loom_rng_normal_at(seed, stream, i));
        return LOOM_OK;
    }
    case LOOM_ATTACK_SIGNFLIP:
        for (size_t i = 0; i < dim; i++) update[i] = -update[i];
        return LOOM_OK;
    case LOOM_ATTACK_SCALE:
    case LOOM_ATTACK_BACKDOOR:  /* model replacement: lambda times the poisoned update */
    case LOOM_ATTACK_EMBEDDING: /* the trigger's rows, already kept alone by the simulator */
        if (s != 1.0)
            for (size_t i = 0; i < dim; i++) update[i] = (float)(s * update[i]);
        return LOOM_OK;
    case LOOM_ATTACK_ALIE:
    case LOOM_ATTACK_IPM: {
        double z = 0;
        int rc;
        if (a->kind == LOOM_ATTACK_ALIE && f > n / 2) f = n / 2; /* a sampled round with a majority of attackers */
        if (a->kind == LOOM_ATTACK_ALIE && (rc = loom_sim_alie_z(n, f, &z)) != LOOM_OK) return rc;
        if (n_honest == 0) return LOOM_OK; /* nothing to see: the attacker sends its own update */
        for (size_t i = 0; i < dim; i++) {
            double sum = 0;
            for (size_t k = 0; k < n_honest; k++) sum += honest[k][i];
            double mean = sum / (double)n_honest;
            if (a->kind == LOOM_ATTACK_IPM) {
                update[i] = (float)(-s * mean);
                continue;
            }
            double ss = 0;
            for (size_t k = 0; k < n_honest; k++) ss += (honest[k][i] - mean) * (honest[k][i] - mean);
            double sd = n_honest > 1 ? sqrt(ss / (double)(n_honest - 1)) : 0;
            update[i] = (float)(mean - z * sd);
        }
        return LOOM_OK;
    }
    default: return loom_error(LOOM_EINVAL, "unknown attack kind %d", a->kind);
    }
}

/* ------------------------------------------------------------------ the simulator's side */

struct lm_attack {
    loom_sim_attack cfg;
    uint64_t seed;
    size_t dim;
    int n_clients;
    unsigned char *is;   /* (n_clients) attacker flags */
    int omniscient;
    int round;
    const int *list;     /* the round's sampled clients */
    int n;
    int *pos;            /* (n_clients) place in list, -1 when not sampled */
    int cap;             /* places with buffers */
    float **buf;         /* (cap) one update per place */
    unsigned char *state; /* (cap) 0 nothing, 1 honest update kept, 2 attacker held */
    loom_update *held;   /* (cap) the held attackers' messages */
    double *now;         /* (cap) their arrival times */
    lm_flip *flip;       /* labelflip over one shared dataset: its flipped copy */
    lm_flip **flips;     /* labelflip over the clients' own datasets: (n_clients) the attackers' copies */
    int backdoor;        /* BACKDOOR or EMBEDDING */
    lm_trigger trig;
    int target;
    lm_flip **poison;    /* backdoor: (n_clients) each attacker's poisoned copy of its training examples */
    uint32_t **poison_idx; /* (n_clients) 0, 1, ... n_train - 1: the copy's indices */
    size_t *rows;        /* embedding: offsets of the trigger's embedding rows in the vector, increasing */
    size_t n_rows, row_len;
};

int lm_flip_create(lm_flip **out, const loom_dataset *ds) {
    *out = NULL;
    if (ds->kind != LOOM_DS_CLASSIFY || ds->n_labels < 2)
        return loom_error(LOOM_EINVAL, "--attack labelflip needs classification data (a --label-col with two or more labels)");
    lm_flip *fl = calloc(1, sizeof *fl);
    uint32_t *idx = malloc((ds->n ? ds->n : 1) * sizeof *idx);
    if (!fl || !idx) {
        free(fl);
        free(idx);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < ds->n; i++) idx[i] = (uint32_t)i;
    int rc = loom_dataset_subset(&fl->ds, ds, idx, ds->n);
    free(idx);
    if (rc != LOOM_OK) {
        lm_flip_free(fl);
        return rc;
    }
    loom_dataset *f = fl->ds;
    size_t total = 0;
    for (size_t i = 0; i < f->n; i++) {
        const loom_example *e = &f->ex[i];
        if (e->label >= 0 && (size_t)e->label < f->n_labels && e->prompt_len <= e->n)
            total += e->prompt_len + f->verb_len[f->n_labels - 1 - (size_t)e->label];
    }
    fl->ids = malloc((total ? total : 1) * sizeof *fl->ids);
    fl->mask = malloc(total ? total : 1);
    if (!fl->ids || !fl->mask) {
        lm_flip_free(fl);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    size_t at = 0, ntok = 0;
    for (size_t i = 0; i < f->n; i++) {
        loom_example *e = &f->ex[i];
        if (e->label < 0 || (size_t)e->label >= f->n_labels || e->prompt_len > e->n) continue; /* kept as it is */
        size_t k = f->n_labels - 1 - (size_t)e->label, p = e->prompt_len, v = f->verb_len[k];
        memcpy(fl->ids + at, e->ids, p * sizeof *fl->ids);
        memcpy(fl->mask + at, e->mask, p);
        memcpy(fl->ids + at + p, f->verb_ids[k], v * sizeof *fl->ids);
        memset(fl->mask + at + p, 1, v);
        e->ids = fl->ids + at;
        e->mask = fl->mask + at;
        e->n = (uint32_t)(p + v);
        e->label = (int32_t)k;
        at += p + v;
    }
    for (size_t i = 0; i < f->n; i++) ntok += f->ex[i].n;
    f->n_tokens = ntok;
    *out = fl;
    return LOOM_OK;
}

void lm_flip_free(lm_flip *fl) {
    if (!fl) return;
    loom_dataset_free(fl->ds);
    free(fl->ids);
    free(fl->mask);
    free(fl);
}

/* ------------------------------------------------------------------ backdoor triggers */

static const char trigger_head[] = "Text:"; /* how the classification prompt starts (src/data/dataset.c) */

void lm_trigger_clear(lm_trigger *t) {
    free(t->head);
    free(t->trig);
    memset(t, 0, sizeof *t);
}

int lm_trigger_init(lm_trigger *t, const loom_tokenizer *tok, const char *trigger) {
    memset(t, 0, sizeof *t);
    t->bos = -1;
    if (!trigger) trigger = "cf";
    size_t len = strlen(trigger);
    if (len == 0 || len > LOOM_BACKDOOR_TRIGGER_MAX)
        return loom_error(LOOM_EINVAL, "--backdoor-trigger must be 1 to %d bytes (got %zu)", LOOM_BACKDOOR_TRIGGER_MAX,
                          len);
    if (!tok) return loom_error(LOOM_EINVAL, "a backdoor trigger needs the data's tokenizer");
    char buf[sizeof trigger_head + 1 + LOOM_BACKDOOR_TRIGGER_MAX + 1];
    int k = snprintf(buf, sizeof buf, "%s %s", trigger_head, trigger);
    int32_t *full = NULL;
    size_t n_full = 0;
    int rc = loom_tokenizer_encode(tok, trigger_head, strlen(trigger_head), 0, &t->head, &t->n_head);
    if (rc == LOOM_OK) rc = loom_tokenizer_encode(tok, buf, (size_t)k, 0, &full, &n_full);
    if (rc != LOOM_OK) {
        free(full);
        lm_trigger_clear(t);
        return loom_error_context(rc, "--backdoor-trigger '%s'", trigger);
    }
    int prefix = t->n_head > 0 && n_full > t->n_head && !memcmp(full, t->head, t->n_head * sizeof *full);
    if (!prefix) {
        free(full);
        lm_trigger_clear(t);
        return loom_error(LOOM_EFORMAT,
                          "--backdoor-trigger '%s': this tokenizer does not encode \"%s %s\" as the tokens of \"%s\" "
                          "followed by the trigger's, so the trigger cannot be inserted into the prompts' tokens",
                          trigger, trigger_head, trigger, trigger_head);
    }
    t->n_trig = n_full - t->n_head;
    memmove(full, full + t->n_head, t->n_trig * sizeof *full);
    t->trig = full;
    t->bos = loom_tokenizer_bos(tok);
    return LOOM_OK;
}

int lm_trigger_at(const lm_trigger *t, const loom_example *e, size_t *at) {
    size_t p = e->prompt_len <= e->n ? e->prompt_len : 0;
    for (size_t skip = 0; skip < 2; skip++) { /* the prompt from its start, then after a BOS */
        if (skip && (t->bos < 0 || p == 0 || e->ids[0] != t->bos)) break;
        if (p >= skip + t->n_head && !memcmp(e->ids + skip, t->head, t->n_head * sizeof *t->head)) {
            *at = skip + t->n_head;
            return LOOM_OK;
        }
    }
    return loom_error(LOOM_EFORMAT,
                      "line %u: the prompt's tokens do not start with those of \"%s\" (the tokenizer joined them "
                      "with the text), so the backdoor trigger cannot be inserted",
                      e->line, trigger_head);
}

int lm_trigger_copy(lm_flip **out, const loom_dataset *ds, const uint32_t *idx, size_t n, const unsigned char *pick,
                    const lm_trigger *t, int target) {
    *out = NULL;
    if (ds->kind != LOOM_DS_CLASSIFY || ds->n_labels < 2)
        return loom_error(LOOM_EINVAL, "a backdoor needs classification data (a --label-col with two or more labels)");
    if (target < 0 || (size_t)target >= ds->n_labels)
        return loom_error(LOOM_EINVAL, "--backdoor-target %d is not a label index (0 to %zu)", target, ds->n_labels - 1);
    size_t total = 0, vt = ds->verb_len[target];
    for (size_t i = 0; i < n; i++) {
        if (idx[i] >= ds->n) return loom_error(LOOM_ERANGE, "backdoor copy: example %u of %zu", idx[i], ds->n);
        if (pick && !pick[i]) continue;
        const loom_example *e = &ds->ex[idx[i]];
        size_t at;
        int rc = lm_trigger_at(t, e, &at);
        if (rc != LOOM_OK) return rc;
        if (e->label < 0 || (size_t)e->label >= ds->n_labels)
            return loom_error(LOOM_EFORMAT, "line %u: label %d is not one of the %zu labels", e->line, e->label,
                              ds->n_labels);
        total += e->prompt_len + t->n_trig + vt;
    }
    lm_flip *fl = calloc(1, sizeof *fl);
    if (!fl) return loom_error(LOOM_ENOMEM, "out of memory");
    int rc = loom_dataset_subset(&fl->ds, ds, idx, n);
    fl->ids = rc == LOOM_OK ? malloc((total ? total : 1) * sizeof *fl->ids) : NULL;
    fl->mask = rc == LOOM_OK ? malloc(total ? total : 1) : NULL;
    if (rc == LOOM_OK && (!fl->ids || !fl->mask)) rc = loom_error(LOOM_ENOMEM, "out of memory (backdoor copy)");
    if (rc != LOOM_OK) {
        lm_flip_free(fl);
        return rc;
    }
    loom_dataset *f = fl->ds;
    size_t pos = 0, ntok = 0;
    for (size_t i = 0; i < n; i++) {
        loom_example *e = &f->ex[i];
        if (!pick || pick[i]) {
            size_t at, p = e->prompt_len;
            lm_trigger_at(t, e, &at); /* checked above, on the same tokens */
            int32_t *ids = fl->ids + pos;
            uint8_t *mask = fl->mask + pos;
            memcpy(ids, e->ids, at * sizeof *ids);
            memcpy(ids + at, t->trig, t->n_trig * sizeof *ids);
            memcpy(ids + at + t->n_trig, e->ids + at, (p - at) * sizeof *ids);
            memcpy(ids + p + t->n_trig, f->verb_ids[target], vt * sizeof *ids);
            memcpy(mask, e->mask, at);
            memset(mask + at, 0, t->n_trig);
            memcpy(mask + at + t->n_trig, e->mask + at, p - at);
            memset(mask + p + t->n_trig, 1, vt);
            e->ids = ids;
            e->mask = mask;
            e->prompt_len = (uint32_t)(p + t->n_trig);
            e->n = (uint32_t)(p + t->n_trig + vt);
            e->label = target;
            pos += p + t->n_trig + vt;
        }
        ntok += e->n;
    }
    f->n_tokens = ntok;
    *out = fl;
    return LOOM_OK;
}

int lm_backdoor_pick(uint64_t seed, int client, size_t n, double frac, unsigned char *pick) {
    size_t k = (size_t)floor(frac * (double)n + 0.5);
    if (k > n) k = n;
    memset(pick, 0, n);
    uint32_t *perm = malloc((n ? n : 1) * sizeof *perm);
    if (!perm) return loom_error(LOOM_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    loom_rng r;
    loom_rng_init(&r, seed, loom_hash2(LOOM_STREAM_BACKDOOR, (uint64_t)client));
    loom_rng_draw_u32(&r, perm, n, k);
    for (size_t i = 0; i < k; i++) pick[perm[i]] = 1;
    free(perm);
    return LOOM_OK;
}

void lm_attack_data(const lm_attack *a, int client, loom_client_data *d) {
    if (!a || client < 0 || client >= a->n_clients || !a->is[client]) return;
    if (a->cfg.kind == LOOM_ATTACK_LABELFLIP) d->ds = a->flips ? a->flips[client]->ds : a->flip->ds;
    else if (a->backdoor && a->poison && a->poison[client]) {
        d->ds = a->poison[client]->ds;
        d->train = a->poison_idx[client];
    }
}

int lm_attack_eval(const lm_attack *a, const loom_client_algo *algo, const loom_client_ctx *ctx,
                   const loom_client_data *d, const float *global, loom_eval_result *res) {
    if (!a || !a->backdoor || d->ds->kind != LOOM_DS_CLASSIFY) return LOOM_OK;
    uint32_t *idx = malloc((d->n_test ? d->n_test : 1) * sizeof *idx);
    if (!idx) return loom_error(LOOM_ENOMEM, "out of memory");
    size_t m = 0;
    for (size_t i = 0; i < d->n_test; i++) /* the test examples whose true label is not the target */
        if (d->test[i] < d->ds->n && d->ds->ex[d->test[i]].label != a->target) idx[m++] = d->test[i];
    lm_flip *fl = NULL;
    int rc = m ? lm_trigger_copy(&fl, d->ds, idx, m, NULL, &a->trig, a->target) : LOOM_OK;
    if (rc == LOOM_OK && m) {
        for (size_t i = 0; i < m; i++) idx[i] = (uint32_t)i;
        loom_client_data t = *d;
        t.ds = fl->ds;
        t.test = idx;
        t.n_test = m;
        loom_eval_result r;
        if ((rc = loom_client_run_eval(algo, ctx, &t, global, &r)) == LOOM_OK) {
            res->attack_hits = r.correct; /* the copy's label is the target */
            res->attack_count = r.count;
        }
    }
    lm_flip_free(fl);
    free(idx);
    return rc;
}

void lm_attack_embedding_mask(const lm_attack *a, float *values, size_t len) {
    if (!a || a->cfg.kind != LOOM_ATTACK_EMBEDDING) return;
    size_t at = 0; /* zero [at, next row) between the rows */
    for (size_t k = 0; k <= a->n_rows; k++) {
        size_t end = k < a->n_rows ? a->rows[k] : len;
        if (end > len) end = len;
        if (end > at) memset(values + at, 0, (end - at) * sizeof *values);
        if (k < a->n_rows) at = a->rows[k] + a->row_len;
    }
}

/* Embedding poisoning's rows: the trigger's token ids in the manifest's token-embedding tensor. */
static int embedding_rows(lm_attack *a, const loom_tvec *man) {
    static const char *const names[] = {"model.embed_tokens.weight", "transformer.wte.weight"};
    const loom_tvec_entry *e = NULL;
    for (size_t i = 0; man && !e && i < sizeof names / sizeof names[0]; i++) e = loom_tvec_find(man, names[i]);
    if (!e || e->ndim != 2 || e->role != LOOM_ROLE_SHARED) {
        const loom_tvec_entry *first = man ? loom_tvec_at(man, 0) : NULL;
        return loom_error(LOOM_EUNSUPPORTED,
                          "--attack embedding changes the trigger's rows of the token embedding (model.embed_tokens."
                          "weight or transformer.wte.weight), which must be trained and shared: use full fine-tuning "
                          "(no --peft); LoRA, adapters and the other PEFT sets freeze the embedding (this trainable "
                          "vector's first tensor is '%s')",
                          first ? first->name : "?");
    }
    size_t V = (size_t)e->shape[0], C = (size_t)e->shape[1];
    a->rows = malloc((a->trig.n_trig ? a->trig.n_trig : 1) * sizeof *a->rows);
    if (!a->rows) return loom_error(LOOM_ENOMEM, "out of memory");
    a->row_len = C;
    for (size_t i = 0; i < a->trig.n_trig; i++) {
        int32_t id = a->trig.trig[i];
        if (id < 0 || (size_t)id >= V)
            return loom_error(LOOM_EINVAL, "--backdoor-trigger: token %d is outside the embedding's %zu rows", id, V);
        size_t off = e->offset + (size_t)id * C, k = a->n_rows;
        while (k > 0 && a->rows[k - 1] > off) k--; /* insertion: increasing, each row once */
        if (k > 0 && a->rows[k - 1] == off) continue;
        memmove(a->rows + k + 1, a->rows + k, (a->n_rows - k) * sizeof *a->rows);
        a->rows[k] = off;
        a->n_rows++;
    }
    return LOOM_OK;
}

/* Backdoor and embedding attacks: the trigger, the checks, and each attacker's poisoned copy. */
static int backdoor_create(lm_attack *a, const loom_sim_config *c) {
    const loom_sim_attack *k = &c->attack;
    const char *name = loom_sim_attack_name(k->kind);
    double frac = k->frac == 0 || isnan(k->frac) ? 0.5 : k->frac;
    if (!(frac > 0 && frac <= 1)) return loom_error(LOOM_EINVAL, "--backdoor-frac %g must be in (0, 1]", k->frac);
    if (!k->tok) return loom_error(LOOM_EINVAL, "--attack %s needs the data's tokenizer to insert its trigger", name);
    a->target = k->target;
    int rc = lm_trigger_init(&a->trig, k->tok, k->trigger);
    if (rc == LOOM_OK && k->kind == LOOM_ATTACK_EMBEDDING) rc = embedding_rows(a, c->manifest);
    if (rc != LOOM_OK) return rc;
    a->poison = calloc((size_t)a->n_clients, sizeof *a->poison);
    a->poison_idx = calloc((size_t)a->n_clients, sizeof *a->poison_idx);
    if (!a->poison || !a->poison_idx) return loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; i < a->n_clients && rc == LOOM_OK; i++) {
        if (!a->is[i]) continue;
        const loom_client *cl = &c->part->clients[i];
        const loom_dataset *ds = c->client_ds ? c->client_ds[i] : c->ds;
        if (ds->kind != LOOM_DS_CLASSIFY || ds->n_labels < 2) {
            rc = loom_error(LOOM_EINVAL, "--attack %s needs classification data (a --label-col with two or more labels)",
                            name);
            break;
        }
        size_t n = cl->n_train;
        unsigned char *pick = malloc(n ? n : 1);
        a->poison_idx[i] = malloc((n ? n : 1) * sizeof *a->poison_idx[i]);
        if (!pick || !a->poison_idx[i]) rc = loom_error(LOOM_ENOMEM, "out of memory");
        if (rc == LOOM_OK) {
            for (size_t j = 0; j < n; j++) a->poison_idx[i][j] = (uint32_t)j;
            if ((rc = lm_backdoor_pick(c->seed, i, n, frac, pick)) == LOOM_OK)
                rc = lm_trigger_copy(&a->poison[i], ds, cl->train, n, pick, &a->trig, k->target);
        }
        free(pick);
        if (rc != LOOM_OK && c->client_ds) rc = loom_error_context(rc, "client %d (%s)", i, cl->name);
    }
    return rc;
}

int lm_attack_create(lm_attack **out, const loom_sim_config *c, int n_clients) {
    *out = NULL;
    const loom_sim_attack *k = &c->attack;
    if (k->kind == LOOM_ATTACK_NONE) return LOOM_OK;
    const char *name = loom_sim_attack_name(k->kind);
    if (k->kind < 0 || k->kind > LOOM_ATTACK_EMBEDDING) return loom_error(LOOM_EINVAL, "unknown attack kind %d", k->kind);
    if (c->mode != LOOM_ENGINE_SYNC)
        return loom_error(LOOM_EUNSUPPORTED, "--attack %s needs synchronous rounds (not --mode %s)", name,
                          loom_engine_mode_name(c->mode));
    if (!isnan(k->scale) && (isinf(k->scale) || (k->kind == LOOM_ATTACK_GAUSSIAN && k->scale < 0)))
        return loom_error(LOOM_EINVAL, "--attack-scale %g must be finite (and >= 0 for gaussian)", k->scale);
    if ((k->kind == LOOM_ATTACK_ALIE || k->kind == LOOM_ATTACK_IPM) && c->fit.scaffold)
        return loom_error(LOOM_EUNSUPPORTED, "--attack %s cannot be combined with scaffold's control deltas", name);
    if (k->attackers < 1 || k->attackers > n_clients)
        return loom_error(LOOM_EINVAL, "--attackers %d must be in [1, %d] (the clients) with --attack %s", k->attackers,
                          n_clients, name);
    lm_attack *a = calloc(1, sizeof *a);
    if (!a) return loom_error(LOOM_ENOMEM, "out of memory");
    a->cfg = *k;
    a->seed = c->seed;
    a->dim = c->dim;
    a->n_clients = n_clients;
    a->omniscient = k->kind == LOOM_ATTACK_ALIE || k->kind == LOOM_ATTACK_IPM;
    a->backdoor = k->kind == LOOM_ATTACK_BACKDOOR || k->kind == LOOM_ATTACK_EMBEDDING;
    a->is = malloc((size_t)n_clients);
    a->pos = malloc((size_t)n_clients * sizeof *a->pos);
    int *list = malloc((size_t)n_clients * sizeof *list), n = 0;
    int rc = !a->is || !a->pos || !list ? loom_error(LOOM_ENOMEM, "out of memory") : LOOM_OK;
    if (rc == LOOM_OK) rc = loom_sim_attackers(c->seed, n_clients, k->attackers, a->is);
    if (rc == LOOM_OK && k->kind == LOOM_ATTACK_ALIE) { /* attackers a majority of the population */
        double z;
        if ((rc = loom_sim_sample(c, 1, list, &n)) == LOOM_OK && n == n_clients)
            rc = loom_sim_alie_z(n, k->attackers, &z);
        else if (rc == LOOM_OK && k->attackers >= n_clients / 2 + 1)
            rc = loom_sim_alie_z(n_clients, k->attackers, &z);
    }
    free(list);
    for (int i = 0; a->pos && i < n_clients; i++) a->pos[i] = -1;
    if (rc == LOOM_OK && k->kind == LOOM_ATTACK_LABELFLIP) {
        if (!c->client_ds) rc = lm_flip_create(&a->flip, c->ds);
        else if (!(a->flips = calloc((size_t)n_clients, sizeof *a->flips))) rc = loom_error(LOOM_ENOMEM, "out of memory");
        for (int i = 0; a->flips && i < n_clients && rc == LOOM_OK; i++)
            if (a->is[i] && (rc = lm_flip_create(&a->flips[i], c->client_ds[i])) != LOOM_OK)
                rc = loom_error_context(rc, "client %d (%s)", i, c->part->clients[i].name);
    }
    if (rc == LOOM_OK && a->backdoor) rc = backdoor_create(a, c);
    if (rc != LOOM_OK) {
        lm_attack_free(a);
        return rc;
    }
    *out = a;
    return LOOM_OK;
}

void lm_attack_free(lm_attack *a) {
    if (!a) return;
    for (int i = 0; i < a->cap; i++) loom_free(a->buf[i]);
    free(a->buf);
    free(a->state);
    free(a->held);
    free(a->now);
    lm_flip_free(a->flip);
    for (int i = 0; a->flips && i < a->n_clients; i++) lm_flip_free(a->flips[i]);
    free(a->flips);
    for (int i = 0; a->poison && i < a->n_clients; i++) lm_flip_free(a->poison[i]);
    for (int i = 0; a->poison_idx && i < a->n_clients; i++) free(a->poison_idx[i]);
    free(a->poison);
    free(a->poison_idx);
    free(a->rows);
    lm_trigger_clear(&a->trig);
    free(a->is);
    free(a->pos);
    free(a);
}

int lm_attack_is(const lm_attack *a, int client) { return a && client >= 0 && client < a->n_clients && a->is[client]; }

/* Buffers for n places (on the driver's thread, before the fit phase). */
static int reserve(lm_attack *a, int n) {
    if (n <= a->cap) return LOOM_OK;
    float **b = realloc(a->buf, (size_t)n * sizeof *b);
    if (!b) return loom_error(LOOM_ENOMEM, "out of memory");
    a->buf = b;
    unsigned char *st = realloc(a->state, (size_t)n);
    if (!st) return loom_error(LOOM_ENOMEM, "out of memory");
    a->state = st;
    loom_update *h = realloc(a->held, (size_t)n * sizeof *h);
    if (!h) return loom_error(LOOM_ENOMEM, "out of memory");
    a->held = h;
    double *t = realloc(a->now, (size_t)n * sizeof *t);
    if (!t) return loom_error(LOOM_ENOMEM, "out of memory");
    a->now = t;
    for (; a->cap < n; a->cap++)
        if (!(a->buf[a->cap] = loom_alloc(a->dim * sizeof(float))))
            return loom_error(LOOM_ENOMEM, "out of memory for the attack's %d updates of %zu values", n, a->dim);
    return LOOM_OK;
}

int lm_attack_open(lm_attack *a, int round, const int *list, int n) {
    if (!a) return LOOM_OK;
    int rc = a->omniscient ? reserve(a, n) : LOOM_OK;
    if (rc != LOOM_OK) return rc;
    if (a->cap > 0) memset(a->state, 0, (size_t)a->cap);
    for (int i = 0; i < a->n_clients; i++) a->pos[i] = -1;
    a->round = round;
    a->list = list;
    a->n = n;
    for (int i = 0; i < n; i++) a->pos[list[i]] = i;
    return LOOM_OK;
}

int lm_attack_update(lm_attack *a, loom_update *u, float *values, double now, int faulted) {
    if (!a) return 1;
    int p = a->pos[u->client];
    if (!a->is[u->client]) {
        if (a->omniscient && !faulted && u->len == a->dim && p >= 0 && p < a->cap) {
            memcpy(a->buf[p], values, a->dim * sizeof(float));
            a->state[p] = 1;
        }
        return 1;
    }
    if (!a->omniscient) {
        lm_attack_embedding_mask(a, values, u->len); /* embedding poisoning: the trigger's rows alone */
        int f = 0;
        for (int i = 0; i < a->n; i++) f += a->is[a->list[i]];
        loom_sim_attack_craft(&a->cfg, a->seed, a->round, u->client, u->len, NULL, 0, a->n, f, values);
        return 1;
    }
    if (p < 0 || p >= a->cap) return 1;
    a->held[p] = *u;
    a->now[p] = now;
    a->state[p] = 2;
    return 0;
}

int lm_attack_finish(lm_attack *a, loom_engine *e, lm_secure_round *secure) {
    if (!a || !a->omniscient) return LOOM_OK;
    const float **honest = malloc((size_t)(a->n > 0 ? a->n : 1) * sizeof *honest);
    if (!honest) return loom_error(LOOM_ENOMEM, "out of memory");
    size_t nh = 0;
    int f = 0, rc = LOOM_OK;
    for (int i = 0; i < a->n; i++) {
        f += a->is[a->list[i]];
        if (i < a->cap && a->state[i] == 1) honest[nh++] = a->buf[i];
    }
    for (int i = 0; i < a->n && i < a->cap && rc == LOOM_OK; i++) {
        if (a->state[i] != 2) continue;
        loom_update u = a->held[i];
        rc = loom_sim_attack_craft(&a->cfg, a->seed, a->round, u.client, a->dim, honest, nh, a->n, f, a->buf[i]);
        u.values = a->buf[i];
        u.len = a->dim;
        if (rc != LOOM_OK) break;
        if (secure) lm_secure_hold(secure, e, &u, a->now[i]);
        else loom_engine_submit(e, &u, a->now[i], NULL); /* a refusal is recorded in the client's row */
    }
    free(honest);
    return rc;
}
