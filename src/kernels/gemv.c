/* Matrix-vector products for decoding (include/loom/gemv.h, loom_gemv in include/loom/kernels.h).
 *
 * One kernel per (path, layout, weight type), all with the signature of gemv_fn: outputs [o0, o1) of
 * y = W x. The paths differ only in how many lanes one instruction holds; the order of every sum is
 * the one gemv.h states, so the portable loops below are also the definition the SIMD ones follow. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "loom/core.h"
#include "loom/gemv.h"
#include "loom/kernels.h"

#define LANES 16         /* partial sums per LINEAR output */
#define ROWS 4           /* LINEAR outputs computed together (sharing the loads of x) */
#define CONV_BLOCK 2048  /* CONV1D outputs whose sums one pass over the rows of W carries */
#define GEMV_PAR 65536   /* multiply-adds below which a product stays on one thread */

typedef void (*gemv_fn)(float *y, const void *W, const float *scale, const float *x, int o0, int o1, int C, int OC);

/* The fixed pairwise order in which the 16 partial sums of a LINEAR output are added. */
static float reduce16(float *a) {
    for (int h = LANES / 2; h > 0; h /= 2)
        for (int j = 0; j < h; j++) a[j] += a[j + h];
    return a[0];
}

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
            float acc[LANES] = {0};                                                                        \
            int c = 0;                                                                                     \
            for (; c + LANES <= C; c += LANES)                                                             \
                for (int j = 0; j < LANES; j++) acc[j] = fmaf(LD(W, r + c + j), x[c + j], acc[j]);         \
            if (c < C) /* the last block, zero-padded to 16 */                                             \
                for (int j = 0; j < LANES; j++)                                                            \
                    acc[j] = fmaf(c + j < C ? LD(W, r + c + j) : 0.0f, c + j < C ? x[c + j] : 0.0f, acc[j]); \
            float s = reduce16(acc);                                                                       \
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

/* The last n < 16 weights of a row from i, zero-padded to 16. */
#define TAIL16(LD, W, i, n, buf)                                      \
    do {                                                              \
        for (int j_ = 0; j_ < LANES; j_++) (buf)[j_] = j_ < (n) ? LD(W, (i) + j_) : 0.0f; \
    } while (0)

#define AVX512_LINEAR(NAME, W16, LD)                                                                       \
    T512 static void NAME(float *y, const void *W, const float *scale, const float *x, int o0, int o1,    \
                          int C, int OC) {                                                                 \
        (void)OC;                                                                                          \
        const int CB = C & ~(LANES - 1), rem = C - CB;                                                     \
        float xt[LANES] = {0}, wt[LANES], a[LANES];                                                        \
        memcpy(xt, x + CB, (size_t)rem * sizeof *xt);                                                      \
        const __m512 xtv = _mm512_loadu_ps(xt);                                                            \
        int o = o0;                                                                                        \
        for (; o + ROWS <= o1; o += ROWS) {                                                                \
            size_t r0 = (size_t)o * C, r1 = r0 + C, r2 = r1 + C, r3 = r2 + C;                              \
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                    \
            for (int c = 0; c < CB; c += LANES) {                                                          \
                __m512 xv = _mm512_loadu_ps(x + c);                                                        \
                a0 = _mm512_fmadd_ps(W16(W, r0 + c), xv, a0);                                              \
                a1 = _mm512_fmadd_ps(W16(W, r1 + c), xv, a1);                                              \
                a2 = _mm512_fmadd_ps(W16(W, r2 + c), xv, a2);                                              \
                a3 = _mm512_fmadd_ps(W16(W, r3 + c), xv, a3);                                              \
            }                                                                                              \
            if (rem) {                                                                                     \
                TAIL16(LD, W, r0 + CB, rem, wt);                                                           \
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wt), xtv, a0);                                        \
                TAIL16(LD, W, r1 + CB, rem, wt);                                                           \
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(wt), xtv, a1);                                        \
                TAIL16(LD, W, r2 + CB, rem, wt);                                                           \
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(wt), xtv, a2);                                        \
                TAIL16(LD, W, r3 + CB, rem, wt);                                                           \
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(wt), xtv, a3);                                        \
            }                                                                                              \
            __m512 av[ROWS] = {a0, a1, a2, a3};                                                            \
            for (int k = 0; k < ROWS; k++) {                                                               \
                _mm512_storeu_ps(a, av[k]);                                                                \
                float s = reduce16(a);                                                                     \
                y[o + k] = scale ? s * scale[o + k] : s;                                                   \
            }                                                                                              \
        }                                                                                                  \
        for (; o < o1; o++) {                                                                              \
            size_t r = (size_t)o * C;                                                                      \
            __m512 acc = _mm512_setzero_ps();                                                              \
            for (int c = 0; c < CB; c += LANES) acc = _mm512_fmadd_ps(W16(W, r + c), _mm512_loadu_ps(x + c), acc); \
            if (rem) {                                                                                     \
                TAIL16(LD, W, r + CB, rem, wt);                                                            \
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(wt), xtv, acc);                                      \
            }                                                                                              \
            _mm512_storeu_ps(a, acc);                                                                      \
            float s = reduce16(a);                                                                         \
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

