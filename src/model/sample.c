#include "loom/sample.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    float p;
    int id;
} prob_id;

static int by_prob_desc(const void *a, const void *b) {
    const prob_id *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id; /* stable order for ties */
}

int loom_sample(float *logits, int V, const loom_sampler *s, loom_rng *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (s->temperature <= 0.0f) return best;
    /* softmax at temperature */
    float mx = logits[best];
    double sum = 0;
    for (int i = 0; i < V; i++) {
        logits[i] = expf((logits[i] - mx) / s->temperature);
        sum += logits[i];
    }
    for (int i = 0; i < V; i++) logits[i] = (float)(logits[i] / sum);
    int use_k = s->top_k > 0 && s->top_k < V, use_p = s->top_p > 0.0f && s->top_p < 1.0f;
    double r = loom_rng_uniform(rng);
    if (!use_k && !use_p) {
        double c = 0;
        for (int i = 0; i < V; i++) {
            c += logits[i];
            if (r < c) return i;
        }
        return best;
    }
    prob_id *pi = malloc((size_t)V * sizeof *pi);
    if (!pi) return best;
    for (int i = 0; i < V; i++) {
        pi[i].p = logits[i];
        pi[i].id = i;
    }
    qsort(pi, (size_t)V, sizeof *pi, by_prob_desc);
    int n = use_k ? s->top_k : V;
    double mass = 0;
    int keep = 0;
    for (; keep < n; keep++) {
        mass += pi[keep].p;
        if (use_p && mass >= s->top_p) {
            keep++;
            break;
        }
    }
    double c = 0, target = r * mass;
    int out = pi[0].id;
    for (int i = 0; i < keep; i++) {
        c += pi[i].p;
        if (target < c) {
            out = pi[i].id;
            break;
        }
    }
    free(pi);
    return out;
}
