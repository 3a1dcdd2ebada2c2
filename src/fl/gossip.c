/* Gossip averaging: topologies, Metropolis-Hastings mixing, push-sum (include/loom/gossip.h). */
#include "loom/gossip.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/streams.h"

struct loom_topology {
    int n;
    int directed;
    int *out_start, *out; /* CSR: out-neighbours of i are out[out_start[i] .. out_start[i + 1]) */
    int *in_start, *in;
    size_t m;             /* directed edges */
};

struct loom_mixing {
    int n;
    int *start, *col;
    double *val;
};

void loom_topology_free(loom_topology *t) {
    if (!t) return;
    free(t->out_start);
    free(t->out);
    free(t->in_start);
    free(t->in);
    free(t);
}

typedef struct {
    int a, b;
} edge;

static int edge_cmp(const void *x, const void *y) {
    const edge *p = x, *q = y;
    if (p->a != q->a) return p->a < q->a ? -1 : 1;
    return p->b < q->b ? -1 : p->b > q->b;
}

/* CSR lists from directed edges e[0..m) (sorted and deduplicated here). */
static int csr(int n, edge *e, size_t m, int by_b, int **start, int **list) {
    if (by_b)
        for (size_t k = 0; k < m; k++) {
            int t = e[k].a;
            e[k].a = e[k].b;
            e[k].b = t;
        }
    qsort(e, m, sizeof *e, edge_cmp);
    *start = calloc((size_t)n + 1, sizeof **start);
    *list = malloc((m ? m : 1) * sizeof **list);
    if (!*start || !*list) return loom_error(LOOM_ENOMEM, "out of memory for a topology of %zu edges", m);
    for (size_t k = 0; k < m; k++) {
        (*start)[e[k].a + 1]++;
        (*list)[k] = e[k].b;
    }
    for (int i = 0; i < n; i++) (*start)[i + 1] += (*start)[i];
    if (by_b)
        for (size_t k = 0; k < m; k++) {
            int t = e[k].a;
            e[k].a = e[k].b;
            e[k].b = t;
        }
    return LOOM_OK;
}

/* Builds t from directed edges (owned by the caller, reordered here). */
static int build(loom_topology **out, int n, edge *e, size_t m) {
    *out = NULL;
    qsort(e, m, sizeof *e, edge_cmp);
    size_t u = 0; /* dedupe */
    for (size_t k = 0; k < m; k++)
        if (u == 0 || e[k].a != e[u - 1].a || e[k].b != e[u - 1].b) e[u++] = e[k];
    m = u;
    loom_topology *t = calloc(1, sizeof *t);
    if (!t) return loom_error(LOOM_ENOMEM, "out of memory");
    t->n = n;
    t->m = m;
    int rc = csr(n, e, m, 0, &t->out_start, &t->out);
    if (rc == LOOM_OK) rc = csr(n, e, m, 1, &t->in_start, &t->in);
    if (rc != LOOM_OK) {
        loom_topology_free(t);
        return rc;
    }
    /* directed when some edge a -> b has no b -> a: compare the sorted out- and in-lists */
    for (int i = 0; i < n && !t->directed; i++) {
        int no = t->out_start[i + 1] - t->out_start[i], ni = t->in_start[i + 1] - t->in_start[i];
        if (no != ni || memcmp(t->out + t->out_start[i], t->in + t->in_start[i], (size_t)no * sizeof(int)))
            t->directed = 1;
    }
    *out = t;
    return LOOM_OK;
}

static int check_n(int n) {
    if (n < 1 || n > LOOM_TOPOLOGY_MAX_PEERS)
        return loom_error(LOOM_EINVAL, "a topology needs 1 to %d peers, not %d", LOOM_TOPOLOGY_MAX_PEERS, n);
    return LOOM_OK;
}

