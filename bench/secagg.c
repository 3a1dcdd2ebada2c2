/* Secure aggregation's cost (include/loom/secagg.h): client time, server time and bytes per client for
 * n = 10, 50, 100 clients and a 294,912-float update (a LoRA set), with the complete graph (SecAgg) and
 * with k ~ 2 log2 n neighbours (SecAgg+), beside plain aggregation (the server's fixed-point pipeline
 * summing n f32 updates, and a bare float sum). One thread throughout: the clients run one after the
 * other and their time is divided by n. Also: the server's time when 10% of the clients drop before
 * sending their masked input (their pairwise masks must then be regenerated), and the communication
 * expansion at Bonawitz et al.'s 2^10 clients x 2^20 values of 16 bits, computed from the message
 * sizes (the layout in src/privacy/secagg.c), checked here against the measured messages.
 *
 *   secagg [--dim D] [--n N[,N...]] [--no-drop] [--threads T]
 * --threads T lets the server's unmasking and the plain pipeline use T threads (default 1).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/pipeline.h"
#include "loom/secagg.h"

typedef struct {
    double client_s, server_s;     /* client: per client, all phases; server: receive + close + messages + result */
    double up, down;               /* bytes per client */
} cost;

/* Bytes of one client's messages by the layout: header 24; advertise 96; shares (4 + 96) per holder;
 * masked 8 (dim + 1); unmask 48 per holder. Down: roster 100 n; inbox (4 + 96) per holder; survivors 4 n. */
static double up_bytes(double n, double holders, double dim) {
    return 24 + 96 + 24 + 100 * holders + 24 + 8 * (dim + 1) + 24 + 48 * holders;
}
static double down_bytes(double n, double holders) { return 24 + 100 * n + 24 + 100 * holders + 24 + 4 * n; }

static int run(uint32_t n, uint32_t k, size_t dim, int drop_tenth, const float *x, cost *c) {
    loom_secagg_params p;
    loom_secagg_defaults(&p, n, dim);
    p.neighbours = k;
    uint32_t holders = k ? k + 1 : n;
    p.threshold = 2 * holders / 3 + 1;
    p.round = 1;
    p.seed = 42;
    loom_secagg_server *s = NULL;
    loom_secagg_client **cl = calloc(n, sizeof *cl);
    int rc = loom_secagg_server_create(&s, &p);
    double tc = 0, ts = 0, up = 0, down = 0;
    for (uint32_t u = 0; u < n && !rc; u++) {
        uint8_t seed[32] = {(uint8_t)u, (uint8_t)(u >> 8), 1};
        double t0 = loom_now();
        rc = loom_secagg_client_create(&cl[u], &p, u, seed);
        tc += loom_now() - t0;
    }
    uint32_t ndrop = drop_tenth ? n / 10 : 0;
    for (int ph = 0; ph < 4 && !rc; ph++) {
        for (uint32_t u = 0; u < n && !rc; u++) {
            if (ph == 2 && u < ndrop) continue; /* dropped after sharing */
            if (ph == 3 && u < ndrop) continue;
            loom_secagg_buf in = {0}, out = {0};
            double t0 = loom_now();
            if (ph > 0) rc = loom_secagg_server_message(s, (loom_secagg_phase)(ph - 1), u, &in);
            double t1 = loom_now();
            if (!rc) {
                if (ph == 0) rc = loom_secagg_client_advertise(cl[u], &out);
                if (ph == 1) rc = loom_secagg_client_share(cl[u], in.data, in.len, &out);
                if (ph == 2) rc = loom_secagg_client_mask(cl[u], in.data, in.len, x + (size_t)(u % 4) * dim, 1 + u, &out);
                if (ph == 3) rc = loom_secagg_client_unmask(cl[u], in.data, in.len, &out);
            }
            double t2 = loom_now();
            if (!rc) rc = loom_secagg_server_receive(s, (loom_secagg_phase)ph, u, out.data, out.len);
            double t3 = loom_now();
            tc += t2 - t1;
            ts += (t1 - t0) + (t3 - t2);
            if (u == n - 1) { /* a client that never drops */
                up += (double)out.len;
                down += (double)in.len;
            }
            loom_secagg_buf_free(&in);
            loom_secagg_buf_free(&out);
        }
        double t0 = loom_now();
        if (!rc) rc = loom_secagg_server_close(s, (loom_secagg_phase)ph);
        ts += loom_now() - t0;
    }
    double *sum = malloc(dim * sizeof *sum);
    uint64_t tw;
    uint32_t nin;
    double t0 = loom_now();
    if (!rc) rc = loom_secagg_server_result(s, sum, &tw, &nin, NULL);
    ts += loom_now() - t0;
    if (!rc && (nin != n - ndrop || fabs(sum[0] - 0) > 1e300)) rc = loom_error(LOOM_ESTATE, "bench: wrong result");
    for (uint32_t u = 0; u < n; u++) loom_secagg_client_free(cl[u]);
    free(cl);
    free(sum);
    loom_secagg_server_free(s);
    c->client_s = tc / n;
    c->server_s = ts;
    c->up = up;
    c->down = down;
    if (!rc && !drop_tenth && (up != up_bytes(n, holders, (double)dim) || down != down_bytes(n, holders)))
        rc = loom_error(LOOM_ESTATE, "bench: message sizes %g up, %g down differ from the layout's %g, %g", up, down,
                        up_bytes(n, holders, (double)dim), down_bytes(n, holders));
    return rc;
}

