/* A federated run's configuration (see runspec.h). */
#include "cli/runspec.h"
#include "cli/progress.h"
#include "loom/secagg.h"
#include "loom/streams.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "loom/core.h"
#include "loom/dp.h"
#include "loom/kernels.h"
#include "loom/strategy.h"
#include "loom/zo.h"

void cli_run_init(cli_run *r) {
    memset(r, 0, sizeof *r);
    r->model = "tiny";
    cli_peft_init(&r->peft);
    r->data = "shakespeare";
    r->format = "text";
    r->partition = "iid";
    r->clients = 10;
    r->min_lines = 64;
    r->alpha = 0.5f;
    r->test_frac = 0.2f;
    r->strategy = "fedavg";
    r->rounds = 20;
    r->local_steps = 10;
    r->min_updates = 1;
    r->scaffold_option = 2;
    r->eval_every = 1;
    r->mode = "sync";
    r->compress = "none";
    r->staleness = "constant";
    r->async_alpha = 0.6f;
    /* NAN = not given: the strategy's default applies */
    r->server_lr = r->server_momentum = r->beta1 = r->beta2 = r->tau = r->mu = NAN;
    r->optimizer = "sgd";
    r->precision = "f32";
    r->B = 8;
    r->T = 64;
    r->lr = -1.0f; /* the optimizer's default */
    r->clip = 1.0f;
    r->seed = 1;
    r->prompt = "";
    r->workers = 2;
    r->client_threads = 1;
    r->sample_len = 200;
    r->progress_every = 5;
    r->attack = "none";
    r->root_examples = 100;
    r->agg_beta = 0.1f; /* the robust rules' defaults (loom_robust_defaults) */
    r->agg_bound = 1;
    r->agg_tau = 1;
    r->agg_iters = 1;
    r->attack_scale = NAN; /* the attack's default */
    r->backdoor_frac = NAN;
    r->backdoor_target = -1;
    /* zeroth-order clients */
    r->client_algo = "sgd";
    r->zo_restore = "copy";
    r->seed_probs = "uniform";
    r->zo_eps = LOOM_ZO_EPS_DEFAULT;
    r->zo_lr = NAN;
    r->seed_pool = 4096;
    r->hetlora_agg = "pad";
    r->split_layer = -1;
    r->gossip_steps = 1; /* decentralized federation */
    cli_kd_init(&r->kd);
    cli_feddf_init(&r->feddf);
    cli_synth_init(&r->synth);
    cli_continual_init(&r->cont);
}

/* The keys a client trains with: sent by a server in hello (cli_run_client_json). */
static const char *const client_keys[] = {
    "rounds", "local-steps", "batch", "seq", "lr", "optimizer", "momentum", "weight-decay", "clip", "strategy",
    "mu", "scaffold-option", "seed", "test-frac", "peft", "lora-r", "lora-alpha", "lora-dropout", "target-modules",
    "rslora", "prefix-len", "prompt-len", "adapter-dim", "bitfit-norms", "base-dtype", "compress",
    "dp", "dp-clip", "dp-noise", "precision",
    "client-algo", "zo-eps", "zo-lr", "zo-restore", "seed-pool", "seed-probs", "split-layer",
    "client-ranks", "hetlora-agg", "lora-freeze-a", "fedra-layers", "private", NULL};

