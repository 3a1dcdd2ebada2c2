/* Split learning (SplitLoRA).
 * Model level: the model cut after layer k into a client part (embeddings, layers 0 .. k - 1) and a server
 * part (layers k .. L - 1, final norm, head, loss) that exchange the cut's activations and their gradient
 * computes the whole model's loss and gradients, for GPT-2 and Llama shapes, every k from 0 to L, LoRA (with
 * dropout) and full fine-tuning; the split trainer steps like the whole one; bad cuts are refused with a
 * message. The expected values come from the whole model's own forward and backward (loom_forward_ex /
 * loom_backward_ex).
 * Federation: one split client over R rounds equals R*E centralized steps of the unsplit model; lr 0 leaves
 * the global vector bit for bit; several split clients give the unsplit FedAvg run's bits; which values
 * each side holds and the bytes a step moves against hand counts. */
#include <string.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/sim.h"
#include "loom/split.h"
#include "loom/train.h"
#include "fl_fixture.h"
#include "test.h"

enum { B = 2, T = 8, NL = 3 };

static loom_model *tiny(int llama, uint64_t seed) {
    loom_config cfg;
    loom_config_named(&cfg, llama ? "llama-tiny" : "gpt2-tiny");
    cfg.n_layer = NL;
    cfg.vocab = 37;
    cfg.max_seq = 32;
    loom_model *m = NULL;
    CHECK_OK(loom_model_create(&m, &cfg, seed));
    if (!m) return NULL;
    /* larger-than-default weights so that every path carries signal */
    loom_rng r;
    loom_rng_init(&r, seed, 7);
    float *p = loom_model_params(m);
    for (size_t i = 0; i < loom_model_n_params(m); i++) p[i] += 0.05f * (float)loom_rng_normal(&r);
    return m;
}

static void batch(uint64_t seed, int V, int32_t *tok, int32_t *tgt) {
    loom_rng r;
    loom_rng_init(&r, seed, 3);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)loom_rng_below(&r, (uint32_t)V);
        tgt[i] = i % 5 == 0 ? -1 : (int32_t)loom_rng_below(&r, (uint32_t)V);
    }
}

/* max |a - b| / max |b| over n values (0 when both are 0) */
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return s > 0 ? d / s : d;
}

