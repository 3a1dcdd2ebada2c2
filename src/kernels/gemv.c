/* Matrix-vector products for decoding (include/loom/gemv.h, loom_gemv in include/loom/kernels.h).
 *
 * One kernel per (path, layout, weight type), all with the signature of gemv_fn: outputs [o0, o1) of
 * y = W x. The paths differ only in how many lanes one instruction holds; the order of every sum is
 * the one gemv.h states, so the portable loops below are also the definition the SIMD ones follow. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <cpuid.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "loom/core.h"
#include "loom/gemv.h"
#include "loom/kernels.h"

#define LANES 16         /* floats in one AVX-512 register */
#define SUMS 64          /* partial sums per LINEAR output */
#define ROWS 4           /* LINEAR outputs in one unit of the threads' pieces */
#define CONV_BLOCK 2048  /* CONV1D outputs whose sums one pass over the rows of W carries */
#define GEMV_PAR 65536   /* multiply-adds below which a product stays on one thread */

typedef void (*gemv_fn)(float *y, const void *W, const float *scale, const float *x, int o0, int o1, int C, int OC);

/* The fixed pairwise order in which the n (64 or 16) partial sums of an output are added. */
static float reduce_n(float *a, int n) {
    for (int h = n / 2; h > 0; h /= 2)
        for (int j = 0; j < h; j++) a[j] += a[j + h];
    return a[0];
}
static float reduce16(float *a) { return reduce_n(a, LANES); }

