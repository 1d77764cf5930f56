/*
 * cold/cold.c — the cold tier's targets (an S3 bucket through libcurl with
 * AWS Signature V4, or a directory), shipping one segment with its checks,
 * and the fetch hook the log's reader calls for segments that are only
 * there. What is shipped when, and what a reader sees, is in README "Cold
 * tier and off-site copy" and applog/FORMAT.md "Cold tier".
 */
#include "cold/cold.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define KEY_MAX 1024
#define CRED_MAX 256
#define ERRBODY_MAX 4096
#define TARGET_MARKER ".chatvault-cold" /* in a directory target's root */
#define CACHE_MARKER ".chatvault-cache" /* in a cache directory */

struct cv_cold {
    bool s3;
    char *target;
    char *root;     /* file: the directory */
    char *bucket;   /* s3 */
    char *prefix;   /* s3: "" or "a/b/" */
    char *endpoint; /* s3: no trailing slash */
    char *region;
    char *ca_file;
    char *cache_dir;
    char userpwd[2 * CRED_MAX + 2]; /* "access:secret"; wiped on free */
    char sigv4[128];
    pthread_mutex_t lock; /* cv_cold_fetch */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

const char *cv_cold_target(const cv_cold *c) {
    return c->target;
}

cv_cold *cv_cold_free(cv_cold *c) {
    if (!c)
        return NULL;
    sodium_memzero(c->userpwd, sizeof(c->userpwd));
    free(c->target);
    free(c->root);
    free(c->bucket);
    free(c->prefix);
    free(c->endpoint);
    free(c->region);
    free(c->ca_file);
    free(c->cache_dir);
    pthread_mutex_destroy(&c->lock);
    free(c);
    return NULL;
}

/* "access_key_id = X" and "secret_access_key = Y" lines (# comments), the
 * file private (0600). */
static int load_credentials(cv_cold *c, const char *file, char *errbuf, size_t errlen) {
    char ak[CRED_MAX] = "", sk[CRED_MAX] = "";
    if (file && *file) {
        char *data = NULL;
        size_t len = 0;
        int r = cv_read_file(file, "cold.credentials_file", 1u << 16, true, &data, &len,
                             errbuf, errlen);
        if (r < 0)
            return r;
        for (char *save = NULL, *line = strtok_r(data, "\n", &save); line;
             line = strtok_r(NULL, "\n", &save)) {
            char k[64], v[CRED_MAX];
            if (line[0] == '#' || sscanf(line, " %63[a-z_] = %255s", k, v) != 2)
                continue;
            if (strcmp(k, "access_key_id") == 0)
                snprintf(ak, sizeof(ak), "%s", v);
            else if (strcmp(k, "secret_access_key") == 0)
                snprintf(sk, sizeof(sk), "%s", v);
            sodium_memzero(v, sizeof(v));
        }
        sodium_memzero(data, len);
        free(data);
        if (!*ak || !*sk) {
            cv_errf(errbuf, errlen,
                    "cold.credentials_file %s: needs the lines access_key_id = ... and "
                    "secret_access_key = ...",
                    file);
            sodium_memzero(sk, sizeof(sk));
            return -EINVAL;
        }
    } else {
        const char *a = getenv("AWS_ACCESS_KEY_ID"), *s = getenv("AWS_SECRET_ACCESS_KEY");
        if (!a || !*a || !s || !*s) {
            cv_errf(errbuf, errlen,
                    "cold.target %s: no credentials: set cold.credentials_file, or "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    c->target);
            return -EINVAL;
        }
        snprintf(ak, sizeof(ak), "%s", a);
        snprintf(sk, sizeof(sk), "%s", s);
    }
    if (strchr(ak, ':')) {
        cv_errf(errbuf, errlen, "cold.target %s: the access key id holds a ':'",
                c->target);
        sodium_memzero(sk, sizeof(sk));
        return -EINVAL;
    }
    snprintf(c->userpwd, sizeof(c->userpwd), "%s:%s", ak, sk);
    sodium_memzero(sk, sizeof(sk));
    return 0;
}

int cv_cold_open(const cv_cold_conf *conf, cv_cold **ret, char *errbuf, size_t errlen) {
    const char *t = conf->target;
    if (!t || !*t) {
        cv_errf(errbuf, errlen, "cold.target is not set");
        return -EINVAL;
    }
    cv_cold *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    pthread_mutex_init(&c->lock, NULL);
    int r = -ENOMEM;
    if (!(c->target = strdup(t)) || !(c->cache_dir = strdup(conf->cache_dir)) ||
        !(c->ca_file = strdup(conf->ca_file ? conf->ca_file : "")))
        goto fail;
    if (strncmp(t, "s3://", 5) == 0) {
        c->s3 = true;
        const char *b = t + 5, *slash = strchr(b, '/');
        size_t bl = slash ? (size_t)(slash - b) : strlen(b);
        if (!bl || bl > 63 || strspn(b, "abcdefghijklmnopqrstuvwxyz0123456789.-") < bl) {
            cv_errf(
                errbuf, errlen,
                "cold.target %s: the bucket name (s3://BUCKET/prefix) must be 1 to 63 "
                "of [a-z0-9.-]",
                t);
            r = -EINVAL;
            goto fail;
        }
        const char *p = slash ? slash + 1 : "";
        size_t pl = strlen(p);
        while (pl && p[pl - 1] == '/')
            pl--;
        if (strspn(p,
                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/") <
            pl) {
            cv_errf(errbuf, errlen,
                    "cold.target %s: the prefix may hold only [A-Za-z0-9._-/]", t);
            r = -EINVAL;
            goto fail;
        }
        c->bucket = strndup(b, bl);
        c->prefix = malloc(pl + 2);
        if (!c->bucket || !c->prefix)
            goto fail;
        snprintf(c->prefix, pl + 2, "%.*s%s", (int)pl, p, pl ? "/" : "");
        const char *region = conf->region && *conf->region ? conf->region : "us-east-1";
        if (!(c->region = strdup(region)))
            goto fail;
        char def[256];
        snprintf(def, sizeof(def), "https://s3.%s.amazonaws.com", region);
        const char *ep = conf->endpoint && *conf->endpoint ? conf->endpoint : def;
        if (strncmp(ep, "http://", 7) != 0 && strncmp(ep, "https://", 8) != 0) {
            cv_errf(
                errbuf, errlen,
                "cold.endpoint %s: expected http://host[:port] or https://host[:port]",
                ep);
            r = -EINVAL;
            goto fail;
        }
        if (!(c->endpoint = strdup(ep)))
            goto fail;
        size_t el = strlen(c->endpoint);
        while (el > 8 && c->endpoint[el - 1] == '/')
            c->endpoint[--el] = '\0';
        snprintf(c->sigv4, sizeof(c->sigv4), "aws:amz:%s:s3", c->region);
        if ((r = load_credentials(c, conf->credentials_file, errbuf, errlen)) < 0)
            goto fail;
    } else {
        const char *dir = strncmp(t, "file://", 7) == 0 ? t + 7 : t;
        if (dir[0] != '/') {
            cv_errf(errbuf, errlen,
                    "cold.target %s: expected s3://BUCKET[/PREFIX], file:///DIR or an "
                    "absolute directory",
                    t);
            r = -EINVAL;
            goto fail;
        }
        if (!(c->root = strdup(dir)) || !(c->prefix = strdup("")))
            goto fail;
    }
    if ((r = cv_cold_check_places(c, conf->log_dir, errbuf, errlen)) < 0)
        goto fail;
    *ret = c;
    return 0;
fail:
    cv_cold_free(c);
    return r;
}

int cv_cold_parse_window(const char *s, int64_t *ret) {
    if (!s || !*s || strcmp(s, "off") == 0) {
        *ret = -1;
        return 0;
    }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || v < 0 || end == s)
        return -EINVAL;
    int64_t mul = !*end               ? 1
                  : !strcmp(end, "s") ? 1
                  : !strcmp(end, "m") ? 60
                  : !strcmp(end, "h") ? 3600
                  : !strcmp(end, "d") ? 86400
                                      : -1;
    if (mul < 0 || v > INT64_MAX / mul)
        return -EINVAL;
    *ret = (int64_t)v * mul;
    return 0;
}

/* ---- files ----------------------------------------------------------- */

/* mkdir -p of the directories of `path` (not its last part). */
static int make_parents(const char *path) {
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s", path);
    for (char *s = p + 1; (s = strchr(s, '/')); s++) {
        *s = '\0';
        if (mkdir(p, 0700) < 0 && errno != EEXIST)
            return -errno;
        *s = '/';
    }
    return 0;
}

/* A name of this process's own beside `path`: <path>.<pid>-<random><sfx>
 * (".tmp" or ".verify"), so that two processes fetching or shipping the
 * same object (the broker's shipper and `cold ship`, a reader and `verify
 * --repair`) never write into each other's file. Created O_EXCL, 0600. */
static int open_private(const char *path, const char *sfx, char *buf, size_t len) {
    for (int tries = 0; tries < 8; tries++) {
        int n = snprintf(buf, len, "%s.%ld-%08" PRIx32 "%s", path, (long)getpid(),
                         randombytes_random(), sfx);
        if (n < 0 || (size_t)n >= len)
            return -ENAMETOOLONG;
        int fd = open(buf, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST)
            return fd >= 0 ? fd : -errno;
    }
    return -EEXIST;
}

/* Copies from to `to` through a private temp name: fsynced, renamed (with
 * `exclusive` linked: -EEXIST when `to` is there, the file target's
 * If-None-Match), directory fsynced. */
static int copy_durable(const char *from, const char *to, uint64_t max, bool exclusive,
                        char *errbuf, size_t errlen) {
    char tmp[PATH_MAX];
    int r = make_parents(to);
    if (r < 0) {
        cv_errf(errbuf, errlen, "%s: cannot create its directory: %s", to, strerror(-r));
        return r;
    }
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "%s: %s", from, strerror(-r));
        return r == -ENOENT ? -ENOENT : r;
    }
    int out = open_private(to, ".tmp", tmp, sizeof(tmp));
    if (out < 0) {
        r = out;
        close(in);
        cv_errf(errbuf, errlen, "%s: a temp file beside it: %s", to, strerror(-r));
        return r;
    }
    char buf[1 << 16];
    uint64_t total = 0;
    ssize_t n;
    const char *what = NULL;
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        total += (uint64_t)n;
        if (total > max) {
            r = -EFBIG;
            what = "larger than expected";
            break;
        }
        if (write(out, buf, (size_t)n) != n) {
            r = -(errno ? errno : EIO);
            what = "write";
            break;
        }
    }
    if (!what && n < 0) {
        r = -errno;
        what = "read";
    }
    if (!what && fsync(out) < 0) {
        r = -errno;
        what = "fsync";
    }
    close(in);
    close(out);
    if (!what && exclusive) {
        if (link(tmp, to) == 0) {
            unlink(tmp);
        } else if (errno == EPERM || errno == EOPNOTSUPP) { /* no hard links there */
            exclusive = false;
        } else {
            r = -errno;
            what = r == -EEXIST ? "it is already there" : "link";
        }
    }
    if (!what && !exclusive && rename(tmp, to) < 0) {
        r = -errno;
        what = "rename";
    }
    if (!what && (r = cv_fsync_parent(to)) < 0)
        what = "fsync of its directory";
    if (what) {
        unlink(tmp);
        cv_errf(errbuf, errlen, "copying %s to %s: %s%s%s", from, to, what,
                r == -EFBIG ? "" : ": ", r == -EFBIG ? "" : strerror(-r));
        return r;
    }
    return 0;
}

