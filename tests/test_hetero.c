/* Heterogeneous clients (include/loom/hetero.h):
 *  - the masked mean on hand-built cases with values worked out by hand: HetLoRA's zero-padding mean,
 *    the rank-wise mean, FedRA's per-layer mean, a value nobody trained
 *  - masks against an independent rule (rank slots of A rows and B columns, FedRA's layer budget)
 *  - a client's rank-r truncation trains exactly like a rank-r LoRA of its own
 *  - FLoRA stacking: the stacked product equals the weighted mean of the products, in the library and
 *    in loom_sim_run against the clients trained again one by one
 *  - loom_sim_run: every client at r_max equals plain LoRA FedAvg bit for bit; FFA-LoRA leaves every A
 *    unchanged bit for bit (with weight decay); lr 0 leaves the model (rank-wise, FedRA, FFA) and with
 *    zero-padding shrinks each slot by the share of weight that holds it
 *  - HetLoRA rank self-pruning at its threshold, by hand and in a run
 *  - device profiles and the list flags: values read, errors naming the file and line or the flag */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/engine.h"
#include "loom/fl.h"
#include "loom/hetero.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/pipeline.h"
#include "loom/sim.h"
#include "loom/tokenizer.h"
#include "loom/train.h"
#include "fl_fixture.h"
#include "test.h"

static loom_model *model;
static loom_dataset *ds;
static loom_tokenizer *tok;

/* ------------------------------------------------------------------ the masked mean, by hand */

static loom_pipeline *make_pipe(size_t dim, int pad) {
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, dim);
    pc.mask_pad = pad;
    loom_pipeline *p = NULL;
    CHECK_OK(loom_pipeline_create(&p, &pc));
    return p;
}

enum { T_ = LOOM_MASK_TRAIN, F_ = LOOM_MASK_FROZEN, A_ = LOOM_MASK_ABSENT };

static void masked_mean_by_hand(void) {
    /* one LoRA module with r_max = 2, in = out = 1: values A0 A1 B0 B1. Client 0 (weight 1) has rank 1
     * (A1, B1 absent; it sends garbage there, which must be ignored), client 1 (weight 3) rank 2. */
    const float x0[4] = {1, 2, 0.5f, -1};
    const float u0[4] = {0.5f, 9, 0.25f, 9}, u1[4] = {1, -1, 0.5f, 0.5f};
    const uint8_t m0[4] = {T_, A_, T_, A_}, m1[4] = {T_, T_, T_, T_};
    /* zero-padding: models y0 = (1.5, 0, 0.75, 0) padded, y1 = (2, 1, 1, -0.5); (1 y0 + 3 y1) / 4 */
    const float pad[4] = {1.875f, 0.75f, 0.9375f, -0.375f};
    /* rank-wise: slot 1 only over client 1: x + u1 */
    const float rw[4] = {1.875f, 1.0f, 0.9375f, -0.5f};
    for (int mode = 0; mode < 2; mode++) {
        loom_pipeline *p = make_pipe(4, mode == 0);
        float x[4];
        memcpy(x, x0, sizeof x);
        CHECK_OK(loom_pipeline_begin_round(p, 1));
        CHECK_OK(loom_pipeline_add_masked(p, u1, 4, 3, NULL, m1, NULL, NULL));
        CHECK_OK(loom_pipeline_add_masked(p, u0, 4, 1, NULL, m0, NULL, NULL));
        CHECK_OK(loom_pipeline_end_round(p, x));
        const float *want = mode == 0 ? pad : rw;
        for (int i = 0; i < 4; i++)
            CHECK(x[i] == want[i], "%s mean, value %d: %.9g, by hand %.9g", mode == 0 ? "zero-padding" : "rank-wise", i,
                  x[i], want[i]);
        loom_pipeline_free(p);
    }
    /* FedRA: layer 0 = values 0, 1; layer 1 = values 2, 3; value 4 frozen everywhere (stays).
     * client a (w 1) holds layer 0, b (w 1) both, c (w 2) layer 1. */
    const float z[5] = {0, 0, 0, 0, 0.25f};
    const float ua[5] = {1, 2, 7, 7, 7}, ub[5] = {3, 4, 5, 6, 7}, uc[5] = {7, 7, 1, 1, 7};
    const uint8_t ma[5] = {T_, T_, F_, F_, F_}, mb[5] = {T_, T_, T_, T_, F_}, mc[5] = {F_, F_, T_, T_, F_};
    for (int pad_mode = 0; pad_mode < 2; pad_mode++) { /* frozen values never count, padded or not */
        loom_pipeline *p = make_pipe(5, pad_mode);
        float x[5];
        memcpy(x, z, sizeof x);
        CHECK_OK(loom_pipeline_begin_round(p, 1));
        CHECK_OK(loom_pipeline_add_masked(p, uc, 5, 2, NULL, mc, NULL, NULL));
        CHECK_OK(loom_pipeline_add_masked(p, ua, 5, 1, NULL, ma, NULL, NULL));
        CHECK_OK(loom_pipeline_add_masked(p, ub, 5, 1, NULL, mb, NULL, NULL));
        CHECK_OK(loom_pipeline_end_round(p, x));
        const float want[5] = {2, 3, (float)(7.0 / 3.0), (float)(8.0 / 3.0), 0.25f}; /* (5 + 2)/3, (6 + 2)/3 */
        for (int i = 0; i < 5; i++)
            CHECK(x[i] == want[i], "FedRA per-layer mean, value %d: %.9g, by hand %.9g", i, x[i], want[i]);
        loom_pipeline_free(p);
    }
    /* an unmasked update counts in every value: (mask all TRAIN) == (no mask), bit for bit, on random data */
    enum { D = 3000, N = 7 };
    static float u[N][D], xa[D], xb[D];
    loom_rng r;
    loom_rng_init(&r, 9, 1);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < D; i++) u[n][i] = (float)loom_rng_normal(&r) * (n + 1) * 1e-3f;
    for (int i = 0; i < D; i++) xa[i] = xb[i] = (float)loom_rng_normal(&r);
    uint8_t *all = malloc(D);
    memset(all, T_, D);
    loom_pipeline *pa = make_pipe(D, 1), *pb = make_pipe(D, 0);
    CHECK_OK(loom_pipeline_begin_round(pa, 1));
    CHECK_OK(loom_pipeline_begin_round(pb, 1));
    for (int n = 0; n < N; n++) {
        CHECK_OK(loom_pipeline_add(pa, u[n], D, 1 + n, NULL, NULL, NULL));
        CHECK_OK(loom_pipeline_add_masked(pb, u[n], D, 1 + n, NULL, n % 2 ? all : NULL, NULL, NULL));
    }
    CHECK_OK(loom_pipeline_end_round(pa, xa));
    CHECK_OK(loom_pipeline_end_round(pb, xb));
    CHECK(memcmp(xa, xb, sizeof xa) == 0, "all-TRAIN masks give the plain mean's bits");
    /* a robust aggregator refuses masks, naming itself */
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, D);
    pc.aggregator = &loom_agg_robust;
    loom_pipeline *pr;
    CHECK_OK(loom_pipeline_create(&pr, &pc));
    CHECK_OK(loom_pipeline_begin_round(pr, 1));
    loom_update_verdict v;
    CHECK(loom_pipeline_add_masked(pr, u[0], D, 1, NULL, all, &v, NULL) == LOOM_EUNSUPPORTED &&
              strstr(loom_errmsg(), "cannot take masked"),
          "robust aggregator with a mask: %s", loom_errmsg());
    loom_pipeline_abort_round(pr);
    loom_pipeline_free(pr);
    free(all);
    loom_pipeline_free(pa);
    loom_pipeline_free(pb);
}

