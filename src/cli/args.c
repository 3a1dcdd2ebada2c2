#include "cli/args.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/core.h"

static void print_help(const char *usage, const char *desc, cli_opt *opts, int n) {
    printf("usage: %s\n\n%s\n\noptions:\n", usage, desc);
    for (int i = 0; i < n; i++) {
        char left[64];
        const char *arg = opts[i].type == OPT_FLAG ? "" : opts[i].type == OPT_STR ? " S" : opts[i].type == OPT_FLOAT ? " X" : " N";
        snprintf(left, sizeof left, "--%s%s", opts[i].name, arg);
        printf("  %-22s %s", left, opts[i].help);
        switch (opts[i].type) {
        case OPT_STR:
            if (*(const char **)opts[i].dst) printf(" (default %s)", *(const char **)opts[i].dst);
            break;
        case OPT_INT: printf(" (default %d)", *(int *)opts[i].dst); break;
        case OPT_LONG: printf(" (default %ld)", *(long *)opts[i].dst); break;
        case OPT_FLOAT:
            if (*(float *)opts[i].dst == *(float *)opts[i].dst) printf(" (default %g)", *(float *)opts[i].dst); /* NAN: no default shown */
            break;
        case OPT_FLAG: break;
        }
        printf("\n");
    }
    printf("  %-22s %s\n", "--help", "show this help");
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
        char *end;
        errno = 0;
        switch (o->type) {
        case OPT_STR: *(const char **)o->dst = val; break;
        case OPT_INT:
        case OPT_LONG: {
            long v = strtol(val, &end, 10);
            if (*val == 0 || *end || errno) {
                fprintf(stderr, "loom: --%s expects an integer, got '%s'\n", name, val);
                return -1;
            }
            if (o->type == OPT_INT) *(int *)o->dst = (int)v;
            else *(long *)o->dst = v;
            break;
        }
        case OPT_FLOAT: {
            float v = strtof(val, &end);
            if (*val == 0 || *end || errno) {
                fprintf(stderr, "loom: --%s expects a number, got '%s'\n", name, val);
                return -1;
            }
            *(float *)o->dst = v;
            break;
        }
        case OPT_FLAG: break;
        }
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

#include <jansson.h>

int cli_config_argv(const char *path, int *argc, char ***argv) {
    json_error_t e;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &e);
    if (!root) return loom_error(LOOM_EFORMAT, "%s:%d: %s", path, e.line, e.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return loom_error(LOOM_EFORMAT, "%s: a config file is a JSON object of flag names and values", path);
    }
    size_t n = json_object_size(root);
    char **v = calloc(2 * n + 2, sizeof *v);
    int k = 0;
    v[k++] = strdup("config");
    const char *key;
    json_t *val;
    int rc = LOOM_OK;
    json_object_foreach(root, key, val) {
        char buf[64];
        if (json_is_false(val) || json_is_null(val)) continue;
        size_t kl = strlen(key);
        v[k] = malloc(kl + 3);
        sprintf(v[k++], "--%s", key);
        if (json_is_true(val)) continue;
        if (json_is_string(val)) v[k++] = strdup(json_string_value(val));
        else if (json_is_integer(val)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(val)), v[k++] = strdup(buf);
        else if (json_is_real(val)) snprintf(buf, sizeof buf, "%.17g", json_real_value(val)), v[k++] = strdup(buf);
        else {
            rc = loom_error(LOOM_EFORMAT, "%s: value of \"%s\" must be a string, number or boolean", path, key);
            break;
        }
    }
    json_decref(root);
    if (rc != LOOM_OK) {
        cli_config_free(k, v);
        return rc;
    }
    *argc = k;
    *argv = v;
    return LOOM_OK;
}

void cli_config_free(int argc, char **argv) {
    for (int i = 0; i < argc; i++) free(argv[i]);
    free(argv);
}
