/* Transformer kernels. Matmuls go to BLAS; everything else is plain loops parallelised with OpenMP.
 * Determinism: row-parallel loops write disjoint rows; column reductions give each thread whole
 * columns and sum rows in order, so no result depends on the thread count.
 *
 * Run-time CPU dispatch: the build does not assume the machine's instruction set (LOOM_NATIVE is off by
 * default), so the element-wise hot loops are compiled three times (AVX-512, AVX2 + FMA, and baseline
 * x86-64) with GCC's target_clones, and the loader picks the version the CPU runs. The loops are
 * written so that the versions give the same bits: no contraction into FMA (ISO C mode:
 * -ffp-contract=off), and every reduction runs over a fixed number of lanes in a fixed order
 * rather than the vector width the compiler chose. The OpenMP loops stay outside the cloned functions
 * (an outlined parallel body would not be cloned): each thread calls a cloned row, block or chunk
 * kernel. */
#include "loom/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define COLBLOCK 64
#include "core/dispatch.h"
/* element-wise loops run in chunks of this many elements, one cloned call each */
#define CHUNK 4096
/* lanes of the fixed-order double sums in the norms */
#define DLANES 8
/* Parallel regions only pay off above a few thousand elements (generation runs rows of one). */
#define PAR(work) ((work) >= 8192)

/* exp(x) for float without libm calls, so loops over it vectorise: Cody-Waite range reduction
 * x = n ln2 + r, |r| <= ln2/2, a degree-6 polynomial for e^r (relative error ~1e-7, like expf), and
 * 2^n built in the exponent bits. Inputs are clamped to [-87, 88] (no overflow, no denormals): -Inf
 * gives e^-87, +Inf e^88. A NaN passes the clamps and gives NaN. The integer n is read from the bits
 * of n + 1.5*2^23 (exact for |n| < 2^22) instead of a float-to-int conversion, which is undefined for
 * NaN; the arithmetic is unsigned, so every input is defined and finite inputs give the same bits. */
static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t i; float f; } u, k;
    k.f = n + 12582912.0f;                     /* bits 0x4B400000 + n */
    u.i = (k.i - 0x4B400000u + 127u) << 23;    /* 2^n */
    return p * u.f;
}

/* tanh through exp: 1 - 2/(e^{2u}+1); |u| > 9 saturates to +-1 in float anyway. */
static inline float fast_tanhf(float u) {
    u = u < -9.0f ? -9.0f : u > 9.0f ? 9.0f : u;
    return 1.0f - 2.0f / (fast_expf(2.0f * u) + 1.0f);
}
#define LOOM_KMIN(a, b) ((a) < (b) ? (a) : (b))

void loom_matmul_forward(float *out, int ldo, const float *inp, int ldi, const float *w, int layout,
                         const float *bias, int N, int C, int OC) {
    if (N <= 0 || OC <= 0) return;
    if (layout == LOOM_W_LINEAR)
        loom_sgemm(0, 1, N, OC, C, 1.0f, inp, ldi, w, C, 0.0f, out, ldo);
    else
        loom_sgemm(0, 0, N, OC, C, 1.0f, inp, ldi, w, OC, 0.0f, out, ldo);
    if (bias) {
#pragma omp parallel for schedule(static) if (PAR((size_t)N * OC))
        for (int n = 0; n < N; n++) {
            float *o = out + (size_t)n * ldo;
            for (int j = 0; j < OC; j++) o[j] += bias[j];
        }
    }
}

/* out[0..w) += sum over the N rows, in row order */
LOOM_DISPATCH static void colsum_block(float *out, const float *x, int ld, int N, int w) {
    float acc[COLBLOCK] = {0};
    for (int n = 0; n < N; n++) {
        const float *row = x + (size_t)n * ld;
        for (int c = 0; c < w; c++) acc[c] += row[c];
    }
    for (int c = 0; c < w; c++) out[c] += acc[c];
}

void loom_colsum_acc(float *out, const float *x, int ld, int N, int C) {
    int nblocks = (C + COLBLOCK - 1) / COLBLOCK;
#pragma omp parallel for schedule(static) if (PAR((size_t)N * C))
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * COLBLOCK, c1 = LOOM_KMIN(c0 + COLBLOCK, C);
        colsum_block(out + c0, x + c0, ld, N, c1 - c0);
    }
}

