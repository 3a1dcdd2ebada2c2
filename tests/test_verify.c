/* `loom verify` on every reference case passes; with one reference tensor perturbed it fails (exit 1)
 * and names the tensor. Also the model files load back after loom writes them. */
#include <stdlib.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/model.h"
#include "loom/safetensors.h"
#include "test.h"

static const char *cases[] = {"gpt2-tiny", "gpt2-tiny-gelu_new", "llama-tiny"};

static int run(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Copies ref to path with `victim` changed by `delta` at element `at`. */
static int perturbed_copy(const char *ref, const char *path, const char *victim, size_t at, float delta) {
    loom_st_file *f;
    int rc = loom_st_open(&f, ref);
    if (rc) return rc;
    loom_st_writer *w;
    loom_st_writer_create(&w);
    size_t n = loom_st_count(f);
    void **copies = calloc(n, sizeof *copies);
    for (size_t i = 0; i < n; i++) {
        const loom_st_tensor *t = loom_st_at(f, i);
        copies[i] = malloc(t->nbytes ? t->nbytes : 1);
        memcpy(copies[i], t->data, t->nbytes);
        if (!strcmp(t->name, victim) && t->dtype == LOOM_DT_F32 && at < t->numel) ((float *)copies[i])[at] += delta;
        loom_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, copies[i]);
    }
    rc = loom_st_writer_write(w, path);
    loom_st_writer_free(w);
    for (size_t i = 0; i < n; i++) free(copies[i]);
    free(copies);
    loom_st_close(f);
    return rc;
}

