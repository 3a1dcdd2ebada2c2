/* Secure aggregation's messages (include/loom/secagg.h) from outside: every message a client or the
 * server receives, either as raw bytes or as a valid message of an honest round (n = 4, t = 3, dim 6)
 * with the input XORed over it and its length changed. The receiver must answer LOOM_OK or an error
 * with a message, never crash; an accepted mask phase must still allow the round to end (LOOM_OK or an
 * error with a message from the result).
 *
 * Input: byte 0 picks the receiver (mod 14: 0-6 a mutated valid message, 7-13 raw bytes), byte 1 the
 * length change (bit 7: shorten by the low bits, else lengthen by them), the rest the bytes. */
#include "fuzz_util.h"
#include "loom/secagg.h"

enum { N = 4, DIM = 6 };

typedef struct {
    loom_secagg_params p;
    loom_secagg_server *s;
    loom_secagg_client *c[N];
} round_state;

static void setup(round_state *r) {
    memset(r, 0, sizeof *r);
    loom_secagg_defaults(&r->p, N, DIM);
    r->p.round = 2;
    if (loom_secagg_server_create(&r->s, &r->p)) abort();
    for (uint32_t u = 0; u < N; u++) {
        uint8_t seed[32] = {(uint8_t)u, 7};
        if (loom_secagg_client_create(&r->c[u], &r->p, u, seed)) abort();
    }
}

static void teardown(round_state *r) {
    for (int u = 0; u < N; u++) loom_secagg_client_free(r->c[u]);
    loom_secagg_server_free(r->s);
}

/* Client u's message of phase ph in an honest round (phases before it run and closed). */
static int client_step(round_state *r, int ph, uint32_t u, loom_secagg_buf *out) {
    static const float x[DIM] = {0.5f, -0.25f, 1.5f, -3.0f, 0.0f, 1e-9f};
    loom_secagg_buf in = {0};
    int rc = ph ? loom_secagg_server_message(r->s, (loom_secagg_phase)(ph - 1), u, &in) : LOOM_OK;
    if (rc) return rc;
    if (ph == 0) rc = loom_secagg_client_advertise(r->c[u], out);
    if (ph == 1) rc = loom_secagg_client_share(r->c[u], in.data, in.len, out);
    if (ph == 2) rc = loom_secagg_client_mask(r->c[u], in.data, in.len, x, 3 + u, out);
    if (ph == 3) rc = loom_secagg_client_unmask(r->c[u], in.data, in.len, out);
    loom_secagg_buf_free(&in);
    return rc;
}

/* Runs phases [0, upto) honestly, every client; the server closes each. */
static void advance(round_state *r, int upto) {
    for (int ph = 0; ph < upto; ph++) {
        for (uint32_t u = 0; u < N; u++) {
            loom_secagg_buf m = {0};
            if (client_step(r, ph, u, &m)) abort();
            if (loom_secagg_server_receive(r->s, (loom_secagg_phase)ph, u, m.data, m.len)) abort();
            loom_secagg_buf_free(&m);
        }
        if (loom_secagg_server_close(r->s, (loom_secagg_phase)ph)) abort();
    }
}

static uint8_t *mutate(const uint8_t *valid, size_t vlen, const uint8_t *data, size_t n, size_t *len) {
    size_t d = n > 1 ? data[1] & 0x7f : 0;
    *len = n > 1 && (data[1] & 0x80) ? (d < vlen ? vlen - d : 0) : vlen + d;
    uint8_t *m = calloc(*len + 1, 1);
    if (!m) abort();
    memcpy(m, valid, LOOM_MIN(vlen, *len));
    for (size_t i = 2; i < n && i - 2 < *len; i++) m[i - 2] ^= data[i];
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fuzz_dir();
    if (n < 1) return 0;
    int sel = data[0] % 14, raw = sel >= 7, what = sel % 7;
    /* what: 0-3 the server receives phase `what` from client 1; 4-6 client 1 receives the server's message
     * of phase what - 4 (roster, inbox, survivor list) */
    round_state r;
    setup(&r);
    int ph = what < 4 ? what : what - 3; /* the phase being run */
    advance(&r, ph);
    loom_secagg_buf valid = {0};
    int rc;
    if (what < 4) {
        if (client_step(&r, ph, 1, &valid)) abort();
    } else {
        /* client 1 has run the phases before, and the server closed them */
        if (loom_secagg_server_message(r.s, (loom_secagg_phase)(ph - 1), 1, &valid)) abort();
    }
    size_t len;
    uint8_t *m;
    if (raw) {
        len = n > 2 ? n - 2 : 0;
        m = malloc(len + 1);
        if (!m) abort();
        if (len) memcpy(m, data + 2, len);
    } else
        m = mutate(valid.data, valid.len, data, n, &len);
    loom_secagg_buf out = {0};
    if (what < 4) {
        rc = loom_secagg_server_receive(r.s, (loom_secagg_phase)ph, 1, m, len);
        fuzz_check_error(rc);
        if (rc == LOOM_OK && ph == 2) { /* finish the round with the others: a result or a reason */
            int ok = 1;
            for (uint32_t u = 0; u < N && ok; u++) {
                if (u == 1) continue;
                loom_secagg_buf mm = {0};
                ok = client_step(&r, 2, u, &mm) == LOOM_OK &&
                     loom_secagg_server_receive(r.s, LOOM_SECAGG_MASK, u, mm.data, mm.len) == LOOM_OK;
                loom_secagg_buf_free(&mm);
            }
            if (ok && loom_secagg_server_close(r.s, LOOM_SECAGG_MASK) == LOOM_OK) {
                for (uint32_t u = 0; u < N; u++) {
                    loom_secagg_buf mm = {0};
                    if (client_step(&r, 3, u, &mm) == LOOM_OK)
                        loom_secagg_server_receive(r.s, LOOM_SECAGG_UNMASK, u, mm.data, mm.len);
                    loom_secagg_buf_free(&mm);
                }
                if (loom_secagg_server_close(r.s, LOOM_SECAGG_UNMASK) == LOOM_OK) {
                    double sum[DIM];
                    uint64_t tw;
                    uint32_t nin;
                    fuzz_check_error(loom_secagg_server_result(r.s, sum, &tw, &nin, NULL));
                }
            }
        }
        if (rc == LOOM_OK && ph == 3) {
            for (uint32_t u = 0; u < N; u++) {
                loom_secagg_buf mm = {0};
                if (u != 1 && client_step(&r, 3, u, &mm) == LOOM_OK)
                    loom_secagg_server_receive(r.s, LOOM_SECAGG_UNMASK, u, mm.data, mm.len);
                loom_secagg_buf_free(&mm);
            }
            if (loom_secagg_server_close(r.s, LOOM_SECAGG_UNMASK) == LOOM_OK) {
                double sum[DIM];
                fuzz_check_error(loom_secagg_server_result(r.s, sum, NULL, NULL, NULL));
            }
        }
    } else {
        float x[DIM] = {0};
        if (ph == 1) rc = loom_secagg_client_share(r.c[1], m, len, &out);
        else if (ph == 2) rc = loom_secagg_client_mask(r.c[1], m, len, x, 1, &out);
        else rc = loom_secagg_client_unmask(r.c[1], m, len, &out);
        fuzz_check_error(rc);
        fuzz_assert(rc != LOOM_OK || (out.data && out.len >= 24));
    }
    loom_secagg_buf_free(&out);
    loom_secagg_buf_free(&valid);
    free(m);
    teardown(&r);
    return 0;
}
