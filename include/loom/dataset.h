/* Datasets (data/ layer): examples for language modelling, instruction tuning and classification,
 * and a batcher that turns a client's shard into (tokens, targets) batches.
 *
 *     loom_tokenizer *tok; loom_tokenizer_byte(&tok);
 *     loom_dataset_opts o; loom_dataset_opts_init(&o);
 *     o.format = LOOM_FMT_ALPACA;
 *     loom_dataset *ds;
 *     if (loom_dataset_load(&ds, "train.jsonl", &o, tok) != LOOM_OK) ... loom_errmsg() ...
 *     loom_batcher *b;                                   // a shard: idx = NULL means every example
 *     loom_batcher_opts bo; loom_batcher_opts_init(&bo); bo.B = 8; bo.T = 256; bo.seed = 1;
 *     loom_batcher_create(&b, ds, idx, n_idx, &bo);
 *     for (uint64_t step = k; ...; step++) loom_batcher_fill(b, step, tokens, targets, NULL);
 *     loom_batcher_free(b); loom_dataset_free(ds); loom_tokenizer_free(tok);
 *
 * B = batch size, T = sequence length.
 *
 * An example is a token sequence ids[0..n) with a loss mask: mask[i] = 1 when ids[i] is a training
 * target (predicted from ids[0..i)), 0 when it is context only. The batcher turns this into
 * tokens[t] = ids[t], targets[t] = mask[t+1] ? ids[t+1] : -1 (the ignore label).
 *
 * Formats (loom_dataset_opts.format) and what an example is:
 *   LOOM_FMT_TEXT       plain text for language modelling. Documents are split by blank lines
 *                       (text_split = LOOM_SPLIT_PARAGRAPH, default), by line, or the whole file is one
 *                       document. Every token is a target except a leading BOS.
 *   LOOM_FMT_JSONL      one JSON object a line with a string field text_col ("text"); language
 *                       modelling; key_col optional. (Classification when label_col is set.)
 *   LOOM_FMT_JSONL_CLS  JSON objects with fields text_col ("text") and label_col ("label", a string or an
 *                       integer): classification.
 *   LOOM_FMT_ALPACA     JSON objects {"instruction", "input" (optional), "output"}: instruction tuning.
 *   LOOM_FMT_DOLLY      JSON objects {"instruction", "context" (optional), "response", "category"
 *                       (optional; the default key)}: instruction tuning.
 *   LOOM_FMT_SELF_INSTRUCT  JSON objects {"instruction", "instances": [{"input", "output"}, ...]}
 *                       (self-instruct seed tasks and user-oriented set): one example per instance;
 *                       the default key is "motivation_app" when present.
 *   LOOM_FMT_CSV, LOOM_FMT_TSV  delimited rows with RFC-4180 quoting ("" inside a quoted field is a
 *                       quote; quoted fields may hold the delimiter and newlines; CRLF or LF; empty lines
 *                       are skipped). Columns are named (then the first row is the header) or numbered
 *                       from 1 (then there is no header unless header = 1). text_col may list several
 *                       columns ("2,3"), joined with a newline. With label_col: classification; without:
 *                       each row is a language-modelling document.
 *   LOOM_FMT_BROWN      the Brown corpus directory (cats.txt + one POS-tagged file per text): one
 *                       document per file with the tags removed ("The/at Fulton/np-tl" -> "The Fulton";
 *                       a token keeps the text before its last '/'), sentences one a line; key = genre.
 *
 * Instruction prompt template (Alpaca's; Dolly's context plays the part of input):
 *     "Below is an instruction that describes a task, paired with an input that provides further
 *      context. Write a response that appropriately completes the request.\n\n### Instruction:\n
 *      {instruction}\n\n### Input:\n{input}\n\n### Response:\n"
 *  and, when input is empty:
 *     "Below is an instruction that describes a task. Write a response that appropriately completes
 *      the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
 *  ids = [BOS] + encode(prompt) + encode(response) + [EOS]; mask = 1 exactly on encode(response) and
 *  the EOS (the prompt and response are encoded separately, so the boundary is exact).
 *
 * Classification is trained as generation of the label's verbalizer:
 *     prompt = "Text: {text}\nLabel:", verbalizer = " {label name}"
 *  ids = [BOS] + encode(prompt) + encode(verbalizer) (no EOS); mask = 1 on the verbalizer tokens.
 *  prompt_len gives the prompt part, and ds->verb_ids[k] holds the verbalizer tokens of every candidate
 *  label k, so accuracy = argmax_k log p(verb_ids[k] | prompt) uses the same tokens as training.
 *  Labels: the distinct values of the label field, sorted numerically when all are integers, else by
 *  strcmp; label k is the k-th. opts.labels renames them: "negative,positive" names the sorted values
 *  in order, "1=World,2=Sports,3=Business,4=Sci/Tech" maps values explicitly (then an unknown value is
 *  an error, and the label set does not depend on which values a file happens to contain).
 *
 * BOS/EOS: add_bos/add_eos = -1 (auto) adds a BOS when the tokenizer has one distinct from its EOS,
 * and an EOS when it has one (instruction and text examples; never after a verbalizer).
 * Pad id (ds->pad_id): the tokenizer's pad, else its eos, else 0; padded positions get target -1.
 *
 * Errors name the file and line: "data.jsonl:17: invalid JSON: ...", "x.csv:5: row has 2 fields,
 * expected 3".
 */
