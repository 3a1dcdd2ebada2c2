/* Simulated device profiles: a TSV file or the "tiers" distribution (include/loom/hetero.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loom/core.h"
#include "loom/hetero.h"
#include "loom/streams.h"

#define PROFILE_MAX_BYTES ((size_t)64 << 20)
#define PROFILE_MAX_LINE 1024

static void tiers(int n, uint64_t seed, loom_device_profile *out) {
    static const loom_device_profile tier[3] = {
        {0.25, 1024, 2, 0, -1}, {1.0, 4096, 20, 0, -1}, {4.0, 16384, 100, 0, -1}};
    for (int k = 0; k < n; k++) {
        loom_rng r;
        loom_rng_init(&r, seed, loom_hash2(LOOM_STREAM_PROFILE, (uint64_t)k));
        double u = loom_rng_uniform(&r);
        out[k] = tier[u < 0.5 ? 0 : u < 0.8 ? 1 : 2];
    }
}

/* Splits line into at most max fields at tabs and spaces. */
static int fields(char *line, char **f, int max) {
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " \t\r", &save); t; t = strtok_r(NULL, " \t\r", &save)) {
        if (n == max) return max + 1;
        f[n++] = t;
    }
    return n;
}

static int num(const char *s, double *v) {
    char *end;
    *v = strtod(s, &end);
    return end != s && !*end && isfinite(*v);
}

