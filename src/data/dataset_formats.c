/* Dataset parsers: plain text, JSONL (plain, classification, Alpaca, Dolly, self-instruct),
 * CSV/TSV with RFC-4180 quoting, and the POS-tagged Brown corpus. Each turns its input into
 * ds_record strings; dataset.c does the rest. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "data/dataset_impl.h"
#include "loom/core.h"

/* ---- small string builder (loom_strbuf) ---- */

typedef loom_strbuf sbuf;
#define sb_add loom_strbuf_add

static int sb_addc(sbuf *b, char c) { return sb_add(b, &c, 1); }

/* A record with prompt = raw = s[0..n). */
static int push_doc(ds_records *rs, const char *s, size_t n, uint32_t line, const char *key) {
    ds_record r = {0};
    r.prompt = ds_strndup(s, n);
    r.raw = ds_strndup(s, n);
    r.key = key ? loom_strdup(key) : NULL;
    r.prompt_len = r.raw_len = n;
    r.line = line;
    if (!r.prompt || !r.raw || (key && !r.key)) {
        free(r.prompt);
        free(r.raw);
        free(r.key);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    return ds_records_push(rs, r);
}

static int full(const ds_records *rs, const loom_dataset_opts *o) { return o->max_examples && rs->n >= o->max_examples; }

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

/* ---- plain text ---- */

int ds_parse_text(ds_records *rs, const char *data, size_t len, const char *name, const loom_dataset_opts *o) {
    rs->kind = LOOM_DS_LM;
    if (o->text_split == LOOM_SPLIT_FILE) {
        if (len && !is_blank(data, len)) return push_doc(rs, data, len, 1, NULL);
        return LOOM_OK;
    }
    if (o->text_split != LOOM_SPLIT_LINE && o->text_split != LOOM_SPLIT_PARAGRAPH)
        return loom_error(LOOM_EINVAL, "%s: unknown text split %d", name, o->text_split);
    size_t pos = 0, doc_start = 0, doc_end = 0;
    uint32_t line = 1, doc_line = 0;
    int in_doc = 0;
    while (pos < len && !full(rs, o)) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t content_end = end;
        if (content_end > pos && data[content_end - 1] == '\r') content_end--;
        int blank = is_blank(data + pos, content_end - pos);
        int rc = LOOM_OK;
        if (o->text_split == LOOM_SPLIT_LINE) {
            if (content_end > pos) rc = push_doc(rs, data + pos, content_end - pos, line, NULL);
        } else if (blank) {
            if (in_doc) rc = push_doc(rs, data + doc_start, doc_end - doc_start, doc_line, NULL);
            in_doc = 0;
        } else {
            if (!in_doc) {
                doc_start = pos;
                doc_line = line;
                in_doc = 1;
            }
            doc_end = content_end;
        }
        if (rc) return rc;
        pos = end + 1;
        line++;
    }
    if (in_doc && !full(rs, o)) return push_doc(rs, data + doc_start, doc_end - doc_start, doc_line, NULL);
    return LOOM_OK;
}

/* ---- JSONL ---- */

/* The value of a scalar field as text: strings as they are, integers in decimal, booleans as
 * true/false. Returns 1 found (in *out, malloc'ed), 0 absent or null, negative on error. */
static int json_field(json_t *obj, const char *field, char **out, const char *name, uint32_t line) {
    *out = NULL;
    json_t *v = json_object_get(obj, field);
    if (!v || json_is_null(v)) return 0;
    char tmp[64];
    const char *s = tmp;
    size_t n;
    if (json_is_string(v)) {
        s = json_string_value(v);
        n = json_string_length(v);
    } else if (json_is_integer(v)) {
        n = (size_t)snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(v));
    } else if (json_is_boolean(v)) {
        n = (size_t)snprintf(tmp, sizeof tmp, "%s", json_is_true(v) ? "true" : "false");
    } else {
        return loom_error(LOOM_EFORMAT, "%s:%u: field \"%s\" is not a string", name, line, field);
    }
    *out = ds_strndup(s, n);
    return *out ? 1 : LOOM_ENOMEM;
}

static int json_required(json_t *obj, const char *field, char **out, const char *name, uint32_t line) {
    int rc = json_field(obj, field, out, name, line);
    if (rc == 0) return loom_error(LOOM_EFORMAT, "%s:%u: missing field \"%s\"", name, line, field);
    return rc < 0 ? rc : LOOM_OK;
}

