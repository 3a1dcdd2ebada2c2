/* What each trainable-set method adds to the forward and backward passes, as hooks the model calls at
 * its matmul sites, adapter points and attention (model/model_impl.h, lm_peft_ops). A new method is a
 * new ops table here; the model's passes do not change.
 *
 * Each method's activations live in the plan's workspace block (lm_hook_ctx.mem, ws_floats floats),
 * laid out from the workspace's capacity N = B * T so forward and backward find the same places. */
#include <math.h>
#include <string.h>

#include "loom/core.h"
#include "loom/kernels.h"
#include "loom/prefix_attn.h"
#include "peft/peft_impl.h"

/* ---------------------------------------------------------------- LoRA
 * mem: u [n_lora][N*r] (x A^T per module), du [N*r], then with dropout x and dx [N*max_in]. */

static size_t lora_ws(const loom_model *m, const loom_peft *pf, int B, int T) {
    size_t N = (size_t)B * T;
    size_t n = (size_t)pf->n_lora * N * pf->lora_r + N * pf->lora_r;
    if (pf->lora_dropout > 0) n += 2 * N * (size_t)pf->lora_max_in;
    return n;
}

/* each block at the call's first position h->pos0 (0 unless the backward runs row by row) */
static float *lora_u(const lm_hook_ctx *h, int k) {
    return h->mem + ((size_t)k * h->N + h->pos0) * h->pf->lora_r;
}
static float *lora_du(const lm_hook_ctx *h) {
    return h->mem + ((size_t)h->pf->n_lora * h->N + h->pos0) * h->pf->lora_r;
}
static float *lora_x(const lm_hook_ctx *h) {
    return h->mem + (size_t)(h->pf->n_lora + 1) * h->N * h->pf->lora_r + h->pos0 * (size_t)h->pf->lora_max_in;
}
static float *lora_dx(const lm_hook_ctx *h) { return lora_x(h) + h->N * (size_t)h->pf->lora_max_in; }

/* Inverted dropout on LoRA's input: element i of module k keeps with probability 1-p, from a hash of
 * (seed, k, i), so the backward pass regenerates the same mask without storing it. */
static void lora_dropout(const lm_hook_ctx *h, int k, float *dst, const float *x, int ldx, int N, int in) {
    float p = h->pf->lora_dropout, keep = 1.0f / (1.0f - p);
    uint64_t key = loom_hash2(h->dropout_seed, (uint64_t)k);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
        for (int i = 0; i < in; i++) {
            double u = (double)(loom_hash2(key, (uint64_t)(n + h->pos0) * (uint64_t)in + (uint64_t)i) >> 11) * 0x1.0p-53;
            dst[(size_t)n * in + i] = u < p ? 0.0f : x[(size_t)n * ldx + i] * keep;
        }
}

static int dropout_active(const lm_hook_ctx *h) { return h->pf->lora_dropout > 0 && h->dropout_on; }

/* out[:, col0:col0+out] += scale * (x A^T) B^T for each LoRA module at (layer, site). */
static void lora_site_fwd(const lm_hook_ctx *h, int l, int site, const float *x, int ldx, float *out, int ldo, int N) {
    const loom_peft *pf = h->pf;
    const int R = pf->lora_r;
    for (int k = 0; k < pf->n_lora; k++) {
        const loom_lora_mod *md = &pf->lora[k];
        if (md->layer != l || md->site != site) continue;
        const float *A = h->vec + md->a_off, *Bm = h->vec + md->b_off;
        const float *xin = x;
        int ldin = ldx;
        if (dropout_active(h)) {
            lora_dropout(h, k, lora_x(h), x, ldx, N, md->in);
            xin = lora_x(h);
            ldin = md->in;
        }
        float *u = lora_u(h, k);
        if (N == 1) { /* one row (decoding a token): plain products, without a BLAS call's overhead */
            for (int r = 0; r < R; r++) u[r] = lm_dot16(A + (size_t)r * md->in, xin, md->in);
            float *o = out + md->col0;
            for (int j = 0; j < md->out; j++) {
                const float *b = Bm + (size_t)j * R;
                float s = 0;
                for (int r = 0; r < R; r++) s += b[r] * u[r];
                o[j] += pf->lora_scale * s;
            }
            continue;
        }
        loom_sgemm(0, 1, N, R, md->in, 1.0f, xin, ldin, A, md->in, 0.0f, u, R);
        loom_sgemm(0, 1, N, md->out, R, pf->lora_scale, u, R, Bm, R, 1.0f,
                    out + md->col0, ldo);
    }
}