void loom_matmul_backward(float *dinp, int ldi, float beta, float *dw, float *dbias, const float *dout, int ldo,
                          const float *inp, const float *w, int layout, int N, int C, int OC) {
    if (N <= 0) return;
    if (layout == LOOM_W_LINEAR) {
        if (dinp) loom_sgemm(0, 0, N, C, OC, 1.0f, dout, ldo, w, C, beta, dinp, ldi);
        if (dw) loom_sgemm(1, 0, OC, C, N, 1.0f, dout, ldo, inp, ldi, 1.0f, dw, C);
    } else {
        if (dinp) loom_sgemm(0, 1, N, C, OC, 1.0f, dout, ldo, w, OC, beta, dinp, ldi);
        if (dw) loom_sgemm(1, 0, C, OC, N, 1.0f, inp, ldi, dout, ldo, 1.0f, dw, OC);
    }
    if (dbias) loom_colsum_acc(dbias, dout, ldo, N, OC);
}

/* Sums in double over DLANES interleaved lanes (lane l takes c = l, l + DLANES, ...; the tail in
 * order), the lanes then added pairwise: fixed order for any vector width. */
static inline double dlanes_sum(double *acc) {
    for (int w = DLANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

LOOM_DISPATCH static void ln_fwd_row(float *o, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                     int C, float eps) {
    double acc[DLANES] = {0};
    int c = 0;
    for (; c + DLANES <= C; c += DLANES)
        for (int l = 0; l < DLANES; l++) acc[l] += x[c + l];
    for (int l = 0; c + l < C; l++) acc[l] += x[c + l];
    float m = (float)(dlanes_sum(acc) / C);
    double av[DLANES] = {0};
    for (c = 0; c + DLANES <= C; c += DLANES)
        for (int l = 0; l < DLANES; l++) {
            float d = x[c + l] - m;
            av[l] += (double)d * d;
        }
    for (int l = 0; c + l < C; l++) {
        float d = x[c + l] - m;
        av[l] += (double)d * d;
    }
    float r = (float)(1.0 / sqrt(dlanes_sum(av) / C + eps));
    for (c = 0; c < C; c++) o[c] = (x[c] - m) * r * w[c] + b[c];
    *mean = m;
    *rstd = r;
}

void loom_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                            const float *b, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if (PAR((size_t)N * C))
    for (int n = 0; n < N; n++)
        ln_fwd_row(out + (size_t)n * C, mean + n, rstd + n, inp + (size_t)n * C, w, b, C, eps);
}

LOOM_DISPATCH static void ln_bwd_row(float *dx, const float *dy, const float *x, const float *w, float m, float r, int C) {
    double sd[DLANES] = {0}, sdn[DLANES] = {0};
    int c = 0;
    for (; c + DLANES <= C; c += DLANES)
        for (int l = 0; l < DLANES; l++) {
            float nrm = (x[c + l] - m) * r, dn = w[c + l] * dy[c + l];
            sd[l] += dn;
            sdn[l] += (double)dn * nrm;
        }
    for (int l = 0; c + l < C; l++) {
        float nrm = (x[c + l] - m) * r, dn = w[c + l] * dy[c + l];
        sd[l] += dn;
        sdn[l] += (double)dn * nrm;
    }
    float md = (float)(dlanes_sum(sd) / C), mdn = (float)(dlanes_sum(sdn) / C);
    for (c = 0; c < C; c++) {
        float nrm = (x[c] - m) * r, dn = w[c] * dy[c];
        dx[c] += r * (dn - md - nrm * mdn);
    }
}

/* dw[0..wd), db[0..wd) += the block's columns summed over the N rows in order (either may be NULL) */
LOOM_DISPATCH static void ln_bwd_cols(float *dw, float *db, const float *dout, const float *inp, const float *mean,
                                      const float *rstd, int N, int C, int wd) {
    float aw[COLBLOCK] = {0}, ab[COLBLOCK] = {0};
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float m = mean[n], r = rstd[n];
        for (int c = 0; c < wd; c++) {
            aw[c] += (x[c] - m) * r * dy[c];
            ab[c] += dy[c];
        }
    }
    for (int c = 0; c < wd; c++) {
        if (dw) dw[c] += aw[c];
        if (db) db[c] += ab[c];
    }
}

