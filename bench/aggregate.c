/* The robust aggregators' speed (include/loom/pipeline.h, loom_robust_aggregate): per rule, the
 * median time of several repetitions to aggregate n = 20 and n = 100 updates of 294,912 floats (the
 * GPT-2 124M LoRA r = 8 c_attn set) and n = 10 updates of 124,439,808 floats (all of GPT-2 124M),
 * against this machine's streaming-read bandwidth measured here: a rule that reads each update once
 * can go no faster than n dim 4 bytes / bandwidth. Updates are N(0, 1) values from a fixed seed.
 * f = n / 5 for the rules that take it (Krum's n >= 2f + 3, Bulyan's n >= 4f + 3 hold; the full set
 * takes f = 1); trimmed mean cuts beta = 0.2 from each end, multi-krum averages n - f, centered clip
 * runs 1 step with tau = 1, FLTrust gets one more random vector as the server's update.
 *
 *   aggregate [--reps R] [--no-full] [--threads T] [--rules r1,r2,...]
 * R repetitions (default 5; 3 on the full set), T OpenMP threads (default: OpenMP's). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/pipeline.h"

#define LORA_DIM 294912
#define FULL_DIM 124439808

static int dbl_cmp(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return a < b ? -1 : a > b;
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, dbl_cmp);
    return n & 1 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static uint64_t rng(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* n dim floats, roughly N(0, 1) (a sum of four uniforms, scaled), in parallel by blocks of a fixed seed. */
static void fill(float *x, size_t len, uint64_t seed) {
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < (len + 65535) / 65536; b++) {
        uint64_t s = seed ^ (b * 0x632be59bd9b4e019ull);
        size_t e = (b + 1) * 65536 < len ? (b + 1) * 65536 : len;
        for (size_t i = b * 65536; i < e; i++) {
            uint64_t r = rng(&s);
            double u = (double)(r & 0xffff) + (double)((r >> 16) & 0xffff) + (double)((r >> 32) & 0xffff) +
                       (double)(r >> 48);
            x[i] = (float)((u / 65536.0 - 2.0) * 1.7320508075688772);
        }
    }
}

/* Streaming read: the sum of len floats (len a multiple of 64) in 64 independent float lanes, so that
 * the loop vectorizes and memory, not the adder, is the limit; bytes / second, the median of reps. */
static double bandwidth(const float *x, size_t len, int reps) {
    double t[16], sink = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = loom_now(), s = 0;
#pragma omp parallel reduction(+ : s)
        {
            float acc[64] = {0};
#pragma omp for schedule(static)
            for (size_t i = 0; i < len / 64; i++)
                for (size_t j = 0; j < 64; j++) acc[j] += x[i * 64 + j];
            for (size_t j = 0; j < 64; j++) s += acc[j];
        }
        t[r] = loom_now() - t0;
        sink += s;
    }
    if (sink == 12345.678) printf(" ");
    return (double)len * sizeof *x / median(t, reps);
}

static int want(const char *rules, const char *name) {
    if (!rules) return 1;
    size_t k = strlen(name);
    for (const char *p = rules; (p = strstr(p, name)); p += k)
        if ((p == rules || p[-1] == ',') && (p[k] == 0 || p[k] == ',')) return 1;
    return 0;
}

static int run_set(size_t n, size_t dim, int f, int reps, const char *rules, double bw) {
    float *buf = loom_alloc((n + 1) * dim * sizeof *buf);
    double *out = loom_alloc(dim * sizeof *out);
    const float **u = malloc(n * sizeof *u);
    if (!buf || !out || !u) {
        fprintf(stderr, "aggregate: out of memory for %zu x %zu floats\n", n + 1, dim);
        loom_free(buf), loom_free(out), free(u);
        return 1;
    }
    fill(buf, (n + 1) * dim, 0x5eed + n);
    for (size_t i = 0; i < n; i++) u[i] = buf + i * dim;
    double bytes = (double)n * dim * sizeof *buf, bound_ms = 1e3 * bytes / bw;
    printf("\nn = %zu updates of %zu floats (%.1f MB read once: %.2f ms at the measured bandwidth), f = %d\n", n, dim,
           bytes / 1e6, bound_ms, f);
    printf("  %-14s %10s %10s %8s\n", "rule", "ms", "GB/s", "of bw");
    static const loom_robust_rule all[] = {LOOM_ROBUST_MEDIAN,        LOOM_ROBUST_TRIMMED_MEAN, LOOM_ROBUST_KRUM,
                                           LOOM_ROBUST_MULTI_KRUM,    LOOM_ROBUST_BULYAN,       LOOM_ROBUST_NORM_BOUND,
                                           LOOM_ROBUST_GEOMEDIAN,     LOOM_ROBUST_CENTERED_CLIP, LOOM_ROBUST_FLTRUST};
    for (size_t r = 0; r < sizeof all / sizeof all[0]; r++) {
        const char *name = loom_robust_rule_name(all[r]);
        if (!want(rules, name)) continue;
        loom_robust_config c;
        loom_robust_defaults(&c, all[r]);
        c.f = f, c.beta = 0.2, c.server_update = buf + n * dim;
        double t[16];
        int rc = LOOM_OK;
        for (int k = 0; k < reps && rc == LOOM_OK; k++) {
            double t0 = loom_now();
            rc = loom_robust_aggregate(&c, out, u, NULL, n, dim, NULL);
            t[k] = loom_now() - t0;
        }
        if (rc != LOOM_OK) {
            fprintf(stderr, "aggregate: %s: %s\n", name, loom_errmsg());
            continue;
        }
        double ms = 1e3 * median(t, reps);
        printf("  %-14s %10.2f %10.2f %7.0f%%\n", name, ms, bytes / (ms * 1e-3) / 1e9, 100 * bound_ms / ms);
        fflush(stdout);
    }
    loom_free(buf), loom_free(out), free(u);
    return 0;
}

int main(int argc, char **argv) {
    int reps = 5, full = 1;
    const char *rules = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--no-full") == 0) full = 0;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) omp_set_num_threads(atoi(argv[++i]));
        else if (strcmp(argv[i], "--rules") == 0 && i + 1 < argc) rules = argv[++i];
        else {
            fprintf(stderr, "usage: aggregate [--reps R] [--no-full] [--threads T] [--rules r1,r2,...]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 16) {
        fprintf(stderr, "aggregate: --reps must be in 1..16\n");
        return 2;
    }
    size_t blen = (size_t)100 * LORA_DIM; /* 118 MB: far beyond the caches */
    float *b = loom_alloc(blen * sizeof *b);
    if (!b) return 1;
    fill(b, blen, 1);
    double bw = bandwidth(b, blen, 9);
    loom_free(b);
    printf("threads %d, streaming-read bandwidth %.2f GB/s (a parallel float sum over %.0f MB, median of 9)\n",
           omp_get_max_threads(), bw / 1e9, blen * 4 / 1e6);
    run_set(20, LORA_DIM, 4, reps, rules, bw);
    run_set(100, LORA_DIM, 20, reps, rules, bw);
    if (full) run_set(10, FULL_DIM, 1, reps < 3 ? reps : 3, rules, bw);
    return 0;
}