/* One set on one model: for every cut k, the split loss and gradients against the whole model's. */
static void check_set(loom_model *m, const loom_peft_config *pc, const char *what) {
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, pc, 11));
    if (!ts) return;
    const loom_peft *pf = loom_tset_plan(ts);
    size_t dim = loom_tset_dim(ts);
    float *vec = loom_tset_data(ts);
    /* LoRA's B starts at zero: give it values so that every A gets a gradient */
    loom_rng r;
    loom_rng_init(&r, 5, 5);
    for (size_t i = 0; pc->method == LOOM_PEFT_LORA && i < dim; i++) vec[i] += 0.05f * (float)loom_rng_normal(&r);
    const int L = loom_model_config(m)->n_layer, C = loom_model_config(m)->dim;
    int32_t tok[B * T], tgt[B * T];
    batch(9, loom_model_config(m)->vocab, tok, tgt);
    const float *base = loom_model_params(m);

    float *gref = calloc(dim, sizeof(float)), *gs = calloc(dim, sizeof(float)), *gc = calloc(dim, sizeof(float));
    float *act = malloc((size_t)B * T * C * sizeof(float)), *dact = malloc((size_t)B * T * C * sizeof(float));
    loom_ws *ws = NULL;
    CHECK_OK(loom_ws_create_ex(&ws, m, B, T, pf));
    loom_ws_set_dropout(ws, 1, 1234);
    float lref = 0;
    CHECK_OK(loom_forward_ex(m, base, ws, pf, vec, tok, tgt, B, T, &lref));
    CHECK_OK(loom_backward_ex(m, base, ws, pf, vec, gref));
    for (int k = 0; k <= L; k++) {
        loom_ws *wc = NULL, *wsv = NULL;
        CHECK_OK(loom_ws_create_part(&wc, m, B, T, pf, 0, k, 0));
        CHECK_OK(loom_ws_create_part(&wsv, m, B, T, pf, k, L, 1));
        if (!wc || !wsv) break;
        loom_ws_set_dropout(wc, 1, 1234);
        loom_ws_set_dropout(wsv, 1, 1234);
        memset(gs, 0, dim * sizeof(float));
        memset(gc, 0, dim * sizeof(float));
        float ls = -1;
        size_t n = 0;
        CHECK_OK(loom_forward_part(m, base, wc, pf, vec, 0, k, tok, NULL, NULL, B, T, NULL));
        const float *a = loom_ws_activation(wc, &n);
        CHECK(a && n == (size_t)B * T * C, "%s k=%d: %zu activations, expected %d", what, k, n, B * T * C);
        if (!a) break;
        memcpy(act, a, n * sizeof(float));
        CHECK_OK(loom_forward_part(m, base, wsv, pf, vec, k, L, NULL, act, tgt, B, T, &ls));
        CHECK_OK(loom_backward_part(m, base, wsv, pf, vec, gs, NULL, dact));
        CHECK_OK(loom_backward_part(m, base, wc, pf, vec, gc, dact, NULL));
        CHECK(ls == lref, "%s k=%d: split loss %.9g, whole model %.9g", what, k, (double)ls, (double)lref);
        /* each entry's gradient comes from the side that runs it (a tied embedding from both) */
        for (int e = 0; e < loom_tset_count(ts); e++) {
            const loom_tset_entry *en = loom_tset_entry_at(ts, e);
            float *sum = malloc(en->numel * sizeof(float));
            for (size_t i = 0; i < en->numel; i++) sum[i] = gc[en->offset + i] + gs[en->offset + i];
            double err = rel_err(sum, gref + en->offset, en->numel);
            CHECK(err <= 1e-5, "%s k=%d: %s relative error %.3g", what, k, en->name, err);
            double gmax = 0;
            for (size_t i = 0; i < en->numel; i++) gmax = fmax(gmax, fabs(gref[en->offset + i]));
            CHECK(gmax > 0, "%s: %s has no gradient (the check would be empty)", what, en->name);
            if (en->layer >= 0) { /* a layer's values get their gradient from its own side only */
                const float *other = en->layer < k ? gs : gc;
                double o = 0;
                for (size_t i = 0; i < en->numel; i++) o = fmax(o, fabs(other[en->offset + i]));
                CHECK(o == 0, "%s k=%d: %s (layer %d) got a gradient from the %s part", what, k, en->name, en->layer,
                      en->layer < k ? "server" : "client");
            }
            free(sum);
        }
        loom_ws_free(wc);
        loom_ws_free(wsv);
    }
    loom_ws_free(ws);
    free(gref), free(gs), free(gc), free(act), free(dact);
    loom_tset_free(ts);
}

/* A remote server part for a client trainer: the server trainer's own step (what the network carries). */
static int remote_step(void *ud, long step, const float *act, size_t n, const int32_t *targets, size_t nt, float *dact,
                       float *loss) {
    (void)step;
    return loom_trainer_split_server_step(ud, act, n, targets, nt, dact, loss);
}

/* The split trainer (loom_train_config.split) takes the same steps as the whole one without clipping (the
 * same bits); with clipping, a client trainer whose server part is another trainer (as across processes)
 * takes the same steps as the split trainer holding both parts. */
