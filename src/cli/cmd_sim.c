/* loom sim: federated training of many simulated clients in one process. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/sim_report.h"
#include "loom/plot.h"
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/partition.h"
#include "loom/peft.h"
#include "loom/sim.h"
#include "loom/train.h"

typedef struct {
    const loom_model *m;
    const loom_tset *ts; /* NULL: full fine-tuning */
    loom_train_config tc;
} full_ud;

/* Full fine-tuning: each worker trains its own copy of all weights. */
/* With a trainable set each worker trains its own copy of the set over the shared frozen base. */
static int full_make(void *ud, loom_trainer **tr, float **vec) {
    full_ud *u = ud;
    size_t dim = u->ts ? loom_tset_dim(u->ts) : loom_model_n_params(u->m);
    *vec = loom_alloc(dim * sizeof(float));
    if (!*vec) return LOOM_ENOMEM;
    int rc = u->ts ? loom_trainer_create_peft(tr, u->m, loom_model_params_const(u->m), u->ts, *vec, &u->tc)
                   : loom_trainer_create(tr, u->m, *vec, &u->tc);
    if (rc != LOOM_OK) {
        loom_free(*vec);
        *vec = NULL;
    }
    return rc;
}

static void full_free(void *ud, loom_trainer *tr, float *vec) {
    (void)ud;
    loom_trainer_free(tr);
    loom_free(vec);
}

