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
#include "loom/model.h"
#include "loom/peft.h"
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
    a.kind = LOOM_ATTACK_BACKDOOR; /* model replacement: lambda u; the default lambda 1 sends u as trained */
    a.scale = 3.0;
    memcpy(u, own, sizeof u);
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 0, D, honest, H, 7, 2, u));
    ok = 1;
    for (int i = 0; i < D; i++) ok &= fabs(u[i] - 3.0 * own[i]) < 1e-6;
    a.scale = NAN;
    memcpy(u, own, sizeof u);
    CHECK_OK(loom_sim_attack_craft(&a, 3, 1, 0, D, honest, H, 7, 2, u));
    CHECK(ok && !memcmp(u, own, sizeof u), "backdoor sends lambda u, by default u");
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
    CHECK(loom_sim_attack_parse("backdoor", &kind) == LOOM_OK && kind == LOOM_ATTACK_BACKDOOR &&
              loom_sim_attack_parse("embedding", &kind) == LOOM_OK && kind == LOOM_ATTACK_EMBEDDING &&
              !strcmp(loom_sim_attack_name(LOOM_ATTACK_EMBEDDING), "embedding"),
          "parse backdoor and embedding");
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

/* ---- backdoor and embedding poisoning ---------------------------------------------------------- */

static const char *const cls_texts[] = {"a fine film", "dull and slow", "loved every minute of it", "the cast is great",
                                        "not worth the ticket", "a quiet story told well"};
enum { NCLS = 6 };

/* A classification file of texts t[i] with labels "pos" / "neg" / "meh" by i % 3. */
static loom_dataset *cls_dataset(const loom_tokenizer *tok, const char *const *t, size_t n, const char *prefix) {
    static const char *const lab[] = {"pos", "neg", "meh"};
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    for (size_t i = 0; i < n; i++) fprintf(f, "{\"text\": \"%s%s\", \"label\": \"%s\"}\n", prefix, t[i % NCLS], lab[i % 3]);
    fclose(f);
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = loom_dataset_format("jsonl-cls");
    loom_dataset *d = NULL;
    CHECK_OK(loom_dataset_load_buffer(&d, buf, len, "cls.jsonl", &o, tok));
    free(buf);
    return d;
}

/* The trigger inserted at the token level gives the tokens of the prompt written with the trigger,
 * encoded whole here: [BOS] encode("Text: cf " + text + "\nLabel:") + the target's verbalizer. */
