/* Datasets: parsing (JSONL, CSV/TSV, text, Brown), loss masks, labels, errors, batching, real data sets. */
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/tokenizer.h"
#include "test.h"

static loom_tokenizer *tok;

static loom_dataset *load_buf(const char *text, int format, const loom_dataset_opts *base) {
    loom_dataset_opts o;
    if (base) o = *base;
    else loom_dataset_opts_init(&o);
    o.format = format;
    loom_dataset *ds = NULL;
    int rc = loom_dataset_load_buffer(&ds, text, strlen(text), "mem", &o, tok);
    CHECK(rc == LOOM_OK, "load (format %d): %s", format, loom_errmsg());
    return ds;
}

/* Expects a load failure whose message contains every `want` string. */
static void expect_error(const char *text, int format, const loom_dataset_opts *base, const char *want1, const char *want2) {
    loom_dataset_opts o;
    if (base) o = *base;
    else loom_dataset_opts_init(&o);
    o.format = format;
    loom_dataset *ds = NULL;
    int rc = loom_dataset_load_buffer(&ds, text, strlen(text), "mem", &o, tok);
    CHECK(rc != LOOM_OK && ds == NULL, "malformed input must fail (format %d)", format);
    CHECK(strstr(loom_errmsg(), want1) != NULL, "message '%s' should contain '%s'", loom_errmsg(), want1);
    if (want2) CHECK(strstr(loom_errmsg(), want2) != NULL, "message '%s' should contain '%s'", loom_errmsg(), want2);
    loom_dataset_free(ds);
}

/* Decodes the ids of ex whose mask equals m (byte tokenizer: specials dropped). */
static char *decode_masked(const loom_example *e, int m) {
    char *s = malloc(e->n + 1);
    size_t k = 0;
    for (uint32_t i = 0; i < e->n; i++)
        if (e->mask[i] == m && e->ids[i] < 256) s[k++] = (char)e->ids[i];
    s[k] = 0;
    return s;
}

static void test_alpaca(void) {
    const char *jsonl =
        "{\"instruction\": \"Add the numbers.\", \"input\": \"2 and 3\", \"output\": \"5\"}\n"
        "\n"
        "{\"instruction\": \"Say hi.\", \"output\": \"Hi!\\nBye.\"}\r\n";
    loom_dataset *ds = load_buf(jsonl, LOOM_FMT_ALPACA, NULL);
    if (!ds) return;
    CHECK(ds->n == 2 && ds->kind == LOOM_DS_INSTRUCT, "n = %zu kind %d", ds->n, ds->kind);
    /* The templates, written out by hand. */
    const char *p0 = "Below is an instruction that describes a task, paired with an input that provides further context. "
                     "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers."
                     "\n\n### Input:\n2 and 3\n\n### Response:\n";
    const char *p1 = "Below is an instruction that describes a task. Write a response that appropriately completes the "
                     "request.\n\n### Instruction:\nSay hi.\n\n### Response:\n";
    const char *prompts[2] = {p0, p1}, *responses[2] = {"5", "Hi!\nBye."};
    for (size_t i = 0; i < 2; i++) {
        const loom_example *e = &ds->ex[i];
        char *pr = decode_masked(e, 0), *re = decode_masked(e, 1);
        CHECK(!strcmp(pr, prompts[i]), "example %zu prompt:\n%s", i, pr);
        CHECK(!strcmp(re, responses[i]), "example %zu response '%s'", i, re);
        /* Byte tokenizer: BOS + prompt bytes, then response bytes + EOS. */
        CHECK(e->ids[0] == loom_tokenizer_bos(tok) && e->mask[0] == 0, "BOS first, not a target");
        CHECK(e->prompt_len == 1 + strlen(prompts[i]), "prompt_len %u", e->prompt_len);
        CHECK(e->n == e->prompt_len + strlen(responses[i]) + 1, "n %u", e->n);
        CHECK(e->ids[e->n - 1] == loom_tokenizer_eos(tok) && e->mask[e->n - 1] == 1, "EOS last and trained");
        int exact = 1;
        for (uint32_t t = 0; t < e->n; t++) exact &= e->mask[t] == (t >= e->prompt_len);
        CHECK(exact, "mask covers exactly the response tokens (example %zu)", i);
        free(pr);
        free(re);
    }
    CHECK(ds->ex[0].line == 1 && ds->ex[1].line == 3, "lines %u %u", ds->ex[0].line, ds->ex[1].line);
    CHECK(ds->ex[1].raw_len == strlen("{\"instruction\": \"Say hi.\", \"output\": \"Hi!\\nBye.\"}"), "raw without CRLF");

    /* Batch rows: targets = next token on response positions, -1 on prompt and padding. */
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = 2;
    bo.T = 400;
    bo.shuffle = 0;
    loom_batcher *b;
    CHECK_OK(loom_batcher_create(&b, ds, NULL, 0, &bo));
    int32_t *tk = malloc(2 * 400 * sizeof *tk), *tg = malloc(2 * 400 * sizeof *tg);
    size_t rows = 0;
    CHECK_OK(loom_batcher_fill(b, 0, tk, tg, &rows));
    CHECK(rows == 2, "rows %zu", rows);
    for (int r = 0; r < 2; r++) {
        const loom_example *e = &ds->ex[r];
        int ok = 1;
        for (size_t t = 0; t < 400; t++) {
            int32_t want_tok = t < e->n ? e->ids[t] : ds->pad_id;
            int32_t want_tgt = (t + 1 < e->n && t + 1 >= e->prompt_len) ? e->ids[t + 1] : -1;
            ok &= tk[r * 400 + t] == want_tok && tg[r * 400 + t] == want_tgt;
        }
        CHECK(ok, "row %d tokens/targets", r);
        size_t n_tgt = 0;
        for (size_t t = 0; t < 400; t++) n_tgt += tg[r * 400 + t] >= 0;
        CHECK(n_tgt == strlen(responses[r]) + 1, "row %d has %zu targets, response+EOS = %zu", r, n_tgt,
              strlen(responses[r]) + 1);
    }
    CHECK(ds->pad_id == loom_tokenizer_pad(tok), "pad id is the tokenizer's pad");
    free(tk);
    free(tg);
    loom_batcher_free(b);
    loom_dataset_free(ds);
}