int loom_topology_from_edges(loom_topology **t, int n, const int *a, const int *b, size_t m, int directed) {
    *t = NULL;
    int rc = check_n(n);
    if (rc != LOOM_OK) return rc;
    size_t cap = directed ? m : 2 * m;
    edge *e = malloc((cap ? cap : 1) * sizeof *e);
    if (!e) return loom_error(LOOM_ENOMEM, "out of memory for %zu edges", m);
    size_t k = 0;
    for (size_t i = 0; i < m; i++) {
        if (a[i] < 0 || a[i] >= n || b[i] < 0 || b[i] >= n) {
            free(e);
            return loom_error(LOOM_EINVAL, "edge %zu (%d, %d): peer ids must be in [0, %d)", i, a[i], b[i], n);
        }
        if (a[i] == b[i]) {
            free(e);
            return loom_error(LOOM_EINVAL, "edge %zu (%d, %d) is a self-loop", i, a[i], b[i]);
        }
        e[k++] = (edge){a[i], b[i]};
        if (!directed) e[k++] = (edge){b[i], a[i]};
    }
    rc = build(t, n, e, k);
    free(e);
    return rc;
}

int loom_topology_ring(loom_topology **t, int n) {
    *t = NULL;
    int rc = check_n(n);
    if (rc != LOOM_OK) return rc;
    int m = n > 1 ? n : 0;
    int *a = malloc((size_t)(m ? m : 1) * sizeof *a), *b = malloc((size_t)(m ? m : 1) * sizeof *b);
    if (!a || !b) rc = loom_error(LOOM_ENOMEM, "out of memory");
    for (int i = 0; rc == LOOM_OK && i < m; i++) a[i] = i, b[i] = (i + 1) % n;
    if (rc == LOOM_OK) rc = loom_topology_from_edges(t, n, a, b, (size_t)m, 0);
    free(a);
    free(b);
    return rc;
}

int loom_topology_full(loom_topology **t, int n) {
    *t = NULL;
    int rc = check_n(n);
    if (rc != LOOM_OK) return rc;
    if (n > 20000) return loom_error(LOOM_EINVAL, "a full topology of %d peers has too many edges (at most 20000 peers)", n);
    size_t m = (size_t)n * (size_t)(n - 1) / 2, k = 0;
    int *a = malloc((m ? m : 1) * sizeof *a), *b = malloc((m ? m : 1) * sizeof *b);
    if (!a || !b) rc = loom_error(LOOM_ENOMEM, "out of memory for %zu edges", m);
    for (int i = 0; rc == LOOM_OK && i < n; i++)
        for (int j = i + 1; j < n; j++) a[k] = i, b[k++] = j;
    if (rc == LOOM_OK) rc = loom_topology_from_edges(t, n, a, b, m, 0);
    free(a);
    free(b);
    return rc;
}

/* ---- random k-regular: a relabelled circulant graph randomised by double-edge swaps ---- */

static int adj_has(const int *adj, int k, int u, int v) {
    for (int x = 0; x < k; x++)
        if (adj[(size_t)u * k + x] == v) return 1;
    return 0;
}

static void adj_replace(int *adj, int k, int u, int from, int to) {
    for (int x = 0; x < k; x++)
        if (adj[(size_t)u * k + x] == from) {
            adj[(size_t)u * k + x] = to;
            return;
        }
}

