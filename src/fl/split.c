/* Split learning: which side holds each trained value, and what a split client moves and holds
 * (include/loom/split.h). The split step itself is the trainer's (loom_train_config.split). */
#include "loom/split.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

/* The side a model tensor runs on: the embeddings and layers below the cut on the client. */
static int tensor_side(const loom_model *m, int idx, int k) {
    const loom_tensor *t = loom_model_tensor(m, idx);
    if (t->layer >= 0) return t->layer < k ? LOOM_SPLIT_CLIENT : LOOM_SPLIT_SERVER;
    return t->kind == LOOM_T_EMBED || t->kind == LOOM_T_POS ? LOOM_SPLIT_CLIENT : LOOM_SPLIT_SERVER;
}

int loom_split_sides(const loom_tset *ts, int k, uint8_t *side) {
    const loom_model *m = loom_tset_model(ts);
    const loom_config *c = loom_model_config(m);
    if (k < 0 || k > c->n_layer)
        return loom_error(LOOM_EINVAL, "split layer %d is outside 0..%d (the model's layers)", k, c->n_layer);
    const loom_peft_method method = loom_tset_config(ts)->method;
    for (int i = 0; i < loom_tset_count(ts); i++) {
        const loom_tset_entry *e = loom_tset_entry_at(ts, i);
        int s;
        if (e->layer >= 0) {
            s = e->layer < k ? LOOM_SPLIT_CLIENT : LOOM_SPLIT_SERVER;
        } else if (e->tensor >= 0) {
            s = tensor_side(m, e->tensor, k);
            if (c->tied && loom_model_tensor(m, e->tensor)->kind == LOOM_T_EMBED)
                return loom_error(LOOM_EINVAL, "%s is the tied embedding and head: the client part and the server part "
                                  "both train it, which split learning cannot (train a set without it, or untie the head)",
                                  e->name);
        } else if (method == LOOM_PEFT_PROMPT) {
            s = LOOM_SPLIT_CLIENT; /* soft-prompt rows enter with the embeddings */
        } else {
            return loom_error(LOOM_EINVAL, "%s holds values of every layer: a %s set cannot be split between the client "
                              "and the server", e->name, loom_peft_method_name(method));
        }
        if (side) memset(side + e->offset, s, e->numel);
    }
    return LOOM_OK;
}

static size_t weight_bytes(const loom_tensor *t) {
    return t->numel * (t->dtype == LOOM_Q_F32 ? 4 : t->dtype == LOOM_Q_BF16 ? 2 : 1);
}

int loom_split_cost_of(const loom_tset *ts, int k, int B, int T, loom_split_cost *c) {
    memset(c, 0, sizeof *c);
    const loom_model *m = loom_tset_model(ts);
    const loom_config *cfg = loom_model_config(m);
    size_t dim = loom_tset_dim(ts);
    uint8_t *side = loom_alloc(dim ? dim : 1);
    if (!side) return loom_error(LOOM_ENOMEM, "out of memory");
    int rc = loom_split_sides(ts, k, side);
    for (size_t i = 0; rc == LOOM_OK && i < dim; i++) c->client_dim += side[i] == LOOM_SPLIT_CLIENT;
    loom_free(side);
    if (rc != LOOM_OK) return rc;
    c->k = k;
    c->server_dim = dim - c->client_dim;
    int P = loom_tset_config(ts)->method == LOOM_PEFT_PROMPT ? loom_tset_config(ts)->prompt_len : 0;
    c->act_floats = (size_t)B * (size_t)(T + P) * (size_t)cfg->dim;
    c->up_step = c->act_floats * sizeof(float) + (size_t)B * T * sizeof(int32_t);
    c->down_step = c->act_floats * sizeof(float);
    for (int i = 0; i < loom_model_n_tensors(m); i++) {
        const loom_tensor *t = loom_model_tensor(m, i);
        size_t b = weight_bytes(t);
        c->model_weights += b;
        if (tensor_side(m, i, k) == LOOM_SPLIT_CLIENT) c->client_weights += b;
    }
    c->client_state = 16 * c->client_dim;
    c->model_state = 16 * dim;
    loom_ws *ws = NULL;
    if ((rc = loom_ws_create_part(&ws, m, B, T, loom_tset_plan(ts), 0, k, 0)) != LOOM_OK) return rc;
    c->client_ws = loom_ws_bytes(ws);
    loom_ws_free(ws);
    if ((rc = loom_ws_create_ex(&ws, m, B, T, loom_tset_plan(ts))) != LOOM_OK) return rc;
    c->model_ws = loom_ws_bytes(ws);
    loom_ws_free(ws);
    return LOOM_OK;
}

