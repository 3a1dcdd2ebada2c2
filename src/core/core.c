#include "loom/core.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static _Thread_local char err_msg[1024];

int loom_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg, sizeof err_msg, fmt, ap);
    va_end(ap);
    return code;
}

int loom_error_context(int code, const char *fmt, ...) {
    char prev[sizeof err_msg], ctx[512];
    memcpy(prev, err_msg, sizeof prev);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    if (prev[0])
        snprintf(err_msg, sizeof err_msg, "%s: %s", ctx, prev);
    else
        snprintf(err_msg, sizeof err_msg, "%s", ctx);
    return code;
}

const char *loom_errmsg(void) { return err_msg[0] ? err_msg : "no error"; }
void loom_clear_error(void) { err_msg[0] = 0; }

const char *loom_strerror(int code) {
    switch (code) {
    case LOOM_OK: return "ok";
    case LOOM_EINVAL: return "invalid argument";
    case LOOM_EIO: return "i/o error";
    case LOOM_ENOMEM: return "out of memory";
    case LOOM_EFORMAT: return "malformed input";
    case LOOM_EUNSUPPORTED: return "unsupported";
    case LOOM_ERANGE: return "out of range";
    case LOOM_ENOTFOUND: return "not found";
    case LOOM_ESTATE: return "wrong state";
    default: return "unknown error";
    }
}

static void default_log(int level, const char *msg, void *ud) {
    (void)ud;
    static const char *names[] = {"debug", "info", "warning", "error"};
    fprintf(stderr, "loom %s: %s\n", names[level < 0 ? 0 : level > 3 ? 3 : level], msg);
}
static loom_log_fn log_fn = default_log;
static void *log_ud;
static int log_min = LOOM_WARN;

void loom_set_log(loom_log_fn fn, void *ud, int min_level) {
    log_fn = fn ? fn : default_log;
    log_ud = ud;
    log_min = min_level;
}

void loom_log(int level, const char *fmt, ...) {
    if (level < log_min) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_ud);
}