/* ------------------------------------------------------------------ masks */

static loom_tset *lora_set(int r, float alpha) {
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = r;
    pc.lora_alpha = alpha;
    snprintf(pc.target_modules, sizeof pc.target_modules, "c_attn,c_fc");
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, model, &pc, 11));
    return ts;
}

static void masks_follow_the_rule(void) {
    const int R = 4, N = 5;
    loom_tset *ts = lora_set(R, 8);
    int ranks[5] = {1, 2, 3, 4, 2}, layers[5] = {1, 0, 2, 1, 1};
    loom_hetero_config hc;
    loom_hetero_defaults(&hc);
    hc.n_clients = N;
    hc.ranks = ranks;
    hc.layers = layers;
    hc.seed = 3;
    loom_hetero *h;
    CHECK_OK(loom_hetero_create(&h, ts, &hc));
    size_t dim = loom_tset_dim(ts);
    uint8_t *m = malloc(dim);
    int L = loom_model_config(model)->n_layer, differs = 0;
    uint8_t first[8] = {0};
    for (int round = 1; round <= 6; round++)
        for (int k = 0; k < N; k++) {
            CHECK_OK(loom_hetero_mask(h, k, round, m));
            uint8_t held[8];
            CHECK_OK(loom_hetero_layers(h, k, round, held));
            int count = 0;
            for (int l = 0; l < L; l++) count += held[l];
            int want = layers[k] == 0 || layers[k] >= L ? L : layers[k];
            CHECK(count == want, "client %d round %d holds %d layers, budget %d", k, round, count, want);
            if (k == 0 && round == 1) memcpy(first, held, (size_t)L);
            if (k == 0 && memcmp(first, held, (size_t)L)) differs = 1;
            size_t bad = 0;
            for (int e = 0; e < loom_tset_count(ts); e++) {
                const loom_tset_entry *t = loom_tset_entry_at(ts, e);
                int isA = strstr(t->name, "lora_A") != NULL;
                for (size_t i = 0; i < t->numel; i++) {
                    /* the rank slot: A's row, B's column */
                    size_t slot = isA ? i / (size_t)t->shape[1] : i % (size_t)t->shape[1];
                    uint8_t want_m = (int)slot >= ranks[k] ? A_ : held[t->layer] ? T_ : F_;
                    bad += m[t->offset + i] != want_m;
                }
            }
            CHECK(bad == 0, "client %d round %d: %zu mask values differ from the rule", k, round, bad);
        }
    CHECK(differs, "client 0's layer draws change across rounds");
    /* FFA: every A frozen (or absent beyond the rank), B by the rule */
    loom_hetero_free(h);
    hc.layers = NULL;
    hc.freeze_a = 1;
    CHECK_OK(loom_hetero_create(&h, ts, &hc));
    CHECK_OK(loom_hetero_mask(h, 3, 1, m));
    size_t frozen = 0, train = 0, nA = 0;
    for (int e = 0; e < loom_tset_count(ts); e++) {
        const loom_tset_entry *t = loom_tset_entry_at(ts, e);
        for (size_t i = 0; i < t->numel; i++) {
            if (strstr(t->name, "lora_A")) nA++, frozen += m[t->offset + i] == F_;
            else train += m[t->offset + i] == T_;
        }
    }
    CHECK(frozen == nA && train == dim - nA, "FFA-LoRA at r_max: %zu of %zu A values frozen, %zu B values trained",
          frozen, nA, train);
    /* FFA-LoRA at rank 1: still every A frozen (none absent, so zero-padding cannot shrink one), B by rank */
    CHECK_OK(loom_hetero_mask(h, 0, 1, m));
    size_t bad = 0;
    for (int e = 0; e < loom_tset_count(ts); e++) {
        const loom_tset_entry *t = loom_tset_entry_at(ts, e);
        for (size_t i = 0; i < t->numel; i++)
            bad += m[t->offset + i] != (strstr(t->name, "lora_A") ? F_ : i % (size_t)R < 1 ? T_ : A_);
    }
    CHECK(bad == 0, "FFA-LoRA at rank 1: %zu mask values differ from the rule", bad);
    loom_hetero_free(h);
    /* refusals name the flag */
    int bad_r[5] = {1, 2, 5, 1, 1};
    hc.ranks = bad_r;
    hc.freeze_a = 0;
    CHECK(loom_hetero_create(&h, ts, &hc) == LOOM_ERANGE && strstr(loom_errmsg(), "--client-ranks") &&
              strstr(loom_errmsg(), "client 2 has rank 5"),
          "rank above r_max: %s", loom_errmsg());
    int list[5];
    CHECK_OK(loom_hetero_parse_list("2,4", "--client-ranks", 1, 4, 1, 5, list));
    CHECK(list[0] == 2 && list[1] == 4 && list[2] == 2 && list[4] == 2, "list repeated in turn: %d %d %d %d", list[0],
          list[1], list[2], list[4]);
    CHECK_OK(loom_hetero_parse_list("draw:1,3", "--client-ranks", 1, 4, 1, 5, list));
    for (int k = 0; k < 5; k++) CHECK(list[k] == 1 || list[k] == 3, "drawn rank %d", list[k]);
    CHECK(loom_hetero_parse_list("2,x", "--client-ranks", 1, 4, 1, 5, list) == LOOM_EINVAL &&
              strstr(loom_errmsg(), "--client-ranks"),
          "bad list: %s", loom_errmsg());
    CHECK(loom_hetero_parse_list("2,9", "--client-ranks", 1, 4, 1, 5, list) == LOOM_ERANGE &&
              strstr(loom_errmsg(), "entry 2 is 9, outside 1..4"),
          "out of range: %s", loom_errmsg());
    free(m);
    loom_tset_free(ts);
}