/* ---- S3 ----------------------------------------------------------------- */

typedef struct xfer {
    CURL *curl;
    FILE *out; /* GET: where a 2xx body goes */
    uint64_t max, got;
    cv_buf err; /* a non-2xx body (the S3 error XML), bounded */
    bool too_big;
} xfer;

static size_t on_data(char *data, size_t size, size_t n, void *arg) {
    xfer *x = arg;
    size_t len = size * n;
    long status = 0;
    curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status / 100 != 2 || !x->out) {
        size_t room = ERRBODY_MAX > x->err.len ? ERRBODY_MAX - x->err.len : 0;
        cv_buf_append(&x->err, data, len < room ? len : room);
        return len;
    }
    x->got += len;
    if (x->got > x->max) {
        x->too_big = true;
        return 0;
    }
    return fwrite(data, 1, len, x->out) == len ? len : 0;
}

/* The <Code> of an S3 error body, into buf ("" when none). */
static void s3_code(const cv_buf *b, char *buf, size_t len) {
    buf[0] = '\0';
    if (!b->len)
        return;
    const char *d = (const char *)b->data;
    const char *s = memmem(d, b->len, "<Code>", 6);
    const char *e = s ? memmem(s, b->len - (size_t)(s - d), "</Code>", 7) : NULL;
    if (s && e && e - s - 6 < 100)
        snprintf(buf, len, " (%.*s)", (int)(e - s - 6), s + 6);
}