/* Key: an explicitly named field must exist; a format's default key field may be absent. */
static int json_key(json_t *obj, const char *explicit_field, const char *default_field, char **out,
                    const char *name, uint32_t line) {
    *out = NULL;
    if (explicit_field) return json_required(obj, explicit_field, out, name, line);
    if (default_field) {
        int rc = json_field(obj, default_field, out, name, line);
        return rc < 0 ? rc : LOOM_OK;
    }
    return LOOM_OK;
}

static int push_instruction(ds_records *rs, const char *instruction, const char *input, const char *output,
                            char *key, const char *raw, size_t raw_len, uint32_t line) {
    ds_record r = {0};
    r.key = key;
    r.line = line;
    r.prompt = ds_instruction_prompt(instruction, input, &r.prompt_len);
    r.response = loom_strdup(output);
    r.response_len = output ? strlen(output) : 0;
    r.raw = ds_strndup(raw, raw_len);
    r.raw_len = raw_len;
    if (!r.prompt || !r.response || !r.raw) {
        free(r.prompt);
        free(r.response);
        free(r.raw);
        free(r.key);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    return ds_records_push(rs, r);
}

static int jsonl_record(ds_records *rs, json_t *obj, const char *line_s, size_t line_len, const char *name,
                        uint32_t line, const loom_dataset_opts *o) {
    char *a = NULL, *b = NULL, *c = NULL, *key = NULL;
    int rc = LOOM_OK;
    switch (o->format) {
    case LOOM_FMT_JSONL:
    case LOOM_FMT_JSONL_CLS: {
        const char *tf = o->text_col ? o->text_col : "text";
        const char *lf = o->label_col ? o->label_col : o->format == LOOM_FMT_JSONL_CLS ? "label" : NULL;
        if ((rc = json_required(obj, tf, &a, name, line))) break;
        if (lf && (rc = json_required(obj, lf, &b, name, line))) break;
        if ((rc = json_key(obj, o->key_col, NULL, &key, name, line))) break;
        ds_record r = {0};
        r.prompt = a;
        r.prompt_len = strlen(a);
        r.label = b;
        r.key = key;
        r.line = line;
        r.raw = ds_strndup(line_s, line_len);
        r.raw_len = line_len;
        a = b = key = NULL;
        if (!r.raw) {
            free(r.prompt);
            free(r.label);
            free(r.key);
            rc = LOOM_ENOMEM;
            break;
        }
        rc = ds_records_push(rs, r);
        break;
    }
    case LOOM_FMT_ALPACA:
    case LOOM_FMT_DOLLY: {
        int dolly = o->format == LOOM_FMT_DOLLY;
        if ((rc = json_required(obj, "instruction", &a, name, line))) break;
        if ((rc = json_field(obj, dolly ? "context" : "input", &b, name, line)) < 0) break;
        if ((rc = json_required(obj, dolly ? "response" : "output", &c, name, line))) break;
        if ((rc = json_key(obj, o->key_col, dolly ? "category" : NULL, &key, name, line))) break;
        rc = push_instruction(rs, a, b ? b : "", c, key, line_s, line_len, line);
        key = NULL;
        break;
    }
    case LOOM_FMT_SELF_INSTRUCT: {
        if ((rc = json_required(obj, "instruction", &a, name, line))) break;
        json_t *inst = json_object_get(obj, "instances");
        if (!inst) {
            rc = loom_error(LOOM_EFORMAT, "%s:%u: missing field \"instances\"", name, line);
            break;
        }
        if (!json_is_array(inst) || json_array_size(inst) == 0) {
            rc = loom_error(LOOM_EFORMAT, "%s:%u: field \"instances\" is not a non-empty array", name, line);
            break;
        }
        for (size_t k = 0; k < json_array_size(inst) && !rc && !full(rs, o); k++) {
            json_t *it = json_array_get(inst, k);
            if (!json_is_object(it)) {
                rc = loom_error(LOOM_EFORMAT, "%s:%u: instances[%zu] is not an object", name, line, k);
                break;
            }
            char *in = NULL, *out = NULL, *kk = NULL;
            if ((rc = json_field(it, "input", &in, name, line)) < 0) break;
            rc = json_required(it, "output", &out, name, line);
            if (!rc) rc = json_key(obj, o->key_col, "motivation_app", &kk, name, line);
            if (!rc) rc = push_instruction(rs, a, in ? in : "", out, kk, line_s, line_len, line);
            else free(kk);
            free(in);
            free(out);
            if (rc) loom_error_context(rc, "instances[%zu]", k);
        }
        break;
    }
    default: rc = loom_error(LOOM_EINVAL, "%s: format %d is not JSONL", name, o->format);
    }
    free(a);
    free(b);
    free(c);
    free(key);
    return rc < 0 ? rc : LOOM_OK;
}

int ds_parse_jsonl(ds_records *rs, const char *data, size_t len, const char *name, const loom_dataset_opts *o) {
    switch (o->format) {
    case LOOM_FMT_JSONL: rs->kind = o->label_col ? LOOM_DS_CLASSIFY : LOOM_DS_LM; break;
    case LOOM_FMT_JSONL_CLS: rs->kind = LOOM_DS_CLASSIFY; break;
    default: rs->kind = LOOM_DS_INSTRUCT; break;
    }
    size_t pos = 0;
    uint32_t line = 1;
    while (pos < len && !full(rs, o)) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t content_end = end;
        if (content_end > pos && data[content_end - 1] == '\r') content_end--;
        if (!is_blank(data + pos, content_end - pos)) {
            json_error_t err;
            json_t *obj = json_loadb(data + pos, content_end - pos, 0, &err);
            if (!obj) return loom_error(LOOM_EFORMAT, "%s:%u: invalid JSON: %s (column %d)", name, line, err.text, err.column);
            int rc = json_is_object(obj)
                         ? jsonl_record(rs, obj, data + pos, content_end - pos, name, line, o)
                         : loom_error(LOOM_EFORMAT, "%s:%u: expected a JSON object", name, line);
            json_decref(obj);
            if (rc) return rc;
        }
        pos = end + 1;
        line++;
    }
    return LOOM_OK;
}

