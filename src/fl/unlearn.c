/* Federated unlearning: the membership file, the kept checkpoints and updates, FedEraser's calibration
 * (see include/loom/unlearn.h). */
#include "loom/unlearn.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/safetensors.h"

int loom_membership_write_row(void *file, int round, const int *clients, const uint64_t *weights, int n) {
    FILE *f = file;
    int bad = fprintf(f, "{\"round\":%d,\"clients\":[", round) < 0;
    for (int i = 0; i < n && !bad; i++) bad = fprintf(f, "%s%d", i ? "," : "", clients[i]) < 0;
    bad = bad || fputs("],\"weights\":[", f) < 0;
    for (int i = 0; i < n && !bad; i++) bad = fprintf(f, "%s%llu", i ? "," : "", (unsigned long long)weights[i]) < 0;
    bad = bad || fputs("]}\n", f) < 0;
    return bad ? loom_error(LOOM_EIO, "cannot write the round membership of round %d: %s", round, strerror(errno))
               : LOOM_OK;
}

void loom_membership_free(loom_membership *m) {
    for (int i = 0; m->rounds && i < m->n_rounds; i++) {
        free(m->rounds[i].clients);
        free(m->rounds[i].weights);
    }
    free(m->rounds);
    m->rounds = NULL;
    m->n_rounds = 0;
}

static int parse_row(loom_membership_round *r, const char *line, const char *path, long lineno, int prev,
                     int n_clients) {
    json_error_t je;
    json_t *j = json_loads(line, 0, &je);
    int rc = LOOM_OK;
    json_t *jr = j ? json_object_get(j, "round") : NULL, *jc = j ? json_object_get(j, "clients") : NULL,
           *jw = j ? json_object_get(j, "weights") : NULL;
    if (!j || !json_is_object(j) || !json_is_integer(jr) || !json_is_array(jc) || !json_is_array(jw) ||
        json_array_size(jc) != json_array_size(jw)) {
        rc = loom_error(LOOM_EFORMAT, "%s:%ld: expected {\"round\": R, \"clients\": [...], \"weights\": [...]} "
                        "with arrays of one length", path, lineno);
        goto out;
    }
    json_int_t round = json_integer_value(jr);
    if (round < prev || round < 1 || round > 1000000000) {
        rc = loom_error(LOOM_EFORMAT, "%s:%ld: round %lld does not follow round %d", path, lineno, (long long)round,
                        prev);
        goto out;
    }
    size_t n = json_array_size(jc);
    r->round = (int)round;
    r->n = (int)n;
    r->clients = malloc((n ? n : 1) * sizeof *r->clients);
    r->weights = malloc((n ? n : 1) * sizeof *r->weights);
    if (!r->clients || !r->weights) {
        rc = loom_error(LOOM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(jc, i), *w = json_array_get(jw, i);
        json_int_t cv = json_is_integer(c) ? json_integer_value(c) : -1;
        json_int_t wv = json_is_integer(w) ? json_integer_value(w) : -1;
        if (cv < 0 || cv > 1000000000 || (n_clients > 0 && cv >= n_clients) || wv < 0) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: entry %zu: client %lld / weight %lld out of range (%d clients)",
                            path, lineno, i, (long long)cv, (long long)wv, n_clients);
            goto out;
        }
        r->clients[i] = (int)cv;
        r->weights[i] = (uint64_t)wv;
    }
out:
    json_decref(j);
    return rc;
}

