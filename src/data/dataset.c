/* Datasets: label and key tables, tokenization, example layout, subsets. Parsers live in
 * dataset_formats.c, the batcher in dataset_batch.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/dataset_impl.h"
#include "loom/core.h"

/* Example storage: every example's ids/mask/raw point into these pools. */
typedef struct {
    int32_t *ids;
    uint8_t *mask;
    char *raw;
    int32_t *verb;
} ds_storage;

static const char *const format_names[] = {
    [LOOM_FMT_TEXT] = "text",     [LOOM_FMT_JSONL] = "jsonl", [LOOM_FMT_JSONL_CLS] = "jsonl-cls",
    [LOOM_FMT_ALPACA] = "alpaca", [LOOM_FMT_DOLLY] = "dolly", [LOOM_FMT_SELF_INSTRUCT] = "self-instruct",
    [LOOM_FMT_CSV] = "csv",       [LOOM_FMT_TSV] = "tsv",     [LOOM_FMT_BROWN] = "brown",
};
#define N_FORMATS (sizeof format_names / sizeof format_names[0])

void loom_dataset_opts_init(loom_dataset_opts *o) {
    memset(o, 0, sizeof *o);
    o->format = LOOM_FMT_TEXT;
    o->text_split = LOOM_SPLIT_PARAGRAPH;
    o->header = -1;
    o->quote = 1;
    o->add_bos = -1;
    o->add_eos = -1;
}

int loom_dataset_format(const char *name) {
    for (size_t i = 0; i < N_FORMATS; i++)
        if (name && !strcmp(name, format_names[i])) return (int)i;
    return -1;
}

const char *loom_dataset_format_name(int format) {
    return format >= 0 && (size_t)format < N_FORMATS ? format_names[format] : "?";
}

char *ds_strndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) {
        loom_error(LOOM_ENOMEM, "out of memory (%zu bytes)", n + 1);
        return NULL;
    }
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static void record_free(ds_record *r) {
    free(r->prompt);
    free(r->response);
    free(r->label);
    free(r->key);
    free(r->raw);
}

int ds_records_push(ds_records *rs, ds_record rec) {
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? 2 * rs->cap : 256;
        ds_record *r = realloc(rs->r, cap * sizeof *r);
        if (!r) {
            record_free(&rec);
            return loom_error(LOOM_ENOMEM, "out of memory (%zu records)", cap);
        }
        rs->r = r;
        rs->cap = cap;
    }
    rs->r[rs->n++] = rec;
    return LOOM_OK;
}

void ds_records_free(ds_records *rs) {
    for (size_t i = 0; i < rs->n; i++) record_free(&rs->r[i]);
    free(rs->r);
    free(rs->header);
    memset(rs, 0, sizeof *rs);
}

static const char PROMPT_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s"
    "\n\n### Response:\n";
