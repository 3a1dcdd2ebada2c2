/* loom_gemm (src/kernels/gemm.c) against a naive double-precision product, and its determinism.
 *
 * Bound: C = alpha sum_k a_k b_k + beta c0 summed in float from exact products (a bf16 times a bf16 is
 * exact in float, a float times a float is rounded once) has |got - ref| <= (K + 3) u (|alpha| sum_k
 * |a_k b_k| + |beta c0|), u = 2^-24 (the classical gamma_(K+3) bound of a recursive or blocked sum,
 * whatever the order). For bf16 operands the reference takes the bf16 values themselves (decoded
 * independently here from the bits), so the bound is the same; the rounding of the inputs to bf16 is
 * the caller's business and is checked with the model (test_bf16.c).
 *
 * Every case runs on 1, 2 and 3 threads and must give the same bits each time. */
#include <omp.h>

#include "loom/core.h"
#include "loom/kernels.h"
#include "test.h"

#define U (1.0 / 16777216.0)

static uint64_t rng_state = 12345;
static float frand(void) { return (float)test_normal(&rng_state); }

/* bf16 bits of x by truncation plus round-half-even, written independently of loom_f32_to_bf16 */
static uint16_t to_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t lsb = (u >> 16) & 1u;
    return (uint16_t)((u + 0x7FFFu + lsb) >> 16);
}
static double from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct {
    int ta, tb, M, N, K, pad, at, bt;
    float alpha, beta;
} gcase;

static int run_case(const gcase *g) {
    const int M = g->M, N = g->N, K = g->K;
    const int ar = g->ta ? K : M, ac = g->ta ? M : K, br = g->tb ? N : K, bc = g->tb ? K : N;
    const int lda = ac + g->pad, ldb = bc + g->pad, ldc = N + g->pad;
    size_t an = (size_t)ar * lda, bn = (size_t)br * ldb, cn = (size_t)M * ldc;
    float *af = malloc(an * 4 + 4), *bf = malloc(bn * 4 + 4), *c0 = malloc(cn * 4 + 4), *c = malloc(cn * 4 + 4);
    float *c1 = malloc(cn * 4 + 4);
    uint16_t *ah = malloc(an * 2 + 2), *bh = malloc(bn * 2 + 2);
    for (size_t i = 0; i < an; i++) ah[i] = to_bf16(af[i] = frand());
    for (size_t i = 0; i < bn; i++) bh[i] = to_bf16(bf[i] = frand());
    for (size_t i = 0; i < cn; i++) c0[i] = frand();
    const void *A = g->at == LOOM_GEMM_BF16 ? (const void *)ah : af, *B = g->bt == LOOM_GEMM_BF16 ? (const void *)bh : bf;
    int fails = 0;
    char what[200];
    snprintf(what, sizeof what, "gemm ta=%d tb=%d M=%d N=%d K=%d pad=%d types=%d%d alpha=%g beta=%g", g->ta, g->tb, M, N,
             K, g->pad, g->at, g->bt, g->alpha, g->beta);
    const int threads[3] = {1, 2, 3};
    for (int ti = 0; ti < 3; ti++) {
        loom_set_threads(threads[ti]);
        memcpy(c, c0, cn * 4);
        if (g->beta == 0.0f) /* beta 0 must overwrite whatever C holds, NaN included */
            for (int i = 0; i < M; i++) c[(size_t)i * ldc] = NAN;
        int rc = loom_gemm(g->ta, g->tb, M, N, K, g->alpha, A, g->at, lda, B, g->bt, ldb, g->beta, c, ldc);
        CHECK(rc == LOOM_OK, "%s: rc %d", what, rc);
        if (ti == 0) {
            memcpy(c1, c, cn * 4);
            double worst = 0;
            for (int i = 0; i < M; i++) {
                for (int j = 0; j < N; j++) {
                    double s = 0, a = 0;
                    for (int k = 0; k < K; k++) {
                        size_t ia = g->ta ? (size_t)k * lda + i : (size_t)i * lda + k;
                        size_t ib = g->tb ? (size_t)j * ldb + k : (size_t)k * ldb + j;
                        double x = g->at == LOOM_GEMM_BF16 ? from_bf16(ah[ia]) : af[ia];
                        double y = g->bt == LOOM_GEMM_BF16 ? from_bf16(bh[ib]) : bf[ib];
                        s += x * y;
                        a += fabs(x * y);
                    }
                    double c0v = c0[(size_t)i * ldc + j];
                    double ref = g->alpha * s + g->beta * c0v;
                    double bound = (K + 3) * U * (fabs(g->alpha) * a + fabs(g->beta * c0v)) + 1e-37;
                    double got = c[(size_t)i * ldc + j], d = fabs(got - ref);
                    if (!(d <= bound)) {
                        if (fails++ < 3)
                            CHECK(0, "%s: C[%d][%d] = %.9g, reference %.9g, |d| %.3g > bound %.3g", what, i, j, got,
                                  ref, d, bound);
                    }
                    if (bound > 0 && d / bound > worst) worst = d / bound;
                }
                for (int j = N; j < ldc; j++) /* padding untouched */
                    if (c[(size_t)i * ldc + j] != c0[(size_t)i * ldc + j] && fails++ < 3)
                        CHECK(0, "%s: wrote padding C[%d][%d]", what, i, j);
            }
            CHECK(fails == 0, "%s: %d elements outside the bound", what, fails);
        } else {
            CHECK(!memcmp(c, c1, cn * 4), "%s: %d threads differ from 1 thread", what, threads[ti]);
        }
    }
    loom_set_threads(0);
    free(af);
    free(bf);
    free(c0);
    free(c);
    free(c1);
    free(ah);
    free(bh);
    return fails;
}

