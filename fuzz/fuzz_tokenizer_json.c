/* A Hugging Face tokenizer.json (BPE model, normalizers, pre-tokenizers, decoders, added tokens). */
#include "fuzz_tok_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char p[256];
    fuzz_write(p, sizeof p, "tokenizer.json", data, n);
    loom_tokenizer *t = NULL;
    int rc = loom_tokenizer_load(&t, p);
    fuzz_check_error(rc);
    if (rc == LOOM_OK) fuzz_exercise_tokenizer(t, data, n);
    loom_tokenizer_free(t);
    return 0;
}
