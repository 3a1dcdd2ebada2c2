/* Minimal test harness: each tests/test_*.c is one program registered with CTest.
 * CHECK records a failure and goes on; the program ends with "N passed, M failed" and exits 1 on any
 * failure. Data paths come from $LOOM_SHARED (set by CTest) or ../shared. */
#ifndef LOOM_TEST_H
#define LOOM_TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed, test_failed;

#define CHECK(cond, ...)                                                         \
    do {                                                                         \
        if (cond) {                                                              \
            test_passed++;                                                       \
        } else {                                                                 \
            test_failed++;                                                       \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fprintf(stderr, "\n");                                               \
        }                                                                        \
    } while (0)

#define CHECK_OK(expr)                                                                        \
    do {                                                                                      \
        int rc_ = (expr);                                                                     \
        CHECK(rc_ == 0, "%s returned %d: %s", #expr, rc_, loom_errmsg());                     \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                 \
    do {                                                                                      \
        double a_ = (a), b_ = (b);                                                            \
        CHECK(fabs(a_ - b_) <= (tol), "%s = %.9g, %s = %.9g, |d| = %.3g > %.3g", #a, a_, #b, b_, \
              fabs(a_ - b_), (double)(tol));                                                  \
    } while (0)

static inline const char *test_shared(void) {
    const char *s = getenv("LOOM_SHARED");
    return s && *s ? s : "../shared";
}

/* Writes "<shared>/<rel>" into buf. */
static inline const char *test_path(char *buf, size_t n, const char *rel) {
    snprintf(buf, n, "%s/%s", test_shared(), rel);
    return buf;
}

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

#endif
