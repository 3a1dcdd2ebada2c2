/* Tokenizers against reference ids (OpenAI's encoder.py for GPT-2, Google SentencePiece for Llama 2),
 * against naive reference encoders written here (Hugging Face BPE by merge rank, llama2.c's greedy
 * merge by score), round trips, streaming decode and malformed inputs. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loom/core.h"
#include "loom/tokenizer.h"
#include "test.h"

static char tmpdir[256];

/* ---- helpers ---- */

static char *tmp_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", tmpdir, name);
    return buf;
}

static void write_text(const char *path, const char *s) { CHECK_OK(loom_write_file_atomic(path, s, strlen(s))); }

static json_t *load_json(const char *rel) {
    char p[1024];
    json_error_t e;
    json_t *j = json_load_file(test_path(p, sizeof p, rel), 0, &e);
    CHECK(j != NULL, "cannot parse %s: %s", p, e.text);
    return j;
}

/* Text of a reference entry, from its utf8_hex field. */
static char *entry_text(json_t *entry, size_t *len) {
    const char *hex = json_string_value(json_object_get(entry, "utf8_hex"));
    size_t n = strlen(hex) / 2;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        s[i] = (char)v;
    }
    s[n] = 0;
    *len = n;
    return s;
}

/* Strict UTF-8 check (RFC 3629): no overlong forms, surrogates or code points above U+10FFFF. */
static int utf8_ok(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        int k = s[i] < 0x80 ? 1 : (s[i] >= 0xC2 && s[i] <= 0xDF) ? 2 : (s[i] & 0xF0) == 0xE0 ? 3 : (s[i] >= 0xF0 && s[i] <= 0xF4) ? 4 : 0;
        if (!k || i + (size_t)k > n) return 0;
        for (int j = 1; j < k; j++)
            if ((s[i + j] & 0xC0) != 0x80) return 0;
        if (k >= 3) {
            uint32_t cp = k == 3 ? (uint32_t)(s[i] & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F)
                                 : (uint32_t)(s[i] & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 | (uint32_t)(s[i + 2] & 0x3F) << 6 |
                                       (s[i + 3] & 0x3F);
            if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
        }
        i += (size_t)k;
    }
    return 1;
}

/* Compares ids with the expected list; reports the first difference. */
static void check_ids(const int32_t *got, size_t n, const int32_t *want, size_t m, const char *what) {
    size_t i = 0;
    while (i < n && i < m && got[i] == want[i]) i++;
    CHECK(n == m && i == n, "%s: %zu ids vs %zu expected, first difference at %zu (got %d, want %d)", what, n, m, i,
          i < n ? got[i] : -1, i < m ? want[i] : -1);
}

