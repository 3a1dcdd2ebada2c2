#include "cli/args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "loom/core.h"

static int is_numeric(opt_type t) { return t == OPT_INT || t == OPT_LONG || t == OPT_FLOAT || t == OPT_DOUBLE; }

/* The shown default of an option ("" when none), as print_help shows it. */
static void default_text(const cli_opt *o, char *buf, size_t n) {
    buf[0] = 0;
    double d = o->type == OPT_INT ? *(int *)o->dst : o->type == OPT_LONG ? (double)*(long *)o->dst
               : o->type == OPT_FLOAT ? *(float *)o->dst : o->type == OPT_DOUBLE ? *(double *)o->dst : 0;
    if (is_numeric(o->type) && !(d >= o->min && d <= o->max)) return;
    switch (o->type) {
    case OPT_STR:
        if (*(const char **)o->dst) snprintf(buf, n, "%s", *(const char **)o->dst);
        break;
    case OPT_INT: snprintf(buf, n, "%d", *(int *)o->dst); break;
    case OPT_LONG: snprintf(buf, n, "%ld", *(long *)o->dst); break;
    case OPT_FLOAT:
        if (*(float *)o->dst == *(float *)o->dst) snprintf(buf, n, "%g", *(float *)o->dst);
        break;
    case OPT_DOUBLE:
        if (*(double *)o->dst == *(double *)o->dst) snprintf(buf, n, "%g", *(double *)o->dst);
        break;
    case OPT_FLAG: snprintf(buf, n, "off"); break;
    }
}

static void print_help(const char *usage, const char *desc, cli_opt *opts, int n) {
    printf("usage: %s\n\n%s\n\noptions:\n", usage, desc);
    for (int i = 0; i < n; i++) {
        char left[64], d[256];
        const char *arg = opts[i].type == OPT_FLAG ? "" : opts[i].type == OPT_STR ? " S"
                          : opts[i].type == OPT_FLOAT || opts[i].type == OPT_DOUBLE ? " X" : " N";
        snprintf(left, sizeof left, "--%s%s", opts[i].name, arg);
        printf("  %-22s %s", left, opts[i].help);
        default_text(&opts[i], d, sizeof d); /* a "not given" marker outside the range is not shown */
        if (*d && opts[i].type != OPT_FLAG) printf(" (default %s)", d);
        if (opts[i].type == OPT_FLOAT || opts[i].type == OPT_DOUBLE) printf(" [%g, %g]", opts[i].min, opts[i].max);
        else if (is_numeric(opts[i].type)) printf(" [%.0f, %.0f]", opts[i].min, opts[i].max);
        printf("\n");
    }
    printf("  %-22s %s\n", "--help", "show this help");
}

/* --list-flags (not in the help: for tests and completion scripts): one line per option of the
 * table, "--name<TAB>type<TAB>default" (type str, int, long, float or flag; default "-" when none). */
static void list_flags(const cli_opt *opts, int n) {
    static const char *const type[] = {"str", "int", "float", "flag", "long", "double"};
    for (int i = 0; i < n; i++) {
        char d[256];
        default_text(&opts[i], d, sizeof d);
        printf("--%s\t%s\t%s\n", opts[i].name, type[opts[i].type], *d ? d : "-");
    }
    printf("--help\tflag\toff\n");
}

