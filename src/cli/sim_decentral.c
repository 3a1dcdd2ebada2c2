/* loom sim --decentralized (see sim_decentral.h). */
#include "cli/sim_decentral.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/common.h"
#include "loom/core.h"
#include "loom/decentral.h"
#include "loom/gossip.h"
#include "loom/plot.h"

typedef struct {
    int rounds, n;
    double *x, *cons, *cons_trained, *acc_avg, *acc_peer;
    double last_avg_acc, last_avg_loss, last_peer_acc, last_min, last_max, last_cons;
    int evaluated;
} dprog;

static void on_round(const loom_decentral_metrics *m, void *ud) {
    dprog *p = ud;
    fprintf(stderr, "  round %4d/%d  train loss %.4f  consensus %.3g -> %.3g", m->round, p->rounds, m->train_loss,
            m->consensus_trained, m->consensus);
    if (m->evaluated) {
        fprintf(stderr, "  average model: loss %.4f acc %.3f  peers: acc %.3f (%.3f..%.3f)", m->avg_loss, m->avg_acc,
                m->peer_acc, m->peer_acc_min, m->peer_acc_max);
        p->evaluated = 1;
        p->last_avg_acc = m->avg_acc;
        p->last_avg_loss = m->avg_loss;
        p->last_peer_acc = m->peer_acc;
        p->last_min = m->peer_acc_min;
        p->last_max = m->peer_acc_max;
    }
    if (m->failed) fprintf(stderr, "  failed %d", m->failed);
    fprintf(stderr, "  %.1fs\n", m->seconds);
    if (p->n < p->rounds) {
        p->x[p->n] = m->round;
        p->cons[p->n] = m->consensus > 0 ? log10(m->consensus) : NAN;
        p->cons_trained[p->n] = m->consensus_trained > 0 ? log10(m->consensus_trained) : NAN;
        p->acc_avg[p->n] = m->evaluated ? m->avg_acc : NAN;
        p->acc_peer[p->n] = m->evaluated ? m->peer_acc : NAN;
        p->n++;
    }
    p->last_cons = m->consensus;
}

static void plot(const char *out, const char *name, const char *title, const char *ylabel, const loom_plot_series *s,
                 size_t ns) {
    char path[4096], *svg;
    size_t len;
    snprintf(path, sizeof path, "%s/%s", out, name);
    if (loom_plot_lines_svg(&svg, &len, title, "round", ylabel, s, ns) != LOOM_OK) return;
    if (loom_write_file_atomic(path, svg, len) == LOOM_OK) printf("%-28s %s\n", "plot", path);
    free(svg);
}

int cli_sim_decentral(const cli_run *r, loom_sim_config *sc, float *global) {
    const char *spec = r->topology ? r->topology : "ring";
    int n = (int)sc->part->n_clients, ret = -1;
    loom_topology *t = NULL;
    dprog p = {0};
    if (loom_topology_parse(&t, spec, n, (uint64_t)r->seed, "--topology") != LOOM_OK) {
        fprintf(stderr, "loom sim: %s\n", loom_errmsg());
        return -1;
    }
    if (loom_topology_directed(t) && !r->push_sum) {
        fprintf(stderr, "loom sim: --topology %s is directed: gossip on it needs --push-sum\n", spec);
        goto done;
    }
    int lo = n, hi = 0;
    for (int i = 0; i < n; i++) {
        int c;
        loom_topology_out(t, i, &c);
        lo = c < lo ? c : lo;
        hi = c > hi ? c : hi;
    }
    fprintf(stderr, "  decentralized: %d peers on %s (%zu directed edges, degree %d..%d), %d %s gossip step%s a round\n",
            n, spec, loom_topology_edges(t), lo, hi, r->gossip_steps, r->push_sum ? "push-sum" : "Metropolis-Hastings",
            r->gossip_steps == 1 ? "" : "s");
    p.rounds = sc->rounds;
    p.x = calloc((size_t)p.rounds, sizeof(double));
    p.cons = calloc((size_t)p.rounds, sizeof(double));
    p.cons_trained = calloc((size_t)p.rounds, sizeof(double));
    p.acc_avg = calloc((size_t)p.rounds, sizeof(double));
    p.acc_peer = calloc((size_t)p.rounds, sizeof(double));
    if (!p.x || !p.cons || !p.cons_trained || !p.acc_avg || !p.acc_peer) {
        fprintf(stderr, "loom sim: out of memory\n");
        goto done;
    }
    loom_decentral_config dc = {t, r->gossip_steps, r->push_sum, on_round, &p};
    double t0 = loom_now();
    if (loom_decentral_run(sc, &dc, global, NULL) != LOOM_OK) {
        fprintf(stderr, "loom sim: decentralized run: %s\n", loom_errmsg());
        goto done;
    }
    double secs = loom_now() - t0;
    printf("\n%-28s %s, %d peers, %d %s step%s a round\n", "decentralized", spec, n, r->gossip_steps,
           r->push_sum ? "push-sum" : "gossip", r->gossip_steps == 1 ? "" : "s");
    printf("%-28s %d (%d local steps each)\n", "rounds", sc->rounds, sc->fit.local_steps);
    printf("%-28s %.4g\n", "final consensus distance", p.last_cons);
    if (p.evaluated) {
        printf("%-28s %.4f (perplexity %.2f)\n", "average model eval loss", p.last_avg_loss, exp(p.last_avg_loss));
        printf("%-28s %.4f\n", "average model accuracy", p.last_avg_acc);
        printf("%-28s %.4f (peers %.4f..%.4f)\n", "peer models accuracy", p.last_peer_acc, p.last_min, p.last_max);
    }
    /* traffic: every directed edge carries one vector per gossip step */
    double mib = (double)sc->dim * 4 * (double)loom_topology_edges(t) * r->gossip_steps * sc->rounds / 1048576.0;
    printf("%-28s %zu floats; %.1f MiB exchanged in all (%.2f MiB per peer per round)\n", "trainable vector", sc->dim,
           mib, mib / n / sc->rounds);
    printf("%-28s %.1fs (%.2fs per round)\n", "time", secs, secs / sc->rounds);
    printf("%-28s %.0f MiB\n", "peak RSS", loom_peak_rss() / 1048576.0);
    if (sc->out_dir) {
        loom_plot_series cs[2] = {{"after local training", p.x, p.cons_trained, (size_t)p.n},
                                  {"after gossip", p.x, p.cons, (size_t)p.n}};
        plot(sc->out_dir, "consensus.svg", "consensus distance (log10 of mean squared distance to the average)",
             "log10 consensus distance", cs, 2);
        loom_plot_series as[2] = {{"average model", p.x, p.acc_avg, (size_t)p.n},
                                  {"peer models (own test data)", p.x, p.acc_peer, (size_t)p.n}};
        plot(sc->out_dir, "accuracy.svg", "decentralized: accuracy on the peers' test data", "next-token accuracy", as, 2);
        printf("%-28s %s/global.safetensors (average), %s/peers/<i>.safetensors, %s/metrics.jsonl\n", "written",
               sc->out_dir, sc->out_dir, sc->out_dir);
    }
    ret = 0;
done:
    free(p.x);
    free(p.cons);
    free(p.cons_trained);
    free(p.acc_avg);
    free(p.acc_peer);
    loom_topology_free(t);
    return ret;
}
