/* Transformer kernels, forward and backward (kernels/ layer).
 *
 * Dimension letters: N = rows (batch*time), C = input channels, OC = output channels, B = batch,
 * T = time, NH = query heads, NKV = key/value heads, HS = head size, V = vocabulary.
 * Output arguments come first, then inputs, then sizes. Backward kernels ACCUMULATE (+=) into weight
 * gradients and, unless stated, OVERWRITE activation gradients. Reductions over rows use a fixed
 * chunking, so results are bitwise independent of the number of threads. */
#ifndef LOOM_KERNELS_H
#define LOOM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Weight layouts: LINEAR = [OC, C] (torch nn.Linear, Llama), CONV1D = [C, OC] (GPT-2 Conv1D). */
enum { LOOM_W_LINEAR = 0, LOOM_W_CONV1D = 1 };

/* out[N, OC] (row stride ldo) = inp[N, C] (row stride ldi) @ W (+ bias[OC]) */
/* Matrix-vector products for decoding (one token), loom's own rather than BLAS sgemv, on float
 * weights; loom/gemv.h has the same over bf16 and int8 weights, the run-time choice of AVX-512, AVX2
 * or portable code, and the fixed order of every sum (all paths and thread counts give the same bits).
 *   loom_gemv       y[o] = sum_c W[o][c] x[c]   (W row-major OC x C: the Linear layout), 16 interleaved
 *                   partial sums added pairwise
 *   loom_gemv_t     y[o] = sum_c x[c] W[c][o]   (W row-major C x OC: GPT-2's Conv1D layout), the sum
 *                   over c in order */
void loom_gemv(float *y, const float *W, const float *x, int OC, int C);
void loom_gemv_t(float *y, const float *W, const float *x, int C, int OC);
void loom_matmul_forward(float *out, int ldo, const float *inp, int ldi, const float *w, int layout,
                         const float *bias, int N, int C, int OC);
/* dinp[N, C] = dout @ W^T (beta 0: overwrite; 1: accumulate), dw += , dbias += ; any output may be NULL. */
void loom_matmul_backward(float *dinp, int ldi, float beta, float *dw, float *dbias, const float *dout, int ldo,
                          const float *inp, const float *w, int layout, int N, int C, int OC);

/* LayerNorm over C: out[N,C], mean[N], rstd[N] (saved for backward). */
void loom_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                            const float *b, int N, int C, float eps);
/* dinp += ...; dw, db += ... (dw/db may be NULL: frozen). */
void loom_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                             const float *w, const float *mean, const float *rstd, int N, int C);
/* RMSNorm: out = w * x / sqrt(mean(x^2) + eps); rstd[N] saved. */
void loom_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps);
void loom_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           const float *rstd, int N, int C);

/* GELU: tanh approximation (gelu_new) or exact erf. */
void loom_gelu_forward(float *out, const float *inp, size_t n, int exact);
void loom_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int exact);
/* SwiGLU on gu[N, 2H] = [gate | up]: out[N,H] = silu(gate) * up. */
void loom_swiglu_forward(float *out, const float *gu, int N, int H);
void loom_swiglu_backward(float *dgu, const float *dout, const float *gu, int N, int H);

/* Rotary embedding, Hugging Face rotate-half convention, in place on `nheads` heads of size HS found
 * at x[(b*T+t)*ld + h*HS]; position t uses angle t * theta^(-2j/HS) on the pair (j, j+HS/2).
 * inverse = 1 rotates backwards (the backward pass). pos0 offsets the positions (KV-cache decoding). */
void loom_rope(float *x, int ld, int B, int T, int nheads, int HS, float theta, int pos0, int inverse);

/* Causal self-attention on qkv[N, ldqkv]: q heads at column 0, k at qcols = NH*HS, v at qcols + NKV*HS.
 * att[B, NH, T, T] saves the probabilities (zeros above the diagonal); out[N, NH*HS]. */
void loom_attention_forward(float *out, float *att, const float *qkv, int ldqkv, int B, int T, int NH, int NKV,
                            int HS);
/* dqkv[N, ldqkv] is overwritten; dout[N, NH*HS]; scratch needs B*NH*T*T floats. */
void loom_attention_backward(float *dqkv, float *scratch, const float *dout, const float *qkv, const float *att,
                             int ldqkv, int B, int T, int NH, int NKV, int HS);

/* Mean cross-entropy over rows whose target >= 0 (targets < 0 carry no loss). losses[N] per row
 * (0 where ignored). Returns the mean loss and writes the count of counted rows to *n_valid. */
float loom_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V,
                                int *n_valid);
/* In place: logits[N,V] becomes d(mean loss)/d logits * dloss. */
void loom_crossentropy_backward(float *logits, const int32_t *targets, int N, int V, int n_valid, float dloss);
/* The same with a weight per batch row (rows of T positions; row_w[N / T], NULL = all 1): the loss is
 * sum_n row_w[n / T] * losses[n] / n_valid (losses[] stay unweighted), and its gradient. */
float loom_crossentropy_forward_w(float *losses, const float *logits, const int32_t *targets, const float *row_w, int T,
                                  int N, int V, int *n_valid);
void loom_crossentropy_backward_w(float *logits, const int32_t *targets, const float *row_w, int T, int N, int V,
                                  int n_valid, float dloss);

/* Row-sum of a [N, C] matrix into out[C] (+=), fixed chunking (thread-count independent). */
void loom_colsum_acc(float *out, const float *x, int ld, int N, int C);

#ifdef __cplusplus
}
#endif
#endif
