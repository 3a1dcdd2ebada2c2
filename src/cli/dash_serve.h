/* The dashboard of loom sim --serve and loom report --serve (include/loom/dash.h): a board served by a
 * plain HTTP daemon on loopback, with an administrator token made fresh or read from a file. */
#ifndef LOOM_CLI_DASH_SERVE_H
#define LOOM_CLI_DASH_SERVE_H

#include "cli/runspec.h"
#include "loom/dash.h"

typedef struct {
    loom_dash *board;
    loom_dash_http *http;
    char token[256];
    int port;
} cli_dash_serve;

/* Makes the board (sv->board) and starts serving it on listen ("[HOST:]PORT"); the token is read from
 * token_file (its first line, 16..255 characters) or made fresh (64 hex digits). Prints the URL (and a
 * fresh token) on stderr, as `loom WHO: ...`. Returns 0, or prints the error naming the flag and
 * returns the exit code (2: a bad flag, 1: the daemon failed). */
int cli_dash_serve_start(cli_dash_serve *sv, const char *who, const char *listen, const char *token_file);
/* With wait: says so and serves until SIGINT/SIGTERM; then stops the daemon and frees the board. */
void cli_dash_serve_end(cli_dash_serve *sv, const char *who, int wait);
/* Every set option of the run (the keys of loom sim --config) as the board's configuration. */
void cli_dash_config_run(loom_dash *d, cli_run *r);

#endif