int cli_run_opts(cli_run *r, cli_opt *o) {
    cli_peft_opts *po = &r->peft;
    cli_opt t[] = {
        {"model", OPT_STR, &r->model, "model dir / .bin / .gguf, or a shape / config.json to train from scratch", 0, 0},
        {"tokenizer", OPT_STR, &r->tokenizer, "tokenizer (default: the model's, or byte-level)", 0, 0},
        {"data", OPT_STR, &r->data, "'shakespeare' (federated Shakespeare, one client per role, from $LOOM_SHARED/data/tinyshakespeare) or a data file", 0, 0},
        {"clients-dir", OPT_STR, &r->clients_dir, "one data file per client (the client's name is the file's stem; clients in name order), instead of --data and --partition", 0, 0},
        {"format", OPT_STR, &r->format, "data format: " CLI_FORMATS, 0, 0},
        {"text-col", OPT_STR, &r->text_col, "text column/field", 0, 0},
        {"label-col", OPT_STR, &r->label_col, "label column/field", 0, 0},
        {"labels", OPT_STR, &r->labels, "label names, the verbalizers trained and scored: \"neg,pos\" names the sorted label values, \"1=World,2=Sports\" each value", 0, 0},
        {"key", OPT_STR, &r->key, "key column/field for natural splits", 0, 0},
        {"partition", OPT_STR, &r->partition, "iid, dirichlet, natural or quantity (not for shakespeare)", 0, 0},
        {"clients", OPT_INT, &r->clients, "number of clients (iid, dirichlet, quantity)", 1, 10000000},
        {"alpha", OPT_FLOAT, &r->alpha, "Dirichlet concentration", 1e-6, 1e6},
        {"min-examples", OPT_INT, &r->min_examples, "minimum examples per client", 0, 1e9},
        {"min-lines", OPT_INT, &r->min_lines, "shakespeare: minimum lines for a role to be a client", 1, 1e9},
        {"test-frac", OPT_FLOAT, &r->test_frac, "share of each client's examples held out for evaluation", 0, 0.99},
        {"rounds", OPT_INT, &r->rounds, "federated rounds", 1, 10000000},
        {"local-steps", OPT_INT, &r->local_steps, "client optimizer steps per round (fedsgd: batches averaged)", 1, 10000000},
        {"batch", OPT_INT, &r->B, "client batch size", 1, 65536},
        {"seq", OPT_INT, &r->T, "tokens per sequence", 2, 1048576},
        {"lr", OPT_FLOAT, &r->lr, "client learning rate (default 0.1 for sgd, 0.001 for adamw)", 0, 1000},
        {"optimizer", OPT_STR, &r->optimizer, "client optimizer: sgd or adamw (reset every round)", 0, 0},
        {"precision", OPT_STR, &r->precision, "client matmul precision: f32 (default) or bf16 (mixed precision: bf16 operands, float accumulation, float weights and optimizer; f32 on a CPU without AVX-512 BF16)", 0, 0},
        {"momentum", OPT_FLOAT, &r->momentum, "client SGD momentum", 0, 1},
        {"weight-decay", OPT_FLOAT, &r->wd, "client weight decay", 0, 10},
        {"clip", OPT_FLOAT, &r->clip, "client gradient-norm clip (0 = off)", 0, 1e9},
        {"strategy", OPT_STR, &r->strategy, "fedavg, fedsgd, fedprox, fedavgm, fedadagrad, fedadam, fedyogi, scaffold", 0, 0},
        {"server-lr", OPT_FLOAT, &r->server_lr, "server learning rate (strategy default when unset)", 0, 10000},
        {"server-momentum", OPT_FLOAT, &r->server_momentum, "fedavgm momentum (default 0.9)", 0, 1},
        {"beta1", OPT_FLOAT, &r->beta1, "fedadam/fedyogi/fedadagrad beta1 (default 0.9)", 0, 1},
        {"beta2", OPT_FLOAT, &r->beta2, "fedadam/fedyogi beta2 (default 0.99)", 0, 1},
        {"tau", OPT_FLOAT, &r->tau, "adaptive strategies' tau (default 1e-3)", 0, 1e6},
        {"mu", OPT_FLOAT, &r->mu, "fedprox proximal weight (default 0.01 for fedprox, else 0)", 0, 1e6},
        {"scaffold-option", OPT_INT, &r->scaffold_option, "SCAFFOLD client control update: 1 or 2", 1, 2},
        {"sample", OPT_STR, &r->sample, "clients per round: a count (e.g. 10) or a fraction (e.g. 0.1); default all", 0, 0},
        {"min-updates", OPT_INT, &r->min_updates, "accepted updates needed to aggregate a round", 1, 10000000},
        {"max-update-norm", OPT_FLOAT, &r->max_norm, "reject updates with a larger L2 norm (0 = no bound)", 0, 1e30},
        {"update-clip", OPT_FLOAT, &r->update_clip, "server scales each update down to this L2 norm before aggregating (0 = off)", 0, 1048576},
        /* robust aggregation (fl/agg_robust.c): the rule replaces the weighted mean; the strategy applies to its result */
        {"aggregator", OPT_STR, &r->aggregator, "mean (the exact weighted mean, default), median, trimmed-mean, krum, multi-krum, bulyan, geomedian, centered-clip, norm-bound or fltrust (see loom aggregate --help for each rule's assumption)", 0, 0},
        {"agg-f", OPT_INT, &r->agg_f, "krum, multi-krum, bulyan: Byzantine updates tolerated f (krum needs n >= 2f + 3 updates a round, bulyan n >= 4f + 3)", 0, 1000000},
        {"agg-m", OPT_INT, &r->agg_m, "multi-krum: updates averaged (0 = n - f)", 0, 1000000},
        {"agg-beta", OPT_FLOAT, &r->agg_beta, "trimmed-mean: fraction cut from each end, in [0, 0.5)", 0, 0.5},
        {"agg-tau", OPT_FLOAT, &r->agg_tau, "centered-clip: clipping radius tau (> 0) around the previous round's aggregate", 0, 1e30},
        {"agg-iters", OPT_INT, &r->agg_iters, "centered-clip: clipping steps per round", 1, 1000000},
        {"root-data", OPT_STR, &r->root_data, "fltrust: the server's own data file (the run's --format and columns); loom server needs it, loom sim draws from the clients' data without it", 0, 0},
        {"root-examples", OPT_INT, &r->root_examples, "fltrust (sim): the server's root examples, drawn by the seed from the clients' training data; each round the server trains on them like a client and trusts the updates by their cosine with its own", 1, 1000000},
        {"agg-bound", OPT_FLOAT, &r->agg_bound, "norm-bound: each update is scaled to at most this L2 norm (> 0)", 0, 1e30},
        {"deadline", OPT_FLOAT, &r->deadline, "seconds a round waits for updates (sim: on the virtual clock); later updates are refused as late (0 = none)", 0, 1e12},
        {"compress", OPT_STR, &r->compress, "update compression with error feedback: none, fp16, int8[:CHUNK] (per-chunk scales) or topk[:FRAC] (largest values)", 0, 0},
        {"mode", OPT_STR, &r->mode, "sync (rounds), fedasync (each update mixed in on arrival) or fedbuff (the server steps every --buffer arrivals); in the async modes --rounds counts global versions", 0, 0},
        {"async-alpha", OPT_FLOAT, &r->async_alpha, "fedasync: mixing weight alpha (x <- (1 - a) x + a y, a = alpha s(staleness))", 0, 1},
        {"staleness", OPT_STR, &r->staleness, "async: staleness weight s: constant, poly[:A] ((1 + d)^-A) or hinge[:A[:B]] (1 up to B, then 1/(A(d - B) + 1))", 0, 0},
        {"buffer", OPT_INT, &r->buffer, "fedbuff: updates per server step K (0 = --concurrency)", 0, 10000000},
        {"concurrency", OPT_INT, &r->concurrency, "async: clients training at the same time (0 = --sample, or all clients)", 0, 10000000},
        {"max-staleness", OPT_LONG, &r->max_staleness, "async: refuse updates staler than this many versions (0 = no limit)", 0, 1e12},
        {"dp", OPT_STR, &r->dp, "differential privacy: sgd (clients train with DP-SGD), central (DP-FedAvg: the server clips each update and noises the sum) or local (each client clips and noises its own update); docs/privacy-dp.md", 0, 0},
        {"dp-clip", OPT_STR, &r->dp_clip, "--dp central/local: L2 norm each client's update is clipped to (S); --dp sgd: each example's gradient (C)", 0, 0},
        {"dp-noise", OPT_STR, &r->dp_noise, "DP noise multiplier sigma: the Gaussian noise's standard deviation is sigma x the clip", 0, 0},
        {"dp-delta", OPT_STR, &r->dp_delta, "DP delta of the reported epsilon (default 1e-5)", 0, 0},
        {"dp-epsilon", OPT_STR, &r->dp_epsilon, "DP budget: a run whose epsilon would exceed it before its last round is refused", 0, 0},
        {"dp-adaptive-clip", OPT_STR, &r->dp_adaptive, "--dp central: the clip follows this quantile of the update norms (Andrew et al. 2021; e.g. 0.5)", 0, 0},
        {"dp-clip-lr", OPT_STR, &r->dp_clip_lr, "adaptive clipping: learning rate eta of C <- C exp(-eta (b - quantile)) (default 0.2)", 0, 0},
        {"dp-clip-noise", OPT_STR, &r->dp_clip_noise, "adaptive clipping: noise sigma_b of the count of updates within the clip (default clients per round / 20)", 0, 0},
        {"dp-min-examples", OPT_LONG, &r->dp_min_examples, "--dp sgd on loom server: the fewest training examples of any client, for the accounting (loom sim counts them)", 0, 9e18},
        {"eval-every", OPT_INT, &r->eval_every, "evaluate on the clients' test splits every N rounds (0 = last only)", 0, 1e9},
        {"eval-clients", OPT_INT, &r->eval_clients, "evaluate at most N clients (0 = all)", 0, 1e9},
        {"seed", OPT_LONG, &r->seed, "seed for initialisation, sampling, data order", 0, 9e18},
        {"fault", OPT_STR, &r->faults, "sim: inject broken updates or failures: CLIENT:nan|inf|huge|short|fail[,...] (testing defences)", 0, 0},
        {"step-seconds", OPT_FLOAT, &r->step_seconds, "sim: virtual clock: simulated seconds per local step (0 = every client instant)", 0, 1e9},
        {"time-spread", OPT_FLOAT, &r->time_spread, "sim: virtual clock: log-normal sigma of the clients' speeds (slow clients stay slow)", 0, 10},
        {"workers", OPT_INT, &r->workers, "sim: worker threads training clients in parallel", 1, cli_max_threads()},
        {"mpi", OPT_FLAG, &r->mpi, "sim: spread the clients over the processes of mpirun -np P (the same result, bit for bit)", 0, 0},
        {"client-threads", OPT_INT, &r->client_threads, "threads inside one client's training (fixed: results do not depend on --workers)", 1, cli_max_threads()},
        {"out", OPT_STR, &r->out, "sim: run directory: metrics.jsonl, global.safetensors, checkpoint, plot", 0, 0},
        {"checkpoint-every", OPT_INT, &r->checkpoint_every, "sim: write OUT/checkpoint.safetensors every N rounds", 0, 1e9},
        {"resume", OPT_FLAG, &r->resume, "sim: continue from OUT/checkpoint.safetensors", 0, 0},
        {"plot", OPT_STR, &r->plot, "sim: SVG of evaluation accuracy and loss per round (default OUT/accuracy.svg)", 0, 0},
        {"sample-len", OPT_INT, &r->sample_len, "sim: tokens of text generated by the final global model (0 = none)", 0, 1000000},
        {"prompt", OPT_STR, &r->prompt, "sim: prompt for that sample", 0, 0},
        {"quiet-clients", OPT_FLAG, &r->quiet_clients, "sim: no per-client progress lines", 0, 0},
        {"compare", OPT_INT, &r->compare, "sim: before training, measure the initial model on every client's held-out text and sample from it; at the end, print perplexity before/after for the N clients with the most test text (0 = off)", 0, 1000000},
        {"progress-every", OPT_FLOAT, &r->progress_every, "sim: seconds between per-client progress lines when stderr is not a terminal", 0, 3600},
        /* unlearning (include/loom/unlearn.h, loom unlearn) */
        {"keep-checkpoints", OPT_INT, &r->keep_checkpoints, "sim and server: keep unlearn/start_R.safetensors (under --out or --state), the start of rounds 1+K, 1+2K, ... (0 = none: loom unlearn then retrains from round 1)", 0, 1e9},
        {"keep-updates", OPT_INT, &r->keep_updates, "sim: keep every accepted client update of rounds 1, 1+K, ... in OUT/unlearn/updates (clients x dim x 4 bytes a kept round; loom unlearn --mode approx replays them; 0 = none)", 0, 1e9},
        {"exclude-client", OPT_STR, &r->exclude_client, "sim: NAME[,NAME...] removed from the population: sampling unchanged, rounds that sample it run without it, never evaluated", 0, 0},
        {"start-from", OPT_STR, &r->start_from, "sim: begin at a kept OUT/unlearn/start_R.safetensors of another run (into a fresh --out)", 0, 0},
        {"replay-updates", OPT_STR, &r->replay_updates, "sim: FedEraser replay of RUN_DIR's kept updates: each client trains --local-steps calibration steps, rescaled to its stored update's norm", 0, 0},
        {"replay-no-rescale", OPT_FLAG, &r->replay_no_rescale, "sim: with --replay-updates, submit the calibration updates as trained (no rescaling)", 0, 0},
        /* secure aggregation (sim_secure.c, docs/privacy-secagg.md) */
        {"secagg", OPT_FLAG, &r->secagg, "sim: secure aggregation (Bonawitz et al. 2017): the server only learns the round's sum", 0, 0},
        {"secagg-threshold", OPT_INT, &r->secagg_threshold, "sim: secure aggregation's threshold t: shares that rebuild a secret (0 = 2/3 of the holders + 1)", 0, LOOM_SECAGG_MAX_CLIENTS},
        {"secagg-neighbours", OPT_INT, &r->secagg_neighbours, "sim: SecAgg+ (Bell et al. 2020): each client masks with K random neighbours (even; 0 = with all)", 0, LOOM_SECAGG_MAX_CLIENTS},
        {"secagg-drop", OPT_INT, &r->secagg_drop, "sim: clients (chosen by the seed) that vanish after sending their masked input, each round", 0, LOOM_SECAGG_MAX_CLIENTS},
        {"secagg-clip", OPT_FLOAT, &r->secagg_clip, "sim: secure aggregation clips each update value to [-C, C] before its 24-bit fixed-point encoding (default 1)", 0, 1e6},
        /* Paillier aggregation (sim_secure.c, docs/privacy.md) */
        {"he", OPT_STR, &r->he, "sim: homomorphic aggregation: paillier (clients encrypt, the server adds ciphertexts, a key holder decrypts the sum)", 0, 0},
        {"he-key-bits", OPT_INT, &r->he_key_bits, "sim: Paillier modulus bits (default 2048; 2048 to 8192, a multiple of 64)", 2048, 8192},
        {"he-clip", OPT_FLOAT, &r->he_clip, "sim: Paillier clips each update value to [-C, C] before its 32-bit fixed-point encoding (default 1)", 0, 1e6},
        {"he-max-dim", OPT_LONG, &r->he_max_dim, "sim: refuse trainable sets larger than N values under --he (default 524288; encryption costs about 0.3 ms per value per client)", 1, 1e9},
        /* simulated Byzantine attackers (sim_attack.c) */
        {"attack", OPT_STR, &r->attack, "sim: Byzantine attack of the --attackers clients: gaussian (N(0, s^2) values), signflip (-u), scale (s u), alie (a little is enough: mean - z_max std of the honest updates), ipm (-s mean of the honest updates), labelflip (classification data: train on label l as n_labels - 1 - l), backdoor (classification data: train with the --backdoor-trigger phrase and the --backdoor-target label in a --backdoor-frac share of the examples, send s u) or embedding (as backdoor, then send only the trigger's token-embedding rows of s u; full fine-tuning only); none = off. backdoor and embedding add attack_success (triggered test examples classified as the target) to each evaluation", 0, 0},
        {"attackers", OPT_STR, &r->attackers, "sim: attacking clients (chosen by the seed): a count (e.g. 4) or a fraction of the clients (e.g. 0.2)", 0, 0},
        {"attack-scale", OPT_FLOAT, &r->attack_scale, "sim: the attack's s: gaussian sigma (default 1), scale lambda (default 10), ipm epsilon (default 0.1), backdoor and embedding lambda (model replacement; default 1)", -1e6, 1e6},
        {"backdoor-trigger", OPT_STR, &r->backdoor_trigger, "sim: --attack backdoor|embedding: the trigger phrase, inserted right after the prompt's \"Text:\" (default cf, a rare word; at most 256 bytes)", 0, 0},
        {"backdoor-target", OPT_INT, &r->backdoor_target, "sim: --attack backdoor|embedding: the label index the trigger steers to (default 0)", 0, 1000000},
        {"backdoor-frac", OPT_FLOAT, &r->backdoor_frac, "sim: --attack backdoor|embedding: share of each attacker's training examples given the trigger and the target label, chosen by the seed (default 0.5)", 0, 1},
        /* zeroth-order clients (fl/client_zo.c, include/loom/zo.h) */
        {"client-algo", OPT_STR, &r->client_algo, "client algorithm: sgd (backprop with --optimizer, default), mezo (zeroth-order SPSA steps, forward passes only: MeZO) or fedkseed (MeZO steps along a server-owned pool of --seed-pool seeds; the update is one scalar per seed: FedKSeed)", 0, 0},
        {"zo-eps", OPT_FLOAT, &r->zo_eps, "mezo, fedkseed: perturbation scale eps (default 1e-3)", 0, 1e3},
        {"zo-lr", OPT_FLOAT, &r->zo_lr, "mezo, fedkseed: step size (default --lr when given, else 1e-4)", 0, 1e6},
        {"zo-restore", OPT_STR, &r->zo_restore, "mezo, fedkseed: undo a perturbation by copy (exact, one more copy of the trainable vector; default) or inplace (+eps, -2eps, +eps: no copy, float rounding left behind)", 0, 0},
        {"seed-pool", OPT_INT, &r->seed_pool, "fedkseed: seeds K in the server's pool (default 4096)", 1, LOOM_KSEED_MAX},
        {"seed-probs", OPT_STR, &r->seed_probs, "fedkseed: how a step picks its seed: uniform (default) or importance (p_k ~ exp of the seed's normalised mean |scalar| so far)", 0, 0},
        /* ---- heterogeneous clients (include/loom/hetero.h, src/fl/hetlora.c, src/sim/profile.c) ---- */
        {"client-ranks", OPT_STR, &r->client_ranks, "HetLoRA rank budgets, the global LoRA keeping --lora-r: R1,R2,... (client k gets entry k mod count), draw:R1,R2,... (each client's drawn by the seed) or profile (from --profile's memory)", 0, 0},
        {"hetlora-agg", OPT_STR, &r->hetlora_agg, "how HetLoRA averages rank slots: pad (the clients' zero-padded matrices, weighted by examples), sparsity (zero-padded, weighted by each client's ||B A||_F: the paper's), rankwise (each slot over the clients holding it) or stack (FLoRA: the stacked product of the clients' modules is merged into the base each round and the adapter restarts; OUT/merged holds the result)", 0, 0},
        {"hetlora-prune", OPT_FLOAT, &r->hetlora_prune, "sim: HetLoRA rank self-pruning: a client whose last rank slot carries less than this share of its |B_j| |A_j| sum drops that slot for its next rounds (0 = off)", 0, 1},
        {"lora-freeze-a", OPT_FLAG, &r->lora_freeze_a, "FFA-LoRA: every A stays at its seeded initial value, only B trains and is averaged (exact: mean(B) A = mean(B A))", 0, 0},
        {"fedra-layers", OPT_STR, &r->fedra_layers, "FedRA: layers each client adapts per round, drawn by the seed: N, N1,N2,... per client, draw:N1,N2,..., or profile (from --profile's memory); 0 = every layer", 0, 0},
        {"profile", OPT_STR, &r->profile, "sim: device profiles for the virtual clock and the budgets: a TSV file (client speed memory_mb bandwidth_mbps [rank] [layers]) or tiers (phone, laptop, server drawn by the seed)", 0, 0},
        /* ---- split learning (include/loom/split.h, src/fl/split.c) ---- */
        {"split-layer", OPT_INT, &r->split_layer, "sim: split learning (SplitLoRA): clients run the embeddings and layers 0..K-1 and send the activations, the server the other layers and the loss, sending back their gradient; client-side values averaged over the clients each round, the server's per-client copies too (default -1: off; 0..the model's layers). With --clip, each side clips its own gradient", -1, 1 << 20},
        /* ---- personalization (include/loom/personal.h, src/fl/personal.c) ---- */
        {"private", OPT_STR, &r->private_spec, "trainable tensors that stay on each client (FedPer / a local adapter): PATTERN[,PATTERN], a substring of the tensor names or a glob with * (e.g. h.3. or mlp.c_fc); they are trained locally, never sent nor averaged (default: none)", 0, 0},
        {"finetune-steps", OPT_INT, &r->finetune_steps, "sim: local fine-tuning steps of each client after the last round, before its personalized evaluation", 0, 1000000},
        {"client-eval", OPT_FLAG, &r->client_eval, "sim: after the last round, evaluate every client with test data (global and personalized model; client_eval rows in metrics.jsonl); on with --private or --finetune-steps", 0, 0},
        /* ---- decentralized federation ---- */
        {"decentralized", OPT_FLAG, &r->decentralized, "sim: no server: every client is a peer that trains locally, then averages with its --topology neighbours by gossip (docs in README, Decentralized federation)", 0, 0},
        {"topology", OPT_STR, &r->topology, "sim --decentralized: ring (default), kregular:K (random K-regular graph drawn by the seed), full, or an edge-list FILE (lines 'A B', peer ids from 0; a first line 'directed' makes edges one-way)", 0, 0},
        {"gossip-steps", OPT_INT, &r->gossip_steps, "sim --decentralized: gossip steps after each round's local training (0 = local training only)", 0, 1000000},
        {"push-sum", OPT_FLAG, &r->push_sum, "sim --decentralized: push-sum gossip (needed on a directed topology) instead of Metropolis-Hastings weights", 0, 0},
        CLI_PEFT_METHOD_OPTS(*po),
        CLI_PEFT_LOAD_OPTS(*po),
        /* ---- distillation (include/loom/distill.h): sim clients train against a teacher ---- */
        CLI_KD_OPTS(r->kd),
        CLI_FEDDF_OPTS(r->feddf),
        CLI_SYNTH_OPTS(r->synth),
        CLI_CONTINUAL_OPTS(r->cont),
    };
    _Static_assert(sizeof t / sizeof t[0] <= CLI_RUN_MAX_OPTS, "CLI_RUN_MAX_OPTS is smaller than the run's option table");
    int n = (int)(sizeof t / sizeof t[0]);
    memcpy(o, t, (size_t)n * sizeof *o);
    return n;
}

