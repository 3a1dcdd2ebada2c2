/* Internal layout of loom_tokenizer, shared by the tokenizer implementation files. */
#ifndef LOOM_TOKENIZER_IMPL_H
#define LOOM_TOKENIZER_IMPL_H

#include "loom/tokenizer.h"

/* Each kind provides these; `impl` is the kind's private state. */
typedef struct {
    const char *kind;
    int (*encode)(const loom_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n);
    /* Bytes for one token id (may be a partial UTF-8 sequence). prev = previous id in the stream or -1
     * (some formats strip a leading space after BOS). Returns the number of bytes written to buf (cap
     * >= max_piece is always enough), 0 for ids that produce no text, or a negative status. */
    int (*piece)(const loom_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t cap);
    void (*destroy)(loom_tokenizer *t);
    /* Id of a token in the file's spelling, -1 when absent. */
    int32_t (*token_id)(const loom_tokenizer *t, const char *token);
} loom_tokenizer_ops;

struct loom_tokenizer {
    const loom_tokenizer_ops *ops;
    void *impl;
    int vocab_size;
    int bos, eos, pad; /* -1 when absent */
    int max_piece;     /* longest piece in bytes */
};

#endif