static void test_dolly(void) {
    const char *jsonl =
        "{\"instruction\": \"Who?\", \"context\": \"Ann met Bob.\", \"response\": \"Ann\", \"category\": \"closed_qa\"}\n"
        "{\"instruction\": \"Write.\", \"context\": \"\", \"response\": \"A poem\", \"category\": \"creative_writing\"}\n"
        "{\"instruction\": \"Which?\", \"context\": \"x\", \"response\": \"y\", \"category\": \"closed_qa\"}\n";
    loom_dataset *ds = load_buf(jsonl, LOOM_FMT_DOLLY, NULL);
    if (!ds) return;
    CHECK(ds->n == 3 && ds->n_keys == 2, "n %zu keys %zu", ds->n, ds->n_keys);
    CHECK(!strcmp(ds->keys[0], "closed_qa") && !strcmp(ds->keys[1], "creative_writing"), "keys sorted");
    CHECK(ds->ex[0].key == 0 && ds->ex[1].key == 1 && ds->ex[2].key == 0, "key indices");
    const char *resp[3] = {"Ann", "A poem", "y"};
    for (int i = 0; i < 3; i++) {
        char *re = decode_masked(&ds->ex[i], 1), *pr = decode_masked(&ds->ex[i], 0);
        CHECK(!strcmp(re, resp[i]), "dolly response %d: '%s'", i, re);
        int exact = 1;
        for (uint32_t t = 0; t < ds->ex[i].n; t++) exact &= ds->ex[i].mask[t] == (t >= ds->ex[i].prompt_len);
        CHECK(exact, "dolly mask exact %d", i);
        /* Context is the input; an empty context uses the no-input template. */
        CHECK((strstr(pr, "### Input:\n") != NULL) == (i != 1), "input section %d", i);
        free(re);
        free(pr);
    }
    char *pr = decode_masked(&ds->ex[0], 0);
    CHECK(strstr(pr, "### Instruction:\nWho?\n\n### Input:\nAnn met Bob.\n\n### Response:\n") != NULL, "dolly prompt %s", pr);
    free(pr);
    loom_dataset_free(ds);
}

/* A truncated classification row keeps room for the longest verbalizer whatever the label: "Label:"
 * ends at the same row position for a short and a long label, so the position cannot give the label
 * away (the scorer cuts its candidates with the same loom_dataset_row_cut). */