static const char PROMPT_NO_INPUT[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n%s\n\n### Response:\n";

char *ds_instruction_prompt(const char *instruction, const char *input, size_t *len) {
    int has_input = input && *input;
    size_t n = strlen(instruction) + (has_input ? strlen(input) : 0) + sizeof PROMPT_INPUT;
    char *p = malloc(n);
    if (!p) {
        loom_error(LOOM_ENOMEM, "out of memory (%zu bytes)", n);
        return NULL;
    }
    int k = has_input ? snprintf(p, n, PROMPT_INPUT, instruction, input) : snprintf(p, n, PROMPT_NO_INPUT, instruction);
    *len = (size_t)k;
    return p;
}

/* ---- growable pools ---- */

typedef struct {
    int32_t *ids;
    uint8_t *mask;
    size_t n, cap;
} tok_pool;

static int pool_reserve(tok_pool *p, size_t extra) {
    if (extra > SIZE_MAX / 2 - p->n) return loom_error(LOOM_ENOMEM, "dataset too large");
    if (p->n + extra <= p->cap) return LOOM_OK;
    size_t cap = p->cap ? p->cap : 4096;
    while (cap < p->n + extra) cap *= 2;
    int32_t *ids = realloc(p->ids, cap * sizeof *ids);
    if (!ids) return loom_error(LOOM_ENOMEM, "out of memory (%zu tokens)", cap);
    p->ids = ids;
    uint8_t *mask = realloc(p->mask, cap);
    if (!mask) return loom_error(LOOM_ENOMEM, "out of memory (%zu tokens)", cap);
    p->mask = mask;
    p->cap = cap;
    return LOOM_OK;
}

static int pool_push(tok_pool *p, const int32_t *ids, size_t n, uint8_t m) {
    if (n == 0) return LOOM_OK; /* the pool may still be unallocated: no memcpy to NULL */
    int rc = pool_reserve(p, n);
    if (rc) return rc;
    memcpy(p->ids + p->n, ids, n * sizeof *ids);
    memset(p->mask + p->n, m, n);
    p->n += n;
    return LOOM_OK;
}

static int pool_encode(tok_pool *p, const loom_tokenizer *tok, const char *text, size_t len, uint8_t m) {
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = loom_tokenizer_encode(tok, text, len, 0, &ids, &n);
    if (rc) return rc;
    rc = pool_push(p, ids, n, m);
    free(ids);
    return rc;
}

/* ---- label and key tables ---- */

static int is_integer(const char *s, long long *v) {
    if (!*s) return 0;
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (errno || *end) return 0;
    *v = x;
    return 1;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmp_num_str(const void *a, const void *b) {
    long long x = 0, y = 0;
    is_integer(*(char *const *)a, &x);
    is_integer(*(char *const *)b, &y);
    return x < y ? -1 : x > y;
}

/* Sorted distinct values among rs->r[i].<field>; *out holds borrowed pointers. */
static int distinct(const ds_records *rs, size_t field_off, int numeric_ok, char ***out, size_t *n_out) {
    char **v = malloc((rs->n ? rs->n : 1) * sizeof *v);
    if (!v) return loom_error(LOOM_ENOMEM, "out of memory");
    size_t n = 0;
    int numeric = numeric_ok;
    for (size_t i = 0; i < rs->n; i++) {
        char *s = *(char **)((char *)&rs->r[i] + field_off);
        if (!s) continue;
        long long x;
        if (numeric && !is_integer(s, &x)) numeric = 0;
        v[n++] = s;
    }
    qsort(v, n, sizeof *v, cmp_str);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (m == 0 || strcmp(v[m - 1], v[i])) v[m++] = v[i];
    /* Integers sort by value ("2" before "10"); "01" and "1" stay distinct values. */
    if (numeric) qsort(v, m, sizeof *v, cmp_num_str);
    *out = v;
    *n_out = m;
    return LOOM_OK;
}

typedef struct {
    const char *value;
    int32_t index;
} value_index;

static int cmp_vi(const void *a, const void *b) {
    return strcmp(((const value_index *)a)->value, ((const value_index *)b)->value);
}

static int32_t lookup(const value_index *t, size_t n, const char *s) {
    value_index key = {s, 0};
    const value_index *hit = bsearch(&key, t, n, sizeof *t, cmp_vi);
    return hit ? hit->index : -1;
}

static void free_strs(char **s, size_t n) {
    if (!s) return;
    for (size_t i = 0; i < n; i++) free(s[i]);
    free(s);
}

/* Builds ds->label_values/label_names from the records and opts->labels. */
static int build_labels(loom_dataset *ds, const ds_records *rs, const char *labels, const char *name) {
    char **vals = NULL;
    size_t nv = 0;
    int rc = distinct(rs, offsetof(ds_record, label), 1, &vals, &nv);
    if (rc) return rc;
    size_t n_items = 0;
    char **items = NULL;
    int explicit_map = 0;
    if (labels && *labels) {
        /* Split "a,b,c" / "v=a,w=b". */
        char *copy = loom_strdup(labels);
        if (!copy) {
            free(vals);
            return LOOM_ENOMEM;
        }
        n_items = 1;
        for (const char *p = copy; *p; p++) n_items += *p == ',';
        items = calloc(n_items, sizeof *items);
        if (!items) {
            free(copy);
            free(vals);
            return loom_error(LOOM_ENOMEM, "out of memory");
        }
        size_t k = 0;
        for (char *tok = copy, *next; tok; tok = next) {
            next = strchr(tok, ',');
            if (next) *next++ = 0;
            items[k++] = tok;
        }
        size_t with_eq = 0;
        for (size_t i = 0; i < n_items; i++) with_eq += strchr(items[i], '=') != NULL;
        if (with_eq && with_eq != n_items) {
            rc = loom_error(LOOM_EINVAL, "labels '%s': give either all names or all value=name pairs", labels);
        } else if (with_eq) {
            explicit_map = 1;
        } else if (n_items != nv) {
            rc = loom_error(LOOM_EINVAL, "%s: %zu label names given ('%s') but the data has %zu distinct labels", name,
                            n_items, labels, nv);
        }
        if (!rc) {
            ds->n_labels = explicit_map ? n_items : nv;
            ds->label_names = calloc(ds->n_labels, sizeof(char *));
            ds->label_values = calloc(ds->n_labels, sizeof(char *));
            if (!ds->label_names || !ds->label_values) rc = loom_error(LOOM_ENOMEM, "out of memory");
            for (size_t i = 0; !rc && i < ds->n_labels; i++) {
                if (explicit_map) {
                    char *eq = strchr(items[i], '=');
                    ds->label_values[i] = ds_strndup(items[i], (size_t)(eq - items[i]));
                    ds->label_names[i] = loom_strdup(eq + 1);
                } else {
                    ds->label_values[i] = loom_strdup(vals[i]);
                    ds->label_names[i] = loom_strdup(items[i]);
                }
                if (!ds->label_values[i] || !ds->label_names[i]) rc = loom_error(LOOM_ENOMEM, "out of memory");
            }
        }
        free(items);
        free(copy);
    } else {
        ds->n_labels = nv;
        ds->label_names = calloc(nv ? nv : 1, sizeof(char *));
        ds->label_values = calloc(nv ? nv : 1, sizeof(char *));
        if (!ds->label_names || !ds->label_values) rc = loom_error(LOOM_ENOMEM, "out of memory");
        for (size_t i = 0; !rc && i < nv; i++) {
            ds->label_values[i] = loom_strdup(vals[i]);
            ds->label_names[i] = loom_strdup(vals[i]);
            if (!ds->label_values[i] || !ds->label_names[i]) rc = loom_error(LOOM_ENOMEM, "out of memory");
        }
    }
    free(vals);
    if (rc) return rc;
    /* Duplicate values in an explicit map would make the mapping ambiguous. */
    for (size_t i = 0; i < ds->n_labels; i++)
        for (size_t j = i + 1; j < ds->n_labels; j++)
            if (!strcmp(ds->label_values[i], ds->label_values[j]))
                return loom_error(LOOM_EINVAL, "labels: value '%s' is listed twice", ds->label_values[i]);
    return LOOM_OK;
}

static void storage_free(ds_storage *st) {
    if (!st) return;
    free(st->ids);
    free(st->mask);
    free(st->raw);
    free(st->verb);
    free(st);
}

void loom_dataset_free(loom_dataset *ds) {
    if (!ds) return;
    free(ds->ex);
    free_strs(ds->label_names, ds->n_labels);
    free_strs(ds->label_values, ds->n_labels);
    free(ds->verb_ids);
    free(ds->verb_len);
    free_strs(ds->keys, ds->n_keys);
    free(ds->header);
    storage_free(ds->priv);
    free(ds);
}

static int32_t pad_of(const loom_tokenizer *tok) {
    int pad = loom_tokenizer_pad(tok), eos = loom_tokenizer_eos(tok);
    return pad >= 0 ? pad : eos >= 0 ? eos : 0;
}

/* Verbalizer tokens of every label, in one pool. */
static int build_verbalizers(loom_dataset *ds, ds_storage *st, const loom_tokenizer *tok) {
    size_t nl = ds->n_labels;
    ds->verb_ids = calloc(nl ? nl : 1, sizeof *ds->verb_ids);
    ds->verb_len = calloc(nl ? nl : 1, sizeof *ds->verb_len);
    if (!ds->verb_ids || !ds->verb_len) return loom_error(LOOM_ENOMEM, "out of memory");
    tok_pool vp = {0};
    size_t *off = calloc(nl + 1, sizeof *off);
    if (!off) return loom_error(LOOM_ENOMEM, "out of memory");
    int rc = LOOM_OK;
    for (size_t k = 0; k < nl && !rc; k++) {
        /* A leading space: the verbalizer follows "Label:" as a separate word. */
        size_t len = strlen(ds->label_names[k]) + 1;
        char *s = malloc(len + 1);
        if (!s) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            break;
        }
        s[0] = ' ';
        memcpy(s + 1, ds->label_names[k], len);
        off[k] = vp.n;
        rc = pool_encode(&vp, tok, s, len, 1);
        if (rc) loom_error_context(rc, "label '%s'", ds->label_names[k]);
        free(s);
        if (!rc && vp.n == off[k]) rc = loom_error(LOOM_EFORMAT, "label '%s' encodes to no tokens", ds->label_names[k]);
    }
    off[nl] = vp.n;
    if (!rc) {
        st->verb = vp.ids ? vp.ids : malloc(sizeof(int32_t));
        vp.ids = NULL;
        for (size_t k = 0; k < nl; k++) {
            ds->verb_ids[k] = st->verb + off[k];
            ds->verb_len[k] = off[k + 1] - off[k];
        }
    }
    free(vp.ids);
    free(vp.mask);
    free(off);
    return rc;
}

int ds_build(loom_dataset **out, ds_records *rs, const char *name, const loom_dataset_opts *o,
             const loom_tokenizer *tok, int format) {
    *out = NULL;
    int rc = LOOM_OK;
    loom_dataset *ds = calloc(1, sizeof *ds);
    ds_storage *st = calloc(1, sizeof *st);
    if (!ds || !st) {
        free(ds);
        free(st);
        ds_records_free(rs);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    ds->priv = st;
    ds->kind = rs->kind;
    ds->format = format;
    ds->pad_id = pad_of(tok);
    ds->vocab_size = loom_tokenizer_vocab_size(tok);
    ds->header = rs->header;
    rs->header = NULL;
    int bos = loom_tokenizer_bos(tok), eos = loom_tokenizer_eos(tok);
    int add_bos = o->add_bos < 0 ? (bos >= 0 && bos != eos) : (o->add_bos && bos >= 0);
    int add_eos = o->add_eos < 0 ? eos >= 0 : (o->add_eos && eos >= 0);

    value_index *lt = NULL, *kt = NULL;
    size_t *tok_off = NULL, *raw_off = NULL;
    tok_pool tp = {0};
    char *rawp = NULL;

    if (ds->kind == LOOM_DS_CLASSIFY) {
        rc = build_labels(ds, rs, o->labels, name);
        if (!rc) rc = build_verbalizers(ds, st, tok);
        if (rc) goto done;
        lt = malloc((ds->n_labels ? ds->n_labels : 1) * sizeof *lt);
        if (!lt) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t k = 0; k < ds->n_labels; k++) lt[k] = (value_index){ds->label_values[k], (int32_t)k};
        qsort(lt, ds->n_labels, sizeof *lt, cmp_vi);
    }
    {
        char **keys = NULL;
        size_t nk = 0;
        rc = distinct(rs, offsetof(ds_record, key), 0, &keys, &nk);
        if (rc) goto done;
        ds->keys = calloc(nk ? nk : 1, sizeof *ds->keys);
        kt = malloc((nk ? nk : 1) * sizeof *kt);
        if (!ds->keys || !kt) {
            free(keys);
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto done;
        }
        ds->n_keys = nk;
        for (size_t k = 0; k < nk && !rc; k++) {
            ds->keys[k] = loom_strdup(keys[k]);
            if (!ds->keys[k]) rc = LOOM_ENOMEM;
            kt[k] = (value_index){ds->keys[k], (int32_t)k};
        }
        free(keys);
        if (rc) goto done;
    }

    ds->n = rs->n;
    ds->ex = calloc(rs->n ? rs->n : 1, sizeof *ds->ex);
    tok_off = malloc((rs->n + 1) * sizeof *tok_off);
    raw_off = malloc((rs->n + 1) * sizeof *raw_off);
    if (!ds->ex || !tok_off || !raw_off) {
        rc = loom_error(LOOM_ENOMEM, "out of memory (%zu examples)", rs->n);
        goto done;
    }
    size_t raw_total = 0;
    for (size_t i = 0; i < rs->n; i++) raw_total += rs->r[i].raw_len + 1;
    rawp = malloc(raw_total ? raw_total : 1);
    if (!rawp) {
        rc = loom_error(LOOM_ENOMEM, "out of memory (%zu bytes)", raw_total);
        goto done;
    }
    size_t rpos = 0;
    for (size_t i = 0; i < rs->n; i++) {
        ds_record *r = &rs->r[i];
        loom_example *e = &ds->ex[i];
        e->line = r->line;
        e->label = -1;
        e->key = r->key ? lookup(kt, ds->n_keys, r->key) : -1;
        tok_off[i] = tp.n;
        raw_off[i] = rpos;
        memcpy(rawp + rpos, r->raw, r->raw_len);
        rawp[rpos + r->raw_len] = 0;
        rpos += r->raw_len + 1;
        e->raw_len = r->raw_len;
        if (add_bos) {
            int32_t b = bos;
            if ((rc = pool_push(&tp, &b, 1, 0))) goto done;
        }
        if (ds->kind == LOOM_DS_CLASSIFY) {
            if (!r->label) {
                rc = loom_error(LOOM_EFORMAT, "%s:%u: missing label", name, r->line);
                goto done;
            }
            e->label = lookup(lt, ds->n_labels, r->label);
            if (e->label < 0) {
                rc = loom_error(LOOM_EFORMAT, "%s:%u: label '%s' is not among the given labels", name, r->line, r->label);
                goto done;
            }
            size_t plen = r->prompt_len + 16;
            char *p = malloc(plen);
            if (!p) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                goto done;
            }
            int k = snprintf(p, plen, "Text: %s\nLabel:", r->prompt);
            rc = pool_encode(&tp, tok, p, (size_t)k, 0);
            free(p);
            if (rc) goto tok_err;
            e->prompt_len = (uint32_t)(tp.n - tok_off[i]);
            rc = pool_push(&tp, ds->verb_ids[e->label], ds->verb_len[e->label], 1);
            if (rc) goto done;
        } else if (ds->kind == LOOM_DS_INSTRUCT) {
            if ((rc = pool_encode(&tp, tok, r->prompt, r->prompt_len, 0))) goto tok_err;
            e->prompt_len = (uint32_t)(tp.n - tok_off[i]);
            if ((rc = pool_encode(&tp, tok, r->response, r->response_len, 1))) goto tok_err;
            if (add_eos) {
                int32_t x = eos;
                if ((rc = pool_push(&tp, &x, 1, 1))) goto done;
            }
        } else {
            if ((rc = pool_encode(&tp, tok, r->prompt, r->prompt_len, 1))) goto tok_err;
            if (add_eos) {
                int32_t x = eos;
                if ((rc = pool_push(&tp, &x, 1, 1))) goto done;
            }
        }
        if (tp.n - tok_off[i] > UINT32_MAX) {
            rc = loom_error(LOOM_ERANGE, "%s:%u: record has more than 2^32 tokens", name, r->line);
            goto done;
        }
        e->n = (uint32_t)(tp.n - tok_off[i]);
        continue;
    tok_err:
        loom_error_context(rc, "%s:%u", name, r->line);
        goto done;
    }
    tok_off[rs->n] = tp.n;
    if (!tp.ids && (rc = pool_reserve(&tp, 1))) goto done;
    st->ids = tp.ids;
    st->mask = tp.mask;
    st->raw = rawp;
    tp.ids = NULL;
    tp.mask = NULL;
    rawp = NULL;
    ds->n_tokens = tok_off[rs->n];
    for (size_t i = 0; i < rs->n; i++) {
        ds->ex[i].ids = st->ids + tok_off[i];
        ds->ex[i].mask = st->mask + tok_off[i];
        ds->ex[i].raw = st->raw + raw_off[i];
    }
done:
    free(lt);
    free(kt);
    free(tok_off);
    free(raw_off);
    free(tp.ids);
    free(tp.mask);
    free(rawp);
    ds_records_free(rs);
    if (rc) {
        loom_dataset_free(ds);
        return rc;
    }
    *out = ds;
    return LOOM_OK;
}

