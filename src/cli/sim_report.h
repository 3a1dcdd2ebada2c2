/* loom sim's before/after report: perplexity of a model vector on each client's held-out data. */
#ifndef LOOM_CLI_SIM_REPORT_H
#define LOOM_CLI_SIM_REPORT_H

#include "loom/dataset.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/peft.h"

/* Mean next-token loss of vec (the model's weights when ts is NULL, else the set's vector over the
 * model's frozen base) on each client's test examples, in one ordered pass of B x T batches (packed as
 * training packs them), on `threads` threads. loss[i] = NAN and tokens[i] = 0 for a client without test
 * targets. */
int cli_client_losses(const loom_model *m, const loom_tset *ts, const float *vec, const loom_dataset *ds,
                      const loom_partition *part, int B, int T, int threads, double *loss, long *tokens);

/* Prints the table "client, test tokens, ppl before, ppl after" for the n clients with the most test
 * tokens (all when n >= clients) and a last row over all clients' test tokens pooled. */
void cli_print_ppl_table(const loom_partition *part, const double *before, const double *after, const long *tokens,
                         int n);

#endif
