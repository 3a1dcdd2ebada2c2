/* A small option parser shared by the commands: --name value / --name=value / --flag, with help text
 * generated from the same table, strict number parsing with ranges, and JSON config files read
 * through the same table. */
#ifndef LOOM_CLI_ARGS_H
#define LOOM_CLI_ARGS_H

typedef enum { OPT_STR, OPT_INT, OPT_FLOAT, OPT_FLAG, OPT_LONG, OPT_DOUBLE } opt_type;

typedef struct {
    const char *name; /* without the dashes */
    opt_type type;
    void *dst;        /* const char **, int *, float *, int * (flag), long *, double * */
    const char *help; /* "(default ...)" is added from the current value */
    double min, max;  /* OPT_INT, OPT_LONG, OPT_FLOAT, OPT_DOUBLE: accepted range, inclusive (help shows it) */
} cli_opt;

/* Parses argv[1..]; returns 0, 1 when --help was printed (caller exits 0), or -1 on error (printed).
 * Positional arguments are not accepted unless pos/npos are given. Integers must be whole decimal
 * numbers and reals finite numbers, both within [min, max]; an error names the flag and the range. */
int cli_parse(int argc, char **argv, const char *usage, const char *description, cli_opt *opts, int nopts,
              const char **pos, int *npos, int maxpos);
/* Every parse also answers --list-flags (not shown in the help; for tests and completion): one line per
 * option, "--name<TAB>type<TAB>default" (type str, int, long, float, double or flag; "-" when the help
 * shows no default), and returns 1 as for --help. */

/* The same checks for one value outside an option table. flag names it in the printed error (e.g.
 * "--reps"); returns 0, or -1 after printing "loom: FLAG expects ...". */
int cli_parse_int(const char *flag, const char *s, long long min, long long max, long long *out);
int cli_parse_real(const char *flag, const char *s, double min, double max, double *out);

/* Most threads a --threads / --workers flag accepts: 16 per online core, at most 256. */
int cli_max_threads(void);

/* Prints "loom: <message>" with the library's last error and returns the exit code 1. */
int cli_fail(const char *what);

/* True when stderr is a terminal (progress lines are redrawn in place). */
int cli_tty(void);

/* Formats seconds as "1h02m", "3m20s", "12s". */
const char *cli_duration(double s, char *buf, int n);

/* Reads a JSON object {"flag": value, ...} into the options of the table: each key must name an
 * option, strings go to OPT_STR, booleans to OPT_FLAG (false clears it), numbers to the numeric types
 * with the same range checks as the command line (an integer option needs a JSON integer); null is
 * skipped. Errors name the file and the key. Returns 0 or -1 (printed); strings stay valid until
 * cli_config_free(*cfg). */
typedef struct cli_config cli_config;
int cli_config_read(const char *path, cli_opt *opts, int nopts, cli_config **cfg);
/* Parses a command whose table has a "config" option: the file named by --config first (its values),
 * then the command line over them. Returns as cli_parse (1: help printed; -1: error printed, also for a
 * refused config file); *cfg (release with cli_config_free) holds the file's strings. */
int cli_parse_config(int argc, char **argv, const char *usage, const char *description, cli_opt *opts, int nopts,
                     cli_config **cfg);
/* The same from a JSON object text (name names it in errors). */
int cli_config_parse(const char *text, const char *name, cli_opt *opts, int nopts, cli_config **cfg);
void cli_config_free(cli_config *cfg);

/* Output locations, checked before any work starts. cli_out_dir creates dir and its parents (as
 * mkdir -p) and checks that a file can be written in it; cli_out_file does that for the file's folder.
 * flag names the option in errors ("--out"). Return 0, or -1 after printing the reason. */
int cli_out_dir(const char *flag, const char *dir);
int cli_out_file(const char *flag, const char *path);
/* True when the two paths name the same existing file or directory. */
int cli_same_path(const char *a, const char *b);

#endif
