/* loom client: one party of a real federation. Polls a loom server over HTTPS, trains on its own data
 * with the same client code as loom sim, and sends back only the update (docs/protocol.md). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/hetero_net.h"
#include "cli/client_peer.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "cli/runspec.h"
#include "loom/core.h"
#include "loom/fl.h"
#include "loom/net.h"
#include "loom/peft.h"
#include "loom/safetensors.h"
#include "loom/split.h"
#include "loom/zo.h"

static volatile int stop_flag;
static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

typedef struct {
    /* the command line */
    const char *data, *model, *tokenizer, *format, *text_col, *label_col, *work_dir;
    int threads;
    long dp_seed; /* --dp local: this client's secret noise seed (0: from the run's seed) */
    /* built in setup */
    cli_run r;
    cli_config *run_cfg;
    loom_model *m;
    loom_tset *set;
    loom_tokenizer *tok;
    loom_dataset *ds;
    loom_client cl;
    loom_sim_config sc;      /* the federation settings (fit config, B, T, seed) */
    cli_trainer_ud tu;
    loom_trainer *tr;
    float *vec, *update, *dc;
    size_t dim;
    int client;
    uint64_t run_id;
    loom_client_state st;
    char state_path[4096], pre_path[4096];
    int state_round; /* the round of the current state (-1: none) */
    loom_kseed *kseed; /* --client-algo fedkseed: the pool and this client's replay of the global model */
    /* split learning (the run's split-layer): which side holds each value, and the open round's connection */
    uint8_t *split_side;
    void *split_conn;
    int split_round;
    /* heterogeneous and personalized clients (src/cli/hetero_net.h): this client's mask each round, and
     * the upload of only the values it sends */
    cli_hetero_net hn;
    uint8_t *mask;
    float *packed, *packed_dc;
    cli_progress bar;  /* rounds trained (progress.h): drawn on a terminal and in --json; the log has the rest */
} client_run;

/* Split learning: the server part of a step, over the connection (include/loom/split.h). */
static int split_remote(void *ud, long step, const float *act, size_t n, const int32_t *targets, size_t nt,
                        float *dact, float *loss) {
    client_run *c = ud;
    (void)nt;
    int C = loom_model_config(c->m)->dim;
    int Tp = (int)(n / ((size_t)c->sc.B * (size_t)C));
    return loom_netclient_split_step(c->split_conn, c->split_round, step, c->sc.B, c->sc.T, Tp, C, act, n, targets,
                                     dact, loss);
}

/* The client's own state (local step counter, SCAFFOLD c_i, compression residual) survives restarts of
 * the process, and a round is trained from the same state however often it is trained: before a fit
 * of round R the state is kept as "pre" of R (client-state-pre-R.safetensors, tagged R). A fit of R when
 * the current state is already of round R or later starts from that pre again: the process stopped
 * after training, before its upload was safely pending, or the server's run was restarted at an earlier
 * round (loom unlearn --state), whose later rounds then go on from the state trained again. After the
 * fit the state is saved as the current one, of round R. */
static int save_state(client_run *c, const char *path, int round) {
    loom_st_writer *w;
    int rc = loom_st_writer_create(&w);
    if (rc != LOOM_OK) return rc;
    int64_t steps = (int64_t)c->st.steps, one[1] = {1}, dim[1] = {(int64_t)c->dim};
    rc = loom_st_writer_add(w, "steps", LOOM_DT_I64, 1, one, &steps);
    if (rc == LOOM_OK && c->st.control) rc = loom_st_writer_add(w, "control", LOOM_DT_F32, 1, dim, c->st.control);
    if (rc == LOOM_OK && c->st.residual) rc = loom_st_writer_add(w, "residual", LOOM_DT_F32, 1, dim, c->st.residual);
    int64_t pdim[1] = {(int64_t)c->st.priv_dim};
    if (rc == LOOM_OK && c->st.priv) rc = loom_st_writer_add(w, "private", LOOM_DT_F32, 1, pdim, c->st.priv);
    char buf[32];
    snprintf(buf, sizeof buf, "%016llx", (unsigned long long)c->run_id);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "run_id", buf);
    snprintf(buf, sizeof buf, "%d", round);
    if (rc == LOOM_OK) rc = loom_st_writer_meta(w, "round", buf);
    if (rc == LOOM_OK) rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    return rc;
}