/* ------------------------------------------------------------------ truncation == a rank-r set */

static int sgd_steps; /* 0: three AdamW steps with weight decay; else that many plain SGD steps, clip 1e-3 */

/* One client's round from start with mask; the worker's final vector into final (may be NULL). */
static void train_client(loom_tset *ts, const float *start, const uint8_t *mask, float *update, float *final) {
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.kind = sgd_steps ? LOOM_OPT_SGD : LOOM_OPT_ADAMW;
    tc.opt.lr = sgd_steps ? 0.5f : 0.01f;
    tc.opt.weight_decay = sgd_steps ? 0.0f : 0.1f;
    tc.opt.momentum = 0;
    tc.clip = sgd_steps ? 1e-3f : 0.0f;
    tc.warmup = 0;
    tc.total_steps = 0;
    tc.B = 2;
    tc.T = 16;
    size_t dim = loom_tset_dim(ts);
    float *vec = loom_alloc(dim * sizeof(float));
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create_peft(&tr, model, loom_model_params(model), ts, vec, &tc));
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 1, 0, 1));
    loom_client_data d = {ds, p->clients[0].train, p->clients[0].n_train, NULL, 0, 2, 16, 77};
    loom_fit_config fc = {0};
    fc.local_steps = sgd_steps ? sgd_steps : 3;
    fc.mask = mask;
    loom_client_ctx ctx = {tr, vec, dim, NULL};
    loom_client_state st;
    loom_client_state_init(&st);
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = update;
    CHECK_OK(loom_client_run_fit(&loom_client_local_sgd, &ctx, &d, 1, start, NULL, &fc, NULL, &st, &out));
    if (final) memcpy(final, vec, dim * sizeof(float));
    loom_client_state_clear(&st);
    loom_partition_free(p);
    loom_trainer_free(tr);
    loom_free(vec);
}

static void truncation_is_a_rank_r_set(void) {
    const int R = 4, r = 2;
    loom_tset *big = lora_set(R, 8), *small = lora_set(r, 8.0f * r / R); /* the same scale alpha / r */
    CHECK(loom_tset_lora_scale(big) == loom_tset_lora_scale(small), "scales %g %g", loom_tset_lora_scale(big),
          loom_tset_lora_scale(small));
    size_t D = loom_tset_dim(big), d = loom_tset_dim(small);
    float *g = loom_alloc(D * 4), *gs = loom_alloc(d * 4), *u = loom_alloc(D * 4), *us = loom_alloc(d * 4);
    memcpy(g, loom_tset_data(big), D * 4);
    loom_rng rr;
    loom_rng_init(&rr, 5, 5);
    for (size_t i = 0; i < D; i++) g[i] += 0.05f * (float)loom_rng_normal(&rr); /* nonzero B's */
    /* the small set's start: the big one's first r rank slots */
    for (int e = 0; e < loom_tset_count(big); e++) {
        const loom_tset_entry *tb = loom_tset_entry_at(big, e), *ts = loom_tset_entry_at(small, e);
        for (size_t i = 0; i < ts->numel; i++) {
            size_t bi = strstr(tb->name, "lora_A") ? i : (i / r) * R + i % r;
            gs[ts->offset + i] = g[tb->offset + bi];
        }
    }
    int ranks[1] = {r};
    loom_hetero_config hc;
    loom_hetero_defaults(&hc);
    hc.n_clients = 1;
    hc.ranks = ranks;
    loom_hetero *h;
    CHECK_OK(loom_hetero_create(&h, big, &hc));
    uint8_t *m = malloc(D);
    CHECK_OK(loom_hetero_mask(h, 0, 1, m));
    train_client(big, g, m, u, NULL);
    train_client(small, gs, NULL, us, NULL);
    double worst = 0, moved = 0;
    size_t outside = 0;
    for (int e = 0; e < loom_tset_count(big); e++) {
        const loom_tset_entry *tb = loom_tset_entry_at(big, e), *ts = loom_tset_entry_at(small, e);
        int isA = strstr(tb->name, "lora_A") != NULL;
        for (size_t i = 0; i < tb->numel; i++) {
            size_t slot = isA ? i / (size_t)tb->shape[1] : i % (size_t)R;
            if ((int)slot >= r) {
                outside += u[tb->offset + i] != 0.0f;
                continue;
            }
            size_t si = isA ? i : (i / R) * r + slot;
            worst = fmax(worst, fabs((double)u[tb->offset + i] - us[ts->offset + si]));
            moved = fmax(moved, fabs((double)us[ts->offset + si]));
        }
    }
    CHECK(outside == 0, "%zu updates outside the client's rank", outside);
    CHECK(moved > 1e-4, "the rank-%d client trained (%g)", r, moved);
    CHECK(worst <= 1e-6, "rank-%d truncation of a rank-%d set vs a rank-%d set: max |d| = %g", r, R, r, worst);
    /* FFA-LoRA on the client (AdamW with weight decay): its A's never move during local training, so
     * every step's forward uses the frozen A, and the B's train */
    loom_hetero_free(h);
    hc.ranks = NULL;
    hc.freeze_a = 1;
    CHECK_OK(loom_hetero_create(&h, big, &hc));
    CHECK_OK(loom_hetero_mask(h, 0, 1, m));
    float *fin = loom_alloc(D * 4);
    train_client(big, g, m, u, fin);
    size_t a_moved = 0, b_moved = 0, a_sent = 0;
    for (int e = 0; e < loom_tset_count(big); e++) {
        const loom_tset_entry *t = loom_tset_entry_at(big, e);
        for (size_t i = 0; i < t->numel; i++) {
            size_t k = t->offset + i;
            if (e % 2 == 0) a_moved += memcmp(&fin[k], &g[k], 4) != 0, a_sent += u[k] != 0.0f;
            else b_moved += fin[k] != g[k];
        }
    }
    CHECK(a_moved == 0 && a_sent == 0, "FFA client: %zu A values moved locally, %zu sent", a_moved, a_sent);
    CHECK(b_moved > 0, "FFA client: the B's trained");
    /* one clipped SGD step: B moves by -lr g_B min(1, c / |g_B|), the norm over B alone (A's gradient,
     * which the client does not train, must not count in the clip); g from the trainer's own gradient */
    sgd_steps = 1;
    train_client(big, g, m, u, NULL);
    sgd_steps = 0;
    {
        loom_train_config tc;
        loom_train_defaults(&tc);
        tc.B = 2;
        tc.T = 16;
        float *vec = loom_alloc(D * 4);
        memcpy(vec, g, D * 4);
        loom_trainer *tr;
        CHECK_OK(loom_trainer_create_peft(&tr, model, loom_model_params(model), big, vec, &tc));
        loom_partition *p;
        CHECK_OK(loom_partition_iid(&p, ds->n, 1, 0, 1));
        loom_batcher_opts bo;
        loom_batcher_opts_init(&bo);
        bo.B = 2;
        bo.T = 16;
        bo.seed = 77;
        loom_batcher *b;
        CHECK_OK(loom_batcher_create(&b, ds, p->clients[0].train, p->clients[0].n_train, &bo));
        int32_t tk[32], tg[32];
        CHECK_OK(loom_batcher_fill(b, 0, tk, tg, NULL));
        float l;
        CHECK_OK(loom_trainer_gradient(tr, tk, tg, &l));
        const float *gr = loom_trainer_grads(tr);
        double nb = 0, na = 0;
        for (int e = 0; e < loom_tset_count(big); e++) {
            const loom_tset_entry *t = loom_tset_entry_at(big, e);
            for (size_t i = 0; i < t->numel; i++) *(e % 2 ? &nb : &na) += (double)gr[t->offset + i] * gr[t->offset + i];
        }
        nb = sqrt(nb);
        CHECK(sqrt(na) > 1e-3 * nb, "A has a gradient of its own (%g vs %g)", sqrt(na), nb);
        double f = nb > 1e-3 ? 1e-3 / nb : 1.0, worst = 0, big_u = 0;
        for (int e = 1; e < loom_tset_count(big); e += 2) {
            const loom_tset_entry *t = loom_tset_entry_at(big, e);
            for (size_t i = 0; i < t->numel; i++) {
                double want = -0.5 * gr[t->offset + i] * f;
                worst = fmax(worst, fabs(u[t->offset + i] - want));
                big_u = fmax(big_u, fabs(want));
            }
        }
        CHECK(worst <= 1e-3 * big_u + 1e-9, "FFA clipped step: max |d| = %g (of %g)", worst, big_u);
        loom_batcher_free(b);
        loom_partition_free(p);
        loom_trainer_free(tr);
        loom_free(vec);
    }
    loom_free(fin);
    free(m);
    loom_hetero_free(h);
    loom_free(g);
    loom_free(gs);
    loom_free(u);
    loom_free(us);
    loom_tset_free(big);
    loom_tset_free(small);
}