int loom_membership_load(loom_membership *m, const char *path, int n_clients) {
    memset(m, 0, sizeof *m);
    FILE *f = fopen(path, "r");
    if (!f) return loom_error(errno == ENOENT ? LOOM_ENOTFOUND : LOOM_EIO, "cannot read %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && st.st_size > LOOM_MEMBERSHIP_MAX_BYTES) {
        fclose(f);
        return loom_error(LOOM_ERANGE, "%s: %lld bytes is more than the %ld a membership file may hold", path,
                          (long long)st.st_size, LOOM_MEMBERSHIP_MAX_BYTES);
    }
    char *line = NULL;
    size_t cap = 0, room = 0;
    ssize_t len;
    long lineno = 0;
    int rc = LOOM_OK;
    while (rc == LOOM_OK && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        if (len == 0 || (len == 1 && line[0] == '\n')) continue;
        if ((size_t)m->n_rounds == room) {
            size_t nr = room ? 2 * room : 64;
            loom_membership_round *p = realloc(m->rounds, nr * sizeof *p);
            if (!p) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            m->rounds = p;
            room = nr;
        }
        loom_membership_round *r = &m->rounds[m->n_rounds];
        memset(r, 0, sizeof *r);
        rc = parse_row(r, line, path, lineno, m->n_rounds ? m->rounds[m->n_rounds - 1].round : 0, n_clients);
        m->n_rounds++; /* freed with the others, also when the row failed */
        if (rc == LOOM_OK && m->n_rounds > 1 && m->rounds[m->n_rounds - 2].round == r->round) {
            loom_membership_round *old = &m->rounds[m->n_rounds - 2]; /* a round redone after a restart */
            free(old->clients);
            free(old->weights);
            *old = *r;
            m->n_rounds--;
        }
    }
    free(line);
    fclose(f);
    if (rc != LOOM_OK) loom_membership_free(m);
    return rc;
}

int loom_membership_first(const loom_membership *m, int client) {
    for (int i = 0; i < m->n_rounds; i++)
        for (int k = 0; k < m->rounds[i].n; k++)
            if (m->rounds[i].clients[k] == client) return m->rounds[i].round;
    return 0;
}

uint64_t loom_membership_weight(const loom_membership *m, int round, int client) {
    for (int i = 0; i < m->n_rounds; i++)
        if (m->rounds[i].round == round)
            for (int k = 0; k < m->rounds[i].n; k++)
                if (m->rounds[i].clients[k] == client) return m->rounds[i].weights[k];
    return 0;
}

int loom_unlearn_restart(int first, int keep) {
    if (first <= 1 || keep <= 0) return 1;
    return 1 + keep * ((first - 1) / keep);
}

int loom_unlearn_keeps_start(int round, int keep) { return keep > 0 && round > 1 && (round - 1) % keep == 0; }

int loom_unlearn_keeps_updates(int round, int keep) { return keep > 0 && round >= 1 && (round - 1) % keep == 0; }

int loom_unlearn_start_path(char *buf, size_t n, const char *run_dir, int round) {
    int k = snprintf(buf, n, "%s/unlearn/start_%06d.safetensors", run_dir, round);
    return k < 0 || (size_t)k >= n ? loom_error(LOOM_EINVAL, "path under %s too long", run_dir) : LOOM_OK;
}

int loom_unlearn_update_path(char *buf, size_t n, const char *run_dir, int round, int client) {
    int k = snprintf(buf, n, "%s/unlearn/updates/r%06d_c%06d.safetensors", run_dir, round, client);
    return k < 0 || (size_t)k >= n ? loom_error(LOOM_EINVAL, "path under %s too long", run_dir) : LOOM_OK;
}

int loom_unlearn_mkdirs(const char *run_dir, int updates) {
    char p[4096];
    for (int pass = 0; pass < 1 + (updates != 0); pass++) {
        int k = snprintf(p, sizeof p, pass ? "%s/unlearn/updates" : "%s/unlearn", run_dir);
        if (k < 0 || (size_t)k >= sizeof p) return loom_error(LOOM_EINVAL, "path under %s too long", run_dir);
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return loom_error(LOOM_EIO, "cannot create %s: %s", p, strerror(errno));
    }
    return LOOM_OK;
}

