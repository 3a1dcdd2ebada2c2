/* Privacy audit statistics (include/loom/audit.h): ROC AUC, TPR at a false-positive rate and canary
 * exposure against hand-computed cases and brute-force pair counts, ties, degenerate inputs; canary
 * formats and draws. */
#include "loom/audit.h"
#include "loom/core.h"
#include "test.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static int msg_has(const char *s) { return strstr(loom_errmsg(), s) != NULL; }

/* AUC by counting every (member, non-member) pair: the definition itself. */
static double auc_pairs(const double *p, size_t np, const double *q, size_t nn) {
    double w = 0;
    for (size_t i = 0; i < np; i++)
        for (size_t j = 0; j < nn; j++) w += p[i] > q[j] ? 1.0 : p[i] == q[j] ? 0.5 : 0.0;
    return w / ((double)np * (double)nn);
}

/* TPR at FPR <= alpha by trying every score as a threshold (and +inf). */
static double tpr_brute(const double *p, size_t np, const double *q, size_t nn, double alpha) {
    double best = 0;
    for (size_t k = 0; k < np + nn; k++) {
        double tau = k < np ? p[k] : q[k - np];
        size_t tp = 0, fp = 0;
        for (size_t i = 0; i < np; i++) tp += p[i] >= tau;
        for (size_t j = 0; j < nn; j++) fp += q[j] >= tau;
        if ((double)fp / (double)nn <= alpha && (double)tp / (double)np > best) best = (double)tp / (double)np;
    }
    return best;
}

static void test_auc_hand(void) {
    double auc;
    double p1[] = {3, 2}, n1[] = {1, 0};
    CHECK_OK(loom_audit_auc(p1, 2, n1, 2, &auc));
    CHECK_NEAR(auc, 1.0, 0);
    CHECK_OK(loom_audit_auc(n1, 2, p1, 2, &auc));
    CHECK_NEAR(auc, 0.0, 0);
    /* pairs (1,2) L (1,4) L (2,2) T (2,4) L (3,2) W (3,4) L: 1.5 / 6 */
    double p2[] = {1, 2, 3}, n2[] = {2, 4};
    CHECK_OK(loom_audit_auc(p2, 3, n2, 2, &auc));
    CHECK_NEAR(auc, 0.25, 0);
    /* all tied: one half */
    double p3[] = {5, 5}, n3[] = {5, 5, 5};
    CHECK_OK(loom_audit_auc(p3, 2, n3, 3, &auc));
    CHECK_NEAR(auc, 0.5, 0);
    /* 10 beats all ten, 9 loses to 9.5 only, 8 7 6 lose to 9.5 only: (10 + 4 * 9) / 50 */
    double p4[] = {7, 10, 6, 9, 8}, n4[] = {9.5, 5, 4, 3, 2, 1, 0, -1, -2, -3};
    CHECK_OK(loom_audit_auc(p4, 5, n4, 10, &auc));
    CHECK_NEAR(auc, 0.92, 1e-15);
    /* one member, one non-member */
    double a = 1, b = 1;
    CHECK_OK(loom_audit_auc(&a, 1, &b, 1, &auc));
    CHECK_NEAR(auc, 0.5, 0);
}

static void test_tpr_hand(void) {
    double tpr, fpr, tau;
    double p4[] = {7, 10, 6, 9, 8}, n4[] = {9.5, 5, 4, 3, 2, 1, 0, -1, -2, -3};
    /* alpha 0.1 allows the one non-member at 9.5: every member at or above 6 */
    CHECK_OK(loom_audit_tpr_at_fpr(p4, 5, n4, 10, 0.1, &tpr, &fpr, &tau));
    CHECK_NEAR(tpr, 1.0, 0);
    CHECK_NEAR(fpr, 0.1, 0);
    CHECK_NEAR(tau, 6, 0);
    /* below 0.1 no false positive is allowed: only the member at 10 */
    CHECK_OK(loom_audit_tpr_at_fpr(p4, 5, n4, 10, 0.05, &tpr, &fpr, &tau));
    CHECK_NEAR(tpr, 0.2, 0);
    CHECK_NEAR(fpr, 0.0, 0);
    CHECK_NEAR(tau, 10, 0);
    CHECK_OK(loom_audit_tpr_at_fpr(p4, 5, n4, 10, 0.0, &tpr, NULL, NULL));
    CHECK_NEAR(tpr, 0.2, 0);
    CHECK_OK(loom_audit_tpr_at_fpr(p4, 5, n4, 10, 1.0, &tpr, &fpr, NULL));
    CHECK_NEAR(tpr, 1.0, 0);
    /* a threshold takes ties whole: at 1 both members and one of two non-members */
    double p5[] = {1, 1}, n5[] = {1, 0};
    CHECK_OK(loom_audit_tpr_at_fpr(p5, 2, n5, 2, 0.5, &tpr, &fpr, &tau));
    CHECK_NEAR(tpr, 1.0, 0);
    CHECK_NEAR(fpr, 0.5, 0);
    CHECK_OK(loom_audit_tpr_at_fpr(p5, 2, n5, 2, 0.49, &tpr, &fpr, &tau));
    CHECK_NEAR(tpr, 0.0, 0);
    CHECK(isinf(tau) && tau > 0, "no threshold allowed gives +inf, got %g", tau);
    /* all tied: no threshold below +inf is allowed under FPR 1 */
    double p3[] = {5, 5}, n3[] = {5, 5, 5};
    CHECK_OK(loom_audit_tpr_at_fpr(p3, 2, n3, 3, 0.5, &tpr, NULL, NULL));
    CHECK_NEAR(tpr, 0.0, 0);
    /* members all below non-members */
    double p6[] = {0, 1}, n6[] = {2, 3, 4, 5};
    CHECK_OK(loom_audit_tpr_at_fpr(p6, 2, n6, 4, 0.5, &tpr, &fpr, NULL));
    CHECK_NEAR(tpr, 0.0, 0);
    CHECK_NEAR(fpr, 0.5, 0);
}

