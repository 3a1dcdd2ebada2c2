/* Token streams from text files for the language-modelling commands (train, eval, bench). */
#ifndef LOOM_CLI_TEXTDATA_H
#define LOOM_CLI_TEXTDATA_H

#include <stddef.h>
#include <stdint.h>

#include "loom/tokenizer.h"

typedef struct {
    int32_t *ids;
    size_t n;
} token_stream;

/* Reads and tokenizes a whole text file. */
int text_load(token_stream *s, const char *path, const loom_tokenizer *tok);
void text_free(token_stream *s);
/* Fills tokens/targets [B*T] with B windows of T+1 tokens from ids[lo, hi), window starts drawn from
 * (seed, step): the same step always gives the same batch. */
void text_batch(const token_stream *s, size_t lo, size_t hi, int B, int T, uint64_t seed, long step, int32_t *tokens,
                int32_t *targets);
/* Window k of the non-overlapping windows of T+1 tokens (stride T) in [lo, hi); returns 0 past the end. */
int text_window(const token_stream *s, size_t lo, size_t hi, int T, long k, int32_t *tokens, int32_t *targets);

#endif
