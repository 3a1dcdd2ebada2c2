/* Internal: the BPE engine shared by the tokenizer.json, encoder.json+vocab.bpe and llama2.c kinds.
 *
 * Every kind reduces to the same model: a vocabulary (token string -> id), a table of mergeable
 * adjacent pairs (id_a, id_b) -> (rank, merged id), and a rule for the initial symbols of a word
 * (one per byte for byte-level BPE, one per UTF-8 character otherwise, with <0xNN> byte fallback).
 * Merging always takes the lowest rank first, the leftmost pair among equal ranks; that is the rule
 * of GPT-2's encoder.py, of Hugging Face's BPE model and, with ranks ordered by descending piece
 * score, of SentencePiece's BPE. */
#ifndef LOOM_TOKENIZER_BPE_H
#define LOOM_TOKENIZER_BPE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "data/tokenizer_impl.h"

/* Growable id vector. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} tok_ids;
int tok_ids_push(tok_ids *a, int32_t id);
int tok_ids_append(tok_ids *a, const int32_t *ids, size_t n);

/* String -> int32 map with open addressing; keys are borrowed (the caller keeps them alive). */
typedef struct {
    const char **key;
    uint32_t *klen;
    int32_t *val;
    size_t cap, used;
} tok_strmap;
int tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val); /* keeps the first value */
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len);   /* -1 when absent */
void tok_strmap_free(tok_strmap *m);

/* Pair (a, b) -> (rank, merged id). */
typedef struct {
    uint64_t *key; /* (a << 32 | b) + 1; 0 marks an empty slot */
    int32_t *rank, *id;
    size_t cap, used;
} tok_pairmap;
int tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id); /* keeps the first */
int tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id);
void tok_pairmap_free(tok_pairmap *m);

uint64_t tok_hash(const char *s, size_t len);

/* Word -> ids cache shared by all encode calls on one tokenizer (guarded by a mutex). */
typedef struct {
    uint64_t *hash;
    uint32_t *koff, *klen, *voff, *vcnt; /* koff = UINT32_MAX marks an empty slot */
    size_t cap, used;
    char *kpool;
    size_t kused, kcap;
    int32_t *vpool;
    size_t vused, vcap;
} tok_cache;

typedef struct {
    int32_t n_vocab;
    char **str;         /* [n_vocab] model-form token strings (NULL for unused ids), owned */
    uint32_t *str_len;  /* [n_vocab] */
    tok_strmap vocab;   /* model-form string -> id */
    tok_pairmap merges;
    int byte_level;     /* initial symbols are bytes mapped through byte_id; token strings are
                           written with bytes_to_unicode characters */
    int byte_fallback;  /* unknown characters become the <0xNN> tokens in byte_id */
    int32_t byte_id[256];
    uint32_t b2u[256];  /* byte-level: bytes_to_unicode */
    int32_t unk;        /* -1 when none */
    int fuse_unk, ignore_merges;
    /* ASCII bytes no merge can involve (no token longer than one byte contains them): words split
     * there encode independently, which keeps long unsplit texts (SentencePiece) cacheable. */
    unsigned char barrier[128];
    int has_barriers;
    pthread_mutex_t mu;
    int mu_init;
    tok_cache cache;
} tok_bpe;

int tok_bpe_init(tok_bpe *m, int32_t n_vocab);
void tok_bpe_free(tok_bpe *m);
/* Sets the model-form string of `id` (copied) and adds it to the vocabulary map. */
int tok_bpe_set_token(tok_bpe *m, int32_t id, const char *s, size_t len);
/* Marks the model byte-level and fills byte_id from the vocabulary. */
void tok_bpe_set_byte_level(tok_bpe *m);
/* Finds the barrier bytes; call once the vocabulary, byte_id and byte_fallback are set. */
void tok_bpe_find_barriers(tok_bpe *m);
/* Encodes one pre-tokenized word, appending its ids to out. */
int tok_bpe_word(tok_bpe *m, const char *w, size_t len, tok_ids *out);
/* SentencePiece-style encoding over m (llama2.c and GGUF "llama" vocabularies): the dummy prefix " " before
 * non-empty text, U+2581 read as a space, then tok_bpe_word over the whole. *ids is malloc'ed (never NULL
 * on LOOM_OK). */
int tok_spm_encode(tok_bpe *m, const char *text, size_t len, int32_t **ids, size_t *n);

/* UTF-8 helpers. tok_utf8_valid returns the offset of the first invalid byte or len when valid. */
size_t tok_utf8_valid(const char *s, size_t len);
int tok_utf8_char_len(unsigned char c); /* for valid UTF-8 */
/* Encodes code point cp into out (>= 4 bytes), returns the byte count. */
int tok_utf8_put(uint32_t cp, char *out);
uint32_t tok_utf8_get(const char *s, int *len); /* for valid UTF-8 */

/* GPT-2's bytes_to_unicode table: the code point standing for each byte in byte-level vocabularies. */
void tok_byte_to_unicode(uint32_t cp[256]);

/* Loaders of each kind (tokenizer_hf.c, tokenizer_llama2c.c). */
int tok_load_hf_json(loom_tokenizer **out, const char *path);
int tok_load_gpt2_files(loom_tokenizer **out, const char *encoder_json, const char *vocab_bpe);
int tok_load_llama2c(loom_tokenizer **out, const char *path);
int tok_load_tiktoken(loom_tokenizer **out, const char *path);
/* A byte-level BPE (GPT-2's pre-tokenizer pattern, or Llama 3's when llama3_pattern) from n_vocab
 * tokens in bytes_to_unicode spelling and merges "left right" in priority order (tokenizer_hf.c). */
int tok_load_bytelevel(loom_tokenizer **out, int32_t n_vocab, const char *const *tok, const size_t *tok_len, size_t n_merges,
                       const char *const *merge, const size_t *merge_len, int llama3_pattern, const char *where);
/* A GGUF file's tokenizer (tokenizer_gguf.c). */
int tok_load_gguf(loom_tokenizer **out, const char *path);
/* The BPE model of a tokenizer of a BPE kind: each such kind's impl begins with its tok_bpe. NULL for
 * the byte-level tokenizer (tokenizer.c). */
const tok_bpe *tok_bpe_of(const loom_tokenizer *t);

#endif
