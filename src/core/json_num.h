/* Numbers read from JSON files, with type and range checks (private to the library).
 *
 * A value must be a JSON number (a string, boolean, array or object is an error, never the default),
 * finite, within [lo, hi], and for the integer form integer-valued (12 and 12.0 are accepted, 12.5
 * and 1e12 are refused before any conversion, so no float-to-int overflow can happen). An absent key
 * or a JSON null gives the default, which is not range-checked. Errors are LOOM_EFORMAT (wrong type)
 * or LOOM_ERANGE and name the file and the key: "config.json: n_layer is 4294967298, expected an
 * integer in [1, 1024]". */
#ifndef LOOM_JSON_NUM_H
#define LOOM_JSON_NUM_H

#include <jansson.h>

int loom_json_int(const json_t *obj, const char *key, long long lo, long long hi, long long def, long long *out,
                  const char *file);
/* The same for an int-typed destination: lo and hi must lie within int's range. */
int loom_json_int32(const json_t *obj, const char *key, int lo, int hi, int def, int *out, const char *file);
/* A real number in [lo, hi] (integers are accepted). */
int loom_json_real(const json_t *obj, const char *key, double lo, double hi, double def, double *out, const char *file);
/* The checks of loom_json_int on a value already at hand (v must not be NULL); key names it in errors. */
int loom_json_int_value(const json_t *v, const char *key, long long lo, long long hi, long long *out, const char *file);

#endif
