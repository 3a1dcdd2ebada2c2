/* The memory read ceiling that batch-1 decoding runs against: how many GB/s a plain streaming read of a
 * buffer far larger than the caches moves, on OMP_NUM_THREADS threads (each reads its own contiguous part,
 * which it also wrote first, so the pages sit where that thread runs). Integer sums, so the compiler may
 * vectorize and reorder them freely; the sum is printed so the reads cannot be dropped.
 *
 * Usage: membw [MiB (1024)] [passes (15)]; built by bench/speed.sh: gcc -O3 -march=native -fopenmp.
 * Prints: RESULT threads=T mib=M gbps_best=B gbps_median=D */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? strtol(argv[1], NULL, 10) : 1024;
    int passes = argc > 2 ? atoi(argv[2]) : 15;
    if (mib < 64 || mib > 16384 || passes < 1 || passes > 1000) {
        fprintf(stderr, "membw: size must be 64..16384 MiB and passes 1..1000\n");
        return 2;
    }
    size_t n = (size_t)mib << 17; /* uint64 words */
    uint64_t *buf = aligned_alloc(4096, n * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "membw: cannot allocate %ld MiB\n", mib);
        return 1;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9e3779b97f4a7c15ull;
    double *gbps = malloc((size_t)passes * sizeof *gbps);
    uint64_t total = 0;
    for (int p = 0; p < passes; p++) {
        uint64_t sum = 0;
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t i = 0; i < n; i++) sum += buf[i];
        double dt = omp_get_wtime() - t0;
        total += sum;
        gbps[p] = (double)n * sizeof *buf / dt / 1e9;
    }
    qsort(gbps, (size_t)passes, sizeof *gbps, cmp_double);
    printf("RESULT threads=%d mib=%ld gbps_best=%.1f gbps_median=%.1f check=%llu\n", omp_get_max_threads(), mib,
           gbps[passes - 1], gbps[passes / 2], (unsigned long long)(total % 9973));
    free(gbps);
    free(buf);
    return 0;
}
