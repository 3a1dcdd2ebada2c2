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

/* ---- the sorting network against a full sort, for many n ---- */

static void test_network(void) {
    /* n from 1 to 257 (above 256 the selection path), dim 70 (two blocks of 32 and a partial one),
     * values on a coarse grid so that ties are common. The median must equal the sorted column's middle
     * (or the mean of the two middle values) exactly; the trimmed mean the ascending double sum of the
     * sorted column's ranks [k, n - k) divided by n - 2k, exactly. */
    enum { D = 70 };
    static const size_t ns[] = {1, 2, 3, 4, 5, 7, 8, 16, 17, 31, 64, 100, 129, 256, 257};
    uint64_t s = 5;
    float *buf = malloc(257 * D * sizeof *buf), col[257];
    const float *u[257];
    double out[D];
    for (size_t q = 0; q < sizeof ns / sizeof ns[0]; q++) {
        size_t n = ns[q];
        for (size_t i = 0; i < n * D; i++) buf[i] = (float)rint(8 * test_normal(&s)) / 8;
        for (size_t i = 0; i < n; i++) u[i] = buf + i * D;
        loom_robust_config c = cfg(LOOM_ROBUST_MEDIAN, 0, 0, 0, 1);
        CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, n, D, NULL));
        size_t bad = 0;
        for (size_t j = 0; j < D; j++) {
            for (size_t i = 0; i < n; i++) col[i] = u[i][j];
            qsort(col, n, sizeof *col, flt_cmp);
            double m = n & 1 ? col[n / 2] : 0.5 * ((double)col[n / 2 - 1] + col[n / 2]);
            bad += out[j] != m;
        }
        CHECK(bad == 0, "median of n = %zu: %zu coordinates differ from the sorted reference", n, bad);
        const double betas[] = {0.0, 0.1, 0.25, 0.49};
        for (size_t b = 0; b < 4; b++) {
            c = cfg(LOOM_ROBUST_TRIMMED_MEAN, 0, 0, betas[b], 1);
            size_t k = (size_t)(betas[b] * (double)n);
            if (2 * k >= n) continue;
            CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, n, D, NULL));
            bad = 0;
            for (size_t j = 0; j < D; j++) {
                for (size_t i = 0; i < n; i++) col[i] = u[i][j];
                qsort(col, n, sizeof *col, flt_cmp);
                double m = 0;
                for (size_t i = k; i < n - k; i++) m += col[i];
                bad += out[j] != m / (double)(n - 2 * k);
            }
            CHECK(bad == 0, "trimmed mean of n = %zu, k = %zu: %zu coordinates differ from the sorted reference", n, k,
                  bad);
        }
    }
    free(buf);
}

/* ---- Bulyan ---- */