static int check_opts(const loom_dataset_opts *o) {
    if (!o) return loom_error(LOOM_EINVAL, "dataset options missing");
    if (o->format < 0 || (size_t)o->format >= N_FORMATS) return loom_error(LOOM_EINVAL, "unknown dataset format %d", o->format);
    return LOOM_OK;
}

int loom_dataset_load_buffer(loom_dataset **out, const char *data, size_t len, const char *name,
                             const loom_dataset_opts *o, const loom_tokenizer *tok) {
    *out = NULL;
    int rc = check_opts(o);
    if (rc) return rc;
    if (!tok) return loom_error(LOOM_EINVAL, "dataset: no tokenizer");
    if (!name) name = "<buffer>";
    /* The parsers are bounded by len; data need not be NUL-terminated. */
    ds_records rs = {0};
    switch (o->format) {
    case LOOM_FMT_TEXT: rc = ds_parse_text(&rs, data, len, name, o); break;
    case LOOM_FMT_CSV:
    case LOOM_FMT_TSV: rc = ds_parse_csv(&rs, data, len, name, o); break;
    case LOOM_FMT_BROWN: rc = loom_error(LOOM_EINVAL, "%s: the brown format reads a directory, not a buffer", name); break;
    default: rc = ds_parse_jsonl(&rs, data, len, name, o); break;
    }
    if (rc) {
        ds_records_free(&rs);
        return rc;
    }
    return ds_build(out, &rs, name, o, tok, o->format);
}

