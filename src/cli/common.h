/* Helpers shared by the model-using commands. */
#ifndef LOOM_CLI_COMMON_H
#define LOOM_CLI_COMMON_H

#include "loom/model.h"
#include "loom/peft.h"
#include "loom/tokenizer.h"

/* Loads a model from a path, or creates one from a built-in shape / config.json with `seed` when the
 * path is not an existing model. *created = 1 in the second case. */
int cli_load_or_create(loom_model **m, const char *spec, unsigned long long seed, int *created);
/* 1 if path is a file starting with the GGUF magic. */
int cli_is_gguf(const char *path);
/* The tokenizer for a model: `path` when given; else tokenizer files in the model's directory; else the
 * byte-level tokenizer when the vocabulary fits it. */
int cli_tokenizer(loom_tokenizer **tok, const char *path, const char *model_path, const loom_model *m);
/* With on, the generate functions print the generated token ids (space-separated) instead of text. */
void cli_generate_print_ids(int on);
/* loom generate's progress and --json: with progress on, a line "token x/N" is shown on a terminal
 * stderr while the text goes elsewhere (stdout not a terminal); with capture non-NULL, the generated
 * text (or ids) is also appended to *capture (a loom_strbuf). */
void cli_generate_progress(int on, void *capture);
/* Streams a generated continuation of `prompt` to stdout: the prompt in one batched pass, then one token
 * at a time from the KV cache; returns tokens generated (negative on error). *seconds: the sampling
 * time from the first generated token on. */
int cli_generate(const loom_model *m, const float *params, const loom_tokenizer *tok, const char *prompt, int steps,
                 float temperature, int top_k, float top_p, unsigned long long seed, double *seconds);

/* Fine-tuning options shared by train, eval, generate and bench. */
typedef struct {
    const char *peft;        /* method name, NULL = none (full fine-tuning of the model itself) */
    const char *targets;     /* --target-modules */
    const char *base_dtype;  /* f32 | bf16 | int8 */
    const char *adapter;     /* PEFT-layout directory to load */
    int lora_r, rslora, prefix_len, prompt_len, adapter_dim, bitfit_norms;
    int load_only;           /* the command has --adapter but no --peft (eval, generate) */
    float lora_alpha, lora_dropout;
} cli_peft_opts;
void cli_peft_init(cli_peft_opts *o);
#define CLI_PEFT_METHOD_OPTS(o)                                                                                       \
    {"peft", OPT_STR, &(o).peft, "parameter-efficient method: lora, prefix, prompt, adapter, bitfit or full", 0, 0}, \
    {"lora-r", OPT_INT, &(o).lora_r, "LoRA rank", 1, 65536}, \
    {"lora-alpha", OPT_FLOAT, &(o).lora_alpha, "LoRA alpha (scale alpha/r)", 1e-6, 1e6}, \
    {"lora-dropout", OPT_FLOAT, &(o).lora_dropout, "dropout on LoRA's input while training", 0, 0.999}, \
    {"target-modules", OPT_STR, &(o).targets, "LoRA modules, PEFT names (c_attn,c_proj,c_fc / q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; default c_attn / q_proj,v_proj)", 0, 0}, \
    {"rslora", OPT_FLAG, &(o).rslora, "rank-stabilised LoRA: scale alpha/sqrt(r)", 0, 0}, \
    {"prefix-len", OPT_INT, &(o).prefix_len, "prefix tuning: virtual key/value positions per layer", 1, 65536}, \
    {"prompt-len", OPT_INT, &(o).prompt_len, "prompt tuning: soft tokens prepended", 1, 65536}, \
    {"adapter-dim", OPT_INT, &(o).adapter_dim, "bottleneck adapter width", 1, 65536}, \
    {"bitfit-norms", OPT_FLAG, &(o).bitfit_norms, "BitFit also trains norm gains", 0, 0}
#define CLI_PEFT_LOAD_OPTS(o)                                                                                         \
    {"adapter", OPT_STR, &(o).adapter, "PEFT-layout adapter directory (adapter_config.json + adapter_model.safetensors)", 0, 0}, \
    {"base-dtype", OPT_STR, &(o).base_dtype, "hold the frozen base's linear weights as f32, bf16 or int8", 0, 0}
/* Applies --base-dtype to m, then builds the trainable set: from --adapter (PEFT layout) or --peft.
 * *ts = NULL when neither is given or --peft full (the model's own parameters train). */
int cli_peft_setup(const cli_peft_opts *o, loom_model *m, unsigned long long seed, loom_tset **ts);
/* cli_generate with a trainable set (ts may be NULL): every set decodes with the KV cache, applied on the
 * fly over the base as it is held (a bf16/int8 base is never expanded; nothing is merged). */
int cli_generate_ex(const loom_model *m, const loom_tset *ts, const float *vec, const loom_tokenizer *tok,
                    const char *prompt, int steps, float temperature, int top_k, float top_p, unsigned long long seed,
                    double *seconds);

/* The shared data directory: $LOOM_SHARED when set; else ../shared beside the repository the binary
 * was built in (BIN/../../shared for build/loom, then BIN/../shared); else ../shared from the current
 * directory. */
const char *cli_shared_dir(void);
/* path = cli_shared_dir()/rel; LOOM_OK, or LOOM_ENOTFOUND with a message naming what was tried and
 * LOOM_SHARED. */
int cli_shared_file(char *path, size_t n, const char *rel);

/* The data formats of --format, one list for every command. */
#define CLI_FORMATS "text, jsonl, jsonl-cls, alpaca, dolly, self-instruct, csv, tsv, brown"
/* LOOM_FMT_* of a --format value, or -1 after printing an error that names the flag and the list. */
int cli_format(const char *cmd, const char *name);
/* True when path is a `loom data split` / `loom data shakespeare` manifest.json. */
int cli_is_split_manifest(const char *path);

#endif
