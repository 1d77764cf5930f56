/*
 * Unit tests of consumer/pg/pgsearch.c without a server: a --channel shell
 * pattern becomes the regular expression PostgreSQL matches channels with,
 * and it must select exactly what fnmatch (replay, export, --from-log)
 * selects; and which content types are indexed as text.
 */
#include <fnmatch.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>

#include "pg/pgsearch.h"
#include "tap.h"

#define tap_diag(...) (fprintf(stderr, "# " __VA_ARGS__), fputc('\n', stderr))

static void test_glob_regex(void) {
    char re[256];
    TAP_IS_INT(cv_pgsearch_glob_regex("eu-*", re, sizeof(re)), 0, "a pattern converts");
    TAP_IS_STR(re, "^eu-.*$", "* is .*, anchored");
    cv_pgsearch_glob_regex("a.b?", re, sizeof(re));
    TAP_IS_STR(re, "^a\\.b.$", ". is literal, ? is one character");
    cv_pgsearch_glob_regex("[!ab]x", re, sizeof(re));
    TAP_IS_STR(re, "^[^ab]x$", "[!...] negates");
    tap_ok(cv_pgsearch_glob_regex("eu-*", re, 5) < 0, "a buffer too small is an error");

    static const char *pats[] = {"*",   "eu-*",   "?u-west", "[ae]u-*", "[!e]*",
                                 "a.b", "*.*",    "[a-c]*",  "x[",      "*-?",
                                 "eu",  "[^e]u*", "a*b*c",   "[]a]*"};
    static const char *names[] = {"eu-west", "au-east", "us", "a.b", "axb", "abc",
                                  "x[",      "b",       "eu", "c-1", "]x",  "a"};
    int bad = 0, n = 0;
    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++) {
        if (cv_pgsearch_glob_regex(pats[i], re, sizeof(re)) < 0) {
            bad++;
            continue;
        }
        regex_t rx;
        if (regcomp(&rx, re, REG_EXTENDED | REG_NOSUB) != 0) {
            tap_diag("pattern %s: regex %s does not compile", pats[i], re);
            bad++;
            continue;
        }
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
            bool f = fnmatch(pats[i], names[k], 0) == 0;
            bool r = regexec(&rx, names[k], 0, NULL, 0) == 0;
            n++;
            if (f != r) {
                tap_diag("pattern %s (%s) on %s: fnmatch %d, regex %d", pats[i], re,
                         names[k], f, r);
                bad++;
            }
        }
        regfree(&rx);
    }
    TAP_IS_INT(bad, 0, "every pattern selects what fnmatch selects");
    tap_ok(n > 100, "over many pattern and name pairs");
}

static void test_textual(void) {
    tap_ok(cv_pgsearch_textual("text/plain") && cv_pgsearch_textual("text/markdown"),
           "text/... is text");
    tap_ok(cv_pgsearch_textual("application/json") &&
               cv_pgsearch_textual("application/vnd.x+json"),
           "json is text");
    tap_ok(!cv_pgsearch_textual("application/octet-stream") &&
               !cv_pgsearch_textual("image/png") && !cv_pgsearch_textual(""),
           "other types are not");
}

int main(void) {
    test_glob_regex();
    test_textual();
    return tap_done();
}
