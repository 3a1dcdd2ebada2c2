/* The cost of Paillier aggregation (include/loom/paillier.h) per parameter: a client's encryption of
 * its update, the server's addition of one client's blob into the sum, the key holder's decryption of
 * the sum, and the ciphertext expansion (bytes per parameter against 4 for an f32 update), for each key
 * size, packed (the default parameters: clip 1, frac_bits 32, max_weight 2^16, max_clients 1024) and
 * unpacked (one value per ciphertext). Single-threaded unless THREADS is given; times are CPU seconds of the
 * process (the machine is shared); the server's sum is timed over CLIENTS blobs.
 *   paillier [DIM_PACKED [DIM_UNPACKED [THREADS [CLIENTS [BITS...]]]]]   (defaults 10000 100 1 4 2048 3072)
 * The figures of docs/privacy-paillier.md came from this program with the defaults. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "loom/core.h"
#include "loom/paillier.h"

/* Seconds of CPU this process used: on a machine shared with other jobs, the cost of the work itself
 * (with THREADS = 1 it is also the single-core wall time of an idle machine). */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    double enc, add, dec; /* seconds per parameter */
    double bytes;         /* blob bytes per parameter */
    unsigned slots, slot_bits;
} cost;

static int run(const loom_paillier_sk *sk, size_t dim, int pack, int clients, cost *c) {
    const loom_paillier_pk *pk = loom_paillier_sk_public(sk);
    loom_paillier_params p;
    loom_paillier_defaults(&p, dim);
    p.pack = pack;
    loom_paillier_layout L;
    int rc = loom_paillier_check(&p, loom_paillier_pk_bits(pk), &L);
    if (rc != LOOM_OK) return rc;
    float *x = malloc(dim * sizeof *x);
    loom_paillier_blob *b = calloc((size_t)clients, sizeof *b), r = {0};
    double *sum = malloc(dim * sizeof *sum);
    if (!x || !b || !sum) return LOOM_ENOMEM;
    loom_rng g;
    loom_rng_init(&g, 1, 0x7061696c); /* "pail": the bench's updates */
    double t = cpu_now();
    for (int k = 0; k < clients && rc == LOOM_OK; k++) {
        for (size_t j = 0; j < dim; j++) x[j] = (float)(0.01 * loom_rng_normal(&g));
        rc = loom_paillier_encrypt_update(pk, &p, x, dim, 1 + (uint64_t)k, NULL, &b[k]);
    }
    c->enc = (cpu_now() - t) / ((double)clients * dim);
    loom_paillier_sum *s = NULL;
    if (rc == LOOM_OK) rc = loom_paillier_sum_create(&s, pk, &p);
    t = cpu_now();
    for (int k = 0; k < clients && rc == LOOM_OK; k++) rc = loom_paillier_sum_add(s, b[k].data, b[k].len);
    c->add = (cpu_now() - t) / ((double)clients * dim);
    if (rc == LOOM_OK) rc = loom_paillier_sum_result(s, &r);
    t = cpu_now();
    uint64_t W = 0;
    if (rc == LOOM_OK) rc = loom_paillier_decrypt_sum(sk, &p, r.data, r.len, sum, &W);
    c->dec = (cpu_now() - t) / (double)dim;
    if (rc == LOOM_OK && W != (uint64_t)clients * (clients + 1) / 2) rc = loom_error(LOOM_ESTATE, "wrong total weight");
    c->bytes = (double)L.blob_bytes / (double)dim;
    c->slots = L.slots;
    c->slot_bits = L.slot_bits;
    loom_paillier_sum_free(s);
    for (int k = 0; k < clients; k++) loom_paillier_blob_free(&b[k]);
    loom_paillier_blob_free(&r);
    free(b), free(x), free(sum);
    return rc;
}

int main(int argc, char **argv) {
    size_t dim_packed = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000;
    size_t dim_plain = argc > 2 ? strtoul(argv[2], NULL, 10) : 100;
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    int clients = argc > 4 ? atoi(argv[4]) : 4;
    unsigned bits_default[] = {2048, 3072}, *bits = bits_default;
    int n_bits = 2;
    if (argc > 5) {
        n_bits = argc - 5;
        bits = malloc((size_t)n_bits * sizeof *bits);
        for (int i = 0; i < n_bits; i++) bits[i] = (unsigned)strtoul(argv[5 + i], NULL, 10);
    }
    if (threads < 1 || clients < 1 || dim_packed < 1 || dim_plain < 1) {
        fprintf(stderr, "usage: paillier [DIM_PACKED [DIM_UNPACKED [THREADS [CLIENTS [BITS...]]]]]\n");
        return 2;
    }
    omp_set_num_threads(threads);
    printf("Paillier aggregation, %d thread(s), %d clients; microseconds per parameter\n", threads, clients);
    printf("%5s %-8s %8s %6s %5s %10s %10s %10s %10s %8s %10s\n", "bits", "packing", "dim", "slots", "s", "keygen_s",
           "client_us", "server_us", "decrypt_us", "B/param", "vs f32");
    for (int i = 0; i < n_bits; i++) {
        double t = cpu_now();
        loom_paillier_sk *sk = NULL;
        if (loom_paillier_keygen(&sk, bits[i], NULL) != LOOM_OK) {
            fprintf(stderr, "paillier: %s\n", loom_errmsg());
            return 1;
        }
        double kg = cpu_now() - t;
        for (int pack = 1; pack >= 0; pack--) {
            size_t dim = pack ? dim_packed : dim_plain;
            cost c;
            if (run(sk, dim, pack, clients, &c) != LOOM_OK) {
                fprintf(stderr, "paillier: %s\n", loom_errmsg());
                return 1;
            }
            printf("%5u %-8s %8zu %6u %5u %10.3f %10.2f %10.4f %10.2f %8.1f %9.1fx\n", bits[i], pack ? "packed" : "none",
                   dim, c.slots, c.slot_bits, kg, 1e6 * c.enc, 1e6 * c.add, 1e6 * c.dec, c.bytes, c.bytes / 4);
            if (pack && bits[i] == 2048)
                printf("      (a LoRA set of 294,912 values: %.1f s to encrypt per client, %.1f MB uploaded)\n",
                       294912 * c.enc, 294912 * c.bytes / 1e6);
        }
        loom_paillier_sk_free(sk);
    }
    if (bits != bits_default) free(bits);
    return 0;
}