static void test_label_position(void) {
    const char *jsonl = "{\"text\": \"xxxxxxxxxxxxxxxx\", \"label\": 1}\n"
                        "{\"text\": \"yyyyyyyyyyyyyyyy\", \"label\": 2}\n";
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.labels = "a,bbbb"; /* verbalizers " a" (2 bytes) and " bbbb" (5) */
    loom_dataset *ds = load_buf(jsonl, LOOM_FMT_JSONL_CLS, &o);
    if (!ds) return;
    const size_t T = 16, vmax = 5;
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = 1, bo.T = T, bo.pack = LOOM_PACK_OFF, bo.shuffle = 0;
    loom_batcher *b = NULL;
    CHECK_OK(loom_batcher_create(&b, ds, NULL, 0, &bo));
    for (uint64_t step = 0; b && step < 2; step++) {
        int32_t tk[16], tg[16];
        size_t rows = 0;
        CHECK_OK(loom_batcher_fill(b, step, tk, tg, &rows));
        const loom_example *e = &ds->ex[step];
        /* T + 1 tokens from the cut on: the prompt's last token (':') at row index T - vmax */
        CHECK(e->n > T + 1 && tk[T - vmax] == ':' && tk[T - vmax - 1] == 'l', "example %d: ':' at %zu (%c%c)",
              (int)step, T - vmax, (char)tk[T - vmax - 1], (char)tk[T - vmax]);
        CHECK(tg[T - vmax] == ' ' && tg[T - vmax + 1] == (step == 0 ? 'a' : 'b'), "example %d: verbalizer targets",
              (int)step);
        size_t cut = loom_dataset_row_cut(ds, e->prompt_len, e->n, T);
        CHECK(cut == e->prompt_len + vmax - (T + 1), "example %d: cut %zu", (int)step, cut);
        /* the candidates of the other label are cut alike: the prompt ends at the same place */
        CHECK(loom_dataset_row_cut(ds, e->prompt_len, e->prompt_len + ds->verb_len[1 - step], T) == cut,
              "example %d: candidate cut", (int)step);
    }
    loom_batcher_free(b);
    /* a row with room to spare is not cut; a language-modelling example (no prompt) never at the front */
    CHECK(loom_dataset_row_cut(ds, 10, 12, T) == 0, "short row cut");
    CHECK(loom_dataset_row_cut(ds, 0, 100, T) == 0, "no prompt, no cut");
    loom_dataset_free(ds);
}

static void test_classification(void) {
    const char *jsonl = "{\"text\": \"good\", \"label\": 10}\n"
                        "{\"text\": \"bad\", \"label\": \"2\"}\n"
                        "{\"text\": \"ok\", \"label\": 1}\n";
    loom_dataset *ds = load_buf(jsonl, LOOM_FMT_JSONL_CLS, NULL);
    if (!ds) return;
    /* Integer labels sort by value: 1, 2, 10. */
    CHECK(ds->n_labels == 3, "labels %zu", ds->n_labels);
    if (ds->n_labels == 3) {
        CHECK(!strcmp(ds->label_values[0], "1") && !strcmp(ds->label_values[1], "2") && !strcmp(ds->label_values[2], "10"),
              "numeric order %s %s %s", ds->label_values[0], ds->label_values[1], ds->label_values[2]);
        CHECK(ds->ex[0].label == 2 && ds->ex[1].label == 1 && ds->ex[2].label == 0, "example labels");
        /* Verbalizer " 10" = bytes ' ', '1', '0'. */
        CHECK(ds->verb_len[2] == 3 && ds->verb_ids[2][0] == ' ' && ds->verb_ids[2][1] == '1' && ds->verb_ids[2][2] == '0',
              "verbalizer tokens");
    }
    const loom_example *e = &ds->ex[0];
    char *pr = decode_masked(e, 0), *re = decode_masked(e, 1);
    CHECK(!strcmp(pr, "Text: good\nLabel:"), "prompt '%s'", pr);
    CHECK(!strcmp(re, " 10"), "trained tokens '%s'", re);
    free(pr);
    free(re);
    int32_t cand[64];
    size_t n, pl;
    CHECK_OK(loom_dataset_candidate(ds, 1, 0, cand, 64, &n, &pl));
    CHECK(pl == ds->ex[1].prompt_len && n == pl + 2 && cand[pl] == ' ' && cand[pl + 1] == '1', "candidate bad + ' 1'");
    CHECK(memcmp(cand, ds->ex[1].ids, pl * sizeof *cand) == 0, "candidate prompt = example prompt");
    CHECK(loom_dataset_candidate(ds, 0, 3, cand, 64, &n, &pl) == LOOM_ERANGE, "label out of range");
    loom_dataset_free(ds);

    /* Names for the sorted values, and an explicit map. */
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.labels = "one,two,ten";
    ds = load_buf(jsonl, LOOM_FMT_JSONL_CLS, &o);
    if (ds) {
        CHECK(!strcmp(ds->label_names[ds->ex[0].label], "ten"), "named label %s", ds->label_names[ds->ex[0].label]);
        loom_dataset_free(ds);
    }
    o.labels = "10=pos,2=neg,1=neutral,7=unused";
    ds = load_buf(jsonl, LOOM_FMT_JSONL_CLS, &o);
    if (ds) {
        CHECK(ds->n_labels == 4 && ds->ex[0].label == 0 && ds->ex[1].label == 1 && ds->ex[2].label == 2, "explicit map");
        loom_dataset_free(ds);
    }
    o.labels = "10=pos,2=neg";
    expect_error(jsonl, LOOM_FMT_JSONL_CLS, &o, "mem:3:", "'1' is not among");
    o.labels = "a,b";
    expect_error(jsonl, LOOM_FMT_JSONL_CLS, &o, "2 label names", "3 distinct");
}

