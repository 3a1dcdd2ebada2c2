/* loom generate: KV-cached sampling from a model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "cli/progress.h"
#include "loom/core.h"
#include "loom/gemv.h"
#include "loom/model.h"
#include "loom/peft.h"

int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *tokp = NULL, *prompt = "", *weights = "f32", *i8 = "dot";
    int steps = 256, top_k = 0, threads = 0, ids = 0;
    float temperature = 1.0f, top_p = 1.0f;
    long seed = 42;
    cli_peft_opts po;
    cli_peft_init(&po);
    po.load_only = 1;
    cli_opt opts[] = {
        {"model", OPT_STR, &model, "model directory, llama2.c .bin, .gguf, or a shape for a random model", 0, 0},
        CLI_PEFT_LOAD_OPTS(po),
        {"weights", OPT_STR, &weights, "hold the whole model as f32, bf16 or int8 (linear weights, embedding and head; int8: a scale per output row or column)", 0, 0},
        {"int8", OPT_STR, &i8, "int8 products: dot (x quantized per block of 32, integer dot products, as llama.cpp) or widen (weights to float)", 0, 0},
        {"tokenizer", OPT_STR, &tokp, "tokenizer (tokenizer.json, model dir, encoder.json, llama2.c tokenizer.bin)", 0, 0},
        {"prompt", OPT_STR, &prompt, "text to continue (BOS is prepended)", 0, 0},
        {"steps", OPT_INT, &steps, "total positions, prompt included (as llama2.c's -n)", 1, 10000000},
        {"temperature", OPT_FLOAT, &temperature, "0 = greedy", 0, 100},
        {"top-k", OPT_INT, &top_k, "sample among the k most likely tokens (0 = off)", 0, 10000000},
        {"top-p", OPT_FLOAT, &top_p, "nucleus sampling mass (1 = off)", 0, 1},
        {"seed", OPT_LONG, &seed, "random seed", 0, 9e18},
        {"threads", OPT_INT, &threads, "threads (0 = all cores)", 0, cli_max_threads()},
        {"ids", OPT_FLAG, &ids, "print the generated token ids instead of text", 0, 0},
        CLI_OUTPUT_OPTS,
    };
    int pr = cli_parse(argc, argv, "loom generate --model PATH [--tokenizer PATH] [--prompt TEXT] [options]",
                       "Generates text with a KV cache, one token at a time, starting from BOS and the prompt,\n"
                       "stopping at BOS/EOS or after --steps positions. Text goes to stdout, speed to stderr.",
                       opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    if (cli_output_begin("generate") != 0) return 2;
    loom_strbuf text = {0};
    cli_generate_progress(1, cli_output_mode() == CLI_OUT_JSON ? &text : NULL);
    if (temperature < 0 || top_p <= 0 || top_p > 1 || top_k < 0 || steps < 1) {
        fprintf(stderr, "loom generate: need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --steps >= 1\n");
        return 2;
    }
    loom_qtype wq;
    if (loom_base_dtype_parse(weights, &wq) != LOOM_OK) {
        fprintf(stderr, "loom generate: --weights: %s\n", loom_errmsg());
        return 2;
    }
    if (strcmp(i8, "dot") && strcmp(i8, "widen")) {
        fprintf(stderr, "loom generate: --int8 '%s': dot or widen\n", i8);
        return 2;
    }
    loom_gemv_set_i8_scheme(strcmp(i8, "dot") ? LOOM_I8_WIDEN : LOOM_I8_DOT);
    if (wq != LOOM_Q_F32 && po.adapter) {
        fprintf(stderr, "loom generate: --weights %s holds the whole model for generation without an adapter; "
                        "with --adapter, hold the base's linear weights with --base-dtype %s\n", weights, weights);
        return 2;
    }
    cli_generate_print_ids(ids);
    if (threads > 0) loom_set_threads(threads);
    loom_model *m;
    int created;
    if (cli_load_or_create(&m, model, (unsigned long long)seed, &created) != LOOM_OK) return cli_fail("loading the model");
    if (wq != LOOM_Q_F32 && loom_model_quantize_ex(m, wq, LOOM_QUANT_EMBED_HEAD) != LOOM_OK) {
        loom_model_free(m);
        return cli_fail("--weights");
    }
    /* one token at a time, a small model is faster on one thread than paying for thread wake-ups */
    if (threads <= 0 && loom_model_n_params(m) < 20000000) loom_set_threads(1);
    loom_tset *set = NULL;
    if (cli_peft_setup(&po, m, 0, &set) != LOOM_OK) {
        loom_model_free(m);
        return cli_fail("--adapter");
    }
    loom_tokenizer *tok;
    if (cli_tokenizer(&tok, tokp, model, m) != LOOM_OK) {
        loom_tset_free(set);
        loom_model_free(m);
        return cli_fail("loading the tokenizer");
    }
    double secs;
    int n = cli_generate_ex(m, set, set ? loom_tset_data(set) : NULL, tok, prompt, steps, temperature, top_k, top_p,
                            (unsigned long long)seed, &secs);
    if (n >= 0) cli_info("generated %d tokens, %.1f tokens/s", n, secs > 0 ? n / secs : 0.0);
    if (n >= 0) {
        cli_kv res[] = {{"tokens", n, NULL}, {"tokens_per_s", secs > 0 ? n / secs : NAN, NULL}};
        const char *strs[] = {ids ? "ids" : "text", text.s ? text.s : ""};
        cli_result("generate", res, 2, strs, 1);
    }
    free(text.s);
    loom_tokenizer_free(tok);
    loom_tset_free(set);
    loom_model_free(m);
    return n < 0 ? cli_fail("generating") : 0;
}
