/* A llama2.c checkpoint: 7 int32 header fields, then float32 weights whose count the header implies
 * (a file of the wrong size, a bad shape or a non-finite weight must be refused with a message). */
#include "fuzz_util.h"
#include "loom/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char p[256];
    fuzz_write(p, sizeof p, "model.bin", data, n);
    loom_model *m = NULL;
    int rc = loom_model_load(&m, p);
    fuzz_check_error(rc);
    fuzz_assert((rc == LOOM_OK) == (m != NULL));
    loom_model_free(m);
    return 0;
}
