/* The batcher: (tokens, targets) batches over a shard, deterministic from (seed, step).
 * B = batch size, T = sequence length, S = samples an epoch. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dataset.h"

struct loom_batcher {
    const loom_dataset *ds;
    uint32_t *idx;  /* (n_idx) the shard's example indices */
    size_t n_idx;
    size_t B, T;
    uint64_t seed;
    int pack, shuffle, once;
    uint64_t *cum;  /* pack: (n_idx + 1) start of each example in the packed stream */
    size_t n_samples;
    uint32_t *perm; /* (n_samples) the permutation of perm_epoch */
    uint64_t perm_epoch;
    int perm_valid;
    size_t untargeted; /* samples without a single target */
};

static size_t count_untargeted(const loom_batcher *b);

void loom_batcher_opts_init(loom_batcher_opts *o) {
    memset(o, 0, sizeof *o);
    o->B = 1;
    o->T = 64;
    o->pack = LOOM_PACK_AUTO;
    o->shuffle = 1;
}

void loom_batcher_free(loom_batcher *b) {
    if (!b) return;
    free(b->idx);
    free(b->cum);
    free(b->perm);
    free(b);
}

int loom_batcher_create(loom_batcher **out, const loom_dataset *ds, const uint32_t *idx, size_t n_idx,
                        const loom_batcher_opts *o) {
    *out = NULL;
    if (!ds || !o) return loom_error(LOOM_EINVAL, "batcher: no dataset or options");
    if (o->B == 0 || o->T == 0) return loom_error(LOOM_EINVAL, "batcher: B = %zu and T = %zu must be positive", o->B, o->T);
    if (o->B > SIZE_MAX / o->T / sizeof(int32_t)) return loom_error(LOOM_ERANGE, "batcher: B*T too large");
    if (!idx) n_idx = ds->n;
    if (n_idx > UINT32_MAX) return loom_error(LOOM_ERANGE, "batcher: more than 2^32 examples");
    loom_batcher *b = calloc(1, sizeof *b);
    if (!b) return loom_error(LOOM_ENOMEM, "out of memory");
    b->ds = ds;
    b->n_idx = n_idx;
    b->B = o->B;
    b->T = o->T;
    b->seed = o->seed;
    b->pack = o->pack == LOOM_PACK_AUTO ? ds->kind == LOOM_DS_LM : o->pack != LOOM_PACK_OFF;
    b->shuffle = o->shuffle;
    b->once = o->once;
    b->idx = malloc((n_idx ? n_idx : 1) * sizeof *b->idx);
    if (!b->idx) {
        loom_batcher_free(b);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n_idx; i++) {
        uint32_t k = idx ? idx[i] : (uint32_t)i;
        if (k >= ds->n) {
            loom_batcher_free(b);
            return loom_error(LOOM_ERANGE, "batcher: example index %u out of range (dataset has %zu)", k, ds->n);
        }
        b->idx[i] = k;
    }
    if (b->pack) {
        b->cum = malloc((n_idx + 1) * sizeof *b->cum);
        if (!b->cum) {
            loom_batcher_free(b);
            return loom_error(LOOM_ENOMEM, "out of memory");
        }
        b->cum[0] = 0;
        for (size_t i = 0; i < n_idx; i++) b->cum[i + 1] = b->cum[i] + ds->ex[b->idx[i]].n;
        uint64_t L = b->cum[n_idx];
        /* Windows overlap by one token (the last input of one is the first of the next) so that every
         * token after the first is a target exactly once; the last window may be partial. */
        uint64_t W = L >= 2 ? (L - 1 + b->T - 1) / b->T : 0;
        if (W > UINT32_MAX) {
            loom_batcher_free(b);
            return loom_error(LOOM_ERANGE, "batcher: %llu windows is too many", (unsigned long long)W);
        }
        b->n_samples = (size_t)W;
    } else {
        b->n_samples = n_idx;
    }
    b->perm = malloc((b->n_samples ? b->n_samples : 1) * sizeof *b->perm);
    if (!b->perm) {
        loom_batcher_free(b);
        return loom_error(LOOM_ENOMEM, "out of memory");
    }
    b->untargeted = count_untargeted(b);
    if (b->n_samples && b->untargeted == b->n_samples) {
        size_t S = b->n_samples;
        loom_batcher_free(b);
        return loom_error(LOOM_EINVAL,
                          "batcher: none of the %zu samples has a target token within T = %zu (every batch would "
                          "train on nothing; is the sequence length too short for the prompts?)",
                          S, o->T);
    }
    if (b->untargeted) {
        static atomic_int warned;
        if (!atomic_exchange(&warned, 1))
            loom_log(LOOM_WARN, "batcher: %zu of %zu samples have no target token within T = %zu and train on nothing",
                     b->untargeted, b->n_samples, o->T);
    }
    *out = b;
    return LOOM_OK;
}

size_t loom_batcher_samples(const loom_batcher *b) { return b->n_samples; }

size_t loom_batcher_untargeted(const loom_batcher *b) { return b->untargeted; }

uint64_t loom_batcher_steps_per_epoch(const loom_batcher *b) { return (b->n_samples + b->B - 1) / b->B; }

static void set_epoch(loom_batcher *b, uint64_t epoch) {
    if (b->perm_valid && b->perm_epoch == epoch) return;
    for (size_t i = 0; i < b->n_samples; i++) b->perm[i] = (uint32_t)i;
    loom_rng r;
    loom_rng_init(&r, b->seed, loom_hash2(LOOM_STREAM_BATCH_EPOCH, epoch));
    loom_rng_shuffle_u32(&r, b->perm, b->n_samples);
    b->perm_epoch = epoch;
    b->perm_valid = 1;
}