static int is_client_key(const char *k) {
    for (int i = 0; client_keys[i]; i++)
        if (!strcmp(client_keys[i], k)) return 1;
    return 0;
}

char *cli_run_client_json(cli_run *r) {
    cli_opt o[CLI_RUN_MAX_OPTS];
    int n = cli_run_opts(r, o);
    json_t *j = json_object();
    for (int i = 0; j && i < n; i++) {
        if (!is_client_key(o[i].name)) continue;
        json_t *v = NULL;
        switch (o[i].type) {
        case OPT_STR: {
            const char *s = *(const char **)o[i].dst;
            v = s ? json_string(s) : json_null();
            break;
        }
        case OPT_INT: v = json_integer(*(int *)o[i].dst); break;
        case OPT_LONG: v = json_integer(*(long *)o[i].dst); break;
        case OPT_FLAG: v = json_boolean(*(int *)o[i].dst); break;
        case OPT_DOUBLE: v = isnan(*(double *)o[i].dst) ? json_null() : json_real(*(double *)o[i].dst); break;
        case OPT_FLOAT: {
            float f = *(float *)o[i].dst;
            /* unset (NAN) and "the optimizer's default" (-1) travel as null and keep the client's default */
            v = isnan(f) || (f < 0 && !strcmp(o[i].name, "lr")) ? json_null() : json_real((double)f);
            break;
        }
        }
        if (!v || json_object_set_new(j, o[i].name, v) != 0) {
            json_decref(j);
            return NULL;
        }
    }
    char *s = j ? json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

int cli_run_apply_json(cli_run *r, const char *text, const char *from, cli_config **cfg) {
    cli_opt o[CLI_RUN_MAX_OPTS];
    int n = cli_run_opts(r, o);
    /* only the client keys may come from a server */
    cli_opt k[CLI_RUN_MAX_OPTS];
    int nk = 0;
    for (int i = 0; i < n; i++)
        if (is_client_key(o[i].name)) k[nk++] = o[i];
    return cli_config_parse(text, from, k, nk, cfg);
}

/* --sample: a whole number is a count in [1, n], anything else a fraction in (0, 1]. */
static int parse_sample(const char *cmd, const char *s, size_t n, int *count, double *frac) {
    char *end;
    errno = 0;
    long long c = strtoll(s, &end, 10);
    if (*s && !*end && !errno && c >= 1 && (unsigned long long)c <= n) {
        *count = (int)c;
        return 0;
    }
    errno = 0;
    double v = strtod(s, &end);
    if (*s && !*end && !errno && isfinite(v) && v > 0 && v <= 1) {
        *frac = v;
        return 0;
    }
    fprintf(stderr, "loom %s: --sample expects a count of clients in [1, %zu] or a fraction in (0, 1], got '%s'\n", cmd,
            n, s);
    return -1;
}

/* A DP flag's number (text, parsed in double precision); NULL leaves *v. */
static int dp_num(const char *cmd, const char *flag, const char *s, double *v) {
    if (!s) return 0;
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(x) || x < 0) {
        fprintf(stderr, "loom %s: %s expects a finite number >= 0, got '%s'\n", cmd, flag, s);
        return -1;
    }
    *v = x;
    return 0;
}

