/* adapter_config.json (PEFT layout), then the set it describes built on a tiny GPT-2 and a tiny Llama
 * (target module lists, ranks and lengths are checked against a real model). */
#include <sys/stat.h>

#include "fuzz_util.h"
#include "loom/model.h"
#include "loom/peft.h"

static loom_model *models[2];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (!models[0]) {
        loom_config c;
        if (loom_config_named(&c, "gpt2-tiny") != LOOM_OK || loom_model_create(&models[0], &c, 1) != LOOM_OK) abort();
        if (loom_config_named(&c, "llama-tiny") != LOOM_OK || loom_model_create(&models[1], &c, 1) != LOOM_OK) abort();
    }
    char dir[256], p[300];
    snprintf(dir, sizeof dir, "%s/adapter", fuzz_dir());
    mkdir(dir, 0755);
    fuzz_write(p, sizeof p, "adapter/adapter_config.json", data, n);
    loom_peft_config cfg;
    char base[128];
    int rc = loom_peft_config_load(&cfg, dir, base, sizeof base);
    fuzz_check_error(rc);
    if (rc != LOOM_OK) return 0;
    fuzz_assert(memchr(base, 0, sizeof base) != NULL);
    for (int k = 0; k < 2; k++) {
        loom_tset *ts = NULL;
        rc = loom_tset_create(&ts, models[k], &cfg, 7);
        fuzz_check_error(rc);
        if (rc == LOOM_OK) fuzz_assert(loom_tset_dim(ts) > 0 && loom_tset_count(ts) > 0);
        loom_tset_free(ts);
    }
    return 0;
}