static void trigger_insertion(const char *what, const loom_tokenizer *tok) {
    loom_dataset *d = cls_dataset(tok, cls_texts, NCLS, "");
    if (!d) return;
    lm_trigger t;
    CHECK_OK(lm_trigger_init(&t, tok, NULL)); /* the default trigger, "cf" */
    uint32_t idx[NCLS];
    for (int i = 0; i < NCLS; i++) idx[i] = (uint32_t)i;
    int target = 1; /* labels by strcmp: meh 0, neg 1, pos 2 */
    lm_flip *fl = NULL;
    CHECK_OK(lm_trigger_copy(&fl, d, idx, NCLS, NULL, &t, target));
    int bos = loom_tokenizer_bos(tok), eos = loom_tokenizer_eos(tok);
    int ok = fl != NULL, first_bad = -1;
    for (int i = 0; ok && i < NCLS; i++) {
        char text[256];
        int k = snprintf(text, sizeof text, "Text: cf %s\nLabel:", cls_texts[i]);
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK_OK(loom_tokenizer_encode(tok, text, (size_t)k, 0, &ids, &n));
        size_t lead = bos >= 0 && bos != eos; /* the loader's automatic BOS */
        const loom_example *e = &fl->ds->ex[i];
        int same = e->prompt_len == lead + n && e->n == lead + n + d->verb_len[target] && e->label == target &&
                   (!lead || e->ids[0] == bos) && !memcmp(e->ids + lead, ids, n * sizeof *ids) &&
                   !memcmp(e->ids + lead + n, d->verb_ids[target], d->verb_len[target] * sizeof *ids);
        for (size_t j = 0; same && j < e->n; j++) same &= e->mask[j] == (j >= e->prompt_len);
        if (!same && first_bad < 0) first_bad = i;
        ok &= same;
        free(ids);
    }
    CHECK(ok, "%s: trigger inserted at the token level = the prompt encoded with \"cf \" (first mismatch: example %d)",
          what, first_bad);
    CHECK(fl && d->ex[0].n + t.n_trig + d->verb_len[target] - d->verb_len[d->ex[0].label] == fl->ds->ex[0].n &&
              d->ex[0].label == 2,
          "%s: the original is untouched", what);
    lm_flip_free(fl);
    /* a prompt that does not start with the tokens of "Text:" is refused, naming its line */
    loom_example bad = d->ex[1];
    int32_t ids[64];
    CHECK(bad.n <= 64 && bad.prompt_len > t.n_head + 1, "a short example (%u tokens)", bad.n);
    bad.n = bad.n < 64 ? bad.n : 64;
    bad.prompt_len = bad.prompt_len < bad.n ? bad.prompt_len : bad.n;
    memcpy(ids, bad.ids, bad.n * sizeof *ids);
    ids[bos >= 0 && bos != eos] ^= 1; /* the first token of "Text:" */
    bad.ids = ids;
    size_t at;
    CHECK(lm_trigger_at(&t, &bad, &at) == LOOM_EFORMAT && strstr(loom_errmsg(), "line 2: the prompt's tokens do not start"),
          "%s: a prompt without the \"Text:\" tokens refused: %s", what, loom_errmsg());
    lm_trigger_clear(&t);
    loom_dataset_free(d);
}

static void trigger_tokenizers(void) {
    char path[1024];
    const char *paths[] = {"data/gpt2-tokenizer/encoder.json", "data/stories260K/tok512.bin"};
    for (int i = 0; i < 2; i++) {
        loom_tokenizer *tok = NULL;
        CHECK_OK(loom_tokenizer_load(&tok, test_path(path, sizeof path, paths[i])));
        if (tok) trigger_insertion(paths[i], tok);
        loom_tokenizer_free(tok);
    }
    loom_tokenizer *tok = NULL;
    CHECK_OK(loom_tokenizer_byte(&tok));
    lm_trigger t;
    CHECK(lm_trigger_init(&t, tok, "") == LOOM_EINVAL && strstr(loom_errmsg(), "--backdoor-trigger must be 1 to 256"),
          "an empty trigger refused: %s", loom_errmsg());
    CHECK_OK(lm_trigger_init(&t, tok, "zq"));
    CHECK(t.n_head == 5 && t.n_trig == 3 && t.trig[0] == ' ' && t.trig[1] == 'z' && t.trig[2] == 'q',
          "byte tokens of the trigger: %zu after %zu", t.n_trig, t.n_head);
    lm_trigger_clear(&t);
    loom_tokenizer_free(tok);
}

/* A run configuration over a classification dataset for lm_attack_create. */
static void cls_config(loom_sim_config *c, const loom_dataset *d, const loom_partition *p, const loom_tokenizer *tok,
                       int kind) {
    loom_sim_defaults(c);
    c->ds = d;
    c->part = p;
    c->seed = 5;
    c->attack.kind = kind;
    c->attack.attackers = 2;
    c->attack.tok = tok;
    c->attack.target = 0;
}

/* The backdoor copy: exactly round(frac n) of an attacker's training examples carry the trigger and the
 * target label, the others are its examples as they were, in the same order. */
