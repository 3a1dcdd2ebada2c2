/* Partitioners: no example lost or duplicated, determinism, sizes, label skew, natural groups,
 * minimum sizes, train/test splits, and natural splits of the real Brown and self-instruct sets. */
#include "loom/core.h"
#include "loom/dataset.h"
#include "loom/partition.h"
#include "test.h"

/* Independent of loom_partition_check: every index in [0, n) appears exactly once over all lists,
 * and every list is ascending. */
static int exact_cover(const loom_partition *p, size_t n) {
    int *seen = calloc(n ? n : 1, sizeof *seen);
    int ok = 1;
    for (size_t c = 0; c < p->n_clients; c++) {
        const loom_client *cl = &p->clients[c];
        for (size_t i = 0; i < cl->n_train; i++) {
            if (cl->train[i] >= n || (i && cl->train[i] <= cl->train[i - 1])) ok = 0;
            else seen[cl->train[i]]++;
        }
        for (size_t i = 0; i < cl->n_test; i++) {
            if (cl->test[i] >= n || (i && cl->test[i] <= cl->test[i - 1])) ok = 0;
            else seen[cl->test[i]]++;
        }
    }
    for (size_t i = 0; i < n; i++) ok &= seen[i] == 1;
    free(seen);
    return ok;
}

static int same_partition(const loom_partition *a, const loom_partition *b) {
    if (a->n_clients != b->n_clients) return 0;
    for (size_t c = 0; c < a->n_clients; c++) {
        const loom_client *x = &a->clients[c], *y = &b->clients[c];
        if (x->n_train != y->n_train || x->n_test != y->n_test) return 0;
        if (x->n_train && memcmp(x->train, y->train, x->n_train * 4)) return 0;
        if (x->n_test && memcmp(x->test, y->test, x->n_test * 4)) return 0;
    }
    return 1;
}

static int32_t *random_classes(size_t n, size_t k, uint64_t seed) {
    int32_t *c = malloc((n ? n : 1) * sizeof *c);
    loom_rng r;
    loom_rng_init(&r, seed, 99);
    for (size_t i = 0; i < n; i++) c[i] = (int32_t)loom_rng_below(&r, (uint32_t)k);
    return c;
}

/* Builds a partition with one of the four methods. */
static int make(loom_partition **p, int method, const int32_t *cls, size_t n, size_t k, size_t clients, uint64_t seed) {
    switch (method) {
    case LOOM_PART_IID: return loom_partition_iid(p, n, clients, 0, seed);
    case LOOM_PART_DIRICHLET: return loom_partition_dirichlet(p, cls, n, k, clients, 0.3, 0, seed, 10);
    case LOOM_PART_NATURAL: return loom_partition_natural(p, cls, n, k, NULL, 0);
    default: return loom_partition_quantity(p, n, clients, 1.0, 0, seed);
    }
}

static void test_property_cover(void) {
    /* Many shapes, every method, with and without a test split: the union of shards is the input. */
    static const size_t sizes[] = {0, 1, 7, 100, 1001, 5000};
    int all = 1, all_check = 1, cases = 0;
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++)
        for (int method = 0; method < 4; method++)
            for (uint64_t seed = 0; seed < 4; seed++) {
                size_t n = sizes[si], k = 1 + seed * 3, clients = 1 + (seed * 7 + si) % 13;
                int32_t *cls = random_classes(n, k, seed + 100 * si);
                loom_partition *p = NULL;
                int rc = make(&p, method, cls, n, k, clients, seed);
                /* Natural needs every group present to match the count, not to cover. */
                CHECK(rc == LOOM_OK, "method %d n %zu clients %zu: %s", method, n, clients, loom_errmsg());
                if (p) {
                    cases++;
                    all &= exact_cover(p, n);
                    all_check &= loom_partition_check(p, n) == LOOM_OK;
                    CHECK_OK(loom_partition_split_test(p, 0.25, seed, (int)(seed & 1)));
                    all &= exact_cover(p, n);
                    all_check &= loom_partition_check(p, n) == LOOM_OK;
                    if (method != LOOM_PART_NATURAL) CHECK(p->n_clients == clients, "client count");
                }
                loom_partition_free(p);
                free(cls);
            }
    CHECK(all, "every partition covers its input exactly (%d cases)", cases);
    CHECK(all_check, "loom_partition_check agrees");
    /* The checker catches a duplicate and a loss. */
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, 10, 2, 0, 1));
    uint32_t keep = p->clients[0].train[0];
    p->clients[0].train[0] = p->clients[1].train[0];
    CHECK(loom_partition_check(p, 10) != LOOM_OK && !exact_cover(p, 10), "duplicate detected");
    p->clients[0].train[0] = keep;
    p->clients[0].n_train--;
    CHECK(loom_partition_check(p, 10) != LOOM_OK && !exact_cover(p, 10), "loss detected: %s", loom_errmsg());
    p->clients[0].n_train++;
    loom_partition_free(p);
}

