/* Datasets from memory: the first byte picks the format and options (jsonl, jsonl-cls, alpaca, dolly,
 * self-instruct, csv, tsv, text), the rest is the file. Loaded examples must be consistent, batch
 * and, for classification, give scoring candidates. */
#include "fuzz_util.h"
#include "loom/dataset.h"

static loom_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1) return 0;
    fuzz_dir();
    if (!tok && loom_tokenizer_byte(&tok) != LOOM_OK) abort();
    static const int formats[8] = {LOOM_FMT_JSONL, LOOM_FMT_JSONL_CLS, LOOM_FMT_ALPACA, LOOM_FMT_DOLLY,
                                   LOOM_FMT_SELF_INSTRUCT, LOOM_FMT_CSV, LOOM_FMT_TSV, LOOM_FMT_TEXT};
    uint8_t sel = data[0];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = formats[sel & 7];
    o.quote = (sel >> 3) & 1 ? 0 : 1;
    o.text_split = (sel >> 4) % 3;
    if (o.format == LOOM_FMT_CSV || o.format == LOOM_FMT_TSV) {
        static const char *text_cols[4] = {"1", "2", "text", "1,3"};
        o.text_col = text_cols[(sel >> 4) & 3];
        o.label_col = (sel >> 6) & 1 ? ((sel >> 4) & 2 ? "label" : "2") : NULL;
        if (o.label_col && !strcmp(o.text_col, "2")) o.label_col = "1";
    } else if (o.format == LOOM_FMT_JSONL) {
        o.label_col = (sel >> 6) & 1 ? "label" : NULL;
    }
    if ((sel >> 7) & 1) o.labels = (sel >> 5) & 1 ? "negative,positive" : "1=World,2=Sports,3=Business,4=Sci/Tech";
    loom_dataset *ds = NULL;
    int rc = loom_dataset_load_buffer(&ds, (const char *)data + 1, n - 1, "fuzz.data", &o, tok);
    fuzz_check_error(rc);
    if (rc != LOOM_OK) return 0;
    size_t total = 0;
    for (size_t i = 0; i < ds->n; i++) {
        const loom_example *e = &ds->ex[i];
        fuzz_assert(e->prompt_len <= e->n);
        for (uint32_t t = 0; t < e->n; t++) fuzz_assert(e->ids[t] >= 0 && e->ids[t] < ds->vocab_size && e->mask[t] <= 1);
        fuzz_assert(ds->kind != LOOM_DS_CLASSIFY || (e->label >= 0 && (size_t)e->label < ds->n_labels));
        fuzz_assert(e->key < 0 || (size_t)e->key < ds->n_keys);
        total += e->n;
    }
    fuzz_assert(total == ds->n_tokens);
    if (ds->kind == LOOM_DS_CLASSIFY)
        for (size_t i = 0; i < ds->n && i < 4; i++)
            for (size_t k = 0; k < ds->n_labels && k < 4; k++) {
                int32_t cand[512];
                size_t len, plen;
                fuzz_check_error(loom_dataset_candidate(ds, i, k, cand, 512, &len, &plen));
            }
    for (int pack = 0; pack < 2; pack++) {
        loom_batcher_opts bo;
        loom_batcher_opts_init(&bo);
        bo.B = 2;
        bo.T = 1 + (sel & 15);
        bo.pack = pack ? LOOM_PACK_ON : LOOM_PACK_OFF;
        bo.seed = sel;
        loom_batcher *b = NULL;
        rc = loom_batcher_create(&b, ds, NULL, 0, &bo);
        fuzz_check_error(rc);
        if (rc != LOOM_OK) continue;
        int32_t tk[32], tg[32];
        for (uint64_t step = 0; step < 3; step++) {
            size_t rows;
            fuzz_assert(loom_batcher_fill(b, step, tk, tg, &rows) == LOOM_OK);
            for (size_t i = 0; i < bo.B * bo.T; i++) fuzz_assert(tg[i] >= -1 && tg[i] < ds->vocab_size);
        }
        loom_batcher_free(b);
    }
    loom_dataset_free(ds);
    return 0;
}
