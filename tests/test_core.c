#include "loom/core.h"
#include "test.h"

#include <unistd.h>

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

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

/* Element i of a normal stream, generated alone, in bulk, with any thread count, and against
 * loom_rng_normal; then its distribution. */
static void test_normal_at(void) {
    enum { N = 200000 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    /* element i equals the i-th loom_rng_normal of a fresh stream */
    loom_rng r;
    loom_rng_init(&r, 11, 0x5eed);
    loom_rng_normal_fill(11, 0x5eed, 0, 5001, x);
    int same = 1;
    for (int i = 0; i < 5001; i++) {
        float a = (float)loom_rng_normal(&r);
        same &= memcmp(&a, &x[i], sizeof a) == 0 && memcmp(&a, &(float){loom_rng_normal_at(11, 0x5eed, (uint64_t)i)}, 4) == 0;
    }
    CHECK(same, "normal_at(i) and normal_fill equal the i-th loom_rng_normal");
    /* a bulk fill from an odd or even offset equals element-by-element generation; huge indices too */
    uint64_t firsts[] = {12345, 12346, (uint64_t)1 << 40, UINT64_MAX - 700};
    for (int f = 0; f < 4; f++) {
        loom_rng_normal_fill(3, 4, firsts[f], 1001, x);
        int ok = 1;
        for (uint64_t j = 0; j < 1001; j++) {
            float a = loom_rng_normal_at(3, 4, firsts[f] + j);
            ok &= memcmp(&a, &x[j], sizeof a) == 0;
        }
        CHECK(ok, "fill from %llu equals normal_at element by element", (unsigned long long)firsts[f]);
    }
    /* the same values for 1, 2 and 3 threads (a parallel fill) */
    int threads = loom_threads();
    loom_set_threads(1);
    loom_rng_normal_fill(9, 1, 777, N, x);
    for (int t = 2; t <= 3; t++) {
        loom_set_threads(t);
        loom_rng_normal_fill(9, 1, 777, N, y);
        CHECK(memcmp(x, y, N * sizeof *x) == 0, "fill with %d threads equals 1 thread", t);
    }
    loom_set_threads(threads);
    CHECK(loom_rng_normal_at(9, 1, 777) != loom_rng_normal_at(9, 2, 777) &&
          loom_rng_normal_at(9, 1, 777) != loom_rng_normal_at(10, 1, 777), "streams and seeds differ");

    /* distribution of N = 200000 values. Bounds at 5 standard errors (two-sided false-failure rate
     * 5.7e-7 each): mean (SE 1/sqrt(N) = 0.00224), variance (SE sqrt(2/N) = 0.00316), lag-1 and
     * within-pair correlations (SE 1/sqrt(N)). Kolmogorov-Smirnov against the normal CDF: sqrt(N) D
     * below 2.5, false-failure rate 2 exp(-2 * 2.5^2) = 7.5e-6. */
    double s = 0, s2 = 0, lag = 0;
    for (int i = 0; i < N; i++) {
        s += x[i];
        s2 += (double)x[i] * x[i];
        if (i + 1 < N) lag += (double)x[i] * x[i + 1];
    }
    double mean = s / N, var = s2 / N - mean * mean, corr = lag / (N - 1);
    const double se = 1.0 / sqrt((double)N);
    CHECK(fabs(mean) < 5 * se, "normal_at mean %g (bound %g)", mean, 5 * se);
    CHECK(fabs(var - 1.0) < 5 * sqrt(2.0) * se, "normal_at variance %g (bound 1 +- %g)", var, 5 * sqrt(2.0) * se);
    CHECK(fabs(corr) < 5 * se, "normal_at lag-1 correlation %g", corr);
    memcpy(y, x, N * sizeof *x);
    qsort(y, N, sizeof *y, cmp_float);
    double d = 0;
    for (int i = 0; i < N; i++) {
        double cdf = 0.5 * erfc(-(double)y[i] / sqrt(2.0));
        double lo = cdf - (double)i / N, hi = (double)(i + 1) / N - cdf;
        if (lo > d) d = lo;
        if (hi > d) d = hi;
    }
    CHECK(sqrt((double)N) * d < 2.5, "Kolmogorov-Smirnov sqrt(N) D = %g (bound 2.5)", sqrt((double)N) * d);
    /* tails: P(|x| > 3) = 0.0026998, expected 540 of N, SD 23.2; 5 SD */
    int tail = 0;
    for (int i = 0; i < N; i++) tail += fabsf(x[i]) > 3.0f;
    CHECK(abs(tail - 540) < 116, "%d values beyond 3 sigma (expected 540)", tail);
    free(x);
    free(y);
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

/* SHA-256 against the published FIPS 180-2 example digests, one-shot and in odd-sized pieces. */
static void test_sha256(void) {
    static const struct {
        const char *msg;
        size_t repeat;
        const char *hex;
    } v[] = {
        {"", 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"a", 1000000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
    };
    for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
        size_t len = strlen(v[k].msg), n = len * v[k].repeat;
        char *buf = malloc(n + 1);
        for (size_t i = 0; i < v[k].repeat; i++) memcpy(buf + i * len, v[k].msg, len);
        char hex[65];
        loom_sha256_hex(buf, n, hex);
        CHECK(!strcmp(hex, v[k].hex), "sha256 vector %zu: %s", k, hex);
        /* streaming in pieces of 1, 63, 64, 65, ... bytes gives the same digest */
        loom_sha256 s;
        loom_sha256_init(&s);
        size_t at = 0, step = 1;
        while (at < n) {
            size_t take = step < n - at ? step : n - at;
            loom_sha256_update(&s, buf + at, take);
            at += take;
            step = step * 7 % 131 + 1;
        }
        uint8_t d[32];
        loom_sha256_final(&s, d);
        loom_hex(d, 32, hex);
        CHECK(!strcmp(hex, v[k].hex), "sha256 vector %zu streamed: %s", k, hex);
        free(buf);
    }
    char dir[256], path[512], hex[65];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/abc", dir);
    CHECK_OK(loom_write_file_atomic(path, "abc", 3));
    CHECK_OK(loom_sha256_file(path, hex));
    CHECK(!strcmp(hex, v[1].hex), "sha256 of a file: %s", hex);
    unlink(path);
    CHECK(test_rmtree(dir) == 0, "scratch directory %s removed", dir);
    CHECK(loom_sha256_file("/nonexistent/file", hex) == LOOM_EIO && strstr(loom_errmsg(), "/nonexistent/file"),
          "a missing file is named: %s", loom_errmsg());
}

int main(void) {
    test_sha256();
    test_errors();
    test_rng();
    test_normal_at();
    test_files();
    return test_summary();
}