/* Element i of a weight array, widened exactly to float. */
static inline float ld_f32(const void *W, size_t i) { return ((const float *)W)[i]; }
static inline float ld_bf16(const void *W, size_t i) {
    uint32_t u = (uint32_t)((const uint16_t *)W)[i] << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline float ld_i8(const void *W, size_t i) { return (float)((const int8_t *)W)[i]; }

/* ---------------------------------------------------------------- portable */

#define PORTABLE_LINEAR(NAME, LD)                                                                          \
    static void NAME(float *y, const void *W, const float *scale, const float *x, int o0, int o1, int C,  \
                     int OC) {                                                                             \
        (void)OC;                                                                                          \
        for (int o = o0; o < o1; o++) {                                                                    \
            size_t r = (size_t)o * C;                                                                      \
            float acc[SUMS] = {0};                                                                         \
            for (int c0 = 0; c0 < C; c0 += SUMS) /* the last block zero-padded to 64 */                    \
                for (int j = 0; j < SUMS; j++) {                                                           \
                    int c = c0 + j;                                                                        \
                    acc[j] = fmaf(c < C ? LD(W, r + c) : 0.0f, c < C ? x[c] : 0.0f, acc[j]);               \
                }                                                                                          \
            float s = reduce_n(acc, SUMS);                                                                 \
            y[o] = scale ? s * scale[o] : s;                                                               \
        }                                                                                                  \
    }

#define PORTABLE_CONV(NAME, LD)                                                                            \
    static void NAME(float *y, const void *W, const float *scale, const float *x, int o0, int o1, int C,  \
                     int OC) {                                                                             \
        float acc[CONV_BLOCK];                                                                             \
        int n = o1 - o0;                                                                                   \
        memset(acc, 0, (size_t)n * sizeof *acc);                                                           \
        for (int c = 0; c < C; c++) {                                                                      \
            size_t r = (size_t)c * OC + o0;                                                                \
            float xc = x[c];                                                                               \
            for (int j = 0; j < n; j++) acc[j] = fmaf(xc, LD(W, r + j), acc[j]);                           \
        }                                                                                                  \
        for (int j = 0; j < n; j++) y[o0 + j] = scale ? acc[j] * scale[o0 + j] : acc[j];                   \
    }

PORTABLE_LINEAR(lin_f32_portable, ld_f32)
PORTABLE_LINEAR(lin_bf16_portable, ld_bf16)
PORTABLE_LINEAR(lin_i8_portable, ld_i8)
PORTABLE_CONV(conv_f32_portable, ld_f32)
PORTABLE_CONV(conv_bf16_portable, ld_bf16)
PORTABLE_CONV(conv_i8_portable, ld_i8)

/* ---------------------------------------------------------------- AVX-512 */

#define T512 __attribute__((target("avx512f")))

T512 static inline __m512 w16_f32(const void *W, size_t i) { return _mm512_loadu_ps((const float *)W + i); }
T512 static inline __m512 w16_bf16(const void *W, size_t i) {
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)W + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
T512 static inline __m512 w16_i8(const void *W, size_t i) {
    __m128i b = _mm_loadu_si128((const __m128i *)((const int8_t *)W + i));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
}

/* reduce16 of the 16 lanes of v, in registers: lanes j + 8 onto j, then + 4, + 2, + 1 (the same adds,
 * so the same bits, without a trip through memory for every output). */
T512 static inline float hsum16(__m512 v) {
    __m256 lo = _mm512_castps512_ps256(v), hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/* The last n < 64 weights of a row from i, zero-padded to 64. */
#define TAIL64(LD, W, i, n, buf)                                                                           \
    do {                                                                                                   \
        for (int j_ = 0; j_ < SUMS; j_++) (buf)[j_] = j_ < (n) ? LD(W, (i) + j_) : 0.0f;                   \
    } while (0)

/* One row at a time, its 64 partial sums in four registers: a row is one sequential stream, which the
 * hardware prefetchers follow at full speed, and four independent fma chains keep the widening of bf16
 * and int8 off the critical path. The pairwise sum: register k + 2 onto k (lanes j + 32), then 1 onto 0
 * (j + 16), then the 16 lanes of register 0. */
#define AVX512_LINEAR(NAME, W16, LD)                                                                       \
    T512 static void NAME(float *y, const void *W, const float *scale, const float *x, int o0, int o1,    \
                          int C, int OC) {                                                                 \
        (void)OC;                                                                                          \
        const int CB = C & ~(SUMS - 1), rem = C - CB;                                                      \
        float xt[SUMS] __attribute__((aligned(64))) = {0}, wt[SUMS] __attribute__((aligned(64)));          \
        memcpy(xt, x + CB, (size_t)rem * sizeof *xt);                                                      \
        for (int o = o0; o < o1; o++) {                                                                    \
            const size_t r = (size_t)o * C;                                                                \
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                    \
            for (int c = 0; c < CB; c += SUMS) {                                                           \
                a0 = _mm512_fmadd_ps(W16(W, r + c), _mm512_loadu_ps(x + c), a0);                           \
                a1 = _mm512_fmadd_ps(W16(W, r + c + 16), _mm512_loadu_ps(x + c + 16), a1);                 \
                a2 = _mm512_fmadd_ps(W16(W, r + c + 32), _mm512_loadu_ps(x + c + 32), a2);                 \
                a3 = _mm512_fmadd_ps(W16(W, r + c + 48), _mm512_loadu_ps(x + c + 48), a3);                 \
            }                                                                                              \
            if (rem) {                                                                                     \
                TAIL64(LD, W, r + CB, rem, wt);                                                            \
                a0 = _mm512_fmadd_ps(_mm512_load_ps(wt), _mm512_load_ps(xt), a0);                          \
                a1 = _mm512_fmadd_ps(_mm512_load_ps(wt + 16), _mm512_load_ps(xt + 16), a1);                \
                a2 = _mm512_fmadd_ps(_mm512_load_ps(wt + 32), _mm512_load_ps(xt + 32), a2);                \
                a3 = _mm512_fmadd_ps(_mm512_load_ps(wt + 48), _mm512_load_ps(xt + 48), a3);                \
            }                                                                                              \
            a0 = _mm512_add_ps(a0, a2);                                                                    \
            a1 = _mm512_add_ps(a1, a3);                                                                    \
            float s = hsum16(_mm512_add_ps(a0, a1));                                                       \
            y[o] = scale ? s * scale[o] : s;                                                               \
        }                                                                                                  \
    }

#define AVX512_CONV(NAME, W16, LD)                                                                         \
    T512 static void NAME(float *y, const void *W, const float *scale, const float *x, int o0, int o1,    \
                          int C, int OC) {                                                                 \
        float acc[CONV_BLOCK] __attribute__((aligned(64)));                                                \
        const int n = o1 - o0, nv = n & ~(LANES - 1);                                                      \
        memset(acc, 0, (size_t)n * sizeof *acc);                                                           \
        for (int c = 0; c < C; c++) {                                                                      \
            size_t r = (size_t)c * OC + o0;                                                                \
            const float xc = x[c];                                                                         \
            const __m512 xv = _mm512_set1_ps(xc);                                                          \
            for (int j = 0; j < nv; j += LANES)                                                            \
                _mm512_store_ps(acc + j, _mm512_fmadd_ps(xv, W16(W, r + j), _mm512_load_ps(acc + j)));     \
            for (int j = nv; j < n; j++) acc[j] = fmaf(xc, LD(W, r + j), acc[j]);                          \
        }                                                                                                  \
        for (int j = 0; j < n; j++) y[o0 + j] = scale ? acc[j] * scale[o0 + j] : acc[j];                   \
    }

AVX512_LINEAR(lin_f32_avx512, w16_f32, ld_f32)
AVX512_LINEAR(lin_bf16_avx512, w16_bf16, ld_bf16)
AVX512_LINEAR(lin_i8_avx512, w16_i8, ld_i8)
AVX512_CONV(conv_f32_avx512, w16_f32, ld_f32)
AVX512_CONV(conv_bf16_avx512, w16_bf16, ld_bf16)
AVX512_CONV(conv_i8_avx512, w16_i8, ld_i8)

/* ---------------------------------------------------------------- AVX2 + FMA */

#define T256 __attribute__((target("avx2,fma")))

T256 static inline __m256 w8_f32(const void *W, size_t i) { return _mm256_loadu_ps((const float *)W + i); }
T256 static inline __m256 w8_bf16(const void *W, size_t i) {
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)W + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
T256 static inline __m256 w8_i8(const void *W, size_t i) {
    __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)W + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

/* The 8 lanes of v added + 4, + 2, + 1, in registers (as reduce_n(a, 8)). */
T256 static inline float hsum8(__m256 v) {
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

/* As on AVX-512, one row at a time: the 64 partial sums in eight registers (lanes 8k .. 8k + 7 in
 * register k), added k + 4 onto k, k + 2 onto k, 1 onto 0, then the 8 lanes (+ 4, + 2, + 1). */
#define AVX2_LINEAR(NAME, W8, LD)                                                                          \
    T256 static void NAME(float *y, const void *W, const float *scale, const float *x, int o0, int o1,    \
                          int C, int OC) {                                                                 \
        (void)OC;                                                                                          \
        const int CB = C & ~(SUMS - 1), rem = C - CB;                                                      \
        float xt[SUMS] __attribute__((aligned(32))) = {0}, wt[SUMS] __attribute__((aligned(32)));          \
        memcpy(xt, x + CB, (size_t)rem * sizeof *xt);                                                      \
        for (int o = o0; o < o1; o++) {                                                                    \
            const size_t r = (size_t)o * C;                                                                \
            __m256 v[8];                                                                                   \
            for (int k = 0; k < 8; k++) v[k] = _mm256_setzero_ps();                                        \
            for (int c = 0; c < CB; c += SUMS)                                                             \
                for (int k = 0; k < 8; k++)                                                                \
                    v[k] = _mm256_fmadd_ps(W8(W, r + c + 8 * k), _mm256_loadu_ps(x + c + 8 * k), v[k]);    \
            if (rem) {                                                                                     \
                TAIL64(LD, W, r + CB, rem, wt);                                                            \
                for (int k = 0; k < 8; k++)                                                                \
                    v[k] = _mm256_fmadd_ps(_mm256_load_ps(wt + 8 * k), _mm256_load_ps(xt + 8 * k), v[k]);  \
            }                                                                                              \
            for (int h = 4; h > 0; h /= 2)                                                                 \
                for (int k = 0; k < h; k++) v[k] = _mm256_add_ps(v[k], v[k + h]);                          \
            float s = hsum8(v[0]);                                                                         \
            y[o] = scale ? s * scale[o] : s;                                                               \
        }                                                                                                  \
    }

#define AVX2_CONV(NAME, W8, LD)                                                                            \
    T256 static void NAME(float *y, const void *W, const float *scale, const float *x, int o0, int o1,    \
                          int C, int OC) {                                                                 \
        float acc[CONV_BLOCK] __attribute__((aligned(32)));                                                \
        const int n = o1 - o0, nv = n & ~7;                                                                \
        memset(acc, 0, (size_t)n * sizeof *acc);                                                           \
        for (int c = 0; c < C; c++) {                                                                      \
            size_t r = (size_t)c * OC + o0;                                                                \
            const float xc = x[c];                                                                         \
            const __m256 xv = _mm256_set1_ps(xc);                                                          \
            for (int j = 0; j < nv; j += 8)                                                                \
                _mm256_store_ps(acc + j, _mm256_fmadd_ps(xv, W8(W, r + j), _mm256_load_ps(acc + j)));      \
            for (int j = nv; j < n; j++) acc[j] = fmaf(xc, LD(W, r + j), acc[j]);                          \
        }                                                                                                  \
        for (int j = 0; j < n; j++) y[o0 + j] = scale ? acc[j] * scale[o0 + j] : acc[j];                   \
    }

AVX2_LINEAR(lin_f32_avx2, w8_f32, ld_f32)
AVX2_LINEAR(lin_bf16_avx2, w8_bf16, ld_bf16)
AVX2_LINEAR(lin_i8_avx2, w8_i8, ld_i8)
AVX2_CONV(conv_f32_avx2, w8_f32, ld_f32)
AVX2_CONV(conv_bf16_avx2, w8_bf16, ld_bf16)
AVX2_CONV(conv_i8_avx2, w8_i8, ld_i8)

/* ---------------------------------------------------------------- int8 x int8 (LINEAR only)
 *
 * x quantized per block of 32 inputs (the last zero-padded): dx[b] = max|x| / 127 over the block,
 * xq = round(x / dx) in [-127, 127] (one IEEE division, rounded to nearest even). Block b's products of
 * one row are summed exactly in int32 as 8 lanes (lane j: inputs 4j .. 4j + 3 of the block, the
 * grouping of vpdpbusd and of maddubs + madd); then acc[(b % 2) * 8 + j] = fma(lane j, dx[b], acc[...])
 * in block order, the 16 partial sums added as in reduce16, times the row's scale. Every path
 * quantizes x to the same bytes (a maximum is exact in any order) and sums in that order. */

#define QB 32 /* inputs per block of x */

typedef struct {
    int nb;               /* blocks of 32 */
    int8_t *xq;           /* [nb * 32] */
    uint8_t *xa;          /* |xq| (|x| times w with x's sign) */
    uint64_t *xneg;       /* [nb / 2 + 1]: bit k of word p set where xq[64p + k] < 0 (AVX-512) */
    float *dx;            /* [nb] */
    float *dxe;           /* [nb * 8 + 8]: dx[b] repeated 8 times (then zeros) */
} qx_t;

typedef void (*dot_fn)(float *y, const int8_t *W, const float *scale, const qx_t *q, int o0, int o1, int C);
typedef void (*qx_fn)(qx_t *q, const float *x, int C);

/* Stores block b's quantized values v[32] (zero past C) and its scale d. */
static void qx_store(qx_t *q, int b, const int32_t *v, float d) {
    for (int k = 0; k < QB; k++) {
        int c = b * QB + k;
        q->xq[c] = (int8_t)v[k];
        q->xa[c] = (uint8_t)(v[k] < 0 ? -v[k] : v[k]);
        if (v[k] < 0) q->xneg[c / 64] |= 1ull << (c % 64);
    }
    q->dx[b] = d;
    for (int j = 0; j < 8; j++) q->dxe[b * 8 + j] = d;
}

static inline int32_t q127(float v) {
    long r = lrintf(v);
    return (int32_t)(r > 127 ? 127 : r < -127 ? -127 : r);
}

static void qx_portable(qx_t *q, const float *x, int C) {
    for (int b = 0; b < q->nb; b++) {
        int c0 = b * QB, n = C - c0 < QB ? C - c0 : QB;
        float mx = 0;
        for (int k = 0; k < n; k++) {
            float a = fabsf(x[c0 + k]);
            mx = a > mx ? a : mx;
        }
        float d = mx / 127.0f;
        int32_t v[QB] = {0};
        if (d > 0)
            for (int k = 0; k < n; k++) v[k] = q127(x[c0 + k] / d);
        qx_store(q, b, v, d);
    }
}

T256 static void qx_avx2(qx_t *q, const float *x, int C) {
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    for (int b = 0; b < q->nb; b++) {
        int c0 = b * QB, n = C - c0 < QB ? C - c0 : QB;
        float t[QB] __attribute__((aligned(32))) = {0};
        memcpy(t, x + c0, (size_t)n * sizeof *t);
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) m = _mm256_max_ps(m, _mm256_and_ps(v[i] = _mm256_load_ps(t + 8 * i), absm));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float d = _mm_cvtss_f32(h) / 127.0f;
        int32_t r[QB] __attribute__((aligned(32))) = {0};
        if (d > 0) {
            const __m256 dv = _mm256_set1_ps(d);
            for (int i = 0; i < 4; i++) {
                __m256i qi = _mm256_cvtps_epi32(_mm256_div_ps(v[i], dv));
                _mm256_store_si256((__m256i *)(r + 8 * i), _mm256_min_epi32(_mm256_max_epi32(qi, lo), hi));
            }
        }
        qx_store(q, b, r, d);
    }
}

T512 static void qx_avx512(qx_t *q, const float *x, int C) {
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), zero = _mm512_setzero_si512();
    for (int b = 0; b < q->nb; b++) {
        int c0 = b * QB, n = C - c0 < QB ? C - c0 : QB;
        __mmask16 m0 = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
        __mmask16 m1 = n >= 32 ? 0xFFFF : n > 16 ? (__mmask16)((1u << (n - 16)) - 1) : 0;
        __m512 v0 = _mm512_maskz_loadu_ps(m0, x + c0), v1 = _mm512_maskz_loadu_ps(m1, x + c0 + 16);
        float d = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1))) / 127.0f;
        __m512i q0 = zero, q1 = zero;
        if (d > 0) {
            const __m512 dv = _mm512_set1_ps(d);
            q0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_div_ps(v0, dv)), lo), hi);
            q1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_div_ps(v1, dv)), lo), hi);
        }
        _mm_storeu_si128((__m128i *)(q->xq + c0), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(q->xq + c0 + 16), _mm512_cvtepi32_epi8(q1));
        _mm_storeu_si128((__m128i *)(q->xa + c0), _mm512_cvtepi32_epi8(_mm512_abs_epi32(q0)));
        _mm_storeu_si128((__m128i *)(q->xa + c0 + 16), _mm512_cvtepi32_epi8(_mm512_abs_epi32(q1)));
        uint64_t neg = (uint64_t)_mm512_cmplt_epi32_mask(q0, zero) | (uint64_t)_mm512_cmplt_epi32_mask(q1, zero) << 16;
        q->xneg[c0 / 64] |= neg << (c0 % 64);
        q->dx[b] = d;
        _mm256_storeu_ps(q->dxe + b * 8, _mm512_castps512_ps256(_mm512_set1_ps(d)));
    }
}

