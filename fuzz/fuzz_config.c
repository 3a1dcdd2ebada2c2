/* A model's config.json: every accepted config must pass validation and describe a model small
 * enough to count (the shapes that loom_model_alloc would lay out). */
#include "fuzz_util.h"
#include "loom/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_dir();
    char *text = malloc(n + 1);
    memcpy(text, data, n);
    text[n] = 0;
    loom_config c;
    int rc = loom_config_parse(&c, text);
    fuzz_check_error(rc);
    if (rc == LOOM_OK) {
        fuzz_assert(loom_config_validate(&c) == LOOM_OK);
        char *back = loom_config_to_json(&c);
        loom_config c2;
        fuzz_assert(back && loom_config_parse(&c2, back) == LOOM_OK);
        fuzz_assert(c2.dim == c.dim && c2.n_layer == c.n_layer && c2.vocab == c.vocab && c2.hidden == c.hidden);
        free(back);
    }
    free(text);
    return 0;
}
