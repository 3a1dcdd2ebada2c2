/* Attention over learned key/value prefixes (kernels/ layer), for prefix tuning (P-tuning v2).
 *
 * Dimension letters as in kernels.h: N = B*T rows, B batch, T time, NH query heads, NKV key/value
 * heads, HS head size, P prefix length. */
#ifndef LOOM_PREFIX_ATTN_H
#define LOOM_PREFIX_ATTN_H

#ifdef __cplusplus
extern "C" {
#endif

/* Causal self-attention where every query also attends to P learned prefix positions (P-tuning v2):
 * query t of a sequence sees prefix rows 0..P-1, then its own positions 0..t. qkv[N, ldqkv] as in
 * loom_attention_forward; prefix key p of kv head g is pk[p*ldp + g*HS .. +HS], value likewise in pv
 * (shared by all B sequences). att[B, NH, T, P+T] keeps the probabilities; out[N, NH*HS]. */
void loom_prefix_attention_forward(float *out, float *att, const float *qkv, int ldqkv, const float *pk,
                                   const float *pv, int ldp, int P, int B, int T, int NH, int NKV, int HS);
/* dqkv[N, ldqkv] (the NH*HS + 2*NKV*HS columns) is overwritten; dpk, dpv (rows of ldp like pk, pv)
 * are accumulated (+=) and may be NULL. Deterministic: no two threads write one element. */
void loom_prefix_attention_backward(float *dqkv, float *dpk, float *dpv, const float *dout, const float *qkv,
                                    const float *att, int ldqkv, const float *pk, const float *pv, int ldp, int P,
                                    int B, int T, int NH, int NKV, int HS);

#ifdef __cplusplus
}
#endif
#endif