/* The buffers of qx_t in one allocation, filled by the path's quantizer: NULL if out of memory. */
static void *quantize_x(qx_t *q, const float *x, int C, qx_fn fill) {
    int nb = (C + QB - 1) / QB;
    size_t n = (size_t)nb * QB;
    /* xq, xa | dx, dxe | xneg, each part 64-byte aligned */
    size_t off_dx = (2 * n + 63) & ~(size_t)63, off_neg = (off_dx + (size_t)(9 * nb + 8) * sizeof(float) + 63) & ~(size_t)63;
    char *mem = loom_alloc(off_neg + (size_t)(nb / 2 + 1) * sizeof(uint64_t));
    if (!mem) return NULL;
    *q = (qx_t){nb, (int8_t *)mem, (uint8_t *)mem + n, (uint64_t *)(mem + off_neg), (float *)(mem + off_dx),
                (float *)(mem + off_dx) + nb};
    memset(q->xneg, 0, (size_t)(nb / 2 + 1) * sizeof(uint64_t));
    memset(q->dxe + (size_t)nb * 8, 0, 8 * sizeof(float));
    fill(q, x, C);
    return mem;
}

static void dot_portable(float *y, const int8_t *W, const float *scale, const qx_t *q, int o0, int o1, int C) {
    for (int o = o0; o < o1; o++) {
        const int8_t *w = W + (size_t)o * C;
        float acc[LANES] = {0};
        for (int b = 0; b < q->nb; b++)
            for (int j = 0; j < 8; j++) {
                int32_t s = 0;
                for (int k = 0; k < 4; k++) {
                    int c = b * QB + 4 * j + k;
                    s += c < C ? (int32_t)w[c] * q->xq[c] : 0;
                }
                acc[(b & 1) * 8 + j] = fmaf((float)s, q->dx[b], acc[(b & 1) * 8 + j]);
            }
        y[o] = reduce16(acc) * scale[o];
    }
}

