/* Client-level differential privacy in the round engine (include/loom/dp.h): central DP-FedAvg's noise
 * scale and its equality with uniform FedAvg at sigma 0, the clip's bound on one client's influence, the
 * fixed denominator, local DP's clip and per-client noise, adaptive clipping's convergence to the target
 * quantile, the budget refusal and its knobs, the refused combinations, and resume continuing the clip. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dp.h"
#include "loom/engine.h"
#include "loom/fl.h"
#include "loom/tokenizer.h"
#include "loom/safetensors.h"
#include "test.h"

typedef struct {
    int rows;
    loom_round_metrics last;
    double clips[512];
} dp_log;

static void log_round(void *ud, const loom_round_metrics *m, const int *c, int n) {
    dp_log *s = ud;
    (void)c;
    (void)n;
    if (s->rows < 512) s->clips[s->rows] = m->dp_clip;
    s->rows++;
    s->last = *m;
}

static void base_config(loom_engine_config *c, size_t dim, const float *init, int N, int rounds, dp_log *log) {
    loom_engine_defaults(c);
    c->dim = dim;
    c->init = init;
    c->n_clients = N;
    c->rounds = rounds;
    c->seed = 7;
    if (log) c->sink = (loom_metrics_sink){log_round, NULL, log};
}

/* One synchronous round: client k (of the sampled ones) submits upd[k] (dim floats) with examples ex[k];
 * fail[k] set: it reports a failure instead. */
static int run_round(loom_engine *e, float *const *upd, const uint64_t *ex, const int *fail, size_t dim) {
    const int *cl;
    int n, rc;
    if ((rc = loom_engine_open_round(e, 0, &cl, &n)) != LOOM_OK) return rc;
    loom_task t;
    loom_engine_task(e, &t);
    for (int i = 0; i < n; i++) {
        int k = cl[i];
        if (fail && fail[k]) {
            loom_engine_fail(e, t.round, k, "test", 0, NULL);
            continue;
        }
        loom_update u = {0, t.round, t.version, k, ex ? ex[k] : 1, 1.0, 1, LOOM_CODEC_F32, dim, upd[k], NULL, 0};
        loom_engine_submit(e, &u, 0, NULL);
    }
    if ((rc = loom_engine_close_round(e, 0)) != LOOM_OK) return rc;
    return loom_engine_end_round(e, 0, NULL);
}

static float **vectors(int n, size_t dim) {
    float **v = calloc((size_t)n, sizeof *v);
    for (int k = 0; k < n; k++) v[k] = calloc(dim, sizeof(float));
    return v;
}

static void free_vectors(float **v, int n) {
    for (int k = 0; v && k < n; k++) free(v[k]);
    free(v);
}