/* ---------------------------------------------------------------- across processes */

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
/* floats and int32 are little-endian on every machine loom builds for (x86-64, aarch64) */
static void put_f(uint8_t *p, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    put32(p, v);
}
static float get_f(const uint8_t *p) {
    uint32_t v = get32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

size_t loom_split_request_bytes(int B, int T, int P, int C) {
    return LOOM_SPLIT_HDR + (size_t)B * (size_t)(T + P) * (size_t)C * 4 + (size_t)B * T * 4;
}

int loom_split_encode_request(int round, long step, int B, int T, int Tp, int C, const float *act,
                              const int32_t *targets, uint8_t **out, size_t *len) {
    size_t na = (size_t)B * Tp * C, nt = (size_t)B * T;
    size_t n = LOOM_SPLIT_HDR + 4 * na + 4 * nt;
    uint8_t *b = malloc(n);
    if (!b) return loom_error(LOOM_ENOMEM, "out of memory for a split request");
    memcpy(b, "LMSP", 4);
    uint32_t h[7] = {1, (uint32_t)round, (uint32_t)step, (uint32_t)B, (uint32_t)T, (uint32_t)Tp, (uint32_t)C};
    for (int i = 0; i < 7; i++) put32(b + 4 + 4 * i, h[i]);
    memcpy(b + LOOM_SPLIT_HDR, act, 4 * na);
    memcpy(b + LOOM_SPLIT_HDR + 4 * na, targets, 4 * nt);
    *out = b;
    *len = n;
    return LOOM_OK;
}

int loom_split_decode_reply(const void *body, size_t len, int round, long step, float *dact, size_t n, float *loss) {
    const uint8_t *b = body;
    if (len != LOOM_SPLIT_REPLY_HDR + 4 * n || memcmp(b, "LMSG", 4))
        return loom_error(LOOM_EFORMAT, "the split answer is not a gradient of %zu values (%zu bytes)", n, len);
    if ((int)get32(b + 4) != round || (long)get32(b + 8) != step)
        return loom_error(LOOM_EFORMAT, "the split answer is for round %d step %u, not round %d step %ld",
                          (int)get32(b + 4), get32(b + 8), round, step);
    *loss = get_f(b + 12);
    memcpy(dact, b + LOOM_SPLIT_REPLY_HDR, 4 * n);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(dact[i])) return loom_error(LOOM_EFORMAT, "the split answer's gradient %zu is not finite", i);
    return LOOM_OK;
}

int loom_split_decode_update(const void *body, size_t len, int round, const uint8_t *side, float *upd, size_t dim) {
    const uint8_t *b = body;
    if (len != LOOM_SPLIT_REPLY_HDR + 4 * dim || memcmp(b, "LMSU", 4) || get32(b + 12) != (uint32_t)dim)
        return loom_error(LOOM_EFORMAT, "the server-side update is not %zu values (%zu bytes)", dim, len);
    if ((int)get32(b + 4) != round)
        return loom_error(LOOM_EFORMAT, "the server-side update is of round %d, not %d", (int)get32(b + 4), round);
    for (size_t i = 0; i < dim; i++) {
        if (side[i] != LOOM_SPLIT_SERVER) continue;
        upd[i] = get_f(b + LOOM_SPLIT_REPLY_HDR + 4 * i);
        if (!isfinite(upd[i])) return loom_error(LOOM_EFORMAT, "the server-side update's value %zu is not finite", i);
    }
    return LOOM_OK;
}

typedef struct {
    pthread_mutex_t mu;
    loom_trainer *tr;
    float *vec, *start; /* the client's copy, and the round's global it started from */
    int round;
    long next;          /* the step expected next */
    uint8_t *last;      /* the last answer (a retry gets it again) */
    size_t last_len;
    float *act, *dact;
    int32_t *tgt;
} split_copy;

struct loom_split_server {
    const loom_model *m;
    const loom_tset *ts;
    loom_train_config tc;
    int n, B, T, Tp, C;
    size_t dim;
    uint8_t *side;
    pthread_mutex_t mu; /* guards ss, grown as clients first ask */
    split_copy **ss;
};

#define SPLIT_MAX_CLIENTS (1 << 24)

/* Client k's copy (allocated on its first request), or NULL. */
static split_copy *copy_of(loom_split_server *s, int k) {
    if (k < 0 || k >= SPLIT_MAX_CLIENTS) return NULL;
    pthread_mutex_lock(&s->mu);
    split_copy *q = NULL;
    if (k >= s->n) {
        int n = s->n ? s->n : 16;
        while (n <= k) n *= 2;
        split_copy **ss = realloc(s->ss, (size_t)n * sizeof *ss);
        if (ss) {
            memset(ss + s->n, 0, (size_t)(n - s->n) * sizeof *ss);
            s->ss = ss;
            s->n = n;
        }
    }
    if (k < s->n) {
        if (!s->ss[k] && (s->ss[k] = calloc(1, sizeof **s->ss))) pthread_mutex_init(&s->ss[k]->mu, NULL);
        q = s->ss[k];
    }
    pthread_mutex_unlock(&s->mu);
    return q;
}