/* Loads the state saved in path when it belongs to this run: *round its tag (-1: nothing loaded). */
static int load_state(client_run *c, const char *path, int *round) {
    *round = -1;
    struct stat sb;
    if (stat(path, &sb) != 0) return LOOM_OK; /* a new client */
    loom_st_file *f;
    int rc = loom_st_open(&f, path);
    if (rc != LOOM_OK) return rc;
    char want[32];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)c->run_id);
    const char *rid = loom_st_meta(f, "run_id"), *rd = loom_st_meta(f, "round");
    if (!rid || strcmp(rid, want) || !rd) {
        loom_st_close(f);
        loom_log(LOOM_WARN, "%s belongs to another run: starting this run's client state afresh", path);
        return LOOM_OK;
    }
    const loom_st_tensor *t = loom_st_find(f, "steps");
    if (!t || t->dtype != LOOM_DT_I64 || t->numel != 1) rc = loom_error(LOOM_EFORMAT, "%s: no step counter", path);
    else {
        int64_t s;
        memcpy(&s, t->data, sizeof s);
        c->st.steps = (uint64_t)s;
    }
    const loom_st_tensor *ct = loom_st_find(f, "control");
    if (rc == LOOM_OK && ct && (rc = loom_client_state_control(&c->st, c->dim)) == LOOM_OK)
        rc = loom_st_to_f32(ct, c->st.control, c->dim);
    const loom_st_tensor *rt = loom_st_find(f, "residual");
    if (rc == LOOM_OK && rt && (rc = loom_client_state_residual(&c->st, c->dim)) == LOOM_OK)
        rc = loom_st_to_f32(rt, c->st.residual, c->dim);
    const loom_st_tensor *pt = loom_st_find(f, "private"); /* --private: this client's own values */
    if (rc == LOOM_OK && pt && c->hn.p) {
        size_t np = loom_personal_n_private(c->hn.p);
        if (pt->numel != np) rc = loom_error(LOOM_EFORMAT, "%s: %zu private values, the run has %zu", path, pt->numel, np);
        else if (!(c->st.priv = loom_alloc((np ? np : 1) * sizeof(float)))) rc = loom_error(LOOM_ENOMEM, "out of memory");
        else {
            c->st.priv_dim = np;
            rc = loom_st_to_f32(pt, c->st.priv, np);
        }
    }
    if (rc == LOOM_OK) *round = atoi(rd); /* rd lives in f */
    loom_st_close(f);
    return rc;
}

/* The state a fit of round R starts from (see save_state). */
static int state_for_round(client_run *c, int round) {
    loom_client_state keep = c->st;
    loom_client_state_init(&c->st);
    int tag = -1, rc = LOOM_OK;
    snprintf(c->pre_path, sizeof c->pre_path, "%s/client-state-pre-%d.safetensors", c->work_dir, round);
    if (c->state_round >= round) rc = load_state(c, c->pre_path, &tag); /* trained before: its pre */
    if (rc == LOOM_OK && tag == round) { /* this round was trained before: start from the same state */
        loom_client_state_clear(&keep);
        loom_log(LOOM_INFO, "round %d: training again from the state it was first trained from", round);
        return LOOM_OK;
    }
    loom_client_state_clear(&c->st);
    c->st = keep;
    if (rc != LOOM_OK) return rc;
    return save_state(c, c->pre_path, round);
}

