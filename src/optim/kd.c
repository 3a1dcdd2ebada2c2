/* Knowledge distillation's loss and gradient (include/loom/distill.h). */
#include "loom/distill.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/kernels.h"

static float row_max(const float *x, int V) {
    float m = x[0];
    for (int v = 1; v < V; v++) m = x[v] > m ? x[v] : m;
    return m;
}

void loom_kd_soften(float *q, const float *x, int N, int V, float temp) {
    const double inv = 1.0 / (double)temp;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * V;
        float *qr = q + (size_t)n * V;
        const float m = row_max(xr, V);
        double z = 0;
        for (int v = 0; v < V; v++) {
            double e = exp(((double)xr[v] - m) * inv);
            qr[v] = (float)e;
            z += e;
        }
        const double iz = 1.0 / z;
        for (int v = 0; v < V; v++) qr[v] = (float)((double)qr[v] * iz);
    }
}

int loom_kd_grad(float *s, float *q, const int32_t *targets, int N, int V, float temp, float alpha, double *kl) {
    double *rkl = malloc((N > 0 ? (size_t)N : 1) * sizeof *rkl);
    if (!rkl) return loom_error(LOOM_ENOMEM, "out of memory for the distillation loss");
    int nv = 0;
    for (int n = 0; n < N; n++) nv += targets[n] >= 0 && targets[n] < V;
    const double inv = 1.0 / (double)temp, k = nv ? (double)alpha * (double)temp / (double)nv : 0.0;
    /* the soft term first, into q (the student logits are still intact): q <- k (softmax(s / T) - q) */
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *qr = q + (size_t)n * V;
        const float *sr = s + (size_t)n * V;
        rkl[n] = 0;
        if (!(targets[n] >= 0 && targets[n] < V)) {
            memset(qr, 0, (size_t)V * sizeof *qr);
            continue;
        }
        const float m = row_max(sr, V);
        double z = 0;
        for (int v = 0; v < V; v++) z += exp(((double)sr[v] - m) * inv);
        const double lz = log(z), iz = 1.0 / z;
        double d = 0, e; /* KL(q || p) = sum q (log q - log p), log p = (s - m) / T - log z */
        for (int v = 0; v < V; v++) {
            double a = ((double)sr[v] - m) * inv, qv = qr[v];
            if (qv > 0) d += qv * (log(qv) - (a - lz));
            e = exp(a);
            qr[v] = (float)(k * (e * iz - qv));
        }
        rkl[n] = d;
    }
    /* the hard term in place (the cross-entropy kernel's own gradient, scaled by 1 - alpha), then the sum */
    loom_crossentropy_backward_w(s, targets, NULL, 1, N, V, nv, 1.0f - alpha);
    if (alpha != 0.0f) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < (size_t)N * V; i++) s[i] += q[i];
    }
    double klsum = 0; /* in row order: the same for any thread count */
    for (int n = 0; n < N; n++) klsum += rkl[n];
    free(rkl);
    if (kl) *kl = nv ? klsum / nv : 0.0;
    return LOOM_OK;
}

float loom_kd_loss(double kl, float ce, float temp, float alpha) {
    if (alpha == 0.0f) return ce;
    return (float)((double)alpha * (double)temp * (double)temp * kl + (1.0 - (double)alpha) * (double)ce);
}