typedef struct {
    int rounds, tty, quiet;
    double t0, last_line, every;
    double *acc, *loss, *x;
    int n;
    int last_line_done;
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
    char eta[32];
    cli_duration(el / m->round * (p->rounds - m->round), eta, sizeof eta);
    if (p->tty) fprintf(stderr, "\r");
    fprintf(stderr, "  round %4d/%d  train loss %.4f", m->round, p->rounds, m->train_loss);
    if (m->evaluated)
        fprintf(stderr, "  eval loss %.4f acc %.3f (clients %.3f +- %.3f)", m->eval_loss, m->eval_acc, m->eval_acc_mean,
                m->eval_acc_std);
    if (m->rejected) fprintf(stderr, "  rejected %d", m->rejected);
    fprintf(stderr, "  %.1fs  ETA %s%s\n", m->seconds, eta, p->tty ? "      " : "");
    if (p->n < p->rounds) {
        p->x[p->n] = m->round;
        p->acc[p->n] = m->evaluated ? m->eval_acc : NAN;
        p->loss[p->n] = m->evaluated ? m->eval_loss : NAN;
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

/* --sample: a whole number is a count in [1, n], anything else a fraction in (0, 1]. */
static int parse_sample(const char *s, size_t n, int *count, double *frac) {
    char *end;
    errno = 0;
    long long c = strtoll(s, &end, 10);
    if (*s && !*end && !errno && c >= 1 && (unsigned long long)c <= n) {
        *count = (int)c;
        return 0;
    }
    errno = 0;
    double v = strtod(s, &end);
    if (*s && !*end && !errno && isfinite(v) && v > 0 && v <= 1 && v != 1.0 / 0.0) {
        *frac = v;
        return 0;
    }
    fprintf(stderr, "loom sim: --sample expects a count of clients in [1, %zu] or a fraction in (0, 1], got '%s'\n", n,
            s);
    return -1;
}


int cmd_sim(int argc, char **argv) {
    /* defaults: a small federated Shakespeare run */
    const char *model = "tiny", *data = "shakespeare", *format = "text", *text_col = NULL, *label_col = NULL,
               *key = NULL, *partition = "iid", *tokp = NULL, *strategy = "fedavg", *optname = "sgd", *out = NULL,
               *sample_s = NULL, *faults_s = NULL, *config = NULL, *plot = NULL, *prompt = "";
    int clients = 10, rounds = 20, local_steps = 10, B = 8, T = 64, workers = 2, client_threads = 1, eval_every = 1,
        eval_clients = 0, min_examples = 0, min_updates = 1, checkpoint_every = 0, resume = 0, scaffold_option = 2,
        sample_len = 200, min_lines = 64, quiet_clients = 0;
    float progress_every = 5;
    int compare = 0;
    long seed = 1;
    cli_peft_opts po;
    cli_peft_init(&po);
    /* NAN = not given: the strategy's default applies */
    float lr = -1.0f, momentum = 0.0f, wd = 0.0f, clip = 1.0f, alpha = 0.5f, test_frac = 0.2f, server_lr = NAN,
          server_momentum = NAN, beta1 = NAN, beta2 = NAN, tau = NAN, mu = NAN, max_norm = 0, update_clip = 0,
          step_seconds = 0, time_spread = 0, deadline = 0;
    cli_opt opts[] = {
        {"config", OPT_STR, &config, "JSON file of flag values (command-line flags override it)", 0, 0},
        {"model", OPT_STR, &model, "model dir / .bin, or a shape / config.json to train from scratch", 0, 0},
        {"tokenizer", OPT_STR, &tokp, "tokenizer (default: the model's, or byte-level)", 0, 0},
        {"data", OPT_STR, &data, "'shakespeare' (federated Shakespeare, one client per role, from $LOOM_SHARED/data/tinyshakespeare) or a data file", 0, 0},
        {"format", OPT_STR, &format, "data format: " CLI_FORMATS, 0, 0},
        {"text-col", OPT_STR, &text_col, "text column/field", 0, 0},
        {"label-col", OPT_STR, &label_col, "label column/field", 0, 0},
        {"key", OPT_STR, &key, "key column/field for natural splits", 0, 0},
        {"partition", OPT_STR, &partition, "iid, dirichlet, natural or quantity (not for shakespeare)", 0, 0},
        {"clients", OPT_INT, &clients, "number of clients (iid, dirichlet, quantity)", 1, 10000000},
        {"alpha", OPT_FLOAT, &alpha, "Dirichlet concentration", 1e-6, 1e6},
        {"min-examples", OPT_INT, &min_examples, "minimum examples per client", 0, 1e9},
        {"min-lines", OPT_INT, &min_lines, "shakespeare: minimum lines for a role to be a client", 1, 1e9},
        {"test-frac", OPT_FLOAT, &test_frac, "share of each client's examples held out for evaluation", 0, 0.99},
        {"rounds", OPT_INT, &rounds, "federated rounds", 1, 10000000},
        {"local-steps", OPT_INT, &local_steps, "client optimizer steps per round (fedsgd: batches averaged)", 1, 10000000},
        {"batch", OPT_INT, &B, "client batch size", 1, 65536},
        {"seq", OPT_INT, &T, "tokens per sequence", 2, 1048576},
        {"lr", OPT_FLOAT, &lr, "client learning rate (default 0.1 for sgd, 0.001 for adamw)", 0, 1000},
        {"optimizer", OPT_STR, &optname, "client optimizer: sgd or adamw (reset every round)", 0, 0},
        {"momentum", OPT_FLOAT, &momentum, "client SGD momentum", 0, 1},
        {"weight-decay", OPT_FLOAT, &wd, "client weight decay", 0, 10},
        {"clip", OPT_FLOAT, &clip, "client gradient-norm clip (0 = off)", 0, 1e9},
        {"strategy", OPT_STR, &strategy, "fedavg, fedsgd, fedprox, fedavgm, fedadagrad, fedadam, fedyogi, scaffold", 0, 0},
        {"server-lr", OPT_FLOAT, &server_lr, "server learning rate (strategy default when unset)", 0, 10000},
        {"server-momentum", OPT_FLOAT, &server_momentum, "fedavgm momentum", 0, 1},
        {"beta1", OPT_FLOAT, &beta1, "fedadam/fedyogi/fedadagrad beta1", 0, 1},
        {"beta2", OPT_FLOAT, &beta2, "fedadam/fedyogi beta2", 0, 1},
        {"tau", OPT_FLOAT, &tau, "adaptive strategies' tau", 0, 1e6},
        {"mu", OPT_FLOAT, &mu, "fedprox proximal weight", 0, 1e6},
        {"scaffold-option", OPT_INT, &scaffold_option, "SCAFFOLD client control update: 1 or 2", 1, 2},
        {"sample", OPT_STR, &sample_s, "clients per round: a count (e.g. 10) or a fraction (e.g. 0.1); default all", 0, 0},
        {"min-updates", OPT_INT, &min_updates, "accepted updates needed to aggregate a round", 1, 10000000},
        {"max-update-norm", OPT_FLOAT, &max_norm, "reject updates with a larger L2 norm (0 = no bound)", 0, 1e30},
        {"update-clip", OPT_FLOAT, &update_clip, "server scales each update down to this L2 norm before aggregating (0 = off)", 0, 1048576},
        {"fault", OPT_STR, &faults_s, "inject broken updates or failures: CLIENT:nan|inf|huge|short|fail[,...] (testing defences)", 0, 0},
        {"step-seconds", OPT_FLOAT, &step_seconds, "virtual clock: simulated seconds per local step (0 = every client instant)", 0, 1e9},
        {"time-spread", OPT_FLOAT, &time_spread, "virtual clock: log-normal sigma of the clients' speeds (slow clients stay slow)", 0, 10},
        {"deadline", OPT_FLOAT, &deadline, "virtual clock: seconds a round waits; later updates are refused as late (0 = none)", 0, 1e12},
        {"workers", OPT_INT, &workers, "worker threads training clients in parallel", 1, cli_max_threads()},
        {"client-threads", OPT_INT, &client_threads, "threads inside one client's training (fixed: results do not depend on --workers)", 1, cli_max_threads()},
        {"eval-every", OPT_INT, &eval_every, "evaluate on the clients' test splits every N rounds (0 = last only)", 0, 1e9},
        {"eval-clients", OPT_INT, &eval_clients, "evaluate at most N clients (0 = all)", 0, 1e9},
        {"seed", OPT_LONG, &seed, "seed for initialisation, sampling, data order", 0, 9e18},
        {"out", OPT_STR, &out, "run directory: metrics.jsonl, global.safetensors, checkpoint, plot", 0, 0},
        {"checkpoint-every", OPT_INT, &checkpoint_every, "write OUT/checkpoint.safetensors every N rounds", 0, 1e9},
        {"resume", OPT_FLAG, &resume, "continue from OUT/checkpoint.safetensors", 0, 0},
        {"plot", OPT_STR, &plot, "SVG of evaluation accuracy and loss per round (default OUT/accuracy.svg)", 0, 0},
        {"sample-len", OPT_INT, &sample_len, "tokens of text generated by the final global model (0 = none)", 0, 1000000},
        {"prompt", OPT_STR, &prompt, "prompt for that sample", 0, 0},
        {"quiet-clients", OPT_FLAG, &quiet_clients, "no per-client progress lines", 0, 0},
        {"compare", OPT_INT, &compare, "before training, measure the initial model on every client's held-out text and sample from it; at the end, print perplexity before/after for the N clients with the most test text (0 = off)", 0, 1000000},
        {"progress-every", OPT_FLOAT, &progress_every, "seconds between per-client progress lines when stderr is not a terminal", 0, 3600},
        CLI_PEFT_METHOD_OPTS(po),
        CLI_PEFT_LOAD_OPTS(po),
    };
    int nopts = (int)(sizeof opts / sizeof opts[0]);
    const char *usage = "loom sim [--config FILE] [--model SHAPE|DIR] [--data shakespeare|FILE] [options]";
    const char *desc =
        "Simulates federated training in one process (survey section II.A): each round the server samples\n"
        "clients, sends the global model, every sampled client trains --local-steps steps on its own data\n"
        "(eq. 1), and the server aggregates their updates with --strategy (FedAvg = eq. 2, weights |D_n|).\n"
        "Clients run on --workers threads; results are identical for any number of workers. Writes\n"
        "per-round metrics (JSONL), the final global model, checkpoints, and an accuracy plot to --out.";
    /* config file first, then the command line */
    cli_config *cfg = NULL;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
    if (config && cli_config_read(config, opts, nopts, &cfg) != 0) return 2;
    int pr = cli_parse(argc, argv, usage, desc, opts, nopts, NULL, NULL, 0);
    if (pr) {
        cli_config_free(cfg);
        return pr > 0 ? 0 : 2;
    }
    int rc = 1;
    loom_model *m = NULL;
    loom_tokenizer *tok = NULL;
    loom_dataset *ds = NULL;
    loom_partition *part = NULL;
    loom_fault *faults = NULL;
    float *global = NULL;
    loom_tset *set = NULL;
    progress prog = {0};
    double *ppl0 = NULL, *ppl1 = NULL; /* --compare: clients' test losses before and after */
    long *ppl_tok = NULL;
    int nfaults = 0, created;
    loom_sim_config sc;
    loom_sim_defaults(&sc);

#define BAD(...)                                  \
    do {                                          \
        fprintf(stderr, "loom sim: " __VA_ARGS__); \
        fprintf(stderr, "\n");                    \
        goto done;                                \
    } while (0)
    if (rounds < 1) BAD("--rounds must be >= 1");
    if (local_steps < 1) BAD("--local-steps must be >= 1");
    if (B < 1 || T < 2) BAD("--batch must be >= 1 and --seq >= 2");
    if (workers < 1) BAD("--workers must be >= 1");
    if (client_threads < 1) BAD("--client-threads must be >= 1");
    if ((long)workers * client_threads > cli_max_threads())
        BAD("--workers %d x --client-threads %d is more than %d threads on this machine", workers, client_threads,
            cli_max_threads());
    if (!(lr >= 0) && lr != -1.0f) BAD("--lr must be >= 0");
    if (!(test_frac >= 0 && test_frac < 1)) BAD("--test-frac must be in [0, 1)");
    if (scaffold_option != 1 && scaffold_option != 2) BAD("--scaffold-option must be 1 or 2");
    if (!(max_norm >= 0) || isinf(max_norm)) BAD("--max-update-norm must be finite and >= 0 (0 = no bound)");
    /* the run directory: a stale checkpoint, or a resume with nothing left to do, fails before any work */
    if (loom_sim_check_out(out, resume, rounds) != LOOM_OK) {
        cli_fail(NULL);
        goto done;
    }
    if (out && cli_out_dir("--out", out) != 0) goto done;
    if (plot && cli_out_file("--plot", plot) != 0) goto done;
    if (parse_faults(faults_s, &faults, &nfaults) != LOOM_OK) {
        cli_fail(NULL);
        goto done;
    }

    if (cli_load_or_create(&m, model, (unsigned long long)seed, &created) != LOOM_OK) {
        cli_fail("--model");
        goto done;
    }
    if (T > loom_model_config(m)->max_seq) BAD("--seq %d exceeds the model's %d positions", T, loom_model_config(m)->max_seq);
    if (cli_peft_setup(&po, m, (unsigned long long)seed, &set) != LOOM_OK) {
        cli_fail(po.adapter ? "--adapter" : "--peft");
        goto done;
    }
    if (cli_tokenizer(&tok, tokp, created ? NULL : model, m) != LOOM_OK) {
        cli_fail("tokenizer");
        goto done;
    }
    /* data and clients */
    if (!strcmp(data, "shakespeare")) {
        char path[4096];
        loom_shakespeare_opts so;
        loom_shakespeare_opts_init(&so);
        so.min_lines = (size_t)min_lines;
        so.test_frac = test_frac;
        if (cli_shared_file(path, sizeof path, "data/tinyshakespeare/input.txt") != LOOM_OK ||
            loom_shakespeare_load(&ds, &part, path, &so, tok) != LOOM_OK) {
            cli_fail("federated Shakespeare");
            goto done;
        }
    } else {
        loom_dataset_opts dopt;
        loom_dataset_opts_init(&dopt);
        if (cli_is_split_manifest(data))
            BAD("--data %s is a split manifest (loom data split): give the data set it was made from with the same "
                "--format and --partition options (splits are deterministic from --seed)", data);
        dopt.format = cli_format("sim", format);
        if (dopt.format < 0) goto done;
        dopt.text_col = text_col;
        dopt.label_col = label_col;
        dopt.key_col = key;
        if (loom_dataset_load(&ds, data, &dopt, tok) != LOOM_OK) {
            cli_fail("--data");
            goto done;
        }
        loom_partition_opts po;
        loom_partition_opts_init(&po);
        po.method = loom_partition_method(partition);
        if (po.method < 0) BAD("unknown --partition '%s' (iid, dirichlet, natural, quantity)", partition);
        if (clients < 1) BAD("--clients must be >= 1");
        po.n_clients = (size_t)clients;
        po.alpha = alpha;
        po.min_examples = (size_t)(min_examples > 0 ? min_examples : 0);
        po.seed = (uint64_t)seed;
        if (loom_partition_dataset(&part, ds, &po) != LOOM_OK ||
            loom_partition_split_test(part, test_frac, (uint64_t)seed, 0) != LOOM_OK) {
            cli_fail("--partition");
            goto done;
        }
    }
    /* federation settings */
    sc.strategy = strategy;
    if (loom_strategy_defaults(strategy, &sc.sp) != LOOM_OK) {
        cli_fail("--strategy");
        goto done;
    }
    if (!isnan(server_lr)) sc.sp.server_lr = server_lr;
    if (!isnan(server_momentum)) sc.sp.momentum = server_momentum;
    if (!isnan(beta1)) sc.sp.beta1 = beta1;
    if (!isnan(beta2)) sc.sp.beta2 = beta2;
    if (!isnan(tau)) sc.sp.tau = tau;
    if (!isnan(mu)) sc.sp.mu = mu;
    if (loom_strategy_params_check(&sc.sp) != LOOM_OK) {
        /* name the flag that sets the refused parameter */
        static const char *const names[][2] = {{"server_lr", "--server-lr"}, {"momentum", "--server-momentum"},
                                               {"beta1", "--beta1"}, {"beta2", "--beta2"}, {"tau", "--tau"},
                                               {"mu", "--mu"}, {"v_init", "strategy v_init"}};
        const char *flag = "strategy parameters";
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (!strncmp(loom_errmsg(), names[i][0], strlen(names[i][0]))) flag = names[i][1];
        cli_fail(flag);
        goto done;
    }
    sc.fit.local_steps = local_steps;
    sc.fit.prox_mu = !strcmp(strategy, "fedprox") ? sc.sp.mu : 0;
    sc.fit.scaffold = !strcmp(strategy, "scaffold") ? scaffold_option : 0;
    sc.fit.gradient_only = !strcmp(strategy, "fedsgd");
    if (sample_s && parse_sample(sample_s, part->n_clients, &sc.sample, &sc.sample_frac) != 0) goto done;
    full_ud fu = {.m = m, .ts = set};
    loom_train_defaults(&fu.tc);
    if (loom_opt_kind_parse(optname, &fu.tc.opt.kind) != LOOM_OK) {
        cli_fail("--optimizer");
        goto done;
    }
    if (lr < 0) lr = fu.tc.opt.kind == LOOM_OPT_ADAMW ? 1e-3f : 0.1f;
    fu.tc.opt.lr = lr;
    fu.tc.opt.momentum = momentum;
    fu.tc.opt.weight_decay = wd;
    fu.tc.clip = clip;
    fu.tc.warmup = 0;
    fu.tc.total_steps = 0;
    fu.tc.B = B;
    fu.tc.T = T;
    if (set) {
        sc.dim = loom_tset_dim(set);
        sc.init = loom_tset_data(set);
        sc.manifest = loom_tset_manifest(set);
    } else {
        sc.dim = loom_model_n_params(m);
        sc.init = loom_model_params(m);
        sc.manifest = loom_model_manifest(m);
    }
    sc.make_worker = full_make;
    sc.free_worker = full_free;
    sc.worker_ud = &fu;
    sc.ds = ds;
    sc.part = part;
    sc.B = B;
    sc.T = T;
    sc.rounds = rounds;
    sc.min_updates = min_updates;
    sc.max_update_norm = max_norm;
    sc.clip_norm = update_clip;
    sc.step_seconds = step_seconds;
    sc.time_spread = time_spread;
    sc.deadline = deadline;
    sc.faults = faults;
    sc.n_faults = nfaults;
    sc.workers = workers;
    sc.client_threads = client_threads;
    sc.seed = (uint64_t)seed;
    sc.eval_every = eval_every;
    sc.eval_clients = eval_clients;
    sc.out_dir = out;
    sc.checkpoint_every = checkpoint_every;
    sc.resume = resume;
    prog.rounds = rounds;
    prog.tty = cli_tty() && !quiet_clients;
    prog.quiet = quiet_clients;
    prog.every = progress_every;
    prog.t0 = prog.last_line = loom_now();
    prog.x = calloc((size_t)rounds, sizeof(double));
    prog.acc = calloc((size_t)rounds, sizeof(double));
    prog.loss = calloc((size_t)rounds, sizeof(double));
    sc.on_round = on_round;
    sc.on_client = on_client;
    sc.cb_ud = &prog;
    if (resume && !out) BAD("--resume needs --out (the run directory holding checkpoint.safetensors)");
    global = loom_alloc(sc.dim * sizeof(float));
    int per_round = sc.sample ? sc.sample : sc.sample_frac > 0 ? (int)ceil(sc.sample_frac * part->n_clients) : (int)part->n_clients;
    size_t total_ex = 0;
    for (size_t i = 0; i < part->n_clients; i++) total_ex += part->clients[i].n_train;
    char what[128];
    if (set)
        snprintf(what, sizeof what, "%s: %zu trainable of %zu, base %s", loom_peft_method_name(loom_tset_config(set)->method),
                 sc.dim, loom_model_n_params(m), loom_base_dtype_name(loom_model_base_type(m)));
    else
        snprintf(what, sizeof what, "%s of %zu parameters", created ? "training from scratch" : "full fine-tuning",
                 loom_model_n_params(m));
    fprintf(stderr, "loom sim: %s, %s model (%s), %zu clients (%zu training examples), %d per round\n", strategy,
            loom_model_config(m)->arch == LOOM_ARCH_GPT2 ? "GPT-2" : "Llama", what, part->n_clients, total_ex, per_round);
    fprintf(stderr, "  %d rounds x %d local steps of %d x %d tokens, client %s lr %g, %d workers x %d threads, seed %ld\n",
            rounds, local_steps, B, T, optname, lr, workers, client_threads, seed);
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
    double t0 = loom_now();
    if (loom_sim_run(&sc, global) != LOOM_OK) {
        if (prog.tty) fprintf(stderr, "\n");
        cli_fail("simulation");
        goto done;
    }
    double secs = loom_now() - t0;
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
    }
    double traffic = (double)sc.dim * 4 * per_round * rounds * (sc.fit.scaffold ? 2 : 1) / 1048576.0;
    printf("%-28s %zu floats (%.2f MiB) per update\n", "trainable vector", sc.dim, sc.dim * 4.0 / 1048576.0);
    printf("%-28s %.1f MiB down, %.1f MiB up\n", "traffic", traffic, traffic);
    printf("%-28s %.1fs (%.2fs per round)\n", "time", secs, secs / rounds);
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
        if (cli_client_losses(m, set, global, ds, part, B, T, client_threads, ppl1, ppl_tok) != LOOM_OK) {
            cli_fail("evaluating the trained model");
            goto done;
        }
        cli_print_ppl_table(part, ppl0, ppl1, ppl_tok, compare);
    }
    if (out && set) {
        char adir[4096];
        snprintf(adir, sizeof adir, "%s/adapter", out);
        if (loom_tset_save_peft(set, global, adir, created ? NULL : model) == LOOM_OK)
            printf("%-28s %s (PEFT layout)\n", "adapter", adir);
        else
            cli_fail("writing the adapter");
    }
    if (sample_len > 0) {
        if (loom_model_n_params(m) < 20000000) loom_set_threads(client_threads); /* one token at a time: few threads */
        printf("\nsample from the global model (temperature 0.8):\n");
        fflush(stdout);
        int steps = sample_len + 1 < loom_model_config(m)->max_seq ? sample_len + 1 : loom_model_config(m)->max_seq;
        if (set) cli_generate_ex(m, set, global, tok, prompt, steps, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
        else cli_generate(m, global, tok, prompt, steps, 0.8f, 0, 1.0f, (unsigned long long)seed, NULL);
    }
    rc = 0;
done:
    free(ppl0);
    free(ppl1);
    free(ppl_tok);
    free(prog.x);
    free(prog.acc);
    free(prog.loss);
    free(faults);
    loom_free(global);
    loom_tset_free(set);
    loom_partition_free(part);
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(m);
    cli_config_free(cfg);
    return rc;
}
