/* The metrics.jsonl rows of a run (one JSON object a line), written by every driver of the round
 * engine in the same format: the simulator's and the server's files read the same (see engine.h). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "loom/engine.h"

static void json_str(FILE *f, const char *s) {
    json_t *j = json_string(s ? s : ""); /* NULL for invalid UTF-8: a placeholder is written */
    char *e = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    fputs(e ? e : "\"?\"", f);
    free(e);
    json_decref(j);
}

static void num(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.9g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

void loom_metrics_jsonl_round(FILE *mf, const loom_round_metrics *m, const int *list, int n) {
    if (!mf) return;
    fprintf(mf, "{\"type\":\"round\",\"round\":%d,\"sampled\":%d,\"accepted\":%d,\"rejected\":%d", m->round, n,
            m->accepted, m->rejected);
    num(mf, "train_loss", m->train_loss);
    if (m->evaluated) {
        num(mf, "eval_loss", m->eval_loss);
        num(mf, "eval_acc", m->eval_acc);
        num(mf, "perplexity", exp(m->eval_loss));
        num(mf, "eval_loss_mean", m->eval_loss_mean);
        num(mf, "eval_loss_std", m->eval_loss_std);
        num(mf, "eval_acc_mean", m->eval_acc_mean);
        num(mf, "eval_acc_std", m->eval_acc_std);
        num(mf, "eval_acc_min", m->eval_acc_min);
        fprintf(mf, ",\"evaluated_clients\":%d", m->evaluated);
        if (!isnan(m->attack_success)) num(mf, "attack_success", m->attack_success); /* a backdoor run */
    }
    if (m->version > 0) { /* asynchronous modes: the version this row made, and how stale its updates were */
        fprintf(mf, ",\"version\":%llu", (unsigned long long)m->version);
        num(mf, "staleness_mean", m->staleness_mean);
        num(mf, "staleness_max", m->staleness_max);
        num(mf, "clock", m->clock);
    }
    if (m->dp) { /* epsilon in full precision: it is compared with loom dp epsilon */
        if (isfinite(m->epsilon)) fprintf(mf, ",\"epsilon\":%.17g", m->epsilon);
        else fprintf(mf, ",\"epsilon\":null");
        fprintf(mf, ",\"dp_clip\":%.17g", m->dp_clip);
    }
    num(mf, "bytes_down", m->bytes_down);
    num(mf, "bytes_up", m->bytes_up);
    num(mf, "seconds", m->seconds);
    fprintf(mf, ",\"clients\":[");
    for (int i = 0; i < n; i++) fprintf(mf, "%s%d", i ? "," : "", list[i]);
    fprintf(mf, "]}\n");
}

void loom_metrics_jsonl_client(FILE *mf, const loom_client_row *r, const char *name, uint64_t examples) {
    if (!mf) return;
    fprintf(mf, "{\"type\":\"client\",\"round\":%d,\"client\":%d,\"name\":", r->round, r->client);
    json_str(mf, name);
    fprintf(mf, ",\"examples\":%llu,\"tokens\":%ld", (unsigned long long)examples, r->tokens);
    num(mf, "loss", r->loss);
    num(mf, "update_norm", r->update_norm);
    num(mf, "bytes_up", r->bytes_up);
    if (r->staleness >= 0) fprintf(mf, ",\"staleness\":%ld", r->staleness);
    fprintf(mf, ",\"status\":");
    json_str(mf, r->status);
    fprintf(mf, "}\n");
}

static void sink_round(void *ud, const loom_round_metrics *m, const int *list, int n) {
    loom_metrics_jsonl *s = ud;
    loom_metrics_jsonl_round(s->f, m, list, n);
}

static void sink_client(void *ud, const loom_client_row *r) {
    loom_metrics_jsonl *s = ud;
    if (!s->per_client_rows) return;
    loom_metrics_jsonl_client(s->f, r, s->names ? s->names[r->client] : "", r->examples);
}

loom_metrics_sink loom_metrics_jsonl_sink(loom_metrics_jsonl *s) {
    return (loom_metrics_sink){sink_round, sink_client, s};
}
