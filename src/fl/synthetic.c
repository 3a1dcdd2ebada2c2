/* Synthetic text from a model, mixed into the training of clients with little data
 * (include/loom/distill.h). */
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/distill.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/sample.h"

void loom_synth_defaults(loom_synth_config *c) {
    memset(c, 0, sizeof *c);
    c->len = 64;
    c->temperature = 0.8f;
    c->top_p = 1.0f;
}

int loom_synth_generate(const loom_model *m, const float *base, const loom_tset *ts, const float *vec,
                        const loom_synth_config *c, int32_t *out) {
    const loom_config *mc = loom_model_config(m);
    const loom_peft_config *pc = ts ? loom_tset_config(ts) : NULL;
    const int cap = mc->max_seq - (pc && pc->method == LOOM_PEFT_PROMPT ? pc->prompt_len : 0);
    if (c->n < 0) return loom_error(LOOM_EINVAL, "--synthetic %d must be >= 0", c->n);
    if (c->n == 0) return LOOM_OK;
    if (!c->prompt || c->prompt_len < 1 || c->prompt_len >= c->len)
        return loom_error(LOOM_EINVAL, "synthetic samples need a prompt of 1 to %d tokens (got %d)", c->len - 1, c->prompt_len);
    if (c->len > cap) return loom_error(LOOM_EINVAL, "synthetic samples of %d tokens exceed the model's %d positions", c->len, cap);
    if (!(c->temperature >= 0) || !(c->top_p > 0 && c->top_p <= 1) || c->top_k < 0)
        return loom_error(LOOM_EINVAL, "synthetic sampling: temperature %g, top-k %d, top-p %g", (double)c->temperature,
                          c->top_k, (double)c->top_p);
    for (int j = 0; j < c->prompt_len; j++)
        if (c->prompt[j] < 0 || c->prompt[j] >= mc->vocab)
            return loom_error(LOOM_EINVAL, "synthetic prompt token %d is outside the vocabulary", (int)c->prompt[j]);
    const float *b = base ? base : loom_model_params_const(m);
    const loom_peft *pf = ts ? loom_tset_plan(ts) : NULL;
    loom_kv *kv = NULL;
    int rc = loom_kv_create_ex(&kv, m, pf, c->len, 0);
    float *logits = rc == LOOM_OK ? malloc((size_t)mc->vocab * sizeof *logits) : NULL;
    if (rc == LOOM_OK && !logits) rc = loom_error(LOOM_ENOMEM, "out of memory");
    const loom_sampler s = {c->temperature, c->top_k, c->top_p};
    for (int k = 0; rc == LOOM_OK && k < c->n; k++) {
        int32_t *o = out + (size_t)k * c->len;
        memcpy(o, c->prompt, (size_t)c->prompt_len * sizeof *o);
        loom_rng r;
        loom_rng_init(&r, c->seed, loom_hash2(LOOM_STREAM_SYNTH, (uint64_t)k));
        rc = pf ? loom_prefill_ex(m, b, kv, pf, vec, o, c->prompt_len, 0, logits)
                : loom_prefill(m, b, kv, o, c->prompt_len, 0, logits);
        for (int pos = c->prompt_len; rc == LOOM_OK && pos < c->len; pos++) {
            o[pos] = loom_sample(logits, mc->vocab, &s, &r);
            if (pos + 1 < c->len)
                rc = pf ? loom_decode_step_ex(m, b, kv, pf, vec, o[pos], pos, logits)
                        : loom_decode_step(m, b, kv, o[pos], pos, logits);
        }
    }
    free(logits);
    loom_kv_free(kv);
    return rc;
}

int loom_synth_mix(loom_partition *part, size_t first, size_t n, size_t below, size_t *mixed) {
    size_t k = 0;
    if (mixed) *mixed = 0;
    if (first + n > UINT32_MAX) return loom_error(LOOM_ERANGE, "%zu examples: too many for the partition", first + n);
    for (size_t i = 0; n > 0 && i < part->n_clients; i++) {
        loom_client *cl = &part->clients[i];
        if (below > 0 && cl->n_train >= below) continue;
        uint32_t *t = realloc(cl->train, (cl->n_train + n) * sizeof *t);
        if (!t) return loom_error(LOOM_ENOMEM, "out of memory");
        cl->train = t;
        for (size_t j = 0; j < n; j++) t[cl->n_train + j] = (uint32_t)(first + j);
        cl->n_train += n;
        k++;
    }
    part->n_examples = first + n;
    if (mixed) *mixed = k;
    return LOOM_OK;
}