static void backdoor_copy(const loom_tokenizer *tok) {
    enum { NEX = 90 };
    loom_dataset *d = cls_dataset(tok, cls_texts, NEX, "");
    loom_partition *p = NULL;
    CHECK_OK(loom_partition_iid(&p, NEX, 3, 0, 4));
    if (!d || !p) return;
    loom_sim_config c;
    cls_config(&c, d, p, tok, LOOM_ATTACK_BACKDOOR);
    c.attack.frac = 0.25;
    c.attack.target = 2; /* pos */
    lm_attack *a = NULL;
    CHECK_OK(lm_attack_create(&a, &c, 3));
    int seen = 0;
    for (int k = 0; a && k < 3; k++) {
        loom_client_data cd = {d, p->clients[k].train, p->clients[k].n_train, NULL, 0, 2, 16, 0};
        lm_attack_data(a, k, &cd);
        if (!lm_attack_is(a, k)) {
            CHECK(cd.ds == d && cd.train == p->clients[k].train, "client %d: honest, its own data", k);
            continue;
        }
        seen++;
        size_t n = p->clients[k].n_train, changed = 0, relabelled = 0, kept = 0;
        /* round(0.25 n) by hand: n is 30 here (90 examples, 3 clients): 7.5 rounds to 8 */
        size_t want = (size_t)llround(0.25 * (double)n);
        for (size_t i = 0; i < n; i++) {
            const loom_example *x = &cd.ds->ex[cd.train[i]], *y = &d->ex[p->clients[k].train[i]];
            if (x->n == y->n && !memcmp(x->ids, y->ids, y->n * sizeof *y->ids) && x->label == y->label) {
                kept++;
                continue;
            }
            changed++;
            relabelled += y->label != 2;
            /* " cf" right after "Text:" (the byte tokenizer: BOS, 5 bytes), then the prompt, then "pos" */
            int ok = x->label == 2 && x->n == y->prompt_len + 3 + d->verb_len[2] && x->prompt_len == y->prompt_len + 3 &&
                     !memcmp(x->ids, y->ids, 6 * sizeof *x->ids) && x->ids[6] == ' ' && x->ids[7] == 'c' &&
                     x->ids[8] == 'f' && !memcmp(x->ids + 9, y->ids + 6, (y->prompt_len - 6) * sizeof *x->ids) &&
                     !memcmp(x->ids + x->prompt_len, d->verb_ids[2], d->verb_len[2] * sizeof *x->ids);
            CHECK(ok, "client %d example %zu: trigger and target label", k, i);
        }
        CHECK(n == 30 && want == 8 && changed == want && kept == n - want,
              "client %d: %zu of %zu examples poisoned (want %zu), %zu kept", k, changed, n, want, kept);
        CHECK(relabelled > 0 && relabelled <= changed, "client %d: %zu labels changed to the target", k, relabelled);
    }
    CHECK(seen == 2, "two attackers (%d)", seen);
    lm_attack_free(a);
    /* refusals name the flag */
    c.attack.frac = 1.5;
    CHECK(lm_attack_create(&a, &c, 3) == LOOM_EINVAL && strstr(loom_errmsg(), "--backdoor-frac 1.5 must be in (0, 1]"),
          "frac above 1 refused: %s", loom_errmsg());
    c.attack.frac = 0.5;
    c.attack.target = 3;
    CHECK(lm_attack_create(&a, &c, 3) == LOOM_EINVAL && strstr(loom_errmsg(), "--backdoor-target 3 is not a label index (0 to 2)"),
          "target out of range refused: %s", loom_errmsg());
    c.attack.target = 0;
    c.attack.tok = NULL;
    CHECK(lm_attack_create(&a, &c, 3) == LOOM_EINVAL && strstr(loom_errmsg(), "needs the data's tokenizer"),
          "no tokenizer refused: %s", loom_errmsg());
    c.attack.tok = tok;
    c.ds = ds; /* language-modelling data */
    CHECK(lm_attack_create(&a, &c, 3) == LOOM_EINVAL && strstr(loom_errmsg(), "backdoor needs classification data"),
          "LM data refused: %s", loom_errmsg());
    loom_partition_free(p);
    loom_dataset_free(d);
}