static void check_trainer(loom_model *m) {
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 4;
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    if (!ts) return;
    size_t dim = loom_tset_dim(ts);
    float *v1 = malloc(dim * sizeof(float)), *v2 = malloc(dim * sizeof(float));
    memcpy(v1, loom_tset_data(ts), dim * sizeof(float));
    memcpy(v2, v1, dim * sizeof(float));
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.B = B, tc.T = T, tc.opt.lr = 1e-2f, tc.clip = 0;
    loom_trainer *t1 = NULL, *t2 = NULL;
    CHECK_OK(loom_trainer_create_peft(&t1, m, loom_model_params(m), ts, v1, &tc));
    tc.split = 1, tc.split_layer = 1;
    CHECK_OK(loom_trainer_create_peft(&t2, m, loom_model_params(m), ts, v2, &tc));
    int32_t tok[B * T], tgt[B * T];
    for (int s = 0; t1 && t2 && s < 3; s++) {
        batch(100 + (uint64_t)s, loom_model_config(m)->vocab, tok, tgt);
        float l1 = 0, l2 = 1;
        CHECK_OK(loom_trainer_step(t1, tok, tgt, &l1, NULL));
        CHECK_OK(loom_trainer_step(t2, tok, tgt, &l2, NULL));
        CHECK(l1 == l2, "step %d: split loss %.9g, whole %.9g", s, (double)l2, (double)l1);
    }
    CHECK(memcmp(v1, v2, dim * sizeof(float)) == 0, "the split trainer's vector differs from the whole trainer's");
    double moved = 0;
    for (size_t i = 0; i < dim; i++) moved = fmax(moved, fabs((double)v1[i] - loom_tset_data(ts)[i]));
    CHECK(moved > 0, "the steps moved nothing (the comparison would be empty)");
    loom_trainer_free(t1);
    loom_trainer_free(t2);
    /* clipped by each side's own norm: one trainer with both parts == a client trainer and a server trainer */
    float *v3 = malloc(dim * sizeof(float)), *v4 = malloc(dim * sizeof(float));
    memcpy(v2, loom_tset_data(ts), dim * sizeof(float));
    memcpy(v3, v2, dim * sizeof(float));
    memcpy(v4, v2, dim * sizeof(float));
    tc.clip = 0.05f, tc.opt.weight_decay = 0; /* a client trainer's server values would decay, unused */
    loom_trainer *tc2 = NULL, *tcl = NULL, *tsv = NULL;
    CHECK_OK(loom_trainer_create_peft(&tc2, m, loom_model_params(m), ts, v2, &tc));
    CHECK_OK(loom_trainer_create_peft(&tcl, m, loom_model_params(m), ts, v3, &tc));
    CHECK_OK(loom_trainer_create_peft(&tsv, m, loom_model_params(m), ts, v4, &tc));
    if (tcl) loom_trainer_set_split_remote(tcl, remote_step, tsv);
    double gn = 0;
    for (int s = 0; tc2 && tcl && tsv && s < 3; s++) {
        batch(200 + (uint64_t)s, loom_model_config(m)->vocab, tok, tgt);
        float l2 = 0, l3 = 1;
        CHECK_OK(loom_trainer_step(tc2, tok, tgt, &l2, &gn));
        CHECK_OK(loom_trainer_step(tcl, tok, tgt, &l3, NULL));
        CHECK(l2 == l3, "step %d: remote loss %.9g, local %.9g", s, (double)l3, (double)l2);
    }
    CHECK(gn > 2 * 0.05, "the clip was active (norm %g)", gn);
    /* the client's values from the client trainer, the server's from the server trainer (layer 1 and up) */
    const loom_tset_entry *first = loom_tset_entry_at(ts, 0);
    size_t cut = 0;
    for (int e = 0; e < loom_tset_count(ts); e++)
        if (loom_tset_entry_at(ts, e)->layer < 1) cut = loom_tset_entry_at(ts, e)->offset + loom_tset_entry_at(ts, e)->numel;
    CHECK(first->layer == 0 && cut > 0 && cut < dim, "layer 0 comes first (cut at %zu of %zu)", cut, dim);
    CHECK(memcmp(v2, v3, cut * sizeof(float)) == 0, "client part: the remote run differs from the local one");
    CHECK(memcmp(v2 + cut, v4 + cut, (dim - cut) * sizeof(float)) == 0, "server part: the remote run differs");
    CHECK(memcmp(v2, loom_tset_data(ts), dim * sizeof(float)) != 0, "the steps moved nothing");
    loom_trainer_free(tc2);
    loom_trainer_free(tcl);
    loom_trainer_free(tsv);
    free(v3), free(v4);
    /* a cut beyond the model is refused, naming the range */
    tc.clip = 0;
    tc.split_layer = NL + 1;
    int rc = loom_trainer_create_peft(&t2, m, loom_model_params(m), ts, v2, &tc);
    CHECK(rc != LOOM_OK && strstr(loom_errmsg(), "split layer 4 is outside 0..3"), "rc %d: %s", rc, loom_errmsg());
    free(v1), free(v2);
    loom_tset_free(ts);
}

/* The server side of the protocol: a step's request and answer, a retry, steps out of order, malformed
 * requests, and the server-side update against a server trainer stepped directly. */