/* ---- CSV / TSV (RFC 4180) ---- */

typedef struct {
    sbuf text;     /* unescaped fields, each NUL-terminated */
    size_t *off;   /* (nf) field starts in text.s */
    size_t nf, capf;
} csv_row;

static int row_field_start(csv_row *r) {
    if (r->nf == r->capf) {
        size_t cap = r->capf ? 2 * r->capf : 16;
        size_t *p = realloc(r->off, cap * sizeof *p);
        if (!p) return loom_error(LOOM_ENOMEM, "out of memory");
        r->off = p;
        r->capf = cap;
    }
    r->off[r->nf++] = r->text.n;
    return LOOM_OK;
}

/* Reads one record starting at *pos. Returns 1 with the record in row, 0 at end of input, or a
 * negative status. *line advances over every newline consumed, including those inside quotes;
 * *rec_line = the line the record starts on; [*raw0, *raw1) = its bytes without the line end. */
static int csv_read(const char *d, size_t len, size_t *pos, uint32_t *line, char delim, int quote, csv_row *row,
                    const char *name, uint32_t *rec_line, size_t *raw0, size_t *raw1) {
    size_t p = *pos;
    /* Empty lines separate nothing in CSV; skip them. */
    for (;;) {
        if (p >= len) return 0;
        if (d[p] == '\n') {
            p++;
            (*line)++;
        } else if (d[p] == '\r' && p + 1 < len && d[p + 1] == '\n') {
            p += 2;
            (*line)++;
        } else {
            break;
        }
    }
    row->nf = 0;
    row->text.n = 0;
    *rec_line = *line;
    *raw0 = p;
    int rc;
    for (;;) {
        if ((rc = row_field_start(row))) return rc;
        int end_record = 0;
        if (quote && p < len && d[p] == '"') {
            uint32_t qline = *line;
            p++;
            for (;;) {
                if (p >= len)
                    return loom_error(LOOM_EFORMAT, "%s:%u: unterminated quoted field (field %zu)", name, qline, row->nf);
                char c = d[p];
                if (c == '"') {
                    if (p + 1 < len && d[p + 1] == '"') {
                        if ((rc = sb_addc(&row->text, '"'))) return rc;
                        p += 2;
                        continue;
                    }
                    p++;
                    break;
                }
                if (c == '\n') (*line)++;
                if ((rc = sb_addc(&row->text, c))) return rc;
                p++;
            }
            if (p >= len) {
                *raw1 = p;
                end_record = 1;
            } else if (d[p] == delim) {
                p++;
            } else if (d[p] == '\n' || (d[p] == '\r' && p + 1 < len && d[p + 1] == '\n')) {
                *raw1 = p;
                p += d[p] == '\r' ? 2 : 1;
                (*line)++;
                end_record = 1;
            } else {
                return loom_error(LOOM_EFORMAT, "%s:%u: unexpected character '%c' after the closing quote of field %zu",
                                  name, *line, d[p], row->nf);
            }
        } else {
            size_t s = p;
            while (p < len && d[p] != delim && d[p] != '\n') p++;
            size_t e = p;
            if (e > s && d[e - 1] == '\r' && (p >= len || d[p] == '\n')) e--;
            if ((rc = sb_add(&row->text, d + s, e - s))) return rc;
            if (p >= len) {
                *raw1 = e;
                end_record = 1;
            } else if (d[p] == delim) {
                p++;
            } else {
                *raw1 = e;
                p++;
                (*line)++;
                end_record = 1;
            }
        }
        if ((rc = sb_addc(&row->text, 0))) return rc;
        if (end_record) break;
    }
    *pos = p;
    return 1;
}