/* ------------------------------------------------------------------ FLoRA stacking */

static void flora_stacking(void) {
    const int R = 3;
    loom_tset *ts = lora_set(R, 6);
    size_t dim = loom_tset_dim(ts);
    float *v[2] = {loom_alloc(dim * 4), loom_alloc(dim * 4)};
    loom_rng rr;
    loom_rng_init(&rr, 8, 8);
    for (int c = 0; c < 2; c++)
        for (size_t i = 0; i < dim; i++) v[c][i] = (float)loom_rng_normal(&rr);
    int ranks[2] = {1, 3};
    double w[2] = {1, 3};
    const float *cv[2] = {v[0], v[1]};
    const loom_tset_entry *A = loom_tset_entry_at(ts, 0), *B = loom_tset_entry_at(ts, 1);
    size_t in = (size_t)A->shape[1], out = (size_t)B->shape[0];
    int S = 0;
    CHECK_OK(loom_lora_stack(ts, 0, cv, ranks, w, 2, NULL, NULL, &S));
    CHECK(S == 4, "stacked rank %d = 1 + 3", S);
    float *As = malloc((size_t)S * in * 4), *Bs = malloc(out * (size_t)S * 4);
    CHECK_OK(loom_lora_stack(ts, 0, cv, ranks, w, 2, As, Bs, &S));
    /* B_s A_s against sum_c p_c B_c[:, :r_c] A_c[:r_c, :], both in double */
    double worst = 0, big = 0;
    for (size_t o = 0; o < out; o++)
        for (size_t i = 0; i < in; i++) {
            double s = 0, ref = 0;
            for (int j = 0; j < S; j++) s += (double)Bs[o * S + j] * As[(size_t)j * in + i];
            for (int c = 0; c < 2; c++)
                for (int j = 0; j < ranks[c]; j++)
                    ref += w[c] / 4.0 * v[c][B->offset + o * R + j] * v[c][A->offset + (size_t)j * in + i];
            worst = fmax(worst, fabs(s - ref));
            big = fmax(big, fabs(ref));
        }
    CHECK(worst <= 1e-6 * big, "stacked product vs mean of products: max |d| = %g (of %g)", worst, big);
    /* the merge adds scale * B_s A_s to every module's weight (GPT-2 Conv1D: W[in, out] += s (B A)^T) */
    size_t np = loom_model_n_params(model);
    float *par = loom_alloc(np * 4);
    memcpy(par, loom_model_params(model), np * 4);
    CHECK_OK(loom_lora_stack_merge(ts, cv, ranks, w, 2, par));
    const float *base = loom_model_params(model);
    /* module 0 adapts tensor A->tensor; read its offset through the model's manifest */
    const loom_tvec_entry *we = loom_tvec_at(loom_model_manifest(model), A->tensor);
    double sc = loom_tset_lora_scale(ts), mw = 0;
    for (size_t i = 0; i < in; i++)
        for (size_t o = 0; o < out; o++) {
            double ref = 0;
            for (int c = 0; c < 2; c++)
                for (int j = 0; j < ranks[c]; j++)
                    ref += w[c] / 4.0 * v[c][B->offset + o * R + j] * v[c][A->offset + (size_t)j * in + i];
            size_t k = we->offset + i * out + o;
            mw = fmax(mw, fabs(((double)par[k] - base[k]) - sc * ref));
        }
    CHECK(mw <= 1e-5, "merged stacked product: max |d| = %g", mw);
    CHECK(loom_lora_stack(ts, 0, cv, ranks, (double[]){1, 0}, 2, NULL, NULL, &S) == LOOM_EINVAL &&
              strstr(loom_errmsg(), "weight 0"),
          "zero weight refused: %s", loom_errmsg());
    free(As);
    free(Bs);
    loom_free(par);
    loom_free(v[0]);
    loom_free(v[1]);
    loom_tset_free(ts);
}