static void test_malformed_jsonl(void) {
    expect_error("{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\",\n",
                 LOOM_FMT_ALPACA, NULL, "mem:3:", "invalid JSON");
    expect_error("{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\", \"input\": \"b\"}\n", LOOM_FMT_ALPACA, NULL,
                 "mem:2:", "missing field \"output\"");
    expect_error("{\"instruction\": \"a\", \"response\": 3.5}\n", LOOM_FMT_DOLLY, NULL, "mem:1:", "\"response\" is not a string");
    expect_error("[1, 2]\n", LOOM_FMT_JSONL_CLS, NULL, "mem:1:", "expected a JSON object");
    expect_error("{\"text\": \"x\"}\n", LOOM_FMT_JSONL_CLS, NULL, "mem:1:", "missing field \"label\"");
    expect_error("{\"instruction\": \"a\", \"instances\": [{\"input\": \"\"}]}\n", LOOM_FMT_SELF_INSTRUCT, NULL, "mem:1:",
                 "missing field \"output\"");
    /* An explicitly named key field must exist. */
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.key_col = "topic";
    expect_error("{\"text\": \"x\", \"topic\": \"a\"}\n{\"text\": \"y\"}\n", LOOM_FMT_JSONL, &o, "mem:2:", "missing field \"topic\"");
}

/* Field i of the CSV example: the classification prompt is "Text: <text>\nLabel:". */
static void check_csv_text(const loom_dataset *ds, size_t i, const char *want) {
    char *pr = decode_masked(&ds->ex[i], 0);
    char exp[512];
    snprintf(exp, sizeof exp, "Text: %s\nLabel:", want);
    CHECK(!strcmp(pr, exp), "csv row %zu text '%s', want '%s'", i, pr, exp);
    free(pr);
}

static void test_csv(void) {
    const char *csv = "id,text,label\r\n"
                      "1,\"hello, world\",pos\r\n"
                      "2,\"she said \"\"hi\"\"\",neg\r\n"
                      "3,\"two\r\nlines\",pos\r\n"
                      "\r\n"
                      "4,,neg\r\n"
                      "5,plain \"quote\" inside,pos";
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.text_col = "text";
    o.label_col = "label";
    loom_dataset *ds = load_buf(csv, LOOM_FMT_CSV, &o);
    if (ds) {
        CHECK(ds->n == 5, "csv rows %zu", ds->n);
        if (ds->n == 5) {
            check_csv_text(ds, 0, "hello, world");
            check_csv_text(ds, 1, "she said \"hi\"");
            check_csv_text(ds, 2, "two\r\nlines");
            check_csv_text(ds, 3, "");
            check_csv_text(ds, 4, "plain \"quote\" inside");
            /* Lines: the header is line 1; row 3 spans lines 4-5; a blank line 6. */
            CHECK(ds->ex[0].line == 2 && ds->ex[2].line == 4 && ds->ex[3].line == 7 && ds->ex[4].line == 8, "lines %u %u %u %u",
                  ds->ex[0].line, ds->ex[2].line, ds->ex[3].line, ds->ex[4].line);
            CHECK(!strcmp(ds->label_names[ds->ex[0].label], "pos") && !strcmp(ds->label_names[ds->ex[3].label], "neg"), "labels");
            CHECK(ds->ex[1].raw_len == strlen("2,\"she said \"\"hi\"\"\",neg") &&
                      !memcmp(ds->ex[1].raw, "2,\"she said \"\"hi\"\"\",neg", ds->ex[1].raw_len),
                  "raw row kept as written");
            CHECK(ds->header && !strcmp(ds->header, "id,text,label"), "header '%s'", ds->header ? ds->header : "(null)");
        }
        loom_dataset_free(ds);
    }
    /* Numbered columns (1-based), no header, several text columns joined by a newline; trailing newline. */
    loom_dataset_opts_init(&o);
    o.text_col = "2,3";
    o.label_col = "1";
    ds = load_buf("\"3\",\"Title\",\"Body, with comma\"\n\"1\",\"T2\",\"B2\"\n", LOOM_FMT_CSV, &o);
    if (ds) {
        CHECK(ds->n == 2 && !ds->header, "numbered csv rows %zu", ds->n);
        if (ds->n == 2) check_csv_text(ds, 0, "Title\nBody, with comma");
        CHECK(ds->n_labels == 2 && ds->ex[0].label == 1 && ds->ex[1].label == 0, "labels 1 < 3");
        loom_dataset_free(ds);
    }
    /* TSV: commas are plain characters. */
    loom_dataset_opts_init(&o);
    o.text_col = "sentence";
    o.label_col = "label";
    ds = load_buf("sentence\tlabel\na, b \t1\n\"q\ttab\"\t0\n", LOOM_FMT_TSV, &o);
    if (ds) {
        CHECK(ds->n == 2, "tsv rows %zu", ds->n);
        if (ds->n == 2) {
            check_csv_text(ds, 0, "a, b ");
            check_csv_text(ds, 1, "q\ttab");
        }
        loom_dataset_free(ds);
    }
    /* Without a label column every row is a language-modelling document. */
    loom_dataset_opts_init(&o);
    o.text_col = "1";
    ds = load_buf("abc\ndef\n", LOOM_FMT_CSV, &o);
    if (ds) {
        CHECK(ds->kind == LOOM_DS_LM && ds->n == 2 && ds->n_labels == 0, "csv LM");
        loom_dataset_free(ds);
    }
    /* Errors with line numbers. */
    loom_dataset_opts_init(&o);
    o.text_col = "text";
    o.label_col = "label";
    expect_error("text,label\na,1\nb,2,extra\n", LOOM_FMT_CSV, &o, "mem:3:", "row has 3 fields, expected 2");
    expect_error("text,label\na,1\n\"multi\nline\",0\nc\n", LOOM_FMT_CSV, &o, "mem:5:", "row has 1 fields");
    expect_error("text,label\na,1\n\"never closed,1\nx,2\n", LOOM_FMT_CSV, &o, "mem:3:", "unterminated quoted field");
    expect_error("text,label\n\"a\"b,1\n", LOOM_FMT_CSV, &o, "mem:2:", "after the closing quote");
    o.text_col = "body";
    expect_error("text,label\na,1\n", LOOM_FMT_CSV, &o, "no text column named 'body'", "'text', 'label'");
    o.text_col = "4";
    o.label_col = "1";
    expect_error("a,1\n", LOOM_FMT_CSV, &o, "column 4 out of range", NULL);
}