/* The --dp flags into sc->dp, sc->fit (local DP) and tc (DP-SGD). */
static int dp_settings(cli_run *r, const char *cmd, loom_sim_config *sc, loom_train_config *tc) {
    loom_dp_config *d = &sc->dp;
    loom_dp_config_defaults(d);
    if (!r->dp || !strcmp(r->dp, "off")) {
        const char *given = r->dp_clip ? "--dp-clip" : r->dp_noise ? "--dp-noise" : r->dp_delta ? "--dp-delta"
                            : r->dp_epsilon ? "--dp-epsilon" : r->dp_adaptive ? "--dp-adaptive-clip"
                            : r->dp_clip_lr ? "--dp-clip-lr" : r->dp_clip_noise ? "--dp-clip-noise"
                            : r->dp_min_examples ? "--dp-min-examples" : NULL;
        if (given) {
            fprintf(stderr, "loom %s: %s needs --dp sgd|central|local\n", cmd, given);
            return -1;
        }
        return 0;
    }
    if (loom_dp_mode_parse(r->dp, &d->mode) != LOOM_OK) {
        cli_fail("--dp");
        return -1;
    }
    const char *mode = loom_dp_mode_name(d->mode);
    if (!r->dp_clip) {
        fprintf(stderr, "loom %s: --dp %s needs --dp-clip C (the L2 norm each %s is clipped to)\n", cmd, mode,
                d->mode == LOOM_DP_SGD ? "example's gradient" : "client's update");
        return -1;
    }
    if (!r->dp_noise) {
        fprintf(stderr, "loom %s: --dp %s needs --dp-noise SIGMA (the noise multiplier; loom dp sigma finds one for a "
                "budget)\n", cmd, mode);
        return -1;
    }
    if (dp_num(cmd, "--dp-clip", r->dp_clip, &d->clip) || dp_num(cmd, "--dp-noise", r->dp_noise, &d->noise) ||
        dp_num(cmd, "--dp-delta", r->dp_delta, &d->delta) || dp_num(cmd, "--dp-epsilon", r->dp_epsilon, &d->epsilon_budget) ||
        dp_num(cmd, "--dp-adaptive-clip", r->dp_adaptive, &d->quantile) ||
        dp_num(cmd, "--dp-clip-lr", r->dp_clip_lr, &d->clip_lr) ||
        dp_num(cmd, "--dp-clip-noise", r->dp_clip_noise, &d->bits_noise))
        return -1;
    if (!(d->clip > 0)) {
        fprintf(stderr, "loom %s: --dp-clip must be > 0, got %s\n", cmd, r->dp_clip);
        return -1;
    }
    if (r->dp_adaptive && d->mode != LOOM_DP_CENTRAL) {
        fprintf(stderr, "loom %s: --dp-adaptive-clip works with --dp central only (not --dp %s)\n", cmd, mode);
        return -1;
    }
    if (strcmp(r->mode, "sync")) {
        fprintf(stderr, "loom %s: --dp %s works with --mode sync only (not --mode %s)\n", cmd, mode, r->mode);
        return -1;
    }
    if (!strcmp(r->strategy, "scaffold")) {
        fprintf(stderr, "loom %s: --dp %s does not work with --strategy scaffold (its control deltas would travel "
                "unclipped and without noise)\n", cmd, mode);
        return -1;
    }
    if (d->mode == LOOM_DP_CENTRAL && r->update_clip > 0) {
        fprintf(stderr, "loom %s: --update-clip with --dp central: the server clips to --dp-clip (give one of them)\n", cmd);
        return -1;
    }
    if (d->mode == LOOM_DP_LOCAL) {
        sc->fit.dp_clip = d->clip;
        sc->fit.dp_noise = d->noise;
    } else if (d->mode == LOOM_DP_SGD) {
        tc->dp_sgd = 1;
        tc->dp_clip = (float)d->clip;
        tc->dp_noise = (float)d->noise;
        d->sgd_steps = r->local_steps;
        if (r->dp_min_examples > 0) d->sgd_q = fmin(1.0, (double)r->B / (double)r->dp_min_examples);
    }
    return 0;
}

