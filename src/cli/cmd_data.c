/* loom data: split a data set among federated clients; build federated Shakespeare.
 *
 * Output of `loom data split --out DIR` (and `loom data shakespeare --out DIR`):
 *   DIR/client_NNNN.<ext>       the client's training records, as written in the input:
 *                               JSONL formats: the input lines (.jsonl); csv/tsv: the header row, then
 *                               the rows (.csv/.tsv); text: the documents separated by a blank line
 *                               (one a line with --text-split line) (.txt); brown: JSONL objects
 *                               {"genre", "text"} with the tags removed (.jsonl). Each shard loads again
 *                               with the same --format options (brown shards: --format jsonl --key genre).
 *   DIR/client_NNNN.test.<ext>  the client's test records (only when --test-frac > 0)
 *   DIR/manifest.json           {"format": "loom-data-split", "version": 1, the options, "labels",
 *                               "keys", "clients": [{"name", "train_file", "test_file", "train_examples",
 *                               "test_examples", "tokens", "counts": {series: n}, "train": [example
 *                               indices], "test": [...]}]}; indices count records in input order from 0
 *                               (self-instruct: one per instance).
 * The table printed has one row per client: examples (train/test), tokens and the label histogram
 * (the key histogram when there are no labels). */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "loom/plot.h"
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/partition.h"
#include "loom/tokenizer.h"

static void data_usage(FILE *f) {
    fprintf(f,
            "usage: loom data split --data FILE --format FMT --partition iid|dirichlet|natural|quantity\n"
            "                       --clients N --out DIR [options]\n"
            "       loom data shakespeare [--data input.txt] [--min-lines N] [--test-frac F] [--out DIR]\n"
            "\n"
            "split: splits a data set among federated clients and writes one file per client and a manifest\n"
            "(loom sim --data DIR/manifest.json trains on it). shakespeare: federated Shakespeare, one client\n"
            "per speaking role. loom data split --help and loom data shakespeare --help list their options.\n");
}

static int ensure_dir(const char *dir) {
    if (mkdir(dir, 0777) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    }
    fprintf(stderr, "loom data: cannot create directory %s: %s\n", dir, strerror(errno));
    return -1;
}

typedef loom_strbuf buf;
#define buf_add loom_strbuf_add

static const char *shard_ext(int format) {
    switch (format) {
    case LOOM_FMT_TEXT: return "txt";
    case LOOM_FMT_CSV: return "csv";
    case LOOM_FMT_TSV: return "tsv";
    default: return "jsonl";
    }
}

/* The records idx[0..n) in the input's own format. */
static int shard_text(buf *b, const loom_dataset *ds, const uint32_t *idx, size_t n, int text_split) {
    b->n = 0;
    if (ds->header && (buf_add(b, ds->header, strlen(ds->header)) || buf_add(b, "\n", 1))) return -1;
    for (size_t i = 0; i < n; i++) {
        const loom_example *e = &ds->ex[idx[i]];
        if (ds->format == LOOM_FMT_BROWN) {
            json_t *o = json_pack("{s:s, s:s%}", "genre", e->key >= 0 ? ds->keys[e->key] : "", "text", e->raw, e->raw_len);
            char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
            json_decref(o);
            int bad = !line || buf_add(b, line, strlen(line)) || buf_add(b, "\n", 1);
            free(line);
            if (bad) return -1;
            continue;
        }
        if (buf_add(b, e->raw, e->raw_len)) return -1;
        int blank_sep = ds->format == LOOM_FMT_TEXT && text_split != LOOM_SPLIT_LINE && i + 1 < n;
        if (buf_add(b, blank_sep ? "\n\n" : "\n", blank_sep ? 2 : 1)) return -1;
    }
    return 0;
}

static json_t *index_array(const uint32_t *a, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) json_array_append_new(arr, json_integer(a[i]));
    return arr;
}

static int write_json(const char *path, json_t *root) {
    char *s = json_dumps(root, JSON_INDENT(1));
    if (!s) {
        fprintf(stderr, "loom data: out of memory writing %s\n", path);
        return -1;
    }
    size_t n = strlen(s);
    s[n] = 0;
    int rc = loom_write_file_atomic(path, s, n);
    free(s);
    if (rc) {
        fprintf(stderr, "loom data: %s\n", loom_errmsg());
        return -1;
    }
    return 0;
}

