/* The round engine's asynchronous modes (FedAsync, FedBuff), internal to fl/: engine.c owns one
 * lm_async per engine in those modes and forwards the evaluation calls to it (see
 * include/loom/engine.h for the definitions). */
#ifndef LOOM_FL_ENGINE_ASYNC_H
#define LOOM_FL_ENGINE_ASYNC_H

#include "loom/engine.h"

typedef struct lm_async lm_async;

/* The asynchronous fields of the configuration (LOOM_OK in synchronous mode). */
int lm_async_check(const loom_engine_config *c);
/* global: the engine's vector (mixed into in place); pipe: the engine's pipeline. */
int lm_async_create(lm_async **out, const loom_engine_config *c, float *global, loom_pipeline *pipe);
void lm_async_free(lm_async *a);
int lm_async_eval_plan(lm_async *a, const int **clients, int *n);
int lm_async_eval_submit(lm_async *a, int client, const loom_eval_result *r);

/* The engine's lm_async (NULL in synchronous mode); defined in engine.c. */
lm_async *lm_engine_async(const loom_engine *e);

/* The pooled evaluation of a round or version (engine.c): add each client's result, then fill the
 * metrics' eval fields (token-weighted pooled loss and accuracy, and the mean and spread across
 * clients; attack_success = the pooled attack hits over the pooled triggered examples, NAN with none).
 * A result without counted tokens is left out. */
typedef struct {
    double ls, s1, s2, a1, a2;
    long corr, toks, count;
    int k;
    long atk_hits, atk_count; /* a backdoor run: triggered examples classified as the target, of all scored */
    double amin;              /* the lowest client accuracy (valid when k > 0) */
} lm_eval_pool;
void lm_eval_pool_add(lm_eval_pool *p, const loom_eval_result *r);
void lm_eval_pool_finish(const lm_eval_pool *p, loom_round_metrics *m);

#endif