/* ------------------------------------------------------------------ loom_sim_run */

typedef struct {
    loom_train_config tc;
    loom_tset *ts;
} wud;

static int mk(void *ud, loom_trainer **tr, float **vec) {
    wud *u = ud;
    *vec = loom_alloc(loom_tset_dim(u->ts) * sizeof(float));
    return loom_trainer_create_peft(tr, model, loom_model_params(model), u->ts, *vec, &u->tc);
}
static void fr(void *ud, loom_trainer *tr, float *vec) {
    (void)ud;
    loom_trainer_free(tr);
    loom_free(vec);
}

static void sim_base(loom_sim_config *c, wud *u, loom_partition *p, float lr, float wd) {
    loom_train_defaults(&u->tc);
    u->tc.opt.kind = LOOM_OPT_ADAMW;
    u->tc.opt.lr = lr;
    u->tc.opt.weight_decay = wd;
    u->tc.clip = 1;
    u->tc.warmup = 0;
    u->tc.total_steps = 0;
    u->tc.B = 2;
    u->tc.T = 16;
    loom_sim_defaults(c);
    c->dim = loom_tset_dim(u->ts);
    c->init = loom_tset_data(u->ts);
    c->make_worker = mk;
    c->free_worker = fr;
    c->worker_ud = u;
    c->ds = ds;
    c->part = p;
    c->B = 2;
    c->T = 16;
    c->rounds = 2;
    c->fit.local_steps = 2;
    c->workers = 2;
    c->eval_every = 0;
    c->seed = 4;
}

static void sim_identities(void) {
    enum { N = 4 };
    const int R = 4;
    wud u;
    u.ts = lora_set(R, 8);
    size_t dim = loom_tset_dim(u.ts);
    /* B nonzero from the start, so that truncation and padding change something */
    float *init = loom_alloc(dim * 4);
    memcpy(init, loom_tset_data(u.ts), dim * 4);
    for (int e = 1; e < loom_tset_count(u.ts); e += 2) {
        const loom_tset_entry *t = loom_tset_entry_at(u.ts, e);
        for (size_t i = 0; i < t->numel; i++) init[t->offset + i] = 0.01f * (float)((i % 7) + 1);
    }
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, N, 0, 2));
    float *plain = loom_alloc(dim * 4), *het = loom_alloc(dim * 4);
    loom_sim_config c;
    sim_base(&c, &u, p, 0.01f, 0);
    c.init = init;
    CHECK_OK(loom_sim_run(&c, plain));
    CHECK(memcmp(plain, init, dim * 4) != 0, "plain LoRA FedAvg trained");
    int full[N] = {R, R, R, R}, mixed[N] = {1, 2, 4, 3}, lay[N] = {1, 0, 1, 2};
    loom_hetero_config hc;
    loom_hetero_defaults(&hc);
    hc.n_clients = N;
    hc.ranks = full;
    hc.seed = c.seed;
    loom_hetero *h;
    for (int rw = 0; rw < 2; rw++) {
        hc.rankwise = rw;
        CHECK_OK(loom_hetero_create(&h, u.ts, &hc));
        c.hetero = h;
        CHECK_OK(loom_sim_run(&c, het));
        CHECK(memcmp(plain, het, dim * 4) == 0, "every client at r_max (%s) == plain LoRA FedAvg, bit for bit",
              rw ? "rank-wise" : "zero-padding");
        loom_hetero_free(h);
    }
    /* FFA-LoRA with mixed ranks and weight decay: every A stays bit for bit, the B's train */
    sim_base(&c, &u, p, 0.01f, 0.5f);
    c.init = init;
    hc.ranks = mixed;
    hc.rankwise = 0; /* zero-padding: still no A may shrink */
    hc.freeze_a = 1;
    CHECK_OK(loom_hetero_create(&h, u.ts, &hc));
    c.hetero = h;
    CHECK_OK(loom_sim_run(&c, het));
    size_t a_moved = 0, b_moved = 0;
    for (int e = 0; e < loom_tset_count(u.ts); e++) {
        const loom_tset_entry *t = loom_tset_entry_at(u.ts, e);
        for (size_t i = 0; i < t->numel; i++) {
            int same = memcmp(&het[t->offset + i], &init[t->offset + i], 4) == 0;
            if (e % 2 == 0) a_moved += !same;
            else b_moved += !same;
        }
    }
    CHECK(a_moved == 0, "FFA-LoRA: %zu A values changed", a_moved);
    CHECK(b_moved > 0, "FFA-LoRA: the B's trained");
    loom_hetero_free(h);
    /* lr 0 leaves the model: rank-wise mixed ranks with FedRA, and FFA */
    sim_base(&c, &u, p, 0.0f, 0.0f);
    c.init = init;
    for (int variant = 0; variant < 2; variant++) {
        hc.ranks = mixed;
        hc.rankwise = 1;
        hc.freeze_a = variant;
        hc.layers = variant ? NULL : lay;
        CHECK_OK(loom_hetero_create(&h, u.ts, &hc));
        c.hetero = h;
        CHECK_OK(loom_sim_run(&c, het));
        CHECK(memcmp(het, init, dim * 4) == 0, "lr 0 (%s) leaves the model bit for bit", variant ? "FFA" : "FedRA");
        loom_hetero_free(h);
    }
    /* zero-padding with lr 0: slot j of every module becomes x * (weight holding j) / (total weight), each round */
    hc.layers = NULL;
    hc.freeze_a = 0;
    hc.rankwise = 0;
    CHECK_OK(loom_hetero_create(&h, u.ts, &hc));
    c.hetero = h;
    c.rounds = 2;
    CHECK_OK(loom_sim_run(&c, het));
    double wt = 0, wslot[4] = {0};
    for (int k = 0; k < N; k++) {
        wt += (double)p->clients[k].n_train;
        for (int j = 0; j < mixed[k]; j++) wslot[j] += (double)p->clients[k].n_train;
    }
    double worst = 0;
    for (int e = 0; e < loom_tset_count(u.ts); e++) {
        const loom_tset_entry *t = loom_tset_entry_at(u.ts, e);
        int isA = e % 2 == 0;
        for (size_t i = 0; i < t->numel; i++) {
            size_t j = isA ? i / (size_t)t->shape[1] : i % (size_t)R;
            double f = wslot[j] / wt, want = (double)init[t->offset + i] * f * f; /* two rounds */
            worst = fmax(worst, fabs(het[t->offset + i] - want) / fmax(1e-30, fabs(want) + 1e-12));
        }
    }
    CHECK(worst <= 1e-6, "zero-padding at lr 0 shrinks each slot by its held share: worst relative error %g", worst);
    loom_hetero_free(h);
    /* the engine refuses masks with asynchronous rounds, naming --mode */
    hc.rankwise = 1;
    CHECK_OK(loom_hetero_create(&h, u.ts, &hc));
    c.hetero = h;
    c.mode = LOOM_ENGINE_FEDBUFF;
    CHECK(loom_sim_run(&c, het) != LOOM_OK && strstr(loom_errmsg(), "--mode sync"), "async refused: %s", loom_errmsg());
    loom_hetero_free(h);
    loom_free(init);
    loom_free(plain);
    loom_free(het);
    loom_partition_free(p);
    loom_tset_free(u.ts);
}

