#define _DEFAULT_SOURCE /* readlink, realpath */
#include "cli/common.h"
#include "cli/args.h"
#include "cli/progress.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/sample.h"

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int cli_load_or_create(loom_model **m, const char *spec, unsigned long long seed, int *created) {
    *created = 0;
    if (!spec) return loom_error(LOOM_EINVAL, "--model is required (a model directory, a llama2.c .bin, a config.json or a shape: gpt2-124m, gpt2-tiny, llama-110m, llama-tiny, tiny)");
    char cfgpath[4096];
    snprintf(cfgpath, sizeof cfgpath, "%s/model.safetensors", spec);
    int is_model = (is_dir(spec) && (exists(cfgpath) || (snprintf(cfgpath, sizeof cfgpath, "%s/model.safetensors.index.json", spec), exists(cfgpath)))) ||
                   (exists(spec) && !is_dir(spec) && !strstr(spec, ".json"));
    if (is_model) return loom_model_load(m, spec);
    loom_config cfg;
    int rc = loom_config_named(&cfg, spec);
    if (rc != LOOM_OK) return loom_error_context(rc, "--model %s is neither a model nor a known shape", spec);
    *created = 1;
    return loom_model_create(m, &cfg, seed);
}

int cli_is_gguf(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char m[4] = {0};
    size_t n = fread(m, 1, 4, f);
    fclose(f);
    return n == 4 && !memcmp(m, "GGUF", 4);
}

int cli_tokenizer(loom_tokenizer **tok, const char *path, const char *model_path, const loom_model *m) {
    int rc;
    if (path) {
        rc = loom_tokenizer_load(tok, path);
    } else if (model_path && (is_dir(model_path) || cli_is_gguf(model_path)) &&
               (rc = loom_tokenizer_load(tok, model_path)) == LOOM_OK) {
        /* tokenizer files beside the model, or inside its GGUF file */
    } else if (loom_model_config(m)->vocab == 259) {
        rc = loom_tokenizer_byte(tok);
    } else {
        return loom_error(LOOM_EINVAL, "the model's vocabulary has %d tokens: give its tokenizer with --tokenizer", loom_model_config(m)->vocab);
    }
    if (rc != LOOM_OK) return rc;
    if (loom_tokenizer_vocab_size(*tok) > loom_model_config(m)->vocab) {
        int v = loom_tokenizer_vocab_size(*tok);
        loom_tokenizer_free(*tok);
        *tok = NULL;
        return loom_error(LOOM_EINVAL, "the tokenizer has %d tokens but the model only %d", v, loom_model_config(m)->vocab);
    }
    return LOOM_OK;
}

/* Streams a continuation of prompt: the prompt's tokens in one batched pass (loom_prefill_ex), then
 * one token at a time from the KV cache, the set pf (NULL: none) applied on the fly over the base as it
 * is held. cap: the token positions the model has (fewer with a soft prompt). Positions 0 .. steps - 1
 * are run, so steps - n + 1 tokens are sampled for a prompt of n tokens (stopping early at BOS/EOS). */
static int print_ids; /* loom generate --ids */
void cli_generate_print_ids(int on) { print_ids = on; }
static int gen_progress;
static loom_strbuf *gen_capture;
void cli_generate_progress(int on, void *capture) {
    gen_progress = on;
    gen_capture = capture;
}