static int setup(void *ud, const loom_netclient_hello *h) {
    client_run *c = ud;
    cli_progress_start(&c->bar, "client", "round", NULL, h->rounds, -1);
    cli_run_init(&c->r);
    if (cli_run_apply_json(&c->r, h->run_json, "the server's run configuration", &c->run_cfg) != 0)
        return loom_error(LOOM_EFORMAT, "the server sent a run configuration this client cannot use");
    /* the data flags are this client's own */
    c->r.format = c->format;
    c->r.text_col = c->text_col;
    c->r.label_col = c->label_col;
    int created = 0, rc;
    if (h->model_config_json) {
        /* a full fine-tuning run: the architecture comes from the server, the weights with the global model */
        loom_config mc;
        if ((rc = loom_config_parse(&mc, h->model_config_json)) != LOOM_OK) return loom_error_context(rc, "the server's model_config");
        if ((rc = loom_model_create(&c->m, &mc, (uint64_t)c->r.seed)) != LOOM_OK) return rc;
        created = 1;
    } else {
        if (!c->model)
            return loom_error(LOOM_EINVAL, "this is a %s run: give the frozen base model with --model",
                              c->r.peft.peft ? c->r.peft.peft : "PEFT");
        if ((rc = cli_load_or_create(&c->m, c->model, (unsigned long long)c->r.seed, &created)) != LOOM_OK) return rc;
        char hash[65];
        if ((rc = cli_base_sha256(c->m, hash)) != LOOM_OK) return rc;
        if (h->base_sha256 && strcmp(hash, h->base_sha256))
            return loom_error(LOOM_EINVAL, "--model %s is not the run's base model (SHA-256 %.16s..., the server's is %.16s...)",
                              c->model, hash, h->base_sha256);
    }
    if (c->r.T > loom_model_config(c->m)->max_seq)
        return loom_error(LOOM_EINVAL, "the run's seq %d exceeds the model's %d positions", c->r.T, loom_model_config(c->m)->max_seq);
    if ((rc = cli_peft_setup(&c->r.peft, c->m, (unsigned long long)c->r.seed, &c->set)) != LOOM_OK) return rc;
    c->dim = c->set ? loom_tset_dim(c->set) : loom_model_n_params(c->m);
    size_t dense = c->dim;
    if (!strcmp(c->r.client_algo, "fedkseed")) c->dim = (size_t)c->r.seed_pool; /* the update: K scalars */
    if (c->dim != h->dim)
        return loom_error(LOOM_EINVAL, "the server's trainable vector has %zu values, this client's %zu: the run's "
                                       "model or PEFT settings differ", h->dim, c->dim);
    if ((rc = cli_tokenizer(&c->tok, c->tokenizer, created ? NULL : c->model, c->m)) != LOOM_OK) return rc;
    if ((rc = cli_client_data(&c->r, c->data, c->tok, (size_t)h->client, &c->ds, &c->cl)) != LOOM_OK)
        return loom_error_context(rc, "--data %s", c->data);
    loom_sim_defaults(&c->sc);
    if (cli_run_federation(&c->r, "client", (size_t)h->n_clients, &c->sc, &c->tu.tc) != 0)
        return loom_error(LOOM_EINVAL, "the server's run configuration was refused (see above)");
    if (c->sc.fit.dp_clip > 0) { /* local DP: the noise the server must not be able to regenerate */
        if (c->dp_seed > 0) c->sc.fit.dp_seed = (uint64_t)c->dp_seed;
        else
            loom_log(LOOM_WARN, "--dp local: the noise is drawn from the run's seed, which the server knows (it could "
                                "subtract it); give --dp-seed with a secret number");
    }
    c->tu.m = c->m;
    c->tu.ts = c->set;
    if (c->r.split_layer >= 0) { /* split learning: this client runs the embeddings and layers 0..K-1 */
        if (c->sc.compress.codec != LOOM_CODEC_F32 || c->sc.fit.dp_clip > 0 || c->sc.fit.scaffold || c->sc.algo)
            return loom_error(LOOM_EINVAL, "split learning needs plain f32 updates of gradient steps");
        loom_tset *whole = NULL;
        loom_peft_config fpc;
        loom_peft_defaults(&fpc, LOOM_PEFT_FULL);
        if (!c->set && (rc = loom_tset_create_layout(&whole, c->m, &fpc)) != LOOM_OK) return rc;
        if (!(c->split_side = loom_alloc(c->dim))) rc = loom_error(LOOM_ENOMEM, "out of memory");
        if (rc == LOOM_OK) rc = loom_split_sides(c->set ? c->set : whole, c->r.split_layer, c->split_side);
        loom_tset_free(whole);
        if (rc != LOOM_OK) return rc;
        c->tu.tc.split = 1;
        c->tu.tc.split_layer = c->r.split_layer;
    }
    if ((rc = cli_trainer_make(&c->tu, &c->tr, &c->vec)) != LOOM_OK) return rc;
    if (c->split_side) loom_trainer_set_split_remote(c->tr, split_remote, c);
    if (c->sc.algo == &loom_client_fedkseed &&
        (rc = loom_kseed_create(&c->kseed, (uint64_t)c->r.seed, c->r.seed_pool, c->r.kseed_probs,
                                c->set ? loom_tset_data(c->set) : loom_model_params_const(c->m), dense)) != LOOM_OK)
        return rc;
    c->update = loom_alloc(c->dim * sizeof(float));
    c->dc = c->sc.fit.scaffold ? loom_alloc(c->dim * sizeof(float)) : NULL;
    if (!c->update || (c->sc.fit.scaffold && !c->dc)) return loom_error(LOOM_ENOMEM, "out of memory");
    c->client = h->client;
    c->run_id = h->run_id;
    const loom_tvec *man = c->set ? loom_tset_manifest(c->set) : loom_model_manifest(c->m);
    if ((rc = cli_hetero_net_setup(&c->r, c->set, man, (int)h->n_clients, (uint64_t)c->r.seed, &c->hn)) != LOOM_OK)
        return rc;
    if (c->hn.h || c->hn.p) {
        c->mask = malloc(c->dim);
        c->packed = loom_alloc(c->dim * sizeof(float));
        c->packed_dc = c->sc.fit.scaffold ? loom_alloc(c->dim * sizeof(float)) : NULL;
        if (!c->mask || !c->packed || (c->sc.fit.scaffold && !c->packed_dc)) return loom_error(LOOM_ENOMEM, "out of memory");
        c->sc.fit.personal = c->hn.p;
        if (c->hn.p && c->set && (rc = loom_personal_set_init(c->hn.p, loom_tset_data(c->set))) != LOOM_OK) return rc;
        loom_log(LOOM_INFO, "heterogeneous client: %s%s", c->hn.h ? "masked training" : "",
                 c->hn.p ? (c->hn.h ? ", private part kept here" : "private part kept here") : "");
    }
    snprintf(c->state_path, sizeof c->state_path, "%s/client-state.safetensors", c->work_dir);
    int tag;
    if ((rc = load_state(c, c->state_path, &tag)) != LOOM_OK) return rc;
    c->state_round = tag; /* the round the current state was trained in (-1: none) */
    loom_log(LOOM_INFO, "client %d of %d: %zu training and %zu test examples, %zu trainable values", h->client,
             h->n_clients, c->cl.n_train, c->cl.n_test, c->dim);
    return LOOM_OK;
}

