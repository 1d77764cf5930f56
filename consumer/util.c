/*
 * util — see util.h.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

bool cv_utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s, *end = len ? p + len : p;
    while (p < end) {
        unsigned c = *p;
        if (c < 0x80) {
            if (c == 0)
                return false; /* PostgreSQL text cannot hold NUL */
            p++;
            continue;
        }
        size_t n;
        unsigned min;
        if ((c & 0xe0) == 0xc0)
            n = 1, min = 0x80, c &= 0x1f;
        else if ((c & 0xf0) == 0xe0)
            n = 2, min = 0x800, c &= 0x0f;
        else if ((c & 0xf8) == 0xf0)
            n = 3, min = 0x10000, c &= 0x07;
        else
            return false;
        if ((size_t)(end - p) <= n)
            return false;
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (p[i] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return false;
        p += n + 1;
    }
    return true;
}

void cv_one_line(char *s) {
    char *o = s, *start = s;
    bool space = false;
    for (; *s; s++) {
        if (*s == '\n' || *s == '\r' || *s == '\t' || *s == ' ') {
            space = true;
            continue;
        }
        if (space && o > start)
            *o++ = ' ';
        space = false;
        *o++ = *s;
    }
    *o = '\0';
}

void cv_buf_init(cv_buf *b, size_t limit) {
    b->data = NULL;
    b->len = b->cap = 0;
    b->limit = limit;
}