/* Gradients of the LoRA modules at (layer, site) from dout (the site's output gradient); dinp (may be
 * NULL) += their input gradient. */
static void lora_site_bwd(const lm_hook_ctx *h, int l, int site, const float *x, int ldx, const float *dout, int ldo,
                          float *dinp, int ldi, int N) {
    const loom_peft *pf = h->pf;
    const int R = pf->lora_r;
    const float s = pf->lora_scale;
    for (int k = 0; k < pf->n_lora; k++) {
        const loom_lora_mod *md = &pf->lora[k];
        if (md->layer != l || md->site != site) continue;
        const float *A = h->vec + md->a_off, *Bm = h->vec + md->b_off;
        float *dA = h->gvec + md->a_off, *dB = h->gvec + md->b_off;
        const float *u = lora_u(h, k), *dy = dout + md->col0;
        float *du = lora_du(h);
        const float *xin = x;
        int ldin = ldx, drop = dropout_active(h);
        if (drop) {
            lora_dropout(h, k, lora_x(h), x, ldx, N, md->in);
            xin = lora_x(h);
            ldin = md->in;
        }
        /* dB[out, r] += s dy^T u ; du[N, r] = s dy B ; dA[r, in] += du^T x ; dx[N, in] += du A */
        loom_sgemm(1, 0, md->out, R, N, s, dy, ldo, u, R, 1.0f, dB, R);
        loom_sgemm(0, 0, N, R, md->out, s, dy, ldo, Bm, R, 0.0f, du, R);
        loom_sgemm(1, 0, R, md->in, N, 1.0f, du, R, xin, ldin, 1.0f, dA, md->in);
        if (!dinp) continue;
        if (!drop) {
            loom_sgemm(0, 0, N, md->in, R, 1.0f, du, R, A, md->in, 1.0f, dinp, ldi);
        } else {
            float *dx = lora_dx(h);
            loom_sgemm(0, 0, N, md->in, R, 1.0f, du, R, A, md->in, 0.0f, dx, md->in);
            /* the same mask, applied to ones: keep/(1-p) or 0 */
            float *ones = lora_x(h); /* x was consumed above */
            for (int n = 0; n < N; n++) /* ones as a [N, in] view with row stride in */
                for (int i = 0; i < md->in; i++) ones[(size_t)n * md->in + i] = 1.0f;
            lora_dropout(h, k, ones, ones, md->in, N, md->in);
#pragma omp parallel for schedule(static)
            for (int n = 0; n < N; n++)
                for (int i = 0; i < md->in; i++)
                    dinp[(size_t)n * ldi + i] += dx[(size_t)n * md->in + i] * ones[(size_t)n * md->in + i];
        }
    }
}

/* Decoding keeps only u and du (no dropout): the same places as lora_ws's first blocks. */
static size_t lora_dec_floats(const loom_model *m, const loom_peft *pf, int N) {
    (void)m;
    return ((size_t)pf->n_lora + 1) * (size_t)N * pf->lora_r;
}

const lm_peft_ops lm_lora_ops = {.ws_floats = lora_ws, .site_fwd = lora_site_fwd, .site_bwd = lora_site_bwd,
                                 .dec_floats = lora_dec_floats};

/* ---------------------------------------------------------------- bottleneck adapters
 * mem: per adapter k = 2l + a: input a [N*C], pre-activation z [N*m], hidden h [N*m]; then dh, dz
 * [N*m] and da [N*C]. */

static size_t adapter_ws(const loom_model *m, const loom_peft *pf, int B, int T) {
    size_t N = (size_t)B * T, C = (size_t)m->cfg.dim, M = (size_t)pf->adapter_dim;
    return 2 * (size_t)m->cfg.n_layer * (N * C + 2 * N * M) + 2 * N * M + N * C;
}

typedef struct {
    float *a, *z, *h, *dh, *dz, *da;
} adapter_mem;