void loom_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                             const float *w, const float *mean, const float *rstd, int N, int C) {
#pragma omp parallel for schedule(static) if (PAR((size_t)N * C))
    for (int n = 0; n < N; n++)
        ln_bwd_row(dinp + (size_t)n * C, dout + (size_t)n * C, inp + (size_t)n * C, w, mean[n], rstd[n], C);
    if (!dw && !db) return;
    int nblocks = (C + COLBLOCK - 1) / COLBLOCK;
#pragma omp parallel for schedule(static) if (PAR((size_t)N * C))
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * COLBLOCK, c1 = LOOM_KMIN(c0 + COLBLOCK, C);
        ln_bwd_cols(dw ? dw + c0 : NULL, db ? db + c0 : NULL, dout + c0, inp + c0, mean, rstd, N, C, c1 - c0);
    }
}

LOOM_DISPATCH static void rms_fwd_row(float *o, float *rstd, const float *x, const float *w, int C, float eps) {
    double acc[DLANES] = {0};
    int c = 0;
    for (; c + DLANES <= C; c += DLANES)
        for (int l = 0; l < DLANES; l++) acc[l] += (double)x[c + l] * x[c + l];
    for (int l = 0; c + l < C; l++) acc[l] += (double)x[c + l] * x[c + l];
    float r = (float)(1.0 / sqrt(dlanes_sum(acc) / C + eps));
    for (c = 0; c < C; c++) o[c] = w[c] * (x[c] * r);
    *rstd = r;
}

void loom_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if (PAR((size_t)N * C))
    for (int n = 0; n < N; n++) rms_fwd_row(out + (size_t)n * C, rstd + n, inp + (size_t)n * C, w, C, eps);
}

LOOM_DISPATCH static void rms_bwd_row(float *dx, const float *dy, const float *x, const float *w, float r, int C) {
    double acc[DLANES] = {0};
    int c = 0;
    for (; c + DLANES <= C; c += DLANES)
        for (int l = 0; l < DLANES; l++) acc[l] += (double)w[c + l] * dy[c + l] * x[c + l];
    for (int l = 0; c + l < C; l++) acc[l] += (double)w[c + l] * dy[c + l] * x[c + l];
    float k = (float)(dlanes_sum(acc) / C) * r * r * r;
    for (c = 0; c < C; c++) dx[c] += r * w[c] * dy[c] - k * x[c];
}

LOOM_DISPATCH static void rms_bwd_cols(float *dw, const float *dout, const float *inp, const float *rstd, int N, int C,
                                       int wd) {
    float aw[COLBLOCK] = {0};
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        float r = rstd[n];
        for (int c = 0; c < wd; c++) aw[c] += dy[c] * x[c] * r;
    }
    for (int c = 0; c < wd; c++) dw[c] += aw[c];
}

void loom_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           const float *rstd, int N, int C) {
#pragma omp parallel for schedule(static) if (PAR((size_t)N * C))
    for (int n = 0; n < N; n++) rms_bwd_row(dinp + (size_t)n * C, dout + (size_t)n * C, inp + (size_t)n * C, w, rstd[n], C);
    if (!dw) return;
    int nblocks = (C + COLBLOCK - 1) / COLBLOCK;
#pragma omp parallel for schedule(static) if (PAR((size_t)N * C))
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * COLBLOCK, c1 = LOOM_KMIN(c0 + COLBLOCK, C);
        rms_bwd_cols(dw + c0, dout + c0, inp + c0, rstd, N, C, c1 - c0);
    }
}

#define GELU_S 0.7978845608028654f /* sqrt(2/pi) */

LOOM_DISPATCH static void gelu_fwd_chunk(float *out, const float *inp, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + fast_tanhf(GELU_S * (x + 0.044715f * x * x * x)));
    }
}

LOOM_DISPATCH static void gelu_bwd_chunk(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float u = GELU_S * (x + 0.044715f * x * x * x);
        float th = fast_tanhf(u);
        float sech2 = 1.0f - th * th;
        float g = 0.5f * (1.0f + th) + 0.5f * x * sech2 * GELU_S * (1.0f + 3.0f * 0.044715f * x * x);
        dinp[i] = g * dout[i];
    }
}

