/* Token streams from text files for the language-modelling commands (train, eval, bench). */
#ifndef LOOM_CLI_TEXTDATA_H
#define LOOM_CLI_TEXTDATA_H

#include <stddef.h>
#include <stdint.h>

#include "loom/tokenizer.h"

/* The ids of a whole file, two bytes each when the vocabulary fits (ids16), else four (ids32). */
typedef struct {
    uint16_t *ids16;
    int32_t *ids32;
    size_t n;
} token_stream;

static inline int32_t text_id(const token_stream *s, size_t i) { return s->ids16 ? s->ids16[i] : s->ids32[i]; }

/* Reads and tokenizes a whole text file. The file is read in blocks and, for tokenizers whose result
 * does not depend on where the text is cut at a line break between two non-blank characters (byte,
 * byte-level BPE, tiktoken), tokenized block by block, so the text is never held whole; other kinds
 * (SentencePiece-style, llama2.c: a dummy prefix at the start of the text) encode the whole text at
 * once. Either way the ids are stored compactly. Environment LOOM_TEXT_BLOCK (bytes) overrides the
 * block size (tests). */
int text_load(token_stream *s, const char *path, const loom_tokenizer *tok);
void text_free(token_stream *s);
/* Fills tokens/targets [B*T] with B windows of T+1 tokens from ids[lo, hi), window starts drawn from
 * (seed, step): the same step always gives the same batch. */
void text_batch(const token_stream *s, size_t lo, size_t hi, int B, int T, uint64_t seed, long step, int32_t *tokens,
                int32_t *targets);
/* Window k of the non-overlapping windows of T+1 tokens (stride T) in [lo, hi); returns 0 past the end. */
int text_window(const token_stream *s, size_t lo, size_t hi, int T, long k, int32_t *tokens, int32_t *targets);

#endif
