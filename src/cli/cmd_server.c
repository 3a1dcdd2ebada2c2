/* loom server: the coordinator of a real federation over HTTPS (docs/protocol.md), and its client
 * registry (add-client, revoke-client). */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/hetero_net.h"
#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "cli/runspec.h"
#include "loom/core.h"
#include "loom/net.h"
#include "loom/split.h"
#include "loom/fl.h"
#include "loom/peft.h"
#include "loom/streams.h"
#include "loom/zo.h"

static volatile int stop_flag;
static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

/* add-client / revoke-client: loom server add-client --state DIR [--admin | --role ROLE] NAME */
static int registry(int argc, char **argv, int add) {
    const char *state = NULL, *role_name = NULL;
    int admin = 0;
    cli_opt opts[] = {
        {"state", OPT_STR, &state, "the server's state directory (created with its database when new)", 0, 0},
        {"admin", OPT_FLAG, &admin, "an administrator identity (may read /v1/status and the dashboard, may not train); the same as --role admin", 0, 0},
        {"role", OPT_STR, &role_name, "client (default: a client of the run), admin, or viewer (reads the dashboard only: GET /, /v1/dash/*)", 0, 0},
    };
    const char *pos[1];
    int npos = 0;
    int pr = cli_parse(argc, argv,
                       add ? "loom server add-client --state DIR [--admin | --role client|admin|viewer] NAME"
                           : "loom server revoke-client --state DIR NAME",
                       add ? "Registers a client and prints its fresh token alone on stdout, once (only its hash is\n"
                             "kept). Give the token to the client's operator; loom client reads it with --token-file.\n"
                             "The run's clients are the identities registered before the server first starts."
                           : "Revokes a client: its token is refused (401) from now on.",
                       opts, add ? 3 : 1, pos, &npos, 1);
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
    int role = admin ? LOOM_NET_ROLE_ADMIN : LOOM_NET_ROLE_CLIENT;
    if (role_name) {
        int named = !strcmp(role_name, "client") ? LOOM_NET_ROLE_CLIENT : !strcmp(role_name, "admin") ? LOOM_NET_ROLE_ADMIN
                    : !strcmp(role_name, "viewer") ? LOOM_NET_ROLE_VIEWER : -1;
        if (named < 0 || (admin && named != LOOM_NET_ROLE_ADMIN)) {
            fprintf(stderr, "loom server: --role %s: %s\n", role_name,
                    named < 0 ? "give client, admin or viewer" : "--admin already says admin");
            return 2;
        }
        role = named;
    }
    if (add) {
        char token[65];
        if (loom_server_add_client(state, pos[0], role, token) != LOOM_OK) return cli_fail("add-client");
        printf("%s\n", token);
        fflush(stdout);
        memset(token, 0, sizeof token);
        fprintf(stderr, "loom server: registered %s%s in %s\n", pos[0],
                role == LOOM_NET_ROLE_ADMIN ? " (administrator)" : role == LOOM_NET_ROLE_VIEWER ? " (viewer)" : "", state);
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

/* Split learning: the server part of the clients' steps (include/loom/split.h). */
static int split_step_cb(void *ud, int client, int round, const float *global, const void *body, size_t len,
                         void **reply, size_t *rlen, int *status) {
    return loom_split_server_step(ud, client, round, global, body, len, reply, rlen, status);
}
static int split_update_cb(void *ud, int client, int round, void **reply, size_t *rlen, int *status) {
    return loom_split_server_update(ud, client, round, reply, rlen, status);
}

static void server_listening(void *ud, int port) {
    (void)ud;
    cli_info("loom server: listening on port %d", port);
    cli_kv kv[] = {{"port", port, NULL}};
    cli_json_line("listening", "server", kv, 1, NULL, 0);
}

/* The round progress line (progress.h): a round's summary as it is written to metrics.jsonl. */
static void server_round(void *ud, const loom_round_metrics *m) {
    cli_progress *bar = ud;
    double ev = m->evaluated ? 1 : NAN;
    cli_kv kv[] = {{"train_loss", m->train_loss, "%.4f"},  {"accepted", m->accepted, "%.0f"},
                   {"rejected", m->rejected ? m->rejected : NAN, "%.0f"}, {"eval_loss", ev * m->eval_loss, "%.4f"},
                   {"eval_acc", ev * m->eval_acc, "%.3f"},  {"epsilon", m->dp ? m->epsilon : NAN, "%.3g"},
                   {"seconds", m->seconds, "%.1f"}};
    cli_progress_done(bar, m->version > 0 ? (long)m->version : m->round, kv, (int)(sizeof kv / sizeof kv[0]));
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
    int serve_wait = 0;
    cli_opt opts[CLI_RUN_MAX_OPTS + 17];
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
    opts[nopts++] = (cli_opt){"serve-wait", OPT_FLAG, &serve_wait, "after the last round, keep serving the dashboard (and \"done\" to late clients) until Ctrl-C or SIGTERM (default: exit when the run is over)", 0, 0};
    opts[nopts++] = (cli_opt){"secagg-fit-timeout", OPT_FLOAT, &secagg_fit_timeout, "with --secagg: seconds after a round opens that its phase 0 (the clients' download and training, then their keys) waits for them", 0.1, 864000};
    opts[nopts++] = (cli_opt){"secagg-phase-timeout", OPT_FLOAT, &secagg_timeout, "with --secagg: seconds each later phase of secure aggregation (shares, masked inputs, unmasking) waits for the clients", 0.1, 86400};
    nopts += cli_run_opts(&r, opts + nopts);
    cli_opt out_opts[] = {CLI_OUTPUT_OPTS};
    opts[nopts++] = out_opts[0];
    opts[nopts++] = out_opts[1];
    const char *usage = "loom server --state DIR --config RUN.json [--listen HOST:PORT] [--tls-cert F --tls-key F]\n"
                        "       loom server add-client --state DIR [--role client|admin|viewer] NAME\n"
                        "       loom server revoke-client --state DIR NAME";
    const char *desc =
        "Coordinates a federated run across machines over HTTPS (docs/protocol.md). Clients (loom client)\n"
        "make only outbound calls: they poll for a task, download the global model, train on their own\n"
        "data and upload an update; the server runs the same round engine as loom sim (sampling,\n"
        "validation, aggregation, strategy), keeps its state in STATE (SQLite), acknowledges an update only\n"
        "once it is on disk, and resumes where it stopped when started again with the same command.\n"
        "Writes STATE/global.safetensors and STATE/metrics.jsonl and exits 0 after the last round.\n"
        "The dashboard is at https://HOST:PORT/ (an administrator's or viewer's token: add-client --role viewer).";
    cli_config *cfg = NULL;
    int pr = cli_parse_config(argc, argv, usage, desc, opts, nopts, &cfg);
    if (pr) return pr > 0 ? 0 : 2;
    if (cli_output_begin("server") != 0) return 2;
    int rc = 1;
    cli_progress bar;
    memset(&bar, 0, sizeof bar);
    loom_model *m = NULL;
    loom_tset *set = NULL, *split_whole = NULL; /* split learning over a full fine-tuning run: the FULL layout */
    loom_split_server *split = NULL;
    float *global = NULL;
    char *run_json = NULL, *model_json = NULL;
    float *kzero = NULL;           /* --client-algo fedkseed: the K scalars start at 0 */
    loom_tvec *kseed_names = NULL; /* and are named kseed.scalars in the checkpoints */
    char base_hash[65];
    int created = 0;
    cli_hetero_net hn;
    memset(&hn, 0, sizeof hn);
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
    if (r.decentralized || r.topology || r.push_sum || r.gossip_steps != 1)
        BAD("--decentralized, --topology, --gossip-steps and --push-sum describe a run without a server: use loom sim "
            "--decentralized, or loom client --peers on each machine");
    if (r.mpi) BAD("--mpi is for loom sim under mpirun, not for a server");
    if (r.finetune_steps || r.client_eval)
        BAD("--%s runs in loom sim: over the network the clients evaluate the global model", r.finetune_steps ? "finetune-steps" : "client-eval");
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
    /* heterogeneous and personalized clients: masks the clients recompute, uploads of their TRAIN values */
    if (cli_hetero_net_setup(&r, set, c.manifest, LOOM_HETERO_MAX_CLIENTS, (uint64_t)r.seed, &hn) != LOOM_OK) {
        cli_fail(NULL);
        goto done;
    }
    if ((hn.h || hn.p) && (r.secagg || sc.mode != LOOM_ENGINE_SYNC))
        BAD("--client-ranks, --fedra-layers, --lora-freeze-a, --hetlora-agg sparsity and --private need synchronous "
            "rounds without --secagg (masked updates are not whole vectors)");
    sc.hetero = hn.h;
    sc.personal = hn.p;
    if (hn.man) c.manifest = hn.man;
    loom_sim_engine_config(&sc, ec); /* the engine loom sim would run on the same RUN.json */
    c.run_json = run_json;
    c.compress = r.compress;
    c.min_clients = min_clients;
    c.max_upload = (size_t)(max_upload_mb * 1048576.0);
    c.poll_ms = poll_ms;
    c.eval_timeout_s = eval_timeout;
    c.threads = threads;
    c.keep_checkpoints = r.keep_checkpoints; /* for loom unlearn --state (include/loom/unlearn.h) */
    c.done_grace_s = done_grace;
    c.serve_wait = serve_wait;
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
    /* ---- split learning (--split-layer K): the server runs layers K.. of every client's steps ---- */
    if (r.split_layer >= 0) {
        if (r.split_layer > loom_model_config(m)->n_layer)
            BAD("--split-layer %d is outside 0..%d (the model's layers)", r.split_layer, loom_model_config(m)->n_layer);
        if (strcmp(r.mode, "sync") || c.secagg || strcmp(r.compress, "none") || sc.fit.scaffold || sc.fit.prox_mu > 0 ||
            sc.algo || sc.dp.mode == LOOM_DP_SGD || sc.fit.dp_clip > 0)
            BAD("--split-layer runs synchronous FedAvg-style rounds of gradient steps: not with --mode %s, --secagg, "
                "--compress, SCAFFOLD, FedProx's --mu, --client-algo or --dp", r.mode);
        loom_peft_config fpc;
        loom_peft_defaults(&fpc, LOOM_PEFT_FULL);
        if (!set && loom_tset_create_layout(&split_whole, m, &fpc) != LOOM_OK) BAD("out of memory");
        tc.split = 1;
        tc.split_layer = r.split_layer;
        if (loom_split_server_create(&split, m, set ? set : split_whole, &tc, 0) != LOOM_OK) {
            cli_fail("--split-layer");
            goto done;
        }
        c.split_step = split_step_cb;
        c.split_update = split_update_cb;
        c.split_ud = split;
        c.split_max_body = loom_split_server_max_request(split);
        fprintf(stderr, "loom server: split learning after layer %d: the server runs layers %d..%d of each client's steps\n",
                r.split_layer, r.split_layer, loom_model_config(m)->n_layer - 1);
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
    cli_info("loom server: %s, %zu trainable values, %d rounds, state in %s", sc.strategy, ec->dim, sc.rounds, state);
    cli_progress_start(&bar, "server", "round", NULL, sc.rounds, -1);
    c.on_round = server_round;
    c.ud = &bar;
    int src = loom_server_run(&c, global);
    cli_progress_end(&bar);
    if (src != LOOM_OK && !(stop_flag && src == LOOM_ESTATE)) {
        cli_fail("server");
        goto done;
    }
    if (stop_flag && !(serve_wait && src == LOOM_OK)) {
        fprintf(stderr, "loom server: stopped; start it again with the same command to continue\n");
        rc = 0;
        goto done;
    }
    printf("%-28s %s/global.safetensors, %s/metrics.jsonl\n", "written", state, state);
    {
        cli_kv res[] = {{"rounds", sc.rounds, NULL}, {"seconds", loom_now() - bar.t0, NULL}};
        const char *strs[] = {"strategy", sc.strategy, "state", state};
        cli_result("server", res, 2, strs, 2);
    }
    rc = 0;
done:
    cli_hetero_net_free(&hn);
    root_clear(&root);
    loom_split_server_free(split);
    loom_tset_free(split_whole);
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