int loom_topology_kregular(loom_topology **t, int n, int k, uint64_t seed) {
    *t = NULL;
    int rc = check_n(n);
    if (rc != LOOM_OK) return rc;
    if (k < 1 || k >= n)
        return loom_error(LOOM_EINVAL, "kregular:%d with %d peers: K must be in [1, %d]", k, n, n - 1);
    if (((long long)n * k) % 2)
        return loom_error(LOOM_EINVAL, "kregular:%d with %d peers: n K must be even (an odd K needs an even number of peers)", k, n);
    if ((long long)n * k > 200000000LL) return loom_error(LOOM_EINVAL, "kregular:%d with %d peers: too many edges", k, n);
    size_t m = (size_t)n * (size_t)k / 2;
    edge *e = malloc(m * sizeof *e);
    int *adj = malloc((size_t)n * (size_t)k * sizeof *adj);
    int *deg = malloc((size_t)n * sizeof *deg);
    uint32_t *perm = malloc((size_t)n * sizeof *perm);
    if (!e || !adj || !deg || !perm) rc = loom_error(LOOM_ENOMEM, "out of memory for kregular:%d over %d peers", k, n);
    for (int attempt = 1; rc == LOOM_OK; attempt++) {
        if (attempt > 100) {
            rc = loom_error(LOOM_EINVAL, "kregular:%d with %d peers: no connected draw in 100 attempts (raise K)", k, n);
            break;
        }
        loom_rng r;
        loom_rng_init(&r, seed, loom_hash2(LOOM_STREAM_GOSSIP_GRAPH, (uint64_t)attempt));
        for (int i = 0; i < n; i++) perm[i] = (uint32_t)i;
        loom_rng_shuffle_u32(&r, perm, (size_t)n);
        size_t q = 0;
        for (int i = 0; i < n; i++) {
            for (int d = 1; d <= k / 2; d++) e[q++] = (edge){(int)perm[i], (int)perm[(i + d) % n]};
            if (k % 2 && i < n / 2) e[q++] = (edge){(int)perm[i], (int)perm[i + n / 2]};
        }
        memset(deg, 0, (size_t)n * sizeof *deg);
        for (size_t x = 0; x < m; x++) {
            adj[(size_t)e[x].a * k + deg[e[x].a]++] = e[x].b;
            adj[(size_t)e[x].b * k + deg[e[x].b]++] = e[x].a;
        }
        for (size_t s = 0; s < 10 * m && m >= 2; s++) {
            size_t x = loom_rng_u64(&r) % m, y = loom_rng_u64(&r) % m;
            if (x == y) continue;
            int a = e[x].a, b = e[x].b, c = e[y].a, d = e[y].b;
            if (loom_rng_u64(&r) & 1) { /* (a, b), (c, d) -> (a, d), (c, b) or (a, c), (b, d) */
                int tmp = c;
                c = d;
                d = tmp;
            }
            /* new edges (a, d) and (c, b) */
            if (a == d || c == b || adj_has(adj, k, a, d) || adj_has(adj, k, c, b)) continue;
            adj_replace(adj, k, a, b, d);
            adj_replace(adj, k, b, a, c);
            adj_replace(adj, k, c, d, b);
            adj_replace(adj, k, d, c, a);
            e[x] = (edge){a, d};
            e[y] = (edge){c, b};
        }
        int *ea = malloc(m * sizeof *ea), *eb = malloc(m * sizeof *eb);
        if (!ea || !eb) {
            free(ea);
            free(eb);
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            break;
        }
        for (size_t x = 0; x < m; x++) ea[x] = e[x].a, eb[x] = e[x].b;
        rc = loom_topology_from_edges(t, n, ea, eb, m, 0);
        free(ea);
        free(eb);
        if (rc != LOOM_OK) break;
        if (loom_topology_check_connected(*t) == LOOM_OK) break;
        loom_topology_free(*t);
        *t = NULL;
    }
    free(e);
    free(adj);
    free(deg);
    free(perm);
    return rc;
}

/* ---- edge-list files ---- */

