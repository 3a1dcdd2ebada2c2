#include "loom/core.h"
#include "test.h"

#include <unistd.h>

static void test_errors(void) {
    int rc = loom_error(LOOM_EFORMAT, "bad header length %d", 7);
    CHECK(rc == LOOM_EFORMAT, "loom_error returns its code");
    CHECK(strcmp(loom_errmsg(), "bad header length 7") == 0, "message: %s", loom_errmsg());
    loom_error_context(rc, "model.safetensors");
    CHECK(strcmp(loom_errmsg(), "model.safetensors: bad header length 7") == 0, "context: %s", loom_errmsg());
    CHECK(strcmp(loom_strerror(LOOM_ENOMEM), "out of memory") == 0, "strerror");
}

static void test_rng(void) {
    loom_rng a, b, c;
    loom_rng_init(&a, 42, 0);
    loom_rng_init(&b, 42, 0);
    loom_rng_init(&c, 42, 1);
    int same = 1, diff = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = loom_rng_u64(&a), y = loom_rng_u64(&b), z = loom_rng_u64(&c);
        same &= x == y;
        diff += x != z;
    }
    CHECK(same, "same seed and stream give the same sequence");
    CHECK(diff == 1000, "different streams differ (%d/1000)", diff);

    /* Moments of the normal and uniform draws (n = 200000: standard errors ~0.0022 and ~0.0032). */
    loom_rng_init(&a, 7, 3);
    double s = 0, s2 = 0, u = 0;
    int n = 200000, buckets[10] = {0};
    for (int i = 0; i < n; i++) {
        double x = loom_rng_normal(&a);
        s += x;
        s2 += x * x;
        double v = loom_rng_uniform(&a);
        u += v;
        buckets[(int)(v * 10)]++;
        buckets[loom_rng_below(&a, 10)]++;
    }
    CHECK(fabs(s / n) < 0.015, "normal mean %g", s / n);
    CHECK(fabs(s2 / n - 1.0) < 0.02, "normal variance %g", s2 / n);
    CHECK(fabs(u / n - 0.5) < 0.005, "uniform mean %g", u / n);
    for (int k = 0; k < 10; k++) CHECK(abs(buckets[k] - 2 * n / 10) < 1500, "bucket %d has %d", k, buckets[k]);

    uint32_t perm[100];
    for (uint32_t i = 0; i < 100; i++) perm[i] = i;
    loom_rng_shuffle_u32(&a, perm, 100);
    int seen[100] = {0}, moved = 0;
    for (int i = 0; i < 100; i++) {
        seen[perm[i]]++;
        moved += perm[i] != (uint32_t)i;
    }
    int all = 1;
    for (int i = 0; i < 100; i++) all &= seen[i] == 1;
    CHECK(all, "shuffle is a permutation");
    CHECK(moved > 80, "shuffle moved %d of 100", moved);
}

static void test_files(void) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/file.bin", dir);
    const char msg[] = "hello\0world";
    CHECK_OK(loom_write_file_atomic(path, msg, sizeof msg));
    char *data;
    size_t len;
    CHECK_OK(loom_read_file(path, &data, &len));
    CHECK(len == sizeof msg && memcmp(data, msg, len) == 0, "round trip of %zu bytes", len);
    free(data);
    unlink(path);
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
    CHECK(loom_read_file("/nonexistent/file", &data, &len) == LOOM_ENOTFOUND, "missing file");
    CHECK(strstr(loom_errmsg(), "/nonexistent/file") != NULL, "message names the path: %s", loom_errmsg());
}

int main(void) {
    test_errors();
    test_rng();
    test_files();
    return test_summary();
}
