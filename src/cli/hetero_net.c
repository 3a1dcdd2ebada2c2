/* Heterogeneous and personalized clients of a networked run (src/cli/hetero_net.h). */
#include "cli/hetero_net.h"

#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

int cli_hetero_net_setup(const cli_run *r, const loom_tset *set, const loom_tvec *manifest, int n_clients,
                         uint64_t seed, cli_hetero_net *hn) {
    memset(hn, 0, sizeof hn[0]);
    if (r->profile) return loom_error(LOOM_EUNSUPPORTED, "--profile is for loom sim (simulated devices)");
    if (r->hetlora_prune > 0)
        return loom_error(LOOM_EUNSUPPORTED, "--hetlora-prune is for loom sim (the pruned ranks would have to travel)");
    if (strcmp(r->hetlora_agg, "pad") && strcmp(r->hetlora_agg, "rankwise") && strcmp(r->hetlora_agg, "sparsity"))
        return loom_error(LOOM_EUNSUPPORTED, "--hetlora-agg %s: a networked run aggregates by pad, rankwise or sparsity "
                          "(stack is for loom sim)", r->hetlora_agg);
    if ((r->client_ranks && !strcmp(r->client_ranks, "profile")) || (r->fedra_layers && !strcmp(r->fedra_layers, "profile")))
        return loom_error(LOOM_EUNSUPPORTED, "--%s profile is for loom sim (give a list)",
                          r->client_ranks && !strcmp(r->client_ranks, "profile") ? "client-ranks" : "fedra-layers");
    int any = r->client_ranks || r->fedra_layers || r->lora_freeze_a || !strcmp(r->hetlora_agg, "sparsity");
    if ((any || r->private_spec) && strcmp(r->client_algo, "sgd"))
        return loom_error(LOOM_EUNSUPPORTED, "--client-ranks, --fedra-layers, --lora-freeze-a and --private need "
                          "--client-algo sgd");
    int rc = LOOM_OK;
    if (any) {
        if (!set) return loom_error(LOOM_EINVAL, "--client-ranks, --fedra-layers and --lora-freeze-a need a trainable set (--peft)");
        int r_max = loom_tset_config(set)->method == LOOM_PEFT_LORA ? loom_tset_config(set)->lora_r : 0;
        int L = loom_model_config(loom_tset_model(set))->n_layer;
        hn->ranks = r->client_ranks ? malloc((size_t)n_clients * sizeof *hn->ranks) : NULL;
        hn->layers = r->fedra_layers ? malloc((size_t)n_clients * sizeof *hn->layers) : NULL;
        if ((r->client_ranks && !hn->ranks) || (r->fedra_layers && !hn->layers)) rc = loom_error(LOOM_ENOMEM, "out of memory");
        if (rc == LOOM_OK && r->client_ranks) {
            if (!r_max) rc = loom_error(LOOM_EINVAL, "--client-ranks needs --peft lora");
            else rc = loom_hetero_parse_list(r->client_ranks, "--client-ranks", 1, r_max, seed, n_clients, hn->ranks);
        }
        if (rc == LOOM_OK && r->fedra_layers)
            rc = loom_hetero_parse_list(r->fedra_layers, "--fedra-layers", 0, L, seed, n_clients, hn->layers);
        loom_hetero_config hc;
        loom_hetero_defaults(&hc);
        hc.n_clients = n_clients;
        hc.ranks = hn->ranks;
        hc.layers = hn->layers;
        hc.rankwise = !strcmp(r->hetlora_agg, "rankwise");
        hc.freeze_a = r->lora_freeze_a;
        hc.sparsity = !strcmp(r->hetlora_agg, "sparsity");
        hc.seed = seed;
        if (rc == LOOM_OK) rc = loom_hetero_create(&hn->h, set, &hc);
    }
    if (rc == LOOM_OK && r->private_spec) {
        rc = loom_personal_manifest(&hn->man, manifest, r->private_spec, NULL);
        if (rc == LOOM_OK) rc = loom_personal_create(&hn->p, hn->man, hn->h);
    }
    if (rc != LOOM_OK) cli_hetero_net_free(hn);
    return rc;
}

void cli_hetero_net_free(cli_hetero_net *hn) {
    loom_personal_free(hn->p);
    loom_hetero_free(hn->h);
    loom_tvec_free(hn->man);
    free(hn->ranks);
    free(hn->layers);
    memset(hn, 0, sizeof hn[0]);
}