int loom_split_server_create(loom_split_server **out, const loom_model *m, const loom_tset *ts,
                             const loom_train_config *tc, int n_clients) {
    *out = NULL;
    if (!tc->split) return loom_error(LOOM_EINVAL, "the server's training configuration is not split");
    loom_split_server *s = calloc(1, sizeof *s);
    if (!s) return loom_error(LOOM_ENOMEM, "out of memory");
    s->m = m, s->ts = ts, s->tc = *tc;
    (void)n_clients;
    pthread_mutex_init(&s->mu, NULL);
    s->B = tc->B, s->T = tc->T, s->C = loom_model_config(m)->dim;
    s->Tp = tc->T + (loom_tset_config(ts)->method == LOOM_PEFT_PROMPT ? loom_tset_config(ts)->prompt_len : 0);
    s->dim = loom_tset_dim(ts);
    s->side = loom_alloc(s->dim ? s->dim : 1);
    int rc = s->side ? loom_split_sides(ts, tc->split_layer, s->side) : loom_error(LOOM_ENOMEM, "out of memory");
    if (rc != LOOM_OK) {
        loom_split_server_free(s);
        return rc;
    }
    *out = s;
    return LOOM_OK;
}

void loom_split_server_free(loom_split_server *s) {
    if (!s) return;
    for (int k = 0; k < s->n; k++) {
        split_copy *q = s->ss[k];
        if (!q) continue;
        loom_trainer_free(q->tr);
        loom_free(q->vec), loom_free(q->start), loom_free(q->act), loom_free(q->dact);
        free(q->tgt), free(q->last);
        pthread_mutex_destroy(&q->mu);
        free(q);
    }
    free(s->ss);
    pthread_mutex_destroy(&s->mu);
    loom_free(s->side);
    free(s);
}

size_t loom_split_server_max_request(const loom_split_server *s) {
    return loom_split_request_bytes(s->B, s->T, s->Tp - s->T, s->C);
}

static int copy_init(loom_split_server *s, split_copy *q) {
    if (q->tr) return LOOM_OK;
    size_t na = (size_t)s->B * s->Tp * s->C;
    q->vec = loom_alloc(s->dim * sizeof(float));
    q->start = loom_alloc(s->dim * sizeof(float));
    q->act = loom_alloc(na * sizeof(float));
    q->dact = loom_alloc(na * sizeof(float));
    q->tgt = malloc((size_t)s->B * s->T * sizeof(int32_t));
    if (!q->vec || !q->start || !q->act || !q->dact || !q->tgt) return loom_error(LOOM_ENOMEM, "out of memory");
    return loom_trainer_create_peft(&q->tr, s->m, loom_model_params_const(s->m), s->ts, q->vec, &s->tc);
}

