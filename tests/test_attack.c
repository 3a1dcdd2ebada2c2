/* Simulated Byzantine attacks (include/loom/sim.h, src/sim/sim_attack.c):
 *  - each attack's update against its formula computed here (ALIE's z_max from a normal table, the
 *    honest mean and standard deviation by another route)
 *  - the attackers are `count` clients chosen by the seed, the same for any number of workers
 *  - a whole simulated round with attackers: the global model is the examples-weighted mean of the
 *    honest updates and the crafted ones, and the attackers' metrics rows say "attacker": true
 *  - impossible configurations are refused with a message naming the flag */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/fl.h"
#include "loom/partition.h"
#include "loom/sim.h"
#include "loom/tokenizer.h"
#include "sim/sim_attack.h"
#include "test.h"

enum { D = 6, H = 5 };

static void formulas(void) {
    /* Phi^-1 from a normal table: Phi(0.385320) = 0.65, Phi(0.253347) = 0.60, Phi(0.430727) = 2/3 */
    double z = 0;
    CHECK_OK(loom_sim_alie_z(20, 4, &z)); /* s = 11 - 4 = 7, (20 - 7) / 20 = 0.65 */
    CHECK(fabs(z - 0.3853205) < 1e-6, "z_max(20, 4) = %.7f", z);
    CHECK_OK(loom_sim_alie_z(10, 2, &z)); /* s = 4, 0.6 */
    CHECK(fabs(z - 0.2533471) < 1e-6, "z_max(10, 2) = %.7f", z);
    CHECK_OK(loom_sim_alie_z(6, 2, &z)); /* s = 2, 4/6 */
    CHECK(fabs(z - 0.4307273) < 1e-6, "z_max(6, 2) = %.7f", z);
    CHECK_OK(loom_sim_alie_z(6, 3, &z)); /* s = 1, 5/6 */
    CHECK(fabs(z - 0.9674216) < 1e-6, "z_max(6, 3) = %.7f", z);
    CHECK(loom_sim_alie_z(10, 6, &z) == LOOM_EINVAL && strstr(loom_errmsg(), "alie") && strstr(loom_errmsg(), "f 6"),
          "ALIE with f >= n/2 + 1 refused: %s", loom_errmsg());

    float hv[H][D], own[D];
    const float *honest[H];
    for (int k = 0; k < H; k++) {
        for (int i = 0; i < D; i++) hv[k][i] = (float)((k + 1) * (i - 2.5) * 0.1 + (k * k % 3) * 0.07 - 0.02 * i);
        honest[k] = hv[k];
    }
    for (int i = 0; i < D; i++) own[i] = (float)(0.5 - 0.3 * i);
    /* mean and sample standard deviation through sums and sums of squares */
    double mean[D], sd[D];
    for (int i = 0; i < D; i++) {
        double s = 0, s2 = 0;
        for (int k = 0; k < H; k++) {
            s += hv[k][i];
            s2 += (double)hv[k][i] * hv[k][i];
        }
        mean[i] = s / H;
        sd[i] = sqrt((s2 - H * mean[i] * mean[i]) / (H - 1));
    }
    loom_sim_attack a = {.kind = LOOM_ATTACK_SIGNFLIP, .attackers = 2, .scale = NAN};
    float u[D];
    int ok;
    memcpy(u, own, sizeof u);
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 0, D, honest, H, 7, 2, u));
    ok = 1;
    for (int i = 0; i < D; i++) ok &= u[i] == -own[i];
    CHECK(ok, "signflip sends -u");
    a.kind = LOOM_ATTACK_SCALE;
    a.scale = 4.5;
    memcpy(u, own, sizeof u);
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 0, D, honest, H, 7, 2, u));
    ok = 1;
    for (int i = 0; i < D; i++) ok &= fabs(u[i] - 4.5 * own[i]) < 1e-6;
    CHECK(ok, "scale sends lambda u");
    a.scale = NAN; /* default lambda 10 */
    memcpy(u, own, sizeof u);
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 0, D, honest, H, 7, 2, u));
    CHECK(fabs(u[1] - 10 * own[1]) < 1e-6, "scale's default lambda is 10: %g", u[1]);
    a.kind = LOOM_ATTACK_IPM;
    a.scale = 0.7;
    memcpy(u, own, sizeof u);
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 0, D, honest, H, 7, 2, u));
    ok = 1;
    for (int i = 0; i < D; i++) ok &= fabs(u[i] + 0.7 * mean[i]) < 1e-6;
    CHECK(ok, "ipm sends -epsilon mean: %g vs %g", u[0], -0.7 * mean[0]);
    a.kind = LOOM_ATTACK_ALIE;
    memcpy(u, own, sizeof u);
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 0, D, honest, H, 20, 4, u));
    ok = 1;
    for (int i = 0; i < D; i++) ok &= fabs(u[i] - (mean[i] - 0.3853205 * sd[i])) < 1e-5;
    CHECK(ok, "alie sends mean - z_max std: %g vs %g", u[2], mean[2] - 0.3853205 * sd[2]);
    memcpy(u, own, sizeof u); /* a sampled round of 6 with 5 attackers: f is lowered to 3 */
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 0, D, honest, H, 6, 5, u));
    CHECK(fabs(u[4] - (mean[4] - 0.9674216 * sd[4])) < 1e-5, "alie with a majority of the round: %g vs %g", u[4],
          mean[4] - 0.9674216 * sd[4]);

    /* Gaussian: N(0, sigma^2) values, by (seed, round, client) */
    enum { G = 20000 };
    float *g1 = malloc(G * sizeof(float)), *g2 = malloc(G * sizeof(float)), *g3 = malloc(G * sizeof(float));
    a.kind = LOOM_ATTACK_GAUSSIAN;
    a.scale = 2.5;
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 4, G, NULL, 0, 7, 2, g1));
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 4, G, NULL, 0, 7, 2, g2));
    CHECK_OK(loom_sim_attack_craft(&a, 3, 2, 4, G, NULL, 0, 7, 2, g3));
    double s = 0, s2 = 0;
    for (int i = 0; i < G; i++) {
        s += g1[i];
        s2 += (double)g1[i] * g1[i];
    }
    double gm = s / G, gsd = sqrt(s2 / G - gm * gm);
    CHECK(fabs(gm) < 4 * 2.5 / sqrt(G) && fabs(gsd - 2.5) < 0.05, "gaussian: mean %g, sd %g (sigma 2.5)", gm, gsd);
    CHECK(!memcmp(g1, g2, G * sizeof(float)) && memcmp(g1, g3, G * sizeof(float)),
          "gaussian noise is fixed by (seed, round, client) and differs between rounds");
    free(g1);
    free(g2);
    free(g3);

    int kind = -1;
    CHECK(loom_sim_attack_parse("alie", &kind) == LOOM_OK && kind == LOOM_ATTACK_ALIE, "parse alie");
    CHECK(loom_sim_attack_parse("sybil", &kind) == LOOM_EINVAL && strstr(loom_errmsg(), "--attack 'sybil'"),
          "unknown attack refused: %s", loom_errmsg());
}