/* FLoRA in loom_sim_run: one round of two clients with ranks 1 and R; the stacked product merged into
 * a copy of the base must equal scale * sum_k p_k B_k[:, :r_k] A_k[:r_k, :] of the clients' own models,
 * each trained here again on its own by loom_client_run_fit; the global adapter restarts from init. */
typedef struct {
    loom_tset *ts;
    const loom_hetero *h;
    float *params;
    int calls;
} stack_ud;

static int stack_cb(void *ud, int round, const float *const *models, const int *clients, const double *w, size_t n) {
    stack_ud *s = ud;
    int ranks[8];
    for (size_t i = 0; i < n; i++) ranks[i] = loom_hetero_rank(s->h, clients[i]);
    s->calls++;
    (void)round;
    return loom_lora_stack_merge(s->ts, models, ranks, w, n, s->params);
}

static void sim_flora(void) {
    enum { N = 2 };
    const int R = 4;
    wud u;
    u.ts = lora_set(R, 8);
    size_t dim = loom_tset_dim(u.ts), np = loom_model_n_params(model);
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, N, 0, 2));
    p->clients[1].n_train /= 3; /* unequal weights */
    loom_sim_config c;
    sim_base(&c, &u, p, 0.01f, 0);
    c.rounds = 1;
    int ranks[N] = {1, R};
    loom_hetero_config hc;
    loom_hetero_defaults(&hc);
    hc.n_clients = N;
    hc.ranks = ranks;
    hc.seed = c.seed;
    loom_hetero *h;
    CHECK_OK(loom_hetero_create(&h, u.ts, &hc));
    c.hetero = h;
    stack_ud su = {u.ts, h, loom_alloc(np * 4), 0};
    memcpy(su.params, loom_model_params(model), np * 4);
    c.stack = stack_cb;
    c.stack_ud = &su;
    float *g = loom_alloc(dim * 4);
    CHECK_OK(loom_sim_run(&c, g));
    CHECK(su.calls == 1, "stack called %d times", su.calls);
    CHECK(memcmp(g, loom_tset_data(u.ts), dim * 4) == 0, "the adapter restarts from its initial value");
    /* the clients again, one by one */
    float *y[N], *vec = loom_alloc(dim * 4);
    uint8_t *m = malloc(dim);
    double wt = 0, wk[N];
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create_peft(&tr, model, loom_model_params(model), u.ts, vec, &u.tc));
    for (int k = 0; k < N; k++) {
        y[k] = loom_alloc(dim * 4);
        CHECK_OK(loom_hetero_mask(h, k, 1, m));
        loom_fit_config fc = c.fit;
        fc.mask = m;
        const loom_client *cl = &p->clients[k];
        loom_client_data d = {ds, cl->train, cl->n_train, cl->test, cl->n_test, 2, 16, loom_sim_client_seed(c.seed, k)};
        loom_client_ctx ctx = {tr, vec, dim, NULL};
        loom_client_state st;
        loom_client_state_init(&st);
        loom_fit_output out;
        memset(&out, 0, sizeof out);
        out.update = y[k];
        CHECK_OK(loom_client_run_fit(&loom_client_local_sgd, &ctx, &d, 1, loom_tset_data(u.ts), NULL, &fc, NULL, &st, &out));
        for (size_t i = 0; i < dim; i++) y[k][i] += loom_tset_data(u.ts)[i];
        loom_client_state_clear(&st);
        wk[k] = (double)cl->n_train;
        wt += wk[k];
    }
    const loom_tset_entry *A = loom_tset_entry_at(u.ts, 0), *B = loom_tset_entry_at(u.ts, 1);
    const loom_tvec_entry *we = loom_tvec_at(loom_model_manifest(model), A->tensor);
    size_t in = (size_t)A->shape[1], out = (size_t)B->shape[0];
    double sc = loom_tset_lora_scale(u.ts), worst = 0, big = 0;
    const float *base = loom_model_params(model);
    for (size_t i = 0; i < in; i++)
        for (size_t o = 0; o < out; o++) {
            double ref = 0;
            for (int k = 0; k < N; k++)
                for (int j = 0; j < ranks[k]; j++)
                    ref += wk[k] / wt * y[k][B->offset + o * R + j] * y[k][A->offset + (size_t)j * in + i];
            size_t q = we->offset + i * out + o;
            worst = fmax(worst, fabs(((double)su.params[q] - base[q]) - sc * ref));
            big = fmax(big, fabs(sc * ref));
        }
    CHECK(big > 1e-6, "the clients' products are not zero (%g)", big);
    CHECK(worst <= 1e-6, "FLoRA in loom sim: merged base vs the clients' mean product: max |d| = %g (of %g)", worst, big);
    /* refusals */
    c.checkpoint_every = 1;
    CHECK(loom_sim_run(&c, g) == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "FLoRA stacking needs"),
          "stacking with checkpoints: %s", loom_errmsg());
    loom_trainer_free(tr);
    for (int k = 0; k < N; k++) loom_free(y[k]);
    loom_free(vec);
    free(m);
    loom_free(g);
    loom_free(su.params);
    loom_hetero_free(h);
    loom_partition_free(p);
    loom_tset_free(u.ts);
}

