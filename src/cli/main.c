/* loom command-line program: dispatches to one function per command (src/cli/cmd_*.c). */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "loom/core.h"

int cmd_audit(int argc, char **argv); /* cmd_audit.c */
int cmd_aggregate(int argc, char **argv); /* cmd_aggregate.c */
int cmd_unlearn(int argc, char **argv); /* cmd_unlearn.c */
int cmd_report(int argc, char **argv); /* cmd_report.c */

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"train", cmd_train, "train one model: from scratch, full fine-tuning or PEFT (LoRA, prefix, prompt, adapter, BitFit)"},
    {"eval", cmd_eval, "loss and perplexity of a model on a text file"},
    {"generate", cmd_generate, "sample text from a model (greedy, temperature, top-k, top-p)"},
    {"sim", cmd_sim, "federated training of many simulated clients (FedAvg, FedProx, FedAdam, SCAFFOLD, ...)"},
    {"server", cmd_server, "coordinate a real federation over HTTPS; register and revoke clients"},
    {"client", cmd_client, "take part in a federation run by loom server (only the update leaves this machine)"},
    {"dp", cmd_dp, "differential privacy accounting: epsilon of a DP-SGD / DP-FedAvg schedule, or the noise for a budget"},
    {"aggregate", cmd_aggregate, "apply one aggregation rule (fedavg, median, trimmed-mean, krum, ...) to update files offline"},
    {"unlearn", cmd_unlearn, "remove one client's contribution from a run: exact retraining or FedEraser's calibrated replay"},
    {"audit", cmd_audit, "privacy audits: membership inference (AUC, TPR at 1% FPR) and canary exposure"},
    {"data", cmd_data, "split data sets among federated clients; federated Shakespeare"},
    {"report", cmd_report_main, "a finished run's report; --serve RUN_DIR: its dashboard in the browser"},
    {"tokenize", cmd_tokenize, "encode text on stdin to token ids"},
    {"detokenize", cmd_detokenize, "decode token ids on stdin to text"},
    {"export", cmd_export, "write an adapter merged into its base model, or re-export it in the PEFT layout"},
    {"verify", cmd_verify, "check numerics against a reference file (logits, loss, gradients, AdamW)"},
    {"bench", cmd_bench, "benchmarks: train, generate, tokenize"},
    {"version", cmd_version, "print the version"},
};

static void usage(FILE *f) {
    fprintf(f, "loom %s: federated training and fine-tuning of language models\n\n"
               "usage: loom <command> [options]   (loom <command> --help for details)\n\ncommands:\n",
            LOOM_VERSION);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "loom: unknown command '%s' (see loom --help)\n\n", argv[1]);
    usage(stderr);
    return 2;
}

int cmd_version(int argc, char **argv) {
    int pr = cli_parse(argc, argv, "loom version", "Prints the version.", NULL, 0, NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    printf("loom %s\n", LOOM_VERSION);
    return 0;
}
