/* Checked numbers from JSON files: see json_num.h. */
#include <math.h>

#include "core/json_num.h"
#include "loom/core.h"

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    default: return "a number";
    }
}

int loom_json_int_value(const json_t *v, const char *key, long long lo, long long hi, long long *out, const char *file) {
    if (json_is_integer(v)) {
        long long x = (long long)json_integer_value(v);
        if (x < lo || x > hi)
            return loom_error(LOOM_ERANGE, "%s: %s is %lld, expected an integer in [%lld, %lld]", file, key, x, lo, hi);
        *out = x;
        return LOOM_OK;
    }
    if (json_is_real(v)) {
        double x = json_real_value(v);
        /* compare as doubles before converting: (long long)1e30 would be undefined */
        if (!isfinite(x) || x != floor(x) || x < (double)lo || x > (double)hi)
            return loom_error(LOOM_ERANGE, "%s: %s is %.17g, expected an integer in [%lld, %lld]", file, key, x, lo, hi);
        *out = (long long)x;
        return LOOM_OK;
    }
    return loom_error(LOOM_EFORMAT, "%s: %s is %s, expected an integer in [%lld, %lld]", file, key, type_name(v), lo, hi);
}

int loom_json_int(const json_t *obj, const char *key, long long lo, long long hi, long long def, long long *out,
                  const char *file) {
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return LOOM_OK;
    }
    return loom_json_int_value(v, key, lo, hi, out, file);
}

int loom_json_int32(const json_t *obj, const char *key, int lo, int hi, int def, int *out, const char *file) {
    long long x = 0;
    int rc = loom_json_int(obj, key, lo, hi, def, &x, file);
    if (rc == LOOM_OK) *out = (int)x;
    return rc;
}

int loom_json_real(const json_t *obj, const char *key, double lo, double hi, double def, double *out, const char *file) {
    const json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return LOOM_OK;
    }
    if (!json_is_number(v))
        return loom_error(LOOM_EFORMAT, "%s: %s is %s, expected a number in [%g, %g]", file, key, type_name(v), lo, hi);
    double x = json_number_value(v);
    if (!isfinite(x) || !(x >= lo && x <= hi))
        return loom_error(LOOM_ERANGE, "%s: %s is %.17g, expected a number in [%g, %g]", file, key, x, lo, hi);
    *out = x;
    return LOOM_OK;
}