int loom_split_server_step(loom_split_server *s, int k, int round, const float *global, const void *body, size_t len,
                           void **reply, size_t *rlen, int *status) {
    *reply = NULL;
    *rlen = 0;
    *status = 400;
    const uint8_t *b = body;
    if (len < LOOM_SPLIT_HDR || memcmp(b, "LMSP", 4) || get32(b + 4) != 1)
        return loom_error(LOOM_EFORMAT, "not a split request (%zu bytes; expected the LMSP header, version 1)", len);
    int r = (int)get32(b + 8);
    long step = (long)get32(b + 12);
    int B = (int)get32(b + 16), T = (int)get32(b + 20), Tp = (int)get32(b + 24), C = (int)get32(b + 28);
    if (B != s->B || T != s->T || Tp != s->Tp || C != s->C)
        return loom_error(LOOM_EINVAL, "a split request of %d x %d (%d) x %d activations; the run's are %d x %d (%d) x %d",
                          B, T, Tp, C, s->B, s->T, s->Tp, s->C);
    size_t na = (size_t)B * Tp * C, nt = (size_t)B * T;
    if (len != LOOM_SPLIT_HDR + 4 * na + 4 * nt)
        return loom_error(LOOM_EFORMAT, "a split request of %zu bytes; %d x %d (%d) x %d activations and their targets "
                          "are %zu", len, B, T, Tp, C, LOOM_SPLIT_HDR + 4 * na + 4 * nt);
    if (r != round) {
        *status = 410;
        return loom_error(LOOM_ESTATE, "the split request is for round %d; the open round is %d", r, round);
    }
    split_copy *q = copy_of(s, k);
    if (!q) return *status = 500, loom_error(LOOM_ENOMEM, "out of memory for client %d's split state", k);
    pthread_mutex_lock(&q->mu);
    int rc = copy_init(s, q);
    if (rc == LOOM_OK && q->last && q->round == round && step + 1 == q->next) { /* a retry: the same answer */
        *reply = malloc(q->last_len);
        if (*reply) memcpy(*reply, q->last, q->last_len), *rlen = q->last_len, *status = 200;
        else rc = loom_error(LOOM_ENOMEM, "out of memory");
        pthread_mutex_unlock(&q->mu);
        return rc;
    }
    if (rc == LOOM_OK && step == 0) { /* the round's first step: the client's copy starts from the global */
        memcpy(q->vec, global, s->dim * sizeof(float));
        memcpy(q->start, global, s->dim * sizeof(float));
        loom_trainer_reset_optimizer(q->tr);
        q->round = round;
        q->next = 0;
    }
    if (rc == LOOM_OK && (q->round != round || step != q->next)) {
        *status = 409;
        rc = loom_error(LOOM_ESTATE, "split step %ld of round %d out of order: the next is step %ld of round %d", step,
                        round, q->next, q->round);
    }
    float loss = 0;
    if (rc == LOOM_OK) {
        memcpy(q->act, b + LOOM_SPLIT_HDR, 4 * na);
        memcpy(q->tgt, b + LOOM_SPLIT_HDR + 4 * na, 4 * nt);
        const int V = loom_model_config(s->m)->vocab;
        for (size_t i = 0; rc == LOOM_OK && i < nt; i++)
            if (q->tgt[i] >= V) rc = loom_error(LOOM_EINVAL, "target %d at %zu is outside the vocabulary (%d)", q->tgt[i], i, V);
        *status = 400;
        if (rc == LOOM_OK) {
            rc = loom_trainer_split_server_step(q->tr, q->act, na, q->tgt, nt, q->dact, &loss);
            *status = rc == LOOM_ERANGE ? 422 : 500;
        }
    }
    uint8_t *a = rc == LOOM_OK ? malloc(LOOM_SPLIT_REPLY_HDR + 4 * na) : NULL;
    if (rc == LOOM_OK && !a) rc = loom_error(LOOM_ENOMEM, "out of memory");
    if (rc == LOOM_OK) {
        memcpy(a, "LMSG", 4);
        put32(a + 4, (uint32_t)round);
        put32(a + 8, (uint32_t)step);
        put_f(a + 12, loss);
        memcpy(a + LOOM_SPLIT_REPLY_HDR, q->dact, 4 * na);
        free(q->last);
        q->last = malloc(LOOM_SPLIT_REPLY_HDR + 4 * na);
        q->last_len = q->last ? LOOM_SPLIT_REPLY_HDR + 4 * na : 0;
        if (q->last) memcpy(q->last, a, q->last_len);
        q->next = step + 1;
        *reply = a;
        *rlen = LOOM_SPLIT_REPLY_HDR + 4 * na;
        *status = 200;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int loom_split_server_update(loom_split_server *s, int k, int round, void **reply, size_t *rlen, int *status) {
    *reply = NULL;
    *rlen = 0;
    *status = 400;
    split_copy *q = copy_of(s, k);
    if (!q) return *status = 500, loom_error(LOOM_ENOMEM, "out of memory for client %d's split state", k);
    pthread_mutex_lock(&q->mu);
    int rc = LOOM_OK;
    if (!q->tr || q->round != round || q->next == 0) {
        *status = 409;
        rc = loom_error(LOOM_ESTATE, "client %d has taken no split steps in round %d", k, round);
    }
    uint8_t *a = rc == LOOM_OK ? malloc(LOOM_SPLIT_REPLY_HDR + 4 * s->dim) : NULL;
    if (rc == LOOM_OK && !a) rc = loom_error(LOOM_ENOMEM, "out of memory");
    if (rc == LOOM_OK) {
        memcpy(a, "LMSU", 4);
        put32(a + 4, (uint32_t)round);
        put32(a + 8, (uint32_t)q->next);
        put32(a + 12, (uint32_t)s->dim);
        for (size_t i = 0; i < s->dim; i++)
            put_f(a + LOOM_SPLIT_REPLY_HDR + 4 * i, s->side[i] == LOOM_SPLIT_SERVER ? q->vec[i] - q->start[i] : 0.0f);
        *reply = a;
        *rlen = LOOM_SPLIT_REPLY_HDR + 4 * s->dim;
        *status = 200;
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}