static void sha256_hex(const unsigned char *h, char *out) {
    sodium_bin2hex(out, 2 * crypto_hash_sha256_BYTES + 1, h, crypto_hash_sha256_BYTES);
}

/* SHA-256 of a file, hex: the signed payload hash S3 wants for a PUT. */
static int file_sha256(const char *path, char *hex, char *errbuf, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        cv_errf(errbuf, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    unsigned char buf[1 << 16];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        crypto_hash_sha256_update(&st, buf, (size_t)n);
    int e = errno;
    close(fd);
    if (n < 0) {
        cv_errf(errbuf, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, h);
    sha256_hex(h, hex);
    return 0;
}

/* One S3 request: method "PUT" (body from `in`, `in_size` bytes, payload
 * hash `sha`), "HEAD" or "GET" (body to `out`, at most `max`). Returns the
 * HTTP status, or negative with errbuf naming the object. */
static int s3_request(cv_cold *c, const char *method, const char *key, FILE *in,
                      uint64_t in_size, const char *sha, FILE *out, uint64_t max,
                      uint64_t *ret_len, char *errbuf, size_t errlen) {
    pthread_once(&curl_once, curl_init);
    char url[2048];
    int ul = snprintf(url, sizeof(url), "%s/%s/%s", c->endpoint, c->bucket, key);
    if (ul < 0 || (size_t)ul >= sizeof(url)) {
        cv_errf(errbuf, errlen,
                "cold target %s: object %s: its URL is longer than %zu bytes", c->target,
                key, sizeof(url) - 1);
        return -ENAMETOOLONG;
    }
    xfer x = {.out = out, .max = max};
    cv_buf_init(&x.err, ERRBODY_MAX);
    if (!(x.curl = curl_easy_init()))
        return -ENOMEM;
    char shah[128], cerr[CURL_ERROR_SIZE] = "";
    static const char empty_sha[] =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    snprintf(shah, sizeof(shah), "x-amz-content-sha256: %s", sha ? sha : empty_sha);
    struct curl_slist *hdrs = curl_slist_append(NULL, shah);
    if (strcmp(method, "PUT") == 0) /* never over an object (412 when one is there) */
        hdrs = curl_slist_append(hdrs, "If-None-Match: *");
    CURL *h = x.curl;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "chatvault");
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, c->sigv4);
    curl_easy_setopt(h, CURLOPT_USERPWD, c->userpwd);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &x);
    if (*c->ca_file)
        curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
    if (strcmp(method, "PUT") == 0) {
        curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(h, CURLOPT_READDATA, in);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)in_size);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "DELETE") == 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
    }
    CURLcode cr = curl_easy_perform(h);
    long status = 0;
    curl_off_t len = -1;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    int r;
    if (x.too_big) {
        cv_errf(errbuf, errlen,
                "cold target %s: object %s%s is larger than %" PRIu64 " bytes", c->target,
                c->prefix, key, max);
        r = -EFBIG;
    } else if (cr != CURLE_OK) {
        cv_errf(errbuf, errlen, "cold target %s: %s %s: %s", c->target, method, url,
                *cerr ? cerr : curl_easy_strerror(cr));
        r = cr == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EHOSTUNREACH;
    } else if (status / 100 != 2) {
        char code[128];
        s3_code(&x.err, code, sizeof(code));
        cv_errf(errbuf, errlen, "cold target %s: %s %s: HTTP %ld%s%s", c->target, method,
                url, status, code,
                status == 403 ? ": access denied (check the credentials and the "
                                "bucket's policy)"
                : strstr(code, "NoSuchBucket") ? ": no such bucket"
                : status == 404                ? ": no such object"
                                               : "");
        r = strstr(code, "NoSuchBucket") ? -ENXIO : (int)status;
    } else {
        if (ret_len)
            *ret_len = len < 0 ? x.got : (uint64_t)len;
        r = (int)status;
    }
    cv_buf_release(&x.err);
    cv_one_line(errbuf);
    return r;
}

