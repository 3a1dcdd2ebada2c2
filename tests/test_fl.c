/* Federated engine properties (how we know the algorithms are right):
 *  - one client, full participation, E local steps, R rounds == centralized training for R*E steps
 *  - FedSGD with K equal clients == one SGD step on the union batch
 *  - learning rate 0 leaves the global model unchanged, bit for bit
 *  - results are bitwise identical for any number of workers; resume continues identically
 *  - broken updates (NaN, Inf, wrong length, huge norm) and failing clients are refused and counted;
 *    the round goes on
 *  - with a deadline on the virtual clock exactly the stragglers are refused as late
 *  - SCAFFOLD's client state survives a resume
 *  - impossible configurations fail at start */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/fl.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/sim.h"
#include "loom/tokenizer.h"
#include "loom/train.h"
#include "model/model_impl.h"
#include "fl_fixture.h"
#include "test.h"

static loom_model *model;
static loom_dataset *ds;
static loom_tokenizer *tok;

typedef struct {
    loom_train_config tc;
} wud;

static int mk(void *ud, loom_trainer **tr, float **vec) {
    wud *u = ud;
    *vec = loom_alloc(model->n_params * sizeof(float));
    return loom_trainer_create(tr, model, *vec, &u->tc);
}
static void fr(void *ud, loom_trainer *tr, float *vec) {
    (void)ud;
    loom_trainer_free(tr);
    loom_free(vec);
}

static void sgd_config(loom_train_config *tc, float lr, int B, int T) {
    loom_train_defaults(tc);
    tc->opt.kind = LOOM_OPT_SGD;
    tc->opt.lr = lr;
    tc->opt.weight_decay = 0;
    tc->opt.momentum = 0;
    tc->clip = 0;
    tc->warmup = 0;
    tc->total_steps = 0;
    tc->B = B;
    tc->T = T;
}

static void base_config(loom_sim_config *c, wud *u, loom_partition *p) {
    loom_sim_defaults(c);
    c->dim = model->n_params;
    c->init = model->params;
    c->make_worker = mk;
    c->free_worker = fr;
    c->worker_ud = u;
    c->ds = ds;
    c->part = p;
    c->B = (int)u->tc.B;
    c->T = (int)u->tc.T;
    c->eval_every = 0;
    c->seed = 5;
}

static double maxdiff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static void one_client_equals_centralized(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 1, 0, 1));
    wud u;
    sgd_config(&u.tc, 0.05f, 2, 16);
    loom_sim_config c;
    base_config(&c, &u, p);
    c.rounds = 3;
    c.fit.local_steps = 4;
    float *g = loom_alloc(model->n_params * 4);
    CHECK_OK(loom_sim_run(&c, g));
    /* centralized: the same trainer and the same data order for 12 steps */
    float *w = loom_alloc(model->n_params * 4);
    memcpy(w, model->params, model->n_params * 4);
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create(&tr, model, w, &u.tc));
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = 2;
    bo.T = 16;
    bo.seed = loom_sim_client_seed(c.seed, 0);
    loom_batcher *b;
    CHECK_OK(loom_batcher_create(&b, ds, p->clients[0].train, p->clients[0].n_train, &bo));
    int32_t tk[32], tg[32];
    for (int s = 0; s < 12; s++) {
        loom_batcher_fill(b, (uint64_t)s, tk, tg, NULL);
        loom_trainer_step(tr, tk, tg, NULL, NULL);
    }
    double d = maxdiff(g, w, model->n_params), moved = maxdiff(w, model->params, model->n_params);
    CHECK(d <= 1e-6, "1 client x 3 rounds x 4 steps vs 12 centralized steps: max |d| = %g", d);
    CHECK(moved > 1e-3, "training moved the weights (%g)", moved);
    loom_batcher_free(b);
    loom_trainer_free(tr);
    loom_free(w);
    loom_free(g);
    loom_partition_free(p);
}

