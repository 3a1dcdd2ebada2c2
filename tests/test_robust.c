/* Robust aggregators: each rule on hand-built inputs with the answer worked out in the comments, the
 * coordinate-wise rules against a full-sort reference, f sign-flip attackers among n, refusals, and
 * independence from the order of the updates. */
#include <string.h>
#include <sys/wait.h>

#include "loom/core.h"
#include "loom/pipeline.h"
#include "loom/safetensors.h"
#include "test.h"

static void expect_refusal(const loom_robust_config *c, size_t n, const char *needle);

static loom_robust_config cfg(loom_robust_rule r, int f, int m, double beta, double bound) {
    loom_robust_config c;
    loom_robust_defaults(&c, r);
    c.f = f, c.m = m, c.beta = beta, c.bound = bound;
    return c;
}

/* ---- median and trimmed mean, exact ---- */

static void test_coordinatewise_exact(void) {
    /* columns: {1, 4, 2, 100, -7} sorted -7 1 2 4 100: median 2, trimmed (k = 1) (1 + 2 + 4) / 3 = 7/3;
     *          {10, 20, 30, -50, 0} sorted -50 0 10 20 30: median 10, trimmed (0 + 10 + 20) / 3 = 10;
     *          {-1, -2, -3, -4, -5}: median -3, trimmed -3. */
    const float r[5][3] = {{1, 10, -1}, {4, 20, -2}, {2, 30, -3}, {100, -50, -4}, {-7, 0, -5}};
    const float *u[5] = {r[0], r[1], r[2], r[3], r[4]};
    double out[3];
    loom_robust_config c = cfg(LOOM_ROBUST_MEDIAN, 0, 0, 0, 1);
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 5, 3, NULL));
    CHECK(out[0] == 2 && out[1] == 10 && out[2] == -3, "median %g %g %g", out[0], out[1], out[2]);
    c = cfg(LOOM_ROBUST_TRIMMED_MEAN, 0, 0, 0.2, 1); /* floor(0.2 * 5) = 1 from each end */
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 5, 3, NULL));
    CHECK(out[0] == 7.0 / 3 && out[1] == 10 && out[2] == -3, "trimmed %.17g %g %g", out[0], out[1], out[2]);
    c.beta = 0.4; /* k = 2: only the middle value is left, the median */
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 5, 3, NULL));
    CHECK(out[0] == 2 && out[1] == 10 && out[2] == -3, "trimmed 0.4 %g %g %g", out[0], out[1], out[2]);
    c.beta = 0; /* nothing cut: the plain mean (100 / 5 = 20, -10 / 5 = -2, -15 / 5 = -3) */
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 5, 3, NULL));
    CHECK(out[0] == 20 && out[1] == 2 && out[2] == -3, "trimmed 0 %g %g %g", out[0], out[1], out[2]);
    /* even n = 4: {1, 2, 3, 10} -> (2 + 3) / 2 = 2.5; {4, 3, 2, 1} -> 2.5; weights do not count */
    const float e[4][2] = {{1, 4}, {2, 3}, {3, 2}, {10, 1}};
    const float *ue[4] = {e[0], e[1], e[2], e[3]};
    const double w[4] = {1, 1, 1, 1000};
    c = cfg(LOOM_ROBUST_MEDIAN, 0, 0, 0, 1);
    CHECK_OK(loom_robust_aggregate(&c, out, ue, w, 4, 2, NULL));
    CHECK(out[0] == 2.5 && out[1] == 2.5, "even median %g %g", out[0], out[1]);
}

static int flt_cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Against a full sort per coordinate, on a vector long enough for the parallel path, with many ties
 * (values on a coarse grid). */
