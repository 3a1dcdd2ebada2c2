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

/* ---- GEMM (src/kernels/gemm.c): loom's own entry point over oneDNN's matmul primitive.
 * C[M, N] (row stride ldc) = alpha * op(A) op(B) + beta * C, all row-major: op(A) is A[M, K] (lda)
 * or, with ta, A^T for A stored [K, M] (lda); op(B) is B[K, N] (ldb) or, with tb, B^T for B stored
 * [N, K]. beta = 0 overwrites C (whatever it held, as BLAS does); K = 0 gives beta * C.
 * Accumulation and C are float; each operand is float or bf16 (LOOM_GEMM_BF16: uint16_t bf16 bits).
 * Deterministic: the product is cut into tiles of a size set by M, N, K alone, each tile one
 * single-threaded oneDNN call, the tiles spread over OpenMP threads, so C is the same bits for any
 * thread count. Primitives are made once per tile shape and kept in a bounded, thread-safe cache.
 * Where oneDNN has no kernel (or runs out of memory) a tile goes through BLAS sgemm instead.
 * loom_gemm returns LOOM_OK, or LOOM_EINVAL (nothing written) for a dimension outside [0, 2^30] or a
 * leading dimension shorter than its rows (lda < K, or < M with ta; ldb < N, or < K with tb; ldc < N). */
enum { LOOM_GEMM_F32 = 0, LOOM_GEMM_BF16 = 1 };
int loom_gemm(int ta, int tb, int M, int N, int K, float alpha, const void *A, int atype, int lda, const void *B,
              int btype, int ldb, float beta, float *C, int ldc);
void loom_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                float beta, float *C, int ldc);
void loom_sbgemm(int ta, int tb, int M, int N, int K, float alpha, const uint16_t *A, int lda, const uint16_t *B, int ldb,
                 float beta, float *C, int ldc);
/* Primitives held by the cache, and a way to drop those not in use (tests, long-lived servers). */
int loom_gemm_cache_size(void);
void loom_gemm_cache_clear(void);
/* 1 if this CPU has AVX-512 BF16 (checked at run time): the bf16 matmuls then run natively. The
 * environment variable LOOM_CPU_NO_BF16=1 makes it answer 0 (to run and test the f32 fallback). */
int loom_cpu_has_bf16(void);

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
 * att[B, NH, T, T] saves the probabilities; out[N, NH*HS]. Computed in blocks of 64 query rows against
 * the key prefix each block sees, so only the causal part is touched: att[t][j] holds the probability
 * for j <= t and 0 for t < j < the end of t's 64-row block; entries right of that are not written. */
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
/* Forward and backward in one pass (the training step's classifier, as llm.c fuses it): per row the
 * maximum and the sum of exponentials once, the loss into losses[n], and logits[N,V] overwritten in
 * place by d(dloss * mean loss)/d logits. Returns the mean loss; the same bits as
 * loom_crossentropy_forward_w followed by loom_crossentropy_backward_w on a copy (losses, mean, n_valid
 * and gradient), with e^x evaluated once per logit instead of twice. */
float loom_crossentropy_fused_w(float *losses, float *logits, const int32_t *targets, const float *row_w, int T, int N,
                                int V, int *n_valid, float dloss);

/* Row-sum of a [N, C] matrix into out[C] (+=), fixed chunking (thread-count independent). */
void loom_colsum_acc(float *out, const float *x, int ld, int N, int C);

#ifdef __cplusplus
}
#endif
#endif