/* ---- the operations ------------------------------------------------------ */

static void file_path(const cv_cold *c, const char *key, char *buf, size_t len) {
    snprintf(buf, len, "%s/%s", c->root, key);
}

/* Whether the target itself is there, asked before an object is called
 * lost: 0; -ENXIO (errbuf says what is missing) for no such bucket, or a
 * directory target missing or without its marker (not mounted); or the
 * error of asking (-EHOSTUNREACH, ...). */
static int target_present(cv_cold *c, char *errbuf, size_t errlen) {
    if (!c->s3) {
        char m[PATH_MAX];
        struct stat sb;
        snprintf(m, sizeof(m), "%s/" TARGET_MARKER, c->root);
        bool dir = stat(c->root, &sb) == 0 && S_ISDIR(sb.st_mode);
        if (dir && stat(m, &sb) == 0)
            return 0;
        cv_errf(errbuf, errlen,
                "cold target %s is not there: %s %s (not mounted?); nothing is taken as "
                "lost, mount it or fix cold.target",
                c->target, dir ? m : c->root, dir ? "is missing" : "is not a directory");
        return -ENXIO;
    }
    char err[1024];
    int r = s3_request(c, "HEAD", "", NULL, 0, NULL, NULL, 0, NULL, err, sizeof(err));
    if (r == 404 || r == -ENXIO) {
        cv_errf(
            errbuf, errlen,
            "cold target %s: no such bucket %s; nothing is taken as lost, create it or "
            "fix cold.target",
            c->target, c->bucket);
        return -ENXIO;
    }
    if (r < 0) {
        cv_errf(errbuf, errlen, "%s", err);
        return r;
    }
    return 0; /* there (a 403 on the bucket is a policy, not an absence) */
}

/* nftw has no argument for its callback: a count of the stubs it met. */
static _Thread_local size_t stubs_seen;

static int count_stub(const char *path, const struct stat *sb, int type, struct FTW *f) {
    (void)sb;
    size_t n = strlen(path);
    if (type == FTW_F && n > 5 && strcmp(path + n - 5, ".cold") == 0)
        stubs_seen++;
    (void)f;
    return stubs_seen ? FTW_STOP : FTW_CONTINUE;
}

int cv_cold_ready_to_ship(cv_cold *c, const char *log_dir, char *errbuf, size_t errlen) {
    if (c->s3)
        return target_present(c, errbuf, errlen);
    char m[PATH_MAX];
    snprintf(m, sizeof(m), "%s/" TARGET_MARKER, c->root);
    if (access(m, F_OK) == 0)
        return 0;
    /* No marker: the first ship ever writes it, unless this log shipped
     * before, and then the target is not what it was (an unmounted mount
     * point, a moved directory): shipping there would put the "off-site"
     * copies on this disk and make the earlier ones look lost. */
    stubs_seen = 0;
    nftw(log_dir, count_stub, 16, FTW_PHYS | FTW_ACTIONRETVAL);
    if (!stubs_seen)
        return 0;
    cv_errf(errbuf, errlen,
            "cold target %s is not there: %s is missing (not mounted?), but this log "
            "shipped segments to it before; nothing shipped, mount it or fix cold.target",
            c->target, m);
    return -ENXIO;
}

