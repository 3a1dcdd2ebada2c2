#include "loom/half.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define LOOM_HAVE_F16C 1
#endif

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float loom_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) {
        /* zero or subnormal m * 2^-24: exact in float32, whose range is far wider */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31) return bits_f32(sign | 0x7F800000u | (m ? 0x400000u | (m << 13) : 0));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13)); /* rebias 15 -> 127 */
}

uint16_t loom_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) {
        if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
        return sign | 0x7C00u;
    }
    /* 65520 (0x477FF000) is halfway between 65504 and 2^16; the tie goes to the even side, 2^16 = Inf */
    if (ax >= 0x477FF000u) return sign | 0x7C00u;
    if (ax >= 0x38800000u) { /* float16 normal range, >= 2^-14 */
        /* round the 13 dropped bits to nearest even; a carry into the exponent is the right result */
        uint32_t r = ax + 0xFFFu + ((ax >> 13) & 1u) - 0x38000000u;
        return (uint16_t)(sign | (r >> 13));
    }
    uint32_t e = ax >> 23;
    if (e < 102) return sign; /* below 2^-25: rounds to zero (2^-25 itself is a tie, to even 0) */
    /* subnormal result round(|f| * 2^24) = mant >> (126 - e), shift in [14, 24] */
    uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u, shift = 126 - e;
    uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}

float loom_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t loom_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u); /* quiet NaN */
    /* round to nearest even on the 16 dropped bits; overflow carries into Inf as it should */
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

/* Blocks of this many elements are converted per task; arrays shorter than PAR_MIN stay on one thread. */
#define BLOCK 65536
#define PAR_MIN (1u << 20)

static void f16_to_f32_block(float *dst, const uint16_t *src, size_t n) {
    size_t i = 0;
#ifdef LOOM_HAVE_F16C
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
    for (; i < n; i++) dst[i] = loom_f16_to_f32(src[i]);
}

static void f32_to_f16_block(uint16_t *dst, const float *src, size_t n) {
    size_t i = 0;
#ifdef LOOM_HAVE_F16C
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
    for (; i < n; i++) dst[i] = loom_f32_to_f16(src[i]);
}

static void bf16_to_f32_block(float *dst, const uint16_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(dst + i, &u, 4);
    }
}

static void f32_to_bf16_block(uint16_t *dst, const float *src, size_t n) {
    /* branch-free form of loom_f32_to_bf16 so the loop vectorises */
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, src + i, 4);
        uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
        uint32_t qnan = (x >> 16) | 0x0040u;
        dst[i] = (uint16_t)((x & 0x7FFFFFFFu) > 0x7F800000u ? qnan : rounded);
    }
}

#define LOOM_BULK(name, block, dst_t, src_t)                                                         \
    void name(dst_t *dst, const src_t *src, size_t n) {                                              \
        if (n < PAR_MIN) {                                                                           \
            block(dst, src, n);                                                                      \
            return;                                                                                  \
        }                                                                                            \
        long nb = (long)((n + BLOCK - 1) / BLOCK);                                                   \
        _Pragma("omp parallel for schedule(static)") for (long b = 0; b < nb; b++) {                 \
            size_t off = (size_t)b * BLOCK;                                                          \
            block(dst + off, src + off, n - off < BLOCK ? n - off : BLOCK);                          \
        }                                                                                            \
    }

LOOM_BULK(loom_f16_to_f32_n, f16_to_f32_block, float, uint16_t)
LOOM_BULK(loom_f32_to_f16_n, f32_to_f16_block, uint16_t, float)
LOOM_BULK(loom_bf16_to_f32_n, bf16_to_f32_block, float, uint16_t)
LOOM_BULK(loom_f32_to_bf16_n, f32_to_bf16_block, uint16_t, float)

/* ---- matmul operands: round to nearest even, float denormals to signed zero (see half.h) */

static inline uint16_t bf16_daz(uint32_t x) {
    if ((x & 0x7F800000u) == 0) return (uint16_t)((x >> 16) & 0x8000u);              /* zero, denormal */
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u);      /* quiet NaN */
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

static void f32_to_bf16_daz_scalar(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, src + i, 4);
        dst[i] = bf16_daz(x);
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
#define LOOM_HAVE_BF16_DISPATCH 1
/* vcvtne2ps2bf16: 32 floats a time, rounding to nearest even, denormal inputs as zero, NaN quiet:
 * the same bits as bf16_daz (tests/test_half.c compares them) */
__attribute__((target("avx512f,avx512bw,avx512bf16"))) static void f32_to_bf16_daz_avx512(uint16_t *dst,
                                                                                          const float *src, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 lo = _mm512_loadu_ps(src + i), hi = _mm512_loadu_ps(src + i + 16);
        __m512bh r = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512((void *)(dst + i), (__m512i)r);
    }
    f32_to_bf16_daz_scalar(dst + i, src + i, n - i);
}
#endif

#ifdef LOOM_HAVE_BF16_DISPATCH
static int bf16_native(void) {
    static int cached = -1;
    int c = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (c < 0) {
        __builtin_cpu_init();
        c = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
        __atomic_store_n(&cached, c, __ATOMIC_RELAXED);
    }
    return c;
}
#endif

static void f32_to_bf16_daz_block(uint16_t *dst, const float *src, size_t n) {
#ifdef LOOM_HAVE_BF16_DISPATCH
    if (bf16_native()) {
        f32_to_bf16_daz_avx512(dst, src, n);
        return;
    }
#endif
    f32_to_bf16_daz_scalar(dst, src, n);
}

LOOM_BULK(loom_f32_to_bf16_daz_n, f32_to_bf16_daz_block, uint16_t, float)

void loom_f32_to_bf16_daz_2d(uint16_t *dst, size_t ldd, const float *src, size_t lds, size_t rows, size_t cols) {
    if (ldd == cols && lds == cols) {
        loom_f32_to_bf16_daz_n(dst, src, rows * cols);
        return;
    }
#pragma omp parallel for schedule(static) if (rows * cols >= PAR_MIN / 4)
    for (size_t r = 0; r < rows; r++) f32_to_bf16_daz_block(dst + r * ldd, src + r * lds, cols);
}
