/* Partitioners (data/ layer): split a dataset's examples among federated clients.
 *
 * A partition is a list of clients, each holding example indices (train, and test after
 * loom_partition_split_test). Every example is in exactly one client's train or test list: nothing is
 * lost or duplicated (loom_partition_check verifies this). All methods are deterministic from the seed.
 *
 *   IID        indices shuffled, then cut into n_clients chunks of sizes differing by at most one.
 *   DIRICHLET  for each class c (a label, or a key), p_c ~ Dirichlet(alpha, ..., alpha) over clients and
 *              c's shuffled examples are cut in proportion to p_c (Hsu et al. 2019). Small alpha: each
 *              client sees few classes; large alpha: every client near the global mix.
 *   NATURAL    one client per distinct class/key value (a genre, a speaker, a Dolly category); n_clients
 *              is ignored.
 *   QUANTITY   quantity skew with IID content: client i gets min_examples + a share of the rest in
 *              proportion to w_i = exp(sigma * z_i), z_i ~ N(0, 1) (log-normal sizes; sigma = 0 gives equal
 *              sizes, sigma = 1 a max/median size ratio of about 5 for 10 clients), rounded by largest
 *              remainder so the sizes add up to n.
 *
 * Minimum examples per client (min_examples = K):
 *   IID, QUANTITY: met by construction (error if n < K * n_clients).
 *   DIRICHLET: resampled: a draw that leaves a client with fewer than K examples is discarded and
 *              p is drawn again from the next stream (up to max_tries draws, then LOOM_ERANGE).
 *   NATURAL:   merged: groups smaller than K, taken in key order, are merged into one client until it
 *              reaches K ("a+b+c"); a remainder that never reaches K joins the last client formed.
 */
#ifndef LOOM_PARTITION_H
#define LOOM_PARTITION_H

#include <stddef.h>
#include <stdint.h>

#include "loom/dataset.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { LOOM_PART_IID = 0, LOOM_PART_DIRICHLET, LOOM_PART_NATURAL, LOOM_PART_QUANTITY };
/* What DIRICHLET and NATURAL group by: AUTO = the label when the dataset has labels, else the key. */
enum { LOOM_BY_AUTO = 0, LOOM_BY_LABEL, LOOM_BY_KEY };

typedef struct {
    int method;          /* LOOM_PART_* */
    size_t n_clients;
    double alpha;        /* DIRICHLET concentration (default 0.5) */
    double sigma;        /* QUANTITY log-normal sigma (default 1.0) */
    size_t min_examples; /* default 0 */
    uint64_t seed;
    int by;              /* LOOM_BY_* */
    size_t max_tries;    /* DIRICHLET draws before giving up (default 1000) */
} loom_partition_opts;

typedef struct {
    char *name;     /* "client_0003", or the natural group's value */
    uint32_t *train; /* (n_train) example indices, ascending */
    size_t n_train;
    uint32_t *test;  /* (n_test) ascending; empty until loom_partition_split_test */
    size_t n_test;
} loom_client;

typedef struct loom_partition {
    size_t n_clients;
    loom_client *clients; /* (n_clients) */
    size_t n_examples;    /* the examples partitioned: indices are in [0, n_examples) */
    size_t draws;         /* DIRICHLET: draws made (1 + resamples) */
} loom_partition;

void loom_partition_opts_init(loom_partition_opts *o);
int loom_partition_method(const char *name); /* "iid", "dirichlet", "natural", "quantity" -> LOOM_PART_*, or -1 */

int loom_partition_iid(loom_partition **out, size_t n, size_t n_clients, size_t min_examples, uint64_t seed);
/* cls (n): class of each example in [0, n_classes). */
int loom_partition_dirichlet(loom_partition **out, const int32_t *cls, size_t n, size_t n_classes,
                             size_t n_clients, double alpha, size_t min_examples, uint64_t seed,
                             size_t max_tries);
/* group (n): group of each example in [0, n_groups); names (n_groups) name the clients (may be NULL). */
int loom_partition_natural(loom_partition **out, const int32_t *group, size_t n, size_t n_groups,
                           const char *const *names, size_t min_examples);
int loom_partition_quantity(loom_partition **out, size_t n, size_t n_clients, double sigma,
                            size_t min_examples, uint64_t seed);
/* Dispatches on o->method using the dataset's labels or keys. */
int loom_partition_dataset(loom_partition **out, const loom_dataset *ds, const loom_partition_opts *o);

/* Moves round(test_frac * n) of each client's train indices to its test list: a seeded random subset
 * (stream (seed, client)) when ordered = 0, the last ones in index order when ordered = 1. */
int loom_partition_split_test(loom_partition *p, double test_frac, uint64_t seed, int ordered);
/* The same for one client, the c-th of its partition (the draw depends on seed and c only): a client
 * holding only its own data (a networked client, or a --clients-dir file) splits as loom sim does. */
int loom_client_split_test(loom_client *cl, size_t c, double test_frac, uint64_t seed, int ordered);
/* LOOM_OK when the clients' train and test lists together hold every index in [0, n) exactly once. */
int loom_partition_check(const loom_partition *p, size_t n);
void loom_partition_free(loom_partition *p);

#ifdef __cplusplus
}
#endif
#endif