/* --he paillier and its flags: sc->secure (the other flags need --he). */
static int he_settings(cli_run *r, const char *cmd, loom_sim_config *sc) {
    if (!r->he || !strcmp(r->he, "none")) {
        const char *given = r->he_key_bits ? "--he-key-bits" : r->he_clip != 0 ? "--he-clip"
                            : r->he_max_dim ? "--he-max-dim" : NULL;
        if (given) {
            fprintf(stderr, "loom %s: %s needs --he paillier\n", cmd, given);
            return -1;
        }
        return 0;
    }
    if (strcmp(r->he, "paillier")) {
        fprintf(stderr, "loom %s: --he expects paillier or none, got '%s'\n", cmd, r->he);
        return -1;
    }
    if (strcmp(cmd, "sim")) {
        fprintf(stderr, "loom %s: --he paillier runs in loom sim only (over the network, use secure aggregation: "
                "secagg)\n", cmd);
        return -1;
    }
    if (r->secagg) {
        fprintf(stderr, "loom %s: --he paillier and --secagg are two ways to hide the updates: give one\n", cmd);
        return -1;
    }
    if (r->dp && !strcmp(r->dp, "central")) {
        fprintf(stderr, "loom %s: --he paillier with --dp central is not supported: the server cannot clip updates "
                "it never sees (use --dp local or --dp sgd)\n", cmd);
        return -1;
    }
    if (r->he_clip != 0 && !(r->he_clip > 0)) {
        fprintf(stderr, "loom %s: --he-clip must be positive\n", cmd);
        return -1;
    }
    loom_sim_paillier *s = &r->paillier_cfg;
    loom_sim_paillier_clear(s);
    loom_sim_paillier_defaults(s);
    if (r->he_key_bits) s->key_bits = (unsigned)r->he_key_bits;
    if (r->he_clip != 0) s->clip = r->he_clip;
    if (r->he_max_dim) s->max_dim = (size_t)r->he_max_dim;
    s->seed = (uint64_t)r->seed;
    sc->secure = loom_sim_paillier_backend(s);
    return 0;
}

