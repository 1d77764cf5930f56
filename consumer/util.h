/*
 * util — small helpers shared by the consumer modules: UTF-8 checks, JSON
 * string escaping into a bounded buffer, clocks.
 */
#ifndef CV_UTIL_H
#define CV_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Severity of a log event. The consumer modules report events with it
 * through their callbacks; broker/ decides what to print (cv_log). */
typedef enum cv_log_level {
    CV_LOG_DEBUG = 0,
    CV_LOG_INFO,
    CV_LOG_WARN,
    CV_LOG_ERROR
} cv_log_level;

/* Error codes beyond errno values, returned negated. */
enum {
    CV_EREJECT = 10000, /* the record is invalid (see its reject reason) */
    CV_ESTORE,          /* a store failed; the batch was not made durable */
    CV_ESCHEMA,         /* the database schema is not the one this binary speaks */
    CV_ECORRUPT,        /* a store's data is damaged */
};

bool cv_utf8_valid(const char *s, size_t len);

/* The length (1..4) of the valid UTF-8 character other than NUL that starts
 * `s[0..avail)`, avail ≥ 1; 0 when the bytes there are not one. */
size_t cv_utf8_char_len(const char *s, size_t avail);

/* Folds a multi-line error message (libpq's) onto one line in place:
 * newlines and tabs become single spaces; trailing space is dropped. */
void cv_one_line(char *s);

/* A growable byte buffer with an upper bound. */
typedef struct cv_buf {
    unsigned char *data;
    size_t len, cap, limit;
} cv_buf;

void cv_buf_init(cv_buf *b, size_t limit);
void cv_buf_release(cv_buf *b);
/* -ENOBUFS past the limit, -ENOMEM when out of memory. */
int cv_buf_reserve(cv_buf *b, size_t more);
int cv_buf_append(cv_buf *b, const void *p, size_t n);
int cv_buf_printf(cv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends `s` as a JSON string literal, quotes included. Bytes that are not
 * valid UTF-8 are written as \ufffd. */
int cv_buf_json_string(cv_buf *b, const char *s, size_t len);
/* Appends the NUL-terminated `s` as HTML text or attribute value: & < > " '
 * as entities. */
int cv_buf_html(cv_buf *b, const char *s);
/* Appends standard base64 of `p`. */
int cv_buf_base64(cv_buf *b, const void *p, size_t n);

static inline void cv_be16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}
static inline void cv_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
static inline void cv_be64(unsigned char *p, uint64_t v) {
    cv_be32(p, (uint32_t)(v >> 32));
    cv_be32(p + 4, (uint32_t)v);
}

/* Wall clock in Unix microseconds; monotonic clock in milliseconds. */
int64_t cv_now_us(void);
int64_t cv_mono_ms(void);
int64_t cv_mono_us(void);

/* printf into errbuf (nothing when it is NULL or of size 0). */
void cv_errf(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Checks that the open file `fd` holds a secret safely: a regular file with
 * no permission bits for group or others (0600 or 0400). `what` and `path`
 * name it in the one-line error ("key file /etc/chatvault/log.key has mode
 * 0644: ..."). Returns 0, -EINVAL (not a regular file), -EACCES (the mode;
 * the error names it and the chmod that fixes it) or a negative errno. On
 * success *ret_size is the file's size. */
int cv_private_file_check(int fd, const char *what, const char *path, int64_t *ret_size,
                          char *errbuf, size_t errlen);

/* Reads the whole file at `path` (at most `max` bytes) into a malloc'ed,
 * NUL-terminated buffer: *ret_data (free it; explicit_bzero first when
 * `private_file`), *ret_len. With `private_file` the file must pass
 * cv_private_file_check. Errors are one line naming `what` and `path`:
 * -ENOENT etc. from open, -EACCES for the mode, -EFBIG over `max`. */
int cv_read_file(const char *path, const char *what, size_t max, bool private_file,
                 char **ret_data, size_t *ret_len, char *errbuf, size_t errlen);

/* fsync of the directory `dir` (what makes a create, rename or unlink in
 * it durable): 0 or a negative errno. cv_fsync_parent does it for the
 * directory that holds `path` ("/" for a top-level name). */
int cv_fsync_dir(const char *dir);
int cv_fsync_parent(const char *path);

/* Writes all `n` bytes to fd (write(2) again after a short write or
 * EINTR): 0 or a negative errno. */
int cv_write_all(int fd, const void *p, size_t n);

/* Replaces the file at `path` with `len` bytes durably: "<path>.tmp"
 * written (mode 0600) and fdatasynced, renamed into place, its directory
 * fsynced. A crash leaves the old file or the new one, never a mix. 0 or a
 * negative errno with a one-line error naming `what` and `path`. */
int cv_replace_file(const char *path, const void *data, size_t len, const char *what,
                    char *errbuf, size_t errlen);

#endif
