/* The sim/train --config file (a JSON object of flag names and values, src/cli/args.c) and the option
 * parser its values go through, with a table of every option type. The parser's own messages are
 * sent to /dev/null while it runs. */
#include <fcntl.h>

#include "cli/args.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char p[256];
    fuzz_write(p, sizeof p, "sim.json", data, n);
    int argc = 0;
    char **argv = NULL;
    int rc = cli_config_argv(p, &argc, &argv);
    fuzz_check_error(rc);
    if (rc != LOOM_OK) return 0;
    fuzz_assert(argc >= 1 && argv);
    const char *data_s = NULL, *strategy = NULL;
    int rounds = 1, clients = 2, flag = 0;
    float lr = 0.1f, sample = 1.0f;
    long seed = 0;
    cli_opt opts[] = {
        {"data", OPT_STR, &data_s, "data"},   {"strategy", OPT_STR, &strategy, "strategy"},
        {"rounds", OPT_INT, &rounds, "rounds"}, {"clients", OPT_INT, &clients, "clients"},
        {"lr", OPT_FLOAT, &lr, "lr"},         {"sample", OPT_FLOAT, &sample, "sample"},
        {"seed", OPT_LONG, &seed, "seed"},    {"quiet", OPT_FLAG, &flag, "flag"},
    };
    int saved = dup(2), null = open("/dev/null", O_WRONLY);
    fflush(stderr);
    dup2(null, 2);
    int saved_out = dup(1);
    dup2(null, 1);
    (void)cli_parse(argc, argv, "loom sim [options]", "fuzz", opts, (int)(sizeof opts / sizeof *opts), NULL, NULL, 0);
    fflush(stdout);
    fflush(stderr);
    dup2(saved, 2);
    dup2(saved_out, 1);
    close(saved);
    close(saved_out);
    close(null);
    cli_config_free(argc, argv);
    return 0;
}
