/* Secure aggregation (include/loom/secagg.h): the unmasked sum equals the plain fixed-point sum exactly,
 * computed here from the encoding's definition (clip, 24 fraction bits, round half to even, weight
 * times value in Z_2^64), with dropouts at every phase, with SecAgg+ neighbours; masked bytes look
 * uniform; fewer than t shares do not reconstruct; a lying client is caught; rounds differ; malformed
 * messages and bad parameters are refused with their reason. */
#include "loom/secagg.h"
#include "privacy/shamir.h"
#include "test.h"

#include "loom/core.h"
#include "loom/engine.h"
#include "loom/pipeline.h"

/* The encoding, written independently of secagg.c: q = round-half-even(clamp(x) * 2^24). */
static int64_t ref_encode(float x, double clip) {
    double v = x;
    if (v > clip) v = clip;
    if (v < -clip) v = -clip;
    double d = v * 16777216.0, f = floor(d), r = d - f;
    int64_t q = (int64_t)f;
    if (r > 0.5 || (r == 0.5 && (q & 1))) q++;
    return q;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Inputs in [-1.5 clip, 1.5 clip] (some clipped), with exact ties of the rounding mixed in. */
static void make_inputs(float *x, uint32_t n, size_t dim, double clip, uint64_t seed, uint64_t *w) {
    uint64_t s = seed;
    for (uint32_t u = 0; u < n; u++) {
        w[u] = 1 + splitmix(&s) % 1000;
        for (size_t j = 0; j < dim; j++) {
            float v = (float)(((double)(splitmix(&s) >> 11) / 9007199254740992.0 * 3 - 1.5) * clip);
            if (j % 17 == 3) v = (float)((double)(2 * (splitmix(&s) % 8) + 1) * 0x1p-25 * ((j & 1) ? -1 : 1));
            x[(size_t)u * dim + j] = v;
        }
    }
}

typedef struct {
    int liar;          /* client whose unmask message lies (-1 none) */
    int corrupt_mask;  /* client whose masked input is altered (-1 none) */
    int close_rc[4];   /* what each close returned */
    loom_secagg_buf *unmask; /* (n) NULL, or receives each client's unmask message */
    char err[512];
} round_opts;

/* One round: drop[u] = k means client u sends the messages of phases < k only (4: all). Returns the rc
 * of the first failing step (close or result), with its message in o->err. */
static int run_round(const loom_secagg_params *p, const float *x, const uint64_t *w, const int *drop, round_opts *o,
                     uint64_t *ring, double *sum, uint64_t *tw, uint32_t *nin, loom_secagg_buf *masked0) {
    loom_secagg_server *srv = NULL;
    loom_secagg_client **cl = calloc(p->n, sizeof *cl);
    int rc = loom_secagg_server_create(&srv, p);
    o->err[0] = 0;
    for (int i = 0; i < 4; i++) o->close_rc[i] = 1;
    for (uint32_t u = 0; u < p->n && !rc; u++) {
        uint8_t seed[32] = {0};
        seed[0] = (uint8_t)u;
        seed[1] = (uint8_t)(u >> 8);
        seed[2] = 0x5a;
        rc = loom_secagg_client_create(&cl[u], p, u, seed);
    }
    for (int ph = 0; ph < 4 && !rc; ph++) {
        for (uint32_t u = 0; u < p->n && !rc; u++) {
            if (drop[u] <= ph) continue;
            loom_secagg_buf in = {0}, out = {0};
            if (ph > 0) {
                rc = loom_secagg_server_message(srv, (loom_secagg_phase)(ph - 1), u, &in);
                if (rc) break;
            }
            if (ph == 0) rc = loom_secagg_client_advertise(cl[u], &out);
            if (ph == 1) rc = loom_secagg_client_share(cl[u], in.data, in.len, &out);
            if (ph == 2) rc = loom_secagg_client_mask(cl[u], in.data, in.len, x + (size_t)u * p->dim, w[u], &out);
            if (ph == 3) rc = loom_secagg_client_unmask(cl[u], in.data, in.len, &out);
            if (!rc && ph == 2 && (int)u == o->corrupt_mask) out.data[24 + 8 + 7] ^= 0x40; /* 2^62 off: beyond any sum */
            if (!rc && ph == 3 && (int)u == o->liar) { /* the last share element of its first entry, +1 mod p */
                uint8_t *e = out.data + 24 + 8 + 8 * 4;
                uint64_t v = 0;
                for (int i = 7; i >= 0; i--) v = v << 8 | e[i];
                v = (v + 1) % LM_SHAMIR_P;
                for (int i = 0; i < 8; i++) e[i] = (uint8_t)(v >> (8 * i));
            }
            if (!rc && ph == 3 && o->unmask) {
                o->unmask[u].data = malloc(out.len);
                memcpy(o->unmask[u].data, out.data, out.len);
                o->unmask[u].len = out.len;
            }
            if (!rc && ph == 2 && u == 0 && masked0) {
                masked0->data = malloc(out.len);
                memcpy(masked0->data, out.data, out.len);
                masked0->len = out.len;
            }
            if (!rc) rc = loom_secagg_server_receive(srv, (loom_secagg_phase)ph, u, out.data, out.len);
            loom_secagg_buf_free(&in);
            loom_secagg_buf_free(&out);
        }
        if (rc) break;
        rc = o->close_rc[ph] = loom_secagg_server_close(srv, (loom_secagg_phase)ph);
    }
    if (!rc) rc = loom_secagg_server_result(srv, sum, tw, nin, ring);
    if (rc) snprintf(o->err, sizeof o->err, "%s", loom_errmsg());
    for (uint32_t u = 0; u < p->n; u++) loom_secagg_client_free(cl[u]);
    free(cl);
    loom_secagg_server_free(srv);
    return rc;
}

/* Runs a round and checks it against the reference sum over the clients that sent phase 2. */
static void check_exact(const char *name, const loom_secagg_params *p, const int *drop, uint64_t seed) {
    size_t dim = p->dim;
    float *x = malloc(sizeof *x * p->n * dim);
    uint64_t *w = malloc(sizeof *w * p->n), *ring = malloc(sizeof *ring * (dim + 1)), tw = 0;
    double *sum = malloc(sizeof *sum * dim);
    uint32_t nin = 0, want_n = 0;
    make_inputs(x, p->n, dim, p->clip, seed, w);
    round_opts o = {.liar = -1, .corrupt_mask = -1};
    int rc = run_round(p, x, w, drop, &o, ring, sum, &tw, &nin, NULL);
    CHECK(rc == 0, "%s: round failed: %s", name, o.err);
    if (rc == 0) {
        __int128 wsum = 0;
        for (uint32_t u = 0; u < p->n; u++)
            if (drop[u] >= 3) {
                wsum += w[u];
                want_n++;
            }
        CHECK(nin == want_n, "%s: %u updates included, expected %u", name, nin, want_n);
        CHECK((__int128)tw == wsum && ring[dim] == (uint64_t)wsum, "%s: total weight %llu, expected %llu", name,
              (unsigned long long)tw, (unsigned long long)wsum);
        size_t bad = 0, badf = 0;
        for (size_t j = 0; j < dim; j++) {
            __int128 s = 0;
            for (uint32_t u = 0; u < p->n; u++)
                if (drop[u] >= 3) s += (__int128)w[u] * ref_encode(x[(size_t)u * dim + j], p->clip);
            bad += (int64_t)ring[j] != (int64_t)s;
            badf += sum[j] != (double)s / 16777216.0;
        }
        CHECK(bad == 0 && badf == 0, "%s: %zu ring values and %zu decoded values differ from the plain sum", name, bad, badf);
    }
    free(x);
    free(w);
    free(ring);
    free(sum);
}

static void test_exact_sums(void) {
    loom_secagg_params p;
    int drop[16];
    /* complete graph: n = 10, t = 7 */
    loom_secagg_defaults(&p, 10, 300);
    p.clip = 0.75;
    p.seed = 11;
    p.round = 3;
    CHECK(p.threshold == 7, "default threshold %u", p.threshold);
    for (int i = 0; i < 10; i++) drop[i] = 4;
    check_exact("no dropout", &p, drop, 1);
    for (int ph = 0; ph < 4; ph++) { /* one client drops before sending phase ph's message */
        char name[64];
        for (int i = 0; i < 10; i++) drop[i] = 4;
        drop[3 + ph] = ph;
        snprintf(name, sizeof name, "one dropout before phase %d", ph);
        check_exact(name, &p, drop, 2 + ph);
    }
    for (int ph = 0; ph < 4; ph++) { /* n - t = 3 drop, all at the same phase */
        char name[64];
        for (int i = 0; i < 10; i++) drop[i] = 4;
        drop[0] = drop[5] = drop[9] = ph;
        snprintf(name, sizeof name, "n - t dropouts before phase %d", ph);
        check_exact(name, &p, drop, 10 + ph);
    }
    for (int i = 0; i < 10; i++) drop[i] = 4;
    drop[1] = 1; /* after advertising */
    drop[4] = 2; /* after sharing: its pairwise masks are removed via its mask key */
    drop[8] = 3; /* after its masked input: its self-mask is removed via its seed's shares */
    check_exact("n - t dropouts at three phases", &p, drop, 20);

    /* a vector long enough for the server's parallel unmasking (2 threads, each its own partial sum) */
    loom_secagg_defaults(&p, 5, 70000);
    p.threshold = 3;
    int threads = loom_threads();
    loom_set_threads(2);
    for (int i = 0; i < 5; i++) drop[i] = 4;
    drop[1] = 2;
    drop[3] = 3;
    check_exact("dim 70000 on 2 threads, dropouts after sharing and after masking", &p, drop, 40);
    loom_set_threads(threads);

    /* SecAgg+: n = 16, k = 6 neighbours, t = 5 of the 7 holders */
    loom_secagg_defaults(&p, 16, 200);
    p.neighbours = 6;
    p.threshold = 5;
    p.seed = 5;
    p.max_weight = 1000;
    for (int i = 0; i < 16; i++) drop[i] = 4;
    check_exact("secagg+ no dropout", &p, drop, 30);
    drop[2] = 2;
    drop[7] = 3;
    check_exact("secagg+ dropouts after sharing and after masking", &p, drop, 31);
    drop[11] = 1;
    drop[12] = 0;
    { /* with k = 6 these four dropouts leave client 1 only 4 of its 7 holders: the round fails, naming it */
        float x[16 * 200] = {0};
        uint64_t w[16];
        for (int i = 0; i < 16; i++) w[i] = 1;
        round_opts o = {.liar = -1, .corrupt_mask = -1};
        int rc = run_round(&p, x, w, drop, &o, NULL, NULL, NULL, NULL, NULL);
        CHECK(rc == LOOM_ESTATE && strstr(o.err, "client 1's self-mask seed: only 4 of the 5 shares needed"), "rc %d: %s",
              rc, o.err);
    }
    p.neighbours = 8; /* 9 holders, t = 5: any four dropouts leave enough */
    check_exact("secagg+ dropouts at four phases", &p, drop, 32);
}

/* Chi-square over the 256 byte values of a masked input of zeros: 255 degrees of freedom, threshold
 * 330.5 (upper 0.1% point); the unmasked encoding of the same input fails it. */
static double chi_square(const uint8_t *b, size_t n) {
    double cnt[256] = {0}, e = (double)n / 256, c = 0;
    for (size_t i = 0; i < n; i++) cnt[b[i]]++;
    for (int i = 0; i < 256; i++) c += (cnt[i] - e) * (cnt[i] - e) / e;
    return c;
}

static void test_uniform_and_rounds(void) {
    loom_secagg_params p;
    loom_secagg_defaults(&p, 5, 4096);
    int drop[5] = {4, 4, 4, 4, 4};
    float *x = calloc(5 * 4096, sizeof *x);
    uint64_t w[5] = {1, 2, 3, 4, 5}, tw;
    double *sum = malloc(sizeof *sum * 4096);
    uint32_t nin;
    loom_secagg_buf m0 = {0}, m1 = {0};
    round_opts o = {.liar = -1, .corrupt_mask = -1};
    CHECK_OK(run_round(&p, x, w, drop, &o, NULL, sum, &tw, &nin, &m0));
    CHECK(m0.len == 24 + 8 * 4097, "masked input of %zu bytes", m0.len);
    double c = chi_square(m0.data + 24, m0.len - 24);
    CHECK(c < 330.5, "masked bytes: chi-square %.1f >= 330.5 (not uniform)", c);
    uint8_t plain[8 * 4097] = {0};
    plain[8 * 4096] = 1; /* the encoding of zeros with weight 1 */
    CHECK(chi_square(plain, sizeof plain) > 330.5, "the test cannot tell");
    CHECK(tw == 15 && nin == 5 && sum[0] == 0 && sum[4095] == 0, "sum of zeros: w %llu n %u", (unsigned long long)tw, nin);

    p.round = 1; /* the same clients and key seeds, the next round */
    CHECK_OK(run_round(&p, x, w, drop, &o, NULL, sum, &tw, &nin, &m1));
    size_t same = 0;
    for (size_t i = 24; i < m0.len && i < m1.len; i++) same += m0.data[i] == m1.data[i];
    CHECK(m1.len == m0.len && same < (m0.len - 24) / 128, "rounds 0 and 1: %zu of %zu masked bytes equal", same,
          m0.len - 24);
    loom_secagg_buf_free(&m0);
    loom_secagg_buf_free(&m1);
    free(x);
    free(sum);
}

static void test_threshold(void) {
    /* Shamir: t shares reconstruct, t - 1 do not */
    uint8_t sec[32], back[32];
    for (int i = 0; i < 32; i++) sec[i] = (uint8_t)(37 * i + 11);
    uint64_t ch[LM_SHAMIR_CHUNKS], coef[LM_SHAMIR_CHUNKS][6], xs[6], ys[6][LM_SHAMIR_CHUNKS], lam[10];
    lm_shamir_split_secret(sec, ch);
    uint64_t s = 99;
    for (int k = 0; k < LM_SHAMIR_CHUNKS; k++) {
        coef[k][0] = ch[k];
        for (int j = 1; j < 6; j++) coef[k][j] = splitmix(&s) % LM_SHAMIR_P;
    }
    for (int i = 0; i < 6; i++) {
        xs[i] = 3 * (uint64_t)i + 2;
        for (int k = 0; k < LM_SHAMIR_CHUNKS; k++) ys[i][k] = lm_shamir_eval(coef[k], 6, xs[i]);
    }
    /* independent check of the field arithmetic: the polynomial at x = 2 by plain 128-bit sums */
    unsigned __int128 acc = 0, xp = 1;
    for (int j = 0; j < 6; j++) {
        acc = (acc + (unsigned __int128)coef[0][j] * xp) % LM_SHAMIR_P;
        xp = xp * 2 % LM_SHAMIR_P;
    }
    CHECK((uint64_t)acc == ys[0][0], "polynomial evaluation");
    uint64_t got[LM_SHAMIR_CHUNKS];
    CHECK(lm_shamir_lagrange(xs, 6, 0, lam) == 0, "lagrange");
    for (int k = 0; k < LM_SHAMIR_CHUNKS; k++) got[k] = lm_shamir_combine(lam, &ys[0][k], LM_SHAMIR_CHUNKS, 6);
    CHECK(lm_shamir_join_secret(got, back) == 0 && memcmp(back, sec, 32) == 0, "t shares reconstruct the secret");
    CHECK(lm_shamir_lagrange(xs + 1, 5, 0, lam) == 0, "lagrange");
    for (int k = 0; k < LM_SHAMIR_CHUNKS; k++) got[k] = lm_shamir_combine(lam, &ys[1][k], LM_SHAMIR_CHUNKS, 5);
    CHECK(lm_shamir_join_secret(got, back) != 0 || memcmp(back, sec, 32) != 0, "t - 1 shares reconstructed the secret");

    /* the protocol's own shares: any t of them give one secret, t - 1 of them another */
    {
        loom_secagg_params p;
        loom_secagg_defaults(&p, 10, 8);
        int drop[10] = {4, 4, 4, 4, 4, 4, 4, 4, 4, 4};
        float x[80] = {0};
        uint64_t w[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        loom_secagg_buf um[10] = {{0}};
        round_opts o = {.liar = -1, .corrupt_mask = -1, .unmask = um};
        CHECK_OK(run_round(&p, x, w, drop, &o, NULL, NULL, NULL, NULL, NULL));
        uint64_t hx[10], hy[10][LM_SHAMIR_CHUNKS], a[LM_SHAMIR_CHUNKS], b2[LM_SHAMIR_CHUNKS], c2[LM_SHAMIR_CHUNKS];
        for (int h = 0; h < 10; h++) { /* holder h's first entry: client 0's self-mask seed (documented layout) */
            const uint8_t *e = um[h].data + 24;
            CHECK(um[h].len == 24 + 10 * 48 && e[0] == 0 && e[4] == 0, "unmask message of %zu bytes", um[h].len);
            hx[h] = (uint64_t)h + 1;
            for (int k = 0; k < LM_SHAMIR_CHUNKS; k++) {
                uint64_t v = 0;
                for (int i = 7; i >= 0; i--) v = v << 8 | e[8 + 8 * k + i];
                hy[h][k] = v;
            }
        }
        lm_shamir_lagrange(hx, 7, 0, lam);
        for (int k = 0; k < LM_SHAMIR_CHUNKS; k++) a[k] = lm_shamir_combine(lam, &hy[0][k], LM_SHAMIR_CHUNKS, 7);
        lm_shamir_lagrange(hx + 3, 7, 0, lam);
        for (int k = 0; k < LM_SHAMIR_CHUNKS; k++) b2[k] = lm_shamir_combine(lam, &hy[3][k], LM_SHAMIR_CHUNKS, 7);
        lm_shamir_lagrange(hx, 6, 0, lam);
        for (int k = 0; k < LM_SHAMIR_CHUNKS; k++) c2[k] = lm_shamir_combine(lam, &hy[0][k], LM_SHAMIR_CHUNKS, 6);
        CHECK(memcmp(a, b2, sizeof a) == 0, "two sets of t shares disagree");
        CHECK(memcmp(a, c2, sizeof a) != 0, "t - 1 of the protocol's shares gave the secret");
        for (int h = 0; h < 10; h++) loom_secagg_buf_free(&um[h]);
    }

    /* the server refuses to close a phase with fewer than t messages */
    loom_secagg_params p;
    loom_secagg_defaults(&p, 10, 16);
    int drop[10] = {4, 4, 4, 4, 4, 4, 2, 2, 2, 2}; /* 6 masked inputs, t = 7 */
    float x[160] = {0};
    uint64_t w[10] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, tw;
    double sum[16];
    uint32_t nin;
    round_opts o = {.liar = -1, .corrupt_mask = -1};
    int rc = run_round(&p, x, w, drop, &o, NULL, sum, &tw, &nin, NULL);
    CHECK(rc == LOOM_ESTATE && o.close_rc[1] == 0 && o.close_rc[2] == LOOM_ESTATE &&
              strstr(o.err, "mask phase: only 6 of the 7 needed"),
          "rc %d: %s", rc, o.err);

    /* a client refuses a survivor list below t (it would hand out shares the server may combine) */
    loom_secagg_client *c = NULL;
    loom_secagg_server *srv = NULL;
    CHECK_OK(loom_secagg_server_create(&srv, &p));
    loom_secagg_client *cl[10] = {0};
    for (uint32_t u = 0; u < 10; u++) {
        loom_secagg_buf b = {0};
        CHECK_OK(loom_secagg_client_create(&cl[u], &p, u, NULL));
        CHECK_OK(loom_secagg_client_advertise(cl[u], &b));
        CHECK_OK(loom_secagg_server_receive(srv, LOOM_SECAGG_ADVERTISE, u, b.data, b.len));
        loom_secagg_buf_free(&b);
    }
    CHECK_OK(loom_secagg_server_close(srv, LOOM_SECAGG_ADVERTISE));
    for (uint32_t u = 0; u < 10; u++) {
        loom_secagg_buf r = {0}, b = {0};
        CHECK_OK(loom_secagg_server_message(srv, LOOM_SECAGG_ADVERTISE, u, &r));
        CHECK_OK(loom_secagg_client_share(cl[u], r.data, r.len, &b));
        CHECK_OK(loom_secagg_server_receive(srv, LOOM_SECAGG_SHARE, u, b.data, b.len));
        loom_secagg_buf_free(&r);
        loom_secagg_buf_free(&b);
    }
    CHECK_OK(loom_secagg_server_close(srv, LOOM_SECAGG_SHARE));
    c = cl[0];
    loom_secagg_buf in = {0}, b = {0};
    CHECK_OK(loom_secagg_server_message(srv, LOOM_SECAGG_SHARE, 0, &in));
    CHECK_OK(loom_secagg_client_mask(c, in.data, in.len, x, 1, &b));
    /* a hand-made survivor list of 6 (header, then ids 0..5) */
    uint8_t list[24 + 6 * 4] = {'L', 'S', 'A', 'G', 1, 6};
    list[20] = 6;
    for (int i = 0; i < 6; i++) list[24 + 4 * i] = (uint8_t)i;
    loom_secagg_buf u3 = {0};
    rc = loom_secagg_client_unmask(c, list, sizeof list, &u3);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "holds 6 clients, fewer than the threshold 7"), "rc %d: %s", rc,
          loom_errmsg());
    /* the server refuses a phase-2 message from a client twice, and one of the wrong length */
    CHECK_OK(loom_secagg_server_receive(srv, LOOM_SECAGG_MASK, 0, b.data, b.len));
    rc = loom_secagg_server_receive(srv, LOOM_SECAGG_MASK, 0, b.data, b.len);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "duplicate"), "rc %d: %s", rc, loom_errmsg());
    rc = loom_secagg_server_receive(srv, LOOM_SECAGG_MASK, 1, b.data, b.len - 8);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "names client 0, expected 1"), "rc %d: %s", rc, loom_errmsg());
    loom_secagg_buf_free(&in);
    loom_secagg_buf_free(&b);
    for (uint32_t u = 0; u < 10; u++) loom_secagg_client_free(cl[u]);
    loom_secagg_server_free(srv);
}

