/* Matrix-vector products over float, bf16 and int8 weights (kernels/ layer): what decoding one token
 * multiplies by. The float-only entry points loom_gemv / loom_gemv_t are in kernels.h; they share the
 * kernels below.
 *
 * Each product has an AVX-512, an AVX2 (+FMA) and a portable path; the best one the CPU has is chosen
 * at run time, once (the build needs no -m flags). All paths compute every output in the same order,
 * with fused multiply-adds (one rounding each, fmaf in the portable path) and no fast-math, so they
 * give the same bits, and so does any thread count: the outputs are cut into ranges (LINEAR: one
 * contiguous share of whole groups of 4 rows a thread, taken from its front in pieces, and a thread done
 * with its own takes pieces from the back of the others'; CONV1D: one range a thread) and each output is
 * computed whole by one thread. The SIMD paths take one row at a time (a row is one sequential stream of memory, which the
 * hardware prefetchers follow best) with several independent fma chains:
 *   LINEAR [OC, C]:  64 partial sums, lane j the fma chain over c = j, j + 64, ... (the last block of
 *                    64 zero-padded), the lanes then added pairwise (j + 32, then + 16, + 8, + 4, + 2,
 *                    + 1);
 *   CONV1D [C, OC]:  one fma chain per output over c = 0, 1, ..., C - 1.
 * Weights are widened exactly to float before the fma: bf16 by a 16-bit shift, int8 by conversion;
 * an int8 output is then multiplied by its channel's scale (loom_qmat, quant.h).
 *
 * Dimension letters as in kernels.h: C inputs, OC outputs. */
#ifndef LOOM_GEMV_H
#define LOOM_GEMV_H

#include "loom/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOOM_ISA_PORTABLE = 0, LOOM_ISA_AVX2 = 1, LOOM_ISA_AVX512 = 2 } loom_isa;

/* The best path this CPU runs (AVX2 needs AVX2 and FMA; AVX-512 needs AVX-512F). */
loom_isa loom_isa_best(void);
/* The path the products use now (loom_isa_best unless loom_gemv_set_isa chose another). */
loom_isa loom_gemv_isa(void);
/* Chooses the path (tests, benchmarks); LOOM_EUNSUPPORTED if the CPU lacks it. Not to be called while
 * another thread runs a product. */
int loom_gemv_set_isa(loom_isa isa);
/* "portable", "avx2", "avx512"; loom_isa_parse is its inverse (LOOM_EINVAL naming the choices). */
const char *loom_isa_name(loom_isa isa);
int loom_isa_parse(const char *name, loom_isa *isa);

/* How int8 LINEAR weights are multiplied (CONV1D ones always widen):
 *   LOOM_I8_WIDEN  each weight widened to float, fma with x (as above): the float model's result up to
 *                  the rounding of a float sum;
 *   LOOM_I8_DOT    llama.cpp's scheme: x quantized per block of 32 inputs (the last zero-padded) to
 *                  xq = round(x / dx) in [-127, 127], dx = max|x| / 127 over the block; each block's
 *                  products summed exactly in int32 as 8 lanes (lane j: inputs 4j .. 4j + 3, the
 *                  grouping of AVX-512 VNNI vpdpbusd and of AVX2 maddubs + madd), then
 *                  acc[(b % 2) * 8 + j] = fma(lane j, dx[b], acc[...]) in block order, the 16 partial
 *                  sums added as above, times the row's scale. Its error beyond a float sum is that of
 *                  rounding x: |y - W x| <= scale * sum_b (dx[b] / 2) sum_{c in b} |q[c]| (+ rounding),
 *                  i.e. at most half a step of x's 8-bit grid per weight, relative error ~1/254 of each
 *                  block's largest |x| (tests/test_gemv.c checks it against a double sum).
 *                  xq = round(x / dx): one IEEE division, rounded to nearest even (every path).
 * The same bits on every path and thread count either way, for int8 weights in [-127, 127] (what
 * loom_quantize writes). Default: LOOM_I8_WIDEN (the library's; `loom generate` and `loom bench generate`
 * choose LOOM_I8_DOT unless --int8 widen). */
typedef enum { LOOM_I8_WIDEN = 0, LOOM_I8_DOT = 1 } loom_i8_scheme;
loom_i8_scheme loom_gemv_i8_scheme(void);
int loom_gemv_set_i8_scheme(loom_i8_scheme scheme); /* LOOM_EINVAL for another value */
/* Whether LOOM_I8_DOT's integer sums use VNNI's vpdpbusd (AVX-512 VNNI on the avx512 path, AVX-VNNI on
 * avx2) rather than maddubs + madd: 1 where the CPU has it on the current path, unless turned off (tests
 * check both kernels on a CPU with VNNI). The same bits either way. Not to be changed while another
 * thread runs a product. */
int loom_gemv_vnni(void);
void loom_gemv_set_vnni(int on);

/* y[OC] = W x[C] for W of any loom_qtype (LOOM_Q_F32: data is float) in either layout. */
void loom_qgemv(float *y, const loom_qmat *w, const float *x, int C, int OC);

#ifdef __cplusplus
}
#endif
#endif