/* Fills one row (T) from window w of the packed stream. */
static void fill_window(const loom_batcher *b, size_t w, int32_t *tok, int32_t *tgt) {
    const loom_dataset *ds = b->ds;
    size_t T = b->T;
    uint64_t start = (uint64_t)w * T, L = b->cum[b->n_idx];
    /* The example holding stream position `start`: the last e with cum[e] <= start. */
    size_t lo = 0, hi = b->n_idx;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (b->cum[mid] <= start) lo = mid;
        else hi = mid;
    }
    size_t e = lo;
    uint64_t p = start;
    /* Walk positions start .. start+T (T+1 tokens): token j is input j and the target of input j-1. */
    for (size_t j = 0; j <= T; j++, p++) {
        if (p >= L) {
            if (j < T) {
                tok[j] = ds->pad_id;
                tgt[j] = -1;
            }
            if (j > 0) tgt[j - 1] = -1;
            continue;
        }
        while (p >= b->cum[e + 1]) e++;
        const loom_example *ex = &ds->ex[b->idx[e]];
        size_t off = (size_t)(p - b->cum[e]);
        int32_t id = ex->ids[off];
        if (j > 0) tgt[j - 1] = ex->mask[off] ? id : -1;
        if (j < T) tok[j] = id;
    }
}

/* Where an unpacked example's row starts (see loom_dataset_row_cut in include/loom/dataset.h). */
static size_t row_start(const loom_dataset *ds, const loom_example *ex, size_t T) {
    return loom_dataset_row_cut(ds, ex->prompt_len, ex->n, T);
}

size_t loom_dataset_row_cut(const loom_dataset *ds, size_t prompt_len, size_t n, size_t T) {
    if (prompt_len < 2) return 0;
    size_t end = n; /* the row must hold the prompt's last tokens and what follows them */
    if (ds->kind == LOOM_DS_CLASSIFY) {
        /* room for the longest verbalizer whatever the label: the prompt then ends at the same place for
         * every label, and where it ends says nothing about the label */
        size_t vmax = 0;
        for (size_t k = 0; k < ds->n_labels; k++) vmax = LOOM_MAX(vmax, ds->verb_len[k]);
        end = prompt_len + vmax;
    }
    if (end <= T + 1) return 0;
    return LOOM_MIN(end - (T + 1), prompt_len - 1);
}

/* Fills one row (T) from example k: T+1 tokens from row_start on, padded. */
static void fill_example(const loom_batcher *b, size_t k, int32_t *tok, int32_t *tgt) {
    const loom_example *ex = &b->ds->ex[b->idx[k]];
    size_t T = b->T, c = row_start(b->ds, ex, T), n = ex->n - c;
    const int32_t *ids = ex->ids + c;
    const uint8_t *mask = ex->mask + c;
    for (size_t t = 0; t < T; t++) {
        tok[t] = t < n ? ids[t] : b->ds->pad_id;
        tgt[t] = t + 1 < n && mask[t + 1] ? ids[t + 1] : -1;
    }
}

/* Samples whose row has no target (a prompt that fills the row, a one-token example, a window of
 * context only): they would train on nothing. */
static size_t count_untargeted(const loom_batcher *b) {
    const loom_dataset *ds = b->ds;
    size_t none = 0, T = b->T;
    if (!b->pack) {
        for (size_t i = 0; i < b->n_idx; i++) {
            const loom_example *ex = &ds->ex[b->idx[i]];
            size_t c = row_start(b->ds, ex, T), end = LOOM_MIN((size_t)ex->n, c + T + 1), t = c + 1;
            while (t < end && !ex->mask[t]) t++;
            none += t >= end;
        }
        return none;
    }
    /* window w targets stream positions w*T+1 .. w*T+T */
    size_t e = 0;
    for (size_t w = 0; w < b->n_samples; w++) {
        uint64_t p = (uint64_t)w * T + 1, end = LOOM_MIN(p + T, b->cum[b->n_idx]);
        int any = 0;
        for (; p < end && !any; p++) {
            while (p >= b->cum[e + 1]) e++;
            any = ds->ex[b->idx[e]].mask[p - b->cum[e]];
        }
        none += !any;
    }
    return none;
}

int loom_batcher_fill(loom_batcher *b, uint64_t step, int32_t *tokens, int32_t *targets, size_t *rows) {
    if (!b || !tokens || !targets) return loom_error(LOOM_EINVAL, "batcher_fill: NULL argument");
    if (step > (UINT64_MAX - b->B) / b->B) return loom_error(LOOM_ERANGE, "batcher_fill: step %llu too large",
                                                              (unsigned long long)step);
    size_t filled = 0, T = b->T;
    for (size_t r = 0; r < b->B; r++) {
        int32_t *tok = tokens + r * T, *tgt = targets + r * T;
        uint64_t s = step * b->B + r;
        if (b->n_samples == 0 || (b->once && s >= b->n_samples)) {
            for (size_t t = 0; t < T; t++) {
                tok[t] = b->ds->pad_id;
                tgt[t] = -1;
            }
            continue;
        }
        uint64_t epoch = s / b->n_samples;
        size_t pos = (size_t)(s % b->n_samples);
        size_t sample = pos;
        if (b->shuffle) {
            set_epoch(b, epoch);
            sample = b->perm[pos];
        }
        if (b->pack) fill_window(b, sample, tok, tgt);
        else fill_example(b, sample, tok, tgt);
        filled++;
    }
    if (rows) *rows = filled;
    return LOOM_OK;
}
