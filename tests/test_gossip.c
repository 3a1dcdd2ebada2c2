/* Gossip averaging on hand-built graphs: Metropolis-Hastings weights against hand-computed values,
 * convergence of repeated gossip to the exact average at the rate of the second eigenvalue, push-sum on a
 * directed graph, disconnected graphs refused, edge-list files and their errors, random k-regular graphs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/gossip.h"
#include "test.h"

static char tmpdir[512];

static const char *write_tmp(const char *name, const char *text) {
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_mh_hand(void) {
    /* 0 - 1, 1 - 2, 2 - 3, 1 - 3: degrees 1, 3, 2, 2 */
    int a[] = {0, 1, 2, 1}, b[] = {1, 2, 3, 3};
    loom_topology *t;
    CHECK_OK(loom_topology_from_edges(&t, 4, a, b, 4, 0));
    CHECK(!loom_topology_directed(t), "an undirected graph");
    CHECK(loom_topology_edges(t) == 8, "%zu directed edges", loom_topology_edges(t));
    loom_mixing *w;
    CHECK_OK(loom_mixing_metropolis(t, &w));
    /* by hand: W_ij = 1 / (1 + max(d_i, d_j)) */
    const double want[4][4] = {{3.0 / 4, 1.0 / 4, 0, 0},
                               {1.0 / 4, 1.0 / 4, 1.0 / 4, 1.0 / 4},
                               {0, 1.0 / 4, 5.0 / 12, 1.0 / 3},
                               {0, 1.0 / 4, 1.0 / 3, 5.0 / 12}};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) CHECK_NEAR(loom_mixing_weight(w, i, j), want[i][j], 1e-15);
    /* one step on unit vectors reproduces the columns */
    float e[4][3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}, {2, -1, 0.5f}};
    const float *x[4] = {e[0], e[1], e[2], e[3]};
    float y[3];
    CHECK_OK(loom_gossip_mix(w, 2, x, 3, y));
    CHECK_NEAR(y[0], 0 + 2 * want[2][3], 1e-7);
    CHECK_NEAR(y[1], want[2][1] - want[2][3], 1e-7);
    CHECK_NEAR(y[2], want[2][2] + 0.5 * want[2][3], 1e-7);
    const float *miss[4] = {e[0], e[1], NULL, e[3]};
    CHECK(loom_gossip_mix(w, 2, miss, 3, y) == LOOM_EINVAL && strstr(loom_errmsg(), "peer 2"), "%s", loom_errmsg());
    loom_mixing_free(w);
    loom_topology_free(t);

    /* the full graph: every weight 1/n (one step is the plain mean) */
    CHECK_OK(loom_topology_full(&t, 5));
    CHECK_OK(loom_mixing_metropolis(t, &w));
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 5; j++) CHECK_NEAR(loom_mixing_weight(w, i, j), 0.2, 1e-15);
    loom_mixing_free(w);
    loom_topology_free(t);
}

/* Ring of 8: MH weights are 1/3 (self, both neighbours), eigenvalues 1/3 + 2/3 cos(2 pi k / 8), so the
 * consensus distance shrinks by at least lambda_2^2 = (1/3 + 2/3 cos(pi/4))^2 a step. */
static void test_ring_converges(void) {
    enum { N = 8, D = 5 };
    loom_topology *t;
    loom_mixing *w;
    CHECK_OK(loom_topology_ring(&t, N));
    CHECK_OK(loom_mixing_metropolis(t, &w));
    CHECK_NEAR(loom_mixing_weight(w, 0, 7), 1.0 / 3, 1e-15);
    CHECK_NEAR(loom_mixing_weight(w, 0, 0), 1.0 / 3, 1e-15);
    static float buf[2][N][D];
    double avg[D] = {0}, sum0[D] = {0};
    uint64_t s = 11;
    for (int i = 0; i < N; i++)
        for (int k = 0; k < D; k++) {
            buf[0][i][k] = (float)(test_normal(&s) * 3 + k);
            sum0[k] += buf[0][i][k];
        }
    for (int k = 0; k < D; k++) avg[k] = sum0[k] / N;
    double lam2 = 1.0 / 3 + 2.0 / 3 * cos(3.14159265358979323846 / 4), rate = lam2 * lam2;
    const float *x[N];
    float mean[D];
    for (int i = 0; i < N; i++) x[i] = buf[0][i];
    double d = loom_consensus_distance(x, N, D, mean), d0 = d;
    CHECK(d > 1, "initial consensus distance %g", d);
    int cur = 0, worst_ok = 1;
    double worst_sum = 0;
    for (int step = 1; step <= 60; step++) {
        for (int i = 0; i < N; i++) x[i] = buf[cur][i];
        for (int i = 0; i < N; i++) CHECK_OK(loom_gossip_mix(w, i, x, D, buf[1 - cur][i]));
        cur = 1 - cur;
        for (int i = 0; i < N; i++) x[i] = buf[cur][i];
        double dn = loom_consensus_distance(x, N, D, mean);
        if (d > 1e-6 && dn > rate * d * (1 + 1e-3)) { /* above float noise */
            worst_ok = 0;
            fprintf(stderr, "step %d: %g -> %g\n", step, d, dn);
        }
        if (step == 20) CHECK(dn > 0.6 * d, "step 20 fell by %g: the rate lambda_2^2 is tight", dn / d);
        d = dn;
        for (int k = 0; k < D; k++) {
            double sk = 0;
            for (int i = 0; i < N; i++) sk += buf[cur][i][k];
            double e = fabs(sk - sum0[k]);
            worst_sum = e > worst_sum ? e : worst_sum;
        }
    }
    CHECK(worst_ok, "the consensus distance fell by less than lambda_2^2 = %g in some step", rate);
    CHECK(d < d0 * 1e-10, "after 60 steps the consensus distance is %g of %g", d, d0);
    CHECK(worst_sum < 1e-4, "the sum moved by %g (float rounding only)", worst_sum);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < D; k++) CHECK_NEAR(buf[cur][i][k], avg[k], 2e-5);
    loom_mixing_free(w);
    loom_topology_free(t);
}