int loom_topology_load(loom_topology **t, const char *path, int n) {
    *t = NULL;
    int rc = check_n(n);
    if (rc != LOOM_OK) return rc;
    FILE *f = fopen(path, "rb");
    if (!f) return loom_error(LOOM_ENOTFOUND, "%s: cannot open the topology file: %s", path, strerror(errno));
    size_t cap = 64, m = 0, bytes = 0;
    int *a = malloc(cap * sizeof *a), *b = malloc(cap * sizeof *b);
    int directed = 0, any_edge = 0;
    char line[512];
    long ln = 0;
    if (!a || !b) rc = loom_error(LOOM_ENOMEM, "out of memory");
    while (rc == LOOM_OK && fgets(line, sizeof line, f)) {
        ln++;
        size_t len = strlen(line);
        bytes += len;
        if (bytes > LOOM_TOPOLOGY_MAX_BYTES) {
            rc = loom_error(LOOM_ERANGE, "%s:%ld: the topology file is larger than %u bytes", path, ln,
                            LOOM_TOPOLOGY_MAX_BYTES);
            break;
        }
        if (len == sizeof line - 1 && line[len - 1] != '\n' && !feof(f)) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: line longer than %zu bytes", path, ln, sizeof line - 2);
            break;
        }
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *s = line;
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
        if (!*s) continue;
        if (!strncmp(s, "directed", 8)) {
            char *z = s + 8;
            while (*z == ' ' || *z == '\t' || *z == '\r' || *z == '\n') z++;
            if (*z || any_edge) {
                rc = loom_error(LOOM_EFORMAT, "%s:%ld: 'directed' must be alone on a line before the first edge", path, ln);
                break;
            }
            directed = 1;
            continue;
        }
        long x, y;
        char *end;
        errno = 0;
        x = strtol(s, &end, 10);
        if (end == s || errno) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: expected an edge 'A B' (two peer ids), got '%s'", path, ln, s);
            break;
        }
        s = end;
        y = strtol(s, &end, 10);
        if (end == s || errno) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: expected an edge 'A B' (two peer ids)", path, ln);
            break;
        }
        s = end;
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
        if (*s) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: unexpected '%s' after the edge %ld %ld", path, ln, s, x, y);
            break;
        }
        if (x < 0 || x >= n || y < 0 || y >= n) {
            rc = loom_error(LOOM_ERANGE, "%s:%ld: edge %ld %ld: peer ids must be in [0, %d) (%d peers)", path, ln, x, y,
                            n, n);
            break;
        }
        if (x == y) {
            rc = loom_error(LOOM_EFORMAT, "%s:%ld: edge %ld %ld is a self-loop", path, ln, x, y);
            break;
        }
        if (m == cap) {
            cap *= 2;
            int *na = realloc(a, cap * sizeof *a);
            if (na) a = na;
            int *nb = realloc(b, cap * sizeof *b);
            if (nb) b = nb;
            if (!na || !nb) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
        }
        a[m] = (int)x;
        b[m++] = (int)y;
        any_edge = 1;
    }
    if (rc == LOOM_OK && ferror(f)) rc = loom_error(LOOM_EIO, "%s: read error", path);
    fclose(f);
    if (rc == LOOM_OK) {
        rc = loom_topology_from_edges(t, n, a, b, m, directed);
        if (rc != LOOM_OK) rc = loom_error_context(rc, "%s", path);
    }
    free(a);
    free(b);
    return rc;
}

int loom_topology_parse(loom_topology **t, const char *spec, int n, uint64_t seed, const char *flag) {
    *t = NULL;
    int rc;
    if (!spec || !*spec) return loom_error(LOOM_EINVAL, "%s: empty topology (ring, kregular:K, full or a file)", flag);
    if (!strcmp(spec, "ring")) rc = loom_topology_ring(t, n);
    else if (!strcmp(spec, "full")) rc = loom_topology_full(t, n);
    else if (!strncmp(spec, "kregular", 8)) {
        char *end;
        long k = spec[8] == ':' ? strtol(spec + 9, &end, 10) : -1;
        if (spec[8] != ':' || end == spec + 9 || *end || k < 1 || k > LOOM_TOPOLOGY_MAX_PEERS)
            return loom_error(LOOM_EINVAL, "%s '%s': expected kregular:K with K a positive integer", flag, spec);
        rc = loom_topology_kregular(t, n, (int)k, seed);
    } else rc = loom_topology_load(t, spec, n);
    if (rc != LOOM_OK) rc = loom_error_context(rc, "%s %s", flag, spec);
    return rc;
}

