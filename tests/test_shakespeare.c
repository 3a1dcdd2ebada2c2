/* Federated Shakespeare: clients and their lines checked against an independent reading of
 * input.txt (POSIX regex, stdio), which is itself checked against the figures in SOURCE.md. */
#include <regex.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/partition.h"
#include "test.h"

#define MAX_NAMES 1000

typedef struct {
    char name[128];
    size_t turns;
    size_t n_lines, cap;
    char **lines;      /* the speaker's lines, in file order, without "\n" */
    uint32_t *lineno;
} speaker;

static speaker sp[MAX_NAMES];
static size_t n_sp;

static speaker *find(const char *name) {
    for (size_t i = 0; i < n_sp; i++)
        if (!strcmp(sp[i].name, name)) return &sp[i];
    if (n_sp == MAX_NAMES) return NULL;
    snprintf(sp[n_sp].name, sizeof sp[n_sp].name, "%s", name);
    return &sp[n_sp++];
}

/* Reads input.txt: a turn heading is a line matching `re` at the start or after an empty line. */
static int read_reference(const char *path, const char *pattern) {
    regex_t re;
    if (regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB)) return -1;
    FILE *f = fopen(path, "r");
    if (!f) {
        regfree(&re);
        return -1;
    }
    char buf[4096];
    speaker *cur = NULL;
    int prev_empty = 1;
    uint32_t ln = 0;
    while (fgets(buf, sizeof buf, f)) {
        ln++;
        buf[strcspn(buf, "\n")] = 0;
        if (!buf[0]) {
            prev_empty = 1;
            cur = NULL;
            continue;
        }
        if (prev_empty && regexec(&re, buf, 0, NULL, 0) == 0) {
            buf[strlen(buf) - 1] = 0;
            cur = find(buf);
            if (cur) cur->turns++;
        } else if (cur) {
            if (cur->n_lines == cur->cap) {
                cur->cap = cur->cap ? 2 * cur->cap : 16;
                cur->lines = realloc(cur->lines, cur->cap * sizeof *cur->lines);
                cur->lineno = realloc(cur->lineno, cur->cap * sizeof *cur->lineno);
            }
            cur->lines[cur->n_lines] = strdup(buf);
            cur->lineno[cur->n_lines++] = ln;
        }
        prev_empty = 0;
    }
    fclose(f);
    regfree(&re);
    return 0;
}

static void free_reference(void) {
    for (size_t i = 0; i < n_sp; i++) {
        for (size_t k = 0; k < sp[i].n_lines; k++) free(sp[i].lines[k]);
        free(sp[i].lines);
        free(sp[i].lineno);
    }
    memset(sp, 0, sizeof sp);
    n_sp = 0;
}

static void test_reference_matches_source_md(const char *path) {
    /* SOURCE.md: the regex ^[A-Z][A-Za-z' ,.-]*:$ after a blank line finds about 7,220 turns by about
     * 300 names; 14 names have at least 100 turns and 99 at least 20; GLOUCESTER 229, DUKE VINCENTIO 193,
     * ROMEO 163, MENENIUS 162, PETRUCHIO 158. */
    CHECK(read_reference(path, "^[A-Z][A-Za-z' ,.-]*:$") == 0, "read %s", path);
    size_t turns = 0, ge100 = 0, ge20 = 0;
    for (size_t i = 0; i < n_sp; i++) {
        turns += sp[i].turns;
        ge100 += sp[i].turns >= 100;
        ge20 += sp[i].turns >= 20;
    }
    CHECK(turns >= 7150 && turns <= 7300, "turns %zu (about 7,220)", turns);
    CHECK(n_sp >= 280 && n_sp <= 320, "names %zu (about 300)", n_sp);
    CHECK(ge100 == 14 && ge20 == 99, "names with >= 100 turns %zu, >= 20 turns %zu", ge100, ge20);
    speaker *g = find("GLOUCESTER"), *r = find("ROMEO"), *p = find("PETRUCHIO");
    CHECK(g && g->turns == 229 && r && r->turns == 163 && p && p->turns == 158, "top turn counts");
    free_reference();
}

