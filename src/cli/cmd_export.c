/* loom export: a trained adapter as a merged model directory, or re-exported in the PEFT layout; a
 * model (with an adapter merged in, if given) as one GGUF file for llama.cpp. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "loom/core.h"
#include "loom/gguf.h"
#include "loom/model.h"
#include "loom/peft.h"
#include "loom/tokenizer.h"

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

/* --gguf: the model (an adapter merged in when given) and its tokenizer as one GGUF file. */
static int export_gguf(const char *model, const char *tokp, const char *adapter, int merge, const char *gguf, const char *type_name) {
    loom_ggml_type type;
    if (loom_ggml_type_parse(type_name, &type) != LOOM_OK) {
        fprintf(stderr, "loom export: --gguf-type %s: expected f32, f16, bf16 or q8_0\n", type_name);
        return 2;
    }
    if (adapter && !merge) {
        fprintf(stderr, "loom export: --gguf with --adapter needs --merge (the adapter is folded into the weights)\n");
        return 2;
    }
    if (cli_same_path(gguf, model) || (tokp && cli_same_path(gguf, tokp))) {
        fprintf(stderr, "loom export: --gguf %s is an input file; it would be overwritten: choose another path\n", gguf);
        return 2;
    }
    loom_model *m = NULL;
    loom_tset *ts = NULL;
    loom_tokenizer *tok = NULL;
    loom_gguf_writer *w = NULL;
    int rc = 1;
    if (loom_model_load(&m, model) != LOOM_OK) return cli_fail("--model");
    if (cli_tokenizer(&tok, tokp, model, m) != LOOM_OK) {
        cli_fail("--tokenizer");
        goto done;
    }
    if (adapter && (loom_tset_load_peft(&ts, m, adapter) != LOOM_OK || loom_tset_merge(ts, loom_tset_data(ts), loom_model_params(m)) != LOOM_OK)) {
        cli_fail("--adapter");
        goto done;
    }
    if (loom_gguf_writer_create(&w) != LOOM_OK || loom_tokenizer_gguf_add(tok, loom_model_config(m)->vocab, w) != LOOM_OK) {
        cli_fail("the tokenizer");
        goto done;
    }
    if (loom_model_save_gguf(m, loom_model_params(m), type, w, gguf) != LOOM_OK) {
        cli_fail("--gguf");
        goto done;
    }
    const loom_config *c = loom_model_config(m);
    printf("loom export: %s model (%d layers, %zu parameters, %s)%s%s with its %s tokenizer written to %s\n",
           c->arch == LOOM_ARCH_GPT2 ? "gpt2" : "llama", c->n_layer, loom_model_n_params(m), loom_ggml_type_name(type),
           ts ? " with the merged " : "", ts ? loom_peft_method_name(loom_tset_config(ts)->method) : "", loom_tokenizer_kind(tok), gguf);
    rc = 0;
done:
    loom_gguf_writer_free(w);
    loom_tokenizer_free(tok);
    loom_tset_free(ts);
    loom_model_free(m);
    return rc;
}

int cmd_export(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *out = NULL, *gguf = NULL, *gguf_type = "f32", *tokp = NULL;
    const char *gguf_lora = NULL;
    int merge = 0;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "model: the base the adapter was trained on (a directory, llama2.c .bin or .gguf)", 0, 0},
        {"adapter", OPT_STR, &adapter, "PEFT-layout adapter directory", 0, 0},
        {"out", OPT_STR, &out, "output directory", 0, 0},
        {"merge", OPT_FLAG, &merge, "merge the adapter into the weights: write a full model directory", 0, 0},
        {"gguf-lora", OPT_STR, &gguf_lora, "write the LoRA adapter as llama.cpp's LoRA-adapter GGUF file", 0, 0},
        {"gguf", OPT_STR, &gguf, "write the model (with the merged adapter) and its tokenizer as this GGUF file", 0, 0},
        {"gguf-type", OPT_STR, &gguf_type, "GGUF matrix type: f32 (default), f16, bf16 or q8_0", 0, 0},
        {"tokenizer", OPT_STR, &tokp, "tokenizer written into the GGUF file (default: the model's)", 0, 0},
    };
    int pr = cli_parse(argc, argv, "loom export --model BASE --adapter DIR --out OUT [--merge] | --model M [--adapter DIR --merge] --gguf OUT.gguf\n"
                       "       | --adapter DIR [--model BASE] --gguf-lora OUT.gguf",
                       "Without --merge, re-exports the adapter in the PEFT layout (adapter_config.json +\n"
                       "adapter_model.safetensors), checked against the base. With --merge, folds it into the base\n"
                       "weights (LoRA: W + scale * B A; BitFit: the trained biases) and writes OUT/config.json,\n"
                       "OUT/model.safetensors and the base directory's tokenizer files. Prefix, prompt and adapter\n"
                       "sets add computation and cannot be merged.\n"
                       "With --gguf, writes one GGUF file that llama.cpp runs: general.architecture llama or gpt2,\n"
                       "the weights as --gguf-type (vectors stay f32) and the tokenizer inside.\n"
                       "With --gguf-lora, writes a LoRA adapter as llama.cpp's LoRA-adapter GGUF (general.type adapter),\n"
                       "which llama.cpp applies to the base's GGUF at load time (--lora); the base defaults to the\n"
                       "adapter's base_model_name_or_path.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (gguf_lora && (out || gguf || merge)) {
        fprintf(stderr, "loom export: --gguf-lora writes the adapter alone: give it without --out, --gguf or --merge\n");
        return 2;
    }
    if (gguf_lora) return cli_export_gguf_lora(model, adapter, gguf_lora);
    if (gguf) {
        if (!model) {
            fprintf(stderr, "loom export: --gguf needs --model (see --help)\n");
            return 2;
        }
        if (out) {
            fprintf(stderr, "loom export: give --gguf or --out, not both\n");
            return 2;
        }
        return export_gguf(model, tokp, adapter, merge, gguf, gguf_type);
    }
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