static void test_bulyan(void) {
    /* n = 7 updates of two values, f = 1 (n = 4f + 3): theta = 5 chosen, beta = 3 averaged.
     *   (1,0) (50,2) (4,2) (2,1) (-6,2) (0,3) (25,2)
     * Repeated Krum, squared distances:
     *   |R| = 7, 4 nearest: (0,3): 10 + 8 + 17 + 37 = 72 (to (1,0), (2,1), (4,2), (-6,2));
     *          (1,0): 10 + 2 + 13 + 53 = 78; (2,1): 8 + 2 + 5 + 65 = 80; (4,2): 135; (-6,2): 255;
     *          (25,2): 2176; (50,2): 7451                                          -> (0,3)
     *   |R| = 6, 3 nearest: (1,0): 2 + 13 + 53 = 68; (2,1): 2 + 5 + 65 = 72; (4,2): 118; ... -> (1,0)
     *   |R| = 5, 2 nearest: (2,1): 5 + 65 = 70; (4,2): 5 + 100 = 105; (-6,2): 165; ...      -> (2,1)
     *   |R| = 4, 1 nearest: (4,2): 100; (-6,2): 100; (25,2): 441; (50,2): 625 -> (4,2) or (-6,2), a tie
     *          broken by the content order
     *   |R| = 3, 0 nearest: every score 0 -> any of the three left.
     * Chosen: (0,3) (1,0) (2,1), one of (4,2) (-6,2), and one more of (-6,2) (4,2) (25,2) (50,2).
     * First value, the 3 closest to the median:
     *   {0,1,2,4,x}, x = 25 or 50: median 2; then 1 (distance 1, 4 is at 2); then 0 and 4 both at 2: the
     *     lower, 0 -> {0,1,2}. x = -6: sorted -6 0 1 2 4, median 1; 0 and 2 tie: 0; then 2 (1 < 7).
     *   {0,1,2,-6,x}, x = 25 or 50: median 1; 0 (tie with 2, lower); 2 -> {0,1,2}.
     *   Every case: (0 + 1 + 2) / 3 = 1 (a trimmed mean of {0,1,2,4,50} would give 7/3).
     * Second value: always {3, 0, 1, 2, 2}, sorted 0 1 2 2 3: median 2; then the other 2; then 1 and 3 tie
     *   at distance 1: the lower, 1 -> (1 + 2 + 2) / 3 = 5/3 (the upper would give 7/3).
     * Selected: (0,3) (1,0) (2,1) always, (25,2) and (50,2) not both. */
    const float v[7][2] = {{1, 0}, {50, 2}, {4, 2}, {2, 1}, {-6, 2}, {0, 3}, {25, 2}};
    const float *u[7];
    for (int i = 0; i < 7; i++) u[i] = v[i];
    double out[2];
    int sel[7];
    loom_robust_config c = cfg(LOOM_ROBUST_BULYAN, 1, 0, 0, 1);
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 7, 2, sel));
    CHECK(out[0] == 1 && out[1] == 5.0 / 3, "bulyan (%.17g, %.17g), want (1, 5/3)", out[0], out[1]);
    CHECK(sel[0] && sel[3] && sel[5] && sel[2] + sel[4] >= 1 && sel[1] + sel[6] <= 1 &&
              sel[0] + sel[1] + sel[2] + sel[3] + sel[4] + sel[5] + sel[6] == 5,
          "bulyan selection %d %d %d %d %d %d %d", sel[0], sel[1], sel[2], sel[3], sel[4], sel[5], sel[6]);
    /* 11 updates of two values, f = 2 (theta = 7, beta = 3): 7 honest (0, i), i = 0..6, and 4 attackers
     * (1000 k, 3), k = 1..4. While |R| >= 6 each honest update has at least |R| - f - 3 honest
     * neighbours within distance^2 36 and one attacker term of at most 1e6 + 9, while every attacker
     * score has at least two terms >= 1e6: the first 6 chosen are honest. The 7th (|R| = 5, one term)
     * is a tie-prone closest pair, honest or attacker. Either way the first value's median over the
     * chosen is 0 and its 3 closest values are 0: the aggregate's first value is 0. */
    float w2[11][2];
    const float *u2[11];
    for (int i = 0; i < 7; i++) w2[i][0] = 0, w2[i][1] = (float)i;
    for (int i = 7; i < 11; i++) w2[i][0] = 1000.0f * (float)(i - 6), w2[i][1] = 3;
    for (int i = 0; i < 11; i++) u2[i] = w2[i];
    double out2[2];
    int sel2[11];
    c.f = 2;
    CHECK_OK(loom_robust_aggregate(&c, out2, u2, NULL, 11, 2, sel2));
    CHECK(out2[0] == 0, "bulyan 11: first value %g", out2[0]);
    int ns = 0, nh = 0;
    for (int i = 0; i < 11; i++) ns += sel2[i], nh += i < 7 && sel2[i];
    CHECK(ns == 7 && nh >= 6, "bulyan 11 chose %d updates, %d honest", ns, nh);
}

/* ---- centered clipping ---- */

