/* Helpers shared by the model-using commands. */
#ifndef LOOM_CLI_COMMON_H
#define LOOM_CLI_COMMON_H

#include "loom/model.h"
#include "loom/tokenizer.h"

/* Loads a model from a path, or creates one from a built-in shape / config.json with `seed` when the
 * path is not an existing model. *created = 1 in the second case. */
int cli_load_or_create(loom_model **m, const char *spec, unsigned long long seed, int *created);
/* The tokenizer for a model: `path` when given; else tokenizer files in the model's directory; else the
 * byte-level tokenizer when the vocabulary fits it. */
int cli_tokenizer(loom_tokenizer **tok, const char *path, const char *model_path, const loom_model *m);
/* Streams a generated continuation of `prompt` to stdout; returns tokens generated (negative on error). */
int cli_generate(const loom_model *m, const float *params, const loom_tokenizer *tok, const char *prompt, int steps,
                 float temperature, int top_k, float top_p, unsigned long long seed, double *seconds);

#endif
