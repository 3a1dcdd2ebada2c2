/* loom server: the coordinator of a real federation over HTTPS (docs/protocol.md), and its client
 * registry (add-client, revoke-client). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/runspec.h"
#include "loom/core.h"
#include "loom/net.h"
#include "loom/fl.h"
#include "loom/peft.h"
#include "loom/streams.h"
#include "loom/zo.h"

static volatile int stop_flag;
static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

/* add-client / revoke-client: loom server add-client --state DIR [--admin] NAME */
static int registry(int argc, char **argv, int add) {
    const char *state = NULL;
    int admin = 0;
    cli_opt opts[] = {
        {"state", OPT_STR, &state, "the server's state directory (created with its database when new)", 0, 0},
        {"admin", OPT_FLAG, &admin, "an administrator identity (may read /v1/status, may not train)", 0, 0},
    };
    const char *pos[1];
    int npos = 0;
    int pr = cli_parse(argc, argv,
                       add ? "loom server add-client --state DIR [--admin] NAME"
                           : "loom server revoke-client --state DIR NAME",
                       add ? "Registers a client and prints its fresh token alone on stdout, once (only its hash is\n"
                             "kept). Give the token to the client's operator; loom client reads it with --token-file.\n"
                             "The run's clients are the identities registered before the server first starts."
                           : "Revokes a client: its token is refused (401) from now on.",
                       opts, add ? 2 : 1, pos, &npos, 1);
    if (pr) return pr > 0 ? 0 : 2;
    if (!state) {
        fprintf(stderr, "loom server: --state DIR is required\n");
        return 2;
    }
    if (npos != 1) {
        fprintf(stderr, "loom server: give the client's NAME\n");
        return 2;
    }
    if (loom_net_check_name(pos[0]) != LOOM_OK) return cli_fail("client name");
    if (add) {
        char token[65];
        if (loom_server_add_client(state, pos[0], admin, token) != LOOM_OK) return cli_fail("add-client");
        printf("%s\n", token);
        fflush(stdout);
        memset(token, 0, sizeof token);
        fprintf(stderr, "loom server: registered %s%s in %s\n", pos[0], admin ? " (administrator)" : "", state);
        return 0;
    }
    if (loom_server_revoke_client(state, pos[0]) != LOOM_OK) return cli_fail("revoke-client");
    fprintf(stderr, "loom server: revoked %s\n", pos[0]);
    return 0;
}

/* Secure aggregation (docs/protocol.md): the run's --secagg settings (RUN.json, shared with loom sim)
 * and the server's own phase timeout. */
static void server_secagg(const cli_run *r, double fit_timeout, double phase_timeout, loom_server_config *c) {
    c->secagg_fit_timeout_s = fit_timeout;
    c->secagg_phase_timeout_s = phase_timeout;
    if (!r->secagg) return;
    const loom_sim_secagg *g = &r->secagg_cfg; /* resolved by cli_run_federation, as for loom sim */
    c->secagg = 1;
    c->secagg_threshold = g->threshold;
    c->secagg_neighbours = g->neighbours;
    c->secagg_clip = g->clip;
    c->secagg_max_weight = g->max_weight;
    if (g->drop)
        fprintf(stderr, "loom server: --secagg-drop %d is the simulator's: over the network clients drop out by "
                        "themselves (ignored)\n", g->drop);
}

/* FLTrust's server update: the server trains on its root examples (--root-data) each round from the
 * round's global vector as a client would (the run's local steps, optimizer and batch; no local DP),
 * with the data seed hash2(seed, LOOM_STREAM_ROOT) and the step counter (round - 1) x local steps, as
 * in loom sim. */
typedef struct {
    cli_trainer_ud fu;
    loom_trainer *tr;
    float *vec;
    loom_tokenizer *tok;
    loom_dataset *ds;
    loom_client cl;   /* the root data's examples (after the run's --test-frac split) */
    uint32_t *idx;    /* the root examples drawn from them */
    size_t n;
    loom_fit_config fit;
    int B, T;
    uint64_t seed;
} server_root;