/* Random scores with many ties (values rounded to a grid) against the pair count and brute force. */
static void test_random_against_brute_force(void) {
    uint64_t s = 7;
    for (int trial = 0; trial < 40; trial++) {
        size_t np = 1 + (size_t)(trial * 7 % 53), nn = 1 + (size_t)(trial * 11 % 97);
        double p[64], q[128];
        double shift = (trial % 5) * 0.3;
        for (size_t i = 0; i < np; i++) p[i] = round(4 * (test_normal(&s) + shift)) / 4;
        for (size_t j = 0; j < nn; j++) q[j] = round(4 * test_normal(&s)) / 4;
        double auc, tpr;
        CHECK_OK(loom_audit_auc(p, np, q, nn, &auc));
        CHECK_NEAR(auc, auc_pairs(p, np, q, nn), 1e-12);
        const double alphas[] = {0, 0.01, 0.05, 0.1, 0.5, 1};
        for (size_t a = 0; a < N_OF(alphas); a++) {
            CHECK_OK(loom_audit_tpr_at_fpr(p, np, q, nn, alphas[a], &tpr, NULL, NULL));
            CHECK_NEAR(tpr, tpr_brute(p, np, q, nn, alphas[a]), 0);
        }
    }
}

static void test_degenerate(void) {
    double auc = -1, tpr, x[] = {1, 2}, bad[] = {1, NAN};
    CHECK(loom_audit_auc(x, 0, x, 2, &auc) == LOOM_EINVAL && msg_has("no member scores"), "%s", loom_errmsg());
    CHECK(loom_audit_auc(x, 2, x, 0, &auc) == LOOM_EINVAL && msg_has("no non-member scores"), "%s", loom_errmsg());
    CHECK(loom_audit_auc(bad, 2, x, 2, &auc) == LOOM_EINVAL && msg_has("member score 1 is not finite"), "%s",
          loom_errmsg());
    CHECK(loom_audit_auc(x, 2, bad, 2, &auc) == LOOM_EINVAL && msg_has("non-member score 1"), "%s", loom_errmsg());
    CHECK(auc == -1, "auc untouched on error");
    CHECK(loom_audit_tpr_at_fpr(x, 2, x, 2, 1.5, &tpr, NULL, NULL) == LOOM_EINVAL && msg_has("outside [0, 1]"), "%s",
          loom_errmsg());
    CHECK(loom_audit_tpr_at_fpr(x, 2, x, 2, NAN, &tpr, NULL, NULL) == LOOM_EINVAL, "NaN alpha refused");
    CHECK(loom_audit_tpr_at_fpr(x, 0, x, 2, 0.1, &tpr, NULL, NULL) == LOOM_EINVAL && msg_has("no member"), "%s",
          loom_errmsg());
    double inf = INFINITY;
    CHECK(loom_audit_tpr_at_fpr(&inf, 1, x, 2, 0.1, &tpr, NULL, NULL) == LOOM_EINVAL && msg_has("not finite"), "%s",
          loom_errmsg());
}

static void test_exposure(void) {
    double e, r;
    double c1[] = {2, 3, 4};
    CHECK_OK(loom_audit_exposure(1.0, c1, 3, &e, &r));
    CHECK_NEAR(r, 1, 0);
    CHECK_NEAR(e, 2.0, 1e-15); /* log2(4) - log2(1) */
    CHECK_OK(loom_audit_exposure(5.0, c1, 3, &e, &r));
    CHECK_NEAR(r, 4, 0);
    CHECK_NEAR(e, 0.0, 1e-15);
    double c2[] = {1, 2, 3};
    CHECK_OK(loom_audit_exposure(2.0, c2, 3, &e, &r)); /* one below, one tie: rank 2.5 */
    CHECK_NEAR(r, 2.5, 0);
    CHECK_NEAR(e, 2.0 - 1.3219280948873623, 1e-12);
    /* 1023 candidates, canary 10th best: log2(1024 / 10) */
    double c3[1023];
    for (int i = 0; i < 1023; i++) c3[i] = i < 9 ? -1.0 - i : 100.0 + i;
    CHECK_OK(loom_audit_exposure(0.0, c3, 1023, &e, &r));
    CHECK_NEAR(r, 10, 0);
    CHECK_NEAR(e, 10 - 3.3219280948873623, 1e-12);
    CHECK_OK(loom_audit_exposure(0.0, NULL, 0, &e, &r));
    CHECK_NEAR(e, 0.0, 0);
    CHECK_NEAR(r, 1, 0);
    double bad[] = {1, NAN};
    CHECK(loom_audit_exposure(0.0, bad, 2, &e, NULL) == LOOM_EINVAL && msg_has("candidate score 1 is not finite"), "%s",
          loom_errmsg());
    CHECK(loom_audit_exposure(INFINITY, c1, 3, &e, NULL) == LOOM_EINVAL && msg_has("canary log-perplexity"), "%s",
          loom_errmsg());
}

