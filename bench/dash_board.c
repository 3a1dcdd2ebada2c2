/* dash_board: what the dashboard's board costs. Feeds a board R rounds of C sampled clients each (a
 * round row and C client rows through loom_dash_round / loom_dash_client, as a driver's sink does),
 * then renders GET /v1/dash/status and GET /v1/dash/metrics?since=0 (all pages) several times.
 * Prints the feeding time per round and per client row, the render times (medians) and the answers'
 * sizes.
 *
 *     dash_board [--clients 1000] [--rounds 1000] [--reps 9]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dash.h"

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int C = 1000, R = 1000, reps = 9;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--clients")) C = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds")) R = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: dash_board [--clients N] [--rounds N] [--reps N]\n");
            return 2;
        }
    }
    if (C < 1 || R < 1 || reps < 1 || C > LOOM_DASH_MAX_CLIENTS || R > LOOM_DASH_MAX_ROWS) {
        fprintf(stderr, "dash_board: --clients 1..%d, --rounds 1..%d, --reps >= 1\n", LOOM_DASH_MAX_CLIENTS,
                LOOM_DASH_MAX_ROWS);
        return 2;
    }
    loom_dash *d;
    if (loom_dash_create(&d) != LOOM_OK || loom_dash_set_clients(d, C, NULL) != LOOM_OK) {
        fprintf(stderr, "dash_board: %s\n", loom_errmsg());
        return 1;
    }
    int *list = malloc((size_t)C * sizeof *list);
    for (int k = 0; k < C; k++) list[k] = k;
    double t0 = loom_now();
    for (int r = 1; r <= R; r++) {
        loom_round_metrics m;
        memset(&m, 0, sizeof m);
        m.round = r, m.sampled = m.accepted = C, m.train_loss = 3.0 - r * 1e-4, m.evaluated = C;
        m.eval_loss = m.eval_loss_mean = 3.1, m.eval_acc = m.eval_acc_mean = 0.3, m.eval_loss_std = m.eval_acc_std = 0.01;
        m.attack_success = 0.0 / 0.0, m.bytes_down = m.bytes_up = 1e6 * C, m.seconds = 1;
        loom_dash_round(d, &m, list, C);
        for (int k = 0; k < C; k++) {
            loom_client_row c;
            memset(&c, 0, sizeof c);
            c.round = r, c.client = k, c.examples = 100, c.tokens = 6400, c.loss = 3.0 + k * 1e-5, c.bytes_up = 1e6;
            c.verdict = LOOM_UPDATE_ACCEPTED, c.status = "accepted", c.staleness = -1;
            loom_dash_client(d, &c, NULL, 100);
        }
    }
    double feed = loom_now() - t0;
    double *ts = malloc((size_t)reps * sizeof *ts), *tm = malloc((size_t)reps * sizeof *tm);
    size_t slen = 0, mlen = 0;
    int pages = 0;
    for (int i = 0; i < reps; i++) {
        double a = loom_now();
        char *s = loom_dash_status_json(d, a);
        ts[i] = loom_now() - a;
        slen = s ? strlen(s) : 0;
        free(s);
        a = loom_now();
        long since = 0;
        mlen = 0;
        pages = 0;
        for (;;) { /* every page, as the dashboard asks for them */
            char *m = loom_dash_metrics_json(d, since);
            if (!m) break;
            mlen += strlen(m);
            pages++;
            const char *lr = strstr(m, "\"last_round\":");
            long last = lr ? atol(lr + 13) : since;
            int more = strstr(m, "\"more\":true") != NULL;
            free(m);
            if (!more || last <= since) break;
            since = last;
        }
        tm[i] = loom_now() - a;
    }
    qsort(ts, (size_t)reps, sizeof *ts, cmp);
    qsort(tm, (size_t)reps, sizeof *tm, cmp);
    printf("board of %d clients, %d rounds (%d client rows each)\n", C, R, C);
    printf("feeding                 %.3f s: %.1f us per round row + its client rows, %.2f us per client row\n", feed,
           feed / R * 1e6, feed / ((double)R * C) * 1e6);
    printf("GET /v1/dash/status     %.2f ms median of %d (%.1f KiB, %d clients listed)\n", ts[reps / 2] * 1e3, reps,
           slen / 1024.0, C < LOOM_DASH_STATUS_CLIENTS ? C : LOOM_DASH_STATUS_CLIENTS);
    printf("GET /v1/dash/metrics    %.2f ms median of %d for all %d rows (%d pages, %.1f KiB)\n", tm[reps / 2] * 1e3,
           reps, R, pages, mlen / 1024.0);
    printf("peak RSS                %.0f MiB\n", loom_peak_rss() / 1048576.0);
    free(ts);
    free(tm);
    free(list);
    loom_dash_free(d);
    return 0;
}