static loom_client_data client_data(const client_run *c) {
    loom_client_data d = {c->ds, c->cl.train, c->cl.n_train, c->cl.test, c->cl.n_test, c->sc.B, c->sc.T,
                          loom_sim_client_seed(c->sc.seed, c->client)};
    return d;
}

static int fit(void *ud, const loom_netclient_task *t, const float *global, const float *control, loom_update *u,
               loom_codec_opts *co) {
    client_run *c = ud;
    loom_fit_output out;
    memset(&out, 0, sizeof out);
    out.update = c->update;
    out.control_delta = c->dc;
    loom_client_ctx ctx = {c->tr, c->vec, c->dim, c->kseed};
    loom_client_data d = client_data(c);
    int rc = state_for_round(c, t->round);
    if (rc != LOOM_OK) return rc;
    /* with compression the update becomes exactly what the server will decode (error feedback) */
    const loom_client_algo *algo = c->sc.algo ? c->sc.algo : &loom_client_local_sgd; /* --client-algo */
    c->split_conn = t->conn;
    c->split_round = t->round;
    loom_fit_config fc = c->sc.fit;
    if (c->hn.h) { /* this round's truncation, frozen part and layers: the server computes the same */
        if ((rc = loom_hetero_mask(c->hn.h, c->client, t->round, c->mask)) != LOOM_OK) return rc;
        fc.mask = c->mask;
    }
    rc = loom_client_run_fit(algo, &ctx, &d, t->round, global, control, &fc, &c->sc.compress, &c->st, &out);
    /* split learning: the server trained the server side of this round's update; it completes the upload */
    if (rc == LOOM_OK && c->split_side) rc = loom_netclient_split_update(t->conn, t->round, c->split_side, c->update, c->dim);
    if (rc != LOOM_OK) return rc;
    if ((rc = save_state(c, c->state_path, t->round)) != LOOM_OK) return rc;
    c->state_round = t->round;
    /* fault injection for the tests: die between training and the upload, as a power cut would */
    const char *crash = getenv("LOOM_TEST_CRASH_AFTER_FIT");
    if (crash && atoi(crash) == t->round) _exit(9);
    *u = (loom_update){c->run_id, t->round, t->version, c->client, (uint64_t)c->cl.n_train, out.res.loss,
                       out.res.tokens, LOOM_CODEC_F32, c->dim, c->update, c->sc.fit.scaffold ? c->dc : NULL, 0};
    *co = c->sc.compress;
    if (c->hn.h || c->hn.p) { /* only the values the server's mask expects travel (docs/protocol.md) */
        loom_personal_send_mask(c->hn.p, c->hn.h ? c->mask : NULL, c->dim, c->mask);
        u->len = loom_mask_sent(c->mask, c->dim);
        loom_mask_pack(c->mask, c->dim, c->update, c->packed);
        u->values = c->packed;
        if (u->control) {
            loom_mask_pack(c->mask, c->dim, c->dc, c->packed_dc);
            u->control = c->packed_dc;
        }
    }
    loom_log(LOOM_INFO, "round %d: trained %d steps, loss %.4f", t->round, out.res.steps, out.res.loss);
    if (c->bar.tty || cli_output_mode() == CLI_OUT_JSON) {
        cli_kv kv[] = {{"loss", out.res.loss, "%.4f"}, {"steps", out.res.steps, "%.0f"}};
        cli_progress_done(&c->bar, t->round, kv, 2);
    }
    return LOOM_OK;
}