/* The formula itself: v <- v + (1/n) sum_i (u_i - v) min(1, tau / ||u_i - v||), iters times. */
static void cc_direct(double *v, const float *const *u, size_t n, size_t d, double tau, int iters) {
    double *nv = malloc(d * sizeof *nv);
    for (int it = 0; it < iters; it++) {
        for (size_t j = 0; j < d; j++) nv[j] = v[j];
        for (size_t i = 0; i < n; i++) {
            double r = 0;
            for (size_t j = 0; j < d; j++) r += (u[i][j] - v[j]) * (u[i][j] - v[j]);
            r = sqrt(r);
            double cl = r > 0 && tau / r < 1 ? tau / r : 1;
            for (size_t j = 0; j < d; j++) nv[j] += (u[i][j] - v[j]) * cl / (double)n;
        }
        for (size_t j = 0; j < d; j++) v[j] = nv[j];
    }
    free(nv);
}

static void test_centered_clip(void) {
    /* u = (3,4), (0,1), (-6,8), (0.5,0) from v0 = (0.5, 0.5), tau = 2, 3 iterations. One step by hand:
     * u - v0 = (2.5,3.5) norm 4.30 -> x 2/4.30; (-0.5,0.5) norm 0.71 -> kept; (-6.5,7.5) norm 9.92 ->
     * x 2/9.92; (0,-0.5) kept. Checked against cc_direct above, to 1e-12. */
    const float r[4][2] = {{3, 4}, {0, 1}, {-6, 8}, {0.5f, 0}};
    const float *u[4] = {r[0], r[1], r[2], r[3]};
    const double v0[2] = {0.5, 0.5};
    double out[2], ref[2];
    loom_robust_config c = cfg(LOOM_ROBUST_CENTERED_CLIP, 0, 0, 0, 1);
    c.tau = 2, c.cc_iters = 3, c.center = v0;
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 4, 2, NULL));
    ref[0] = v0[0], ref[1] = v0[1];
    cc_direct(ref, u, 4, 2, 2, 3);
    CHECK(fabs(out[0] - ref[0]) <= 1e-12 && fabs(out[1] - ref[1]) <= 1e-12, "centered-clip (%.15g, %.15g), direct (%.15g, %.15g)",
          out[0], out[1], ref[0], ref[1]);
    /* one step by hand from v0: (1/4) [(2.5,3.5) 2/sqrt(18.5) + (-0.5,0.5) + (-6.5,7.5) 2/sqrt(98.5) + (0,-0.5)] */
    c.cc_iters = 1;
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 4, 2, NULL));
    double a = 2 / sqrt(18.5), b = 2 / sqrt(98.5);
    CHECK_NEAR(out[0], 0.5 + (2.5 * a - 0.5 - 6.5 * b) / 4, 1e-14);
    CHECK_NEAR(out[1], 0.5 + (3.5 * a + 0.5 + 7.5 * b - 0.5) / 4, 1e-14);
    /* tau huge: nothing is clipped and one step from v = 0 is the plain mean ((-2.5) / 4, 13 / 4) */
    c.tau = 1e30, c.center = NULL;
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 4, 2, NULL));
    CHECK(out[0] == -2.5 / 4 && out[1] == 13.0 / 4, "centered-clip, tau huge: (%.17g, %.17g)", out[0], out[1]);
    /* through the pipeline: the second round starts from the first round's aggregate */
    c.tau = 0.5, c.cc_iters = 1, c.center = NULL;
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, 2);
    pc.aggregator = &loom_agg_robust;
    pc.aggregator_config = &c;
    loom_pipeline *p = NULL;
    CHECK_OK(loom_pipeline_create(&p, &pc));
    float x[2] = {0, 0};
    double a1[2], a2[2];
    CHECK_OK(loom_robust_aggregate(&c, a1, u, NULL, 4, 2, NULL));
    loom_robust_config c2 = c;
    c2.center = a1;
    CHECK_OK(loom_robust_aggregate(&c2, a2, u, NULL, 4, 2, NULL));
    for (int round = 0; round < 2 && p; round++) {
        CHECK_OK(loom_pipeline_begin_round(p, round));
        for (int i = 0; i < 4; i++) CHECK_OK(loom_pipeline_add(p, u[i], 2, 1, NULL, NULL, NULL));
        CHECK_OK(loom_pipeline_end_round(p, x));
    }
    /* fedavg: x = a1 + a2 */
    CHECK(fabs(x[0] - (a1[0] + a2[0])) <= 1e-6 && fabs(x[1] - (a1[1] + a2[1])) <= 1e-6,
          "two rounds: (%g, %g), want (%g, %g)", x[0], x[1], a1[0] + a2[0], a1[1] + a2[1]);
    loom_pipeline_free(p);
    c.tau = 0;
    expect_refusal(&c, 3, "centered-clip: tau must be finite and > 0 (got 0)");
    c.tau = 1, c.cc_iters = 0;
    expect_refusal(&c, 3, "centered-clip: iters must be >= 1 (got 0)");
}