void loom_gelu_forward(float *out, const float *inp, size_t n, int exact) {
    if (exact) {
#pragma omp parallel for schedule(static) if (PAR(n))
        for (size_t i = 0; i < n; i++) out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * (float)M_SQRT1_2));
    } else {
        size_t nc = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (PAR(n))
        for (size_t k = 0; k < nc; k++) gelu_fwd_chunk(out + k * CHUNK, inp + k * CHUNK, LOOM_KMIN(CHUNK, n - k * CHUNK));
    }
}

void loom_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int exact) {
    if (exact) {
        const float k = 0.3989422804014327f; /* 1/sqrt(2 pi) */
#pragma omp parallel for schedule(static) if (PAR(n))
        for (size_t i = 0; i < n; i++) {
            float x = inp[i];
            float g = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)) + x * k * expf(-0.5f * x * x);
            dinp[i] = g * dout[i];
        }
    } else {
        size_t nc = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (PAR(n))
        for (size_t k = 0; k < nc; k++)
            gelu_bwd_chunk(dinp + k * CHUNK, inp + k * CHUNK, dout + k * CHUNK, LOOM_KMIN(CHUNK, n - k * CHUNK));
    }
}

LOOM_DISPATCH static void swiglu_fwd_row(float *o, const float *g, const float *u, int H) {
#pragma omp simd
    for (int j = 0; j < H; j++) o[j] = g[j] / (1.0f + fast_expf(-g[j])) * u[j];
}

void loom_swiglu_forward(float *out, const float *gu, int N, int H) {
#pragma omp parallel for schedule(static) if (PAR((size_t)N * H))
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * H;
        swiglu_fwd_row(out + (size_t)n * H, g, g + H, H);
    }
}

LOOM_DISPATCH static void swiglu_bwd_row(float *dg, float *du, const float *dy, const float *g, const float *u, int H) {
#pragma omp simd
    for (int j = 0; j < H; j++) {
        float sg = 1.0f / (1.0f + fast_expf(-g[j]));
        float silu = g[j] * sg;
        du[j] = dy[j] * silu;
        dg[j] = dy[j] * u[j] * sg * (1.0f + g[j] * (1.0f - sg));
    }
}

void loom_swiglu_backward(float *dgu, const float *dout, const float *gu, int N, int H) {
#pragma omp parallel for schedule(static) if (PAR((size_t)N * H))
    for (int n = 0; n < N; n++) {
        const float *g = gu + (size_t)n * 2 * H;
        float *dg = dgu + (size_t)n * 2 * H;
        swiglu_bwd_row(dg, dg + H, dout + (size_t)n * H, g, g + H, H);
    }
}

/* one position's heads, rotated by the angles in cs/sn */
LOOM_DISPATCH static void rope_row(float *row, int nheads, int HS, const float *cs, const float *sn) {
    int half = HS / 2;
    for (int h = 0; h < nheads; h++) {
        float *v = row + h * HS;
#pragma omp simd
        for (int j = 0; j < half; j++) {
            float a = v[j], c = v[j + half];
            v[j] = a * cs[j] - c * sn[j];
            v[j + half] = c * cs[j] + a * sn[j];
        }
    }
}

void loom_rope(float *x, int ld, int B, int T, int nheads, int HS, float theta, int pos0, int inverse) {
    int half = HS / 2;
#pragma omp parallel for schedule(static) if (PAR((size_t)T * B * nheads * HS))
    for (int t = 0; t < T; t++) {
        float cs[256], sn[256]; /* HS <= 512 */
        int pos = pos0 + t;
        for (int j = 0; j < half && j < 256; j++) {
            /* inv_freq in float32 as the reference implementations compute it */
            float inv = (float)(1.0 / pow((double)theta, (double)(2 * j) / HS));
            float ang = (float)pos * inv;
            cs[j] = cosf(ang);
            sn[j] = inverse ? -sinf(ang) : sinf(ang);
        }
        for (int b = 0; b < B; b++) rope_row(x + ((size_t)b * T + t) * ld, nheads, HS, cs, sn);
    }
}