static int evaluate(void *ud, const loom_netclient_task *t, const float *global, loom_eval_result *res) {
    client_run *c = ud;
    (void)t;
    loom_client_ctx ctx = {c->tr, c->vec, c->dim, c->kseed};
    loom_client_data d = client_data(c);
    return loom_client_run_eval(c->sc.algo ? c->sc.algo : &loom_client_local_sgd, &ctx, &d, global, res);
}

/* Fault injection for the tests: LOOM_TEST_SECAGG_EXIT_AFTER=PHASE (or ROUND:PHASE) stops the process
 * as soon as the server accepted its phase-PHASE message of a secure round (of round ROUND, or of any
 * round), as a client that vanishes there would. */
static void secagg_sent(void *ud, int round, int phase) {
    (void)ud;
    const char *e = getenv("LOOM_TEST_SECAGG_EXIT_AFTER");
    if (!e || !*e) return;
    int r = 0, p = -1;
    if (strchr(e, ':') ? sscanf(e, "%d:%d", &r, &p) != 2 : sscanf(e, "%d", &p) != 1) return;
    if (p == phase && (r == 0 || r == round)) {
        fprintf(stderr, "loom client: LOOM_TEST_SECAGG_EXIT_AFTER: exiting after phase %d of round %d\n", phase, round);
        _exit(9);
    }
}

/* A token file holds the token alone (surrounding white space is dropped); at most 4 KiB. */
static int read_token(const char *path, char *tok, size_t cap) {
    char *data = NULL;
    size_t len = 0;
    struct stat sb;
    if (stat(path, &sb) != 0) return loom_error(LOOM_EIO, "--token-file %s: %s", path, strerror(errno));
    if (sb.st_size > 4096) return loom_error(LOOM_EINVAL, "--token-file %s is larger than a token", path);
    int rc = loom_read_file(path, &data, &len);
    if (rc != LOOM_OK) return rc;
    size_t a = 0, b = len;
    while (a < b && (data[a] == ' ' || data[a] == '\n' || data[a] == '\r' || data[a] == '\t')) a++;
    while (b > a && (data[b - 1] == ' ' || data[b - 1] == '\n' || data[b - 1] == '\r' || data[b - 1] == '\t')) b--;
    if (b == a || b - a >= cap) rc = loom_error(LOOM_EINVAL, "--token-file %s does not hold a token", path);
    else {
        memcpy(tok, data + a, b - a);
        tok[b - a] = 0;
    }
    memset(data, 0, len);
    free(data);
    return rc;
}