static void test_determinism(void) {
    size_t n = 3000, k = 5;
    int32_t *cls = random_classes(n, k, 1);
    for (int method = 0; method < 4; method++) {
        if (method == LOOM_PART_NATURAL) continue; /* no randomness */
        loom_partition *a, *b, *c;
        CHECK_OK(make(&a, method, cls, n, k, 8, 42));
        CHECK_OK(make(&b, method, cls, n, k, 8, 42));
        CHECK_OK(make(&c, method, cls, n, k, 8, 43));
        CHECK(same_partition(a, b), "method %d: same seed, same split", method);
        CHECK(!same_partition(a, c), "method %d: another seed, another split", method);
        CHECK_OK(loom_partition_split_test(a, 0.2, 5, 0));
        CHECK_OK(loom_partition_split_test(b, 0.2, 5, 0));
        CHECK(same_partition(a, b), "method %d: same test split", method);
        loom_partition_free(a);
        loom_partition_free(b);
        loom_partition_free(c);
    }
    free(cls);
}

static void test_iid_quantity(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, 1003, 10, 0, 3));
    size_t mn = SIZE_MAX, mx = 0, sum = 0;
    for (size_t c = 0; c < p->n_clients; c++) {
        mn = LOOM_MIN(mn, p->clients[c].n_train);
        mx = LOOM_MAX(mx, p->clients[c].n_train);
        sum += p->clients[c].n_train;
    }
    CHECK(sum == 1003 && mn == 100 && mx == 101, "iid sizes %zu..%zu sum %zu", mn, mx, sum);
    loom_partition_free(p);
    CHECK(loom_partition_iid(&p, 50, 10, 6, 3) == LOOM_ERANGE, "iid cannot give 10 clients 6 of 50");

    /* sigma = 0: equal sizes; sigma = 1.5: log-normal weights, skewed; minimum respected. */
    CHECK_OK(loom_partition_quantity(&p, 1000, 8, 0.0, 0, 1));
    int equal = 1;
    for (size_t c = 0; c < 8; c++) equal &= p->clients[c].n_train == 125;
    CHECK(equal, "sigma 0 gives equal sizes");
    loom_partition_free(p);
    CHECK_OK(loom_partition_quantity(&p, 10000, 20, 1.5, 30, 7));
    mn = SIZE_MAX, mx = 0, sum = 0;
    for (size_t c = 0; c < 20; c++) {
        mn = LOOM_MIN(mn, p->clients[c].n_train);
        mx = LOOM_MAX(mx, p->clients[c].n_train);
        sum += p->clients[c].n_train;
    }
    /* Ratio of the largest to smallest of 20 log-normal(1.5) weights: the extremes of 20 normals are
     * about +-1.9 sd apart each way, exp(1.5 * 3.7) ~ 260; 10 is a very safe floor. */
    CHECK(sum == 10000 && mn >= 30 && mx >= 10 * mn, "quantity sizes %zu..%zu sum %zu", mn, mx, sum);
    loom_partition_free(p);
}

/* Size-weighted mean over clients of the total-variation distance between the client's label
 * histogram and the global one. 0 = every client has the global mix; near 1 = disjoint labels. */
static double label_skew(const loom_partition *p, const int32_t *cls, size_t n, size_t k) {
    double *glob = calloc(k, sizeof *glob), *loc = calloc(k, sizeof *loc), acc = 0;
    for (size_t i = 0; i < n; i++) glob[cls[i]] += 1.0 / (double)n;
    for (size_t c = 0; c < p->n_clients; c++) {
        const loom_client *cl = &p->clients[c];
        if (!cl->n_train) continue;
        memset(loc, 0, k * sizeof *loc);
        for (size_t i = 0; i < cl->n_train; i++) loc[cls[cl->train[i]]] += 1.0 / (double)cl->n_train;
        double tv = 0;
        for (size_t j = 0; j < k; j++) tv += 0.5 * fabs(loc[j] - glob[j]);
        acc += tv * (double)cl->n_train / (double)n;
    }
    free(glob);
    free(loc);
    return acc;
}