static void choice(void) {
    unsigned char a[50], b[50], c[50];
    CHECK_OK(loom_sim_attackers(9, 50, 12, a));
    CHECK_OK(loom_sim_attackers(9, 50, 12, b));
    CHECK_OK(loom_sim_attackers(10, 50, 12, c));
    int na = 0;
    for (int i = 0; i < 50; i++) na += a[i];
    CHECK(na == 12, "12 attackers chosen, got %d", na);
    CHECK(!memcmp(a, b, sizeof a) && memcmp(a, c, sizeof a), "the choice follows the seed");
    /* every client is an attacker about count/n of the time over seeds */
    int hits[50] = {0};
    for (uint64_t seed = 0; seed < 2000; seed++) {
        CHECK_OK(loom_sim_attackers(seed, 50, 12, c));
        for (int i = 0; i < 50; i++) hits[i] += c[i];
    }
    int lo = 2000, hi = 0;
    for (int i = 0; i < 50; i++) {
        lo = hits[i] < lo ? hits[i] : lo;
        hi = hits[i] > hi ? hits[i] : hi;
    }
    CHECK(lo > 380 && hi < 580, "uniform choice: each client chosen %d..%d times of 2000 (480 expected)", lo, hi);
    CHECK(loom_sim_attackers(9, 50, 51, c) == LOOM_EINVAL && strstr(loom_errmsg(), "--attackers 51"),
          "more attackers than clients refused: %s", loom_errmsg());
}

/* ---- a simulated round: toy clients send a fixed update of their own (from a hash of their first
 * batch), so the round's aggregate can be computed here */
enum { TD = 8, TN = 6 };
static loom_dataset *ds;
static char toy_trainer;

static uint64_t batch_hash(loom_batcher *b) {
    int32_t tk[2 * 16], tg[2 * 16];
    loom_batcher_fill(b, 0, tk, tg, NULL);
    uint64_t h = 17;
    for (int i = 0; i < 2 * 16; i++) h = loom_hash2(h, (uint64_t)(uint32_t)tk[i]);
    return h;
}
static double toy_value(uint64_t h, int i) { return (double)((h >> (4 * i)) & 15) / 8.0 - 1.0; }
static int toy_fit(const loom_client_ctx *ctx, const loom_fit_task *t, loom_client_state *st, loom_fit_output *out) {
    uint64_t h = batch_hash(t->data);
    for (size_t i = 0; i < ctx->dim; i++) out->update[i] = (float)toy_value(h, (int)i);
    out->res.loss = 1;
    out->res.tokens = 1;
    return LOOM_OK;
}
static int toy_eval(const loom_client_ctx *ctx, const loom_eval_task *t, loom_eval_result *r) {
    memset(r, 0, sizeof *r);
    return LOOM_OK;
}
static const loom_client_algo toy_algo = {"toy", toy_fit, toy_eval};
static int toy_mk(void *ud, loom_trainer **tr, float **vec) {
    *tr = (loom_trainer *)(void *)&toy_trainer;
    *vec = loom_alloc(TD * sizeof(float));
    return LOOM_OK;
}
static void toy_fr(void *ud, loom_trainer *tr, float *vec) { loom_free(vec); }

