#include "loom/core.h"
#include "loom/half.h"
#include "test.h"

#include <stdint.h>

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int f16_is_nan(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF); }

/* float16 value by its definition: (-1)^s * m * 2^-24 (subnormal) or (-1)^s * (1024 + m) * 2^(e - 25). */
static double ref_f16_value(uint16_t h) {
    int e = (h >> 10) & 31, m = h & 0x3FF;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

/* float -> float16 by a different route: scale in double (exact) and round with nearbyint, whose default
 * mode is round-to-nearest-even. Finite inputs only. */
static uint16_t ref_f32_to_f16(float f) {
    double x = fabs((double)f);
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    if (x < 0x1p-14) return sign | (uint16_t)nearbyint(x * 0x1p24); /* 1024 = smallest normal, also right */
    int k;
    frexp(x, &k);
    int e = k - 1;                            /* x in [2^e, 2^(e+1)) */
    double r = nearbyint(ldexp(x, 10 - e));   /* significand in [1024, 2048] */
    if (r == 2048) r = 1024, e++;
    if (e > 15) return sign | 0x7C00;
    return sign | (uint16_t)((e + 15) << 10 | ((int)r - 1024));
}

/* float -> bfloat16: the nearer of the two bfloat16 neighbours (by bit pattern), ties to the even one.
 * The pattern above the largest finite value, 0x7F80, stands for 2^128 in the distance. Finite inputs. */
static uint16_t ref_f32_to_bf16(float f) {
    uint32_t u = bits(f);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double x = fabs((double)f);
    double vlo = fabs((double)from_bits((uint32_t)lo << 16));
    double vhi = (hi & 0x7FFF) == 0x7F80 ? 0x1p128 : fabs((double)from_bits((uint32_t)hi << 16));
    double dlo = x - vlo, dhi = vhi - x;
    if (dlo < dhi) return lo;
    if (dhi < dlo) return hi;
    return (lo & 1) ? hi : lo;
}

static void test_known_values(void) {
    /* IEEE-754 binary16: 1.0 = 0 01111 0000000000 = 0x3C00; 65504 = (2 - 2^-10) * 2^15 = 0x7BFF;
     * 2^-24 = smallest subnormal 0x0001; 2^-14 = smallest normal 0x0400; -2 = 0xC000; 0.5 = 0x3800. */
    struct { float f; uint16_t h; } exact[] = {
        {1.0f, 0x3C00}, {-2.0f, 0xC000}, {0.5f, 0x3800}, {65504.0f, 0x7BFF}, {0x1p-24f, 0x0001},
        {0x1p-14f, 0x0400}, {0x1.ff8p-15f, 0x03FF}, {0.0f, 0x0000}, {-0.0f, 0x8000},
        {1.0f / 3.0f, 0x3555}, /* 0.33325195 = 0x3555 is nearest to 1/3 */
    };
    for (size_t i = 0; i < sizeof exact / sizeof *exact; i++) {
        CHECK(loom_f32_to_f16(exact[i].f) == exact[i].h, "f32_to_f16(%a) = 0x%04x, want 0x%04x", exact[i].f,
              loom_f32_to_f16(exact[i].f), exact[i].h);
        if (exact[i].h != 0x3555)
            CHECK(bits(loom_f16_to_f32(exact[i].h)) == bits(exact[i].f), "f16_to_f32(0x%04x) = %a", exact[i].h,
                  loom_f16_to_f32(exact[i].h));
    }
    /* ties go to the even neighbour */
    CHECK(loom_f32_to_f16(1.0f + 0x1p-11f) == 0x3C00, "1 + half ulp ties to even 0x3C00");
    CHECK(loom_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3C02, "1 + 1.5 ulp ties to even 0x3C02");
    CHECK(loom_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3C01, "just above the tie rounds up");
    CHECK(loom_f32_to_f16(0x1p-25f) == 0x0000, "2^-25 ties to even zero");
    CHECK(loom_f32_to_f16(0x1.000002p-25f) == 0x0001, "just above 2^-25 rounds to 2^-24");
    CHECK(loom_f32_to_f16(-0x1p-26f) == 0x8000, "tiny negatives keep their sign");
    CHECK(loom_f32_to_f16(3 * 0x1p-25f) == 0x0002, "1.5 * 2^-24 ties to even 2 * 2^-24");
    CHECK(loom_f32_to_f16(5 * 0x1p-25f) == 0x0002, "2.5 * 2^-24 ties to even 2 * 2^-24");
    CHECK(loom_f32_to_f16(0x1.ffcp-15f) == 0x0400, "subnormal rounding up into the smallest normal");
    /* 65520 is halfway between 65504 and 65536 (= Inf in binary16): ties to even, so Inf */
    CHECK(loom_f32_to_f16(65519.0f) == 0x7BFF, "65519 -> 65504");
    CHECK(loom_f32_to_f16(65520.0f) == 0x7C00, "65520 -> Inf");
    CHECK(loom_f32_to_f16(-1e9f) == 0xFC00, "-1e9 -> -Inf");
    CHECK(loom_f32_to_f16(INFINITY) == 0x7C00 && loom_f32_to_f16(-INFINITY) == 0xFC00, "infinities");
    CHECK(isinf(loom_f16_to_f32(0x7C00)) && loom_f16_to_f32(0xFC00) < 0, "f16 infinities");
    /* NaN stays NaN, including one whose payload sits only in bits that binary16 drops */
    CHECK(f16_is_nan(loom_f32_to_f16(NAN)), "NaN -> 0x%04x", loom_f32_to_f16(NAN));
    CHECK(f16_is_nan(loom_f32_to_f16(from_bits(0x7F800001))), "low-payload NaN -> 0x%04x",
          loom_f32_to_f16(from_bits(0x7F800001)));
    CHECK(loom_f32_to_f16(from_bits(0xFFC00000)) & 0x8000, "NaN sign kept");
    CHECK(isnan(loom_f16_to_f32(0x7C01)) && isnan(loom_f16_to_f32(0xFE00)), "f16 NaNs read as NaN");

    /* bfloat16 = top half of binary32: 1.0 = 0x3F800000 -> 0x3F80; pi = 0x40490FDB -> 0x4049 */
    CHECK(loom_f32_to_bf16(1.0f) == 0x3F80, "bf16(1) = 0x%04x", loom_f32_to_bf16(1.0f));
    CHECK(loom_f32_to_bf16(-1.0f) == 0xBF80, "bf16(-1)");
    CHECK(loom_f32_to_bf16(3.14159265f) == 0x4049, "bf16(pi) = 0x%04x", loom_f32_to_bf16(3.14159265f));
    CHECK(bits(loom_bf16_to_f32(0x3F80)) == 0x3F800000, "bf16 0x3F80 -> 1.0");
    CHECK(loom_f32_to_bf16(1.0f + 0x1p-8f) == 0x3F80, "bf16 tie to even (down)");
    CHECK(loom_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82, "bf16 tie to even (up)");
    CHECK(loom_f32_to_bf16(from_bits(0x7F7FFFFF)) == 0x7F80, "FLT_MAX rounds to bf16 Inf");
    CHECK(loom_f32_to_bf16(from_bits(0x7F7F7FFF)) == 0x7F7F, "just below the tie stays finite");
    CHECK(loom_f32_to_bf16(from_bits(0x00008000)) == 0x0000, "subnormal tie to even zero");
    CHECK(loom_f32_to_bf16(from_bits(0x00018000)) == 0x0002, "subnormal tie to even 2");
    CHECK(loom_f32_to_bf16(INFINITY) == 0x7F80 && loom_f32_to_bf16(-INFINITY) == 0xFF80, "bf16 infinities");
    uint16_t bn = loom_f32_to_bf16(from_bits(0x7F800001));
    CHECK((bn & 0x7F80) == 0x7F80 && (bn & 0x7F), "bf16 low-payload NaN stays NaN: 0x%04x", bn);
    CHECK(isnan(loom_bf16_to_f32(loom_f32_to_bf16(NAN))), "bf16 NaN");
}

static void test_exhaustive_f16(void) {
    int value_bad = 0, trip_bad = 0, nan_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = loom_f16_to_f32((uint16_t)h);
        uint16_t back = loom_f32_to_f16(f);
        if (f16_is_nan((uint16_t)h)) {
            /* a signalling NaN comes back quiet; sign and payload survive */
            nan_bad += !isnan(f) || back != (h | 0x200) || (!!signbit(f)) != !!(h & 0x8000);
            continue;
        }
        double ref = (h & 0x7C00) == 0x7C00 ? ((h & 0x8000) ? -INFINITY : INFINITY) : ref_f16_value((uint16_t)h);
        value_bad += (double)f != ref || (!!signbit(f)) != !!(h & 0x8000);
        trip_bad += back != h;
    }
    CHECK(value_bad == 0, "%d float16 values decoded wrongly", value_bad);
    CHECK(trip_bad == 0, "%d float16 values do not round-trip", trip_bad);
    CHECK(nan_bad == 0, "%d float16 NaNs mishandled", nan_bad);
}