static int root_reference(void *ud, int round, const float *global, float *ref, size_t dim) {
    server_root *sr = ud;
    loom_client_ctx ctx = {sr->tr, sr->vec, dim, NULL};
    loom_client_data d = {sr->ds, sr->idx, sr->n, NULL, 0, sr->B, sr->T, loom_hash2(sr->seed, LOOM_STREAM_ROOT)};
    loom_client_state st;
    loom_client_state_init(&st);
    st.steps = (uint64_t)(round - 1) * (uint64_t)sr->fit.local_steps;
    loom_codec_opts none;
    memset(&none, 0, sizeof none);
    none.codec = LOOM_CODEC_F32;
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = ref;
    int rc = loom_client_run_fit(&loom_client_local_sgd, &ctx, &d, round, global, NULL, &sr->fit, &none, &st, &out);
    loom_client_state_clear(&st);
    return rc;
}

/* Loads --root-data (cli_root_data, as loom sim does) and the server's trainer. */
static int root_setup(server_root *sr, const cli_run *r, const char *path, const loom_model *m, int created) {
    int rc = cli_tokenizer(&sr->tok, r->tokenizer, created ? NULL : r->model, m);
    if (rc == LOOM_OK) rc = cli_root_data(r, path, sr->tok, &sr->ds, &sr->cl, &sr->idx, &sr->n);
    if (rc == LOOM_OK) rc = cli_trainer_make(&sr->fu, &sr->tr, &sr->vec);
    return rc;
}

static void root_clear(server_root *sr) {
    if (sr->tr || sr->vec) cli_trainer_free(&sr->fu, sr->tr, sr->vec);
    free(sr->idx);
    cli_client_data_free(&sr->cl);
    loom_dataset_free(sr->ds);
    loom_tokenizer_free(sr->tok);
}

static void server_listening(void *ud, int port) {
    (void)ud;
    fprintf(stderr, "loom server: listening on port %d\n", port);
}

int cmd_server(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "add-client")) return registry(argc - 1, argv + 1, 1);
    if (argc >= 2 && !strcmp(argv[1], "revoke-client")) return registry(argc - 1, argv + 1, 0);
    cli_run r;
    cli_run_init(&r);
    const char *config = NULL, *state = NULL, *listen = "127.0.0.1:8443", *cert = NULL, *key = NULL;
    server_root root;
    memset(&root, 0, sizeof root);
    int min_clients = 0, poll_ms = 500, eval_timeout = 60, threads = 16;
    float max_upload_mb = 0, secagg_fit_timeout = 600, secagg_timeout = 60, done_grace = 10;
    cli_opt opts[CLI_RUN_MAX_OPTS + 15];
    int nopts = 0;
    opts[nopts++] = (cli_opt){"config", OPT_STR, &config, "RUN.json: the run, with the keys of loom sim --config", 0, 0};
    opts[nopts++] = (cli_opt){"state", OPT_STR, &state, "state directory: state.db, updates, checkpoints, global.safetensors, metrics.jsonl, tls/", 0, 0};
    opts[nopts++] = (cli_opt){"listen", OPT_STR, &listen, "HOST:PORT to listen on (port 0: any free port)", 0, 0};
    opts[nopts++] = (cli_opt){"tls-cert", OPT_STR, &cert, "PEM certificate (default: a self-signed development certificate in STATE/tls/)", 0, 0};
    opts[nopts++] = (cli_opt){"tls-key", OPT_STR, &key, "PEM private key of --tls-cert", 0, 0};
    opts[nopts++] = (cli_opt){"min-clients", OPT_INT, &min_clients, "clients that must say hello before round 1 opens (0 = all registered)", 0, 10000000};
    opts[nopts++] = (cli_opt){"max-upload-mb", OPT_FLOAT, &max_upload_mb, "largest accepted upload body in MiB (0 = twice the f32 update size plus 1 MiB)", 0, 1e6};
    opts[nopts++] = (cli_opt){"poll-ms", OPT_INT, &poll_ms, "milliseconds waiting clients are told to wait between polls", 10, 600000};
    opts[nopts++] = (cli_opt){"eval-timeout", OPT_INT, &eval_timeout, "seconds to wait for evaluation reports after a round", 1, 86400};
    opts[nopts++] = (cli_opt){"threads", OPT_INT, &threads, "HTTP worker threads", 1, 1024};
    opts[nopts++] = (cli_opt){"done-grace", OPT_FLOAT, &done_grace, "seconds the server keeps answering \"done\" after the last round for clients that have not seen it", 0, 86400};
    opts[nopts++] = (cli_opt){"secagg-fit-timeout", OPT_FLOAT, &secagg_fit_timeout, "with --secagg: seconds after a round opens that its phase 0 (the clients' download and training, then their keys) waits for them", 0.1, 864000};
    opts[nopts++] = (cli_opt){"secagg-phase-timeout", OPT_FLOAT, &secagg_timeout, "with --secagg: seconds each later phase of secure aggregation (shares, masked inputs, unmasking) waits for the clients", 0.1, 86400};
    nopts += cli_run_opts(&r, opts + nopts);
    const char *usage = "loom server --state DIR --config RUN.json [--listen HOST:PORT] [--tls-cert F --tls-key F]\n"
                        "       loom server add-client --state DIR [--admin] NAME\n"
                        "       loom server revoke-client --state DIR NAME";
    const char *desc =
        "Coordinates a federated run across machines over HTTPS (docs/protocol.md). Clients (loom client)\n"
        "make only outbound calls: they poll for a task, download the global model, train on their own\n"
        "data and upload an update; the server runs the same round engine as loom sim (sampling,\n"
        "validation, aggregation, strategy), keeps its state in STATE (SQLite), acknowledges an update only\n"
        "once it is on disk, and resumes where it stopped when started again with the same command.\n"
        "Writes STATE/global.safetensors and STATE/metrics.jsonl and exits 0 after the last round.";
    cli_config *cfg = NULL;
    int pr = cli_parse_config(argc, argv, usage, desc, opts, nopts, &cfg);
    if (pr) return pr > 0 ? 0 : 2;
    int rc = 1;
    loom_model *m = NULL;
    loom_tset *set = NULL;
    float *global = NULL;
    char *run_json = NULL, *model_json = NULL;
    float *kzero = NULL;           /* --client-algo fedkseed: the K scalars start at 0 */
    loom_tvec *kseed_names = NULL; /* and are named kseed.scalars in the checkpoints */
    char base_hash[65];
    int created = 0;