static void test_coordinatewise_reference(void) {
    enum { N = 9, D = 70001 };
    float *buf = malloc((size_t)N * D * sizeof *buf);
    double *out = malloc(D * sizeof *out);
    const float *u[N];
    uint64_t s = 7;
    for (size_t i = 0; i < (size_t)N * D; i++) buf[i] = (float)rint(4 * test_normal(&s)) / 4;
    for (int i = 0; i < N; i++) u[i] = buf + (size_t)i * D;
    double worst_med = 0, worst_tm = 0;
    loom_robust_config cm = cfg(LOOM_ROBUST_MEDIAN, 0, 0, 0, 1), ct = cfg(LOOM_ROBUST_TRIMMED_MEAN, 0, 0, 0.25, 1);
    CHECK_OK(loom_robust_aggregate(&cm, out, u, NULL, N, D, NULL));
    float col[N];
    for (size_t j = 0; j < D; j++) {
        for (int i = 0; i < N; i++) col[i] = u[i][j];
        qsort(col, N, sizeof *col, flt_cmp);
        worst_med = fmax(worst_med, fabs(out[j] - col[N / 2]));
    }
    CHECK_OK(loom_robust_aggregate(&ct, out, u, NULL, N, D, NULL));
    for (size_t j = 0; j < D; j++) {
        for (int i = 0; i < N; i++) col[i] = u[i][j];
        qsort(col, N, sizeof *col, flt_cmp);
        double m = 0; /* floor(0.25 * 9) = 2 cut from each end: sorted col[2..7) */
        for (int i = 2; i < N - 2; i++) m += col[i];
        worst_tm = fmax(worst_tm, fabs(out[j] - m / (N - 4)));
    }
    CHECK(worst_med == 0, "median differs from the sorted reference by %g", worst_med);
    CHECK(worst_tm <= 1e-15, "trimmed mean differs from the sorted reference by %g", worst_tm);
    free(buf);
    free(out);
}

/* ---- Krum and Multi-Krum ---- */

static void test_krum(void) {
    /* n = 7, f = 2 (n = 2f + 3): honest (0,0) (1,0) (0,1) (-1,0) (0,-1), attackers (100,100) (100,101).
     * Each score sums the n - f - 2 = 3 smallest squared distances: (0,0): 1 + 1 + 1 = 3; (1,0): to
     * (0,0) 1, to (0,1) and (0,-1) 2 each: 5 (same for the other three); an attacker: 1 + two distances
     * of about 2 * 100^2. Krum picks (0,0); Multi-Krum with m = n - f = 5 averages the honest five: (0,0). */
    const float r[7][2] = {{100, 100}, {1, 0}, {0, 1}, {0, 0}, {100, 101}, {-1, 0}, {0, -1}};
    const float *u[7];
    for (int i = 0; i < 7; i++) u[i] = r[i];
    double out[2];
    int sel[7];
    loom_robust_config c = cfg(LOOM_ROBUST_KRUM, 2, 0, 0, 1);
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 7, 2, sel));
    CHECK(out[0] == 0 && out[1] == 0, "krum chose (%g, %g)", out[0], out[1]);
    CHECK(sel[3] == 1 && sel[0] + sel[1] + sel[2] + sel[4] + sel[5] + sel[6] == 0, "krum selection %d %d %d %d %d %d %d",
          sel[0], sel[1], sel[2], sel[3], sel[4], sel[5], sel[6]);
    c = cfg(LOOM_ROBUST_MULTI_KRUM, 2, 0, 0, 1);
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 7, 2, sel));
    CHECK(out[0] == 0 && out[1] == 0, "multi-krum mean (%g, %g)", out[0], out[1]);
    CHECK(sel[0] == 0 && sel[4] == 0 && sel[1] + sel[2] + sel[3] + sel[5] + sel[6] == 5, "multi-krum dropped %d %d",
          sel[0], sel[4]);
    /* m = 5 with weights: honest (1,0) has weight 3, the other four 1:
     * mean = (3 (1,0) + (0,1) + (0,0) + (-1,0) + (0,-1)) / 7 = (2/7, 0) */
    const double w[7] = {1, 3, 1, 1, 1, 1, 1};
    c.m = 5;
    CHECK_OK(loom_robust_aggregate(&c, out, u, w, 7, 2, NULL));
    CHECK_NEAR(out[0], 2.0 / 7, 1e-15);
    CHECK_NEAR(out[1], 0, 1e-15);
}

/* ---- norm bounding ---- */

static void test_norm_bound(void) {
    /* bound 1: (3,4) has norm 5 -> (0.6, 0.8); (0.5, 0) stays. Weights 1 and 3:
     * ((0.6, 0.8) + 3 (0.5, 0)) / 4 = (0.525, 0.2). */
    const float a[2] = {3, 4}, b[2] = {0.5f, 0};
    const float *u[2] = {a, b};
    const double w[2] = {1, 3};
    double out[2];
    loom_robust_config c = cfg(LOOM_ROBUST_NORM_BOUND, 0, 0, 0, 1);
    CHECK_OK(loom_robust_aggregate(&c, out, u, w, 2, 2, NULL));
    CHECK_NEAR(out[0], 0.525, 1e-15);
    CHECK_NEAR(out[1], 0.2, 1e-15);
}

