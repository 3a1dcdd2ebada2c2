/* Update codecs on the wire (f32, f16, int8, top-k), the message checks, and error feedback
 * (loom_client_compress). Expected values come from the safetensors reader (the message read as a
 * plain file), the half-precision module, brute-force sorting and the error bounds of each codec. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/engine.h"
#include "loom/fl.h"
#include "loom/half.h"
#include "loom/model.h"
#include "loom/partition.h"
#include "loom/safetensors.h"
#include "loom/sim.h"
#include "loom/tokenizer.h"
#include "loom/train.h"
#include "loom/update.h"
#include "model/model_impl.h"
#include "test.h"

static void fill(float *v, size_t n, uint64_t seed, double scale) {
    loom_rng r;
    loom_rng_init(&r, seed, 7);
    for (size_t i = 0; i < n; i++) v[i] = (float)(scale * loom_rng_normal(&r));
}

static loom_update make(const float *v, size_t n, const float *control) {
    loom_update u = {0x0123456789abcdefULL, 12, 11, 3, 4000000000ULL, 0.1 + 0.2, 123456789, LOOM_CODEC_F32, n, v,
                     control, 0};
    return u;
}

/* ---- round trips and the layout ---- */

static void round_trips(void) {
    enum { D = 1000 };
    static float v[D], c[D], out[D], oc[D];
    fill(v, D, 1, 0.01);
    fill(c, D, 2, 1.0);
    v[17] = 0;
    const loom_codec codecs[] = {LOOM_CODEC_F32, LOOM_CODEC_F16, LOOM_CODEC_INT8, LOOM_CODEC_TOPK};
    for (int ci = 0; ci < 4; ci++)
        for (int ctl = 0; ctl < 2; ctl++) {
            loom_codec_opts o = {codecs[ci], 64, 0.05};
            loom_update u = make(v, D, ctl ? c : NULL);
            uint8_t *buf;
            size_t n;
            CHECK_OK(loom_update_encode(&u, &o, &buf, &n));
            CHECK(n == loom_update_encoded_size(&u, &o), "%s: size %zu, announced %zu", loom_codec_name(o.codec), n,
                  loom_update_encoded_size(&u, &o));
            loom_update d;
            CHECK_OK(loom_update_decode(buf, n, D, &d, out, oc));
            CHECK(d.run_id == u.run_id && d.round == 12 && d.version == 11 && d.client == 3 &&
                      d.examples == 4000000000ULL && d.loss == 0.1 + 0.2 && d.tokens == 123456789 && d.len == D &&
                      d.codec == o.codec && d.values == out && d.wire_bytes == n,
                  "%s: fields round-trip", loom_codec_name(o.codec));
            CHECK(ctl ? d.control == oc && !memcmp(oc, c, sizeof c) : d.control == NULL, "%s: control %d",
                  loom_codec_name(o.codec), ctl);
            /* the message as a plain safetensors file */
            loom_st_file *f;
            CHECK_OK(loom_st_open_memory(&f, buf, n, "msg"));
            CHECK(!strcmp(loom_st_meta(f, "codec"), loom_codec_name(o.codec)) && !strcmp(loom_st_meta(f, "dim"), "1000") &&
                      !strcmp(loom_st_meta(f, "loss"), "0.30000000000000004") &&
                      !strcmp(loom_st_meta(f, "examples"), "4000000000"),
                  "metadata as written");
            size_t want_tensors = (o.codec == LOOM_CODEC_F32 || o.codec == LOOM_CODEC_F16 ? 1 : 2) + ctl;
            CHECK(loom_st_count(f) == want_tensors, "%zu tensors", loom_st_count(f));
            if (o.codec == LOOM_CODEC_F32) {
                CHECK(!memcmp(out, v, sizeof v), "f32 bit-exact");
                CHECK(n == loom_update_encoded_size(&u, NULL), "f32 size = default size");
            } else if (o.codec == LOOM_CODEC_F16) {
                const loom_st_tensor *t = loom_st_find(f, "update");
                CHECK(t && t->dtype == LOOM_DT_F16 && t->numel == D, "f16 tensor");
                int bad = 0;
                for (size_t i = 0; i < D; i++) {
                    float ref = loom_f16_to_f32(loom_f32_to_f16(v[i])); /* the half module, nearest even */
                    double err = fabs((double)out[i] - v[i]), bound = fmax(fabs(v[i]) * 0x1p-11, 0x1p-25);
                    bad += memcmp(&ref, &out[i], 4) != 0 || err > bound;
                }
                CHECK(bad == 0, "f16: %d values off the nearest-even value or its 2^-11 bound", bad);
            } else if (o.codec == LOOM_CODEC_INT8) {
                const loom_st_tensor *q = loom_st_find(f, "update.q"), *s = loom_st_find(f, "update.scale");
                CHECK(q && s && q->dtype == LOOM_DT_I8 && q->numel == D && s->dtype == LOOM_DT_F32 &&
                          s->numel == (D + 63) / 64 && !strcmp(loom_st_meta(f, "chunk"), "64"),
                      "int8 tensors");
                float sc[(D + 63) / 64];
                if (s) loom_st_to_f32(s, sc, s->numel);
                int bad = 0;
                for (size_t b = 0; b < D; b += 64) {
                    double amax = 0;
                    for (size_t i = b; i < b + 64 && i < D; i++) amax = fmax(amax, fabs(v[i]));
                    float scale = sc[b / 64];
                    bad += fabs(scale - amax / 127) > amax * 1e-6;
                    for (size_t i = b; i < b + 64 && i < D; i++)
                        bad += fabs((double)out[i] - v[i]) > scale / 2.0 * (1 + 1e-6) + fabs(v[i]) * 0x1p-23;
                }
                CHECK(bad == 0, "int8: %d scales or values outside scale/2", bad);
            } else {
                const loom_st_tensor *ix = loom_st_find(f, "update.index");
                size_t k = 50; /* ceil(0.05 * 1000) */
                CHECK(ix && ix->dtype == LOOM_DT_I32 && ix->numel == k && !strcmp(loom_st_meta(f, "k"), "50"),
                      "topk: k = %zu", ix ? ix->numel : 0);
                /* the k largest |v| by brute force: count values strictly above each kept one */
                int bad = 0, kept = 0;
                float minkept = INFINITY, maxdropped = 0;
                for (size_t i = 0; i < D; i++) {
                    if (out[i] != 0) {
                        kept++;
                        bad += out[i] != v[i];
                        minkept = fminf(minkept, fabsf(v[i]));
                    } else maxdropped = fmaxf(maxdropped, fabsf(v[i]));
                }
                CHECK(kept == (int)k && bad == 0 && minkept >= maxdropped,
                      "topk keeps exactly %zu of the largest (kept %d, %d changed, min kept %g, max dropped %g)", k,
                      kept, bad, minkept, maxdropped);
            }
            loom_st_close(f);
            free(buf);
        }
}

