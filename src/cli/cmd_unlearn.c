/* loom unlearn: remove one client's contribution from a finished loom sim run (include/loom/unlearn.h).
 * Exact: rerun the run from the last kept checkpoint before the client first contributed, with the
 * client removed from the population. Approximate: FedEraser's calibrated replay of the kept updates. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "loom/core.h"
#include "loom/net.h"
#include "loom/unlearn.h"

#define RUN_JSON_MAX (16L << 20) /* OUT/unlearn/run.json larger than this is refused */

static int fail(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "loom unlearn: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, "\n");
    return 1;
}

/* An absolute form of path (made from the current directory when relative) into buf. */
static int absolute(const char *path, char *buf, size_t n) {
    if (path[0] == '/') return snprintf(buf, n, "%s", path) < (int)n ? 0 : -1;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return -1;
    return snprintf(buf, n, "%s/%s", cwd, path) < (int)n ? 0 : -1;
}

static int copy_file(const char *from, const char *to) {
    FILE *f = fopen(from, "rb");
    if (!f) return loom_error(LOOM_EIO, "cannot read %s: %s", from, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0, k;
    char chunk[65536];
    int rc = LOOM_OK;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + k > cap) {
            cap = 2 * (len + k);
            char *p = realloc(buf, cap);
            if (!p) {
                rc = loom_error(LOOM_ENOMEM, "out of memory");
                break;
            }
            buf = p;
        }
        memcpy(buf + len, chunk, k);
        len += k;
    }
    fclose(f);
    if (rc == LOOM_OK) rc = loom_write_file_atomic(to, buf, len);
    free(buf);
    return rc;
}

/* Options of the original run that the unlearning run replaces (they name its outputs or its records). */
static int dropped(const char *arg, int *takes_value) {
    static const char *with_value[] = {"out", "plot", "keep-checkpoints", "keep-updates", "exclude-client",
                                       "start-from", "replay-updates"};
    static const char *flags[] = {"resume", "replay-no-rescale"};
    if (strncmp(arg, "--", 2)) return 0;
    const char *name = arg + 2;
    size_t len = strcspn(name, "=");
    for (size_t i = 0; i < sizeof with_value / sizeof *with_value; i++)
        if (strlen(with_value[i]) == len && !strncmp(name, with_value[i], len)) {
            *takes_value = name[len] != '=';
            return 1;
        }
    for (size_t i = 0; i < sizeof flags / sizeof *flags; i++)
        if (!strcmp(name, flags[i])) {
            *takes_value = 0;
            return 1;
        }
    return 0;
}

/* --state: a server's run. The retrain needs the remaining clients' training, so the result is a new
 * state directory that loom server continues (include/loom/net.h, loom_server_unlearn). */
static int unlearn_state(const char *state, const char *client, int approx, const char *out) {
    if (approx) {
        fprintf(stderr, "loom unlearn: --state: only --mode exact is offered for a server's run (FedEraser's "
                "calibration needs the clients' training, as the exact retrain does)\n");
        return 1;
    }
    loom_server_unlearn_info info;
    if (loom_server_unlearn(state, client, out, &info) != LOOM_OK) return cli_fail("--state");
    if (!info.first_round) {
        printf("client %s contributed to no round of %s: the model is unchanged (nothing written)\n", client, state);
        return 0;
    }
    printf("%-34s %s (index %d)\n", "unlearned client", client, info.client);
    printf("%-34s %d\n", "first contributed in round", info.first_round);
    printf("%-34s %d (%d of %d rounds to retrain, %s)\n", "restart at round", info.restart_round,
           info.rounds - info.restart_round + 1, info.rounds,
           info.restart_round > 1 ? "from its kept checkpoint" : "from the initial model");
    printf("%-34s %s: the client is removed from the population and its token revoked\n", "new server state", out);
    printf("retrain with the run's configuration and the remaining clients:\n  loom server --state %s --config "
           "RUN.json [the same flags]\n", out);
    return 0;
}

