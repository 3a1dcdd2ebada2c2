/* loom dp: the privacy accountant (include/loom/dp.h). */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "loom/core.h"
#include "loom/dp.h"

int cmd_dp(int argc, char **argv) {
    const char *what = argc >= 2 ? argv[1] : "";
    int eps_mode = !strcmp(what, "epsilon"), sigma_mode = !strcmp(what, "sigma");
    if (!eps_mode && !sigma_mode) {
        int help = argc >= 2 && (!strcmp(what, "--help") || !strcmp(what, "-h"));
        if (!help && *what) fprintf(stderr, "loom dp: unknown subcommand '%s' (epsilon or sigma; see loom dp --help)\n\n", what);
        fprintf(help ? stdout : stderr,
                "usage: loom dp epsilon --q Q --sigma S --steps N --delta D [--json]\n"
                "       loom dp sigma --q Q --steps N --delta D --epsilon E [--json]\n\n"
                "The RDP accountant of the sampled Gaussian mechanism (DP-SGD, DP-FedAvg): each of N steps samples\n"
                "with rate Q and adds Gaussian noise of S times the clipping norm. `epsilon` prints the (epsilon,\n"
                "delta) guarantee and the optimal RDP order (Opacus's orders and conversion); `sigma` prints the\n"
                "smallest noise multiplier whose epsilon is at most E.\n");
        return help ? 0 : 2;
    }
    /* read as text and parsed in double precision (a float would round q = 256/60000) */
    const char *q_s = NULL, *sigma_s = NULL, *delta_s = "1e-5", *target_s = NULL;
    double q = -1, sigma = -1, delta = 1e-5, target = -1, steps;
    long steps_l = -1;
    int json = 0;
    cli_opt opts[] = {
        {"q", OPT_STR, &q_s, "sampling rate per step in [0, 1] (batch / data set size, or clients sampled / clients)", 0, 0},
        {"sigma", OPT_STR, &sigma_s, "noise multiplier (noise std / clipping norm), >= 0", 0, 0},
        {"steps", OPT_LONG, &steps_l, "steps (or rounds) composed (required)", 0, 1e15},
        {"delta", OPT_STR, &delta_s, "delta of the (epsilon, delta) guarantee, in (0, 1)", 0, 0},
        {"epsilon", OPT_STR, &target_s, "sigma: the target epsilon", 0, 0},
        {"json", OPT_FLAG, &json, "print one JSON object", 0, 0},
    };
    int pr = cli_parse(argc - 1, argv + 1,
                       eps_mode ? "loom dp epsilon --q Q --sigma S --steps N --delta D [--json]"
                                : "loom dp sigma --q Q --steps N --delta D --epsilon E [--json]",
                       eps_mode ? "The (epsilon, delta) of N steps of the sampled Gaussian mechanism, and the optimal RDP order."
                                : "The smallest noise multiplier reaching a target epsilon.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if ((q_s && cli_parse_real("--q", q_s, 0, 1, &q) != 0) || (sigma_s && cli_parse_real("--sigma", sigma_s, 0, 1e6, &sigma) != 0) ||
        cli_parse_real("--delta", delta_s, 1e-300, 0.999999, &delta) != 0 ||
        (target_s && cli_parse_real("--epsilon", target_s, 1e-9, 1e9, &target) != 0))
        return 2;
    if (q < 0) {
        fprintf(stderr, "loom dp: --q is required\n");
        return 2;
    }
    if (steps_l < 0) {
        fprintf(stderr, "loom dp: --steps is required\n");
        return 2;
    }
    steps = (double)steps_l;
    if (eps_mode) {
        if (sigma < 0) {
            fprintf(stderr, "loom dp: --sigma is required\n");
            return 2;
        }
        double eps, order;
        if (loom_dp_epsilon(q, sigma, steps, delta, NULL, 0, &eps, &order) != LOOM_OK) return cli_fail("dp epsilon");
        if (json) printf("{\"epsilon\": %.17g, \"order\": %.15g}\n", eps, order);
        else printf("epsilon %.6g at delta %g (RDP order %g) after %ld steps of q %g, sigma %g\n", eps, delta, order, steps_l,
                    q, sigma);
        return 0;
    }
    if (target < 0) {
        fprintf(stderr, "loom dp: --epsilon is required (the target budget)\n");
        return 2;
    }
    double s, eps;
    if (loom_dp_sigma(q, steps, delta, target, &s, &eps) != LOOM_OK) return cli_fail("dp sigma");
    if (json) printf("{\"sigma\": %.17g, \"epsilon\": %.17g}\n", s, eps);
    else printf("sigma %.6g gives epsilon %.6g at delta %g after %ld steps of q %g\n", s, eps, delta, steps_l, q);
    return 0;
}
