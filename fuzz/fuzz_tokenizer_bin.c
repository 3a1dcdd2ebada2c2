/* A llama2.c tokenizer.bin (and whatever else loom_tokenizer_load recognises in a file of that name,
 * such as a tiktoken ranks file). */
#include "fuzz_tok_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    char p[256];
    fuzz_write(p, sizeof p, "tokenizer.bin", data, n);
    loom_tokenizer *t = NULL;
    int rc = loom_tokenizer_load(&t, p);
    fuzz_check_error(rc);
    if (rc == LOOM_OK) fuzz_exercise_tokenizer(t, data, n);
    loom_tokenizer_free(t);
    /* the same bytes as a tiktoken file */
    fuzz_write(p, sizeof p, "tokenizer.model", data, n);
    t = NULL;
    rc = loom_tokenizer_load(&t, p);
    fuzz_check_error(rc);
    if (rc == LOOM_OK) fuzz_exercise_tokenizer(t, data, n);
    loom_tokenizer_free(t);
    return 0;
}