int cmd_unlearn(int argc, char **argv) {
    const char *client = NULL, *run = NULL, *state = NULL, *mode = "exact", *out = NULL, *reference = NULL;
    int cali = 0, no_rescale = 0, workers = 0;
    cli_opt opts[] = {
        {"client", OPT_STR, &client, "name of the client to remove (as in the run's metrics rows)", 0, 0},
        {"run", OPT_STR, &run, "a loom sim run directory (its --out; unlearn/ holds what it kept)", 0, 0},
        {"state", OPT_STR, &state, "a loom server state directory (its --state)", 0, 0},
        {"mode", OPT_STR, &mode, "exact (retrain without the client) or approx (FedEraser calibrated replay)", 0, 0},
        {"out", OPT_STR, &out, "directory of the unlearned run (global.safetensors, metrics.jsonl, unlearn.json)", 0, 0},
        {"calibration-steps", OPT_INT, &cali, "approx: local steps of each calibration (0 = half the run's --local-steps, at least 1)", 0, 1e9},
        {"no-rescale", OPT_FLAG, &no_rescale, "approx: keep the calibration updates' own norms (no FedEraser rescaling)", 0, 0},
        {"reference", OPT_STR, &reference, "a model file (e.g. a retrain's global.safetensors) to measure both models' distance to", 0, 0},
        {"workers", OPT_INT, &workers, "worker threads of the retraining (0 = the run's)", 0, cli_max_threads()},
    };
    const char *usage = "loom unlearn --client NAME (--run DIR | --state DIR) --mode exact|approx --out DIR2 [options]";
    const char *desc =
        "Removes one client's contribution from a federated run. exact: restarts from the last checkpoint kept\n"
        "before the client's first accepted round (loom sim --keep-checkpoints K; none: round 1) and retrains the\n"
        "remaining rounds with the client removed from the population: every round samples as before, a round\n"
        "that sampled it runs with the others only. approx (FedEraser, Liu et al. 2021): from the same point,\n"
        "every round whose updates were kept (loom sim --keep-updates K) is replayed with the other clients'\n"
        "short calibration training, each rescaled to the norm of its stored update; the client's own stored\n"
        "updates are never read. The original run directory is only read.";
    int pr = cli_parse(argc, argv, usage, desc, opts, (int)(sizeof opts / sizeof *opts), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (!client || !*client) return fail("--client NAME is required%s%s", "", "");
    if (!!run == !!state) return fail("give one of --run DIR (a loom sim run) or --state DIR (a loom server)%s%s", "", "");
    if (!out) return fail("--out DIR2 is required (the unlearned run's directory)%s%s", "", "");
    int approx = !strcmp(mode, "approx");
    if (!approx && strcmp(mode, "exact")) return fail("--mode '%s' is not exact or approx%s", mode, "");
    if (!approx && (cali || no_rescale)) return fail("--calibration-steps and --no-rescale are for --mode approx%s%s", "", "");
    if (state) return unlearn_state(state, client, approx, out);

    char run_abs[PATH_MAX], out_abs[PATH_MAX + 64], path[PATH_MAX + 128], ref_abs[PATH_MAX + 64];
    if (!realpath(run, run_abs)) return fail("--run %s: %s", run, strerror(errno));
    if (absolute(out, out_abs, sizeof out_abs) != 0) return fail("--out %s: path too long%s", out, "");
    if (reference && absolute(reference, ref_abs, sizeof ref_abs) != 0) return fail("--reference %s: path too long%s", reference, "");
    snprintf(path, sizeof path, "%s/unlearn/run.json", run_abs);
    struct stat st;
    if (stat(path, &st) != 0)
        return fail("--run %s: no unlearn/run.json (it was not written by loom sim --out, or by an older loom)%s", run, "");
    if (st.st_size > RUN_JSON_MAX) return fail("%s is larger than 16 MiB%s", path, "");
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    json_t *jargv = j ? json_object_get(j, "argv") : NULL, *jcwd = j ? json_object_get(j, "cwd") : NULL,
           *jnames = j ? json_object_get(j, "clients") : NULL;
    if (!j || !json_is_array(jargv) || !json_is_string(jcwd) || !json_is_array(jnames)) {
        json_decref(j);
        return fail("%s: expected {\"argv\": [...], \"cwd\": \"...\", \"clients\": [...], ...}%s", path, "");
    }
    int rounds = (int)json_integer_value(json_object_get(j, "rounds"));
    int local_steps = (int)json_integer_value(json_object_get(j, "local_steps"));
    int keep_up = (int)json_integer_value(json_object_get(j, "keep_updates"));
    int n_clients = (int)json_array_size(jnames), target = -1;
    for (int i = 0; i < n_clients; i++) {
        const char *nm = json_string_value(json_array_get(jnames, i));
        if (nm && !strcmp(nm, client)) target = i;
    }
    int rc = 1;
    loom_membership mem = {0, NULL};
    char **nargv = NULL;
    char *excl = NULL;
    if (target < 0) {
        fprintf(stderr, "loom unlearn: --client '%s' is not a client of %s (its %d clients are named like '%s')\n", client,
                run, n_clients, n_clients ? json_string_value(json_array_get(jnames, 0)) : "");
        goto done;
    }
    snprintf(path, sizeof path, "%s/unlearn/membership.jsonl", run_abs);
    if (loom_membership_load(&mem, path, n_clients) != LOOM_OK) {
        cli_fail("--run");
        goto done;
    }
    if (mem.n_rounds != rounds || (rounds > 0 && (mem.rounds[0].round != 1 || mem.rounds[mem.n_rounds - 1].round != rounds))) {
        fprintf(stderr, "loom unlearn: %s holds %d round rows of the run's %d rounds from 1 (an unfinished run, or one "
                "that started from a checkpoint): its membership is incomplete\n", path, mem.n_rounds, rounds);
        goto done;
    }
    int first = loom_membership_first(&mem, target);
    if (cli_out_dir("--out", out_abs) != 0) goto done;
    char g0[PATH_MAX + 64], g1[PATH_MAX + 128];
    snprintf(g0, sizeof g0, "%s/global.safetensors", run_abs);
    snprintf(g1, sizeof g1, "%s/global.safetensors", out_abs);
    if (!strcmp(run_abs, out_abs)) {
        fprintf(stderr, "loom unlearn: --out must differ from --run (the original run is only read)\n");
        goto done;
    }
    /* the last start kept at or before the first round (a resumed run may have kept them differently) */
    int restart = first ? 1 : rounds + 1;
    for (int r = first; r >= 2; r--) {
        char sp[PATH_MAX + 96];
        if (loom_unlearn_start_path(sp, sizeof sp, run_abs, r) == LOOM_OK && stat(sp, &st) == 0) {
            restart = r;
            break;
        }
    }
    if (approx && first && keep_up <= 0) {
        fprintf(stderr, "loom unlearn: --mode approx replays kept client updates, and %s kept none: run loom sim with "
                "--keep-updates K (or use --mode exact)\n", run);
        goto done;
    }
    if (cali == 0) cali = local_steps / 2 > 0 ? local_steps / 2 : 1;
    if (!first) { /* nothing of it is in the model */
        if (copy_file(g0, g1) != LOOM_OK) {
            cli_fail("--out");
            goto done;
        }
        printf("client %s contributed to no round of %s: the model is unchanged (copied to %s)\n", client, run, g1);
    } else {
        /* the unlearning run: the original flags, its outputs and records replaced */
        size_t na = json_array_size(jargv);
        nargv = calloc(na + 24, sizeof *nargv);
        size_t elen = strlen(client) + 1;
        for (size_t i = 0; i < na; i++) {
            const char *a = json_string_value(json_array_get(jargv, i));
            int tv = 0;
            if (a && dropped(a, &tv) && !strncmp(a, "--exclude-client", 16) && tv && i + 1 < na)
                {
                const char *v = json_string_value(json_array_get(jargv, i + 1));
                elen += (v ? strlen(v) : 0) + 1;
            }
        }
        excl = malloc(elen + 1);
        if (!nargv || !excl) {
            fprintf(stderr, "loom unlearn: out of memory\n");
            goto done;
        }
        strcpy(excl, client);
        int n = 0;
        nargv[n++] = "sim";
        for (size_t i = 0; i < na; i++) {
            const char *a = json_string_value(json_array_get(jargv, i));
            int tv = 0;
            if (!a) continue;
            if (!dropped(a, &tv)) {
                nargv[n++] = (char *)a;
                continue;
            }
            const char *v = tv ? (i + 1 < na ? json_string_value(json_array_get(jargv, i + 1)) : NULL) : strchr(a, '=');
            if (!strncmp(a, "--exclude-client", 16) && v) { /* clients removed before stay removed */
                strcat(excl, ",");
                strcat(excl, tv ? v : v + 1);
            }
            if (tv) i++;
        }
        static char out_arg[PATH_MAX + 64], plot_arg[PATH_MAX + 96], start_arg[PATH_MAX + 96], steps_arg[32], w_arg[32];
        snprintf(out_arg, sizeof out_arg, "%s", out_abs);
        snprintf(plot_arg, sizeof plot_arg, "%s/accuracy.svg", out_abs);
        nargv[n++] = "--out";
        nargv[n++] = out_arg;
        nargv[n++] = "--plot";
        nargv[n++] = plot_arg;
        nargv[n++] = "--keep-checkpoints";
        nargv[n++] = "0";
        nargv[n++] = "--keep-updates";
        nargv[n++] = "0";
        nargv[n++] = "--exclude-client";
        nargv[n++] = excl;
        if (restart > 1) {
            if (loom_unlearn_start_path(start_arg, sizeof start_arg, run_abs, restart) != LOOM_OK || stat(start_arg, &st)) {
                fprintf(stderr, "loom unlearn: the kept checkpoint %s is missing\n", start_arg);
                goto done;
            }
            nargv[n++] = "--start-from";
            nargv[n++] = start_arg;
        }
        if (approx) {
            snprintf(steps_arg, sizeof steps_arg, "%d", cali);
            nargv[n++] = "--replay-updates";
            nargv[n++] = run_abs;
            nargv[n++] = "--local-steps";
            nargv[n++] = steps_arg;
            if (no_rescale) nargv[n++] = "--replay-no-rescale";
        }
        if (workers > 0) {
            snprintf(w_arg, sizeof w_arg, "%d", workers);
            nargv[n++] = "--workers";
            nargv[n++] = w_arg;
        }
        nargv[n] = NULL;
        fprintf(stderr, "loom unlearn: client %s (index %d) first contributed in round %d; %s from round %d%s (%d of %d "
                "rounds)\n", client, target, first, approx ? "FedEraser replay" : "retraining", restart,
                restart > 1 ? " (a kept checkpoint)" : " (the initial model)", rounds - restart + 1, rounds);
        char here[PATH_MAX];
        if (!getcwd(here, sizeof here)) here[0] = 0;
        if (chdir(json_string_value(jcwd)) != 0) { /* the original flags' relative paths */
            fprintf(stderr, "loom unlearn: cannot enter the run's working directory %s: %s\n", json_string_value(jcwd),
                    strerror(errno));
            goto done;
        }
        int src = cmd_sim(n, nargv);
        if (here[0] && chdir(here) != 0) { /* nothing after this needs relative paths */
        }
        if (src != 0) {
            fprintf(stderr, "loom unlearn: the %s run failed\n", approx ? "replay" : "retraining");
            rc = src;
            goto done;
        }
    }
    /* the report: distances to the original (and to a reference) model */
    double d_orig = 0, d_ref = NAN, d_orig_ref = NAN;
    if (loom_unlearn_distance(g1, g0, &d_orig) != LOOM_OK ||
        (reference && (loom_unlearn_distance(g1, ref_abs, &d_ref) != LOOM_OK ||
                       loom_unlearn_distance(g0, ref_abs, &d_orig_ref) != LOOM_OK))) {
        cli_fail("distances");
        goto done;
    }
    printf("\n%-34s %s (index %d)\n", "unlearned client", client, target);
    printf("%-34s %s\n", "mode", approx ? "approx (FedEraser)" : "exact");
    if (first) {
        printf("%-34s %d\n", "first contributed in round", first);
        printf("%-34s %d (%d rounds %s)\n", "restarted at round", restart, rounds - restart + 1,
               approx ? "replayed" : "retrained");
        if (approx) printf("%-34s %d%s\n", "calibration steps", cali, no_rescale ? " (not rescaled)" : "");
    }
    printf("%-34s %.6g\n", "distance to the original model", d_orig);
    if (reference) {
        printf("%-34s %.6g\n", "distance to the reference", d_ref);
        printf("%-34s %.6g\n", "original's distance to the reference", d_orig_ref);
    }
    json_t *rep = json_object();
    json_object_set_new(rep, "client", json_string(client));
    json_object_set_new(rep, "client_index", json_integer(target));
    json_object_set_new(rep, "mode", json_string(approx ? "approx" : "exact"));
    json_object_set_new(rep, "first_round", json_integer(first));
    json_object_set_new(rep, "restart_round", json_integer(first ? restart : 0));
    if (approx && first) json_object_set_new(rep, "calibration_steps", json_integer(cali));
    json_object_set_new(rep, "distance_original", json_real(d_orig));
    if (reference) {
        json_object_set_new(rep, "distance_reference", json_real(d_ref));
        json_object_set_new(rep, "original_distance_reference", json_real(d_orig_ref));
    }
    char *text = json_dumps(rep, JSON_INDENT(1));
    json_decref(rep);
    snprintf(path, sizeof path, "%s/unlearn.json", out_abs);
    if (!text || loom_write_file_atomic(path, text, strlen(text)) != LOOM_OK) {
        free(text);
        cli_fail(path);
        goto done;
    }
    free(text);
    printf("%-34s %s/global.safetensors, %s\n", "written", out_abs, path);
    rc = 0;
done:
    free(nargv);
    free(excl);
    loom_membership_free(&mem);
    json_decref(j);
    return rc;
}