#ifndef LOOM_DATASET_H
#define LOOM_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "loom/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LOOM_FMT_TEXT = 0,
    LOOM_FMT_JSONL,
    LOOM_FMT_JSONL_CLS,
    LOOM_FMT_ALPACA,
    LOOM_FMT_DOLLY,
    LOOM_FMT_SELF_INSTRUCT,
    LOOM_FMT_CSV,
    LOOM_FMT_TSV,
    LOOM_FMT_BROWN,
};

enum { LOOM_SPLIT_PARAGRAPH = 0, LOOM_SPLIT_LINE, LOOM_SPLIT_FILE };

/* What the examples are for. */
enum { LOOM_DS_LM = 0, LOOM_DS_INSTRUCT, LOOM_DS_CLASSIFY };

typedef struct {
    int format;             /* LOOM_FMT_* */
    int text_split;         /* LOOM_FMT_TEXT: LOOM_SPLIT_* */
    const char *text_col;   /* CSV/TSV column(s) or JSONL field of the text; NULL = "text" */
    const char *label_col;  /* CSV/TSV column or JSONL field of the label; NULL = none ("label" for JSONL_CLS) */
    const char *key_col;    /* column/field whose value is the example's key (category, genre...); NULL = format default */
    const char *labels;     /* label names, see the header comment; NULL = the values themselves */
    int header;             /* CSV/TSV: -1 auto (header iff a column is given by name), 0 no, 1 yes */
    int quote;              /* CSV/TSV: 1 = RFC-4180 quoting (default), 0 = quotes are plain characters */
    int add_bos, add_eos;   /* -1 auto, 0 no, 1 yes */
    size_t max_examples;    /* stop after this many examples (0 = all) */
} loom_dataset_opts;

typedef struct {
    int32_t *ids;        /* (n) token ids */
    uint8_t *mask;       /* (n) 1 = ids[i] is a loss target */
    uint32_t n;
    uint32_t prompt_len; /* tokens before the response/verbalizer (instruction, classification); 0 for LM */
    int32_t label;       /* class index in [0, n_labels), or -1 */
    int32_t key;         /* index into keys, or -1 */
    uint32_t line;       /* 1-based line of the record in its file (Brown: 1-based file number in cats.txt) */
    const char *raw;     /* the record as written (JSONL line, CSV row, text document; Brown: the tag-free text) */
    size_t raw_len;
} loom_example;