static void test_text_and_batches(void) {
    const char *txt = "first doc line one\nline two\n\n\n  \nsecond doc\n\nthird";
    loom_dataset *ds = load_buf(txt, LOOM_FMT_TEXT, NULL);
    if (!ds) return;
    CHECK(ds->n == 3, "paragraph docs %zu", ds->n);
    if (ds->n == 3) {
        CHECK(ds->ex[0].raw_len == strlen("first doc line one\nline two") && ds->ex[1].line == 6 && ds->ex[2].line == 8,
              "doc spans");
        /* BOS + bytes + EOS; BOS is not a target. */
        CHECK(ds->ex[1].n == 1 + 10 + 1 && ds->ex[1].mask[0] == 0 && ds->ex[1].mask[1] == 1, "LM ids/mask");
    }
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.text_split = LOOM_SPLIT_LINE;
    loom_dataset *dl = load_buf(txt, LOOM_FMT_TEXT, &o);
    if (dl) {
        CHECK(dl->n == 5, "line docs %zu (blank lines skipped, '  ' kept)", dl->n);
        loom_dataset_free(dl);
    }

    /* Packed windows over one epoch: every trained token after the first in the stream is a target
     * exactly once, so the target histogram equals the stream's (BOS is never a target). */
    size_t T = 7, B = 3;
    loom_batcher_opts bo;
    loom_batcher_opts_init(&bo);
    bo.B = B;
    bo.T = T;
    bo.seed = 11;
    uint32_t idx[2] = {2, 0}; /* a shard, in this order */
    loom_batcher *b;
    CHECK_OK(loom_batcher_create(&b, ds, idx, 2, &bo));
    size_t L = ds->ex[2].n + ds->ex[0].n;
    int32_t stream[128];
    uint8_t smask[128];
    for (size_t i = 0; i < L && i < 128; i++) {
        const loom_example *e = i < ds->ex[2].n ? &ds->ex[2] : &ds->ex[0];
        size_t k = i < ds->ex[2].n ? i : i - ds->ex[2].n;
        stream[i] = e->ids[k];
        smask[i] = e->mask[k];
    }
    size_t S = loom_batcher_samples(b);
    CHECK(S == (L - 1 + T - 1) / T, "windows %zu for %zu tokens", S, L);
    long hist_stream[300] = {0}, hist_tgt[300] = {0};
    for (size_t i = 1; i < L; i++)
        if (smask[i]) hist_stream[stream[i]]++;
    int32_t *tk = malloc(B * T * sizeof *tk), *tg = malloc(B * T * sizeof *tg);
    int32_t *first_epoch = malloc(S * T * sizeof *first_epoch);
    size_t seen = 0;
    /* Rows are samples s = step*B + r; take exactly the first S of them. */
    for (uint64_t step = 0; seen < S; step++) {
        CHECK_OK(loom_batcher_fill(b, step, tk, tg, NULL));
        for (size_t r = 0; r < B && seen < S; r++, seen++) {
            for (size_t t = 0; t < T; t++)
                if (tg[r * T + t] >= 0) hist_tgt[tg[r * T + t]]++;
            memcpy(first_epoch + seen * T, tk + r * T, T * sizeof *tk);
        }
    }
    int same = 1;
    for (int k = 0; k < 300; k++) same &= hist_stream[k] == hist_tgt[k];
    CHECK(same, "one epoch of windows targets every stream token once");
    /* Determinism: a fresh batcher with the same seed gives the same batch at step 5 (resume). */
    loom_batcher *b2;
    CHECK_OK(loom_batcher_create(&b2, ds, idx, 2, &bo));
    int32_t *tk2 = malloc(B * T * sizeof *tk2), *tg2 = malloc(B * T * sizeof *tg2);
    CHECK_OK(loom_batcher_fill(b, 5, tk, tg, NULL));
    CHECK_OK(loom_batcher_fill(b2, 5, tk2, tg2, NULL));
    CHECK(!memcmp(tk, tk2, B * T * sizeof *tk) && !memcmp(tg, tg2, B * T * sizeof *tg), "same (seed, step), same batch");
    loom_batcher_free(b2);
    /* Another seed: a different order over the first epoch. */
    bo.seed = 12;
    CHECK_OK(loom_batcher_create(&b2, ds, idx, 2, &bo));
    int differs = 0;
    seen = 0;
    for (uint64_t step = 0; seen < S; step++) {
        CHECK_OK(loom_batcher_fill(b2, step, tk2, tg2, NULL));
        for (size_t r = 0; r < B && seen < S; r++, seen++) differs |= memcmp(first_epoch + seen * T, tk2 + r * T, T * sizeof *tk2) != 0;
    }
    CHECK(differs, "another seed shuffles differently");
    loom_batcher_free(b2);
    /* once = 1: a single pass, the rest is padding. */
    bo.once = 1;
    bo.shuffle = 0;
    CHECK_OK(loom_batcher_create(&b2, ds, idx, 2, &bo));
    size_t rows_total = 0, rows;
    for (uint64_t step = 0; step < loom_batcher_steps_per_epoch(b2) + 1; step++) {
        CHECK_OK(loom_batcher_fill(b2, step, tk2, tg2, &rows));
        rows_total += rows;
    }
    CHECK(rows_total == S, "one pass gives %zu rows, S = %zu", rows_total, S);
    CHECK(tk2[0] == ds->pad_id && tg2[0] == -1, "past the pass: padding");
    /* Unshuffled first window = the stream's first T tokens. */
    CHECK_OK(loom_batcher_fill(b2, 0, tk2, tg2, NULL));
    int ok = 1;
    for (size_t t = 0; t < T; t++) ok &= tk2[t] == stream[t] && tg2[t] == (smask[t + 1] ? stream[t + 1] : -1);
    CHECK(ok, "first window");
    loom_batcher_free(b2);
    free(first_epoch);
    free(tk);
    free(tg);
    free(tk2);
    free(tg2);
    loom_batcher_free(b);

    /* Subsets copy examples. */
    loom_dataset *sub;
    CHECK_OK(loom_dataset_subset(&sub, ds, idx, 2));
    if (sub) {
        CHECK(sub->n == 2 && sub->ex[0].n == ds->ex[2].n && !memcmp(sub->ex[0].ids, ds->ex[2].ids, ds->ex[2].n * 4) &&
                  sub->n_tokens == L,
              "subset");
        loom_dataset_free(sub);
    }
    CHECK(loom_batcher_create(&b, ds, (uint32_t[]){7}, 1, &bo) == LOOM_ERANGE, "index out of range");
    loom_dataset_free(ds);
}