int main(void) {
    const char *bin = getenv("LOOM_BIN");
    if (!bin) bin = "./loom";
    char cmd[16384], out[1 << 16], dir[2048], ref[4096];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(dir, sizeof dir, "%s/reference/%s", test_shared(), cases[i]);
        snprintf(ref, sizeof ref, "%s/reference.safetensors", dir);
        snprintf(cmd, sizeof cmd, "%s verify --model %s --reference %s 2>&1", bin, dir, ref);
        int st = run(cmd, out, sizeof out);
        CHECK(st == 0, "%s: verify exit %d:\n%s", cases[i], st, out);
        CHECK(strstr(out, " 0 failed") != NULL, "%s: summary line missing:\n%s", cases[i], out);
    }
    /* Perturbations that must be caught: a gradient by 1e-3 (far above 1e-4 * max|ref| for a small
     * tensor), a logit by 1e-3, the loss by 1e-4, an AdamW result by 1e-4. */
    struct { const char *c, *victim; size_t at; float delta; } bad[] = {
        {"gpt2-tiny", "grad.transformer.h.1.ln_2.bias", 3, 1e-3f},
        {"gpt2-tiny", "logits", 1000, 1e-3f},
        {"llama-tiny", "loss", 0, 1e-4f},
        {"llama-tiny", "adamw2.model.layers.0.self_attn.k_proj.weight", 17, 1e-4f},
        {"llama-tiny", "grad.model.layers.1.mlp.down_proj.weight", 5, 0.05f},
    };
    char scratch[256], tmp[512];
    test_tmpdir(scratch, sizeof scratch);
    snprintf(tmp, sizeof tmp, "%s/perturbed.safetensors", scratch);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(dir, sizeof dir, "%s/reference/%s", test_shared(), bad[i].c);
        snprintf(ref, sizeof ref, "%s/reference.safetensors", dir);
        CHECK_OK(perturbed_copy(ref, tmp, bad[i].victim, bad[i].at, bad[i].delta));
        snprintf(cmd, sizeof cmd, "%s verify --model %s --reference %s 2>&1", bin, dir, tmp);
        int st = run(cmd, out, sizeof out);
        CHECK(st == 1, "%s perturbed %s: exit %d (expected 1)", bad[i].c, bad[i].victim, st);
        const char *name = strchr(bad[i].victim, '.') && strncmp(bad[i].victim, "loss", 4) ? strchr(bad[i].victim, '.') + 1 : bad[i].victim;
        const char *line = strstr(out, name);
        int named = 0;
        while (line) { /* some row naming the tensor says FAIL */
            const char *eol = strchr(line, '\n');
            if (eol && memmem(line, (size_t)(eol - line), "FAIL", 4)) named = 1;
            line = strstr(line + 1, name);
        }
        CHECK(named, "%s perturbed %s: no FAIL row names it:\n%s", bad[i].c, bad[i].victim, out);
    }
    /* LoRA adapter on the frozen gpt2-tiny base: passes; a perturbed LoRA gradient, AdamW result or merged
     * weight in the reference fails naming the tensor; a perturbed adapter tensor fails too */
    char base[2048], adir[2048];
    snprintf(base, sizeof base, "%s/reference/gpt2-tiny", test_shared());
    snprintf(adir, sizeof adir, "%s/reference/gpt2-tiny-lora", test_shared());
    snprintf(ref, sizeof ref, "%s/reference.safetensors", adir);
    snprintf(cmd, sizeof cmd, "%s verify --model %s --adapter %s --reference %s 2>&1", bin, base, adir, ref);
    int st = run(cmd, out, sizeof out);
    CHECK(st == 0, "lora: verify exit %d:\n%s", st, out);
    CHECK(strstr(out, " 0 failed") && strstr(out, "lora, 8 tensors"), "lora: summary:\n%s", out);
    struct { const char *victim; size_t at; float delta; } lbad[] = {
        {"grad.base_model.model.transformer.h.1.attn.c_proj.lora_A.weight", 7, 1e-3f},
        {"adamw2.base_model.model.transformer.h.0.attn.c_attn.lora_B.weight", 11, 1e-4f},
        {"merged.transformer.h.1.attn.c_attn.weight", 100, 1e-4f},
        {"loss_after_adamw1", 0, 1e-4f},
    };
    for (size_t i = 0; i < sizeof lbad / sizeof lbad[0]; i++) {
        CHECK_OK(perturbed_copy(ref, tmp, lbad[i].victim, lbad[i].at, lbad[i].delta));
        snprintf(cmd, sizeof cmd, "%s verify --model %s --adapter %s --reference %s 2>&1", bin, base, adir, tmp);
        st = run(cmd, out, sizeof out);
        CHECK(st == 1, "lora perturbed %s: exit %d (expected 1)", lbad[i].victim, st);
        const char *name = strncmp(lbad[i].victim, "loss", 4) ? strchr(lbad[i].victim, '.') + 1 : lbad[i].victim;
        const char *line = strstr(out, name);
        int named = 0;
        while (line) {
            const char *eol = strchr(line, '\n');
            if (eol && memmem(line, (size_t)(eol - line), "FAIL", 4)) named = 1;
            line = strstr(line + 1, name);
        }
        CHECK(named, "lora perturbed %s: no FAIL row names it:\n%s", lbad[i].victim, out);
    }
    /* the adapter itself perturbed (a copy of the directory with one lora_A element changed) */
    char pdir[512], pfile[768], cfgcopy[4096];
    snprintf(pdir, sizeof pdir, "%s/adapter", scratch);
    mkdir(pdir, 0755);
    snprintf(pfile, sizeof pfile, "%s/adapter_model.safetensors", pdir);
    char aref[4096];
    snprintf(aref, sizeof aref, "%s/adapter_model.safetensors", adir);
    CHECK_OK(perturbed_copy(aref, pfile, "base_model.model.transformer.h.0.attn.c_proj.lora_A.weight", 5, 0.05f));
    snprintf(cfgcopy, sizeof cfgcopy, "cp %s/adapter_config.json %s/", adir, pdir);
    CHECK(system(cfgcopy) == 0, "copy adapter_config.json");
    snprintf(cmd, sizeof cmd, "%s verify --model %s --adapter %s --reference %s 2>&1", bin, base, pdir, ref);
    st = run(cmd, out, sizeof out);
    CHECK(st == 1, "perturbed adapter: exit %d (expected 1):\n%s", st, out);
    CHECK(strstr(out, "FAIL") != NULL, "perturbed adapter: a row fails:\n%s", out);
    unlink(pfile);
    snprintf(pfile, sizeof pfile, "%s/adapter_config.json", pdir);
    unlink(pfile);
    rmdir(pdir);
    unlink(tmp);
    CHECK(test_rmtree(scratch) == 0, "scratch directory %s removed", scratch);
    /* missing tensor in the reference: clear error, exit 1 */
    snprintf(dir, sizeof dir, "%s/reference/gpt2-tiny", test_shared());
    snprintf(cmd, sizeof cmd, "%s verify --model %s --reference %s/model.safetensors 2>&1", bin, dir, dir);
    CHECK(run(cmd, out, sizeof out) == 1, "verify against a file without tokens fails");
    CHECK(strstr(out, "tokens") != NULL, "message names what is missing: %s", out);
    return test_summary();
}