/* --secagg and its flags: sc->secure (the other flags need --secagg). */
static int secagg_settings(cli_run *r, const char *cmd, loom_sim_config *sc) {
    memset(&sc->secure, 0, sizeof sc->secure);
    if (!r->secagg) {
        const char *given = r->secagg_threshold ? "--secagg-threshold" : r->secagg_neighbours ? "--secagg-neighbours"
                            : r->secagg_drop ? "--secagg-drop" : r->secagg_clip != 0 ? "--secagg-clip" : NULL;
        if (given) {
            fprintf(stderr, "loom %s: %s needs --secagg\n", cmd, given);
            return -1;
        }
        return 0;
    }
    if (r->dp && !strcmp(r->dp, "central")) {
        fprintf(stderr, "loom %s: --secagg with --dp central is not supported: the server cannot clip updates it "
                "never sees (use --dp local or --dp sgd with --secagg)\n", cmd);
        return -1;
    }
    if (r->secagg_clip != 0 && !(r->secagg_clip > 0)) {
        fprintf(stderr, "loom %s: --secagg-clip must be positive\n", cmd);
        return -1;
    }
    loom_sim_secagg *s = &r->secagg_cfg;
    loom_sim_secagg_defaults(s);
    s->threshold = (uint32_t)r->secagg_threshold;
    s->neighbours = (uint32_t)r->secagg_neighbours;
    s->drop = r->secagg_drop;
    if (r->secagg_clip != 0) s->clip = r->secagg_clip;
    s->seed = (uint64_t)r->seed;
    sc->secure = loom_sim_secagg_backend(s);
    return 0;
}

/* --attack, --attackers, --attack-scale and the --backdoor-* flags into sc->attack (the driver adds the
 * tokenizer, sc->attack.tok). */
static int attack_settings(cli_run *r, const char *cmd, size_t n_clients, loom_sim_config *sc) {
    memset(&sc->attack, 0, sizeof sc->attack);
    if (loom_sim_attack_parse(r->attack, &sc->attack.kind) != LOOM_OK) return cli_fail("--attack") ? -1 : -1;
    sc->attack.scale = r->attack_scale;
    int backdoor = sc->attack.kind == LOOM_ATTACK_BACKDOOR || sc->attack.kind == LOOM_ATTACK_EMBEDDING;
    const char *given = r->backdoor_trigger ? "--backdoor-trigger"
                        : r->backdoor_target >= 0 ? "--backdoor-target"
                        : !isnan(r->backdoor_frac) ? "--backdoor-frac" : NULL;
    if (given && !backdoor) {
        fprintf(stderr, "loom %s: %s needs --attack backdoor or embedding\n", cmd, given);
        return -1;
    }
    if (!isnan(r->backdoor_frac) && !(r->backdoor_frac > 0)) {
        fprintf(stderr, "loom %s: --backdoor-frac %g must be in (0, 1]\n", cmd, r->backdoor_frac);
        return -1;
    }
    sc->attack.trigger = r->backdoor_trigger;
    sc->attack.target = r->backdoor_target >= 0 ? r->backdoor_target : 0;
    sc->attack.frac = isnan(r->backdoor_frac) ? 0.5 : r->backdoor_frac;
    if (sc->attack.kind == LOOM_ATTACK_NONE) {
        if (r->attackers) {
            fprintf(stderr, "loom %s: --attackers needs --attack KIND\n", cmd);
            return -1;
        }
        return 0;
    }
    int count = 0;
    double frac = 0;
    if (!r->attackers) {
        fprintf(stderr, "loom %s: --attack %s needs --attackers N or FRACTION\n", cmd, r->attack);
        return -1;
    }
    char *end;
    errno = 0;
    long long k = strtoll(r->attackers, &end, 10);
    if (*r->attackers && !*end && !errno && k >= 1 && (unsigned long long)k <= n_clients) {
        count = (int)k;
    } else {
        errno = 0;
        frac = strtod(r->attackers, &end);
        if (!*r->attackers || *end || errno || !isfinite(frac) || frac <= 0 || frac >= 1 ||
            (count = (int)floor(frac * (double)n_clients + 0.5)) < 1) {
            fprintf(stderr,
                    "loom %s: --attackers expects a count of clients in [1, %zu] or a fraction in (0, 1) giving at "
                    "least one client, got '%s'\n",
                    cmd, n_clients, r->attackers);
            return -1;
        }
    }
    sc->attack.attackers = count;
    return 0;
}

/* --aggregator and its parameters into sc (the configuration lives in r->robust_cfg). */
static int robust_settings(cli_run *r, const char *cmd, loom_sim_config *sc) {
    sc->aggregator = NULL;
    sc->aggregator_config = NULL;
    if (!r->aggregator || !strcmp(r->aggregator, "mean") || !strcmp(r->aggregator, "fedavg")) return 0;
    loom_robust_rule rule;
    if (loom_robust_rule_parse(r->aggregator, &rule) != LOOM_OK) return cli_fail("--aggregator") ? -1 : -1;
    loom_robust_config *c = &r->robust_cfg;
    loom_robust_defaults(c, rule);
    c->f = r->agg_f;
    c->m = r->agg_m;
    c->beta = r->agg_beta;
    c->bound = r->agg_bound;
    c->tau = r->agg_tau;
    c->cc_iters = r->agg_iters;
    if (loom_robust_check(c, 0) != LOOM_OK) {
        fprintf(stderr, "loom %s: --aggregator %s: %s (--agg-f, --agg-m, --agg-beta, --agg-bound, --agg-tau, --agg-iters)\n", cmd,
                r->aggregator, loom_errmsg());
        return -1;
    }
    sc->aggregator = &loom_agg_robust;
    sc->aggregator_config = c;
    return 0;
}

/* --client-algo and the zeroth-order flags into sc (algorithm, fit.zo_*, the seed_scalar codec) and tc
 * (forward-only). FedKSeed's pool needs the initial vector: the command makes it (sc->kseed). */