/* A directory target's marker, written on its first put. */
static int mark_target(cv_cold *c, char *errbuf, size_t errlen) {
    char m[PATH_MAX];
    snprintf(m, sizeof(m), "%s/" TARGET_MARKER, c->root);
    if (access(m, F_OK) == 0)
        return 0;
    static const char text[] = "chatvault cold tier: the files under this directory are "
                               "shipped log segments; do not remove this file\n";
    int r = make_parents(m);
    if (r == 0) {
        int fd = open(m, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            r = -errno;
        else if (write(fd, text, sizeof(text) - 1) != (ssize_t)sizeof(text) - 1 ||
                 fsync(fd) < 0)
            r = -(errno ? errno : EIO);
        if (fd >= 0)
            close(fd);
    }
    if (r == 0)
        r = cv_fsync_dir(c->root);
    if (r < 0)
        cv_errf(errbuf, errlen, "cold target %s: writing its marker %s: %s", c->target, m,
                strerror(-r));
    return r;
}

/* The cache's marker, written when this process makes the cache (or finds
 * it empty): cv_cold_prune_cache prunes nothing without it. */
static void mark_cache(const cv_cold *c) {
    char m[PATH_MAX];
    if (snprintf(m, sizeof(m), "%s/" CACHE_MARKER, c->cache_dir) >= (int)sizeof(m) ||
        access(m, F_OK) == 0)
        return;
    DIR *d = opendir(c->cache_dir);
    bool fresh = !d && errno == ENOENT;
    if (d) {
        fresh = true;
        for (struct dirent *e; fresh && (e = readdir(d));)
            fresh = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
        closedir(d);
    }
    if (!fresh || make_parents(m) < 0)
        return;
    int fd = open(m, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    static const char text[] = "chatvault cold tier: a cache of fetched segments\n";
    if (write(fd, text, sizeof(text) - 1) < 0)
        unlink(m);
    close(fd);
}

int cv_cold_put(cv_cold *c, const char *key, const char *path, char *errbuf,
                size_t errlen) {
    if (!c->s3) {
        char to[PATH_MAX];
        file_path(c, key, to, sizeof(to));
        int r = mark_target(c, errbuf, errlen);
        if (r < 0)
            return r;
        r = copy_durable(path, to, UINT64_MAX, true, errbuf, errlen);
        if (r < 0) {
            char inner[512];
            snprintf(inner, sizeof(inner), "%s", errbuf ? errbuf : "");
            cv_errf(errbuf, errlen, "cold target %s: %s", c->target, inner);
        }
        return r;
    }
    char sha[2 * crypto_hash_sha256_BYTES + 1];
    int r = file_sha256(path, sha, errbuf, errlen);
    if (r < 0)
        return r;
    FILE *in = fopen(path, "rb");
    struct stat st;
    if (!in || fstat(fileno(in), &st) < 0) {
        r = -errno;
        if (in)
            fclose(in);
        cv_errf(errbuf, errlen, "%s: %s", path, strerror(-r));
        return r;
    }
    r = s3_request(c, "PUT", key, in, (uint64_t)st.st_size, sha, NULL, 0, NULL, errbuf,
                   errlen);
    fclose(in);
    return r < 0 ? r : r / 100 == 2 ? 0 : r == 412 ? -EEXIST : -EIO;
}

int cv_cold_head(cv_cold *c, const char *key, uint64_t *ret_size, char *errbuf,
                 size_t errlen) {
    if (!c->s3) {
        char p[PATH_MAX];
        file_path(c, key, p, sizeof(p));
        struct stat st;
        if (stat(p, &st) < 0) {
            int e = errno;
            int t = e == ENOENT ? target_present(c, errbuf, errlen) : 0;
            if (t < 0)
                return t;
            cv_errf(errbuf, errlen, "cold target %s: %s: %s", c->target, p, strerror(e));
            return -e;
        }
        *ret_size = (uint64_t)st.st_size;
        return 0;
    }
    uint64_t len = 0;
    int r = s3_request(c, "HEAD", key, NULL, 0, NULL, NULL, 0, &len, errbuf, errlen);
    if (r < 0)
        return r;
    if (r == 404) {
        int t = target_present(c, errbuf, errlen); /* a HEAD has no error body */
        return t < 0 ? t : -ENOENT;
    }
    if (r / 100 != 2)
        return r == 403 ? -EACCES : -EIO;
    *ret_size = len;
    return 0;
}

int cv_cold_delete(cv_cold *c, const char *key, char *errbuf, size_t errlen) {
    if (!c->s3) {
        char p[PATH_MAX];
        file_path(c, key, p, sizeof(p));
        int t = target_present(c, errbuf, errlen);
        if (t < 0)
            return t;
        if (unlink(p) < 0 && errno != ENOENT) {
            int e = errno;
            cv_errf(errbuf, errlen, "cold target %s: removing %s: %s", c->target, p,
                    strerror(e));
            return -e;
        }
        int fr = cv_fsync_parent(p);
        if (fr < 0)
            cv_errf(errbuf, errlen, "cold target %s: fsync after removing %s: %s",
                    c->target, p, strerror(-fr));
        return fr;
    }
    int r = s3_request(c, "DELETE", key, NULL, 0, NULL, NULL, 0, NULL, errbuf, errlen);
    if (r < 0)
        return r;
    if (r == 404) /* S3 answers 204 for a key that is not there; others 404 */
        return 0;
    return r / 100 == 2 ? 0 : r == 403 ? -EACCES : -EIO;
}

int cv_cold_get(cv_cold *c, const char *key, const char *path, uint64_t max, char *errbuf,
                size_t errlen) {
    int r = make_parents(path);
    if (r < 0) {
        cv_errf(errbuf, errlen, "%s: cannot create its directory: %s", path,
                strerror(-r));
        return r;
    }
    if (!c->s3) {
        char from[PATH_MAX];
        file_path(c, key, from, sizeof(from));
        r = copy_durable(from, path, max, false, errbuf, errlen);
        if (r == -ENOENT) {
            int t = target_present(c, errbuf, errlen);
            if (t < 0)
                return t;
        }
        if (r < 0) {
            char inner[512];
            snprintf(inner, sizeof(inner), "%s", errbuf ? errbuf : "");
            cv_errf(errbuf, errlen, "cold target %s: %s", c->target, inner);
        }
        return r;
    }
    char tmp[PATH_MAX];
    int fd = open_private(path, ".tmp", tmp, sizeof(tmp));
    FILE *out = fd >= 0 ? fdopen(fd, "wb") : NULL;
    if (!out) {
        r = fd < 0 ? fd : -errno;
        if (fd >= 0)
            close(fd);
        cv_errf(errbuf, errlen, "%s: a temp file beside it: %s", path, strerror(-r));
        return r;
    }
    r = s3_request(c, "GET", key, NULL, 0, NULL, out, max, NULL, errbuf, errlen);
    bool ok = fflush(out) == 0 && fsync(fileno(out)) == 0;
    fclose(out);
    if (r >= 0 && r / 100 == 2 && ok && rename(tmp, path) == 0)
        return 0;
    unlink(tmp);
    if (r < 0)
        return r;
    if (r == 404) {
        int t = target_present(c, errbuf, errlen);
        return t < 0 ? t : -ENOENT;
    }
    if (r == 403)
        return -EACCES;
    if (!ok || r / 100 == 2) {
        cv_errf(errbuf, errlen, "%s: writing the fetched object failed", path);
        return -EIO;
    }
    return -EIO;
}

const char *cv_cold_stub_mismatch(const cv_applog_cold_stub *want,
                                  const cv_applog_cold_stub *got) {
    if (got->bytes != want->bytes)
        return "its size differs";
    if (got->records != want->records || got->last_offset != want->last_offset ||
        got->first_offset != want->first_offset ||
        sodium_memcmp(got->chain, want->chain, CV_APPLOG_DIGEST_BYTES) != 0)
        return "its chain hash differs";
    if (sodium_memcmp(got->file_hash, want->file_hash, CV_APPLOG_DIGEST_BYTES) != 0)
        return "its bytes differ";
    return NULL;
}

int cv_cold_object_key(const cv_cold *c, const char *rel, char *buf, size_t len) {
    int n = snprintf(buf, len, "%s%s", c->prefix, rel);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Reads object `key` back into a file of this process's own beside
 * <cache_dir>/<key> and compares it with `want`; when it differs, fetches
 * it once more (a copy another process was writing is not damage) before
 * *ret_why says what differs. 0 with *ret_why NULL when it is `want`'s
 * segment: then the copy is renamed to `keep_as` (or removed when NULL).
 * Negative when the object cannot be read (errbuf). */
static int read_back(cv_cold *c, const char *key, const cv_applog_cold_stub *want,
                     const char *keep_as, const char **ret_why, char *errbuf,
                     size_t errlen) {
    char base[PATH_MAX], back[PATH_MAX];
    if (snprintf(base, sizeof(base), "%s/%s", c->cache_dir, key) >= (int)sizeof(base))
        return -ENAMETOOLONG;
    mark_cache(c);
    int r = make_parents(base);
    if (r < 0) {
        cv_errf(errbuf, errlen, "%s: cannot create its directory: %s", base,
                strerror(-r));
        return r;
    }
    const char *why = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open_private(base, ".verify", back, sizeof(back));
        if (fd < 0) {
            cv_errf(errbuf, errlen, "%s: a temp file beside it: %s", base, strerror(-fd));
            return fd;
        }
        close(fd);
        r = cv_cold_get(c, key, back, want->bytes, errbuf, errlen);
        if (r < 0) {
            unlink(back);
            if (r != -EFBIG)
                return r;
            why = "it is larger than the segment";
            continue;
        }
        cv_applog_cold_stub got;
        r = cv_applog_cold_describe(back, &got, NULL, 0);
        why = r < 0 ? "it does not read back whole" : cv_cold_stub_mismatch(want, &got);
        if (!why && keep_as && rename(back, keep_as) < 0) {
            r = -errno;
            unlink(back);
            cv_errf(errbuf, errlen, "%s: %s", keep_as, strerror(-r));
            return r;
        }
        if (!why && keep_as)
            break;
        unlink(back);
        if (!why)
            break;
    }
    *ret_why = why;
    return 0;
}

int cv_cold_ship(cv_cold *c, const char *dir, const char *name, const char *rel,
                 cv_applog_cold_stub *ret, char *errbuf, size_t errlen) {
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    cv_applog_cold_stub st;
    int r = cv_applog_cold_describe(path, &st, errbuf, errlen);
    if (r < 0)
        return r;
    if (cv_cold_object_key(c, rel, st.key, sizeof(st.key)) < 0)
        return -ENAMETOOLONG;
    const char *key = st.key;
    /* An object already there is this segment from a pass that stopped
     * before its stub was written, or other bytes: never overwritten. */
    uint64_t size = 0;
    r = cv_cold_head(c, key, &size, errbuf, errlen);
    if (r == -ENXIO && !c->s3)
        r = -ENOENT; /* a directory target's first ship: cv_cold_put marks it */
    if (r < 0 && r != -ENOENT)
        return r;
    bool there = r == 0;
    if (!there) {
        /* A put never overwrites (If-None-Match: *, or a link): -EEXIST
         * when an object appeared since the HEAD (another process shipping
         * this segment): then it is compared as one already there. */
        r = cv_cold_put(c, key, path, errbuf, errlen);
        if (r < 0 && r != -EEXIST)
            return r;
        there = r == -EEXIST;
        if ((r = cv_cold_head(c, key, &size, errbuf, errlen)) < 0)
            return r;
        if (!there && size != st.bytes) {
            cv_errf(errbuf, errlen,
                    "cold target %s: object %s holds %" PRIu64 " bytes after upload, the "
                    "segment %s %" PRIu64 " (short upload); not marked shipped",
                    c->target, key, size, path, st.bytes);
            return -EIO;
        }
    }
    /* Read it back: its chain and bytes must be the local one's. */
    const char *why = size != st.bytes ? "its size differs" : NULL;
    if (!why && (r = read_back(c, key, &st, NULL, &why, errbuf, errlen)) < 0)
        return r;
    if (why && there) {
        cv_errf(errbuf, errlen,
                "cold target %s: object %s is already there with other bytes than "
                "segment %s (%s): the segment changed after it was shipped (a writer "
                "rollback), or another log ships to the same place; not overwritten: "
                "check which copy is right and move the other away, and give each "
                "broker a cold.target prefix of its own",
                c->target, key, path, why);
        return -EEXIST;
    }
    if (why) {
        cv_errf(errbuf, errlen,
                "cold target %s: object %s read back after upload: %s from segment "
                "%s; not marked shipped",
                c->target, key, why, path);
        return -EIO;
    }
    if ((r = cv_applog_cold_stub_write(dir, &st, errbuf, errlen)) < 0)
        return r;
    *ret = st;
    return 0;
}

int cv_cold_check(cv_cold *c, const cv_applog_cold_stub *st, const char *local_path,
                  char *errbuf, size_t errlen) {
    if (!c->s3) {
        char p[PATH_MAX];
        struct stat a, b;
        file_path(c, st->key, p, sizeof(p));
        if (stat(p, &a) == 0 && stat(local_path, &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino) {
            cv_errf(errbuf, errlen,
                    "cold target %s: object %s is the local file %s itself (cold.target "
                    "points into log.dir); not removed",
                    c->target, p, local_path);
            return -EEXIST;
        }
    }
    uint64_t size = 0;
    int r = cv_cold_head(c, st->key, &size, errbuf, errlen);
    if (r < 0)
        return r;
    if (size != st->bytes) {
        cv_errf(errbuf, errlen,
                "cold target %s: object %s holds %" PRIu64
                " bytes, its stub says %" PRIu64,
                c->target, st->key, size, st->bytes);
        return -EIO;
    }
    /* Removal may come days after the ship: the object is read back whole
     * and compared with the stub's hashes once more. */
    const char *why = NULL;
    if ((r = read_back(c, st->key, st, NULL, &why, errbuf, errlen)) < 0)
        return r;
    if (why) {
        cv_errf(errbuf, errlen,
                "cold target %s: object %s is not what its stub says was shipped: %s",
                c->target, st->key, why);
        return -EIO;
    }
    return 0;
}

int cv_cold_fetch(void *opaque, const char *stub_path, const cv_applog_cold_stub *st,
                  char *path, size_t pathlen, char *errbuf, size_t errlen) {
    cv_cold *c = opaque;
    char cache[PATH_MAX];
    if (snprintf(cache, sizeof(cache), "%s/%s", c->cache_dir, st->key) >=
            (int)sizeof(cache) ||
        strlen(cache) >= pathlen)
        return -ENAMETOOLONG;
    pthread_mutex_lock(&c->lock);
    cv_applog_cold_stub got;
    int r = cv_applog_cold_describe(cache, &got, NULL, 0);
    if (r == 0 && !cv_cold_stub_mismatch(st, &got)) {
        /* the cache holds it; its time says when it was last used (prune) */
        utimensat(AT_FDCWD, cache, NULL, 0);
        goto done;
    }
    mark_cache(c);
    r = cv_cold_get(c, st->key, cache, st->bytes, errbuf, errlen);
    const char *why = NULL;
    if (r == -ENOENT || r == -EFBIG) {
        char inner[600];
        snprintf(inner, sizeof(inner), "%s", errbuf ? errbuf : "");
        cv_errf(errbuf, errlen,
                "log segment %s at byte 0: only in the cold tier, and its copy cannot be "
                "read: %s",
                stub_path, inner);
        r = -CV_ECORRUPT;
        goto done;
    }
    if (r < 0)
        goto done;
    r = cv_applog_cold_describe(cache, &got, NULL, 0);
    why = r < 0 ? "it does not read whole" : cv_cold_stub_mismatch(st, &got);
    if (why) {
        /* Once more into a file of our own (another process may have been
         * writing this copy) before it is called damage. */
        unlink(cache);
        r = read_back(c, st->key, st, cache, &why, errbuf, errlen);
        if (r < 0 && r != -ENOENT && r != -EFBIG)
            goto done;
        if (r == 0 && !why)
            goto done;
        cv_errf(errbuf, errlen,
                "log segment %s at byte 0: its copy in the cold tier (%s, object %s) is "
                "not what was shipped: %s (damaged or replaced)",
                stub_path, c->target, st->key, why ? why : "it is gone");
        r = -CV_ECORRUPT;
        goto done;
    }
    r = 0;
done:
    pthread_mutex_unlock(&c->lock);
    if (r == 0)
        snprintf(path, pathlen, "%s", cache);
    return r;
}

/* ---- where things are ------------------------------------------------------ */

/* The real path of `p` into out[PATH_MAX]: realpath of what exists of it,
 * the parts that do not exist yet appended as written. */
static int resolve(const char *p, char *out) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof(buf), "%s", p) >= (int)sizeof(buf))
        return -ENAMETOOLONG;
    size_t l = strlen(buf);
    while (l > 1 && buf[l - 1] == '/')
        buf[--l] = '\0';
    if (realpath(buf, out))
        return 0;
    if (errno != ENOENT)
        return -errno;
    char *s = strrchr(buf, '/');
    const char *tail = s ? s + 1 : buf;
    char parent[PATH_MAX], rp[PATH_MAX];
    if (!s)
        snprintf(parent, sizeof(parent), ".");
    else if (s == buf)
        snprintf(parent, sizeof(parent), "/");
    else
        snprintf(parent, sizeof(parent), "%.*s", (int)(s - buf), buf);
    int r = resolve(parent, rp);
    if (r < 0)
        return r;
    if (snprintf(out, PATH_MAX, "%s%s%s", rp, strcmp(rp, "/") ? "/" : "", tail) >=
        PATH_MAX)
        return -ENAMETOOLONG;
    return 0;
}

