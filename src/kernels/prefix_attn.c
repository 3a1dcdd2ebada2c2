/* Causal self-attention over learned key/value prefixes (prefix tuning / P-tuning v2). */
#include "loom/prefix_attn.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "loom/kernels.h"

void loom_prefix_attention_forward(float *out, float *att, const float *qkv, int ldqkv, const float *pk,
                                   const float *pv, int ldp, int P, int B, int T, int NH, int NKV, int HS) {
    const int S = P + T, grp = NH / NKV, qcols = NH * HS;
    const float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            int g = h / grp;
            for (int t = 0; t < T; t++) {
                const float *q = qkv + (size_t)(b * T + t) * ldqkv + h * HS;
                float *a = att + (((size_t)b * NH + h) * T + t) * S;
                float mx = -INFINITY;
                for (int j = 0; j < P + t + 1; j++) {
                    const float *k = j < P ? pk + (size_t)j * ldp + g * HS
                                           : qkv + (size_t)(b * T + j - P) * ldqkv + qcols + g * HS;
                    float s = 0;
                    for (int i = 0; i < HS; i++) s += q[i] * k[i];
                    s *= scale;
                    a[j] = s;
                    mx = fmaxf(mx, s);
                }
                float sum = 0;
                for (int j = 0; j < P + t + 1; j++) {
                    a[j] = expf(a[j] - mx);
                    sum += a[j];
                }
                float inv = 1.0f / sum;
                for (int j = 0; j < P + t + 1; j++) a[j] *= inv;
                for (int j = P + t + 1; j < S; j++) a[j] = 0;
                float *o = out + (size_t)(b * T + t) * qcols + h * HS;
                for (int i = 0; i < HS; i++) o[i] = 0;
                for (int j = 0; j < P + t + 1; j++) {
                    const float *v = j < P ? pv + (size_t)j * ldp + g * HS
                                           : qkv + (size_t)(b * T + j - P) * ldqkv + qcols + NKV * HS + g * HS;
                    for (int i = 0; i < HS; i++) o[i] += a[j] * v[i];
                }
            }
        }
}

void loom_prefix_attention_backward(float *dqkv, float *dpk, float *dpv, const float *dout, const float *qkv,
                                    const float *att, int ldqkv, const float *pk, const float *pv, int ldp, int P,
                                    int B, int T, int NH, int NKV, int HS) {
    const int S = P + T, grp = NH / NKV, qcols = NH * HS, kvcols = NKV * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    const int N = B * T;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) memset(dqkv + (size_t)n * ldqkv, 0, (size_t)(qcols + 2 * kvcols) * sizeof(float));
    /* One thread per kv head: it alone writes that head's key/value gradients (tokens and prefix) and the
     * query gradients of the heads in its group. */
#pragma omp parallel
    {
        float *dp = malloc((size_t)S * sizeof *dp);
#pragma omp for schedule(static)
        for (int g = 0; g < NKV; g++) {
            for (int b = 0; b < B; b++)
                for (int h = g * grp; h < (g + 1) * grp; h++)
                    for (int t = 0; t < T; t++) {
                        const float *q = qkv + (size_t)(b * T + t) * ldqkv + h * HS;
                        const float *a = att + (((size_t)b * NH + h) * T + t) * S;
                        const float *d = dout + (size_t)(b * T + t) * qcols + h * HS;
                        float *dq = dqkv + (size_t)(b * T + t) * ldqkv + h * HS;
                        int len = P + t + 1;
                        float dot = 0;
                        for (int j = 0; j < len; j++) {
                            const float *v = j < P ? pv + (size_t)j * ldp + g * HS
                                                   : qkv + (size_t)(b * T + j - P) * ldqkv + qcols + kvcols + g * HS;
                            float s = 0;
                            for (int i = 0; i < HS; i++) s += d[i] * v[i];
                            dp[j] = s;
                            dot += a[j] * s;
                            float *dv = j < P ? (dpv ? dpv + (size_t)j * ldp + g * HS : NULL)
                                              : dqkv + (size_t)(b * T + j - P) * ldqkv + qcols + kvcols + g * HS;
                            if (dv)
                                for (int i = 0; i < HS; i++) dv[i] += a[j] * d[i];
                        }
                        for (int j = 0; j < len; j++) {
                            float ds = a[j] * (dp[j] - dot) * scale;
                            const float *k = j < P ? pk + (size_t)j * ldp + g * HS
                                                   : qkv + (size_t)(b * T + j - P) * ldqkv + qcols + g * HS;
                            for (int i = 0; i < HS; i++) dq[i] += ds * k[i];
                            float *dk = j < P ? (dpk ? dpk + (size_t)j * ldp + g * HS : NULL)
                                              : dqkv + (size_t)(b * T + j - P) * ldqkv + qcols + g * HS;
                            if (dk)
                                for (int i = 0; i < HS; i++) dk[i] += ds * q[i];
                        }
                    }
        }
        free(dp);
    }
}
