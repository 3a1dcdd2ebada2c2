/* loom core: status codes, error messages, logging, counter-based RNG, small helpers.
 *
 * Error convention (every module): a function that can fail returns an int status, LOOM_OK (0) on
 * success or a negative LOOM_E* code, and records a human-readable message for the calling thread,
 * read back with loom_errmsg(). Library code never prints to stdout and never exits.
 *
 *     if (loom_model_load(&m, dir) != LOOM_OK) { fprintf(stderr, "loom: %s\n", loom_errmsg()); ... }
 */
#ifndef LOOM_CORE_H
#define LOOM_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#include "loom/streams.h" /* the registry of random-stream ids */

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LOOM_OK = 0,
    LOOM_EINVAL = -1,      /* invalid argument or configuration */
    LOOM_EIO = -2,         /* file or stream could not be read/written */
    LOOM_ENOMEM = -3,      /* allocation failed */
    LOOM_EFORMAT = -4,     /* malformed input file or data */
    LOOM_EUNSUPPORTED = -5,/* valid, but not supported by loom */
    LOOM_ERANGE = -6,      /* value out of range */
    LOOM_ENOTFOUND = -7,   /* missing file, tensor, key */
    LOOM_ESTATE = -8,      /* call made in the wrong state */
};

/* Records a printf-style message for this thread and returns `code` (so `return loom_error(...)`). */
int loom_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with more context: "context: previous message"; returns `code`. */
int loom_error_context(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *loom_errmsg(void);
const char *loom_strerror(int code);
void loom_clear_error(void);

/* Logging. The library logs through a replaceable sink; the default writes warnings and errors to
 * stderr. Levels: 0 debug, 1 info, 2 warn, 3 error. */
typedef void (*loom_log_fn)(int level, const char *msg, void *ud);
void loom_set_log(loom_log_fn fn, void *ud, int min_level);
void loom_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOOM_DEBUG 0
#define LOOM_INFO 1
#define LOOM_WARN 2
#define LOOM_ERROR 3

/* Allocation: NULL on failure with the error recorded; sizes are overflow-checked.
 * loom_alloc returns 64-byte aligned memory; release with loom_free. */
void *loom_alloc(size_t n);               /* uninitialised */
void *loom_calloc(size_t count, size_t size); /* zeroed, aligned */
void loom_free(void *p);
char *loom_strdup(const char *s);

/* Growable NUL-terminated byte string: start from {0}; release s with free(). */
typedef struct {
    char *s;
    size_t n, cap;
} loom_strbuf;
/* Appends n bytes (keeps a NUL after them); LOOM_OK or LOOM_ENOMEM. */
int loom_strbuf_add(loom_strbuf *b, const char *data, size_t n);

/* Whole-file read (adds a NUL after the data, not counted in *len). */
int loom_read_file(const char *path, char **data, size_t *len);
/* Read-only map of a whole regular file: *base = its bytes (a non-NULL empty string for an empty file),
 * *size = its length. LOOM_ENOTFOUND / LOOM_EIO with a message naming path. loom_unmap_file undoes it. */
int loom_map_file(const char *path, const uint8_t **base, size_t *size);
void loom_unmap_file(const uint8_t *base, size_t size);
/* Atomic write: writes path.tmp.<pid> then renames over path. */
int loom_write_file_atomic(const char *path, const void *data, size_t len);

/* Counter-based random numbers: a (seed, stream) pair names an independent, reproducible stream;
 * drawing from one stream never disturbs another, so results do not depend on thread scheduling. */
typedef struct {
    uint64_t key;     /* derived from (seed, stream) */
    uint64_t counter; /* next position in the stream */
    int has_spare;
    double spare;
} loom_rng;

uint64_t loom_mix64(uint64_t x);                    /* splitmix64 finaliser */
uint64_t loom_hash2(uint64_t a, uint64_t b);        /* hash of a pair, for deriving stream ids */
void loom_rng_init(loom_rng *r, uint64_t seed, uint64_t stream);
uint64_t loom_rng_u64(loom_rng *r);
uint32_t loom_rng_below(loom_rng *r, uint32_t n);   /* uniform in [0, n), unbiased */
double loom_rng_uniform(loom_rng *r);               /* uniform in [0, 1) with 53 bits */
double loom_rng_normal(loom_rng *r);                /* standard normal (Box-Muller, keeps the pair's second value) */
/* Element i of the standard-normal stream (seed, stream), computed directly from i with no state: the
 * same float as the i-th (float)loom_rng_normal of a fresh loom_rng_init(seed, stream) (which draws
 * nothing else), except after a zero uniform (probability 2^-53 per pair), which loom_rng_normal redraws.
 * For perturbations and noise that must be regenerated from a seed (zeroth-order and seed-based updates,
 * differential-privacy noise). */
float loom_rng_normal_at(uint64_t seed, uint64_t stream, uint64_t i);
/* out[j] = loom_rng_normal_at(seed, stream, first + j) for j < n, in parallel; the values do not depend
 * on the number of threads. */
void loom_rng_normal_fill(uint64_t seed, uint64_t stream, uint64_t first, size_t n, float *out);
void loom_rng_shuffle_u32(loom_rng *r, uint32_t *a, size_t n);
/* The first k places of a Fisher-Yates shuffle of a[0..n) (k <= n): a[0..k) becomes a uniform draw of
 * k of the n values without replacement, in draw order (for i < k: swap a[i], a[i + below(n - i)]). */
void loom_rng_draw_u32(loom_rng *r, uint32_t *a, size_t n, size_t k);

/* SHA-256 (FIPS 180-4), for content hashes on the wire (global model, base model, updates) and
 * token hashes. Streaming: init, update any number of times, final. */
typedef struct {
    uint32_t h[8];
    uint64_t len;    /* bytes hashed so far */
    uint8_t buf[64];
    size_t n;        /* bytes in buf */
} loom_sha256;
void loom_sha256_init(loom_sha256 *s);
void loom_sha256_update(loom_sha256 *s, const void *data, size_t n);
void loom_sha256_final(loom_sha256 *s, uint8_t out[32]);
/* One buffer: out[65] receives the lowercase hex digest. */
void loom_sha256_hex(const void *data, size_t n, char out[65]);
void loom_hex(const uint8_t *bytes, size_t n, char *out); /* 2n+1 chars, lowercase */
/* The hex digest of a file (read in chunks). */
int loom_sha256_file(const char *path, char out[65]);

/* Monotonic wall clock in seconds. */
double loom_now(void);
/* Peak resident set size of this process in bytes (0 if unknown). */
size_t loom_peak_rss(void);
/* Number of threads kernels use (OpenMP max threads). */
int loom_threads(void);
void loom_set_threads(int n);

#define LOOM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LOOM_MAX(a, b) ((a) > (b) ? (a) : (b))

#ifdef __cplusplus
}
#endif
#endif