int cmd_client(int argc, char **argv) {
    const char *server = NULL, *name = NULL, *token_file = NULL, *ca = NULL;
    client_run c;
    memset(&c, 0, sizeof c);
    c.format = "text";
    c.threads = 0;
    float give_up = 600;
    const char *peers = NULL, *run_config = NULL, *listen = NULL, *tls_cert = NULL, *tls_key = NULL, *peer_out = NULL;
    cli_opt opts[] = {
        {"server", OPT_STR, &server, "the server's address, https://HOST:PORT", 0, 0},
        {"name", OPT_STR, &name, "this client's registered name", 0, 0},
        {"token-file", OPT_STR, &token_file, "file holding this client's token (from loom server add-client)", 0, 0},
        {"ca-cert", OPT_STR, &ca, "PEM certificate to trust for the server (e.g. its STATE/tls/cert.pem); default: the system's CAs", 0, 0},
        {"data", OPT_STR, &c.data, "this client's training data (stays on this machine)", 0, 0},
        {"model", OPT_STR, &c.model, "the frozen base model of a PEFT run (checked against the server's hash); a full run needs none", 0, 0},
        {"tokenizer", OPT_STR, &c.tokenizer, "tokenizer (default: the model's, or byte-level)", 0, 0},
        {"format", OPT_STR, &c.format, "data format: " CLI_FORMATS, 0, 0},
        {"text-col", OPT_STR, &c.text_col, "text column/field", 0, 0},
        {"label-col", OPT_STR, &c.label_col, "label column/field", 0, 0},
        {"work-dir", OPT_STR, &c.work_dir, "directory for downloads, the pending upload and this client's state (default ./loom-client-NAME)", 0, 0},
        {"threads", OPT_INT, &c.threads, "threads for training (0 = the machine's)", 0, cli_max_threads()},
        {"dp-seed", OPT_LONG, &c.dp_seed, "--dp local runs: a secret seed of this client's noise (keep it, and give the same after a restart; default: from the run's seed, which the server knows)", 0, 9e18},
        {"give-up", OPT_FLOAT, &give_up, "seconds without reaching the server before giving up", 1, 1e9},
        CLI_OUTPUT_OPTS,
        /* ---- peer-to-peer decentralized federation (include/loom/peer.h) ---- */
        {"peers", OPT_STR, &peers, "a decentralized run without a server: the peers file (lines NAME URL TOKEN_SHA256 [CA_FILE]); this peer gossips with its --topology neighbours over HTTPS", 0, 0},
        {"config", OPT_STR, &run_config, "--peers: the run's RUN.json (the one loom sim --decentralized reads: model, topology, gossip-steps, rounds, training)", 0, 0},
        {"listen", OPT_STR, &listen, "--peers: HOST:PORT to serve this peer's vector on (default: the host and port of its URL in the peers file)", 0, 0},
        {"tls-cert", OPT_STR, &tls_cert, "--peers: PEM certificate of this peer (default: a self-signed development certificate in WORK/tls/, which the others name as its CA_FILE)", 0, 0},
        {"tls-key", OPT_STR, &tls_key, "--peers: PEM private key of --tls-cert", 0, 0},
        {"out", OPT_STR, &peer_out, "--peers: file for this peer's final model (default WORK/peer.safetensors)", 0, 0},
    };
    int pr = cli_parse(argc, argv,
                       "loom client --server https://HOST:PORT --name NAME --token-file F --data FILE [--ca-cert F] "
                       "[--model M] [options]",
                       "Takes part in a federated run coordinated by loom server: polls for tasks, downloads the\n"
                       "global model (resuming interrupted downloads), trains on --data with the run's settings,\n"
                       "and uploads only the update, retrying transient failures. Exits 0 when the run ends.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (cli_output_begin("client") != 0) return 2;
    int rc = 1;
    char token[512], wd[4096];
#define BAD(...)                                     \
    do {                                             \
        fprintf(stderr, "loom client: " __VA_ARGS__); \
        fprintf(stderr, "\n");                       \
        goto done;                                   \
    } while (0)
    if (peers) { /* ---- a peer of a decentralized federation (cli/client_peer.c) ---- */
        if (server) BAD("--peers and --server exclude each other: a decentralized run has no server");
        if (!name) BAD("--name is required (this peer's name in the peers file)");
        if (!token_file) BAD("--token-file is required (this peer's token)");
        if (!c.data) BAD("--data is required (this peer's training data)");
        if (read_token(token_file, token, sizeof token) != LOOM_OK) {
            cli_fail(NULL);
            goto done;
        }
        if (!c.work_dir) {
            snprintf(wd, sizeof wd, "loom-peer-%s", name);
            c.work_dir = wd;
        }
        if (cli_out_dir("--work-dir", c.work_dir) != 0) goto done;
        if (peer_out && cli_out_file("--out", peer_out) != 0) goto done;
        cli_event_log("peer");
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        signal(SIGPIPE, SIG_IGN);
        cli_peer_args pa = {peers, name, token, run_config, c.data, c.model, c.work_dir, listen, tls_cert, tls_key,
                            peer_out, c.threads, give_up, &stop_flag};
        rc = cli_client_peer(&pa);
        goto done;
    }
    if (run_config || listen || tls_cert || tls_key || peer_out) BAD("--config, --listen, --tls-cert, --tls-key and --out are for --peers");
    if (!server) BAD("--server https://HOST:PORT is required");
    if (strncmp(server, "https://", 8)) BAD("--server %s: the address must start with https://", server);
    if (!name) BAD("--name is required");
    if (loom_net_check_name(name) != LOOM_OK) {
        cli_fail("--name");
        goto done;
    }
    if (!token_file) BAD("--token-file is required");
    if (!c.data) BAD("--data is required (this client's training data)");
    if (loom_dataset_format(c.format) < 0) BAD("unknown --format '%s' (%s)", c.format, CLI_FORMATS);
    if (read_token(token_file, token, sizeof token) != LOOM_OK) {
        cli_fail(NULL);
        goto done;
    }
    if (!c.work_dir) {
        snprintf(wd, sizeof wd, "loom-client-%s", name);
        c.work_dir = wd;
    }
    if (cli_out_dir("--work-dir", c.work_dir) != 0) goto done;
    char base_hash[65];
    const char *base = NULL;
    if (c.model) {
        /* the base's hash goes with hello: the server refuses a client holding another base */
        loom_model *bm = NULL;
        int created;
        if (cli_load_or_create(&bm, c.model, 1, &created) != LOOM_OK) {
            cli_fail("--model");
            goto done;
        }
        if (!created && cli_base_sha256(bm, base_hash) == LOOM_OK) base = base_hash;
        loom_model_free(bm);
    }
    if (c.threads > 0) loom_set_threads(c.threads);
    cli_event_log("client");
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    loom_client_state_init(&c.st);
    loom_netclient_config nc;
    memset(&nc, 0, sizeof nc);
    nc.url = server;
    nc.name = name;
    nc.token = token;
    nc.ca_cert = ca;
    nc.work_dir = c.work_dir;
    nc.base_sha256 = base;
    nc.setup = setup;
    nc.fit = fit;
    nc.evaluate = evaluate;
    nc.ud = &c;
    nc.give_up_s = give_up;
    nc.version = LOOM_VERSION;
    nc.stop = &stop_flag;
    nc.on_secagg_sent = secagg_sent;
    if (loom_netclient_run(&nc) != LOOM_OK) {
        cli_progress_end(&c.bar);
        cli_fail("client");
        goto done;
    }
    cli_progress_end(&c.bar);
    cli_info("loom client: %s", stop_flag ? "stopped" : "the run is over");
    {
        const char *strs[] = {"status", stop_flag ? "stopped" : "done"};
        cli_result("client", NULL, 0, strs, 1);
    }
    rc = 0;
done:
    memset(token, 0, sizeof token);
    if (c.tr || c.vec) cli_trainer_free(&c.tu, c.tr, c.vec);
    loom_kseed_free(c.kseed);
    cli_hetero_net_free(&c.hn);
    free(c.mask);
    loom_free(c.packed);
    loom_free(c.packed_dc);
    loom_free(c.update);
    loom_free(c.dc);
    loom_free(c.split_side);
    loom_client_state_clear(&c.st);
    cli_client_data_free(&c.cl);
    loom_dataset_free(c.ds);
    loom_tokenizer_free(c.tok);
    loom_tset_free(c.set);
    loom_model_free(c.m);
    cli_config_free(c.run_cfg);
    return rc;
}
