/* Personalized clients (include/loom/personal.h):
 *  - --private patterns mark the right manifest entries (substring and glob), and a pattern that
 *    matches nothing is refused naming --private; pack/unpack/get/put against a hand-built layout
 *  - nothing private: a run equals plain FedAvg bit for bit (with the per-client evaluation on)
 *  - one client with everything private equals local training done by hand with the trainer
 *    (round by round, the optimizer reset each round), and the global vector never moves
 *  - the private values never appear in an encoded update: the client's message carries only the
 *    shared values (decoded: equal to its update's shared part), bytes up shrink by 4 per private value
 *  - lr 0 leaves the global and every personalized vector bit for bit; with lr > 0 the global's private
 *    values stay at their initial values and the shared ones train; fine-tuning moves the personal model
 *  - refusals: asynchronous rounds, a secure sum, another client algorithm */
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
#include "loom/personal.h"
#include "loom/pipeline.h"
#include "loom/sim.h"
#include "loom/train.h"
#include "loom/update.h"
#include "fl_fixture.h"
#include "test.h"

static loom_model *model;
static loom_dataset *ds;
static loom_tokenizer *tok;

static loom_tset *lora_set(void) {
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 2;
    pc.lora_alpha = 4;
    snprintf(pc.target_modules, sizeof pc.target_modules, "c_attn,mlp.c_fc");
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, model, &pc, 11));
    return ts;
}

/* ------------------------------------------------------------------ manifest and layout */

static void manifest_and_layout(void) {
    loom_tset *ts = lora_set();
    const loom_tvec *m = loom_tset_manifest(ts);
    loom_tvec *pm;
    int marked = 0;
    /* 2 layers x 2 modules x (A, B): "mlp.c_fc" marks the 4 MLP tensors, the glob the 2 of layer 1's c_attn */
    CHECK_OK(loom_personal_manifest(&pm, m, "mlp.c_fc,*.h.1.attn.*", &marked));
    CHECK(marked == 6, "6 tensors marked, got %d", marked);
    size_t want_priv = 0;
    for (int i = 0; i < loom_tvec_count(pm); i++) {
        const loom_tvec_entry *e = loom_tvec_at(pm, i);
        int priv = strstr(e->name, "mlp.c_fc") || strstr(e->name, ".h.1.attn.");
        CHECK((e->role == LOOM_ROLE_PRIVATE) == priv, "%s: role %d", e->name, (int)e->role);
        if (priv) want_priv += e->numel;
        CHECK(e->offset == loom_tvec_at(m, i)->offset, "%s: offset kept", e->name);
    }
    loom_personal *p;
    CHECK_OK(loom_personal_create(&p, pm, NULL));
    CHECK(loom_personal_n_private(p) == want_priv && loom_personal_n_shared(p) == loom_tset_dim(ts) - want_priv,
          "private %zu of %zu", loom_personal_n_private(p), loom_tset_dim(ts));
    /* pack keeps the shared values in offset order; unpack writes 0 at the private ones */
    size_t dim = loom_tset_dim(ts), ns = loom_personal_n_shared(p), np = loom_personal_n_private(p);
    float *full = malloc(dim * 4), *sh = malloc(ns * 4), *back = malloc(dim * 4), *pv = malloc(np * 4);
    for (size_t i = 0; i < dim; i++) full[i] = (float)i + 1;
    loom_personal_pack(p, full, sh);
    loom_personal_unpack(p, sh, back);
    loom_personal_get(p, full, pv);
    size_t k = 0, bad = 0, kp = 0;
    for (int i = 0; i < loom_tvec_count(pm); i++) {
        const loom_tvec_entry *e = loom_tvec_at(pm, i);
        for (size_t j = 0; j < e->numel; j++) {
            float v = (float)(e->offset + j) + 1;
            if (e->role == LOOM_ROLE_PRIVATE) bad += back[e->offset + j] != 0 || pv[kp++] != v;
            else bad += sh[k++] != v || back[e->offset + j] != v;
        }
    }
    CHECK(bad == 0 && k == ns && kp == np, "pack/unpack/get by hand: %zu wrong", bad);
    loom_personal_put(p, pv, back);
    CHECK(memcmp(back, full, dim * 4) == 0, "unpack then put gives the vector back");
    /* the server's mask: private values FROZEN, so even a client that sent them would not move them */
    uint8_t *mask = malloc(dim);
    CHECK_OK(loom_personal_mask(p, 1, 1, mask));
    size_t wrong = 0;
    for (int i = 0; i < loom_tvec_count(pm); i++) {
        const loom_tvec_entry *e = loom_tvec_at(pm, i);
        for (size_t j = 0; j < e->numel; j++)
            wrong += mask[e->offset + j] != (e->role == LOOM_ROLE_PRIVATE ? LOOM_MASK_FROZEN : LOOM_MASK_TRAIN);
    }
    CHECK(wrong == 0, "server mask: %zu values against the rule", wrong);
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, dim);
    loom_pipeline *pipe;
    CHECK_OK(loom_pipeline_create(&pipe, &pc));
    float *x = calloc(dim, 4);
    CHECK_OK(loom_pipeline_begin_round(pipe, 1));
    CHECK_OK(loom_pipeline_add_masked(pipe, full, dim, 2, NULL, mask, NULL, NULL)); /* private values nonzero */
    CHECK_OK(loom_pipeline_end_round(pipe, x));
    size_t off = 0;
    for (int i = 0; i < loom_tvec_count(pm); i++) {
        const loom_tvec_entry *e = loom_tvec_at(pm, i);
        for (size_t j = 0; j < e->numel; j++)
            off += x[e->offset + j] != (e->role == LOOM_ROLE_PRIVATE ? 0.0f : full[e->offset + j]);
    }
    CHECK(off == 0, "masked mean: private values stay, shared ones move (%zu wrong)", off);
    loom_pipeline_free(pipe);
    free(x);
    free(mask);
    free(full);
    free(sh);
    free(back);
    free(pv);
    loom_personal_free(p);
    loom_tvec_free(pm);
    CHECK(loom_personal_manifest(&pm, m, "c_attn,lm_head", NULL) == LOOM_EINVAL && strstr(loom_errmsg(), "--private") &&
              strstr(loom_errmsg(), "'lm_head' matches no tensor"),
          "a pattern matching nothing: %s", loom_errmsg());
    CHECK(loom_personal_manifest(&pm, m, "c_attn,", NULL) == LOOM_EINVAL && strstr(loom_errmsg(), "empty pattern"),
          "an empty pattern: %s", loom_errmsg());
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