int loom_unlearn_update_write(const char *path, int round, int client, const float *u, size_t dim) {
    loom_st_writer *w;
    int rc = loom_st_writer_create(&w);
    if (rc != LOOM_OK) return rc;
    char v[32];
    int64_t shape[1] = {(int64_t)dim};
    rc = loom_st_writer_add(w, "update", LOOM_DT_F32, 1, shape, u);
    snprintf(v, sizeof v, "%d", round);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "round", v);
    snprintf(v, sizeof v, "%d", client);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "client", v);
    if (rc == LOOM_OK) rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    return rc;
}

int loom_unlearn_update_read(const char *path, int round, int client, float *u, size_t dim) {
    struct stat st;
    if (stat(path, &st) != 0) return LOOM_ENOTFOUND;
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    const loom_st_tensor *t = loom_st_find(f, "update");
    const char *mr = loom_st_meta(f, "round"), *mc = loom_st_meta(f, "client");
    char want_r[32], want_c[32];
    snprintf(want_r, sizeof want_r, "%d", round);
    snprintf(want_c, sizeof want_c, "%d", client);
    if (!t || t->numel != dim)
        rc = loom_error(LOOM_EFORMAT, "%s: tensor \"update\" of %zu values expected (%s)", path, dim,
                        t ? "other length" : "absent");
    else if (!mr || !mc || strcmp(mr, want_r) || strcmp(mc, want_c))
        rc = loom_error(LOOM_EFORMAT, "%s: holds round %s client %s, expected round %d client %d", path,
                        mr ? mr : "?", mc ? mc : "?", round, client);
    else if ((rc = loom_st_to_f32(t, u, dim)) == LOOM_OK) {
        for (size_t i = 0; i < dim; i++)
            if (!isfinite(u[i])) {
                rc = loom_error(LOOM_EFORMAT, "%s: value %zu is not finite", path, i);
                break;
            }
    }
    loom_st_close(f);
    return rc;
}

void loom_unlearn_calibrate(float *fresh, const float *stored, size_t dim) {
    double ns = 0, nf = 0;
    for (size_t i = 0; i < dim; i++) {
        ns += (double)stored[i] * stored[i];
        nf += (double)fresh[i] * fresh[i];
    }
    if (nf == 0) return;
    double s = sqrt(ns) / sqrt(nf);
    for (size_t i = 0; i < dim; i++) fresh[i] = (float)(fresh[i] * s);
}

int loom_unlearn_distance(const char *path_a, const char *path_b, double *dist) {
    loom_st_file *a = NULL, *b = NULL;
    int rc = loom_st_open(&a, path_a);
    if (rc == LOOM_OK) rc = loom_st_open(&b, path_b);
    double s = 0;
    float *x = NULL, *y = NULL;
    for (size_t i = 0; rc == LOOM_OK && i < loom_st_count(a); i++) {
        const loom_st_tensor *ta = loom_st_at(a, i), *tb = loom_st_find(b, ta->name);
        if (!tb || tb->numel != ta->numel) {
            rc = loom_error(LOOM_EINVAL, "tensor %s of %s is %s in %s", ta->name, path_a, tb ? "of another size" : "absent",
                            path_b);
            break;
        }
        x = malloc((ta->numel ? ta->numel : 1) * sizeof *x);
        y = malloc((ta->numel ? ta->numel : 1) * sizeof *y);
        if (!x || !y) rc = loom_error(LOOM_ENOMEM, "out of memory");
        if (rc == LOOM_OK) rc = loom_st_to_f32(ta, x, ta->numel);
        if (rc == LOOM_OK) rc = loom_st_to_f32(tb, y, tb->numel);
        for (size_t k = 0; rc == LOOM_OK && k < ta->numel; k++) s += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
        free(x);
        free(y);
        x = y = NULL;
    }
    if (rc == LOOM_OK && loom_st_count(a) != loom_st_count(b))
        rc = loom_error(LOOM_EINVAL, "%s and %s hold different tensors (%zu and %zu)", path_a, path_b, loom_st_count(a),
                        loom_st_count(b));
    loom_st_close(a);
    loom_st_close(b);
    if (rc == LOOM_OK) *dist = sqrt(s);
    return rc;
}