int main(void) {
    /* every transpose, beta 0 and 1, dense and padded leading dimensions, float and bf16, tiny to
     * several row chunks (M > 128) or column blocks (few rows, N >= 512), odd M, N, K */
    const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 33, 19}, {129, 47, 65}, {260, 61, 97}, {5, 700, 33}, {1, 530, 20}};
    const int types[][2] = {{LOOM_GEMM_F32, LOOM_GEMM_F32}, {LOOM_GEMM_BF16, LOOM_GEMM_BF16}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int t = 0; t < 4; t++)
            for (int beta = 0; beta <= 1; beta++)
                for (int pad = 0; pad <= 3; pad += 3)
                    for (int ty = 0; ty < 2; ty++) {
                        gcase g = {t & 1, t >> 1, shapes[s][0], shapes[s][1], shapes[s][2], pad, types[ty][0],
                                   types[ty][1], 1.0f, (float)beta};
                        run_case(&g);
                    }
    /* alpha and a beta other than 0 and 1; mixed operand types; a GPT-2-sized product (N = 768 inputs
     * of a 1030-row batch: 9 chunks, the last one short) */
    gcase extra[] = {
        {0, 1, 70, 40, 50, 2, LOOM_GEMM_F32, LOOM_GEMM_F32, -0.5f, 0.25f},
        {1, 0, 140, 9, 33, 0, LOOM_GEMM_BF16, LOOM_GEMM_BF16, 2.0f, -1.5f},
        {0, 0, 33, 21, 18, 1, LOOM_GEMM_F32, LOOM_GEMM_BF16, 1.0f, 1.0f},
        {1, 1, 25, 31, 12, 0, LOOM_GEMM_BF16, LOOM_GEMM_F32, 1.0f, 0.0f},
        {0, 1, 1030, 40, 768, 0, LOOM_GEMM_F32, LOOM_GEMM_F32, 1.0f, 0.0f},
        {1, 0, 1030, 64, 160, 0, LOOM_GEMM_BF16, LOOM_GEMM_BF16, 1.0f, 1.0f},
        /* a short, deep product: where oneDNN would split K between threads */
        {0, 0, 8, 8, 16384, 0, LOOM_GEMM_F32, LOOM_GEMM_F32, 1.0f, 0.0f},
        {0, 1, 8, 8, 16384, 0, LOOM_GEMM_BF16, LOOM_GEMM_BF16, 1.0f, 0.0f},
        /* a long K with B stored [K, N], cut into blocks added in order (f32 or mixed: K > 1024, bf16:
         * K > 8192): with A transposed, alpha and beta, padding; bf16; mixed types; with column blocks */
        {1, 0, 70, 40, 2500, 3, LOOM_GEMM_F32, LOOM_GEMM_F32, -0.5f, 0.25f},
        {0, 0, 40, 33, 9000, 1, LOOM_GEMM_BF16, LOOM_GEMM_BF16, 2.0f, 1.0f},
        {0, 0, 9, 70, 1025, 0, LOOM_GEMM_F32, LOOM_GEMM_BF16, 1.0f, 0.0f},
        {0, 0, 5, 700, 3000, 2, LOOM_GEMM_F32, LOOM_GEMM_F32, 1.0f, 1.0f},
    };
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) run_case(&extra[i]);

    /* K = 0: C = beta C; beta 0 clears */
    float cz[6] = {1, 2, 3, 4, 5, 6};
    float dummy = 0;
    CHECK_OK(loom_gemm(0, 0, 2, 3, 0, 1.0f, &dummy, LOOM_GEMM_F32, 1, &dummy, LOOM_GEMM_F32, 3, 2.0f, cz, 3));
    CHECK(cz[0] == 2 && cz[5] == 12, "K = 0, beta 2: %g %g", cz[0], cz[5]);
    CHECK_OK(loom_gemm(0, 0, 2, 3, 0, 1.0f, &dummy, LOOM_GEMM_F32, 1, &dummy, LOOM_GEMM_F32, 3, 0.0f, cz, 3));
    CHECK(cz[0] == 0 && cz[5] == 0, "K = 0, beta 0: %g %g", cz[0], cz[5]);
    int rc = loom_gemm(0, 0, 2, 3, -1, 1.0f, &dummy, LOOM_GEMM_F32, 1, &dummy, LOOM_GEMM_F32, 3, 0.0f, cz, 3);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "out of range"), "K = -1: %d %s", rc, loom_errmsg());
    rc = loom_gemm(0, 0, 2, 3, 4, 1.0f, cz, LOOM_GEMM_F32, 3, cz, LOOM_GEMM_F32, 3, 0.0f, cz, 3);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "lda 3"), "lda < K: %d %s", rc, loom_errmsg());
    rc = loom_gemm(0, 1, 2, 3, 1, 1.0f, cz, LOOM_GEMM_F32, 1, cz, LOOM_GEMM_F32, 1, 0.0f, cz, 2);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "ldc 2"), "ldc < N: %d %s", rc, loom_errmsg());

    /* the cache holds each chunk shape once: repeating a product adds nothing */
    int n0 = loom_gemm_cache_size();
    gcase g = {0, 0, 260, 61, 97, 0, LOOM_GEMM_F32, LOOM_GEMM_F32, 1.0f, 0.0f};
    run_case(&g);
    CHECK(loom_gemm_cache_size() == n0, "cache grew from %d to %d on a repeated product", n0, loom_gemm_cache_size());
    loom_gemm_cache_clear();
    CHECK(loom_gemm_cache_size() == 0, "cache holds %d after clearing", loom_gemm_cache_size());

    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