/* A column spec "name", "3" (1-based) or a comma list of them. */
typedef struct {
    size_t n;
    size_t col[16];
} colspec;

static int spec_has_name(const char *spec) {
    if (!spec) return 0;
    const char *p = spec;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        for (size_t i = 0; i < n; i++)
            if (p[i] < '0' || p[i] > '9') return 1;
        if (!n) return 1;
        p += n + (e != NULL);
    }
    return 0;
}

static int resolve_spec(colspec *cs, const char *spec, const csv_row *hdr, size_t nf, const char *name, const char *what) {
    cs->n = 0;
    const char *p = spec;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (cs->n == sizeof cs->col / sizeof cs->col[0])
            return loom_error(LOOM_EINVAL, "%s: too many %s columns in '%s'", name, what, spec);
        int numeric = n > 0;
        for (size_t i = 0; i < n; i++) numeric &= p[i] >= '0' && p[i] <= '9';
        if (numeric) {
            size_t k = (size_t)strtoul(p, NULL, 10);
            if (k < 1 || k > nf)
                return loom_error(LOOM_EINVAL, "%s: %s column %zu out of range (columns are numbered 1..%zu)", name, what, k, nf);
            cs->col[cs->n++] = k - 1;
        } else {
            size_t k = 0;
            for (; hdr && k < hdr->nf; k++)
                if (strlen(hdr->text.s + hdr->off[k]) == n && !memcmp(hdr->text.s + hdr->off[k], p, n)) break;
            if (!hdr || k == hdr->nf) {
                char cols[512] = "";
                size_t w = 0;
                for (size_t j = 0; hdr && j < hdr->nf && w < sizeof cols - 1; j++)
                    w += (size_t)snprintf(cols + w, sizeof cols - w, "%s'%s'", j ? ", " : "", hdr->text.s + hdr->off[j]);
                return loom_error(LOOM_EINVAL, "%s: no %s column named '%.*s' (header: %s)", name, what, (int)n, p,
                                  hdr ? cols : "none");
            }
            cs->col[cs->n++] = k;
        }
        p += n + (e != NULL);
    }
    if (!cs->n) return loom_error(LOOM_EINVAL, "%s: empty %s column", name, what);
    return LOOM_OK;
}

int ds_parse_csv(ds_records *rs, const char *data, size_t len, const char *name, const loom_dataset_opts *o) {
    char delim = o->format == LOOM_FMT_TSV ? '\t' : ',';
    const char *tspec = o->text_col ? o->text_col : "text";
    const char *lspec = o->label_col, *kspec = o->key_col;
    rs->kind = lspec ? LOOM_DS_CLASSIFY : LOOM_DS_LM;
    int header = o->header >= 0 ? o->header : (spec_has_name(tspec) || spec_has_name(lspec) || spec_has_name(kspec));
    csv_row hdr = {0}, row = {0};
    colspec tc, lc, kc;
    sbuf text = {0};
    size_t pos = 0, nf = 0;
    uint32_t line = 1, rec_line;
    size_t r0, r1;
    int rc = LOOM_OK, have_cols = 0;
    if (header) {
        rc = csv_read(data, len, &pos, &line, delim, o->quote, &hdr, name, &rec_line, &r0, &r1);
        if (rc == 0) rc = loom_error(LOOM_EFORMAT, "%s: empty file, expected a header row", name);
        if (rc < 0) goto done;
        nf = hdr.nf;
        rs->header = ds_strndup(data + r0, r1 - r0);
        if (!rs->header) {
            rc = LOOM_ENOMEM;
            goto done;
        }
    }
    while (!full(rs, o)) {
        rc = csv_read(data, len, &pos, &line, delim, o->quote, &row, name, &rec_line, &r0, &r1);
        if (rc <= 0) break;
        if (!have_cols) {
            if (!header) nf = row.nf;
            if ((rc = resolve_spec(&tc, tspec, header ? &hdr : NULL, nf, name, "text"))) goto done;
            if (lspec && (rc = resolve_spec(&lc, lspec, header ? &hdr : NULL, nf, name, "label"))) goto done;
            if (kspec && (rc = resolve_spec(&kc, kspec, header ? &hdr : NULL, nf, name, "key"))) goto done;
            have_cols = 1;
        }
        if (row.nf != nf) {
            rc = loom_error(LOOM_EFORMAT, "%s:%u: row has %zu fields, expected %zu%s", name, rec_line, row.nf, nf,
                            header ? " (as in the header)" : " (as in the first row)");
            goto done;
        }
        text.n = 0;
        for (size_t k = 0; k < tc.n; k++) {
            const char *f = row.text.s + row.off[tc.col[k]];
            if ((k && (rc = sb_addc(&text, '\n'))) || (rc = sb_add(&text, f, strlen(f)))) goto done;
        }
        ds_record r = {0};
        r.prompt = ds_strndup(text.s ? text.s : "", text.n);
        r.prompt_len = text.n;
        r.raw = ds_strndup(data + r0, r1 - r0);
        r.raw_len = r1 - r0;
        r.line = rec_line;
        r.label = lspec ? loom_strdup(row.text.s + row.off[lc.col[0]]) : NULL;
        r.key = kspec ? loom_strdup(row.text.s + row.off[kc.col[0]]) : NULL;
        if (!r.prompt || !r.raw || (lspec && !r.label) || (kspec && !r.key)) {
            free(r.prompt);
            free(r.raw);
            free(r.label);
            free(r.key);
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto done;
        }
        if ((rc = ds_records_push(rs, r))) goto done;
    }
done:
    free(hdr.text.s);
    free(hdr.off);
    free(row.text.s);
    free(row.off);
    free(text.s);
    return rc < 0 ? rc : LOOM_OK;
}

