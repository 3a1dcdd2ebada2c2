/* The update message (fl/ layer): what a client sends back after a round, in memory and on the wire.
 *
 * In memory a loom_update points at decoded floats: the in-process simulator hands one to the round
 * engine without copying (include/loom/engine.h). A network transport encodes it into a byte buffer
 * with loom_update_encode and decodes it with loom_update_decode, under a size limit, before
 * submitting it the same way.
 *
 * Wire format, version 1. All integers little-endian, floats IEEE-754 binary32/64 little-endian:
 *   offset size  field
 *        0    4  magic "LMUP"
 *        4    4  u32 format version (1)
 *        8    8  u64 run_id       (names the run; a server refuses updates of another run)
 *       16    4  u32 round        (the round the task belongs to, 1-based as in the metrics)
 *       20    8  u64 version      (the global model version trained on; synchronous rounds: round - 1)
 *       28    4  u32 client       (client id, < 2^31)
 *       32    8  u64 examples     (the update's weight |D_n|, 1 .. 2^32-1)
 *       40    8  f64 loss         (mean local training loss)
 *       48    8  i64 tokens       (target tokens trained on)
 *       56    4  u32 codec        (LOOM_CODEC_*)
 *       60    4  u32 flags        (bit 0: a control delta follows the payload; other bits 0)
 *       64    8  u64 len          (values in the decoded payload = the trainable vector's dim)
 *       72    .  payload          (codec F32: len f32 values)
 *        .    .  control delta    (if flags bit 0: len f32 values)
 * The buffer must end exactly there. Codecs other than F32 are reserved slots: f16 (2 bytes a value),
 * int8 with a per-block scale, top-k (index, value pairs) and seed-scalar (zeroth-order clients: a
 * seed and one scalar per step, expanded by regenerating the perturbation) decode into floats in the
 * pipeline's decode stage (include/loom/pipeline.h); version 1 refuses them.
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
    LOOM_CODEC_F16 = 1,         /* reserved */
    LOOM_CODEC_INT8 = 2,        /* reserved */
    LOOM_CODEC_TOPK = 3,        /* reserved */
    LOOM_CODEC_SEED_SCALAR = 4, /* reserved */
} loom_codec;

#define LOOM_UPDATE_MAGIC "LMUP"
#define LOOM_UPDATE_FORMAT 1
#define LOOM_UPDATE_HEADER_BYTES 72

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
} loom_update;

/* A client's evaluation report (in memory only for now). */
typedef struct {
    double loss_sum; /* token-weighted loss sum */
    long tokens;     /* tokens the loss is counted over */
    long correct;    /* right predictions (tokens for LM, examples for classification) */
    long count;      /* what accuracy is counted over: tokens (LM) or examples (classification) */
} loom_eval_result;

/* How an update is compressed on the wire (NULL everywhere = F32, lossless). */
typedef struct {
    loom_codec codec;   /* F32, F16, INT8 (per-chunk absmax scales), TOPK (largest |values|) */
    int chunk;          /* INT8: values per scale (default 256) */
    double topk_frac;   /* TOPK: share of coordinates kept, in (0, 1] (default 0.01) */
} loom_codec_opts;

/* Bytes of the encoded message. */
size_t loom_update_encoded_size(const loom_update *u, const loom_codec_opts *o);
/* Encodes u with codec o (NULL: F32) into a new buffer *buf of *n bytes (release with free). */
int loom_update_encode(const loom_update *u, const loom_codec_opts *o, uint8_t **buf, size_t *n);
/* Decodes n bytes. max_len bounds the payload (the server's dim): a longer one is refused before any
 * copy. The values are copied into values (max_len floats) and, when the message has one, the control
 * delta into control (max_len floats; NULL refuses messages with a control delta); out's pointers
 * point at those buffers. Errors (LOOM_EFORMAT unless said otherwise), each with a message: buffer
 * shorter than the header, wrong magic, unknown format version, unknown flags, round or client above
 * 2^31-1, payload longer than max_len (LOOM_ERANGE), size not matching len, unsupported codec
 * (LOOM_EUNSUPPORTED). */
int loom_update_decode(const uint8_t *buf, size_t n, size_t max_len, loom_update *out, float *values, float *control);

#ifdef __cplusplus
}
#endif
#endif
