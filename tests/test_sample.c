/* Sampling: greedy is argmax; temperature sampling follows the softmax; top-k and top-p keep exactly
 * the tokens they should; a seed fixes the draws. */
#include "loom/core.h"
#include "loom/sample.h"
#include "test.h"

enum { V = 6, N = 60000 };

static void draw(const float *logits, const loom_sampler *s, uint64_t seed, int *counts) {
    loom_rng r;
    loom_rng_init(&r, seed, 0);
    float buf[V];
    for (int k = 0; k < V; k++) counts[k] = 0;
    for (int i = 0; i < N; i++) {
        memcpy(buf, logits, sizeof buf);
        counts[loom_sample(buf, V, s, &r)]++;
    }
}

int main(void) {
    const float logits[V] = {1.0f, 3.0f, 0.5f, 2.0f, -1.0f, 2.5f};
    /* softmax at T = 1, computed here in double as the independent route */
    double p[V], z = 0;
    for (int k = 0; k < V; k++) z += exp(logits[k]);
    for (int k = 0; k < V; k++) p[k] = exp(logits[k]) / z;
    int c[V];
    loom_sampler greedy = {0.0f, 0, 1.0f};
    draw(logits, &greedy, 1, c);
    CHECK(c[1] == N, "greedy always picks the argmax (%d of %d)", c[1], N);
    loom_sampler t1 = {1.0f, 0, 1.0f};
    draw(logits, &t1, 2, c);
    for (int k = 0; k < V; k++) {
        double f = (double)c[k] / N, se = sqrt(p[k] * (1 - p[k]) / N);
        CHECK(fabs(f - p[k]) < 5 * se + 1e-4, "token %d: frequency %.4f, softmax %.4f", k, f, p[k]);
    }
    /* top-k = 2: only tokens 1 and 5, in proportion e^3 : e^2.5 */
    loom_sampler k2 = {1.0f, 2, 1.0f};
    draw(logits, &k2, 3, c);
    CHECK(c[0] + c[2] + c[3] + c[4] == 0, "top-k 2 samples only the two best");
    double q = exp(3.0) / (exp(3.0) + exp(2.5));
    CHECK(fabs((double)c[1] / N - q) < 5 * sqrt(q * (1 - q) / N), "top-k 2 proportion %.4f vs %.4f", (double)c[1] / N, q);
    /* top-p: the smallest set whose mass reaches p. Sorted probabilities: token 1, 5, 3, 0, 2, 4. */
    double cum = p[1] + p[5];
    loom_sampler tp = {1.0f, 0, (float)(cum - 1e-3)}; /* needs tokens 1 and 5 */
    draw(logits, &tp, 4, c);
    CHECK(c[1] > 0 && c[5] > 0 && c[0] + c[2] + c[3] + c[4] == 0, "top-p keeps exactly tokens 1 and 5");
    loom_sampler tp3 = {1.0f, 0, (float)(cum + 1e-3)}; /* now token 3 is needed too */
    draw(logits, &tp3, 5, c);
    CHECK(c[3] > 0 && c[0] + c[2] + c[4] == 0, "top-p just above keeps 1, 5 and 3");
    /* low temperature sharpens: T = 0.1 puts > 99% on the argmax (e^(-5) ~ 0.0067 for the runner-up) */
    loom_sampler cold = {0.1f, 0, 1.0f};
    draw(logits, &cold, 6, c);
    CHECK(c[1] > 0.99 * N, "T = 0.1: argmax share %.4f", (double)c[1] / N);
    /* same seed, same draws; another seed, other draws */
    int a[V], b[V];
    draw(logits, &t1, 7, a);
    draw(logits, &t1, 7, b);
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, same counts");
    draw(logits, &t1, 8, b);
    CHECK(memcmp(a, b, sizeof a) != 0, "another seed, other counts");
    return test_summary();
}