/* Causal attention in blocks of ATT_BLK query rows: the block starting at t0 sees keys 0 .. t1-1
 * (t1 = t0 + its rows), so each block's scores, probabilities and gradients are one product of its rows
 * against that key prefix, and nothing right of the block's own diagonal square is read or written
 * (about half the T x T work at long T). Within the square, entries above the diagonal are zeros. */
#define ATT_BLK 64

/* softmax of row[0..t] in place; row[t+1 .. end) zeroed (the rest of the block's square) */
LOOM_DISPATCH static void att_softmax_row(float *row, int t, int end) {
    float mx = row[0];
    for (int j = 1; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
    float s = 0;
    for (int j = 0; j <= t; j++) {
        row[j] = expf(row[j] - mx);
        s += row[j];
    }
    float inv = 1.0f / s;
    for (int j = 0; j <= t; j++) row[j] *= inv;
    for (int j = t + 1; j < end; j++) row[j] = 0.0f;
}

void loom_attention_forward(float *out, float *att, const float *qkv, int ldqkv, int B, int T, int NH, int NKV,
                            int HS) {
    const int C = NH * HS, group = NH / NKV;
    const float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for schedule(dynamic, 1) collapse(2) if (PAR((size_t)B * NH * T * T))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * ldqkv + h * HS;
            const float *k = qkv + (size_t)b * T * ldqkv + C + (h / group) * HS;
            const float *v = qkv + (size_t)b * T * ldqkv + C + NKV * HS + (h / group) * HS;
            float *p = att + ((size_t)b * NH + h) * T * T;
            for (int t0 = 0; t0 < T; t0 += ATT_BLK) {
                const int bt = LOOM_KMIN(ATT_BLK, T - t0), t1 = t0 + bt;
                float *pb = p + (size_t)t0 * T;
                /* S[t0..t1, 0..t1] = scale * Q_blk K_prefix^T */
                loom_sgemm(0, 1, bt, t1, HS, scale, q + (size_t)t0 * ldqkv, ldqkv, k,
                            ldqkv, 0.0f, pb, T);
                for (int t = t0; t < t1; t++) att_softmax_row(p + (size_t)t * T, t, t1);
                /* Y_blk = P_blk V_prefix */
                loom_sgemm(0, 0, bt, HS, t1, 1.0f, pb, T, v, ldqkv, 0.0f,
                            out + ((size_t)b * T + t0) * C + h * HS, C);
            }
        }
}

/* softmax backward in place on one row: dS = P * (dP - rowsum(P*dP)) * scale over j <= t, zeros to end */
LOOM_DISPATCH static void att_softmax_bwd_row(float *dr, const float *pr, int t, int end, float scale) {
    float s = 0;
    for (int j = 0; j <= t; j++) s += pr[j] * dr[j];
    for (int j = 0; j <= t; j++) dr[j] = pr[j] * (dr[j] - s) * scale;
    for (int j = t + 1; j < end; j++) dr[j] = 0.0f;
}