/* Rounding against the reference routes: every float16 midpoint and its float32 neighbours, then
 * random float32 bit patterns. */
static void test_rounding_vs_reference(void) {
    int bad16 = 0, badbf = 0, n = 0;
    for (uint32_t h = 0; h < 0x7C00; h++) {
        double lo = ref_f16_value((uint16_t)h), hi = h + 1 < 0x7C00 ? ref_f16_value((uint16_t)(h + 1)) : 65536.0;
        float mid = (float)((lo + hi) / 2); /* 12 significant bits: exact in float */
        float cases[] = {mid, nextafterf(mid, 0), nextafterf(mid, INFINITY), (float)lo, -mid, -nextafterf(mid, 0)};
        for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
            uint16_t got = loom_f32_to_f16(cases[c]), want = ref_f32_to_f16(cases[c]);
            if (got != want && bad16++ < 5)
                fprintf(stderr, "f16(%a) = 0x%04x, reference 0x%04x\n", cases[c], got, want);
            n++;
        }
    }
    loom_rng r;
    loom_rng_init(&r, 2024, 1);
    for (int i = 0; i < 1000000; i++) {
        float f = from_bits((uint32_t)loom_rng_u64(&r));
        if (!isfinite(f)) continue;
        uint16_t got = loom_f32_to_f16(f), want = ref_f32_to_f16(f);
        if (got != want && bad16++ < 10) fprintf(stderr, "f16(%a) = 0x%04x, reference 0x%04x\n", f, got, want);
        got = loom_f32_to_bf16(f), want = ref_f32_to_bf16(f);
        if (got != want && badbf++ < 10) fprintf(stderr, "bf16(%a) = 0x%04x, reference 0x%04x\n", f, got, want);
        /* values near the float16 range, where random bit patterns rarely land */
        float g = (float)ldexp(loom_rng_uniform(&r) * 2 - 1, (int)loom_rng_below(&r, 46) - 28);
        got = loom_f32_to_f16(g), want = ref_f32_to_f16(g);
        if (got != want && bad16++ < 10) fprintf(stderr, "f16(%a) = 0x%04x, reference 0x%04x\n", g, got, want);
        n += 2;
    }
    CHECK(bad16 == 0, "%d of %d float16 roundings differ from the reference", bad16, n);
    CHECK(badbf == 0, "%d bfloat16 roundings differ from the reference", badbf);
}

