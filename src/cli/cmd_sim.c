/* loom sim: federated training of many simulated clients in one process. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/dash_serve.h"
#include "cli/progress.h"
#include "cli/runspec.h"
#include "cli/sim_report.h"
#include "cli/sim_decentral.h"
#include "loom/plot.h"
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/mpi.h"
#include "loom/hetero.h"
#include "loom/personal.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/sim.h"
#include "loom/split.h"
#include "loom/train.h"
#include "loom/zo.h"
#include "loom/unlearn.h"

#include <jansson.h>
#include <unistd.h>

/* ---- heterogeneous clients (--client-ranks, --hetlora-agg, --lora-freeze-a, --fedra-layers, --profile) ---- */

typedef struct {
    loom_hetero *h;
    loom_device_profile *prof;
    int *ranks, *layers;
    const loom_tset *set; /* --hetlora-agg stack: the set and the model whose base takes the merges */
    loom_model *m;
} het_setup;

/* FLoRA: the round's stacked product into the model's own (float) base; the simulator then restarts
 * the adapter. The clients' rank budgets bound what each contributes. */
static int het_stack(void *ud, int round, const float *const *models, const int *clients, const double *w, size_t n) {
    het_setup *hs = ud;
    (void)round;
    int *ranks = NULL;
    if (hs->h && !(ranks = malloc(n * sizeof *ranks))) return loom_error(LOOM_ENOMEM, "out of memory");
    for (size_t i = 0; ranks && i < n; i++) ranks[i] = loom_hetero_rank(hs->h, clients[i]);
    int rc = loom_lora_stack_merge(hs->set, models, ranks, w, n, loom_model_params(hs->m));
    free(ranks);
    return rc;
}

static void het_free(het_setup *hs) {
    loom_hetero_free(hs->h);
    free(hs->prof);
    free(hs->ranks);
    free(hs->layers);
}

/* Builds sc->hetero and sc->profiles from the flags; 0, or -1 after printing the error. */
static int het_configure(const cli_run *r, const loom_tset *set, const loom_model *m, int n, uint64_t seed,
                         loom_sim_config *sc, het_setup *hs) {
    int any = r->client_ranks || r->fedra_layers || r->lora_freeze_a || r->hetlora_prune > 0 || !strcmp(r->hetlora_agg, "sparsity");
    int stack = !strcmp(r->hetlora_agg, "stack");
    if (strcmp(r->hetlora_agg, "pad") && strcmp(r->hetlora_agg, "rankwise") && strcmp(r->hetlora_agg, "sparsity") && !stack) {
        fprintf(stderr, "loom sim: --hetlora-agg '%s' is not pad, rankwise, sparsity or stack\n", r->hetlora_agg);
        return -1;
    }
    if (stack && r->hetlora_prune > 0) {
        fprintf(stderr, "loom sim: --hetlora-prune does not combine with --hetlora-agg stack\n");
        return -1;
    }
    if (stack) { /* FLoRA: merges into the model's float base each round */
        if (!set || loom_tset_config(set)->method != LOOM_PEFT_LORA) {
            fprintf(stderr, "loom sim: --hetlora-agg stack needs --peft lora\n");
            return -1;
        }
        if (loom_model_base_type(m) != LOOM_Q_F32 || strcmp(r->precision, "f32")) {
            fprintf(stderr, "loom sim: --hetlora-agg stack merges into the base each round: it needs a float base "
                    "(--base-dtype f32) and --precision f32\n");
            return -1;
        }
        hs->set = set;
        hs->m = (loom_model *)m;
        sc->stack = het_stack;
        sc->stack_ud = hs;
        fprintf(stderr, "  FLoRA stacking: each round's stacked product is merged into the base, the adapter restarts\n");
    }
    if (!any && !r->profile) return 0;
    if (any && !set) {
        fprintf(stderr, "loom sim: --client-ranks, --fedra-layers and --lora-freeze-a need a trainable set (--peft)\n");
        return -1;
    }
    if (r->profile) {
        hs->prof = calloc((size_t)n, sizeof *hs->prof);
        if (!hs->prof) return fprintf(stderr, "loom sim: out of memory\n"), -1;
        if (loom_profile_load(r->profile, n, seed, hs->prof) != LOOM_OK) return cli_fail(NULL), -1;
        sc->profiles = hs->prof;
    }
    if (!any) return 0;
    int profile_ranks = r->client_ranks && !strcmp(r->client_ranks, "profile");
    int profile_layers = r->fedra_layers && !strcmp(r->fedra_layers, "profile");
    if ((profile_ranks || profile_layers) && !r->profile) {
        fprintf(stderr, "loom sim: --%s profile needs --profile FILE|tiers\n", profile_ranks ? "client-ranks" : "fedra-layers");
        return -1;
    }
    int is_lora = loom_tset_config(set)->method == LOOM_PEFT_LORA, r_max = loom_tset_config(set)->lora_r;
    if ((r->client_ranks || r->lora_freeze_a || r->hetlora_prune > 0) && !is_lora) {
        fprintf(stderr, "loom sim: %s needs --peft lora\n", r->client_ranks ? "--client-ranks"
                        : r->lora_freeze_a ? "--lora-freeze-a" : "--hetlora-prune");
        return -1;
    }
    int L = loom_model_config(m)->n_layer;
    hs->ranks = r->client_ranks ? malloc((size_t)n * sizeof *hs->ranks) : NULL;
    hs->layers = r->fedra_layers ? malloc((size_t)n * sizeof *hs->layers) : NULL;
    if ((r->client_ranks && !hs->ranks) || (r->fedra_layers && !hs->layers))
        return fprintf(stderr, "loom sim: out of memory\n"), -1;
    int rc = LOOM_OK;
    if (profile_ranks) rc = loom_profile_ranks(hs->prof, n, r_max, hs->ranks);
    else if (r->client_ranks) rc = loom_hetero_parse_list(r->client_ranks, "--client-ranks", 1, r_max, seed, n, hs->ranks);
    if (rc == LOOM_OK && profile_layers) rc = loom_profile_layers(hs->prof, n, L, hs->layers);
    else if (rc == LOOM_OK && r->fedra_layers)
        rc = loom_hetero_parse_list(r->fedra_layers, "--fedra-layers", 0, L, seed, n, hs->layers);
    loom_hetero_config hc;
    loom_hetero_defaults(&hc);
    hc.n_clients = n;
    hc.ranks = hs->ranks;
    hc.layers = hs->layers;
    hc.rankwise = !strcmp(r->hetlora_agg, "rankwise");
    hc.freeze_a = r->lora_freeze_a;
    hc.prune_gamma = r->hetlora_prune;
    hc.sparsity = !strcmp(r->hetlora_agg, "sparsity");
    hc.seed = seed;
    if (rc == LOOM_OK) rc = loom_hetero_create(&hs->h, set, &hc);
    if (rc != LOOM_OK) return cli_fail(NULL), -1;
    sc->hetero = hs->h;
    if (hs->ranks) {
        int lo = r_max, hi = 1;
        for (int k = 0; k < n; k++) lo = hs->ranks[k] < lo ? hs->ranks[k] : lo, hi = hs->ranks[k] > hi ? hs->ranks[k] : hi;
        fprintf(stderr, "  HetLoRA: client ranks %d..%d of %d (%s aggregation)\n", lo, hi, r_max, r->hetlora_agg);
    }
    if (r->lora_freeze_a) fprintf(stderr, "  FFA-LoRA: A frozen, B trained\n");
    if (hs->layers) fprintf(stderr, "  FedRA: layer budgets from %s, of %d layers\n", r->fedra_layers, L);
    return 0;
}