void *loom_alloc(size_t n) {
    if (n == 0) n = 1;
    size_t rounded = (n + 63) & ~(size_t)63;
    if (rounded < n) {
        loom_error(LOOM_ENOMEM, "allocation of %zu bytes overflows", n);
        return NULL;
    }
    void *p = aligned_alloc(64, rounded);
    if (!p) loom_error(LOOM_ENOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

void *loom_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) {
        loom_error(LOOM_ENOMEM, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    void *p = loom_alloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void loom_free(void *p) { free(p); }

char *loom_strdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (!d) {
        loom_error(LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(d, s, n);
    return d;
}

int loom_strbuf_add(loom_strbuf *b, const char *data, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return loom_error(LOOM_ENOMEM, "out of memory (%zu bytes)", cap);
        b->s = p;
        b->cap = cap;
    }
    if (n) memcpy(b->s + b->n, data, n);
    b->n += n;
    b->s[b->n] = 0;
    return LOOM_OK;
}

int loom_map_file(const char *path, const uint8_t **base, size_t *size) {
    *base = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return loom_error(errno == ENOENT ? LOOM_ENOTFOUND : LOOM_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return loom_error(LOOM_EIO, "%s is not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    const uint8_t *b = (const uint8_t *)"";
    if (n) {
        void *m = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return loom_error(LOOM_EIO, "cannot map %s: %s", path, strerror(e));
        }
        b = m;
    }
    close(fd);
    *base = b;
    *size = n;
    return LOOM_OK;
}

void loom_unmap_file(const uint8_t *base, size_t size) {
    if (base && size) munmap((void *)base, size);
}

int loom_read_file(const char *path, char **data, size_t *len) {
    *data = NULL;
    if (len) *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return loom_error(errno == ENOENT ? LOOM_ENOTFOUND : LOOM_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return loom_error(LOOM_EIO, "%s is not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return loom_error(LOOM_ENOMEM, "out of memory reading %s (%zu bytes)", path, n);
    }
    if (n && fread(buf, 1, n, f) != n) {
        free(buf);
        fclose(f);
        return loom_error(LOOM_EIO, "short read on %s", path);
    }
    fclose(f);
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return LOOM_OK;
}

int loom_write_file_atomic(const char *path, const void *data, size_t len) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return loom_error(LOOM_EINVAL, "path too long: %s", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return loom_error(LOOM_EIO, "cannot create %s: %s", tmp, strerror(errno));
    if ((len && fwrite(data, 1, len, f) != len) || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        int e = errno;
        fclose(f);
        unlink(tmp);
        return loom_error(LOOM_EIO, "cannot write %s: %s", tmp, strerror(e));
    }
    if (fclose(f) != 0) {
        unlink(tmp);
        return loom_error(LOOM_EIO, "cannot close %s", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return loom_error(LOOM_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(e));
    }
    return LOOM_OK;
}

uint64_t loom_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t loom_hash2(uint64_t a, uint64_t b) { return loom_mix64(loom_mix64(a) ^ (b * 0xd6e8feb86659fd93ULL + 0x632be59bd9b4e019ULL)); }

void loom_rng_init(loom_rng *r, uint64_t seed, uint64_t stream) {
    r->key = loom_hash2(seed, stream);
    r->counter = 0;
    r->has_spare = 0;
    r->spare = 0;
}

/* Two rounds of mixing over (key, counter): a stateless function of the position. */
static inline uint64_t rng_at(uint64_t key, uint64_t counter) {
    uint64_t x = loom_mix64(key ^ loom_mix64(counter));
    return loom_mix64(x + key);
}

uint64_t loom_rng_u64(loom_rng *r) { return rng_at(r->key, r->counter++); }

uint32_t loom_rng_below(loom_rng *r, uint32_t n) {
    if (n <= 1) return 0;
    uint64_t threshold = ((uint64_t)1 << 32) % n; /* 2^32 mod n */
    for (;;) {
        uint64_t x = loom_rng_u64(r) >> 32;
        uint64_t m = x * n;
        if ((m & 0xffffffffULL) >= threshold) return (uint32_t)(m >> 32);
    }
}

double loom_rng_uniform(loom_rng *r) { return (double)(loom_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

double loom_rng_normal(loom_rng *r) {
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double u1, u2;
    do u1 = loom_rng_uniform(r); while (u1 <= 0.0);
    u2 = loom_rng_uniform(r);
    double rad = sqrt(-2.0 * log(u1));
    r->spare = rad * sin(2.0 * M_PI * u2);
    r->has_spare = 1;
    return rad * cos(2.0 * M_PI * u2);
}

/* Box-Muller on the uniforms at positions 2p and 2p+1: the pair loom_rng_normal draws p-th from a
 * fresh stream (cos first, then sin). A zero first uniform, which loom_rng_normal redraws, is replaced
 * by 2^-54 here so that every pair is a function of its position alone. */
static void normal_pair(uint64_t key, uint64_t p, double *c, double *s) {
    double u1 = (double)(rng_at(key, 2 * p) >> 11) * (1.0 / 9007199254740992.0);
    double u2 = (double)(rng_at(key, 2 * p + 1) >> 11) * (1.0 / 9007199254740992.0);
    if (u1 <= 0.0) u1 = 0x1p-54;
    double rad = sqrt(-2.0 * log(u1)), a = 2.0 * M_PI * u2;
    *c = rad * cos(a);
    *s = rad * sin(a);
}

float loom_rng_normal_at(uint64_t seed, uint64_t stream, uint64_t i) {
    double c, s;
    normal_pair(loom_hash2(seed, stream), i >> 1, &c, &s);
    return (float)(i & 1 ? s : c);
}

void loom_rng_normal_fill(uint64_t seed, uint64_t stream, uint64_t first, size_t n, float *out) {
    if (n == 0) return;
    const uint64_t key = loom_hash2(seed, stream);
    const uint64_t p0 = first >> 1, odd = first & 1, npairs = (odd + (uint64_t)n + 1) / 2;
    /* each element is a function of its index alone, so any split among threads gives the same values */
#pragma omp parallel for schedule(static) if (n >= 8192)
    for (uint64_t k = 0; k < npairs; k++) {
        double c, s;
        normal_pair(key, p0 + k, &c, &s); /* counters 2p, 2p+1 wrap modulo 2^64 as first + j does */
        uint64_t j = 2 * k; /* position of the pair's first element, counted from first - odd */
        if (j >= odd) out[j - odd] = (float)c;
        if (j + 1 - odd < (uint64_t)n) out[j + 1 - odd] = (float)s;
    }
}

void loom_rng_shuffle_u32(loom_rng *r, uint32_t *a, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = loom_rng_below(r, (uint32_t)i);
        uint32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

void loom_rng_draw_u32(loom_rng *r, uint32_t *a, size_t n, size_t k) {
    for (size_t i = 0; i < k && i < n; i++) {
        size_t j = i + loom_rng_below(r, (uint32_t)(n - i));
        uint32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

double loom_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t loom_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024;
}

int loom_threads(void) { return omp_get_max_threads(); }
void loom_set_threads(int n) {
    if (n > 0) omp_set_num_threads(n);
}
