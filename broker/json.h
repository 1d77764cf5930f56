/*
 * json — a small strict JSON reader for the tools that read the broker's own
 * documents (`chatvault lag` reads /api/lag). Parses a whole document into a
 * tree; nesting is bounded (64 levels) and so is the input (the caller's
 * buffer). Not a general-purpose library: numbers are doubles.
 */
#ifndef CV_JSON_H
#define CV_JSON_H

#include <stdbool.h>
#include <stddef.h>

typedef enum cv_json_type {
    CV_JSON_NULL,
    CV_JSON_BOOL,
    CV_JSON_NUM,
    CV_JSON_STR,
    CV_JSON_ARR,
    CV_JSON_OBJ,
} cv_json_type;

typedef struct cv_json cv_json;
struct cv_json {
    cv_json_type type;
    bool b;
    double num;
    char *str;      /* CV_JSON_STR: NUL-terminated, UTF-8 */
    char *key;      /* member of an object: its name */
    cv_json *child; /* first element or member */
    cv_json *next;  /* next sibling */
};

/* Parses `s[0..len)`. On success the caller owns *ret_root (cv_json_free).
 * Returns 0 or -EINVAL with errbuf naming the byte offset. */
int cv_json_parse(const char *s, size_t len, cv_json **ret_root, char *errbuf,
                  size_t errlen);

/* Accepts NULL; returns NULL. */
cv_json *cv_json_free(cv_json *j);

/* Member `key` of object `obj`, or NULL (also when obj is NULL or not an
 * object). */
const cv_json *cv_json_get(const cv_json *obj, const char *key);

/* The value when `j` has that type, else `dflt`. */
double cv_json_num(const cv_json *j, double dflt);
const char *cv_json_str(const cv_json *j, const char *dflt);
bool cv_json_bool(const cv_json *j, bool dflt);

#endif