static void sim_base(loom_sim_config *c, wud *u, loom_partition *p, float lr) {
    loom_train_defaults(&u->tc);
    u->tc.opt.kind = LOOM_OPT_ADAMW;
    u->tc.opt.lr = lr;
    u->tc.opt.weight_decay = 0.1f;
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

typedef struct {
    float *models; /* (n_clients x dim) */
    size_t dim;
} keep;

static void keep_model(void *ud, int client, const float *model_vec) {
    keep *k = ud;
    memcpy(k->models + (size_t)client * k->dim, model_vec, k->dim * sizeof(float));
}

static void nothing_private_is_fedavg(void) {
    wud u;
    u.ts = lora_set();
    size_t dim = loom_tset_dim(u.ts);
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 3, 0, 2));
    CHECK_OK(loom_partition_split_test(p, 0.2, 3, 0));
    float *plain = loom_alloc(dim * 4), *pers = loom_alloc(dim * 4);
    loom_sim_config c;
    sim_base(&c, &u, p, 0.01f);
    CHECK_OK(loom_sim_run(&c, plain));
    CHECK(memcmp(plain, c.init, dim * 4) != 0, "plain FedAvg trained");
    loom_personal *none;
    CHECK_OK(loom_personal_create(&none, loom_tset_manifest(u.ts), NULL)); /* every role SHARED */
    CHECK(loom_personal_trivial(none), "no private entry: trivial");
    c.personal = none;
    c.fit.personal = none;
    c.client_eval = 1;
    loom_personal_eval ev[3];
    c.client_evals = ev;
    CHECK_OK(loom_sim_run(&c, pers));
    CHECK(memcmp(plain, pers, dim * 4) == 0, "an empty private set == plain FedAvg, bit for bit");
    for (int k = 0; k < 3; k++)
        CHECK(ev[k].evaluated && !ev[k].personalized && ev[k].global.count > 0, "client %d: global evaluation only", k);
    loom_personal_free(none);
    loom_free(plain);
    loom_free(pers);
    loom_partition_free(p);
    loom_tset_free(u.ts);
}