static void fedsgd_equals_large_batch(void) {
    enum { K = 3 };
    /* 17 examples of 17 bytes per client: a packed stream of 289 tokens is exactly 18 full windows of
     * 16 targets, so every batch counts the same number of targets and the union-batch mean gradient
     * is the mean of the clients' mean gradients. */
    const char *text = "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: You are all "
                       "resolved rather to die than to famish? All: Resolved. resolved. First Citizen: First, you know Caius "
                       "Marcius is chief enemy to the people. All: We know't, we know't. First Citizen: Let us kill him, and "
                       "we'll have corn at our own price. Is't a verdict? All: No more talking on't; let it be done: away, away! "
                       "Second Citizen: One word, good citizens. First Citizen: We are accounted poor citizens, the patricians "
                       "good. What authority surfeits on would relieve us: if they would yield us but the superfluity, while it "
                       "were wholesome, we might guess they relieved us humanely; but they think we are too dear: the leanness "
                       "that afflicts us, the object of our misery, is as an inventory to particularise their abundance; our "
                       "sufferance is a gain to them. Let us revenge this with our pikes, ere we become rakes.";
    const char *texts[51];
    size_t lens[51];
    for (int i = 0; i < 51; i++) {
        texts[i] = text + 17 * i;
        lens[i] = 17;
    }
    CHECK(strlen(text) >= 17 * 51, "text long enough (%zu)", strlen(text));
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.add_bos = o.add_eos = 0;
    loom_dataset *saved = ds;
    CHECK_OK(loom_dataset_from_texts(&ds, texts, lens, NULL, 51, &o, tok));
    loom_partition *p;
    size_t n = ds->n;
    CHECK_OK(loom_partition_iid(&p, n, K, 0, 2));
    for (int k = 0; k < K; k++) CHECK(p->clients[k].n_train == n / K, "client %d has %zu examples", k, p->clients[k].n_train);
    wud u;
    sgd_config(&u.tc, 0.0f, 2, 16);
    loom_sim_config c;
    base_config(&c, &u, p);
    c.strategy = "fedsgd";
    loom_strategy_defaults("fedsgd", &c.sp);
    c.sp.server_lr = 0.1;
    c.fit.gradient_only = 1;
    c.fit.local_steps = 1;
    c.rounds = 1;
    float *g = loom_alloc(model->n_params * 4);
    CHECK_OK(loom_sim_run(&c, g));
    /* one SGD step of lr 0.1 on the union of the clients' round-0 batches */
    loom_train_config big;
    sgd_config(&big, 0.1f, 2 * K, 16);
    float *w = loom_alloc(model->n_params * 4);
    memcpy(w, model->params, model->n_params * 4);
    loom_trainer *tr;
    CHECK_OK(loom_trainer_create(&tr, model, w, &big));
    int32_t tk[2 * K * 16], tg[2 * K * 16];
    for (int k = 0; k < K; k++) {
        loom_batcher_opts bo;
        loom_batcher_opts_init(&bo);
        bo.B = 2;
        bo.T = 16;
        bo.seed = loom_sim_client_seed(c.seed, k);
        loom_batcher *b;
        CHECK_OK(loom_batcher_create(&b, ds, p->clients[k].train, p->clients[k].n_train, &bo));
        loom_batcher_fill(b, 0, tk + k * 32, tg + k * 32, NULL);
        loom_batcher_free(b);
    }
    int valid = 0;
    for (int i = 0; i < 2 * K * 16; i++) valid += tg[i] >= 0;
    CHECK(valid == 2 * K * 16, "packed batches have every target counted (%d)", valid);
    CHECK_OK(loom_trainer_step(tr, tk, tg, NULL, NULL));
    double d = maxdiff(g, w, model->n_params), moved = maxdiff(w, model->params, model->n_params);
    CHECK(d <= 1e-6, "FedSGD with %d equal clients vs one union-batch SGD step: max |d| = %g", K, d);
    CHECK(moved > 1e-4, "the step moved the weights (%g)", moved);
    loom_trainer_free(tr);
    loom_free(w);
    loom_free(g);
    loom_partition_free(p);
    loom_dataset_free(ds);
    ds = saved;
}

