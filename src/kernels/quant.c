/* Low-precision frozen-weight matmuls: dequantize a block, then loom_sgemm. */
#include "loom/quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/half.h"
#include "loom/kernels.h"

/* Rows of the stored matrix expanded per block: enough rows that each sgemm is large, few enough that
 * the scratch stays a few MiB (fewer, larger blocks also mean fewer parallel regions per step). */
#define QBLOCK_FLOATS (1024 * 1024)

static int stored_rows(int layout, int C, int OC) { return layout == LOOM_W_LINEAR ? OC : C; }
static int stored_cols(int layout, int C, int OC) { return layout == LOOM_W_LINEAR ? C : OC; }

void loom_quantize(void *q, float *scale, const float *w, loom_qtype type, int layout, int C, int OC) {
    int R = stored_rows(layout, C, OC), K = stored_cols(layout, C, OC);
    size_t n = (size_t)R * K;
    if (type == LOOM_Q_BF16) {
        loom_f32_to_bf16_n(q, w, n);
        return;
    }
    if (type == LOOM_Q_F32) {
        memcpy(q, w, n * sizeof(float));
        return;
    }
    int8_t *o = q;
    if (layout == LOOM_W_LINEAR) { /* output channel = row */
#pragma omp parallel for schedule(static)
        for (int r = 0; r < R; r++) {
            const float *x = w + (size_t)r * K;
            float mx = 0;
            for (int k = 0; k < K; k++) { /* (no fmaxf: a library call where the compiler cannot inline it) */
                float a = fabsf(x[k]);
                mx = a > mx ? a : mx;
            }
            float s = mx > 0 ? mx / 127.0f : 1.0f;
            scale[r] = s;
            for (int k = 0; k < K; k++) o[(size_t)r * K + k] = (int8_t)lrintf(x[k] / s);
        }
    } else { /* output channel = column */
        for (int k = 0; k < K; k++) scale[k] = 0;
        for (int r = 0; r < R; r++)
            for (int k = 0; k < K; k++) {
                float a = fabsf(w[(size_t)r * K + k]);
                scale[k] = a > scale[k] ? a : scale[k];
            }
        for (int k = 0; k < K; k++) scale[k] = scale[k] > 0 ? scale[k] / 127.0f : 1.0f;
#pragma omp parallel for schedule(static)
        for (int r = 0; r < R; r++)
            for (int k = 0; k < K; k++) o[(size_t)r * K + k] = (int8_t)lrintf(w[(size_t)r * K + k] / scale[k]);
    }
}

void loom_dequantize_rows(float *dst, const loom_qmat *w, int C, int OC, int r0, int r1) {
    int K = stored_cols(w->layout, C, OC);
    size_t base = (size_t)r0 * K;
    int nr = r1 - r0;
    if (w->type == LOOM_Q_F32) {
        memcpy(dst, (const float *)w->data + base, (size_t)nr * K * sizeof(float));
    } else if (w->type == LOOM_Q_BF16) {
        const uint16_t *s = (const uint16_t *)w->data + base;
#pragma omp parallel for schedule(static) if (nr * (size_t)K > 65536)
        for (int r = 0; r < nr; r++) loom_bf16_to_f32_n(dst + (size_t)r * K, s + (size_t)r * K, (size_t)K);
    } else {
        const int8_t *s = (const int8_t *)w->data + base;
        const float *sc = w->scale;
        int row_scaled = w->layout == LOOM_W_LINEAR;
#pragma omp parallel for schedule(static) if (nr * (size_t)K > 65536)
        for (int r = 0; r < nr; r++) {
            const int8_t *x = s + (size_t)r * K;
            float *d = dst + (size_t)r * K;
            if (row_scaled) {
                float f = sc[r0 + r];
                for (int k = 0; k < K; k++) d[k] = (float)x[k] * f;
            } else {
                for (int k = 0; k < K; k++) d[k] = (float)x[k] * sc[k];
            }
        }
    }
}

static int block_rows(int R, int K) {
    int b = QBLOCK_FLOATS / (K > 0 ? K : 1);
    if (b < 16) b = 16;
    return b > R ? R : b;
}

size_t loom_qmatmul_scratch(int C, int OC) {
    /* the block of either layout: LINEAR stores OC rows of C, CONV1D C rows of OC */
    size_t lin = (size_t)block_rows(OC, C) * C, conv = (size_t)block_rows(C, OC) * OC;
    return lin > conv ? lin : conv;
}

void loom_qmatmul_forward(float *out, int ldo, const float *inp, int ldi, const loom_qmat *w, const float *bias, int N,
                          int C, int OC, float *scratch) {
    int R = stored_rows(w->layout, C, OC), K = stored_cols(w->layout, C, OC), br = block_rows(R, K);
    for (int r0 = 0; r0 < R; r0 += br) {
        int r1 = r0 + br < R ? r0 + br : R, nr = r1 - r0;
        loom_dequantize_rows(scratch, w, C, OC, r0, r1);
        if (w->layout == LOOM_W_LINEAR) /* out[:, r0:r1] = inp @ Wblk^T, Wblk [nr, C] */
            loom_sgemm(0, 1, N, nr, C, 1.0f, inp, ldi, scratch, C, 0.0f, out + r0, ldo);
        else /* out += inp[:, r0:r1] @ Wblk, Wblk [nr, OC] */
            loom_sgemm(0, 0, N, OC, nr, 1.0f, inp + r0, ldi, scratch, OC, r0 ? 1.0f : 0.0f, out, ldo);
    }
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * ldo + o] += bias[o];
    }
}

void loom_qmatmul_backward(float *dinp, int ldi, float beta, const float *dout, int ldo, const loom_qmat *w, int N,
                           int C, int OC, float *scratch) {
    int R = stored_rows(w->layout, C, OC), K = stored_cols(w->layout, C, OC), br = block_rows(R, K);
    for (int r0 = 0; r0 < R; r0 += br) {
        int r1 = r0 + br < R ? r0 + br : R, nr = r1 - r0;
        loom_dequantize_rows(scratch, w, C, OC, r0, r1);
        if (w->layout == LOOM_W_LINEAR) /* dinp (+)= dout[:, r0:r1] @ Wblk, Wblk [nr, C] */
            loom_sgemm(0, 0, N, C, nr, 1.0f, dout + r0, ldo, scratch, C, r0 ? 1.0f : beta, dinp, ldi);
        else /* dinp[:, r0:r1] = beta * dinp + dout @ Wblk^T, Wblk [nr, OC] */
            loom_sgemm(0, 1, N, nr, OC, 1.0f, dout, ldo, scratch, OC, beta, dinp + r0, ldi);
    }
}