/* AVX2: one block per step, |x| (unsigned) times w carrying x's sign: maddubs pairs stay within int16
 * (2 * 127 * 127), madd with ones gives the 8 int32 lanes; AVX-VNNI's vpdpbusd gives them in one
 * instruction. One row at a time, as in the widening products. */
T256 static inline __m256i dot32_avx2(__m256i w, __m256i xs, __m256i xa) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(xa, _mm256_sign_epi8(w, xs)), _mm256_set1_epi16(1));
}

#define TAVXVNNI __attribute__((target("avx2,fma,avxvnni")))

TAVXVNNI static inline __m256i dot32_avxvnni(__m256i w, __m256i xs, __m256i xa) {
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), xa, _mm256_sign_epi8(w, xs));
}

#define DOT_AVX2(NAME, TGT, DOT32)                                                                         \
    TGT static void NAME(float *y, const int8_t *W, const float *scale, const qx_t *q, int o0, int o1, int C) { \
        const int nbf = C / QB; /* full blocks; the last partial one from a zero-padded copy */            \
        int8_t tail[QB] __attribute__((aligned(32))) = {0};                                                \
        for (int o = o0; o < o1; o++) {                                                                    \
            const int8_t *w = W + (size_t)o * C;                                                           \
            __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};                                    \
            for (int b = 0; b < q->nb; b++) {                                                              \
                const int8_t *wb = w + b * QB;                                                             \
                if (b >= nbf) {                                                                            \
                    memcpy(tail, wb, (size_t)(C - b * QB));                                                \
                    wb = tail;                                                                             \
                }                                                                                          \
                __m256i xs = _mm256_loadu_si256((const __m256i *)(q->xq + b * QB));                        \
                __m256i xa = _mm256_loadu_si256((const __m256i *)(q->xa + b * QB));                        \
                __m256i p = DOT32(_mm256_loadu_si256((const __m256i *)wb), xs, xa);                        \
                acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(q->dx[b]), acc[b & 1]); \
            }                                                                                              \
            y[o] = hsum8(_mm256_add_ps(acc[0], acc[1])) * scale[o]; /* reduce16: lanes + 8, then hsum8 */  \
        }                                                                                                  \
    }