static void check_server(loom_model *m) {
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 4;
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    if (!ts) return;
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.B = B, tc.T = T, tc.opt.lr = 1e-2f, tc.split = 1, tc.split_layer = 2;
    loom_split_server *sv = NULL;
    CHECK_OK(loom_split_server_create(&sv, m, ts, &tc, 2));
    size_t dim = loom_tset_dim(ts), na = (size_t)B * T * loom_model_config(m)->dim;
    const float *global = loom_tset_data(ts);
    CHECK(loom_split_server_max_request(sv) == 32 + 4 * na + 4 * (size_t)B * T, "request limit %zu",
          loom_split_server_max_request(sv));
    float *act = malloc(na * 4), *d1 = malloc(na * 4), *d2 = malloc(na * 4), *vec = malloc(dim * 4);
    loom_rng r;
    loom_rng_init(&r, 8, 8);
    for (size_t i = 0; i < na; i++) act[i] = (float)loom_rng_normal(&r);
    int32_t tok[B * T], tgt[B * T];
    batch(4, loom_model_config(m)->vocab, tok, tgt);
    uint8_t *req = NULL;
    size_t len = 0;
    CHECK_OK(loom_split_encode_request(1, 0, B, T, T, loom_model_config(m)->dim, act, tgt, &req, &len));
    void *ans = NULL, *again = NULL;
    size_t alen = 0, glen = 0;
    int st = 0;
    CHECK_OK(loom_split_server_step(sv, 1, 1, global, req, len, &ans, &alen, &st));
    CHECK(st == 200 && alen == 16 + 4 * na, "status %d, %zu bytes", st, alen);
    float l1 = 0, l2 = 1;
    if (ans) CHECK_OK(loom_split_decode_reply(ans, alen, 1, 0, d1, na, &l1));
    /* the same step again (a retried request) gets the same answer without training again */
    CHECK_OK(loom_split_server_step(sv, 1, 1, global, req, len, &again, &glen, &st));
    CHECK(glen == alen && ans && again && memcmp(ans, again, alen) == 0, "a retry got another answer");
    free(again);
    /* against a server trainer stepped directly on the same activations */
    memcpy(vec, global, dim * 4);
    loom_trainer *t = NULL;
    CHECK_OK(loom_trainer_create_peft(&t, m, loom_model_params(m), ts, vec, &tc));
    if (t) CHECK_OK(loom_trainer_split_server_step(t, act, na, tgt, (size_t)B * T, d2, &l2));
    CHECK(l1 == l2 && memcmp(d1, d2, na * 4) == 0, "the served step differs from the trainer's (loss %g, %g)", (double)l1,
          (double)l2);
    void *upd = NULL;
    size_t ulen = 0;
    CHECK_OK(loom_split_server_update(sv, 1, 1, &upd, &ulen, &st));
    float *u = calloc(dim, sizeof(float));
    uint8_t *side = malloc(dim);
    CHECK_OK(loom_split_sides(ts, 2, side));
    if (upd) CHECK_OK(loom_split_decode_update(upd, ulen, 1, side, u, dim));
    int same = 1, moved = 0;
    for (size_t i = 0; i < dim; i++) {
        float want = side[i] == LOOM_SPLIT_SERVER ? vec[i] - global[i] : 0.0f;
        same &= u[i] == want;
        moved |= want != 0;
    }
    CHECK(same && moved, "the server-side update is not the trainer's change of the server's values");
    /* refusals, with their status and a message */
    free(ans);
    ans = NULL;
    int rc = loom_split_server_step(sv, 1, 1, global, req, len - 4, &ans, &alen, &st);
    CHECK(rc != LOOM_OK && st == 400 && strstr(loom_errmsg(), "a split request of"), "rc %d %d: %s", rc, st, loom_errmsg());
    free(req);
    CHECK_OK(loom_split_encode_request(1, 5, B, T, T, loom_model_config(m)->dim, act, tgt, &req, &len));
    rc = loom_split_server_step(sv, 1, 1, global, req, len, &ans, &alen, &st);
    CHECK(rc == LOOM_ESTATE && st == 409 && strstr(loom_errmsg(), "split step 5 of round 1 out of order: the next is step 1"),
          "rc %d %d: %s", rc, st, loom_errmsg());
    rc = loom_split_server_step(sv, 1, 2, global, req, len, &ans, &alen, &st);
    CHECK(rc == LOOM_ESTATE && st == 410 && strstr(loom_errmsg(), "the open round is 2"), "rc %d %d: %s", rc, st,
          loom_errmsg());
    free(req);
    tgt[3] = 9999;
    CHECK_OK(loom_split_encode_request(1, 1, B, T, T, loom_model_config(m)->dim, act, tgt, &req, &len));
    rc = loom_split_server_step(sv, 1, 1, global, req, len, &ans, &alen, &st);
    CHECK(rc == LOOM_EINVAL && st == 400 && strstr(loom_errmsg(), "target 9999 at 3 is outside the vocabulary"),
          "rc %d %d: %s", rc, st, loom_errmsg());
    act[5] = NAN;
    free(req);
    tgt[3] = 1;
    CHECK_OK(loom_split_encode_request(1, 1, B, T, T, loom_model_config(m)->dim, act, tgt, &req, &len));
    rc = loom_split_server_step(sv, 1, 1, global, req, len, &ans, &alen, &st);
    CHECK(rc == LOOM_ERANGE && st == 422 && strstr(loom_errmsg(), "activation 5 is not finite"), "rc %d %d: %s", rc, st,
          loom_errmsg());
    rc = loom_split_server_step(sv, 0, 1, global, "LMSQxxxx", 8, &ans, &alen, &st);
    CHECK(rc != LOOM_OK && st == 400 && strstr(loom_errmsg(), "not a split request"), "rc %d %d: %s", rc, st, loom_errmsg());
    free(upd);
    rc = loom_split_server_update(sv, 0, 1, &upd, &ulen, &st);
    CHECK(rc == LOOM_ESTATE && st == 409 && strstr(loom_errmsg(), "client 0 has taken no split steps in round 1"),
          "rc %d %d: %s", rc, st, loom_errmsg());
    free(req), free(act), free(d1), free(d2), free(vec), free(u), free(side), free(upd);
    loom_trainer_free(t);
    loom_split_server_free(sv);
    loom_tset_free(ts);
}