/* One client, everything private: its personalized vector after R rounds of E steps is R rounds of
 * local training done here with the trainer directly (fresh optimizer state each round, batches at
 * steps 0, 1, ... of the client's data order). */
static void all_private_is_local_training(void) {
    wud u;
    u.ts = lora_set();
    size_t dim = loom_tset_dim(u.ts);
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 1, 0, 2));
    CHECK_OK(loom_partition_split_test(p, 0.2, 3, 0));
    loom_sim_config c;
    sim_base(&c, &u, p, 0.01f);
    c.workers = 1;
    loom_tvec *pm;
    CHECK_OK(loom_personal_manifest(&pm, loom_tset_manifest(u.ts), "*", NULL));
    loom_personal *pp;
    CHECK_OK(loom_personal_create(&pp, pm, NULL));
    CHECK(loom_personal_n_shared(pp) == 0, "everything private");
    c.manifest = pm;
    c.personal = pp;
    c.fit.personal = pp;
    c.client_eval = 1;
    keep kp = {loom_alloc(dim * 4), dim};
    c.on_personal = keep_model;
    c.personal_ud = &kp;
    float *global = loom_alloc(dim * 4);
    CHECK_OK(loom_sim_run(&c, global));
    CHECK(memcmp(global, c.init, dim * 4) == 0, "nothing shared: the global vector never moves");
    /* by hand */
    float *vec = loom_alloc(dim * 4);
    memcpy(vec, c.init, dim * 4);
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create_peft(&tr, model, loom_model_params(model), u.ts, vec, &u.tc));
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = 2;
    bo.T = 16;
    bo.seed = loom_sim_client_seed(c.seed, 0);
    loom_batcher *b;
    CHECK_OK(loom_batcher_create(&b, ds, p->clients[0].train, p->clients[0].n_train, &bo));
    int32_t tk[32], tg[32];
    uint64_t step = 0;
    for (int round = 0; round < c.rounds; round++) {
        loom_optimizer_reset(loom_trainer_optimizer(tr));
        for (int s = 0; s < c.fit.local_steps; s++) {
            float l;
            CHECK_OK(loom_batcher_fill(b, step++, tk, tg, NULL));
            CHECK_OK(loom_trainer_step(tr, tk, tg, &l, NULL));
        }
    }
    CHECK(memcmp(vec, c.init, dim * 4) != 0, "local training moved the vector");
    size_t diff = 0;
    for (size_t i = 0; i < dim; i++) diff += memcmp(&vec[i], &kp.models[i], 4) != 0;
    CHECK(diff == 0, "one client, everything private == local training: %zu of %zu values differ", diff, dim);
    loom_batcher_free(b);
    loom_trainer_free(tr);
    loom_free(vec);
    loom_free(global);
    loom_free(kp.models);
    loom_personal_free(pp);
    loom_tvec_free(pm);
    loom_partition_free(p);
    loom_tset_free(u.ts);
}

/* The bytes a client sends: only the shared values. */
static int contains_float(const uint8_t *buf, size_t n, float v) {
    for (size_t i = 0; i + 4 <= n; i++)
        if (!memcmp(buf + i, &v, 4)) return 1;
    return 0;
}

