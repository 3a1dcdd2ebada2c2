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
#include "cli/runspec.h"
#include "cli/sim_report.h"
#include "loom/plot.h"
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/mpi.h"
#include "loom/hetero.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/sim.h"
#include "loom/train.h"
#include "loom/zo.h"

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
    int any = r->client_ranks || r->fedra_layers || r->lora_freeze_a || r->hetlora_prune > 0;
    int stack = !strcmp(r->hetlora_agg, "stack");
    if (strcmp(r->hetlora_agg, "pad") && strcmp(r->hetlora_agg, "rankwise") && !stack) {
        fprintf(stderr, "loom sim: --hetlora-agg '%s' is not pad, rankwise or stack\n", r->hetlora_agg);
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
} progress;

static void on_client(int round, int done, int total, void *ud) {
    progress *p = ud;
    double now = loom_now(), el = now - p->t0;
    if (p->tty) {
        fprintf(stderr, "\r  round %d/%d  clients %d/%d  elapsed %.0fs   ", round, p->rounds, done, total, el);
    } else if (!p->quiet && done < total && now - p->last_line >= p->every) {
        fprintf(stderr, "  round %d/%d  client %d/%d done  elapsed %.0fs\n", round, p->rounds, done, total, el);
        p->last_line = now;
    }
}

static void on_round(const loom_round_metrics *m, void *ud) {
    progress *p = ud;
    double el = loom_now() - p->t0;
    p->last_line = loom_now();
    p->bytes_up += m->bytes_up;
    p->bytes_down += m->bytes_down;
    p->updates += m->accepted;
    char eta[32];
    cli_duration(el / m->round * (p->rounds - m->round), eta, sizeof eta);
    if (p->tty) fprintf(stderr, "\r");
    fprintf(stderr, "  round %4d/%d  train loss %.4f", m->round, p->rounds, m->train_loss);
    if (m->evaluated)
        fprintf(stderr, "  eval loss %.4f acc %.3f (clients %.3f +- %.3f)", m->eval_loss, m->eval_acc, m->eval_acc_mean,
                m->eval_acc_std);
    if (m->evaluated && !isnan(m->attack_success)) fprintf(stderr, "  attack success %.3f", m->attack_success);
    if (m->rejected) fprintf(stderr, "  rejected %d", m->rejected);
    if (m->dp) fprintf(stderr, "  epsilon %.3g", m->epsilon);
    fprintf(stderr, "  %.1fs  ETA %s%s\n", m->seconds, eta, p->tty ? "      " : "");
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
    cli_opt opts[CLI_RUN_MAX_OPTS + 1];
    opts[0] = (cli_opt){"config", OPT_STR, &config, "JSON file of flag values (command-line flags override it)", 0, 0};
    int nopts = 1 + cli_run_opts(&r, opts + 1);
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
    loom_sim_config sc;
    loom_sim_defaults(&sc);
    het_setup het = {0};
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
    prog.rounds = rounds;
    prog.tty = cli_tty() && !r.quiet_clients;
    prog.quiet = r.quiet_clients;
    prog.every = r.progress_every;
    prog.t0 = prog.last_line = loom_now();
    prog.x = calloc((size_t)rounds, sizeof(double));
    prog.acc = calloc((size_t)rounds, sizeof(double));
    prog.loss = calloc((size_t)rounds, sizeof(double));
    prog.asr = calloc((size_t)rounds, sizeof(double));
    sc.on_round = on_round;
    sc.on_client = on_client;
    sc.cb_ud = &prog;
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
    fprintf(stderr, "loom sim: %s%s%s, %s model (%s), %zu clients (%zu training examples), %d per round\n", strategy,
            sc.aggregator ? " over the aggregator " : "", sc.aggregator ? r.aggregator : "",
            loom_model_config(m)->arch == LOOM_ARCH_GPT2 ? "GPT-2" : "Llama", what, part->n_clients, total_ex, per_round);
    fprintf(stderr, "  %d rounds x %d local steps of %d x %d tokens, client %s lr %g, %d workers x %d threads, seed %ld\n",
            rounds, local_steps, B, T, optname, lr, workers, client_threads, seed);
    if (sc.algo) /* zeroth-order clients: their own step size, not the optimizer's */
        fprintf(stderr, "  zeroth-order clients (%s): eps %g, step size %g, restore by %s%s\n", sc.algo->name,
                (double)sc.fit.zo_eps, (double)sc.fit.zo_lr, r.zo_restore, kseed ? ", seed pool of " : "");
    if (kseed) fprintf(stderr, "  %d seeds (%s)\n", r.seed_pool, r.seed_probs);
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
        if (prog.tty) fprintf(stderr, "\n");
        cli_fail("simulation");
        goto done;
    }
    double secs = loom_now() - t0;
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
    } else
        printf("%-28s %.1f MiB down, %.1f MiB up\n", "traffic", traffic, traffic);
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
        if (set) cli_generate_ex(m, set, final, tok, prompt, steps, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
        else cli_generate(m, final, tok, prompt, steps, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
    }
    rc = 0;
done:
    het_free(&het);
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
