/*
 * json — how the program reads JSON: jansson parses (strictly: one value,
 * no duplicate member names, nesting bounded by jansson at 2048 levels),
 * these helpers read a member with a default. Integers are json_int_t (64
 * bits) and read exactly. Users: the import files (`chatvault import`),
 * /api/lag (`chatvault lag`), /api/kafka (the commands' embedded-Kafka
 * lookup).
 */
#ifndef CV_JSON_H
#define CV_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses `s[0..len)`. On success the caller owns *ret_root (json_decref).
 * Returns 0 or -EINVAL with errbuf saying what and at which byte. */
int cv_json_parse(const char *s, size_t len, json_t **ret_root, char *errbuf,
                  size_t errlen);

/* Member `key` of object `obj` when it has the type, else `dflt` (also
 * when obj is NULL or not an object). cv_json_num reads an integer or a
 * real; cv_json_int reads an integer exactly, and a real only when it has
 * no fraction and fits in int64. */
const char *cv_json_str(const json_t *obj, const char *key, const char *dflt);
double cv_json_num(const json_t *obj, const char *key, double dflt);
int64_t cv_json_int(const json_t *obj, const char *key, int64_t dflt);
bool cv_json_bool(const json_t *obj, const char *key, bool dflt);

#endif
