/* Shared by the libFuzzer harnesses: a private scratch directory (removed at exit), whole-input
 * writes into it for the loaders that read files, and a silent log sink. Each harness defines
 * LLVMFuzzerTestOneInput; anything other than a clean LOOM_OK or an error code with a message is a
 * finding (ASan, UBSan and a failed fuzz_assert abort). */
#ifndef LOOM_FUZZ_UTIL_H
#define LOOM_FUZZ_UTIL_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/core.h"

static char fuzz_tmp[64];

static inline int fuzz_rm(const char *p, const struct stat *st, int flag, struct FTW *ftw) { return remove(p); }
static inline void fuzz_cleanup(void) {
    if (fuzz_tmp[0]) nftw(fuzz_tmp, fuzz_rm, 8, FTW_DEPTH | FTW_PHYS);
}
static inline void fuzz_quiet(int level, const char *msg, void *ud) {}

/* The scratch directory; created (and the log silenced) on first use. */
static inline const char *fuzz_dir(void) {
    if (!fuzz_tmp[0]) {
        snprintf(fuzz_tmp, sizeof fuzz_tmp, "/tmp/loom_fuzz_XXXXXX");
        if (!mkdtemp(fuzz_tmp)) abort();
        atexit(fuzz_cleanup);
        loom_set_log(fuzz_quiet, NULL, 0);
    }
    return fuzz_tmp;
}

/* Writes data into <dir>/<name> (plain write: the loaders must cope with any bytes) and returns the
 * path (a static buffer per call site is not needed: callers copy or use it at once). */
static inline const char *fuzz_write(char *path, size_t cap, const char *name, const void *data, size_t n) {
    snprintf(path, cap, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    fclose(f);
    return path;
}

/* An error must come with a message: a failing loader that says nothing is a finding too. */
static inline void fuzz_check_error(int rc) {
    if (rc == LOOM_OK) return;
    if (rc > 0 || rc < LOOM_ESTATE || !loom_errmsg() || !loom_errmsg()[0]) {
        fprintf(stderr, "loader failed with code %d and no message\n", rc);
        abort();
    }
}

#define fuzz_assert(c)                                                        \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "%s:%d: fuzz_assert(%s) failed\n", __FILE__, __LINE__, #c); \
            abort();                                                          \
        }                                                                     \
    } while (0)

/* Splits data at its first NUL byte: [0, *n1) and (*n1, n). Returns 0 when there is none. */
static inline int fuzz_split(const uint8_t *data, size_t n, size_t *n1) {
    const uint8_t *z = memchr(data, 0, n);
    if (!z) return 0;
    *n1 = (size_t)(z - data);
    return 1;
}

#endif