static void private_values_never_sent(void) {
    loom_tset *ts = lora_set();
    size_t dim = loom_tset_dim(ts);
    loom_tvec *pm;
    CHECK_OK(loom_personal_manifest(&pm, loom_tset_manifest(ts), "mlp.c_fc", NULL));
    loom_personal *pp;
    CHECK_OK(loom_personal_create(&pp, pm, NULL));
    size_t ns = loom_personal_n_shared(pp), np = loom_personal_n_private(pp);
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.lr = 0.01f;
    tc.warmup = 0;
    tc.total_steps = 0;
    tc.B = 2;
    tc.T = 16;
    float *vec = loom_alloc(dim * 4), *update = loom_alloc(dim * 4), *init = loom_tset_data(ts);
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create_peft(&tr, model, loom_model_params(model), ts, vec, &tc));
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 1, 0, 1));
    loom_client_data d = {ds, p->clients[0].train, p->clients[0].n_train, NULL, 0, 2, 16, 77};
    loom_fit_config fc = {0};
    fc.local_steps = 3;
    fc.personal = pp;
    loom_client_ctx ctx = {tr, vec, dim, NULL};
    loom_client_state st;
    loom_client_state_init(&st);
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = update;
    CHECK_OK(loom_client_run_fit(&loom_client_local_sgd, &ctx, &d, 1, init, NULL, &fc, NULL, &st, &out));
    CHECK(st.priv && st.priv_dim == np, "the client keeps %zu private values", np);
    /* the trained private values (and their deltas) are what must not travel */
    float *pinit = malloc(np * 4);
    loom_personal_get(pp, init, pinit);
    size_t moved = 0;
    for (size_t i = 0; i < np; i++) moved += st.priv[i] != pinit[i];
    CHECK(moved > np / 2, "the private part trained (%zu of %zu moved)", moved, np);
    float *sh = malloc(ns * 4);
    loom_personal_pack(pp, update, sh);
    loom_update u = {1, 1, 0, 0, 10, 1.0, 5, LOOM_CODEC_F32, ns, sh, NULL, 0};
    uint8_t *buf = NULL;
    size_t n = 0;
    CHECK_OK(loom_update_encode(&u, NULL, &buf, &n));
    size_t found = 0;
    for (size_t i = 0; i < np; i++) {
        float delta = st.priv[i] - pinit[i];
        if (st.priv[i] != 0 && contains_float(buf, n, st.priv[i])) found++;
        if (delta != 0 && contains_float(buf, n, delta)) found++;
    }
    CHECK(found == 0, "%zu private values or deltas appear in the %zu bytes sent", found, n);
    /* the message is exactly the shared values, and the count the simulator uses is its size */
    loom_update full = {1, 1, 0, 0, 10, 1.0, 5, LOOM_CODEC_F32, dim, update, NULL, 0};
    loom_codec_opts f32 = {LOOM_CODEC_F32, 0, 0};
    size_t plain = loom_update_encoded_size(&full, &f32);
    CHECK(loom_personal_wire_bytes(pp, &full, NULL) == n, "wire bytes %zu == encoded %zu",
          loom_personal_wire_bytes(pp, &full, NULL), n);
    CHECK(plain - n >= 4 * np && plain - n <= 4 * np + 16, "bytes up shrink by 4 per private value: %zu -> %zu (%zu private)",
          plain, n, np);
    float *dec = malloc(ns * 4);
    loom_update du;
    CHECK_OK(loom_update_decode(buf, n, dim, &du, dec, NULL));
    CHECK(du.len == ns && memcmp(dec, sh, ns * 4) == 0, "decoded: the %zu shared values", ns);
    float *back = malloc(dim * 4);
    loom_personal_unpack(pp, dec, back);
    CHECK(memcmp(back, update, dim * 4) == 0, "unpacked upload == the client's update (0 at private values)");
    free(back);
    free(dec);
    free(buf);
    free(sh);
    free(pinit);
    loom_client_state_clear(&st);
    loom_partition_free(p);
    loom_trainer_free(tr);
    loom_free(vec);
    loom_free(update);
    loom_personal_free(pp);
    loom_tvec_free(pm);
    loom_tset_free(ts);
}