void cv_buf_release(cv_buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int cv_buf_reserve(cv_buf *b, size_t more) {
    if (more > b->limit || b->len > b->limit - more)
        return -ENOBUFS;
    size_t need = b->len + more;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap *= 2;
    if (cap > b->limit)
        cap = b->limit;
    unsigned char *n = realloc(b->data, cap);
    if (!n)
        return -ENOMEM;
    b->data = n;
    b->cap = cap;
    return 0;
}

int cv_buf_append(cv_buf *b, const void *p, size_t n) {
    int r = cv_buf_reserve(b, n);
    if (r < 0)
        return r;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int cv_buf_printf(cv_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    int r = cv_buf_reserve(b, (size_t)n + 1);
    if (r < 0)
        return r;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

size_t cv_utf8_char_len(const char *s, size_t avail) {
    unsigned char c = (unsigned char)s[0];
    size_t n = c < 0x80             ? 1
               : (c & 0xe0) == 0xc0 ? 2
               : (c & 0xf0) == 0xe0 ? 3
               : (c & 0xf8) == 0xf0 ? 4
                                    : 0;
    return n && n <= avail && cv_utf8_valid(s, n) ? n : 0;
}

int cv_buf_html(cv_buf *b, const char *s) {
    int r = 0;
    for (const char *p = s; r == 0 && *p; p++) {
        size_t n = strcspn(p, "&<>\"'");
        if (n) {
            r = cv_buf_append(b, p, n);
            p += n;
            if (!*p || r)
                break;
        }
        static const char *const ent[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&#39;"};
        const char *e = ent[strchr("&<>\"'", *p) - "&<>\"'"];
        r = cv_buf_append(b, e, strlen(e));
    }
    return r;
}

int cv_buf_json_string(cv_buf *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    /* Worst case: every byte becomes \u00XX. */
    if (len > (b->limit / 6))
        return -ENOBUFS;
    int r = cv_buf_reserve(b, len * 6 + 2);
    if (r < 0)
        return r;
    unsigned char *o = b->data + b->len;
    *o++ = '"';
    const unsigned char *p = (const unsigned char *)s, *end = len ? p + len : p;
    while (p < end) {
        unsigned char c = *p;
        if (c >= 0x80) {
            /* Copy a valid sequence whole, replace anything else. */
            size_t n = cv_utf8_char_len((const char *)p, (size_t)(end - p));
            if (n) {
                memcpy(o, p, n);
                o += n;
                p += n;
            } else {
                memcpy(o, "\\ufffd", 6);
                o += 6;
                p++;
            }
            continue;
        }
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = c;
        } else if (c == '\n') {
            *o++ = '\\', *o++ = 'n';
        } else if (c == '\r') {
            *o++ = '\\', *o++ = 'r';
        } else if (c == '\t') {
            *o++ = '\\', *o++ = 't';
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else {
            *o++ = c;
        }
        p++;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return 0;
}

int cv_buf_base64(cv_buf *b, const void *p, size_t n) {
    size_t need = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    int r = cv_buf_reserve(b, need);
    if (r < 0)
        return r;
    sodium_bin2base64((char *)b->data + b->len, need, p, n,
                      sodium_base64_VARIANT_ORIGINAL);
    b->len += need - 1; /* without the terminating NUL */
    return 0;
}

int64_t cv_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t cv_mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t cv_mono_ms(void) {
    return cv_mono_us() / 1000;
}

void cv_errf(char *errbuf, size_t errlen, const char *fmt, ...) {
    if (!errbuf || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

int cv_private_file_check(int fd, const char *what, const char *path, int64_t *ret_size,
                          char *errbuf, size_t errlen) {
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        cv_errf(errbuf, errlen, "%s %s: %s", what, path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode)) {
        cv_errf(errbuf, errlen, "%s %s is not a regular file", what, path);
        return -EINVAL;
    }
    if (st.st_mode & 077) {
        cv_errf(errbuf, errlen,
                "%s %s has mode %04o: it must not be readable or writable "
                "by group or others (chmod 600 %s)",
                what, path, (unsigned)(st.st_mode & 07777), path);
        return -EACCES;
    }
    *ret_size = (int64_t)st.st_size;
    return 0;
}

int cv_read_file(const char *path, const char *what, size_t max, bool private_file,
                 char **ret_data, size_t *ret_len, char *errbuf, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        cv_errf(errbuf, errlen, "%s %s: %s", what, path, strerror(e));
        return -e;
    }
    struct stat st;
    int64_t size = 0;
    int r = 0;
    if (private_file)
        r = cv_private_file_check(fd, what, path, &size, errbuf, errlen);
    else if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        r = -EINVAL;
        cv_errf(errbuf, errlen, "%s %s is not a regular file", what, path);
    } else
        size = (int64_t)st.st_size;
    if (r == 0 && (uint64_t)size > max) {
        cv_errf(errbuf, errlen, "%s %s is larger than %zu bytes", what, path, max);
        r = -EFBIG;
    }
    char *data = r == 0 ? malloc(max + 1) : NULL;
    if (r == 0 && !data) {
        cv_errf(errbuf, errlen, "out of memory");
        r = -ENOMEM;
    }
    size_t len = 0;
    while (r == 0) {
        ssize_t n = read(fd, data + len, max + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            cv_errf(errbuf, errlen, "%s %s: read: %s", what, path, strerror(-r));
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > max) { /* grew since fstat */
            cv_errf(errbuf, errlen, "%s %s is larger than %zu bytes", what, path, max);
            r = -EFBIG;
        }
    }
    close(fd);
    if (r < 0) {
        if (data && private_file)
            explicit_bzero(data, max + 1);
        free(data);
        return r;
    }
    data[len] = '\0';
    *ret_data = data;
    *ret_len = len;
    return 0;
}

int cv_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

int cv_write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

int cv_replace_file(const char *path, const void *data, size_t len, const char *what,
                    char *errbuf, size_t errlen) {
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        cv_errf(errbuf, errlen, "%s %s: path too long", what, path);
        return -ENAMETOOLONG;
    }
    const char *step = "creating";
    int r = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        r = -errno;
    if (r == 0) {
        step = "writing";
        r = cv_write_all(fd, data, len);
    }
    if (r == 0 && fdatasync(fd) < 0) {
        step = "syncing";
        r = -errno;
    }
    if (fd >= 0 && close(fd) < 0 && r == 0) {
        step = "closing";
        r = -errno;
    }
    if (r == 0 && rename(tmp, path) < 0) {
        step = "renaming";
        r = -errno;
    }
    if (r < 0) {
        if (fd >= 0)
            unlink(tmp);
        cv_errf(errbuf, errlen, "%s %s: %s %s: %s", what, path, step, tmp, strerror(-r));
        return r;
    }
    if ((r = cv_fsync_parent(path)) < 0)
        cv_errf(errbuf, errlen, "%s %s: fsync of its directory: %s", what, path,
                strerror(-r));
    return r;
}

int cv_fsync_parent(const char *path) {
    char p[4096];
    if (snprintf(p, sizeof(p), "%s", path) >= (int)sizeof(p))
        return -ENAMETOOLONG;
    char *s = strrchr(p, '/');
    if (!s)
        return cv_fsync_dir(".");
    *s = '\0';
    return cv_fsync_dir(*p ? p : "/");
}