static int generate_kv(const loom_model *m, const float *base, const loom_peft *pf, const float *vec,
                       const loom_tokenizer *tok, const char *prompt, int steps, int cap, float temperature, int top_k,
                       float top_p, unsigned long long seed, double *seconds) {
    const int V = loom_model_config(m)->vocab;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = loom_tokenizer_encode(tok, prompt, strlen(prompt), LOOM_TOK_BOS, &ids, &n);
    if (rc != LOOM_OK) return rc;
    if (n == 0) { /* no BOS in this tokenizer and an empty prompt: start from token 0 */
        free(ids);
        ids = calloc(1, sizeof *ids);
        if (!ids) return loom_error(LOOM_ENOMEM, "out of memory");
        n = 1;
    }
    if (n > (size_t)cap) {
        free(ids);
        return loom_error(LOOM_ERANGE, "the prompt's %zu tokens do not fit the model's %d positions", n, cap);
    }
    if (steps > cap) steps = cap;
    if ((int)n >= steps) steps = (int)n + 1 <= cap ? (int)n + 1 : cap;
    loom_kv *kv = NULL;
    loom_detok *dt = NULL;
    float *logits = malloc((size_t)V * sizeof *logits);
    if (!logits || (rc = loom_kv_create_ex(&kv, m, pf, steps, 0)) != LOOM_OK ||
        (rc = loom_detok_create(&dt, tok)) != LOOM_OK) {
        free(ids);
        free(logits);
        loom_kv_free(kv);
        return rc ? rc : loom_error(LOOM_ENOMEM, "out of memory");
    }
    loom_sampler s = {temperature, top_k, top_p};
    loom_rng rng;
    loom_rng_init(&rng, seed, LOOM_STREAM_GENERATE);
    int bos = loom_tokenizer_bos(tok), eos = loom_tokenizer_eos(tok);
    char buf[512];
    size_t w;
    for (size_t i = 1; i < n && !print_ids; i++) /* the prompt as given (BOS is not printed) */
        if (loom_detok_push(dt, ids[i], buf, sizeof buf, &w) == LOOM_OK && w) fwrite(buf, 1, w, stdout);
    fflush(stdout);
    int generated = 0;
    double t0 = 0;
    /* progress on a terminal stderr while the text goes to a file or pipe */
    cli_progress bar;
    int show = gen_progress && cli_tty() && !isatty(1) && cli_output_mode() == CLI_OUT_TEXT;
    if (show) cli_progress_start(&bar, "generate", "token", NULL, steps - (int)n + 1, -1);
    rc = loom_prefill_ex(m, base, kv, pf, vec, ids, (int)n, 0, logits);
    for (int pos = (int)n; rc == LOOM_OK; pos++) {
        if (generated == 0) t0 = loom_now();
        int32_t next = loom_sample(logits, V, &s, &rng);
        generated++;
        if (next == bos || next == eos) break;
        if (print_ids) {
            printf("%s%d", generated > 1 ? " " : "", next);
            if (gen_capture) {
                char idb[24];
                int k = snprintf(idb, sizeof idb, "%s%d", generated > 1 ? " " : "", next);
                loom_strbuf_add(gen_capture, idb, (size_t)k);
            }
        } else if (loom_detok_push(dt, next, buf, sizeof buf, &w) == LOOM_OK && w) {
            fwrite(buf, 1, w, stdout);
            fflush(stdout);
            if (gen_capture) loom_strbuf_add(gen_capture, buf, w);
        }
        if (show) {
            double el = loom_now() - t0;
            cli_kv kv[] = {{"tokens_per_s", el > 0 ? generated / el : NAN, "%.1f"}};
            cli_progress_done(&bar, generated, kv, 1);
        }
        if (pos >= steps) break;
        rc = loom_decode_step_ex(m, base, kv, pf, vec, next, pos, logits);
    }
    if (show) cli_progress_end(&bar);
    if (!print_ids && loom_detok_flush(dt, buf, sizeof buf, &w) == LOOM_OK && w) {
        fwrite(buf, 1, w, stdout);
        if (gen_capture) loom_strbuf_add(gen_capture, buf, w);
    }
    printf("\n");
    if (seconds) *seconds = generated ? loom_now() - t0 : 0;
    free(ids);
    free(logits);
    loom_kv_free(kv);
    loom_detok_free(dt);
    return rc != LOOM_OK ? rc : generated;
}

int cli_generate(const loom_model *m, const float *params, const loom_tokenizer *tok, const char *prompt, int steps,
                 float temperature, int top_k, float top_p, unsigned long long seed, double *seconds) {
    return generate_kv(m, params, NULL, NULL, tok, prompt, steps, loom_model_config(m)->max_seq, temperature, top_k,
                       top_p, seed, seconds);
}

/* ---------------------------------------------------------------- fine-tuning options */

void cli_peft_init(cli_peft_opts *o) {
    memset(o, 0, sizeof *o);
    loom_peft_config d;
    loom_peft_defaults(&d, LOOM_PEFT_LORA);
    o->lora_r = d.lora_r;
    o->lora_alpha = d.lora_alpha;
    o->prefix_len = d.prefix_len;
    o->prompt_len = d.prompt_len;
    o->adapter_dim = d.adapter_dim;
    o->base_dtype = "f32";
}