/* ---- Brown corpus ---- */

/* Appends the text of one tagged line: each space-separated "word/tag" becomes "word". */
static int brown_line(sbuf *out, const char *s, size_t n) {
    size_t i = 0, words = 0;
    int rc;
    while (i < n) {
        while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) i++;
        size_t st = i;
        while (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != '\r') i++;
        if (i == st) break;
        size_t e = i;
        for (size_t j = i; j > st; j--)
            if (s[j - 1] == '/') {
                if (j - 1 > st) e = j - 1;
                break;
            }
        if ((words++ && (rc = sb_addc(out, ' '))) || (rc = sb_add(out, s + st, e - st))) return rc;
    }
    return LOOM_OK;
}

int ds_parse_brown(ds_records *rs, const char *dir, const loom_dataset_opts *o) {
    rs->kind = LOOM_DS_LM;
    char path[4096];
    snprintf(path, sizeof path, "%s/cats.txt", dir);
    char *cats;
    size_t clen;
    int rc = loom_read_file(path, &cats, &clen);
    if (rc) return loom_error_context(rc, "brown corpus");
    sbuf text = {0};
    size_t pos = 0;
    uint32_t line = 1, nfile = 0;
    while (pos < clen && !full(rs, o) && !rc) {
        const char *nl = memchr(cats + pos, '\n', clen - pos);
        size_t end = nl ? (size_t)(nl - cats) : clen;
        char id[64], genre[64];
        char fmt_line[256];
        size_t ll = LOOM_MIN(end - pos, sizeof fmt_line - 1);
        memcpy(fmt_line, cats + pos, ll);
        fmt_line[ll] = 0;
        if (!is_blank(fmt_line, ll)) {
            if (sscanf(fmt_line, "%63s %63s", id, genre) != 2 || strchr(id, '/') || id[0] == '.') {
                rc = loom_error(LOOM_EFORMAT, "%s:%u: expected 'fileid category'", path, line);
                break;
            }
            nfile++;
            char fpath[4096 + 64];
            snprintf(fpath, sizeof fpath, "%s/%s", dir, id);
            char *d;
            size_t dlen;
            if ((rc = loom_read_file(fpath, &d, &dlen))) break;
            text.n = 0;
            size_t p = 0;
            int sentences = 0;
            while (p < dlen && !rc) {
                const char *e = memchr(d + p, '\n', dlen - p);
                size_t le = e ? (size_t)(e - d) : dlen;
                if (!is_blank(d + p, le - p)) {
                    if (sentences++) rc = sb_addc(&text, '\n');
                    if (!rc) rc = brown_line(&text, d + p, le - p);
                }
                p = le + 1;
            }
            free(d);
            if (!rc) rc = push_doc(rs, text.s ? text.s : "", text.n, nfile, genre);
        }
        pos = end + 1;
        line++;
    }
    free(text.s);
    free(cats);
    return rc;
}
