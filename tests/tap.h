/*
 * tap — the few TAP helpers the C unit tests use. Output follows the Test
 * Anything Protocol so meson names every subtest in its log.
 */
#ifndef CV_TAP_H
#define CV_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed;

static inline void tap_ok(int cond, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void tap_ok(int cond, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s %d - ", cond ? "ok" : "not ok", ++tap_n);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (!cond)
        tap_failed++;
    fflush(stdout);
}

#define TAP_IS_INT(a, b, name)                                                           \
    do {                                                                                 \
        long long a_ = (long long)(a), b_ = (long long)(b);                              \
        tap_ok(a_ == b_, "%s", name);                                                    \
        if (a_ != b_)                                                                    \
            printf("#   got %lld, expected %lld\n", a_, b_);                             \
    } while (0)

#define TAP_IS_STR(a, b, name)                                                           \
    do {                                                                                 \
        const char *a_ = (a), *b_ = (b);                                                 \
        int eq_ = a_ && b_ && strcmp(a_, b_) == 0;                                       \
        tap_ok(eq_, "%s", name);                                                         \
        if (!eq_)                                                                        \
            printf("#   got \"%s\", expected \"%s\"\n", a_ ? a_ : "(null)",              \
                   b_ ? b_ : "(null)");                                                  \
    } while (0)

static inline int tap_done(void) {
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}

#endif