static void zero_lr_and_determinism_and_resume(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 6, 0, 3));
    CHECK_OK(loom_partition_split_test(p, 0.2, 3, 0));
    wud u;
    sgd_config(&u.tc, 0.0f, 2, 16);
    loom_sim_config c;
    base_config(&c, &u, p);
    c.rounds = 2;
    c.fit.local_steps = 2;
    c.sample = 4;
    float *g = loom_alloc(model->n_params * 4);
    const char *names[] = {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox"};
    for (int i = 0; i < 6; i++) {
        c.strategy = names[i];
        loom_strategy_defaults(names[i], &c.sp);
        c.fit.prox_mu = !strcmp(names[i], "fedprox") ? c.sp.mu : 0;
        CHECK_OK(loom_sim_run(&c, g));
        CHECK(memcmp(g, model->params, model->n_params * 4) == 0, "%s with client lr 0: global unchanged bit for bit", names[i]);
    }
    c.fit.prox_mu = 0;
    /* workers: W = 1 and W = 3 give the same bits; with evaluation on */
    u.tc.opt.lr = 0.05f;
    c.strategy = "fedavg";
    loom_strategy_defaults("fedavg", &c.sp);
    c.rounds = 4;
    c.eval_every = 2;
    float *g3 = loom_alloc(model->n_params * 4);
    c.workers = 1;
    CHECK_OK(loom_sim_run(&c, g));
    c.workers = 3;
    CHECK_OK(loom_sim_run(&c, g3));
    CHECK(memcmp(g, g3, model->n_params * 4) == 0, "1 and 3 workers give bitwise identical global models");
    CHECK(maxdiff(g, model->params, model->n_params) > 1e-4, "the run trained");
    /* resume: 2 rounds, then resume to 4 == 4 rounds straight (fedadam: state must be restored too) */
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    c.strategy = "fedadam";
    loom_strategy_defaults("fedadam", &c.sp);
    c.out_dir = NULL;
    CHECK_OK(loom_sim_run(&c, g)); /* straight */
    c.out_dir = dir;
    c.checkpoint_every = 1;
    c.rounds = 2;
    CHECK_OK(loom_sim_run(&c, g3));
    c.rounds = 4;
    c.resume = 1;
    CHECK_OK(loom_sim_run(&c, g3));
    CHECK(memcmp(g, g3, model->n_params * 4) == 0, "2 rounds + resume for 2 more == 4 rounds, bitwise");
    /* metrics were appended: 4 round rows */
    char path[512], line[65536];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    int rounds = 0;
    while (f && fgets(line, sizeof line, f)) rounds += strstr(line, "\"type\":\"round\"") != NULL;
    if (f) fclose(f);
    CHECK(rounds == 4, "metrics.jsonl has %d round rows after resume (4 expected)", rounds);
    /* a resume that would do nothing is refused, naming --rounds */
    c.rounds = 3;
    CHECK(loom_sim_run(&c, g3) == LOOM_EINVAL && strstr(loom_errmsg(), "--rounds 3"), "resume with fewer rounds: %s",
          loom_errmsg());
    c.rounds = 4;
    CHECK(loom_sim_run(&c, g3) == LOOM_EINVAL && strstr(loom_errmsg(), "nothing to do"),
          "resume of a finished run: %s", loom_errmsg());
    /* a run into a directory holding another run's checkpoint is refused without --resume */
    c.resume = 0;
    CHECK(loom_sim_run(&c, g3) == LOOM_EINVAL && strstr(loom_errmsg(), "--resume") && strstr(loom_errmsg(), "earlier run"),
          "stale checkpoint: %s", loom_errmsg());
    c.resume = 1;
    /* resuming with another seed is refused */
    c.rounds = 5;
    c.seed = 99;
    CHECK(loom_sim_run(&c, g3) == LOOM_EINVAL, "resume with a different seed refused");
    CHECK(strstr(loom_errmsg(), "seed") != NULL, "message names the seed: %s", loom_errmsg());
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
    loom_free(g);
    loom_free(g3);
    loom_partition_free(p);
}

