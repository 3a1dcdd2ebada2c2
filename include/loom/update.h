/* The update message (fl/ layer): what a client sends back after a round, in memory and on the wire.
 *
 * In memory a loom_update points at decoded floats: the in-process simulator hands one to the round
 * engine without copying (include/loom/engine.h). A network transport encodes it into a byte buffer
 * with loom_update_encode and decodes it with loom_update_decode, under a size limit, before
 * submitting it the same way.
 *
 * Wire format: a safetensors file (include/loom/safetensors.h), the body of POST /v1/update
 * (docs/protocol.md). Its __metadata__ holds exactly these keys, every value a string:
 *   loom_update  "1" (the format version)
 *   run_id       the run, 1 to 16 hex digits (written as 16 lowercase digits)
 *   round        decimal, 0 .. 2^31-1 (1-based as in the metrics)
 *   version      decimal, 0 .. 2^64-1 (the global model version trained on; synchronous: round - 1)
 *   client       decimal, 0 .. 2^31-1
 *   examples     decimal, 1 .. 2^32-1 (the update's weight |D_n|)
 *   loss         "%.17g" of the mean local training loss (a finite double, round-trips exactly)
 *   tokens       decimal, 0 .. 2^63-1
 *   codec        "f32", "f16", "int8", "topk" or "seed_scalar"
 *   dim          decimal: the decoded length (the trainable vector's dim)
 *   chunk        int8 only: values per scale, 1 .. 2^31-1
 *   k            topk and seed_scalar only: kept coordinates, 0 .. dim
 * and exactly these tensors (all 1-dimensional):
 *   f32   update F32 [dim]
 *   f16   update F16 [dim]                 IEEE binary16, round to nearest even
 *   int8  update.q I8 [dim], update.scale F32 [ceil(dim / chunk)]
 *                                          value i = q[i] * scale[i / chunk]
 *   topk  update.index I32 [k] (ascending, distinct, < dim), update.value F32 [k]
 *                                          every other coordinate is 0
 *   seed_scalar  update.seed I32 [k] (ascending, distinct, < dim), update.scalar F32 [k]
 *                                          FedKSeed's per-seed scalar sums (include/loom/zo.h): dim is
 *                                          the seed pool's K; every other seed's scalar is 0
 *   control F32 [dim] (any codec)          SCAFFOLD's control-variate delta, only when there is one
 * Decimal fields are plain digits (no sign, no leading zeros, no spaces). Decoding checks all of it
 * and turns any codec into dim floats, so the round engine and the pipeline only see floats.
 *
 * Codecs (encode side):
 *   f32   lossless.
 *   f16   round to nearest even; a value beyond the float16 range (|v| >= 65520, which would become
 *         Inf) or non-finite is refused with a message (no silent saturation).
 *   int8  per chunk of `chunk` values: scale = max|v| / 127 (float), q = rint(v / scale) in
 *         [-127, 127]; an all-zero chunk has scale 0. |error| <= scale / 2 per value.
 *   topk  k = min(dim, max(1, ceil(frac * dim))) coordinates of largest |v| (ties: the lower index),
 *         sent as (index, f32 value) pairs: deterministic.
 * Lossy codecs refuse non-finite values (the lossless f32 codec carries them: the server refuses
 * them with its "non-finite value" verdict). Error feedback (a client keeps what compression lost
 * and adds it to its next update) is loom_client_compress in include/loom/fl.h.
 *   seed_scalar  lossless: the values that are not +0 as (index, value) pairs, ascending (a FedKSeed
 *         client's K-vector of per-seed scalar sums holds at most one non-zero per local step).
 */
#ifndef LOOM_UPDATE_H
#define LOOM_UPDATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LOOM_CODEC_F32 = 0,
    LOOM_CODEC_F16 = 1,
    LOOM_CODEC_INT8 = 2,
    LOOM_CODEC_TOPK = 3,
    LOOM_CODEC_SEED_SCALAR = 4, /* FedKSeed's (seed index, scalar) pairs */
} loom_codec;

#define LOOM_UPDATE_FORMAT 1        /* the loom_update metadata value */
#define LOOM_CODEC_CHUNK_DEFAULT 256
#define LOOM_CODEC_TOPK_DEFAULT 0.01