typedef struct {
    int rounds, tty, quiet;
    double t0, last_line, every;
    double *acc, *loss, *x, *asr;
    int n;
    int last_line_done;
    double bytes_up, bytes_down; /* the rounds' measured traffic (the engine's counts) */
    long updates;                /* accepted updates */
    loom_dash *dash;             /* --serve: the round in progress goes to the dashboard */
    cli_progress bar;            /* the progress line (progress.h) */
} progress;

static void on_client(int round, int done, int total, void *ud) {
    progress *p = ud;
    if (p->dash) loom_dash_progress(p->dash, round, p->rounds, "fit");
    if (!p->quiet) cli_progress_step(&p->bar, round, done, total, NULL, 0);
}

static void on_round(const loom_round_metrics *m, void *ud) {
    progress *p = ud;
    p->bytes_up += m->bytes_up;
    p->bytes_down += m->bytes_down;
    p->updates += m->accepted;
    double ev = m->evaluated ? 1 : NAN;
    cli_kv kv[] = {{"train_loss", m->train_loss, "%.4f"},
                   {"eval_loss", ev * m->eval_loss, "%.4f"},
                   {"eval_acc", ev * m->eval_acc, "%.3f"},
                   {"clients_acc", ev * m->eval_acc_mean, "%.3f"},
                   {"clients_acc_std", ev * m->eval_acc_std, "%.3f"},
                   {"attack_success", ev * m->attack_success, "%.3f"},
                   {"rejected", m->rejected ? m->rejected : NAN, "%.0f"},
                   {"epsilon", m->dp ? m->epsilon : NAN, "%.3g"},
                   {"seconds", m->seconds, "%.1f"}};
    cli_progress_done(&p->bar, m->round, kv, (int)(sizeof kv / sizeof kv[0]));
    if (p->n < p->rounds) {
        p->x[p->n] = m->round;
        p->acc[p->n] = m->evaluated ? m->eval_acc : NAN;
        p->loss[p->n] = m->evaluated ? m->eval_loss : NAN;
        p->asr[p->n] = m->evaluated ? m->attack_success : NAN;
        p->n++;
    }
}

static int parse_faults(const char *spec, loom_fault **out, int *n) {
    *out = NULL;
    *n = 0;
    if (!spec || !*spec) return LOOM_OK;
    int cap = 1;
    for (const char *s = spec; *s; s++) cap += *s == ',';
    loom_fault *f = calloc((size_t)cap, sizeof *f);
    const char *s = spec;
    while (*s) {
        char kind[16] = "";
        int client, used = 0;
        if (sscanf(s, "%d:%15[a-z]%n", &client, kind, &used) != 2) {
            free(f);
            return loom_error(LOOM_EINVAL, "--fault: expected CLIENT:nan|inf|huge|short|fail[,...], got '%s'", s);
        }
        int k = !strcmp(kind, "nan") ? LOOM_FAULT_NAN : !strcmp(kind, "inf") ? LOOM_FAULT_INF
                : !strcmp(kind, "huge") ? LOOM_FAULT_HUGE : !strcmp(kind, "short") ? LOOM_FAULT_SHORT
                : !strcmp(kind, "fail") ? LOOM_FAULT_FAIL : 0;
        if (!k) {
            free(f);
            return loom_error(LOOM_EINVAL, "--fault: unknown kind '%s' (nan, inf, huge, short, fail)", kind);
        }
        f[(*n)++] = (loom_fault){client, k};
        s += used;
        if (*s == ',') s++;
    }
    *out = f;
    return LOOM_OK;
}

