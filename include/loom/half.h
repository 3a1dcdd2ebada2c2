/* loom half: IEEE-754 binary16 (float16) and bfloat16 <-> float32 conversion.
 *
 * float16: 1 sign, 5 exponent (bias 15), 10 mantissa bits; max 65504, smallest normal 2^-14,
 * smallest subnormal 2^-24. bfloat16: the top 16 bits of a float32 (8 exponent bits, 7 mantissa bits).
 *
 * float32 -> 16-bit rounds to nearest, ties to even; values too large for float16 become +-Inf;
 * subnormals are produced and read exactly; NaN stays NaN (made quiet, sign and the top payload bits
 * kept, as IEEE convertFormat and the x86 F16C instructions do). float16/bfloat16 -> float32 is exact
 * (a float16 signalling NaN comes back quiet).
 *
 * The bulk versions give bit-identical results to the scalar ones; they use F16C (and OpenMP for
 * large arrays) where available. dst and src must not overlap.
 */
#ifndef LOOM_HALF_H
#define LOOM_HALF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

float loom_f16_to_f32(uint16_t h);
uint16_t loom_f32_to_f16(float f);
float loom_bf16_to_f32(uint16_t h);
uint16_t loom_f32_to_bf16(float f);

void loom_f16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void loom_f32_to_f16_n(uint16_t *dst, const float *src, size_t n);
void loom_bf16_to_f32_n(float *dst, const uint16_t *src, size_t n);
void loom_f32_to_bf16_n(uint16_t *dst, const float *src, size_t n);

/* Matmul operands (bf16 mixed precision): float -> bf16 rounding to nearest even like
 * loom_f32_to_bf16, except that float denormals (|x| < 2^-126) become zero of the same sign, which is
 * what AVX-512 BF16's vcvtne2ps2bf16 does. That instruction is used where the CPU has it (checked at
 * run time); elsewhere a scalar loop gives the same bits, so a result never depends on the CPU.
 * A denormal operand contributes below 2^-126 |b| to a product: far under bf16's own rounding.
 * The 2d form converts rows x cols with row strides ldd (dst) and lds (src). */
void loom_f32_to_bf16_daz_n(uint16_t *dst, const float *src, size_t n);
void loom_f32_to_bf16_daz_2d(uint16_t *dst, size_t ldd, const float *src, size_t lds, size_t rows, size_t cols);

#ifdef __cplusplus
}
#endif
#endif