int loom_dataset_load(loom_dataset **out, const char *path, const loom_dataset_opts *o, const loom_tokenizer *tok) {
    *out = NULL;
    int rc = check_opts(o);
    if (rc) return rc;
    if (!tok) return loom_error(LOOM_EINVAL, "dataset: no tokenizer");
    if (o->format == LOOM_FMT_BROWN) {
        ds_records rs = {0};
        rc = ds_parse_brown(&rs, path, o);
        if (rc) {
            ds_records_free(&rs);
            return rc;
        }
        return ds_build(out, &rs, path, o, tok, o->format);
    }
    char *data;
    size_t len;
    rc = loom_read_file(path, &data, &len);
    if (rc) return rc;
    rc = loom_dataset_load_buffer(out, data, len, path, o, tok);
    free(data);
    return rc;
}

int loom_dataset_from_texts(loom_dataset **out, const char *const *texts, const size_t *lens,
                            const char *const *keys, size_t n, const loom_dataset_opts *o,
                            const loom_tokenizer *tok) {
    *out = NULL;
    if (!tok) return loom_error(LOOM_EINVAL, "dataset: no tokenizer");
    loom_dataset_opts d;
    loom_dataset_opts_init(&d);
    if (o) {
        d = *o;
    } else {
        d.add_bos = 0;
        d.add_eos = 0;
    }
    ds_records rs = {0};
    rs.kind = LOOM_DS_LM;
    for (size_t i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : strlen(texts[i]);
        ds_record r = {0};
        r.prompt = ds_strndup(texts[i], len);
        r.raw = ds_strndup(texts[i], len);
        r.key = keys && keys[i] ? loom_strdup(keys[i]) : NULL;
        r.prompt_len = r.raw_len = len;
        r.line = (uint32_t)(i + 1);
        int rc = (!r.prompt || !r.raw || (keys && keys[i] && !r.key)) ? LOOM_ENOMEM : LOOM_OK;
        if (rc) {
            record_free(&r);
        } else {
            rc = ds_records_push(&rs, r);
        }
        if (rc) {
            ds_records_free(&rs);
            return loom_error(LOOM_ENOMEM, "out of memory");
        }
    }
    return ds_build(out, &rs, "texts", &d, tok, LOOM_FMT_TEXT);
}

