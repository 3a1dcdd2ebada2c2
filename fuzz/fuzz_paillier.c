/* Paillier's readers of outside bytes: the public and secret key loaders over the raw input, and the
 * server's sum and the key holder's decryption over a valid two-client sum blob with the input's
 * edits applied (pairs of a 16-bit offset and a byte, XORed in), so the fuzzer reaches past the header
 * checks. A refused blob must leave the sum unchanged; an accepted one must decrypt or be refused with
 * a message. The key (2048 bits, fixed seed) and the blobs are made once. */
#include "fuzz_util.h"
#include "loom/paillier.h"

enum { DIM = 40 };

static loom_paillier_sk *sk;
static loom_paillier_params prm;
static loom_paillier_blob client, sum2;

static void setup(void) {
    static const uint8_t seed[32] = {42};
    fuzz_dir();
    fuzz_assert(loom_paillier_keygen(&sk, 2048, seed) == LOOM_OK);
    loom_paillier_defaults(&prm, DIM);
    float x[DIM];
    for (int j = 0; j < DIM; j++) x[j] = (float)(j - 20) / 16;
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    fuzz_assert(loom_paillier_encrypt_update(pk, &prm, x, DIM, 3, seed, &client) == LOOM_OK);
    loom_paillier_sum *s = NULL;
    fuzz_assert(loom_paillier_sum_create(&s, pk, &prm) == LOOM_OK);
    fuzz_assert(loom_paillier_sum_add(s, client.data, client.len) == LOOM_OK);
    fuzz_assert(loom_paillier_sum_add(s, client.data, client.len) == LOOM_OK);
    fuzz_assert(loom_paillier_sum_result(s, &sum2) == LOOM_OK);
    loom_paillier_sum_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (!sk) setup();
    /* the key loaders over the raw bytes */
    loom_paillier_pk *pk2 = NULL;
    int rc = loom_paillier_pk_load(&pk2, data, n);
    fuzz_check_error(rc);
    fuzz_assert((rc == LOOM_OK) == (pk2 != NULL));
    loom_paillier_pk_free(pk2);
    loom_paillier_sk *sk2 = NULL;
    rc = loom_paillier_sk_load(&sk2, data, n);
    fuzz_check_error(rc);
    fuzz_assert((rc == LOOM_OK) == (sk2 != NULL));
    loom_paillier_sk_free(sk2);
    /* the sum blob with the input's edits */
    uint8_t *b = malloc(sum2.len);
    if (!b) abort();
    memcpy(b, sum2.data, sum2.len);
    size_t len = sum2.len;
    for (size_t i = 0; i + 2 < n; i += 3) {
        size_t off = (size_t)data[i] | (size_t)data[i + 1] << 8;
        if (off == 0xffff) len = (size_t)data[i + 2] * 8; /* a truncation */
        else if (off < sum2.len) b[off] ^= data[i + 2];
    }
    if (len > sum2.len) len = sum2.len;
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    loom_paillier_sum *s = NULL;
    fuzz_assert(loom_paillier_sum_create(&s, pk, &prm) == LOOM_OK);
    fuzz_assert(loom_paillier_sum_add(s, client.data, client.len) == LOOM_OK);
    rc = loom_paillier_sum_add(s, b, len);
    fuzz_check_error(rc);
    /* an accepted blob adds the count its header states (an edited count is a valid header): the sum
     * grows by at least one and stays within max_clients; a refused one leaves it at 1 */
    if (rc == LOOM_OK) fuzz_assert(loom_paillier_sum_count(s) >= 1u && loom_paillier_sum_count(s) <= prm.max_clients);
    else fuzz_assert(loom_paillier_sum_count(s) == 1u);
    int64_t fx[DIM];
    uint64_t W = 0;
    uint32_t count = 0;
    rc = loom_paillier_decrypt_sum_fx(sk, &prm, b, len, fx, &W, &count);
    fuzz_check_error(rc);
    if (rc == LOOM_OK) fuzz_assert(W >= 1 && W <= (uint64_t)count * prm.max_weight && count <= prm.max_clients);
    if (len == sum2.len && !memcmp(b, sum2.data, len)) fuzz_assert(rc == LOOM_OK && W == 6 && count == 2);
    loom_paillier_sum_free(s);
    free(b);
    return 0;
}