/* Push-sum on a directed graph: 0 -> 1 -> 2 -> 3 -> 0 and 0 -> 2 (column-stochastic, not doubly). */
static void test_pushsum(void) {
    const char *p = write_tmp("dir.txt", "# a directed ring with a chord\ndirected\n0 1\n1 2\n2 3\n3 0\n0 2  # chord\n");
    loom_topology *t;
    CHECK_OK(loom_topology_load(&t, p, 4));
    if (!t) return;
    CHECK(loom_topology_directed(t), "a directed graph");
    CHECK_OK(loom_topology_check_connected(t));
    loom_mixing *w = NULL;
    CHECK(loom_mixing_metropolis(t, &w) == LOOM_EINVAL && strstr(loom_errmsg(), "push-sum"), "%s", loom_errmsg());
    int c;
    const int *in = loom_topology_in(t, 2, &c);
    CHECK(c == 2 && in[0] == 0 && in[1] == 1, "peer 2 hears 0 and 1");
    enum { N = 4, D = 3 };
    static double s[2][N][D], wt[2][N];
    const double x0[N][D] = {{4, 0, 1}, {0, 8, 1}, {-2, 0, 1}, {10, 4, 1}};
    double avg[D] = {0};
    for (int i = 0; i < N; i++) {
        wt[0][i] = 1;
        for (int k = 0; k < D; k++) s[0][i][k] = x0[i][k], avg[k] += x0[i][k] / N;
    }
    /* one step by hand for peer 2: (s_0 / 3 + s_1 / 2 + s_2 / 2), w = 1/3 + 1/2 + 1/2 */
    int cur = 0;
    const double *sp[N];
    for (int step = 0; step < 200; step++) {
        for (int i = 0; i < N; i++) sp[i] = s[cur][i];
        for (int i = 0; i < N; i++) CHECK_OK(loom_pushsum_mix(t, i, sp, wt[cur], D, s[1 - cur][i], &wt[1 - cur][i]));
        if (step == 0) {
            CHECK_NEAR(wt[1][2], 1.0 / 3 + 0.5 + 0.5, 1e-15);
            CHECK_NEAR(s[1][2][0], 4.0 / 3 + 0 - 1, 1e-15);
            CHECK_NEAR(wt[1][0], 1.0 / 3 + 0.5, 1e-15);
        }
        cur = 1 - cur;
        double ws = 0;
        for (int i = 0; i < N; i++) ws += wt[cur][i];
        if (step < 3) CHECK_NEAR(ws, 4.0, 1e-12);
    }
    for (int i = 0; i < N; i++)
        for (int k = 0; k < D; k++) CHECK_NEAR(s[cur][i][k] / wt[cur][i], avg[k], 1e-10);
    loom_topology_free(t);
}

