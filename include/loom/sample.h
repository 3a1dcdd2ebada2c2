/* Sampling the next token from logits: greedy, temperature, top-k, top-p (nucleus). */
#ifndef LOOM_SAMPLE_H
#define LOOM_SAMPLE_H

#include "loom/core.h"

typedef struct {
    float temperature; /* 0 = greedy (argmax) */
    int top_k;         /* 0 = off */
    float top_p;       /* 1 = off */
} loom_sampler;

/* Returns a token id in [0, V). logits[V] is used as scratch (overwritten). The rng draws exactly one
 * uniform per call when sampling (none when greedy). */
int loom_sample(float *logits, int V, const loom_sampler *s, loom_rng *rng);

#endif
