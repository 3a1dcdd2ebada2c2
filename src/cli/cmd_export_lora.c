/* loom export --adapter DIR --gguf-lora OUT.gguf [--model BASE]: a LoRA adapter as llama.cpp's
 * LoRA-adapter GGUF, applied by llama.cpp to the base model's GGUF at load time. */
#include <stdio.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "loom/core.h"
#include "loom/peft.h"

int cli_export_gguf_lora(const char *model, const char *adapter, const char *out) {
    if (!adapter) {
        fprintf(stderr, "loom export: --gguf-lora needs --adapter DIR (a LoRA adapter in the PEFT layout)\n");
        return 2;
    }
    char base[1024] = "";
    loom_peft_config pc;
    if (loom_peft_config_load(&pc, adapter, base, sizeof base) != LOOM_OK) return cli_fail("--adapter");
    if (pc.method != LOOM_PEFT_LORA) {
        fprintf(stderr, "loom export: --gguf-lora: %s holds a %s adapter; llama.cpp applies LoRA adapters only\n", adapter,
                loom_peft_method_name(pc.method));
        return 1;
    }
    if (!model && !base[0]) {
        fprintf(stderr, "loom export: --gguf-lora: %s/adapter_config.json names no base model; give --model BASE\n", adapter);
        return 2;
    }
    if (!model) model = base;
    if (cli_out_file("--gguf-lora", out) != 0) return 1;
    loom_model *m = NULL;
    loom_tset *ts = NULL;
    int rc = 1;
    if (loom_model_load(&m, model) != LOOM_OK) return cli_fail(model == base ? "the adapter's base_model_name_or_path (give --model)" : "--model");
    if (loom_tset_load_peft(&ts, m, adapter) != LOOM_OK)
        cli_fail("--adapter");
    else if (loom_tset_save_gguf_lora(ts, loom_tset_data(ts), out) != LOOM_OK)
        cli_fail("--gguf-lora");
    else {
        printf("loom export: LoRA adapter (%d tensors, r = %d, alpha %g) written to %s for llama.cpp\n", loom_tset_count(ts),
               pc.lora_r, pc.lora_alpha, out);
        rc = 0;
    }
    loom_tset_free(ts);
    loom_model_free(m);
    return rc;
}
