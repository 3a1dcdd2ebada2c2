/* loom export: a trained adapter as a merged model directory, or re-exported in the PEFT layout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "loom/core.h"
#include "loom/peft.h"

/* Tokenizer and generation files a merged model directory should carry over from its base. */
static const char *side_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                                   "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.model", "tokenizer.bin",
                                   "generation_config.json"};

static int copy_file(const char *from, const char *to) {
    char *data;
    size_t len;
    int rc = loom_read_file(from, &data, &len);
    if (rc != LOOM_OK) return rc;
    rc = loom_write_file_atomic(to, data, len);
    free(data);
    return rc;
}

int cmd_export(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL, *gguf_lora = NULL;
    int merge = 0;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "base model directory the adapter was trained on", 0, 0},
        {"adapter", OPT_STR, &adapter, "PEFT-layout adapter directory", 0, 0},
        {"out", OPT_STR, &out, "output directory", 0, 0},
        {"merge", OPT_FLAG, &merge, "merge the adapter into the weights: write a full model directory", 0, 0},
        {"gguf-lora", OPT_STR, &gguf_lora, "write the LoRA adapter as llama.cpp's LoRA-adapter GGUF file", 0, 0},
    };
    int pr = cli_parse(argc, argv, "loom export --model BASE --adapter DIR --out OUT [--merge]",
                       "Without --merge, re-exports the adapter in the PEFT layout (adapter_config.json +\n"
                       "adapter_model.safetensors), checked against the base. With --merge, folds it into the base\n"
                       "weights (LoRA: W + scale * B A; BitFit: the trained biases) and writes OUT/config.json,\n"
                       "OUT/model.safetensors and the base directory's tokenizer files. Prefix, prompt and adapter\n"
                       "sets add computation and cannot be merged.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (gguf_lora) return cli_export_gguf_lora(model, adapter, gguf_lora);
    if (!model || !adapter || !out) {
        fprintf(stderr, "loom export: --model, --adapter and --out are required (see --help)\n");
        return 2;
    }
    if (cli_same_path(out, model) || cli_same_path(out, adapter)) {
        fprintf(stderr, "loom export: --out %s is the %s directory; it would be overwritten: choose another --out\n", out,
                cli_same_path(out, model) ? "--model" : "--adapter");
        return 2;
    }
    if (cli_out_dir("--out", out) != 0) return 1;
    loom_model *m = NULL;
    loom_tset *ts = NULL;
    int rc = 1;
    if (loom_model_load(&m, model) != LOOM_OK) return cli_fail("--model");
    if (loom_tset_load_peft(&ts, m, adapter) != LOOM_OK) {
        cli_fail("--adapter");
        goto done;
    }
    if (!merge) {
        char base[1024];
        loom_peft_config pc;
        if (loom_peft_config_load(&pc, adapter, base, sizeof base) != LOOM_OK ||
            loom_tset_save_peft(ts, loom_tset_data(ts), out, base[0] ? base : model) != LOOM_OK) {
            cli_fail("exporting");
            goto done;
        }
        printf("loom export: %s adapter (%zu parameters) written to %s/adapter_model.safetensors + adapter_config.json\n",
               loom_peft_method_name(loom_tset_config(ts)->method), loom_tset_dim(ts), out);
        rc = 0;
        goto done;
    }
    if (loom_tset_merge(ts, loom_tset_data(ts), loom_model_params(m)) != LOOM_OK || loom_model_save(m, loom_model_params(m), out) != LOOM_OK) {
        cli_fail("merging");
        goto done;
    }
    int copied = 0;
    for (size_t i = 0; i < sizeof side_files / sizeof side_files[0]; i++) {
        char from[4096], to[4096];
        snprintf(from, sizeof from, "%s/%s", model, side_files[i]);
        snprintf(to, sizeof to, "%s/%s", out, side_files[i]);
        FILE *f = fopen(from, "rb");
        if (!f) continue;
        fclose(f);
        if (copy_file(from, to) != LOOM_OK) {
            cli_fail("copying tokenizer files");
            goto done;
        }
        copied++;
    }
    printf("loom export: merged %s adapter into %s/model.safetensors + config.json (%d tokenizer files copied)\n",
           loom_peft_method_name(loom_tset_config(ts)->method), out, copied);
    rc = 0;
done:
    loom_tset_free(ts);
    loom_model_free(m);
    return rc;
}