static char **dup_strs(char *const *s, size_t n) {
    char **d = calloc(n ? n : 1, sizeof *d);
    if (!d) return NULL;
    for (size_t i = 0; i < n; i++) {
        d[i] = loom_strdup(s[i]);
        if (!d[i]) {
            free_strs(d, i);
            return NULL;
        }
    }
    return d;
}

int loom_dataset_subset(loom_dataset **out, const loom_dataset *src, const uint32_t *idx, size_t n) {
    *out = NULL;
    for (size_t i = 0; i < n; i++)
        if (idx[i] >= src->n) return loom_error(LOOM_ERANGE, "subset: index %u out of range (%zu examples)", idx[i], src->n);
    loom_dataset *ds = calloc(1, sizeof *ds);
    ds_storage *st = calloc(1, sizeof *st);
    if (!ds || !st) {
        free(ds);
        free(st);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    ds->priv = st;
    ds->kind = src->kind;
    ds->format = src->format;
    ds->pad_id = src->pad_id;
    ds->vocab_size = src->vocab_size;
    ds->n = n;
    size_t ntok = 0, nraw = 0, nverb = 0;
    for (size_t i = 0; i < n; i++) {
        ntok += src->ex[idx[i]].n;
        nraw += src->ex[idx[i]].raw_len + 1;
    }
    for (size_t k = 0; k < src->n_labels; k++) nverb += src->verb_len[k];
    ds->ex = calloc(n ? n : 1, sizeof *ds->ex);
    st->ids = malloc((ntok ? ntok : 1) * sizeof *st->ids);
    st->mask = malloc(ntok ? ntok : 1);
    st->raw = malloc(nraw ? nraw : 1);
    st->verb = malloc((nverb ? nverb : 1) * sizeof *st->verb);
    ds->n_labels = src->n_labels;
    ds->n_keys = src->n_keys;
    ds->label_names = dup_strs(src->label_names, src->n_labels);
    ds->label_values = dup_strs(src->label_values, src->n_labels);
    ds->verb_ids = calloc(src->n_labels ? src->n_labels : 1, sizeof *ds->verb_ids);
    ds->verb_len = calloc(src->n_labels ? src->n_labels : 1, sizeof *ds->verb_len);
    ds->keys = dup_strs(src->keys, src->n_keys);
    ds->header = src->header ? loom_strdup(src->header) : NULL;
    if (!ds->ex || !st->ids || !st->mask || !st->raw || !st->verb || !ds->label_names || !ds->label_values ||
        !ds->verb_ids || !ds->verb_len || !ds->keys || (src->header && !ds->header)) {
        /* dup_strs freed what it made on failure; the counts must not point past a NULL table. */
        if (!ds->label_names || !ds->label_values) ds->n_labels = 0;
        if (!ds->keys) ds->n_keys = 0;
        loom_dataset_free(ds);
        return loom_error(LOOM_ENOMEM, "out of memory (subset of %zu examples)", n);
    }
    size_t v = 0;
    for (size_t k = 0; k < src->n_labels; k++) {
        memcpy(st->verb + v, src->verb_ids[k], src->verb_len[k] * sizeof *st->verb);
        ds->verb_ids[k] = st->verb + v;
        ds->verb_len[k] = src->verb_len[k];
        v += src->verb_len[k];
    }
    size_t t = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        const loom_example *e = &src->ex[idx[i]];
        loom_example *d = &ds->ex[i];
        *d = *e;
        d->ids = st->ids + t;
        d->mask = st->mask + t;
        d->raw = st->raw + r;
        memcpy(d->ids, e->ids, e->n * sizeof *d->ids);
        memcpy(d->mask, e->mask, e->n);
        memcpy(st->raw + r, e->raw, e->raw_len);
        st->raw[r + e->raw_len] = 0;
        t += e->n;
        r += e->raw_len + 1;
    }
    ds->n_tokens = ntok;
    *out = ds;
    return LOOM_OK;
}