/* ---- the real data sets in shared/data; expected counts from their SOURCE.md files ---- */

static size_t count_label(const loom_dataset *ds, const char *value) {
    size_t n = 0;
    for (size_t i = 0; i < ds->n; i++) n += !strcmp(ds->label_values[ds->ex[i].label], value);
    return n;
}

static void test_sst2(void) {
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_TSV;
    o.text_col = "sentence";
    o.label_col = "label";
    o.labels = "negative,positive";
    loom_dataset *ds;
    /* SOURCE.md: train header + 67,349 rows (label 1: 37,569, label 0: 29,780); dev 872 (1: 444, 0: 428). */
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/sst2/train.tsv"), &o, tok));
    if (ds) {
        CHECK(ds->n == 67349, "sst2 train rows %zu", ds->n);
        CHECK(count_label(ds, "1") == 37569 && count_label(ds, "0") == 29780, "sst2 train labels");
        CHECK(!strcmp(ds->label_names[1], "positive"), "sst2 names");
        loom_dataset_free(ds);
    }
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/sst2/dev.tsv"), &o, tok));
    if (ds) {
        CHECK(ds->n == 872 && count_label(ds, "1") == 444 && count_label(ds, "0") == 428, "sst2 dev %zu", ds->n);
        loom_dataset_free(ds);
    }
}