static void test_dirichlet_skew(void) {
    /* 10 balanced classes (1,000 each), 20 clients. alpha = 1000: each p_c is within about 3% (relative
     * sd sqrt(19/20/20001)*20) of 1/20, so a client's class shares differ from 0.1 by ~0.003 and its
     * TV distance is ~0.5*10*0.0025 ~ 0.012: threshold 0.05. alpha = 0.1: each class lands mostly on one
     * or two clients, so a client holds a few classes and its TV distance is large: threshold 0.5. */
    size_t n = 10000, k = 10;
    int32_t *cls = malloc(n * sizeof *cls);
    for (size_t i = 0; i < n; i++) cls[i] = (int32_t)(i % k);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        loom_partition *lo, *hi;
        CHECK_OK(loom_partition_dirichlet(&lo, cls, n, k, 20, 0.1, 0, seed, 1));
        CHECK_OK(loom_partition_dirichlet(&hi, cls, n, k, 20, 1000, 0, seed, 1));
        double s_lo = label_skew(lo, cls, n, k), s_hi = label_skew(hi, cls, n, k);
        printf("dirichlet seed %llu: label skew (weighted mean TV) alpha 0.1 = %.3f, alpha 1000 = %.4f\n",
               (unsigned long long)seed, s_lo, s_hi);
        CHECK(s_lo > 0.5, "alpha 0.1 should be skewed: %.3f", s_lo);
        CHECK(s_hi < 0.05, "alpha 1000 should be near-uniform: %.4f", s_hi);
        CHECK(exact_cover(lo, n) && exact_cover(hi, n), "dirichlet covers");
        loom_partition_free(lo);
        loom_partition_free(hi);
    }
    /* Minimum size by resampling: with alpha 0.2 and 20 clients a draw often starves a client. */
    loom_partition *p;
    CHECK_OK(loom_partition_dirichlet(&p, cls, n, k, 20, 0.2, 100, 1, 1000));
    if (p) {
        size_t mn = SIZE_MAX;
        for (size_t c = 0; c < p->n_clients; c++) mn = LOOM_MIN(mn, p->clients[c].n_train);
        printf("dirichlet alpha 0.2, min 100: %zu draws, smallest client %zu\n", p->draws, mn);
        CHECK(mn >= 100 && p->draws > 1 && exact_cover(p, n), "resampled to the minimum (draws %zu, min %zu)", p->draws, mn);
        loom_partition_free(p);
    }
    int rc = loom_partition_dirichlet(&p, cls, n, k, 20, 0.01, 490, 1, 5);
    CHECK(rc == LOOM_ERANGE && strstr(loom_errmsg(), "5 draws"), "impossible minimum: %s", loom_errmsg());
    cls[5] = 10;
    CHECK(loom_partition_dirichlet(&p, cls, n, k, 20, 1, 0, 1, 1) == LOOM_EINVAL, "class out of range");
    free(cls);
}

static void test_natural(void) {
    /* groups: 0 x5, 1 x1, 2 x0, 3 x2, 4 x7, 5 x1 */
    int32_t g[] = {0, 4, 0, 1, 4, 3, 0, 4, 4, 0, 3, 4, 0, 4, 5, 4};
    size_t n = sizeof g / sizeof g[0];
    const char *names[] = {"a", "b", "c", "d", "e", "f"};
    loom_partition *p;
    CHECK_OK(loom_partition_natural(&p, g, n, 6, names, 0));
    /* Five distinct values present (group 2 is empty). */
    CHECK(p->n_clients == 5, "natural clients %zu", p->n_clients);
    int pure = 1;
    for (size_t c = 0; c < p->n_clients; c++)
        for (size_t i = 1; i < p->clients[c].n_train; i++) pure &= g[p->clients[c].train[i]] == g[p->clients[c].train[0]];
    CHECK(pure && exact_cover(p, n), "each client one group");
    CHECK(!strcmp(p->clients[0].name, "a") && !strcmp(p->clients[3].name, "e"), "names");
    loom_partition_free(p);
    /* min 3: b(1) and d(2) merge into "b+1" (3); e(7) alone; f(1) is left over and joins e. */
    CHECK_OK(loom_partition_natural(&p, g, n, 6, names, 3));
    CHECK(p->n_clients == 3, "merged clients %zu", p->n_clients);
    if (p->n_clients == 3) {
        CHECK(!strcmp(p->clients[0].name, "a") && p->clients[0].n_train == 5, "a");
        CHECK(!strcmp(p->clients[1].name, "b+1") && p->clients[1].n_train == 3, "b+d: %s %zu", p->clients[1].name,
              p->clients[1].n_train);
        CHECK(!strcmp(p->clients[2].name, "e+1") && p->clients[2].n_train == 8, "e+f: %s %zu", p->clients[2].name,
              p->clients[2].n_train);
    }
    size_t mn = SIZE_MAX;
    for (size_t c = 0; c < p->n_clients; c++) mn = LOOM_MIN(mn, p->clients[c].n_train);
    CHECK(mn >= 3 && exact_cover(p, n), "merge keeps everything, min %zu", mn);
    loom_partition_free(p);
    /* A pending remainder when the last formed client comes before it. */
    int32_t g2[] = {0, 0, 0, 0, 1};
    CHECK_OK(loom_partition_natural(&p, g2, 5, 2, names, 2));
    CHECK(p->n_clients == 1 && p->clients[0].n_train == 5, "remainder joins the only client");
    loom_partition_free(p);
    CHECK(loom_partition_natural(&p, g2, 5, 2, names, 6) == LOOM_ERANGE, "min above n");
}