static int32_t *json_ids(json_t *arr, size_t *n) {
    *n = json_array_size(arr);
    int32_t *v = malloc((*n + 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

static void check_roundtrip(const loom_tokenizer *t, const char *text, size_t len, const char *what) {
    int32_t *ids = NULL;
    size_t n = 0;
    char *out = NULL;
    size_t olen = 0;
    CHECK_OK(loom_tokenizer_encode(t, text, len, 0, &ids, &n));
    CHECK_OK(loom_tokenizer_decode(t, ids, n, &out, &olen));
    size_t i = 0;
    while (out && i < olen && i < len && out[i] == text[i]) i++;
    CHECK(out && olen == len && i == len, "%s round trip (%s): %zu bytes back for %zu, first difference at byte %zu", what,
          loom_tokenizer_kind(t), olen, len, i);
    free(ids);
    free(out);
}

static loom_tokenizer *load(const char *rel) {
    char p[1024];
    loom_tokenizer *t = NULL;
    int rc = loom_tokenizer_load(&t, test_path(p, sizeof p, rel));
    CHECK(rc == LOOM_OK, "loading %s: %s", p, loom_errmsg());
    return t;
}

static char *shakespeare(size_t *len) {
    char p[1024], *s = NULL;
    CHECK_OK(loom_read_file(test_path(p, sizeof p, "data/tinyshakespeare/input.txt"), &s, len));
    return s;
}

/* ---- the byte-level tokenizer ---- */

static void test_byte(void) {
    loom_tokenizer *t;
    CHECK_OK(loom_tokenizer_byte(&t));
    const char text[] = "a\xff\x00z"; /* any bytes, not only UTF-8 */
    int32_t *ids;
    size_t n;
    CHECK_OK(loom_tokenizer_encode(t, text, 4, LOOM_TOK_BOS | LOOM_TOK_EOS, &ids, &n));
    int32_t want[] = {256, 'a', 255, 0, 'z', 257};
    check_ids(ids, n, want, 6, "byte tokenizer");
    char *out;
    size_t olen;
    CHECK_OK(loom_tokenizer_decode(t, ids, n, &out, &olen));
    CHECK(olen == 4 && !memcmp(out, text, 4), "byte decode");
    free(ids);
    free(out);
    loom_tokenizer_free(t);
}

/* ---- reference ids ---- */

static void check_reference(const loom_tokenizer *t, const char *ref, const char *what) {
    json_t *j = load_json(ref);
    if (!j || !t) return;
    size_t k;
    json_t *e;
    json_array_foreach(j, k, e) {
        size_t len, m, n;
        char *text = entry_text(e, &len);
        int32_t *want = json_ids(json_object_get(e, "ids"), &m), *ids = NULL;
        char name[128];
        snprintf(name, sizeof name, "%s entry %zu", what, k);
        CHECK_OK(loom_tokenizer_encode(t, text, len, 0, &ids, &n));
        if (ids) check_ids(ids, n, want, m, name);
        check_roundtrip(t, text, len, name);
        free(ids);
        free(want);
        free(text);
    }
    CHECK(json_array_size(j) == 40, "%s: %zu reference entries", ref, json_array_size(j));
    json_decref(j);
}

static loom_tokenizer *gpt2, *llama2, *mistral, *tok512, *gpt2json, *llama3;

static void test_gpt2_reference(void) {
    gpt2 = load("reference/tokenizer/encoder.json");
    if (!gpt2) return;
    CHECK(!strcmp(loom_tokenizer_kind(gpt2), "bpe-bytelevel"), "kind %s", loom_tokenizer_kind(gpt2));
    CHECK(loom_tokenizer_vocab_size(gpt2) == 50257, "vocab %d", loom_tokenizer_vocab_size(gpt2));
    /* GPT-2 uses <|endoftext|> (the last id) for both */
    CHECK(loom_tokenizer_bos(gpt2) == 50256 && loom_tokenizer_eos(gpt2) == 50256, "bos/eos");
    check_reference(gpt2, "reference/tokenizer/gpt2_tokenizer_reference.json", "gpt2");
    /* the directory form of the same files */
    loom_tokenizer *d = load("data/gpt2-tokenizer");
    if (d) {
        int32_t *ids;
        size_t n;
        CHECK_OK(loom_tokenizer_encode(d, "Hello world", 11, LOOM_TOK_EOS, &ids, &n));
        int32_t want[] = {15496, 995, 50256}; /* reference README: "Hello world" -> [15496, 995] */
        check_ids(ids, n, want, 3, "gpt2 directory");
        free(ids);
    }
    loom_tokenizer_free(d);
}

static void test_llama2_reference(void) {
    llama2 = load("data/llama2-tokenizer/tokenizer.bin");
    if (!llama2) return;
    CHECK(!strcmp(loom_tokenizer_kind(llama2), "llama2c"), "kind %s", loom_tokenizer_kind(llama2));
    CHECK(loom_tokenizer_vocab_size(llama2) == 32000, "vocab %d", loom_tokenizer_vocab_size(llama2));
    CHECK(loom_tokenizer_bos(llama2) == 1 && loom_tokenizer_eos(llama2) == 2, "bos/eos");
    check_reference(llama2, "reference/tokenizer/llama2_tokenizer_reference.json", "llama2");
    /* with BOS, run.c's rule strips the dummy-prefix space after it */
    int32_t *ids;
    size_t n;
    char *out;
    size_t olen;
    CHECK_OK(loom_tokenizer_encode(llama2, "Hello world", 11, LOOM_TOK_BOS | LOOM_TOK_EOS, &ids, &n));
    int32_t want[] = {1, 15043, 3186, 2};
    check_ids(ids, n, want, 4, "llama2 bos/eos");
    CHECK_OK(loom_tokenizer_decode(llama2, ids, n, &out, &olen));
    CHECK(!strcmp(out, "Hello world"), "llama2 decode with bos: '%s'", out);
    free(ids);
    free(out);
}

/* ---- a byte-level tokenizer.json built from GPT-2's files ---- */

/* Writes dir/tokenizer.json with GPT-2's vocabulary and merges. split_form: pre-tokenize with a
 * Split(regex) step followed by ByteLevel(use_regex=false), as Llama 3 and Qwen2 files do, and
 * write merges as [left, right] pairs; otherwise ByteLevel alone with "left right" strings. */
static int write_gpt2_json(const char *dir, int split_form) {
    char p[1024];
    json_t *enc = load_json("reference/tokenizer/encoder.json");
    char *bpe = NULL;
    size_t blen = 0;
    CHECK_OK(loom_read_file(test_path(p, sizeof p, "reference/tokenizer/vocab.bpe"), &bpe, &blen));
    if (!enc || !bpe) return 0;
    json_t *merges = json_array();
    for (char *line = strchr(bpe, '\n') + 1; line && *line;) { /* skip "#version: 0.2" */
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        char *sp = strchr(line, ' ');
        if (sp && *line) {
            *sp = 0;
            if (split_form) json_array_append_new(merges, json_pack("[ss]", line, sp + 1));
            else {
                *sp = ' ';
                json_array_append_new(merges, json_string(line));
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    const char *pattern = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    json_t *pre = split_form ? json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence", "pretokenizers",
                                         "type", "Split", "pattern", "Regex", pattern, "behavior", "Isolated", "invert", 0,
                                         "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 0)
                             : json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1);
    json_t *root = json_pack("{s:s, s:[{s:i, s:s, s:b, s:b, s:b, s:b, s:b}], s:n, s:o, s:{s:s}, s:{s:s, s:n, s:o, s:o}}", "version", "1.0",
                             "added_tokens", "id", 50256, "content", "<|endoftext|>", "single_word", 0, "lstrip", 0, "rstrip", 0,
                             "normalized", 1, "special", 1, "normalizer", "pre_tokenizer", pre, "decoder", "type", "ByteLevel", "model",
                             "type", "BPE", "dropout", "vocab", enc, "merges", merges);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    int ok = root && json_dump_file(root, p, JSON_COMPACT) == 0;
    CHECK(ok, "writing %s", p);
    json_decref(root);
    free(bpe);
    return ok;
}

static void compare_with_gpt2(const loom_tokenizer *t, const char *what) {
    json_t *j = load_json("reference/tokenizer/gpt2_tokenizer_reference.json");
    size_t k;
    json_t *e;
    json_array_foreach(j, k, e) {
        size_t len, n1, n2;
        char *text = entry_text(e, &len);
        int32_t *a = NULL, *b = NULL;
        CHECK_OK(loom_tokenizer_encode(gpt2, text, len, 0, &a, &n1));
        CHECK_OK(loom_tokenizer_encode(t, text, len, 0, &b, &n2));
        char name[128];
        snprintf(name, sizeof name, "%s entry %zu", what, k);
        if (!strcmp(text, "<|endoftext|>")) {
            /* an added token in tokenizer.json: matched whole, unlike encoder.py's plain text */
            int32_t want[] = {50256};
            if (b) check_ids(b, n2, want, 1, name);
            CHECK(n1 == 7, "encoder.json spells <|endoftext|> out (%zu ids)", n1);
            /* and, being the eos token, it decodes to no text */
            char *out = NULL;
            size_t olen = 9;
            CHECK_OK(loom_tokenizer_decode(t, b, n2, &out, &olen));
            CHECK(out && olen == 0, "special token decodes to nothing (%zu bytes)", olen);
            free(out);
        } else {
            if (a && b) check_ids(b, n2, a, n1, name);
            check_roundtrip(t, text, len, name);
        }
        free(a);
        free(b);
        free(text);
    }
    json_decref(j);
}

static void test_bytelevel_json(void) {
    if (!gpt2) return;
    char dir[512], p[1024];
    snprintf(dir, sizeof dir, "%s/gpt2a", tmpdir);
    mkdir(dir, 0700);
    if (write_gpt2_json(dir, 0)) {
        snprintf(p, sizeof p, "%s/tokenizer.json", dir);
        loom_tokenizer *t = NULL;
        CHECK_OK(loom_tokenizer_load(&t, p));
        if (t) {
            CHECK(!strcmp(loom_tokenizer_kind(t), "bpe-bytelevel"), "kind %s", loom_tokenizer_kind(t));
            CHECK(loom_tokenizer_vocab_size(t) == 50257, "vocab %d", loom_tokenizer_vocab_size(t));
            CHECK(loom_tokenizer_eos(t) == 50256, "eos %d", loom_tokenizer_eos(t));
            compare_with_gpt2(t, "tokenizer.json ByteLevel");
        }
        gpt2json = t;
    }
    /* the Split + ByteLevel(use_regex=false) form, loaded through its directory, with a config */
    snprintf(dir, sizeof dir, "%s/gpt2b", tmpdir);
    mkdir(dir, 0700);
    if (write_gpt2_json(dir, 1)) {
        snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
        write_text(p, "{\"bos_token\": \"<|endoftext|>\", \"eos_token\": {\"content\": \"<|endoftext|>\"}, \"pad_token\": \"<|endoftext|>\"}");
        loom_tokenizer *t = NULL;
        CHECK_OK(loom_tokenizer_load(&t, dir));
        if (t) {
            CHECK(loom_tokenizer_bos(t) == 50256 && loom_tokenizer_eos(t) == 50256 && loom_tokenizer_pad(t) == 50256,
                  "config tokens %d %d %d", loom_tokenizer_bos(t), loom_tokenizer_eos(t), loom_tokenizer_pad(t));
            compare_with_gpt2(t, "tokenizer.json Split+ByteLevel");
        }
        loom_tokenizer_free(t);
    }
}

/* ---- Mistral tokenizer.json against a naive rank-ordered BPE ---- */

/* Hugging Face BPE as written in the tokenizers documentation, one merge at a time: the text with
 * spaces as U+2581 and the prefix U+2581 (Metaspace prepend_scheme "first" adds it unless the text
 * already starts with one), one symbol per character (or its <0xNN> tokens when the character is
 * not in the vocabulary), then repeatedly the adjacent pair with the lowest merge rank, leftmost
 * first. Returns the ids. */
static int32_t *naive_hf_bpe(json_t *vocab, json_t *ranks, const char *text, size_t len, size_t *n) {
    const char *sp = "\xE2\x96\x81";
    char *s = malloc(3 * len + 4);
    size_t k = 0;
    if (len > 0 && text[0] != ' ') memcpy(s, sp, 3), k = 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') memcpy(s + k, sp, 3), k += 3;
        else s[k++] = text[i];
    }
    char **sym = malloc((k + 1) * sizeof *sym);
    size_t ns = 0;
    for (size_t i = 0; i < k;) {
        unsigned char c = (unsigned char)s[i];
        size_t cl = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        char ch[8];
        memcpy(ch, s + i, cl);
        ch[cl] = 0;
        if (json_object_get(vocab, ch)) sym[ns++] = strdup(ch);
        else
            for (size_t b = 0; b < cl; b++) {
                char name[8];
                snprintf(name, sizeof name, "<0x%02X>", (unsigned char)ch[b]);
                sym[ns++] = strdup(name);
            }
        i += cl;
    }
    for (;;) {
        long best = -1, best_rank = 0;
        for (size_t i = 0; i + 1 < ns; i++) {
            char key[512];
            snprintf(key, sizeof key, "%s %s", sym[i], sym[i + 1]);
            json_t *r = json_object_get(ranks, key);
            if (r && (best < 0 || json_integer_value(r) < best_rank)) best = (long)i, best_rank = (long)json_integer_value(r);
        }
        if (best < 0) break;
        char *m = malloc(strlen(sym[best]) + strlen(sym[best + 1]) + 1);
        strcpy(m, sym[best]);
        strcat(m, sym[best + 1]);
        free(sym[best]);
        free(sym[best + 1]);
        sym[best] = m;
        memmove(sym + best + 1, sym + best + 2, (ns - (size_t)best - 2) * sizeof *sym);
        ns--;
    }
    int32_t *ids = malloc((ns + 1) * sizeof *ids);
    for (size_t i = 0; i < ns; i++) {
        ids[i] = (int32_t)json_integer_value(json_object_get(vocab, sym[i]));
        free(sym[i]);
    }
    free(sym);
    free(s);
    *n = ns;
    return ids;
}

static void test_mistral(void) {
    mistral = load("data/mistral-tokenizer");
    json_t *root = load_json("data/mistral-tokenizer/tokenizer.json");
    if (!mistral || !root) {
        json_decref(root);
        return;
    }
    CHECK(!strcmp(loom_tokenizer_kind(mistral), "bpe-sentencepiece"), "kind %s", loom_tokenizer_kind(mistral));
    CHECK(loom_tokenizer_vocab_size(mistral) == 32000, "vocab %d", loom_tokenizer_vocab_size(mistral));
    CHECK(loom_tokenizer_bos(mistral) == 1 && loom_tokenizer_eos(mistral) == 2, "bos %d eos %d", loom_tokenizer_bos(mistral),
          loom_tokenizer_eos(mistral));
    json_t *vocab = json_object_get(json_object_get(root, "model"), "vocab");
    json_t *ranks = json_object();
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(json_object_get(root, "model"), "merges"), i, x) json_object_set_new(ranks, json_string_value(x), json_integer((json_int_t)i));

    json_t *ref = load_json("reference/tokenizer/llama2_tokenizer_reference.json");
    json_array_foreach(ref, i, x) {
        size_t len, n1, n2;
        char *text = entry_text(x, &len);
        int32_t *want = naive_hf_bpe(vocab, ranks, text, len, &n1), *got = NULL;
        CHECK_OK(loom_tokenizer_encode(mistral, text, len, 0, &got, &n2));
        char name[128];
        snprintf(name, sizeof name, "mistral vs naive BPE, entry %zu", i);
        if (got) check_ids(got, n2, want, n1, name);
        /* Round trip. The decoder strips one leading space; Metaspace "first" only adds the prefix
         * when the text does not start with a space, so such texts come back one space shorter
         * (as with the tokenizers library itself). */
        char *out = NULL;
        size_t olen = 0;
        CHECK_OK(loom_tokenizer_decode(mistral, got, n2, &out, &olen));
        size_t skip = len > 0 && text[0] == ' ' ? 1 : 0;
        CHECK(out && olen + skip == len && !memcmp(out, text + skip, olen), "%s: round trip gave '%s'", name, out ? out : "");
        free(out);
        free(want);
        free(got);
        free(text);
    }
    json_decref(ref);

    /* a slice of tinyshakespeare (the naive encoder is quadratic) */
    size_t slen;
    char *sh = shakespeare(&slen);
    if (sh) {
        size_t n1, n2, len = slen < 1500 ? slen : 1500;
        int32_t *want = naive_hf_bpe(vocab, ranks, sh, len, &n1), *got = NULL;
        CHECK_OK(loom_tokenizer_encode(mistral, sh, len, 0, &got, &n2));
        if (got) check_ids(got, n2, want, n1, "mistral vs naive BPE, tinyshakespeare[0:1500]");
        free(want);
        free(got);
    }
    free(sh);

    /* byte fallback: characters outside the vocabulary become <0xNN> = id 3 + byte */
    const char *rare[] = {"\xE9\xBE\x98" /* U+9F98 */, "\xF0\x9F\xA6\x99" /* U+1F999 */};
    for (int r = 0; r < 2; r++) {
        CHECK(json_object_get(vocab, rare[r]) == NULL, "test premise: %s is not in the vocabulary", rare[r]);
        char text[16];
        snprintf(text, sizeof text, "a%s", rare[r]);
        int32_t *got = NULL;
        size_t n = 0, bl = strlen(rare[r]);
        CHECK_OK(loom_tokenizer_encode(mistral, text, strlen(text), 0, &got, &n));
        int32_t want[8];
        want[0] = (int32_t)json_integer_value(json_object_get(vocab, "\xE2\x96\x81" "a"));
        for (size_t b = 0; b < bl; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", (unsigned char)rare[r][b]);
            CHECK(json_integer_value(json_object_get(vocab, name)) == 3 + (unsigned char)rare[r][b], "byte token %s", name);
            want[1 + b] = 3 + (unsigned char)rare[r][b];
        }
        if (got) check_ids(got, n, want, 1 + bl, "mistral byte fallback");
        /* streaming: nothing comes out until the character is complete */
        loom_detok *d;
        CHECK_OK(loom_detok_create(&d, mistral));
        char acc[64] = "", piece[64];
        size_t pn;
        for (size_t k = 0; k < n; k++) {
            CHECK_OK(loom_detok_push(d, got[k], piece, sizeof piece, &pn));
            CHECK(utf8_ok(piece, pn), "streamed piece %zu is valid UTF-8", k);
            if (k >= 1 && k < n - 1) CHECK(pn == 0, "partial character held back (push %zu gave %zu bytes)", k, pn);
            strcat(acc, piece);
        }
        CHECK_OK(loom_detok_flush(d, piece, sizeof piece, &pn));
        CHECK(pn == 0, "nothing left to flush");
        CHECK(!strcmp(acc, text), "streamed '%s' vs '%s'", acc, text);
        loom_detok_free(d);
        free(got);
    }
    /* added tokens in the text are matched whole */
    int32_t *got = NULL;
    size_t n = 0;
    CHECK_OK(loom_tokenizer_encode(mistral, "<s>a</s>", 8, 0, &got, &n));
    CHECK(n == 3 && got && got[0] == 1 && got[2] == 2, "added tokens matched (%zu ids)", n);
    free(got);
    json_decref(ranks);
    json_decref(root);
}

/* ---- llama2.c tok512.bin against run.c's greedy merge, written naively ---- */

typedef struct {
    int n;
    char **s;
    int *len;
    float *score;
} bin_vocab;

static int bin_find(const bin_vocab *v, const char *s, int len) {
    for (int i = 0; i < v->n; i++)
        if (v->len[i] == len && !memcmp(v->s[i], s, (size_t)len)) return i;
    return -1;
}

/* run.c's encode: " " + text, each UTF-8 character looked up (else its bytes + 3), then merge the
 * adjacent pair whose concatenation has the highest score, first such pair on ties, until none. */
static int *naive_llama2c(const bin_vocab *v, const char *text, size_t len, size_t *n) {
    int *ids = malloc((len + 2) * sizeof *ids);
    size_t k = 0;
    char *s = malloc(len + 2);
    s[0] = ' ';
    memcpy(s + 1, text, len);
    size_t sl = len ? len + 1 : 0;
    for (size_t i = 0; i < sl;) {
        unsigned char c = (unsigned char)s[i];
        int cl = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
        int id = bin_find(v, s + i, cl);
        if (id >= 259) ids[k++] = id;
        else
            for (int b = 0; b < cl; b++) ids[k++] = 3 + (unsigned char)s[i + b];
        i += (size_t)cl;
    }
    for (;;) {
        float best = -1e30f;
        long at = -1;
        int best_id = -1;
        for (size_t i = 0; i + 1 < k; i++) {
            char buf[256];
            int la = v->len[ids[i]], lb = v->len[ids[i + 1]];
            if (ids[i] < 259 || ids[i + 1] < 259 || la + lb > 255) continue;
            memcpy(buf, v->s[ids[i]], (size_t)la);
            memcpy(buf + la, v->s[ids[i + 1]], (size_t)lb);
            int id = bin_find(v, buf, la + lb);
            if (id >= 259 && v->score[id] > best) best = v->score[id], at = (long)i, best_id = id;
        }
        if (at < 0) break;
        ids[at] = best_id;
        memmove(ids + at + 1, ids + at + 2, (k - (size_t)at - 2) * sizeof *ids);
        k--;
    }
    free(s);
    *n = k;
    return ids;
}

static void test_tok512(void) {
    tok512 = load("data/stories260K/tok512.bin");
    char p[1024], *data = NULL;
    size_t size = 0;
    CHECK_OK(loom_read_file(test_path(p, sizeof p, "data/stories260K/tok512.bin"), &data, &size));
    if (!tok512 || !data) {
        free(data);
        return;
    }
    CHECK(loom_tokenizer_vocab_size(tok512) == 512, "vocab %d", loom_tokenizer_vocab_size(tok512));
    bin_vocab v = {0, calloc(512, sizeof(char *)), calloc(512, sizeof(int)), calloc(512, sizeof(float))};
    for (size_t pos = 4; pos + 8 <= size && v.n < 512; v.n++) {
        memcpy(&v.score[v.n], data + pos, 4);
        memcpy(&v.len[v.n], data + pos + 4, 4);
        v.s[v.n] = data + pos + 8;
        pos += 8 + (size_t)v.len[v.n];
    }
    json_t *ref = load_json("reference/tokenizer/llama2_tokenizer_reference.json");
    size_t i;
    json_t *x;
    json_array_foreach(ref, i, x) {
        size_t len, n1, n2;
        char *text = entry_text(x, &len);
        int *want = naive_llama2c(&v, text, len, &n1);
        int32_t *got = NULL;
        CHECK_OK(loom_tokenizer_encode(tok512, text, len, 0, &got, &n2));
        int32_t *w32 = malloc((n1 + 1) * sizeof *w32);
        for (size_t k = 0; k < n1; k++) w32[k] = want[k];
        char name[64];
        snprintf(name, sizeof name, "tok512 vs run.c greedy, entry %zu", i);
        if (got) check_ids(got, n2, w32, n1, name);
        check_roundtrip(tok512, text, len, name);
        free(w32);
        free(want);
        free(got);
        free(text);
    }
    json_decref(ref);
    free(v.s);
    free(v.len);
    free(v.score);
    free(data);
}

/* ---- Llama 2 as a tokenizer.json in the Prepend/Replace normalizer form ---- */

typedef struct {
    float score;
    int id;
} piece_rank;

static int by_score(const void *x, const void *y) {
    const piece_rank *a = x, *b = y;
    return a->score != b->score ? (a->score > b->score ? -1 : 1) : a->id - b->id;
}

/* Converts llama2.c's tokenizer.bin the way Hugging Face converts a SentencePiece BPE model: pieces
 * with U+2581 for spaces, merges = every split of a piece into two pieces, ordered by the merged
 * piece's score; normalizer Prepend("▁") + Replace(" ", "▁"), byte fallback, and the decoder that
 * undoes it. The SentencePiece reference ids must come out of it unchanged. */
static void test_llama2_hf_json(void) {
    char p[1024], *data = NULL;
    size_t size = 0;
    CHECK_OK(loom_read_file(test_path(p, sizeof p, "data/llama2-tokenizer/tokenizer.bin"), &data, &size));
    if (!data) return;
    int n = 32000;
    char **piece = calloc((size_t)n, sizeof *piece);
    piece_rank *order = calloc((size_t)n, sizeof *order);
    json_t *vocab = json_object();
    size_t pos = 4;
    for (int id = 0; id < n && pos + 8 <= size; id++) {
        float sc;
        int32_t len;
        memcpy(&sc, data + pos, 4);
        memcpy(&len, data + pos + 4, 4);
        char *s = malloc(3 * (size_t)len + 8);
        size_t k = 0;
        if (id == 1) strcpy(s, "<s>"), k = 3;
        else if (id == 2) strcpy(s, "</s>"), k = 4;
        else
            for (int32_t i = 0; i < len; i++) {
                if (data[pos + 8 + i] == ' ') memcpy(s + k, "\xE2\x96\x81", 3), k += 3;
                else s[k++] = data[pos + 8 + i];
            }
        s[k] = 0;
        piece[id] = s;
        order[id] = (piece_rank){sc, id};
        json_object_set_new(vocab, s, json_integer(id));
        pos += 8 + (size_t)len;
    }
    qsort(order + 259, (size_t)n - 259, sizeof *order, by_score);
    json_t *merges = json_array();
    for (int r = 259; r < n; r++) {
        const char *s = piece[order[r].id];
        size_t len = strlen(s);
        for (size_t k = 1; k < len; k++) {
            char a[128], b[128];
            if (k >= sizeof a || len - k >= sizeof b) continue;
            memcpy(a, s, k), a[k] = 0;
            strcpy(b, s + k);
            json_t *ia = json_object_get(vocab, a), *ib = json_object_get(vocab, b);
            if (!ia || !ib || json_integer_value(ia) < 259 || json_integer_value(ib) < 259) continue;
            char m[256];
            snprintf(m, sizeof m, "%s %s", a, b);
            json_array_append_new(merges, json_string(m));
        }
    }
    const char *sp = "\xE2\x96\x81";
    json_t *root = json_pack(
        "{s:[{s:i,s:s,s:b},{s:i,s:s,s:b},{s:i,s:s,s:b}], s:{s:s,s:[{s:s,s:s},{s:s,s:{s:s},s:s}]}, s:n, "
        "s:{s:s,s:[{s:s,s:{s:s},s:s},{s:s},{s:s},{s:s,s:s,s:i,s:i}]}, s:{s:s,s:s,s:b,s:b,s:o,s:o}}",
        "added_tokens", "id", 0, "content", "<unk>", "special", 1, "id", 1, "content", "<s>", "special", 1, "id", 2, "content", "</s>",
        "special", 1, "normalizer", "type", "Sequence", "normalizers", "type", "Prepend", "prepend", sp, "type", "Replace", "pattern",
        "String", " ", "content", sp, "pre_tokenizer", "decoder", "type", "Sequence", "decoders", "type", "Replace", "pattern", "String", sp,
        "content", " ", "type", "ByteFallback", "type", "Fuse", "type", "Strip", "content", " ", "start", 1, "stop", 0, "model", "type", "BPE",
        "unk_token", "<unk>", "byte_fallback", 1, "fuse_unk", 1, "vocab", vocab, "merges", merges);
    CHECK(root != NULL, "building the Llama 2 tokenizer.json");
    int ok = root && json_dump_file(root, tmp_path(p, sizeof p, "llama2-hf.json"), JSON_COMPACT) == 0;
    json_decref(root);
    for (int id = 0; id < n; id++) free(piece[id]);
    free(piece);
    free(order);
    free(data);
    loom_tokenizer *t = NULL;
    if (ok) CHECK_OK(loom_tokenizer_load(&t, p));
    if (!t) return;
    CHECK(!strcmp(loom_tokenizer_kind(t), "bpe-sentencepiece"), "kind %s", loom_tokenizer_kind(t));
    CHECK(loom_tokenizer_bos(t) == 1 && loom_tokenizer_eos(t) == 2, "bos/eos");
    check_reference(t, "reference/tokenizer/llama2_tokenizer_reference.json", "llama2 tokenizer.json");
    size_t slen;
    char *sh = shakespeare(&slen);
    if (sh && llama2) {
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        CHECK_OK(loom_tokenizer_encode(llama2, sh, slen, 0, &a, &na));
        CHECK_OK(loom_tokenizer_encode(t, sh, slen, 0, &b, &nb));
        if (a && b) check_ids(b, nb, a, na, "tinyshakespeare: Llama 2 tokenizer.json vs tokenizer.bin");
        free(a);
        free(b);
    }
    free(sh);
    loom_tokenizer_free(t);
}

/* ---- Llama 3's tiktoken file against a naive tiktoken encoder ---- */

static void hex_key(const unsigned char *b, size_t n, char *out) {
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", b[i]);
    out[2 * n] = 0;
}

/* tiktoken's procedure: split with the pattern of Llama 3's tokenizer.py; a piece that is a token
 * is that token; otherwise start from single bytes and merge the adjacent pair whose concatenation
 * has the lowest rank, leftmost first. ranks: hex of the token bytes -> rank. */
static size_t naive_tiktoken(json_t *ranks, const char *text, size_t len, int32_t *out) {
    const char *pat = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    int err;
    PCRE2_SIZE eoff;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &eoff, NULL);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    size_t n = 0, pos = 0;
    while (pos < len && pcre2_match(re, (PCRE2_SPTR)text, len, pos, 0, md, NULL) > 0) {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t a = ov[0], b = ov[1];
        unsigned char *piece = (unsigned char *)text + a;
        size_t pl = b - a, starts[512], np = 0;
        char key[1100];
        if (pl > 500) break; /* not in these texts */
        hex_key(piece, pl, key);
        if (json_object_get(ranks, key)) {
            out[n++] = (int32_t)json_integer_value(json_object_get(ranks, key));
            pos = b;
            continue;
        }
        for (size_t i = 0; i <= pl; i++) starts[np++] = i; /* part k is piece[starts[k]..starts[k+1]) */
        for (;;) {
            long best = -1, best_rank = 0;
            for (size_t k = 0; k + 2 < np; k++) {
                hex_key(piece + starts[k], starts[k + 2] - starts[k], key);
                json_t *r = json_object_get(ranks, key);
                if (r && (best < 0 || json_integer_value(r) < best_rank)) best = (long)k, best_rank = (long)json_integer_value(r);
            }
            if (best < 0) break;
            memmove(starts + best + 1, starts + best + 2, (np - (size_t)best - 2) * sizeof *starts);
            np--;
        }
        for (size_t k = 0; k + 1 < np; k++) {
            hex_key(piece + starts[k], starts[k + 1] - starts[k], key);
            out[n++] = (int32_t)json_integer_value(json_object_get(ranks, key));
        }
        pos = b;
    }
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return n;
}

static void test_llama3(void) {
    llama3 = load("data/llama3-tokenizer");
    char p[1024], *data = NULL;
    size_t size = 0;
    CHECK_OK(loom_read_file(test_path(p, sizeof p, "data/llama3-tokenizer/tokenizer.model"), &data, &size));
    if (!llama3 || !data) {
        free(data);
        return;
    }
    CHECK(!strcmp(loom_tokenizer_kind(llama3), "tiktoken"), "kind %s", loom_tokenizer_kind(llama3));
    /* SOURCE.md: 128,000 ranks + 256 specials; <|begin_of_text|> = 128000, <|end_of_text|> = 128001 */
    CHECK(loom_tokenizer_vocab_size(llama3) == 128256, "vocab %d", loom_tokenizer_vocab_size(llama3));
    CHECK(loom_tokenizer_bos(llama3) == 128000 && loom_tokenizer_eos(llama3) == 128001, "bos/eos");
    json_t *ranks = json_object();
    for (char *line = data; line && *line;) {
        char *nl = strchr(line, '\n'), *sp = strchr(line, ' ');
        unsigned char raw[600];
        size_t rl = 0;
        /* base64, decoded here independently of the library */
        static const char *abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        uint32_t acc = 0;
        int bits = 0;
        for (char *c = line; c < sp && *c != '='; c++) {
            acc = acc << 6 | (uint32_t)(strchr(abc, *c) - abc);
            bits += 6;
            if (bits >= 8) raw[rl++] = (unsigned char)(acc >> (bits - 8)), bits -= 8;
        }
        char key[1300];
        hex_key(raw, rl, key);
        json_object_set_new(ranks, key, json_integer(atol(sp + 1)));
        line = nl ? nl + 1 : NULL;
    }
    int32_t *want = malloc(40000 * sizeof *want);
    json_t *ref = load_json("reference/tokenizer/llama2_tokenizer_reference.json");
    size_t i;
    json_t *x;
    json_array_foreach(ref, i, x) {
        size_t len, n;
        char *text = entry_text(x, &len);
        size_t m = naive_tiktoken(ranks, text, len, want);
        int32_t *got = NULL;
        CHECK_OK(loom_tokenizer_encode(llama3, text, len, 0, &got, &n));
        char name[64];
        snprintf(name, sizeof name, "llama3 vs naive tiktoken, entry %zu", i);
        if (got) check_ids(got, n, want, m, name);
        check_roundtrip(llama3, text, len, name);
        free(got);
        free(text);
    }
    json_decref(ref);
    size_t slen;
    char *sh = shakespeare(&slen);
    if (sh) {
        size_t n, len = slen < 20000 ? slen : 20000;
        size_t m = naive_tiktoken(ranks, sh, len, want);
        int32_t *got = NULL;
        CHECK_OK(loom_tokenizer_encode(llama3, sh, len, 0, &got, &n));
        if (got) check_ids(got, n, want, m, "llama3 vs naive tiktoken, tinyshakespeare[0:20000]");
        free(got);
    }
    free(sh);
    /* special-token text stays text (Meta's tokenizer.py encodes with no allowed specials) */
    int32_t *got = NULL;
    size_t n = 0;
    CHECK_OK(loom_tokenizer_encode(llama3, "<|begin_of_text|>hi", 19, LOOM_TOK_BOS, &got, &n));
    int plain = n > 2 && got && got[0] == 128000;
    for (size_t k = 1; k < n && got; k++) plain &= got[k] < 128000;
    CHECK(plain, "special-token text encoded as text (%zu ids)", n);
    free(got);
    free(want);
    json_decref(ranks);
    free(data);
}

/* ---- looking tokens up by name ---- */

static int32_t first_id(const loom_tokenizer *t, const char *text) {
    int32_t *ids = NULL, id = -2;
    size_t n = 0;
    if (loom_tokenizer_encode(t, text, strlen(text), 0, &ids, &n) == LOOM_OK && n == 1) id = ids[0];
    free(ids);
    return id;
}

static void test_token_id(void) {
    if (gpt2) {
        CHECK(loom_tokenizer_token_id(gpt2, "<|endoftext|>") == 50256, "gpt2 <|endoftext|>");
        /* the file's spelling: U+0120 stands for the space byte */
        CHECK(loom_tokenizer_token_id(gpt2, "\xC4\xA0the") == first_id(gpt2, " the"), "gpt2 \"\\u0120the\"");
        CHECK(loom_tokenizer_token_id(gpt2, "no such token") == -1, "gpt2 absent");
    }
    if (llama2) {
        CHECK(loom_tokenizer_token_id(llama2, "<s>") == 1 && loom_tokenizer_token_id(llama2, "</s>") == 2, "llama2 specials");
        CHECK(loom_tokenizer_token_id(llama2, "<0x0A>") == 3 + 0x0A, "llama2 byte token");
        CHECK(loom_tokenizer_token_id(llama2, " Hello") == first_id(llama2, "Hello"), "llama2 piece");
    }
    if (mistral) {
        CHECK(loom_tokenizer_token_id(mistral, "</s>") == 2, "mistral </s>");
        CHECK(loom_tokenizer_token_id(mistral, "\xE2\x96\x81Hello") == first_id(mistral, "Hello"), "mistral piece");
    }
    if (llama3) {
        /* Llama 3's tokenizer.py: 12 named specials from 128000, then reserved 2..245 up to 128255 */
        CHECK(loom_tokenizer_token_id(llama3, "<|eot_id|>") == 128009, "llama3 <|eot_id|>");
        CHECK(loom_tokenizer_token_id(llama3, "<|reserved_special_token_2|>") == 128012, "llama3 reserved 2");
        CHECK(loom_tokenizer_token_id(llama3, "<|reserved_special_token_245|>") == 128255, "llama3 reserved 245");
        CHECK(loom_tokenizer_token_id(llama3, "<|reserved_special_token_246|>") == -1, "llama3 reserved 246");
    }
    loom_tokenizer *b;
    CHECK_OK(loom_tokenizer_byte(&b));
    CHECK(loom_tokenizer_token_id(b, "<|eos|>") == 257 && loom_tokenizer_token_id(b, "A") == 'A', "byte tokens");
    loom_tokenizer_free(b);
}

/* ---- tinyshakespeare through every tokenizer ---- */

static void test_shakespeare(void) {
    size_t len;
    char *sh = shakespeare(&len);
    if (!sh) return;
    loom_tokenizer *byte;
    CHECK_OK(loom_tokenizer_byte(&byte));
    loom_tokenizer *all[] = {byte, gpt2, gpt2json, llama2, tok512, mistral, llama3};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) {
        if (!all[k]) continue;
        check_roundtrip(all[k], sh, len, "tinyshakespeare");
    }
    /* the two GPT-2 routes agree on the whole text */
    if (gpt2 && gpt2json) {
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        CHECK_OK(loom_tokenizer_encode(gpt2, sh, len, 0, &a, &na));
        CHECK_OK(loom_tokenizer_encode(gpt2json, sh, len, 0, &b, &nb));
        if (a && b) check_ids(b, nb, a, na, "tinyshakespeare: tokenizer.json vs encoder.json");
        free(a);
        free(b);
    }
    /* random byte tokens through the streaming decoder: every piece it emits is valid UTF-8 */
    if (llama2) {
        loom_rng rng;
        loom_rng_init(&rng, 5, 1);
        loom_detok *d;
        CHECK_OK(loom_detok_create(&d, llama2));
        int valid = 1;
        size_t total = 0, pn;
        char piece[256];
        for (int k = 0; k < 5000; k++) {
            /* bias towards lead and continuation bytes so that long sequences occur */
            int32_t b = (int32_t)(loom_rng_below(&rng, 4) == 0 ? loom_rng_below(&rng, 256) : 0x80 + loom_rng_below(&rng, 0x78));
            CHECK_OK(loom_detok_push(d, 3 + b, piece, sizeof piece, &pn));
            valid &= utf8_ok(piece, pn) && piece[pn] == 0;
            total += pn;
        }
        CHECK_OK(loom_detok_flush(d, piece, sizeof piece, &pn));
        valid &= utf8_ok(piece, pn);
        CHECK(valid && total > 5000, "streamed random bytes stay valid UTF-8 (%zu bytes out)", total);
        loom_detok_free(d);
    }
    /* streaming decode of llama2 ids gives the same text as whole decoding */
    if (llama2) {
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK_OK(loom_tokenizer_encode(llama2, sh, 20000, LOOM_TOK_BOS, &ids, &n));
        loom_detok *d;
        CHECK_OK(loom_detok_create(&d, llama2));
        char *acc = malloc(30000), piece[256];
        size_t al = 0, pn;
        int valid = 1;
        for (size_t k = 0; k < n; k++) {
            CHECK_OK(loom_detok_push(d, ids[k], piece, sizeof piece, &pn));
            valid &= utf8_ok(piece, pn);
            if (al + pn < 30000) memcpy(acc + al, piece, pn), al += pn;
        }
        CHECK_OK(loom_detok_flush(d, piece, sizeof piece, &pn));
        CHECK(valid && pn == 0, "streamed pieces valid, nothing left");
        CHECK(al == 20000 && !memcmp(acc, sh, 20000), "streamed decode (%zu bytes)", al);
        free(acc);
        free(ids);
        loom_detok_free(d);
    }
    loom_tokenizer_free(byte);
    free(sh);
}

/* ---- a small handmade tokenizer.json: merge order, added tokens, pre-tokenizers ---- */

static loom_tokenizer *json_tok(const char *name, const char *text) {
    char p[1024];
    write_text(tmp_path(p, sizeof p, name), text);
    loom_tokenizer *t = NULL;
    int rc = loom_tokenizer_load(&t, p);
    CHECK(rc == LOOM_OK, "loading %s: %s", name, loom_errmsg());
    return t;
}

static void expect(const loom_tokenizer *t, const char *text, const int32_t *want, size_t m, const char *what) {
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK_OK(loom_tokenizer_encode(t, text, strlen(text), 0, &ids, &n));
    if (ids) check_ids(ids, n, want, m, what);
    free(ids);
}

static void test_handmade(void) {
    /* vocab a=0 b=1 c=2 ab=3 bc=4 abc=5 " "=6 <x>=7; merges by rank: "b c" (0), "a b" (1), "a bc" (2) */
    loom_tokenizer *t = json_tok("small.json",
                                 "{\"added_tokens\":[{\"id\":7,\"content\":\"<x>\",\"special\":true,\"lstrip\":true}],"
                                 "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Isolated\"},"
                                 "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"bc\":4,\"abc\":5,\" \":6},"
                                 "\"merges\":[\"b c\",\"a b\",\"a bc\"]}}");
    if (!t) return;
    /* "abc": b+c has the lower rank, then a+bc -> abc */
    expect(t, "abc", (int32_t[]){5}, 1, "rank order");
    /* "abab": two a+b merges, leftmost first; "ab ab" is no merge */
    expect(t, "abab", (int32_t[]){3, 3}, 2, "repeated pair");
    /* "ab c": the Split on " " keeps words apart, so no "bc" across it */
    expect(t, "ab c", (int32_t[]){3, 6, 2}, 3, "split isolates");
    /* "a <x>b": <x> is added with lstrip, so it swallows the space before it */
    expect(t, "a <x>b", (int32_t[]){0, 7, 1}, 3, "added token with lstrip");
    int32_t *ids;
    size_t n;
    CHECK(loom_tokenizer_encode(t, "abd", 3, 0, &ids, &n) == LOOM_EFORMAT, "unknown character without unk: %s", loom_errmsg());
    loom_tokenizer_free(t);

    /* Metaspace with split, Digits, unk fusing: vocab ▁=0 a=1 ▁a=2 1=3 2=4 <unk>=5 */
    t = json_tok("meta.json",
                 "{\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":true},"
                 "{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"always\",\"split\":true}]},"
                 "\"decoder\":{\"type\":\"Metaspace\",\"replacement\":\"\\u2581\",\"prepend_scheme\":\"always\"},"
                 "\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"fuse_unk\":true,"
                 "\"vocab\":{\"\\u2581\":0,\"a\":1,\"\\u2581a\":2,\"1\":3,\"2\":4,\"<unk>\":5},\"merges\":[\"\\u2581 a\"]}}");
    if (!t) return;
    /* "a a12zz": Digits splits "a a" | "1" | "2" | "zz"; Metaspace (always) prefixes each piece
     * that does not start with it, and splits before each ▁: ▁a ▁a | ▁1 | ▁2 | ▁zz; the unknown
     * "zz" fuses into one <unk> */
    expect(t, "a a12zz", (int32_t[]){2, 2, 0, 3, 0, 4, 0, 5}, 8, "metaspace+digits+unk");
    loom_tokenizer_free(t);

    /* Unicode normalizers: vocab e=0 U+0301=1 é(U+00E9)=2 f=3 i=4 fi=5, merge "f i" */
    const char *model = "\"model\":{\"type\":\"BPE\",\"vocab\":{\"e\":0,\"\\u0301\":1,\"\\u00e9\":2,\"f\":3,\"i\":4,\"fi\":5},"
                        "\"merges\":[\"f i\"]}}";
    char js[512];
    snprintf(js, sizeof js, "{\"normalizer\":{\"type\":\"NFC\"},%s", model);
    t = json_tok("nfc.json", js);
    if (!t) return;
    /* NFC composes e + U+0301 into U+00E9; the compatibility ligature U+FB01 stays (and is unknown) */
    expect(t, "e\xCC\x81", (int32_t[]){2}, 1, "NFC composes");
    expect(t, "\xC3\xA9", (int32_t[]){2}, 1, "NFC keeps precomposed");
    CHECK(loom_tokenizer_encode(t, "\xEF\xAC\x81", 3, 0, &ids, &n) == LOOM_EFORMAT, "NFC leaves U+FB01");
    loom_tokenizer_free(t);
    snprintf(js, sizeof js, "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKD\"}]},%s", model);
    t = json_tok("nfkd.json", js);
    if (!t) return;
    /* NFKD decomposes U+00E9 to e + U+0301 and U+FB01 to "fi" */
    expect(t, "\xC3\xA9", (int32_t[]){0, 1}, 2, "NFKD decomposes");
    expect(t, "\xEF\xAC\x81", (int32_t[]){5}, 1, "NFKD expands the ligature");
    loom_tokenizer_free(t);
}