/* Plain aggregation of n f32 updates: the pipeline (validate, fixed-point sum, fedavg step), and a
 * bare float sum. */
static void plain(uint32_t n, size_t dim, const float *x, double *pipe_s, double *sum_s) {
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, dim);
    loom_pipeline *p = NULL;
    float *g = calloc(dim, sizeof *g), *acc = calloc(dim, sizeof *acc);
    if (loom_pipeline_create(&p, &pc) != LOOM_OK) abort();
    double t0 = loom_now();
    loom_pipeline_begin_round(p, 1);
    for (uint32_t u = 0; u < n; u++) loom_pipeline_add(p, x + (size_t)(u % 4) * dim, dim, 1 + u, NULL, NULL, NULL);
    loom_pipeline_end_round(p, g);
    *pipe_s = loom_now() - t0;
    t0 = loom_now();
    for (uint32_t u = 0; u < n; u++) {
        const float *v = x + (size_t)(u % 4) * dim;
        float w = (float)(1 + u);
        for (size_t j = 0; j < dim; j++) acc[j] += w * v[j];
    }
    *sum_s = loom_now() - t0;
    volatile float keep = acc[dim / 2];
    (void)keep;
    loom_pipeline_free(p);
    free(g);
    free(acc);
}

int main(int argc, char **argv) {
    size_t dim = 294912;
    uint32_t ns[8] = {10, 50, 100};
    int nn = 3, drops = 1, threads = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dim") && i + 1 < argc) dim = (size_t)strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) {
            nn = 0;
            for (char *t = strtok(argv[++i], ","); t && nn < 8; t = strtok(NULL, ",")) ns[nn++] = (uint32_t)atoi(t);
        } else if (!strcmp(argv[i], "--no-drop")) drops = 0;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: secagg [--dim D] [--n N[,N...]] [--no-drop] [--threads T]\n");
            return 2;
        }
    }
    loom_set_threads(threads > 0 ? threads : 1);
    float *x = malloc(4 * dim * sizeof *x);
    uint64_t s = 1;
    for (size_t i = 0; i < 4 * dim; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 * 0.02 - 0.01);
    }
    printf("secure aggregation, dim %zu, %d server thread(s) (client time per client, one thread; server time for "
           "the round)\n", dim, loom_threads());
    printf("%5s %-9s %3s %3s %10s %10s %11s %11s %7s %12s %12s %10s %9s\n", "n", "graph", "k", "t", "client s",
           "server s", "up B/client", "down B", "up/f32", "plain pipe s", "plain sum s", "srv/pipe", "drop10% s");
    for (int i = 0; i < nn; i++) {
        uint32_t n = ns[i];
        double pipe_s, sum_s;
        plain(n, dim, x, &pipe_s, &sum_s);
        for (int g = 0; g < 2; g++) {
            uint32_t k = 0;
            if (g) {
                k = 2 * (uint32_t)lround(log2((double)n));
                if (k % 2) k++;
                if (k >= n - 1) continue;
            }
            cost c, cd = {0};
            if (run(n, k, dim, 0, x, &c) != LOOM_OK || (drops && run(n, k, dim, 1, x, &cd) != LOOM_OK)) {
                fprintf(stderr, "secagg: %s\n", loom_errmsg());
                return 1;
            }
            uint32_t holders = k ? k + 1 : n;
            printf("%5u %-9s %3u %3u %10.4f %10.4f %11.0f %11.0f %7.3f %12.4f %12.4f %10.2f %9.4f\n", n,
                   k ? "secagg+" : "complete", k, 2 * holders / 3 + 1, c.client_s, c.server_s, c.up, c.down,
                   c.up / (4.0 * dim), pipe_s, sum_s, c.server_s / pipe_s, cd.server_s);
            fflush(stdout);
        }
    }
    /* Bonawitz et al. 2017: 2^10 clients, 2^20 values of 16 bits: expansion 1.73x (their table) */
    double n = 1024, d = 1048576, plain16 = 2 * d;
    double up = up_bytes(n, n, d), upk = up_bytes(n, 21, d);
    printf("\ncommunication expansion at n = 2^10, dim = 2^20, 16-bit inputs (Bonawitz et al.: 1.73x):\n");
    printf("  complete graph: %.0f bytes up per client / %.0f = %.2fx (with downloads %.2fx)\n", up, plain16,
           up / plain16, (up + down_bytes(n, n)) / plain16);
    printf("  secagg+ k = 20: %.0f bytes up per client / %.0f = %.2fx\n", upk, plain16, upk / plain16);
    printf("  the masked input alone: 8 bytes per value in Z_2^64 = 4x 16 bits; a Z_2^32 ring (enough for 2^10 "
           "x 16-bit sums: 26 bits) would give %.2fx\n", (up - 4 * (d + 1)) / plain16);
    free(x);
    return 0;
}