typedef struct {
    uint64_t run_id;
    int round;             /* 1-based */
    uint64_t version;      /* global model version trained on */
    int client;
    uint64_t examples;     /* weight */
    double loss;
    int64_t tokens;
    uint32_t codec;        /* LOOM_CODEC_* */
    size_t len;            /* decoded values */
    const float *values;   /* (len) the decoded payload */
    const float *control;  /* (len) optional control delta (scaffold), NULL when absent */
    uint64_t wire_bytes;   /* bytes the update took on the wire (0: not counted, the engine then
                              counts the f32 size); recorded in the client's row and the round */
} loom_update;

/* A client's evaluation report (in memory only for now). */
typedef struct {
    double loss_sum; /* token-weighted loss sum */
    long tokens;     /* tokens the loss is counted over */
    long correct;    /* right predictions (tokens for LM, examples for classification) */
    long count;      /* what accuracy is counted over: tokens (LM) or examples (classification) */
    long attack_hits;  /* a backdoor run (include/loom/sim.h): triggered test examples classified as the */
    long attack_count; /* target, of attack_count triggered ones (their true label is not the target); 0, 0 otherwise */
} loom_eval_result;

/* How an update is compressed on the wire (NULL everywhere = F32, lossless). */
typedef struct {
    loom_codec codec;   /* F32, F16, INT8 (per-chunk absmax scales), TOPK (largest |values|) */
    int chunk;          /* INT8: values per scale (0: LOOM_CODEC_CHUNK_DEFAULT) */
    double topk_frac;   /* TOPK: share of coordinates kept, in (0, 1] (0: LOOM_CODEC_TOPK_DEFAULT) */
} loom_codec_opts;

/* Parses a --compress value: "none" (or "f32"), "fp16" (or "f16"), "int8[:CHUNK]", "topk[:FRAC]"
 * into *o (defaults for what is not given). LOOM_EINVAL with a message naming --compress. */
int loom_codec_opts_parse(const char *spec, loom_codec_opts *o);
/* "f32", "f16", "int8", "topk" (the metadata names), "seed_scalar", or "?". */
const char *loom_codec_name(loom_codec c);
/* Coordinates a TOPK encoding of dim values keeps: min(dim, max(1, ceil(frac * dim))). */
size_t loom_codec_topk_k(size_t dim, double frac);

/* Bytes loom_update_encode produces for u with o (exact, computed without encoding the payload); 0
 * when u or o would be refused. The encoded message's codec is o's, not u->codec. */
size_t loom_update_encoded_size(const loom_update *u, const loom_codec_opts *o);
/* Encodes u with codec o (NULL: F32) into a new buffer *buf of *n bytes (release with free).
 * u->codec and u->wire_bytes are not read. Refused (LOOM_EINVAL, with a message): round or client
 * < 0, examples 0 or above 2^32-1, tokens < 0, non-finite loss, bad options; a lossy codec refuses
 * non-finite values and F16 values beyond its range (LOOM_ERANGE); TOPK needs dim < 2^31. */
int loom_update_encode(const loom_update *u, const loom_codec_opts *o, uint8_t **buf, size_t *n);
/* Decodes n bytes. max_len bounds the payload (the server's dim): a longer one is refused
 * (LOOM_ERANGE) before any payload is read. The values are decoded into values (max_len floats;
 * TOPK: zeros but at the kept indices) and, when the message has one, the control delta into control
 * (max_len floats; NULL refuses messages with a control delta); out's pointers point at those
 * buffers and out->codec is the message's codec. On an error out is zeroed and the buffers' contents
 * are unspecified. Errors (LOOM_EFORMAT unless said otherwise), each with a message starting "update
 * message": not a safetensors file, metadata missing, a key missing, extra or duplicated, a field
 * not a number or out of range (round or client above 2^31-1, examples 0 or above 2^32-1,
 * non-finite loss), another format version, dim above max_len (LOOM_ERANGE), an unknown codec
 * (LOOM_EUNSUPPORTED), a tensor missing, extra, or of the wrong dtype or shape, int8 chunk out of
 * range or a scale not finite and >= 0, topk k above dim or indices not ascending, distinct and
 * below dim, a control delta when control is NULL. Values themselves are not judged here (NaN in an
 * f32 payload is the pipeline's "non-finite value"). */
int loom_update_decode(const uint8_t *buf, size_t n, size_t max_len, loom_update *out, float *values, float *control);

#ifdef __cplusplus
}
#endif
#endif