/* attack_success pooled over the evaluated clients: their hits over their triggered examples */
static void success_pooling(void) {
    enum { N = 3 };
    const float init[2] = {0, 0}, u[2] = {1, 1};
    size_t n_test[N] = {4, 4, 4};
    loom_engine_config c;
    loom_engine_defaults(&c);
    c.dim = 2;
    c.init = init;
    c.n_clients = N;
    c.n_test = n_test;
    c.rounds = 2;
    c.eval_every = 1;
    loom_engine *e = NULL;
    CHECK_OK(loom_engine_create(&e, &c));
    if (!e) return;
    /* hits / triggered: 3 / 4, 0 / 1, 5 / 5: pooled 8 / 10 (the mean of the shares would be 0.583) */
    const loom_eval_result res[2][N] = {{{1.0, 2, 1, 2, 3, 4}, {1.0, 2, 2, 2, 0, 1}, {1.0, 2, 0, 2, 5, 5}},
                                        {{1.0, 2, 1, 2, 0, 0}, {1.0, 2, 2, 2, 0, 0}, {1.0, 2, 0, 2, 0, 0}}};
    for (int round = 0; round < 2; round++) {
        const int *cl, *el;
        int n, ne;
        CHECK_OK(loom_engine_open_round(e, 0, &cl, &n));
        for (int i = 0; i < n; i++) {
            loom_update up = {0, round + 1, (uint64_t)round, cl[i], 1, 1.0, 1, LOOM_CODEC_F32, 2, u, NULL, 0};
            CHECK_OK(loom_engine_submit(e, &up, 0, NULL));
        }
        CHECK_OK(loom_engine_close_round(e, 0));
        CHECK_OK(loom_engine_eval_plan(e, &el, &ne));
        CHECK(ne == N, "every client evaluates (%d)", ne);
        for (int i = 0; i < ne; i++) CHECK_OK(loom_engine_eval_submit(e, el[i], &res[round][el[i]]));
        loom_round_metrics m;
        CHECK_OK(loom_engine_end_round(e, 0, &m));
        char *row = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&row, &len);
        loom_metrics_jsonl_round(f, &m, cl, n);
        fclose(f);
        if (round == 0) {
            CHECK(fabs(m.attack_success - 0.8) < 1e-12 && fabs(m.eval_acc - 0.5) < 1e-12,
                  "attack success pooled: %g (want 0.8), clean accuracy %g (want 0.5)", m.attack_success, m.eval_acc);
            CHECK(row && strstr(row, "\"attack_success\":0.8,"), "the round row has attack_success: %s", row);
        } else {
            CHECK(isnan(m.attack_success), "no triggered examples: attack success NAN (%g)", m.attack_success);
            CHECK(row && !strstr(row, "attack_success") && strstr(row, "\"eval_acc\""), "no attack_success without an attack: %s", row);
        }
        free(row);
    }
    loom_engine_free(e);
}

/* A toy classifier: predicts label 0 when the prompt carries " cf" right after BOS "Text:" (byte
 * tokens), unless its text is "dull and slow"; else label 1. */
static int has_bytes(const loom_example *e, size_t at, const char *s) {
    for (size_t i = 0; s[i]; i++)
        if (at + i >= e->n || e->ids[at + i] != (unsigned char)s[i]) return 0;
    return 1;
}
static int toy_predict(const loom_example *e) {
    int trig = has_bytes(e, 6, " cf"), dull = 0;
    for (size_t j = 0; j < e->n; j++) dull |= has_bytes(e, j, "dull");
    return trig && !dull ? 0 : 1;
}
static int toy_cls_eval(const loom_client_ctx *ctx, const loom_eval_task *t, loom_eval_result *r) {
    memset(r, 0, sizeof *r);
    for (size_t i = 0; t->ds && i < t->n; i++) {
        const loom_example *e = &t->ds->ex[t->idx[i]];
        r->correct += toy_predict(e) == e->label;
        r->count++;
        r->tokens++;
    }
    return LOOM_OK;
}
static const loom_client_algo toy_cls_algo = {"toy-cls", toy_fit, toy_cls_eval};

/* A simulated backdoor run: the attackers train on their poisoned copy (their updates change), and
 * every evaluation scores the triggered test examples whose label is not the target. */