typedef struct loom_dataset {
    int kind;              /* LOOM_DS_* */
    int format;            /* LOOM_FMT_* it was loaded from */
    size_t n;
    loom_example *ex;      /* (n) */
    size_t n_tokens;       /* sum of ex[i].n */
    size_t n_labels;
    char **label_names;    /* (n_labels) verbalizer words, e.g. "positive" */
    char **label_values;   /* (n_labels) the label as written in the data, e.g. "1" */
    int32_t **verb_ids;    /* (n_labels) verbalizer token ids, verb_len[k] each */
    size_t *verb_len;      /* (n_labels) */
    size_t n_keys;
    char **keys;           /* (n_keys) distinct key values, sorted by strcmp */
    char *header;          /* CSV/TSV header row as written, or NULL */
    int32_t pad_id;
    int32_t vocab_size;
    void *priv;            /* storage */
} loom_dataset;

void loom_dataset_opts_init(loom_dataset_opts *o);
/* "text", "jsonl", "jsonl-cls", "alpaca", "dolly", "self-instruct", "csv", "tsv", "brown" -> LOOM_FMT_*,
 * or -1. */
int loom_dataset_format(const char *name);
const char *loom_dataset_format_name(int format);

/* Loads path (a file; LOOM_FMT_BROWN: the corpus directory) with tok (any loom_tokenizer; only read). */
int loom_dataset_load(loom_dataset **out, const char *path, const loom_dataset_opts *o, const loom_tokenizer *tok);
/* The same from memory; name is used in error messages. Not for LOOM_FMT_BROWN. */
int loom_dataset_load_buffer(loom_dataset **out, const char *data, size_t len, const char *name,
                             const loom_dataset_opts *o, const loom_tokenizer *tok);
/* A language-modelling dataset from n texts (each one example, no BOS/EOS unless asked through o;
 * o may be NULL); keys (n, may be NULL or hold NULLs) become the examples' keys. */
int loom_dataset_from_texts(loom_dataset **out, const char *const *texts, const size_t *lens,
                            const char *const *keys, size_t n, const loom_dataset_opts *o,
                            const loom_tokenizer *tok);
/* A copy of the language-modelling dataset src followed by n new examples of len token ids each
 * (ids[n * len], each in [0, vocab)); the first prompt_len ids of each carry no loss (mask 0), the rest
 * do; the new examples have no label, no key, an empty raw text and line 0. Examples 0 .. src->n - 1
 * are src's, unchanged. Another kind of dataset: LOOM_EINVAL. (Synthetic text, include/loom/distill.h.) */
int loom_dataset_append_ids(loom_dataset **out, const loom_dataset *src, const int32_t *ids, size_t n, size_t len,
                            size_t prompt_len);
/* A new dataset holding copies of examples idx[0..n) (label and key tables are kept whole). */
int loom_dataset_subset(loom_dataset **out, const loom_dataset *ds, const uint32_t *idx, size_t n);
void loom_dataset_free(loom_dataset *ds);

/* Classification scoring input: writes prompt tokens of example i followed by the verbalizer of
 * label k into out (cap entries); *n = length, *prompt_len = where the verbalizer starts. */
/* How many leading tokens an unpacked row of T+1 tokens drops from an example of n tokens whose first
 * prompt_len are its prompt: 0 when it fits; else prompt tokens from the front, as many as needed but
 * never the last one, so that the response or label stays in the row (a longer response is cut at its
 * end). For classification data the room kept after the prompt is that of the longest verbalizer,
 * whatever the example's label: the prompt ends at the same row position for every label, so that
 * the position does not give the label away (training and the scorer's candidates cut alike).
 * Language-modelling examples (prompt_len 0) are not cut at the front. */
size_t loom_dataset_row_cut(const loom_dataset *ds, size_t prompt_len, size_t n, size_t T);
int loom_dataset_candidate(const loom_dataset *ds, size_t i, size_t k, int32_t *out, size_t cap, size_t *n,
                           size_t *prompt_len);