static void bad_updates_and_configs(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 6, 0, 4));
    wud u;
    sgd_config(&u.tc, 0.05f, 2, 16);
    loom_sim_config c;
    base_config(&c, &u, p);
    c.rounds = 1;
    c.fit.local_steps = 1;
    c.max_update_norm = 1e3;
    loom_fault faults[] = {{1, LOOM_FAULT_NAN}, {2, LOOM_FAULT_INF}, {3, LOOM_FAULT_SHORT}, {4, LOOM_FAULT_HUGE},
                           {5, LOOM_FAULT_FAIL}};
    c.faults = faults;
    c.n_faults = 5;
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    c.out_dir = dir;
    float *g = loom_alloc(model->n_params * 4), *g0 = loom_alloc(model->n_params * 4);
    loom_set_log(NULL, NULL, LOOM_ERROR); /* the rejections are logged as warnings */
    CHECK_OK(loom_sim_run(&c, g));
    /* only client 0 was accepted: the result equals a run with client 0 alone */
    loom_partition one = {1, p->clients, p->n_examples, 0};
    c.part = &one;
    c.faults = NULL;
    c.n_faults = 0;
    c.out_dir = NULL;
    CHECK_OK(loom_sim_run(&c, g0));
    CHECK(memcmp(g, g0, model->n_params * 4) == 0, "the aggregate holds only the good update");
    char path[512], line[65536];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    int rejected = -1, nan_row = 0, short_row = 0, norm_row = 0, fail_row = 0;
    while (f && fgets(line, sizeof line, f)) {
        char *r = strstr(line, "\"rejected\":");
        if (strstr(line, "\"type\":\"round\"") && r) rejected = atoi(r + 11);
        if (strstr(line, "\"client\":1,") && strstr(line, "non-finite")) nan_row = 1;
        if (strstr(line, "\"client\":3,") && strstr(line, "length")) short_row = 1;
        if (strstr(line, "\"client\":4,") && strstr(line, "norm")) norm_row = 1;
        if (strstr(line, "\"client\":5,") && strstr(line, "\"status\":\"client failure\"")) fail_row = 1;
    }
    if (f) fclose(f);
    CHECK(rejected == 5, "metrics count 5 rejections (got %d)", rejected);
    CHECK(nan_row && short_row && norm_row, "per-client rows give the reasons (nan %d, length %d, norm %d)", nan_row,
          short_row, norm_row);
    CHECK(fail_row, "a failing client is a refused update with reason \"client failure\", not an aborted run");
    /* with min_updates 2 the round cannot aggregate: the global model stays */
    c.part = p;
    c.faults = faults;
    c.n_faults = 5;
    c.min_updates = 2;
    CHECK_OK(loom_sim_run(&c, g));
    CHECK(memcmp(g, model->params, model->n_params * 4) == 0, "too few good updates: global unchanged");
    loom_set_log(NULL, NULL, LOOM_WARN);
    /* impossible configurations */
    c.min_updates = 1;
    c.faults = NULL;
    c.n_faults = 0;
    c.sample = 7;
    CHECK(loom_sim_run(&c, g) == LOOM_EINVAL && strstr(loom_errmsg(), "--sample"), "sample > clients: %s", loom_errmsg());
    c.sample = 0;
    c.max_update_norm = -1;
    CHECK(loom_sim_run(&c, g) == LOOM_EINVAL && strstr(loom_errmsg(), "--max-update-norm"), "negative norm bound: %s",
          loom_errmsg());
    c.max_update_norm = 0;
    c.sample = 0;
    c.fit.local_steps = 0;
    CHECK(loom_sim_run(&c, g) == LOOM_EINVAL && strstr(loom_errmsg(), "--local-steps"), "local steps 0: %s", loom_errmsg());
    c.fit.local_steps = 1;
    size_t saved = p->clients[2].n_train;
    p->clients[2].n_train = 0;
    CHECK(loom_sim_run(&c, g) == LOOM_EINVAL && strstr(loom_errmsg(), "no training examples"), "empty shard: %s", loom_errmsg());
    p->clients[2].n_train = saved;
    c.strategy = "fedadam";
    loom_strategy_defaults("fedadam", &c.sp);
    c.sp.tau = -1;
    CHECK(loom_sim_run(&c, g) != LOOM_OK && strstr(loom_errmsg(), "tau"), "tau < 0: %s", loom_errmsg());
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
    loom_free(g);
    loom_free(g0);
    loom_partition_free(p);
}

/* Virtual time: with a deadline, exactly the clients whose simulated duration exceeds it are refused
 * as late; the run stays bitwise identical for any number of workers, and equals a run in which the
 * same clients fail instead (their updates never enter the sum either way). */
