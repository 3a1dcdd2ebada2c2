/* The federated tests' common start: a small byte-level GPT-2 (vocabulary 259, two heads; seed 7) and
 * the first max_examples lines of Tiny Shakespeare as a text dataset. */
#ifndef LOOM_TEST_FL_FIXTURE_H
#define LOOM_TEST_FL_FIXTURE_H

#include "loom/dataset.h"
#include "loom/model.h"
#include "loom/tokenizer.h"
#include "test.h"

/* LOOM_OK, or the first failure (already counted by CHECK_OK). */
static inline int fl_fixture(int n_layer, int dim, int max_seq, size_t max_examples, loom_model **model,
                             loom_tokenizer **tok, loom_dataset **ds) {
    loom_config cfg;
    loom_config_named(&cfg, "gpt2-tiny");
    cfg.vocab = 259;
    cfg.n_layer = n_layer;
    cfg.dim = dim;
    cfg.hidden = 2 * dim;
    cfg.n_head = cfg.n_kv_head = 2;
    cfg.max_seq = max_seq;
    CHECK_OK(loom_model_create(model, &cfg, 7));
    CHECK_OK(loom_tokenizer_byte(tok));
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = loom_dataset_format("text");
    o.max_examples = max_examples;
    CHECK_OK(loom_dataset_load(ds, test_path(path, sizeof path, "data/tinyshakespeare/input.txt"), &o, *tok));
    return *model && *tok && *ds ? LOOM_OK : LOOM_EINVAL;
}

#endif
