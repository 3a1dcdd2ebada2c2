/* The registry of random streams (core/ layer): every (seed, stream) pair loom draws from is named here,
 * with what it seeds, so two uses never share a stream by accident and a new use picks an unused id.
 * The values are those the code has always used (most spell a word in ASCII hex), so results are
 * unchanged. Included by loom/core.h.
 *
 * A stream id is the `stream` of loom_rng_init(&r, seed, stream) or loom_rng_normal_at(seed, stream, i).
 * Where one purpose needs a family of streams (per round, per epoch, per client) the family's tag is
 * combined with the index by loom_hash2(tag, index), or, for the client seeds, added to it.
 *
 * Index streams: model initialisation, LoRA and adapter initialisation use the small integers
 * 0, 1, 2, ... (see LOOM_STREAM_MODEL_TENSOR and below) under their own seed; they are listed so that
 * no new constant is chosen among small integers. */
#ifndef LOOM_STREAMS_H
#define LOOM_STREAMS_H

#include <stdint.h>

/* ---- data (data/) ---- */
/* Partitions (partition.c), each drawn from (partition seed, id): */
#define LOOM_STREAM_PARTITION_IID UINT64_C(0x1001)       /* IID: one shuffle of the examples */
#define LOOM_STREAM_PARTITION_DIRICHLET UINT64_C(0x1002) /* Dirichlet label skew: hash2(id, attempt) */
#define LOOM_STREAM_PARTITION_CLASS UINT64_C(0x1003)     /* Dirichlet: per-class shuffles, hash2(id, class) */
#define LOOM_STREAM_PARTITION_QUANTITY UINT64_C(0x1004)  /* quantity skew: hash2(id, 0) order, hash2(id, 1) sizes */
#define LOOM_STREAM_PARTITION_TEST UINT64_C(0x1005)      /* per-client test split: hash2(id, client) */
/* Batcher (dataset_batch.c): the epoch's example order, hash2(id, epoch) under the batcher's seed. */
#define LOOM_STREAM_BATCH_EPOCH UINT64_C(0x6261746368) /* "batch" */
/* Plain-text training windows (cli/textdata.c): hash2(id, step) under the run's seed. */
#define LOOM_STREAM_TEXT_WINDOW UINT64_C(0x62617463) /* "batc" */

/* ---- models and trainable sets (model/, peft/) ---- */
#define LOOM_STREAM_MODEL_TENSOR(i) ((uint64_t)(i))  /* model.c: initial values of tensor i */
#define LOOM_STREAM_LORA_MODULE(k) ((uint64_t)(k))   /* peft.c: LoRA module k's A matrix */
#define LOOM_STREAM_ADAPTER(l, a) ((uint64_t)(2 * (l) + (a))) /* peft.c: adapter down weight, layer l, site a */
#define LOOM_STREAM_PREFIX_INIT UINT64_C(0x707265)   /* "pre": prefix-tuning embeddings, N(0, 0.02^2) */
#define LOOM_STREAM_PROMPT_INIT UINT64_C(0x70726d)   /* "prm": prompt tuning, the vocabulary rows sampled */
/* LoRA dropout masks (trainer.c, model.c) are hashes, not streams: step s of a trainer with seed S uses
 * dropout seed hash2(S, s), and module k element e keeps iff hash2(hash2(that, k), e) >= p * 2^64. */

/* ---- federated rounds (fl/ engine, sim/) ---- */
#define LOOM_STREAM_CLIENT UINT64_C(0x636c69656e74)  /* "client": client c's seed is hash2(seed, id + c) */
#define LOOM_STREAM_SAMPLE UINT64_C(0x73616d70)      /* "samp": clients of round r, hash2(id, r) */
#define LOOM_STREAM_EVAL UINT64_C(0x6576616c)        /* "eval": the evaluated subset of clients */
#define LOOM_STREAM_CLIENT_SPEED UINT64_C(0x74696d65) /* "time": client c's simulated speed, hash2(id, c) */
#define LOOM_STREAM_ASYNC_NEXT UINT64_C(0x6173796e)  /* "asyn": async sim, the client started when one finishes */
#define LOOM_STREAM_ROOT UINT64_C(0x726f6f74)        /* "root": the sim server's root examples (FLTrust), one
                                                      * shuffle; hash2(seed, id) is the server's data seed */
/* heterogeneous clients (fl/hetlora.c, sim/profile.c) */
#define LOOM_STREAM_FEDRA UINT64_C(0x6665647261)     /* "fedra": client c's layers in round r, hash2(hash2(id, r), c) */
#define LOOM_STREAM_RANK_DRAW UINT64_C(0x72616e6b)   /* "rank": client c's drawn rank budget, hash2(id, c) */
#define LOOM_STREAM_PROFILE UINT64_C(0x70726f66)     /* "prof": client c's drawn device profile, hash2(id, c) */
/* decentralized federation (fl/gossip.c) */
#define LOOM_STREAM_GOSSIP_GRAPH UINT64_C(0x676f7373)  /* "goss": kregular:K topology, hash2(id, attempt) */

/* distillation (fl/feddf.c, fl/synthetic.c) */
#define LOOM_STREAM_DISTILL UINT64_C(0x64697374)     /* "dist": FedDF's public-text windows, round r step s:
                                                      * hash2(hash2(id, r), s) under the run's seed */
#define LOOM_STREAM_SYNTH UINT64_C(0x73796e74)       /* "synt": synthetic sample k's token draws, hash2(id, k) */

/* ---- command line (cli/) ---- */
#define LOOM_STREAM_GENERATE UINT64_C(0x67656e)      /* "gen": token sampling in generation */
#define LOOM_STREAM_BENCH_BATCH UINT64_C(77)         /* loom bench train: its random batch */

/* ---- reserved for the coming client algorithms and privacy (ids chosen, not yet drawn) ---- */
#define LOOM_STREAM_ZO_PERTURB UINT64_C(0x7a6f70)    /* "zop": zeroth-order perturbation z of a seed S: element i is
                                                      * loom_rng_normal_at(S, id, i); MeZO's step s in a round:
                                                      * S = hash2(hash2(round seed, id), s) */
#define LOOM_STREAM_KSEED_POOL UINT64_C(0x6b7370)   /* "ksp": FedKSeed's pool, seed k = hash2(hash2(seed, id), k) */
#define LOOM_STREAM_KSEED_PICK UINT64_C(0x6b736b)   /* "ksk": FedKSeed, step s's seed choice under the seed
                                                      * hash2(round seed, s), round seed = hash2(client seed, round) */
#define LOOM_STREAM_DP_NOISE UINT64_C(0x64706e)      /* "dpn": DP-SGD / server noise, hash2(id, step or round) */

#endif