/* Ties: |v| equal everywhere, top-k keeps the lowest indices; an all-zero int8 chunk has scale 0. */
static void ties_and_zeros(void) {
    float v[10] = {1, -1, 1, -1, 1, -1, 1, -1, 1, -1}, out[10];
    loom_codec_opts o = {LOOM_CODEC_TOPK, 0, 0.3};
    loom_update u = make(v, 10, NULL);
    uint8_t *buf;
    size_t n;
    loom_update d;
    CHECK_OK(loom_update_encode(&u, &o, &buf, &n));
    CHECK_OK(loom_update_decode(buf, n, 10, &d, out, NULL));
    CHECK(out[0] == 1 && out[1] == -1 && out[2] == 1 && out[3] == 0 && out[9] == 0, "ties go to the lower index");
    free(buf);
    /* a larger value late in the vector wins over earlier ties */
    v[8] = 2;
    CHECK_OK(loom_update_encode(&u, &o, &buf, &n));
    CHECK_OK(loom_update_decode(buf, n, 10, &d, out, NULL));
    CHECK(out[8] == 2 && out[0] == 1 && out[1] == -1 && out[2] == 0, "largest first, then ties by index");
    free(buf);
    /* k: max(1, ceil(frac dim)) */
    CHECK(loom_codec_topk_k(1000, 0.0001) == 1 && loom_codec_topk_k(1000, 0.0011) == 2 &&
              loom_codec_topk_k(10, 1) == 10 && loom_codec_topk_k(0, 0.5) == 0,
          "k sizes");
    float z[6] = {0, 0, 0, 0.5f, -1.0f, 0.25f};
    loom_codec_opts q = {LOOM_CODEC_INT8, 3, 0};
    u = make(z, 6, NULL);
    CHECK_OK(loom_update_encode(&u, &q, &buf, &n));
    loom_st_file *f;
    CHECK_OK(loom_st_open_memory(&f, buf, n, "msg"));
    float sc[2] = {-1, -1};
    const loom_st_tensor *s = loom_st_find(f, "update.scale");
    CHECK(s && loom_st_to_f32(s, sc, 2) == LOOM_OK && sc[0] == 0 && sc[1] == 1.0f / 127, "scales %g %g", sc[0], sc[1]);
    loom_st_close(f);
    CHECK_OK(loom_update_decode(buf, n, 6, &d, out, NULL));
    CHECK(out[0] == 0 && out[2] == 0 && out[4] == -1.0f && fabsf(out[3] - 0.5f) <= 0.5f / 127, "int8 values");
    free(buf);
}

/* The top-k choice against a brute-force ranking (qsort by |v| descending, then index), on values
 * with many ties, for k from 1 to dim. */
static const float *rank_v;
static int by_rank(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    float x = fabsf(rank_v[i]), y = fabsf(rank_v[j]);
    return x > y ? -1 : x < y ? 1 : i - j;
}

static void topk_brute_force(void) {
    enum { D = 257 };
    static float v[D], out[D];
    static int order[D];
    loom_rng r;
    loom_rng_init(&r, 3, 3);
    for (int i = 0; i < D; i++) v[i] = (float)((int)loom_rng_below(&r, 9) - 4) / 4; /* 9 levels: ties */
    for (int i = 0; i < D; i++) order[i] = i;
    rank_v = v;
    qsort(order, D, sizeof *order, by_rank);
    const size_t ks[] = {1, 2, 3, 50, 128, 200, 256, 257};
    int bad = 0;
    for (int t = 0; t < 8; t++) {
        size_t k = ks[t];
        loom_codec_opts o = {LOOM_CODEC_TOPK, 0, (double)k / D};
        loom_update u = make(v, D, NULL);
        uint8_t *buf;
        size_t n;
        loom_update d;
        if (loom_update_encode(&u, &o, &buf, &n) != LOOM_OK) {
            bad++;
            continue;
        }
        loom_st_file *f;
        int32_t idx[D];
        int got = 0;
        if (loom_st_open_memory(&f, buf, n, "msg") == LOOM_OK) {
            const loom_st_tensor *ix = loom_st_find(f, "update.index");
            if (ix && ix->numel == k && loom_st_to_i32(ix, idx, k) == LOOM_OK) got = 1;
            loom_st_close(f);
        }
        /* the kept set is the first k of the ranking, listed in ascending index order */
        static char want[D];
        memset(want, 0, sizeof want);
        for (size_t i = 0; i < k; i++) want[order[i]] = 1;
        for (size_t j = 0; got && j < k; j++) bad += !want[idx[j]] || (j > 0 && idx[j] <= idx[j - 1]);
        bad += !got;
        if (loom_update_decode(buf, n, D, &d, out, NULL) == LOOM_OK)
            for (int i = 0; i < D; i++) bad += out[i] != (want[i] ? v[i] : 0.0f);
        free(buf);
    }
    CHECK(bad == 0, "top-k equals the brute-force ranking for every k (%d differences)", bad);
}

