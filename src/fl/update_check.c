/* Validation of a received client update before it is aggregated. A client is outside loom's trust
 * boundary: a wrong length would read out of bounds, one NaN would poison every coordinate of the global
 * model, and an unbounded norm lets a single client move it arbitrarily far. */
#include <math.h>

#include "loom/core.h"
#include "loom/pipeline.h"

static int reject(loom_update_verdict *out, loom_update_verdict v, int code) {
    if (out) *out = v;
    return code;
}

int loom_update_check(const float *update, size_t len, size_t dim, double max_norm, loom_update_verdict *verdict,
                      double *norm) {
    if (norm) *norm = 0.0;
    if (!(max_norm >= 0 && !isnan(max_norm)))
        return reject(verdict, LOOM_UPDATE_BAD_BOUND,
                      loom_error(LOOM_EINVAL, "update norm bound must be >= 0 (got %g)", max_norm));
    if (len != dim || (!update && dim > 0))
        return reject(verdict, LOOM_UPDATE_BAD_LENGTH,
                      loom_error(LOOM_EINVAL, "update has %zu values, expected %zu", update ? len : 0, dim));
    double s = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isfinite(update[i]))
            return reject(verdict, LOOM_UPDATE_NONFINITE,
                          loom_error(LOOM_ERANGE, "update value %zu is %s", i, isnan(update[i]) ? "NaN" : "infinite"));
        s += (double)update[i] * (double)update[i];
    }
    double n2 = sqrt(s);
    if (norm) *norm = n2;
    if (max_norm > 0 && n2 > max_norm)
        return reject(verdict, LOOM_UPDATE_TOO_LARGE,
                      loom_error(LOOM_ERANGE, "update L2 norm %g exceeds the bound %g", n2, max_norm));
    if (verdict) *verdict = LOOM_UPDATE_ACCEPTED;
    return LOOM_OK;
}

const char *loom_update_verdict_str(loom_update_verdict v) {
    switch (v) {
    case LOOM_UPDATE_ACCEPTED: return "accepted";
    case LOOM_UPDATE_BAD_LENGTH: return "wrong length";
    case LOOM_UPDATE_NONFINITE: return "non-finite value";
    case LOOM_UPDATE_TOO_LARGE: return "norm above bound";
    case LOOM_UPDATE_OUT_OF_RANGE: return "value out of fixed-point range";
    case LOOM_UPDATE_BAD_WEIGHT: return "invalid weight";
    case LOOM_UPDATE_BAD_CODEC: return "unsupported codec";
    case LOOM_UPDATE_BAD_CONTROL: return "control delta missing or unexpected";
    case LOOM_UPDATE_ROUND_FULL: return "round is full";
    case LOOM_UPDATE_NOT_SAMPLED: return "not sampled";
    case LOOM_UPDATE_DUPLICATE: return "duplicate";
    case LOOM_UPDATE_LATE: return "late";
    case LOOM_UPDATE_WRONG_ROUND: return "wrong round";
    case LOOM_UPDATE_CLIENT_FAILED: return "client failure";
    case LOOM_UPDATE_MISSING: return "no update";
    case LOOM_UPDATE_BAD_BOUND: return "invalid norm bound";
    case LOOM_UPDATE_STALE: return "stale";
    }
    return "unknown";
}