static void global_and_lr0(void) {
    enum { N = 3 };
    wud u;
    u.ts = lora_set();
    size_t dim = loom_tset_dim(u.ts);
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, N, 0, 2));
    CHECK_OK(loom_partition_split_test(p, 0.2, 3, 0));
    loom_tvec *pm;
    CHECK_OK(loom_personal_manifest(&pm, loom_tset_manifest(u.ts), "mlp.c_fc", NULL));
    loom_personal *pp;
    CHECK_OK(loom_personal_create(&pp, pm, NULL));
    float *global = loom_alloc(dim * 4);
    keep kp = {loom_alloc((size_t)N * dim * 4), dim};
    loom_personal_eval ev[N];
    for (int pass = 0; pass < 2; pass++) { /* 0: lr 0, 1: lr 0.01 */
        loom_sim_config c;
        sim_base(&c, &u, p, pass ? 0.01f : 0.0f);
        c.manifest = pm;
        c.personal = pp;
        c.fit.personal = pp;
        c.client_eval = 1;
        c.finetune_steps = 2;
        c.client_evals = ev;
        c.on_personal = keep_model;
        c.personal_ud = &kp;
        char dir[256];
        test_tmpdir(dir, sizeof dir);
        c.out_dir = dir;
        CHECK_OK(loom_sim_run(&c, global));
        size_t priv_moved = 0, shared_moved = 0, pers_moved = 0;
        for (int e = 0; e < loom_tvec_count(pm); e++) {
            const loom_tvec_entry *t = loom_tvec_at(pm, e);
            for (size_t i = 0; i < t->numel; i++) {
                int same = memcmp(&global[t->offset + i], &c.init[t->offset + i], 4) == 0;
                if (t->role == LOOM_ROLE_PRIVATE) priv_moved += !same;
                else shared_moved += !same;
            }
        }
        for (int k = 0; k < N; k++)
            for (size_t i = 0; i < dim; i++) pers_moved += memcmp(&kp.models[(size_t)k * dim + i], &c.init[i], 4) != 0;
        CHECK(priv_moved == 0, "lr %s: the global's private values never move (%zu moved)", pass ? "0.01" : "0", priv_moved);
        if (!pass) {
            CHECK(shared_moved == 0 && pers_moved == 0, "lr 0 leaves the global (%zu) and every personal vector (%zu)",
                  shared_moved, pers_moved);
        } else {
            CHECK(shared_moved > 0 && pers_moved > 0, "lr 0.01: the shared part (%zu) and the personal models (%zu) train",
                  shared_moved, pers_moved);
            for (int k = 0; k < N; k++)
                CHECK(ev[k].evaluated && ev[k].personalized && ev[k].personal.loss_sum / ev[k].personal.tokens <
                                                                   ev[k].global.loss_sum / ev[k].global.tokens,
                      "client %d: personal loss %g below the global model's %g", k,
                      ev[k].personal.loss_sum / ev[k].personal.tokens, ev[k].global.loss_sum / ev[k].global.tokens);
            /* the metrics rows: one client_eval per client, a personal summary, bytes up of the shared values */
            char path[512], line[4096];
            snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
            FILE *f = fopen(path, "r");
            int rows = 0, summary = 0;
            long up = -1;
            while (f && fgets(line, sizeof line, f)) {
                rows += strstr(line, "\"type\":\"client_eval\"") != NULL;
                summary += strstr(line, "\"type\":\"personal\"") != NULL;
                const char *b = strstr(line, "\"type\":\"client\"") ? strstr(line, "\"bytes_up\":") : NULL;
                if (b && up < 0) up = atol(b + 11);
            }
            if (f) fclose(f);
            CHECK(rows == N && summary == 1, "%d client_eval rows, %d summaries", rows, summary);
            loom_update su = {1, 1, 0, 0, 1, 0.0, 0, LOOM_CODEC_F32, loom_personal_n_shared(pp), global, NULL, 0};
            loom_codec_opts f32 = {LOOM_CODEC_F32, 0, 0};
            long want = (long)loom_update_encoded_size(&su, &f32);
            CHECK(labs(up - want) <= 64 && up < (long)(4 * dim), "client bytes up %ld: the %zu shared values (%ld)", up,
                  loom_personal_n_shared(pp), want);
        }
        test_rmtree(dir);
    }
    /* refusals */
    loom_sim_config c;
    sim_base(&c, &u, p, 0.01f);
    c.manifest = pm;
    c.personal = pp;
    c.fit.personal = pp;
    c.mode = LOOM_ENGINE_FEDBUFF;
    CHECK(loom_sim_run(&c, global) != LOOM_OK && strstr(loom_errmsg(), "--mode sync"),
          "async refused: %s", loom_errmsg());
    sim_base(&c, &u, p, 0.01f);
    c.personal = pp; /* fit.personal not set: the clients would send their private values */
    CHECK(loom_sim_run(&c, global) != LOOM_OK && strstr(loom_errmsg(), "--private"), "plan mismatch refused: %s",
          loom_errmsg());
    loom_free(kp.models);
    loom_free(global);
    loom_personal_free(pp);
    loom_tvec_free(pm);
    loom_partition_free(p);
    loom_tset_free(u.ts);
}