static void test_formats(void) {
    int d;
    uint64_t space, v;
    char buf[64];
    CHECK_OK(loom_audit_format_check("code # #-#", &d, &space));
    CHECK(d == 3 && space == 1000, "digits %d space %llu", d, (unsigned long long)space);
    CHECK_OK(loom_audit_format_fill("code # #-#", 42, buf, sizeof buf));
    CHECK(!strcmp(buf, "code 0 4-2"), "filled '%s'", buf);
    CHECK_OK(loom_audit_format_parse("code # #-#", "code 9 0-7", &v));
    CHECK(v == 907, "parsed %llu", (unsigned long long)v);
    CHECK(loom_audit_format_parse("code # #-#", "code 9 0+7", &v) == LOOM_EFORMAT && msg_has("does not match"), "%s",
          loom_errmsg());
    CHECK(loom_audit_format_parse("code # #-#", "code x 0-7", &v) == LOOM_EFORMAT && msg_has("not a digit"), "%s",
          loom_errmsg());
    CHECK(loom_audit_format_parse("code # #-#", "code 9 0-77", &v) == LOOM_EFORMAT, "longer string refused");
    CHECK(loom_audit_format_fill("code # #-#", 1000, buf, sizeof buf) == LOOM_ERANGE, "value past the space refused");
    CHECK(loom_audit_format_fill("code # #-#", 1, buf, 5) == LOOM_ERANGE, "small buffer refused");
    CHECK(loom_audit_format_check("no digits", &d, NULL) == LOOM_EINVAL && msg_has("has no '#'"), "%s", loom_errmsg());
    CHECK(loom_audit_format_check("a #\n#", &d, NULL) == LOOM_EINVAL && msg_has("line break"), "%s", loom_errmsg());
    CHECK(loom_audit_format_check("###################", &d, NULL) == LOOM_EINVAL && msg_has("at most 18"), "%s",
          loom_errmsg());
    CHECK_OK(loom_audit_format_check("##################", &d, &space));
    CHECK(space == 1000000000000000000ull, "18 digits");
    CHECK_OK(loom_audit_format_fill("##################", 999999999999999999ull, buf, sizeof buf));
    CHECK(!strcmp(buf, "999999999999999999"), "%s", buf);
}

static void test_draws(void) {
    uint64_t a[50], b[50];
    CHECK_OK(loom_audit_canary_draw(3, 100, 50, a));
    CHECK_OK(loom_audit_canary_draw(3, 100, 50, b));
    int same = 1, distinct = 1, inrange = 1;
    for (int i = 0; i < 50; i++) {
        same &= a[i] == b[i];
        inrange &= a[i] < 100;
        for (int j = 0; j < i; j++) distinct &= a[i] != a[j];
    }
    CHECK(same && distinct && inrange, "same %d distinct %d in range %d", same, distinct, inrange);
    CHECK_OK(loom_audit_canary_draw(4, 100, 50, b));
    int differ = 0;
    for (int i = 0; i < 50; i++) differ += a[i] != b[i];
    CHECK(differ > 25, "another seed, other canaries (%d differ)", differ);
    CHECK(loom_audit_canary_draw(3, 100, 51, a) == LOOM_EINVAL && msg_has("at most half"), "%s", loom_errmsg());
    /* candidates: a pure function of (seed, j), uniform over 10 values (chi-square, 9 dof, 0.1% point 27.9) */
    long cnt[10] = {0};
    for (uint64_t j = 0; j < 20000; j++) cnt[loom_audit_candidate(5, 10, j)]++;
    double chi = 0;
    for (int k = 0; k < 10; k++) chi += (cnt[k] - 2000.0) * (cnt[k] - 2000.0) / 2000.0;
    CHECK(chi < 27.9, "candidate digits uniform: chi-square %.2f", chi);
    CHECK(loom_audit_candidate(5, 1000000, 17) == loom_audit_candidate(5, 1000000, 17), "reproducible");
    int spread = 0;
    for (uint64_t j = 0; j < 100; j++) spread += loom_audit_candidate(5, 1000000, j) != loom_audit_candidate(6, 1000000, j);
    CHECK(spread > 95, "seeds give other candidates (%d of 100)", spread);
}

int main(void) {
    test_auc_hand();
    test_tpr_hand();
    test_random_against_brute_force();
    test_degenerate();
    test_exposure();
    test_formats();
    test_draws();
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