#define BAD(...)                                     \
    do {                                             \
        fprintf(stderr, "loom server: " __VA_ARGS__); \
        fprintf(stderr, "\n");                       \
        goto done;                                   \
    } while (0)
    if (!state) BAD("--state DIR is required (the server's state directory)");
    if (!config) BAD("--config RUN.json is required (the run: model, strategy, rounds, ...; the keys of loom sim)");
    if ((cert != NULL) != (key != NULL)) BAD("--tls-cert and --tls-key go together");
    if (r.synth.n > 0 || r.cont.retention || r.cont.continual)
        BAD("--%s runs in loom sim, not across the network", r.synth.n > 0 ? "synthetic" : r.cont.retention ? "retention-test" : "continual");
    if (r.kd.teacher || r.feddf.text)
        BAD("--%s (distillation) runs in loom sim%s, not across the network", r.kd.teacher ? "teacher" : "server-distill",
            r.kd.teacher ? " and loom train" : "");
    if (cli_load_or_create(&m, r.model, (unsigned long long)r.seed, &created) != LOOM_OK) {
        cli_fail("--model");
        goto done;
    }
    if (r.T > loom_model_config(m)->max_seq) BAD("--seq %d exceeds the model's %d positions", r.T, loom_model_config(m)->max_seq);
    if (cli_base_sha256(m, base_hash) != LOOM_OK) {
        cli_fail("--model");
        goto done;
    }
    if (cli_peft_setup(&r.peft, m, (unsigned long long)r.seed, &set) != LOOM_OK) {
        cli_fail(r.peft.adapter ? "--adapter" : "--peft");
        goto done;
    }
    loom_sim_config sc;
    loom_sim_defaults(&sc);
    loom_train_config tc;
    if (cli_run_federation(&r, "server", (size_t)1 << 30, &sc, &tc) != 0) goto done;
    int fltrust = sc.aggregator == &loom_agg_robust && r.robust_cfg.rule == LOOM_ROBUST_FLTRUST;
    const char *root_data = r.root_data;
    if (fltrust && !root_data)
        BAD("--aggregator fltrust needs --root-data FILE: the server's own examples, which it trains on each round");
    if (!fltrust && root_data) BAD("--root-data is for --aggregator fltrust");
    if (sc.dp.mode == LOOM_DP_SGD && r.dp_min_examples <= 0)
        BAD("--dp sgd needs --dp-min-examples N on a server: the fewest training examples of any client (the "
            "accounting's sampling rate is --batch / N; the clients' data is theirs)");
    run_json = cli_run_client_json(&r);
    if (!run_json) BAD("out of memory");
    loom_server_config c;
    loom_server_defaults(&c);
    c.state_dir = state;
    c.listen = listen;
    c.tls_cert = cert;
    c.tls_key = key;
    loom_engine_config *ec = &c.engine;
    if (set) {
        sc.dim = loom_tset_dim(set);
        sc.init = loom_tset_data(set);
        c.manifest = loom_tset_manifest(set);
        c.base_sha256 = base_hash; /* clients bring the frozen base themselves */
    } else {
        sc.dim = loom_model_n_params(m);
        sc.init = loom_model_params(m);
        c.manifest = loom_model_manifest(m);
        model_json = loom_config_to_json(loom_model_config(m));
        if (!model_json) BAD("out of memory");
        c.model_config_json = model_json; /* a full run: clients need no local model */
    }
    if (sc.algo == &loom_client_fedkseed) {
        /* FedKSeed: the engine trains the pool's K per-seed scalars; each client brings the initial model
         * (checked by its hash, as a PEFT run's base) and replays the scalars (include/loom/zo.h) */
        int64_t shape[1] = {r.seed_pool};
        kzero = calloc((size_t)r.seed_pool, sizeof *kzero);
        if (!kzero || loom_tvec_create(&kseed_names) != LOOM_OK ||
            loom_tvec_add(kseed_names, "kseed.scalars", 1, shape, LOOM_ROLE_SHARED) != LOOM_OK)
            BAD("out of memory");
        sc.dim = (size_t)r.seed_pool;
        sc.init = kzero;
        c.manifest = kseed_names;
        c.base_sha256 = base_hash;
        c.model_config_json = NULL;
    }
    loom_sim_engine_config(&sc, ec); /* the engine loom sim would run on the same RUN.json */
    c.run_json = run_json;
    c.compress = r.compress;
    c.min_clients = min_clients;
    c.max_upload = (size_t)(max_upload_mb * 1048576.0);
    c.poll_ms = poll_ms;
    c.eval_timeout_s = eval_timeout;
    c.threads = threads;
    c.done_grace_s = done_grace;
    server_secagg(&r, secagg_fit_timeout, secagg_timeout, &c);
    if (fltrust) {
        root.fu = (cli_trainer_ud){m, set, tc};
        root.fit = sc.fit;
        root.fit.dp_clip = root.fit.dp_noise = 0; /* the server's own data: no local DP */
        root.B = r.B, root.T = r.T, root.seed = (uint64_t)r.seed;
        if (root_setup(&root, &r, root_data, m, created) != LOOM_OK) {
            cli_fail("--root-data");
            goto done;
        }
        c.reference = root_reference;
        c.reference_ud = &root;
        fprintf(stderr, "loom server: fltrust: %zu root examples of %s\n", root.n, root_data);
    }
    c.on_listen = server_listening;
    c.stop = &stop_flag;
    cli_event_log("server");
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    loom_set_threads(1);
    global = loom_alloc(ec->dim * sizeof(float));
    if (!global) BAD("out of memory");
    fprintf(stderr, "loom server: %s, %zu trainable values, %d rounds, state in %s\n", sc.strategy, ec->dim, sc.rounds,
            state);
    int src = loom_server_run(&c, global);
    if (src != LOOM_OK && !(stop_flag && src == LOOM_ESTATE)) {
        cli_fail("server");
        goto done;
    }
    if (stop_flag) {
        fprintf(stderr, "loom server: stopped; start it again with the same command to continue\n");
        rc = 0;
        goto done;
    }
    printf("%-28s %s/global.safetensors, %s/metrics.jsonl\n", "written", state, state);
    rc = 0;
done:
    root_clear(&root);
    free(run_json);
    free(model_json);
    free(kzero);
    loom_tvec_free(kseed_names);
    loom_free(global);
    loom_tset_free(set);
    loom_model_free(m);
    cli_config_free(cfg);
    return rc;
}