static void test_liars(void) {
    loom_secagg_params p;
    loom_secagg_defaults(&p, 10, 64);
    float x[640];
    uint64_t w[10], tw;
    double sum[64];
    uint32_t nin;
    make_inputs(x, 10, 64, 1.0, 7, w);
    int drop[10] = {4, 4, 4, 4, 4, 4, 4, 4, 4, 4};
    /* client 0 lies about its share of client 0's seed; with 10 > t shares the liar is named */
    round_opts o = {.liar = 0, .corrupt_mask = -1};
    int rc = run_round(&p, x, w, drop, &o, NULL, sum, &tw, &nin, NULL);
    CHECK(rc == LOOM_EFORMAT && strstr(o.err, "client 0 lied: its share of client 0's self-mask seed"), "rc %d: %s", rc,
          o.err);
    /* exactly t answers: detected, not attributable */
    int drop2[10] = {4, 4, 4, 4, 4, 4, 4, 3, 3, 3};
    rc = run_round(&p, x, w, drop2, &o, NULL, sum, &tw, &nin, NULL);
    CHECK(rc == LOOM_EFORMAT && strstr(o.err, "the liar cannot be named"), "rc %d: %s", rc, o.err);
    /* a dropped client's mask key: the liar is named too */
    int drop3[10] = {4, 4, 4, 4, 4, 4, 4, 4, 4, 4};
    drop3[0] = 2; /* client 0 drops after sharing; client 1's first entry is client 0's mask key */
    o.liar = 1;
    rc = run_round(&p, x, w, drop3, &o, NULL, sum, &tw, &nin, NULL);
    CHECK(rc == LOOM_EFORMAT && strstr(o.err, "client 1 lied: its share of client 0's mask key"), "rc %d: %s", rc, o.err);
    /* an altered masked input cannot pass as a sum */
    o.liar = -1;
    o.corrupt_mask = 4;
    rc = run_round(&p, x, w, drop, &o, NULL, sum, &tw, &nin, NULL);
    CHECK(rc == LOOM_EFORMAT && strstr(o.err, "a masked input was corrupt"), "rc %d: %s", rc, o.err);
}

