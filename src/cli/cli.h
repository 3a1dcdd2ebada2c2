/* Shared by the CLI's command files. Only the CLI prints and exits. */
#ifndef LOOM_CLI_H
#define LOOM_CLI_H

#define LOOM_VERSION "0.1.0"

/* One entry point per command; argv[0] is the command name. Returns the process exit code. */
int cmd_version(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_sim(int argc, char **argv);
int cmd_server(int argc, char **argv);
int cmd_client(int argc, char **argv);
int cmd_dp(int argc, char **argv);
int cmd_export(int argc, char **argv);
/* loom export --gguf-lora: the LoRA adapter in adapter (PEFT layout) as llama.cpp's LoRA GGUF at out;
 * model is the base (NULL: the adapter's base_model_name_or_path). Returns the exit code. */
int cli_export_gguf_lora(const char *model, const char *adapter, const char *out);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
/* Benchmarks, reached through `loom bench <name>` (argv[0] is the benchmark name). */
int bench_tokenize(int argc, char **argv);
int cmd_data(int argc, char **argv);
/* loom report: cmd_report_main (cmd_report_serve.c) runs cmd_report_serve for --serve RUN_DIR (the
 * dashboard of a finished run) and cmd_report (the static report) for everything else. */
int cmd_report_main(int argc, char **argv);
int cmd_report_serve(int argc, char **argv);
int cmd_report(int argc, char **argv);

#endif
