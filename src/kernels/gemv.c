/* Matrix-vector products for decoding (include/loom/kernels.h). */
#include <omp.h>
#include <string.h>

#include "loom/kernels.h"

#define GEMV_LANES 16 /* interleaved partial sums per output */
#define GEMV_PAR 65536 /* multiply-adds below which the products stay on one thread */
#define GEMV_T_BLOCK 256 /* outputs of the transposed product per task */

/* sum_c w[c] x[c] in the fixed order: lane j sums c = j, j + 16, ...; the lanes are then added pairwise
 * (j with j + 8, then + 4, + 2, + 1); the tail past the last multiple of 16 goes into lanes 0, 1, .... */
static float dot(const float *w, const float *x, int C) {
    float acc[GEMV_LANES] = {0};
    int c = 0;
    for (; c + GEMV_LANES <= C; c += GEMV_LANES)
        for (int j = 0; j < GEMV_LANES; j++) acc[j] += w[c + j] * x[c + j];
    for (int j = 0; c < C; c++, j++) acc[j] += w[c] * x[c];
    for (int h = GEMV_LANES / 2; h > 0; h /= 2)
        for (int j = 0; j < h; j++) acc[j] += acc[j + h];
    return acc[0];
}

void loom_gemv(float *y, const float *W, const float *x, int OC, int C) {
#pragma omp parallel for schedule(static) if ((long)OC * C >= GEMV_PAR)
    for (int o = 0; o < OC; o++) y[o] = dot(W + (size_t)o * C, x, C);
}

void loom_gemv_t(float *y, const float *W, const float *x, int C, int OC) {
    int nb = (OC + GEMV_T_BLOCK - 1) / GEMV_T_BLOCK;
#pragma omp parallel for schedule(static) if ((long)OC * C >= GEMV_PAR)
    for (int b = 0; b < nb; b++) {
        int o0 = b * GEMV_T_BLOCK, o1 = o0 + GEMV_T_BLOCK < OC ? o0 + GEMV_T_BLOCK : OC;
        float *yb = y + o0;
        memset(yb, 0, (size_t)(o1 - o0) * sizeof *yb);
        for (int c = 0; c < C; c++) {
            const float *w = W + (size_t)c * OC + o0;
            float xc = x[c];
            for (int o = 0; o < o1 - o0; o++) yb[o] += xc * w[o];
        }
    }
}