static adapter_mem adapter_at(const lm_hook_ctx *h, int k) {
    size_t N = h->N, C = (size_t)h->m->cfg.dim, M = (size_t)h->pf->adapter_dim, per = N * C + 2 * N * M;
    float *p = h->mem + (size_t)k * per, *tail = h->mem + 2 * (size_t)h->m->cfg.n_layer * per;
    size_t o = h->pos0; /* the call's first position */
    adapter_mem am = {p + o * C, p + N * C + o * M, p + N * C + N * M + o * M, tail + o * M, tail + N * M + o * M,
                      tail + 2 * N * M + o * C};
    return am;
}

/* Houlsby adapter a (0: after attention, 1: after the MLP) of layer l, in place on y[N, C]:
 * y = y + up(gelu(down(y))), keeping its input and activations in am. */
static void adapter_apply(const lm_hook_ctx *h, int l, int a, float *y, int N, adapter_mem am) {
    const loom_peft *pf = h->pf;
    int C = h->m->cfg.dim, M = pf->adapter_dim;
    const float *wd = h->vec + pf->adapter_off[l][a], *bd = wd + (size_t)M * C, *wu = bd + M, *bu = wu + (size_t)C * M;
    memcpy(am.a, y, (size_t)N * C * sizeof(float));
    loom_matmul_forward(am.z, M, y, C, wd, LOOM_W_LINEAR, bd, N, C, M);
    loom_gelu_forward(am.h, am.z, (size_t)N * M, 0);
    loom_matmul_forward(y, C, am.h, M, wu, LOOM_W_LINEAR, bu, N, M, C);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < (size_t)N * C; i++) y[i] += am.a[i];
}

static void adapter_fwd(const lm_hook_ctx *h, int l, int a, float *y, int N) {
    adapter_apply(h, l, a, y, N, adapter_at(h, 2 * l + a));
}

/* Decoding keeps nothing for a backward: every adapter works in one block of input a [N*C], z and h
 * [N*m] (the dz, dh, da fields are not used). */
static size_t adapter_dec_floats(const loom_model *m, const loom_peft *pf, int N) {
    return (size_t)N * ((size_t)m->cfg.dim + 2 * (size_t)pf->adapter_dim);
}

static void adapter_dec(const lm_hook_ctx *h, int l, int a, float *y, int N) {
    size_t C = (size_t)h->m->cfg.dim, M = (size_t)h->pf->adapter_dim;
    adapter_mem am = {h->mem, h->mem + h->N * C, h->mem + h->N * (C + M), NULL, NULL, NULL};
    adapter_apply(h, l, a, y, N, am);
}

/* Backward of adapter (l, a) from dy (gradient of its output); returns the gradient of its input (dy +
 * the bottleneck's share), or NULL when need_input is 0. */
static const float *adapter_bwd(const lm_hook_ctx *h, int l, int a, const float *dy, int N, int need_input) {
    const loom_peft *pf = h->pf;
    int C = h->m->cfg.dim, M = pf->adapter_dim;
    const float *wd = h->vec + pf->adapter_off[l][a], *wu = wd + (size_t)M * C + M;
    float *gwd = h->gvec + pf->adapter_off[l][a], *gbd = gwd + (size_t)M * C, *gwu = gbd + M, *gbu = gwu + (size_t)C * M;
    adapter_mem am = adapter_at(h, 2 * l + a);
    loom_matmul_backward(am.dh, M, 0.0f, gwu, gbu, dy, C, am.h, wu, LOOM_W_LINEAR, N, M, C);
    loom_gelu_backward(am.dz, am.z, am.dh, (size_t)N * M, 0);
    loom_matmul_backward(need_input ? am.da : NULL, C, 0.0f, gwd, gbd, am.dz, M, am.a, wd, LOOM_W_LINEAR, N, C, M);
    if (!need_input) return NULL;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < (size_t)N * C; i++) am.da[i] += dy[i];
    return am.da;
}

const lm_peft_ops lm_adapter_ops = {.ws_floats = adapter_ws, .point_fwd = adapter_fwd, .point_bwd = adapter_bwd,
                                    .dec_floats = adapter_dec_floats, .point_dec = adapter_dec};