/* HetLoRA self-pruning: the last slot's share of sum_j |B_j| |A_j| against gamma, by hand and in a run */
static void rank_pruning(void) {
    const int R = 4;
    loom_tset *ts = lora_set(R, 8);
    size_t dim = loom_tset_dim(ts);
    float *g = loom_alloc(dim * 4), *u = loom_alloc(dim * 4);
    memset(g, 0, dim * 4);
    memset(u, 0, dim * 4);
    /* slot 0: A = B = 1, slot 1: A = B = 0.1 (split between global and update), slots 2, 3 large but
     * beyond the rank: the share of slot 1 is 0.01 / 1.01 = 0.0099 in every module */
    for (int e = 0; e < loom_tset_count(ts); e++) {
        const loom_tset_entry *t = loom_tset_entry_at(ts, e);
        int isA = e % 2 == 0;
        for (size_t i = 0; i < t->numel; i++) {
            size_t j = isA ? i / (size_t)t->shape[1] : i % (size_t)R;
            float v = j == 0 ? 1.0f : j == 1 ? 0.1f : 50.0f;
            g[t->offset + i] = v / 2;
            u[t->offset + i] = v / 2;
        }
    }
    int ranks[2] = {2, 1};
    for (int t = 0; t < 2; t++) {
        loom_hetero_config hc;
        loom_hetero_defaults(&hc);
        hc.n_clients = 2;
        hc.ranks = ranks;
        hc.prune_gamma = t == 0 ? 0.0105 : 0.0095; /* just above and just below 0.0099 */
        loom_hetero *h;
        CHECK_OK(loom_hetero_create(&h, ts, &hc));
        int pr = -1;
        CHECK_OK(loom_hetero_prune(h, 0, g, u, &pr));
        CHECK(pr == (t == 0) && loom_hetero_rank(h, 0) == (t == 0 ? 1 : 2),
              "gamma %g: pruned %d, rank %d (share 0.0099)", hc.prune_gamma, pr, loom_hetero_rank(h, 0));
        CHECK_OK(loom_hetero_prune(h, 1, g, u, &pr));
        CHECK(pr == 0 && loom_hetero_rank(h, 1) == 1, "rank 1 is never pruned");
        loom_hetero_free(h);
    }
    loom_hetero_config hc;
    loom_hetero_defaults(&hc);
    hc.n_clients = 2;
    hc.prune_gamma = 2;
    loom_hetero *h;
    CHECK(loom_hetero_create(&h, ts, &hc) == LOOM_ERANGE && strstr(loom_errmsg(), "--hetlora-prune"),
          "gamma 2 refused: %s", loom_errmsg());
    loom_free(g);
    loom_free(u);
    loom_tset_free(ts);
    /* in loom_sim_run with gamma 1 every participation with rank >= 2 drops one slot */
    enum { N = 4 };
    wud w;
    w.ts = lora_set(R, 8);
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, N, 0, 2));
    loom_sim_config c;
    sim_base(&c, &w, p, 0.01f, 0);
    int mixed[N] = {1, 2, 4, 3};
    loom_hetero_defaults(&hc);
    hc.n_clients = N;
    hc.ranks = mixed;
    hc.prune_gamma = 1;
    hc.seed = c.seed;
    CHECK_OK(loom_hetero_create(&h, w.ts, &hc));
    c.hetero = h;
    float *out = loom_alloc(loom_tset_dim(w.ts) * 4);
    CHECK_OK(loom_sim_run(&c, out));
    for (int k = 0; k < N; k++) {
        int want = mixed[k] - c.rounds < 1 ? 1 : mixed[k] - c.rounds;
        CHECK(loom_hetero_rank(h, k) == want, "client %d: rank %d after %d rounds from %d (want %d)", k,
              loom_hetero_rank(h, k), c.rounds, mixed[k], want);
    }
    loom_free(out);
    loom_hetero_free(h);
    loom_partition_free(p);
    loom_tset_free(w.ts);
}

/* ------------------------------------------------------------------ device profiles */

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "open %s", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void profiles(void) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/devices.tsv", dir);
    write_text(path, "# a phone, a laptop, a server\n"
                     "client\tspeed\tmemory_mb\tbandwidth_mbps\trank\n"
                     "0\t0.25\t1024\t2\t-\n"
                     "\n"
                     "1  1    4096   20   3\n"
                     "2\t4\t16384\t100\t-   # comment\n");
    loom_device_profile pr[3];
    CHECK_OK(loom_profile_load(path, 3, 1, pr));
    CHECK(pr[0].speed == 0.25 && pr[1].memory_mb == 4096 && pr[2].bandwidth == 100 && pr[1].rank == 3 &&
              pr[0].rank == 0,
          "profile values read");
    int ranks[3], layers[3];
    CHECK_OK(loom_profile_ranks(pr, 3, 8, ranks));
    CHECK(ranks[0] == 1 && ranks[1] == 3 && ranks[2] == 8, "ranks from memory: %d %d %d (want 1 3 8)", ranks[0],
          ranks[1], ranks[2]);
    CHECK_OK(loom_profile_layers(pr, 3, 12, layers));
    CHECK(layers[0] == 1 && layers[1] == 3 && layers[2] == 12, "layers from memory: %d %d %d (want 1 3 12)", layers[0],
          layers[1], layers[2]);
    /* the virtual clock: steps * step_seconds / speed + 2 * dim * 4 bytes / bandwidth */
    loom_sim_config c;
    loom_sim_defaults(&c);
    c.dim = 250000;
    c.step_seconds = 2;
    c.fit.local_steps = 3;
    c.profiles = pr;
    CHECK_NEAR(loom_sim_client_seconds(&c, 0), 3 * 2 / 0.25 + 2e6 / 2e6, 1e-9);
    CHECK_NEAR(loom_sim_client_seconds(&c, 2), 3 * 2 / 4.0 + 2e6 / 100e6, 1e-9);
    /* errors name the file and the line */
    write_text(path, "client speed memory_mb bandwidth_mbps\n0 1 100 1\n1 -2 100 1\n");
    CHECK(loom_profile_load(path, 2, 1, pr) == LOOM_ERANGE && strstr(loom_errmsg(), "devices.tsv:3") &&
              strstr(loom_errmsg(), "speed -2"),
          "negative speed: %s", loom_errmsg());
    write_text(path, "client speed memory bandwidth_mbps\n");
    CHECK(loom_profile_load(path, 1, 1, pr) == LOOM_EFORMAT && strstr(loom_errmsg(), "devices.tsv:1") &&
              strstr(loom_errmsg(), "'memory', expected 'memory_mb'"),
          "bad header: %s", loom_errmsg());
    write_text(path, "client speed memory_mb bandwidth_mbps\n0 1 100 1\n");
    CHECK(loom_profile_load(path, 2, 1, pr) == LOOM_EFORMAT && strstr(loom_errmsg(), "1 client lines, the run has 2"),
          "missing client: %s", loom_errmsg());
    write_text(path, "client speed memory_mb bandwidth_mbps\n1 1 100 1\n");
    CHECK(loom_profile_load(path, 2, 1, pr) == LOOM_EFORMAT && strstr(loom_errmsg(), "devices.tsv:2: client 1, expected client 0"),
          "clients out of order: %s", loom_errmsg());
    write_text(path, "client speed memory_mb bandwidth_mbps\n0 fast 100 1\n");
    CHECK(loom_profile_load(path, 1, 1, pr) == LOOM_EFORMAT && strstr(loom_errmsg(), "speed 'fast' is not a number"),
          "not a number: %s", loom_errmsg());
    /* the tiers distribution: every client one of the three devices */
    loom_device_profile tp[50];
    CHECK_OK(loom_profile_load("tiers", 50, 7, tp));
    int seen[3] = {0};
    for (int k = 0; k < 50; k++) seen[tp[k].speed == 0.25 ? 0 : tp[k].speed == 1 ? 1 : 2]++;
    CHECK(seen[0] > 0 && seen[1] > 0 && seen[2] > 0, "tiers drew %d phones, %d laptops, %d servers", seen[0], seen[1],
          seen[2]);
    test_rmtree(dir);
}