int loom_profile_load(const char *spec, int n_clients, uint64_t seed, loom_device_profile *out) {
    if (!spec || !*spec) return loom_error(LOOM_EINVAL, "--profile: empty");
    if (n_clients < 1 || n_clients > LOOM_HETERO_MAX_CLIENTS)
        return loom_error(LOOM_EINVAL, "--profile: %d clients (1..%d)", n_clients, LOOM_HETERO_MAX_CLIENTS);
    if (!strcmp(spec, "tiers")) {
        tiers(n_clients, seed, out);
        return LOOM_OK;
    }
    struct stat st;
    if (stat(spec, &st) != 0) return loom_error(LOOM_EIO, "--profile %s: cannot read the file", spec);
    if ((size_t)st.st_size > PROFILE_MAX_BYTES)
        return loom_error(LOOM_ERANGE, "--profile %s: %lld bytes, more than the %zu MiB limit", spec,
                          (long long)st.st_size, PROFILE_MAX_BYTES >> 20);
    char *text = NULL;
    size_t len = 0;
    int rc = loom_read_file(spec, &text, &len);
    if (rc != LOOM_OK) return loom_error(rc, "--profile %s: cannot read the file", spec);
    static const char *cols[6] = {"client", "speed", "memory_mb", "bandwidth_mbps", "rank", "layers"};
    int ncol = 0, next = 0, line_no = 0;
    char *p = text;
    while (rc == LOOM_OK && *p) {
        char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        line_no++;
        if (n >= PROFILE_MAX_LINE) {
            rc = loom_error(LOOM_EFORMAT, "%s:%d: line longer than %d bytes", spec, line_no, PROFILE_MAX_LINE);
            break;
        }
        char line[PROFILE_MAX_LINE];
        memcpy(line, p, n);
        line[n] = 0;
        p = nl ? nl + 1 : p + n;
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *f[7];
        int nf = fields(line, f, 6);
        if (nf == 0) continue;
        if (nf > 6) {
            rc = loom_error(LOOM_EFORMAT, "%s:%d: more than 6 columns", spec, line_no);
            break;
        }
        if (!ncol) { /* the header */
            if (nf < 4) {
                rc = loom_error(LOOM_EFORMAT, "%s:%d: the header must name at least client, speed, memory_mb and "
                                "bandwidth_mbps (got %d columns)", spec, line_no, nf);
                break;
            }
            for (int i = 0; i < nf && rc == LOOM_OK; i++)
                if (strcmp(f[i], cols[i]))
                    rc = loom_error(LOOM_EFORMAT, "%s:%d: column %d of the header is '%s', expected '%s' (columns: "
                                    "client speed memory_mb bandwidth_mbps [rank] [layers])", spec, line_no, i + 1, f[i],
                                    cols[i]);
            ncol = nf;
            continue;
        }
        if (nf != ncol) {
            rc = loom_error(LOOM_EFORMAT, "%s:%d: %d columns, the header has %d", spec, line_no, nf, ncol);
            break;
        }
        double v[6] = {0, 0, 0, 0, 0, -1};
        for (int i = 0; i < nf && rc == LOOM_OK; i++) {
            if (i >= 4 && !strcmp(f[i], "-")) continue;
            if (!num(f[i], &v[i]))
                rc = loom_error(LOOM_EFORMAT, "%s:%d: %s '%s' is not a number", spec, line_no, cols[i], f[i]);
        }
        if (rc != LOOM_OK) break;
        if (v[0] != (double)next) {
            rc = loom_error(LOOM_EFORMAT, "%s:%d: client %s, expected client %d (one line per client, in order)", spec,
                            line_no, f[0], next);
        } else if (next >= n_clients) {
            rc = loom_error(LOOM_EFORMAT, "%s:%d: client %d, but the run has %d clients", spec, line_no, next, n_clients);
        } else if (!(v[1] > 0 && v[1] <= 1e6)) {
            rc = loom_error(LOOM_ERANGE, "%s:%d: speed %s must be in (0, 1e6]", spec, line_no, f[1]);
        } else if (!(v[2] > 0 && v[2] <= 1e9)) {
            rc = loom_error(LOOM_ERANGE, "%s:%d: memory_mb %s must be in (0, 1e9]", spec, line_no, f[2]);
        } else if (!(v[3] >= 0 && v[3] <= 1e9)) {
            rc = loom_error(LOOM_ERANGE, "%s:%d: bandwidth_mbps %s must be in [0, 1e9]", spec, line_no, f[3]);
        } else if (v[4] != floor(v[4]) || v[4] < 0 || v[4] > 1024) {
            rc = loom_error(LOOM_ERANGE, "%s:%d: rank %s must be a whole number in 1..1024", spec, line_no, f[4]);
        } else if (v[5] != floor(v[5]) || v[5] < -1 || v[5] > 100000) {
            rc = loom_error(LOOM_ERANGE, "%s:%d: layers %s must be a whole number >= 0", spec, line_no, f[5]);
        } else {
            out[next++] = (loom_device_profile){v[1], v[2], v[3], (int)v[4], (int)v[5]};
        }
    }
    free(text);
    if (rc == LOOM_OK && !ncol) rc = loom_error(LOOM_EFORMAT, "%s: no header line (client speed memory_mb "
                                                "bandwidth_mbps [rank] [layers])", spec);
    if (rc == LOOM_OK && next < n_clients)
        rc = loom_error(LOOM_EFORMAT, "%s: %d client lines, the run has %d clients", spec, next, n_clients);
    return rc;
}

static double max_memory(const loom_device_profile *p, int n) {
    double m = 0;
    for (int k = 0; k < n; k++) m = fmax(m, p[k].memory_mb);
    return m;
}

int loom_profile_ranks(const loom_device_profile *p, int n_clients, int r_max, int *ranks) {
    double mx = max_memory(p, n_clients);
    for (int k = 0; k < n_clients; k++) {
        if (p[k].rank > 0) {
            if (p[k].rank > r_max)
                return loom_error(LOOM_ERANGE, "--profile: client %d has rank %d, above --lora-r %d", k, p[k].rank, r_max);
            ranks[k] = p[k].rank;
        } else {
            int r = (int)floor(r_max * p[k].memory_mb / mx);
            ranks[k] = r < 1 ? 1 : r > r_max ? r_max : r;
        }
    }
    return LOOM_OK;
}

int loom_profile_layers(const loom_device_profile *p, int n_clients, int n_layers, int *layers) {
    double mx = max_memory(p, n_clients);
    for (int k = 0; k < n_clients; k++) {
        if (p[k].layers >= 0) {
            layers[k] = p[k].layers;
        } else {
            int l = (int)floor(n_layers * p[k].memory_mb / mx);
            layers[k] = l < 1 ? 1 : l > n_layers ? n_layers : l;
        }
    }
    return LOOM_OK;
}