/* ---- refusals ---- */

typedef struct {
    const char *k, *v;
} kv;

/* A message built by the general writer: base metadata with overrides (value NULL drops the key),
 * then tensors. */
typedef struct {
    const char *name;
    loom_dtype dt;
    int64_t n;
    const void *data;
} tdesc;

static int build(const kv *over, int nover, const tdesc *t, int nt, void **b, size_t *n) {
    kv base[] = {{"loom_update", "1"}, {"run_id", "ab"}, {"round", "1"}, {"version", "0"}, {"client", "0"},
                 {"examples", "5"},    {"loss", "1.5"}, {"tokens", "0"}, {"codec", "f32"}, {"dim", "4"}};
    loom_st_writer *w;
    loom_st_writer_create(&w);
    for (int i = 0; i < 10; i++) {
        const char *v = base[i].v;
        int drop = 0;
        for (int j = 0; j < nover; j++)
            if (!strcmp(over[j].k, base[i].k)) {
                if (over[j].v) v = over[j].v;
                else drop = 1;
            }
        if (!drop) loom_st_writer_meta(w, base[i].k, v);
    }
    for (int j = 0; j < nover; j++) {
        int known = 0;
        for (int i = 0; i < 10; i++) known |= !strcmp(over[j].k, base[i].k);
        if (!known && over[j].v) loom_st_writer_meta(w, over[j].k, over[j].v);
    }
    for (int i = 0; i < nt; i++) {
        int64_t sh[1] = {t[i].n};
        loom_st_writer_add(w, t[i].name, t[i].dt, 1, sh, t[i].data);
    }
    int rc = loom_st_writer_serialize(w, b, n);
    loom_st_writer_free(w);
    return rc;
}

static void refused(const kv *over, int nover, const tdesc *t, int nt, int want_rc, const char *want_msg,
                    const char *what) {
    void *b;
    size_t n;
    if (build(over, nover, t, nt, &b, &n) != LOOM_OK) {
        CHECK(0, "%s: cannot build: %s", what, loom_errmsg());
        return;
    }
    float vals[8], ctl[8];
    loom_update d;
    int rc = loom_update_decode(b, n, 8, &d, vals, ctl);
    if (want_rc == LOOM_OK)
        CHECK(rc == LOOM_OK && d.len == 4 && d.values == vals, "%s: rc %d: %s", what, rc, loom_errmsg());
    else
        CHECK(rc == want_rc && strstr(loom_errmsg(), want_msg) && d.len == 0 && d.values == NULL,
              "%s: rc %d (want %d), message: %s", what, rc, want_rc, loom_errmsg());
    loom_free(b);
}

