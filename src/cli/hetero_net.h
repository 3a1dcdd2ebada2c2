/* Heterogeneous and personalized clients of a networked run (loom server, loom client): the masks both
 * sides recompute from the run's flags (include/loom/hetero.h, include/loom/personal.h). */
#ifndef LOOM_CLI_HETERO_NET_H
#define LOOM_CLI_HETERO_NET_H

#include "cli/runspec.h"
#include "loom/hetero.h"
#include "loom/personal.h"

typedef struct {
    loom_hetero *h;    /* NULL: no rank, layer or frozen-A masks */
    loom_personal *p;  /* NULL: nothing private */
    loom_tvec *man;    /* the manifest with the private roles (NULL without --private) */
    int *ranks, *layers;
} cli_hetero_net;

/* From --client-ranks LIST|draw:LIST, --hetlora-agg pad|rankwise, --lora-freeze-a, --fedra-layers
 * LIST|draw:LIST and --private over the set (NULL: full fine-tuning) and its manifest, for n_clients
 * clients. What only loom sim does (--profile and budgets from it, --hetlora-agg stack, --hetlora-prune)
 * is refused naming the flag. LOOM_OK (hn all NULL when nothing is configured) or an error with its
 * message. */
int cli_hetero_net_setup(const cli_run *r, const loom_tset *set, const loom_tvec *manifest, int n_clients,
                         uint64_t seed, cli_hetero_net *hn);
void cli_hetero_net_free(cli_hetero_net *hn);

#endif
