/* loom client --peers FILE (see client_peer.h): the run's settings from --config (the RUN.json loom sim
 * reads), this peer's data, and the same client training as a simulated peer with the same index. */
#include "cli/client_peer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/common.h"
#include "cli/runspec.h"
#include "loom/core.h"
#include "loom/fl.h"
#include "loom/peer.h"
#include "loom/peft.h"
#include "loom/sim.h"
#include "loom/zo.h"

typedef struct {
    const loom_client_algo *algo;
    loom_client_ctx ctx;
    loom_client_data d;
    loom_fit_config fc;
    loom_client_state st;
} peer_fit;

static int fit(void *ud, int round, const float *x, float *update, double *loss) {
    peer_fit *p = ud;
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = update;
    int rc = loom_client_run_fit(p->algo, &p->ctx, &p->d, round, x, NULL, &p->fc, NULL, &p->st, &out);
    *loss = out.res.loss;
    return rc;
}

int cli_client_peer(const cli_peer_args *a) {
    int rc = 1, n = 0, self = -1, created = 0;
    loom_peer_entry *peers = NULL;
    cli_run r;
    cli_run_init(&r);
    cli_config *cfg = NULL;
    loom_model *m = NULL;
    loom_tset *set = NULL;
    loom_tokenizer *tok = NULL;
    loom_dataset *ds = NULL;
    loom_client cl;
    memset(&cl, 0, sizeof cl);
    cli_trainer_ud tu;
    memset(&tu, 0, sizeof tu);
    loom_trainer *tr = NULL;
    float *vec = NULL, *final = NULL;
    peer_fit pf;
    memset(&pf, 0, sizeof pf);
    loom_client_state_init(&pf.st);
#define PBAD(...)                                     \
    do {                                              \
        fprintf(stderr, "loom client: " __VA_ARGS__); \
        fprintf(stderr, "\n");                        \
        goto done;                                    \
    } while (0)
    if (!a->config) PBAD("--peers needs --config RUN.json (the run's settings, as loom sim reads them)");
    if (loom_peers_load(a->peers, &peers, &n) != LOOM_OK) PBAD("--peers: %s", loom_errmsg());
    for (int i = 0; i < n; i++)
        if (!strcmp(peers[i].name, a->name)) self = i;
    if (self < 0) PBAD("--name %s is not in the peers file %s", a->name, a->peers);
    cli_opt opts[CLI_RUN_MAX_OPTS];
    int nopts = cli_run_opts(&r, opts);
    if (cli_config_read(a->config, opts, nopts, &cfg) != 0) goto done;
    if (r.sample || strcmp(r.mode, "sync") || (strcmp(r.strategy, "fedavg") && strcmp(r.strategy, "fedprox")))
        PBAD("--config %s: a decentralized run takes no --sample, --mode or --strategy other than fedavg and fedprox",
             a->config);
    const char *model = a->model ? a->model : r.model;
    if (cli_load_or_create(&m, model, (unsigned long long)r.seed, &created) != LOOM_OK) {
        cli_fail("--model");
        goto done;
    }
    if (r.T > loom_model_config(m)->max_seq) PBAD("the run's seq %d exceeds the model's %d positions", r.T, loom_model_config(m)->max_seq);
    if (cli_peft_setup(&r.peft, m, (unsigned long long)r.seed, &set) != LOOM_OK) {
        cli_fail("--peft");
        goto done;
    }
    if (cli_tokenizer(&tok, r.tokenizer, created ? NULL : model, m) != LOOM_OK) {
        cli_fail("tokenizer");
        goto done;
    }
    if (cli_client_data(&r, a->data, tok, (size_t)self, &ds, &cl) != LOOM_OK) {
        cli_fail("--data");
        goto done;
    }
    loom_sim_config sc;
    loom_sim_defaults(&sc);
    if (cli_run_federation(&r, "client", (size_t)n, &sc, &tu.tc) != 0) goto done;
    tu.m = m;
    tu.ts = set;
    size_t dim = set ? loom_tset_dim(set) : loom_model_n_params(m);
    if (sc.algo == &loom_client_fedkseed) PBAD("--client-algo fedkseed is not for a decentralized run");
    if (cli_trainer_make(&tu, &tr, &vec) != LOOM_OK) {
        cli_fail("the trainer");
        goto done;
    }
    if (a->threads > 0) loom_set_threads(a->threads);
    pf.algo = sc.algo ? sc.algo : &loom_client_local_sgd;
    pf.ctx = (loom_client_ctx){tr, vec, dim, NULL};
    pf.d = (loom_client_data){ds, cl.train, cl.n_train, cl.test, cl.n_test, sc.B, sc.T, loom_sim_client_seed(sc.seed, self)};
    pf.fc = sc.fit;
    final = loom_alloc(dim * sizeof(float));
    if (!final) PBAD("out of memory");
    loom_peer_config pc;
    memset(&pc, 0, sizeof pc);
    pc.peers = peers;
    pc.n = n;
    pc.self = self;
    pc.token = a->token;
    pc.listen = a->listen;
    pc.tls_cert = a->tls_cert;
    pc.tls_key = a->tls_key;
    pc.work_dir = a->work_dir;
    pc.topology = r.topology;
    pc.seed = (uint64_t)r.seed;
    pc.rounds = sc.rounds;
    pc.gossip_steps = r.gossip_steps;
    pc.dim = dim;
    pc.manifest = set ? loom_tset_manifest(set) : loom_model_manifest(m);
    pc.init = set ? loom_tset_data(set) : loom_model_params(m);
    pc.fit = fit;
    pc.ud = &pf;
    pc.give_up_s = a->give_up;
    pc.stop = a->stop;
    fprintf(stderr, "loom client: peer %s (%d of %d), %zu training and %zu test examples, %zu trainable values\n", a->name,
            self, n, cl.n_train, cl.n_test, dim);
    if (loom_peer_run(&pc, final) != LOOM_OK) {
        cli_fail("peer");
        goto done;
    }
    char path[4200];
    if (a->out) snprintf(path, sizeof path, "%s", a->out);
    else snprintf(path, sizeof path, "%s/peer.safetensors", a->work_dir);
    if (loom_tvec_write(pc.manifest, final, NULL, path) != LOOM_OK) {
        cli_fail("writing the final model");
        goto done;
    }
    loom_eval_result ev;
    if (loom_client_run_eval(pf.algo, &pf.ctx, &pf.d, final, &ev) == LOOM_OK && ev.count > 0)
        fprintf(stderr, "loom client: peer %s: final model on its test data: loss %.4f, accuracy %.4f\n", a->name,
                ev.tokens ? ev.loss_sum / (double)ev.tokens : 0.0, (double)ev.correct / (double)ev.count);
    fprintf(stderr, "loom client: the decentralized run is over; this peer's model: %s\n", path);
    rc = 0;
done:
    loom_free(final);
    if (tr || vec) cli_trainer_free(&tu, tr, vec);
    loom_client_state_clear(&pf.st);
    cli_client_data_free(&cl);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_tset_free(set);
    loom_model_free(m);
    cli_config_free(cfg);
    free(peers);
    return rc;
}
