/* A small option parser shared by the commands: --name value / --name=value / --flag, with help text
 * generated from the same table. */
#ifndef LOOM_CLI_ARGS_H
#define LOOM_CLI_ARGS_H

typedef enum { OPT_STR, OPT_INT, OPT_FLOAT, OPT_FLAG, OPT_LONG } opt_type;

typedef struct {
    const char *name; /* without the dashes */
    opt_type type;
    void *dst;        /* const char **, int *, float *, int * (flag), long * */
    const char *help; /* "(default ...)" is added from the current value */
} cli_opt;

/* Parses argv[1..]; returns 0, 1 when --help was printed (caller exits 0), or -1 on error (printed).
 * Positional arguments are not accepted unless pos/npos are given. */
int cli_parse(int argc, char **argv, const char *usage, const char *description, cli_opt *opts, int nopts,
              const char **pos, int *npos, int maxpos);

/* Prints "loom: <message>" with the library's last error and returns the exit code 1. */
int cli_fail(const char *what);

/* True when stderr is a terminal (progress lines are redrawn in place). */
int cli_tty(void);

/* Formats seconds as "1h02m", "3m20s", "12s". */
const char *cli_duration(double s, char *buf, int n);

#endif

/* Reads a JSON object {"flag": value, ...} into an argv-style list ("prog", "--flag", "value", ...):
 * numbers and strings become values; true adds the bare flag; false and null are skipped. The strings
 * live until cli_config_free. */
int cli_config_argv(const char *path, int *argc, char ***argv);
void cli_config_free(int argc, char **argv);