/* ---- malformed files and input ---- */

static void expect_load_error(const char *name, const char *content, int code, const char *needle) {
    char p[1024];
    write_text(tmp_path(p, sizeof p, name), content);
    loom_tokenizer *t = (loom_tokenizer *)1;
    int rc = loom_tokenizer_load(&t, p);
    CHECK(rc == code && t == NULL, "%s: rc %d (want %d): %s", name, rc, code, loom_errmsg());
    CHECK(strstr(loom_errmsg(), needle) != NULL, "%s: message '%s' should mention '%s'", name, loom_errmsg(), needle);
    if (rc == LOOM_OK) loom_tokenizer_free(t);
}

static void test_malformed(void) {
    char p[1024], src[1024];
    /* truncated tokenizer.bin, cut inside a token and inside the header */
    char *data = NULL;
    size_t size = 0;
    CHECK_OK(loom_read_file(test_path(src, sizeof src, "data/stories260K/tok512.bin"), &data, &size));
    if (data) {
        size_t cuts[] = {3000, 2, 7};
        for (int k = 0; k < 3; k++) {
            CHECK_OK(loom_write_file_atomic(tmp_path(p, sizeof p, "cut.bin"), data, cuts[k]));
            loom_tokenizer *t = NULL;
            int rc = loom_tokenizer_load(&t, p);
            CHECK(rc == LOOM_EFORMAT && !t, "truncated tokenizer.bin (%zu bytes): rc %d", cuts[k], rc);
            CHECK(strstr(loom_errmsg(), "cut.bin") != NULL, "message names the file: %s", loom_errmsg());
        }
        /* every cut and single-byte corruption: an error or a usable tokenizer, never a crash */
        int bad_cut = 0;
        for (size_t cut = 0; cut < size; cut += 37) {
            CHECK_OK(loom_write_file_atomic(tmp_path(p, sizeof p, "cut.bin"), data, cut));
            loom_tokenizer *t = NULL;
            int rc = loom_tokenizer_load(&t, p);
            bad_cut += !(rc == LOOM_EFORMAT || (rc == LOOM_OK && loom_tokenizer_vocab_size(t) < 512));
            loom_tokenizer_free(t);
        }
        CHECK(bad_cut == 0, "%d truncations of tok512.bin misread", bad_cut);
        loom_rng rng;
        loom_rng_init(&rng, 11, 0);
        int crashed_never = 1;
        for (int k = 0; k < 40; k++) {
            size_t at = loom_rng_below(&rng, (uint32_t)size);
            char saved = data[at];
            data[at] = (char)loom_rng_below(&rng, 256);
            CHECK_OK(loom_write_file_atomic(tmp_path(p, sizeof p, "flip.bin"), data, size));
            data[at] = saved;
            loom_tokenizer *t = NULL;
            if (loom_tokenizer_load(&t, p) == LOOM_OK) {
                int32_t *ids = NULL;
                size_t n = 0;
                char *out = NULL;
                size_t olen;
                crashed_never &= loom_tokenizer_encode(t, "Once upon a time", 16, 0, &ids, &n) == LOOM_OK;
                if (ids) crashed_never &= loom_tokenizer_decode(t, ids, n, &out, &olen) == LOOM_OK;
                free(ids);
                free(out);
            }
            loom_tokenizer_free(t);
        }
        CHECK(crashed_never, "a corrupted tok512.bin that loads still encodes and decodes");
        /* a byte token renamed: ids 3..258 must be <0x00>..<0xFF> */
        size_t pos = 4;
        for (int k = 0; k < 3; k++) {
            int32_t l;
            memcpy(&l, data + pos + 4, 4);
            pos += 8 + (size_t)l;
        }
        memcpy(data + pos + 8, "<0x41>", 6); /* token 3 */
        CHECK_OK(loom_write_file_atomic(p, data, size));
        loom_tokenizer *t = NULL;
        CHECK(loom_tokenizer_load(&t, p) == LOOM_EFORMAT && !t, "wrong byte token accepted");
        CHECK(strstr(loom_errmsg(), "<0x00>") != NULL, "message: %s", loom_errmsg());
        free(data);
    }
    /* every prefix of a tokenizer.json is malformed JSON */
    const char *full = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}}";
    int prefix_ok = 1;
    for (size_t cut = 0; cut < strlen(full); cut++) {
        CHECK_OK(loom_write_file_atomic(tmp_path(p, sizeof p, "prefix.json"), full, cut));
        loom_tokenizer *t = NULL;
        prefix_ok &= loom_tokenizer_load(&t, p) == LOOM_EFORMAT && t == NULL;
    }
    CHECK(prefix_ok, "truncated tokenizer.json rejected");
    expect_load_error("garbage.bin", "this is not a tokenizer at all, just text", LOOM_EFORMAT, "garbage.bin");
    expect_load_error("bad.json", "{\"model\": {\"type\": \"BPE\", ", LOOM_EFORMAT, "line");
    expect_load_error("nomodel.json", "{\"version\": \"1.0\"}", LOOM_EFORMAT, "model");
    expect_load_error("novocab.json", "{\"model\": {\"type\": \"BPE\", \"merges\": []}}", LOOM_EFORMAT, "vocab");
    expect_load_error("unknown.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a c\"]}}", LOOM_EFORMAT,
                      "\"c\" is not in the vocabulary");
    expect_load_error("nomerged.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}", LOOM_EFORMAT,
                      "merged token");
    expect_load_error("badmerge.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"ab\"]}}", LOOM_EFORMAT, "merges[0]");
    expect_load_error("badid.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}", LOOM_EFORMAT, "not an integer");
    expect_load_error("dupid.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", LOOM_EFORMAT, "twice");
    expect_load_error("wordpiece.json", "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", LOOM_EUNSUPPORTED, "WordPiece");
    expect_load_error("badregex.json",
                      "{\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},\"behavior\":\"Isolated\"},"
                      "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                      LOOM_EFORMAT, "regex");
    expect_load_error("lower.json", "{\"normalizer\":{\"type\":\"Lowercase\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                      LOOM_EUNSUPPORTED, "Lowercase");
    /* tokenizer_config.json naming a token that does not exist */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/badcfg", tmpdir);
    mkdir(dir, 0700);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    write_text(p, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"<s>\":1},\"merges\":[]}}");
    loom_tokenizer *t = NULL;
    CHECK_OK(loom_tokenizer_load(&t, dir));
    CHECK(t && loom_tokenizer_bos(t) == 1, "without a config, <s> is taken as bos");
    loom_tokenizer_free(t);
    snprintf(p, sizeof p, "%s/tokenizer_config.json", dir);
    write_text(p, "{\"bos_token\": null, \"eos_token\": \"a\"}");
    t = NULL;
    CHECK_OK(loom_tokenizer_load(&t, dir));
    CHECK(t && loom_tokenizer_bos(t) == -1 && loom_tokenizer_eos(t) == 0, "config: null bos, eos by name");
    loom_tokenizer_free(t);
    write_text(p, "{\"bos_token\": \"<nope>\"}");
    CHECK(loom_tokenizer_load(&t, dir) == LOOM_EFORMAT && !t, "config with unknown bos: %s", loom_errmsg());
    CHECK(strstr(loom_errmsg(), "<nope>") != NULL, "message: %s", loom_errmsg());
    /* GPT-2 pair problems */
    snprintf(dir, sizeof dir, "%s/gpt2bad", tmpdir);
    mkdir(dir, 0700);
    snprintf(p, sizeof p, "%s/encoder.json", dir);
    write_text(p, "{\"a\": 0, \"b\": 1}");
    CHECK(loom_tokenizer_load(&t, p) == LOOM_ENOTFOUND && !t, "encoder.json without vocab.bpe: %s", loom_errmsg());
    snprintf(src, sizeof src, "%s/vocab.bpe", dir);
    write_text(src, "#version: 0.2\na b c\n");
    CHECK(loom_tokenizer_load(&t, p) == LOOM_EFORMAT && !t, "bad vocab.bpe line: %s", loom_errmsg());
    CHECK(strstr(loom_errmsg(), "line 2") != NULL, "message: %s", loom_errmsg());
    write_text(src, "#version: 0.2\na x\n");
    CHECK(loom_tokenizer_load(&t, p) == LOOM_EFORMAT && !t, "unknown merge token: %s", loom_errmsg());
    CHECK(loom_tokenizer_load(&t, tmp_path(p, sizeof p, "does-not-exist")) == LOOM_ENOTFOUND && !t, "missing path");
    snprintf(dir, sizeof dir, "%s/empty", tmpdir);
    mkdir(dir, 0700);
    CHECK(loom_tokenizer_load(&t, dir) == LOOM_ENOTFOUND && !t, "empty directory: %s", loom_errmsg());

    /* invalid UTF-8 input is an error for every kind but the byte tokenizer */
    const char *bad[] = {"ok \xff", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ab\xe2\x82"};
    loom_tokenizer *kinds[] = {gpt2, llama2, mistral, gpt2json, llama3};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        if (!kinds[k]) continue;
        for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
            int32_t *ids = (int32_t *)1;
            size_t n = 7;
            int rc = loom_tokenizer_encode(kinds[k], bad[b], strlen(bad[b]), 0, &ids, &n);
            CHECK(rc == LOOM_EFORMAT && ids == NULL && n == 0, "%s accepted invalid UTF-8 case %zu", loom_tokenizer_kind(kinds[k]), b);
            CHECK(strstr(loom_errmsg(), "UTF-8") != NULL, "message: %s", loom_errmsg());
        }
        /* out-of-range ids */
        int32_t ids[] = {5, -1};
        char *out = NULL;
        size_t olen;
        CHECK(loom_tokenizer_decode(kinds[k], ids, 2, &out, &olen) == LOOM_ERANGE && !out, "negative id");
        ids[1] = loom_tokenizer_vocab_size(kinds[k]);
        CHECK(loom_tokenizer_decode(kinds[k], ids, 2, &out, &olen) == LOOM_ERANGE && !out, "id = vocab size");
    }
}

int main(void) {
    test_tmpdir(tmpdir, sizeof tmpdir);
    test_byte();
    test_gpt2_reference();
    test_llama2_reference();
    test_bytelevel_json();
    test_mistral();
    test_tok512();
    test_llama2_hf_json();
    test_llama3();
    test_token_id();
    test_shakespeare();
    test_handmade();
    test_malformed();
    loom_tokenizer_free(gpt2);
    loom_tokenizer_free(llama2);
    loom_tokenizer_free(mistral);
    loom_tokenizer_free(tok512);
    loom_tokenizer_free(gpt2json);
    loom_tokenizer_free(llama3);
    CHECK(test_rmtree(tmpdir) == 0, "scratch directory %s removed", tmpdir);
    return test_summary();
}
