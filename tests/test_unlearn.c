/* Unlearning's bookkeeping (include/loom/unlearn.h): FedEraser's calibration against a hand computation,
 * the restart round, the kept rounds, the membership file (writing, reading, refusals naming the line),
 * stored updates (round trip and the checks that name the file). */
#include "test.h"

#include "loom/core.h"
#include "loom/unlearn.h"

int main(void) {
    /* calibration: the direction of the fresh update, the norm of the stored one. |(3, 4)| = 5 and
     * |(0, 10)| = 10, so (3, 4) becomes (6, 8); a zero update stays zero */
    float fresh[2] = {3, 4}, stored[2] = {0, 10};
    loom_unlearn_calibrate(fresh, stored, 2);
    CHECK_NEAR(fresh[0], 6, 1e-6);
    CHECK_NEAR(fresh[1], 8, 1e-6);
    float zero[2] = {0, 0};
    loom_unlearn_calibrate(zero, stored, 2);
    CHECK(zero[0] == 0 && zero[1] == 0, "a zero update stays zero (%g, %g)", zero[0], zero[1]);
    float neg[3] = {-1, 2, -2}, st3[3] = {0, 0, -6}; /* |neg| = 3, |st3| = 6: doubled, signs kept */
    loom_unlearn_calibrate(neg, st3, 3);
    CHECK(neg[0] == -2 && neg[1] == 4 && neg[2] == -4, "(%g, %g, %g)", neg[0], neg[1], neg[2]);

    /* restart: the last kept start at or before the first round; starts are kept at 1 + jK */
    CHECK(loom_unlearn_restart(1, 3) == 1, "first round 1");
    CHECK(loom_unlearn_restart(4, 0) == 1, "nothing kept: round 1");
    CHECK(loom_unlearn_restart(4, 1) == 4, "every round kept");
    CHECK(loom_unlearn_restart(4, 2) == 3, "K = 2: rounds 3, 5, ...");
    CHECK(loom_unlearn_restart(7, 3) == 7 && loom_unlearn_restart(6, 3) == 4, "K = 3");
    for (int r = 1; r <= 20; r++)
        for (int k = 0; k <= 5; k++) {
            int s = loom_unlearn_restart(r, k);
            CHECK(s >= 1 && s <= r && (s == 1 || loom_unlearn_keeps_start(s, k)), "restart(%d, %d) = %d is kept", r, k, s);
        }
    CHECK(!loom_unlearn_keeps_start(1, 1) && loom_unlearn_keeps_start(2, 1), "round 1's start is the initial model");
    CHECK(loom_unlearn_keeps_updates(1, 3) && !loom_unlearn_keeps_updates(2, 3) && loom_unlearn_keeps_updates(4, 3),
          "updates of rounds 1, 4, 7, ...");
    CHECK(!loom_unlearn_keeps_updates(1, 0), "K = 0 keeps nothing");

    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    /* membership: written rows read back; first round and weights */
    snprintf(path, sizeof path, "%s/membership.jsonl", dir);
    FILE *f = fopen(path, "w");
    int c1[2] = {0, 4}, c2[1] = {4}, c3[2] = {2, 3};
    uint64_t w1[2] = {10, 40}, w2[1] = {41}, w3[2] = {7, 8};
    CHECK_OK(loom_membership_write_row(f, 1, c1, w1, 2));
    CHECK_OK(loom_membership_write_row(f, 2, c2, w2, 1));
    CHECK_OK(loom_membership_write_row(f, 3, NULL, NULL, 0)); /* a round nobody contributed to */
    CHECK_OK(loom_membership_write_row(f, 4, c3, w3, 2));
    fclose(f);
    loom_membership m;
    CHECK_OK(loom_membership_load(&m, path, 5));
    CHECK(m.n_rounds == 4, "%d rounds", m.n_rounds);
    CHECK(loom_membership_first(&m, 4) == 1 && loom_membership_first(&m, 2) == 4 && loom_membership_first(&m, 1) == 0,
          "first rounds");
    CHECK(loom_membership_weight(&m, 2, 4) == 41 && loom_membership_weight(&m, 2, 0) == 0, "weights");
    loom_membership_free(&m);
    /* a client id beyond the population, rows out of order, unequal arrays: refused naming the line */
    CHECK(loom_membership_load(&m, path, 4) == LOOM_EFORMAT && strstr(loom_errmsg(), "membership.jsonl:1"),
          "client 4 of 4: %s", loom_errmsg());
    const char *bad[] = {"{\"round\":2,\"clients\":[],\"weights\":[]}\n{\"round\":1,\"clients\":[],\"weights\":[]}\n",
                         "{\"round\":1,\"clients\":[1],\"weights\":[]}\n", "{\"round\":1,\"clients\":[1],\"weights\":[-3]}\n",
                         "not json\n"};
    const char *where[] = {":2:", ":1:", ":1:", ":1:"};
    for (int i = 0; i < 4; i++) {
        f = fopen(path, "w");
        fputs(bad[i], f);
        fclose(f);
        CHECK(loom_membership_load(&m, path, 0) == LOOM_EFORMAT && strstr(loom_errmsg(), where[i]), "bad %d: %s", i,
              loom_errmsg());
    }
    /* a round redone after a restart: the later row counts */
    f = fopen(path, "w");
    fputs("{\"round\":1,\"clients\":[3],\"weights\":[5]}\n{\"round\":2,\"clients\":[1],\"weights\":[6]}\n"
          "{\"round\":2,\"clients\":[1],\"weights\":[7]}\n", f);
    fclose(f);
    CHECK_OK(loom_membership_load(&m, path, 0));
    CHECK(m.n_rounds == 2 && loom_membership_weight(&m, 2, 1) == 7, "%d rounds, weight %llu", m.n_rounds,
          (unsigned long long)loom_membership_weight(&m, 2, 1));
    loom_membership_free(&m);
    snprintf(path, sizeof path, "%s/none.jsonl", dir);
    CHECK(loom_membership_load(&m, path, 0) == LOOM_ENOTFOUND, "a missing file");

    /* stored updates: round trip; the wrong length, round or client and a missing file */
    CHECK_OK(loom_unlearn_mkdirs(dir, 1));
    CHECK_OK(loom_unlearn_update_path(path, sizeof path, dir, 3, 12));
    CHECK(strstr(path, "/unlearn/updates/r000003_c000012.safetensors") != NULL, "%s", path);
    float u[3] = {1.5f, -2, 0.25f}, v[3] = {0};
    CHECK_OK(loom_unlearn_update_write(path, 3, 12, u, 3));
    CHECK_OK(loom_unlearn_update_read(path, 3, 12, v, 3));
    CHECK(!memcmp(u, v, sizeof u), "round trip");
    CHECK(loom_unlearn_update_read(path, 3, 12, v, 2) == LOOM_EFORMAT && strstr(loom_errmsg(), "r000003_c000012"),
          "length: %s", loom_errmsg());
    CHECK(loom_unlearn_update_read(path, 4, 12, v, 3) == LOOM_EFORMAT && strstr(loom_errmsg(), "expected round 4"),
          "round: %s", loom_errmsg());
    CHECK(loom_unlearn_update_read(path, 3, 11, v, 3) == LOOM_EFORMAT, "client");
    CHECK_OK(loom_unlearn_update_path(path, sizeof path, dir, 3, 13));
    CHECK(loom_unlearn_update_read(path, 3, 13, v, 3) == LOOM_ENOTFOUND, "not kept");

    /* distance between two vector files: |(1.5, -2, 0.25) - 0| */
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/a.safetensors", dir);
    snprintf(b, sizeof b, "%s/b.safetensors", dir);
    float z[3] = {0, 0, 0};
    CHECK_OK(loom_unlearn_update_write(a, 1, 0, u, 3));
    CHECK_OK(loom_unlearn_update_write(b, 1, 0, z, 3));
    double d = -1;
    CHECK_OK(loom_unlearn_distance(a, b, &d));
    CHECK_NEAR(d, sqrt(1.5 * 1.5 + 4 + 0.0625), 1e-12);
    CHECK_OK(loom_unlearn_update_write(b, 1, 0, z, 2));
    CHECK(loom_unlearn_distance(a, b, &d) == LOOM_EINVAL && strstr(loom_errmsg(), "update"), "%s", loom_errmsg());
    test_rmtree(dir);
    return test_summary();
}
