/* The update message: encode and decode (format in include/loom/update.h). */
#include "loom/update.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

size_t loom_update_encoded_size(const loom_update *u, const loom_codec_opts *o) {
    (void)o;
    return LOOM_UPDATE_HEADER_BYTES + u->len * 4 * (u->control ? 2 : 1);
}

static void put_floats(uint8_t *p, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        put32(p + 4 * i, b);
    }
}
static void get_floats(float *x, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t b = get32(p + 4 * i);
        memcpy(&x[i], &b, 4);
    }
}

int loom_update_encode(const loom_update *u, const loom_codec_opts *o, uint8_t **buf, size_t *n) {
    if (o && o->codec != LOOM_CODEC_F32) return loom_error(LOOM_EUNSUPPORTED, "update codec %u cannot be encoded yet", o->codec);
    *buf = NULL;
    *n = 0;
    if (u->codec != LOOM_CODEC_F32) return loom_error(LOOM_EUNSUPPORTED, "update codec %u cannot be encoded yet", u->codec);
    if (u->round < 0 || u->client < 0) return loom_error(LOOM_EINVAL, "update round and client must be >= 0");
    if (u->len > ((size_t)SIZE_MAX - LOOM_UPDATE_HEADER_BYTES) / 8) return loom_error(LOOM_ERANGE, "update too long");
    if (u->len && !u->values) return loom_error(LOOM_EINVAL, "update without values");
    size_t size = loom_update_encoded_size(u, o);
    uint8_t *b = malloc(size);
    if (!b) return loom_error(LOOM_ENOMEM, "out of memory for an update of %zu bytes", size);
    uint64_t lb;
    memcpy(b, LOOM_UPDATE_MAGIC, 4);
    put32(b + 4, LOOM_UPDATE_FORMAT);
    put64(b + 8, u->run_id);
    put32(b + 16, (uint32_t)u->round);
    put64(b + 20, u->version);
    put32(b + 28, (uint32_t)u->client);
    put64(b + 32, u->examples);
    memcpy(&lb, &u->loss, 8);
    put64(b + 40, lb);
    put64(b + 48, (uint64_t)u->tokens);
    put32(b + 56, u->codec);
    put32(b + 60, u->control ? 1u : 0u);
    put64(b + 64, (uint64_t)u->len);
    put_floats(b + LOOM_UPDATE_HEADER_BYTES, u->values, u->len);
    if (u->control) put_floats(b + LOOM_UPDATE_HEADER_BYTES + 4 * u->len, u->control, u->len);
    *buf = b;
    *n = size;
    return LOOM_OK;
}

int loom_update_decode(const uint8_t *buf, size_t n, size_t max_len, loom_update *out, float *values, float *control) {
    memset(out, 0, sizeof *out);
    if (!buf || n < LOOM_UPDATE_HEADER_BYTES)
        return loom_error(LOOM_EFORMAT, "update message of %zu bytes is shorter than its %d-byte header", buf ? n : 0,
                          LOOM_UPDATE_HEADER_BYTES);
    if (memcmp(buf, LOOM_UPDATE_MAGIC, 4) != 0) return loom_error(LOOM_EFORMAT, "not an update message (bad magic)");
    uint32_t ver = get32(buf + 4);
    if (ver != LOOM_UPDATE_FORMAT)
        return loom_error(LOOM_EFORMAT, "update message format %u is not supported (this build reads %d)", ver,
                          LOOM_UPDATE_FORMAT);
    uint32_t round = get32(buf + 16), client = get32(buf + 28), codec = get32(buf + 56), flags = get32(buf + 60);
    uint64_t len = get64(buf + 64), lb = get64(buf + 40);
    if (round > INT_MAX || client > INT_MAX)
        return loom_error(LOOM_EFORMAT, "update message: round %u or client %u above 2^31-1", round, client);
    if (flags & ~1u) return loom_error(LOOM_EFORMAT, "update message: unknown flags 0x%x", flags);
    if (codec != LOOM_CODEC_F32) return loom_error(LOOM_EUNSUPPORTED, "update message: codec %u is not supported", codec);
    if (len > max_len)
        return loom_error(LOOM_ERANGE, "update message: payload of %llu values exceeds the limit of %zu",
                          (unsigned long long)len, max_len);
    int has_control = (flags & 1u) != 0;
    size_t want = LOOM_UPDATE_HEADER_BYTES + (size_t)len * 4 * (has_control ? 2 : 1);
    if (n != want)
        return loom_error(LOOM_EFORMAT, "update message has %zu bytes, its header announces %zu", n, want);
    if (len && !values) return loom_error(LOOM_EINVAL, "update message: no buffer for the values");
    if (has_control && !control) return loom_error(LOOM_EFORMAT, "update message carries an unexpected control delta");
    out->run_id = get64(buf + 8);
    out->round = (int)round;
    out->version = get64(buf + 20);
    out->client = (int)client;
    out->examples = get64(buf + 32);
    memcpy(&out->loss, &lb, 8);
    out->tokens = (int64_t)get64(buf + 48);
    out->codec = codec;
    out->len = (size_t)len;
    get_floats(values, buf + LOOM_UPDATE_HEADER_BYTES, (size_t)len);
    out->values = values;
    if (has_control) {
        get_floats(control, buf + LOOM_UPDATE_HEADER_BYTES + 4 * (size_t)len, (size_t)len);
        out->control = control;
    }
    return LOOM_OK;
}
