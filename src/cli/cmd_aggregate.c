/* loom aggregate: one aggregation rule applied offline to update files, through the same update
 * pipeline (validate, aggregate) a server runs. Each file holds one client's update as safetensors
 * tensors (float dtypes); every file must have the first file's tensor names and shapes, and so must
 * fltrust's --server-update. The result is written as F32 tensors with the same names and shapes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "loom/core.h"
#include "loom/pipeline.h"
#include "loom/safetensors.h"

#define AGG_MAX_FILES 65536
#define AGG_MAX_VALUES ((size_t)1 << 31) /* per update: BLAS takes int sizes */

/* w1,w2,... into w (n values, each a whole number in [1, LOOM_FX_MAX_WEIGHT]). */
static int parse_weights(const char *s, double *w, size_t n) {
    size_t k = 0;
    char buf[64];
    while (*s) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (k == n) {
            fprintf(stderr, "loom aggregate: --weights has more values than there are update files (%zu)\n", n);
            return -1;
        }
        if (len == 0 || len >= sizeof buf) {
            fprintf(stderr, "loom aggregate: --weights value %zu is empty or too long\n", k + 1);
            return -1;
        }
        memcpy(buf, s, len);
        buf[len] = 0;
        if (cli_parse_real("--weights", buf, 1, LOOM_FX_MAX_WEIGHT, &w[k]) != 0) return -1;
        if (w[k] != floor(w[k])) {
            fprintf(stderr, "loom aggregate: --weights value %s is not a whole number\n", buf);
            return -1;
        }
        k++;
        s += len + (e ? 1 : 0);
    }
    if (k != n) {
        fprintf(stderr, "loom aggregate: --weights has %zu values for %zu update files\n", k, n);
        return -1;
    }
    return 0;
}

/* The update of file f as dim floats in the first file's tensor order (ref); a missing tensor, another
 * shape or a non-float dtype fails naming the file. */
static int read_update(const loom_st_file *ref, const loom_st_file *f, const char *path, float *u, size_t dim) {
    size_t nt = loom_st_count(ref);
    if (loom_st_count(f) != nt) {
        fprintf(stderr, "loom aggregate: %s has %zu tensors, %s has %zu\n", path, loom_st_count(f),
                loom_st_path(ref), nt);
        return -1;
    }
    size_t off = 0;
    for (size_t i = 0; i < nt; i++) {
        const loom_st_tensor *r = loom_st_at(ref, i), *t = loom_st_find(f, r->name);
        if (!t) {
            fprintf(stderr, "loom aggregate: %s has no tensor '%s' (in %s)\n", path, r->name, loom_st_path(ref));
            return -1;
        }
        int same = t->ndim == r->ndim && t->numel == r->numel;
        for (int d = 0; same && d < r->ndim; d++) same = t->shape[d] == r->shape[d];
        if (!same) {
            fprintf(stderr, "loom aggregate: %s: tensor '%s' has another shape than in %s\n", path, r->name,
                    loom_st_path(ref));
            return -1;
        }
        if (off + t->numel > dim || loom_st_to_f32(t, u + off, t->numel) != LOOM_OK) {
            fprintf(stderr, "loom aggregate: %s: tensor '%s': %s\n", path, r->name, loom_errmsg());
            return -1;
        }
        off += t->numel;
    }
    return 0;
}