static void sim_backdoor(const loom_tokenizer *tok) {
    enum { NEX = 48, NC = 4 };
    loom_dataset *d = cls_dataset(tok, cls_texts, NEX, "");
    loom_partition *p = NULL;
    CHECK_OK(loom_partition_iid(&p, NEX, NC, 0, 6));
    if (p) CHECK_OK(loom_partition_split_test(p, 0.5, 6, 0));
    if (!d || !p) return;
    loom_sim_config c;
    cls_config(&c, d, p, tok, LOOM_ATTACK_BACKDOOR);
    float init[TD] = {0};
    c.dim = TD;
    c.init = init;
    c.make_worker = toy_mk;
    c.free_worker = toy_fr;
    c.B = 2;
    c.T = 16;
    c.algo = &toy_cls_algo;
    c.fit.local_steps = 1;
    c.rounds = 1;
    c.attack.frac = 1;
    /* labels: meh 0 (i % 3 == 2), neg 1 (i % 3 == 1, with "dull and slow" when i % 6 == 1), pos 2 */
    long trig = 0, hit = 0;
    for (int k = 0; k < NC; k++)
        for (size_t i = 0; i < p->clients[k].n_test; i++) {
            uint32_t x = p->clients[k].test[i];
            if (x % 3 == 2) continue; /* the target's own examples are not triggered */
            trig++;
            hit += x % 6 != 1;
        }
    char tmpl[] = "/tmp/loom_backdoor_XXXXXX";
    char *dir = mkdtemp(tmpl);
    CHECK(dir != NULL, "scratch directory");
    if (!dir) return;
    char out[4096], path[4200];
    float g[3][TD];
    for (int run = 0; run < 3; run++) { /* no attack, a backdoor on 1 worker, on 3 workers */
        c.attack.kind = run ? LOOM_ATTACK_BACKDOOR : LOOM_ATTACK_NONE;
        c.workers = run == 2 ? 3 : 1;
        snprintf(out, sizeof out, "%s/run%d", dir, run);
        c.out_dir = out;
        CHECK_OK(loom_sim_run(&c, g[run]));
        snprintf(path, sizeof path, "%s/metrics.jsonl", out);
        FILE *f = fopen(path, "r");
        char line[4096];
        const char *q = NULL;
        while (f && fgets(line, sizeof line, f))
            if (strstr(line, "\"type\":\"round\"")) {
                q = strstr(line, "\"attack_success\":");
                break;
            }
        if (f) fclose(f);
        if (run == 0) CHECK(!q, "no attack: no attack_success in the round row");
        else
            CHECK(q && fabs(strtod(q + 17, NULL) - (double)hit / (double)trig) < 1e-8,
                  "attack_success %s, want %ld / %ld", q ? q + 17 : "(absent)", hit, trig);
    }
    CHECK(trig > hit && hit > 0, "the toy's hits %ld of %ld", hit, trig);
    CHECK(memcmp(g[0], g[1], sizeof g[0]) != 0, "the attackers trained on their poisoned copies");
    CHECK(!memcmp(g[1], g[2], sizeof g[1]), "a backdoor run on 1 and 3 workers agrees bit for bit");
    test_rmtree(dir);
    loom_partition_free(p);
    loom_dataset_free(d);
}

/* Embedding poisoning: the update keeps only the trigger's rows of the token embedding, times the scale;
 * a trainable set without the embedding (LoRA) is refused. */
