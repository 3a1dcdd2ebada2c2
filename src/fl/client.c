/* Client side of a federated round: local training (eq. 1 of the survey), FedProx, SCAFFOLD, FedSGD. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dp.h"
#include "loom/fl.h"
#include "loom/model.h"
#include "loom/personal.h"
#include "loom/pipeline.h"
#include "loom/strategy.h"

typedef struct {
    const float *global;
    double mu;
    const float *c_global, *c_local; /* SCAFFOLD correction c - c_i */
    float *capture;                  /* option I: the first gradient (at the global model), uncorrected */
    int captured;
    const uint8_t *mask;             /* heterogeneous client: only TRAIN values get a gradient */
} hook_ctx;

/* A heterogeneous client's vector: ABSENT values 0, FROZEN values the global ones (fl.h). */
static void mask_restore(float *vec, const float *global, const uint8_t *mask, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (mask[i] != LOOM_MASK_TRAIN) vec[i] = mask[i] == LOOM_MASK_FROZEN ? global[i] : 0.0f;
}

static void mask_zero(float *x, const uint8_t *mask, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (mask[i] != LOOM_MASK_TRAIN) x[i] = 0.0f;
}

static void fit_hook(float *grad, const float *vec, size_t n, void *ud) {
    hook_ctx *h = ud;
    if (h->capture && !h->captured) {
        memcpy(h->capture, grad, n * sizeof(float));
        h->captured = 1;
    }
    if (h->mu > 0) loom_fedprox_grad(grad, vec, h->global, h->mu, n);
    if (h->c_global && h->c_local) loom_scaffold_correct(grad, h->c_local, h->c_global, n);
    if (h->mask) mask_zero(grad, h->mask, n);
}

/* tokens and targets of one batch (BT each) */
static int alloc_batch(size_t BT, int32_t **tok, int32_t **tgt) {
    *tok = malloc(BT * sizeof **tok);
    *tgt = malloc(BT * sizeof **tgt);
    if (*tok && *tgt) return LOOM_OK;
    free(*tok);
    free(*tgt);
    return loom_error(LOOM_ENOMEM, "out of memory for a batch of %zu tokens", BT);
}

static long count_targets(const int32_t *tgt, size_t n) {
    long c = 0;
    for (size_t i = 0; i < n; i++) c += tgt[i] >= 0;
    return c;
}

void loom_client_state_init(loom_client_state *s) { memset(s, 0, sizeof *s); }

void loom_client_state_clear(loom_client_state *s) {
    loom_free(s->control);
    loom_free(s->residual);
    loom_free(s->priv);
    memset(s, 0, sizeof *s);
}

int loom_client_state_residual(loom_client_state *s, size_t dim) {
    if (s->residual && s->residual_dim == dim) return LOOM_OK;
    if (s->residual)
        return loom_error(LOOM_EINVAL, "client residual has %zu values, expected %zu", s->residual_dim, dim);
    s->residual = loom_calloc(dim ? dim : 1, sizeof(float));
    if (!s->residual) return loom_error(LOOM_ENOMEM, "out of memory for a residual of %zu values", dim);
    s->residual_dim = dim;
    return LOOM_OK;
}

int loom_client_compress(loom_client_state *st, float *update, size_t dim, const loom_codec_opts *o) {
    if (!o || o->codec == LOOM_CODEC_F32) return LOOM_OK;
    int rc = loom_client_state_residual(st, dim);
    if (rc != LOOM_OK) return rc;
    float *res = st->residual;
    float *pre = loom_alloc((dim ? dim : 1) * sizeof(float));
    if (!pre) return loom_error(LOOM_ENOMEM, "out of memory for an update of %zu values", dim);
    for (size_t i = 0; i < dim; i++) pre[i] = update[i] + res[i];
    /* the payload depends on the values and o only: placeholder metadata gives the same bytes */
    loom_update u = {0, 0, 0, 0, 1, 0.0, 0, LOOM_CODEC_F32, dim, pre, NULL, 0};
    uint8_t *buf = NULL;
    size_t n = 0;
    loom_update d;
    if ((rc = loom_update_encode(&u, o, &buf, &n)) == LOOM_OK) rc = loom_update_decode(buf, n, dim, &d, update, NULL);
    free(buf);
    if (rc == LOOM_OK) /* (decode writes the values only once the whole message has been checked) */
        for (size_t i = 0; i < dim; i++) res[i] = pre[i] - update[i];
    loom_free(pre);
    return rc;
}