int cmd_aggregate(int argc, char **argv) {
    const char *rule = NULL, *weights = NULL, *out = NULL, *server = NULL;
    int f = 0, m = 0, iters = 0;
    float beta = 0.1f, bound = 1.0f, tau = 1.0f;
    cli_opt opts[] = {
        {"rule", OPT_STR, &rule, "the aggregation rule (see the list above)", 0, 0},
        {"f", OPT_INT, &f, "krum, multi-krum, bulyan: Byzantine updates tolerated", 0, 1000000},
        {"m", OPT_INT, &m, "multi-krum: updates averaged (0 = n - f)", 0, 1000000},
        {"beta", OPT_FLOAT, &beta, "trimmed-mean: fraction cut from each end, in [0, 0.5)", 0, 0.5},
        {"bound", OPT_FLOAT, &bound, "norm-bound: each update is scaled to at most this L2 norm", 0, 1e30},
        {"tau", OPT_FLOAT, &tau, "centered-clip: clipping radius (> 0)", 0, 1e30},
        {"iters", OPT_INT, &iters, "centered-clip: clipping steps (default 1); geomedian: most Weiszfeld steps "
                                   "(default 100); 0 = the rule's default", 0, 1000000},
        {"server-update", OPT_STR, &server, "fltrust: the server's reference update (safetensors, the updates' "
                                            "tensor names and shapes)", 0, 0},
        {"weights", OPT_STR, &weights, "w1,w2,...: one whole-number weight per file (default all 1)", 0, 0},
        {"out", OPT_STR, &out, "output safetensors file", 0, 0},
    };
    const char **pos = calloc(AGG_MAX_FILES, sizeof *pos);
    if (!pos) return cli_fail("out of memory");
    int npos = 0;
    int pr = cli_parse(argc, argv,
                       "loom aggregate --rule RULE [--f N] [--m M] [--beta X] [--bound B] [--tau T] [--iters K] "
                       "[--server-update FILE] [--weights w1,...] --out OUT.safetensors U1.safetensors U2.safetensors ...",
                       "Applies one aggregation rule to client updates stored as safetensors files (the same tensor\n"
                       "names and shapes in each) and writes the aggregate with those names and shapes (F32): the\n"
                       "code a server runs on a round, for auditing a round offline. Updates with NaN or Inf values\n"
                       "are refused. n is the number of update files; each rule refuses n and parameters that break\n"
                       "its assumption. Rules:\n"
                       "  fedavg         the exact weighted mean (n >= 1)\n"
                       "  median         coordinate-wise median (n >= 1)\n"
                       "  trimmed-mean   cut floor(beta n) from each end per coordinate (0 <= beta < 0.5, 2 floor(beta n) < n)\n"
                       "  krum           the update closest to its n - f - 2 neighbours (n >= 2f + 3)\n"
                       "  multi-krum     mean of the m best Krum scores (n >= 2f + 3, 1 <= m <= n - f)\n"
                       "  bulyan         repeated Krum picks n - 2f, then per coordinate the mean of the n - 4f\n"
                       "                 values closest to their median (n >= 4f + 3)\n"
                       "  norm-bound     mean of the updates scaled to L2 norm <= bound (bound > 0)\n"
                       "  geomedian      geometric median, smoothed Weiszfeld (iters >= 1)\n"
                       "  centered-clip  iters steps v += mean((u_i - v) min(1, tau / |u_i - v|)) from v = 0 (tau > 0)\n"
                       "  fltrust        trust max(0, cos(u_i, g0)) with the server update g0, updates rescaled to |g0|\n"
                       "                 (needs --server-update)\n"
                       "Weights count for fedavg, multi-krum, norm-bound and geomedian; the other rules are unweighted.",
                       opts, (int)(sizeof opts / sizeof opts[0]), pos, &npos, AGG_MAX_FILES);
    int rc = 2;
    loom_st_file *ref = NULL, *cur = NULL;
    loom_pipeline *p = NULL;
    float *u = NULL, *x = NULL;
    double *w = NULL;
    loom_st_writer *wr = NULL;
    if (pr) {
        rc = pr > 0 ? 0 : 2;
        goto done;
    }
    if (!rule || !out || npos < 1) {
        fprintf(stderr, "loom aggregate: --rule, --out and at least one update file are required (see --help)\n");
        goto done;
    }
    loom_robust_config rc_cfg;
    int robust = strcmp(rule, "fedavg") != 0 && strcmp(rule, "mean") != 0;
    if (robust) {
        loom_robust_rule r;
        if (loom_robust_rule_parse(rule, &r) != LOOM_OK) {
            fprintf(stderr, "loom aggregate: --rule: %s\n", loom_errmsg());
            goto done;
        }
        loom_robust_defaults(&rc_cfg, r);
        rc_cfg.f = f, rc_cfg.m = m, rc_cfg.beta = beta, rc_cfg.bound = bound, rc_cfg.tau = tau;
        if (iters > 0) rc_cfg.iters = iters, rc_cfg.cc_iters = iters;
        if (loom_robust_check(&rc_cfg, (size_t)npos) != LOOM_OK) {
            fprintf(stderr, "loom aggregate: --rule with %d update files: %s\n", npos, loom_errmsg());
            goto done;
        }
    }
    int want_ref = robust && rc_cfg.rule == LOOM_ROBUST_FLTRUST;
    if (want_ref && !server) {
        fprintf(stderr, "loom aggregate: --rule fltrust needs --server-update FILE: the server update (its own update "
                        "on its root data, with the updates' tensor names and shapes) is missing\n");
        goto done;
    }
    if (!want_ref && server) {
        fprintf(stderr, "loom aggregate: --server-update is only used by --rule fltrust (got --rule %s)\n", rule);
        goto done;
    }
    w = malloc((size_t)npos * sizeof *w);
    if (!w) {
        rc = cli_fail("out of memory");
        goto done;
    }
    for (int i = 0; i < npos; i++) w[i] = 1;
    if (weights && parse_weights(weights, w, (size_t)npos) != 0) goto done;
    if (loom_st_open(&ref, pos[0]) != LOOM_OK) {
        fprintf(stderr, "loom aggregate: %s: %s\n", pos[0], loom_errmsg());
        rc = 1;
        goto done;
    }
    size_t dim = 0;
    for (size_t i = 0; i < loom_st_count(ref); i++) dim += loom_st_at(ref, i)->numel;
    if (dim == 0 || dim >= AGG_MAX_VALUES) {
        fprintf(stderr, "loom aggregate: %s holds %zu values (1 to %zu accepted)\n", pos[0], dim, AGG_MAX_VALUES - 1);
        rc = 1;
        goto done;
    }
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, dim);
    if (robust) {
        pc.aggregator = &loom_agg_robust;
        pc.aggregator_config = &rc_cfg;
    }
    u = loom_alloc(dim * sizeof *u);
    x = loom_calloc(dim, sizeof *x);
    if (!u || !x) {
        rc = cli_fail("out of memory");
        goto done;
    }
    if (loom_pipeline_create(&p, &pc) != LOOM_OK || loom_pipeline_begin_round(p, 0) != LOOM_OK) {
        rc = cli_fail("aggregate");
        goto done;
    }
    rc = 1;
    if (want_ref) {
        if (loom_st_open(&cur, server) != LOOM_OK) {
            fprintf(stderr, "loom aggregate: --server-update %s: %s\n", server, loom_errmsg());
            goto done;
        }
        if (read_update(ref, cur, server, u, dim) != 0) goto done;
        if (loom_pipeline_set_reference(p, u, dim) != LOOM_OK) {
            fprintf(stderr, "loom aggregate: --server-update %s refused: %s\n", server, loom_errmsg());
            goto done;
        }
        loom_st_close(cur);
        cur = NULL;
    }
    for (int i = 0; i < npos; i++) {
        const loom_st_file *src = ref;
        if (i > 0) {
            loom_st_close(cur);
            cur = NULL;
            if (loom_st_open(&cur, pos[i]) != LOOM_OK) {
                fprintf(stderr, "loom aggregate: %s: %s\n", pos[i], loom_errmsg());
                goto done;
            }
            src = cur;
        }
        if (read_update(ref, src, pos[i], u, dim) != 0) goto done;
        if (loom_pipeline_add(p, u, dim, w[i], NULL, NULL, NULL) != LOOM_OK) {
            fprintf(stderr, "loom aggregate: %s refused: %s\n", pos[i], loom_errmsg());
            goto done;
        }
    }
    /* fedavg with server_lr 1 from x = 0: x becomes the aggregate itself */
    if (loom_pipeline_end_round(p, x) != LOOM_OK) {
        fprintf(stderr, "loom aggregate: %s\n", loom_errmsg());
        goto done;
    }
    if (loom_st_writer_create(&wr) != LOOM_OK) {
        rc = cli_fail("aggregate");
        goto done;
    }
    size_t off = 0;
    for (size_t i = 0; i < loom_st_count(ref); i++) {
        const loom_st_tensor *t = loom_st_at(ref, i);
        if (loom_st_writer_add_f32(wr, t->name, LOOM_DT_F32, t->ndim, t->shape, x + off) != LOOM_OK) {
            rc = cli_fail(out);
            goto done;
        }
        off += t->numel;
    }
    loom_st_writer_meta(wr, "aggregation_rule", rule);
    if (loom_st_writer_write(wr, out) != LOOM_OK) {
        fprintf(stderr, "loom aggregate: %s: %s\n", out, loom_errmsg());
        goto done;
    }
    printf("%s of %d updates (%zu values) -> %s\n", rule, npos, dim, out);
    rc = 0;
done:
    loom_st_writer_free(wr);
    loom_pipeline_free(p);
    loom_st_close(cur);
    loom_st_close(ref);
    loom_free(u);
    loom_free(x);
    free(w);
    free(pos);
    return rc;
}