int cli_parse_int(const char *flag, const char *s, long long min, long long max, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    int ok = *s && !*end && !errno && v >= min && v <= max;
    /* strtoll skips leading blanks: refuse them too, a value is the number and nothing else */
    if (*s == ' ' || *s == '\t' || *s == '\n') ok = 0;
    if (!ok) {
        fprintf(stderr, "loom: %s expects an integer in [%lld, %lld], got '%s'\n", flag, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_real(const char *flag, const char *s, double min, double max, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    int ok = *s && !*end && isfinite(v) && v >= min && v <= max && !(errno == ERANGE && v != 0);
    if (*s == ' ' || *s == '\t' || *s == '\n') ok = 0;
    if (!ok) {
        fprintf(stderr, "loom: %s expects a finite number in [%g, %g], got '%s'\n", flag, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_max_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    return n * 16 < 256 ? (int)(n * 16) : 256;
}

/* Stores a checked number into the option's destination. */
static int set_number(cli_opt *o, const char *flag, const char *val) {
    if (o->type == OPT_DOUBLE) return cli_parse_real(flag, val, o->min, o->max, (double *)o->dst);
    if (o->type == OPT_FLOAT) {
        double v;
        if (cli_parse_real(flag, val, o->min, o->max, &v)) return -1;
        if (!isfinite((float)v)) { /* within a range wider than float's */
            fprintf(stderr, "loom: %s is too large for a float: '%s'\n", flag, val);
            return -1;
        }
        *(float *)o->dst = (float)v;
        return 0;
    }
    long long lo = o->type == OPT_INT ? INT_MIN : LONG_MIN, hi = o->type == OPT_INT ? INT_MAX : LONG_MAX;
    if (o->min > (double)lo) lo = (long long)o->min;
    if (o->max < (double)hi) hi = (long long)o->max;
    long long v;
    if (cli_parse_int(flag, val, lo, hi, &v)) return -1;
    if (o->type == OPT_INT) *(int *)o->dst = (int)v;
    else *(long *)o->dst = (long)v;
    return 0;
}

int cli_parse(int argc, char **argv, const char *usage, const char *desc, cli_opt *opts, int nopts,
              const char **pos, int *npos, int maxpos) {
    if (npos) *npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            print_help(usage, desc, opts, nopts);
            return 1;
        }
        if (!strcmp(a, "--list-flags")) {
            list_flags(opts, nopts);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (pos && npos && *npos < maxpos) {
                pos[(*npos)++] = a;
                continue;
            }
            fprintf(stderr, "loom: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        const char *name = a + 2, *val = NULL;
        char buf[128];
        const char *eq = strchr(name, '=');
        if (eq) {
            snprintf(buf, sizeof buf, "%.*s", (int)(eq - name), name);
            name = buf;
            val = eq + 1;
        }
        cli_opt *o = NULL;
        for (int k = 0; k < nopts; k++)
            if (!strcmp(opts[k].name, name)) o = &opts[k];
        if (!o) {
            fprintf(stderr, "loom: unknown option --%s (see --help)\n", name);
            return -1;
        }
        if (o->type == OPT_FLAG) {
            if (val) {
                fprintf(stderr, "loom: --%s takes no value\n", name);
                return -1;
            }
            *(int *)o->dst = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "loom: --%s needs a value\n", name);
                return -1;
            }
            val = argv[++i];
        }
        if (o->type == OPT_STR) {
            *(const char **)o->dst = val;
            continue;
        }
        char flag[140];
        snprintf(flag, sizeof flag, "--%s", o->name);
        if (set_number(o, flag, val)) return -1;
    }
    return 0;
}

int cli_fail(const char *what) {
    if (what && *what) fprintf(stderr, "loom: %s: %s\n", what, loom_errmsg());
    else fprintf(stderr, "loom: %s\n", loom_errmsg());
    return 1;
}

int cli_tty(void) { return isatty(2); }

const char *cli_duration(double s, char *buf, int n) {
    if (s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, (size_t)n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, (size_t)n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, (size_t)n, "%lds", t);
    return buf;
}

/* ---------------------------------------------------------------- config files */

struct cli_config {
    json_t *root;
    char *numbers; /* numbers given to string options, as text */
};

#define CONFIG_MAX_BYTES (1 << 20)

typedef struct {
    cli_opt *o;
    size_t at; /* offset of its text in the numbers buffer */
} cli_opt_slot;

/* Applies a parsed config object (taking ownership of root); path names it in errors. */
static int config_apply(json_t *root, const char *path, cli_opt *opts, int nopts, cli_config **cfg);

int cli_config_read(const char *path, cli_opt *opts, int nopts, cli_config **cfg) {
    *cfg = NULL;
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "loom: --config %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (st.st_size > CONFIG_MAX_BYTES) {
        fprintf(stderr, "loom: --config %s: %lld bytes, more than the %d a config file may have\n", path,
                (long long)st.st_size, CONFIG_MAX_BYTES);
        return -1;
    }
    json_error_t e;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!root) {
        fprintf(stderr, "loom: --config %s:%d: %s\n", path, e.line, e.text);
        return -1;
    }
    return config_apply(root, path, opts, nopts, cfg);
}

int cli_config_parse(const char *text, const char *name, cli_opt *opts, int nopts, cli_config **cfg) {
    *cfg = NULL;
    size_t n = strlen(text);
    if (n > CONFIG_MAX_BYTES) {
        fprintf(stderr, "loom: %s: %zu bytes, more than the %d a configuration may have\n", name, n, CONFIG_MAX_BYTES);
        return -1;
    }
    json_error_t e;
    json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &e);
    if (!root) {
        fprintf(stderr, "loom: %s:%d: %s\n", name, e.line, e.text);
        return -1;
    }
    return config_apply(root, name, opts, nopts, cfg);
}

