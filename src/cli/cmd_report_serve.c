/* loom report --serve RUN_DIR: a finished run's dashboard (include/loom/dash.h), from its metrics.jsonl
 * (a loom sim --out directory or a loom server --state directory), served on loopback until Ctrl-C;
 * and the `report` command's entry, which hands every other form to cmd_report (the static report). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/dash_serve.h"
#include "loom/core.h"

/* The largest metrics.jsonl loaded (a million rounds of a few hundred clients stays far below it). */
#define REPORT_SERVE_MAX_BYTES ((size_t)1 << 30)

int cmd_report_serve(int argc, char **argv) {
    const char *listen = "127.0.0.1:8700", *token_file = NULL, *config = NULL;
    int serve = 0;
    cli_opt opts[] = {
        {"serve", OPT_FLAG, &serve, "serve the run's dashboard (this form of loom report)", 0, 0},
        {"listen", OPT_STR, &listen, "[HOST:]PORT of the dashboard, plain HTTP (default 127.0.0.1:8700; port 0: any free port)", 0, 0},
        {"serve-token-file", OPT_STR, &token_file, "the dashboard's token, the first line of FILE (16 to 255 characters; default: a fresh one, printed)", 0, 0},
        {"config", OPT_STR, &config, "the run's RUN.json, shown as its configuration (default: none)", 0, 0},
    };
    const char *pos[1];
    int npos = 0;
    int pr = cli_parse(argc, argv, "loom report --serve [--listen [HOST:]PORT] [--serve-token-file F] RUN_DIR",
                       "Serves the dashboard of a finished run: RUN_DIR/metrics.jsonl (loom sim --out DIR, or loom\n"
                       "server --state DIR) shown as the live dashboard shows a run, until Ctrl-C.",
                       opts, (int)(sizeof opts / sizeof opts[0]), pos, &npos, 1);
    if (pr) return pr > 0 ? 0 : 2;
    if (npos != 1) {
        fprintf(stderr, "loom report: give the RUN_DIR (a loom sim --out or loom server --state directory)\n");
        return 2;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", pos[0]);
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "loom report: RUN_DIR %s has no metrics.jsonl (give a loom sim --out or loom server --state directory)\n",
                pos[0]);
        return 2;
    }
    if ((size_t)st.st_size > REPORT_SERVE_MAX_BYTES) {
        fprintf(stderr, "loom report: %s has %lld bytes, more than the %zu this command loads\n", path,
                (long long)st.st_size, REPORT_SERVE_MAX_BYTES);
        return 2;
    }
    char *cfg_text = NULL;
    size_t cfg_len = 0;
    if (config) {
        if (loom_read_file(config, &cfg_text, &cfg_len) != LOOM_OK) return cli_fail("--config");
        if (cfg_len > 1 << 20) {
            fprintf(stderr, "loom report: --config %s is larger than 1 MiB\n", config);
            free(cfg_text);
            return 2;
        }
    }
    cli_dash_serve sv;
    int rc = cli_dash_serve_start(&sv, "report", listen, token_file);
    if (rc) {
        free(cfg_text);
        return rc;
    }
    loom_dash_config(sv.board, "run-dir", pos[0]);
    if (cfg_text && loom_dash_config_json(sv.board, cfg_text) != LOOM_OK) {
        fprintf(stderr, "loom report: --config %s: %s\n", config, loom_errmsg());
        rc = 2;
    }
    free(cfg_text);
    if (!rc && loom_dash_load_jsonl(sv.board, path, REPORT_SERVE_MAX_BYTES) != LOOM_OK) {
        fprintf(stderr, "loom report: %s\n", loom_errmsg());
        rc = 1;
    }
    if (!rc) {
        char *s = loom_dash_status_json(sv.board, 0); /* its round: the last one in the file */
        json_t *j = s ? json_loads(s, 0, NULL) : NULL;
        int last = (int)json_integer_value(json_object_get(j, "round"));
        json_decref(j);
        free(s);
        loom_dash_progress(sv.board, last, last, "finished");
        fprintf(stderr, "loom report: %s: %d rounds\n", path, last);
    }
    cli_dash_serve_end(&sv, "report", rc == 0);
    return rc;
}

int cmd_report_main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--serve") || !strcmp(argv[i], "--serve=true")) return cmd_report_serve(argc, argv);
    return cmd_report(argc, argv);
}