int cli_peft_setup(const cli_peft_opts *o, loom_model *m, unsigned long long seed, loom_tset **ts) {
    *ts = NULL;
    loom_qtype qt;
    int rc = loom_base_dtype_parse(o->base_dtype, &qt);
    if (rc != LOOM_OK) return loom_error_context(rc, "--base-dtype");
    loom_peft_method meth = LOOM_PEFT_FULL;
    if (o->peft && (rc = loom_peft_method_parse(o->peft, &meth)) != LOOM_OK) return loom_error_context(rc, "--peft");
    if (o->adapter && o->peft)
        return loom_error(LOOM_EINVAL, "give either --adapter (load a trained set) or --peft (start a new one)");
    if (qt != LOOM_Q_F32 && !o->adapter && (!o->peft || meth == LOOM_PEFT_FULL)) {
        if (o->load_only)
            return loom_error(LOOM_EINVAL, "--base-dtype %s holds a frozen base under an adapter: add --adapter DIR",
                              o->base_dtype);
        return loom_error(LOOM_EINVAL, "--base-dtype %s freezes the base: add --peft lora|prefix|prompt|adapter|bitfit",
                          o->base_dtype);
    }
    if (qt != LOOM_Q_F32 && (rc = loom_model_quantize(m, qt)) != LOOM_OK) return rc;
    if (o->adapter) return loom_tset_load_peft(ts, m, o->adapter);
    if (!o->peft || meth == LOOM_PEFT_FULL) return LOOM_OK;
    loom_peft_config pc;
    loom_peft_defaults(&pc, meth);
    pc.lora_r = o->lora_r;
    pc.lora_alpha = o->lora_alpha;
    pc.lora_dropout = o->lora_dropout;
    pc.rslora = o->rslora;
    pc.prefix_len = o->prefix_len;
    pc.prompt_len = o->prompt_len;
    pc.adapter_dim = o->adapter_dim;
    pc.bitfit_norms = o->bitfit_norms;
    pc.base_dtype = qt;
    if (o->targets) {
        if (strlen(o->targets) >= sizeof pc.target_modules) return loom_error(LOOM_ERANGE, "--target-modules is too long");
        snprintf(pc.target_modules, sizeof pc.target_modules, "%s", o->targets);
    }
    return loom_tset_create(ts, m, &pc, seed);
}

int cli_generate_ex(const loom_model *m, const loom_tset *ts, const float *vec, const loom_tokenizer *tok,
                    const char *prompt, int steps, float temperature, int top_k, float top_p, unsigned long long seed,
                    double *seconds) {
    /* every set decodes with the KV cache, applied on the fly over the base as it is held */
    if (!ts) return cli_generate(m, loom_model_params_const(m), tok, prompt, steps, temperature, top_k, top_p, seed, seconds);
    const loom_peft_config *pc = loom_tset_config(ts);
    int cap = loom_model_config(m)->max_seq - (pc->method == LOOM_PEFT_PROMPT ? pc->prompt_len : 0);
    return generate_kv(m, loom_model_params_const(m), loom_tset_plan(ts), vec, tok, prompt, steps, cap, temperature,
                       top_k, top_p, seed, seconds);
}

/* ---------------------------------------------------------------- data */

int cli_format(const char *cmd, const char *name) {
    int f = loom_dataset_format(name);
    if (f < 0) fprintf(stderr, "loom %s: unknown --format '%s' (%s)\n", cmd, name, CLI_FORMATS);
    return f;
}

int cli_is_split_manifest(const char *path) {
    size_t n = strlen(path);
    if (n >= 13 && !strcmp(path + n - 13, "manifest.json")) return 1;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    char head[512];
    size_t got = fread(head, 1, sizeof head - 1, f);
    fclose(f);
    head[got] = 0;
    return strstr(head, "\"loom-data-split\"") != NULL;
}

/* ---------------------------------------------------------------- the shared data directory */

const char *cli_shared_dir(void) {
    static char dir[4096];
    const char *env = getenv("LOOM_SHARED");
    if (env && *env) return env;
    if (dir[0]) return dir;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        static const char *const ups[] = {"/../../shared", "/../shared"};
        for (int i = 0; i < 2; i++) {
            char cand[4200];
            snprintf(cand, sizeof cand, "%s%s", exe, ups[i]);
            if (is_dir(cand) && realpath(cand, dir)) return dir;
        }
    }
    snprintf(dir, sizeof dir, "../shared");
    return dir;
}

int cli_shared_file(char *path, size_t n, const char *rel) {
    snprintf(path, n, "%s/%s", cli_shared_dir(), rel);
    if (exists(path)) return LOOM_OK;
    const char *env = getenv("LOOM_SHARED");
    return loom_error(LOOM_ENOTFOUND, "cannot find %s (%s): set LOOM_SHARED to the shared data directory%s", rel, path,
                      env && *env ? "" : " (it is not set)");
}