int cmd_sim(int argc, char **argv) {
    cli_run r;
    cli_run_init(&r);
    const char *config = NULL;
    cli_opt opts[CLI_RUN_MAX_OPTS + 6];
    opts[0] = (cli_opt){"config", OPT_STR, &config, "JSON file of flag values (command-line flags override it)", 0, 0};
    int nopts = 1 + cli_run_opts(&r, opts + 1);
    /* --serve: the run's dashboard (src/cli/dash_serve.c) */
    const char *serve = NULL, *serve_token_file = NULL;
    int serve_wait = 0;
    cli_dash_serve dash = {0};
    loom_dash_tee dash_tee;
    const char **dash_names = NULL;
    opts[nopts++] = (cli_opt){"serve", OPT_STR, &serve, "serve the run's dashboard over plain HTTP at [HOST:]PORT (host default 127.0.0.1; port 0: any free port); prints the URL and a fresh token (default: off)", 0, 0};
    opts[nopts++] = (cli_opt){"serve-token-file", OPT_STR, &serve_token_file, "with --serve: the dashboard's token, the first line of FILE (16 to 255 characters; default: a fresh one, printed)", 0, 0};
    opts[nopts++] = (cli_opt){"serve-wait", OPT_FLAG, &serve_wait, "with --serve: keep serving after the last round until Ctrl-C (default: stop at the end)", 0, 0};
    cli_opt out_opts[] = {CLI_OUTPUT_OPTS};
    opts[nopts++] = out_opts[0];
    opts[nopts++] = out_opts[1];
    const char *usage = "loom sim [--config FILE] [--model SHAPE|DIR] [--data shakespeare|FILE | --clients-dir DIR] [options]";
    const char *desc =
        "Simulates federated training in one process (survey section II.A): each round the server samples\n"
        "clients, sends the global model, every sampled client trains --local-steps steps on its own data\n"
        "(eq. 1), and the server aggregates their updates with --strategy (FedAvg = eq. 2, weights |D_n|).\n"
        "Clients run on --workers threads; results are identical for any number of workers. Writes\n"
        "per-round metrics (JSONL), the final global model, checkpoints, and an accuracy plot to --out.\n"
        "The same --config file runs a real federation with loom server (see docs/protocol.md).";
    cli_config *cfg = NULL;
    int pr = cli_parse_config(argc, argv, usage, desc, opts, nopts, &cfg);
    if (pr) return pr > 0 ? 0 : 2;
    if (cli_output_begin("sim") != 0) return 2;
    int rc = 1;
    /* ---- --mpi: one run over the processes of mpirun (include/loom/mpi.h); ranks above 0 stay silent
     * (their errors go to their own stderr) and write nothing ---- */
    int mpi_rank = 0, mpi_size = 1, mpi_err = -1, mpi_phase = 0; /* 0 setup, 1 refused together, 2 running */
    loom_mpi_stats ms0 = {0};
    if (r.mpi) {
        if (loom_mpi_init(&mpi_rank, &mpi_size) != LOOM_OK) {
            cli_fail("--mpi");
            cli_config_free(cfg);
            return 1;
        }
        if (mpi_rank > 0) {
            fflush(stdout);
            fflush(stderr);
            int nul = open("/dev/null", O_WRONLY);
            mpi_err = dup(2);
            if (nul >= 0) {
                dup2(nul, 1);
                dup2(nul, 2);
                close(nul);
            }
        }
    }
    loom_model *m = NULL;
    loom_tokenizer *tok = NULL;
    loom_dataset *ds = NULL;
    loom_dataset **cds = NULL; /* --clients-dir: one dataset per client */
    char **files = NULL;
    size_t nfiles = 0;
    loom_partition *part = NULL;
    uint32_t *root = NULL; /* fltrust: the server's root examples (of root_ds with --root-data, else of ds) */
    loom_dataset *root_ds = NULL;
    loom_client root_cl;
    memset(&root_cl, 0, sizeof root_cl);
    loom_fault *faults = NULL;
    float *global = NULL;
    loom_tset *set = NULL;
    loom_kseed *kseed = NULL; /* --client-algo fedkseed */
    float *kzero = NULL;
    const float *final = NULL; /* the final model: global, or FedKSeed's expansion of it */
    progress prog = {0};
    double *ppl0 = NULL, *ppl1 = NULL; /* --compare: clients' test losses before and after */
    long *ppl_tok = NULL;
    int nfaults = 0, created;
    unsigned char *excluded = NULL; /* --exclude-client */
    loom_sim_config sc;
    loom_sim_defaults(&sc);
    het_setup het = {0};
    loom_tvec *pers_man = NULL;
    loom_personal *pers = NULL;
    loom_personal_eval *pevals = NULL;
    const char *out = r.out, *plot = r.plot;
    int rounds = r.rounds, workers = r.workers, client_threads = r.client_threads;
    long seed = r.seed;

#define BAD(...)                                  \
    do {                                          \
        fprintf(stderr, "loom sim: " __VA_ARGS__); \
        fprintf(stderr, "\n");                    \
        goto done;                                \
    } while (0)
    if ((long)workers * client_threads > cli_max_threads())
        BAD("--workers %d x --client-threads %d is more than %d threads on this machine", workers, client_threads,
            cli_max_threads());
    if (r.clients_dir && (strcmp(r.data, "shakespeare") || strcmp(r.partition, "iid")))
        BAD("--clients-dir gives every client its own file: it replaces --data and --partition");
    if (r.clients_dir && r.compare > 0) BAD("--compare works with --data, not with --clients-dir");
    /* the run directory: a stale checkpoint, or a resume with nothing left to do, fails before any work */
    if (loom_sim_check_out(out, r.resume, rounds) != LOOM_OK) {
        cli_fail(NULL);
        goto done;
    }
    if (out && cli_out_dir("--out", out) != 0) goto done;
    if (plot && cli_out_file("--plot", plot) != 0) goto done;
    if ((serve_token_file || serve_wait) && !serve) {
        rc = 2;
        BAD("--serve-token-file and --serve-wait go with --serve [HOST:]PORT");
    }
    if (serve) { /* --serve: the dashboard is up from here on (the board fills once the run starts) */
        if ((rc = cli_dash_serve_start(&dash, "sim", serve, serve_token_file)) != 0) goto done;
        rc = 1;
        loom_dash_progress(dash.board, 0, rounds, "loading");
    }
    if (parse_faults(r.faults, &faults, &nfaults) != LOOM_OK) {
        cli_fail(NULL);
        goto done;
    }

    if (cli_load_or_create(&m, r.model, (unsigned long long)seed, &created) != LOOM_OK) {
        cli_fail("--model");
        goto done;
    }
    if (r.T > loom_model_config(m)->max_seq) BAD("--seq %d exceeds the model's %d positions", r.T, loom_model_config(m)->max_seq);
    if (cli_peft_setup(&r.peft, m, (unsigned long long)seed, &set) != LOOM_OK) {
        cli_fail(r.peft.adapter ? "--adapter" : "--peft");
        goto done;
    }
    if (cli_tokenizer(&tok, r.tokenizer, created ? NULL : r.model, m) != LOOM_OK) {
        cli_fail("tokenizer");
        goto done;
    }
    /* data and clients */
    if (r.clients_dir) {
        /* one file per client, in name order: the clients of a networked run with the same files */
        if (cli_list_dir(r.clients_dir, &files, &nfiles) != LOOM_OK) {
            cli_fail(NULL);
            goto done;
        }
        cds = calloc(nfiles, sizeof *cds);
        part = calloc(1, sizeof *part);
        if (part) part->clients = calloc(nfiles, sizeof *part->clients);
        if (!cds || !part || !part->clients) BAD("out of memory");
        part->n_clients = nfiles;
        for (size_t i = 0; i < nfiles; i++) {
            if (cli_client_data(&r, files[i], tok, i, &cds[i], &part->clients[i]) != LOOM_OK) {
                cli_fail("--clients-dir");
                goto done;
            }
            part->n_examples += cds[i]->n;
        }
    } else if (!strcmp(r.data, "shakespeare")) {
        char path[4096];
        loom_shakespeare_opts so;
        loom_shakespeare_opts_init(&so);
        so.min_lines = (size_t)r.min_lines;
        so.test_frac = r.test_frac;
        if (cli_shared_file(path, sizeof path, "data/tinyshakespeare/input.txt") != LOOM_OK ||
            loom_shakespeare_load(&ds, &part, path, &so, tok) != LOOM_OK) {
            cli_fail("federated Shakespeare");
            goto done;
        }
    } else {
        loom_dataset_opts dopt;
        loom_dataset_opts_init(&dopt);
        if (cli_is_split_manifest(r.data))
            BAD("--data %s is a split manifest (loom data split): give the data set it was made from with the same "
                "--format and --partition options (splits are deterministic from --seed)", r.data);
        dopt.format = cli_format("sim", r.format);
        if (dopt.format < 0) goto done;
        dopt.text_col = r.text_col;
        dopt.label_col = r.label_col;
        dopt.labels = r.labels;
        dopt.key_col = r.key;
        if (loom_dataset_load(&ds, r.data, &dopt, tok) != LOOM_OK) {
            cli_fail("--data");
            goto done;
        }
        loom_partition_opts po;
        loom_partition_opts_init(&po);
        po.method = loom_partition_method(r.partition);
        if (po.method < 0) BAD("unknown --partition '%s' (iid, dirichlet, natural, quantity)", r.partition);
        po.n_clients = (size_t)r.clients;
        po.alpha = r.alpha;
        po.min_examples = (size_t)(r.min_examples > 0 ? r.min_examples : 0);
        po.seed = (uint64_t)seed;
        if (loom_partition_dataset(&part, ds, &po) != LOOM_OK ||
            loom_partition_split_test(part, r.test_frac, (uint64_t)seed, 0) != LOOM_OK) {
            cli_fail("--partition");
            goto done;
        }
    }
    /* federation settings */
    cli_trainer_ud fu = {.m = m, .ts = set};
    if (cli_run_federation(&r, "sim", part->n_clients, &sc, &fu.tc) != 0) goto done;
    /* ---- distillation: clients train against --teacher ---- */
    if (r.kd.teacher && sc.algo) BAD("--teacher needs --client-algo sgd (a %s client has no gradient)", sc.algo->name);
    if (r.kd.teacher && sc.dp.mode == LOOM_DP_SGD) BAD("--teacher does not combine with --dp sgd");
    if (cli_kd_setup(&r.kd, "sim", m, r.model, r.T, &fu.tc) != 0) goto done;
    if (r.feddf.text && (sc.algo == &loom_client_fedkseed || r.secagg || r.he || strcmp(r.mode, "sync") ||
                         r.client_ranks || r.fedra_layers || r.lora_freeze_a || strcmp(r.hetlora_agg, "pad")))
        BAD("--server-distill needs every client's whole update in synchronous rounds: not with --client-algo fedkseed, "
            "--secagg, --he, --mode %s, or heterogeneous clients", r.mode);
    if (cli_feddf_setup(&r.feddf, "sim", m, set, tok, r.B, r.T, (uint64_t)seed, &sc.post, &sc.post_ud) != 0) goto done;
    if (cli_synth_setup(&r.synth, "sim", m, set, set ? loom_tset_data(set) : loom_model_params(m), tok, r.T,
                        (uint64_t)seed, cds ? NULL : &ds, part) != 0)
        goto done;
    if (r.cont.continual && !r.resume) BAD("--continual extends a run: it needs --resume (and --out)");
    if (r.cont.retention && strcmp(r.mode, "sync")) BAD("--retention-test needs synchronous rounds (--mode sync)");
    if (cli_continual_setup(&r.cont, "sim", m, set, tok, r.B, r.T, &sc) != 0) goto done;
    sc.attack.tok = tok; /* a backdoor's trigger is encoded with the data's tokenizer */
    if (sc.dp.mode == LOOM_DP_SGD) { /* the worst client's sampling rate: the fewest examples */
        size_t fewest = SIZE_MAX;
        for (size_t i = 0; i < part->n_clients; i++)
            if (part->clients[i].n_train < fewest) fewest = part->clients[i].n_train;
        sc.dp.sgd_q = fmin(1.0, (double)r.B / (double)(fewest ? fewest : 1));
    }
    const char *strategy = r.strategy, *optname = r.optimizer;
    int local_steps = r.local_steps, checkpoint_every = r.checkpoint_every, compare = r.compare,
        sample_len = r.sample_len;
    const char *prompt = r.prompt;
    float lr = r.lr;
    int B = r.B, T = r.T;
    if (set) {
        sc.dim = loom_tset_dim(set);
        sc.init = loom_tset_data(set);
        sc.manifest = loom_tset_manifest(set);
    } else {
        sc.dim = loom_model_n_params(m);
        sc.init = loom_model_params(m);
        sc.manifest = loom_model_manifest(m);
    }
    /* FedKSeed (--client-algo fedkseed): the federation trains the pool's K per-seed scalars, and the
     * dense model is their expansion (include/loom/zo.h); `global` then holds K floats, `final` the model */
    if (sc.algo == &loom_client_fedkseed) {
        if (r.resume) BAD("--client-algo fedkseed cannot --resume: its model is the replay of every round's scalars");
        if (loom_kseed_create(&kseed, (uint64_t)seed, r.seed_pool, r.kseed_probs, sc.init, sc.dim) != LOOM_OK) {
            cli_fail("--seed-pool");
            goto done;
        }
        kzero = calloc((size_t)r.seed_pool, sizeof *kzero);
        if (!kzero) BAD("out of memory");
        sc.kseed = kseed;
        sc.dim = (size_t)r.seed_pool;
        sc.init = kzero;
        sc.manifest = NULL;
    }
    sc.make_worker = cli_trainer_make;
    sc.free_worker = cli_trainer_free;
    sc.worker_ud = &fu;
    sc.ds = ds;
    sc.client_ds = (const loom_dataset *const *)cds;
    sc.part = part;
    if (sc.aggregator == &loom_agg_robust && r.robust_cfg.rule == LOOM_ROBUST_FLTRUST) {
        /* the server's root data: --root-data (as loom server reads it), else examples of ds drawn by the seed */
        size_t nroot = (size_t)r.root_examples;
        if (r.root_data) {
            if (cli_root_data(&r, r.root_data, tok, &root_ds, &root_cl, &root, &nroot) != LOOM_OK) {
                cli_fail("--root-data");
                goto done;
            }
            sc.root_ds = root_ds;
        } else {
            if (cds) BAD("--aggregator fltrust with --clients-dir needs --root-data FILE (the server's own examples)");
            if (loom_sim_root_examples(part, (uint64_t)seed, nroot, &root) != LOOM_OK) {
                cli_fail("--root-examples");
                goto done;
            }
        }
        sc.root_idx = root;
        sc.n_root = nroot;
    } else if (r.root_data) BAD("--root-data is for --aggregator fltrust");
    if (sc.algo && (r.client_ranks || r.fedra_layers || r.lora_freeze_a || r.hetlora_prune > 0 || strcmp(r.hetlora_agg, "pad")))
        BAD("--client-ranks, --fedra-layers, --lora-freeze-a, --hetlora-prune and --hetlora-agg need --client-algo sgd: "
            "a %s client perturbs and steps its whole vector", sc.algo->name);
    if (het_configure(&r, set, m, (int)part->n_clients, (uint64_t)seed, &sc, &het) != 0) goto done;
    /* ---- split learning (--split-layer K; include/loom/split.h): the clients run layers 0..K-1 ---- */
    loom_split_cost split_cost = {0};
    if (r.split_layer >= 0) {
        if (sc.algo) BAD("--split-layer trains by gradients: it needs --client-algo sgd, not %s", sc.algo->name);
        if (sc.dp.mode == LOOM_DP_SGD) BAD("--split-layer does not combine with --dp sgd (per-example gradients)");
        if (sc.hetero || r.private_spec)
            BAD("--split-layer does not combine with %s: each side trains the whole of its part",
                r.private_spec ? "--private" : "heterogeneous clients (--client-ranks, --fedra-layers, --lora-freeze-a, --profile)");
        if (sc.fit.scaffold || sc.fit.prox_mu > 0)
            BAD("--split-layer does not combine with %s: the correction would need both sides' values in one place",
                sc.fit.scaffold ? "SCAFFOLD" : "FedProx's --mu");
        if (r.split_layer > loom_model_config(m)->n_layer)
            BAD("--split-layer %d is outside 0..%d (the model's layers)", r.split_layer, loom_model_config(m)->n_layer);
        loom_tset *whole = NULL; /* full fine-tuning: the FULL set's layout says which side holds each weight */
        loom_peft_config fpc;
        loom_peft_defaults(&fpc, LOOM_PEFT_FULL);
        int src = set ? LOOM_OK : loom_tset_create_layout(&whole, m, &fpc);
        if (src == LOOM_OK) src = loom_split_cost_of(set ? set : whole, r.split_layer, r.B, r.T, &split_cost);
        loom_tset_free(whole);
        if (src != LOOM_OK) {
            cli_fail("--split-layer");
            goto done;
        }
        fu.tc.split = 1;
        fu.tc.split_layer = r.split_layer;
        fprintf(stderr, "  split learning after layer %d: %zu trainable values on each client, %zu on the "
                "server (a copy per client, averaged each round); %zu activation floats each way per step\n",
                r.split_layer, split_cost.client_dim, split_cost.server_dim, split_cost.act_floats);
    }
    /* ---- personalization (--private, --finetune-steps, --client-eval; include/loom/personal.h) ---- */
    if (r.private_spec) {
        int marked = 0;
        if (sc.algo || kseed) BAD("--private needs --client-algo sgd (a %s client steps its whole vector)", r.client_algo);
        if (sc.stack) BAD("--private does not combine with --hetlora-agg stack (the stacked product merges every tensor)");
        if (loom_personal_manifest(&pers_man, sc.manifest, r.private_spec, &marked) != LOOM_OK ||
            loom_personal_create(&pers, pers_man, sc.hetero) != LOOM_OK || loom_personal_set_init(pers, sc.init) != LOOM_OK) {
            cli_fail("--private");
            goto done;
        }
        sc.manifest = pers_man;
        sc.personal = pers;
        sc.fit.personal = pers;
        fprintf(stderr, "  personalization: %d tensors (%zu values) private, %zu values shared\n", marked,
                loom_personal_n_private(pers), loom_personal_n_shared(pers));
    }
    sc.finetune_steps = r.finetune_steps;
    sc.client_eval = r.client_eval || r.private_spec || r.finetune_steps > 0;
    if (sc.client_eval && sc.mode != LOOM_ENGINE_SYNC) BAD("--private, --finetune-steps and --client-eval need --mode sync");
    if (sc.client_eval && !(pevals = calloc(part->n_clients, sizeof *pevals))) BAD("out of memory");
    sc.client_evals = pevals;
    sc.step_seconds = r.step_seconds;
    sc.time_spread = r.time_spread;
    sc.faults = faults;
    sc.n_faults = nfaults;
    sc.workers = workers;
    sc.client_threads = client_threads;
    sc.out_dir = mpi_rank == 0 ? out : NULL;
    sc.checkpoint_every = checkpoint_every;
    if (r.mpi) {
        sc.dist.ranks = mpi_size;
        sc.dist.rank = mpi_rank;
        sc.dist.sum = loom_mpi_sum;
        fprintf(stderr, "  MPI: %d processes, client k on rank k mod %d\n", mpi_size, mpi_size);
    }
    sc.resume = r.resume;
    /* ---- unlearning (include/loom/unlearn.h): records kept for loom unlearn, and its runs ---- */
    sc.keep_checkpoints = r.keep_checkpoints;
    sc.keep_updates = r.keep_updates;
    sc.start_from = r.start_from;
    sc.replay_dir = r.replay_updates;
    sc.replay_no_rescale = r.replay_no_rescale;
    if (r.replay_no_rescale && !r.replay_updates) BAD("--replay-no-rescale needs --replay-updates RUN_DIR");
    if (r.exclude_client) {
        if (!(excluded = calloc(part->n_clients, 1))) BAD("out of memory");
        for (const char *p = r.exclude_client; *p;) {
            size_t len = strcspn(p, ",");
            size_t k = 0;
            while (k < part->n_clients && (strlen(part->clients[k].name) != len || strncmp(part->clients[k].name, p, len)))
                k++;
            if (k == part->n_clients) BAD("--exclude-client: no client is named '%.*s'", (int)len, p);
            excluded[k] = 1;
            p += len + (p[len] == ',');
        }
        sc.excluded = excluded;
    }
    if (out) { /* OUT/unlearn/run.json: how loom unlearn reruns this run (a resumed run: its last flags) */
        json_t *j = json_object(), *a = json_array(), *names = json_array();
        char cwd[4096], path[4200];
        for (int i = 1; j && a && i < argc; i++) json_array_append_new(a, json_string(argv[i]));
        for (size_t i = 0; names && i < part->n_clients; i++) json_array_append_new(names, json_string(part->clients[i].name));
        if (!j || !a || !names || !getcwd(cwd, sizeof cwd) || loom_unlearn_mkdirs(out, 0) != LOOM_OK) {
            json_decref(j);
            json_decref(a);
            json_decref(names);
            BAD("cannot prepare %s/unlearn", out);
        }
        json_object_set_new(j, "argv", a);
        json_object_set_new(j, "cwd", json_string(cwd));
        json_object_set_new(j, "clients", names);
        json_object_set_new(j, "rounds", json_integer(rounds));
        json_object_set_new(j, "local_steps", json_integer(local_steps));
        json_object_set_new(j, "keep_checkpoints", json_integer(r.keep_checkpoints));
        json_object_set_new(j, "keep_updates", json_integer(r.keep_updates));
        char *text = json_dumps(j, JSON_INDENT(1));
        json_decref(j);
        snprintf(path, sizeof path, "%s/unlearn/run.json", out);
        int wrc = text ? loom_write_file_atomic(path, text, strlen(text)) : loom_error(LOOM_ENOMEM, "out of memory");
        free(text);
        if (wrc != LOOM_OK) {
            cli_fail(path);
            goto done;
        }
    }
    prog.rounds = rounds;
    prog.tty = cli_tty() && !r.quiet_clients;
    prog.quiet = r.quiet_clients;
    prog.every = r.progress_every;
    prog.t0 = prog.last_line = loom_now();
    cli_progress_start(&prog.bar, "sim", "round", r.quiet_clients ? NULL : "client", rounds, r.progress_every);
    prog.x = calloc((size_t)rounds, sizeof(double));
    prog.acc = calloc((size_t)rounds, sizeof(double));
    prog.loss = calloc((size_t)rounds, sizeof(double));
    prog.asr = calloc((size_t)rounds, sizeof(double));
    sc.on_round = on_round;
    sc.on_client = on_client;
    sc.cb_ud = &prog;
    if (serve) { /* the dashboard gets every metrics row, the run's options and the clients' names */
        dash_names = calloc(part->n_clients, sizeof *dash_names);
        if (!dash_names) BAD("out of memory");
        for (size_t i = 0; i < part->n_clients; i++) dash_names[i] = part->clients[i].name;
        cli_dash_config_run(dash.board, &r);
        if (loom_dash_set_clients(dash.board, (int)part->n_clients, dash_names) != LOOM_OK) BAD("--serve: %s", loom_errmsg());
        for (size_t i = 0; i < part->n_clients; i++) loom_dash_client_seen(dash.board, (int)i, 1, 0, 0, "idle");
        loom_dash_progress(dash.board, 0, rounds, "running");
        sc.also = loom_dash_sink(&dash_tee, dash.board, (loom_metrics_sink){0}, dash_names);
        prog.dash = dash.board;
    }
    if (r.resume && !out) BAD("--resume needs --out (the run directory holding checkpoint.safetensors)");
    global = loom_alloc(sc.dim * sizeof(float));
    int per_round = sc.sample ? sc.sample : sc.sample_frac > 0 ? (int)ceil(sc.sample_frac * part->n_clients) : (int)part->n_clients;
    if (sc.aggregator == &loom_agg_robust && loom_robust_check(&r.robust_cfg, (size_t)per_round) != LOOM_OK)
        BAD("--aggregator %s with %d clients a round (--sample): %s", r.aggregator, per_round, loom_errmsg());
    size_t total_ex = 0;
    for (size_t i = 0; i < part->n_clients; i++) total_ex += part->clients[i].n_train;
    char what[128];
    if (set)
        snprintf(what, sizeof what, "%s: %zu trainable of %zu, base %s", loom_peft_method_name(loom_tset_config(set)->method),
                 sc.dim, loom_model_n_params(m), loom_base_dtype_name(loom_model_base_type(m)));
    else
        snprintf(what, sizeof what, "%s of %zu parameters", created ? "training from scratch" : "full fine-tuning",
                 loom_model_n_params(m));
    cli_info("loom sim: %s%s%s, %s model (%s), %zu clients (%zu training examples), %d per round", strategy,
            sc.aggregator ? " over the aggregator " : "", sc.aggregator ? r.aggregator : "",
            loom_model_config(m)->arch == LOOM_ARCH_GPT2 ? "GPT-2" : "Llama", what, part->n_clients, total_ex, per_round);
    cli_info("  %d rounds x %d local steps of %d x %d tokens, client %s lr %g, %d workers x %d threads, seed %ld",
            rounds, local_steps, B, T, optname, lr, workers, client_threads, seed);
    if (sc.algo) /* zeroth-order clients: their own step size, not the optimizer's */
        cli_info("  zeroth-order clients (%s): eps %g, step size %g, restore by %s%s", sc.algo->name,
                (double)sc.fit.zo_eps, (double)sc.fit.zo_lr, r.zo_restore, kseed ? ", seed pool of " : "");
    if (kseed) cli_info("  %d seeds (%s)", r.seed_pool, r.seed_probs);
    if (compare > 0) {
        ppl0 = calloc(part->n_clients, sizeof *ppl0);
        ppl1 = calloc(part->n_clients, sizeof *ppl1);
        ppl_tok = calloc(part->n_clients, sizeof *ppl_tok);
        if (!ppl0 || !ppl1 || !ppl_tok) BAD("out of memory");
        if (cli_client_losses(m, set, sc.init, ds, part, B, T, client_threads, ppl0, ppl_tok) != LOOM_OK) {
            cli_fail("evaluating the initial model");
            goto done;
        }
        if (sample_len > 0) {
            if (loom_model_n_params(m) < 20000000) loom_set_threads(client_threads); /* one token at a time: few threads */
            printf("sample from the initial model (temperature 0.8):\n");
            fflush(stdout);
            int steps = sample_len + 1 < loom_model_config(m)->max_seq ? sample_len + 1 : loom_model_config(m)->max_seq;
            if (set) cli_generate_ex(m, set, sc.init, tok, prompt, steps, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
            else cli_generate(m, sc.init, tok, prompt, steps, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
            printf("\n");
            fflush(stdout);
        }
    }
    if (r.mpi && r.decentralized) BAD("--mpi does not combine with --decentralized (a run without a server has no sum to share)");
    /* ---- decentralized federation (--decentralized; include/loom/decentral.h, cli/sim_decentral.c) ---- */
    if (!r.decentralized && (r.topology || r.push_sum || r.gossip_steps != 1))
        BAD("--topology, --gossip-steps and --push-sum need --decentralized");
    if (r.decentralized) {
        const char *why = r.split_layer >= 0                    ? "--split-layer (there is no server part)"
                          : r.private_spec || r.finetune_steps || r.client_eval ? "--private, --finetune-steps and --client-eval"
                          : r.feddf.text                        ? "--server-distill (there is no server)"
                          : r.keep_checkpoints || r.keep_updates || r.exclude_client || r.start_from || r.replay_updates
                              ? "--keep-checkpoints, --keep-updates and --exclude-client (unlearning keeps a server's rounds)"
                          : serve ? "--serve (the dashboard shows a server's rounds)"
                                  : NULL;
        if (why) BAD("a decentralized run does not take %s", why);
        if (cli_sim_decentral(&r, &sc, global) != 0) goto done;
        char adir[4096];
        snprintf(adir, sizeof adir, "%s/adapter", out ? out : ".");
        if (out && set && loom_tset_save_peft(set, global, adir, created ? NULL : r.model) == LOOM_OK)
            printf("%-28s %s (PEFT layout, the average model)\n", "adapter", adir);
        else if (out && set) cli_fail("writing the adapter");
        rc = 0;
        goto done;
    }
    if (r.mpi) { /* every process's set-up and checks, then one sum of the failures before any round */
        int bad = loom_sim_dist_check(&sc) != LOOM_OK;
        if (bad) cli_fail(NULL);
        if (bad && mpi_err >= 0) dprintf(mpi_err, "loom sim: rank %d: %s\n", mpi_rank, loom_errmsg());
        int64_t nbad = bad;
        if (loom_mpi_sum(NULL, &nbad, 1) != LOOM_OK) BAD("--mpi: %s", loom_errmsg());
        mpi_phase = nbad ? 1 : 2;
        if (nbad) goto done;
        loom_mpi_get_stats(&ms0);
    }
    double t0 = loom_now();
    if (loom_sim_run(&sc, global) != LOOM_OK) {
        cli_progress_end(&prog.bar);
        cli_fail("simulation");
        goto done;
    }
    double secs = loom_now() - t0;
    if (dash.board) loom_dash_progress(dash.board, rounds, rounds, "done");
    cli_progress_end(&prog.bar);
    if (mpi_rank > 0) { /* rank 0 reports and writes */
        rc = 0;
        goto done;
    }
    final = global;
    if (kseed) {
        if (loom_kseed_sync(kseed, global) != LOOM_OK) {
            cli_fail("FedKSeed's final model");
            goto done;
        }
        final = loom_kseed_model(kseed);
    }
    /* summary */
    int li = -1;
    for (int i = prog.n - 1; i >= 0; i--)
        if (isfinite(prog.acc[i])) {
            li = i;
            break;
        }
    {
        cli_kv res[] = {{"rounds", rounds, NULL}, {"clients", (double)part->n_clients, NULL},
                        {"eval_loss", li >= 0 ? prog.loss[li] : NAN, NULL}, {"eval_acc", li >= 0 ? prog.acc[li] : NAN, NULL},
                        {"perplexity", li >= 0 ? exp(prog.loss[li]) : NAN, NULL},
                        {"attack_success", li >= 0 ? prog.asr[li] : NAN, NULL}, {"bytes_up", prog.bytes_up, NULL},
                        {"bytes_down", prog.bytes_down, NULL}, {"seconds", secs, NULL}};
        const char *strs[] = {"strategy", strategy, "out", out ? out : ""};
        cli_result("sim", res, (int)(sizeof res / sizeof res[0]), strs, out ? 2 : 1);
    }
    printf("\n%-28s %s\n", "strategy", strategy);
    printf("%-28s %d (%d local steps each)\n", "rounds", rounds, local_steps);
    printf("%-28s %zu (%d per round)\n", "clients", part->n_clients, per_round);
    if (li >= 0) {
        printf("%-28s %.4f\n", "final eval loss (pooled)", prog.loss[li]);
        printf("%-28s %.4f (perplexity %.2f)\n", "final eval accuracy", prog.acc[li], exp(prog.loss[li]));
        if (!isnan(prog.asr[li])) printf("%-28s %.4f\n", "final attack success", prog.asr[li]);
    }
    double traffic = (double)sc.dim * 4 * per_round * rounds * (sc.fit.scaffold ? 2 : 1) / 1048576.0;
    printf("%-28s %zu floats (%.2f MiB) per update\n", "trainable vector", sc.dim, sc.dim * 4.0 / 1048576.0);
    if (sc.algo) { /* zeroth-order clients: what the engine counted */
        printf("%-28s %s, %s\n", "client algorithm", sc.algo->name,
               kseed ? "updates as (seed, scalar) pairs (seed_scalar codec)" : "updates as f32 deltas");
        printf("%-28s %.0f bytes per client per round (%.1f KiB); down %.0f bytes\n", "bytes up (measured)",
               prog.updates ? prog.bytes_up / (double)prog.updates : 0.0,
               prog.updates ? prog.bytes_up / (double)prog.updates / 1024.0 : 0.0,
               prog.updates ? prog.bytes_down / (double)prog.updates : 0.0);
        if (kseed)
            printf("%-28s %d seeds: a dense K-vector would be %d bytes\n", "seed pool", r.seed_pool, 4 * r.seed_pool);
    } else if (split_cost.act_floats) { /* split learning: activations and their gradients every step */
        const loom_split_cost *q = &split_cost;
        double per = (double)per_round * rounds, steps = per * local_steps;
        printf("%-28s %zu bytes up (activations + targets), %zu down (their gradient)\n", "split bytes per step",
               q->up_step, q->down_step);
        printf("%-28s %.1f MiB down, %.1f MiB up (client part %zu floats each way per round; sending the whole "
               "set's update would move %.1f MiB each way)\n", "traffic",
               (steps * q->down_step + per * q->client_dim * 4.0) / 1048576.0,
               (steps * q->up_step + per * q->client_dim * 4.0) / 1048576.0, q->client_dim, traffic);
        printf("%-28s %.2f MiB (weights %.2f, activations %.2f, trained state %.2f); running the whole model: "
               "%.2f MiB\n", "client memory", (q->client_weights + q->client_ws + q->client_state) / 1048576.0,
               q->client_weights / 1048576.0, q->client_ws / 1048576.0, q->client_state / 1048576.0,
               (q->model_weights + q->model_ws + q->model_state) / 1048576.0);
    } else if (pers) /* only the shared values travel up */
        printf("%-28s %.1f MiB down, %.1f MiB up (measured; %zu of %zu values private)\n", "traffic", traffic,
               prog.bytes_up / 1048576.0, loom_personal_n_private(pers), sc.dim);
    else
        printf("%-28s %.1f MiB down, %.1f MiB up\n", "traffic", traffic, traffic);
    if (pevals) { /* the per-client evaluation after the last round */
        loom_personal_summary ps;
        loom_personal_summarize(pevals, (int)part->n_clients, &ps);
        printf("%-28s %d clients: global model acc mean %.4f, worst %.4f, loss %.4f\n", "per-client evaluation",
               ps.clients, ps.global_acc_mean, ps.global_acc_min, ps.global_loss_mean);
        if (isfinite(ps.personal_acc_mean))
            printf("%-28s acc mean %.4f, worst %.4f, loss %.4f (%s%d fine-tuning steps)\n", "personalized model",
                   ps.personal_acc_mean, ps.personal_acc_min, ps.personal_loss_mean, pers ? "own private part, " : "",
                   r.finetune_steps);
    }
    printf("%-28s %.1fs (%.2fs per round)\n", "time", secs, secs / rounds);
    if (r.mpi) {
        loom_mpi_stats ms;
        loom_mpi_get_stats(&ms);
        ms.calls -= ms0.calls, ms.words -= ms0.words, ms.seconds -= ms0.seconds;
        double per = rounds > 0 ? 8.0 * (double)ms.words / rounds : 0.0; /* each way, per process */
        printf("%-28s %d processes, %.0f bytes reduced per round (%.2f MiB) in %llu sums, %.3fs in MPI_Allreduce\n",
               "MPI", mpi_size, per, per / 1048576.0, (unsigned long long)ms.calls, ms.seconds);
    }
    printf("%-28s %.0f MiB\n", "peak RSS", loom_peak_rss() / 1048576.0);
    char plotbuf[4096];
    if (!plot && out) {
        snprintf(plotbuf, sizeof plotbuf, "%s/accuracy.svg", out);
        plot = plotbuf;
    }
    if (plot) {
        loom_plot_series s[1] = {{"eval accuracy", prog.x, prog.acc, (size_t)prog.n}};
        char title[256], *svg;
        size_t len;
        snprintf(title, sizeof title, "%s: accuracy on the clients' test data", strategy);
        if (loom_plot_lines_svg(&svg, &len, title, "round", "next-token accuracy", s, 1) == LOOM_OK) {
            if (loom_write_file_atomic(plot, svg, len) == LOOM_OK) printf("%-28s %s\n", "plot", plot);
            free(svg);
        }
    }
    if (out)
        printf("%-28s %s/global.safetensors, %s/metrics.jsonl%s%s%s\n", "written", out, out,
               checkpoint_every > 0 ? ", " : "", checkpoint_every > 0 ? out : "",
               checkpoint_every > 0 ? "/checkpoint.safetensors" : "");
    if (compare > 0) {
        if (cli_client_losses(m, set, final, ds, part, B, T, client_threads, ppl1, ppl_tok) != LOOM_OK) {
            cli_fail("evaluating the trained model");
            goto done;
        }
        cli_print_ppl_table(part, ppl0, ppl1, ppl_tok, compare);
    }
    if (out && het.m) { /* FLoRA: the federated result is the merged base */
        char mdir[4096];
        snprintf(mdir, sizeof mdir, "%s/merged", out);
        if (loom_model_save(m, loom_model_params(m), mdir) == LOOM_OK) printf("%-28s %s (FLoRA's merged model)\n", "model", mdir);
        else cli_fail("writing the merged model");
    }
    if (out && set) {
        char adir[4096];
        snprintf(adir, sizeof adir, "%s/adapter", out);
        if (loom_tset_save_peft(set, final, adir, created ? NULL : r.model) == LOOM_OK)
            printf("%-28s %s (PEFT layout)\n", "adapter", adir);
        else
            cli_fail("writing the adapter");
    }
    if (sample_len > 0) {
        if (loom_model_n_params(m) < 20000000) loom_set_threads(client_threads); /* one token at a time: few threads */
        printf("\nsample from the global model (temperature 0.8):\n");
        fflush(stdout);
        int steps = sample_len + 1 < loom_model_config(m)->max_seq ? sample_len + 1 : loom_model_config(m)->max_seq;
        /* --serve: the sample is also the dashboard's (written to memory, then to stdout) */
        char *sample_text = NULL;
        size_t sample_n = 0;
        FILE *real_stdout = stdout, *mem = dash.board ? open_memstream(&sample_text, &sample_n) : NULL;
        if (mem) stdout = mem;
        if (set) cli_generate_ex(m, set, final, tok, prompt, steps, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
        else cli_generate(m, final, tok, prompt, steps, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
        if (mem) {
            stdout = real_stdout;
            fclose(mem);
            if (sample_text) {
                fputs(sample_text, stdout);
                loom_dash_sample(dash.board, rounds, sample_text);
            }
            free(sample_text);
        }
    }
    rc = 0;
done:
    if (dash.board) {
        fflush(stdout);
        cli_dash_serve_end(&dash, "sim", serve_wait && rc == 0);
    }
    free(dash_names);
    free(pevals);
    loom_personal_free(pers);
    loom_tvec_free(pers_man);
    het_free(&het);
    free(excluded);
    loom_sim_paillier_clear(&r.paillier_cfg);
    free(root);
    cli_client_data_free(&root_cl);
    loom_dataset_free(root_ds);
    free(ppl0);
    free(ppl1);
    free(ppl_tok);
    free(prog.x);
    free(prog.acc);
    free(prog.loss);
    free(prog.asr);
    free(faults);
    loom_free(global);
    loom_kseed_free(kseed);
    free(kzero);
    loom_tset_free(set);
    loom_partition_free(part);
    loom_dataset_free(ds);
    for (size_t i = 0; cds && i < nfiles; i++) loom_dataset_free(cds[i]);
    free(cds);
    cli_free_list(files, nfiles);
    loom_tokenizer_free(tok);
    loom_model_free(m);
    cli_kd_free(&r.kd);
    cli_feddf_free(&r.feddf);
    cli_continual_free(&r.cont);
    cli_config_free(cfg);
    if (r.mpi) {
        if (rc != 0 && mpi_phase == 0) { /* failed in the set-up: the others learn it from the sum of failures */
            if (mpi_err >= 0) dprintf(mpi_err, "loom sim: rank %d: %s\n", mpi_rank, loom_errmsg());
            int64_t nbad = 1;
            loom_mpi_sum(NULL, &nbad, 1);
        } else if (rc != 0 && mpi_phase == 2) { /* failed in a round: the others wait in a sum, end them all */
            if (mpi_err >= 0) dprintf(mpi_err, "loom sim: rank %d failed: %s\n", mpi_rank, loom_errmsg());
            fflush(stderr);
            loom_mpi_abort(rc);
        }
        loom_mpi_finalize();
    }
    if (mpi_err >= 0) close(mpi_err);
    return rc;
}