static void check_clients(const char *path, size_t min_lines) {
    /* loom's heading rule also allows '&' ("Senators, &C:"). */
    CHECK(read_reference(path, "^[A-Z][A-Za-z' ,.&-]*:$") == 0, "read %s", path);
    size_t want_clients = 0, want_lines = 0;
    for (size_t i = 0; i < n_sp; i++)
        if (sp[i].n_lines >= min_lines && sp[i].n_lines > 0) {
            want_clients++;
            want_lines += sp[i].n_lines;
        }
    loom_shakespeare_opts o;
    loom_shakespeare_opts_init(&o);
    o.min_lines = min_lines;
    loom_dataset *ds;
    loom_partition *p;
    CHECK_OK(loom_shakespeare_load(&ds, &p, path, &o, NULL));
    if (!ds) {
        free_reference();
        return;
    }
    printf("shakespeare min_lines %zu: %zu clients, %zu lines\n", min_lines, p->n_clients, ds->n);
    CHECK(p->n_clients == want_clients, "clients %zu, reference %zu", p->n_clients, want_clients);
    CHECK(ds->n == want_lines, "lines %zu, reference %zu", ds->n, want_lines);
    CHECK(loom_partition_check(p, ds->n) == LOOM_OK, "every line in one place: %s", loom_errmsg());
    /* Client c = the c-th qualifying speaker in order of first appearance; its train lines then its
     * test lines are exactly the speaker's lines in file order, the last round(0.2 n) being test. */
    size_t c = 0;
    int lines_ok = 1, split_ok = 1, names_ok = 1, ids_ok = 1;
    for (size_t i = 0; i < n_sp && c < p->n_clients; i++) {
        if (sp[i].n_lines < min_lines || !sp[i].n_lines) continue;
        const loom_client *cl = &p->clients[c++];
        names_ok &= !strcmp(cl->name, sp[i].name);
        size_t n = sp[i].n_lines, nt = (size_t)(0.2 * (double)n + 0.5);
        split_ok &= cl->n_train + cl->n_test == n && cl->n_test == nt;
        for (size_t k = 0; k < n && k < cl->n_train + cl->n_test; k++) {
            uint32_t e = k < cl->n_train ? cl->train[k] : cl->test[k - cl->n_train];
            const loom_example *ex = &ds->ex[e];
            size_t len = strlen(sp[i].lines[k]);
            lines_ok &= ex->raw_len == len + 1 && !memcmp(ex->raw, sp[i].lines[k], len) && ex->raw[len] == '\n' &&
                        ex->line == sp[i].lineno[k];
            /* Byte-level ids: the characters themselves, every one a target. */
            ids_ok &= ex->n == len + 1 && ex->ids[len] == '\n';
            for (size_t j = 0; j < len && j < ex->n; j++) ids_ok &= ex->ids[j] == (unsigned char)sp[i].lines[k][j] && ex->mask[j];
        }
    }
    CHECK(names_ok, "client names are the speakers in order of appearance");
    CHECK(split_ok, "80/20 split sizes");
    CHECK(lines_ok, "every client's train+test lines equal its lines in input.txt");
    CHECK(ids_ok, "byte ids");

    /* Next-character batches over client 0's train lines: the first unshuffled window is the first
     * T+1 characters of the concatenated lines. */
    const loom_client *cl = &p->clients[0];
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = 2;
    bo.T = 80;
    bo.shuffle = 0;
    loom_batcher *b;
    CHECK_OK(loom_batcher_create(&b, ds, cl->train, cl->n_train, &bo));
    if (b) {
        char text[256];
        size_t k = 0;
        for (size_t i = 0; k < 162 && i < cl->n_train; i++)
            for (size_t j = 0; j < ds->ex[cl->train[i]].raw_len && k < 162; j++) text[k++] = ds->ex[cl->train[i]].raw[j];
        int32_t tk[160], tg[160];
        CHECK_OK(loom_batcher_fill(b, 0, tk, tg, NULL));
        int ok = k == 162;
        for (size_t t = 0; t < 80 && ok; t++)
            ok &= tk[t] == (unsigned char)text[t] && tg[t] == (unsigned char)text[t + 1] &&
                  tk[80 + t] == (unsigned char)text[80 + t] && tg[80 + t] == (unsigned char)text[81 + t];
        CHECK(ok, "first windows = the client's text");
        loom_batcher_free(b);
    }
    loom_partition_free(p);
    loom_dataset_free(ds);
    free_reference();
}

int main(void) {
    char path[1024];
    test_path(path, sizeof path, "data/tinyshakespeare/input.txt");
    test_reference_matches_source_md(path);
    check_clients(path, 64);
    check_clients(path, 1);
    check_clients(path, 500);
    loom_shakespeare_opts o;
    loom_shakespeare_opts_init(&o);
    o.min_lines = 100000;
    loom_dataset *ds;
    loom_partition *p;
    CHECK(loom_shakespeare_load(&ds, &p, path, &o, NULL) == LOOM_ENOTFOUND, "no speaker that large");
    CHECK(loom_shakespeare_load(&ds, &p, "/nonexistent/input.txt", NULL, NULL) != LOOM_OK &&
              strstr(loom_errmsg(), "/nonexistent/input.txt"),
          "missing file: %s", loom_errmsg());
    return test_summary();
}