int loom_topology_n(const loom_topology *t) { return t->n; }
int loom_topology_directed(const loom_topology *t) { return t->directed; }
size_t loom_topology_edges(const loom_topology *t) { return t->m; }

const int *loom_topology_out(const loom_topology *t, int i, int *count) {
    *count = t->out_start[i + 1] - t->out_start[i];
    return t->out + t->out_start[i];
}

const int *loom_topology_in(const loom_topology *t, int i, int *count) {
    *count = t->in_start[i + 1] - t->in_start[i];
    return t->in + t->in_start[i];
}

/* peers reached from 0 along out-edges (in = 0) or in-edges (in = 1): marks seen[], returns the count */
static int reach(const loom_topology *t, int from, int use_in, char *seen, int *stack) {
    memset(seen, 0, (size_t)t->n);
    int top = 0, count = 1;
    stack[top++] = from;
    seen[from] = 1;
    while (top) {
        int u = stack[--top], c;
        const int *nb = use_in ? loom_topology_in(t, u, &c) : loom_topology_out(t, u, &c);
        for (int x = 0; x < c; x++)
            if (!seen[nb[x]]) {
                seen[nb[x]] = 1;
                stack[top++] = nb[x];
                count++;
            }
    }
    return count;
}

int loom_topology_check_connected(const loom_topology *t) {
    int n = t->n;
    char *seen = malloc((size_t)n);
    int *stack = malloc((size_t)n * sizeof *stack);
    if (!seen || !stack) {
        free(seen);
        free(stack);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    int rc = LOOM_OK;
    for (int dir = 0; dir < 2 && rc == LOOM_OK; dir++) {
        if (reach(t, 0, dir, seen, stack) == n) continue;
        int lost = 0;
        while (seen[lost]) lost++;
        if (!t->directed) { /* count the components */
            int comps = 1;
            char *all = calloc((size_t)n, 1);
            for (int i = 0; all && i < n; i++) all[i] = seen[i];
            for (int i = 0; all && i < n; i++)
                if (!all[i]) {
                    comps++;
                    reach(t, i, 0, seen, stack);
                    for (int j = 0; j < n; j++) all[j] |= seen[j];
                }
            free(all);
            rc = loom_error(LOOM_EINVAL, "the topology is disconnected: %d components (peer %d cannot reach peer 0); gossip "
                            "cannot reach the average", comps, lost);
        } else
            rc = loom_error(LOOM_EINVAL, "the topology is not strongly connected: peer %d %s peer 0; push-sum cannot "
                            "reach the average", lost, dir == 0 ? "cannot be reached from" : "cannot reach");
    }
    free(seen);
    free(stack);
    return rc;
}

/* ---- Metropolis-Hastings weights ---- */

int loom_mixing_metropolis(const loom_topology *t, loom_mixing **out) {
    *out = NULL;
    if (t->directed)
        return loom_error(LOOM_EINVAL, "Metropolis-Hastings weights need an undirected topology (a directed one "
                          "gossips by push-sum)");
    int n = t->n;
    loom_mixing *w = calloc(1, sizeof *w);
    if (!w) return loom_error(LOOM_ENOMEM, "out of memory");
    w->n = n;
    w->start = malloc(((size_t)n + 1) * sizeof *w->start);
    w->col = malloc((t->m + (size_t)n) * sizeof *w->col);
    w->val = malloc((t->m + (size_t)n) * sizeof *w->val);
    if (!w->start || !w->col || !w->val) {
        loom_mixing_free(w);
        return loom_error(LOOM_ENOMEM, "out of memory for the mixing weights");
    }
    size_t q = 0;
    for (int i = 0; i < n; i++) {
        w->start[i] = (int)q;
        int di, dj;
        const int *nb = loom_topology_out(t, i, &di);
        double self = 1.0;
        size_t self_at = 0;
        int placed = 0;
        for (int x = 0; x <= di; x++) {
            if (!placed && (x == di || nb[x] > i)) { /* the diagonal, in column order */
                self_at = q;
                w->col[q++] = i;
                placed = 1;
            }
            if (x == di) break;
            loom_topology_out(t, nb[x], &dj);
            double v = 1.0 / (1.0 + (di > dj ? di : dj));
            w->col[q] = nb[x];
            w->val[q++] = v;
            self -= v;
        }
        w->val[self_at] = self;
    }
    w->start[n] = (int)q;
    *out = w;
    return LOOM_OK;
}

void loom_mixing_free(loom_mixing *w) {
    if (!w) return;
    free(w->start);
    free(w->col);
    free(w->val);
    free(w);
}

void loom_mixing_row(const loom_mixing *w, int i, const int **cols, const double **vals, int *count) {
    *cols = w->col + w->start[i];
    *vals = w->val + w->start[i];
    *count = w->start[i + 1] - w->start[i];
}

double loom_mixing_weight(const loom_mixing *w, int i, int j) {
    for (int q = w->start[i]; q < w->start[i + 1]; q++)
        if (w->col[q] == j) return w->val[q];
    return 0.0;
}

int loom_gossip_mix(const loom_mixing *w, int i, const float *const *x, size_t dim, float *out) {
    if (i < 0 || i >= w->n) return loom_error(LOOM_EINVAL, "gossip: peer %d out of [0, %d)", i, w->n);
    const int *cols;
    const double *vals;
    int c;
    loom_mixing_row(w, i, &cols, &vals, &c);
    for (int q = 0; q < c; q++)
        if (!x[cols[q]]) return loom_error(LOOM_EINVAL, "gossip: peer %d's step misses peer %d's vector", i, cols[q]);
    const size_t blk = 1024;
    double acc[1024];
    for (size_t o = 0; o < dim; o += blk) {
        size_t len = dim - o < blk ? dim - o : blk;
        memset(acc, 0, len * sizeof *acc);
        for (int q = 0; q < c; q++) {
            const float *v = x[cols[q]] + o;
            double wq = vals[q];
            for (size_t k = 0; k < len; k++) acc[k] += wq * (double)v[k];
        }
        for (size_t k = 0; k < len; k++) out[o + k] = (float)acc[k];
    }
    return LOOM_OK;
}

int loom_pushsum_mix(const loom_topology *t, int i, const double *const *s, const double *w, size_t dim,
                     double *s_out, double *w_out) {
    if (i < 0 || i >= t->n) return loom_error(LOOM_EINVAL, "push-sum: peer %d out of [0, %d)", i, t->n);
    int ci, dj;
    const int *in = loom_topology_in(t, i, &ci);
    /* the senders in increasing order, i itself among them */
    int placed = 0;
    double wsum = 0;
    memset(s_out, 0, dim * sizeof *s_out);
    for (int x = 0; x <= ci; x++) {
        int j;
        if (!placed && (x == ci || in[x] > i)) {
            j = i;
            placed = 1;
            x--;
        } else if (x == ci) break;
        else j = in[x];
        if (!s[j]) return loom_error(LOOM_EINVAL, "push-sum: peer %d's step misses peer %d's values", i, j);
        loom_topology_out(t, j, &dj);
        double share = 1.0 / (double)(dj + 1);
        const double *v = s[j];
        for (size_t k = 0; k < dim; k++) s_out[k] += share * v[k];
        wsum += share * w[j];
    }
    *w_out = wsum;
    return LOOM_OK;
}

double loom_consensus_distance(const float *const *x, int n, size_t dim, float *mean) {
    if (n <= 0) return 0.0;
    double total = 0;
    for (size_t k = 0; k < dim; k++) {
        double m = 0;
        for (int i = 0; i < n; i++) m += x[i][k];
        m /= n;
        if (mean) mean[k] = (float)m;
        for (int i = 0; i < n; i++) {
            double d = x[i][k] - m;
            total += d * d;
        }
    }
    return total / n;
}