static double l2(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

/* sigma S / m per coordinate: zero updates leave only the noise in the global vector */
static void central_noise_scale(void) {
    enum { N = 4 };
    const size_t D = 200000;
    float *init = calloc(D, sizeof(float));
    float **u = vectors(N, D);
    loom_engine_config c;
    base_config(&c, D, init, N, 2, NULL);
    c.dp.mode = LOOM_DP_CENTRAL;
    c.dp.clip = 1.5;
    c.dp.noise = 2.0;
    loom_engine *e;
    CHECK_OK(loom_engine_create(&e, &c));
    CHECK_OK(run_round(e, u, NULL, NULL, D));
    const float *g = loom_engine_global(e);
    double s1 = 0, s2 = 0;
    for (size_t i = 0; i < D; i++) s1 += g[i], s2 += (double)g[i] * g[i];
    double mean = s1 / D, sd = sqrt(s2 / D - mean * mean);
    /* want sigma S / m = 2 * 1.5 / 4 = 0.75; the sample sd's own sd is 0.75 / sqrt(2 D) = 0.0012: 1% is 6 of them */
    CHECK(fabs(sd - 0.75) < 0.0075, "noise sd %.5f, want 0.75 within 1%%", sd);
    CHECK(fabs(mean) < 0.01, "noise mean %.5f, want 0 (sd of the mean 0.0017)", mean);
    float *g1 = malloc(D * sizeof(float));
    memcpy(g1, g, D * sizeof(float));
    CHECK_OK(run_round(e, u, NULL, NULL, D));
    size_t same = 0;
    for (size_t i = 0; i < D; i++) same += g[i] == 2 * g1[i];
    CHECK(same < 10, "round 2 draws other noise (%zu coordinates doubled)", same);
    loom_engine_free(e);
    /* the same seed gives the same noise */
    CHECK_OK(loom_engine_create(&e, &c));
    CHECK_OK(run_round(e, u, NULL, NULL, D));
    CHECK(memcmp(loom_engine_global(e), g1, D * sizeof(float)) == 0, "the noise is named by (seed, round)");
    loom_engine_free(e);
    free(g1);
    free_vectors(u, N);
    free(init);
    /* the noise is the documented stream, element by element, across block boundaries */
    const size_t M = 3 * 4096 + 17;
    double *x = calloc(M, sizeof *x);
    uint64_t st = loom_dp_stream(LOOM_DP_STREAM_CENTRAL, 3);
    loom_dp_add_noise(x, M, 0.5, 7, st);
    size_t off = 0;
    for (size_t i = 0; i < M; i++) off += x[i] != 0.5 * (double)loom_rng_normal_at(7, st, i);
    CHECK(off == 0, "%zu of %zu noise values are not 0.5 loom_rng_normal_at(seed, stream, i)", off, M);
    free(x);
}

/* sigma 0 and a clip no update reaches: uniform FedAvg (every client weight 1), bit for bit */
static void central_zero_noise_is_uniform_fedavg(void) {
    enum { N = 5, D = 64 };
    float init[D];
    uint64_t s = 3, ex[N] = {10, 200, 3, 45, 7}, one[N] = {1, 1, 1, 1, 1};
    float **u = vectors(N, D);
    for (int i = 0; i < D; i++) init[i] = (float)test_normal(&s);
    for (int k = 0; k < N; k++)
        for (int i = 0; i < D; i++) u[k][i] = (float)(0.1 * test_normal(&s));
    loom_engine_config c;
    base_config(&c, D, init, N, 2, NULL);
    loom_engine *plain, *dp;
    CHECK_OK(loom_engine_create(&plain, &c));
    c.dp.mode = LOOM_DP_CENTRAL;
    c.dp.clip = 1e5;
    c.dp.noise = 0;
    CHECK_OK(loom_engine_create(&dp, &c));
    for (int r = 0; r < 2; r++) {
        CHECK_OK(run_round(plain, u, one, NULL, D));
        CHECK_OK(run_round(dp, u, ex, NULL, D)); /* the example counts are ignored */
    }
    CHECK(memcmp(loom_engine_global(plain), loom_engine_global(dp), sizeof init) == 0,
          "DP central, sigma 0, clip 1e5 = FedAvg with uniform weights, bit for bit");
    loom_engine_free(dp);
    /* and it is not the example-weighted mean */
    loom_engine *weighted;
    c.dp.mode = LOOM_DP_OFF;
    CHECK_OK(loom_engine_create(&weighted, &c));
    CHECK_OK(run_round(weighted, u, ex, NULL, D));
    CHECK_OK(run_round(weighted, u, ex, NULL, D));
    CHECK(memcmp(loom_engine_global(plain), loom_engine_global(weighted), sizeof init) != 0,
          "the weighted mean differs (the test can tell them apart)");
    loom_engine_free(weighted);
    loom_engine_free(plain);
    free_vectors(u, N);
}

/* one client with a huge update moves the sum by at most S; dropped clients count as zero (the mean
 * divides by the m sampled, not by the accepted) */
static void clip_bounds_influence(void) {
    enum { N = 6, D = 32 };
    const double S = 0.7;
    float init[D] = {0};
    uint64_t s = 9;
    float **u = vectors(N, D);
    for (int k = 0; k < N; k++)
        for (int i = 0; i < D; i++) u[k][i] = (float)(0.01 * test_normal(&s));
    loom_engine_config c;
    base_config(&c, D, init, N, 1, NULL);
    c.dp.mode = LOOM_DP_CENTRAL;
    c.dp.clip = S;
    c.dp.noise = 0;
    float without[D], with[D];
    loom_engine *e;
    memset(u[2], 0, sizeof(float) * D); /* neighbouring run: client 2 contributes nothing */
    CHECK_OK(loom_engine_create(&e, &c));
    CHECK_OK(run_round(e, u, NULL, NULL, D));
    memcpy(without, loom_engine_global(e), sizeof without);
    loom_engine_free(e);
    for (int i = 0; i < D; i++) u[2][i] = (float)(1000 * test_normal(&s)); /* norm about 5600 */
    CHECK_OK(loom_engine_create(&e, &c));
    CHECK_OK(run_round(e, u, NULL, NULL, D));
    memcpy(with, loom_engine_global(e), sizeof with);
    loom_engine_free(e);
    double d2 = 0;
    for (int i = 0; i < D; i++) d2 += ((double)with[i] - without[i]) * N * ((double)with[i] - without[i]) * N;
    CHECK(sqrt(d2) <= S * (1 + 1e-5) && sqrt(d2) >= S * (1 - 1e-5),
          "the huge client moves the sum by %.9g, the clip is %g", sqrt(d2), S);
    /* fixed denominator: 2 of 6 fail, the 4 others send v: the mean is 4 v / 6 */
    for (int k = 0; k < N; k++)
        for (int i = 0; i < D; i++) u[k][i] = 0.1f; /* norm 0.57: within the clip */
    int fail[N] = {0, 1, 0, 0, 1, 0};
    CHECK_OK(loom_engine_create(&e, &c));
    CHECK_OK(run_round(e, u, NULL, fail, D));
    const float *g = loom_engine_global(e);
    CHECK(fabsf(g[0] - 0.1f * 4 / 6) < 1e-7f && fabsf(g[D - 1] - 0.1f * 4 / 6) < 1e-7f,
          "4 of 6 answered: mean %.9g, want %.9g", g[0], 0.1 * 4 / 6);
    loom_engine_free(e);
    free_vectors(u, N);
}

/* local DP: each client's update clipped to S, then noise of sd sigma S from its own seed and round */
static void local_privatize(void) {
    const size_t D = 100000;
    float *a = calloc(D, sizeof(float)), *b = calloc(D, sizeof(float)), *c = calloc(D, sizeof(float));
    CHECK_OK(loom_dp_local_privatize(a, D, 2.0, 0.5, 101, 1, NULL)); /* client seed 101, round 1 */
    CHECK_OK(loom_dp_local_privatize(b, D, 2.0, 0.5, 202, 1, NULL)); /* another client */
    CHECK_OK(loom_dp_local_privatize(c, D, 2.0, 0.5, 101, 2, NULL)); /* the first client's next round */
    double s2 = 0, ab = 0, ac = 0;
    for (size_t i = 0; i < D; i++) s2 += (double)a[i] * a[i], ab += (double)a[i] * b[i], ac += (double)a[i] * c[i];
    double sd = sqrt(s2 / D);
    CHECK(fabs(sd - 1.0) < 0.01, "local noise sd %.5f, want sigma S = 1 within 1%%", sd);
    CHECK(fabs(ab / s2) < 0.02 && fabs(ac / s2) < 0.02, "clients and rounds draw independent noise (corr %.4f, %.4f)",
          ab / s2, ac / s2);
    memset(b, 0, D * sizeof(float));
    CHECK_OK(loom_dp_local_privatize(b, D, 2.0, 0.5, 101, 1, NULL));
    CHECK(memcmp(a, b, D * sizeof(float)) == 0, "the same (seed, round) gives the same noise");
    /* the clip alone: a norm-10 update becomes norm 2, same direction; a small one is untouched */
    for (size_t i = 0; i < D; i++) a[i] = (i % 2 ? 10.0f : -10.0f) / sqrtf((float)D), c[i] = a[i] / 100;
    double n0;
    CHECK_OK(loom_dp_local_privatize(a, D, 2.0, 0, 5, 1, &n0));
    CHECK(fabs(n0 - 10) < 1e-4 && fabs(l2(a, D) - 2) < 1e-5 && a[0] < 0 && a[1] > 0, "clipped: %.7g -> %.7g", n0,
          l2(a, D));
    memcpy(b, c, D * sizeof(float));
    CHECK_OK(loom_dp_local_privatize(c, D, 2.0, 0, 5, 1, NULL));
    CHECK(memcmp(b, c, D * sizeof(float)) == 0, "an update within the clip and sigma 0 is unchanged");
    CHECK(loom_dp_local_privatize(c, D, 0, 1, 5, 1, NULL) == LOOM_EINVAL && strstr(loom_errmsg(), "--dp-clip"),
          "clip 0 refused: %s", loom_errmsg());
    free(a);
    free(b);
    free(c);
}

/* loom_client_run_fit applies local DP after the client's training, from the client's data seed or its
 * own secret dp_seed: a stand-in algorithm whose update is all ones shows what run_fit does to it */
static int ones_fit(const loom_client_ctx *ctx, const loom_fit_task *t, loom_client_state *st, loom_fit_output *o) {
    (void)t;
    (void)st;
    for (size_t i = 0; i < ctx->dim; i++) o->update[i] = 1.0f;
    return LOOM_OK;
}

/* and hands DP-SGD's trainer a noise seed of the client and the round (the trainer's steps restart
 * every round, so without it every client would draw the same noise every round) */
static uint64_t seen_sgd_seed;
static int seed_fit(const loom_client_ctx *ctx, const loom_fit_task *t, loom_client_state *st, loom_fit_output *o) {
    seen_sgd_seed = t->fc.sgd_noise_seed;
    return ones_fit(ctx, t, st, o);
}

static void local_in_run_fit(void) {
    enum { D = 5000 };
    loom_tokenizer *tok = NULL;
    loom_dataset *ds = NULL;
    const char *texts[1] = {"the client's own text, long enough for a batch of a few tokens"};
    size_t lens[1] = {strlen(texts[0])};
    CHECK_OK(loom_tokenizer_byte(&tok));
    CHECK_OK(loom_dataset_from_texts(&ds, texts, lens, NULL, 1, NULL, tok));
    if (!ds) return;
    const uint32_t train[1] = {0};
    loom_client_data d = {ds, train, 1, NULL, 0, 1, 8, 101};
    const loom_client_algo algo = {"ones", ones_fit, NULL};
    float *vec = calloc(D, sizeof(float)), *upd = calloc(D, sizeof(float)), *want = malloc(D * sizeof(float));
    loom_client_ctx ctx = {NULL, vec, D, NULL};
    loom_fit_config fc = {.local_steps = 1, .dp_clip = 2.0, .dp_noise = 0.5};
    loom_client_state st;
    loom_client_state_init(&st);
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = upd;
    for (int which = 0; which < 3; which++) {
        fc.dp_seed = which == 1 ? 999 : 0;
        fc.dp_clip = which == 2 ? 0 : 2.0;
        CHECK_OK(loom_client_run_fit(&algo, &ctx, &d, 4, vec, NULL, &fc, NULL, &st, &out));
        for (size_t i = 0; i < D; i++) want[i] = 1.0f;
        if (which < 2) loom_dp_local_privatize(want, D, 2.0, 0.5, which == 1 ? 999 : 101, 4, NULL);
        CHECK(memcmp(upd, want, D * sizeof(float)) == 0, "%s", which == 0 ? "local DP from the client's data seed"
              : which == 1 ? "local DP from its secret dp_seed" : "dp_clip 0: the update as trained");
    }
    CHECK(fabs(l2(upd, D) - sqrt((double)D)) < 1e-3, "no DP: norm %g", l2(upd, D));
    const loom_client_algo salgo = {"seed", seed_fit, NULL};
    fc.dp_clip = 0;
    CHECK_OK(loom_client_run_fit(&salgo, &ctx, &d, 4, vec, NULL, &fc, NULL, &st, &out));
    CHECK(seen_sgd_seed == loom_hash2(101, 4), "DP-SGD noise seed of client seed 101, round 4: %llx",
          (unsigned long long)seen_sgd_seed);
    CHECK_OK(loom_client_run_fit(&salgo, &ctx, &d, 5, vec, NULL, &fc, NULL, &st, &out));
    CHECK(seen_sgd_seed == loom_hash2(101, 5), "DP-SGD noise seed of round 5: %llx", (unsigned long long)seen_sgd_seed);
    loom_client_state_clear(&st);
    free(vec);
    free(upd);
    free(want);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
}

/* adaptive clipping: the clip follows the target quantile of the clients' update norms */
static void adaptive_quantile(void) {
    enum { N = 100, D = 8, R = 200 };
    float init[D] = {0};
    uint64_t s = 21;
    float **u = vectors(N, D);
    double norms[N], sorted[N];
    for (int k = 0; k < N; k++) {
        norms[k] = 1 + 2 * (k + 0.5) / N * (0.5 + 0.5 * fabs(test_normal(&s))) ; /* spread over about [1, 5] */
        for (int i = 0; i < D; i++) u[k][i] = (float)test_normal(&s);
        double n = l2(u[k], D);
        for (int i = 0; i < D; i++) u[k][i] = (float)(u[k][i] * norms[k] / n);
        norms[k] = l2(u[k], D); /* the float vector's own norm */
        sorted[k] = norms[k];
    }
    for (int i = 1; i < N; i++) /* insertion sort: the quantile computed here, not by the engine */
        for (int k = i; k > 0 && sorted[k - 1] > sorted[k]; k--) {
            double t = sorted[k];
            sorted[k] = sorted[k - 1];
            sorted[k - 1] = t;
        }
    const double gamma[2] = {0.5, 0.8};
    for (int gi = 0; gi < 2; gi++) {
        double want = sorted[(int)(gamma[gi] * N) - 1] / 2 + sorted[(int)(gamma[gi] * N)] / 2;
        dp_log lg;
        memset(&lg, 0, sizeof lg);
        loom_engine_config c;
        base_config(&c, D, init, N, R, &lg);
        c.pipe.sp.server_lr = 0; /* the model does not move: the norms stay the synthetic ones */
        c.dp.mode = LOOM_DP_CENTRAL;
        c.dp.clip = 0.1;
        c.dp.noise = 1.0;
        c.dp.quantile = gamma[gi];
        loom_engine *e;
        CHECK_OK(loom_engine_create(&e, &c));
        for (int r = 0; r < R; r++) CHECK_OK(run_round(e, u, NULL, NULL, D));
        CHECK(lg.rows == R && lg.clips[0] == 0.1, "%d rows, first clip %g", lg.rows, lg.clips[0]);
        double lsum = 0;
        for (int r = R - 50; r < R; r++) lsum += log(lg.clips[r]);
        double clip = exp(lsum / 50);
        int below = 0;
        for (int k = 0; k < N; k++) below += norms[k] <= clip;
        CHECK(fabs(clip / want - 1) < 0.1, "quantile %g: clip %.4f over the last 50 rounds, the norms' quantile %.4f",
              gamma[gi], clip, want);
        CHECK(abs(below - (int)(gamma[gi] * N)) <= 10, "quantile %g: %d of %d norms within the clip", gamma[gi], below, N);
        loom_engine_free(e);
    }
    free_vectors(u, N);
    /* sigma_delta: the update noise left once the count's noise is paid for */
    CHECK_NEAR(loom_dp_adaptive_sigma(1.0, 5.0), 1 / sqrt(1 - 1 / 100.0), 1e-15);
    CHECK(isnan(loom_dp_adaptive_sigma(1.0, 0.5)), "sigma_b = sigma / 2 leaves nothing");
    CHECK_NEAR(loom_dp_adaptive_next(2.0, 3, 10, 0.5, 0.4, 0.5, 0.2), 2.0 * exp(-0.2 * ((3 + 0.2) / 10 - 0.5)), 1e-15);
}

/* the budget: refused before round 1, naming the round it runs out at and both knobs */
static void budget(void) {
    loom_dp_config d;
    loom_dp_config_defaults(&d);
    d.mode = LOOM_DP_CENTRAL;
    d.clip = 1;
    d.noise = 1.0;
    d.epsilon_budget = 3.0;
    const int N = 100, m = 10, R = 400;
    double eps;
    CHECK_OK(loom_dp_run_epsilon(&d, N, m, R, &eps));
    double ref;
    CHECK_OK(loom_dp_epsilon(0.1, 1.0, R, 1e-5, NULL, 0, &ref, NULL));
    CHECK(eps == ref && eps > 3, "central: q = m / N, one step a round (%g, %g)", eps, ref);
    int rc = loom_dp_run_budget(&d, N, m, R);
    const char *msg = loom_errmsg();
    CHECK(rc == LOOM_ERANGE && strstr(msg, "--dp-noise") && strstr(msg, "--rounds") && strstr(msg, "runs out at round"),
          "refusal: %s", msg);
    /* the round it names: the first whose epsilon is above the budget (computed here by a plain scan) */
    int first = 0;
    for (int r = 1; r <= R && !first; r++) {
        double e;
        loom_dp_epsilon(0.1, 1.0, r, 1e-5, NULL, 0, &e, NULL);
        if (e > 3) first = r;
    }
    char want[64];
    snprintf(want, sizeof want, "runs out at round %d:", first);
    CHECK(strstr(msg, want) != NULL, "names round %d: %s", first, msg);
    snprintf(want, sizeof want, "lower --rounds to %d", first - 1);
    CHECK(strstr(msg, want) != NULL, "the rounds that fit: %s", msg);
    const char *at = strstr(msg, "raise --dp-noise to ");
    double sig = at ? atof(at + strlen("raise --dp-noise to ")) : 0;
    double e1 = 0;
    CHECK_OK(loom_dp_epsilon(0.1, sig, R, 1e-5, NULL, 0, &e1, NULL));
    CHECK(sig > 1 && e1 <= 3 && e1 > 2.99, "the --dp-noise it gives (%g) fits the budget: epsilon %g", sig, e1);
    d.epsilon_budget = ref * 1.0001;
    CHECK_OK(loom_dp_run_budget(&d, N, m, R));
    /* local: q = 1 and sigma / 2; the knob is twice the mechanism's multiplier */
    d.mode = LOOM_DP_LOCAL;
    d.noise = 4;
    CHECK_OK(loom_dp_run_epsilon(&d, N, m, 5, &eps));
    CHECK_OK(loom_dp_epsilon(1, 2, 5, 1e-5, NULL, 0, &ref, NULL));
    CHECK(eps == ref, "local: q 1, sigma / 2 (sensitivity 2S), every round (%g, %g)", eps, ref);
    d.epsilon_budget = 1;
    CHECK(loom_dp_run_budget(&d, N, m, 5) == LOOM_ERANGE, "local over budget");
    at = strstr(loom_errmsg(), "raise --dp-noise to ");
    sig = at ? atof(at + strlen("raise --dp-noise to ")) : 0;
    CHECK_OK(loom_dp_epsilon(1, sig / 2, 5, 1e-5, NULL, 0, &e1, NULL));
    CHECK(e1 <= 1 && e1 > 0.99, "local knob %g gives epsilon %g", sig, e1);
    /* sgd: the worst client's example-level epsilon */
    d.mode = LOOM_DP_SGD;
    d.noise = 1.1;
    d.sgd_q = 0.02;
    d.sgd_steps = 10;
    d.epsilon_budget = 0;
    CHECK_OK(loom_dp_run_epsilon(&d, N, m, 7, &eps));
    CHECK_OK(loom_dp_epsilon(0.02, 1.1, 70, 1e-5, NULL, 0, &ref, NULL));
    CHECK(eps == ref, "sgd: q = B / examples, local steps x rounds (%g, %g)", eps, ref);
    /* the engine refuses the run at create */
    float init[4] = {0};
    loom_engine_config c;
    base_config(&c, 4, init, N, R, NULL);
    c.sample = m;
    c.dp.mode = LOOM_DP_CENTRAL;
    c.dp.clip = 1;
    c.dp.noise = 1;
    c.dp.epsilon_budget = 3;
    loom_engine *e = NULL;
    CHECK(loom_engine_create(&e, &c) == LOOM_ERANGE && strstr(loom_errmsg(), "--dp-epsilon 3") && !e,
          "engine refuses: %s", loom_errmsg());
}

static void refusals(void) {
    float init[4] = {0};
    loom_engine_config c;
    loom_engine *e = NULL;
    base_config(&c, 4, init, 10, 3, NULL);
    c.dp.mode = LOOM_DP_CENTRAL;
    c.dp.noise = 1;
    CHECK(loom_engine_create(&e, &c) == LOOM_EINVAL && strstr(loom_errmsg(), "--dp-clip"), "no clip: %s", loom_errmsg());
    c.dp.clip = 1;
    c.mode = LOOM_ENGINE_FEDASYNC;
    CHECK(loom_engine_create(&e, &c) != LOOM_OK && strstr(loom_errmsg(), "--mode sync"), "fedasync: %s", loom_errmsg());
    c.mode = LOOM_ENGINE_SYNC;
    c.pipe.strategy = "scaffold";
    CHECK(loom_engine_create(&e, &c) != LOOM_OK && strstr(loom_errmsg(), "scaffold"), "scaffold: %s", loom_errmsg());
    c.pipe.strategy = "fedavg";
    c.pipe.clip_norm = 2;
    CHECK(loom_engine_create(&e, &c) != LOOM_OK && strstr(loom_errmsg(), "--update-clip"), "two clips: %s",
          loom_errmsg());
    c.pipe.clip_norm = 0;
    c.dp.quantile = 0.5; /* sigma_b = 10 / 20 = 0.5 is not above sigma / 2 = 0.5 */
    CHECK(loom_engine_create(&e, &c) != LOOM_OK && strstr(loom_errmsg(), "sigma_b"), "count noise: %s", loom_errmsg());
    c.dp.bits_noise = 2;
    CHECK_OK(loom_engine_create(&e, &c));
    loom_engine_free(e);
    c.dp.mode = LOOM_DP_LOCAL;
    CHECK(loom_engine_create(&e, &c) != LOOM_OK && strstr(loom_errmsg(), "--dp central only"), "adaptive local: %s",
          loom_errmsg());
    c.dp.quantile = 0;
    c.dp.delta = 1;
    CHECK(loom_engine_create(&e, &c) != LOOM_OK && strstr(loom_errmsg(), "--dp-delta"), "delta: %s", loom_errmsg());
    loom_dp_mode md;
    CHECK(loom_dp_mode_parse("centrl", &md) == LOOM_EINVAL && strstr(loom_errmsg(), "--dp"), "mode: %s", loom_errmsg());
}

/* resume: a checkpoint after round 3 continues the adaptive clip (and the model) exactly */
static int checkpoint_roundtrip(loom_engine *from, loom_engine *to, const loom_tvec *mf, const char *path, int next) {
    loom_st_writer *w;
    int rc = loom_st_writer_create(&w);
    if (rc == LOOM_OK) rc = loom_engine_checkpoint_add(from, w, mf, next, 0);
    if (rc == LOOM_OK) rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    loom_st_file *f = NULL;
    int nr = -1;
    if (rc == LOOM_OK) rc = loom_st_open(&f, path);
    if (rc == LOOM_OK) rc = loom_engine_checkpoint_load(to, f, mf, path, &nr);
    loom_st_close(f);
    return rc == LOOM_OK && nr != next ? LOOM_EINVAL : rc;
}

static void resume_clip(void) {
    enum { N = 20, D = 6, R = 6 };
    float init[D] = {0};
    uint64_t s = 5;
    float **u = vectors(N, D);
    for (int k = 0; k < N; k++)
        for (int i = 0; i < D; i++) u[k][i] = (float)(0.5 * test_normal(&s));
    dp_log la, lb;
    memset(&la, 0, sizeof la);
    memset(&lb, 0, sizeof lb);
    loom_engine_config c;
    base_config(&c, D, init, N, R, &la);
    c.sample = 8;
    c.dp.mode = LOOM_DP_CENTRAL;
    c.dp.clip = 0.2;
    c.dp.noise = 0.5; /* sigma_b = 8 / 20 = 0.4 > 0.25 */
    c.dp.quantile = 0.5;
    loom_engine *a, *b, *b2;
    CHECK_OK(loom_engine_create(&a, &c));
    for (int r = 0; r < R; r++) CHECK_OK(run_round(a, u, NULL, NULL, D));
    c.sink.ud = &lb;
    CHECK_OK(loom_engine_create(&b, &c));
    for (int r = 0; r < 3; r++) CHECK_OK(run_round(b, u, NULL, NULL, D));
    loom_tvec *mf;
    int64_t shape[1] = {D};
    CHECK_OK(loom_tvec_create(&mf));
    CHECK_OK(loom_tvec_add(mf, "vector", 1, shape, LOOM_ROLE_SHARED));
    char dir[256], path[512];
    CHECK(test_tmpdir(dir, sizeof dir) != NULL, "temporary directory");
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
    CHECK_OK(loom_engine_create(&b2, &c));
    CHECK_OK(checkpoint_roundtrip(b, b2, mf, path, 3));
    for (int r = 3; r < R; r++) CHECK_OK(run_round(b2, u, NULL, NULL, D));
    CHECK(lb.rows == R && la.rows == R, "rows %d %d", la.rows, lb.rows);
    int same = 1, moved = 0;
    for (int r = 0; r < R; r++) same &= la.clips[r] == lb.clips[r], moved |= la.clips[r] != c.dp.clip;
    CHECK(same && moved, "resumed run's clips equal the uninterrupted run's (round 6: %.17g, %.17g)", la.clips[R - 1],
          lb.clips[R - 1]);
    CHECK(memcmp(loom_engine_global(a), loom_engine_global(b2), sizeof init) == 0, "and its model, bit for bit");
    CHECK(la.last.dp && la.last.epsilon > 0, "rows carry epsilon (%g)", la.last.epsilon);
    /* a checkpoint of another DP mode is refused */
    loom_engine *plain;
    c.dp.mode = LOOM_DP_OFF;
    c.dp.quantile = 0;
    CHECK_OK(loom_engine_create(&plain, &c));
    CHECK(checkpoint_roundtrip(b, plain, mf, path, 3) == LOOM_EINVAL && strstr(loom_errmsg(), "dp is central"),
          "resume without --dp refused: %s", loom_errmsg());
    loom_engine_free(plain);
    loom_engine_free(a);
    loom_engine_free(b);
    loom_engine_free(b2);
    loom_tvec_free(mf);
    test_rmtree(dir);
    free_vectors(u, N);
}

int main(void) {
    central_noise_scale();
    central_zero_noise_is_uniform_fedavg();
    clip_bounds_influence();
    local_privatize();
    local_in_run_fit();
    adaptive_quantile();
    budget();
    refusals();
    resume_clip();
    return test_summary();
}
