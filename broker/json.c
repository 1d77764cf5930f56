/*
 * json — see json.h.
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>

int cv_json_parse(const char *s, size_t len, json_t **ret_root, char *errbuf,
                  size_t errlen) {
    json_error_t e;
    json_t *j = json_loadb(s, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
    if (!j) {
        snprintf(errbuf, errlen, "JSON: %s at byte %d", e.text, e.position);
        return -EINVAL;
    }
    *ret_root = j;
    return 0;
}

static json_t *member(const json_t *obj, const char *key) {
    return json_is_object(obj) ? json_object_get(obj, key) : NULL;
}

const char *cv_json_str(const json_t *obj, const char *key, const char *dflt) {
    const json_t *v = member(obj, key);
    return json_is_string(v) ? json_string_value(v) : dflt;
}

double cv_json_num(const json_t *obj, const char *key, double dflt) {
    const json_t *v = member(obj, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

int64_t cv_json_int(const json_t *obj, const char *key, int64_t dflt) {
    const json_t *v = member(obj, key);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == trunc(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
            return (int64_t)d;
    }
    return dflt;
}

bool cv_json_bool(const json_t *obj, const char *key, bool dflt) {
    const json_t *v = member(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}