static void check_refusals(loom_model *m) {
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    if (!ts) return;
    const loom_peft *pf = loom_tset_plan(ts);
    int32_t tok[B * T], tgt[B * T];
    batch(1, loom_model_config(m)->vocab, tok, tgt);
    loom_ws *wc = NULL;
    int rc = loom_ws_create_part(&wc, m, B, T, pf, 2, 1, 0);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "layers 2 .. 0 are not a part"), "rc %d: %s", rc, loom_errmsg());
    CHECK_OK(loom_ws_create_part(&wc, m, B, T, pf, 0, 1, 0));
    if (!wc) return;
    const float *base = loom_model_params(m), *vec = loom_tset_data(ts);
    rc = loom_forward_ex(m, base, wc, pf, vec, tok, tgt, B, T, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "outside the workspace's part (layers 0 .. 0)"), "rc %d: %s", rc,
          loom_errmsg());
    rc = loom_forward_part(m, base, wc, pf, vec, 0, 1, NULL, NULL, NULL, B, T, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "needs tokens"), "rc %d: %s", rc, loom_errmsg());
    CHECK_OK(loom_forward_part(m, base, wc, pf, vec, 0, 1, tok, NULL, NULL, B, T, NULL));
    float *g = calloc(loom_tset_dim(ts), sizeof(float));
    rc = loom_backward_part(m, base, wc, pf, vec, g, NULL, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "needs the gradient of its output"), "rc %d: %s", rc, loom_errmsg());
    free(g);
    loom_ws_free(wc);
    loom_tset_free(ts);
}

/* ---- the federation ---- */

typedef struct {
    const loom_model *m;
    const loom_tset *ts;
    loom_train_config tc;
} wud;

static int mk(void *ud, loom_trainer **tr, float **vec) {
    wud *u = ud;
    size_t dim = loom_tset_dim(u->ts);
    *vec = loom_alloc(dim * sizeof(float));
    return loom_trainer_create_peft(tr, u->m, loom_model_params_const(u->m), u->ts, *vec, &u->tc);
}
static void fr(void *ud, loom_trainer *tr, float *vec) {
    (void)ud;
    loom_trainer_free(tr);
    loom_free(vec);
}