DOT_AVX2(dot_avx2, T256, dot32_avx2)
DOT_AVX2(dot_avxvnni, TAVXVNNI, dot32_avxvnni)

/* AVX-512 VNNI: two blocks per step (lanes 0-7 block b, 8-15 block b + 1), |x| (unsigned) times w
 * negated where x is negative (one masked subtract: AVX-512 has no vpsignb); one row at a time. Like AVX2's vpsignb, the negation needs weights in [-127, 127] (loom_quantize's range). */
#define TVNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

TVNNI static inline __m512 dot64_vnni(__m512i wv, __m512i xa, __mmask64 neg) {
    __m512i ws = _mm512_mask_sub_epi8(wv, neg, _mm512_setzero_si512(), wv); /* w with x's sign */
    return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xa, ws));
}

TVNNI static void dot_vnni(float *y, const int8_t *W, const float *scale, const qx_t *q, int o0, int o1, int C) {
    const int np = C / (2 * QB); /* full pairs of blocks; the rest (< 64 inputs) from a zero-padded copy */
    const int rest = C - np * 2 * QB;
    /* the last step covers blocks 2np and 2np + 1 where they exist: lanes 8-15 only if block 2np + 1 does */
    const __mmask16 last = 2 * np + 1 < q->nb ? 0xFFFF : 0x00FF;
    int8_t tail[2 * QB] __attribute__((aligned(64))) = {0};
    for (int o = o0; o < o1; o++) {
        const int8_t *w = W + (size_t)o * C;
        __m512 acc = _mm512_setzero_ps();
        for (int p = 0; p < np; p++) {
            const size_t c = (size_t)p * 2 * QB;
            __m512 d = dot64_vnni(_mm512_loadu_si512(w + c), _mm512_loadu_si512(q->xa + c), q->xneg[p]);
            acc = _mm512_fmadd_ps(d, _mm512_loadu_ps(q->dxe + p * 16), acc);
        }
        if (rest) {
            memcpy(tail, w + np * 2 * QB, (size_t)rest);
            __m512 d = dot64_vnni(_mm512_load_si512(tail), _mm512_loadu_si512(q->xa + np * 2 * QB), q->xneg[np]);
            acc = _mm512_mask3_fmadd_ps(d, _mm512_loadu_ps(q->dxe + np * 16), acc, last);
        }
        y[o] = hsum16(acc) * scale[o];
    }
}

