/* net_serve: loom_server_run in a bench program, for loadgen where the `loom server` command is not at
 * hand (bench/net_load.sh falls back to it). Registers N clients (c0000, c0001, ...) in a new state
 * directory, writes their "name token" lines, and serves a FedAvg run whose trainable vector has the
 * LoRA r=8 c_attn layout of GPT-2 124M (dim 294912: 12 x (lora_A [8, 768], lora_B [2304, 8])) or one
 * tensor of --dim floats. Prints "listening PORT" once the socket listens, and at the end the
 * server's peak RSS.
 *
 *     net_serve --state DIR --clients N --tokens OUT [--dim 294912] [--sample 100] [--rounds 1000]
 *               [--listen 127.0.0.1:0] [--tls-cert F --tls-key F] [--threads 4] [--poll-ms 500]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/net.h"
#include "loom/strategy.h"
#include "loom/tvec.h"

#define LORA_DIM 294912

static void on_listen(void *ud, int port) {
    (void)ud;
    printf("listening %d\n", port);
    fflush(stdout);
}

static void log_line(int level, const char *msg, void *ud) {
    (void)ud;
    fprintf(stderr, "[%d] %s\n", level, msg);
}

int main(int argc, char **argv) {
    const char *state = NULL, *tokens = NULL, *listen = "127.0.0.1:0", *cert = NULL, *key = NULL;
    int n = 0, sample = 100, rounds = 1000, threads = 0, poll_ms = 500;
    size_t dim = LORA_DIM;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *a = argv[i], *v = argv[i + 1];
        if (!strcmp(a, "--state")) state = v;
        else if (!strcmp(a, "--tokens")) tokens = v;
        else if (!strcmp(a, "--listen")) listen = v;
        else if (!strcmp(a, "--tls-cert")) cert = v;
        else if (!strcmp(a, "--tls-key")) key = v;
        else if (!strcmp(a, "--clients")) n = atoi(v);
        else if (!strcmp(a, "--sample")) sample = atoi(v);
        else if (!strcmp(a, "--rounds")) rounds = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--poll-ms")) poll_ms = atoi(v);
        else if (!strcmp(a, "--dim")) dim = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "net_serve: unknown flag %s\n", a);
            return 2;
        }
    }
    if (!state || !tokens || n < 1 || dim < 1 || rounds < 1 || sample < 1 || sample > n) {
        fprintf(stderr, "usage: net_serve --state DIR --clients N --tokens OUT [--dim D] [--sample S] [--rounds R] "
                        "[--listen HOST:PORT] [--tls-cert F --tls-key F] [--threads T] [--poll-ms MS]\n");
        return 2;
    }
    loom_set_log(log_line, NULL, LOOM_WARN);
    FILE *f = fopen(tokens, "w");
    if (!f) {
        fprintf(stderr, "net_serve: cannot write %s\n", tokens);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char name[32], tok[65];
        snprintf(name, sizeof name, "c%04d", i);
        if (loom_server_add_client(state, name, 0, tok) != LOOM_OK) {
            fprintf(stderr, "net_serve: %s\n", loom_errmsg());
            return 1;
        }
        fprintf(f, "%s %s\n", name, tok);
    }
    fclose(f);
    loom_tvec *m;
    loom_tvec_create(&m);
    if (dim == LORA_DIM) {
        for (int l = 0; l < 12; l++) {
            char name[80];
            int64_t a[2] = {8, 768}, b[2] = {2304, 8};
            snprintf(name, sizeof name, "transformer.h.%d.attn.c_attn.lora_A", l);
            loom_tvec_add(m, name, 2, a, LOOM_ROLE_SHARED);
            snprintf(name, sizeof name, "transformer.h.%d.attn.c_attn.lora_B", l);
            loom_tvec_add(m, name, 2, b, LOOM_ROLE_SHARED);
        }
    } else {
        int64_t s[1] = {(int64_t)dim};
        loom_tvec_add(m, "weights", 1, s, LOOM_ROLE_SHARED);
    }
    float *init = calloc(dim, sizeof(float)), *out = calloc(dim, sizeof(float));
    if (!init || !out) {
        fprintf(stderr, "net_serve: out of memory for dim %zu\n", dim);
        return 1;
    }
    loom_server_config c;
    loom_server_defaults(&c);
    c.state_dir = state;
    c.listen = listen;
    c.tls_cert = cert;
    c.tls_key = key;
    c.engine.dim = dim;
    c.engine.init = init;
    c.engine.rounds = rounds;
    c.engine.sample = sample;
    c.engine.seed = 1;
    c.engine.pipe.strategy = "fedavg";
    loom_strategy_defaults("fedavg", &c.engine.pipe.sp);
    c.manifest = m;
    c.run_json = "{\"strategy\": \"fedavg\"}";
    c.no_eval = 1;
    c.poll_ms = poll_ms;
    if (threads > 0) c.threads = threads;
    c.on_listen = on_listen;
    int rc = loom_server_run(&c, out);
    if (rc != LOOM_OK) fprintf(stderr, "net_serve: %s\n", loom_errmsg());
    printf("net_serve: %s, peak RSS %zu MiB\n", rc == LOOM_OK ? "run done" : "failed", loom_peak_rss() >> 20);
    loom_tvec_free(m);
    free(init);
    free(out);
    return rc == LOOM_OK ? 0 : 1;
}