/* ---- geometric median ---- */

static double gm_obj(const float p[][2], const double *w, int n, double x, double y) {
    double s = 0;
    for (int i = 0; i < n; i++) s += w[i] * hypot(x - p[i][0], y - p[i][1]);
    return s;
}

static void test_geomedian(void) {
    /* Five weighted points in the plane; the optimum is found by brute force: a grid of step 0.01 over
     * [-2, 6]^2, then grids of steps 1e-4 and 1e-6 around the best point so far. */
    const float p[5][2] = {{0, 0}, {4, 0}, {0, 3}, {5, 5}, {1, -2}};
    const double w[5] = {1, 2, 1, 1, 3};
    const float *u[5] = {p[0], p[1], p[2], p[3], p[4]};
    double bx = 0, by = 0, best = INFINITY;
    for (int a = 0; a <= 800; a++)
        for (int b = 0; b <= 800; b++) {
            double x = -2 + 0.01 * a, y = -2 + 0.01 * b, o = gm_obj(p, w, 5, x, y);
            if (o < best) best = o, bx = x, by = y;
        }
    for (double h = 1e-4; h >= 1e-6; h /= 100) { /* the objective is convex: refine around the best */
        double cx = bx, cy = by;
        for (int a = -100; a <= 100; a++)
            for (int b = -100; b <= 100; b++) {
                double x = cx + h * a, y = cy + h * b, o = gm_obj(p, w, 5, x, y);
                if (o < best) best = o, bx = x, by = y;
            }
    }
    double out[2];
    loom_robust_config c = cfg(LOOM_ROBUST_GEOMEDIAN, 0, 0, 0, 1);
    CHECK_OK(loom_robust_aggregate(&c, out, u, w, 5, 2, NULL));
    /* the iterations stop when the objective improves by less than 1e-10 of itself: within 1e-4 of the
     * point, 1e-9 of the objective */
    CHECK(hypot(out[0] - bx, out[1] - by) <= 1e-4, "geomedian (%.7f, %.7f), brute force (%.7f, %.7f)", out[0], out[1],
          bx, by);
    CHECK(gm_obj(p, w, 5, out[0], out[1]) <= best * (1 + 1e-9), "objective %.12g > brute force %.12g",
          gm_obj(p, w, 5, out[0], out[1]), best);
    c.iters = 0;
    expect_refusal(&c, 5, "iters must be >= 1");
}

/* ---- f sign-flip attackers among n ---- */

static void test_sign_flip(void) {
    /* n = 20, f = 4, d = 2000. Honest u_i = 1 + 0.1 z (z standard normal per value); each attacker sends
     * -10 times the honest mean. The plain mean moves by 4/20 * 11 = 2.2 per coordinate (RMS about 2.2);
     * every robust rule must stay within RMS 2 sigma = 0.2 of the honest mean (the median and trimmed
     * mean shift by a few tenths of sigma, Krum picks one honest update, about 1.03 sigma away; the geometric
     * median's breakdown point is 1/2). */
    enum { N = 20, F = 4, D = 2000 };
    const double sigma = 0.1;
    float *buf = malloc((size_t)N * D * sizeof *buf);
    double *hm = calloc(D, sizeof *hm), *out = malloc(D * sizeof *out);
    const float *u[N];
    uint64_t s = 11;
    for (int i = 0; i < N - F; i++)
        for (size_t j = 0; j < D; j++) {
            buf[(size_t)i * D + j] = (float)(1 + sigma * test_normal(&s));
            hm[j] += buf[(size_t)i * D + j] / (double)(N - F);
        }
    for (int i = N - F; i < N; i++)
        for (size_t j = 0; j < D; j++) buf[(size_t)i * D + j] = (float)(-10 * hm[j]);
    for (int i = 0; i < N; i++) u[i] = buf + (size_t)i * D;
    /* interleave attackers among the honest: the order must not matter anyway */
    const float *t = u[2];
    u[2] = u[N - 1], u[N - 1] = t;
    const loom_robust_config rules[] = {cfg(LOOM_ROBUST_MEDIAN, 0, 0, 0, 1), cfg(LOOM_ROBUST_TRIMMED_MEAN, 0, 0, 0.2, 1),
                                        cfg(LOOM_ROBUST_KRUM, F, 0, 0, 1), cfg(LOOM_ROBUST_MULTI_KRUM, F, 0, 0, 1),
                                        cfg(LOOM_ROBUST_GEOMEDIAN, 0, 0, 0, 1)};
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        CHECK_OK(loom_robust_aggregate(&rules[r], out, u, NULL, N, D, NULL));
        double e = 0;
        for (size_t j = 0; j < D; j++) e += (out[j] - hm[j]) * (out[j] - hm[j]);
        e = sqrt(e / D);
        CHECK(e <= 2 * sigma, "%s: RMS distance to the honest mean %g > %g", loom_robust_rule_name(rules[r].rule), e,
              2 * sigma);
    }
    double e = 0; /* the plain mean, for contrast */
    for (size_t j = 0; j < D; j++) {
        double m = 0;
        for (int i = 0; i < N; i++) m += u[i][j];
        e += (m / N - hm[j]) * (m / N - hm[j]);
    }
    e = sqrt(e / D);
    CHECK(e > 2.0, "plain mean moved only %g", e);
    free(buf), free(hm), free(out);
}