/* The bulk versions must equal the scalar ones bit for bit, on any length (vector tails) and on arrays
 * large enough to be split across threads. */
static void test_bulk(void) {
    size_t n = (3u << 20) + 5; /* above the multi-thread threshold */
    uint16_t *h = malloc(n * sizeof *h), *h2 = malloc(n * sizeof *h2);
    float *f = malloc(n * sizeof *f), *f2 = malloc(n * sizeof *f2);
    if (!h || !h2 || !f || !f2) {
        CHECK(0, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)(i * 40503u); /* odd multiplier: all patterns appear */
    size_t lens[] = {0, 1, 7, 8, 9, 65536 + 3, n};
    for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
        size_t m = lens[l];
        loom_f16_to_f32_n(f, h, m);
        size_t bad = 0;
        for (size_t i = 0; i < m; i++) bad += bits(f[i]) != bits(loom_f16_to_f32(h[i]));
        CHECK(bad == 0, "f16_to_f32_n length %zu: %zu differ", m, bad);
        loom_bf16_to_f32_n(f, h, m);
        bad = 0;
        for (size_t i = 0; i < m; i++) bad += bits(f[i]) != bits(loom_bf16_to_f32(h[i]));
        CHECK(bad == 0, "bf16_to_f32_n length %zu: %zu differ", m, bad);
    }
    loom_rng r;
    loom_rng_init(&r, 7, 2);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)loom_rng_u64(&r);
        /* mix raw bit patterns (NaNs, infinities, subnormals) with values in the float16 range */
        f2[i] = (i & 1) ? from_bits(u) : (float)ldexp((double)(u >> 8) / (1 << 24) - 0.5, (int)(u & 63) - 40);
    }
    for (size_t l = 0; l < sizeof lens / sizeof *lens; l++) {
        size_t m = lens[l], bad = 0;
        loom_f32_to_f16_n(h2, f2, m);
        for (size_t i = 0; i < m; i++) bad += h2[i] != loom_f32_to_f16(f2[i]);
        CHECK(bad == 0, "f32_to_f16_n length %zu: %zu differ", m, bad);
        loom_f32_to_bf16_n(h2, f2, m);
        bad = 0;
        for (size_t i = 0; i < m; i++) bad += h2[i] != loom_f32_to_bf16(f2[i]);
        CHECK(bad == 0, "f32_to_bf16_n length %zu: %zu differ", m, bad);
    }
    free(h);
    free(h2);
    free(f);
    free(f2);
}

int main(void) {
    test_known_values();
    test_exhaustive_f16();
    test_rounding_vs_reference();
    test_bulk();
    return test_summary();
}