static void test_ag_news(void) {
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_CSV;
    o.text_col = "2,3";
    o.label_col = "1";
    o.labels = "1=World,2=Sports,3=Business,4=Sci/Tech"; /* classes.txt, labels 1..4 in order */
    loom_dataset *ds;
    /* SOURCE.md: 7,600 rows, 1,900 per class, no header. */
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/ag-news/test.csv"), &o, tok));
    if (!ds) return;
    CHECK(ds->n == 7600, "ag news rows %zu", ds->n);
    size_t per[4] = {0};
    for (size_t i = 0; i < ds->n; i++) per[ds->ex[i].label]++;
    CHECK(per[0] == 1900 && per[1] == 1900 && per[2] == 1900 && per[3] == 1900, "per class %zu %zu %zu %zu", per[0], per[1],
          per[2], per[3]);
    /* The first row as shown by `head`: class 3, title "Fears for T N pension after talks". */
    char *pr = decode_masked(&ds->ex[0], 0);
    CHECK(!strncmp(pr, "Text: Fears for T N pension after talks\nUnions representing", 59) &&
              !strcmp(ds->label_names[ds->ex[0].label], "Business"),
          "first row '%.60s'", pr);
    free(pr);
    loom_dataset_free(ds);
}

static void test_brown(void) {
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_BROWN;
    loom_dataset *ds;
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/brown-corpus"), &o, tok));
    if (!ds) return;
    /* SOURCE.md: 500 files, 15 genres with these file counts, 57,340 non-empty sentence lines,
     * about 1.16 M tokens. */
    CHECK(ds->n == 500 && ds->n_keys == 15, "brown files %zu genres %zu", ds->n, ds->n_keys);
    static const struct {
        const char *genre;
        size_t files;
    } want[] = {{"learned", 80},   {"belles_lettres", 75}, {"lore", 48},      {"news", 44},    {"hobbies", 36},
                {"government", 30}, {"adventure", 29},      {"fiction", 29},   {"romance", 29}, {"editorial", 27},
                {"mystery", 24},    {"religion", 17},       {"reviews", 17},   {"humor", 9},    {"science_fiction", 6}};
    for (size_t g = 0; g < 15; g++) {
        size_t n = 0;
        for (size_t i = 0; i < ds->n; i++) n += ds->ex[i].key >= 0 && !strcmp(ds->keys[ds->ex[i].key], want[g].genre);
        CHECK(n == want[g].files, "genre %s: %zu files, SOURCE.md says %zu", want[g].genre, n, want[g].files);
    }
    size_t lines = 0, words = 0, slashes = 0;
    for (size_t i = 0; i < ds->n; i++) {
        const char *s = ds->ex[i].raw;
        size_t n = ds->ex[i].raw_len;
        lines += n > 0;
        for (size_t k = 0; k < n; k++) {
            lines += s[k] == '\n';
            words += s[k] != ' ' && s[k] != '\n' && (k == 0 || s[k - 1] == ' ' || s[k - 1] == '\n');
            slashes += s[k] == '/';
        }
    }
    CHECK(lines == 57340, "brown sentence lines %zu", lines);
    CHECK(words > 1150000 && words < 1170000, "brown tokens %zu (about 1.16 M)", words);
    /* Tags are gone: the only slashes left are inside words (like "and/or"), rare. */
    CHECK(slashes < 1000, "%zu slashes left", slashes);
    const char *want0 = "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election "
                        "produced `` no evidence '' that any irregularities took place .\n";
    CHECK(ds->ex[0].raw_len > strlen(want0) && !strncmp(ds->ex[0].raw, want0, strlen(want0)), "ca01 starts '%.120s'",
          ds->ex[0].raw);
    loom_dataset_free(ds);
}

static void test_self_instruct(void) {
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_SELF_INSTRUCT;
    o.key_col = "is_classification";
    loom_dataset *ds;
    /* SOURCE.md: seed_tasks 175 lines, 1 instance each; is_classification true for 26, false for 149. */
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/self-instruct/seed_tasks.jsonl"), &o, tok));
    if (ds) {
        CHECK(ds->n == 175 && ds->n_keys == 2, "seed tasks %zu keys %zu", ds->n, ds->n_keys);
        size_t t = 0;
        for (size_t i = 0; i < ds->n; i++) t += !strcmp(ds->keys[ds->ex[i].key], "true");
        CHECK(t == 26, "classification tasks %zu", t);
        loom_dataset_free(ds);
    }
    /* SOURCE.md: user-oriented set (evaluation only): 252 lines, 71 motivation_app values,
     * Grammarly 10, merriam-webster.com 10, Gmail 9, Netflix 9, Amazon 8. */
    o.key_col = NULL;
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/self-instruct/user_oriented_instructions.jsonl"), &o, tok));
    if (ds) {
        CHECK(ds->n == 252 && ds->n_keys == 71, "user-oriented %zu keys %zu", ds->n, ds->n_keys);
        static const struct {
            const char *app;
            size_t n;
        } want[] = {{"Grammarly", 10}, {"merriam-webster.com", 10}, {"Gmail", 9}, {"Netflix", 9}, {"Amazon", 8}};
        for (size_t w = 0; w < 5; w++) {
            size_t n = 0;
            for (size_t i = 0; i < ds->n; i++) n += !strcmp(ds->keys[ds->ex[i].key], want[w].app);
            CHECK(n == want[w].n, "%s: %zu", want[w].app, n);
        }
        loom_dataset_free(ds);
    }
}