/* ---- refusals ---- */

static void expect_refusal(const loom_robust_config *c, size_t n, const char *needle) {
    float z[2] = {0, 0};
    const float *u[8] = {z, z, z, z, z, z, z, z};
    double out[2];
    int rc = loom_robust_aggregate(c, out, u, NULL, n, 2, NULL);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), needle), "%s n=%zu: rc %d, '%s' (want '%s')",
          loom_robust_rule_name(c->rule), n, rc, loom_errmsg(), needle);
}

static void test_refusals(void) {
    loom_robust_config c = cfg(LOOM_ROBUST_KRUM, 2, 0, 0, 1);
    expect_refusal(&c, 6, "n >= 2f + 3 updates: f = 2 needs at least 7, got n = 6"); /* 2 * 2 + 3 = 7 > 6 */
    c.f = -1;
    expect_refusal(&c, 8, "f must be >= 0");
    c = cfg(LOOM_ROBUST_MULTI_KRUM, 2, 6, 0, 1); /* m = 6 > n - f = 5 */
    expect_refusal(&c, 7, "m = 6 with n = 7, f = 2");
    c = cfg(LOOM_ROBUST_TRIMMED_MEAN, 0, 0, 0.5, 1);
    expect_refusal(&c, 8, "beta must be in [0, 0.5)");
    c.beta = -0.1; /* (beta < 0.5 implies 2 floor(beta n) < n for every n) */
    expect_refusal(&c, 8, "beta must be in [0, 0.5)");
    c = cfg(LOOM_ROBUST_NORM_BOUND, 0, 0, 0, 0);
    expect_refusal(&c, 3, "bound must be finite and > 0");
    loom_robust_rule r;
    CHECK(loom_robust_rule_parse("bogus", &r) == LOOM_EINVAL && strstr(loom_errmsg(), "bogus"), "%s", loom_errmsg());
    CHECK(loom_robust_rule_parse("multi-krum", &r) == LOOM_OK && r == LOOM_ROBUST_MULTI_KRUM, "parse multi-krum");
    /* the pipeline refuses a robust rule with scaffold's control variates, and a bad configuration */
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, 4);
    pc.strategy = "scaffold";
    loom_strategy_defaults("scaffold", &pc.sp);
    pc.aggregator = &loom_agg_robust;
    loom_pipeline *p = NULL;
    int rc = loom_pipeline_create(&p, &pc);
    CHECK(rc == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "control variates"), "scaffold: %d %s", rc, loom_errmsg());
    loom_pipeline_defaults(&pc, 4);
    loom_robust_config bad = cfg(LOOM_ROBUST_TRIMMED_MEAN, 0, 0, 0.7, 1);
    pc.aggregator = &loom_agg_robust;
    pc.aggregator_config = &bad;
    rc = loom_pipeline_create(&p, &pc);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "beta must be"), "bad beta: %d %s", rc, loom_errmsg());
}

/* ---- order independence, through the pipeline ---- */

