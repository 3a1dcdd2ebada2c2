/* GPT-2's original files: encoder.json, a NUL byte, then vocab.bpe (both written beside each other). */
#include "fuzz_tok_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    size_t n1;
    if (!fuzz_split(data, n, &n1)) return 0;
    char p[256], q[256];
    fuzz_write(q, sizeof q, "vocab.bpe", data + n1 + 1, n - n1 - 1);
    fuzz_write(p, sizeof p, "encoder.json", data, n1);
    loom_tokenizer *t = NULL;
    int rc = loom_tokenizer_load(&t, p);
    fuzz_check_error(rc);
    if (rc == LOOM_OK) fuzz_exercise_tokenizer(t, data, n);
    loom_tokenizer_free(t);
    return 0;
}
