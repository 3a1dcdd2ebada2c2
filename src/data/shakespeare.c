/* Federated Shakespeare from tiny shakespeare's input.txt: one client per speaker (see dataset.h). */
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/partition.h"

void loom_shakespeare_opts_init(loom_shakespeare_opts *o) {
    o->min_lines = 64;
    o->test_frac = 0.2;
}

/* "NAME:" with NAME = an upper-case letter, then letters, spaces and ' , . & - */
static int is_speaker(const char *s, size_t n) {
    if (n < 2 || s[n - 1] != ':' || s[0] < 'A' || s[0] > 'Z') return 0;
    for (size_t i = 1; i + 1 < n; i++) {
        char c = s[i];
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == ' ' || c == '\'' || c == ',' || c == '.' ||
                 c == '&' || c == '-';
        if (!ok) return 0;
    }
    return 1;
}

typedef struct {
    size_t start, len;  /* the line in the file, without "\n" */
    uint32_t line;
    uint32_t speaker;
} sp_line;

int loom_shakespeare_load(loom_dataset **ds_out, loom_partition **part_out, const char *input_path,
                          const loom_shakespeare_opts *opts, const loom_tokenizer *tok) {
    *ds_out = NULL;
    *part_out = NULL;
    loom_shakespeare_opts o;
    loom_shakespeare_opts_init(&o);
    if (opts) o = *opts;
    if (!(o.test_frac >= 0 && o.test_frac <= 1)) return loom_error(LOOM_EINVAL, "shakespeare: test fraction %g not in [0, 1]", o.test_frac);
    char *data;
    size_t len;
    int rc = loom_read_file(input_path, &data, &len);
    if (rc) return rc;

    loom_tokenizer *own_tok = NULL;
    sp_line *lines = NULL;
    char **names = NULL;
    size_t *count = NULL;
    size_t n_lines = 0, cap_lines = 0, n_names = 0, cap_names = 0;
    int32_t *client_of = NULL, *group = NULL;
    const char **texts = NULL, **keys = NULL;
    size_t *lens = NULL;
    loom_dataset *ds = NULL;
    loom_partition *part = NULL;

    size_t pos = 0;
    uint32_t line = 1;
    int after_blank = 1;
    int64_t cur = -1;
    while (pos < len) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len, n = end - pos;
        if (n && data[pos + n - 1] == '\r') n--;
        if (n == 0) {
            after_blank = 1;
            cur = -1;
        } else if (after_blank && is_speaker(data + pos, n)) {
            after_blank = 0;
            size_t k = 0;
            while (k < n_names && (strlen(names[k]) != n - 1 || memcmp(names[k], data + pos, n - 1))) k++;
            if (k == n_names) {
                if (n_names == cap_names) {
                    cap_names = cap_names ? 2 * cap_names : 64;
                    char **nn = realloc(names, cap_names * sizeof *nn);
                    size_t *nc = realloc(count, cap_names * sizeof *nc);
                    if (nn) names = nn;
                    if (nc) count = nc;
                    if (!nn || !nc) {
                        rc = loom_error(LOOM_ENOMEM, "out of memory");
                        goto done;
                    }
                }
                names[n_names] = malloc(n);
                if (!names[n_names]) {
                    rc = loom_error(LOOM_ENOMEM, "out of memory");
                    goto done;
                }
                memcpy(names[n_names], data + pos, n - 1);
                names[n_names][n - 1] = 0;
                count[n_names++] = 0;
            }
            cur = (int64_t)k;
        } else {
            after_blank = 0;
            /* A line outside any turn (no speaker heading above it) belongs to no client. */
            if (cur >= 0) {
                if (n_lines == cap_lines) {
                    cap_lines = cap_lines ? 2 * cap_lines : 4096;
                    sp_line *nl2 = realloc(lines, cap_lines * sizeof *nl2);
                    if (!nl2) {
                        rc = loom_error(LOOM_ENOMEM, "out of memory");
                        goto done;
                    }
                    lines = nl2;
                }
                lines[n_lines++] = (sp_line){pos, n, line, (uint32_t)cur};
                count[cur]++;
            }
        }
        pos = end + 1;
        line++;
    }

    /* Clients: speakers with enough lines, in order of first appearance. */
    client_of = malloc((n_names ? n_names : 1) * sizeof *client_of);
    if (!client_of) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    size_t n_clients = 0;
    for (size_t k = 0; k < n_names; k++) client_of[k] = count[k] >= o.min_lines && count[k] > 0 ? (int32_t)n_clients++ : -1;
    if (n_clients == 0) {
        rc = loom_error(LOOM_ENOTFOUND, "%s: no speaker has %zu lines or more", input_path, o.min_lines);
        goto done;
    }
    size_t n_ex = 0;
    for (size_t i = 0; i < n_lines; i++) n_ex += client_of[lines[i].speaker] >= 0;
    texts = malloc((n_ex ? n_ex : 1) * sizeof *texts);
    keys = malloc((n_ex ? n_ex : 1) * sizeof *keys);
    lens = malloc((n_ex ? n_ex : 1) * sizeof *lens);
    group = malloc((n_ex ? n_ex : 1) * sizeof *group);
    if (!texts || !keys || !lens || !group) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    /* Each example is the line with its newline: the text is one character stream. */
    size_t e = 0;
    for (size_t i = 0; i < n_lines; i++) {
        int32_t c = client_of[lines[i].speaker];
        if (c < 0) continue;
        texts[e] = data + lines[i].start;
        lens[e] = lines[i].len + 1;
        keys[e] = names[lines[i].speaker];
        group[e] = c;
        e++;
    }
    /* The "\n" after the last line may be missing; give every example one. */
    if (n_ex && texts[n_ex - 1] + lens[n_ex - 1] > data + len) {
        char *copy = realloc(data, len + 2);
        if (!copy) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < n_ex; i++) texts[i] = copy + (texts[i] - data);
        data = copy;
        data[len] = '\n';
        data[len + 1] = 0;
    }
    loom_dataset_opts dopts;
    loom_dataset_opts_init(&dopts);
    dopts.add_bos = 0;
    dopts.add_eos = 0;
    if (!tok) {
        if ((rc = loom_tokenizer_byte(&own_tok))) goto done;
        tok = own_tok;
    }
    if ((rc = loom_dataset_from_texts(&ds, texts, lens, keys, n_ex, &dopts, tok))) goto done;
    e = 0;
    for (size_t i = 0; i < n_lines; i++)
        if (client_of[lines[i].speaker] >= 0) ds->ex[e++].line = lines[i].line;
    /* Client c's examples are its lines in file order; split by that order. */
    const char **cnames = malloc(n_clients * sizeof *cnames);
    if (!cnames) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t k = 0; k < n_names; k++)
        if (client_of[k] >= 0) cnames[client_of[k]] = names[k];
    rc = loom_partition_natural(&part, group, n_ex, n_clients, cnames, 0);
    free(cnames);
    if (!rc) rc = loom_partition_split_test(part, o.test_frac, 0, 1);
done:
    free(data);
    free(lines);
    for (size_t k = 0; k < n_names; k++) free(names[k]);
    free(names);
    free(count);
    free(client_of);
    free(group);
    free(texts);
    free(keys);
    free(lens);
    loom_tokenizer_free(own_tok);
    if (rc) {
        loom_dataset_free(ds);
        loom_partition_free(part);
        return loom_error_context(rc, "shakespeare");
    }
    *ds_out = ds;
    *part_out = part;
    return LOOM_OK;
}