/* ---------------------------------------------------------------- dispatch */

/* [path][layout][type]: LOOM_W_LINEAR / LOOM_W_CONV1D, LOOM_Q_F32 / BF16 / INT8 */
static const gemv_fn kernels[3][2][3] = {
    {{lin_f32_portable, lin_bf16_portable, lin_i8_portable}, {conv_f32_portable, conv_bf16_portable, conv_i8_portable}},
    {{lin_f32_avx2, lin_bf16_avx2, lin_i8_avx2}, {conv_f32_avx2, conv_bf16_avx2, conv_i8_avx2}},
    {{lin_f32_avx512, lin_bf16_avx512, lin_i8_avx512}, {conv_f32_avx512, conv_bf16_avx512, conv_i8_avx512}},
};

static pthread_once_t isa_once = PTHREAD_ONCE_INIT;
static int isa_best_v, isa_cur, i8_scheme = LOOM_I8_WIDEN, vnni_on = 1;
/* the int8 x int8 kernels [path][VNNI off / on]: VNNI where the CPU has it (AVX-512 VNNI with AVX-512BW on
 * the avx512 path, AVX-VNNI on avx2), else maddubs + madd; and x's quantizers [path] */
static dot_fn dot_kernels[3][2] = {{dot_portable, dot_portable}, {dot_avx2, dot_avx2}, {dot_avx2, dot_avx2}};
static const qx_fn qx_kernels[3] = {qx_portable, qx_avx2, qx_avx512};

/* AVX-VNNI (CPUID.(EAX=7, ECX=1):EAX bit 4), asked directly: not every compiler's __builtin_cpu_supports
 * knows the name. The AVX state it needs is the one avx2 (checked first) needs. */
static int has_avxvnni(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a >> 4) & 1;
}

