/* The sim/train --config file (a JSON object of flag names and values, src/cli/args.c) read into a
 * table of every option type, with the same range checks as the command line. The reader's own
 * messages are sent to /dev/null while it runs. */
#include <fcntl.h>

#include "cli/args.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char p[256];
    fuzz_write(p, sizeof p, "sim.json", data, n);
    const char *data_s = NULL, *strategy = NULL;
    int rounds = 1, clients = 2, flag = 0;
    float lr = 0.1f, sample = 1.0f;
    long seed = 0;
    cli_opt opts[] = {
        {"data", OPT_STR, &data_s, "data", 0, 0},       {"strategy", OPT_STR, &strategy, "strategy", 0, 0},
        {"rounds", OPT_INT, &rounds, "rounds", 1, 1e7}, {"clients", OPT_INT, &clients, "clients", 1, 1e7},
        {"lr", OPT_FLOAT, &lr, "lr", 0, 1000},          {"sample", OPT_FLOAT, &sample, "sample", 0, 1},
        {"seed", OPT_LONG, &seed, "seed", 0, 9e18},     {"quiet", OPT_FLAG, &flag, "flag", 0, 0},
    };
    int saved = dup(2), null = open("/dev/null", O_WRONLY);
    fflush(stderr);
    dup2(null, 2);
    cli_config *cfg = NULL;
    int rc = cli_config_read(p, opts, (int)(sizeof opts / sizeof *opts), &cfg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(null);
    /* a value that was accepted lies in its option's range */
    if (rc == 0) {
        fuzz_assert(rounds >= 1 && rounds <= 10000000 && clients >= 1 && clients <= 10000000);
        fuzz_assert(lr >= 0 && lr <= 1000 && sample >= 0 && sample <= 1 && seed >= 0);
        fuzz_assert(flag == 0 || flag == 1);
    }
    cli_config_free(cfg);
    return 0;
}
