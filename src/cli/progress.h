/* Progress and output modes of the long commands (sim, train, eval, bench ...), one implementation:
 *
 *   text (default)  progress on stderr: on a terminal one line redrawn in place ("round 3/30  clients
 *                   5/8  loss 4.1234  ETA 12s"), ended by a newline when the work is done; piped or
 *                   redirected, plain lines (one per finished unit, and in-between lines at most every
 *                   `every` seconds), never a carriage return
 *   --quiet         errors only: no progress, and the command's text on stdout is dropped
 *   --json          one JSON object per line on stdout: {"type":"progress",...} for each finished unit,
 *                   {"type":"result",...} for the results; the command's text output is dropped, and
 *                   errors stay on stderr as text
 *
 * A command adds CLI_OUTPUT_OPTS to its option table, calls cli_output_begin after parsing, and
 * reports through cli_progress_* and cli_result_*. */
#ifndef LOOM_CLI_PROGRESS_H
#define LOOM_CLI_PROGRESS_H

#include <stdio.h>

extern int cli_quiet_flag, cli_json_flag;
#define CLI_OUTPUT_OPTS                                                                                     \
    {"quiet", OPT_FLAG, &cli_quiet_flag, "errors only: no progress, no summary", 0, 0},                   \
    {"json", OPT_FLAG, &cli_json_flag, "progress and results as one JSON object per line on stdout", 0, 0}

typedef enum { CLI_OUT_TEXT, CLI_OUT_QUIET, CLI_OUT_JSON } cli_out_mode;

/* Applies the flags: --quiet and --json together are refused; in either mode stdout's text goes to
 * /dev/null (JSON lines go to the real stdout). cmd names the command in messages. 0, or -1 after
 * printing the error. */
int cli_output_begin(const char *cmd);
cli_out_mode cli_output_mode(void);
/* An informational line on stderr (a newline is added); nothing in quiet or JSON mode. */
void cli_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A named value of a progress or result line: printed as "label value" with fmt (label = key with '_'
 * as ' '), in JSON as "key": value. NAN values are left out. */
typedef struct {
    const char *key;
    double value;
    const char *fmt; /* e.g. "%.4f"; NULL: "%g" */
} cli_kv;

typedef struct {
    const char *cmd, *unit, *sub; /* "sim", "round", "clients" (sub NULL: no sub-count) */
    long total;
    double t0, last_draw, last_line, every;
    int tty, open;                /* a line drawn in place and not yet ended */
    int width;                    /* the unit counter's width in finished units' lines ("round    3/30": 4) */
    char shown[512];              /* the line drawn in place (redrawn under a note) */
    long plain_every;             /* finished units: a plain (and JSON) line for every this many (1; the
                                     first and the last always) */
} cli_progress;

/* total units of `unit` (e.g. 30 rounds); every: seconds between in-between plain lines (0: each
 * step, < 0: none). */
void cli_progress_start(cli_progress *p, const char *cmd, const char *unit, const char *sub, long total, double every);
/* Inside unit `done` (1-based), sub_done of sub_total parts finished: on a terminal the line is redrawn
 * (at most 10 times a second); piped, a plain line at most every `every` seconds; nothing in JSON. */
void cli_progress_step(cli_progress *p, long done, long sub_done, long sub_total, const cli_kv *kv, int nkv);
/* Unit `done` finished, with its values: redrawn on a terminal (at most 10 times a second, always for
 * the last), a plain line when piped, a {"type":"progress"} object in JSON mode (both for every
 * plain_every-th unit, the first and the last). */
void cli_progress_done(cli_progress *p, long done, const cli_kv *kv, int nkv);
/* Ends the line drawn in place (call before printing anything else on stderr, and at the end). */
void cli_progress_end(cli_progress *p);

/* An event line of a long command (the server's and client's log): text mode prints it on stderr,
 * above the progress line when one is drawn in place (which is then drawn again); quiet mode drops it
 * unless warn; JSON mode writes {"type":"event","cmd":...,"level":...,"message":...} on stdout (and a
 * warning or error also as text on stderr). */
void cli_progress_note(const char *cmd, int warn, const char *level, const char *text);

/* {"type":TYPE,"cmd":...,key: value...} on stdout in JSON mode; nothing otherwise. strs: extra string
 * fields as key, value pairs (nstr pairs). cli_result is the type "result" (a command's outcome). */
void cli_json_line(const char *type, const char *cmd, const cli_kv *kv, int nkv, const char *const *strs, int nstr);
void cli_result(const char *cmd, const cli_kv *kv, int nkv, const char *const *strs, int nstr);

#endif