/* ------------------------------------------------------------------ masked updates on the wire */

/* A HetLoRA client of rank 1 of 2 with a private MLP adapter sends only its TRAIN values: their count
 * by the rank rule, the engine scatters them back, and the round's global equals the one from the same
 * updates sent whole, bit for bit. */
static void masked_updates_on_the_wire(void) {
    enum { N = 2 };
    loom_tset *ts = lora_set();
    size_t dim = loom_tset_dim(ts);
    const loom_tvec *m = loom_tset_manifest(ts);
    loom_tvec *pm;
    CHECK_OK(loom_personal_manifest(&pm, m, "mlp.c_fc", NULL));
    int ranks[N] = {1, 2};
    loom_hetero_config hc;
    loom_hetero_defaults(&hc);
    hc.n_clients = N;
    hc.ranks = ranks;
    loom_hetero *h;
    CHECK_OK(loom_hetero_create(&h, ts, &hc));
    loom_personal *pp;
    CHECK_OK(loom_personal_create(&pp, pm, h));
    /* the rule: shared LoRA entries only, A's first r_k rows and B's first r_k columns */
    size_t want[N] = {0, 0};
    for (int k = 0; k < N; k++)
        for (int i = 0; i < loom_tvec_count(pm); i++) {
            const loom_tvec_entry *e = loom_tvec_at(pm, i);
            if (e->role == LOOM_ROLE_PRIVATE) continue;
            int isA = strstr(e->name, "lora_A") != NULL;
            want[k] += isA ? (size_t)ranks[k] * (size_t)e->shape[1] : (size_t)e->shape[0] * (size_t)ranks[k];
        }
    loom_engine *eng[2];
    for (int w = 0; w < 2; w++) {
        loom_engine_config c;
        loom_engine_defaults(&c);
        c.dim = dim;
        c.init = loom_tset_data(ts);
        c.n_clients = N;
        c.rounds = 1;
        c.seed = 3;
        c.mask = loom_personal_mask_cb;
        c.mask_ud = pp;
        c.pipe.mask_pad = 1;
        CHECK_OK(loom_engine_create(&eng[w], &c));
        const int *cl;
        int n;
        CHECK_OK(loom_engine_open_round(eng[w], 0, &cl, &n));
        CHECK(n == N, "both sampled");
    }
    uint8_t *cm = malloc(dim), *send = malloc(dim);
    float *upd = malloc(dim * 4), *packed = malloc(dim * 4), *dec = malloc(dim * 4);
    for (int k = 0; k < N; k++) {
        CHECK_OK(loom_hetero_mask(h, k, 1, cm));
        loom_personal_send_mask(pp, cm, dim, send);
        size_t ns = loom_mask_sent(send, dim);
        CHECK(ns == want[k], "client %d (rank %d) sends %zu values, the rule says %zu", k, ranks[k], ns, want[k]);
        for (size_t i = 0; i < dim; i++) upd[i] = send[i] == LOOM_MASK_TRAIN ? 1e-3f * (float)((i * 7 + (size_t)k) % 13) : 0;
        loom_update full = {0, 1, 0, k, (uint64_t)(3 + k), 1.0, 1, LOOM_CODEC_F32, dim, upd, NULL, 0};
        CHECK_OK(loom_engine_submit(eng[0], &full, 0, NULL));
        loom_mask_pack(send, dim, upd, packed);
        loom_update pu = full;
        pu.len = ns;
        pu.values = packed;
        uint8_t *buf = NULL;
        size_t nb = 0;
        CHECK_OK(loom_update_encode(&pu, NULL, &buf, &nb));
        loom_update du;
        CHECK_OK(loom_update_decode(buf, nb, dim, &du, dec, NULL));
        du.wire_bytes = nb;
        loom_update_verdict v;
        if (k == 0) { /* one value short: refused by length, nothing added */
            loom_update shortu = du;
            shortu.len = ns - 1;
            CHECK(loom_engine_check(eng[1], &shortu, 0, &v) != LOOM_OK && v == LOOM_UPDATE_BAD_LENGTH,
                  "a packed update of the wrong count is refused: %s", loom_errmsg());
        }
        CHECK_OK(loom_engine_check(eng[1], &du, 0, &v));
        CHECK_OK(loom_engine_submit(eng[1], &du, 0, &v));
        CHECK(v == LOOM_UPDATE_ACCEPTED, "packed upload of client %d accepted", k);
        CHECK(nb < 4 * dim, "client %d: %zu bytes for %zu of %zu values", k, nb, ns, dim);
        free(buf);
    }
    for (int w = 0; w < 2; w++) CHECK_OK(loom_engine_close_round(eng[w], 1));
    CHECK(memcmp(loom_engine_global(eng[0]), loom_engine_global(eng[1]), dim * 4) == 0,
          "packed uploads == whole uploads, bit for bit");
    CHECK(memcmp(loom_engine_global(eng[0]), loom_tset_data(ts), dim * 4) != 0, "the round moved the global");
    for (int w = 0; w < 2; w++) loom_engine_free(eng[w]);
    free(cm);
    free(send);
    free(upd);
    free(packed);
    free(dec);
    loom_personal_free(pp);
    loom_hetero_free(h);
    loom_tvec_free(pm);
    loom_tset_free(ts);
}

