/* Low-precision frozen weights (kernels/ layer): matmuls against a weight held in BF16 or int8
 * (per-output-channel absmax). Prefix attention has its own header (loom/prefix_attn.h).
 *
 * Low-precision weights are never expanded whole: each matmul dequantizes a block of rows into a
 * caller-provided float scratch buffer and multiplies it with loom_sgemm, so the resident weight memory stays
 * 2 bytes (BF16) or 1 byte + a scale per output channel (int8) per element.
 *
 * Dimension letters as in kernels.h: N rows, C input channels, OC output channels. */
#ifndef LOOM_QUANT_H
#define LOOM_QUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOOM_Q_F32 = 0, LOOM_Q_BF16 = 1, LOOM_Q_INT8 = 2 } loom_qtype;

/* A frozen weight matrix in the layout of kernels.h (LOOM_W_LINEAR [OC, C] or LOOM_W_CONV1D [C, OC]).
 * INT8: w = q * scale[o] with scale[o] = max|w[o, :]| / 127 over output channel o (a row for LINEAR, a
 * column for CONV1D). */
typedef struct {
    loom_qtype type;
    int layout;
    const void *data;     /* uint16_t (BF16) or int8_t (INT8), rows x cols in the layout's order */
    const float *scale;   /* INT8: [OC]; else NULL */
} loom_qmat;

/* Quantizes w (layout, C inputs, OC outputs) into q (OC*C elements of the type) and scale[OC] (INT8). */
void loom_quantize(void *q, float *scale, const float *w, loom_qtype type, int layout, int C, int OC);
/* Expands rows [r0, r1) of the stored matrix (rows in storage order) into dst[(r1-r0), cols]. */
void loom_dequantize_rows(float *dst, const loom_qmat *w, int C, int OC, int r0, int r1);
/* Floats of scratch the two matmuls below need for a C x OC matrix. */
size_t loom_qmatmul_scratch(int C, int OC);
/* out[N, OC] (ldo) = inp[N, C] (ldi) @ W (+ bias). */
void loom_qmatmul_forward(float *out, int ldo, const float *inp, int ldi, const loom_qmat *w, const float *bias, int N,
                          int C, int OC, float *scratch);
/* dinp[N, C] (ldi) = beta * dinp + dout[N, OC] (ldo) @ W^T. */
void loom_qmatmul_backward(float *dinp, int ldi, float beta, const float *dout, int ldo, const loom_qmat *w, int N,
                           int C, int OC, float *scratch);

#ifdef __cplusplus
}
#endif
#endif
