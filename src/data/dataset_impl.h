/* Internal: how dataset files become loom_dataset. Parsers (dataset_formats.c) turn records into
 * ds_record strings; ds_build (dataset.c) maps labels and keys, tokenizes and lays the examples out. */
#ifndef LOOM_DATASET_IMPL_H
#define LOOM_DATASET_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "loom/dataset.h"

/* One parsed record. All strings are owned (malloc) by the record list. */
typedef struct {
    char *prompt;   /* LM: the document; instruction: the filled template; classification: the text */
    char *response; /* instruction: the response; else NULL */
    char *label;    /* classification: the label as written; else NULL */
    char *key;      /* NULL when none */
    char *raw;      /* the record as written */
    size_t prompt_len, response_len, raw_len;
    uint32_t line;
} ds_record;

typedef struct {
    ds_record *r;
    size_t n, cap;
    int kind;     /* LOOM_DS_* */
    char *header; /* CSV header row, owned */
} ds_records;

/* Appends a record, taking ownership of its strings (freed on failure too). */
int ds_records_push(ds_records *rs, ds_record rec);
void ds_records_free(ds_records *rs);

/* Tokenizes and builds the dataset; `name` prefixes error messages. Consumes rs. */
int ds_build(loom_dataset **out, ds_records *rs, const char *name, const loom_dataset_opts *o,
             const loom_tokenizer *tok, int format);

/* Parsers: fill rs from data[0..len) (no NUL needed). */
int ds_parse_text(ds_records *rs, const char *data, size_t len, const char *name, const loom_dataset_opts *o);
int ds_parse_jsonl(ds_records *rs, const char *data, size_t len, const char *name, const loom_dataset_opts *o);
int ds_parse_csv(ds_records *rs, const char *data, size_t len, const char *name, const loom_dataset_opts *o);
int ds_parse_brown(ds_records *rs, const char *dir, const loom_dataset_opts *o);

/* The Alpaca template around instruction and input (input may be empty); malloc'ed. */
char *ds_instruction_prompt(const char *instruction, const char *input, size_t *len);
char *ds_strndup(const char *s, size_t n);

#endif
