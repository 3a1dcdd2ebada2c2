/* loom tokenize / detokenize / bench tokenize: text <-> ids from the command line. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "loom/core.h"
#include "loom/tokenizer.h"

/* Reads all of stdin; NULL (message printed) on failure. */
static char *read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t k = fread(buf + n, 1, cap - n, stdin);
        n += k;
        if (k == 0) break;
        if (n == cap) {
            char *g = realloc(buf, cap * 2 + 1);
            if (!g) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = g;
            cap *= 2;
        }
    }
    if (!buf) {
        fprintf(stderr, "loom: out of memory reading stdin\n");
        return NULL;
    }
    if (ferror(stdin)) {
        fprintf(stderr, "loom: cannot read stdin: %s\n", strerror(errno));
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static int load(loom_tokenizer **t, const char *path, const char *cmd) {
    if (!path) {
        fprintf(stderr, "loom %s: --tokenizer PATH is required (see --help)\n", cmd);
        return 2;
    }
    if (loom_tokenizer_load(t, path) != LOOM_OK) {
        fprintf(stderr, "loom %s: %s\n", cmd, loom_errmsg());
        return 1;
    }
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    const char *path = NULL;
    int bos = 0, eos = 0;
    cli_opt opts[] = {
        {"tokenizer", OPT_STR, &path, "tokenizer.json, a model directory, GPT-2 encoder.json (vocab.bpe beside it) or a llama2.c tokenizer.bin", 0, 0},
        {"bos", OPT_FLAG, &bos, "add the beginning-of-sequence token (default off)", 0, 0},
        {"eos", OPT_FLAG, &eos, "add the end-of-sequence token (default off)", 0, 0},
    };
    int pr = cli_parse(argc, argv, "loom tokenize --tokenizer PATH [--bos] [--eos] < text",
                       "Reads UTF-8 text on stdin and prints its token ids on one line, space-separated.", opts,
                       (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    int flags = (bos ? LOOM_TOK_BOS : 0) | (eos ? LOOM_TOK_EOS : 0);
    loom_tokenizer *t;
    int rc = load(&t, path, "tokenize");
    if (rc) return rc;
    size_t len;
    char *text = read_stdin(&len);
    if (!text) {
        loom_tokenizer_free(t);
        return 1;
    }
    int32_t *ids;
    size_t n;
    if (loom_tokenizer_encode(t, text, len, flags, &ids, &n) != LOOM_OK) {
        fprintf(stderr, "loom tokenize: %s\n", loom_errmsg());
        free(text);
        loom_tokenizer_free(t);
        return 1;
    }
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", (int)ids[i]);
    printf("\n");
    free(ids);
    free(text);
    loom_tokenizer_free(t);
    return fflush(stdout) == 0 ? 0 : 1;
}

int cmd_detokenize(int argc, char **argv) {
    const char *path = NULL;
    cli_opt opts[] = {
        {"tokenizer", OPT_STR, &path, "as for loom tokenize", 0, 0},
    };
    int pr = cli_parse(argc, argv, "loom detokenize --tokenizer PATH < ids",
                       "Reads token ids (whitespace-separated) on stdin and prints the text they decode to.\n"
                       "Special tokens (bos/eos/pad) produce no text.", opts, (int)(sizeof opts / sizeof opts[0]),
                       NULL, NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    loom_tokenizer *t;
    int rc = load(&t, path, "detokenize");
    if (rc) return rc;
    size_t len;
    char *in = read_stdin(&len);
    if (!in) {
        loom_tokenizer_free(t);
        return 1;
    }
    size_t n = 0, cap = 1024;
    int32_t *ids = malloc(cap * sizeof *ids);
    char *p = in;
    rc = ids ? 0 : 1;
    while (!rc) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\v' || *p == '\f') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r' && *end != '\v' && *end != '\f')) {
            fprintf(stderr, "loom detokenize: '%.20s' at byte %zu of the input is not a token id\n", p, (size_t)(p - in));
            rc = 1;
            break;
        }
        if (n == cap) {
            int32_t *g = realloc(ids, 2 * cap * sizeof *ids);
            if (!g) {
                rc = 1;
                break;
            }
            ids = g;
            cap *= 2;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    char *text = NULL;
    size_t tlen = 0;
    if (!rc && loom_tokenizer_decode(t, ids, n, &text, &tlen) != LOOM_OK) {
        fprintf(stderr, "loom detokenize: %s\n", loom_errmsg());
        rc = 1;
    }
    if (!rc && (fwrite(text, 1, tlen, stdout) != tlen || fflush(stdout) != 0)) rc = 1;
    free(text);
    free(ids);
    free(in);
    loom_tokenizer_free(t);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int bench_tokenize(int argc, char **argv) {
    char tok_default[4096], file_default[4096];
    snprintf(tok_default, sizeof tok_default, "%s/data/gpt2-tokenizer/encoder.json", cli_shared_dir());
    snprintf(file_default, sizeof file_default, "%s/data/tinyshakespeare/input.txt", cli_shared_dir());
    const char *path = tok_default, *file = file_default;
    int reps = 5;
    cli_opt opts[] = {
        {"tokenizer", OPT_STR, &path, "tokenizer.json, encoder.json, tokenizer.bin or a model directory", 0, 0},
        {"file", OPT_STR, &file, "text to encode", 0, 0},
        {"reps", OPT_INT, &reps, "repetitions", 1, 1000},
    };
    int pr = cli_parse(argc, argv, "loom bench tokenize [--tokenizer PATH] [--file PATH] [--reps N]",
                       "Encodes a text file on one thread N times and prints the throughput in MB/s: the first\n"
                       "(cold) repetition and the median of all.", opts, (int)(sizeof opts / sizeof opts[0]), NULL,
                       NULL, 0);
    if (pr) return pr > 0 ? 0 : 2;
    char *text;
    size_t len;
    if (loom_read_file(file, &text, &len) != LOOM_OK) {
        fprintf(stderr, "loom bench tokenize: --file: %s\n", loom_errmsg());
        return 1;
    }
    loom_tokenizer *t;
    double t0 = loom_now();
    int rc = load(&t, path, "bench tokenize");
    if (rc) {
        free(text);
        return rc;
    }
    double load_s = loom_now() - t0;
    double *mbs = malloc((size_t)reps * sizeof *mbs);
    size_t ntok = 0;
    for (int r = 0; r < reps && mbs; r++) {
        int32_t *ids;
        double s = loom_now();
        if (loom_tokenizer_encode(t, text, len, 0, &ids, &ntok) != LOOM_OK) {
            fprintf(stderr, "loom bench tokenize: %s\n", loom_errmsg());
            rc = 1;
            break;
        }
        double dt = loom_now() - s;
        free(ids);
        mbs[r] = (double)len / 1e6 / (dt > 0 ? dt : 1e-9);
    }
    if (!rc && mbs) {
        double cold = mbs[0];
        qsort(mbs, (size_t)reps, sizeof *mbs, cmp_double);
        printf("tokenize %s (%s): %zu bytes -> %zu tokens, load %.3f s, cold %.2f MB/s, median %.2f MB/s over %d reps\n",
               loom_tokenizer_kind(t), file, len, ntok, load_s, cold, mbs[reps / 2], reps);
    }
    free(mbs);
    free(text);
    loom_tokenizer_free(t);
    return rc;
}
