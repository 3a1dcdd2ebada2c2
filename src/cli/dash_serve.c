/* The dashboard of loom sim --serve and loom report --serve (src/cli/dash_serve.h). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "cli/dash_serve.h"
#include "cli/args.h"
#include "cli/runspec.h"
#include "loom/core.h"

static int read_token(const char *path, char *out, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "loom: --serve-token-file %s: cannot open: %s\n", path, strerror(errno));
        return 2;
    }
    char buf[1024];
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    size_t len = strcspn(buf, "\r\n");
    buf[len] = 0;
    while (len > 0 && (buf[len - 1] == ' ' || buf[len - 1] == '\t')) buf[--len] = 0;
    if (len < 16 || len >= n) {
        fprintf(stderr, "loom: --serve-token-file %s: the token on its first line has %zu characters; give 16 to %zu\n",
                path, len, n - 1);
        return 2;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)buf[i] <= ' ' || (unsigned char)buf[i] >= 127) {
            fprintf(stderr, "loom: --serve-token-file %s: the token has a space or a character outside printable ASCII\n",
                    path);
            return 2;
        }
    memcpy(out, buf, len + 1);
    return 0;
}

int cli_dash_serve_start(cli_dash_serve *sv, const char *who, const char *listen, const char *token_file) {
    memset(sv, 0, sizeof *sv);
    char host[256];
    int port;
    if (loom_dash_parse_listen(listen, "--serve", host, sizeof host, &port) != LOOM_OK) {
        fprintf(stderr, "loom %s: %s\n", who, loom_errmsg());
        return 2;
    }
    int generated = !token_file;
    if (token_file) {
        int rc = read_token(token_file, sv->token, sizeof sv->token);
        if (rc) return rc;
    } else {
        unsigned char raw[32];
        size_t got = 0;
        while (got < sizeof raw) {
            ssize_t k = getrandom(raw + got, sizeof raw - got, 0);
            if (k < 0 && errno == EINTR) continue;
            if (k < 0) {
                fprintf(stderr, "loom %s: getrandom: %s\n", who, strerror(errno));
                return 1;
            }
            got += (size_t)k;
        }
        loom_hex(raw, sizeof raw, sv->token);
    }
    if (loom_dash_create(&sv->board) != LOOM_OK ||
        loom_dash_serve(&sv->http, sv->board, listen, sv->token, &sv->port) != LOOM_OK) {
        fprintf(stderr, "loom %s: the dashboard: %s\n", who, loom_errmsg());
        loom_dash_free(sv->board);
        sv->board = NULL;
        return 1;
    }
    int loopback = !strcmp(host, "127.0.0.1") || !strcmp(host, "localhost") || !strcmp(host, "::1");
    char shown[300];
    snprintf(shown, sizeof shown, strchr(host, ':') ? "[%s]" : "%s", host);
    fprintf(stderr, "loom %s: dashboard at http://%s:%d/ (plain HTTP%s)\n", who, shown, sv->port,
            loopback ? " on loopback" : ": not loopback, the token travels unencrypted");
    if (generated) fprintf(stderr, "loom %s: dashboard token %s\n", who, sv->token);
    else fprintf(stderr, "loom %s: dashboard token from %s\n", who, token_file);
    return 0;
}

static volatile sig_atomic_t stop_serving;
static void on_stop(int sig) {
    (void)sig;
    stop_serving = 1;
}

void cli_dash_serve_end(cli_dash_serve *sv, const char *who, int wait) {
    if (!sv->board) return;
    if (wait && sv->http) {
        fprintf(stderr, "loom %s: serving the dashboard at port %d until Ctrl-C\n", who, sv->port);
        signal(SIGINT, on_stop);
        signal(SIGTERM, on_stop);
        while (!stop_serving) usleep(100000);
        fprintf(stderr, "loom %s: dashboard stopped\n", who);
    }
    loom_dash_serve_stop(sv->http);
    loom_dash_free(sv->board);
    memset(sv->token, 0, sizeof sv->token);
    sv->board = NULL;
    sv->http = NULL;
}

void cli_dash_config_run(loom_dash *d, cli_run *r) {
    cli_opt o[CLI_RUN_MAX_OPTS];
    int n = cli_run_opts(r, o);
    char v[64];
    for (int i = 0; i < n; i++) {
        const char *s = NULL;
        switch (o[i].type) {
        case OPT_STR: s = *(const char **)o[i].dst; break;
        case OPT_INT: snprintf(v, sizeof v, "%d", *(int *)o[i].dst), s = v; break;
        case OPT_LONG: snprintf(v, sizeof v, "%ld", *(long *)o[i].dst), s = v; break;
        case OPT_FLAG:
            if (*(int *)o[i].dst) s = "true";
            break;
        case OPT_FLOAT: {
            float f = *(float *)o[i].dst;
            if (!isnan(f)) snprintf(v, sizeof v, "%.7g", (double)f), s = v;
            break;
        }
        case OPT_DOUBLE: {
            double f = *(double *)o[i].dst;
            if (!isnan(f)) snprintf(v, sizeof v, "%.17g", f), s = v;
            break;
        }
        }
        if (s) loom_dash_config(d, o[i].name, s);
    }
}
