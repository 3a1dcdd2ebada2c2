/* The RDP accountant against ../shared/reference/dp (values from Opacus's own code, see its README):
 * epsilon to a relative 1e-9 with the same optimal order at every grid point, the classic MNIST case
 * and Opacus's unit test; the single-step RDP at all 151 orders for three (q, sigma) pairs; the
 * inverse (the sigma for a target epsilon); and the refusals. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "loom/core.h"
#include "loom/dp.h"
#include "test.h"

static double num(json_t *o, const char *k) { return json_number_value(json_object_get(o, k)); }

static void check_entry(json_t *e, const char *eps_key, const char *alpha_key, const char *what) {
    double eps, order;
    CHECK_OK(loom_dp_epsilon(num(e, "q"), num(e, "sigma"), num(e, "steps"), num(e, "delta"), NULL, 0, &eps, &order));
    double want = num(e, eps_key), wa = num(e, alpha_key);
    CHECK(fabs(eps - want) <= 1e-9 * fabs(want), "%s (q %g sigma %g steps %g delta %g): epsilon %.17g, reference %.17g",
          what, num(e, "q"), num(e, "sigma"), num(e, "steps"), num(e, "delta"), eps, want);
    CHECK(order == wa, "%s: order %g, reference %g", what, order, wa);
}

int main(void) {
    char path[4096];
    json_error_t err;
    json_t *ref = json_load_file(test_path(path, sizeof path, "reference/dp/rdp_reference.json"), 0, &err);
    CHECK(ref != NULL, "read %s: %s", path, err.text);
    if (!ref) return test_summary();
    /* the orders */
    json_t *ords = json_object_get(ref, "orders");
    const double *o = loom_dp_default_orders();
    CHECK(json_array_size(ords) == LOOM_DP_N_ORDERS, "%zu orders", json_array_size(ords));
    int same = 1;
    for (size_t k = 0; k < json_array_size(ords) && k < LOOM_DP_N_ORDERS; k++)
        same &= json_number_value(json_array_get(ords, k)) == o[k];
    CHECK(same, "the default orders are the reference's, bit for bit");
    /* epsilon and the optimal order at every grid point */
    json_t *entries = json_object_get(ref, "entries");
    CHECK(json_array_size(entries) >= 20, "%zu entries", json_array_size(entries));
    for (size_t i = 0; i < json_array_size(entries); i++) check_entry(json_array_get(entries, i), "epsilon_opacus", "alpha_opacus", "grid");
    /* the classic MNIST case and Opacus's own unit test */
    json_t *cl = json_object_get(ref, "classic"), *co = json_object_get(cl, "opacus_default_alphas");
    double eps, order;
    CHECK_OK(loom_dp_epsilon(num(cl, "q"), num(cl, "noise_multiplier"), num(cl, "steps"), num(cl, "delta"), NULL, 0, &eps,
                             &order));
    CHECK(fabs(eps - num(co, "epsilon")) <= 1e-9 * num(co, "epsilon") && order == num(co, "alpha"),
          "classic case: epsilon %.17g at %g (reference %.17g at %g)", eps, order, num(co, "epsilon"), num(co, "alpha"));
    json_t *ou = json_object_get(ref, "opacus_unit_test");
    CHECK_OK(loom_dp_epsilon(num(ou, "q"), num(ou, "sigma"), num(ou, "steps"), num(ou, "delta"), NULL, 0, &eps, &order));
    CHECK(fabs(eps - num(ou, "epsilon")) <= 1e-9 * num(ou, "epsilon") && order == num(ou, "alpha"),
          "Opacus unit test: epsilon %.17g at %g", eps, order);
    /* single-step RDP at every order: |rdp - ref| <= 1e-9 ref + 1e-11 */
    json_t *vals = json_object_get(json_object_get(ref, "rdp_single_step_opacus"), "values");
    CHECK(json_array_size(vals) == 3, "%zu single-step sets", json_array_size(vals));
    for (size_t i = 0; i < json_array_size(vals); i++) {
        json_t *v = json_array_get(vals, i), *r = json_object_get(v, "rdp");
        double worst = 0;
        size_t at = 0;
        for (size_t k = 0; k < json_array_size(r) && k < LOOM_DP_N_ORDERS; k++) {
            double want = json_number_value(json_array_get(r, k)), got = loom_dp_rdp(num(v, "q"), num(v, "sigma"), o[k]);
            double bad = fabs(got - want) / (1e-9 * want + 1e-11);
            if (!(bad <= worst)) {
                worst = bad;
                at = k;
            }
        }
        CHECK(worst <= 1, "single-step RDP q %g sigma %g: worst at order %g is %.3g of the tolerance", num(v, "q"),
              num(v, "sigma"), o[at], worst);
    }
    /* the closed forms */
    CHECK(loom_dp_rdp(0, 1, 2) == 0 && isinf(loom_dp_rdp(0.1, 0, 2)) && loom_dp_rdp(1, 2, 3) == 3.0 / 8,
          "q 0, sigma 0 and q 1 cases");
    /* the inverse: sigma for a target epsilon, then epsilon of that sigma */
    double sigma;
    CHECK_OK(loom_dp_sigma(num(cl, "q"), num(cl, "steps"), num(cl, "delta"), num(co, "epsilon"), &sigma, &eps));
    CHECK(fabs(sigma - num(cl, "noise_multiplier")) < 1e-6 && eps <= num(co, "epsilon"),
          "the sigma for the classic case's epsilon is its 1.1: %.9g (epsilon %.9g)", sigma, eps);
    double e2;
    CHECK_OK(loom_dp_epsilon(num(cl, "q"), sigma * (1 - 1e-6), num(cl, "steps"), num(cl, "delta"), NULL, 0, &e2, NULL));
    CHECK(e2 > num(co, "epsilon"), "a slightly smaller sigma exceeds the budget (%.9g)", e2);
    /* refusals name the parameter */
    CHECK(loom_dp_epsilon(1.5, 1, 10, 1e-5, NULL, 0, &eps, &order) == LOOM_EINVAL && strstr(loom_errmsg(), "q"), "q > 1: %s",
          loom_errmsg());
    CHECK(loom_dp_epsilon(0.1, -1, 10, 1e-5, NULL, 0, &eps, &order) == LOOM_EINVAL && strstr(loom_errmsg(), "sigma"),
          "sigma < 0: %s", loom_errmsg());
    CHECK(loom_dp_epsilon(0.1, 1, 10, 0, NULL, 0, &eps, &order) == LOOM_EINVAL && strstr(loom_errmsg(), "delta"),
          "delta 0: %s", loom_errmsg());
    double bad_order[1] = {1.0};
    CHECK(loom_dp_epsilon(0.1, 1, 10, 1e-5, bad_order, 1, &eps, &order) == LOOM_EINVAL && strstr(loom_errmsg(), "order"),
          "order 1: %s", loom_errmsg());
    CHECK(loom_dp_sigma(1, 1e9, 1e-5, 1e-3, &sigma, &eps) == LOOM_ERANGE && strstr(loom_errmsg(), "1e6"),
          "an unreachable target: %s", loom_errmsg());
    json_decref(ref);
    return test_summary();
}