static void stragglers_and_deadline(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 8, 0, 6));
    wud u;
    sgd_config(&u.tc, 0.05f, 2, 16);
    loom_sim_config c;
    base_config(&c, &u, p);
    c.rounds = 2;
    c.fit.local_steps = 2;
    c.step_seconds = 1.0;
    c.time_spread = 1.0;
    double t[8], sorted[8];
    for (int k = 0; k < 8; k++) sorted[k] = t[k] = loom_sim_client_seconds(&c, k);
    for (int i = 1; i < 8; i++)
        for (int k = i; k > 0 && sorted[k - 1] > sorted[k]; k--) {
            double x = sorted[k];
            sorted[k] = sorted[k - 1];
            sorted[k - 1] = x;
        }
    CHECK(sorted[0] < sorted[7] && sorted[0] > 0, "clients have different simulated speeds (%g .. %g)", sorted[0],
          sorted[7]);
    c.deadline = (sorted[4] + sorted[5]) / 2; /* 5 punctual, 3 late */
    int late = 0;
    for (int k = 0; k < 8; k++) late += t[k] > c.deadline;
    CHECK(late == 3, "3 stragglers (%d)", late);
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/loom_fl_late_XXXXXX");
    CHECK(mkdtemp(dir) != NULL, "scratch directory");
    c.out_dir = dir;
    float *g1 = loom_alloc(model->n_params * 4), *g3 = loom_alloc(model->n_params * 4), *g0 = loom_alloc(model->n_params * 4);
    loom_set_log(NULL, NULL, LOOM_ERROR);
    c.workers = 1;
    CHECK_OK(loom_sim_run(&c, g1));
    char path[512], line[65536];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    int late_rows = 0, right = 1;
    while (f && fgets(line, sizeof line, f)) {
        char *cp = strstr(line, "\"type\":\"client\"");
        if (!cp) continue;
        int k = atoi(strstr(line, "\"client\":") + 9);
        int is_late = strstr(line, "\"status\":\"late\"") != NULL;
        late_rows += is_late;
        right &= is_late == (t[k] > c.deadline);
    }
    if (f) fclose(f);
    CHECK(late_rows == 2 * late && right, "late rows %d (want %d), each exactly a client past the deadline", late_rows,
          2 * late);
    c.out_dir = NULL;
    c.workers = 3;
    CHECK_OK(loom_sim_run(&c, g3));
    CHECK(memcmp(g1, g3, model->n_params * 4) == 0, "with stragglers, 1 and 3 workers give the same bits");
    loom_fault fl[8];
    int nf = 0;
    for (int k = 0; k < 8; k++)
        if (t[k] > c.deadline) fl[nf++] = (loom_fault){k, LOOM_FAULT_FAIL};
    c.deadline = 0;
    c.faults = fl;
    c.n_faults = nf;
    CHECK_OK(loom_sim_run(&c, g0));
    CHECK(memcmp(g1, g0, model->n_params * 4) == 0, "late updates are left out exactly as failed ones");
    c.faults = NULL;
    c.n_faults = 0;
    CHECK_OK(loom_sim_run(&c, g0));
    CHECK(memcmp(g1, g0, model->n_params * 4) != 0, "the deadline made a difference");
    loom_set_log(NULL, NULL, LOOM_WARN);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
    loom_free(g0);
    loom_free(g1);
    loom_free(g3);
    loom_partition_free(p);
}

/* SCAFFOLD keeps client state (c_i, step counters) on the client side; it is checkpointed, so a
 * resumed run equals an uninterrupted one bit for bit. */
static void scaffold_resume(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 5, 0, 8));
    wud u;
    sgd_config(&u.tc, 0.05f, 2, 16);
    loom_sim_config c;
    base_config(&c, &u, p);
    c.strategy = "scaffold";
    loom_strategy_defaults("scaffold", &c.sp);
    c.fit.scaffold = LOOM_SCAFFOLD_OPTION_II;
    c.rounds = 4;
    c.fit.local_steps = 2;
    c.sample = 3;
    float *a = loom_alloc(model->n_params * 4), *b = loom_alloc(model->n_params * 4);
    CHECK_OK(loom_sim_run(&c, a));
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/loom_fl_scaffold_XXXXXX");
    CHECK(mkdtemp(dir) != NULL, "scratch directory");
    c.out_dir = dir;
    c.checkpoint_every = 1;
    c.rounds = 2;
    CHECK_OK(loom_sim_run(&c, b));
    c.rounds = 4;
    c.resume = 1;
    CHECK_OK(loom_sim_run(&c, b));
    CHECK(memcmp(a, b, model->n_params * 4) == 0, "scaffold: 2 rounds + resume for 2 == 4 rounds, bitwise");
    CHECK(maxdiff(a, model->params, model->n_params) > 1e-4, "scaffold trained");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "cleanup");
    loom_free(a);
    loom_free(b);
    loom_partition_free(p);
}

int main(void) {
    if (fl_fixture(1, 32, 32, 240, &model, &tok, &ds) != LOOM_OK) return test_summary();
    one_client_equals_centralized();
    fedsgd_equals_large_batch();
    zero_lr_and_determinism_and_resume();
    bad_updates_and_configs();
    stragglers_and_deadline();
    scaffold_resume();
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(model);
    return test_summary();
}