static void refusals(void) {
    static const float f4[4] = {1, 2, 3, 4}, f8[8] = {0};
    static const uint16_t h4[4] = {0x3c00, 0, 0, 0};
    static const int8_t q4[4] = {1, -1, 127, -127};
    const tdesc upd = {"update", LOOM_DT_F32, 4, f4};
    /* the base message decodes: the refusals below come from the one change each makes */
    refused(NULL, 0, &upd, 1, LOOM_OK, "", "the base message");
    float vals[8];
    loom_update d;
    const uint8_t junk[40] = "this is not a safetensors file at all..";
    CHECK(loom_update_decode(junk, sizeof junk, 8, &d, vals, NULL) == LOOM_EFORMAT &&
              strstr(loom_errmsg(), "not a safetensors"),
          "garbage: %s", loom_errmsg());
    CHECK(loom_update_decode(NULL, 0, 8, &d, vals, NULL) == LOOM_EFORMAT, "NULL buffer");

    /* metadata */
    refused((kv[]){{"examples", NULL}}, 1, &upd, 1, LOOM_EFORMAT, "'examples' is missing", "missing key");
    refused((kv[]){{"loom_update", NULL}}, 1, &upd, 1, LOOM_EFORMAT, "no loom_update", "not an update");
    refused((kv[]){{"colour", "red"}}, 1, &upd, 1, LOOM_EFORMAT, "unexpected metadata key 'colour'", "extra key");
    refused((kv[]){{"k", "2"}}, 1, &upd, 1, LOOM_EFORMAT, "unexpected metadata key 'k'", "a topk key on f32");
    refused((kv[]){{"loom_update", "2"}}, 1, &upd, 1, LOOM_EFORMAT, "format 2", "future format");
    refused((kv[]){{"codec", "zstd"}}, 1, &upd, 1, LOOM_EUNSUPPORTED, "codec 'zstd'", "unknown codec");
    refused((kv[]){{"round", "7x"}}, 1, &upd, 1, LOOM_EFORMAT, "round '7x'", "non-numeric round");
    refused((kv[]){{"round", "-1"}}, 1, &upd, 1, LOOM_EFORMAT, "round '-1'", "negative round");
    refused((kv[]){{"round", "07"}}, 1, &upd, 1, LOOM_EFORMAT, "round '07'", "leading zero");
    refused((kv[]){{"round", "2147483648"}}, 1, &upd, 1, LOOM_EFORMAT, "round", "round 2^31");
    refused((kv[]){{"client", "2147483648"}}, 1, &upd, 1, LOOM_EFORMAT, "client '2147483648'", "client 2^31");
    refused((kv[]){{"client", "2147483647"}}, 1, &upd, 1, LOOM_OK, "", "client 2^31-1");
    refused((kv[]){{"examples", "0"}}, 1, &upd, 1, LOOM_EFORMAT, "examples '0'", "examples 0");
    refused((kv[]){{"examples", "4294967296"}}, 1, &upd, 1, LOOM_EFORMAT, "examples", "examples 2^32");
    refused((kv[]){{"examples", "4294967295"}}, 1, &upd, 1, LOOM_OK, "", "examples 2^32-1");
    refused((kv[]){{"loss", "nan"}}, 1, &upd, 1, LOOM_EFORMAT, "loss 'nan'", "NaN loss");
    refused((kv[]){{"loss", "1e999"}}, 1, &upd, 1, LOOM_EFORMAT, "loss", "infinite loss");
    refused((kv[]){{"loss", " 1"}}, 1, &upd, 1, LOOM_EFORMAT, "loss", "loss with a space");
    refused((kv[]){{"run_id", "xyz"}}, 1, &upd, 1, LOOM_EFORMAT, "run_id", "run id not hex");
    refused((kv[]){{"run_id", "00000000000000001"}}, 1, &upd, 1, LOOM_EFORMAT, "run_id", "run id of 17 digits");
    refused((kv[]){{"tokens", "9223372036854775808"}}, 1, &upd, 1, LOOM_EFORMAT, "tokens", "tokens 2^63");
    refused((kv[]){{"version", "18446744073709551616"}}, 1, &upd, 1, LOOM_EFORMAT, "version", "version 2^64");
    refused((kv[]){{"dim", "9"}}, 1, &upd, 1, LOOM_ERANGE, "exceeds the limit of 8", "dim above max_len");
    refused((kv[]){{"dim", "99999999999999999999"}}, 1, &upd, 1, LOOM_EFORMAT, "dim", "dim above 2^64");

    /* a duplicated key, written by hand (the writer cannot) */
    const char *hdr = "{\"__metadata__\":{\"loom_update\":\"1\",\"run_id\":\"1\",\"round\":\"1\",\"round\":\"2\","
                      "\"version\":\"0\",\"client\":\"0\",\"examples\":\"1\",\"loss\":\"1\",\"tokens\":\"0\","
                      "\"codec\":\"f32\",\"dim\":\"0\"},\"update\":{\"dtype\":\"F32\",\"shape\":[0],"
                      "\"data_offsets\":[0,0]}}";
    size_t hl = strlen(hdr);
    uint8_t *m = malloc(8 + hl);
    for (int i = 0; i < 8; i++) m[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(m + 8, hdr, hl);
    CHECK(loom_update_decode(m, 8 + hl, 8, &d, vals, NULL) == LOOM_EFORMAT && strstr(loom_errmsg(), "duplicate"),
          "duplicated key: %s", loom_errmsg());
    free(m);

    /* tensors */
    refused(NULL, 0, NULL, 0, LOOM_EFORMAT, "tensor 'update' is missing", "no tensor");
    refused(NULL, 0, (tdesc[]){{"update", LOOM_DT_F16, 4, h4}}, 1, LOOM_EFORMAT, "must be F32 [4]", "f16 data as f32");
    refused(NULL, 0, (tdesc[]){{"update", LOOM_DT_F32, 3, f4}}, 1, LOOM_EFORMAT, "must be F32 [4]", "short update");
    refused(NULL, 0, (tdesc[]){upd, {"bias", LOOM_DT_F32, 4, f4}}, 2, LOOM_EFORMAT, "unexpected tensor 'bias'",
            "extra tensor");
    refused(NULL, 0, (tdesc[]){upd, {"control", LOOM_DT_F32, 3, f4}}, 2, LOOM_EFORMAT, "'control' must be F32 [4]",
            "short control");
    refused(NULL, 0, (tdesc[]){upd, {"control", LOOM_DT_F32, 4, f4}}, 2, LOOM_OK, "", "control accepted");
    void *b;
    size_t n;
    CHECK_OK(build(NULL, 0, (tdesc[]){upd, {"control", LOOM_DT_F32, 4, f4}}, 2, &b, &n));
    CHECK(loom_update_decode(b, n, 8, &d, vals, NULL) == LOOM_EFORMAT && strstr(loom_errmsg(), "control"),
          "control without a buffer: %s", loom_errmsg());
    loom_free(b);
    refused((kv[]){{"codec", "f16"}}, 1, &upd, 1, LOOM_EFORMAT, "must be F16 [4]", "f32 data as f16");
    refused((kv[]){{"codec", "f16"}}, 1, (tdesc[]){{"update", LOOM_DT_F16, 4, h4}}, 1, LOOM_OK, "", "f16 accepted");

    /* int8 */
    const float sc2[2] = {0.5f, 1}, nan2[2] = {0.5f, NAN}, neg2[2] = {-0.5f, 1};
    const kv i8[] = {{"codec", "int8"}, {"chunk", "2"}};
    tdesc it[] = {{"update.q", LOOM_DT_I8, 4, q4}, {"update.scale", LOOM_DT_F32, 2, sc2}};
    refused(i8, 2, it, 2, LOOM_OK, "", "int8 accepted");
    refused((kv[]){{"codec", "int8"}}, 1, it, 2, LOOM_EFORMAT, "'chunk' is missing", "int8 without chunk");
    refused((kv[]){{"codec", "int8"}, {"chunk", "0"}}, 2, it, 2, LOOM_EFORMAT, "chunk '0'", "chunk 0");
    refused((kv[]){{"codec", "int8"}, {"chunk", "-2"}}, 2, it, 2, LOOM_EFORMAT, "chunk", "negative chunk");
    refused((kv[]){{"codec", "int8"}, {"chunk", "3"}}, 2, it, 2, LOOM_OK, "", "chunk 3: two scales");
    refused((kv[]){{"codec", "int8"}, {"chunk", "1"}}, 2, it, 2, LOOM_EFORMAT, "'update.scale' must be F32 [4]",
            "chunk 1 needs 4 scales");
    refused(i8, 2, (tdesc[]){it[0], {"update.scale", LOOM_DT_F32, 2, nan2}}, 2, LOOM_EFORMAT, "scale 1 is nan",
            "NaN scale");
    refused(i8, 2, (tdesc[]){it[0], {"update.scale", LOOM_DT_F32, 2, neg2}}, 2, LOOM_EFORMAT, "scale 0", "negative scale");
    refused(i8, 2, (tdesc[]){{"update.q", LOOM_DT_U8, 4, q4}, it[1]}, 2, LOOM_EFORMAT, "'update.q' must be I8",
            "unsigned q");
    refused(i8, 2, &it[0], 1, LOOM_EFORMAT, "'update.scale' is missing", "no scales");
    float got[8], ctl[8];
    CHECK_OK(build(i8, 2, it, 2, &b, &n));
    CHECK(loom_update_decode(b, n, 8, &d, got, ctl) == LOOM_OK && got[0] == 0.5f && got[1] == -0.5f && got[2] == 127 &&
              got[3] == -127,
          "int8 values q * scale: %g %g %g %g", got[0], got[1], got[2], got[3]);
    loom_free(b);

    /* topk */
    const int32_t ix[2] = {1, 3}, rev[2] = {3, 1}, dup[2] = {1, 1}, big[2] = {1, 4}, negi[2] = {-1, 2};
    const float tv[2] = {5, -6};
    const kv tk[] = {{"codec", "topk"}, {"k", "2"}};
    tdesc tt[] = {{"update.index", LOOM_DT_I32, 2, ix}, {"update.value", LOOM_DT_F32, 2, tv}};
    refused(tk, 2, tt, 2, LOOM_OK, "", "topk accepted");
    CHECK_OK(build(tk, 2, tt, 2, &b, &n));
    for (int i = 0; i < 4; i++) got[i] = 99;
    CHECK(loom_update_decode(b, n, 8, &d, got, ctl) == LOOM_OK && got[0] == 0 && got[1] == 5 && got[2] == 0 &&
              got[3] == -6,
          "topk scatters into zeros: %g %g %g %g", got[0], got[1], got[2], got[3]);
    loom_free(b);
    refused((kv[]){{"codec", "topk"}, {"k", "5"}}, 2, tt, 2, LOOM_EFORMAT, "k 5 is above dim 4", "k > dim");
    refused((kv[]){{"codec", "topk"}, {"k", "3"}}, 2, tt, 2, LOOM_EFORMAT, "must be I32 [3]", "k not the count");
    refused(tk, 2, (tdesc[]){{"update.index", LOOM_DT_I32, 2, rev}, tt[1]}, 2, LOOM_EFORMAT, "ascending",
            "descending indices");
    refused(tk, 2, (tdesc[]){{"update.index", LOOM_DT_I32, 2, dup}, tt[1]}, 2, LOOM_EFORMAT, "distinct",
            "repeated index");
    refused(tk, 2, (tdesc[]){{"update.index", LOOM_DT_I32, 2, big}, tt[1]}, 2, LOOM_EFORMAT, "index 1 is 4",
            "index = dim");
    refused(tk, 2, (tdesc[]){{"update.index", LOOM_DT_I32, 2, negi}, tt[1]}, 2, LOOM_EFORMAT, "index 0 is -1",
            "negative index");
    refused(tk, 2, (tdesc[]){{"update.index", LOOM_DT_I64, 2, f8}, tt[1]}, 2, LOOM_EFORMAT, "must be I32",
            "64-bit indices");

    /* encode refusals */
    float v[4] = {1, 70000, 0, 0};
    loom_update u = make(v, 4, NULL);
    uint8_t *eb;
    loom_codec_opts o16 = {LOOM_CODEC_F16, 0, 0}, oi8 = {LOOM_CODEC_INT8, 0, 0}, otk = {LOOM_CODEC_TOPK, 0, 2},
                    oss = {LOOM_CODEC_SEED_SCALAR, 0, 0};
    CHECK(loom_update_encode(&u, &o16, &eb, &n) == LOOM_ERANGE && strstr(loom_errmsg(), "f16 range") && !eb,
          "f16 overflow refused: %s", loom_errmsg());
    v[1] = 65504;
    CHECK_OK(loom_update_encode(&u, &o16, &eb, &n));
    free(eb);
    v[1] = NAN;
    CHECK(loom_update_encode(&u, &oi8, &eb, &n) == LOOM_ERANGE && strstr(loom_errmsg(), "value 1 is NaN"),
          "NaN refused by int8: %s", loom_errmsg());
    CHECK_OK(loom_update_encode(&u, NULL, &eb, &n)); /* f32 carries it: the server's verdict */
    free(eb);
    v[1] = 1;
    CHECK(loom_update_encode(&u, &otk, &eb, &n) == LOOM_EINVAL && strstr(loom_errmsg(), "share 2"), "topk share 2: %s",
          loom_errmsg());
    CHECK_OK(loom_update_encode(&u, &oss, &eb, &n)); /* FedKSeed's pairs: lossless (tests/test_zo.c) */
    free(eb);
    oss.codec = (loom_codec)(LOOM_CODEC_SEED_SCALAR + 1);
    CHECK(loom_update_encode(&u, &oss, &eb, &n) == LOOM_EUNSUPPORTED, "an unknown codec cannot be encoded");
    oss.codec = LOOM_CODEC_SEED_SCALAR;
    u.examples = 0;
    CHECK(loom_update_encode(&u, NULL, &eb, &n) == LOOM_EINVAL && strstr(loom_errmsg(), "examples"), "examples 0: %s",
          loom_errmsg());
    u.examples = 1;
    u.loss = INFINITY;
    CHECK(loom_update_encode(&u, NULL, &eb, &n) == LOOM_EINVAL && strstr(loom_errmsg(), "loss"), "infinite loss: %s",
          loom_errmsg());
}

static void parse_opts(void) {
    loom_codec_opts o;
    CHECK(loom_codec_opts_parse("none", &o) == LOOM_OK && o.codec == LOOM_CODEC_F32, "none");
    CHECK(loom_codec_opts_parse("fp16", &o) == LOOM_OK && o.codec == LOOM_CODEC_F16, "fp16");
    CHECK(loom_codec_opts_parse("int8", &o) == LOOM_OK && o.codec == LOOM_CODEC_INT8 && o.chunk == 256, "int8");
    CHECK(loom_codec_opts_parse("int8:64", &o) == LOOM_OK && o.chunk == 64, "int8:64");
    CHECK(loom_codec_opts_parse("topk", &o) == LOOM_OK && o.codec == LOOM_CODEC_TOPK && o.topk_frac == 0.01, "topk");
    CHECK(loom_codec_opts_parse("topk:0.05", &o) == LOOM_OK && o.topk_frac == 0.05, "topk:0.05");
    const char *bad[] = {"topk:0", "topk:1.5", "topk:x", "int8:0", "int8:-3", "fp16:2", "zip", ""};
    for (int i = 0; i < 8; i++)
        CHECK(loom_codec_opts_parse(bad[i], &o) == LOOM_EINVAL && strstr(loom_errmsg(), "--compress"), "'%s': %s",
              bad[i], loom_errmsg());
}

/* ---- error feedback ---- */

static void error_feedback(void) {
    enum { D = 500, R = 30 };
    static float raw[D], up[D], sent_sum[D], raw_sum[D], again[D];
    const loom_codec_opts opts[] = {{LOOM_CODEC_F16, 0, 0}, {LOOM_CODEC_INT8, 32, 0}, {LOOM_CODEC_TOPK, 0, 0.02}};
    for (int ci = 0; ci < 3; ci++) {
        const loom_codec_opts *o = &opts[ci];
        loom_client_state st;
        loom_client_state_init(&st);
        memset(sent_sum, 0, sizeof sent_sum);
        memset(raw_sum, 0, sizeof raw_sum);
        int exact = 1, ever_sent = 0;
        static int seen[D];
        memset(seen, 0, sizeof seen);
        for (int r = 0; r < R; r++) {
            fill(raw, D, 100 + (uint64_t)r, 0.001 * (1 + r % 3));
            memcpy(up, raw, sizeof up);
            CHECK_OK(loom_client_compress(&st, up, D, o));
            /* the server decodes exactly what the client accounted for */
            loom_update u = make(up, D, NULL);
            uint8_t *buf;
            size_t n;
            loom_update d;
            CHECK_OK(loom_update_encode(&u, o, &buf, &n));
            CHECK_OK(loom_update_decode(buf, n, D, &d, again, NULL));
            free(buf);
            exact &= !memcmp(again, up, sizeof up);
            for (size_t i = 0; i < D; i++) {
                sent_sum[i] += up[i];
                raw_sum[i] += raw[i];
                seen[i] |= up[i] != 0;
            }
        }
        CHECK(exact, "%s: decode(encode(compressed)) == compressed, every round", loom_codec_name(o->codec));
        CHECK(st.residual && st.residual_dim == D, "%s: residual kept", loom_codec_name(o->codec));
        double worst = 0, scale = 0;
        for (size_t i = 0; i < D && st.residual; i++) {
            worst = fmax(worst, fabs((double)sent_sum[i] + st.residual[i] - raw_sum[i]));
            scale = fmax(scale, fabs(raw_sum[i]));
            ever_sent += seen[i];
        }
        CHECK(worst <= 1e-5 * scale, "%s: sum(sent) + residual = sum(raw): worst %g (scale %g)",
              loom_codec_name(o->codec), worst, scale);
        if (o->codec == LOOM_CODEC_TOPK) /* 10 per round, 30 rounds: error feedback spreads them out */
            CHECK(ever_sent > 200, "topk with feedback sends %d distinct coordinates over %d rounds", ever_sent, R);
        loom_client_state_clear(&st);
        CHECK(st.residual == NULL && st.residual_dim == 0, "clear releases the residual");
    }
    /* off: nothing changes, no residual */
    loom_client_state st;
    loom_client_state_init(&st);
    fill(raw, D, 5, 1);
    memcpy(up, raw, sizeof up);
    loom_codec_opts f32 = {LOOM_CODEC_F32, 0, 0};
    CHECK(loom_client_compress(&st, up, D, NULL) == LOOM_OK && loom_client_compress(&st, up, D, &f32) == LOOM_OK &&
              !memcmp(up, raw, sizeof up) && !st.residual,
          "F32 and NULL leave the update alone");
    /* an f16 refusal leaves update and residual as they were */
    up[3] = 1e6f;
    memcpy(raw, up, sizeof up);
    loom_codec_opts o16 = {LOOM_CODEC_F16, 0, 0};
    CHECK(loom_client_compress(&st, up, D, &o16) == LOOM_ERANGE && !memcmp(up, raw, sizeof up) && st.residual &&
              st.residual[3] == 0,
          "refused: unchanged (%s)", loom_errmsg());
    CHECK(loom_client_compress(&st, up, D - 1, &o16) == LOOM_EINVAL, "residual of another length");
    loom_client_state_clear(&st);
}

/* ---- the engine takes decoded codecs and counts wire bytes ---- */

typedef struct {
    double row_bytes[4];
    int rows;
    double round_up;
} bytes_log;

static void on_round(void *ud, const loom_round_metrics *m, const int *c, int n) { ((bytes_log *)ud)->round_up = m->bytes_up; }
static void on_client(void *ud, const loom_client_row *r) {
    bytes_log *b = ud;
    if (b->rows < 4) b->row_bytes[b->rows++] = r->bytes_up;
}

static void engine_codecs(void) {
    enum { D = 8 };
    float init[D] = {0}, v[D] = {1, 2, 3, 4, 5, 6, 7, 8}, vals[D];
    bytes_log log = {{0}, 0, 0};
    loom_engine_config c;
    loom_engine_defaults(&c);
    c.dim = D;
    c.init = init;
    c.n_clients = 3;
    c.rounds = 1;
    c.sink = (loom_metrics_sink){on_round, on_client, &log};
    loom_engine *e;
    CHECK_OK(loom_engine_create(&e, &c));
    const int *cl;
    int n;
    CHECK_OK(loom_engine_open_round(e, 0, &cl, &n));
    loom_codec_opts o = {LOOM_CODEC_INT8, 4, 0};
    loom_update u = {0, 1, 0, 0, 1, 1.0, 5, LOOM_CODEC_F32, D, v, NULL, 0}, d;
    uint8_t *buf;
    size_t nb;
    CHECK_OK(loom_update_encode(&u, &o, &buf, &nb));
    CHECK_OK(loom_update_decode(buf, nb, D, &d, vals, NULL));
    free(buf);
    loom_update_verdict verdict;
    CHECK(loom_engine_submit(e, &d, 0, &verdict) == LOOM_OK, "a decoded int8 update is accepted: %s", loom_errmsg());
    u.client = 1; /* no wire bytes given: the f32 size */
    CHECK_OK(loom_engine_submit(e, &u, 0, &verdict));
    u.client = 2;
    u.codec = LOOM_CODEC_SEED_SCALAR + 1;
    CHECK(loom_engine_submit(e, &u, 0, &verdict) != LOOM_OK && verdict == LOOM_UPDATE_BAD_CODEC, "an unknown codec refused");
    CHECK_OK(loom_engine_close_round(e, 0));
    CHECK_OK(loom_engine_end_round(e, 0, NULL));
    CHECK(log.rows == 3 && log.row_bytes[0] == (double)nb && log.row_bytes[1] == D * 4.0,
          "client rows' bytes: %g (want %zu), %g (want %d)", log.row_bytes[0], nb, log.row_bytes[1], D * 4);
    CHECK(log.round_up == (double)nb + D * 4.0 + D * 4.0, "round bytes_up %g", log.round_up);
    loom_engine_free(e);
}

/* ---- the simulator with compression ---- */

static loom_model *model;
static loom_dataset *ds;

static int mk(void *ud, loom_trainer **tr, float **vec) {
    *vec = loom_alloc(model->n_params * sizeof(float));
    return loom_trainer_create(tr, model, *vec, ud);
}
static void fr(void *ud, loom_trainer *tr, float *vec) {
    loom_trainer_free(tr);
    loom_free(vec);
}

/* Sums the "bytes_up" of the client rows and of the round rows, counts rows with a status. */
static void read_metrics(const char *dir, double *client_bytes, double *round_bytes, int *rows, const char *status,
                         int *with_status) {
    char path[512], line[65536];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    *client_bytes = *round_bytes = 0;
    *rows = *with_status = 0;
    while (f && fgets(line, sizeof line, f)) {
        const char *b = strstr(line, "\"bytes_up\":");
        double v = b ? atof(b + 11) : 0;
        if (strstr(line, "\"type\":\"client\"")) {
            *client_bytes += v;
            (*rows)++;
            if (status && strstr(line, status)) (*with_status)++;
        } else *round_bytes += v;
    }
    if (f) fclose(f);
}

static void sim_compression(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, ds->n, 5, 0, 8));
    loom_train_config tc;
    loom_train_defaults(&tc);
    tc.opt.kind = LOOM_OPT_SGD;
    tc.opt.lr = 0.05f;
    tc.opt.weight_decay = 0;
    tc.opt.momentum = 0;
    tc.clip = 0;
    tc.warmup = 0;
    tc.total_steps = 0;
    tc.B = 2;
    tc.T = 16;
    loom_sim_config c;
    loom_sim_defaults(&c);
    size_t D = model->n_params;
    c.dim = D;
    c.init = model->params;
    c.make_worker = mk;
    c.free_worker = fr;
    c.worker_ud = &tc;
    c.ds = ds;
    c.part = p;
    c.B = 2;
    c.T = 16;
    c.seed = 5;
    c.strategy = "fedavg";
    loom_strategy_defaults("fedavg", &c.sp);
    c.rounds = 4;
    c.fit.local_steps = 2;
    c.sample = 3;
    c.workers = 2;
    float *plain = loom_alloc(D * 4), *a = loom_alloc(D * 4), *b = loom_alloc(D * 4);
    CHECK_OK(loom_sim_run(&c, plain));
    const loom_codec_opts codecs[] = {{LOOM_CODEC_F16, 0, 0}, {LOOM_CODEC_INT8, 64, 0}, {LOOM_CODEC_TOPK, 0, 0.05}};
    for (int ci = 0; ci < 3; ci++) {
        c.compress = codecs[ci];
        const char *name = loom_codec_name(c.compress.codec);
        char dir[256];
        test_tmpdir(dir, sizeof dir);
        c.out_dir = dir;
        c.checkpoint_every = 1;
        c.resume = 0;
        CHECK_OK(loom_sim_run(&c, a));
        double cb, rb;
        int rows, acc;
        read_metrics(dir, &cb, &rb, &rows, "\"accepted\"", &acc);
        /* 4 rounds x 3 clients; per codec the payload is a known share of the f32 size */
        double f32 = (double)D * 4 * rows, lo = ci == 0 ? 0.5 : ci == 1 ? 0.25 : 0.05 * 2,
               hi = ci == 0 ? 0.51 : ci == 1 ? 0.28 : 0.05 * 2 + 0.01;
        CHECK(rows == 12 && acc == 12 && cb == rb && cb >= lo * f32 && cb <= hi * f32,
              "%s: %d rows (%d accepted), bytes_up %g (rounds %g), %.3f of f32", name, rows, acc, cb, rb, cb / f32);
        double dd = 0;
        for (size_t i = 0; i < D; i++) dd = fmax(dd, fabs((double)a[i] - plain[i]));
        CHECK(dd > 0 && (ci != 0 || dd < 1e-3), "%s: compressed run differs from f32 by %g", name, dd);
        /* resume: the residuals come back from the checkpoint */
        test_rmtree(dir);
        test_tmpdir(dir, sizeof dir);
        c.out_dir = dir;
        c.rounds = 2;
        CHECK_OK(loom_sim_run(&c, b));
        loom_st_file *f;
        char path[512];
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
        int nres = 0;
        if (loom_st_open(&f, path) == LOOM_OK) {
            for (size_t i = 0; i < loom_st_count(f); i++)
                nres += !strncmp(loom_st_at(f, i)->name, "client_residual.", 16) && loom_st_at(f, i)->numel == D;
            loom_st_close(f);
        }
        CHECK(nres >= 3, "%s: %d residuals in the checkpoint", name, nres);
        c.rounds = 4;
        c.resume = 1;
        CHECK_OK(loom_sim_run(&c, b));
        CHECK(!memcmp(a, b, D * 4), "%s: 2 rounds + resume for 2 == 4 rounds, bitwise", name);
        test_rmtree(dir);
        c.out_dir = NULL;
        c.resume = 0;
    }
    /* a broken update is still the server's verdict, not hidden by the codec */
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    c.out_dir = dir;
    loom_fault fault = {1, LOOM_FAULT_NAN};
    c.faults = &fault;
    c.n_faults = 1;
    c.rounds = 1;
    c.sample = 0;
    CHECK_OK(loom_sim_run(&c, a));
    double cb, rb;
    int rows, nf;
    read_metrics(dir, &cb, &rb, &rows, "non-finite value", &nf);
    CHECK(rows == 5 && nf == 1, "NaN fault under top-k: %d of %d rows say non-finite value", nf, rows);
    test_rmtree(dir);
    c.faults = NULL;
    c.n_faults = 0;
    c.out_dir = NULL;
    c.compress.codec = (loom_codec)(LOOM_CODEC_SEED_SCALAR + 1);
    CHECK(loom_sim_run(&c, a) == LOOM_EINVAL && strstr(loom_errmsg(), "--compress"), "bad codec: %s", loom_errmsg());
    loom_free(plain);
    loom_free(a);
    loom_free(b);
    loom_partition_free(p);
}

int main(void) {
    loom_set_log(NULL, NULL, LOOM_ERROR);
    round_trips();
    ties_and_zeros();
    topk_brute_force();
    refusals();
    parse_opts();
    error_feedback();
    engine_codecs();
    loom_config cfg;
    loom_config_named(&cfg, "gpt2-tiny");
    cfg.vocab = 259;
    cfg.n_layer = 1;
    cfg.dim = 32;
    cfg.hidden = 64;
    cfg.n_head = cfg.n_kv_head = 2;
    cfg.max_seq = 32;
    loom_tokenizer *tok = NULL;
    CHECK_OK(loom_model_create(&model, &cfg, 7));
    CHECK_OK(loom_tokenizer_byte(&tok));
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = loom_dataset_format("text");
    o.max_examples = 240;
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/tinyshakespeare/input.txt"), &o, tok));
    if (model && ds) sim_compression();
    loom_dataset_free(ds);
    loom_tokenizer_free(tok);
    loom_model_free(model);
    return test_summary();
}