int loom_dataset_append_ids(loom_dataset **out, const loom_dataset *src, const int32_t *ids, size_t n, size_t len,
                            size_t prompt_len) {
    *out = NULL;
    if (src->kind != LOOM_DS_LM)
        return loom_error(LOOM_EINVAL, "token sequences can only be appended to a language-modelling dataset");
    if (len == 0 || len > UINT32_MAX || prompt_len > len)
        return loom_error(LOOM_EINVAL, "appended sequences of %zu tokens with %zu prompt tokens", len, prompt_len);
    if (n > ((size_t)1 << 31) / len) return loom_error(LOOM_ERANGE, "%zu appended sequences of %zu tokens: too many", n, len);
    for (size_t i = 0; i < n * len; i++)
        if (ids[i] < 0 || (src->vocab_size > 0 && ids[i] >= src->vocab_size))
            return loom_error(LOOM_ERANGE, "appended token %zu (%d) is outside the vocabulary", i, (int)ids[i]);
    uint32_t *idx = malloc((src->n ? src->n : 1) * sizeof *idx);
    if (!idx) return loom_error(LOOM_ENOMEM, "out of memory");
    for (size_t i = 0; i < src->n; i++) idx[i] = (uint32_t)i;
    loom_dataset *ds = NULL;
    int rc = loom_dataset_subset(&ds, src, idx, src->n);
    free(idx);
    if (rc != LOOM_OK) return rc;
    ds_storage *st = ds->priv;
    const size_t old = ds->n_tokens, add = n * len, n0 = ds->n;
    int32_t *ni = realloc(st->ids, (old + add + 1) * sizeof *ni);
    if (ni) st->ids = ni;
    uint8_t *nm = ni ? realloc(st->mask, old + add + 1) : NULL;
    if (nm) st->mask = nm;
    loom_example *ne = nm ? realloc(ds->ex, (n0 + n + 1) * sizeof *ne) : NULL;
    if (ne) ds->ex = ne;
    if (!ne) { /* the pools are whole; the examples are not looked at again */
        loom_dataset_free(ds);
        return loom_error(LOOM_ENOMEM, "out of memory for %zu appended sequences", n);
    }
    size_t t = 0;
    for (size_t i = 0; i < n0; i++) { /* the copies were packed in order: re-point them into the new pools */
        ds->ex[i].ids = st->ids + t;
        ds->ex[i].mask = st->mask + t;
        t += ds->ex[i].n;
    }
    for (size_t k = 0; k < n; k++) {
        loom_example *e = &ds->ex[n0 + k];
        memset(e, 0, sizeof *e);
        e->ids = st->ids + old + k * len;
        e->mask = st->mask + old + k * len;
        memcpy(e->ids, ids + k * len, len * sizeof *e->ids);
        memset(e->mask, 0, prompt_len);
        memset(e->mask + prompt_len, 1, len - prompt_len);
        e->n = (uint32_t)len;
        e->label = -1;
        e->key = -1;
        e->raw = "";
    }
    ds->n = n0 + n;
    ds->n_tokens = old + add;
    *out = ds;
    return LOOM_OK;
}

int loom_dataset_candidate(const loom_dataset *ds, size_t i, size_t k, int32_t *out, size_t cap, size_t *n,
                           size_t *prompt_len) {
    if (ds->kind != LOOM_DS_CLASSIFY) return loom_error(LOOM_ESTATE, "candidate: not a classification dataset");
    if (i >= ds->n || k >= ds->n_labels)
        return loom_error(LOOM_ERANGE, "candidate: example %zu / label %zu out of range (%zu, %zu)", i, k, ds->n,
                          ds->n_labels);
    const loom_example *e = &ds->ex[i];
    size_t need = e->prompt_len + ds->verb_len[k];
    if (need > cap) return loom_error(LOOM_ERANGE, "candidate: needs %zu tokens, room for %zu", need, cap);
    memcpy(out, e->ids, e->prompt_len * sizeof *out);
    memcpy(out + e->prompt_len, ds->verb_ids[k], ds->verb_len[k] * sizeof *out);
    *n = need;
    if (prompt_len) *prompt_len = e->prompt_len;
    return LOOM_OK;
}