/* Series of the histogram: labels, else keys, else none. */
static size_t series_of(const loom_dataset *ds, const loom_example *e, int use_labels) {
    return (size_t)(use_labels ? e->label : e->key);
}

static int cmd_split(int argc, char **argv) {
    const char *data = NULL, *out = NULL, *plot = NULL, *tok_path = NULL, *method_s = NULL;
    loom_dataset_opts dopt;
    loom_dataset_opts_init(&dopt);
    loom_partition_opts popt;
    loom_partition_opts_init(&popt);
    popt.n_clients = 0;
    double test_frac = 0;
    const char *format = NULL, *text_split = NULL, *by = NULL;
    int header = 0, no_header = 0;
    long n_clients = 0, min_examples = (long)popt.min_examples, max_examples = (long)dopt.max_examples,
         seed = (long)popt.seed;
    cli_opt opts[] = {
        {"data", OPT_STR, &data, "the data set (brown: the corpus directory)", 0, 0},
        {"partition", OPT_STR, &method_s, "iid, dirichlet, natural (one client per label/key value) or quantity", 0, 0},
        {"clients", OPT_LONG, &n_clients, "number of clients (not for natural; 0: none given)", 0, 10000000},
        {"out", OPT_STR, &out, "output directory: DIR/client_NNNN.<ext>, .test.<ext>, manifest.json", 0, 0},
        {"format", OPT_STR, &format, "text|jsonl|jsonl-cls|alpaca|dolly|self-instruct|csv|tsv|brown (brown: --data is the corpus directory)", 0, 0},
        {"text-col", OPT_STR, &dopt.text_col, "column name, 1-based number, or list \"2,3\" (JSONL: field; default text)", 0, 0},
        {"label-col", OPT_STR, &dopt.label_col, "label column/field (classification)", 0, 0},
        {"key", OPT_STR, &dopt.key_col, "key column/field (category, genre...; dolly: category by default)", 0, 0},
        {"labels", OPT_STR, &dopt.labels, "label names: \"neg,pos\" (for the sorted values) or \"1=World,2=Sports\"", 0, 0},
        {"header", OPT_FLAG, &header, "CSV/TSV: the first row is a header (default: iff a column is named)", 0, 0},
        {"no-header", OPT_FLAG, &no_header, "CSV/TSV: the first row is data", 0, 0},
        {"text-split", OPT_STR, &text_split, "text format: paragraph (default), line, file", 0, 0},
        {"tokenizer", OPT_STR, &tok_path, "count tokens with this tokenizer (default: byte-level)", 0, 0},
        {"alpha", OPT_DOUBLE, &popt.alpha, "Dirichlet concentration", 1e-6, 1e6},
        {"sigma", OPT_DOUBLE, &popt.sigma, "quantity skew: log-normal sigma of client sizes", 0, 100},
        {"by", OPT_STR, &by, "label|key: what dirichlet/natural group by (default: the --key field if given, else the label if the data has labels, else the format's default key)", 0, 0},
        {"min-examples", OPT_LONG, &min_examples, "minimum examples a client (dirichlet: resample; natural: merge)", 0, 1000000000},
        {"test-frac", OPT_DOUBLE, &test_frac, "per-client test fraction", 0, 1},
        {"seed", OPT_LONG, &seed, "seed of the split", 0, 9e18},
        {"plot", OPT_STR, &plot, "FILE.svg: stacked bar chart of the clients' label counts", 0, 0},
        {"max-examples", OPT_LONG, &max_examples, "read only the first N records (0: all)", 0, 1e12},
    };
    int pr = cli_parse(argc, argv,
                       "loom data split --data FILE --format FMT --partition iid|dirichlet|natural|quantity --clients N --out DIR [options]",
                       "Splits a data set among federated clients and writes one file per client and a manifest\n"
                       "(loom sim --data DIR/manifest.json trains on it).",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (header && no_header) {
        fprintf(stderr, "loom data split: --header and --no-header exclude each other\n");
        return 2;
    }
    if (header) dopt.header = 1;
    if (no_header) dopt.header = 0;
    popt.n_clients = (size_t)n_clients;
    popt.min_examples = (size_t)min_examples;
    dopt.max_examples = (size_t)max_examples;
    popt.seed = (uint64_t)seed;
    int format_set = format != NULL;
    if (format) {
        dopt.format = loom_dataset_format(format);
        if (dopt.format < 0) {
            fprintf(stderr, "loom data split: unknown format '%s' (--format: %s)\n", format, CLI_FORMATS);
            return 2;
        }
    }
    if (text_split) {
        dopt.text_split = !strcmp(text_split, "paragraph") ? LOOM_SPLIT_PARAGRAPH
                          : !strcmp(text_split, "line")    ? LOOM_SPLIT_LINE
                          : !strcmp(text_split, "file")    ? LOOM_SPLIT_FILE
                                                           : -1;
        if (dopt.text_split < 0) {
            fprintf(stderr, "loom data split: --text-split is paragraph, line or file\n");
            return 2;
        }
    }
    if (method_s) {
        popt.method = loom_partition_method(method_s);
        if (popt.method < 0) {
            fprintf(stderr, "loom data split: unknown partition '%s' (iid, dirichlet, natural, quantity)\n", method_s);
            return 2;
        }
    }
    if (by) {
        popt.by = !strcmp(by, "label") ? LOOM_BY_LABEL : !strcmp(by, "key") ? LOOM_BY_KEY : -1;
        if (popt.by < 0) {
            fprintf(stderr, "loom data split: bad value '%s' for --by (label or key)\n", by);
            return 2;
        }
    }
    if (!data || !out || !method_s || !format_set) {
        fprintf(stderr, "loom data split: --data, --format, --partition and --out are required (see --help)\n");
        return 2;
    }
    if (popt.method != LOOM_PART_NATURAL && popt.n_clients == 0) {
        fprintf(stderr, "loom data split: --clients N is required for --partition %s\n", method_s);
        return 2;
    }

    /* Naming a key field means "group by it" unless --by says otherwise. */
    if (popt.by == LOOM_BY_AUTO && dopt.key_col) popt.by = LOOM_BY_KEY;

    loom_tokenizer *tok = NULL;
    int rc = tok_path ? loom_tokenizer_load(&tok, tok_path) : loom_tokenizer_byte(&tok);
    if (rc) {
        fprintf(stderr, "loom data split: --tokenizer %s: %s\n", tok_path ? tok_path : "(byte-level)", loom_errmsg());
        return 1;
    }
    loom_dataset *ds = NULL;
    loom_partition *p = NULL;
    json_t *man = NULL;
    uint64_t *counts = NULL;
    buf sb = {0};
    int status = 1;
    double t0 = loom_now();
    if ((rc = loom_dataset_load(&ds, data, &dopt, tok))) goto fail;
    double t_load = loom_now() - t0;
    if ((rc = loom_partition_dataset(&p, ds, &popt))) goto fail;
    if (test_frac > 0 && (rc = loom_partition_split_test(p, test_frac, popt.seed, 0))) goto fail;
    if ((rc = loom_partition_check(p, ds->n))) goto fail;
    if (ensure_dir(out)) goto done;

    int use_labels = ds->n_labels > 0;
    size_t ns = use_labels ? ds->n_labels : ds->n_keys;
    char *const *series = use_labels ? ds->label_names : ds->keys;
    counts = calloc((p->n_clients ? p->n_clients : 1) * (ns ? ns : 1), sizeof *counts);
    man = json_object();
    json_t *clients = json_array();
    json_t *labels = json_array(), *keys = json_array();
    if (!counts || !man || !clients || !labels || !keys) {
        json_decref(clients);
        json_decref(labels);
        json_decref(keys);
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t k = 0; k < ds->n_labels; k++) json_array_append_new(labels, json_string(ds->label_names[k]));
    for (size_t k = 0; k < ds->n_keys; k++) json_array_append_new(keys, json_string(ds->keys[k]));
    json_object_set_new(man, "format", json_string("loom-data-split"));
    json_object_set_new(man, "version", json_integer(1));
    json_object_set_new(man, "data", json_string(data));
    json_object_set_new(man, "data_format", json_string(loom_dataset_format_name(dopt.format)));
    json_object_set_new(man, "partition", json_string(method_s));
    json_object_set_new(man, "n_clients", json_integer((json_int_t)p->n_clients));
    json_object_set_new(man, "alpha", json_real(popt.alpha));
    json_object_set_new(man, "sigma", json_real(popt.sigma));
    json_object_set_new(man, "min_examples", json_integer((json_int_t)popt.min_examples));
    json_object_set_new(man, "test_frac", json_real(test_frac));
    json_object_set_new(man, "seed", json_integer((json_int_t)popt.seed));
    json_object_set_new(man, "tokenizer", json_string(tok_path ? tok_path : "byte"));
    json_object_set_new(man, "examples", json_integer((json_int_t)ds->n));
    json_object_set_new(man, "tokens", json_integer((json_int_t)ds->n_tokens));
    json_object_set_new(man, "labels", labels);
    json_object_set_new(man, "keys", keys);
    json_object_set_new(man, "clients", clients);

    printf("%s: %zu examples, %zu tokens (%s tokenizer), %zu labels, %zu keys; loaded in %.2f s\n", data, ds->n,
           ds->n_tokens, loom_tokenizer_kind(tok), ds->n_labels, ds->n_keys, t_load);
    printf("partition %s: %zu clients", method_s, p->n_clients);
    if (popt.method == LOOM_PART_DIRICHLET) printf(", alpha %g, %zu draw%s", popt.alpha, p->draws, p->draws == 1 ? "" : "s");
    if (popt.method == LOOM_PART_QUANTITY) printf(", sigma %g", popt.sigma);
    printf(", seed %llu\n\n", (unsigned long long)popt.seed);
    printf("%-24s %8s %6s %10s  %s\n", "client", "train", "test", "tokens", use_labels ? "labels" : ns ? "keys" : "");
    const char *ext = shard_ext(dopt.format);
    for (size_t c = 0; c < p->n_clients; c++) {
        loom_client *cl = &p->clients[c];
        size_t tokens = 0;
        for (int part = 0; part < 2; part++) {
            const uint32_t *a = part ? cl->test : cl->train;
            size_t m = part ? cl->n_test : cl->n_train;
            for (size_t i = 0; i < m; i++) {
                const loom_example *e = &ds->ex[a[i]];
                tokens += e->n;
                if (ns) counts[c * ns + series_of(ds, e, use_labels)]++;
            }
        }
        char train_file[64], test_file[64], path[4200];
        snprintf(train_file, sizeof train_file, "client_%04zu.%s", c, ext);
        snprintf(test_file, sizeof test_file, "client_%04zu.test.%s", c, ext);
        for (int part = 0; part < (test_frac > 0 ? 2 : 1); part++) {
            if (shard_text(&sb, ds, part ? cl->test : cl->train, part ? cl->n_test : cl->n_train, dopt.text_split)) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                goto fail;
            }
            snprintf(path, sizeof path, "%s/%s", out, part ? test_file : train_file);
            if ((rc = loom_write_file_atomic(path, sb.s ? sb.s : "", sb.n))) goto fail;
        }
        json_t *jc = json_object(), *jcounts = json_object();
        json_object_set_new(jc, "name", json_string(cl->name));
        json_object_set_new(jc, "train_file", json_string(train_file));
        json_object_set_new(jc, "test_file", test_frac > 0 ? json_string(test_file) : json_null());
        json_object_set_new(jc, "train_examples", json_integer((json_int_t)cl->n_train));
        json_object_set_new(jc, "test_examples", json_integer((json_int_t)cl->n_test));
        json_object_set_new(jc, "tokens", json_integer((json_int_t)tokens));
        for (size_t k = 0; k < ns; k++)
            if (counts[c * ns + k]) json_object_set_new(jcounts, series[k], json_integer((json_int_t)counts[c * ns + k]));
        json_object_set_new(jc, "counts", jcounts);
        json_object_set_new(jc, "train", index_array(cl->train, cl->n_train));
        json_object_set_new(jc, "test", index_array(cl->test, cl->n_test));
        json_array_append_new(clients, jc);

        printf("%-24.24s %8zu %6zu %10zu  ", cl->name, cl->n_train, cl->n_test, tokens);
        size_t shown = 0;
        for (size_t k = 0; k < ns; k++) {
            if (!counts[c * ns + k]) continue;
            if (shown++ == 12) {
                printf(" ...");
                break;
            }
            printf("%s%s:%llu", shown > 1 ? " " : "", series[k], (unsigned long long)counts[c * ns + k]);
        }
        printf("\n");
    }
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", out);
    if (write_json(mpath, man)) goto done;
    if (test_frac > 0)
        printf("\nwrote %zu clients to %s (client_NNNN.%s, client_NNNN.test.%s, manifest.json)\n", p->n_clients, out, ext, ext);
    else
        printf("\nwrote %zu clients to %s (client_NNNN.%s, manifest.json)\n", p->n_clients, out, ext);
    if (plot) {
        const char **bars = malloc((p->n_clients ? p->n_clients : 1) * sizeof *bars);
        char *svg = NULL;
        size_t len = 0;
        if (!bars) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            goto fail;
        }
        for (size_t c = 0; c < p->n_clients; c++) bars[c] = p->clients[c].name;
        char title[512];
        snprintf(title, sizeof title, "%s: %s partition, %zu clients", data, method_s, p->n_clients);
        rc = loom_plot_stacked_svg(&svg, &len, title, p->n_clients, ns, counts, bars, (const char *const *)series);
        free(bars);
        if (!rc) rc = loom_write_file_atomic(plot, svg, len);
        free(svg);
        if (rc) goto fail;
        printf("wrote %s\n", plot);
    }
    status = 0;
    goto done;