void loom_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv, const float *att,
                             int ldqkv, int B, int T, int NH, int NKV, int HS) {
    const int C = NH * HS, group = NH / NKV;
    const float scale = 1.0f / sqrtf((float)HS);
    const int last = (T - 1) / ATT_BLK * ATT_BLK; /* the start of the last block, which sees every key */
    /* Parallel over (b, kv head): the query heads of one group accumulate into the same dK/dV. */
#pragma omp parallel for schedule(dynamic, 1) collapse(2) if (PAR((size_t)B * NH * T * T))
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < NKV; kh++) {
            const float *base = qkv + (size_t)b * T * ldqkv;
            float *dbase = dqkv + (size_t)b * T * ldqkv;
            const float *k = base + C + kh * HS, *v = base + C + NKV * HS + kh * HS;
            float *dk = dbase + C + kh * HS, *dv = dbase + C + NKV * HS + kh * HS;
            for (int g = 0; g < group; g++) {
                int h = kh * group + g;
                const float *q = base + h * HS;
                float *dq = dbase + h * HS;
                const float *p = att + ((size_t)b * NH + h) * T * T;
                const float *dy = dout + (size_t)b * T * C + h * HS;
                float *dp = scratch + ((size_t)b * NH + h) * T * T;
                /* blocks from the last (which covers every key row, so the group's first head overwrites dK/dV
                 * there) to the first, each adding its rows' share to the key prefix it saw */
                for (int t0 = last; t0 >= 0; t0 -= ATT_BLK) {
                    const int bt = LOOM_KMIN(ATT_BLK, T - t0), t1 = t0 + bt;
                    const float beta = g == 0 && t0 == last ? 0.0f : 1.0f;
                    const float *pb = p + (size_t)t0 * T, *dyb = dy + (size_t)t0 * C;
                    float *db = dp + (size_t)t0 * T;
                    /* dP_blk = dY_blk V_prefix^T ; dV_prefix (+)= P_blk^T dY_blk */
                    loom_sgemm(0, 1, bt, t1, HS, 1.0f, dyb, C, v, ldqkv, 0.0f, db, T);
                    loom_sgemm(1, 0, t1, HS, bt, 1.0f, pb, T, dyb, C, beta, dv, ldqkv);
                    for (int t = t0; t < t1; t++) att_softmax_bwd_row(dp + (size_t)t * T, p + (size_t)t * T, t, t1, scale);
                    /* dQ_blk = dS_blk K_prefix ; dK_prefix (+)= dS_blk^T Q_blk */
                    loom_sgemm(0, 0, bt, HS, t1, 1.0f, db, T, k, ldqkv, 0.0f,
                                dq + (size_t)t0 * ldqkv, ldqkv);
                    loom_sgemm(1, 0, t1, HS, bt, 1.0f, db, T, q + (size_t)t0 * ldqkv,
                                ldqkv, beta, dk, ldqkv);
                }
            }
        }
}

/* Cross-entropy rows. Every path (loss only, gradient only, both fused) takes a row's maximum and its sum
 * of e^(x - max) from the same two helpers, so the loss and the gradient have the same bits whichever
 * path computed them. The sum runs in 16 interleaved float lanes (lane l takes j = l, l + 16, ...; the
 * tail lands in the lanes in order), then the lanes are added pairwise in a fixed order: the result
 * depends only on V, not on the vector width the compiler picked or on the thread count. */
#define CE_LANES 16

static inline float ce_row_max(const float *row, int V) {
    float mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
    return mx;
}