static void test_disconnected_and_files(void) {
    loom_topology *t;
    int a[] = {0, 2, 3}, b[] = {1, 3, 4};
    CHECK_OK(loom_topology_from_edges(&t, 6, a, b, 3, 0)); /* {0,1} {2,3,4} {5} */
    CHECK(loom_topology_check_connected(t) == LOOM_EINVAL && strstr(loom_errmsg(), "3 components"), "%s", loom_errmsg());
    loom_topology_free(t);
    CHECK_OK(loom_topology_from_edges(&t, 3, a, b, 1, 1)); /* 0 -> 1 only */
    CHECK(loom_topology_check_connected(t) == LOOM_EINVAL && strstr(loom_errmsg(), "not strongly connected"), "%s",
          loom_errmsg());
    loom_topology_free(t);
    const char *p = write_tmp("bad1.txt", "0 1\n1 2\n2 9\n");
    CHECK(loom_topology_load(&t, p, 4) == LOOM_ERANGE && strstr(loom_errmsg(), "bad1.txt:3") &&
              strstr(loom_errmsg(), "[0, 4)"), "%s", loom_errmsg());
    p = write_tmp("bad2.txt", "# c\n\n0 1\n1 x\n");
    CHECK(loom_topology_load(&t, p, 4) == LOOM_EFORMAT && strstr(loom_errmsg(), "bad2.txt:4"), "%s", loom_errmsg());
    p = write_tmp("bad3.txt", "0 1\n2 2\n");
    CHECK(loom_topology_load(&t, p, 4) == LOOM_EFORMAT && strstr(loom_errmsg(), "bad3.txt:2: edge 2 2 is a self-loop"),
          "%s", loom_errmsg());
    p = write_tmp("bad4.txt", "0 1\ndirected\n");
    CHECK(loom_topology_load(&t, p, 4) == LOOM_EFORMAT && strstr(loom_errmsg(), "bad4.txt:2"), "%s", loom_errmsg());
    p = write_tmp("bad5.txt", "0 1 2\n");
    CHECK(loom_topology_load(&t, p, 4) == LOOM_EFORMAT && strstr(loom_errmsg(), "bad5.txt:1"), "%s", loom_errmsg());
    CHECK(loom_topology_parse(&t, "kregular:x", 4, 1, "--topology") == LOOM_EINVAL && strstr(loom_errmsg(), "--topology"),
          "%s", loom_errmsg());
    CHECK(loom_topology_parse(&t, "/nonexistent/topo.txt", 4, 1, "--topology") == LOOM_ENOTFOUND &&
              strstr(loom_errmsg(), "/nonexistent/topo.txt"), "%s", loom_errmsg());
    /* an undirected file, repeated edges kept once */
    p = write_tmp("ok.txt", "0 1\n1 0\n1 2\n");
    CHECK_OK(loom_topology_load(&t, p, 3));
    if (t) {
        CHECK(!loom_topology_directed(t) && loom_topology_edges(t) == 4, "%zu edges", loom_topology_edges(t));
        loom_topology_free(t);
    }
    /* ring of 2: one edge; ring of 1: none */
    CHECK_OK(loom_topology_ring(&t, 2));
    CHECK(loom_topology_edges(t) == 2, "ring of 2");
    loom_topology_free(t);
    CHECK_OK(loom_topology_ring(&t, 1));
    CHECK(loom_topology_edges(t) == 0, "ring of 1");
    CHECK_OK(loom_topology_check_connected(t));
    loom_topology_free(t);
}

static void test_kregular(void) {
    loom_topology *t, *u, *v;
    CHECK_OK(loom_topology_kregular(&t, 20, 4, 5));
    CHECK_OK(loom_topology_kregular(&u, 20, 4, 5));
    CHECK_OK(loom_topology_kregular(&v, 20, 4, 6));
    int same_u = 1, same_v = 1, regular = 1;
    for (int i = 0; i < 20; i++) {
        int c, cu, cv, ci;
        const int *o = loom_topology_out(t, i, &c), *ou = loom_topology_out(u, i, &cu), *ov = loom_topology_out(v, i, &cv);
        loom_topology_in(t, i, &ci);
        if (c != 4 || ci != 4) regular = 0;
        for (int x = 0; x < c; x++) if (o[x] == i) regular = 0;
        same_u &= cu == c && !memcmp(o, ou, (size_t)c * sizeof *o);
        same_v &= cv == c && !memcmp(o, ov, (size_t)c * sizeof *o);
    }
    CHECK(regular, "every peer has 4 neighbours, no self-loop");
    CHECK(!loom_topology_directed(t), "undirected");
    CHECK_OK(loom_topology_check_connected(t));
    CHECK(same_u, "the same seed draws the same graph");
    CHECK(!same_v, "another seed draws another graph");
    /* MH on a regular graph: 1/(k+1) everywhere on the row */
    loom_mixing *w;
    CHECK_OK(loom_mixing_metropolis(t, &w));
    for (int i = 0; i < 20; i++) {
        double row = 0, col = 0;
        for (int j = 0; j < 20; j++) row += loom_mixing_weight(w, i, j), col += loom_mixing_weight(w, j, i);
        CHECK_NEAR(row, 1, 1e-12);
        CHECK_NEAR(col, 1, 1e-12);
        CHECK_NEAR(loom_mixing_weight(w, i, i), 0.2, 1e-12);
    }
    loom_mixing_free(w);
    loom_topology_free(t);
    loom_topology_free(u);
    loom_topology_free(v);
    CHECK_OK(loom_topology_kregular(&t, 10, 3, 1)); /* odd K, even n */
    int c;
    loom_topology_out(t, 9, &c);
    CHECK(c == 3, "kregular:3 degree %d", c);
    loom_topology_free(t);
    CHECK(loom_topology_kregular(&t, 9, 3, 1) == LOOM_EINVAL && strstr(loom_errmsg(), "even"), "%s", loom_errmsg());
    CHECK(loom_topology_kregular(&t, 5, 5, 1) == LOOM_EINVAL && strstr(loom_errmsg(), "[1, 4]"), "%s", loom_errmsg());
}

int main(void) {
    test_tmpdir(tmpdir, sizeof tmpdir);
    test_mh_hand();
    test_ring_converges();
    test_pushsum();
    test_disconnected_and_files();
    test_kregular();
    test_rmtree(tmpdir);
    return test_summary();
}