fail:
    fprintf(stderr, "loom data split: %s\n", loom_errmsg());
done:
    free(sb.s);
    free(counts);
    json_decref(man);
    loom_partition_free(p);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    (void)rc;
    return status;
}

static int cmp_size(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static int cmd_shakespeare(int argc, char **argv) {
    loom_shakespeare_opts o;
    loom_shakespeare_opts_init(&o);
    const char *in = NULL, *out = NULL;
    char default_path[4096];
    long min_lines = (long)o.min_lines;
    cli_opt opts[] = {
        {"data", OPT_STR, &in, "Tiny Shakespeare's input.txt (default $LOOM_DATA/tinyshakespeare/input.txt, else $LOOM_SHARED/data/tinyshakespeare/input.txt, else the shared directory beside the repository the program was built in)", 0, 0},
        {"min-lines", OPT_LONG, &min_lines, "lines a role needs to be a client", 0, 1000000000},
        {"test-frac", OPT_DOUBLE, &o.test_frac, "share of each client's lines held out", 0, 0.99},
        {"out", OPT_STR, &out, "write DIR/client_NNNN.txt, client_NNNN.test.txt and manifest.json", 0, 0},
    };
    int pr = cli_parse(argc, argv, "loom data shakespeare [--data input.txt] [--min-lines N] [--test-frac F] [--out DIR]",
                       "Federated Shakespeare (as LEAF): one client per speaking role of Tiny Shakespeare with at least\n"
                       "--min-lines lines; each client's first (1 - test-frac) lines train, the rest are its test data.\n"
                       "Prints the clients and a histogram of lines per client.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    o.min_lines = (size_t)min_lines;
    if (!in) {
        /* The data directory: $LOOM_DATA, else the shared directory's data/ (cli_shared_dir). */
        const char *d = getenv("LOOM_DATA");
        if (d && *d) snprintf(default_path, sizeof default_path, "%s/tinyshakespeare/input.txt", d);
        else snprintf(default_path, sizeof default_path, "%s/data/tinyshakespeare/input.txt", cli_shared_dir());
        in = default_path;
    }
    loom_dataset *ds;
    loom_partition *p;
    if (loom_shakespeare_load(&ds, &p, in, &o, NULL)) {
        fprintf(stderr, "loom data shakespeare: --data %s: %s\n", in, loom_errmsg());
        return 1;
    }
    size_t nc = p->n_clients, n_train = 0, n_test = 0;
    size_t *sizes = malloc(nc * sizeof *sizes);
    if (!sizes) {
        fprintf(stderr, "loom data shakespeare: out of memory\n");
        loom_partition_free(p);
        loom_dataset_free(ds);
        return 1;
    }
    for (size_t c = 0; c < nc; c++) {
        sizes[c] = p->clients[c].n_train + p->clients[c].n_test;
        n_train += p->clients[c].n_train;
        n_test += p->clients[c].n_test;
    }
    qsort(sizes, nc, sizeof *sizes, cmp_size);
    double median = nc % 2 ? (double)sizes[nc / 2] : 0.5 * (double)(sizes[nc / 2 - 1] + sizes[nc / 2]);
    printf("federated shakespeare from %s\n", in);
    printf("clients (speakers with >= %zu lines): %zu\n", o.min_lines, nc);
    printf("lines: %zu (train %zu, test %zu), characters: %zu\n", ds->n, n_train, n_test, ds->n_tokens);
    printf("lines per client: min %zu, median %.1f, max %zu, mean %.1f\n", sizes[0], median, sizes[nc - 1],
           (double)ds->n / (double)nc);
    printf("\nhistogram of lines per client:\n");
    size_t lo = 1;
    while (lo * 2 <= sizes[0]) lo *= 2;
    size_t maxbin = 0;
    for (size_t b = lo; b <= sizes[nc - 1]; b *= 2) {
        size_t k = 0;
        for (size_t c = 0; c < nc; c++) k += sizes[c] >= b && sizes[c] < 2 * b;
        maxbin = LOOM_MAX(maxbin, k);
    }
    for (size_t b = lo; b <= sizes[nc - 1]; b *= 2) {
        size_t k = 0;
        for (size_t c = 0; c < nc; c++) k += sizes[c] >= b && sizes[c] < 2 * b;
        int bar = maxbin ? (int)((50 * k + maxbin - 1) / maxbin) : 0;
        printf("  %5zu-%-5zu %4zu %.*s\n", b, 2 * b - 1, k, bar, "##################################################");
    }
    int status = 0;
    if (out) {
        json_t *man = json_object(), *clients = json_array();
        json_object_set_new(man, "format", json_string("loom-data-split"));
        json_object_set_new(man, "version", json_integer(1));
        json_object_set_new(man, "data", json_string(in));
        json_object_set_new(man, "data_format", json_string("text"));
        json_object_set_new(man, "text_split", json_string("line"));
        json_object_set_new(man, "partition", json_string("shakespeare-speaker"));
        json_object_set_new(man, "min_lines", json_integer((json_int_t)o.min_lines));
        json_object_set_new(man, "test_frac", json_real(o.test_frac));
        json_object_set_new(man, "n_clients", json_integer((json_int_t)nc));
        json_object_set_new(man, "clients", clients);
        buf sb = {0};
        status = ensure_dir(out) ? 1 : 0;
        for (size_t c = 0; c < nc && !status; c++) {
            loom_client *cl = &p->clients[c];
            char f[2][64], path[4200];
            snprintf(f[0], sizeof f[0], "client_%04zu.txt", c);
            snprintf(f[1], sizeof f[1], "client_%04zu.test.txt", c);
            for (int part = 0; part < 2 && !status; part++) {
                const uint32_t *a = part ? cl->test : cl->train;
                size_t m = part ? cl->n_test : cl->n_train;
                sb.n = 0;
                /* Each example's raw text already ends with its newline. */
                for (size_t i = 0; i < m && !status; i++)
                    if (buf_add(&sb, ds->ex[a[i]].raw, ds->ex[a[i]].raw_len)) status = 1;
                snprintf(path, sizeof path, "%s/%s", out, f[part]);
                if (!status && loom_write_file_atomic(path, sb.s ? sb.s : "", sb.n)) status = 1;
            }
            json_t *jc = json_object();
            json_object_set_new(jc, "name", json_string(cl->name));
            json_object_set_new(jc, "train_file", json_string(f[0]));
            json_object_set_new(jc, "test_file", json_string(f[1]));
            json_object_set_new(jc, "train_examples", json_integer((json_int_t)cl->n_train));
            json_object_set_new(jc, "test_examples", json_integer((json_int_t)cl->n_test));
            json_array_append_new(clients, jc);
        }
        free(sb.s);
        char mpath[4200];
        snprintf(mpath, sizeof mpath, "%s/manifest.json", out);
        if (status) fprintf(stderr, "loom data shakespeare: %s\n", loom_errmsg());
        else if (write_json(mpath, man)) status = 1;
        else printf("\nwrote %zu clients to %s (client_NNNN.txt, client_NNNN.test.txt, manifest.json)\n", nc, out);
        json_decref(man);
    }
    free(sizes);
    loom_partition_free(p);
    loom_dataset_free(ds);
    return status;
}

int cmd_data(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        data_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "split")) return cmd_split(argc - 1, argv + 1);
    if (!strcmp(argv[1], "shakespeare")) return cmd_shakespeare(argc - 1, argv + 1);
    fprintf(stderr, "loom data: unknown subcommand '%s' (split or shakespeare; see loom data --help)\n", argv[1]);
    data_usage(stderr);
    return 2;
}