static void test_params_and_messages(void) {
    loom_secagg_params p;
    loom_secagg_defaults(&p, 10, 100);
    CHECK_OK(loom_secagg_check(&p));
    int rc;
    p.max_weight = UINT64_C(1) << 40; /* 10 * 2^40 * 2^24 > 2^63 */
    rc = loom_secagg_check(&p);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "could overflow") && strstr(loom_errmsg(), "max_weight"), "%s",
          loom_errmsg());
    p.max_weight = UINT64_C(1) << 35; /* 10 * 2^35 * 2^24 = 1.25 * 2^62: fits */
    CHECK_OK(loom_secagg_check(&p));
    p.clip = 2; /* 1.25 * 2^63: could overflow */
    CHECK(loom_secagg_check(&p) == LOOM_EINVAL, "clip 2 with max_weight 2^35 accepted");
    loom_secagg_defaults(&p, 10, 100);
    p.threshold = 5;
    rc = loom_secagg_check(&p);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "threshold = 5"), "%s", loom_errmsg());
    p.threshold = 11;
    CHECK(loom_secagg_check(&p) == LOOM_EINVAL, "threshold above n accepted");
    loom_secagg_defaults(&p, 10, 100);
    p.neighbours = 3;
    rc = loom_secagg_check(&p);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "neighbours = 3 must be even"), "%s", loom_errmsg());
    p.neighbours = 4;
    p.threshold = 3;
    CHECK_OK(loom_secagg_check(&p));
    loom_secagg_defaults(&p, 10, 100);
    p.clip = NAN;
    CHECK(loom_secagg_check(&p) == LOOM_EINVAL && strstr(loom_errmsg(), "clip"), "%s", loom_errmsg());
    loom_secagg_defaults(&p, 1, 100);
    CHECK(loom_secagg_check(&p) == LOOM_EINVAL && strstr(loom_errmsg(), "n = 1"), "%s", loom_errmsg());

    /* messages: truncated, wrong kind, wrong round, from a client outside the previous phase */
    loom_secagg_defaults(&p, 4, 8);
    p.round = 9;
    loom_secagg_server *srv = NULL;
    loom_secagg_client *c = NULL;
    loom_secagg_buf b = {0};
    CHECK_OK(loom_secagg_server_create(&srv, &p));
    CHECK_OK(loom_secagg_client_create(&c, &p, 2, NULL));
    CHECK_OK(loom_secagg_client_advertise(c, &b));
    rc = loom_secagg_server_receive(srv, LOOM_SECAGG_ADVERTISE, 2, b.data, 10);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "shorter than its header"), "%s", loom_errmsg());
    rc = loom_secagg_server_receive(srv, LOOM_SECAGG_ADVERTISE, 2, b.data, b.len - 1);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "entries need"), "%s", loom_errmsg());
    b.data[8] ^= 1;
    rc = loom_secagg_server_receive(srv, LOOM_SECAGG_ADVERTISE, 2, b.data, b.len);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "this is round 9"), "%s", loom_errmsg());
    b.data[8] ^= 1;
    b.data[5] = 3;
    rc = loom_secagg_server_receive(srv, LOOM_SECAGG_ADVERTISE, 2, b.data, b.len);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "expected the advertise message"), "%s", loom_errmsg());
    b.data[5] = 1;
    rc = loom_secagg_server_receive(srv, LOOM_SECAGG_SHARE, 2, b.data, b.len);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "not yet in that phase"), "%s", loom_errmsg());
    CHECK_OK(loom_secagg_server_receive(srv, LOOM_SECAGG_ADVERTISE, 2, b.data, b.len));
    rc = loom_secagg_server_close(srv, LOOM_SECAGG_ADVERTISE);
    CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "only 1 of the 3 needed"), "%s", loom_errmsg());
    loom_secagg_buf r = {0};
    rc = loom_secagg_server_message(srv, LOOM_SECAGG_ADVERTISE, 2, &r);
    CHECK(rc == LOOM_ESTATE, "message before close: %d", rc);
    rc = loom_secagg_client_mask(c, NULL, 0, NULL, 1, &r);
    CHECK(rc == LOOM_ESTATE && strstr(loom_errmsg(), "cannot mask now"), "%s", loom_errmsg());
    loom_secagg_buf_free(&b);
    loom_secagg_client_free(c);
    loom_secagg_server_free(srv);
}