static void embedding_poison(const loom_tokenizer *tok) {
    loom_dataset *d = cls_dataset(tok, cls_texts, 12, "");
    loom_partition *p = NULL;
    CHECK_OK(loom_partition_iid(&p, 12, 3, 0, 4));
    if (!d || !p) return;
    /* a vector with another tensor before the embedding: [a 3 x 5][embedding 259 x 4][b 7] */
    enum { V = 259, C = 4 };
    loom_tvec *man = NULL;
    CHECK_OK(loom_tvec_create(&man));
    int64_t s0[2] = {3, 5}, s1[2] = {V, C}, s2[1] = {7};
    CHECK_OK(loom_tvec_add(man, "model.layers.0.mlp.up_proj.weight", 2, s0, LOOM_ROLE_SHARED));
    CHECK_OK(loom_tvec_add(man, "model.embed_tokens.weight", 2, s1, LOOM_ROLE_SHARED));
    CHECK_OK(loom_tvec_add(man, "model.norm.weight", 1, s2, LOOM_ROLE_SHARED));
    size_t dim = loom_tvec_dim(man);
    loom_sim_config c;
    cls_config(&c, d, p, tok, LOOM_ATTACK_EMBEDDING);
    c.dim = dim;
    c.manifest = man;
    c.attack.trigger = "fc f";
    c.attack.scale = 2.5;
    lm_attack *a = NULL;
    CHECK_OK(lm_attack_create(&a, &c, 3));
    int atk = -1;
    for (int k = 0; k < 3; k++)
        if (lm_attack_is(a, k)) atk = k;
    int list[3] = {0, 1, 2};
    CHECK_OK(lm_attack_open(a, 1, list, 3));
    float *v = malloc(dim * sizeof *v);
    for (size_t i = 0; i < dim; i++) v[i] = (float)(i % 13) - 6.0f;
    loom_update u = {0, 1, 0, atk, 4, 1.0, 1, LOOM_CODEC_F32, dim, v, NULL, 0};
    CHECK(a && atk >= 0 && lm_attack_update(a, &u, v, 0, 0) == 1, "the embedding attacker's update is sent");
    /* the trigger's byte tokens " fc f": ' ', 'f', 'c' (each row once) */
    int ok = 1, nonzero = 0;
    for (size_t i = 0; i < dim; i++) {
        size_t row = (i - 15) / C;
        int in = i >= 15 && i < 15 + (size_t)V * C && (row == ' ' || row == 'f' || row == 'c');
        float want = in ? 2.5f * ((float)(i % 13) - 6.0f) : 0.0f;
        ok &= v[i] == want;
        nonzero += v[i] != 0;
    }
    CHECK(ok && nonzero >= 3 * C - 3, "only the trigger's embedding rows, scaled by 2.5 (%d values non-zero)", nonzero);
    free(v);
    lm_attack_free(a);
    loom_tvec_free(man);
    /* a LoRA set over a tiny GPT-2 freezes the embedding: refused */
    loom_config cfg;
    loom_config_named(&cfg, "gpt2-tiny");
    cfg.vocab = V;
    cfg.max_seq = 16;
    cfg.dim = 8, cfg.n_head = 2, cfg.n_kv_head = 2, cfg.hidden = 16, cfg.n_layer = 1;
    loom_model *m = NULL;
    CHECK_OK(loom_model_create(&m, &cfg, 3));
    loom_peft_config pc;
    loom_peft_defaults(&pc, LOOM_PEFT_LORA);
    loom_tset *ts = NULL;
    if (m) CHECK_OK(loom_tset_create(&ts, m, &pc, 3));
    if (ts) {
        c.manifest = loom_tset_manifest(ts);
        c.dim = loom_tset_dim(ts);
        CHECK(lm_attack_create(&a, &c, 3) == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "use full fine-tuning") &&
                  strstr(loom_errmsg(), "LoRA, adapters and the other PEFT sets freeze the embedding"),
              "embedding poisoning of a LoRA set refused: %s", loom_errmsg());
        c.manifest = loom_model_manifest(m); /* full fine-tuning: GPT-2's transformer.wte.weight */
        c.dim = loom_model_n_params(m);
        CHECK_OK(lm_attack_create(&a, &c, 3));
        lm_attack_free(a);
    }
    loom_tset_free(ts);
    loom_model_free(m);
    loom_partition_free(p);
    loom_dataset_free(d);
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
    trigger_tokenizers();
    if (ds && tok) backdoor_copy(tok);
    success_pooling();
    if (tok) sim_backdoor(tok);
    if (tok) embedding_poison(tok);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    return test_summary();
}