/* ---------------------------------------------------------------- prefix tuning
 * mem: attention probabilities per layer [B*NH*T*(P+T)]. */

static size_t prefix_layer_floats(const loom_model *m, const loom_peft *pf, int B, int T) {
    return (size_t)B * m->cfg.n_head * T * ((size_t)T + pf->prefix_len);
}

static size_t prefix_ws(const loom_model *m, const loom_peft *pf, int B, int T) {
    return (size_t)m->cfg.n_layer * prefix_layer_floats(m, pf, B, T);
}

static int prefix_attn_fwd(const lm_hook_ctx *h, int l, float *out, const float *qkv, int ldqkv, int B, int T) {
    const loom_config *c = &h->m->cfg;
    int HS = c->dim / c->n_head, KV = c->n_kv_head * HS;
    const float *pk = h->vec + h->pf->prefix_off + (size_t)2 * l * KV;
    float *att = h->mem + (size_t)l * prefix_layer_floats(h->m, h->pf, h->B, h->T);
    loom_prefix_attention_forward(out, att, qkv, ldqkv, pk, pk + KV, 2 * c->n_layer * KV, h->pf->prefix_len, B, T,
                                  c->n_head, c->n_kv_head, HS);
    return 1;
}

static int prefix_attn_bwd(const lm_hook_ctx *h, int l, float *dqkv, const float *dout, const float *qkv, int ldqkv,
                           int B, int T) {
    const loom_config *c = &h->m->cfg;
    int HS = c->dim / c->n_head, KV = c->n_kv_head * HS;
    const float *pk = h->vec + h->pf->prefix_off + (size_t)2 * l * KV;
    float *gk = h->gvec + h->pf->prefix_off + (size_t)2 * l * KV;
    const float *att = h->mem + (size_t)l * prefix_layer_floats(h->m, h->pf, h->B, h->T) +
                       h->pos0 * c->n_head * ((size_t)T + h->pf->prefix_len); /* row pos0 / T's probabilities */
    loom_prefix_attention_backward(dqkv, gk, gk + KV, dout, qkv, att, ldqkv, pk, pk + KV, 2 * c->n_layer * KV,
                                   h->pf->prefix_len, B, T, c->n_head, c->n_kv_head, HS);
    return 1;
}

/* Decoding: the P virtual tokens are the first P positions of every layer's key/value cache, used as
 * given (no position embedding or RoPE), exactly the rows prefix attention puts before the sequence. */
static int prefix_kv(const lm_hook_ctx *h, int l, float *k, float *v, int ld) {
    const loom_config *c = &h->m->cfg;
    int P = h->pf->prefix_len, KV = c->n_kv_head * (c->dim / c->n_head);
    if (!k || !v) return P;
    const float *pk = h->vec + h->pf->prefix_off + (size_t)2 * l * KV;
    size_t ldp = (size_t)2 * c->n_layer * KV;
    for (int p = 0; p < P; p++) {
        memcpy(k + (size_t)p * ld, pk + p * ldp, (size_t)KV * sizeof(float));
        memcpy(v + (size_t)p * ld, pk + KV + p * ldp, (size_t)KV * sizeof(float));
    }
    return P;
}

static size_t no_floats(const loom_model *m, const loom_peft *pf, int N) {
    (void)m, (void)pf, (void)N;
    return 0;
}

const lm_peft_ops lm_prefix_ops = {.ws_floats = prefix_ws, .attn_fwd = prefix_attn_fwd,
                                   .attn_bwd = prefix_attn_bwd, .dec_floats = no_floats, .kv_prefix = prefix_kv};

/* ---------------------------------------------------------------- prompt tuning
 * P soft-token rows [P, C] at the start of every sequence: the model embeds them at the prompt point. */

static const float *prompt_rows(const lm_hook_ctx *h, float **grad) {
    if (grad) *grad = h->gvec ? h->gvec + h->pf->prompt_off : NULL;
    return h->vec + h->pf->prompt_off;
}

const lm_peft_ops lm_prompt_ops = {.prompt = prompt_rows};

/* FULL and BITFIT: trained copies of model tensors (the plan's tmap) and nothing else. */
const lm_peft_ops lm_copy_ops = {0};