static void test_split_test(void) {
    loom_partition *p;
    CHECK_OK(loom_partition_iid(&p, 100, 4, 0, 9));
    uint32_t before[25];
    memcpy(before, p->clients[2].train, sizeof before);
    CHECK_OK(loom_partition_split_test(p, 0.2, 0, 1));
    /* Ordered: the last round(0.2 * 25) = 5 indices of each client. */
    CHECK(p->clients[2].n_test == 5 && p->clients[2].n_train == 20, "sizes");
    CHECK(!memcmp(p->clients[2].test, before + 20, 5 * 4) && !memcmp(p->clients[2].train, before, 20 * 4), "ordered split");
    CHECK(loom_partition_split_test(p, 0.2, 0, 1) == LOOM_ESTATE, "split twice");
    loom_partition_free(p);
    CHECK_OK(loom_partition_iid(&p, 100, 4, 0, 9));
    CHECK(loom_partition_split_test(p, 1.5, 0, 0) == LOOM_EINVAL, "fraction > 1");
    loom_partition_free(p);
}

static void test_real_natural(void) {
    loom_tokenizer *tok;
    CHECK_OK(loom_tokenizer_byte(&tok));
    char path[1024];
    loom_dataset_opts o;
    loom_dataset_opts_init(&o);
    o.format = LOOM_FMT_BROWN;
    loom_dataset *ds;
    loom_partition_opts po;
    loom_partition_opts_init(&po);
    po.method = LOOM_PART_NATURAL;
    loom_partition *p;
    /* Brown: 15 genres (SOURCE.md) -> 15 clients. */
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/brown-corpus"), &o, tok));
    if (ds) {
        CHECK_OK(loom_partition_dataset(&p, ds, &po));
        if (p) {
            CHECK(p->n_clients == 15 && exact_cover(p, ds->n), "brown natural clients %zu", p->n_clients);
            /* Keys sort by name: "news" has 44 files (SOURCE.md). */
            for (size_t c = 0; c < p->n_clients; c++)
                if (!strcmp(p->clients[c].name, "news")) CHECK(p->clients[c].n_train == 44, "news %zu", p->clients[c].n_train);
            loom_partition_free(p);
        }
        po.method = LOOM_PART_DIRICHLET;
        po.n_clients = 10;
        po.alpha = 0.5;
        CHECK_OK(loom_partition_dataset(&p, ds, &po));
        if (p) {
            CHECK(p->n_clients == 10 && exact_cover(p, ds->n), "brown dirichlet over genres");
            loom_partition_free(p);
        }
        loom_dataset_free(ds);
    }
    /* self-instruct user-oriented: 71 motivation_app values (SOURCE.md) -> 71 clients. */
    o.format = LOOM_FMT_SELF_INSTRUCT;
    po.method = LOOM_PART_NATURAL;
    CHECK_OK(loom_dataset_load(&ds, test_path(path, sizeof path, "data/self-instruct/user_oriented_instructions.jsonl"), &o, tok));
    if (ds) {
        CHECK_OK(loom_partition_dataset(&p, ds, &po));
        if (p) {
            CHECK(p->n_clients == 71 && exact_cover(p, ds->n), "self-instruct natural clients %zu", p->n_clients);
            loom_partition_free(p);
        }
        loom_dataset_free(ds);
    }
    loom_tokenizer_free(tok);
}

int main(void) {
    test_property_cover();
    test_determinism();
    test_iid_quantity();
    test_dirichlet_skew();
    test_natural();
    test_split_test();
    test_real_natural();
    return test_summary();
}