int loom_client_state_control(loom_client_state *s, size_t dim) {
    if (s->control && s->dim == dim) return LOOM_OK;
    if (s->control) return loom_error(LOOM_EINVAL, "client control variate has %zu values, expected %zu", s->dim, dim);
    s->control = loom_calloc(dim, sizeof(float));
    if (!s->control) return LOOM_ENOMEM;
    s->dim = dim;
    return LOOM_OK;
}

int loom_client_fit(const loom_client_ctx *ctx, const loom_fit_task *task, loom_client_state *st,
                    loom_fit_output *out) {
    loom_fit_result *res = &out->res;
    memset(res, 0, sizeof *res);
    loom_trainer *tr = ctx->tr;
    float *vec = ctx->vec, *update = out->update, *dc = out->control_delta;
    const size_t dim = ctx->dim;
    const float *global = task->global, *c_global = task->server_control;
    const loom_fit_config *fc = &task->fc;
    loom_batcher *data = task->data;
    const uint64_t step0 = st->steps;
    if (fc->local_steps < 1) return loom_error(LOOM_EINVAL, "local steps %d must be >= 1", fc->local_steps);
    if (fc->sgd_noise_seed) loom_trainer_set_dp_seed(tr, fc->sgd_noise_seed);
    if (!update || !global || !data) return loom_error(LOOM_EINVAL, "client fit needs a global vector, data and an update buffer");
    float *c_local = NULL;
    if (fc->scaffold) {
        int rc = loom_client_state_control(st, dim);
        if (rc != LOOM_OK) return rc;
        c_local = st->control;
    }
    size_t BT = loom_trainer_batch_tokens(tr);
    int32_t *tok, *tgt;
    if (alloc_batch(BT, &tok, &tgt) != LOOM_OK) return LOOM_ENOMEM;
    memcpy(vec, global, dim * sizeof(float));
    if (fc->mask) mask_restore(vec, global, fc->mask, dim); /* the client's truncation of the global vector */
    loom_optimizer_reset(loom_trainer_optimizer(tr));
    int rc = LOOM_OK;
    double loss_sum = 0;
    if (fc->gradient_only) {
        /* FedSGD: token-weighted mean gradient at the global model over E batches */
        double wsum = 0;
        memset(update, 0, dim * sizeof(float));
        for (int s = 0; s < fc->local_steps && rc == LOOM_OK; s++) {
            if ((rc = loom_batcher_fill(data, step0 + (uint64_t)s, tok, tgt, NULL)) != LOOM_OK) break;
            float l;
            if ((rc = loom_trainer_gradient(tr, tok, tgt, &l)) != LOOM_OK) break;
            long n = count_targets(tgt, BT);
            if (n > 0 && fc->mask) mask_zero(loom_trainer_grads(tr), fc->mask, dim);
            if (n > 0) rc = loom_update_mean_push(update, &wsum, loom_trainer_grads(tr), (double)n, dim);
            loss_sum += (double)l * n;
            res->tokens += n;
            res->steps++;
        }
    } else {
        hook_ctx h = {global, fc->prox_mu, NULL, NULL, NULL, 0, fc->mask};
        float *cnew = NULL;
        if (fc->scaffold) {
            if (!c_global || !c_local || !dc) {
                rc = loom_error(LOOM_EINVAL, "SCAFFOLD needs the server and client control variates");
            } else {
                h.c_global = c_global;
                h.c_local = c_local;
                if (fc->scaffold == LOOM_SCAFFOLD_OPTION_I) {
                    cnew = loom_alloc(dim * sizeof(float));
                    if (!cnew) rc = LOOM_ENOMEM;
                    h.capture = cnew;
                }
            }
        }
        if (h.mu > 0 || h.c_global || h.mask) loom_trainer_set_grad_hook(tr, fit_hook, &h);
        float lr0 = loom_trainer_lr(tr);
        for (int s = 0; s < fc->local_steps && rc == LOOM_OK; s++) {
            if ((rc = loom_batcher_fill(data, step0 + (uint64_t)s, tok, tgt, NULL)) != LOOM_OK) break;
            float l;
            if ((rc = loom_trainer_step(tr, tok, tgt, &l, NULL)) != LOOM_OK) break;
            if (fc->mask) mask_restore(vec, global, fc->mask, dim);
            long n = count_targets(tgt, BT);
            loss_sum += (double)l * n;
            res->tokens += n;
            res->steps++;
        }
        loom_trainer_set_grad_hook(tr, NULL, NULL);
        if (rc == LOOM_OK) {
            loom_update_delta(update, vec, global, dim);
            if (fc->scaffold) {
                float *cn = cnew;
                if (fc->scaffold == LOOM_SCAFFOLD_OPTION_II) {
                    cn = loom_alloc(dim * sizeof(float));
                    if (!cn) rc = LOOM_ENOMEM;
                    else rc = loom_scaffold_control_option2(cn, c_local, c_global, global, vec, fc->local_steps, lr0, dim);
                }
                if (rc == LOOM_OK) {
                    loom_scaffold_control_delta(dc, cn, c_local, dim);
                    memcpy(c_local, cn, dim * sizeof(float));
                }
                if (cn != cnew) loom_free(cn);
            }
        }
        loom_free(cnew);
    }
    if (rc == LOOM_OK && fc->mask) mask_zero(update, fc->mask, dim); /* only what the client trained */
    res->loss = res->tokens ? loss_sum / (double)res->tokens : 0.0;
    free(tok);
    free(tgt);
    if (rc == LOOM_OK) st->steps += (uint64_t)fc->local_steps; /* data consumed */
    return rc;
}