/* The 16 partial sums as two registers: lanes 0-7 (lo) and 8-15 (hi). */
#define AVX2_LINEAR(NAME, W8, LD)                                                                          \
    T256 static void NAME(float *y, const void *W, const float *scale, const float *x, int o0, int o1,    \
                          int C, int OC) {                                                                 \
        (void)OC;                                                                                          \
        const int CB = C & ~(LANES - 1), rem = C - CB;                                                     \
        float xt[LANES] = {0}, wt[LANES], a[LANES];                                                        \
        memcpy(xt, x + CB, (size_t)rem * sizeof *xt);                                                      \
        const __m256 xtl = _mm256_loadu_ps(xt), xth = _mm256_loadu_ps(xt + 8);                             \
        int o = o0;                                                                                        \
        for (; o + ROWS <= o1; o += ROWS) {                                                                \
            size_t r[ROWS] = {(size_t)o * C, (size_t)(o + 1) * C, (size_t)(o + 2) * C, (size_t)(o + 3) * C}; \
            __m256 l0 = _mm256_setzero_ps(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0; \
            for (int c = 0; c < CB; c += LANES) {                                                          \
                __m256 xl = _mm256_loadu_ps(x + c), xh = _mm256_loadu_ps(x + c + 8);                       \
                l0 = _mm256_fmadd_ps(W8(W, r[0] + c), xl, l0);                                             \
                h0 = _mm256_fmadd_ps(W8(W, r[0] + c + 8), xh, h0);                                         \
                l1 = _mm256_fmadd_ps(W8(W, r[1] + c), xl, l1);                                             \
                h1 = _mm256_fmadd_ps(W8(W, r[1] + c + 8), xh, h1);                                         \
                l2 = _mm256_fmadd_ps(W8(W, r[2] + c), xl, l2);                                             \
                h2 = _mm256_fmadd_ps(W8(W, r[2] + c + 8), xh, h2);                                         \
                l3 = _mm256_fmadd_ps(W8(W, r[3] + c), xl, l3);                                             \
                h3 = _mm256_fmadd_ps(W8(W, r[3] + c + 8), xh, h3);                                         \
            }                                                                                              \
            __m256 lv[ROWS] = {l0, l1, l2, l3}, hv[ROWS] = {h0, h1, h2, h3};                               \
            for (int k = 0; k < ROWS; k++) {                                                               \
                if (rem) {                                                                                 \
                    TAIL16(LD, W, r[k] + CB, rem, wt);                                                     \
                    lv[k] = _mm256_fmadd_ps(_mm256_loadu_ps(wt), xtl, lv[k]);                              \
                    hv[k] = _mm256_fmadd_ps(_mm256_loadu_ps(wt + 8), xth, hv[k]);                          \
                }                                                                                          \
                _mm256_storeu_ps(a, lv[k]);                                                                \
                _mm256_storeu_ps(a + 8, hv[k]);                                                            \
                float s = reduce16(a);                                                                     \
                y[o + k] = scale ? s * scale[o + k] : s;                                                   \
            }                                                                                              \
        }                                                                                                  \
        for (; o < o1; o++) {                                                                              \
            size_t r = (size_t)o * C;                                                                      \
            __m256 lo = _mm256_setzero_ps(), hi = lo;                                                      \
            for (int c = 0; c < CB; c += LANES) {                                                          \
                lo = _mm256_fmadd_ps(W8(W, r + c), _mm256_loadu_ps(x + c), lo);                            \
                hi = _mm256_fmadd_ps(W8(W, r + c + 8), _mm256_loadu_ps(x + c + 8), hi);                    \
            }                                                                                              \
            if (rem) {                                                                                     \
                TAIL16(LD, W, r + CB, rem, wt);                                                            \
                lo = _mm256_fmadd_ps(_mm256_loadu_ps(wt), xtl, lo);                                        \
                hi = _mm256_fmadd_ps(_mm256_loadu_ps(wt + 8), xth, hi);                                    \
            }                                                                                              \
            _mm256_storeu_ps(a, lo);                                                                       \
            _mm256_storeu_ps(a + 8, hi);                                                                   \
            float s = reduce16(a);                                                                         \
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
 * xq = round(x / dx) in [-127, 127]. Block b's products of one row are summed exactly in int32 as 8
 * lanes (lane j: inputs 4j .. 4j + 3 of the block, the grouping of vpdpbusd and of maddubs + madd);
 * then acc[(b % 2) * 8 + j] = fma(lane j, dx[b], acc[...]) in block order, the 16 partial sums added
 * as in reduce16, times the row's scale. */

#define QB 32 /* inputs per block of x */

typedef struct {
    int nb;            /* blocks of 32 */
    const int8_t *xq;  /* [nb * 32] */
    const uint8_t *xa; /* |xq| (|x| times w with x's sign) */
    const uint64_t *xneg; /* [nb / 2 + 1]: bit k of word p set where xq[64p + k] < 0 (AVX-512) */
    const float *dx;   /* [nb] */
    const float *dxe;  /* [nb * 8 + 8]: dx[b] repeated 8 times (then zeros) */
} qx_t;

typedef void (*dot_fn)(float *y, const int8_t *W, const float *scale, const qx_t *q, int o0, int o1, int C);

/* The buffers of qx_t in one allocation: NULL if out of memory. */
static void *quantize_x(qx_t *q, const float *x, int C) {
    int nb = (C + QB - 1) / QB;
    size_t n = (size_t)nb * QB;
    /* xq, xa | dx, dxe | xneg, each part 64-byte aligned */
    size_t off_dx = (2 * n + 63) & ~(size_t)63, off_neg = (off_dx + (size_t)(9 * nb + 8) * sizeof(float) + 63) & ~(size_t)63;
    char *mem = loom_alloc(off_neg + (size_t)(nb / 2 + 1) * sizeof(uint64_t));
    if (!mem) return NULL;
    int8_t *xq = (int8_t *)mem;
    uint8_t *xa = (uint8_t *)mem + n;
    float *dx = (float *)(mem + off_dx), *dxe = dx + nb;
    uint64_t *xneg = (uint64_t *)(mem + off_neg);
    memset(xneg, 0, (size_t)(nb / 2 + 1) * 8);
    for (int b = 0; b < nb; b++) {
        int c0 = b * QB, c1 = c0 + QB < C ? c0 + QB : C;
        float mx = 0;
        for (int c = c0; c < c1; c++) mx = fmaxf(mx, fabsf(x[c]));
        float d = mx / 127.0f;
        for (int k = 0; k < QB; k++) {
            int c = c0 + k;
            long v = c < c1 && d > 0 ? lrintf(x[c] / d) : 0;
            v = v > 127 ? 127 : v < -127 ? -127 : v;
            xq[c] = (int8_t)v;
            xa[c] = (uint8_t)(v < 0 ? -v : v);
            if (v < 0) xneg[c / 64] |= 1ull << (c % 64);
        }
        dx[b] = d;
        for (int j = 0; j < 8; j++) dxe[b * 8 + j] = d;
    }
    for (int j = 0; j < 8; j++) dxe[nb * 8 + j] = 0;
    *q = (qx_t){nb, xq, xa, xneg, dx, dxe};
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
 * (2 * 127 * 127), madd with ones gives the 8 int32 lanes. */
T256 static inline __m256 dot32_avx2(const int8_t *w, const qx_t *q, int b) {
    __m256i wv = _mm256_loadu_si256((const __m256i *)w);
    __m256i xs = _mm256_loadu_si256((const __m256i *)(q->xq + b * QB));
    __m256i xa = _mm256_loadu_si256((const __m256i *)(q->xa + b * QB));
    __m256i p16 = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(wv, xs));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

T256 static void dot_avx2(float *y, const int8_t *W, const float *scale, const qx_t *q, int o0, int o1, int C) {
    const int nbf = C / QB; /* full blocks; the rest from a zero-padded copy */
    int8_t tail[QB] __attribute__((aligned(32)));
    float a[LANES];
    for (int o = o0; o < o1; o++) {
        const int8_t *w = W + (size_t)o * C;
        __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        int b = 0;
        for (; b < nbf; b++)
            acc[b & 1] = _mm256_fmadd_ps(dot32_avx2(w + b * QB, q, b), _mm256_set1_ps(q->dx[b]), acc[b & 1]);
        if (b < q->nb) {
            memset(tail, 0, sizeof tail);
            memcpy(tail, w + b * QB, (size_t)(C - b * QB));
            acc[b & 1] = _mm256_fmadd_ps(dot32_avx2(tail, q, b), _mm256_set1_ps(q->dx[b]), acc[b & 1]);
        }
        _mm256_storeu_ps(a, acc[0]);
        _mm256_storeu_ps(a + 8, acc[1]);
        y[o] = reduce16(a) * scale[o];
    }
}

/* AVX-512 VNNI: two blocks per step (lanes 0-7 block b, 8-15 block b + 1), |x| (unsigned) times w
 * negated where x is negative (one masked subtract: AVX-512 has no vpsignb); four rows share the loads
 * of x. Like AVX2's vpsignb, the negation needs weights in [-127, 127] (loom_quantize's range). */
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
    int8_t tail[4][2 * QB] __attribute__((aligned(64)));
    float a[LANES];
    int o = o0;
    for (; o + ROWS <= o1; o += ROWS) {
        const int8_t *w0 = W + (size_t)o * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int p = 0; p < np; p++) {
            __m512i xa = _mm512_loadu_si512(q->xa + p * 2 * QB);
            __mmask64 ng = q->xneg[p];
            __m512 dv = _mm512_loadu_ps(q->dxe + p * 16);
            a0 = _mm512_fmadd_ps(dot64_vnni(_mm512_loadu_si512(w0 + p * 2 * QB), xa, ng), dv, a0);
            a1 = _mm512_fmadd_ps(dot64_vnni(_mm512_loadu_si512(w1 + p * 2 * QB), xa, ng), dv, a1);
            a2 = _mm512_fmadd_ps(dot64_vnni(_mm512_loadu_si512(w2 + p * 2 * QB), xa, ng), dv, a2);
            a3 = _mm512_fmadd_ps(dot64_vnni(_mm512_loadu_si512(w3 + p * 2 * QB), xa, ng), dv, a3);
        }
        __m512 av[ROWS] = {a0, a1, a2, a3};
        if (rest) {
            const int8_t *wr[ROWS] = {w0, w1, w2, w3};
            __m512i xa = _mm512_loadu_si512(q->xa + np * 2 * QB);
            __mmask64 ng = q->xneg[np];
            __m512 dv = _mm512_loadu_ps(q->dxe + np * 16);
            for (int k = 0; k < ROWS; k++) {
                memset(tail[k], 0, sizeof tail[k]);
                memcpy(tail[k], wr[k] + np * 2 * QB, (size_t)rest);
                av[k] = _mm512_mask3_fmadd_ps(dot64_vnni(_mm512_load_si512(tail[k]), xa, ng), dv, av[k], last);
            }
        }
        for (int k = 0; k < ROWS; k++) {
            _mm512_storeu_ps(a, av[k]);
            y[o + k] = reduce16(a) * scale[o + k];
        }
    }
    for (; o < o1; o++) {
        const int8_t *w = W + (size_t)o * C;
        __m512 acc = _mm512_setzero_ps();
        for (int p = 0; p < np; p++)
            acc = _mm512_fmadd_ps(dot64_vnni(_mm512_loadu_si512(w + p * 2 * QB), _mm512_loadu_si512(q->xa + p * 2 * QB),
                                             q->xneg[p]),
                                  _mm512_loadu_ps(q->dxe + p * 16), acc);
        if (rest) {
            memset(tail[0], 0, sizeof tail[0]);
            memcpy(tail[0], w + np * 2 * QB, (size_t)rest);
            acc = _mm512_mask3_fmadd_ps(dot64_vnni(_mm512_load_si512(tail[0]), _mm512_loadu_si512(q->xa + np * 2 * QB),
                                                   q->xneg[np]),
                                        _mm512_loadu_ps(q->dxe + np * 16), acc, last);
        }
        _mm512_storeu_ps(a, acc);
        y[o] = reduce16(a) * scale[o];
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
static int isa_best_v, isa_cur, i8_scheme = LOOM_I8_WIDEN;
static dot_fn dot_kernels[3] = {dot_portable, dot_avx2, dot_avx2}; /* [path]; AVX-512 with VNNI: dot_vnni */

static void isa_detect(void) {
    __builtin_cpu_init();
    int best = LOOM_ISA_PORTABLE;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = LOOM_ISA_AVX2;
    if (__builtin_cpu_supports("avx512f")) best = LOOM_ISA_AVX512;
    if (best == LOOM_ISA_AVX512 && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni"))
        dot_kernels[LOOM_ISA_AVX512] = dot_vnni;
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

int loom_gemv_set_i8_scheme(loom_i8_scheme scheme) {
    if (scheme != LOOM_I8_WIDEN && scheme != LOOM_I8_DOT) return loom_error(LOOM_EINVAL, "unknown int8 scheme %d", (int)scheme);
    __atomic_store_n(&i8_scheme, (int)scheme, __ATOMIC_RELEASE);
    return LOOM_OK;
}

/* Splits the outputs into one contiguous range per thread (LINEAR: whole groups of ROWS; CONV1D: whole
 * 16-output vectors, and pieces of at most CONV_BLOCK). Each output is computed whole by one thread,
 * so the split does not change any bits. */
static void run(gemv_fn f, float *y, const void *W, const float *scale, const float *x, int C, int OC, int conv) {
    const int unit = conv ? LANES : ROWS, nu = (OC + unit - 1) / unit;
#pragma omp parallel if ((long)OC * C >= GEMV_PAR)
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int o0 = (int)((long)nu * t / nt) * unit, o1 = (int)((long)nu * (t + 1) / nt) * unit;
        if (o1 > OC) o1 = OC;
        int step = conv ? CONV_BLOCK : o1 - o0;
        for (int o = o0; o < o1; o += step) f(y, W, scale, x, o, o + step < o1 ? o + step : o1, C, OC);
    }
}

/* The int8 x int8 products: x quantized once, then rows split as in run. */
static int run_dot(float *y, const int8_t *W, const float *scale, const float *x, int C, int OC) {
    qx_t q;
    void *mem = quantize_x(&q, x, C);
    if (!mem) return 0;
    dot_fn f = dot_kernels[loom_gemv_isa()];
    const int nu = (OC + ROWS - 1) / ROWS;
#pragma omp parallel if ((long)OC * C >= GEMV_PAR)
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int o0 = (int)((long)nu * t / nt) * ROWS, o1 = (int)((long)nu * (t + 1) / nt) * ROWS;
        if (o1 > OC) o1 = OC;
        if (o0 < o1) f(y, W, scale, &q, o0, o1, C);
    }
    loom_free(mem);
    return 1;
}

void loom_qgemv(float *y, const loom_qmat *w, const float *x, int C, int OC) {
    if (OC <= 0) return;
    int conv = w->layout == LOOM_W_CONV1D, type = w->type == LOOM_Q_BF16 ? 1 : w->type == LOOM_Q_INT8 ? 2 : 0;
    /* (out of memory for the quantized x: the widening products, which need none) */
    if (type == 2 && !conv && loom_gemv_i8_scheme() == LOOM_I8_DOT && run_dot(y, w->data, w->scale, x, C, OC)) return;
    run(kernels[loom_gemv_isa()][conv][type], y, w->data, type == 2 ? w->scale : NULL, x, C, OC, conv);
}

void loom_gemv(float *y, const float *W, const float *x, int OC, int C) {
    if (OC > 0) run(kernels[loom_gemv_isa()][0][0], y, W, NULL, x, C, OC, 0);
}

void loom_gemv_t(float *y, const float *W, const float *x, int C, int OC) {
    if (OC > 0) run(kernels[loom_gemv_isa()][1][0], y, W, NULL, x, C, OC, 1);
}