/* `inner` is `outer` or lies under it; *ret_rest what follows "outer/". */
static bool within(const char *outer, const char *inner, const char **ret_rest) {
    size_t l = strlen(outer);
    if (strcmp(outer, "/") == 0)
        l = 0;
    bool in = strncmp(outer, inner, l) == 0 && (inner[l] == '\0' || inner[l] == '/');
    if (in && ret_rest)
        *ret_rest = inner[l] ? inner + l + 1 : inner + l;
    return in;
}

int cv_cold_check_places(const cv_cold *c, const char *log_dir, char *errbuf,
                         size_t errlen) {
    char cache[PATH_MAX], root[PATH_MAX] = "", log[PATH_MAX] = "";
    int r = resolve(c->cache_dir, cache);
    if (r == 0 && c->root)
        r = resolve(c->root, root);
    if (r == 0 && log_dir && *log_dir)
        r = resolve(log_dir, log);
    if (r < 0) {
        cv_errf(errbuf, errlen, "cold.target %s: cannot resolve its directories: %s",
                c->target, strerror(-r));
        return -EINVAL;
    }
    const char *rest = NULL;
    if (*root && *log && (within(root, log, NULL) || within(log, root, NULL))) {
        cv_errf(errbuf, errlen,
                "cold.target %s and log.dir %s are the same directory or one holds the "
                "other: shipping would remove the only copy of each segment; point "
                "cold.target at a directory outside the log",
                c->target, log_dir);
        return -EINVAL;
    }
    if (*root && (within(root, cache, NULL) || within(cache, root, NULL))) {
        cv_errf(
            errbuf, errlen,
            "cold.target %s and cold.cache_dir %s are the same directory or one holds "
            "the other: pruning the cache would remove shipped objects; give them "
            "separate directories",
            c->target, c->cache_dir);
        return -EINVAL;
    }
    /* The default cache, <log.dir>/.cold-cache, lies in the log directory
     * but in none of its partition directories: that is allowed. */
    if (*log &&
        (within(cache, log, NULL) || (within(log, cache, &rest) && rest[0] != '.'))) {
        cv_errf(errbuf, errlen,
                "cold.cache_dir %s and log.dir %s overlap: pruning the cache would "
                "remove log segments; leave cold.cache_dir unset (<log.dir>/.cold-cache) "
                "or point it outside the log",
                c->cache_dir, log_dir);
        return -EINVAL;
    }
    return 0;
}