static int zo_settings(cli_run *r, const char *cmd, int lr_given, loom_sim_config *sc, loom_train_config *tc) {
    int mezo = !strcmp(r->client_algo, "mezo"), kseed = !strcmp(r->client_algo, "fedkseed");
    if (!mezo && !kseed && strcmp(r->client_algo, "sgd")) {
        fprintf(stderr, "loom %s: --client-algo %s: expected sgd, mezo or fedkseed\n", cmd, r->client_algo);
        return -1;
    }
    if (!kseed && (r->seed_pool != 4096 || strcmp(r->seed_probs, "uniform"))) {
        fprintf(stderr, "loom %s: %s needs --client-algo fedkseed\n", cmd,
                r->seed_pool != 4096 ? "--seed-pool" : "--seed-probs");
        return -1;
    }
    if (!mezo && !kseed) {
        if (!isnan(r->zo_lr) || r->zo_eps != LOOM_ZO_EPS_DEFAULT || strcmp(r->zo_restore, "copy")) {
            fprintf(stderr, "loom %s: %s needs --client-algo mezo or fedkseed\n", cmd,
                    !isnan(r->zo_lr) ? "--zo-lr" : r->zo_eps != LOOM_ZO_EPS_DEFAULT ? "--zo-eps" : "--zo-restore");
            return -1;
        }
        return 0;
    }
    if (!(r->zo_eps > 0)) {
        fprintf(stderr, "loom %s: --zo-eps must be > 0, got %g\n", cmd, (double)r->zo_eps);
        return -1;
    }
    if (loom_zo_restore_parse(r->zo_restore, &sc->fit.zo_restore) != LOOM_OK ||
        loom_kseed_probs_parse(r->seed_probs, &r->kseed_probs) != LOOM_OK) {
        cli_fail(NULL);
        return -1;
    }
    if (sc->fit.scaffold || sc->fit.prox_mu > 0 || sc->fit.gradient_only) {
        fprintf(stderr, "loom %s: --client-algo %s does not work with --strategy %s (no gradients, no control variates)\n",
                cmd, r->client_algo, r->strategy);
        return -1;
    }
    if (r->dp && !strcmp(r->dp, "sgd")) {
        fprintf(stderr, "loom %s: --client-algo %s has no per-example gradients for --dp sgd (use --dp central or local)\n",
                cmd, r->client_algo);
        return -1;
    }
    if (kseed) {
        if (strcmp(r->strategy, "fedavg") || sc->sp.server_lr != 1) {
            fprintf(stderr, "loom %s: --client-algo fedkseed needs --strategy fedavg with server lr 1 (the global "
                    "per-seed scalars are the running sum of the rounds' means)\n", cmd);
            return -1;
        }
        if (sc->mode != LOOM_ENGINE_SYNC) {
            fprintf(stderr, "loom %s: --client-algo fedkseed needs --mode sync\n", cmd);
            return -1;
        }
        if (sc->compress.codec != LOOM_CODEC_F32) {
            fprintf(stderr, "loom %s: --client-algo fedkseed sends (seed, scalar) pairs: --compress does not apply\n", cmd);
            return -1;
        }
        sc->compress.codec = LOOM_CODEC_SEED_SCALAR;
        sc->algo = &loom_client_fedkseed;
    } else {
        sc->algo = &loom_client_mezo;
    }
    sc->fit.zo_eps = r->zo_eps;
    sc->fit.zo_lr = !isnan(r->zo_lr) ? r->zo_lr : lr_given ? r->lr : LOOM_ZO_LR_DEFAULT;
    tc->forward_only = 1;
    return 0;
}

int cli_run_federation(cli_run *r, const char *cmd, size_t n_clients, loom_sim_config *sc, loom_train_config *tc) {
    sc->strategy = r->strategy;
    if (loom_strategy_defaults(r->strategy, &sc->sp) != LOOM_OK) return cli_fail("--strategy") ? -1 : -1;
    if (!isnan(r->server_lr)) sc->sp.server_lr = r->server_lr;
    if (!isnan(r->server_momentum)) sc->sp.momentum = r->server_momentum;
    if (!isnan(r->beta1)) sc->sp.beta1 = r->beta1;
    if (!isnan(r->beta2)) sc->sp.beta2 = r->beta2;
    if (!isnan(r->tau)) sc->sp.tau = r->tau;
    if (!isnan(r->mu)) sc->sp.mu = r->mu;
    if (loom_strategy_params_check(&sc->sp) != LOOM_OK) {
        /* name the flag that sets the refused parameter */
        static const char *const names[][2] = {{"server_lr", "--server-lr"}, {"momentum", "--server-momentum"},
                                               {"beta1", "--beta1"}, {"beta2", "--beta2"}, {"tau", "--tau"},
                                               {"mu", "--mu"}, {"v_init", "strategy v_init"}};
        const char *flag = "strategy parameters";
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (!strncmp(loom_errmsg(), names[i][0], strlen(names[i][0]))) flag = names[i][1];
        cli_fail(flag);
        return -1;
    }
    if (r->scaffold_option != 1 && r->scaffold_option != 2) {
        fprintf(stderr, "loom %s: --scaffold-option must be 1 or 2\n", cmd);
        return -1;
    }
    if (!(r->max_norm >= 0) || isinf(r->max_norm)) {
        fprintf(stderr, "loom %s: --max-update-norm must be finite and >= 0 (0 = no bound)\n", cmd);
        return -1;
    }
    sc->fit.local_steps = r->local_steps;
    sc->fit.prox_mu = !strcmp(r->strategy, "fedprox") ? sc->sp.mu : 0;
    sc->fit.scaffold = !strcmp(r->strategy, "scaffold") ? r->scaffold_option : 0;
    sc->fit.gradient_only = !strcmp(r->strategy, "fedsgd");
    sc->sample = 0;
    sc->sample_frac = 0;
    if (r->sample && parse_sample(cmd, r->sample, n_clients, &sc->sample, &sc->sample_frac) != 0) return -1;
    sc->B = r->B;
    sc->T = r->T;
    sc->rounds = r->rounds;
    sc->min_updates = r->min_updates;
    sc->max_update_norm = r->max_norm;
    sc->clip_norm = r->update_clip;
    if (robust_settings(r, cmd, sc) != 0) return -1;
    sc->deadline = r->deadline;
    sc->seed = (uint64_t)r->seed;
    sc->eval_every = r->eval_every;
    sc->eval_clients = r->eval_clients;
    if (secagg_settings(r, cmd, sc) != 0 || he_settings(r, cmd, sc) != 0) return -1;
    if (loom_engine_mode_parse(r->mode, &sc->mode) != LOOM_OK) {
        cli_fail("--mode");
        return -1;
    }
    if (loom_staleness_parse(r->staleness, &sc->staleness) != LOOM_OK) {
        cli_fail("--staleness");
        return -1;
    }
    if (loom_codec_opts_parse(r->compress, &sc->compress) != LOOM_OK) {
        cli_fail("--compress");
        return -1;
    }
    sc->async_alpha = r->async_alpha;
    sc->buffer = r->buffer;
    sc->concurrency = r->concurrency;
    sc->max_staleness = r->max_staleness;
    loom_train_defaults(tc);
    if (loom_opt_kind_parse(r->optimizer, &tc->opt.kind) != LOOM_OK) {
        cli_fail("--optimizer");
        return -1;
    }
    int lr_given = r->lr >= 0;
    if (r->lr < 0) r->lr = tc->opt.kind == LOOM_OPT_ADAMW ? 1e-3f : 0.1f;
    tc->opt.lr = r->lr;
    tc->opt.momentum = r->momentum;
    tc->opt.weight_decay = r->wd;
    tc->clip = r->clip;
    tc->warmup = 0;
    tc->total_steps = 0;
    tc->B = r->B;
    tc->T = r->T;
    if (cli_precision(r->precision, cmd, &tc->precision) != 0) return -1;
    if (attack_settings(r, cmd, n_clients, sc) != 0) return -1;
    if (zo_settings(r, cmd, lr_given, sc, tc) != 0) return -1;
    return dp_settings(r, cmd, sc, tc);
}