static int config_apply(json_t *root, const char *path, cli_opt *opts, int nopts, cli_config **cfg) {
    *cfg = NULL;
    if (!json_is_object(root)) {
        fprintf(stderr, "loom: --config %s: a config file is a JSON object of flag names and values\n", path);
        json_decref(root);
        return -1;
    }
    loom_strbuf numbers = {0};
    cli_opt_slot *slots = calloc(json_object_size(root) + 1, sizeof *slots);
    int nslots = 0;
    const char *key;
    json_t *val;
    if (!slots) goto fail;
    json_object_foreach(root, key, val) {
        cli_opt *o = NULL;
        for (int k = 0; k < nopts; k++)
            if (!strcmp(opts[k].name, key)) o = &opts[k];
        if (!o || !strcmp(key, "config")) {
            fprintf(stderr, "loom: %s: unknown key \"%s\" (the keys are the command's flags, see --help)\n", path, key);
            goto fail;
        }
        if (json_is_null(val)) continue;
        char flag[300];
        snprintf(flag, sizeof flag, "%s: \"%s\"", path, key);
        switch (o->type) {
        case OPT_STR:
            if (json_is_number(val)) { /* e.g. "sample": 10; kept as the text the flag would get */
                char buf[64];
                if (json_is_integer(val)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(val));
                else snprintf(buf, sizeof buf, "%.17g", json_real_value(val));
                size_t at = numbers.n;
                if (loom_strbuf_add(&numbers, buf, strlen(buf) + 1) != LOOM_OK) goto fail;
                slots[nslots] = (cli_opt_slot){o, at};
                nslots++;
                break;
            }
            if (!json_is_string(val)) {
                fprintf(stderr, "loom: %s must be a string\n", flag);
                goto fail;
            }
            *(const char **)o->dst = json_string_value(val);
            break;
        case OPT_FLAG:
            if (!json_is_boolean(val)) {
                fprintf(stderr, "loom: %s must be true or false\n", flag);
                goto fail;
            }
            *(int *)o->dst = json_is_true(val);
            break;
        case OPT_INT:
        case OPT_LONG:
        case OPT_DOUBLE:
        case OPT_FLOAT: {
            char buf[64];
            if (json_is_integer(val)) {
                snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(val));
            } else if (json_is_real(val) && (o->type == OPT_FLOAT || o->type == OPT_DOUBLE)) {
                snprintf(buf, sizeof buf, "%.17g", json_real_value(val));
            } else {
                const char *what = json_is_string(val) ? "a string" : json_is_real(val) ? "a fraction" : "not a number";
                if (o->type == OPT_FLOAT || o->type == OPT_DOUBLE)
                    fprintf(stderr, "loom: %s must be a number in [%g, %g], got %s\n", flag, o->min, o->max, what);
                else
                    fprintf(stderr, "loom: %s must be an integer in [%.0f, %.0f], got %s\n", flag, o->min, o->max, what);
                goto fail;
            }
            if (set_number(o, flag, buf)) goto fail;
            break;
        }
        }
    }
    *cfg = malloc(sizeof **cfg);
    if (!*cfg) goto fail;
    (*cfg)->root = root;
    (*cfg)->numbers = numbers.s;
    /* the buffer may have moved while growing: point the options at its final place */
    for (int i = 0; i < nslots; i++) *(const char **)slots[i].o->dst = numbers.s + slots[i].at;
    free(slots);
    return 0;
fail:
    free(numbers.s);
    free(slots);
    json_decref(root);
    return -1;
}

int cli_parse_config(int argc, char **argv, const char *usage, const char *description, cli_opt *opts, int nopts,
                     cli_config **cfg) {
    *cfg = NULL;
    const char *config = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
    if (config && cli_config_read(config, opts, nopts, cfg) != 0) return -1;
    int pr = cli_parse(argc, argv, usage, description, opts, nopts, NULL, NULL, 0);
    if (pr) {
        cli_config_free(*cfg);
        *cfg = NULL;
    }
    return pr;
}

void cli_config_free(cli_config *cfg) {
    if (!cfg) return;
    free(cfg->numbers);
    json_decref(cfg->root);
    free(cfg);
}

/* ---------------------------------------------------------------- output locations */

static int mkdir_p(const char *dir) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) {
        errno = ENAMETOOLONG;
        return -1;
    }
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = 0;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    if (mkdir(p, 0777) != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(p, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

int cli_out_dir(const char *flag, const char *dir) {
    if (!dir || !*dir) {
        fprintf(stderr, "loom: %s: an empty path\n", flag);
        return -1;
    }
    if (mkdir_p(dir) != 0) {
        fprintf(stderr, "loom: %s: cannot create directory %s: %s\n", flag, dir, strerror(errno));
        return -1;
    }
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.loom-write-test.%ld", dir, (long)getpid());
    FILE *f = fopen(probe, "wb");
    if (!f) {
        fprintf(stderr, "loom: %s: cannot write in %s: %s\n", flag, dir, strerror(errno));
        return -1;
    }
    fclose(f);
    remove(probe);
    return 0;
}

int cli_out_file(const char *flag, const char *path) {
    char dir[4096];
    if (!path || !*path || snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) {
        fprintf(stderr, "loom: %s: a bad path\n", flag);
        return -1;
    }
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        fprintf(stderr, "loom: %s: %s is a directory, not a file\n", flag, path);
        return -1;
    }
    char *slash = strrchr(dir, '/');
    if (!slash) return cli_out_dir(flag, ".");
    if (slash == dir) slash[1] = 0;
    else *slash = 0;
    return cli_out_dir(flag, dir);
}

int cli_same_path(const char *a, const char *b) {
    struct stat x, y;
    if (!a || !b || stat(a, &x) != 0 || stat(b, &y) != 0) return 0;
    return x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}