int loom_client_eval(const loom_client_ctx *ctx, const loom_eval_task *task, loom_eval_result *res) {
    memset(res, 0, sizeof *res);
    int rc;
    if (task->ds && task->ds->kind == LOOM_DS_CLASSIFY) {
        /* accuracy = the label whose verbalizer is most likely; counted per example */
        rc = loom_client_evaluate_cls(ctx->tr, ctx->vec, ctx->dim, task->global, task->ds, task->idx, task->n,
                                      &res->loss_sum, &res->tokens, &res->correct, &res->count);
    } else {
        if (!task->data) return loom_error(LOOM_EINVAL, "evaluation without data");
        rc = loom_client_evaluate(ctx->tr, ctx->vec, ctx->dim, task->global, task->data, &res->loss_sum, &res->correct,
                                  &res->tokens);
        res->count = res->tokens;
    }
    return rc;
}

const loom_client_algo loom_client_local_sgd = {"local-sgd", loom_client_fit, loom_client_eval};



int loom_client_evaluate(loom_trainer *tr, float *vec, size_t dim, const float *global, loom_batcher *data,
                         double *loss_sum, long *correct, long *tokens) {
    *loss_sum = 0;
    *correct = 0;
    *tokens = 0;
    size_t BT = loom_trainer_batch_tokens(tr);
    int32_t *tok, *tgt;
    if (alloc_batch(BT, &tok, &tgt) != LOOM_OK) return LOOM_ENOMEM;
    if (vec != global) memcpy(vec, global, dim * sizeof(float));
    int rc = LOOM_OK;
    uint64_t steps = loom_batcher_steps_per_epoch(data);
    for (uint64_t s = 0; s < steps; s++) {
        size_t rows;
        if ((rc = loom_batcher_fill(data, s, tok, tgt, &rows)) != LOOM_OK) break;
        if (rows == 0) break;
        float l;
        if ((rc = loom_trainer_eval(tr, tok, tgt, &l)) != LOOM_OK) break;
        long n = count_targets(tgt, BT);
        *loss_sum += (double)l * n;
        *tokens += n;
        const float *logits = loom_ws_logits(loom_trainer_ws(tr));
        int V = loom_trainer_vocab(tr);
        for (size_t i = 0; i < BT; i++) {
            if (tgt[i] < 0) continue;
            const float *row = logits + i * (size_t)V;
            int best = 0;
            for (int j = 1; j < V; j++)
                if (row[j] > row[best]) best = j;
            *correct += best == tgt[i];
        }
    }
    free(tok);
    free(tgt);
    return rc;
}

#define CAND_CAP 65536 /* tokens of one prompt + verbalizer before truncation */