/* ---- batching ---------------------------------------------------------------------------------
 * A sample is a packed window (pack = 1: the shard's examples are concatenated in index order into
 * one stream, window w holds stream[w*T .. w*T+T], T+1 tokens, and the last window is padded) or one
 * example (pack = 0: T+1 tokens, padded; a language-modelling example is cut at its end, an example
 * with a prompt loses prompt tokens from its front, all but the last if need be, so that its response
 * or label stays in the row). A shard whose every sample has no target is refused at create (it
 * would train on nothing); when only some have none, a warning is logged once per process and
 * loom_batcher_untargeted counts them. Sample s of the infinite sequence (s = step*B +
 * row) belongs to epoch e = s / S (S samples an epoch) and is sample perm_e[s % S], perm_e a shuffle
 * drawn from the stream (seed, e): batches depend on (seed, step) alone, every sample is seen once an
 * epoch, and a batch may straddle two epochs. */
enum { LOOM_PACK_AUTO = -1, LOOM_PACK_OFF = 0, LOOM_PACK_ON = 1 };

typedef struct {
    size_t B, T;
    uint64_t seed;
    int pack;    /* LOOM_PACK_*: AUTO packs language-modelling datasets and pads the others */
    int shuffle; /* 1 (default): seeded shuffle per epoch; 0: samples in order */
    int once;    /* 1: samples past the first epoch are padding (evaluation: one pass) */
} loom_batcher_opts;

typedef struct loom_batcher loom_batcher;

void loom_batcher_opts_init(loom_batcher_opts *o);
/* idx (n_idx) selects the examples (a client's shard); idx = NULL means all. The indices are copied;
 * ds must outlive the batcher. A batcher caches the current epoch's order: use one per thread. */
int loom_batcher_create(loom_batcher **out, const loom_dataset *ds, const uint32_t *idx, size_t n_idx,
                        const loom_batcher_opts *o);
void loom_batcher_free(loom_batcher *b);
size_t loom_batcher_samples(const loom_batcher *b);         /* samples an epoch (S) */
size_t loom_batcher_untargeted(const loom_batcher *b);      /* of them, samples without a target */
uint64_t loom_batcher_steps_per_epoch(const loom_batcher *b); /* ceil(S / B) */
/* Fills tokens (B*T) and targets (B*T) for this step; *rows (may be NULL) = rows holding a sample
 * (fewer than B only when once = 1 or S = 0). Padding rows have tokens = pad_id, targets = -1. */
int loom_batcher_fill(loom_batcher *b, uint64_t step, int32_t *tokens, int32_t *targets, size_t *rows);

/* ---- federated Shakespeare --------------------------------------------------------------------
 * From tiny shakespeare's input.txt: a speaker turn is a line "NAME:" (first character an upper-case
 * letter, then letters, spaces and ' , . & -) at the start of the file or after a blank line; the lines
 * after it up to the next blank line are that speaker's. Client = speaker name (the plays are not
 * marked in this file, so a name used in several plays, e.g. GLOUCESTER, is one client). Speakers
 * with at least min_lines lines are clients (default 64), in order of first appearance. One example
 * = one spoken line plus its "\n" (no BOS/EOS): next-character prediction over the client's lines.
 * Each client's first lines are train and its last round(test_frac * n) lines (default 0.2) are test,
 * by line order. */
typedef struct {
    size_t min_lines;  /* default 64 */
    double test_frac;  /* default 0.2 */
} loom_shakespeare_opts;

struct loom_partition;
void loom_shakespeare_opts_init(loom_shakespeare_opts *o);
/* *ds holds the lines of all clients; *part has one client per speaker (name = speaker; train/test =
 * example indices). ex[i].line is the line number in input.txt. tok may be NULL (byte-level). */
int loom_shakespeare_load(loom_dataset **ds, struct loom_partition **part, const char *input_path,
                          const loom_shakespeare_opts *o, const loom_tokenizer *tok);

#ifdef __cplusplus
}
#endif
#endif