/* ------------------------------------------------------------------ HetLoRA's sparsity weights */

/* S_k = ||B_k A_k||_F over every module from the explicit products, and the engine's zero-padded mean
 * with those weights against the same mean computed here. */
static void sparsity_weights(void) {
    enum { N = 2 };
    const int R = 4;
    loom_tset *ts = lora_set(R, 8);
    size_t dim = loom_tset_dim(ts);
    int ranks[N] = {2, 4};
    loom_hetero_config hc;
    loom_hetero_defaults(&hc);
    hc.n_clients = N;
    hc.ranks = ranks;
    hc.sparsity = 1;
    loom_hetero *h;
    CHECK_OK(loom_hetero_create(&h, ts, &hc));
    CHECK(loom_hetero_sparsity(h) && loom_hetero_pad(h), "sparsity weights with zero-padding");
    float *x = loom_alloc(dim * 4), *u[N];
    memcpy(x, loom_tset_data(ts), dim * 4);
    for (int e = 1; e < loom_tset_count(ts); e += 2) { /* B nonzero */
        const loom_tset_entry *t = loom_tset_entry_at(ts, e);
        for (size_t i = 0; i < t->numel; i++) x[t->offset + i] = 0.02f * (float)((i % 5) + 1) - 0.05f;
    }
    uint8_t *m = malloc(dim);
    uint64_t w[N];
    for (int k = 0; k < N; k++) {
        u[k] = loom_alloc(dim * 4);
        CHECK_OK(loom_hetero_mask(h, k, 1, m));
        for (size_t i = 0; i < dim; i++) u[k][i] = m[i] == LOOM_MASK_TRAIN ? 1e-2f * ((float)((i + 3 * (size_t)k) % 11) - 5.0f) : 0;
        double want = 0;
        for (int e = 0; e + 1 < loom_tset_count(ts); e += 2) {
            const loom_tset_entry *A = loom_tset_entry_at(ts, e), *B = loom_tset_entry_at(ts, e + 1);
            size_t in = (size_t)A->shape[1], out = (size_t)B->shape[0];
            for (size_t o = 0; o < out; o++)
                for (size_t c = 0; c < in; c++) {
                    double p = 0;
                    for (int j = 0; j < ranks[k]; j++) {
                        size_t kb = B->offset + o * (size_t)R + (size_t)j, ka = A->offset + (size_t)j * in + c;
                        p += ((double)x[kb] + u[k][kb]) * ((double)x[ka] + u[k][ka]);
                    }
                    want += p * p;
                }
        }
        want = sqrt(want);
        double S;
        CHECK_OK(loom_hetero_weight(h, k, x, u[k], &S, &w[k]));
        CHECK(fabs(S - want) <= 1e-9 * want && w[k] == (uint64_t)rint(want * 16777216.0),
              "client %d (rank %d): S = %.12g, by the product %.12g, weight %llu", k, ranks[k], S, want,
              (unsigned long long)w[k]);
    }
    CHECK(w[0] != w[1], "the two clients weigh differently");
    loom_engine_config c;
    loom_engine_defaults(&c);
    c.dim = dim;
    c.init = x;
    c.n_clients = N;
    c.rounds = 1;
    c.mask = loom_hetero_mask_cb;
    c.mask_ud = h;
    c.pipe.mask_pad = 1;
    c.weight = loom_hetero_weight_cb;
    c.weight_ud = h;
    loom_engine *eng;
    CHECK_OK(loom_engine_create(&eng, &c));
    const int *cl;
    int n;
    CHECK_OK(loom_engine_open_round(eng, 0, &cl, &n));
    for (int k = 0; k < N; k++) {
        loom_update up = {0, 1, 0, k, 100, 1.0, 1, LOOM_CODEC_F32, dim, u[k], NULL, 0}; /* examples ignored */
        CHECK_OK(loom_engine_submit(eng, &up, 0, NULL));
    }
    CHECK_OK(loom_engine_close_round(eng, 1));
    const float *g = loom_engine_global(eng);
    double worst = 0;
    for (size_t i = 0; i < dim; i++) {
        double num = 0, den = 0;
        for (int k = 0; k < N; k++) {
            CHECK_OK(loom_hetero_mask(h, k, 1, m));
            den += (double)w[k];
            if (m[i] != LOOM_MASK_ABSENT) num += (double)w[k] * ((double)x[i] + u[k][i]); /* absent: padded 0 */
        }
        worst = fmax(worst, fabs(g[i] - num / den));
    }
    CHECK(worst <= 1e-6, "sparsity-weighted zero-padded mean: max |d| = %g", worst);
    loom_engine_free(eng);
    for (int k = 0; k < N; k++) loom_free(u[k]);
    loom_free(x);
    free(m);
    loom_hetero_free(h);
    hc.ranks = NULL;
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_BITFIT);
    loom_tset *bf;
    CHECK_OK(loom_tset_create(&bf, model, &pc, 1));
    CHECK(loom_hetero_create(&h, bf, &hc) == LOOM_EINVAL && strstr(loom_errmsg(), "--hetlora-agg sparsity"),
          "sparsity without LoRA: %s", loom_errmsg());
    loom_tset_free(bf);
    loom_tset_free(ts);
}

int main(void) {
    if (fl_fixture(2, 16, 16, 160, &model, &tok, &ds) != LOOM_OK) return test_summary();
    masked_mean_by_hand();
    masks_follow_the_rule();
    truncation_is_a_rank_r_set();
    flora_stacking();
    sim_identities();
    sim_flora();
    rank_pruning();
    profiles();
    sparsity_weights();
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(model);
    return test_summary();
}