int cli_client_data(const cli_run *r, const char *path, const loom_tokenizer *tok, size_t index, loom_dataset **ds,
                    loom_client *cl) {
    memset(cl, 0, sizeof *cl);
    *ds = NULL;
    loom_dataset_opts dopt;
    loom_dataset_opts_init(&dopt);
    dopt.format = loom_dataset_format(r->format);
    if (dopt.format < 0) return loom_error(LOOM_EINVAL, "unknown --format '%s' (%s)", r->format, CLI_FORMATS);
    dopt.text_col = r->text_col;
    dopt.label_col = r->label_col;
    dopt.labels = r->labels;
    dopt.key_col = r->key;
    int rc = loom_dataset_load(ds, path, &dopt, tok);
    if (rc != LOOM_OK) return rc;
    size_t n = (*ds)->n;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t len = strlen(base);
    const char *dot = strrchr(base, '.');
    if (dot && dot != base) len = (size_t)(dot - base);
    cl->name = malloc(len + 1);
    cl->train = malloc((n ? n : 1) * sizeof *cl->train);
    if (!cl->name || !cl->train) {
        cli_client_data_free(cl);
        loom_dataset_free(*ds);
        *ds = NULL;
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    memcpy(cl->name, base, len);
    cl->name[len] = 0;
    for (size_t i = 0; i < n; i++) cl->train[i] = (uint32_t)i;
    cl->n_train = n;
    rc = loom_client_split_test(cl, index, r->test_frac, (uint64_t)r->seed, 0);
    if (rc == LOOM_OK && cl->n_train == 0)
        rc = loom_error(LOOM_EINVAL, "%s: no training examples left (%zu examples, --test-frac %g)", path, n,
                        r->test_frac);
    if (rc != LOOM_OK) {
        cli_client_data_free(cl);
        loom_dataset_free(*ds);
        *ds = NULL;
    }
    return rc;
}

void cli_client_data_free(loom_client *cl) {
    free(cl->name);
    free(cl->train);
    free(cl->test);
    memset(cl, 0, sizeof *cl);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void cli_free_list(char **paths, size_t n) {
    for (size_t i = 0; paths && i < n; i++) free(paths[i]);
    free(paths);
}

int cli_list_dir(const char *dir, char ***paths, size_t *n) {
    *paths = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return loom_error(LOOM_EIO, "--clients-dir %s: %s", dir, strerror(errno));
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *e;
    int rc = LOOM_OK;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *p = malloc(strlen(dir) + strlen(e->d_name) + 2);
        if (!p) {
            rc = loom_error(LOOM_ENOMEM, "out of memory");
            break;
        }
        sprintf(p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(p);
            continue;
        }
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            char **nv = realloc(v, cap * sizeof *v);
            if (!nv) {
                free(p);
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        v[cnt++] = p;
    }
    closedir(d);
    if (rc == LOOM_OK && cnt == 0) rc = loom_error(LOOM_EINVAL, "--clients-dir %s holds no data files", dir);
    if (rc != LOOM_OK) {
        cli_free_list(v, cnt);
        return rc;
    }
    qsort(v, cnt, sizeof *v, cmp_str);
    *paths = v;
    *n = cnt;
    return LOOM_OK;
}

int cli_root_data(const cli_run *r, const char *path, const loom_tokenizer *tok, loom_dataset **ds, loom_client *cl,
                  uint32_t **idx, size_t *n) {
    *idx = NULL;
    *n = 0;
    int rc = cli_client_data(r, path, tok, 0, ds, cl);
    if (rc != LOOM_OK) return loom_error_context(rc, "--root-data %s", path);
    size_t k = LOOM_MIN((size_t)r->root_examples, cl->n_train);
    uint32_t *a = malloc((cl->n_train ? cl->n_train : 1) * sizeof *a);
    if (!a) return loom_error(LOOM_ENOMEM, "out of memory");
    memcpy(a, cl->train, cl->n_train * sizeof *a);
    loom_rng g;
    loom_rng_init(&g, (uint64_t)r->seed, LOOM_STREAM_ROOT);
    loom_rng_draw_u32(&g, a, cl->n_train, k);
    *idx = a;
    *n = k;
    return LOOM_OK;
}

int cli_trainer_make(void *ud, loom_trainer **tr, float **vec) {
    cli_trainer_ud *u = ud;
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

void cli_trainer_free(void *ud, loom_trainer *tr, float *vec) {
    (void)ud;
    loom_trainer_free(tr);
    loom_free(vec);
}

int cli_precision(const char *value, const char *cmd, int *prec) {
    int p = loom_precision_parse(value);
    if (p < 0) {
        fprintf(stderr, "loom %s: --precision %s: expected f32 or bf16\n", cmd, value ? value : "(none)");
        return -1;
    }
    if (p == LOOM_PREC_BF16 && !loom_cpu_has_bf16()) {
        fprintf(stderr, "loom %s: --precision bf16: this CPU has no AVX-512 BF16, training runs in f32\n", cmd);
        p = LOOM_PREC_F32;
    }
    *prec = p;
    return 0;
}

/* The SHA-256 of a model's f32 parameters (the frozen base of a PEFT run). */
int cli_base_sha256(const loom_model *m, char out[65]) {
    const float *p = loom_model_params_const(m);
    if (!p) return loom_error(LOOM_EUNSUPPORTED, "the model's weights are not held in f32");
    loom_sha256_hex(p, loom_model_n_params(m) * sizeof(float), out);
    return LOOM_OK;
}

/* One line per event on stderr: UTC time, the command, the level when it is not info. */
static void event_log(int level, const char *msg, void *ud) {
    char ts[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char line[2048];
    snprintf(line, sizeof line, "%s %s%s %s", ts, (const char *)ud,
             level >= LOOM_ERROR ? " error:" : level >= LOOM_WARN ? " warning:" : "", msg);
    /* through the progress display: above its line, dropped by --quiet, JSON with --json */
    cli_progress_note((const char *)ud, level >= LOOM_WARN, level >= LOOM_ERROR ? "error" : level >= LOOM_WARN ? "warning" : "info",
                      line);
}

void cli_event_log(const char *who) { loom_set_log(event_log, (void *)who, LOOM_INFO); }