static void sim_round(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, TN, 0, 3));
    float init[TD] = {0.3f, -0.2f, 1.0f, 0.0f, 2.0f, -1.5f, 0.25f, 0.75f};
    loom_sim_config c;
    loom_sim_defaults(&c);
    c.dim = TD;
    c.init = init;
    c.make_worker = toy_mk;
    c.free_worker = toy_fr;
    c.ds = ds;
    c.part = p;
    c.B = 2;
    c.T = 16;
    c.seed = 21;
    c.algo = &toy_algo;
    c.fit.local_steps = 1;
    c.rounds = 1;
    c.attack.attackers = 2;
    /* each client's own update, and the attackers */
    double own[TN][TD];
    for (int k = 0; k < TN; k++) {
        loom_batcher_opts bo;
        loom_batcher_opts_init(&bo);
        bo.B = 2;
        bo.T = 16;
        bo.seed = loom_sim_client_seed(c.seed, k);
        loom_batcher *b;
        CHECK_OK(loom_batcher_create(&b, ds, p->clients[k].train, p->clients[k].n_train, &bo));
        uint64_t h = batch_hash(b);
        for (int i = 0; i < TD; i++) own[k][i] = toy_value(h, i);
        loom_batcher_free(b);
    }
    unsigned char is[TN];
    CHECK_OK(loom_sim_attackers(c.seed, TN, 2, is));
    double hmean[TD] = {0}, hsd[TD] = {0};
    for (int i = 0; i < TD; i++) {
        for (int k = 0; k < TN; k++) hmean[i] += is[k] ? 0 : own[k][i] / (TN - 2);
        for (int k = 0; k < TN; k++) hsd[i] += is[k] ? 0 : (own[k][i] - hmean[i]) * (own[k][i] - hmean[i]) / (TN - 3);
        hsd[i] = sqrt(hsd[i]);
    }
    char tmpl[] = "/tmp/loom_attack_XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "scratch directory");
    if (!dir) return;
    char out[4096], path[4200];
    loom_set_log(NULL, NULL, LOOM_ERROR);
    const int kinds[] = {LOOM_ATTACK_SIGNFLIP, LOOM_ATTACK_SCALE, LOOM_ATTACK_ALIE, LOOM_ATTACK_IPM};
    for (size_t ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++) {
        c.attack.kind = kinds[ki];
        c.attack.scale = kinds[ki] == LOOM_ATTACK_SCALE ? 3.0 : kinds[ki] == LOOM_ATTACK_IPM ? 0.5 : NAN;
        double x[TD], W = 0;
        for (int i = 0; i < TD; i++) x[i] = 0;
        for (int k = 0; k < TN; k++) {
            double w = (double)p->clients[k].n_train;
            W += w;
            for (int i = 0; i < TD; i++) {
                double v = own[k][i];
                if (is[k]) {
                    switch (kinds[ki]) {
                    case LOOM_ATTACK_SIGNFLIP: v = -v; break;
                    case LOOM_ATTACK_SCALE: v = 3.0 * v; break;
                    case LOOM_ATTACK_ALIE: v = hmean[i] - 0.4307273 * hsd[i]; break; /* n 6, f 2 */
                    default: v = -0.5 * hmean[i]; break;
                    }
                }
                x[i] += w * (float)v;
            }
        }
        float g[2][TD];
        for (int wi = 0; wi < 2; wi++) {
            c.workers = 1 + 2 * wi;
            snprintf(out, sizeof out, "%s/run%zu_%d", dir, ki, wi);
            c.out_dir = out;
            CHECK_OK(loom_sim_run(&c, g[wi]));
        }
        int ok = 1;
        double worst = 0;
        for (int i = 0; i < TD; i++) {
            double want = init[i] + x[i] / W;
            ok &= fabs(g[0][i] - want) < 1e-5;
            worst = fmax(worst, fabs(g[0][i] - want));
        }
        CHECK(ok, "%s: the round's aggregate has the crafted updates (max |d| %g)", loom_sim_attack_name(kinds[ki]), worst);
        CHECK(!memcmp(g[0], g[1], sizeof g[0]), "%s: 1 and 3 workers agree bit for bit", loom_sim_attack_name(kinds[ki]));
        /* the attackers' rows, from metrics.jsonl */
        snprintf(path, sizeof path, "%s/metrics.jsonl", out);
        FILE *f = fopen(path, "r");
        char line[2048];
        int rows = 0, right = 0;
        while (f && fgets(line, sizeof line, f)) {
            if (!strstr(line, "\"type\":\"client\"")) continue;
            int cl = -1;
            const char *q = strstr(line, "\"client\":");
            if (q) cl = atoi(q + 9);
            int flagged = strstr(line, "\"attacker\":true}") != NULL;
            rows++;
            right += cl >= 0 && cl < TN && flagged == is[cl] && strstr(line, "\"status\":\"accepted\"");
        }
        if (f) fclose(f);
        CHECK(rows == TN && right == TN, "%s: %d client rows, %d with the right attacker flag", loom_sim_attack_name(kinds[ki]),
              rows, right);
    }
    /* refusals */
    float g[TD];
    c.out_dir = NULL;
    c.attack.kind = LOOM_ATTACK_ALIE;
    c.attack.attackers = 4; /* f 4 of n 6: s = 0 */
    CHECK(loom_sim_run(&c, g) == LOOM_EINVAL && strstr(loom_errmsg(), "alie"), "ALIE with too many attackers: %s",
          loom_errmsg());
    c.attack.attackers = 7;
    CHECK(loom_sim_run(&c, g) == LOOM_EINVAL && strstr(loom_errmsg(), "--attackers 7"), "7 attackers of 6: %s",
          loom_errmsg());
    c.attack.attackers = 1;
    c.mode = LOOM_ENGINE_FEDASYNC;
    CHECK(loom_sim_run(&c, g) == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "synchronous"), "async refused: %s",
          loom_errmsg());
    test_rmtree(dir);
    loom_partition_free(p);
}