int loom_client_evaluate_cls(loom_trainer *tr, float *vec, size_t dim, const float *global, const loom_dataset *ds,
                             const uint32_t *idx, size_t n, double *loss_sum, long *tokens, long *correct,
                             long *examples) {
    *loss_sum = 0;
    *tokens = *correct = *examples = 0;
    if (ds->kind != LOOM_DS_CLASSIFY || ds->n_labels < 1)
        return loom_error(LOOM_EINVAL, "classification accuracy needs a classification dataset with labels");
    size_t BT = loom_trainer_batch_tokens(tr);
    int Bi, Ti;
    loom_trainer_shape(tr, &Bi, &Ti);
    size_t B = (size_t)Bi, T = (size_t)Ti;
    size_t K = ds->n_labels;
    int32_t *tok = malloc(BT * sizeof *tok), *tgt = malloc(BT * sizeof *tgt), *cand = malloc(CAND_CAP * sizeof *cand);
    double *score = malloc(K * sizeof *score);
    size_t *cnt = malloc(K * sizeof *cnt);
    /* row r of the batch holds candidate (example e_r, label k_r) */
    size_t *row_ex = malloc(B * sizeof *row_ex), *row_k = malloc(B * sizeof *row_k);
    if (!tok || !tgt || !cand || !score || !cnt || !row_ex || !row_k) {
        free(tok); free(tgt); free(cand); free(score); free(cnt); free(row_ex); free(row_k);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    if (vec != global) memcpy(vec, global, dim * sizeof(float));
    int rc = LOOM_OK;
    int32_t pad = ds->pad_id >= 0 ? ds->pad_id : 0;
    size_t total = n * K, next = 0;
    size_t cur_ex = (size_t)-1;
    while (next < total && rc == LOOM_OK) {
        size_t rows = 0;
        for (; rows < B && next < total; rows++, next++) {
            size_t e = next / K, k = next % K;
            size_t len = 0, plen = 0;
            int32_t *row = tok + rows * T, *trow = tgt + rows * T;
            for (size_t t = 0; t < T; t++) row[t] = pad, trow[t] = -1;
            if ((rc = loom_dataset_candidate(ds, idx[e], k, cand, CAND_CAP, &len, &plen)) != LOOM_OK) break;
            size_t cut = loom_dataset_row_cut(ds, plen, len, T); /* as the training rows are cut */
            if (cut > 0) {
                memmove(cand, cand + cut, (len - cut) * sizeof *cand);
                len -= cut;
                plen -= cut;
            }
            for (size_t t = 0; t + 1 < len && t < T; t++) {
                row[t] = cand[t];
                trow[t] = t + 1 >= plen ? cand[t + 1] : -1; /* only verbalizer tokens are scored */
            }
            row_ex[rows] = e;
            row_k[rows] = k;
        }
        if (rc != LOOM_OK || rows == 0) break;
        for (size_t r = rows; r < B; r++)
            for (size_t t = 0; t < T; t++) tok[r * T + t] = pad, tgt[r * T + t] = -1;
        float l;
        if ((rc = loom_trainer_eval(tr, tok, tgt, &l)) != LOOM_OK) break;
        const float *per = loom_ws_losses(loom_trainer_ws(tr));
        for (size_t r = 0; r < rows; r++) {
            size_t e = row_ex[r], k = row_k[r];
            if (e != cur_ex) { /* a new example starts */
                cur_ex = e;
                for (size_t j = 0; j < K; j++) score[j] = INFINITY, cnt[j] = 0;
            }
            double s = 0;
            size_t c = 0;
            for (size_t t = 0; t < T; t++)
                if (tgt[r * T + t] >= 0) s += per[r * T + t], c++;
            score[k] = c ? s : INFINITY;
            cnt[k] = c;
            if (k == K - 1) { /* all labels of example e scored */
                size_t best = 0;
                for (size_t j = 1; j < K; j++)
                    if (score[j] < score[best]) best = j;
                int32_t label = ds->ex[idx[e]].label;
                *correct += label >= 0 && (size_t)label == best;
                if (label >= 0 && (size_t)label < K && cnt[label]) {
                    *loss_sum += score[label];
                    *tokens += (long)cnt[label];
                }
                (*examples)++;
            }
        }
    }
    free(tok); free(tgt); free(cand); free(score); free(cnt); free(row_ex); free(row_k);
    return rc;
}

static int client_batcher(const loom_client_data *d, const uint32_t *idx, size_t n, int once, loom_batcher **b) {
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = (size_t)d->B;
    bo.T = (size_t)d->T;
    bo.seed = d->data_seed;
    if (once) {
        bo.once = 1;
        bo.shuffle = 0;
    }
    return loom_batcher_create(b, d->ds, idx, n, &bo);
}

int loom_client_run_fit(const loom_client_algo *algo, const loom_client_ctx *ctx, const loom_client_data *d, int round,
                        const float *global, const float *control, const loom_fit_config *fc, const loom_codec_opts *co,
                        loom_client_state *st, loom_fit_output *out) {
    const loom_personal *pp = loom_personal_trivial(fc->personal) ? NULL : fc->personal;
    float *start = NULL; /* personalization: the global shared values with the client's private ones */
    if (pp) {
        size_t np = loom_personal_n_private(pp);
        if (algo != &loom_client_local_sgd || fc->gradient_only || ctx->kseed || loom_personal_dim(pp) != ctx->dim)
            return loom_error(LOOM_EUNSUPPORTED, "--private needs --client-algo sgd with local steps (not fedsgd) over "
                              "the whole trainable vector");
        if (st->priv && st->priv_dim != np)
            return loom_error(LOOM_EINVAL, "client private part has %zu values, expected %zu", st->priv_dim, np);
        if (!st->priv) { /* first round: the initial values the global vector still holds */
            if (!(st->priv = loom_alloc((np ? np : 1) * sizeof(float))))
                return loom_error(LOOM_ENOMEM, "out of memory for %zu private values", np);
            st->priv_dim = np;
            loom_personal_init_priv(pp, global, st->priv);
        }
        if (!(start = loom_alloc(ctx->dim * sizeof(float)))) return loom_error(LOOM_ENOMEM, "out of memory");
        memcpy(start, global, ctx->dim * sizeof(float));
        loom_personal_put(pp, st->priv, start);
        global = start;
    }
    loom_batcher *b = NULL;
    int rc = client_batcher(d, d->train, d->n_train, 0, &b);
    if (rc == LOOM_OK) {
        loom_fit_task ft = {round, global, control, b, *fc};
        /* DP-SGD: noise of this client and round (the trainer's step count restarts every round) */
        ft.fc.sgd_noise_seed = loom_hash2(d->data_seed, (uint64_t)round);
        rc = algo->fit(ctx, &ft, st, out);
    }
    loom_batcher_free(b);
    loom_free(start);
    if (rc == LOOM_OK && pp) { /* the trained private values stay here; the update carries 0 for them */
        loom_personal_get(pp, ctx->vec, st->priv);
        loom_personal_zero(pp, out->update);
        if (out->control_delta) loom_personal_zero(pp, out->control_delta);
    }
    if (rc == LOOM_OK && fc->dp_clip > 0) { /* local DP: clip and noise before anything leaves the client */
        rc = loom_dp_local_privatize(out->update, ctx->dim, fc->dp_clip, fc->dp_noise,
                                     fc->dp_seed ? fc->dp_seed : d->data_seed, round, NULL);
        if (pp) loom_personal_zero(pp, out->update); /* noise only on what is sent */
    }
    if (rc == LOOM_OK && co && co->codec != LOOM_CODEC_F32) { /* error feedback: the client keeps what is not sent */
        if (pp || fc->mask) { /* over the values that travel (include/loom/personal.h, masked updates) */
            const size_t dim = ctx->dim;
            uint8_t *send = malloc(dim ? dim : 1);
            float *sh = loom_alloc((dim ? dim : 1) * sizeof(float));
            if (!send || !sh) rc = loom_error(LOOM_ENOMEM, "out of memory");
            size_t ns = 0;
            /* the residual stays dim long (the sent set may change every round: FedRA): what a round does
             * not send waits in it */
            float *pre = rc == LOOM_OK ? loom_alloc((dim ? dim : 1) * sizeof(float)) : NULL;
            if (rc == LOOM_OK && !pre) rc = loom_error(LOOM_ENOMEM, "out of memory");
            if (rc == LOOM_OK) rc = loom_client_state_residual(st, dim);
            if (rc == LOOM_OK) {
                loom_personal_send_mask(pp, fc->mask, dim, send);
                ns = loom_mask_sent(send, dim);
                for (size_t i = 0; i < dim; i++) pre[i] = out->update[i] + st->residual[i];
                loom_mask_pack(send, dim, pre, sh);
                loom_client_state none; /* the packed values' lossy round trip, without a residual of its own */
                loom_client_state_init(&none);
                rc = loom_client_compress(&none, sh, ns, co);
                loom_client_state_clear(&none);
            }
            if (rc == LOOM_OK) {
                loom_mask_unpack(send, dim, sh, out->update);
                for (size_t i = 0; i < dim; i++) st->residual[i] = pre[i] - out->update[i];
            }
            loom_free(pre);
            free(send);
            loom_free(sh);
        } else {
            rc = loom_client_compress(st, out->update, ctx->dim, co);
        }
    }
    return rc;
}

int loom_client_run_eval(const loom_client_algo *algo, const loom_client_ctx *ctx, const loom_client_data *d,
                         const float *global, loom_eval_result *res) {
    memset(res, 0, sizeof *res);
    loom_eval_task et = {global, NULL, NULL, d->test, d->n_test};
    if (d->ds->kind == LOOM_DS_CLASSIFY) {
        et.ds = d->ds;
        return algo->evaluate(ctx, &et, res);
    }
    if (d->n_test == 0) return LOOM_OK;
    loom_batcher *b = NULL;
    int rc = client_batcher(d, d->test, d->n_test, 1, &b);
    et.data = b;
    if (rc == LOOM_OK) rc = algo->evaluate(ctx, &et, res);
    loom_batcher_free(b);
    return rc;
}