static void isa_detect(void) {
    __builtin_cpu_init();
    int best = LOOM_ISA_PORTABLE;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = LOOM_ISA_AVX2;
    if (__builtin_cpu_supports("avx512f")) best = LOOM_ISA_AVX512;
    if (best >= LOOM_ISA_AVX2 && has_avxvnni())
        dot_kernels[LOOM_ISA_AVX2][1] = dot_kernels[LOOM_ISA_AVX512][1] = dot_avxvnni;
    if (best == LOOM_ISA_AVX512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni"))
        dot_kernels[LOOM_ISA_AVX512][1] = dot_vnni;
    isa_best_v = best;
    __atomic_store_n(&isa_cur, best, __ATOMIC_RELEASE);
}

loom_isa loom_isa_best(void) {
    pthread_once(&isa_once, isa_detect);
    return (loom_isa)isa_best_v;
}

loom_isa loom_gemv_isa(void) {
    pthread_once(&isa_once, isa_detect);
    return (loom_isa)__atomic_load_n(&isa_cur, __ATOMIC_ACQUIRE);
}

static const char *const isa_names[3] = {"portable", "avx2", "avx512"};

const char *loom_isa_name(loom_isa isa) { return (unsigned)isa < 3 ? isa_names[isa] : "?"; }

int loom_isa_parse(const char *name, loom_isa *isa) {
    for (int i = 0; i < 3; i++)
        if (name && !strcmp(name, isa_names[i])) {
            *isa = (loom_isa)i;
            return LOOM_OK;
        }
    return loom_error(LOOM_EINVAL, "unknown instruction set '%s' (portable, avx2, avx512)", name ? name : "");
}

int loom_gemv_set_isa(loom_isa isa) {
    loom_isa best = loom_isa_best();
    if ((unsigned)isa > (unsigned)best)
        return loom_error(LOOM_EUNSUPPORTED, "this CPU has no %s (best: %s)", loom_isa_name(isa), loom_isa_name(best));
    __atomic_store_n(&isa_cur, (int)isa, __ATOMIC_RELEASE);
    return LOOM_OK;
}

loom_i8_scheme loom_gemv_i8_scheme(void) { return (loom_i8_scheme)__atomic_load_n(&i8_scheme, __ATOMIC_ACQUIRE); }

int loom_gemv_vnni(void) {
    pthread_once(&isa_once, isa_detect);
    loom_isa isa = loom_gemv_isa();
    return __atomic_load_n(&vnni_on, __ATOMIC_ACQUIRE) && dot_kernels[isa][1] != dot_kernels[isa][0];
}

void loom_gemv_set_vnni(int on) { __atomic_store_n(&vnni_on, on != 0, __ATOMIC_RELEASE); }

int loom_gemv_set_i8_scheme(loom_i8_scheme scheme) {
    if (scheme != LOOM_I8_WIDEN && scheme != LOOM_I8_DOT) return loom_error(LOOM_EINVAL, "unknown int8 scheme %d", (int)scheme);
    __atomic_store_n(&i8_scheme, (int)scheme, __ATOMIC_RELEASE);
    return LOOM_OK;
}

/* LINEAR outputs: each thread owns one contiguous range of whole groups of ROWS (its share), which it
 * takes from the front in pieces (a quarter of what is left of it, at least CHUNK_MIN bytes of weights),
 * so that each thread reads one sequential stream, as a static split does; a thread done with its own
 * range then takes pieces from the back of the others' (half of what is left each time), so on a busy
 * machine a thread that starts late or is held up does less instead of holding up the product. CONV1D
 * outputs are split into one contiguous range per thread (whole 16-output vectors, in pieces of at most
 * CONV_BLOCK). Each output is computed whole by one thread in a fixed order, so neither split changes
 * any bits. */
#define CHUNK_MIN 8192
#define SPAN_MAX 64 /* threads a product uses at most */

/* Groups of ROWS rows of C elements of es bytes in CHUNK_MIN bytes (at least 1). */
static int min_groups(int C, int es) {
    long g = CHUNK_MIN / ((long)ROWS * C * es);
    return g < 1 ? 1 : (int)g;
}

/* What is left of one thread's range of groups: front in the low 32 bits, back (exclusive) in the high
 * ones, changed by compare-and-swap only; alone on its cache line. */
typedef struct {
    _Alignas(64) uint64_t fb;
} span_t;

static int span_threads(void) {
    int n = omp_get_max_threads();
    return n < SPAN_MAX ? n : SPAN_MAX;
}

/* Thread t of nt: its share of n groups. */
static void span_init(span_t *sp, int t, int nt, int n) {
    uint64_t f = (uint64_t)((long)n * t / nt), b = (uint64_t)((long)n * (t + 1) / nt);
    __atomic_store_n(&sp[t].fb, b << 32 | f, __ATOMIC_RELAXED);
}

/* The next piece [*g0, *g1) for thread t, at least mg groups where that many are left: from the front of
 * its own range, then (*v = 1 .. nt - 1: the thread t + *v) from the back of the others'; 0 when every
 * range is empty. *v starts at 0. */
static int span_next(span_t *sp, int t, int nt, int mg, int *v, int *g0, int *g1) {
    for (; *v < nt; ++*v) {
        span_t *s = &sp[(t + *v) % nt];
        const int own = *v == 0;
        uint64_t cur = __atomic_load_n(&s->fb, __ATOMIC_RELAXED);
        for (;;) {
            uint32_t f = (uint32_t)cur, b = (uint32_t)(cur >> 32);
            if (f >= b) break;
            uint32_t rem = b - f, k = rem / (own ? 4 : 2);
            if (k < (uint32_t)mg) k = (uint32_t)mg;
            if (k > rem) k = rem;
            uint64_t nw = own ? (uint64_t)b << 32 | (f + k) : (uint64_t)(b - k) << 32 | f;
            if (__atomic_compare_exchange_n(&s->fb, &cur, nw, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                *g0 = (int)(own ? f : b - k);
                *g1 = (int)(own ? f + k : b);
                return 1;
            }
        }
    }
    return 0;
}

static void run(gemv_fn f, float *y, const void *W, const float *scale, const float *x, int C, int OC, int conv,
                int es) {
    if (!conv) {
        const int ng = (OC + ROWS - 1) / ROWS, mg = min_groups(C, es);
        span_t sp[SPAN_MAX];
#pragma omp parallel if ((long)OC * C >= GEMV_PAR) num_threads(span_threads())
        {
            int nt = omp_get_num_threads(), g0, g1;
            int t = omp_get_thread_num(), v = 0;
            span_init(sp, t, nt, ng);
#pragma omp barrier
            while (span_next(sp, t, nt, mg, &v, &g0, &g1)) f(y, W, scale, x, g0 * ROWS, g1 * ROWS < OC ? g1 * ROWS : OC, C, OC);
        }
        return;
    }
    const int nu = (OC + LANES - 1) / LANES;
#pragma omp parallel if ((long)OC * C >= GEMV_PAR)
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int o0 = (int)((long)nu * t / nt) * LANES, o1 = (int)((long)nu * (t + 1) / nt) * LANES;
        if (o1 > OC) o1 = OC;
        for (int o = o0; o < o1; o += CONV_BLOCK) f(y, W, scale, x, o, o + CONV_BLOCK < o1 ? o + CONV_BLOCK : o1, C, OC);
    }
}

/* The int8 x int8 products: x quantized once, then rows in ranges as in run. */
static int run_dot(float *y, const int8_t *W, const float *scale, const float *x, int C, int OC) {
    qx_t q;
    const loom_isa isa = loom_gemv_isa();
    void *mem = quantize_x(&q, x, C, qx_kernels[isa]);
    if (!mem) return 0;
    dot_fn f = dot_kernels[isa][__atomic_load_n(&vnni_on, __ATOMIC_ACQUIRE)];
    const int ng = (OC + ROWS - 1) / ROWS, mg = min_groups(C, 1);
    span_t sp[SPAN_MAX];
#pragma omp parallel if ((long)OC * C >= GEMV_PAR) num_threads(span_threads())
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num(), v = 0, g0, g1;
        span_init(sp, t, nt, ng);
#pragma omp barrier
        while (span_next(sp, t, nt, mg, &v, &g0, &g1)) f(y, W, scale, &q, g0 * ROWS, g1 * ROWS < OC ? g1 * ROWS : OC, C);
    }
    loom_free(mem);
    return 1;
}

void loom_qgemv(float *y, const loom_qmat *w, const float *x, int C, int OC) {
    if (OC <= 0) return;
    int conv = w->layout == LOOM_W_CONV1D, type = w->type == LOOM_Q_BF16 ? 1 : w->type == LOOM_Q_INT8 ? 2 : 0;
    /* (out of memory for the quantized x: the widening products, which need none) */
    if (type == 2 && !conv && loom_gemv_i8_scheme() == LOOM_I8_DOT && run_dot(y, w->data, w->scale, x, C, OC)) return;
    run(kernels[loom_gemv_isa()][conv][type], y, w->data, type == 2 ? w->scale : NULL, x, C, OC, conv, 4 >> type);
}

void loom_gemv(float *y, const float *W, const float *x, int OC, int C) {
    if (OC > 0) run(kernels[loom_gemv_isa()][0][0], y, W, NULL, x, C, OC, 0, 4);
}

void loom_gemv_t(float *y, const float *W, const float *x, int C, int OC) {
    if (OC > 0) run(kernels[loom_gemv_isa()][1][0], y, W, NULL, x, C, OC, 1, 4);
}