/* label flipping: the flipped copy of a file equals the same file written with the labels swapped */
static void labelflip(const loom_tokenizer *tok) {
    static const char a[] = "{\"text\": \"a fine film\", \"label\": \"terrible\"}\n"
                            "{\"text\": \"dull\", \"label\": \"good\"}\n"
                            "{\"text\": \"loved every minute of it\", \"label\": \"terrible\"}\n"
                            "{\"text\": \"no\", \"label\": \"meh\"}\n";
    static const char b[] = "{\"text\": \"a fine film\", \"label\": \"good\"}\n"
                            "{\"text\": \"dull\", \"label\": \"terrible\"}\n"
                            "{\"text\": \"loved every minute of it\", \"label\": \"good\"}\n"
                            "{\"text\": \"no\", \"label\": \"meh\"}\n";
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = loom_dataset_format("jsonl-cls");
    loom_dataset *da = NULL, *db = NULL;
    CHECK_OK(loom_dataset_load_buffer(&da, a, strlen(a), "a.jsonl", &o, tok));
    CHECK_OK(loom_dataset_load_buffer(&db, b, strlen(b), "b.jsonl", &o, tok));
    if (!da || !db) return;
    /* labels by strcmp: good 0, meh 1, terrible 2; flipping l -> 2 - l swaps good and terrible (verbalizers
     * of different lengths) */
    lm_flip *fl = NULL;
    CHECK_OK(lm_flip_create(&fl, da));
    int same = fl && fl->ds->n == db->n;
    for (size_t i = 0; same && i < db->n; i++) {
        const loom_example *x = &fl->ds->ex[i], *y = &db->ex[i];
        same &= x->n == y->n && x->label == y->label && x->prompt_len == y->prompt_len &&
                !memcmp(x->ids, y->ids, y->n * sizeof *y->ids) && !memcmp(x->mask, y->mask, y->n);
    }
    CHECK(same, "the flipped copy equals the file with its labels swapped");
    CHECK(fl && fl->ds->n_tokens == db->n_tokens && db->n_tokens != da->n_tokens, "token count follows the new verbalizers");
    CHECK(da->ex[0].label == 2 && da->ex[1].label == 0, "the original is untouched");
    lm_flip_free(fl);
    loom_dataset_free(da);
    loom_dataset_free(db);
    CHECK(lm_flip_create(&fl, ds) == LOOM_EINVAL && strstr(loom_errmsg(), "labelflip needs classification data"),
          "label flipping of language-modelling data refused: %s", loom_errmsg());
}

int main(void) {
    formulas();
    choice();
    loom_tokenizer *tok = NULL;
    CHECK_OK(loom_tokenizer_byte(&tok));
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = loom_dataset_format("text");
    o.max_examples = 120;
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/tinyshakespeare/input.txt"), &o, tok));
    if (ds) sim_round();
    if (ds && tok) labelflip(tok);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    return test_summary();
}