static void round_in_order(const loom_robust_config *c, const float *const *u, const double *w, const int *ord,
                           size_t n, size_t d, float *x) {
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, d);
    pc.aggregator = &loom_agg_robust;
    pc.aggregator_config = c;
    loom_pipeline *p = NULL;
    CHECK_OK(loom_pipeline_create(&p, &pc));
    if (!p) return;
    memset(x, 0, d * sizeof *x);
    CHECK_OK(loom_pipeline_begin_round(p, 0));
    for (size_t i = 0; i < n; i++) CHECK_OK(loom_pipeline_add(p, u[ord[i]], d, w[ord[i]], NULL, NULL, NULL));
    CHECK_OK(loom_pipeline_end_round(p, x));
    loom_pipeline_free(p);
}

static void test_order(void) {
    /* 9 random updates with weights, two of them identical but for the weight; each rule's result
     * bit-identical whatever the order of the adds. */
    enum { N = 9, D = 301 };
    float buf[N][D];
    const float *u[N];
    const double w[N] = {1, 2, 3, 1, 5, 1, 2, 7, 1};
    uint64_t s = 3;
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < D; j++) /* magnitudes 2^-20 .. 2^16, so that double sums round and an order shows */
            buf[i][j] = (float)ldexp(test_normal(&s), (int)((j * 7 + i * 13) % 37) - 20);
        u[i] = buf[i];
    }
    memcpy(buf[5], buf[1], sizeof buf[1]);
    const int fwd[N] = {0, 1, 2, 3, 4, 5, 6, 7, 8}, rev[N] = {8, 7, 6, 5, 4, 3, 2, 1, 0},
              mix[N] = {4, 1, 8, 0, 5, 3, 7, 2, 6};
    const loom_robust_config rules[] = {cfg(LOOM_ROBUST_MEDIAN, 0, 0, 0, 1), cfg(LOOM_ROBUST_TRIMMED_MEAN, 0, 0, 0.2, 1),
                                        cfg(LOOM_ROBUST_KRUM, 3, 0, 0, 1), cfg(LOOM_ROBUST_MULTI_KRUM, 2, 4, 0, 1),
                                        cfg(LOOM_ROBUST_NORM_BOUND, 0, 0, 0, 1e5), cfg(LOOM_ROBUST_GEOMEDIAN, 0, 0, 0, 1)};
    float x0[D], x1[D], x2[D];
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        round_in_order(&rules[r], u, w, fwd, N, D, x0);
        round_in_order(&rules[r], u, w, rev, N, D, x1);
        round_in_order(&rules[r], u, w, mix, N, D, x2);
        CHECK(memcmp(x0, x1, sizeof x0) == 0 && memcmp(x0, x2, sizeof x0) == 0, "%s depends on the order of adds",
              loom_robust_rule_name(rules[r].rule));
        /* the double aggregate itself (the float global above hides the last bits) */
        const int *ords[3] = {fwd, rev, mix};
        double out[3][D];
        for (int k = 0; k < 3; k++) {
            const float *up[N];
            double wp[N];
            for (int i = 0; i < N; i++) up[i] = u[ords[k][i]], wp[i] = w[ords[k][i]];
            CHECK_OK(loom_robust_aggregate(&rules[r], out[k], up, wp, N, D, NULL));
        }
        CHECK(memcmp(out[0], out[1], sizeof out[0]) == 0 && memcmp(out[0], out[2], sizeof out[0]) == 0,
              "%s: the aggregate depends on the order of the updates", loom_robust_rule_name(rules[r].rule));
    }
}


/* ---- loom aggregate ---- */

/* A file with tensors "a" (2 x 2) and "b" (3, or 2 when short) from v (7 values). */
static void write_update(const char *path, const float *v, int short_b) {
    loom_st_writer *w = NULL;
    const int64_t sa[2] = {2, 2}, sb[1] = {short_b ? 2 : 3};
    CHECK_OK(loom_st_writer_create(&w));
    CHECK_OK(loom_st_writer_add_f32(w, "a", LOOM_DT_F32, 2, sa, v));
    CHECK_OK(loom_st_writer_add_f32(w, "b", LOOM_DT_F32, 1, sb, v + 4));
    CHECK_OK(loom_st_writer_write(w, path));
    loom_st_writer_free(w);
}

