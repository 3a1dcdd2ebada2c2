/* Tokenizers (data/ layer): text <-> token ids.
 *
 * Kinds (loom_tokenizer_kind):
 *   "byte"              256 byte tokens + specials, for tiny models trained from scratch
 *   "bpe-bytelevel"     Hugging Face tokenizer.json with a ByteLevel BPE (GPT-2, Llama 3, Qwen2,
 *                       SmolLM), and GPT-2's original encoder.json + vocab.bpe
 *   "bpe-sentencepiece" tokenizer.json with a SentencePiece-style BPE (Metaspace or Prepend/Replace
 *                       normalizers, <0xNN> byte fallback: Llama 2, TinyLlama, Mistral)
 *   "llama2c"           llama2.c tokenizer.bin (reproduces SentencePiece's ids)
 *   "tiktoken"          a tiktoken ranks file such as Llama 3's original tokenizer.model
 *   "gguf-llama"        a GGUF file's SentencePiece-style vocabulary (tokenizer.ggml.model "llama":
 *                       pieces, scores and token types; encoded as "llama2c" is). A GGUF "gpt2"
 *                       vocabulary (tokens and merges) loads as "bpe-bytelevel".
 * loom_tokenizer_load picks the kind from the path and the file's content.
 *
 * Added/special tokens: a tokenizer.json's added_tokens that appear in the text are matched whole
 * before BPE (as the tokenizers library does). GPT-2's encoder.json, llama2.c and tiktoken files
 * encode such text as ordinary characters, as their reference implementations do.
 *
 *     loom_tokenizer *tok;
 *     if (loom_tokenizer_load(&tok, "model_dir") != LOOM_OK) ...;
 *     int32_t *ids; size_t n;
 *     loom_tokenizer_encode(tok, text, strlen(text), LOOM_TOK_BOS, &ids, &n);
 *     ... free(ids); loom_tokenizer_free(tok);
 *
 * A loaded tokenizer may be used from several threads at once (encode shares a locked word cache).
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
/* path: a tokenizer.json (tokenizer_config.json beside it, when present, names bos/eos/pad), a model
 * directory (the first of tokenizer.json, tokenizer.bin, encoder.json, a tiktoken tokenizer.model),
 * an encoder.json (vocab.bpe or merges.txt beside it), a llama2.c tokenizer.bin, a tiktoken file, or
 * a GGUF file (its tokenizer.ggml.* keys). */
int loom_tokenizer_load(loom_tokenizer **out, const char *path);
void loom_tokenizer_free(loom_tokenizer *t);
/* Adds the tokenizer to a GGUF writer as llama.cpp reads it (tokenizer.ggml.*): the SentencePiece-style
 * kinds ("llama2c", "bpe-sentencepiece", "gguf-llama") as model "llama" with pieces (U+2581 for a
 * space), scores (-rank of the merge that makes a piece, so the merge order is kept) and token types;
 * the byte-level kinds ("bpe-bytelevel", "byte") as model "gpt2" (pre-tokenizer "gpt-2") with tokens
 * and merges. n_vocab is the model's vocabulary: ids past the tokenizer's are written as unused tokens
 * "[PAD<id>]". "tiktoken" is refused (LOOM_EUNSUPPORTED). */
struct loom_gguf_writer;
int loom_tokenizer_gguf_add(const loom_tokenizer *t, int n_vocab, struct loom_gguf_writer *w);

int loom_tokenizer_vocab_size(const loom_tokenizer *t);
int loom_tokenizer_bos(const loom_tokenizer *t); /* -1 when the tokenizer has none */
int loom_tokenizer_eos(const loom_tokenizer *t); /* -1 when the tokenizer has none */
int loom_tokenizer_pad(const loom_tokenizer *t); /* -1 when the tokenizer has none */
const char *loom_tokenizer_kind(const loom_tokenizer *t); /* see the list above */
/* Id of a token given as written in the tokenizer file (added/special tokens such as "<|eot_id|>",
 * or a vocabulary entry in the file's own spelling, e.g. "\u0120the" for GPT-2); -1 when absent. */
int32_t loom_tokenizer_token_id(const loom_tokenizer *t, const char *token);

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