/* A client's private part starts from the run's initial values (loom_personal_set_init), not from a
 * global vector whose private values moved (central DP's noise): the same training either way. */
static void private_start_from_init(void) {
    loom_tset *ts = lora_set();
    size_t dim = loom_tset_dim(ts);
    loom_tvec *pm;
    CHECK_OK(loom_personal_manifest(&pm, loom_tset_manifest(ts), "mlp.c_fc", NULL));
    loom_personal *pp;
    CHECK_OK(loom_personal_create(&pp, pm, NULL));
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.lr = 0.01f;
    tc.warmup = 0;
    tc.total_steps = 0;
    tc.B = 2;
    tc.T = 16;
    float *vec = loom_alloc(dim * 4), *init = loom_tset_data(ts), *moved = loom_alloc(dim * 4);
    float *upd[2] = {loom_alloc(dim * 4), loom_alloc(dim * 4)}, *priv[2] = {NULL, NULL};
    memcpy(moved, init, dim * 4);
    size_t np = loom_personal_n_private(pp);
    float *noise = malloc(np * 4);
    for (size_t i = 0; i < np; i++) noise[i] = 0.25f;
    loom_personal_put(pp, noise, moved);
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create_peft(&tr, model, loom_model_params(model), ts, vec, &tc));
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 1, 0, 1));
    loom_client_data d = {ds, p->clients[0].train, p->clients[0].n_train, NULL, 0, 2, 16, 77};
    for (int pass = 0; pass < 2; pass++) {
        loom_fit_config fc = {0};
        fc.local_steps = 2;
        fc.personal = pp;
        if (pass) CHECK_OK(loom_personal_set_init(pp, init));
        loom_client_ctx ctx = {tr, vec, dim, NULL};
        loom_client_state st;
        loom_client_state_init(&st);
        loom_fit_output out;
        memset(&out, 0, sizeof out);
        out.update = upd[pass];
        CHECK_OK(loom_client_run_fit(&loom_client_local_sgd, &ctx, &d, 1, pass ? moved : init, NULL, &fc, NULL, &st, &out));
        priv[pass] = st.priv;
        st.priv = NULL;
        loom_client_state_clear(&st);
    }
    CHECK(memcmp(priv[0], priv[1], np * 4) == 0, "private part from the initial values, not the moved global");
    CHECK(memcmp(upd[0], upd[1], dim * 4) == 0, "the same update");
    for (int k = 0; k < 2; k++) loom_free(priv[k]), loom_free(upd[k]);
    free(noise);
    loom_free(moved);
    loom_free(vec);
    loom_partition_free(p);
    loom_trainer_free(tr);
    loom_personal_free(pp);
    loom_tvec_free(pm);
    loom_tset_free(ts);
}

int main(void) {
    if (fl_fixture(2, 16, 16, 160, &model, &tok, &ds) != LOOM_OK) return test_summary();
    manifest_and_layout();
    nothing_private_is_fedavg();
    all_private_is_local_training();
    private_values_never_sent();
    global_and_lr0();
    masked_updates_on_the_wire();
    private_start_from_init();
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(model);
    return test_summary();
}