/* Runs loom aggregate with args (in dir); returns its exit status, stderr in err. */
static int run_cli(const char *dir, const char *args, char *err, size_t n) {
    const char *bin = getenv("LOOM_BIN"); /* set by CTest; else the build directory's ./loom */
    char cmd[9000], abs[4096];
    if (!bin || !*bin) bin = realpath("loom", abs) ? abs : "loom";
    snprintf(cmd, sizeof cmd, "cd '%s' && '%s' aggregate %s > out.txt 2> err.txt", dir, bin, args);
    int st = system(cmd);
    snprintf(cmd, sizeof cmd, "%s/err.txt", dir);
    err[0] = 0;
    FILE *f = fopen(cmd, "r");
    if (f) {
        size_t k = fread(err, 1, n - 1, f);
        err[k] = 0;
        fclose(f);
    }
    return st == -1 ? -1 : WEXITSTATUS(st);
}

static void test_cli(void) {
    char dir[256], path[512], err[4096];
    test_tmpdir(dir, sizeof dir);
    /* three updates; the median per value is the middle one of each column */
    const float v[3][7] = {{1, 2, 3, 4, 5, 6, 7}, {-1, 20, 0, 4, 50, -6, 8}, {3, 0, 30, -4, 0, 60, 9}};
    const float med[7] = {1, 2, 3, 4, 5, 6, 8};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/u%d.safetensors", dir, i);
        write_update(path, v[i], 0);
    }
    int rc = run_cli(dir, "--rule median --out m.safetensors u0.safetensors u1.safetensors u2.safetensors", err,
                     sizeof err);
    CHECK(rc == 0, "loom aggregate median: %d %s", rc, err);
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    loom_st_file *f = NULL;
    if (rc == 0 && loom_st_open(&f, path) == LOOM_OK) {
        const loom_st_tensor *a = loom_st_find(f, "a"), *b = loom_st_find(f, "b");
        float got[7] = {0};
        CHECK(a && b && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 2 && b->numel == 3, "output shapes");
        if (a && b && a->numel == 4 && b->numel == 3) {
            loom_st_to_f32(a, got, 4);
            loom_st_to_f32(b, got + 4, 3);
        }
        CHECK(memcmp(got, med, sizeof med) == 0, "median %g %g %g %g %g %g %g", got[0], got[1], got[2], got[3], got[4],
              got[5], got[6]);
        loom_st_close(f);
    }
    /* weighted fedavg: (1 * u0 + 3 * u1) / 4, first value (1 - 3) / 4 = -0.5 */
    rc = run_cli(dir, "--rule fedavg --weights 1,3 --out a.safetensors u0.safetensors u1.safetensors", err, sizeof err);
    CHECK(rc == 0, "fedavg: %d %s", rc, err);
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    if (rc == 0 && loom_st_open(&f, path) == LOOM_OK) {
        float got[4] = {0};
        loom_st_to_f32(loom_st_find(f, "a"), got, 4);
        CHECK(got[0] == -0.5f && got[1] == 15.5f, "weighted mean %g %g", got[0], got[1]);
        loom_st_close(f);
    }
    /* refusals: another shape, a NaN, an impossible f, weights that do not match the files */
    snprintf(path, sizeof path, "%s/short.safetensors", dir);
    write_update(path, v[0], 1);
    rc = run_cli(dir, "--rule median --out x.safetensors u0.safetensors short.safetensors", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "short.safetensors: tensor 'b' has another shape"), "shape: %d %s", rc, err);
    const float bad[7] = {1, NAN, 3, 4, 5, 6, 7};
    snprintf(path, sizeof path, "%s/nan.safetensors", dir);
    write_update(path, bad, 0);
    rc = run_cli(dir, "--rule krum --f 1 --out x.safetensors u0.safetensors nan.safetensors u1.safetensors", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "krum needs n >= 2f + 3 updates: f = 1 needs at least 5, got n = 3"), "krum n=3: %d %s", rc, err);
    rc = run_cli(dir, "--rule median --out x.safetensors u0.safetensors nan.safetensors", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "nan.safetensors refused: update value 1 is NaN"), "nan: %d %s", rc, err);
    rc = run_cli(dir, "--rule median --weights 1,2,3 --out x.safetensors u0.safetensors u1.safetensors", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "--weights has more values"), "weights: %d %s", rc, err);
    rc = run_cli(dir, "--rule bulyan2 --out x.safetensors u0.safetensors", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "unknown robust aggregator 'bulyan2'"), "rule: %d %s", rc, err);
    test_rmtree(dir);
}

int main(void) {
    test_coordinatewise_exact();
    test_coordinatewise_reference();
    test_krum();
    test_norm_bound();
    test_geomedian();
    test_sign_flip();
    test_refusals();
    test_order();
    test_cli();
    return test_summary();
}