/* Random damage to valid inputs: every load either succeeds with sane examples or fails with a
 * message; nothing reads out of bounds (run under the sanitizer build). */
static void test_fuzz(void) {
    static const char *seeds[] = {
        "text,label\n\"a, \"\"b\"\"\",1\n\"multi\nline\",0\r\nplain,1\n",
        "{\"text\": \"x\\n\", \"label\": 3}\n{\"instruction\": \"i\", \"input\": \"\", \"output\": \"o\", \"response\": \"r\"}\n",
        "para one\nline\n\npara two\n",
    };
    static const char alphabet[] = "\",\n\r\t{}[]:\\a1 ";
    static const int formats[] = {LOOM_FMT_CSV, LOOM_FMT_TSV, LOOM_FMT_JSONL_CLS, LOOM_FMT_ALPACA, LOOM_FMT_DOLLY, LOOM_FMT_TEXT};
    loom_rng r;
    loom_rng_init(&r, 2024, 0);
    int sane = 1, loaded = 0, failed_with_msg = 1, runs = 0;
    char buf[256];
    for (int it = 0; it < 3000; it++) {
        const char *s = seeds[it % 3];
        size_t n = strlen(s);
        memcpy(buf, s, n);
        int edits = 1 + (int)loom_rng_below(&r, 6);
        for (int e = 0; e < edits; e++) {
            uint32_t op = loom_rng_below(&r, 3), at = n ? loom_rng_below(&r, (uint32_t)n) : 0;
            char c = alphabet[loom_rng_below(&r, sizeof alphabet - 1)];
            if (op == 0 && n) buf[at] = c;
            else if (op == 1 && n + 1 < sizeof buf) {
                memmove(buf + at + 1, buf + at, n - at);
                buf[at] = c;
                n++;
            } else if (n) {
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
            }
        }
        int fmt = formats[loom_rng_below(&r, 6)];
        loom_dataset_opts o;
        loom_dataset_opts_init(&o);
        o.format = fmt;
        if (fmt == LOOM_FMT_CSV || fmt == LOOM_FMT_TSV) {
            o.text_col = loom_rng_below(&r, 2) ? "text" : "1";
            o.label_col = loom_rng_below(&r, 2) ? "2" : NULL;
        }
        loom_dataset *ds = NULL;
        runs++;
        /* An exact-size heap copy, so that reading past the end is caught by the sanitizer. */
        char *exact = malloc(n ? n : 1);
        memcpy(exact, buf, n);
        int rc = loom_dataset_load_buffer(&ds, exact, n, "fuzz", &o, tok);
        free(exact);
        if (rc == LOOM_OK) {
            loaded++;
            for (size_t i = 0; i < ds->n; i++) {
                const loom_example *e = &ds->ex[i];
                sane &= e->line >= 1 && e->prompt_len <= e->n && e->raw_len <= n;
                for (uint32_t t = 0; t < e->n; t++) sane &= e->ids[t] >= 0 && e->ids[t] < ds->vocab_size && e->mask[t] <= 1;
                sane &= ds->kind != LOOM_DS_CLASSIFY || (e->label >= 0 && (size_t)e->label < ds->n_labels);
            }
            loom_batcher_opts bo;
            loom_batcher_opts_init(&bo);
            bo.B = 2;
            bo.T = 8;
            loom_batcher *b;
            if (loom_batcher_create(&b, ds, NULL, 0, &bo) == LOOM_OK) {
                int32_t tk[16], tg[16];
                for (uint64_t step = 0; step < 4; step++) sane &= loom_batcher_fill(b, step, tk, tg, NULL) == LOOM_OK;
                loom_batcher_free(b);
            }
            loom_dataset_free(ds);
        } else {
            failed_with_msg &= ds == NULL && strlen(loom_errmsg()) > 5;
        }
    }
    printf("fuzz: %d inputs, %d loaded, the rest rejected\n", runs, loaded);
    CHECK(sane, "loaded fuzz inputs are sane");
    CHECK(failed_with_msg, "rejected fuzz inputs have a message");
    CHECK(loaded > 100 && loaded < runs, "fuzz exercised both paths (%d of %d loaded)", loaded, runs);
}

int main(void) {
    CHECK_OK(loom_tokenizer_byte(&tok));
    test_alpaca();
    test_dolly();
    test_classification();
    test_label_position();
    test_malformed_jsonl();
    test_csv();
    test_text_and_batches();
    test_fuzz();
    test_sst2();
    test_ag_news();
    test_brown();
    test_self_instruct();
    loom_tokenizer_free(tok);
    return test_summary();
}