static double maxdiff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* SGD (a client's optimizer restarts every round: SGD without momentum keeps no state across steps, so
 * that one client's rounds can equal centralized steps); no clipping (a split step clips each side by its
 * own norm, the whole model's step by the joint one) */
static void sgd_config(loom_train_config *tc, float lr) {
    loom_train_defaults(tc);
    tc->opt.kind = LOOM_OPT_SGD;
    tc->opt.lr = lr;
    tc->opt.weight_decay = 0;
    tc->clip = 0;
    tc->B = 2, tc->T = 16;
}

/* R rounds of the simulator over the clients of p, split after layer k (k < 0: not split), into g. */
static int sim(loom_model *m, loom_tset *ts, loom_dataset *ds, loom_partition *p, int k, float lr, int rounds, float *g) {
    wud u;
    u.m = m, u.ts = ts;
    sgd_config(&u.tc, lr);
    u.tc.split = k >= 0, u.tc.split_layer = k;
    loom_sim_config c;
    loom_sim_defaults(&c);
    c.dim = loom_tset_dim(ts);
    c.init = loom_tset_data(ts);
    c.make_worker = mk;
    c.free_worker = fr;
    c.worker_ud = &u;
    c.ds = ds;
    c.part = p;
    c.B = 2, c.T = 16;
    c.eval_every = 0;
    c.seed = 5;
    c.rounds = rounds;
    c.fit.local_steps = 4;
    c.workers = 2;
    return loom_sim_run(&c, g);
}

static void federation(void) {
    loom_model *m = NULL;
    loom_tokenizer *tok = NULL;
    loom_dataset *ds = NULL;
    if (fl_fixture(2, 32, 32, 200, &m, &tok, &ds) != LOOM_OK) return;
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    pc.lora_r = 4;
    loom_tset *ts = NULL;
    CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    size_t dim = loom_tset_dim(ts);
    float *g = loom_alloc(dim * 4), *w = loom_alloc(dim * 4), *h = loom_alloc(dim * 4);

    /* one split client, 3 rounds x 4 steps == 12 centralized steps of the whole model */
    loom_partition *p1 = NULL;
    CHECK_OK(loom_partition_iid(&p1, ds->n, 1, 0, 1));
    CHECK_OK(sim(m, ts, ds, p1, 1, 0.1f, 3, g));
    loom_train_config tc;
    sgd_config(&tc, 0.1f);
    memcpy(w, loom_tset_data(ts), dim * 4);
    loom_trainer *tr = NULL;
    CHECK_OK(loom_trainer_create_peft(&tr, m, loom_model_params(m), ts, w, &tc));
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = 2, bo.T = 16;
    bo.seed = loom_sim_client_seed(5, 0);
    loom_batcher *b = NULL;
    CHECK_OK(loom_batcher_create(&b, ds, p1->clients[0].train, p1->clients[0].n_train, &bo));
    int32_t tk[32], tg[32];
    for (int s = 0; tr && b && s < 12; s++) {
        loom_batcher_fill(b, (uint64_t)s, tk, tg, NULL);
        CHECK_OK(loom_trainer_step(tr, tk, tg, NULL, NULL));
    }
    double d = maxdiff(g, w, dim), moved = maxdiff(w, loom_tset_data(ts), dim);
    CHECK(d <= 1e-6, "1 split client x 3 rounds x 4 steps vs 12 centralized steps: max |d| = %g", d);
    CHECK(moved > 1e-3, "training moved the adapter (%g)", moved);
    loom_batcher_free(b);
    loom_trainer_free(tr);

    /* lr 0 leaves the global vector, bit for bit (B starts at 0, A at its seeded values) */
    CHECK_OK(sim(m, ts, ds, p1, 1, 0.0f, 2, g));
    CHECK(memcmp(g, loom_tset_data(ts), dim * 4) == 0, "lr 0 moved the split run's global vector");

    /* four clients: split after layer 0, 1 or 2 gives the unsplit FedAvg run's bits */
    loom_partition *p4 = NULL;
    CHECK_OK(loom_partition_iid(&p4, ds->n, 4, 0, 9));
    CHECK_OK(sim(m, ts, ds, p4, -1, 0.1f, 2, h));
    for (int k = 0; k <= 2; k++) {
        CHECK_OK(sim(m, ts, ds, p4, k, 0.1f, 2, g));
        CHECK(memcmp(g, h, dim * 4) == 0, "4 clients split after layer %d: max |d| = %g from the unsplit run", k,
              maxdiff(g, h, dim));
    }

    /* sides and bytes, counted by hand: GPT-2 LoRA on c_attn (the default) is A [r, C] and B [3C, r] per
     * layer, 4 r C values; C = 32, r = 4, 2 layers */
    uint8_t *side = malloc(dim);
    CHECK_OK(loom_split_sides(ts, 1, side));
    size_t nc = 0;
    for (size_t i = 0; i < dim; i++) nc += side[i] == LOOM_SPLIT_CLIENT;
    CHECK(dim == 2 * 4 * 4 * 32 && nc == 4 * 4 * 32, "dim %zu, client side %zu (expected 1024 and 512)", dim, nc);
    CHECK(side[0] == LOOM_SPLIT_CLIENT && side[dim - 1] == LOOM_SPLIT_SERVER, "layer 0 first, layer 1 last");
    loom_split_cost sc;
    CHECK_OK(loom_split_cost_of(ts, 1, 2, 16, &sc));
    CHECK(sc.act_floats == 2 * 16 * 32 && sc.up_step == 2 * 16 * 32 * 4 + 2 * 16 * 4 && sc.down_step == 2 * 16 * 32 * 4,
          "activations %zu floats, %zu bytes up, %zu down", sc.act_floats, sc.up_step, sc.down_step);
    CHECK(sc.client_dim == 512 && sc.server_dim == 512, "client %zu, server %zu", sc.client_dim, sc.server_dim);
    /* client weights: wte [259, 32], wpe [32, 32], and layer 0 (2 norms of 2 x 32, c_attn 32 x 96 + 96,
     * c_proj 32 x 32 + 32, c_fc 32 x 64 + 64, mlp c_proj 64 x 32 + 32) */
    size_t layer = 4 * 32 + 32 * 96 + 96 + 32 * 32 + 32 + 32 * 64 + 64 + 64 * 32 + 32;
    CHECK(sc.client_weights == 4 * (259 * 32 + 32 * 32 + layer), "client weights %zu bytes, expected %zu",
          sc.client_weights, 4 * (259 * 32 + 32 * 32 + layer));
    CHECK(sc.client_ws < sc.model_ws && sc.client_weights < sc.model_weights, "the client part is smaller");
    int rc = loom_split_sides(ts, 3, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "split layer 3 is outside 0..2"), "rc %d: %s", rc, loom_errmsg());
    loom_tset *full = NULL, *prefix = NULL;
    loom_peft_defaults(&pc, LOOM_PEFT_FULL);
    CHECK_OK(loom_tset_create(&full, m, &pc, 3));
    rc = loom_split_sides(full, 1, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "transformer.wte.weight is the tied embedding"), "rc %d: %s", rc,
          loom_errmsg());
    loom_peft_defaults(&pc, LOOM_PEFT_PREFIX);
    pc.prefix_len = 4;
    CHECK_OK(loom_tset_create(&prefix, m, &pc, 3));
    rc = loom_split_sides(prefix, 1, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "a prefix set cannot be split"), "rc %d: %s", rc, loom_errmsg());
    loom_tset_free(full);
    loom_tset_free(prefix);
    free(side);
    loom_partition_free(p1);
    loom_partition_free(p4);
    loom_free(g), loom_free(w), loom_free(h);
    loom_tset_free(ts);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(m);
}

int main(void) {
    for (int llama = 0; llama <= 1; llama++) {
        loom_model *m = tiny(llama, 42 + (uint64_t)llama);
        if (!m) continue;
        const char *arch = llama ? "llama" : "gpt2";
        char what[64];
        loom_peft_config pc;
        loom_peft_defaults(&pc, LOOM_PEFT_LORA);
        pc.lora_r = 4;
        pc.lora_dropout = 0.1f;
        snprintf(what, sizeof what, "%s lora", arch);
        check_set(m, &pc, what);
        loom_peft_defaults(&pc, LOOM_PEFT_FULL);
        snprintf(what, sizeof what, "%s full", arch);
        check_set(m, &pc, what);
        if (!llama) {
            check_trainer(m);
            check_server(m);
            check_refusals(m);
        }
        loom_model_free(m);
    }
    federation();
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