/* ---- FLTrust ---- */

static void test_fltrust(void) {
    /* g0 = (3, 4), ||g0|| = 5. u1 = (1, 0): cos 0.6, rescaled (5, 0); u2 = (0, 2): cos 0.8, rescaled
     * (0, 5); u3 = (-6, -8) = -2 g0: cos -1, trust 0. Aggregate (0.6 (5,0) + 0.8 (0,5)) / 1.4 =
     * (3, 4) / 1.4 = (15/7, 20/7). */
    const float g0[2] = {3, 4}, r[3][2] = {{1, 0}, {0, 2}, {-6, -8}};
    const float *u[3] = {r[0], r[1], r[2]};
    double out[2];
    loom_robust_config c = cfg(LOOM_ROBUST_FLTRUST, 0, 0, 0, 1);
    c.server_update = g0;
    CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, 3, 2, NULL));
    CHECK_NEAR(out[0], 15.0 / 7, 1e-14);
    CHECK_NEAR(out[1], 20.0 / 7, 1e-14);
    /* only the opposite update: trust 0 for all, the zero update */
    CHECK_OK(loom_robust_aggregate(&c, out, u + 2, NULL, 1, 2, NULL));
    CHECK(out[0] == 0 && out[1] == 0, "fltrust, all opposite: (%g, %g)", out[0], out[1]);
    /* one update (0, 0.1) rescaled to ||g0|| = 5: (0, 5) whatever its length */
    const float tiny[2] = {0, 0.1f};
    const float *ut[1] = {tiny};
    CHECK_OK(loom_robust_aggregate(&c, out, ut, NULL, 1, 2, NULL));
    CHECK(out[0] == 0 && fabs(out[1] - 5) <= 1e-12, "fltrust rescaling: (%g, %g)", out[0], out[1]);
    c.server_update = NULL;
    expect_refusal(&c, 3, "fltrust: the server update is missing");
    /* through the pipeline: it wants a reference, fails without one, takes one each round */
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, 2);
    pc.aggregator = &loom_agg_robust;
    pc.aggregator_config = &c;
    loom_pipeline *p = NULL;
    CHECK_OK(loom_pipeline_create(&p, &pc));
    if (!p) return;
    CHECK(loom_pipeline_wants_reference(p) == 1, "fltrust wants a reference");
    float x[2] = {0, 0};
    CHECK_OK(loom_pipeline_begin_round(p, 0));
    for (int i = 0; i < 3; i++) CHECK_OK(loom_pipeline_add(p, u[i], 2, 1, NULL, NULL, NULL));
    int rc = loom_pipeline_end_round(p, x);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "fltrust: the server update is missing"), "no reference: %d %s",
          rc, loom_errmsg());
    CHECK_OK(loom_pipeline_begin_round(p, 1));
    CHECK_OK(loom_pipeline_set_reference(p, g0, 2));
    for (int i = 0; i < 3; i++) CHECK_OK(loom_pipeline_add(p, u[i], 2, 1, NULL, NULL, NULL));
    CHECK_OK(loom_pipeline_end_round(p, x));
    CHECK(fabsf(x[0] - 15.0f / 7) <= 1e-6f && fabsf(x[1] - 20.0f / 7) <= 1e-6f, "fltrust round: (%g, %g)", x[0], x[1]);
    /* the reference does not carry over into the next round */
    CHECK_OK(loom_pipeline_begin_round(p, 2));
    for (int i = 0; i < 3; i++) CHECK_OK(loom_pipeline_add(p, u[i], 2, 1, NULL, NULL, NULL));
    rc = loom_pipeline_end_round(p, x);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "server update is missing"), "stale reference: %d %s", rc,
          loom_errmsg());
    loom_pipeline_free(p);
    /* another rule neither wants nor takes one */
    loom_robust_config m = cfg(LOOM_ROBUST_MEDIAN, 0, 0, 0, 1);
    pc.aggregator_config = &m;
    CHECK_OK(loom_pipeline_create(&p, &pc));
    if (!p) return;
    CHECK(loom_pipeline_wants_reference(p) == 0, "median wants no reference");
    CHECK_OK(loom_pipeline_begin_round(p, 0));
    rc = loom_pipeline_set_reference(p, g0, 2);
    CHECK(rc == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "median takes no reference update"), "median ref: %d %s", rc,
          loom_errmsg());
    loom_pipeline_abort_round(p);
    loom_pipeline_free(p);
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
                                        cfg(LOOM_ROBUST_GEOMEDIAN, 0, 0, 0, 1), cfg(LOOM_ROBUST_BULYAN, F, 0, 0, 1),
                                        cfg(LOOM_ROBUST_CENTERED_CLIP, 0, 0, 0, 1), cfg(LOOM_ROBUST_FLTRUST, 0, 0, 0, 1)};
    /* centered clipping from 0 with tau = 10, 30 steps: it walks to the honest cluster (norm ~45 away,
     * 0.6 tau a step), where the attackers' clipped pull leaves it about tau f / (n - f) = 2.5 off in
     * norm, RMS 2.5 / sqrt(2000) = 0.06. FLTrust with the honest mean as the server's update gives the
     * attackers (cosine -1) no trust. */
    float *g0 = malloc(D * sizeof *g0);
    for (size_t j = 0; j < D; j++) g0[j] = (float)hm[j];
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        loom_robust_config c = rules[r];
        c.tau = 10, c.cc_iters = 30, c.server_update = g0;
        CHECK_OK(loom_robust_aggregate(&c, out, u, NULL, N, D, NULL));
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
    free(buf), free(hm), free(out), free(g0);
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
    c = cfg(LOOM_ROBUST_BULYAN, 1, 0, 0, 1); /* 4 * 1 + 3 = 7 > 6 */
    expect_refusal(&c, 6, "bulyan needs n >= 4f + 3 updates: f = 1 needs at least 7, got n = 6");
    c.f = -2;
    expect_refusal(&c, 8, "bulyan: f must be >= 0 (got -2)");
    loom_robust_rule r;
    CHECK(loom_robust_rule_parse("bogus", &r) == LOOM_EINVAL && strstr(loom_errmsg(), "bogus"), "%s", loom_errmsg());
    CHECK(loom_robust_rule_parse("multi-krum", &r) == LOOM_OK && r == LOOM_ROBUST_MULTI_KRUM, "parse multi-krum");
    const char *names[] = {"median", "trimmed-mean", "krum", "multi-krum", "bulyan", "norm-bound", "geomedian",
                           "centered-clip", "fltrust"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        CHECK(loom_robust_rule_parse(names[i], &r) == LOOM_OK && strcmp(loom_robust_rule_name(r), names[i]) == 0,
              "rule %s", names[i]);
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

static loom_robust_config cc_cfg(void) {
    loom_robust_config c = cfg(LOOM_ROBUST_CENTERED_CLIP, 0, 0, 0, 1);
    c.tau = 0.5, c.cc_iters = 3;
    return c;
}

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
    if (c->server_update) CHECK_OK(loom_pipeline_set_reference(p, c->server_update, d));
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
                                        cfg(LOOM_ROBUST_NORM_BOUND, 0, 0, 0, 1e5), cfg(LOOM_ROBUST_GEOMEDIAN, 0, 0, 0, 1),
                                        cfg(LOOM_ROBUST_BULYAN, 1, 0, 0, 1), cc_cfg(), cfg(LOOM_ROBUST_FLTRUST, 0, 0, 0, 1)};
    float x0[D], x1[D], x2[D];
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        loom_robust_config rc = rules[r];
        if (rc.rule == LOOM_ROBUST_FLTRUST) rc.server_update = buf[2];
        round_in_order(&rc, u, w, fwd, N, D, x0);
        round_in_order(&rc, u, w, rev, N, D, x1);
        round_in_order(&rc, u, w, mix, N, D, x2);
        CHECK(memcmp(x0, x1, sizeof x0) == 0 && memcmp(x0, x2, sizeof x0) == 0, "%s depends on the order of adds",
              loom_robust_rule_name(rules[r].rule));
        /* the double aggregate itself (the float global above hides the last bits) */
        const int *ords[3] = {fwd, rev, mix};
        double out[3][D];
        for (int k = 0; k < 3; k++) {
            const float *up[N];
            double wp[N];
            for (int i = 0; i < N; i++) up[i] = u[ords[k][i]], wp[i] = w[ords[k][i]];
            CHECK_OK(loom_robust_aggregate(&rc, out[k], up, wp, N, D, NULL));
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
    /* bulyan on 4 files with f = 1 needs 4 * 1 + 3 = 7; fltrust without the server's update */
    rc = run_cli(dir, "--rule bulyan --f 1 --out x.safetensors u0.safetensors u1.safetensors u2.safetensors "
                 "u0.safetensors", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "bulyan needs n >= 4f + 3 updates: f = 1 needs at least 7, got n = 4"), "bulyan: %d %s",
          rc, err);
    rc = run_cli(dir, "--rule fltrust --out x.safetensors u0.safetensors u1.safetensors", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "--rule fltrust needs --server-update FILE: the server update") &&
              strstr(err, "is missing"), "fltrust: %d %s", rc, err);
    rc = run_cli(dir, "--rule centered-clip --tau 0 --out x.safetensors u0.safetensors", err, sizeof err);
    CHECK(rc != 0 && strstr(err, "centered-clip: tau must be finite and > 0 (got 0)"), "tau: %d %s", rc, err);
    /* fltrust with the server update u0 and the updates u0 and -u0 (in a short file: refused first) */
    rc = run_cli(dir, "--rule fltrust --server-update short.safetensors --out x.safetensors u0.safetensors", err,
                 sizeof err);
    CHECK(rc != 0 && strstr(err, "short.safetensors: tensor 'b' has another shape"), "short server update: %d %s", rc,
          err);
    float neg[7];
    for (int i = 0; i < 7; i++) neg[i] = -2 * v[0][i];
    snprintf(path, sizeof path, "%s/neg.safetensors", dir);
    write_update(path, neg, 0);
    /* u0 has trust 1 and keeps its norm, -2 u0 trust 0: the aggregate is u0 */
    rc = run_cli(dir, "--rule fltrust --server-update u0.safetensors --out t.safetensors neg.safetensors u0.safetensors",
                 err, sizeof err);
    CHECK(rc == 0, "fltrust: %d %s", rc, err);
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
    if (rc == 0 && loom_st_open(&f, path) == LOOM_OK) {
        float got[7] = {0};
        loom_st_to_f32(loom_st_find(f, "a"), got, 4);
        loom_st_to_f32(loom_st_find(f, "b"), got + 4, 3);
        double e = 0;
        for (int i = 0; i < 7; i++) e = fmax(e, fabs(got[i] - v[0][i]));
        CHECK(e <= 1e-5, "fltrust aggregate off u0 by %g", e);
        loom_st_close(f);
    }
    test_rmtree(dir);
}

int main(void) {
    test_coordinatewise_exact();
    test_coordinatewise_reference();
    test_network();
    test_krum();
    test_bulyan();
    test_centered_clip();
    test_fltrust();
    test_norm_bound();
    test_geomedian();
    test_sign_flip();
    test_refusals();
    test_order();
    test_cli();
    return test_summary();
}
