/* Tokenizers (data/ layer): text <-> token ids.
 *
 * Kinds: byte-level (256 byte tokens + specials, for tiny models trained from scratch), Hugging Face
 * tokenizer.json (BPE: byte-level and SentencePiece-style), GPT-2 encoder.json + vocab.bpe, and
 * llama2.c tokenizer.bin. loom_tokenizer_load picks the kind from the path.
 *
 *     loom_tokenizer *tok;
 *     if (loom_tokenizer_load(&tok, "model_dir") != LOOM_OK) ...;
 *     int32_t *ids; size_t n;
 *     loom_tokenizer_encode(tok, text, strlen(text), LOOM_TOK_BOS, &ids, &n);
 *     ... free(ids); loom_tokenizer_free(tok);
 */
#ifndef LOOM_TOKENIZER_H
#define LOOM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_tokenizer loom_tokenizer;

enum { LOOM_TOK_BOS = 1, LOOM_TOK_EOS = 2 };

/* Byte-level tokenizer: ids 0..255 are bytes; then <|bos|>=256, <|eos|>=257, <|pad|>=258 (vocab 259). */
int loom_tokenizer_byte(loom_tokenizer **out);
/* path: a tokenizer.json, a model directory (tokenizer.json inside; else tokenizer.bin/encoder.json),
 * an encoder.json (vocab.bpe beside it), or a llama2.c tokenizer.bin. */
int loom_tokenizer_load(loom_tokenizer **out, const char *path);
void loom_tokenizer_free(loom_tokenizer *t);

int loom_tokenizer_vocab_size(const loom_tokenizer *t);
int loom_tokenizer_bos(const loom_tokenizer *t); /* -1 when the tokenizer has none */
int loom_tokenizer_eos(const loom_tokenizer *t); /* -1 when the tokenizer has none */
int loom_tokenizer_pad(const loom_tokenizer *t); /* -1 when the tokenizer has none */
const char *loom_tokenizer_kind(const loom_tokenizer *t); /* "byte", "bpe-bytelevel", "bpe-sentencepiece", "llama2c", ... */

/* Encodes UTF-8 text (len bytes, need not be NUL-terminated). flags: LOOM_TOK_BOS / LOOM_TOK_EOS add
 * those special tokens. *ids is malloc'ed (free()); invalid UTF-8 input is an LOOM_EFORMAT error
 * (the byte-level tokenizer accepts any bytes). */
int loom_tokenizer_encode(const loom_tokenizer *t, const char *text, size_t len, int flags, int32_t **ids, size_t *n);
/* Decodes ids to text (*text malloc'ed, NUL-terminated, *len without the NUL). Special tokens
 * (bos/eos/pad) are skipped. */
int loom_tokenizer_decode(const loom_tokenizer *t, const int32_t *ids, size_t n, char **text, size_t *len);

/* Streaming decoder for generation: push ids one at a time, get back only complete UTF-8 characters
 * (incomplete multi-byte sequences are held until the next push). */
typedef struct loom_detok loom_detok;
int loom_detok_create(loom_detok **out, const loom_tokenizer *t);
/* Appends the text for `id` to out (NUL-terminated, at most cap-1 bytes); *n = bytes written. */
int loom_detok_push(loom_detok *d, int32_t id, char *out, size_t cap, size_t *n);
/* Emits whatever is still held (invalid trailing bytes become U+FFFD). */
int loom_detok_flush(loom_detok *d, char *out, size_t cap, size_t *n);
void loom_detok_free(loom_detok *d);

#ifdef __cplusplus
}
#endif
#endif