/* ---- the cache ------------------------------------------------------------ */

/* nftw has no argument for its callback: one prune at a time. */
static pthread_mutex_t prune_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t prune_before;
static uint64_t prune_removed;

/* A cached copy's name: <20 digits>.cvlog, or a fetch's leftover of one
 * (<name>.<pid>-<random>.tmp or .verify, or the older <name>.tmp). */
static bool cache_name(const char *base) {
    size_t l = strlen(base);
    if (l < 26 || strncmp(base + 20, ".cvlog", 6) != 0)
        return false;
    for (int i = 0; i < 20; i++)
        if (base[i] < '0' || base[i] > '9')
            return false;
    const char *rest = base + 26;
    size_t rl = strlen(rest);
    return rl == 0 || (rl >= 4 && strcmp(rest + rl - 4, ".tmp") == 0) ||
           (rl >= 7 && strcmp(rest + rl - 7, ".verify") == 0);
}

/* A directory of a log (a seal, or a stub in it): never entered. */
static bool log_like(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return true; /* what cannot be looked at is left alone */
    bool log = false;
    for (struct dirent *e; !log && (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        log = strcmp(e->d_name, "sealed") == 0 ||
              (l > 5 && strcmp(e->d_name + l - 5, ".cold") == 0);
    }
    closedir(d);
    return log;
}

static int prune_one(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    if (type == FTW_D)
        return log_like(path) ? FTW_SKIP_SUBTREE : FTW_CONTINUE;
    if (type == FTW_F && cache_name(path + ftw->base) &&
        (int64_t)sb->st_mtime < prune_before && unlink(path) == 0)
        prune_removed++;
    return FTW_CONTINUE;
}

int cv_cold_prune_cache(cv_cold *c, int64_t keep_s, uint64_t *ret_removed) {
    if (ret_removed)
        *ret_removed = 0;
    if (keep_s < 0)
        return 0;
    char m[PATH_MAX];
    snprintf(m, sizeof(m), "%s/" CACHE_MARKER, c->cache_dir);
    if (access(m, F_OK) != 0)
        return errno == ENOENT ? 0 : -errno; /* not a cache this made: left alone */
    pthread_mutex_lock(&prune_lock);
    prune_before = (int64_t)time(NULL) - keep_s;
    prune_removed = 0;
    int r = nftw(c->cache_dir, prune_one, 16, FTW_PHYS | FTW_ACTIONRETVAL) < 0 &&
                    errno != ENOENT
                ? -errno
                : 0;
    if (ret_removed)
        *ret_removed = prune_removed;
    pthread_mutex_unlock(&prune_lock);
    return r;
}