static inline float ce_lanes_sum(float *acc) {
    for (int w = CE_LANES / 2; w > 0; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

/* sum_j e^(row[j] - mx) */
static inline float ce_row_sumexp(const float *row, int V, float mx) {
    float acc[CE_LANES] = {0};
    int j = 0;
    for (; j + CE_LANES <= V; j += CE_LANES)
        for (int l = 0; l < CE_LANES; l++) acc[l] += fast_expf(row[j + l] - mx);
    for (int l = 0; j + l < V; l++) acc[l] += fast_expf(row[j + l] - mx);
    return ce_lanes_sum(acc);
}

/* the same sum, leaving e^(row[j] - mx) in row[j] */
static inline float ce_row_exp_sum(float *row, int V, float mx) {
    float acc[CE_LANES] = {0};
    int j = 0;
    for (; j + CE_LANES <= V; j += CE_LANES)
        for (int l = 0; l < CE_LANES; l++) {
            float e = fast_expf(row[j + l] - mx);
            row[j + l] = e;
            acc[l] += e;
        }
    for (int l = 0; j + l < V; l++) {
        float e = fast_expf(row[j + l] - mx);
        row[j + l] = e;
        acc[l] += e;
    }
    return ce_lanes_sum(acc);
}

static inline int ce_valid(int32_t tg, int V) { return tg >= 0 && tg < V; }

static int ce_count(const int32_t *targets, int N, int V) {
    int cnt = 0;
    for (int n = 0; n < N; n++) cnt += ce_valid(targets[n], V);
    return cnt;
}

/* the mean over counted rows of row_w[n / T] * losses[n], summed in row order */
static float ce_mean(const float *losses, const int32_t *targets, const float *row_w, int T, int N, int V, int cnt) {
    double total = 0;
    for (int n = 0; n < N; n++)
        if (ce_valid(targets[n], V)) total += row_w ? (double)row_w[n / T] * losses[n] : (double)losses[n];
    return cnt ? (float)(total / cnt) : 0.0f;
}

/* softmax - one-hot, times k, in place on a row that holds e^(x - max) summing to s */
static inline void ce_row_grad(float *row, int V, int tg, float s, float k) {
    float scale = k / s;
#pragma omp simd
    for (int j = 0; j < V; j++) row[j] *= scale;
    row[tg] -= k;
}

/* one row's loss: log sum e^x - x[tg] */
LOOM_DISPATCH static float ce_loss_row(const float *row, int V, int tg) {
    float mx = ce_row_max(row, V);
    float s = ce_row_sumexp(row, V, mx);
    return (float)(log((double)s) + mx - row[tg]);
}

/* one row's gradient in place: k (softmax - one-hot) */
LOOM_DISPATCH static void ce_grad_row(float *row, int V, int tg, float k) {
    float mx = ce_row_max(row, V);
    float s = ce_row_exp_sum(row, V, mx);
    ce_row_grad(row, V, tg, s, k);
}

/* both: the loss returned, the gradient in place (zeros when k is 0) */
LOOM_DISPATCH static float ce_fused_row(float *row, int V, int tg, float k) {
    float mx = ce_row_max(row, V), xt = row[tg];
    float s = ce_row_exp_sum(row, V, mx);
    float loss = (float)(log((double)s) + mx - xt);
    if (k == 0.0f) memset(row, 0, (size_t)V * sizeof *row);
    else ce_row_grad(row, V, tg, s, k);
    return loss;
}

float loom_crossentropy_forward_w(float *losses, const float *logits, const int32_t *targets, const float *row_w, int T,
                                  int N, int V, int *n_valid) {
#pragma omp parallel for schedule(static) if (PAR((size_t)N * V))
    for (int n = 0; n < N; n++) {
        int tg = targets[n];
        if (!ce_valid(tg, V)) {
            losses[n] = 0.0f;
            continue;
        }
        losses[n] = ce_loss_row(logits + (size_t)n * V, V, tg);
    }
    int cnt = ce_count(targets, N, V);
    *n_valid = cnt;
    return ce_mean(losses, targets, row_w, T, N, V, cnt);
}

float loom_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V,
                                int *n_valid) {
    return loom_crossentropy_forward_w(losses, logits, targets, NULL, 1, N, V, n_valid);
}

void loom_crossentropy_backward_w(float *logits, const int32_t *targets, const float *row_w, int T, int N, int V,
                                  int n_valid, float dloss) {
    float k0 = n_valid ? dloss / (float)n_valid : 0.0f;
#pragma omp parallel for schedule(static) if (PAR((size_t)N * V))
    for (int n = 0; n < N; n++) {
        float *row = logits + (size_t)n * V;
        int tg = targets[n];
        float k = row_w ? k0 * row_w[n / T] : k0;
        if (!ce_valid(tg, V) || k == 0.0f) {
            memset(row, 0, (size_t)V * sizeof *row);
            continue;
        }
        ce_grad_row(row, V, tg, k);
    }
}

void loom_crossentropy_backward(float *logits, const int32_t *targets, int N, int V, int n_valid, float dloss) {
    loom_crossentropy_backward_w(logits, targets, NULL, 1, N, V, n_valid, dloss);
}

float loom_crossentropy_fused_w(float *losses, float *logits, const int32_t *targets, const float *row_w, int T, int N,
                                int V, int *n_valid, float dloss) {
    /* the count first: every row's gradient is scaled by 1/n_valid */
    const int cnt = ce_count(targets, N, V);
    const float k0 = cnt ? dloss / (float)cnt : 0.0f;
#pragma omp parallel for schedule(static) if (PAR((size_t)N * V))
    for (int n = 0; n < N; n++) {
        float *row = logits + (size_t)n * V;
        int tg = targets[n];
        if (!ce_valid(tg, V)) {
            losses[n] = 0.0f;
            memset(row, 0, (size_t)V * sizeof *row);
            continue;
        }
        losses[n] = ce_fused_row(row, V, tg, row_w ? k0 * row_w[n / T] : k0);
    }
    *n_valid = cnt;
    return ce_mean(losses, targets, row_w, T, N, V, cnt);
}