/* The pipeline and the engine take a round's sum: on the 2^-24 grid it gives the global model the
 * updates give one by one, bit for bit; refusals name their reason. */
static void test_pipeline_sum(void) {
    enum { D = 40, N = 3 };
    float init[D], u[N][D], g1[D], g2[D];
    double sum[D] = {0}, wt[N] = {3, 5, 9};
    uint64_t s = 5;
    for (int j = 0; j < D; j++) init[j] = (float)(j % 7) * 0.25f - 0.5f;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++) {
            u[i][j] = (float)((int64_t)(splitmix(&s) % 2000001) - 1000000) * 0x1p-24f;
            sum[j] += wt[i] * u[i][j]; /* exact: |w q| < 2^24 */
        }
    loom_pipeline_config pc;
    loom_pipeline_defaults(&pc, D);
    loom_pipeline *p1 = NULL, *p2 = NULL;
    CHECK_OK(loom_pipeline_create(&p1, &pc));
    CHECK_OK(loom_pipeline_create(&p2, &pc));
    const float *ups[N] = {u[0], u[1], u[2]};
    memcpy(g1, init, sizeof g1);
    memcpy(g2, init, sizeof g2);
    CHECK_OK(loom_pipeline_aggregate(p1, g1, ups, wt, NULL, N));
    CHECK_OK(loom_pipeline_begin_round(p2, 1));
    int rc = loom_pipeline_add_sum(p2, sum, D - 1, 17, N);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "secure sum of 39 values"), "%s", loom_errmsg());
    sum[3] = NAN;
    rc = loom_pipeline_add_sum(p2, sum, D, 17, N);
    CHECK(rc == LOOM_ERANGE && strstr(loom_errmsg(), "secure sum value 3"), "%s", loom_errmsg());
    sum[3] = 0;
    for (int i = 0; i < N; i++) sum[3] += wt[i] * u[i][3];
    rc = loom_pipeline_add_sum(p2, sum, D, 2, N);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "total weight 2"), "%s", loom_errmsg());
    CHECK_OK(loom_pipeline_add_sum(p2, sum, D, 17, N));
    CHECK(loom_pipeline_num_added(p2) == N && loom_pipeline_total_weight(p2) == 17, "added %zu",
          loom_pipeline_num_added(p2));
    CHECK_OK(loom_pipeline_end_round(p2, g2));
    CHECK(memcmp(g1, g2, sizeof g1) == 0, "a secure sum gives another model than its updates");
    loom_pipeline_free(p1);
    loom_pipeline_free(p2);
    loom_pipeline_defaults(&pc, D);
    pc.strategy = "scaffold";
    loom_strategy_defaults("scaffold", &pc.sp);
    pc.sp.num_clients = N;
    if (loom_pipeline_create(&p1, &pc) == LOOM_OK) {
        loom_pipeline_begin_round(p1, 1);
        rc = loom_pipeline_add_sum(p1, sum, D, 17, N);
        CHECK(rc == LOOM_EUNSUPPORTED && strstr(loom_errmsg(), "cannot take a secure sum"), "%s", loom_errmsg());
        loom_pipeline_free(p1);
    }

    /* the engine: every member accepted, a second sum for the same clients refused whole */
    loom_engine_config ec;
    loom_engine_defaults(&ec);
    ec.dim = D;
    ec.init = init;
    ec.n_clients = 4;
    ec.rounds = 1;
    loom_pipeline_defaults(&ec.pipe, D);
    loom_engine *e = NULL;
    CHECK_OK(loom_engine_create(&e, &ec));
    const int *list;
    int n;
    CHECK_OK(loom_engine_open_round(e, 0, &list, &n));
    loom_update mem[N];
    memset(mem, 0, sizeof mem);
    for (int i = 0; i < N; i++) {
        mem[i].round = 1;
        mem[i].client = i;
        mem[i].examples = (uint64_t)wt[i];
        mem[i].wire_bytes = 1000;
    }
    mem[2].client = 7;
    rc = loom_engine_submit_sum(e, 1, sum, D, 17, mem, N, 0);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "client 7 is not sampled"), "%s", loom_errmsg());
    mem[2].client = 2;
    CHECK_OK(loom_engine_submit_sum(e, 1, sum, D, 17, mem, N, 0));
    rc = loom_engine_submit_sum(e, 1, sum, D, 17, mem, 1, 0);
    CHECK(rc == LOOM_EINVAL && strstr(loom_errmsg(), "client 0 already answered"), "%s", loom_errmsg());
    CHECK_OK(loom_engine_close_round(e, 0));
    loom_round_metrics m;
    CHECK_OK(loom_engine_end_round(e, 0, &m));
    CHECK(m.accepted == 3 && m.sampled == 4 && m.bytes_up == 3000, "accepted %d of %d, %g bytes", m.accepted, m.sampled,
          m.bytes_up);
    CHECK(memcmp(loom_engine_global(e), g1, sizeof g1) == 0, "the engine's model differs from the pipeline's");
    loom_engine_free(e);
}

int main(void) {
    test_pipeline_sum();
    test_exact_sums();
    test_uniform_and_rounds();
    test_threshold();
    test_liars();
    test_params_and_messages();
    fprintf(stderr, "test_secagg: %d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}
